//! Ferry's node agent: it tells the server what this machine has, runs the jobs the server assigns to it under a
//! small supervisor each, ships their output and reports how they end. It also measures the node and every run once
//! a second and ships those samples through a bounded spool on its disk (`<data_dir>/telemetry/`), so a partition
//! delays them instead of losing them.
//!
//! The `ferry` binary calls [`run`] for `ferry agent`, [`shim_main`] for the hidden `ferry __shim <run-dir>`
//! that supervises one run, and [`container::main`] for the hidden `ferry __container <run-dir>` that the shim
//! starts instead of the job's command when the job runs in a container image. Runs outlive the agent: their state
//! lives in files under the data directory, so an agent that restarts adopts them. This crate must never schedule
//! (the server decides what runs where), never run a job through a shell, and never hold a job's output in memory
//! beyond one upload chunk.

mod agent;
mod backoff;
mod cgroup;
pub mod code;
mod config;
pub mod container;
pub mod isolate;
mod lock;
mod resources;
mod rundir;
mod runs;
mod runusage;
mod shim;
mod shipper;
mod spool;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};

pub use config::{
    default_name, AgentConfig, ContainerGpus, ContainerNetwork, ContainerUser, DeclaredGpu, DEFAULT_POOL,
};

/// Everything that stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration file is unreadable or wrong; the message names the field.
    #[error("{}: {message}", .path.display())]
    Config { path: PathBuf, message: String },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// The agent runs as root and the account jobs run as is missing or is root.
    #[error("{0}")]
    JobUser(String),
    /// Another agent holds the data directory.
    #[error(
        "another agent{} is using {}; stop it, or give this agent its own data directory",
        .pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
        .data_dir.display()
    )]
    Locked { pid: Option<u32>, data_dir: PathBuf },
    /// The server refused the agent's token.
    #[error("the server at {server} refused the agent: {message}; check the token the agent was given")]
    Unauthorized { server: String, message: String },
    /// The server refused the node's registration for a reason a retry cannot change.
    #[error("the server at {server} refused to register this node: {message}")]
    Rejected { server: String, message: String },
    /// The server's certificate authority is not the pinned one, or TLS cannot be set up; a retry cannot help.
    #[error("{0}")]
    Tls(String),
}

/// Runs the agent until `shutdown` completes or the server refuses it. Runs that are going when it returns go on
/// under their supervisors; the next agent on the same data directory adopts them.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let runs_dir = config.data_dir.join(rundir::RUNS_DIR);
    std::fs::create_dir_all(&runs_dir)
        .map_err(|source| AgentError::Io { what: format!("cannot create {}", runs_dir.display()), source })?;
    let _lock = lock::DataDirLock::acquire(&config.data_dir)?;
    // What `ferry __isolate` hides from each job: this directory and the configured paths.
    let job_user = if nix::unistd::geteuid().is_root() {
        Some(isolate::JobUser::look_up(&config.job_user).map_err(AgentError::JobUser)?)
    } else {
        None
    };
    let detection = cgroup::detect();
    if let Some(why) = &detection.why_none {
        tracing::warn!("limits not enforced: {why}, measuring only");
    }
    let spool_dir = config.data_dir.join(spool::SPOOL_DIR);
    let spool = spool::Spool::open(&spool_dir, config.telemetry_spool_bytes).map_err(|source| AgentError::Io {
        what: format!("cannot open the telemetry spool {}", spool_dir.display()),
        source,
    })?;
    if spool.pending() > 0 {
        tracing::info!(
            samples = spool.pending(),
            "found telemetry samples the server has not acknowledged; sending them"
        );
    }
    let spool = std::sync::Arc::new(std::sync::Mutex::new(spool));
    let (capacity, sampler) = resources::start_sampler(&config, spool.clone()).await;
    tracing::info!(
        node = %config.name,
        pool = %config.pool,
        cpu_millis = capacity.cpu_millis,
        memory_bytes = capacity.memory_bytes,
        gpus = capacity.gpus.len(),
        limits = detection.mode.name(),
        data_dir = %config.data_dir.display(),
        "agent starting"
    );
    let trust = match config.ca_pin {
        Some(pin) => match pinned_authority(&config.server, pin, &mut shutdown).await? {
            Some(authority) => ferry_client::Trust::Authority(authority),
            None => return Ok(()),
        },
        None => config.trust.clone(),
    };
    let token = if config.single_use_token {
        match node_token(&config, &trust, &mut shutdown).await? {
            Some(token) => token,
            None => return Ok(()),
        }
    } else {
        config.token.clone()
    };
    let client = ferry_client::Client::with_trust(&config.server, Some(token), &trust)
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let mut config = config;
    if let ferry_client::Trust::Authority(authority) = &trust {
        config.server_ca_file = Some(write_server_ca(&config.data_dir, authority)?);
    }
    // What `ferry __isolate` hides from each job (this directory and the configured paths), what stays in view
    // (the server's authority, for the job's MLflow client) and whom jobs run as.
    let expose: Vec<std::path::PathBuf> = config.server_ca_file.iter().cloned().collect();
    let mut isolation = isolate::Settings::of(&config.data_dir, &config.hide_from_jobs, &expose, job_user);
    if nix::unistd::geteuid().is_root() {
        for (ferry_user, account) in &config.job_users {
            let user = isolate::JobUser::look_up(account)
                .map_err(|e| AgentError::JobUser(format!("`job_users`: {ferry_user} = \"{account}\": {e}")))?;
            isolation.users.insert(ferry_user.clone(), user);
        }
        isolation.users_by_name = config.job_users_by_name;
    }
    isolation.write(&config.data_dir).map_err(|source| AgentError::Io {
        what: format!("cannot write {}", config.data_dir.join(isolate::SETTINGS_FILE).display()),
        source,
    })?;
    // What `ferry __container` needs for runs with an image: the engine, whom containers run as, what they may
    // mount (never what is hidden from jobs), their network and capabilities.
    let containers = container::Settings::of(&config, isolation.job_user.as_ref(), &isolation.hide);
    containers.write(&config.data_dir).map_err(|source| AgentError::Io {
        what: format!("cannot write {}", config.data_dir.join(container::SETTINGS_FILE).display()),
        source,
    })?;
    let usage = sampler.usage.clone();
    let telemetry = agent::Telemetry { runs: sampler.runs.clone(), spool };
    let result =
        agent::Agent::new(config, client, capacity, detection.mode.name(), usage, telemetry).run(shutdown).await;
    drop(sampler);
    result
}

/// The file in the agent's data directory holding a cloud machine's own token, traded for its join token.
pub const NODE_TOKEN_FILE: &str = "node.token";

/// A cloud machine's own token: the one traded earlier (kept in `NODE_TOKEN_FILE`), else one traded now for the
/// single-use join token, waiting for a server that does not answer yet; `None` when `shutdown` comes first. The
/// file is written (mode 0600) before the token is used, so a restart finds it.
async fn node_token(
    config: &AgentConfig,
    trust: &ferry_client::Trust,
    shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> Result<Option<String>, AgentError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = config.data_dir.join(NODE_TOKEN_FILE);
    let io = |what: String| move |source| AgentError::Io { what, source };
    match std::fs::read_to_string(&path) {
        Ok(saved) if !saved.trim().is_empty() => return Ok(Some(saved.trim().to_string())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("cannot read {}", path.display()))(e)),
    }
    let client = ferry_client::Client::with_trust(&config.server, Some(config.token.clone()), trust)
        .map_err(|e| AgentError::Tls(e.to_string()))?;
    let mut backoff = backoff::Backoff::new();
    let exchanged = loop {
        match client.exchange_join_token().await {
            Ok(exchanged) => break exchanged,
            Err(ferry_client::ClientError::Api { status: 401 | 403 | 409, body }) => {
                return Err(AgentError::Unauthorized { server: config.server.clone(), message: body.message });
            }
            Err(e) => {
                tracing::warn!(server = %config.server, error = %e, "cannot trade the join token yet; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = shutdown.as_mut() => return Ok(None),
                }
            }
        }
    };
    let staged = config.data_dir.join(format!(".{NODE_TOKEN_FILE}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .map_err(io(format!("cannot write {}", staged.display())))?;
    std::io::Write::write_all(&mut file, exchanged.token.as_bytes())
        .map_err(io(format!("cannot write {}", staged.display())))?;
    file.sync_all().map_err(io(format!("cannot write {}", staged.display())))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("cannot write {}", staged.display())))?;
    std::fs::rename(&staged, &path).map_err(io(format!("cannot write {}", path.display())))?;
    tracing::info!(server = %config.server, "traded the single-use join token for this machine's own");
    Ok(Some(exchanged.token))
}

/// Writes the authority the agent trusts where jobs can read it: their MLflow clients must trust the same server.
/// Readable by all (a certificate is public); replaced whole, so a starting job never reads half of it.
fn write_server_ca(data_dir: &Path, authority: &ferry_client::CaCert) -> Result<PathBuf, AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let path = data_dir.join(SERVER_CA_FILE);
    let fail = |e: std::io::Error| AgentError::Tls(format!("cannot write {}: {e}", path.display()));
    let staged = data_dir.join(format!(".{SERVER_CA_FILE}.tmp"));
    std::fs::write(&staged, authority.pem()).map_err(fail)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644)).map_err(fail)?;
    std::fs::rename(&staged, &path).map_err(fail)?;
    Ok(path)
}

/// The file in the agent's data directory holding the server's certificate authority, for jobs.
pub const SERVER_CA_FILE: &str = "server-ca.pem";

/// Fetches the server's certificate authority that `pin` names, waiting for a server that does not answer yet;
/// `None` when `shutdown` comes first. Any other failure, a mismatch above all, stops the agent: it never falls
/// back to trusting anything else.
async fn pinned_authority(
    server: &str,
    pin: ferry_api::tls::CaFingerprint,
    shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> Result<Option<ferry_client::CaCert>, AgentError> {
    use ferry_client::{Client, ClientError};
    let mut backoff = backoff::Backoff::new();
    let mut announced = false;
    loop {
        let attempt = tokio::select! {
            attempt = Client::fetch_pinned_authority(server, pin) => attempt,
            _ = shutdown.as_mut() => return Ok(None),
        };
        match attempt {
            Ok(authority) => {
                tracing::info!(ca = %authority.fingerprint, "trusting the server's certificate authority, as pinned by the join token");
                return Ok(Some(authority));
            }
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Transport { .. })) => {
                if !announced {
                    tracing::warn!(error = %e, "cannot fetch the server's certificate authority yet; retrying");
                    announced = true;
                }
            }
            Err(ClientError::Api { status, .. }) if status >= 500 => {}
            Err(e) => return Err(AgentError::Tls(e.to_string())),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.as_mut() => return Ok(None),
        }
    }
}

/// The supervisor of one run, for `ferry __shim <run-dir>`: starts the run described by `<run-dir>/spec.json`,
/// waits for it and records its end. Synchronous; call it before starting any async runtime. Returns the process
/// exit code.
pub fn shim_main(run_dir: &Path) -> i32 {
    shim::main(run_dir)
}
