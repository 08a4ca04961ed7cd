//! The agent's configuration: what the `ferry agent` command line gives, overlaid with an optional TOML file.
//!
//! This module must never touch the machine (no detection, no files but the one it is asked to read): what is left
//! unset here is detected when the agent starts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry_units::parse_memory;
use serde::Deserialize;

use crate::spool::{SPOOL_BYTES_DEFAULT, SPOOL_BYTES_MIN};
use crate::AgentError;

/// The pool a node joins unless told otherwise.
pub const DEFAULT_POOL: &str = "local";
/// The largest CPU count a configuration may declare; more is surely a typo.
const CPUS_MAX: f64 = 1_000_000.0;

/// Everything the agent needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    /// The server's base URL, such as `http://127.0.0.1:7750`.
    pub server: String,
    /// The bearer token the agent presents to the server.
    pub token: String,
    /// `token` is a cloud machine's single-use join token: the agent trades it for the machine's own token before it
    /// registers, and keeps that one in `NODE_TOKEN_FILE` of its data directory for its restarts.
    pub single_use_token: bool,
    /// The node's name; the hostname unless configured.
    pub name: String,
    pub pool: String,
    /// The address other nodes reach this one at (the workers of a multi-node job connect to rank 0's); the node's
    /// name when unset.
    pub address: Option<String>,
    /// The agent's state: one directory per run under `runs/`, and the lock that keeps a second agent out.
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// GPUs declared in configuration (like Slurm's gres.conf) for devices NVML does not see.
    pub declared_gpus: Vec<DeclaredGpu>,
    /// Where `libnvidia-ml.so` is; `None` searches the default places.
    pub nvml_library: Option<PathBuf>,
    /// The node's CPU capacity in thousandths of a CPU; `None` detects it.
    pub cpu_millis: Option<u64>,
    /// The node's memory capacity; `None` detects it.
    pub memory_bytes: Option<u64>,
    /// The `ferry` binary, which the agent runs as `ferry __shim <run-dir>` to supervise each run.
    pub self_exe: PathBuf,
    /// The most disk the telemetry spool (`<data_dir>/telemetry/`) may take; past it, the oldest samples the server
    /// has not acknowledged are dropped and counted. 64 MiB unless configured (`telemetry_spool_bytes`).
    pub telemetry_spool_bytes: u64,
    /// The container engine's API socket (Podman's Docker-compatible service, or Docker's), as a path or
    /// `unix:///path`, for jobs submitted with an image (`container_socket`). `None`: `$CONTAINER_HOST` or
    /// `$DOCKER_HOST` of the agent's environment when set, else `/run/podman/podman.sock` when it exists, else
    /// `/var/run/docker.sock`; decided when the agent starts.
    pub container_socket: Option<String>,
    /// How a container is given the job's GPUs (`container_gpus`).
    pub container_gpus: ContainerGpus,
    /// Host path prefixes a container's working directory may be under besides the run's own folder
    /// (`container_mounts`); none by default, so a job with an image can mount no other host path.
    pub container_mounts: Vec<PathBuf>,
    /// Whom a container runs as (`container_user`).
    pub container_user: ContainerUser,
    /// Capabilities given back to containers, which otherwise have none (`container_capabilities`), written
    /// `CAP_NAME`.
    pub container_capabilities: Vec<String>,
    /// The network a container joins (`container_network`).
    pub container_network: ContainerNetwork,
    /// Whom the agent trusts for an https:// server: the system's authorities unless given one (`--ca-cert`).
    pub trust: ferry_client::Trust,
    /// The certificate authority the join token pins (`TOKEN#sha256:...`): the agent fetches it from the server,
    /// accepts it only if it has this fingerprint, and then trusts it alone.
    pub ca_pin: Option<ferry_api::tls::CaFingerprint>,
    /// The certificate authority the agent trusts, as a PEM file that jobs' MLflow clients are pointed at
    /// (`MLFLOW_TRACKING_SERVER_CERT_PATH`); set when the agent starts with a private authority.
    pub server_ca_file: Option<PathBuf>,
    /// Folders no job may see besides the agent's data directory (`hide_from_jobs`): the server's data directory
    /// when both run on this machine. `ferry up` adds its own.
    pub hide_from_jobs: Vec<PathBuf>,
    /// The unprivileged account jobs run as when the agent runs as root (`job_user`, default `ferry-job`).
    pub job_user: String,
    /// Ferry users whose jobs run as a Unix account of their own on this node (`[job_users]`, Ferry user name to
    /// account name), when the agent runs as root.
    pub job_users: BTreeMap<String, String>,
    /// Each Ferry user's jobs run as the node's account of the same name, when it has one that is not a system
    /// account (`job_users_by_name`, off by default): for nodes whose accounts come from the directory Ferry's
    /// single sign-on uses.
    pub job_users_by_name: bool,
}

/// How the container engine is asked for GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerGpus {
    /// CDI device names, `nvidia.com/gpu=<index>` (Podman, and Docker 25+ with CDI enabled); needs the NVIDIA
    /// Container Toolkit's CDI specification on the node (`nvidia-ctk cdi generate`).
    #[default]
    Cdi,
    /// A device request for the `nvidia` driver, as `docker run --gpus` makes (Docker with the NVIDIA runtime).
    Nvidia,
}

/// Whom a container's processes run as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerUser {
    /// An unprivileged account whatever the image says: `job_user` under an agent running as root, else the
    /// agent's own user.
    #[default]
    Unprivileged,
    /// The image's own user (often root): weaker, for images that need it. Capabilities stay dropped and
    /// `no-new-privileges` still applies.
    Image,
}

/// The network a container joins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ContainerNetwork {
    /// The node's own network, as jobs without an image have it: a gang's workers reach each other and the job
    /// reaches a server on the node's loopback (`ferry up`).
    #[default]
    Host,
    /// No network but the container's own loopback.
    None,
    /// The engine's default bridge network: its own address and outbound connections, nothing of the node's
    /// loopback.
    Private,
    /// A network of the engine by name.
    Named(String),
}

impl ContainerNetwork {
    /// The network mode the engine's Docker-compatible API takes.
    pub fn engine_mode(&self) -> &str {
        match self {
            ContainerNetwork::Host => "host",
            ContainerNetwork::None => "none",
            // Docker's default network, and Podman's compatible API's name for its own default one.
            ContainerNetwork::Private => "bridge",
            ContainerNetwork::Named(name) => name,
        }
    }
}

/// A GPU declared in the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredGpu {
    /// The device index, as `CUDA_VISIBLE_DEVICES` numbers it.
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
}

/// The account jobs run as under an agent running as root.
pub const DEFAULT_JOB_USER: &str = "ferry-job";

/// The agent configuration file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    name: Option<String>,
    pool: Option<String>,
    address: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    cpus: Option<f64>,
    memory: Option<toml::Value>,
    gpus: Option<Vec<FileGpu>>,
    nvml_library: Option<PathBuf>,
    telemetry_spool_bytes: Option<toml::Value>,
    container_socket: Option<String>,
    container_gpus: Option<ContainerGpus>,
    container_mounts: Option<Vec<PathBuf>>,
    container_user: Option<ContainerUser>,
    container_capabilities: Option<Vec<String>>,
    container_network: Option<String>,
    hide_from_jobs: Option<Vec<PathBuf>>,
    job_user: Option<String>,
    job_users: Option<BTreeMap<String, String>>,
    job_users_by_name: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGpu {
    index: u32,
    model: String,
    memory: toml::Value,
}

impl AgentConfig {
    /// A configuration with every optional setting at its default: named after this host, in the `local` pool,
    /// with resources detected.
    pub fn new(server: &str, token: &str, data_dir: PathBuf, self_exe: PathBuf) -> AgentConfig {
        AgentConfig {
            server: server.to_string(),
            token: token.to_string(),
            name: default_name(),
            pool: DEFAULT_POOL.to_string(),
            address: None,
            data_dir,
            labels: BTreeMap::new(),
            declared_gpus: Vec::new(),
            nvml_library: None,
            cpu_millis: None,
            memory_bytes: None,
            self_exe,
            telemetry_spool_bytes: SPOOL_BYTES_DEFAULT,
            container_socket: None,
            container_gpus: ContainerGpus::default(),
            container_mounts: Vec::new(),
            container_user: ContainerUser::default(),
            container_capabilities: Vec::new(),
            container_network: ContainerNetwork::default(),
            trust: ferry_client::Trust::System,
            ca_pin: None,
            server_ca_file: None,
            hide_from_jobs: Vec::new(),
            single_use_token: false,
            job_user: DEFAULT_JOB_USER.to_string(),
            job_users: BTreeMap::new(),
            job_users_by_name: false,
        }
    }

    /// Overlays the TOML file at `path` on `base`: every setting the file has replaces the one in `base`.
    pub fn from_toml_file(path: &Path, base: AgentConfig) -> Result<AgentConfig, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::Config {
            path: path.to_path_buf(),
            message: format!("cannot read the agent configuration: {e}"),
        })?;
        overlay(&text, base).map_err(|message| AgentError::Config { path: path.to_path_buf(), message })
    }
}

/// The hostname, or `localhost` where the system does not say.
pub fn default_name() -> String {
    sysinfo::System::host_name().filter(|n| !n.is_empty()).unwrap_or_else(|| "localhost".to_string())
}

/// Applies a configuration file's text to `base`; the error names the field at fault.
fn overlay(text: &str, mut config: AgentConfig) -> Result<AgentConfig, String> {
    // toml's own messages carry the line, the column and the offending text; they are kept whole.
    let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    if let Some(name) = file.name {
        config.name = non_empty("name", name)?;
    }
    if let Some(pool) = file.pool {
        config.pool = non_empty("pool", pool)?;
    }
    if let Some(address) = file.address {
        if address.trim().is_empty() || address.contains(char::is_whitespace) || address.contains('/') {
            return Err(format!("`address`: `{address}` is not a host name or IP address; write one such as 10.0.0.5"));
        }
        config.address = Some(address);
    }
    if let Some(labels) = file.labels {
        config.labels = labels;
    }
    if let Some(cpus) = file.cpus {
        if !(cpus.is_finite() && cpus > 0.0 && cpus <= CPUS_MAX) {
            return Err(format!("`cpus`: {cpus} is not a CPU count; write a positive number such as 16 or 7.5"));
        }
        config.cpu_millis = Some((cpus * 1000.0).round() as u64);
    }
    if let Some(memory) = file.memory {
        config.memory_bytes = Some(memory_value("memory", &memory)?);
    }
    if let Some(gpus) = file.gpus {
        config.declared_gpus = declared_gpus(gpus)?;
    }
    if let Some(user) = file.job_user {
        config.job_user = non_empty("job_user", user)?;
    }
    if let Some(users) = file.job_users {
        for (ferry_user, account) in &users {
            if ferry_user.trim().is_empty() || account.trim().is_empty() || account.contains(['/', '\0']) {
                return Err(format!(
                    "`job_users`: `{}` = `{}` does not map a Ferry user to an account name; write entries such as \
                     ana = \"ana\"",
                    ferry_user.escape_debug(),
                    account.escape_debug()
                ));
            }
        }
        config.job_users = users;
    }
    if let Some(by_name) = file.job_users_by_name {
        config.job_users_by_name = by_name;
    }
    if let Some(paths) = file.hide_from_jobs {
        if let Some(bad) = paths.iter().find(|p| !p.is_absolute()) {
            return Err(format!(
                "`hide_from_jobs`: `{}` is not an absolute path; write folders such as \"/var/lib/ferry\"",
                bad.display()
            ));
        }
        config.hide_from_jobs = paths;
    }
    if let Some(library) = file.nvml_library {
        config.nvml_library = Some(library);
    }
    if let Some(spool) = file.telemetry_spool_bytes {
        let bytes = memory_value("telemetry_spool_bytes", &spool)?;
        if bytes < SPOOL_BYTES_MIN {
            return Err(format!(
                "`telemetry_spool_bytes`: {bytes} bytes is too small for the telemetry spool; give at least 1MiB"
            ));
        }
        config.telemetry_spool_bytes = bytes;
    }
    if let Some(socket) = file.container_socket {
        let path = socket.strip_prefix("unix://").unwrap_or(&socket);
        if !path.starts_with('/') {
            return Err(format!(
                "`container_socket`: `{socket}` is not a unix socket; write an absolute path such as \
                 unix:///run/podman/podman.sock"
            ));
        }
        config.container_socket = Some(socket);
    }
    if let Some(gpus) = file.container_gpus {
        config.container_gpus = gpus;
    }
    if let Some(paths) = file.container_mounts {
        config.container_mounts = container_mounts(paths)?;
    }
    if let Some(user) = file.container_user {
        config.container_user = user;
    }
    if let Some(names) = file.container_capabilities {
        config.container_capabilities = names.iter().map(|n| capability(n)).collect::<Result<_, _>>()?;
    }
    if let Some(network) = file.container_network {
        config.container_network = container_network(&network)?;
    }
    Ok(config)
}

/// Host path prefixes containers may mount: absolute, and never the whole file system by accident of a typo.
fn container_mounts(paths: Vec<PathBuf>) -> Result<Vec<PathBuf>, String> {
    for path in &paths {
        if !path.is_absolute() {
            return Err(format!(
                "`container_mounts`: `{}` is not an absolute path; write folders such as \"/data/shared\"",
                path.display()
            ));
        }
    }
    Ok(paths)
}

/// A capability name as the engine takes it, `CAP_NAME`, from `NAME` or `CAP_NAME` in any case.
fn capability(name: &str) -> Result<String, String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare.is_empty() || bare == "ALL" || !bare.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return Err(format!(
            "`container_capabilities`: `{name}` is not a capability; name each one to give back, such as \"NET_BIND_SERVICE\""
        ));
    }
    Ok(format!("CAP_{bare}"))
}

fn container_network(name: &str) -> Result<ContainerNetwork, String> {
    Ok(match name.trim() {
        "host" => ContainerNetwork::Host,
        "none" => ContainerNetwork::None,
        "private" => ContainerNetwork::Private,
        other if !other.is_empty() && other.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
            ContainerNetwork::Named(other.to_string())
        }
        _ => {
            return Err(format!(
                "`container_network`: `{name}` is not a network; write \"host\", \"none\", \"private\" or the name of \
                 one of the engine's networks"
            ))
        }
    })
}

fn declared_gpus(gpus: Vec<FileGpu>) -> Result<Vec<DeclaredGpu>, String> {
    let mut seen = BTreeSet::new();
    let mut declared = Vec::with_capacity(gpus.len());
    for (i, gpu) in gpus.into_iter().enumerate() {
        if !seen.insert(gpu.index) {
            return Err(format!("`gpus[{i}].index`: GPU {} is declared twice", gpu.index));
        }
        let model = non_empty(&format!("gpus[{i}].model"), gpu.model)?;
        let memory_bytes = memory_value(&format!("gpus[{i}].memory"), &gpu.memory)?;
        declared.push(DeclaredGpu { index: gpu.index, model, memory_bytes });
    }
    Ok(declared)
}

/// A memory size written as a string with a unit (`"64GiB"`) or as a plain byte count.
fn memory_value(field: &str, value: &toml::Value) -> Result<u64, String> {
    match value {
        toml::Value::String(text) => parse_memory(text).map_err(|e| format!("`{field}`: {e}")),
        toml::Value::Integer(bytes) if *bytes > 0 => Ok(*bytes as u64),
        other => Err(format!("`{field}`: expected a size such as \"64GiB\", found {other}")),
    }
}

fn non_empty(field: &str, value: String) -> Result<String, String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(format!("`{field}` is empty; give it a value or leave it out"));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> AgentConfig {
        let mut base = AgentConfig::new("http://127.0.0.1:7750", "t", "/var/lib/ferry".into(), "/usr/bin/ferry".into());
        base.name = "host".into();
        base
    }

    fn check_error(text: &str, expected: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        let error = AgentConfig::from_toml_file(&path, base()).unwrap_err().to_string();
        assert_eq!(error, format!("{}: {expected}", path.display()));
    }

    #[test]
    fn a_full_file_overlays_every_setting() {
        let text = r#"
            name = "gpu-07"
            pool = "dgx"
            cpus = 7.5
            memory = "64GiB"
            nvml_library = "/opt/nvidia/libnvidia-ml.so.1"
            telemetry_spool_bytes = "256MiB"
            container_socket = "unix:///run/user/0/podman/podman.sock"
            container_gpus = "nvidia"
            container_mounts = ["/data/shared", "/scratch"]
            container_user = "image"
            container_capabilities = ["net_bind_service", "CAP_SYS_PTRACE"]
            container_network = "none"
            [labels]
            rack = "b2"
            [[gpus]]
            index = 0
            model = "NVIDIA H100 80GB HBM3"
            memory = "80GiB"
            [[gpus]]
            index = 1
            model = "Tenstorrent n300"
            memory = 25769803776
        "#;
        let config = overlay(text, base()).unwrap();
        let expected = AgentConfig {
            name: "gpu-07".into(),
            pool: "dgx".into(),
            labels: BTreeMap::from([("rack".into(), "b2".into())]),
            declared_gpus: vec![
                DeclaredGpu { index: 0, model: "NVIDIA H100 80GB HBM3".into(), memory_bytes: 80 << 30 },
                DeclaredGpu { index: 1, model: "Tenstorrent n300".into(), memory_bytes: 24 << 30 },
            ],
            nvml_library: Some("/opt/nvidia/libnvidia-ml.so.1".into()),
            cpu_millis: Some(7500),
            memory_bytes: Some(64 << 30),
            telemetry_spool_bytes: 256 << 20,
            container_socket: Some("unix:///run/user/0/podman/podman.sock".into()),
            container_gpus: ContainerGpus::Nvidia,
            container_mounts: vec!["/data/shared".into(), "/scratch".into()],
            container_user: ContainerUser::Image,
            container_capabilities: vec!["CAP_NET_BIND_SERVICE".into(), "CAP_SYS_PTRACE".into()],
            container_network: ContainerNetwork::None,
            ..base()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn an_empty_file_changes_nothing() {
        assert_eq!(overlay("", base()).unwrap(), base());
        assert_eq!(overlay("cpus = 16", base()).unwrap().cpu_millis, Some(16_000));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        check_error(
            "memory = \"64XB\"",
            "`memory`: `64XB` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB",
        );
        check_error(
            "telemetry_spool_bytes = \"64KiB\"",
            "`telemetry_spool_bytes`: 65536 bytes is too small for the telemetry spool; give at least 1MiB",
        );
        check_error(
            "container_socket = \"tcp://1.2.3.4:2375\"",
            "`container_socket`: `tcp://1.2.3.4:2375` is not a unix socket; write an absolute path such as \
             unix:///run/podman/podman.sock",
        );
        check_error(
            "container_mounts = [\"data\"]",
            "`container_mounts`: `data` is not an absolute path; write folders such as \"/data/shared\"",
        );
        check_error(
            "container_capabilities = [\"ALL\"]",
            "`container_capabilities`: `ALL` is not a capability; name each one to give back, such as \
             \"NET_BIND_SERVICE\"",
        );
        check_error(
            "container_network = \"my net\"",
            "`container_network`: `my net` is not a network; write \"host\", \"none\", \"private\" or the name of one \
             of the engine's networks",
        );
        check_error(
            "job_users = { ana = \"../x\" }",
            "`job_users`: `ana` = `../x` does not map a Ferry user to an account name; write entries such as ana = \
             \"ana\"",
        );
        let mapped = overlay("job_users = { ana = \"ana-unix\" }\njob_users_by_name = true", base()).unwrap();
        assert_eq!(mapped.job_users.get("ana").map(String::as_str), Some("ana-unix"));
        assert!(mapped.job_users_by_name);
        check_error("cpus = -2", "`cpus`: -2 is not a CPU count; write a positive number such as 16 or 7.5");
        check_error("pool = \"  \"", "`pool` is empty; give it a value or leave it out");
        check_error(
            "[[gpus]]\nindex = 0\nmodel = \"A100\"\nmemory = \"40GiB\"\n[[gpus]]\nindex = 0\nmodel = \"A100\"\nmemory = true",
            "`gpus[1].index`: GPU 0 is declared twice",
        );
        check_error(
            "[[gpus]]\nindex = 0\nmodel = \"A100\"\nmemory = true",
            "`gpus[0].memory`: expected a size such as \"64GiB\", found true",
        );
    }

    #[test]
    fn toml_errors_keep_their_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "name = \"a\"\ncpu = 4\n").unwrap();
        let error = AgentConfig::from_toml_file(&path, base()).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{}: TOML parse error at line 2, column 1", path.display())), "{error}");
        assert!(error.contains("unknown field `cpu`, expected one of"), "{error}");

        std::fs::write(&path, "container_user = \"root\"\n").unwrap();
        let error = AgentConfig::from_toml_file(&path, base()).unwrap_err().to_string();
        assert!(error.contains("unknown variant `root`, expected `unprivileged` or `image`"), "{error}");

        let missing = AgentConfig::from_toml_file(&dir.path().join("nope.toml"), base()).unwrap_err().to_string();
        assert!(missing.contains("nope.toml: cannot read the agent configuration"), "{missing}");
    }
}
