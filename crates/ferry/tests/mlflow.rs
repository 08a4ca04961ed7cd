//! The MLflow-compatible tracking API, tested with the official `mlflow` client from PyPI (mlflow-skinny, in the venv
//! of `scripts/mlflow/install.sh`, which `scripts/test` runs): a script logs and reads back experiments, runs,
//! params, metrics with their history, tags and searches; then this test checks through the API that the data
//! landed. Bad input is sent over HTTP and must be answered in MLflow's error format with a 4xx.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{stderr, Ferry, NodeSpec};
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python; the test fails with what to run when it is missing.
fn python() -> PathBuf {
    let venv =
        std::env::var_os("FERRY_MLFLOW_VENV").map_or_else(|| root().join("target/engines/mlflow-venv"), PathBuf::from);
    let python = venv.join("bin/python3");
    assert!(
        python.exists(),
        "the MLflow client is not installed in {}: run scripts/mlflow/install.sh first",
        venv.display()
    );
    python
}

fn token(f: &Ferry) -> String {
    std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string()
}

/// Calls the MLflow API with the admin token: the status and the JSON body.
fn call(f: &Ferry, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/api/2.0/mlflow/{path}", f.url());
    let mut request = Client::new().request(method, url).bearer_auth(token(f));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

fn post(f: &Ferry, path: &str, body: Value) -> (u16, Value) {
    call(f, reqwest::Method::POST, path, Some(body))
}

fn get(f: &Ferry, path: &str) -> (u16, Value) {
    call(f, reqwest::Method::GET, path, None)
}

/// Asserts an MLflow error: the status, the error code, and a non-empty message.
#[track_caller]
fn assert_error(answer: (u16, Value), status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error_code"], code, "{}", answer.1);
    assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer.1);
}

#[test]
fn the_official_mlflow_client_logs_and_reads_back_everything() {
    let python = python();
    let f = Ferry::start(NodeSpec::default());
    let out = Command::new(&python)
        .arg(root().join("scripts/mlflow/client_check.py"))
        .current_dir(f.workdir())
        .env("MLFLOW_TRACKING_URI", f.url())
        .env("MLFLOW_TRACKING_TOKEN", token(&f))
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "the client script failed:\n{stdout}\n{}\n{}", stderr(&out), f.logs_for_failure());
    let ok = stdout.lines().find(|l| l.starts_with("OK ")).unwrap_or_else(|| panic!("no OK line: {stdout}"));
    let ids: Vec<&str> = ok.split_whitespace().skip(1).collect();
    assert_eq!(ids.len(), 2, "{ok}");

    // What the client logged is in Ferry, in MLflow's shapes.
    let (status, found) = get(&f, "experiments/get-by-name?experiment_name=ferry-client-check");
    assert_eq!(status, 200, "{found}");
    let experiment = found["experiment"]["experiment_id"].as_str().unwrap().to_string();
    let (status, runs) =
        post(&f, "runs/search", json!({ "experiment_ids": [experiment], "order_by": ["start_time ASC"] }));
    assert_eq!(status, 200, "{runs}");
    let runs = runs["runs"].as_array().unwrap().clone();
    let run_ids: Vec<&str> = runs.iter().map(|r| r["info"]["run_id"].as_str().unwrap()).collect();
    assert_eq!(run_ids, ids);
    let first = &runs[0];
    assert_eq!(first["info"]["status"], "FINISHED");
    assert_eq!(first["info"]["run_uuid"], first["info"]["run_id"]);
    assert_eq!(first["info"]["artifact_uri"], format!("mlflow-artifacts:/{experiment}/{}/artifacts", ids[0]));
    let loss = first["data"]["metrics"].as_array().unwrap().iter().find(|m| m["key"] == "loss").unwrap();
    assert_eq!((loss["value"].as_f64(), loss["step"].as_i64()), (Some(0.25), Some(2)), "{loss}");
    let (status, history) = get(&f, &format!("metrics/get-history?run_id={}&metric_key=loss", ids[0]));
    assert_eq!(status, 200, "{history}");
    let values: Vec<f64> = history["metrics"].as_array().unwrap().iter().filter_map(|m| m["value"].as_f64()).collect();
    assert_eq!(values, vec![0.9, 0.5, 0.25]);
    // NaN and infinity come back as protobuf's JSON writes them.
    let (_, second) = get(&f, &format!("runs/get?run_id={}", ids[1]));
    let metric =
        |key: &str| second["run"]["data"]["metrics"].as_array().unwrap().iter().find(|m| m["key"] == key).cloned();
    assert_eq!(metric("odd").unwrap()["value"], "NaN");
    assert_eq!(metric("big").unwrap()["value"], "Infinity");
}

#[test]
fn bad_mlflow_requests_get_mlflow_errors_never_a_500() {
    let f = Ferry::start(NodeSpec::default());
    let (status, created) = post(&f, "runs/create", json!({ "experiment_id": "0" }));
    assert_eq!(status, 200, "{created}");
    let run = created["run"]["info"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(run.len(), 32, "{created}");
    assert_eq!(created["run"]["info"]["user_id"], "admin", "the caller's name when the client sends none");
    assert_eq!(created["run"]["info"]["experiment_id"], "0");
    assert_eq!(created["run"]["info"]["lifecycle_stage"], "active");

    // Missing and invalid fields.
    assert_error(post(&f, "experiments/create", json!({})), 400, "INVALID_PARAMETER_VALUE");
    assert_error(
        post(&f, "runs/log-metric", json!({ "key": "k", "value": 1, "timestamp": 1 })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        post(&f, "runs/log-metric", json!({ "run_id": run, "key": "k", "timestamp": 1 })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        post(&f, "runs/log-metric", json!({ "run_id": run, "key": "k", "value": "lots", "timestamp": 1 })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        post(&f, "runs/log-parameter", json!({ "run_id": run, "key": "../up", "value": "1" })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(post(&f, "runs/update", json!({ "run_id": run, "status": "DONE" })), 400, "INVALID_PARAMETER_VALUE");
    assert_error(get(&f, "experiments/get?experiment_id=abc"), 400, "INVALID_PARAMETER_VALUE");
    assert_error(get(&f, "metrics/get-history?run_id=x"), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_error(
        post(&f, "runs/search", json!({ "experiment_ids": ["0"], "filter": "metrics.loss >" })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_error(
        post(&f, "runs/search", json!({ "experiment_ids": ["0"], "max_results": 0 })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let text = |body: &str| {
        let response = Client::new()
            .post(format!("{}/api/2.0/mlflow/runs/log-batch", f.url()))
            .bearer_auth(token(&f))
            .body(body.to_string())
            .send()
            .unwrap();
        (response.status().as_u16(), response.json().unwrap_or(Value::Null))
    };
    assert_error(text("{not json"), 400, "INVALID_PARAMETER_VALUE");
    assert_error(text(r#"{"run_id": 5}"#), 400, "INVALID_PARAMETER_VALUE");

    // Unknown ids.
    let unknown = "0".repeat(32);
    assert_error(get(&f, &format!("runs/get?run_id={unknown}")), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_error(
        post(&f, "runs/log-parameter", json!({ "run_id": unknown, "key": "a", "value": "1" })),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    assert_error(get(&f, "experiments/get?experiment_id=12345"), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_error(get(&f, "experiments/get-by-name?experiment_name=nope"), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_error(post(&f, "runs/create", json!({ "experiment_id": "12345" })), 404, "RESOURCE_DOES_NOT_EXIST");

    // Oversized batches and values: nothing of a refused batch is logged.
    let metrics: Vec<Value> = (0..1001).map(|i| json!({ "key": "m", "value": i, "timestamp": 1, "step": i })).collect();
    assert_error(
        post(&f, "runs/log-batch", json!({ "run_id": run, "metrics": metrics })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let params: Vec<Value> = (0..101).map(|i| json!({ "key": format!("p{i}"), "value": "v" })).collect();
    assert_error(
        post(&f, "runs/log-batch", json!({ "run_id": run, "params": params })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let tags: Vec<Value> = (0..101).map(|i| json!({ "key": format!("t{i}"), "value": "v" })).collect();
    assert_error(post(&f, "runs/log-batch", json!({ "run_id": run, "tags": tags })), 400, "INVALID_PARAMETER_VALUE");
    let long = "x".repeat(6001);
    assert_error(
        post(&f, "runs/log-parameter", json!({ "run_id": run, "key": "p", "value": long })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let key = "k".repeat(251);
    assert_error(
        post(&f, "runs/set-tag", json!({ "run_id": run, "key": key, "value": "v" })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let (status, _) =
        post(&f, "runs/log-batch", json!({ "run_id": run, "params": [{ "key": "p", "value": "x".repeat(6000) }] }));
    assert_eq!(status, 200, "6000 characters is the limit, not past it");

    // A param keeps its first value; the same value again is fine.
    assert_eq!(post(&f, "runs/log-parameter", json!({ "run_id": run, "key": "lr", "value": "0.1" })).0, 200);
    assert_eq!(post(&f, "runs/log-parameter", json!({ "run_id": run, "key": "lr", "value": "0.1" })).0, 200);
    assert_error(
        post(&f, "runs/log-parameter", json!({ "run_id": run, "key": "lr", "value": "0.2" })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    let batch = json!({ "run_id": run, "metrics": [{ "key": "m", "value": 1, "timestamp": 1 }], "params": [{ "key": "lr", "value": "0.3" }] });
    assert_error(post(&f, "runs/log-batch", batch), 400, "INVALID_PARAMETER_VALUE");
    let (_, got) = get(&f, &format!("runs/get?run_id={run}"));
    assert_eq!(got["run"]["data"]["metrics"], json!([]), "the refused batches logged nothing: {got}");
    let lr = got["run"]["data"]["params"].as_array().unwrap().iter().find(|p| p["key"] == "lr").cloned();
    assert_eq!(lr, Some(json!({ "key": "lr", "value": "0.1" })));

    // NaN and infinities, as protobuf's JSON sends them, are accepted.
    for value in ["NaN", "Infinity", "-Infinity"] {
        let body = json!({ "run_id": run, "key": "odd", "value": value, "timestamp": "5", "step": "1" });
        assert_eq!(post(&f, "runs/log-metric", body).0, 200, "{value}");
    }

    // A deleted run takes no more logs.
    assert_eq!(post(&f, "runs/delete", json!({ "run_id": run })).0, 200);
    assert_error(
        post(&f, "runs/set-tag", json!({ "run_id": run, "key": "a", "value": "b" })),
        400,
        "INVALID_PARAMETER_VALUE",
    );

    // Duplicates, the wrong method, paths not implemented, and no token: MLflow's format too.
    assert_eq!(post(&f, "experiments/create", json!({ "name": "dup" })).0, 200);
    assert_error(post(&f, "experiments/create", json!({ "name": "dup" })), 400, "RESOURCE_ALREADY_EXISTS");
    assert_error(get(&f, "runs/log-batch"), 405, "BAD_REQUEST");
    assert_error(post(&f, "logged-models/search", json!({})), 404, "ENDPOINT_NOT_FOUND");
    let response =
        Client::new().post(format!("{}/api/2.0/mlflow/runs/search", f.url())).json(&json!({})).send().unwrap();
    let status = response.status().as_u16();
    assert_error((status, response.json().unwrap()), 401, "UNAUTHENTICATED");
    let (status, info) = {
        let response = Client::new().get(format!("{}/api/3.0/mlflow/server-info", f.url())).send().unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["multipart_uploads_enabled"], false);
}

#[test]
fn concurrent_loggers_to_one_run_all_succeed_and_nothing_is_lost() {
    let f = Ferry::start(NodeSpec::default());
    let (_, created) = post(&f, "runs/create", json!({ "experiment_id": "0" }));
    let run = created["run"]["info"]["run_id"].as_str().unwrap().to_string();
    std::thread::scope(|scope| {
        for worker in 0..8 {
            let (f, run) = (&f, run.clone());
            scope.spawn(move || {
                for i in 0..20 {
                    let batch = json!({
                        "run_id": run,
                        "metrics": [{ "key": "loss", "value": i, "timestamp": 1, "step": worker * 100 + i }],
                        "params": [{ "key": format!("p{worker}_{i}"), "value": "v" }, { "key": "shared", "value": "same" }],
                    });
                    let (status, body) = post(f, "runs/log-batch", batch);
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
    let (_, history) = get(&f, &format!("metrics/get-history?run_id={run}&metric_key=loss"));
    assert_eq!(history["metrics"].as_array().unwrap().len(), 160);
    let (_, got) = get(&f, &format!("runs/get?run_id={run}"));
    assert_eq!(got["run"]["data"]["params"].as_array().unwrap().len(), 161);
    let latest = &got["run"]["data"]["metrics"][0];
    assert_eq!((latest["step"].as_i64(), latest["value"].as_f64()), (Some(719), Some(19.0)), "{latest}");
}
