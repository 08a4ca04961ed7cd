//! The agent end to end, against a small in-process server that speaks the agent protocol the way
//! `ferry_api::agent` documents it, with real supervisors and real jobs. Waits poll with a bound; nothing sleeps to
//! synchronise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use ferry_agent::{AgentConfig, AgentError, DeclaredGpu};
use ferry_api::agent::{
    Assignment, LogAck, RegisterNode, Registered, Reports, ReportsAck, RunEnd, RunRef, RunReport, RunStatus, Work,
    WorkRequest,
};
use ferry_api::{ErrorBody, ErrorCode};
use serde::Deserialize;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout_at, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_ferry-agent-shim-test");
const TOKEN: &str = "agent-token";
/// The longest any wait here may take before the test fails; far above what the runs need.
const WAIT_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);

/// What the fake server knows and was told.
#[derive(Default)]
struct Server {
    /// Whether the node is registered; work and reports answer 404 while it is not.
    known: bool,
    /// Answer 401 to everything.
    refuse: bool,
    registrations: Vec<RegisterNode>,
    /// Work batches by sequence number; a poll gets every batch after the one it names.
    batches: Vec<Work>,
    reports: Vec<RunReport>,
    usage_samples: usize,
    logs: BTreeMap<RunRef, Vec<u8>>,
    /// Bytes the agent sent that the server already had.
    resent_bytes: usize,
    /// Broken promises: an end reported before all of the run's output arrived.
    violations: Vec<String>,
    stop_at_registration: Vec<RunRef>,
    stop_at_next_report: Vec<RunRef>,
}

const EPOCH: &str = "epoch-1";

#[derive(Clone, Default)]
struct Fake {
    state: Arc<Mutex<Server>>,
    changed: Arc<Notify>,
}

type Reply<T> = Result<Json<T>, (StatusCode, Json<ErrorBody>)>;

fn error(code: ErrorCode, message: &str) -> (StatusCode, Json<ErrorBody>) {
    let status = StatusCode::from_u16(code.http_status()).unwrap();
    (status, Json(ErrorBody { code, message: message.to_string() }))
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, Server> {
        self.state.lock().unwrap()
    }

    /// Checks the token, and that the node is registered where that matters.
    fn admit(
        &self,
        headers: &HeaderMap,
        need_known: bool,
    ) -> Result<MutexGuard<'_, Server>, (StatusCode, Json<ErrorBody>)> {
        let state = self.lock();
        let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
        if state.refuse || bearer != Some(&format!("Bearer {TOKEN}")) {
            return Err(error(ErrorCode::Unauthenticated, "unknown token"));
        }
        if need_known && !state.known {
            return Err(error(ErrorCode::NotFound, "no such node"));
        }
        Ok(state)
    }

    fn push_work(&self, start: Vec<Assignment>, stop: Vec<RunRef>) {
        let mut state = self.lock();
        let seq = state.batches.len() as u64 + 1;
        state.batches.push(Work { epoch: EPOCH.into(), seq, start, stop });
        drop(state);
        self.changed.notify_waiters();
    }

    fn reports_of(&self, run: RunRef) -> Vec<RunStatus> {
        self.lock().reports.iter().filter(|r| r.run == run).map(|r| r.status.clone()).collect()
    }

    fn finished(&self, run: RunRef) -> Option<RunStatus> {
        self.reports_of(run).into_iter().find(|s| matches!(s, RunStatus::Finished { .. }))
    }

    fn running(&self, run: RunRef) -> bool {
        self.reports_of(run).iter().any(|s| matches!(s, RunStatus::Running { .. }))
    }

    fn log(&self, run: RunRef) -> Vec<u8> {
        self.lock().logs.get(&run).cloned().unwrap_or_default()
    }
}

async fn register(State(fake): State<Fake>, headers: HeaderMap, Json(node): Json<RegisterNode>) -> Reply<Registered> {
    let mut state = fake.admit(&headers, false)?;
    state.known = true;
    state.registrations.push(node);
    let stop = std::mem::take(&mut state.stop_at_registration);
    Ok(Json(Registered { heartbeat_ms: 2_000, stop }))
}

async fn work(State(fake): State<Fake>, headers: HeaderMap, Json(request): Json<WorkRequest>) -> Reply<Work> {
    let deadline = Instant::now() + Duration::from_millis(request.wait_ms);
    loop {
        let changed = fake.changed.notified();
        {
            let state = fake.admit(&headers, true)?;
            let after = if request.epoch == EPOCH { request.after_seq } else { 0 };
            let due: Vec<&Work> = state.batches.iter().filter(|w| w.seq > after).collect();
            let seq = state.batches.len() as u64;
            if !due.is_empty() {
                let start = due.iter().flat_map(|w| w.start.clone()).collect();
                let stop = due.iter().flat_map(|w| w.stop.clone()).collect();
                return Ok(Json(Work { epoch: EPOCH.into(), seq, start, stop }));
            }
            if Instant::now() >= deadline {
                return Ok(Json(Work { epoch: EPOCH.into(), seq, start: vec![], stop: vec![] }));
            }
        }
        let _ = timeout_at(deadline, changed).await;
    }
}

async fn reports(State(fake): State<Fake>, headers: HeaderMap, Json(reports): Json<Reports>) -> Reply<ReportsAck> {
    let mut state = fake.admit(&headers, true)?;
    if reports.usage.is_some() {
        state.usage_samples += 1;
    }
    for report in reports.runs {
        if let RunStatus::Finished { log_bytes, .. } = &report.status {
            let held = state.logs.get(&report.run).map_or(0, Vec::len) as u64;
            if held != *log_bytes {
                let violation =
                    format!("{:?} ended with {log_bytes} bytes of output but the server has {held}", report.run);
                state.violations.push(violation);
            }
        }
        state.reports.push(report);
    }
    let stop = std::mem::take(&mut state.stop_at_next_report);
    Ok(Json(ReportsAck { stop }))
}

#[derive(Deserialize)]
struct UploadQuery {
    offset: u64,
    node: String,
}

async fn upload(
    State(fake): State<Fake>,
    headers: HeaderMap,
    UrlPath((job_id, attempt)): UrlPath<(u64, u32)>,
    Query(query): Query<UploadQuery>,
    body: Bytes,
) -> Reply<LogAck> {
    let mut state = fake.admit(&headers, false)?;
    assert_eq!(query.node, "test-node");
    let run = RunRef::new(job_id, attempt);
    let held = state.logs.get(&run).map_or(0, Vec::len) as u64;
    if query.offset > held {
        // A gap: take nothing and say how much is here.
        return Ok(Json(LogAck { stored: held }));
    }
    let overlap = ((held - query.offset) as usize).min(body.len());
    state.resent_bytes += overlap;
    let log = state.logs.entry(run).or_default();
    log.extend_from_slice(&body[overlap..]);
    Ok(Json(LogAck { stored: log.len() as u64 }))
}

async fn serve(fake: Fake) -> String {
    let app = Router::new()
        .route("/api/v1/agent/register", post(register))
        .route("/api/v1/agent/work", post(work))
        .route("/api/v1/agent/reports", post(reports))
        .route("/api/v1/agent/runs/{job}/{attempt}/logs", post(upload))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

struct Agent {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Agent {
    fn start(config: AgentConfig) -> Agent {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ferry_agent::run(config, async move {
            let _ = stopped.await;
        }));
        Agent { stop, task }
    }

    async fn shut_down(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().expect("the agent stops cleanly");
    }
}

fn config(server: &str, data_dir: &Path) -> AgentConfig {
    let mut config = AgentConfig::new(server, TOKEN, data_dir.to_path_buf(), PathBuf::from(SHIM));
    config.name = "test-node".into();
    config.declared_gpus = vec![DeclaredGpu { index: 7, model: "Test GPU".into(), memory_bytes: 1 << 30 }];
    config
}

fn assignment(job_id: u64, workdir: &Path, command: &[&str]) -> Assignment {
    Assignment {
        run: RunRef::new(job_id, 1),
        command: command.iter().map(|s| s.to_string()).collect(),
        workdir: workdir.display().to_string(),
        code: None,
        env: BTreeMap::new(),
        secrets: Default::default(),
        owner: String::new(),
        cpu_millis: 500,
        memory_bytes: 256 << 20,
        gpu_ids: vec![],
        max_runtime_s: None,
        grace_s: 1,
        image: None,
    }
}

/// Polls `probe` until it gives a value, failing the test after `WAIT_MAX`.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(POLL).await;
    }
}

fn end_of(status: &RunStatus) -> (RunEnd, Option<i32>, Option<i32>, u64) {
    match status {
        RunStatus::Finished { end, exit_code, signal, log_bytes, .. } => (*end, *exit_code, *signal, *log_bytes),
        other => panic!("not finished: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_jobs_ships_their_output_then_reports_their_end() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(&server, data.path()));

    let node = eventually("registration", || fake.lock().registrations.first().cloned()).await;
    assert_eq!((node.name.as_str(), node.pool.as_str()), ("test-node", "local"));
    assert!(["cgroup-v1", "cgroup-v2", "none"].contains(&node.limits.as_str()), "{}", node.limits);
    assert!(node.cpu_millis >= 1000 && node.memory_bytes > 0 && node.runs.is_empty());
    let declared = node.gpus.iter().find(|g| g.index == 7).expect("the declared GPU is registered");
    assert_eq!((declared.model.as_str(), declared.source.as_str()), ("Test GPU", "config"));

    // A quick job: every byte arrives, then the end.
    let quick = assignment(880_001, work.path(), &["/bin/sh", "-c", r"printf 'hello\n\377no newline'"]);
    fake.push_work(vec![quick.clone()], vec![]);
    let end = eventually("the quick job's end", || fake.finished(quick.run)).await;
    assert_eq!(end_of(&end), (RunEnd::Exited, Some(0), None, 17));
    assert_eq!(fake.log(quick.run), b"hello\n\xffno newline");
    let done = data.path().join("runs/.done-880001-1");
    eventually("the finished run's directory to be archived", || done.exists().then_some(())).await;
    assert!(!data.path().join("runs/880001-1").exists());

    // Two long jobs: one stopped through the work channel, one through a report's answer.
    let by_work = assignment(880_002, work.path(), &["sleep", "300"]);
    let by_report = assignment(880_003, work.path(), &["sleep", "300"]);
    fake.push_work(vec![by_work.clone(), by_report.clone()], vec![]);
    eventually("both long jobs to run", || (fake.running(by_work.run) && fake.running(by_report.run)).then_some(()))
        .await;
    fake.lock().stop_at_next_report.push(by_report.run);
    fake.push_work(vec![], vec![by_work.run]);
    for run in [by_work.run, by_report.run] {
        let end = eventually("a stopped job's end", || fake.finished(run)).await;
        assert_eq!(end_of(&end), (RunEnd::Stopped, None, Some(15), 0));
    }

    // An assignment sent again (as after a server restart) is not run again; one stopped in the same batch as
    // its start never runs, and is reported ended (stopped, never started) so the server does not wait for it.
    // Work is handled in order, so once the next job has ended both were dealt with.
    let reports_before = fake.reports_of(quick.run).len();
    let cancelled = assignment(880_004, work.path(), &["sleep", "300"]);
    fake.push_work(vec![quick.clone(), cancelled.clone()], vec![cancelled.run]);
    let next = assignment(880_005, work.path(), &["true"]);
    fake.push_work(vec![next.clone()], vec![]);
    eventually("the next job's end", || fake.finished(next.run)).await;
    assert_eq!(fake.reports_of(quick.run).len(), reports_before);
    let reports = fake.reports_of(cancelled.run);
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(end_of(&reports[0]), (RunEnd::Stopped, None, None, 0));
    assert!(matches!(reports[0], RunStatus::Finished { started_at_us: None, .. }), "{reports:?}");
    assert!(!data.path().join("runs/880004-1").exists());

    eventually("a report with usage", || (fake.lock().usage_samples > 0).then_some(())).await;
    agent.shut_down().await;
    let state = fake.lock();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert_eq!(state.resent_bytes, 0);
    assert_eq!(state.registrations.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_its_runs_and_ships_the_rest_of_their_output() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let first = Agent::start(config(&server, data.path()));
    eventually("registration", || (!fake.lock().registrations.is_empty()).then_some(())).await;

    let gated_script = "printf before; while [ ! -e go ]; do sleep 0.05; done; printf after";
    let gated = assignment(880_011, work.path(), &["/bin/sh", "-c", gated_script]);
    let doomed = assignment(880_012, work.path(), &["sleep", "300"]);
    fake.push_work(vec![gated.clone(), doomed.clone()], vec![]);
    eventually("the output so far", || (fake.log(gated.run) == b"before" && fake.running(doomed.run)).then_some(()))
        .await;
    first.shut_down().await;

    // The runs outlive the agent; the next one finds them, tells the server, and obeys its answer.
    fake.lock().stop_at_registration.push(doomed.run);
    let second = Agent::start(config(&server, data.path()));
    let node = eventually("registration again", || fake.lock().registrations.get(1).cloned()).await;
    let told: Vec<RunRef> = node.runs.iter().map(|r| r.run).collect();
    assert_eq!(told, [gated.run, doomed.run]);
    assert!(node.runs.iter().all(|r| matches!(r.status, RunStatus::Running { .. })), "{:?}", node.runs);

    let locked = ferry_agent::run(config(&server, data.path()), async {}).await.unwrap_err().to_string();
    let expected = format!("another agent (pid {}) is using {}", std::process::id(), data.path().display());
    assert!(locked.starts_with(&expected), "{locked}");

    std::fs::write(work.path().join("go"), "").unwrap();
    let end = eventually("the adopted job's end", || fake.finished(gated.run)).await;
    assert_eq!(end_of(&end), (RunEnd::Exited, Some(0), None, 11));
    assert_eq!(fake.log(gated.run), b"beforeafter");
    let end = eventually("the stopped job's end", || fake.finished(doomed.run)).await;
    assert_eq!(end_of(&end).0, RunEnd::Stopped);
    second.shut_down().await;

    let state = fake.lock();
    assert!(state.violations.is_empty(), "{:?}", state.violations);
    assert_eq!(state.resent_bytes, 0, "the adopting agent asks how much the server has before sending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgetful_server_gets_the_node_again_and_a_refusing_one_stops_the_agent() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(&server, data.path()));
    eventually("registration", || (!fake.lock().registrations.is_empty()).then_some(())).await;

    fake.lock().known = false;
    eventually("registration after the server forgot the node", || {
        (fake.lock().registrations.len() == 2).then_some(())
    })
    .await;

    fake.lock().refuse = true;
    let result = tokio::time::timeout(WAIT_MAX, agent.task).await.expect("a refused agent stops").unwrap();
    let message = result.unwrap_err().to_string();
    assert!(message.starts_with(&format!("the server at {server} refused the agent: unknown token")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_that_dies_is_reported_and_its_job_does_not_outlive_it() {
    let fake = Fake::default();
    let server = serve(fake.clone()).await;
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let agent = Agent::start(config(&server, data.path()));
    eventually("registration", || (!fake.lock().registrations.is_empty()).then_some(())).await;

    let job = assignment(880_021, work.path(), &["sleep", "300"]);
    fake.push_work(vec![job.clone()], vec![]);
    let pid = eventually("the job to run", || {
        fake.reports_of(job.run).into_iter().find_map(|s| match s {
            RunStatus::Running { pid, .. } => Some(pid as i32),
            _ => None,
        })
    })
    .await;
    let shim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.path().join("runs/880021-1/shim.json")).unwrap()).unwrap();
    let shim_pid = shim["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid), nix::sys::signal::Signal::SIGKILL).unwrap();

    let end = eventually("the end of the orphaned run", || fake.finished(job.run)).await;
    let RunStatus::Finished { end, exit_code, message, .. } = end else { unreachable!() };
    assert_eq!((end, exit_code), (RunEnd::Exited, None));
    assert_eq!(message.as_deref(), Some("the run's supervisor died; its exit status is unknown"));
    let gone = |pid: i32| match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().unwrap().split_whitespace().next() == Some("Z"),
        Err(_) => true,
    };
    eventually("the orphaned job to be killed", || gone(pid).then_some(())).await;
    for group in ["memory/ferry/job-880021-1", "cpu/ferry/job-880021-1", "ferry/job-880021-1"] {
        assert!(!Path::new("/sys/fs/cgroup").join(group).exists(), "{group} is left behind");
    }
    agent.shut_down().await;
}
