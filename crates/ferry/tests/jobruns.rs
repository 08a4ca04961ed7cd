//! Every job's MLflow run: made at submission, handed to the job through MLFLOW_* variables with a tracking token of
//! its own, attached to by the unmodified official client inside the job (scripts/mlflow/job_check.py, run as a
//! Ferry job with the venv of scripts/mlflow/install.sh), ended with the job, and shown by `ferry metrics`.

mod common;

use std::path::{Path, PathBuf};

use common::{Ferry, NodeSpec};
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn python() -> PathBuf {
    let venv =
        std::env::var_os("FERRY_MLFLOW_VENV").map_or_else(|| root().join("target/engines/mlflow-venv"), PathBuf::from);
    let python = venv.join("bin/python3");
    assert!(python.exists(), "the MLflow client is not installed in {}: run scripts/mlflow/install.sh", venv.display());
    python
}

fn admin(f: &Ferry) -> String {
    std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string()
}

#[test]
fn the_official_client_inside_a_job_attaches_to_the_jobs_run() {
    let f = Ferry::start(NodeSpec::default());
    let python = python();
    let script = root().join("scripts/mlflow/job_check.py");
    let id = f.submit(&[
        "--name",
        "tracked",
        "--experiment",
        "job-runs",
        "--env",
        "MLFLOW_DISABLE_TELEMETRY=true",
        "--env",
        "DO_NOT_TRACK=true",
        "--",
        python.to_str().unwrap(),
        script.to_str().unwrap(),
    ]);
    let job = f.wait_state(id, "succeeded");
    let logs = f.ok(&["logs", &id.to_string()]);
    let run_id = job["tracking"]["run_id"].as_str().expect("the job has a run").to_string();
    assert!(logs.contains(&format!("OK {run_id}")), "{logs}");
    // The token is nowhere in what Ferry shows of the job.
    assert!(!serde_json::to_string(&job).unwrap().contains("ferry_job_"), "{job:#}");

    // `ferry metrics` shows what the job logged.
    let m = f.json(&["metrics", &id.to_string(), "--json"]);
    assert_eq!(m["run_id"], run_id.as_str());
    assert_eq!(m["status"], "FINISHED");
    assert_eq!(m["params"]["lr"], "0.1");
    let loss = m["metrics"].as_array().unwrap().iter().find(|s| s["key"] == "loss").unwrap().clone();
    assert_eq!(
        (loss["last"].as_f64(), loss["min"].as_f64(), loss["max"].as_f64()),
        (Some(0.125), Some(0.125), Some(1.0))
    );
    assert_eq!(loss["count"], 4);
    let text = f.ok(&["metrics", &id.to_string(), "loss"]);
    assert!(text.contains("0.125") && text.lines().count() >= 5, "{text}");
    let out = f.cli(&["metrics", &id.to_string(), "nope"]);
    assert_eq!(out.status.code(), Some(66), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("loss"), "{}", common::stderr(&out));
    let shown = f.ok(&["show", &id.to_string()]);
    assert!(shown.contains(&run_id) && shown.contains("ferry metrics"), "{shown}");

    // The run is in the named experiment, named after the job.
    let answer: Value = Client::new()
        .get(format!("{}/api/2.0/mlflow/runs/get?run_id={run_id}", f.url()))
        .bearer_auth(admin(&f))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["run"]["info"]["run_name"], "tracked", "{answer:#}");
    let experiment: Value = Client::new()
        .get(format!("{}/api/2.0/mlflow/experiments/get-by-name?experiment_name=job-runs", f.url()))
        .bearer_auth(admin(&f))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(experiment["experiment"]["experiment_id"], answer["run"]["info"]["experiment_id"]);
}

#[test]
fn a_jobs_run_follows_the_job_and_its_token_opens_the_tracking_api_alone() {
    let f = Ferry::start(NodeSpec::default());
    // A job that never touches MLflow still has a run, which ends with the job.
    let id = f.submit(&[
        "--project",
        "vision",
        "--",
        "sh",
        "-c",
        "echo token=$MLFLOW_TRACKING_TOKEN; echo uri=$MLFLOW_TRACKING_URI; sleep 30",
    ]);
    f.wait_state(id, "running");
    let job = f.job(id);
    let run_id = job["tracking"]["run_id"].as_str().unwrap().to_string();
    let get_run = |token: &str| {
        Client::new()
            .get(format!("{}/api/2.0/mlflow/runs/get?run_id={run_id}", f.url()))
            .bearer_auth(token)
            .send()
            .unwrap()
    };
    f.wait_for("the run to be running", |f| {
        get_run(&admin(f)).json::<Value>().unwrap()["run"]["info"]["status"] == "RUNNING"
    });
    let run: Value = get_run(&admin(&f)).json().unwrap();
    assert_eq!(run["run"]["info"]["run_name"], format!("job-{id}"));
    // The default experiment of a job with a project is the project's.
    let experiment: Value = Client::new()
        .get(format!("{}/api/2.0/mlflow/experiments/get-by-name?experiment_name=vision", f.url()))
        .bearer_auth(admin(&f))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(experiment["experiment"]["experiment_id"], run["run"]["info"]["experiment_id"]);

    f.wait_for("the job to print its variables", |f| f.ok(&["logs", &id.to_string()]).contains("uri="));
    let logs = f.ok(&["logs", &id.to_string()]);
    let token = logs.lines().find_map(|l| l.strip_prefix("token=")).unwrap().to_string();
    assert!(token.starts_with(&format!("ferry_job_{id}_")), "{logs}");
    assert!(logs.contains(&format!("uri={}", f.url())), "{logs}");
    // The job's token reads and writes tracking data...
    assert_eq!(get_run(&token).status().as_u16(), 200);
    let logged = Client::new()
        .post(format!("{}/api/2.0/mlflow/runs/log-metric", f.url()))
        .bearer_auth(&token)
        .json(&json!({ "run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 1, "step": 1 }))
        .send()
        .unwrap();
    assert_eq!(logged.status().as_u16(), 200);
    // ...and nothing else.
    let jobs = Client::new().get(format!("{}/api/v1/jobs", f.url())).bearer_auth(&token).send().unwrap();
    assert_eq!(jobs.status().as_u16(), 403);
    let body: Value = jobs.json().unwrap();
    assert!(body["message"].as_str().unwrap().contains("tracking"), "{body}");
    // A token signed for another job, or altered, is refused.
    let forged = token.replacen(&format!("ferry_job_{id}_"), &format!("ferry_job_{}_", id + 1), 1);
    assert_eq!(get_run(&forged).status().as_u16(), 401);
    let mut altered = token.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == '0' { '1' } else { '0' });
    assert_eq!(get_run(&altered).status().as_u16(), 401);

    // Cancelling the job ends its run as KILLED.
    f.ok(&["cancel", &id.to_string()]);
    f.wait_state(id, "cancelled");
    f.wait_for("the run to be killed", |f| {
        get_run(&admin(f)).json::<Value>().unwrap()["run"]["info"]["status"] == "KILLED"
    });
    // A job whose code ends its run itself keeps the code's status.
    let id = f.submit(&["--", "false"]);
    f.wait_state(id, "failed");
    let run_id = f.job(id)["tracking"]["run_id"].as_str().unwrap().to_string();
    f.wait_for("the run to fail", |f| {
        let url = format!("{}/api/2.0/mlflow/runs/get?run_id={run_id}", f.url());
        Client::new().get(url).bearer_auth(admin(f)).send().unwrap().json::<Value>().unwrap()["run"]["info"]["status"]
            == "FAILED"
    });
    // A deleted experiment is refused with how to fix it, and the refused job leaves nothing behind.
    let created: Value = Client::new()
        .post(format!("{}/api/2.0/mlflow/experiments/create", f.url()))
        .bearer_auth(admin(&f))
        .json(&json!({ "name": "gone" }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let deleted = Client::new()
        .post(format!("{}/api/2.0/mlflow/experiments/delete", f.url()))
        .bearer_auth(admin(&f))
        .json(&json!({ "experiment_id": created["experiment_id"] }))
        .send()
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 200);
    let out = f.cli(&["run", "--experiment", "gone", "--", "true"]);
    assert_eq!(out.status.code(), Some(64), "{}", common::stderr(&out));
    assert!(common::stderr(&out).contains("restore"), "{}", common::stderr(&out));
}
