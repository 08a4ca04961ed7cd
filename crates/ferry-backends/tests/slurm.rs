//! The Slurm engine against a real single-node Slurm (scripts/slurm/start.sh: slurmctld, slurmd with 4 fake GPUs,
//! slurmrestd), through both transports: the conformance suite, then a job asking for 2 GPUs that must see
//! `CUDA_VISIBLE_DEVICES`. Each test starts its own Slurm in a temporary directory on free ports (tests run in
//! parallel) and stops it when it ends, failed or not. Needs root (the daemons, and installing Slurm if missing).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_api::agent::RunEnd;
use ferry_backends::conformance::{self, Fixture};
use ferry_backends::engine::{Engine, EngineJob, NativeState};
use ferry_backends::slurm::{self, Config};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm")
}

/// A Slurm of this test; stopped (with scripts/slurm/stop.sh) when dropped, also when the test panics.
struct Cluster {
    run: PathBuf,
    conf: PathBuf,
    rest_url: Option<String>,
    /// A slurm.conf whose controller port nobody serves: the "engine down" case of the CLI.
    down_conf: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in ["slurmctld.log", "slurmd.log", "slurmrestd.log"] {
                if let Ok(text) = std::fs::read_to_string(self.run.join(log)) {
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("--- last lines of {log}:");
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        match Command::new(scripts().join("stop.sh")).arg(&self.run).status() {
            Ok(s) if s.success() => {}
            other => eprintln!("slurm/stop.sh {}: {other:?}", self.run.display()),
        }
    }
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Starts a Slurm on ports nobody uses: slurmctld on P, slurmd on P+1, slurmrestd (when asked) on P+2.
fn start(rest: bool) -> Cluster {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let run = dir.path().join("slurm");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(now);
    let mut last = String::new();
    for attempt in 0..8u64 {
        let base = 10000 + ((seed.wrapping_mul(7919) + attempt * 1117) % 990) as u16 * 10;
        if !(free(base) && free(base + 1) && free(base + 2) && free(base + 9)) {
            continue;
        }
        let mut cmd = Command::new(scripts().join("start.sh"));
        cmd.arg(&run).env("FERRY_SLURM_PORT", base.to_string());
        if rest {
            cmd.env("FERRY_SLURMREST_PORT", (base + 2).to_string());
        }
        let out = cmd.output().expect("scripts/slurm/start.sh runs");
        if out.status.success() {
            let conf = run.join("slurm.conf");
            let text = std::fs::read_to_string(&conf).expect("slurm.conf");
            let down_conf = run.join("down.conf");
            let down = text.replace(&format!("SlurmctldPort={base}"), &format!("SlurmctldPort={}", base + 9));
            std::fs::write(&down_conf, down).expect("down.conf");
            return Cluster {
                run,
                conf,
                rest_url: rest.then(|| format!("http://127.0.0.1:{}", base + 2)),
                down_conf,
                dir,
            };
        }
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let _ = Command::new(scripts().join("stop.sh")).arg(&run).status();
        // A port taken between the check and the daemon's start (by a test running beside this one) shows as a
        // daemon that exits: try other ports.
        if !(last.contains("is taken") || last.contains("exited")) {
            break;
        }
    }
    panic!("scripts/slurm/start.sh failed:\n{last}");
}

fn python() -> String {
    if Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".into();
    }
    let out = Command::new("sh").args(["-c", "command -v python3"]).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn config(cluster: &Cluster, rest: bool) -> Config {
    let mut settings = serde_json::json!({
        "work_dir": cluster.dir.path().join("work"),
        "slurm_conf": cluster.conf,
        "partition": "debug",
    });
    if rest {
        // The token comes from `scontrol token` (the default when neither token nor token_file is given).
        settings["rest_url"] = cluster.rest_url.clone().into();
        settings["user"] = "root".into();
    }
    serde_json::from_value(settings).expect("valid settings")
}

fn down(cluster: &Cluster, rest: bool) -> Box<dyn Engine> {
    let mut settings = serde_json::json!({ "work_dir": cluster.dir.path().join("work") });
    if rest {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        settings["rest_url"] = format!("http://127.0.0.1:{port}").into();
        settings["user"] = "root".into();
        settings["token"] = "not-a-token".into();
    } else {
        settings["slurm_conf"] = cluster.down_conf.to_string_lossy().into_owned().into();
    }
    slurm::connect(serde_json::from_value(settings).expect("valid settings")).expect("connects")
}

/// Too many GPUs for any node: Slurm says "Requested node configuration is not available".
fn too_big(mut job: EngineJob) -> EngineJob {
    job.gpus = 64;
    job
}

async fn suite(rest: bool) {
    let cluster = start(rest);
    std::fs::create_dir_all(cluster.dir.path().join("work")).expect("work dir");
    let engine = slurm::connect(config(&cluster, rest)).expect("connects");
    let tag = format!("{}{}", if rest { "r" } else { "c" }, std::process::id());
    let fixture = Fixture {
        engine,
        down: down(&cluster, rest),
        dir: cluster.dir.path().join("suite"),
        python: python(),
        patience: Duration::from_secs(30),
        reject: Some(too_big),
        tag: tag.clone(),
    };
    conformance::run(&fixture).await;
    two_gpus(&*fixture.engine, &tag, &cluster).await;
}

/// A job asking for 2 GPUs runs with `CUDA_VISIBLE_DEVICES` naming two of the node's devices.
async fn two_gpus(engine: &dyn Engine, tag: &str, cluster: &Cluster) {
    let job = EngineJob {
        name: format!("ferry-{tag}-gpus-0"),
        job_id: 2,
        attempt: 0,
        node: String::new(),
        user: "test".into(),
        project: "default".into(),
        command: vec!["/bin/sh".into(), "-c".into(), "echo CUDA=$CUDA_VISIBLE_DEVICES".into()],
        env: BTreeMap::new(),
        secrets: Default::default(),
        secrets_fetch: None,
        workdir: cluster.dir.path().to_string_lossy().into_owned(),
        cpu_millis: 500,
        memory_bytes: 64 << 20,
        gpus: 2,
        nodes: 1,
        max_runtime_s: Some(120),
        image: None,
        maybe_submitted: false,
    };
    let submitted = engine.submit(&job).await.expect("the GPU job is accepted");
    assert!(submitted.native_spec.contains("gpu:2"), "{}", submitted.native_spec);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let state = engine.states(std::slice::from_ref(&submitted.native_id)).await.expect("states");
        if let NativeState::Finished { end, exit_code, .. } = &state[0] {
            assert_eq!((*end, *exit_code), (RunEnd::Exited, Some(0)), "{state:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the GPU job did not finish: {state:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut out = Vec::new();
    for _ in 0..20 {
        out = engine.output(&submitted.native_id, 0, 4096).await.expect("output");
        if !out.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("CUDA=0,1"), "CUDA_VISIBLE_DEVICES in a 2-GPU job: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_slurmrestd() {
    suite(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_the_commands() {
    suite(false).await;
}

#[test]
fn batch_script_maps_resources() {
    let job = EngineJob {
        name: "ferry-t-7-1".into(),
        job_id: 7,
        attempt: 1,
        node: "vm".into(),
        user: "ann\n#SBATCH --wrap=x".into(),
        project: "p $(x)".into(),
        command: vec!["train".into(), "--lr".into(), "0.1 $(x)".into()],
        env: BTreeMap::from([("SECRET".to_string(), "s3cr3t".to_string())]),
        secrets: Default::default(),
        secrets_fetch: None,
        workdir: "/data/run 1".into(),
        cpu_millis: 2500,
        memory_bytes: 3 << 30,
        gpus: 2,
        nodes: 2,
        max_runtime_s: Some(3600),
        image: None,
        maybe_submitted: false,
    };
    let cli: Config =
        serde_json::from_value(serde_json::json!({"work_dir": "/shared/ferry", "account": "ml"})).unwrap();
    let (script, fields) = slurm::render(cli, &job).unwrap();
    assert!(fields.is_none());
    for line in [
        "#SBATCH --job-name=ferry-t-7-1",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks=2",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --mem=3072",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --time=60",
        "#SBATCH --account=ml",
        "#SBATCH --nodelist=vm",
        "#SBATCH --output=/shared/ferry/ferry-t-7-1/output.log",
        "#SBATCH --comment=ferry:user=annSBATCH--wrapx,project=px",
        "cd -- '/data/run 1' ||",
        "exec train --lr '0.1 $(x)'",
    ] {
        assert!(script.lines().any(|l| l.starts_with(line)), "{line:?} is missing from:\n{script}");
    }
    // The environment is not in the script (it goes to a 0600 file the script sources).
    assert!(!script.contains("s3cr3t"), "{script}");
    assert!(script.contains(". /shared/ferry/ferry-t-7-1/env.sh"), "{script}");

    let rest: Config = serde_json::from_value(serde_json::json!({
        "work_dir": "/shared/ferry", "rest_url": "http://127.0.0.1:6820", "user": "root", "token": "t"
    }))
    .unwrap();
    let (script, fields) = slurm::render(rest, &job).unwrap();
    let f = fields.expect("REST job fields");
    assert!(!script.contains("#SBATCH") && !script.contains("s3cr3t"), "{script}");
    assert_eq!(f["gres"], "gpu:2");
    assert_eq!(f["memory_per_node"], 3072);
    assert_eq!(f["time_limit"], 60);
    assert_eq!(f["nodes"], serde_json::json!([2, 2]));
    assert_eq!(f["cpus_per_task"], 3);
    assert_eq!(f["environment"]["SECRET"], "s3cr3t");
    assert_eq!(f["current_working_directory"], "/data/run 1");
}
