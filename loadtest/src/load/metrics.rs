//! volley's `/metrics` (Prometheus text) read back: the per-phase latency summaries
//! (`volley_stage_seconds`), the outcome counters and the connections opened per site.

use std::collections::BTreeMap;

/// One phase's latency summary, in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageSummary {
    /// The `stage` label (`queue_wait`, `dns`, `connect`, `tls`, `ehlo`, `transaction`,
    /// `delivery`).
    pub stage: String,
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
    /// Sum of the observations.
    pub sum: f64,
}

/// What the driver reads from `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scraped {
    /// Every `volley_stage_seconds` summary, in the order they appear.
    pub stages: Vec<StageSummary>,
    /// `volley_deliveries_total` by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// The sum of `volley_site_connections_opened_total` over every site.
    pub connections_opened: u64,
    /// How many sites `volley_site_connections_opened_total` lists.
    pub sites: usize,
    /// The largest `volley_site_window`: transactions a connection was last handed in
    /// one go.
    pub window: u64,
}

impl Scraped {
    /// The summary of `stage`, if present.
    pub fn stage(&self, stage: &str) -> Option<&StageSummary> {
        self.stages.iter().find(|s| s.stage == stage)
    }
}

/// Parses the Prometheus text of `/metrics`; unknown lines are ignored.
pub(super) fn parse(text: &str) -> Scraped {
    let mut out = Scraped::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = split_series(series);
        match name {
            "volley_stage_seconds" | "volley_stage_seconds_sum" | "volley_stage_seconds_count" => {
                let Some(stage) = label(labels, "stage") else {
                    continue;
                };
                let entry = stage_entry(&mut out.stages, stage);
                match (name, label(labels, "quantile")) {
                    ("volley_stage_seconds", Some("0.5")) => entry.p50 = value,
                    ("volley_stage_seconds", Some("0.9")) => entry.p90 = value,
                    ("volley_stage_seconds", Some("0.99")) => entry.p99 = value,
                    ("volley_stage_seconds", Some("0.999")) => entry.p999 = value,
                    ("volley_stage_seconds_sum", _) => entry.sum = value,
                    ("volley_stage_seconds_count", _) => entry.count = value as u64,
                    _ => {}
                }
            }
            "volley_deliveries_total" => {
                if let Some(outcome) = label(labels, "outcome") {
                    out.outcomes.insert(outcome.to_owned(), value as u64);
                }
            }
            "volley_site_connections_opened_total" => {
                out.connections_opened += value as u64;
                out.sites += 1;
            }
            "volley_site_window" => out.window = out.window.max(value as u64),
            _ => {}
        }
    }
    out
}

fn stage_entry<'a>(stages: &'a mut Vec<StageSummary>, stage: &str) -> &'a mut StageSummary {
    let at = match stages.iter().position(|s| s.stage == stage) {
        Some(at) => at,
        None => {
            stages.push(StageSummary {
                stage: stage.to_owned(),
                ..StageSummary::default()
            });
            stages.len() - 1
        }
    };
    &mut stages[at]
}

/// `name{labels}` → (`name`, `labels`).
fn split_series(series: &str) -> (&str, &str) {
    match series.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or(rest)),
        None => (series, ""),
    }
}

/// The value of label `key` (volley's label values used here never contain `"` or `,`).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stages_outcomes_and_sites() {
        let text = "# TYPE volley_stage_seconds summary\n\
volley_stage_seconds{stage=\"delivery\",quantile=\"0.5\"} 0.25\n\
volley_stage_seconds{stage=\"delivery\",quantile=\"0.9\"} 0.5\n\
volley_stage_seconds{stage=\"delivery\",quantile=\"0.99\"} 1\n\
volley_stage_seconds{stage=\"delivery\",quantile=\"0.999\"} 2.5\n\
volley_stage_seconds_sum{stage=\"delivery\"} 30\n\
volley_stage_seconds_count{stage=\"delivery\"} 100\n\
volley_stage_seconds{stage=\"dns\",quantile=\"0.5\"} 0.001\n\
volley_deliveries_total{outcome=\"delivered\"} 95\n\
volley_deliveries_total{outcome=\"bounced\"} 5\n\
volley_site_connections_opened_total{site=\"a\"} 3\n\
volley_site_connections_opened_total{site=\"b\"} 4\n\
garbage line\n";
        let s = parse(text);
        let d = s.stage("delivery").unwrap();
        assert_eq!((d.p50, d.p90, d.p99, d.p999), (0.25, 0.5, 1.0, 2.5));
        assert_eq!((d.count, d.sum), (100, 30.0));
        assert_eq!(s.stages.len(), 2);
        assert_eq!(s.outcomes["delivered"], 95);
        assert_eq!((s.connections_opened, s.sites), (7, 2));
    }
}
