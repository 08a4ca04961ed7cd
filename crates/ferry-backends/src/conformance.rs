//! The conformance suite: the same scenarios against every engine, each run against the real engine by that engine's
//! test (`tests/<engine>.rs`): capacity, submit and output, exit codes, a job that fails, cancel, resubmission under the
//! same name, finding runs again, an engine that rejects a job, an engine that is down, and user input full of shell
//! metacharacters arriving intact in every field that reaches the engine.
//!
//! The jobs run a small Python program, the probe, that prints what it received as one JSON line, so that one command
//! works on every engine (Spark runs Python files, not shell commands).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_api::agent::{RunEnd, SecretEnv};

use crate::engine::{Engine, EngineError, EngineJob, NativeState};

/// What an engine's test tells the suite.
pub struct Fixture {
    /// The engine under test, connected to the real engine.
    pub engine: Box<dyn Engine>,
    /// The same kind of engine pointed at an address where nothing listens.
    pub down: Box<dyn Engine>,
    /// A directory the engine's nodes can read and write (the suite writes the probe and working directories here).
    pub dir: PathBuf,
    /// The Python interpreter the engine's nodes run the probe with.
    pub python: String,
    /// How long a trivial job may take from submission to its end on this engine.
    pub patience: Duration,
    /// A job this engine must refuse at submission, made from a valid one; `None` where the engine accepts any
    /// well-formed job and leaves it pending (the suite then skips that scenario and says so).
    pub reject: Option<fn(EngineJob) -> EngineJob>,
    /// A unique tag for the names of this run of the suite.
    pub tag: String,
}

/// Strings no engine may interpret: each field that reaches a script, a command line or a manifest gets one.
pub const NASTY: &[&str] = &[
    "$(touch /tmp/ferry-conformance-pwned)",
    "`touch /tmp/ferry-conformance-pwned`",
    "a; touch /tmp/ferry-conformance-pwned",
    "it's \"quoted\" \\ back",
    "line one\nline two\n#SBATCH --wrap=touch",
    "${HOME} %j %x * ~ | & > <",
];

const PWNED: &str = "/tmp/ferry-conformance-pwned";

const PROBE: &str = r#"
import json, os, sys, time
args = sys.argv[1:]
code = 0
if args[:1] == ["--exit"]:
    code = int(args[1]); args = args[2:]
if args[:1] == ["--sleep"]:
    print("FERRY-PROBE-SLEEPING", flush=True)
    time.sleep(float(args[1])); args = args[2:]
env = {k: v for k, v in os.environ.items() if k.startswith("FERRY_PROBE")}
print("FERRY-PROBE " + json.dumps({"args": args, "env": env, "cwd": os.getcwd()}), flush=True)
sys.exit(code)
"#;

impl Fixture {
    fn probe(&self) -> String {
        self.dir.join("probe.py").to_string_lossy().into_owned()
    }

    fn job(&self, case: &str, args: &[&str]) -> EngineJob {
        let mut command = vec![self.python.clone(), self.probe()];
        command.extend(args.iter().map(|a| a.to_string()));
        EngineJob {
            name: format!("ferry-{}-{case}-0", self.tag),
            job_id: 1,
            attempt: 0,
            node: String::new(),
            user: "conformance".into(),
            project: "default".into(),
            command,
            env: BTreeMap::from([("FERRY_PROBE".to_string(), "plain".to_string())]),
            secrets: Default::default(),
            secrets_fetch: None,
            workdir: self.dir.to_string_lossy().into_owned(),
            cpu_millis: 1000,
            memory_bytes: 128 << 20,
            gpus: 0,
            nodes: 1,
            max_runtime_s: Some(600),
            image: None,
            maybe_submitted: false,
        }
    }
}

/// Runs every scenario; panics with the scenario's name and what went wrong.
pub async fn run(fx: &Fixture) {
    std::fs::create_dir_all(&fx.dir).expect("the suite's directory can be made");
    std::fs::write(fx.probe(), PROBE).expect("the probe can be written");
    let _ = std::fs::remove_file(PWNED);
    let node = capacity(fx).await;
    let with_node = |mut job: EngineJob| {
        job.node = node.clone();
        job
    };
    submit_output_and_exit(fx, with_node(fx.job("ok", &["a", "b c"]))).await;
    exit_codes(fx, with_node(fx.job("exit3", &["--exit", "3"]))).await;
    failing_program(fx, with_node(fx.job("missing", &[]))).await;
    metacharacters(fx, with_node(fx.job("nasty", NASTY))).await;
    secrets(fx, with_node(fx.job("secret", &[]))).await;
    cancel(fx, with_node(fx.job("cancel", &["--sleep", "600"]))).await;
    resubmission_and_find(fx, with_node(fx.job("twice", &[]))).await;
    rejected(fx, with_node(fx.job("rejected", &[]))).await;
    engine_down(fx, with_node(fx.job("down", &[]))).await;
    assert!(!Path::new(PWNED).exists(), "a metacharacter in some field ran a command: {PWNED} exists");
}

async fn capacity(fx: &Fixture) -> String {
    let nodes = fx.engine.nodes().await.unwrap_or_else(|e| panic!("capacity: {e}"));
    assert!(!nodes.is_empty(), "capacity: the engine reported no nodes");
    for n in &nodes {
        assert!(!n.name.is_empty() && n.cpu_millis > 0 && n.memory_bytes > 0, "capacity: implausible node {n:?}");
    }
    nodes.iter().find(|n| n.up).unwrap_or_else(|| panic!("capacity: no node is up: {nodes:?}")).name.clone()
}

/// Waits for the run to end and returns its end and all its output.
async fn finish(fx: &Fixture, case: &str, native_id: &str) -> (NativeState, String) {
    let deadline = Instant::now() + fx.patience;
    let mut output = Vec::new();
    loop {
        let state = fx.engine.states(&[native_id.to_string()]).await.unwrap_or_else(|e| panic!("{case}: states: {e}"));
        assert_eq!(state.len(), 1, "{case}: one state per id");
        read_output(fx, case, native_id, &mut output).await;
        if let NativeState::Finished { .. } = &state[0] {
            // Output may land a little after the end (files flushed, logs collected): read until it is quiet.
            for _ in 0..20 {
                let before = output.len();
                read_output(fx, case, native_id, &mut output).await;
                if output.len() == before && !output.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            return (state[0].clone(), String::from_utf8_lossy(&output).into_owned());
        }
        assert!(Instant::now() < deadline, "{case}: not finished after {:?}: {:?}", fx.patience, state[0]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn read_output(fx: &Fixture, case: &str, native_id: &str, output: &mut Vec<u8>) {
    loop {
        let chunk = fx
            .engine
            .output(native_id, output.len() as u64, 64 << 10)
            .await
            .unwrap_or_else(|e| panic!("{case}: output: {e}"));
        if chunk.is_empty() {
            return;
        }
        output.extend_from_slice(&chunk);
    }
}

fn probe_line(case: &str, output: &str) -> serde_json::Value {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("FERRY-PROBE "))
        .unwrap_or_else(|| panic!("{case}: the probe's line is missing from the output:\n{output}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{case}: the probe's line is not JSON ({e}): {line}"))
}

async fn submit_output_and_exit(fx: &Fixture, job: EngineJob) {
    let submitted = fx.engine.submit(&job).await.unwrap_or_else(|e| panic!("submit: {e}"));
    assert!(!submitted.native_id.is_empty() && !submitted.native_spec.is_empty(), "submit: {submitted:?}");
    let (state, output) = finish(fx, "submit", &submitted.native_id).await;
    match state {
        NativeState::Finished { end: RunEnd::Exited, exit_code: Some(0), .. } => {}
        other => panic!("submit: a job that exits 0 ended as {other:?}; output:\n{output}"),
    }
    let probe = probe_line("submit", &output);
    assert_eq!(probe["args"], serde_json::json!(["a", "b c"]), "submit: arguments");
    assert_eq!(probe["env"]["FERRY_PROBE"], "plain", "submit: environment");
}

async fn exit_codes(fx: &Fixture, job: EngineJob) {
    let submitted = fx.engine.submit(&job).await.unwrap_or_else(|e| panic!("exit code: {e}"));
    let (state, output) = finish(fx, "exit code", &submitted.native_id).await;
    match state {
        NativeState::Finished { exit_code: Some(3), .. } => {}
        other => panic!("exit code: a job that exits 3 ended as {other:?}; output:\n{output}"),
    }
    probe_line("exit code", &output);
}

async fn failing_program(fx: &Fixture, mut job: EngineJob) {
    let missing = fx.dir.join("no-such-program.py").to_string_lossy().into_owned();
    job.command = vec![fx.python.clone(), missing];
    match fx.engine.submit(&job).await {
        Ok(submitted) => match finish(fx, "failing", &submitted.native_id).await {
            (NativeState::Finished { exit_code: Some(c), .. }, _) if c != 0 => {}
            (NativeState::Finished { exit_code: None, end, .. }, _) if end != RunEnd::Exited => {}
            (other, output) => panic!("failing: a missing program ended as {other:?}; output:\n{output}"),
        },
        Err(e) => assert!(!e.is_transient(), "failing: a missing program must not look like an outage: {e}"),
    }
}

async fn metacharacters(fx: &Fixture, mut job: EngineJob) {
    let nasty_dir = fx.dir.join("work dir 'q' $(x) \"d\"");
    std::fs::create_dir_all(&nasty_dir).expect("the nasty directory can be made");
    job.workdir = nasty_dir.to_string_lossy().into_owned();
    job.user = NASTY[2].to_string();
    job.project = NASTY[4].to_string();
    for (i, value) in NASTY.iter().enumerate() {
        job.env.insert(format!("FERRY_PROBE_{i}"), value.to_string());
    }
    let submitted = fx.engine.submit(&job).await.unwrap_or_else(|e| panic!("metacharacters: {e}"));
    let (state, output) = finish(fx, "metacharacters", &submitted.native_id).await;
    assert!(
        matches!(state, NativeState::Finished { exit_code: Some(0), .. }),
        "metacharacters: ended as {state:?}; output:\n{output}\nnative form:\n{}",
        submitted.native_spec
    );
    let probe = probe_line("metacharacters", &output);
    assert_eq!(probe["args"], serde_json::json!(NASTY), "metacharacters: arguments changed on the way");
    for (i, value) in NASTY.iter().enumerate() {
        assert_eq!(probe["env"][format!("FERRY_PROBE_{i}")], *value, "metacharacters: environment value {i}");
    }
    assert_eq!(probe["cwd"], job.workdir, "metacharacters: working directory");
    assert!(!Path::new(PWNED).exists(), "metacharacters: a field ran a command");
}

/// A secret arrives in the run's environment intact and appears nowhere in the native form Ferry shows; an engine
/// that cannot hide it (Ray) refuses it as unsupported rather than showing it.
async fn secrets(fx: &Fixture, mut job: EngineJob) {
    let value = format!("s3cr3t-{} {}", fx.tag, NASTY[0]);
    job.secrets = SecretEnv(BTreeMap::from([("FERRY_PROBE_SECRET".to_string(), value.clone())]));
    let submitted = match fx.engine.submit(&job).await {
        Ok(submitted) => submitted,
        Err(EngineError::Unsupported(why)) if fx.engine.kind() == "ray" => {
            assert!(why.contains("FERRY_PROBE_SECRET"), "secrets: the refusal names the secret: {why}");
            return;
        }
        Err(e) => panic!("secrets: {e}"),
    };
    assert!(
        !submitted.native_spec.contains("s3cr3t-"),
        "secrets: the native form shows the value:\n{}",
        submitted.native_spec
    );
    let (state, output) = finish(fx, "secrets", &submitted.native_id).await;
    assert!(matches!(state, NativeState::Finished { exit_code: Some(0), .. }), "secrets: ended as {state:?}: {output}");
    let probe = probe_line("secrets", &output);
    assert_eq!(probe["env"]["FERRY_PROBE_SECRET"], value.as_str(), "secrets: the value changed on the way");
}

async fn cancel(fx: &Fixture, job: EngineJob) {
    let submitted = fx.engine.submit(&job).await.unwrap_or_else(|e| panic!("cancel: {e}"));
    let deadline = Instant::now() + fx.patience;
    let mut output = Vec::new();
    // Cancel once it is surely running (it printed), so the engine must stop a live process.
    while !String::from_utf8_lossy(&output).contains("FERRY-PROBE-SLEEPING") {
        assert!(Instant::now() < deadline, "cancel: the sleeper never started");
        tokio::time::sleep(Duration::from_millis(250)).await;
        read_output(fx, "cancel", &submitted.native_id, &mut output).await;
    }
    let states = fx.engine.states(std::slice::from_ref(&submitted.native_id)).await.expect("cancel: states");
    assert!(matches!(states[0], NativeState::Running { .. }), "cancel: a printing run is running: {:?}", states[0]);
    let asked = Instant::now();
    fx.engine.cancel(&submitted.native_id).await.unwrap_or_else(|e| panic!("cancel: {e}"));
    let (state, _) = finish(fx, "cancel", &submitted.native_id).await;
    assert!(
        matches!(state, NativeState::Finished { end: RunEnd::Stopped, .. }),
        "cancel: a cancelled run ends as stopped: {state:?}"
    );
    assert!(asked.elapsed() < fx.patience, "cancel: took {:?}", asked.elapsed());
    fx.engine.cancel(&submitted.native_id).await.unwrap_or_else(|e| panic!("cancel: cancelling again: {e}"));
}

async fn resubmission_and_find(fx: &Fixture, job: EngineJob) {
    let first = fx.engine.submit(&job).await.unwrap_or_else(|e| panic!("resubmission: {e}"));
    // Sent again (as after a server restart): the engine must find the run, not start a second one.
    let resent = EngineJob { maybe_submitted: true, ..job.clone() };
    let again = fx.engine.submit(&resent).await.unwrap_or_else(|e| panic!("resubmission: again: {e}"));
    assert_eq!(first.native_id, again.native_id, "resubmission: the same name must not run twice");
    let prefix = format!("ferry-{}-", fx.tag);
    let found = fx.engine.find(&prefix).await.unwrap_or_else(|e| panic!("find: {e}"));
    let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
    assert!(
        found.iter().any(|f| f.name == job.name && f.native_id == first.native_id),
        "find: {} is not among {names:?}",
        job.name
    );
    assert!(found.iter().all(|f| f.name.starts_with(&prefix)), "find: names outside the prefix: {names:?}");
    finish(fx, "resubmission", &first.native_id).await;
}

async fn rejected(fx: &Fixture, job: EngineJob) {
    let Some(make) = fx.reject else {
        eprintln!(
            "conformance: {} accepts any well-formed job; the rejection scenario does not apply",
            fx.engine.kind()
        );
        return;
    };
    match fx.engine.submit(&make(job)).await {
        Err(e @ (EngineError::Rejected { .. } | EngineError::Unsupported(_))) => {
            assert!(!e.to_string().is_empty(), "rejected: the reason is empty")
        }
        other => panic!("rejected: expected a rejection, got {other:?}"),
    }
}

async fn engine_down(fx: &Fixture, job: EngineJob) {
    let asked = Instant::now();
    match fx.down.nodes().await {
        Err(e) => assert!(e.is_transient(), "down: an unreachable engine is an outage, not a verdict: {e}"),
        Ok(nodes) => panic!("down: an engine nobody serves reported nodes: {nodes:?}"),
    }
    match fx.down.submit(&job).await {
        Err(e) => assert!(e.is_transient(), "down: {e}"),
        Ok(s) => panic!("down: an engine nobody serves accepted a job: {s:?}"),
    }
    assert!(asked.elapsed() < Duration::from_secs(30), "down: noticing took {:?}", asked.elapsed());
}
