//! Engine throughput: messages per second through the delivery engine to the sink
//! over 50 sites, and CPU seconds per 10k messages, with two references measured in
//! the same run against the same sink process: a naive client (one command per round
//! trip, a new connection per message) and the pipelined ceiling (`volley-blast`).
//!
//! Run with `cargo bench --bench engine`; `VOLLEY_BENCH_MESSAGES` sets the count
//! (default 20,000). Loopback only, bounded in count.

// A benchmark or tool reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley::address::Address;
use volley::engine::{Delivery, Engine, EngineConfig, SmtpConfig};
use volley::metrics::{Metrics, Stage};
use volley::outcome::Disposition;
use volley::route::{DnsConfig, RelayConfig, Router, SecurityConfig};
use volley::smtp::TlsPolicy;
use volley_loadtest::blast::{BlastConfig, blast, build_body};
use volley_loadtest::{DnsRecords, DnsServer, process_cpu_seconds};

const SITES: usize = 50;
const SINK_ADDRESSES: u8 = 10;

fn main() {
    let messages: usize = std::env::var("VOLLEY_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(messages));
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Builds (if needed) and starts the sink as its own process, so that its CPU is not
/// counted as ours; returns it with its port.
fn start_sink() -> (Child, u16) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "volley-loadtest",
            "--bin",
            "volley-sink",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building volley-sink failed");
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 10), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let mut cmd = Command::new(target_dir().join("release/volley-sink"));
        for i in 0..SINK_ADDRESSES {
            cmd.arg("--listen")
                .arg(format!("127.0.0.{}:{port}", 10 + i));
        }
        let mut child = cmd
            .args(["--no-starttls"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = (0..SINK_ADDRESSES)
            .all(|_| matches!(lines.next(), Some(Ok(l)) if l.starts_with("listening")));
        if listening {
            // Keep reading its final report in the background.
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    println!("sink report: {line}");
                }
            });
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not start the sink");
}

fn stop_sink(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    // Let the reader thread print the report.
    std::thread::sleep(Duration::from_millis(100));
}

struct Measured {
    messages: usize,
    elapsed: f64,
    cpu: f64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed
    }
    fn cpu_per_10k(&self) -> f64 {
        self.cpu / self.messages as f64 * 10_000.0
    }
}

async fn run(messages: usize) {
    let (sink, port) = start_sink();
    let mut records = DnsRecords::new();
    for i in 0..SITES {
        let last = u8::try_from(i % usize::from(SINK_ADDRESSES)).expect("few sink addresses");
        let ip = Ipv4Addr::new(127, 0, 0, 10 + last);
        records = records
            .mx(
                &format!("d{i}.bench.test"),
                10,
                &format!("mx.d{i}.bench.test"),
            )
            .a(&format!("mx.d{i}.bench.test"), ip);
    }
    let dns = DnsServer::start(records).await.unwrap();

    let engine = run_engine(&dns, port, messages).await;
    let target = SocketAddr::from(([127, 0, 0, 10], port));
    let naive_count = (messages / 4).max(1000);
    let naive = run_blast(target, naive_count as u64, true).await;
    let ceiling = run_blast(target, messages as u64, false).await;
    stop_sink(sink);

    println!("\n{:<34} {:>12} {:>16}", "", "messages/s", "CPU-s per 10k");
    for (name, m) in [
        ("volley engine (50 sites)", &engine),
        ("naive: new connection, no pipelining", &naive),
        ("ceiling: volley-blast pipelined", &ceiling),
    ] {
        println!("{name:<34} {:>12.0} {:>16.3}", m.rate(), m.cpu_per_10k());
    }
    println!("\nengine / naive   = {:.1}x", engine.rate() / naive.rate());
    println!("engine / ceiling = {:.2}", engine.rate() / ceiling.rate());
    println!(
        "{{\"engine_mps\":{:.0},\"engine_cpu_per_10k\":{:.3},\"naive_mps\":{:.0},\"ceiling_mps\":{:.0},\"ratio_naive\":{:.2},\"ratio_ceiling\":{:.3}}}",
        engine.rate(),
        engine.cpu_per_10k(),
        naive.rate(),
        ceiling.rate(),
        engine.rate() / naive.rate(),
        engine.rate() / ceiling.rate()
    );
}

async fn run_engine(dns: &DnsServer, port: u16, messages: usize) -> Measured {
    let metrics = Arc::new(Metrics::default());
    let mut smtp = SmtpConfig {
        helo_name: "volley.bench".into(),
        port,
        tls: TlsPolicy::Disabled,
        ..SmtpConfig::default()
    };
    smtp.max_connections_per_site = 2;
    let dns_config = DnsConfig {
        nameservers: vec![dns.addr()],
        ..DnsConfig::default()
    };
    let security = SecurityConfig {
        allow_loopback_mx: true,
    };
    let router = Router::new(
        &dns_config,
        &RelayConfig::default(),
        &security,
        port,
        Arc::clone(&metrics),
    )
    .unwrap();
    let config = EngineConfig {
        smtp,
        ..EngineConfig::default()
    };
    let (engine, mut reports) =
        Engine::<usize>::start(config, Arc::new(router), Arc::clone(&metrics)).unwrap();
    let body: Arc<[u8]> = Arc::from(strip_terminator(build_body(2048)));
    let from = Address::parse("bounces@volley.bench").unwrap();
    let recipients: Vec<Address> = (0..messages)
        .map(|i| Address::parse(&format!("user{i}@d{}.bench.test", i % SITES)).unwrap())
        .collect();
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    let feeder = async {
        for (i, to) in recipients.into_iter().enumerate() {
            let delivery = Delivery {
                key: i,
                from: Some(from.clone()),
                to,
                body: Arc::clone(&body),
                queued_at: Instant::now(),
                cancelled: Default::default(),
                pool: None,
            };
            if engine.submit(delivery).await.is_err() {
                break;
            }
        }
    };
    let collector = async {
        let mut delivered = 0;
        for _ in 0..messages {
            let report = reports.recv().await.expect("engine running");
            if report
                .outcome
                .is_some_and(|o| o.disposition == Disposition::Delivered)
            {
                delivered += 1;
            }
        }
        delivered
    };
    let ((), delivered) = tokio::join!(feeder, collector);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu;
    engine.shutdown().await;
    assert_eq!(delivered, messages, "every message delivered");
    let tx = metrics.percentiles(Stage::Delivery);
    println!(
        "engine: {messages} messages in {elapsed:.2}s; delivery latency ms p50 {:.1} p99 {:.1} p99.9 {:.1}",
        tx.p50, tx.p99, tx.p999
    );
    Measured {
        messages,
        elapsed,
        cpu,
    }
}

/// `build_body` returns wire format; the engine wants the message itself.
fn strip_terminator(mut wire: Vec<u8>) -> Vec<u8> {
    wire.truncate(wire.len() - 3);
    wire
}

async fn run_blast(target: SocketAddr, messages: u64, naive: bool) -> Measured {
    let config = BlastConfig {
        target,
        messages,
        connections: 50,
        size: 2048,
        pipelining: !naive,
        reconnect: naive,
    };
    let report = blast(&config).await.expect("blast run");
    Measured {
        messages: usize::try_from(report.messages).expect("a bounded count"),
        elapsed: report.elapsed_s,
        cpu: report.cpu_seconds,
    }
}
