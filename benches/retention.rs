//! Retention under a steady load, both backends: round after round, a campaign is
//! submitted, delivered (lease + complete) and, once older than the retention, pruned.
//! Prints after each round the embedded store's file size and the Redis memory used, which
//! must stay flat once the first rounds have been pruned: disk and memory do not grow with
//! the mail sent.
//!
//! Simulated time: each round is one day later; retention is one day for events and jobs.
//! `VOLLEY_RETENTION_ROUNDS` (default 12) and `VOLLEY_RETENTION_RECIPIENTS` (default 20,000)
//! change the size.

// A benchmark reports its figures on the terminal.
#![allow(clippy::print_stdout)]

use std::time::{Duration, SystemTime};

use volley::queue::{
    Completion, EmbeddedQueue, JobId, JobKind, NewJob, NewRecipient, Queue, RedisQueue, Resolution,
    RetentionConfig,
};

const DAY: Duration = Duration::from_secs(86_400);

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn round<Q: Queue>(q: &Q, n: u32, now: SystemTime, round: u32) {
    let job = NewJob {
        id: JobId::new(now),
        kind: JobKind::Campaign,
        payload: br#"{"template":"welcome","from":"news@example.com"}"#.to_vec(),
        send_at: None,
        idempotency: None,
    };
    let recipients = (0..n).map(move |i| NewRecipient {
        to: format!("r{round}-{i}@example{}.com", i % 97),
        vars: format!(r#"{{"name":"User {i}"}}"#).into_bytes(),
    });
    q.submit(job, recipients, now).await.expect("submit");
    loop {
        let got = q.lease(1024, now).await.expect("lease");
        if got.is_empty() {
            break;
        }
        let batch = got
            .iter()
            .map(|l| Completion {
                id: l.id,
                token: l.token,
                resolution: Resolution::Delivered {
                    reply: "250 2.0.0 ok".into(),
                },
                via: None,
            })
            .collect();
        q.complete(batch, now).await.expect("complete");
    }
    let retention = RetentionConfig {
        events: DAY,
        jobs: DAY,
    };
    while {
        let p = q.prune(now, retention).await.expect("prune");
        p.events + p.jobs > 0
    } {}
}

async fn redis_used_memory(c: &mut redis::aio::MultiplexedConnection) -> String {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(c)
        .await
        .unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory_human:"))
        .unwrap_or("?")
        .trim()
        .to_owned()
}

fn main() {
    let (rounds, n) = (
        env("VOLLEY_RETENTION_ROUNDS", 12),
        env("VOLLEY_RETENTION_RECIPIENTS", 20_000),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let start = SystemTime::now();
        let dir = tempfile::tempdir_in(".").expect("tempdir");
        let q = EmbeddedQueue::open(dir.path(), Duration::from_secs(300))
            .await
            .expect("open");
        println!("embedded: {rounds} rounds of {n} recipients, retention 1 day, 1 day apart");
        for r in 0..rounds {
            round(&q, n, start + DAY * r, r).await;
            let size = std::fs::metadata(q.file()).map_or(0, |m| m.len());
            println!("  round {r:>2}: store file {:>6.1} MB", size as f64 / 1e6);
        }

        let prefix = format!("volley-bench:{:x}", rand::random::<u64>());
        let url = "redis://127.0.0.1:6379";
        let Ok(q) = RedisQueue::open(url, &prefix, Duration::from_secs(300)).await else {
            println!("redis: skipped, not reachable");
            return;
        };
        let client = redis::Client::open(url).expect("client");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("conn");
        println!(
            "redis: same rounds; used memory before: {}",
            redis_used_memory(&mut c).await
        );
        for r in 0..rounds {
            round(&q, n, start + DAY * r, r).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{{{prefix}}}:*"))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            println!(
                "  round {r:>2}: used memory {:>8}, {} keys",
                redis_used_memory(&mut c).await,
                keys.len()
            );
        }
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{{{prefix}}}:*"))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
        }
    });
}
