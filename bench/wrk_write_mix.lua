-- 90 % post list reads, 10 % authenticated post creations (TOKEN from the environment).
local token = os.getenv("TOKEN")
local counter = 0
request = function()
  counter = counter + 1
  if counter % 10 == 0 then
    local body = '{"title":"bench ' .. counter .. '","content":"written by the benchmark"}'
    return wrk.format("POST", "/blog/api/posts",
      {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
  end
  return wrk.format("GET", "/blog/api/posts?limit=20")
end
