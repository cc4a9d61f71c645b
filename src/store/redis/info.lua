-- Metadata of a live session bound to ARGV[1]: {created, client, agent,
-- pttl, seen}, or {} if it is gone or bound to someone else. KEYS: data hash.
local m = redis.call('HMGET', KEYS[1], '#user', '#created', '#client', '#agent', '#seen')
if m[1] ~= ARGV[1] then
  return {}
end
return {m[2] or '', m[3] or '', m[4] or '', tostring(redis.call('PTTL', KEYS[1])), m[5] or ''}
