-- GET /tasks?status=...&page=... with a random page and status filter.
-- args: first page, last page, page size, then the status filters to pick
-- from, URL-encoded; "-" stands for no filter.
require "common"

local first, last, size
local filters = {}

function init(args)
   first, last, size = tonumber(args[1]), tonumber(args[2]), tonumber(args[3])
   for i = 4, #args do
      filters[#filters + 1] = args[i] == "-" and "" or ("status=" .. args[i] .. "&")
   end
   math.randomseed(first + last)
end

function request()
   local filter = filters[math.random(1, #filters)]
   local page = math.random(first, last)
   return wrk.format("GET", "/tasks?" .. filter .. "page=" .. page .. "&page_size=" .. size)
end
