-- POST /tasks with one JSON body; args: duration in seconds.
require "common"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
   -- wrk builds the request once, after init(): the body must be set here.
   wrk.body = string.format('{"name": "bench", "duration": %s}', args[1] or "3600")
end
