//! The one error shape of the API: a stable machine-readable code and a human message that says what to do.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or a value is out of range (HTTP 400).
    InvalidRequest,
    /// No token, or a token the server does not know (HTTP 401).
    Unauthenticated,
    /// The token is valid but may not do this (HTTP 403).
    Forbidden,
    /// The job, node or path does not exist (HTTP 404).
    NotFound,
    /// The request conflicts with the current state, e.g. cancelling a finished job (HTTP 409).
    Conflict,
    /// What was asked for existed but was removed for good, such as a job's output after the server's retention
    /// (HTTP 410); the message says when and why.
    Gone,
    /// The request is well formed but cannot be satisfied, e.g. more GPUs than any node has (HTTP 422).
    Unsatisfiable,
    /// The body is larger than the server accepts (HTTP 413).
    PayloadTooLarge,
    /// Too many failed sign-ins or token checks from this source; wait a minute (HTTP 429).
    RateLimited,
    /// The server is shutting down or overloaded; retry later (HTTP 503).
    Unavailable,
    /// Storing this would take a quota past its limit, such as a project's artifact quota; nothing was kept. The
    /// message names the quota, what is used, the limit, and how to make room (HTTP 507).
    QuotaExceeded,
    /// The server's disk is full; nothing of the request was kept. It works again once an admin frees space, with
    /// no restart (HTTP 507).
    StorageFull,
    /// A fault inside the server; the message says where to look (HTTP 500, never expected).
    Internal,
}

impl ErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::Gone => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::Unsatisfiable => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::StorageFull | ErrorCode::QuotaExceeded => 507,
            ErrorCode::Internal => 500,
        }
    }
}

/// The JSON body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}
