//! Prometheus end to end: a real Prometheus (Debian's package) scrapes the server's `/metrics`, and what it stored,
//! asked through its own query API, must agree with what Ferry's API says; every query of the Grafana dashboard in
//! `deploy/grafana/` must run against it.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Ferry, NodeSpec, WAIT};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The dashboard whose every query is run, relative to this crate.
const DASHBOARD: &str = "../../deploy/grafana/ferry-dashboard.json";

/// A Prometheus server in a temporary folder, killed when dropped so a failing test leaves none behind.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second, and waits until it is ready.
    fn start(target: &str) -> Prometheus {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run ./scripts/test, which installs Prometheus (apt-get install prometheus)"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let yaml = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: ferry\n    \
             static_configs: [{{targets: ['{target}']}}]\n"
        );
        std::fs::write(&config, yaml).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let prometheus = Prometheus { child, port, dir };
        prometheus.eventually("Prometheus to be ready", || {
            let out = Command::new("curl").args(["-sf", &prometheus.url("/-/ready")]).output().unwrap();
            out.status.success().then_some(())
        });
        prometheus
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Runs an instant query; returns the whole answer (`status`, `data`).
    fn query(&self, promql: &str) -> Value {
        let out = Command::new("curl")
            .args(["-s", "-G", &self.url("/api/v1/query"), "--data-urlencode"])
            .arg(format!("query={promql}"))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The series an instant query returns, once it returns any.
    fn series(&self, promql: &str) -> Vec<Value> {
        self.eventually(&format!("Prometheus to have data for `{promql}`"), || {
            let result = self.query(promql)["data"]["result"].as_array().cloned().unwrap_or_default();
            (!result.is_empty()).then_some(result)
        })
    }

    /// The one value of a query that returns one series, once it equals `expected`.
    fn value_becomes(&self, promql: &str, expected: f64) {
        self.eventually(&format!("`{promql}` to be {expected}"), || {
            let result = self.query(promql)["data"]["result"].as_array().cloned().unwrap_or_default();
            let value = result.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok());
            (result.len() == 1 && value == Some(expected)).then_some(())
        })
    }

    fn eventually<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(value) = check() {
                return value;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let targets = Command::new("curl").args(["-s", &self.url("/api/v1/targets")]).output().unwrap();
        panic!(
            "timed out waiting for {what}\n--- targets\n{}\n--- prometheus.log\n{log}",
            String::from_utf8_lossy(&targets.stdout)
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `expr` in the dashboard, wherever it sits.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

#[test]
fn prometheus_scrapes_what_the_api_says_and_every_dashboard_query_runs() {
    let f = Ferry::start(NodeSpec::default());
    let done = f.submit(&["--cpus", "0.1", "--", "true"]);
    f.wait_state(done, "succeeded");
    let id = f.submit(&["--gpus", "1", "--cpus", "0.5", "--", "sleep", "300"]);
    let job = f.wait_state(id, "running");
    // A second job waits behind it: it needs both GPUs.
    let waiting = f.submit(&["--gpus", "2", "--cpus", "0.5", "--", "sleep", "300"]);
    f.wait_state(waiting, "queued");
    let nodes = f.json(&["nodes", "--json"]);
    let node = &nodes["nodes"][0];
    let name = node["name"].as_str().unwrap();
    assert_eq!((node["gpus"].as_array().unwrap().len(), node["allocated_gpus"].as_u64()), (2, Some(1)), "{nodes}");

    let target = f.url().trim_start_matches("http://").to_string();
    let prom = Prometheus::start(&target);

    // The running job, with its id, owner and node as labels, holding one GPU.
    let series = prom.series(&format!("ferry_job_allocated_gpus{{job_id=\"{id}\"}}"));
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = &series[0]["metric"];
    assert_eq!(labels["user"], job["owner"], "{labels}");
    assert_eq!(labels["node"], job["node"], "{labels}");
    assert_eq!(series[0]["value"][1], "1", "{series:?}");

    // Capacity and allocation as `ferry nodes` shows them, one job running, one queued and one
    // finished.
    prom.value_becomes(&format!("sum(ferry_node_gpus{{node=\"{name}\"}})"), 2.0);
    prom.value_becomes(&format!("ferry_node_allocated_gpus{{node=\"{name}\"}}"), 1.0);
    prom.value_becomes(&format!("ferry_node_ready{{node=\"{name}\"}}"), 1.0);
    prom.value_becomes("ferry_jobs{state=\"running\"}", 1.0);
    prom.value_becomes("ferry_jobs{state=\"queued\"}", 1.0);
    prom.value_becomes("sum(ferry_queue_jobs)", 1.0);
    // The queued job fits the local pool, so it waits there; the running job holds exactly its GPU.
    prom.value_becomes("ferry_pool_queue_jobs{pool=\"local\"}", 1.0);
    prom.value_becomes("ferry_pool_gpus{pool=\"local\"}", 2.0);
    prom.value_becomes("ferry_pool_allocated_gpus{pool=\"local\"}", 1.0);
    let held = job["gpu_ids"][0].as_u64().unwrap();
    prom.value_becomes(&format!("ferry_gpu_allocated{{node=\"{name}\",gpu=\"{held}\"}}"), 1.0);
    prom.value_becomes(&format!("sum(ferry_gpu_allocated{{node=\"{name}\"}})"), 1.0);
    prom.value_becomes("ferry_jobs_finished_total{state=\"succeeded\"}", 1.0);
    let cpu = node["cpu_millis"].as_u64().unwrap() as f64;
    prom.value_becomes(&format!("ferry_node_cpu_millis{{node=\"{name}\"}}"), cpu);
    prom.value_becomes(&format!("ferry_node_allocated_cpu_millis{{node=\"{name}\"}}"), 500.0);
    let age = prom.series(&format!("ferry_node_heartbeat_age_seconds{{node=\"{name}\"}}"));
    let age: f64 = age[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(age < 30.0, "the agent reports every second, yet its heartbeat is {age} s old");
    // The test's GPUs are declared, not measured: no utilisation may be made up for them.
    assert_eq!(prom.query("ferry_gpu_utilization_percent")["data"]["result"], serde_json::json!([]));

    // Every query of the dashboard runs; all but those over measured GPU use (none here) return data.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD)).unwrap())
            .unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "the dashboard has its queries: {exprs:?}");
    for expr in exprs {
        let answer = prom.query(&expr);
        assert_eq!(answer["status"], "success", "`{expr}`: {answer}");
        if !expr.contains("ferry_gpu_utilization_percent") {
            prom.series(&expr);
        }
    }
}
