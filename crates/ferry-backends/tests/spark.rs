//! The Spark engine against a real Spark standalone cluster (a master and one worker on loopback, started by
//! `scripts/spark/start.sh` in a temporary directory and stopped at the end, even on failure), through the
//! conformance suite; and the spark-submit line Ferry generates, without Spark.
//!
//! Needs the pyspark venv: run `scripts/spark/install.sh` once (about a minute).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_api::agent::RunEnd;
use ferry_backends::conformance::{run, Fixture};
use ferry_backends::engine::{EngineError, EngineJob, NativeState};
use ferry_backends::spark::{command_line, connect, Config};

fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

fn config(master_port: u16, ui_port: u16, work_dir: &Path, python: &Path) -> Config {
    let bin = python.parent().expect("the venv's bin directory");
    serde_json::from_value(serde_json::json!({
        "master": format!("spark://127.0.0.1:{master_port}"),
        "master_ui": format!("http://127.0.0.1:{ui_port}"),
        "spark_submit": bin.join("spark-submit"),
        "python": python,
        "work_dir": work_dir,
        "conf": {"spark.ui.enabled": "false", "spark.driver.host": "127.0.0.1"},
        "env": {"SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOCAL_HOSTNAME": "localhost"},
        "grace_s": 5,
    }))
    .expect("the configuration parses")
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Stops the cluster when the test ends, however it ends.
struct Cluster {
    dir: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stop = repo_root().join("scripts/spark/stop.sh");
        match Command::new(&stop).arg(&self.dir).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("spark: {} {} failed: {other:?}", stop.display(), self.dir.display()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spark_conformance() {
    let venv = repo_root().join("target/engines/spark-venv");
    let python = venv.join("bin/python");
    assert!(
        venv.join("bin/spark-submit").exists() && python.exists(),
        "the pyspark venv is missing at {}: run scripts/spark/install.sh first",
        venv.display()
    );
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let master_port = free_port();
    // start.sh puts the worker's web UI on the port after the master's: find a free pair.
    let ui_port = loop {
        let p = free_port();
        if p < u16::MAX && p + 1 != master_port && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    run_with(tmp.path(), &python, master_port, ui_port).await
}

async fn run_with(tmp: &Path, python: &Path, master_port: u16, ui_port: u16) {
    let spark_dir = tmp.join("spark");
    let cluster = Cluster { dir: spark_dir.clone() };
    let began = Instant::now();
    let out = Command::new(repo_root().join("scripts/spark/start.sh"))
        .arg(&spark_dir)
        .env("FERRY_SPARK_PORT", master_port.to_string())
        .env("FERRY_SPARK_UI_PORT", ui_port.to_string())
        .output()
        .expect("scripts/spark/start.sh runs");
    assert!(
        out.status.success(),
        "scripts/spark/start.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("spark: cluster up after {:?}", began.elapsed());

    let engine = connect(config(master_port, ui_port, &tmp.join("runs"), python)).expect("the engine connects");
    let (closed_master, closed_ui) = (free_port(), free_port());
    let down = connect(config(closed_master, closed_ui, &tmp.join("runs-down"), python)).expect("connects");
    let fixture = Fixture {
        engine,
        down,
        dir: tmp.join("suite"),
        python: python.to_string_lossy().into_owned(),
        patience: Duration::from_secs(120),
        reject: Some(|mut job: EngineJob| {
            job.command = vec!["sh".into(), "-c".into(), "true".into()];
            job
        }),
        tag: format!("sp{}", std::process::id()),
    };
    let began = Instant::now();
    run(&fixture).await;
    eprintln!("spark: the conformance suite passed in {:?}", began.elapsed());
    runtime_limit(&fixture).await;
    real_application(&fixture, tmp, master_port, ui_port, python).await;
    drop(cluster);
}

/// A job that really uses Spark (a SparkContext, executors on the worker), and a server restart: a second engine on
/// the same work directory finds the runs and their ends.
async fn real_application(fx: &Fixture, tmp: &Path, master_port: u16, ui_port: u16, python: &Path) {
    let app = fx.dir.join("app.py");
    std::fs::write(
        &app,
        "import os\nfrom pyspark import SparkContext\nsc = SparkContext()\n\
         n = sc.parallelize(range(1000), 2).map(lambda x: x * 2).sum()\n\
         e = sc.parallelize([0], 1).map(lambda _: os.environ.get('FERRY_SPARK_T')).collect()[0]\n\
         print('FERRY-SUM', n, os.environ.get('FERRY_SPARK_T'), '/', e, flush=True)\nsc.stop()\n",
    )
    .expect("the application can be written");
    let mut job = job(&[&python.to_string_lossy(), &app.to_string_lossy()]);
    job.name = format!("ferry-{}-real-0", fx.tag);
    job.env = BTreeMap::from([("FERRY_SPARK_T".to_string(), "it's here".to_string())]);
    job.workdir = fx.dir.to_string_lossy().into_owned();
    job.cpu_millis = 1000;
    job.memory_bytes = 256 << 20;
    let began = Instant::now();
    let submitted = fx.engine.submit(&job).await.expect("the application is accepted");
    eprintln!("spark: {}", submitted.native_spec);
    let state = loop {
        let states = fx.engine.states(std::slice::from_ref(&submitted.native_id)).await.expect("states");
        if let NativeState::Finished { .. } = states[0] {
            break states[0].clone();
        }
        assert!(began.elapsed() < fx.patience, "the application did not finish: {:?}", states[0]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let output = fx.engine.output(&submitted.native_id, 0, 1 << 20).await.expect("output");
    let output = String::from_utf8_lossy(&output);
    assert!(
        matches!(state, NativeState::Finished { end: RunEnd::Exited, exit_code: Some(0), .. }),
        "the application ended as {state:?}:\n{output}"
    );
    assert!(
        output.contains("FERRY-SUM 999000 it's here / it's here"),
        "the application's result is missing:\n{output}"
    );
    eprintln!("spark: a real application took {:?}", began.elapsed());

    // A restarted server: a new engine on the same work directory knows what the first one ran.
    let again = connect(config(master_port, ui_port, &tmp.join("runs"), python)).expect("the engine reconnects");
    let found = again.find(&format!("ferry-{}-", fx.tag)).await.expect("find");
    assert!(found.iter().any(|f| f.name == job.name), "{found:?}");
    let states = again.states(&found.iter().map(|f| f.native_id.clone()).collect::<Vec<_>>()).await.expect("states");
    assert!(states.iter().all(|s| matches!(s, NativeState::Finished { .. })), "{states:?}");
    let cancelled = found.iter().zip(&states).find(|(f, _)| f.name.contains("-cancel-")).expect("the cancelled run");
    assert!(matches!(cancelled.1, NativeState::Finished { end: RunEnd::Stopped, .. }), "{cancelled:?}");
}

/// A run past its maximum runtime is stopped (when its state is asked) and ends as timed out.
async fn runtime_limit(fx: &Fixture) {
    let probe = fx.dir.join("probe.py").to_string_lossy().into_owned();
    let mut job = job(&[&fx.python, &probe, "--sleep", "600"]);
    job.name = format!("ferry-{}-limit-0", fx.tag);
    job.workdir = fx.dir.to_string_lossy().into_owned();
    job.max_runtime_s = Some(3);
    let began = Instant::now();
    let submitted = fx.engine.submit(&job).await.expect("the sleeper is accepted");
    let state = loop {
        let states = fx.engine.states(std::slice::from_ref(&submitted.native_id)).await.expect("states");
        if let NativeState::Finished { .. } = states[0] {
            break states[0].clone();
        }
        assert!(began.elapsed() < fx.patience, "the sleeper was not stopped: {:?}", states[0]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(matches!(state, NativeState::Finished { end: RunEnd::TimedOut, .. }), "{state:?}");
    eprintln!("spark: a run with a 3 s limit ended as timed out after {:?}", began.elapsed());
}

fn job(command: &[&str]) -> EngineJob {
    EngineJob {
        name: "ferry-t-7-0".into(),
        job_id: 7,
        attempt: 0,
        node: "127.0.0.1".into(),
        user: "u".into(),
        project: "p".into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::from([("A".to_string(), "x y".to_string())]),
        secrets: Default::default(),
        secrets_fetch: None,
        workdir: "/tmp".into(),
        cpu_millis: 2500,
        memory_bytes: 3 << 30,
        gpus: 0,
        nodes: 1,
        max_runtime_s: None,
        image: None,
        maybe_submitted: false,
    }
}

fn words(line: &[String]) -> Vec<&str> {
    line.iter().map(String::as_str).collect()
}

#[test]
fn the_spark_submit_line_maps_the_resources() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let python = Path::new("/opt/venv/bin/python");
    let mut cfg = config(7077, 8080, dir.path(), python);
    cfg.spark_submit = "spark-submit".into();
    cfg.conf = BTreeMap::from([("spark.ui.enabled".to_string(), "false".to_string())]);

    let line = command_line(&cfg, &job(&["/usr/bin/python3", "main.py", "--n", "1 2"])).expect("a python job");
    assert_eq!(
        words(&line),
        [
            "spark-submit",
            "--master",
            "spark://127.0.0.1:7077",
            "--name",
            "ferry-t-7-0",
            "--deploy-mode",
            "client",
            "--driver-memory",
            "1g",
            "--executor-memory",
            "3072m",
            "--total-executor-cores",
            "3",
            "--executor-cores",
            "3",
            "--conf",
            "spark.pyspark.driver.python=/usr/bin/python3",
            "--conf",
            "spark.pyspark.python=/opt/venv/bin/python",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.executorEnv.A=x y",
            "main.py",
            "--n",
            "1 2",
        ]
    );

    // A bare interpreter name means the pool's Python; a small request gets Spark's smallest executor.
    let mut small = job(&["python", "main.py"]);
    small.cpu_millis = 100;
    small.memory_bytes = 64 << 20;
    small.gpus = 2;
    let line = command_line(&cfg, &small).expect("a small job");
    let w = words(&line);
    assert!(w.windows(2).any(|p| p == ["--executor-memory", "512m"]), "{w:?}");
    assert!(w.windows(2).any(|p| p == ["--total-executor-cores", "1"]), "{w:?}");
    assert!(w.windows(2).any(|p| p == ["--conf", "spark.executor.resource.gpu.amount=2"]), "{w:?}");
    assert!(!w.iter().any(|x| x.starts_with("spark.pyspark.driver.python")), "{w:?}");
    assert_eq!(w.last(), Some(&"main.py"));

    // A jar runs as it is; YARN counts executors and their cores instead of total cores.
    cfg.master = "yarn".into();
    let line = command_line(&cfg, &job(&["app.jar", "in", "out"])).expect("a jar job");
    let w = words(&line);
    assert!(w.windows(2).any(|p| p == ["--master", "yarn"]), "{w:?}");
    assert!(w.windows(4).any(|p| p == ["--num-executors", "1", "--executor-cores", "3"]), "{w:?}");
    assert!(!w.contains(&"--total-executor-cores") && !w.iter().any(|x| x.contains("pyspark")), "{w:?}");
    assert_eq!(&w[w.len() - 3..], ["app.jar", "in", "out"]);

    // What Spark cannot run.
    for command in [
        &["sh", "-c", "true"][..],
        &["python", "-m", "mod"],
        &["python"],
        &[],
        &["python", "x.jar"],
        &["python", "-u", "x.py"],
        &["--x.py"],
    ] {
        match command_line(&cfg, &job(command)) {
            Err(EngineError::Unsupported(m)) => assert!(m.contains("Python files and jars"), "{m}"),
            other => panic!("{command:?} should be unsupported: {other:?}"),
        }
    }

    // A gang of N nodes is N executors, each with a node's share.
    let mut gang = job(&["main.py"]);
    gang.nodes = 4;
    let w = command_line(&cfg, &gang).expect("a gang on YARN");
    assert!(words(&w).windows(4).any(|p| p == ["--num-executors", "4", "--executor-cores", "3"]), "{w:?}");
    cfg.master = "spark://m:7077".into();
    let w = command_line(&cfg, &gang).expect("a gang on a standalone master");
    assert!(words(&w).windows(4).any(|p| p == ["--total-executor-cores", "12", "--executor-cores", "3"]), "{w:?}");
    let mut image = job(&["main.py"]);
    image.image = Some("python:3".into());
    assert!(matches!(command_line(&cfg, &image), Err(EngineError::Unsupported(_))));
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let base = serde_json::json!({"master": "spark://h:7077", "master_ui": "http://h:8080", "work_dir": dir.path()});
    let ok: Config = serde_json::from_value(base.clone()).expect("the minimal settings parse");
    assert!(connect(ok).is_ok());
    for (key, value, want) in [
        ("master", serde_json::json!("local[2]"), "master must be"),
        ("master_ui", serde_json::json!("h:8080"), "master_ui"),
        ("work_dir", serde_json::json!("relative"), "absolute"),
        ("driver_memory", serde_json::json!("lots"), "driver_memory"),
        ("env", serde_json::json!({"A-B": "x"}), "env name"),
    ] {
        let mut settings = base.clone();
        settings[key] = value;
        let cfg: Config = serde_json::from_value(settings).expect("parses");
        match connect(cfg) {
            Err(e) => assert!(e.contains(want), "{key}: {e}"),
            Ok(_) => panic!("{key}: accepted"),
        }
    }
    let mut unknown = base.clone();
    unknown["mastr"] = serde_json::json!("x");
    assert!(serde_json::from_value::<Config>(unknown).is_err(), "unknown settings are refused");
}
