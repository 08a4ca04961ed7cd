//! Shipped code: ask whether the server holds an archive, upload one, download one.
//!
//! Archives are content-addressed: the path names the SHA-256 of the bytes, and an upload whose bytes hash to
//! anything else is refused. Users upload, and download the code of jobs they may see; an agent downloads only the
//! code of a run assigned to its node.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::code::{is_sha256, CodeStored, CODE_ARCHIVE_BYTES_MAX};
use ferry_api::{ErrorBody, ErrorCode};
use tokio_util::io::ReaderStream;

use crate::auth::{AgentCaller, Caller};
use crate::code::UploadError;
use crate::error::ApiError;
use crate::state::AppState;

fn digest(text: &str) -> Result<&str, ApiError> {
    if is_sha256(text) {
        Ok(text)
    } else {
        Err(ApiError::invalid(format!(
            "`{text}` is not a SHA-256 digest; code archives are named by 64 lowercase hex digits"
        )))
    }
}

fn missing(sha256: &str) -> ApiError {
    ApiError::not_found(format!("the server holds no code archive {sha256}; upload it with PUT first"))
}

/// Whether the server holds an archive: 200 with its size in `Content-Length`, or 404.
#[utoipa::path(head, path = "/api/v1/code/{sha256}", responses((status = 200), (status = 404)))]
pub async fn head(State(state): State<AppState>, _caller: Caller, Path(sha256): Path<String>) -> Response {
    let answer = async {
        let sha256 = digest(&sha256)?;
        state.code.size(sha256).await.ok_or_else(|| missing(sha256))
    };
    match answer.await {
        Ok(size) => (StatusCode::OK, [(header::CONTENT_LENGTH, size.to_string())]).into_response(),
        // A HEAD answer carries no body, so the status alone must tell.
        Err(e) => StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST).into_response(),
    }
}

#[utoipa::path(put, path = "/api/v1/code/{sha256}", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = CodeStored), (status = 200, body = CodeStored), (status = 400, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<CodeStored>), ApiError> {
    let sha256 = digest(&sha256)?.to_string();
    let (size_bytes, created) = state.code.put(&sha256, body.into_data_stream()).await.map_err(|e| match e {
        UploadError::TooLarge => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the code archive is larger than the limit of {} MiB; leave big files out with .gitignore or .ignore",
                CODE_ARCHIVE_BYTES_MAX >> 20
            ),
        ),
        UploadError::DigestMismatch { .. } | UploadError::Body(_) => ApiError::invalid(e.to_string()),
        UploadError::Io(_) => {
            tracing::error!(error = %e, "cannot store a code archive");
            ApiError::new(ErrorCode::Unavailable, format!("{e}; retry, and see the server log if it persists"))
        }
    })?;
    if !created {
        tracing::info!(sha256, by = %caller.name, "code archive already stored; upload not kept");
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(CodeStored { sha256, size_bytes, created })))
}

/// How many jobs with an archive are looked at to find one the caller may see.
const CODE_JOBS_LOOKED_AT_MAX: u32 = 1000;

#[utoipa::path(get, path = "/api/v1/code/{sha256}",
    responses((status = 200, content_type = "application/gzip"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(sha256): Path<String>,
) -> Result<Response, ApiError> {
    let sha256 = digest(&sha256)?;
    let jobs = state.store.jobs_with_code(sha256, false, CODE_JOBS_LOOKED_AT_MAX).await?;
    if !jobs.iter().any(|j| caller.sees(&j.spec.owner, j.spec.team.as_deref())) {
        return Err(missing(sha256));
    }
    stream(&state, sha256).await
}

#[derive(Debug, serde::Deserialize)]
pub struct AgentCodeQuery {
    node: String,
}

/// The code archive of a run assigned to the agent's node.
#[utoipa::path(get, path = "/api/v1/agent/code/{sha256}", params(("sha256" = String, Path), ("node" = String, Query)),
    responses((status = 200, content_type = "application/gzip"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn agent_get(
    State(state): State<AppState>,
    agent: AgentCaller,
    Path(sha256): Path<String>,
    query: Result<axum::extract::Query<AgentCodeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(crate::error::rejection)?;
    let sha256 = digest(&sha256)?;
    crate::routes::agent::speak_for(&state, &agent, &query.node, false).await?;
    let jobs = state.store.jobs_with_code(sha256, true, CODE_JOBS_LOOKED_AT_MAX).await?;
    let assigned = jobs
        .iter()
        .any(|j| j.node.as_deref() == Some(query.node.as_str()) || j.workers.iter().any(|w| w.node == query.node));
    if !assigned {
        tracing::warn!(sha256, node = %query.node, "refused code to a node none of whose runs needs it");
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("no run assigned to node {} needs code archive {sha256}", query.node),
        ));
    }
    stream(&state, sha256).await
}

async fn stream(state: &AppState, sha256: &str) -> Result<Response, ApiError> {
    let file = tokio::fs::File::open(state.code.path(sha256)).await.map_err(|_| missing(sha256))?;
    let size = file.metadata().await.map(|m| m.len()).map_err(|_| missing(sha256))?;
    let body = Body::from_stream(ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/gzip".to_string()), (header::CONTENT_LENGTH, size.to_string())], body)
        .into_response())
}
