-- Apply one response's operations atomically.
-- KEYS: old data hash, old marker, new data hash, new marker (the new id is
--       pre-drawn in the same cluster slot; unused unless Flush or Rotate).
-- ARGV: idle_ms, old_left_ms (to the old id's absolute deadline),
--       new_left_ms, max_bytes, flags ('f' flush, 'r' rotate),
--       successor ('<new id>|<issued ms>'), user to bind ('' for none),
--       created ms, client, agent (recorded if the session is new),
--       now ms (the session's '#seen'),
--       then edits as triples ('s', key, json) or ('d', key, '').
-- Fields starting with '#' are metadata, not session keys.
-- Returns {'ok', '1'|'0' (stored), user after, user before},
--         {'moved', successor}, {'gone'} or {'toolarge', size}.
local data, marker, new_data, new_marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local idle = tonumber(ARGV[1])
local old_left, new_left = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_bytes = tonumber(ARGV[4])
local flush = string.find(ARGV[5], 'f', 1, true) ~= nil
local renew = flush or string.find(ARGV[5], 'r', 1, true) ~= nil
local successor = ARGV[6]
local bind = ARGV[7]
local created, client, agent = ARGV[8], ARGV[9], ARGV[10]
local now = ARGV[11]
local EDITS = 12

-- Dead or moved ids first: a late write follows a rotation, never a flush.
if redis.call('EXISTS', data) == 0 then
  local m = redis.call('GET', marker)
  if m then
    if m ~= '' then
      return {'moved', m}
    end
    return {'gone'}
  end
end

-- The session after the edits, computed before anything is written.
local fields = {}
local all = redis.call('HGETALL', data)
local before = ''
for i = 1, #all, 2 do
  if all[i] == '#user' then
    before = all[i + 1]
  end
  if not flush then
    fields[all[i]] = all[i + 1]
  end
end
local meta_changed = false
if fields['#created'] == nil then
  fields['#created'] = created
  if client ~= '' then fields['#client'] = client end
  if agent ~= '' then fields['#agent'] = agent end
  meta_changed = true
end
if bind ~= '' and bind ~= fields['#user'] then
  fields['#user'] = bind
  meta_changed = true
end
for i = EDITS, #ARGV, 3 do
  if ARGV[i] == 's' then
    fields[ARGV[i + 1]] = ARGV[i + 2]
  else
    fields[ARGV[i + 1]] = nil
  end
end
fields['#seen'] = now
-- Size of the encoded object {"k":v,...}: keys need no escaping.
local size, n = 2, 0
for k, v in pairs(fields) do
  if string.sub(k, 1, 1) ~= '#' then
    size = size + #k + 3 + #v
    n = n + 1
  end
end
local after = fields['#user'] or ''
if n > 1 then
  size = size + n - 1
end
if n > 0 and size > max_bytes then
  return {'toolarge', tostring(size)}
end

local target_data, target_marker, left = data, marker, old_left
if renew then
  target_data, target_marker, left = new_data, new_marker, new_left
  redis.call('DEL', data)
  local next = ''
  if not flush then
    next = successor
  end
  redis.call('SET', marker, next, 'PX', old_left)
end

if n == 0 and after == '' then
  if not renew then
    -- Emptied: back to an unknown id, not a dead one.
    redis.call('DEL', data, marker)
  end
  return {'ok', '0', '', before}
end

if renew then
  redis.call('DEL', new_data)
  local batch = {}
  for k, v in pairs(fields) do
    batch[#batch + 1] = k
    batch[#batch + 1] = v
    if #batch >= 200 then
      redis.call('HSET', new_data, unpack(batch))
      batch = {}
    end
  end
  if #batch > 0 then
    redis.call('HSET', new_data, unpack(batch))
  end
else
  for i = EDITS, #ARGV, 3 do
    if ARGV[i] == 's' then
      redis.call('HSET', data, ARGV[i + 1], ARGV[i + 2])
    else
      redis.call('HDEL', data, ARGV[i + 1])
    end
  end
  local meta = {'#seen', now}
  if meta_changed then
    for _, k in ipairs({'#created', '#client', '#agent', '#user'}) do
      if fields[k] ~= nil then
        meta[#meta + 1] = k
        meta[#meta + 1] = fields[k]
      end
    end
  end
  redis.call('HSET', data, unpack(meta))
end

local ttl = idle
if left < ttl then
  ttl = left
end
redis.call('PEXPIRE', target_data, ttl)
if redis.call('EXISTS', target_marker) == 0 then
  redis.call('SET', target_marker, '', 'PX', left)
end
return {'ok', '1', after, before}
