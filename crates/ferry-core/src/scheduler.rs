//! One scheduling state and the cycle that turns it into decisions.
//!
//! The queue is ordered by priority (higher first), then by job id (which the store hands out in submission order).
//! A cycle walks the queue once: a job that fits on a ready node starts there (best fit, to keep large holes for
//! large jobs); a job that does not fit reserves what it needs on the node closest to holding it, so that jobs
//! behind it may only use what it does not need and can never starve it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::constraint::{ConstraintId, Constraints};
use crate::elastic::{self, ElasticPool, Supply, Want};
use crate::fairshare::{self, Usage};
use crate::fgd::{self, GpuDemand, Mix};
use crate::idhash::IdMap;
use crate::lifecycle;
use crate::node::{Node, Nodes};
use crate::nodelife::{AbandonReason, ElasticStatus, NodeLife, NodeStatus, NotReadyReason, ProvisionFailure};
use crate::nodeset::NodeSet;
use crate::order::{self, QueueOrder};
use crate::preempt::{self, PreemptReason, PREEMPTIONS_PER_CYCLE_MAX};
use crate::queue::{ClassKey, Classes, Unreached, Walk};
use crate::reason::{
    BurstReason, NodeShortfall, Placement, ProvisionReason, ReleaseReason, ResourceKind, WaitReason,
    PROVISION_JOBS_NAMED_MAX, SHORTFALL_NODES_MAX,
};
use crate::resources::Resources;
use crate::JobId;

/// A node as its backend describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub pool: String,
    /// CPUs and memory the node offers; `gpus` must equal `gpu_indices.len()`.
    pub capacity: Resources,
    /// The device indices of the node's GPUs, as the node's driver numbers them.
    pub gpu_indices: Vec<u32>,
    /// The model of the node's GPUs (such as `A100`), when known; GPU-model constraints match against it.
    pub gpu_model: Option<String>,
    /// Labels such as `rack=a`, which job selectors match.
    pub labels: BTreeMap<String, String>,
}

/// A pool: nodes behind one backend, with a place in the order an admin sets (owned capacity first). A `burst` pool
/// (cloud capacity, say) takes a job only when every pool before it is fully allocated for what the job needs, or
/// when the job has waited longer than `burst_after_s`. `images` and `gangs` are what its backend can do (the server
/// reads them from the backend's capabilities).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: String,
    pub order: i32,
    pub burst: bool,
    pub burst_after_s: Option<u64>,
    /// Set for a pool whose provider starts nodes on request: cycles ask for new nodes (`Decision::Provision`) when
    /// blocked jobs that the burst rules let in could run on them, and give back nodes that idle
    /// (`Decision::Release`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic: Option<ElasticPool>,
    /// The pool's backend runs jobs in container images: only such pools take a job with one.
    #[serde(default = "yes")]
    pub images: bool,
    /// The pool's backend runs gangs (multi-node jobs): only such pools take one.
    #[serde(default = "yes")]
    pub gangs: bool,
}

fn yes() -> bool {
    true
}

/// A pool of agents' defaults: it runs images and gangs.
impl Default for PoolInfo {
    fn default() -> PoolInfo {
        PoolInfo {
            name: String::new(),
            order: 0,
            burst: false,
            burst_after_s: None,
            elastic: None,
            images: true,
            gangs: true,
        }
    }
}

impl PoolInfo {
    /// Whether the pool's backend can run the job at all: its image and its gang, whatever its nodes offer. A pool
    /// the core has not been told of is one of agents, which run both.
    pub(crate) fn runs(pool: Option<&PoolInfo>, request: &JobRequest) -> bool {
        pool.is_none_or(|p| (p.images || !request.image) && (p.gangs || !request.is_gang()))
    }
}

/// A team's quota: what it is guaranteed, and how much more it may borrow from other teams' idle quota. Borrowed
/// resources are taken back by preemption when their owner needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamInfo {
    pub name: String,
    pub quota: Resources,
    /// How much beyond its quota the team may use; `None` means as much as is idle.
    pub borrow_limit: Option<Resources>,
}

impl TeamInfo {
    /// The most the team may hold at once.
    fn ceiling(&self) -> Option<Resources> {
        ceiling(&self.quota, self.borrow_limit.as_ref())
    }
}

/// Quota plus borrowing limit: the most a team or project may hold; `None` when it may borrow whatever is idle.
fn ceiling(quota: &Resources, borrow_limit: Option<&Resources>) -> Option<Resources> {
    borrow_limit.map(|b| quota.checked_add(b).unwrap_or(*quota))
}

/// A project's quota within its team: a guaranteed share of what the team may hold, and how much more it may borrow
/// from its sibling projects' idle quota; borrowed resources are taken back by preemption when a sibling needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectInfo {
    pub team: String,
    pub name: String,
    pub quota: Resources,
    /// How much beyond its quota the project may use; `None` means as much as is idle.
    pub borrow_limit: Option<Resources>,
}

impl ProjectInfo {
    fn ceiling(&self) -> Option<Resources> {
        ceiling(&self.quota, self.borrow_limit.as_ref())
    }
}

/// What the scheduler needs to know of a queued job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub id: JobId,
    /// CPUs, memory and whole GPUs.
    pub resources: Resources,
    pub priority: i32,
    /// A share of one GPU in thousandths (1 to 999), for work that needs less than a whole device; 0 otherwise. A
    /// job asks for whole GPUs or for a share, never both.
    pub gpu_share_milli: u32,
    /// The GPU models the job may run on; empty means any.
    pub gpu_models: Vec<String>,
    /// Labels a node must carry, with these values, to run the job.
    pub selector: BTreeMap<String, String>,
    /// When the job entered the queue, for how long it has waited (bursting, estimates).
    pub submitted_at_us: i64,
    /// The team whose quota the job counts against; empty for none.
    pub team: String,
    /// The user whose fair share the job counts against.
    pub user: String,
    /// The job is stopped after this long; estimates and backfill rely on it. `None` for no limit.
    pub max_runtime_s: Option<u64>,
    /// How many workers a gang (a multi-node job) has, each holding `resources` on a node of its own; they start
    /// all together or not at all. 0 and 1 both mean a single-node job.
    pub nodes: u32,
    /// The project within the team; fair share is balanced between projects first, then between users.
    pub project: String,
    /// The pool the job is pinned to (`ferry run --pool`); `None` lets the scheduler choose by pool order.
    #[serde(default)]
    pub pool: Option<String>,
    /// The job runs in a container image: only pools whose backend runs images take it (`PoolInfo::images`).
    #[serde(default)]
    pub image: bool,
    /// The job may not start before this time (a retry's backoff, see `lifecycle::retry_delay_s`); 0 for any time.
    #[serde(default)]
    pub not_before_us: i64,
    /// How long the job is expected to run, predicted from the history of jobs like it (see `predict`): forecasts
    /// and the shortest-first ordering use it where the job has no runtime limit. Never used to backfill: only a
    /// limit, which is enforced, makes that promise.
    #[serde(default)]
    pub expected_runtime_s: Option<u64>,
    /// The GPU-seconds the job has already received in earlier attempts (it was preempted or requeued and resumes
    /// from a checkpoint), which the least-attained ordering files it by.
    #[serde(default)]
    pub attained_gpu_s: u64,
    /// The job saves checkpoints and resumes from its latest when it starts again (`ferry run --checkpoints`): the
    /// least-attained order may stop it for jobs that have had less GPU time (see `order`).
    #[serde(default)]
    pub checkpoints: bool,
}

impl JobRequest {
    pub fn new(id: JobId, resources: Resources, priority: i32) -> JobRequest {
        JobRequest { id, resources, priority, ..JobRequest::default() }
    }

    /// How many nodes the job runs on: 1 unless it is a gang.
    pub fn workers(&self) -> u32 {
        self.nodes.max(1)
    }

    /// The key fair share counts the job's project under: projects are named within their team.
    fn project_key(&self) -> String {
        format!("{}/{}", self.team, self.project)
    }

    pub(crate) fn is_gang(&self) -> bool {
        self.nodes > 1
    }

    /// What the whole job holds, all workers together: what its team's quota and its user's fair share count.
    fn total(&self) -> Resources {
        total_of(self.footprint(), self.workers())
    }

    fn wants_gpu(&self) -> bool {
        self.resources.gpus > 0 || self.gpu_share_milli > 0
    }

    fn gpu_demand(&self) -> Option<GpuDemand> {
        match (self.gpu_share_milli, self.resources.gpus) {
            (0, 0) => None,
            (0, k) => Some(GpuDemand::Whole(k)),
            (share, _) => Some(GpuDemand::Share(share)),
        }
    }

    /// Whether the node's pool, model and labels allow the job, whatever is free there; `pool` is what the core
    /// knows of the node's pool, whose backend must run the job's image and gang.
    pub(crate) fn allowed_on(&self, node: &NodeInfo, pool: Option<&PoolInfo>) -> bool {
        let model_ok = !self.wants_gpu()
            || self.gpu_models.is_empty()
            || node.gpu_model.as_ref().is_some_and(|m| self.gpu_models.iter().any(|w| w.eq_ignore_ascii_case(m)));
        let pool_ok = self.pool.as_ref().is_none_or(|pool| *pool == node.pool);
        pool_ok
            && model_ok
            && PoolInfo::runs(pool, self)
            && self.selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
    }

    /// CPUs, memory and GPUs as one vector, a share counting as one GPU: what a node must have in capacity (for a
    /// gang, each of its nodes).
    fn footprint(&self) -> Resources {
        footprint_of(&self.resources, self.gpu_share_milli)
    }
}

/// A job's footprint (see `JobRequest::footprint`) from its resources and GPU share.
fn footprint_of(resources: &Resources, gpu_share_milli: u32) -> Resources {
    let gpus = resources.gpus + u32::from(gpu_share_milli > 0);
    Resources { gpus, ..*resources }
}

/// What `workers` workers of one footprint hold together.
fn total_of(one: Resources, workers: u32) -> Resources {
    let n = u64::from(workers);
    Resources {
        cpu_millis: one.cpu_millis.saturating_mul(n),
        memory_bytes: one.memory_bytes.saturating_mul(n),
        gpus: one.gpus.saturating_mul(workers),
    }
}

/// Where a job runs and what it holds there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub node: String,
    /// CPUs, memory and whole GPUs held.
    pub resources: Resources,
    /// The GPUs the job sees: the whole ones it holds, or the one it has a share of.
    pub gpus: Vec<u32>,
    /// The share of `gpus[0]` held, in thousandths; 0 for whole GPUs.
    pub gpu_share_milli: u32,
    /// The other workers of a gang, ranks 1 and up, each on a node of its own holding `resources` there; empty for
    /// a single-node job. `node` and `gpus` above are rank 0's.
    pub peers: Vec<Peer>,
}

/// One worker of a gang beyond rank 0: its node and the GPUs it holds there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub node: String,
    pub gpus: Vec<u32>,
}

impl Allocation {
    /// Every worker's node and GPUs, rank 0 first.
    pub fn workers(&self) -> impl Iterator<Item = (&str, &[u32])> {
        std::iter::once((self.node.as_str(), self.gpus.as_slice()))
            .chain(self.peers.iter().map(|p| (p.node.as_str(), p.gpus.as_slice())))
    }
}

/// Everything that changes the scheduler's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node registered, or re-registered with new capacity; it is ready.
    NodeUp(NodeInfo),
    /// A node was heard from at `at_us` (an agent's report, an engine's answer): its heartbeat. A node not heard
    /// from for the node timeout goes not ready at a tick (see `nodelife`).
    NodeSeen { node: String, at_us: i64 },
    /// A node stopped reporting, or its backend says it is down. Its jobs are lost: each yields a `Decision::Lost`.
    NodeDown { node: String },
    /// A node is gone for good (an elastic pool's node given back after `Decision::Release`, say). It must hold no
    /// job: a node with jobs goes `NodeDown` first.
    NodeRemoved { node: String },
    /// A job entered the queue.
    JobSubmitted(JobRequest),
    /// A job already running somewhere is re-entered after a restart of the server.
    JobAdopted { request: JobRequest, allocation: Allocation },
    /// A job left the system (finished, cancelled or lost), wherever it was; its resources are free again.
    JobEnded { id: JobId },
    /// The pools and their order, replacing any earlier configuration. Nodes of a pool not listed here are owned
    /// capacity, after the listed pools.
    PoolsConfigured(Vec<PoolInfo>),
    /// The teams and their quotas, and the half-life of the usage fair share weighs, replacing earlier settings.
    TeamsConfigured { teams: Vec<TeamInfo>, fair_share_half_life_s: u64 },
    /// The projects with quotas of their own within their teams, replacing earlier settings.
    ProjectsConfigured(Vec<ProjectInfo>),
    /// How GPU jobs choose among the nodes that can hold them.
    PlacementConfigured(GpuPlacement),
    /// How the queue is ordered within one priority (see `order`).
    QueueOrderConfigured(QueueOrder),
    /// How many blocked jobs a cycle reserves for (see `RESERVE_DEPTH_DEFAULT`); from 1 to `RESERVE_DEPTH_MAX`.
    ReserveDepthConfigured(u32),
    /// How long a ready node may go unheard before it is not ready; `None` (the default): never.
    NodeTimeoutConfigured(Option<u64>),
    /// The provider of elastic pool `pool` could not start `nodes` of the nodes asked of it: they are not waited for,
    /// and the pool is asked for nothing for its `retry_after_s`, so blocked jobs are offered the next pool.
    ProvisionFailed { pool: String, nodes: u32, failure: ProvisionFailure, detail: String },
    /// Nodes asked of elastic pool `pool` at `requested_at_us` (one time per node) that have not joined yet, taken
    /// back after a restart of the server so that they are neither asked for again nor forgotten. Nodes of the pool
    /// that are already known must be up (`NodeUp`) before this: a new node's `NodeUp` takes the oldest request.
    NodesStarting { pool: String, requested_at_us: Vec<i64> },
    /// The time is now `now_us`; usage accrues and waiting is measured against it. Yields the lifecycle's timed
    /// decisions: nodes silent past the node timeout (`NodeNotReady`, then `Lost` for each of their jobs) and nodes
    /// asked of elastic pools that did not join in time (`Abandon`).
    Tick { now_us: i64 },
}

/// How a GPU job chooses among the nodes of a pool that can hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuPlacement {
    /// The node left with the fewest free GPUs (then CPUs, then memory): fast, and keeps whole nodes free.
    #[default]
    BestFit,
    /// The node and GPU whose expected fragmentation, for the recent mix of GPU jobs, grows least (see `fgd`).
    Fgd,
}

/// What the driver must do. Every decision carries its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Start {
        job: JobId,
        allocation: Allocation,
        reason: Placement,
    },
    Lost {
        job: JobId,
        node: String,
    },
    /// The node stopped reporting: it takes no work until it is up again, and the `Lost` decisions that follow name
    /// its jobs.
    NodeNotReady {
        node: String,
        reason: NotReadyReason,
    },
    /// Stop waiting for `nodes` of the nodes asked of an elastic pool (the oldest): they did not join within its
    /// start-up timeout. The driver terminates what it launched for them; the pool cools down.
    Abandon {
        pool: String,
        nodes: u32,
        reason: AbandonReason,
    },
    /// Stop a running job (with a grace period) so that `by` can start; the driver requeues it when it has ended.
    Preempt {
        job: JobId,
        by: JobId,
        reason: PreemptReason,
    },
    /// Ask the provider of an elastic pool for `nodes` more nodes like the pool's template; each joins with
    /// `Event::NodeUp` (which counts against this request) once it has started.
    Provision {
        pool: String,
        nodes: u32,
        reason: ProvisionReason,
    },
    /// Give a node of an elastic pool back to its provider: it has idled long enough. It takes no more jobs; the
    /// driver confirms with `Event::NodeRemoved`.
    Release {
        node: String,
        reason: ReleaseReason,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("job {0} is already known to the scheduler")]
    DuplicateJob(JobId),
    #[error("node {0} is not known to the scheduler")]
    UnknownNode(String),
    #[error("job {job} cannot be adopted on node {node}: {why}")]
    AdoptionConflict { job: JobId, node: String, why: String },
    #[error("node {node} declares {gpus} GPUs but lists {indices} device indices")]
    GpuCountMismatch { node: String, gpus: u32, indices: usize },
    #[error("node {node} cannot be removed while it runs jobs {jobs:?}; report it down first")]
    NodeBusy { node: String, jobs: Vec<JobId> },
    #[error("{0}")]
    BadSetting(String),
}

/// What a node keeps free after a placement: whole GPUs, CPUs, memory; lower is a tighter fit.
type FitScore = (u32, u64, u64);
/// A pool's place in the order: its configured order (unlisted pools after all listed ones), then its name.
type PoolRank<'a> = (i32, &'a str);
/// How good an FGD placement is: pool first, then the growth of expected fragmentation, then the fit.
type FgdScore<'a> = (PoolRank<'a>, f64, FitScore);
/// How costly a preemption on one node is: victims, the highest victim priority, the node's name.
type VictimScore<'a> = (usize, i32, &'a str);

/// How many blocked jobs, in queue order, a cycle tries to make room for (preemption) and reserves resources for,
/// unless configured (`Event::ReserveDepthConfigured`). Jobs behind them wait for a later cycle; like Slurm's
/// `bf_max_job_test`, this bounds a cycle on a deep queue. Deeper protects more waiting jobs from being passed by
/// smaller ones and costs more a cycle; on the simulator's trace-shaped workload at 4x load, 64 waited no longer
/// than 256 on average (big jobs 6% longer, every job 15% shorter) at half the cost (crates/ferry-bench/README.md).
pub const RESERVE_DEPTH_DEFAULT: u32 = 64;
/// The most a configured reserve depth may be.
pub const RESERVE_DEPTH_MAX: u32 = 100_000;

/// What one cycle learns as it walks the queue.
#[derive(Default)]
struct Cycle {
    /// Each node's capacity, in the same order.
    capacity: Vec<Resources>,
    /// Ready nodes with unreserved CPU left; at zero nothing more can start.
    nodes_with_cpu: usize,
    /// At least as much CPU and memory as any one ready node has free (see `refresh_bound`), and how many times
    /// what a node has free changed since it was worked out.
    bound: Resources,
    changes_since_bound: usize,
    /// The pools in the order jobs fill them, and each node's position in that list.
    pool_order: Vec<String>,
    pool_of: Vec<usize>,
    /// For each pool, its ready nodes by how many whole GPUs they have free: a whole-GPU job looks at the nodes with
    /// the fewest free GPUs that are enough, instead of at every node.
    by_free_gpus: Vec<BTreeMap<u32, NodeSet>>,
    /// Jobs that found no node, by shape (see `shape_of`): the least CPUs and memory that found none (see
    /// `Failed`).
    failed: IdMap<u64, Failed>,
    /// Classes tried out of turn that had a place (see `all_unreached_dead`).
    found_a_place: HashSet<ClassKey>,
    /// Shapes, priorities and least-attained levels of blocked jobs that found nothing to preempt: victims only
    /// become fewer and free resources only shrink within a cycle, so a job of the same shape, priority and level
    /// would find nothing either, and the search (which looks at every running job) is not repeated.
    unpreemptable: HashSet<(u64, i32, usize)>,
    /// Blocked jobs considered for preemption and reservations so far.
    blocked: usize,
    /// Whether a job that asks for more than one that found no place finds none either: not where a burst pool
    /// lets in only jobs too big for the pools before it (see `Failed`).
    monotone: bool,
    /// How many times the cycle has held something back for a blocked job: each time, jobs with runtime limits may
    /// find room to backfill that they did not before.
    held_back_times: u64,
    preemptions: usize,
    /// Jobs that running victims are already being stopped for.
    awaiting_victims: HashSet<JobId>,
    /// The lowest priority among running jobs not being preempted, as the cycle began; preemptions during the cycle
    /// can only raise it, so it stays a safe bound for skipping jobs that could stop nothing.
    lowest_running_priority: Option<i32>,
    /// Under the least-attained order with a lease: the highest level of a running job that attained service may
    /// stop, as the cycle began; a blocked job at this level or above can stop nothing for attained service.
    top_stoppable_level: Option<usize>,
    /// The level of each running job that attained service may stop, as the cycle began (`stoppable_level`): the time
    /// does not move within a cycle, and a job stopped during it is skipped as being preempted.
    stoppable: IdMap<JobId, usize>,
    /// Reserved nodes: what is held back there, for which job, and when that job is expected to start (its shadow
    /// time). A job whose runtime limit ends before the shadow time may use what is held back: backfill.
    shadows: BTreeMap<usize, Shadow>,
    /// How many nodes each pool of `pool_order` has, ready or not.
    nodes_in_pool: Vec<u32>,
    /// The elastic pools, in the order jobs fill them.
    elastic: Vec<ElasticCandidate>,
    /// Blocked jobs that new nodes of elastic pools could hold, in queue order.
    wants: Vec<Want>,
    /// For nodes where a blocked job's start was estimated: the ends of their jobs with runtime limits (see
    /// `limited_ends`), worked out once a cycle; by position, filled as needed.
    ends: Vec<Option<Vec<(i64, Resources)>>>,
}

/// An elastic pool as one cycle sees it.
struct ElasticCandidate {
    name: String,
    /// A node made from the pool's template, to match jobs against.
    template: NodeInfo,
    /// The pool's position in the cycle's `pool_order`, once it has nodes.
    position: Option<usize>,
    /// Its nodes, up, down or starting.
    nodes: u32,
    max_nodes: u32,
    supply: Supply,
}

#[derive(Clone, Copy, Debug)]
struct Shadow {
    held: Resources,
    for_job: JobId,
    starts_at_us: Option<i64>,
}

/// What jobs of one shape asked for and found no place with. A job that asks for at least as much CPU and memory
/// as one that found no node finds none either, since free resources only shrink within a cycle; except where a
/// burst pool lets in only jobs too big for the pools before it together (see `burst_refused`): then only a job that
/// asks for exactly as much (`Cycle::monotone` is false). One that may
/// backfill (it has a runtime limit, and something is held back) could still fit in what is held back, so for it
/// only jobs that also found no room to backfill count, with no longer a limit, and only while nothing more has been
/// held back since (`Cycle::held_back_times`).
#[derive(Clone, Debug, Default)]
struct Failed {
    /// CPUs and memory that found no node: only those not covered by another (asking for at least as much of both).
    fit: Vec<(u64, u64)>,
    /// CPUs, memory and runtime limit of jobs that found no room to backfill either, since `since`.
    backfill: Vec<(u64, u64, u64)>,
    since: u64,
}

impl Failed {
    fn covers(&self, resources: &Resources, backfill: Option<(u64, u64)>, monotone: bool) -> bool {
        let (cpu_millis, memory_bytes) = (resources.cpu_millis, resources.memory_bytes);
        let within = |cpu: u64, memory: u64| {
            if monotone {
                cpu <= cpu_millis && memory <= memory_bytes
            } else {
                cpu == cpu_millis && memory == memory_bytes
            }
        };
        match backfill {
            None => self.fit.iter().any(|&(cpu, memory)| within(cpu, memory)),
            Some((limit_s, held_back_times)) => {
                self.since == held_back_times
                    && self.backfill.iter().any(|&(cpu, memory, l)| within(cpu, memory) && l <= limit_s)
            }
        }
    }

    fn note(&mut self, resources: &Resources, backfill: Option<(u64, u64)>, monotone: bool) {
        let (cpu_millis, memory_bytes) = (resources.cpu_millis, resources.memory_bytes);
        if !self.covers(resources, None, monotone) {
            if monotone {
                self.fit.retain(|&(cpu, memory)| cpu < cpu_millis || memory < memory_bytes);
            }
            self.fit.push((cpu_millis, memory_bytes));
        }
        if let Some((limit_s, held_back_times)) = backfill {
            if self.since != held_back_times {
                self.backfill.clear();
                self.since = held_back_times;
            }
            if !self.covers(resources, backfill, monotone) {
                self.backfill.push((cpu_millis, memory_bytes, limit_s));
            }
        }
    }
}

impl Cycle {
    /// Notes that a job of `shape` asking for `resources` found no node, nor room to backfill where it has a
    /// runtime limit (`limit_s`) and could.
    fn note_failed(&mut self, shape: u64, resources: &Resources, limit_s: Option<u64>) {
        let backfill = limit_s.filter(|_| !self.shadows.is_empty()).map(|l| (l, self.held_back_times));
        let monotone = self.monotone;
        self.failed.entry(shape).or_default().note(resources, backfill, monotone);
    }

    /// Whether a job of `shape` asking for `resources`, with `limit_s` where it could backfill, would find no place,
    /// as one that asked for no more did not (see `Failed`).
    fn failed_before(&self, shape: u64, resources: &Resources, limit_s: Option<u64>) -> bool {
        let backfill = limit_s.filter(|_| !self.shadows.is_empty()).map(|l| (l, self.held_back_times));
        self.failed.get(&shape).is_some_and(|f| f.covers(resources, backfill, self.monotone))
    }

    /// The most whole GPUs free on any one node.
    fn most_free_gpus(&self) -> u32 {
        self.by_free_gpus.iter().filter_map(|index| index.keys().next_back().copied()).max().unwrap_or(0)
    }

    /// At least as much of each resource as any one ready node has free (exactly so for GPUs).
    fn bound(&self) -> Resources {
        Resources { gpus: self.most_free_gpus(), ..self.bound }
    }

    /// Works the bound out again once what nodes have free changed often enough since the last time (an eighth of
    /// the nodes' worth of changes), so that it stays close to exact at a cost that does not grow with the nodes.
    /// Free resources only shrink within a cycle, so a bound not worked out again is still a bound.
    fn refresh_bound(&mut self, free: &[Resources]) {
        if self.changes_since_bound == 0 || self.changes_since_bound.saturating_mul(8) < free.len() {
            return;
        }
        self.changes_since_bound = 0;
        self.bound = free.iter().fold(Resources::ZERO, |acc, f| acc.max(f));
    }

    /// Takes `amount` out of node `i`'s free resources, keeping the cycle's summaries true.
    fn take(&mut self, i: usize, free: &mut [Resources], amount: &Resources) {
        self.set(i, free, free[i].saturating_sub(amount));
    }

    /// Sets what node `i` has free, keeping the cycle's summaries true: the count of nodes with CPU left and the
    /// index by free GPUs (a node is filed under what it has free now, and only there).
    fn set(&mut self, i: usize, free: &mut [Resources], after: Resources) {
        let before = free[i];
        free[i] = after;
        if !before.fits_in(&after) {
            // What a class tried out of turn found free may be taken now.
            self.found_a_place.clear();
        }
        if before.cpu_millis > 0 && after.cpu_millis == 0 {
            self.nodes_with_cpu -= 1;
        } else if before.cpu_millis == 0 && after.cpu_millis > 0 {
            self.nodes_with_cpu += 1;
        }
        self.changes_since_bound += 1;
        if before.gpus != after.gpus {
            let index = &mut self.by_free_gpus[self.pool_of[i]];
            if let Some(nodes) = index.get_mut(&before.gpus) {
                nodes.remove(i);
                if nodes.is_empty() {
                    index.remove(&before.gpus);
                }
            }
            index.entry(after.gpus).or_default().insert(i);
        }
    }
}

/// What each node has free in a cycle, in the order of `Scheduler::nodes`.
type Free = Vec<Resources>;

/// A hash of everything that decides where a job can go but the CPUs and memory it asks for, so that jobs alike
/// are judged together in a cycle (one that asks for no more CPUs and memory than another of its shape finds no place
/// where that one found none). The hasher is deterministic (SipHash with fixed keys). Computed once, when the job is
/// queued (see `JobClass`).
fn shape_of(request: &JobRequest) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    request.resources.gpus.hash(&mut h);
    request.gpu_share_milli.hash(&mut h);
    request.pool.hash(&mut h);
    request.image.hash(&mut h);
    request.gpu_models.hash(&mut h);
    request.selector.hash(&mut h);
    request.team.hash(&mut h);
    request.nodes.hash(&mut h);
    h.finish()
}

/// The shape with the CPUs and memory mixed in: jobs that ask for exactly the same.
fn exact_shape(shape: u64, resources: &Resources) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    shape.hash(&mut h);
    resources.hash(&mut h);
    h.finish()
}

/// The shape with the job's submission time mixed in, where a job's age decides where it may go (timed bursting).
fn aged_shape(shape: u64, submitted_at_us: i64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    shape.hash(&mut h);
    submitted_at_us.hash(&mut h);
    h.finish()
}

/// What a queued job's placement and place in the queue depend on besides what is free, worked out once when it is
/// queued: its interned constraint (which nodes allow it), its shape, whether it has a runtime limit (which lets it
/// backfill), and the ids of its project and user (fair share groups by them).
#[derive(Clone, Copy, Debug)]
struct JobClass {
    constraint: ConstraintId,
    shape: u64,
    limited: bool,
    project: u32,
    user: u32,
}

impl JobClass {
    /// The class a cycle files the job under (see `queue`).
    fn key(&self) -> ClassKey {
        (self.shape, self.limited)
    }
}

/// A queued job as the core holds it: the numbers of its `JobRequest`, with its team, project and user as interned
/// ids (`OwnerIds`) and its GPU models, labels, pool and image as its interned constraint (`Constraints`), so that a
/// deep queue costs a fixed, small size a job and no allocation of its own. `Scheduler::queued_request` rebuilds
/// the full request where one is needed: for the jobs a cycle looks at closely, and for the job it starts.
#[derive(Clone, Debug)]
struct Pending {
    resources: Resources,
    submitted_at_us: i64,
    not_before_us: i64,
    max_runtime_s: Option<u64>,
    expected_runtime_s: Option<u64>,
    attained_gpu_s: u64,
    priority: i32,
    gpu_share_milli: u32,
    nodes: u32,
    checkpoints: bool,
    class: JobClass,
}

impl Pending {
    fn of(request: &JobRequest, class: JobClass) -> Pending {
        Pending {
            resources: request.resources,
            submitted_at_us: request.submitted_at_us,
            not_before_us: request.not_before_us,
            max_runtime_s: request.max_runtime_s,
            expected_runtime_s: request.expected_runtime_s,
            attained_gpu_s: request.attained_gpu_s,
            priority: request.priority,
            gpu_share_milli: request.gpu_share_milli,
            nodes: request.nodes,
            checkpoints: request.checkpoints,
            class,
        }
    }

    /// See `JobRequest::footprint`.
    fn footprint(&self) -> Resources {
        footprint_of(&self.resources, self.gpu_share_milli)
    }

    /// See `JobRequest::total`.
    fn total(&self) -> Resources {
        total_of(self.footprint(), self.nodes.max(1))
    }
}

impl order::Service for Pending {
    fn submitted_at_us(&self) -> i64 {
        self.submitted_at_us
    }

    fn runtime_s(&self) -> (Option<u64>, Option<u64>) {
        (self.expected_runtime_s, self.max_runtime_s)
    }

    fn attained_gpu_s(&self) -> u64 {
        self.attained_gpu_s
    }
}

/// Ids for the projects (`team/project`) and users queued jobs belong to, so that a cycle groups jobs without
/// comparing names, and a queued job holds its owner's names as two ids. An id is never reused: there are as many as
/// distinct projects and users ever queued.
#[derive(Clone, Debug, Default)]
struct OwnerIds {
    projects: HashMap<(String, String), u32>,
    users: HashMap<String, u32>,
    /// The names of each id: team and project, and user.
    project_names: Vec<(String, String)>,
    user_names: Vec<String>,
}

impl OwnerIds {
    fn project(&mut self, team: &str, project: &str) -> u32 {
        let key = (team.to_string(), project.to_string());
        let next = self.projects.len() as u32;
        *self.projects.entry(key).or_insert_with(|| {
            self.project_names.push((team.to_string(), project.to_string()));
            next
        })
    }

    fn user(&mut self, user: &str) -> u32 {
        if let Some(&id) = self.users.get(user) {
            return id;
        }
        let next = self.users.len() as u32;
        self.user_names.push(user.to_string());
        *self.users.entry(user.to_string()).or_insert(next)
    }

    /// The team and project of project id `id`.
    fn project_name(&self, id: u32) -> (&str, &str) {
        let (team, project) = &self.project_names[id as usize];
        (team, project)
    }

    fn user_name(&self, id: u32) -> &str {
        &self.user_names[id as usize]
    }
}

/// Queued jobs of one team that could run in the same pools (see `Scheduler::queued_groups`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedGroup {
    pub team: String,
    /// The pools the jobs could run in; they wait in each.
    pub pools: BTreeSet<String>,
    pub jobs: u64,
    pub oldest_submitted_at_us: i64,
}

/// What the last cycle held back on a node for blocked jobs: the first job it held for, and how much it held for all
/// of them together. Jobs behind those it holds for may use only what is not held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    pub job: JobId,
    pub resources: Resources,
}

/// The scheduler's whole state. Cloning it is how the simulator or a what-if query forks it.
#[derive(Clone, Debug, Default)]
pub struct Scheduler {
    nodes: Nodes,
    /// The queued jobs by priority, project and user, as fair share walks them.
    groups: fairshare::Groups,
    /// How many queued jobs each class has (see `queue`).
    classes: Classes,
    /// The queued jobs, each in its compact form with its class.
    pending: IdMap<JobId, Pending>,
    running: IdMap<JobId, Running>,
    /// What the last cycle held back for blocked jobs: job id to the node it reserved (its position in `nodes`).
    reservations: HashMap<JobId, usize>,
    /// What the last cycle held back on each node (by position), for every blocked job (a gang holds several).
    held_back: BTreeMap<usize, HeldBack>,
    /// The interned constraints of the queued jobs.
    constraints: Constraints,
    owners: OwnerIds,
    /// Walk the whole queue in every cycle instead of skipping classes that cannot fit (for tests that compare the
    /// two: they must decide alike).
    linear_scan: bool,
    /// How many blocked jobs a cycle reserves for; `None`: `RESERVE_DEPTH_DEFAULT`.
    reserve_depth: Option<u32>,
    pools: BTreeMap<String, PoolInfo>,
    teams: BTreeMap<String, TeamInfo>,
    /// Projects with quotas, by team and then by name (found without building a key for every queued job).
    projects: BTreeMap<String, BTreeMap<String, ProjectInfo>>,
    /// What each team and each user holds now.
    team_held: HashMap<String, Resources>,
    user_held: HashMap<String, Resources>,
    /// What each project (keyed `team/project`) holds now.
    project_held: HashMap<String, Resources>,
    usage: Usage,
    project_usage: Usage,
    placement: GpuPlacement,
    queue_order: QueueOrder,
    mix: Mix,
    /// Nodes where running jobs were preempted for a queued job (one per worker of a gang): what frees there is that
    /// job's first.
    claims: BTreeMap<JobId, Vec<String>>,
    /// Heartbeats, nodes asked of elastic pools and not yet up, and pools cooling down after failures.
    life: NodeLife,
    /// What the last cycle found: blocked jobs that wait for new nodes of an elastic pool, and that pool.
    waiting_for_nodes: HashMap<JobId, String>,
    /// Nodes whose last job left (or that joined) since the last tick; the next tick stamps them idle since its time.
    newly_idle: BTreeSet<String>,
    now_us: i64,
}

/// Fair-share standing as one cycle reads it (see `fairshare::Shares`).
struct CycleShares<'a> {
    scheduler: &'a Scheduler,
    capacity: &'a Resources,
}

impl fairshare::Shares for CycleShares<'_> {
    fn project(&self, project: u32) -> u64 {
        let s = self.scheduler;
        let (team, project) = s.owners.project_name(project);
        let key = format!("{team}/{project}");
        fairshare::share(s.project_held.get(&key), &s.project_usage, &key, self.capacity)
    }

    fn user(&self, user: u32) -> u64 {
        let s = self.scheduler;
        let name = s.owners.user_name(user);
        fairshare::share(s.user_held.get(name), &s.usage, name, self.capacity)
    }

    fn added(&self, job: JobId) -> u64 {
        fairshare::added(&self.scheduler.pending[&job].total(), self.capacity)
    }
}

/// A running job: where it runs, what it asked for, and whether it is being preempted (and for whom).
#[derive(Clone, Debug)]
struct Running {
    allocation: Allocation,
    request: JobRequest,
    preempted_by: Option<JobId>,
    started_at_us: i64,
}

impl Running {
    /// When the job must have ended, by its runtime limit.
    fn ends_by_us(&self) -> Option<i64> {
        self.request.max_runtime_s.map(|s| self.started_at_us.saturating_add(s as i64 * 1_000_000))
    }

    /// When the job ends by its limit, else by its prediction (not before `now_us`); and whether it was predicted.
    fn expected_end_us(&self, now_us: i64) -> Option<(i64, bool)> {
        if let Some(end) = self.ends_by_us() {
            return Some((end, false));
        }
        let predicted = self.request.expected_runtime_s?;
        let end = self.started_at_us.saturating_add((predicted as i64).saturating_mul(1_000_000));
        Some((end.max(now_us), true))
    }
}

impl Scheduler {
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// What a queued or running job asked for. The core holds the one copy of a queued job's request, so that its
    /// driver need not keep another; a queued job's is rebuilt from its compact form (see `Pending`).
    pub fn request(&self, job: JobId) -> Option<JobRequest> {
        self.queued_request(job).or_else(|| self.running.get(&job).map(|r| r.request.clone()))
    }

    /// A queued job's request, rebuilt from its compact form with its owner's names and its constraint.
    fn queued_request(&self, job: JobId) -> Option<JobRequest> {
        let p = self.pending.get(&job)?;
        let (team, project) = self.owners.project_name(p.class.project);
        let mut request = JobRequest {
            id: job,
            resources: p.resources,
            priority: p.priority,
            gpu_share_milli: p.gpu_share_milli,
            submitted_at_us: p.submitted_at_us,
            team: team.to_string(),
            user: self.owners.user_name(p.class.user).to_string(),
            max_runtime_s: p.max_runtime_s,
            nodes: p.nodes,
            project: project.to_string(),
            not_before_us: p.not_before_us,
            expected_runtime_s: p.expected_runtime_s,
            attained_gpu_s: p.attained_gpu_s,
            checkpoints: p.checkpoints,
            ..JobRequest::default()
        };
        self.constraints.fill(p.class.constraint, &mut request);
        Some(request)
    }

    pub fn allocation(&self, job: JobId) -> Option<&Allocation> {
        self.running.get(&job).map(|r| &r.allocation)
    }

    /// The time of the last tick.
    pub fn now_us(&self) -> i64 {
        self.now_us
    }

    /// When a running job's runtime limit stops it; `None` for a job without a limit or not running.
    pub fn ends_by(&self, job: JobId) -> Option<i64> {
        self.running.get(&job).and_then(Running::ends_by_us)
    }

    /// Each running job with the time its runtime limit stops it (`None` for a job without a limit).
    pub fn running_ends(&self) -> Vec<(JobId, Option<i64>)> {
        self.running.iter().map(|(id, r)| (*id, r.ends_by_us())).collect()
    }

    /// When a running job can be expected to end: at its runtime limit, else after its predicted runtime (and not
    /// before now, for a job that has overrun its prediction); `None` for a job with neither, or not running. The
    /// flag says that the time rests on a prediction.
    pub fn expected_end(&self, job: JobId) -> Option<(i64, bool)> {
        self.running.get(&job).and_then(|r| r.expected_end_us(self.now_us))
    }

    /// Each running job with `expected_end`.
    pub fn running_expected_ends(&self) -> Vec<(JobId, Option<(i64, bool)>)> {
        self.running.iter().map(|(id, r)| (*id, r.expected_end_us(self.now_us))).collect()
    }

    /// Queued jobs of a lower priority than `priority`: they can only start ahead of a job of that priority where
    /// they do not delay it (backfill), so a forecast for it may leave them out.
    pub fn queued_below(&self, priority: i32) -> Vec<JobId> {
        self.groups.below(priority)
    }

    /// The priority of a queued job.
    pub fn queued_priority(&self, job: JobId) -> Option<i32> {
        self.pending.get(&job).map(|r| r.priority)
    }

    /// What a team holds now.
    pub fn team_held(&self, team: &str) -> Resources {
        self.team_held.get(team).copied().unwrap_or_default()
    }

    /// For each elastic pool with nodes requested and not yet up, how many.
    pub fn provisioning(&self) -> impl Iterator<Item = (&str, u32)> {
        self.life.all_starting()
    }

    /// Where a node stands in its lifecycle; `None` for a node the core does not know (or no longer: gone).
    pub fn node_status(&self, name: &str) -> Option<NodeStatus> {
        let node = self.nodes.get(name)?;
        Some(match (node.releasing, node.ready) {
            (true, _) => NodeStatus::Releasing,
            (false, false) => NodeStatus::NotReady,
            (false, true) => NodeStatus::Ready { idle_since_us: node.idle_since_us.filter(|_| node.jobs.is_empty()) },
        })
    }

    /// An elastic pool's nodes by lifecycle state; `None` for a pool that is not elastic.
    pub fn elastic_status(&self, pool: &str) -> Option<ElasticStatus> {
        self.elastic_pool(pool)?;
        let mut status = ElasticStatus {
            starting: self.life.starting(pool),
            oldest_request_us: self.life.oldest_request(pool),
            cooldown: self.life.cooldown(pool).filter(|c| c.until_us > self.now_us).cloned(),
            ..ElasticStatus::default()
        };
        for node in self.nodes.values().filter(|n| n.info.pool == pool) {
            match self.node_status(&node.info.name) {
                Some(NodeStatus::Ready { idle_since_us }) => {
                    status.ready += 1;
                    status.idle += u32::from(idle_since_us.is_some());
                }
                Some(NodeStatus::NotReady) => status.not_ready += 1,
                Some(NodeStatus::Releasing) => status.releasing += 1,
                None => {}
            }
        }
        Some(status)
    }

    /// Stops the lifecycle's clocks: a forecast runs time forward without heartbeats or providers.
    pub(crate) fn freeze_lifecycle(&mut self) {
        self.life.freeze();
    }

    /// The elastic capacity of a pool, if it has any.
    pub(crate) fn elastic_pool(&self, pool: &str) -> Option<&ElasticPool> {
        self.pools.get(pool).and_then(|p| p.elastic.as_ref())
    }

    /// What the last cycle held back on the node for blocked jobs: reservations that the jobs behind may not use,
    /// so a node can sit idle on purpose while a gang (say) waits for the rest of its nodes.
    pub fn held_back(&self, node: &str) -> Option<HeldBack> {
        self.held_back.get(&self.nodes.position(node)?).copied()
    }

    /// Keeps the last cycle's reservations, which name nodes by position, true when a node joins at position `at`
    /// (`joined`) or leaves it.
    fn nodes_moved(&mut self, at: usize, joined: bool) {
        let moved = |i: usize| match (joined, i.cmp(&at)) {
            (_, std::cmp::Ordering::Less) => Some(i),
            (true, _) => Some(i + 1),
            (false, std::cmp::Ordering::Equal) => None,
            (false, std::cmp::Ordering::Greater) => Some(i - 1),
        };
        self.held_back = std::mem::take(&mut self.held_back)
            .into_iter()
            .filter_map(|(i, held)| moved(i).map(|i| (i, held)))
            .collect();
        self.reservations.retain(|_, i| match moved(*i) {
            Some(to) => {
                *i = to;
                true
            }
            None => false,
        });
    }

    /// Makes every cycle walk the whole queue and try every job, passing none over; decisions must not change. For
    /// tests that compare the two.
    #[doc(hidden)]
    pub fn set_linear_scan(&mut self, linear: bool) {
        self.linear_scan = linear;
    }

    /// Allocated resources and capacity of a node, for reports.
    pub fn node_usage(&self, node: &str) -> Option<(Resources, Resources)> {
        self.nodes.get(node).map(|n| (n.allocated, n.info.capacity))
    }

    /// Applies one event. Only `NodeDown` (the jobs it loses) and `Tick` (see there) yield decisions.
    pub fn apply(&mut self, event: Event) -> Result<Vec<Decision>, CoreError> {
        match event {
            Event::NodeUp(info) => self.node_up(info).map(|()| Vec::new()),
            Event::NodeSeen { node, at_us } => {
                let known = self.nodes.get(&node).ok_or_else(|| CoreError::UnknownNode(node.clone()))?;
                // A node given up on is heard again only when it is up again (an agent registers anew).
                if known.ready && !known.releasing {
                    self.life.seen(&node, at_us);
                }
                Ok(Vec::new())
            }
            Event::NodeTimeoutConfigured(timeout_s) => {
                self.life.configure_timeout(timeout_s);
                Ok(Vec::new())
            }
            Event::ProvisionFailed { pool, nodes, failure, detail } => {
                let retry_after_s = self.elastic_pool(&pool).map_or(0, |e| e.retry_after_s);
                self.life.failed(&pool, nodes, failure, detail, retry_after_s, self.now_us);
                Ok(Vec::new())
            }
            Event::NodesStarting { pool, requested_at_us } => {
                if self.elastic_pool(&pool).is_none() {
                    return Err(CoreError::BadSetting(format!(
                        "nodes are starting in pool {pool}, which is not an elastic pool"
                    )));
                }
                self.life.restarting(&pool, requested_at_us);
                Ok(Vec::new())
            }
            Event::NodeDown { node } => self.node_down(&node),
            Event::NodeRemoved { node } => self.node_removed(&node).map(|()| Vec::new()),
            Event::JobSubmitted(request) => self.submit(request).map(|()| Vec::new()),
            Event::JobAdopted { request, allocation } => self.adopt(request, allocation).map(|()| Vec::new()),
            Event::JobEnded { id } => {
                self.end(id);
                Ok(Vec::new())
            }
            Event::PoolsConfigured(pools) => {
                self.pools = pools.into_iter().map(|p| (p.name.clone(), p)).collect();
                // What a pool's backend runs decides which nodes a constraint allows.
                self.constraints.nodes_changed();
                // Nodes requested of a pool that is no longer elastic are not waited for.
                let pools = &self.pools;
                self.life.retain_pools(|pool| pools.get(pool).is_some_and(|p| p.elastic.is_some()));
                Ok(Vec::new())
            }
            Event::ProjectsConfigured(projects) => {
                self.projects.clear();
                for p in projects {
                    self.projects.entry(p.team.clone()).or_default().insert(p.name.clone(), p);
                }
                Ok(Vec::new())
            }
            Event::TeamsConfigured { teams, fair_share_half_life_s } => {
                self.teams = teams.into_iter().map(|t| (t.name.clone(), t)).collect();
                self.usage.half_life_s = fair_share_half_life_s;
                self.project_usage.half_life_s = fair_share_half_life_s;
                Ok(Vec::new())
            }
            Event::PlacementConfigured(placement) => {
                self.placement = placement;
                Ok(Vec::new())
            }
            Event::QueueOrderConfigured(order) => {
                self.queue_order = order;
                Ok(Vec::new())
            }
            Event::ReserveDepthConfigured(depth) => {
                if !(1..=RESERVE_DEPTH_MAX).contains(&depth) {
                    return Err(CoreError::BadSetting(format!(
                        "a reserve depth of {depth}: it must be from 1 to {RESERVE_DEPTH_MAX}"
                    )));
                }
                self.reserve_depth = Some(depth);
                Ok(Vec::new())
            }
            Event::Tick { now_us } => Ok(self.tick(now_us)),
        }
    }

    fn node_up(&mut self, info: NodeInfo) -> Result<(), CoreError> {
        if info.capacity.gpus as usize != info.gpu_indices.len() {
            return Err(CoreError::GpuCountMismatch {
                node: info.name,
                gpus: info.capacity.gpus,
                indices: info.gpu_indices.len(),
            });
        }
        match self.nodes.get_mut(&info.name) {
            Some(node) => {
                if node.info != info {
                    self.constraints.nodes_changed();
                }
                node.info = info;
                node.recount_gpus();
                node.ready = true;
                node.releasing = false;
                self.life.seen(&node.info.name, self.now_us);
            }
            None => {
                // A new node of an elastic pool is one of those requested of it.
                self.life.joined(&info.pool);
                self.life.seen(&info.name, self.now_us);
                self.newly_idle.insert(info.name.clone());
                let at = self.nodes.insert(Node::new(info));
                self.nodes_moved(at, true);
                self.constraints.nodes_changed();
            }
        }
        Ok(())
    }

    fn node_removed(&mut self, name: &str) -> Result<(), CoreError> {
        let node = self.nodes.get(name).ok_or_else(|| CoreError::UnknownNode(name.to_string()))?;
        if !node.jobs.is_empty() {
            return Err(CoreError::NodeBusy { node: name.to_string(), jobs: node.jobs.iter().copied().collect() });
        }
        let at = self.nodes.position(name).expect("the node was found above");
        self.nodes.remove(name);
        self.nodes_moved(at, false);
        self.life.forget(name);
        self.constraints.nodes_changed();
        self.newly_idle.remove(name);
        Ok(())
    }

    fn node_down(&mut self, name: &str) -> Result<Vec<Decision>, CoreError> {
        let node = self.nodes.get_mut(name).ok_or_else(|| CoreError::UnknownNode(name.to_string()))?;
        node.ready = false;
        self.life.forget(name);
        let lost: Vec<JobId> = node.jobs.iter().copied().collect();
        for &job in &lost {
            self.end(job);
        }
        Ok(lost.into_iter().map(|job| Decision::Lost { job, node: name.to_string() }).collect())
    }

    /// Moves time forward, stamps the nodes that became idle since the last tick as idle since now, and decides
    /// what the time passed means for the node lifecycle: silent nodes go not ready (losing their jobs), nodes asked
    /// of elastic pools that are overdue are abandoned (and their pool cools down), cooldowns that are over end.
    fn tick(&mut self, now_us: i64) -> Vec<Decision> {
        self.advance_usage(now_us);
        for name in std::mem::take(&mut self.newly_idle) {
            if let Some(node) = self.nodes.get_mut(&name).filter(|n| n.jobs.is_empty()) {
                node.idle_since_us.get_or_insert(self.now_us);
            }
        }
        let mut decisions = Vec::new();
        for (node, reason) in self.life.silent(self.now_us) {
            decisions.push(Decision::NodeNotReady { node: node.clone(), reason });
            decisions.extend(self.node_down(&node).unwrap_or_default());
        }
        self.life.expire_cooldowns(self.now_us);
        for pool in self.life.pools_starting() {
            let Some(elastic) = self.elastic_pool(&pool) else { continue };
            let (startup_timeout_s, retry_after_s) = (elastic.startup_timeout_s, elastic.retry_after_s);
            let Some((nodes, waited_s)) = self.life.overdue(&pool, startup_timeout_s, self.now_us) else { continue };
            let reason = AbandonReason { pool: pool.clone(), waited_s, startup_timeout_s, retry_after_s };
            let detail = reason.to_string();
            self.life.failed(&pool, nodes, ProvisionFailure::StartupTimeout, detail, retry_after_s, self.now_us);
            decisions.push(Decision::Abandon { pool, nodes, reason });
        }
        decisions
    }

    /// Each user's and project's usage accrues what its jobs held since the last tick, then decays.
    fn advance_usage(&mut self, now_us: i64) {
        if now_us <= self.now_us {
            return;
        }
        let dt_s = (now_us - self.now_us) as f64 / 1e6;
        let first = self.now_us == 0;
        self.now_us = now_us;
        if first {
            return;
        }
        let held: Vec<(&str, Resources)> = self.user_held.iter().map(|(u, r)| (u.as_str(), *r)).collect();
        self.usage.advance(dt_s, &held);
        let held: Vec<(&str, Resources)> = self.project_held.iter().map(|(p, r)| (p.as_str(), *r)).collect();
        self.project_usage.advance(dt_s, &held);
    }

    fn submit(&mut self, request: JobRequest) -> Result<(), CoreError> {
        if self.pending.contains_key(&request.id) || self.running.contains_key(&request.id) {
            return Err(CoreError::DuplicateJob(request.id));
        }
        if let Some(demand) = request.gpu_demand() {
            self.mix.observe(demand, &request.resources);
        }
        let class = JobClass {
            constraint: self.constraints.intern(&request),
            shape: shape_of(&request),
            limited: request.max_runtime_s.is_some(),
            project: self.owners.project(&request.team, &request.project),
            user: self.owners.user(&request.user),
        };
        self.groups.insert(request.priority, class.project, class.user, request.id);
        self.classes.add(class.key(), &request);
        self.pending.insert(request.id, Pending::of(&request, class));
        Ok(())
    }

    fn adopt(&mut self, request: JobRequest, allocation: Allocation) -> Result<(), CoreError> {
        let id = request.id;
        if self.pending.contains_key(&id) || self.running.contains_key(&id) {
            return Err(CoreError::DuplicateJob(id));
        }
        let mut seen = BTreeSet::new();
        for (name, gpus) in allocation.workers() {
            let conflict = |why: String| CoreError::AdoptionConflict { job: id, node: name.to_string(), why };
            if !seen.insert(name) {
                return Err(conflict("two workers of the gang are on this node".to_string()));
            }
            let node = self.nodes.get(name).ok_or_else(|| CoreError::UnknownNode(name.to_string()))?;
            for gpu in gpus {
                if !node.info.gpu_indices.contains(gpu) {
                    return Err(conflict(format!("the node has no GPU {gpu}")));
                }
                if let Some(owner) = node.gpu_owner.get(gpu) {
                    return Err(conflict(format!("GPU {gpu} is held by job {owner}")));
                }
                match (allocation.gpu_share_milli, node.shared.get(gpu)) {
                    (0, Some((_, users))) => {
                        let user = users.first().copied().unwrap_or(0);
                        return Err(conflict(format!("GPU {gpu} is shared by job {user}")));
                    }
                    (share, Some((used, _))) if used + share > 1000 => {
                        return Err(conflict(format!("GPU {gpu} has only {} thousandths free", 1000 - used)))
                    }
                    _ => {}
                }
            }
        }
        // Adoption records what already runs, so it may exceed capacity if the node shrank; it never double-books a
        // GPU, which the checks above guarantee.
        self.allocate(request, allocation);
        Ok(())
    }

    fn allocate(&mut self, request: JobRequest, allocation: Allocation) {
        let id = request.id;
        let held = request.total();
        let project = request.project_key();
        for (map, key) in [
            (&mut self.team_held, &request.team),
            (&mut self.user_held, &request.user),
            (&mut self.project_held, &project),
        ] {
            let entry = map.entry(key.clone()).or_default();
            *entry = entry.checked_add(&held).unwrap_or(*entry);
        }
        for (name, gpus) in allocation.workers() {
            let node = self.nodes.get_mut(name).expect("allocation on a known node");
            node.allocated = node.allocated.checked_add(&allocation.resources).unwrap_or(node.allocated);
            if allocation.gpu_share_milli > 0 {
                let gpu = gpus[0];
                assert!(!node.gpu_owner.contains_key(&gpu), "GPU {gpu} of node {name} is whole and shared");
                let (used, users) = node.shared.entry(gpu).or_default();
                *used += allocation.gpu_share_milli;
                assert!(*used <= 1000, "GPU {gpu} of node {name} shared beyond its capacity");
                users.insert(id);
            } else {
                for &gpu in gpus {
                    let previous = node.gpu_owner.insert(gpu, id);
                    assert!(previous.is_none(), "GPU {gpu} of node {name} allocated twice");
                    assert!(!node.shared.contains_key(&gpu), "GPU {gpu} of node {name} is whole and shared");
                }
            }
            node.jobs.insert(id);
            node.recount_gpus();
            node.idle_since_us = None;
        }
        self.waiting_for_nodes.remove(&id);
        self.running.insert(id, Running { allocation, request, preempted_by: None, started_at_us: self.now_us });
    }

    /// Takes a job out of the queue, if it is there.
    fn dequeue(&mut self, id: JobId) -> Option<JobRequest> {
        let request = self.queued_request(id)?;
        let pending = self.pending.remove(&id)?;
        self.groups.remove(pending.priority, pending.class.project, pending.class.user, id);
        self.classes.remove(pending.class.key(), pending.resources, id);
        self.constraints.release(pending.class.constraint);
        Some(request)
    }

    fn end(&mut self, id: JobId) {
        self.claims.remove(&id);
        self.dequeue(id);
        self.reservations.remove(&id);
        self.waiting_for_nodes.remove(&id);
        let Some(Running { allocation, request, .. }) = self.running.remove(&id) else { return };
        let held = request.total();
        let project = request.project_key();
        for (map, key) in [
            (&mut self.team_held, &request.team),
            (&mut self.user_held, &request.user),
            (&mut self.project_held, &project),
        ] {
            if let Some(entry) = map.get_mut(key) {
                *entry = entry.saturating_sub(&held);
                if *entry == Resources::ZERO {
                    map.remove(key);
                }
            }
        }
        for (name, gpus) in allocation.workers() {
            let Some(node) = self.nodes.get_mut(name) else { continue };
            node.allocated = node.allocated.saturating_sub(&allocation.resources);
            if allocation.gpu_share_milli > 0 {
                let gpu = gpus[0];
                if let Some((used, users)) = node.shared.get_mut(&gpu) {
                    *used = used.saturating_sub(allocation.gpu_share_milli);
                    users.remove(&id);
                    if users.is_empty() {
                        node.shared.remove(&gpu);
                    }
                }
            } else {
                for gpu in gpus {
                    node.gpu_owner.remove(gpu);
                }
            }
            node.jobs.remove(&id);
            node.recount_gpus();
            if node.jobs.is_empty() {
                self.newly_idle.insert(name.to_string());
            }
        }
    }

    /// One scheduling cycle, in numbered steps:
    /// 1. take what each ready node has free;
    /// 2. order the queue: priority, then fair share between users, then submission;
    /// 3. for each job within its team's limit, find the nodes that allow and fit it and start it on the best;
    /// 4. a job that does not fit either preempts lower-priority or borrowed work, or reserves what it needs on the
    ///    node closest to holding it, so the jobs behind it cannot starve it;
    /// 5. ask elastic pools for the new nodes that blocked jobs could run on, and give back their nodes that idled.
    pub fn schedule(&mut self) -> Vec<Decision> {
        let mut free = self.free_now();
        self.reservations.clear();
        self.held_back.clear();
        self.waiting_for_nodes.clear();
        self.constraints.refresh(&self.nodes, &self.pools);
        let mut cycle = Cycle {
            nodes_with_cpu: free.iter().filter(|r| r.cpu_millis > 0).count(),
            monotone: !self.pools.values().any(|p| p.burst),
            awaiting_victims: self.running.values().filter_map(|r| r.preempted_by).collect(),
            lowest_running_priority: self
                .running
                .values()
                .filter(|r| r.preempted_by.is_none())
                .map(|r| r.request.priority)
                .min(),
            // Only least-attained with a lease stops jobs for attained service; the other orders skip the walk.
            stoppable: match self.queue_order.lease_s() {
                Some(_) => self.running.iter().filter_map(|(id, r)| Some((*id, self.stoppable_level(r)?))).collect(),
                None => IdMap::default(),
            },
            ..Cycle::default()
        };
        cycle.top_stoppable_level = cycle.stoppable.values().max().copied();
        self.index_nodes(&free, &mut cycle);
        self.index_elastic(&mut cycle);
        cycle.bound = free.iter().fold(Resources::ZERO, |acc, f| acc.max(f));
        let mut decisions = Vec::new();
        self.honour_claims(&mut free, &mut cycle, &mut decisions);
        let age_matters = self.has_timed_bursting();
        let capacity = self.ready_capacity();
        let mut walk = self.cycle_walk(&capacity);
        // Jobs alike in shape (and so in team and constraints), and in whether they may backfill, stand or fall
        // together once the blocked budget is spent. Where a job's age decides where it may go, each job is a class
        // of its own, and the walk goes to the end of the queue.
        let mut unreached = (!age_matters && !self.linear_scan).then(|| Unreached::new(&self.classes));
        let reserve_depth = self.reserve_depth.unwrap_or(RESERVE_DEPTH_DEFAULT) as usize;
        loop {
            let blocked_budget_left = cycle.blocked < reserve_depth;
            // Every job needs some CPU: once none is left, only preemption can start anything, and only for the
            // first blocked jobs.
            if cycle.nodes_with_cpu == 0 && !blocked_budget_left {
                break;
            }
            cycle.refresh_bound(&free);
            let shares = CycleShares { scheduler: self, capacity: &capacity };
            let Some(id) = walk.next(&self.groups, &shares) else { break };
            if let Some(unreached) = &mut unreached {
                unreached.reached(self.pending[&id].class.key());
            }
            // Past the blocked budget, a job that no node could hold now and that cannot backfill (no runtime limit,
            // or nothing held back) is passed over at once: on a busy cluster, that is most of the queue. So is a
            // job shaped like one that already found no place this cycle: free resources only shrink within a
            // cycle. Both hold for every job of the class alike, so once every class not reached yet is passed
            // over, the cycle is done.
            if !blocked_budget_left && !self.linear_scan && self.passed_over(id, age_matters, &cycle) {
                if let Some(unreached) = &mut unreached {
                    if unreached.skipped() && self.all_unreached_dead(unreached, &free, &mut cycle) {
                        break;
                    }
                }
                continue;
            }
            // A job with a claim was dealt with first; it waits for its victims where it claimed.
            if self.claims.contains_key(&id) {
                continue;
            }
            // A retry waiting out its backoff is not a candidate yet.
            if self.pending[&id].not_before_us > self.now_us {
                continue;
            }
            let request = &self.queued_request(id).expect("queued job is pending");
            let too_big = self.too_big(&request.resources, &cycle);
            if self.over_team_limit(request).is_some() {
                continue;
            }
            let shape = self.shape(id, age_matters);
            if request.is_gang() {
                match (too_big, self.gang_nodes(request, &free, &cycle)) {
                    (false, Some(nodes)) => decisions.push(self.start_gang(id, nodes, &mut free, &mut cycle)),
                    _ => {
                        cycle.note_failed(shape, &request.resources, None);
                        if blocked_budget_left {
                            self.blocked(request, shape, &mut free, &mut cycle, &mut decisions);
                        }
                    }
                }
                continue;
            }
            let found = if too_big { None } else { self.best_place(request, &free, &cycle) };
            if found.is_none() {
                if let Some((i, before)) = self.backfill_node(request, &free, &cycle) {
                    let decision = self.backfill(id, i, before, &mut free, &mut cycle);
                    decisions.push(decision);
                    continue;
                }
            }
            match found {
                Some((node, shared, candidates)) => {
                    let decision = self.start(id, node, shared, candidates, &mut free, &mut cycle);
                    decisions.push(decision);
                }
                None => {
                    cycle.note_failed(shape, &request.resources, request.max_runtime_s);
                    if blocked_budget_left {
                        self.blocked(request, shape, &mut free, &mut cycle, &mut decisions);
                    }
                }
            }
        }
        if !cycle.elastic.is_empty() {
            decisions.extend(self.provision(&cycle));
            decisions.extend(self.release_idle());
        }
        self.held_back =
            cycle.shadows.iter().map(|(&i, s)| (i, HeldBack { job: s.for_job, resources: s.held })).collect();
        debug_assert_eq!(self.check_invariants(), Ok(()));
        decisions
    }

    /// Where a single-node job could start now, by the cycle's placement policy: the node, the shared GPU (or
    /// `u32::MAX` for a whole one to share), and how many nodes were candidates.
    fn best_place(&self, request: &JobRequest, free: &[Resources], cycle: &Cycle) -> Option<(usize, Option<u32>, u32)> {
        if self.placement == GpuPlacement::Fgd && request.wants_gpu() && !self.mix.is_empty() {
            self.best_node_fgd(request, free)
        } else if request.gpu_share_milli == 0 {
            self.best_node_indexed(request, free, cycle).map(|(i, candidates)| (i, None, candidates))
        } else {
            self.best_node(request, free)
        }
    }

    /// Whether every class with jobs the walk has not reached is passed over (see `passed_over`), so the cycle is
    /// done. A class that is not yet is tried out of turn, on requests for the least CPUs and memory its jobs ask for
    /// (`Class::least`; the rest of the request is that of a job of the class): where none finds a place now, no job
    /// of the class finds one later in the cycle either, so the class is passed over from then on, as if the walk
    /// had reached it. A class whose jobs might backfill waits for the walk (their runtime limits
    /// differ), and a class found to have a place is not tried again in the cycle.
    fn all_unreached_dead(&self, unreached: &Unreached, free: &[Resources], cycle: &mut Cycle) -> bool {
        for &(shape, limited) in unreached.classes() {
            // Every job not reached is queued, so its class is (claimed jobs started before the walk aside).
            let Some(class) = self.classes.get(&(shape, limited)) else { return false };
            let mut template: Option<JobRequest> = None;
            for least in class.least(cycle.monotone) {
                // The least runtime limit the class's jobs have is not known: as if it were none at all.
                if self.class_passed_over(shape, limited.then_some(0), &least, cycle) {
                    continue;
                }
                let may_backfill = limited && !cycle.shadows.is_empty();
                if may_backfill || cycle.found_a_place.contains(&(shape, limited)) {
                    return false;
                }
                if template.is_none() {
                    let member = class.member.and_then(|job| self.queued_request(job));
                    template = member.or_else(|| self.classes.template(&(shape, limited)).cloned());
                }
                let Some(request) = template.as_mut() else { return false };
                request.resources = least;
                let placed = if request.is_gang() {
                    self.gang_nodes(request, free, cycle).is_some()
                } else {
                    self.best_place(request, free, cycle).is_some()
                };
                if placed {
                    cycle.found_a_place.insert((shape, limited));
                    return false;
                }
                cycle.note_failed(shape, &least, None);
            }
        }
        true
    }

    /// A queued job's shape (see `shape_of`), with its age where that decides where it may go.
    fn shape(&self, id: JobId, age_matters: bool) -> u64 {
        let shape = self.pending[&id].class.shape;
        if age_matters {
            aged_shape(shape, self.pending[&id].submitted_at_us)
        } else {
            shape
        }
    }

    /// Whether no node could hold the job now: it asks for more of some resource than any one node has free.
    fn too_big(&self, resources: &Resources, cycle: &Cycle) -> bool {
        !resources.fits_in(&cycle.bound())
    }

    /// Whether a job is passed over once the blocked budget is spent: no node could hold it and it cannot backfill
    /// (no runtime limit, a gang, or nothing held back), or a job of its shape that asked for no more already found
    /// no place (see `Failed`). Both stay true for the rest of the cycle.
    fn passed_over(&self, id: JobId, age_matters: bool, cycle: &Cycle) -> bool {
        let pending = &self.pending[&id];
        let limit_s = pending.max_runtime_s.filter(|_| pending.nodes <= 1);
        self.class_passed_over(self.shape(id, age_matters), limit_s, &pending.resources, cycle)
    }

    /// `passed_over` for a job of this shape asking for `resources`, with `limit_s` where it could backfill; for every
    /// job of a class, where `resources` is the least its jobs ask for.
    fn class_passed_over(&self, shape: u64, limit_s: Option<u64>, resources: &Resources, cycle: &Cycle) -> bool {
        let may_backfill = limit_s.is_some() && !cycle.shadows.is_empty();
        (self.too_big(resources, cycle) && !may_backfill) || cycle.failed_before(shape, resources, limit_s)
    }

    /// Deals with a job that found no place, among the first blocked jobs: it preempts what it may; unless victims
    /// are being stopped for it, it is noted for new nodes of elastic pools; and, while some node has CPUs free, it
    /// holds back what it needs where it comes closest to fitting. `request` is the job's, rebuilt once for all of
    /// these (see `queued_request`).
    fn blocked(
        &mut self,
        request: &JobRequest,
        shape: u64,
        free: &mut [Resources],
        cycle: &mut Cycle,
        decisions: &mut Vec<Decision>,
    ) {
        cycle.blocked += 1;
        let id = request.id;
        let kind =
            (exact_shape(shape, &request.resources), request.priority, self.attained_level(request.attained_gpu_s));
        if !cycle.awaiting_victims.contains(&id)
            && cycle.preemptions < PREEMPTIONS_PER_CYCLE_MAX
            && !cycle.unpreemptable.contains(&kind)
        {
            let preempted = self.preempt_for(request, free, cycle);
            if preempted.is_empty() {
                cycle.unpreemptable.insert(kind);
            }
            cycle.preemptions += preempted.len();
            decisions.extend(preempted);
        }
        if !cycle.elastic.is_empty() && !cycle.awaiting_victims.contains(&id) && !self.claims.contains_key(&id) {
            self.want_nodes(request, free, cycle);
        }
        // Every job needs CPUs: once no ready node has any left, a reservation would hold nothing back that anything
        // could start with, so the job waits without one (what frees later is held again by a later cycle).
        if cycle.nodes_with_cpu > 0 {
            self.reserve(request, free, cycle);
        }
    }

    /// Notes the elastic pools whose new nodes could hold a blocked job: those whose template allows and fits it and
    /// that the burst rules let it into now (measured before it holds anything back, so that what it holds does not
    /// count as the earlier pools being full). A gang needs new nodes only for the workers that no node of the pool
    /// up now could hold.
    fn want_nodes(&self, request: &JobRequest, free: &[Resources], cycle: &mut Cycle) {
        let id = request.id;
        if request.is_gang() && request.gpu_share_milli > 0 {
            return;
        }
        let needs = request.footprint();
        let mut pools = Vec::new();
        for (k, pool) in cycle.elastic.iter().enumerate() {
            if !self.allows(request, &pool.template)
                || !needs.fits_in(&pool.template.capacity)
                || self.burst_refused(request, &pool.name, free).is_some()
            {
                continue;
            }
            let up_now = match pool.position {
                Some(position) if request.is_gang() => self.nodes_fitting(request, position, free, cycle),
                _ => 0,
            };
            let new_nodes = request.workers().saturating_sub(up_now);
            if new_nodes > 0 {
                pools.push((k, new_nodes));
            }
        }
        if !pools.is_empty() {
            cycle.wants.push(Want { job: id, needs, workers: request.workers(), pools });
        }
    }

    /// Whether the job fits on node `i` of the cycle. What is free there is checked first: it is an array read,
    /// while finding the node by name to check its model and labels is not, and on a busy cluster most nodes a
    /// search looks at lack the CPUs or memory.
    fn fits_indexed(&self, request: &JobRequest, i: usize, free: &[Resources]) -> bool {
        if !request.resources.fits_in(&free[i]) {
            return false;
        }
        match self.allowed_row(request) {
            Some(row) if !row[i] => false,
            Some(_) if request.gpu_share_milli == 0 => true,
            Some(_) => Self::gpu_choice(request, self.nodes.at(i), &free[i]).is_some(),
            None => self.fit(request, self.nodes.at(i), &free[i]).is_some(),
        }
    }

    /// Which nodes allow a queued job, by position among `self.nodes`, from its interned constraint; `None` for a
    /// job that is not queued, or before the cycle computed the row (see `Constraints::refresh`).
    fn allowed_row(&self, request: &JobRequest) -> Option<&[bool]> {
        self.pending.get(&request.id).and_then(|p| self.constraints.row(p.class.constraint))
    }

    /// Whether the node allows the job (its pool, model and labels, and its pool's backend), whatever is free there.
    fn allows(&self, request: &JobRequest, node: &NodeInfo) -> bool {
        request.allowed_on(node, self.pools.get(&node.pool))
    }

    /// Whether the node at position `i` of `self.nodes` allows the job: read from the job's row where there is one.
    fn allowed_at(&self, request: &JobRequest, row: Option<&[bool]>, i: usize, node: &Node) -> bool {
        row.map_or_else(|| self.allows(request, &node.info), |row| row[i])
    }

    /// How many ready nodes of the pool at `position` could each hold one worker of the job now.
    fn nodes_fitting(&self, request: &JobRequest, position: usize, free: &[Resources], cycle: &Cycle) -> u32 {
        let by_free = cycle.by_free_gpus[position].range(request.resources.gpus..);
        let fits = |i: &usize| self.fits_indexed(request, *i, free);
        by_free.map(|(_, nodes)| nodes.iter().filter(fits).count() as u32).sum()
    }

    /// Asks each elastic pool for the new nodes its wanting jobs need beyond those already starting (see
    /// `elastic::plan`), and remembers which jobs wait for which pool's nodes.
    fn provision(&mut self, cycle: &Cycle) -> Vec<Decision> {
        let supplies: Vec<Supply> = cycle.elastic.iter().map(|p| p.supply).collect();
        let (requests, waits) = elastic::plan(&supplies, &cycle.wants);
        self.waiting_for_nodes = waits.into_iter().map(|(job, k)| (job, cycle.elastic[k].name.clone())).collect();
        let mut decisions = Vec::new();
        for (pool, mut request) in cycle.elastic.iter().zip(requests) {
            if request.nodes == 0 {
                continue;
            }
            self.life.requested(&pool.name, request.nodes, self.now_us);
            let more_jobs = request.jobs.len().saturating_sub(PROVISION_JOBS_NAMED_MAX) as u32;
            request.jobs.truncate(PROVISION_JOBS_NAMED_MAX);
            let reason = ProvisionReason {
                pool: pool.name.clone(),
                jobs: request.jobs,
                more_jobs,
                nodes_before: pool.nodes,
                max_nodes: pool.max_nodes,
            };
            decisions.push(Decision::Provision { pool: pool.name.clone(), nodes: request.nodes, reason });
        }
        decisions
    }

    /// Gives back every node of an elastic pool that has held no job for the pool's `idle_release_s`; it takes no
    /// more jobs from now on.
    fn release_idle(&mut self) -> Vec<Decision> {
        let mut decisions = Vec::new();
        for node in self.nodes.values_mut() {
            let Some(elastic) = self.pools.get(&node.info.pool).and_then(|p| p.elastic.as_ref()) else { continue };
            let Some(since) = node.idle_since_us.filter(|_| !node.releasing && node.jobs.is_empty()) else { continue };
            let idle_us = self.now_us.saturating_sub(since);
            let release_us = i64::try_from(elastic.idle_release_s.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
            if idle_us < release_us {
                continue;
            }
            node.releasing = true;
            node.ready = false;
            self.life.forget(&node.info.name);
            let reason = ReleaseReason {
                pool: node.info.pool.clone(),
                idle_s: (idle_us / 1_000_000) as u64,
                idle_release_s: elastic.idle_release_s,
            };
            decisions.push(Decision::Release { node: node.info.name.clone(), reason });
        }
        decisions
    }

    /// Gives jobs that preempted others the nodes they claimed: they start there as soon as they fit, and until then
    /// what is free there is held for them, so no job ahead of them in the queue takes what their victims freed.
    fn honour_claims(&mut self, free: &mut [Resources], cycle: &mut Cycle, decisions: &mut Vec<Decision>) {
        let claims: Vec<(JobId, Vec<String>)> = self.claims.iter().map(|(j, n)| (*j, n.clone())).collect();
        for (id, nodes) in claims {
            let indices: Option<Vec<usize>> = nodes.iter().map(|n| self.nodes.position(n)).collect();
            let (Some(indices), Some(request)) = (indices, self.queued_request(id)) else {
                self.claims.remove(&id);
                continue;
            };
            let request = &request;
            let row = self.allowed_row(request);
            let fits = |i: &usize| {
                let here = self.nodes.at(*i);
                here.ready && self.fit_at(request, row, *i, here, &free[*i]).is_some()
            };
            // A claim counts against its team's and project's limits from the start (see `claimed_alongside`), so
            // this holds unless the limits were lowered meanwhile.
            if indices.iter().all(fits) && self.over_team_limit(request).is_none() {
                self.claims.remove(&id);
                let decision = match indices.as_slice() {
                    [one] => self.start(id, *one, None, 1, free, cycle),
                    _ => self.start_gang(id, indices, free, cycle),
                };
                decisions.push(decision);
            } else if !cycle.awaiting_victims.contains(&id) {
                // Its victims are gone but it still does not fit (a node shrank): it competes again.
                self.claims.remove(&id);
            } else {
                for i in indices {
                    let starts_at_us = self.worker_start_estimate(id, i, free, cycle);
                    self.reserve_on(id, i, starts_at_us, free, cycle);
                }
            }
        }
    }

    /// Whether some burst pool lets jobs in after a wait, which makes a job's age part of where it may go.
    fn has_timed_bursting(&self) -> bool {
        self.pools.values().any(|p| p.burst && p.burst_after_s.is_some())
    }

    /// Starts a job on held-back resources of node `i` (see `backfill_node`); what it does not use stays held.
    fn backfill(&mut self, id: JobId, i: usize, before: JobId, free: &mut [Resources], cycle: &mut Cycle) -> Decision {
        let held = cycle.shadows.get(&i).expect("backfill on a reserved node").held;
        let used = self.pending[&id].resources;
        // Lend the held resources back for this start, then hold again what the job leaves of them. Both go through
        // the cycle's summaries, so that its index by free GPUs files the node under what it has free, and only there.
        let lent = free[i].checked_add(&held).unwrap_or(free[i]);
        cycle.set(i, free, lent);
        let after = free[i].saturating_sub(&used);
        let still_held = Resources {
            cpu_millis: held.cpu_millis.min(after.cpu_millis),
            memory_bytes: held.memory_bytes.min(after.memory_bytes),
            gpus: held.gpus.min(after.gpus),
        };
        cycle.shadows.get_mut(&i).expect("backfill on a reserved node").held = still_held;
        let mut decision = self.start(id, i, None, 1, free, cycle);
        cycle.take(i, free, &still_held);
        if let Decision::Start { reason, .. } = &mut decision {
            reason.backfilled_before = Some(before);
        }
        decision
    }

    /// The node, in the first pool that can hold the job, where the job's GPUs grow expected fragmentation least;
    /// ties go to the tighter fit. For a share, also which GPU (`u32::MAX` for any wholly free one).
    fn best_node_fgd(&self, request: &JobRequest, free: &[Resources]) -> Option<(usize, Option<u32>, u32)> {
        let demand = request.gpu_demand()?;
        let mut candidates = 0u32;
        let mut best: Option<(FgdScore<'_>, usize, Option<u32>)> = None;
        let row = self.allowed_row(request);
        for (i, (node, f)) in self.nodes.values().zip(free).enumerate() {
            if !node.ready || self.fit_at(request, row, i, node, f).is_none() {
                continue;
            }
            if self.burst_refused(request, &node.info.pool, free).is_some() {
                continue;
            }
            let Some((delta, gpu)) = fgd::best_on_node(&self.mix, node, f, demand, &request.resources) else {
                continue;
            };
            candidates += 1;
            let shared = match gpu {
                Some(g) if node.shared.contains_key(&g) => Some(g),
                Some(_) => Some(u32::MAX),
                None => None,
            };
            let after = f.saturating_sub(&request.resources);
            let key = (self.pool_rank(&node.info.pool), delta, (after.gpus, after.cpu_millis, after.memory_bytes));
            let better = best.as_ref().is_none_or(|(b, _, _)| {
                key.0.cmp(&b.0).then(key.1.total_cmp(&b.1)).then(key.2.cmp(&b.2)) == std::cmp::Ordering::Less
            });
            if better {
                best = Some((key, i, shared));
            }
        }
        best.map(|(_, i, shared)| (i, shared, candidates))
    }

    /// Sorts the pools into fill order and files each ready node by its free whole GPUs.
    fn index_nodes(&self, free: &[Resources], cycle: &mut Cycle) {
        let mut pools: Vec<&str> = self.nodes.values().map(|n| n.info.pool.as_str()).collect();
        pools.sort_by_key(|p| self.pool_rank(p));
        pools.dedup();
        cycle.pool_order = pools.iter().map(|p| p.to_string()).collect();
        cycle.by_free_gpus = vec![BTreeMap::new(); pools.len()];
        cycle.nodes_in_pool = vec![0; pools.len()];
        for (i, (node, f)) in self.nodes.values().zip(free).enumerate() {
            let position = pools.binary_search_by_key(&self.pool_rank(&node.info.pool), |p| self.pool_rank(p));
            let position = position.expect("every node's pool is listed");
            cycle.pool_of.push(position);
            cycle.capacity.push(node.info.capacity);
            cycle.nodes_in_pool[position] += 1;
            if node.ready {
                cycle.by_free_gpus[position].entry(f.gpus).or_default().insert(i);
            }
        }
    }

    /// Lists the elastic pools in fill order, each with how many nodes it has and may still ask for.
    fn index_elastic(&self, cycle: &mut Cycle) {
        let mut pools: Vec<(&PoolInfo, &ElasticPool)> =
            self.pools.values().filter_map(|p| p.elastic.as_ref().map(|e| (p, e))).collect();
        pools.sort_by_key(|(p, _)| self.pool_rank(&p.name));
        for (pool, elastic) in pools {
            let position = cycle.pool_order.iter().position(|p| *p == pool.name);
            let starting = self.life.starting(&pool.name);
            let nodes = position.map_or(0, |k| cycle.nodes_in_pool[k]).saturating_add(starting);
            // A pool cooling down after a failure to start nodes is asked for none: its wanting jobs go on to the
            // next elastic pool in order, or wait for the nodes already on their way.
            let cooling = self.life.cooldown(&pool.name).is_some_and(|c| c.until_us > self.now_us);
            let room = if cooling { 0 } else { elastic.max_nodes.saturating_sub(nodes) };
            cycle.elastic.push(ElasticCandidate {
                name: pool.name.clone(),
                template: elastic.node.node("", &pool.name),
                position,
                nodes,
                max_nodes: elastic.max_nodes,
                supply: Supply { capacity: elastic.node.capacity, starting, room },
            });
        }
    }

    /// For a job of whole GPUs: the first pool in order that can hold it, and in it the first node (by name) among
    /// those with the fewest free GPUs that are enough. Returns the node's index and how many nodes had that many.
    fn best_node_indexed(&self, request: &JobRequest, free: &[Resources], cycle: &Cycle) -> Option<(usize, u32)> {
        for (position, pool) in cycle.pool_order.iter().enumerate() {
            if self.burst_refused(request, pool, free).is_some() {
                continue;
            }
            for nodes in cycle.by_free_gpus[position].range(request.resources.gpus..).map(|(_, nodes)| nodes) {
                let fits = |i: &usize| self.fits_indexed(request, *i, free);
                if let Some(i) = nodes.iter().find(fits) {
                    return Some((i, nodes.len() as u32));
                }
            }
        }
        None
    }

    /// What each node has free now, in the order of `self.nodes`; a node that is not ready has nothing.
    fn free_now(&self) -> Free {
        self.nodes.values().map(|n| if n.ready { n.free() } else { Resources::ZERO }).collect()
    }

    /// The ready node that fits the job best: the first pool in order, then the tightest fit. Returns the node's
    /// index, the shared GPU choice (see `fit`), and how many nodes could hold the job.
    fn best_node(&self, request: &JobRequest, free: &[Resources]) -> Option<(usize, Option<u32>, u32)> {
        let mut candidates = 0u32;
        let mut best: Option<((PoolRank<'_>, FitScore), usize, Option<u32>)> = None;
        let row = self.allowed_row(request);
        for (i, (node, f)) in self.nodes.values().zip(free).enumerate() {
            if !node.ready {
                continue;
            }
            let Some(shared_gpu) = self.fit_at(request, row, i, node, f) else { continue };
            if self.burst_refused(request, &node.info.pool, free).is_some() {
                continue;
            }
            candidates += 1;
            let after = f.saturating_sub(&request.resources);
            let whole_left = after.gpus - u32::from(shared_gpu == Some(u32::MAX));
            let score = (self.pool_rank(&node.info.pool), (whole_left, after.cpu_millis, after.memory_bytes));
            if best.as_ref().is_none_or(|(b, _, _)| score < *b) {
                best = Some((score, i, shared_gpu));
            }
        }
        best.map(|(_, i, shared)| (i, shared, candidates))
    }

    /// What the ready nodes have together.
    fn ready_capacity(&self) -> Resources {
        self.nodes
            .values()
            .filter(|n| n.ready)
            .fold(Resources::ZERO, |acc, n| acc.checked_add(&n.info.capacity).unwrap_or(acc))
    }

    /// The order this cycle walks the queue in: priority first, then the queue ordering within each level.
    fn cycle_walk(&self, capacity: &Resources) -> Walk {
        let mut out: Vec<JobId> = Vec::new();
        match &self.queue_order {
            QueueOrder::FairShare => return Walk::Filling(fairshare::Filling::new(&self.groups)),
            QueueOrder::Fifo => out.extend(self.groups.by_level().flat_map(|(_, jobs)| jobs)),
            service => {
                for (_, mut jobs) in self.groups.by_level() {
                    self.order_level(service, &mut jobs, capacity);
                    out.extend(jobs);
                }
            }
        }
        Walk::Listed(out.into_iter())
    }

    /// Sorts one priority level's jobs by a service ordering (see `order`).
    fn order_level(&self, order: &QueueOrder, jobs: &mut [JobId], capacity: &Resources) {
        let request_of = |id: JobId| {
            let r = &self.pending[&id];
            (r, r.total())
        };
        order::order_level(order, jobs, request_of, capacity, self.now_us);
    }

    /// The quota of the job's project, if it has one.
    fn project(&self, request: &JobRequest) -> Option<&ProjectInfo> {
        self.projects.get(&request.team)?.get(&request.project)
    }

    /// Why the job's team or project may not take it on now, if it may not: it would hold more than its quota plus
    /// what it may borrow.
    fn over_team_limit(&self, request: &JobRequest) -> Option<WaitReason> {
        let team_ceiling = self.teams.get(&request.team).and_then(TeamInfo::ceiling);
        let project = self.project(request);
        if team_ceiling.is_none() && project.is_none() {
            return None;
        }
        let (claimed_team, claimed_project) = self.claimed_alongside(request);
        if let Some(ceiling) = team_ceiling {
            let after = self.team_held(&request.team).checked_add(&claimed_team)?.checked_add(&request.total())?;
            if let Some((resource, would_hold, limit)) = first_short(&after, &ceiling) {
                return Some(WaitReason::OverTeamLimit { team: request.team.clone(), resource, would_hold, limit });
            }
        }
        let project = project?;
        let held = self.project_held.get(&request.project_key()).copied().unwrap_or_default();
        let after = held.checked_add(&claimed_project)?.checked_add(&request.total())?;
        let (resource, would_hold, limit) = first_short(&after, &project.ceiling()?)?;
        let (team, project) = (project.team.clone(), project.name.clone());
        Some(WaitReason::OverProjectLimit { team, project, resource, would_hold, limit })
    }

    /// What the other jobs of the request's team, and of its project, hold claims for: they preempted others and
    /// start as soon as their victims have stopped, so they count against the team's and the project's limits
    /// already, and no job of the same group may take that room meanwhile.
    fn claimed_alongside(&self, request: &JobRequest) -> (Resources, Resources) {
        let (mut team, mut project) = (Resources::ZERO, Resources::ZERO);
        for id in self.claims.keys().filter(|id| **id != request.id) {
            let Some(other) = self.pending.get(id) else { continue };
            let (other_team, other_project) = self.owners.project_name(other.class.project);
            if other_team != request.team {
                continue;
            }
            team = team.checked_add(&other.total()).unwrap_or(team);
            if other_project == request.project {
                project = project.checked_add(&other.total()).unwrap_or(project);
            }
        }
        (team, project)
    }

    /// Picks the victims that make room for a blocked job (on one node, or on as many nodes as a gang has workers,
    /// all in one pool), marks them, and returns the decisions.
    fn preempt_for(&mut self, request: &JobRequest, free: &[Resources], cycle: &Cycle) -> Vec<Decision> {
        let id = request.id;
        if request.gpu_share_milli > 0 {
            // Shares are small and pack into what frees up; they never stop other work.
            return Vec::new();
        }
        // Most blocked jobs can stop nothing: nothing running has a lower priority, and their team reclaims nothing.
        let lowest = cycle.lowest_running_priority;
        let reclaims = self.teams.contains_key(&request.team) || self.project(request).is_some();
        let attains = cycle.top_stoppable_level.is_some_and(|top| self.attained_level(request.attained_gpu_s) < top);
        if lowest.is_none_or(|p| p >= request.priority) && !reclaims && !attains {
            return Vec::new();
        }
        // For each pool in order: each allowed node's cheapest victims (fewest, then the least important worst
        // victim, then the node name); a node that fits without victims costs nothing.
        let workers = request.workers() as usize;
        // What preemptions under way will move, counted once for all the candidates below.
        let moves =
            reclaims.then(|| (self.moves_under_way(|r| r.team.clone()), self.moves_under_way(JobRequest::project_key)));
        let mut by_pool: Vec<Vec<(VictimScore<'_>, Vec<preempt::Candidate>)>> =
            vec![Vec::new(); cycle.pool_order.len()];
        let row = self.allowed_row(request);
        for (i, (node, f)) in self.nodes.values().zip(free).enumerate() {
            if !node.ready
                || !self.allowed_at(request, row, i, node)
                || self.burst_refused(request, &node.info.pool, free).is_some()
            {
                continue;
            }
            let candidates: Vec<preempt::Candidate> = node
                .jobs
                .iter()
                .filter_map(|victim| {
                    let running = &self.running[victim];
                    if running.preempted_by.is_some() || running.allocation.gpu_share_milli > 0 {
                        return None;
                    }
                    let stoppable = cycle.stoppable.get(victim).copied();
                    let reason = self.may_preempt(request, running, stoppable, moves.as_ref())?;
                    // Stopped for attained service, the job that has had the most goes first.
                    let attained_gpu_s = match reason {
                        PreemptReason::Attained { victim_gpu_s, .. } => victim_gpu_s,
                        _ => 0,
                    };
                    Some(preempt::Candidate {
                        job: *victim,
                        priority: running.request.priority,
                        attained_gpu_s,
                        resources: running.allocation.resources,
                        gpus: running.allocation.resources.gpus,
                        reason,
                    })
                })
                .collect();
            let Some(chosen) = preempt::victims(candidates, *f, &request.resources) else { continue };
            if chosen.is_empty() && workers == 1 {
                continue;
            }
            // A preemption that a victim would undo by taking its place back is no progress, only lost work.
            if self.taken_back(request, &chosen, moves.as_ref()) {
                continue;
            }
            let worst = chosen.iter().map(|c| c.priority).max().unwrap_or(i32::MIN);
            by_pool[cycle.pool_of[i]].push(((chosen.len(), worst, node.info.name.as_str()), chosen));
        }
        // A single job takes the cheapest node of all; a gang the cheapest nodes of the first pool with enough.
        let best: Option<Vec<(VictimScore<'_>, Vec<preempt::Candidate>)>> = if workers == 1 {
            by_pool.into_iter().flatten().min_by(|a, b| a.0.cmp(&b.0)).map(|one| vec![one])
        } else {
            by_pool.into_iter().find(|nodes| nodes.len() >= workers).map(|mut nodes| {
                nodes.sort_by(|a, b| a.0.cmp(&b.0));
                nodes.truncate(workers);
                nodes
            })
        };
        let Some(best) = best.filter(|nodes| nodes.iter().any(|(_, chosen)| !chosen.is_empty())) else {
            return Vec::new();
        };
        let names: Vec<String> = best.iter().map(|((_, _, node), _)| node.to_string()).collect();
        let chosen: Vec<preempt::Candidate> = best.into_iter().flat_map(|(_, chosen)| chosen).collect();
        // A gang's victims on its nodes, each set checked alone above, may together leave a victim's group room to
        // take its place back.
        if workers > 1 && self.taken_back(request, &chosen, moves.as_ref()) {
            return Vec::new();
        }
        self.claims.insert(id, names);
        let mut decisions = Vec::new();
        for c in chosen {
            let running = self.running.get_mut(&c.job).expect("a victim runs");
            // A gang victim may be chosen on several of its nodes; it is stopped once.
            if running.preempted_by.is_none() {
                running.preempted_by = Some(id);
                decisions.push(Decision::Preempt { job: c.job, by: id, reason: c.reason });
            }
        }
        decisions
    }

    /// Whether `request` may stop `victim`, and why: a strictly higher priority, a team within its guaranteed
    /// quota taking back what the victim's team borrowed, the same between two projects of one team, or, under the
    /// least-attained order, less GPU time received than a victim of the same priority that checkpoints. `moves` is
    /// what preemptions under way move between teams and between projects; `None` when the request reclaims nothing.
    /// `stoppable` is the victim's level where attained service may stop it (`Cycle::stoppable`).
    fn may_preempt(
        &self,
        request: &JobRequest,
        victim: &Running,
        stoppable: Option<usize>,
        moves: Option<&(Moves, Moves)>,
    ) -> Option<PreemptReason> {
        if victim.request.priority < request.priority {
            return Some(PreemptReason::Priority {
                victim_priority: victim.request.priority,
                preemptor_priority: request.priority,
            });
        }
        if let Some(reason) = moves.and_then(|moves| self.reclaim_reason(request, &victim.request, moves)) {
            return Some(reason);
        }
        let level = stoppable?;
        (victim.request.priority == request.priority && self.attained_level(request.attained_gpu_s) < level).then(
            || PreemptReason::Attained {
                victim_gpu_s: self.attained_running(victim),
                preemptor_gpu_s: request.attained_gpu_s,
            },
        )
    }

    /// The GPU-seconds a running job has received: in its earlier attempts and in the one under way.
    fn attained_running(&self, running: &Running) -> u64 {
        let ran_s = self.now_us.saturating_sub(running.started_at_us) / 1_000_000;
        running.request.attained_gpu_s.saturating_add(lifecycle::attained_gpu_s(ran_s, running.request.total().gpus))
    }

    /// The least-attained level of a job that has received `attained_gpu_s`; 0 under the other orders.
    fn attained_level(&self, attained_gpu_s: u64) -> usize {
        match &self.queue_order {
            QueueOrder::LeastAttained { levels_gpu_s, .. } => order::level(levels_gpu_s, attained_gpu_s),
            _ => 0,
        }
    }

    /// The least-attained level of a running job that a job of a lower level may stop: `None` unless the order is
    /// least-attained with a lease, the job checkpoints, takes whole GPUs, has run its current attempt for the
    /// lease, is not being stopped already, and has not waited the aging bound in all (an aged job goes first in
    /// the queue and, once started, is not stopped for attained service again: that keeps the starvation bound).
    fn stoppable_level(&self, running: &Running) -> Option<usize> {
        let lease_s = self.queue_order.lease_s()?;
        let s_us = |s: u64| (s as i64).saturating_mul(1_000_000);
        let ran_us = self.now_us.saturating_sub(running.started_at_us);
        let stoppable = running.request.checkpoints
            && running.preempted_by.is_none()
            && running.allocation.gpu_share_milli == 0
            && running.request.total().gpus > 0
            && ran_us >= s_us(lease_s);
        if !stoppable {
            return None;
        }
        if let Some(aging_s) = self.queue_order.aging_s() {
            // What it had waited when this attempt started.
            let request = &running.request;
            let gpus = request.total().gpus;
            if order::waited_us(request.submitted_at_us, request.attained_gpu_s, gpus, running.started_at_us)
                >= s_us(aging_s)
            {
                return None;
            }
        }
        Some(self.attained_level(self.attained_running(running)))
    }

    /// Whether `request` takes back, as a team or project within its guaranteed quota, what `victim`'s team or
    /// project borrowed (see `may_preempt`).
    fn reclaim_reason(
        &self,
        request: &JobRequest,
        victim: &JobRequest,
        moves: &(Moves, Moves),
    ) -> Option<PreemptReason> {
        let (team_moves, project_moves) = moves;
        if let (Some(mine), Some(theirs)) = (self.teams.get(&request.team), self.teams.get(&victim.team)) {
            let (mine_group, theirs_group) = ((mine.name.as_str(), &mine.quota), (theirs.name.as_str(), &theirs.quota));
            if reclaims(request, mine_group, theirs_group, &self.team_held, team_moves) {
                let (victim_team, preemptor_team) = (theirs.name.clone(), mine.name.clone());
                return Some(PreemptReason::Reclaim { victim_team, preemptor_team });
            }
        }
        if request.team != victim.team {
            return None;
        }
        let (mine, theirs) = (self.project(request)?, self.project(victim)?);
        let (mine_key, theirs_key) = (request.project_key(), victim.project_key());
        let (mine_group, theirs_group) = ((mine_key.as_str(), &mine.quota), (theirs_key.as_str(), &theirs.quota));
        reclaims(request, mine_group, theirs_group, &self.project_held, project_moves).then(|| {
            PreemptReason::ReclaimProject {
                team: request.team.clone(),
                victim_project: theirs.name.clone(),
                preemptor_project: mine.name.clone(),
            }
        })
    }

    /// Whether one of `victims`, queued again once it has stopped, could preempt the request in turn and so take back
    /// what it made room for. Without this check two jobs can stop each other for ever: a job of higher priority
    /// whose team borrows stops a job of a team within its quota, which then reclaims its quota from the borrower,
    /// which then stops it again for priority, and so on. Groups (teams, or projects of one team) are judged as they
    /// will be once the preemptions under way and this one have run their course, and a victim is taken to come back
    /// when:
    /// - its group would be within its quota with it back while the request's group holds beyond its own (it would
    ///   reclaim). Victims of the request's own group count as still held there: they may start again on any room
    ///   this preemption leaves, as a gang victim's other nodes do;
    /// - it has a higher priority than the request (stopped by a reclaim): it could stop the request for priority,
    ///   together with jobs of its own group to stay within its quota, so a reclaim never stops a job of higher
    ///   priority than the job it reclaims for.
    ///
    /// `moves` is `None` when the request's team and project have no quota: then nothing can be reclaimed from the
    /// request, and only a reclaim stops a victim of higher priority.
    fn taken_back(&self, request: &JobRequest, victims: &[preempt::Candidate], moves: Option<&(Moves, Moves)>) -> bool {
        let Some((team_moves, project_moves)) = moves else { return false };
        let victims: Vec<&JobRequest> =
            victims.iter().filter_map(|c| self.running.get(&c.job)).map(|r| &r.request).collect();
        // What a group (named by `group_of`) will hold once every preemption under way and this one is done.
        let settled = |held: &HashMap<String, Resources>, moves: &Moves, group: &str, group_of: GroupOf| {
            let leaving =
                victims.iter().filter(|v| group_of(v) == group && group != group_of(request)).map(|v| v.total());
            let arriving =
                (group_of(request) == group && !moves.preemptors.contains(&request.id)).then(|| request.total());
            let get = |sums: &HashMap<String, Resources>| sums.get(group).copied().unwrap_or_default();
            let coming = [get(&moves.claimed)].into_iter().chain(arriving);
            let total = coming.fold(get(held), |sum, r| sum.checked_add(&r).unwrap_or(sum));
            leaving.fold(total.saturating_sub(&get(&moves.leaving)), |sum, r| sum.saturating_sub(&r))
        };
        victims.iter().any(|victim| {
            let (held, moves, group_of, my_quota, their_quota): (_, _, GroupOf, _, _) = if victim.team != request.team {
                let (Some(mine), Some(theirs)) = (self.teams.get(&request.team), self.teams.get(&victim.team)) else {
                    return false;
                };
                (&self.team_held, team_moves, |r| r.team.clone(), &mine.quota, &theirs.quota)
            } else {
                let (Some(mine), Some(theirs)) = (self.project(request), self.project(victim)) else { return false };
                if mine.name == theirs.name {
                    return false;
                }
                (&self.project_held, project_moves, JobRequest::project_key, &mine.quota, &theirs.quota)
            };
            let mine_after = settled(held, moves, &group_of(request), group_of);
            let theirs_after = settled(held, moves, &group_of(victim), group_of);
            let victim_within_quota = theirs_after.checked_add(&victim.total()).is_some_and(|t| t.fits_in(their_quota));
            let request_borrows = !mine_after.fits_in(my_quota);
            let reclaims_back = victim_within_quota && request_borrows;
            reclaims_back || victim.priority > request.priority
        })
    }

    /// What the preemptions under way move, by group (`group_of` names a job's team or its project): what their
    /// victims hold, and what the jobs they make room for will hold.
    fn moves_under_way(&self, group_of: impl Fn(&JobRequest) -> String) -> Moves {
        let mut moves = Moves::default();
        for running in self.running.values() {
            let Some(by) = running.preempted_by else { continue };
            add_to(&mut moves.leaving, group_of(&running.request), &running.request.total());
            moves.preemptors.insert(by);
        }
        for waiting in moves.preemptors.iter().filter_map(|by| self.queued_request(*by)) {
            add_to(&mut moves.claimed, group_of(&waiting), &waiting.total());
        }
        moves
    }

    /// Whether `request` can start on `node` with `free` left there. For a GPU share, the inner value says which
    /// GPU: a shared one with room, or `u32::MAX` for "a whole free GPU, to be shared from now on".
    fn fit(&self, request: &JobRequest, node: &Node, free: &Resources) -> Option<Option<u32>> {
        if !self.allows(request, &node.info) || !request.resources.fits_in(free) {
            return None;
        }
        Self::gpu_choice(request, node, free)
    }

    /// `fit` for the node at position `i` of `self.nodes`, its model and labels read from the job's row.
    fn fit_at(
        &self,
        request: &JobRequest,
        row: Option<&[bool]>,
        i: usize,
        node: &Node,
        free: &Resources,
    ) -> Option<Option<u32>> {
        if !request.resources.fits_in(free) || !self.allowed_at(request, row, i, node) {
            return None;
        }
        Self::gpu_choice(request, node, free)
    }

    /// For a job that fits the node's CPUs, memory and whole GPUs: which GPU a share takes (see `fit`).
    fn gpu_choice(request: &JobRequest, node: &Node, free: &Resources) -> Option<Option<u32>> {
        if request.gpu_share_milli == 0 {
            return Some(None);
        }
        match node.shared_gpu_with_room(request.gpu_share_milli) {
            Some(gpu) => Some(Some(gpu)),
            None if free.gpus > request.resources.gpus => Some(Some(u32::MAX)),
            None => None,
        }
    }

    /// Starts a queued job on a node chosen by the cycle and records the decision.
    fn start(
        &mut self,
        id: JobId,
        index: usize,
        shared: Option<u32>,
        candidates: u32,
        free: &mut [Resources],
        cycle: &mut Cycle,
    ) -> Decision {
        let node = self.nodes.at(index).info.name.clone();
        let request = self.dequeue(id).expect("queued job is pending");
        let mut taken = request.resources;
        if shared == Some(u32::MAX) {
            // A whole free GPU becomes a shared one: it is no longer free as a whole.
            taken.gpus += 1;
        }
        cycle.take(index, free, &taken);
        let slot = free[index];
        let (gpus, gpu_share_milli) = match shared {
            None => (self.nodes.at(index).free_gpus().take(request.resources.gpus as usize).collect(), 0),
            Some(u32::MAX) => {
                let gpu = self.nodes.at(index).free_gpus().next().expect("the fit found a free GPU");
                (vec![gpu], request.gpu_share_milli)
            }
            Some(gpu) => (vec![gpu], request.gpu_share_milli),
        };
        let pool = self.nodes.at(index).info.pool.clone();
        let burst = self.pools.get(&pool).is_some_and(|p| p.burst).then(|| self.burst_reason(&request, &pool));
        let reason = Placement {
            pool,
            burst,
            backfilled_before: None,
            candidates,
            gpus_free_after: slot.gpus,
            cpu_millis_free_after: slot.cpu_millis,
            gang_nodes: Vec::new(),
        };
        let allocation = Allocation { node, resources: request.resources, gpus, gpu_share_milli, peers: Vec::new() };
        self.allocate(request.clone(), allocation.clone());
        Decision::Start { job: request.id, allocation, reason }
    }

    /// For a gang: the first pool in order with as many ready nodes that can each hold a worker now as the gang has
    /// workers, and in it those with the fewest free GPUs that are enough (then by name), so whole nodes stay free.
    fn gang_nodes(&self, request: &JobRequest, free: &[Resources], cycle: &Cycle) -> Option<Vec<usize>> {
        if request.gpu_share_milli > 0 {
            return None;
        }
        let workers = request.workers() as usize;
        for (position, pool) in cycle.pool_order.iter().enumerate() {
            if self.burst_refused(request, pool, free).is_some() {
                continue;
            }
            let mut chosen = Vec::with_capacity(workers);
            for nodes in cycle.by_free_gpus[position].range(request.resources.gpus..).map(|(_, nodes)| nodes) {
                for i in nodes.iter() {
                    if self.fits_indexed(request, i, free) {
                        chosen.push(i);
                        if chosen.len() == workers {
                            return Some(chosen);
                        }
                    }
                }
            }
        }
        None
    }

    /// Starts every worker of a gang at once, rank 0 on the first of `nodes`.
    fn start_gang(&mut self, id: JobId, nodes: Vec<usize>, free: &mut [Resources], cycle: &mut Cycle) -> Decision {
        let request = self.dequeue(id).expect("queued job is pending");
        let mut workers = Vec::with_capacity(nodes.len());
        for &i in &nodes {
            cycle.take(i, free, &request.resources);
            let name = self.nodes.at(i).info.name.clone();
            let gpus: Vec<u32> = self.nodes.at(i).free_gpus().take(request.resources.gpus as usize).collect();
            workers.push(Peer { node: name, gpus });
        }
        let first = workers.remove(0);
        let pool = self.nodes.at(nodes[0]).info.pool.clone();
        let burst = self.pools.get(&pool).is_some_and(|p| p.burst).then(|| self.burst_reason(&request, &pool));
        let slot = free[nodes[0]];
        let reason = Placement {
            pool,
            burst,
            backfilled_before: None,
            candidates: nodes.len() as u32,
            gpus_free_after: slot.gpus,
            cpu_millis_free_after: slot.cpu_millis,
            gang_nodes: std::iter::once(&first).chain(&workers).map(|w| w.node.clone()).collect(),
        };
        let allocation = Allocation {
            node: first.node,
            resources: request.resources,
            gpus: first.gpus,
            gpu_share_milli: 0,
            peers: workers,
        };
        self.allocate(request, allocation.clone());
        Decision::Start { job: id, allocation, reason }
    }

    fn pool_rank<'a>(&self, name: &'a str) -> PoolRank<'a> {
        (self.pools.get(name).map_or(i32::MAX, |p| p.order), name)
    }

    /// Why a job may not burst into `pool` yet, or `None` when it may (or the pool is not a burst pool).
    fn burst_refused(&self, request: &JobRequest, pool: &str, free: &[Resources]) -> Option<WaitReason> {
        let info = self.pools.get(pool).filter(|p| p.burst)?;
        let waited_s = ((self.now_us - request.submitted_at_us).max(0) / 1_000_000) as u64;
        if info.burst_after_s.is_some_and(|after| waited_s >= after) {
            return None;
        }
        // Earlier pools are fully allocated for what the job needs when, together, they have less free of some
        // resource it asks for than it asks for (all workers together, for a gang).
        let rank = self.pool_rank(pool);
        let row = self.allowed_row(request);
        let earlier = self
            .nodes
            .values()
            .zip(free)
            .enumerate()
            .filter(|(i, (node, _))| self.pool_rank(&node.info.pool) < rank && self.allowed_at(request, row, *i, node))
            .map(|(_, pair)| pair);
        let earlier_free = if request.is_gang() {
            // A gang only counts what is free in pools with enough nodes large enough for a worker each: one that
            // could never hold it has no room for it, however much it has free.
            let worker = request.footprint();
            let mut by_pool: BTreeMap<&str, (u32, Resources)> = BTreeMap::new();
            for (node, f) in earlier.filter(|(node, _)| worker.fits_in(&node.info.capacity)) {
                let (nodes, sum) = by_pool.entry(node.info.pool.as_str()).or_default();
                *nodes += 1;
                *sum = sum.checked_add(f).unwrap_or(*sum);
            }
            by_pool
                .into_values()
                .filter(|(nodes, _)| *nodes >= request.workers())
                .fold(Resources::ZERO, |acc, (_, sum)| acc.checked_add(&sum).unwrap_or(acc))
        } else {
            earlier.fold(Resources::ZERO, |acc, (_, f)| acc.checked_add(f).unwrap_or(acc))
        };
        if !request.total().fits_in(&earlier_free) {
            return None;
        }
        Some(WaitReason::BurstNotYet { pool: info.name.clone(), after_s: info.burst_after_s, waited_s })
    }

    /// Why a job goes to burst pool `pool`: how long it waited, and the pools before it in order that it may use
    /// (which the cycle tried first, and which could not hold it).
    fn burst_reason(&self, request: &JobRequest, pool: &str) -> BurstReason {
        let waited_s = ((self.now_us - request.submitted_at_us).max(0) / 1_000_000) as u64;
        let order = self.pools.get(pool).map_or(i32::MAX, |p| p.order);
        let mut earlier: Vec<&PoolInfo> = self
            .pools
            .values()
            .filter(|p| p.order < order && request.pool.as_ref().is_none_or(|only| *only == p.name))
            .collect();
        earlier.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        BurstReason { waited_s, past: earlier.into_iter().map(|p| p.name.clone()).collect() }
    }

    /// Holds back, on the allowed node closest to fitting a blocked job (for a gang, on as many such nodes of one
    /// pool as it has workers), what that job needs.
    fn reserve(&mut self, request: &JobRequest, free: &mut [Resources], cycle: &mut Cycle) {
        let job = request.id;
        let needs = request.footprint();
        let workers = request.workers() as usize;
        if workers == 1 {
            if let Some(i) = self.nearest_node(request, &needs, free, cycle) {
                let starts_at_us = self.worker_start_estimate(job, i, free, cycle);
                self.reserve_on(job, i, starts_at_us, free, cycle);
            }
            return;
        }
        // Closest first: most of the GPUs, then of the CPUs, it needs already free; then the first by name.
        let mut by_pool: Vec<Vec<(usize, (u32, u64))>> = vec![Vec::new(); cycle.pool_order.len()];
        let row = self.allowed_row(request);
        for (i, (node, f)) in self.nodes.values().zip(free.iter()).enumerate() {
            if node.ready && self.allowed_at(request, row, i, node) && needs.fits_in(&node.info.capacity) {
                by_pool[cycle.pool_of[i]].push((i, (f.gpus.min(needs.gpus), f.cpu_millis.min(needs.cpu_millis))));
            }
        }
        let Some(mut nodes) = by_pool.into_iter().find(|nodes| nodes.len() >= workers) else { return };
        // Only the closest `workers` nodes are wanted: select them, then order just those (every key is distinct, as
        // it ends with the node's index, so this picks and orders exactly as sorting them all would).
        let closest = |(i, key): &(usize, (u32, u64))| (Reverse(*key), *i);
        if nodes.len() > workers {
            nodes.select_nth_unstable_by_key(workers - 1, closest);
            nodes.truncate(workers);
        }
        nodes.sort_by_key(closest);
        let chosen: Vec<usize> = nodes.into_iter().take(workers).map(|(i, _)| i).collect();
        // A gang starts when its last node has room.
        let estimates: Vec<Option<i64>> =
            chosen.iter().map(|&i| self.worker_start_estimate(job, i, free, cycle)).collect();
        let starts_at_us = estimates.into_iter().try_fold(i64::MIN, |acc, e| e.map(|e| acc.max(e)));
        for i in chosen {
            self.reserve_on(job, i, starts_at_us, free, cycle);
        }
    }

    /// The ready node closest to holding a blocked single-node job: the most of the GPUs, then of the CPUs, it needs
    /// already free; then the first in the walk. The walk goes through each pool's nodes from the most free GPUs
    /// down and stops at the first node that has all the GPUs and CPUs the job needs, since none can be closer.
    fn nearest_node(
        &self,
        request: &JobRequest,
        needs: &Resources,
        free: &[Resources],
        cycle: &Cycle,
    ) -> Option<usize> {
        // No node has more CPUs free than the cycle's bound, so no key can have more of them than that.
        let cpu_most = needs.cpu_millis.min(cycle.bound().cpu_millis);
        let closest_possible = (needs.gpus, cpu_most);
        let row = self.allowed_row(request);
        // The nodes the job's constraint rules out are skipped 64 at a time.
        let mask = self.pending.get(&request.id).and_then(|p| self.constraints.bits(p.class.constraint));
        let mut best: Option<((u32, u64), usize)> = None;
        for index in &cycle.by_free_gpus {
            for (&gpus_free, nodes) in index.iter().rev() {
                let top = gpus_free.min(needs.gpus);
                if best.is_some_and(|(key, _)| key.0 > top) {
                    break;
                }
                // The most a node of this bucket can offer. Where the best so far has it already, only the nodes
                // before it can still win (a tie goes to the earlier node); and once a node of this bucket has it,
                // none after it in the bucket can. On a full cluster, this spares walking every node.
                let bucket_most = (top, cpu_most);
                let end = match best {
                    Some((key, j)) if key == bucket_most => j,
                    _ => usize::MAX,
                };
                for i in nodes.masked(mask, end) {
                    let key = (top, free[i].cpu_millis.min(needs.cpu_millis));
                    if best.is_some_and(|(b, j)| (b, Reverse(j)) >= (key, Reverse(i))) {
                        continue;
                    }
                    let allowed = match row {
                        Some(row) => row[i],
                        None => self.allows(request, &self.nodes.at(i).info),
                    };
                    if allowed && needs.fits_in(&cycle.capacity[i]) {
                        best = Some((key, i));
                        if key == closest_possible {
                            return Some(i);
                        }
                        if key == bucket_most {
                            break;
                        }
                    }
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// When one worker of a queued job could start on node `i`, by the runtime limits of the jobs running there.
    fn worker_start_estimate(&self, job: JobId, i: usize, free: &[Resources], cycle: &mut Cycle) -> Option<i64> {
        let needs = self.pending[&job].footprint();
        if needs.fits_in(&free[i]) {
            return Some(self.now_us);
        }
        if cycle.ends.len() <= i {
            cycle.ends.resize(self.nodes.len(), None);
        }
        let ends = cycle.ends[i].get_or_insert_with(|| self.limited_ends(self.nodes.at(i)));
        self.start_after_ends(ends, free[i], &needs)
    }

    /// Holds back on node `i` what a blocked job needs, noting when the job can be expected to start there.
    fn reserve_on(
        &mut self,
        job: JobId,
        i: usize,
        starts_at_us: Option<i64>,
        free: &mut [Resources],
        cycle: &mut Cycle,
    ) {
        let resources = self.pending[&job].resources;
        cycle.held_back_times += 1;
        let held = free[i].saturating_sub(&free[i].saturating_sub(&resources));
        cycle.take(i, free, &resources);
        let shadow = cycle.shadows.entry(i).or_insert(Shadow { held: Resources::ZERO, for_job: job, starts_at_us });
        shadow.held = shadow.held.checked_add(&held).unwrap_or(shadow.held);
        shadow.starts_at_us = match (shadow.starts_at_us, starts_at_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
        self.reservations.entry(job).or_insert(i);
    }

    /// When `needs` fits on `node`, which has `free` now, if its running jobs end by their runtime limits: now if it
    /// fits already; `None` when it only would after a job that has no limit.
    fn node_start_estimate(&self, node: &Node, free: Resources, needs: &Resources) -> Option<i64> {
        if needs.fits_in(&free) {
            return Some(self.now_us);
        }
        self.start_after_ends(&self.limited_ends(node), free, needs)
    }

    /// When each job on the node that has a runtime limit must end, and what it frees then; soonest first.
    fn limited_ends(&self, node: &Node) -> Vec<(i64, Resources)> {
        let mut ends: Vec<(i64, Resources)> = node
            .jobs
            .iter()
            .filter_map(|j| {
                let running = &self.running[j];
                running.ends_by_us().map(|end| (end, running.allocation.resources))
            })
            .collect();
        ends.sort_by_key(|(end, _)| *end);
        ends
    }

    /// When `needs` fits in `free` plus what the `limited_ends` free in turn; `None` if not after them all.
    fn start_after_ends(&self, ends: &[(i64, Resources)], free: Resources, needs: &Resources) -> Option<i64> {
        let mut room = free;
        for &(end, freed) in ends {
            room = room.checked_add(&freed).unwrap_or(room);
            if needs.fits_in(&room) {
                return Some(end.max(self.now_us));
            }
        }
        None
    }

    /// When a queued job can be expected to start, from the runtime limits of the jobs holding what it needs: the
    /// earliest time some allowed node (for a gang, enough nodes of one pool) would have room if those jobs ran to
    /// their limits. It does not count the jobs ahead of it in the queue, so it is a lower bound; `None` when the jobs
    /// it waits for have no limit.
    pub fn estimate_start(&self, job: JobId) -> Option<i64> {
        let request = &self.queued_request(job)?;
        let needs = request.footprint();
        let mut by_pool: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for node in self.nodes.values() {
            if node.ready && self.allows(request, &node.info) && needs.fits_in(&node.info.capacity) {
                if let Some(at) = self.node_start_estimate(node, node.free(), &needs) {
                    by_pool.entry(&node.info.pool).or_default().push(at);
                }
            }
        }
        let workers = request.workers() as usize;
        by_pool
            .into_values()
            .filter(|times| times.len() >= workers)
            .map(|mut times| {
                times.sort_unstable();
                times[workers - 1]
            })
            .min()
    }

    /// A node held back for a blocked job that `request` can use without delaying it: the request fits in what is
    /// free there plus what is held back, and its runtime limit ends before the blocked job's expected start.
    fn backfill_node(&self, request: &JobRequest, free: &[Resources], cycle: &Cycle) -> Option<(usize, JobId)> {
        if request.is_gang() {
            // A gang would need held-back room on several nodes at once; it waits for its own turn.
            return None;
        }
        let limit_s = request.max_runtime_s?;
        let ends_us = self.now_us.saturating_add(limit_s as i64 * 1_000_000);
        cycle.shadows.iter().find_map(|(&i, shadow)| {
            let starts = shadow.starts_at_us?;
            let room = free[i].checked_add(&shadow.held)?;
            let node = self.nodes.at(i);
            let row = self.allowed_row(request);
            let fits = ends_us <= starts
                && request.gpu_share_milli == 0
                && self.fit_at(request, row, i, node, &room).is_some();
            fits.then_some((i, shadow.for_job))
        })
    }

    /// Why a queued job waits, computed from the current state. `None` for a job that is not queued.
    pub fn explain(&self, job: JobId) -> Option<WaitReason> {
        let reason = self.explain_here(job)?;
        // Where no node can hold the job, an elastic pool that would start one but is skipped after a failure is the
        // reason that counts: nothing happens until it may be asked again.
        let no_room = matches!(
            reason,
            WaitReason::NoNodes
                | WaitReason::NoReadyNodes { .. }
                | WaitReason::Infeasible { .. }
                | WaitReason::Insufficient { .. }
                | WaitReason::GangInfeasible { .. }
                | WaitReason::GangWaiting { .. }
        );
        if no_room {
            if let Some(cooling) = self.elastic_cooling_for(&self.queued_request(job)?) {
                return Some(cooling);
            }
        }
        Some(reason)
    }

    /// The first elastic pool, in order, that the job may use and whose node could hold it, if it is cooling down.
    fn elastic_cooling_for(&self, request: &JobRequest) -> Option<WaitReason> {
        let mut pools: Vec<&PoolInfo> = self.pools.values().filter(|p| p.elastic.is_some()).collect();
        pools.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
        let pool = pools.into_iter().find(|p| {
            let elastic = p.elastic.as_ref().expect("filtered to elastic pools");
            let node = elastic.node.node(&format!("{}-new", p.name), &p.name);
            request.pool.as_ref().is_none_or(|only| *only == p.name)
                && request.footprint().fits_in(&node.capacity)
                && self.allows(request, &node)
        })?;
        let cooldown = self.life.cooldown(&pool.name).filter(|c| c.until_us > self.now_us)?;
        Some(WaitReason::ElasticCoolingDown {
            pool: pool.name.clone(),
            until_us: cooldown.until_us,
            failure: cooldown.failure.to_string(),
            detail: cooldown.detail.clone(),
        })
    }

    fn explain_here(&self, job: JobId) -> Option<WaitReason> {
        let request = &self.queued_request(job)?;
        if let Some(pool) = self.waiting_for_nodes.get(&job) {
            let nodes_starting = self.life.starting(pool);
            return Some(WaitReason::Provisioning { pool: pool.clone(), nodes_starting });
        }
        if self.nodes.is_empty() {
            return Some(WaitReason::NoNodes);
        }
        if let Err(reason) = self.check_feasible(request) {
            return Some(reason);
        }
        if let Some(reason) = self.over_team_limit(request) {
            return Some(reason);
        }
        let mut victims: Vec<JobId> =
            self.running.iter().filter(|(_, r)| r.preempted_by == Some(job)).map(|(id, _)| *id).collect();
        if !victims.is_empty() {
            victims.sort_unstable();
            return Some(WaitReason::Preempting { jobs: victims });
        }
        let ready: Vec<&Node> = self.nodes.values().filter(|n| n.ready && self.allows(request, &n.info)).collect();
        if ready.is_empty() {
            let nodes = self.nodes.values().filter(|n| self.allows(request, &n.info)).count() as u32;
            return Some(WaitReason::NoReadyNodes { nodes, pool: request.pool.clone() });
        }
        let free_now = self.free_now();
        let fitting: Vec<&&Node> = ready.iter().filter(|n| self.fit(request, n, &n.free()).is_some()).collect();
        if request.is_gang() {
            let mut by_pool: BTreeMap<PoolRank<'_>, Vec<&str>> = BTreeMap::new();
            for node in &fitting {
                by_pool.entry(self.pool_rank(&node.info.pool)).or_default().push(&node.info.name);
            }
            let workers = request.workers();
            if by_pool.values().all(|nodes| nodes.len() < workers as usize) {
                let most = by_pool.iter().max_by_key(|(rank, nodes)| (nodes.len(), Reverse(*rank)));
                let (pool, nodes) =
                    most.map(|((_, pool), nodes)| (pool.to_string(), nodes.clone())).unwrap_or_default();
                return Some(WaitReason::GangWaiting {
                    workers,
                    nodes_free: nodes.len() as u32,
                    pool,
                    nodes: nodes.iter().take(SHORTFALL_NODES_MAX).map(|n| n.to_string()).collect(),
                });
            }
        }
        let refusals: Vec<WaitReason> =
            fitting.iter().filter_map(|n| self.burst_refused(request, &n.info.pool, &free_now)).collect();
        if !fitting.is_empty() && refusals.len() == fitting.len() {
            return refusals.into_iter().next();
        }
        if !fitting.is_empty() {
            let my_key = (Reverse(request.priority), job);
            let blocker = self
                .reservations
                .iter()
                .filter(|(other, _)| self.pending.get(other).is_some_and(|r| (Reverse(r.priority), **other) < my_key))
                .min_by_key(|(other, _)| (Reverse(self.pending[other].priority), **other));
            return Some(match blocker {
                Some((other, &node)) => {
                    WaitReason::ReservedFor { job: *other, node: self.nodes.at(node).info.name.clone() }
                }
                None => WaitReason::Starting,
            });
        }
        // No node up can hold it now; new nodes of elastic pools could, but the burst rules keep it out of them.
        let needs = request.footprint();
        let templates = self.elastic_templates();
        let able: Vec<&NodeInfo> = templates
            .iter()
            .map(|(t, _)| t)
            .filter(|t| self.allows(request, t) && needs.fits_in(&t.capacity))
            .collect();
        let refusals: Vec<WaitReason> =
            able.iter().filter_map(|t| self.burst_refused(request, &t.pool, &free_now)).collect();
        if !able.is_empty() && refusals.len() == able.len() {
            return refusals.into_iter().next();
        }
        Some(self.shortfall(&needs, &ready))
    }

    /// The largest capacity of any known node, per dimension; `None` before any node registered.
    pub fn largest_node(&self) -> Option<Resources> {
        self.nodes.values().map(|n| n.info.capacity).reduce(|a, b| a.max(&b))
    }

    /// Why `request` can never be placed on the known nodes, even empty ones, nor on the nodes elastic pools may
    /// still start: no node allows it (model, labels), or none is large enough. Before any node registered, and with
    /// no elastic pool, everything is feasible.
    pub fn check_feasible(&self, request: &JobRequest) -> Result<(), WaitReason> {
        let templates = self.elastic_templates();
        if self.nodes.is_empty() && templates.is_empty() {
            return Ok(());
        }
        // Each possible node's pool and capacity, and how many such nodes there can be.
        let known = self.nodes.values().map(|n| (&n.info, 1));
        let possible = templates.iter().map(|(template, room)| (template, *room));
        let allowed: Vec<(&NodeInfo, u32)> = known.chain(possible).filter(|(n, _)| self.allows(request, n)).collect();
        if allowed.is_empty() {
            // A configured pool without any node yet (an engine not connected, agents not joined) takes jobs: they
            // wait for its nodes, and say so.
            let empty_pool = request
                .pool
                .as_ref()
                .is_some_and(|p| self.pools.contains_key(p) && !self.nodes.values().any(|n| &n.info.pool == p));
            if empty_pool {
                return Ok(());
            }
            return Err(self.no_matching_node(request, &templates));
        }
        let needs = request.footprint();
        if request.is_gang() {
            let mut able: BTreeMap<&str, u32> = BTreeMap::new();
            for (node, count) in allowed.iter().filter(|(n, _)| needs.fits_in(&n.capacity)) {
                let nodes = able.entry(node.pool.as_str()).or_default();
                *nodes = nodes.saturating_add(*count);
            }
            let nodes_able = able.values().copied().max().unwrap_or(0);
            if nodes_able > 0 && (nodes_able < request.workers() || request.gpu_share_milli > 0) {
                let nodes_able = if request.gpu_share_milli > 0 { 0 } else { nodes_able };
                return Err(WaitReason::GangInfeasible { workers: request.workers(), nodes_able });
            }
        }
        if allowed.iter().any(|(n, _)| needs.fits_in(&n.capacity)) {
            return Ok(());
        }
        let largest = allowed.iter().fold(Resources::ZERO, |acc, (n, _)| acc.max(&n.capacity));
        match first_short(&needs, &largest) {
            Some((resource, needed, largest)) => {
                Err(WaitReason::Infeasible { resource, needed, largest, pool: request.pool.clone() })
            }
            None => Ok(()),
        }
    }

    /// The queued jobs counted by team and by the pools they could ever run in (see `pools_able`), with the oldest
    /// submission of each group: what a summary of the queue needs, without a request per job. Jobs of one project,
    /// constraint and footprint share their pools, which are worked out once for all of them.
    pub fn queued_groups(&self) -> Vec<QueuedGroup> {
        let mut groups: HashMap<(u32, ConstraintId, Resources), (JobId, u64, i64)> = HashMap::new();
        for (&id, p) in &self.pending {
            let key = (p.class.project, p.class.constraint, p.footprint());
            let (_, jobs, oldest) = groups.entry(key).or_insert((id, 0, p.submitted_at_us));
            *jobs += 1;
            *oldest = (*oldest).min(p.submitted_at_us);
        }
        let mut out: Vec<QueuedGroup> = groups
            .into_values()
            .filter_map(|(id, jobs, oldest_submitted_at_us)| {
                let request = self.queued_request(id)?;
                let pools = self.pools_able(&request);
                Some(QueuedGroup { team: request.team, pools, jobs, oldest_submitted_at_us })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.team, &a.pools, a.oldest_submitted_at_us).cmp(&(&b.team, &b.pools, b.oldest_submitted_at_us))
        });
        out
    }

    /// The pools a job could ever run in: those with a node (or an elastic pool's node template) that allows it and is
    /// big enough for it, whatever is free now. A queued job waits in each of them.
    pub fn pools_able(&self, request: &JobRequest) -> BTreeSet<String> {
        let needs = request.footprint();
        let templates = self.elastic_templates();
        let known = self.nodes.values().map(|n| &n.info);
        known
            .chain(templates.iter().map(|(template, _)| template))
            .filter(|n| self.allows(request, n) && needs.fits_in(&n.capacity))
            .map(|n| n.pool.clone())
            .collect()
    }

    /// For each elastic pool with room for more nodes, a node made from its template and how many more it may have.
    fn elastic_templates(&self) -> Vec<(NodeInfo, u32)> {
        let mut templates: Vec<(NodeInfo, u32)> = self
            .pools
            .values()
            .filter_map(|p| p.elastic.as_ref().map(|e| (e.node.node("", &p.name), e.max_nodes)))
            .collect();
        if templates.is_empty() {
            return templates;
        }
        for node in self.nodes.values() {
            if let Some((_, room)) = templates.iter_mut().find(|(t, _)| t.pool == node.info.pool) {
                *room = room.saturating_sub(1);
            }
        }
        templates.retain(|(_, room)| *room > 0);
        templates
    }

    fn no_matching_node(&self, request: &JobRequest, templates: &[(NodeInfo, u32)]) -> WaitReason {
        let known: Vec<&NodeInfo> =
            self.nodes.values().map(|n| &n.info).chain(templates.iter().map(|(t, _)| t)).collect();
        let mut models: Vec<String> = known.iter().filter_map(|n| n.gpu_model.clone()).collect();
        models.sort();
        models.dedup();
        let pools_known: BTreeSet<String> =
            known.iter().map(|n| n.pool.clone()).chain(self.pools.keys().cloned()).collect();
        let selector: Vec<String> = request.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // The image or the gang is named only where some pool's backend cannot run it.
        let refused =
            |can: fn(&PoolInfo) -> bool| known.iter().any(|n| self.pools.get(&n.pool).is_some_and(|p| !can(p)));
        WaitReason::NoMatchingNode {
            gpu_models: request.gpu_models.clone(),
            selector,
            models_known: models,
            pool: request.pool.clone(),
            pools_known: pools_known.into_iter().collect(),
            image: request.image && refused(|p| p.images),
            gang: request.is_gang() && refused(|p| p.gangs),
        }
    }

    fn shortfall(&self, needs: &Resources, ready: &[&Node]) -> WaitReason {
        // Name the dimension most nodes are short of, GPUs first since they are the scarce resource.
        let mut shortfalls: Vec<NodeShortfall> = ready
            .iter()
            .filter_map(|node| {
                let (resource, _, free) = first_short(needs, &node.free())?;
                let held_by: Vec<JobId> = match resource {
                    ResourceKind::Gpus => {
                        let sharing = node.shared.values().flat_map(|(_, users)| users.iter().copied());
                        node.gpu_owner.values().copied().chain(sharing).collect::<BTreeSet<_>>().into_iter().collect()
                    }
                    ResourceKind::Cpus | ResourceKind::Memory => node.jobs.iter().copied().collect(),
                };
                let held = match resource {
                    ResourceKind::Gpus => (node.info.gpu_indices.len() as u32 - node.free().gpus) as u64,
                    ResourceKind::Cpus => node.allocated.cpu_millis,
                    ResourceKind::Memory => node.allocated.memory_bytes,
                };
                Some(NodeShortfall { node: node.info.name.clone(), resource, free, held, held_by })
            })
            .collect();
        // Nodes whose capacity could never hold the job matter less than those that are merely busy.
        shortfalls.sort_by_key(|s| (!needs.fits_in(&self.nodes[&s.node].info.capacity), Reverse(s.free)));
        let resource = shortfalls.first().map(|s| s.resource).unwrap_or(ResourceKind::Cpus);
        shortfalls.retain(|s| s.resource == resource);
        let more_nodes = shortfalls.len().saturating_sub(SHORTFALL_NODES_MAX) as u32;
        shortfalls.truncate(SHORTFALL_NODES_MAX);
        let needed = amount(needs, resource);
        WaitReason::Insufficient { resource, needed, shortfalls, more_nodes }
    }

    /// Checks, from the outside, what the cycle promises: no GPU held twice, no node over capacity, each job in
    /// exactly one place. The simulator calls this after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (job, running) in &self.running {
            let allocation = &running.allocation;
            if self.pending.contains_key(job) {
                return Err(format!("job {job} is both queued and running"));
            }
            let nodes: BTreeSet<&str> = allocation.workers().map(|(node, _)| node).collect();
            if nodes.len() != allocation.peers.len() + 1 || nodes.len() != running.request.workers() as usize {
                return Err(format!(
                    "job {job} asks for {} workers on distinct nodes but runs on {:?}",
                    running.request.workers(),
                    allocation.workers().map(|(node, _)| node).collect::<Vec<_>>()
                ));
            }
            for (name, gpus) in allocation.workers() {
                let node = &self.nodes[name];
                if allocation.gpu_share_milli == 0 && gpus.len() as u32 != allocation.resources.gpus {
                    return Err(format!(
                        "job {job} holds {} GPUs on node {name}, not {}",
                        gpus.len(),
                        allocation.resources.gpus
                    ));
                }
                if !node.jobs.contains(job) {
                    return Err(format!("node {name} does not record job {job}, which runs there"));
                }
                for gpu in gpus {
                    let recorded = if allocation.gpu_share_milli > 0 {
                        node.shared.get(gpu).is_some_and(|(_, users)| users.contains(job))
                    } else {
                        node.gpu_owner.get(gpu) == Some(job)
                    };
                    if !recorded {
                        return Err(format!("GPU {gpu} of node {name} is not recorded as job {job}'s"));
                    }
                }
            }
        }
        for node in self.nodes.values() {
            if !node.gpu_count_kept() {
                return Err(format!("node {} keeps a wrong count of its wholly free GPUs", node.info.name));
            }
            let sum = node
                .jobs
                .iter()
                .map(|j| self.running[j].allocation.resources)
                .fold(Resources::ZERO, |acc, r| acc.checked_add(&r).unwrap_or(acc));
            if sum != node.allocated {
                return Err(format!(
                    "node {} records {:?} allocated but its jobs hold {:?}",
                    node.info.name, node.allocated, sum
                ));
            }
            if node.gpu_owner.len() as u32 != node.allocated.gpus {
                return Err(format!(
                    "node {} has {} GPU owners for {} allocated GPUs",
                    node.info.name,
                    node.gpu_owner.len(),
                    node.allocated.gpus
                ));
            }
            for (gpu, (used, users)) in &node.shared {
                let sum: u32 = users.iter().map(|j| self.running[j].allocation.gpu_share_milli).sum();
                if *used != sum || *used > 1000 || node.gpu_owner.contains_key(gpu) {
                    return Err(format!(
                        "GPU {gpu} of node {} is shared inconsistently ({used} used, {sum} held)",
                        node.info.name
                    ));
                }
            }
        }
        if self.groups.len() != self.pending.len() || self.classes.jobs() != self.pending.len() {
            return Err(format!(
                "the queue's groups hold {} jobs and its classes {} for {} pending jobs",
                self.groups.len(),
                self.classes.jobs(),
                self.pending.len()
            ));
        }
        Ok(())
    }
}

fn amount(r: &Resources, kind: ResourceKind) -> u64 {
    match kind {
        ResourceKind::Gpus => r.gpus as u64,
        ResourceKind::Cpus => r.cpu_millis,
        ResourceKind::Memory => r.memory_bytes,
    }
}

/// Names a job's group: its team, or its project (`team/project`).
type GroupOf = fn(&JobRequest) -> String;

/// What preemptions under way move between groups (teams, or projects): see `Scheduler::moves_under_way`.
#[derive(Default)]
struct Moves {
    /// What the victims being stopped hold, by their group.
    leaving: HashMap<String, Resources>,
    /// What the jobs they are stopped for will hold, by their group.
    claimed: HashMap<String, Resources>,
    preemptors: BTreeSet<JobId>,
}

fn add_to(sums: &mut HashMap<String, Resources>, group: String, amount: &Resources) {
    let sum = sums.entry(group).or_default();
    *sum = sum.checked_add(amount).unwrap_or(*sum);
}

/// Whether a group (a team, or a project within a team) within its guaranteed quota may take back from another group
/// what that one borrows beyond its own quota. Preemptions already under way count as done: the jobs they make room
/// for belong to their groups already (the request itself aside), and their victims no longer to theirs.
fn reclaims(
    request: &JobRequest,
    (mine, my_quota): (&str, &Resources),
    (theirs, their_quota): (&str, &Resources),
    held: &HashMap<String, Resources>,
    moves: &Moves,
) -> bool {
    if mine == theirs {
        return false;
    }
    let sum = |sums: &HashMap<String, Resources>, group: &str| sums.get(group).copied().unwrap_or_default();
    let mut claimed = sum(held, mine).checked_add(&sum(&moves.claimed, mine)).unwrap_or_else(|| sum(held, mine));
    if moves.preemptors.contains(&request.id) {
        claimed = claimed.saturating_sub(&request.total());
    }
    let leaving = sum(held, theirs).saturating_sub(&sum(&moves.leaving, theirs));
    let within_quota = claimed.checked_add(&request.total()).is_some_and(|c| c.fits_in(my_quota));
    within_quota && !leaving.fits_in(their_quota)
}

/// The first dimension, GPUs then CPUs then memory, in which `needs` exceeds `available`: (kind, needed, available).
fn first_short(needs: &Resources, available: &Resources) -> Option<(ResourceKind, u64, u64)> {
    [ResourceKind::Gpus, ResourceKind::Cpus, ResourceKind::Memory]
        .into_iter()
        .find(|&k| amount(needs, k) > amount(available, k))
        .map(|k| (k, amount(needs, k), amount(available, k)))
}
