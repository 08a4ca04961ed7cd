//! The scheduler's reasons on the wire: why a queued job waits (`Waiting.reason`), and why a job was placed where it
//! was or preempted (`JobEvent.reason` in a timeline). Each is data, tagged by `kind`; the sentence that goes with
//! it is the `message` beside it.
//!
//! These are the API's own types, converted by the server from the core's and the store's: a change to the
//! scheduler's reasons reaches clients only when this file changes with it. Every enum ends in `Other`, which a
//! client reads for a kind it does not know (from a newer server), so that one new reason does not make a whole job
//! unreadable; the server never sends it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A resource a job asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Gpus,
    /// In thousandths of a CPU.
    Cpus,
    /// In bytes.
    Memory,
}

/// How one node falls short of what a waiting job needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeShortfall {
    pub node: String,
    pub resource: ResourceKind,
    pub free: u64,
    /// The amount of that resource held by running jobs on the node.
    pub held: u64,
    /// The running jobs that hold some of it, lowest id first.
    pub held_by: Vec<u64>,
}

/// Why a queued job has not started, tagged by `kind`. Amounts are in the unit of their `resource`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitReason {
    /// No node has ever registered with the server.
    NoNodes,
    /// Nodes exist, but none the job may run on is ready. `nodes` counts those it may run on: the nodes of `pool`
    /// when it is pinned to one.
    NoReadyNodes {
        nodes: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// No node allows the job: none has the GPU model it asks for, or the labels its selector names, or runs images
    /// when it has one.
    NoMatchingNode {
        gpu_models: Vec<String>,
        selector: Vec<String>,
        models_known: Vec<String>,
        /// The pool the job is pinned to, if it is, and the pools there are.
        #[serde(default)]
        pool: Option<String>,
        #[serde(default)]
        pools_known: Vec<String>,
        /// The job runs in a container image, and some pools' backends do not run images.
        #[serde(default)]
        image: bool,
        /// The job is a gang (a multi-node job), and some pools' backends do not run gangs.
        #[serde(default)]
        gang: bool,
    },
    /// Running jobs are being preempted to make room for it; it starts when they have stopped.
    Preempting { jobs: Vec<u64> },
    /// Starting the job would take its team past its quota plus what it may borrow.
    OverTeamLimit { team: String, resource: ResourceKind, would_hold: u64, limit: u64 },
    /// Starting the job would take its project past the project's quota plus what it may borrow within the team.
    OverProjectLimit { team: String, project: String, resource: ResourceKind, would_hold: u64, limit: u64 },
    /// No node, even empty, is large enough for the job.
    Infeasible {
        resource: ResourceKind,
        needed: u64,
        largest: u64,
        /// The pool the job is pinned to, whose nodes were the only ones looked at.
        #[serde(default)]
        pool: Option<String>,
    },
    /// Some node could hold the job, but none has enough free right now; `more_nodes` are short too but not named.
    Insufficient { resource: ResourceKind, needed: u64, shortfalls: Vec<NodeShortfall>, more_nodes: u32 },
    /// The job would fit, but the free resources are held back for a job ahead of it in the queue.
    ReservedFor { job: u64, node: String },
    /// Only a burst pool could run it now, and bursting is not allowed yet.
    BurstNotYet { pool: String, after_s: Option<u64>, waited_s: u64 },
    /// A gang needs more nodes in one pool than could ever each hold one of its workers.
    GangInfeasible { workers: u32, nodes_able: u32 },
    /// A gang waits until enough nodes of one pool can each hold a worker at the same time.
    GangWaiting { workers: u32, nodes_free: u32, pool: String, nodes: Vec<String> },
    /// New nodes of an elastic pool have been requested for it; it starts when they are up.
    Provisioning { pool: String, nodes_starting: u32 },
    /// No node can hold it now, and the elastic pool that could start one is skipped until `until_us` after it failed
    /// to start nodes (`failure`; `detail` is the provider's words).
    ElasticCoolingDown { pool: String, until_us: i64, failure: String, detail: String },
    /// The job fits now and starts in the next scheduling cycle.
    Starting,
    /// A reason this client does not know; the message says what it is.
    #[serde(other)]
    Other,
}

/// Why an entry of a job's timeline happened, tagged by `kind`, for the entries the scheduler decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TimelineReason {
    /// The job was placed: where, with what, and why there.
    Placed {
        pool: String,
        /// Every worker's node and GPUs, rank 0 first: one for a single-node job.
        workers: Vec<PlacedWorker>,
        /// Each worker's CPUs, in thousandths.
        cpu_millis: u64,
        /// The share of the GPU each worker has, in thousandths; 0 for whole GPUs.
        gpu_share_milli: u32,
        /// How many ready nodes of the pool could hold it when it was placed.
        candidates: u32,
        /// What rank 0's node keeps free once the job is on it.
        gpus_free_after: u32,
        cpu_millis_free_after: u64,
        /// Set when it was backfilled: it started on resources held for this blocked job, and ends (by its runtime
        /// limit) before that job can start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backfilled_before: Option<u64>,
        /// Set when it burst to a burst pool: how long it had waited then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        burst_waited_s: Option<u64>,
        /// The pools before the burst pool, in order, that could not hold it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        burst_past: Vec<String>,
    },
    /// The job was preempted: stopped, with a grace period, to make room for job `by`, by `rule`.
    Preempted { by: u64, rule: PreemptRule, grace_s: u64 },
    /// The job went back to the queue because of `cause`, for attempt `attempt` (counting from 1) of at most
    /// `attempts`, not to start before `not_before_us` (a retry's backoff).
    Requeued { cause: RequeueCause, attempt: u32, attempts: u32, not_before_us: i64 },
    /// The job was lost with its node (`node`, where it was placed on one), by `cause`, with no retry left.
    Lost {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        cause: LossCause,
    },
    /// A reason this client does not know; the message says what it is.
    #[serde(other)]
    Other,
}

/// One worker of a placed job: its node and the device indices of its GPUs there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlacedWorker {
    pub node: String,
    pub gpu_ids: Vec<u32>,
}

/// Why a job went back to the queue, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequeueCause {
    /// Its run was preempted after running `ran_s` seconds (lost, but for what its checkpoints kept); preemptions
    /// use up no retry.
    Preempted { ran_s: u64 },
    /// Its run failed and it has a retry left, which waits `delay_s` seconds first.
    Failed { delay_s: u64 },
    /// Its node (or a gang worker's), `node`, was lost with the run by `cause`; retried at once.
    NodeLost {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        cause: LossCause,
    },
    /// A cause this client does not know; the message says what it is.
    #[serde(other)]
    Other,
}

/// What befell the node a run was lost with, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossCause {
    /// Its agent stopped reporting for the node timeout, `timeout_s`.
    NodeSilent { timeout_s: u64 },
    /// It was reported down.
    NodeDown,
    /// Its agent came back without any record of the run.
    RunForgotten,
    /// The server restarted and could not take the job back.
    ServerRestart,
    /// A cause this client does not know; the message says what it is.
    #[serde(other)]
    Other,
}

/// The rule by which a running job was preempted, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreemptRule {
    /// A job of higher priority needed its resources.
    Priority { victim_priority: i32, preemptor_priority: i32 },
    /// Its team borrowed beyond its quota, and the lending team needed its guaranteed share back.
    Reclaim { victim_team: String, preemptor_team: String },
    /// Its project borrowed beyond its quota within the team, and a sibling project needed its share back.
    ReclaimProject { team: String, victim_project: String, preemptor_project: String },
    /// Under the least-attained queue order: the job checkpoints, ran its lease, and had received more GPU time
    /// (`victim_gpu_s`, GPU-seconds over all its attempts) than the waiting job of its priority (`preemptor_gpu_s`);
    /// it resumes from its checkpoint.
    Attained { victim_gpu_s: u64, preemptor_gpu_s: u64 },
    /// A rule this client does not know; the message says what it is.
    #[serde(other)]
    Other,
}
