//! The sequence of one run: sink, DNS, volley; submit; wait while sampling; read the metrics
//! and the event log; stop volley; the references; stop the sink; judge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::children::{SinkProcess, VolleyProcess};
use super::events::{self, EventsSummary, unix_seconds};
use super::http::Client;
use super::metrics::{self, Scraped};
use super::process::{cpu_seconds, memory, tail};
use super::report::{Check, Counts, Reference, Report, SinkUsage, VolleyUsage, WanBound};
use super::setup::{
    ConfigInputs, TempDir, dns_records, redis_cleanup, redis_cpu_seconds, volley_toml,
};
use super::workload::{address, campaign_body, sink_permfails, write_template};
use super::{
    CAMPAIGN_CHUNK, EVENTS_LIMIT, LoadError, LoadOptions, QueueBackend, REFERENCE_CONNECTIONS,
};
use crate::DnsServer;
use crate::blast::{BlastConfig, blast, build_body};
use crate::proxy::{DelayProxy, Lateness};

/// How often job states are polled while waiting.
const POLL: Duration = Duration::from_millis(50);
/// How often volley's RSS is sampled.
const RSS_SAMPLE: Duration = Duration::from_millis(200);

/// One campaign request and what became of it.
#[derive(Debug, Clone)]
struct Job {
    id: String,
    /// When its POST started (wall clock, for the event timestamps).
    submitted: SystemTime,
    /// When its POST started.
    posted_at: Instant,
    /// When it was first seen with nothing queued or deferred.
    done_at: Option<Instant>,
    counts: Counts,
}

/// What was measured while volley worked.
#[derive(Debug, Default)]
struct Measured {
    jobs: Vec<Job>,
    submit_seconds: f64,
    elapsed_seconds: f64,
    volley: VolleyUsage,
    sink_cpu: f64,
    metrics: Scraped,
}

/// Prints a progress line on stderr when asked to.
fn say(options: &LoadOptions, message: impl std::fmt::Display) {
    if options.progress {
        eprintln!("volley-load: {message}");
    }
}

/// The whole run (the caller bounds it with the timeout).
pub(super) async fn run(options: &LoadOptions) -> Result<Report, LoadError> {
    let deadline = Instant::now() + options.timeout;
    let load_before = load_average();
    let tmp = TempDir::create(options.keep_temp)?;
    let sink = SinkProcess::start(options, &tmp.path().join("sink.log")).await?;
    say(
        options,
        format_args!(
            "sink on {} address(es), port {}",
            sink.addrs().len(),
            sink.addrs()[0].port()
        ),
    );
    // With a round trip to simulate, everything reaches the sink through delaying
    // proxies on the addresses DNS gives, at one port of their own.
    let proxies = match options.rtt {
        Some(rtt) => start_proxies(sink.addrs(), rtt).await?,
        None => Vec::new(),
    };
    let front: Vec<SocketAddr> = if proxies.is_empty() {
        sink.addrs().to_vec()
    } else {
        proxies.iter().map(DelayProxy::addr).collect()
    };
    let dns = DnsServer::start(dns_records(options.domains, options.sink_addresses))
        .await
        .map_err(LoadError::io("cannot start the DNS server"))?;
    let templates = match &options.template {
        Some(_) => options.repo_dir.join("templates"),
        None => {
            let dir = tmp.path().join("templates");
            write_template(&dir)?;
            dir
        }
    };
    let prefix = format!(
        "volley-load-{}-{}",
        std::process::id(),
        unix_seconds(SystemTime::now()) as u64
    );
    // Declared before volley, so that on a timeout volley is killed before the keys go.
    let redis = (options.backend == QueueBackend::Redis)
        .then(|| RedisKeys::new(&options.redis_url, &prefix));
    let data = tmp.path().join("data");
    let volley = VolleyProcess::start(options, tmp.path(), |listen| {
        volley_toml(
            options,
            &ConfigInputs {
                listen,
                sink_port: front[0].port(),
                dns: dns.addr(),
                templates: &templates,
                data: &data,
                redis_prefix: &prefix,
            },
        )
    })
    .await?;
    say(
        options,
        format_args!(
            "volley serve (pid {}) healthy; submitting {} recipients",
            volley.pid(),
            options.recipients
        ),
    );

    let measured = measure(options, &volley, &sink, deadline).await?;
    // volley's traffic alone: the references go through the same proxies later.
    let lateness = proxies
        .iter()
        .map(DelayProxy::lateness)
        .fold(Lateness::default(), Lateness::plus);
    let events = read_events(options, volley.client, &measured, deadline).await?;
    let volley_log = volley.log.clone();
    let stopped = volley.stop().await;
    let mut notes = vec![format!(
        "load average (1 min) before the run {load_before}, at the end {}",
        load_average()
    )];
    let faults = options.tempfail_percent > 0.0 || options.permfail_percent > 0.0;
    let (ceiling, naive) = if !options.references || options.queue_only {
        (None, None)
    } else if faults {
        notes.push("references skipped: the sink's injected failures would stop them".into());
        (None, None)
    } else {
        match references(options, &sink, front[0]).await {
            Ok(refs) => refs,
            Err(e) => {
                notes.push(format!("references failed: {e}"));
                (None, None)
            }
        }
    };
    drop(proxies);
    let raw = sink.stop().await?;
    dns.shutdown().await;

    if let Some(redis) = redis {
        notes.push(redis.clean());
    }
    if events.is_none() && !options.queue_only {
        notes.push(format!(
            "event log not read (more than {EVENTS_LIMIT} recipients): no per-recipient check, no own latency"
        ));
    }
    let sink_usage = sink_usage(
        raw,
        ceiling.as_ref(),
        naive.as_ref(),
        measured.sink_cpu,
        options.size,
    );
    let stopped_ok = stopped.is_some_and(|s| s.success());
    if !stopped_ok {
        notes.push(format!(
            "volley's last log lines:\n{}",
            tail(&volley_log, 20)
        ));
    }
    let counts = total(&measured.jobs);
    let checks = checks(options, &counts, &sink_usage, events.as_ref(), stopped_ok);
    let handled = counts.delivered + counts.bounced;
    let wan = options
        .rtt
        .map(|rtt| wan_bound(options, rtt, measured.metrics.window, lateness));
    let messages_per_second = if options.queue_only {
        0.0
    } else {
        handled as f64 / measured.elapsed_seconds.max(f64::MIN_POSITIVE)
    };
    Ok(Report {
        settings: settings(options),
        jobs: measured.jobs.len(),
        counts,
        submit_seconds: measured.submit_seconds,
        elapsed_seconds: measured.elapsed_seconds,
        messages_per_second,
        metrics: measured.metrics,
        events,
        volley: measured.volley,
        sink: sink_usage,
        wan,
        ceiling,
        naive,
        checks,
        notes,
    })
}

/// Tries at a common port for the delaying proxies.
const PROXY_ATTEMPTS: usize = 10;

/// Delaying proxies in front of each sink address, all at one free port.
async fn start_proxies(sink: &[SocketAddr], rtt: Duration) -> Result<Vec<DelayProxy>, LoadError> {
    'attempt: for _ in 0..PROXY_ATTEMPTS {
        let first = DelayProxy::start(SocketAddr::new(sink[0].ip(), 0), sink[0], rtt)
            .await
            .map_err(LoadError::io("cannot start the delaying proxy"))?;
        let port = first.addr().port();
        let mut proxies = vec![first];
        for addr in &sink[1..] {
            match DelayProxy::start(SocketAddr::new(addr.ip(), port), *addr, rtt).await {
                Ok(proxy) => proxies.push(proxy),
                // Taken on this address: another port for all.
                Err(_) => continue 'attempt,
            }
        }
        return Ok(proxies);
    }
    Err(LoadError::Process(format!(
        "no common free port for the delaying proxies after {PROXY_ATTEMPTS} attempts"
    )))
}

/// The most a sender can do over the simulated network: each of volley's connections
/// completes one round trip's worth of transactions per round trip — its window with
/// CHUNKING (the one it reached, as its `/metrics` said at the end; its start when it
/// said nothing), one message with DATA (the end of one message and the next envelope
/// share a write; the 354 costs nothing more only when it is pipelined too).
///
/// The proxy's timers deliver late by a millisecond or so each way; the bound is also
/// given at the round trip it really imposed (nominal + twice its mean lateness).
fn wan_bound(options: &LoadOptions, rtt: Duration, window: u64, late: Lateness) -> WanBound {
    let connections = u64::from(options.domains) * options.concurrency as u64;
    let window = if window == 0 {
        options.batch_size as u64
    } else {
        window
    };
    let per_round_trip = if options.chunking { window } else { 1 };
    let effective = rtt + late.mean() * 2;
    WanBound {
        rtt_ms: rtt.as_secs_f64() * 1000.0,
        connections,
        per_round_trip,
        messages_per_second: (connections * per_round_trip) as f64 / rtt.as_secs_f64(),
        effective_rtt_ms: effective.as_secs_f64() * 1000.0,
        effective_per_second: (connections * per_round_trip) as f64 / effective.as_secs_f64(),
    }
}

/// Submits, waits for every job (or, queue-only, lets volley settle), sampling RSS and CPU.
async fn measure(
    options: &LoadOptions,
    volley: &VolleyProcess,
    sink: &SinkProcess,
    deadline: Instant,
) -> Result<Measured, LoadError> {
    let pid = volley.pid();
    let sampler = RssSampler::start(pid, options.timeout);
    let cpu0 = cpu_seconds(pid).unwrap_or(0.0);
    let sink_cpu0 = cpu_seconds(sink.pid()).unwrap_or(0.0);
    let redis = options.backend == QueueBackend::Redis;
    let redis_cpu0 = redis
        .then(|| redis_cpu_seconds(&options.redis_url))
        .flatten();
    let mut jobs = submit_all(volley.client, options, deadline).await?;
    let first = jobs.first().map_or_else(Instant::now, |j| j.posted_at);
    let submit_seconds = first.elapsed().as_secs_f64();
    let rss_after_submit = memory(pid).map_or(0, |m| m.rss);
    say(
        options,
        format_args!(
            "{} campaign(s) accepted in {submit_seconds:.2} s",
            jobs.len()
        ),
    );
    if options.queue_only {
        // Let volley settle with the whole queue held, sampling RSS meanwhile.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for job in &mut jobs {
            job.counts = job_counts(volley.client, &job.id).await?;
        }
    } else {
        wait_done(volley.client, &mut jobs, options, deadline).await?;
    }
    let end = jobs
        .iter()
        .filter_map(|j| j.done_at)
        .max()
        .unwrap_or_else(Instant::now);
    let cpu_seconds_used = cpu_seconds(pid).unwrap_or(0.0) - cpu0;
    let sink_cpu = cpu_seconds(sink.pid()).unwrap_or(0.0) - sink_cpu0;
    let redis_cpu =
        redis_cpu0.and_then(|before| Some(redis_cpu_seconds(&options.redis_url)? - before));
    let text = volley
        .client
        .get("/metrics", Duration::from_secs(30))
        .await?
        .text();
    let hwm = memory(pid).map_or(0, |m| m.hwm);
    let peak_rss = sampler.finish().max(rss_after_submit);
    let handled: u64 = jobs
        .iter()
        .map(|j| j.counts.delivered + j.counts.bounced)
        .sum();
    let per = if options.queue_only {
        options.recipients
    } else {
        handled
    };
    Ok(Measured {
        submit_seconds,
        elapsed_seconds: end.saturating_duration_since(first).as_secs_f64(),
        volley: VolleyUsage {
            cpu_seconds: cpu_seconds_used,
            cpu_per_10k: cpu_seconds_used / per.max(1) as f64 * 10_000.0,
            peak_rss,
            hwm,
            rss_after_submit,
            redis_cpu_seconds: redis_cpu,
        },
        sink_cpu,
        metrics: metrics::parse(&text),
        jobs,
    })
}

/// Posts the campaigns, 100k recipients each, one after the other.
async fn submit_all(
    client: Client,
    options: &LoadOptions,
    deadline: Instant,
) -> Result<Vec<Job>, LoadError> {
    // Queue-only runs hold everything for an hour: nothing becomes due during the run.
    let send_at = options
        .queue_only
        .then(|| unix_seconds(SystemTime::now()) as u64 + 3600);
    let mut jobs = Vec::new();
    let mut start = 0;
    while start < options.recipients {
        let end = (start + CAMPAIGN_CHUNK).min(options.recipients);
        let body = campaign_body(
            start..end,
            options.domains,
            options.template.as_deref(),
            options.size,
            send_at,
        );
        jobs.push(post_campaign(client, &body, end - start, options, deadline).await?);
        start = end;
    }
    Ok(jobs)
}

/// One `POST /v1/campaigns`, retried (within the deadline) while volley answers 429 or 503.
async fn post_campaign(
    client: Client,
    body: &str,
    recipients: u64,
    options: &LoadOptions,
    deadline: Instant,
) -> Result<Job, LoadError> {
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(LoadError::Timeout(options.timeout, "submitting".into()));
        }
        let submitted = SystemTime::now();
        let posted_at = Instant::now();
        let r = client
            .post_json(
                "/v1/campaigns",
                body.as_bytes(),
                remaining.min(Duration::from_secs(300)),
            )
            .await?;
        match r.status {
            202 => {
                let v = r.json()?;
                let id = v["id"].as_str().map(str::to_owned);
                let id = id.ok_or_else(|| LoadError::Api(format!("202 without an id: {v}")))?;
                if v["recipients"].as_u64() != Some(recipients) {
                    return Err(LoadError::Api(format!(
                        "asked for {recipients} recipients, got {v}"
                    )));
                }
                return Ok(Job {
                    id,
                    submitted,
                    posted_at,
                    done_at: None,
                    counts: Counts::default(),
                });
            }
            429 | 503 => tokio::time::sleep(Duration::from_secs(1)).await,
            status => {
                let text = r.text();
                let shown = &text[..text.len().min(500)];
                return Err(LoadError::Api(format!(
                    "POST /v1/campaigns answered {status}: {shown}"
                )));
            }
        }
    }
}

/// The counts of one job.
async fn job_counts(client: Client, id: &str) -> Result<Counts, LoadError> {
    let path = format!("/v1/jobs/{id}?limit=1");
    let r = client.get(&path, Duration::from_secs(30)).await?;
    if r.status != 200 {
        return Err(LoadError::Api(format!(
            "GET {path} answered {}: {}",
            r.status,
            r.text()
        )));
    }
    let v = r.json()?;
    let c = &v["counts"];
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    Ok(Counts {
        total: n("total"),
        queued: n("queued"),
        delivered: n("delivered"),
        deferred: n("deferred"),
        bounced: n("bounced"),
        expired: n("expired"),
        suppressed: n("suppressed"),
    })
}

/// Polls every job until none has anything queued or deferred.
async fn wait_done(
    client: Client,
    jobs: &mut [Job],
    options: &LoadOptions,
    deadline: Instant,
) -> Result<(), LoadError> {
    let mut last_progress = Instant::now();
    loop {
        for job in jobs.iter_mut().filter(|j| j.done_at.is_none()) {
            let asked = Instant::now();
            job.counts = job_counts(client, &job.id).await?;
            if job.counts.queued + job.counts.deferred == 0 {
                job.done_at = Some(asked);
            }
        }
        if jobs.iter().all(|j| j.done_at.is_some()) {
            return Ok(());
        }
        let c = total(jobs);
        if Instant::now() > deadline {
            return Err(LoadError::Timeout(
                options.timeout,
                format!("waiting for delivery ({c:?})"),
            ));
        }
        if last_progress.elapsed() >= Duration::from_secs(2) {
            last_progress = Instant::now();
            say(
                options,
                format_args!(
                    "delivered {} bounced {} deferred {} queued {}",
                    c.delivered, c.bounced, c.deferred, c.queued
                ),
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The counts of all jobs together.
fn total(jobs: &[Job]) -> Counts {
    jobs.iter().fold(Counts::default(), |mut t, j| {
        let c = &j.counts;
        t.total += c.total;
        t.queued += c.queued;
        t.delivered += c.delivered;
        t.deferred += c.deferred;
        t.bounced += c.bounced;
        t.expired += c.expired;
        t.suppressed += c.suppressed;
        t
    })
}

/// Reads the event log, unless the run is queue-only or too large for it.
async fn read_events(
    options: &LoadOptions,
    client: Client,
    measured: &Measured,
    deadline: Instant,
) -> Result<Option<EventsSummary>, LoadError> {
    if options.queue_only || options.recipients > EVENTS_LIMIT {
        return Ok(None);
    }
    let submitted: HashMap<String, SystemTime> = measured
        .jobs
        .iter()
        .map(|j| (j.id.clone(), j.submitted))
        .collect();
    say(options, "reading the event log");
    events::read(client, options, &submitted, deadline)
        .await
        .map(Some)
}

/// The naive client, then the ceiling, against the sink's first address.
async fn references(
    options: &LoadOptions,
    sink: &SinkProcess,
    target: SocketAddr,
) -> Result<(Option<Reference>, Option<Reference>), LoadError> {
    let naive_messages = options.naive_messages();
    say(
        options,
        format_args!("naive reference: {naive_messages} messages, new connection each"),
    );
    let naive = reference(options, sink.pid(), target, naive_messages, true).await?;
    // At least as many as the naive run, so its recipients are a subset of these.
    let ceiling_messages = options.recipients.max(naive_messages);
    say(
        options,
        format_args!("ceiling reference: {ceiling_messages} messages pipelined"),
    );
    let ceiling = reference(options, sink.pid(), target, ceiling_messages, false).await?;
    Ok((Some(ceiling), Some(naive)))
}

async fn reference(
    options: &LoadOptions,
    sink_pid: u32,
    target: SocketAddr,
    messages: u64,
    reconnect: bool,
) -> Result<Reference, LoadError> {
    let sink_cpu0 = cpu_seconds(sink_pid).unwrap_or(0.0);
    let connections = reference_connections(options);
    let report = blast(&BlastConfig {
        target,
        messages,
        connections,
        size: options.size,
        pipelining: !reconnect,
        reconnect,
    })
    .await?;
    Ok(Reference {
        messages: report.messages,
        connections: if reconnect {
            messages
        } else {
            connections as u64
        },
        elapsed_s: report.elapsed_s,
        messages_per_second: report.messages_per_second,
        client_cpu_seconds: report.cpu_seconds,
        sink_cpu_seconds: cpu_seconds(sink_pid).unwrap_or(0.0) - sink_cpu0,
    })
}

/// The references' connections: 50 on loopback; over a simulated network, as many as
/// volley may open, so that the comparison is per connection.
fn reference_connections(options: &LoadOptions) -> usize {
    if options.rtt.is_some() {
        (options.domains as usize).saturating_mul(options.concurrency)
    } else {
        REFERENCE_CONNECTIONS
    }
}

/// Bytes `volley-blast` sends for `messages` messages over `connections` connections.
fn blast_bytes(messages: u64, connections: u64, size: usize) -> u64 {
    let body = build_body(size).len() as u64;
    let session = b"EHLO blast.test\r\n".len() + b"QUIT\r\n".len();
    let envelope = b"MAIL FROM:<a@b>\r\nRCPT TO:<user@sink.test>\r\nDATA\r\n".len() as u64;
    let digits: u64 = (0..messages).map(|i| i.to_string().len() as u64).sum();
    connections * session as u64 + messages * (envelope + body) + digits
}

/// The sink's counters for volley's traffic: its whole report minus the references'.
fn sink_usage(
    raw: serde_json::Value,
    ceiling: Option<&Reference>,
    naive: Option<&Reference>,
    cpu_seconds: f64,
    size: usize,
) -> SinkUsage {
    let get = |k: &str| raw[k].as_u64().unwrap_or(0);
    let refs = [ceiling, naive];
    let messages: u64 = refs.iter().flatten().map(|r| r.messages).sum();
    let connections: u64 = refs.iter().flatten().map(|r| r.connections).sum();
    let bytes: u64 = refs
        .iter()
        .flatten()
        .map(|r| blast_bytes(r.messages, r.connections, size))
        .sum();
    SinkUsage {
        messages: get("messages").saturating_sub(messages),
        connections: get("connections").saturating_sub(connections),
        recipients_accepted: get("recipients_accepted").saturating_sub(messages),
        recipients_rejected: get("recipients_rejected"),
        bytes: get("bytes_received").saturating_sub(bytes),
        // The ceiling's recipients are distinct; the naive run repeats some of them.
        distinct_recipients: get("distinct_recipients")
            .saturating_sub(ceiling.map_or(0, |r| r.messages)),
        duplicate_deliveries: get("duplicate_deliveries")
            .saturating_sub(naive.map_or(0, |r| r.messages)),
        cpu_seconds,
        raw,
    }
}

/// The correctness checks.
fn checks(
    options: &LoadOptions,
    c: &Counts,
    sink: &SinkUsage,
    events: Option<&EventsSummary>,
    stopped_ok: bool,
) -> Vec<Check> {
    let m = options.recipients;
    let mut out = Vec::new();
    let mut check = |name, ok, detail: String| out.push(Check { name, ok, detail });
    if options.queue_only {
        check(
            "every recipient queued",
            c.total == m && c.queued == m,
            format!("queued {} of {m} (total {})", c.queued, c.total),
        );
        check(
            "nothing delivered before send_at",
            sink.messages == 0,
            format!("sink accepted {}", sink.messages),
        );
    } else {
        let permfails = (0..m)
            .filter(|&i| {
                sink_permfails(
                    &address(i, options.domains),
                    options.permfail_percent,
                    options.seed,
                )
            })
            .count() as u64;
        check(
            "every recipient accounted for",
            c.total == m && c.delivered + c.bounced == m,
            format!(
                "delivered {} + bounced {} = {} of {m} (queued {}, deferred {}, expired {}, suppressed {})",
                c.delivered,
                c.bounced,
                c.delivered + c.bounced,
                c.queued,
                c.deferred,
                c.expired,
                c.suppressed
            ),
        );
        check(
            "bounced = the sink's permanent refusals",
            c.bounced == permfails,
            format!(
                "bounced {}, sink refuses {permfails} addresses for good",
                c.bounced
            ),
        );
        check(
            "sink accepted = delivered",
            sink.messages == c.delivered,
            format!(
                "sink {} messages, volley {} delivered",
                sink.messages, c.delivered
            ),
        );
        check(
            "sink distinct recipients = delivered",
            sink.distinct_recipients == c.delivered,
            format!(
                "{} distinct, {} delivered",
                sink.distinct_recipients, c.delivered
            ),
        );
        check(
            "no duplicate deliveries",
            sink.duplicate_deliveries == 0,
            format!("{} duplicates", sink.duplicate_deliveries),
        );
        if let Some(rate) = options.rate {
            let peak = sink
                .raw
                .get("peak_one_second")
                .and_then(serde_json::Value::as_u64);
            let connections =
                u64::from(options.domains) * u64::try_from(options.concurrency).unwrap_or(u64::MAX);
            let bound = u64::from(rate) + connections;
            check(
                "the rate limit holds in every second",
                peak.is_some_and(|p| p <= bound),
                format!(
                    "busiest second at the sink {} messages; limit {rate}/s (+ one per connection: {bound})",
                    peak.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
                ),
            );
        }
        if let Some(e) = events {
            check(
                "each recipient ends as the sink decided",
                e.ok(),
                format!(
                    "{} events ({} deferred): missing {}, repeated {}, wrong {}, unknown {}",
                    e.events, e.deferred, e.missing, e.repeated, e.wrong, e.unknown
                ),
            );
        }
    }
    check("volley exits cleanly on SIGTERM", stopped_ok, String::new());
    out
}

/// The 1-minute load average (other work on the machine skews every figure).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// The run's settings for the report.
fn settings(o: &LoadOptions) -> Vec<(&'static str, String)> {
    vec![
        ("recipients", o.recipients.to_string()),
        ("domains", o.domains.to_string()),
        ("sink_addresses", o.sink_addresses.to_string()),
        ("size", o.size.to_string()),
        (
            "template",
            o.template
                .clone()
                .unwrap_or_else(|| "load (generated)".into()),
        ),
        ("concurrency", o.concurrency.to_string()),
        (
            "rate",
            o.rate
                .map_or_else(|| "unlimited".to_owned(), |r| format!("{r}/s")),
        ),
        ("dkim", o.dkim.name().into()),
        ("backend", o.backend.name().into()),
        (
            "tls",
            if o.tls { "opportunistic" } else { "disabled" }.into(),
        ),
        ("tempfail_percent", o.tempfail_percent.to_string()),
        ("permfail_percent", o.permfail_percent.to_string()),
        ("queue_only", o.queue_only.to_string()),
        ("batch_size", o.batch_size.to_string()),
        ("max_pipeline", o.max_pipeline.to_string()),
        ("volley", o.volley_bin.display().to_string()),
    ]
}

/// Samples a process's `VmRSS` every 200 ms in a task, keeping the highest.
struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32, limit: Duration) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&peak);
        let samples = limit.as_millis() / RSS_SAMPLE.as_millis() + 1;
        let task = tokio::spawn(async move {
            for _ in 0..samples {
                let Some(m) = memory(pid) else { break };
                seen.fetch_max(m.rss, Ordering::Relaxed);
                tokio::time::sleep(RSS_SAMPLE).await;
            }
        });
        Self { peak, task }
    }

    /// Stops sampling; the highest RSS seen.
    fn finish(self) -> u64 {
        self.task.abort();
        self.peak.load(Ordering::Relaxed)
    }
}

/// The Redis keys of the run, removed when volley is gone (also on a timeout).
struct RedisKeys {
    url: String,
    prefix: String,
    done: bool,
}

impl RedisKeys {
    fn new(url: &str, prefix: &str) -> Self {
        Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            done: false,
        }
    }

    fn clean(mut self) -> String {
        self.done = true;
        format!("redis: {}", redis_cleanup(&self.url, &self.prefix))
    }
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        if !self.done {
            redis_cleanup(&self.url, &self.prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_usage_subtracts_the_references() {
        let raw = serde_json::json!({"messages": 1150, "connections": 170,
            "recipients_accepted": 1150, "recipients_rejected": 3, "bytes_received": 0,
            "distinct_recipients": 1100, "duplicate_deliveries": 100});
        let ceiling = Reference {
            messages: 1000,
            connections: 50,
            ..Reference::default()
        };
        let naive = Reference {
            messages: 100,
            connections: 100,
            ..Reference::default()
        };
        let s = sink_usage(raw, Some(&ceiling), Some(&naive), 1.0, 2048);
        assert_eq!(
            (
                s.messages,
                s.connections,
                s.distinct_recipients,
                s.duplicate_deliveries
            ),
            (50, 20, 100, 0)
        );
        assert_eq!(s.recipients_accepted, 50);
    }

    #[test]
    fn blast_bytes_counts_sessions_and_digits() {
        let body = build_body(100).len() as u64;
        // 2 connections; messages 0..12 have 10 one-digit and 2 two-digit indices.
        let expected = 2 * 23 + 12 * (17 + 13 + 13 + 6 + body) + 10 + 4;
        assert_eq!(blast_bytes(12, 2, 100), expected);
    }
}
