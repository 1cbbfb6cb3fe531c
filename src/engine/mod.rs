//! The delivery engine: hand it deliveries, receive one report per delivery.
//!
//! A dispatcher task routes each delivery (cached MX answers; one lookup in flight
//! per domain, never blocking other domains) and hands it to its site's lane. The
//! engine holds at most `backlog` deliveries; `submit` waits for room, which is the
//! back-pressure the queue reader needs. Retries are not the engine's business: a
//! transient outcome is reported and the caller reschedules it (see [`crate::retry`]).
//! It knows nothing of queues, templates or HTTP.

mod config;
pub mod egress;
pub mod lane;
pub mod shaping;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

pub use self::lane::{Delivery, Report, SharedThrottle, SlotSource, Via};
pub use config::{ConfigError, LimitsConfig, SessionConfigs, SmtpConfig};
pub use egress::{Egress, EgressConfig};
pub use shaping::{Shaping, ShapingConfig};

use self::lane::{Job, LaneDeps, LaneHandle, LaneSettings, SharedLimits, spawn_lane};
use crate::event::EventKind;
use crate::metrics::Counter;
use crate::metrics::Metrics;
use crate::outcome::{Disposition, classify_route, mta_sts_no_mx, no_egress_pool};
use crate::rate::{PermitSource, Rate};
use crate::route::mta_sts::{Mode, Policy};
use crate::route::{MtaSts, MtaStsConfig};
use crate::route::{RelayConfig, Router, Site, SiteKind};

/// What the engine needs from the configuration.
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// `[smtp]`.
    pub smtp: SmtpConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[relay]`.
    pub relay: RelayConfig,
    /// `[egress]`.
    pub egress: EgressConfig,
    /// `[mta_sts]`.
    pub mta_sts: MtaStsConfig,
    /// `[shaping]`: provider limits and reply rules over the shipped `shaping.toml`.
    pub shaping: ShapingConfig,
    /// Most deliveries inside the engine at once. Default 0 means 50,000.
    pub backlog: usize,
    /// When several workers share one queue: their shared limits. `None` keeps every
    /// limit in this process.
    pub cluster: Option<Cluster>,
}

/// How long a connection with nothing to send stays open when workers share slots.
const CLUSTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the workers of a cluster share, so that a receiving site sees one sender's
/// limits: per-site connection slots, and the global, per-site and per-domain rates.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The connection slots.
    pub slots: Arc<dyn SlotSource>,
    /// The rate permits.
    pub permits: Arc<dyn PermitSource>,
}

/// The engine has shut down; the delivery is handed back.
#[derive(Debug, thiserror::Error)]
#[error("the engine has shut down")]
pub struct Closed<K>(pub Delivery<K>);

/// A running engine: a handle to submit deliveries and to shut it down. Reports come
/// on the receiver [`Engine::start`] returned.
#[derive(Debug)]
pub struct Engine<K> {
    tx: mpsc::Sender<Job<K>>,
    backlog: Arc<Semaphore>,
    dispatcher: JoinHandle<()>,
}

impl<K: Send + Sync + 'static> Engine<K> {
    /// Starts the engine; reports arrive on the returned receiver.
    pub fn start(
        config: EngineConfig,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<Report<K>>), ConfigError> {
        let sessions = config.smtp.session_configs(&config.relay)?;
        let limiter = |rate: &Rate, key: String| match &config.cluster {
            Some(cluster) => rate.shared_limiter(key, Arc::clone(&cluster.permits)),
            None => rate.limiter(),
        };
        let mut shared = SharedLimits {
            global: limiter(&config.limits.global, "global".to_owned()),
            domains: HashMap::new(),
            connections: Arc::new(lane::Budget::new(config.smtp.max_connections)),
            cluster: config.cluster.clone(),
        };
        for (domain, rate) in &config.limits.domains {
            let domain = domain.to_ascii_lowercase();
            if let Some(limiter) = limiter(rate, format!("domain:{domain}")) {
                shared.domains.insert(domain, limiter);
            }
        }
        let egress = Egress::new(
            &config.egress,
            config.smtp.local_address,
            config.cluster.as_ref().map(|c| &c.permits),
        )?;
        // MTA-STS applies to direct delivery only: a relay is the operator's choice.
        let mta_sts = (config.mta_sts.enabled && !config.relay.is_enabled()).then(|| {
            let tls = sessions
                .verified
                .connectors
                .for_policy(crate::smtp::TlsPolicy::Verify)
                .config();
            Arc::new(MtaSts::new(
                Arc::clone(&router),
                config.mta_sts.port,
                (**tls).clone(),
                Arc::clone(&metrics),
            ))
        });
        let shaping = Shaping::new(&config.shaping, config.cluster.as_ref().map(|c| &c.permits))?;
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let backlog = if config.backlog == 0 {
            50_000
        } else {
            config.backlog
        };
        let (tx, rx) = mpsc::channel(1024);
        let dispatcher = Dispatcher {
            router,
            metrics,
            sessions,
            egress,
            mta_sts,
            shaping,
            enforced: HashMap::new(),
            settings: LaneSettings {
                max_connections: config.smtp.max_connections_per_site,
                max_messages: config.smtp.max_messages_per_connection,
                window: config.smtp.window_limits(),
                // In a cluster an idle connection holds a slot another worker may be
                // waiting for: it goes after a second, not after the usual idle time.
                idle_timeout: match &config.cluster {
                    Some(_) => config.smtp.idle_timeout.min(CLUSTER_IDLE),
                    None => config.smtp.idle_timeout,
                },
                throttle_pause: config.smtp.throttle_pause,
                throttle_step: config.smtp.throttle_step,
            },
            site_rate: config.limits.per_site,
            shared_limits: Arc::new(shared),
            reports: report_tx,
            lanes: HashMap::new(),
            waiting: HashMap::new(),
        };
        let dispatcher = tokio::spawn(dispatcher.run(rx));
        Ok((
            Self {
                tx,
                backlog: Arc::new(Semaphore::new(backlog)),
                dispatcher,
            },
            report_rx,
        ))
    }

    /// Hands a delivery to the engine, waiting while the backlog is full.
    pub async fn submit(&self, delivery: Delivery<K>) -> Result<(), Closed<K>> {
        let Ok(permit) = Arc::clone(&self.backlog).acquire_owned().await else {
            return Err(Closed(delivery));
        };
        self.tx
            .send(Job {
                delivery,
                _permit: permit,
            })
            .await
            .map_err(|e| Closed(e.0.delivery))
    }

    /// Stops taking deliveries, finishes the transactions in flight, says QUIT, and
    /// reports deliveries not yet attempted with no outcome. Returns when done.
    pub async fn shutdown(self) {
        drop(self.tx);
        let _ = self.dispatcher.await;
    }
}

/// Routes deliveries to lanes.
struct Dispatcher<K> {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    sessions: SessionConfigs,
    egress: Egress,
    mta_sts: Option<Arc<MtaSts>>,
    shaping: Shaping,
    /// Per domain under an `enforce` policy: the site and policy it was derived from,
    /// and the site of its matching MX hosts only.
    enforced: HashMap<String, Enforced>,
    settings: LaneSettings,
    site_rate: Rate,
    shared_limits: Arc<SharedLimits>,
    reports: mpsc::UnboundedSender<Report<K>>,
    lanes: HashMap<Arc<str>, LaneHandle<K>>,
    /// Deliveries waiting for a lookup in flight, by domain.
    waiting: HashMap<String, Vec<Job<K>>>,
}

/// A domain's site and enforced policy, and the site of the MX hosts it allows.
type Enforced = (Arc<Site>, Arc<Policy>, Arc<Site>);

/// A domain's route, and its MTA-STS policy when it has one.
type Answer = Result<(Arc<Site>, Option<Arc<Policy>>), crate::route::RouteError>;

impl<K: Send + Sync + 'static> Dispatcher<K> {
    async fn run(mut self, mut rx: mpsc::Receiver<Job<K>>) {
        let (answers_tx, mut answers) = mpsc::unbounded_channel::<(String, Answer)>();
        let mut open = true;
        while open || !self.waiting.is_empty() {
            tokio::select! {
                job = rx.recv(), if open => match job {
                    Some(job) => self.dispatch(job, &answers_tx),
                    None => open = false,
                },
                Some((domain, answer)) = answers.recv() => {
                    let mut recorded = false;
                    for job in self.waiting.remove(&domain).unwrap_or_default() {
                        if let Some(lane) = self.deliver(job, &domain, answer.clone())
                            && !recorded
                        {
                            // For operators: which domains a site serves.
                            self.metrics.site(&lane).add_domain(&domain);
                            recorded = true;
                        }
                    }
                }
            }
        }
        // Closing the lanes' queues makes them finish what is in flight and stop.
        let tasks: Vec<_> = self.lanes.drain().map(|(_, lane)| lane.task).collect();
        for task in tasks {
            let _ = task.await;
        }
    }

    fn dispatch(&mut self, job: Job<K>, answers: &mpsc::UnboundedSender<(String, Answer)>) {
        let domain = job.delivery.to.domain().to_ascii_lowercase();
        if let Some(route) = self.router.cached(&domain) {
            let policy = match (&route, &self.mta_sts) {
                (Ok(site), Some(sts)) if site.kind == SiteKind::Mx => sts.cached(&domain),
                _ => Some(None),
            };
            if let Some(policy) = policy {
                let answer = route.map(|site| (site, policy));
                self.deliver(job, &domain, answer);
                return;
            }
        }
        let waiting = self.waiting.entry(domain.clone()).or_default();
        waiting.push(job);
        if waiting.len() == 1 {
            let (router, answers) = (Arc::clone(&self.router), answers.clone());
            let mta_sts = self.mta_sts.clone();
            tokio::spawn(async move {
                let answer = match router.route(&domain).await {
                    Ok(site) => {
                        let policy = match &mta_sts {
                            Some(sts) if site.kind == SiteKind::Mx => sts.policy(&domain).await,
                            _ => None,
                        };
                        Ok((site, policy))
                    }
                    Err(e) => Err(e),
                };
                let _ = answers.send((domain, answer));
            });
        }
    }

    /// Hands the job to its lane (or reports why it cannot go); returns the lane's key.
    fn deliver(&mut self, job: Job<K>, domain: &str, answer: Answer) -> Option<Arc<str>> {
        let routed = answer
            .map_err(|e| classify_route(&e))
            .and_then(|(site, policy)| self.apply_policy(domain, site, policy));
        let (site, verified) = match routed {
            Ok(routed) => routed,
            Err(outcome) => return self.refuse(job, outcome),
        };
        let Some(pool) = self.egress.pool(job.delivery.pool.as_deref()).cloned() else {
            // Its pool left the configuration: it waits for it (or for its expiry)
            // rather than leave from addresses it was not meant to use.
            let outcome = no_egress_pool(job.delivery.pool.as_deref().unwrap_or_default());
            return self.refuse(job, outcome);
        };
        let lane_key = pool.site_key(&site.key);
        let mut job = job;
        for _ in 0..2 {
            let lane = self.lane(&site, &pool, &lane_key, verified);
            match lane.tx.send(job) {
                Ok(()) => return Some(lane_key),
                Err(returned) => {
                    // The lane retired while idle: start it again.
                    job = returned.0;
                    self.lanes.remove(&lane_key);
                }
            }
        }
        let Delivery { key, to, .. } = job.delivery;
        let _ = self.reports.send(Report {
            key,
            to,
            site: Some(lane_key),
            outcome: None,
            via: None,
        });
        None
    }

    /// Reports a delivery that goes to no lane (no route, its policy or its pool
    /// refuses it), counted as its outcome says.
    fn refuse(&self, job: Job<K>, outcome: crate::outcome::Outcome) -> Option<Arc<str>> {
        self.metrics.count(match outcome.disposition {
            Disposition::Transient => EventKind::Deferred,
            _ => EventKind::Bounced,
        });
        let Delivery { key, to, .. } = job.delivery;
        let _ = self.reports.send(Report {
            key,
            to,
            site: None,
            outcome: Some(outcome),
            via: None,
        });
        None
    }

    /// The site a domain's mail goes to under its MTA-STS policy, and whether its TLS
    /// must be verified; or the outcome that defers it (`enforce`, and no MX host matches).
    fn apply_policy(
        &mut self,
        domain: &str,
        site: Arc<Site>,
        policy: Option<Arc<Policy>>,
    ) -> Result<(Arc<Site>, bool), crate::outcome::Outcome> {
        let Some(policy) = policy else {
            return Ok((site, false));
        };
        match policy.mode {
            Mode::None => Ok((site, false)),
            Mode::Testing => {
                if !site.hosts.iter().all(|h| policy.matches(&h.name)) {
                    self.metrics.add(Counter::MtaStsTestingFailures, 1);
                    tracing::debug!(domain, site = %site.key, mx = ?policy.mx, "MTA-STS testing: enforcing would refuse some MX hosts");
                }
                Ok((site, false))
            }
            Mode::Enforce => {
                if let Some((from, from_policy, derived)) = self.enforced.get(domain)
                    && Arc::ptr_eq(from, &site)
                    && Arc::ptr_eq(from_policy, &policy)
                {
                    return Ok((Arc::clone(derived), true));
                }
                let hosts: Vec<_> = site
                    .hosts
                    .iter()
                    .filter(|h| policy.matches(&h.name))
                    .cloned()
                    .collect();
                if hosts.is_empty() {
                    self.metrics.add(Counter::MtaStsRefused, 1);
                    return Err(mta_sts_no_mx(domain, &site.key, &policy.mx));
                }
                let mut names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                names.sort_unstable();
                names.dedup();
                let derived = Arc::new(Site {
                    key: Arc::from(format!("{} (mta-sts)", names.join(","))),
                    hosts,
                    kind: site.kind,
                    expires: site.expires,
                });
                if self.enforced.len() > 10_000 {
                    self.enforced.clear();
                }
                self.enforced.insert(
                    domain.to_owned(),
                    (site, Arc::clone(&policy), Arc::clone(&derived)),
                );
                Ok((derived, true))
            }
        }
    }

    fn lane(
        &mut self,
        site: &Arc<Site>,
        pool: &Arc<egress::Pool>,
        lane_key: &Arc<str>,
        verified: bool,
    ) -> &LaneHandle<K> {
        if let Some(lane) = self.lanes.get(lane_key) {
            // A fresher answer (addresses may have changed) is used for new connections.
            let mut current = lane.site.lock().unwrap_or_else(|e| e.into_inner());
            if !Arc::ptr_eq(&current, site) {
                *current = Arc::clone(site);
            }
        } else {
            let session = match site.kind {
                SiteKind::Mx if verified => Arc::clone(&self.sessions.verified),
                SiteKind::Mx => Arc::clone(&self.sessions.direct),
                SiteKind::Relay => Arc::clone(&self.sessions.relay),
            };
            let provider = match site.kind {
                SiteKind::Mx => self
                    .shaping
                    .provider_of(site.hosts.iter().map(|h| h.name.as_str()))
                    .cloned(),
                SiteKind::Relay => None,
            };
            let deps = LaneDeps {
                provider,
                key: Arc::clone(lane_key),
                pool: Arc::clone(pool),
                policy: verified.then_some("mta-sts"),
                settings: self.settings.clone(),
                session,
                site_rate: self.site_rate,
                shared_limits: Arc::clone(&self.shared_limits),
                reports: self.reports.clone(),
                metrics: Arc::clone(&self.metrics),
            };
            self.lanes
                .insert(Arc::clone(lane_key), spawn_lane(Arc::clone(site), deps));
        }
        &self.lanes[lane_key]
    }
}
