-- GET /tasks/{id} for random ids; args: first id, last id, random seed.
require "common"

local first, last

function init(args)
   first, last = tonumber(args[1]), tonumber(args[2])
   math.randomseed(tonumber(args[3]) or 1)
end

function request()
   return wrk.format("GET", "/tasks/" .. math.random(first, last))
end
