//! The agent's loop: register with the server, take work, start and stop runs, and report what happened.
//!
//! One task owns all of the agent's state and reacts to one closed set of events; everything that waits (the work
//! long-poll, a report, each run) is a task of its own that reports back as an event. Runs belong to their
//! supervisors, not to this loop: when the agent stops, they go on, and the next agent adopts them from the data
//! directory. This loop must never block on the disk or a process for long, and never wait for a run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_api::agent::{
    Assignment, RegisterNode, Registered, Reports, ReportsAck, RunRef, RunReport, RunStatus, Work, WorkRequest,
};
use ferry_api::nodes::NodeUsage;
use ferry_api::ErrorCode;
use ferry_client::{Client, ClientError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{interval, sleep, Interval, MissedTickBehavior};

use crate::backoff::Backoff;
use crate::code;
use crate::config::AgentConfig;
use crate::resources::{Capacity, SAMPLE_INTERVAL};
use crate::rundir::{self, RunDir};
use crate::runs::{self, RunContext, Supervisor};
use crate::runusage::RunProbe;
use crate::shipper::{self, ShipperContext};
use crate::spool::Spool;
use crate::AgentError;

/// How long the server may hold a work poll. Short enough that a dead connection is noticed within seconds.
const WORK_WAIT_MS: u64 = 5_000;
/// The longest time between two reports; each carries the latest usage and doubles as the heartbeat.
const REPORT_INTERVAL: Duration = SAMPLE_INTERVAL;
/// The shortest report interval, whatever heartbeat the server asks for.
const REPORT_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// How many events may wait for the loop; senders wait when it is full.
const EVENT_QUEUE_LEN: usize = 1024;
/// The most runs one report carries: with end messages bounded at `RUN_MESSAGE_CHARS_MAX`, well under the body limit.
const REPORT_RUNS_MAX: usize = 100;
/// How many finished run directories are kept (as `.done-*`) for a person to look at.
const DONE_RUNS_KEPT: usize = 100;

/// How long a registration, report or log upload may take before it counts as failed. Without a bound, a server
/// that stops answering mid-request would leave it in flight for ever, and with it every later report.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest one download of a job's code may take (the archive is at most 100 MiB).
const CODE_FETCH_TIMEOUT: Duration = Duration::from_secs(600);
/// How many times a job's code is asked for before its run fails to start: with the backoff's 2 s cap, about half
/// a minute of a server that is down or failing.
const CODE_FETCH_TRIES_MAX: u32 = 20;

/// Everything the agent's loop reacts to.
pub(crate) enum Event {
    /// Registration is over: the server accepted the node (with the runs it was told of), or refused it for good.
    Registered(Result<(Registered, Vec<RunReport>), AgentError>),
    /// A work poll came back.
    WorkArrived(Result<Work, ClientError>),
    /// A run started or ended.
    RunChanged(RunRef, RunStatus),
    /// A report came back; `sent` is what it carried.
    Reported {
        sent: Vec<RunReport>,
        result: Result<ReportsAck, ClientError>,
    },
    /// A request of a run's task was refused for the agent's credentials.
    Refused(ClientError),
    ReportTick,
    Shutdown,
}

/// What a failed request means for the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server does not know this node (it lost its state, or dropped the node): register again.
    Forgotten,
    /// The token is wrong or lacks the right: nothing but a person can fix it.
    Refused,
    /// The server is down, slow or briefly failing: try again.
    Transient,
}

/// Runs one request of `client` with the agent's time limit.
pub(crate) async fn bounded<T>(
    client: &Client,
    request: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Transport {
            server: client.server().to_string(),
            detail: format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()),
        }),
    }
}

pub(crate) fn classify(error: &ClientError) -> Failure {
    match error {
        ClientError::Api { status: 401 | 403, .. } => Failure::Refused,
        ClientError::Api { status: 404, body } if body.code == ErrorCode::NotFound => Failure::Forgotten,
        _ => Failure::Transient,
    }
}

/// Whether the agent is known to the server right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Registering,
    Registered,
}

/// The agent's view of one run.
struct RunEntry {
    /// The latest state the run's task reported; `None` until it has said anything.
    status: Option<RunStatus>,
    /// The state the server last acknowledged.
    acknowledged: Option<RunStatus>,
    /// Set to `true` to have the run's task stop the run.
    stop: watch::Sender<bool>,
    /// Whether a task follows this run (adopted runs get theirs once the server knows the node).
    tracked: bool,
}

impl RunEntry {
    fn new() -> RunEntry {
        RunEntry { status: None, acknowledged: None, stop: watch::channel(false).0, tracked: false }
    }

    fn unreported(&self) -> Option<&RunStatus> {
        self.status.as_ref().filter(|status| self.acknowledged.as_ref() != Some(*status))
    }
}

/// The variable MLflow's client reads the certificate authority of its tracking server from.
pub const CA_PATH_VAR: &str = "MLFLOW_TRACKING_SERVER_CERT_PATH";

/// What the agent shares with the sampler and the telemetry shipper.
pub(crate) struct Telemetry {
    /// The runs the sampler measures, set whenever a run starts or ends.
    pub runs: watch::Sender<Vec<RunProbe>>,
    pub spool: Arc<Mutex<Spool>>,
}

pub(crate) struct Agent {
    config: AgentConfig,
    client: Client,
    runs_dir: PathBuf,
    capacity: Capacity,
    limits: &'static str,
    usage: watch::Receiver<Option<NodeUsage>>,
    usage_sent_at_us: i64,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    tasks: JoinSet<()>,
    runs: BTreeMap<RunRef, RunEntry>,
    link: Link,
    epoch: String,
    after_seq: u64,
    work_in_flight: bool,
    work_backoff: Backoff,
    report_in_flight: bool,
    report_tick: Interval,
    /// Whether the server is currently failing requests, so an outage is logged once, not once per retry.
    outage: bool,
    telemetry: Telemetry,
    /// `Some(n)` while registered (the `n`th registration), `None` while registering; the shipper ships only while
    /// it is `Some`.
    link_tx: watch::Sender<Option<u64>>,
    registrations: u64,
}

impl Agent {
    pub fn new(
        config: AgentConfig,
        client: Client,
        capacity: Capacity,
        limits: &'static str,
        usage: watch::Receiver<Option<NodeUsage>>,
        telemetry: Telemetry,
    ) -> Agent {
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE_LEN);
        Agent {
            runs_dir: config.data_dir.join(rundir::RUNS_DIR),
            config,
            client,
            capacity,
            limits,
            usage,
            usage_sent_at_us: 0,
            events_tx,
            events_rx,
            tasks: JoinSet::new(),
            runs: BTreeMap::new(),
            link: Link::Registering,
            epoch: String::new(),
            after_seq: 0,
            work_in_flight: false,
            work_backoff: Backoff::new(),
            report_in_flight: false,
            report_tick: report_interval(REPORT_INTERVAL),
            outage: false,
            telemetry,
            link_tx: watch::channel(None).0,
            registrations: 0,
        }
    }

    /// Runs until `shutdown` completes (returning `Ok`) or the server refuses the agent (returning the error).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()> + Send) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        self.adopt_runs()?;
        self.begin_registration();
        self.tasks.spawn(shipper::ship(ShipperContext {
            client: self.client.clone(),
            node: self.config.name.clone(),
            spool: self.telemetry.spool.clone(),
            link: self.link_tx.subscribe(),
            events: self.events_tx.clone(),
        }));
        loop {
            // The tick comes before other events so that a busy agent still sends its heartbeat.
            let event = tokio::select! {
                biased;
                _ = &mut shutdown => Event::Shutdown,
                _ = self.report_tick.tick() => Event::ReportTick,
                Some(event) = self.events_rx.recv() => event,
            };
            let flow = self.handle(event)?;
            self.reap_tasks();
            if let Flow::Stop = flow {
                tracing::info!("agent stopping; runs go on and the next agent adopts them");
                return Ok(());
            }
        }
    }

    fn handle(&mut self, event: Event) -> Result<Flow, AgentError> {
        match event {
            Event::Registered(result) => self.on_registered(result?),
            Event::WorkArrived(result) => self.on_work(result)?,
            Event::RunChanged(run, status) => {
                if let Some(entry) = self.runs.get_mut(&run) {
                    entry.status = Some(status);
                }
                self.publish_runs();
                self.send_report(false);
            }
            Event::Reported { sent, result } => self.on_reported(sent, result)?,
            Event::Refused(error) => return Err(self.refused(&error)),
            Event::ReportTick => self.send_report(true),
            Event::Shutdown => return Ok(Flow::Stop),
        }
        Ok(Flow::Continue)
    }

    /// Collects the tasks that have ended, so they do not pile up, and logs any that panicked.
    fn reap_tasks(&mut self) {
        while let Some(ended) = self.tasks.try_join_next() {
            if let Err(error) = ended {
                tracing::error!(error = %error, "an agent task failed");
            }
        }
    }

    /// Finds the runs a previous agent left in the data directory, going or ended but not yet acknowledged.
    fn adopt_runs(&mut self) -> Result<(), AgentError> {
        let entries = fs::read_dir(&self.runs_dir)
            .map_err(|source| AgentError::Io { what: format!("cannot read {}", self.runs_dir.display()), source })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(run) = name.to_str().and_then(rundir::parse_dir_name) else { continue };
            if entry.path().join(rundir::SPEC_FILE).exists() {
                self.runs.insert(run, RunEntry::new());
            } else {
                // The previous agent died between making the directory and writing the spec, so the run never
                // started; removing it lets the server's next copy of the assignment start it.
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        if !self.runs.is_empty() {
            tracing::info!(runs = self.runs.len(), "found runs from a previous agent; adopting them");
        }
        Ok(())
    }

    /// Registers (again) with the server, telling it every run this node knows of. Until that succeeds, no work
    /// is asked for and nothing is reported.
    fn begin_registration(&mut self) {
        self.link = Link::Registering;
        self.link_tx.send_replace(None);
        let runs: Vec<RunReport> = self
            .runs
            .iter()
            .filter_map(|(run, entry)| {
                let status = entry.status.clone().or_else(|| status_on_disk(&self.run_dir(*run)))?;
                Some(RunReport { run: *run, status })
            })
            .collect();
        let node = RegisterNode {
            name: self.config.name.clone(),
            pool: self.config.pool.clone(),
            cpu_millis: self.capacity.cpu_millis,
            memory_bytes: self.capacity.memory_bytes,
            gpus: self.capacity.gpus.clone(),
            labels: self.config.labels.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            limits: self.limits.to_string(),
            address: self.config.address.clone(),
            runs,
            now_us: 0,
        };
        let client = self.client.clone();
        let events = self.events_tx.clone();
        self.tasks.spawn(async move {
            let result = register(&client, &node).await.map(|registered| (registered, node.runs));
            let _ = events.send(Event::Registered(result)).await;
        });
    }

    fn on_registered(&mut self, (registered, told): (Registered, Vec<RunReport>)) {
        tracing::info!(server = %self.config.server, node = %self.config.name, runs = told.len(), "registered");
        self.link = Link::Registered;
        self.outage = false;
        self.registrations += 1;
        self.link_tx.send_replace(Some(self.registrations));
        let heartbeat = Duration::from_millis(registered.heartbeat_ms / 2);
        self.report_tick = report_interval(heartbeat.clamp(REPORT_INTERVAL_MIN, REPORT_INTERVAL));
        // A running state the server was just told counts as reported; an end does not, because only a report
        // sent after the run's output is shipped may let the agent forget the run.
        for report in told {
            if let (Some(entry), RunStatus::Running { .. }) = (self.runs.get_mut(&report.run), &report.status) {
                if entry.status.as_ref() == Some(&report.status) {
                    entry.acknowledged = Some(report.status);
                }
            }
        }
        let untracked: Vec<RunRef> = self.runs.iter().filter(|(_, e)| !e.tracked).map(|(run, _)| *run).collect();
        for run in untracked {
            self.track(run, Supervisor::Adopted);
        }
        for run in registered.stop {
            self.stop_run(run);
        }
        if !self.work_in_flight {
            self.poll_work(Duration::ZERO);
        }
        self.send_report(true);
    }

    fn on_work(&mut self, result: Result<Work, ClientError>) -> Result<(), AgentError> {
        self.work_in_flight = false;
        match result {
            Ok(work) => {
                self.reachable();
                self.work_backoff.reset();
                self.epoch = work.epoch;
                self.after_seq = work.seq;
                let stopping: BTreeSet<RunRef> = work.stop.iter().copied().collect();
                for run in work.stop {
                    self.stop_run(run);
                }
                // An assignment stopped in the same batch never starts; its stop reported it ended.
                for assignment in work.start.into_iter().filter(|a| !stopping.contains(&a.run)) {
                    self.start_run(assignment);
                }
                self.poll_work(Duration::ZERO);
            }
            Err(error) => match self.failed(&error)? {
                Failure::Forgotten => {}
                _ => {
                    let delay = self.work_backoff.next_delay();
                    self.poll_work(delay);
                }
            },
        }
        Ok(())
    }

    fn on_reported(&mut self, sent: Vec<RunReport>, result: Result<ReportsAck, ClientError>) -> Result<(), AgentError> {
        self.report_in_flight = false;
        let ack = match result {
            Ok(ack) => ack,
            // The runs stay unreported and go out again with the next report.
            Err(error) => return self.failed(&error).map(drop),
        };
        self.reachable();
        for report in sent {
            let current = self.runs.get(&report.run).and_then(|entry| entry.status.as_ref());
            if current != Some(&report.status) {
                // The run changed while the report was on its way; the newer state goes out next.
                continue;
            }
            if let RunStatus::Finished { .. } = report.status {
                self.runs.remove(&report.run);
                self.archive(report.run);
            } else if let Some(entry) = self.runs.get_mut(&report.run) {
                entry.acknowledged = Some(report.status);
            }
        }
        for run in ack.stop {
            self.stop_run(run);
        }
        self.send_report(false);
        Ok(())
    }

    /// Decides what a failed request means: registering again, giving up, or retrying (logged once per outage).
    fn failed(&mut self, error: &ClientError) -> Result<Failure, AgentError> {
        let failure = classify(error);
        match failure {
            Failure::Refused => return Err(self.refused(error)),
            Failure::Forgotten if self.link == Link::Registered => {
                tracing::warn!(server = %self.config.server, "the server does not know this node any more; registering again");
                self.begin_registration();
            }
            Failure::Forgotten => {}
            Failure::Transient if !self.outage => {
                tracing::warn!(server = %self.config.server, error = %error, "lost contact with the server; retrying");
                self.outage = true;
            }
            Failure::Transient => {}
        }
        Ok(failure)
    }

    fn reachable(&mut self) {
        if self.outage {
            tracing::info!(server = %self.config.server, "the server answers again");
            self.outage = false;
        }
    }

    fn refused(&self, error: &ClientError) -> AgentError {
        AgentError::Unauthorized { server: self.config.server.clone(), message: error.to_string() }
    }

    fn poll_work(&mut self, delay: Duration) {
        if self.link != Link::Registered || self.work_in_flight {
            return;
        }
        self.work_in_flight = true;
        let request = WorkRequest {
            node: self.config.name.clone(),
            epoch: self.epoch.clone(),
            after_seq: self.after_seq,
            wait_ms: WORK_WAIT_MS,
        };
        let client = self.client.clone();
        let events = self.events_tx.clone();
        self.tasks.spawn(async move {
            sleep(delay).await;
            let result = client.work(&request).await;
            let _ = events.send(Event::WorkArrived(result)).await;
        });
    }

    /// Sends the runs' unreported states, with the latest usage, unless a report is already on its way. A
    /// `heartbeat` report goes out even with nothing new to say.
    fn send_report(&mut self, heartbeat: bool) {
        if self.link != Link::Registered || self.report_in_flight {
            return;
        }
        let runs: Vec<RunReport> = self
            .runs
            .iter()
            .filter_map(|(run, entry)| entry.unreported().map(|status| RunReport { run: *run, status: status.clone() }))
            // A bounded batch (each end message is bounded too), so a report always fits the server's body limit;
            // the rest go out with the next one, sent as soon as this one is acknowledged.
            .take(REPORT_RUNS_MAX)
            .collect();
        let usage = self.usage.borrow().clone().filter(|u| u.sampled_at_us != self.usage_sent_at_us);
        if runs.is_empty() && !heartbeat {
            return;
        }
        if let Some(usage) = &usage {
            self.usage_sent_at_us = usage.sampled_at_us;
        }
        self.report_in_flight = true;
        let reports = Reports { node: self.config.name.clone(), runs, usage };
        let client = self.client.clone();
        let events = self.events_tx.clone();
        self.tasks.spawn(async move {
            let result = bounded(&client, client.report(&reports)).await;
            let _ = events.send(Event::Reported { sent: reports.runs, result }).await;
        });
    }

    /// Starts a run the server assigned, unless this node already has (or had) it: after a server restart the
    /// server sends every outstanding assignment again.
    fn start_run(&mut self, mut assignment: Assignment) {
        // A job with an MLflow run logs to this agent's server unless the server named another address: the agent
        // knows the address that reaches the server from this node.
        if assignment.env.contains_key("MLFLOW_RUN_ID") {
            let server = self.config.server.trim_end_matches('/').to_string();
            assignment.env.entry("MLFLOW_TRACKING_URI".to_string()).or_insert(server);
            // A server with a private authority: the job's MLflow client trusts the one the agent does.
            if let Some(ca) = &self.config.server_ca_file {
                let path = ca.display().to_string();
                assignment.env.entry(CA_PATH_VAR.to_string()).or_insert(path);
            }
        }
        let run = assignment.run;
        let path = self.run_dir(run);
        let done = self.runs_dir.join(format!("{}{}", rundir::DONE_PREFIX, rundir::dir_name(run)));
        if self.runs.contains_key(&run) || path.exists() || done.exists() {
            tracing::debug!(job = run.job_id, attempt = run.attempt, "already have this run; ignoring it");
            return;
        }
        tracing::info!(job = run.job_id, attempt = run.attempt, command = ?assignment.command, "starting run");
        let dir = RunDir::new(&path);
        self.runs.insert(run, RunEntry::new());
        if let Some(sha256) = assignment.code.clone() {
            // Fetching and unpacking take a while: a task of its own does them, then starts and follows the run.
            // The spec is written only once the code is in place, so an agent that dies meanwhile leaves a
            // directory without one, which the next agent removes and the server's next copy starts afresh.
            let Some(entry) = self.runs.get_mut(&run) else { return };
            entry.tracked = true;
            let stop = entry.stop.subscribe();
            let ctx = self.run_context();
            let cache = self.config.data_dir.join(code::CODE_DIR);
            let self_exe = self.config.self_exe.clone();
            self.tasks.spawn(async move {
                let supervisor = match prepare_code(&ctx, &cache, &sha256, &dir, assignment).await {
                    Some(Ok(())) => start_supervisor(&self_exe, &dir),
                    Some(Err(message)) => Err(message),
                    // The token was refused; the agent is stopping.
                    None => return,
                };
                let supervisor = supervisor.unwrap_or_else(|message| {
                    tracing::error!(job = run.job_id, attempt = run.attempt, %message, "cannot start run");
                    record_failed_start(&dir, message);
                    Supervisor::Adopted
                });
                runs::track(ctx, run, dir, supervisor, stop).await;
            });
            return;
        }
        let prepared = fs::create_dir(&path)
            .and_then(|()| match assignment.workdir.is_empty() {
                // Without code or a working directory, the run gets an empty folder of its own.
                true => fs::create_dir(path.join(code::WORK_DIR)),
                false => Ok(()),
            })
            // Written in place: the supervisor that reads it starts only after this write is complete.
            .and_then(|()| rundir::write_json(&dir.file(rundir::SPEC_FILE), &with_workdir(assignment, &path)))
            .map_err(|e| format!("cannot prepare the run directory {}: {e}", path.display()));
        match prepared.and_then(|()| start_supervisor(&self.config.self_exe, &dir)) {
            Ok(supervisor) => self.track(run, supervisor),
            Err(message) => {
                tracing::error!(job = run.job_id, attempt = run.attempt, %message, "cannot start run");
                record_failed_start(&dir, message);
                self.track(run, Supervisor::Adopted);
            }
        }
    }

    /// Tells the sampler which runs are going: those whose job process is running.
    fn publish_runs(&self) {
        let probes: Vec<RunProbe> = self
            .runs
            .iter()
            .filter_map(|(run, entry)| match entry.status {
                Some(RunStatus::Running { pid, .. }) => Some(RunProbe { run: *run, pid, dir: self.run_dir(*run) }),
                _ => None,
            })
            .collect();
        self.telemetry.runs.send_if_modified(|current| {
            let changed = *current != probes;
            if changed {
                *current = probes;
            }
            changed
        });
    }

    fn run_context(&self) -> RunContext {
        RunContext { client: self.client.clone(), node: self.config.name.clone(), events: self.events_tx.clone() }
    }

    fn track(&mut self, run: RunRef, supervisor: Supervisor) {
        let dir = RunDir::new(self.run_dir(run));
        let ctx = self.run_context();
        let Some(entry) = self.runs.get_mut(&run) else { return };
        entry.tracked = true;
        self.tasks.spawn(runs::track(ctx, run, dir, supervisor, entry.stop.subscribe()));
    }

    fn stop_run(&mut self, run: RunRef) {
        let done = self.runs_dir.join(format!("{}{}", rundir::DONE_PREFIX, rundir::dir_name(run)));
        match self.runs.get(&run) {
            Some(entry) if !matches!(entry.status, Some(RunStatus::Finished { .. })) => {
                tracing::info!(job = run.job_id, attempt = run.attempt, "stopping run");
                entry.stop.send_replace(true);
            }
            // Stopped before this node ever started it (the stop replaced the start in the server's mailbox, or
            // came in the same batch): say it ended, or the server would wait for an end forever.
            None if !self.run_dir(run).exists() && !done.exists() => {
                tracing::info!(job = run.job_id, attempt = run.attempt, "stopped before it started");
                let mut entry = RunEntry::new();
                entry.status = Some(RunStatus::Finished {
                    end: ferry_api::agent::RunEnd::Stopped,
                    exit_code: None,
                    signal: None,
                    finished_at_us: rundir::now_us(),
                    log_bytes: 0,
                    message: Some("stopped before it started".to_string()),
                    started_at_us: None,
                });
                self.runs.insert(run, entry);
                self.send_report(false);
            }
            _ => tracing::debug!(job = run.job_id, attempt = run.attempt, "asked to stop a run that is not going"),
        }
    }

    /// Moves an acknowledged run out of the way so it is never reported again, keeping the latest few for people
    /// to look at.
    fn archive(&self, run: RunRef) {
        let from = self.run_dir(run);
        if !from.exists() {
            // A run stopped before it started has no directory.
            return;
        }
        let to = self.runs_dir.join(format!("{}{}", rundir::DONE_PREFIX, rundir::dir_name(run)));
        let _ = fs::remove_dir_all(&to);
        if let Err(e) = fs::rename(&from, &to) {
            tracing::warn!(dir = %from.display(), error = %e, "cannot archive the run directory; removing it");
            let _ = fs::remove_dir_all(&from);
        }
        prune_done(&self.runs_dir, DONE_RUNS_KEPT);
    }

    fn run_dir(&self, run: RunRef) -> PathBuf {
        self.runs_dir.join(rundir::dir_name(run))
    }
}

/// The assignment as the supervisor reads it: a run without a working directory of its own runs in the `work`
/// folder of its run directory.
fn with_workdir(mut assignment: Assignment, run_dir: &Path) -> Assignment {
    if assignment.workdir.is_empty() {
        assignment.workdir = run_dir.join(code::WORK_DIR).display().to_string();
    }
    assignment
}

fn start_supervisor(self_exe: &Path, dir: &RunDir) -> Result<Supervisor, String> {
    runs::spawn_supervisor(self_exe, dir).map(Supervisor::Child).map_err(|e| {
        format!("cannot start the run's supervisor `{} {}`: {e}", self_exe.display(), runs::SHIM_SUBCOMMAND)
    })
}

/// Writes the end of a run that never got a supervisor, so its task reports it like any other end.
fn record_failed_start(dir: &RunDir, message: String) {
    let exit = rundir::Exit {
        end: ferry_api::agent::RunEnd::FailedToStart,
        exit_code: None,
        signal: None,
        finished_at_us: rundir::now_us(),
        message: Some(ferry_api::text::cut(&message, ferry_api::agent::RUN_MESSAGE_CHARS_MAX)),
    };
    let _ = fs::create_dir_all(dir.path());
    if let Err(e) = rundir::write_json_atomic(&dir.file(rundir::EXIT_FILE), &exit) {
        tracing::error!(error = %e, "cannot record the failed start");
    }
}

/// Fetches the run's code (retrying transient failures a bounded number of times), unpacks it into the run's
/// `work` folder and writes the spec. `Some(Err)` says why the run cannot start; `None` means the server refused
/// the agent's token, which the agent's loop has been told.
async fn prepare_code(
    ctx: &RunContext,
    cache: &Path,
    sha256: &str,
    dir: &RunDir,
    assignment: Assignment,
) -> Option<Result<(), String>> {
    if let Err(e) = fs::create_dir(dir.path()) {
        return Some(Err(format!("cannot prepare the run directory {}: {e}", dir.path().display())));
    }
    let mut backoff = Backoff::new();
    let mut tries = 0;
    let archive = loop {
        tries += 1;
        let fetched =
            tokio::time::timeout(CODE_FETCH_TIMEOUT, code::fetch(&ctx.client, &ctx.node, cache, sha256)).await;
        let error = match fetched {
            Ok(Ok(archive)) => break archive,
            Ok(Err(ref e)) => e.to_string(),
            Err(_) => format!("no complete download within {}s", CODE_FETCH_TIMEOUT.as_secs()),
        };
        let transient = match fetched {
            Ok(Err(code::FetchError::Client(e))) if classify(&e) == Failure::Refused => {
                let _ = ctx.events.send(Event::Refused(e)).await;
                return None;
            }
            Ok(Err(code::FetchError::Client(e))) => classify(&e) == Failure::Transient,
            Ok(Err(code::FetchError::TooLarge)) => false,
            _ => true,
        };
        if !transient || tries >= CODE_FETCH_TRIES_MAX {
            return Some(Err(format!("cannot fetch the job's code (sha256 {sha256}): {error}")));
        }
        tracing::warn!(sha256, error = %error, "cannot fetch the job's code yet; trying again");
        sleep(backoff.next_delay()).await;
    };
    let work = dir.path().join(code::WORK_DIR);
    let unpacked = tokio::task::spawn_blocking(move || ferry_archive::unpack(&archive, &work)).await;
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            return Some(Err(format!(
                "cannot unpack the job's code (sha256 {sha256}): {message}; nothing was written outside the run's \
                 folder"
            )))
        }
        Err(e) => return Some(Err(format!("unpacking the job's code failed: {e}"))),
    }
    let spec = with_workdir(assignment, dir.path());
    Some(
        rundir::write_json(&dir.file(rundir::SPEC_FILE), &spec)
            .map_err(|e| format!("cannot write the run's spec in {}: {e}", dir.path().display())),
    )
}

enum Flow {
    Continue,
    Stop,
}

fn report_interval(period: Duration) -> Interval {
    let mut tick = interval(period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// Registers, retrying with backoff for as long as the server cannot be reached; stops only on an answer that a
/// retry cannot change.
async fn register(client: &Client, node: &RegisterNode) -> Result<Registered, AgentError> {
    let mut backoff = Backoff::new();
    let mut logged = false;
    let mut node = node.clone();
    loop {
        node.now_us = rundir::now_us();
        let error = match bounded(client, client.register_node(&node)).await {
            Ok(registered) => return Ok(registered),
            Err(error) => error,
        };
        match &error {
            ClientError::Api { status: 401 | 403, .. } => {
                return Err(AgentError::Unauthorized {
                    server: client.server().to_string(),
                    message: error.to_string(),
                });
            }
            ClientError::Api { status, .. } if *status < 500 && *status != 429 => {
                return Err(AgentError::Rejected { server: client.server().to_string(), message: error.to_string() });
            }
            // A certificate that does not verify will not verify on a retry: say so and stop.
            ClientError::Untrusted { .. } | ClientError::NotTls { .. } | ClientError::PinMismatch { .. } => {
                return Err(AgentError::Tls(error.to_string()));
            }
            _ if !logged => {
                tracing::warn!(server = client.server(), error = %error, "cannot register with the server; retrying until it answers");
                logged = true;
            }
            _ => {}
        }
        sleep(backoff.next_delay()).await;
    }
}

/// What a run's files say about it, for telling the server at registration before the run's task has looked.
fn status_on_disk(path: &Path) -> Option<RunStatus> {
    let dir = RunDir::new(path);
    if let Ok(Some(exit)) = dir.read_exit() {
        return Some(RunStatus::Finished {
            end: exit.end,
            exit_code: exit.exit_code,
            signal: exit.signal,
            finished_at_us: exit.finished_at_us,
            log_bytes: dir.output_bytes(),
            message: exit.message,
            started_at_us: dir.read_started().ok().flatten().map(|s| s.started_at_us),
        });
    }
    let started = dir.read_started().ok()??;
    Some(RunStatus::Running { pid: started.pid, started_at_us: started.started_at_us })
}

/// Removes the oldest archived run directories beyond `keep`.
fn prune_done(runs_dir: &Path, keep: usize) {
    let Ok(entries) = fs::read_dir(runs_dir) else { return };
    let mut done: Vec<(RunRef, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let run = name.to_str()?.strip_prefix(rundir::DONE_PREFIX).and_then(rundir::parse_dir_name)?;
            Some((run, entry.path()))
        })
        .collect();
    if done.len() <= keep {
        return;
    }
    done.sort();
    for (_, path) in &done[..done.len() - keep] {
        let _ = fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::ErrorBody;

    fn api(status: u16, code: ErrorCode) -> ClientError {
        ClientError::Api { status, body: ErrorBody { code, message: "m".into() } }
    }

    #[test]
    fn failures_are_sorted_by_what_fixes_them() {
        assert_eq!(classify(&api(401, ErrorCode::Unauthenticated)), Failure::Refused);
        assert_eq!(classify(&api(403, ErrorCode::Forbidden)), Failure::Refused);
        assert_eq!(classify(&api(404, ErrorCode::NotFound)), Failure::Forgotten);
        assert_eq!(classify(&api(503, ErrorCode::Unavailable)), Failure::Transient);
        assert_eq!(classify(&ClientError::Unreachable { server: "s".into() }), Failure::Transient);
    }

    #[test]
    fn pruning_keeps_the_latest_runs_and_nothing_else_goes() {
        let dir = tempfile::tempdir().unwrap();
        for name in [".done-1-1", ".done-2-1", ".done-10-1", ".done-2-2", "3-1", ".done-x"] {
            fs::create_dir(dir.path().join(name)).unwrap();
        }
        prune_done(dir.path(), 2);
        let mut left: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, [".done-10-1", ".done-2-2", ".done-x", "3-1"]);
    }
}
