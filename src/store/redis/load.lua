-- Load a session. KEYS: data hash, marker. ARGV: idle_ms, refresh_ms, now_ms.
-- Returns {'live', pttl_before, field, value, ...}, {'dead'} or {'unknown'}.
-- Fields starting with '#' are metadata (user, created, client, agent, and
-- seen: when the session was last refreshed, Unix ms; the TTL cannot tell,
-- because the absolute deadline caps it).
-- The data hash expires after idle_ms without a refresh, never beyond the
-- marker (which expires at the id's absolute deadline). A read refreshes the
-- TTL only if it was last refreshed more than refresh_ms ago, so reads do
-- not cost a write each.
local data, marker = KEYS[1], KEYS[2]
local idle, refresh, now = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local fields = redis.call('HGETALL', data)
if #fields == 0 then
  if redis.call('EXISTS', marker) == 1 then
    return {'dead'}
  end
  return {'unknown'}
end
local ttl = redis.call('PTTL', data)
if ttl >= 0 and ttl < idle - refresh then
  local left = redis.call('PTTL', marker)
  local want = idle
  if left > 0 and left < want then
    want = left
  end
  redis.call('PEXPIRE', data, want)
  redis.call('HSET', data, '#seen', now)
end
table.insert(fields, 1, tostring(ttl))
table.insert(fields, 1, 'live')
return fields
