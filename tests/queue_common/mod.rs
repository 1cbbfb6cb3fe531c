//! Helpers shared by the queue integration tests: backends on fresh storage, a Redis that
//! must be there under CI, and job builders.

// Reports figures (and skips outside CI) on stderr.
#![allow(clippy::print_stderr)]
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use volley::queue::{EmbeddedQueue, JobId, JobKind, NewJob, NewRecipient, RedisQueue};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A fixed clock origin, so tests control time.
pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
}

pub fn job(now: SystemTime) -> NewJob {
    NewJob {
        id: JobId::new(now),
        kind: JobKind::Campaign,
        payload: br#"{"template":"welcome"}"#.to_vec(),
        send_at: None,
        idempotency: None,
    }
}

pub fn recipients(n: u32) -> impl Iterator<Item = NewRecipient> + Send {
    (0..n).map(|i| NewRecipient {
        to: format!("user{i}@example.com"),
        vars: format!(r#"{{"i":{i}}}"#).into_bytes(),
    })
}

/// Whether Redis answers; under CI (env `CI` set) its absence is a failure, not a skip.
pub async fn redis_available() -> bool {
    let ok = async {
        let client = redis::Client::open(REDIS_URL).ok()?;
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    };
    let ok = tokio::time::timeout(Duration::from_secs(3), ok)
        .await
        .ok()
        .flatten()
        .is_some();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "Redis is not reachable at {REDIS_URL} and CI is set: start redis-server"
        );
        eprintln!("NOTICE: Redis not reachable at {REDIS_URL}: skipping the Redis queue tests");
    }
    ok
}

/// A key prefix no other test or deployment uses.
pub fn unique_prefix() -> String {
    format!("volley-test:{:016x}", rand::random::<u64>())
}

/// Deletes every key under `prefix`.
pub async fn redis_cleanup(prefix: &str) {
    let Ok(client) = redis::Client::open(REDIS_URL) else {
        return;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut c)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
    }
}

pub async fn open_redis(prefix: &str, lease: Duration) -> RedisQueue {
    RedisQueue::open(REDIS_URL, prefix, lease)
        .await
        .unwrap_or_else(|e| panic!("open redis queue: {e}"))
}

pub async fn open_embedded(dir: &std::path::Path, lease: Duration) -> EmbeddedQueue {
    EmbeddedQueue::open(dir, lease)
        .await
        .unwrap_or_else(|e| panic!("open embedded queue: {e}"))
}
