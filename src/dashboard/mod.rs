//! The operators' dashboard: a live page at `/` and the JSON behind it.
//!
//! - The page is one HTML file, one script and one style sheet, embedded in the binary
//!   (`assets/`); the script draws its charts as SVG itself, so `cargo build` alone yields
//!   the whole product. It is served without a key; it asks for one when the API needs it,
//!   keeps it in the browser session and polls the JSON endpoints every second.
//! - `GET /v1/dashboard/stats` (behind the key): outcome totals, one point per second over
//!   the last five minutes, queue depth, sites, latency percentiles and a histogram.
//! - `GET /v1/dashboard/jobs` (behind the key): the newest jobs with their counts.
//! - A sampler task, started by `app`, turns the cumulative counters and the queue's depth
//!   into those per-second points ([`History`]); the handlers reach it as a request
//!   extension and answer without a series when it is absent.
//!
//! It reads `metrics` and `queue` and is routed by `http`; it knows nothing of SMTP.

mod api;
mod history;
mod page;

use axum::Router;
use axum::routing::get;

pub use self::history::{
    HISTOGRAM_STAGE, History, Latency, POINTS, Point, Snapshot, StageRow, start_sampler,
};
use crate::http::ApiState;

/// The JSON endpoints; `http` puts them behind the API key.
pub fn api_routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/dashboard/stats", get(api::stats))
        .route("/v1/dashboard/jobs", get(api::jobs))
}

/// The page and its assets, which hold no data and need no key.
pub fn page_routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(page::index))
        .route(page::SCRIPT_PATH, get(page::script))
        .route(page::STYLE_PATH, get(page::style))
}
