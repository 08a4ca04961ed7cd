//! The Kubernetes engine: one driver for every conformant cluster (vanilla Kubernetes, OpenShift, Rancher, MicroK8s,
//! Minikube), through the API server with the `kube` client (kubeconfig or in-cluster credentials, TLS by rustls).
//!
//! Each Ferry run is one `batch/v1` Job named by the run's native name (`ferry-<tag>-<job>-<attempt>`), in a
//! namespace per project (`namespace_prefix` + the project's name made a DNS-1123 label, with a short hash of the
//! original when that changed it, so that `ML Team` and `ml-team` do not share one). The namespace is created on first
//! use (it may already exist; a pool without the right to create namespaces works with namespaces made by an admin).
//! The native id is `<namespace>/<name>`; the native form (`ferry show`) is the Job as pretty JSON, plus the headless
//! Service of a gang.
//!
//! The Job: `backoffLimit: 0` (Ferry retries, not Kubernetes), `restartPolicy: Never`, `activeDeadlineSeconds` from
//! the run's maximum runtime, `ttlSecondsAfterFinished` of an hour (logs and state go with the Job: whoever drives the
//! engine reads them when the run ends), labels `ferry.io/managed=true`, `ferry.io/job`, `ferry.io/attempt`
//! (numbers: always valid label values) and annotations `ferry.io/user`, `ferry.io/project` (annotations take any
//! string; labels would not). One container: the job's image (or the pool's `image`), `command` = the run's argument
//! vector exactly (no shell: metacharacters arrive intact), `env` = the run's environment as plain values, the working
//! directory, requests and limits for CPU (`1500m`) and memory (bytes), and `<gpu_resource>: N` for GPUs. The pool's
//! node selector, tolerations, service account, image pull secrets and host paths (node directories such as a shared
//! filesystem, mounted at the same path) are applied to every pod. A single-node run is pinned to the node Ferry
//! placed it on by a node affinity on `metadata.name` (as DaemonSets do: the hostname label need not equal the node's
//! name).
//!
//! A gang (`nodes > 1`) is an Indexed Job (`completionMode: Indexed`, `completions = parallelism = nodes`) with a
//! headless Service of the Job's name (owned by the Job, so deleting the Job deletes it); the pods' `subdomain` is
//! that Service, so pod `i` resolves as `<name>-<i>.<name>`. Each pod gets the variables torchrun and
//! `torch.distributed` read: `MASTER_ADDR=<name>-0.<name>`, `MASTER_PORT=29500`, `NNODES` and `WORLD_SIZE` = the
//! number of nodes, `NODE_RANK` and `RANK` = the pod's completion index (from the
//! `batch.kubernetes.io/job-completion-index` annotation); a variable of the run's own environment wins. `TF_CONFIG`
//! is not generated. A gang is not pinned: Kubernetes places its pods.
//!
//! States come from the Job and its pods: a `Complete` condition is an exit 0; `Failed` with reason
//! `DeadlineExceeded` is a timeout; any other failure reads the exit code (and reason: `OOMKilled`, `StartError`...)
//! of the failed pod's container (a start error is `FailedToStart`; an evicted pod says so in the message); a Job with
//! a pod running is running; otherwise it is pending with the pod's own reason (`Unschedulable: 0/3 nodes are
//! available...`, `ImagePullBackOff`, `ContainerCreating`). Kubernetes itself keeps a pod whose image cannot be pulled
//! pending, and so does the engine: such a run ends at its maximum runtime or when cancelled. A Job that does not
//! exist is `Unknown`, unless this engine cancelled it: cancelling deletes the Job (`propagationPolicy: Background`),
//! and the engine remembers the runs it cancelled so that they end as `Stopped`. Output is the pod log (rank 0 of a
//! gang), read whole up to the offset asked plus `max` (`limitBytes`) and sliced: the API has no byte offset, so each
//! call costs the bytes before the offset again; the kubelet rotates container logs (10 MiB by default), after which
//! the offsets no longer line up.
//!
//! Capacity is the nodes' allocatable CPU, memory and `gpu_resource` (GPU model from the `nvidia.com/gpu.product`
//! label of NVIDIA's feature discovery, memory from `nvidia.com/gpu.memory`), restricted to the nodes the pool's node
//! selector matches; a node is up when it is `Ready`, schedulable, and carries no `NoSchedule`/`NoExecute` taint the
//! pool's tolerations do not tolerate. The allocation is the sum of the requests of every pod bound to the node and
//! not finished, as the scheduler counts it.
//!
//! Errors: no connection, a timeout, a 5xx, 401, 408, 429, or an answer that is not what the API sends:
//! `Unavailable`. At submission, any other 4xx (422 `Invalid`, 403 `Forbidden` including an exceeded quota, 400) is
//! `Rejected` with the API server's message; elsewhere a 4xx other than 404 is `Unavailable` (the pool's rights or
//! address are wrong, which an admin fixes). Creating a Job whose name exists (409 `AlreadyExists`) returns the
//! existing Job: a resubmission after a restart never runs twice.
//!
//! Rights the pool's credentials need (a ClusterRole): `namespaces` create; `jobs` (batch) create, get, list (all
//! namespaces, for `find`), delete; `services` create; `pods` get and list (all namespaces, for the allocation; without
//! it the nodes come without their allocation); `pods/log` get; `nodes` list.
//!
//! How this is tested: no API server can run where Ferry is built (no container runtime for a kubelet, no kind or
//! minikube), so `tests/kubernetes.rs` runs the engine against a fake API server on loopback that answers the real
//! paths with bodies in the real format (`tests/fixtures/kubernetes/`: written from the Kubernetes API reference, not
//! captured from a live cluster) and records what the engine sent. The tests check the manifests (argument vector and
//! environment with metacharacters, newlines and quotes intact, working directory, requests and limits with the GPU
//! resource, a namespace per project, node selector, tolerations, pull secrets, service account, pinning, the Indexed
//! Job and owned headless Service of a gang with its torchrun variables), the states read from real Job and pod
//! bodies (unschedulable, creating, running, succeeded, exit code 3, OOMKilled, StartError, deadline), cancel,
//! idempotent resubmission (409), `find`, nodes (allocatable, taints, cordons, NotReady, allocation from pod
//! requests), log slicing by offset, an unreachable server, 422, 403 quota and 500. The conformance suite also runs
//! against that fake with a stand-in kubelet that runs each Job's command as a local process (no image, no isolation),
//! so the whole path from `EngineJob` to a real process and back through the log API is exercised. Nothing has been
//! run against a live cluster; the engine is ready for one: point `kubeconfig` (and `context`) at it, or run the
//! server in a pod with a service account (in-cluster credentials), and set `image`. The ignored test
//! `kubernetes_passes_the_conformance_suite_on_a_live_cluster` runs the suite on a live cluster
//! (`FERRY_K8S_KUBECONFIG`, and `FERRY_K8S_SHARED_DIR`: a directory the nodes see at the same path, for the probe).
//! Plain `http://` API servers (`kubectl proxy`) work as well as TLS ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use ferry_api::agent::RunEnd;
use ferry_api::nodes::Gpu;
use futures_util::AsyncReadExt;
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, EnvVarSource, HostPathVolumeSource, LocalObjectReference, Namespace, Node,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, Pod, PodSpec,
    PodTemplateSpec, ResourceRequirements, Secret, SecretKeySelector, Service, ServiceSpec, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::engine::{Engine, EngineError, EngineJob, EngineNode, Found, NativeState, Submitted};
use crate::{BackendFuture, Capabilities};

const ENGINE: &str = "kubernetes";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a finished Job (and its pods and logs) stays for the driver to read.
const TTL_AFTER_FINISHED_S: i32 = 3600;
/// Objects per page of a list; the API server pages so that large clusters do not answer in one huge body.
const PAGE: u32 = 500;
const MESSAGE_MAX: usize = 300;
/// Where the rendezvous of a gang listens (torchrun's default).
const MASTER_PORT: &str = "29500";
/// States asked for at once.
const STATES_IN_FLIGHT: usize = 8;
/// Cancelled runs remembered for `Stopped`; past this many the oldest half is forgotten.
const CANCELLED_MAX: usize = 10_000;

const LABEL_MANAGED: &str = "ferry.io/managed";
const LABEL_JOB: &str = "ferry.io/job";
const LABEL_ATTEMPT: &str = "ferry.io/attempt";
const ANNOTATION_USER: &str = "ferry.io/user";
const ANNOTATION_PROJECT: &str = "ferry.io/project";
/// The label the Job controller puts on a Job's pods (all versions; `batch.kubernetes.io/job-name` since 1.27).
const LABEL_JOB_NAME: &str = "job-name";
const ANNOTATION_INDEX: &str = "batch.kubernetes.io/job-completion-index";
const LABEL_GPU_PRODUCT: &str = "nvidia.com/gpu.product";
const LABEL_GPU_MEMORY_MIB: &str = "nvidia.com/gpu.memory";

fn default_prefix() -> String {
    "ferry-".into()
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}

/// How a kubernetes pool reaches its cluster: the `[pool.engine]` table of the server's configuration, or the settings
/// of `ferry pool add`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// A kubeconfig file. Without it: `$KUBECONFIG` or `~/.kube/config`, else the pod's service account
    /// (in-cluster credentials).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context; its current context without it.
    #[serde(default)]
    pub context: Option<String>,
    /// Namespaces are this prefix and the project's name (`ferry-` by default).
    #[serde(default = "default_prefix")]
    pub namespace_prefix: String,
    /// The image of runs that name none; without it, every run must bring its own.
    #[serde(default)]
    pub image: Option<String>,
    /// Secrets (in each project's namespace) to pull images with.
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
    /// Labels a node must have to run Ferry's pods; also restricts the nodes the pool shows.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of every pod, as Kubernetes writes them (`key`, `operator`, `value`, `effect`).
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
    /// The service account of the pods; the namespace's `default` without it.
    #[serde(default)]
    pub service_account: Option<String>,
    /// The extended resource that counts GPUs.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource: String,
    /// Directories of the nodes mounted into every pod at the same path (`hostPath`), e.g. a shared filesystem
    /// mounted on every node: what makes a run's working directory and files reachable, as on Slurm. Clusters that
    /// enforce the `baseline` or `restricted` Pod Security Standards refuse `hostPath` (the Job is then rejected).
    #[serde(default)]
    pub host_paths: Vec<PathBuf>,
}

/// Where the client's credentials come from; resolved on first use, because kube reads them asynchronously.
enum Source {
    /// A kubeconfig file, read and checked at connection.
    File(Box<Kubeconfig>, KubeConfigOptions),
    /// `$KUBECONFIG` or `~/.kube/config`, with a context.
    Default(KubeConfigOptions),
    /// kube's inference: the default kubeconfig, else in-cluster.
    Infer,
}

/// Connects to the cluster without contacting it (a cluster that is down is reported by the calls, not here). A
/// kubeconfig file named in the settings is read and checked now.
pub fn connect(config: Config) -> Result<Box<dyn Engine>, String> {
    let prefix = &config.namespace_prefix;
    if prefix.len() > 40
        || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        || prefix.starts_with('-')
    {
        return Err(format!(
            "namespace_prefix must be at most 40 lowercase letters, digits and `-`, not starting with `-`: {prefix:?}"
        ));
    }
    if config.gpu_resource.trim().is_empty() {
        return Err("gpu_resource must name a resource, e.g. nvidia.com/gpu".into());
    }
    if matches!(&config.image, Some(i) if i.trim().is_empty()) {
        return Err("image must name an image (or be left out)".into());
    }
    if let Some(path) = config.host_paths.iter().find(|p| !p.is_absolute()) {
        return Err(format!("host_paths must be absolute paths: {}", path.display()));
    }
    let options = KubeConfigOptions { context: config.context.clone(), cluster: None, user: None };
    let source = match &config.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| format!("the kubeconfig {}: {e}", path.display()))?;
            if let Some(context) = &config.context {
                if !file.contexts.iter().any(|c| &c.name == context) {
                    let known: Vec<&str> = file.contexts.iter().map(|c| c.name.as_str()).collect();
                    return Err(format!(
                        "the kubeconfig {} has no context {context:?}; it has {known:?}",
                        path.display()
                    ));
                }
            }
            Source::File(Box::new(file), options)
        }
        None if config.context.is_some() => Source::Default(options),
        None => Source::Infer,
    };
    Ok(Box::new(KubeEngine {
        config,
        source,
        client: tokio::sync::OnceCell::new(),
        server: std::sync::OnceLock::new(),
        namespaces: Mutex::new(HashSet::new()),
        cancelled: Mutex::new(HashMap::new()),
    }))
}

struct KubeEngine {
    config: Config,
    source: Source,
    client: tokio::sync::OnceCell<kube::Client>,
    /// The API server's address, once the credentials are read (for messages).
    server: std::sync::OnceLock<String>,
    /// Namespaces known to exist (created or found by this engine).
    namespaces: Mutex<HashSet<String>>,
    /// Native ids this engine cancelled, and when (µs).
    cancelled: Mutex<HashMap<String, i64>>,
}

fn unavailable(detail: impl Into<String>) -> EngineError {
    EngineError::Unavailable { engine: ENGINE, detail: detail.into() }
}

fn rejected(detail: impl Into<String>) -> EngineError {
    EngineError::Rejected { engine: ENGINE, detail: detail.into() }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MESSAGE_MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// An error and its causes, one line (kube's own messages are terse: "client error (Connect)").
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    shorten(&text)
}

/// The API server's status code of an error, when it answered.
fn api_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// An owner reference to the Job a run made, for the objects that must go with it.
fn owned_by(job: &EngineJob, created: &Job) -> Option<Vec<OwnerReference>> {
    created.metadata.uid.clone().map(|uid| {
        vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: job.name.clone(),
            uid,
            ..OwnerReference::default()
        }]
    })
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn micros(time: &Time) -> i64 {
    time.0.timestamp_micros()
}

/// A 32-bit FNV-1a hash: stable across builds and platforms, unlike std's hasher.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The namespace of a project: `prefix` and the project's name as a DNS-1123 label (lowercase letters, digits, `-`,
/// at most 63), with a hash of the original name when making it a label changed it.
pub fn namespace_for(prefix: &str, project: &str) -> String {
    let mut name = String::new();
    for c in project.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let mut name = name.trim_matches('-').to_string();
    let fits = prefix.len() + name.len() <= 63;
    let suffix =
        if name == project && !name.is_empty() && fits { String::new() } else { format!("-{:08x}", fnv1a(project)) };
    let room = 63usize.saturating_sub(prefix.len() + suffix.len());
    name.truncate(room);
    let name = name.trim_end_matches('-');
    let joined = format!("{prefix}{name}{suffix}");
    // Only an empty prefix with an empty name can leave a leading `-` (from the suffix).
    joined.trim_start_matches('-').to_string()
}

/// `<namespace>/<name>` split, when it is one.
fn split_id(native_id: &str) -> Option<(&str, &str)> {
    native_id.split_once('/').filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
}

/// A Kubernetes quantity (`8`, `7910m`, `32Gi`, `16392340Ki`, `1e3`, `100M`) as a number, `None` when it is not one.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exponent => {
            let e: i32 = exponent.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(e)
        }
    };
    let value = number * factor;
    value.is_finite().then_some(value)
}

/// A quantity as a whole count of its unit times `scale` (1000 for millicores), rounded up as Kubernetes does.
fn quantity_as(quantity: Option<&Quantity>, scale: f64) -> u64 {
    quantity.and_then(|q| parse_quantity(&q.0)).map_or(0, |v| (v * scale).ceil().max(0.0) as u64)
}

impl KubeEngine {
    /// An error of any call but submission: the cluster, or the pool's access to it, is not well.
    fn failed(&self, what: &str, error: kube::Error) -> EngineError {
        match error {
            kube::Error::Api(s) => {
                unavailable(format!("{what}: HTTP {} {}: {}", s.code, s.reason, shorten(&s.message)))
            }
            other => {
                let server = self.server.get().map_or("the API server", String::as_str);
                unavailable(format!("{what}: {server}: {}", chain(&other)))
            }
        }
    }

    /// An error of a submission: the API server's verdict on the manifest is final, its trouble is not.
    fn refused(&self, what: &str, error: kube::Error) -> EngineError {
        match error {
            kube::Error::Api(s) if (400..500).contains(&s.code) && ![401, 408, 429].contains(&s.code) => {
                rejected(format!("{what}: {} ({}): {}", s.reason, s.code, shorten(&s.message)))
            }
            other => self.failed(what, other),
        }
    }

    async fn client(&self) -> Result<kube::Client, EngineError> {
        let client = self
            .client
            .get_or_try_init(|| async {
                let mut config = match &self.source {
                    Source::File(file, options) => kube::Config::from_custom_kubeconfig((**file).clone(), options)
                        .await
                        .map_err(|e| unavailable(format!("the kubeconfig: {}", chain(&e))))?,
                    Source::Default(options) => kube::Config::from_kubeconfig(options)
                        .await
                        .map_err(|e| unavailable(format!("the kubeconfig: {}", chain(&e))))?,
                    Source::Infer => kube::Config::infer()
                        .await
                        .map_err(|e| unavailable(format!("no kubeconfig and not in a cluster: {}", chain(&e))))?,
                };
                let _ = self.server.set(config.cluster_url.to_string());
                config.connect_timeout = Some(CONNECT_TIMEOUT);
                config.read_timeout = Some(READ_TIMEOUT);
                config.write_timeout = Some(READ_TIMEOUT);
                kube::Client::try_from(config).map_err(|e| unavailable(format!("the client: {}", chain(&e))))
            })
            .await?;
        Ok(client.clone())
    }

    /// Makes sure the project's namespace exists (once per namespace and engine).
    async fn ensure_namespace(&self, client: &kube::Client, namespace: &str, project: &str) -> Result<(), EngineError> {
        if self.namespaces.lock().unwrap_or_else(|e| e.into_inner()).contains(namespace) {
            return Ok(());
        }
        let object = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(LABEL_MANAGED.to_string(), "true".to_string())])),
                annotations: Some(BTreeMap::from([(ANNOTATION_PROJECT.to_string(), project.to_string())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(e) if api_code(&e) == Some(409) => {}
            // Without the right to create namespaces, an admin may have made it: the Job's creation will tell.
            Err(e) if api_code(&e) == Some(403) => {
                tracing::debug!(namespace, "kubernetes: may not create the namespace; using it as it is: {e}");
                return Ok(());
            }
            Err(e) => return Err(self.refused(&format!("creating namespace {namespace}"), e)),
        }
        self.namespaces.lock().unwrap_or_else(|e| e.into_inner()).insert(namespace.to_string());
        Ok(())
    }

    async fn submit_job(&self, job: &EngineJob) -> Result<Submitted, EngineError> {
        let image = match (&job.image, &self.config.image) {
            (Some(image), _) if !image.trim().is_empty() => image.clone(),
            (_, Some(image)) => image.clone(),
            _ => {
                return Err(EngineError::Unsupported(
                    "this kubernetes pool has no default image (`image` in its settings): give the job an image".into(),
                ))
            }
        };
        let namespace = namespace_for(&self.config.namespace_prefix, &job.project);
        let manifest = self.job_manifest(job, &namespace, image);
        let client = self.client().await?;
        self.ensure_namespace(&client, &namespace, &job.project).await?;
        let jobs = Api::<Job>::namespaced(client.clone(), &namespace);
        let created = match jobs.create(&PostParams::default(), &manifest).await {
            Ok(created) => created,
            Err(e) if api_code(&e) == Some(409) => match jobs.get_opt(&job.name).await {
                Ok(Some(existing)) => existing,
                // Deleted between the two calls (cancelled, or its TTL ran out): it was submitted.
                Ok(None) => manifest.clone(),
                Err(e) => return Err(self.failed("reading the existing job", e)),
            },
            Err(e) if api_code(&e) == Some(404) => {
                // The namespace went away behind the engine's back: make it again, once.
                self.namespaces.lock().unwrap_or_else(|e| e.into_inner()).remove(&namespace);
                self.ensure_namespace(&client, &namespace, &job.project).await?;
                jobs.create(&PostParams::default(), &manifest).await.map_err(|e| self.refused("creating the job", e))?
            }
            Err(e) => return Err(self.refused("creating the job", e)),
        };
        let mut native_spec = serde_json::to_string_pretty(&manifest).unwrap_or_default();
        if !job.secrets.is_empty() {
            // After the Job, so the Job owns it; its pods wait (CreateContainerConfigError, retried by the kubelet)
            // the moment it takes to arrive. A resubmission finds it made.
            let secret = self.secret_object(job, &namespace, &created);
            match Api::<Secret>::namespaced(client.clone(), &namespace).create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => return Err(self.refused("creating the job's Secret", e)),
            }
            let mut shown = secret.clone();
            shown.data = None;
            shown.string_data = Some(job.secrets.0.keys().map(|k| (k.clone(), "(hidden)".to_string())).collect());
            native_spec.push_str("\n---\n");
            native_spec.push_str(&serde_json::to_string_pretty(&shown).unwrap_or_default());
        }
        if job.nodes > 1 {
            let service = self.gang_service(job, &namespace, &created);
            match Api::<Service>::namespaced(client, &namespace).create(&PostParams::default(), &service).await {
                Ok(_) => {}
                Err(e) if api_code(&e) == Some(409) => {}
                Err(e) => return Err(self.refused("creating the gang's headless service", e)),
            }
            native_spec.push_str("\n---\n");
            native_spec.push_str(&serde_json::to_string_pretty(&service).unwrap_or_default());
        }
        Ok(Submitted { native_id: format!("{namespace}/{}", job.name), native_spec })
    }

    /// The Job for a run, as sent.
    fn job_manifest(&self, job: &EngineJob, namespace: &str, image: String) -> Job {
        let labels = BTreeMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_JOB.to_string(), job.job_id.to_string()),
            (LABEL_ATTEMPT.to_string(), job.attempt.to_string()),
        ]);
        let annotations = BTreeMap::from([
            (ANNOTATION_USER.to_string(), job.user.clone()),
            (ANNOTATION_PROJECT.to_string(), job.project.clone()),
        ]);
        let gang = job.nodes > 1;

        let mut env = Vec::new();
        if gang {
            let rank = || EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: format!("metadata.annotations['{ANNOTATION_INDEX}']"),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            };
            let value = |name: &str, value: String| EnvVar { name: name.into(), value: Some(value), value_from: None };
            env.push(value("MASTER_ADDR", format!("{}-0.{}", job.name, job.name)));
            env.push(value("MASTER_PORT", MASTER_PORT.into()));
            env.push(value("NNODES", job.nodes.to_string()));
            env.push(value("WORLD_SIZE", job.nodes.to_string()));
            env.push(EnvVar { name: "NODE_RANK".into(), value: None, value_from: Some(rank()) });
            env.push(EnvVar { name: "RANK".into(), value: None, value_from: Some(rank()) });
            env.retain(|v| !job.env.contains_key(&v.name));
        }
        env.extend(job.env.iter().map(|(k, v)| EnvVar { name: k.clone(), value: Some(v.clone()), value_from: None }));
        env.extend(job.secrets.0.keys().map(|k| EnvVar {
            name: k.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: job.name.clone(),
                    key: k.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        }));

        let mut requests = BTreeMap::new();
        if job.cpu_millis > 0 {
            requests.insert("cpu".to_string(), Quantity(format!("{}m", job.cpu_millis)));
        }
        if job.memory_bytes > 0 {
            requests.insert("memory".to_string(), Quantity(job.memory_bytes.to_string()));
        }
        let mut limits = requests.clone();
        if job.gpus > 0 {
            limits.insert(self.config.gpu_resource.clone(), Quantity(job.gpus.to_string()));
        }

        let mounts: Vec<(VolumeMount, Volume)> = self
            .config
            .host_paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let path = path.to_string_lossy().into_owned();
                let name = format!("host-{i}");
                let mount = VolumeMount { name: name.clone(), mount_path: path.clone(), ..VolumeMount::default() };
                let source = HostPathVolumeSource { path, type_: Some("Directory".into()) };
                (mount, Volume { name, host_path: Some(source), ..Volume::default() })
            })
            .collect();
        let container = Container {
            name: "run".into(),
            image: Some(image),
            command: (!job.command.is_empty()).then(|| job.command.clone()),
            env: (!env.is_empty()).then_some(env),
            working_dir: (!job.workdir.is_empty()).then(|| job.workdir.clone()),
            resources: Some(ResourceRequirements {
                requests: (!requests.is_empty()).then_some(requests),
                limits: (!limits.is_empty()).then_some(limits),
                ..ResourceRequirements::default()
            }),
            volume_mounts: (!mounts.is_empty()).then(|| mounts.iter().map(|(mount, _)| mount.clone()).collect()),
            ..Container::default()
        };

        // Ferry placed a single-node run on one node: keep it there. A gang's pods go where Kubernetes puts them.
        let affinity = (!gang && !job.node.is_empty()).then(|| Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.name".into(),
                            operator: "In".into(),
                            values: Some(vec![job.node.clone()]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        });
        let config = &self.config;
        let pod = PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            affinity,
            node_selector: (!config.node_selector.is_empty()).then(|| config.node_selector.clone()),
            tolerations: (!config.tolerations.is_empty()).then(|| config.tolerations.clone()),
            service_account_name: config.service_account.clone(),
            image_pull_secrets: (!config.image_pull_secrets.is_empty())
                .then(|| config.image_pull_secrets.iter().map(|s| LocalObjectReference { name: s.clone() }).collect()),
            subdomain: gang.then(|| job.name.clone()),
            // The namespace's services must not add variables to the run's environment.
            enable_service_links: Some(false),
            volumes: (!mounts.is_empty()).then(|| mounts.into_iter().map(|(_, volume)| volume).collect()),
            ..PodSpec::default()
        };
        let nodes = i32::try_from(job.nodes).unwrap_or(i32::MAX);
        Job {
            metadata: ObjectMeta {
                name: Some(job.name.clone()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels.clone()),
                annotations: Some(annotations.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                active_deadline_seconds: job
                    .max_runtime_s
                    .filter(|s| *s > 0)
                    .map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
                ttl_seconds_after_finished: Some(TTL_AFTER_FINISHED_S),
                completion_mode: gang.then(|| "Indexed".to_string()),
                completions: gang.then_some(nodes),
                parallelism: gang.then_some(nodes),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        annotations: Some(annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(pod),
                },
                ..JobSpec::default()
            }),
            ..Job::default()
        }
    }

    /// The Secret holding a run's secret values, named like its Job and owned by it (deleting the Job, by a cancel
    /// or its TTL, deletes the Secret). The pod template reads each value with `secretKeyRef`, so the Job's
    /// manifest holds no value.
    fn secret_object(&self, job: &EngineJob, namespace: &str, created: &Job) -> Secret {
        let data = job.secrets.0.iter().map(|(k, v)| (k.clone(), k8s_openapi::ByteString(v.as_bytes().to_vec())));
        Secret {
            metadata: ObjectMeta {
                name: Some(job.name.clone()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(LABEL_MANAGED.to_string(), "true".to_string())])),
                owner_references: owned_by(job, created),
                ..ObjectMeta::default()
            },
            data: Some(data.collect()),
            type_: Some("Opaque".into()),
            immutable: Some(true),
            ..Secret::default()
        }
    }

    /// The headless Service a gang's pods resolve each other by, owned by the Job.
    fn gang_service(&self, job: &EngineJob, namespace: &str, created: &Job) -> Service {
        let owner = owned_by(job, created);
        Service {
            metadata: ObjectMeta {
                name: Some(job.name.clone()),
                namespace: Some(namespace.to_string()),
                labels: Some(BTreeMap::from([(LABEL_MANAGED.to_string(), "true".to_string())])),
                owner_references: owner,
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                selector: Some(BTreeMap::from([(LABEL_JOB_NAME.to_string(), job.name.clone())])),
                // Rank 0 must resolve before every pod is ready, or the rendezvous never starts.
                publish_not_ready_addresses: Some(true),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// Every object of a list, page by page.
    async fn list_all<K>(&self, api: &Api<K>, params: ListParams) -> Result<Vec<K>, kube::Error>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let mut items = Vec::new();
        let mut params = params.limit(PAGE);
        loop {
            let page = api.list(&params).await?;
            items.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(items),
            }
        }
    }

    /// The pods of a Job, oldest first.
    async fn pods_of(&self, client: &kube::Client, namespace: &str, name: &str) -> Result<Vec<Pod>, kube::Error> {
        let api = Api::<Pod>::namespaced(client.clone(), namespace);
        let mut pods = self.list_all(&api, ListParams::default().labels(&format!("{LABEL_JOB_NAME}={name}"))).await?;
        pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(micros));
        Ok(pods)
    }

    fn was_cancelled(&self, native_id: &str) -> Option<i64> {
        self.cancelled.lock().unwrap_or_else(|e| e.into_inner()).get(native_id).copied()
    }

    async fn state(&self, client: &kube::Client, native_id: &str) -> Result<NativeState, EngineError> {
        let Some((namespace, name)) = split_id(native_id) else {
            return Ok(NativeState::Unknown);
        };
        let cancelled = self.was_cancelled(native_id);
        let stopped = |at: i64, started: Option<i64>| NativeState::Finished {
            end: RunEnd::Stopped,
            exit_code: None,
            signal: None,
            started_at_us: started,
            finished_at_us: at,
            message: None,
        };
        let job = match Api::<Job>::namespaced(client.clone(), namespace).get_opt(name).await {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(cancelled.map_or(NativeState::Unknown, |at| stopped(at, None))),
            Err(e) => return Err(self.failed("job state", e)),
        };
        let status = job.status.clone().unwrap_or_default();
        let started = status.start_time.as_ref().map(micros);
        let conditions = status.conditions.unwrap_or_default();
        let condition = |kind: &str| conditions.iter().find(|c| c.type_ == kind && c.status == "True");
        if let Some(done) = condition("Complete") {
            let at = status.completion_time.as_ref().or(done.last_transition_time.as_ref()).map_or_else(now_us, micros);
            return Ok(NativeState::Finished {
                end: RunEnd::Exited,
                exit_code: Some(0),
                signal: None,
                started_at_us: started,
                finished_at_us: at,
                message: None,
            });
        }
        if let Some(failure) = condition("Failed") {
            let at = failure.last_transition_time.as_ref().map_or_else(now_us, micros);
            let reason = failure.reason.clone().unwrap_or_default();
            if reason == "DeadlineExceeded" {
                return Ok(NativeState::Finished {
                    end: RunEnd::TimedOut,
                    exit_code: None,
                    signal: None,
                    started_at_us: started,
                    finished_at_us: at,
                    message: failure.message.clone(),
                });
            }
            let pods = self.pods_of(client, namespace, name).await.map_err(|e| self.failed("the job's pods", e))?;
            return Ok(failed_state(&pods, &reason, failure.message.as_deref(), started, at));
        }
        if job.metadata.deletion_timestamp.is_some() || cancelled.is_some() {
            let at = cancelled.or(job.metadata.deletion_timestamp.as_ref().map(micros)).unwrap_or_else(now_us);
            return Ok(stopped(at, started));
        }
        let pods = self.pods_of(client, namespace, name).await.map_err(|e| self.failed("the job's pods", e))?;
        let running = pods.iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            matches!(phase, Some("Running" | "Succeeded" | "Failed"))
        });
        if running || status.ready.unwrap_or(0) > 0 {
            let at = started
                .or_else(|| pods.iter().find_map(|p| p.status.as_ref()?.start_time.as_ref().map(micros)))
                .unwrap_or_else(now_us);
            return Ok(NativeState::Running { started_at_us: at });
        }
        Ok(NativeState::Pending { reason: pods.iter().rev().find_map(pending_reason) })
    }

    async fn cancel_run(&self, native_id: &str) -> Result<(), EngineError> {
        let Some((namespace, name)) = split_id(native_id) else {
            return Ok(());
        };
        let client = self.client().await?;
        let jobs = Api::<Job>::namespaced(client, namespace);
        let job = match jobs.get_opt(name).await {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(()),
            Err(e) => return Err(self.failed("cancel", e)),
        };
        let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True") {
            // It ended by itself: keep its own end (the TTL removes it).
            return Ok(());
        }
        {
            let mut cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
            if cancelled.len() >= CANCELLED_MAX {
                let mut times: Vec<i64> = cancelled.values().copied().collect();
                times.sort_unstable();
                let cut = times[times.len() / 2];
                cancelled.retain(|_, at| *at > cut);
            }
            cancelled.entry(native_id.to_string()).or_insert_with(now_us);
        }
        match jobs.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if api_code(&e) == Some(404) => Ok(()),
            Err(e) => Err(self.failed("cancel", e)),
        }
    }

    async fn read_output(&self, native_id: &str, offset: u64, max: usize) -> Result<Vec<u8>, EngineError> {
        let Some((namespace, name)) = split_id(native_id) else {
            return Ok(Vec::new());
        };
        if max == 0 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let pods =
            self.pods_of(&client, namespace, name).await.map_err(|e| self.failed("output: the job's pods", e))?;
        // Rank 0 of a gang; the newest pod otherwise (a Job with backoffLimit 0 has one).
        let pod = pods
            .iter()
            .rev()
            .find(|p| p.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_INDEX)).is_some_and(|i| i == "0"))
            .or_else(|| pods.last());
        let Some(pod_name) = pod.and_then(|p| p.metadata.name.clone()) else {
            return Ok(Vec::new());
        };
        // The log API has no byte offset: read up to offset + max from the start and slice.
        let limit = offset.saturating_add(max as u64);
        let params = LogParams { limit_bytes: Some(i64::try_from(limit).unwrap_or(i64::MAX)), ..LogParams::default() };
        let api = Api::<Pod>::namespaced(client, namespace);
        let mut stream = match api.log_stream(&pod_name, &params).await {
            Ok(stream) => stream,
            // 400: the container has not started yet; 404: the pod is gone.
            Err(e) if matches!(api_code(&e), Some(400 | 404)) => return Ok(Vec::new()),
            Err(e) => return Err(self.failed("output", e)),
        };
        let mut log = Vec::new();
        stream.read_to_end(&mut log).await.map_err(|e| unavailable(format!("output: reading the log: {e}")))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(log.len());
        let end = start.saturating_add(max).min(log.len());
        Ok(log[start..end].to_vec())
    }

    async fn find_runs(&self, prefix: &str) -> Result<Vec<Found>, EngineError> {
        let client = self.client().await?;
        let api = Api::<Job>::all(client);
        let jobs = self
            .list_all(&api, ListParams::default().labels(&format!("{LABEL_MANAGED}=true")))
            .await
            .map_err(|e| self.failed("job list", e))?;
        Ok(jobs
            .into_iter()
            .filter_map(|job| {
                let name = job.metadata.name?;
                let namespace = job.metadata.namespace?;
                (name.starts_with(prefix) && namespace.starts_with(&self.config.namespace_prefix))
                    .then(|| Found { native_id: format!("{namespace}/{name}"), name })
            })
            .collect())
    }

    async fn list_nodes(&self) -> Result<Vec<EngineNode>, EngineError> {
        let client = self.client().await?;
        let nodes_api = Api::<Node>::all(client.clone());
        let pods_api = Api::<Pod>::all(client);
        let mut node_params = ListParams::default();
        let selector: Vec<String> = self.config.node_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !selector.is_empty() {
            node_params = node_params.labels(&selector.join(","));
        }
        // Every pod bound to a node and not finished holds its requests, as the scheduler counts.
        let pod_params = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        let (nodes, pods) = tokio::join!(self.list_all(&nodes_api, node_params), self.list_all(&pods_api, pod_params));
        let nodes = nodes.map_err(|e| self.failed("node list", e))?;
        // The allocation is a bonus: without the right to list pods, the nodes are still right.
        let pods = match pods {
            Ok(pods) => Some(pods),
            Err(e) => {
                tracing::debug!("kubernetes: cannot list pods for the allocation: {e}");
                None
            }
        };
        let mut allocated: HashMap<&str, (u64, u64, u64)> = HashMap::new();
        for pod in pods.iter().flatten() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else { continue };
            let (cpu, memory, gpus) = pod_requests(pod, &self.config.gpu_resource);
            let sum = allocated.entry(node).or_default();
            *sum = (sum.0 + cpu, sum.1 + memory, sum.2 + gpus);
        }
        Ok(nodes
            .iter()
            .filter_map(|node| {
                let name = node.metadata.name.clone()?;
                let alloc = pods.as_ref().map(|_| allocated.get(name.as_str()).copied().unwrap_or_default());
                Some(self.engine_node(node, name, alloc))
            })
            .collect())
    }

    fn engine_node(&self, node: &Node, name: String, allocated: Option<(u64, u64, u64)>) -> EngineNode {
        let allocatable = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let get = |resource: &str| allocatable.and_then(|a| a.get(resource));
        let gpu_count = quantity_as(get(&self.config.gpu_resource), 1.0);
        let labels = node.metadata.labels.as_ref();
        let model = labels.and_then(|l| l.get(LABEL_GPU_PRODUCT)).cloned().unwrap_or_else(|| "unknown".into());
        let gpu_memory = labels
            .and_then(|l| l.get(LABEL_GPU_MEMORY_MIB))
            .and_then(|m| m.trim().parse::<u64>().ok())
            .map_or(0, |mib| mib << 20);
        let gpus = (0..u32::try_from(gpu_count).unwrap_or(u32::MAX).min(1024))
            .map(|index| Gpu {
                index,
                model: model.clone(),
                memory_bytes: gpu_memory,
                uuid: None,
                source: "kubernetes".into(),
            })
            .collect();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let spec = node.spec.as_ref();
        let cordoned = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let tainted = spec.and_then(|s| s.taints.as_ref()).into_iter().flatten().any(|taint| {
            matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
                && !self
                    .config
                    .tolerations
                    .iter()
                    .any(|t| tolerates(t, &taint.key, taint.value.as_deref(), &taint.effect))
        });
        let mut state = if ready { "Ready".to_string() } else { "NotReady".to_string() };
        if cordoned {
            state.push_str(",SchedulingDisabled");
        }
        if tainted {
            state.push_str(",Tainted");
        }
        EngineNode {
            name,
            cpu_millis: quantity_as(get("cpu"), 1000.0),
            memory_bytes: quantity_as(get("memory"), 1.0),
            gpus,
            up: ready && !cordoned && !tainted,
            state,
            allocated_cpu_millis: allocated.map(|a| a.0),
            allocated_memory_bytes: allocated.map(|a| a.1),
            allocated_gpus: allocated.map(|a| u32::try_from(a.2).unwrap_or(u32::MAX)),
        }
    }
}

/// Whether a toleration tolerates a taint, by Kubernetes' rules.
fn tolerates(toleration: &Toleration, key: &str, value: Option<&str>, effect: &str) -> bool {
    if toleration.effect.as_deref().is_some_and(|e| !e.is_empty() && e != effect) {
        return false;
    }
    let exists = toleration.operator.as_deref() == Some("Exists");
    match toleration.key.as_deref().filter(|k| !k.is_empty()) {
        None => exists,
        Some(k) if k != key => false,
        Some(_) if exists => true,
        Some(_) => toleration.value.as_deref().unwrap_or("") == value.unwrap_or(""),
    }
}

/// A pod's requests as the scheduler counts them: the larger of its containers' sum and its largest init container;
/// a resource with a limit and no request requests its limit.
fn pod_requests(pod: &Pod, gpu_resource: &str) -> (u64, u64, u64) {
    let Some(spec) = &pod.spec else { return (0, 0, 0) };
    let of = |c: &Container| {
        let resources = c.resources.as_ref();
        let get = |name: &str| {
            resources
                .and_then(|r| r.requests.as_ref().and_then(|q| q.get(name)))
                .or_else(|| resources.and_then(|r| r.limits.as_ref().and_then(|q| q.get(name))))
        };
        (quantity_as(get("cpu"), 1000.0), quantity_as(get("memory"), 1.0), quantity_as(get(gpu_resource), 1.0))
    };
    let sum = spec.containers.iter().map(of).fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(of)
        .fold((0, 0, 0), |a, b| (a.0.max(b.0), a.1.max(b.1), a.2.max(b.2)));
    (sum.0.max(init.0), sum.1.max(init.1), sum.2.max(init.2))
}

/// Why a pod is not running yet, in Kubernetes' words: its container's waiting reason, else its unscheduled
/// condition.
fn pending_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let waiting = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .filter(|r| !r.is_empty());
    if waiting.is_some() {
        return waiting;
    }
    let unscheduled = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    let reason = unscheduled.reason.clone().unwrap_or_else(|| "Unscheduled".into());
    Some(match &unscheduled.message {
        Some(message) if !message.is_empty() => shorten(&format!("{reason}: {message}")),
        _ => reason,
    })
}

/// The end of a Job that failed other than by its deadline: the exit code of the first container that failed.
fn failed_state(pods: &[Pod], reason: &str, message: Option<&str>, started: Option<i64>, at: i64) -> NativeState {
    // The pod's own reason, where the kubelet or the control plane ended it (`Evicted: The node was low on resource:
    // memory.`), says more than its container's.
    let pod_words = |pod: &Pod| {
        let status = pod.status.as_ref()?;
        let reason = status.reason.clone().filter(|r| !r.is_empty())?;
        Some(match status.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => shorten(&format!("{reason}: {m}")),
            None => reason,
        })
    };
    let terminated = pods.iter().find_map(|pod| {
        let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
        statuses
            .iter()
            .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
            .find(|t| t.exit_code != 0 || t.signal.is_some_and(|s| s != 0))
            .map(|t| (pod, t.clone()))
    });
    let job_words = || {
        let words = match message {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason.to_string(),
        };
        (!words.is_empty()).then(|| shorten(&words))
    };
    match terminated {
        Some((pod, t)) => {
            let why = t.reason.clone().unwrap_or_default();
            let end =
                if why == "StartError" || why == "ContainerCannotRun" { RunEnd::FailedToStart } else { RunEnd::Exited };
            let container_words = match (why.as_str(), t.message.as_deref()) {
                ("" | "Error", None) => None,
                ("" | "Error", Some(m)) => Some(shorten(m)),
                (why, None) => Some(why.to_string()),
                (why, Some(m)) => Some(shorten(&format!("{why}: {m}"))),
            };
            NativeState::Finished {
                end,
                exit_code: Some(t.exit_code),
                signal: t.signal.filter(|s| *s != 0),
                started_at_us: started.or(t.started_at.as_ref().map(micros)),
                finished_at_us: t.finished_at.as_ref().map_or(at, micros),
                message: pod_words(pod).or(container_words),
            }
        }
        // No container ran to an end (its node lost, a pod failure policy): a failure without an exit code, which
        // Ferry may retry, in the pod's words or the Job's.
        None => NativeState::Finished {
            end: RunEnd::Exited,
            exit_code: None,
            signal: None,
            started_at_us: started,
            finished_at_us: at,
            message: pods.iter().rev().find_map(pod_words).or_else(job_words),
        },
    }
}

impl Engine for KubeEngine {
    fn kind(&self) -> &'static str {
        ENGINE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            images: true,
            // An Indexed Job with a headless Service (see the module's documentation).
            gangs: true,
            gpus_measured: false,
            native_view: true,
            // A single-node run, by node affinity; Kubernetes places a gang's pods itself.
            node_pinning: true,
            // The device plugin chooses which of the node's GPUs a pod gets.
            gpu_pinning: false,
        }
    }

    fn nodes(&self) -> BackendFuture<'_, Result<Vec<EngineNode>, EngineError>> {
        Box::pin(self.list_nodes())
    }

    fn submit<'a>(&'a self, job: &'a EngineJob) -> BackendFuture<'a, Result<Submitted, EngineError>> {
        Box::pin(self.submit_job(job))
    }

    fn find<'a>(&'a self, prefix: &'a str) -> BackendFuture<'a, Result<Vec<Found>, EngineError>> {
        Box::pin(self.find_runs(prefix))
    }

    fn states<'a>(&'a self, native_ids: &'a [String]) -> BackendFuture<'a, Result<Vec<NativeState>, EngineError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut states = Vec::with_capacity(native_ids.len());
            // A few at a time: each is one or two GETs, and the API server limits a client's requests in flight.
            for ids in native_ids.chunks(STATES_IN_FLIGHT) {
                let batch = futures_util::future::join_all(ids.iter().map(|id| self.state(&client, id))).await;
                for state in batch {
                    states.push(state?);
                }
            }
            Ok(states)
        })
    }

    fn output<'a>(
        &'a self,
        native_id: &'a str,
        offset: u64,
        max: usize,
    ) -> BackendFuture<'a, Result<Vec<u8>, EngineError>> {
        Box::pin(self.read_output(native_id, offset, max))
    }

    fn cancel<'a>(&'a self, native_id: &'a str) -> BackendFuture<'a, Result<(), EngineError>> {
        Box::pin(self.cancel_run(native_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dns_labels() {
        assert_eq!(namespace_for("ferry-", "ml"), "ferry-ml");
        let lossy = namespace_for("ferry-", "ML Team");
        assert!(lossy.starts_with("ferry-ml-team-") && lossy.len() == "ferry-ml-team-".len() + 8, "{lossy}");
        assert_ne!(namespace_for("ferry-", "ml_team"), namespace_for("ferry-", "ml-team"));
        assert_ne!(namespace_for("ferry-", &"x".repeat(100)), namespace_for("ferry-", &"x".repeat(101)));
        for project in ["", "---", "line one\nline two\n#SBATCH --wrap=touch", &"x".repeat(200), "é"] {
            let ns = namespace_for("ferry-", project);
            assert!(ns.len() <= 63, "{ns}");
            assert!(ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{ns}");
            assert!(!ns.starts_with('-') && !ns.ends_with('-'), "{ns}");
        }
        assert!(!namespace_for("", "").starts_with('-'));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("8"), Some(8.0));
        assert_eq!(quantity_as(Some(&Quantity("7910m".into())), 1000.0), 7910);
        assert_eq!(quantity_as(Some(&Quantity("16392340Ki".into())), 1.0), 16392340 * 1024);
        assert_eq!(quantity_as(Some(&Quantity("1e3".into())), 1.0), 1000);
        assert_eq!(quantity_as(Some(&Quantity("100M".into())), 1.0), 100_000_000);
        assert_eq!(quantity_as(Some(&Quantity("0.5".into())), 1000.0), 500);
        assert_eq!(parse_quantity("12x"), None);
        assert_eq!(parse_quantity(""), None);
    }

    #[test]
    fn tolerations_follow_kubernetes() {
        let t = |key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>| Toleration {
            key: key.map(Into::into),
            operator: Some(op.into()),
            value: value.map(Into::into),
            effect: effect.map(Into::into),
            toleration_seconds: None,
        };
        assert!(tolerates(&t(None, "Exists", None, None), "any", None, "NoSchedule"));
        assert!(tolerates(&t(Some("gpu"), "Exists", None, Some("NoSchedule")), "gpu", Some("x"), "NoSchedule"));
        assert!(!tolerates(&t(Some("gpu"), "Exists", None, Some("NoExecute")), "gpu", None, "NoSchedule"));
        assert!(tolerates(&t(Some("gpu"), "Equal", Some("a"), None), "gpu", Some("a"), "NoSchedule"));
        assert!(!tolerates(&t(Some("gpu"), "Equal", Some("a"), None), "gpu", Some("b"), "NoSchedule"));
    }
}
