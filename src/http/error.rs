//! The one error type of the HTTP API: `{"error": {"code", "message", "field"}}` with
//! the status that says whose fault it is. Client errors are answered as they are;
//! internal ones are logged and answered with a generic message.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::queue::QueueError;
use crate::submit::Invalid;

/// An API error: a status, a stable `code` for programs, a message for people, and
/// the field at fault when there is one.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    retry_after: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400: the body is not JSON (or not the JSON we expect at all).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer KEY)",
        )
    }

    /// 403: a page of another origin may not call the API.
    pub fn forbidden_origin(origin: &str) -> Self {
        let shown: String = origin.chars().take(100).collect();
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            format!("requests from pages of {shown:?} are refused (see [server] allowed_origins)"),
        )
    }

    /// 421: the request names a host this API does not answer to (DNS rebinding).
    pub fn misdirected(host: &str) -> Self {
        let shown: String = host.chars().take(100).collect();
        Self::new(
            StatusCode::MISDIRECTED_REQUEST,
            "misdirected",
            format!("this API does not answer to the host {shown:?} (see [server] allowed_hosts)"),
        )
    }

    /// 408: the request's body did not arrive in time.
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request did not arrive within {} (see [server] request_timeout)",
                humantime::format_duration(limit)
            ),
        )
    }

    /// 415: a body that is not JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be sent as Content-Type: application/json",
        )
    }

    /// 404.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 409: an idempotency key reused for another request.
    pub fn idempotency_conflict() -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this Idempotency-Key was used within 24 h for a different request",
        );
        e.field = Some("Idempotency-Key".into());
        e
    }

    /// 409: the first submission with this idempotency key is still being stored.
    pub fn idempotency_in_progress() -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being stored; ask again shortly",
        );
        e.field = Some("Idempotency-Key".into());
        e.retry_after = Some(1);
        e
    }

    /// 429: the queue holds `[server] max_queue_depth` or more.
    pub fn queue_full(depth: u64, limit: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!("{depth} deliveries are waiting, the limit is {limit}; try again later"),
        );
        e.retry_after = Some(30);
        e
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    /// 422 naming the field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        e.field = Some(field.into()).filter(|f: &String| !f.is_empty());
        e
    }

    /// 503 with Retry-After: storage unavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(5);
        e
    }

    /// 500, logged; the client sees nothing of the internals.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error in the HTTP API");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::invalid(e.field, e.message)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            // The caller's input, refused by the store: retrying cannot help.
            QueueError::Invalid { field, message } => Self::invalid(field, message),
            e => {
                tracing::error!(error = %e, "queue unavailable");
                Self::unavailable("the queue is unavailable; try again later")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"code": self.code, "message": self.message, "field": self.field}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
