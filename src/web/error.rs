//! How the API says no: a status and `{"error": "..."}`, with the fields at fault when a
//! form was wrong.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The request is understood but the thing it names is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// Too much is accepted and not done yet: the same request later will do (429, with
    /// `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// Some fields of a form are wrong, each with why.
    #[error("{message}")]
    Invalid {
        message: String,
        fields: BTreeMap<String, String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something on the server side that the request cannot mend.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::manual_actions::ActionError> for ApiError {
    fn from(e: crate::manual_actions::ActionError) -> ApiError {
        use crate::manual_actions::ActionError;
        match e {
            ActionError::NotFound(m) => ApiError::NotFound(m),
            ActionError::Conflict(m) => ApiError::Conflict(m),
            ActionError::Busy(busy) => ApiError::Busy(busy.to_string()),
            ActionError::Store(e) => ApiError::Store(e),
        }
    }
}

impl ApiError {
    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::NotFound(format!("no {what}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            // A database that is briefly away: the client may ask again.
            ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if matches!(self, ApiError::Store(_) | ApiError::Internal(_)) {
            tracing::error!(error = %self, "API request failed");
        }
        // Store errors name URLs with their passwords masked already.
        let body = match &self {
            ApiError::Invalid { message, fields } => {
                json!({ "error": message, "field_errors": fields })
            }
            other => json!({ "error": other.to_string() }),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::manual_actions::Busy::RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// axum's `Query`, refusing a malformed query string with the API's JSON error (naming the
/// parameter) rather than axum's plain text.
pub struct ApiQuery<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(query)| ApiQuery(query))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}

/// axum's `Path`, refusing a malformed path parameter (an attempt number that is not one,
/// bad percent-encoding) with the API's JSON error rather than axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T: serde::de::DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S>
    for ApiPath<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(path)| ApiPath(path))
            .map_err(|rejection| ApiError::BadRequest(rejection.body_text()))
    }
}
