//! The one error type of the HTTP API. It renders as `{"error": {"code", "message"}}` and never
//! shows internals: an internal error's detail travels with the response as a
//! [`FailureDetail`] extension, and `crate::http` logs it with the request's id.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::serve::RETRY_AFTER;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no route for {0}")]
    NotFound(String),
    #[error("the server is busy; retry shortly")]
    Overloaded,
    #[error("the request took too long")]
    Timeout,
    #[error("internal error")]
    Internal(String),
}

/// How every error of the API reads.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// `bad_request`, `not_found`, `overloaded`, `timeout` or `internal`.
    pub code: String,
    /// What was wrong, for people: names the parameter or field at fault.
    pub message: String,
}

/// The errors every API operation may answer with, as the OpenAPI document lists them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum ErrorResponses {
    /// A malformed id, name, read time, query or body.
    #[response(status = 400)]
    BadRequest(ErrorResponse),
    /// No such route (an empty id, say).
    #[response(status = 404)]
    NotFound(ErrorResponse),
    /// Overloaded: the request was shed; retry shortly.
    #[response(status = 503)]
    Overloaded(ErrorResponse),
    /// The request took longer than the server allows.
    #[response(status = 504)]
    Timeout(ErrorResponse),
}

impl AppError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// What went wrong inside, for the log line of a failed request (never for the caller).
#[derive(Debug, Clone)]
pub struct FailureDetail(pub String);

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorResponse {
            error: ErrorDetail { code: code.to_string(), message: self.to_string() },
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::Internal(detail) = &self {
            response.extensions_mut().insert(FailureDetail(detail.clone()));
        }
        if matches!(self, Self::Overloaded) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
        }
        response
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        Self::BadRequest(format!("invalid path: {}", rejection.body_text()))
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query: {}", rejection.body_text()))
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        Self::BadRequest(format!("invalid JSON body: {}", rejection.body_text()))
    }
}
