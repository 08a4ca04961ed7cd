//! Ferry's control-plane server: the HTTP/JSON API, authentication, and the driver that feeds the scheduler core
//! and applies its decisions.
//!
//! Handlers stay thin; the driver (`driver.rs`) is the only place that changes jobs and nodes. This crate must never
//! run a job itself: work reaches machines only through a compute backend.

mod artifact_quota;
mod artifacts;
mod audit;
mod auth;
mod clock;
mod code;
mod config;
mod convert;
mod datadir;
mod driver;
mod engines;
mod error;
pub mod fleet;
mod http;
mod jobruns;
mod logs;
mod metrics;
mod oidc;
mod predictions;
mod retention;
mod routes;
mod secrets;
mod series;
mod signals;
mod state;
mod submission;
mod sweeps;
mod telemetry;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use ferry_api::agent::LOG_CHUNK_BYTES_MAX;
use ferry_backends::agent::{new_epoch, AgentBackend};
use ferry_backends::{registry, ComputeBackend};

pub use auth::{hash_token, new_token, TokenCache};
pub use clock::{Clock, SystemClock};
pub use config::{FileConfig, PoolConfig};
pub use datadir::{restore_admin, DataDir, ADMIN_TOKEN_FILE, AGENT_TOKEN_FILE, BOOTSTRAP_ADMIN};
pub use error::ApiError;
pub use routes::openapi::ApiDoc;
pub use submission::validate;
pub use tls::{TlsSetting, CA_CERT_FILE};

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
    /// The node name of `ferry up`'s own agent, which gets an agent token of its own in `agent.token`.
    pub local_agent: Option<String>,
    /// HTTPS, and with which certificate (`tls.rs`); plain HTTP by default.
    pub tls: TlsSetting,
    /// Serve plain HTTP on an address other machines reach (`--insecure-http`); refused otherwise.
    pub insecure_http: bool,
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
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Tls(String),
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
    data.ensure_admin(&store).await?;
    if let Some(node) = &config.local_agent {
        data.local_agent_token(&store, node).await?;
    }
    config::declare_teams(&store, &config.file).await?;
    let job_key = Arc::new(data.job_token_key()?);
    let secret_box = Arc::new(match &config.file.secrets_key_file {
        Some(file) => secrets::SecretBox::from_key_file(file).map_err(ServerError::Config)?,
        None => secrets::SecretBox::new(&data.secrets_key()?).map_err(ServerError::Config)?,
    });
    let tls = tls::prepare(&config.tls, &config.data_dir, config.listen).map_err(ServerError::Tls)?;
    tls::check_plain_http(config.listen, tls.is_some(), config.insecure_http).map_err(ServerError::Tls)?;
    // Bound first, so that the address jobs on engines log to is known before anything starts.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind { addr: config.listen, source })?;
    let bound = listener.local_addr().map_err(ServerError::Serve)?;
    let tracking_uri = config.file.public_url.clone().unwrap_or_else(|| {
        let host = if bound.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { bound.ip() };
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", std::net::SocketAddr::new(host, bound.port()))
    });
    let agents = Arc::new(AgentBackend::new(new_epoch()));
    let signals = Arc::new(Signals::default());
    let logs = Arc::new(LogStore::new(data.logs(), config.file.log_bytes_per_run));
    let code = Arc::new(CodeStore::new(data.code()));
    let engine_states = Arc::new(engines::EngineStates::default());
    let host = Arc::new(engines::ServerHost {
        store: store.clone(),
        logs: logs.clone(),
        code: code.clone(),
        signals: signals.clone(),
        states: engine_states.clone(),
        tracking_uri: tracking_uri.clone(),
        job_key: job_key.clone(),
        driver: OnceLock::new(),
    });
    let context =
        registry::Context { agents: agents.clone(), host: host.clone(), tag: installation_tag(&config.data_dir) };
    // Every configured pool's backend, from the registry by its kind; the core learns what each can do through
    // the pool's info. Pools that only nodes name are agents'.
    let mut file = config.file.clone();
    let mut backends: HashMap<String, Arc<dyn ComputeBackend>> = HashMap::new();
    let mut backend_tasks = Vec::new();
    for pool in &mut file.pools {
        let built = registry::build(&pool.spec(&config.data_dir), &context).map_err(ServerError::Engine)?;
        let capabilities = built.backend.capabilities();
        (pool.info.images, pool.info.gangs) = (capabilities.images, capabilities.gangs);
        backends.insert(pool.info.name.clone(), built.backend);
        backend_tasks.extend(built.task);
    }
    let tokens = Arc::new(auth::TokenCache::default());
    // Pools added at run time (`ferry pool add`), after the file's, checked again as the file's are.
    let mut all_pools = file.pools.clone();
    for stored in store.runtime_pools().await? {
        if all_pools.iter().any(|p| p.info.name == stored.name) {
            tracing::warn!(pool = %stored.name, "a pool added at run time is now in the configuration file; the file's is used");
            continue;
        }
        match config::runtime_pool(&stored.definition, file.public_url.as_deref()) {
            Ok(mut pool) => {
                let capabilities = agents.capabilities();
                (pool.info.images, pool.info.gangs) = (capabilities.images, capabilities.gangs);
                all_pools.push(pool);
            }
            Err(e) => {
                tracing::error!(pool = %stored.name, error = %e, "a pool added at run time no longer loads; skipped")
            }
        }
    }
    // Elastic pools' machines: reconciled with the providers before the driver takes the store back, so that a
    // machine launched just before a stop is adopted, not launched again.
    let fleet = fleet::Fleet::new(
        store.clone(),
        Arc::new(clock::SystemClock),
        &all_pools,
        fleet::FleetSettings {
            // The configuration requires `public_url` with elastic pools.
            server_url: file.public_url.clone().unwrap_or_else(|| tracking_uri.clone()),
            ca_pin: tls.as_ref().and_then(|t| t.authority.as_ref()).map(|a| a.fingerprint),
            reconcile: file.cloud_reconcile,
            tokens: tokens.clone(),
        },
    )
    .await
    .map_err(ServerError::Config)?;
    if let Some(fleet) = &fleet {
        let starting = fleet.recover().await;
        tracing::info!(installation = fleet.installation(), starting = starting.len(), "cloud fleet reconciled");
    }
    let mut driver_file = file.clone();
    driver_file.pools = all_pools.clone();
    let (mut driver, handle, commands) = Driver::start(
        store.clone(),
        agents.clone(),
        backends.clone(),
        signals.clone(),
        config.node_timeout,
        driver_file,
        driver::RunSources {
            tracking: jobruns::TrackingEnv { key: job_key.clone(), uri: file.public_url.clone() },
            secrets: secret_box.clone(),
            clock: Arc::new(clock::SystemClock),
        },
    )
    .await?;
    let (sweeps_handle, sweep_commands) = sweeps::SweepsHandle::channel();
    let mut fleet_tasks = Vec::new();
    if let Some(fleet) = &fleet {
        let (news_tx, mut news_rx) = tokio::sync::mpsc::unbounded_channel();
        let (orders, task) = fleet.start(news_tx);
        driver.set_fleet(orders);
        let driver_handle = handle.clone();
        fleet_tasks.push(task);
        fleet_tasks.push(tokio::spawn(async move {
            while let Some(news) = news_rx.recv().await {
                driver_handle.notify(driver::Command::Cloud(news)).await;
            }
        }));
    }
    let driver_task = tokio::spawn(driver.run(commands));
    let _ = host.driver.set(handle.clone());
    let backend_tasks: Vec<_> = backend_tasks.into_iter().map(tokio::spawn).collect();
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
    let artifact_quotas = Arc::new(artifact_quota::ArtifactQuotas::new(
        config.file.artifacts.quota_per_project_bytes,
        config.file.artifact_quotas.clone(),
    ));
    let artifact_count = tokio::spawn(artifact_quota::count(artifacts.clone(), store.clone(), artifact_quotas.clone()));
    let oidc = match &config.file.oidc {
        Some(settings) => {
            let base = config.file.public_url.clone().unwrap_or_else(|| tracking_uri.clone());
            let oidc = oidc::Oidc::new(settings.clone(), &base, &job_key).map_err(ServerError::Config)?;
            tracing::info!(issuer = %settings.issuer, redirect = %oidc.redirect_uri(), "single sign-on");
            Some(Arc::new(oidc))
        }
        None => None,
    };
    let pruner = tokio::spawn(audit::prune(store.clone(), config.file.audit_retention));
    let retention = tokio::spawn(retention::run(retention::Retention {
        store: store.clone(),
        driver: handle.clone(),
        code: code.clone(),
        logs: logs.clone(),
        code_period: config.file.code_retention,
        log_period: config.file.log_retention,
        job_period: config.file.job_retention,
    }));
    let state = AppState {
        store: store.clone(),
        driver: handle,
        agents,
        logs,
        code,
        signals,
        tokens,
        failures: Arc::new(auth::FailureLimiter::from_env()),
        telemetry,
        series: series.clone(),
        engine_states,
        backends: Arc::new(backends),
        pools: Arc::new(state::PoolSet::new(all_pools)),
        file: Arc::new(file.clone()),
        artifacts,
        secrets: secret_box,
        artifact_quotas,
        job_key,
        sweeps: sweeps_handle,
        oidc,
        tls_authority: tls.as_ref().and_then(|t| t.authority.clone()).map(Arc::new),
        fleet,
    };
    let sweep_controller = tokio::spawn(sweeps::run(state.clone(), sweep_commands));
    let fingerprint = tls.as_ref().and_then(|t| t.authority.as_ref()).map(|a| a.fingerprint.to_string());
    tracing::info!(addr = %bound, data_dir = %config.data_dir.display(), https = tls.is_some(),
        ca = fingerprint.as_deref().unwrap_or("-"), "Ferry server listening");
    ready(bound);
    // Two parties wait for the shutdown (axum's graceful stop and this task): a watch channel wakes every waiter,
    // where a `Notify` with one permit wakes just one and left the other waiting forever.
    let (trigger, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = trigger.send(true);
    });
    let listener = tls::Listener::new(listener, tls.as_ref());
    // Open long polls and followed logs would hold a graceful shutdown forever; they get a bounded grace.
    http::serve(listener, app(state), stopping, SHUTDOWN_GRACE).await;
    driver_task.abort();
    for task in fleet_tasks {
        task.abort();
    }
    for task in backend_tasks {
        task.abort();
    }
    recorder.abort();
    sweep_controller.abort();
    pruner.abort();
    retention.abort();
    artifact_count.abort();
    if let Err(e) = tokio::task::spawn_blocking(move || series.flush()).await.unwrap_or(Ok(())) {
        tracing::error!(error = %e, "could not write the last time-series samples to disk");
    }
    store.close().await;
    tracing::info!("Ferry server stopped");
    Ok(())
}

/// The whole HTTP API as a router, so tests can call it without a socket. Built from the route table alone: each
/// route gets the guard of its access rule (`auth::guard`), and a path with MLflow routes answers a wrong method in
/// MLflow's shape.
pub fn app(state: AppState) -> Router {
    // Paths in table order, each with its methods' handlers and whether it answers every method itself.
    let mut by_path: Vec<(&'static str, axum::routing::MethodRouter<AppState>, bool)> = Vec::new();
    for entry in routes::table() {
        let handler = match entry.spec.access {
            // Nothing to check; `route_layer` would also refuse a handler for every method.
            auth::Access::Public => entry.handler,
            access => {
                entry.handler.route_layer(axum::middleware::from_fn_with_state((state.clone(), access), auth::guard))
            }
        };
        let every_method = entry.spec.method.is_none();
        match by_path.iter_mut().find(|(path, _, _)| *path == entry.spec.path) {
            Some((_, existing, _)) => *existing = std::mem::take(existing).merge(handler),
            None => by_path.push((entry.spec.path, handler, every_method)),
        }
    }
    let mut router = Router::new();
    for (path, handler, every_method) in by_path {
        let mlflow = path.starts_with("/api/2.0/") && !every_method;
        let handler = if mlflow { handler.fallback(routes::mlflow::wrong_method) } else { handler };
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { ApiError::not_found("no such API path; see /api/v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ferry_api::ErrorCode::InvalidRequest,
                "this path does not accept that method; see /api/v1/openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(state)
}

/// Every route's method, path and access rule, for the access-matrix test and the documentation.
pub fn route_specs() -> Vec<(Option<String>, &'static str, String)> {
    routes::specs().into_iter().map(|s| (s.method.map(|m| m.to_string()), s.path, s.access.describe())).collect()
}
