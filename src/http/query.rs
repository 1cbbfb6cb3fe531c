//! Query strings, parsed like JSON bodies: into a typed struct, a value that does not
//! parse answered with the documented JSON error naming the parameter (422), and page
//! sizes outside their range refused rather than silently changed.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A query string parsed into `T` (every parameter optional, unknown ones ignored).
#[derive(Debug)]
pub(super) struct Query<T>(pub(super) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| ApiError::invalid(e.path().to_string(), e.into_inner().to_string()))
    }
}

/// A page size given as `limit`: `default` when absent, refused outside `1..=max`.
pub(super) fn limit(given: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::invalid(
            "limit",
            format!("{n} is outside 1 to {max}"),
        )),
    }
}
