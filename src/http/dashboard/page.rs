//! The page and its two assets, embedded in the binary. They carry no data, so they are
//! served without a key; the script asks for one when the API needs it.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::http::ApiState;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Where the page's script and style sheet are served.
pub(super) const SCRIPT_PATH: &str = "/dashboard/app.js";
pub(super) const STYLE_PATH: &str = "/dashboard/style.css";

/// Only our own script, style sheet and API; no framing; SVG drawn by script is DOM, not a
/// resource, so nothing else needs allowing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: impl Into<Body>) -> Response {
    let headers: [(HeaderName, HeaderValue); 4] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // Revalidated every time, so an upgraded volley never runs a stale script.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(POLICY),
        ),
    ];
    (headers, body.into()).into_response()
}

/// `GET /`: the page, told whether the API wants a key.
pub(super) async fn index(State(state): State<ApiState>) -> Response {
    let required = if state.api_keys.is_empty() {
        "false"
    } else {
        "true"
    };
    let html = INDEX
        .replace("{{key_required}}", required)
        .replace("{{script}}", SCRIPT_PATH)
        .replace("{{style}}", STYLE_PATH);
    asset("text/html; charset=utf-8", html)
}

/// `GET /dashboard/app.js`.
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/style.css`.
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
