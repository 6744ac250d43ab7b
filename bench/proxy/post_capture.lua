-- wrk script: like post.lua, but every request carries metadata.trajectory_id (a new id per
-- request), so the gateway captures it: logprobs asked upstream and stripped, a capture row queued.
local model = os.getenv("BENCH_MODEL") or "bench-model"
local key = os.getenv("BENCH_API_KEY")
local counter = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
  counter = counter + 1
  local body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello."}],' ..
    '"max_tokens":16,"stream":false,"metadata":{"trajectory_id":"soak-' .. counter .. '","step":"1"}}'
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"err_status":%d,"err_connect":%d,"err_read":%d,"err_timeout":%d}\n',
    summary.requests, e.status, e.connect, e.read, e.timeout))
end
