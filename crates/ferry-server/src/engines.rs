//! The engine bridge: one task per engine pool (Slurm, Ray, Spark) that drives the engine as an agent drives its
//! node.
//!
//! The driver sees an engine's nodes as ordinary nodes named `<pool>/<engine node>`: the bridge registers them with
//! the capacity the engine reports, and its reports are their heartbeat. A start the driver decides reaches the
//! bridge through [`EngineBackend`] (the pool's `ComputeBackend`), which only queues it, so the driver never waits on
//! an engine. Each cycle, every `poll_interval`, the bridge then
//!
//! 1. asks the engine for its nodes, registering them when they change (an engine that does not answer is not
//!    heartbeated, so its nodes go not ready after the node timeout and nothing more is placed there);
//! 2. submits what was started (unpacking shipped code first), and tells the driver the native id and form;
//! 3. cancels what the driver stopped;
//! 4. asks the states of the runs it follows, ships their new output into the server's log store, and reports
//!    starts and ends (an end only once all its output is shipped), with the runs the driver no longer wants
//!    coming back to be cancelled.
//!
//! Every call to the engine has a timeout, so a slow engine slows only its own pool. Nothing here is durable: after a
//! restart the bridge follows again the unfinished runs the store places on its nodes (their native ids are in the
//! store), and the driver sends again the starts it has no confirmation of; submission by a deterministic native
//! name makes a repeated start find the run it already made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::agent::{Assignment, RegisterNode, Reports, RunEnd, RunRef, RunReport, RunStatus};
use ferry_api::jobs::JobState;
use ferry_api::nodes::EngineHealth;
use ferry_backends::engine::{native_name, Engine, EngineError, EngineJob, EngineNode, NativeState, SecretsFetch};
use ferry_backends::{BackendError, BackendFuture, Capabilities, ComputeBackend};
use ferry_core::IMAGES_LABEL;
use ferry_store::Store;
use tokio::sync::mpsc;

use crate::code::CodeStore;
use crate::config::EngineConfig;
use crate::driver::{now_us, Command, DriverHandle};
use crate::logs::LogStore;
use crate::signals::Signals;

/// The longest any one call to an engine may take before the bridge counts the engine as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Submissions sent to an engine at once.
const SUBMIT_CONCURRENCY: usize = 16;
/// Runs whose state is asked in one call.
const STATES_BATCH: usize = 500;
/// Output read per run and cycle, in chunks of `OUTPUT_CHUNK`.
const OUTPUT_CHUNK: usize = 1 << 20;
const OUTPUT_CHUNKS_PER_CYCLE: usize = 8;
/// How often the pool's code folder is swept of folders no unfinished job needs (and once at start): a run's folder
/// is removed when its end is reported, this catches those a restart or a vanished node left behind.
const CODE_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// What the driver asks of an engine pool; queued for the bridge.
#[derive(Debug)]
enum Order {
    Launch(String, Box<Assignment>),
    Stop(RunRef),
}

/// The `ComputeBackend` of one engine pool: it hands starts and stops to the pool's bridge and returns at once.
pub struct EngineBackend {
    kind: &'static str,
    orders: mpsc::UnboundedSender<Order>,
}

impl ComputeBackend for EngineBackend {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { nodes_report_themselves: false, gpu_placement: false, streams_logs: true }
    }

    fn launch<'a>(&'a self, node: &'a str, assignment: Assignment) -> BackendFuture<'a, Result<(), BackendError>> {
        let sent = self.orders.send(Order::Launch(node.to_string(), Box::new(assignment)));
        Box::pin(async move { sent.map_err(|_| BackendError::Refused("the engine bridge has stopped".into())) })
    }

    fn stop<'a>(&'a self, _node: &'a str, run: RunRef) -> BackendFuture<'a, Result<(), BackendError>> {
        let sent = self.orders.send(Order::Stop(run));
        Box::pin(async move { sent.map_err(|_| BackendError::Refused("the engine bridge has stopped".into())) })
    }
}

/// What the bridges last saw, for the API: each followed run's state in its engine, in words, by job id, and each
/// engine pool's health, by pool name. Shared by every bridge.
#[derive(Default)]
pub struct EngineStates {
    runs: std::sync::Mutex<std::collections::HashMap<u64, String>>,
    pools: std::sync::Mutex<std::collections::HashMap<String, EngineHealth>>,
}

impl EngineStates {
    pub fn get(&self, job: u64) -> Option<String> {
        self.runs.lock().expect("never poisoned: no panics inside").get(&job).cloned()
    }

    fn set(&self, job: u64, state: Option<String>) {
        let mut states = self.runs.lock().expect("never poisoned: no panics inside");
        match state {
            Some(state) => states.insert(job, state),
            None => states.remove(&job),
        };
    }

    /// An engine pool's health; one that no bridge has called yet is not answering, since no time.
    pub fn health(&self, pool: &str) -> EngineHealth {
        let pools = self.pools.lock().expect("never poisoned: no panics inside");
        pools.get(pool).cloned().unwrap_or(EngineHealth { answering: false, since_us: None, error: None })
    }

    fn set_health(&self, pool: &str, answering: bool, error: Option<String>) {
        let mut pools = self.pools.lock().expect("never poisoned: no panics inside");
        let health = pools.entry(pool.to_string()).or_insert(EngineHealth { answering, since_us: None, error: None });
        if health.answering != answering || health.since_us.is_none() {
            health.since_us = Some(now_us());
        }
        health.answering = answering;
        health.error = error;
    }
}

/// What the bridge needs of the rest of the server.
#[derive(Clone)]
pub struct BridgeContext {
    pub store: Store,
    pub logs: Arc<LogStore>,
    pub code: Arc<CodeStore>,
    pub signals: Arc<Signals>,
    pub states: Arc<EngineStates>,
    /// Distinguishes this installation's runs from another's on a shared engine.
    pub tag: String,
    /// Where code is unpacked for engine pools that do not set `code_dir`.
    pub default_code_root: PathBuf,
    /// The server's address as jobs on engines reach it, for `MLFLOW_TRACKING_URI`.
    pub tracking_uri: String,
    /// The key that signs jobs' tracking tokens and the tickets with which runs fetch their secrets.
    pub job_key: Arc<Vec<u8>>,
}

/// Builds the backend of an engine pool and the bridge that serves it; the bridge must be started with
/// [`Bridge::run`] once the driver's handle exists.
pub fn engine_pool(
    pool: &str,
    config: &EngineConfig,
    context: BridgeContext,
) -> Result<(Arc<EngineBackend>, Bridge), String> {
    let engine = ferry_backends::registry::build_engine(&config.kind, config.settings.clone())
        .map_err(|e| format!("pool {pool}: {e}"))?;
    let (orders, inbox) = mpsc::unbounded_channel();
    let code_root = config.code_dir.clone().unwrap_or_else(|| context.default_code_root.join(pool));
    let backend = Arc::new(EngineBackend { kind: engine.kind(), orders });
    let bridge = Bridge {
        pool: pool.to_string(),
        engine,
        poll_interval: config.poll_interval,
        code_root,
        context,
        inbox,
        runs: BTreeMap::new(),
        registered: BTreeMap::new(),
        down_since: None,
        cycled: false,
        code_swept: None,
    };
    Ok((backend, bridge))
}

/// One run the bridge follows.
#[derive(Debug)]
struct Tracked {
    /// The Ferry node it was placed on.
    node: String,
    /// What the driver asked for; `None` for a run found again after a restart, which is already submitted.
    assignment: Option<Box<Assignment>>,
    /// A gang's other workers: they run inside the same native submission and are reported with it.
    followers: Vec<(String, RunRef)>,
    native_id: Option<String>,
    /// Bytes of output already in the log store.
    shipped: u64,
    stop: bool,
    cancel_sent: bool,
    started_at_us: Option<i64>,
    /// The end to report, once all output is shipped.
    ended: Option<RunStatus>,
    /// Whether all output after the end is in the log store (always, for a run the engine never had).
    output_complete: bool,
    /// The job's maximum runtime, which the bridge enforces itself (not every engine can, and Slurm counts minutes).
    max_runtime_s: Option<u64>,
    /// Set when the bridge cancelled the run for its maximum runtime: its stop is then a timeout.
    timed_out: bool,
    /// The engine may have it already: it was started before this bridge's first cycle (the driver resends the
    /// starts it has no confirmation of after a restart), or a submission of it got no answer.
    maybe_submitted: bool,
}

impl Tracked {
    /// A run placed on `node`, not yet seen ending.
    fn new(node: String, max_runtime_s: Option<u64>, maybe_submitted: bool) -> Tracked {
        Tracked {
            node,
            assignment: None,
            followers: Vec::new(),
            native_id: None,
            shipped: 0,
            stop: false,
            cancel_sent: false,
            started_at_us: None,
            ended: None,
            output_complete: false,
            max_runtime_s,
            timed_out: false,
            maybe_submitted,
        }
    }
}

pub struct Bridge {
    pool: String,
    engine: Box<dyn Engine>,
    poll_interval: Duration,
    code_root: PathBuf,
    context: BridgeContext,
    inbox: mpsc::UnboundedReceiver<Order>,
    runs: BTreeMap<RunRef, Tracked>,
    /// The Ferry nodes registered, with the engine's view of each when it was.
    registered: BTreeMap<String, EngineNode>,
    /// Since when the engine has not answered, for one log line per outage.
    down_since: Option<Instant>,
    /// Whether a cycle has run: starts taken before the first one were sent before this bridge existed.
    cycled: bool,
    /// When the code folder was last swept of leftovers.
    code_swept: Option<Instant>,
}

impl Bridge {
    /// Follows the pool's unfinished runs found in the store, then serves the pool until the server stops.
    pub async fn run(mut self, driver: DriverHandle) {
        if let Err(e) = self.adopt().await {
            tracing::error!(pool = %self.pool, error = %e, "could not read the pool's runs from the store");
        }
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                order = self.inbox.recv() => match order {
                    Some(order) => self.take(order),
                    None => return,
                },
                _ = tick.tick() => {}
            }
            while let Ok(order) = self.inbox.try_recv() {
                self.take(order);
            }
            self.cycle(&driver).await;
        }
    }

    fn ferry_node(&self, engine_node: &str) -> String {
        format!("{}/{engine_node}", self.pool)
    }

    fn engine_node<'a>(&self, ferry_node: &'a str) -> &'a str {
        ferry_node.strip_prefix(&format!("{}/", self.pool)).unwrap_or(ferry_node)
    }

    async fn adopt(&mut self) -> Result<(), ferry_store::StoreError> {
        let nodes: BTreeSet<String> =
            self.context.store.nodes().await?.into_iter().filter(|n| n.pool == self.pool).map(|n| n.name).collect();
        for record in self.context.store.unfinished_jobs().await? {
            let (Some(node), Some(native)) = (&record.node, &record.native) else { continue };
            if !nodes.contains(node) || !matches!(record.state, JobState::Starting | JobState::Running) {
                continue;
            }
            let run = RunRef::new(record.id, record.attempt);
            let followers =
                record.workers.iter().skip(1).map(|w| (w.node.clone(), RunRef { rank: w.rank, ..run })).collect();
            let shipped = self.context.logs.size(record.id, record.attempt, 0).await;
            let tracked = Tracked {
                followers,
                native_id: Some(native.id.clone()),
                shipped,
                stop: record.cancel_requested,
                started_at_us: record.started_at_us,
                ..Tracked::new(node.clone(), record.spec.max_runtime_s, true)
            };
            self.runs.insert(run, tracked);
        }
        if !self.runs.is_empty() {
            tracing::info!(pool = %self.pool, runs = self.runs.len(), "following the pool's runs again");
        }
        Ok(())
    }

    fn take(&mut self, order: Order) {
        match order {
            Order::Launch(node, assignment) => {
                let run = assignment.run;
                if run.rank > 0 {
                    // A gang's worker: it runs inside rank 0's submission (the engine spans the nodes itself).
                    let leader = RunRef { rank: 0, ..run };
                    if let Some(t) = self.runs.get_mut(&leader) {
                        if !t.followers.iter().any(|(_, r)| *r == run) {
                            t.followers.push((node, run));
                        }
                    }
                    return;
                }
                match self.runs.get_mut(&run) {
                    // Sent again (a restart): keep what is known of it.
                    Some(t) => t.assignment = t.assignment.take().or(Some(assignment)),
                    None => {
                        let fresh = Tracked::new(node, assignment.max_runtime_s, !self.cycled);
                        self.runs.insert(run, Tracked { assignment: Some(assignment), ..fresh });
                    }
                }
            }
            Order::Stop(run) => {
                let leader = RunRef { rank: 0, ..run };
                if let Some(t) = self.runs.get_mut(&leader) {
                    t.stop = true;
                }
            }
        }
    }

    async fn call<T>(&self, what: &str, fut: BackendFuture<'_, Result<T, EngineError>>) -> Result<T, EngineError> {
        match tokio::time::timeout(CALL_TIMEOUT, fut).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::Unavailable {
                engine: self.engine.kind(),
                detail: format!("{what} took longer than {}s", CALL_TIMEOUT.as_secs()),
            }),
        }
    }

    async fn cycle(&mut self, driver: &DriverHandle) {
        self.cycled = true;
        if self.code_swept.is_none_or(|at| at.elapsed() >= CODE_SWEEP_EVERY) {
            self.code_swept = Some(Instant::now());
            self.sweep_code().await;
        }
        let nodes = match self.call("listing nodes", self.engine.nodes()).await {
            Ok(nodes) => {
                self.context.states.set_health(&self.pool, true, None);
                if let Some(since) = self.down_since.take() {
                    tracing::info!(pool = %self.pool, down_s = since.elapsed().as_secs(), "the engine answers again");
                }
                nodes
            }
            Err(e) => {
                self.context.states.set_health(&self.pool, false, Some(e.to_string()));
                if self.down_since.is_none() {
                    tracing::warn!(pool = %self.pool, error = %e, "the engine does not answer; its nodes will go not ready");
                    self.down_since = Some(Instant::now());
                }
                self.registered.clear();
                return;
            }
        };
        self.submit(driver).await;
        self.cancel().await;
        self.poll_states().await;
        self.ship_output().await;
        self.register(driver, &nodes).await;
        self.report(driver).await;
    }

    /// Registers the engine's nodes that are new or changed, each with the runs it holds.
    async fn register(&mut self, driver: &DriverHandle, nodes: &[EngineNode]) {
        let listed: BTreeSet<String> = nodes.iter().map(|n| self.ferry_node(&n.name)).collect();
        self.registered.retain(|name, _| listed.contains(name));
        for node in nodes {
            let name = self.ferry_node(&node.name);
            if !node.up {
                // A drained or failed node is not heartbeated: the driver marks it not ready after the timeout.
                self.registered.remove(&name);
                continue;
            }
            // Registration is for capacity; allocation and state change all the time and need none.
            let capacity = |n: &EngineNode| (n.cpu_millis, n.memory_bytes, n.gpus.clone());
            if self.registered.get(&name).is_some_and(|known| capacity(known) == capacity(node)) {
                continue;
            }
            let registration = RegisterNode {
                name: name.clone(),
                pool: self.pool.clone(),
                cpu_millis: node.cpu_millis,
                memory_bytes: node.memory_bytes,
                gpus: node.gpus.clone(),
                labels: BTreeMap::from([
                    ("ferry.engine".to_string(), self.engine.kind().to_string()),
                    (IMAGES_LABEL.to_string(), if self.engine.runs_images() { "yes" } else { "no" }.to_string()),
                ]),
                agent_version: format!("{} engine bridge {}", self.engine.kind(), env!("CARGO_PKG_VERSION")),
                limits: self.engine.kind().to_string(),
                address: None,
                runs: self.reports_for(&name).into_iter().filter_map(still_running).collect(),
                now_us: now_us(),
            };
            match driver.call(|reply| Command::Register { node: registration, reply }).await {
                Ok(registered) => {
                    self.stop_unwanted(&registered.stop);
                    self.registered.insert(name, node.clone());
                }
                Err(e) => tracing::warn!(pool = %self.pool, node = %name, error = %e.message, "registration failed"),
            }
        }
    }

    /// The state of every run (and gang worker) on one Ferry node that has something to say.
    fn reports_for(&self, node: &str) -> Vec<RunReport> {
        let mut reports = Vec::new();
        for (run, t) in &self.runs {
            let status = match (&t.ended, t.started_at_us) {
                (Some(ended), _) if t.output_complete || t.native_id.is_none() => ended.clone(),
                (_, Some(started_at_us)) => RunStatus::Running { pid: 0, started_at_us },
                (_, None) => continue,
            };
            if t.node == node {
                reports.push(RunReport { run: *run, status: status.clone() });
            }
            for (follower_node, follower) in &t.followers {
                if follower_node == node {
                    let status = match &status {
                        RunStatus::Finished {
                            end, exit_code, signal, finished_at_us, message, started_at_us, ..
                        } => RunStatus::Finished {
                            end: *end,
                            exit_code: *exit_code,
                            signal: *signal,
                            finished_at_us: *finished_at_us,
                            log_bytes: 0,
                            message: message.clone(),
                            started_at_us: *started_at_us,
                        },
                        running => running.clone(),
                    };
                    reports.push(RunReport { run: *follower, status });
                }
            }
        }
        reports
    }

    /// Heartbeats every registered node with its runs; ends that the driver took are forgotten.
    async fn report(&mut self, driver: &DriverHandle) {
        let names: Vec<String> = self.registered.keys().cloned().collect();
        for node in names {
            let runs = self.reports_for(&node);
            let reported_ends: Vec<RunRef> = runs
                .iter()
                .filter(|r| r.run.rank == 0 && matches!(r.status, RunStatus::Finished { .. }))
                .map(|r| r.run)
                .collect();
            let reports = Reports { node: node.clone(), runs, usage: None };
            match driver.call(|reply| Command::Reports { reports, reply }).await {
                Ok(ack) => {
                    self.stop_unwanted(&ack.stop);
                    for run in reported_ends {
                        self.runs.remove(&run);
                        self.context.states.set(run.job_id, None);
                        self.remove_code(run).await;
                    }
                }
                Err(e) => {
                    // A node the driver gave up on registers again, listing its runs.
                    tracing::info!(pool = %self.pool, node = %node, error = %e.message, "report refused; registering again");
                    self.registered.remove(&node);
                }
            }
        }
        // Ends of runs whose node is gone from the engine cannot be reported; the driver loses them by timeout.
        let registered = &self.registered;
        self.runs.retain(|_, t| t.ended.is_none() || registered.contains_key(&t.node));
    }

    fn stop_unwanted(&mut self, runs: &[RunRef]) {
        for run in runs {
            if let Some(t) = self.runs.get_mut(&RunRef { rank: 0, ..*run }) {
                t.stop = true;
            }
        }
    }

    /// Submits every run not yet in the engine, a few at a time.
    async fn submit(&mut self, driver: &DriverHandle) {
        let mut waiting: Vec<RunRef> = Vec::new();
        for (run, t) in self.runs.iter_mut() {
            if t.native_id.is_some() || t.ended.is_some() {
                continue;
            }
            if t.stop {
                t.ended =
                    Some(finished(RunEnd::Stopped, (None, None), 0, None, "stopped before the engine ran it".into()));
                continue;
            }
            waiting.push(*run);
        }
        for chunk in waiting.chunks(SUBMIT_CONCURRENCY) {
            let mut jobs = Vec::with_capacity(chunk.len());
            for run in chunk {
                match self.engine_job(*run).await {
                    Ok(job) => jobs.push((*run, job)),
                    Err(message) => {
                        let t = self.runs.get_mut(run).expect("waiting runs are tracked");
                        t.ended = Some(finished(RunEnd::FailedToStart, (None, None), 0, None, message));
                    }
                }
            }
            let submissions = jobs.iter().map(|(_, job)| self.call("submitting", self.engine.submit(job)));
            let results = futures_util::future::join_all(submissions).await;
            for ((run, job), result) in jobs.into_iter().zip(results) {
                match result {
                    Ok(submitted) => {
                        let node = self.runs[&run].node.clone();
                        let native = ferry_store::Native {
                            kind: self.engine.kind().to_string(),
                            id: submitted.native_id.clone(),
                            // The job's secrets (its tracking token among them) are shown nowhere, not even in
                            // its native form, whatever the engine put there.
                            spec: redacted(submitted.native_spec, &job.secrets),
                        };
                        let wanted = driver.call(|reply| Command::Native { node, run, native, reply }).await;
                        let t = self.runs.get_mut(&run).expect("submitted runs are tracked");
                        t.native_id = Some(submitted.native_id);
                        if !matches!(wanted, Ok(true)) {
                            t.stop = true;
                        }
                    }
                    Err(e) if e.is_transient() => {
                        // The request may have reached the engine: look for the run before submitting it again.
                        self.runs.get_mut(&run).expect("submitted runs are tracked").maybe_submitted = true;
                        tracing::warn!(pool = %self.pool, job = run.job_id, error = %e, "submission failed; retrying");
                    }
                    Err(e) => {
                        let t = self.runs.get_mut(&run).expect("submitted runs are tracked");
                        t.ended = Some(finished(RunEnd::FailedToStart, (None, None), 0, None, e.to_string()));
                    }
                }
            }
        }
    }

    /// The engine's form of a run: the assignment, the owner from the store, the gang's nodes, the unpacked code.
    async fn engine_job(&self, run: RunRef) -> Result<EngineJob, String> {
        let t = &self.runs[&run];
        let a = t.assignment.as_ref().ok_or("nothing to submit")?;
        let record = self.context.store.job(run.job_id).await.map_err(|e| format!("reading the job: {e}"))?;
        let (user, project) = record.map(|r| (r.spec.owner, r.spec.project.unwrap_or_default())).unwrap_or_default();
        let name = native_name(&self.context.tag, run.job_id, run.attempt, 0);
        let mut workdir = a.workdir.clone();
        if let (Some(sha), true) = (&a.code, workdir.is_empty()) {
            workdir = self.unpack(sha, &name).await?;
        }
        let mut nodes = vec![self.engine_node(&t.node).to_string()];
        nodes.extend(t.followers.iter().map(|(n, _)| self.engine_node(n).to_string()));
        Ok(EngineJob {
            name,
            job_id: run.job_id,
            attempt: run.attempt,
            node: nodes.join(","),
            user,
            project,
            command: a.command.clone(),
            env: {
                let mut env = a.env.clone();
                if env.contains_key(crate::jobruns::RUN_ID_VAR) {
                    env.entry(crate::jobruns::URI_VAR.to_string()).or_insert_with(|| self.context.tracking_uri.clone());
                }
                env
            },
            secrets: a.secrets.clone(),
            secrets_fetch: (!a.secrets.is_empty()).then(|| SecretsFetch {
                url: format!("{}/api/v1/runs/{}/{}/secrets", self.context.tracking_uri, run.job_id, run.attempt),
                ticket: crate::auth::fetch_ticket(&self.context.job_key, run.job_id, run.attempt),
                required: a.secrets.0.keys().any(|k| k != crate::jobruns::TOKEN_VAR),
            }),
            workdir,
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            gpus: a.gpu_ids.len() as u32,
            nodes: nodes.len() as u32,
            max_runtime_s: a.max_runtime_s,
            image: a.image.clone(),
            maybe_submitted: t.maybe_submitted,
        })
    }

    /// Unpacks a run's code under the pool's code directory (once per run name) and returns the folder.
    async fn unpack(&self, sha256: &str, name: &str) -> Result<String, String> {
        let archive = self.context.code.path(sha256);
        let dest = self.code_root.join(name);
        let dest_text = dest.to_string_lossy().into_owned();
        let root = self.code_root.clone();
        tokio::task::spawn_blocking(move || {
            if dest.is_dir() {
                return Ok(());
            }
            std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
            let partial = root.join(format!(".{}.partial", dest.file_name().unwrap_or_default().to_string_lossy()));
            let _ = std::fs::remove_dir_all(&partial);
            ferry_archive::unpack(&archive, &partial).map_err(|e| format!("unpacking the job's code: {e}"))?;
            std::fs::rename(&partial, &dest).map_err(|e| format!("cannot move the code into {}: {e}", dest.display()))
        })
        .await
        .map_err(|e| format!("unpacking the job's code: {e}"))??;
        Ok(dest_text)
    }

    /// Removes the unpacked code of a run whose end the driver took (nothing when it shipped none).
    async fn remove_code(&self, run: RunRef) {
        let dir = self.code_root.join(native_name(&self.context.tag, run.job_id, run.attempt, 0));
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("{}: {e}", dir.display())),
            _ => Ok(()),
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::warn!(pool = %self.pool, job = run.job_id, error = %e, "could not remove a run's code folder");
        }
    }

    /// Removes this installation's code folders (and partial unpackings) of jobs that are not unfinished any more:
    /// what a restart or a vanished node left behind. Folders of other installations sharing the directory are
    /// left alone.
    async fn sweep_code(&self) {
        let unfinished: BTreeSet<u64> = match self.context.store.unfinished_jobs().await {
            Ok(jobs) => jobs.into_iter().map(|j| j.id).collect(),
            Err(e) => {
                tracing::warn!(pool = %self.pool, error = %e, "cannot tell which code folders are needed; keeping them");
                return;
            }
        };
        let followed: BTreeSet<u64> = self.runs.keys().map(|r| r.job_id).collect();
        // `ferry-<tag>-`, as this installation's native names start.
        let full = native_name(&self.context.tag, 0, 0, 0);
        let prefix = full.strip_suffix("0-0").unwrap_or(&full).to_string();
        let root = self.code_root.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let entries = match std::fs::read_dir(&root) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                other => other.map_err(|e| format!("{}: {e}", root.display()))?,
            };
            let mut removed = 0;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(job) = code_folder_job(&name, &prefix) else { continue };
                if unfinished.contains(&job) || followed.contains(&job) {
                    continue;
                }
                std::fs::remove_dir_all(entry.path()).map_err(|e| format!("{}: {e}", entry.path().display()))?;
                removed += 1;
            }
            Ok::<_, String>(removed)
        })
        .await;
        match swept {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(pool = %self.pool, folders = n, "removed code folders of ended jobs"),
            Ok(Err(e)) => tracing::warn!(pool = %self.pool, error = %e, "could not sweep the code folders"),
            Err(e) => tracing::warn!(pool = %self.pool, error = %e, "the code folder sweep failed"),
        }
    }

    async fn cancel(&mut self) {
        let now = now_us();
        for t in self.runs.values_mut() {
            let over = match (t.started_at_us, t.max_runtime_s) {
                (Some(started), Some(max)) => now - started > (max as i64).saturating_mul(1_000_000),
                _ => false,
            };
            if over && t.ended.is_none() && !t.stop {
                t.stop = true;
                t.timed_out = true;
            }
        }
        let to_cancel: Vec<(RunRef, String)> = self
            .runs
            .iter()
            .filter(|(_, t)| t.stop && !t.cancel_sent && t.ended.is_none())
            .filter_map(|(run, t)| t.native_id.clone().map(|id| (*run, id)))
            .collect();
        for (run, id) in to_cancel {
            match self.call("cancelling", self.engine.cancel(&id)).await {
                Ok(()) => self.runs.get_mut(&run).expect("tracked").cancel_sent = true,
                Err(e) => tracing::warn!(pool = %self.pool, job = run.job_id, error = %e, "cancel failed; retrying"),
            }
        }
    }

    async fn poll_states(&mut self) {
        let followed: Vec<(RunRef, String)> = self
            .runs
            .iter()
            .filter(|(_, t)| t.ended.is_none())
            .filter_map(|(run, t)| t.native_id.clone().map(|id| (*run, id)))
            .collect();
        for chunk in followed.chunks(STATES_BATCH) {
            let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
            let states = match self.call("reading states", self.engine.states(&ids)).await {
                Ok(states) if states.len() == ids.len() => states,
                Ok(states) => {
                    tracing::warn!(pool = %self.pool, asked = ids.len(), got = states.len(), "the engine answered for other runs");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(pool = %self.pool, error = %e, "reading states failed");
                    continue;
                }
            };
            for ((run, id), state) in chunk.iter().zip(states) {
                let kind = self.engine.kind();
                let words = match &state {
                    NativeState::Pending { reason: Some(reason) } => format!("pending: {reason}"),
                    NativeState::Pending { reason: None } => "pending".to_string(),
                    NativeState::Running { .. } => "running".to_string(),
                    NativeState::Finished { exit_code: Some(code), .. } => format!("finished with exit code {code}"),
                    NativeState::Finished { end, .. } => format!("finished ({end:?})").to_lowercase(),
                    NativeState::Unknown => format!("unknown to {kind}"),
                };
                self.context.states.set(run.job_id, Some(words));
                let t = self.runs.get_mut(run).expect("followed runs are tracked");
                match state {
                    NativeState::Pending { .. } => {}
                    NativeState::Running { started_at_us } => t.started_at_us = Some(started_at_us),
                    NativeState::Finished { mut end, exit_code, signal, started_at_us, finished_at_us, message } => {
                        let started = started_at_us.or(t.started_at_us);
                        if t.timed_out && end != RunEnd::Exited {
                            end = RunEnd::TimedOut;
                        }
                        let message = message.map(|m| format!("{kind}: {m}")).unwrap_or_default();
                        t.ended = Some(finished(end, (exit_code, signal), finished_at_us, started, message));
                    }
                    NativeState::Unknown => {
                        let (end, message) = if t.stop {
                            (RunEnd::Stopped, format!("{kind} no longer knows job {id}; it was being stopped"))
                        } else {
                            (RunEnd::Exited, format!("{kind} no longer knows job {id}; how it ended is unknown"))
                        };
                        t.ended = Some(finished(end, (None, None), now_us(), t.started_at_us, message));
                    }
                }
            }
        }
    }

    /// Copies new output of every submitted run into the log store; an end waits until its output is all there.
    async fn ship_output(&mut self) {
        let runs: Vec<RunRef> = self.runs.iter().filter(|(_, t)| t.native_id.is_some()).map(|(r, _)| *r).collect();
        for run in runs {
            let (id, mut shipped, ended) = {
                let t = &self.runs[&run];
                (t.native_id.clone().expect("filtered"), t.shipped, t.ended.is_some())
            };
            let mut complete = false;
            for _ in 0..OUTPUT_CHUNKS_PER_CYCLE {
                let chunk = match self.call("reading output", self.engine.output(&id, shipped, OUTPUT_CHUNK)).await {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        tracing::warn!(pool = %self.pool, job = run.job_id, error = %e, "reading output failed");
                        break;
                    }
                };
                if chunk.is_empty() {
                    complete = true;
                    break;
                }
                match self.context.logs.append(run.job_id, run.attempt, 0, shipped, &chunk).await {
                    Ok(held) => shipped = held,
                    Err(e) => {
                        tracing::error!(job = run.job_id, error = %e, "cannot store a run's output");
                        break;
                    }
                }
                self.context.signals.signal(run.job_id);
            }
            let t = self.runs.get_mut(&run).expect("tracked");
            t.shipped = shipped;
            // An end is reported only once the output read after it came back empty: all of it is in the store.
            t.output_complete = ended && complete;
            if let (true, Some(RunStatus::Finished { log_bytes, .. })) = (t.output_complete, t.ended.as_mut()) {
                *log_bytes = shipped;
            }
        }
    }
}

/// The job a folder of the pool's code directory was unpacked for: `<prefix><job>-<attempt>` (`prefix` is
/// `ferry-<tag>-`), or `.<prefix><job>-<attempt>.partial` for an unpacking that never finished; `None` for anything
/// else.
fn code_folder_job(name: &str, prefix: &str) -> Option<u64> {
    let base = match name.strip_prefix('.') {
        Some(hidden) => hidden.strip_suffix(".partial")?,
        None => name,
    };
    let (job, attempt) = base.strip_prefix(prefix)?.split_once('-')?;
    attempt.parse::<u32>().ok()?;
    job.parse().ok()
}

/// A run as a registration lists it: an end not reported yet counts as running (the report that follows carries the
/// end), so the driver never takes a run that ended meanwhile for one its node forgot; a run that never started is
/// left out, as the driver does not expect it to run.
fn still_running(report: RunReport) -> Option<RunReport> {
    match report.status {
        RunStatus::Finished { started_at_us: Some(started_at_us), .. } => {
            Some(RunReport { run: report.run, status: RunStatus::Running { pid: 0, started_at_us } })
        }
        RunStatus::Finished { started_at_us: None, .. } => None,
        running => Some(RunReport { run: report.run, status: running }),
    }
}

/// An end to report: how it ended, its exit code and signal (where the engine says), when, and why in words.
fn finished(
    end: RunEnd,
    (exit_code, signal): (Option<i32>, Option<i32>),
    finished_at_us: i64,
    started_at_us: Option<i64>,
    message: String,
) -> RunStatus {
    RunStatus::Finished {
        end,
        exit_code,
        signal,
        finished_at_us: if finished_at_us > 0 { finished_at_us } else { now_us() },
        log_bytes: 0,
        message: (!message.is_empty()).then_some(message),
        started_at_us,
    }
}

/// `text` with every secret value in it replaced by `<redacted>`: the last line of defence for an engine's native
/// form, which each engine already builds without values. Values of fewer than 4 characters are left alone (they
/// would blank out ordinary text and reveal little).
fn redacted(mut text: String, secrets: &ferry_api::agent::SecretEnv) -> String {
    let mut values: Vec<&String> = secrets.0.values().filter(|v| v.chars().count() >= 4).collect();
    // Longest first, so that a value containing another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        text = text.replace(value.as_str(), "<redacted>");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ferry_api::agent::SecretEnv;

    use super::*;

    #[test]
    fn code_folders_name_their_job_only_for_this_installation() {
        let prefix = "ferry-ab12-";
        assert_eq!(code_folder_job("ferry-ab12-42-0", prefix), Some(42));
        assert_eq!(code_folder_job(".ferry-ab12-42-3.partial", prefix), Some(42));
        for other in
            ["ferry-cd34-42-0", "ferry-ab12-42", "ferry-ab12-x-0", ".ferry-ab12-42-0", "notes.txt", "ferry-ab12-42-0-1"]
        {
            assert_eq!(code_folder_job(other, prefix), None, "{other}");
        }
    }

    #[test]
    fn secret_values_never_reach_a_native_form() {
        let secrets = SecretEnv(BTreeMap::from([
            ("A".to_string(), "hf_abcdef".to_string()),
            ("B".to_string(), "hf_abc".to_string()),
            ("C".to_string(), "x".to_string()),
        ]));
        let text = redacted("export A=hf_abcdef B=hf_abc C=x".into(), &secrets);
        assert_eq!(text, "export A=<redacted> B=<redacted> C=x");
    }
}
