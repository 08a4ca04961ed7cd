//! The agent protocol: register, long-poll for work, report, upload output.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::Json;
use bytes::Bytes;
use ferry_api::agent::{LogAck, RegisterNode, Registered, Reports, ReportsAck, Work, WorkRequest, WORK_WAIT_MS_MAX};
use ferry_api::telemetry::{TelemetryAck, TelemetryBatch, SAMPLE_AGE_MAX_US};
use ferry_api::{ErrorBody, ErrorCode};
use ferry_store::EventReason;
use serde::Deserialize;

use crate::auth::AgentCaller;
use crate::driver::{now_us, Command};
use crate::error::{rejection, ApiError};
use crate::state::AppState;

/// The longest node name accepted.
const NODE_NAME_CHARS_MAX: usize = 253;

fn forbidden(message: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

/// Whether the agent may speak for `node`: its token is bound to the node's name (or a pattern it matches), and no
/// other live token registered the node. A registration also claims the node for the token, within the number of
/// nodes the token may register.
pub(crate) async fn speak_for(
    state: &AppState,
    agent: &AgentCaller,
    node: &str,
    register: bool,
) -> Result<(), ApiError> {
    if !agent.may_speak_for(node) {
        tracing::warn!(node, token = agent.token_id, bound = %agent.node, "refused an agent speaking for another node");
        return Err(forbidden(format!(
            "this join token speaks for `{}`, not for node `{node}`; an admin creates one for it with `ferry token \
             create --agent --node {node}`",
            agent.node
        )));
    }
    match state.store.node_token(node).await? {
        Some(owner) if owner == agent.token_id => Ok(()),
        Some(owner) => {
            tracing::warn!(
                node,
                token = agent.token_id,
                owner,
                "refused an agent speaking for a node another token holds"
            );
            Err(forbidden(format!(
                "node `{node}` joined with another join token ({owner}); revoke that one first (`ferry token revoke \
                 {owner}`) to move the node to this token"
            )))
        }
        // The agent answers 404 by registering again, which claims the node (an installation from before join tokens
        // were bound, or a server that lost its database).
        None if !register => Err(ApiError::not_found(format!(
            "node `{node}` is not registered with this token; the agent registers first"
        ))),
        None => {
            if state.store.nodes_of_token(agent.token_id).await? >= agent.max_nodes {
                return Err(forbidden(format!(
                    "this join token has registered its limit of {} nodes; an admin creates another for more",
                    agent.max_nodes
                )));
            }
            state.store.set_node_token(node, agent.token_id).await?;
            Ok(())
        }
    }
}

/// Whether `node` runs the gang worker `rank` of `job`'s current attempt.
fn runs_on(record: &ferry_store::JobRecord, node: &str, rank: u32) -> bool {
    match record.workers.get(rank as usize) {
        Some(worker) => worker.node == node,
        None => rank == 0 && record.node.as_deref() == Some(node),
    }
}

#[utoipa::path(post, path = "/api/v1/agent/register", request_body = RegisterNode,
    responses((status = 200, body = Registered), (status = 400, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    agent: AgentCaller,
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
    speak_for(&state, &agent, &node.name, true).await?;
    cloud_join(&state, &agent, &node).await?;
    Ok(Json(state.driver.call(|reply| Command::Register { node, reply }).await?))
}

/// A cloud machine's agent trades the single-use join token of its start-up script for a token of its own, before it
/// registers: the join token, which the machine's metadata service keeps serving, works no more.
#[utoipa::path(post, path = "/api/v1/agent/exchange",
    responses((status = 200, body = ferry_api::agent::ExchangedToken), (status = 409, body = ErrorBody)))]
pub async fn exchange(
    State(state): State<AppState>,
    agent: AgentCaller,
) -> Result<Json<ferry_api::agent::ExchangedToken>, ApiError> {
    let token = crate::auth::new_token();
    let hash = crate::auth::hash_token(&token);
    let Some(machine) = state.store.exchange_machine_token(agent.token_id, &hash, now_us()).await? else {
        tracing::warn!(token = agent.token_id, "refused to exchange a token that is no waiting cloud machine's");
        return Err(ApiError::new(
            ferry_api::ErrorCode::Conflict,
            "only the join token of a cloud machine that has not joined yet is exchanged, and only once; this agent \
             uses its token as it is (drop --single-use-token)",
        ));
    };
    state.tokens.clear();
    tracing::info!(node = %machine.node, pool = %machine.pool, "cloud machine traded its join token for its own");
    Ok(Json(ferry_api::agent::ExchangedToken { token }))
}

/// An elastic pool's nodes are the machines Ferry launched for it, each joining with the token its start-up script
/// carries: that token joins only its machine's pool (and the machine is marked joined), and no other token joins an
/// elastic pool.
async fn cloud_join(state: &AppState, agent: &AgentCaller, node: &RegisterNode) -> Result<(), ApiError> {
    let machine = state.store.machine_of_token(agent.token_id).await?;
    let elastic = state.pools.snapshot().iter().any(|p| p.cloud.is_some() && p.info.name == node.pool);
    match machine {
        Some(m) if !m.live() => Err(forbidden(format!(
            "node `{}`'s machine was given back to its provider ({}); its join token no longer works",
            m.node,
            m.detail.as_deref().unwrap_or("ended")
        ))),
        Some(m) if m.pool != node.pool => {
            tracing::warn!(node = %node.name, pool = %node.pool, machine_pool = %m.pool, "refused a cloud machine joining another pool");
            Err(forbidden(format!(
                "node `{}` was launched for pool `{}`; its join token joins that pool only",
                node.name, m.pool
            )))
        }
        Some(m) => {
            if state.store.machine_joined(&m.node, now_us()).await? {
                tracing::info!(node = %m.node, pool = %m.pool, "cloud machine joined");
            }
            Ok(())
        }
        None if elastic => {
            tracing::warn!(node = %node.name, pool = %node.pool, "refused a node joining an elastic pool by hand");
            Err(forbidden(format!(
                "pool `{}` is elastic: its nodes are the cloud machines Ferry launches for it; join this machine to \
                 another pool",
                node.pool
            )))
        }
        None => Ok(()),
    }
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
    agent: AgentCaller,
    body: Result<Json<WorkRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Work>, ApiError> {
    let Json(request) = body.map_err(rejection)?;
    speak_for(&state, &agent, &request.node, false).await?;
    let wait = Duration::from_millis(request.wait_ms.min(WORK_WAIT_MS_MAX));
    Ok(Json(state.agents.poll(&request.node, &request.epoch, request.after_seq, wait).await))
}

#[utoipa::path(post, path = "/api/v1/agent/reports", request_body = Reports,
    responses((status = 200, body = ReportsAck), (status = 404, body = ErrorBody)))]
pub async fn reports(
    State(state): State<AppState>,
    agent: AgentCaller,
    body: Result<Json<Reports>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ReportsAck>, ApiError> {
    let Json(mut reports) = body.map_err(rejection)?;
    for report in &mut reports.runs {
        report.status.bound_message();
    }
    // The driver applies a report only to runs assigned to the reporting node; others are told to stop.
    speak_for(&state, &agent, &reports.node, false).await?;
    Ok(Json(state.driver.call(|reply| Command::Reports { reports, reply }).await?))
}

#[utoipa::path(post, path = "/api/v1/agent/telemetry", request_body = TelemetryBatch,
    responses((status = 200, body = TelemetryAck), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn telemetry(
    State(state): State<AppState>,
    agent: AgentCaller,
    body: Result<Json<TelemetryBatch>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TelemetryAck>, ApiError> {
    let Json(mut batch) = body.map_err(rejection)?;
    speak_for(&state, &agent, &batch.node, false).await?;
    let now = now_us();
    if let Err(message) = crate::telemetry::validate(&batch, now) {
        tracing::warn!(node = %batch.node, reason = %message, "refused a telemetry batch");
        return Err(ApiError::invalid(message));
    }
    drop_foreign_runs(&state, &mut batch).await?;
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

/// Whether an earlier attempt of `job` ran on a node this agent holds, from the job's timeline: its output may still
/// be draining after a requeue. A placement names its nodes in its reason; entries written before reasons were
/// stored name them only in their sentence, so their words are tried instead.
async fn earlier_attempt_node(state: &AppState, agent: &AgentCaller, job: u64) -> Result<bool, ApiError> {
    let events = state.store.job_events(job).await?;
    for event in events {
        let nodes: Vec<&str> = match &event.reason {
            Some(EventReason::Placed(placement)) => placement.workers.iter().map(|w| w.node.as_str()).collect(),
            Some(EventReason::Lost(loss)) => loss.node.iter().map(String::as_str).collect(),
            Some(EventReason::Preempted(_) | EventReason::Requeued(_)) => Vec::new(),
            None => event
                .message
                .split_whitespace()
                .map(|word| word.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c))))
                .collect(),
        };
        for node in nodes {
            if !node.is_empty() && agent.may_speak_for(node) && speak_for(state, agent, node, false).await.is_ok() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Drops the samples of runs that are not assigned to the batch's node: a node reports on its own runs only.
async fn drop_foreign_runs(state: &AppState, batch: &mut TelemetryBatch) -> Result<(), ApiError> {
    let mut verdicts: std::collections::HashMap<(u64, u32), bool> = std::collections::HashMap::new();
    for sample in &batch.samples {
        for run in &sample.runs {
            let key = (run.run.job_id, run.run.rank);
            if verdicts.contains_key(&key) {
                continue;
            }
            let ours = match state.store.job(run.run.job_id).await? {
                Some(record) => record.attempt == run.run.attempt && runs_on(&record, &batch.node, run.run.rank),
                None => false,
            };
            verdicts.insert(key, ours);
        }
    }
    if verdicts.values().any(|ours| !ours) {
        tracing::warn!(node = %batch.node, "dropped telemetry of runs not assigned to the node");
    }
    for sample in &mut batch.samples {
        sample.runs.retain(|r| verdicts.get(&(r.run.job_id, r.run.rank)).copied().unwrap_or(false));
    }
    Ok(())
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
    agent: AgentCaller,
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
    // Output is accepted only from the node that runs the worker (the current attempt; an earlier attempt's node
    // may still be draining its output, and was this node if it is the one uploading under the same token).
    let node = match (attempt == record.attempt, record.workers.get(query.rank as usize)) {
        (true, Some(worker)) => Some(worker.node.clone()),
        (true, None) => record.node.clone(),
        (false, _) => None,
    };
    let allowed = match &node {
        Some(node) => runs_on(&record, node, query.rank) && speak_for(&state, &agent, node, false).await.is_ok(),
        None => earlier_attempt_node(&state, &agent, job).await?,
    };
    if !allowed {
        tracing::warn!(job, attempt, token = agent.token_id, "refused output from a node the run is not assigned to");
        return Err(forbidden(format!("job {job} attempt {attempt} does not run on a node of this join token")));
    }
    let stored = state.logs.append(job, attempt, query.rank, query.offset, &body).await.map_err(|e| {
        tracing::error!(job, attempt, error = %e, "cannot write job output");
        ApiError::new(ferry_api::ErrorCode::Unavailable, "the server cannot write job output to its disk; retry later")
    })?;
    state.signals.signal(job);
    Ok(Json(LogAck { stored }))
}
