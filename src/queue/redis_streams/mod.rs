//! The `redis` backend: Redis Streams with a consumer group, for several volley processes on
//! several machines sharing one queue. The layout and the atomic Lua scripts are described
//! in [`scripts`]; every operation that changes delivery state is one script, so it happens
//! whole or not at all, and several processes never lease the same delivery at once
//! (`XREADGROUP` hands each stream entry to one consumer).
//!
//! Leases: a leased delivery is a pending entry of its consumer (this process, named
//! `host-pid-random`). If it is not completed or released within the lease time, the next
//! `lease` by any process takes it over with `XAUTOCLAIM`; after 5 takeovers (a delivery that
//! keeps killing its workers) it goes to the `dead` stream and is marked expired.
//!
//! Durability is what Redis persistence gives, no more:
//! - With `appendonly yes` and `appendfsync always`, an acknowledged write is on disk. On
//!   Redis 7.2 and later, when AOF is on, `submit` and `complete` also wait with
//!   `WAITAOF 1 0` until the local AOF holds the write, so `appendfsync everysec` becomes
//!   as safe as `always` for them. On older servers with `everysec`, up to about a second of
//!   acknowledged work can be lost in a power failure.
//! - Without AOF (RDB snapshots only, or no persistence) a Redis crash loses everything since
//!   the last snapshot: do not run production that way. Replicas do not add durability
//!   unless `WAITAOF`/`WAIT` is extended to them.
//! - `maxmemory-policy` must be `noeviction`: an evicted key is a lost delivery.
//!
//! It knows nothing of SMTP, templates or HTTP.

mod scripts;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use redis::aio::ConnectionManager;

use self::scripts::Scripts;
use super::Queue;
use super::error::{QueueError, Result};
use super::id::{DeliveryId, JobId};
use super::types::{
    Counts, Depth, Event, EventKind, IDEMPOTENCY_TTL, JobKind, JobStatus, Leased, NewJob,
    NewRecipient, RecipientState, RecipientStatus, Resolution, SubmitOutcome, check_recipient,
    from_ms, normalize_address, to_ms,
};

/// Recipients staged per round trip while a job is submitted.
const CHUNK: usize = 4096;
/// Takeovers after which a delivery is dead-lettered.
const MAX_TAKEOVERS: u32 = 5;
/// How long staged recipients of a submission that never commits survive.
const STAGING_TTL_S: u64 = 24 * 60 * 60;

/// The Redis queue. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisQueue {
    conn: ConnectionManager,
    prefix: String,
    consumer: String,
    lease: Duration,
    scripts: Arc<Scripts>,
    /// Redis 7.2+ with AOF on: wait for the local fsync after durable writes.
    wait_aof: bool,
}

impl std::fmt::Debug for RedisQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisQueue")
            .field("prefix", &self.prefix)
            .field("consumer", &self.consumer)
            .field("lease", &self.lease)
            .field("wait_aof", &self.wait_aof)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

impl RedisQueue {
    /// Connects, creates the consumer group if needed and reads the server's persistence
    /// settings. `prefix` namespaces every key (a test uses a unique one).
    pub async fn open(url: &str, prefix: &str, lease: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let mut conn = ConnectionManager::new(client).await?;
        let key = format!("{{{prefix}}}:ready");
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("workers")
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        // BUSYGROUP: another process created it first, which is fine.
        if let Err(e) = created
            && e.code() != Some("BUSYGROUP")
        {
            return Err(e.into());
        }
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        let persistence: String = redis::cmd("INFO")
            .arg("persistence")
            .query_async(&mut conn)
            .await?;
        let version: Vec<u32> = info_field(&info, "redis_version")
            .unwrap_or("0")
            .split('.')
            .filter_map(|p| p.parse().ok())
            .collect();
        let aof = info_field(&persistence, "aof_enabled") == Some("1");
        let wait_aof = aof && version.as_slice() >= [7, 2].as_slice();
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "volley".to_string());
        let consumer = format!(
            "{host}-{}-{:08x}",
            std::process::id(),
            rand::rng().random::<u32>()
        );
        Ok(RedisQueue {
            conn,
            prefix: prefix.to_string(),
            consumer,
            lease,
            scripts: Arc::new(Scripts::new()),
            wait_aof,
        })
    }

    /// This process's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn key(&self, name: &str) -> String {
        format!("{{{}}}:{name}", self.prefix)
    }

    /// Waits until the local AOF holds this connection's writes, when the server can say.
    async fn sync(&self) -> Result<()> {
        if !self.wait_aof {
            return Ok(());
        }
        let (local, _): (i64, i64) = redis::cmd("WAITAOF")
            .arg(1)
            .arg(0)
            .arg(5000)
            .query_async(&mut self.conn.clone())
            .await?;
        if local < 1 {
            return Err(QueueError::NotDurable(
                "WAITAOF: the local AOF did not confirm the write within 5 s".to_string(),
            ));
        }
        Ok(())
    }

    /// Answers from an idempotency key already set, or claims it for `job`.
    async fn claim_idempotency(&self, job: &NewJob) -> Result<Option<SubmitOutcome>> {
        let Some((key, hash)) = &job.idempotency else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let k = self.key(&format!("idem:{key}"));
        let mine = format!("{}|{}|", hex(hash), job.id);
        let set: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(&mine)
            .arg("NX")
            .arg("EX")
            .arg(IDEMPOTENCY_TTL.as_secs())
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        let theirs: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
        let Some(theirs) = theirs else {
            // Expired between SET and GET: the key is free again, but not worth a loop.
            return Ok(Some(SubmitOutcome::IdempotencyConflict));
        };
        let mut parts = theirs.split('|');
        let (h, id, n) = (parts.next(), parts.next(), parts.next());
        if h != Some(hex(hash).as_str()) {
            return Ok(Some(SubmitOutcome::IdempotencyConflict));
        }
        let id: JobId = id
            .unwrap_or_default()
            .parse()
            .map_err(|_| QueueError::corrupt("idem", theirs.clone()))?;
        // An empty count: the first submission is still being written.
        let recipients = n.and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(Some(SubmitOutcome::Existing { id, recipients }))
    }

    async fn abandon(&self, job: &NewJob) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.del(self.key(&format!("rcpt:{}", job.id))).ignore();
        if let Some((key, _)) = &job.idempotency {
            pipe.del(self.key(&format!("idem:{key}"))).ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn stage(
        &self,
        job: &NewJob,
        recipients: impl Iterator<Item = NewRecipient>,
    ) -> Result<u32> {
        let mut conn = self.conn.clone();
        let rcpt = self.key(&format!("rcpt:{}", job.id));
        let mut recipients = recipients.peekable();
        let mut next: u32 = 0;
        while recipients.peek().is_some() {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&rcpt);
            for r in recipients.by_ref().take(CHUNK) {
                check_recipient(next, &r)?;
                let mut value = r.to.into_bytes();
                value.push(b'\n');
                value.extend_from_slice(&r.vars);
                cmd.arg(next).arg(value);
                next = next
                    .checked_add(1)
                    .ok_or_else(|| QueueError::invalid("recipients", "more than 2^32 - 1"))?;
            }
            let mut pipe = redis::pipe();
            pipe.add_command(cmd).ignore();
            pipe.expire(&rcpt, STAGING_TTL_S as i64).ignore();
            pipe.query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            return Err(QueueError::invalid("recipients", "no recipients"));
        }
        Ok(next)
    }
}

fn parse_state(code: &str) -> Result<RecipientState> {
    code.parse::<u8>()
        .ok()
        .and_then(RecipientState::from_code)
        .ok_or_else(|| QueueError::corrupt("st", format!("state {code:?}")))
}

/// A number field of a stored hash; a missing or unreadable one is corruption, never 0.
fn num<T: std::str::FromStr>(
    m: &HashMap<String, String>,
    k: &str,
    table: &'static str,
) -> Result<T> {
    m.get(k)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| QueueError::corrupt(table, format!("field {k:?} is {:?}", m.get(k))))
}

/// A number in a script's answer.
fn parse_num<T: std::str::FromStr>(bytes: &[u8], what: &str) -> Result<T> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            let shown = String::from_utf8_lossy(bytes);
            QueueError::corrupt("redis", format!("{what} is {shown:?}"))
        })
}

/// A job's status from its hash; `None` when the hash is absent (empty).
fn job_status(id: JobId, m: &HashMap<String, String>) -> Result<Option<JobStatus>> {
    if m.is_empty() {
        return Ok(None);
    }
    let kind = JobKind::from_code(num(m, "kind", "job")?)
        .ok_or_else(|| QueueError::corrupt("job", format!("{id}: unknown kind")))?;
    let counts = Counts {
        total: num(m, "total", "job")?,
        queued: num(m, "queued", "job")?,
        delivered: num(m, "delivered", "job")?,
        deferred: num(m, "deferred", "job")?,
        bounced: num(m, "bounced", "job")?,
        expired: num(m, "expired", "job")?,
        suppressed: num(m, "suppressed", "job")?,
    };
    Ok(Some(JobStatus {
        id,
        kind,
        created: from_ms(num(m, "created", "job")?),
        // Jobs written before `send_at` was kept have none.
        send_at: match m.get("send_at") {
            None => None,
            Some(_) => Some(num::<u64>(m, "send_at", "job")?)
                .filter(|&ms| ms > 0)
                .map(from_ms),
        },
        state: counts.state(),
        counts,
    }))
}

impl Queue for RedisQueue {
    async fn submit(
        &self,
        job: NewJob,
        recipients: impl Iterator<Item = NewRecipient> + Send,
        now: SystemTime,
    ) -> Result<SubmitOutcome> {
        if let Some(answer) = self.claim_idempotency(&job).await? {
            return Ok(answer);
        }
        let total = match self.stage(&job, recipients).await {
            Ok(n) => n,
            Err(e) => {
                self.abandon(&job).await?;
                return Err(e);
            }
        };
        let (idem_key, idem_value) = match &job.idempotency {
            Some((k, h)) => (k.clone(), format!("{}|{}|{total}", hex(h), job.id)),
            None => (String::new(), String::new()),
        };
        let committed: i64 = self
            .scripts
            .commit
            .arg(&self.prefix)
            .arg(job.id.to_string())
            .arg(job.kind.code())
            .arg(to_ms(now))
            .arg(to_ms(job.send_at.unwrap_or(now)))
            .arg(total)
            .arg(&job.payload[..])
            .arg(idem_key)
            .arg(idem_value)
            .arg(job.send_at.map_or(0, to_ms))
            .invoke_async(&mut self.conn.clone())
            .await?;
        if committed != 1 {
            return Err(QueueError::invalid(
                "id",
                format!("job {} already exists", job.id),
            ));
        }
        self.sync().await?;
        Ok(SubmitOutcome::Created {
            id: job.id,
            recipients: total,
        })
    }

    async fn lease(&self, max: usize, now: SystemTime) -> Result<Vec<Leased>> {
        let reply = format!("volley: dead-lettered after {MAX_TAKEOVERS} lease takeovers");
        let flat: Vec<Vec<u8>> = self
            .scripts
            .lease
            .arg(&self.prefix)
            .arg(&self.consumer)
            .arg(max.max(1))
            .arg(to_ms(now))
            .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
            .arg(MAX_TAKEOVERS)
            .arg(reply)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        flat.chunks_exact(6)
            .map(|c| {
                Ok(Leased {
                    id: text(&c[0])
                        .parse()
                        .map_err(|_| QueueError::corrupt("ready", text(&c[0])))?,
                    to: text(&c[1]),
                    vars: c[2].clone(),
                    attempts: parse_num(&c[3], "attempts")?,
                    created: from_ms(parse_num(&c[4], "created")?),
                    queued_at: from_ms(parse_num(&c[5], "due")?),
                })
            })
            .collect()
    }

    async fn job_payload(&self, id: &JobId) -> Result<Option<Vec<u8>>> {
        let k = self.key(&format!("payload:{id}"));
        Ok(redis::cmd("GET")
            .arg(k)
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn complete(&self, batch: Vec<(DeliveryId, Resolution)>, now: SystemTime) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.complete.prepare_invoke();
        inv.arg(&self.prefix).arg(to_ms(now));
        for (id, r) in &batch {
            let (_, kind, reply) = r.outcome();
            let at = match r {
                Resolution::Retry { at, .. } => to_ms(*at),
                _ => 0,
            };
            inv.arg(id.to_string())
                .arg(kind.as_str())
                .arg(at)
                .arg(u8::from(reply.is_some()))
                .arg(reply.unwrap_or(""));
        }
        inv.invoke_async::<i64>(&mut self.conn.clone()).await?;
        self.sync().await
    }

    async fn release(&self, ids: Vec<DeliveryId>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.release.prepare_invoke();
        inv.arg(&self.prefix);
        for id in ids {
            inv.arg(id.to_string());
        }
        inv.invoke_async::<i64>(&mut self.conn.clone()).await?;
        Ok(())
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobStatus>> {
        let m: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.key(&format!("job:{id}")))
            .query_async(&mut self.conn.clone())
            .await?;
        job_status(*id, &m)
    }

    async fn recent_jobs(&self, limit: usize) -> Result<Vec<JobStatus>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let stop = i64::try_from(limit).unwrap_or(i64::MAX) - 1;
        let ids: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.key("jobs"))
            .arg(0)
            .arg(stop)
            .query_async(&mut conn)
            .await?;
        let ids: Vec<JobId> = ids
            .iter()
            .map(|id| {
                id.parse()
                    .map_err(|_| QueueError::corrupt("jobs", id.clone()))
            })
            .collect::<Result<_>>()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.key(&format!("job:{id}")));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, m) in ids.into_iter().zip(&hashes) {
            out.extend(job_status(id, m)?);
        }
        Ok(out)
    }

    async fn recipients(
        &self,
        id: &JobId,
        after_index: Option<u32>,
        limit: usize,
    ) -> Result<Vec<RecipientStatus>> {
        let Some(status) = self.job(id).await? else {
            return Ok(Vec::new());
        };
        let first = after_index.map_or(0, |i| i.saturating_add(1));
        let end = status
            .counts
            .total
            .min(first.saturating_add(u32::try_from(limit).unwrap_or(u32::MAX)));
        if first >= end {
            return Ok(Vec::new());
        }
        let indexes: Vec<u32> = (first..end).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.key(&format!("rcpt:{id}")))
            .arg(&indexes);
        pipe.cmd("HMGET")
            .arg(self.key(&format!("st:{id}")))
            .arg(&indexes);
        let (rcpt, st): (Vec<Option<Vec<u8>>>, Vec<Option<String>>) =
            pipe.query_async(&mut self.conn.clone()).await?;
        let mut out = Vec::with_capacity(indexes.len());
        for ((index, r), s) in indexes.into_iter().zip(rcpt).zip(st) {
            let r =
                r.ok_or_else(|| QueueError::corrupt("rcpt", format!("{id}:{index} missing")))?;
            let to = r.split(|&b| b == b'\n').next().unwrap_or_default();
            let (state, attempts, last_reply) = match s {
                None => (RecipientState::Queued, 0, None),
                Some(s) => {
                    let mut p = s.splitn(5, '|');
                    let state = parse_state(p.next().unwrap_or_default())?;
                    let attempts = parse_num(p.next().unwrap_or_default().as_bytes(), "attempts")?;
                    let reply = p
                        .nth(2)
                        .and_then(|r| r.strip_prefix('+'))
                        .map(str::to_string);
                    (state, attempts, reply)
                }
            };
            out.push(RecipientStatus {
                index,
                to: String::from_utf8_lossy(to).into_owned(),
                state,
                attempts,
                last_reply,
            });
        }
        Ok(out)
    }

    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        type Entry = (String, HashMap<String, String>);
        let entries: Vec<Entry> = redis::cmd("XRANGE")
            .arg(self.key("events"))
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await?;
        entries
            .into_iter()
            .map(|(id, f)| {
                let bad = || QueueError::corrupt("events", id.clone());
                let cursor = id
                    .split('-')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(bad)?;
                let kind = f
                    .get("kind")
                    .and_then(|k| EventKind::from_name(k))
                    .ok_or_else(bad)?;
                Ok(Event {
                    cursor,
                    job: f.get("job").and_then(|j| j.parse().ok()).ok_or_else(bad)?,
                    index: num(&f, "index", "events")?,
                    to: f.get("to").cloned().ok_or_else(bad)?,
                    kind,
                    reply: f.get("reply").cloned(),
                    at: from_ms(num(&f, "at", "events")?),
                })
            })
            .collect()
    }

    async fn suppress(&self, address: &str, reason: &str) -> Result<()> {
        redis::cmd("HSET")
            .arg(self.key("suppressed"))
            .arg(normalize_address(address))
            .arg(reason)
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        self.sync().await
    }

    async fn is_suppressed(&self, address: &str) -> Result<bool> {
        Ok(redis::cmd("HEXISTS")
            .arg(self.key("suppressed"))
            .arg(normalize_address(address))
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn suppressed_among(&self, addresses: Vec<String>) -> Result<Vec<bool>> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key("suppressed"));
        for a in &addresses {
            cmd.arg(normalize_address(a));
        }
        let found: Vec<Option<String>> = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(found.into_iter().map(|v| v.is_some()).collect())
    }

    async fn unsuppress(&self, address: &str) -> Result<bool> {
        let n: i64 = redis::cmd("HDEL")
            .arg(self.key("suppressed"))
            .arg(normalize_address(address))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n > 0)
    }

    async fn depth(&self, now: SystemTime) -> Result<Depth> {
        let (ready, scheduled, leased): (u64, u64, u64) = self
            .scripts
            .depth
            .arg(&self.prefix)
            .arg(to_ms(now))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Depth {
            ready,
            scheduled,
            leased,
        })
    }
}
