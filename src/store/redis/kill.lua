-- End one session if it is live and bound to ARGV[1].
-- KEYS: data hash, marker. Returns 1 if it was ended.
if redis.call('HGET', KEYS[1], '#user') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local left = redis.call('PTTL', KEYS[2])
if left <= 0 then
  left = tonumber(ARGV[2])
end
redis.call('SET', KEYS[2], '', 'PX', left)
return 1
