//! The connection pool of one site: a deadpool manager that opens SMTP sessions,
//! trying the site's MX hosts in order, and a slot semaphore so that a closing
//! connection still counts against the site's limit, and the engine's, until its socket
//! is closed.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use deadpool::managed::{self, Metrics as PoolMetrics, RecycleError, RecycleResult};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::metrics::{Metrics, SiteCounters, Stage};
use crate::outcome::{ConnectFailure, classify_connect};
use crate::rate::BoxFuture;
use crate::route::{HostTls, Site};
use crate::smtp::{Phase, Session, SessionConfig, SmtpError, TlsPolicy};

/// At most this many addresses are tried for one connection.
const MAX_TARGETS: usize = 8;

/// While waiting for an engine-wide permit, idle connections are asked back this often.
const RECLAIM_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The engine's connections, all sites together (`[smtp] max_connections`).
///
/// An idle pooled connection holds its permit, so a site that finds none left asks every
/// lane to close its idle connections; without that, ten quiet pools could keep the
/// eleventh site waiting until their idle timeout.
#[derive(Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    reclaim: Notify,
}

impl Budget {
    /// A budget of `connections` (at least one).
    pub fn new(connections: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(connections.max(1))),
            reclaim: Notify::new(),
        }
    }

    /// Waits for a permit, asking lanes for their idle connections while none is free.
    pub(crate) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        loop {
            match Arc::clone(&self.permits).try_acquire_owned() {
                Ok(permit) => return Some(permit),
                Err(TryAcquireError::Closed) => return None,
                Err(TryAcquireError::NoPermits) => self.reclaim.notify_waiters(),
            }
            tokio::select! {
                permit = Arc::clone(&self.permits).acquire_owned() => return permit.ok(),
                () = tokio::time::sleep(RECLAIM_EVERY) => {}
            }
        }
    }

    /// Resolves when a site is waiting for a permit: idle connections should close.
    pub(crate) async fn reclaimed(&self) {
        self.reclaim.notified().await;
    }
}

/// Connection slots shared by the workers of a cluster (kept in Redis by `cluster`):
/// a site's cap counts every worker's connections. A slot whose holder dies comes back
/// by itself after a while (a lease), so a crash never shrinks the cap for good.
pub trait SlotSource: Send + Sync + std::fmt::Debug {
    /// Takes one of the `cap` slots of `site`: its id, or `None` while all are taken. An
    /// error means the store could not be asked (no slot is taken).
    fn take_slot<'a>(
        &'a self,
        site: &'a str,
        cap: usize,
    ) -> BoxFuture<'a, Result<Option<u64>, String>>;
    /// Gives a slot back (in the background: a drop cannot wait).
    fn release_slot(&self, site: &str, id: u64);
    /// Tells every worker that `site` asked this one to slow down for `pause` (in the
    /// background).
    fn report_throttle(&self, site: &str, pause: std::time::Duration);
    /// The latest slow-down of `site` still running, as another worker or this one
    /// reported it.
    fn throttle_of<'a>(
        &'a self,
        site: &'a str,
    ) -> BoxFuture<'a, Result<Option<SharedThrottle>, String>>;
}

/// A site's slow-down, as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedThrottle {
    /// Tells one report from the next.
    pub id: String,
    /// Whether this worker reported it (and so has applied it already).
    pub mine: bool,
    /// How much of its pause is left.
    pub remaining: std::time::Duration,
}

/// While every cluster slot of a site is taken, ask again this often.
const SLOT_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// After the slot store failed, ask again this much later (never connect without).
const SLOT_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// A cluster slot held by one connection; given back when dropped.
#[derive(Debug)]
struct ClusterSlot {
    source: Arc<dyn SlotSource>,
    site: Arc<str>,
    id: u64,
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        self.source.release_slot(&self.site, self.id);
    }
}

/// Waits for one of the cluster's `cap` slots of `site`.
async fn cluster_slot(source: &Arc<dyn SlotSource>, site: &Arc<str>, cap: usize) -> ClusterSlot {
    loop {
        match source.take_slot(site, cap).await {
            Ok(Some(id)) => {
                return ClusterSlot {
                    source: Arc::clone(source),
                    site: Arc::clone(site),
                    id,
                };
            }
            Ok(None) => tokio::time::sleep(SLOT_POLL).await,
            Err(error) => {
                tracing::warn!(%site, %error, "cluster connection slots unavailable; waiting");
                tokio::time::sleep(SLOT_RETRY).await;
            }
        }
    }
}

/// A session that holds one of the site's connection slots.
#[derive(Debug)]
pub struct PooledSession {
    session: Session<TcpStream>,
    open: OpenGuard,
    slot: OwnedSemaphorePermit,
    all: OwnedSemaphorePermit,
    provider: Option<OwnedSemaphorePermit>,
    cluster: Option<ClusterSlot>,
    provider_slot: Option<ClusterSlot>,
    /// The host this session reached, and the TLS its domain's DNS set for it, if any.
    host: String,
    host_tls: Option<(TlsPolicy, &'static str)>,
}

/// Keeps the site's open-connection gauge right however the session ends.
#[derive(Debug)]
struct OpenGuard(Arc<SiteCounters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Relaxed);
    }
}

impl Deref for PooledSession {
    type Target = Session<TcpStream>;
    fn deref(&self) -> &Self::Target {
        &self.session
    }
}

impl DerefMut for PooledSession {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.session
    }
}

impl PooledSession {
    /// The TLS policy its domain's DNS set for this session's host (DANE, or MTA-STS
    /// beside it), with its label, if it did.
    pub fn host_tls(&self) -> Option<(TlsPolicy, &'static str)> {
        self.host_tls
    }

    /// Says QUIT and closes; the slot is released only when the socket is closed.
    pub async fn quit(self) {
        let PooledSession {
            session,
            open,
            slot,
            all,
            provider,
            cluster,
            provider_slot,
            host: _,
            host_tls: _,
        } = self;
        session.quit().await;
        drop(open);
        drop((slot, all, provider, cluster, provider_slot));
    }
}

/// The session settings of one source address of the lane's egress pool.
#[derive(Debug)]
pub(crate) struct SourceConfigs {
    /// The settings, with this source's address and EHLO name.
    pub(crate) tls: Arc<SessionConfig>,
    /// Under opportunistic TLS, the same settings without TLS: a host whose TLS
    /// handshake fails still gets its mail in clear text, as MTAs do (RFC 7435).
    pub(crate) plain: Option<Arc<SessionConfig>>,
}

/// Opens sessions to one site, from one egress pool.
#[derive(Debug)]
pub struct SessionManager {
    /// The lane's name (the site's, and the pool's unless it is the default).
    pub(super) key: Arc<str>,
    /// The latest routing answer; updated when the route is refreshed.
    pub(super) site: Arc<Mutex<Arc<Site>>>,
    /// The pool whose sources connections bind, in turn.
    pub(super) egress: Arc<crate::engine::egress::Pool>,
    /// One configuration per source of the pool, in the pool's order.
    pub(super) sources: Vec<SourceConfigs>,
    /// The connection permits of the site's provider (provider shaping), if any, with
    /// its cluster key and cap (its connections are the cluster's, like a site's).
    pub(super) provider: Option<(Arc<Budget>, Arc<str>, usize)>,
    pub(super) slots: Arc<Semaphore>,
    /// The site's cap, and the cluster's slots when workers share it.
    pub(super) cap: usize,
    pub(super) cluster: Option<Arc<dyn SlotSource>>,
    /// The engine-wide connection permits, shared by every site.
    pub(super) all: Arc<Budget>,
    pub(super) max_messages: u64,
    pub(super) metrics: Arc<Metrics>,
    pub(super) counters: Arc<SiteCounters>,
}

impl managed::Manager for SessionManager {
    type Type = PooledSession;
    type Error = SmtpError;

    async fn create(&self) -> Result<PooledSession, SmtpError> {
        let slot = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .map_err(|_| SmtpError::Unusable)?;
        // The provider's permit next, and the engine-wide one after both, so that a site
        // at its own or its provider's limit waits without holding an engine-wide permit
        // another site could use.
        let provider = match &self.provider {
            Some((budget, _, _)) => Some(budget.acquire().await.ok_or(SmtpError::Unusable)?),
            None => None,
        };
        let all = self.all.acquire().await.ok_or(SmtpError::Unusable)?;
        let site = Arc::clone(&self.site.lock().unwrap_or_else(|e| e.into_inner()));
        // The cluster's slot last: held only while this process could connect at once.
        let cluster = match &self.cluster {
            Some(source) => Some(cluster_slot(source, &self.key, self.cap).await),
            None => None,
        };
        let provider_slot = match (&self.cluster, &self.provider) {
            (Some(source), Some((_, key, cap))) => Some(cluster_slot(source, key, *cap).await),
            _ => None,
        };
        let mut last = None;
        for (mx, addr) in site.targets().take(MAX_TARGETS) {
            let host = mx.name.as_str();
            let Some(source) = self
                .egress
                .next_source(addr.is_ipv4())
                .map(|i| &self.sources[i])
            else {
                tracing::debug!(site = %self.key, host, %addr, pool = %self.egress.name, "no source address of this family in the pool");
                last = Some(SmtpError::Io {
                    phase: Phase::Connect,
                    kind: std::io::ErrorKind::AddrNotAvailable,
                    message: format!(
                        "egress pool {} has no {} source address for {addr}",
                        self.egress.name,
                        if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                });
                continue;
            };
            let (config, plain, host_tls) = match &mx.tls {
                None => (Arc::clone(&source.tls), source.plain.as_ref(), None),
                // No clear text, whatever `[smtp] tls` says.
                Some(tls) => match host_config(&source.tls, tls) {
                    Ok(config) => (config, None, Some(tls.policy())),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                },
            };
            let result = match (Session::connect(addr, host, config).await, plain) {
                (Err(e), Some(plain)) if classify_connect(&e) == ConnectFailure::Tls => {
                    tracing::info!(site = %self.key, host, %addr, error = %e, "TLS failed; sending in clear text (opportunistic TLS)");
                    Session::connect(addr, host, Arc::clone(plain)).await
                }
                (result, _) => result,
            };
            match result {
                Ok(session) => {
                    let t = session.timings();
                    self.metrics.record(Stage::Connect, t.connect);
                    self.metrics.record(Stage::Ehlo, t.ehlo);
                    if let Some(tls) = t.tls {
                        self.metrics.record(Stage::Tls, tls);
                    }
                    self.counters.connections_opened.fetch_add(1, Relaxed);
                    self.counters.connections_open.fetch_add(1, Relaxed);
                    let open = OpenGuard(Arc::clone(&self.counters));
                    return Ok(PooledSession {
                        session,
                        open,
                        slot,
                        all,
                        provider,
                        cluster,
                        provider_slot,
                        host: host.to_owned(),
                        host_tls,
                    });
                }
                Err(e) if classify_connect(&e) != ConnectFailure::Stop => {
                    tracing::debug!(site = %self.key, host, %addr, error = %e, "trying the next MX address");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(SmtpError::Io {
            phase: Phase::Connect,
            kind: std::io::ErrorKind::NotFound,
            message: format!("site {} has no address", site.key),
        }))
    }

    async fn recycle(
        &self,
        session: &mut PooledSession,
        _: &PoolMetrics,
    ) -> RecycleResult<SmtpError> {
        if !session.is_usable() || session.transactions() >= self.max_messages {
            return Err(RecycleError::message("session spent or broken"));
        }
        // The host's TLSA records appeared, went or changed kind since it connected:
        // the next message goes on a connection made under the new requirement.
        let site = Arc::clone(&self.site.lock().unwrap_or_else(|e| e.into_inner()));
        let now = site
            .hosts
            .iter()
            .find(|h| h.name == session.host)
            .map(|h| h.tls.as_ref().map(HostTls::policy));
        if now != Some(session.host_tls) {
            return Err(RecycleError::message("the host's TLS requirement changed"));
        }
        Ok(())
    }
}

/// A source's settings for a host with its own requirement: TLS verified against its
/// TLSA records, or against its name (MTA-STS), or required without authentication
/// when none of its records is usable in SMTP.
fn host_config(base: &SessionConfig, tls: &HostTls) -> Result<Arc<SessionConfig>, SmtpError> {
    let mut config = base.clone();
    config.tls = tls.policy().0;
    if let HostTls::Dane(records) = tls {
        config.connectors =
            crate::smtp::dane::connectors(records).map_err(|e| SmtpError::Tls(e.to_string()))?;
    }
    Ok(Arc::new(config))
}
