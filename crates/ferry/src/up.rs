//! The long-running commands: `ferry up` (server and a supervised local agent), `ferry server` and `ferry agent`.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use ferry_agent::AgentConfig;
use ferry_server::ServerConfig;

use crate::exit::{self, CliError};
use crate::Global;

/// How long a stopped agent gets to exit before it is killed.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(5);
/// The wait before restarting an agent that exited, so a crash loop cannot spin.
const AGENT_RESTART_DELAY: Duration = Duration::from_secs(1);

#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The address to listen on; loopback by default, so nothing outside this machine can reach it.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], ferry_api::DEFAULT_PORT)))]
    listen: SocketAddr,
    /// How long a node may go without reporting before it is marked not ready and its jobs are lost or requeued.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    node_timeout: Duration,
    /// A TOML file with the pools, their order and burst settings (see README: Pools).
    #[arg(long)]
    config: Option<PathBuf>,
    /// `auto`: serve HTTPS with a certificate authority of Ferry's own, made in the data directory on the first
    /// start (tls/ca.pem); join tokens then carry its fingerprint, which agents pin.
    #[arg(long, value_enum, conflicts_with = "tls_cert")]
    tls: Option<TlsMode>,
    /// Another name (host name or IP address) the certificate of `--tls auto` is for; repeat for more.
    #[arg(long = "tls-name", value_name = "NAME", requires = "tls")]
    tls_names: Vec<String>,
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first), with --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address other machines reach, where tokens cross the network in the clear; without
    /// TLS the server refuses any address but loopback unless given this.
    #[arg(long)]
    insecure_http: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// A certificate authority of Ferry's own in the data directory, and a certificate it issues.
    Auto,
}

#[derive(Args, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// A TOML file for the local agent (node name, pool, labels, declared GPUs, capacity overrides).
    #[arg(long)]
    agent_config: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// The join token an admin created with `ferry token create --agent` (or FERRY_JOIN_TOKEN).
    #[arg(long, env = "FERRY_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// A file holding the token (instead of --join-token), such as the admin.token that `ferry up` writes.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The node's name (default: the hostname).
    #[arg(long)]
    name: Option<String>,
    /// The pool the node joins.
    #[arg(long)]
    pool: Option<String>,
    /// A TOML configuration file; command-line flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The join token is a cloud machine's single-use one (Ferry's start-up scripts pass this): trade it for the
    /// machine's own token before registering, and keep that one in the data directory.
    #[arg(long)]
    single_use_token: bool,
    /// A folder no job may see, besides the agent's data directory (such as the server's data directory when the
    /// server runs on this machine); repeatable, added to the configuration's `hide_from_jobs`.
    #[arg(long, value_name = "DIR")]
    hide_from_jobs: Vec<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    ferry_units::parse_duration_s(text)
        .map(Duration::from_secs)
        .or_else(|e| humantime::parse_duration(text).map_err(|_| e.0))
}

async fn ctrl_c() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn server_config(g: &Global, args: &ServerArgs) -> Result<ServerConfig, CliError> {
    let file = match &args.config {
        Some(path) => ferry_server::FileConfig::load(path).map_err(|e| CliError::new(exit::CONFIG, e))?,
        None => ferry_server::FileConfig::default(),
    };
    Ok(ServerConfig {
        listen: args.listen,
        data_dir: g.data_dir()?,
        node_timeout: args.node_timeout,
        file,
        local_agent: None,
        tls: match (args.tls, &args.tls_cert, &args.tls_key) {
            (Some(TlsMode::Auto), _, _) => ferry_server::TlsSetting::Auto { names: args.tls_names.clone() },
            (None, Some(cert), Some(key)) => ferry_server::TlsSetting::Files { cert: cert.clone(), key: key.clone() },
            _ => ferry_server::TlsSetting::Off,
        },
        insecure_http: args.insecure_http,
    })
}

/// The configuration `ferry up`'s agent will run with, as the agent itself works it out.
fn local_agent_config(config: Option<&Path>) -> Result<AgentConfig, CliError> {
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(exit::INTERNAL, format!("cannot find the ferry binary: {e}")))?;
    let mut agent = AgentConfig::new("http://127.0.0.1", "", PathBuf::from("."), exe);
    if let Some(path) = config {
        agent = AgentConfig::from_toml_file(path, agent).map_err(|e| CliError::new(exit::CONFIG, e.to_string()))?;
    }
    Ok(agent)
}

/// `ferry up` run as root installs Ferry on this one machine: like a package's installer, it makes the unprivileged
/// account its jobs run as when the machine does not have it yet (a shared node's `ferry agent` leaves that to the
/// admin and says how).
fn ensure_job_user(name: &str) -> Result<(), CliError> {
    if !nix::unistd::geteuid().is_root() || nix::unistd::User::from_name(name).ok().flatten().is_some() {
        return Ok(());
    }
    let made = std::process::Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name])
        .stdin(Stdio::null())
        .output();
    match made {
        Ok(out) if out.status.success() => {
            tracing::info!(account = name, "made the unprivileged account jobs run as");
            Ok(())
        }
        Ok(out) => Err(CliError::new(
            exit::CONFIG,
            format!(
                "jobs run as the unprivileged account `{name}`, and `useradd` could not make it: {}; make it by hand \
                 or name another with `job_user` in --agent-config",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        )),
        Err(e) => Err(CliError::new(
            exit::CONFIG,
            format!(
                "jobs run as the unprivileged account `{name}`, and `useradd` could not run ({e}); make it by hand"
            ),
        )),
    }
}

fn server_error(e: ferry_server::ServerError) -> CliError {
    let code = match &e {
        ferry_server::ServerError::DataDir(_)
        | ferry_server::ServerError::Store(_)
        | ferry_server::ServerError::Series(_)
        | ferry_server::ServerError::Engine(_)
        | ferry_server::ServerError::Artifacts(_)
        | ferry_server::ServerError::Config(_)
        | ferry_server::ServerError::Tls(_) => exit::CONFIG,
        ferry_server::ServerError::Bind { .. } => exit::UNAVAILABLE,
        ferry_server::ServerError::Serve(_) => exit::INTERNAL,
    };
    CliError::new(code, e.to_string())
}

pub async fn server(g: &Global, args: ServerArgs) -> Result<i32, CliError> {
    let config = server_config(g, &args)?;
    ferry_server::serve(config, ctrl_c(), |_| {}).await.map_err(server_error)?;
    Ok(0)
}

pub async fn up(g: &Global, args: UpArgs) -> Result<i32, CliError> {
    let mut config = server_config(g, &args.server)?;
    let agent = local_agent_config(args.agent_config.as_deref())?;
    ensure_job_user(&agent.job_user)?;
    config.local_agent = Some(agent.name);
    let data_dir = config.data_dir.clone();
    let tls = config.tls.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stop_server = stop_rx.clone();
    let server = tokio::spawn(ferry_server::serve(
        config,
        async move {
            let _ = stop_server.wait_for(|s| *s).await;
        },
        move |addr| {
            let _ = ready_tx.send(addr);
        },
    ));
    let addr = match ready_rx.await {
        Ok(addr) => addr,
        Err(_) => {
            return match server.await {
                Ok(Err(e)) => Err(server_error(e)),
                _ => Err(CliError::new(exit::INTERNAL, "the server stopped before it was ready")),
            }
        }
    };
    // The local agent reaches the server on loopback when it listens on every address.
    let host = if addr.ip().is_unspecified() { SocketAddr::from(([127, 0, 0, 1], addr.port())) } else { addr };
    let https = tls != ferry_server::TlsSetting::Off;
    let url = format!("{}://{host}", if https { "https" } else { "http" });
    // The agent trusts the data directory's authority with `--tls auto`, and what the CLI was told otherwise.
    let agent_ca = match &tls {
        ferry_server::TlsSetting::Auto { .. } => Some(data_dir.join(ferry_server::CA_CERT_FILE)),
        _ => g.ca_cert.clone(),
    };
    eprintln!("Ferry is running at {url}");
    eprintln!("  data:   {}", data_dir.display());
    eprintln!("  token:  {}", data_dir.join(ferry_server::ADMIN_TOKEN_FILE).display());
    if let ferry_server::TlsSetting::Auto { .. } = tls {
        let ca = data_dir.join(ferry_server::CA_CERT_FILE);
        let fingerprint = crate::tls::read_authority(&ca).map(|a| a.fingerprint.to_string()).unwrap_or_default();
        eprintln!("  ca:     {} ({fingerprint})", ca.display());
        eprintln!("  try:    ferry --server {url} run -- echo hello   (Ctrl-C stops Ferry; running jobs keep running)");
    } else {
        eprintln!("  try:    ferry run -- echo hello   (Ctrl-C stops Ferry; running jobs keep running)");
    }
    let agent = tokio::spawn(supervise_agent(url, data_dir, agent_ca, args.agent_config, stop_rx));
    ctrl_c().await;
    eprintln!("stopping Ferry");
    let _ = stop_tx.send(true);
    let _ = agent.await;
    match server.await {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(server_error(e)),
        Err(e) => Err(CliError::new(exit::INTERNAL, format!("the server task failed: {e}"))),
    }
}

/// Keeps one local agent running as a separate process, restarting it if it dies. An agent left from an earlier
/// `ferry up` that was killed (still holding the agent directory, talking to a server that is gone) is stopped
/// first; its runs go on under their own supervisors and the new agent adopts them.
async fn supervise_agent(
    url: String,
    data_dir: PathBuf,
    ca_cert: Option<PathBuf>,
    config: Option<PathBuf>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let agent_dir = data_dir.join("agent");
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::error!(error = %e, "cannot find the ferry binary to start the agent");
            return;
        }
    };
    let mut announced_survivor = false;
    while !*stop.borrow() {
        if agent_dir_in_use(&agent_dir) {
            match leftover_agent(&agent_dir, &exe) {
                Some(pid) => stop_leftover_agent(pid, &agent_dir).await,
                None if !announced_survivor => {
                    tracing::warn!(dir = %agent_dir.display(), "another process holds the agent directory; waiting for it to let go");
                    announced_survivor = true;
                }
                None => {}
            }
            let _ = tokio::time::timeout(AGENT_RESTART_DELAY, stop.wait_for(|s| *s)).await;
            continue;
        }
        let mut command = tokio::process::Command::new(&exe);
        command
            .arg("agent")
            .arg("--server")
            .arg(&url)
            .arg("--token-file")
            .arg(data_dir.join(ferry_server::AGENT_TOKEN_FILE))
            .arg("--data-dir")
            .arg(&agent_dir)
            // The server's data directory (admin token, job-token key, database) is out of every job's view.
            .arg("--hide-from-jobs")
            .arg(&data_dir)
            .stdin(Stdio::null())
            // Its own process group: Ctrl-C reaches only `ferry up`, which stops the agent in order.
            .process_group(0);
        // SAFETY: between fork and exec the closure only makes one async-signal-safe system call.
        unsafe {
            // Should `ferry up` be killed outright, the kernel tells the agent (SIGTERM), which then stops.
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        if let Some(config) = &config {
            command.arg("--config").arg(config);
        }
        if let Some(ca) = &ca_cert {
            command.arg("--ca-cert").arg(ca);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the local agent; retrying");
                let _ = tokio::time::timeout(AGENT_RESTART_DELAY, stop.wait_for(|s| *s)).await;
                continue;
            }
        };
        let exited = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        match exited {
            Some(status) => {
                tracing::warn!(status = ?status.ok(), "the local agent exited; restarting it");
                let _ = tokio::time::timeout(AGENT_RESTART_DELAY, stop.wait_for(|s| *s)).await;
            }
            None => {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(AGENT_STOP_GRACE, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
}

/// The pid of the agent holding `dir` when it is one `ferry up` started: this binary running `agent` with
/// `--data-dir dir`, as its lock file and command line say. Anything else holding the directory is left alone.
fn leftover_agent(dir: &Path, exe: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("agent.lock")).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    // Agents keep other processes out of their `/proc` entries (not dumpable), so as an ordinary user only the
    // command line can be read: its program path then stands for the executable.
    let ours = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(running) => same_file(&running, exe),
        Err(_) => args.first().is_some_and(|a| same_file(Path::new(OsStr::from_bytes(a)), exe)),
    };
    let is_agent = args.get(1) == Some(&&b"agent"[..]);
    // Its `--data-dir`, resolved from its own working directory, must be this very directory.
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    let wanted = std::fs::canonicalize(dir).ok()?;
    let same_dir = args.windows(2).any(|w| {
        w[0] == b"--data-dir"
            && std::str::from_utf8(w[1])
                .ok()
                .and_then(|arg| std::fs::canonicalize(cwd.join(arg)).ok())
                .is_some_and(|d| d == wanted)
    });
    (ours && is_agent && same_dir).then_some(pid)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        // A rebuilt binary replaces the file the old agent runs: `/proc` then says `(deleted)` after its path.
        _ => a.to_string_lossy().trim_end_matches(" (deleted)") == b.to_string_lossy(),
    }
}

/// Stops an agent a killed `ferry up` left behind: SIGTERM, and SIGKILL if it has not let go of the directory
/// after the grace.
async fn stop_leftover_agent(pid: i32, dir: &Path) {
    use nix::sys::signal::{kill, Signal};
    let pid = nix::unistd::Pid::from_raw(pid);
    tracing::warn!(pid = pid.as_raw(), dir = %dir.display(), "stopping the agent an earlier ferry up left running; its jobs carry on and the new agent adopts them");
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + AGENT_STOP_GRACE;
    while agent_dir_in_use(dir) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if agent_dir_in_use(dir) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Whether another process holds the agent lock of `dir`.
fn agent_dir_in_use(dir: &Path) -> bool {
    let Ok(file) = std::fs::File::open(dir.join("agent.lock")) else { return false };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_released_on_drop) => false,
        Err(_) => true,
    }
}

pub async fn agent(g: &Global, args: AgentArgs) -> Result<i32, CliError> {
    let text = match (&args.join_token, &args.token_file, &g.token) {
        (Some(token), _, _) => token.trim().to_string(),
        (None, Some(path), _) => std::fs::read_to_string(path)
            .map(|t| t.trim().to_string())
            .map_err(|e| CliError::new(exit::CONFIG, format!("cannot read the token file {}: {e}", path.display())))?,
        (None, None, Some(token)) => token.clone(),
        (None, None, None) => g.token()?,
    };
    // A join string may carry the fingerprint of the server's certificate authority, which the agent then pins.
    let join = ferry_api::tls::JoinString::parse(&text).map_err(|e| CliError::new(exit::CONFIG, e.to_string()))?;
    let token = join.token;
    let data_dir = g.data_dir.clone().unwrap_or(g.data_dir()?.join("agent"));
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(exit::INTERNAL, format!("cannot find the ferry binary: {e}")))?;
    let mut config = AgentConfig::new(&g.server_url(), &token, data_dir, exe);
    if let Some(path) = &args.config {
        config = AgentConfig::from_toml_file(path, config).map_err(|e| CliError::new(exit::CONFIG, e.to_string()))?;
    }
    if let Some(name) = args.name {
        config.name = name;
    }
    if let Some(pool) = args.pool {
        config.pool = pool;
    }
    for path in args.hide_from_jobs {
        let path = std::path::absolute(&path)
            .map_err(|e| CliError::new(exit::CONFIG, format!("--hide-from-jobs {}: {e}", path.display())))?;
        config.hide_from_jobs.push(path);
    }
    config.trust = crate::tls::trust(g)?;
    config.ca_pin = join.ca;
    config.single_use_token = args.single_use_token;
    ferry_agent::run(config, ctrl_c()).await.map_err(|e| {
        let code = match &e {
            ferry_agent::AgentError::Config { .. } => exit::CONFIG,
            ferry_agent::AgentError::Unauthorized { .. } => exit::AUTH,
            ferry_agent::AgentError::Locked { .. } | ferry_agent::AgentError::JobUser(_) => exit::CONFIG,
            ferry_agent::AgentError::Tls(_) => exit::AUTH,
            _ => exit::INTERNAL,
        };
        CliError::new(code, e.to_string())
    })?;
    Ok(0)
}
