//! `GET /metrics` and `GET /healthz`: for Prometheus, load balancers and orchestrators.

use std::time::SystemTime;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ApiState};
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
