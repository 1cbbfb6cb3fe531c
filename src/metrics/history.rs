//! The last five minutes of the metrics: a ring of one point per second (outcome deltas
//! and queue depth), each site's recent rate and the latest latency summary, filled by a
//! sampler task and copied out by the dashboard's handlers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::{Metrics, Percentiles, Stage};
use crate::event::EventKind;
use crate::queue::{AnyQueue, Depth, Queue};
use crate::time::unix_ms;

/// Points kept: five minutes at one a second.
pub const POINTS: usize = 300;
/// Seconds over which a site's rate is measured.
const RATE_WINDOW: usize = 10;
/// The stage whose distribution the dashboard draws.
pub const HISTOGRAM_STAGE: Stage = Stage::Delivery;

/// One second of activity: outcomes counted during it, and the queue's depth at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Point {
    /// When it was taken, Unix milliseconds.
    pub t: u64,
    /// Recipients delivered in the second.
    pub delivered: u64,
    /// Recipients deferred in the second.
    pub deferred: u64,
    /// Recipients bounced in the second.
    pub bounced: u64,
    /// Recipients expired in the second.
    pub expired: u64,
    /// Recipients skipped as suppressed in the second.
    pub suppressed: u64,
    /// Deliveries due and waiting.
    pub ready: u64,
    /// Deliveries due later.
    pub scheduled: u64,
    /// Deliveries leased by this process's workers (waiting plus in flight).
    pub leased: u64,
    /// Leased and waiting in the engine: for a connection, a rate permit, a site.
    pub waiting: u64,
    /// On a connection: written, their replies awaited.
    pub in_flight: u64,
}

/// Percentiles of one stage, named.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct StageRow {
    /// The stage's metric label.
    pub stage: &'static str,
    /// Its percentiles in milliseconds.
    #[serde(flatten)]
    pub percentiles: Percentiles,
}

/// Every stage's percentiles and one stage's distribution.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Latency {
    /// One row per stage, in path order.
    pub stages: Vec<StageRow>,
    /// `(upper bound in ms, samples)` of [`HISTOGRAM_STAGE`].
    pub buckets: Vec<(f64, u64)>,
}

impl Latency {
    /// Reads the histograms. This merges every shard several times over: run it once a
    /// second on the blocking pool, not per request on an async thread.
    pub fn read(metrics: &Metrics) -> Self {
        Latency {
            stages: Stage::ALL
                .iter()
                .map(|&stage| StageRow {
                    stage: stage.name(),
                    percentiles: metrics.percentiles(stage),
                })
                .collect(),
            buckets: metrics.buckets(HISTOGRAM_STAGE),
        }
    }
}

/// A copy of what the sampler last recorded.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Points after the requested time, oldest first.
    pub points: Vec<Point>,
    /// Recipients per second over the last seconds, by site.
    pub site_rates: BTreeMap<Arc<str>, f64>,
    /// The latest latency summary; `None` before the first sample.
    pub latency: Option<Latency>,
}

#[derive(Debug, Default)]
struct Recorded {
    points: VecDeque<Point>,
    site_rates: BTreeMap<Arc<str>, f64>,
    latency: Option<Latency>,
}

/// What the sampler shares with the handlers.
#[derive(Debug, Default)]
pub struct History {
    // A std mutex: it is held only to push one point or to copy the ring out (a few
    // kilobytes), never across an `.await`, so readers and the sampler barely meet.
    recorded: Mutex<Recorded>,
}

impl History {
    fn record(&self, point: Point, site_rates: BTreeMap<Arc<str>, f64>, latency: Option<Latency>) {
        let mut r = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if r.points.len() == POINTS {
            r.points.pop_front();
        }
        r.points.push_back(point);
        r.site_rates = site_rates;
        if latency.is_some() {
            r.latency = latency;
        }
    }

    /// The points taken after `since` (Unix ms; 0 for all) and the latest rates and latency.
    pub fn snapshot(&self, since: u64) -> Snapshot {
        let r = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        Snapshot {
            points: r.points.iter().filter(|p| p.t > since).copied().collect(),
            site_rates: r.site_rates.clone(),
            latency: r.latency.clone(),
        }
    }
}

/// Turns cumulative counters into per-second points and site rates. Owned by the sampler
/// task: nothing here is shared.
#[derive(Debug, Default)]
struct Sampler {
    previous: [u64; EventKind::ALL.len()],
    /// Each site's `(ms, recipients so far)` over the rate window.
    sites: BTreeMap<Arc<str>, VecDeque<(u64, u64)>>,
}

impl Sampler {
    fn new(totals: [u64; EventKind::ALL.len()]) -> Self {
        Sampler {
            previous: totals,
            sites: BTreeMap::new(),
        }
    }

    fn sample(
        &mut self,
        t: u64,
        totals: [u64; EventKind::ALL.len()],
        depth: Depth,
        in_flight: u64,
        sites: impl IntoIterator<Item = (Arc<str>, u64)>,
    ) -> (Point, BTreeMap<Arc<str>, f64>) {
        let d: Vec<u64> = totals
            .iter()
            .zip(&self.previous)
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        self.previous = totals;
        let point = Point {
            t,
            delivered: d[EventKind::Delivered.index()],
            deferred: d[EventKind::Deferred.index()],
            bounced: d[EventKind::Bounced.index()],
            expired: d[EventKind::Expired.index()],
            suppressed: d[EventKind::Suppressed.index()],
            ready: depth.ready,
            scheduled: depth.scheduled,
            leased: depth.leased,
            waiting: depth.leased.saturating_sub(in_flight),
            in_flight,
        };
        let mut rates = BTreeMap::new();
        for (site, total) in sites {
            let window = self.sites.entry(Arc::clone(&site)).or_default();
            if window.len() > RATE_WINDOW {
                window.pop_front();
            }
            window.push_back((t, total));
            let rate = match (window.front(), window.back()) {
                (Some(&(t0, n0)), Some(&(t1, n1))) if t1 > t0 => {
                    n1.saturating_sub(n0) as f64 * 1000.0 / (t1 - t0) as f64
                }
                _ => 0.0,
            };
            rates.insert(site, rate);
        }
        // Sites no longer counted (pruned) leave the window too.
        self.sites.retain(|site, _| rates.contains_key(site));
        (point, rates)
    }
}

fn totals(metrics: &Metrics) -> [u64; EventKind::ALL.len()] {
    metrics.outcome_totals()
}

/// A site's counters are forgotten after this long without traffic.
pub const SITE_IDLE: Duration = Duration::from_secs(3600);

/// Starts the sampler: once a second it reads the counters and the queue's depth and
/// records a point, until `shutdown` turns true.
pub fn start_sampler(
    history: Arc<History>,
    metrics: Arc<Metrics>,
    queue: Arc<AnyQueue>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut sampler = Sampler::new(totals(&metrics));
        let mut depth = Depth::default();
        let mut ticks = 0u64;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let now = SystemTime::now();
            ticks += 1;
            if ticks.is_multiple_of(60) {
                let forgotten = metrics.prune_idle_sites(unix_ms(now), SITE_IDLE);
                if forgotten > 0 {
                    tracing::debug!(forgotten, "idle sites' counters forgotten");
                }
            }
            // An unavailable queue keeps the last depth known; the API reports the error.
            match queue.depth(now).await {
                Ok(d) => depth = d,
                Err(e) => tracing::debug!(error = %e, "dashboard: queue depth unavailable"),
            }
            let m = Arc::clone(&metrics);
            let latency = tokio::task::spawn_blocking(move || Latency::read(&m))
                .await
                .ok();
            let sites = metrics.sites().into_iter().map(|(site, c)| {
                let n = c.delivered.load(Relaxed) + c.deferred.load(Relaxed);
                (site, n + c.bounced.load(Relaxed))
            });
            let (point, rates) = sampler.sample(
                unix_ms(now),
                totals(&metrics),
                depth,
                metrics.in_flight_now(),
                sites,
            );
            history.record(point, rates, latency);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(ready: u64) -> Depth {
        Depth {
            ready,
            scheduled: 1,
            leased: 2,
        }
    }

    #[test]
    fn points_are_per_second_deltas_and_depth_is_a_gauge() {
        let mut s = Sampler::new([10, 0, 0, 0, 0, 0]);
        let (p, _) = s.sample(1000, [15, 1, 0, 0, 2, 0], depth(7), 1, []);
        assert_eq!(
            p,
            Point {
                t: 1000,
                delivered: 5,
                deferred: 1,
                suppressed: 2,
                ready: 7,
                scheduled: 1,
                leased: 2,
                waiting: 1,
                in_flight: 1,
                ..Point::default()
            }
        );
        let (p, _) = s.sample(2000, [15, 1, 0, 0, 2, 0], depth(3), 0, []);
        assert_eq!((p.delivered, p.deferred, p.ready), (0, 0, 3));
    }

    #[test]
    fn site_rates_cover_the_last_seconds() {
        let site: Arc<str> = Arc::from("mx.example");
        let mut s = Sampler::default();
        let (_, r) = s.sample(
            0,
            [0; EventKind::ALL.len()],
            depth(0),
            0,
            [(Arc::clone(&site), 100)],
        );
        assert_eq!(r[&site], 0.0, "one sample is no rate");
        for i in 1..=30u64 {
            let (_, r) = s.sample(
                i * 1000,
                [0; EventKind::ALL.len()],
                depth(0),
                0,
                [(Arc::clone(&site), 100 + i * 50)],
            );
            assert_eq!(r[&site], 50.0, "second {i}");
        }
        // A site that stops sending drops to zero within the window.
        let mut rate = 50.0;
        for i in 31..=42u64 {
            rate = s
                .sample(
                    i * 1000,
                    [0; EventKind::ALL.len()],
                    depth(0),
                    0,
                    [(Arc::clone(&site), 1600)],
                )
                .1[&site];
        }
        assert_eq!(rate, 0.0);
    }

    #[test]
    fn the_ring_keeps_five_minutes() {
        let history = History::default();
        for t in 1..=(POINTS as u64 + 20) {
            let point = Point {
                t,
                ..Point::default()
            };
            history.record(point, BTreeMap::new(), None);
        }
        let all = history.snapshot(0).points;
        assert_eq!(all.len(), POINTS);
        assert_eq!((all[0].t, all[POINTS - 1].t), (21, POINTS as u64 + 20));
        let newer = history.snapshot(POINTS as u64 + 18).points;
        assert_eq!(newer.len(), 2, "only the points after `since`");
        assert!(history.snapshot(0).latency.is_none());
    }
}
