//! The wiring: from a [`Config`] to a running volley — queue, templates, composer,
//! router, engine, dispatcher, HTTP API, webhooks and the metrics sampler — and a
//! graceful stop. Everything else is built from what this module hands it.
//!
//! - [`config`]: `volley.toml`, every section assembled.
//! - [`send`]: `volley send`, a campaign delivered from the command line.
//! - [`suppress`]: `volley suppress import|export`, the suppression list as CSV.
//! - `webhooks`: the event log fed to the webhook sender.

pub mod bounces;
pub mod check;
mod cluster;
pub mod config;
pub mod send;
pub mod submission;
pub mod suppress;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use self::config::Config;
use crate::cluster::RedisCluster;
use crate::compose::Composer;
use crate::dispatch::{Dispatch, DispatchDeps};
use crate::engine::{Engine, EngineConfig};
use crate::http::{ApiState, ServerLimits, router};
use crate::message::load_signers;
use crate::metrics::Metrics;
use crate::metrics::history::{History, start_sampler};
use crate::queue::{AnyQueue, Backend};
use crate::route::{Dane, Router};
use crate::template::Templates;

/// Why volley could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Templates did not load.
    #[error("templates: {0}")]
    Templates(#[from] crate::template::TemplateError),
    /// DKIM or unsubscribe settings.
    #[error("{0}")]
    Message(#[from] crate::message::MessageError),
    /// The queue could not be opened.
    #[error("queue: {0}")]
    Queue(#[from] crate::queue::QueueError),
    /// The resolver could not be set up.
    #[error("dns: {0}")]
    Dns(String),
    /// DANE's validating resolver could not be set up (its trust anchor file).
    #[error("{0}")]
    Dane(String),
    /// An `[smtp]`, `[relay]` or `[limits]` setting cannot be used.
    #[error("{0}")]
    Engine(#[from] crate::engine::ConfigError),
    /// A `[webhooks]` setting cannot be used.
    #[error("webhooks: {0}")]
    Webhooks(#[from] crate::webhooks::WebhookError),
    /// A `[submission]` setting cannot be used.
    #[error(transparent)]
    Submission(#[from] submission::SubmissionError),
    /// A `[bounces]` setting (or the return path it needs) cannot be used.
    #[error(transparent)]
    Bounces(#[from] bounces::BouncesError),
    /// At a graceful stop, outcomes could not be stored before the shutdown timeout.
    #[error(
        "{0} outcomes could not be stored before the shutdown timeout; their leases run out and the deliveries are tried again"
    )]
    Unstored(usize),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the operating system said (in use, not permitted...).
        source: std::io::Error,
    },
}

/// The opened parts of volley, before anything runs: what `serve` and `send` share.
#[derive(Debug, Clone)]
pub struct App {
    /// The validated configuration every part was built from.
    pub config: Arc<Config>,
    /// The open queue (its store locked, on the embedded backend, by this process).
    pub queue: Arc<AnyQueue>,
    /// The templates, DKIM key and unsubscribe settings, loaded once; checks submissions
    /// and builds the messages.
    pub composer: Arc<Composer>,
    /// The process's histograms and counters, shared by the engine and the API.
    pub metrics: Arc<Metrics>,
    /// Signals the dispatcher that new work was stored, so it leases at once.
    pub wake: Arc<tokio::sync::Notify>,
    /// On the Redis backend: this worker's handle on what the cluster shares.
    pub cluster: Option<Arc<RedisCluster>>,
    /// This process's id (as the cluster lists it) and start time.
    pub worker: Arc<str>,
    /// When this process opened its queue.
    pub started: std::time::SystemTime,
}

/// Deliveries inside the engine at most (its back-pressure).
const BACKLOG: usize = 20_000;

impl App {
    /// Loads templates and keys and opens the queue.
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let templates = Arc::new(Templates::load(&config.templates.path)?);
        let dkim = load_signers(&config.dkim)?;
        let composer = Composer::new(
            templates,
            dkim,
            &config.unsubscribe,
            config.message.max_size,
        )?;
        bounces::check(&config)?;
        let queue = AnyQueue::open(&config.queue).await?;
        let worker = crate::cluster::worker_id();
        let cluster = match config.queue.backend {
            Backend::Redis => Some(
                RedisCluster::open(
                    &config.queue.redis_url,
                    &config.queue.redis_prefix,
                    worker.clone(),
                    config.cluster.clone(),
                )
                .await
                .map_err(|e| StartError::Queue(e.into()))?,
            ),
            Backend::Embedded => None,
        };
        Ok(Self {
            config: Arc::new(config),
            queue: Arc::new(queue),
            composer: Arc::new(composer),
            metrics: Arc::new(Metrics::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            cluster,
            worker: worker.into(),
            started: std::time::SystemTime::now(),
        })
    }

    /// Starts the engine and the dispatcher; they stop when `shutdown` turns true.
    pub fn start_delivery(&self, shutdown: watch::Receiver<bool>) -> Result<Dispatch, StartError> {
        let c = &self.config;
        let router = Router::new(
            &c.dns,
            &c.relay,
            &c.security,
            c.smtp.port,
            Arc::clone(&self.metrics),
        )
        .map_err(StartError::Dns)?;
        let dane = match c.dane.enabled {
            true => Some(Arc::new(
                Dane::new(&c.dns, &c.dane, Arc::clone(&self.metrics)).map_err(StartError::Dane)?,
            )),
            false => None,
        };
        let shared = self
            .cluster
            .as_ref()
            .filter(|_| c.cluster.shared_limits)
            .map(|cluster| crate::engine::Cluster {
                slots: Arc::clone(cluster) as Arc<dyn crate::engine::SlotSource>,
                permits: Arc::clone(cluster) as Arc<dyn crate::rate::PermitSource>,
            });
        let engine_config = EngineConfig {
            smtp: c.smtp.clone(),
            limits: c.limits.clone(),
            relay: c.relay.clone(),
            egress: c.egress.clone(),
            mta_sts: c.mta_sts.clone(),
            shaping: c.shaping.clone(),
            dane,
            backlog: BACKLOG,
            cluster: shared,
        };
        let (engine, reports) =
            Engine::start(engine_config, Arc::new(router), Arc::clone(&self.metrics))?;
        let deps = DispatchDeps {
            queue: Arc::clone(&self.queue),
            composer: Arc::clone(&self.composer),
            engine,
            reports,
            capacity: BACKLOG,
            lease: c.queue.lease,
            retry: c.retry.clone(),
            return_path: bounces::return_path(c)?,
            metrics: Arc::clone(&self.metrics),
            wake: Arc::clone(&self.wake),
            cache_bytes: c.dispatch.cache,
            shutdown_timeout: c.server.shutdown_timeout,
        };
        Ok(Dispatch::start(deps, shutdown))
    }

    /// The HTTP API's state, reading the sampler's `history`.
    pub fn api_state(&self, history: Arc<History>) -> ApiState {
        ApiState {
            queue: Arc::clone(&self.queue),
            composer: Arc::clone(&self.composer),
            metrics: Arc::clone(&self.metrics),
            history,
            api_keys: Arc::new(self.config.server.api_keys.clone()),
            max_body: self.config.server.max_body,
            max_recipients: self.config.server.max_recipients,
            pools: self.config.egress.names().into(),
            max_queue_depth: self.config.server.max_queue_depth,
            submitted: Arc::clone(&self.wake),
            access: Arc::new(crate::http::Access {
                allowed_hosts: self.config.server.allowed_hosts.clone(),
                allowed_origins: self.config.server.allowed_origins.clone(),
            }),
            cluster: self.cluster.clone(),
            worker: Arc::clone(&self.worker),
            started: self.started,
        }
    }

    /// Serves the API and delivers until `stop` resolves; then stops accepting,
    /// finishes in-flight transactions and releases leases.
    pub async fn serve(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let addr = self.config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Listen { addr, source })?;
        self.serve_on(listener, stop).await
    }

    /// Like [`Self::serve`] on a bound listener (tests bind port 0); the SMTP
    /// listeners, when configured, bind their own addresses.
    pub async fn serve_on(
        self,
        listener: TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let bind = |addr: Option<std::net::SocketAddr>| async move {
            match addr {
                Some(addr) => TcpListener::bind(addr)
                    .await
                    .map(Some)
                    .map_err(|source| StartError::Listen { addr, source }),
                None => Ok(None),
            }
        };
        let sockets = Sockets {
            http: listener,
            submission: bind(self.config.submission.as_ref().map(|c| c.listen)).await?,
            bounces: bind(self.config.bounces.as_ref().map(|c| c.listen)).await?,
        };
        self.serve_sockets(sockets, stop).await
    }

    /// Like [`Self::serve_on`] with every socket bound (tests bind port 0 for all).
    pub async fn serve_sockets(
        self,
        sockets: Sockets,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let listener = sockets.http;
        let mut smtp = Vec::new();
        let submission_listener = submission::listener(
            &self.config,
            Arc::clone(&self.queue),
            Arc::clone(&self.wake),
        )?;
        if let (Some(l), Some(socket)) = (submission_listener, sockets.submission) {
            log_listening("SMTP submission", &socket, l.tls.is_some());
            smtp.push(tokio::spawn(Arc::new(l).run(socket, shutdown_rx.clone())));
        }
        let bounce_listener = bounces::listener(
            &self.config,
            Arc::clone(&self.queue),
            Arc::clone(&self.metrics),
        )?;
        if let (Some(l), Some(socket)) = (bounce_listener, sockets.bounces) {
            log_listening("bounce intake", &socket, false);
            smtp.push(tokio::spawn(Arc::new(l).run(socket, shutdown_rx.clone())));
        }
        let webhooks = match &self.cluster {
            Some(cluster) => webhooks::start_cluster(
                &self.config.webhooks,
                Arc::clone(&self.queue),
                Arc::clone(cluster),
                shutdown_rx.clone(),
            )?,
            None => webhooks::start(
                &self.config.webhooks,
                Arc::clone(&self.queue),
                &self.config.queue.path,
                shutdown_rx.clone(),
            )?,
        };
        let dispatch = if self.config.dispatch.deliver {
            Some(self.start_delivery(shutdown_rx.clone())?)
        } else {
            // Nothing is sent, but a delivery setting that cannot work is said now, not
            // when delivery is switched back on.
            check_delivery(&self.config)?;
            tracing::warn!(
                "[dispatch] deliver = false: accepting and storing mail, delivering none"
            );
            None
        };
        let (queue, retention) = (Arc::clone(&self.queue), self.config.retention);
        let mut background = Vec::new();
        let pruner = match &self.cluster {
            Some(cluster) => {
                background.push(tokio::spawn(
                    Arc::clone(cluster).renew_slots(shutdown_rx.clone()),
                ));
                background.push(tokio::spawn(
                    Arc::clone(cluster).heartbeat(Arc::clone(&self.metrics), shutdown_rx.clone()),
                ));
                tokio::spawn(cluster::while_leading(
                    Arc::clone(cluster),
                    "retention",
                    shutdown_rx.clone(),
                    move |stop| prune(Arc::clone(&queue), retention, stop),
                ))
            }
            None => tokio::spawn(prune(queue, retention, shutdown_rx.clone())),
        };
        let history = Arc::new(History::default());
        let sampler = start_sampler(
            Arc::clone(&history),
            Arc::clone(&self.metrics),
            Arc::clone(&self.queue),
            shutdown_rx.clone(),
        );
        let listen = listener
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
        let config = self.config.file.as_ref().map_or_else(
            || "built-in defaults".to_owned(),
            |f| f.display().to_string(),
        );
        tracing::info!(%listen, %config, "volley is serving");
        let app = router(self.api_state(history));
        let server = &self.config.server;
        let limits = ServerLimits {
            header_timeout: server.header_timeout,
            request_timeout: server.request_timeout,
            max_connections: server.max_connections,
            max_body: server.max_body,
            drain: Duration::from_secs(30),
        };
        let mut http_shutdown = shutdown_rx.clone();
        let server = tokio::spawn(async move {
            let graceful = async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            };
            crate::http::serve(listener, app, limits, graceful).await;
        });
        stop.await;
        tracing::info!("stopping: no new requests; finishing deliveries in flight");
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        for listener in smtp {
            let _ = listener.await;
        }
        let unstored = match dispatch {
            Some(dispatch) => dispatch.join().await,
            None => crate::dispatch::Unstored::default(),
        };
        let _ = sampler.await;
        let _ = pruner.await;
        for task in background {
            let _ = task.await;
        }
        if let Some(cluster) = &self.cluster {
            cluster.release_all().await;
        }
        if let Some(webhooks) = webhooks {
            let _ = webhooks.await;
        }
        if unstored.outcomes > 0 {
            return Err(StartError::Unstored(unstored.outcomes));
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Builds, and drops, what delivery needs from the configuration: the resolvers (DNS,
/// and DANE's when enabled), the session settings (TLS roots), egress pools, provider
/// shaping and the return path. `Err` names the setting that cannot work.
pub fn check_delivery(c: &Config) -> Result<(), StartError> {
    let metrics = Arc::new(Metrics::default());
    Router::new(
        &c.dns,
        &c.relay,
        &c.security,
        c.smtp.port,
        Arc::clone(&metrics),
    )
    .map_err(StartError::Dns)?;
    if c.dane.enabled {
        Dane::new(&c.dns, &c.dane, metrics).map_err(StartError::Dane)?;
    }
    c.smtp.session_configs(&c.relay)?;
    crate::engine::Egress::new(&c.egress, c.smtp.local_address, None)?;
    crate::engine::Shaping::new(&c.shaping, None)?;
    bounces::return_path(c)?;
    Ok(())
}

/// The sockets `serve` listens on: the API's, and the SMTP listeners' when configured.
#[derive(Debug)]
pub struct Sockets {
    /// The HTTP API.
    pub http: TcpListener,
    /// `[submission]`.
    pub submission: Option<TcpListener>,
    /// `[bounces]`.
    pub bounces: Option<TcpListener>,
}

fn log_listening(what: &'static str, socket: &TcpListener, tls: bool) {
    let addr = socket
        .local_addr()
        .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
    tracing::info!(listen = %addr, tls, "{what} is listening");
}

/// How often retention runs.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Removes old events and finished jobs in the background: every minute, as long as each
/// call still finds something, until `shutdown` turns true.
async fn prune(
    queue: Arc<AnyQueue>,
    retention: crate::queue::RetentionConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    use crate::queue::Queue as _;
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        loop {
            match queue.prune(std::time::SystemTime::now(), retention).await {
                Ok(p) if p.events + p.jobs == 0 => break,
                Ok(p) => {
                    tracing::info!(
                        events = p.events,
                        jobs = p.jobs,
                        "retention: removed old events and jobs"
                    );
                    if *shutdown.borrow() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention: pruning failed; trying again later");
                    break;
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled, so a signal sent as soon as volley answers
/// is never lost to the default action. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    let int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
