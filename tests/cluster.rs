//! Three `volley serve` processes on one Redis behave, towards receivers and webhook
//! consumers, like one sender: a site's connection cap and the global rate hold across
//! the cluster, each recipient gets one message, each event is posted once, and a worker
//! killed with SIGKILL gives its connection slots back within the slot lease (otherwise
//! the others could never finish the site it was sending to).

// The tests report what they measured on stderr.
#![allow(clippy::print_stderr)]

mod queue_common;
mod serve_process;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use queue_common::{REDIS_URL, redis_available, redis_cleanup, unique_prefix};
use serve_process::{PATIENCE, Serve, templates_toml};
use volley_loadtest::{DnsRecords, DnsServer, Sink, SinkConfig};

const MX_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const MX_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const CAP: u64 = 2;
const RATE: f64 = 60.0;

/// Two sinks on one port (the port every MX is reached on), one per MX address.
async fn sinks() -> (Sink, Sink, u16) {
    for _ in 0..20 {
        let port = std::net::TcpListener::bind((MX_A, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let start = |ip: Ipv4Addr| {
            Sink::start(SinkConfig {
                listen: vec![SocketAddr::from((ip, port))],
                track_recipients: true,
                ..SinkConfig::default()
            })
        };
        if let (Ok(a), Ok(b)) = (start(MX_A).await, start(MX_B).await) {
            return (a, b, port);
        }
    }
    panic!("no common free port on {MX_A} and {MX_B}");
}

/// Every event a webhook receiver was posted: (job, index, event).
type Posted = Arc<Mutex<Vec<(String, u64, String)>>>;

async fn webhook_receiver() -> (String, Posted) {
    use axum::routing::post;
    let posted = Posted::default();
    let seen = Arc::clone(&posted);
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let batch: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut seen = seen.lock().unwrap();
                for e in batch["events"].as_array().unwrap() {
                    seen.push((
                        e["job"].as_str().unwrap().to_owned(),
                        e["index"].as_u64().unwrap(),
                        e["event"].as_str().unwrap().to_owned(),
                    ));
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), posted)
}

/// A worker of the cluster: `shared` is the configuration every worker has in common.
fn start_worker(dir: &Path, name: &str, prefix: &str, shared: &str) -> Serve {
    let templates = templates_toml();
    Serve::spawn(dir, name, |api| {
        format!(
            "[server]\nlisten = \"{api}\"\nshutdown_timeout = \"2s\"\n\
             [queue]\nbackend = \"redis\"\nredis_url = \"{REDIS_URL}\"\nredis_prefix = \"{prefix}\"\nlease = \"3s\"\n\
             [templates]\npath = {templates}\n\
             [retry]\nschedule = [\"300ms\"]\nmax_age = \"5m\"\n\
             [cluster]\nslot_lease = \"2s\"\nheartbeat = \"1s\"\n\
             {shared}"
        )
    })
}

struct Cluster {
    workers: Vec<Serve>,
    a: Sink,
    b: Sink,
    _dns: DnsServer,
    posted: Posted,
    prefix: String,
    _dir: tempfile::TempDir,
}

/// Three workers sharing a cap of 2 connections per site and 60 messages/s, delivering
/// to `a.test` (MX on 127.0.0.2) and `b.test` (127.0.0.3), posting webhooks.
async fn cluster() -> Cluster {
    cluster_with("").await
}

/// Like [`cluster`], with more `[smtp]` settings.
async fn cluster_with(smtp: &str) -> Cluster {
    let (a, b, port) = sinks().await;
    let dns = dns(MX_B).await;
    let (hook, posted) = webhook_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let shared = format!(
        "[smtp]\nhelo_name = \"volley.test\"\nport = {port}\nmax_connections_per_site = {CAP}\n{smtp}\n\
         [dns]\nnameservers = [\"{}\"]\n[security]\nallow_loopback_mx = true\n\
         [limits]\nglobal = \"{RATE}/s\"\n\
         [webhooks]\nurl = \"{hook}\"\nsecret = \"a webhook secret of 32 bytes or more\"\n",
        dns.addr()
    );
    let workers: Vec<Serve> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| start_worker(dir.path(), name, &prefix, &shared))
        .collect();
    for w in &workers {
        w.ready().await;
    }
    Cluster {
        workers,
        a,
        b,
        _dns: dns,
        posted,
        prefix,
        _dir: dir,
    }
}

/// `a.test` (MX on 127.0.0.2) and `b.test` (MX on `b`).
async fn dns(b: Ipv4Addr) -> DnsServer {
    DnsServer::start(
        DnsRecords::new()
            .mx("a.test", 10, "mx.a.test")
            .a("mx.a.test", MX_A)
            .mx("b.test", 10, "mx.b.test")
            .a("mx.b.test", b),
    )
    .await
    .unwrap()
}

fn recipients(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("user{i}@{}.test", if i % 2 == 0 { "a" } else { "b" }))
        .collect()
}

async fn wait_posted(posted: &Posted, event: &str, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let seen = posted
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.2 == event)
            .count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {n} {event} events posted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_keep_one_cap_one_rate_and_post_each_event_once() {
    if !redis_available().await {
        return;
    }
    let mut c = cluster().await;
    let listed = c.workers[0].json("/v1/cluster").await.unwrap();
    assert_eq!(listed["backend"], "redis");
    assert_eq!(listed["totals"]["workers"], 3, "{listed}");

    // One campaign submitted to each worker at once: each starts sending its own.
    let to = recipients(600);
    let started = Instant::now();
    let (w, t) = (&c.workers, &to);
    let ids = tokio::join!(
        w[0].campaign(&t[..200]),
        w[1].campaign(&t[200..400]),
        w[2].campaign(&t[400..])
    );
    for id in [ids.0, ids.1, ids.2] {
        let job = c.workers[0].wait_done(&id).await;
        assert_eq!(job["counts"]["delivered"], 200, "{job}");
    }
    let elapsed = started.elapsed().as_secs_f64();

    // One copy each, at either MX.
    let mut counts: HashMap<String, u64> = c.a.delivery_counts();
    counts.extend(c.b.delivery_counts());
    assert_eq!(counts.len(), 600);
    assert!(
        counts.values().all(|&n| n == 1),
        "a recipient got two copies"
    );

    // The cap held at each MX, and the rate across the cluster.
    let (sa, sb) = (c.a.stats(), c.b.stats());
    eprintln!(
        "cluster: peak connections {} / {} (cap {CAP}); busiest second {} / {} messages (limit {RATE}/s overall); {:.1} msg/s overall",
        sa.peak_connections,
        sb.peak_connections,
        sa.peak_one_second,
        sb.peak_one_second,
        600.0 / elapsed
    );
    assert!(sa.peak_connections <= CAP && sb.peak_connections <= CAP);
    assert!(
        sa.peak_connections + sb.peak_connections > CAP,
        "the workers did share the sending"
    );
    assert!(
        600.0 / elapsed <= RATE * 1.1,
        "{:.1} msg/s",
        600.0 / elapsed
    );

    // Each event posted once, by whichever worker leads the webhooks.
    wait_posted(&c.posted, "delivered", 600).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let posted = c.posted.lock().unwrap().clone();
    let mut once: HashMap<(String, u64, String), u32> = HashMap::new();
    for e in posted {
        *once.entry(e).or_default() += 1;
    }
    let twice = once.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "{twice} events posted more than once");
    assert_eq!(once.keys().filter(|k| k.2 == "delivered").count(), 600);

    // A graceful stop leaves the list at once.
    c.workers[2].stop();
    let listed = c.workers[0].json("/v1/cluster").await.unwrap();
    assert_eq!(listed["totals"]["workers"], 2, "{listed}");
    for w in &mut c.workers {
        w.stop();
    }
    // Stopped workers hold no connection slot (without giving them back, they would
    // stay taken for the slot lease).
    let mut redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{}}}:slots:*", c.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    for key in keys {
        let held: u64 = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(held, 0, "{key} still holds slots after a graceful stop");
    }
    redis_cleanup(&c.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_gives_its_slots_back_and_its_deliveries_finish_elsewhere() {
    if !redis_available().await {
        return;
    }
    let mut c = cluster().await;
    let to = recipients(400);
    let id = c.workers[0].campaign(&to).await;
    // Kill the worker that holds the most connections once it holds some.
    let mut ids = Vec::new();
    for w in &c.workers {
        ids.push(w.json("/v1/cluster").await.unwrap()["this_worker"].clone());
    }
    let deadline = Instant::now() + PATIENCE;
    let victim = loop {
        let listed = c.workers[0].json("/v1/cluster").await.unwrap();
        let busiest = listed["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                let open: u64 = w["connections"].as_object().map_or(0, |m| {
                    m.values().filter_map(serde_json::Value::as_u64).sum()
                });
                (open, w["id"].clone())
            })
            .max_by_key(|(open, _)| *open);
        if let Some((open, id)) = busiest
            && open > 0
        {
            break ids.iter().position(|i| *i == id).unwrap();
        }
        assert!(Instant::now() < deadline, "no worker ever connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    c.workers[victim].kill();
    let survivor = (victim + 1) % 3;
    let job = c.workers[survivor].wait_done(&id).await;
    assert_eq!(job["counts"]["delivered"], 400, "{job}");
    let mut counts: HashMap<String, u64> = c.a.delivery_counts();
    for (k, n) in c.b.delivery_counts() {
        *counts.entry(k).or_default() += n;
    }
    assert_eq!(counts.len(), 400, "every recipient delivered");
    let duplicates: u64 = counts.values().map(|n| n - 1).sum();
    eprintln!("cluster kill: {duplicates} duplicates of 400");
    // At most what the killed worker had on its connections: 2 sites × cap × a batch (16).
    assert!(duplicates <= 2 * CAP * 16, "{duplicates} duplicates");
    let (sa, sb) = (c.a.stats(), c.b.stats());
    assert!(
        sa.peak_connections <= CAP && sb.peak_connections <= CAP,
        "peaks {} {}",
        sa.peak_connections,
        sb.peak_connections
    );
    for w in &mut c.workers {
        w.stop();
    }
    redis_cleanup(&c.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_throttles_one_worker_is_paused_by_all() {
    if !redis_available().await {
        return;
    }
    let mut c = cluster_with("throttle_pause = \"6s\"").await;
    // 900 recipients at a.test; the sink answers `421 4.7.0` to `bye-...` and closes.
    let mut to: Vec<String> = (0..900).map(|i| format!("user{i}@a.test")).collect();
    to[330] = "bye-1@a.test".to_owned();
    let (w, t) = (&c.workers, &to);
    let _ = tokio::join!(
        w[0].campaign(&t[..300]),
        w[1].campaign(&t[300..600]),
        w[2].campaign(&t[600..])
    );
    // When the 421 is recorded, every worker must stop sending to the site for the pause.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let events = c.workers[0].json("/v1/events?limit=1000").await.unwrap();
        let throttled = events["events"].as_array().unwrap().iter().any(|e| {
            e["to"] == "bye-1@a.test" && e["reply"].as_str().is_some_and(|r| r.contains("421"))
        });
        if throttled {
            break;
        }
        assert!(Instant::now() < deadline, "the 421 never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for the other workers to read it (twice a second, later on a loaded machine)
    // and for exchanges already on a connection to finish; then three seconds of the
    // six-second pause.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = c.a.stats().messages;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let during = c.a.stats().messages - before;
    eprintln!("cluster throttle: {during} messages accepted during the pause ({before} before)");
    assert!(
        before < 899,
        "the campaign was still sending when the site throttled"
    );
    assert_eq!(
        during, 0,
        "a worker kept sending to a site that asked the cluster to slow down"
    );
    for w in &mut c.workers {
        w.stop();
    }
    redis_cleanup(&c.prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_and_duplicates_nothing() {
    if !redis_available().await {
        return;
    }
    let mut c = cluster().await;
    let to = recipients(600);
    let (w, t) = (&c.workers, &to);
    let ids = tokio::join!(
        w[0].campaign(&t[..200]),
        w[1].campaign(&t[200..400]),
        w[2].campaign(&t[400..])
    );
    // Replace each worker in turn with a new process while the campaigns go out: SIGTERM
    // (it finishes its transactions, gives back its leases and slots), then a new one.
    let dir = c._dir.path().to_owned();
    let shared = std::fs::read_to_string(dir.join("w1.toml")).unwrap();
    let shared = &shared[shared.find("[smtp]").unwrap()..];
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.workers[i].stop();
        let log = c.workers[i].log_text();
        assert!(!log.contains("not stored"), "a stop lost outcomes: {log}");
        let fresh = start_worker(&dir, name, &c.prefix, shared);
        fresh.ready().await;
        c.workers[i] = fresh;
    }
    for id in [ids.0, ids.1, ids.2] {
        let job = c.workers[0].wait_done(&id).await;
        assert_eq!(job["counts"]["delivered"], 200, "{job}");
    }
    let mut counts: HashMap<String, u64> = c.a.delivery_counts();
    counts.extend(c.b.delivery_counts());
    assert_eq!(counts.len(), 600, "every recipient delivered");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "sent twice across a rolling restart: {twice:?}"
    );
    for w in &mut c.workers {
        w.stop();
    }
    redis_cleanup(&c.prefix).await;
}

/// Egress pools and provider shaping keep their limits across the cluster: a pool's
/// warm-up rate is the cluster's, and a provider's connection cap counts every worker's
/// connections to all its sites (two MX sets, on one sink that sees them together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_warmup_and_a_providers_cap_hold_across_the_cluster() {
    if !redis_available().await {
        return;
    }
    const WARMUP: f64 = 20.0;
    const PROVIDER_CAP: u64 = 2;
    let (sink, _other, port) = sinks().await;
    let dns = dns(MX_A).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    // Each site may have 3 connections per worker: only the provider's cap (shared by
    // both sites and the three workers) keeps them to 2.
    let shared = format!(
        "[smtp]\nhelo_name = \"volley.test\"\nport = {port}\nmax_connections_per_site = 3\n\
         [dns]\nnameservers = [\"{}\"]\n[security]\nallow_loopback_mx = true\n\
         [egress]\ndefault_pool = \"bulk\"\n\
         [egress.pools.bulk]\naddresses = [\"127.0.0.1\"]\nwarmup = [[\"2026-01-01\", \"{WARMUP}/s\"]]\n\
         [shaping.providers.corp]\nmx_suffixes = [\"a.test\", \"b.test\"]\nconnections = {PROVIDER_CAP}\n",
        dns.addr()
    );
    let mut workers: Vec<Serve> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| start_worker(dir.path(), name, &prefix, &shared))
        .collect();
    for w in &workers {
        w.ready().await;
    }
    let to = recipients(180);
    let started = Instant::now();
    let (w, t) = (&workers, &to);
    let ids = tokio::join!(
        w[0].campaign(&t[..60]),
        w[1].campaign(&t[60..120]),
        w[2].campaign(&t[120..])
    );
    for id in [ids.0, ids.1, ids.2] {
        let job = workers[0].wait_done(&id).await;
        assert_eq!(job["counts"]["delivered"], 60, "{job}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let counts = sink.delivery_counts();
    assert_eq!(counts.len(), 180);
    assert!(
        counts.values().all(|&n| n == 1),
        "a recipient got two copies"
    );
    let stats = sink.stats();
    eprintln!(
        "cluster pool and provider: peak connections {} (provider cap {PROVIDER_CAP}); {:.1} msg/s (warm-up {WARMUP}/s)",
        stats.peak_connections,
        180.0 / elapsed
    );
    assert!(
        stats.peak_connections <= PROVIDER_CAP,
        "{} connections to the provider at once",
        stats.peak_connections
    );
    // The warm-up's first second may burst; the rest keeps to its pace.
    assert!(
        180.0 / elapsed <= WARMUP * 1.25,
        "{:.1} msg/s",
        180.0 / elapsed
    );
    let events = workers[0].json("/v1/events?limit=5").await.unwrap();
    let events = events["events"].as_array().expect("events");
    assert!(!events.is_empty());
    for e in events {
        assert_eq!(e["via"]["pool"], "bulk", "{e}");
        assert_eq!(e["via"]["source"], "127.0.0.1", "{e}");
    }
    for w in &mut workers {
        w.stop();
    }
    redis_cleanup(&prefix).await;
}

/// An intake-only process (`[dispatch] deliver = false`) stores what it is given and
/// sends nothing; a delivering worker on the same Redis sends it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intake_only_worker_stores_and_another_delivers() {
    if !redis_available().await {
        return;
    }
    let (a, b, port) = sinks().await;
    let dns = dns(MX_B).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique_prefix();
    let shared = format!(
        "[smtp]\nhelo_name = \"volley.test\"\nport = {port}\n\
         [dns]\nnameservers = [\"{}\"]\n[security]\nallow_loopback_mx = true\n",
        dns.addr()
    );
    let intake = format!("{shared}[dispatch]\ndeliver = false\n");
    let mut front = start_worker(dir.path(), "front", &prefix, &intake);
    front.ready().await;
    let id = front.campaign(&recipients(20)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job = front.json(&format!("/v1/jobs/{id}?limit=1")).await.unwrap();
    assert_eq!(job["counts"]["queued"], 20, "nothing sent yet: {job}");
    assert_eq!(a.stats().messages + b.stats().messages, 0);
    let mut back = start_worker(dir.path(), "back", &prefix, &shared);
    back.ready().await;
    let job = front.wait_done(&id).await;
    assert_eq!(job["counts"]["delivered"], 20, "{job}");
    let mut counts = a.delivery_counts();
    counts.extend(b.delivery_counts());
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1));
    let metrics = front.get("/metrics").await.unwrap().1;
    assert!(
        !metrics.lines().any(
            |l| l.starts_with("volley_deliveries_total{outcome=\"delivered\"}")
                && !l.ends_with(" 0")
        ),
        "the intake-only process delivered: {metrics}"
    );
    front.stop();
    back.stop();
    redis_cleanup(&prefix).await;
}
