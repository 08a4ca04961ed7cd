//! The Kubernetes engine against a fake API server on loopback: no real API server can run where Ferry is built (no
//! container runtime for a kubelet, no kind or minikube), so the fake answers the real paths with bodies in the real
//! format (`tests/fixtures/kubernetes/`, written from the Kubernetes API reference, not captured from a live cluster)
//! and records every request, so that the tests check what the engine SENT as well as how it reads the answers.
//!
//! The fake keeps the created objects (namespaces, Jobs, Services) like the API server does, answers 409
//! `AlreadyExists` for a second Job of the same name, 404 `NotFound` for a missing one, 422 `Invalid` for an
//! environment variable name with `=` (the API server's own validation of the pod template), and serves the Job
//! status, pod list and pod log the test sets for each run. With its stand-in kubelet on, it also runs each Job's
//! command as a local process, which lets the conformance suite run end to end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ferry_api::agent::RunEnd;
use ferry_backends::conformance;
use ferry_backends::engine::{Engine, EngineError, EngineJob, NativeState};
use ferry_backends::kubernetes;
use serde_json::{json, Value};

/// One request the engine sent.
#[derive(Clone, Debug)]
struct Sent {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    body: Value,
}

#[derive(Default)]
struct State {
    sent: Vec<Sent>,
    namespaces: HashSet<String>,
    /// (namespace, name) → the Job as stored.
    jobs: BTreeMap<(String, String), Value>,
    services: BTreeMap<(String, String), Value>,
    /// (namespace, name) → the Secret as stored.
    secrets: BTreeMap<(String, String), Value>,
    /// (namespace, Secret name) → a Job whose pod waits for that Secret (the real kubelet retries until it exists).
    waiting: HashMap<(String, String), (String, Value)>,
    /// Job name → the `status` the API server reports for it.
    status: HashMap<String, Value>,
    /// Job name → the pods of the Job (a PodList).
    pods: HashMap<String, Value>,
    /// Pod name → its log.
    logs: HashMap<String, Vec<u8>>,
    /// The answer to the next Job creation, instead of creating it.
    next_create: Option<(u16, Value)>,
    /// Whether created Jobs run, as a kubelet would run them: see [`kubelet`].
    kubelet: bool,
    /// Job name → what stops its process (a deleted Job's pods are killed).
    kill: HashMap<String, tokio::sync::oneshot::Sender<()>>,
}

type Shared = Arc<Mutex<State>>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes")
}

/// A fixture with `$NAME`, `$NAMESPACE` and `$POD` replaced (as JSON strings, so that any name stays valid JSON).
fn fixture(file: &str, vars: &[(&str, &str)]) -> Value {
    let mut text = std::fs::read_to_string(fixtures().join(file)).unwrap_or_else(|e| panic!("fixture {file}: {e}"));
    for (key, value) in vars {
        let escaped = serde_json::to_string(value).expect("a string serialises");
        text = text.replace(key, &escaped[1..escaped.len() - 1]);
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("fixture {file} is not JSON: {e}"))
}

fn status(code: u16, body: Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [("content-type", "application/json")], body.to_string()).into_response()
}

fn not_found(kind: &str, group: &str, name: &str) -> Response {
    let resource = if group.is_empty() { kind.to_string() } else { format!("{kind}.{group}") };
    status(
        404,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{resource} \"{name}\" not found"), "reason": "NotFound",
               "details": {"name": name, "group": group, "kind": kind}, "code": 404}),
    )
}

/// `a=b,c=d` label selectors, as the API server matches them (equality only: all the engine sends).
fn selects(selector: Option<&String>, labels: &Value) -> bool {
    selector.is_none_or(|s| {
        s.split(',').filter(|t| !t.is_empty()).all(|term| match term.split_once('=') {
            Some((k, v)) => labels.get(k).and_then(Value::as_str) == Some(v),
            None => false,
        })
    })
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"kind": kind, "apiVersion": if kind == "JobList" { "batch/v1" } else { "v1" },
           "metadata": {"resourceVersion": "48300"}, "items": items})
}

/// The name the pod fixtures give a Job's pod.
fn pod_name(job: &str) -> String {
    format!("{job}-x7k2p")
}

/// A local stand-in for a kubelet, for the conformance suite: runs the Job's container command as a local process
/// (no image, no isolation: the argument vector, environment and working directory exactly as the manifest gives them),
/// collects its output as the pod log, and reports the Job and its pod from the fixtures as the real controller and
/// kubelet would: running, then succeeded or failed with the process's exit code (128 and `StartError` when it cannot
/// start, as containerd reports it). Deleting the Job kills the process.
fn kubelet(state: Shared, st: &mut State, namespace: &str, name: &str, container: &Value) {
    let vars = [("$NAME", name), ("$NAMESPACE", namespace)];
    let argv: Vec<String> =
        container["command"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
    let mut command = tokio::process::Command::new(argv.first().map_or("", String::as_str));
    command.args(argv.iter().skip(1)).env_clear().kill_on_drop(true);
    command.env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for var in container["env"].as_array().into_iter().flatten() {
        if let (Some(k), Some(v)) = (var["name"].as_str(), var["value"].as_str()) {
            command.env(k, v);
        }
        let reference = &var["valueFrom"]["secretKeyRef"];
        if let (Some(k), Some(secret), Some(key)) =
            (var["name"].as_str(), reference["name"].as_str(), reference["key"].as_str())
        {
            let Some(stored) = st.secrets.get(&(namespace.to_string(), secret.to_string())) else {
                // CreateContainerConfigError: the kubelet tries again once the Secret exists.
                st.waiting.insert((namespace.to_string(), secret.to_string()), (name.to_string(), container.clone()));
                return;
            };
            let bytes: k8s_openapi::ByteString =
                serde_json::from_value(stored["data"][key].clone()).expect("Secret data is base64");
            command.env(k, String::from_utf8(bytes.0).expect("the test's secrets are UTF-8"));
        }
    }
    if let Some(dir) = container["workingDir"].as_str() {
        command.current_dir(dir);
    }
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let pod = pod_name(name);
    st.logs.insert(pod.clone(), Vec::new());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            st.status.insert(name.to_string(), fixture("job-status-failed.json", &vars));
            let mut pods = fixture("pods-start-error.json", &vars);
            pods["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = json!(e.to_string());
            st.pods.insert(name.to_string(), pods);
            return;
        }
    };
    st.status.insert(name.to_string(), fixture("job-status-running.json", &vars));
    st.pods.insert(name.to_string(), fixture("pods-running.json", &vars));
    let (kill, killed) = tokio::sync::oneshot::channel();
    st.kill.insert(name.to_string(), kill);
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        let (state, pod) = (state.clone(), pod.clone());
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                st.logs.entry(pod.clone()).or_default().extend_from_slice(&buf[..n]);
            }
        })
    })
    .collect();
    let (namespace, name) = (namespace.to_string(), name.to_string());
    tokio::spawn(async move {
        let code = tokio::select! {
            status = child.wait() => status.ok().and_then(|s| s.code()).unwrap_or(137),
            _ = killed => {
                let _ = child.kill().await;
                return;
            }
        };
        for reader in readers {
            let _ = reader.await;
        }
        let vars = [("$NAME", name.as_str()), ("$NAMESPACE", namespace.as_str())];
        let (job_status, mut pods) = if code == 0 {
            (fixture("job-status-succeeded.json", &vars), fixture("pods-succeeded.json", &vars))
        } else {
            (fixture("job-status-failed.json", &vars), fixture("pods-failed-exit-3.json", &vars))
        };
        pods["items"][0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] = json!(code);
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.status.insert(name.clone(), job_status);
        st.pods.insert(name, pods);
    });
}

async fn serve(state: Shared, method: Method, uri: Uri, body: Bytes) -> Response {
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri)
                .map(|x| x.0)
                .unwrap_or_else(|e| panic!("bad query {q}: {e}"))
        })
        .unwrap_or_default();
    let body_json: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()))
    };
    let path = uri.path().to_string();
    let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
    let st = &mut *guard;
    st.sent.push(Sent { method: method.clone(), path: path.clone(), query: query.clone(), body: body_json.clone() });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["api", "v1", "namespaces"]) => {
            let name = body_json["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if !st.namespaces.insert(name.clone()) {
                return status(
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": format!("namespaces \"{name}\" already exists"), "reason": "AlreadyExists",
                           "details": {"name": name, "kind": "namespaces"}, "code": 409}),
                );
            }
            let mut ns = body_json;
            ns["apiVersion"] = json!("v1");
            ns["kind"] = json!("Namespace");
            ns["metadata"]["uid"] = json!("5e0c2b7a-1d1e-4c41-8d2a-4a6f0b1c9e77");
            ns["metadata"]["resourceVersion"] = json!("48201");
            ns["metadata"]["creationTimestamp"] = json!("2026-12-03T07:59:57Z");
            ns["spec"] = json!({"finalizers": ["kubernetes"]});
            ns["status"] = json!({"phase": "Active"});
            status(201, ns)
        }
        ("POST", ["apis", "batch", "v1", "namespaces", ns, "jobs"]) => {
            let name = body_json["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let vars = [("$NAME", name.as_str())];
            if let Some((code, answer)) = st.next_create.take() {
                return status(code, answer);
            }
            if !st.namespaces.contains(*ns) {
                return not_found("namespaces", "", ns);
            }
            // The API server validates the pod template's environment (names: printable ASCII without `=`).
            let env = body_json["spec"]["template"]["spec"]["containers"][0]["env"].as_array().cloned();
            let bad = env.into_iter().flatten().enumerate().find_map(|(i, var)| {
                let name = var["name"].as_str().unwrap_or_default().to_string();
                (name.is_empty() || name.contains('=') || !name.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
                    .then_some((i, name))
            });
            if let Some((index, value)) = bad {
                let index = index.to_string();
                let vars = [("$NAME", name.as_str()), ("$INDEX", index.as_str()), ("$VALUE", value.as_str())];
                return status(422, fixture("status-invalid.json", &vars));
            }
            let key = (ns.to_string(), name.clone());
            if st.jobs.contains_key(&key) {
                return status(409, fixture("status-already-exists.json", &vars));
            }
            // What the API server adds: identity, the controller's labels and selector, the defaults, an empty status.
            let uid = "6d4c4b1e-2a41-4b5e-9d1f-0c3a8e6b2f10";
            let mut job = body_json;
            job["apiVersion"] = json!("batch/v1");
            job["kind"] = json!("Job");
            job["metadata"]["uid"] = json!(uid);
            job["metadata"]["resourceVersion"] = json!("48210");
            job["metadata"]["generation"] = json!(1);
            job["metadata"]["creationTimestamp"] = json!("2026-12-03T07:59:58Z");
            let controller_labels = json!({"batch.kubernetes.io/controller-uid": uid,
                "batch.kubernetes.io/job-name": name, "controller-uid": uid, "job-name": name});
            for (k, v) in controller_labels.as_object().into_iter().flatten() {
                job["spec"]["template"]["metadata"]["labels"][k] = v.clone();
            }
            job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
            for (k, v) in
                [("completions", json!(1)), ("parallelism", json!(1)), ("completionMode", json!("NonIndexed"))]
            {
                if job["spec"].get(k).is_none() {
                    job["spec"][k] = v;
                }
            }
            job["spec"]["suspend"] = json!(false);
            job["spec"]["podReplacementPolicy"] = json!("TerminatingOrFailed");
            job["status"] = json!({});
            st.jobs.insert(key, job.clone());
            if st.kubelet {
                let container = job["spec"]["template"]["spec"]["containers"][0].clone();
                kubelet(state.clone(), st, ns, &name, &container);
            }
            status(201, job)
        }
        (m @ ("GET" | "DELETE"), ["apis", "batch", "v1", "namespaces", ns, "jobs", name]) => {
            let key = (ns.to_string(), name.to_string());
            let Some(job) = st.jobs.get(&key).cloned() else {
                return not_found("jobs", "batch", name);
            };
            if m == "DELETE" {
                st.jobs.remove(&key);
                if let Some(kill) = st.kill.remove(*name) {
                    let _ = kill.send(());
                }
                return status(200, fixture("status-deleted.json", &[("$NAME", name)]));
            }
            let mut job = job;
            job["status"] = st.status.get(*name).cloned().unwrap_or_else(|| json!({}));
            status(200, job)
        }
        ("GET", ["apis", "batch", "v1", "jobs"]) => {
            let items = st
                .jobs
                .values()
                .filter(|j| selects(query.get("labelSelector"), &j["metadata"]["labels"]))
                .cloned()
                .collect();
            status(200, list("JobList", items))
        }
        ("POST", ["api", "v1", "namespaces", ns, "services"]) => {
            let name = body_json["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = (ns.to_string(), name.clone());
            if st.services.contains_key(&key) {
                return status(
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": format!("services \"{name}\" already exists"), "reason": "AlreadyExists",
                           "details": {"name": name, "kind": "services"}, "code": 409}),
                );
            }
            let mut service = body_json;
            service["apiVersion"] = json!("v1");
            service["kind"] = json!("Service");
            service["spec"]["clusterIPs"] = json!(["None"]);
            service["spec"]["type"] = json!("ClusterIP");
            service["spec"]["sessionAffinity"] = json!("None");
            service["status"] = json!({"loadBalancer": {}});
            st.services.insert(key, service.clone());
            status(201, service)
        }
        ("POST", ["api", "v1", "namespaces", ns, "secrets"]) => {
            let name = body_json["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let key = (ns.to_string(), name.clone());
            if st.secrets.contains_key(&key) {
                return status(
                    409,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": format!("secrets \"{name}\" already exists"), "reason": "AlreadyExists",
                           "details": {"name": name, "kind": "secrets"}, "code": 409}),
                );
            }
            let mut secret = body_json;
            secret["apiVersion"] = json!("v1");
            secret["kind"] = json!("Secret");
            st.secrets.insert(key.clone(), secret.clone());
            if let Some((job, container)) = st.waiting.remove(&key) {
                kubelet(state.clone(), st, ns, &job, &container);
            }
            status(201, secret)
        }
        ("GET", ["api", "v1", "namespaces", _, "pods"]) => {
            let job = query.get("labelSelector").and_then(|s| s.strip_prefix("job-name=")).unwrap_or_default();
            status(200, st.pods.get(job).cloned().unwrap_or_else(|| list("PodList", vec![])))
        }
        ("GET", ["api", "v1", "pods"]) => status(200, fixture("pods-all-unfinished.json", &[])),
        ("GET", ["api", "v1", "namespaces", _, "pods", pod, "log"]) => match st.logs.get(*pod) {
            Some(log) => {
                let limit = query.get("limitBytes").and_then(|l| l.parse::<usize>().ok()).unwrap_or(usize::MAX);
                let log = log[..limit.min(log.len())].to_vec();
                (StatusCode::OK, [("content-type", "text/plain")], log).into_response()
            }
            None => status(400, fixture("status-container-waiting.json", &[("$POD", pod)])),
        },
        ("GET", ["api", "v1", "nodes"]) => {
            let mut nodes = fixture("nodes.json", &[]);
            let items: Vec<Value> = nodes["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| selects(query.get("labelSelector"), &n["metadata"]["labels"]))
                .cloned()
                .collect();
            nodes["items"] = Value::Array(items);
            status(200, nodes)
        }
        _ => status(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "the server could not find the requested resource", "reason": "NotFound",
                   "details": {}, "code": 404}),
        ),
    }
}

/// The fake API server and a kubeconfig that points at it.
struct Fake {
    state: Shared,
    dir: tempfile::TempDir,
}

impl Fake {
    async fn start() -> Fake {
        let state = Shared::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
        let port = listener.local_addr().expect("the port").port();
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let state = shared.clone();
            async move { serve(state, method, uri, body).await }
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = tempfile::Builder::new().prefix("ferry-k8s-").tempdir().expect("a directory");
        write_kubeconfig(&dir.path().join("kubeconfig"), port);
        Fake { state, dir }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn engine(&self) -> Box<dyn Engine> {
        engine_at(&self.kubeconfig())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn sent(&self) -> Vec<Sent> {
        self.with(|s| s.sent.clone())
    }

    fn sent_to(&self, method: &str, path: &str) -> Vec<Sent> {
        self.sent().into_iter().filter(|s| s.method.as_str() == method && s.path == path).collect()
    }

    /// The run's Job status and pods, from fixtures.
    fn set(&self, name: &str, namespace: &str, job_status: &str, pods: &str) {
        let vars = [("$NAME", name), ("$NAMESPACE", namespace)];
        let (job_status, pods) = (fixture(job_status, &vars), fixture(pods, &vars));
        self.with(|s| {
            s.status.insert(name.to_string(), job_status);
            s.pods.insert(name.to_string(), pods);
        });
    }
}

fn write_kubeconfig(path: &Path, port: u16) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: nobody\ncurrent-context: fake\n\
         users:\n- name: nobody\n  user: {{}}\n"
    );
    std::fs::write(path, text).expect("the kubeconfig can be written");
}

/// The pool's settings as a server's configuration gives them (so that they also go through serde).
fn settings(kubeconfig: &Path) -> Value {
    json!({
        "kubeconfig": kubeconfig,
        "context": "fake",
        "image": "python:3.12-slim",
        "image_pull_secrets": ["regcred"],
        "node_selector": {"pool": "training"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "service_account": "ferry-runner",
        "host_paths": ["/shared"],
    })
}

fn engine_at(kubeconfig: &Path) -> Box<dyn Engine> {
    let config: kubernetes::Config = serde_json::from_value(settings(kubeconfig)).expect("the settings parse");
    kubernetes::connect(config).expect("the engine connects")
}

const NASTY: &[&str] = &[
    "$(touch /tmp/ferry-conformance-pwned)",
    "`touch /tmp/ferry-conformance-pwned`",
    "a; touch /tmp/ferry-conformance-pwned",
    "it's \"quoted\" \\ back",
    "line one\nline two\n#SBATCH --wrap=touch",
    "${HOME} %j %x * ~ | & > <",
];

fn job(name: &str) -> EngineJob {
    EngineJob {
        name: name.into(),
        job_id: 7,
        attempt: 0,
        node: "gpu-node-1".into(),
        user: "alice".into(),
        project: "ml".into(),
        command: vec!["python3".into(), "train.py".into()],
        env: BTreeMap::from([("FERRY_PROBE".to_string(), "plain".to_string())]),
        secrets: Default::default(),
        secrets_fetch: None,
        workdir: "/workspace".into(),
        cpu_millis: 1500,
        memory_bytes: 2 << 30,
        gpus: 0,
        nodes: 1,
        max_runtime_s: Some(600),
        image: None,
        maybe_submitted: false,
    }
}

/// 2026-12-03T08:00:00Z and friends, in µs.
fn at(hh_mm_ss: &str) -> i64 {
    let parts: Vec<i64> = hh_mm_ss.split(':').map(|p| p.parse().expect("a number")).collect();
    // 2026-12-03T00:00:00Z
    (1_796_256_000 + parts[0] * 3600 + parts[1] * 60 + parts[2]) * 1_000_000
}

#[tokio::test]
async fn the_manifest_carries_every_field_intact() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    let mut run = job("ferry-t1-7-0");
    run.command = std::iter::once("python3".to_string()).chain(NASTY.iter().map(|s| s.to_string())).collect();
    for (i, value) in NASTY.iter().enumerate() {
        run.env.insert(format!("FERRY_PROBE_{i}"), value.to_string());
    }
    run.user = NASTY[2].into();
    run.project = NASTY[4].into();
    run.workdir = "/work dir 'q' $(x) \"d\"".into();
    run.gpus = 2;
    let submitted = engine.submit(&run).await.expect("submitted");
    let namespace = kubernetes::namespace_for("ferry-", NASTY[4]);
    assert_eq!(submitted.native_id, format!("{namespace}/ferry-t1-7-0"));
    assert!(namespace.starts_with("ferry-line-one-line-two-sbatch-wrap-touch-"), "{namespace}");

    // The namespace first, labelled as Ferry's, with the project's real name as an annotation.
    let ns = fake.sent_to("POST", "/api/v1/namespaces");
    assert_eq!(ns.len(), 1);
    assert_eq!(ns[0].body["metadata"]["name"], namespace);
    assert_eq!(ns[0].body["metadata"]["labels"]["ferry.io/managed"], "true");
    assert_eq!(ns[0].body["metadata"]["annotations"]["ferry.io/project"], NASTY[4]);

    let created = fake.sent_to("POST", &format!("/apis/batch/v1/namespaces/{namespace}/jobs"));
    assert_eq!(created.len(), 1);
    let job = &created[0].body;
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["name"], "ferry-t1-7-0");
    assert_eq!(
        job["metadata"]["labels"],
        json!({"ferry.io/managed": "true", "ferry.io/job": "7", "ferry.io/attempt": "0"})
    );
    assert_eq!(job["metadata"]["annotations"], json!({"ferry.io/user": NASTY[2], "ferry.io/project": NASTY[4]}));
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["activeDeadlineSeconds"], 600);
    assert_eq!(spec["ttlSecondsAfterFinished"], 3600);
    assert!(spec.get("completionMode").is_none() && spec.get("completions").is_none(), "{spec}");
    let pod = &spec["template"]["spec"];
    assert_eq!(spec["template"]["metadata"]["labels"]["ferry.io/managed"], "true");
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["enableServiceLinks"], false);
    assert_eq!(pod["serviceAccountName"], "ferry-runner");
    assert_eq!(pod["nodeSelector"], json!({"pool": "training"}));
    assert_eq!(pod["tolerations"], json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]));
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    assert_eq!(pod["volumes"], json!([{"name": "host-0", "hostPath": {"path": "/shared", "type": "Directory"}}]));
    assert_eq!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-node-1"]}]}])
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["image"], "python:3.12-slim");
    // The argument vector, byte for byte; no shell and no `args`.
    let mut want = vec!["python3"];
    want.extend(NASTY);
    assert_eq!(c["command"], json!(want));
    assert!(c.get("args").is_none());
    assert_eq!(c["workingDir"], "/work dir 'q' $(x) \"d\"");
    assert_eq!(c["volumeMounts"], json!([{"name": "host-0", "mountPath": "/shared"}]));
    let mut env_want = vec![json!({"name": "FERRY_PROBE", "value": "plain"})];
    env_want.extend(NASTY.iter().enumerate().map(|(i, v)| json!({"name": format!("FERRY_PROBE_{i}"), "value": v})));
    assert_eq!(c["env"], json!(env_want));
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "1500m", "memory": "2147483648"},
               "limits": {"cpu": "1500m", "memory": "2147483648", "nvidia.com/gpu": "2"}})
    );
    // `ferry show` gets exactly what was sent.
    let shown: Value = serde_json::from_str(&submitted.native_spec).expect("the native form is JSON");
    assert_eq!(&shown, job);

    // A second run of the same project: the namespace is known, not created again.
    engine.submit(&self::job("ferry-t1-8-0")).await.expect("another project's run");
    engine
        .submit(&{
            let mut again = self::job("ferry-t1-9-0");
            again.project = NASTY[4].into();
            again
        })
        .await
        .expect("same project");
    assert_eq!(fake.sent_to("POST", "/api/v1/namespaces").len(), 2, "one creation per namespace");
}

#[tokio::test]
async fn states_follow_the_job_and_its_pods() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    let submitted = engine.submit(&job("ferry-t2-1-0")).await.expect("submitted");
    let (ns, name) = submitted.native_id.split_once('/').expect("ns/name");
    assert_eq!(ns, "ferry-ml");
    let ids = [submitted.native_id.clone()];

    // Just created: no pods yet.
    assert_eq!(engine.states(&ids).await.expect("states"), [NativeState::Pending { reason: None }]);

    fake.set(name, ns, "job-status-pending.json", "pods-unschedulable.json");
    match &engine.states(&ids).await.expect("states")[0] {
        NativeState::Pending { reason: Some(r) } => {
            assert!(r.starts_with("Unschedulable: 0/3 nodes are available"), "{r}")
        }
        other => panic!("unschedulable: {other:?}"),
    }
    fake.set(name, ns, "job-status-pending.json", "pods-creating.json");
    assert_eq!(
        engine.states(&ids).await.expect("states"),
        [NativeState::Pending { reason: Some("ContainerCreating".into()) }]
    );
    fake.set(name, ns, "job-status-running.json", "pods-running.json");
    assert_eq!(engine.states(&ids).await.expect("states"), [NativeState::Running { started_at_us: at("08:00:00") }]);
    fake.set(name, ns, "job-status-succeeded.json", "pods-succeeded.json");
    assert_eq!(
        engine.states(&ids).await.expect("states"),
        [NativeState::Finished {
            end: RunEnd::Exited,
            exit_code: Some(0),
            signal: None,
            started_at_us: Some(at("08:00:00")),
            finished_at_us: at("08:00:43"),
            message: None,
        }]
    );

    // The pods were asked for by the controller's label, in the run's namespace.
    let pods = fake.sent_to("GET", "/api/v1/namespaces/ferry-ml/pods");
    assert!(pods.iter().all(|p| p.query.get("labelSelector").map(String::as_str) == Some("job-name=ferry-t2-1-0")));

    // Several ids, one answer each, in order; garbage and unknown ids are Unknown.
    let many = [ids[0].clone(), "ferry-ml/ferry-t2-404-0".into(), "no-slash".into()];
    let states = engine.states(&many).await.expect("states");
    assert_eq!(states.len(), 3);
    assert!(matches!(states[0], NativeState::Finished { exit_code: Some(0), .. }));
    assert_eq!(states[1..], [NativeState::Unknown, NativeState::Unknown]);
}

#[tokio::test]
async fn failures_carry_the_exit_code_and_the_reason() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    let cases: [(&str, &str, &str); 5] = [
        ("ferry-t3-1-0", "job-status-failed.json", "pods-failed-exit-3.json"),
        ("ferry-t3-2-0", "job-status-failed.json", "pods-oomkilled.json"),
        ("ferry-t3-3-0", "job-status-failed.json", "pods-start-error.json"),
        ("ferry-t3-4-0", "job-status-deadline.json", "pods-running.json"),
        ("ferry-t3-5-0", "job-status-failed.json", "pods-evicted.json"),
    ];
    let mut states = Vec::new();
    for (name, job_status, pods) in cases {
        let submitted = engine.submit(&job(name)).await.expect("submitted");
        fake.set(name, "ferry-ml", job_status, pods);
        states.push(engine.states(&[submitted.native_id]).await.expect("states").remove(0));
    }
    assert_eq!(
        states[0],
        NativeState::Finished {
            end: RunEnd::Exited,
            exit_code: Some(3),
            signal: None,
            started_at_us: Some(at("08:00:00")),
            finished_at_us: at("08:00:29"),
            message: None,
        }
    );
    match &states[1] {
        NativeState::Finished { end: RunEnd::Exited, exit_code: Some(137), message: Some(m), .. } => {
            assert_eq!(m, "OOMKilled")
        }
        other => panic!("oom: {other:?}"),
    }
    match &states[2] {
        NativeState::Finished { end: RunEnd::FailedToStart, exit_code: Some(128), message: Some(m), .. } => {
            assert!(m.starts_with("StartError: failed to create containerd task"), "{m}")
        }
        other => panic!("start error: {other:?}"),
    }
    match &states[3] {
        NativeState::Finished { end: RunEnd::TimedOut, finished_at_us, message: Some(m), .. } => {
            assert_eq!(*finished_at_us, at("08:10:01"));
            assert_eq!(m, "Job was active longer than specified deadline");
        }
        other => panic!("deadline: {other:?}"),
    }
    // Evicted: a plain failure (so Ferry may retry it) in the kubelet's words, at the Job's end.
    match &states[4] {
        NativeState::Finished {
            end: RunEnd::Exited, exit_code: Some(137), finished_at_us, message: Some(m), ..
        } => {
            assert!(m.starts_with("Evicted: The node was low on resource: memory."), "{m}");
            assert_eq!(*finished_at_us, at("08:00:31"));
        }
        other => panic!("evicted: {other:?}"),
    }
}

#[tokio::test]
async fn cancel_deletes_the_job_and_it_ends_stopped() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    let submitted = engine.submit(&job("ferry-t4-1-0")).await.expect("submitted");
    let ids = [submitted.native_id.clone()];
    fake.set("ferry-t4-1-0", "ferry-ml", "job-status-running.json", "pods-running.json");
    assert!(matches!(engine.states(&ids).await.expect("states")[0], NativeState::Running { .. }));

    engine.cancel(&ids[0]).await.expect("cancelled");
    let deleted = fake.sent_to("DELETE", "/apis/batch/v1/namespaces/ferry-ml/jobs/ferry-t4-1-0");
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].body["propagationPolicy"], "Background", "the pods go with the Job");
    match &engine.states(&ids).await.expect("states")[0] {
        NativeState::Finished { end: RunEnd::Stopped, exit_code: None, .. } => {}
        other => panic!("a cancelled run: {other:?}"),
    }
    // Cancelling again (the Job is gone: 404) is no error.
    engine.cancel(&ids[0]).await.expect("cancelled twice");

    // A run that ended by itself keeps its end: nothing is deleted.
    let done = engine.submit(&job("ferry-t4-2-0")).await.expect("submitted");
    fake.set("ferry-t4-2-0", "ferry-ml", "job-status-succeeded.json", "pods-succeeded.json");
    engine.cancel(&done.native_id).await.expect("cancelling a finished run");
    assert!(fake.sent_to("DELETE", "/apis/batch/v1/namespaces/ferry-ml/jobs/ferry-t4-2-0").is_empty());
    let state = engine.states(&[done.native_id]).await.expect("states").remove(0);
    assert!(matches!(state, NativeState::Finished { end: RunEnd::Exited, exit_code: Some(0), .. }), "{state:?}");

    // Another engine (a restarted server) does not remember the cancel: the Job is simply gone.
    assert_eq!(fake.engine().states(&ids).await.expect("states"), [NativeState::Unknown]);
}

#[tokio::test]
async fn resubmission_returns_the_first_job_and_find_sees_it() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    let first = engine.submit(&job("ferry-t5-1-0")).await.expect("submitted");
    // A restarted server: a fresh engine, which does not know the namespace exists either.
    let again = fake.engine().submit(&job("ferry-t5-1-0")).await.expect("submitted again");
    assert_eq!(first.native_id, again.native_id);
    assert_eq!(fake.with(|s| s.jobs.len()), 1, "one Job, not two");
    let posts = fake.sent_to("POST", "/apis/batch/v1/namespaces/ferry-ml/jobs");
    assert_eq!(posts.len(), 2, "the second creation was answered 409");
    assert_eq!(fake.sent_to("GET", "/apis/batch/v1/namespaces/ferry-ml/jobs/ferry-t5-1-0").len(), 1);

    engine.submit(&job("ferry-other-1-0")).await.expect("another installation's run");
    let found = engine.find("ferry-t5-").await.expect("found");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].name, "ferry-t5-1-0");
    assert_eq!(found[0].native_id, first.native_id);
    let listed = fake.sent_to("GET", "/apis/batch/v1/jobs");
    assert_eq!(listed[0].query.get("labelSelector").map(String::as_str), Some("ferry.io/managed=true"));
}

#[tokio::test]
async fn a_gang_is_an_indexed_job_with_a_headless_service() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    let mut run = job("ferry-t6-1-0");
    run.nodes = 2;
    run.gpus = 8;
    run.env.insert("MASTER_PORT".into(), "1234".into());
    let submitted = engine.submit(&run).await.expect("submitted");
    let job = &fake.sent_to("POST", "/apis/batch/v1/namespaces/ferry-ml/jobs")[0].body;
    let spec = &job["spec"];
    assert_eq!(
        (&spec["completionMode"], &spec["completions"], &spec["parallelism"]),
        (&json!("Indexed"), &json!(2), &json!(2))
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["subdomain"], "ferry-t6-1-0");
    assert!(pod.get("affinity").is_none(), "a gang is not pinned to one node");
    let env = pod["containers"][0]["env"].as_array().expect("env");
    let var = |name: &str| env.iter().find(|v| v["name"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(var("MASTER_ADDR")["value"], "ferry-t6-1-0-0.ferry-t6-1-0");
    assert_eq!(var("MASTER_PORT")["value"], "1234", "the run's own variable wins");
    assert_eq!(env.iter().filter(|v| v["name"] == "MASTER_PORT").count(), 1);
    assert_eq!(var("NNODES")["value"], "2");
    assert_eq!(var("WORLD_SIZE")["value"], "2");
    let rank = json!({"fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}});
    assert_eq!(var("NODE_RANK")["valueFrom"], rank);
    assert_eq!(var("RANK")["valueFrom"], rank);
    assert_eq!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "8");

    let services = fake.sent_to("POST", "/api/v1/namespaces/ferry-ml/services");
    assert_eq!(services.len(), 1);
    let service = &services[0].body;
    assert_eq!(service["metadata"]["name"], "ferry-t6-1-0");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["selector"], json!({"job-name": "ferry-t6-1-0"}));
    assert_eq!(service["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(
        service["metadata"]["ownerReferences"],
        json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "ferry-t6-1-0",
                "uid": "6d4c4b1e-2a41-4b5e-9d1f-0c3a8e6b2f10"}]),
        "the Service goes when the Job goes"
    );
    assert!(submitted.native_spec.contains("\"clusterIP\": \"None\""), "ferry show includes the Service");

    // Output is rank 0's log, though rank 1 is listed first.
    fake.set("ferry-t6-1-0", "ferry-ml", "job-status-running.json", "pods-gang-running.json");
    fake.with(|s| {
        s.logs.insert("ferry-t6-1-0-0-m3n5b".into(), b"rank zero\n".to_vec());
        s.logs.insert("ferry-t6-1-0-1-q8w4z".into(), b"rank one\n".to_vec());
    });
    assert_eq!(engine.output(&submitted.native_id, 0, 1024).await.expect("output"), b"rank zero\n");

    // Resubmitting the gang finds the Job and the Service both there.
    let again = fake.engine().submit(&run).await.expect("resubmitted");
    assert_eq!(again.native_id, submitted.native_id);
    assert_eq!(fake.with(|s| s.services.len()), 1);
}

#[tokio::test]
async fn output_is_the_pod_log_sliced_by_offset() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    let submitted = engine.submit(&job("ferry-t7-1-0")).await.expect("submitted");
    let id = submitted.native_id.as_str();
    // No pod yet: nothing, no error.
    assert!(engine.output(id, 0, 100).await.expect("output").is_empty());
    // A pod whose container has not started: the API's 400 is "nothing yet".
    fake.set("ferry-t7-1-0", "ferry-ml", "job-status-pending.json", "pods-creating.json");
    assert!(engine.output(id, 0, 100).await.expect("output").is_empty());

    let log: Vec<u8> = b"line one\nline two \xff\xfe not utf-8\n$(x) 'q'\n".to_vec();
    fake.with(|s| s.logs.insert("ferry-t7-1-0-x7k2p".into(), log.clone()));
    let mut read = Vec::new();
    loop {
        let chunk = engine.output(id, read.len() as u64, 7).await.expect("output");
        assert!(chunk.len() <= 7);
        if chunk.is_empty() {
            break;
        }
        read.extend(chunk);
    }
    assert_eq!(read, log, "the bytes arrive whole, in order, not made UTF-8");
    assert_eq!(engine.output(id, 9, 8).await.expect("output"), b"line two");
    assert!(engine.output(id, 10_000, 8).await.expect("output").is_empty());
    // Never more than the offset and the maximum is asked for.
    let asked: Vec<String> = fake
        .sent_to("GET", "/api/v1/namespaces/ferry-ml/pods/ferry-t7-1-0-x7k2p/log")
        .iter()
        .filter_map(|s| s.query.get("limitBytes").cloned())
        .collect();
    assert!(asked.contains(&"7".to_string()) && asked.contains(&"17".to_string()), "{asked:?}");
}

#[tokio::test]
async fn nodes_are_mapped_from_allocatable_conditions_and_pods() {
    let fake = Fake::start().await;
    let nodes = fake.engine().nodes().await.expect("nodes");
    // The node selector (pool=training) leaves the control plane out.
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["gpu-node-1", "gpu-node-2", "cpu-node-3"]);
    let listed = fake.sent_to("GET", "/api/v1/nodes");
    assert_eq!(listed[0].query.get("labelSelector").map(String::as_str), Some("pool=training"));
    let pods = fake.sent_to("GET", "/api/v1/pods");
    assert_eq!(
        pods[0].query.get("fieldSelector").map(String::as_str),
        Some("status.phase!=Succeeded,status.phase!=Failed")
    );

    let gpu = &nodes[0];
    assert_eq!((gpu.cpu_millis, gpu.memory_bytes), (31850, 262770456 * 1024));
    assert!(gpu.up, "its GPU taint is tolerated: {gpu:?}");
    assert_eq!(gpu.state, "Ready");
    assert_eq!(gpu.gpus.len(), 8);
    assert_eq!(gpu.gpus[7].index, 7);
    assert_eq!(gpu.gpus[0].model, "NVIDIA-H100-80GB-HBM3");
    assert_eq!(gpu.gpus[0].memory_bytes, 81559 << 20);
    assert_eq!(gpu.gpus[0].source, "kubernetes");
    // 8 CPUs + max(2 + 0.5 from two containers, 4 from the init container); requests from limits where missing.
    assert_eq!(gpu.allocated_cpu_millis, Some(12000));
    assert_eq!(gpu.allocated_memory_bytes, Some((64 << 30) + (1536 << 20)));
    assert_eq!(gpu.allocated_gpus, Some(5));

    let cordoned = &nodes[1];
    assert!(!cordoned.up);
    assert!(cordoned.state.contains("SchedulingDisabled"), "{}", cordoned.state);
    assert_eq!(cordoned.allocated_cpu_millis, Some(0));
    let not_ready = &nodes[2];
    assert!(!not_ready.up && not_ready.state == "NotReady" && not_ready.gpus.is_empty(), "{not_ready:?}");
    assert_eq!(not_ready.cpu_millis, 15890);

    // Without the node selector and the toleration, the control plane shows, down (its taint), and so does the GPU
    // node (its taint is not tolerated).
    let mut plain = settings(&fake.kubeconfig());
    plain.as_object_mut().expect("an object").retain(|k, _| k == "kubeconfig");
    let engine = kubernetes::connect(serde_json::from_value(plain).expect("parses")).expect("connects");
    let nodes = engine.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 4);
    assert!(!nodes[0].up && nodes[0].state.contains("Tainted") && nodes[0].allocated_cpu_millis == Some(100));
    assert!(!nodes[1].up, "an untolerated GPU taint: {:?}", nodes[1]);
}

#[tokio::test]
async fn the_api_servers_verdicts_and_troubles() {
    let fake = Fake::start().await;
    let engine = fake.engine();
    // 422 Invalid: the API server's validation is final.
    let mut bad = job("ferry-t8-1-0");
    bad.env.insert("BAD=NAME".into(), "x".into());
    match engine.submit(&bad).await {
        Err(EngineError::Rejected { detail, .. }) => assert!(
            detail.starts_with("creating the job: Invalid (422): Job.batch \"ferry-t8-1-0\" is invalid: ")
                && detail.contains("env[0].name: Invalid value: \"BAD=NAME\""),
            "{detail}"
        ),
        other => panic!("422: {other:?}"),
    }
    // 403 with an exceeded quota: final too.
    let quota = fixture("status-forbidden-quota.json", &[("$NAME", "ferry-t8-2-0")]);
    fake.with(|s| s.next_create = Some((403, quota)));
    match engine.submit(&job("ferry-t8-2-0")).await {
        Err(EngineError::Rejected { detail, .. }) => assert!(detail.contains("exceeded quota: gpu-quota"), "{detail}"),
        other => panic!("403: {other:?}"),
    }
    // 500: try again later.
    let internal = fixture("status-internal-error.json", &[]);
    fake.with(|s| s.next_create = Some((500, internal)));
    match engine.submit(&job("ferry-t8-3-0")).await {
        Err(e @ EngineError::Unavailable { .. }) => assert!(e.to_string().contains("InternalError"), "{e}"),
        other => panic!("500: {other:?}"),
    }
    // No image anywhere: Ferry cannot express the run.
    let mut settings = settings(&fake.kubeconfig());
    settings.as_object_mut().expect("an object").remove("image");
    let imageless = kubernetes::connect(serde_json::from_value(settings).expect("parses")).expect("connects");
    assert!(matches!(imageless.submit(&job("ferry-t8-4-0")).await, Err(EngineError::Unsupported(_))));
    let mut with_image = job("ferry-t8-5-0");
    with_image.image = Some("ghcr.io/acme/train:1".into());
    imageless.submit(&with_image).await.expect("a run that brings its image");
}

#[tokio::test]
async fn an_unreachable_api_server_is_an_outage() {
    let port = StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    let dir = tempfile::Builder::new().prefix("ferry-k8s-down-").tempdir().expect("a directory");
    let path = dir.path().join("kubeconfig");
    write_kubeconfig(&path, port);
    let engine = engine_at(&path);
    let asked = Instant::now();
    for result in [
        engine.nodes().await.map(|_| ()),
        engine.submit(&job("ferry-t9-1-0")).await.map(|_| ()),
        engine.states(&["ferry-ml/ferry-t9-1-0".into()]).await.map(|_| ()),
        engine.find("ferry-t9-").await.map(|_| ()),
        engine.output("ferry-ml/ferry-t9-1-0", 0, 10).await.map(|_| ()),
        engine.cancel("ferry-ml/ferry-t9-1-0").await,
    ] {
        match result {
            Err(e) => {
                assert!(e.is_transient(), "an unreachable server is an outage: {e}");
                assert!(e.to_string().contains(&format!("http://127.0.0.1:{port}/")), "names the server: {e}");
            }
            Ok(()) => panic!("nobody listens, yet it answered"),
        }
    }
    assert!(asked.elapsed() < Duration::from_secs(20), "noticing took {:?}", asked.elapsed());
}

#[tokio::test]
async fn settings_are_checked_at_connection_without_contacting_the_cluster() {
    let fake = Fake::start().await;
    let good = settings(&fake.kubeconfig());
    let capabilities = ferry_backends::registry::check("kubernetes", good.clone()).expect("the registry builds it");
    assert!(capabilities.images && capabilities.gangs, "{capabilities:?}");
    assert!(ferry_backends::registry::kinds().contains(&"kubernetes"));
    let mut unknown = good.clone();
    unknown["namespace"] = json!("x");
    let err = ferry_backends::registry::check("kubernetes", unknown).expect_err("an unknown field");
    assert!(err.contains("unknown field"), "{err}");
    let mut bad_context = good.clone();
    bad_context["context"] = json!("prod");
    let err = ferry_backends::registry::check("kubernetes", bad_context).expect_err("a missing context");
    assert!(err.contains("no context \"prod\""), "{err}");
    let mut bad_prefix = good.clone();
    bad_prefix["namespace_prefix"] = json!("Ferry_");
    assert!(ferry_backends::registry::check("kubernetes", bad_prefix).is_err());
    let mut missing = good;
    missing["kubeconfig"] = json!(fake.dir.path().join("nope"));
    assert!(ferry_backends::registry::check("kubernetes", missing).is_err());
    assert!(fake.sent().is_empty(), "connecting sent {:?}", fake.sent());
}

/// The whole conformance suite, with the fake's stand-in kubelet running each Job's command as a local process: it
/// checks the engine end to end (argument vector, environment and working directory through the manifest to a real
/// process, output through the log API, exit codes, cancel killing a live run, resubmission, find, a 422, an outage).
/// What it cannot check is a real cluster's own behaviour; the fixtures stand for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_passes_the_conformance_suite_with_a_local_kubelet() {
    let fake = Fake::start().await;
    fake.with(|s| s.kubelet = true);
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("python3 runs");
    let port = StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    write_kubeconfig(&fake.dir.path().join("down"), port);
    let dir = tempfile::Builder::new().prefix("ferry-k8s-fx-").tempdir().expect("a directory for the suite");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let fixture = conformance::Fixture {
        engine: fake.engine(),
        down: engine_at(&fake.dir.path().join("down")),
        dir: dir.path().to_path_buf(),
        python,
        patience: Duration::from_secs(60),
        // The API server's own validation refuses an environment variable name with `=` (422 Invalid).
        reject: Some(|mut job: EngineJob| {
            job.env.insert("BAD=NAME".into(), "x".into());
            job
        }),
        tag: format!("k{}x{nanos}", std::process::id()),
    };
    conformance::run(&fixture).await;
}

/// The conformance suite against a live cluster, when one is at hand (never on the build machine, hence ignored):
/// `FERRY_K8S_KUBECONFIG` (and `FERRY_K8S_CONTEXT`), `FERRY_K8S_SHARED_DIR`, a directory of this machine that the
/// nodes see at the same path (`minikube mount DIR:DIR`, an NFS share), mounted into the pods as a host path, and
/// `FERRY_K8S_IMAGE` (default `python:3.12-slim`) with `python3` on its PATH. Run with
/// `cargo test -p ferry-backends --test kubernetes -- --ignored live`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a live cluster: FERRY_K8S_KUBECONFIG and FERRY_K8S_SHARED_DIR"]
async fn kubernetes_passes_the_conformance_suite_on_a_live_cluster() {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(kubeconfig), Some(shared)) = (var("FERRY_K8S_KUBECONFIG"), var("FERRY_K8S_SHARED_DIR")) else {
        panic!("set FERRY_K8S_KUBECONFIG and FERRY_K8S_SHARED_DIR (see this test's comment)");
    };
    let settings = json!({
        "kubeconfig": kubeconfig,
        "context": var("FERRY_K8S_CONTEXT"),
        "image": var("FERRY_K8S_IMAGE").unwrap_or_else(|| "python:3.12-slim".into()),
        "host_paths": [shared],
    });
    let connect = |settings: Value| {
        kubernetes::connect(serde_json::from_value(settings).expect("the settings parse")).expect("connects")
    };
    let port = StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    let down_dir = tempfile::Builder::new().prefix("ferry-k8s-down-").tempdir().expect("a directory");
    write_kubeconfig(&down_dir.path().join("kubeconfig"), port);
    let mut down = settings.clone();
    down["kubeconfig"] = json!(down_dir.path().join("kubeconfig"));
    down["context"] = Value::Null;
    let dir = tempfile::Builder::new().prefix("ferry-k8s-live-").tempdir_in(&shared).expect("a directory in the share");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let fixture = conformance::Fixture {
        engine: connect(settings),
        down: connect(down),
        dir: dir.path().to_path_buf(),
        python: "python3".into(),
        patience: Duration::from_secs(300),
        // The API server's own validation refuses an environment variable name with `=` (422 Invalid).
        reject: Some(|mut job: EngineJob| {
            job.env.insert("BAD=NAME".into(), "x".into());
            job
        }),
        tag: format!("k{}x{nanos}", std::process::id()),
    };
    conformance::run(&fixture).await;
}
