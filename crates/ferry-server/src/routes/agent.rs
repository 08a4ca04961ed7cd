//! The agent protocol: register, long-poll for work, report, upload output.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use bytes::Bytes;
use ferry_api::agent::{LogAck, RegisterNode, Registered, Reports, ReportsAck, Work, WorkRequest, WORK_WAIT_MS_MAX};
use ferry_api::telemetry::{TelemetryAck, TelemetryBatch, SAMPLE_AGE_MAX_US};
use ferry_api::{ErrorBody, ErrorCode};
use serde::Deserialize;

use crate::auth::Caller;
use crate::driver::{now_us, Command};
use crate::error::{rejection, ApiError};
use crate::state::AppState;

/// The longest node name accepted.
const NODE_NAME_CHARS_MAX: usize = 253;

#[utoipa::path(post, path = "/api/v1/agent/register", request_body = RegisterNode,
    responses((status = 200, body = Registered), (status = 400, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    _caller: Caller,
    body: Result<Json<RegisterNode>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Registered>, ApiError> {
    let Json(node) = body.map_err(|e| {
        tracing::warn!(reason = %e, "refused an unreadable registration");
        rejection(e)
    })?;
    if let Err(message) = check_registration(&node, now_us()) {
        tracing::warn!(node = %node.name, reason = %message, "refused a registration");
        return Err(ApiError::invalid(message));
    }
    Ok(Json(state.driver.call(|reply| Command::Register { node, reply }).await?))
}

/// What makes a registration unusable: a name that is no host name, a node without CPU or memory, a clock too far
/// off, or two GPUs with one index.
fn check_registration(node: &RegisterNode, server_now_us: i64) -> Result<(), String> {
    if node.name.is_empty() || node.name.len() > NODE_NAME_CHARS_MAX || node.name.contains(char::is_whitespace) {
        return Err(format!("`{}` is not a valid node name; use a host name", node.name));
    }
    if node.cpu_millis == 0 || node.memory_bytes == 0 {
        return Err("a node must offer some CPU and memory".into());
    }
    crate::telemetry::check_clock(node.now_us, server_now_us)?;
    let mut indices: Vec<u32> = node.gpus.iter().map(|g| g.index).collect();
    indices.sort_unstable();
    indices.dedup();
    if indices.len() != node.gpus.len() {
        return Err("two GPUs of the node share one index; each GPU needs its own index".into());
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/agent/work", request_body = WorkRequest, responses((status = 200, body = Work)))]
pub async fn work(
    State(state): State<AppState>,
    _caller: Caller,
    body: Result<Json<WorkRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Work>, ApiError> {
    let Json(request) = body.map_err(rejection)?;
    let wait = Duration::from_millis(request.wait_ms.min(WORK_WAIT_MS_MAX));
    Ok(Json(state.agents.poll(&request.node, &request.epoch, request.after_seq, wait).await))
}

#[utoipa::path(post, path = "/api/v1/agent/reports", request_body = Reports,
    responses((status = 200, body = ReportsAck), (status = 404, body = ErrorBody)))]
pub async fn reports(
    State(state): State<AppState>,
    _caller: Caller,
    body: Result<Json<Reports>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ReportsAck>, ApiError> {
    let Json(reports) = body.map_err(rejection)?;
    Ok(Json(state.driver.call(|reply| Command::Reports { reports, reply }).await?))
}

#[utoipa::path(post, path = "/api/v1/agent/telemetry", request_body = TelemetryBatch,
    responses((status = 200, body = TelemetryAck), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn telemetry(
    State(state): State<AppState>,
    _caller: Caller,
    body: Result<Json<TelemetryBatch>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TelemetryAck>, ApiError> {
    let Json(batch) = body.map_err(rejection)?;
    let now = now_us();
    if let Err(message) = crate::telemetry::validate(&batch, now) {
        tracing::warn!(node = %batch.node, reason = %message, "refused a telemetry batch");
        return Err(ApiError::invalid(message));
    }
    if !state.store.node_exists(&batch.node).await? {
        return Err(ApiError::not_found(format!("no node `{}` is registered; the agent registers first", batch.node)));
    }
    let ack = state.telemetry.ingest(&batch, now);
    let points = crate::series::record_batch(&batch, &state.telemetry, now - SAMPLE_AGE_MAX_US);
    if let Err(e) = state.series.ingest(&crate::series::borrowed(&points)) {
        tracing::error!(error = %e, node = %batch.node, "cannot store telemetry");
        return Err(ApiError::new(ErrorCode::Unavailable, "the server cannot store telemetry now; the agent retries"));
    }
    Ok(Json(ack))
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    offset: u64,
    /// The worker of a gang whose output this is; 0 by default.
    #[serde(default)]
    rank: u32,
}

#[utoipa::path(post, path = "/api/v1/agent/runs/{job}/{attempt}/logs",
    params(("job" = u64, Path), ("attempt" = u32, Path), ("offset" = u64, Query), ("rank" = Option<u32>, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = LogAck), (status = 404, body = ErrorBody)))]
pub async fn upload_log(
    State(state): State<AppState>,
    _caller: Caller,
    Path((job, attempt)): Path<(u64, u32)>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Json<LogAck>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let record = state.store.job(job).await?.ok_or_else(|| ApiError::not_found(format!("no job {job}")))?;
    if attempt > record.attempt {
        return Err(ApiError::not_found(format!("job {job} has no attempt {attempt}")));
    }
    if query.rank >= record.spec.nodes {
        return Err(ApiError::not_found(format!("job {job} has no worker of rank {}", query.rank)));
    }
    let stored = state.logs.append(job, attempt, query.rank, query.offset, &body).await.map_err(|e| {
        tracing::error!(job, attempt, error = %e, "cannot write job output");
        ApiError::new(ferry_api::ErrorCode::Unavailable, "the server cannot write job output to its disk; retry later")
    })?;
    state.signals.signal(job);
    Ok(Json(LogAck { stored }))
}
