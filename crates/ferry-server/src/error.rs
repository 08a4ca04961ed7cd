//! The one error type of every handler: it maps to an HTTP status and the JSON body `{code, message}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::{ErrorBody, ErrorCode};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn unavailable() -> ApiError {
        ApiError::new(ErrorCode::Unavailable, "the server is shutting down; retry in a moment")
    }
}

impl From<ferry_store::StoreError> for ApiError {
    fn from(e: ferry_store::StoreError) -> ApiError {
        // The detail goes to the server's log; the caller learns only that the store failed and what to do.
        tracing::error!(error = %e, "store failure");
        if e.is_disk_full() {
            return ApiError::new(
                ErrorCode::StorageFull,
                "the server's disk is full, so nothing of this request was kept; an admin frees space in its data \
                 directory, and it works again without a restart",
            );
        }
        ApiError::new(
            ErrorCode::Unavailable,
            "the server could not reach its database; retry, and see the server log if it persists",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let note = crate::audit::AuditNote(self.message.clone());
        let mut response = (status, Json(ErrorBody { code: self.code, message: self.message })).into_response();
        response.extensions_mut().insert(note);
        response
    }
}

/// Turns axum's own rejections (bad JSON, bad query strings, wrong content type) into our error shape.
pub fn rejection(e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("the request could not be read: {e}"))
}
