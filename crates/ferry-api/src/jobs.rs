//! Jobs on the wire: what a user submits and what the API shows back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::code::{CodeSpec, JobCode};
use crate::reasons::{TimelineReason, WaitReason};

/// The longest command line, in bytes of all arguments together, that a job may have.
pub const COMMAND_BYTES_MAX: usize = 128 * 1024;
/// The most environment variables one job may set.
pub const ENV_VARS_MAX: usize = 1024;
/// The most retries a job may ask for.
pub const RETRIES_MAX: u32 = 100;
/// The longest job name.
pub const NAME_CHARS_MAX: usize = 128;
/// The most workers a gang (a multi-node job) may have.
pub const NODES_MAX: u32 = 1024;

/// A job's priority class. Higher classes start first; within a class, jobs start in submission order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriorityClass {
    Low,
    #[default]
    Normal,
    High,
    Urgent,
}

impl PriorityClass {
    pub const ALL: [PriorityClass; 4] =
        [PriorityClass::Low, PriorityClass::Normal, PriorityClass::High, PriorityClass::Urgent];

    /// The number the scheduler orders by.
    pub fn value(self) -> i32 {
        match self {
            PriorityClass::Low => -100,
            PriorityClass::Normal => 0,
            PriorityClass::High => 100,
            PriorityClass::Urgent => 200,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PriorityClass::Low => "low",
            PriorityClass::Normal => "normal",
            PriorityClass::High => "high",
            PriorityClass::Urgent => "urgent",
        }
    }

    pub fn parse(text: &str) -> Option<PriorityClass> {
        PriorityClass::ALL.into_iter().find(|c| c.name() == text)
    }
}

/// A request to run a job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// The program and its arguments, run without a shell.
    pub command: Vec<String>,
    /// The absolute directory the job runs in, on the node that runs it. Empty (the default) when the job runs in a
    /// fresh directory of its own on the node: the unpacked `code` when there is some, else an empty one.
    #[serde(default)]
    pub workdir: String,
    /// The shipped folder, already uploaded to `/api/v1/code/{sha256}`; only without `workdir`.
    #[serde(default)]
    pub code: Option<CodeSpec>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub project: Option<String>,
    /// The team whose quota the job counts against.
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secrets the job reads from its environment: variable name to secret name (the same, for `--secret NAME`).
    /// Each is the submitter's own secret of that name, else its project's; the value never appears in the job.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    /// Thousandths of a CPU; default 1000 (one CPU).
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    /// Memory in bytes; default 1 GiB.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub gpus: Option<u32>,
    /// A share of one GPU in thousandths (1 to 999), instead of whole GPUs: several jobs then use one device.
    /// Ferry divides allocation, not the device: jobs sharing a GPU are not isolated from each other's use of it.
    #[serde(default)]
    pub gpu_share_milli: Option<u32>,
    /// GPU models the job may run on, such as `A100`; empty means any.
    #[serde(default)]
    pub gpu_types: Vec<String>,
    /// Node labels the job requires, such as `rack=a`.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub priority: Option<PriorityClass>,
    /// How many times the job is run again after it fails or its node is lost.
    #[serde(default)]
    pub retries: Option<u32>,
    /// The job is stopped after running this long.
    #[serde(default)]
    pub max_runtime_s: Option<u64>,
    /// How many nodes the job runs on: a gang of this many workers, each with the CPUs, memory and GPUs above on a
    /// node of its own, started all together or not at all. Default 1.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// The pool the job must run in; the scheduler chooses by pool order when absent.
    #[serde(default)]
    pub pool: Option<String>,
    /// The container image the job runs in, such as `localhost/busybox:ferry` or `ghcr.io/org/train:1.2`: the
    /// agent runs the command in a container of it through the node's container engine (Podman or Docker), with
    /// the job's GPUs, limits and working directory. Absent: the command runs directly on the node.
    #[serde(default)]
    pub image: Option<String>,
    /// The MLflow experiment the job's tracking run belongs to, created if it does not exist; default: the
    /// job's project, else MLflow's `Default` experiment.
    #[serde(default)]
    pub experiment: Option<String>,
    /// The job saves checkpoints and resumes from its latest when it starts again: under the least-attained queue
    /// order, a job that has had less GPU time may stop it (after its lease) and it is queued again. Default false.
    #[serde(default)]
    pub checkpoints: bool,
}

/// The answer to a submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    pub id: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the queue.
    Queued,
    /// Placed on a node; the node has not yet confirmed that it started.
    Starting,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Stopped after its maximum runtime.
    TimedOut,
    /// Its node stopped reporting and the job was not retried.
    Lost,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Starting,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
        JobState::Lost,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Starting | JobState::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// Why a queued job waits: a sentence, and the same reason as structured data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Waiting {
    pub message: String,
    /// The scheduler's reason, tagged by `kind` (`insufficient`, `reserved_for`, `infeasible`, ...).
    pub reason: WaitReason,
    /// When the job can be expected to start if every job running and every job ahead of it in the queue runs to
    /// its runtime limit, or where it has none, for its predicted runtime (the scheduler run forward in virtual
    /// time); unset when one of them has neither.
    #[serde(default)]
    pub estimated_start_us: Option<i64>,
    /// The estimate rests on predicted runtimes of jobs without a limit, not only on limits.
    #[serde(default)]
    pub estimate_predicted: bool,
    /// Why there is no estimate, when there is none.
    #[serde(default)]
    pub no_estimate: Option<String>,
}

/// One worker of a gang: where it runs and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobWorker {
    pub rank: u32,
    pub node: String,
    pub gpu_ids: Vec<u32>,
    /// When its process started; unset until its node confirms.
    #[serde(default)]
    pub started_at_us: Option<i64>,
    /// How it ended; unset while it runs.
    #[serde(default)]
    pub end: Option<WorkerEnd>,
}

/// How one worker of a gang ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerEnd {
    /// What the worker's end alone would make of the job.
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: String,
    pub finished_at_us: i64,
    /// The worker's program could not be started at all (no such file, no permission): a gang that ends so is not
    /// retried, as a single-node job is not, since another try would fail the same way.
    #[serde(default)]
    pub failed_to_start: bool,
}

/// One entry of a job's state timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    pub at_us: i64,
    pub state: JobState,
    pub message: String,
    /// The scheduler's reason as data, for a placement or a preemption; the message says the same in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<TimelineReason>,
}

/// A job as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: u64,
    pub name: Option<String>,
    pub project: Option<String>,
    pub team: Option<String>,
    pub owner: String,
    pub state: JobState,
    pub command: Vec<String>,
    /// Where the job runs on its node; empty when it runs in a directory of its own there (the unpacked code, or an
    /// empty directory).
    pub workdir: String,
    /// The shipped folder the job runs in, if any.
    #[serde(default)]
    pub code: Option<JobCode>,
    /// The container image the job runs in; absent when it runs directly on the node.
    #[serde(default)]
    pub image: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The secrets the job reads: variable name to secret name. Their values are never shown.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// A share of one GPU in thousandths; 0 for whole GPUs.
    pub gpu_share_milli: u32,
    pub gpu_types: Vec<String>,
    pub selector: BTreeMap<String, String>,
    /// The pool the job is pinned to, if it is.
    #[serde(default)]
    pub pool: Option<String>,
    pub priority: PriorityClass,
    pub retries: u32,
    /// Which run this is: 0 for the first, 1 after the first retry.
    pub attempt: u32,
    pub max_runtime_s: Option<u64>,
    /// The node the job runs on (for a gang, rank 0's).
    pub node: Option<String>,
    /// The device indices of the GPUs assigned to the job on its node.
    pub gpu_ids: Vec<u32>,
    /// How many nodes the job asked for: more than 1 for a gang.
    pub nodes: u32,
    /// Every worker of a gang, rank 0 first, once it is placed; empty for a single-node job.
    #[serde(default)]
    pub workers: Vec<JobWorker>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the job is in its state, for a finished job (e.g. "stopped after its maximum runtime of 2h").
    pub message: Option<String>,
    pub submitted_at_us: i64,
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
    /// Bytes of output the server holds for the job.
    pub log_bytes: u64,
    /// When the server's retention (`[retention] logs`) removed the job's output; `None` while it is kept (or when
    /// the job never ran and had none).
    #[serde(default)]
    pub output_removed_at_us: Option<i64>,
    /// For a queued job, why it waits.
    pub waiting: Option<Waiting>,
    /// The state timeline; filled by `GET /jobs/{id}`, empty in listings.
    #[serde(default)]
    pub timeline: Vec<JobEvent>,
    /// What the running job used at its latest sample, summed over its workers; absent before the first sample
    /// arrives and once the job is over (its history is in the time series).
    #[serde(default)]
    pub usage: Option<JobUsage>,
    /// Where an engine (Slurm, Ray, Spark) runs the job: its id there and the native form Ferry generated; absent on
    /// agent pools.
    #[serde(default)]
    pub native: Option<NativeJob>,
    /// The MLflow run created for the job, which `mlflow.start_run()` inside the job attaches to (through
    /// `MLFLOW_RUN_ID`); its metrics, params and artifacts are served by the tracking API.
    #[serde(default)]
    pub tracking: Option<JobTracking>,
    /// How long the job was expected to run when it was submitted, learned from earlier successful runs like it;
    /// absent without such history. Start estimates use it for jobs without `--max-runtime`.
    #[serde(default)]
    pub predicted_runtime: Option<PredictedRuntime>,
    /// The job saves checkpoints and resumes from them (`SubmitJob::checkpoints`).
    #[serde(default)]
    pub checkpoints: bool,
    /// How many of its attempts preemption ended (they do not count against its retries).
    #[serde(default)]
    pub preemptions: u32,
    /// The GPU-seconds its earlier attempts ran, which the least-attained queue order files it by.
    #[serde(default)]
    pub attained_gpu_s: u64,
}

/// A runtime predicted from history: the 90th percentile of the most recent successful runs like the job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PredictedRuntime {
    pub runtime_s: u64,
    /// How many earlier runs it rests on.
    pub samples: u32,
    /// `same_kind`: runs of the same user, name, command, project and resources; `same_name`: runs of the same
    /// user and name with another command or other resources.
    pub basis: String,
}

/// How well runtime predictions matched what jobs then ran: `GET /api/v1/predictions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PredictionAccuracy {
    /// The period: jobs that succeeded from this time to now.
    pub since_us: i64,
    /// Jobs that succeeded in the period with a prediction (at most the most recent 100,000), among those the
    /// caller may see.
    pub jobs: u64,
    /// The median of |predicted - actual| / actual, in percent.
    pub median_error_pct: f64,
    /// The share of jobs whose prediction was within 25% of what they ran.
    pub within_25_pct: f64,
    /// The share within a factor of two either way.
    pub within_2x: f64,
    /// The share that ran longer than predicted.
    pub ran_longer: f64,
}

/// A job's MLflow run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobTracking {
    pub run_id: String,
    pub experiment_id: String,
}

/// A job as its engine knows it, for the engineer who wants to look underneath.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NativeJob {
    /// The engine kind: `slurm`, `ray`, `spark`.
    pub kind: String,
    /// The engine's own id (a Slurm job id, a Ray submission id, a Spark run name).
    pub id: String,
    /// What Ferry submitted: the batch script, the submission body, the `spark-submit` command line.
    pub spec: String,
    /// The run's state in the engine at the bridge's latest look (`pending: Resources`, `running`), while Ferry
    /// follows it.
    #[serde(default)]
    pub state: Option<String>,
}

/// A running job's measured use at one moment, against which its allocation can be read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobUsage {
    /// When the oldest of the workers' latest samples was taken.
    pub sampled_at_us: i64,
    /// Workers that have reported a sample.
    pub workers: u32,
    pub cpu_millis_used: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// The mean utilisation over the job's GPUs that were measured.
    pub gpu_utilization_percent: Option<f64>,
    pub gpu_memory_used_bytes: Option<u64>,
}

/// The queue at a glance (`GET /api/v1/queue`): how many jobs wait and since when, overall, per team and per pool
/// they could run in, and how many are placed. Counted by the server over every unfinished job, however many.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueSummary {
    pub queued: u64,
    /// Jobs starting or running.
    pub placed: u64,
    /// When the longest-waiting queued job was submitted.
    pub oldest_queued_at_us: Option<i64>,
    /// Per team (`""` for jobs of no team), by name.
    pub teams: Vec<QueueGroup>,
    /// Per pool a queued job could run in (a job that fits several pools counts in each), by name.
    pub pools: Vec<QueueGroup>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueGroup {
    pub name: String,
    pub queued: u64,
    pub oldest_queued_at_us: i64,
}

/// A page of jobs, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// What a job logged to its MLflow run: params and a summary of each metric, and one metric's history when asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobMetrics {
    pub job_id: u64,
    pub run_id: String,
    pub experiment_id: String,
    /// The run's MLflow status: SCHEDULED, RUNNING, FINISHED, FAILED or KILLED.
    pub status: String,
    pub params: BTreeMap<String, String>,
    pub metrics: Vec<MetricSummary>,
    /// Every logged value of the metric named by `?key=`, in the order logged (at most the API's limit).
    #[serde(default)]
    pub history: Vec<MetricValue>,
}

/// One metric of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricSummary {
    pub key: String,
    /// The value at the greatest step (NaN and infinities are `null`).
    pub last: Option<f64>,
    pub step: i64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// How many values were logged.
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricValue {
    pub step: i64,
    pub value: Option<f64>,
    pub timestamp_ms: i64,
}

/// How a job whose output the server's retention removed says so: `removed 90 days after the job finished`.
pub fn output_removed_words(finished_at_us: Option<i64>, removed_at_us: i64) -> String {
    const DAY_US: i64 = 86_400_000_000;
    match finished_at_us {
        Some(finished) => {
            let days = (removed_at_us - finished).max(0) / DAY_US;
            let unit = if days == 1 { "day" } else { "days" };
            format!("removed by the server's retention {days} {unit} after the job finished")
        }
        None => "removed by the server's retention".to_string(),
    }
}
