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
            stale: false,
            cycle_seconds_sum: 0.0,
            last_cycle: None,
        };
        driver.predictor = crate::predictions::load(&driver.store, driver.clock.now_us()).await?;
        driver.reload().await?;
        Ok((driver, DriverHandle { tx }, rx))
    }

    /// Gives the core the teams' and projects' quotas: the configuration file's, and the store's for the teams and
    /// projects the file does not set.
    async fn apply_quotas(&mut self) -> Result<(), StoreError> {
        let stored = self.store.quotas().await?;
        let (teams, projects) = crate::config::effective_quotas(&self.config, &stored);
        let teams = Event::TeamsConfigured { teams, fair_share_half_life_s: self.config.fair_share_half_life_s };
        self.sched.apply(teams).expect("configuring teams never fails");
        self.sched.apply(Event::ProjectsConfigured(projects)).expect("configuring projects never fails");
        Ok(())
    }

    /// Rebuilds the core from the store: nodes get a fresh timeout to report, running jobs are adopted where they
    /// run, jobs placed but unconfirmed are sent to their node again.
    async fn reload(&mut self) -> Result<(), StoreError> {
        self.sched = Scheduler::new();
        let pools = self.config.pools.iter().map(|p| p.info.clone()).collect();
        self.sched.apply(Event::PoolsConfigured(pools)).expect("configuring pools never fails");
        self.apply_quotas().await?;
        self.sched.apply(Event::PlacementConfigured(self.config.gpu_placement)).expect("configuring never fails");
        let order = Event::QueueOrderConfigured(self.config.queue_order.clone());
        self.sched.apply(order).expect("configuring never fails");
        if let Some(depth) = self.config.reserve_depth {
            self.sched.apply(Event::ReserveDepthConfigured(depth)).expect("the configuration checked the depth");
        }
        let timeout_s = self.node_timeout.as_secs().max(1);
        self.sched.apply(Event::NodeTimeoutConfigured(Some(timeout_s))).expect("configuring never fails");
        // Known nodes are heard from as of now: each gets the whole node timeout to report again.
        self.sched.apply(Event::Tick { now_us: self.clock.now_us() }).expect("a first tick decides nothing");
        self.jobs.clear();
        self.queued.clear();
        self.nodes.clear();
        for record in self.store.nodes().await? {
            if let Err(e) = self.sched.apply(Event::NodeUp(node_info(&record))) {
                tracing::error!(node = %record.name, error = %e, "stored node is inconsistent; ignoring it");
                continue;
            }
            let address = record.address.clone().unwrap_or_else(|| record.name.clone());
            let pool = record.pool.clone();
            self.nodes.insert(record.name.clone(), NodeEntry { address, pool });
        }
        let mut tx = self.store.begin().await?;
        let mut fx = Effects::default();
        for record in self.store.unfinished_jobs().await? {
            let active = Active::from_record(&record);
            let stored = match (&record.state, &record.node) {
                (JobState::Queued, _) => lifecycle::Stored::Queued,
                (JobState::Starting, Some(_)) => lifecycle::Stored::Starting,
                (_, Some(_)) => lifecycle::Stored::Running,
                (_, None) => lifecycle::Stored::Nowhere,
            };
            let worker_failed =
                active.workers.iter().any(|w| w.end.as_ref().is_some_and(|e| e.state != JobState::Succeeded));
            let then = match lifecycle::on_restart(stored, &active.life(), worker_failed) {
                lifecycle::Restart::Requeue => {
                    if let Err(e) = self.sched.apply(Event::JobSubmitted(active.request(record.id))) {
                        let message = lifecycle::lost_at_restart(&e.to_string());
                        tx.lost(record.id, &message, self.clock.now_us(), lost_at_restart(&record)).await?;
                        continue;
                    }
                    let queued = Queued {
                        kind: active.kind,
                        attempt: active.attempt,
                        retries: active.retries,
                        preemptions: active.preemptions,
                    };
                    self.queued.insert(record.id, queued);
                    continue;
                }
                lifecycle::Restart::Lose { reason } => {
                    tx.lost(record.id, &reason, self.clock.now_us(), lost_at_restart(&record)).await?;
                    continue;
                }
                lifecycle::Restart::Adopt { then } => then,
            };
            let node = record.node.clone().expect("an adopted job is on a node");
            let allocation = Allocation {
                node,
                resources: record.spec.resources,
                gpus: record.gpu_ids.clone(),
                gpu_share_milli: record.spec.gpu_share_milli,
                peers: record
                    .workers
                    .iter()
                    .skip(1)
                    .map(|w| Peer { node: w.node.clone(), gpus: w.gpu_ids.clone() })
                    .collect(),
            };
            if let Err(e) = self.sched.apply(Event::JobAdopted { request: active.request(record.id), allocation }) {
                let message = lifecycle::lost_at_restart(&e.to_string());
                tx.lost(record.id, &message, self.clock.now_us(), lost_at_restart(&record)).await?;
                continue;
            }
            match then {
                lifecycle::AfterAdoption::StopRuns => fx.stops.extend(active.live_runs(record.id)),
                lifecycle::AfterAdoption::Resend => match self.secrets.resolve(&mut tx, &record.spec).await? {
                    // The agents drop what they already run.
                    Ok(secrets) => fx.launches.extend(self.assignments(&record, &active, &secrets)),
                    Err(why) => {
                        tx.finished(record.id, JobState::Failed, None, None, &why, self.clock.now_us()).await?;
                        self.sched.apply(Event::JobEnded { id: record.id }).expect("ending a job never fails");
                        continue;
                    }
                },
                lifecycle::AfterAdoption::Follow => {}
            }
            self.jobs.insert(record.id, active);
        }
        tx.commit().await?;
        self.dispatch(fx).await;
        Ok(())
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

    /// Records what an engine made of a run, if the run is still the job's current one on that node.
    async fn native(
        &mut self,
        node: &str,
        run: RunRef,
        native: ferry_store::Native,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<bool, StoreError> {
        let Some(active) = self.jobs.get_mut(&run.job_id) else { return Ok(false) };
        if active.attempt != run.attempt || active.node_of(run.rank) != Some(node) || active.cancel_requested {
            return Ok(false);
        }
        if run.rank == 0 {
            active.native = Some(format!("{} job {}", native.kind, native.id));
            tx.native(run.job_id, &native, self.clock.now_us(), active.state).await?;
            fx.changed.push(run.job_id);
        }
        Ok(true)
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
            Command::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            Command::Native { node, run, native, reply } => {
                let wanted = self.native(&node, run, native, tx, fx).await?;
                fx.reply(reply, Ok(wanted));
            }
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

    fn metrics(&self) -> DriverMetrics {
        let mut metrics =
            DriverMetrics { cycles: self.cycles, cycle_seconds_sum: self.cycle_seconds_sum, ..Default::default() };
        // The core counts the queue by group: a deep queue costs neither a copy of every job nor a lookup of its
        // pools per job (the time-series tick asks for this every 10 s).
        metrics.queued = (self.sched.queued_groups().into_iter())
            .map(|g| QueuedMetrics {
                team: g.team,
                jobs: g.jobs,
                submitted_at_us: g.oldest_submitted_at_us,
                pools: g.pools.into_iter().collect(),
            })
            .collect();
        for (id, job) in &self.jobs {
            let r = &job.request;
            match job.state {
                JobState::Starting | JobState::Running => {
                    for (node, run) in job.runs(*id) {
                        let gpu_ids = match job.workers.get(run.rank as usize) {
                            Some(worker) => worker.gpu_ids.clone(),
                            None => self.sched.allocation(*id).map(|a| a.gpus.clone()).unwrap_or_default(),
                        };
                        metrics.runs.push(RunMetrics {
                            gpu_ids,
                            job_id: *id,
                            user: r.user.clone(),
                            team: r.team.clone(),
                            project: r.project.clone(),
                            node,
                            resources: r.resources,
                            gpu_share_milli: r.gpu_share_milli,
                        });
                    }
                }
                _ => {}
            }
        }
        metrics.runs.sort_by(|a, b| (a.job_id, &a.node).cmp(&(b.job_id, &b.node)));
        metrics
    }

    async fn submit(
        &mut self,
        job: NewJob,
        key: Option<SubmissionKey>,
        tx: &mut Tx,
    ) -> Result<Result<Submitted, ApiError>, StoreError> {
        let now = self.clock.now_us();
        // Checked here too, inside the transaction that records the key: two retries racing past the handler's
        // check still make one job.
        if let Some(key) = &key {
            if let Some(keyed) = tx.keyed_job(key).await? {
                return Ok(keyed_answer(key, &keyed));
            }
        }
        let mut request = core_request(0, &job, now);
        if let Err(reason) = self.sched.check_feasible(&request) {
            return Ok(Err(ApiError::new(ErrorCode::Unsatisfiable, format!("{reason}; {}", fix_for(&reason)))));
        }
        let id = tx.insert_job(&job, now).await?;
        let kind = crate::predictions::keys(&job);
        let prediction = self.predictor.predict_keys(kind.0, kind.1);
        tx.set_prediction(id, kind.0, kind.1, prediction.as_ref()).await?;
        request.expected_runtime_s = prediction.map(|p| p.runtime_s);
        if let Some(key) = &key {
            tx.record_submission_key(key, id, now).await?;
        }
        request.id = id;
        self.sched.apply(Event::JobSubmitted(request)).expect("a fresh id is unknown to the core");
        self.queued.insert(id, Queued { kind, attempt: 0, retries: job.retries, preemptions: 0 });
        Ok(Ok(Submitted { id, again: false }))
    }

    async fn cancel(
        &mut self,
        id: u64,
        by: &str,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Result<(), ApiError>, StoreError> {
        if self.queued.contains_key(&id) {
            let CancelStep::EndNow { reason } = lifecycle::on_cancel(false, false, by) else {
                unreachable!("a job that never ran ends when it is cancelled")
            };
            tx.finished(id, JobState::Cancelled, None, None, &reason, self.clock.now_us()).await?;
            self.end_job(id, fx);
            return Ok(Ok(()));
        }
        let Some(active) = self.jobs.get_mut(&id) else {
            return Ok(Err(match tx.job(id).await? {
                Some(record) => ApiError::new(
                    ErrorCode::Conflict,
                    format!("job {id} already {}; there is nothing to cancel", record.state.name()),
                ),
                None => ApiError::not_found(format!("no job {id}; `ferry ps --all` lists jobs")),
            }));
        };
        let placed = active.state != JobState::Queued && active.node.is_some();
        match lifecycle::on_cancel(placed, active.cancel_requested, by) {
            CancelStep::EndNow { reason } => {
                tx.finished(id, JobState::Cancelled, None, None, &reason, self.clock.now_us()).await?;
                self.end_job(id, fx);
            }
            CancelStep::StopRuns => {
                active.cancel_requested = true;
                tx.cancel_requested(id, self.clock.now_us(), active.state, by).await?;
                fx.stops.extend(active.live_runs(id));
                fx.changed.push(id);
            }
            CancelStep::AlreadyStopping => {}
        }
        Ok(Ok(()))
    }

    fn end_job(&mut self, id: u64, fx: &mut Effects) {
        self.jobs.remove(&id);
        self.queued.remove(&id);
        self.sched.apply(Event::JobEnded { id }).expect("ending a job never fails");
        fx.finished.push(id);
    }

    async fn register(&mut self, node: RegisterNode, tx: &mut Tx, fx: &mut Effects) -> Result<Registered, StoreError> {
        let now = self.clock.now_us();
        let record = NodeRecord {
            name: node.name.clone(),
            pool: node.pool.clone(),
            cpu_millis: node.cpu_millis,
            memory_bytes: node.memory_bytes,
            gpus: node.gpus.clone(),
            labels: node.labels.clone(),
            agent_version: node.agent_version.clone(),
            limits: node.limits.clone(),
            address: node.address.clone(),
            ready: true,
            usage: None,
            last_seen_us: now,
        };
        tx.upsert_node(&record, now).await?;
        if let Err(e) = self.sched.apply(Event::NodeUp(node_info(&record))) {
            tracing::warn!(node = %node.name, error = %e, "node registration is inconsistent");
        }
        if let Err(e) = self.sched.apply(Event::NodeSeen { node: node.name.clone(), at_us: now }) {
            tracing::warn!(node = %node.name, error = %e, "node registration is inconsistent");
        }
        let address = node.address.clone().unwrap_or_else(|| node.name.clone());
        let pool = node.pool.clone();
        self.nodes.insert(node.name.clone(), NodeEntry { address, pool });
        tracing::info!(node = %node.name, runs = node.runs.len(), "node registered");
        let mut stop = Vec::new();
        for report in &node.runs {
            // An end listed at registration may precede the upload of the run's last output; the agent reports it
            // again once everything is shipped, and only that report may close the job.
            if matches!(report.status, RunStatus::Finished { .. }) {
                continue;
            }
            stop.extend(self.report(&node.name, report, tx, fx).await?);
        }
        // A job the server believes runs here, which the agent no longer knows, is gone: its record vanished with the
        // agent's data. Starting ones are simply sent again (the agent may never have received them).
        let known: Vec<RunRef> = node.runs.iter().map(|r| r.run).collect();
        let vanished: Vec<(u64, u32)> = self
            .jobs
            .iter()
            .filter(|(id, j)| {
                let started = |rank: u32| match j.workers.get(rank as usize) {
                    Some(worker) => worker.started_at_us.is_some() && worker.end.is_none(),
                    None => j.state == JobState::Running,
                };
                j.live_runs(**id).iter().any(|(n, run)| *n == node.name && started(run.rank) && !known.contains(run))
            })
            .map(|(id, j)| (*id, j.attempt))
            .collect();
        for (id, attempt) in vanished {
            let loss = LossRecord { node: Some(node.name.clone()), cause: LossCauseRecord::RunForgotten };
            self.lose(id, attempt, ("its node's agent restarted without any record of it", loss), tx, fx).await?;
        }
        Ok(Registered { heartbeat_ms: HEARTBEAT_MS, stop })
    }

    async fn reports(
        &mut self,
        reports: Reports,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Result<ReportsAck, ApiError>, StoreError> {
        if !self.nodes.contains_key(&reports.node) {
            return Ok(Err(ApiError::not_found(format!("node {} is not registered; register first", reports.node))));
        }
        if !matches!(self.sched.node_status(&reports.node), Some(NodeStatus::Ready { .. })) {
            // A node given up on must register again, listing its runs, so that the copies of jobs that were
            // requeued or lost meanwhile are stopped.
            return Ok(Err(ApiError::not_found(format!("node {} was marked not ready; register again", reports.node))));
        }
        let now = self.clock.now_us();
        self.sched.apply(Event::NodeSeen { node: reports.node.clone(), at_us: now }).expect("the node is known");
        tx.node_seen(&reports.node, reports.usage.as_ref(), now).await?;
        let mut stop = Vec::new();
        for report in &reports.runs {
            stop.extend(self.report(&reports.node, report, tx, fx).await?);
        }
        Ok(Ok(ReportsAck { stop }))
    }

    /// Applies one run's state; returns the run if the server does not want it to run.
    async fn report(
        &mut self,
        node: &str,
        report: &RunReport,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Option<RunRef>, StoreError> {
        let run = report.run;
        let current = self
            .jobs
            .get(&run.job_id)
            .filter(|j| j.attempt == run.attempt && j.node_of(run.rank) == Some(node))
            .cloned();
        match (&report.status, current) {
            (RunStatus::Running { .. }, None) => {
                fx.ended.push((node.to_string(), run));
                Ok(Some(run))
            }
            (RunStatus::Running { pid, started_at_us }, Some(job)) if !job.workers.is_empty() => {
                fx.started.push((node.to_string(), run));
                self.worker_started(run, *started_at_us, &format!("on node {node} as pid {pid}"), tx, fx).await?;
                Ok(None)
            }
            (RunStatus::Running { pid, started_at_us }, Some(job)) => {
                fx.started.push((node.to_string(), run));
                if job.state == JobState::Starting {
                    let how = match &job.native {
                        Some(native) => format!("running on node {node} as {native}"),
                        None => format!("running on node {node} as pid {pid}"),
                    };
                    tx.running(run.job_id, *started_at_us, &how).await?;
                    let active = self.jobs.get_mut(&run.job_id).expect("current job is active");
                    active.state = JobState::Running;
                    active.started_at_us = Some(*started_at_us);
                    fx.changed.push(run.job_id);
                }
                Ok(None)
            }
            (RunStatus::Finished { .. }, None) => {
                fx.ended.push((node.to_string(), run));
                Ok(None)
            }
            (RunStatus::Finished { end, exit_code, signal, finished_at_us, message, started_at_us, .. }, Some(job)) => {
                fx.ended.push((node.to_string(), run));
                let result =
                    RunResult { end: core_end(*end), exit_code: *exit_code, signal: *signal, message: message.clone() };
                let (ending, text) = lifecycle::run_outcome(&job.life(), &result);
                let state = job_state(ending);
                if !job.workers.is_empty() {
                    if let Some(started) = started_at_us {
                        self.worker_started(run, *started, &format!("on node {node}"), tx, fx).await?;
                    }
                    let ended = WorkerEnd {
                        state,
                        exit_code: *exit_code,
                        signal: *signal,
                        message: text,
                        finished_at_us: *finished_at_us,
                        failed_to_start: *end == RunEnd::FailedToStart,
                    };
                    return self.worker_ended(run, node, ended, *end, tx, fx).await.map(|()| None);
                }
                // A run can end before its start was reported; the timeline still shows that it ran.
                if let (JobState::Starting, Some(started)) = (job.state, started_at_us) {
                    tx.running(run.job_id, *started, &format!("running on node {node}")).await?;
                }
                let started = started_at_us.or(job.started_at_us);
                let end =
                    Ended { state, text, end: *end, exit_code: *exit_code, signal: *signal, at_us: *finished_at_us };
                self.job_ended(run.job_id, &job, started, end, tx, fx).await.map(|()| None)
            }
        }
    }

    /// Records that a gang's worker started; the job is running once every worker is.
    async fn worker_started(
        &mut self,
        run: RunRef,
        started_at_us: i64,
        how: &str,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let active = self.jobs.get_mut(&run.job_id).expect("current job is active");
        let Some(worker) = active.workers.get_mut(run.rank as usize) else { return Ok(()) };
        if worker.started_at_us.is_some() {
            return Ok(());
        }
        worker.started_at_us = Some(started_at_us);
        tx.set_workers(run.job_id, &active.workers).await?;
        let all_started = active.workers.iter().all(|w| w.started_at_us.is_some());
        if all_started && active.state == JobState::Starting {
            let first = active.workers.iter().filter_map(|w| w.started_at_us).min().unwrap_or(started_at_us);
            let nodes: Vec<&str> = active.workers.iter().map(|w| w.node.as_str()).collect();
            let message = format!("all {} workers running, on nodes {}", nodes.len(), nodes.join(", "));
            tx.running(run.job_id, first, &message).await?;
            active.state = JobState::Running;
            active.started_at_us = Some(first);
        } else {
            let message = format!("worker {} running {how}", run.rank);
            tx.event(run.job_id, started_at_us, active.state, &message).await?;
        }
        fx.changed.push(run.job_id);
        Ok(())
    }

    /// Records how a gang's worker ended. The first worker to fail stops the others; once every worker has ended,
    /// the job ends as its first failure did (or succeeds when none failed).
    async fn worker_ended(
        &mut self,
        run: RunRef,
        node: &str,
        ended: WorkerEnd,
        end: RunEnd,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let id = run.job_id;
        let active = self.jobs.get_mut(&id).expect("current job is active");
        let Some(worker) = active.workers.get_mut(run.rank as usize) else { return Ok(()) };
        if worker.end.is_some() {
            return Ok(());
        }
        let failed = ended.state != JobState::Succeeded;
        let first_failure =
            failed && !active.workers.iter().any(|w| w.end.as_ref().is_some_and(|e| e.state != JobState::Succeeded));
        let message = format!("worker {} on node {node} ended: {}", run.rank, ended.message);
        let at_us = ended.finished_at_us;
        active.workers[run.rank as usize].end = Some(ended);
        tx.set_workers(id, &active.workers).await?;
        tx.event(id, at_us, active.state, &message).await?;
        fx.changed.push(id);
        let job = active.clone();
        let ends: Vec<WorkerEnded> = job
            .workers
            .iter()
            .filter_map(|w| {
                w.end.as_ref().map(|e| WorkerEnded {
                    rank: w.rank,
                    ending: ending_of(e.state),
                    message: e.message.clone(),
                    finished_at_us: e.finished_at_us,
                })
            })
            .collect();
        let stopping = job.preempted.is_some() || job.cancel_requested;
        let (rank, ending, text) = match lifecycle::gang_step(job.workers.len(), &ends, first_failure, stopping) {
            // A gang cannot go on without one of its workers: stop the others, keeping their output.
            GangStep::StopOthers => {
                fx.stops.extend(job.live_runs(id));
                return Ok(());
            }
            GangStep::Wait => return Ok(()),
            GangStep::AllEnded { rank, ending, text } => (rank, ending, text),
        };
        let decided = job.workers[rank as usize].end.as_ref().expect("the deciding worker ended");
        // The end that decides about retrying is the deciding worker's; the others were stopped for it. Its end as
        // reported now, or as recorded when it came earlier (a program that could not start is not retried).
        let end = match (rank == run.rank, decided.failed_to_start) {
            (true, _) => end,
            (false, true) => RunEnd::FailedToStart,
            (false, false) => RunEnd::Exited,
        };
        let started = job.started_at_us.or(job.workers.iter().filter_map(|w| w.started_at_us).min());
        let at_us = job.workers.iter().filter_map(|w| w.end.as_ref().map(|e| e.finished_at_us)).max().unwrap_or(at_us);
        let ended =
            Ended { state: job_state(ending), text, end, exit_code: decided.exit_code, signal: decided.signal, at_us };
        self.job_ended(id, &job, started, ended, tx, fx).await
    }

    /// Ends a job whose every run has ended: requeued after a preemption, retried after a failure, or finished.
    async fn job_ended(
        &mut self,
        id: u64,
        job: &Active,
        started_at_us: Option<i64>,
        ended: Ended,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let ran_s = started_at_us.map_or(0, |s| (ended.at_us - s).max(0) / 1_000_000);
        let next = lifecycle::after_runs(
            &job.life(),
            ending_of(ended.state),
            &ended.text,
            core_end(ended.end),
            ran_s,
            self.clock.now_us(),
        );
        match next {
            Next::Requeue { attempt, attempts, preemptions, not_before_us, cause, reason } => {
                let mut requeued = Active { preemptions, preempted: None, ..job.clone() };
                // The least-attained order files a job by the GPU time its attempts had.
                let gpus = u64::from(job.request.resources.gpus) * u64::from(job.request.workers());
                let attained = (ran_s.max(0) as u64).saturating_mul(gpus);
                requeued.request.attained_gpu_s = requeued.request.attained_gpu_s.saturating_add(attained);
                let why = requeue_record(cause, attempt, attempts, not_before_us, None);
                self.requeue(id, &requeued, attempt, not_before_us, (&reason, why), tx, fx).await
            }
            Next::Finish { ending, reason } => {
                tx.finished(id, job_state(ending), ended.exit_code, ended.signal, &reason, ended.at_us).await?;
                if ending == Ending::Succeeded {
                    // Only a success says how long the work takes; a crash or a stop at the limit does not.
                    let (kind_key, name_key) = job.kind;
                    self.predictor.record_keys(kind_key, name_key, ran_s as u64);
                }
                self.end_job(id, fx);
                Ok(())
            }
        }
    }

    /// Puts a job back in the queue as `attempt`, not to start before `not_before_us`, for why (in words and as
    /// data).
    #[allow(clippy::too_many_arguments)]
    async fn requeue(
        &mut self,
        id: u64,
        job: &Active,
        attempt: u32,
        not_before_us: i64,
        (why, reason): (&str, RequeueRecord),
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let preemptions = job.preemptions;
        let requeue = Requeue { attempt, not_before_us, preemptions, attained_gpu_s: job.request.attained_gpu_s };
        tx.requeued(id, &requeue, self.clock.now_us(), why, reason).await?;
        self.sched.apply(Event::JobEnded { id }).expect("ending a job never fails");
        let request = JobRequest { not_before_us, ..job.request(id) };
        self.sched.apply(Event::JobSubmitted(request)).expect("an ended job may be queued again");
        self.jobs.remove(&id);
        self.queued.insert(id, Queued { kind: job.kind, attempt, retries: job.retries, preemptions: job.preemptions });
        fx.changed.push(id);
        Ok(())
    }

    /// A run is gone without an exit status (`why`, in words and as data): requeue it if retries allow, else record
    /// it lost.
    async fn lose(
        &mut self,
        id: u64,
        attempt: u32,
        (why, loss): (&str, LossRecord),
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(job) = self.jobs.get(&id).filter(|j| j.attempt == attempt).cloned() else { return Ok(()) };
        fx.ended.extend(job.runs(id));
        if !job.workers.is_empty() {
            // The gang's other workers still run on nodes that are fine: stop them.
            fx.stops.extend(job.live_runs(id));
        }
        match lifecycle::after_loss(&job.life(), why, self.clock.now_us()) {
            Next::Requeue { attempt, attempts, not_before_us, cause, reason, .. } => {
                let why = requeue_record(cause, attempt, attempts, not_before_us, Some(loss));
                self.requeue(id, &job, attempt, not_before_us, (&reason, why), tx, fx).await?;
            }
            Next::Finish { ending: Ending::Lost, reason } => {
                tx.lost(id, &reason, self.clock.now_us(), loss).await?;
                self.end_job(id, fx);
            }
            Next::Finish { ending, reason } => {
                tx.finished(id, job_state(ending), None, None, &reason, self.clock.now_us()).await?;
                self.end_job(id, fx);
            }
        }
        Ok(())
    }

    /// Tells the core the time and applies what the node lifecycle decides of it: nodes that stopped reporting go
    /// not ready and their jobs are lost or requeued; nodes asked of elastic pools that never joined are given up.
    async fn tick(&mut self, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        let decisions = self.sched.apply(Event::Tick { now_us: self.clock.now_us() }).expect("a tick never fails");
        let mut silent = HashMap::new();
        for decision in decisions {
            match decision {
                Decision::NodeNotReady { node, reason } => {
                    tracing::warn!(node = %node, silent_s = reason.silent_s, "node stopped reporting; marking it not ready");
                    tx.set_node_ready(&node, false).await?;
                    self.agents.forget_node(&node);
                    silent.insert(node, reason);
                }
                Decision::Lost { job, node } => {
                    // The core lost the job's current run; a job the driver no longer holds has nothing to lose.
                    let Some(attempt) = self.jobs.get(&job).map(|j| j.attempt) else { continue };
                    let (why, cause) = match silent.get(&node) {
                        Some(reason) => (
                            format!("node {node} stopped reporting for {}s", reason.timeout_s),
                            LossCauseRecord::NodeSilent { timeout_s: reason.timeout_s },
                        ),
                        None => (format!("node {node} went down"), LossCauseRecord::NodeDown),
                    };
                    let loss = LossRecord { node: Some(node), cause };
                    // The core already released the job; `lose` re-enters it in the queue if it is retried.
                    self.lose(job, attempt, (&why, loss), tx, fx).await?;
                }
                // The server makes no pool elastic yet (cloud providers are the next issue), so nothing is asked of a
                // provider and nothing can be given up; say so rather than act.
                other => {
                    tracing::warn!(decision = ?other, "elastic pools are not supported by the server yet; decision ignored")
                }
            }
        }
        Ok(())
    }

    /// Runs one scheduling cycle and records each start and preemption.
    async fn place(&mut self, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        for decision in self.sched.schedule() {
            match decision {
                Decision::Start { job, allocation, reason } => self.start_job(job, allocation, reason, tx, fx).await?,
                Decision::Preempt { job, by, reason } => self.preempt(job, by, reason, tx, fx).await?,
                // A cycle loses no job and times nothing out: those come of events and ticks.
                Decision::Lost { .. } | Decision::NodeNotReady { .. } | Decision::Abandon { .. } => {}
                // Cloud provisioning is a later issue: the server's config never makes a pool elastic yet, so the core
                // does not ask for nodes or releases; if it ever does, say so rather than act.
                Decision::Provision { .. } | Decision::Release { .. } => {
                    tracing::warn!(?decision, "elastic pools are not supported by the server yet; decision ignored")
                }
            }
        }
        Ok(())
    }

    async fn start_job(
        &mut self,
        job: u64,
        allocation: Allocation,
        reason: ferry_core::Placement,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(mut record) = tx.job(job).await? else {
            tracing::error!(job, "the core started a job the store does not have");
            return Ok(());
        };
        let secrets = match self.secrets.resolve(tx, &record.spec).await? {
            Ok(secrets) => secrets,
            Err(why) => {
                // Nothing can start it as asked: it fails at once rather than waiting for a secret that may never
                // come back.
                tx.finished(job, JobState::Failed, None, None, &why, self.clock.now_us()).await?;
                self.end_job(job, fx);
                return Ok(());
            }
        };
        let gpus = |g: &[u32]| g.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",");
        let cpus = format_cpus(allocation.resources.cpu_millis);
        let why = if allocation.peers.is_empty() {
            format!(
                "placed on node {} with GPUs [{}] and {cpus} CPUs: {reason}",
                allocation.node,
                gpus(&allocation.gpus)
            )
        } else {
            let workers: Vec<String> = allocation
                .workers()
                .enumerate()
                .map(|(rank, (node, g))| format!("rank {rank} on node {node} with GPUs [{}]", gpus(g)))
                .collect();
            format!("placed as a gang: {}; {cpus} CPUs each: {reason}", workers.join(", "))
        };
        let placement = crate::convert::placement(&reason, &allocation);
        tx.placed(job, &allocation.node, &allocation.gpus, self.clock.now_us(), &why, placement).await?;
        let queued = self.queued.remove(&job).expect("a started job was queued");
        let request = self.sched.request(job).expect("the core holds the job it started");
        let active = self.jobs.entry(job).insert_entry(Active::placed(queued, request)).into_mut();
        active.node = Some(allocation.node.clone());
        if !allocation.peers.is_empty() {
            active.workers = allocation
                .workers()
                .enumerate()
                .map(|(rank, (node, gpu_ids))| JobWorker {
                    rank: rank as u32,
                    node: node.to_string(),
                    gpu_ids: gpu_ids.to_vec(),
                    started_at_us: None,
                    end: None,
                })
                .collect();
            tx.set_workers(job, &active.workers).await?;
        }
        let active = active.clone();
        record.attempt = active.attempt;
        record.gpu_ids = allocation.gpus;
        fx.launches.extend(self.assignments(&record, &active, &secrets));
        fx.changed.push(job);
        Ok(())
    }

    /// What each node of a placed job must start: one assignment, or one per worker of a gang with the variables
    /// that let the workers find each other (`torchrun` and TensorFlow read them without further flags).
    fn assignments(&self, record: &JobRecord, active: &Active, secrets: &SecretEnv) -> Vec<(String, Assignment)> {
        if active.workers.is_empty() {
            let assignment = |node: &String| (node.clone(), self.assignment(record, &record.gpu_ids, secrets));
            return active.node.iter().map(assignment).collect();
        }
        let addresses: Vec<String> = active
            .workers
            .iter()
            .map(|w| self.nodes.get(&w.node).map_or_else(|| w.node.clone(), |l| l.address.clone()))
            .collect();
        let port = (GANG_PORT_BASE + record.id % GANG_PORT_SPAN).to_string();
        active
            .workers
            .iter()
            .map(|w| {
                let mut a = self.assignment(record, &w.gpu_ids, secrets);
                a.run.rank = w.rank;
                for (key, value) in gang_env(w.rank, &addresses, &port) {
                    // What the user set explicitly wins.
                    a.env.entry(key).or_insert(value);
                }
                (w.node.clone(), a)
            })
            .collect()
    }

    /// One run of a job on a node, with the job's MLflow variables and its secrets.
    fn assignment(&self, record: &JobRecord, gpus: &[u32], secrets: &SecretEnv) -> Assignment {
        let mut a = assignment(record, gpus);
        a.secrets = secrets.clone();
        self.tracking.add(record, &mut a.env, &mut a.secrets);
        a
    }

    /// Stops a running job, with its grace period, so that `by` can start; its end requeues it.
    async fn preempt(
        &mut self,
        job: u64,
        by: u64,
        reason: ferry_core::PreemptReason,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(active) = self.jobs.get_mut(&job) else { return Ok(()) };
        if active.node.is_none() {
            return Ok(());
        }
        let why = format!("preempted for job {by}: {reason}");
        let message = format!("{why}; stopping it with a grace of {STOP_GRACE_S}s");
        let preemption = crate::convert::preemption(by, &reason, STOP_GRACE_S);
        tx.preempting(job, self.clock.now_us(), active.state, &message, preemption).await?;
        active.preempted = Some(why);
        fx.stops.extend(active.live_runs(job));
        fx.changed.push(job);
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

/// The first port a gang's rank 0 listens on for its peers; a job's port is this plus its id modulo the span, unless
/// the job sets `MASTER_PORT` itself.
const GANG_PORT_BASE: u64 = 29_500;
const GANG_PORT_SPAN: u64 = 1000;

/// The variables one worker of a gang gets: Ferry's own, the ones PyTorch's `torchrun` reads (`PET_*`, and
/// `MASTER_ADDR`/`MASTER_PORT` for `torch.distributed`), and TensorFlow's `TF_CONFIG`.
fn gang_env(rank: u32, addresses: &[String], port: &str) -> Vec<(String, String)> {
    let n = addresses.len().to_string();
    let master = addresses.first().cloned().unwrap_or_default();
    let workers: Vec<String> = addresses.iter().map(|a| format!("{a}:{port}")).collect();
    let tf_config = serde_json::json!({
        "cluster": { "worker": workers },
        "task": { "type": "worker", "index": rank },
    });
    [
        ("FERRY_NODE_RANK", rank.to_string()),
        ("FERRY_NUM_NODES", n.clone()),
        ("FERRY_NODES", addresses.join(",")),
        ("MASTER_ADDR", master.clone()),
        ("MASTER_PORT", port.to_string()),
        ("NODE_RANK", rank.to_string()),
        ("NNODES", n.clone()),
        ("PET_NNODES", n),
        ("PET_NODE_RANK", rank.to_string()),
        ("PET_MASTER_ADDR", master),
        ("PET_MASTER_PORT", port.to_string()),
        ("TF_CONFIG", tf_config.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn assignment(record: &JobRecord, gpus: &[u32]) -> Assignment {
    Assignment {
        run: RunRef::new(record.id, record.attempt),
        command: record.spec.command.clone(),
        workdir: record.spec.workdir.clone(),
        code: record.spec.code.as_ref().map(|c| c.sha256.clone()),
        env: record.spec.env.clone(),
        secrets: SecretEnv::default(),
        owner: record.spec.owner.clone(),
        cpu_millis: record.spec.resources.cpu_millis,
        memory_bytes: record.spec.resources.memory_bytes,
        gpu_ids: gpus.to_vec(),
        max_runtime_s: record.spec.max_runtime_s,
        grace_s: STOP_GRACE_S,
        image: record.spec.image.clone(),
    }
}

#[cfg(test)]
mod queue_tests {
    use ferry_api::jobs::{QueueGroup, QueueSummary};
    use ferry_core::Resources;

    use super::{DriverMetrics, QueuedMetrics, RunMetrics};

    #[test]
    fn the_queue_is_counted_per_team_and_per_pool_a_job_could_run_in() {
        let queued = |team: &str, at: i64, pools: &[&str]| QueuedMetrics {
            team: team.into(),
            jobs: 1,
            submitted_at_us: at,
            pools: pools.iter().map(|p| p.to_string()).collect(),
        };
        let run = |job_id: u64, node: &str| RunMetrics {
            job_id,
            user: "u".into(),
            team: "t".into(),
            project: String::new(),
            node: node.into(),
            resources: Resources::new(1000, 1 << 30, 1),
            gpu_share_milli: 0,
            gpu_ids: vec![0],
        };
        let metrics = DriverMetrics {
            runs: vec![run(1, "a"), run(2, "a"), run(2, "b")],
            queued: vec![queued("ml", 30, &["local", "cloud"]), queued("ml", 10, &["local"]), queued("", 20, &[])],
            cycles: 0,
            cycle_seconds_sum: 0.0,
        };
        let group = |name: &str, queued, oldest| QueueGroup { name: name.into(), queued, oldest_queued_at_us: oldest };
        assert_eq!(
            metrics.queue_summary(),
            QueueSummary {
                queued: 3,
                placed: 2,
                oldest_queued_at_us: Some(10),
                teams: vec![group("", 1, 20), group("ml", 2, 10)],
                pools: vec![group("cloud", 1, 30), group("local", 2, 10)],
            }
        );
    }
}

/// The driver's lifecycle, deterministically: a manual clock, the store in a temporary file, commands applied in
/// batches as the driver's loop would.
#[cfg(test)]
mod lifecycle_tests {
    use ferry_api::agent::{RunEnd, RunRef, RunReport, RunStatus};
    use ferry_api::jobs::PriorityClass;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    async fn driver(clock: &ManualClock) -> (Driver, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        (driver_on(store, clock).await, dir)
    }

    /// A driver started on `store`, as a server restarting on its data would.
    async fn driver_on(store: Store, clock: &ManualClock) -> Driver {
        let sources = RunSources {
            tracking: crate::jobruns::TrackingEnv { key: Arc::new(vec![1; 32]), uri: None },
            secrets: Arc::new(crate::secrets::SecretBox::new(&[2; 32]).unwrap()),
            clock: Arc::new(clock.clone()),
        };
        let agents = Arc::new(AgentBackend::new("epoch".into()));
        let signals = Arc::new(Signals::default());
        let timeout = Duration::from_secs(30);
        let (driver, _handle, _commands) =
            Driver::start(store, agents, HashMap::new(), signals, timeout, FileConfig::default(), sources)
                .await
                .unwrap();
        driver
    }

    fn job(retries: u32) -> NewJob {
        NewJob {
            name: None,
            project: None,
            team: None,
            owner: "ana".into(),
            command: vec!["train".into()],
            workdir: "/tmp".into(),
            env: Default::default(),
            secrets: Default::default(),
            resources: Resources::new(1000, 1 << 30, 0),
            priority: PriorityClass::Normal,
            retries,
            max_runtime_s: None,
            gpu_share_milli: 0,
            gpu_types: Vec::new(),
            selector: Default::default(),
            nodes: 1,
            code: None,
            pool: None,
            image: None,
            tracking: None,
            sweep: None,
            checkpoints: false,
        }
    }

    /// Applies one command and returns its answer.
    async fn ask<T>(driver: &mut Driver, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        driver.apply_batch(vec![make(reply)]).await;
        answer.await.expect("every command is answered")
    }

    async fn state(driver: &Driver, id: u64) -> (JobState, u32) {
        let record = driver.store.job(id).await.unwrap().unwrap();
        (record.state, record.attempt)
    }

    fn finished(attempt: u32, code: i32, at_us: i64) -> Reports {
        let status = RunStatus::Finished {
            end: RunEnd::Exited,
            exit_code: Some(code),
            signal: None,
            finished_at_us: at_us,
            log_bytes: 0,
            message: None,
            started_at_us: Some(at_us - 1_000_000),
        };
        Reports { node: "n1".into(), runs: vec![RunReport { run: RunRef::new(1, attempt), status }], usage: None }
    }

    fn node(clock: &ManualClock) -> RegisterNode {
        RegisterNode {
            name: "n1".into(),
            pool: "local".into(),
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            gpus: Vec::new(),
            labels: Default::default(),
            agent_version: "test".into(),
            limits: "none".into(),
            address: None,
            runs: Vec::new(),
            now_us: clock.now_us(),
        }
    }

    #[tokio::test]
    async fn a_failed_run_is_retried_only_once_its_backoff_has_passed() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        let node = node(&clock);
        ask(&mut d, |reply| Command::Register { node, reply }).await.unwrap();
        let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(2)), key: None, reply }).await.unwrap().id;
        assert_eq!(state(&d, id).await, (JobState::Starting, 0), "placed in the batch that accepted it");

        // The run fails: the job is queued again, and stays queued for the 2 s of its first retry's backoff.
        let reports = finished(0, 1, clock.now_us());
        ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Queued, 1));
        clock.advance_s(1);
        d.apply_batch(Vec::new()).await;
        assert_eq!(state(&d, id).await, (JobState::Queued, 1), "still within its backoff");
        clock.advance_s(1);
        d.apply_batch(Vec::new()).await;
        assert_eq!(state(&d, id).await, (JobState::Starting, 1), "placed once the backoff has passed");

        // The second failure waits twice as long; the third is final (two retries were asked for).
        let reports = finished(1, 1, clock.now_us());
        ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
        clock.advance_s(3);
        d.apply_batch(Vec::new()).await;
        assert_eq!(state(&d, id).await, (JobState::Queued, 2));
        clock.advance_s(1);
        d.apply_batch(Vec::new()).await;
        assert_eq!(state(&d, id).await, (JobState::Starting, 2));
        let reports = finished(2, 1, clock.now_us());
        ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Failed, 2));
        let record = d.store.job(id).await.unwrap().unwrap();
        assert_eq!(record.finished_at_us, Some(clock.now_us()), "the driver records the clock it was given");
    }

    #[tokio::test]
    async fn a_node_silent_past_the_timeout_by_the_drivers_clock_loses_its_job_and_must_register_again() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        let first = node(&clock);
        ask(&mut d, |reply| Command::Register { node: first, reply }).await.unwrap();
        let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
        assert_eq!(state(&d, id).await, (JobState::Starting, 0));
        // A report at 20 s keeps it alive until 50 s by the clock the driver was given (the timeout is 30 s).
        clock.advance_s(20);
        let reports = Reports { node: "n1".into(), runs: Vec::new(), usage: None };
        ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
        clock.advance_s(30);
        d.apply_batch(Vec::new()).await;
        assert_eq!(state(&d, id).await, (JobState::Starting, 0), "silent for exactly the timeout");
        assert!(d.store.nodes().await.unwrap()[0].ready);
        clock.advance_s(1);
        d.apply_batch(Vec::new()).await;
        // Lost with its node and retried (one retry was asked for): queued, as no node is ready.
        assert_eq!(state(&d, id).await, (JobState::Queued, 1));
        assert!(!d.store.nodes().await.unwrap()[0].ready);
        let events = d.store.job_events(id).await.unwrap();
        let said = events.iter().any(|e| e.message.contains("node n1 stopped reporting for 30s"));
        assert!(said, "{events:?}");
        // Its reports are refused until it registers again; then the job is placed there again.
        let reports = Reports { node: "n1".into(), runs: Vec::new(), usage: None };
        let refused = ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap_err();
        assert!(refused.message.contains("register again"), "{}", refused.message);
        let again = node(&clock);
        ask(&mut d, |reply| Command::Register { node: again, reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Starting, 1));
    }

    #[tokio::test]
    async fn a_run_its_agent_forgot_is_lost_and_the_timeline_says_so_as_data() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        ask(&mut d, |reply| Command::Register { node: node(&clock), reply }).await.unwrap();
        let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(0)), key: None, reply }).await.unwrap().id;
        let running = RunStatus::Running { pid: 42, started_at_us: clock.now_us() };
        let run = RunRef { job_id: id, attempt: 0, rank: 0 };
        let reports = Reports { node: "n1".into(), runs: vec![RunReport { run, status: running }], usage: None };
        ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Running, 0));
        // The agent comes back with no record of the run (its data directory was wiped): no retry is left.
        ask(&mut d, |reply| Command::Register { node: node(&clock), reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Lost, 0));
        let events = d.store.job_events(id).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.message, "its node's agent restarted without any record of it");
        let loss = LossRecord { node: Some("n1".into()), cause: LossCauseRecord::RunForgotten };
        assert_eq!(last.reason, Some(ferry_store::EventReason::Lost(loss)));
    }

    #[tokio::test]
    async fn a_job_a_restart_cannot_take_back_is_lost_and_the_timeline_says_so_as_data() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        // No node: the job stays queued. The store then says it runs, on no node (as a torn write could leave it).
        let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
        let mut tx = d.store.begin().await.unwrap();
        tx.running(id, clock.now_us(), "running").await.unwrap();
        tx.commit().await.unwrap();
        let store = d.store.clone();
        drop(d);
        let d = driver_on(store, &clock).await;
        assert_eq!(state(&d, id).await, (JobState::Lost, 0));
        let events = d.store.job_events(id).await.unwrap();
        let last = events.last().unwrap();
        assert_eq!(last.message, "lost when the server restarted: it was placed on no node");
        let loss = LossRecord { node: None, cause: LossCauseRecord::ServerRestart };
        assert_eq!(last.reason, Some(ferry_store::EventReason::Lost(loss)));
    }

    #[tokio::test]
    async fn a_requeued_jobs_preemptions_and_attained_gpu_time_survive_a_restart() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        let first = node(&clock);
        ask(&mut d, |reply| Command::Register { node: first, reply }).await.unwrap();
        let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
        // Requeued as if preempted after an hour on a GPU: one preemption, 3,600 GPU-seconds attained.
        let mut job = d.jobs[&id].clone();
        job.preemptions = 1;
        job.request.attained_gpu_s = 3600;
        let (mut tx, mut fx) = (d.store.begin().await.unwrap(), Effects::default());
        let why = requeue_record(RequeueCause::Preempted { ran_s: 3600 }, 1, 3, 0, None);
        d.requeue(id, &job, 1, 0, ("preempted", why), &mut tx, &mut fx).await.unwrap();
        tx.commit().await.unwrap();
        let store = d.store.clone();
        drop(d);
        let d = driver_on(store, &clock).await;
        let record = d.store.job(id).await.unwrap().unwrap();
        assert_eq!((record.attempt, record.preemptions, record.attained_gpu_s), (1, 1, 3600));
        assert_eq!(d.queued[&id].preemptions, 1, "the preemption does not count against its one retry");
        assert_eq!(d.sched.request(id).unwrap().attained_gpu_s, 3600, "least-attained files it by its GPU time");
        // The timeline says why as data: the cause and the attempt, counted from 1.
        let events = d.store.job_events(id).await.unwrap();
        let expected = RequeueRecord {
            cause: RequeueCauseRecord::Preempted { ran_s: 3600 },
            attempt: 2,
            attempts: 3,
            not_before_us: 0,
        };
        assert_eq!(events.last().unwrap().reason, Some(ferry_store::EventReason::Requeued(expected)));
    }

    #[tokio::test]
    async fn cycles_are_paced_only_when_the_queue_is_deep_and_they_are_slow() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        let slow = Some((Instant::now(), Duration::from_secs(3600)));
        d.last_cycle = slow;
        assert!(d.cycle_due(), "a short queue gets a cycle after every batch, however slow the last one was");
        for id in 1..=PACED_QUEUE_MIN as u64 {
            let request = JobRequest::new(id, Resources::new(1000, 1 << 30, 0), 0);
            d.sched.apply(Event::JobSubmitted(request)).unwrap();
        }
        assert!(!d.cycle_due(), "a deep queue waits as long as its last cycle took");
        d.last_cycle = Some((Instant::now(), PACED_CYCLE_MIN / 2));
        assert!(d.cycle_due(), "quick cycles are never put off");
        d.last_cycle = Some((Instant::now() - Duration::from_millis(200), Duration::from_millis(100)));
        assert!(d.cycle_due(), "the wait is over");
    }

    #[tokio::test]
    async fn a_retry_waiting_out_its_backoff_still_waits_after_a_restart() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        let node = node(&clock);
        ask(&mut d, |reply| Command::Register { node, reply }).await.unwrap();
        let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
        let reports = finished(0, 1, clock.now_us());
        ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Queued, 1));
        // The server restarts a second later: the job remembers when it may start.
        let store = d.store.clone();
        drop(d);
        clock.advance_s(1);
        let mut d = driver_on(store, &clock).await;
        d.apply_batch(Vec::new()).await;
        assert_eq!(state(&d, id).await, (JobState::Queued, 1), "still within its backoff after the restart");
        clock.advance_s(1);
        d.apply_batch(Vec::new()).await;
        assert_eq!(state(&d, id).await, (JobState::Starting, 1));
    }

    /// A queued job's request lives in the core alone: the driver keeps only its counters until it is placed, and
    /// gets the request back from the core then (and for a requeue, from its placed record).
    #[tokio::test]
    async fn a_queued_job_is_held_once_and_placed_with_the_cores_request() {
        let clock = ManualClock::at(1_800_000_000_000_000);
        let (mut d, _dir) = driver(&clock).await;
        let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
        assert_eq!(state(&d, id).await, (JobState::Queued, 0), "no node yet");
        assert!(d.jobs.is_empty() && d.queued.contains_key(&id));
        assert_eq!(d.sched.request(id).map(|r| r.user), Some(job(1).owner));

        let node = node(&clock);
        ask(&mut d, |reply| Command::Register { node, reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Starting, 0));
        assert!(d.queued.is_empty());
        assert_eq!(Some(&d.jobs[&id].request), d.sched.request(id).as_ref());

        // A failed run requeues it: back to counters, with the attempt counted.
        let reports = finished(0, 1, clock.now_us());
        ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
        assert_eq!(state(&d, id).await, (JobState::Queued, 1));
        assert!(d.jobs.is_empty());
        assert_eq!(d.queued[&id].attempt, 1);
        ask(&mut d, |reply| Command::Cancel { id, by: "ana".into(), reply }).await.unwrap();
        assert!(d.queued.is_empty() && d.sched.request(id).is_none());
    }
}
