//! `ferry history export`: the installation's cluster and the jobs submitted since a time, written as the
//! simulator's cluster file and workload, so `ferry sim --cluster DIR/cluster.toml --workload DIR/jobs.csv` replays
//! them (against the cluster as it is, or as an admin edits it).
//!
//! The conversion is pure (`cluster_toml`, `JobRows`) and tested by reading its output back with the simulator's own
//! readers. The command writes both files to temporary files in the output directory, page by page for the jobs, and
//! renames them into place only once everything is written: an error leaves no half-written file behind.
//!
//! How jobs become rows: a job arrives at its submission time relative to the first job written, and runs for its
//! last attempt's measured time (started to finished). A job still running at export runs for its time so far, with
//! an empty outcome. A job that never ran (still waiting, or cancelled or failed before it started) has no duration
//! to replay: it is left out, with a comment line in the file and a count on standard error, as is a job whose GPU
//! types or selector hold a `|`, which the workload format keeps as a separator.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ferry_api::history::{HistoryCluster, HistoryJob, HistoryTemplate, HISTORY_PAGE_MAX};
use ferry_api::jobs::JobState;
use ferry_api::tokens::QuotaAmount;
use serde::Serialize;

use crate::exit::{self, CliError};
use crate::Global;

/// The cluster file's name in the output directory.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// The workload's name in the output directory.
pub const JOBS_FILE: &str = "jobs.csv";
/// The team column of a job that counts against no team: a name no Ferry team can have.
pub const NO_TEAM: &str = "(none)";
/// The workload's header: the simulator's columns, every optional one included.
pub const JOBS_HEADER: &str = "arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share,priority,nodes,\
                               project,selector,pool,image,max_runtime_s,outcome,exit_code,name";

#[derive(Args)]
pub struct HistoryArgs {
    #[command(subcommand)]
    command: HistoryCommand,
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Write the cluster (pools, quotas in force, nodes) and the jobs submitted since a time as DIR/cluster.toml and
    /// DIR/jobs.csv, for `ferry sim --cluster DIR/cluster.toml --workload DIR/jobs.csv` (installation admins).
    Export {
        /// How far back: a duration (`30d`, `12h`, `1h30m`) or an RFC 3339 time (`2025-05-01T00:00:00Z`).
        #[arg(long, default_value = "30d")]
        since: String,
        /// The directory to write into; made when missing.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace DIR/cluster.toml and DIR/jobs.csv when they exist.
        #[arg(long)]
        force: bool,
    },
}

pub async fn history(g: &Global, args: HistoryArgs) -> Result<i32, CliError> {
    match args.command {
        HistoryCommand::Export { since, out, force } => export(g, &since, &out, force).await,
    }
}

async fn export(g: &Global, since: &str, out: &Path, force: bool) -> Result<i32, CliError> {
    let since = since_param(since)?;
    check_out_dir(out, force)?;
    let client = g.client()?;
    let cluster = client.history_cluster().await?;
    std::fs::create_dir_all(out).map_err(|e| io_error(out, "make the directory", &e))?;
    let (toml, notes) = cluster_toml(&cluster);
    let mut cluster_file = temp_file(out)?;
    cluster_file.write_all(toml.as_bytes()).map_err(|e| io_error(cluster_file.path(), "write", &e))?;
    let mut jobs_file = std::io::BufWriter::new(temp_file(out)?);
    let mut rows = JobRows::default();
    let write_error = |e: std::io::Error| io_error(&out.join(JOBS_FILE), "write", &e);
    writeln!(jobs_file, "{JOBS_HEADER}").map_err(write_error)?;
    let (mut param, mut after) = (since.clone(), None);
    loop {
        let page = client.history_jobs(&param, after, HISTORY_PAGE_MAX).await?;
        for job in &page.jobs {
            jobs_file.write_all(rows.row(job, page.now_us).as_bytes()).map_err(write_error)?;
        }
        match page.next_after {
            Some(next) => {
                // Later pages start where the first one was resolved, not from a "now" that moved on.
                param = rfc3339_us(page.since_us);
                after = Some(next);
            }
            None => break,
        }
    }
    let jobs_file = jobs_file.into_inner().map_err(|e| write_error(e.into_error()))?;
    persist(jobs_file, &out.join(JOBS_FILE))?;
    persist(cluster_file, &out.join(CLUSTER_FILE))?;
    for note in notes {
        eprintln!("note: {note}");
    }
    eprintln!(
        "wrote {} ({}, {}, {}) and {} ({})",
        out.join(CLUSTER_FILE).display(),
        crate::format::counted(cluster.pools.len(), "pool"),
        crate::format::counted(cluster.nodes.len(), "node"),
        crate::format::counted(cluster.teams.len(), "team"),
        out.join(JOBS_FILE).display(),
        rows.summary()
    );
    eprintln!(
        "replay them with: ferry sim --cluster {} --workload {}",
        out.join(CLUSTER_FILE).display(),
        out.join(JOBS_FILE).display()
    );
    Ok(0)
}

/// `--since` as the API takes it: a duration back from now in seconds, or the RFC 3339 time as given.
pub fn since_param(text: &str) -> Result<String, CliError> {
    let text = text.trim();
    if let Ok(seconds) = ferry_units::parse_duration_s(text) {
        return Ok(format!("{seconds}s"));
    }
    if humantime::parse_rfc3339_weak(text).is_ok() {
        return Ok(text.to_string());
    }
    Err(CliError::new(
        exit::INVALID,
        format!(
            "--since {text}: not a duration or a time; write how far back (30d, 12h, 1h30m) or an RFC 3339 time \
             (2025-05-01T00:00:00Z)"
        ),
    ))
}

/// Refuses to replace an earlier export unless `--force` says to.
fn check_out_dir(out: &Path, force: bool) -> Result<(), CliError> {
    if out.exists() && !out.is_dir() {
        return Err(CliError::new(
            exit::INVALID,
            format!("--out {}: a file, not a directory; name a directory to write the files into", out.display()),
        ));
    }
    if force {
        return Ok(());
    }
    for name in [CLUSTER_FILE, JOBS_FILE] {
        let path = out.join(name);
        if path.exists() {
            return Err(CliError::new(
                exit::CONFLICT,
                format!(
                    "{} already exists; pass --force to replace it, or choose another --out directory",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn temp_file(dir: &Path) -> Result<tempfile::NamedTempFile, CliError> {
    tempfile::Builder::new()
        .prefix(".ferry-export-")
        .tempfile_in(dir)
        .map_err(|e| io_error(dir, "write a temporary file in", &e))
}

fn persist(file: tempfile::NamedTempFile, path: &Path) -> Result<(), CliError> {
    file.as_file().sync_all().map_err(|e| io_error(path, "write", &e))?;
    file.persist(path).map_err(|e| io_error(path, "write", &e.error))?;
    Ok(())
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> CliError {
    CliError::new(
        exit::INVALID,
        format!("cannot {what} {}: {e}; choose an --out directory you may write to", path.display()),
    )
}

fn rfc3339_us(us: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_micros(at).to_string()
}

/// The cluster file, and notes on what it could not say exactly.
pub fn cluster_toml(cluster: &HistoryCluster) -> (String, Vec<String>) {
    let mut notes = Vec::new();
    let file = ClusterOut {
        fair_share_half_life: (cluster.fair_share_half_life_s > 0).then(|| duration(cluster.fair_share_half_life_s)),
        gpu_placement: cluster.gpu_placement.clone(),
        queue_order: cluster.queue_order.clone().filter(|o| o != "fair-share"),
        queue_aging: cluster.queue_aging_s.map(|s| if s == 0 { "off".to_string() } else { duration(s) }),
        queue_lease: cluster.queue_lease_s.map(|s| if s == 0 { "off".to_string() } else { duration(s) }),
        queue_levels: cluster.queue_levels_gpu_s.as_ref().map(|levels| levels.iter().map(|s| duration(*s)).collect()),
        reserve_depth: cluster.reserve_depth,
        pool: cluster.pools.iter().map(pool_out).collect(),
        team: cluster.teams.iter().map(team_out).collect(),
        node: cluster
            .nodes
            .iter()
            .map(|n| NodeOut {
                name: n.name.clone(),
                pool: n.pool.clone(),
                cpus: cpus_number(n.cpu_millis),
                memory: memory(n.memory_bytes),
                gpus: n.gpu_models.len() as u32,
                gpu_model: node_model(&n.name, &n.gpu_models, &mut notes),
                labels: n.labels.clone(),
            })
            .collect(),
    };
    if file.node.is_empty() && !cluster.pools.iter().any(|p| p.elastic.is_some()) {
        notes.push(format!(
            "the server knows no node, and ferry sim needs one: add [[node]] tables to {CLUSTER_FILE} before replaying"
        ));
    }
    let mut text = String::from(
        "# The cluster as Ferry's scheduler had it at export (`ferry history export`): pools in their order, the \
         quotas in force\n# (the configuration file's and those set through the API) and every node. Edit it to \
         try another cluster.\n",
    );
    if cluster.pools.iter().any(|p| !p.declared) {
        text.push_str(
            "# A pool the server's configuration does not declare comes after every declared one (order = \
             2147483647), as in the scheduler.\n",
        );
    }
    text.push('\n');
    // Serialising these plain structs cannot fail; an empty file would be refused by ferry sim anyway.
    text.push_str(&toml::to_string(&file).unwrap_or_default());
    (text, notes)
}

/// The model a node's GPUs are: the most common one when they differ (the simulator has one model per node).
fn node_model(node: &str, models: &[String], notes: &mut Vec<String>) -> Option<String> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for model in models.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
        *counts.entry(model).or_default() += 1;
    }
    let most = counts.iter().max_by_key(|(model, count)| (**count, std::cmp::Reverse(**model)))?.0.to_string();
    if counts.len() > 1 {
        let all: Vec<&str> = counts.keys().copied().collect();
        notes
            .push(format!("node {node} has GPUs of several models ({}); the cluster file says {most}", all.join(", ")));
    }
    Some(most)
}

#[derive(Serialize)]
struct ClusterOut {
    fair_share_half_life: Option<String>,
    gpu_placement: String,
    queue_order: Option<String>,
    queue_aging: Option<String>,
    queue_lease: Option<String>,
    queue_levels: Option<Vec<String>>,
    reserve_depth: Option<u32>,
    pool: Vec<PoolOut>,
    team: Vec<TeamOut>,
    node: Vec<NodeOut>,
}

#[derive(Serialize)]
struct PoolOut {
    name: String,
    order: i32,
    burst: bool,
    burst_after: Option<String>,
    price_gpu_hour: Option<f64>,
    price_cpu_hour: Option<f64>,
    /// An elastic pool's machine price, which the simulator bills its nodes at.
    price_node_hour: Option<f64>,
    max_nodes: Option<u32>,
    startup: Option<String>,
    idle_release: Option<String>,
    startup_timeout: Option<String>,
    retry_after: Option<String>,
    node: Option<TemplateOut>,
    /// Written only when false: true is the simulator's default.
    #[serde(skip_serializing_if = "is_true")]
    images: bool,
    #[serde(skip_serializing_if = "is_true")]
    gangs: bool,
}

fn is_true(value: &bool) -> bool {
    *value
}

#[derive(Serialize)]
struct TemplateOut {
    cpus: f64,
    memory: String,
    gpus: u32,
    gpu_model: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct TeamOut {
    name: String,
    quota: AmountOut,
    borrow_limit: Option<AmountOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    project: Vec<ProjectOut>,
}

#[derive(Serialize)]
struct ProjectOut {
    name: String,
    quota: AmountOut,
    borrow_limit: Option<AmountOut>,
}

#[derive(Serialize)]
struct AmountOut {
    gpus: Option<u32>,
    cpus: Option<f64>,
    memory: Option<String>,
}

#[derive(Serialize)]
struct NodeOut {
    name: String,
    pool: String,
    cpus: f64,
    memory: String,
    gpus: u32,
    gpu_model: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

fn pool_out(p: &ferry_api::history::HistoryPool) -> PoolOut {
    let elastic = p.elastic.as_ref();
    PoolOut {
        name: p.name.clone(),
        order: p.order,
        burst: p.burst,
        burst_after: p.burst_after_s.filter(|_| p.burst).map(duration),
        price_gpu_hour: p.price_gpu_hour,
        price_cpu_hour: p.price_cpu_hour,
        price_node_hour: elastic.and_then(|e| e.price_node_hour),
        max_nodes: elastic.map(|e| e.max_nodes),
        startup: elastic.map(|e| duration(e.startup_s)),
        idle_release: elastic.map(|e| duration(e.idle_release_s)),
        startup_timeout: elastic.filter(|e| e.startup_timeout_s > 0).map(|e| duration(e.startup_timeout_s)),
        retry_after: elastic.filter(|e| e.retry_after_s > 0).map(|e| duration(e.retry_after_s)),
        node: elastic.map(|e| template_out(&e.node)),
        images: p.images,
        gangs: p.gangs,
    }
}

fn template_out(t: &HistoryTemplate) -> TemplateOut {
    TemplateOut {
        cpus: cpus_number(t.cpu_millis),
        memory: memory(t.memory_bytes),
        gpus: t.gpus,
        gpu_model: t.gpu_model.clone(),
        labels: t.labels.clone(),
    }
}

fn team_out(t: &ferry_api::history::HistoryTeam) -> TeamOut {
    TeamOut {
        name: t.name.clone(),
        quota: amount_out(&t.quota),
        borrow_limit: t.borrow_limit.as_ref().map(amount_out),
        project: t
            .projects
            .iter()
            .map(|p| ProjectOut {
                name: p.name.clone(),
                quota: amount_out(&p.quota),
                borrow_limit: p.borrow_limit.as_ref().map(amount_out),
            })
            .collect(),
    }
}

fn amount_out(a: &QuotaAmount) -> AmountOut {
    AmountOut { gpus: a.gpus, cpus: a.cpu_millis.map(cpus_number), memory: a.memory_bytes.map(memory) }
}

fn cpus_number(cpu_millis: u64) -> f64 {
    cpu_millis as f64 / 1000.0
}

/// A memory size exactly, in the largest binary unit that divides it.
pub fn memory(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes > 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// CPUs as the workload writes them: whole CPUs, or thousandths (`250m`).
fn cpus(cpu_millis: u64) -> String {
    if cpu_millis.is_multiple_of(1000) {
        (cpu_millis / 1000).to_string()
    } else {
        format!("{cpu_millis}m")
    }
}

/// A duration exactly, in the largest unit that divides it, as Ferry writes durations.
pub fn duration(seconds: u64) -> String {
    for (unit, scale) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if seconds > 0 && seconds.is_multiple_of(scale) {
            return format!("{}{unit}", seconds / scale);
        }
    }
    format!("{seconds}s")
}

/// Milliseconds as seconds with up to three decimals.
fn seconds(ms: u64) -> String {
    match ms % 1000 {
        0 => (ms / 1000).to_string(),
        rest => format!("{}.{rest:03}", ms / 1000).trim_end_matches('0').to_string(),
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
fn field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) || text.starts_with('#') {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Turns jobs into workload lines, in order, keeping count of what it wrote and left out.
#[derive(Debug, Default)]
pub struct JobRows {
    /// The submission time of the first job written: arrival 0.
    first_us: Option<i64>,
    pub written: u64,
    /// Jobs still running at export, written with their time so far.
    pub running: u64,
    /// Jobs left out, by why.
    pub left_out: BTreeMap<&'static str, u64>,
}

impl JobRows {
    /// The line (or comment line, for a job left out) of `job`, read when the server's clock said `now_us`.
    pub fn row(&mut self, job: &HistoryJob, now_us: i64) -> String {
        let Some(started_us) = job.started_at_us else {
            let why = match job.state {
                JobState::Queued | JobState::Starting => "still waiting at export",
                _ => "ended before it ever ran",
            };
            return self.leave_out(job, why);
        };
        if job.gpu_types.iter().chain(job.selector.iter().flat_map(|(k, v)| [k, v])).any(|t| t.contains('|')) {
            return self.leave_out(job, "a GPU type or label with a |, which the workload format cannot hold");
        }
        let (end_us, outcome) = match (job.finished_at_us, job.state.is_terminal()) {
            (Some(finished), true) => (finished, job.state.name()),
            _ => {
                self.running += 1;
                (now_us, "")
            }
        };
        let first_us = *self.first_us.get_or_insert(job.submitted_at_us);
        // Submission times only grow with ids unless the server's clock was stepped back; such a job arrives at 0.
        let arrival_ms = (job.submitted_at_us - first_us).max(0) as u64 / 1000;
        // A job that ended the moment it started still ran for a moment; the simulator needs a duration above 0.
        let duration_ms = ((end_us - started_us).max(0) as u64 / 1000).max(1);
        let selector: Vec<String> = job.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        self.written += 1;
        let mut line = String::new();
        let _ = writeln!(
            line,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            seconds(arrival_ms),
            seconds(duration_ms),
            job.gpus,
            cpus(job.cpu_millis),
            memory(job.memory_bytes),
            field(&job.owner),
            field(job.team.as_deref().unwrap_or(NO_TEAM)),
            field(&job.gpu_types.join("|")),
            if job.gpu_share_milli > 0 { job.gpu_share_milli.to_string() } else { String::new() },
            job.priority.value(),
            job.nodes.max(1),
            field(job.project.as_deref().unwrap_or("")),
            field(&selector.join("|")),
            field(job.pool.as_deref().unwrap_or("")),
            if job.image { "yes" } else { "" },
            job.max_runtime_s.map(|s| s.to_string()).unwrap_or_default(),
            outcome,
            job.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            field(job.name.as_deref().unwrap_or("")),
        );
        line
    }

    fn leave_out(&mut self, job: &HistoryJob, why: &'static str) -> String {
        *self.left_out.entry(why).or_default() += 1;
        format!("# job {} ({}) left out: {why}\n", job.id, job.state.name())
    }

    /// What was written and left out, in words.
    pub fn summary(&self) -> String {
        let mut text = crate::format::counted(self.written as usize, "job");
        if self.running > 0 {
            text += &format!(", {} of them still running, with their time so far", self.running);
        }
        for (why, count) in &self.left_out {
            text += &format!("; left out {count} {why}");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use ferry_api::history::{HistoryElastic, HistoryNode, HistoryPool, HistoryProject, HistoryTeam};
    use ferry_api::jobs::PriorityClass;
    use ferry_sim::workload::Outcome;

    use super::*;

    const S: i64 = 1_000_000;

    fn job(id: u64, state: JobState, submitted_s: i64, started_s: Option<i64>, finished_s: Option<i64>) -> HistoryJob {
        HistoryJob {
            id,
            name: Some("train".into()),
            owner: "alice".into(),
            team: Some("vision".into()),
            project: None,
            state,
            exit_code: None,
            signal: None,
            submitted_at_us: 1_700_000_000 * S + submitted_s * S,
            started_at_us: started_s.map(|s| 1_700_000_000 * S + s * S),
            finished_at_us: finished_s.map(|s| 1_700_000_000 * S + s * S),
            attempt: 0,
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            gpus: 0,
            gpu_share_milli: 0,
            gpu_types: Vec::new(),
            selector: BTreeMap::new(),
            nodes: 1,
            priority: PriorityClass::Normal,
            pool: None,
            image: false,
            max_runtime_s: None,
        }
    }

    fn cluster() -> HistoryCluster {
        let pool = |name: &str, order, declared| HistoryPool {
            name: name.into(),
            order,
            burst: false,
            burst_after_s: None,
            price_gpu_hour: None,
            price_cpu_hour: None,
            declared,
            elastic: None,
            images: true,
            gangs: true,
        };
        HistoryCluster {
            at_us: 0,
            fair_share_half_life_s: 86_400,
            gpu_placement: "fgd".into(),
            queue_order: Some("shortest-first".into()),
            queue_aging_s: Some(36 * 3600),
            queue_lease_s: None,
            queue_levels_gpu_s: None,
            reserve_depth: Some(128),
            pools: vec![
                // A Slurm pool: no container images.
                HistoryPool { images: false, ..pool("onprem", 0, true) },
                HistoryPool {
                    burst: true,
                    burst_after_s: Some(1800),
                    price_gpu_hour: Some(3.5),
                    elastic: Some(HistoryElastic {
                        max_nodes: 4,
                        startup_s: 180,
                        idle_release_s: 600,
                        node: HistoryTemplate {
                            cpu_millis: 96_000,
                            memory_bytes: 768 << 30,
                            gpus: 8,
                            gpu_model: Some("A100".into()),
                            labels: BTreeMap::new(),
                        },
                        startup_timeout_s: 900,
                        retry_after_s: 600,
                        price_node_hour: Some(32.77),
                    }),
                    ..pool("aws", 20, true)
                },
                pool("local", i32::MAX, false),
            ],
            teams: vec![
                HistoryTeam {
                    name: "vision".into(),
                    quota: QuotaAmount { gpus: Some(8), cpu_millis: Some(64_000), memory_bytes: None },
                    borrow_limit: Some(QuotaAmount { gpus: Some(4), ..QuotaAmount::default() }),
                    projects: vec![HistoryProject {
                        name: "detect".into(),
                        quota: QuotaAmount { gpus: Some(4), cpu_millis: Some(64_000), memory_bytes: None },
                        borrow_limit: None,
                    }],
                },
                HistoryTeam {
                    name: "nlp".into(),
                    quota: QuotaAmount::default(),
                    borrow_limit: None,
                    projects: vec![HistoryProject {
                        name: "llm".into(),
                        quota: QuotaAmount { gpus: Some(2), ..QuotaAmount::default() },
                        borrow_limit: Some(QuotaAmount { gpus: Some(1), ..QuotaAmount::default() }),
                    }],
                },
            ],
            nodes: vec![
                HistoryNode {
                    name: "gpu-1".into(),
                    pool: "onprem".into(),
                    cpu_millis: 64_000,
                    memory_bytes: 512 << 30,
                    gpu_models: vec!["A100".into(), "A100".into(), "H100".into()],
                    labels: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
                    ready: true,
                },
                HistoryNode {
                    name: "laptop".into(),
                    pool: "local".into(),
                    cpu_millis: 7500,
                    memory_bytes: 16_000_000_000,
                    gpu_models: Vec::new(),
                    labels: BTreeMap::new(),
                    ready: false,
                },
            ],
        }
    }

    #[test]
    fn the_cluster_file_reads_back_as_the_cluster() {
        let (text, notes) = cluster_toml(&cluster());
        assert_eq!(notes, ["node gpu-1 has GPUs of several models (A100, H100); the cluster file says A100"]);
        let read = ferry_sim::parse_cluster_toml("cluster.toml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(read.fair_share_half_life_s, 86_400);
        assert_eq!(format!("{:?}", read.gpu_placement), "Fgd");
        assert_eq!((read.queue_order.name(), read.queue_order.aging_s()), ("shortest-first", Some(36 * 3600)));
        assert_eq!(read.reserve_depth, Some(128));
        // Least-attained's lease comes back too, and "off" for none.
        for lease in [Some(3600), None] {
            let cluster = HistoryCluster {
                queue_order: Some("least-attained".into()),
                queue_lease_s: Some(lease.unwrap_or(0)),
                queue_levels_gpu_s: Some(vec![1800, 90_000]),
                ..cluster()
            };
            let read = ferry_sim::parse_cluster_toml("cluster.toml", &cluster_toml(&cluster).0).unwrap();
            assert_eq!((read.queue_order.name(), read.queue_order.lease_s()), ("least-attained", lease));
            assert_eq!(read.queue_order.levels_gpu_s(), Some(&[1800, 90_000][..]));
        }
        let pools: Vec<(&str, i32, bool)> = read.pools.iter().map(|p| (p.name.as_str(), p.order, p.burst)).collect();
        assert_eq!(pools, [("onprem", 0, false), ("aws", 20, true), ("local", i32::MAX, false)]);
        // What each pool's backend runs comes back too, so the simulator places image jobs as the server did.
        let runs: Vec<(bool, bool)> = read.pools.iter().map(|p| (p.images, p.gangs)).collect();
        assert_eq!(runs, [(false, true), (true, true), (true, true)]);
        assert!(text.contains("images = false") && !text.contains("gangs ="), "{text}");
        let aws = read.pool("aws").unwrap();
        assert_eq!((aws.burst_after_s, aws.price_gpu_hour), (Some(1800), 3.5));
        let elastic = aws.elastic.as_ref().unwrap();
        assert_eq!((elastic.max_nodes, elastic.startup_s, elastic.idle_release_s), (4, 180, 600));
        assert_eq!((elastic.startup_timeout_s, elastic.retry_after_s, aws.price_node_hour), (900, 600, Some(32.77)));
        assert_eq!(aws.node_price_hour(&elastic.node.capacity), 32.77, "the simulator bills a node as the cloud does");
        assert_eq!(elastic.node.capacity, ferry_core::Resources::new(96_000, 768 << 30, 8));
        let nodes: Vec<_> = read
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.pool.as_str(), n.capacity, n.gpu_model.as_deref(), n.labels.len()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("gpu-1", "onprem", ferry_core::Resources::new(64_000, 512 << 30, 3), Some("A100"), 1),
                ("laptop", "local", ferry_core::Resources::new(7500, 16_000_000_000, 0), None, 0),
            ]
        );
        let unlimited = ferry_core::Resources::UNLIMITED;
        let vision = read.teams.iter().find(|t| t.name == "vision").unwrap();
        assert_eq!(
            vision.quota,
            ferry_core::Resources { memory_bytes: unlimited.memory_bytes, ..ferry_core::Resources::new(64_000, 0, 8) }
        );
        assert_eq!(vision.borrow_limit.map(|b| b.gpus), Some(4));
        let nlp = read.teams.iter().find(|t| t.name == "nlp").unwrap();
        assert_eq!(nlp.quota, unlimited, "a team only its projects name has no quota of its own");
        let projects: Vec<_> = read.projects.iter().map(|p| (p.team.as_str(), p.name.as_str(), p.quota.gpus)).collect();
        assert_eq!(projects, [("vision", "detect", 4), ("nlp", "llm", 2)]);
    }

    #[test]
    fn jobs_become_workload_lines_with_their_outcome() {
        let mut rows = JobRows::default();
        let ok = HistoryJob { exit_code: Some(0), ..job(1, JobState::Succeeded, 0, Some(2), Some(62)) };
        let failed = HistoryJob {
            exit_code: Some(3),
            gpus: 2,
            gpu_types: vec!["A100".into(), "H100".into()],
            selector: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
            priority: PriorityClass::High,
            pool: Some("onprem".into()),
            project: Some("detect".into()),
            max_runtime_s: Some(3600),
            image: true,
            ..job(2, JobState::Failed, 10, Some(11), Some(12))
        };
        let queued_cancel = job(3, JobState::Cancelled, 20, None, Some(25));
        let gang = HistoryJob { nodes: 2, gpus: 1, team: None, ..job(4, JobState::Cancelled, 30, Some(31), Some(31)) };
        let share =
            HistoryJob { gpu_share_milli: 250, cpu_millis: 500, ..job(5, JobState::Running, 40, Some(41), None) };
        let waiting = job(6, JobState::Queued, 50, None, None);
        let now = 1_700_000_000 * S + 100 * S + 1500;
        let text: String = [ok, failed, queued_cancel, gang, share, waiting].iter().map(|j| rows.row(j, now)).collect();
        let file = format!("{JOBS_HEADER}\n{text}");
        expect_test::expect![[r#"
            arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share,priority,nodes,project,selector,pool,image,max_runtime_s,outcome,exit_code,name
            0,60,0,2,4GiB,alice,vision,,,0,1,,,,,,succeeded,0,train
            10,1,2,2,4GiB,alice,vision,A100|H100,,100,1,detect,rack=r1,onprem,yes,3600,failed,3,train
            # job 3 (cancelled) left out: ended before it ever ran
            30,0.001,1,2,4GiB,alice,(none),,,0,2,,,,,,cancelled,,train
            40,59.001,0,500m,4GiB,alice,vision,,250,0,1,,,,,,,,train
            # job 6 (queued) left out: still waiting at export
        "#]]
        .assert_eq(&file);
        assert_eq!(rows.summary(), "4 jobs, 1 of them still running, with their time so far; left out 1 ended before it ever ran; left out 1 still waiting at export");
        let read = ferry_sim::parse_workload_csv("jobs.csv", &file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read.jobs.len(), 4);
        let failed = &read.jobs[1];
        assert_eq!((failed.arrival_ms, failed.duration_ms, failed.priority), (10_000, 1000, 100));
        assert_eq!((failed.outcome, failed.exit_code), (Some(Outcome::Failed), Some(3)));
        assert_eq!(failed.selector.get("rack").map(String::as_str), Some("r1"));
        assert_eq!((failed.pool.as_deref(), failed.image, failed.max_runtime_s), (Some("onprem"), true, Some(3600)));
        assert_eq!(failed.gpu_models, ["A100", "H100"]);
        assert_eq!(failed.name, "train", "the name carries to the replay's runtime predictions");
        assert_eq!((read.jobs[2].nodes, read.jobs[2].outcome), (2, Some(Outcome::Cancelled)));
        assert_eq!((read.jobs[3].gpu_share_milli, read.jobs[3].outcome), (250, None));
    }

    #[test]
    fn a_label_with_the_separator_is_left_out_rather_than_misread() {
        let mut rows = JobRows::default();
        let odd = HistoryJob {
            selector: BTreeMap::from([("zone".to_string(), "a|b".to_string())]),
            ..job(7, JobState::Succeeded, 0, Some(1), Some(2))
        };
        assert_eq!(
            rows.row(&odd, 0),
            "# job 7 (succeeded) left out: a GPU type or label with a |, which the workload format cannot hold\n"
        );
        assert_eq!(rows.written, 0);
    }

    #[test]
    fn since_takes_durations_and_times_and_says_what_it_wants_otherwise() {
        assert_eq!(since_param("30d").unwrap(), "2592000s");
        assert_eq!(since_param("1h30m").unwrap(), "5400s");
        assert_eq!(since_param("2025-05-01T00:00:00Z").unwrap(), "2025-05-01T00:00:00Z");
        let e = since_param("banana").unwrap_err();
        assert_eq!(e.code, exit::INVALID);
        assert!(e.message.contains("--since banana") && e.message.contains("30d"), "{}", e.message);
    }

    #[test]
    fn units_are_written_exactly() {
        assert_eq!([memory(4 << 30), memory(1536 << 20), memory(1000)], ["4GiB", "1536MiB", "1000B"]);
        assert_eq!([duration(86_400), duration(5400), duration(90), duration(7)], ["1d", "90m", "90s", "7s"]);
        assert_eq!([seconds(0), seconds(1500), seconds(1), seconds(61_010)], ["0", "1.5", "0.001", "61.01"]);
        assert_eq!([cpus(2000), cpus(250)], ["2", "250m"]);
    }
}
