//! Running a job in a container (`ferry __container <run-dir>`): the program the shim starts instead of the job's
//! command when the job names an image.
//!
//! It talks to the node's container engine through its Docker-compatible API (Podman's `podman system service`,
//! or Docker's daemon) over a unix socket, with `bollard`: it makes sure the image is there (one pull, never more),
//! creates a container `ferry-<job>-<attempt>[-r<rank>]-<hash of the run directory>` with the job's command as an
//! argument vector (no shell), its environment, its working directory bind-mounted at its resolved path, its CPU and
//! memory limits, its GPUs and the network the admin chose (the node's by default, so a gang's workers reach each
//! other and a job reaches a server on the node's loopback as they do without containers), starts it, copies its
//! output to this process's stdout and stderr (the shim's pipe, so the output cap and shipping work unchanged),
//! waits for it, removes it and exits with its exit code. SIGTERM or SIGINT (the shim's stop, on request or at the
//! maximum runtime) stops the container within the shim's grace period.
//!
//! What a container may do on the node, decided by the agent's configuration and never by the job: it mounts no
//! host path but its working directory, which must resolve (symlinks and `..` followed) to the run's own folder or
//! under a prefix of `container_mounts`, and must neither be nor hold a folder hidden from jobs (the agent's data
//! directory, the server's); a refused one is said on the shim's start-error pipe, so the run ends as failed to
//! start. It runs as an unprivileged account (`job_user` under a root agent, else the agent's own user) unless
//! `container_user = "image"`, with every capability dropped but those of `container_capabilities` and with
//! `no-new-privileges`. It must never mount a path it was not allowed, nor take the engine's socket from the job.
//!
//! The shim keeps doing everything else: the run's files, the output limit, the deadline, the stop with grace and
//! adoption after an agent restart. Exit codes: the container's own; 137 when the kernel killed it for its memory
//! (a line says so); 125 when the engine could not run it at all (unreachable socket, missing image, refused
//! container), with a line saying why, as `docker run` does.
//!
//! Where the container's processes live: an engine puts a container in a control group of its own, outside the
//! run's. On cgroup v1 with the run in its own group (`/ferry/job-...`), the container is made a child of that
//! group (`CgroupParent`), so the run's memory limit holds it and the agent's per-run sampling counts its memory
//! (`memory.usage_in_bytes` is hierarchical) and its CPU time where the cpu hierarchy carries cpuacct (where they are
//! mounted apart, the sampler sums the processes of the group and of the groups nested in it, the container's too). On cgroup v2 a group with processes in it (the
//! shim's) cannot have children with controllers, so there the container stays in the engine's own group and the
//! agent's per-run usage sees only the shim and this process; the container's own limits still apply.
//!
//! GPUs cannot be tested on the machines Ferry is developed on (they have none); see [`ContainerGpus`].

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::models::{
    ContainerCreateBody, DeviceMapping, DeviceRequest, HostConfig, Mount, MountType, ResourcesUlimits,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::{ClientVersion, Docker};
use ferry_api::agent::Assignment;
use ferry_units::format_bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};

pub use crate::config::ContainerGpus;
use crate::config::ContainerUser;
use crate::isolate::JobUser;
use crate::rundir::{self, RunDir};
use crate::AgentConfig;

/// The exit code when the engine could not run the container at all, as `docker run` and `podman run` use it.
pub const ENGINE_FAILED: i32 = 125;
/// The exit code of a process killed with SIGKILL, which a container killed for its memory gets.
const KILLED: i32 = 137;
/// The socket Podman's API service listens on when run as root (`podman system service`).
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
/// The socket Docker's daemon listens on.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// The file under the agent's data directory that tells `ferry __container` the agent's container settings. The
/// agent writes it when it starts, so a run started before a restart uses the settings of the agent now running.
pub(crate) const SETTINGS_FILE: &str = "containers.json";
/// The API version asked for: Podman 4's compatible API serves 1.41, and Docker every version since.
const API_VERSION: ClientVersion = ClientVersion { major_version: 1, minor_version: 41 };
/// How long one request to the engine may take to answer (a pull, or waiting for the container, streams and is
/// not limited by it).
const REQUEST_TIMEOUT_S: u64 = 120;
/// How long the container's last output is waited for once it has ended.
const LOG_DRAIN_WAIT: Duration = Duration::from_secs(10);
/// What the stop leaves of the shim's grace period for reading the last output and removing the container: the
/// shim kills this process when the grace period is over, and a container it leaves behind would run on.
const STOP_MARGIN_S: u64 = 3;
/// Rlimits a container gets when the hard limit cannot be read: root without CAP_SYS_RESOURCE (common in
/// containers and VMs) cannot raise them, so asking for the engine's defaults (often above the hard limits) fails.
const NOFILE_FALLBACK: u64 = 1024;
const NPROC_FALLBACK: u64 = 4096;
/// The most processes a container is allowed: Podman's conmon, which starts the runtime, lives under at most this
/// many (it lowers its own limit), and a runtime cannot raise a limit above its own without CAP_SYS_RESOURCE.
const NPROC_MAX: u64 = 32768;

/// The agent's container settings, as `ferry __container` reads them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Settings {
    /// The engine's API socket, `unix:///path` or a path.
    pub socket: String,
    pub gpus: ContainerGpus,
    /// The ids containers run as; `None`: the image's own user (`container_user = "image"`).
    pub user: Option<Ids>,
    /// The network mode, as the engine's API takes it (`host`, `none`, `bridge` or a network's name).
    pub network: String,
    /// Capabilities given back after all are dropped, `CAP_NAME`.
    pub capabilities: Vec<String>,
    /// Host path prefixes a working directory may be under besides the run's own folder, as configured.
    pub mounts: Vec<PathBuf>,
    /// Folders no container may mount, nor a folder holding one: the agent's data directory first (but for the
    /// run's own folder in it), then those hidden from jobs; resolved.
    pub hide: Vec<PathBuf>,
    /// The server's certificate authority the agent gives jobs, mounted read-only for their MLflow clients.
    pub server_ca: Option<PathBuf>,
}

/// A user and group id, as a container runs under them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Ids {
    pub uid: u32,
    pub gid: u32,
}

impl Settings {
    /// The settings of `config`, with the socket decided from the agent's environment where not configured;
    /// containers run as `job_user` (the account of an agent running as root) or else as the agent's own user, and
    /// may mount none of `hide`.
    pub fn of(config: &AgentConfig, job_user: Option<&JobUser>, hide: &[PathBuf]) -> Settings {
        let socket = config
            .container_socket
            .clone()
            .unwrap_or_else(|| default_socket(|name| std::env::var(name).ok(), |path| Path::new(path).exists()));
        let user = match config.container_user {
            ContainerUser::Image => None,
            ContainerUser::Unprivileged => Some(match job_user {
                Some(user) => Ids { uid: user.uid, gid: user.gid },
                None => Ids { uid: nix::unistd::geteuid().as_raw(), gid: nix::unistd::getegid().as_raw() },
            }),
        };
        Settings {
            socket,
            gpus: config.container_gpus,
            user,
            network: config.container_network.engine_mode().to_string(),
            capabilities: config.container_capabilities.clone(),
            mounts: config.container_mounts.clone(),
            hide: hide.to_vec(),
            server_ca: config.server_ca_file.clone(),
        }
    }

    /// Writes the settings under the agent's data directory.
    pub fn write(&self, data_dir: &Path) -> io::Result<()> {
        rundir::write_json_atomic(&data_dir.join(SETTINGS_FILE), self)
    }
}

/// The default engine socket: `$CONTAINER_HOST` (Podman's variable) or `$DOCKER_HOST` when set, else Podman's
/// socket when it exists, else Docker's.
pub(crate) fn default_socket(env: impl Fn(&str) -> Option<String>, exists: impl Fn(&str) -> bool) -> String {
    for name in ["CONTAINER_HOST", "DOCKER_HOST"] {
        if let Some(value) = env(name).filter(|v| !v.trim().is_empty()) {
            return value;
        }
    }
    if exists(PODMAN_SOCKET) {
        return format!("unix://{PODMAN_SOCKET}");
    }
    format!("unix://{DOCKER_SOCKET}")
}

/// The entry point of `ferry __container <run-dir>`: runs the job of `<run-dir>/spec.json` in a container and
/// returns the process exit code. Starts its own (single-threaded) async runtime.
pub fn main(run_dir: &Path) -> i32 {
    // A run that may not start (its working directory is not one containers may mount) says so on the shim's pipe,
    // so that it ends as failed to start, like a job whose command is missing.
    let reporting = crate::isolate::claim_start_pipe();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            crate::isolate::report(reporting, &format!("cannot start the async runtime: {e}"));
            return ENGINE_FAILED;
        }
    };
    let code = runtime.block_on(run(run_dir, reporting));
    runtime.shutdown_background();
    code
}

/// The exit code of a run stopped while its image was looked up or pulled: that of SIGTERM, as its job would give.
fn stopped_early() -> i32 {
    let _ = writeln!(io::stderr(), "ferry: stopped before the container was created");
    128 + nix::sys::signal::Signal::SIGTERM as i32
}

/// Prints why the container could not run (into the job's output) and returns [`ENGINE_FAILED`].
fn fail(message: &str) -> i32 {
    let _ = writeln!(io::stderr(), "ferry: {message}");
    ENGINE_FAILED
}

/// What a run needs before it talks to the engine, all checked.
struct Prepared {
    spec: Assignment,
    image: String,
    settings: Settings,
    /// The job's working directory, resolved and allowed: the host folder mounted into the container.
    workdir: PathBuf,
}

/// Reads the run's specification and the agent's settings and checks that the job's working directory is one
/// containers may mount; the run's own folder is handed to the account the container runs as. A refusal here
/// means the run never starts.
fn prepare(run_dir: &Path) -> Result<Prepared, String> {
    let spec = RunDir::new(run_dir)
        .read_spec()
        .map_err(|e| format!("cannot read the run's specification in {}: {e}", run_dir.display()))?;
    let image = spec.image.clone().ok_or("the run names no container image")?;
    let mut settings = read_settings(run_dir)?;
    if settings.user.is_some() && nix::unistd::geteuid().is_root() {
        // The job's owner's own account where the agent maps one (`[job_users]`), as for jobs without an image.
        let data_dir = run_dir.parent().and_then(Path::parent).ok_or("the run directory has no agent directory")?;
        let isolation: crate::isolate::Settings = std::fs::read(data_dir.join(crate::isolate::SETTINGS_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or("cannot read the agent's isolation settings; restart the agent, which writes them")?;
        if let Some(account) = isolation.account_for(&spec.owner) {
            settings.user = Some(Ids { uid: account.uid, gid: account.gid });
        }
    }
    let own = std::fs::canonicalize(run_dir).map_err(|e| format!("cannot resolve {}: {e}", run_dir.display()))?;
    let workdir = mount_source(&spec.workdir, &own, &settings)?;
    if let Some(ids) = settings.user.filter(|_| workdir.starts_with(&own) && nix::unistd::geteuid().is_root()) {
        // A shipped run's folder was unpacked by the root agent; the container's account must be able to write it.
        crate::isolate::hand_over(&workdir, ids.uid, ids.gid)
            .map_err(|e| format!("cannot give the run's folder {} to uid {}: {e}", workdir.display(), ids.uid))?;
    }
    Ok(Prepared { spec, image, settings, workdir })
}

async fn run(run_dir: &Path, reporting: bool) -> i32 {
    // Before anything else, so that a stop that arrives while the image is pulled is not lost.
    let (mut terminate, mut interrupt) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(e), _) | (_, Err(e)) => {
            crate::isolate::report(reporting, &format!("cannot handle signals: {e}"));
            return ENGINE_FAILED;
        }
    };
    let Prepared { spec, image, settings, workdir } = match prepare(run_dir) {
        Ok(prepared) => prepared,
        Err(message) => {
            crate::isolate::report(reporting, &message);
            return ENGINE_FAILED;
        }
    };
    // Started, as far as the shim is concerned: what goes wrong from here (the engine, the image) is the run's
    // failure, with exit code 125, and a stop during a long pull must reach this process. (Without the pipe, fd 3
    // may be the runtime's own.)
    if reporting {
        crate::isolate::close_start_pipe();
    }
    let docker = match connect(&settings.socket).await {
        Ok(docker) => docker,
        Err(message) => return fail(&message),
    };
    // A pull may take long: a stop meanwhile ends the run before any container exists.
    let ensured = tokio::select! {
        ensured = ensure_image(&docker, &image) => ensured,
        _ = terminate.recv() => return stopped_early(),
        _ = interrupt.recv() => return stopped_early(),
    };
    if let Err(message) = ensured {
        return fail(&message);
    }
    // The resolved folder is what the engine mounts; one of its folders swapped for a symlink while the image was
    // pulled would redirect the mount, so it is resolved once more right before the container is made.
    if std::fs::canonicalize(&workdir).ok().as_deref() != Some(workdir.as_path()) {
        return fail(&format!(
            "the working directory {} changed while the image was pulled; not mounting it",
            workdir.display()
        ));
    }
    let name = container_name(&spec, run_dir);
    let group = run_cgroup();
    let body = container_body(&spec, &image, &workdir, &settings, group.as_deref(), host_rlimits());
    if let Err(message) = create(&docker, &name, body).await {
        return fail(&message);
    }
    if let Err(e) = docker.start_container(&name, None).await {
        remove(&docker, &name).await;
        return fail(&format!("cannot start the container {name} of {image}: {}", engine_message(&e)));
    }

    let logs = tokio::spawn(copy_logs(docker.clone(), name.clone()));
    // Waiting streams for as long as the job runs: no request timeout applies to it.
    let waiter = docker.clone().with_timeout(Duration::from_secs(u32::MAX as u64));
    let mut wait = waiter.wait_container(&name, None);
    let mut stopping = false;
    let waited = loop {
        tokio::select! {
            waited = wait.next() => break waited,
            _ = terminate.recv(), if !stopping => stopping = true,
            _ = interrupt.recv(), if !stopping => stopping = true,
        }
        // The shim kills this process at the end of its grace period, so the engine gets less than that.
        let grace_s = spec.grace_s.saturating_sub(STOP_MARGIN_S).max(1);
        let stop = StopContainerOptions { t: Some(grace_s.min(i32::MAX as u64) as i32), signal: None };
        if let Err(e) = docker.stop_container(&name, Some(stop)).await {
            let _ = writeln!(io::stderr(), "ferry: cannot stop the container {name}: {}", engine_message(&e));
        }
    };
    // A non-zero exit is an error to bollard; the exit code is read back from the container below either way.
    if let Some(Err(e)) = &waited {
        if !matches!(e, EngineError::DockerContainerWaitError { .. }) {
            let _ = writeln!(io::stderr(), "ferry: lost track of the container {name}: {}", engine_message(e));
        }
    }
    let _ = tokio::time::timeout(LOG_DRAIN_WAIT, logs).await;

    let state = docker.inspect_container(&name, None).await.ok().and_then(|c| c.state);
    remove(&docker, &name).await;
    remove_leftover_groups(group.as_deref());
    let Some(state) = state else {
        return fail(&format!("cannot learn how the container {name} ended"));
    };
    // Engines do not always notice (Podman with runc on cgroup v1 does not), and on v1 the kernel counts the kill in
    // the container's own group, gone with it: a SIGKILL nobody asked for, in a run whose group reached its memory
    // limit, is taken for the kernel's.
    let killed_in_group = state.exit_code == Some(KILLED as i64)
        && !stopping
        && group.as_deref().is_some_and(|g| memory_limit_hits(g) > 0);
    if state.oom_killed == Some(true) || killed_in_group {
        let _ = writeln!(
            io::stderr(),
            "ferry: the container was OOM-killed: it reached its memory limit of {}",
            format_bytes(spec.memory_bytes)
        );
        return KILLED;
    }
    state.exit_code.map_or(ENGINE_FAILED, |code| code.clamp(0, 255) as i32)
}

/// The host folders mounted into the container: the working directory (`workdir`, resolved) at its own path, and the
/// server's certificate authority the agent gave the job (read-only, at the same path, so that
/// `MLFLOW_TRACKING_SERVER_CERT_PATH` means the same file inside). The variable alone mounts nothing: a job may set
/// it to any path, and only the agent's own authority file is mounted.
fn mounts(spec: &Assignment, workdir: &Path, settings: &Settings) -> Vec<Mount> {
    let bind = |path: &Path, read_only: bool| Mount {
        target: Some(path.display().to_string()),
        source: Some(path.display().to_string()),
        typ: Some(MountType::BIND),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let mut mounts = vec![bind(workdir, false)];
    let named = spec.env.get(crate::agent::CA_PATH_VAR).map(Path::new);
    if let Some(ca) = settings.server_ca.as_deref().filter(|ca| named == Some(*ca) && ca.is_file()) {
        if !ca.starts_with(workdir) {
            mounts.push(bind(ca, true));
        }
    }
    mounts
}

/// The settings the agent wrote (`<data_dir>/containers.json`, two levels above the run directory). The job's own
/// environment is never consulted: it must not choose the engine. Without them nothing runs: guessed defaults
/// could be laxer than what the admin set.
fn read_settings(run_dir: &Path) -> Result<Settings, String> {
    let data_dir = run_dir.parent().and_then(Path::parent).ok_or("the run directory has no agent directory")?;
    let file = data_dir.join(SETTINGS_FILE);
    let read = std::fs::read(&file)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
    read.map_err(|e| {
        format!(
            "cannot read the agent's container settings {}: {e}; restart the agent, which writes them",
            file.display()
        )
    })
}

/// The host folder to mount as the job's working directory: `workdir` with every symlink and `..` resolved, which
/// must be inside the run's own folder (`own_folder`, resolved) or under a prefix of `container_mounts`, and must
/// neither be inside nor hold a folder of `settings.hide`. The message of a refusal names the path and the setting.
pub(crate) fn mount_source(workdir: &str, own_folder: &Path, settings: &Settings) -> Result<PathBuf, String> {
    let resolved = std::fs::canonicalize(workdir)
        .map_err(|e| format!("the working directory {workdir} cannot be mounted into the container: {e}"))?;
    // A prefix that does not exist (yet) allows nothing; one reached through a symlink is compared resolved.
    let allowed: Vec<PathBuf> = settings.mounts.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    judge_mount(&resolved, own_folder, &allowed, &settings.hide).map_err(|refusal| {
        let shown = match Path::new(workdir) == resolved {
            true => workdir.to_string(),
            false => format!("{workdir} (which is {})", resolved.display()),
        };
        refusal.message(&shown)
    })?;
    Ok(resolved)
}

/// Why a resolved working directory may not be mounted into a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MountRefusal {
    /// It is inside, or holds, a folder no job may see.
    Hidden(PathBuf),
    /// It is under no prefix the admin allowed.
    NotAllowed,
}

impl MountRefusal {
    fn message(&self, shown: &str) -> String {
        match self {
            MountRefusal::Hidden(hidden) => format!(
                "the working directory {shown} is or holds {}, which jobs must not see; choose another with --workdir",
                hidden.display()
            ),
            MountRefusal::NotAllowed => format!(
                "the working directory {shown} is not under a host path the agent lets containers mount; an admin can \
                 allow its prefix with `container_mounts` in the agent's configuration, or leave out --workdir to run \
                 the job in a folder of its own"
            ),
        }
    }
}

/// The rule, on resolved paths: the run's own folder always; else not inside or holding a hidden folder, and under
/// an allowed prefix, component by component (`/data/sharedx` is not under `/data/shared`).
pub(crate) fn judge_mount(
    resolved: &Path,
    own_folder: &Path,
    allowed: &[PathBuf],
    hide: &[PathBuf],
) -> Result<(), MountRefusal> {
    if resolved.starts_with(own_folder) {
        return Ok(());
    }
    if let Some(hidden) = hide.iter().find(|h| resolved.starts_with(h) || h.starts_with(resolved)) {
        return Err(MountRefusal::Hidden(hidden.clone()));
    }
    if allowed.iter().any(|prefix| resolved.starts_with(prefix)) {
        return Ok(());
    }
    Err(MountRefusal::NotAllowed)
}

/// Connects to the engine and checks that it answers.
async fn connect(socket: &str) -> Result<Docker, String> {
    let unreachable = |why: String| {
        format!(
            "cannot reach the container engine at {socket}: {why}; start Podman's API service with `podman system \
             service --time=0 unix:///run/podman/podman.sock` (or Docker), or set `container_socket` in the agent's \
             configuration"
        )
    };
    let path = socket.strip_prefix("unix://").unwrap_or(socket);
    if !path.starts_with('/') {
        return Err(unreachable("only unix sockets (unix:///path) are supported".into()));
    }
    let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT_S, &API_VERSION)
        .map_err(|e| unreachable(engine_message(&e)))?;
    docker.version().await.map_err(|e| unreachable(engine_message(&e)))?;
    Ok(docker)
}

/// Makes sure the engine has `image`: never pulls one it has, and tries one pull of one it lacks.
async fn ensure_image(docker: &Docker, image: &str) -> Result<(), String> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => return Err(format!("cannot look up the image {image}: {}", engine_message(&e))),
    }
    let not_here = |why: String| format!("image {image} is not on this node and could not be pulled: {why}");
    let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
    let mut pull = docker.create_image(Some(options), None, None);
    while let Some(item) = pull.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    return Err(not_here(detail.message.unwrap_or_else(|| "the engine gave no reason".into())));
                }
            }
            Err(e) => return Err(not_here(engine_message(&e))),
        }
    }
    match docker.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(e) => Err(not_here(engine_message(&e))),
    }
}

/// Creates the container; one left by an earlier try of the same run (same name) is removed first.
async fn create(docker: &Docker, name: &str, body: ContainerCreateBody) -> Result<(), String> {
    let options = || CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
    let created = match docker.create_container(Some(options()), body.clone()).await {
        // Docker answers 409 for a name in use, Podman 500 with this in the message.
        Err(EngineError::DockerResponseServerError { status_code, message })
            if status_code == 409 || message.contains("already in use") =>
        {
            remove(docker, name).await;
            docker.create_container(Some(options()), body).await
        }
        other => other,
    };
    created.map(|_| ()).map_err(|e| format!("cannot create the container {name}: {}", engine_message(&e)))
}

/// Removes the container, whatever its state; a container already gone is fine.
async fn remove(docker: &Docker, name: &str) {
    let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    match docker.remove_container(name, Some(options)).await {
        Ok(()) | Err(EngineError::DockerResponseServerError { status_code: 404, .. }) => {}
        Err(e) => {
            let _ = writeln!(io::stderr(), "ferry: cannot remove the container {name}: {}", engine_message(&e));
        }
    }
}

/// Copies the container's output, both streams as the engine interleaves them, to this process's own: the shim's
/// pipe into the run's output file.
///
/// A container that ends as its logs are first asked for can make the engine fail the request: Podman answers
/// `read /proc/<pid>/cgroup: no such process`, and, having already said 200, puts its JSON error in the body, where
/// it would read as the job's output. Such a failure is retried: the engine keeps the container's log until the
/// container is removed (after this drains), and the bytes already copied are skipped, so none is lost or doubled.
///
/// Following ends when the container stops, and the engine may end it before it has read the last lines the
/// container wrote (Podman, for a container that writes and exits at once, sends the first line only). So once the
/// followed log ends and the container has stopped, its whole log is read once more, and what following missed is
/// copied.
async fn copy_logs(docker: Docker, name: String) {
    let waiter = docker.with_timeout(Duration::from_secs(u32::MAX as u64));
    // Plain blocking writes: the shim drains the pipe whatever happens, so they never wait long.
    let mut out = Outputs { stdout: io::stdout(), stderr: io::stderr(), copied: 0 };
    let mut failures = 0u32;
    let mut follow = true;
    loop {
        let options = LogsOptions { follow, stdout: true, stderr: true, ..Default::default() };
        match out.copy(waiter.logs(&name, Some(options))).await {
            Copied::WriteFailed => return,
            Copied::Ended if !follow => return,
            Copied::Ended => {
                wait_stopped(&waiter, &name).await;
                follow = false;
            }
            Copied::EngineFailed(failure) => {
                failures += 1;
                if failures > LOG_RETRIES {
                    let _ = writeln!(out.stderr, "ferry: lost the container's output: {failure}");
                    return;
                }
                tokio::time::sleep(LOG_RETRY_WAIT * failures).await;
            }
        }
    }
}

/// Where a container's output goes, and how many of its bytes (both streams together) are already there.
struct Outputs {
    stdout: io::Stdout,
    stderr: io::Stderr,
    copied: u64,
}

/// How one read of a container's log ended.
enum Copied {
    /// The engine sent all it would.
    Ended,
    /// The engine failed the request (as the message says); a new one may succeed.
    EngineFailed(String),
    /// The output could not be written: nobody reads it any more.
    WriteFailed,
}

impl Outputs {
    /// Copies one read of the log, skipping the bytes copied before.
    async fn copy(
        &mut self,
        mut logs: impl futures_util::Stream<Item = Result<bollard::container::LogOutput, EngineError>> + Unpin,
    ) -> Copied {
        let mut skip = self.copied;
        while let Some(item) = logs.next().await {
            let (to_stderr, message) = match item {
                Ok(bollard::container::LogOutput::StdErr { message }) => (true, message),
                Ok(bollard::container::LogOutput::Console { message }) => match engine_error(&message) {
                    Some(failure) => return Copied::EngineFailed(failure),
                    None => (false, message),
                },
                Ok(output) => (false, output.into_bytes()),
                Err(e) => return Copied::EngineFailed(engine_message(&e)),
            };
            let fresh = unseen(&mut skip, &message);
            if fresh.is_empty() {
                continue;
            }
            let written = if to_stderr {
                self.stderr.write_all(fresh).and(self.stderr.flush())
            } else {
                self.stdout.write_all(fresh).and(self.stdout.flush())
            };
            if written.is_err() {
                return Copied::WriteFailed;
            }
            self.copied += fresh.len() as u64;
        }
        Copied::Ended
    }
}

/// Waits, a little, for the container to be stopped (or gone): its log is then complete.
async fn wait_stopped(docker: &Docker, name: &str) {
    for _ in 0..50 {
        let running = docker.inspect_container(name, None).await.ok().and_then(|c| c.state).and_then(|s| s.running);
        if running != Some(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often a failed request for a container's output is made again, and how long the first retry waits (each
/// later one waits that much longer than the one before).
const LOG_RETRIES: u32 = 5;
const LOG_RETRY_WAIT: Duration = Duration::from_millis(200);

/// The part of `message` past the `skip` bytes still to skip (which it takes from `skip`).
fn unseen<'a>(skip: &mut u64, message: &'a [u8]) -> &'a [u8] {
    let skipped = (*skip).min(message.len() as u64) as usize;
    *skip -= skipped as u64;
    &message[skipped..]
}

/// The engine's message where a log frame is an engine's JSON error (`{"cause":..,"message":..,"response":500}`)
/// rather than output. A container runs without a terminal, so its output always comes in stdout or stderr
/// frames; an unframed body is the engine speaking.
fn engine_error(frame: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct EngineFailure {
        message: String,
        response: u16,
    }
    let failure: EngineFailure = serde_json::from_slice(frame.trim_ascii()).ok()?;
    (failure.response >= 400).then(|| format!("{} (HTTP {})", failure.message, failure.response))
}

/// The container's name: `ferry-<job>-<attempt>` (and `-r<rank>` for a gang's other workers, like the run
/// directory) so `podman ps` shows which run a container belongs to, then a hash of the run directory: job ids are
/// only unique per server, and several agents (of several servers) may share one machine and its engine.
pub(crate) fn container_name(spec: &Assignment, run_dir: &Path) -> String {
    let group = crate::shim::cgroup_name(spec.run, run_dir);
    format!("ferry-{}", group.strip_prefix("job-").unwrap_or(&group))
}

/// The hard limits on open files and processes of this process (which the engine's runtime inherits the same of),
/// read with getrlimit; `None` where unlimited or unreadable.
fn host_rlimits() -> Rlimits {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    let hard = |resource| getrlimit(resource).ok().map(|(_, hard)| hard).filter(|hard| *hard != RLIM_INFINITY);
    Rlimits { nofile: hard(Resource::RLIMIT_NOFILE), nproc: hard(Resource::RLIMIT_NPROC) }
}

/// Hard rlimits to pin a container's to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rlimits {
    pub nofile: Option<u64>,
    pub nproc: Option<u64>,
}

/// The container's definition: what to run, with what, where, and within which limits.
pub(crate) fn container_body(
    spec: &Assignment,
    image: &str,
    workdir: &Path,
    settings: &Settings,
    cgroup_parent: Option<&str>,
    rlimits: Rlimits,
) -> ContainerCreateBody {
    let gpus = settings.gpus;
    // The job's variables and those Ferry sets, but none of the node's: the image's own (PATH among them) apply.
    let mut env = crate::shim::job_env(std::iter::empty(), spec);
    // Inside the container its GPUs are numbered from 0, whichever they are on the node.
    let inside: Vec<String> = (0..spec.gpu_ids.len()).map(|i| i.to_string()).collect();
    env.insert("CUDA_VISIBLE_DEVICES".into(), inside.join(",").into());
    env.insert("FERRY_GPU_IDS".into(), spec.gpu_ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",").into());
    // NVIDIA's runtime hook reads this variable (CUDA images set it to `all`): it must never add GPUs the job was
    // not given. With CDI the devices come from the device list, so the hook gets none to add.
    let hook_devices = match gpus {
        ContainerGpus::Nvidia if !spec.gpu_ids.is_empty() => spec.gpu_ids.iter().map(u32::to_string).collect(),
        _ => vec!["void".to_string()],
    };
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), hook_devices.join(",").into());
    let env: Vec<String> =
        env.iter().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).collect();

    let pinned = |name: &str, hard: Option<u64>, fallback: u64| {
        let value = hard.unwrap_or(fallback).min(i64::MAX as u64) as i64;
        ResourcesUlimits { name: Some(name.to_string()), soft: Some(value), hard: Some(value) }
    };
    let (devices, device_requests) = match gpus {
        // GPU passthrough is not tested here: the machines Ferry is developed on have no GPU.
        _ if spec.gpu_ids.is_empty() => (None, None),
        ContainerGpus::Cdi => {
            let devices = spec
                .gpu_ids
                .iter()
                .map(|id| DeviceMapping {
                    path_on_host: Some(format!("nvidia.com/gpu={id}")),
                    path_in_container: Some(String::new()),
                    cgroup_permissions: Some("rwm".into()),
                })
                .collect();
            (Some(devices), None)
        }
        ContainerGpus::Nvidia => {
            let request = DeviceRequest {
                driver: Some("nvidia".into()),
                device_ids: Some(spec.gpu_ids.iter().map(u32::to_string).collect()),
                capabilities: Some(vec![vec!["gpu".into()]]),
                ..Default::default()
            };
            (None, Some(vec![request]))
        }
    };
    // Nested in the run's group, the container is held by the run's memory limit, which covers the whole run (the
    // container, its monitor and this runner) and whose kills the run's group counts, where the container's own
    // group (removed with it) would take its count along. Elsewhere the container gets the limit itself.
    let memory =
        (spec.memory_bytes > 0 && cgroup_parent.is_none()).then(|| spec.memory_bytes.min(i64::MAX as u64) as i64);
    let host_config = HostConfig {
        nano_cpus: (spec.cpu_millis > 0)
            .then(|| (spec.cpu_millis.saturating_mul(1_000_000)).min(i64::MAX as u64) as i64),
        memory,
        // The same as the memory limit: no swap on top of it.
        memory_swap: memory,
        network_mode: Some(settings.network.clone()),
        mounts: Some(mounts(spec, workdir, settings)),
        // No capability but those the admin gives back, and no way to gain privileges (setuid programs of the
        // image do not raise the job's).
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: (!settings.capabilities.is_empty()).then(|| settings.capabilities.clone()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        ulimits: Some(vec![
            pinned("nofile", rlimits.nofile, NOFILE_FALLBACK),
            pinned("nproc", rlimits.nproc.map(|n| n.min(NPROC_MAX)), NPROC_FALLBACK),
        ]),
        devices,
        device_requests,
        cgroup_parent: cgroup_parent.map(str::to_string),
        ..Default::default()
    };
    let labels = HashMap::from([
        ("ferry.job".to_string(), spec.run.job_id.to_string()),
        ("ferry.attempt".to_string(), spec.run.attempt.to_string()),
        ("ferry.rank".to_string(), spec.run.rank.to_string()),
        // Engines that share their storage (Podman's services on one machine) list each other's containers: this
        // tells which service made one, so cleaning up after one service leaves the others' alone.
        ("ferry.engine".to_string(), settings.socket.clone()),
    ]);
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(spec.command.clone()),
        env: Some(env),
        user: settings.user.map(|ids| format!("{}:{}", ids.uid, ids.gid)),
        working_dir: Some(workdir.display().to_string()),
        labels: Some(labels),
        tty: Some(false),
        attach_stdin: Some(false),
        open_stdin: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// The run's control group on cgroup v1, `/ferry/job-...`, which this process was born in; `None` elsewhere (see
/// the module's documentation for why not on v2).
fn run_cgroup() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    run_cgroup_of(&text)
}

/// The run's group from the text of `/proc/self/cgroup`: the path of the v1 memory hierarchy, when it is a run's.
pub(crate) fn run_cgroup_of(proc_cgroup: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let prefix = format!("/{}/job-", crate::cgroup::FERRY_GROUP);
        (controllers.split(',').any(|c| c == "memory") && path.starts_with(&prefix)).then(|| path.to_string())
    })
}

/// How many times the run's v1 memory group reached its limit (`memory.failcnt`).
fn memory_limit_hits(group: &str) -> u64 {
    let dir = Path::new(crate::cgroup::CGROUP_ROOT).join("memory").join(group.trim_start_matches('/'));
    std::fs::read_to_string(dir.join("memory.failcnt")).ok().and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// The engine makes the run's group in every v1 hierarchy to nest the container in it, and a `conmon` group in it
/// for the container's monitor, which it leaves behind; the shim removes the run's groups of the hierarchies it
/// uses itself, and this removes the rest, now empty. A group still in use is left alone (the kernel refuses to
/// remove it).
fn remove_leftover_groups(group: Option<&str>) {
    let Some(group) = group else { return };
    let Ok(entries) = std::fs::read_dir(crate::cgroup::CGROUP_ROOT) else { return };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path().join(group.trim_start_matches('/'));
        let _ = std::fs::remove_dir(path.join("conmon"));
        let _ = std::fs::remove_dir(path);
    }
}

/// An engine error in words: the engine's own message where it sent one.
fn engine_message(e: &EngineError) -> String {
    match e {
        EngineError::DockerResponseServerError { status_code, message } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::agent::RunRef;
    use std::collections::BTreeMap;

    #[test]
    fn an_engine_error_in_the_log_stream_is_told_from_output_and_a_retry_skips_what_was_copied() {
        let podman = br#"{"cause":"no such process","message":"failed to obtain logs for Container 'ferry-1-0-2f093f7f': read /proc/10158/cgroup: no such process","response":500}
"#;
        assert_eq!(
            engine_error(podman).as_deref(),
            Some("failed to obtain logs for Container 'ferry-1-0-2f093f7f': read /proc/10158/cgroup: no such process (HTTP 500)")
        );
        // A job's own JSON output is output.
        assert_eq!(engine_error(br#"{"loss": 0.5}"#), None);
        assert_eq!(engine_error(br#"{"message": "hi", "response": 200}"#), None);
        assert_eq!(engine_error(b"plain text\n"), None);

        // Frames seen again after a retry are skipped up to the bytes already copied, wherever the frames split.
        let mut skip = 5;
        assert_eq!(unseen(&mut skip, b"abc"), b"");
        assert_eq!(unseen(&mut skip, b"defg"), b"fg");
        assert_eq!(skip, 0);
        assert_eq!(unseen(&mut skip, b"hij"), b"hij");
    }

    fn spec() -> Assignment {
        Assignment {
            run: RunRef { job_id: 7, attempt: 2, rank: 1 },
            command: vec!["sh".into(), "-c".into(), "echo \"$X\"; exit 3".into()],
            workdir: "/data/runs/7-2-r1/work".into(),
            code: None,
            env: BTreeMap::from([("X".into(), "a b\nc".into())]),
            secrets: Default::default(),
            owner: String::new(),
            cpu_millis: 1500,
            memory_bytes: 32 << 20,
            gpu_ids: vec![1, 3],
            max_runtime_s: None,
            grace_s: 10,
            image: Some("localhost/busybox:ferry".into()),
        }
    }

    fn settings() -> Settings {
        Settings {
            socket: "unix:///s.sock".into(),
            gpus: ContainerGpus::Cdi,
            user: Some(Ids { uid: 999, gid: 995 }),
            network: "host".into(),
            capabilities: Vec::new(),
            mounts: Vec::new(),
            hide: vec!["/data".into()],
            server_ca: None,
        }
    }

    #[test]
    fn the_default_socket_prefers_the_environment_then_podman_then_docker() {
        let none = |_: &str| None;
        assert_eq!(default_socket(none, |_| false), "unix:///var/run/docker.sock");
        assert_eq!(default_socket(none, |p| p == PODMAN_SOCKET), "unix:///run/podman/podman.sock");
        let env = |name: &str| (name == "DOCKER_HOST").then(|| "unix:///d.sock".to_string());
        assert_eq!(default_socket(env, |_| true), "unix:///d.sock");
        let env = |_: &str| Some("unix:///c.sock".to_string());
        assert_eq!(default_socket(env, |_| true), "unix:///c.sock");
    }

    #[test]
    fn the_container_gets_the_command_env_mount_limits_and_gpus() {
        let rlimits = Rlimits { nofile: Some(20000), nproc: None };
        let cdi = settings();
        let nvidia = Settings { gpus: ContainerGpus::Nvidia, ..cdi.clone() };
        let workdir = Path::new("/data/runs/7-2-r1/work");
        let body = container_body(&spec(), "localhost/busybox:ferry", workdir, &cdi, Some("/ferry/job-x"), rlimits);
        let name = container_name(&spec(), Path::new("/data/runs/7-2-r1"));
        assert!(name.starts_with("ferry-7-2-r1-") && name.len() == "ferry-7-2-r1-".len() + 8, "{name}");
        assert_eq!(body.cmd.as_deref(), Some(&spec().command[..]));
        let env = body.env.clone().unwrap_or_default();
        for expected in ["X=a b\nc", "CUDA_VISIBLE_DEVICES=0,1", "FERRY_GPU_IDS=1,3", "NVIDIA_VISIBLE_DEVICES=void"] {
            assert!(env.iter().any(|e| e == expected), "{expected} in {env:?}");
        }
        assert!(!env.iter().any(|e| e.starts_with("PATH=")), "the node's environment stays out: {env:?}");
        let host = body.host_config.clone().unwrap_or_default();
        assert_eq!(host.nano_cpus, Some(1_500_000_000));
        assert_eq!((host.memory, host.memory_swap), (None, None), "the run's group holds the limit");
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(host.cgroup_parent.as_deref(), Some("/ferry/job-x"));
        let mount = &host.mounts.unwrap_or_default()[0];
        assert_eq!(
            (mount.source.as_deref(), mount.target.as_deref()),
            (Some(&spec().workdir[..]), Some(&spec().workdir[..]))
        );
        let ulimits: Vec<(String, i64)> = host
            .ulimits
            .unwrap_or_default()
            .into_iter()
            .map(|u| (u.name.unwrap_or_default(), u.hard.unwrap_or_default()))
            .collect();
        assert_eq!(ulimits, [("nofile".to_string(), 20000), ("nproc".to_string(), NPROC_FALLBACK as i64)]);
        let rlimits = Rlimits { nofile: None, nproc: Some(96362) };
        let body = container_body(&spec(), "i", workdir, &cdi, None, rlimits);
        let ulimits = body.host_config.and_then(|h| h.ulimits).unwrap_or_default();
        assert_eq!(ulimits[1].hard, Some(NPROC_MAX as i64));
        let devices: Vec<String> =
            host.devices.unwrap_or_default().into_iter().filter_map(|d| d.path_on_host).collect();
        assert_eq!(devices, ["nvidia.com/gpu=1", "nvidia.com/gpu=3"]);
        let labels = body.labels.unwrap_or_default();
        assert_eq!(labels.get("ferry.rank").map(String::as_str), Some("1"));
        assert_eq!(labels.get("ferry.engine").map(String::as_str), Some("unix:///s.sock"));

        let body = container_body(&spec(), "i", workdir, &nvidia, None, rlimits);
        let host = body.host_config.unwrap_or_default();
        assert_eq!((host.memory, host.memory_swap), (Some(32 << 20), Some(32 << 20)));
        assert_eq!(host.devices, None);
        let request = &host.device_requests.unwrap_or_default()[0];
        assert_eq!(request.device_ids.as_deref(), Some(&["1".to_string(), "3".to_string()][..]));
        assert!(body.env.unwrap_or_default().iter().any(|e| e == "NVIDIA_VISIBLE_DEVICES=1,3"));
    }

    #[test]
    fn the_container_runs_unprivileged_without_capabilities_on_the_configured_network() {
        let rlimits = Rlimits { nofile: None, nproc: None };
        let workdir = Path::new("/data/runs/7-2-r1/work");
        let body = container_body(&spec(), "i", workdir, &settings(), None, rlimits);
        let host = body.host_config.unwrap_or_default();
        assert_eq!(body.user.as_deref(), Some("999:995"));
        assert_eq!(body.working_dir.as_deref(), Some("/data/runs/7-2-r1/work"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, None);
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_string()]));

        let weaker = Settings {
            user: None,
            network: "none".into(),
            capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
            ..settings()
        };
        let body = container_body(&spec(), "i", workdir, &weaker, None, rlimits);
        let host = body.host_config.unwrap_or_default();
        assert_eq!(body.user, None, "the image's own user");
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(host.cap_add, Some(vec!["CAP_NET_BIND_SERVICE".to_string()]));
        assert_eq!(host.security_opt, Some(vec!["no-new-privileges".to_string()]));
    }

    #[test]
    fn only_the_agents_own_authority_is_mounted_besides_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        let workdir = dir.path().join("work");
        let sources = |env_ca: &str, server_ca: Option<&Path>| {
            let mut spec = spec();
            spec.env.insert(crate::agent::CA_PATH_VAR.into(), env_ca.into());
            let settings = Settings { server_ca: server_ca.map(Path::to_path_buf), ..settings() };
            let mounts = mounts(&spec, &workdir, &settings);
            mounts.into_iter().map(|m| (m.source.unwrap_or_default(), m.read_only == Some(true))).collect::<Vec<_>>()
        };
        let work = (workdir.display().to_string(), false);
        let ca_mount = (ca.display().to_string(), true);
        assert_eq!(sources(ca.to_str().unwrap(), Some(&ca)), [work.clone(), ca_mount]);
        // A job naming another file in the variable gets nothing mounted for it.
        assert_eq!(sources("/etc/shadow", Some(&ca)), std::slice::from_ref(&work));
        assert_eq!(sources(ca.to_str().unwrap(), None), [work]);
    }

    #[test]
    fn a_working_directory_is_mounted_only_in_the_runs_folder_or_under_an_allowed_prefix() {
        let check = |resolved: &str, expected: Result<(), MountRefusal>| {
            let allowed = [PathBuf::from("/data/shared"), PathBuf::from("/scratch")];
            let hide = [PathBuf::from("/var/lib/ferry"), PathBuf::from("/data/shared/server")];
            let own = Path::new("/var/lib/ferry/runs/7-2");
            assert_eq!(judge_mount(Path::new(resolved), own, &allowed, &hide), expected, "{resolved}");
        };
        let hidden = |path: &str| Err(MountRefusal::Hidden(PathBuf::from(path)));
        let not_allowed = Err(MountRefusal::NotAllowed);
        check("/var/lib/ferry/runs/7-2/work", Ok(()));
        check("/var/lib/ferry/runs/7-2", Ok(()));
        check("/data/shared/team/a", Ok(()));
        check("/scratch", Ok(()));
        check("/scratch/x", Ok(()));
        // Prefixes are whole components, not strings.
        check("/data/sharedx", not_allowed.clone());
        check("/scratch-2/x", not_allowed.clone());
        check("/etc", not_allowed.clone());
        check("/", hidden("/var/lib/ferry"));
        check("/data", hidden("/data/shared/server"));
        check("/opt", not_allowed.clone());
        // Another run's folder, the agent's own files, and a hidden folder under an allowed prefix.
        check("/var/lib/ferry/runs/7-3/work", hidden("/var/lib/ferry"));
        check("/var/lib/ferry/runs", hidden("/var/lib/ferry"));
        check("/data/shared/server/db", hidden("/data/shared/server"));
        check("/data/shared", hidden("/data/shared/server"));
        check("/var/lib", hidden("/var/lib/ferry"));
    }

    #[test]
    fn symlinks_and_dot_dots_are_resolved_before_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let shared = root.join("shared");
        let own = root.join("agent/runs/7-2");
        for folder in [shared.join("team"), root.join("sharedx"), own.join("work"), root.join("agent/runs/7-3")] {
            std::fs::create_dir_all(folder).unwrap();
        }
        std::os::unix::fs::symlink("/etc", shared.join("etc")).unwrap();
        std::os::unix::fs::symlink(shared.join("team"), root.join("team-link")).unwrap();
        std::os::unix::fs::symlink(&shared, root.join("shared-link")).unwrap();
        let settings = Settings {
            mounts: vec![root.join("shared-link"), root.join("missing")],
            hide: vec![root.join("agent")],
            ..settings()
        };
        let check = |workdir: &Path| mount_source(workdir.to_str().unwrap(), &own, &settings);

        assert_eq!(check(&own.join("work")), Ok(own.join("work")));
        assert_eq!(check(&shared.join("team")), Ok(shared.join("team")));
        // Reached through a symlink from outside, the folder is still under the prefix.
        assert_eq!(check(&root.join("team-link")), Ok(shared.join("team")));
        let shown = format!("{} (which is /etc)", shared.join("etc").display());
        let refusal = format!(
            "the working directory {shown} is not under a host path the agent lets containers mount; an admin can \
             allow its prefix with `container_mounts` in the agent's configuration, or leave out --workdir to run \
             the job in a folder of its own"
        );
        assert_eq!(check(&shared.join("etc")), Err(refusal));
        let up = shared.join("team/../../sharedx");
        let error = check(&up).unwrap_err();
        assert!(error.starts_with(&format!("the working directory {} (which is ", up.display())), "{error}");
        assert!(error.contains("is not under a host path"), "{error}");
        let other_run = root.join("agent/runs/7-3");
        let error = check(&other_run).unwrap_err();
        assert!(error.contains("which jobs must not see"), "{error}");
        let error = check(&root.join("nowhere")).unwrap_err();
        assert!(error.contains("cannot be mounted into the container: No such file or directory"), "{error}");
    }

    #[test]
    fn the_run_group_is_found_on_cgroup_v1_only() {
        let v1 = "12:pids:/ferry/job-7-2-abc\n4:memory:/ferry/job-7-2-abc\n0::/ferry/job-7-2-abc\n";
        assert_eq!(run_cgroup_of(v1).as_deref(), Some("/ferry/job-7-2-abc"));
        assert_eq!(run_cgroup_of("0::/ferry/job-7-2-abc\n"), None);
        assert_eq!(run_cgroup_of("4:memory:/user.slice\n"), None);
    }
}
