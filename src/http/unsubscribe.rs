//! `GET`/`POST /v1/unsubscribe/{token}`: the List-Unsubscribe target. Open to the world,
//! as RFC 8058 needs: the token itself proves who may be unsubscribed, and from what.

use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::{ApiError, ApiState};
use crate::queue::{Queue, Suppression, SuppressionScope};

/// `POST /v1/unsubscribe/{token}`: RFC 8058 one-click (and the confirmation form).
/// Suppresses the address for the list the token names, not for all mail: a receipt or
/// a password reset still reaches someone who left a newsletter.
pub(super) async fn unsubscribe(
    State(state): State<ApiState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let who = state
        .composer
        .verify_unsubscribe(&token)
        .ok_or_else(|| ApiError::not_found("unknown unsubscribe link"))?;
    let entry = Suppression {
        address: who.address.clone(),
        scope: SuppressionScope::List(who.list.clone()),
        reason: "unsubscribed".to_owned(),
        at: SystemTime::now(),
    };
    state.queue.suppress(entry).await?;
    tracing::info!(to = %who.address, list = %who.list, job = %who.job, "unsubscribed");
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
