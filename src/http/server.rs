//! The HTTP server: hyper's HTTP/1.1 connections under a connection cap, a header-read
//! timeout (which also closes idle keep-alive connections) and a time limit on
//! receiving each request's body, with a graceful stop.
//!
//! The time limit covers receiving a request, not handling it: cutting off a campaign
//! half-way through being stored would only make its client send it again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::LengthLimitError;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::ApiError;

/// Limits on the server's clients.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time to send a request's headers, and the longest a keep-alive connection may
    /// sit idle.
    pub header_timeout: Duration,
    /// Time to send a request's body once its headers are in.
    pub request_timeout: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Largest body, as `[server] max_body` (413 above it).
    pub max_body: usize,
    /// How long a stop waits for requests in progress.
    pub drain: Duration,
}

/// Serves `app` on `listener` until `stop` resolves, then stops accepting and lets the
/// requests in progress finish (at most `limits.drain`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    stop: impl Future<Output = ()> + Send,
) {
    let app = app.layer(middleware::from_fn_with_state(limits, receive_within));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut stop => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept:
                    // wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // Errors here are a client's doing (a reset, a timeout, bad HTTP).
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API requests still in progress at stop were cut off");
    }
}

/// Reads the whole body within `request_timeout` (408 otherwise), then hands the request
/// on with the body in memory.
async fn receive_within(
    State(limits): State<ServerLimits>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, limits.max_body);
    let bytes = match tokio::time::timeout(limits.request_timeout, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if too_long(&e) => {
            return ApiError::too_large(limits.max_body).into_response();
        }
        // Bad chunked encoding, or the client went away.
        Ok(Err(_)) => {
            return ApiError::malformed("the request body could not be read").into_response();
        }
        Err(_) => return ApiError::request_timeout(limits.request_timeout).into_response(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Whether reading a body failed because it was over the limit.
fn too_long(e: &axum::Error) -> bool {
    std::error::Error::source(e).is_some_and(|s| s.is::<LengthLimitError>())
}
