//! The discrete-event loop that drives the scheduler core in virtual time, and the replay mode built on it.
//!
//! Time is an integer count of virtual milliseconds. Events wait in a binary heap ordered by time and then by a
//! sequence number, so that events at the same time are handled in the order they were created; a step is one batch
//! of same-time events, a tick telling the core the time, and one scheduling cycle, and the checker runs after every
//! step. All randomness comes from one generator seeded with the run's seed: the same seed replays the same run.
//!
//! Elastic pools: when the core asks for nodes, each joins after the pool's start-up delay, named `<pool>-<n>`; when
//! it releases one, the node is removed at once. Steps also happen when nothing in the workload does: when a job has
//! waited a burst pool's `burst_after`, and when a node of an elastic pool has idled for the pool's `idle_release`,
//! so that the core can burst or release then, however quiet the workload is.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};

use ferry_core::lifecycle::{self, gang_step, Ending, GangStep, JobLife, Next, RunEnd, RunResult, WorkerEnded};
use ferry_core::{Allocation, Decision, ElasticPool, Event, JobId, JobRequest, NodeInfo, ProvisionFailure, Scheduler};
use rand::seq::SliceRandom;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checker::{Ceilings, Checker, ElasticLimits, Released, StepChanges};
use crate::cluster::{Cluster, Pool};
use crate::error::Violation;
use crate::failures::FAILURE_STREAM;

/// The random stream elastic nodes' start failures are drawn from.
const START_FAILURE_STREAM: u64 = 0x7374_6172;
/// How long after a request a provider that has no capacity says so.
const START_FAILURE_REPORTED_MS: u64 = 1000;
use crate::ledger::Ledger;
use crate::predictions::{Learner, Predictions};
use crate::runs::{JobRun, RunPlan};
use crate::starvation::IdleWaits;
use crate::workload::{Lifecycle, Workload};

/// The random number generator of a run: ChaCha8, documented as reproducible across platforms and versions.
pub type SimRng = ChaCha8Rng;

pub fn rng(seed: u64) -> SimRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// A fault the simulator plants in its own ledger, to show that the checker catches it and reports the seed and
/// step. For tests of the checker's reporting only.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// After the scheduling cycle of this step, book more CPU than the first node has.
    OverbookCpu { at_step: u64 },
}

/// How a run is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    pub starvation_bound_ms: u64,
    /// Every how many steps the core's own `check_invariants` runs; 1 is every step, 0 never (the outside checks
    /// run every step regardless).
    pub core_check_every: u64,
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

impl Default for CheckConfig {
    fn default() -> CheckConfig {
        CheckConfig { starvation_bound_ms: 3_600_000, core_check_every: 1, fault: None }
    }
}

/// What one scheduling cycle asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Start(JobId, Allocation),
    /// Stop this running job, after the grace period, so that another can start.
    Preempt(JobId),
    /// Start this many new nodes of this elastic pool.
    Provision {
        pool: String,
        nodes: u32,
    },
    /// This node of an elastic pool was given back; it is already gone from the core and the ledger.
    Released(String),
    /// The core stopped waiting for this many of the nodes asked of this elastic pool (the oldest): none joined within
    /// the pool's start-up timeout. They are already out of the ledger's starting count.
    Abandoned {
        pool: String,
        nodes: u32,
    },
}

/// The core, the ledger and the checker of one run, and where the run is.
pub struct Sim {
    pub core: Scheduler,
    pub ledger: Ledger,
    checker: Checker,
    seed: u64,
    /// Steps completed.
    step: u64,
    changes: StepChanges,
    fault: Option<Fault>,
    /// The elastic pools, by name.
    elastic: BTreeMap<String, ElasticPool>,
    /// The distinct `burst_after` of the burst pools, in milliseconds.
    burst_after_ms: Vec<u64>,
    /// When steps must happen however quiet the workload is: for waiting jobs to burst once they have waited
    /// `burst_after`, and for idle nodes of elastic pools to be released on time.
    wakes: Vec<u64>,
}

impl Sim {
    /// A core that knows the cluster's pools, teams, projects and nodes.
    pub fn new(cluster: &Cluster, seed: u64, check: &CheckConfig) -> Result<Sim, Violation> {
        let elastic: BTreeMap<String, ElasticPool> =
            cluster.pools.iter().filter_map(|p| Some((p.name.clone(), p.elastic.clone()?))).collect();
        let limits = elastic
            .iter()
            .map(|(pool, e)| {
                let limits = ElasticLimits { max_nodes: e.max_nodes, idle_release_ms: e.idle_release_s * 1000 };
                (pool.clone(), limits)
            })
            .collect();
        let mut sim = Sim {
            core: Scheduler::new(),
            ledger: Ledger::new(&cluster.nodes),
            checker: Checker::new(
                check.starvation_bound_ms,
                check.core_check_every,
                limits,
                Ceilings::new(&cluster.teams, &cluster.projects),
            ),
            seed,
            step: 0,
            changes: StepChanges::default(),
            fault: check.fault,
            elastic,
            burst_after_ms: burst_after_ms(cluster),
            wakes: Vec::new(),
        };
        let mut setup = vec![
            Event::PoolsConfigured(cluster.pools.iter().map(|p| p.info()).collect()),
            Event::PlacementConfigured(cluster.gpu_placement),
            Event::QueueOrderConfigured(cluster.queue_order.clone()),
        ];
        if let Some(depth) = cluster.reserve_depth {
            setup.push(Event::ReserveDepthConfigured(depth));
        }
        if !cluster.teams.is_empty() || cluster.fair_share_half_life_s > 0 {
            let half_life = cluster.fair_share_half_life_s;
            setup.push(Event::TeamsConfigured { teams: cluster.teams.clone(), fair_share_half_life_s: half_life });
        }
        if !cluster.projects.is_empty() {
            setup.push(Event::ProjectsConfigured(cluster.projects.clone()));
        }
        setup.extend(cluster.nodes.iter().map(|n| Event::NodeUp(n.clone())));
        for event in setup {
            if let Err(e) = sim.core.apply(event) {
                return Err(sim.violation(0, format!("the core refused the cluster: {e}")));
            }
        }
        Ok(sim)
    }

    pub fn steps(&self) -> u64 {
        self.step
    }

    /// A violation found in the step now running.
    pub fn violation(&self, now_ms: u64, message: String) -> Violation {
        Violation { seed: self.seed, step: self.step + 1, time_ms: now_ms, message }
    }

    /// Applies an event to the core, turning a refusal or a panic into a violation that says `what` it was.
    fn apply(&mut self, event: Event, now_ms: u64, what: impl FnOnce() -> String) -> Result<Vec<Decision>, Violation> {
        match catch_unwind(AssertUnwindSafe(|| self.core.apply(event))) {
            Ok(Ok(decisions)) => Ok(decisions),
            Ok(Err(e)) => Err(self.violation(now_ms, format!("the core refused {}: {e}", what()))),
            Err(panic) => {
                Err(self.violation(now_ms, format!("the core panicked on {}: {}", what(), panic_text(&panic))))
            }
        }
    }

    /// Queues a job, asking for the steps at which it may burst, and for a retry, the step at which its backoff ends.
    pub fn submit(&mut self, request: JobRequest, now_ms: u64) -> Result<(), Violation> {
        let id = request.id;
        self.wakes.extend(self.burst_after_ms.iter().map(|after| now_ms + after));
        let not_before_ms = u64::try_from(request.not_before_us).unwrap_or(0).div_ceil(1000);
        if not_before_ms > now_ms {
            self.wakes.push(not_before_ms);
        }
        self.changes.submitted.push(id);
        self.ledger.submit(request.clone());
        self.apply(Event::JobSubmitted(request), now_ms, || format!("the submission of job {id}")).map(drop)
    }

    /// Ends a job, waiting or running, in the core and the ledger.
    pub fn end(&mut self, job: JobId, now_ms: u64) -> Result<(), Violation> {
        let nodes: Vec<String> = match self.ledger.running.get(&job) {
            Some((_, allocation)) => allocation.workers().map(|(node, _)| node.to_string()).collect(),
            None => Vec::new(),
        };
        if !nodes.is_empty() {
            self.changes.ended.push(job);
        }
        if self.ledger.waiting.contains_key(&job) {
            self.changes.withdrawn.push(job);
        }
        self.ledger.end(job, now_ms);
        for node in nodes {
            self.wake_when_idle(&node, now_ms);
            self.changes.nodes.insert(node);
        }
        self.apply(Event::JobEnded { id: job }, now_ms, || format!("the end of job {job}")).map(drop)
    }

    /// A node fails: the core is told, every job on it is lost (a gang with all its workers, wherever they run), and
    /// the node leaves the ledger until it is back. Returns the jobs lost, which the core has already let go of.
    pub fn node_down(&mut self, node: &str, now_ms: u64) -> Result<Vec<JobId>, Violation> {
        let Some(held) = self.ledger.nodes.get(node).map(|book| book.jobs.clone()) else {
            return Err(self.violation(now_ms, format!("node {node} failed, but it is not up")));
        };
        let decisions =
            self.apply(Event::NodeDown { node: node.to_string() }, now_ms, || format!("node {node} failing"))?;
        let mut lost = Vec::with_capacity(decisions.len());
        for decision in decisions {
            match decision {
                Decision::Lost { job, node: on } if on == node => lost.push(job),
                other => {
                    let message = format!("the core answered node {node} failing with {other:?}");
                    return Err(self.violation(now_ms, message));
                }
            }
        }
        if lost.iter().copied().collect::<std::collections::BTreeSet<_>>() != held {
            let message = format!("the core lost jobs {lost:?} with node {node}, which held jobs {held:?}");
            return Err(self.violation(now_ms, message));
        }
        for &job in &lost {
            if let Some((_, allocation)) = self.ledger.running.get(&job) {
                self.changes.nodes.extend(allocation.workers().map(|(n, _)| n.to_string()));
            }
            self.changes.ended.push(job);
            self.ledger.end(job, now_ms);
        }
        self.ledger.remove_node(node).map_err(|m| self.violation(now_ms, format!("node {node} failed, but {m}")))?;
        self.changes.nodes.remove(node);
        Ok(lost)
    }

    /// A node that failed is back, idle.
    pub fn node_back(&mut self, info: NodeInfo, now_ms: u64) -> Result<(), Violation> {
        let name = info.name.clone();
        self.ledger.add_node(info.clone(), now_ms);
        self.changes.nodes.insert(name.clone());
        self.apply(Event::NodeUp(info), now_ms, || format!("node {name} coming back")).map(drop)
    }

    /// A node asked of an elastic pool will not come: its provider had no capacity.
    pub fn start_failed(&mut self, pool: &str, now_ms: u64) -> Result<(), Violation> {
        self.ledger.not_starting(pool, 1);
        let event = Event::ProvisionFailed {
            pool: pool.to_string(),
            nodes: 1,
            failure: ProvisionFailure::NoCapacity,
            detail: "the simulated provider had no capacity".to_string(),
        };
        self.apply(event, now_ms, || format!("a node of pool {pool} failing to start")).map(drop)
    }

    /// A node of an elastic pool joins, idle.
    pub fn node_up(&mut self, info: NodeInfo, now_ms: u64) -> Result<(), Violation> {
        let name = info.name.clone();
        self.ledger.add_node(info.clone(), now_ms);
        self.wake_when_idle(&name, now_ms);
        self.changes.nodes.insert(name.clone());
        self.apply(Event::NodeUp(info), now_ms, || format!("node {name} joining")).map(drop)
    }

    /// If `node` belongs to an elastic pool and is idle, asks for a step when it will have idled long enough to be
    /// released.
    fn wake_when_idle(&mut self, node: &str, now_ms: u64) {
        let Some(book) = self.ledger.nodes.get(node).filter(|_| self.ledger.idle.contains_key(node)) else { return };
        if let Some(elastic) = self.elastic.get(&book.info.pool) {
            self.wakes.push(now_ms + elastic.idle_release_s * 1000);
        }
    }

    /// The times at which steps were asked for since the last call.
    pub fn take_wakes(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.wakes)
    }

    /// The elastic capacity of a pool, if it has any.
    pub fn elastic(&self, pool: &str) -> Option<&ElasticPool> {
        self.elastic.get(pool)
    }

    /// Tells the core the time, runs one scheduling cycle and records its starts in the ledger.
    pub fn schedule(&mut self, now_ms: u64) -> Result<Vec<Action>, Violation> {
        let now_us = (now_ms as i64).saturating_mul(1000);
        // The simulator's nodes do not heartbeat and it sets no node timeout: a tick can only give up on nodes asked
        // of an elastic pool with a start-up timeout.
        let mut actions = Vec::new();
        for decision in self.apply(Event::Tick { now_us }, now_ms, || format!("a tick at {now_us}us"))? {
            match decision {
                Decision::Abandon { pool, nodes, .. }
                    if self.elastic.get(&pool).is_some_and(|e| e.startup_timeout_s > 0) =>
                {
                    self.ledger.not_starting(&pool, nodes);
                    actions.push(Action::Abandoned { pool, nodes });
                }
                other => {
                    let message = format!("the core decided {other:?} at a tick, which nothing here allows");
                    return Err(self.violation(now_ms, message));
                }
            }
        }
        let decisions = match catch_unwind(AssertUnwindSafe(|| self.core.schedule())) {
            Ok(decisions) => decisions,
            Err(panic) => {
                return Err(self.violation(now_ms, format!("the core panicked in a cycle: {}", panic_text(&panic))))
            }
        };
        for decision in decisions {
            match decision {
                Decision::Start { job, allocation, .. } => {
                    self.changes.nodes.extend(allocation.workers().map(|(node, _)| node.to_string()));
                    self.changes.started.push(job);
                    self.ledger.start(job, allocation.clone()).map_err(|m| self.violation(now_ms, m))?;
                    actions.push(Action::Start(job, allocation));
                }
                Decision::Preempt { job, .. } => {
                    if !self.ledger.running.contains_key(&job) {
                        let message = format!("the core preempted job {job}, which is not running");
                        return Err(self.violation(now_ms, message));
                    }
                    actions.push(Action::Preempt(job));
                }
                Decision::Lost { job, node } => {
                    let message = format!("the core reported job {job} lost on node {node}, but no node went down");
                    return Err(self.violation(now_ms, message));
                }
                Decision::NodeNotReady { .. } | Decision::Abandon { .. } => {
                    let message = format!("the core decided {decision:?} in a cycle, which only ticks do");
                    return Err(self.violation(now_ms, message));
                }
                Decision::Provision { pool, nodes, .. } => {
                    if !self.elastic.contains_key(&pool) {
                        let message = format!("the core asked pool {pool}, which is not elastic, for {nodes} nodes");
                        return Err(self.violation(now_ms, message));
                    }
                    self.ledger.provision(&pool, nodes);
                    actions.push(Action::Provision { pool, nodes });
                }
                Decision::Release { node, .. } => {
                    self.release(&node, now_ms)?;
                    actions.push(Action::Released(node));
                }
            }
        }
        Ok(actions)
    }

    /// Removes a node the core released from the ledger and the core, noting how long it had idled.
    fn release(&mut self, node: &str, now_ms: u64) -> Result<(), Violation> {
        let idle_since_ms = self.ledger.idle.get(node).copied().unwrap_or(now_ms);
        let removed = self.ledger.remove_node(node);
        let book = removed.map_err(|m| self.violation(now_ms, format!("the core released node {node}, but {m}")))?;
        if !self.elastic.contains_key(&book.info.pool) {
            let message = format!("the core released node {node} of pool {}, which is not elastic", book.info.pool);
            return Err(self.violation(now_ms, message));
        }
        self.changes.released.push(Released { node: node.to_string(), pool: book.info.pool, idle_since_ms });
        let what = || format!("the removal of node {node}");
        self.apply(Event::NodeRemoved { node: node.to_string() }, now_ms, what).map(drop)
    }

    /// Closes the step: plants the fault if one is due, then runs every check.
    pub fn finish_step(&mut self, now_ms: u64) -> Result<(), Violation> {
        if self.fault == Some(Fault::OverbookCpu { at_step: self.step + 1 }) {
            if let Some(book) = self.ledger.nodes.values_mut().next() {
                book.cpu_millis += book.info.capacity.cpu_millis + 1;
                self.changes.nodes.insert(book.info.name.clone());
            }
        }
        let changes = std::mem::take(&mut self.changes);
        let step = self.step + 1;
        let checked = self.checker.check_step(&self.core, &self.ledger, &changes, step, now_ms);
        checked.map_err(|m| self.violation(now_ms, m))?;
        self.step = step;
        Ok(())
    }

    /// Checks the state once nothing is left to happen.
    pub fn finish(&self, now_ms: u64) -> Result<(), Violation> {
        self.checker.check_end(&self.ledger).map_err(|m| Violation { step: self.step, ..self.violation(now_ms, m) })
    }
}

/// The distinct waits after which burst pools take jobs, in milliseconds.
fn burst_after_ms(cluster: &Cluster) -> Vec<u64> {
    let mut after: Vec<u64> =
        cluster.pools.iter().filter(|p| p.burst).filter_map(|p| p.burst_after_s).map(|s| s * 1000).collect();
    after.sort_unstable();
    after.dedup();
    after
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// What happens at a point of virtual time. Completions, failures and stops name the attempt they belong to, so that
/// those of an attempt cut short (by preemption, a failure or its node's) are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    /// The job at this position of the submission order arrives.
    Arrival(usize),
    /// A running job finishes its work.
    Completion { job: JobId, attempt: u32 },
    /// A running job's run fails, as the workload planted.
    Failure { job: JobId, attempt: u32 },
    /// A preempted job's grace period is over: it stops and goes back to the queue.
    Stop { job: JobId, attempt: u32 },
    /// The elastic node at this position of the replay's list has started and joins.
    NodeUp(usize),
    /// The elastic node at this position of the replay's list failed to start: the provider said so.
    StartFailed(usize),
    /// The declared node at this position of the cluster's list fails, for `back_after_ms`; `drawn` for a failure
    /// drawn at the cluster's rate, which draws the node's next one once it is back.
    NodeFail { node: usize, back_after_ms: u64, drawn: bool },
    /// The declared node at this position is back from its failure.
    NodeBack { node: usize, drawn: bool },
    /// Nothing but a step: a waiting job may have waited long enough to burst, a retry's backoff may be over, or a
    /// node of an elastic pool may have idled long enough to be released.
    Wake,
}

/// The event queue: earliest time first, then creation order.
#[derive(Default)]
struct Timeline {
    heap: BinaryHeap<Reverse<(u64, u64, SimEvent)>>,
    seq: u64,
}

impl Timeline {
    fn push(&mut self, time_ms: u64, event: SimEvent) {
        self.heap.push(Reverse((time_ms, self.seq, event)));
        self.seq += 1;
    }

    /// Every event of the earliest time, in creation order.
    fn pop_batch(&mut self) -> Option<(u64, Vec<SimEvent>)> {
        let Reverse((time_ms, _, first)) = self.heap.pop()?;
        let mut batch = vec![first];
        while let Some(Reverse((t, _, _))) = self.heap.peek() {
            if *t != time_ms {
                break;
            }
            let Reverse((_, _, event)) = self.heap.pop().expect("peeked");
            batch.push(event);
        }
        Some((time_ms, batch))
    }
}

/// How a run of a job on a node ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Still running (at the end of a replay, never: every run ends).
    Running,
    /// It finished the job's work.
    Completed,
    /// It failed, as the workload planted.
    Failed,
    /// It was stopped to make room for another job.
    Preempted,
    /// Its node (or a gang worker's) failed under it.
    NodeLost,
}

/// One run of a job on a node: from its start to its end, and the job's work it began from and kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    pub pool: String,
    pub end: AttemptEnd,
    /// The work saved by checkpoints that it resumed from (0 for a fresh start).
    pub resumed_ms: u64,
    /// The work saved by checkpoints when it ended; for a completed run, all of it.
    pub kept_ms: u64,
}

impl Attempt {
    /// How long it ran.
    pub fn ran_ms(&self, end_of_run_ms: u64) -> u64 {
        self.end_ms.unwrap_or(end_of_run_ms).saturating_sub(self.start_ms)
    }

    /// The work it did that a later run did over (or would, for the last run): what it ran past its last checkpoint.
    pub fn lost_ms(&self, end_of_run_ms: u64) -> u64 {
        match self.end {
            AttemptEnd::Completed | AttemptEnd::Running => 0,
            _ => (self.resumed_ms + self.ran_ms(end_of_run_ms)).saturating_sub(self.kept_ms),
        }
    }

    /// The work it did that its checkpoints saved from being done over, for a run cut short.
    pub fn recovered_ms(&self) -> u64 {
        match self.end {
            AttemptEnd::Completed | AttemptEnd::Running => 0,
            _ => self.kept_ms.saturating_sub(self.resumed_ms),
        }
    }
}

/// How one job of a replay went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOutcome {
    /// The index of the job in the workload.
    pub job: usize,
    pub arrival_ms: u64,
    /// GPUs held while running, in thousandths, every worker of a gang counted.
    pub gpu_milli: u64,
    /// CPUs held while running, in thousandths, every worker of a gang counted.
    pub cpu_millis: u64,
    pub team: String,
    pub attempts: Vec<Attempt>,
    /// Whether the job has been told to stop and its grace period is running.
    pub stopping: bool,
    /// The runtime the job was expected to take when it arrived, in seconds (see `predictions`).
    pub predicted_s: Option<u64>,
    /// How the job ended, as the lifecycle rules decided; `None` while it has not.
    pub ending: Option<Ending>,
    /// Requeues that used one of its retries (after a failure, or the loss of its node).
    pub retries: u32,
    /// Requeues after a preemption, which use no retry.
    pub preemptions: u32,
}

impl JobOutcome {
    /// The GPU-seconds the job's attempts have had so far (the least-attained ordering files it by them).
    pub fn attained_gpu_s(&self) -> u64 {
        let ran_ms: u64 = self.attempts.iter().filter_map(|a| a.end_ms.map(|end| end - a.start_ms)).sum();
        ran_ms.saturating_mul(self.gpu_milli) / 1_000_000
    }

    /// The end of the job's work: the end of its last attempt, if that one completed.
    pub fn completed_ms(&self) -> Option<u64> {
        self.attempts.last().filter(|a| a.end == AttemptEnd::Completed).and_then(|a| a.end_ms)
    }

    /// Runs that failed as the workload planted.
    pub fn failures(&self) -> u64 {
        self.attempts.iter().filter(|a| a.end == AttemptEnd::Failed).count() as u64
    }
}

/// Everything a replay produced, before it is summarised into a report.
#[derive(Clone, Debug)]
pub struct ReplayRun {
    pub seed: u64,
    pub steps: u64,
    /// In submission order: the job with id `i + 1` is `outcomes[i]`.
    pub outcomes: Vec<JobOutcome>,
    /// GPUs allocated, and the GPUs there are, after each step that changed either.
    pub gpu_steps: Vec<GpuStep>,
    /// The nodes elastic pools started, in the order they were asked for.
    pub elastic_nodes: Vec<ElasticNode>,
    /// The time of the last step.
    pub end_ms: u64,
    /// How long jobs waited while an idle node could hold them (the checker's figure).
    pub idle_waits: IdleWaits,
    /// How many times declared nodes failed.
    pub node_failures: u64,
}

/// GPUs allocated and GPUs there are, from a point of virtual time on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuStep {
    pub t_ms: u64,
    /// Whole GPUs count 1000 each, shares their thousandths.
    pub allocated_milli: u64,
    /// The GPUs of the nodes there are, elastic nodes up included.
    pub gpus: u64,
}

/// One node an elastic pool started: when it was asked for, when it joined and when it was given back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElasticNode {
    pub name: String,
    pub pool: String,
    pub requested_ms: u64,
    pub up_ms: Option<u64>,
    pub released_ms: Option<u64>,
    /// When its provider said it could not start it (nothing is billed).
    pub failed_ms: Option<u64>,
    /// When the core gave up waiting for it (start-up timeout); billed until then, as its machine is terminated then.
    pub abandoned_ms: Option<u64>,
}

/// The nodes elastic pools started in one replay, and how to find them by name.
#[derive(Default)]
struct ElasticNodes {
    nodes: Vec<ElasticNode>,
    by_name: HashMap<String, usize>,
    /// How many nodes each pool has started so far, which numbers the next one.
    started: HashMap<String, u64>,
}

impl ElasticNodes {
    /// Names `count` new nodes of `pool`, asked for at `now_ms`; returns their positions in the list.
    fn request(&mut self, pool: &str, count: u32, now_ms: u64) -> Vec<usize> {
        (0..count)
            .map(|_| {
                let n = self.started.entry(pool.to_string()).or_default();
                *n += 1;
                let name = Pool::elastic_node_name(pool, *n);
                self.by_name.insert(name.clone(), self.nodes.len());
                let node = ElasticNode {
                    name,
                    pool: pool.to_string(),
                    requested_ms: now_ms,
                    up_ms: None,
                    released_ms: None,
                    failed_ms: None,
                    abandoned_ms: None,
                };
                self.nodes.push(node);
                self.nodes.len() - 1
            })
            .collect()
    }

    fn released(&mut self, name: &str, now_ms: u64) {
        if let Some(&i) = self.by_name.get(name) {
            self.nodes[i].released_ms = Some(now_ms);
        }
    }

    /// Marks the `count` oldest nodes of `pool` still on their way as abandoned at `now_ms`.
    fn abandoned(&mut self, pool: &str, count: u32, now_ms: u64) {
        let waiting = self
            .nodes
            .iter_mut()
            .filter(|n| n.pool == pool && n.up_ms.is_none() && n.failed_ms.is_none() && n.abandoned_ms.is_none());
        for node in waiting.take(count as usize) {
            node.abandoned_ms = Some(now_ms);
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReplayConfig {
    pub seed: u64,
    /// How long a preempted job keeps running (to checkpoint, say) before it stops.
    pub preempt_grace_ms: u64,
    pub check: CheckConfig,
    /// Where the jobs' expected runtimes come from.
    pub predictions: Predictions,
}

/// Replays a workload: each job arrives at its arrival time and, once started, runs for its duration. Jobs that
/// arrive at the same time are submitted in an order shuffled by the seed; that order also decides their ids, and so
/// their places in the queue.
///
/// What becomes of a run that ends is decided by the server's own rules (`ferry_core::lifecycle`): a preempted job
/// stops after the grace period and is queued again without using a retry; a run that fails as the workload planted
/// is retried after the backoff while its retries last, else the job has failed; a job whose node fails is queued
/// again at once while its retries last, else it is lost. A run cut short keeps the work up to its last checkpoint.
/// A gang's worker 0 is the one that fails; the other workers are stopped at once.
pub fn replay(cluster: &Cluster, workload: &Workload, config: &ReplayConfig) -> Result<ReplayRun, Violation> {
    let mut rng = rng(config.seed);
    let order = submission_order(workload, &mut rng);
    Replay::new(cluster, workload, config, order)?.run()
}

/// The signal a stopped run is killed by, as the shim sends it.
const SIGTERM: i32 = 15;

/// One replay under way: the simulation, its events, and where each job stands.
struct Replay<'a> {
    cluster: &'a Cluster,
    workload: &'a Workload,
    config: &'a ReplayConfig,
    order: Vec<usize>,
    sim: Sim,
    timeline: Timeline,
    /// By job id less one, as `ReplayRun::outcomes`.
    outcomes: Vec<JobOutcome>,
    runs: Vec<JobRun>,
    elastic: ElasticNodes,
    /// Jobs that have not ended; once none is left, nodes stop failing.
    unfinished: usize,
    /// Node failures drawn at the cluster's rate come from a stream of their own.
    failure_rng: SimRng,
    /// So do elastic nodes failing to start, drawn only for pools with a `start_failure_rate`.
    start_rng: SimRng,
    /// Whether each declared node is down.
    down: Vec<bool>,
    node_failures: u64,
    /// Learns runtimes from completed runs, or knows them (`ReplayConfig::predictions`).
    learner: Learner,
    now_ms: u64,
}

impl<'a> Replay<'a> {
    fn new(
        cluster: &'a Cluster,
        workload: &'a Workload,
        config: &'a ReplayConfig,
        order: Vec<usize>,
    ) -> Result<Replay<'a>, Violation> {
        let sim = Sim::new(cluster, config.seed, &config.check)?;
        let outcomes: Vec<JobOutcome> = order
            .iter()
            .map(|&i| {
                let job = &workload.jobs[i];
                JobOutcome {
                    job: i,
                    arrival_ms: job.arrival_ms,
                    gpu_milli: job.gpu_milli(),
                    cpu_millis: job.cpu_millis(),
                    team: job.team.clone(),
                    attempts: Vec::new(),
                    stopping: false,
                    predicted_s: None,
                    ending: None,
                    retries: 0,
                    preemptions: 0,
                }
            })
            .collect();
        let runs = order.iter().map(|&i| JobRun::new(&workload.jobs[i])).collect();
        let mut failure_rng = rng(config.seed);
        failure_rng.set_stream(FAILURE_STREAM);
        let mut start_rng = rng(config.seed);
        start_rng.set_stream(START_FAILURE_STREAM);
        let mut replay = Replay {
            cluster,
            workload,
            config,
            sim,
            timeline: Timeline::default(),
            unfinished: outcomes.len(),
            outcomes,
            runs,
            elastic: ElasticNodes::default(),
            failure_rng,
            start_rng,
            learner: Learner::new(config.predictions),
            down: vec![false; cluster.nodes.len()],
            node_failures: 0,
            now_ms: 0,
            order,
        };
        for (k, &i) in replay.order.iter().enumerate() {
            replay.timeline.push(workload.jobs[i].arrival_ms, SimEvent::Arrival(k));
        }
        if replay.unfinished > 0 {
            replay.plan_failures();
        }
        Ok(replay)
    }

    /// Puts the listed node failures, and each declared node's first drawn one, on the timeline.
    fn plan_failures(&mut self) {
        let failures = &self.cluster.failures;
        if failures.is_empty() {
            return;
        }
        let index: HashMap<&str, usize> =
            self.cluster.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
        for f in &failures.listed {
            // The cluster file was checked: every listed node is declared.
            let Some(&node) = index.get(f.node.as_str()) else { continue };
            let event = SimEvent::NodeFail { node, back_after_ms: f.recover_after_ms, drawn: false };
            self.timeline.push(f.at_ms, event);
        }
        if failures.rate_per_day > 0.0 {
            for node in 0..self.cluster.nodes.len() {
                self.draw_failure(node, 0);
            }
        }
    }

    /// Puts the next failure of `node` drawn at the cluster's rate on the timeline, from `now_ms` on.
    fn draw_failure(&mut self, node: usize, now_ms: u64) {
        let gap_ms = self.cluster.failures.draw_gap_ms(&mut self.failure_rng);
        let event = SimEvent::NodeFail { node, back_after_ms: self.cluster.failures.recovery_ms, drawn: true };
        self.timeline.push(now_ms.saturating_add(gap_ms), event);
    }

    fn run(mut self) -> Result<ReplayRun, Violation> {
        let mut gpu_steps: Vec<GpuStep> = Vec::new();
        while let Some((time_ms, batch)) = self.timeline.pop_batch() {
            self.now_ms = time_ms;
            for event in batch {
                self.handle(event)?;
            }
            for action in self.sim.schedule(self.now_ms)? {
                self.act(action)?;
            }
            for at_ms in self.sim.take_wakes() {
                self.timeline.push(at_ms, SimEvent::Wake);
            }
            if self.unfinished == 0 || self.stalled() {
                // Every job has ended (failures after that change nothing a replay reports), or nothing but failures
                // is left to happen (the checker then names the jobs that would wait forever).
                self.timeline.heap.retain(|Reverse((_, _, e))| !matches!(e, SimEvent::NodeFail { .. }));
            }
            let now_ms = self.now_ms;
            self.sim.finish_step(now_ms)?;
            let (allocated_milli, gpus) = (self.sim.ledger.gpu_milli, self.sim.ledger.gpus);
            if gpu_steps.last().is_none_or(|last| (last.allocated_milli, last.gpus) != (allocated_milli, gpus)) {
                gpu_steps.push(GpuStep { t_ms: now_ms, allocated_milli, gpus });
            }
        }
        self.sim.finish(self.now_ms)?;
        if let Some(i) = self.outcomes.iter().position(|o| o.ending.is_none()) {
            let message = format!("job {} never ended: no run of it completed, failed for good or was lost", i + 1);
            return Err(Violation { step: self.sim.steps(), ..self.sim.violation(self.now_ms, message) });
        }
        let idle_waits = self.sim.checker.idle_waits(self.outcomes.len() as u64);
        Ok(ReplayRun {
            seed: self.config.seed,
            steps: self.sim.steps(),
            outcomes: self.outcomes,
            gpu_steps,
            elastic_nodes: self.elastic.nodes,
            end_ms: self.now_ms,
            idle_waits,
            node_failures: self.node_failures,
        })
    }

    /// Whether nothing but node failures is left to happen: no job runs, every node is up, and no other event waits.
    /// Drawn failures would go on for ever then.
    fn stalled(&self) -> bool {
        self.sim.ledger.running.is_empty()
            && !self.down.contains(&true)
            && self.timeline.heap.iter().all(|Reverse((_, _, e))| matches!(e, SimEvent::NodeFail { .. }))
    }

    /// Whether `attempt` is the job's run under way, so that an event of an earlier run is ignored.
    fn current(&self, job: JobId, attempt: u32) -> bool {
        let attempts = &self.outcomes[job as usize - 1].attempts;
        attempts.len() as u32 == attempt + 1 && attempts[attempt as usize].end == AttemptEnd::Running
    }

    fn handle(&mut self, event: SimEvent) -> Result<(), Violation> {
        let now_ms = self.now_ms;
        match event {
            SimEvent::Arrival(k) => {
                let spec = &self.workload.jobs[self.order[k]];
                let (request, predicted) = self.learner.request(spec, k as JobId + 1, now_ms, 0);
                self.outcomes[k].predicted_s = predicted;
                self.sim.submit(request, now_ms)?;
            }
            SimEvent::Completion { job, attempt } if self.current(job, attempt) => {
                self.run_ended(job, AttemptEnd::Completed)?
            }
            SimEvent::Failure { job, attempt } if self.current(job, attempt) => {
                self.run_ended(job, AttemptEnd::Failed)?
            }
            SimEvent::Stop { job, attempt } if self.current(job, attempt) => {
                self.run_ended(job, AttemptEnd::Preempted)?
            }
            SimEvent::Completion { .. } | SimEvent::Failure { .. } | SimEvent::Stop { .. } => {}
            // A node the core gave up on was terminated: it never joins.
            SimEvent::NodeUp(i) if self.elastic.nodes[i].abandoned_ms.is_some() => {}
            SimEvent::StartFailed(i) => {
                self.elastic.nodes[i].failed_ms = Some(now_ms);
                let pool = self.elastic.nodes[i].pool.clone();
                self.sim.start_failed(&pool, now_ms)?;
            }
            SimEvent::NodeUp(i) => {
                let node = &mut self.elastic.nodes[i];
                node.up_ms = Some(now_ms);
                let Some(info) = self.sim.elastic(&node.pool).map(|e| e.node.node(&node.name, &node.pool)) else {
                    let message =
                        format!("node {} was started for pool {}, which is not elastic", node.name, node.pool);
                    return Err(self.sim.violation(now_ms, message));
                };
                self.sim.node_up(info, now_ms)?;
            }
            SimEvent::NodeFail { node, back_after_ms, drawn } => self.node_failed(node, back_after_ms, drawn)?,
            SimEvent::NodeBack { node, drawn } => {
                self.down[node] = false;
                self.sim.node_back(self.cluster.nodes[node].clone(), now_ms)?;
                if drawn && self.unfinished > 0 {
                    self.draw_failure(node, now_ms);
                }
            }
            SimEvent::Wake => {}
        }
        Ok(())
    }

    /// A declared node fails: every job on it is lost, each going where `after_loss` says; the node is back after
    /// `back_after_ms`. A node already down stays down as it was (a drawn failure then draws the next one).
    fn node_failed(&mut self, node: usize, back_after_ms: u64, drawn: bool) -> Result<(), Violation> {
        let now_ms = self.now_ms;
        if self.down[node] {
            if drawn {
                self.draw_failure(node, now_ms);
            }
            return Ok(());
        }
        self.down[node] = true;
        self.node_failures += 1;
        let name = self.cluster.nodes[node].name.clone();
        for job in self.sim.node_down(&name, now_ms)? {
            let kept_ms = self.cut(job, AttemptEnd::NodeLost);
            let why = format!("node {name} failed");
            let next = lifecycle::after_loss(&self.runs[job as usize - 1].life, &why, us(now_ms));
            self.follow(job, next, kept_ms)?;
        }
        self.timeline.push(now_ms + back_after_ms, SimEvent::NodeBack { node, drawn });
        Ok(())
    }

    /// Ends the job's run under way as `how`; returns the work saved, which the next run resumes from.
    fn cut(&mut self, job: JobId, how: AttemptEnd) -> u64 {
        let i = job as usize - 1;
        let spec = &self.workload.jobs[self.outcomes[i].job];
        let outcome = &mut self.outcomes[i];
        outcome.stopping = false;
        let Some(attempt) = outcome.attempts.last_mut() else { return 0 };
        let ran_ms = self.now_ms.saturating_sub(attempt.start_ms);
        let kept_ms = match how {
            AttemptEnd::Completed => spec.duration_ms,
            _ => self.runs[i].kept_ms(spec, ran_ms),
        };
        (attempt.end_ms, attempt.end, attempt.kept_ms) = (Some(self.now_ms), how, kept_ms);
        if how == AttemptEnd::Failed {
            self.runs[i].failed += 1;
        }
        kept_ms
    }

    /// A run ended on its node (completed, failed or stopped): the job's attempt ends as the lifecycle rules read
    /// it, and `after_runs` says what follows.
    fn run_ended(&mut self, job: JobId, how: AttemptEnd) -> Result<(), Violation> {
        let i = job as usize - 1;
        let start_ms = self.outcomes[i].attempts.last().map_or(self.now_ms, |a| a.start_ms);
        let kept_ms = self.cut(job, how);
        let spec = &self.workload.jobs[self.outcomes[i].job];
        if how == AttemptEnd::Completed {
            // The server learns from the last attempt of a job that succeeded; so does the replay.
            self.learner.completed(spec, self.now_ms - start_ms);
        }
        let exit_code = spec.exit_code.filter(|&c| c != 0).unwrap_or(Lifecycle::EXIT_CODE_DEFAULT);
        let life = &self.runs[i].life;
        let (ending, text, end) = attempt_outcome(life, how, spec.nodes, exit_code, us(self.now_ms));
        self.sim.end(job, self.now_ms)?;
        let ran_s = (self.now_ms - start_ms) as i64 / 1000;
        let next = lifecycle::after_runs(life, ending, &text, end, ran_s, us(self.now_ms));
        self.follow(job, next, kept_ms)
    }

    /// Applies what the lifecycle rules said follows a job's attempt: queued again (not before the backoff is over)
    /// to resume from `kept_ms`, or ended.
    fn follow(&mut self, job: JobId, next: Next, kept_ms: u64) -> Result<(), Violation> {
        let i = job as usize - 1;
        match next {
            Next::Requeue { attempt, preemptions, not_before_us, .. } => {
                let run = &mut self.runs[i];
                let outcome = &mut self.outcomes[i];
                if preemptions > run.life.preemptions {
                    outcome.preemptions += 1;
                } else {
                    outcome.retries += 1;
                }
                (run.life.attempt, run.life.preemptions, run.life.preempted) = (attempt, preemptions, None);
                run.saved_ms = kept_ms;
                let attained = outcome.attained_gpu_s();
                // Queued again, it keeps its first submission time, as on the server (its age, its fair share).
                let (mut request, _) =
                    self.learner.request(&self.workload.jobs[outcome.job], job, outcome.arrival_ms, attained);
                request.not_before_us = not_before_us;
                self.sim.submit(request, self.now_ms)
            }
            Next::Finish { ending, .. } => {
                self.outcomes[i].ending = Some(ending);
                self.unfinished -= 1;
                Ok(())
            }
        }
    }

    fn act(&mut self, action: Action) -> Result<(), Violation> {
        let now_ms = self.now_ms;
        match action {
            Action::Start(id, allocation) => {
                let i = id as usize - 1;
                let pool = self.sim.ledger.nodes.get(&allocation.node).map(|b| b.info.pool.clone()).unwrap_or_default();
                let run = &self.runs[i];
                let outcome = &mut self.outcomes[i];
                let attempt = outcome.attempts.len() as u32;
                if attempt != run.life.attempt {
                    let message =
                        format!("job {id} started its run {attempt}, but the lifecycle counts {}", run.life.attempt);
                    return Err(self.sim.violation(now_ms, message));
                }
                let saved = run.saved_ms;
                let end = AttemptEnd::Running;
                outcome.attempts.push(Attempt {
                    start_ms: now_ms,
                    end_ms: None,
                    pool,
                    end,
                    resumed_ms: saved,
                    kept_ms: saved,
                });
                match run.plan(&self.workload.jobs[outcome.job]) {
                    RunPlan::Complete { after_ms } => {
                        self.timeline.push(now_ms + after_ms, SimEvent::Completion { job: id, attempt })
                    }
                    RunPlan::Fail { after_ms } => {
                        self.timeline.push(now_ms + after_ms, SimEvent::Failure { job: id, attempt })
                    }
                }
            }
            Action::Preempt(id) => {
                let outcome = &mut self.outcomes[id as usize - 1];
                if !outcome.stopping {
                    outcome.stopping = true;
                    self.runs[id as usize - 1].life.preempted =
                        Some("preempted to make room for another job".to_string());
                    let attempt = outcome.attempts.len() as u32 - 1;
                    self.timeline.push(now_ms + self.config.preempt_grace_ms, SimEvent::Stop { job: id, attempt });
                }
            }
            Action::Provision { pool, nodes } => {
                let (startup_s, timeout_s) =
                    self.sim.elastic(&pool).map_or((0, 0), |e| (e.startup_s, e.startup_timeout_s));
                let (fails, hangs) =
                    self.cluster.pool(&pool).map_or((0.0, 0.0), |p| (p.start_failure_rate, p.join_failure_rate));
                for i in self.elastic.request(&pool, nodes, now_ms) {
                    if fails > 0.0 && self.start_rng.random_bool(fails) {
                        // A provider with no capacity says so when asked.
                        self.timeline.push(now_ms + START_FAILURE_REPORTED_MS, SimEvent::StartFailed(i));
                    } else if hangs > 0.0 && self.start_rng.random_bool(hangs) {
                        // It never joins: the core gives up on it at the start-up timeout (the wake below).
                    } else {
                        self.timeline.push(now_ms + startup_s * 1000, SimEvent::NodeUp(i));
                    }
                }
                if timeout_s > 0 {
                    // A step just past the deadline, at which the core gives up on what has not joined.
                    self.timeline.push(now_ms + timeout_s * 1000 + 1, SimEvent::Wake);
                }
            }
            Action::Released(node) => self.elastic.released(&node, now_ms),
            Action::Abandoned { pool, nodes } => self.elastic.abandoned(&pool, nodes, now_ms),
        }
        Ok(())
    }
}

/// Virtual milliseconds as the core's microseconds.
fn us(ms: u64) -> i64 {
    (ms as i64).saturating_mul(1000)
}

/// How an attempt that ended as `how` reads in the job's terms, by the server's rules: each worker's run through
/// `run_outcome`, and a gang's ends through `gang_step` (worker 0's run decides: it completed, failed with
/// `exit_code`, or was stopped; the others completed with it or were stopped). Returns the ending, the sentence that
/// says it, and how the deciding run ended.
fn attempt_outcome(
    life: &JobLife,
    how: AttemptEnd,
    workers: u32,
    exit_code: i32,
    now_us: i64,
) -> (Ending, String, RunEnd) {
    let exited = |code| RunResult { end: RunEnd::Exited, exit_code: Some(code), signal: None, message: None };
    let stopped = RunResult { end: RunEnd::Stopped, exit_code: None, signal: Some(SIGTERM), message: None };
    let (first, rest) = match how {
        AttemptEnd::Completed | AttemptEnd::Running => (exited(0), exited(0)),
        AttemptEnd::Failed => (exited(exit_code), stopped),
        AttemptEnd::Preempted | AttemptEnd::NodeLost => (stopped.clone(), stopped),
    };
    let (ending, text) = lifecycle::run_outcome(life, &first);
    if workers <= 1 {
        return (ending, text, first.end);
    }
    let stopping = life.preempted.is_some() || life.cancel_requested;
    let mut ends = vec![WorkerEnded { rank: 0, ending, message: text, finished_at_us: now_us }];
    let mut step = gang_step(workers as usize, &ends, ending != Ending::Succeeded, stopping);
    for rank in 1..workers {
        let (ending, message) = lifecycle::run_outcome(life, &rest);
        let first_failure = ending != Ending::Succeeded && ends.iter().all(|e| e.ending == Ending::Succeeded);
        ends.push(WorkerEnded { rank, ending, message, finished_at_us: now_us });
        step = gang_step(workers as usize, &ends, first_failure, stopping);
    }
    match step {
        GangStep::AllEnded { rank: 0, ending, text } => (ending, text, first.end),
        GangStep::AllEnded { ending, text, .. } => (ending, text, rest.end),
        // Every worker has ended by now, so the gang's step is decided; were it not, the first run's reading stands.
        GangStep::StopOthers | GangStep::Wait => (ends[0].ending, ends[0].message.clone(), first.end),
    }
}
/// The workload's indices by arrival time, jobs arriving together in an order shuffled by the seed.
fn submission_order(workload: &Workload, rng: &mut SimRng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..workload.jobs.len()).collect();
    order.sort_by_key(|&i| workload.jobs[i].arrival_ms);
    for group in order.chunk_by_mut(|&a, &b| workload.jobs[a].arrival_ms == workload.jobs[b].arrival_ms) {
        group.shuffle(rng);
    }
    order
}
