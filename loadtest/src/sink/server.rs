//! [`Sink`]: binds the listeners, runs one accept loop per address and one task per
//! connection, and exposes the shared state (counters, captured messages) to the caller.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::behaviour::Behaviours;
use super::config::SinkConfig;
use super::session;
use super::stats::{Counters, Pace, Stats};
use super::store::{Received, Store};
use crate::tls;

/// How long [`Sink::shutdown`] lets sessions say goodbye before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by every listener and connection of one sink.
pub(crate) struct Shared {
    pub config: SinkConfig,
    pub counters: Counters,
    pub pace: Pace,
    pub behaviours: Behaviours,
    pub store: Store,
    pub acceptor: TlsAcceptor,
    /// Source of unique CRAM-MD5 challenges.
    pub nonce: AtomicU64,
    /// Sessions that panicked (a bug: bad input must never panic).
    pub session_panics: AtomicU64,
    /// Held here (not only in [`Sink`]) so that dropping the handle does not stop the server:
    /// a test that lets its `Sink` go out of scope early keeps a working server.
    shutdown: watch::Sender<bool>,
}

/// A running sink. Dropping it leaves the server running until the tokio runtime stops; call
/// [`Sink::shutdown`] to stop it.
pub struct Sink {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    ca_pem: String,
    identity: tls::TlsIdentity,
    listeners: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("addrs", &self.addrs)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Sink {
    /// Generates the TLS material, binds every address of `config.listen` and starts serving.
    pub async fn start(config: SinkConfig) -> std::io::Result<Sink> {
        if config.listen.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "SinkConfig::listen is empty",
            ));
        }
        let ips: Vec<std::net::IpAddr> = config.listen.iter().map(SocketAddr::ip).collect();
        let material = tls::generate(&config.hostname, &ips)?;
        if let Some(dir) = &config.spool_dir {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut listeners = Vec::with_capacity(config.listen.len());
        let mut addrs = Vec::with_capacity(config.listen.len());
        for addr in &config.listen {
            let listener = TcpListener::bind(addr).await?;
            addrs.push(listener.local_addr()?);
            listeners.push(listener);
        }
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            pace: Pace::default(),
            behaviours: Behaviours::new(
                config.seed,
                config.tempfail_percent,
                config.permfail_percent,
            ),
            store: Store::new(
                config.capture,
                config.track_recipients,
                config.spool_dir.clone(),
            ),
            acceptor: material.acceptor,
            nonce: AtomicU64::new(config.seed),
            session_panics: AtomicU64::new(0),
            shutdown,
            config,
        });
        let listeners = listeners
            .into_iter()
            .map(|listener| tokio::spawn(accept_loop(listener, Arc::clone(&shared))))
            .collect();
        Ok(Sink {
            shared,
            addrs,
            ca_pem: material.ca_pem,
            identity: material.identity,
            listeners,
        })
    }

    /// The bound addresses (with the real ports), in the order of `SinkConfig::listen`.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// Captured messages in arrival order (empty unless `SinkConfig::capture`).
    pub fn messages(&self) -> Vec<Received> {
        self.shared.store.messages()
    }

    /// Accepted deliveries per recipient address, exactly as the client wrote the address
    /// (empty unless `SinkConfig::track_recipients`).
    pub fn delivery_counts(&self) -> HashMap<String, u64> {
        self.shared.store.delivery_counts()
    }

    /// The sink's certificates in DER (for TLSA records).
    pub fn tls_identity(&self) -> tls::TlsIdentity {
        self.identity.clone()
    }

    /// PEM of the CA certificate that signed the sink's TLS certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// Number of connection tasks that panicked. Always 0 unless the sink has a bug; tests
    /// that feed malformed input assert on it.
    pub fn session_panics(&self) -> u64 {
        self.shared.session_panics.load(Ordering::Relaxed)
    }

    /// Stops listening, closes every connection (idle ones get `421`), and returns once all
    /// connection tasks have ended.
    pub async fn shutdown(self) {
        self.shared.shutdown.send_replace(true);
        for listener in self.listeners {
            let _ = listener.await;
        }
    }
}

/// Accepts connections on one listener until shutdown, then drains its connections.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut stop = shared.shutdown.subscribe();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    // Replies are flushed in whole groups already; Nagle would only add latency.
                    let _ = tcp.set_nodelay(true);
                    let stop = shared.shutdown.subscribe();
                    connections.spawn(session::serve(tcp, Arc::clone(&shared), stop));
                }
                Err(err) => {
                    // Typically EMFILE under extreme load: back off instead of spinning.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                note_exit(&shared, done);
            }
            () = session::stopped(&mut stop) => break,
        }
    }
    drop(listener);
    let drain = async {
        while let Some(done) = connections.join_next().await {
            note_exit(&shared, done);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        connections.shutdown().await;
    }
}

fn note_exit(shared: &Shared, done: Result<(), JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        shared.session_panics.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%err, "sink session panicked");
    }
}
