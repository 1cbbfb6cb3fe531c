//! `GET /metrics` and `GET /healthz`: for Prometheus, load balancers and orchestrators.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::cluster::WorkerInfo;
use crate::queue::Queue;

/// `GET /metrics`: the engine's metrics and the queue's depth, Prometheus text.
pub(super) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mut text = state.metrics.render_prometheus();
    let depth = state.queue.depth(SystemTime::now()).await?;
    text.push_str("# TYPE volley_queue_depth gauge\n");
    for (name, value) in [
        ("ready", depth.ready),
        ("scheduled", depth.scheduled),
        ("leased", depth.leased),
    ] {
        text.push_str(&format!("volley_queue_depth{{state=\"{name}\"}} {value}\n"));
    }
    // A worker of a cluster labels its series; Prometheus adds the workers up.
    if state.cluster.is_some() {
        text = crate::metrics::with_label(&text, "worker", &state.worker);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /healthz`: 200 when the queue answers. The depth it reads is three counters,
/// whatever the queue holds, so a health checker cannot load the queue.
pub(super) async fn health(State(state): State<ApiState>) -> Response {
    match state.queue.depth(SystemTime::now()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `GET /v1/cluster`: the live workers (on Redis, every worker whose heartbeat is fresh;
/// embedded, this process) and their totals.
pub(super) async fn cluster(
    State(state): State<ApiState>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let (backend, workers) = match &state.cluster {
        Some(cluster) => (
            "redis",
            cluster
                .workers()
                .await
                .map_err(|e| ApiError::from(crate::queue::QueueError::from(e)))?,
        ),
        None => (
            "embedded",
            vec![WorkerInfo::current(
                &state.worker,
                state.started,
                &state.metrics,
            )],
        ),
    };
    let in_flight: u64 = workers.iter().map(|w| w.in_flight).sum();
    let connections: u64 = workers.iter().flat_map(|w| w.connections.values()).sum();
    Ok(axum::Json(serde_json::json!({
        "backend": backend,
        "this_worker": &*state.worker,
        "totals": {
            "workers": workers.len(),
            "in_flight": in_flight,
            "connections": connections,
        },
        "workers": workers,
    })))
}
