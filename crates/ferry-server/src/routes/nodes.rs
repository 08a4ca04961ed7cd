//! Nodes: capacity, allocation and what each node measured.

use axum::extract::State;
use axum::Json;
use ferry_api::nodes::{Node, NodeList, NodeState};

use crate::auth::Caller;
use crate::driver::Command;
use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/nodes", responses((status = 200, body = NodeList)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<NodeList>, ApiError> {
    caller.require_user()?;
    let allocations = state.driver.ask(|reply| Command::Allocations { reply }).await?;
    let nodes = state
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|r| {
            let (allocated, running_jobs) = allocations.get(&r.name).cloned().unwrap_or_default();
            Node {
                state: if r.ready { NodeState::Ready } else { NodeState::NotReady },
                name: r.name,
                pool: r.pool,
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                gpus: r.gpus,
                labels: r.labels,
                allocated_cpu_millis: allocated.cpu_millis,
                allocated_memory_bytes: allocated.memory_bytes,
                allocated_gpus: allocated.gpus,
                usage: r.usage,
                last_seen_us: r.last_seen_us,
                agent_version: r.agent_version,
                limits: r.limits,
                running_jobs,
            }
        })
        .collect();
    Ok(Json(NodeList { nodes }))
}
