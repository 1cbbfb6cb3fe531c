//! Several `volley serve` workers on one Redis, seen by a receiving site as one sender:
//! per-site connection caps as leased slots, rate limits as one GCRA per key, one
//! webhook sender and one retention pruner for the whole cluster (a leased leader), and a
//! heartbeat per worker for `GET /v1/cluster`.
//!
//! Keys (`K` = `{prefix}:`, the queue's hash tag, so a Redis Cluster keeps them in one
//! slot with the queue's):
//! - `K slots:SITE` sorted set: `WORKER:ID` → expiry ms. A slot is taken only while fewer
//!   than the cap are unexpired; its holder renews it every third of `slot_lease`; a dead
//!   worker's slots expire.
//! - `K throttle:SITE` string: `MS|WORKER`, the latest slow-down a site asked for (a
//!   `421` or `4.7.x`), expiring with its pause; every worker's lane reads it twice a
//!   second and pauses too.
//! - `K gcra:KEY` string: the theoretical arrival time (µs, Redis's clock) of the next
//!   permit of a rate (`global`, `site:SITE`, `domain:DOMAIN`).
//! - `K lead:NAME` string: the worker leading `NAME` (`webhooks`, `retention`), with a TTL.
//! - `K webhooks:cursor` string: the last event acknowledged by the webhook receiver.
//! - `K worker:ID` string: the worker's latest heartbeat (JSON), with a TTL; `K workers`
//!   sorted set of worker ids by last heartbeat, for listing.
//!
//! Every time comes from Redis (`TIME`), so workers' clocks need not agree.

mod scripts;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::engine::{SharedThrottle, SlotSource};
use crate::metrics::Metrics;
use crate::rate::{BoxFuture, PermitSource, Take};

/// `[cluster]`: how workers on one Redis share their limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Share connection caps and rate limits between the workers (on the Redis backend;
    /// the embedded one has a single process). Default true.
    pub shared_limits: bool,
    /// How long a connection slot outlives a worker that stopped renewing it. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub slot_lease: Duration,
    /// How often each worker says it is alive. Default 5 s; a worker is listed while its
    /// last heartbeat is younger than three of these.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            shared_limits: true,
            slot_lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
        }
    }
}

/// A worker as `GET /v1/cluster` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Unique per process: host, pid and a random tag.
    pub id: String,
    /// The host name.
    pub host: String,
    /// volley's version.
    pub version: String,
    /// When the process started (RFC 3339).
    pub started: String,
    /// Its latest heartbeat (RFC 3339).
    pub seen: String,
    /// Deliveries on a connection, replies awaited.
    pub in_flight: u64,
    /// Open connections per site.
    pub connections: BTreeMap<String, u64>,
}

impl WorkerInfo {
    /// This process, now.
    pub fn current(id: &str, started: SystemTime, metrics: &Metrics) -> Self {
        let connections = metrics
            .sites()
            .iter()
            .map(|(site, c)| (site.to_string(), c.connections_open.load(Ordering::Relaxed)))
            .filter(|(_, open)| *open > 0)
            .collect();
        Self {
            id: id.to_owned(),
            host: host_name(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: crate::time::rfc3339(started),
            seen: crate::time::rfc3339(SystemTime::now()),
            in_flight: metrics.in_flight_now(),
            connections,
        }
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "volley".to_owned())
}

/// A unique id for this process.
pub fn worker_id() -> String {
    format!(
        "{}-{}-{:08x}",
        host_name(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// This worker's handle on the cluster's shared state. Cheap to share (`Arc`).
pub struct RedisCluster {
    conn: ConnectionManager,
    /// `{prefix}:`.
    k: String,
    worker: String,
    config: ClusterConfig,
    next_slot: AtomicU64,
    /// Slots held, by site, for renewal.
    held: Mutex<HashMap<String, HashSet<u64>>>,
    /// Every site this worker took a slot of, to give back whatever is left at a stop.
    touched: Mutex<HashSet<String>>,
    scripts: scripts::Scripts,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("prefix", &self.k)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl RedisCluster {
    /// Connects to the Redis at `url`; keys under `prefix` (the queue's).
    pub async fn open(
        url: &str,
        prefix: &str,
        worker: String,
        config: ClusterConfig,
    ) -> Result<Arc<Self>, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn = ConnectionManager::new(client).await?;
        Ok(Arc::new(Self {
            conn,
            k: format!("{{{prefix}}}:"),
            worker,
            config,
            next_slot: AtomicU64::new(1),
            held: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashSet::new()),
            scripts: scripts::Scripts::new(),
        }))
    }

    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    fn member(&self, id: u64) -> String {
        format!("{}:{id}", self.worker)
    }

    /// Renews every slot this worker holds, every third of the slot lease, until
    /// `shutdown`. Slots found expired (the worker stalled longer than the lease) are
    /// logged: the cap may be exceeded until those connections close.
    pub async fn renew_slots(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let every = (self.config.slot_lease / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let held: Vec<(String, Vec<String>)> = {
                let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
                held.iter()
                    .filter(|(_, ids)| !ids.is_empty())
                    .map(|(site, ids)| {
                        (
                            site.clone(),
                            ids.iter().map(|&id| self.member(id)).collect(),
                        )
                    })
                    .collect()
            };
            for (site, members) in held {
                let mut invocation = self.scripts.renew.prepare_invoke();
                invocation
                    .key(format!("{}slots:{site}", self.k))
                    .arg(ms(self.config.slot_lease));
                for m in &members {
                    invocation.arg(m);
                }
                match invocation.invoke_async::<u64>(&mut self.conn.clone()).await {
                    Ok(0) => {}
                    Ok(lost) => {
                        tracing::warn!(%site, lost, "cluster connection slots expired while held");
                    }
                    Err(e) => {
                        tracing::warn!(%site, error = %e, "cannot renew cluster connection slots");
                    }
                }
            }
        }
    }

    /// Gives back every slot of this worker still in Redis (a stop: releases spawned as
    /// connections closed may not have run yet).
    pub async fn release_all(&self) {
        let sites: Vec<String> = self
            .touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for site in sites {
            let released = self
                .scripts
                .release_all
                .key(format!("{}slots:{site}", self.k))
                .arg(format!("{}:", self.worker))
                .invoke_async::<i64>(&mut self.conn.clone())
                .await;
            if let Err(e) = released {
                tracing::warn!(%site, error = %e, "cannot give back connection slots; they expire");
            }
        }
    }

    /// Becomes or stays the leader of `name` for `ttl`: true when this worker leads.
    pub async fn lead(&self, name: &str, ttl: Duration) -> Result<bool, redis::RedisError> {
        self.scripts
            .lead
            .key(format!("{}lead:{name}", self.k))
            .arg(&self.worker)
            .arg(ms(ttl))
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|led| led == 1)
    }

    /// Gives up leading `name` (if this worker leads it), so another takes over at once.
    pub async fn resign(&self, name: &str) -> Result<(), redis::RedisError> {
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(format!("{}lead:{name}", self.k))
        .arg(&self.worker)
        .invoke_async::<i64>(&mut self.conn.clone())
        .await
        .map(drop)
    }

    /// The cluster's webhook cursor (0 before the first acknowledged batch).
    pub async fn webhook_cursor(&self) -> Result<u64, redis::RedisError> {
        let value: Option<u64> = redis::cmd("GET")
            .arg(format!("{}webhooks:cursor", self.k))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(value.unwrap_or(0))
    }

    /// Saves the webhook cursor if this worker still leads the webhooks and the cursor
    /// moves forward: false when it did not (another worker leads now).
    pub async fn save_webhook_cursor(&self, cursor: u64) -> Result<bool, redis::RedisError> {
        self.scripts
            .save_cursor
            .key(format!("{}lead:webhooks", self.k))
            .key(format!("{}webhooks:cursor", self.k))
            .arg(&self.worker)
            .arg(cursor)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(|saved| saved == 1)
    }

    /// Publishes this worker's heartbeat.
    pub async fn beat(&self, info: &WorkerInfo) -> Result<(), redis::RedisError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        self.scripts
            .beat
            .key(format!("{}worker:{}", self.k, self.worker))
            .key(format!("{}workers", self.k))
            .arg(&self.worker)
            .arg(json)
            .arg(ms(self.config.heartbeat * 3))
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
    }

    /// Removes this worker from the list at once (a graceful stop).
    pub async fn leave(&self) -> Result<(), redis::RedisError> {
        redis::pipe()
            .del(format!("{}worker:{}", self.k, self.worker))
            .zrem(format!("{}workers", self.k), &self.worker)
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// The live workers, by id.
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, redis::RedisError> {
        let found: Vec<String> = self
            .scripts
            .workers
            .key(format!("{}workers", self.k))
            .arg(&self.k)
            .arg(ms(self.config.heartbeat * 3))
            .invoke_async(&mut self.conn.clone())
            .await?;
        let mut workers: Vec<WorkerInfo> = found
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workers)
    }

    /// Heartbeats every `[cluster] heartbeat` until `shutdown`, then leaves the list.
    pub async fn heartbeat(
        self: Arc<Self>,
        metrics: Arc<Metrics>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let started = SystemTime::now();
        loop {
            let info = WorkerInfo::current(&self.worker, started, &metrics);
            if let Err(e) = self.beat(&info).await {
                tracing::warn!(error = %e, "cluster heartbeat failed");
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.heartbeat) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        if let Err(e) = self.leave().await {
            tracing::warn!(error = %e, "cannot leave the cluster list; it expires by itself");
        }
    }
}

impl PermitSource for RedisCluster {
    fn take<'a>(
        &'a self,
        key: &'a str,
        period: Duration,
        burst: u32,
        want: u32,
    ) -> BoxFuture<'a, Result<Take, String>> {
        Box::pin(async move {
            let (granted, wait_us): (u32, u64) = self
                .scripts
                .gcra
                .key(format!("{}gcra:{key}", self.k))
                .arg(us(period).max(1))
                .arg(burst.max(1))
                .arg(want.max(1))
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            Ok(if granted > 0 {
                Take::Granted(granted)
            } else {
                Take::Wait(Duration::from_micros(wait_us))
            })
        })
    }
}

impl SlotSource for RedisCluster {
    fn take_slot<'a>(
        &'a self,
        site: &'a str,
        cap: usize,
    ) -> BoxFuture<'a, Result<Option<u64>, String>> {
        Box::pin(async move {
            let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
            self.touched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(site.to_owned());
            let taken: i64 = self
                .scripts
                .take_slot
                .key(format!("{}slots:{site}", self.k))
                .arg(cap)
                .arg(self.member(id))
                .arg(ms(self.config.slot_lease))
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            if taken != 1 {
                return Ok(None);
            }
            // Held (and so renewed) only once taken. Were this future dropped while Redis
            // answers, a slot it took has no holder here and expires after the slot lease;
            // registering it before asking would have renewed it for the process's life.
            self.held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(site.to_owned())
                .or_default()
                .insert(id);
            Ok(Some(id))
        })
    }

    fn report_throttle(&self, site: &str, pause: Duration) {
        let key = format!("{}throttle:{site}", self.k);
        let (worker, mut conn, script) = (
            self.worker.clone(),
            self.conn.clone(),
            self.scripts.report_throttle.clone(),
        );
        let report = async move {
            let reported: Result<i64, _> = script
                .key(&key)
                .arg(&worker)
                .arg(ms(pause).max(1))
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = reported {
                tracing::warn!(error = %e, "cannot tell the cluster about a throttling site");
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(report));
        }
    }

    fn throttle_of<'a>(
        &'a self,
        site: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedThrottle>, String>> {
        Box::pin(async move {
            let (value, left): (Option<String>, i64) = redis::pipe()
                .get(format!("{}throttle:{site}", self.k))
                .pttl(format!("{}throttle:{site}", self.k))
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| e.to_string())?;
            let (Some(value), Ok(left)) = (value, u64::try_from(left)) else {
                return Ok(None);
            };
            let mine = value
                .split_once('|')
                .is_some_and(|(_, worker)| worker == self.worker);
            Ok(Some(SharedThrottle {
                id: value,
                mine,
                remaining: Duration::from_millis(left),
            }))
        })
    }

    fn release_slot(&self, site: &str, id: u64) {
        self.forget(site, id);
        let key = format!("{}slots:{site}", self.k);
        let member = self.member(id);
        let mut conn = self.conn.clone();
        let release = async move {
            let removed: Result<i64, _> = redis::cmd("ZREM")
                .arg(&key)
                .arg(&member)
                .query_async(&mut conn)
                .await;
            if let Err(e) = removed {
                tracing::warn!(slot = %member, error = %e, "cannot release a cluster connection slot; it expires");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(release)),
            Err(_) => {
                tracing::debug!(slot = %self.member(id), "no runtime to release a slot; it expires");
            }
        }
    }
}

impl RedisCluster {
    fn forget(&self, site: &str, id: u64) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ids) = held.get_mut(site) {
            ids.remove(&id);
            if ids.is_empty() {
                held.remove(site);
            }
        }
    }
}
