//! The HTTP API (axum): submissions, job status, events, metrics, health, and the
//! one-click unsubscribe endpoint.
//!
//! Every request body is read whole under the `max_body` limit and parsed here, so
//! that every failure is one JSON error shape: 400 malformed, 401 no key, 413 too
//! large, 422 invalid field, 503 storage unavailable. The API knows the queue's and
//! the composer's interfaces, nothing of SMTP.

mod dashboard;
mod error;
mod guard;
mod jobs;
mod json;
mod ops;
mod query;
mod server;
mod submissions;
mod suppressions;
mod unsubscribe;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

pub use error::ApiError;
pub use guard::Access;
pub use server::{ServerLimits, serve};

use crate::compose::Composer;
use crate::metrics::Metrics;
use crate::metrics::history::History;
use crate::queue::AnyQueue;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Where submissions are stored and status, events and suppressions are read.
    pub queue: Arc<AnyQueue>,
    /// Builds (and so checks) messages.
    pub composer: Arc<Composer>,
    /// Metrics, for `/metrics` and the dashboard.
    pub metrics: Arc<Metrics>,
    /// The last minutes of the metrics, for the dashboard's charts.
    pub history: Arc<History>,
    /// Accepted Bearer keys; empty means no key is needed.
    pub api_keys: Arc<Vec<String>>,
    /// Largest request body.
    pub max_body: usize,
    /// Most recipients of one campaign.
    pub max_recipients: usize,
    /// The egress pools mail may name.
    pub pools: Arc<[String]>,
    /// Above this many waiting deliveries, submissions get 429 (0: no limit).
    pub max_queue_depth: u64,
    /// Wakes the dispatcher when a submission is stored.
    pub submitted: Arc<tokio::sync::Notify>,
    /// The hosts and origins allowed besides loopback.
    pub access: Arc<Access>,
    /// On the Redis backend, the cluster this worker belongs to (`/v1/cluster`).
    pub cluster: Option<Arc<crate::cluster::RedisCluster>>,
    /// This process's id and start time, as `/v1/cluster` lists it.
    pub worker: Arc<str>,
    /// When this process started.
    pub started: std::time::SystemTime,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/v1/messages", post(submissions::submit_message))
        .route("/v1/campaigns", post(submissions::submit_campaign))
        .route("/v1/jobs/{id}", get(jobs::job))
        .route("/v1/events", get(jobs::events))
        .route("/v1/suppressions", get(suppressions::list))
        .route(
            "/v1/suppressions/{address}",
            get(suppressions::get)
                .put(suppressions::put)
                .delete(suppressions::delete),
        )
        .route("/metrics", get(ops::metrics))
        .route("/v1/cluster", get(ops::cluster))
        .merge(dashboard::api_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    // The dashboard's page holds no data; it asks for the key itself. It is guarded
    // like the API all the same: a rebound name must not even show it.
    let guarded = protected
        .merge(dashboard::page_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), guard::guard));
    // Health checks come from load balancers, unsubscribe clicks from mailbox
    // providers: neither has an API key, and both may come from anywhere.
    let open = Router::new().route("/healthz", get(ops::health)).route(
        "/v1/unsubscribe/{token}",
        get(unsubscribe::unsubscribe_page).post(unsubscribe::unsubscribe),
    );
    guarded
        .merge(open)
        // The handlers read bodies through `Bytes` under this limit and answer 413.
        .layer(DefaultBodyLimit::max(state.max_body))
        .with_state(state)
}

async fn require_key(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.api_keys.is_empty() {
        return Ok(next.run(request).await);
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(key)
            if state
                .api_keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            Ok(next.run(request).await)
        }
        _ => Err(ApiError::unauthorized()),
    }
}

/// Compares without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
