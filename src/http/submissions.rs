//! `POST /v1/messages` and `POST /v1/campaigns`: validated off the async threads, stored
//! durably, answered `202` only once stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::json::{body, parse};
use super::{ApiError, ApiState};
use crate::queue::{Queue, SubmitOutcome};
use crate::submit::{
    CampaignRequest, Context, MessageRequest, Prepared, prepare_campaign, prepare_message,
};

/// The `Idempotency-Key` and a hash of what it must mean.
fn idempotency(
    headers: &HeaderMap,
    path: &str,
    body: &[u8],
) -> Result<Option<(String, [u8; 32])>, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    let mut hash = Sha256::new();
    hash.update(path.as_bytes());
    hash.update([0]);
    hash.update(body);
    Ok(Some((key.to_owned(), hash.finalize().into())))
}

/// Back-pressure: refuses new work while the queue holds `[server] max_queue_depth` or more.
async fn check_depth(state: &ApiState) -> Result<(), ApiError> {
    if state.max_queue_depth == 0 {
        return Ok(());
    }
    let depth = state.queue.depth(SystemTime::now()).await?;
    let waiting = depth.ready + depth.scheduled;
    if waiting >= state.max_queue_depth {
        return Err(ApiError::queue_full(waiting, state.max_queue_depth));
    }
    Ok(())
}

/// Sets its flag when dropped: the handler's future is dropped when the client goes
/// away, and the validation running on the blocking pool sees it and stops.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn context(state: &ApiState) -> (Context, CancelOnDrop) {
    let mut ctx = Context::at(SystemTime::now());
    ctx.max_recipients = state.max_recipients;
    ctx.pools = Arc::clone(&state.pools);
    let guard = CancelOnDrop(Arc::clone(&ctx.cancelled));
    (ctx, guard)
}

async fn store(state: &ApiState, prepared: Prepared) -> Result<Response, ApiError> {
    let requested = prepared.requested;
    let (job, recipients) = prepared.into_parts();
    match state
        .queue
        .submit(job, recipients, SystemTime::now())
        .await?
    {
        SubmitOutcome::Created { id, recipients } | SubmitOutcome::Existing { id, recipients } => {
            state.submitted.notify_one();
            let merged =
                requested.saturating_sub(usize::try_from(recipients).unwrap_or(usize::MAX));
            let body = json!({"id": id.to_string(), "recipients": recipients, "merged": merged});
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        SubmitOutcome::IdempotencyConflict => Err(ApiError::idempotency_conflict()),
        SubmitOutcome::IdempotencyInProgress => Err(ApiError::idempotency_in_progress()),
    }
}

/// `POST /v1/messages`.
pub(super) async fn submit_message(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(&state, raw)?;
    let request: MessageRequest = parse(&bytes)?;
    let key = idempotency(&headers, "/v1/messages", &bytes)?;
    check_depth(&state).await?;
    let composer = Arc::clone(&state.composer);
    let (ctx, _cancel) = context(&state);
    let prepared =
        tokio::task::spawn_blocking(move || prepare_message(request, &composer, key, &ctx))
            .await
            .map_err(ApiError::internal)??;
    store(&state, prepared).await
}

/// `POST /v1/campaigns`.
pub(super) async fn submit_campaign(
    State(state): State<ApiState>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(&state, raw)?;
    let key = idempotency(&headers, "/v1/campaigns", &bytes)?;
    check_depth(&state).await?;
    let composer = Arc::clone(&state.composer);
    let (ctx, _cancel) = context(&state);
    // Parsing and checking 100k recipients is CPU work: keep it off the async threads.
    let prepared = tokio::task::spawn_blocking(move || {
        let request: CampaignRequest = parse(&bytes)?;
        drop(bytes);
        prepare_campaign(request, &composer, key, &ctx).map_err(ApiError::from)
    })
    .await
    .map_err(ApiError::internal)??;
    store(&state, prepared).await
}
