//! Time series end to end: telemetry batches as an agent sends them become series that `GET /api/v1/series` answers,
//! the scheduler's capacity and allocation are recorded every tick, malformed batches and skewed clocks are refused
//! without harming what is stored, and the series survive a server restart.
//!
//! The batches here are written by the test (for a node `node-x` that the test registers itself), so the figures
//! are exact; the real agent's own samples are checked in `telemetry.rs`.

mod common;

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{Ferry, NodeSpec};
use serde_json::{json, Value};

/// Calls the API with curl and the admin token; returns the status and the parsed body.
fn curl(f: &Ferry, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    // The agent protocol takes a join token; the test's made-up nodes are all named node-*.
    let file = if path.starts_with("/agent/") { f.join_token_file("node-*") } else { f.home().join("admin.token") };
    let token = std::fs::read_to_string(file).unwrap();
    let mut command = Command::new("curl");
    command.args([
        "-s",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
    ]);
    if let Some(body) = body {
        command.args(["-H", "content-type: application/json", "-d", &body.to_string()]);
    }
    let out: Output = command.arg(format!("{}/api/v1{path}", f.url())).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A time as the API takes it in query strings.
fn rfc3339(us: i64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + std::time::Duration::from_micros(us as u64)).to_string()
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn register_node_x(f: &Ferry, now_us: i64) -> (u16, Value) {
    let node = json!({
        "name": "node-x", "pool": "lab", "cpu_millis": 8000, "memory_bytes": 17179869184u64,
        "gpus": [
            {"index": 0, "model": "Lab GPU", "memory_bytes": 17179869184u64, "uuid": null, "source": "config"},
            {"index": 1, "model": "Lab GPU", "memory_bytes": 17179869184u64, "uuid": null, "source": "config"}
        ],
        "agent_version": "test", "limits": "none", "runs": [], "now_us": now_us
    });
    curl(f, "POST", "/agent/register", Some(&node))
}

/// A sample of node-x at `at`: GPU 0 busy `busy`%, GPU 1 without telemetry, and job 999's run using GPU 0.
fn sample(at: i64, busy: u32) -> Value {
    json!({
        "node": {
            "sampled_at_us": at, "cpu_millis_used": 2000, "memory_used_bytes": 1073741824u64,
            "gpus": [{"index": 0, "utilization_percent": busy, "memory_used_bytes": 4294967296u64}]
        },
        "runs": [{
            "run": {"job_id": 999, "attempt": 1}, "cpu_millis_used": 1500, "memory_used_bytes": 536870912u64,
            "source": "cgroup-v2",
            "gpus": [{"index": 0, "utilization_percent": busy, "memory_used_bytes": 4294967296u64}]
        }]
    })
}

fn batch(sent_at: i64, samples: Vec<Value>) -> Value {
    json!({ "node": "node-x", "sent_at_us": sent_at, "samples": samples })
}

/// The means of the points of the one series a query answers, leaving out steps without data.
fn means(answer: &Value) -> Vec<f64> {
    let series = answer["series"].as_array().unwrap_or_else(|| panic!("no series in {answer:#}"));
    assert_eq!(series.len(), 1, "{answer:#}");
    series[0]["mean"].as_array().unwrap().iter().filter_map(Value::as_f64).collect()
}

fn query(f: &Ferry, what: &str) -> Value {
    let (code, body) = curl(f, "GET", &format!("/series?{what}"), None);
    assert_eq!(code, 200, "{what}: {body:#}\n{}", f.logs_for_failure());
    body
}

#[test]
fn agent_samples_become_series_and_bad_input_harms_nothing() {
    let mut f = Ferry::start(NodeSpec::default());
    let now = now_us();
    let (code, body) = register_node_x(&f, now);
    assert_eq!(code, 200, "{body:#}");

    // One minute of samples, a second apart, arriving in one batch: GPU 0 at 80% throughout.
    let samples: Vec<Value> = (0..60).map(|i| sample(now - 90_000_000 + i * 1_000_000, 80)).collect();
    let (code, ack) = curl(&f, "POST", "/agent/telemetry", Some(&batch(now, samples)));
    assert_eq!((code, &ack), (200, &json!({"accepted": 60, "too_old": 0})), "{}", f.logs_for_failure());

    let window = format!("start={}&end={}", rfc3339(now - 300_000_000), rfc3339(now));
    let gpu = query(&f, &format!("metric=gpu_utilization&by=gpu&id=node-x/0&{window}&step=10s"));
    assert_eq!(gpu["tier"], "raw");
    assert_eq!(gpu["unit"], "percent");
    let values = means(&gpu);
    assert!(values.len() >= 6 && values.iter().all(|v| *v == 80.0), "{gpu:#}");
    // GPU 1 was never measured: it has no series at all, not a series of zeros.
    let none = query(&f, "metric=gpu_utilization&by=gpu&id=node-x/1&start=5m");
    assert_eq!(none["series"], json!([]), "{none:#}");
    // Job 999 does not run on node-x (nor anywhere): a node reports on its own runs alone, so that sample is dropped.
    let job = query(&f, "metric=cpu_used&by=job&id=999&start=5m&step=1m");
    assert_eq!(job["series"], json!([]), "{job:#}");
    let node = query(&f, "metric=gpu_used&by=node&id=node-x&start=5m&step=1h");
    assert!(means(&node).iter().all(|v| (v - 0.8).abs() < 1e-9), "{node:#}");

    // Bad batches are refused whole, with the reason, and what is stored stays as it was.
    let mut bad = sample(now - 10_000_000, 80);
    bad["runs"][0]["gpus"][0]["utilization_percent"] = json!(250);
    let (code, body) = curl(&f, "POST", "/agent/telemetry", Some(&batch(now, vec![sample(now - 20_000_000, 10), bad])));
    assert_eq!(code, 400, "{body:#}");
    assert!(body["message"].as_str().unwrap().contains("sample 1 of the batch: run 999/1's GPU 0"), "{body:#}");
    let skewed = batch(now + 3_600_000_000, vec![sample(now + 3_600_000_000, 10)]);
    let (code, body) = curl(&f, "POST", "/agent/telemetry", Some(&skewed));
    assert_eq!(code, 400, "{body:#}");
    assert!(body["message"].as_str().unwrap().contains("clock"), "{body:#}");
    let (code, body) = curl(&f, "POST", "/agent/telemetry", Some(&json!({"node": "node-x", "samples": "many"})));
    assert_eq!(code, 400, "{body:#}");
    let mut stranger = batch(now, vec![sample(now - 5_000_000, 10)]);
    stranger["node"] = json!("node-unknown");
    let (code, body) = curl(&f, "POST", "/agent/telemetry", Some(&stranger));
    assert_eq!(code, 404, "{body:#}");
    let after = query(&f, &format!("metric=gpu_utilization&by=gpu&id=node-x/0&{window}&step=10s"));
    assert_eq!(after["series"], gpu["series"], "a refused batch changed what was stored");

    // An agent whose clock is an hour off cannot register.
    let (code, body) = register_node_x(&f, now_us() - 3_600_000_000);
    assert_eq!(code, 400, "{body:#}");
    assert!(body["message"].as_str().unwrap().contains("3600 s behind the server's"), "{body:#}");

    // Bad queries say what is wrong.
    for (what, expected) in [
        ("metric=gpu_joy&by=gpu", "there is no metric `gpu_joy`"),
        ("metric=gpu_capacity&by=job", "`gpu_capacity` is not kept by `job`"),
        ("metric=gpu_utilization&by=gpu&start=30d&step=1m", "points per series"),
        ("metric=gpu_utilization&by=gpu&start=yesterday", "`start=yesterday` is neither a time"),
        ("metric=gpu_utilization&by=gpu&start=1h&end=2h", "`start` must come before `end`"),
        ("by=gpu", "the request could not be read"),
    ] {
        let (code, body) = curl(&f, "GET", &format!("/series?{what}"), None);
        assert_eq!(code, 400, "{what}: {body:#}");
        assert!(body["message"].as_str().unwrap_or_default().contains(expected), "{what}: {body:#}");
    }

    // Allocation is recorded from the scheduler every tick: a job holding one GPU of node-a.
    // (node-x has no agent to run it: the job asks for node-a's model.)
    let id = f.submit(&["--gpus", "1", "--gpu-type", "Test GPU", "--", "sleep", "60"]);
    f.wait_state(id, "running");
    let owner = f.job(id)["owner"].as_str().unwrap().to_string();
    let held = |f: &Ferry, what: &str| {
        let answer = query(f, &format!("{what}&start=2m&step=10s"));
        answer["series"][0]["mean"].as_array().and_then(|m| m.iter().rev().find_map(Value::as_f64))
    };
    f.wait_for("a tick to record the job's allocation", |f| {
        held(f, &format!("metric=gpu_allocated&by=job&id={id}")) == Some(1.0)
    });
    f.wait_for("the user's and the GPU's allocation", |f| {
        held(f, &format!("metric=gpu_allocated&by=user&id={owner}")) == Some(1.0)
            && held(f, "metric=gpu_allocated&by=node&id=node-a") == Some(1.0)
    });
    assert_eq!(held(&f, "metric=gpu_capacity&by=node&id=node-a"), Some(2.0));
    let (code, list) = curl(&f, "GET", "/series/metrics", None);
    assert_eq!(code, 200);
    assert!(list["metrics"].as_array().unwrap().iter().any(|m| m["name"] == "gpu_utilization"), "{list:#}");
    assert_eq!(list["tiers"]["1m"], "1m for 90d", "{list:#}");

    // What was stored outlives the server: the store is flushed every 2 seconds.
    std::thread::sleep(std::time::Duration::from_secs(3));
    f.kill_server();
    f.start_server();
    let again = query(&f, &format!("metric=gpu_utilization&by=gpu&id=node-x/0&{window}&step=10s"));
    assert_eq!(again["series"], gpu["series"], "{again:#}");
    f.ok(&["cancel", &id.to_string()]);
}

#[test]
fn usage_reports_allocated_and_measured_hours_per_owner_as_json_and_csv() {
    let f = Ferry::start(NodeSpec::default());
    let id = f.submit(&["--gpus", "1", "--cpus", "0.5", "--", "sleep", "120"]);
    f.wait_state(id, "running");
    let owner = f.job(id)["owner"].as_str().unwrap().to_string();
    let row = |f: &Ferry| {
        let (code, body) = curl(f, "GET", "/usage?by=user&start=1h", None);
        assert_eq!(code, 200, "{body:#}");
        body["rows"].as_array().unwrap().iter().find(|r| r["id"] == owner.as_str()).cloned()
    };
    f.wait_for("a tick to record the owner's allocation", |f| {
        row(f).is_some_and(|r| r["gpu_hours_allocated"].as_f64().is_some_and(|h| h > 0.0))
    });
    let r = row(&f).unwrap();
    // One GPU and half a CPU for a few 10 s steps: the hours are in that proportion.
    let (gpu, cpu) = (r["gpu_hours_allocated"].as_f64().unwrap(), r["cpu_hours_allocated"].as_f64().unwrap());
    assert!((cpu - gpu / 2.0).abs() < 1e-9 && gpu < 0.1, "{r:#}");
    // Each tick stands for 10 s: one GPU held for whole ticks is a whole number of 1/360 hours.
    let ticks = gpu * 360.0;
    assert!((ticks - ticks.round()).abs() < 1e-6 && ticks >= 1.0, "{r:#}");
    // The node's GPUs are declared, not measured: their use is unknown, not 0.
    assert_eq!(r["gpu_hours_used"], Value::Null, "{r:#}");

    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-H", &format!("Authorization: Bearer {}", token.trim())])
        .arg(format!("{}/api/v1/usage?by=user&start=1h&format=csv", f.url()))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("content-type: text/csv"), "{text}");
    assert!(
        text.contains("\r\n\r\nuser,gpu_hours_allocated,gpu_hours_used,cpu_hours_allocated,cpu_hours_used\n"),
        "{text}"
    );
    assert!(text.contains(&format!("\n{owner},")), "{text}");

    for (what, expected) in [
        ("by=galaxy", "`by=galaxy` is not known"),
        ("by=user&format=xml", "`format=xml` is not known"),
        ("by=user&start=soon", "`start=soon` is neither a time"),
    ] {
        let (code, body) = curl(&f, "GET", &format!("/usage?{what}"), None);
        assert_eq!(code, 400, "{what}: {body:#}");
        assert!(body["message"].as_str().unwrap_or_default().contains(expected), "{what}: {body:#}");
    }
    f.ok(&["cancel", &id.to_string()]);
}

#[test]
fn malformed_registrations_are_refused_with_the_reason_and_logged_and_harm_no_node() {
    let f = Ferry::start(NodeSpec::default());
    let good = || {
        json!({
            "name": "node-y", "pool": "lab", "cpu_millis": 8000, "memory_bytes": 1073741824u64, "gpus": [],
            "agent_version": "test", "limits": "none", "runs": [], "now_us": now_us()
        })
    };
    let with = |key: &str, value: Value| {
        let mut node = good();
        node[key] = value;
        node
    };
    let gpu = |index: u32| json!({"index": index, "model": "X", "memory_bytes": 1, "uuid": null, "source": "config"});
    for (body, expected) in [
        (with("name", json!("two words")), "`two words` is not a valid node name"),
        (with("name", json!("")), "is not a valid node name"),
        (with("cpu_millis", json!(0)), "a node must offer some CPU and memory"),
        (with("gpus", json!([gpu(0), gpu(0)])), "two GPUs of the node share one index"),
        (with("now_us", json!(now_us() + 600_000_000)), "s ahead of the server's"),
        (with("cpu_millis", json!("lots")), "the request could not be read"),
        (json!({"name": "node-y"}), "the request could not be read"),
    ] {
        let (code, answer) = curl(&f, "POST", "/agent/register", Some(&body));
        assert_eq!(code, 400, "{body}: {answer:#}");
        assert!(answer["message"].as_str().unwrap_or_default().contains(expected), "{body}: {answer:#}");
    }
    let log = std::fs::read_to_string(f.root.path().join("server.log")).unwrap();
    assert_eq!(log.matches("refused a registration").count(), 5, "{log}");
    assert_eq!(log.matches("refused an unreadable registration").count(), 2, "{log}");
    // Nothing refused was registered, and the node that was is untouched.
    let nodes = f.json(&["nodes", "--json"]);
    let names: Vec<&str> = nodes["nodes"].as_array().unwrap().iter().filter_map(|n| n["name"].as_str()).collect();
    assert_eq!(names, ["node-a"], "{nodes:#}");
    assert_eq!(nodes["nodes"][0]["state"], "ready");
    let (code, _) = curl(&f, "POST", "/agent/register", Some(&good()));
    assert_eq!(code, 200, "a well-formed registration still works");
}
