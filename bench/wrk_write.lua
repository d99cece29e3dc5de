-- Only authenticated post creations (TOKEN from the environment), each body unique.
local token = os.getenv("TOKEN")
local counter = 0
request = function()
  counter = counter + 1
  local body = '{"title":"bench write ' .. counter .. '","content":"written by the benchmark",'
    .. '"category_name":"Bench"}'
  return wrk.format("POST", "/blog/api/posts",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}, body)
end
