//! The delivery engine end to end on loopback: a real DNS server (hickory-server)
//! serving MX, A and null MX records, and load-test sinks listening on several
//! 127.0.0.x addresses.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedReceiver;
use volley::address::Address;
use volley::engine::{Delivery, Engine, EngineConfig, LimitsConfig, Report, SmtpConfig};
use volley::metrics::Metrics;
use volley::outcome::{Disposition, Outcome};
use volley::retry::{Decision, RetryConfig};
use volley::route::{DnsConfig, RelayConfig, RelayTls, Router, SecurityConfig};
use volley::smtp::TlsPolicy;
use volley_loadtest::{DnsRecords, DnsServer, Sink, SinkConfig};

const IP2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const IP3: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const IP4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
const IP5: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

/// Sinks on the given addresses, all on one port (the engine has one SMTP port).
async fn sinks(ips: &[Ipv4Addr], config: SinkConfig) -> (Vec<Sink>, u16) {
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind((ips[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let mut started = Vec::new();
        for ip in ips {
            let listen = vec![SocketAddr::from((*ip, port))];
            match Sink::start(SinkConfig {
                listen,
                ..config.clone()
            })
            .await
            {
                Ok(sink) => started.push(sink),
                Err(_) => break,
            }
        }
        if started.len() == ips.len() {
            return (started, port);
        }
        for sink in started {
            sink.shutdown().await;
        }
    }
    panic!("no common free port for {ips:?}");
}

struct Harness {
    engine: Engine<u32>,
    reports: UnboundedReceiver<Report<u32>>,
    metrics: Arc<Metrics>,
}

fn smtp(port: u16) -> SmtpConfig {
    let mut smtp = SmtpConfig {
        helo_name: "volley.test".into(),
        port,
        ..SmtpConfig::default()
    };
    smtp.timeouts.connect = Duration::from_secs(2);
    smtp.idle_timeout = Duration::from_secs(5);
    smtp
}

fn engine_config(port: u16) -> EngineConfig {
    EngineConfig {
        smtp: smtp(port),
        ..EngineConfig::default()
    }
}

fn start(dns: &DnsServer, config: EngineConfig, allow_loopback: bool) -> Harness {
    let metrics = Arc::new(Metrics::default());
    let dns_config = DnsConfig {
        nameservers: vec![dns.addr()],
        ..DnsConfig::default()
    };
    let security = SecurityConfig {
        allow_loopback_mx: allow_loopback,
    };
    let router = Router::new(
        &dns_config,
        &config.relay,
        &security,
        config.smtp.port,
        Arc::clone(&metrics),
    )
    .unwrap();
    let (engine, reports) = Engine::start(config, Arc::new(router), Arc::clone(&metrics)).unwrap();
    Harness {
        engine,
        reports,
        metrics,
    }
}

fn delivery(key: u32, to: &str) -> Delivery<u32> {
    Delivery {
        key,
        from: Some(Address::parse("bounces@volley.test").unwrap()),
        to: Address::parse(to).unwrap(),
        body: Arc::from(&b"Subject: test\r\n\r\nhello\r\n"[..]),
        queued_at: Instant::now(),
        cancelled: Default::default(),
        pool: None,
    }
}

impl Harness {
    async fn send<S: AsRef<str>>(&mut self, list: &[(u32, S)]) -> HashMap<u32, Report<u32>> {
        for (key, to) in list {
            self.engine
                .submit(delivery(*key, to.as_ref()))
                .await
                .unwrap();
        }
        self.collect(list.len()).await
    }

    async fn collect(&mut self, n: usize) -> HashMap<u32, Report<u32>> {
        let mut out = HashMap::new();
        while out.len() < n {
            let report = tokio::time::timeout(Duration::from_secs(30), self.reports.recv())
                .await
                .expect("a report within 30 s")
                .expect("the engine is running");
            assert!(
                out.insert(report.key, report).is_none(),
                "one report per delivery"
            );
        }
        out
    }
}

fn outcome(report: &Report<u32>) -> &Outcome {
    report.outcome.as_ref().expect("attempted")
}

fn records() -> DnsRecords {
    DnsRecords::new()
        .ttl(60)
        .mx("fallback.test", 10, "dead.fallback.test")
        .mx("fallback.test", 20, "live.fallback.test")
        .a("dead.fallback.test", IP2)
        .a("live.fallback.test", IP3)
        .mx("prefs.test", 10, "first.prefs.test")
        .mx("prefs.test", 20, "second.prefs.test")
        .a("first.prefs.test", IP4)
        .a("second.prefs.test", IP5)
        .a("implicit.test", IP3)
        .null_mx("nullmx.test")
        .mx("noaddress.test", 10, "gone.noaddress.test")
        .servfail("broken.test")
        // One MX on a loopback address, the other unresolvable for now, or for good.
        .mx("mixed.test", 10, "private.mixed.test")
        .a("private.mixed.test", IP3)
        .mx("mixed.test", 20, "flaky.mixed.test")
        .servfail("flaky.mixed.test")
        .mx("onlyprivate.test", 10, "private.onlyprivate.test")
        .a("private.onlyprivate.test", IP3)
        .mx("onlyprivate.test", 20, "missing.onlyprivate.test")
}

#[tokio::test]
async fn preference_order_and_fallback_to_the_next_mx() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (sinks, port) = sinks(&[IP3, IP4, IP5], SinkConfig::default()).await;
    let mut h = start(&dns, engine_config(port), true);
    let list: Vec<(u32, String)> = (0..6)
        .map(|i| {
            (
                i,
                if i % 2 == 0 {
                    format!("u{i}@fallback.test")
                } else {
                    format!("u{i}@prefs.test")
                },
            )
        })
        .collect();
    let reports = h.send(&list).await;
    for report in reports.values() {
        assert_eq!(
            outcome(report).disposition,
            Disposition::Delivered,
            "{report:?}"
        );
    }
    assert_eq!(
        sinks[0].stats().messages,
        3,
        "fallback.test went to its second MX"
    );
    assert_eq!(
        sinks[1].stats().messages,
        3,
        "prefs.test went to its preferred MX"
    );
    assert_eq!(
        sinks[2].stats().messages,
        0,
        "the less preferred MX was not needed"
    );
    h.engine.shutdown().await;
}

#[tokio::test]
async fn implicit_null_nxdomain_servfail_and_forbidden() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (sinks, port) = sinks(&[IP3], SinkConfig::default()).await;
    let mut h = start(&dns, engine_config(port), true);
    let reports = h
        .send(&[
            (1, "a@implicit.test"),
            (2, "a@nullmx.test"),
            (3, "a@nosuchdomain.test"),
            (4, "a@broken.test"),
            (5, "a@noaddress.test"),
        ])
        .await;
    assert_eq!(outcome(&reports[&1]).disposition, Disposition::Delivered);
    let code = |k: u32| {
        outcome(&reports[&k])
            .enhanced
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        (outcome(&reports[&2]).disposition, code(2).as_str()),
        (Disposition::Permanent, "5.1.10")
    );
    assert_eq!(
        (outcome(&reports[&3]).disposition, code(3).as_str()),
        (Disposition::Permanent, "5.1.2")
    );
    assert_eq!(
        (outcome(&reports[&4]).disposition, code(4).as_str()),
        (Disposition::Transient, "4.4.3")
    );
    assert_eq!(
        outcome(&reports[&5]).disposition,
        Disposition::Transient,
        "an MX host without address defers"
    );
    assert_eq!(
        sinks[0].stats().connections,
        1,
        "only the implicit MX was contacted"
    );
    h.engine.shutdown().await;

    // Without allow_loopback_mx, an MX on 127.0.0.x is refused before any connection.
    let mut h = start(&dns, engine_config(port), false);
    let reports = h
        .send(&[
            (1, "a@implicit.test"),
            (2, "a@mixed.test"),
            (3, "a@onlyprivate.test"),
        ])
        .await;
    let refused = outcome(&reports[&1]);
    assert_eq!(refused.disposition, Disposition::Permanent);
    assert_eq!(refused.enhanced.unwrap().to_string(), "5.4.4");
    // Another MX that could not be looked up might have a good address: wait, never
    // bounce; one that is known to have none changes nothing.
    assert_eq!(
        outcome(&reports[&2]).disposition,
        Disposition::Transient,
        "{:?}",
        reports[&2]
    );
    assert_eq!(outcome(&reports[&3]).disposition, Disposition::Permanent);
    assert_eq!(sinks[0].stats().connections, 1);
    h.engine.shutdown().await;
}

#[tokio::test]
async fn never_more_connections_than_the_cap() {
    let dns = DnsServer::start(records()).await.unwrap();
    let sink_config = SinkConfig {
        slow_delay: Duration::from_millis(10),
        ..SinkConfig::default()
    };
    let (sinks, port) = sinks(&[IP3], sink_config).await;
    let mut config = engine_config(port);
    config.smtp.max_connections_per_site = 3;
    config.smtp.max_messages_per_connection = 7;
    config.smtp.batch_size = 2;
    let mut h = start(&dns, config, true);
    let list: Vec<(u32, String)> = (0..60)
        .map(|i| (i, format!("slow{i}@implicit.test")))
        .collect();
    let reports = h.send(&list).await;
    assert!(
        reports
            .values()
            .all(|r| outcome(r).disposition == Disposition::Delivered)
    );
    h.engine.shutdown().await;
    let stats = sinks[0].stats();
    assert!(
        stats.peak_connections <= 3,
        "peak {} connections",
        stats.peak_connections
    );
    assert!(
        stats.connections >= 60 / 7,
        "connections are replaced after 7 messages: {}",
        stats.connections
    );
    assert_eq!(
        stats.quits, stats.connections,
        "every connection ended with QUIT"
    );
}

#[tokio::test]
async fn a_421_throttles_that_site_only() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (sinks, port) = sinks(&[IP3, IP4], SinkConfig::default()).await;
    let mut config = engine_config(port);
    config.smtp.throttle_pause = Duration::from_millis(1500);
    let mut h = start(&dns, config, true);
    let first = h.send(&[(0, "bye@implicit.test")]).await;
    let bye = outcome(&first[&0]);
    assert!(bye.throttle && bye.is_transient(), "{bye:?}");
    let throttled_at = Instant::now();
    for i in 1..=5 {
        h.engine
            .submit(delivery(i, &format!("ok{i}@implicit.test")))
            .await
            .unwrap();
        h.engine
            .submit(delivery(100 + i, &format!("ok{i}@prefs.test")))
            .await
            .unwrap();
    }
    let mut arrivals = Vec::new();
    for _ in 0..10 {
        let report = tokio::time::timeout(Duration::from_secs(30), h.reports.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            outcome(&report).disposition,
            Disposition::Delivered,
            "nothing bounces: {report:?}"
        );
        arrivals.push((report.key, throttled_at.elapsed()));
    }
    let last_other = arrivals
        .iter()
        .filter(|(k, _)| *k > 100)
        .map(|(_, t)| *t)
        .max()
        .unwrap();
    let first_throttled = arrivals
        .iter()
        .filter(|(k, _)| *k < 100)
        .map(|(_, t)| *t)
        .min()
        .unwrap();
    assert!(
        last_other < first_throttled,
        "the other site was not held up: {arrivals:?}"
    );
    assert!(
        first_throttled >= Duration::from_millis(1400),
        "the throttled site paused: {arrivals:?}"
    );
    assert_eq!(
        (sinks[0].stats().messages, sinks[1].stats().messages),
        (5, 5)
    );
    let text = h.metrics.render_prometheus();
    assert!(
        text.contains("volley_site_throttled_total{site=\"implicit.test\"} 1"),
        "{text}"
    );
    h.engine.shutdown().await;
}

/// Runs deliveries through the engine with the retry schedule, as the dispatcher
/// does with the queue, until every one is decided.
async fn with_retries(
    h: &mut Harness,
    retry: &RetryConfig,
    list: &[(u32, &str)],
) -> HashMap<u32, (Decision, u32)> {
    let created = SystemTime::now();
    let mut attempts: HashMap<u32, u32> = HashMap::new();
    let mut decided = HashMap::new();
    let mut pending: Vec<(u32, String)> = list.iter().map(|(k, t)| (*k, t.to_string())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pending.is_empty() && Instant::now() < deadline {
        let reports = h.send(&pending).await;
        let mut again = Vec::new();
        let mut wake = SystemTime::now();
        for (key, to) in pending {
            let n = attempts.entry(key).or_default();
            *n += 1;
            let decision = retry.decide(outcome(&reports[&key]), *n, created, SystemTime::now());
            match decision {
                Decision::RetryAt(at) => {
                    wake = wake.max(at);
                    again.push((key, to));
                }
                other => {
                    decided.insert(key, (other, *n));
                }
            }
        }
        if let Ok(wait) = wake.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        pending = again;
    }
    decided
}

#[tokio::test]
async fn tempfail_is_retried_then_delivered_and_old_messages_expire() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (_sinks, port) = sinks(&[IP3], SinkConfig::default()).await;
    let mut h = start(&dns, engine_config(port), true);
    let retry = RetryConfig {
        schedule: vec![Duration::from_millis(50)],
        max_age: Duration::from_millis(400),
        jitter: 0.0,
    };
    let decided = with_retries(
        &mut h,
        &retry,
        &[
            (1, "tempfail-2-a@implicit.test"),
            (2, "tempfail-1000-b@implicit.test"),
            (3, "permfail@implicit.test"),
        ],
    )
    .await;
    assert_eq!(
        decided[&1],
        (Decision::Delivered, 3),
        "two tempfails, then delivered"
    );
    assert_eq!(decided[&2].0, Decision::Expire, "expired after max_age");
    assert_eq!(decided[&3], (Decision::Bounce, 1));
    h.engine.shutdown().await;
}

#[tokio::test]
async fn rate_limits_hold_in_every_second_at_the_receiver() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (sinks, port) = sinks(&[IP3], SinkConfig::default()).await;
    let limits = LimitsConfig {
        per_site: "20/s".parse().unwrap(),
        global: "10/s".parse().unwrap(),
        ..LimitsConfig::default()
    };
    let mut smtp = smtp(port);
    smtp.max_connections_per_site = 2;
    smtp.batch_size = 16;
    let mut h = start(
        &dns,
        EngineConfig {
            smtp,
            limits,
            ..EngineConfig::default()
        },
        true,
    );
    let list: Vec<(u32, String)> = (0..35)
        .map(|i| (i, format!("u{i}@implicit.test")))
        .collect();
    let started = Instant::now();
    let reports = h.send(&list).await;
    let elapsed = started.elapsed();
    assert!(
        reports
            .values()
            .all(|r| outcome(r).disposition == Disposition::Delivered)
    );
    let stats = sinks[0].stats();
    assert_eq!(stats.messages, 35);
    // The tighter limit (10/s, global) rules: the receiver never sees more than the
    // rate plus one message per connection in any second, however the batches of 16
    // were cut.
    assert!(
        stats.peak_one_second <= 10 + 2,
        "{} messages in one second under 10/s",
        stats.peak_one_second
    );
    assert!(
        elapsed >= Duration::from_millis(3000),
        "35 messages at 10/s took only {elapsed:?}"
    );
    h.engine.shutdown().await;
}

#[tokio::test]
async fn relay_mode_with_auth_over_starttls() {
    let dns = DnsServer::start(records()).await.unwrap();
    let sink_config = SinkConfig {
        auth: Some(("relay".into(), "pw".into())),
        capture: true,
        ..SinkConfig::default()
    };
    let (sinks, port) = sinks(&[IP3], sink_config).await;
    let relay = RelayConfig {
        host: format!("127.0.0.3:{port}"),
        tls: RelayTls::Starttls,
        username: "relay".into(),
        password: "pw".into(),
        ..RelayConfig::default()
    };
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), sinks[0].ca_pem()).unwrap();
    let mut config = EngineConfig {
        smtp: smtp(25),
        relay,
        ..EngineConfig::default()
    };
    config.smtp.ca_file = Some(ca.path().to_path_buf());
    config.smtp.tls = TlsPolicy::Opportunistic;
    let mut h = start(&dns, config, false);
    // Any domain, even one that does not exist: the relay takes everything.
    let reports = h
        .send(&[(1, "a@nosuchdomain.test"), (2, "b@example.org")])
        .await;
    for report in reports.values() {
        assert_eq!(
            outcome(report).disposition,
            Disposition::Delivered,
            "{report:?}"
        );
        assert_eq!(
            report.site.as_deref(),
            Some(format!("relay:127.0.0.3:{port}").as_str())
        );
    }
    let messages = sinks[0].messages();
    assert!(
        messages
            .iter()
            .all(|m| m.tls && m.authenticated.as_deref() == Some("relay"))
    );
    h.engine.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_and_hands_back_the_rest() {
    let dns = DnsServer::start(records()).await.unwrap();
    let sink_config = SinkConfig {
        slow_delay: Duration::from_millis(30),
        ..SinkConfig::default()
    };
    let (sinks, port) = sinks(&[IP3], sink_config).await;
    let mut config = engine_config(port);
    config.smtp.max_connections_per_site = 2;
    config.smtp.batch_size = 4;
    let Harness {
        engine,
        mut reports,
        ..
    } = start(&dns, config, true);
    for i in 0..200 {
        engine
            .submit(delivery(i, &format!("slow{i}@implicit.test")))
            .await
            .unwrap();
    }
    // Shut down once the first messages are through: some are in flight, most wait.
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while sinks[0].stats().messages == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    first.await.expect("the sink receives the first messages");
    engine.shutdown().await;
    let mut delivered = 0;
    let mut unsent = 0;
    let mut seen = std::collections::HashSet::new();
    while let Ok(report) = reports.try_recv() {
        assert!(seen.insert(report.key));
        match &report.outcome {
            Some(o) if o.disposition == Disposition::Delivered => delivered += 1,
            None => unsent += 1,
            Some(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen.len(), 200, "every delivery reported exactly once");
    assert!(
        delivered > 0 && unsent > 0,
        "{delivered} delivered, {unsent} handed back"
    );
    let stats = sinks[0].stats();
    assert_eq!(
        stats.messages, delivered,
        "the sink saw exactly what was reported delivered"
    );
    assert_eq!(
        stats.quits, stats.connections,
        "every connection ended with QUIT"
    );
}

#[tokio::test]
async fn a_stop_does_not_wait_for_rate_permits() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (sinks, port) = sinks(&[IP3], SinkConfig::default()).await;
    let mut config = engine_config(port);
    config.limits.global = "1/h".parse().unwrap();
    let Harness {
        engine,
        mut reports,
        ..
    } = start(&dns, config, true);
    for i in 0..5 {
        engine
            .submit(delivery(i, &format!("r{i}@implicit.test")))
            .await
            .unwrap();
    }
    let first = tokio::time::timeout(Duration::from_secs(20), async {
        while sinks[0].stats().messages == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    first.await.expect("the first message goes at once");
    // The other four wait an hour for their permits: a stop hands them back now.
    tokio::time::timeout(Duration::from_secs(20), engine.shutdown())
        .await
        .expect("the stop does not wait for rate permits");
    let mut outcomes = Vec::new();
    while let Ok(report) = reports.try_recv() {
        outcomes.push(report.outcome.map(|o| o.disposition));
    }
    outcomes.sort_by_key(Option::is_some);
    assert_eq!(
        outcomes,
        [None, None, None, None, Some(Disposition::Delivered)],
        "one delivered, four handed back"
    );
}

#[tokio::test]
async fn phases_are_timed() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (_sinks, port) = sinks(&[IP3], SinkConfig::default()).await;
    let mut h = start(&dns, engine_config(port), true);
    h.send(&[(1, "a@implicit.test"), (2, "b@implicit.test")])
        .await;
    h.engine.shutdown().await;
    use volley::metrics::Stage;
    for stage in [
        Stage::Dns,
        Stage::Connect,
        Stage::Tls,
        Stage::Ehlo,
        Stage::Transaction,
        Stage::Delivery,
        Stage::QueueWait,
    ] {
        assert!(h.metrics.percentiles(stage).count > 0, "{stage:?} recorded");
    }
    assert!(
        h.metrics
            .render_prometheus()
            .contains("volley_deliveries_total{outcome=\"delivered\"} 2")
    );
}

#[tokio::test]
async fn opportunistic_tls_falls_back_to_clear_text_when_the_handshake_fails() {
    let dns = DnsServer::start(records()).await.unwrap();
    let sink_config = SinkConfig {
        broken_tls: true,
        capture: true,
        ..SinkConfig::default()
    };
    let (sinks, port) = sinks(&[IP3], sink_config).await;
    let mut h = start(&dns, engine_config(port), true);
    let reports = h.send(&[(1, "a@implicit.test")]).await;
    assert_eq!(
        outcome(&reports[&1]).disposition,
        Disposition::Delivered,
        "{:?}",
        reports[&1]
    );
    let messages = sinks[0].messages();
    assert_eq!(messages.len(), 1);
    assert!(
        !messages[0].tls,
        "delivered in clear text after the failed handshake"
    );
    h.engine.shutdown().await;

    // Required TLS never falls back: the message waits.
    let mut config = engine_config(port);
    config.smtp.tls = TlsPolicy::Required;
    let mut h = start(&dns, config, true);
    let reports = h.send(&[(2, "b@implicit.test")]).await;
    let deferred = outcome(&reports[&2]);
    assert!(
        deferred.is_transient() && deferred.is_connection_level(),
        "{deferred:?}"
    );
    assert_eq!(
        sinks[0].messages().len(),
        1,
        "nothing sent in clear text under required"
    );
    h.engine.shutdown().await;
}

const FAR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// `far.test`'s MX, on 127.0.0.6: a sink seen through a proxy that holds every byte
/// `rtt / 2` each way, or (`rtt` zero) the sink itself. Returns the sink, the proxy
/// and the port to reach the MX on.
async fn far_site(
    rtt: Duration,
    chunking: bool,
) -> (Sink, Option<volley_loadtest::proxy::DelayProxy>, u16) {
    let sink_ip = if rtt.is_zero() { FAR } else { IP3 };
    let sink = Sink::start(SinkConfig {
        listen: vec![SocketAddr::from((sink_ip, 0))],
        chunking,
        track_recipients: true,
        ..SinkConfig::default()
    })
    .await
    .unwrap();
    let target = sink.addrs()[0];
    if rtt.is_zero() {
        return (sink, None, target.port());
    }
    let proxy = volley_loadtest::proxy::DelayProxy::start(SocketAddr::from((FAR, 0)), target, rtt)
        .await
        .unwrap();
    let port = proxy.addr().port();
    (sink, Some(proxy), port)
}

fn far_records() -> DnsRecords {
    DnsRecords::new()
        .ttl(60)
        .mx("far.test", 10, "mx.far.test")
        .a("mx.far.test", FAR)
}

/// Sends `n` deliveries to far.test on at most two connections of at most `per_connection`
/// messages; returns the site's window at the end and the sink's counters.
async fn send_far(
    rtt: Duration,
    chunking: bool,
    n: u32,
    per_connection: u64,
) -> (u64, volley_loadtest::Stats) {
    let dns = DnsServer::start(far_records()).await.unwrap();
    let (sink, _proxy, port) = far_site(rtt, chunking).await;
    let mut config = engine_config(port);
    config.smtp.max_connections_per_site = 2;
    config.smtp.max_messages_per_connection = per_connection;
    let mut h = start(&dns, config, true);
    let list: Vec<(u32, String)> = (0..n).map(|i| (i, format!("r{i}@far.test"))).collect();
    let reports = h.send(&list).await;
    assert!(
        reports
            .values()
            .all(|r| outcome(r).disposition == Disposition::Delivered),
        "every recipient delivered"
    );
    h.engine.shutdown().await;
    let site = h.metrics.site(&Arc::from("mx.far.test"));
    let window = site.window.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        h.metrics.render_prometheus().contains(&format!(
            "volley_site_window{{site=\"mx.far.test\"}} {window}"
        )),
        "the window is in /metrics"
    );
    let stats = sink.stats();
    sink.shutdown().await;
    (window, stats)
}

#[tokio::test]
async fn over_a_long_round_trip_the_bdat_window_grows_and_connections_keep_their_limit() {
    let (window, stats) = send_far(Duration::from_millis(20), true, 600, 40).await;
    assert_eq!(
        window, 64,
        "a 20 ms round trip the server keeps up with: the window grows to max_pipeline"
    );
    assert_eq!(stats.messages, 600, "each message once");
    assert_eq!(stats.recipients_accepted, 600);
    assert!(
        stats.connections >= 600 / 40,
        "no connection carried more than max_messages_per_connection (40): {} connections",
        stats.connections
    );
}

// That a short round trip keeps the window at its start is tested on the window itself
// (`a_short_round_trip_keeps_the_window_at_its_start`): end to end on loopback it would
// depend on how busy the machine is (a loaded one makes loopback round trips longer
// than 2 ms, and CI once saw the window grow).
#[tokio::test]
async fn with_data_the_window_stays_at_the_batch() {
    let (window, stats) = send_far(Duration::from_millis(20), false, 120, 1000).await;
    assert_eq!(
        window, 16,
        "DATA carries one message per round trip whatever the window"
    );
    assert_eq!(stats.messages, 120);
}

fn egress(text: &str) -> volley::engine::EgressConfig {
    toml::from_str(text).expect("a valid [egress] section")
}

#[tokio::test]
async fn egress_pools_bind_their_addresses_in_turn_with_their_own_names() {
    let dns = DnsServer::start(records()).await.unwrap();
    let sink_config = SinkConfig {
        capture: true,
        ..SinkConfig::default()
    };
    let (sinks, port) = sinks(&[IP3], sink_config).await;
    let mut config = engine_config(port);
    // Five messages per connection: the bulk pool needs several, from both addresses.
    config.smtp.max_messages_per_connection = 5;
    config.smtp.batch_size = 5;
    config.egress = egress(
        r#"
        [pools.bulk]
        addresses = [{ address = "127.0.0.20", helo_name = "bulk1.volley.test" }, "127.0.0.21"]
        [pools.tx]
        addresses = [{ address = "127.0.0.22", helo_name = "tx.volley.test" }]
        "#,
    );
    let mut h = start(&dns, config, true);
    let pools = [("bulk", 30), ("tx", 6), ("default", 6)];
    let mut key = 0;
    for (pool, n) in pools {
        for i in 0..n {
            let mut d = delivery(key, &format!("{pool}{i}@implicit.test"));
            d.pool = (pool != "default").then(|| Arc::from(pool));
            h.engine.submit(d).await.unwrap();
            key += 1;
        }
    }
    let mut gone = delivery(key, "gone@implicit.test");
    gone.pool = Some(Arc::from("gone"));
    h.engine.submit(gone).await.unwrap();
    let reports = h.collect(43).await;
    let gone = &reports[&key];
    assert_eq!(outcome(gone).disposition, Disposition::Transient);
    assert!(
        outcome(gone).detail.contains("egress pool \"gone\""),
        "{gone:?}"
    );
    for report in reports.values().filter(|r| r.key != key) {
        assert_eq!(outcome(report).disposition, Disposition::Delivered);
        let via = report.via.as_ref().expect("how it left is reported");
        let pool = report
            .to
            .as_str()
            .trim_end_matches(|c: char| !c.is_alphabetic());
        let pool = pool.split(|c: char| c.is_ascii_digit()).next().unwrap();
        assert_eq!(&*via.pool, pool, "{report:?}");
        assert!(
            via.encrypted && via.tls == TlsPolicy::Opportunistic,
            "{via:?}"
        );
    }
    h.engine.shutdown().await;
    let mut seen: HashMap<&str, std::collections::BTreeSet<(String, String)>> = HashMap::new();
    let messages = sinks[0].messages();
    for m in &messages {
        let pool = ["bulk", "tx", "default"]
            .into_iter()
            .find(|p| m.rcpt_to[0].starts_with(p))
            .unwrap();
        assert!(m.tls, "STARTTLS, as reported");
        let peer = m.peer.expect("the sink saw the client's address").ip();
        seen.entry(pool)
            .or_default()
            .insert((peer.to_string(), m.helo.clone()));
    }
    assert_eq!(messages.len(), 42, "nothing from the unknown pool");
    let pairs = |list: &[(&str, &str)]| {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        seen["bulk"],
        pairs(&[
            ("127.0.0.20", "bulk1.volley.test"),
            ("127.0.0.21", "volley.test")
        ]),
        "both addresses in turn, each with its own name"
    );
    assert_eq!(seen["tx"], pairs(&[("127.0.0.22", "tx.volley.test")]));
    assert_eq!(
        seen["default"],
        pairs(&[("127.0.0.1", "volley.test")]),
        "the default pool lets the system choose"
    );
    // One site per pool: limits, caps and throttles apply to each on its own.
    let sites: Vec<String> = h_sites(&h.metrics);
    for site in [
        "implicit.test",
        "implicit.test via bulk",
        "implicit.test via tx",
    ] {
        assert!(sites.iter().any(|s| s == site), "{site} in {sites:?}");
    }
}

fn h_sites(metrics: &Metrics) -> Vec<String> {
    metrics
        .sites()
        .into_iter()
        .map(|(site, _)| site.to_string())
        .collect()
}

#[tokio::test]
async fn a_warm_up_step_caps_its_pool_from_its_date_on() {
    let dns = DnsServer::start(records()).await.unwrap();
    let (sinks, port) = sinks(&[IP3], SinkConfig::default()).await;
    let mut config = engine_config(port);
    config.egress = egress(
        r#"
        [pools.warming]
        warmup = [["2020-01-01", "1/d"]]
        [pools.later]
        warmup = [["2999-01-01", "1/d"]]
        "#,
    );
    let mut h = start(&dns, config, true);
    for (key, pool) in [(0, "warming"), (1, "warming"), (2, "warming")]
        .into_iter()
        .chain([(3, "later"), (4, "later"), (5, "later")])
    {
        let mut d = delivery(key, &format!("{pool}{key}@implicit.test"));
        d.pool = Some(Arc::from(pool));
        h.engine.submit(d).await.unwrap();
    }
    // One of the capped pool's and all of the other's go; then the engine stops.
    let first = h.collect(4).await;
    assert!(first.values().all(|r| {
        r.outcome
            .as_ref()
            .is_some_and(|o| o.disposition == Disposition::Delivered)
    }));
    assert_eq!(
        first.keys().filter(|k| **k < 3).count(),
        1,
        "one message a day from the warming pool"
    );
    let (engine, mut reports) = (h.engine, h.reports);
    engine.shutdown().await;
    let mut held = 0;
    while let Ok(report) = reports.try_recv() {
        assert!(
            report.outcome.is_none(),
            "handed back unattempted: {report:?}"
        );
        held += 1;
    }
    assert_eq!(held, 2, "the warming pool's other two wait for their turn");
    assert_eq!(sinks[0].stats().messages, 4);
}

fn provider_records() -> DnsRecords {
    // Two domains, two MX names (two sites), one machine: one sink sees both.
    DnsRecords::new()
        .ttl(60)
        .mx("a.test", 10, "mx1.corp.test")
        .mx("b.test", 10, "mx2.corp.test")
        .a("mx1.corp.test", IP3)
        .a("mx2.corp.test", IP3)
}

fn corp_shaping(extra: &str) -> volley::engine::ShapingConfig {
    toml::from_str(&format!(
        "[providers.corp]\nmx_suffixes = [\"corp.test\"]\nconnections = 2\nmessages_per_connection = 3\n{extra}"
    ))
    .unwrap()
}

#[tokio::test]
async fn a_provider_s_limits_hold_for_all_its_sites_together() {
    let dns = DnsServer::start(provider_records()).await.unwrap();
    let sink_config = SinkConfig {
        slow_delay: Duration::from_millis(10),
        ..SinkConfig::default()
    };
    let (sinks, port) = sinks(&[IP3], sink_config).await;
    let mut config = engine_config(port);
    config.smtp.batch_size = 2;
    config.shaping = corp_shaping("");
    let mut h = start(&dns, config, true);
    let list: Vec<(u32, String)> = (0..60)
        .map(|i| {
            (
                i,
                format!("slow{i}@{}", if i % 2 == 0 { "a.test" } else { "b.test" }),
            )
        })
        .collect();
    let reports = h.send(&list).await;
    assert!(
        reports
            .values()
            .all(|r| outcome(r).disposition == Disposition::Delivered)
    );
    let sites = h_sites(&h.metrics);
    assert!(
        sites.contains(&"mx1.corp.test".to_owned()) && sites.contains(&"mx2.corp.test".to_owned()),
        "{sites:?}"
    );
    let text = h.metrics.render_prometheus();
    assert!(
        text.contains("volley_site_provider{site=\"mx1.corp.test\",provider=\"corp\"} 1"),
        "{text}"
    );
    let site = h.metrics.site(&Arc::from("mx2.corp.test"));
    assert_eq!(site.domains(), ["b.test"]);
    h.engine.shutdown().await;
    let stats = sinks[0].stats();
    assert!(
        stats.peak_connections <= 2,
        "two sites, one provider: at most its 2 connections, saw {}",
        stats.peak_connections
    );
    assert!(
        stats.connections >= 20,
        "3 messages per connection: {} connections for 60",
        stats.connections
    );
}

#[tokio::test]
async fn a_provider_reply_rule_pauses_every_site_of_the_provider() {
    let dns = DnsServer::start(provider_records()).await.unwrap();
    let (sinks, port) = sinks(&[IP3], SinkConfig::default()).await;
    let mut config = engine_config(port);
    config.shaping = corp_shaping(
        "rules = [{ match = \"4.3.0 temporary failure\", action = \"pause\", for = \"1h\" }]",
    );
    let mut h = start(&dns, config, true);
    let first = h.send(&[(0, "tempfail@a.test")]).await;
    assert_eq!(outcome(&first[&0]).disposition, Disposition::Transient);
    // The other site of the provider waits out the provider's pause.
    for key in 1..4 {
        h.engine
            .submit(delivery(key, &format!("u{key}@b.test")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.reports.try_recv().is_err(), "nothing sent while paused");
    let (engine, mut reports) = (h.engine, h.reports);
    engine.shutdown().await;
    let mut held = 0;
    while let Ok(report) = reports.try_recv() {
        assert!(
            report.outcome.is_none(),
            "handed back unattempted: {report:?}"
        );
        held += 1;
    }
    assert_eq!(held, 3);
    assert_eq!(sinks[0].stats().messages, 0);
}
