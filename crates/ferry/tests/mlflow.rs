//! The MLflow-compatible tracking API, tested with the official `mlflow` client from PyPI (mlflow-skinny, in the venv
//! of `scripts/mlflow/install.sh`, which `scripts/test` runs): a script logs and reads back experiments, runs,
//! params, metrics with their history, tags and searches; then this test checks through the API that the data
//! landed. Bad input is sent over HTTP and must be answered in MLflow's error format with a 4xx.
//!
//! Artifacts and logged models go through `scripts/mlflow/artifacts_check.py` (files, nested folders, a 20 MB file,
//! a pyfunc model loaded back), once with the default store on the server's disk and once with an S3 store: moto's
//! server from PyPI (`scripts/moto/install.sh`, started and stopped by `scripts/moto/{start,stop}.sh`).

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
    assert_error(post(&f, "registered-models/create", json!({ "name": "r" })), 404, "ENDPOINT_NOT_FOUND");
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

/// Runs `scripts/mlflow/artifacts_check.py` against the server; returns its `OK` line's experiment, run and model ids.
fn artifacts_check(f: &Ferry, experiment: &str) -> (String, String, String) {
    let out = Command::new(python())
        .arg(root().join("scripts/mlflow/artifacts_check.py"))
        .current_dir(f.workdir())
        .env("MLFLOW_TRACKING_URI", f.url())
        .env("MLFLOW_TRACKING_TOKEN", token(f))
        .env("MLFLOW_DISABLE_TELEMETRY", "true")
        .env("DO_NOT_TRACK", "true")
        .env("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        .env("FERRY_CHECK_EXPERIMENT", experiment)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "the artifacts script failed:\n{stdout}\n{}\n{}", stderr(&out), f.logs_for_failure());
    let ok = stdout.lines().find(|l| l.starts_with("OK ")).unwrap_or_else(|| panic!("no OK line: {stdout}"));
    let ids: Vec<String> = ok.split_whitespace().skip(1).map(str::to_string).collect();
    assert_eq!(ids.len(), 3, "{ok}");
    (ids[0].clone(), ids[1].clone(), ids[2].clone())
}

/// Calls an artifact endpoint (`/api/2.0/mlflow-artifacts/artifacts...`) with the admin token.
fn artifact_call(
    f: &Ferry,
    method: reqwest::Method,
    rest: &str,
    body: Option<reqwest::blocking::Body>,
) -> (u16, Value) {
    let url = format!("{}/api/2.0/mlflow-artifacts/artifacts{rest}", f.url());
    let mut request = Client::new().request(method, url).bearer_auth(token(f));
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Every file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_official_mlflow_client_logs_and_downloads_artifacts_and_models() {
    let f = Ferry::start(NodeSpec::default());
    let (experiment, run, model) = artifacts_check(&f, "ferry-artifacts-check");

    // The files are on the server's disk, under the data directory, where the paths say.
    let stored = files_under(&f.home().join("artifacts"));
    for want in [
        format!("{experiment}/{run}/artifacts/notes.txt"),
        format!("{experiment}/{run}/artifacts/tree/a/b/with space.txt"),
        format!("{experiment}/{run}/artifacts/large/big.bin"),
        format!("{experiment}/models/{model}/artifacts/MLmodel"),
    ] {
        assert!(stored.contains(&want), "{want} is not in {stored:?}");
    }
    let big = f.home().join(format!("artifacts/{experiment}/{run}/artifacts/large/big.bin"));
    assert_eq!(std::fs::metadata(big).unwrap().len(), 20_000_000);

    // MLflow's list shape: folders without a size; the tracking API's list with paths from the run's root.
    let (status, listed) =
        artifact_call(&f, reqwest::Method::GET, &format!("?path={experiment}/{run}/artifacts/tree"), None);
    assert_eq!(status, 200, "{listed}");
    assert_eq!(
        listed,
        json!({ "files": [{ "path": "a", "is_dir": true }, { "path": "top.json", "is_dir": false, "file_size": 9 }] })
    );
    let (status, listed) = get(&f, &format!("artifacts/list?run_id={run}&path=tree/a"));
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["root_uri"], format!("mlflow-artifacts:/{experiment}/{run}/artifacts"));
    assert_eq!(listed["files"][0], json!({ "path": "tree/a/b", "is_dir": true }));

    // The typed client the CLI uses: a listing, and a streamed download that matches the file byte for byte.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = ferry_client::Client::new(&f.url(), Some(token(&f)));
    let listed = runtime.block_on(client.list_artifacts(&run, "tree/a/b")).unwrap();
    let names: Vec<(&str, Option<i64>)> = listed.files.iter().map(|e| (e.path.as_str(), e.file_size)).collect();
    assert_eq!(names, vec![("tree/a/b/two.txt", Some(23)), ("tree/a/b/with space.txt", Some(20))]);
    let mut bytes: Vec<u8> = Vec::new();
    let n =
        runtime.block_on(client.download_artifact(&experiment, &run, "tree/a/b/with space.txt", &mut bytes)).unwrap();
    assert_eq!((n, bytes.as_slice()), (20, &b"a name with a space\n"[..]));
    let missing = runtime.block_on(client.download_artifact(&experiment, &run, "nope.txt", &mut bytes)).unwrap_err();
    assert_eq!(missing.code(), Some(ferry_api::ErrorCode::NotFound), "{missing}");

    // The logged model, as the API shows it.
    let (status, got) = get(&f, &format!("logged-models/{model}"));
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["model"]["info"]["status"], "LOGGED_MODEL_READY");
    assert_eq!(got["model"]["info"]["source_run_id"], run.as_str());
    let (status, found) = post(
        &f,
        "logged-models/search",
        json!({ "experiment_ids": [experiment], "filter": format!("source_run_id = '{run}' AND status = 'READY'") }),
    );
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["models"].as_array().map(Vec::len), Some(1), "{found}");
}

/// moto's S3 server, started by scripts/moto/start.sh and stopped when dropped.
struct Moto {
    run_dir: tempfile::TempDir,
    url: String,
}

impl Moto {
    fn start() -> Moto {
        let venv =
            std::env::var_os("FERRY_MOTO_VENV").map_or_else(|| root().join("target/engines/moto-venv"), PathBuf::from);
        assert!(
            venv.join("bin/moto_server").exists(),
            "moto is not installed in {}: run scripts/moto/install.sh first",
            venv.display()
        );
        let run_dir = tempfile::tempdir().unwrap();
        let out = Command::new(root().join("scripts/moto/start.sh")).arg(run_dir.path()).output().unwrap();
        assert!(out.status.success(), "moto did not start: {}", stderr(&out));
        let url = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_string();
        Moto { run_dir, url }
    }

    /// Runs Python with boto3 against moto; `code` sees `s3` (a client) and `sys.argv[1:]`.
    fn boto(&self, code: &str, args: &[&str]) -> String {
        let venv =
            std::env::var_os("FERRY_MOTO_VENV").map_or_else(|| root().join("target/engines/moto-venv"), PathBuf::from);
        let script = format!(
            "import sys, boto3\ns3 = boto3.client('s3', endpoint_url={:?}, region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}",
            self.url
        );
        let out = Command::new(venv.join("bin/python3")).arg("-c").arg(script).args(args).output().unwrap();
        assert!(out.status.success(), "boto3 failed: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/moto/stop.sh")).arg(self.run_dir.path()).output();
    }
}

#[test]
fn artifacts_go_to_an_s3_compatible_store_when_configured() {
    let moto = Moto::start();
    moto.boto("s3.create_bucket(Bucket='ferry-artifacts')", &[]);
    // The server takes its credentials from the standard variables, never from its configuration file. Each test
    // runs in a process of its own (nextest), so setting them here reaches only this test's server.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let config = format!(
        "[artifacts]\nurl = \"s3://ferry-artifacts/team/a\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\nmax_file_bytes = 25000000\n",
        moto.url
    );
    let f = Ferry::start_with_server_config(NodeSpec::default(), "", &config);
    let (experiment, run, model) = artifacts_check(&f, "ferry-s3-check");

    // The objects really are in the bucket, under the prefix; nothing is on the server's disk.
    let listing = "for page in s3.get_paginator('list_objects_v2').paginate(Bucket='ferry-artifacts'):\n    \
                   for o in page.get('Contents', []): print(o['Key'], o['Size'])";
    let objects = moto.boto(listing, &[]);
    for want in [
        format!("team/a/{experiment}/{run}/artifacts/large/big.bin 20000000"),
        format!("team/a/{experiment}/{run}/artifacts/tree/a/b/with space.txt 20"),
        format!("team/a/{experiment}/models/{model}/artifacts/MLmodel "),
    ] {
        assert!(objects.lines().any(|l| l.starts_with(&want)), "{want} is not in the bucket:\n{objects}");
    }
    assert!(files_under(&f.home().join("artifacts")).is_empty());

    // An upload past max_file_bytes, streamed (no length announced) so that it becomes a multipart upload before the
    // limit is reached: refused, aborted, and nothing of it is left in the bucket.
    let big = std::io::Read::take(std::io::repeat(7), 30_000_000);
    let path = format!("/{experiment}/{run}/artifacts/too-big.bin");
    let refused = artifact_call(&f, reqwest::Method::PUT, &path, Some(reqwest::blocking::Body::new(big)));
    assert_error(refused, 413, "INVALID_PARAMETER_VALUE");
    let objects = moto.boto(listing, &[]);
    assert!(!objects.contains("too-big"), "{objects}");
    let uploads = moto.boto("print(len(s3.list_multipart_uploads(Bucket='ferry-artifacts').get('Uploads', [])))", &[]);
    assert_eq!(uploads.trim(), "0", "the refused multipart upload was aborted");
    assert_error(artifact_call(&f, reqwest::Method::GET, &path, None), 404, "RESOURCE_DOES_NOT_EXIST");

    // Deleting a folder removes its objects.
    assert_eq!(artifact_call(&f, reqwest::Method::DELETE, &format!("/{experiment}/{run}/artifacts/tree"), None).0, 200);
    let objects = moto.boto(listing, &[]);
    assert!(!objects.contains("/artifacts/tree/") && objects.contains("big.bin"), "{objects}");
}

#[test]
fn bad_artifact_requests_get_mlflow_errors_and_leave_nothing_behind() {
    let f = Ferry::start_with_server_config(NodeSpec::default(), "", "[artifacts]\nmax_file_bytes = 1048576\n");
    let (_, created) = post(&f, "runs/create", json!({ "experiment_id": "0" }));
    let run = created["run"]["info"]["run_id"].as_str().unwrap().to_string();
    let put = |rest: &str, body: Vec<u8>| artifact_call(&f, reqwest::Method::PUT, rest, Some(body.into()));
    assert_eq!(put(&format!("/0/{run}/artifacts/ok.txt"), b"fine".to_vec()), (200, json!({})));

    // On the local store a name is a file or a folder, not both.
    assert_eq!(put(&format!("/0/{run}/artifacts/dir/inner.txt"), b"in".to_vec()).0, 200);
    assert_error(put(&format!("/0/{run}/artifacts/ok.txt/below"), b"x".to_vec()), 400, "INVALID_PARAMETER_VALUE");
    assert_error(put(&format!("/0/{run}/artifacts/dir"), b"x".to_vec()), 400, "INVALID_PARAMETER_VALUE");
    assert_eq!(artifact_call(&f, reqwest::Method::DELETE, &format!("/0/{run}/artifacts/dir"), None), (200, json!({})));

    // Paths that are not plain relative paths in a run's folder.
    let escapes = put(&format!("/0%2F{run}%2Fartifacts%2F..%2F..%2Fx"), b"x".to_vec());
    assert_error(escapes.clone(), 400, "INVALID_PARAMETER_VALUE");
    assert!(escapes.1["message"].as_str().unwrap().contains(".."), "{}", escapes.1);
    for rest in [format!("?path=0/{run}/artifacts/../../.."), "?path=/etc".to_string(), "?path=0/x//y".to_string()] {
        assert_error(artifact_call(&f, reqwest::Method::GET, &rest, None), 400, "INVALID_PARAMETER_VALUE");
    }
    assert_error(put("//etc/passwd", b"x".to_vec()), 400, "INVALID_PARAMETER_VALUE");
    assert_error(put(&format!("/0/{run}/elsewhere/x"), b"x".to_vec()), 400, "INVALID_PARAMETER_VALUE");
    assert_error(put(&format!("/0/{run}/artifacts/back%5Cslash"), b"x".to_vec()), 400, "INVALID_PARAMETER_VALUE");

    // Too large: announced, and streamed without a length; neither leaves a file.
    let oversized = put(&format!("/0/{run}/artifacts/big.bin"), vec![1; 2 << 20]);
    assert_error(oversized.clone(), 413, "INVALID_PARAMETER_VALUE");
    assert!(oversized.1["message"].as_str().unwrap().contains("1048576"), "{}", oversized.1);
    let streamed = reqwest::blocking::Body::new(std::io::Read::take(std::io::repeat(1), 3 << 20));
    let refused = artifact_call(&f, reqwest::Method::PUT, &format!("/0/{run}/artifacts/streamed.bin"), Some(streamed));
    assert_error(refused, 413, "INVALID_PARAMETER_VALUE");
    assert_eq!(files_under(&f.home().join("artifacts")), vec![format!("0/{run}/artifacts/ok.txt")]);
    let exact = put(&format!("/0/{run}/artifacts/exact.bin"), vec![2; 1 << 20]);
    assert_eq!(exact.0, 200, "the limit itself is allowed: {}", exact.1);

    // Missing files, runs and folders.
    assert_error(
        artifact_call(&f, reqwest::Method::GET, &format!("/0/{run}/artifacts/nope.txt"), None),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    let unknown = "0".repeat(32);
    assert_error(put(&format!("/0/{unknown}/artifacts/x.txt"), b"x".to_vec()), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_error(put(&format!("/5/{run}/artifacts/x.txt"), b"x".to_vec()), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_eq!(
        artifact_call(&f, reqwest::Method::GET, &format!("?path=0/{run}/artifacts/no/such"), None),
        (200, json!({}))
    );
    assert_error(get(&f, &format!("artifacts/list?run_id={unknown}")), 404, "RESOURCE_DOES_NOT_EXIST");

    // Delete, then gone; a deleted run takes no uploads but its files can still be read.
    assert_eq!(
        artifact_call(&f, reqwest::Method::DELETE, &format!("/0/{run}/artifacts/exact.bin"), None),
        (200, json!({}))
    );
    assert_error(
        artifact_call(&f, reqwest::Method::GET, &format!("/0/{run}/artifacts/exact.bin"), None),
        404,
        "RESOURCE_DOES_NOT_EXIST",
    );
    assert_eq!(post(&f, "runs/delete", json!({ "run_id": run })).0, 200);
    let deleted = put(&format!("/0/{run}/artifacts/late.txt"), b"x".to_vec());
    assert_error(deleted.clone(), 400, "INVALID_PARAMETER_VALUE");
    assert!(deleted.1["message"].as_str().unwrap().contains("active"), "{}", deleted.1);
    assert_eq!(artifact_call(&f, reqwest::Method::GET, &format!("/0/{run}/artifacts/ok.txt"), None).0, 200);

    // What Ferry does not offer, no token, and logged models that do not exist.
    let (status, body) = {
        let response = Client::new()
            .post(format!("{}/api/2.0/mlflow-artifacts/mpu/create/0/{run}/artifacts/x", f.url()))
            .bearer_auth(token(&f))
            .json(&json!({ "path": "x", "num_parts": 2 }))
            .send()
            .unwrap();
        (response.status().as_u16(), response.json().unwrap_or(Value::Null))
    };
    assert_error((status, body), 501, "NOT_IMPLEMENTED");
    let response = Client::new()
        .get(format!("{}/api/2.0/mlflow-artifacts/artifacts/0/{run}/artifacts/ok.txt", f.url()))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    assert_error((status, response.json().unwrap()), 401, "UNAUTHENTICATED");
    let missing = format!("m-{}", "0".repeat(32));
    assert_error(get(&f, &format!("logged-models/{missing}")), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_error(put(&format!("/0/models/{missing}/artifacts/MLmodel"), b"x".to_vec()), 404, "RESOURCE_DOES_NOT_EXIST");
    let (status, created) = post(&f, "logged-models", json!({ "experiment_id": "0", "name": "m" }));
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["model"]["info"]["status"], "LOGGED_MODEL_PENDING");
    let model = created["model"]["info"]["model_id"].as_str().unwrap().to_string();
    let finalize = |status: &str| {
        call(
            &f,
            reqwest::Method::PATCH,
            &format!("logged-models/{model}"),
            Some(json!({ "model_id": model, "status": status })),
        )
    };
    assert_error(finalize("DONE"), 400, "INVALID_PARAMETER_VALUE");
    assert_eq!(finalize("LOGGED_MODEL_READY").1["model"]["info"]["status"], "LOGGED_MODEL_READY");
    assert_error(
        post(&f, "logged-models/search", json!({ "experiment_ids": ["0"], "filter": "metrics.acc > 1" })),
        400,
        "INVALID_PARAMETER_VALUE",
    );
    assert_eq!(call(&f, reqwest::Method::DELETE, &format!("logged-models/{model}"), None).0, 200);
    assert_error(get(&f, &format!("logged-models/{model}")), 404, "RESOURCE_DOES_NOT_EXIST");
    assert_error(put(&format!("/0/models/{model}/artifacts/MLmodel"), b"x".to_vec()), 400, "INVALID_PARAMETER_VALUE");
}

#[test]
fn ferry_artifacts_lists_and_downloads_a_jobs_artifacts() {
    let f = Ferry::start(NodeSpec::default());
    let id = f.submit(&["--", "true"]);
    let job = f.job(id);
    let (experiment, run) = match (job["tracking"]["experiment_id"].as_str(), job["tracking"]["run_id"].as_str()) {
        (Some(e), Some(r)) => (e.to_string(), r.to_string()),
        _ => panic!("the job has no tracking run: {job}"),
    };
    let job_id = id.to_string();
    let out = f.cli(&["artifacts", &job_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("no artifacts"), "{}", stderr(&out));

    let put = |rest: &str, body: &[u8]| {
        let answer = artifact_call(
            &f,
            reqwest::Method::PUT,
            &format!("/{experiment}/{run}/artifacts/{rest}"),
            Some(body.to_vec().into()),
        );
        assert_eq!(answer.0, 200, "{}", answer.1);
    };
    put("report.txt", b"all good\n");
    put("ckpt/epoch-1/weights.bin", &[7; 3000]);
    put("ckpt/epoch-1/meta.json", b"{}");
    put("ckpt/last.txt", b"epoch-1");

    let listed = f.ok(&["artifacts", &job_id]);
    assert!(listed.lines().any(|l| l.ends_with(" ckpt/")), "{listed}");
    assert!(listed.lines().any(|l| l.ends_with(" report.txt") && l.contains('9')), "{listed}");
    let nested = f.ok(&["artifacts", &job_id, "ckpt/epoch-1"]);
    assert!(nested.contains("ckpt/epoch-1/weights.bin") && nested.contains("ckpt/epoch-1/meta.json"), "{nested}");

    assert_eq!(f.ok(&["artifacts", &job_id, "get", "report.txt", "-o", "-"]), "all good\n");
    f.ok(&["artifacts", &job_id, "get", "report.txt"]);
    assert_eq!(std::fs::read(f.workdir().join("report.txt")).unwrap(), b"all good\n");
    f.ok(&["artifacts", &job_id, "get", "ckpt", "-o", "out"]);
    assert_eq!(files_under(&f.workdir().join("out")), vec!["epoch-1/meta.json", "epoch-1/weights.bin", "last.txt"]);
    assert_eq!(std::fs::read(f.workdir().join("out/epoch-1/weights.bin")).unwrap(), vec![7; 3000]);

    let missing = f.cli(&["artifacts", &job_id, "get", "nope.bin"]);
    assert_eq!(missing.status.code(), Some(66), "{}", stderr(&missing));
    assert!(!f.workdir().join("nope.bin").exists() && !f.workdir().join(".nope.bin.partial").exists());
    let no_job = f.cli(&["artifacts", "999999"]);
    assert_eq!(no_job.status.code(), Some(66), "{}", stderr(&no_job));
}
