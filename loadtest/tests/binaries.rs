//! The `volley-sink` and `volley-blast` binaries, run as processes against 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};

use volley_loadtest::blast::{BlastConfig, blast};
use volley_loadtest::{Sink, SinkConfig};

/// Starts `volley-sink` on a free port; returns the child, its address and its stdout.
fn spawn_sink(extra: &[&str]) -> (Child, SocketAddr, BufReader<ChildStdout>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_volley-sink"))
        .args(["--listen", "127.0.0.1:0", "--duration", "60"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn volley-sink");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read listening line");
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("address");
    (child, addr, stdout)
}

/// Reads the final JSON line and waits for a successful exit.
fn final_report(mut child: Child, mut stdout: BufReader<ChildStdout>) -> serde_json::Value {
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read report");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_binary_stops_after_max_messages() {
    let (child, addr, stdout) = spawn_sink(&["--max-messages", "30", "--track-recipients"]);
    let report = blast(&BlastConfig {
        target: addr,
        messages: 30,
        connections: 3,
        size: 1000,
        pipelining: true,
        reconnect: false,
    })
    .await
    .expect("blast");
    assert_eq!(report.messages, 30);
    let json = tokio::task::spawn_blocking(move || final_report(child, stdout))
        .await
        .unwrap();
    assert_eq!(json["messages"], 30);
    assert_eq!(json["distinct_recipients"], 30);
    assert_eq!(json["duplicate_deliveries"], 0);
    assert!(json["cpu_seconds"].is_number());
    assert!(json["cpu_seconds_per_10k_messages"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_binary_stops_on_sigterm() {
    let (child, addr, stdout) = spawn_sink(&[]);
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut greeting = [0u8; 3];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut greeting)
        .await
        .unwrap();
    assert_eq!(&greeting, b"220");
    // Through the shell's built-in `kill`, which exists wherever `sh` does.
    let status = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .expect("run kill");
    assert!(status.success());
    let json = tokio::task::spawn_blocking(move || final_report(child, stdout))
        .await
        .unwrap();
    assert_eq!(json["connections"], 1);
    assert_eq!(json["messages"], 0);
    assert!(json["cpu_seconds_per_10k_messages"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blast_binary_reports_json() {
    let sink = Sink::start(SinkConfig::default()).await.expect("sink");
    let target = sink.addrs()[0].to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_volley-blast"))
            .args([
                "--target",
                &target,
                "--messages",
                "100",
                "--connections",
                "4",
            ])
            .args(["--size", "700"])
            .output()
            .expect("run volley-blast")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(json["messages"], 100);
    assert!(json["messages_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(sink.stats().messages, 100);
    assert_eq!(sink.stats().connections, 4);
    sink.shutdown().await;
}
