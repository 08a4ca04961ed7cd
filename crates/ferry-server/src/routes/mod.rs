//! HTTP handlers: thin by rule. Each validates its input, calls the driver or the store, and maps errors through
//! `ApiError`.

pub mod agent;
pub mod artifacts;
pub mod code;
pub mod jobs;
pub mod metrics;
pub mod mlflow;
pub mod mlflow_models;
pub mod nodes;
pub mod openapi;
pub mod series;
pub mod sweeps;
pub mod tokens;
pub mod ui;
pub mod usage;

use axum::Json;
use serde_json::json;

/// Liveness of the server itself; needs no token, so scripts can wait for it.
#[utoipa::path(get, path = "/api/v1/health", responses((status = 200, description = "The server is up")))]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}
