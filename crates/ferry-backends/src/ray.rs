//! The Ray engine: runs each Ferry run as one Ray job through the Jobs REST API of the cluster's dashboard (the head
//! node's `--dashboard-port`, e.g. `http://127.0.0.1:8265`). Tested against Ray 2.60.
//!
//! A Ray job is one driver process that Ray starts through a shell; the driver uses Ray itself to spread work over the
//! cluster. So a Ferry run is one submission whose `submission_id` is the run's native name (which makes
//! resubmission idempotent: Ray refuses a second job with the same id, and we return the first one), whose
//! entrypoint is `cd -- <workdir> && export K='v'... && exec <command>` with every word and value quoted by
//! [`shell_quote`] for the `/bin/sh` that Ray runs it with, and whose resources are `entrypoint_num_cpus`,
//! `entrypoint_num_gpus` and `entrypoint_memory`, which Ray holds for the driver's whole life. Ferry's placement is
//! kept with an `entrypoint_label_selector` on the node's `ray.io/node-id`. A gang (`nodes > 1`) is not a Ray job:
//! ask for one node and let Ray distribute the work.
//!
//! The environment is part of the entrypoint, not `runtime_env.env_vars`: Ray expands `$NAME` and `${NAME}` in
//! `env_vars` values (`os.path.expandvars`) and then deletes every `${UPPER_CASE}` left, with no way to escape, so a
//! value like `${HOME}` cannot arrive intact that way. Both are shown alike by Ray's job listing and dashboard.
//!
//! Endpoints used (all JSON):
//! - `POST /api/jobs/`, `GET /api/jobs/{id}`, `GET /api/jobs/` (list), `GET /api/jobs/{id}/logs`,
//!   `POST /api/jobs/{id}/stop`: the Jobs API.
//! - `GET /api/v0/nodes`: the State API's node list (what `ray list nodes` shows: id, IP, state, total resources,
//!   labels). It is the public, stable source of per-node capacity.
//! - `GET /api/cluster_status`: the autoscaler's report (what `ray status` shows); only its `usageByNode` is read, for
//!   the allocation per node, and only on a best-effort basis (a node without it reports no allocation).
//!
//! How Ray's answers map to [`EngineError`]:
//! - no connection, a timeout, a body that is not the JSON we expect: `Unavailable`;
//! - 2xx: success;
//! - 404 on a job's URL: the job does not exist (`Unknown` for states; nothing to do for cancel and output); 404
//!   elsewhere means the address is not a Ray dashboard with the job module: `Unavailable`;
//! - 400, 413, 422 on submission: `Rejected` (Ray's head validates the request and answers 400 to a `TypeError` or
//!   `ValueError`);
//! - 500 on submission: Ray's head forwards the job agent's exceptions as 500 with the traceback as text. "already
//!   exists" means the run was submitted before (we return it); a `ValueError`/`TypeError` in the traceback is the
//!   agent validating the request: `Rejected`; anything else (e.g. "No available agent to submit job, please try
//!   again later") is the head being unhealthy: `Unavailable`;
//! - any other 5xx, 401, 403 (the token), 408, 429: `Unavailable`; any other 4xx: `Rejected` for submission,
//!   `Unavailable` elsewhere.
//!
//! Ray itself accepts almost any well-formed job and leaves it pending until it fits (then fails it after
//! `RAY_JOB_START_TIMEOUT_SECONDS`, 15 minutes by default). So that an impossible job is refused at once, as on other
//! engines, submission first checks the job against the node it was placed on (or the largest node when there is no
//! placement): a job that asks more CPUs, memory or GPUs than the node has, or names a node the cluster does not have,
//! is `Rejected`. (A cluster with an autoscaler may grow; Ferry only places on nodes it has seen, so that is fine.)
//!
//! Not expressed: `max_runtime_s` (Ray jobs have no runtime limit; whoever drives the engine cancels a run that
//! overstays, which Ray reports as STOPPED) and `image` (refused as unsupported: Ray's container runtime
//! environments need podman on every node and are experimental).
//!
//! Only `http://` addresses are supported (the workspace builds reqwest without TLS).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::agent::RunEnd;
use ferry_api::nodes::Gpu;
use serde_json::{json, Value};

use crate::engine::{
    shell_join, shell_quote, valid_env_name, Engine, EngineError, EngineJob, EngineNode, Found, NativeState, Submitted,
};
use crate::{BackendFuture, Capabilities};

const ENGINE: &str = "ray";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Past this many ids, `states` lists every job once instead of asking for each.
const LIST_ALL_ABOVE: usize = 16;
/// Ray's messages can hold 20,000 characters of log tail; a state keeps the start of the first line.
const MESSAGE_MAX: usize = 300;
/// Ray's label that names a node; its entrypoint label selector pins the driver there.
const NODE_ID_LABEL: &str = "ray.io/node-id";
const ACCELERATOR_LABEL: &str = "ray.io/accelerator-type";

/// How a ray pool reaches its engine: the `[pool.engine]` table of the server's configuration, or the settings of
/// `ferry pool add`.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Ray dashboard's address, where the Jobs REST API answers: `http://HOST:8265`.
    pub address: String,
    /// The cluster's token, where Ray's token authentication is on (`RAY_AUTH_MODE=token`): sent as
    /// `Authorization: Bearer`.
    #[serde(default)]
    pub token: Option<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|_| "(set)");
        f.debug_struct("Config").field("address", &self.address).field("token", &token).finish()
    }
}

/// Connects to the engine (without contacting it: an engine that is down is reported by its calls, not here).
pub fn connect(config: Config) -> Result<Box<dyn Engine>, String> {
    let base = config.address.trim().trim_end_matches('/').to_string();
    let Some(rest) = base.strip_prefix("http://") else {
        return Err(format!(
            "the ray address must start with http:// (the dashboard, e.g. http://127.0.0.1:8265): {base}"
        ));
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!("the ray address must be http://HOST:PORT, without a path: {base}"));
    }
    let http = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| format!("cannot build an HTTP client for ray: {e}"))?;
    Ok(Box::new(RayEngine { base, token: config.token.filter(|t| !t.is_empty()), http }))
}

struct RayEngine {
    /// `http://host:port`, without a trailing slash.
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

fn unavailable(detail: impl Into<String>) -> EngineError {
    EngineError::Unavailable { engine: ENGINE, detail: detail.into() }
}

fn rejected(detail: impl Into<String>) -> EngineError {
    EngineError::Rejected { engine: ENGINE, detail: detail.into() }
}

/// An HTTP answer: its status and its body.
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON; garbage means the engine is not well.
    fn json(&self, what: &str) -> Result<Value, EngineError> {
        serde_json::from_str(&self.body).map_err(|e| unavailable(format!("{what}: the answer is not JSON ({e})")))
    }

    /// An unexpected status on a call other than submission: the engine is not well.
    fn unexpected(&self, what: &str) -> EngineError {
        unavailable(format!("{what}: HTTP {}: {}", self.status, brief(&self.body)))
    }
}

/// The last meaningful line of an error body (Ray sends Python tracebacks, whose last line says what happened),
/// shortened.
fn brief(body: &str) -> String {
    let line = body.lines().rev().map(str::trim).find(|l| !l.is_empty() && *l != ".").unwrap_or("(empty body)");
    shorten(line)
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// A job's URL: submission ids are Ferry's native names (letters, digits, `-`), but ids come back from the engine
/// and the bridge, so anything else is escaped.
fn job_url(base: &str, id: &str, suffix: &str) -> String {
    let mut escaped = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            escaped.push(b as char);
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{base}/api/jobs/{escaped}{suffix}")
}

impl RayEngine {
    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> Result<Answer, EngineError> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| unavailable(format!("{what}: {} ({e})", self.base)))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|e| unavailable(format!("{what}: reading the answer: {e}")))?;
        Ok(Answer { status, body })
    }

    async fn get(&self, what: &str, url: String) -> Result<Answer, EngineError> {
        self.send(what, self.http.get(url)).await
    }

    /// A job's details, or `None` when Ray does not know it.
    async fn job(&self, id: &str) -> Result<Option<Value>, EngineError> {
        let answer = self.get("job state", job_url(&self.base, id, "")).await?;
        match answer.status {
            404 => Ok(None),
            _ if answer.ok() => answer.json("job state").map(Some),
            _ => Err(answer.unexpected("job state")),
        }
    }

    /// Every job Ray keeps (submitted ones and drivers started by hand).
    async fn all_jobs(&self) -> Result<Vec<Value>, EngineError> {
        let answer = self.get("job list", format!("{}/api/jobs/", self.base)).await?;
        if !answer.ok() {
            return Err(answer.unexpected("job list"));
        }
        match answer.json("job list")? {
            Value::Array(jobs) => Ok(jobs),
            other => Err(unavailable(format!("job list: expected an array, got {}", shorten(&other.to_string())))),
        }
    }

    /// The cluster's nodes as the State API lists them, with the allocation from the autoscaler's report where it
    /// has one.
    async fn list_nodes(&self) -> Result<Vec<RayNode>, EngineError> {
        let nodes_url = format!("{}/api/v0/nodes?limit=10000&timeout=8", self.base);
        let status_url = format!("{}/api/cluster_status", self.base);
        let (nodes, status) = tokio::join!(self.get("node list", nodes_url), self.get("cluster status", status_url));
        let nodes = nodes?;
        if !nodes.ok() {
            return Err(nodes.unexpected("node list"));
        }
        let nodes = nodes.json("node list")?;
        let Some(list) = nodes["data"]["result"]["result"].as_array() else {
            return Err(unavailable(format!("node list: no data.result.result in {}", shorten(&nodes.to_string()))));
        };
        // The allocation is a bonus: without it the nodes are still right.
        let usage = match status {
            Ok(answer) if answer.ok() => answer.json("cluster status").ok(),
            _ => None,
        };
        let usage_by_node = usage.as_ref().map(|u| &u["data"]["clusterStatus"]["loadMetricsReport"]["usageByNode"]);
        Ok(parse_nodes(list, usage_by_node))
    }

    async fn submit_job(&self, job: &EngineJob) -> Result<Submitted, EngineError> {
        if job.nodes > 1 {
            return Err(EngineError::Unsupported(format!(
                "a Ray job is one driver on one node; a gang of {} nodes is not a Ray job. Ask for one node and use \
                 Ray inside the job (ray.init(), tasks, actors) to spread the work over the cluster",
                job.nodes
            )));
        }
        if let Some(image) = &job.image {
            return Err(EngineError::Unsupported(format!(
                "the ray engine does not run container images ({image}); run the job without an image"
            )));
        }
        if job.command.is_empty() {
            return Err(rejected("the job has no command"));
        }
        if let Some(name) = job.env.keys().find(|k| !valid_env_name(k)) {
            return Err(rejected(format!("{name:?} is not a valid environment variable name")));
        }
        if let (Some(name), None) = (job.secrets.0.keys().next(), &job.secrets_fetch) {
            return Err(EngineError::Unsupported(format!(
                "the ray engine cannot hand the secret ${name} to a job without showing it on Ray's dashboard (Ray \
                 has no secret store, and a job's entrypoint and runtime environment are public there), and this \
                 run has no way to fetch it; run the job on another pool"
            )));
        }
        // Resubmission after a restart: the run exists already. (A fresh run skips the lookup; Ray's "already
        // exists" answer below still catches a duplicate.)
        if job.maybe_submitted && self.job(&job.name).await?.is_some() {
            return Ok(Submitted { native_id: job.name.clone(), native_spec: spec(&body(job, None)) });
        }
        let nodes = self.list_nodes().await?;
        let node_id = fit(job, &nodes)?;
        let body = body(job, node_id.as_deref());
        let native_spec = spec(&body);
        let answer = self.send("submit", self.http.post(format!("{}/api/jobs/", self.base)).json(&body)).await?;
        if answer.ok() {
            // Ray answers {"job_id": ..., "submission_id": ...}; the submission id is the one we chose.
            return Ok(Submitted { native_id: job.name.clone(), native_spec });
        }
        if answer.body.contains("already exists") {
            // Submitted concurrently (or the GET above raced with another submission): the run exists.
            return Ok(Submitted { native_id: job.name.clone(), native_spec });
        }
        Err(submit_error(&answer))
    }
}

/// Maps a failed submission's answer to an error: see the module's documentation.
fn submit_error(answer: &Answer) -> EngineError {
    let detail = format!("HTTP {}: {}", answer.status, brief(&answer.body));
    match answer.status {
        // A refused token is the pool's configuration, not the job: retry once it is fixed.
        401 | 403 | 408 | 429 => unavailable(detail),
        404 => unavailable(format!("{detail} (is the address a Ray dashboard with the Jobs API?)")),
        500 if answer.body.contains("ValueError") || answer.body.contains("TypeError") => rejected(detail),
        400..=499 => rejected(detail),
        _ => unavailable(detail),
    }
}

/// The submission's JSON body. `node_id`: the Ray node the driver must run on.
fn body(job: &EngineJob, node_id: Option<&str>) -> Value {
    let mut body = json!({
        "submission_id": job.name,
        "entrypoint": entrypoint(job),
        "entrypoint_num_cpus": job.cpu_millis as f64 / 1000.0,
        "entrypoint_num_gpus": job.gpus,
        "entrypoint_memory": job.memory_bytes,
        "metadata": {
            "ferry_job": job.job_id.to_string(),
            "attempt": job.attempt.to_string(),
            "user": job.user,
            "project": job.project,
        },
    });
    if let Some(id) = node_id {
        body["entrypoint_label_selector"] = json!({ NODE_ID_LABEL: id });
    }
    body
}

/// The shell command Ray runs (with `/bin/sh -c`): into the working directory, the environment exported, then the
/// program in the shell's place (so that Ray's stop signal reaches it and its exit status is the job's). Names are
/// checked (see [`valid_env_name`]); values and words are quoted.
fn entrypoint(job: &EngineJob) -> String {
    let mut steps = Vec::new();
    if !job.workdir.is_empty() {
        steps.push(format!("cd -- {}", shell_quote(&job.workdir)));
    }
    if !job.env.is_empty() {
        let vars: Vec<String> = job.env.iter().map(|(k, v)| format!("{k}={}", shell_quote(v))).collect();
        steps.push(format!("export {}", vars.join(" ")));
    }
    match (&job.secrets_fetch, job.secrets.is_empty()) {
        // The secrets never enter the entrypoint: the run fetches them when it starts, once, with a ticket that is
        // useless to whoever reads it on the dashboard afterwards; then the program takes the fetcher's place.
        (Some(fetch), false) => {
            let need = if fetch.required { "required" } else { "optional" };
            let mut words =
                vec![FETCH_SECRETS.to_string(), fetch.url.clone(), fetch.ticket.clone(), need.into(), "--".into()];
            words.extend(job.command.iter().cloned());
            steps.push(format!("exec \"$(command -v python3 || command -v python)\" -c {}", shell_join(&words)));
        }
        _ => steps.push(format!("exec {}", shell_join(&job.command))),
    }
    steps.join(" && ")
}

/// The fetcher a Ray run with secrets starts as (`python -c`, arguments: URL, ticket, `required` or `optional`, `--`,
/// the command): asks the Ferry server for the run's secrets (retrying while the server has not yet seen the run
/// running), sets them in its environment and execs the command. A run whose only secret is its tracking token
/// (`optional`) goes on untracked, saying so, when the server cannot be reached. Python is on every Ray node. The
/// server's private certificate authority, when the job names one for its MLflow client, is trusted too.
const FETCH_SECRETS: &str = r#"import json, os, ssl, sys, time, urllib.error, urllib.request
url, ticket, required, command = sys.argv[1], sys.argv[2], sys.argv[3] == "required", sys.argv[5:]
ca = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
context = ssl.create_default_context(cafile=ca) if ca else None
deadline = time.time() + (300 if required else 30)
env = {}
while True:
    request = urllib.request.Request(url, data=json.dumps({"ticket": ticket}).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            env = json.load(answer)["env"]
        break
    except urllib.error.HTTPError as e:
        why = e.read().decode(errors="replace")
        if e.code == 409 and time.time() < deadline:
            time.sleep(0.5)
            continue
        problem = "HTTP %d %s" % (e.code, why)
    except OSError as e:
        if time.time() < deadline:
            time.sleep(1)
            continue
        problem = "%s: %s" % (url, e)
    if required:
        sys.exit("ferry: cannot fetch the job's secrets: " + problem)
    sys.stderr.write("ferry: running without MLflow tracking (cannot fetch its token: %s)\n" % problem)
    break
os.environ.update(env)
try:
    os.execvp(command[0], command)
except OSError as e:
    sys.stderr.write("ferry: cannot start %s: %s\n" % (command[0], e.strerror))
    sys.exit(127)
"#;

fn spec(body: &Value) -> String {
    serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string())
}

/// One node of the cluster, as the State API describes it.
#[derive(Clone, Debug)]
struct RayNode {
    id: String,
    node: EngineNode,
}

/// The Ferry view of Ray's node list: named by IP (unique among nodes that are alive; several raylets on one host get
/// `-<first 8 of the id>`), dead nodes only where no live node has their name (a restarted raylet comes back with a
/// new id under the same IP).
fn parse_nodes(list: &[Value], usage_by_node: Option<&Value>) -> Vec<RayNode> {
    let mut raw: Vec<(String, String, bool, &Value)> = Vec::new();
    for n in list {
        let Some(id) = n["node_id"].as_str() else { continue };
        let ip = n["node_ip"].as_str().or_else(|| n["node_name"].as_str()).unwrap_or(id);
        let alive = n["state"].as_str() == Some("ALIVE");
        raw.push((id.to_string(), ip.to_string(), alive, n));
    }
    let mut alive_per_ip: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, ip, alive, _) in &raw {
        if *alive {
            *alive_per_ip.entry(ip.as_str()).or_default() += 1;
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    // Live nodes first, so that a dead node never takes a live one's name.
    let ordered = raw.iter().filter(|r| r.2).chain(raw.iter().filter(|r| !r.2));
    for (id, ip, alive, n) in ordered {
        let shared = alive_per_ip.get(ip.as_str()).copied().unwrap_or(0) > 1;
        let name = if shared && *alive { format!("{ip}-{}", &id[..id.len().min(8)]) } else { ip.clone() };
        if !seen.insert(name.clone()) {
            continue;
        }
        let total = &n["resources_total"];
        let gpus = total["GPU"].as_f64().unwrap_or(0.0).max(0.0).floor() as u32;
        let model = n["labels"][ACCELERATOR_LABEL]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                total
                    .as_object()
                    .and_then(|t| t.keys().find_map(|k| k.strip_prefix("accelerator_type:").map(str::to_string)))
            })
            .unwrap_or_else(|| "unknown".to_string());
        let usage = usage_by_node.map(|u| &u[id.as_str()]);
        let used = |key: &str| usage.and_then(|u| u[key][0].as_f64()).map(|v| v.max(0.0));
        out.push(RayNode {
            id: id.clone(),
            node: EngineNode {
                name,
                cpu_millis: (total["CPU"].as_f64().unwrap_or(0.0).max(0.0) * 1000.0).round() as u64,
                memory_bytes: total["memory"].as_f64().unwrap_or(0.0).max(0.0) as u64,
                gpus: (0..gpus)
                    .map(|index| Gpu {
                        index,
                        model: model.clone(),
                        memory_bytes: 0,
                        uuid: None,
                        source: ENGINE.to_string(),
                    })
                    .collect(),
                up: *alive,
                state: n["state"].as_str().unwrap_or("UNKNOWN").to_string(),
                allocated_cpu_millis: used("CPU").map(|v| (v * 1000.0).round() as u64),
                allocated_memory_bytes: used("memory").map(|v| v as u64),
                allocated_gpus: used("GPU").map(|v| v.ceil() as u32).or(usage.filter(|u| u.is_object()).map(|_| 0)),
            },
        });
    }
    out
}

/// Checks that the job fits the node it was placed on (or, without a placement, the largest live node) and returns
/// the Ray node id to pin it to.
fn fit(job: &EngineJob, nodes: &[RayNode]) -> Result<Option<String>, EngineError> {
    let fits = |n: &EngineNode| {
        job.cpu_millis <= n.cpu_millis && job.memory_bytes <= n.memory_bytes && job.gpus as usize <= n.gpus.len()
    };
    let asked =
        format!("{} CPUs, {} bytes of memory, {} GPUs", job.cpu_millis as f64 / 1000.0, job.memory_bytes, job.gpus);
    if job.node.is_empty() {
        return match nodes.iter().any(|n| n.node.up && fits(&n.node)) {
            true => Ok(None),
            false => Err(rejected(format!("the job cannot be satisfied: no live node of the cluster has {asked}"))),
        };
    }
    let Some(node) = nodes.iter().find(|n| n.node.name == job.node && n.node.up) else {
        return Err(rejected(format!("node {} is not a live node of the Ray cluster", job.node)));
    };
    if !fits(&node.node) {
        let n = &node.node;
        return Err(rejected(format!(
            "the job cannot be satisfied: it asks {asked}; node {} has {} CPUs, {} bytes of memory, {} GPUs",
            n.name,
            n.cpu_millis as f64 / 1000.0,
            n.memory_bytes,
            n.gpus.len()
        )));
    }
    Ok(Some(node.id.clone()))
}

/// Ray's times are milliseconds since the epoch.
fn ms_to_us(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_f64().map(|v| v as i64)).map(|ms| ms.saturating_mul(1000))
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// The first line of Ray's message, shortened.
fn message(job: &Value) -> Option<String> {
    job["message"].as_str().and_then(|m| m.lines().map(str::trim).find(|l| !l.is_empty())).map(shorten)
}

/// Ray's error types that mean the entrypoint never ran.
const NEVER_STARTED: &[&str] = &[
    "RUNTIME_ENV_SETUP_FAILURE",
    "JOB_SUPERVISOR_ACTOR_START_TIMEOUT",
    "JOB_SUPERVISOR_ACTOR_START_FAILURE",
    "JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE",
    "JOB_ENTRYPOINT_COMMAND_START_ERROR",
];

/// A job's details as a state. Ray's `start_time` is when the job was submitted (Ray does not record when the
/// driver started), so it is a lower bound of the start.
fn state(job: &Value) -> NativeState {
    let status = job["status"].as_str().unwrap_or("");
    let started = ms_to_us(&job["start_time"]);
    let finished = ms_to_us(&job["end_time"]).unwrap_or_else(now_us);
    let exit = job["driver_exit_code"].as_i64().and_then(|c| i32::try_from(c).ok());
    // Python reports a driver killed by a signal as a negative exit code.
    let (exit_code, signal) = match exit {
        Some(c) if c < 0 => (None, Some(-c)),
        other => (other, None),
    };
    let finished_as = |end: RunEnd, exit_code: Option<i32>, message: Option<String>| NativeState::Finished {
        end,
        exit_code,
        signal,
        started_at_us: started,
        finished_at_us: finished,
        message,
    };
    match status {
        "PENDING" => NativeState::Pending { reason: message(job) },
        "RUNNING" => NativeState::Running { started_at_us: started.unwrap_or_else(now_us) },
        "SUCCEEDED" => finished_as(RunEnd::Exited, Some(exit_code.unwrap_or(0)), None),
        "STOPPED" => finished_as(RunEnd::Stopped, exit_code, message(job)),
        "FAILED" if exit.is_some() => finished_as(RunEnd::Exited, exit_code, message(job)),
        "FAILED" => {
            let error_type = job["error_type"].as_str().unwrap_or("");
            let end = if NEVER_STARTED.contains(&error_type) { RunEnd::FailedToStart } else { RunEnd::Exited };
            let text = message(job).map(|m| if error_type.is_empty() { m } else { format!("{error_type}: {m}") });
            finished_as(end, None, text.or_else(|| Some("the Ray job failed".to_string())))
        }
        other => NativeState::Pending { reason: Some(format!("Ray reports the job as {other:?}")) },
    }
}

/// Bytes `offset..offset+max` of the whole log.
fn slice(logs: &str, offset: u64, max: usize) -> Vec<u8> {
    let bytes = logs.as_bytes();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
    let end = start.saturating_add(max).min(bytes.len());
    bytes[start..end].to_vec()
}

impl Engine for RayEngine {
    fn kind(&self) -> &'static str {
        ENGINE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            // Refused at submission: see the module's documentation.
            images: false,
            // A Ray job is one driver on one node, which spreads its work with Ray itself.
            gangs: false,
            gpus_measured: false,
            native_view: true,
            // The entrypoint's label selector on the node's `ray.io/node-id`.
            node_pinning: true,
            gpu_pinning: false,
        }
    }

    fn nodes(&self) -> BackendFuture<'_, Result<Vec<EngineNode>, EngineError>> {
        Box::pin(async move { Ok(self.list_nodes().await?.into_iter().map(|n| n.node).collect()) })
    }

    fn submit<'a>(&'a self, job: &'a EngineJob) -> BackendFuture<'a, Result<Submitted, EngineError>> {
        Box::pin(self.submit_job(job))
    }

    fn find<'a>(&'a self, prefix: &'a str) -> BackendFuture<'a, Result<Vec<Found>, EngineError>> {
        Box::pin(async move {
            let jobs = self.all_jobs().await?;
            Ok(jobs
                .iter()
                .filter_map(|j| j["submission_id"].as_str())
                .filter(|id| id.starts_with(prefix))
                .map(|id| Found { name: id.to_string(), native_id: id.to_string() })
                .collect())
        })
    }

    fn states<'a>(&'a self, native_ids: &'a [String]) -> BackendFuture<'a, Result<Vec<NativeState>, EngineError>> {
        Box::pin(async move {
            if native_ids.len() > LIST_ALL_ABOVE {
                let jobs = self.all_jobs().await?;
                let by_id: BTreeMap<&str, &Value> =
                    jobs.iter().filter_map(|j| j["submission_id"].as_str().map(|id| (id, j))).collect();
                return Ok(native_ids
                    .iter()
                    .map(|id| by_id.get(id.as_str()).map_or(NativeState::Unknown, |j| state(j)))
                    .collect());
            }
            let mut states = Vec::with_capacity(native_ids.len());
            for id in native_ids {
                states.push(self.job(id).await?.map_or(NativeState::Unknown, |j| state(&j)));
            }
            Ok(states)
        })
    }

    /// Ray's Jobs REST API only returns a job's whole log (`GET /api/jobs/{id}/logs`; the incremental
    /// `/logs/tail` is a websocket), so each call fetches all of it and returns the slice asked for: a long log read
    /// in small pieces costs quadratic transfer. The log also holds Ray's own lines about the job (the runtime
    /// environment being set up, the entrypoint it runs) besides the program's output.
    fn output<'a>(
        &'a self,
        native_id: &'a str,
        offset: u64,
        max: usize,
    ) -> BackendFuture<'a, Result<Vec<u8>, EngineError>> {
        Box::pin(async move {
            let answer = self.get("job output", job_url(&self.base, native_id, "/logs")).await?;
            if answer.status == 404 {
                return Ok(Vec::new());
            }
            if !answer.ok() {
                return Err(answer.unexpected("job output"));
            }
            let logs = answer.json("job output")?;
            let Some(logs) = logs["logs"].as_str() else {
                return Err(unavailable("job output: no \"logs\" in the answer"));
            };
            Ok(slice(logs, offset, max))
        })
    }

    /// Ray stops a running driver with SIGTERM, then SIGKILL after `RAY_JOB_STOP_WAIT_TIME_S` (3 s by default). A job
    /// still pending (waiting for resources) only stops once its supervisor actor starts: Ray has no way to withdraw
    /// it earlier.
    fn cancel<'a>(&'a self, native_id: &'a str) -> BackendFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let url = job_url(&self.base, native_id, "/stop");
            let answer = self.send("cancel", self.http.post(url)).await?;
            // 200 {"stopped": false}: it had ended already. 404: Ray does not know it (purged): nothing to stop.
            match answer.status {
                404 => Ok(()),
                _ if answer.ok() => Ok(()),
                _ => Err(answer.unexpected("cancel")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> EngineJob {
        EngineJob {
            name: "ferry-t-1-0".into(),
            job_id: 1,
            attempt: 0,
            node: String::new(),
            user: "u".into(),
            project: "p".into(),
            command: vec!["python3".into(), "it's $(x)".into()],
            env: BTreeMap::from([("A".to_string(), "$B `c`".to_string())]),
            secrets: Default::default(),
            secrets_fetch: None,
            workdir: "/tmp/a b".into(),
            cpu_millis: 1500,
            memory_bytes: 1 << 20,
            gpus: 0,
            nodes: 1,
            max_runtime_s: None,
            image: None,
            maybe_submitted: false,
        }
    }

    #[test]
    fn the_body_quotes_the_command_and_carries_the_environment_apart() {
        let body = body(&job(), Some("abc"));
        assert_eq!(body["entrypoint"], "cd -- '/tmp/a b' && export A='$B `c`' && exec python3 'it'\\''s $(x)'");
        assert_eq!(body["entrypoint_num_cpus"], 1.5);
        assert_eq!(body["entrypoint_label_selector"][NODE_ID_LABEL], "abc");
        assert_eq!(body["metadata"]["ferry_job"], "1");
    }

    #[test]
    fn states_map_ray_statuses() {
        let s = |v: Value| state(&v);
        assert_eq!(
            s(json!({"status": "PENDING", "message": "waiting\nmore"})),
            NativeState::Pending { reason: Some("waiting".into()) }
        );
        assert_eq!(s(json!({"status": "RUNNING", "start_time": 2})), NativeState::Running { started_at_us: 2000 });
        let finished = |v: Value| match s(v) {
            NativeState::Finished { end, exit_code, signal, .. } => (end, exit_code, signal),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            finished(json!({"status": "SUCCEEDED", "driver_exit_code": 0, "end_time": 5})),
            (RunEnd::Exited, Some(0), None)
        );
        assert_eq!(finished(json!({"status": "FAILED", "driver_exit_code": 3})), (RunEnd::Exited, Some(3), None));
        assert_eq!(finished(json!({"status": "FAILED", "driver_exit_code": -9})), (RunEnd::Exited, None, Some(9)));
        assert_eq!(
            finished(json!({"status": "FAILED", "error_type": "JOB_SUPERVISOR_ACTOR_START_TIMEOUT"})),
            (RunEnd::FailedToStart, None, None)
        );
        assert_eq!(
            finished(json!({"status": "FAILED", "error_type": "JOB_SUPERVISOR_ACTOR_DIED"})),
            (RunEnd::Exited, None, None)
        );
        assert_eq!(finished(json!({"status": "STOPPED"})), (RunEnd::Stopped, None, None));
    }

    #[test]
    fn submission_errors_are_sorted_into_retry_or_not() {
        let e = |status: u16, body: &str| submit_error(&Answer { status, body: body.into() }).is_transient();
        assert!(!e(400, "TypeError: entrypoint must be a string"));
        assert!(!e(500, "Traceback...\nValueError: bad label selector\n."));
        assert!(e(500, "No available agent to submit job, please try again later."));
        assert!(e(503, ""));
        assert!(e(404, "Not Found"));
        assert!(e(401, "Unauthorized"));
    }

    #[test]
    fn nodes_are_named_by_ip_and_carry_their_resources() {
        let list = [
            json!({"node_id": "aaaaaaaaaa", "node_ip": "10.0.0.1", "state": "ALIVE",
                   "resources_total": {"CPU": 4.0, "memory": 4e6, "GPU": 2.0, "accelerator_type:A100": 1.0}}),
            json!({"node_id": "bbbbbbbbbb", "node_ip": "10.0.0.1", "state": "DEAD", "resources_total": {"CPU": 1.0}}),
            json!({"node_id": "cccccccccc", "node_ip": "10.0.0.2", "state": "DEAD", "resources_total": {"CPU": 1.0}}),
        ];
        let usage = json!({"aaaaaaaaaa": {"CPU": [1.0, 4.0], "memory": [10.0, 4e6]}});
        let nodes = parse_nodes(&list, Some(&usage));
        assert_eq!(nodes.len(), 2);
        let a = &nodes[0].node;
        assert_eq!((a.name.as_str(), a.cpu_millis, a.memory_bytes, a.up), ("10.0.0.1", 4000, 4_000_000, true));
        assert_eq!((a.gpus.len(), a.gpus[0].model.as_str(), a.gpus[0].source.as_str()), (2, "A100", "ray"));
        assert_eq!(
            (a.allocated_cpu_millis, a.allocated_memory_bytes, a.allocated_gpus),
            (Some(1000), Some(10), Some(0))
        );
        assert_eq!((nodes[1].node.name.as_str(), nodes[1].node.up), ("10.0.0.2", false));
        let mut j = job();
        j.node = "10.0.0.1".into();
        assert_eq!(fit(&j, &nodes), Ok(Some("aaaaaaaaaa".into())));
        j.gpus = 3;
        assert!(matches!(fit(&j, &nodes), Err(EngineError::Rejected { .. })));
        j.gpus = 0;
        j.node = "10.0.0.2".into();
        assert!(matches!(fit(&j, &nodes), Err(EngineError::Rejected { .. })));
    }

    #[test]
    fn output_is_sliced_by_bytes() {
        assert_eq!(slice("hello", 1, 3), b"ell");
        assert_eq!(slice("hello", 9, 3), b"");
        assert_eq!(slice("hello", 3, usize::MAX), b"lo");
    }

    #[test]
    fn addresses_are_checked() {
        assert!(connect(Config { address: "http://127.0.0.1:8265/".into(), token: None }).is_ok());
        assert!(connect(Config { address: "127.0.0.1:8265".into(), token: None }).is_err());
        assert!(connect(Config { address: "http://h/x".into(), token: None }).is_err());
    }
}
