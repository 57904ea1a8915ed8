-- wrk script for bench/run.py: `wrk ... -s bench/rotate.lua URL -- TOKEN_FILE [START]`.
-- Sends `Authorization: Bearer <token>`, rotating through the tokens of
-- TOKEN_FILE (one a line), starting after line START. A line `token<TAB>proof`
-- is a DPoP request instead: `Authorization: DPoP <token>` and `DPoP: <proof>`.
local requests = {}
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      local token, proof = line:match("^([^\t]+)\t(.+)$")
      if token then
        requests[#requests + 1] = { ["Authorization"] = "DPoP " .. token, ["DPoP"] = proof }
      else
        requests[#requests + 1] = { ["Authorization"] = "Bearer " .. line }
      end
    end
  end
  if #requests == 0 then error("no tokens in " .. args[1]) end
  i = (tonumber(args[2] or "0") or 0) % #requests
end

function request()
  i = i + 1
  if i > #requests then i = 1 end
  return wrk.format(nil, nil, requests[i])
end
