//! The suppression list: `GET /v1/suppressions` (paged), `GET`, `PUT` and `DELETE
//! /v1/suppressions/{address}`. Addresses are matched in the one normalisation of the
//! list (`crate::address::suppression_key`), whatever form they are given in.

use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::json::{body, parse};
use super::query::{Query, limit};
use super::{ApiError, ApiState};
use crate::address::{Address, suppression_key};
use crate::queue::{Queue, Suppression, SuppressionScope};

/// `?after=ADDRESS&limit=N`.
#[derive(Debug, Deserialize)]
pub(super) struct Page {
    after: Option<String>,
    limit: Option<usize>,
}

/// `?scope=all|list:NAME` on `DELETE`.
#[derive(Debug, Deserialize)]
pub(super) struct ScopeQuery {
    scope: Option<String>,
}

/// The body of `PUT /v1/suppressions/{address}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Entry {
    /// `all` (the default) or `list:NAME`.
    scope: Option<String>,
    /// Why (free text). Default `manual`.
    reason: Option<String>,
}

fn scope(text: Option<&str>, field: &str) -> Result<Option<SuppressionScope>, ApiError> {
    text.map(|t| t.parse().map_err(|e: String| ApiError::invalid(field, e)))
        .transpose()
}

fn address(given: &str) -> Result<String, ApiError> {
    Address::parse(given.trim()).map_err(|e| ApiError::invalid("address", e.to_string()))?;
    Ok(suppression_key(given))
}

/// `GET /v1/suppressions?after=ADDRESS&limit=N`: entries in address order.
pub(super) async fn list(
    State(state): State<ApiState>,
    Query(page): Query<Page>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit(page.limit, 100, 1000)?;
    let entries = state.queue.suppressions(page.after, limit).await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.address.clone()))
        .flatten();
    Ok(Json(json!({"suppressions": entries, "next_after": next})))
}

/// `GET /v1/suppressions/{address}`: the address's entries, 404 when there are none.
pub(super) async fn get(
    State(state): State<ApiState>,
    Path(given): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = address(&given)?;
    let entries = state.queue.suppressions_of(&key).await?;
    if entries.is_empty() {
        return Err(ApiError::not_found(format!("{key} is not suppressed")));
    }
    Ok(Json(json!({"address": key, "suppressions": entries})))
}

/// `PUT /v1/suppressions/{address}` with `{"scope", "reason"}`: adds or replaces the
/// entry.
pub(super) async fn put(
    State(state): State<ApiState>,
    Path(given): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = address(&given)?;
    let bytes = body(&state, raw)?;
    let entry: Entry = if bytes.iter().all(u8::is_ascii_whitespace) {
        Entry::default()
    } else {
        parse(&bytes)?
    };
    let reason = entry.reason.unwrap_or_else(|| "manual".to_owned());
    if reason.len() > 1000 || reason.contains(['\r', '\n', '\0']) {
        return Err(ApiError::invalid(
            "reason",
            "at most 1000 characters on one line",
        ));
    }
    let suppression = Suppression {
        address: key,
        scope: scope(entry.scope.as_deref(), "scope")?.unwrap_or(SuppressionScope::All),
        reason,
        at: SystemTime::now(),
    };
    state.queue.suppress(suppression.clone()).await?;
    Ok((StatusCode::OK, Json(suppression)).into_response())
}

/// `DELETE /v1/suppressions/{address}?scope=...`: removes the address's entries (of one
/// scope when given); 404 when there were none.
pub(super) async fn delete(
    State(state): State<ApiState>,
    Path(given): Path<String>,
    Query(query): Query<ScopeQuery>,
) -> Result<Json<Value>, ApiError> {
    let key = address(&given)?;
    let scope = scope(query.scope.as_deref(), "scope")?;
    let removed = state.queue.unsuppress(&key, scope).await?;
    if removed == 0 {
        return Err(ApiError::not_found(format!("{key} is not suppressed")));
    }
    Ok(Json(json!({"address": key, "removed": removed})))
}
