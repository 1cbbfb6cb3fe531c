//! The Lua scripts that make each Redis operation atomic. Keys are built from the prefix
//! passed as the first argument; every key carries the prefix's hash tag (`{prefix}:`), so on
//! a Redis Cluster they all live in one slot and the scripts stay valid.
//!
//! Stored layout (`K` = `{prefix}:`):
//! - `K ready` stream, group `workers`: due deliveries, field `d` = `JOB:INDEX`, `q` = due ms.
//! - `K sched` sorted set of `JOB:FROM:TO` ranges (score = due ms): a new job is one member,
//!   a retry is a one-delivery range. `lease` moves at most its batch size from due ranges to
//!   the stream, so a million-recipient job costs O(1) to commit and O(batch) to start.
//! - `K job:JOB` hash: kind, created, due, total and the counts; `K payload:JOB` string.
//! - `K jobs` sorted set of job ids (score = created ms), for the newest jobs first.
//! - `K rcpt:JOB` hash: index → `to` LF `vars` (written in chunks before the job commits).
//! - `K st:JOB` hash: index → `state|attempts|due|entry|` then `-` or `+reply`; absent means
//!   queued, never attempted, due at the job's due time.
//! - `K tk:JOB` hash: index → lease takeovers; past the limit the delivery goes to `K dead`.
//! - `K events` stream with ids `SEQ-1`, SEQ from `K eventseq`: the cursor.
//! - `K idem:KEY` string, `K suppressed` hash.

/// Shared Lua helpers, prepended to scripts that touch delivery state.
const HELPERS: &str = r#"
local K = '{' .. ARGV[1] .. '}:'
local BUCKET = {[0]='queued','queued','deferred','delivered','bounced','expired','suppressed'}
local function split_id(did)
  local job, idx = string.match(did, '^([^:]+):(%d+)$')
  return job, idx
end
local function get_state(job, idx)
  local v = redis.call('HGET', K .. 'st:' .. job, idx)
  if not v then
    local due = redis.call('HGET', K .. 'job:' .. job, 'due')
    return {code=0, attempts=0, due=due or '0', entry='', reply=false}
  end
  local c, a, d, e, f, r = string.match(v, '^(%d)|(%d+)|(%d+)|([^|]*)|([+-])(.*)$')
  return {code=tonumber(c), attempts=tonumber(a), due=d, entry=e, reply=(f == '+') and r or false}
end
local function put_state(job, idx, s)
  local r = s.reply and ('+' .. s.reply) or '-'
  redis.call('HSET', K .. 'st:' .. job, idx,
    s.code .. '|' .. s.attempts .. '|' .. s.due .. '|' .. s.entry .. '|' .. r)
end
local function move_count(job, from, to)
  redis.call('HINCRBY', K .. 'job:' .. job, BUCKET[from], -1)
  redis.call('HINCRBY', K .. 'job:' .. job, BUCKET[to], 1)
end
local function recipient_to(job, idx)
  local v = redis.call('HGET', K .. 'rcpt:' .. job, idx) or ''
  local nl = string.find(v, '\n', 1, true)
  if nl then return string.sub(v, 1, nl - 1), string.sub(v, nl + 1) end
  return v, ''
end
local function add_event(job, idx, kind, reply, now)
  local seq = redis.call('INCR', K .. 'eventseq')
  local to = recipient_to(job, idx)
  local fields = {'job', job, 'index', idx, 'to', to, 'kind', kind, 'at', now}
  if reply then table.insert(fields, 'reply'); table.insert(fields, reply) end
  redis.call('XADD', K .. 'events', seq .. '-1', unpack(fields))
end
local function drop_entry(entry)
  if entry ~= '' then
    redis.call('XACK', K .. 'ready', 'workers', entry)
    redis.call('XDEL', K .. 'ready', entry)
  end
end
"#;

/// ARGV: prefix, job, kind, created ms, due ms, total, payload, idempotency key or '',
/// idempotency value, send_at ms (0 for none). Makes a staged job visible: job hash, payload, one schedule range, its
/// place in the list of jobs.
const COMMIT: &str = r#"
local job = ARGV[2]
if redis.call('EXISTS', K .. 'job:' .. job) == 1 then return 0 end
redis.call('HSET', K .. 'job:' .. job, 'kind', ARGV[3], 'created', ARGV[4], 'due', ARGV[5],
  'total', ARGV[6], 'queued', ARGV[6], 'delivered', 0, 'deferred', 0, 'bounced', 0,
  'expired', 0, 'suppressed', 0, 'send_at', ARGV[10])
redis.call('SET', K .. 'payload:' .. job, ARGV[7])
redis.call('PERSIST', K .. 'rcpt:' .. job)
redis.call('ZADD', K .. 'sched', ARGV[5], job .. ':0:' .. ARGV[6])
redis.call('ZADD', K .. 'jobs', ARGV[4], job)
if ARGV[8] ~= '' then redis.call('SET', K .. 'idem:' .. ARGV[8], ARGV[9], 'KEEPTTL') end
return 1
"#;

/// ARGV: prefix, consumer, max, now ms, lease ms, max takeovers, dead-letter reply.
/// Returns a flat list: id, to, vars, attempts, created ms, due ms for each leased delivery.
const LEASE: &str = r#"
local consumer, max, now, lease_ms, max_tk = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
-- 1. Move due ranges from the schedule to the stream, at most `max` deliveries.
local budget = max
local due = redis.call('ZRANGEBYSCORE', K .. 'sched', '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
for i = 1, #due, 2 do
  if budget <= 0 then break end
  local member, score = due[i], due[i + 1]
  local job, from, to = string.match(member, '^([^:]+):(%d+):(%d+)$')
  from, to = tonumber(from), tonumber(to)
  local n = math.min(budget, to - from)
  for j = from, from + n - 1 do
    redis.call('XADD', K .. 'ready', '*', 'd', job .. ':' .. j, 'q', score)
  end
  redis.call('ZREM', K .. 'sched', member)
  if from + n < to then
    redis.call('ZADD', K .. 'sched', score, job .. ':' .. (from + n) .. ':' .. to)
  end
  budget = budget - n
end
-- 2. Take over deliveries whose lease ran out; dead-letter those taken over too often.
local entries = {}
local claimed = redis.call('XAUTOCLAIM', K .. 'ready', 'workers', consumer, lease_ms, '0-0', 'COUNT', max)
for _, e in ipairs(claimed[2]) do
  local did = e[2][2]
  local job, idx = split_id(did)
  local tk = redis.call('HINCRBY', K .. 'tk:' .. job, idx, 1)
  if tk > max_tk then
    local s = get_state(job, idx)
    redis.call('XADD', K .. 'dead', '*', 'd', did, 'takeovers', tk)
    drop_entry(e[1])
    if s.code < 3 then
      move_count(job, s.code, 5)
      s.code, s.entry, s.reply = 5, '', ARGV[7]
      put_state(job, idx, s)
      add_event(job, idx, 'expired', ARGV[7], now)
    end
  else
    table.insert(entries, e)
  end
end
-- 3. New deliveries.
local want = max - #entries
if want > 0 then
  local r = redis.call('XREADGROUP', 'GROUP', 'workers', consumer, 'COUNT', want, 'STREAMS', K .. 'ready', '>')
  if r and r[1] then
    for _, e in ipairs(r[1][2]) do table.insert(entries, e) end
  end
end
-- 4. Mark them leased and return what the worker needs.
local out = {}
for _, e in ipairs(entries) do
  local did, q = e[2][2], e[2][4]
  local job, idx = split_id(did)
  local s = get_state(job, idx)
  if s.code >= 3 then
    drop_entry(e[1]) -- resolved without a lease (or twice): nothing to send
  else
    if s.code ~= 1 then move_count(job, s.code, 1) end
    s.code, s.entry = 1, e[1]
    put_state(job, idx, s)
    local to, vars = recipient_to(job, idx)
    local created = redis.call('HGET', K .. 'job:' .. job, 'created') or '0'
    table.insert(out, did); table.insert(out, to); table.insert(out, vars)
    table.insert(out, tostring(s.attempts)); table.insert(out, created); table.insert(out, q or s.due)
  end
end
return out
"#;

/// ARGV: prefix, now ms, then per outcome: id, kind, retry-at ms, has-reply (0/1), reply.
const COMPLETE: &str = r#"
local now = ARGV[2]
local STATE = {delivered=3, deferred=2, bounced=4, expired=5, suppressed=6}
for i = 3, #ARGV, 5 do
  local did, kind, at, has_reply, reply = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local job, idx = split_id(did)
  if job and redis.call('EXISTS', K .. 'job:' .. job) == 1 then
    local s = get_state(job, idx)
    if s.code < 3 then
      drop_entry(s.entry)
      local to = STATE[kind]
      move_count(job, s.code, to)
      s.code, s.entry = to, ''
      if kind ~= 'suppressed' then s.attempts = s.attempts + 1 end
      if has_reply == '1' then s.reply = reply end
      if kind == 'deferred' then
        s.due = at
        redis.call('ZADD', K .. 'sched', at, job .. ':' .. idx .. ':' .. (tonumber(idx) + 1))
      end
      put_state(job, idx, s)
      add_event(job, idx, kind, has_reply == '1' and reply or false, now)
    end
  end
end
return 1
"#;

/// ARGV: prefix, then ids. Gives leases back: a fresh stream entry, due as before.
const RELEASE: &str = r#"
for i = 2, #ARGV do
  local job, idx = split_id(ARGV[i])
  if job then
    local s = get_state(job, idx)
    if s.code == 1 then
      drop_entry(s.entry)
      local back = (s.attempts == 0) and 0 or 2
      move_count(job, 1, back)
      s.code, s.entry = back, ''
      put_state(job, idx, s)
      redis.call('XADD', K .. 'ready', '*', 'd', ARGV[i], 'q', s.due)
    end
  end
end
return 1
"#;

/// ARGV: prefix, now ms. Returns ready, scheduled, leased. O(schedule members).
const DEPTH: &str = r#"
local now = tonumber(ARGV[2])
local ready, scheduled = 0, 0
local members = redis.call('ZRANGE', K .. 'sched', 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  local _, from, to = string.match(members[i], '^([^:]+):(%d+):(%d+)$')
  local n = tonumber(to) - tonumber(from)
  if tonumber(members[i + 1]) <= now then ready = ready + n else scheduled = scheduled + n end
end
local leased = 0
local len = redis.call('XLEN', K .. 'ready')
local groups = redis.call('XINFO', 'GROUPS', K .. 'ready')
for _, g in ipairs(groups) do
  for j = 1, #g, 2 do
    if g[j] == 'pending' then leased = g[j + 1] end
  end
end
return {ready + len - leased, scheduled, leased}
"#;

/// The scripts, compiled once per queue.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) commit: redis::Script,
    pub(super) lease: redis::Script,
    pub(super) complete: redis::Script,
    pub(super) release: redis::Script,
    pub(super) depth: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_helpers = |body: &str| redis::Script::new(&format!("{HELPERS}\n{body}"));
        Scripts {
            commit: with_helpers(COMMIT),
            lease: with_helpers(LEASE),
            complete: with_helpers(COMPLETE),
            release: with_helpers(RELEASE),
            depth: with_helpers(DEPTH),
        }
    }
}
