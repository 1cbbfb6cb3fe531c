//! The two child processes of a run: the `volley-sink` binary on N loopback addresses, and
//! `volley serve` with the generated configuration.

use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::http::Client;
use super::process::{Guarded, spawn, tail};
use super::setup::{free_port, sink_ip};
use super::{LoadError, LoadOptions};

/// Port collisions tolerated before giving up.
const START_ATTEMPTS: usize = 10;

/// The running sink.
#[derive(Debug)]
pub(crate) struct SinkProcess {
    guard: Guarded,
    addrs: Vec<SocketAddr>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl SinkProcess {
    /// Starts the sink on `127.0.0.10` … `127.0.0.{10+N-1}`, one free port shared by all,
    /// retrying on a collision.
    pub(super) async fn start(options: &LoadOptions, log: &Path) -> Result<Self, LoadError> {
        let n = usize::from(options.sink_addresses);
        for _ in 0..START_ATTEMPTS {
            let port = free_port(sink_ip(0, options.sink_addresses))?;
            let addrs: Vec<SocketAddr> = (0..n as u64)
                .map(|i| SocketAddr::from((sink_ip(i, options.sink_addresses), port)))
                .collect();
            let mut command = Command::new(&options.sink_bin);
            for addr in &addrs {
                command.arg("--listen").arg(addr.to_string());
            }
            command
                .arg("--track-recipients")
                .arg("--tempfail-percent")
                .arg(options.tempfail_percent.to_string())
                .arg("--permfail-percent")
                .arg(options.permfail_percent.to_string())
                .arg("--seed")
                .arg(options.seed.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log_file(log)?);
            if !options.chunking {
                command.arg("--no-chunking");
            }
            let mut guard = Guarded::new(spawn(&mut command, "the sink")?, "volley-sink");
            let mut lines = read_lines(&mut guard);
            if listening(&mut lines, n).await {
                return Ok(Self {
                    guard,
                    addrs,
                    lines,
                });
            }
            // Most likely another process took the port between the probe and the bind.
            drop(guard);
        }
        Err(LoadError::Process(format!(
            "the sink did not start after {START_ATTEMPTS} attempts: {}",
            tail(log, 5)
        )))
    }

    /// Its PID.
    pub(super) fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Its addresses (the references use the first).
    pub(super) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// SIGTERM, then its final JSON report.
    pub(super) async fn stop(mut self) -> Result<serde_json::Value, LoadError> {
        self.guard.terminate(Duration::from_secs(30)).await;
        let mut report = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            if line.starts_with('{') {
                report = Some(line);
            }
        }
        let line = report.ok_or_else(|| LoadError::Process("the sink printed no report".into()))?;
        serde_json::from_str(&line)
            .map_err(|e| LoadError::Process(format!("the sink's report is not JSON ({e}): {line}")))
    }
}

/// Appends stderr of a child to `log`.
fn log_file(log: &Path) -> Result<std::fs::File, LoadError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(LoadError::io(format!("cannot open {}", log.display())))
}

/// Forwards the child's stdout lines to a channel from a thread (std pipes block).
fn read_lines(guard: &mut Guarded) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(stdout) = guard.child_mut().and_then(|c| c.stdout.take()) {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits (10 s at most) for `n` `listening` lines.
async fn listening(lines: &mut mpsc::UnboundedReceiver<String>, n: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) if line.starts_with("listening ") => seen += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
    true
}

/// The running `volley serve`.
#[derive(Debug)]
pub(crate) struct VolleyProcess {
    guard: Guarded,
    /// Its API.
    pub client: Client,
    /// Its stderr.
    pub log: PathBuf,
}

impl VolleyProcess {
    /// Writes the configuration `toml(listen)` to `config` and runs `volley serve --config`
    /// until `/healthz` answers, retrying on another port if it cannot bind.
    pub(super) async fn start(
        options: &LoadOptions,
        dir: &Path,
        toml: impl Fn(SocketAddr) -> String,
    ) -> Result<Self, LoadError> {
        let config = dir.join("volley.toml");
        let log = dir.join("volley.log");
        for _ in 0..START_ATTEMPTS {
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?));
            std::fs::write(&config, toml(listen))
                .map_err(LoadError::io(format!("cannot write {}", config.display())))?;
            let mut command = Command::new(&options.volley_bin);
            command
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .current_dir(dir)
                // Quiet unless the caller asks for more.
                .env(
                    "VOLLEY_LOG",
                    std::env::var("VOLLEY_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(Stdio::null())
                .stdout(log_file(&log)?)
                .stderr(log_file(&log)?);
            let mut guard = Guarded::new(spawn(&mut command, "volley")?, "volley");
            let client = Client::new(listen);
            if healthy(&mut guard, client).await? {
                return Ok(Self { guard, client, log });
            }
            drop(guard);
            if !tail(&log, 20).contains("in use") {
                break;
            }
        }
        Err(LoadError::Process(format!(
            "volley serve did not become healthy:\n{}",
            tail(&log, 20)
        )))
    }

    /// Its PID.
    pub(super) fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// SIGTERM (in-flight transactions finish, leases are released), then waits.
    pub(super) async fn stop(self) -> Option<std::process::ExitStatus> {
        self.guard.terminate(Duration::from_secs(30)).await
    }
}

/// Polls `/healthz` every 50 ms for up to 60 s; `false` if volley exited first.
async fn healthy(guard: &mut Guarded, client: Client) -> Result<bool, LoadError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if guard.exited().is_some() {
            return Ok(false);
        }
        if let Ok(r) = client.get("/healthz", Duration::from_secs(2)).await
            && r.status == 200
        {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(LoadError::Process(
        "volley's /healthz did not answer within 60 s".into(),
    ))
}
