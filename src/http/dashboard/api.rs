//! The dashboard's JSON endpoints, behind the API key: `GET /v1/dashboard/stats` and
//! `GET /v1/dashboard/jobs`.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::event::EventKind;
use crate::http::query::{Query, limit};
use crate::http::{ApiError, ApiState};
use crate::metrics::history::{HISTOGRAM_STAGE, Latency};
use crate::metrics::{Counter, SiteCounters};
use crate::queue::Queue;
use crate::time::unix_ms;

/// `?since=MS`: only the points taken after that time.
#[derive(Debug, Deserialize)]
pub(super) struct StatsQuery {
    since: Option<u64>,
}

/// `?limit=N`.
#[derive(Debug, Deserialize)]
pub(super) struct JobsQuery {
    limit: Option<usize>,
}

fn site_json(site: &str, c: &SiteCounters, rate: f64, now_ms: u64) -> Value {
    let paused = c.paused_until_ms.load(Relaxed);
    let last = c.last_reply();
    json!({
        "site": site,
        "open": c.connections_open.load(Relaxed),
        "allowed": c.allowed.load(Relaxed),
        "limit": c.limit.load(Relaxed),
        "window": c.window.load(Relaxed),
        "delivered": c.delivered.load(Relaxed),
        "deferred": c.deferred.load(Relaxed),
        "bounced": c.bounced.load(Relaxed),
        "rate_per_s": (rate * 10.0).round() / 10.0,
        "paused_until": (paused > now_ms).then_some(paused),
        "last_reply": (!last.is_empty()).then_some(last),
        "provider": c.provider.get().map(|p| p.to_string()),
        "domains": c.domains(),
    })
}

/// `GET /v1/dashboard/stats?since=MS`.
pub(super) async fn stats(
    State(state): State<ApiState>,
    Query(query): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let now = SystemTime::now();
    let depth = state.queue.depth(now).await?;
    let snapshot = state.history.snapshot(query.since.unwrap_or(0));
    // Before the sampler's first tick (or without one), read the histograms here.
    let latency = match snapshot.latency {
        Some(latency) => latency,
        None => {
            let metrics = Arc::clone(&state.metrics);
            tokio::task::spawn_blocking(move || Latency::read(&metrics))
                .await
                .map_err(ApiError::internal)?
        }
    };
    let m = &state.metrics;
    let now_ms = unix_ms(now);
    let sites: Vec<Value> = m
        .sites()
        .iter()
        .map(|(site, c)| {
            let rate = snapshot.site_rates.get(site).copied().unwrap_or(0.0);
            site_json(site, c, rate, now_ms)
        })
        .collect();
    Ok(Json(json!({
        "now": now_ms,
        "totals": EventKind::ALL
            .iter()
            .map(|&k| (k.as_str().to_owned(), Value::from(m.counted(k))))
            .collect::<serde_json::Map<_, _>>(),
        // Reports that came back as mail after the handoff (their deliveries are counted
        // as delivered above): failed DSNs, and forged or unreadable mail ignored.
        "late": {
            "bounced": m.counter(Counter::LateBounces),
            "ignored": m.counter(Counter::LateReportsIgnored),
        },
        "series": snapshot.points,
        "depth": {
            "ready": depth.ready,
            "scheduled": depth.scheduled,
            "leased": depth.leased,
            "waiting": depth.leased.saturating_sub(m.in_flight_now()),
            "in_flight": m.in_flight_now(),
        },
        "sites": sites,
        "stages": latency.stages,
        "histogram": {"stage": HISTOGRAM_STAGE.name(), "buckets": latency.buckets},
    })))
}

/// `GET /v1/dashboard/jobs?limit=N`: the newest jobs first.
pub(super) async fn jobs(
    State(state): State<ApiState>,
    Query(query): Query<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(query.limit, 20, 200)?;
    let jobs = state.queue.recent_jobs(limit).await?;
    Ok(Json(json!({ "jobs": jobs })))
}
