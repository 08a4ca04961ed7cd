//! Ferry's control-plane server: the HTTP/JSON API, authentication, and the driver that feeds the scheduler core
//! and applies its decisions.
//!
//! Handlers stay thin; the driver (`driver.rs`) is the only place that changes jobs and nodes. This crate must never
//! run a job itself: work reaches machines only through a compute backend.

mod artifacts;
mod auth;
mod code;
mod config;
mod datadir;
mod driver;
mod engines;
mod error;
mod jobruns;
mod logs;
mod metrics;
mod routes;
mod series;
mod signals;
mod state;
mod sweeps;
mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, head, post};
use axum::Router;
use ferry_api::agent::LOG_CHUNK_BYTES_MAX;
use ferry_backends::agent::{new_epoch, AgentBackend};

pub use auth::{hash_token, new_token};
pub use config::{FileConfig, PoolConfig};
pub use datadir::{DataDir, ADMIN_TOKEN_FILE};
pub use error::ApiError;
pub use routes::jobs::validate;
pub use routes::openapi::ApiDoc;

use crate::code::CodeStore;
use crate::driver::Driver;
use crate::logs::LogStore;
use crate::signals::Signals;
use crate::state::AppState;

/// How long the server waits for open requests (long polls, followed logs) when it stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// The largest request body: one log chunk plus room for its framing.
const BODY_BYTES_MAX: usize = LOG_CHUNK_BYTES_MAX + 64 * 1024;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// After this long without a report, a node is not ready and its jobs are lost or requeued.
    pub node_timeout: Duration,
    /// What the configuration file (`--config`) says; empty without one.
    pub file: FileConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    DataDir(String),
    #[error(transparent)]
    Store(#[from] ferry_store::StoreError),
    #[error("cannot listen on {addr}: {source}; is another server running there? choose another with --listen")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the time-series store: {0}")]
    Series(String),
    #[error("the server failed while serving: {0}")]
    Serve(std::io::Error),
    #[error("{0}")]
    Engine(String),
    #[error("{0}")]
    Artifacts(String),
}

/// A short tag that tells this installation's runs on a shared engine from another's; stable across restarts.
fn installation_tag(data_dir: &std::path::Path) -> String {
    use sha2::Digest;
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = sha2::Sha256::digest(path.to_string_lossy().as_bytes());
    hex::encode(&digest[..4])
}

/// Runs the server until `shutdown` completes. `ready` is called with the bound address once it accepts requests.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let data = DataDir::prepare(&config.data_dir)?;
    let store = ferry_store::Store::open(&data.database()).await?;
    data.ensure_admin_token(&store).await?;
    let job_key = Arc::new(data.job_token_key()?);
    // Bound first, so that the address jobs on engines log to is known before anything starts.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let bound = listener.local_addr().map_err(ServerError::Serve)?;
    let tracking_uri = config.file.public_url.clone().unwrap_or_else(|| {
        let host = if bound.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { bound.ip() };
        format!("http://{}", std::net::SocketAddr::new(host, bound.port()))
    });
    let agents = Arc::new(AgentBackend::new(new_epoch()));
    let signals = Arc::new(Signals::default());
    let logs = Arc::new(LogStore::new(data.logs()));
    let code = Arc::new(CodeStore::new(data.code()));
    let engine_states = Arc::new(engines::EngineStates::default());
    let bridge_context = engines::BridgeContext {
        store: store.clone(),
        logs: logs.clone(),
        code: code.clone(),
        signals: signals.clone(),
        states: engine_states.clone(),
        tag: installation_tag(&config.data_dir),
        default_code_root: config.data_dir.join("engines"),
        tracking_uri: tracking_uri.clone(),
    };
    let mut engine_backends: HashMap<String, Arc<dyn ferry_backends::ComputeBackend>> = HashMap::new();
    let mut bridges = Vec::new();
    for pool in &config.file.pools {
        if let Some(engine) = &pool.engine {
            let (backend, bridge) =
                engines::engine_pool(&pool.info.name, engine, bridge_context.clone()).map_err(ServerError::Engine)?;
            engine_backends.insert(pool.info.name.clone(), backend);
            bridges.push(bridge);
        }
    }
    let (driver, handle, commands) = Driver::start(
        store.clone(),
        agents.clone(),
        engine_backends,
        signals.clone(),
        config.node_timeout,
        config.file.clone(),
        jobruns::TrackingEnv { key: job_key.clone(), uri: config.file.public_url.clone() },
    )
    .await?;
    let (sweeps_handle, sweep_commands) = sweeps::SweepsHandle::channel();
    let driver_task = tokio::spawn(driver.run(commands));
    let bridge_tasks: Vec<_> = bridges.into_iter().map(|b| tokio::spawn(b.run(handle.clone()))).collect();
    let tokens = Arc::new(auth::TokenCache::default());
    let telemetry = Arc::new(telemetry::Telemetry::default());
    let series = Arc::new(
        ferry_tsdb::Tsdb::open(ferry_tsdb::Config::new(data.series()))
            .map_err(|e| ServerError::Series(e.to_string()))?,
    );
    let recorder = tokio::spawn(series::record(series.clone(), store.clone(), handle.clone(), telemetry.clone()));
    let artifacts = Arc::new(
        artifacts::ArtifactStore::open(&config.file.artifacts, &data.artifacts()).map_err(ServerError::Artifacts)?,
    );
    tracing::info!(store = %artifacts.describe, "MLflow artifacts");
    let state = AppState {
        store: store.clone(),
        driver: handle,
        agents,
        logs,
        code,
        signals,
        tokens,
        telemetry,
        series: series.clone(),
        engine_states,
        pools: Arc::new(config.file.pools.clone()),
        artifacts,
        job_key,
        sweeps: sweeps_handle,
    };
    let sweep_controller = tokio::spawn(sweeps::run(state.clone(), sweep_commands));
    tracing::info!(addr = %bound, data_dir = %config.data_dir.display(), "Ferry server listening");
    ready(bound);
    // Two parties wait for the shutdown (axum's graceful stop and this task): a watch channel wakes every waiter,
    // where a `Notify` with one permit wakes just one and left the other waiting forever.
    let (trigger, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = trigger.send(true);
    });
    let mut stopped = stopping.clone();
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });
    // Open long polls and followed logs would hold a graceful shutdown forever; give them a bounded grace.
    let mut stopping = stopping;
    let _ = stopping.wait_for(|stop| *stop).await;
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(e))) => return Err(ServerError::Serve(e)),
        Ok(_) => {}
        Err(_) => tracing::info!("closing requests still open after the shutdown grace"),
    }
    driver_task.abort();
    for task in bridge_tasks {
        task.abort();
    }
    recorder.abort();
    sweep_controller.abort();
    if let Err(e) = tokio::task::spawn_blocking(move || series.flush()).await.unwrap_or(Ok(())) {
        tracing::error!(error = %e, "could not write the last time-series samples to disk");
    }
    store.close().await;
    tracing::info!("Ferry server stopped");
    Ok(())
}

/// The whole HTTP API as a router, so tests can call it without a socket.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/health", get(routes::health))
        .route("/metrics", get(routes::metrics::metrics))
        .route("/api/v1/openapi.json", get(routes::openapi::document))
        .route("/api/v1/jobs", post(routes::jobs::submit).get(routes::jobs::list))
        .route("/api/v1/jobs/{id}", get(routes::jobs::show))
        .route("/api/v1/queue", get(routes::jobs::queue))
        .route("/api/v1/jobs/{id}/metrics", get(routes::jobs::metrics))
        .route("/api/v1/sweeps", post(routes::sweeps::submit).get(routes::sweeps::list))
        .route("/api/v1/sweeps/{id}", get(routes::sweeps::show))
        .route("/api/v1/sweeps/{id}/cancel", post(routes::sweeps::cancel))
        .route("/api/v1/jobs/{id}/wait", get(routes::jobs::wait))
        .route("/api/v1/jobs/{id}/cancel", post(routes::jobs::cancel))
        .route("/api/v1/jobs/{id}/logs", get(routes::jobs::logs))
        .route("/api/v1/jobs/{id}/diff", get(routes::jobs::diff))
        .route(
            "/api/v1/code/{sha256}",
            head(routes::code::head).put(routes::code::put).get(routes::code::get).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/nodes", get(routes::nodes::list))
        .route("/api/v1/pools", get(routes::nodes::pools))
        .route("/api/v1/series", get(routes::series::query))
        .route("/api/v1/series/metrics", get(routes::series::metrics))
        .route("/api/v1/usage", get(routes::usage::usage))
        .route("/api/v1/tokens", post(routes::tokens::create).get(routes::tokens::list))
        .route("/api/v1/tokens/{id}/revoke", post(routes::tokens::revoke))
        .route("/api/v1/agent/register", post(routes::agent::register))
        .route("/api/v1/agent/work", post(routes::agent::work))
        .route("/api/v1/agent/reports", post(routes::agent::reports))
        .route("/api/v1/agent/telemetry", post(routes::agent::telemetry))
        .route("/api/v1/agent/runs/{job}/{attempt}/logs", post(routes::agent::upload_log))
        .route(
            "/api/2.0/mlflow/experiments/create",
            post(routes::mlflow::create_experiment).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/experiments/get",
            get(routes::mlflow::get_experiment).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/experiments/get-by-name",
            get(routes::mlflow::get_experiment_by_name).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/experiments/search",
            post(routes::mlflow::search_experiments).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/experiments/update",
            post(routes::mlflow::update_experiment).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/experiments/delete",
            post(routes::mlflow::delete_experiment).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/experiments/restore",
            post(routes::mlflow::restore_experiment).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/experiments/set-experiment-tag",
            post(routes::mlflow::set_experiment_tag).fallback(routes::mlflow::wrong_method),
        )
        .route("/api/2.0/mlflow/runs/create", post(routes::mlflow::create_run).fallback(routes::mlflow::wrong_method))
        .route("/api/2.0/mlflow/runs/get", get(routes::mlflow::get_run).fallback(routes::mlflow::wrong_method))
        .route("/api/2.0/mlflow/runs/update", post(routes::mlflow::update_run).fallback(routes::mlflow::wrong_method))
        .route("/api/2.0/mlflow/runs/delete", post(routes::mlflow::delete_run).fallback(routes::mlflow::wrong_method))
        .route("/api/2.0/mlflow/runs/restore", post(routes::mlflow::restore_run).fallback(routes::mlflow::wrong_method))
        .route("/api/2.0/mlflow/runs/search", post(routes::mlflow::search_runs).fallback(routes::mlflow::wrong_method))
        .route(
            "/api/2.0/mlflow/runs/log-metric",
            post(routes::mlflow::log_metric).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/runs/log-parameter",
            post(routes::mlflow::log_parameter).fallback(routes::mlflow::wrong_method),
        )
        .route("/api/2.0/mlflow/runs/log-batch", post(routes::mlflow::log_batch).fallback(routes::mlflow::wrong_method))
        .route("/api/2.0/mlflow/runs/set-tag", post(routes::mlflow::set_tag).fallback(routes::mlflow::wrong_method))
        .route(
            "/api/2.0/mlflow/runs/delete-tag",
            post(routes::mlflow::delete_tag).fallback(routes::mlflow::wrong_method),
        )
        .route(
            "/api/2.0/mlflow/metrics/get-history",
            get(routes::mlflow::metric_history).fallback(routes::mlflow::wrong_method),
        )
        .merge(routes::artifacts::router())
        .merge(routes::mlflow_models::router())
        .route("/api/2.0/mlflow/{*rest}", axum::routing::any(routes::mlflow::not_implemented))
        .route("/api/2.0/mlflow-artifacts/{*rest}", axum::routing::any(routes::mlflow::not_implemented))
        .route("/api/3.0/mlflow/server-info", get(routes::mlflow::server_info))
        .route("/", get(routes::ui::page))
        .route("/nodes", get(routes::ui::page))
        .route("/jobs", get(routes::ui::page))
        .route("/jobs/{id}", get(routes::ui::page))
        .route("/usage", get(routes::ui::page))
        .route("/sweeps", get(routes::ui::page))
        .route("/sweeps/{id}", get(routes::ui::page))
        .route("/login", get(routes::ui::login_form).post(routes::ui::login))
        .route("/logout", post(routes::ui::logout))
        .route("/ui/{name}", get(routes::ui::asset))
        .fallback(|| async { ApiError::not_found("no such API path; see /api/v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ferry_api::ErrorCode::InvalidRequest,
                "this path does not accept that method; see /api/v1/openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}
