//! The dashboard in a real browser: Debian's headless Chromium driven by Playwright
//! (`tests/browser/dashboard.spec.mjs`) against a volley with an API key and the load-test
//! sink. The script enters the key, sees the counters move and the charts drawn, opens a
//! job's page, checks the console stayed clean, and saves `dashboard.png` (with
//! `dashboard-job.png` and `dashboard-narrow.png`) in the target directory.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm ci --prefix tests/browser`; without them it
//! prints a notice and passes, unless `CI` is set, where it fails.

// Outside CI a missing browser skips the test, saying so on stderr; the browser
// script's own output is passed through.
#![allow(clippy::print_stderr)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{Running, test_config};
use serde_json::{Value, json};
use volley_loadtest::{Sink, SinkConfig};

const KEY: &str = "browser-key-0123456789abcdef";
const CHROMIUM: &str = "/usr/bin/chromium";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory, wherever `CARGO_TARGET_DIR` put it.
fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// What is missing to run the browser, if anything.
fn missing() -> Option<String> {
    if !Path::new(CHROMIUM).exists() {
        return Some(format!("{CHROMIUM} is missing (apt-get install chromium)"));
    }
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("node is not on PATH".to_string());
    }
    let playwright = root().join("tests/browser/node_modules/playwright-core/package.json");
    if !playwright.exists() {
        return Some("playwright-core is not installed (npm ci --prefix tests/browser)".into());
    }
    None
}

fn campaign(prefix: &str, n: usize) -> Value {
    let recipients: Vec<Value> = (0..n)
        .map(|i| match i {
            3 => json!({"to": "permfail@example.org", "vars": {"name": "P"}}),
            7 => json!({"to": format!("tempfail-1-{prefix}@example.org"), "vars": {"name": "T"}}),
            _ => {
                json!({"to": format!("{prefix}{i}@example.org"), "vars": {"name": format!("N{i}")}})
            }
        })
        .collect();
    json!({"template": "welcome", "from": "news@example.com", "recipients": recipients})
}

/// Runs the script to its end, passing each `ready` line it prints to `ready`.
fn run_script(url: String, shot: PathBuf, ready: tokio::sync::mpsc::Sender<String>) -> ExitStatus {
    let mut child = Command::new("node")
        .arg(root().join("tests/browser/dashboard.spec.mjs"))
        .arg(url)
        .arg(KEY)
        .arg(&shot)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        eprintln!("node: {line}");
        if line.starts_with("ready") {
            let _ = ready.blocking_send(line);
        }
    }
    child.wait().expect("node runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_headless_chromium() {
    if let Some(why) = missing() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the browser test cannot run: {why}"
        );
        eprintln!("NOTICE: skipping the dashboard browser test: {why}");
        return;
    }
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "max_connections_per_site = 7\n[server]\napi_keys = [{KEY:?}]\n[relay]\nhost = \"{}\"\ntls = \"none\"\n[retry]\nschedule = [\"1s\"]\nmax_age = \"1m\"\n",
        sink.addrs()[0]
    );
    let volley = Running::start(test_config(dir.path(), &toml)).await;
    let auth = format!("Bearer {KEY}");
    let h = [("authorization", auth.as_str())];
    let first = volley.post("/v1/campaigns", &campaign("a", 80), &h).await;
    assert_eq!(first.status, 202, "{}", first.text());

    let shot = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let url = format!("http://{}", volley.addr);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(1);
    let script = {
        let shot = shot.clone();
        tokio::task::spawn_blocking(move || run_script(url, shot, ready_tx))
    };
    // Once the page shows its counters, more mail makes them move.
    if let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(120), ready_rx.recv()).await {
        eprintln!("the page is live ({line}): submitting a second campaign");
        let second = volley.post("/v1/campaigns", &campaign("b", 150), &h).await;
        assert_eq!(second.status, 202, "{}", second.text());
    }
    let status = tokio::time::timeout(Duration::from_secs(180), script)
        .await
        .expect("the browser test ends within 3 minutes")
        .expect("the script's thread");
    volley.stop().await;
    assert!(status.success(), "the browser test failed: {status}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "a screenshot at {}", shot.display());
    eprintln!("screenshot: {}", shot.display());
}
