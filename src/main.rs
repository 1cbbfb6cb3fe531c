//! The `volley` command: `serve`, `send` and `check`.

// The command line's output is its user interface: summaries on stdout, errors on
// stderr. The library never prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};
use volley::app::config::Config;
use volley::app::send::{SendOptions, Summary};
use volley::app::{App, shutdown_signal};

/// mimalloc returns freed memory to the system promptly; with glibc's allocator the
/// memory of parsed 100k-recipient requests stayed resident after they were queued.
/// Transparent huge pages are off for the process (see [`no_huge_pages`]).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "volley",
    version,
    about = "High-throughput bulk email sending engine"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum SuppressAction {
    /// Adds every entry of a CSV file (checked whole first: a bad line stores nothing).
    Import {
        /// CSV with a header row: `address` required; `scope` (`all` or `list:NAME`),
        /// `reason`, `at` (RFC 3339) optional.
        file: PathBuf,
    },
    /// Writes every entry to a CSV file.
    Export {
        /// The file to write.
        file: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// HTTP API and delivery workers (defaults: 127.0.0.1:8025, queue in ./volley-data,
    /// templates from ./templates).
    Serve {
        /// Configuration file (default: ./volley.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen on this address instead of `[server] listen` (also VOLLEY_LISTEN).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Send everything through this smarthost (host:port), overriding `[relay] host`.
        #[arg(long, value_name = "HOST:PORT")]
        relay: Option<String>,
        /// Also trust the CA certificates of this PEM file (a private relay's), overriding
        /// `[smtp] ca_file`.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Send a campaign from the command line and wait for the outcome.
    Send {
        /// Template name (a directory under the templates path).
        #[arg(long)]
        template: String,
        /// CSV with a header row (an `email` column) or JSON Lines (`.jsonl`).
        #[arg(long)]
        recipients: PathBuf,
        /// Sender, e.g. "News <news@example.com>".
        #[arg(long)]
        from: String,
        /// Subject instead of the template's.
        #[arg(long)]
        subject: Option<String>,
        /// The list the campaign belongs to (what its unsubscribe links leave).
        /// Default: "default".
        #[arg(long)]
        list: Option<String>,
        /// The egress pool it leaves from (`[egress.pools]`). Default: `[egress] default_pool`.
        #[arg(long)]
        pool: Option<String>,
        /// A variable shared by every recipient (repeatable).
        #[arg(long = "var", value_name = "KEY=VALUE")]
        vars: Vec<String>,
        /// Configuration file (default: ./volley.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Send everything through this smarthost (host:port), overriding `[relay] host`.
        #[arg(long, value_name = "HOST:PORT")]
        relay: Option<String>,
        /// Also trust the CA certificates of this PEM file (a private relay's), overriding
        /// `[smtp] ca_file`.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Retry deferred recipients for at most this long (e.g. 60s, 5m).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        max_wait: Duration,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Write one JSON line per recipient to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// The suppression list as CSV (address,scope,reason,at).
    Suppress {
        #[command(subcommand)]
        action: SuppressAction,
        /// Configuration file (default: ./volley.toml when it exists).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and compile every template.
    Check {
        /// Configuration file (default: ./volley.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Also print what volley would do with mail for this domain: its MX hosts and
        /// addresses, site, egress pool and source addresses, limits and TLS policy.
        #[arg(long)]
        domain: Option<String>,
        /// With `--domain`: for mail of this egress pool (default: `[egress] default_pool`).
        #[arg(long, requires = "domain")]
        pool: Option<String>,
    },
    /// Read a password on stdin and print its argon2id hash for `[submission] users`.
    HashPassword,
}

fn main() -> ExitCode {
    no_huge_pages();
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Send { .. }
            | Command::Check { .. }
            | Command::Suppress { .. }
            | Command::HashPassword
    );
    init_logs(cli.log_format, quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("volley: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("volley: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process, before the runtime's threads start
/// (the flag is the process's). mimalloc asks for huge pages on its arena, and each page
/// it touched again after giving memory back cost the kernel zeroing 2 MiB: 12 % of
/// volley's CPU when taking SMTP submissions (`perf`, `clear_page_erms` under
/// `mi_page_free_list_extend`). With small pages peak memory is 20–25 MB lower for
/// 100,000 recipients, and the campaign path pays 3–5 % more CPU (loadtest/RESULTS.md).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("volley: cannot turn transparent huge pages off: {e}");
    }
}

/// The error and its causes in one line, each said once: our errors often repeat their
/// cause in their own message already.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !out.contains(&cause) {
            out.push_str(": ");
            out.push_str(&cause);
        }
    }
    out
}

fn init_logs(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VOLLEY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a person at a terminal, never into a log file. A log pipe that
    // closes must not stop delivery: by default tracing-subscriber reports its failed
    // write with `eprintln!`, which panics on that same closed stderr.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(
    path: Option<&PathBuf>,
    relay: Option<String>,
    ca_file: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let mut config = Config::load(path.map(PathBuf::as_path))?;
    if let Some(relay) = relay {
        config.relay.host = relay;
    }
    if let Some(ca_file) = ca_file {
        config.smtp.ca_file = Some(ca_file);
    }
    Ok(config)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            config,
            listen,
            relay,
            ca_file,
        } => {
            let stop = shutdown_signal();
            let mut config = load(config.as_ref(), relay, ca_file)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
                config.validate()?;
            }
            let app = App::open(config).await?;
            app.serve(stop).await?;
            Ok(())
        }
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("no password on stdin (give it as one line)");
            }
            let hash = volley::inbound::hash_password(password);
            println!("{hash}");
            Ok(())
        }
        Command::Check {
            config,
            domain,
            pool,
        } => {
            let config = load(config.as_ref(), None, None)?;
            let templates = volley::template::Templates::load(&config.templates.path)?;
            let file = config.file.as_ref().map_or_else(
                || "built-in defaults".to_owned(),
                |f| f.display().to_string(),
            );
            volley::app::check_delivery(&config)?;
            volley::message::load_signers(&config.dkim)?;
            config.unsubscribe.validate()?;
            volley::app::submission::check(&config)?;
            volley::app::bounces::check(&config)?;
            if config.webhooks.enabled() {
                volley::webhooks::WebhookClient::new(&config.webhooks)?;
            }
            println!(
                "configuration ok ({file}); templates: {}",
                templates.names().join(", ")
            );
            if let Some(domain) = domain {
                let report = volley::app::check::domain(&config, &domain, pool.as_deref()).await?;
                print!("{report}");
            }
            Ok(())
        }
        Command::Suppress { action, config } => {
            let config = load(config.as_ref(), None, None)?;
            let queue = volley::queue::AnyQueue::open(&config.queue).await?;
            match action {
                SuppressAction::Import { file } => {
                    let n = volley::app::suppress::import(&queue, &file).await?;
                    println!("imported {n} suppression entries from {}", file.display());
                }
                SuppressAction::Export { file } => {
                    let n = volley::app::suppress::export(&queue, &file).await?;
                    println!("exported {n} suppression entries to {}", file.display());
                }
            }
            Ok(())
        }
        Command::Send {
            template,
            recipients,
            from,
            subject,
            list: campaign_list,
            pool,
            vars,
            config,
            relay,
            ca_file,
            max_wait,
            json,
            report,
        } => {
            let config = load(config.as_ref(), relay, ca_file)?;
            let list = volley::submit::recipients::read(&recipients)?;
            let total = list.recipients.len();
            let vars = parse_vars(&vars)?;
            let app = App::open(config).await?;
            let options = SendOptions {
                template,
                recipients: list,
                from,
                subject,
                vars,
                list: campaign_list,
                pool,
                max_wait,
                report,
            };
            let bar = progress_bar(u64::try_from(total).unwrap_or(u64::MAX));
            let started = std::time::Instant::now();
            let summary = volley::app::send::run(&app, options, |counts| {
                if let Some(bar) = &bar {
                    let done = counts.total - counts.queued - counts.deferred;
                    let rate = f64::from(done) / started.elapsed().as_secs_f64().max(1e-3);
                    bar.set_position(u64::from(done));
                    bar.set_message(format!(
                        "{rate:.0}/s  delivered {} bounced {} deferred {}",
                        counts.delivered, counts.bounced, counts.deferred
                    ));
                }
            })
            .await?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            print_summary(&summary, json)
        }
    }
}

fn parse_vars(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut vars = Map::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--var {pair:?}: expected KEY=VALUE")
        };
        vars.insert(key.trim().to_owned(), Value::String(value.to_owned()));
    }
    Ok(vars)
}

/// A progress bar on a terminal; none when stdout is redirected.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    Some(bar)
}

fn print_summary(s: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    println!(
        "job {}: {} recipients in {:.2}s ({:.0} messages/s)",
        s.job, s.recipients, s.elapsed_s, s.messages_per_second
    );
    println!(
        "delivered {}  bounced {}  deferred {}  expired {}  suppressed {}",
        s.delivered, s.bounced, s.deferred, s.expired, s.suppressed
    );
    let l = &s.latency_ms;
    println!(
        "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}",
        l.p50, l.p90, l.p99, l.p999
    );
    if s.deferred > 0 {
        println!(
            "{} deferred recipients stay queued; `volley serve` retries them",
            s.deferred
        );
    }
    Ok(())
}
