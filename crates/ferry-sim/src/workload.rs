//! The simulated workload: jobs with an arrival time, a duration, what they ask for, and who they belong to. Read
//! from the simple CSV format documented in the README or from the pod list of the Alibaba GPU trace.

use std::collections::BTreeMap;

use ferry_core::{JobRequest, ResourceKind, Resources, Scheduler, WaitReason};

use crate::checker::Ceilings;
use crate::cluster::{first_over, positive, Cluster};
use crate::csvin::{self, Columns};
use crate::error::InputError;
use crate::ledger::quota_amount;

/// The most GPUs one job (for a gang, one worker) may ask for; no node has more.
pub const GPUS_PER_JOB_MAX: u64 = 64;
/// The most workers one gang may have: more nodes than any training run we know of spans, and few enough that a typo
/// (an extra zero) is caught.
pub const WORKERS_MAX: u64 = 1024;

/// One job of a workload, as the file described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// The line of the file that described the job, for error messages.
    pub line: u64,
    pub arrival_ms: u64,
    /// How long the job runs once started.
    pub duration_ms: u64,
    /// CPUs, memory and whole GPUs; for a gang, of each worker.
    pub resources: Resources,
    /// A share of one GPU in thousandths, for a job that needs less than a whole one; 0 otherwise.
    pub gpu_share_milli: u32,
    /// The GPU models the job may run on; empty means any.
    pub gpu_models: Vec<String>,
    /// Higher runs first, and may preempt lower.
    pub priority: i32,
    pub user: String,
    /// The job's name (`ferry run --name`, a sweep's name), which runtime predictions match on; empty for none.
    pub name: String,
    pub team: String,
    /// The project within the team, for fair share between projects; empty for none.
    pub project: String,
    /// How many workers the job has, each on a node of its own: 1 for a single-node job, more for a gang.
    pub nodes: u32,
    /// Labels a node must carry, with these values, to run the job.
    pub selector: BTreeMap<String, String>,
    /// The pool the job is pinned to; `None` lets the core choose by pool order.
    pub pool: Option<String>,
    /// The job runs in a container image: only nodes that run images take it.
    pub image: bool,
    /// The job's runtime limit, which the core's estimates and backfill rely on; `None` for none.
    pub max_runtime_s: Option<u64>,
    /// How the job ended where the workload was recorded (`ferry history export`); `None` where it does not say.
    /// Read and carried: a replay fails a job only where `lifecycle.fail_at_ms` says so.
    pub outcome: Option<Outcome>,
    /// The exit code it ended with there, when it had one; also the code its simulated failures exit with.
    pub exit_code: Option<i32>,
    /// Whether and when its runs fail, how often it is retried, and how often it saves a checkpoint.
    pub lifecycle: Lifecycle,
}

/// What a replay does with a job beyond running it: failures the workload plants in its runs, the retries the job
/// asks for (as `ferry submit --retries` does) and the checkpoints it saves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// A run of the job fails (exits with `exit_code`, or 1) this far into the run; `None` for a job that never fails.
    pub fail_at_ms: Option<u64>,
    /// How many runs fail so, the later ones running through; `None` for every run (a failure a retry cannot fix).
    pub fails: Option<u32>,
    /// How many times a failure (or the loss of its node) may be retried.
    pub retries: u32,
    /// The job saves its work this often; a run cut short (preempted, failed, or lost with its node) is resumed from
    /// its last checkpoint, losing only the work since. `None` for a job that starts over.
    pub checkpoint_every_ms: Option<u64>,
}

impl Lifecycle {
    /// The exit code of a planted failure: the job's own when it has a non-zero one, else 1.
    pub const EXIT_CODE_DEFAULT: i32 = 1;
}

/// How a job ended in the history a workload was exported from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

impl Outcome {
    pub const ALL: [Outcome; 5] =
        [Outcome::Succeeded, Outcome::Failed, Outcome::Cancelled, Outcome::TimedOut, Outcome::Lost];

    /// The name the workload file writes, as Ferry names the job's final state.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::TimedOut => "timed_out",
            Outcome::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == text)
    }
}

impl JobSpec {
    /// What the scheduler core is told of the job when it is submitted at `now_ms`.
    pub fn request(&self, id: u64, now_ms: u64) -> JobRequest {
        JobRequest {
            gpu_share_milli: self.gpu_share_milli,
            gpu_models: self.gpu_models.clone(),
            submitted_at_us: (now_ms as i64).saturating_mul(1000),
            team: self.team.clone(),
            user: self.user.clone(),
            project: self.project.clone(),
            nodes: self.nodes,
            selector: self.selector.clone(),
            pool: self.pool.clone(),
            image: self.image,
            max_runtime_s: self.max_runtime_s,
            checkpoints: self.lifecycle.checkpoint_every_ms.is_some(),
            ..JobRequest::new(id, self.resources, self.priority)
        }
    }

    /// The GPUs the job asks for in thousandths, all workers together: whole GPUs count 1000 each, a share counts
    /// its thousandths.
    pub fn gpu_milli(&self) -> u64 {
        (u64::from(self.resources.gpus) * 1000 + u64::from(self.gpu_share_milli)) * u64::from(self.nodes)
    }

    /// The CPUs the job asks for in thousandths, all workers together.
    pub fn cpu_millis(&self) -> u64 {
        self.resources.cpu_millis * u64::from(self.nodes)
    }
}

/// A workload and the file it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub file: String,
    pub format: WorkloadFormat,
    pub jobs: Vec<JobSpec>,
}

impl Workload {
    /// Whether any job plants a failure or asks for retries or checkpoints.
    pub fn has_lifecycle(&self) -> bool {
        self.jobs.iter().any(|j| j.lifecycle != Lifecycle::default())
    }
}

/// Which format a workload file is in, which decides the column names errors use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadFormat {
    Csv,
    TracePods,
}

impl WorkloadFormat {
    /// The columns of whole GPUs, GPU share, CPUs, memory and GPU models.
    fn columns(self) -> [&'static str; 5] {
        match self {
            WorkloadFormat::Csv => ["gpus", "gpu_share", "cpus", "memory", "gpu_type"],
            WorkloadFormat::TracePods => ["num_gpu", "gpu_milli", "cpu_milli", "memory_mib", "gpu_spec"],
        }
    }
}

const CSV_REQUIRED: &[&str] = &["arrival_s", "duration_s", "gpus", "cpus", "memory", "user", "team"];
const CSV_OPTIONAL: &[&str] = &[
    "gpu_type",
    "gpu_share",
    "priority",
    "nodes",
    "project",
    "selector",
    "pool",
    "image",
    "max_runtime_s",
    "outcome",
    "exit_code",
    "fail_at_s",
    "fails",
    "retries",
    "checkpoint_every_s",
    "name",
];
/// The largest priority, either way: far more classes than anyone configures.
pub const PRIORITY_MAX: i64 = 1_000_000;

/// Parses the simple workload CSV format:
/// `arrival_s,duration_s,gpus,cpus,memory,user,team[,gpu_type][,gpu_share][,priority][,nodes][,project]`, and the
/// columns `ferry history export` adds: `[,selector][,pool][,image][,max_runtime_s][,outcome][,exit_code]`, and the
/// columns of a job's lifecycle: `[,fail_at_s][,fails][,retries][,checkpoint_every_s]`.
pub fn parse_workload_csv(file: &str, text: &str) -> Result<Workload, InputError> {
    let columns = Columns { required: CSV_REQUIRED, optional: CSV_OPTIONAL, allow_unknown: false };
    let jobs = csvin::read_rows(file, text, &columns, |row| {
        let arrival_ms = row.parse("arrival_s", csvin::seconds_ms)?;
        let duration_ms = row.parse("duration_s", csvin::seconds_ms)?;
        if duration_ms == 0 {
            return Err(row.error("duration_s", "a job must run for some time; write a duration above 0"));
        }
        let gpus = row.parse("gpus", |t| csvin::whole(t, GPUS_PER_JOB_MAX, "GPUs"))? as u32;
        let cpu_millis = row.parse("cpus", |t| ferry_units::parse_cpus(t).map_err(|e| e.0))?;
        let memory_bytes = row.parse("memory", |t| ferry_units::parse_memory(t).map_err(|e| e.0))?;
        let user = row.parse("user", |t| non_empty(t, "user"))?;
        let team = row.parse("team", |t| non_empty(t, "team"))?;
        let gpu_models = models(row.get("gpu_type").unwrap_or(""));
        let gpu_share_milli = match row.get("gpu_share").unwrap_or("") {
            "" => 0,
            t => row.parse("gpu_share", |_| csvin::whole(t, 999, "thousandths of a GPU"))? as u32,
        };
        if gpu_share_milli > 0 && gpus > 0 {
            let message = "a job asks for whole GPUs or a share of one, never both; set gpus to 0 for a share";
            return Err(row.error("gpu_share", message));
        }
        let priority = match row.get("priority").unwrap_or("") {
            "" => 0,
            t => row.parse("priority", |_| priority(t))?,
        };
        let nodes = match row.get("nodes").unwrap_or("") {
            "" => 1,
            t => row.parse("nodes", |_| workers(t))?,
        };
        if nodes > 1 && gpu_share_milli > 0 {
            let message = "a gang's workers hold whole GPUs; a share of one GPU is for a single-node job (nodes 1)";
            return Err(row.error("gpu_share", message));
        }
        let project = row.get("project").unwrap_or("").to_string();
        let name = row.get("name").unwrap_or("").to_string();
        let selector = row.parse("selector", selector)?;
        let pool = row.get("pool").filter(|p| !p.is_empty()).map(str::to_string);
        let image = match row.get("image").unwrap_or("") {
            "" | "no" => false,
            "yes" => true,
            t => {
                return Err(
                    row.error("image", format!("\"{t}\" is not yes or no; write yes for a job in a container image"))
                )
            }
        };
        let max_runtime_s = match row.get("max_runtime_s").unwrap_or("") {
            "" => None,
            t => Some(row.parse("max_runtime_s", |_| runtime_limit(t))?),
        };
        let outcome = match row.get("outcome").unwrap_or("") {
            "" => None,
            t => Some(row.parse("outcome", |_| outcome(t))?),
        };
        let exit_code = match row.get("exit_code").unwrap_or("") {
            "" => None,
            t => Some(row.parse("exit_code", |_| exit_code(t))?),
        };
        let lifecycle = lifecycle(row, exit_code)?;
        Ok(JobSpec {
            line: row.line,
            arrival_ms,
            duration_ms,
            resources: Resources::new(cpu_millis, memory_bytes, gpus),
            gpu_share_milli,
            gpu_models,
            priority,
            user,
            name,
            team,
            project,
            nodes,
            selector,
            pool,
            image,
            max_runtime_s,
            outcome,
            exit_code,
            lifecycle,
        })
    })?;
    Ok(Workload { file: file.to_string(), format: WorkloadFormat::Csv, jobs })
}

/// The most failures one job may plant: as many as the most retries a job may ask for, and one more.
pub const FAILS_MAX: u64 = ferry_api::jobs::RETRIES_MAX as u64 + 1;

/// Reads the lifecycle columns of a row: `fail_at_s` (above 0), `fails` (only with `fail_at_s`), `retries` (up to the
/// server's limit) and `checkpoint_every_s` (above 0). A planted failure must not exit with code 0.
fn lifecycle(row: &csvin::Row<'_>, exit_code: Option<i32>) -> Result<Lifecycle, InputError> {
    let fail_at_ms = match row.get("fail_at_s").unwrap_or("") {
        "" => None,
        t => Some(row.parse("fail_at_s", |_| above_zero_ms(t, "a run fails some time into it"))?),
    };
    let fails = match row.get("fails").unwrap_or("") {
        "" => None,
        _ if fail_at_ms.is_none() => {
            return Err(row.error("fails", "fails says how many runs fail at fail_at_s; write fail_at_s too"))
        }
        t => Some(row.parse("fails", |_| match csvin::whole(t, FAILS_MAX, "failures")? {
            0 => Err("0 failures is none; leave fail_at_s and fails empty for a job that never fails".to_string()),
            n => Ok(n as u32),
        })?),
    };
    if fail_at_ms.is_some() && exit_code == Some(0) {
        let message = "a failing run exits with a code other than 0; write one such as 1, or leave it empty";
        return Err(row.error("exit_code", message));
    }
    let retries = match row.get("retries").unwrap_or("") {
        "" => 0,
        t => row.parse("retries", |_| csvin::whole(t, u64::from(ferry_api::jobs::RETRIES_MAX), "retries"))? as u32,
    };
    let checkpoint_every_ms = match row.get("checkpoint_every_s").unwrap_or("") {
        "" => None,
        t => Some(row.parse("checkpoint_every_s", |_| above_zero_ms(t, "a job saves a checkpoint every so often"))?),
    };
    Ok(Lifecycle { fail_at_ms, fails, retries, checkpoint_every_ms })
}

/// Seconds above 0 as milliseconds; `what` says why 0 will not do.
fn above_zero_ms(text: &str, what: &str) -> Result<u64, String> {
    match csvin::seconds_ms(text)? {
        0 => Err(format!("{what}; write a time above 0 seconds, or leave it empty")),
        ms => Ok(ms),
    }
}

/// Node labels as `NAME=VALUE` pairs separated by `|`; empty for none.
fn selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split('|').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                labels.insert(name.trim().to_string(), value.trim().to_string());
            }
            _ => {
                return Err(format!(
                    "\"{pair}\" is not a label; write NAME=VALUE pairs separated by |, such as rack=r1|zone=b"
                ))
            }
        }
    }
    Ok(labels)
}

/// The longest runtime limit: a year, far beyond any job's.
const RUNTIME_LIMIT_S_MAX: u64 = 366 * 86_400;

fn runtime_limit(text: &str) -> Result<u64, String> {
    match csvin::whole(text, RUNTIME_LIMIT_S_MAX, "seconds")? {
        0 => Err("0 is not a runtime limit; write whole seconds above 0, or leave it empty for none".to_string()),
        s => Ok(s),
    }
}

fn outcome(text: &str) -> Result<Outcome, String> {
    Outcome::parse(text).ok_or_else(|| {
        let names: Vec<&str> = Outcome::ALL.iter().map(|o| o.name()).collect();
        format!("\"{text}\" is not an outcome; write one of {}, or leave it empty", names.join(", "))
    })
}

fn exit_code(text: &str) -> Result<i32, String> {
    text.parse::<i32>().map_err(|_| format!("\"{text}\" is not an exit code; write a whole number such as 0 or 3"))
}

fn priority(text: &str) -> Result<i32, String> {
    match text.parse::<i64>() {
        Ok(p) if (-PRIORITY_MAX..=PRIORITY_MAX).contains(&p) => Ok(p as i32),
        Ok(_) => Err(format!("{text} is out of range; write a whole number from -{PRIORITY_MAX} to {PRIORITY_MAX}")),
        Err(_) => Err(format!("\"{text}\" is not a whole number")),
    }
}

/// A gang's worker count, 1 to `WORKERS_MAX`.
fn workers(text: &str) -> Result<u32, String> {
    match csvin::whole(text, WORKERS_MAX, "workers")? {
        0 => Err(format!("0 is not a worker count; write 1 for a single-node job, up to {WORKERS_MAX} for a gang")),
        n => Ok(n as u32),
    }
}

fn non_empty(text: &str, what: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err(format!("empty; every job needs a {what}"));
    }
    Ok(text.to_string())
}

/// GPU models separated by `|`, as the trace writes them; empty means any.
fn models(text: &str) -> Vec<String> {
    text.split('|').map(str::trim).filter(|m| !m.is_empty()).map(str::to_string).collect()
}

const POD_REQUIRED: &[&str] =
    &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli", "creation_time", "deletion_time"];
const POD_OPTIONAL: &[&str] = &["gpu_spec", "qos", "scheduled_time"];

/// Parses the pod list of the Alibaba GPU trace. A pod arrives at `creation_time` and runs for `deletion_time`
/// minus `scheduled_time`, or minus `creation_time` where `scheduled_time` is empty (pods that never ran in the
/// original cluster); a pod deleted before it started is an error. A pod with `num_gpu` 1 and `gpu_milli` under
/// 1000 asks for a share of one GPU. The trace has no users or teams: both are the pod's `qos` class (a user per pod
/// would make fair share track thousands of one-job users).
pub fn parse_trace_pods(file: &str, text: &str) -> Result<Workload, InputError> {
    let columns = Columns { required: POD_REQUIRED, optional: POD_OPTIONAL, allow_unknown: true };
    let jobs = csvin::read_rows(file, text, &columns, |row| {
        row.parse("name", |t| non_empty(t, "name"))?;
        let qos = row.get("qos").filter(|q| !q.is_empty()).unwrap_or("none").to_string();
        let cpu_millis = row.parse("cpu_milli", |t| positive(t, 100_000_000, "CPU"))?;
        let memory_mib = row.parse("memory_mib", |t| csvin::whole(t, 1 << 40, "memory"))?;
        let num_gpu = row.parse("num_gpu", |t| csvin::whole(t, GPUS_PER_JOB_MAX, "GPUs"))? as u32;
        let gpu_milli = row.parse("gpu_milli", |t| csvin::whole(t, 1000, "thousandths of a GPU"))? as u32;
        let (gpus, gpu_share_milli) = match (num_gpu, gpu_milli) {
            (1, m) if m > 0 && m < 1000 => (0, m),
            (n, _) => (n, 0),
        };
        let arrival_ms = row.parse("creation_time", csvin::seconds_ms)?;
        let end_ms = row.parse("deletion_time", csvin::seconds_ms)?;
        let (start_ms, start_column) = match row.get("scheduled_time").unwrap_or("") {
            "" => (arrival_ms, "creation_time"),
            t => (row.parse("scheduled_time", |_| csvin::seconds_ms(t))?, "scheduled_time"),
        };
        if end_ms < start_ms {
            let message = format!("{} is before {start_column} {}", row.req("deletion_time"), row.req(start_column));
            return Err(row.error("deletion_time", message));
        }
        Ok(JobSpec {
            line: row.line,
            arrival_ms,
            // A pod deleted the second it was scheduled still ran for a moment.
            duration_ms: (end_ms - start_ms).max(1),
            resources: Resources::new(cpu_millis, memory_mib << 20, gpus),
            gpu_share_milli,
            gpu_models: models(row.get("gpu_spec").unwrap_or("")),
            priority: 0,
            user: qos.clone(),
            name: String::new(),
            team: qos,
            project: String::new(),
            nodes: 1,
            selector: BTreeMap::new(),
            pool: None,
            image: false,
            max_runtime_s: None,
            outcome: None,
            exit_code: None,
            lifecycle: Lifecycle::default(),
        })
    })?;
    Ok(Workload { file: file.to_string(), format: WorkloadFormat::TracePods, jobs })
}

/// Checks that every job could run on the cluster when it is empty, its elastic pools grown to their most nodes, and
/// within its team's and its project's ceilings (quota plus `borrow_limit`): a job that could never start is a
/// mistake in the input, named by its line and the column that asks too much.
pub fn check_fits(workload: &Workload, cluster: &Cluster) -> Result<(), InputError> {
    let ceilings = Ceilings::new(&cluster.teams, &cluster.projects);
    let mut scheduler = Scheduler::new();
    let pools = cluster.pools.iter().map(|p| p.info()).collect();
    // The pools were validated when parsed, and configuring pools never fails.
    let _ = scheduler.apply(ferry_core::Event::PoolsConfigured(pools));
    for node in &cluster.nodes {
        // Nodes were validated when parsed, so the core accepts them; a refusal would be reported below as no fit.
        let _ = scheduler.apply(ferry_core::Event::NodeUp(node.clone()));
    }
    for job in &workload.jobs {
        check_pool(workload, job, cluster)?;
        if let Err(reason) = scheduler.check_feasible(&job.request(0, 0)) {
            let [gpus, share, cpus, memory, models] = workload.format.columns();
            let column = match &reason {
                WaitReason::Infeasible { resource, .. } => match resource {
                    ResourceKind::Gpus if job.gpu_share_milli > 0 => share,
                    ResourceKind::Gpus => gpus,
                    ResourceKind::Cpus => cpus,
                    ResourceKind::Memory => memory,
                },
                // Only the simple CSV format has gangs, selectors and images.
                WaitReason::GangInfeasible { .. } => "nodes",
                WaitReason::NoMatchingNode { .. } if !job.selector.is_empty() && job.gpu_models.is_empty() => {
                    "selector"
                }
                WaitReason::NoMatchingNode { image: true, .. } if job.gpu_models.is_empty() => "image",
                _ => models,
            };
            let message = format!("this job fits no node of the cluster: {reason}");
            return Err(InputError::new(&workload.file, job.line, Some(format!("column {column}")), message));
        }
        check_ceilings(workload, job, &ceilings)?;
    }
    Ok(())
}

/// Checks that the pool a job is pinned to is in the cluster and has nodes (or starts them): the core keeps a job
/// pinned to an empty pool waiting for nodes that a replay never adds.
fn check_pool(workload: &Workload, job: &JobSpec, cluster: &Cluster) -> Result<(), InputError> {
    let Some(name) = &job.pool else { return Ok(()) };
    let message = match cluster.pool(name) {
        None => {
            let known: Vec<&str> = cluster.pools.iter().map(|p| p.name.as_str()).collect();
            format!(
                "the job is pinned to pool {name}, which the cluster file does not declare (it has {})",
                known.join(", ")
            )
        }
        Some(pool) if pool.elastic.is_none() && !cluster.nodes.iter().any(|n| &n.pool == name) => {
            format!("the job is pinned to pool {name}, which has no [[node]] in the cluster file; it could never start")
        }
        Some(_) => return Ok(()),
    };
    Err(InputError::new(&workload.file, job.line, Some("column pool".to_string()), message))
}

/// Checks that a job asks for no more than its team and its project may ever hold.
fn check_ceilings(workload: &Workload, job: &JobSpec, ceilings: &Ceilings) -> Result<(), InputError> {
    let team = ceilings.team(&job.team).map(|c| (format!("team {}", job.team), c));
    let project =
        ceilings.project(&job.team, &job.project).map(|c| (format!("project {} of team {}", job.project, job.team), c));
    let total = quota_amount(&job.resources, job.gpu_share_milli, job.nodes);
    for (group, ceiling) in team.into_iter().chain(project) {
        let Some((kind, asked, most)) = first_over(&total, ceiling) else { continue };
        let [gpus, share, cpus, memory, _] = workload.format.columns();
        let one_worker = quota_amount(&job.resources, job.gpu_share_milli, 1);
        let column = match kind {
            _ if job.nodes > 1 && first_over(&one_worker, ceiling).is_none() => "nodes",
            ResourceKind::Gpus if job.gpu_share_milli > 0 => share,
            ResourceKind::Gpus => gpus,
            ResourceKind::Cpus => cpus,
            ResourceKind::Memory => memory,
        };
        let message = format!(
            "this job asks for {} in all, more than {group} may ever hold: {} (its quota plus its borrow_limit)",
            kind.amount(asked),
            kind.amount(most)
        );
        return Err(InputError::new(&workload.file, job.line, Some(format!("column {column}")), message));
    }
    Ok(())
}
