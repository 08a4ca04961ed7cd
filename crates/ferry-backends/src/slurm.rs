//! The Slurm engine: Ferry places a run on a Slurm node, submits it as one batch job and follows it there.
//!
//! Two transports, chosen by the configuration:
//! - **REST** (`rest_url` set): slurmrestd's OpenAPI (v0.0.38 by default, Slurm 22.05) with JWT headers. The token
//!   comes from `token`, from `token_file` (read again on every call, so it can be rotated), or else from
//!   `scontrol token username=<user> lifespan=<token_lifespan_s>`, renewed before it expires.
//! - **CLI** (no `rest_url`): `sbatch --parsable`, `squeue`, `scancel` and `scontrol show nodes`, run with a timeout
//!   and a clean environment (`SLURM_CONF` from `slurm_conf`).
//!
//! Shared filesystem: `work_dir` must be one directory that the Ferry server and every Slurm node see at the same
//! path. Each run gets `<work_dir>/<name>/` with a copy of its batch script (`job.sh`; over REST also the JSON job
//! fields, `job.json`; for the CLI the environment file `env.sh`) and its output (`output.log`, stdout and stderr
//! together); [`Engine::output`] reads that file directly from the server's side. The job runs as the Slurm user
//! (the REST `user`, or the user running the CLI commands), who must be able to read and write there.
//!
//! States come from `squeue` / `GET job/{id}` while Slurm keeps the job (MinJobAge after its end); past that, the CLI
//! asks `sacct` (slurmdbd, or the `jobcomp/filetxt` file with `sacct -c`), and a job found nowhere is `Unknown`. The
//! REST transport does not use slurmdbd's API (`/slurmdb/...` needs slurmdbd), so there a purged job is `Unknown`.
//!
//! Safety: user text never lands on an `#SBATCH` line. Those lines hold numbers, the run's name (letters, digits and
//! `-`), settings checked by [`connect`], and the user and project only after reducing them to harmless characters.
//! The command and the working directory are quoted with [`shell_quote`] in the script's body (after the `#SBATCH`
//! block, where `sbatch` no longer reads directives). The environment travels out of band: as the REST
//! `environment` object, or for the CLI as a file of quoted `export` lines (mode 0600) that the script sources.
//!
//! Limits: slurmrestd v0.0.38 has no field for a node list (and ignores `#SBATCH` lines in a REST script), so over
//! REST the run goes to whichever node of the partition Slurm picks; the CLI pins it with `--nodelist`. A multi-node
//! run (`nodes > 1`) gets the allocation, and its command runs once on the first node (it may `srun` itself).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_api::agent::RunEnd;
use ferry_api::nodes::Gpu;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::engine::{
    shell_join, shell_quote, valid_env_name, Engine, EngineError, EngineJob, EngineNode, Found, NativeState, Submitted,
};
use crate::{BackendFuture, Capabilities};

const KIND: &str = "slurm";
/// The OpenAPI version of Slurm 22.05's slurmrestd; the JSON fields below are written for it.
const DEFAULT_API_VERSION: &str = "v0.0.38";
const DEFAULT_TOKEN_LIFESPAN_S: u64 = 3600;
/// A Slurm command that has not answered by then is treated as an outage (the commands themselves give up on an
/// unreachable controller after about 9 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `states` asks slurmrestd job by job up to this many ids, and lists all jobs once beyond.
const PER_JOB_QUERIES: usize = 8;
const MIB: u64 = 1 << 20;
/// How many runs' output paths the engine keeps in memory.
const MAX_REMEMBERED: usize = 100_000;
/// The PATH a job gets when its environment has none (REST), and that the CLI commands fall back to.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a slurm pool reaches its engine: the `[pool.engine]` table of the server's configuration, or the settings of
/// `ferry pool add`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// slurmrestd's base address (`http://host:6820`); without it, Ferry runs the Slurm commands (`sbatch`...).
    #[serde(default)]
    pub rest_url: Option<String>,
    /// The Slurm user the REST calls act as (`X-SLURM-USER-NAME`); default: the user the server runs as.
    #[serde(default)]
    pub user: Option<String>,
    /// A JWT for slurmrestd (`X-SLURM-USER-TOKEN`).
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the JWT, read again on every call so that it can be rotated.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Without `token` or `token_file`: the lifespan of the tokens Ferry gets with `scontrol token` (default 3600).
    #[serde(default)]
    pub token_lifespan_s: Option<u64>,
    /// The partition every run goes to; default: the cluster's default partition.
    #[serde(default)]
    pub partition: Option<String>,
    /// The account runs are charged to.
    #[serde(default)]
    pub account: Option<String>,
    /// Required: a directory the Ferry server and all Slurm nodes share at this path (see the module's docs).
    pub work_dir: PathBuf,
    /// The slurm.conf the commands use (`SLURM_CONF`); default: Slurm's own (or the server's `SLURM_CONF`).
    #[serde(default)]
    pub slurm_conf: Option<PathBuf>,
    /// The slurmrestd OpenAPI version in the URLs; default `v0.0.38` (Slurm 22.05).
    #[serde(default)]
    pub api_version: Option<String>,
}

/// Connects to the engine (without contacting it: an engine that is down is reported by its calls, not here).
pub fn connect(config: Config) -> Result<Box<dyn Engine>, String> {
    Ok(Box::new(Slurm::new(config)?))
}

/// Characters a setting may have to appear on an `#SBATCH` line or in a path Slurm expands (`%` is Slurm's pattern
/// character in output paths, so it is not among them).
fn plain(s: &str, extra: &[u8]) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || extra.contains(&b))
}

/// The slurmrestd token, by where it comes from.
enum TokenSource {
    Fixed(String),
    File(PathBuf),
    /// `scontrol token`, kept until a fifth of its lifespan is left.
    Scontrol {
        lifespan_s: u64,
        cached: tokio::sync::Mutex<Option<(String, Instant)>>,
    },
}

struct Rest {
    client: reqwest::Client,
    /// `<rest_url>/slurm/<api_version>`.
    base: String,
    user: String,
    token: TokenSource,
}

struct Slurm {
    rest: Option<Rest>,
    partition: Option<String>,
    account: Option<String>,
    work_dir: PathBuf,
    slurm_conf: Option<PathBuf>,
    /// Where each run's output is, by native id: filled at submission, or asked of Slurm after a restart.
    outputs: Mutex<HashMap<String, PathBuf>>,
}

/// What Ferry reads of one Slurm job, whichever transport it came through.
#[derive(Clone, Debug, Default, PartialEq)]
struct JobInfo {
    id: String,
    name: String,
    /// The base state (`RUNNING`, `CANCELLED`...), upper case.
    state: String,
    reason: String,
    start_s: Option<i64>,
    end_s: Option<i64>,
    /// The exit status as Slurm keeps it: a wait(2) status (exit code << 8 | signal).
    raw_exit: Option<i64>,
    stdout: String,
}

impl Slurm {
    fn new(config: Config) -> Result<Slurm, String> {
        let work_dir = config.work_dir;
        let wd = work_dir.to_str().ok_or("slurm: work_dir must be valid UTF-8")?;
        if !work_dir.is_absolute() || !plain(wd, b"/+@,=:") || wd.contains("/../") || wd.ends_with("/..") {
            return Err(format!(
                "slurm: work_dir must be an absolute path of letters, digits and . _ - / + @ , = : (it appears on \
                 #SBATCH lines and Slurm expands % in output paths), not {wd:?}"
            ));
        }
        for (what, value) in [("partition", &config.partition), ("account", &config.account)] {
            if let Some(v) = value {
                if !plain(v, b"") {
                    return Err(format!("slurm: {what} must be letters, digits, . _ or -, not {v:?}"));
                }
            }
        }
        if let Some(conf) = &config.slurm_conf {
            if !conf.is_absolute() {
                return Err(format!("slurm: slurm_conf must be an absolute path, not {}", conf.display()));
            }
        }
        let rest = match config.rest_url {
            None => {
                if config.token.is_some() || config.token_file.is_some() || config.api_version.is_some() {
                    return Err("slurm: token, token_file and api_version need rest_url (slurmrestd)".into());
                }
                None
            }
            Some(url) => Some(Self::rest(
                url,
                config.user,
                config.token,
                config.token_file,
                config.token_lifespan_s,
                config.api_version,
            )?),
        };
        Ok(Slurm {
            rest,
            partition: config.partition,
            account: config.account,
            work_dir,
            slurm_conf: config.slurm_conf,
            outputs: Mutex::new(HashMap::new()),
        })
    }

    fn rest(
        url: String,
        user: Option<String>,
        token: Option<String>,
        token_file: Option<PathBuf>,
        lifespan: Option<u64>,
        api_version: Option<String>,
    ) -> Result<Rest, String> {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("slurm: rest_url must start with http:// or https://, not {url:?}"));
        }
        let version = api_version.unwrap_or_else(|| DEFAULT_API_VERSION.into());
        if !version.starts_with('v') || !plain(&version, b"") {
            return Err(format!("slurm: api_version looks like v0.0.38, not {version:?}"));
        }
        let user = match user {
            Some(u) => u,
            None => std::env::var("USER").map_err(|_| "slurm: set user (the Slurm user REST calls act as)")?,
        };
        if !plain(&user, b"@") {
            return Err(format!("slurm: user must be a plain user name, not {user:?}"));
        }
        let token = match (token, token_file) {
            (Some(_), Some(_)) => return Err("slurm: give token or token_file, not both".into()),
            (Some(t), None) => {
                if t.trim().is_empty() || t.bytes().any(|b| b.is_ascii_control()) {
                    return Err("slurm: token is empty or has control characters".into());
                }
                TokenSource::Fixed(t.trim().to_string())
            }
            (None, Some(f)) => TokenSource::File(f),
            (None, None) => {
                let lifespan_s = lifespan.unwrap_or(DEFAULT_TOKEN_LIFESPAN_S);
                if lifespan_s < 60 {
                    return Err("slurm: token_lifespan_s must be at least 60".into());
                }
                TokenSource::Scontrol { lifespan_s, cached: tokio::sync::Mutex::new(None) }
            }
        };
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("slurm: an HTTP client: {e}"))?;
        Ok(Rest { client, base: format!("{url}/slurm/{version}"), user, token })
    }

    fn run_dir(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }

    // ---- The CLI ----

    /// Runs one Slurm command with a clean environment (the server's PATH, SLURM_CONF and `env`), in `cwd`, with a
    /// timeout. Returns its exit status, stdout and stderr; failing to run it at all is an outage.
    ///
    /// The clean environment matters for `sbatch --export=ALL`: the job inherits exactly this (PATH and SLURM_CONF,
    /// as a plain `sbatch` would pass the submitter's), never the server's own variables (its secrets), and the user's
    /// variables never reach `sbatch` itself, where `SBATCH_*` would change the submission and `LD_PRELOAD` would run
    /// code in the server's name.
    async fn command(
        &self,
        program: &str,
        args: &[String],
        cwd: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Result<(bool, String, String), EngineError> {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into()))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        match (&self.slurm_conf, std::env::var_os("SLURM_CONF")) {
            (Some(conf), _) => {
                cmd.env("SLURM_CONF", conf);
            }
            (None, Some(conf)) => {
                cmd.env("SLURM_CONF", conf);
            }
            (None, None) => {}
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.output();
        let out = match tokio::time::timeout(COMMAND_TIMEOUT, child).await {
            Err(_) => return Err(unavailable(format!("{program} did not answer within {COMMAND_TIMEOUT:?}"))),
            Ok(Err(e)) => return Err(unavailable(format!("cannot run {program}: {e}"))),
            Ok(Ok(out)) => out,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Ok((out.status.success(), stdout, stderr))
    }

    /// The jobs `squeue` shows (finished ones too, for as long as Slurm keeps them): all, of one name, or of ids.
    async fn squeue(&self, filter: &[String]) -> Result<Vec<JobInfo>, EngineError> {
        let mut args: Vec<String> = vec!["--noheader".into(), "--states=all".into()];
        args.extend(filter.iter().cloned());
        // `:|` ends each field with `|` and does not pad or cut it. The output path goes last: only it may hold `|`.
        args.push("--Format=JobID:|,Name:|,State:|,Reason:|,StartTime:|,EndTime:|,exit_code:|,STDOUT:".into());
        let (ok, stdout, stderr) = self.command("squeue", &args, None, &[("SLURM_TIME_FORMAT", "%s")]).await?;
        if !ok {
            // Asked for ids Slurm no longer knows, all of them: nothing to show, not an outage.
            if stderr.contains("Invalid job id") {
                return Ok(Vec::new());
            }
            return Err(unavailable(format!("squeue: {stderr}")));
        }
        Ok(stdout.lines().filter_map(parse_squeue_line).collect())
    }

    /// Jobs squeue no longer shows (older than MinJobAge), from accounting: slurmdbd's, or else the job completion
    /// file (`sacct -c`, JobCompType=jobcomp/filetxt, readable where the server runs). Best effort: a job found
    /// nowhere is simply left out (and reported Unknown).
    async fn sacct(&self, ids: &[&str]) -> Vec<JobInfo> {
        let base: Vec<String> = ["-X", "-n", "-P", "--format=JobIDRaw,JobName,State,ExitCode,Start,End"]
            .into_iter()
            .map(String::from)
            .chain([format!("--jobs={}", ids.join(","))])
            .collect();
        for completion_file in [false, true] {
            let mut args = base.clone();
            if completion_file {
                args.insert(0, "-c".into());
            }
            match self.command("sacct", &args, None, &[("SLURM_TIME_FORMAT", "%s")]).await {
                Ok((true, stdout, _)) if !stdout.trim().is_empty() || completion_file => {
                    return stdout
                        .lines()
                        .filter_map(parse_sacct_line)
                        .filter(|j| ids.contains(&j.id.as_str()))
                        .collect();
                }
                _ => {}
            }
        }
        Vec::new()
    }

    async fn cli_submit(&self, job: &EngineJob, run_dir: &Path, script: &str) -> Result<String, EngineError> {
        let path = run_dir.join("job.sh");
        write_file(&path, script.as_bytes(), 0o700).await?;
        let args = vec!["--parsable".to_string(), "--export=ALL".to_string(), path.to_string_lossy().into_owned()];
        let (ok, stdout, stderr) = self.command("sbatch", &args, Some(run_dir), &[]).await?;
        if !ok {
            return Err(classify_cli(&format!("sbatch refused {}", job.name), &stderr, true));
        }
        // `--parsable` prints `<id>` or `<id>;<cluster>`.
        let id = stdout.trim().split(';').next().unwrap_or("").trim().to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unavailable(format!("sbatch printed no job id: {stdout:?} {stderr}")));
        }
        Ok(id)
    }

    async fn cli_nodes(&self) -> Result<Vec<EngineNode>, EngineError> {
        let args: Vec<String> = ["show", "nodes", "--oneliner", "--details"].map(String::from).to_vec();
        let (ok, stdout, stderr) = self.command("scontrol", &args, None, &[]).await?;
        if !ok {
            return Err(unavailable(format!("scontrol show nodes: {stderr}")));
        }
        Ok(stdout.lines().filter_map(parse_scontrol_node).collect())
    }

    // ---- REST ----

    async fn token(&self, rest: &Rest) -> Result<String, EngineError> {
        match &rest.token {
            TokenSource::Fixed(t) => Ok(t.clone()),
            TokenSource::File(path) => {
                let t = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| unavailable(format!("the token file {}: {e}", path.display())))?;
                // Accept the `SLURM_JWT=...` form `scontrol token` prints, too.
                let t = t.trim();
                Ok(t.strip_prefix("SLURM_JWT=").unwrap_or(t).to_string())
            }
            TokenSource::Scontrol { lifespan_s, cached } => {
                let mut cached = cached.lock().await;
                if let Some((token, renew_at)) = cached.as_ref() {
                    if Instant::now() < *renew_at {
                        return Ok(token.clone());
                    }
                }
                let args =
                    vec!["token".to_string(), format!("username={}", rest.user), format!("lifespan={lifespan_s}")];
                let (ok, stdout, stderr) = self.command("scontrol", &args, None, &[]).await?;
                let token = stdout.trim().strip_prefix("SLURM_JWT=").unwrap_or("").trim().to_string();
                if !ok || token.is_empty() {
                    return Err(unavailable(format!("scontrol token: {stderr}")));
                }
                let renew_at = Instant::now() + Duration::from_secs(lifespan_s - lifespan_s / 5);
                *cached = Some((token.clone(), renew_at));
                Ok(token)
            }
        }
    }

    /// One slurmrestd call. Returns the JSON answer whatever the HTTP status (slurmrestd answers 500 to a job it
    /// refuses, with the reason in `errors`); an answer that is not JSON is an outage.
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, EngineError> {
        let Some(rest) = &self.rest else { return Err(unavailable("no rest_url".into())) };
        let token = self.token(rest).await?;
        let mut req = rest
            .client
            .request(method, format!("{}{path}", rest.base))
            .header("X-SLURM-USER-NAME", &rest.user)
            .header("X-SLURM-USER-TOKEN", token)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| unavailable(format!("slurmrestd at {}: {e}", rest.base)))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| unavailable(format!("slurmrestd's answer: {e}")))?;
        if status == reqwest::StatusCode::UNAUTHORIZED || text.starts_with("Authentication failure") {
            // A token slurmctld no longer accepts (its key changed, say): get a new one next time.
            if let TokenSource::Scontrol { cached, .. } = &rest.token {
                *cached.lock().await = None;
            }
        }
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v.is_object() => Ok(v),
            _ => Err(unavailable(format!("slurmrestd answered {status}: {}", clip(&text, 300)))),
        }
    }

    async fn rest_jobs(&self) -> Result<Vec<JobInfo>, EngineError> {
        let v = self.call(reqwest::Method::GET, "/jobs", None).await?;
        if let Some(e) = rest_errors(&v) {
            return Err(unavailable(format!("slurmrestd: jobs: {}", e.1)));
        }
        Ok(rest_job_list(&v))
    }

    /// One job, or `None` when Slurm does not know it (any more).
    async fn rest_job(&self, id: &str) -> Result<Option<JobInfo>, EngineError> {
        let v = self.call(reqwest::Method::GET, &format!("/job/{id}"), None).await?;
        if let Some((code, msg)) = rest_errors(&v) {
            if code == Some(ESLURM_INVALID_JOB_ID) || msg.contains("Invalid job id") {
                return Ok(None);
            }
            return Err(unavailable(format!("slurmrestd: job {id}: {msg}")));
        }
        Ok(rest_job_list(&v).into_iter().find(|j| j.id == id))
    }

    /// The JSON job fields of a REST submission.
    fn rest_fields(&self, job: &EngineJob, run_dir: &Path) -> Value {
        let output = run_dir.join("output.log").to_string_lossy().into_owned();
        let mut env: BTreeMap<String, String> = job.env.clone();
        env.extend(job.secrets.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.entry("PATH".into()).or_insert_with(|| DEFAULT_PATH.into());
        let workdir = if job.workdir.is_empty() { run_dir.to_string_lossy().into_owned() } else { job.workdir.clone() };
        let r = Resources::of(job);
        let mut fields = json!({
            "name": job.name,
            "current_working_directory": workdir,
            "standard_output": output,
            "standard_error": output,
            "standard_input": "/dev/null",
            "environment": env,
            "nodes": [r.nodes, r.nodes],
            "tasks": r.nodes,
            "cpus_per_task": r.cpus_per_task,
            "memory_per_node": r.mem_mib,
            "comment": comment(job),
        });
        if let Some(f) = fields.as_object_mut() {
            if job.gpus > 0 {
                f.insert("gres".into(), json!(format!("gpu:{}", job.gpus)));
            }
            if let Some(m) = r.time_min {
                f.insert("time_limit".into(), json!(m));
            }
            if let Some(p) = &self.partition {
                f.insert("partition".into(), json!(p));
            }
            if let Some(a) = &self.account {
                f.insert("account".into(), json!(a));
            }
        }
        fields
    }

    async fn rest_submit(&self, job: &EngineJob, body: &Value) -> Result<String, EngineError> {
        let v = self.call(reqwest::Method::POST, "/job/submit", Some(body)).await?;
        if let Some((code, msg)) = rest_errors(&v) {
            return Err(classify_rest(code, &format!("{}: {msg}", job.name)));
        }
        match v.get("job_id").and_then(as_i64) {
            Some(id) if id > 0 => Ok(id.to_string()),
            _ => Err(unavailable(format!("slurmrestd returned no job id: {}", clip(&v.to_string(), 300)))),
        }
    }

    async fn rest_nodes(&self) -> Result<Vec<EngineNode>, EngineError> {
        let v = self.call(reqwest::Method::GET, "/nodes", None).await?;
        if let Some((_, msg)) = rest_errors(&v) {
            return Err(unavailable(format!("slurmrestd: nodes: {msg}")));
        }
        let nodes = v.get("nodes").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        Ok(nodes.iter().filter_map(parse_rest_node).collect())
    }

    // ---- Both ----

    /// The jobs Slurm shows, all of them or those of one name.
    async fn jobs(&self, name: Option<&str>) -> Result<Vec<JobInfo>, EngineError> {
        let mut jobs = if self.rest.is_some() {
            self.rest_jobs().await?
        } else {
            let filter: Vec<String> = name.map(|n| format!("--name={n}")).into_iter().collect();
            self.squeue(&filter).await?
        };
        if let Some(n) = name {
            jobs.retain(|j| j.name == n);
        }
        Ok(jobs)
    }

    /// The path of a run's output: known since submission, or asked of Slurm. Only paths under `work_dir`.
    async fn output_path(&self, id: &str) -> Result<Option<PathBuf>, EngineError> {
        if let Some(p) = self.outputs.lock().ok().and_then(|m| m.get(id).cloned()) {
            return Ok(Some(p));
        }
        let info = if self.rest.is_some() {
            self.rest_job(id).await?
        } else {
            self.squeue(&[format!("--jobs={id}")]).await?.into_iter().find(|j| j.id == id)
        };
        let Some(info) = info else { return Ok(None) };
        let path = PathBuf::from(&info.stdout);
        let inside = path.starts_with(&self.work_dir) && !info.stdout.contains("/../");
        if !inside {
            return Err(EngineError::Unsupported(format!(
                "slurm job {id} writes its output to {:?}, outside the work_dir {}",
                info.stdout,
                self.work_dir.display()
            )));
        }
        self.remember(id, path.clone());
        Ok(Some(path))
    }

    fn remember(&self, id: &str, output: PathBuf) {
        if let Ok(mut m) = self.outputs.lock() {
            // A cache, not a record: past this many runs start again (a forgotten path is asked of Slurm again).
            if m.len() >= MAX_REMEMBERED {
                m.clear();
            }
            m.insert(id.to_string(), output);
        }
    }

    /// The batch script of a run, and for the CLI the env file it sources.
    fn script(&self, job: &EngineJob, run_dir: &Path) -> String {
        let rest = self.rest.is_some();
        let r = Resources::of(job);
        let mut s = String::from("#!/bin/bash\n");
        if !rest {
            let output = run_dir.join("output.log");
            let mut d = |line: String| {
                s.push_str("#SBATCH ");
                s.push_str(&line);
                s.push('\n');
            };
            d(format!("--job-name={}", job.name));
            d(format!("--nodes={}", r.nodes));
            d(format!("--ntasks={}", r.nodes));
            d(format!("--cpus-per-task={}", r.cpus_per_task));
            d(format!("--mem={}", r.mem_mib));
            if job.gpus > 0 {
                d(format!("--gres=gpu:{}", job.gpus));
            }
            if let Some(m) = r.time_min {
                d(format!("--time={m}"));
            }
            if let Some(p) = &self.partition {
                d(format!("--partition={p}"));
            }
            if let Some(a) = &self.account {
                d(format!("--account={a}"));
            }
            if !job.node.is_empty() {
                d(format!("--nodelist={}", job.node));
            }
            // work_dir is plain (checked by connect) and the name is letters, digits and '-'.
            d(format!("--output={}", output.display()));
            d(format!("--error={}", output.display()));
            d("--input=/dev/null".into());
            d(format!("--comment={}", comment(job)));
        }
        s.push_str(&format!("# Ferry run {} (job {}, attempt {}).\n", job.name, job.job_id, job.attempt));
        if !rest {
            // The environment, out of band: quoted `export` lines in a file only the job's user reads.
            s.push_str(&format!(
                ". {} || {{ echo \"ferry: cannot read the run's environment\" >&2; exit 1; }}\n",
                shell_quote(&run_dir.join("env.sh").to_string_lossy())
            ));
        }
        if !job.workdir.is_empty() {
            s.push_str(&format!(
                "cd -- {} || {{ echo \"ferry: cannot enter the working directory\" >&2; exit 1; }}\n",
                shell_quote(&job.workdir)
            ));
        }
        s.push_str(&format!("exec {}\n", shell_join(&job.command)));
        s
    }

    fn check(job: &EngineJob) -> Result<(), EngineError> {
        if !plain(&job.name, b"") || job.name.contains('.') || job.name.contains('_') {
            return Err(EngineError::Unsupported(format!("slurm: not a Ferry run name: {:?}", job.name)));
        }
        if job.command.is_empty() {
            return Err(EngineError::Unsupported("slurm: the run has no command".into()));
        }
        if !job.node.is_empty() && !plain(&job.node, b"") {
            return Err(EngineError::Unsupported(format!("slurm: not a Slurm node name: {:?}", job.node)));
        }
        if let Some(bad) = job.env.keys().chain(job.secrets.0.keys()).find(|k| !valid_env_name(k)) {
            return Err(EngineError::Unsupported(format!("slurm: not an environment variable name: {bad:?}")));
        }
        if job.image.is_some() {
            return Err(EngineError::Unsupported("slurm: this engine does not run container images".into()));
        }
        Ok(())
    }

    async fn do_submit(&self, job: &EngineJob) -> Result<Submitted, EngineError> {
        Self::check(job)?;
        let run_dir = self.run_dir(&job.name);
        let script = self.script(job, &run_dir);
        let body = self.rest.as_ref().map(|_| json!({ "script": script, "job": self.rest_fields(job, &run_dir) }));
        let native_spec = match &body {
            Some(b) => {
                // The secrets travel in the request's environment; the form Ferry shows names them only.
                let mut fields = b["job"].clone();
                for name in job.secrets.0.keys() {
                    if let Some(value) = fields["environment"].get_mut(name) {
                        *value = json!("(hidden)");
                    }
                }
                format!(
                    "{script}\n# slurmrestd job fields:\n{}\n",
                    serde_json::to_string_pretty(&fields).unwrap_or_default()
                )
            }
            None => script.clone(),
        };
        // Submitted before (a server that restarted, a retry): the same run, not a second one.
        let existing = match job.maybe_submitted {
            true => self.jobs(Some(&job.name)).await?.into_iter().max_by_key(|j| job_number(&j.id)),
            false => None,
        };
        if let Some(existing) = existing {
            self.remember(&existing.id, run_dir.join("output.log"));
            return Ok(Submitted { native_id: existing.id, native_spec });
        }
        tokio::fs::create_dir_all(&run_dir)
            .await
            .map_err(|e| unavailable(format!("cannot make the run directory {}: {e}", run_dir.display())))?;
        let id = match &body {
            Some(b) => {
                // For the record (slurmrestd takes both in the request): the script, and the JSON fields beside it.
                write_file(&run_dir.join("job.sh"), script.as_bytes(), 0o700).await?;
                let fields = serde_json::to_string_pretty(&b["job"]).unwrap_or_default();
                write_file(&run_dir.join("job.json"), fields.as_bytes(), 0o600).await?;
                self.rest_submit(job, b).await?
            }
            None => {
                let env: String = job
                    .env
                    .iter()
                    .chain(job.secrets.0.iter())
                    .map(|(k, v)| format!("export {k}={}\n", shell_quote(v)))
                    .collect::<String>();
                write_file(&run_dir.join("env.sh"), env.as_bytes(), 0o600).await?;
                self.cli_submit(job, &run_dir, &script).await?
            }
        };
        self.remember(&id, run_dir.join("output.log"));
        Ok(Submitted { native_id: id, native_spec })
    }

    async fn do_states(&self, ids: &[String]) -> Result<Vec<NativeState>, EngineError> {
        let wanted: Vec<&String> = ids.iter().filter(|id| valid_id(id)).collect();
        let mut known: HashMap<String, JobInfo> = HashMap::new();
        if !wanted.is_empty() {
            let jobs = if self.rest.is_none() {
                let list = wanted.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",");
                self.squeue(&[format!("--jobs={list}")]).await?
            } else if wanted.len() <= PER_JOB_QUERIES {
                let mut jobs = Vec::new();
                for id in &wanted {
                    jobs.extend(self.rest_job(id).await?);
                }
                jobs
            } else {
                self.rest_jobs().await?
            };
            known = jobs.into_iter().map(|j| (j.id.clone(), j)).collect();
            let gone: Vec<&str> = wanted.iter().filter(|id| !known.contains_key(**id)).map(|s| s.as_str()).collect();
            if self.rest.is_none() && !gone.is_empty() {
                known.extend(self.sacct(&gone).await.into_iter().map(|j| (j.id.clone(), j)));
            }
        }
        Ok(ids.iter().map(|id| known.get(id).map_or(NativeState::Unknown, native_state)).collect())
    }

    async fn do_cancel(&self, id: &str) -> Result<(), EngineError> {
        if !valid_id(id) {
            return Ok(());
        }
        if self.rest.is_some() {
            let v = self.call(reqwest::Method::DELETE, &format!("/job/{id}"), None).await?;
            match rest_errors(&v) {
                None => Ok(()),
                // Gone or already over: nothing to stop.
                Some((Some(ESLURM_INVALID_JOB_ID | ESLURM_ALREADY_DONE), _)) => Ok(()),
                Some((_, msg)) if msg.contains("Invalid job id") || msg.contains("already") => Ok(()),
                Some((code, msg)) => Err(classify_rest(code, &format!("cancel {id}: {msg}"))),
            }
        } else {
            let (ok, _, stderr) = self.command("scancel", &[id.to_string()], None, &[]).await?;
            if ok || stderr.contains("Invalid job id") || stderr.contains("already completing or completed") {
                Ok(())
            } else {
                Err(classify_cli(&format!("scancel {id}"), &stderr, false))
            }
        }
    }

    async fn do_output(&self, id: &str, offset: u64, max: usize) -> Result<Vec<u8>, EngineError> {
        if !valid_id(id) || max == 0 {
            return Ok(Vec::new());
        }
        let Some(path) = self.output_path(id).await? else { return Ok(Vec::new()) };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            // Not started yet: no output yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(format!("reading {}: {e}", path.display()))),
        };
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| unavailable(format!("reading {}: {e}", path.display())))?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        file.take(max as u64)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| unavailable(format!("reading {}: {e}", path.display())))?;
        Ok(buf)
    }
}

impl Engine for Slurm {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: false,
            // The allocation spans the nodes; the command runs on the first one (see the module's documentation).
            gangs: true,
            gpus_measured: false,
            native_view: true,
            // `--nodelist` pins a run through the CLI; slurmrestd v0.0.38 has no field for it.
            node_pinning: self.rest.is_none(),
            gpu_pinning: false,
        }
    }

    fn nodes(&self) -> BackendFuture<'_, Result<Vec<EngineNode>, EngineError>> {
        Box::pin(async move {
            if self.rest.is_some() {
                self.rest_nodes().await
            } else {
                self.cli_nodes().await
            }
        })
    }

    fn submit<'a>(&'a self, job: &'a EngineJob) -> BackendFuture<'a, Result<Submitted, EngineError>> {
        Box::pin(self.do_submit(job))
    }

    fn find<'a>(&'a self, prefix: &'a str) -> BackendFuture<'a, Result<Vec<Found>, EngineError>> {
        Box::pin(async move {
            let jobs = self.jobs(None).await?;
            Ok(jobs
                .into_iter()
                .filter(|j| j.name.starts_with(prefix))
                .map(|j| Found { name: j.name, native_id: j.id })
                .collect())
        })
    }

    fn states<'a>(&'a self, native_ids: &'a [String]) -> BackendFuture<'a, Result<Vec<NativeState>, EngineError>> {
        Box::pin(self.do_states(native_ids))
    }

    fn output<'a>(
        &'a self,
        native_id: &'a str,
        offset: u64,
        max: usize,
    ) -> BackendFuture<'a, Result<Vec<u8>, EngineError>> {
        Box::pin(self.do_output(native_id, offset, max))
    }

    fn cancel<'a>(&'a self, native_id: &'a str) -> BackendFuture<'a, Result<(), EngineError>> {
        Box::pin(self.do_cancel(native_id))
    }
}

/// What a run asks of Slurm, in Slurm's units.
struct Resources {
    nodes: u32,
    cpus_per_task: u64,
    mem_mib: u64,
    time_min: Option<u64>,
}

impl Resources {
    fn of(job: &EngineJob) -> Resources {
        Resources {
            nodes: job.nodes.max(1),
            cpus_per_task: job.cpu_millis.div_ceil(1000).max(1),
            mem_mib: job.memory_bytes.div_ceil(MIB).max(1),
            // Slurm's limits are whole minutes.
            time_min: job.max_runtime_s.map(|s| s.div_ceil(60).max(1)),
        }
    }
}

/// The `--comment`: who and which project, reduced to characters that cannot break a line or a directive.
fn comment(job: &EngineJob) -> String {
    fn clean(s: &str) -> String {
        let c: String = s.chars().filter(|c| c.is_ascii_alphanumeric() || "._@+-".contains(*c)).take(64).collect();
        if c.is_empty() {
            "-".into()
        } else {
            c
        }
    }
    format!("ferry:user={},project={}", clean(&job.user), clean(&job.project))
}

const ESLURM_INVALID_JOB_ID: i64 = 2017;
const ESLURM_ALREADY_DONE: i64 = 2021;

fn unavailable(detail: String) -> EngineError {
    EngineError::Unavailable { engine: KIND, detail }
}

fn rejected(detail: String) -> EngineError {
    EngineError::Rejected { engine: KIND, detail }
}

/// Words of Slurm's messages that say "try again later" rather than "no".
fn transient_words(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    [
        "unable to contact",
        "connect failure",
        "connection refused",
        "timed out",
        "temporarily",
        "try again",
        "zero bytes",
        "communication",
        "configuration source",
        "authentication",
        "munge",
        "standby",
        "resource temporarily unavailable",
    ]
    .iter()
    .any(|w| m.contains(w))
}

/// A failed command: an outage when its words say so (or when it is a query), else Slurm's refusal.
fn classify_cli(what: &str, stderr: &str, submission: bool) -> EngineError {
    let msg = stderr.lines().map(|l| l.trim_start_matches("sbatch: error: ")).collect::<Vec<_>>().join("; ");
    let detail = format!("{what}: {}", if msg.is_empty() { "no message" } else { &msg });
    if !submission || transient_words(&msg) {
        unavailable(detail)
    } else {
        rejected(detail)
    }
}

/// A slurmrestd error: Slurm's own refusals (2000-4999: ESLURM_*, and 9000+: a request it could not parse) are
/// verdicts; communication, socket and authentication errors, and the rest, are outages.
fn classify_rest(code: Option<i64>, detail: &str) -> EngineError {
    match code {
        Some(c) if (2000..5000).contains(&c) || c >= 9000 => {
            if transient_words(detail) {
                unavailable(detail.to_string())
            } else {
                rejected(detail.to_string())
            }
        }
        _ => unavailable(detail.to_string()),
    }
}

/// The first error of a slurmrestd answer: its code and words.
fn rest_errors(v: &Value) -> Option<(Option<i64>, String)> {
    let first = v.get("errors")?.as_array()?.first()?;
    let code = ["error_number", "error_code", "errno"].iter().find_map(|k| first.get(*k).and_then(as_i64));
    let words: Vec<&str> =
        ["error", "description"].iter().filter_map(|k| first.get(*k).and_then(Value::as_str)).collect();
    let msg = if words.is_empty() { first.to_string() } else { words.join(": ") };
    Some((code, msg))
}

/// A number, or the `{"set": true, "number": N}` form of later OpenAPI versions.
fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::Object(o) => match (o.get("set").and_then(Value::as_bool), o.get("number")) {
            (Some(false), _) => None,
            (_, Some(n)) => n.as_i64(),
            _ => None,
        },
        _ => None,
    }
}

/// A string, or the first of an array of strings (later versions give states as arrays).
fn as_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("+"),
        _ => String::new(),
    }
}

fn rest_job_list(v: &Value) -> Vec<JobInfo> {
    v.get("jobs").and_then(Value::as_array).map(|a| a.iter().filter_map(parse_rest_job).collect()).unwrap_or_default()
}

fn parse_rest_job(j: &Value) -> Option<JobInfo> {
    let id = j.get("job_id").and_then(as_i64)?;
    let time = |k: &str| j.get(k).and_then(as_i64).filter(|t| *t > 0);
    let raw_exit = match j.get("exit_code") {
        // v0.0.40+: {"return_code": N, "signal": {"signal_id": S}}; turned back into a wait status.
        Some(Value::Object(o)) if o.contains_key("return_code") => {
            let code = o.get("return_code").and_then(as_i64).unwrap_or(0);
            let sig = o.get("signal").and_then(|s| s.get("signal_id")).and_then(as_i64).unwrap_or(0);
            Some((code << 8) | (sig & 0x7f))
        }
        Some(v) => as_i64(v),
        None => None,
    };
    Some(JobInfo {
        id: id.to_string(),
        name: as_text(j.get("name")),
        state: base_state(&as_text(j.get("job_state"))),
        reason: as_text(j.get("state_reason")),
        start_s: time("start_time"),
        end_s: time("end_time"),
        raw_exit,
        stdout: as_text(j.get("standard_output")),
    })
}

/// One line of `squeue --Format=JobID:|,Name:|,State:|,Reason:|,StartTime:|,EndTime:|,exit_code:|,STDOUT:`.
fn parse_squeue_line(line: &str) -> Option<JobInfo> {
    let mut f = line.splitn(8, '|');
    let id = f.next()?.trim().to_string();
    if !valid_id(&id) {
        return None;
    }
    let name = f.next()?.trim().to_string();
    let state = base_state(f.next()?.trim());
    let reason = f.next()?.trim().to_string();
    let time = |s: &str| s.trim().parse::<i64>().ok().filter(|t| *t > 0);
    let start_s = time(f.next()?);
    let end_s = time(f.next()?);
    let raw_exit = f.next()?.trim().parse::<i64>().ok();
    let stdout = f.next().unwrap_or("").trim_end().trim_end_matches('|').to_string();
    Some(JobInfo { id, name, state, reason, start_s, end_s, raw_exit, stdout })
}

/// One line of `sacct -P --format=JobIDRaw,JobName,State,ExitCode,Start,End` (ExitCode is `code:signal`).
fn parse_sacct_line(line: &str) -> Option<JobInfo> {
    let f: Vec<&str> = line.split('|').collect();
    if f.len() < 6 || !valid_id(f[0]) {
        return None;
    }
    let time = |s: &str| s.trim().parse::<i64>().ok().filter(|t| *t > 0);
    let raw_exit = f[3].split_once(':').and_then(|(c, s)| Some((c.parse::<i64>().ok()? << 8) | s.parse::<i64>().ok()?));
    Some(JobInfo {
        id: f[0].to_string(),
        name: f[1].to_string(),
        state: base_state(f[2]),
        reason: String::new(),
        start_s: time(f[4]),
        end_s: time(f[5]),
        raw_exit,
        stdout: String::new(),
    })
}

/// `CANCELLED by 0` and `RUNNING+...` name the base state first.
fn base_state(s: &str) -> String {
    s.split(|c: char| c == '+' || c.is_whitespace()).next().unwrap_or("").to_ascii_uppercase()
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

fn job_number(id: &str) -> u64 {
    id.parse().unwrap_or(0)
}

/// Slurm's view of a job, as Ferry's.
fn native_state(j: &JobInfo) -> NativeState {
    let us = |s: i64| s.saturating_mul(1_000_000);
    let reason = (!j.reason.is_empty() && j.reason != "None" && j.reason != "(null)").then(|| j.reason.clone());
    let (exit_code, signal) = match j.raw_exit {
        Some(raw) if raw & 0x7f != 0 => (None, Some((raw & 0x7f) as i32)),
        Some(raw) => (Some(((raw >> 8) & 0xff) as i32), None),
        None => (None, None),
    };
    let finished =
        |end: RunEnd, exit_code: Option<i32>, signal: Option<i32>, message: Option<String>| NativeState::Finished {
            end,
            exit_code,
            signal,
            started_at_us: j.start_s.filter(|s| j.end_s.is_none_or(|e| *s <= e)).map(us),
            finished_at_us: us(j.end_s.unwrap_or_else(now_s)),
            message,
        };
    let why = |word: &str| Some(reason.as_ref().map_or_else(|| word.to_string(), |r| format!("{word}: {r}")));
    match j.state.as_str() {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "CONFIGURING" => {
            NativeState::Pending { reason: reason.or_else(|| Some(j.state.clone())) }
        }
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" | "RESIZING" | "SUSPENDED" | "STOPPED" => {
            NativeState::Running { started_at_us: us(j.start_s.unwrap_or_else(now_s)) }
        }
        "COMPLETED" => finished(RunEnd::Exited, exit_code.or(Some(0)), signal, None),
        // Failed for another reason than its program's end: refused after Slurm recorded it (BadConstraints), or
        // not launched (JobLaunchFailure). The exit status is then Slurm's, not the program's: only in the message.
        "FAILED" if reason.as_deref().is_some_and(|r| r != "NonZeroExitCode" && r != "RaisedSignal") => {
            let status = j.raw_exit.map(|raw| format!(" (exit status {}:{})", (raw >> 8) & 0xff, raw & 0x7f));
            let message = why("FAILED").map(|m| m + status.as_deref().unwrap_or(""));
            finished(RunEnd::FailedToStart, None, None, message)
        }
        "FAILED" => finished(RunEnd::Exited, exit_code, signal, None),
        "CANCELLED" => finished(RunEnd::Stopped, None, signal, why("CANCELLED")),
        "TIMEOUT" | "DEADLINE" => finished(RunEnd::TimedOut, None, signal, why(&j.state)),
        "BOOT_FAIL" | "LAUNCH_FAILED" => finished(RunEnd::FailedToStart, None, None, why(&j.state)),
        "OUT_OF_MEMORY" | "NODE_FAIL" | "PREEMPTED" | "SPECIAL_EXIT" | "REVOKED" => {
            finished(RunEnd::Exited, exit_code, signal, why(&j.state))
        }
        other => NativeState::Pending { reason: Some(format!("Slurm state {other}")) },
    }
}

fn now_s() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// GPUs of a gres string (`gpu:fake:4`, `gpu:2(S:0-1),gpu:a100:2`): (model, count) per GPU entry.
fn parse_gres(gres: &str) -> Vec<(String, u32)> {
    let mut entries = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in gres.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(&gres[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries.push(&gres[start..]);
    entries
        .into_iter()
        .filter_map(|e| {
            let e = e.split('(').next().unwrap_or("").trim();
            let parts: Vec<&str> = e.split(':').collect();
            if parts.first() != Some(&"gpu") || parts.len() < 2 {
                return None;
            }
            let count = parts.last()?.parse::<u32>().ok()?;
            let model = if parts.len() >= 3 { parts[1].to_string() } else { "gpu".to_string() };
            Some((model, count))
        })
        .collect()
}

fn gpus_of(gres: &str) -> Vec<Gpu> {
    let mut gpus = Vec::new();
    for (model, count) in parse_gres(gres) {
        for _ in 0..count {
            let index = gpus.len() as u32;
            gpus.push(Gpu { index, model: model.clone(), memory_bytes: 0, uuid: None, source: "slurm".into() });
        }
    }
    gpus
}

/// Whether a node in this state (base word and flags, any case) takes work.
fn node_up(state: &str) -> bool {
    let s = state.to_ascii_uppercase();
    let mut words = s.split('+');
    let base = words.next().unwrap_or("").trim_end_matches(['*', '~', '#', '!', '%', '$', '@', '^', '-']);
    let bad_flag = words.any(|f| {
        ["DRAIN", "FAIL", "NOT_RESPONDING", "POWER", "MAINT", "REBOOT", "INVALID"].iter().any(|b| f.starts_with(b))
    });
    // A trailing `*` (not responding) or `~` (powered off) in scontrol's word also means it takes nothing now.
    let marked = s.split('+').next().is_some_and(|b| b.ends_with('*') || b.ends_with('~'));
    matches!(base, "IDLE" | "MIXED" | "ALLOCATED" | "ALLOC" | "MIX" | "COMPLETING") && !bad_flag && !marked
}

fn parse_rest_node(n: &Value) -> Option<EngineNode> {
    let name = n.get("name").and_then(Value::as_str)?.to_string();
    let flags: Vec<String> = n
        .get("state_flags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default();
    let base = as_text(n.get("state")).to_ascii_lowercase();
    let full = std::iter::once(base.clone()).chain(flags).collect::<Vec<_>>().join("+");
    let num = |k: &str| n.get(k).and_then(as_i64).filter(|v| *v >= 0).map(|v| v as u64);
    let gres_used = as_text(n.get("gres_used"));
    Some(EngineNode {
        cpu_millis: num("cpus")?.saturating_mul(1000),
        memory_bytes: num("real_memory")?.saturating_mul(MIB),
        gpus: gpus_of(&as_text(n.get("gres"))),
        up: node_up(&full),
        state: full.to_ascii_lowercase(),
        allocated_cpu_millis: num("alloc_cpus").map(|c| c.saturating_mul(1000)),
        allocated_memory_bytes: num("alloc_memory").map(|m| m.saturating_mul(MIB)),
        allocated_gpus: (!gres_used.is_empty()).then(|| parse_gres(&gres_used).iter().map(|g| g.1).sum()),
        name,
    })
}

/// One line of `scontrol show nodes --oneliner --details`: `Key=value` words (the first of each key counts; the
/// values Ferry reads come before the free-text ones such as `OS=`).
fn parse_scontrol_node(line: &str) -> Option<EngineNode> {
    let mut kv: HashMap<&str, &str> = HashMap::new();
    for word in line.split_whitespace() {
        if let Some((k, v)) = word.split_once('=') {
            kv.entry(k).or_insert(v);
        }
    }
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
    let name = kv.get("NodeName")?.to_string();
    let state = kv.get("State").copied().unwrap_or("UNKNOWN");
    let gres = kv.get("Gres").copied().unwrap_or("");
    Some(EngineNode {
        cpu_millis: num("CPUTot")?.saturating_mul(1000),
        memory_bytes: num("RealMemory")?.saturating_mul(MIB),
        gpus: gpus_of(if gres == "(null)" { "" } else { gres }),
        up: node_up(state),
        state: state.to_ascii_lowercase(),
        allocated_cpu_millis: num("CPUAlloc").map(|c| c.saturating_mul(1000)),
        allocated_memory_bytes: num("AllocMem").map(|m| m.saturating_mul(MIB)),
        allocated_gpus: kv.get("GresUsed").map(|g| parse_gres(g).iter().map(|g| g.1).sum()),
        name,
    })
}

async fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), EngineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_path_buf();
    let data = data.to_vec();
    let what = path.display().to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&path)?;
        // An existing file keeps its mode through open(2): set it.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(&data)?;
        f.sync_all()
    })
    .await
    .map_err(|e| unavailable(format!("writing {what}: {e}")))?
    .map_err(|e| unavailable(format!("writing {what}: {e}")))
}

fn clip(s: &str, n: usize) -> String {
    let s = s.trim();
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Inspection for tests: the batch script and, for REST, the JSON fields a job would be submitted with.
#[doc(hidden)]
pub fn render(config: Config, job: &EngineJob) -> Result<(String, Option<Value>), String> {
    let s = Slurm::new(config)?;
    Slurm::check(job).map_err(|e| e.to_string())?;
    let run_dir = s.run_dir(&job.name);
    let fields = s.rest.as_ref().map(|_| s.rest_fields(job, &run_dir));
    Ok((s.script(job, &run_dir), fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> EngineJob {
        EngineJob {
            name: "ferry-t-1-0".into(),
            job_id: 1,
            attempt: 0,
            node: "vm".into(),
            user: "a; rm -rf /".into(),
            project: "line\n#SBATCH --wrap=x".into(),
            command: vec!["python3".into(), "it's $(x)".into()],
            env: BTreeMap::from([("A".into(), "x\ny".into())]),
            secrets: Default::default(),
            secrets_fetch: None,
            workdir: "/tmp/a b".into(),
            cpu_millis: 1500,
            memory_bytes: 100 * MIB + 1,
            gpus: 2,
            nodes: 1,
            max_runtime_s: Some(61),
            image: None,
            maybe_submitted: false,
        }
    }

    fn config(rest: bool) -> Config {
        Config {
            rest_url: rest.then(|| "http://127.0.0.1:1".into()),
            user: Some("root".into()),
            token: rest.then(|| "t".into()),
            token_file: None,
            token_lifespan_s: None,
            partition: Some("debug".into()),
            account: None,
            work_dir: "/shared/ferry".into(),
            slurm_conf: None,
            api_version: None,
        }
    }

    #[test]
    fn the_script_maps_resources_and_quotes_user_text() {
        let (script, fields) = render(config(false), &job()).unwrap();
        assert!(fields.is_none());
        for line in [
            "#SBATCH --job-name=ferry-t-1-0\n",
            "#SBATCH --cpus-per-task=2\n",
            "#SBATCH --mem=101\n",
            "#SBATCH --gres=gpu:2\n",
            "#SBATCH --time=2\n",
            "#SBATCH --nodelist=vm\n",
            "#SBATCH --partition=debug\n",
            "#SBATCH --output=/shared/ferry/ferry-t-1-0/output.log\n",
            "#SBATCH --comment=ferry:user=arm-rf,project=lineSBATCH--wrapx\n",
            "cd -- '/tmp/a b' ||",
            "exec python3 'it'\\''s $(x)'\n",
        ] {
            assert!(script.contains(line), "{line:?} missing from:\n{script}");
        }
        // Every #SBATCH line comes before the first command.
        let first_command = script.lines().position(|l| !l.starts_with('#')).unwrap();
        assert!(script.lines().skip(first_command).all(|l| !l.starts_with("#SBATCH")));

        let (script, fields) = render(config(true), &job()).unwrap();
        assert!(!script.contains("#SBATCH"));
        let f = fields.unwrap();
        assert_eq!(f["gres"], "gpu:2");
        assert_eq!(f["memory_per_node"], 101);
        assert_eq!(f["time_limit"], 2);
        assert_eq!(f["environment"]["A"], "x\ny");
        assert_eq!(f["current_working_directory"], "/tmp/a b");
    }

    #[test]
    fn config_is_checked() {
        let mut c = config(false);
        c.work_dir = "relative".into();
        assert!(connect(c).is_err());
        let mut c = config(false);
        c.work_dir = "/a/100%x".into();
        assert!(connect(c).is_err());
        let mut c = config(false);
        c.partition = Some("a\nb".into());
        assert!(connect(c).is_err());
        let mut c = config(false);
        c.token = Some("t".into());
        assert!(connect(c).is_err());
        assert!(connect(config(true)).is_ok());
        let bad: Result<Config, _> = serde_json::from_value(json!({"work_dir": "/x", "nope": 1}));
        assert!(bad.is_err());
    }

    #[test]
    fn states_map() {
        let j = |state: &str, reason: &str, raw: i64| JobInfo {
            id: "1".into(),
            state: state.into(),
            reason: reason.into(),
            start_s: Some(10),
            end_s: Some(20),
            raw_exit: Some(raw),
            ..Default::default()
        };
        assert!(matches!(
            native_state(&j("COMPLETED", "None", 0)),
            NativeState::Finished { end: RunEnd::Exited, exit_code: Some(0), .. }
        ));
        assert!(matches!(
            native_state(&j("FAILED", "NonZeroExitCode", 768)),
            NativeState::Finished { end: RunEnd::Exited, exit_code: Some(3), signal: None, .. }
        ));
        assert!(matches!(
            native_state(&j("CANCELLED", "None", 15)),
            NativeState::Finished { end: RunEnd::Stopped, signal: Some(15), .. }
        ));
        assert!(matches!(native_state(&j("TIMEOUT", "None", 0)), NativeState::Finished { end: RunEnd::TimedOut, .. }));
        assert_eq!(
            native_state(&j("PENDING", "Resources", 0)),
            NativeState::Pending { reason: Some("Resources".into()) }
        );
        assert_eq!(native_state(&j("RUNNING", "None", 0)), NativeState::Running { started_at_us: 10_000_000 });
        assert!(matches!(
            native_state(&j("NODE_FAIL", "None", 0)),
            NativeState::Finished { message: Some(m), .. } if m == "NODE_FAIL"
        ));
    }

    #[test]
    fn squeue_and_nodes_parse() {
        let j = parse_squeue_line("4|ferry-a-1-0|RUNNING|None|1796284480|NONE|0|/x/o|ut.log            ").unwrap();
        assert_eq!((j.id.as_str(), j.name.as_str(), j.start_s, j.end_s), ("4", "ferry-a-1-0", Some(1796284480), None));
        assert_eq!(j.stdout, "/x/o|ut.log");
        let n = parse_scontrol_node(
            "NodeName=vm CPUAlloc=2 CPUTot=32 Gres=gpu:fake:4 GresUsed=gpu:fake:2(IDX:0-1) OS=Linux 6 #1 \
             RealMemory=16000 AllocMem=100 State=IDLE+DRAIN",
        )
        .unwrap();
        assert_eq!(n.gpus.len(), 4);
        assert_eq!(n.gpus[3].index, 3);
        assert_eq!(n.gpus[0].model, "fake");
        assert_eq!(n.allocated_gpus, Some(2));
        assert!(!n.up);
        assert!(node_up("MIXED") && node_up("idle") && !node_up("DOWN*") && !node_up("IDLE*"));
        let j = parse_sacct_line("12|ferry-a-1-0|CANCELLED by 0|0:15|1796284939|1796284940").unwrap();
        assert_eq!((j.state.as_str(), j.raw_exit, j.end_s), ("CANCELLED", Some(15), Some(1796284940)));
        assert_eq!(parse_sacct_line("1|wrap|FAILED|3:0|1|2").unwrap().raw_exit, Some(768));
        assert_eq!(parse_gres("gpu:2(S:0,1),gpu:a100:3,license:1"), vec![("gpu".into(), 2), ("a100".into(), 3)]);
    }
}
