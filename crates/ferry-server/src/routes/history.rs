//! `GET /api/v1/history/cluster` and `GET /api/v1/history/jobs`: the installation's cluster and its jobs over a
//! period, as `ferry history export` turns them into the simulator's cluster file and workload.
//!
//! Installation admins only (with a token of any scope: reading is not a power): history spans every team, user and
//! project of the installation, and a partial one (one team's jobs on the whole cluster) would replay a cluster
//! nobody had. Jobs come in pages of at most `HISTORY_PAGE_MAX`, oldest first, so a long history is never one answer.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::Json;
use ferry_api::history::{
    HistoryCluster, HistoryElastic, HistoryNode, HistoryPage, HistoryPool, HistoryProject, HistoryTeam,
    HistoryTemplate, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX,
};
use ferry_api::tokens::QuotaAmount;
use ferry_api::{ErrorBody, ErrorCode};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::convert::quota_amount;
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::routes::series::parse_time;
use crate::state::AppState;

/// How far back `since` reaches when the request leaves it out.
const SINCE_DEFAULT: &str = "30d";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Jobs submitted at or after this: an RFC 3339 time or a duration back from now (`30d`); 30 days when absent.
    #[serde(default)]
    since: Option<String>,
    /// Jobs with a larger id (from `next_after` of the previous page).
    #[serde(default)]
    after: Option<u64>,
    /// At most this many jobs (1000 by default, 5000 at most).
    #[serde(default)]
    limit: Option<u32>,
}

fn admins_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.admin {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Forbidden,
        format!(
            "only an installation admin reads the installation's history (every team's jobs and the whole cluster), \
             and {} is not one; ask an installation admin to run `ferry history export`",
            caller.name
        ),
    ))
}

#[utoipa::path(get, path = "/api/v1/history/cluster",
    responses((status = 200, body = HistoryCluster), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn cluster(State(state): State<AppState>, caller: Caller) -> Result<Json<HistoryCluster>, ApiError> {
    admins_only(&caller)?;
    let stored = state.store.quotas().await?;
    let (teams, projects) = crate::config::effective_quotas(&state.file, &stored);
    let nodes = state.store.nodes().await?;
    let mut pools: Vec<HistoryPool> = state.pools.snapshot().iter().map(pool).collect();
    for node in &nodes {
        if !pools.iter().any(|p| p.name == node.pool) {
            pools.push(undeclared_pool(&node.pool));
        }
    }
    let elastic: Vec<&str> = pools.iter().filter(|p| p.elastic.is_some()).map(|p| p.name.as_str()).collect();
    let nodes = nodes
        .into_iter()
        .filter(|n| !elastic.contains(&n.pool.as_str()))
        .map(|n| HistoryNode {
            gpu_models: n.gpus.into_iter().map(|g| g.model).collect(),
            name: n.name,
            pool: n.pool,
            cpu_millis: n.cpu_millis,
            memory_bytes: n.memory_bytes,
            labels: n.labels,
            ready: n.ready,
        })
        .collect();
    let mut by_team: BTreeMap<String, HistoryTeam> = teams
        .into_iter()
        .map(|t| {
            let team = HistoryTeam {
                name: t.name.clone(),
                quota: quota_amount(&t.quota),
                borrow_limit: t.borrow_limit.as_ref().map(quota_amount),
                projects: Vec::new(),
            };
            (t.name, team)
        })
        .collect();
    for p in projects {
        let team = by_team.entry(p.team.clone()).or_insert_with(|| HistoryTeam {
            name: p.team.clone(),
            quota: QuotaAmount::default(),
            borrow_limit: None,
            projects: Vec::new(),
        });
        team.projects.push(HistoryProject {
            name: p.name,
            quota: quota_amount(&p.quota),
            borrow_limit: p.borrow_limit.as_ref().map(quota_amount),
        });
    }
    let placement = serde_json::to_value(state.file.gpu_placement).ok();
    Ok(Json(HistoryCluster {
        at_us: now_us(),
        fair_share_half_life_s: state.file.fair_share_half_life_s,
        gpu_placement: placement.as_ref().and_then(|v| v.as_str()).unwrap_or("best-fit").to_string(),
        queue_order: Some(state.file.queue_order.name().to_string()),
        queue_aging_s: state.file.queue_order.aging_s().or(Some(0)).filter(|_| {
            matches!(
                state.file.queue_order,
                ferry_core::QueueOrder::ShortestFirst { .. } | ferry_core::QueueOrder::LeastAttained { .. }
            )
        }),
        queue_lease_s: match &state.file.queue_order {
            ferry_core::QueueOrder::LeastAttained { lease_s, .. } => Some(lease_s.unwrap_or(0)),
            _ => None,
        },
        queue_levels_gpu_s: state.file.queue_order.levels_gpu_s().map(<[u64]>::to_vec),
        reserve_depth: state.file.reserve_depth,
        pools,
        teams: by_team.into_values().collect(),
        nodes,
    }))
}

fn pool(p: &crate::config::PoolConfig) -> HistoryPool {
    HistoryPool {
        name: p.info.name.clone(),
        order: p.info.order,
        burst: p.info.burst,
        burst_after_s: p.info.burst_after_s,
        price_gpu_hour: p.price_gpu_hour,
        price_cpu_hour: p.price_cpu_hour,
        declared: true,
        images: p.info.images,
        gangs: p.info.gangs,
        elastic: p.info.elastic.as_ref().map(|e| HistoryElastic {
            max_nodes: e.max_nodes,
            startup_s: e.startup_s,
            idle_release_s: e.idle_release_s,
            node: HistoryTemplate {
                cpu_millis: e.node.capacity.cpu_millis,
                memory_bytes: e.node.capacity.memory_bytes,
                gpus: e.node.capacity.gpus,
                gpu_model: e.node.gpu_model.clone(),
                labels: e.node.labels.clone(),
            },
            startup_timeout_s: e.startup_timeout_s,
            retry_after_s: e.retry_after_s,
            price_node_hour: p.cloud.as_ref().map(|c| c.instance.price_hour),
        }),
    }
}

/// A pool only nodes name: the scheduler puts it after every declared one.
fn undeclared_pool(name: &str) -> HistoryPool {
    HistoryPool {
        name: name.to_string(),
        order: i32::MAX,
        burst: false,
        burst_after_s: None,
        price_gpu_hour: None,
        price_cpu_hour: None,
        declared: false,
        elastic: None,
        // A pool only nodes name is one of agents, which run both.
        images: true,
        gangs: true,
    }
}

#[utoipa::path(get, path = "/api/v1/history/jobs", params(HistoryQuery),
    responses((status = 200, body = HistoryPage, description = "Jobs submitted since `since`, oldest first"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn jobs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    admins_only(&caller)?;
    let Query(q) = query.map_err(rejection)?;
    let limit = q.limit.unwrap_or(HISTORY_PAGE_DEFAULT);
    if !(1..=HISTORY_PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!("`limit={limit}` must be between 1 and {HISTORY_PAGE_MAX}")));
    }
    let now = now_us();
    let since_us = parse_time(q.since.as_deref().unwrap_or(SINCE_DEFAULT), now, "since")?;
    let jobs: Vec<_> = state
        .store
        .history_jobs(since_us, q.after.unwrap_or(0), limit)
        .await?
        .into_iter()
        .map(crate::convert::history_job)
        .collect();
    let next_after = (jobs.len() == limit as usize).then(|| jobs.last().map(|j| j.id)).flatten();
    Ok(Json(HistoryPage { since_us, now_us: now, jobs, next_after }))
}
