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
    Completion, Counts, Depth, Event, EventKind, Held, IDEMPOTENCY_TTL, JobKind, JobStatus,
    LateOutcome, LateReport, LeaseToken, Leased, NewJob, NewRecipient, Pruned, RecipientState,
    RecipientStatus, Resolution, RetentionConfig, SubmitOutcome, Suppression, SuppressionScope,
    check_recipient, from_ms, to_ms,
};
use crate::address::suppression_key;

/// Recipients staged per round trip while a job is submitted.
const CHUNK: usize = 4096;
/// Deliveries per renew or release script, so one call never holds the server long.
const SCRIPT_CHUNK: usize = 2048;
/// Takeovers after which a delivery is dead-lettered.
const MAX_TAKEOVERS: u32 = 5;
/// How long staged recipients of a submission that never commits survive.
const STAGING_TTL_S: i64 = 24 * 60 * 60;
/// How long a pending idempotency marker outlives the last sign of its submission (it is
/// refreshed with every staged chunk).
const PENDING_TTL_S: i64 = 120;
/// Finished jobs removed at most per pruning call.
const PRUNE_JOBS: usize = 64;

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
    /// A submission stored, before the wait for the append-only file (the caller waits
    /// once for all it submitted).
    async fn submit_unsynced(
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
            .arg(IDEMPOTENCY_TTL.as_secs())
            .invoke_async(&mut self.conn.clone())
            .await?;
        if committed != 1 {
            return Err(QueueError::invalid(
                "id",
                format!("job {} already exists", job.id),
            ));
        }
        Ok(SubmitOutcome::Created {
            id: job.id,
            recipients: total,
        })
    }

    /// Connects, creates the consumer group if needed and reads the server's persistence
    /// settings. `prefix` namespaces every key (a test uses a unique one).
    pub async fn open(url: &str, prefix: &str, lease: Duration) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let mut conn = ConnectionManager::new(client).await?;
        create_group(&mut conn, &format!("{{{prefix}}}:ready")).await?;
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

    async fn lease_flat(&self, max: usize, now: SystemTime) -> Result<Vec<Vec<u8>>> {
        let reply = format!("volley: dead-lettered after {MAX_TAKEOVERS} lease takeovers");
        Ok(self
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
            .await?)
    }

    /// For each completion, the suppression key of its address when it is a bounce that
    /// suppresses: read from the recipients' hashes in one round trip, only when needed.
    async fn suppression_keys(&self, batch: &[Completion]) -> Result<Vec<Option<String>>> {
        let wanted: Vec<usize> = batch
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.resolution, Resolution::Bounced { suppress: true, .. }))
            .map(|(i, _)| i)
            .collect();
        let mut keys = vec![None; batch.len()];
        if wanted.is_empty() {
            return Ok(keys);
        }
        let mut pipe = redis::pipe();
        for &i in &wanted {
            let id = batch[i].id;
            pipe.hget(self.key(&format!("rcpt:{}", id.job)), id.index);
        }
        let found: Vec<Option<Vec<u8>>> = pipe.query_async(&mut self.conn.clone()).await?;
        for (i, value) in wanted.into_iter().zip(found) {
            if let Some(value) = value {
                let to = value.split(|&b| b == b'\n').next().unwrap_or_default();
                keys[i] = Some(suppression_key(&String::from_utf8_lossy(to)));
            }
        }
        Ok(keys)
    }

    /// An address's entries as (hash field, entry), every scope.
    async fn entries_of(&self, address: &str) -> Result<Vec<(String, Suppression)>> {
        let key = suppression_key(address);
        let fields: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.key("supidx"))
            .arg(format!("[{key}\0"))
            .arg(format!("({key}\u{1}"))
            .query_async(&mut self.conn.clone())
            .await?;
        let entries = self.entries(fields.clone()).await?;
        Ok(fields.into_iter().zip(entries).collect())
    }

    /// The entries of these hash fields.
    async fn entries(&self, fields: Vec<String>) -> Result<Vec<Suppression>> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.key("sup"))
            .arg(&fields)
            .query_async(&mut self.conn.clone())
            .await?;
        fields
            .iter()
            .zip(values)
            .map(|(field, value)| {
                let bad = || QueueError::corrupt("sup", field.clone());
                let (address, scope) = field.split_once('\0').ok_or_else(bad)?;
                let value = value.ok_or_else(bad)?;
                let (at, reason) = value.split_once('|').ok_or_else(bad)?;
                Ok(Suppression {
                    address: address.to_owned(),
                    scope: scope.parse().map_err(|e| QueueError::corrupt("sup", e))?,
                    reason: reason.to_owned(),
                    at: from_ms(at.parse().map_err(|_| bad())?),
                })
            })
            .collect()
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

    /// Answers from an idempotency key already set, or claims it for `job` with a pending
    /// marker: it expires by itself if this process dies before the commit, and the commit
    /// turns it into the final answer in the same script that makes the job visible.
    async fn claim_idempotency(&self, job: &NewJob) -> Result<Option<SubmitOutcome>> {
        let Some((key, hash)) = &job.idempotency else {
            return Ok(None);
        };
        let mut conn = self.conn.clone();
        let k = self.key(&format!("idem:{key}"));
        let mine = format!("pending|{}|{}", hex(hash), job.id);
        let set: Option<String> = redis::cmd("SET")
            .arg(&k)
            .arg(&mine)
            .arg("NX")
            .arg("EX")
            .arg(PENDING_TTL_S)
            .query_async(&mut conn)
            .await?;
        if set.is_some() {
            return Ok(None);
        }
        let theirs: Option<String> = redis::cmd("GET").arg(&k).query_async(&mut conn).await?;
        let Some(theirs) = theirs else {
            // Gone between SET and GET (the other submission failed): try again later.
            return Ok(Some(SubmitOutcome::IdempotencyInProgress));
        };
        if theirs.starts_with("pending|") {
            let same = theirs.split('|').nth(1) == Some(hex(hash).as_str());
            return Ok(Some(if same {
                SubmitOutcome::IdempotencyInProgress
            } else {
                SubmitOutcome::IdempotencyConflict
            }));
        }
        let mut parts = theirs.split('|');
        let (h, id, n) = (parts.next(), parts.next(), parts.next());
        if h != Some(hex(hash).as_str()) {
            return Ok(Some(SubmitOutcome::IdempotencyConflict));
        }
        let corrupt = || QueueError::corrupt("idem", theirs.clone());
        let id: JobId = id.unwrap_or_default().parse().map_err(|_| corrupt())?;
        let recipients = n.and_then(|n| n.parse().ok()).ok_or_else(corrupt)?;
        Ok(Some(SubmitOutcome::Existing { id, recipients }))
    }

    /// Removes what a failed submission staged, and its pending idempotency marker if it is
    /// still this submission's.
    async fn abandon(&self, job: &NewJob) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL")
            .arg(self.key(&format!("rcpt:{}", job.id)))
            .query_async::<()>(&mut conn)
            .await?;
        if let Some((key, hash)) = &job.idempotency {
            let k = self.key(&format!("idem:{key}"));
            let mine = format!("pending|{}|{}", hex(hash), job.id);
            redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            )
            .key(k)
            .arg(mine)
            .invoke_async::<i64>(&mut conn)
            .await?;
        }
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
            pipe.expire(&rcpt, STAGING_TTL_S).ignore();
            if let Some((key, _)) = &job.idempotency {
                // Still storing: keep the pending marker alive a while longer.
                pipe.expire(self.key(&format!("idem:{key}")), PENDING_TTL_S)
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn).await?;
        }
        if next == 0 {
            return Err(QueueError::invalid("recipients", "no recipients"));
        }
        Ok(next)
    }
}

/// Creates the consumer group (and the stream) unless it exists.
async fn create_group(conn: &mut ConnectionManager, stream: &str) -> Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("workers")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        // BUSYGROUP: another process created it first, which is fine.
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
        _ => Ok(()),
    }
}

/// A delivery's `st` field: `state|attempts|due|entry|token|first|` then `-` or `+reply`
/// (before fencing tokens, without `token|first|`). Returns state, attempts, reply.
fn parse_st(s: &str) -> Result<(RecipientState, u32, Option<String>)> {
    let mut parts = s.splitn(5, '|');
    let state = parse_state(parts.next().unwrap_or_default())?;
    let attempts = parse_num(parts.next().unwrap_or_default().as_bytes(), "attempts")?;
    let mut rest = parts.nth(2).unwrap_or_default();
    if !rest.starts_with(['+', '-']) {
        // token|first|reply: skip the two numbers.
        rest = rest.splitn(3, '|').nth(2).unwrap_or_default();
    }
    let reply = rest.strip_prefix('+').map(str::to_string);
    Ok((state, attempts, reply))
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
        let answer = self.submit_unsynced(job, recipients, now).await?;
        self.sync().await?;
        Ok(answer)
    }

    /// The jobs side by side on the multiplexed connection (their commands pipelined, not
    /// one job's round trips after another's), then one wait for the append-only file.
    async fn submit_batch(
        &self,
        jobs: Vec<(NewJob, Vec<NewRecipient>)>,
        now: SystemTime,
    ) -> Result<Vec<Result<SubmitOutcome>>> {
        let answers = futures::future::join_all(
            jobs.into_iter()
                .map(|(job, recipients)| self.submit_unsynced(job, recipients.into_iter(), now)),
        )
        .await;
        if answers.iter().any(Result::is_ok) {
            self.sync().await?;
        }
        Ok(answers)
    }

    async fn lease(&self, max: usize, now: SystemTime) -> Result<Vec<Leased>> {
        let flat = match self.lease_flat(max, now).await {
            // The stream or its group is gone (FLUSHALL, a failover to an empty replica):
            // create them again and go on, without a restart.
            Err(QueueError::Redis(e)) if e.code() == Some("NOGROUP") => {
                tracing::warn!("redis: the consumer group is gone; creating it again");
                create_group(&mut self.conn.clone(), &self.key("ready")).await?;
                self.lease_flat(max, now).await?
            }
            other => other?,
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        flat.chunks_exact(8)
            .map(|c| {
                let first: u64 = parse_num(&c[7], "first")?;
                Ok(Leased {
                    id: text(&c[0])
                        .parse()
                        .map_err(|_| QueueError::corrupt("ready", text(&c[0])))?,
                    token: LeaseToken(parse_num(&c[6], "token")?),
                    to: text(&c[1]),
                    vars: c[2].clone(),
                    attempts: parse_num(&c[3], "attempts")?,
                    created: from_ms(parse_num(&c[4], "created")?),
                    first_attempt: (first > 0).then(|| from_ms(first)),
                    queued_at: from_ms(parse_num(&c[5], "due")?),
                })
            })
            .collect()
    }

    async fn renew(&self, held: Vec<Held>, _now: SystemTime) -> Result<Vec<DeliveryId>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut lost = Vec::new();
        // Bounded scripts: each holds the server for a few thousand entries at most.
        for chunk in held.chunks(SCRIPT_CHUNK) {
            let mut inv = self.scripts.renew.prepare_invoke();
            inv.arg(&self.prefix).arg(&self.consumer);
            for (id, token) in chunk {
                inv.arg(id.to_string()).arg(token.0);
            }
            let gone: Vec<String> = inv.invoke_async(&mut self.conn.clone()).await?;
            for id in gone {
                lost.push(id.parse().map_err(|_| QueueError::corrupt("renew", id))?);
            }
        }
        Ok(lost)
    }

    async fn job_payloads(&self, ids: Vec<JobId>) -> Result<Vec<Option<Vec<u8>>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for id in &ids {
            mget.arg(self.key(&format!("payload:{id}")));
        }
        Ok(mget.query_async(&mut self.conn.clone()).await?)
    }

    async fn complete(&self, batch: Vec<Completion>, now: SystemTime) -> Result<usize> {
        if batch.is_empty() {
            return Ok(0);
        }
        let keys = self.suppression_keys(&batch).await?;
        let mut inv = self.scripts.complete.prepare_invoke();
        inv.arg(&self.prefix).arg(to_ms(now));
        for (c, key) in batch.iter().zip(keys) {
            let (_, kind, reply) = c.resolution.outcome();
            let at = match &c.resolution {
                Resolution::Retry { at, .. } => to_ms(*at),
                _ => 0,
            };
            inv.arg(c.id.to_string())
                .arg(c.token.0)
                .arg(kind.as_str())
                .arg(at)
                .arg(u8::from(reply.is_some()))
                .arg(reply.unwrap_or(""))
                .arg(key.unwrap_or_default())
                .arg(c.via.as_deref().unwrap_or(""));
        }
        let stale: usize = inv.invoke_async(&mut self.conn.clone()).await?;
        self.sync().await?;
        Ok(stale)
    }

    async fn release(
        &self,
        held: Vec<Held>,
        not_before: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<()> {
        if held.is_empty() {
            return Ok(());
        }
        for chunk in held.chunks(SCRIPT_CHUNK) {
            let mut inv = self.scripts.release.prepare_invoke();
            inv.arg(&self.prefix)
                .arg(to_ms(now))
                .arg(not_before.map_or(0, to_ms));
            for (id, token) in chunk {
                inv.arg(id.to_string()).arg(token.0);
            }
            inv.invoke_async::<i64>(&mut self.conn.clone()).await?;
        }
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
                Some(s) => parse_st(&s)?,
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
                    late: f.get("async").is_some_and(|v| v == "1"),
                    via: f.get("via").cloned(),
                })
            })
            .collect()
    }

    async fn record_late(&self, report: LateReport, now: SystemTime) -> Result<LateOutcome> {
        let mut inv = self.scripts.late.prepare_invoke();
        inv.arg(&self.prefix)
            .arg(report.id.job.to_string())
            .arg(report.id.index)
            .arg(report.kind.as_str())
            .arg(&report.reply)
            .arg(to_ms(now));
        let to: redis::Value = match &report.suppress {
            Some(reason) => {
                // The suppression key is the delivery's address normalised in Rust (one
                // normalisation for every backend): read the address first; the script
                // then writes the event and the suppression together.
                let to: Option<String> = redis::cmd("HGET")
                    .arg(self.key(&format!("rcpt:{}", report.id.job)))
                    .arg(report.id.index)
                    .query_async(&mut self.conn.clone())
                    .await?;
                let Some(to) = to.map(|v| v.split('\n').next().unwrap_or("").to_owned()) else {
                    return Ok(LateOutcome::UnknownDelivery);
                };
                let field = format!(
                    "{}\0{}",
                    suppression_key(&to),
                    SuppressionScope::All.as_text()
                );
                inv.arg(field).arg(format!("{}|{}", to_ms(now), reason));
                inv.invoke_async(&mut self.conn.clone()).await?
            }
            None => inv.invoke_async(&mut self.conn.clone()).await?,
        };
        let outcome = match to {
            redis::Value::BulkString(b) => LateOutcome::Recorded {
                to: String::from_utf8_lossy(&b).into_owned(),
            },
            _ => LateOutcome::UnknownDelivery,
        };
        self.sync().await?;
        Ok(outcome)
    }

    async fn suppress(&self, entry: Suppression) -> Result<()> {
        let field = format!(
            "{}\0{}",
            suppression_key(&entry.address),
            entry.scope.as_text()
        );
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(
                self.key("sup"),
                &field,
                format!("{}|{}", to_ms(entry.at), entry.reason),
            )
            .ignore()
            .zadd(self.key("supidx"), &field, 0)
            .ignore();
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        self.sync().await
    }

    async fn unsuppress(&self, address: &str, scope: Option<SuppressionScope>) -> Result<usize> {
        let fields: Vec<String> = self
            .entries_of(address)
            .await?
            .into_iter()
            .filter(|(_, e)| scope.as_ref().is_none_or(|s| *s == e.scope))
            .map(|(field, _)| field)
            .collect();
        if fields.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hdel(self.key("sup"), &fields)
            .ignore()
            .zrem(self.key("supidx"), &fields)
            .ignore();
        pipe.query_async::<()>(&mut self.conn.clone()).await?;
        self.sync().await?;
        Ok(fields.len())
    }

    async fn suppressions_of(&self, address: &str) -> Result<Vec<Suppression>> {
        Ok(self
            .entries_of(address)
            .await?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    async fn suppressions(&self, after: Option<String>, limit: usize) -> Result<Vec<Suppression>> {
        let start = match after {
            Some(a) => format!("({}\u{1}", suppression_key(&a)),
            None => "-".to_owned(),
        };
        let fields: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.key("supidx"))
            .arg(start)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await?;
        self.entries(fields).await
    }

    async fn suppressed_among(
        &self,
        addresses: Vec<(String, Option<String>)>,
    ) -> Result<Vec<bool>> {
        if addresses.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key("sup"));
        for (address, list) in &addresses {
            let key = suppression_key(address);
            cmd.arg(format!("{key}\0all"));
            match list {
                Some(list) => cmd.arg(format!(
                    "{key}\0{}",
                    SuppressionScope::List(list.clone()).as_text()
                )),
                // Nothing matches a field with an empty scope: the same shape, one answer.
                None => cmd.arg(format!("{key}\0")),
            };
        }
        let found: Vec<Option<String>> = cmd.query_async(&mut self.conn.clone()).await?;
        Ok(found
            .chunks_exact(2)
            .map(|pair| pair.iter().any(Option::is_some))
            .collect())
    }

    async fn depth(&self, _now: SystemTime) -> Result<Depth> {
        let (ready, scheduled, leased): (u64, u64, u64) = self
            .scripts
            .depth
            .arg(&self.prefix)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Depth {
            ready,
            scheduled,
            leased,
        })
    }

    async fn prune(&self, now: SystemTime, retention: RetentionConfig) -> Result<Pruned> {
        let cutoff = |age| now.checked_sub(age).map_or(0, to_ms);
        let (events, jobs): (u64, u64) = self
            .scripts
            .prune
            .arg(&self.prefix)
            .arg(cutoff(retention.events))
            .arg(cutoff(retention.jobs))
            .arg(PRUNE_JOBS)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(Pruned { events, jobs })
    }
}
