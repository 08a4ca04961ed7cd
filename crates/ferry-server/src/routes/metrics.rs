//! `GET /metrics`: the Prometheus exposition. Needs no token, like `/api/v1/health`: it carries ids, users, teams,
//! projects, pools and node names, never job names, commands, environments or secrets (see `crate::metrics`).

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::driver::{now_us, Command};
use crate::error::ApiError;
use crate::metrics::{render, Snapshot};
use crate::state::AppState;

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Metrics in the Prometheus text format")))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let driver = state.driver.ask(|reply| Command::Metrics { reply }).await?;
    let nodes = state.store.nodes().await?;
    let job_counts = state.store.job_counts().await?;
    let now = now_us();
    let cloud_machines =
        state.store.live_machines().await?.into_iter().map(|m| (m.pool, m.state.to_string())).collect();
    let cloud_spend = state.store.cloud_spend(now).await?;
    let text = render(&Snapshot { now_us: now, nodes, driver, job_counts, cloud_machines, cloud_spend });
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}
