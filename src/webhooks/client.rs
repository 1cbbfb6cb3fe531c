//! The HTTP client that posts one signed batch and says whether it was acknowledged.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Url, header::CONTENT_TYPE, redirect};
use serde::Serialize;

use crate::queue::Event;

use super::{
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_BACKOFF, DEFAULT_TIMEOUT, WebhookError, WebhooksConfig,
    signature,
};

/// Bytes of a refused answer's body kept for the error message.
const BODY_SNIPPET: usize = 256;

/// Posts signed batches of events to the configured URL. Cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    url: Url,
    secret: Arc<str>,
    timeout: Duration,
    pub(super) batch_size: usize,
    pub(super) max_backoff: Duration,
}

// By hand, so that the secret never reaches a log.
impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient")
            .field("url", &self.url.as_str())
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("batch_size", &self.batch_size)
            .field("max_backoff", &self.max_backoff)
            .finish()
    }
}

/// The body of every POST.
#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

impl WebhookClient {
    /// Checks the configuration (an `http` or `https` URL with a host, a non-empty
    /// secret) and builds the HTTP client: TLS through rustls on ring, trusting the
    /// webpki roots; no redirects followed, since a redirect would send the signed
    /// batch somewhere the operator did not configure.
    pub fn new(config: &WebhooksConfig) -> Result<Self, WebhookError> {
        let url = parse_url(&config.url)?;
        if config.secret.is_empty() {
            return Err(WebhookError::Config {
                field: "secret",
                reason: "required when webhooks.url is set: receivers need it to check \
                         that batches come from volley"
                    .into(),
            });
        }
        let timeout = or_default(config.timeout, DEFAULT_TIMEOUT);
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirect::Policy::none())
            .user_agent(concat!("volley/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.into()))?;
        Ok(Self {
            http,
            url,
            secret: config.secret.as_str().into(),
            timeout,
            batch_size: match config.batch_size {
                0 => DEFAULT_BATCH_SIZE,
                n => n,
            },
            max_backoff: or_default(config.max_backoff, DEFAULT_MAX_BACKOFF),
        })
    }

    /// Sends `events` as one signed POST of `{"events": [...]}`. Any 2xx answer is
    /// an acknowledgement; any other status, a timeout or a transport failure is an
    /// error, to be retried by the caller.
    pub async fn post(&self, events: &[Event]) -> Result<(), WebhookError> {
        let body = serde_json::to_vec(&Batch { events })?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signature = signature::sign(&self.secret, timestamp, &body);
        let mut response = self
            .http
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(signature::TIMESTAMP_HEADER, timestamp)
            .header(signature::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| self.request_error(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // Only the first chunk: enough to explain a refusal, and a hostile or broken
        // receiver cannot make us buffer a large body.
        let chunk = response.chunk().await.ok().flatten().unwrap_or_default();
        let body = String::from_utf8_lossy(&chunk[..chunk.len().min(BODY_SNIPPET)]).into_owned();
        Err(WebhookError::Status {
            status: status.as_u16(),
            body,
        })
    }

    fn request_error(&self, e: reqwest::Error) -> WebhookError {
        if e.is_timeout() {
            WebhookError::Timeout(self.timeout)
        } else {
            WebhookError::Transport(e)
        }
    }
}

fn parse_url(text: &str) -> Result<Url, WebhookError> {
    let invalid = |reason: String| WebhookError::Config {
        field: "url",
        reason,
    };
    let url = Url::parse(text.trim()).map_err(|e| invalid(format!("{text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "{text:?}: the scheme must be http or https"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{text:?}: no host")));
    }
    Ok(url)
}

/// The one rustls configuration: ring as the provider (the crate links no other),
/// the webpki roots as trust anchors.
fn tls_config() -> Result<rustls::ClientConfig, WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Client(e.into()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn or_default(value: Duration, default: Duration) -> Duration {
    if value.is_zero() { default } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> WebhooksConfig {
        WebhooksConfig {
            url: url.into(),
            secret: "s".into(),
            ..WebhooksConfig::default()
        }
    }

    #[test]
    fn accepts_http_and_https_urls_only() {
        for good in [
            "http://127.0.0.1:9/hook",
            "https://hooks.example.com/volley",
        ] {
            WebhookClient::new(&config(good)).unwrap();
        }
        for bad in [
            "",
            "hooks.example.com/x",
            "ftp://example.com/",
            "file:///tmp/x",
        ] {
            let err = WebhookClient::new(&config(bad)).unwrap_err();
            assert!(
                matches!(err, WebhookError::Config { field: "url", .. }),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn requires_a_secret() {
        let err = WebhookClient::new(&WebhooksConfig {
            secret: String::new(),
            ..config("http://127.0.0.1:9/")
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("webhooks.secret:"), "{err}");
    }

    #[test]
    fn zero_settings_mean_the_defaults_and_debug_hides_the_secret() {
        let client = WebhookClient::new(&WebhooksConfig {
            secret: "hunter2".into(),
            batch_size: 0,
            timeout: Duration::ZERO,
            max_backoff: Duration::ZERO,
            ..config("http://127.0.0.1:9/")
        })
        .unwrap();
        assert_eq!(client.batch_size, 100);
        assert_eq!(client.timeout, Duration::from_secs(10));
        assert_eq!(client.max_backoff, Duration::from_secs(300));
        assert!(!format!("{client:?}").contains("hunter2"));
    }
}
