//! Delivery-event webhooks: events are pushed to `[webhooks] url` in signed batches,
//! retried with backoff until the receiver acknowledges them, in a task of their own.
//!
//! This module owns the wire format of a webhook (the JSON batch of
//! [`Event`](crate::queue::Event)s, the `Volley-Timestamp` and `Volley-Signature`
//! headers), the HTTP client that posts it, and the loop that walks the event log after
//! a cursor. It knows nothing of SMTP, of the queue's internals (events arrive through
//! the caller's [`EventSource`]) or of the HTTP API's routing; the wiring in `app`
//! connects it.
//!
//! Delivery is at least once: a batch whose acknowledgement is lost, or that was in
//! flight at shutdown, is sent again. Receivers deduplicate by `cursor`.

mod client;
mod delivery;
mod signature;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::WebhookClient;
pub use delivery::{EventSource, run};
pub use signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify};

/// Events per POST when `batch_size` is 0 or absent.
const DEFAULT_BATCH_SIZE: usize = 100;
/// Per-request timeout when `timeout` is 0 or absent.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between retries when `max_backoff` is 0 or absent.
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// `[webhooks]`: where delivery events are pushed and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// `http://` or `https://` URL receiving the batches. Empty (the default): off.
    pub url: String,
    /// Shared secret keying the HMAC-SHA256 signature. Required when `url` is set.
    pub secret: String,
    /// Events per POST. Default 100; 0 means the default.
    pub batch_size: usize,
    /// Time allowed for one POST, connect to response. Default `"10s"`; 0 means the
    /// default.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait between two attempts at a failing batch (waits double from 1s up
    /// to this). Default `"5m"`; 0 means the default.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            secret: String::new(),
            batch_size: DEFAULT_BATCH_SIZE,
            timeout: DEFAULT_TIMEOUT,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

impl WebhooksConfig {
    /// Whether webhooks are switched on (a URL is configured).
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }
}

/// Why a webhook client could not be built or a batch was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A `[webhooks]` setting is unusable.
    #[error("webhooks.{field}: {reason}")]
    Config {
        /// The webhooks setting at fault, without the section prefix: `url` or `secret`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client (TLS setup included) could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The batch could not be encoded as JSON.
    #[error("cannot encode the webhook batch: {0}")]
    Encode(#[from] serde_json::Error),
    /// The receiver answered, but not with a 2xx status.
    #[error("webhook receiver answered {status}: {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, for the log.
        body: String,
    },
    /// No complete answer within the configured timeout.
    #[error("webhook receiver did not answer within {0:?}")]
    Timeout(Duration),
    /// The request failed before an answer: DNS, connect, TLS, reset.
    #[error("webhook request failed: {0}")]
    Transport(#[source] reqwest::Error),
}

impl WebhookError {
    /// The HTTP status of a non-2xx answer, if the receiver answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the request ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }
}
