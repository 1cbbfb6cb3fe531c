//! Request bodies: read whole under the size limit, parsed as JSON with the failing
//! field named.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::{ApiError, ApiState};

/// The body, or 413/400.
pub(super) fn body(
    state: &ApiState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(state.max_body),
        _ => ApiError::malformed(rejection.body_text()),
    })
}

/// Parses JSON: syntax errors are 400, wrong or missing fields 422 with the path.
pub(super) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
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
    })?;
    // One document: anything after it (a second object, stray text) is not ignored.
    de.end()
        .map_err(|e| ApiError::malformed(format!("malformed JSON: {e}")))?;
    Ok(value)
}
