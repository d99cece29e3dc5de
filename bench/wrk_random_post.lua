-- GET /blog/api/posts/{random id} over the seeded id range (MAX_ID from the environment).
local max_id = tonumber(os.getenv("MAX_ID") or "10000")
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/blog/api/posts/" .. math.random(1, max_id))
end
