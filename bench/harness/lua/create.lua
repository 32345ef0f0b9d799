-- POST /api/v1/ai/image/task: a valid Seedream request for a user drawn at random from USERS users,
-- so no user reaches the per-user cap on tasks in flight (the server makes the task id).
-- usage: wrk ... -s create.lua http://127.0.0.1:PORT -- PROMPT USER_PREFIX USERS   (pacing: see report.lua)
package.path = debug.getinfo(1, "S").source:match("@(.*/)") .. "?.lua;" .. package.path
require "report"

local head, users

init = function(args)
  users = tonumber(args[3])
  wrk.method = "POST"
  wrk.path = "/api/v1/ai/image/task"
  wrk.headers["Content-Type"] = "application/json"
  head = '{"prompt": "' .. args[1] .. '", "provider": "volcengine", "model": "doubao-seedream-3-0-t2i-250415", ' ..
         '"size": "1024x1024", "user_id": "' .. args[2]
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
end

request = function()
  return wrk.format(nil, nil, nil, head .. math.random(users) .. '"}')
end
