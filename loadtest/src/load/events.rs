//! The event log (`GET /v1/events`) read to the end after a run: every recipient's final
//! outcome, checked against what the sink decided, and a submission-to-250 latency computed
//! by the driver itself from the events' timestamps.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::http::Client;
use super::workload::{address, sink_permfails};
use super::{LoadError, LoadOptions};

/// Events per page (the API's maximum).
const PAGE: usize = 1000;

/// Latency percentiles, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Observations.
    pub count: u64,
}

impl Quantiles {
    /// Nearest-rank percentiles of `values` (sorted here).
    pub fn of(values: &mut [f64]) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if values.is_empty() {
                return 0.0;
            }
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            values[rank - 1]
        };
        Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            count: values.len() as u64,
        }
    }
}

/// What the event log showed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsSummary {
    /// Events read.
    pub events: u64,
    /// `deferred` events among them (retries the sink caused).
    pub deferred: u64,
    /// Submission (start of the POST) to the `delivered` event, per delivered recipient.
    /// The API's timestamps are whole seconds: each is taken as the middle of its second,
    /// so these figures are good to about ±0.5 s.
    pub latency: Quantiles,
    /// Recipients with no final event.
    pub missing: u64,
    /// Recipients with more than one final event.
    pub repeated: u64,
    /// Recipients whose final outcome is not the sink's decision (550 → bounced, anything
    /// else → delivered), including expired or suppressed ones.
    pub wrong: u64,
    /// Events for addresses the run never submitted.
    pub unknown: u64,
    /// A few examples of the problems above.
    pub examples: Vec<String>,
}

impl EventsSummary {
    /// No problem found.
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.repeated == 0 && self.wrong == 0 && self.unknown == 0
    }
}

/// The final events seen for one recipient.
#[derive(Debug, Default, Clone, Copy)]
struct Finals {
    delivered: u32,
    bounced: u32,
    other: u32,
}

/// Reads the whole event log and checks it against the recipients of `options`.
/// `submitted` maps each job id to the time its POST started.
pub(crate) async fn read(
    client: Client,
    options: &LoadOptions,
    submitted: &HashMap<String, SystemTime>,
    deadline: Instant,
) -> Result<EventsSummary, LoadError> {
    let mut summary = EventsSummary::default();
    let mut finals: HashMap<String, Finals> = HashMap::with_capacity(options.recipients as usize);
    let mut latencies = Vec::with_capacity(options.recipients as usize);
    let mut after = 0u64;
    let max_pages = options.recipients as usize * 4 / PAGE + 100;
    for _ in 0..max_pages {
        if Instant::now() > deadline {
            return Err(LoadError::Timeout(
                options.timeout,
                "reading the event log".into(),
            ));
        }
        let path = format!("/v1/events?after={after}&limit={PAGE}");
        let page = client.get(&path, Duration::from_secs(30)).await?.json()?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        for e in &events {
            summary.events += 1;
            after = after.max(e["cursor"].as_u64().unwrap_or(after));
            record(e, submitted, &mut finals, &mut latencies, &mut summary);
        }
    }
    summary.latency = Quantiles::of(&mut latencies);
    judge(options, &finals, &mut summary);
    Ok(summary)
}

/// Counts one event.
fn record(
    e: &serde_json::Value,
    submitted: &HashMap<String, SystemTime>,
    finals: &mut HashMap<String, Finals>,
    latencies: &mut Vec<f64>,
    summary: &mut EventsSummary,
) {
    let to = e["to"].as_str().unwrap_or_default().to_ascii_lowercase();
    let kind = e["event"].as_str().unwrap_or_default();
    if kind == "deferred" {
        summary.deferred += 1;
        return;
    }
    let f = finals.entry(to).or_default();
    match kind {
        "delivered" => {
            f.delivered += 1;
            let start = e["job"].as_str().and_then(|j| submitted.get(j));
            let at = e["at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            if let (Some(start), Some(at)) = (start, at) {
                let at = at + Duration::from_millis(500);
                let seconds = at.duration_since(*start).unwrap_or_default().as_secs_f64();
                latencies.push(seconds);
            }
        }
        "bounced" => f.bounced += 1,
        _ => f.other += 1,
    }
}

/// Compares the final outcomes with the sink's decisions.
fn judge(options: &LoadOptions, finals: &HashMap<String, Finals>, summary: &mut EventsSummary) {
    let example = |summary: &mut EventsSummary, text: String| {
        if summary.examples.len() < 10 {
            summary.examples.push(text);
        }
    };
    let mut found = 0u64;
    for i in 0..options.recipients {
        let to = address(i, options.domains);
        let f = finals.get(&to).copied().unwrap_or_default();
        found += u64::from(finals.contains_key(&to));
        let total = f.delivered + f.bounced + f.other;
        let permfail = sink_permfails(&to, options.permfail_percent, options.seed);
        if total == 0 {
            summary.missing += 1;
            example(summary, format!("{to}: no final event"));
        } else if total > 1 {
            summary.repeated += 1;
            example(summary, format!("{to}: {total} final events {f:?}"));
        } else if (permfail && f.bounced != 1) || (!permfail && f.delivered != 1) {
            summary.wrong += 1;
            let expected = if permfail { "bounced" } else { "delivered" };
            example(summary, format!("{to}: expected {expected}, got {f:?}"));
        }
    }
    summary.unknown = (finals.len() as u64).saturating_sub(found);
    if summary.unknown > 0 {
        example(
            summary,
            format!("{} unexpected addresses in the log", summary.unknown),
        );
    }
}

/// Unix seconds of `t`, for reports.
pub(crate) fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let q = Quantiles::of(&mut v);
        assert_eq!(
            (q.p50, q.p90, q.p99, q.p999, q.count),
            (500.0, 900.0, 990.0, 999.0, 1000)
        );
        assert_eq!(Quantiles::of(&mut []).p50, 0.0);
    }

    #[test]
    fn judges_outcomes_against_the_sink() {
        let mut options = LoadOptions::new("v".into(), "s".into(), "r".into());
        options.recipients = 3;
        options.domains = 1;
        let mut finals = HashMap::new();
        let ok = Finals {
            delivered: 1,
            ..Finals::default()
        };
        finals.insert(address(0, 1), ok);
        finals.insert(
            address(1, 1),
            Finals {
                delivered: 2,
                ..Finals::default()
            },
        );
        finals.insert("stranger@x".into(), ok);
        let mut summary = EventsSummary::default();
        judge(&options, &finals, &mut summary);
        assert_eq!(
            (
                summary.missing,
                summary.repeated,
                summary.wrong,
                summary.unknown
            ),
            (1, 1, 0, 1)
        );
        assert!(!summary.ok());
    }
}
