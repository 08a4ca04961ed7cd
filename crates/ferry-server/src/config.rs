//! The server's configuration file (TOML): pools, their order and burst settings, and their prices.
//!
//! ```toml
//! fair_share_half_life = "24h"   # how long past usage weighs in fair share between users
//! gpu_placement = "fgd"           # or "best-fit" (the default): how GPU jobs choose among fitting nodes
//! queue_order = "shortest-first"  # or "fair-share" (the default), "fifo", "least-attained": the order within a
//!                                 # priority; shortest-first uses runtimes predicted from each job's history
//! queue_aging = "1d"              # shortest-first and least-attained: a job waiting this long goes before all
//!                                 # that have not ("off": never); see ferry-core's `order` for the trade
//! queue_lease = "10m"             # least-attained: a job that checkpoints runs this long each start before a job
//!                                 # that had less GPU time may stop it ("off": never stopped for that)
//! queue_levels = ["1h", "10h"]    # least-attained: its levels, in GPU time received (GPU-hours as "1h")
//! reserve_depth = 64              # how many blocked jobs, in queue order, hold back what they need each cycle
//! public_url = "http://ferry.example.org:7750"   # how jobs reach this server (MLFLOW_TRACKING_URI); by default an
//!                                 # agent's job gets the agent's own server address, an engine's the listen address
//! # (top-level keys come before the first table: after [[pool]] they would belong to that pool)
//!
//! [[pool]]
//! name = "local"        # owned capacity: filled first
//! order = 0
//!
//! [[pool]]
//! name = "aws-spot"
//! order = 10
//! burst = true          # used only when the pools before it are full for what a job needs,
//! burst_after = "30m"   # or once the job has waited this long
//! price_gpu_hour = 1.20
//! price_cpu_hour = 0.02
//!
//! [[pool]]
//! name = "hpc"          # an engine: Ferry places jobs on its nodes and submits them there
//! order = 5
//! kind = "slurm"        # or ray, spark; `agent` (the default) for nodes running `ferry agent`
//! poll_interval = "2s"  # how often Ferry asks the engine for states, output and capacity
//! code_dir = "/shared/ferry/code"   # where shipped code is unpacked: a directory the engine's nodes can read
//! [pool.engine]         # the engine's own settings (see each engine's `Config`)
//! rest_url = "http://127.0.0.1:6820"
//! work_dir = "/shared/ferry/runs"
//!
//! [[team]]
//! name = "vision"
//! quota = { gpus = 8, cpus = 128, memory = "1TiB" }   # guaranteed
//! borrow_limit = { gpus = 8 }                          # at most this much more of others' idle quota
//!
//! [[team.project]]                                     # a project's share of its team's quota
//! name = "detection"
//! quota = { gpus = 4 }
//! borrow_limit = { gpus = 2 }                          # from sibling projects' idle quota
//! artifact_quota = "1TiB"                              # instead of [artifacts] quota_per_project
//!
//! [artifacts]           # MLflow artifacts; without this table, under <data_dir>/artifacts
//! url = "s3://ml-artifacts/ferry"     # an S3 bucket and key prefix
//! endpoint = "http://127.0.0.1:9000"  # an S3-compatible store (MinIO, Ceph, ...); AWS when left out
//! region = "us-east-1"
//! allow_http = true                   # needed for a plain-http endpoint
//! max_file_bytes = 5368709120         # the largest artifact file (5 GiB by default)
//! # Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's environment, never from here.
//!
//! quota_per_project = "100GiB"       # artifacts one project may keep (the default; "unlimited" for none)
//!
//! [audit]
//! retention = "365d"    # how long audit log entries are kept (the default)
//!
//! [retention]           # what the server forgets on its own (an hourly sweep, also at start)
//! code = "30d"          # shipped code nobody used for this long (the default)
//! logs = "90d"          # the stored output of jobs finished this long ago (the default; "forever" keeps it)
//! jobs = "400d"         # finished jobs themselves (the default; "forever" keeps them)
//!
//! [secrets]
//! key_file = "/etc/ferry/secrets.key"   # the key sealing stored secrets; <data_dir>/secrets.key by default
//!
//! [oidc]                # single sign-on with an OpenID Connect provider
//! issuer = "https://id.example.org/realms/ml"   # discovery at <issuer>/.well-known/openid-configuration
//! client_id = "ferry"                           # the dashboard's client: authorisation code with PKCE
//! client_secret_env = "FERRY_OIDC_SECRET"       # a confidential client's secret, from this environment variable
//! cli_client_id = "ferry-cli"                   # the CLI's public client (device flow); client_id by default
//! username_claim = "preferred_username"         # the claim that names the Ferry user (the default)
//! groups_claim = "groups"                       # the claim listing the user's groups (the default)
//! create_users = true                           # users unknown to Ferry are created at first sign-in (the default)
//! session_lifetime = "12h"                      # how long a sign-in lasts (the default)
//! recheck = "5m"                                # how often a session is checked again with the provider
//! ```
//!
//! This module parses and checks; it must never touch the store or the scheduler.

use std::collections::BTreeSet;
use std::path::Path;

use ferry_core::{ElasticPool, GpuPlacement, NodeTemplate, PoolInfo, ProjectInfo, Resources, TeamInfo};
use serde::Deserialize;

use crate::convert::{quota_from_record, quota_resources};

/// The most pools one installation may define.
const POOLS_MAX: usize = 256;

#[derive(Clone, Debug, PartialEq)]
pub struct FileConfig {
    pub pools: Vec<PoolConfig>,
    pub teams: Vec<TeamInfo>,
    /// Projects with quotas of their own within their teams.
    pub projects: Vec<ProjectInfo>,
    /// 0 means the core's default.
    pub fair_share_half_life_s: u64,
    pub gpu_placement: GpuPlacement,
    /// How the queue is ordered within a priority.
    pub queue_order: ferry_core::QueueOrder,
    /// How many blocked jobs a cycle reserves for; `None`: the core's default.
    pub reserve_depth: Option<u32>,
    /// Where MLflow artifacts are kept; the data directory by default.
    pub artifacts: crate::artifacts::ArtifactsConfig,
    /// The server's address as jobs reach it, for `MLFLOW_TRACKING_URI`.
    pub public_url: Option<String>,
    /// How often the fleet lists the providers' machines to terminate what no node owns (`cloud_reconcile`).
    pub cloud_reconcile: std::time::Duration,
    /// How long audit log entries are kept.
    pub audit_retention: std::time::Duration,
    /// The most output the server keeps of one run (`[logs] max_bytes_per_run`); past it one line says where it was
    /// cut.
    pub log_bytes_per_run: u64,
    /// How long a shipped code archive nobody submits or fetches is kept (`[retention] code`).
    pub code_retention: std::time::Duration,
    /// How long after a job finished its stored output is kept (`[retention] logs`); `None`: forever.
    pub log_retention: Option<std::time::Duration>,
    /// How long after a job finished the job itself is kept (`[retention] jobs`); `None`: forever.
    pub job_retention: Option<std::time::Duration>,
    /// The artifact quotas the file sets for a team's own artifacts (`team`) or a project's (`team/project`), in
    /// bytes, `None` for unlimited; the others get `[artifacts] quota_per_project`.
    pub artifact_quotas: std::collections::BTreeMap<String, Option<u64>>,
    /// Single sign-on, when configured.
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// The file holding the key that seals stored secrets (`[secrets] key_file`); `None`: the data directory's.
    pub secrets_key_file: Option<std::path::PathBuf>,
}

impl Default for FileConfig {
    fn default() -> FileConfig {
        FileConfig {
            pools: Vec::new(),
            teams: Vec::new(),
            projects: Vec::new(),
            fair_share_half_life_s: 0,
            gpu_placement: GpuPlacement::default(),
            queue_order: Default::default(),
            reserve_depth: None,
            artifacts: Default::default(),
            public_url: None,
            cloud_reconcile: crate::fleet::RECONCILE_DEFAULT,
            audit_retention: crate::audit::RETENTION_DEFAULT,
            log_bytes_per_run: crate::logs::RUN_BYTES_MAX_DEFAULT,
            code_retention: crate::retention::CODE_RETENTION_DEFAULT,
            log_retention: Some(crate::retention::LOG_RETENTION_DEFAULT),
            job_retention: Some(crate::retention::JOB_RETENTION_DEFAULT),
            artifact_quotas: Default::default(),
            oidc: None,
            secrets_key_file: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub info: PoolInfo,
    pub price_gpu_hour: Option<f64>,
    pub price_cpu_hour: Option<f64>,
    /// How Ferry reaches the pool's engine; `None` for a pool of Ferry agents.
    pub engine: Option<EngineConfig>,
    /// Where an elastic pool's machines come from (`info.elastic` holds its lifecycle settings); `None` for a pool of
    /// owned nodes.
    pub cloud: Option<ferry_cloud::registry::CloudPool>,
}

impl PoolConfig {
    /// The pool's kind: `agent`, or its engine's.
    pub fn kind(&self) -> &str {
        self.engine.as_ref().map_or("agent", |e| e.kind.as_str())
    }

    /// What the registry builds the pool's backend from; shipped code for an engine's nodes is unpacked under the
    /// data directory unless the pool sets `code_dir`.
    pub fn spec(&self, data_dir: &Path) -> ferry_backends::registry::PoolSpec {
        let name = self.info.name.clone();
        ferry_backends::registry::PoolSpec {
            kind: self.kind().to_string(),
            settings: self.engine.as_ref().map_or(serde_json::Value::Null, |e| e.settings.clone()),
            poll_interval: self.engine.as_ref().map_or(ENGINE_POLL_DEFAULT, |e| e.poll_interval),
            code_dir: self
                .engine
                .as_ref()
                .and_then(|e| e.code_dir.clone())
                .unwrap_or_else(|| data_dir.join("engines").join(&name)),
            name,
        }
    }
}

/// A pool run by an engine (Slurm, Ray, Spark): its kind, its settings and how Ferry drives it.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    pub kind: String,
    /// The `[pool.engine]` table, as JSON, checked by the engine's own `Config` when the file is read.
    pub settings: serde_json::Value,
    pub poll_interval: std::time::Duration,
    /// Where shipped code is unpacked for the engine's nodes; under the data directory when unset.
    pub code_dir: Option<std::path::PathBuf>,
}

/// How often an engine is polled when the configuration does not say.
pub const ENGINE_POLL_DEFAULT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    pool: Vec<RawPool>,
    #[serde(default)]
    team: Vec<RawTeam>,
    fair_share_half_life: Option<String>,
    /// `best-fit` (the default) or `fgd`.
    #[serde(default)]
    gpu_placement: GpuPlacement,
    /// `fair-share` (the default), `fifo`, `shortest-first` or `least-attained`.
    queue_order: Option<String>,
    /// The aging bound of `shortest-first` and `least-attained`: a duration, or `off`.
    queue_aging: Option<String>,
    /// The lease of `least-attained`: a duration, or `off`.
    queue_lease: Option<String>,
    /// The levels of `least-attained`, in GPU time received written as durations.
    queue_levels: Option<Vec<String>>,
    /// How many blocked jobs a cycle reserves for.
    reserve_depth: Option<i64>,
    /// Where MLflow artifacts are kept (checked by `artifacts::RawArtifacts::check`).
    #[serde(default)]
    artifacts: crate::artifacts::RawArtifacts,
    public_url: Option<String>,
    /// How often elastic pools' machines are listed and matched to nodes: a duration from 1s to 1h.
    cloud_reconcile: Option<String>,
    audit: Option<RawAudit>,
    oidc: Option<crate::oidc::RawOidc>,
    logs: Option<RawLogs>,
    retention: Option<RawRetention>,
    secrets: Option<RawSecrets>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    /// The key sealing stored secrets: 32 bytes or 64 hex digits, mode 0600.
    key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    /// How long a shipped code archive nobody uses is kept (`"30d"`).
    code: Option<String>,
    /// How long the output of a finished job is kept (`"90d"`, or `"forever"`).
    logs: Option<String>,
    /// How long a finished job is kept (`"400d"`, or `"forever"`).
    jobs: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogs {
    /// The most output the server keeps of one run (`"1GiB"`).
    max_bytes_per_run: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    retention: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTeam {
    name: String,
    quota: RawAmount,
    borrow_limit: Option<RawAmount>,
    /// The bytes of artifacts of the team's runs outside its projects (`"100GiB"`, or `"unlimited"`).
    artifact_quota: Option<toml::Value>,
    #[serde(default)]
    project: Vec<RawProject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    name: String,
    quota: RawAmount,
    borrow_limit: Option<RawAmount>,
    /// The bytes of artifacts the project's runs may keep (`"1TiB"`, or `"unlimited"`).
    artifact_quota: Option<toml::Value>,
}

/// An amount of resources; what is left out is unlimited, in a quota and in a borrowing limit (a quota of GPUs alone
/// leaves CPUs and memory to everyone).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmount {
    gpus: Option<u32>,
    cpus: Option<f64>,
    memory: Option<String>,
}

impl RawAmount {
    fn resources(&self, at: &str, missing: Resources) -> Result<Resources, String> {
        let cpu_millis = match self.cpus {
            Some(c) if c.is_finite() && c >= 0.0 => (c * 1000.0).round() as u64,
            Some(c) => return Err(format!("{at}: `cpus` is {c}; write a CPU count of zero or more")),
            None => missing.cpu_millis,
        };
        let memory_bytes = match &self.memory {
            Some(m) => ferry_units::parse_memory(m).map_err(|e| format!("{at}: `memory`: {e}"))?,
            None => missing.memory_bytes,
        };
        Ok(Resources { cpu_millis, memory_bytes, gpus: self.gpus.unwrap_or(missing.gpus) })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    order: i32,
    #[serde(default)]
    burst: bool,
    burst_after: Option<String>,
    price_gpu_hour: Option<f64>,
    price_cpu_hour: Option<f64>,
    kind: Option<String>,
    poll_interval: Option<String>,
    code_dir: Option<String>,
    engine: Option<toml::Table>,
    /// An elastic pool: where its machines come from (checked by `ferry_cloud::registry`), and its lifecycle.
    cloud: Option<toml::Table>,
    max_nodes: Option<i64>,
    startup: Option<String>,
    startup_timeout: Option<String>,
    idle_release: Option<String>,
    retry_after: Option<String>,
    node: Option<RawTemplate>,
}

/// An elastic pool's node, when it should differ from the instance type's whole machine: labels, or less than all of
/// it (to leave room for the system).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    cpus: Option<f64>,
    memory: Option<String>,
    gpus: Option<u32>,
    gpu_model: Option<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

/// The most machines one elastic pool may have at a time.
pub const ELASTIC_NODES_MAX: i64 = 1000;
/// The range a start-up timeout must be in: a real machine takes a minute or more to boot (the floor is low for tests
/// and containers), and waiting more than two hours for one is paying for nothing.
const STARTUP_TIMEOUT_S: (u64, u64) = (10, 2 * 3600);
const STARTUP_TIMEOUT_DEFAULT_S: u64 = 15 * 60;
const STARTUP_DEFAULT_S: u64 = 3 * 60;
const IDLE_RELEASE_S: (u64, u64) = (10, 7 * 86_400);
const IDLE_RELEASE_DEFAULT_S: u64 = 10 * 60;
const RETRY_AFTER_MAX_S: u64 = 86_400;
const RETRY_AFTER_DEFAULT_S: u64 = 10 * 60;

impl RawPool {
    /// Checks one `[[pool]]` table (`at` names it in errors, such as `pool[2]`) into the pool's configuration.
    fn check(mut self, at: &str) -> Result<PoolConfig, String> {
        if self.name.trim().is_empty() || self.name.contains(char::is_whitespace) {
            return Err(format!("{at}: `name` must be a non-empty word, such as local or aws-spot"));
        }
        let at = format!("{at} ({})", self.name);
        let burst_after_s = self
            .burst_after
            .as_deref()
            .map(|t| ferry_units::parse_duration_s(t).map_err(|e| format!("{at}: `burst_after`: {e}")))
            .transpose()?;
        if burst_after_s.is_some() && !self.burst {
            return Err(format!("{at}: `burst_after` applies only to a pool with `burst = true`"));
        }
        for (field, price) in [("price_gpu_hour", self.price_gpu_hour), ("price_cpu_hour", self.price_cpu_hour)] {
            if price.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(format!("{at}: `{field}` must be a price of zero or more, such as 1.20"));
            }
        }
        let elastic = self.elastic(&at)?;
        let engine = self.engine(&at)?;
        if engine.is_some() && self.name.contains('/') {
            return Err(format!("{at}: an engine pool's name must not contain `/`"));
        }
        let (elastic, cloud) = elastic.map_or((None, None), |(e, c)| (Some(e), Some(c)));
        Ok(PoolConfig {
            engine,
            cloud,
            // What the pool's backend can do (`images`, `gangs`) is set when the server builds it.
            info: PoolInfo {
                name: self.name,
                order: self.order,
                burst: self.burst,
                burst_after_s,
                elastic,
                ..PoolInfo::default()
            },
            price_gpu_hour: self.price_gpu_hour,
            price_cpu_hour: self.price_cpu_hour,
        })
    }

    /// The elastic settings and cloud of a pool with a `[pool.cloud]` table; refuses elastic settings without one.
    fn elastic(&mut self, at: &str) -> Result<Option<(ElasticPool, ferry_cloud::registry::CloudPool)>, String> {
        let Some(table) = self.cloud.take() else {
            for (field, set) in [
                ("max_nodes", self.max_nodes.is_some()),
                ("startup", self.startup.is_some()),
                ("startup_timeout", self.startup_timeout.is_some()),
                ("idle_release", self.idle_release.is_some()),
                ("retry_after", self.retry_after.is_some()),
                ("node", self.node.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{at}: `{field}` applies only to an elastic pool: add a [pool.cloud] table saying where its \
                         machines come from (provider, region, zones, instance_type, image)"
                    ));
                }
            }
            return Ok(None);
        };
        if self.kind.as_deref().is_some_and(|k| k != "agent") {
            return Err(format!("{at}: an engine pool cannot have a [pool.cloud] table: its engine owns its nodes"));
        }
        let settings = serde_json::to_value(&table).map_err(|e| format!("{at}: [pool.cloud]: {e}"))?;
        let cloud = ferry_cloud::registry::check(settings).map_err(|e| format!("{at}: {e}"))?;
        let max_nodes = match self.max_nodes {
            Some(n) if (1..=ELASTIC_NODES_MAX).contains(&n) => n as u32,
            Some(n) => {
                return Err(format!(
                "{at}: `max_nodes` is {n}; write how many machines the pool may have at once, 1 to {ELASTIC_NODES_MAX}"
            ))
            }
            None => {
                return Err(format!(
                    "{at}: an elastic pool needs `max_nodes`: how many machines it may have at once, such as 4"
                ))
            }
        };
        let duration = |field: &str, text: &Option<String>, default: u64, (min, max): (u64, u64)| {
            let Some(text) = text else { return Ok(default) };
            let s = ferry_units::parse_duration_s(text).map_err(|e| format!("{at}: `{field}`: {e}"))?;
            if s < min || s > max {
                let (min, max) = (fmt_s(min), fmt_s(max));
                return Err(format!("{at}: `{field}` is {text}; write a duration from {min} to {max}"));
            }
            Ok(s)
        };
        let startup_timeout_s =
            duration("startup_timeout", &self.startup_timeout, STARTUP_TIMEOUT_DEFAULT_S, STARTUP_TIMEOUT_S)?;
        let startup_s =
            duration("startup", &self.startup, STARTUP_DEFAULT_S.min(startup_timeout_s), (0, startup_timeout_s))
                .map_err(|e| format!("{e} (a machine's usual start-up, no longer than `startup_timeout`)"))?;
        let idle_release_s = duration("idle_release", &self.idle_release, IDLE_RELEASE_DEFAULT_S, IDLE_RELEASE_S)?;
        let retry_after_s = duration("retry_after", &self.retry_after, RETRY_AFTER_DEFAULT_S, (0, RETRY_AFTER_MAX_S))?;
        let node = template(at, self.node.take(), &cloud.instance)?;
        let elastic = ElasticPool { node, max_nodes, startup_s, idle_release_s, startup_timeout_s, retry_after_s };
        Ok(Some((elastic, cloud)))
    }

    /// The engine of a pool whose kind is not `agent`, checked by the engine's own settings parser.
    fn engine(&mut self, at: &str) -> Result<Option<EngineConfig>, String> {
        let kind = self.kind.clone().unwrap_or_else(|| "agent".to_string());
        if kind == "agent" {
            for (field, set) in [
                ("engine", self.engine.is_some()),
                ("poll_interval", self.poll_interval.is_some()),
                ("code_dir", self.code_dir.is_some()),
            ] {
                if set {
                    return Err(format!("{at}: `{field}` applies only to an engine pool (kind = \"slurm\", ...)"));
                }
            }
            return Ok(None);
        }
        if !ferry_backends::registry::kinds().contains(&kind.as_str()) {
            let kinds = ferry_backends::registry::kinds().join(", ");
            return Err(format!("{at}: there is no pool kind `{kind}`; this build has {kinds}"));
        }
        let table = self
            .engine
            .take()
            .ok_or_else(|| format!("{at}: a {kind} pool needs a [pool.engine] table saying how to reach the engine"))?;
        let settings = serde_json::to_value(&table).map_err(|e| format!("{at}: [pool.engine]: {e}"))?;
        // Connecting checks the settings without contacting the engine.
        ferry_backends::registry::check(&kind, settings.clone()).map_err(|e| format!("{at}: {e}"))?;
        let poll_interval = match self.poll_interval.as_deref() {
            None => ENGINE_POLL_DEFAULT,
            Some(text) => {
                let d = humantime::parse_duration(text)
                    .map_err(|e| format!("{at}: `poll_interval`: {e}; write a duration such as 2s or 500ms"))?;
                if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(600) {
                    return Err(format!("{at}: `poll_interval` must be between 100ms and 10m"));
                }
                d
            }
        };
        let code_dir = match self.code_dir.take() {
            Some(dir) if !std::path::Path::new(&dir).is_absolute() => {
                return Err(format!("{at}: `code_dir` must be an absolute path; it is `{dir}`"))
            }
            dir => dir.map(std::path::PathBuf::from),
        };
        Ok(Some(EngineConfig { kind, settings, poll_interval, code_dir }))
    }
}

/// The node an elastic pool's machines become: the instance type's whole machine, or less of it as the table says
/// (never more: the template must fit the machine it describes).
fn template(at: &str, raw: Option<RawTemplate>, instance: &ferry_cloud::InstanceType) -> Result<NodeTemplate, String> {
    let whole = Resources { cpu_millis: instance.cpu_millis, memory_bytes: instance.memory_bytes, gpus: instance.gpus };
    let Some(raw) = raw else {
        return Ok(NodeTemplate { capacity: whole, gpu_model: instance.gpu_model.clone(), labels: Default::default() });
    };
    let asked =
        RawAmount { gpus: raw.gpus, cpus: raw.cpus, memory: raw.memory }.resources(&format!("{at} node"), whole)?;
    let name = &instance.name;
    for (field, asked, has) in [
        ("gpus", u64::from(asked.gpus), u64::from(whole.gpus)),
        ("cpus", asked.cpu_millis, whole.cpu_millis),
        ("memory", asked.memory_bytes, whole.memory_bytes),
    ] {
        if asked > has {
            let show = |v: u64| match field {
                "cpus" => ferry_units::format_cpus(v),
                "memory" => ferry_units::format_bytes(v),
                _ => v.to_string(),
            };
            return Err(format!(
                "{at}: node.{field} is {}, more than an instance of {name} has ({}); lower it, or choose a larger \
                 instance_type",
                show(asked),
                show(has)
            ));
        }
    }
    if let Some(model) = &raw.gpu_model {
        if instance.gpu_model.as_deref() != Some(model.as_str()) {
            let has = instance.gpu_model.as_deref().unwrap_or("no GPU");
            return Err(format!(
                "{at}: node.gpu_model is {model}, but {name} has {has}; leave gpu_model out, or match it"
            ));
        }
    }
    Ok(NodeTemplate { capacity: asked, gpu_model: instance.gpu_model.clone(), labels: raw.labels })
}

fn fmt_s(s: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(s)).to_string()
}

/// A pool defined at run time (`ferry pool add`): one `[[pool]]` table, or the same keys at the top level, checked
/// exactly as the configuration file's pools are. Engine pools are refused: their backends start with the server, so
/// they belong in the file.
pub fn runtime_pool(text: &str, public_url: Option<&str>) -> Result<PoolConfig, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapped {
        pool: Vec<RawPool>,
    }
    let raw: RawPool = match toml::from_str::<Wrapped>(text) {
        Ok(mut wrapped) if wrapped.pool.len() == 1 => wrapped.pool.remove(0),
        Ok(wrapped) => {
            return Err(format!("the definition has {} [[pool]] tables; give exactly one", wrapped.pool.len()))
        }
        Err(_) => toml::from_str::<RawPool>(text).map_err(|e| e.to_string().trim_end().to_string())?,
    };
    let pool = raw.check("pool")?;
    if pool.engine.is_some() {
        return Err(format!(
            "pool ({}): an engine pool ({}) is set in the server's configuration file, whose engines start with the \
             server; `ferry pool add` takes pools of agents and elastic pools",
            pool.info.name,
            pool.kind()
        ));
    }
    if pool.cloud.is_some() && public_url.is_none() {
        return Err(format!(
            "pool ({}) is elastic: its machines must reach this server, so set `public_url` in the server's \
             configuration file first",
            pool.info.name
        ));
    }
    Ok(pool)
}

impl FileConfig {
    /// Reads and checks the file; the error names the file and, from toml, the line, column and field.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
        FileConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        if raw.pool.len() > POOLS_MAX {
            return Err(format!("{} pools defined; the limit is {POOLS_MAX}", raw.pool.len()));
        }
        let mut seen = BTreeSet::new();
        let mut pools = Vec::with_capacity(raw.pool.len());
        for (i, p) in raw.pool.into_iter().enumerate() {
            let at = format!("pool[{i}] ({})", p.name);
            if !seen.insert(p.name.clone()) {
                return Err(format!("{at}: the pool `{}` is defined twice", p.name));
            }
            pools.push(p.check(&format!("pool[{i}]"))?);
        }
        let mut teams = Vec::with_capacity(raw.team.len());
        let mut projects = Vec::new();
        let mut artifact_quotas = std::collections::BTreeMap::new();
        let mut names = BTreeSet::new();
        for (i, t) in raw.team.into_iter().enumerate() {
            let at = format!("team[{i}] ({})", t.name);
            if t.name.trim().is_empty() {
                return Err(format!("team[{i}]: `name` must not be empty"));
            }
            if !names.insert(t.name.clone()) {
                return Err(format!("{at}: the team `{}` is defined twice", t.name));
            }
            let quota = t.quota.resources(&format!("{at} quota"), Resources::UNLIMITED)?;
            let borrow_limit = t
                .borrow_limit
                .as_ref()
                .map(|b| b.resources(&format!("{at} borrow_limit"), Resources::UNLIMITED))
                .transpose()?;
            if let Some(value) = &t.artifact_quota {
                artifact_quotas.insert(t.name.clone(), quota_bytes(&format!("{at}: `artifact_quota`"), value)?);
            }
            let mut project_names = BTreeSet::new();
            for (j, p) in t.project.into_iter().enumerate() {
                let at = format!("{at} project[{j}] ({})", p.name);
                if p.name.trim().is_empty() {
                    return Err(format!("{at}: `name` must not be empty"));
                }
                if !project_names.insert(p.name.clone()) {
                    return Err(format!("{at}: the project `{}` is defined twice in team {}", p.name, t.name));
                }
                let project_quota = p.quota.resources(&format!("{at} quota"), quota)?;
                if !project_quota.fits_in(&quota) {
                    return Err(format!(
                        "{at}: the project's quota is larger than its team's; a project's quota is its share of the team's"
                    ));
                }
                let borrow_limit = p
                    .borrow_limit
                    .as_ref()
                    .map(|b| b.resources(&format!("{at} borrow_limit"), Resources::UNLIMITED))
                    .transpose()?;
                if let Some(value) = &p.artifact_quota {
                    let bytes = quota_bytes(&format!("{at}: `artifact_quota`"), value)?;
                    artifact_quotas.insert(format!("{}/{}", t.name, p.name), bytes);
                }
                projects.push(ProjectInfo { team: t.name.clone(), name: p.name, quota: project_quota, borrow_limit });
            }
            teams.push(TeamInfo { name: t.name, quota, borrow_limit });
        }
        let fair_share_half_life_s = raw
            .fair_share_half_life
            .as_deref()
            .map(|t| ferry_units::parse_duration_s(t).map_err(|e| format!("`fair_share_half_life`: {e}")))
            .transpose()?
            .unwrap_or(0);
        let aging_s = match raw.queue_aging.as_deref() {
            None => None,
            Some("off") => Some(0),
            Some(t) => Some(
                ferry_units::parse_duration_s(t).map_err(|e| format!("`queue_aging`: {e}, or \"off\" for no aging"))?,
            ),
        };
        let queue_order = match (raw.queue_order.as_deref(), aging_s) {
            (None, None) => ferry_core::QueueOrder::default(),
            (None, Some(_)) => {
                return Err("`queue_aging` goes with `queue_order = \"shortest-first\"` or \"least-attained\"; \
                     set one, or remove `queue_aging`"
                    .to_string())
            }
            (Some(name), aging) => {
                ferry_core::QueueOrder::configure(name, aging).map_err(|e| format!("`queue_order`: {e}"))?
            }
        };
        let queue_order = least_attained_settings(queue_order, raw.queue_lease.as_deref(), raw.queue_levels)?;
        let reserve_depth = match raw.reserve_depth {
            None => None,
            Some(n) if (1..=i64::from(ferry_core::RESERVE_DEPTH_MAX)).contains(&n) => Some(n as u32),
            Some(n) => {
                return Err(format!(
                    "`reserve_depth` = {n}: how many blocked jobs hold resources back each cycle must be from 1 to {} \
                     (the default is {})",
                    ferry_core::RESERVE_DEPTH_MAX,
                    ferry_core::RESERVE_DEPTH_DEFAULT
                ))
            }
        };
        let artifacts = raw.artifacts.check()?;
        let public_url = match raw.public_url.map(|u| u.trim_end_matches('/').to_string()) {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) => {
                return Err(format!(
                    "`public_url` = `{url}` is not an http(s) address; write one such as \"http://ferry.example.org:7750\""
                ))
            }
            other => other,
        };
        if public_url.is_none() {
            if let Some(pool) = pools.iter().find(|p| p.cloud.is_some()) {
                return Err(format!(
                    "pool {} is elastic: its machines must reach this server, so set `public_url` to the address they \
                     reach it at, such as \"https://ferry.example.org:7750\"",
                    pool.info.name
                ));
            }
        }
        let cloud_reconcile = match raw.cloud_reconcile.as_deref() {
            None => crate::fleet::RECONCILE_DEFAULT,
            Some(text) => {
                let s = ferry_units::parse_duration_s(text).map_err(|e| format!("`cloud_reconcile`: {e}"))?;
                if !(1..=3600).contains(&s) {
                    return Err(format!("`cloud_reconcile` = `{text}`: write a duration from 1s to 1h"));
                }
                std::time::Duration::from_secs(s)
            }
        };
        let audit_retention = match raw.audit.and_then(|a| a.retention) {
            None => crate::audit::RETENTION_DEFAULT,
            Some(text) => at_least_a_day("[audit] `retention`", &text, "entries")?,
        };
        let oidc = raw.oidc.map(|o| o.check()).transpose().map_err(|e| format!("[oidc] {e}"))?;
        let log_bytes_per_run = match raw.logs.and_then(|l| l.max_bytes_per_run) {
            None => crate::logs::RUN_BYTES_MAX_DEFAULT,
            Some(value) => {
                let bytes = size_value("[logs] `max_bytes_per_run`", &value, "1GiB")?;
                if bytes < 1 << 20 {
                    return Err("[logs] `max_bytes_per_run` is under 1 MiB; keep at least \"1MiB\" of a run's output"
                        .to_string());
                }
                bytes
            }
        };
        let retention = raw.retention.unwrap_or_default();
        let code_retention = match retention.code {
            None => crate::retention::CODE_RETENTION_DEFAULT,
            Some(text) => at_least_a_day("[retention] `code`", &text, "archives")?,
        };
        let secrets_key_file = match raw.secrets.and_then(|s| s.key_file) {
            None => None,
            Some(path) if Path::new(&path).is_absolute() => Some(path.into()),
            Some(path) => {
                return Err(format!(
                    "[secrets] `key_file` = \"{}\" is not an absolute path; name the file from the root, such as \
                     \"/etc/ferry/secrets.key\"",
                    path.escape_debug()
                ))
            }
        };
        let log_retention = match retention.logs {
            None => Some(crate::retention::LOG_RETENTION_DEFAULT),
            Some(text) => day_or_forever("[retention] `logs`", &text, "job output")?,
        };
        let job_retention = match retention.jobs {
            None => Some(crate::retention::JOB_RETENTION_DEFAULT),
            Some(text) => day_or_forever("[retention] `jobs`", &text, "finished jobs")?,
        };
        Ok(FileConfig {
            secrets_key_file,
            audit_retention,
            log_bytes_per_run,
            code_retention,
            log_retention,
            job_retention,
            artifact_quotas,
            oidc,
            pools,
            teams,
            projects,
            fair_share_half_life_s,
            gpu_placement: raw.gpu_placement,
            queue_order,
            reserve_depth,
            artifacts,
            public_url,
            cloud_reconcile,
        })
    }
}

/// A retention period of the configuration file (`field`, such as "[audit] `retention`"): a duration of a day or
/// more, for keeping `what`.
fn at_least_a_day(field: &str, text: &str, what: &str) -> Result<std::time::Duration, String> {
    let s = ferry_units::parse_duration_s(text).map_err(|e| format!("{field}: {e}"))?;
    if s < 86_400 {
        return Err(format!("{field} = `{text}` is under a day; keep {what} at least `1d`"));
    }
    Ok(std::time::Duration::from_secs(s))
}

/// A retention period that may also be `"forever"` (`None`).
fn day_or_forever(field: &str, text: &str, what: &str) -> Result<Option<std::time::Duration>, String> {
    if text.trim() == "forever" {
        return Ok(None);
    }
    at_least_a_day(field, text, what).map(Some).map_err(|e| format!("{e}, or \"forever\""))
}

/// A size of the configuration file: a positive integer of bytes or a string such as `"1GiB"`.
pub fn size_value(field: &str, value: &toml::Value, example: &str) -> Result<u64, String> {
    match value {
        toml::Value::Integer(n) if *n > 0 => Ok(*n as u64),
        toml::Value::String(text) => ferry_units::parse_memory(text).map_err(|e| format!("{field} = `{text}`: {e}")),
        other => Err(format!("{field} = {other} is not a size; write one such as \"{example}\"")),
    }
}

/// An artifact quota: a size, or `"unlimited"` (`None`).
pub fn quota_bytes(field: &str, value: &toml::Value) -> Result<Option<u64>, String> {
    if value.as_str().is_some_and(|t| t.trim() == "unlimited") {
        return Ok(None);
    }
    size_value(field, value, "100GiB").map(Some).map_err(|e| format!("{e}, or \"unlimited\""))
}

/// Makes the teams and projects the configuration file declares exist as objects of the installation, so that
/// their members can be added and their jobs submitted to them. Teams made at run time are left alone.
/// The quotas the scheduler runs with: the configuration file's, and for the teams and projects it sets none for,
/// those set through the API (`stored`). What a project's quota leaves out is its team's (as in the file).
pub fn effective_quotas(file: &FileConfig, stored: &[ferry_store::StoredQuota]) -> (Vec<TeamInfo>, Vec<ProjectInfo>) {
    let parsed: Vec<(&ferry_store::StoredQuota, ferry_api::tokens::Quota)> =
        stored.iter().map(|entry| (entry, quota_from_record(&entry.quota))).collect();
    let mut teams = file.teams.clone();
    for (entry, quota) in parsed.iter().filter(|(e, _)| e.project.is_none()) {
        if !teams.iter().any(|t| t.name == entry.team) {
            let borrow_limit = quota.borrow_limit.as_ref().map(quota_resources);
            teams.push(TeamInfo { name: entry.team.clone(), quota: quota_resources(&quota.quota), borrow_limit });
        }
    }
    let mut projects = file.projects.clone();
    for (entry, quota) in &parsed {
        let Some(project) = &entry.project else { continue };
        if projects.iter().any(|p| p.team == entry.team && &p.name == project) {
            continue;
        }
        let team_quota = teams.iter().find(|t| t.name == entry.team).map_or(Resources::UNLIMITED, |t| t.quota);
        projects.push(ProjectInfo {
            team: entry.team.clone(),
            name: project.clone(),
            quota: project_amount(&quota.quota, &team_quota),
            borrow_limit: quota.borrow_limit.as_ref().map(quota_resources),
        });
    }
    (teams, projects)
}

/// A project's quota: what it names, and its team's quota for what it leaves out.
pub fn project_amount(amount: &ferry_api::tokens::QuotaAmount, team: &Resources) -> Resources {
    Resources {
        cpu_millis: amount.cpu_millis.unwrap_or(team.cpu_millis),
        memory_bytes: amount.memory_bytes.unwrap_or(team.memory_bytes),
        gpus: amount.gpus.unwrap_or(team.gpus),
    }
}

/// Whether the configuration file sets the quota of `team` (or of its `project`): then it is managed there.
pub fn quota_in_file(file: &FileConfig, team: &str, project: Option<&str>) -> bool {
    match project {
        None => file.teams.iter().any(|t| t.name == team),
        Some(project) => file.projects.iter().any(|p| p.team == team && p.name == project),
    }
}

pub async fn declare_teams(store: &ferry_store::Store, file: &FileConfig) -> Result<(), ferry_store::StoreError> {
    let now = crate::driver::now_us();
    for team in &file.teams {
        store.create_team(&team.name, Some("the configuration file"), now).await?;
    }
    for project in &file.projects {
        store.create_team(&project.team, Some("the configuration file"), now).await?;
        store.create_project(&project.team, &project.name, Some("the configuration file"), now).await?;
    }
    Ok(())
}

/// Applies `queue_lease` and `queue_levels`, which go with the least-attained order, to `order`.
fn least_attained_settings(
    order: ferry_core::QueueOrder,
    lease: Option<&str>,
    levels: Option<Vec<String>>,
) -> Result<ferry_core::QueueOrder, String> {
    let order = match lease {
        None => order,
        Some(text) => {
            let lease = match text {
                "off" => None,
                t => Some(
                    ferry_units::parse_duration_s(t)
                        .map_err(|e| format!("`queue_lease`: {e}, or \"off\" for no preemption"))?,
                ),
            };
            order.with_lease(lease).map_err(|e| format!("`queue_lease`: {e}"))?
        }
    };
    match levels {
        None => Ok(order),
        Some(texts) => {
            let levels = texts
                .iter()
                .map(|t| ferry_units::parse_duration_s(t).map_err(|e| format!("`queue_levels`: {e}")))
                .collect::<Result<Vec<u64>, String>>()?;
            order.with_levels(levels).map_err(|e| format!("`queue_levels`: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        FileConfig::parse(text).unwrap_err()
    }

    /// An elastic pool on EC2 with `extra` lines in its `[[pool]]` table and `cloud` in its `[pool.cloud]`.
    fn elastic(extra: &str, cloud: &str) -> String {
        format!(
            "public_url = \"http://10.0.0.1:7750\"\n[[pool]]\nname = \"aws\"\norder = 10\nburst = true\nmax_nodes = 4\n{extra}\n\
             [pool.cloud]\nprovider = \"aws\"\nregion = \"us-east-1\"\nzones = [\"us-east-1a\", \"us-east-1b\"]\n\
             instance_type = \"g5.12xlarge\"\nimage = \"ami-12345678\"\n{cloud}\n"
        )
    }

    #[test]
    fn reads_an_elastic_pool_with_its_cloud_and_a_node_from_its_instance_type() {
        let config = FileConfig::parse(&elastic("startup_timeout = \"20m\"\nidle_release = \"5m\"", "")).unwrap();
        let pool = &config.pools[0];
        let e = pool.info.elastic.as_ref().unwrap();
        assert_eq!(
            (e.max_nodes, e.startup_s, e.startup_timeout_s, e.idle_release_s, e.retry_after_s),
            (4, 180, 1200, 300, 600)
        );
        assert_eq!((e.node.capacity.gpus, e.node.gpu_model.as_deref()), (4, Some("A10G")));
        let cloud = pool.cloud.as_ref().unwrap();
        assert_eq!((cloud.instance.name.as_str(), cloud.market()), ("g5.12xlarge", ferry_cloud::Market::OnDemand));
        // A template may take less of the machine than all of it, and adds labels.
        let less = FileConfig::parse(&elastic("node = { gpus = 2, labels = { cloud = \"aws\" } }", "")).unwrap();
        let node = &less.pools[0].info.elastic.as_ref().unwrap().node;
        assert_eq!((node.capacity.gpus, node.labels.get("cloud").map(String::as_str)), (2, Some("aws")));
    }

    #[test]
    fn bad_elastic_pools_are_refused_with_the_field_and_the_fix() {
        let cases = [
            (elastic("node = { gpus = 8 }", ""), "pool[0] (aws): node.gpus is 8, more than an instance of g5.12xlarge has (4)"),
            (elastic("node = { memory = \"1TiB\" }", ""), "pool[0] (aws): node.memory is 1TiB, more than an instance"),
            (elastic("node = { gpu_model = \"H100\" }", ""), "pool[0] (aws): node.gpu_model is H100, but g5.12xlarge has A10G"),
            (elastic("startup_timeout = \"5s\"", ""), "pool[0] (aws): `startup_timeout` is 5s; write a duration from 10s to 2h"),
            (elastic("startup_timeout = \"3h\"", ""), "pool[0] (aws): `startup_timeout` is 3h; write a duration from 10s to 2h"),
            (elastic("startup = \"1h\"\nstartup_timeout = \"10m\"", ""), "pool[0] (aws): `startup` is 1h; write a duration from 0s to 10m"),
            (elastic("", "market = \"spot\""), "pool[0] (aws): [pool.cloud] price_hour: a spot pool needs one"),
            (elastic("", "price_hour = -2.0"), "pool[0] (aws): [pool.cloud] price_hour: -2 is not a price"),
            (elastic("", "provider2 = 1"), "pool[0] (aws): [pool.cloud]: unknown field `provider2`"),
            (
                elastic("", "").replace("\"aws\"\nregion", "\"oracle\"\nregion"),
                "pool[0] (aws): [pool.cloud] provider: provider \"oracle\" is not one this build knows; write one of aws, gcp, azure",
            ),
            (elastic("", "").replace("us-east-1b", "us-west-2b"), "pool[0] (aws): [pool.cloud] zones: zone \"us-west-2b\" is not a zone of"),
            (elastic("", "").replace("g5.12xlarge", "g5.12xl"), "pool[0] (aws): [pool.cloud] instance_type: instance type \"g5.12xl\""),
            (elastic("", "").replace("us-east-1\"\nzones", "us-east-7\"\nzones"), "pool[0] (aws): [pool.cloud] region: region \"us-east-7\""),
            (elastic("", "").replace("max_nodes = 4\n", ""), "pool[0] (aws): an elastic pool needs `max_nodes`"),
            (elastic("", "").replace("max_nodes = 4", "max_nodes = 0"), "pool[0] (aws): `max_nodes` is 0; write how many machines"),
            (
                elastic("", "").replace("public_url = \"http://10.0.0.1:7750\"\n", ""),
                "pool aws is elastic: its machines must reach this server, so set `public_url`",
            ),
            ("[[pool]]\nname = \"a\"\norder = 1\nmax_nodes = 3\n".to_string(), "pool[0] (a): `max_nodes` applies only to an elastic pool: add a [pool.cloud] table"),
        ];
        for (text, expected) in cases {
            let error = error(&text);
            assert!(error.starts_with(expected), "expected {expected:?}, got {error:?}");
        }
    }

    #[test]
    fn reads_the_reserve_depth_and_refuses_one_out_of_range() {
        assert_eq!(FileConfig::parse("").unwrap().reserve_depth, None);
        assert_eq!(FileConfig::parse("reserve_depth = 500\n").unwrap().reserve_depth, Some(500));
        for bad in ["0", "-3", "100001"] {
            let e = error(&format!("reserve_depth = {bad}\n"));
            assert!(e.contains(&format!("`reserve_depth` = {bad}: how many blocked jobs")), "{e}");
            assert!(e.contains("must be from 1 to 100000 (the default is 64)"), "{e}");
        }
        assert!(error("reserve_depth = \"deep\"\n").contains("reserve_depth"));
    }

    #[test]
    fn reads_the_queue_order_and_refuses_wrong_ones_with_the_fix() {
        assert_eq!(FileConfig::parse("").unwrap().queue_order, ferry_core::QueueOrder::FairShare);
        let config = FileConfig::parse("queue_order = \"shortest-first\"\nqueue_aging = \"12h\"\n").unwrap();
        assert_eq!(config.queue_order.aging_s(), Some(12 * 3600));
        let off = FileConfig::parse("queue_order = \"least-attained\"\nqueue_aging = \"off\"\n").unwrap();
        assert_eq!(off.queue_order.aging_s(), None);
        assert_eq!(off.queue_order.lease_s(), Some(ferry_core::order::LEASE_S_DEFAULT));
        let leased = FileConfig::parse("queue_order = \"least-attained\"\nqueue_lease = \"1h\"\n").unwrap();
        assert_eq!(leased.queue_order.lease_s(), Some(3600));
        let unleased = FileConfig::parse("queue_order = \"least-attained\"\nqueue_lease = \"off\"\n").unwrap();
        assert_eq!(unleased.queue_order.lease_s(), None);
        assert!(error("queue_lease = \"1h\"\n").contains("queue order fair-share does not preempt"));
        assert!(error("queue_order = \"least-attained\"\nqueue_lease = \"8d\"\n").contains("write 1s to 7d"));
        assert!(error("queue_order = \"least-attained\"\nqueue_lease = \"later\"\n").contains("`queue_lease`"));
        let levels = FileConfig::parse("queue_order = \"least-attained\"\nqueue_levels = [\"30m\", \"2h\"]\n").unwrap();
        assert_eq!(levels.queue_order.levels_gpu_s(), Some(&[1800, 7200][..]));
        assert!(error("queue_order = \"least-attained\"\nqueue_levels = [\"2h\", \"1h\"]\n").contains("ascend"));
        assert!(error("queue_order = \"fifo\"\nqueue_levels = [\"2h\"]\n").contains("`queue_levels`"));
        assert!(error("queue_order = \"sjf\"\n").contains("`queue_order`: \"sjf\" is not a queue order; write"));
        assert!(error("queue_aging = \"1d\"\n").contains("set one, or remove `queue_aging`"));
        assert!(error("queue_order = \"fifo\"\nqueue_aging = \"1d\"\n").contains("does not age jobs"));
        assert!(error("queue_order = \"shortest-first\"\nqueue_aging = \"soon\"\n").contains("`queue_aging`"));
    }

    #[test]
    fn reads_pools_in_order_with_burst_settings() {
        let config = FileConfig::parse(
            "[[pool]]\nname = \"local\"\norder = 0\n\n[[pool]]\nname = \"cloud\"\norder = 10\nburst = true\n\
             burst_after = \"30m\"\nprice_gpu_hour = 1.2\n",
        )
        .unwrap();
        assert_eq!(config.pools.len(), 2);
        assert_eq!(
            config.pools[1].info,
            PoolInfo { name: "cloud".into(), order: 10, burst: true, burst_after_s: Some(1800), ..PoolInfo::default() }
        );
        assert_eq!(config.pools[1].price_gpu_hour, Some(1.2));
    }

    #[test]
    fn reads_teams_with_quotas_and_borrowing_limits() {
        let config = FileConfig::parse(
            "fair_share_half_life = \"12h\"\n[[team]]\nname = \"vision\"\nquota = { gpus = 8, cpus = 64, memory = \"512GiB\" }\n\
             borrow_limit = { gpus = 4 }\n",
        )
        .unwrap();
        assert_eq!(config.fair_share_half_life_s, 12 * 3600);
        assert_eq!(config.gpu_placement, GpuPlacement::BestFit);
        assert_eq!(FileConfig::parse("gpu_placement = \"fgd\"").unwrap().gpu_placement, GpuPlacement::Fgd);
        assert!(error("gpu_placement = \"random\"").contains("unknown variant `random`"));
        let team = &config.teams[0];
        assert_eq!(team.quota, Resources::new(64_000, 512 << 30, 8));
        assert_eq!(team.borrow_limit.unwrap().gpus, 4);
        assert!(team.borrow_limit.unwrap().cpu_millis > 1 << 40, "what a limit leaves out is unlimited");
        let config = FileConfig::parse(
            "[[team]]\nname = \"v\"\nquota = { gpus = 8 }\n[[team.project]]\nname = \"det\"\nquota = { gpus = 4 }\n",
        )
        .unwrap();
        assert_eq!(config.projects[0].team, "v");
        assert_eq!(config.projects[0].quota.gpus, 4);
        assert_eq!(config.projects[0].borrow_limit, None);
        assert_eq!(
            error("[[team]]\nname = \"v\"\nquota = { gpus = 8 }\n[[team.project]]\nname = \"det\"\nquota = { gpus = 9 }\n"),
            "team[0] (v) project[0] (det): the project's quota is larger than its team's; a project's quota is its share of the team's"
        );
        assert_eq!(
            error("[[team]]\nname = \"v\"\nquota = { gpus = 1, memory = \"lots\" }\n"),
            "team[0] (v) quota: `memory`: `lots` is not a memory size; write a number and a unit, such as 8GiB, 512MiB or 1.5GB"
        );
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(
            error("[[pool]]\nname = \"a\"\nordr = 1\n").contains("unknown field `ordr`"),
            "{}",
            error("[[pool]]\nname = \"a\"\nordr = 1\n")
        );
        assert!(error("[[pool]]\nname = \"a\"\n").contains("missing field `order`"));
        assert_eq!(
            error("[[pool]]\nname = \"a\"\norder = 1\n[[pool]]\nname = \"a\"\norder = 2\n"),
            "pool[1] (a): the pool `a` is defined twice"
        );
        assert_eq!(
            error("[[pool]]\nname = \"a\"\norder = 1\nburst_after = \"5m\"\n"),
            "pool[0] (a): `burst_after` applies only to a pool with `burst = true`"
        );
        assert!(error("[[pool]]\nname = \"a\"\norder = 1\nburst = true\nburst_after = \"soon\"\n")
            .starts_with("pool[0] (a): `burst_after`: `soon` is not a duration"));
        assert_eq!(
            error("[[pool]]\nname = \"a\"\norder = 1\nprice_gpu_hour = -1.0\n"),
            "pool[0] (a): `price_gpu_hour` must be a price of zero or more, such as 1.20"
        );
    }

    #[test]
    fn retention_periods_have_defaults_a_floor_and_forever() {
        let day = |n: u64| std::time::Duration::from_secs(n * 86_400);
        let defaults = FileConfig::parse("").unwrap();
        assert_eq!(
            (defaults.code_retention, defaults.log_retention, defaults.job_retention),
            (day(30), Some(day(90)), Some(day(400)))
        );
        let set = FileConfig::parse("[retention]\nlogs = \"7d\"\njobs = \"forever\"\n").unwrap();
        assert_eq!((set.log_retention, set.job_retention), (Some(day(7)), None));
        assert_eq!(
            error("[retention]\nlogs = \"2h\"\n"),
            "[retention] `logs` = `2h` is under a day; keep job output at least `1d`, or \"forever\""
        );
        assert!(error("[retention]\njobs = \"always\"\n").starts_with("[retention] `jobs`: `always` is not a duration"));
        assert!(error("[retention]\nkeys = \"1d\"\n").contains("unknown field `keys`"));
    }

    #[test]
    fn artifact_quotas_default_per_project_with_overrides() {
        let defaults = FileConfig::parse("").unwrap();
        assert_eq!(defaults.artifacts.quota_per_project_bytes, Some(100 << 30));
        let config = FileConfig::parse(
            "[[team]]\nname = \"v\"\nquota = { gpus = 8 }\nartifact_quota = \"unlimited\"\n\
             [[team.project]]\nname = \"det\"\nquota = { gpus = 4 }\nartifact_quota = \"1TiB\"\n\
             [artifacts]\nquota_per_project = 1000\n",
        )
        .unwrap();
        assert_eq!(config.artifacts.quota_per_project_bytes, Some(1000));
        let expected =
            std::collections::BTreeMap::from([("v".to_string(), None), ("v/det".to_string(), Some(1 << 40))]);
        assert_eq!(config.artifact_quotas, expected);
        assert_eq!(
            FileConfig::parse("[artifacts]\nquota_per_project = \"unlimited\"")
                .unwrap()
                .artifacts
                .quota_per_project_bytes,
            None
        );
        assert_eq!(
            error("[artifacts]\nquota_per_project = \"lots\""),
            "[artifacts]: `quota_per_project` = `lots`: `lots` is not a memory size; write a number and a unit, such as \
             8GiB, 512MiB or 1.5GB, or \"unlimited\""
        );
        assert!(error("[artifacts]\nquota_per_project = -1").contains("is not a size"));
    }

    #[test]
    fn engine_pools_are_checked_when_the_file_is_read() {
        let pool = |body: &str| format!("[[pool]]\nname = \"hpc\"\norder = 1\n{body}");
        assert_eq!(
            error(&pool("kind = \"moon\"\n")),
            format!(
                "pool[0] (hpc): there is no pool kind `moon`; this build has {}",
                ferry_backends::registry::kinds().join(", ")
            )
        );
        assert_eq!(
            error(&pool("kind = \"slurm\"\n")),
            "pool[0] (hpc): a slurm pool needs a [pool.engine] table saying how to reach the engine"
        );
        assert_eq!(
            error(&pool("poll_interval = \"1s\"\n")),
            "pool[0] (hpc): `poll_interval` applies only to an engine pool (kind = \"slurm\", ...)"
        );
        // The engine's own settings are checked by the engine, which names the field.
        let unknown = error(&pool("kind = \"ray\"\n[pool.engine]\nadress = \"http://127.0.0.1:8265\"\n"));
        assert!(unknown.starts_with("pool[0] (hpc): the settings of a ray pool: unknown field `adress`"), "{unknown}");
        let interval = error(&pool(
            "kind = \"ray\"\npoll_interval = \"1ms\"\n[pool.engine]\naddress = \"http://127.0.0.1:8265\"\n",
        ));
        assert_eq!(interval, "pool[0] (hpc): `poll_interval` must be between 100ms and 10m");
        let ok = FileConfig::parse(&pool(
            "kind = \"ray\"\npoll_interval = \"500ms\"\n[pool.engine]\naddress = \"http://127.0.0.1:8265\"\n",
        ))
        .unwrap();
        let engine = ok.pools[0].engine.as_ref().unwrap();
        assert_eq!((engine.kind.as_str(), engine.poll_interval), ("ray", std::time::Duration::from_millis(500)));
    }
}
