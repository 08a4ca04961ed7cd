//! Hyperparameter sweeps end to end: `ferry sweep FILE` starts trials as Ferry jobs of a real server and agent; the
//! trials (tests/fixtures/sweep/trial.py) log their loss to their MLflow runs through the tracking API, early stopping
//! cancels the poor ones, and the sweep reports its best trial. Also: bad sweep files, a sweep whose trials never
//! log the objective, a 500-trial sweep, and a server killed mid-sweep that resumes without duplicating a trial.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{stderr, Ferry, NodeSpec};
use serde_json::Value;

/// How long a whole sweep may take in these tests.
const SWEEP_WAIT: Duration = Duration::from_secs(240);

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sweep").canonicalize().unwrap()
}

/// A sweep file over the fixture's two parameters, with `extra` lines at the top level and `[trial]` keys after.
fn sweep_file(f: &Ferry, name: &str, top: &str, trial: &str) -> PathBuf {
    let text = format!(
        r#"name = "{name}"
command = ["python3", "trial.py", "--lr", "{{lr}}", "--width", "{{width}}"]
{top}

[objective]
metric = "loss"
goal = "minimize"

[params.lr]
distribution = "log_uniform"
low = 0.0001
high = 1.0

[params.width]
distribution = "int"
low = 1
high = 10

[trial]
workdir = "{}"
cpus = 0.25
memory = "128MiB"
{trial}
"#,
        fixtures().display()
    );
    let path = f.workdir().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn start_sweep(f: &Ferry, file: &Path) -> u64 {
    let out = f.cli(&["sweep", file.to_str().unwrap(), "--detach"]);
    assert!(out.status.success(), "ferry sweep failed: {}\n{}", stderr(&out), f.logs_for_failure());
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

fn sweep(f: &Ferry, id: u64) -> Value {
    f.json(&["sweep", "status", &id.to_string(), "--json"])
}

fn wait_sweep(f: &Ferry, id: u64, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + SWEEP_WAIT;
    loop {
        let s = sweep(f, id);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {s:#}\n{}", f.logs_for_failure());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn trials(s: &Value) -> &Vec<Value> {
    s["trials"].as_array().unwrap()
}

#[test]
fn a_sweep_runs_trials_stops_poor_ones_early_and_reports_the_best() {
    let f = Ferry::start(NodeSpec { gpus: 0, cpus: 4, memory: "8GiB" });
    let file = sweep_file(
        &f,
        "asha",
        "max_trials = 10\nmax_parallel = 3\nseed = 7\n\n[method]\nname = \"tpe\"\nstartup_trials = 4\n\n\
         [early_stopping]\nrule = \"asha\"\nmin_steps = 1\nmax_steps = 9\nreduction_factor = 3",
        "",
    );
    let id = start_sweep(&f, &file);
    let s = wait_sweep(&f, id, "the sweep to finish", |s| s["state"] != "running");
    assert_eq!(s["state"], "finished", "{s:#}");
    let all = trials(&s);
    assert_eq!(all.len(), 10, "{s:#}");
    let indices: Vec<u64> = all.iter().map(|t| t["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, (0..10).collect::<Vec<u64>>());
    let count = |state: &str| all.iter().filter(|t| t["state"] == state).count();
    assert_eq!(count("completed") + count("stopped") + count("failed"), 10, "{s:#}");
    assert_eq!(count("failed"), 0, "{s:#}");
    assert!(count("completed") >= 1, "{s:#}");
    assert!(count("stopped") >= 1, "ASHA stopped no trial: {s:#}");

    // The best trial is the completed one with the lowest loss.
    let best = s["best_trial"].as_u64().expect("a best trial");
    let lowest = all
        .iter()
        .filter(|t| t["state"] == "completed")
        .min_by(|a, b| a["value"].as_f64().unwrap().total_cmp(&b["value"].as_f64().unwrap()))
        .unwrap();
    assert_eq!(lowest["index"].as_u64(), Some(best));
    assert_eq!(s["best_value"], lowest["value"]);
    assert!(s["message"].as_str().unwrap().contains(&format!("best trial {best}")), "{s:#}");

    for t in all {
        let job_id = t["job_id"].as_u64().expect("every trial has a job");
        let job = f.job(job_id);
        // Each trial's parameters reached its command and its MLflow run.
        let command: Vec<&str> = job["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let lr = &t["params"]["lr"];
        assert_eq!(command[3], lr.as_f64().unwrap().to_string(), "{job:#}");
        assert_eq!(command[5], t["params"]["width"].to_string(), "{job:#}");
        assert_eq!(job["tracking"]["run_id"], t["run_id"], "{job:#}");
        let metrics = f.json(&["metrics", &job_id.to_string(), "--json"]);
        assert_eq!(metrics["params"]["width"], t["params"]["width"].to_string(), "{metrics:#}");
        assert_eq!(metrics["params"]["lr"], lr.as_f64().unwrap().to_string(), "{metrics:#}");
        match t["state"].as_str().unwrap() {
            "completed" => {
                assert_eq!(job["state"], "succeeded", "{job:#}");
                assert_eq!(metrics["status"], "FINISHED", "{metrics:#}");
                assert_eq!(t["step"], 9, "{t:#}");
            }
            "stopped" => {
                assert_eq!(job["state"], "cancelled", "{job:#}");
                let reason = t["stop_reason"].as_str().expect("a stopped trial says why");
                assert!(reason.contains("loss"), "{reason}");
                assert!(t["step"].as_i64().unwrap() < 9, "{t:#}");
                assert_eq!(metrics["status"], "KILLED", "{metrics:#}");
                // Its output is kept.
                let logs = f.ok(&["logs", &job_id.to_string()]);
                assert!(logs.contains("step 1 loss"), "{logs}");
            }
            other => panic!("trial in state {other}: {t:#}"),
        }
    }
    // The progress view prints the bar and the best trial.
    let text = f.ok(&["sweep", "status", &id.to_string()]);
    assert!(text.contains("finished [") && text.contains(&format!("(trial {best})")), "{text}");
    let list = f.ok(&["sweep", "list"]);
    assert!(list.contains("asha") && list.contains("10/10"), "{list}");
}

#[test]
fn bad_sweep_files_are_refused_with_what_to_fix() {
    let f = Ferry::start(NodeSpec::default());
    let cases = [
        ("unknown distribution", "[params.x]\ndistribution = \"normal\"\nlow = 0\nhigh = 1\n", "normal"),
        ("empty choice", "[params.x]\ndistribution = \"choice\"\nvalues = []\n", "values"),
        ("low above high", "[params.x]\ndistribution = \"uniform\"\nlow = 2.0\nhigh = 1.0\n", "low"),
    ];
    for (what, params, needle) in cases {
        let text = format!(
            "command = [\"python3\", \"-c\", \"pass\", \"{{x}}\"]\nmax_trials = 5\n\n[objective]\nmetric = \"loss\"\n\
             goal = \"minimize\"\n\n[method]\nname = \"random\"\n\n{params}"
        );
        let path = f.workdir().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let out = f.cli(&["sweep", path.to_str().unwrap(), "--detach", "--no-code"]);
        assert_eq!(out.status.code(), Some(64), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{what}: {}", stderr(&out));
        // The API refuses the same file on its own, with a 400 and the same words, and creates nothing.
        let answer = reqwest::blocking::Client::new()
            .post(format!("{}/api/v1/sweeps", f.url()))
            .bearer_auth(std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim())
            .json(&serde_json::json!({ "spec": text }))
            .send()
            .unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{what}");
        let body: Value = answer.json().unwrap();
        assert!(body["message"].as_str().unwrap().contains(needle), "{what}: {body}");
    }
    // A trial job the server would refuse is refused with the sweep, not trial by trial.
    let random = "max_trials = 3\n\n[method]\nname = \"random\"";
    let path = sweep_file(&f, "bad-env", random, "env = { \"1X\" = \"y\" }");
    let out = f.cli(&["sweep", path.to_str().unwrap(), "--detach"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("1X"), "{}", stderr(&out));
    let path = sweep_file(&f, "bad-trial", random, "colour = \"red\"");
    let out = f.cli(&["sweep", path.to_str().unwrap(), "--detach"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("colour"), "{}", stderr(&out));
    let out = f.cli(&["sweep", "--objective", "loss", "--param", "lr=gauss:0:1", "--no-code", "--", "true", "{lr}"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("gauss"), "{}", stderr(&out));
    assert_eq!(f.json(&["sweep", "list", "--json"])["sweeps"].as_array().unwrap().len(), 0);

    // The same search from flags instead of a file.
    let out = f.cli(&[
        "sweep",
        "--objective",
        "acc",
        "--maximize",
        "--param",
        "lr=log_uniform:0.001:0.1",
        "--param",
        "w=choice:2,4,8",
        "--method",
        "random",
        "--max-trials",
        "4",
        "--max-parallel",
        "1",
        "--cpus",
        "0.5",
        "--detach",
        "--no-code",
        "--",
        "sleep",
        "5",
        "{lr}",
        "{w}",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: u64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    // A trial is recorded a moment before its job is submitted: wait for the job too.
    let s = wait_sweep(&f, id, "the first trial's job", |s| trials(s).first().is_some_and(|t| t["job_id"].is_u64()));
    assert_eq!(
        (s["method"].as_str(), s["goal"].as_str(), s["max_trials"].as_u64()),
        (Some("random"), Some("maximize"), Some(4))
    );
    let t = &trials(&s)[0];
    let w = t["params"]["w"].as_i64().unwrap();
    assert!([2, 4, 8].contains(&w), "{t:#}");
    let job = f.job(t["job_id"].as_u64().unwrap());
    assert_eq!(job["command"][2], t["params"]["lr"].as_f64().unwrap().to_string(), "{job:#}");
    assert_eq!(job["cpu_millis"], 500, "{job:#}");
    f.ok(&["sweep", "cancel", &id.to_string()]);
}

#[test]
fn a_sweep_whose_trials_never_log_the_objective_fails_with_the_reason() {
    let f = Ferry::start(NodeSpec::default());
    let path = f.workdir().join("silent.toml");
    std::fs::write(
        &path,
        "name = \"silent\"\ncommand = [\"true\", \"{x}\"]\nmax_trials = 20\nmax_parallel = 2\n\n[objective]\n\
         metric = \"val_loss\"\ngoal = \"minimize\"\n\n[method]\nname = \"random\"\n\n[params.x]\n\
         distribution = \"uniform\"\nlow = 0.0\nhigh = 1.0\n",
    )
    .unwrap();
    let out = f.cli(&["sweep", path.to_str().unwrap(), "--detach", "--no-code"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: u64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    let s = wait_sweep(&f, id, "the sweep to fail", |s| s["state"] != "running");
    assert_eq!(s["state"], "failed", "{s:#}");
    let message = s["message"].as_str().unwrap();
    assert!(message.contains("val_loss") && message.contains("mlflow.log_metric"), "{message}");
    assert!(trials(&s).len() < 20, "the sweep ran every trial for nothing: {s:#}");
}

#[test]
fn a_sweep_of_500_trials_is_accepted_at_once_and_can_be_cancelled() {
    let f = Ferry::start(NodeSpec { gpus: 0, cpus: 2, memory: "4GiB" });
    // Trials run in the shipped folder the sweep was started from, as `ferry run` jobs do.
    let folder = f.workdir().join("project");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(fixtures().join("trial.py"), folder.join("trial.py")).unwrap();
    let text = std::fs::read_to_string(sweep_file(
        &f,
        "big",
        "max_trials = 500\nmax_parallel = 2\n\n[method]\nname = \"random\"",
        "",
    ))
    .unwrap()
    .lines()
    .filter(|l| !l.starts_with("workdir"))
    .collect::<Vec<_>>()
    .join("\n");
    std::fs::write(folder.join("sweep.toml"), text).unwrap();
    let out = f.cli_shipping_in(&folder, &["sweep", "sweep.toml", "--detach"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), f.logs_for_failure());
    let id: u64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    let s = wait_sweep(&f, id, "the first trials to run", |s| s["counts"]["running"].as_u64() >= Some(1));
    assert_eq!(s["max_trials"], 500);
    let job = f.job(trials(&s)[0]["job_id"].as_u64().unwrap());
    assert!(job["code"]["sha256"].is_string(), "the trial did not get the shipped folder: {job:#}");
    assert!(trials(&s).len() <= 2 + 2, "more trials created than may run: {s:#}");
    let out = f.cli(&["sweep", "cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = wait_sweep(&f, id, "the trials to stop", |s| s["counts"]["running"] == 0 && s["counts"]["queued"] == 0);
    assert_eq!(s["state"], "cancelled", "{s:#}");
    for t in trials(&s) {
        assert_eq!(t["state"], "stopped", "{t:#}");
    }
    // Cancelling twice says so.
    let out = f.cli(&["sweep", "cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
}

#[test]
fn a_server_killed_mid_sweep_resumes_it_without_duplicating_trials() {
    let mut f = Ferry::start(NodeSpec { gpus: 0, cpus: 4, memory: "8GiB" });
    let path =
        sweep_file(&f, "resume", "max_trials = 6\nmax_parallel = 2\nseed = 3\n\n[method]\nname = \"random\"", "");
    let id = start_sweep(&f, &path);
    wait_sweep(&f, id, "two trials to run", |s| s["counts"]["running"].as_u64() >= Some(2));
    f.kill_server();
    f.start_server();
    let s = wait_sweep(&f, id, "the resumed sweep to finish", |s| s["state"] != "running");
    assert_eq!(s["state"], "finished", "{s:#}");
    let all = trials(&s);
    assert_eq!(all.len(), 6, "{s:#}");
    let jobs = f.json(&["ps", "--all", "--json"]);
    let trial_jobs: Vec<&Value> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["name"].as_str().is_some_and(|n| n.starts_with("resume-trial-")))
        .collect();
    assert_eq!(trial_jobs.len(), 6, "a trial was submitted twice: {jobs:#}");
    let mut names: Vec<&str> = trial_jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(all.iter().all(|t| t["state"] == "completed"), "{s:#}");
}
