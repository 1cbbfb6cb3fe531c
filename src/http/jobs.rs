//! `GET /v1/jobs/{id}` and `GET /v1/events`: what became of submissions.

use axum::Json;
use axum::extract::{Path, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::query::{Query, limit};
use super::{ApiError, ApiState};
use crate::queue::{JobId, JobStatus, Queue, RecipientStatus};

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
