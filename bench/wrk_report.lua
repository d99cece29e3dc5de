-- Prints wrk's results as one JSON line. "latency" lists each distinct latency
-- (microseconds) with its count, so that slices of a run can be merged into exact
-- percentiles over all of its requests (wrk's own summary has no p95 either).
done = function(summary, latency, requests)
  local e = summary.errors
  local pairs = {}
  for i = 1, #latency do
    local value, count = latency(i)
    pairs[#pairs + 1] = string.format("[%d,%d]", value, count)
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
    '"latency":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(pairs, ",")))
end
