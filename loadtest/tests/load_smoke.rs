//! The CI smoke test of the end-to-end load test: about 5,000 recipients over 20 domains
//! through `volley serve` (debug build) with its embedded queue, against the sink with 5%
//! tempfail and 5% permfail. Asserts correctness only — every recipient accounted for,
//! outcomes as the sink decided, no duplicates — never speed.

// The smoke run prints its report.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use volley_loadtest::load::{LoadOptions, run};

/// The workspace root (the `volley` package).
fn repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("loadtest/ has a parent")
        .to_path_buf()
}

/// Builds `volley` in debug (normally already up to date after `cargo test --workspace`)
/// and returns its path, honouring `CARGO_TARGET_DIR`.
fn volley_debug_binary() -> PathBuf {
    let repo = repo();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "volley", "--bin", "volley"])
        .current_dir(&repo)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building volley failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target"));
    let path = target
        .join("debug")
        .join(format!("volley{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} missing", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_recipients_with_faults_are_all_accounted_for() {
    let volley = tokio::task::spawn_blocking(volley_debug_binary)
        .await
        .expect("build task");
    let mut options = LoadOptions::new(volley, env!("CARGO_BIN_EXE_volley-sink").into(), repo());
    options.recipients = 5_000;
    options.domains = 20;
    options.sink_addresses = 4;
    options.tempfail_percent = 5.0;
    options.permfail_percent = 5.0;
    options.references = false;
    options.timeout = Duration::from_secs(100);
    let started = Instant::now();
    let report = run(&options).await.expect("the load test runs to the end");
    println!("{}", report.table());
    println!("took {:.1} s", started.elapsed().as_secs_f64());

    for check in &report.checks {
        assert!(
            check.ok,
            "{}: {}\n{}",
            check.name,
            check.detail,
            report.table()
        );
    }
    let c = report.counts;
    assert_eq!(c.total, 5_000);
    assert_eq!(c.delivered + c.bounced, 5_000);
    // 5% of addresses refused for good: about 250; some delivered ones were retried.
    assert!((150..350).contains(&c.bounced), "{c:?}");
    assert_eq!(report.sink.messages, c.delivered);
    assert_eq!(report.sink.distinct_recipients, c.delivered);
    assert_eq!(report.sink.duplicate_deliveries, 0);
    let events = report.events.as_ref().expect("the event log was read");
    assert!(events.deferred > 0, "the 5% tempfail caused retries");
    assert!(report.sink.recipients_rejected >= c.bounced + events.deferred);
}
