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
    Assignment, RegisterNode, Registered, Reports, ReportsAck, RunEnd, RunRef, RunReport, RunStatus,
};
use ferry_api::jobs::JobState;
use ferry_api::ErrorCode;
use ferry_backends::agent::AgentBackend;
use ferry_backends::ComputeBackend;
use ferry_core::resources_fmt::format_cpus;
use ferry_core::{Allocation, Decision, Event, JobRequest, NodeInfo, Resources, Scheduler, WaitReason};
use ferry_store::{JobRecord, NewJob, NodeRecord, Store, StoreError, Tx};
use tokio::sync::{mpsc, oneshot};

use crate::config::FileConfig;
use crate::error::ApiError;
use crate::signals::Signals;

/// Commands waiting for the driver; a full queue makes handlers wait, which is the back-pressure we want.
const COMMAND_QUEUE_MAX: usize = 16_384;
/// The most commands applied in one transaction.
const BATCH_MAX: usize = 1024;
/// How often the driver checks that nodes still report.
const LIVENESS_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How often agents must report; the node timeout should be several of these.
pub const HEARTBEAT_MS: u64 = 1000;
/// Seconds between SIGTERM and SIGKILL when a run is stopped.
pub const STOP_GRACE_S: u64 = 10;

type Reply<T> = oneshot::Sender<Result<T, ApiError>>;

pub enum Command {
    Submit {
        job: NewJob,
        reply: Reply<u64>,
    },
    Cancel {
        id: u64,
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
    /// Why a queued job waits, and when it can be expected to start.
    Explain {
        id: u64,
        reply: oneshot::Sender<(Option<WaitReason>, Option<i64>)>,
    },
    Allocations {
        reply: oneshot::Sender<BTreeMap<String, (Resources, Vec<u64>)>>,
    },
}

#[derive(Clone)]
pub struct DriverHandle {
    tx: mpsc::Sender<Command>,
}

impl DriverHandle {
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ApiError::unavailable())?;
        answer.await.map_err(|_| ApiError::unavailable())?
    }

    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| ApiError::unavailable())?;
        answer.await.map_err(|_| ApiError::unavailable())
    }
}

/// What the driver knows of an unfinished job; the full specification stays in the store.
#[derive(Clone, Debug)]
struct Active {
    /// What the scheduler core knows of the job.
    request: JobRequest,
    state: JobState,
    attempt: u32,
    retries: u32,
    node: Option<String>,
    cancel_requested: bool,
    /// Set, with the reason, while the job is stopped to make room for another; its end requeues it.
    preempted: Option<String>,
    /// Attempts that preemption used; they do not count against the job's retries.
    preemptions: u32,
    started_at_us: Option<i64>,
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
        ..JobRequest::new(id, job.resources, job.priority.value())
    }
}

impl Active {
    fn from_record(r: &JobRecord) -> Active {
        Active {
            request: core_request(r.id, &r.spec, r.submitted_at_us),
            state: r.state,
            attempt: r.attempt,
            retries: r.spec.retries,
            node: r.node.clone(),
            cancel_requested: r.cancel_requested,
            preempted: None,
            preemptions: 0,
            started_at_us: r.started_at_us,
        }
    }

    fn from_new(id: u64, job: &NewJob, submitted_at_us: i64) -> Active {
        Active {
            request: core_request(id, job, submitted_at_us),
            state: JobState::Queued,
            attempt: 0,
            retries: job.retries,
            node: None,
            cancel_requested: false,
            preempted: None,
            preemptions: 0,
            started_at_us: None,
        }
    }

    fn request(&self, id: u64) -> JobRequest {
        JobRequest { id, ..self.request.clone() }
    }

    /// Whether a failure may be retried: preemptions do not use up retries.
    fn may_retry(&self) -> bool {
        self.attempt - self.preemptions.min(self.attempt) < self.retries
    }
}

struct Liveness {
    info: NodeInfo,
    last_seen: Instant,
    ready: bool,
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

pub struct Driver {
    store: Store,
    sched: Scheduler,
    agents: Arc<AgentBackend>,
    signals: Arc<Signals>,
    jobs: HashMap<u64, Active>,
    nodes: HashMap<String, Liveness>,
    node_timeout: Duration,
    config: FileConfig,
}

fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

impl Driver {
    /// Builds the driver from the store's contents and returns it with the handle handlers use.
    pub async fn start(
        store: Store,
        agents: Arc<AgentBackend>,
        signals: Arc<Signals>,
        node_timeout: Duration,
        config: FileConfig,
    ) -> Result<(Driver, DriverHandle, mpsc::Receiver<Command>), StoreError> {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE_MAX);
        let mut driver = Driver {
            store,
            sched: Scheduler::new(),
            agents,
            signals,
            jobs: HashMap::new(),
            nodes: HashMap::new(),
            node_timeout,
            config,
        };
        driver.reload().await?;
        Ok((driver, DriverHandle { tx }, rx))
    }

    /// Rebuilds the core from the store: nodes get a fresh timeout to report, running jobs are adopted where they
    /// run, jobs placed but unconfirmed are sent to their node again.
    async fn reload(&mut self) -> Result<(), StoreError> {
        self.sched = Scheduler::new();
        let pools = self.config.pools.iter().map(|p| p.info.clone()).collect();
        self.sched.apply(Event::PoolsConfigured(pools)).expect("configuring pools never fails");
        let teams = Event::TeamsConfigured {
            teams: self.config.teams.clone(),
            fair_share_half_life_s: self.config.fair_share_half_life_s,
        };
        self.sched.apply(teams).expect("configuring teams never fails");
        self.sched.apply(Event::PlacementConfigured(self.config.gpu_placement)).expect("configuring never fails");
        self.jobs.clear();
        self.nodes.clear();
        for record in self.store.nodes().await? {
            let info = node_info(&record);
            if let Err(e) = self.sched.apply(Event::NodeUp(info.clone())) {
                tracing::error!(node = %record.name, error = %e, "stored node is inconsistent; ignoring it");
                continue;
            }
            self.nodes.insert(record.name.clone(), Liveness { info, last_seen: Instant::now(), ready: true });
        }
        let mut tx = self.store.begin().await?;
        let mut fx = Effects::default();
        for record in self.store.unfinished_jobs().await? {
            let active = Active::from_record(&record);
            let adopted = match (&record.state, &record.node) {
                (JobState::Queued, _) => self.sched.apply(Event::JobSubmitted(active.request(record.id))),
                (_, Some(node)) => {
                    let allocation = Allocation {
                        node: node.clone(),
                        resources: record.spec.resources,
                        gpus: record.gpu_ids.clone(),
                        gpu_share_milli: record.spec.gpu_share_milli,
                        peers: Vec::new(),
                    };
                    self.sched.apply(Event::JobAdopted { request: active.request(record.id), allocation })
                }
                (_, None) => Err(ferry_core::CoreError::UnknownNode(String::new())),
            };
            if let Err(e) = adopted {
                let message = format!("lost when the server restarted: {e}");
                tx.finished(record.id, JobState::Lost, None, None, &message, now_us()).await?;
                continue;
            }
            let run = RunRef { job_id: record.id, attempt: record.attempt };
            if let Some(node) = &record.node {
                if record.cancel_requested {
                    fx.stops.push((node.clone(), run));
                } else if record.state == JobState::Starting {
                    fx.launches.push((node.clone(), assignment(&record, &record.gpu_ids)));
                }
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
        let mut fx = Effects::default();
        let outcome = async {
            let mut tx = self.store.begin().await?;
            for command in batch {
                self.handle(command, &mut tx, &mut fx).await?;
            }
            self.check_liveness(&mut tx, &mut fx).await?;
            self.place(&mut tx, &mut fx).await?;
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
                }
            }
        }
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
            if let Err(e) = self.agents.launch(&node, assignment).await {
                tracing::error!(node = %node, error = %e, "launch refused");
            }
        }
        for (node, run) in fx.stops {
            if let Err(e) = self.agents.stop(&node, run).await {
                tracing::error!(node = %node, error = %e, "stop refused");
            }
        }
        for job in fx.changed {
            self.signals.signal(job);
        }
        for job in fx.finished {
            self.signals.finish(job);
        }
    }

    async fn handle(&mut self, command: Command, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        match command {
            Command::Submit { job, reply } => {
                let result = self.submit(job, tx).await?;
                fx.reply(reply, result);
            }
            Command::Cancel { id, reply } => {
                let result = self.cancel(id, tx, fx).await?;
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
                let _ = reply.send((self.sched.explain(id), self.sched.estimate_start(id)));
            }
            Command::Allocations { reply } => {
                let mut by_node: BTreeMap<String, (Resources, Vec<u64>)> = BTreeMap::new();
                for (id, job) in &self.jobs {
                    if let (Some(node), JobState::Starting | JobState::Running) = (&job.node, job.state) {
                        let entry = by_node.entry(node.clone()).or_insert((Resources::ZERO, Vec::new()));
                        entry.0 = entry.0.checked_add(&job.request.resources).unwrap_or(entry.0);
                        entry.1.push(*id);
                    }
                }
                for (_, jobs) in by_node.values_mut() {
                    jobs.sort_unstable();
                }
                let _ = reply.send(by_node);
            }
        }
        Ok(())
    }

    async fn submit(&mut self, job: NewJob, tx: &mut Tx) -> Result<Result<u64, ApiError>, StoreError> {
        let now = now_us();
        let mut active = Active::from_new(0, &job, now);
        if let Err(reason) = self.sched.check_feasible(&active.request) {
            return Ok(Err(ApiError::new(ErrorCode::Unsatisfiable, format!("{reason}; {}", fix_for(&reason)))));
        }
        let id = tx.insert_job(&job, now).await?;
        active.request.id = id;
        self.sched.apply(Event::JobSubmitted(active.request(id))).expect("a fresh id is unknown to the core");
        self.jobs.insert(id, active);
        Ok(Ok(id))
    }

    async fn cancel(&mut self, id: u64, tx: &mut Tx, fx: &mut Effects) -> Result<Result<(), ApiError>, StoreError> {
        let Some(active) = self.jobs.get_mut(&id) else {
            return Ok(Err(match tx.job(id).await? {
                Some(record) => ApiError::new(
                    ErrorCode::Conflict,
                    format!("job {id} already {}; there is nothing to cancel", record.state.name()),
                ),
                None => ApiError::not_found(format!("no job {id}; `ferry ps --all` lists jobs")),
            }));
        };
        match (active.state, active.node.clone()) {
            (JobState::Queued, _) | (_, None) => {
                tx.finished(id, JobState::Cancelled, None, None, "cancelled before it started", now_us()).await?;
                self.end_job(id, fx);
            }
            (_, Some(node)) => {
                if !active.cancel_requested {
                    active.cancel_requested = true;
                    tx.cancel_requested(id, now_us(), active.state).await?;
                    fx.stops.push((node, RunRef { job_id: id, attempt: active.attempt }));
                    fx.changed.push(id);
                }
            }
        }
        Ok(Ok(()))
    }

    fn end_job(&mut self, id: u64, fx: &mut Effects) {
        self.jobs.remove(&id);
        self.sched.apply(Event::JobEnded { id }).expect("ending a job never fails");
        fx.finished.push(id);
    }

    async fn register(&mut self, node: RegisterNode, tx: &mut Tx, fx: &mut Effects) -> Result<Registered, StoreError> {
        let now = now_us();
        let record = NodeRecord {
            name: node.name.clone(),
            pool: node.pool.clone(),
            cpu_millis: node.cpu_millis,
            memory_bytes: node.memory_bytes,
            gpus: node.gpus.clone(),
            labels: node.labels.clone(),
            agent_version: node.agent_version.clone(),
            limits: node.limits.clone(),
            ready: true,
            usage: None,
            last_seen_us: now,
        };
        tx.upsert_node(&record, now).await?;
        let info = node_info(&record);
        if let Err(e) = self.sched.apply(Event::NodeUp(info.clone())) {
            tracing::warn!(node = %node.name, error = %e, "node registration is inconsistent");
        }
        self.nodes.insert(node.name.clone(), Liveness { info, last_seen: Instant::now(), ready: true });
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
                j.node.as_deref() == Some(&node.name)
                    && j.state == JobState::Running
                    && !known.contains(&RunRef { job_id: **id, attempt: j.attempt })
            })
            .map(|(id, j)| (*id, j.attempt))
            .collect();
        for (id, attempt) in vanished {
            self.lose(id, attempt, "its node's agent restarted without any record of it", tx, fx).await?;
        }
        Ok(Registered { heartbeat_ms: HEARTBEAT_MS, stop })
    }

    async fn reports(
        &mut self,
        reports: Reports,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Result<ReportsAck, ApiError>, StoreError> {
        let Some(live) = self.nodes.get_mut(&reports.node) else {
            return Ok(Err(ApiError::not_found(format!("node {} is not registered; register first", reports.node))));
        };
        live.last_seen = Instant::now();
        if !live.ready {
            live.ready = true;
            let info = live.info.clone();
            tracing::info!(node = %reports.node, "node is reporting again");
            let _ = self.sched.apply(Event::NodeUp(info));
        }
        tx.node_seen(&reports.node, reports.usage.as_ref(), now_us()).await?;
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
        let current =
            self.jobs.get(&run.job_id).filter(|j| j.attempt == run.attempt && j.node.as_deref() == Some(node)).cloned();
        match (&report.status, current) {
            (RunStatus::Running { .. }, None) => {
                fx.ended.push((node.to_string(), run));
                Ok(Some(run))
            }
            (RunStatus::Running { pid, started_at_us }, Some(job)) => {
                fx.started.push((node.to_string(), run));
                if job.state == JobState::Starting {
                    tx.running(run.job_id, *started_at_us, &format!("running on node {node} as pid {pid}")).await?;
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
                // A run can end before its start was reported; the timeline still shows that it ran.
                if let (JobState::Starting, Some(started)) = (job.state, started_at_us) {
                    tx.running(run.job_id, *started, &format!("running on node {node}")).await?;
                }
                if let (Some(why), false) = (&job.preempted, job.cancel_requested) {
                    let ran_s =
                        started_at_us.or(job.started_at_us).map_or(0, |s| (finished_at_us - s).max(0) / 1_000_000);
                    let why = format!("{why}; {ran_s}s of work lost; requeued");
                    let preempted = Active { preemptions: job.preemptions + 1, preempted: None, ..job.clone() };
                    self.requeue(run.job_id, &preempted, &why, tx, fx).await?;
                    return Ok(None);
                }
                let (state, text) = outcome(&job, *end, *exit_code, *signal, message.as_deref());
                let retry = state == JobState::Failed && *end != RunEnd::FailedToStart && job.may_retry();
                if retry {
                    let why = format!("{text}; retrying (attempt {} of {})", job.attempt + 2, job.retries + 1);
                    self.requeue(run.job_id, &job, &why, tx, fx).await?;
                } else {
                    tx.finished(run.job_id, state, *exit_code, *signal, &text, *finished_at_us).await?;
                    self.end_job(run.job_id, fx);
                }
                Ok(None)
            }
        }
    }

    async fn requeue(
        &mut self,
        id: u64,
        job: &Active,
        why: &str,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let attempt = job.attempt + 1;
        tx.requeued(id, attempt, now_us(), why).await?;
        self.sched.apply(Event::JobEnded { id }).expect("ending a job never fails");
        let active = Active { state: JobState::Queued, attempt, node: None, started_at_us: None, ..job.clone() };
        self.sched.apply(Event::JobSubmitted(active.request(id))).expect("an ended job may be queued again");
        self.jobs.insert(id, active);
        fx.changed.push(id);
        Ok(())
    }

    /// A run is gone without an exit status: requeue it if retries allow, else record it lost.
    async fn lose(
        &mut self,
        id: u64,
        attempt: u32,
        why: &str,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(job) = self.jobs.get(&id).filter(|j| j.attempt == attempt).cloned() else { return Ok(()) };
        if let Some(node) = &job.node {
            fx.ended.push((node.clone(), RunRef { job_id: id, attempt }));
        }
        if job.cancel_requested {
            tx.finished(id, JobState::Cancelled, None, None, &format!("cancelled; {why}"), now_us()).await?;
            self.end_job(id, fx);
        } else if job.may_retry() {
            let why = format!("{why}; retrying (attempt {} of {})", job.attempt + 2, job.retries + 1);
            self.requeue(id, &job, &why, tx, fx).await?;
        } else {
            tx.finished(id, JobState::Lost, None, None, why, now_us()).await?;
            self.end_job(id, fx);
        }
        Ok(())
    }

    /// Marks nodes that stopped reporting as not ready, and loses or requeues their jobs.
    async fn check_liveness(&mut self, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        let timeout = self.node_timeout;
        let silent: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, l)| l.ready && l.last_seen.elapsed() > timeout)
            .map(|(name, _)| name.clone())
            .collect();
        for name in silent {
            tracing::warn!(node = %name, timeout_s = timeout.as_secs_f64(), "node stopped reporting; marking it not ready");
            self.nodes.get_mut(&name).expect("silent node is known").ready = false;
            tx.set_node_ready(&name, false).await?;
            self.agents.forget_node(&name);
            let decisions = self.sched.apply(Event::NodeDown { node: name.clone() }).unwrap_or_default();
            for decision in decisions {
                if let Decision::Lost { job, node } = decision {
                    let attempt = self.jobs.get(&job).map(|j| j.attempt).unwrap_or(0);
                    let why = format!("node {node} stopped reporting for {}s", timeout.as_secs());
                    // The core already released the job; `lose` re-enters it in the queue if it is retried.
                    self.lose(job, attempt, &why, tx, fx).await?;
                }
            }
        }
        Ok(())
    }

    /// Runs one scheduling cycle and records each start and preemption.
    async fn place(&mut self, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        self.sched.apply(Event::Tick { now_us: now_us() }).expect("a tick never fails");
        for decision in self.sched.schedule() {
            match decision {
                Decision::Start { job, allocation, reason } => self.start_job(job, allocation, reason, tx, fx).await?,
                Decision::Preempt { job, by, reason } => self.preempt(job, by, reason, tx, fx).await?,
                Decision::Lost { .. } => {}
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
        let Some(record) = tx.job(job).await? else {
            tracing::error!(job, "the core started a job the store does not have");
            return Ok(());
        };
        let why = format!(
            "placed on node {} with GPUs [{}] and {} CPUs: {reason}",
            allocation.node,
            allocation.gpus.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","),
            format_cpus(allocation.resources.cpu_millis)
        );
        tx.placed(job, &allocation.node, &allocation.gpus, now_us(), &why).await?;
        let active = self.jobs.get_mut(&job).expect("a started job is active");
        active.state = JobState::Starting;
        active.node = Some(allocation.node.clone());
        let mut assignment = assignment(&record, &allocation.gpus);
        assignment.run.attempt = active.attempt;
        fx.launches.push((allocation.node, assignment));
        fx.changed.push(job);
        Ok(())
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
        let Some(node) = active.node.clone() else { return Ok(()) };
        let why = format!("preempted for job {by}: {reason}");
        tx.event(job, now_us(), active.state, &format!("{why}; stopping it with a grace of {STOP_GRACE_S}s")).await?;
        active.preempted = Some(why);
        fx.stops.push((node, RunRef { job_id: job, attempt: active.attempt }));
        fx.changed.push(job);
        Ok(())
    }
}

/// What a user can change about a job that no node can run.
fn fix_for(reason: &WaitReason) -> &'static str {
    match reason {
        WaitReason::NoMatchingNode { .. } => "change --gpu-type or --selector",
        _ => "ask for less with --gpus, --cpus or --memory",
    }
}

/// The final state of a run and the sentence that says why.
fn outcome(
    job: &Active,
    end: RunEnd,
    exit_code: Option<i32>,
    signal: Option<i32>,
    message: Option<&str>,
) -> (JobState, String) {
    let status = match (exit_code, signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown exit status".to_string(),
    };
    if job.cancel_requested {
        return (JobState::Cancelled, format!("cancelled by request ({status})"));
    }
    match end {
        RunEnd::TimedOut => (JobState::TimedOut, format!("stopped after reaching its maximum runtime ({status})")),
        RunEnd::FailedToStart => (JobState::Failed, message.unwrap_or("the command could not be started").to_string()),
        RunEnd::Stopped => (JobState::Cancelled, format!("stopped by the server ({status})")),
        RunEnd::Exited if exit_code == Some(0) => (JobState::Succeeded, "exited with code 0".to_string()),
        RunEnd::Exited => (
            JobState::Failed,
            match message {
                Some(m) => format!("{status}: {m}"),
                None => status,
            },
        ),
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

fn assignment(record: &JobRecord, gpus: &[u32]) -> Assignment {
    Assignment {
        run: RunRef { job_id: record.id, attempt: record.attempt },
        command: record.spec.command.clone(),
        workdir: record.spec.workdir.clone(),
        env: record.spec.env.clone(),
        cpu_millis: record.spec.resources.cpu_millis,
        memory_bytes: record.spec.resources.memory_bytes,
        gpu_ids: gpus.to_vec(),
        max_runtime_s: record.spec.max_runtime_s,
        grace_s: STOP_GRACE_S,
    }
}
