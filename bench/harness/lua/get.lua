-- GET /api/v1/ai/task/result/{id}, the id drawn at random from a file of existing task ids.
-- usage: wrk ... -s get.lua http://127.0.0.1:PORT -- IDS_FILE  (pacing: see report.lua)
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
require "report"

local ids = {}

init = function(args)
  for line in io.lines(args[1]) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

request = function()
  return wrk.format("GET", "/api/v1/ai/task/result/" .. ids[math.random(#ids)])
end
