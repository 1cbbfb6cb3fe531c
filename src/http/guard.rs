//! Cross-site and DNS-rebinding protection for every API route, keyed or not.
//!
//! A web page in a browser can make requests to a volley on loopback: a form post with
//! `Content-Type: text/plain` needs no preflight, and a DNS name the attacker points at
//! 127.0.0.1 makes the page same-origin with volley. So:
//! - a request whose `Host` is neither an IP address, `localhost`, nor listed in
//!   `[server] allowed_hosts` is refused (421): a rebound name is none of these;
//! - a request carrying an `Origin` other than its own host's (or one listed in
//!   `[server] allowed_origins`) is refused (403);
//! - a request with a body must say `Content-Type: application/json` (415), which a page
//!   cannot send cross-site without a preflight that volley never answers.
//!
//! `/healthz` and the unsubscribe endpoints are not guarded: load balancers and mailbox
//! providers call them from anywhere, and the latter prove themselves with a token.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, ApiState};

/// Who may reach the API besides loopback and IP literals.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Host names (`name` for any port, or `name:port`) the API answers to.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://admin.example.com`) whose pages may call the API.
    pub allowed_origins: Vec<String>,
}

impl Access {
    /// Whether a `Host` header names this API: an IP literal (which no DNS can rebind),
    /// `localhost`, or a listed name.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok() {
            return true;
        }
        self.allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
    }

    /// Whether a page of `origin` may call the API reached as `host`: its own origin, or
    /// a listed one.
    pub fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        let own = ["http://", "https://"].iter().any(|scheme| {
            origin
                .strip_prefix(scheme)
                .is_some_and(|o| o.eq_ignore_ascii_case(host))
        });
        own || self
            .allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// The host part of a `Host` value (`[::1]:8025` → `::1`, `a.example:80` → `a.example`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') => {
            name
        }
        _ => host,
    }
}

fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// The middleware on every guarded route: checks `Host` (421), then `Origin` (403), then
/// that a POST, PUT or PATCH with a body says `application/json` (415).
pub(super) async fn guard(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(ToString::to_string))
        .unwrap_or_default();
    if !state.access.host_allowed(&host) {
        return Err(ApiError::misdirected(&host));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !state.access.origin_allowed(origin, &host) {
            return Err(ApiError::forbidden_origin(origin));
        }
    }
    let sends_body = matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    );
    if sends_body && has_body(&request) && !is_json(request.headers()) {
        return Err(ApiError::unsupported_media_type());
    }
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ip_literals_localhost_or_listed() {
        let access = Access {
            allowed_hosts: vec!["volley.internal".into(), "mail.example.com:8443".into()],
            allowed_origins: vec![],
        };
        for ok in [
            "127.0.0.1:8025",
            "[::1]:8025",
            "10.1.2.3",
            "localhost:8025",
            "LOCALHOST",
            "volley.internal:8025",
            "mail.example.com:8443",
        ] {
            assert!(access.host_allowed(ok), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:8025",
            "mail.example.com:80",
            "",
        ] {
            assert!(!access.host_allowed(refused), "{refused}");
        }
    }

    #[test]
    fn origins_are_the_hosts_own_or_listed() {
        let access = Access {
            allowed_hosts: vec![],
            allowed_origins: vec!["https://admin.example.com/".into()],
        };
        let host = "127.0.0.1:8025";
        assert!(access.origin_allowed("http://127.0.0.1:8025", host));
        assert!(access.origin_allowed("https://admin.example.com", host));
        for refused in ["http://evil.example", "null", "http://127.0.0.1:9999", ""] {
            assert!(!access.origin_allowed(refused, host), "{refused}");
        }
    }
}
