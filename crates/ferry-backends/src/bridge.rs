//! The engine bridge: one task per engine pool (Slurm, Ray, Spark, Kubernetes) that drives the engine as an agent
//! drives its node, and [`EngineBackend`], the pool's `ComputeBackend`.
//!
//! The driver sees an engine's nodes as ordinary nodes named `<pool>/<engine node>`: the bridge registers them with
//! the capacity the engine reports, and its reports are their heartbeat. A start the driver decides reaches the
//! bridge through [`EngineBackend`], which only queues it, so the driver never waits on an engine. Each cycle, every
//! `poll_interval`, the bridge then
//!
//! 1. asks the engine for its nodes, registering them when they change (an engine that does not answer is not
//!    heartbeated, so its nodes go not ready after the node timeout and nothing more is placed there);
//! 2. submits what was started (unpacking shipped code first), and tells the driver the native id and form;
//! 3. cancels what the driver stopped;
//! 4. asks the states of the runs it follows, ships their new output into the server's log store, and reports
//!    starts and ends (an end only once all its output is shipped), with the runs the driver no longer wants
//!    coming back to be cancelled.
//!
//! The bridge reaches the server only through [`Host`] (the driver, the store, the log and code stores), which the
//! server implements in a thin adapter (`ferry-server/src/engines.rs`) and the tests below in memory.
//!
//! Every call to the engine has a timeout, so a slow engine slows only its own pool. Nothing here is durable: after a
//! restart the bridge follows again the unfinished runs the host places on its nodes (their native ids are in the
//! store), and the driver sends again the starts it has no confirmation of; submission by a deterministic native
//! name makes a repeated start find the run it already made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::agent::{Assignment, RegisterNode, Reports, RunEnd, RunRef, RunReport, RunStatus};
use tokio::sync::mpsc;

use crate::engine::{native_name, Engine, EngineError, EngineJob, EngineNode, NativeState, SecretsFetch};
use crate::registry::PoolSpec;
use crate::{BackendError, BackendFuture, Capabilities, ComputeBackend};

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

/// What the bridge needs of the server it runs in. Every method answers for the server as it is now; an error is a
/// sentence for the log, and the bridge tries again in a later cycle.
pub trait Host: Send + Sync {
    /// Registers (again) a node of the pool with the runs it holds; answers the runs the server no longer wants.
    fn register(&self, node: RegisterNode) -> BackendFuture<'_, Result<Vec<RunRef>, String>>;

    /// Reports a node's runs, which is also its heartbeat; answers the runs the server no longer wants. An error
    /// means the server no longer takes the node's reports: the bridge registers it again.
    fn report(&self, reports: Reports) -> BackendFuture<'_, Result<Vec<RunRef>, String>>;

    /// Records what the engine made of a run; `false` when the server no longer wants the run (it is cancelled).
    fn native<'a>(&'a self, node: &'a str, run: RunRef, native: Native) -> BackendFuture<'a, Result<bool, String>>;

    /// The runs of the pool's nodes that an engine took and that have not ended: what to follow after a restart.
    fn unfinished_runs<'a>(&'a self, pool: &'a str) -> BackendFuture<'a, Result<Vec<Unfinished>, String>>;

    /// Every unfinished job, of any pool: their code folders are kept.
    fn unfinished_jobs(&self) -> BackendFuture<'_, Result<BTreeSet<u64>, String>>;

    /// What the server adds to a run for an engine (owner, project, variables, where it fetches its secrets).
    fn run_context<'a>(
        &'a self,
        run: RunRef,
        assignment: &'a Assignment,
    ) -> BackendFuture<'a, Result<RunContext, String>>;

    /// How many bytes of a run's output the log store holds.
    fn output_size(&self, run: RunRef) -> BackendFuture<'_, u64>;

    /// Appends output at `offset` of a run's log and wakes its followers; answers the bytes the log store holds now.
    fn append_output<'a>(&'a self, run: RunRef, offset: u64, bytes: &'a [u8])
        -> BackendFuture<'a, Result<u64, String>>;

    /// Unpacks the shipped code archive `sha256` into `dest`, a folder that does not exist yet, checking every entry.
    fn unpack_code<'a>(&'a self, sha256: &'a str, dest: &'a Path) -> BackendFuture<'a, Result<(), String>>;

    /// Whether the pool's engine answered the bridge's last call, and the failure when it did not.
    fn engine_health(&self, pool: &str, answering: bool, error: Option<String>);

    /// A followed run's state in its engine, in words (`pending: Resources`), for `ferry show`; `None` once the run
    /// is no longer followed.
    fn run_state(&self, job: u64, state: Option<String>);
}

/// What an engine made of a run: its kind, its id there, and its native form with no secret in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Native {
    pub kind: &'static str,
    pub id: String,
    pub spec: String,
}

/// A run an engine took that has not ended, as the server knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfinished {
    /// Rank 0's run.
    pub run: RunRef,
    pub node: String,
    pub native_id: String,
    /// A gang's other workers: their nodes and runs.
    pub followers: Vec<(String, RunRef)>,
    /// A stop was asked for.
    pub stop: bool,
    pub started_at_us: Option<i64>,
    pub max_runtime_s: Option<u64>,
}

/// The server's part of a run on an engine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunContext {
    /// Who submitted it and the project, for the engine's accounting.
    pub user: String,
    pub project: String,
    /// The run's environment: the assignment's, with what reaches the server from an engine's node.
    pub env: BTreeMap<String, String>,
    /// Where the run fetches its secrets itself, when it has any.
    pub secrets_fetch: Option<SecretsFetch>,
}

/// What the driver asks of an engine pool; queued for the bridge.
#[derive(Debug)]
enum Order {
    Launch(String, Box<Assignment>),
    Stop(RunRef),
}

/// The `ComputeBackend` of one engine pool: it hands starts and stops to the pool's bridge and returns at once.
pub struct EngineBackend {
    kind: &'static str,
    capabilities: Capabilities,
    orders: mpsc::UnboundedSender<Order>,
}

impl ComputeBackend for EngineBackend {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
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

/// Builds the backend of an engine pool and the bridge that serves it; [`Bridge::run`] must run once the host takes
/// registrations (the driver has started).
pub fn start(engine: Box<dyn Engine>, pool: &PoolSpec, host: Arc<dyn Host>, tag: &str) -> (Arc<EngineBackend>, Bridge) {
    let (orders, inbox) = mpsc::unbounded_channel();
    let backend = Arc::new(EngineBackend { kind: engine.kind(), capabilities: engine.capabilities(), orders });
    let bridge = Bridge {
        pool: pool.name.clone(),
        engine,
        poll_interval: pool.poll_interval,
        code_root: pool.code_dir.clone(),
        host,
        tag: tag.to_string(),
        inbox,
        runs: BTreeMap::new(),
        registered: BTreeMap::new(),
        down_since: None,
        cycled: false,
        code_swept: None,
    };
    (backend, bridge)
}

/// Now, in microseconds since the Unix epoch, as the store counts time.
fn now_us() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
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
    host: Arc<dyn Host>,
    /// Distinguishes this installation's runs from another's on a shared engine.
    tag: String,
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
    /// Follows the pool's unfinished runs the host knows, then serves the pool until the server stops.
    pub async fn run(mut self) {
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
            self.cycle().await;
        }
    }

    fn ferry_node(&self, engine_node: &str) -> String {
        format!("{}/{engine_node}", self.pool)
    }

    fn engine_node<'a>(&self, ferry_node: &'a str) -> &'a str {
        ferry_node.strip_prefix(&format!("{}/", self.pool)).unwrap_or(ferry_node)
    }

    async fn adopt(&mut self) -> Result<(), String> {
        for run in self.host.unfinished_runs(&self.pool).await? {
            let shipped = self.host.output_size(run.run).await;
            let tracked = Tracked {
                followers: run.followers,
                native_id: Some(run.native_id),
                shipped,
                stop: run.stop,
                started_at_us: run.started_at_us,
                ..Tracked::new(run.node, run.max_runtime_s, true)
            };
            self.runs.insert(run.run, tracked);
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

    async fn cycle(&mut self) {
        self.cycled = true;
        if self.code_swept.is_none_or(|at| at.elapsed() >= CODE_SWEEP_EVERY) {
            self.code_swept = Some(Instant::now());
            self.sweep_code().await;
        }
        let nodes = match self.call("listing nodes", self.engine.nodes()).await {
            Ok(nodes) => {
                self.host.engine_health(&self.pool, true, None);
                if let Some(since) = self.down_since.take() {
                    tracing::info!(pool = %self.pool, down_s = since.elapsed().as_secs(), "the engine answers again");
                }
                nodes
            }
            Err(e) => {
                self.host.engine_health(&self.pool, false, Some(e.to_string()));
                if self.down_since.is_none() {
                    tracing::warn!(pool = %self.pool, error = %e, "the engine does not answer; its nodes will go not ready");
                    self.down_since = Some(Instant::now());
                }
                self.registered.clear();
                return;
            }
        };
        self.submit().await;
        self.cancel().await;
        self.poll_states().await;
        self.ship_output().await;
        self.register(&nodes).await;
        self.report().await;
    }

    /// Registers the engine's nodes that are new or changed, each with the runs it holds.
    async fn register(&mut self, nodes: &[EngineNode]) {
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
                labels: BTreeMap::from([("ferry.engine".to_string(), self.engine.kind().to_string())]),
                agent_version: format!("{} engine bridge {}", self.engine.kind(), env!("CARGO_PKG_VERSION")),
                limits: self.engine.kind().to_string(),
                address: None,
                runs: self.reports_for(&name).into_iter().filter_map(still_running).collect(),
                now_us: now_us(),
            };
            match self.host.register(registration).await {
                Ok(unwanted) => {
                    self.stop_unwanted(&unwanted);
                    self.registered.insert(name, node.clone());
                }
                Err(e) => tracing::warn!(pool = %self.pool, node = %name, error = %e, "registration failed"),
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

    /// Heartbeats every registered node with its runs; ends that the driver took are forgotten once every node has
    /// been heard, so that a gang's workers on nodes after its leader's report their end too.
    async fn report(&mut self) {
        let names: Vec<String> = self.registered.keys().cloned().collect();
        let mut taken = Vec::new();
        for node in names {
            let runs = self.reports_for(&node);
            let reported_ends: Vec<RunRef> = runs
                .iter()
                .filter(|r| r.run.rank == 0 && matches!(r.status, RunStatus::Finished { .. }))
                .map(|r| r.run)
                .collect();
            let reports = Reports { node: node.clone(), runs, usage: None };
            match self.host.report(reports).await {
                Ok(unwanted) => {
                    self.stop_unwanted(&unwanted);
                    taken.extend(reported_ends);
                }
                Err(e) => {
                    // A node the driver gave up on registers again, listing its runs.
                    tracing::info!(pool = %self.pool, node = %node, error = %e, "report refused; registering again");
                    self.registered.remove(&node);
                }
            }
        }
        for run in taken {
            self.runs.remove(&run);
            self.host.run_state(run.job_id, None);
            self.remove_code(run).await;
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
    async fn submit(&mut self) {
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
                        let native = Native {
                            kind: self.engine.kind(),
                            id: submitted.native_id.clone(),
                            // The job's secrets (its tracking token among them) are shown nowhere, not even in
                            // its native form, whatever the engine put there.
                            spec: redacted(submitted.native_spec, &job.secrets),
                        };
                        let wanted = self.host.native(&node, run, native).await;
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

    /// The engine's form of a run: the assignment, the host's part (owner, variables, secrets' fetch), the gang's
    /// nodes, the unpacked code.
    async fn engine_job(&self, run: RunRef) -> Result<EngineJob, String> {
        let t = &self.runs[&run];
        let a = t.assignment.as_ref().ok_or("nothing to submit")?;
        let RunContext { user, project, env, secrets_fetch } = self.host.run_context(run, a).await?;
        let name = native_name(&self.tag, run.job_id, run.attempt, 0);
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
            env,
            secrets: a.secrets.clone(),
            secrets_fetch,
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

    /// Unpacks a run's code under the pool's code directory (once per run name) and returns the folder. The host
    /// unpacks into a hidden folder beside it, renamed into place when whole, so a folder of that name is complete.
    async fn unpack(&self, sha256: &str, name: &str) -> Result<String, String> {
        let dest = self.code_root.join(name);
        let partial = self.code_root.join(format!(".{name}.partial"));
        let (root, to, scratch) = (self.code_root.clone(), dest.clone(), partial.clone());
        let needed = tokio::task::spawn_blocking(move || {
            if to.is_dir() {
                return Ok(false);
            }
            std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
            let _ = std::fs::remove_dir_all(&scratch);
            Ok::<_, String>(true)
        })
        .await
        .map_err(|e| format!("unpacking the job's code: {e}"))??;
        if needed {
            self.host.unpack_code(sha256, &partial).await.map_err(|e| format!("unpacking the job's code: {e}"))?;
            let to = dest.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::rename(&partial, &to).map_err(|e| format!("cannot move the code into {}: {e}", to.display()))
            })
            .await
            .map_err(|e| format!("unpacking the job's code: {e}"))??;
        }
        Ok(dest.to_string_lossy().into_owned())
    }

    /// Removes the unpacked code of a run whose end the driver took (nothing when it shipped none).
    async fn remove_code(&self, run: RunRef) {
        let dir = self.code_root.join(native_name(&self.tag, run.job_id, run.attempt, 0));
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
        let unfinished: BTreeSet<u64> = match self.host.unfinished_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(pool = %self.pool, error = %e, "cannot tell which code folders are needed; keeping them");
                return;
            }
        };
        let followed: BTreeSet<u64> = self.runs.keys().map(|r| r.job_id).collect();
        // `ferry-<tag>-`, as this installation's native names start.
        let full = native_name(&self.tag, 0, 0, 0);
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
                self.host.run_state(run.job_id, Some(words));
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
                match self.host.append_output(run, shipped, &chunk).await {
                    Ok(held) => shipped = held,
                    Err(e) => {
                        tracing::error!(job = run.job_id, error = %e, "cannot store a run's output");
                        break;
                    }
                }
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
pub(crate) mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    use ferry_api::agent::SecretEnv;
    use ferry_api::nodes::Gpu;

    use super::*;
    use crate::engine::{Found, Submitted};

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

    /// What the fake engine holds: its nodes, and each submitted run's state and output by native id.
    #[derive(Default)]
    struct Cluster {
        nodes: Vec<EngineNode>,
        down: bool,
        submitted: Vec<EngineJob>,
        states: HashMap<String, NativeState>,
        output: HashMap<String, Vec<u8>>,
        /// Reads of output that fail before they work again.
        output_failures: u32,
        cancelled: Vec<String>,
    }

    /// An engine in memory: what a real engine does, as far as the bridge can tell.
    struct FakeEngine(Arc<Mutex<Cluster>>);

    impl FakeEngine {
        fn cluster(&self) -> std::sync::MutexGuard<'_, Cluster> {
            self.0.lock().unwrap()
        }
    }

    fn unavailable(detail: &str) -> EngineError {
        EngineError::Unavailable { engine: "fake", detail: detail.into() }
    }

    impl Engine for FakeEngine {
        fn kind(&self) -> &'static str {
            "fake"
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                images: false,
                gangs: true,
                gpus_measured: false,
                native_view: true,
                node_pinning: true,
                gpu_pinning: false,
            }
        }

        fn nodes(&self) -> BackendFuture<'_, Result<Vec<EngineNode>, EngineError>> {
            let cluster = self.cluster();
            let nodes = if cluster.down { Err(unavailable("connection refused")) } else { Ok(cluster.nodes.clone()) };
            Box::pin(async move { nodes })
        }

        fn submit<'a>(&'a self, job: &'a EngineJob) -> BackendFuture<'a, Result<Submitted, EngineError>> {
            let mut cluster = self.cluster();
            let native_id = format!("id-{}", job.name);
            cluster.submitted.push(job.clone());
            cluster.states.insert(native_id.clone(), NativeState::Pending { reason: Some("Resources".into()) });
            // The native form shows everything it was given, secrets too: the bridge must redact them.
            let native_spec = format!("{} {:?} {:?}", job.command.join(" "), job.env, job.secrets.0);
            Box::pin(async move { Ok(Submitted { native_id, native_spec }) })
        }

        fn find<'a>(&'a self, _prefix: &'a str) -> BackendFuture<'a, Result<Vec<Found>, EngineError>> {
            Box::pin(async { Ok(Vec::new()) })
        }

        fn states<'a>(&'a self, ids: &'a [String]) -> BackendFuture<'a, Result<Vec<NativeState>, EngineError>> {
            let cluster = self.cluster();
            let states = ids.iter().map(|id| cluster.states.get(id).cloned().unwrap_or(NativeState::Unknown)).collect();
            Box::pin(async move { Ok(states) })
        }

        fn output<'a>(
            &'a self,
            id: &'a str,
            offset: u64,
            max: usize,
        ) -> BackendFuture<'a, Result<Vec<u8>, EngineError>> {
            let mut cluster = self.cluster();
            let chunk = if cluster.output_failures > 0 {
                cluster.output_failures -= 1;
                Err(unavailable("the log is not there yet"))
            } else {
                let all = cluster.output.get(id).cloned().unwrap_or_default();
                let start = (offset as usize).min(all.len());
                Ok(all[start..(start + max).min(all.len())].to_vec())
            };
            Box::pin(async move { chunk })
        }

        fn cancel<'a>(&'a self, id: &'a str) -> BackendFuture<'a, Result<(), EngineError>> {
            let mut cluster = self.cluster();
            cluster.cancelled.push(id.to_string());
            let end = NativeState::Finished {
                end: RunEnd::Stopped,
                exit_code: None,
                signal: Some(15),
                started_at_us: None,
                finished_at_us: 1,
                message: None,
            };
            cluster.states.insert(id.to_string(), end);
            Box::pin(async { Ok(()) })
        }
    }

    /// What the fake host was told, and what it answers.
    #[derive(Default)]
    pub(crate) struct Told {
        registered: Vec<RegisterNode>,
        reports: Vec<Reports>,
        natives: Vec<(String, RunRef, Native)>,
        logs: BTreeMap<RunRef, Vec<u8>>,
        health: Option<(bool, Option<String>)>,
        states: BTreeMap<u64, String>,
        unfinished: Vec<Unfinished>,
        /// Runs the host no longer wants, answered to every registration and report.
        unwanted: Vec<RunRef>,
    }

    /// The server in memory: it takes every registration and report, and keeps the output.
    #[derive(Default)]
    pub(crate) struct FakeHost(pub(crate) Mutex<Told>);

    impl FakeHost {
        fn told(&self) -> std::sync::MutexGuard<'_, Told> {
            self.0.lock().unwrap()
        }
    }

    impl Host for FakeHost {
        fn register(&self, node: RegisterNode) -> BackendFuture<'_, Result<Vec<RunRef>, String>> {
            let mut told = self.told();
            told.registered.push(node);
            let unwanted = told.unwanted.clone();
            Box::pin(async move { Ok(unwanted) })
        }

        fn report(&self, reports: Reports) -> BackendFuture<'_, Result<Vec<RunRef>, String>> {
            let mut told = self.told();
            told.reports.push(reports);
            let unwanted = told.unwanted.clone();
            Box::pin(async move { Ok(unwanted) })
        }

        fn native<'a>(&'a self, node: &'a str, run: RunRef, native: Native) -> BackendFuture<'a, Result<bool, String>> {
            let mut told = self.told();
            let wanted = !told.unwanted.contains(&run);
            told.natives.push((node.to_string(), run, native));
            Box::pin(async move { Ok(wanted) })
        }

        fn unfinished_runs<'a>(&'a self, _pool: &'a str) -> BackendFuture<'a, Result<Vec<Unfinished>, String>> {
            let runs = self.told().unfinished.clone();
            Box::pin(async move { Ok(runs) })
        }

        fn unfinished_jobs(&self) -> BackendFuture<'_, Result<BTreeSet<u64>, String>> {
            let jobs = self.told().unfinished.iter().map(|u| u.run.job_id).collect();
            Box::pin(async move { Ok(jobs) })
        }

        fn run_context<'a>(
            &'a self,
            _run: RunRef,
            assignment: &'a Assignment,
        ) -> BackendFuture<'a, Result<RunContext, String>> {
            let mut env = assignment.env.clone();
            env.insert("FROM_THE_HOST".into(), "1".into());
            let context = RunContext { user: "ana".into(), project: "vision".into(), env, secrets_fetch: None };
            Box::pin(async move { Ok(context) })
        }

        fn output_size(&self, run: RunRef) -> BackendFuture<'_, u64> {
            let size = self.told().logs.get(&run).map_or(0, |l| l.len() as u64);
            Box::pin(async move { size })
        }

        fn append_output<'a>(
            &'a self,
            run: RunRef,
            offset: u64,
            bytes: &'a [u8],
        ) -> BackendFuture<'a, Result<u64, String>> {
            let mut told = self.told();
            let log = told.logs.entry(run).or_default();
            log.truncate(offset as usize);
            log.extend_from_slice(bytes);
            let held = log.len() as u64;
            Box::pin(async move { Ok(held) })
        }

        fn unpack_code<'a>(&'a self, sha256: &'a str, dest: &'a Path) -> BackendFuture<'a, Result<(), String>> {
            let unpacked = std::fs::create_dir_all(dest).and_then(|()| std::fs::write(dest.join("code"), sha256));
            Box::pin(async move { unpacked.map_err(|e| e.to_string()) })
        }

        fn engine_health(&self, _pool: &str, answering: bool, error: Option<String>) {
            self.told().health = Some((answering, error));
        }

        fn run_state(&self, job: u64, state: Option<String>) {
            let mut told = self.told();
            match state {
                Some(state) => told.states.insert(job, state),
                None => told.states.remove(&job),
            };
        }
    }

    fn engine_node(name: &str) -> EngineNode {
        EngineNode {
            name: name.into(),
            cpu_millis: 8000,
            memory_bytes: 16 << 30,
            gpus: vec![Gpu {
                index: 0,
                model: "A100".into(),
                memory_bytes: 40 << 30,
                uuid: None,
                source: "fake".into(),
            }],
            up: true,
            state: "idle".into(),
            allocated_cpu_millis: None,
            allocated_memory_bytes: None,
            allocated_gpus: None,
        }
    }

    fn assignment(job_id: u64, rank: u32) -> Assignment {
        Assignment {
            run: RunRef { rank, ..RunRef::new(job_id, 0) },
            command: vec!["python".into(), "train.py".into()],
            workdir: String::new(),
            code: None,
            env: BTreeMap::from([("EPOCHS".to_string(), "3".to_string())]),
            secrets: Default::default(),
            owner: "ana".into(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpu_ids: vec![0],
            max_runtime_s: None,
            grace_s: 10,
            image: None,
        }
    }

    struct Pool {
        cluster: Arc<Mutex<Cluster>>,
        host: Arc<FakeHost>,
        backend: Arc<EngineBackend>,
        bridge: Bridge,
        code: tempfile::TempDir,
    }

    /// A pool `hpc` of the fake engine with nodes `n1` and `n2`, whose bridge has run no cycle yet.
    fn pool() -> Pool {
        let cluster =
            Arc::new(Mutex::new(Cluster { nodes: vec![engine_node("n1"), engine_node("n2")], ..Cluster::default() }));
        let host = Arc::new(FakeHost::default());
        let code = tempfile::tempdir().unwrap();
        let spec = PoolSpec {
            name: "hpc".into(),
            kind: "fake".into(),
            settings: serde_json::Value::Null,
            poll_interval: Duration::from_secs(1),
            code_dir: code.path().join("hpc"),
        };
        let (backend, bridge) = start(Box::new(FakeEngine(cluster.clone())), &spec, host.clone(), "t1");
        Pool { cluster, host, backend, bridge, code }
    }

    impl Pool {
        /// What `Bridge::run` does on each tick: takes the queued orders, then runs a cycle.
        async fn cycle(&mut self) {
            while let Ok(order) = self.bridge.inbox.try_recv() {
                self.bridge.take(order);
            }
            self.bridge.cycle().await;
        }

        fn set(&self, id: &str, state: NativeState) {
            self.cluster.lock().unwrap().states.insert(id.into(), state);
        }

        fn last_report(&self, node: &str) -> Vec<RunReport> {
            let told = self.host.told();
            told.reports.iter().rev().find(|r| r.node == node).map(|r| r.runs.clone()).unwrap_or_default()
        }
    }

    fn finished(exit_code: i32) -> NativeState {
        NativeState::Finished {
            end: RunEnd::Exited,
            exit_code: Some(exit_code),
            signal: None,
            started_at_us: Some(100),
            finished_at_us: 200,
            message: None,
        }
    }

    #[tokio::test]
    async fn a_run_is_submitted_followed_and_its_end_reported_only_with_all_its_output() {
        let mut p = pool();
        assert_eq!(p.backend.capabilities(), FakeEngine(p.cluster.clone()).capabilities());
        p.cycle().await;
        let names: Vec<String> = p.host.told().registered.iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["hpc/n1", "hpc/n2"], "the engine's nodes, named within the pool");
        assert_eq!(p.host.told().registered[0].labels["ferry.engine"], "fake");
        assert_eq!(p.host.told().health, Some((true, None)));

        // A run with shipped code and a secret: the code is unpacked for the engine's nodes, the secret never shown.
        let mut a = assignment(7, 0);
        a.code = Some("c0de".into());
        a.secrets = SecretEnv(BTreeMap::from([("HF_TOKEN".to_string(), "hf_secret_value".to_string())]));
        p.backend.launch("hpc/n1", a).await.unwrap();
        p.cycle().await;
        let job = p.cluster.lock().unwrap().submitted[0].clone();
        let folder = p.code.path().join("hpc/ferry-t1-7-0");
        assert_eq!((job.name.as_str(), job.node.as_str(), job.nodes), ("ferry-t1-7-0", "n1", 1));
        assert_eq!(
            (job.user.as_str(), job.project.as_str(), job.env["FROM_THE_HOST"].as_str()),
            ("ana", "vision", "1")
        );
        assert_eq!(job.workdir, folder.to_string_lossy());
        assert_eq!(std::fs::read_to_string(folder.join("code")).unwrap(), "c0de");
        let (node, run, native) = p.host.told().natives[0].clone();
        assert_eq!(
            (node.as_str(), run, native.kind, native.id.as_str()),
            ("hpc/n1", RunRef::new(7, 0), "fake", "id-ferry-t1-7-0")
        );
        assert!(native.spec.contains("<redacted>") && !native.spec.contains("hf_secret_value"), "{}", native.spec);
        assert_eq!(p.host.told().states[&7], "pending: Resources");
        assert!(p.last_report("hpc/n1").is_empty(), "nothing to say of a run that has not started");

        // It runs and writes; then it ends, but its output cannot be read for a cycle: the end waits for it.
        p.set("id-ferry-t1-7-0", NativeState::Running { started_at_us: 100 });
        p.cluster.lock().unwrap().output.insert("id-ferry-t1-7-0".into(), b"epoch 1\n".to_vec());
        p.cycle().await;
        assert!(matches!(
            p.last_report("hpc/n1")[..],
            [RunReport { status: RunStatus::Running { started_at_us: 100, .. }, .. }]
        ));
        p.cluster.lock().unwrap().output.insert("id-ferry-t1-7-0".into(), b"epoch 1\nepoch 2\n".to_vec());
        p.cluster.lock().unwrap().output_failures = 1;
        p.set("id-ferry-t1-7-0", finished(0));
        p.cycle().await;
        assert!(matches!(p.last_report("hpc/n1")[..], [RunReport { status: RunStatus::Running { .. }, .. }]));
        p.cycle().await;
        match &p.last_report("hpc/n1")[..] {
            [RunReport {
                run,
                status: RunStatus::Finished { end: RunEnd::Exited, exit_code: Some(0), log_bytes, .. },
            }] => {
                assert_eq!((*run, *log_bytes), (RunRef::new(7, 0), 16));
            }
            other => panic!("expected the end with all output: {other:?}"),
        }
        assert_eq!(p.host.told().logs[&RunRef::new(7, 0)], b"epoch 1\nepoch 2\n");
        // The host took the end: the run is forgotten, with its state and its code folder.
        assert!(p.bridge.runs.is_empty() && !p.host.told().states.contains_key(&7));
        assert!(!folder.exists());
    }

    #[tokio::test]
    async fn a_gang_is_one_submission_over_its_nodes_and_every_worker_is_reported() {
        let mut p = pool();
        p.cycle().await;
        p.backend.launch("hpc/n1", assignment(9, 0)).await.unwrap();
        p.backend.launch("hpc/n2", assignment(9, 1)).await.unwrap();
        p.cycle().await;
        let submitted = p.cluster.lock().unwrap().submitted.clone();
        assert_eq!(submitted.len(), 1, "one native submission");
        assert_eq!((submitted[0].node.as_str(), submitted[0].nodes), ("n1,n2", 2));
        p.set("id-ferry-t1-9-0", finished(3));
        p.cycle().await;
        for (node, rank) in [("hpc/n1", 0), ("hpc/n2", 1)] {
            let reports = p.last_report(node);
            assert!(
                matches!(&reports[..], [RunReport { run, status: RunStatus::Finished { exit_code: Some(3), .. } }] if run.rank == rank),
                "{node}: {reports:?}"
            );
        }
    }

    #[tokio::test]
    async fn stops_cancel_in_the_engine_and_a_stop_before_submission_never_reaches_it() {
        let mut p = pool();
        p.cycle().await;
        // Stopped before any cycle: never submitted, reported stopped.
        p.backend.launch("hpc/n1", assignment(1, 0)).await.unwrap();
        p.backend.stop("hpc/n1", RunRef::new(1, 0)).await.unwrap();
        // Submitted, running, then stopped: cancelled in the engine, and its end reported.
        p.backend.launch("hpc/n2", assignment(2, 0)).await.unwrap();
        p.cycle().await;
        assert_eq!(p.cluster.lock().unwrap().submitted.len(), 1);
        assert!(matches!(
            &p.last_report("hpc/n1")[..],
            [RunReport { status: RunStatus::Finished { end: RunEnd::Stopped, message: Some(m), .. }, .. }]
                if m == "stopped before the engine ran it"
        ));
        p.set("id-ferry-t1-2-0", NativeState::Running { started_at_us: 100 });
        p.cycle().await;
        p.backend.stop("hpc/n2", RunRef::new(2, 0)).await.unwrap();
        p.cycle().await;
        assert_eq!(p.cluster.lock().unwrap().cancelled, ["id-ferry-t1-2-0"]);
        assert!(matches!(
            &p.last_report("hpc/n2")[..],
            [RunReport { status: RunStatus::Finished { end: RunEnd::Stopped, .. }, .. }]
        ));

        // A run the host no longer wants (cancelled while the bridge submitted it) is cancelled too.
        p.host.told().unwanted.push(RunRef::new(3, 0));
        p.backend.launch("hpc/n1", assignment(3, 0)).await.unwrap();
        p.cycle().await;
        assert!(p.cluster.lock().unwrap().cancelled.contains(&"id-ferry-t1-3-0".to_string()));
    }

    #[tokio::test]
    async fn an_engine_that_does_not_answer_is_not_heartbeated_and_registers_again_when_it_does() {
        let mut p = pool();
        p.cycle().await;
        let reports = p.host.told().reports.len();
        p.cluster.lock().unwrap().down = true;
        p.cycle().await;
        let (answering, error) = p.host.told().health.clone().unwrap();
        assert!(!answering && error.unwrap().contains("connection refused"));
        assert_eq!(p.host.told().reports.len(), reports, "no heartbeat while the engine is down");
        p.cluster.lock().unwrap().down = false;
        p.cycle().await;
        assert_eq!(p.host.told().health, Some((true, None)));
        assert_eq!(p.host.told().registered.len(), 4, "both nodes registered again");
    }

    #[tokio::test]
    async fn after_a_restart_the_runs_the_host_knows_are_followed_to_their_end() {
        let mut p = pool();
        p.host.told().unfinished.push(Unfinished {
            run: RunRef::new(5, 1),
            node: "hpc/n1".into(),
            native_id: "id-old".into(),
            followers: Vec::new(),
            stop: false,
            started_at_us: Some(50),
            max_runtime_s: None,
        });
        p.host.told().logs.insert(RunRef::new(5, 1), b"before\n".to_vec());
        p.bridge.adopt().await.unwrap();
        p.set("id-old", NativeState::Running { started_at_us: 50 });
        p.cluster.lock().unwrap().output.insert("id-old".into(), b"before\nafter\n".to_vec());
        p.cycle().await;
        // Registered with the run it holds, so the driver keeps it; the output goes on from where the store was.
        let registered = p.host.told().registered.iter().find(|r| r.name == "hpc/n1").cloned().unwrap();
        assert_eq!(registered.runs.iter().map(|r| r.run).collect::<Vec<_>>(), [RunRef::new(5, 1)]);
        assert_eq!(p.host.told().logs[&RunRef::new(5, 1)], b"before\nafter\n");
        assert!(p.cluster.lock().unwrap().submitted.is_empty(), "never submitted again");
        p.set("id-old", finished(0));
        p.cycle().await;
        assert!(matches!(
            &p.last_report("hpc/n1")[..],
            [RunReport { status: RunStatus::Finished { log_bytes: 13, .. }, .. }]
        ));
    }
}
