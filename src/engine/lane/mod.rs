//! Site lanes: one per destination site, each with its own queue, connection pool,
//! rate limiter and adaptive throttle, so that a slow or throttling site never holds
//! up another.
//!
//! A lane task owns the site's queue and hands batches to worker tasks, at most as
//! many as the throttle allows (never more than the pool size). A worker takes a
//! session from the pool, waits for the rate limits, sends its batch pipelined,
//! classifies every recipient's result and reports it. A session goes back to the
//! pool only when healthy; a connection-level failure drops that session alone.

mod pool;
mod throttle;
mod window;
mod worker;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool::managed::Pool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use pool::{Budget, PooledSession, SessionManager, SharedThrottle, SlotSource};
pub use throttle::Throttle;

use self::window::Window;
use self::worker::{Done, report, work};
use super::egress::Pool as EgressPool;
use super::shaping::Provider;
use crate::address::Address;
use crate::metrics::{Metrics, SiteCounters};
use crate::outcome::Outcome;
use crate::rate::Limiter;
use crate::route::Site;
use crate::smtp::{SessionConfig, TlsPolicy};
use crate::time::unix_ms;

/// One message for one recipient, handed to the engine.
#[derive(Debug)]
pub struct Delivery<K> {
    /// The caller's key, returned in the report.
    pub key: K,
    /// The envelope sender; `None` for `<>`.
    pub from: Option<Address>,
    /// The RCPT TO address; its domain picks the route and any per-domain rate limit.
    pub to: Address,
    /// The message (RFC 5322 bytes), shareable between recipients.
    pub body: Arc<[u8]>,
    /// When it became due (for the queue-wait histogram).
    pub queued_at: std::time::Instant,
    /// Set by the caller when it must not be sent any more (its lease was lost): a
    /// delivery not yet on a connection is then reported unattempted instead.
    pub cancelled: Arc<std::sync::atomic::AtomicBool>,
    /// The egress pool it leaves from; `None` for `[egress] default_pool`.
    pub pool: Option<Arc<str>>,
}

/// What happened to a delivery.
#[derive(Debug)]
pub struct Report<K> {
    /// The caller's key.
    pub key: K,
    /// The recipient address of the delivery this report is about.
    pub to: Address,
    /// The site it went to, when it was routed.
    pub site: Option<Arc<str>>,
    /// The classified result; `None` when it was never attempted (shutdown).
    pub outcome: Option<Outcome>,
    /// How it left, when it was attempted on a connection.
    pub via: Option<Arc<Via>>,
}

/// How a delivery left: from which pool and source address, under which TLS policy,
/// encrypted or not. Recorded with its outcome, so that every decision can be seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// The egress pool.
    pub pool: Arc<str>,
    /// The local address the connection was bound to (as the socket saw it).
    pub source: Option<std::net::IpAddr>,
    /// The TLS policy the site's mail went under.
    pub tls: TlsPolicy,
    /// Whether the connection was encrypted.
    pub encrypted: bool,
    /// The recipient domain's policy that set the TLS requirement: `mta-sts` (enforce),
    /// `None` for the configured one.
    pub policy: Option<&'static str>,
    /// All of it as events show it, made once per pipelined group.
    json: Arc<str>,
}

impl Via {
    /// How a group left, with its JSON made once.
    pub fn new(
        pool: Arc<str>,
        source: Option<std::net::IpAddr>,
        tls: TlsPolicy,
        encrypted: bool,
        policy: Option<&'static str>,
    ) -> Self {
        let mut json = serde_json::json!({
            "pool": &*pool,
            "source": source.map(|a| a.to_string()),
            "tls": tls,
            "encrypted": encrypted,
        });
        if let Some(policy) = policy {
            json["policy"] = policy.into();
        }
        Self {
            pool,
            source,
            tls,
            encrypted,
            policy,
            json: Arc::from(json.to_string()),
        }
    }

    /// `{"pool": "bulk", "source": "192.0.2.10", "tls": "opportunistic", "encrypted":
    /// true}` (and `"policy": "mta-sts"` when a domain policy set the TLS), as events
    /// show it.
    pub fn json(&self) -> &Arc<str> {
        &self.json
    }
}

/// A delivery inside the engine, holding its place in the engine's backlog.
#[derive(Debug)]
pub(crate) struct Job<K> {
    pub(crate) delivery: Delivery<K>,
    pub(crate) _permit: OwnedSemaphorePermit,
}

/// The rate limiters that apply to a delivery besides its site's.
#[derive(Debug)]
pub(crate) struct SharedLimits {
    pub(crate) global: Option<Limiter>,
    pub(crate) domains: HashMap<String, Limiter>,
    /// One permit per open connection, all sites together (`[smtp] max_connections`).
    pub(crate) connections: Arc<Budget>,
    /// When workers share limits: the cluster's connection slots and rate permits.
    pub(crate) cluster: Option<super::Cluster>,
}

/// Lane settings taken from `[smtp]`.
#[derive(Clone, Debug)]
pub(crate) struct LaneSettings {
    pub(crate) max_connections: usize,
    pub(crate) max_messages: u64,
    /// The pipelining window's start and its most (`batch_size`, `max_pipeline`).
    pub(crate) window: (usize, usize),
    pub(crate) idle_timeout: Duration,
    pub(crate) throttle_pause: Duration,
    pub(crate) throttle_step: Duration,
}

/// What a lane shares with its workers.
struct LaneContext<K> {
    site_key: Arc<str>,
    /// The egress pool its connections leave from (and whose warm-up caps it).
    egress: Arc<EgressPool>,
    /// The TLS policy of the site's sessions.
    tls: TlsPolicy,
    /// The domain policy that set it, if any (for [`Via`]).
    policy: Option<&'static str>,
    /// The mailbox provider whose limits, pauses and reply rules the site shares.
    provider: Option<Arc<Provider>>,
    /// `[smtp] throttle_pause`: how long a `slow` rule pauses the provider.
    throttle_pause: Duration,
    pool: Pool<SessionManager>,
    site_limit: Option<Limiter>,
    shared_limits: Arc<SharedLimits>,
    reports: mpsc::UnboundedSender<Report<K>>,
    metrics: Arc<Metrics>,
    counters: Arc<SiteCounters>,
    max_messages: u64,
    /// Transactions per connection per go, following the round trip.
    window: Window,
    /// Sessions saying QUIT after their last transaction: the worker goes on without
    /// waiting a round trip for the answer; the lane waits for them before it ends.
    quitting: tokio_util::task::TaskTracker,
    /// Turns true when the lane shuts down: workers waiting for a rate permit give their
    /// deliveries back instead of waiting (under `1/h`, for an hour).
    stopping: tokio::sync::watch::Sender<bool>,
}

/// The dispatcher's handle on a lane.
#[derive(Debug)]
pub(crate) struct LaneHandle<K> {
    pub(crate) tx: mpsc::UnboundedSender<Job<K>>,
    pub(crate) site: Arc<Mutex<Arc<Site>>>,
    pub(crate) task: JoinHandle<()>,
}

/// Everything needed to start a lane.
pub(crate) struct LaneDeps<K> {
    /// The provider the site belongs to (provider shaping), if any.
    pub(crate) provider: Option<Arc<Provider>>,
    /// The lane's name: the site's, with the pool's when it is not the default.
    pub(crate) key: Arc<str>,
    pub(crate) pool: Arc<EgressPool>,
    /// The domain policy that set the session's TLS requirement, if any.
    pub(crate) policy: Option<&'static str>,
    pub(crate) settings: LaneSettings,
    pub(crate) session: Arc<SessionConfig>,
    pub(crate) site_rate: crate::rate::Rate,
    pub(crate) shared_limits: Arc<SharedLimits>,
    pub(crate) reports: mpsc::UnboundedSender<Report<K>>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Starts the lane of `site`.
pub(crate) fn spawn_lane<K: Send + Sync + 'static>(
    site: Arc<Site>,
    mut deps: LaneDeps<K>,
) -> LaneHandle<K> {
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = deps.metrics.site(&deps.key);
    if let Some(provider) = &deps.provider {
        // The provider's limits hold for each of its sites too.
        let _ = counters.provider.set(Arc::clone(&provider.name));
        deps.settings.max_connections = deps.settings.max_connections.min(provider.connections);
        if let Some(n) = provider.messages_per_connection {
            deps.settings.max_messages = n;
        }
    }
    let shared_site = Arc::new(Mutex::new(Arc::clone(&site)));
    let max = deps.settings.max_connections.max(1);
    let plain =
        (deps.session.tls == TlsPolicy::Opportunistic && !deps.session.implicit_tls).then(|| {
            let mut plain = (*deps.session).clone();
            plain.tls = TlsPolicy::Disabled;
            Arc::new(plain)
        });
    // One session configuration per source of the pool: its address and EHLO name.
    let sources = deps
        .pool
        .sources
        .iter()
        .map(|source| {
            let with_source = |config: &SessionConfig| {
                let mut config = config.clone();
                if source.address.is_some() {
                    config.local_addr = source.address;
                }
                if let Some(helo) = &source.helo_name {
                    config.helo_name = helo.clone();
                }
                Arc::new(config)
            };
            pool::SourceConfigs {
                tls: with_source(&deps.session),
                plain: plain.as_deref().map(with_source),
            }
        })
        .collect();
    let manager = SessionManager {
        key: Arc::clone(&deps.key),
        site: Arc::clone(&shared_site),
        egress: Arc::clone(&deps.pool),
        sources,
        provider: deps.provider.as_ref().map(|p| {
            (
                Arc::clone(&p.budget),
                Arc::from(p.cluster_key()),
                p.connections,
            )
        }),
        slots: Arc::new(Semaphore::new(max)),
        cap: max,
        cluster: deps
            .shared_limits
            .cluster
            .as_ref()
            .map(|c| Arc::clone(&c.slots)),
        all: Arc::clone(&deps.shared_limits.connections),
        max_messages: deps.settings.max_messages,
        metrics: Arc::clone(&deps.metrics),
        counters: Arc::clone(&counters),
    };
    let pool = Pool::builder(manager)
        .max_size(max)
        .build()
        .expect("no timeouts are configured, so no runtime is needed");
    let ctx = Arc::new(LaneContext {
        site_key: Arc::clone(&deps.key),
        egress: deps.pool,
        tls: deps.session.tls,
        policy: deps.policy,
        provider: deps.provider.clone(),
        throttle_pause: deps.settings.throttle_pause,
        pool,
        site_limit: match &deps.shared_limits.cluster {
            Some(cluster) => deps
                .site_rate
                .shared_limiter(format!("site:{}", deps.key), Arc::clone(&cluster.permits)),
            None => deps.site_rate.limiter(),
        },
        shared_limits: deps.shared_limits,
        reports: deps.reports,
        metrics: deps.metrics,
        counters,
        max_messages: deps.settings.max_messages,
        window: Window::new(deps.settings.window.0, deps.settings.window.1),
        quitting: tokio_util::task::TaskTracker::new(),
        stopping: tokio::sync::watch::Sender::new(false),
    });
    let task = tokio::spawn(run_lane(ctx, rx, deps.settings));
    LaneHandle {
        tx,
        site: shared_site,
        task,
    }
}

/// The lane task: queue, throttle, workers, idle connections.
async fn run_lane<K: Send + Sync + 'static>(
    ctx: Arc<LaneContext<K>>,
    mut rx: mpsc::UnboundedReceiver<Job<K>>,
    settings: LaneSettings,
) {
    let mut queue: VecDeque<Job<K>> = VecDeque::new();
    let mut throttle = Throttle::new(
        settings.max_connections,
        settings.throttle_pause,
        settings.throttle_step,
        Instant::now(),
    );
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done<K>>();
    let mut active = 0usize;
    let mut shutting_down = false;
    let mut retiring = false;
    let tick_every = (settings.idle_timeout / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(tick_every);
    let mut last_activity = Instant::now();
    let cluster = ctx
        .shared_limits
        .cluster
        .as_ref()
        .map(|c| Arc::clone(&c.slots));
    let mut applied: Option<String> = None;
    if let Some(cluster) = &cluster {
        // A lane started during a pause another worker was asked for starts paused.
        follow_cluster_throttle(&ctx, cluster.as_ref(), &mut throttle, &mut applied).await;
    }
    ctx.counters.limit.store(
        settings.max_connections as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    ctx.counters.window.store(
        ctx.window.get() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    loop {
        let now_ms = unix_ms(std::time::SystemTime::now());
        // A pause of the provider (asked of another of its sites, or by a reply rule)
        // holds this site too.
        let provider_pause = ctx.provider.as_ref().and_then(|p| p.pause_left(now_ms));
        let allowed = if provider_pause.is_some() {
            0
        } else {
            throttle.allowed(Instant::now())
        };
        ctx.counters
            .allowed
            .store(allowed as u64, std::sync::atomic::Ordering::Relaxed);
        while !queue.is_empty() && active < allowed {
            let size = (queue.len() / allowed.max(1)).clamp(1, ctx.window.get());
            let batch: Vec<Job<K>> = queue.drain(..size.min(queue.len())).collect();
            let (ctx, done) = (Arc::clone(&ctx), done_tx.clone());
            tokio::spawn(async move {
                let _ = done.send(work(&ctx, batch).await);
            });
            active += 1;
            last_activity = Instant::now();
        }
        if (shutting_down || retiring) && queue.is_empty() && active == 0 {
            break;
        }
        let wake = match provider_pause {
            Some(left) => Some(Instant::now() + left),
            None => throttle.next_change(),
        }
        .filter(|_| !queue.is_empty());
        tokio::select! {
            job = rx.recv(), if !shutting_down && !retiring => match job {
                Some(job) => queue.push_back(job),
                None => {
                    shutting_down = true;
                    ctx.stopping.send_replace(true);
                    // Not yet attempted: handed back so the caller can release them.
                    for job in queue.drain(..) {
                        report(&ctx, job.delivery, None);
                    }
                }
            },
            Some(done) = done_rx.recv() => {
                active -= 1;
                // Not attempted: first in line again, when the site allows; at shutdown,
                // handed back so the caller can release them.
                for job in done.unsent.into_iter().rev() {
                    if shutting_down {
                        report(&ctx, job.delivery, None);
                    } else {
                        queue.push_front(job);
                    }
                }
                if cluster.is_some() && queue.is_empty() {
                    // Nothing waiting for this site here: its idle connections go now,
                    // so that a worker with work for it gets their slots (keeping them
                    // for this worker's next batch halved the cluster's throughput).
                    close_idle(&ctx.pool, Duration::ZERO);
                }
                if done.throttled {
                    throttle.on_throttle(Instant::now());
                    ctx.counters.throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let until = std::time::SystemTime::now() + settings.throttle_pause;
                    ctx.counters.paused_until_ms.fetch_max(unix_ms(until), std::sync::atomic::Ordering::Relaxed);
                    if let Some(provider) = &ctx.provider {
                        provider.pause_until(unix_ms(until));
                    }
                    if let Some(cluster) = &cluster {
                        cluster.report_throttle(&ctx.site_key, settings.throttle_pause);
                        if let Some(provider) = &ctx.provider {
                            // The provider's other sites, on every worker, pause too; a
                            // rule's longer pause was reported by the worker itself.
                            cluster.report_throttle(&provider.cluster_key(), settings.throttle_pause);
                        }
                    }
                    tracing::info!(site = %ctx.site_key, "site is throttling us: fewer connections for a while");
                }
            },
            () = sleep_until(wake) => {},
            () = ctx.shared_limits.connections.reclaimed() => close_idle(&ctx.pool, Duration::ZERO),
            () = provider_reclaimed(ctx.provider.as_deref()) => close_idle(&ctx.pool, Duration::ZERO),
            _ = tick.tick() => {
                if let Some(cluster) = &cluster {
                    follow_cluster_throttle(&ctx, cluster.as_ref(), &mut throttle, &mut applied).await;
                    if let Some(provider) = &ctx.provider {
                        follow_provider_pause(provider, cluster.as_ref()).await;
                    }
                }
                close_idle(&ctx.pool, settings.idle_timeout);
                let idle = queue.is_empty() && active == 0 && ctx.pool.status().size == 0;
                if idle && last_activity.elapsed() >= settings.idle_timeout && !shutting_down {
                    // Retire: refuse new jobs, take any already sent, finish them.
                    rx.close();
                    retiring = true;
                    while let Ok(job) = rx.try_recv() {
                        queue.push_back(job);
                    }
                }
            },
        }
    }
    // Shutting down or retiring: every pooled session says QUIT before the lane ends.
    let removed = ctx.pool.retain(|_, _| false).removed;
    futures::future::join_all(removed.into_iter().map(PooledSession::quit)).await;
    ctx.quitting.close();
    ctx.quitting.wait().await;
}

/// Applies a pause of the site's provider that another worker reported.
async fn follow_provider_pause(provider: &Provider, cluster: &dyn SlotSource) {
    match cluster.throttle_of(&provider.cluster_key()).await {
        Ok(Some(shared)) if !shared.mine => {
            let until = std::time::SystemTime::now() + shared.remaining;
            provider.pause_until(unix_ms(until));
        }
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(provider = %provider.name, %error, "cannot read the provider's cluster pause");
        }
    }
}

/// Applies a slow-down another worker of the cluster was asked for, once.
async fn follow_cluster_throttle<K>(
    ctx: &LaneContext<K>,
    cluster: &dyn SlotSource,
    throttle: &mut Throttle,
    applied: &mut Option<String>,
) {
    match cluster.throttle_of(&ctx.site_key).await {
        Ok(Some(shared)) if !shared.mine && applied.as_ref() != Some(&shared.id) => {
            throttle.on_throttle_for(Instant::now(), shared.remaining);
            let until = std::time::SystemTime::now() + shared.remaining;
            ctx.counters
                .paused_until_ms
                .store(unix_ms(until), std::sync::atomic::Ordering::Relaxed);
            tracing::info!(site = %ctx.site_key, "another worker was asked to slow down: pausing this site here too");
            *applied = Some(shared.id);
        }
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(site = %ctx.site_key, %error, "cannot read the cluster's throttle");
        }
    }
}

/// Resolves when another site of the provider waits for one of its connections.
async fn provider_reclaimed(provider: Option<&Provider>) {
    match provider {
        Some(p) => p.budget.reclaimed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Closes (with QUIT) pooled sessions idle for `idle` or longer.
fn close_idle(pool: &Pool<SessionManager>, idle: Duration) {
    let removed = pool.retain(|_, metrics| metrics.last_used() < idle).removed;
    if !removed.is_empty() {
        tokio::spawn(async move {
            for session in removed {
                session.quit().await;
            }
        });
    }
}
