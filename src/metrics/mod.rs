//! Latency histograms for every phase of the send path, counters per outcome and per
//! site, and their Prometheus text rendering.
//!
//! [`history`] keeps the last five minutes of them, one point a second, for the
//! dashboard.
//!
//! Recording takes no global lock: histograms are sharded, and each thread records
//! into the shard it was given on first use. A shard's mutex is held for the few
//! nanoseconds of one `record`, and only threads that share the shard contend.

pub mod history;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::event::EventKind;

/// A timed phase of the send path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// From becoming due in the queue to being handed to a connection.
    QueueWait,
    /// MX and address resolution.
    Dns,
    /// TCP connect.
    Connect,
    /// TLS handshake (STARTTLS or implicit).
    Tls,
    /// EHLO (or HELO) round trip.
    Ehlo,
    /// MAIL to the final reply, per message.
    Transaction,
    /// Handed to the engine to the final outcome, per message.
    Delivery,
}

impl Stage {
    /// Every stage, in path order.
    pub const ALL: [Stage; 7] = [
        Stage::QueueWait,
        Stage::Dns,
        Stage::Connect,
        Stage::Tls,
        Stage::Ehlo,
        Stage::Transaction,
        Stage::Delivery,
    ];

    /// The label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Stage::QueueWait => "queue_wait",
            Stage::Dns => "dns",
            Stage::Connect => "connect",
            Stage::Tls => "tls",
            Stage::Ehlo => "ehlo",
            Stage::Transaction => "transaction",
            Stage::Delivery => "delivery",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of the queue's and the dispatcher's exceptional events, each a
/// `volley_..._total` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A queue read or write failed (the work was deferred, never bounced).
    QueueErrors,
    /// A completion refused because its lease was no longer the delivery's current one.
    StaleCompletions,
    /// Leases found lost at renewal (their deliveries were cancelled if not yet sent).
    LeasesLost,
    /// Deliveries sent back to the queue because their domain had its share of the engine.
    Postponed,
    /// Reports (bounces, complaints) recorded against their delivery.
    LateReports,
    /// Of those, failed DSNs: deliveries handed over that bounced afterwards.
    LateBounces,
    /// Mail at the bounce listener that named no delivery with a valid signature (forged,
    /// or not a report volley can read): ignored.
    LateReportsIgnored,
    /// MTA-STS policies fetched over HTTPS (a new domain, or its TXT id changed).
    MtaStsFetched,
    /// MTA-STS policy fetches that failed (HTTPS, certificate, syntax): the cached
    /// policy, or none, applied.
    MtaStsFetchFailed,
    /// Deliveries refused by an `enforce` policy: no MX host matched it (deferred).
    MtaStsRefused,
    /// Domains whose `testing` policy would have refused their MX hosts (delivered).
    MtaStsTestingFailures,
    /// TLS handshakes with MX hosts of `testing` domains whose certificate `enforce`
    /// would have refused (delivered all the same).
    MtaStsTestingTlsFailures,
    /// DANE lookups that failed (a bogus MX or TLSA answer, or none): the domain's
    /// mail, or that host's, waits.
    DaneFailures,
    /// Deliveries refused under DANE: no MX host of the domain was usable (deferred).
    DaneRefused,
}

impl Counter {
    const ALL: [Counter; 14] = [
        Counter::QueueErrors,
        Counter::StaleCompletions,
        Counter::LeasesLost,
        Counter::Postponed,
        Counter::LateReports,
        Counter::LateBounces,
        Counter::LateReportsIgnored,
        Counter::MtaStsFetched,
        Counter::MtaStsFetchFailed,
        Counter::MtaStsRefused,
        Counter::MtaStsTestingFailures,
        Counter::MtaStsTestingTlsFailures,
        Counter::DaneFailures,
        Counter::DaneRefused,
    ];

    /// The metric's name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::QueueErrors => "volley_queue_errors_total",
            Counter::StaleCompletions => "volley_stale_completions_total",
            Counter::LeasesLost => "volley_leases_lost_total",
            Counter::Postponed => "volley_postponed_total",
            Counter::LateReports => "volley_late_reports_total",
            Counter::LateBounces => "volley_late_bounces_total",
            Counter::LateReportsIgnored => "volley_late_reports_ignored_total",
            Counter::MtaStsFetched => "volley_mta_sts_fetched_total",
            Counter::MtaStsFetchFailed => "volley_mta_sts_fetch_failures_total",
            Counter::MtaStsRefused => "volley_mta_sts_refused_total",
            Counter::MtaStsTestingFailures => "volley_mta_sts_testing_failures_total",
            Counter::MtaStsTestingTlsFailures => "volley_mta_sts_testing_tls_failures_total",
            Counter::DaneFailures => "volley_dane_failures_total",
            Counter::DaneRefused => "volley_dane_refused_total",
        }
    }
}

/// Histogram range: 1 µs to 1 hour, two significant digits (1% precision keeps
/// each histogram a few kilobytes).
const HIGHEST_US: u64 = 3_600_000_000;
const SHARDS: usize = 16;

type Histograms = [Histogram<u64>; 7];

fn new_histograms() -> Histograms {
    std::array::from_fn(|_| {
        Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("static bounds are valid")
    })
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

/// Counters for one site.
#[derive(Debug, Default)]
pub struct SiteCounters {
    /// Recipients delivered.
    pub delivered: AtomicU64,
    /// Recipients deferred.
    pub deferred: AtomicU64,
    /// Recipients bounced.
    pub bounced: AtomicU64,
    /// Connections opened.
    pub connections_opened: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Times the site asked us to slow down.
    pub throttled: AtomicU64,
    /// Connections allowed now (the limit, lowered while throttled).
    pub allowed: AtomicU64,
    /// The configured connection limit.
    pub limit: AtomicU64,
    /// Transactions a connection is handed in one go (the pipelining window).
    pub window: AtomicU64,
    /// Until when (Unix milliseconds) the site is paused; 0 when not.
    pub paused_until_ms: AtomicU64,
    /// The site's last reply or error, for operators. Written once per batch, read
    /// by the dashboard; the lock is held only to swap a string.
    pub last_reply: Mutex<String>,
    /// When (Unix milliseconds) the site was last seen or sent to.
    pub last_active_ms: AtomicU64,
    /// The mailbox provider the site belongs to (provider shaping), if any.
    pub provider: std::sync::OnceLock<Arc<str>>,
    /// Recipient domains routed to the site (the first [`SITE_DOMAINS`]).
    pub domains: Mutex<Vec<String>>,
}

/// Domains listed per site at most.
pub const SITE_DOMAINS: usize = 20;

impl SiteCounters {
    /// Records that mail for `domain` goes to the site.
    pub fn add_domain(&self, domain: &str) {
        let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        if domains.len() < SITE_DOMAINS && !domains.iter().any(|d| d == domain) {
            domains.push(domain.to_owned());
        }
    }

    /// The domains recorded for the site.
    pub fn domains(&self) -> Vec<String> {
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the last reply seen from the site.
    pub fn set_last_reply(&self, reply: &str) {
        self.touch();
        let mut last = self.last_reply.lock().unwrap_or_else(|e| e.into_inner());
        last.clear();
        last.push_str(reply);
    }

    /// Marks the site active now.
    pub fn touch(&self) {
        let now = crate::time::unix_ms(std::time::SystemTime::now());
        self.last_active_ms.store(now, Relaxed);
    }

    /// The last reply seen from the site.
    pub fn last_reply(&self) -> String {
        self.last_reply
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// All metrics of one process.
#[derive(Debug)]
pub struct Metrics {
    shards: Vec<Mutex<Histograms>>,
    /// Deliveries on a connection now: written, their replies awaited.
    in_flight: AtomicU64,
    counters: [AtomicU64; Counter::ALL.len()],
    outcomes: [AtomicU64; EventKind::ALL.len()],
    // Locked only when a site is first seen and when rendering; never per message.
    sites: Mutex<BTreeMap<Arc<str>, Arc<SiteCounters>>>,
    /// Messages attempted on connections, by how they left: (pool, source address, TLS
    /// policy, encrypted). Locked once per pipelined group.
    egress: Mutex<BTreeMap<EgressKey, u64>>,
}

/// How messages left: pool, source address, TLS policy, encrypted, the domain policy
/// that set the TLS policy (`""` for the configuration).
type EgressKey = (Arc<str>, String, &'static str, bool, &'static str);

impl Default for Metrics {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(new_histograms())).collect(),
            in_flight: AtomicU64::new(0),
            counters: Default::default(),
            outcomes: Default::default(),
            sites: Mutex::default(),
            egress: Mutex::default(),
        }
    }
}

/// Deliveries counted as in flight while it lives.
#[derive(Debug)]
pub struct InFlight<'a> {
    metrics: &'a Metrics,
    n: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.fetch_sub(self.n, Relaxed);
    }
}

/// Percentiles of one stage, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
}

impl Metrics {
    /// Records one sample of `stage`.
    pub fn record(&self, stage: Stage, elapsed: Duration) {
        let us = micros(elapsed);
        let shard = SHARD.with(|s| *s);
        // The lock is per shard and held for one record: no global lock on the hot path.
        let mut histograms = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        histograms[stage.index()].saturating_record(us);
    }

    /// Records `count` samples of the same value (a pipelined batch).
    pub fn record_many(&self, stage: Stage, elapsed: Duration, count: u64) {
        if count == 0 {
            return;
        }
        let us = micros(elapsed);
        let shard = SHARD.with(|s| *s);
        let mut histograms = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        let _ = histograms[stage.index()].record_n(us, count);
    }

    /// Counts one recipient outcome.
    pub fn count(&self, what: EventKind) {
        self.outcomes[what.index()].fetch_add(1, Relaxed);
    }

    /// The number of outcomes of a kind so far.
    pub fn counted(&self, what: EventKind) -> u64 {
        self.outcomes[what.index()].load(Relaxed)
    }

    /// Every outcome counter, in [`EventKind::ALL`] order.
    pub fn outcome_totals(&self) -> [u64; EventKind::ALL.len()] {
        EventKind::ALL.map(|k| self.counted(k))
    }

    /// Adds `n` to a counter.
    pub fn add(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Relaxed);
    }

    /// A counter's value.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Relaxed)
    }

    /// Marks `n` deliveries as on a connection until the guard is dropped.
    pub fn in_flight(&self, n: usize) -> InFlight<'_> {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.in_flight.fetch_add(n, Relaxed);
        InFlight { metrics: self, n }
    }

    /// Deliveries on a connection now (written, replies awaited), as opposed to leased
    /// and waiting in the engine.
    pub fn in_flight_now(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// The counters of a site, created on first use.
    pub fn site(&self, site: &Arc<str>) -> Arc<SiteCounters> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let counters = sites.entry(Arc::clone(site)).or_default().clone();
        counters.touch();
        counters
    }

    /// Forgets the counters of sites that have no lane and have been idle for `idle`,
    /// so that a campaign over a million domains does not leave a million entries in
    /// `/metrics` and on the dashboard. Returns how many were forgotten.
    pub fn prune_idle_sites(&self, now_ms: u64, idle: Duration) -> usize {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let before = sites.len();
        sites.retain(|_, c| {
            // A lane still holds its counters: the site is in use, however quiet.
            let in_use = Arc::strong_count(c) > 1;
            in_use || now_ms.saturating_sub(c.last_active_ms.load(Relaxed)) < idle_ms
        });
        before - sites.len()
    }

    /// Every stage's histogram, merged over the shards.
    fn merged(&self) -> Histograms {
        let mut total = new_histograms();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (sum, h) in total.iter_mut().zip(shard.iter()) {
                // Same bounds everywhere, so adding cannot fail.
                let _ = sum.add(h);
            }
        }
        total
    }

    /// Every site's counters, by site key.
    pub fn sites(&self) -> Vec<(Arc<str>, Arc<SiteCounters>)> {
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites
            .iter()
            .map(|(k, v)| (Arc::clone(k), Arc::clone(v)))
            .collect()
    }

    /// A stage's distribution as `(upper bound in ms, samples)` buckets, doubling
    /// from 0.1 ms, for charts. Empty buckets past the largest sample are left out.
    pub fn buckets(&self, stage: Stage) -> Vec<(f64, u64)> {
        let merged = self.merged();
        let h = &merged[stage.index()];
        let mut out = Vec::new();
        let mut low = 0u64;
        let mut high = 100u64;
        while low <= h.max() && high <= HIGHEST_US * 2 {
            let count = h.count_between(low, high.saturating_sub(1));
            out.push((high as f64 / 1000.0, count));
            low = high;
            high *= 2;
        }
        out
    }

    /// Percentiles of one stage.
    pub fn percentiles(&self, stage: Stage) -> Percentiles {
        percentiles(&self.merged()[stage.index()])
    }

    /// Counts `n` messages attempted on a connection of `pool`, bound to `source`,
    /// under the TLS policy `tls` (set by the domain's `policy`, e.g. `mta-sts`, or by
    /// the configuration: `""`), encrypted or not.
    pub fn count_egress(
        &self,
        pool: &Arc<str>,
        source: Option<std::net::IpAddr>,
        tls: (&'static str, &'static str),
        encrypted: bool,
        n: u64,
    ) {
        let source = source.map_or_else(String::new, |a| a.to_string());
        let mut egress = self.egress.lock().unwrap_or_else(|e| e.into_inner());
        *egress
            .entry((Arc::clone(pool), source, tls.0, encrypted, tls.1))
            .or_default() += n;
    }

    /// The metrics in Prometheus text exposition format.
    pub fn render_prometheus(&self) -> String {
        let merged = self.merged();
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP volley_stage_seconds Latency of each phase of the send path.\n");
        out.push_str("# TYPE volley_stage_seconds summary\n");
        for stage in Stage::ALL {
            let h = &merged[stage.index()];
            let name = stage.name();
            for q in [0.5, 0.9, 0.99, 0.999] {
                let v = h.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "volley_stage_seconds{{stage=\"{name}\",quantile=\"{q}\"}} {v}"
                );
            }
            let sum = h.mean() * h.len() as f64 / 1e6;
            let _ = writeln!(out, "volley_stage_seconds_sum{{stage=\"{name}\"}} {sum}");
            let _ = writeln!(
                out,
                "volley_stage_seconds_count{{stage=\"{name}\"}} {}",
                h.len()
            );
        }
        for counter in Counter::ALL {
            let name = counter.name();
            let _ = writeln!(
                out,
                "# TYPE {name} counter\n{name} {}",
                self.counter(counter)
            );
        }
        out.push_str("# HELP volley_in_flight Deliveries on a connection, replies awaited.\n");
        out.push_str("# TYPE volley_in_flight gauge\n");
        let _ = writeln!(out, "volley_in_flight {}", self.in_flight_now());
        out.push_str("# HELP volley_deliveries_total Recipient outcomes.\n");
        out.push_str("# TYPE volley_deliveries_total counter\n");
        for what in EventKind::ALL {
            let _ = writeln!(
                out,
                "volley_deliveries_total{{outcome=\"{}\"}} {}",
                what.as_str(),
                self.counted(what)
            );
        }
        let sites = self.sites.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.push_str("# TYPE volley_site_deliveries_total counter\n");
        for (site, c) in &sites {
            let site = escape_label(site);
            for (kind, v) in [
                (EventKind::Delivered, &c.delivered),
                (EventKind::Deferred, &c.deferred),
                (EventKind::Bounced, &c.bounced),
            ] {
                let (name, v) = (kind.as_str(), v.load(Relaxed));
                let _ = writeln!(
                    out,
                    "volley_site_deliveries_total{{site=\"{site}\",outcome=\"{name}\"}} {v}"
                );
            }
        }
        out.push_str("# TYPE volley_site_connections_opened_total counter\n");
        for (site, c) in &sites {
            let (site, v) = (escape_label(site), c.connections_opened.load(Relaxed));
            let _ = writeln!(
                out,
                "volley_site_connections_opened_total{{site=\"{site}\"}} {v}"
            );
        }
        out.push_str("# TYPE volley_site_connections gauge\n");
        for (site, c) in &sites {
            let (site, v) = (escape_label(site), c.connections_open.load(Relaxed));
            let _ = writeln!(out, "volley_site_connections{{site=\"{site}\"}} {v}");
        }
        out.push_str("# TYPE volley_site_window gauge\n");
        for (site, c) in &sites {
            let (site, v) = (escape_label(site), c.window.load(Relaxed));
            let _ = writeln!(out, "volley_site_window{{site=\"{site}\"}} {v}");
        }
        out.push_str(
            "# HELP volley_site_provider The mailbox provider whose limits a site shares.\n",
        );
        out.push_str("# TYPE volley_site_provider gauge\n");
        for (site, c) in &sites {
            if let Some(provider) = c.provider.get() {
                let (site, provider) = (escape_label(site), escape_label(provider));
                let _ = writeln!(
                    out,
                    "volley_site_provider{{site=\"{site}\",provider=\"{provider}\"}} 1"
                );
            }
        }
        out.push_str("# TYPE volley_site_throttled_total counter\n");
        for (site, c) in &sites {
            let (site, v) = (escape_label(site), c.throttled.load(Relaxed));
            let _ = writeln!(out, "volley_site_throttled_total{{site=\"{site}\"}} {v}");
        }
        out.push_str(
            "# HELP volley_egress_messages_total Messages attempted, by egress pool, source address and TLS policy.\n",
        );
        out.push_str("# TYPE volley_egress_messages_total counter\n");
        let egress = self
            .egress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((pool, source, tls, encrypted, policy), v) in &egress {
            let (pool, source) = (escape_label(pool), escape_label(source));
            let policy = if policy.is_empty() { "config" } else { policy };
            let _ = writeln!(
                out,
                "volley_egress_messages_total{{pool=\"{pool}\",source=\"{source}\",tls=\"{tls}\",encrypted=\"{encrypted}\",policy=\"{policy}\"}} {v}"
            );
        }
        out
    }
}

/// A duration in the histograms' unit and range: microseconds, 1 µs to 1 hour.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(HIGHEST_US)
        .clamp(1, HIGHEST_US)
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// Adds `name="value"` to every sample of Prometheus text (comments unchanged): how a
/// worker of a cluster labels its series, so that Prometheus can add workers up.
pub fn with_label(text: &str, name: &str, value: &str) -> String {
    let label = format!("{name}=\"{}\"", escape_label(value));
    let mut out = String::with_capacity(text.len() + text.lines().count() * (label.len() + 3));
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some(open) = line.find('{') {
            let (metric, rest) = line.split_at(open + 1);
            let _ = write!(out, "{metric}{label},{rest}");
        } else if let Some((metric, sample)) = line.split_once(' ') {
            let _ = write!(out, "{metric}{{{label}}} {sample}");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sites_without_a_lane_are_forgotten() {
        let metrics = Metrics::default();
        let lane = metrics.site(&Arc::from("busy.example"));
        drop(metrics.site(&Arc::from("quiet.example")));
        let now = crate::time::unix_ms(std::time::SystemTime::now());
        let hour = Duration::from_secs(3600);
        assert_eq!(metrics.prune_idle_sites(now, hour), 0, "neither idle yet");
        assert_eq!(metrics.prune_idle_sites(now + 3_600_001, hour), 1);
        let left: Vec<_> = metrics.sites().into_iter().map(|(s, _)| s).collect();
        assert_eq!(left, [Arc::from("busy.example")], "a lane holds it");
        drop(lane);
        assert_eq!(metrics.prune_idle_sites(now + 3_600_001, hour), 1);
        assert!(!metrics.render_prometheus().contains("busy.example"));
    }

    #[test]
    fn records_across_threads_and_renders() {
        let metrics = Arc::new(Metrics::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for i in 1..=1000u64 {
                        m.record(Stage::Transaction, Duration::from_micros(i * 10 + t));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let p = metrics.percentiles(Stage::Transaction);
        assert_eq!(p.count, 4000);
        assert!((4.9..=5.1).contains(&p.p50), "{p:?}");
        assert!((9.8..=10.1).contains(&p.p999), "{p:?}");
        metrics.count(EventKind::Delivered);
        metrics
            .site(&Arc::from("mx.example"))
            .connections_opened
            .fetch_add(2, Relaxed);
        let text = metrics.render_prometheus();
        assert!(
            text.contains("volley_stage_seconds_count{stage=\"transaction\"} 4000"),
            "{text}"
        );
        assert!(text.contains("volley_deliveries_total{outcome=\"delivered\"} 1"));
        assert!(text.contains("volley_site_connections_opened_total{site=\"mx.example\"} 2"));
        assert_eq!(metrics.percentiles(Stage::Dns).count, 0);
    }

    #[test]
    fn a_worker_label_goes_on_every_sample() {
        let text = "# TYPE a counter\na 1\nb{site=\"x\"} 2\n";
        assert_eq!(
            with_label(text, "worker", "w\"1"),
            "# TYPE a counter\na{worker=\"w\\\"1\"} 1\nb{worker=\"w\\\"1\",site=\"x\"} 2\n"
        );
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
