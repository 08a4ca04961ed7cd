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

use ferry_core::{Allocation, Decision, ElasticPool, Event, JobId, JobRequest, NodeInfo, Scheduler};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::checker::{Ceilings, Checker, ElasticLimits, Released, StepChanges};
use crate::cluster::{Cluster, Pool};
use crate::error::Violation;
use crate::ledger::Ledger;
use crate::predictions::{Learner, Predictions};
use crate::starvation::IdleWaits;
use crate::workload::Workload;

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
    fn apply(&mut self, event: Event, now_ms: u64, what: impl FnOnce() -> String) -> Result<(), Violation> {
        match catch_unwind(AssertUnwindSafe(|| self.core.apply(event))) {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(self.violation(now_ms, format!("the core refused {}: {e}", what()))),
            Err(panic) => {
                Err(self.violation(now_ms, format!("the core panicked on {}: {}", what(), panic_text(&panic))))
            }
        }
    }

    /// Queues a job, asking for the steps at which it may burst.
    pub fn submit(&mut self, request: JobRequest, now_ms: u64) -> Result<(), Violation> {
        let id = request.id;
        self.wakes.extend(self.burst_after_ms.iter().map(|after| now_ms + after));
        self.changes.submitted.push(id);
        self.ledger.submit(request.clone());
        self.apply(Event::JobSubmitted(request), now_ms, || format!("the submission of job {id}"))
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
        self.apply(Event::JobEnded { id: job }, now_ms, || format!("the end of job {job}"))
    }

    /// A node of an elastic pool joins, idle.
    pub fn node_up(&mut self, info: NodeInfo, now_ms: u64) -> Result<(), Violation> {
        let name = info.name.clone();
        self.ledger.add_node(info.clone(), now_ms);
        self.wake_when_idle(&name, now_ms);
        self.changes.nodes.insert(name.clone());
        self.apply(Event::NodeUp(info), now_ms, || format!("node {name} joining"))
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
        self.apply(Event::Tick { now_us }, now_ms, || format!("a tick at {now_us}us"))?;
        let decisions = match catch_unwind(AssertUnwindSafe(|| self.core.schedule())) {
            Ok(decisions) => decisions,
            Err(panic) => {
                return Err(self.violation(now_ms, format!("the core panicked in a cycle: {}", panic_text(&panic))))
            }
        };
        let mut actions = Vec::new();
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
        self.apply(Event::NodeRemoved { node: node.to_string() }, now_ms, || format!("the removal of node {node}"))
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

/// What happens at a point of virtual time. Completions and stops name the attempt they belong to, so that those
/// of an attempt cut short by preemption are ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    /// The job at this position of the submission order arrives.
    Arrival(usize),
    /// A running job finishes its work.
    Completion { job: JobId, attempt: u32 },
    /// A preempted job's grace period is over: it stops and goes back to the queue.
    Stop { job: JobId, attempt: u32 },
    /// The elastic node at this position of the replay's list has started and joins.
    NodeUp(usize),
    /// Nothing but a step: a waiting job may have waited long enough to burst, or a node of an elastic pool may have
    /// idled long enough to be released.
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

/// One run of a job on a node: from its start to its end, which is a completion unless it was preempted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    pub pool: String,
    pub preempted: bool,
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
}

impl JobOutcome {
    /// The GPU-seconds the job's attempts have had so far (the least-attained ordering files it by them).
    pub fn attained_gpu_s(&self) -> u64 {
        let ran_ms: u64 = self.attempts.iter().filter_map(|a| a.end_ms.map(|end| end - a.start_ms)).sum();
        ran_ms.saturating_mul(self.gpu_milli) / 1_000_000
    }

    /// The end of the job's work: the end of its last attempt, if that one completed.
    pub fn completed_ms(&self) -> Option<u64> {
        self.attempts.last().filter(|a| !a.preempted).and_then(|a| a.end_ms)
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
                let node =
                    ElasticNode { name, pool: pool.to_string(), requested_ms: now_ms, up_ms: None, released_ms: None };
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
/// their places in the queue. A preempted job stops after the grace period, loses its work (it has no checkpoint to
/// resume from) and is queued again.
pub fn replay(cluster: &Cluster, workload: &Workload, config: &ReplayConfig) -> Result<ReplayRun, Violation> {
    let mut rng = rng(config.seed);
    let order = submission_order(workload, &mut rng);
    let mut sim = Sim::new(cluster, config.seed, &config.check)?;
    let mut learner = Learner::new(config.predictions);
    let mut timeline = Timeline::default();
    let mut outcomes: Vec<JobOutcome> = order
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
            }
        })
        .collect();
    for (k, &i) in order.iter().enumerate() {
        timeline.push(workload.jobs[i].arrival_ms, SimEvent::Arrival(k));
    }
    let mut elastic = ElasticNodes::default();
    let mut gpu_steps: Vec<GpuStep> = Vec::new();
    let mut now_ms = 0;
    while let Some((time_ms, batch)) = timeline.pop_batch() {
        now_ms = time_ms;
        for event in batch {
            match event {
                SimEvent::Arrival(k) => {
                    let (request, predicted) = learner.request(&workload.jobs[order[k]], k as JobId + 1, now_ms, 0);
                    outcomes[k].predicted_s = predicted;
                    sim.submit(request, now_ms)?
                }
                SimEvent::Completion { job, attempt } => {
                    let outcome = &mut outcomes[job as usize - 1];
                    if outcome.attempts.len() as u32 == attempt + 1
                        && outcome.attempts[attempt as usize].end_ms.is_none()
                    {
                        outcome.attempts[attempt as usize].end_ms = Some(now_ms);
                        outcome.stopping = false;
                        let ran_ms = now_ms - outcome.attempts[attempt as usize].start_ms;
                        learner.completed(&workload.jobs[outcome.job], ran_ms);
                        sim.end(job, now_ms)?;
                    }
                }
                SimEvent::Stop { job, attempt } => {
                    let outcome = &mut outcomes[job as usize - 1];
                    if outcome.attempts.len() as u32 == attempt + 1
                        && outcome.attempts[attempt as usize].end_ms.is_none()
                    {
                        let last = &mut outcome.attempts[attempt as usize];
                        (last.end_ms, last.preempted) = (Some(now_ms), true);
                        outcome.stopping = false;
                        sim.end(job, now_ms)?;
                        let attained = outcome.attained_gpu_s();
                        sim.submit(learner.request(&workload.jobs[outcome.job], job, now_ms, attained).0, now_ms)?;
                    }
                }
                SimEvent::NodeUp(i) => {
                    let node = &mut elastic.nodes[i];
                    node.up_ms = Some(now_ms);
                    let Some(info) = sim.elastic(&node.pool).map(|e| e.node.node(&node.name, &node.pool)) else {
                        let message =
                            format!("node {} was started for pool {}, which is not elastic", node.name, node.pool);
                        return Err(sim.violation(now_ms, message));
                    };
                    sim.node_up(info, now_ms)?;
                }
                SimEvent::Wake => {}
            }
        }
        for action in sim.schedule(now_ms)? {
            match action {
                Action::Start(id, allocation) => {
                    let outcome = &mut outcomes[id as usize - 1];
                    let pool = sim.ledger.nodes.get(&allocation.node).map(|b| b.info.pool.clone()).unwrap_or_default();
                    let attempt = outcome.attempts.len() as u32;
                    outcome.attempts.push(Attempt { start_ms: now_ms, end_ms: None, pool, preempted: false });
                    let end_ms = now_ms + workload.jobs[outcome.job].duration_ms;
                    timeline.push(end_ms, SimEvent::Completion { job: id, attempt });
                }
                Action::Preempt(id) => {
                    let outcome = &mut outcomes[id as usize - 1];
                    if !outcome.stopping {
                        outcome.stopping = true;
                        let attempt = outcome.attempts.len() as u32 - 1;
                        timeline.push(now_ms + config.preempt_grace_ms, SimEvent::Stop { job: id, attempt });
                    }
                }
                Action::Provision { pool, nodes } => {
                    let startup_ms = sim.elastic(&pool).map_or(0, |e| e.startup_s * 1000);
                    for i in elastic.request(&pool, nodes, now_ms) {
                        timeline.push(now_ms + startup_ms, SimEvent::NodeUp(i));
                    }
                }
                Action::Released(node) => elastic.released(&node, now_ms),
            }
        }
        for at_ms in sim.take_wakes() {
            timeline.push(at_ms, SimEvent::Wake);
        }
        sim.finish_step(now_ms)?;
        let step = GpuStep { t_ms: now_ms, allocated_milli: sim.ledger.gpu_milli, gpus: sim.ledger.gpus };
        if gpu_steps.last().is_none_or(|last| (last.allocated_milli, last.gpus) != (step.allocated_milli, step.gpus)) {
            gpu_steps.push(step);
        }
    }
    sim.finish(now_ms)?;
    let idle_waits = sim.checker.idle_waits(outcomes.len() as u64);
    let elastic_nodes = elastic.nodes;
    Ok(ReplayRun {
        seed: config.seed,
        steps: sim.steps(),
        outcomes,
        gpu_steps,
        elastic_nodes,
        end_ms: now_ms,
        idle_waits,
    })
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
