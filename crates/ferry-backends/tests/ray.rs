//! The Ray engine against a real single-node Ray head (`scripts/ray/start.sh`), started for these tests on a free
//! block of loopback ports and stopped when the last test is done, even after a failure. Needs Ray installed by
//! `scripts/ray/install.sh` (a venv at `target/engines/ray-venv`).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use ferry_backends::conformance::{self, Fixture};
use ferry_backends::engine::{Engine, EngineError, EngineJob, NativeState};
use ferry_backends::ray;

/// A Ray head of the tests; stopped by `scripts/ray/stop.sh` when dropped.
struct Head {
    run: tempfile::TempDir,
    url: String,
    venv: PathBuf,
}

impl Drop for Head {
    fn drop(&mut self) {
        let stopped = Command::new(root().join("scripts/ray/stop.sh")).arg(self.run.path()).status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!("ray test: scripts/ray/stop.sh {} failed: {stopped:?}", self.run.path().display());
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The first block of 256 ports (see start.sh) whose fixed ports are all free, between 20000 and the kernel's
/// ephemeral range (32768 on), from a start that differs between processes so that concurrent runs rarely race for
/// the same block.
fn free_base() -> u16 {
    const BLOCKS: u16 = 49;
    let first = (std::process::id() % u32::from(BLOCKS)) as u16;
    (0..BLOCKS)
        .map(|i| 20000 + (first + i) % BLOCKS * 256)
        .find(|base| (*base..*base + 9).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
        .expect("a free block of ports for Ray")
}

impl Head {
    fn start() -> Head {
        let venv =
            std::env::var_os("FERRY_RAY_VENV").map_or_else(|| root().join("target/engines/ray-venv"), PathBuf::from);
        assert!(
            venv.join("bin/ray").exists(),
            "Ray is not installed in {}: run scripts/ray/install.sh first",
            venv.display()
        );
        let run = tempfile::Builder::new().prefix("ferry-ray-").tempdir().expect("a run directory");
        let started = Instant::now();
        let out = Command::new(root().join("scripts/ray/start.sh"))
            .arg(run.path())
            .arg(free_base().to_string())
            .env("FERRY_RAY_VENV", &venv)
            .output()
            .expect("scripts/ray/start.sh runs");
        let url = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().to_string();
        // From here on the guard stops whatever started, even if the start itself failed halfway.
        let head = Head { run, url, venv };
        assert!(
            out.status.success() && head.url.starts_with("http://"),
            "scripts/ray/start.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("ray test: head at {} after {:?}", head.url, started.elapsed());
        head
    }

    fn engine(&self) -> Box<dyn Engine> {
        ray::connect(ray::Config { address: self.url.clone(), token: None }).expect("the engine connects")
    }
}

/// The one head the tests of this file share: started by the first test that asks, stopped with the last.
fn head() -> Arc<Head> {
    static HEAD: Mutex<Weak<Head>> = Mutex::new(Weak::new());
    let mut slot = HEAD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(head) = slot.upgrade() {
        return head;
    }
    let head = Arc::new(Head::start());
    *slot = Arc::downgrade(&head);
    head
}

fn tag() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("r{}x{nanos}", std::process::id())
}

/// A port where nothing listens: bound, then released.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ray_passes_the_conformance_suite() {
    let head = head();
    let dir = tempfile::Builder::new().prefix("ferry-ray-fx-").tempdir().expect("a directory for the suite");
    let fixture = Fixture {
        engine: head.engine(),
        down: ray::connect(ray::Config { address: format!("http://127.0.0.1:{}", closed_port()), token: None })
            .expect("the down engine connects"),
        dir: dir.path().to_path_buf(),
        python: head.venv.join("bin/python3").to_string_lossy().into_owned(),
        patience: Duration::from_secs(120),
        // Ray itself accepts any well-formed job and leaves it pending until it fits; the engine refuses one that
        // no node can hold before submitting it.
        reject: Some(|mut job: EngineJob| {
            job.gpus = 1000;
            job
        }),
        tag: tag(),
    };
    let started = Instant::now();
    conformance::run(&fixture).await;
    eprintln!("ray test: the conformance suite took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ray_native_form_holds_the_entrypoint_and_the_environment() {
    let head = head();
    let engine = head.engine();
    let nodes = engine.nodes().await.expect("nodes");
    let node = nodes.iter().find(|n| n.up).expect("a live node");
    assert!(node.cpu_millis >= 1000 && node.memory_bytes > 0 && node.state == "ALIVE", "{node:?}");
    let dir = tempfile::Builder::new().prefix("ferry-ray-spec-").tempdir().expect("a directory");
    let job = EngineJob {
        name: format!("ferry-{}-spec-0", tag()),
        job_id: 7,
        attempt: 2,
        node: node.name.clone(),
        user: "ann".into(),
        project: "vision".into(),
        command: vec!["sh".into(), "-c".into(), "echo \"$SPEC_VAR\"".into()],
        env: BTreeMap::from([("SPEC_VAR".to_string(), "it's $(here) ${HOME}".to_string())]),
        secrets: Default::default(),
        secrets_fetch: None,
        workdir: dir.path().to_string_lossy().into_owned(),
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        gpus: 0,
        nodes: 1,
        max_runtime_s: None,
        image: None,
        maybe_submitted: false,
    };

    let gang = EngineJob { nodes: 2, name: format!("{}-gang", job.name), ..job.clone() };
    match engine.submit(&gang).await {
        Err(EngineError::Unsupported(message)) => assert!(message.contains("one node"), "{message}"),
        other => panic!("a gang must be unsupported on Ray: {other:?}"),
    }

    let submitted = engine.submit(&job).await.expect("submit");
    let spec: serde_json::Value = serde_json::from_str(&submitted.native_spec).expect("the native form is JSON");
    let entrypoint = spec["entrypoint"].as_str().expect("an entrypoint");
    let export = r#" && export SPEC_VAR='it'\''s $(here) ${HOME}' && exec sh -c 'echo "$SPEC_VAR"'"#;
    assert!(entrypoint.starts_with("cd -- ") && entrypoint.ends_with(export), "{entrypoint}");
    assert_eq!(spec["entrypoint_num_cpus"], 0.5, "{spec:#}");
    assert_eq!(spec["metadata"]["user"], "ann", "{spec:#}");
    assert_eq!(spec["entrypoint_label_selector"]["ray.io/node-id"].as_str().map(str::len), Some(56), "{spec:#}");

    // The environment really arrives, and the output can be read in pieces.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let state = engine.states(std::slice::from_ref(&submitted.native_id)).await.expect("states");
        if let NativeState::Finished { exit_code, .. } = &state[0] {
            assert_eq!(*exit_code, Some(0), "{state:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the job did not finish: {state:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut output = Vec::new();
    loop {
        let chunk = engine.output(&submitted.native_id, output.len() as u64, 7).await.expect("output");
        if chunk.is_empty() {
            break;
        }
        output.extend(chunk);
    }
    let output = String::from_utf8_lossy(&output);
    assert!(output.lines().any(|l| l == "it's $(here) ${HOME}"), "{output}");
    assert_eq!(engine.states(&["ferry-no-such-run".to_string()]).await.expect("states"), vec![NativeState::Unknown]);
    // Many ids at once are answered from one listing of all jobs.
    let mut many: Vec<String> = (0..20).map(|i| format!("ferry-no-such-run-{i}")).collect();
    many.push(submitted.native_id.clone());
    let states = engine.states(&many).await.expect("states of many");
    assert!(states[..20].iter().all(|s| *s == NativeState::Unknown), "{states:?}");
    assert!(matches!(states[20], NativeState::Finished { exit_code: Some(0), .. }), "{states:?}");
    engine.cancel("ferry-no-such-run").await.expect("cancelling an unknown run is fine");
}
