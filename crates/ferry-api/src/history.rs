//! The installation's history as the simulator replays it (`ferry history export`): the cluster as the scheduler
//! sees it now (pools in their order, the quotas in force, the nodes) and, page by page, the jobs submitted over a
//! period with what they asked for, when they ran and how they ended. Nothing of a job's command, environment,
//! secrets, code or output is here: only what scheduling saw.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::jobs::{JobState, PriorityClass};
use crate::tokens::QuotaAmount;

/// How many jobs a page holds when the request does not say.
pub const HISTORY_PAGE_DEFAULT: u32 = 1000;
/// The most jobs one page may hold: a page is built in memory, so 100,000 jobs come in many pages, never in one.
pub const HISTORY_PAGE_MAX: u32 = 5000;

/// The cluster as the scheduler has it now: `GET /api/v1/history/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryCluster {
    /// When the server read it, in microseconds since the Unix epoch.
    pub at_us: i64,
    /// How long past usage weighs in fair share; 0 for the scheduler's default.
    pub fair_share_half_life_s: u64,
    /// How GPU jobs choose among nodes: `best-fit` or `fgd`.
    pub gpu_placement: String,
    /// How the queue is ordered within a priority: `fair-share`, `fifo`, `shortest-first` or `least-attained`.
    #[serde(default)]
    pub queue_order: Option<String>,
    /// The aging bound of `shortest-first` and `least-attained`, in seconds; 0 for none.
    #[serde(default)]
    pub queue_aging_s: Option<u64>,
    /// The lease of `least-attained`, in seconds; 0 when it preempts nothing; absent for the other orders.
    #[serde(default)]
    pub queue_lease_s: Option<u64>,
    /// The levels of `least-attained`, in GPU-seconds received; absent for the other orders.
    #[serde(default)]
    pub queue_levels_gpu_s: Option<Vec<u64>>,
    /// How many blocked jobs a cycle reserves for, where configured; absent for the scheduler's default.
    #[serde(default)]
    pub reserve_depth: Option<u32>,
    /// The configured pools in their order, then the pools that only nodes name (which the scheduler puts last).
    pub pools: Vec<HistoryPool>,
    /// The teams with a quota in force (the configuration file's, else one set through the API), and the teams
    /// whose projects have one.
    pub teams: Vec<HistoryTeam>,
    /// Every node the server knows, ready or not, but those of elastic pools (which start their own).
    pub nodes: Vec<HistoryNode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPool {
    pub name: String,
    /// Lower is used first. A pool the configuration does not declare has `i32::MAX`, as the scheduler orders it.
    pub order: i32,
    pub burst: bool,
    pub burst_after_s: Option<u64>,
    pub price_gpu_hour: Option<f64>,
    pub price_cpu_hour: Option<f64>,
    /// Whether the configuration declares the pool; `false` for a pool only nodes name.
    pub declared: bool,
    /// Set for a pool that starts nodes on demand.
    pub elastic: Option<HistoryElastic>,
    /// Whether the pool's backend runs container images, and gangs (multi-node jobs): the scheduler sends such jobs
    /// only to pools that do.
    #[serde(default = "yes")]
    pub images: bool,
    #[serde(default = "yes")]
    pub gangs: bool,
}

fn yes() -> bool {
    true
}

/// An elastic pool's capacity: up to `max_nodes` nodes like `node`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryElastic {
    pub max_nodes: u32,
    pub startup_s: u64,
    pub idle_release_s: u64,
    pub node: HistoryTemplate,
    /// 0: not set.
    #[serde(default)]
    pub startup_timeout_s: u64,
    #[serde(default)]
    pub retry_after_s: u64,
    /// What one machine of the pool costs an hour, as its cloud bills it; absent for a pool without a cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_node_hour: Option<f64>,
}

/// What one node of an elastic pool offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryTemplate {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub gpu_model: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A team's quota in force, what it may borrow, and its projects' quotas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryTeam {
    pub name: String,
    /// What is left out is unlimited; empty for a team that only its projects' quotas name.
    pub quota: QuotaAmount,
    pub borrow_limit: Option<QuotaAmount>,
    pub projects: Vec<HistoryProject>,
}

/// A project's quota in force within its team (what the project leaves out filled in from its team's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryProject {
    pub name: String,
    pub quota: QuotaAmount,
    pub borrow_limit: Option<QuotaAmount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryNode {
    pub name: String,
    pub pool: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// The model of each GPU, by index; its length is the node's GPU count.
    pub gpu_models: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Whether its agent (or engine) reports now.
    pub ready: bool,
}

/// One job: what it asked for, when it was submitted, started and finished, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryJob {
    pub id: u64,
    /// The job's name (`ferry run --name`, a sweep's), which the simulator's runtime predictions match on.
    #[serde(default)]
    pub name: Option<String>,
    pub owner: String,
    pub team: Option<String>,
    pub project: Option<String>,
    /// The state now: a finished state, or `queued`, `starting`, `running` for a job not finished yet.
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub submitted_at_us: i64,
    /// When its last attempt started running; absent for a job that never ran (or waits again for a retry).
    pub started_at_us: Option<i64>,
    pub finished_at_us: Option<i64>,
    /// The attempt it is at (0 for the first), which counts retries and requeues.
    pub attempt: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub gpu_share_milli: u32,
    pub gpu_types: Vec<String>,
    pub selector: BTreeMap<String, String>,
    /// Workers of a gang; 1 for a single-node job.
    pub nodes: u32,
    pub priority: PriorityClass,
    /// The pool the job was pinned to; absent when the scheduler chose.
    pub pool: Option<String>,
    /// Whether it ran in a container image (only nodes that run images take it).
    pub image: bool,
    pub max_runtime_s: Option<u64>,
}

/// A page of jobs, oldest first: `GET /api/v1/history/jobs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// The start of the period (`since`), resolved: pass it back as `since` with `after` to read the next page.
    pub since_us: i64,
    /// The server's time when it read the page, for the jobs still running.
    pub now_us: i64,
    pub jobs: Vec<HistoryJob>,
    /// Pass as `after` to read the next page; absent on the last page.
    pub next_after: Option<u64>,
}
