//! The Lua scripts that make each Redis operation atomic. Keys are built from the prefix
//! passed as the first argument; every key carries the prefix's hash tag (`{prefix}:`), so on
//! a Redis Cluster they all live in one slot and the scripts stay valid.
//!
//! Stored layout (`K` = `{prefix}:`):
//! - `K ready` stream, group `workers`: due deliveries, field `d` = `JOB:INDEX`, `q` = due ms.
//! - `K sched` sorted set of `JOB:FROM:TO:C` ranges (score = due ms): a new job is one
//!   member, a retry or a postponed release is a one-delivery range. `lease` moves at most
//!   its batch size from due ranges to the stream, so a million-recipient job costs O(1) to
//!   commit and O(batch) to start. `C` says which depth counter the range was added to:
//!   `r`, due when added; `s`, due later (ranges written before it have none: `s`).
//! - `K depth` hash: `due` and `sched`, the deliveries in `K sched` ranges by `C`, kept by
//!   every script that adds or moves one, so the depth is O(1).
//! - `K job:JOB` hash: kind, created, due, send_at, total, the counts, and `done` (ms) once
//!   every delivery is final; `K payload:JOB` string.
//! - `K jobs` sorted set of job ids (score = created ms), for the newest jobs first; `K done`
//!   sorted set of finished job ids (score = done ms), for retention.
//! - `K rcpt:JOB` hash: index → `to` LF `vars` (written in chunks before the job commits).
//! - `K st:JOB` hash: index → `state|attempts|due|entry|token|first|` then `-` or `+reply`;
//!   absent means queued, never attempted, due at the job's due time. `token` is the
//!   fencing token of the delivery's latest lease; `first` the ms of its first attempt.
//! - `K tk:JOB` hash: index → lease takeovers; past the limit the delivery goes to `K dead`.
//! - `K events` stream with ids `SEQ-1`, SEQ from `K eventseq`: the cursor. `K evmin` sorted
//!   set: the first SEQ of each minute (score = the minute), so events can be trimmed by time.
//! - `K idem:KEY` string: `pending|HASH|JOB` while a submission is stored (short TTL), then
//!   `HASH|JOB|N` for 24 h.
//! - `K sup` hash: `ADDRESS` NUL `SCOPE` → `at ms|reason`; `K supidx` sorted set of the same
//!   fields (score 0), for listing in address order.

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
    return {code=0, attempts=0, due=due or '0', entry='', token=0, first=0, reply=false}
  end
  local c, a, d, e, t, fi, f, r = string.match(v, '^(%d)|(%d+)|(%d+)|([^|]*)|(%d+)|(%d+)|([+-])(.*)$')
  if not c then
    -- The layout before fencing tokens.
    c, a, d, e, f, r = string.match(v, '^(%d)|(%d+)|(%d+)|([^|]*)|([+-])(.*)$')
    t, fi = '0', '0'
  end
  return {code=tonumber(c), attempts=tonumber(a), due=d, entry=e, token=tonumber(t),
          first=tonumber(fi), reply=(f == '+') and r or false}
end
local function put_state(job, idx, s)
  local r = s.reply and ('+' .. s.reply) or '-'
  redis.call('HSET', K .. 'st:' .. job, idx,
    s.code .. '|' .. s.attempts .. '|' .. s.due .. '|' .. s.entry .. '|' .. s.token .. '|' .. s.first .. '|' .. r)
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
local function add_event(job, idx, kind, reply, now, late, via)
  local seq = redis.call('INCR', K .. 'eventseq')
  local minute = math.floor(tonumber(now) / 60000)
  if tonumber(redis.call('GET', K .. 'evlast') or '-1') ~= minute then
    redis.call('SET', K .. 'evlast', minute)
    redis.call('ZADD', K .. 'evmin', minute, seq)
  end
  local to = recipient_to(job, idx)
  local fields = {'job', job, 'index', idx, 'to', to, 'kind', kind, 'at', now}
  if reply then table.insert(fields, 'reply'); table.insert(fields, reply) end
  if late then table.insert(fields, 'async'); table.insert(fields, '1') end
  if via and via ~= '' then table.insert(fields, 'via'); table.insert(fields, via) end
  redis.call('XADD', K .. 'events', seq .. '-1', unpack(fields))
end
local function drop_entry(entry)
  if entry ~= '' then
    redis.call('XACK', K .. 'ready', 'workers', entry)
    redis.call('XDEL', K .. 'ready', entry)
  end
end
local function schedule_range(job, from, to, at, now)
  local counter = (tonumber(at) <= tonumber(now)) and 'r' or 's'
  redis.call('ZADD', K .. 'sched', at, job .. ':' .. from .. ':' .. to .. ':' .. counter)
  redis.call('HINCRBY', K .. 'depth', counter == 'r' and 'due' or 'sched', to - from)
end
local function schedule(job, idx, at, now)
  schedule_range(job, idx, tonumber(idx) + 1, at, now)
end
local function suppression_key(address, scope)
  return address .. '\0' .. scope
end
"#;

/// ARGV: prefix, job, kind, created ms, due ms, total, payload, idempotency key or '',
/// idempotency value, send_at ms (0 for none), idempotency TTL s. Makes a staged job visible: job hash,
/// payload, one schedule range, its place in the list of jobs; the idempotency key turns
/// from pending to final.
const COMMIT: &str = r#"
local job = ARGV[2]
if redis.call('EXISTS', K .. 'job:' .. job) == 1 then return 0 end
redis.call('HSET', K .. 'job:' .. job, 'kind', ARGV[3], 'created', ARGV[4], 'due', ARGV[5],
  'total', ARGV[6], 'queued', ARGV[6], 'delivered', 0, 'deferred', 0, 'bounced', 0,
  'expired', 0, 'suppressed', 0, 'send_at', ARGV[10])
redis.call('SET', K .. 'payload:' .. job, ARGV[7])
redis.call('PERSIST', K .. 'rcpt:' .. job)
schedule_range(job, 0, tonumber(ARGV[6]), ARGV[5], ARGV[4])
redis.call('ZADD', K .. 'jobs', ARGV[4], job)
if ARGV[8] ~= '' then redis.call('SET', K .. 'idem:' .. ARGV[8], ARGV[9], 'EX', ARGV[11]) end
return 1
"#;

/// ARGV: prefix, consumer, max, now ms, lease ms, max takeovers, dead-letter reply.
/// Returns a flat list: id, to, vars, attempts, created ms, due ms, token, first ms for each
/// leased delivery; every lease gets the delivery's next token.
const LEASE: &str = r#"
local consumer, max, now, lease_ms, max_tk = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], tonumber(ARGV[6])
-- 1. Move due ranges from the schedule to the stream, at most `max` deliveries.
local budget = max
local due = redis.call('ZRANGEBYSCORE', K .. 'sched', '-inf', now, 'WITHSCORES', 'LIMIT', 0, max)
for i = 1, #due, 2 do
  if budget <= 0 then break end
  local member, score = due[i], due[i + 1]
  local job, from, to, counter = string.match(member, '^([^:]+):(%d+):(%d+):?([rs]?)$')
  from, to = tonumber(from), tonumber(to)
  if counter == '' then counter = 's' end
  local n = math.min(budget, to - from)
  for j = from, from + n - 1 do
    redis.call('XADD', K .. 'ready', '*', 'd', job .. ':' .. j, 'q', score)
  end
  redis.call('ZREM', K .. 'sched', member)
  if from + n < to then
    redis.call('ZADD', K .. 'sched', score, job .. ':' .. (from + n) .. ':' .. to .. ':' .. counter)
  end
  redis.call('HINCRBY', K .. 'depth', counter == 'r' and 'due' or 'sched', -n)
  budget = budget - n
end
-- 2. Take over deliveries whose lease ran out (their holder stopped renewing: it died);
--    dead-letter those taken over too often.
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
-- 4. Mark them leased with a new token and return what the worker needs.
local out = {}
for _, e in ipairs(entries) do
  local did, q = e[2][2], e[2][4]
  local job, idx = split_id(did)
  local s = get_state(job, idx)
  if s.code >= 3 then
    drop_entry(e[1]) -- resolved without a lease (or twice): nothing to send
  else
    if s.code ~= 1 then move_count(job, s.code, 1) end
    s.code, s.entry, s.token = 1, e[1], s.token + 1
    put_state(job, idx, s)
    local to, vars = recipient_to(job, idx)
    local created = redis.call('HGET', K .. 'job:' .. job, 'created') or '0'
    table.insert(out, did); table.insert(out, to); table.insert(out, vars)
    table.insert(out, tostring(s.attempts)); table.insert(out, created); table.insert(out, q or s.due)
    table.insert(out, tostring(s.token)); table.insert(out, tostring(s.first))
  end
end
return out
"#;

/// ARGV: prefix, consumer, then pairs of id and token. Extends the leases still held with
/// that token (the entry is claimed afresh by this consumer, which resets its idle time);
/// returns the ids whose lease is gone.
const RENEW: &str = r#"
local consumer = ARGV[2]
local lost = {}
for i = 3, #ARGV, 2 do
  local did, token = ARGV[i], tonumber(ARGV[i + 1])
  local job, idx = split_id(did)
  local s = job and get_state(job, idx)
  if s and s.code == 1 and s.token == token and s.entry ~= '' then
    redis.call('XCLAIM', K .. 'ready', 'workers', consumer, 0, s.entry, 'JUSTID')
  else
    table.insert(lost, did)
  end
end
return lost
"#;

/// ARGV: prefix, now ms, then per outcome: id, token, kind, retry-at ms, has-reply (0/1),
/// reply, the suppression key of the address to suppress for all mail ('' for none:
/// the key is computed by the caller, with IDNA, which Lua cannot), and how the attempt
/// left ('' for not on a connection). Returns how many were refused for a stale token.
const COMPLETE: &str = r#"
local now = ARGV[2]
local STATE = {delivered=3, deferred=2, bounced=4, expired=5, suppressed=6}
local stale = 0
local touched = {}
for i = 3, #ARGV, 8 do
  local did, token, kind, at, has_reply, reply, suppress, via =
    ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6],
    ARGV[i + 7]
  local job, idx = split_id(did)
  local s = job and redis.call('EXISTS', K .. 'job:' .. job) == 1 and get_state(job, idx)
  if not s or s.code ~= 1 or s.token ~= token then
    stale = stale + 1
  else
    drop_entry(s.entry)
    local to = STATE[kind]
    move_count(job, s.code, to)
    s.code, s.entry = to, ''
    if kind ~= 'suppressed' then
      s.attempts = s.attempts + 1
      if s.first == 0 then s.first = tonumber(now) end
    end
    if has_reply == '1' then s.reply = reply end
    if kind == 'deferred' then
      s.due = at
      schedule(job, idx, at, now)
    end
    put_state(job, idx, s)
    add_event(job, idx, kind, has_reply == '1' and reply or false, now, false, via)
    if suppress ~= '' then
      local key = suppression_key(suppress, 'all')
      redis.call('HSET', K .. 'sup', key, now .. '|' .. reply)
      redis.call('ZADD', K .. 'supidx', 0, key)
    end
    touched[job] = true
  end
end
for job in pairs(touched) do
  local q = redis.call('HMGET', K .. 'job:' .. job, 'queued', 'deferred', 'done')
  if tonumber(q[1]) + tonumber(q[2]) == 0 and not q[3] then
    redis.call('HSET', K .. 'job:' .. job, 'done', now)
    redis.call('ZADD', K .. 'done', now, job)
  end
end
return stale
"#;

/// ARGV: prefix, now ms, not-before ms (0: as due before), then pairs of id and token.
/// Gives leases back unattempted: due now, a fresh stream entry; due later, a schedule range.
const RELEASE: &str = r#"
local now, not_before = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, #ARGV, 2 do
  local did, token = ARGV[i], tonumber(ARGV[i + 1])
  local job, idx = split_id(did)
  local s = job and get_state(job, idx)
  if s and s.code == 1 and s.token == token then
    drop_entry(s.entry)
    local back = (s.attempts == 0) and 0 or 2
    move_count(job, 1, back)
    s.code, s.entry = back, ''
    if not_before > tonumber(s.due) then s.due = tostring(not_before) end
    put_state(job, idx, s)
    if tonumber(s.due) > now then
      schedule(job, idx, s.due, now)
    else
      redis.call('XADD', K .. 'ready', '*', 'd', did, 'q', s.due)
    end
  end
end
return 1
"#;

/// ARGV: prefix. Returns ready, scheduled, leased: counters, a stream length and the
/// group's pending count, O(1).
const DEPTH: &str = r#"
local scheduled = tonumber(redis.call('HGET', K .. 'depth', 'sched') or '0')
local due = tonumber(redis.call('HGET', K .. 'depth', 'due') or '0')
local len = redis.call('XLEN', K .. 'ready')
local leased = 0
if len > 0 then
  local groups = redis.call('XINFO', 'GROUPS', K .. 'ready')
  for _, g in ipairs(groups) do
    for j = 1, #g, 2 do
      if g[j] == 'pending' then leased = g[j + 1] end
    end
  end
end
return {due + len - leased, scheduled, leased}
"#;

/// ARGV: prefix, events cutoff ms, jobs cutoff ms, batch. Trims the event log before the
/// cutoff's minute and removes up to `batch` finished jobs done before their cutoff.
/// Returns events removed, jobs removed.
const PRUNE: &str = r#"
local events_cutoff, jobs_cutoff, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local minute = math.floor(events_cutoff / 60000)
local before = redis.call('XLEN', K .. 'events')
local keep = redis.call('ZRANGEBYSCORE', K .. 'evmin', minute, '+inf', 'LIMIT', 0, 1)
if keep[1] then
  redis.call('XTRIM', K .. 'events', 'MINID', keep[1] .. '-0')
else
  local last = redis.call('GET', K .. 'evlast')
  if last and tonumber(last) < minute then redis.call('XTRIM', K .. 'events', 'MAXLEN', 0) end
end
redis.call('ZREMRANGEBYSCORE', K .. 'evmin', '-inf', '(' .. minute)
local events = before - redis.call('XLEN', K .. 'events')
local jobs = redis.call('ZRANGEBYSCORE', K .. 'done', '-inf', jobs_cutoff, 'LIMIT', 0, batch)
for _, job in ipairs(jobs) do
  redis.call('UNLINK', K .. 'job:' .. job, K .. 'payload:' .. job, K .. 'rcpt:' .. job,
    K .. 'st:' .. job, K .. 'tk:' .. job)
  redis.call('ZREM', K .. 'jobs', job)
  redis.call('ZREM', K .. 'done', job)
end
return {events, #jobs}
"#;

/// ARGV: prefix, job, index, kind, reply, now ms, then either nothing or the suppression
/// field and value. A report after the handoff: its event (marked `async`) and the
/// suppression, or 0 when the delivery is unknown. Returns the recipient's address.
const LATE: &str = r#"
local job, idx = ARGV[2], ARGV[3]
local to = recipient_to(job, idx)
if to == '' then return 0 end
add_event(job, idx, ARGV[4], ARGV[5], ARGV[6], true)
if ARGV[7] then
  redis.call('HSET', K .. 'sup', ARGV[7], ARGV[8])
  redis.call('ZADD', K .. 'supidx', 0, ARGV[7])
end
return to
"#;

/// The scripts, compiled once per queue.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) commit: redis::Script,
    pub(super) lease: redis::Script,
    pub(super) renew: redis::Script,
    pub(super) complete: redis::Script,
    pub(super) release: redis::Script,
    pub(super) depth: redis::Script,
    pub(super) prune: redis::Script,
    pub(super) late: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let with_helpers = |body: &str| redis::Script::new(&format!("{HELPERS}\n{body}"));
        Scripts {
            commit: with_helpers(COMMIT),
            lease: with_helpers(LEASE),
            renew: with_helpers(RENEW),
            complete: with_helpers(COMPLETE),
            release: with_helpers(RELEASE),
            depth: with_helpers(DEPTH),
            prune: with_helpers(PRUNE),
            late: with_helpers(LATE),
        }
    }
}
