//! Engine pools end to end: the `ferry` server with a Slurm pool beside an agent pool, against a real single-node
//! Slurm (scripts/slurm/start.sh: slurmctld, slurmd with 4 fake GPUs, slurmrestd). The same `ferry run` lands on
//! Slurm when pinned there or when only Slurm can hold it; logs, exit codes, cancel, shipped code, the native view,
//! a server restart mid-run, and an engine that is down beside pools that keep working. Needs root, as Slurm does.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, Ferry, NodeSpec};

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/slurm")
}

/// A Slurm of this test, stopped when dropped (also when the test panics).
struct Slurm {
    run: PathBuf,
    conf: PathBuf,
    rest_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new(scripts().join("stop.sh")).arg(&self.run).status();
    }
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Starts Slurm with slurmrestd: slurmctld on P, slurmd on P+1, slurmrestd on P+2, for a P nobody uses.
fn slurm() -> Slurm {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("slurm");
    let seed = std::process::id() as u64 ^ std::time::UNIX_EPOCH.elapsed().map_or(0, |d| d.subsec_nanos() as u64);
    let mut last = String::new();
    for attempt in 0..8u64 {
        let base = 10000 + ((seed.wrapping_mul(31) + attempt * 701) % 990) as u16 * 10;
        if !(free(base) && free(base + 1) && free(base + 2)) {
            continue;
        }
        let out = Command::new(scripts().join("start.sh"))
            .arg(&run)
            .env("FERRY_SLURM_PORT", base.to_string())
            .env("FERRY_SLURMREST_PORT", (base + 2).to_string())
            .output()
            .unwrap();
        if out.status.success() {
            let conf = run.join("slurm.conf");
            return Slurm { run, conf, rest_url: format!("http://127.0.0.1:{}", base + 2), _dir: dir };
        }
        last = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        let _ = Command::new(scripts().join("stop.sh")).arg(&run).status();
        // A port taken between the check and the daemon's start (by a test running beside this one) shows as a
        // daemon that exits: try other ports.
        if !(last.contains("is taken") || last.contains("exited")) {
            break;
        }
    }
    panic!("scripts/slurm/start.sh failed (run scripts/test, which installs Slurm):\n{last}");
}

/// A server with an agent pool `local` (2 GPUs) first and the Slurm pool `hpc` (4 fake GPUs) after it.
fn ferry_with(slurm: &Slurm, extra_pools: &str) -> Ferry {
    let work = slurm._dir.path().join("work");
    let config = format!(
        "[[pool]]\nname = \"local\"\norder = 0\n\n\
         [[pool]]\nname = \"hpc\"\norder = 1\nkind = \"slurm\"\npoll_interval = \"200ms\"\n\
         [pool.engine]\nrest_url = \"{}\"\nuser = \"root\"\nwork_dir = \"{}\"\nslurm_conf = \"{}\"\n{extra_pools}",
        slurm.rest_url,
        work.display(),
        slurm.conf.display()
    );
    let ferry = Ferry::start_with_server_config(NodeSpec::default(), "pool = \"local\"\n", &config);
    ferry.wait_for("the Slurm node to register", |f| {
        f.json(&["nodes", "--json"])["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["pool"] == "hpc" && n["state"] == "ready"))
    });
    ferry
}

fn logs(ferry: &Ferry, id: u64) -> String {
    ferry.ok(&["logs", &id.to_string()])
}

#[test]
fn one_run_command_reaches_slurm_with_logs_exit_codes_gpus_and_the_native_view() {
    let slurm = slurm();
    let ferry = ferry_with(&slurm, "");

    // The Slurm node is a node of pool hpc, with Slurm's capacity.
    let nodes = ferry.json(&["nodes", "--json"]);
    let hpc = nodes["nodes"].as_array().unwrap().iter().find(|n| n["pool"] == "hpc").unwrap().clone();
    assert_eq!(hpc["gpus"].as_array().unwrap().len(), 4, "{hpc}");
    assert_eq!(hpc["labels"]["ferry.engine"], "slurm");

    // Pinned to the pool: runs in Slurm, output and exit code come back.
    let ok = ferry.submit(&["--pool", "hpc", "--", "sh", "-c", "echo hello from $SLURM_JOB_NAME; exit 0"]);
    let job = ferry.wait_state(ok, "succeeded");
    assert!(job["node"].as_str().unwrap().starts_with("hpc/"), "{job}");
    assert_eq!(job["native"]["kind"], "slurm");
    assert!(logs(&ferry, ok).contains("hello from ferry-"), "{}", logs(&ferry, ok));
    let shown = ferry.ok(&["show", &ok.to_string()]);
    assert!(shown.contains("Engine:") && shown.contains("slurm job"), "{shown}");
    let native = ferry.ok(&["show", &ok.to_string(), "--native"]);
    assert!(native.starts_with("#!") && native.contains("exec sh -c 'echo hello from"), "{native}");
    let timeline = job["timeline"].to_string();
    assert!(timeline.contains("submitted to slurm"), "{timeline}");

    // Slurm runs no container images here: a job with one is refused with the reason before it is queued.
    let out = ferry.cli(&["run", "--pool", "hpc", "--image", "localhost/busybox:ferry", "--", "true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no node of pool hpc has support for container images"), "{}", stderr(&out));

    let failed = ferry.submit(&["--pool", "hpc", "--", "sh", "-c", "echo failing; exit 3"]);
    let job = ferry.wait_state(failed, "failed");
    assert_eq!(job["exit_code"], 3, "{job}");

    // GPUs are Slurm's to hand out: the job sees the ones Slurm gave it.
    let gpus = ferry.submit(&["--pool", "hpc", "--gpus", "2", "--", "sh", "-c", "echo gpus=$CUDA_VISIBLE_DEVICES"]);
    ferry.wait_state(gpus, "succeeded");
    assert!(logs(&ferry, gpus).contains("gpus=0,1"), "{}", logs(&ferry, gpus));

    // Not pinned, too big for the local pool (2 GPUs): the scheduler sends it to Slurm, the next pool in order.
    let big = ferry.submit(&["--gpus", "3", "--", "true"]);
    let job = ferry.wait_state(big, "succeeded");
    assert!(job["node"].as_str().unwrap().starts_with("hpc/"), "{job}");

    // Metacharacters in the command and the environment arrive intact and run nothing.
    let nasty = "$(touch /tmp/ferry-engines-pwned); `id` 'q' \"d\"\nnext";
    let quoted =
        ferry.submit(&["--pool", "hpc", "--env", &format!("NASTY={nasty}"), "--", "printf", "[%s][%s]", nasty]);
    ferry.wait_state(quoted, "succeeded");
    let out = logs(&ferry, quoted);
    assert!(out.contains(&format!("[{nasty}][")), "{out}");
    assert!(!Path::new("/tmp/ferry-engines-pwned").exists());
    let env = ferry.submit(&["--pool", "hpc", "--env", &format!("NASTY={nasty}"), "--", "printenv", "NASTY"]);
    ferry.wait_state(env, "succeeded");
    assert_eq!(logs(&ferry, env), format!("{nasty}\n"));

    // Cancel reaches Slurm: the job ends cancelled and Slurm no longer runs it.
    let sleeper = ferry.submit(&["--pool", "hpc", "--", "sh", "-c", "echo started; sleep 600"]);
    ferry.wait_for("the sleeper to print", |f| logs(f, sleeper).contains("started"));
    ferry.ok(&["cancel", &sleeper.to_string()]);
    let job = ferry.wait_state(sleeper, "cancelled");
    let slurm_id = job["native"]["id"].as_str().unwrap().to_string();
    let squeue =
        Command::new("squeue").args(["-h", "-j", &slurm_id, "-o", "%T"]).env("SLURM_CONF", &slurm.conf).output();
    let still = squeue.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    assert!(still.is_empty() || still == "CANCELLED" || still == "COMPLETING", "slurm still has it: {still}");

    // The Slurm pool's capacity flows into the same time series as agent pools' (a point every 10 s).
    let token = std::fs::read_to_string(ferry.home().join("admin.token")).unwrap();
    ferry.wait_for("pool hpc's GPU capacity in the time series", |f| {
        let url = format!("{}/api/v1/series?metric=gpu_capacity&by=pool&id=hpc&start=5m&step=10s", f.url());
        let auth = format!("Authorization: Bearer {}", token.trim());
        let out = Command::new("curl").args(["-s", "-H", &auth, &url]).output().unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let means = answer["series"][0]["mean"].as_array().cloned().unwrap_or_default();
        means.iter().any(|v| v.as_f64() == Some(4.0))
    });
}

#[test]
fn shipped_code_runs_on_slurm_and_a_server_restart_loses_nothing() {
    let slurm = slurm();
    let mut ferry = ferry_with(&slurm, "");
    let project = ferry.root.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("train.py"),
        "import sys, time\nprint('epoch 1', flush=True)\ntime.sleep(3)\nprint('done', sys.argv[1])\n",
    )
    .unwrap();
    let out = ferry.cli_shipping_in(&project, &["run", "--pool", "hpc", "--", "python3", "train.py", "x y"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    ferry.wait_for("the job to print its first epoch", |f| logs(f, id).contains("epoch 1"));
    // The server unpacked the code for Slurm into `ferry-<installation>-<job>-<attempt>`.
    let code_root = ferry.home().join("engines/hpc");
    let unpacked = std::fs::read_dir(&code_root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|name| name.ends_with(&format!("-{id}-0")))
        .unwrap_or_else(|| panic!("no code folder of job {id} in {}", code_root.display()));
    let prefix = unpacked.strip_suffix(&format!("{id}-0")).unwrap().to_string();
    // Leftovers of jobs that ended while the server was down are swept at start; another installation's are not.
    let leftovers = [format!("{prefix}999999-0"), format!(".{prefix}999998-1.partial")];
    for name in leftovers.iter().chain([&"ferry-other-5-0".to_string()]) {
        std::fs::create_dir_all(code_root.join(name).join("src")).unwrap();
    }
    ferry.kill_server();
    ferry.start_server();
    let job = ferry.wait_state(id, "succeeded");
    assert_eq!(logs(&ferry, id), "epoch 1\ndone x y\n", "{job}");
    ferry.wait_for("the ended job's code folder and the leftovers to be removed", |_| {
        leftovers.iter().chain([&unpacked]).all(|name| !code_root.join(name).exists())
    });
    assert!(code_root.join("ferry-other-5-0").exists());
}

#[test]
fn an_engine_that_is_down_blocks_nothing_else() {
    let slurm = slurm();
    // A second Slurm pool whose slurmrestd nobody serves.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let work = slurm._dir.path().join("dead");
    let extra = format!(
        "\n[[pool]]\nname = \"dead\"\norder = 2\nkind = \"slurm\"\npoll_interval = \"200ms\"\n\
         [pool.engine]\nrest_url = \"http://127.0.0.1:{dead}\"\nuser = \"root\"\ntoken = \"x\"\nwork_dir = \"{}\"\n",
        work.display()
    );
    let ferry = ferry_with(&slurm, &extra);
    let local = ferry.submit(&["--pool", "local", "--", "true"]);
    let hpc = ferry.submit(&["--pool", "hpc", "--", "true"]);
    ferry.wait_state(local, "succeeded");
    ferry.wait_state(hpc, "succeeded");
    // A job pinned to the dead pool waits, and says why.
    let stuck = ferry.submit(&["--pool", "dead", "--", "true"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let job = ferry.job(stuck);
    assert_eq!(job["state"], "queued", "{job}");
    let why = job["waiting"]["message"].as_str().unwrap_or_default().to_string();
    assert_eq!(why, "pool dead has no node yet: its engine has not answered, or no agent of the pool has joined");
    // `ferry pools` says which engine answers and which does not, and why.
    let pools = ferry.json(&["pools", "--json"]);
    let pool = |name: &str| pools["pools"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!((pool("local")["kind"].as_str(), pool("local")["nodes_ready"].as_u64()), (Some("agent"), Some(1)));
    assert_eq!(pool("hpc")["engine"]["answering"], true, "{pools}");
    assert_eq!(pool("hpc")["gpus"], 4, "{pools}");
    assert_eq!(pool("dead")["engine"]["answering"], false, "{pools}");
    let error = pool("dead")["engine"]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(&format!("127.0.0.1:{dead}")), "{error}");
    let table = ferry.ok(&["pools"]);
    assert!(table.contains("not answering") && table.contains("slurm"), "{table}");
    // What each pool's backend can do: agents everything but a native view; Slurm over slurmrestd gangs and its
    // native view, but no images, no measured GPUs and no pinning (v0.0.38 has no node list).
    let capabilities = |name: &str| pool(name)["capabilities"].clone();
    let all = |images, gangs, gpus_measured, native_view, node_pinning, gpu_pinning| {
        serde_json::json!({ "images": images, "gangs": gangs, "gpus_measured": gpus_measured,
            "native_view": native_view, "node_pinning": node_pinning, "gpu_pinning": gpu_pinning })
    };
    assert_eq!(capabilities("local"), all(true, true, true, false, true, true), "{pools}");
    assert_eq!(capabilities("hpc"), all(false, true, false, true, false, false), "{pools}");
    assert!(table.contains("images, gangs, GPUs measured, node pinning, GPU pinning"), "{table}");
    assert!(table.contains("gangs, native view"), "{table}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Ray head and a Spark standalone cluster from the venvs scripts/ray/install.sh and scripts/spark/install.sh make,
/// each stopped by its script when dropped.
struct Stopper(PathBuf, PathBuf);

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = Command::new(&self.0).arg(&self.1).status();
    }
}

fn start_engine(script: &str, run: &Path, args: &[String], env: &[(&str, String)]) -> (Stopper, String) {
    let venv = repo().join("target/engines").join(format!("{script}-venv"));
    assert!(venv.exists(), "{} is missing: run scripts/{script}/install.sh (scripts/test does)", venv.display());
    let stopper = Stopper(repo().join(format!("scripts/{script}/stop.sh")), run.to_path_buf());
    let out = Command::new(repo().join(format!("scripts/{script}/start.sh")))
        .arg(run)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/{script}/start.sh failed:\n{}", stderr(&out));
    (stopper, String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string())
}

/// The probe's one line of JSON in a job's output (engines add lines of their own around it).
fn probe_line(out: &str) -> serde_json::Value {
    let line = out.lines().find_map(|l| l.strip_prefix("PROBE ")).unwrap_or_else(|| panic!("no probe line in:\n{out}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn one_job_spec_runs_unchanged_on_an_agent_slurm_ray_and_spark() {
    let slurm = slurm();
    let scratch = tempfile::tempdir().unwrap();
    // Ray: its port block must lie outside Ray's worker range and below the ephemeral ports.
    let ray_base = (20000..32000).step_by(256).find(|p| (0..9).all(|i| free(p + i))).unwrap();
    let (_ray, ray_url) = start_engine("ray", &scratch.path().join("ray"), &[ray_base.to_string()], &[]);
    let (master, ui) = (free_port(), (40000..41000).find(|p| free(*p) && free(p + 1)).unwrap());
    let spark_env = [("FERRY_SPARK_PORT", master.to_string()), ("FERRY_SPARK_UI_PORT", ui.to_string())];
    let (_spark, _) = start_engine("spark", &scratch.path().join("spark"), &[], &spark_env);
    let spark_venv = repo().join("target/engines/spark-venv/bin");
    let pools = format!(
        "\n[[pool]]\nname = \"ray\"\norder = 2\nkind = \"ray\"\npoll_interval = \"200ms\"\n\
         [pool.engine]\naddress = \"{ray_url}\"\n\n\
         [[pool]]\nname = \"spark\"\norder = 3\nkind = \"spark\"\npoll_interval = \"200ms\"\n\
         [pool.engine]\nmaster = \"spark://127.0.0.1:{master}\"\nmaster_ui = \"http://127.0.0.1:{ui}\"\n\
         work_dir = \"{}\"\nspark_submit = \"{}\"\npython = \"{}\"\n",
        scratch.path().join("spark-runs").display(),
        spark_venv.join("spark-submit").display(),
        spark_venv.join("python").display(),
    );
    let ferry = ferry_with(&slurm, &pools);
    for pool in ["ray", "spark"] {
        ferry.wait_for(&format!("pool {pool} to register"), |f| {
            f.json(&["nodes", "--json"])["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["pool"] == pool && n["state"] == "ready"))
        });
    }
    std::fs::write(
        ferry.workdir().join("probe.py"),
        "import json, os, sys\nprint('PROBE ' + json.dumps({'args': sys.argv[1:], 'env': os.environ.get('PROBE_ENV'), \
         'secret': os.environ.get('PROBE_SECRET'), 'cwd': os.getcwd()}), flush=True)\n",
    )
    .unwrap();
    let nasty = "it's $(not run) `either` \"q\" ; |";
    // A secret reaches the job on every engine, and none of them shows it: Ray's dashboard least of all.
    let secret = "s3cr3t-probe 'q' $(x)";
    let out = ferry.cli_as(None, &["secret", "set", "PROBE_SECRET"], secret);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<(&str, u64)> = ["local", "hpc", "ray", "spark"]
        .into_iter()
        .map(|pool| {
            let env = format!("PROBE_ENV={nasty}");
            let args = ["--pool", pool, "--env", &env, "--secret", "PROBE_SECRET", "--", "python3", "probe.py", "a b"];
            let mut args = args.to_vec();
            args.push(nasty);
            (pool, ferry.submit(&args))
        })
        .collect();
    let cwd = ferry.workdir().canonicalize().unwrap().display().to_string();
    let expected = serde_json::json!({"args": ["a b", nasty], "env": nasty, "secret": secret, "cwd": cwd});
    for (pool, id) in ids {
        let job = ferry.wait_state(id, "succeeded");
        assert_eq!(probe_line(&logs(&ferry, id)), expected, "pool {pool}: {job}");
        if pool != "local" {
            assert_eq!(job["native"]["kind"], pool.replace("hpc", "slurm"), "{job}");
            let native = job["native"].to_string();
            assert!(!native.contains("s3cr3t") && !native.contains("ferry_job_"), "pool {pool}: {native}");
        }
    }
    let ray_jobs = reqwest::blocking::get(format!("{ray_url}/api/jobs/")).unwrap().text().unwrap();
    assert!(ray_jobs.contains("probe.py"), "{ray_jobs}");
    assert!(!ray_jobs.contains("s3cr3t") && !ray_jobs.contains("ferry_job_"), "Ray shows a secret: {ray_jobs}");
    // What Ray shows is a ticket the run used when it started: whoever reads it there gets nothing with it.
    let listed: serde_json::Value = serde_json::from_str(&ray_jobs).unwrap();
    let entrypoint = listed.as_array().unwrap().iter().find_map(|j| j["entrypoint"].as_str()).unwrap().to_string();
    let words: Vec<&str> = entrypoint.split(|c: char| c.is_whitespace() || c == '\'').collect();
    let url = words.iter().find(|w| w.ends_with("/secrets")).unwrap_or_else(|| panic!("{entrypoint}"));
    let ticket = words.iter().find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit())).unwrap();
    let client = reqwest::blocking::Client::new();
    let again = client.post(*url).json(&serde_json::json!({ "ticket": ticket })).send().unwrap();
    assert_eq!(again.status(), 410, "{}", again.text().unwrap());
}
