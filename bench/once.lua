-- wrk script for bench/rss_curve.py: `wrk -tN ... -s bench/once.lua URL -- TOKEN_FILE N`.
-- Sends `Authorization: Bearer <token>` for each token of TOKEN_FILE once:
-- thread k of N takes lines k, k+N, ...; a thread stops when all of its
-- requests are answered (a connection asking for more after its last token
-- repeats that token, a cache hit).
local count = 0

function setup(thread)
  thread:set("id", count)
  count = count + 1
end

local requests = {}
local i = 0
local answered = 0

function init(args)
  local threads = tonumber(args[2] or "1") or 1
  local n = 0
  for line in io.lines(args[1]) do
    if #line > 0 then
      if n % threads == id then
        requests[#requests + 1] = { ["Authorization"] = "Bearer " .. line }
      end
      n = n + 1
    end
  end
end

function request()
  if i < #requests then i = i + 1 end
  return wrk.format(nil, nil, requests[i])
end

function response(status, headers, body)
  answered = answered + 1
  if answered >= #requests then wrk.thread:stop() end
end
