//! The operators' dashboard: a live page at `/` and the JSON behind it.
//!
//! - The page is one HTML file, one script and one style sheet, embedded in the binary
//!   (`assets/`); the script draws its charts as SVG itself, so `cargo build` alone yields
//!   the whole product. It is served without a key; it asks for one when the API needs it,
//!   keeps it in the browser session and polls the JSON endpoints every second.
//! - `GET /v1/dashboard/stats` (behind the key): outcome totals, one point per second over
//!   the last five minutes, queue depth, sites, latency percentiles and a histogram.
//! - `GET /v1/dashboard/jobs` (behind the key): the newest jobs with their counts.
//! - The per-second points come from the sampler of [`crate::metrics::history`], whose
//!   [`History`](crate::metrics::history::History) is part of the API's state.
//!
//! It reads `metrics` and `queue`; it knows nothing of SMTP.

mod api;
mod page;

use axum::Router;
use axum::routing::get;

use super::ApiState;

/// The JSON endpoints, behind the API key.
pub(super) fn api_routes() -> Router<ApiState> {
    Router::new()
        .route("/v1/dashboard/stats", get(api::stats))
        .route("/v1/dashboard/jobs", get(api::jobs))
}

/// The page and its assets, which hold no data and need no key.
pub(super) fn page_routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(page::index))
        .route(page::SCRIPT_PATH, get(page::script))
        .route(page::STYLE_PATH, get(page::style))
}
