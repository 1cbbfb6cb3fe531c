//! [`Report`]: the figures of one run, its correctness checks, a human table and one JSON
//! line.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::events::{EventsSummary, Quantiles};
use super::metrics::Scraped;

/// Final deliveries by state, summed over the run's jobs (from `GET /v1/jobs/{id}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// All deliveries.
    pub total: u64,
    /// Not attempted yet or being attempted.
    pub queued: u64,
    /// Accepted by the sink.
    pub delivered: u64,
    /// Waiting for a retry.
    pub deferred: u64,
    /// Refused for good.
    pub bounced: u64,
    /// Given up after the maximum age.
    pub expired: u64,
    /// Not sent: suppressed address.
    pub suppressed: u64,
}

/// What volley itself cost, from `/proc`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct VolleyUsage {
    /// CPU seconds (user + system) from the first submission to the last job done.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per 10,000 messages handled (delivered + bounced).
    pub cpu_per_10k: f64,
    /// Highest `VmRSS` seen, sampled every 200 ms, in bytes.
    pub peak_rss: u64,
    /// `VmHWM` (the kernel's own high-water mark) at the end, in bytes.
    pub hwm: u64,
    /// `VmRSS` once every campaign was accepted, in bytes.
    pub rss_after_submit: u64,
    /// With the Redis backend: the Redis server's CPU seconds over the same span.
    pub redis_cpu_seconds: Option<f64>,
}

/// The sink's side of volley's traffic. When references ran, the sink's cumulative
/// counters minus what the references sent (exact for these fields).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkUsage {
    /// Messages accepted from volley.
    pub messages: u64,
    /// Connections volley opened to it.
    pub connections: u64,
    /// RCPTs answered 250 to volley.
    pub recipients_accepted: u64,
    /// RCPTs answered 4xx/5xx to volley.
    pub recipients_rejected: u64,
    /// Bytes volley sent (commands and content).
    pub bytes: u64,
    /// Distinct recipients accepted from volley.
    pub distinct_recipients: u64,
    /// Recipients accepted more than once from volley.
    pub duplicate_deliveries: u64,
    /// The sink's CPU seconds while volley ran.
    pub cpu_seconds: f64,
    /// The sink's whole report (volley and references together).
    pub raw: Value,
}

impl SinkUsage {
    /// Messages per connection.
    pub fn messages_per_connection(&self) -> f64 {
        self.messages as f64 / self.connections.max(1) as f64
    }

    /// Average bytes on the wire per message (content, envelope, session overhead).
    pub fn bytes_per_message(&self) -> f64 {
        self.bytes as f64 / self.messages.max(1) as f64
    }
}

/// One reference client's run against the same sink.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reference {
    /// Messages sent.
    pub messages: u64,
    /// Connections opened.
    pub connections: u64,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// Its throughput.
    pub messages_per_second: f64,
    /// The client's CPU seconds.
    pub client_cpu_seconds: f64,
    /// The sink's CPU seconds meanwhile.
    pub sink_cpu_seconds: f64,
}

/// One correctness check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// Whether it holds.
    pub ok: bool,
    /// The figures compared.
    pub detail: String,
}

/// The bound of a run over a simulated network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WanBound {
    /// The simulated round trip.
    pub rtt_ms: f64,
    /// volley's connections at most (domains × connections per site).
    pub connections: u64,
    /// Transactions one connection may complete per round trip.
    pub per_round_trip: u64,
    /// connections × per round trip / RTT.
    pub messages_per_second: f64,
    /// The round trip the proxy really gave volley's traffic (it delivers a little late).
    pub effective_rtt_ms: f64,
    /// connections × per round trip / the effective RTT.
    pub effective_per_second: f64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// The run's settings, as `(name, value)` pairs.
    pub settings: Vec<(&'static str, String)>,
    /// Campaign requests made.
    pub jobs: usize,
    /// Final counts.
    pub counts: Counts,
    /// Seconds from the first POST to the last 202.
    pub submit_seconds: f64,
    /// Seconds from the first POST to the moment every job was seen done (polled every 50 ms).
    pub elapsed_seconds: f64,
    /// `(delivered + bounced) / elapsed_seconds`.
    pub messages_per_second: f64,
    /// volley's `/metrics` at the end.
    pub metrics: Scraped,
    /// The event log's verdict and the driver's own latency (`None` when skipped).
    pub events: Option<EventsSummary>,
    /// volley's CPU and memory.
    pub volley: VolleyUsage,
    /// The sink's counters for volley's traffic.
    pub sink: SinkUsage,
    /// Over a simulated network (`--rtt-ms`): the most volley could send.
    pub wan: Option<WanBound>,
    /// The pipelined ceiling (`volley-blast`, 50 connections; over a simulated network,
    /// as many as volley's, each transaction pipelined, the end of one message and the
    /// next envelope in one write).
    pub ceiling: Option<Reference>,
    /// The naive client (`volley-blast --reconnect`, 50 connections).
    pub naive: Option<Reference>,
    /// Correctness checks.
    pub checks: Vec<Check>,
    /// Remarks (clean-up, skipped parts).
    pub notes: Vec<String>,
}

impl Report {
    /// Every check holds.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// volley's throughput over a reference's.
    pub fn ratio(&self, reference: Option<&Reference>) -> Option<f64> {
        reference
            .filter(|r| r.messages_per_second > 0.0)
            .map(|r| self.messages_per_second / r.messages_per_second)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> Value {
        let settings: serde_json::Map<String, Value> = self
            .settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(v.as_str())))
            .collect();
        let c = &self.counts;
        let delivery = self.metrics.stage("delivery");
        json!({
            "settings": settings,
            "jobs": self.jobs,
            "counts": {"total": c.total, "queued": c.queued, "delivered": c.delivered,
                "deferred": c.deferred, "bounced": c.bounced, "expired": c.expired,
                "suppressed": c.suppressed},
            "submit_s": num(self.submit_seconds),
            "elapsed_s": num(self.elapsed_seconds),
            "messages_per_second": num(self.messages_per_second),
            "latency_s_metrics_delivery": delivery.map(|d| json!({"p50": num(d.p50),
                "p90": num(d.p90), "p99": num(d.p99), "p999": num(d.p999), "count": d.count})),
            "latency_s_events": self.events.as_ref().map(|e| quantiles(&e.latency)),
            "stages": self.metrics.stages.iter().map(|s| json!({"stage": s.stage,
                "p50": num(s.p50), "p90": num(s.p90), "p99": num(s.p99), "p999": num(s.p999),
                "count": s.count, "mean": num(s.sum / s.count.max(1) as f64)})).collect::<Vec<_>>(),
            "volley": {"cpu_s": num(self.volley.cpu_seconds),
                "cpu_s_per_10k": num(self.volley.cpu_per_10k),
                "peak_rss_mb": num(mb(self.volley.peak_rss)), "hwm_mb": num(mb(self.volley.hwm)),
                "rss_after_submit_mb": num(mb(self.volley.rss_after_submit)),
                "redis_cpu_s": self.volley.redis_cpu_seconds.map(num),
                "connections_opened": self.metrics.connections_opened,
                "sites": self.metrics.sites},
            "sink": self.sink_json(),
            "events": self.events.as_ref().map(|e| json!({"events": e.events,
                "deferred": e.deferred, "missing": e.missing, "repeated": e.repeated,
                "wrong": e.wrong, "unknown": e.unknown})),
            "ceiling": self.ceiling.as_ref().map(reference_json),
            "naive": self.naive.as_ref().map(reference_json),
            "ratio_to_ceiling": self.ratio(self.ceiling.as_ref()).map(num),
            "ratio_to_naive": self.ratio(self.naive.as_ref()).map(num),
            "wan": self.wan.as_ref().map(|w| json!({"rtt_ms": num(w.rtt_ms),
                "connections": w.connections, "per_round_trip": w.per_round_trip,
                "bound_per_s": num(w.messages_per_second),
                "ratio_to_bound": num(self.messages_per_second / w.messages_per_second.max(f64::MIN_POSITIVE)),
                "effective_rtt_ms": num(w.effective_rtt_ms),
                "effective_bound_per_s": num(w.effective_per_second),
                "ratio_to_effective_bound": num(self.messages_per_second / w.effective_per_second.max(f64::MIN_POSITIVE))})),
            "checks": self.checks.iter().map(|c| json!({"name": c.name, "ok": c.ok,
                "detail": c.detail})).collect::<Vec<_>>(),
            "passed": self.passed(),
            "notes": self.notes,
        })
    }

    fn sink_json(&self) -> Value {
        let s = &self.sink;
        json!({"messages": s.messages, "connections": s.connections,
            "messages_per_connection": num(s.messages_per_connection()),
            "recipients_accepted": s.recipients_accepted,
            "recipients_rejected": s.recipients_rejected,
            "bytes_per_message": num(s.bytes_per_message()),
            "distinct_recipients": s.distinct_recipients,
            "duplicate_deliveries": s.duplicate_deliveries,
            "cpu_s": num(s.cpu_seconds),
            "cpu_s_per_10k": num(s.cpu_seconds / s.messages.max(1) as f64 * 10_000.0),
            "whole_run": s.raw})
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let settings: Vec<String> = self
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(t, "volley-load: {}", settings.join(" "));
        self.table_outcome(&mut t);
        self.table_latency(&mut t);
        self.table_cost(&mut t);
        self.table_references(&mut t);
        let _ = writeln!(t, "\ncorrectness:");
        for c in &self.checks {
            let mark = if c.ok { "ok  " } else { "FAIL" };
            let _ = writeln!(t, "  [{mark}] {:<42} {}", c.name, c.detail);
        }
        if let Some(e) = self.events.as_ref().filter(|e| !e.examples.is_empty()) {
            for x in &e.examples {
                let _ = writeln!(t, "         {x}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(t, "note: {n}");
        }
        t
    }

    fn table_outcome(&self, t: &mut String) {
        let c = &self.counts;
        let _ = writeln!(
            t,
            "\noutcome: {} recipients in {} job(s): delivered {}, bounced {}, deferred {}, queued {}, expired {}, suppressed {}",
            c.total,
            self.jobs,
            c.delivered,
            c.bounced,
            c.deferred,
            c.queued,
            c.expired,
            c.suppressed
        );
        let _ = writeln!(
            t,
            "throughput: {:.0} messages/s end to end ({:.2} s from the first POST to the last job done; submission took {:.2} s)",
            self.messages_per_second, self.elapsed_seconds, self.submit_seconds
        );
    }

    fn table_latency(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "\n{:<40} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "p50", "p90", "p99", "p99.9", "mean", "count"
        );
        for s in &self.metrics.stages {
            let mean = s.sum / s.count.max(1) as f64;
            let label = if s.stage == "delivery" {
                "delivery: due in queue -> final reply".to_owned()
            } else {
                format!("stage {}", s.stage)
            };
            let _ = writeln!(
                t,
                "{label:<40} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9}",
                s.p50 * 1e3,
                s.p90 * 1e3,
                s.p99 * 1e3,
                s.p999 * 1e3,
                mean * 1e3,
                s.count
            );
        }
        if let Some(e) = &self.events {
            let q = &e.latency;
            let _ = writeln!(
                t,
                "{:<40} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9} {:>9}",
                "submission -> delivered event (+-500)",
                q.p50 * 1e3,
                q.p90 * 1e3,
                q.p99 * 1e3,
                q.p999 * 1e3,
                "",
                q.count
            );
        }
    }

    fn table_cost(&self, t: &mut String) {
        let v = &self.volley;
        let s = &self.sink;
        let _ = writeln!(
            t,
            "\nvolley: {:.2} CPU-s ({:.3} per 10k messages), peak RSS {:.1} MB (VmHWM {:.1} MB; {:.1} MB after submission), {} connections opened over {} sites",
            v.cpu_seconds,
            v.cpu_per_10k,
            mb(v.peak_rss),
            mb(v.hwm),
            mb(v.rss_after_submit),
            self.metrics.connections_opened,
            self.metrics.sites
        );
        if let Some(r) = v.redis_cpu_seconds {
            let _ = writeln!(
                t,
                "redis-server: {r:.2} CPU-s over the same span ({:.3} per 10k messages)",
                r / self.counts.total.max(1) as f64 * 10_000.0
            );
        }
        let _ = writeln!(
            t,
            "sink (volley's traffic): {} messages over {} connections ({:.1} per connection), {:.0} bytes per message, RCPT accepted {} rejected {}, {} distinct recipients, {} duplicates, {:.2} CPU-s ({:.3} per 10k)",
            s.messages,
            s.connections,
            s.messages_per_connection(),
            s.bytes_per_message(),
            s.recipients_accepted,
            s.recipients_rejected,
            s.distinct_recipients,
            s.duplicate_deliveries,
            s.cpu_seconds,
            s.cpu_seconds / s.messages.max(1) as f64 * 10_000.0
        );
        let whole: Vec<String> = [
            "pipelined_groups",
            "commands",
            "peak_connections",
            "peak_one_second",
        ]
        .iter()
        .filter_map(|k| {
            s.raw
                .get(*k)
                .filter(|v| !v.is_null())
                .map(|v| format!("{k} {v}"))
        })
        .collect();
        if !whole.is_empty() {
            let _ = writeln!(t, "sink whole run (incl. references): {}", whole.join(", "));
        }
    }

    fn table_references(&self, t: &mut String) {
        if let Some(w) = &self.wan {
            let _ = writeln!(
                t,
                "\nround trip {:.0} ms: bound {:.0} messages/s ({} connections x {} per round trip); volley {:.3} of it",
                w.rtt_ms,
                w.messages_per_second,
                w.connections,
                w.per_round_trip,
                self.messages_per_second / w.messages_per_second.max(f64::MIN_POSITIVE)
            );
            let _ = writeln!(
                t,
                "the proxy's real round trip {:.1} ms: bound {:.0} messages/s; volley {:.3} of it",
                w.effective_rtt_ms,
                w.effective_per_second,
                self.messages_per_second / w.effective_per_second.max(f64::MIN_POSITIVE)
            );
        }
        let rows = [
            ("ceiling: volley-blast pipelined", self.ceiling.as_ref()),
            ("naive: --reconnect, 1 cmd/round trip", self.naive.as_ref()),
        ];
        if rows.iter().all(|(_, r)| r.is_none()) {
            return;
        }
        let _ = writeln!(
            t,
            "\n{:<38} {:>10} {:>12} {:>10} {:>14} {:>14} {:>8}",
            "", "messages", "messages/s", "conns", "client CPU/10k", "sink CPU/10k", "volley/x"
        );
        for (name, r) in rows {
            let Some(r) = r else { continue };
            let per10k = |cpu: f64| cpu / r.messages.max(1) as f64 * 10_000.0;
            let _ = writeln!(
                t,
                "{name:<38} {:>10} {:>12.0} {:>10} {:>14.3} {:>14.3} {:>8.3}",
                r.messages,
                r.messages_per_second,
                r.connections,
                per10k(r.client_cpu_seconds),
                per10k(r.sink_cpu_seconds),
                self.ratio(Some(r)).unwrap_or(f64::NAN)
            );
        }
    }
}

fn reference_json(r: &Reference) -> Value {
    json!({"messages": r.messages, "connections": r.connections, "elapsed_s": num(r.elapsed_s),
        "messages_per_second": num(r.messages_per_second),
        "client_cpu_s": num(r.client_cpu_seconds), "sink_cpu_s": num(r.sink_cpu_seconds)})
}

fn quantiles(q: &Quantiles) -> Value {
    json!({"p50": num(q.p50), "p90": num(q.p90), "p99": num(q.p99), "p999": num(q.p999),
        "count": q.count, "resolution_s": 1})
}

/// Bytes to MiB.
fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A float rounded for JSON (null when not finite).
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1e6).round() / 1e6)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_table_show_the_checks() {
        let mut report = Report {
            messages_per_second: 1000.0,
            ceiling: Some(Reference {
                messages: 10,
                messages_per_second: 2000.0,
                ..Reference::default()
            }),
            ..Report::default()
        };
        report.checks.push(Check {
            name: "no duplicates",
            ok: false,
            detail: "2".into(),
        });
        assert!(!report.passed());
        let json = report.to_json();
        assert_eq!(json["ratio_to_ceiling"], 0.5);
        assert_eq!(json["passed"], false);
        assert!(json["naive"].is_null());
        let table = report.table();
        assert!(table.contains("[FAIL] no duplicates"), "{table}");
        assert!(table.contains("ceiling"), "{table}");
    }
}
