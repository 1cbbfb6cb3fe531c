//! The wiring: from a [`Config`] to a running volley — queue, templates, composer,
//! router, engine, dispatcher, HTTP API, webhooks and the metrics sampler — and a
//! graceful stop. Everything else is built from what this module hands it.
//!
//! - [`config`]: `volley.toml`, every section assembled.
//! - [`send`]: `volley send`, a campaign delivered from the command line.
//! - `webhooks`: the event log fed to the webhook sender.

pub mod config;
pub mod send;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use self::config::Config;
use crate::compose::Composer;
use crate::dispatch::{Dispatch, DispatchDeps};
use crate::engine::{Engine, EngineConfig};
use crate::http::{ApiState, router};
use crate::message::DkimSigner;
use crate::metrics::Metrics;
use crate::metrics::history::{History, start_sampler};
use crate::queue::AnyQueue;
use crate::route::Router;
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
    /// An `[smtp]`, `[relay]` or `[limits]` setting cannot be used.
    #[error("{0}")]
    Engine(#[from] crate::engine::ConfigError),
    /// A `[webhooks]` setting cannot be used.
    #[error("webhooks: {0}")]
    Webhooks(#[from] crate::webhooks::WebhookError),
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
}

/// Deliveries inside the engine at most (its back-pressure).
const BACKLOG: usize = 20_000;

impl App {
    /// Loads templates and keys and opens the queue.
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let templates = Arc::new(Templates::load(&config.templates.path)?);
        let dkim = config
            .dkim
            .as_ref()
            .map(DkimSigner::from_config)
            .transpose()?;
        let composer = Composer::new(
            templates,
            dkim,
            &config.unsubscribe,
            config.message.max_size,
        )?;
        let queue = AnyQueue::open(&config.queue).await?;
        Ok(Self {
            config: Arc::new(config),
            queue: Arc::new(queue),
            composer: Arc::new(composer),
            metrics: Arc::new(Metrics::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
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
        let engine_config = EngineConfig {
            smtp: c.smtp.clone(),
            limits: c.limits.clone(),
            relay: c.relay.clone(),
            backlog: BACKLOG,
        };
        let (engine, reports) =
            Engine::start(engine_config, Arc::new(router), Arc::clone(&self.metrics))?;
        let deps = DispatchDeps {
            queue: Arc::clone(&self.queue),
            composer: Arc::clone(&self.composer),
            engine,
            reports,
            capacity: BACKLOG,
            retry: c.retry.clone(),
            return_path: c.message.return_path.clone(),
            metrics: Arc::clone(&self.metrics),
            wake: Arc::clone(&self.wake),
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
            submitted: Arc::clone(&self.wake),
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

    /// Like [`Self::serve`] on a bound listener (tests bind port 0).
    pub async fn serve_on(
        self,
        listener: TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let webhooks = webhooks::start(
            &self.config.webhooks,
            Arc::clone(&self.queue),
            &self.config.queue.path,
            shutdown_rx.clone(),
        )?;
        let dispatch = self.start_delivery(shutdown_rx.clone())?;
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
        let mut http_shutdown = shutdown_rx.clone();
        let server = tokio::spawn(async move {
            let graceful = async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
        });
        stop.await;
        tracing::info!("stopping: no new requests; finishing deliveries in flight");
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        dispatch.join().await;
        let _ = sampler.await;
        if let Some(webhooks) = webhooks {
            let _ = webhooks.await;
        }
        tracing::info!("stopped");
        Ok(())
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
