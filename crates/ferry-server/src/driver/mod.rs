//! The driver: the one task that owns the scheduler core and applies its decisions.
//!
//! Handlers send it commands; it takes them in batches, writes each batch and the decisions that follow from it in
//! one store transaction, answers the callers only after that commit, and then hands starts and stops to the
//! backends. It is the only writer of jobs and nodes, so the core and the store never disagree for long: if a
//! commit fails, the driver rebuilds the core from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::agent::{
    Assignment, RegisterNode, Registered, Reports, ReportsAck, RunEnd, RunRef, RunReport, RunStatus, SecretEnv,
};
use ferry_api::jobs::{JobState, JobWorker, QueueGroup, QueueSummary, WorkerEnd};
use ferry_api::ErrorCode;
use ferry_backends::agent::AgentBackend;
use ferry_backends::ComputeBackend;
use ferry_core::lifecycle::{self, CancelStep, Ending, GangStep, JobLife, Next, RequeueCause, RunResult, WorkerEnded};
use ferry_core::{
    Allocation, Decision, Event, JobRequest, NodeInfo, NodeStatus, Peer, Resources, Scheduler, WaitReason,
};
use ferry_store::{
    JobRecord, KeyedJob, LossCauseRecord, LossRecord, NewJob, NodeRecord, Requeue, RequeueCauseRecord, RequeueRecord,
    Store, StoreError, SubmissionKey, Tx,
};
use ferry_units::format_cpus;
use tokio::sync::{mpsc, oneshot};

use crate::config::FileConfig;
use crate::error::ApiError;
use crate::signals::Signals;

mod commands;
mod cycle;
#[cfg(test)]
mod lifecycle_tests;
mod outcomes;
#[cfg(test)]
mod queue_tests;
mod recovery;
mod reports;

/// Commands waiting for the driver; a full queue makes handlers wait, which is the back-pressure we want.
const COMMAND_QUEUE_MAX: usize = 16_384;
/// The most commands applied in one transaction.
const BATCH_MAX: usize = 1024;
/// With at least `PACED_QUEUE_MIN` jobs queued, a scheduling cycle that took at least `PACED_CYCLE_MIN` makes the next
/// one wait as long again, so that cycles take at most half of the driver's time: a stream of submissions into a deep
/// queue is accepted in batches at a steadier rate instead of each batch paying for a cycle over the whole queue. With
/// a shorter queue (or quick cycles) every batch runs a cycle, so a job on an idle cluster starts at once. A cycle put
/// off runs with a later batch or the liveness tick (every 500 ms).
const PACED_CYCLE_MIN: Duration = Duration::from_millis(5);
const PACED_QUEUE_MIN: usize = 1000;
/// How often the driver checks that nodes still report.
const LIVENESS_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How often agents must report; the node timeout should be several of these.
pub const HEARTBEAT_MS: u64 = 1000;
/// Seconds between SIGTERM and SIGKILL when a run is stopped.
pub const STOP_GRACE_S: u64 = 10;

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub enum Command {
    /// A new job; with an idempotency key, the job that key already made is answered instead (`Submitted::again`).
    Submit {
        job: Box<NewJob>,
        key: Option<SubmissionKey>,
        reply: Reply<Submitted>,
    },
    Cancel {
        id: u64,
        /// Who asked, for the job's timeline.
        by: String,
        reply: Reply<()>,
    },
    Register {
        node: RegisterNode,
        reply: Reply<Registered>,
    },
    Reports {
        reports: Reports,
        reply: Reply<ReportsAck>,
    },
    /// Why a queued job waits, and a fork of the scheduler to forecast its start with, away from the driver.
    Explain {
        id: u64,
        reply: oneshot::Sender<(Option<WaitReason>, Option<Box<Scheduler>>)>,
    },
    Allocations {
        reply: oneshot::Sender<BTreeMap<String, (Resources, Vec<u64>)>>,
    },
    /// Quotas were set through the API: the core runs with the configuration file's and the store's from now on.
    QuotasChanged {
        reply: Reply<()>,
    },
    /// An engine accepted a run: record its native id and form. The answer says whether the run is still wanted
    /// (a run cancelled or moved meanwhile is not, and the engine bridge cancels it).
    Native {
        node: String,
        run: RunRef,
        native: ferry_store::Native,
        reply: Reply<bool>,
    },
    /// The pools changed at run time (`ferry pool add`, `update`, `remove`): the core schedules over these from now on.
    PoolsChanged {
        pools: Vec<crate::config::PoolConfig>,
        reply: Reply<()>,
    },
    /// Each elastic pool's nodes by lifecycle state, as the core sees them.
    Elastic {
        reply: oneshot::Sender<BTreeMap<String, ferry_core::ElasticStatus>>,
    },
    /// What `/metrics` exports of the driver's own state.
    Metrics {
        reply: oneshot::Sender<DriverMetrics>,
    },
    /// The retention sweep removed the stored output of these finished jobs.
    OutputRemoved {
        ids: Vec<u64>,
        at_us: i64,
        reply: Reply<()>,
    },
    /// The fleet's news of elastic pools' machines: a failure to start nodes, a machine gone.
    Cloud(crate::fleet::News),
    /// The retention sweep deletes up to `limit` jobs that finished before `before_us`; the answer names them.
    ForgetJobs {
        before_us: i64,
        limit: u32,
        reply: Reply<Vec<u64>>,
    },
}

/// The driver's part of a `/metrics` scrape: unfinished jobs and scheduling cycle times, copied out at one moment.
#[derive(Clone, Debug, Default)]
pub struct DriverMetrics {
    /// One entry per run of every starting or running job: one for a single-node job, one per worker of a gang.
    pub runs: Vec<RunMetrics>,
    /// The queued jobs, by team and the pools they could run in (see `Scheduler::queued_groups`).
    pub queued: Vec<QueuedMetrics>,
    /// Scheduling cycles run since the server started, and the seconds they took in all.
    pub cycles: u64,
    pub cycle_seconds_sum: f64,
}

impl DriverMetrics {
    /// The queue counted once, for `/metrics` and `GET /api/v1/queue` alike: queued jobs overall, per team and per
    /// pool they fit (with the oldest submission of each), and the jobs placed.
    pub fn queue_summary(&self) -> QueueSummary {
        let mut teams: BTreeMap<&str, QueueGroup> = BTreeMap::new();
        let mut pools: BTreeMap<&str, QueueGroup> = BTreeMap::new();
        let add = |group: &mut QueueGroup, name: &str, q: &QueuedMetrics| {
            if group.queued == 0 {
                *group = QueueGroup { name: name.to_string(), queued: 0, oldest_queued_at_us: q.submitted_at_us };
            }
            group.queued += q.jobs;
            group.oldest_queued_at_us = group.oldest_queued_at_us.min(q.submitted_at_us);
        };
        for q in &self.queued {
            add(teams.entry(q.team.as_str()).or_default(), &q.team, q);
            for pool in &q.pools {
                add(pools.entry(pool.as_str()).or_default(), pool, q);
            }
        }
        let placed: std::collections::BTreeSet<u64> = self.runs.iter().map(|r| r.job_id).collect();
        QueueSummary {
            queued: self.queued.iter().map(|q| q.jobs).sum(),
            placed: placed.len() as u64,
            oldest_queued_at_us: self.queued.iter().map(|q| q.submitted_at_us).min(),
            teams: teams.into_values().collect(),
            pools: pools.into_values().collect(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunMetrics {
    pub job_id: u64,
    pub user: String,
    pub team: String,
    pub project: String,
    pub node: String,
    pub resources: Resources,
    /// A share of one GPU in thousandths; 0 for whole GPUs.
    pub gpu_share_milli: u32,
    /// The device indices of the GPUs the run holds on its node (the one it has a share of, for a share).
    pub gpu_ids: Vec<u32>,
}

/// Queued jobs of one team that could run in the same pools.
#[derive(Clone, Debug)]
pub struct QueuedMetrics {
    pub team: String,
    /// How many jobs, and the oldest one's submission.
    pub jobs: u64,
    pub submitted_at_us: i64,
    /// The pools the job could run in; it waits in each.
    pub pools: Vec<String>,
}

#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Command>,
}

impl DriverHandle {
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ApiError::unavailable())?;
        answer.await.map_err(|_| unfinished())?
    }

    /// Sends a command that has no answer.
    pub async fn notify(&self, command: Command) {
        let _ = self.tx.send(command).await;
    }

    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ApiError::unavailable())?;
        answer.await.map_err(|_| unfinished())
    }
}

/// A command the driver dropped unanswered: its batch failed (the store's error is in the server's log) or the
/// driver is stopping.
fn unfinished() -> ApiError {
    ApiError::new(ErrorCode::Unavailable, "the server could not complete this request (its log says why); retry")
}

/// The answer to a submission: the job, and whether an idempotency key had already made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub id: u64,
    pub again: bool,
}

/// The answer to a key that already made a job: that job for the same request, a refusal for a different one.
pub fn keyed_answer(key: &SubmissionKey, keyed: &KeyedJob) -> Result<Submitted, ApiError> {
    if keyed.request_sha256 == key.request_sha256 {
        Ok(Submitted { id: keyed.job_id, again: true })
    } else {
        Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "the idempotency key `{}` was used for job {} with a different request; use a new key for a new \
                 submission",
                key.key, keyed.job_id
            ),
        ))
    }
}

/// What the driver knows of a queued job: only what the core does not. The core holds its request (see
/// `Scheduler::request`) and the store its full specification, so that a deep queue costs the driver a few bytes a job.
#[derive(Clone, Copy, Debug)]
struct Queued {
    /// The job's prediction keys (`crate::predictions::keys`).
    kind: (u64, u64),
    attempt: u32,
    retries: u32,
    /// Attempts that preemption used; they do not count against the job's retries.
    preemptions: u32,
}

/// What the driver knows of a placed job (starting, running or stopping); the full specification stays in the store.
#[derive(Clone, Debug)]
struct Active {
    /// What the scheduler core knows of the job.
    request: JobRequest,
    /// The job's prediction keys (`crate::predictions::keys`): a success teaches the predictor under them.
    kind: (u64, u64),
    state: JobState,
    attempt: u32,
    retries: u32,
    /// The node it runs on (for a gang, rank 0's).
    node: Option<String>,
    /// A gang's workers, rank 0 first, once placed; empty for a single-node job.
    workers: Vec<JobWorker>,
    cancel_requested: bool,
    /// Set, with the reason, while the job is stopped to make room for another; its end requeues it.
    preempted: Option<String>,
    /// Attempts that preemption used; they do not count against the job's retries.
    preemptions: u32,
    started_at_us: Option<i64>,
    /// How the engine knows the current attempt (`slurm job 42`), on engine pools once it is submitted.
    native: Option<String>,
}

/// The core's view of a stored job.
fn core_request(id: u64, job: &NewJob, submitted_at_us: i64) -> JobRequest {
    JobRequest {
        gpu_share_milli: job.gpu_share_milli,
        gpu_models: job.gpu_types.clone(),
        selector: job.selector.clone(),
        submitted_at_us,
        team: job.team.clone().unwrap_or_default(),
        user: job.owner.clone(),
        max_runtime_s: job.max_runtime_s,
        nodes: job.nodes,
        project: job.project.clone().unwrap_or_default(),
        pool: job.pool.clone(),
        image: job.image.is_some(),
        checkpoints: job.checkpoints,
        ..JobRequest::new(id, job.resources, job.priority.value())
    }
}

impl Active {
    fn from_record(r: &JobRecord) -> Active {
        Active {
            request: JobRequest {
                not_before_us: r.not_before_us,
                attained_gpu_s: r.attained_gpu_s,
                expected_runtime_s: r.prediction.map(|p| p.runtime_s),
                ..core_request(r.id, &r.spec, r.submitted_at_us)
            },
            kind: crate::predictions::keys(&r.spec),
            state: r.state,
            attempt: r.attempt,
            retries: r.spec.retries,
            node: r.node.clone(),
            workers: r.workers.clone(),
            cancel_requested: r.cancel_requested,
            preempted: None,
            preemptions: r.preemptions,
            started_at_us: r.started_at_us,
            native: r.native.as_ref().map(|n| format!("{} job {}", n.kind, n.id)),
        }
    }

    /// A queued job that the core has just placed, with the request the core holds.
    fn placed(queued: Queued, request: JobRequest) -> Active {
        Active {
            request,
            kind: queued.kind,
            state: JobState::Starting,
            attempt: queued.attempt,
            retries: queued.retries,
            node: None,
            workers: Vec::new(),
            cancel_requested: false,
            preempted: None,
            preemptions: queued.preemptions,
            started_at_us: None,
            native: None,
        }
    }

    fn request(&self, id: u64) -> JobRequest {
        JobRequest { id, ..self.request.clone() }
    }

    /// Every run of the job's current attempt with its node: one, or one per worker of a gang.
    fn runs(&self, id: u64) -> Vec<(String, RunRef)> {
        if self.workers.is_empty() {
            self.node.iter().map(|n| (n.clone(), RunRef::new(id, self.attempt))).collect()
        } else {
            let run = |w: &JobWorker| RunRef { job_id: id, attempt: self.attempt, rank: w.rank };
            self.workers.iter().map(|w| (w.node.clone(), run(w))).collect()
        }
    }

    /// The runs of a gang's workers that have not ended, and of a single-node job its run.
    fn live_runs(&self, id: u64) -> Vec<(String, RunRef)> {
        let ended = |run: &RunRef| self.workers.get(run.rank as usize).is_some_and(|w| w.end.is_some());
        self.runs(id).into_iter().filter(|(_, run)| !ended(run)).collect()
    }

    /// The node worker `rank` runs on.
    fn node_of(&self, rank: u32) -> Option<&str> {
        if self.workers.is_empty() {
            self.node.as_deref().filter(|_| rank == 0)
        } else {
            self.workers.get(rank as usize).map(|w| w.node.as_str())
        }
    }

    /// What the core's lifecycle rules need to know of the job.
    fn life(&self) -> JobLife {
        JobLife {
            attempt: self.attempt,
            retries: self.retries,
            preemptions: self.preemptions,
            cancel_requested: self.cancel_requested,
            preempted: self.preempted.clone(),
        }
    }
}

/// What the driver keeps of a node beside the core (which decides whether it is ready).
struct NodeEntry {
    /// Where other nodes reach this one; its name when its agent did not say.
    address: String,
    pool: String,
}

/// What a batch owes the outside world once it is committed (or failed).
#[derive(Default)]
struct Effects {
    replies: Vec<Box<dyn FnOnce(Option<ApiError>) + Send>>,
    launches: Vec<(String, Assignment)>,
    stops: Vec<(String, RunRef)>,
    started: Vec<(String, RunRef)>,
    ended: Vec<(String, RunRef)>,
    changed: Vec<u64>,
    finished: Vec<u64>,
}

impl Effects {
    fn reply<T: Send + 'static>(&mut self, reply: Reply<T>, result: Result<T, ApiError>) {
        self.replies.push(Box::new(move |failure| {
            let _ = reply.send(match failure {
                Some(e) => Err(e),
                None => result,
            });
        }));
    }
}

/// What the driver adds to each run besides the job's own specification: its MLflow variables and its secrets.
pub struct RunSources {
    pub tracking: crate::jobruns::TrackingEnv,
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// The clock the driver decides by: the system's, or a test's.
    pub clock: Arc<dyn crate::clock::Clock>,
}

pub struct Driver {
    store: Store,
    sched: Scheduler,
    agents: Arc<AgentBackend>,
    /// The backend of each configured pool, by pool name (the registry built them); nodes of other pools are agents'.
    engines: HashMap<String, Arc<dyn ComputeBackend>>,
    signals: Arc<Signals>,
    /// Unfinished jobs that are placed: starting, running or stopping. A job is here or in `queued`, never in both.
    jobs: HashMap<u64, Active>,
    /// Unfinished jobs that wait in the queue.
    queued: HashMap<u64, Queued>,
    nodes: HashMap<String, NodeEntry>,
    node_timeout: Duration,
    config: FileConfig,
    /// The MLflow variables every run gets.
    tracking: crate::jobruns::TrackingEnv,
    /// Opens the secrets a job needs when it starts.
    secrets: Arc<crate::secrets::SecretBox>,
    /// What every decision and record reads the time from.
    clock: Arc<dyn crate::clock::Clock>,
    /// Recent runtimes by kind of job, which predict how long a new one will run (`crate::predictions`).
    predictor: ferry_core::predict::Predictor,
    /// Scheduling cycles run, and the seconds they took in all, for `/metrics`.
    cycles: u64,
    cycle_seconds_sum: f64,
    /// When the last cycle ended and how long it took (see `PACED_CYCLE_MIN`).
    last_cycle: Option<(Instant, Duration)>,
    /// Where elastic pools' machines are asked for and given back; `None` without elastic pools.
    fleet: Option<crate::fleet::FleetHandle>,
    /// The core could not be rebuilt from the store after a failed commit: every batch tries again first, and
    /// none is applied to a core that disagrees with the store.
    stale: bool,
}

pub(crate) use crate::clock::now_us;

impl Driver {
    /// Builds the driver from the store's contents and returns it with the handle handlers use.
    pub async fn start(
        store: Store,
        agents: Arc<AgentBackend>,
        engines: HashMap<String, Arc<dyn ComputeBackend>>,
        signals: Arc<Signals>,
        node_timeout: Duration,
        config: FileConfig,
        RunSources { tracking, secrets, clock }: RunSources,
    ) -> Result<(Driver, DriverHandle, mpsc::Receiver<Command>), StoreError> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let mut driver = Driver {
            store,
            sched: Scheduler::new(),
            agents,
            engines,
            signals,
            jobs: HashMap::new(),
            queued: HashMap::new(),
            nodes: HashMap::new(),
            node_timeout,
            config,
            tracking,
            secrets,
            clock,
            predictor: Default::default(),
            cycles: 0,
            fleet: None,
            stale: false,
            cycle_seconds_sum: 0.0,
            last_cycle: None,
        };
        driver.predictor = crate::predictions::load(&driver.store, driver.clock.now_us()).await?;
        driver.reload().await?;
        Ok((driver, DriverHandle { tx }, rx))
    }

    /// Orders for elastic pools' machines go to `fleet` from now on.
    pub fn set_fleet(&mut self, fleet: crate::fleet::FleetHandle) {
        self.fleet = Some(fleet);
    }

    /// The driver's loop: commands in batches, and a liveness check on a timer, until the server stops.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut liveness = tokio::time::interval(LIVENESS_CHECK_INTERVAL);
        liveness.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                command = rx.recv() => {
                    let Some(first) = command else { break };
                    let mut batch = vec![first];
                    while batch.len() < BATCH_MAX {
                        match rx.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    self.apply_batch(batch).await;
                }
                _ = liveness.tick() => self.apply_batch(Vec::new()).await,
            }
        }
    }

    async fn apply_batch(&mut self, batch: Vec<Command>) {
        if self.stale {
            if let Err(e) = self.reload().await {
                // Dropped unanswered, each command's caller hears that it could not be completed and retries.
                tracing::error!(error = %e, "the store still cannot be read; commands fail until it can");
                drop(batch);
                return;
            }
            tracing::info!("rebuilt the scheduler from the store");
            self.stale = false;
        }
        let mut fx = Effects::default();
        let outcome = async {
            let mut tx = self.store.begin().await?;
            for command in batch {
                self.handle(command, &mut tx, &mut fx).await?;
            }
            self.tick(&mut tx, &mut fx).await?;
            if self.cycle_due() {
                let cycle = Instant::now();
                self.place(&mut tx, &mut fx).await?;
                let took = cycle.elapsed();
                self.cycles += 1;
                self.cycle_seconds_sum += took.as_secs_f64();
                self.last_cycle = Some((Instant::now(), took));
            }
            tx.commit().await
        }
        .await;
        match outcome {
            Ok(()) => self.dispatch(fx).await,
            Err(e) => {
                tracing::error!(error = %e, "a batch failed to commit; rebuilding the scheduler from the store");
                let failure = ApiError::from(e);
                for reply in fx.replies {
                    reply(Some(failure.clone()));
                }
                if let Err(e) = self.reload().await {
                    tracing::error!(error = %e, "rebuilding from the store failed; commands will fail until it recovers");
                    self.stale = true;
                }
            }
        }
    }

    /// Whether a batch runs a scheduling cycle: always, unless the queue is deep and the last cycle was long and
    /// ended less than its own length ago (see `PACED_CYCLE_MIN`).
    fn cycle_due(&self) -> bool {
        self.sched.queued() < PACED_QUEUE_MIN
            || self.last_cycle.is_none_or(|(ended, took)| took < PACED_CYCLE_MIN || ended.elapsed() >= took)
    }

    /// Carries out what a committed batch decided.
    async fn dispatch(&mut self, fx: Effects) {
        for reply in fx.replies {
            reply(None);
        }
        for (node, run) in fx.started {
            self.agents.confirm_started(&node, run);
        }
        for (node, run) in fx.ended {
            self.agents.confirm_finished(&node, run);
        }
        for (node, assignment) in fx.launches {
            if let Err(e) = self.backend_of(&node).launch(&node, assignment).await {
                tracing::error!(node = %node, error = %e, "launch refused");
            }
        }
        for (node, run) in fx.stops {
            if let Err(e) = self.backend_of(&node).stop(&node, run).await {
                tracing::error!(node = %node, error = %e, "stop refused");
            }
        }
        for job in fx.changed.into_iter().chain(fx.finished) {
            self.signals.signal(job);
        }
    }

    /// The backend that runs work on a node: its pool's, or the agents' for a pool only nodes name.
    fn backend_of(&self, node: &str) -> Arc<dyn ComputeBackend> {
        match self.nodes.get(node).and_then(|l| self.engines.get(&l.pool)) {
            Some(engine) => engine.clone(),
            None => self.agents.clone(),
        }
    }

    async fn handle(&mut self, command: Command, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        match command {
            Command::Submit { job, key, reply } => {
                let result = self.submit(*job, key, tx).await?;
                fx.reply(reply, result);
            }
            Command::Cancel { id, by, reply } => {
                let result = self.cancel(id, &by, tx, fx).await?;
                fx.reply(reply, result);
            }
            Command::Register { node, reply } => {
                let result = self.register(node, tx, fx).await?;
                fx.reply(reply, Ok(result));
            }
            Command::Reports { reports, reply } => {
                let result = self.reports(reports, tx, fx).await?;
                fx.reply(reply, result);
            }
            Command::Explain { id, reply } => {
                let reason = self.sched.explain(id);
                let fork = reason.is_some().then(|| Box::new(self.sched.clone()));
                let _ = reply.send((reason, fork));
            }
            Command::QuotasChanged { reply } => {
                self.apply_quotas().await?;
                fx.reply(reply, Ok(()));
            }
            Command::Allocations { reply } => {
                let mut by_node: BTreeMap<String, (Resources, Vec<u64>)> = BTreeMap::new();
                for (id, job) in &self.jobs {
                    if !matches!(job.state, JobState::Starting | JobState::Running) {
                        continue;
                    }
                    for (node, _) in job.runs(*id) {
                        let entry = by_node.entry(node).or_insert((Resources::ZERO, Vec::new()));
                        entry.0 = entry.0.checked_add(&job.request.resources).unwrap_or(entry.0);
                        entry.1.push(*id);
                    }
                }
                for (_, jobs) in by_node.values_mut() {
                    jobs.sort_unstable();
                }
                let _ = reply.send(by_node);
            }
            Command::PoolsChanged { pools, reply } => {
                let infos = pools.iter().map(|p| p.info.clone()).collect();
                self.sched.apply(Event::PoolsConfigured(infos)).expect("configuring pools never fails");
                self.config.pools = pools;
                fx.reply(reply, Ok(()));
            }
            Command::Elastic { reply } => {
                let status = self
                    .config
                    .pools
                    .iter()
                    .filter_map(|p| Some((p.info.name.clone(), self.sched.elastic_status(&p.info.name)?)))
                    .collect();
                let _ = reply.send(status);
            }
            Command::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            Command::Native { node, run, native, reply } => {
                let wanted = self.native(&node, run, native, tx, fx).await?;
                fx.reply(reply, Ok(wanted));
            }
            Command::Cloud(news) => self.cloud_news(news, tx, fx).await?,
            Command::OutputRemoved { ids, at_us, reply } => {
                tx.output_removed(&ids, at_us).await?;
                fx.reply(reply, Ok(()));
            }
            Command::ForgetJobs { before_us, limit, reply } => {
                // The store deletes finished jobs only; the driver holds only unfinished ones.
                let ids = tx.forget_finished_jobs(before_us, limit).await?;
                debug_assert!(
                    ids.iter().all(|id| !self.jobs.contains_key(id) && !self.queued.contains_key(id)),
                    "an unfinished job was deleted"
                );
                fx.reply(reply, Ok(ids));
            }
        }
        Ok(())
    }
}

/// How a job's last run ended, as `job_ended` needs it.
struct Ended {
    state: JobState,
    text: String,
    end: RunEnd,
    exit_code: Option<i32>,
    signal: Option<i32>,
    at_us: i64,
}

/// What a user can change about a job that no node can run.
fn fix_for(reason: &WaitReason) -> &'static str {
    match reason {
        WaitReason::NoMatchingNode { image: true, .. } => "run it without --image, or on a pool that runs images",
        WaitReason::NoMatchingNode { gang: true, .. } => "run it on one node, or on a pool that runs multi-node jobs",
        WaitReason::NoMatchingNode { pool: Some(_), .. } => "change --pool, --gpu-type or --selector",
        WaitReason::NoMatchingNode { .. } => "change --gpu-type or --selector",
        WaitReason::GangInfeasible { .. } => "ask for fewer --nodes, or fewer resources per node",
        _ => "ask for less with --gpus, --cpus or --memory",
    }
}

/// The job state of a lifecycle ending.
/// A requeue as the timeline keeps it: the cause (with the loss, for a run lost with its node), and the attempt
/// (counting from 1, where the core counts from 0).
fn requeue_record(
    cause: RequeueCause,
    attempt: u32,
    attempts: u32,
    not_before_us: i64,
    loss: Option<LossRecord>,
) -> RequeueRecord {
    let cause = match cause {
        RequeueCause::Preempted { ran_s } => RequeueCauseRecord::Preempted { ran_s },
        RequeueCause::Failed { delay_s } => RequeueCauseRecord::Failed { delay_s },
        // Only a loss decides this, and it says how; a node gone with no more said of it is down.
        RequeueCause::NodeLost => {
            RequeueCauseRecord::NodeLost(loss.unwrap_or(LossRecord { node: None, cause: LossCauseRecord::NodeDown }))
        }
    };
    RequeueRecord { cause, attempt: attempt + 1, attempts, not_before_us }
}

/// A job the server could not take back when it restarted, as its timeline keeps the loss.
fn lost_at_restart(record: &JobRecord) -> LossRecord {
    LossRecord { node: record.node.clone(), cause: LossCauseRecord::ServerRestart }
}

fn job_state(ending: Ending) -> JobState {
    match ending {
        Ending::Succeeded => JobState::Succeeded,
        Ending::Failed => JobState::Failed,
        Ending::TimedOut => JobState::TimedOut,
        Ending::Cancelled => JobState::Cancelled,
        Ending::Lost => JobState::Lost,
    }
}

/// The lifecycle ending of a final job state (a worker's end is always one).
fn ending_of(state: JobState) -> Ending {
    match state {
        JobState::Succeeded => Ending::Succeeded,
        JobState::TimedOut => Ending::TimedOut,
        JobState::Cancelled => Ending::Cancelled,
        JobState::Lost => Ending::Lost,
        _ => Ending::Failed,
    }
}

/// A run's end as the core's lifecycle reads it.
fn core_end(end: RunEnd) -> lifecycle::RunEnd {
    match end {
        RunEnd::Exited => lifecycle::RunEnd::Exited,
        RunEnd::TimedOut => lifecycle::RunEnd::TimedOut,
        RunEnd::Stopped => lifecycle::RunEnd::Stopped,
        RunEnd::FailedToStart => lifecycle::RunEnd::FailedToStart,
    }
}

fn node_info(record: &NodeRecord) -> NodeInfo {
    // A node whose GPUs are all of one model is that model's; a mixed node matches no model constraint.
    let first = record.gpus.first().map(|g| g.model.clone());
    let gpu_model = first.filter(|m| record.gpus.iter().all(|g| &g.model == m));
    NodeInfo {
        name: record.name.clone(),
        pool: record.pool.clone(),
        capacity: Resources::new(record.cpu_millis, record.memory_bytes, record.gpus.len() as u32),
        gpu_indices: record.gpus.iter().map(|g| g.index).collect(),
        gpu_model,
        labels: record.labels.clone(),
    }
}
