//! `volley-load`: the end-to-end load test. Runs `volley serve` (release build) as a process
//! against `volley-sink` on N loopback addresses and a DNS server on loopback, submits M
//! recipients over HTTP, waits for every outcome, then measures the ceiling and naive
//! references against the same sink. Prints a table (stdout) and one final JSON line; exits
//! non-zero when a correctness check fails or the run cannot complete.

// A benchmark or tool reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use volley_loadtest::load::{DkimMode, LoadOptions, QueueBackend, run};

/// End-to-end load test of volley against the load-test sink.
#[derive(Debug, Parser)]
#[command(name = "volley-load", version)]
struct Args {
    /// Recipients to send (M); campaigns of at most 100,000 recipients each.
    #[arg(long, default_value_t = 100_000)]
    recipients: u64,
    /// Recipient domains (K): user{i}@d{i % K}.load.test.
    #[arg(long, default_value_t = 50)]
    domains: u32,
    /// Sink addresses (N): 127.0.0.10 … 127.0.0.{10+N-1}, one common port.
    #[arg(long, default_value_t = 10)]
    sink_addresses: u8,
    /// Target message size in bytes, headers included (generated template only).
    #[arg(long, default_value_t = 2048)]
    size: usize,
    /// Use this template of the repository's templates/ instead of the generated one.
    #[arg(long)]
    template: Option<String>,
    /// volley's `[smtp] max_connections_per_site`.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// volley's `[limits] global`, in messages per second (default: unlimited); the
    /// report checks the sink's busiest second against it. The references are skipped.
    #[arg(long)]
    rate: Option<u32>,
    /// DKIM signing with the repository's test keys.
    #[arg(long, value_enum, default_value_t = Dkim::None)]
    dkim: Dkim,
    /// Queue backend.
    #[arg(long, value_enum, default_value_t = Backend::Embedded)]
    backend: Backend,
    /// Redis server for --backend redis (its keys are removed at the end).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// With --backend redis: keep connection caps and rates in this process
    /// (`[cluster] shared_limits = false`), to measure what sharing them costs.
    #[arg(long)]
    local_limits: bool,
    /// Keep volley's opportunistic STARTTLS (default: tls = "disabled").
    #[arg(long)]
    tls: bool,
    /// Percentage of RCPT attempts the sink answers 451 (decided per attempt).
    #[arg(long, default_value_t = 0.0)]
    tempfail_percent: f64,
    /// Percentage of addresses the sink answers 550 (decided per address).
    #[arg(long, default_value_t = 0.0)]
    permfail_percent: f64,
    /// Seed of the sink's failures.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Skip the ceiling and naive references.
    #[arg(long)]
    no_references: bool,
    /// Submit with send_at one hour ahead and measure volley holding the queue (RSS).
    #[arg(long)]
    queue_only: bool,
    /// Time limit of the whole run in seconds; children are killed when it passes.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Print only the final JSON line.
    #[arg(long)]
    json_only: bool,
    /// The volley executable (default target/release/volley, built if missing).
    #[arg(long)]
    volley: Option<PathBuf>,
    /// The volley-sink executable (default target/release/volley-sink, built if missing).
    #[arg(long)]
    sink: Option<PathBuf>,
    /// The volley repository (templates/, tests/data/).
    #[arg(long)]
    repo: Option<PathBuf>,
    /// Keep the temporary directory (volley.toml, volley.log, the queue).
    #[arg(long)]
    keep_temp: bool,
    /// Put a proxy that holds every byte half this round trip each way between volley
    /// (and the references) and the sink: a wide-area network on loopback. The report
    /// adds the bound (connections × transactions per round trip / RTT) and the ratio.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    rtt_ms: u64,
    /// The sink does not advertise CHUNKING, so volley sends DATA.
    #[arg(long)]
    no_chunking: bool,
    /// volley's `[smtp] max_pipeline`: the most its window may grow to over a long
    /// round trip (`--max-pipeline 16` holds it at the batch, today's default start).
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_pipeline: usize,
    /// volley's `[smtp] batch_size`: where its window starts.
    #[arg(long, value_name = "N", default_value_t = 16)]
    batch_size: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dkim {
    None,
    Ed25519,
    Rsa,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Embedded,
    Redis,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("volley-load: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let repo = args.repo.clone().unwrap_or_else(default_repo);
    let target = target_dir(&repo);
    let volley = match &args.volley {
        Some(p) => p.clone(),
        None => built(&repo, &target, "volley", &["--bin", "volley"])?,
    };
    let sink = match &args.sink {
        Some(p) => p.clone(),
        None => built(
            &repo,
            &target,
            "volley-sink",
            &["-p", "volley-loadtest", "--bin", "volley-sink"],
        )?,
    };
    let options = options(&args, volley, sink, repo);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let report = runtime
        .block_on(run(&options))
        .context("load test failed")?;
    if !args.json_only {
        println!("{}", report.table());
    }
    println!("{}", report.to_json());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn options(args: &Args, volley: PathBuf, sink: PathBuf, repo: PathBuf) -> LoadOptions {
    let mut o = LoadOptions::new(volley, sink, repo);
    o.recipients = args.recipients;
    o.domains = args.domains;
    o.sink_addresses = args.sink_addresses;
    o.size = args.size;
    o.template = args.template.clone();
    o.concurrency = args.concurrency;
    o.rate = args.rate;
    o.dkim = match args.dkim {
        Dkim::None => DkimMode::None,
        Dkim::Ed25519 => DkimMode::Ed25519,
        Dkim::Rsa => DkimMode::Rsa,
    };
    o.backend = match args.backend {
        Backend::Embedded => QueueBackend::Embedded,
        Backend::Redis => QueueBackend::Redis,
    };
    o.redis_url = args.redis_url.clone();
    o.shared_limits = !args.local_limits;
    o.tls = args.tls;
    o.tempfail_percent = args.tempfail_percent;
    o.rtt = (args.rtt_ms > 0).then(|| Duration::from_millis(args.rtt_ms));
    o.chunking = !args.no_chunking;
    o.max_pipeline = args.max_pipeline;
    o.batch_size = args.batch_size;
    o.permfail_percent = args.permfail_percent;
    o.seed = args.seed;
    // The references run unthrottled against the same sink: they would own its busiest
    // second.
    o.references = !args.no_references && args.rate.is_none();
    o.queue_only = args.queue_only;
    o.timeout = Duration::from_secs(args.timeout);
    o.progress = !args.json_only;
    o.keep_temp = args.keep_temp;
    o
}

/// The repository this binary was built from.
fn default_repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `CARGO_TARGET_DIR`, or the repository's `target/`.
fn target_dir(repo: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"))
}

/// `target/release/NAME`, built with `cargo build --release ARGS` when missing.
fn built(repo: &Path, target: &Path, name: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let path = target.join("release").join(name);
    if path.is_file() {
        return Ok(path);
    }
    eprintln!("volley-load: {} missing: building it", path.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release"])
        .args(args)
        .current_dir(repo)
        .status()
        .context("cannot run cargo")?;
    if !status.success() || !path.is_file() {
        bail!("building {name} failed ({status})");
    }
    Ok(path)
}
