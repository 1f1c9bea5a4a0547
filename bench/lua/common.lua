-- Shared by every benchmark script: each thread counts its answers per HTTP
-- status, and done() prints one JSON line that bench/load.py reads.

local threads = {}

-- Per thread: each wrk thread runs this file in its own Lua state.
statuses = {}

function setup(thread)
   table.insert(threads, thread)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

local function counts_json()
   local totals = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         totals[status] = (totals[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(totals) do
      parts[#parts + 1] = string.format('"%d": %d', status, count)
   end
   return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %.0f, "p50_us": %.0f, "p90_us": %.0f, '
         .. '"p99_us": %.0f, "max_us": %.0f, "socket_errors": {"connect": %d, "read": %d, '
         .. '"write": %d, "timeout": %d}, "statuses": %s}\n',
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max, errors.connect, errors.read, errors.write,
      errors.timeout, counts_json()))
end
