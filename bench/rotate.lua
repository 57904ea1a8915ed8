-- wrk script for bench/run.py: `wrk ... -s bench/rotate.lua URL -- TOKEN_FILE [START]`.
-- Sends `Authorization: Bearer <token>`, rotating through the tokens of
-- TOKEN_FILE (one a line), starting after line START.
local tokens = {}
local i = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
  end
  if #tokens == 0 then error("no tokens in " .. args[1]) end
  i = (tonumber(args[2] or "0") or 0) % #tokens
end

function request()
  i = i + 1
  if i > #tokens then i = 1 end
  return wrk.format(nil, nil, { ["Authorization"] = tokens[i] })
end
