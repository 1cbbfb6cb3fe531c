//! [`LoadOptions`]: what one load-test run does, with the defaults of `volley-load`.

use std::path::PathBuf;
use std::time::Duration;

/// DKIM signing in the volley under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DkimMode {
    /// No `[dkim]` section.
    #[default]
    None,
    /// `ed25519-sha256` with the test key `tests/data/dkim-test-ed25519.pem`.
    Ed25519,
    /// `rsa-sha256` with the test key `tests/data/dkim-test-rsa2048.pem`.
    Rsa,
}

impl DkimMode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DkimMode::None => "none",
            DkimMode::Ed25519 => "ed25519",
            DkimMode::Rsa => "rsa",
        }
    }
}

/// The queue backend of the volley under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueBackend {
    /// The durable file-backed store, in the run's temporary directory.
    #[default]
    Embedded,
    /// Redis Streams at [`LoadOptions::redis_url`], under a unique key prefix removed at the end.
    Redis,
}

impl QueueBackend {
    /// The name used on the command line, in `volley.toml` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            QueueBackend::Embedded => "embedded",
            QueueBackend::Redis => "redis",
        }
    }
}

/// Everything one run needs. [`LoadOptions::new`] gives the documented defaults; the binary
/// paths must point at existing executables (the driver never builds anything itself).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The `volley` executable run as `volley serve`.
    pub volley_bin: PathBuf,
    /// The `volley-sink` executable.
    pub sink_bin: PathBuf,
    /// The volley repository: `templates/` (for [`template`](Self::template)) and the DKIM
    /// test keys in `tests/data/`.
    pub repo_dir: PathBuf,
    /// Recipients to send (M). Default 100,000.
    pub recipients: u64,
    /// Recipient domains (K), `d0.load.test` … Default 50.
    pub domains: u32,
    /// Sink addresses (N), `127.0.0.10` … `127.0.0.{10+N-1}`, one common port. Default 10.
    pub sink_addresses: u8,
    /// Target size of each message in bytes, headers included (generated template only).
    /// Default 2048.
    pub size: usize,
    /// A template of the repository's `templates/` instead of the generated `load` template.
    pub template: Option<String>,
    /// `[smtp] max_connections_per_site`. Default 4.
    pub concurrency: usize,
    /// `[limits] global` in messages per second; `None` (the default) is unlimited.
    pub rate: Option<u32>,
    /// DKIM signing. Default none.
    pub dkim: DkimMode,
    /// Queue backend. Default embedded.
    pub backend: QueueBackend,
    /// Redis server for [`QueueBackend::Redis`]. Default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// On Redis, share connection caps and rates through Redis (`[cluster]
    /// shared_limits`). Default true, as volley's.
    pub shared_limits: bool,
    /// Keep volley's opportunistic STARTTLS instead of `tls = "disabled"`.
    pub tls: bool,
    /// Percentage of RCPT attempts the sink answers 451 (decided per attempt).
    pub tempfail_percent: f64,
    /// Percentage of addresses the sink answers 550 (decided per address).
    pub permfail_percent: f64,
    /// Seed of the sink's random and hashed failures. Default 1.
    pub seed: u64,
    /// Run the ceiling and naive references after volley. Default true.
    pub references: bool,
    /// Submit with `send_at` one hour ahead and measure volley holding the queue (RSS)
    /// instead of delivering. Default false.
    pub queue_only: bool,
    /// The whole run's time limit; children are killed when it passes. Default 300 s.
    pub timeout: Duration,
    /// Progress lines on stderr. Default true.
    pub progress: bool,
    /// Keep the temporary directory (config, volley's log, queue) instead of removing it.
    pub keep_temp: bool,
    /// A wide-area network: every byte between volley (and the references) and the sink
    /// goes through [`crate::proxy::DelayProxy`], held half this round trip each way.
    /// `None` (the default): loopback as it is.
    pub rtt: Option<Duration>,
    /// The sink advertises CHUNKING. Default true; false makes volley send DATA.
    pub chunking: bool,
    /// volley's `[smtp] max_pipeline`. Default 64, volley's own.
    pub max_pipeline: usize,
    /// volley's `[smtp] batch_size`. Default 16, volley's own.
    pub batch_size: usize,
}

impl LoadOptions {
    /// The defaults, with the given executables and repository.
    pub fn new(volley_bin: PathBuf, sink_bin: PathBuf, repo_dir: PathBuf) -> Self {
        Self {
            volley_bin,
            sink_bin,
            repo_dir,
            recipients: 100_000,
            domains: 50,
            sink_addresses: 10,
            size: 2048,
            template: None,
            concurrency: 4,
            rate: None,
            dkim: DkimMode::None,
            backend: QueueBackend::Embedded,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            shared_limits: true,
            tls: false,
            tempfail_percent: 0.0,
            permfail_percent: 0.0,
            seed: 1,
            references: true,
            queue_only: false,
            timeout: Duration::from_secs(300),
            progress: true,
            keep_temp: false,
            rtt: None,
            chunking: true,
            max_pipeline: 64,
            batch_size: 16,
        }
    }

    /// The number of messages of the naive reference (M/10, at least 100).
    pub fn naive_messages(&self) -> u64 {
        (self.recipients / 10).max(100)
    }
}

/// Connections of both references.
pub const REFERENCE_CONNECTIONS: usize = 50;
/// Recipients per campaign request.
pub const CAMPAIGN_CHUNK: u64 = 100_000;
/// Event-based checks and latencies are skipped above this many recipients (paging a
/// million events would take longer than the run).
pub const EVENTS_LIMIT: u64 = 200_000;
