//! The API's handlers.

use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::query::{Query, limit};
use super::{ApiError, ApiState};
use crate::queue::{JobId, JobStatus, Queue, RecipientStatus, SubmitOutcome};
use crate::submit::{CampaignRequest, MessageRequest, Prepared, prepare_campaign, prepare_message};

/// The body, or 413/400.
fn body(state: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.max_body),
        _ => ApiError::malformed(rejection.body_text()),
    })
}

/// Parses JSON: syntax errors are 400, wrong or missing fields 422 with the path.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() {
            ApiError::invalid(
                if field == "." { String::new() } else { field },
                inner.to_string(),
            )
        } else {
            ApiError::malformed(format!("malformed JSON: {inner}"))
        }
    })
}

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

async fn store(state: &ApiState, prepared: Prepared) -> Result<Response, ApiError> {
    let (job, recipients) = prepared.into_parts();
    match state
        .queue
        .submit(job, recipients, SystemTime::now())
        .await?
    {
        SubmitOutcome::Created { id, recipients } | SubmitOutcome::Existing { id, recipients } => {
            state.submitted.notify_one();
            let body = json!({"id": id.to_string(), "recipients": recipients});
            Ok((StatusCode::ACCEPTED, Json(body)).into_response())
        }
        SubmitOutcome::IdempotencyConflict => Err(ApiError::idempotency_conflict()),
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
    let composer = state.composer.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        prepare_message(request, &composer, key, SystemTime::now())
    })
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
    let composer = state.composer.clone();
    // Parsing and checking 100k recipients is CPU work: keep it off the async threads.
    let prepared = tokio::task::spawn_blocking(move || {
        let request: CampaignRequest = parse(&bytes)?;
        drop(bytes);
        prepare_campaign(request, &composer, key, SystemTime::now()).map_err(ApiError::from)
    })
    .await
    .map_err(ApiError::internal)??;
    store(&state, prepared).await
}

/// Paging of recipients and events.
#[derive(Debug, Deserialize)]
pub(super) struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

/// A job's status with one page of its recipients.
#[derive(Debug, Serialize)]
pub(super) struct JobAnswer {
    #[serde(flatten)]
    status: JobStatus,
    recipients: Vec<RecipientStatus>,
    /// Pass as `after` for the next page; `null` on the last.
    next_after: Option<u32>,
}

/// `GET /v1/jobs/{id}?after=INDEX&limit=N`.
pub(super) async fn job(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Result<Json<JobAnswer>, ApiError> {
    let id: JobId = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no job {id:?}")))?;
    let status = state
        .queue
        .job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {id}")))?;
    let limit = limit(page.limit, 100, 1000)?;
    let after = page.after.map(|a| u32::try_from(a).unwrap_or(u32::MAX));
    let recipients = state.queue.recipients(&id, after, limit).await?;
    let next = (recipients.len() == limit)
        .then(|| recipients.last().map(|r| r.index))
        .flatten();
    Ok(Json(JobAnswer {
        status,
        recipients,
        next_after: next,
    }))
}

/// `GET /v1/events?after=CURSOR&limit=N`.
pub(super) async fn events(
    State(state): State<ApiState>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(page.limit, 100, 1000)?;
    let events = state.queue.events(page.after.unwrap_or(0), limit).await?;
    let next = events.last().map(|e| e.cursor).or(page.after).unwrap_or(0);
    Ok(Json(json!({"events": events, "next": next})))
}

/// `GET /metrics`: the engine's metrics and the queue's depth, Prometheus text.
pub(super) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let mut text = state.metrics.render_prometheus();
    let depth = state.queue.depth(SystemTime::now()).await?;
    text.push_str("# TYPE volley_queue_depth gauge\n");
    for (name, value) in [
        ("ready", depth.ready),
        ("scheduled", depth.scheduled),
        ("leased", depth.leased),
    ] {
        text.push_str(&format!("volley_queue_depth{{state=\"{name}\"}} {value}\n"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `GET /healthz`.
pub(super) async fn health(State(state): State<ApiState>) -> Response {
    match state.queue.depth(SystemTime::now()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST /v1/unsubscribe/{token}`: RFC 8058 one-click (and the confirmation form).
pub(super) async fn unsubscribe(
    State(state): State<ApiState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let (_job, address) = state
        .composer
        .verify_unsubscribe(&token)
        .ok_or_else(|| ApiError::not_found("unknown unsubscribe link"))?;
    state.queue.suppress(&address, "unsubscribed").await?;
    tracing::info!(to = %address, "unsubscribed");
    Ok((StatusCode::OK, "unsubscribed\n").into_response())
}

/// `GET /v1/unsubscribe/{token}`: a page with a button, so that link scanners that
/// follow URLs do not unsubscribe anyone.
pub(super) async fn unsubscribe_page(
    State(state): State<ApiState>,
    Path(token): Path<String>,
) -> Result<Html<String>, ApiError> {
    state
        .composer
        .verify_unsubscribe(&token)
        .ok_or_else(|| ApiError::not_found("unknown unsubscribe link"))?;
    let token: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_=.".contains(*c))
        .collect();
    Ok(Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Unsubscribe</title></head>\
         <body><form method=\"post\" action=\"/v1/unsubscribe/{token}\"><p>Stop receiving these emails?</p>\
         <button type=\"submit\">Unsubscribe</button></form></body></html>"
    )))
}
