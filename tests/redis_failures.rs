//! volley on Redis when things go wrong, with real `volley serve` processes: a Redis that
//! refuses reads mid-run (nothing sent to an address whose suppression state is unknown,
//! nothing bounced), a Redis that lost its data (leasing resumes without a restart), a
//! stop whose last outcomes cannot be stored (bounded, and said), and a worker killed with
//! SIGKILL (its deliveries finish elsewhere; duplicates at most what it had in flight).

// The SIGKILL test reports its figures on stderr.
#![allow(clippy::print_stderr)]

mod queue_common;
mod serve_process;

use std::path::Path;
use std::time::{Duration, Instant};

use queue_common::{REDIS_URL, redis_available, redis_cleanup, unique_prefix};
use serve_process::{Serve, templates_toml};
use volley_loadtest::{Sink, SinkConfig};

const PATIENCE: Duration = Duration::from_secs(60);

async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// A Redis user of its own, with every right, so a test can take some away.
struct AclUser {
    name: String,
    password: String,
}

impl AclUser {
    async fn create() -> Self {
        let user = AclUser {
            name: format!("volley-test-{:08x}", rand::random::<u32>()),
            password: format!("{:032x}", rand::random::<u128>()),
        };
        user.set(&["on", &format!(">{}", user.password), "~*", "&*", "+@all"])
            .await;
        user
    }

    async fn set(&self, rules: &[&str]) {
        let mut c = redis().await;
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.name)
            .arg(rules)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }

    fn url(&self) -> String {
        format!("redis://{}:{}@127.0.0.1:6379", self.name, self.password)
    }

    async fn delete(self) {
        let mut c = redis().await;
        let _: redis::RedisResult<()> = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.name)
            .query_async(&mut c)
            .await;
    }
}

/// A sample line without its `worker="..."` label.
fn without_worker(line: &str) -> String {
    let Some(start) = line.find("worker=\"") else {
        return line.to_owned();
    };
    let value = start + "worker=\"".len();
    let Some(len) = line[value..].find('"') else {
        return line.to_owned();
    };
    format!("{}{}", &line[..start], &line[value + len + 1..])
        .replace("{,", "{")
        .replace("{}", "")
}

/// A `volley serve` process on Redis, relaying to a sink.
fn start_worker(
    dir: &Path,
    name: &str,
    redis_url: &str,
    prefix: &str,
    relay: &str,
    extra: &str,
) -> Serve {
    let templates = templates_toml();
    Serve::spawn(dir, name, |api| {
        format!(
            "[server]\nlisten = \"{api}\"\nshutdown_timeout = \"2s\"\n\
             [queue]\nbackend = \"redis\"\nredis_url = \"{redis_url}\"\nredis_prefix = \"{prefix}\"\nlease = \"3s\"\n\
             [templates]\npath = {templates}\n\
             [smtp]\nhelo_name = \"volley.test\"\n\
             [relay]\nhost = \"{relay}\"\ntls = \"none\"\n\
             [retry]\nschedule = [\"300ms\"]\nmax_age = \"5m\"\n{extra}"
        )
    })
}

/// A series' value, `name` written without the `worker` label every series of a
/// cluster's worker carries.
async fn metric(worker: &Serve, name: &str) -> u64 {
    let (_, text) = worker.get("/metrics").await.unwrap_or_default();
    assert!(
        text.lines()
            .all(|l| l.starts_with('#') || l.contains("worker=\"")),
        "every series is labelled with its worker: {text}"
    );
    text.lines()
        .map(without_worker)
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn addresses(n: usize, tag: &str) -> Vec<String> {
    (0..n).map(|i| format!("{tag}{i}@example.org")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_refuses_reads_defers_and_never_sends_blind() {
    if !redis_available().await {
        return;
    }
    let (prefix, user) = (unique_prefix(), AclUser::create().await);
    let sink = Sink::start(SinkConfig {
        track_recipients: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = sink.addrs()[0].to_string();
    let worker = start_worker(dir.path(), "a", &user.url(), &prefix, &relay, "");
    worker.ready().await;
    let (status, body) = worker
        .request("PUT", "/v1/suppressions/blocked@example.org", "")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // From now on the suppression list cannot be read.
    user.set(&["-hmget"]).await;
    let mut to = addresses(30, "r");
    to.push("blocked@example.org".into());
    let id = worker.campaign(&to).await;
    let deadline = Instant::now() + PATIENCE;
    while metric(&worker, "volley_queue_errors_total").await < 2 {
        assert!(
            Instant::now() < deadline,
            "no queue error seen: {}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.stats().messages,
        0,
        "nothing sent while suppression is unknown"
    );
    assert_eq!(
        metric(&worker, "volley_deliveries_total{outcome=\"bounced\"}").await,
        0
    );
    user.set(&["+hmget"]).await;
    let job = worker.wait_done(&id).await;
    assert_eq!(
        (
            job["counts"]["delivered"].as_u64(),
            job["counts"]["suppressed"].as_u64()
        ),
        (Some(30), Some(1)),
        "{job}"
    );
    let counts = sink.delivery_counts();
    assert!(!counts.contains_key("blocked@example.org"));
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    drop(worker);
    user.delete().await;
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasing_resumes_after_redis_lost_its_data() {
    if !redis_available().await {
        return;
    }
    let prefix = unique_prefix();
    let sink = Sink::start(SinkConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = sink.addrs()[0].to_string();
    let worker = start_worker(dir.path(), "a", REDIS_URL, &prefix, &relay, "");
    worker.ready().await;
    let id = worker.campaign(&addresses(5, "before")).await;
    worker.wait_done(&id).await;
    // Everything of this deployment goes, the consumer group with it (what FLUSHALL or a
    // failover to an empty replica does, without touching other tests' keys).
    redis_cleanup(&prefix).await;
    let id = worker.campaign(&addresses(5, "after")).await;
    let job = worker.wait_done(&id).await;
    assert_eq!(
        job["counts"]["delivered"],
        5,
        "{job}: {}",
        worker.log_text()
    );
    assert_eq!(sink.stats().messages, 10);
    drop(worker);
    redis_cleanup(&prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_outcomes_cannot_be_stored_ends_in_time_and_says_so() {
    if !redis_available().await {
        return;
    }
    let (prefix, user) = (unique_prefix(), AclUser::create().await);
    let sink = Sink::start(SinkConfig {
        slow_delay: Duration::from_millis(1500),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = sink.addrs()[0].to_string();
    let mut worker = start_worker(dir.path(), "a", &user.url(), &prefix, &relay, "");
    worker.ready().await;
    worker.campaign(&addresses(4, "slow")).await;
    // Wait until they are on connections, then take the scripts away: no outcome can be
    // stored any more.
    let deadline = Instant::now() + PATIENCE;
    while metric(&worker, "volley_in_flight").await == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing in flight: {}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    user.set(&["-evalsha", "-eval"]).await;
    let asked = Instant::now();
    worker.signal("TERM");
    let (code, log) = worker.wait();
    let took = asked.elapsed();
    assert_ne!(
        code,
        Some(0),
        "a stop that lost outcomes is not a success: {log}"
    );
    assert!(log.contains("could not be stored"), "{log}");
    // shutdown_timeout is 2 s; the transactions in flight take 1.5 s more.
    assert!(took < Duration::from_secs(20), "bounded: {took:?}");
    user.set(&["+evalsha", "+eval"]).await;
    user.delete().await;
    redis_cleanup(&prefix).await;
}

/// The consumer of the worker with `pid` and its pending (leased) deliveries.
async fn pending_of(prefix: &str, pid: u32) -> u64 {
    let mut c = redis().await;
    let consumers: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(format!("{{{prefix}}}:ready"))
        .arg("workers")
        .query_async(&mut c)
        .await
        .unwrap();
    let needle = format!("-{pid}-");
    for consumer in consumers {
        let redis::Value::Array(fields) = consumer else {
            continue;
        };
        let mut name = String::new();
        let mut pending = 0;
        for pair in fields.chunks(2) {
            let key = match &pair[0] {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => continue,
            };
            match (key.as_str(), &pair[1]) {
                ("name", redis::Value::BulkString(b)) => {
                    name = String::from_utf8_lossy(b).into_owned();
                }
                ("pending", redis::Value::Int(n)) => pending = u64::try_from(*n).unwrap_or(0),
                _ => {}
            }
        }
        if name.contains(&needle) {
            return pending;
        }
    }
    0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_duplicates_at_most_what_it_had_in_flight() {
    if !redis_available().await {
        return;
    }
    let prefix = unique_prefix();
    let sink = Sink::start(SinkConfig {
        track_recipients: true,
        reply_delay: Duration::from_millis(5),
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = sink.addrs()[0].to_string();
    let a = start_worker(dir.path(), "a", REDIS_URL, &prefix, &relay, "");
    let mut b = start_worker(dir.path(), "b", REDIS_URL, &prefix, &relay, "");
    a.ready().await;
    b.ready().await;
    let total = 3000;
    let id = a.campaign(&addresses(total, "k")).await;
    let deadline = Instant::now() + PATIENCE;
    while sink.stats().messages < 300 {
        assert!(Instant::now() < deadline, "too slow: {}", a.log_text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = b.pid();
    let in_flight = metric(&b, "volley_in_flight").await;
    b.signal("KILL"); // no destructor, no flush, no goodbye
    let (code, _) = b.wait();
    assert_eq!(code, None, "killed by a signal");
    let held = pending_of(&prefix, pid).await;
    let job = a.wait_done(&id).await;
    assert_eq!(
        job["counts"]["delivered"].as_u64(),
        Some(total as u64),
        "{job}"
    );
    let counts = sink.delivery_counts();
    assert_eq!(counts.len(), total, "every recipient reached");
    let duplicates: u64 = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "SIGKILL of one of two workers: {total} recipients; the killed worker had {in_flight} on \
         connections just before and {held} leased at the kill; {duplicates} delivered twice"
    );
    assert!(
        duplicates <= held,
        "{duplicates} duplicates, but the killed worker held only {held} leases"
    );
    drop(a);
    redis_cleanup(&prefix).await;
}
