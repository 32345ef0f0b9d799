-- Shared by the wrk scripts: the run's summary as one JSON line prefixed "WRK_JSON ", and optional pacing.

-- Pacing: with BENCH_RATE and BENCH_CONNECTIONS in the environment, each connection waits a random
-- (exponential) time before each request so that all connections together offer about BENCH_RATE
-- requests/s instead of a closed loop. wrk looks for `delay` when it loads the script, so it is
-- defined only when pacing is asked for (an always-defined delay would slow the closed loop).
local rate, connections = tonumber(os.getenv("BENCH_RATE")), tonumber(os.getenv("BENCH_CONNECTIONS"))
if rate and connections and rate > 0 then
  local mean_delay_ms = 1000 * connections / rate
  delay = function()
    return math.floor(-mean_delay_ms * math.log(1 - math.random()))
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(99), latency:percentile(99.9)))
end
