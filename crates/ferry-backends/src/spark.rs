//! The Spark engine: a Spark standalone master (or YARN, by configuration) that runs Python files and jars.
//!
//! A Ferry job on Spark is a program Spark can submit, `[python, file.py, args...]`, `[file.py, args...]` or
//! `[file.jar, args...]`, turned into one `spark-submit` in client deploy mode (a Python application cannot run in
//! cluster mode on a standalone master), so the driver runs on the Ferry server's machine and the executors on the
//! cluster. Anything else (a shell command, a binary, a container image) is [`EngineError::Unsupported`].
//!
//! Each run has a directory `<work_dir>/<name>/`, the state of record that survives a server restart:
//!
//! - `spec.json`: the job as it was submitted; `spark-submit`: the command line, quoted for reading;
//! - `pid`: the wrapper's pid, its start time in clock ticks (so that a reused pid is not mistaken for it) and the
//!   wall-clock start;
//! - `output.log`: the driver's stdout and stderr;
//! - `exit`: spark-submit's exit status, written by the wrapper when it ends;
//! - `cancelled`: written by [`Engine::cancel`] before it signals, so the end reads as stopped;
//! - `timedout`: written before a run past its `max_runtime_s` is stopped (checked when its state is asked).
//!
//! The wrapper is a fixed `sh -c` script that runs `"$@"` (spark-submit and its arguments, never interpreted) and then
//! records `$?`; it leads its own process group, which cancel signals as a whole (the wrapper, the spark-submit JVM
//! and the Python driver it starts). User input only ever travels in the argument vector and the environment.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_api::agent::RunEnd;
use ferry_api::nodes::Gpu;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::engine::{
    shell_join, shell_quote, valid_env_name, Engine, EngineError, EngineJob, EngineNode, Found, NativeState, Submitted,
};
use crate::{BackendFuture, Capabilities};

const KIND: &str = "spark";

/// The smallest executor Spark starts (it refuses executors under 450 MiB); smaller requests are raised to this.
const MIN_EXECUTOR_MIB: u64 = 512;

/// How long a run directory without a pid may be a submission still starting, rather than one that died starting.
const STARTING_S: u64 = 60;

/// The wrapper: runs spark-submit with its arguments as given, then records its exit status atomically. `$1` is the
/// exit file; the rest is the command. Nothing of the job is ever part of this text.
const WRAPPER: &str = r#"exit_file=$1; shift; "$@"; code=$?; printf '%s\n' "$code" >"$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file""#;

/// How a spark pool reaches its engine: the `[pool.engine]` table of the server's configuration, or the settings of
/// `ferry pool add`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `spark://host:port` for a standalone master (`spark://h1:7077,h2:7077` for one with standbys), or `yarn`.
    pub master: String,
    /// The web UI that reports capacity: the standalone master's (`http://host:8080`, read at `/json/`) or the YARN
    /// ResourceManager's (`http://host:8088`, read at `/ws/v1/cluster/nodes`).
    pub master_ui: String,
    /// The spark-submit to run: a path, or a name looked up on `PATH`.
    #[serde(default = "default_spark_submit")]
    pub spark_submit: String,
    /// The Python the executors (and, unless the job names its own interpreter by path, the driver) run:
    /// `PYSPARK_PYTHON` and `spark.pyspark.python`.
    #[serde(default)]
    pub python: Option<String>,
    /// Where run directories (state, output) are kept, on the Ferry server's machine. Required.
    pub work_dir: PathBuf,
    /// Extra `--conf key=value` for every submission (after Ferry's own, so they win).
    #[serde(default)]
    pub conf: BTreeMap<String, String>,
    /// Extra environment for spark-submit (e.g. `SPARK_LOCAL_IP`, `JAVA_HOME`, `HADOOP_CONF_DIR`); the job's own
    /// environment comes after it.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `--driver-memory` (the driver runs on the Ferry server's machine, outside the pool's capacity).
    #[serde(default = "default_driver_memory")]
    pub driver_memory: String,
    /// Seconds between SIGTERM and SIGKILL when a run is cancelled.
    #[serde(default = "default_grace_s")]
    pub grace_s: u64,
    /// Seconds a capacity request to the web UI may take.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
}

fn default_spark_submit() -> String {
    "spark-submit".into()
}

fn default_driver_memory() -> String {
    "1g".into()
}

fn default_grace_s() -> u64 {
    10
}

fn default_timeout_s() -> u64 {
    10
}

/// Connects to the engine (without contacting it: an engine that is down is reported by its calls, not here).
pub fn connect(config: Config) -> Result<Box<dyn Engine>, String> {
    validate(&config)?;
    std::fs::create_dir_all(&config.work_dir)
        .map_err(|e| format!("spark: work_dir {} cannot be created: {e}", config.work_dir.display()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("spark: an HTTP client: {e}"))?;
    let yarn = config.master == "yarn";
    let ui = config.master_ui.trim_end_matches('/').to_string();
    Ok(Box::new(Spark { config, yarn, ui, http }))
}

fn validate(config: &Config) -> Result<(), String> {
    let master = &config.master;
    if master != "yarn" {
        let hosts = master.strip_prefix("spark://").ok_or_else(|| {
            format!("spark: master must be spark://host:port (a standalone master) or yarn, not {master:?}")
        })?;
        if hosts.is_empty() || hosts.split(',').any(|h| h.is_empty() || h.contains(['/', ' '])) {
            return Err(format!("spark: master {master:?} is not spark://host:port[,host:port...]"));
        }
    }
    let ui = &config.master_ui;
    if !(ui.starts_with("http://") || ui.starts_with("https://")) || ui.len() <= "https://".len() {
        return Err(format!("spark: master_ui must be the web UI's http:// URL (e.g. http://host:8080), not {ui:?}"));
    }
    if config.spark_submit.trim().is_empty() {
        return Err("spark: spark_submit is empty".into());
    }
    if let Some(python) = &config.python {
        if python.trim().is_empty() {
            return Err("spark: python is empty; leave it out to use Spark's default".into());
        }
    }
    if config.work_dir.as_os_str().is_empty() || !config.work_dir.is_absolute() {
        return Err(format!("spark: work_dir must be an absolute path, not {:?}", config.work_dir.display()));
    }
    for key in config.conf.keys() {
        if key.is_empty() || key.contains(['=', ' ', '\n', '\t']) {
            return Err(format!("spark: conf key {key:?} is not a Spark property name"));
        }
    }
    if let Some(name) = config.env.keys().find(|k| !valid_env_name(k)) {
        return Err(format!("spark: env name {name:?} is not a valid environment variable name"));
    }
    if !valid_memory(&config.driver_memory) {
        return Err(format!(
            "spark: driver_memory {:?} is not a JVM memory size such as 512m or 2g",
            config.driver_memory
        ));
    }
    if config.timeout_s == 0 {
        return Err("spark: timeout_s must be at least 1".into());
    }
    Ok(())
}

/// A JVM memory size: digits and an optional unit (`512m`, `2g`, `1024`).
fn valid_memory(size: &str) -> bool {
    let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', 't', 'T']);
    size.len() - digits.len() <= 1 && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a program is a Python interpreter (`python`, `python3`, `/opt/venv/bin/python3.11`, `pypy3`).
fn is_python(program: &str) -> bool {
    let base = program.rsplit('/').next().unwrap_or(program);
    let rest = base.strip_prefix("python").or_else(|| base.strip_prefix("pypy"));
    rest.is_some_and(|r| r.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

fn unsupported(detail: impl std::fmt::Display) -> EngineError {
    EngineError::Unsupported(format!(
        "Spark pools run Python files and jars ([python, file.py, args...], [file.py, args...] or [file.jar, \
         args...]): {detail}"
    ))
}

/// The spark-submit command line for a job, program first: what [`Engine::submit`] runs and shows. Fails with
/// [`EngineError::Unsupported`] for a job Spark cannot run.
pub fn command_line(config: &Config, job: &EngineJob) -> Result<Vec<String>, EngineError> {
    if job.image.is_some() {
        return Err(unsupported("container images are not supported"));
    }
    let (interpreter, rest) = match job.command.split_first() {
        Some((first, rest)) if is_python(first) => (Some(first), rest),
        _ => (None, job.command.as_slice()),
    };
    let Some((program, args)) = rest.split_first() else {
        return Err(unsupported("the command names no file to run"));
    };
    if program.starts_with('-') {
        return Err(unsupported(format!(
            "{program:?} is an option, not a .py or .jar file (options go after the file)"
        )));
    }
    let lower = program.to_ascii_lowercase();
    let python = lower.ends_with(".py");
    if !python && !lower.ends_with(".jar") {
        let what = if interpreter.is_some() { "the interpreter's first argument" } else { "the command" };
        return Err(unsupported(format!("{what} is {program:?}, not a .py or .jar file")));
    }
    if !python && interpreter.is_some() {
        return Err(unsupported(format!("a jar is run without a Python interpreter: [{program}, args...]")));
    }

    // One executor per node Ferry placed the job on, each with the node's share: a gang of N nodes is N executors.
    let cores = job.cpu_millis.div_ceil(1000).max(1);
    let executors = u64::from(job.nodes.max(1));
    let executor_mib = job.memory_bytes.div_ceil(1 << 20).max(MIN_EXECUTOR_MIB);
    let mut line: Vec<String> = vec![config.spark_submit.clone()];
    let mut push = |words: &[&str]| line.extend(words.iter().map(|w| w.to_string()));
    push(&["--master", &config.master, "--name", &job.name, "--deploy-mode", "client"]);
    push(&["--driver-memory", &config.driver_memory, "--executor-memory", &format!("{executor_mib}m")]);
    if config.master == "yarn" {
        push(&["--num-executors", &executors.to_string(), "--executor-cores", &cores.to_string()]);
    } else {
        push(&["--total-executor-cores", &(cores * executors).to_string(), "--executor-cores", &cores.to_string()]);
    }
    let mut conf: Vec<(String, String)> = Vec::new();
    if job.gpus > 0 {
        conf.push(("spark.executor.resource.gpu.amount".into(), job.gpus.to_string()));
    }
    if python {
        if let Some(interpreter) = interpreter.filter(|i| i.contains('/')) {
            conf.push(("spark.pyspark.driver.python".into(), interpreter.clone()));
        }
        if let Some(p) = &config.python {
            conf.push(("spark.pyspark.python".into(), p.clone()));
        }
    }
    conf.extend(config.conf.iter().map(|(k, v)| (k.clone(), v.clone())));
    conf.extend(job.env.iter().map(|(k, v)| (format!("spark.executorEnv.{k}"), v.clone())));
    for (key, value) in conf {
        line.push("--conf".into());
        line.push(format!("{key}={value}"));
    }
    line.push(program.clone());
    line.extend(args.iter().cloned());
    Ok(line)
}

/// The environment spark-submit adds to the server's (the server's own `FERRY_*` variables removed first).
fn added_env(config: &Config, job: &EngineJob) -> BTreeMap<String, String> {
    let mut env = config.env.clone();
    if let Some(p) = &config.python {
        env.insert("PYSPARK_PYTHON".into(), p.clone());
    }
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    // Secrets reach the driver alone, through its environment: on the executors they would have to travel as
    // `spark.executorEnv.*` settings, which spark-submit's command line and Spark's UI show.
    env.extend(job.secrets.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The command line as a reader would rerun it: the directory, the environment and spark-submit, quoted.
/// The submission as `ferry show --native` shows it. The environment's values (tokens, the job's secrets) are not
/// shown: anyone who may see the job sees this text.
fn native_spec(workdir: &Path, env: &BTreeMap<String, String>, line: &[String]) -> String {
    let mut spec = format!("cd {} && ", shell_quote(&workdir.to_string_lossy()));
    if !env.is_empty() {
        let assignments: Vec<String> = env.keys().map(|k| format!("{k}=(hidden)")).collect();
        spec.push_str(&format!("env {} ", assignments.join(" ")));
    }
    spec.push_str(&shell_join(line));
    spec
}

struct Spark {
    config: Config,
    yarn: bool,
    /// `master_ui` without a trailing slash.
    ui: String,
    http: reqwest::Client,
}

/// What the `pid` file holds.
#[derive(Serialize, Deserialize)]
struct PidRecord {
    pid: i32,
    /// The process's start in clock ticks since boot (`/proc/<pid>/stat` field 22), when it could be read.
    start_ticks: Option<u64>,
    started_at_us: i64,
}

fn unavailable(detail: impl Into<String>) -> EngineError {
    EngineError::Unavailable { engine: KIND, detail: detail.into() }
}

fn rejected(detail: impl Into<String>) -> EngineError {
    EngineError::Rejected { engine: KIND, detail: detail.into() }
}

fn now_us() -> i64 {
    micros(SystemTime::now())
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX)).unwrap_or(0)
}

fn mtime_us(path: &Path) -> Option<i64> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok().map(micros)
}

/// A run name that is safe as a directory name: what [`EngineJob::name`] promises, checked again.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The state letter and start time (ticks) of a process, from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything; the fields after its last `)` are plain.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether the recorded process still runs (not a zombie, and not another process that got its pid).
fn alive(record: &PidRecord) -> bool {
    match proc_stat(record.pid) {
        Some((state, start)) => state != 'Z' && state != 'X' && record.start_ticks.is_none_or(|s| s == start),
        None => false,
    }
}

/// The master's `/json/` status (standalone).
#[derive(Deserialize)]
struct MasterStatus {
    #[serde(default)]
    status: String,
    #[serde(default)]
    workers: Vec<WorkerStatus>,
}

#[derive(Deserialize)]
struct WorkerStatus {
    #[serde(default)]
    host: String,
    #[serde(default)]
    port: u32,
    #[serde(default)]
    cores: u64,
    /// MiB.
    #[serde(default)]
    memory: u64,
    #[serde(default)]
    coresused: u64,
    #[serde(default)]
    memoryused: u64,
    #[serde(default)]
    state: String,
    #[serde(default)]
    resources: BTreeMap<String, WorkerResource>,
    #[serde(default)]
    resourcesused: BTreeMap<String, WorkerResource>,
}

#[derive(Deserialize)]
struct WorkerResource {
    #[serde(default)]
    addresses: Vec<String>,
}

/// One Ferry node per worker host: the host's live workers together (a host may run several), or, when none is
/// alive, the host as down. Worker ids change at every worker start; host names do not.
fn standalone_nodes(status: MasterStatus) -> Vec<EngineNode> {
    let mut hosts: BTreeMap<String, Vec<WorkerStatus>> = BTreeMap::new();
    for w in status.workers.into_iter().filter(|w| !w.host.is_empty()) {
        hosts.entry(w.host.clone()).or_default().push(w);
    }
    let mut nodes = Vec::new();
    for (host, workers) in hosts {
        let alive: Vec<&WorkerStatus> = workers.iter().filter(|w| w.state == "ALIVE").collect();
        let counted: Vec<&WorkerStatus> = if alive.is_empty() {
            // The most recent registration stands for the host (the last one listed).
            workers.last().into_iter().collect()
        } else {
            alive
        };
        let up = counted.iter().any(|w| w.state == "ALIVE");
        let state = counted.iter().map(|w| w.state.as_str()).find(|s| *s == "ALIVE").unwrap_or_else(|| {
            counted.first().map(|w| w.state.as_str()).filter(|s| !s.is_empty()).unwrap_or("UNKNOWN")
        });
        let mut gpus = Vec::new();
        let mut gpus_used = 0u32;
        for w in &counted {
            if let Some(gpu) = w.resources.get("gpu") {
                for address in &gpu.addresses {
                    gpus.push(Gpu {
                        index: address.parse().unwrap_or(u32::try_from(gpus.len()).unwrap_or(u32::MAX)),
                        model: format!("spark worker {}:{}", w.host, w.port),
                        memory_bytes: 0,
                        uuid: None,
                        source: "engine".into(),
                    });
                }
            }
            if let Some(used) = w.resourcesused.get("gpu") {
                gpus_used += u32::try_from(used.addresses.len()).unwrap_or(u32::MAX);
            }
        }
        nodes.push(EngineNode {
            name: host,
            cpu_millis: counted.iter().map(|w| w.cores * 1000).sum(),
            memory_bytes: counted.iter().map(|w| w.memory << 20).sum(),
            gpus,
            up,
            state: state.to_string(),
            allocated_cpu_millis: Some(counted.iter().map(|w| w.coresused * 1000).sum()),
            allocated_memory_bytes: Some(counted.iter().map(|w| w.memoryused << 20).sum()),
            allocated_gpus: Some(gpus_used),
        });
    }
    nodes
}

/// The ResourceManager's `/ws/v1/cluster/nodes` (YARN).
#[derive(Deserialize)]
struct YarnNodes {
    nodes: Option<YarnNodeList>,
}

#[derive(Deserialize)]
struct YarnNodeList {
    #[serde(default)]
    node: Vec<YarnNode>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct YarnNode {
    #[serde(default)]
    node_host_name: String,
    #[serde(default)]
    state: String,
    #[serde(default, rename = "availMemoryMB")]
    avail_memory_mb: u64,
    #[serde(default, rename = "usedMemoryMB")]
    used_memory_mb: u64,
    #[serde(default)]
    available_virtual_cores: u64,
    #[serde(default)]
    used_virtual_cores: u64,
}

fn yarn_nodes(nodes: YarnNodes) -> Vec<EngineNode> {
    let list = nodes.nodes.map(|n| n.node).unwrap_or_default();
    list.into_iter()
        .filter(|n| !n.node_host_name.is_empty())
        .map(|n| EngineNode {
            name: n.node_host_name,
            cpu_millis: (n.available_virtual_cores + n.used_virtual_cores) * 1000,
            memory_bytes: (n.avail_memory_mb + n.used_memory_mb) << 20,
            gpus: Vec::new(),
            up: n.state == "RUNNING",
            state: n.state,
            allocated_cpu_millis: Some(n.used_virtual_cores * 1000),
            allocated_memory_bytes: Some(n.used_memory_mb << 20),
            allocated_gpus: None,
        })
        .collect()
}

impl Spark {
    fn run_dir(&self, name: &str) -> PathBuf {
        self.config.work_dir.join(name)
    }

    /// GETs a JSON document from the web UI.
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str, timeout: Duration) -> Result<T, EngineError> {
        let url = format!("{}{path}", self.ui);
        let response =
            self.http.get(&url).timeout(timeout).send().await.map_err(|e| unavailable(format!("{url}: {e}")))?;
        let status = response.status();
        if !status.is_success() {
            return Err(unavailable(format!("{url} answered {status}")));
        }
        response.json().await.map_err(|e| unavailable(format!("{url} answered something that is not its status: {e}")))
    }

    /// Checks the master is up before a submission (2 s), so a submission to a down master fails fast.
    async fn check_up(&self) -> Result<(), EngineError> {
        let timeout = Duration::from_secs(2);
        if self.yarn {
            return self.get::<serde_json::Value>("/ws/v1/cluster/info", timeout).await.map(|_| ());
        }
        let status: MasterStatus = self.get("/json/", timeout).await?;
        if status.status != "ALIVE" {
            return Err(unavailable(format!("the master at {} is {}, not ALIVE", self.config.master, status.status)));
        }
        Ok(())
    }

    async fn list_nodes(&self) -> Result<Vec<EngineNode>, EngineError> {
        let timeout = Duration::from_secs(self.config.timeout_s);
        if self.yarn {
            return Ok(yarn_nodes(self.get("/ws/v1/cluster/nodes", timeout).await?));
        }
        let status: MasterStatus = self.get("/json/", timeout).await?;
        if status.status != "ALIVE" {
            return Err(unavailable(format!("the master at {} is {}, not ALIVE", self.config.master, status.status)));
        }
        Ok(standalone_nodes(status))
    }

    /// The submission of an existing run directory (a resubmission, or a concurrent one still writing it).
    async fn existing(&self, name: &str) -> Submitted {
        let file = self.run_dir(name).join("spark-submit");
        let mut native_spec = String::new();
        for _ in 0..20 {
            if let Ok(spec) = std::fs::read_to_string(&file) {
                native_spec = spec;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if native_spec.is_empty() {
            native_spec = format!("(an earlier submission of {name}; its command line was not recorded)");
        }
        Submitted { native_id: name.to_string(), native_spec }
    }

    async fn submit_run(&self, job: &EngineJob) -> Result<Submitted, EngineError> {
        if !valid_name(&job.name) {
            return Err(rejected(format!("{:?} is not a run name (letters, digits and -)", job.name)));
        }
        let line = command_line(&self.config, job)?;
        let dir = self.run_dir(&job.name);
        if dir.exists() {
            return Ok(self.existing(&job.name).await);
        }
        self.check_up().await?;
        let workdir = if job.workdir.is_empty() { dir.clone() } else { PathBuf::from(&job.workdir) };
        if !job.workdir.is_empty() && !workdir.is_absolute() {
            return Err(rejected(format!("the working directory {:?} is not an absolute path", job.workdir)));
        }
        if !job.workdir.is_empty() && !workdir.is_dir() {
            return Err(rejected(format!(
                "the working directory {:?} does not exist on the Spark driver's machine (the Ferry server)",
                job.workdir
            )));
        }
        let env = added_env(&self.config, job);
        let spec = native_spec(&workdir, &env, &line);

        // The directory's creation is the claim on the name: exactly one submission creates it.
        let created = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&dir)
        };
        match created {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(self.existing(&job.name).await),
            Err(e) => return Err(unavailable(format!("the run directory {}: {e}", dir.display()))),
        }
        match self.start(job, &dir, &workdir, &env, &line, &spec) {
            Ok(()) => Ok(Submitted { native_id: job.name.clone(), native_spec: spec }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Writes the run's record and starts the wrapper, in its own process group.
    fn start(
        &self,
        job: &EngineJob,
        dir: &Path,
        workdir: &Path,
        env: &BTreeMap<String, String>,
        line: &[String],
        spec: &str,
    ) -> Result<(), EngineError> {
        let io = |what: &str, e: std::io::Error| unavailable(format!("{what} in {}: {e}", dir.display()));
        let record = serde_json::json!({
            "name": job.name,
            "job_id": job.job_id,
            "attempt": job.attempt,
            "node": job.node,
            "user": job.user,
            "project": job.project,
            "command": job.command,
            "env": job.env,
            "workdir": workdir,
            "cpu_millis": job.cpu_millis,
            "memory_bytes": job.memory_bytes,
            "gpus": job.gpus,
            "max_runtime_s": job.max_runtime_s,
            "spark_submit": line,
            "submitted_at_us": now_us(),
        });
        // The record holds the job's environment: readable by the server's user only.
        write_private(&dir.join("spec.json"), record.to_string().as_bytes()).map_err(|e| io("spec.json", e))?;
        write_private(&dir.join("spark-submit"), spec.as_bytes()).map_err(|e| io("spark-submit", e))?;
        let log = std::fs::File::create(dir.join("output.log")).map_err(|e| io("output.log", e))?;
        let log_err = log.try_clone().map_err(|e| io("output.log", e))?;

        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(WRAPPER)
            .arg("ferry-spark")
            .arg(dir.join("exit"))
            .args(line)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        // The driver runs on the server's host: of the server's environment (which holds its secrets and tokens) it
        // gets only what spark-submit needs to find Java, Spark and the cluster, then the job's own variables.
        command.env_clear();
        for name in SPARK_ENV_FROM_SERVER {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command.envs(env);
        let started_at_us = now_us();
        let mut child = command.spawn().map_err(|e| unavailable(format!("starting sh for spark-submit: {e}")))?;
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let record = PidRecord { pid, start_ticks: proc_stat(pid).map(|(_, t)| t), started_at_us };
        // Reap the wrapper when it ends; after a server restart, whoever inherits it does.
        let _ = std::thread::Builder::new().name("ferry-spark-reaper".into()).spawn(move || child.wait());
        let json = serde_json::to_string(&record).map_err(|e| unavailable(format!("the pid record: {e}")))?;
        write_atomic(&dir.join("pid"), json.as_bytes()).map_err(|e| io("pid", e))?;
        if dir.join("cancelled").exists() {
            // Cancelled while it was starting (before the pid was there to signal).
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        }
        tracing::info!(run = %job.name, pid, "spark: started spark-submit");
        Ok(())
    }

    fn pid_record(&self, dir: &Path) -> Option<PidRecord> {
        let text = std::fs::read_to_string(dir.join("pid")).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn state(&self, name: &str) -> NativeState {
        if !valid_name(name) {
            return NativeState::Unknown;
        }
        let dir = self.run_dir(name);
        if !dir.is_dir() {
            return NativeState::Unknown;
        }
        let record = self.pid_record(&dir);
        let started_at_us = record.as_ref().map(|r| r.started_at_us);
        let cancelled = dir.join("cancelled").exists();
        let timed_out = !cancelled && dir.join("timedout").exists();
        let stopped_end = if timed_out { RunEnd::TimedOut } else { RunEnd::Stopped };
        let exit_path = dir.join("exit");
        if let Ok(text) = std::fs::read_to_string(&exit_path) {
            let code: Option<i32> = text.trim().parse().ok();
            let finished_at_us = mtime_us(&exit_path).unwrap_or_else(now_us);
            let end = if cancelled || timed_out { stopped_end } else { RunEnd::Exited };
            let message = match code {
                None => Some(format!("the exit file holds {:?}", text.trim())),
                Some(127) => Some("exit 127: a command was not found (spark-submit?); see the output".into()),
                Some(_) => None,
            };
            return NativeState::Finished {
                end,
                exit_code: code,
                signal: None,
                started_at_us,
                finished_at_us,
                message,
            };
        }
        let Some(record) = record else {
            // Claimed and not started yet (or the server died in between): pending for a while, then lost.
            let since = mtime_us(&dir.join("spec.json")).or_else(|| mtime_us(&dir)).unwrap_or(0);
            if !cancelled && now_us().saturating_sub(since) < (STARTING_S * 1_000_000) as i64 {
                return NativeState::Pending { reason: Some("starting spark-submit".into()) };
            }
            return NativeState::Finished {
                end: if cancelled { RunEnd::Stopped } else { RunEnd::FailedToStart },
                exit_code: None,
                signal: None,
                started_at_us: None,
                finished_at_us: since,
                message: Some("spark-submit never started".into()),
            };
        };
        if alive(&record) {
            self.enforce_runtime(name, &dir, &record);
            return NativeState::Running { started_at_us: record.started_at_us };
        }
        let stopped = cancelled || timed_out;
        // Dead without an exit status: killed by a cancel, or by someone else.
        let finished_at_us =
            [mtime_us(&dir.join("output.log")), mtime_us(&dir.join("cancelled")), mtime_us(&dir.join("timedout"))]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(record.started_at_us);
        NativeState::Finished {
            end: if stopped { stopped_end } else { RunEnd::Exited },
            exit_code: None,
            signal: stopped.then_some(Signal::SIGTERM as i32),
            started_at_us: Some(record.started_at_us),
            finished_at_us,
            message: if timed_out {
                Some("stopped at its maximum runtime".to_string())
            } else {
                (!cancelled).then(|| "spark-submit vanished".to_string())
            },
        }
    }

    fn read_output(&self, name: &str, offset: u64, max: usize) -> Result<Vec<u8>, EngineError> {
        if !valid_name(name) {
            return Ok(Vec::new());
        }
        let path = self.run_dir(name).join("output.log");
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(format!("{}: {e}", path.display()))),
        };
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(max as u64).read_to_end(&mut buf))
            .map_err(|e| unavailable(format!("{}: {e}", path.display())))?;
        Ok(buf)
    }

    fn cancel_run(&self, name: &str) -> Result<(), EngineError> {
        if !valid_name(name) {
            return Ok(());
        }
        let dir = self.run_dir(name);
        if !dir.is_dir() || dir.join("exit").exists() {
            return Ok(());
        }
        let Some(record) = self.pid_record(&dir) else {
            // Not started (or never will be): the marker makes it read as stopped once it is found dead.
            let _ = std::fs::write(dir.join("cancelled"), b"");
            return Ok(());
        };
        if !alive(&record) {
            return Ok(());
        }
        std::fs::write(dir.join("cancelled"), now_us().to_string())
            .map_err(|e| unavailable(format!("the cancel marker in {}: {e}", dir.display())))?;
        self.terminate(&record)
            .map_err(|e| unavailable(format!("signalling spark-submit (pid {}): {e}", record.pid)))?;
        tracing::info!(run = %name, pid = record.pid, "spark: cancelled spark-submit");
        Ok(())
    }

    /// SIGTERM to the run's process group now, SIGKILL to what is left of it after the grace period (on a thread
    /// of its own, so nobody waits for it).
    fn terminate(&self, record: &PidRecord) -> Result<(), nix::errno::Errno> {
        let group = Pid::from_raw(record.pid);
        match killpg(group, Signal::SIGTERM) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e),
        }
        let grace = Duration::from_secs(self.config.grace_s);
        let _ = std::thread::Builder::new().name("ferry-spark-kill".into()).spawn(move || {
            std::thread::sleep(grace);
            // The group id stays reserved while any member lives, so this reaches only what is left of the run.
            if killpg(group, None).is_ok() {
                let _ = killpg(group, Signal::SIGKILL);
            }
        });
        Ok(())
    }

    /// Stops a run past its maximum runtime (checked whenever its state is asked, so a limit that passed while the
    /// server was down is enforced when it is back). The `timedout` marker makes its end read as timed out.
    fn enforce_runtime(&self, name: &str, dir: &Path, record: &PidRecord) {
        let marker = dir.join("timedout");
        if marker.exists() || dir.join("cancelled").exists() {
            return;
        }
        let limit = std::fs::read_to_string(dir.join("spec.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|spec| spec.get("max_runtime_s").and_then(serde_json::Value::as_u64));
        let Some(limit) = limit else { return };
        let elapsed_us = now_us().saturating_sub(record.started_at_us);
        if elapsed_us < i64::try_from(limit.saturating_mul(1_000_000)).unwrap_or(i64::MAX) {
            return;
        }
        if let Err(e) = std::fs::write(&marker, now_us().to_string()) {
            tracing::warn!(run = %name, error = %e, "spark: the timeout marker cannot be written");
            return;
        }
        match self.terminate(record) {
            Ok(()) => tracing::info!(run = %name, limit, "spark: stopping a run past its maximum runtime"),
            Err(e) => tracing::warn!(run = %name, error = %e, "spark: stopping a run past its maximum runtime"),
        }
    }

    fn find_runs(&self, prefix: &str) -> Result<Vec<Found>, EngineError> {
        let entries = match std::fs::read_dir(&self.config.work_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(format!("{}: {e}", self.config.work_dir.display()))),
        };
        let mut found: Vec<Found> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|name| name.starts_with(prefix) && valid_name(name))
            .map(|name| Found { native_id: name.clone(), name })
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }
}

/// The variables of the server's environment a Spark driver gets: what spark-submit needs to find Java, Spark,
/// Python and the cluster's configuration. Nothing else of the server's environment reaches a job.
const SPARK_ENV_FROM_SERVER: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "JAVA_HOME",
    "SPARK_HOME",
    "SPARK_CONF_DIR",
    "HADOOP_CONF_DIR",
    "YARN_CONF_DIR",
    "PYSPARK_PYTHON",
    "PYSPARK_DRIVER_PYTHON",
];

/// Writes a file only its owner may read.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(data)
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

impl Engine for Spark {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: false,
            // One executor per node of the gang.
            gangs: true,
            gpus_measured: false,
            native_view: true,
            // The driver runs beside the server and the master places the executors.
            node_pinning: false,
            gpu_pinning: false,
        }
    }

    fn nodes(&self) -> BackendFuture<'_, Result<Vec<EngineNode>, EngineError>> {
        Box::pin(self.list_nodes())
    }

    fn submit<'a>(&'a self, job: &'a EngineJob) -> BackendFuture<'a, Result<Submitted, EngineError>> {
        Box::pin(self.submit_run(job))
    }

    fn find<'a>(&'a self, prefix: &'a str) -> BackendFuture<'a, Result<Vec<Found>, EngineError>> {
        Box::pin(async move { self.find_runs(prefix) })
    }

    fn states<'a>(&'a self, native_ids: &'a [String]) -> BackendFuture<'a, Result<Vec<NativeState>, EngineError>> {
        Box::pin(async move { Ok(native_ids.iter().map(|id| self.state(id)).collect()) })
    }

    fn output<'a>(
        &'a self,
        native_id: &'a str,
        offset: u64,
        max: usize,
    ) -> BackendFuture<'a, Result<Vec<u8>, EngineError>> {
        Box::pin(async move { self.read_output(native_id, offset, max) })
    }

    fn cancel<'a>(&'a self, native_id: &'a str) -> BackendFuture<'a, Result<(), EngineError>> {
        Box::pin(async move { self.cancel_run(native_id) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_status_becomes_one_node_per_host() {
        let status: MasterStatus = serde_json::from_str(
            r#"{"status": "ALIVE", "workers": [
                {"id": "w1", "host": "a", "port": 1, "cores": 2, "memory": 2048, "coresused": 1, "memoryused": 512,
                 "state": "DEAD"},
                {"id": "w2", "host": "a", "port": 2, "cores": 4, "memory": 4096, "coresused": 2, "memoryused": 1024,
                 "state": "ALIVE", "resources": {"gpu": {"name": "gpu", "addresses": ["0", "1"]}},
                 "resourcesused": {"gpu": {"name": "gpu", "addresses": ["1"]}}},
                {"id": "w3", "host": "b", "port": 3, "cores": 8, "memory": 1024, "state": "DEAD"}
            ]}"#,
        )
        .expect("the sample parses");
        let nodes = standalone_nodes(status);
        assert_eq!(nodes.len(), 2);
        assert_eq!((nodes[0].name.as_str(), nodes[0].cpu_millis, nodes[0].memory_bytes), ("a", 4000, 4096 << 20));
        assert!(nodes[0].up && nodes[0].state == "ALIVE");
        assert_eq!(nodes[0].allocated_cpu_millis, Some(2000));
        assert_eq!((nodes[0].gpus.len(), nodes[0].allocated_gpus), (2, Some(1)));
        assert!(!nodes[1].up && nodes[1].state == "DEAD" && nodes[1].cpu_millis == 8000);
    }

    #[test]
    fn yarn_nodes_parse() {
        let nodes: YarnNodes = serde_json::from_str(
            r#"{"nodes": {"node": [{"nodeHostName": "h", "state": "RUNNING", "availMemoryMB": 3072,
                "usedMemoryMB": 1024, "availableVirtualCores": 6, "usedVirtualCores": 2}]}}"#,
        )
        .expect("the sample parses");
        let nodes = yarn_nodes(nodes);
        assert_eq!((nodes[0].cpu_millis, nodes[0].memory_bytes, nodes[0].up), (8000, 4096 << 20, true));
        assert!(yarn_nodes(serde_json::from_str(r#"{"nodes": null}"#).expect("parses")).is_empty());
    }

    #[test]
    fn interpreters_and_sizes() {
        assert!(is_python("python") && is_python("/v/bin/python3.12") && is_python("pypy3"));
        assert!(!is_python("sh") && !is_python("python-config") && !is_python("/usr/bin/pythonx"));
        assert!(valid_memory("512m") && valid_memory("2G") && valid_memory("1024"));
        assert!(!valid_memory("") && !valid_memory("m") && !valid_memory("1gb") && !valid_memory("-1g"));
    }

    #[test]
    fn the_wrapper_records_the_exit_status_and_passes_arguments_intact() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let exit = dir.path().join("exit");
        let out = std::process::Command::new("sh")
            .args(["-c", WRAPPER, "ferry-spark"])
            .arg(&exit)
            .args(["sh", "-c", "printf '%s|' \"$@\"; exit 7", "x", "$(id)", "a'b", "l1\nl2"])
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "$(id)|a'b|l1\nl2|");
        assert_eq!(std::fs::read_to_string(&exit).expect("the exit file").trim(), "7");
    }
}
