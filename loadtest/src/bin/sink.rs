//! `volley-sink`: runs the load-test SMTP sink as a process.
//!
//! Prints `listening <addr>` for every bound address, then serves until SIGINT/SIGTERM,
//! `--duration` or `--max-messages`, and finally prints one JSON line with the counters plus
//! `cpu_seconds` and `cpu_seconds_per_10k_messages`.

// A benchmark or tool reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use volley_loadtest::{Sink, SinkConfig, process_cpu_seconds};

/// A fast SMTP sink for load tests.
#[derive(Debug, Parser)]
#[command(name = "volley-sink", version)]
struct Args {
    /// Address to listen on (repeatable; port 0 picks a free port). Default 127.0.0.1:2525.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Host name used in the greeting and the TLS certificate.
    #[arg(long, default_value = "sink.test")]
    hostname: String,
    /// TLS from the first byte (port-465 style).
    #[arg(long)]
    implicit_tls: bool,
    /// Do not advertise STARTTLS.
    #[arg(long)]
    no_starttls: bool,
    /// Require AUTH with these credentials (USER:PASS).
    #[arg(long, value_name = "USER:PASS")]
    auth: Option<String>,
    /// Percentage of RCPT attempts answered 451.
    #[arg(long, default_value_t = 0.0)]
    tempfail_percent: f64,
    /// Percentage of addresses answered 550 (stable per address).
    #[arg(long, default_value_t = 0.0)]
    permfail_percent: f64,
    /// Seed for the random and hashed failures.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Delay before every reply flush, in milliseconds.
    #[arg(long, default_value_t = 0)]
    reply_delay_ms: u64,
    /// Write every accepted message to DIR/N.eml and its envelope to DIR/N.env (N = sequence number).
    #[arg(long = "spool", value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Count deliveries per recipient (reports duplicates and the number of distinct
    /// recipients on exit).
    #[arg(long)]
    track_recipients: bool,
    /// Do not advertise PIPELINING.
    #[arg(long)]
    no_pipelining: bool,
    /// Do not advertise CHUNKING: clients send DATA (one round trip per message at best).
    #[arg(long)]
    no_chunking: bool,
    /// Accept bare CR/LF in content and do not count pipelining violations.
    #[arg(long)]
    no_strict: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Stop once this many messages have been accepted.
    #[arg(long, value_name = "N")]
    max_messages: Option<u64>,
    /// Write the certificate of the CA that signed the sink's TLS certificate to this
    /// file (before `listening` is printed), for clients that verify: `volley
    /// --ca-file FILE`.
    #[arg(long, value_name = "FILE")]
    ca_out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = SinkConfig {
        listen: if args.listen.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], 2525))]
        } else {
            args.listen.clone()
        },
        hostname: args.hostname.clone(),
        implicit_tls: args.implicit_tls,
        starttls: !args.no_starttls && !args.implicit_tls,
        tempfail_percent: args.tempfail_percent,
        permfail_percent: args.permfail_percent,
        seed: args.seed,
        reply_delay: Duration::from_millis(args.reply_delay_ms),
        spool_dir: args.spool.clone(),
        track_recipients: args.track_recipients,
        pipelining: !args.no_pipelining,
        chunking: !args.no_chunking,
        strict: !args.no_strict,
        ..SinkConfig::default()
    };
    if let Some(auth) = &args.auth {
        let (user, pass) = auth.split_once(':').context("--auth must be USER:PASS")?;
        config.auth = Some((user.to_owned(), pass.to_owned()));
    }
    let duration = match args.duration {
        Some(secs) => Some(
            Duration::try_from_secs_f64(secs).context("--duration must be a positive number")?,
        ),
        None => None,
    };

    // Listen for SIGTERM before announcing the addresses: a caller that reads
    // `listening` and stops us at once must get the report, not a default kill.
    let sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    let cpu_start = process_cpu_seconds();
    let sink = Sink::start(config).await.context("cannot start the sink")?;
    if let Some(path) = &args.ca_out {
        std::fs::write(path, sink.ca_pem())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    {
        let mut out = std::io::stdout().lock();
        for addr in sink.addrs() {
            writeln!(out, "listening {addr}")?;
        }
        out.flush()?;
    }

    wait_for_stop(&sink, sigterm, duration, args.max_messages).await?;

    let stats = sink.stats();
    let cpu_seconds = process_cpu_seconds() - cpu_start;
    let duplicates = args.track_recipients.then(|| {
        let counts = sink.delivery_counts();
        let duplicates: u64 = counts.values().map(|&n| n.saturating_sub(1)).sum();
        (counts.len(), duplicates)
    });
    sink.shutdown().await;

    let mut json = stats.to_json();
    json.pop(); // the closing brace; more fields follow
    json.push_str(&format!(",\"cpu_seconds\":{}", number(cpu_seconds)));
    let per_10k = if stats.messages > 0 {
        number(cpu_seconds / stats.messages as f64 * 10_000.0)
    } else {
        "null".to_owned()
    };
    json.push_str(&format!(",\"cpu_seconds_per_10k_messages\":{per_10k}"));
    if let Some((distinct, duplicates)) = duplicates {
        json.push_str(&format!(
            ",\"distinct_recipients\":{distinct},\"duplicate_deliveries\":{duplicates}"
        ));
    }
    json.push('}');
    println!("{json}");
    Ok(())
}

/// Waits for SIGINT, SIGTERM, the duration or the message count, whichever comes first.
async fn wait_for_stop(
    sink: &Sink,
    mut sigterm: tokio::signal::unix::Signal,
    duration: Option<Duration>,
    max_messages: Option<u64>,
) -> anyhow::Result<()> {
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let enough = async {
        let Some(max) = max_messages else {
            return std::future::pending().await;
        };
        // Polling a counter every 10 ms costs nothing next to the traffic being measured.
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while sink.stats().messages < max {
            tick.tick().await;
        }
        // The clients' QUITs are on their way: let open sessions end by themselves (for
        // at most a second) rather than cutting them off with a 421.
        let grace = tokio::time::Instant::now() + Duration::from_secs(1);
        while sink.stats().open_connections > 0 && tokio::time::Instant::now() < grace {
            tick.tick().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
        () = deadline => {}
        () = enough => {}
    }
    Ok(())
}

/// A float as a JSON number.
fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.6}")
    } else {
        "null".to_owned()
    }
}
