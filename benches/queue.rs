//! Queue throughput, both backends: submissions per second for one 100k-recipient campaign,
//! and lease + complete per second in batches of 256. A plain timed harness: each figure is
//! one run over real storage, not a statistical sample.
//!
//! Sync policy: embedded submits and completes with redb `Durability::Immediate` (fsync per
//! commit: one per submission, one per completed batch; leases are not synced). Redis runs
//! with whatever persistence the server has (printed), plus `WAITAOF` on 7.2+ with AOF on.
//!
//! `VOLLEY_QUEUE_BENCH_RECIPIENTS=N` changes the campaign size (e.g. 1000000 to watch
//! memory: peak RSS is printed).

// A benchmark or tool reports its figures on the terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant, SystemTime};

use volley::queue::{
    Completion, EmbeddedQueue, JobId, JobKind, NewJob, NewRecipient, Queue, RedisQueue, Resolution,
};

const BATCH: usize = 256;

fn rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!("RSS {} kB, peak {} kB", get("VmRSS:"), get("VmHWM:"))
}

fn recipients(n: u32) -> impl Iterator<Item = NewRecipient> + Send {
    (0..n).map(|i| NewRecipient {
        to: format!("user{i}@example{}.com", i % 97),
        vars: format!(r#"{{"name":"User {i}","code":"C{i:08}"}}"#).into_bytes(),
    })
}

async fn run<Q: Queue>(name: &str, q: &Q, n: u32) {
    let now = SystemTime::now();
    let job = NewJob {
        id: JobId::new(now),
        kind: JobKind::Campaign,
        payload: br#"{"template":"welcome","from":"news@example.com"}"#.to_vec(),
        send_at: None,
        idempotency: None,
    };
    println!("{name}: before submit: {}", rss());
    let t = Instant::now();
    q.submit(job, recipients(n), now).await.expect("submit");
    let submit = t.elapsed();
    println!(
        "{name}: submit {n} recipients: {submit:.2?} = {:.0} deliveries/s; after submit: {}",
        f64::from(n) / submit.as_secs_f64(),
        rss()
    );
    let t = Instant::now();
    let mut done = 0usize;
    loop {
        let got = q.lease(BATCH, SystemTime::now()).await.expect("lease");
        if got.is_empty() {
            break;
        }
        done += got.len();
        let batch = got
            .into_iter()
            .map(|l| Completion {
                id: l.id,
                token: l.token,
                resolution: Resolution::Delivered {
                    reply: "250 2.0.0 ok".into(),
                },
                via: None,
            })
            .collect();
        q.complete(batch, SystemTime::now())
            .await
            .expect("complete");
    }
    let drain = t.elapsed();
    assert_eq!(done, n as usize, "{name}: drained {done} of {n}");
    println!(
        "{name}: lease+complete {done} in batches of {BATCH}: {drain:.2?} = {:.0} deliveries/s; {}",
        done as f64 / drain.as_secs_f64(),
        rss()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument (a filter) is ignored.
    let n: u32 = std::env::var("VOLLEY_QUEUE_BENCH_RECIPIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        let q = EmbeddedQueue::open(dir.path(), Duration::from_secs(300))
            .await
            .expect("open");
        run("embedded (redb, fsync per submit/complete)", &q, n).await;
        let size = std::fs::metadata(q.file()).map(|m| m.len()).unwrap_or(0);
        println!("embedded: store file {} MB", size / 1_000_000);

        let prefix = format!("volley-bench:{:x}", rand::random::<u64>());
        match RedisQueue::open("redis://127.0.0.1:6379", &prefix, Duration::from_secs(300)).await {
            Ok(q) => {
                run(&format!("redis ({q:?})"), &q, n).await;
                let client = redis::Client::open("redis://127.0.0.1:6379").expect("client");
                let mut c = client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("conn");
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{{{prefix}}}:*"))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(keys).query_async(&mut c).await;
                }
            }
            Err(e) => println!("redis: skipped, not reachable: {e}"),
        }
    });
}
