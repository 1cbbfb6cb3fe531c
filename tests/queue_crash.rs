//! Crash tests: a worker process under load is killed with SIGKILL, again and again, and no
//! accepted delivery may be lost. The worker is this test binary itself, re-run with
//! `VOLLEY_QUEUE_CRASH_WORKER` set, so no extra binary is needed.
//!
//! The worker appends (and fsyncs) each accepted job to `accepted.log` after `submit`
//! returns, and each leased delivery to `delivered.log` before it completes it. At the end
//! every accepted delivery must be delivered or still queued; deliveries logged twice (killed
//! between the log and `complete`) are counted and printed: at-least-once, never lost.

// Reports figures (and skips outside CI) on stderr.
#![allow(clippy::print_stderr)]

mod queue_common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime};

use queue_common::*;
use volley::queue::{
    Completion, DeliveryId, JobId, JobKind, NewJob, Queue, RecipientState, Resolution,
    SubmitOutcome,
};

const WORKER_ENV: &str = "VOLLEY_QUEUE_CRASH_WORKER";
const DIR_ENV: &str = "VOLLEY_QUEUE_CRASH_DIR";
const PREFIX_ENV: &str = "VOLLEY_QUEUE_CRASH_PREFIX";
const JOB_SIZE: u32 = 40;

/// Entry point of the worker process the crash tests spawn (and kill); not a test of
/// its own, so it is ignored unless a crash test runs it with `--ignored`.
#[test]
#[ignore = "worker process of the crash tests"]
fn crash_worker_entry() {
    let backend = std::env::var(WORKER_ENV).expect("started by a crash test");
    let dir = PathBuf::from(std::env::var(DIR_ENV).expect("dir"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        match backend.as_str() {
            "embedded" => {
                // The killed predecessor's lock goes with its process; allow a moment anyway.
                let deadline = Instant::now() + Duration::from_secs(5);
                let q = loop {
                    match volley::queue::EmbeddedQueue::open(&dir, Duration::from_secs(60)).await {
                        Ok(q) => break q,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("worker: open: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("worker: open: {e}"),
                    }
                };
                work(q, &dir).await;
            }
            _ => {
                let prefix = std::env::var(PREFIX_ENV).expect("prefix");
                work(open_redis(&prefix, Duration::from_secs(1)).await, &dir).await;
            }
        }
    });
}

fn append(path: &Path, lines: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    f.write_all(lines.as_bytes()).expect("write log");
    f.sync_data().expect("fsync log");
}

/// Submits jobs and delivers, forever (until killed).
async fn work<Q: Queue>(q: Q, dir: &Path) {
    let me = std::process::id();
    loop {
        let now = SystemTime::now();
        let job = NewJob {
            id: JobId::new(now),
            kind: JobKind::Campaign,
            payload: b"{}".to_vec(),
            send_at: None,
            idempotency: None,
        };
        if let SubmitOutcome::Created { id, recipients } = q
            .submit(job, recipients(JOB_SIZE), now)
            .await
            .expect("submit")
        {
            append(&dir.join("accepted.log"), &format!("{id} {recipients}\n"));
        }
        for _ in 0..3 {
            let got = q.lease(IN_FLIGHT, SystemTime::now()).await.expect("lease");
            if got.is_empty() {
                break;
            }
            let log: String = got.iter().map(|l| format!("{} {me}\n", l.id)).collect();
            append(&dir.join("delivered.log"), &log);
            let batch = got
                .iter()
                .map(|l| Completion {
                    id: l.id,
                    token: l.token,
                    resolution: Resolution::Delivered {
                        reply: "250 ok".into(),
                    },
                    via: None,
                })
                .collect();
            q.complete(batch, SystemTime::now())
                .await
                .expect("complete");
        }
    }
}

/// Deliveries a worker leases, "sends" (logs) and completes at a time: all it can have in
/// flight when it is killed.
const IN_FLIGHT: usize = 32;

fn spawn_worker(backend: &str, dir: &Path, prefix: &str) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--exact",
            "crash_worker_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(WORKER_ENV, backend)
        .env(DIR_ENV, dir)
        .env(PREFIX_ENV, prefix)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn worker")
}

fn kill(mut child: Child) {
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no clean close.
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Drains what is left, then checks that every accepted delivery was delivered and that
/// every delivery marked delivered had been logged. Returns (accepted, duplicates).
async fn verify<Q: Queue>(q: &Q, dir: &Path) -> (usize, usize) {
    loop {
        let got = q.lease(256, SystemTime::now()).await.expect("lease");
        if got.is_empty() {
            break;
        }
        let log: String = got.iter().map(|l| format!("{} verifier\n", l.id)).collect();
        append(&dir.join("delivered.log"), &log);
        let batch = got
            .iter()
            .map(|l| Completion {
                id: l.id,
                token: l.token,
                resolution: Resolution::Delivered {
                    reply: "250 ok".into(),
                },
                via: None,
            })
            .collect();
        q.complete(batch, SystemTime::now())
            .await
            .expect("complete");
    }
    let mut logged: HashMap<DeliveryId, usize> = HashMap::new();
    for line in read_log(&dir.join("delivered.log")).lines() {
        let id: DeliveryId = line
            .split(' ')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("log");
        *logged.entry(id).or_default() += 1;
    }
    let mut accepted = 0;
    let mut jobs = HashSet::new();
    for line in read_log(&dir.join("accepted.log")).lines() {
        let (id, n) = line.split_once(' ').expect("accepted line");
        let id: JobId = id.parse().expect("job id");
        let n: u32 = n.parse().expect("count");
        jobs.insert(id);
        let status = q
            .job(&id)
            .await
            .expect("job")
            .unwrap_or_else(|| panic!("job {id} lost"));
        assert_eq!(status.counts.total, n);
        let rs = q
            .recipients(&id, None, n as usize)
            .await
            .expect("recipients");
        assert_eq!(rs.len(), n as usize);
        for r in rs {
            let did = DeliveryId {
                job: id,
                index: r.index,
            };
            assert_eq!(r.state, RecipientState::Delivered, "{did} lost: {r:?}");
            assert!(
                logged.contains_key(&did),
                "{did} delivered but never logged"
            );
            accepted += 1;
        }
    }
    let duplicates = logged.values().filter(|&&n| n > 1).map(|n| n - 1).sum();
    (accepted, duplicates)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let kills = 5;
    for round in 0..kills {
        let child = spawn_worker("embedded", dir.path(), "");
        tokio::time::sleep(Duration::from_millis(400 + 150 * round)).await;
        kill(child);
    }
    let q = open_embedded(dir.path(), Duration::from_secs(60)).await;
    let (accepted, duplicates) = verify(&q, dir.path()).await;
    eprintln!(
        "embedded crash test: {kills} SIGKILLs, {accepted} accepted deliveries, 0 lost, \
         {duplicates} delivered twice, {:?}",
        started.elapsed()
    );
    assert!(accepted > 0, "the worker never got a job accepted");
    // A worker holds one batch of leases "in flight" (logged as sent, not yet
    // completed): only those can be sent again after its death.
    assert!(
        duplicates <= usize::try_from(kills).unwrap() * IN_FLIGHT,
        "{duplicates} duplicates after {kills} kills of at most {IN_FLIGHT} in flight each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_workers_one_killed() {
    if !redis_available().await {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = unique_prefix();
    let started = Instant::now();
    let steady = spawn_worker("redis", dir.path(), &prefix);
    let kills = 4;
    for round in 0..kills {
        let victim = spawn_worker("redis", dir.path(), &prefix);
        tokio::time::sleep(Duration::from_millis(300 + 150 * round)).await;
        kill(victim);
    }
    kill(steady);
    let q = open_redis(&prefix, Duration::from_secs(1)).await;
    // The killed workers' leases can be taken over once the lease time has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (accepted, duplicates) = verify(&q, dir.path()).await;
    redis_cleanup(&prefix).await;
    eprintln!(
        "redis crash test: {kills} SIGKILLs (+1 at the end), {accepted} accepted deliveries, \
         0 lost, {duplicates} delivered twice, {:?}",
        started.elapsed()
    );
    assert!(accepted > 0, "the workers never got a job accepted");
    assert!(
        duplicates <= (usize::try_from(kills).unwrap() + 1) * IN_FLIGHT,
        "{duplicates} duplicates after {} kills of at most {IN_FLIGHT} in flight each",
        kills + 1
    );
}
