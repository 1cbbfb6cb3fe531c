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
use crate::outcome::{Disposition, classify_route, dane_refused, mta_sts_no_mx, no_egress_pool};
use crate::rate::{PermitSource, Rate};
use crate::route::dane::Verdict;
use crate::route::mta_sts::{Mode, Policy};
use crate::route::{Dane, MtaSts, MtaStsConfig};
use crate::route::{HostTls, RelayConfig, Router, Site, SiteKind};

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
    /// `[dane]`: the validating lookups of TLSA records, when enabled (direct delivery
    /// only; a relay is the operator's choice).
    pub dane: Option<Arc<Dane>>,
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
                &config.mta_sts,
                (**tls).clone(),
                Arc::clone(&metrics),
            ))
        });
        let testing = match &mta_sts {
            Some(_) => Some(testing_session(&config.smtp, &sessions, &metrics)?),
            None => None,
        };
        let shaping = Shaping::new(&config.shaping, config.cluster.as_ref().map(|c| &c.permits))?;
        let dane = config.dane.clone().filter(|_| !config.relay.is_enabled());
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
            testing,
            dane,
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
    /// Sessions for `testing` domains: opportunistic, each certificate checked and its
    /// failure counted.
    testing: Option<Arc<crate::smtp::SessionConfig>>,
    dane: Option<Arc<Dane>>,
    shaping: Shaping,
    /// Per domain under DANE or an `enforce` policy: the site and demand it was derived
    /// from, and the site of the MX hosts it allows.
    enforced: HashMap<String, Enforced>,
    settings: LaneSettings,
    site_rate: Rate,
    shared_limits: Arc<SharedLimits>,
    reports: mpsc::UnboundedSender<Report<K>>,
    lanes: HashMap<Arc<str>, LaneHandle<K>>,
    /// Deliveries waiting for a lookup in flight, by domain.
    waiting: HashMap<String, Vec<Job<K>>>,
}

/// A domain's site and demand, and the site of the MX hosts it allows.
type Enforced = (Arc<Site>, Demand, Arc<Site>);

/// What a domain asks of our TLS, beyond `[smtp] tls`.
#[derive(Clone, Debug)]
enum Demand {
    /// Nothing: the configured policy.
    None,
    /// Its MTA-STS policy.
    Sts(Arc<Policy>),
    /// DANE: its MX answer is DNSSEC-secure and some hosts have TLSA records (or it
    /// could not be validated). Takes precedence over MTA-STS (RFC 8461 section 2) for
    /// the hosts with records; an `enforce` policy still binds the others.
    Dane(Arc<Verdict>, Option<Arc<Policy>>),
}

impl Demand {
    /// The same answer (not merely an equal one): a derived site may be reused.
    fn same(&self, other: &Demand) -> bool {
        match (self, other) {
            (Demand::None, Demand::None) => true,
            (Demand::Sts(a), Demand::Sts(b)) => Arc::ptr_eq(a, b),
            (Demand::Dane(a, p), Demand::Dane(b, q)) => {
                Arc::ptr_eq(a, b)
                    && match (p, q) {
                        (Some(p), Some(q)) => Arc::ptr_eq(p, q),
                        (None, None) => true,
                        _ => false,
                    }
            }
            _ => false,
        }
    }
}

/// How a lane's sessions secure their connections, beyond per-host DANE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Secured {
    /// `[smtp] tls`.
    Configured,
    /// Verified TLS to the MTA-STS policy's hosts.
    MtaSts,
    /// As configured, with what an MTA-STS `testing` policy would refuse counted.
    MtaStsTesting,
    /// The site's hosts as DANE says, each host's TLS set by its TLSA records.
    Dane,
}

/// A domain's route, and what it asks of our TLS.
type Answer = Result<(Arc<Site>, Demand), crate::route::RouteError>;

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
            let demand = match &route {
                Ok(site) if site.kind == SiteKind::Mx => self.cached_demand(&domain),
                _ => Some(Demand::None),
            };
            if let Some(demand) = demand {
                let answer = route.map(|site| (site, demand));
                self.deliver(job, &domain, answer);
                return;
            }
        }
        let waiting = self.waiting.entry(domain.clone()).or_default();
        waiting.push(job);
        if waiting.len() == 1 {
            let (router, answers) = (Arc::clone(&self.router), answers.clone());
            let (mta_sts, dane) = (self.mta_sts.clone(), self.dane.clone());
            tokio::spawn(async move {
                let answer = match router.route(&domain).await {
                    Ok(site) if site.kind == SiteKind::Mx => {
                        let demand = demand(&domain, dane.as_deref(), mta_sts.as_deref()).await;
                        Ok((site, demand))
                    }
                    Ok(site) => Ok((site, Demand::None)),
                    Err(e) => Err(e),
                };
                let _ = answers.send((domain, answer));
            });
        }
    }

    /// The domain's demand when every answer it needs is cached.
    fn cached_demand(&self, domain: &str) -> Option<Demand> {
        if domain.starts_with('[') {
            return Some(Demand::None);
        }
        let verdict = match &self.dane {
            Some(dane) => dane.cached(domain)?,
            None => None,
        };
        let policy = match &self.mta_sts {
            // A failed verdict defers whatever the policy says.
            Some(_) if matches!(verdict.as_deref(), Some(Verdict::Failed(_))) => None,
            Some(sts) => sts.cached(domain)?,
            None => None,
        };
        Some(match (verdict, policy) {
            (Some(verdict), policy) => Demand::Dane(verdict, policy),
            (None, Some(policy)) => Demand::Sts(policy),
            (None, None) => Demand::None,
        })
    }

    /// Hands the job to its lane (or reports why it cannot go); returns the lane's key.
    fn deliver(&mut self, job: Job<K>, domain: &str, answer: Answer) -> Option<Arc<str>> {
        let routed = answer
            .map_err(|e| classify_route(&e))
            .and_then(|(site, policy)| self.apply_policy(domain, site, policy));
        let (site, secured) = match routed {
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
            let lane = self.lane(&site, &pool, &lane_key, secured);
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

    /// The site a domain's mail goes to under DANE or its MTA-STS policy, and how its
    /// TLS is secured; or the outcome that defers it.
    fn apply_policy(
        &mut self,
        domain: &str,
        site: Arc<Site>,
        demand: Demand,
    ) -> Result<(Arc<Site>, Secured), crate::outcome::Outcome> {
        if let Some((from, from_demand, derived)) = self.enforced.get(domain)
            && Arc::ptr_eq(from, &site)
            && from_demand.same(&demand)
        {
            let secured = match &demand {
                Demand::Dane(..) => Secured::Dane,
                Demand::Sts(p) if p.mode == Mode::Testing => {
                    // Counted per delivery, as on the first one.
                    if !derived.hosts.iter().all(|h| p.matches(&h.name)) {
                        self.metrics.add(Counter::MtaStsTestingFailures, 1);
                    }
                    Secured::MtaStsTesting
                }
                _ => Secured::MtaSts,
            };
            return Ok((Arc::clone(derived), secured));
        }
        let policy = match &demand {
            Demand::None => return Ok((site, Secured::Configured)),
            Demand::Dane(verdict, policy) => {
                let derived = self.apply_dane(domain, &site, verdict, policy.as_deref())?;
                self.remember(domain, site, demand, Arc::clone(&derived));
                return Ok((derived, Secured::Dane));
            }
            Demand::Sts(policy) => Arc::clone(policy),
        };
        match policy.mode {
            Mode::None => Ok((site, Secured::Configured)),
            Mode::Testing => {
                if !site.hosts.iter().all(|h| policy.matches(&h.name)) {
                    self.metrics.add(Counter::MtaStsTestingFailures, 1);
                    tracing::debug!(domain, site = %site.key, mx = ?policy.mx, "MTA-STS testing: enforcing would refuse some MX hosts");
                }
                if self.testing.is_none() {
                    return Ok((site, Secured::Configured));
                }
                // Its own lane, whose sessions check certificates without refusing them.
                let derived = Arc::new(Site {
                    key: Arc::from(format!("{} (mta-sts testing)", site.key)),
                    ..(*site).clone()
                });
                self.remember(domain, site, demand, Arc::clone(&derived));
                Ok((derived, Secured::MtaStsTesting))
            }
            Mode::Enforce => {
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
                self.remember(domain, site, demand, Arc::clone(&derived));
                Ok((derived, Secured::MtaSts))
            }
        }
    }

    /// The site of the hosts DANE lets mail go to, each with its TLS requirement: those
    /// of the validated MX answer, less those whose TLSA lookup failed, and less those
    /// without TLSA records that an MTA-STS `enforce` policy does not name (those it
    /// names get TLS verified against their name).
    fn apply_dane(
        &self,
        domain: &str,
        site: &Site,
        verdict: &Verdict,
        policy: Option<&Policy>,
    ) -> Result<Arc<Site>, crate::outcome::Outcome> {
        let refuse = |reason: String| {
            self.metrics.add(Counter::DaneRefused, 1);
            dane_refused(domain, &reason)
        };
        let (mx, hosts, failed) = match verdict {
            Verdict::Failed(reason) => return Err(refuse(reason.clone())),
            Verdict::Applies { mx, hosts, failed } => (mx, hosts, failed),
        };
        let enforce = policy.filter(|p| p.mode == Mode::Enforce);
        let usable: Vec<_> = site
            .hosts
            .iter()
            .filter(|h| mx.contains(&h.name) && !failed.contains_key(&h.name))
            .filter_map(|h| {
                let tls = match (hosts.get(&h.name), enforce) {
                    (Some(tls), _) => Some(tls.clone()),
                    (None, Some(p)) if p.matches(&h.name) => Some(HostTls::MtaSts),
                    (None, Some(_)) => return None,
                    (None, None) => None,
                };
                Some(crate::route::MxHost { tls, ..h.clone() })
            })
            .collect();
        if usable.is_empty() {
            let mut why: Vec<String> = failed.iter().map(|(h, e)| format!("{h}: {e}")).collect();
            why.sort_unstable();
            if why.is_empty() {
                why.push(format!(
                    "the validated MX answer ({}) names none of {}",
                    mx.join(", "),
                    site.key
                ));
            }
            if let Some(p) = enforce {
                why.push(format!(
                    "hosts without TLSA records must match the MTA-STS policy (mx {})",
                    p.mx.join(", ")
                ));
            }
            return Err(refuse(format!("no usable MX host ({})", why.join("; "))));
        }
        // A host's requirement under MTA-STS is the domain's, not the host's: it is in
        // the lane's name, so that a domain without the policy never shares its lane.
        let mut names: Vec<String> = usable
            .iter()
            .map(|h| match h.tls {
                Some(HostTls::MtaSts) => format!("{} (mta-sts)", h.name),
                _ => h.name.clone(),
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(Arc::new(Site {
            key: Arc::from(format!("{} (dane)", names.join(","))),
            hosts: usable,
            kind: site.kind,
            expires: site.expires,
        }))
    }

    /// Keeps a derived site for the domain's next deliveries.
    fn remember(&mut self, domain: &str, site: Arc<Site>, demand: Demand, derived: Arc<Site>) {
        if self.enforced.len() > 10_000 {
            self.enforced.clear();
        }
        self.enforced
            .insert(domain.to_owned(), (site, demand, derived));
    }

    fn lane(
        &mut self,
        site: &Arc<Site>,
        pool: &Arc<egress::Pool>,
        lane_key: &Arc<str>,
        secured: Secured,
    ) -> &LaneHandle<K> {
        if let Some(lane) = self.lanes.get(lane_key) {
            // A fresher answer (addresses may have changed) is used for new connections.
            let mut current = lane.site.lock().unwrap_or_else(|e| e.into_inner());
            if !Arc::ptr_eq(&current, site) {
                *current = Arc::clone(site);
            }
        } else {
            let session = match site.kind {
                SiteKind::Mx if secured == Secured::MtaSts => Arc::clone(&self.sessions.verified),
                SiteKind::Mx if secured == Secured::MtaStsTesting => self
                    .testing
                    .clone()
                    .unwrap_or_else(|| Arc::clone(&self.sessions.direct)),
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
                policy: match secured {
                    Secured::MtaSts => Some("mta-sts"),
                    Secured::MtaStsTesting => Some("mta-sts-testing"),
                    Secured::Configured | Secured::Dane => None,
                },
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

/// What `domain` asks of our TLS: DANE when its MX answer is secure and it has TLSA
/// records (or the answer fails validation), its MTA-STS policy otherwise.
async fn demand(domain: &str, dane: Option<&Dane>, mta_sts: Option<&MtaSts>) -> Demand {
    // An address literal has no DNS name to hold a policy or TLSA records.
    if domain.starts_with('[') {
        return Demand::None;
    }
    let verdict = match dane {
        Some(dane) => dane.verdict(domain).await,
        None => None,
    };
    let policy = match mta_sts {
        // A failed verdict defers whatever the policy says.
        Some(_) if matches!(verdict.as_deref(), Some(Verdict::Failed(_))) => None,
        Some(sts) => sts.policy(domain).await,
        None => None,
    };
    match (verdict, policy) {
        (Some(verdict), policy) => Demand::Dane(verdict, policy),
        (None, Some(policy)) => Demand::Sts(policy),
        (None, None) => Demand::None,
    }
}

/// The sessions of `testing` domains: as configured for MX hosts, each certificate
/// checked as `enforce` would check it, and a failure counted and logged, not refused.
fn testing_session(
    smtp: &SmtpConfig,
    sessions: &SessionConfigs,
    metrics: &Arc<Metrics>,
) -> Result<Arc<crate::smtp::SessionConfig>, ConfigError> {
    let metrics = Arc::clone(metrics);
    let report: crate::smtp::tls::Report = Arc::new(move |host, error| {
        metrics.add(Counter::MtaStsTestingTlsFailures, 1);
        tracing::info!(host, %error, "MTA-STS testing: enforcing would refuse this certificate");
    });
    let ca = smtp
        .ca_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    let connectors =
        crate::smtp::TlsConnectors::reporting(ca, report).map_err(|e| ConfigError::Invalid {
            field: "smtp.ca_file",
            message: e.to_string(),
        })?;
    let mut config = (*sessions.direct).clone();
    config.connectors = connectors;
    Ok(Arc::new(config))
}
