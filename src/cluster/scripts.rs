//! The cluster's Lua scripts: each read-and-write atomic, with Redis's own clock.

/// Redis's clock in microseconds and milliseconds (a double holds µs since 1970 exactly).
const NOW: &str = "
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
";

/// GCRA, a few permits at once. KEYS[1] the rate's arrival time; ARGV period µs, burst,
/// want. Returns {granted, wait µs}: up to `want` permits while the arrival time stays
/// within `burst` periods of now, else none and how long until one fits.
const GCRA: &str = "
local period = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now_us then tat = now_us end
local room = math.floor((now_us + burst * period - tat) / period)
if room < 1 then
  return {0, math.ceil(tat + period - now_us - burst * period)}
end
local n = math.min(room, want)
tat = tat + n * period
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now_us) / 1000) + 1000)
return {n, 0}
";

/// Takes a connection slot. KEYS[1] the site's slots; ARGV cap, member, lease ms.
const TAKE_SLOT: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
";

/// Renews slots still held. KEYS[1] the site's slots; ARGV lease ms, members... Returns
/// how many had expired (and are not renewed: another worker may hold them now).
const RENEW: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local lease = tonumber(ARGV[1])
local lost = 0
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], 'XX', 'CH', now_ms + lease, ARGV[i]) == 0
     and not redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    lost = lost + 1
  end
end
redis.call('PEXPIRE', KEYS[1], lease * 2)
return lost
";

/// Removes one worker's slots. KEYS[1] the site's slots; ARGV the members' prefix.
const RELEASE_ALL: &str = "
local n = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(m, 1, #ARGV[1]) == ARGV[1] then
    redis.call('ZREM', KEYS[1], m)
    n = n + 1
  end
end
return n
";

/// Records a slow-down. KEYS[1] the site's throttle; ARGV worker, pause ms.
const REPORT_THROTTLE: &str = "
redis.call('SET', KEYS[1], now_ms .. '|' .. ARGV[1], 'PX', tonumber(ARGV[2]))
return 1
";

/// Leads or keeps leading. KEYS[1] the lead; ARGV worker, ttl ms. Returns 1 when led.
const LEAD: &str = "
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return 1
end
return 0
";

/// Saves the webhook cursor, fenced by the lead. KEYS[1] the webhooks lead, KEYS[2] the
/// cursor; ARGV worker, cursor. Returns 1 when saved.
const SAVE_CURSOR: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local old = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) > old then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
";

/// A heartbeat. KEYS[1] the worker's record, KEYS[2] the list; ARGV id, JSON, ttl ms.
const BEAT: &str = "
redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], now_ms, ARGV[1])
return 1
";

/// The live workers' records. KEYS[1] the list; ARGV key prefix, ttl ms. Drops the ids
/// whose heartbeat is older than the ttl.
const WORKERS: &str = "
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[2]))
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('GET', ARGV[1] .. 'worker:' .. id)
  if record then table.insert(out, record) end
end
return out
";

pub(super) struct Scripts {
    pub(super) gcra: redis::Script,
    pub(super) take_slot: redis::Script,
    pub(super) renew: redis::Script,
    pub(super) release_all: redis::Script,
    pub(super) lead: redis::Script,
    pub(super) report_throttle: redis::Script,
    pub(super) save_cursor: redis::Script,
    pub(super) beat: redis::Script,
    pub(super) workers: redis::Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let timed = |body: &str| redis::Script::new(&format!("{NOW}{body}"));
        Self {
            gcra: timed(GCRA),
            take_slot: timed(TAKE_SLOT),
            renew: timed(RENEW),
            release_all: redis::Script::new(RELEASE_ALL),
            lead: redis::Script::new(LEAD),
            report_throttle: timed(REPORT_THROTTLE),
            save_cursor: redis::Script::new(SAVE_CURSOR),
            beat: timed(BEAT),
            workers: timed(WORKERS),
        }
    }
}
