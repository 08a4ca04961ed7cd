//! Nodes on the wire: capacity, allocation and measured utilisation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One GPU as the node's agent found or was told about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Gpu {
    /// The device index, as `CUDA_VISIBLE_DEVICES` numbers it.
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
    pub uuid: Option<String>,
    /// `nvml` when the driver reported it, `config` when declared in the agent's configuration.
    pub source: String,
}

/// What a node measured of itself at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeUsage {
    pub sampled_at_us: i64,
    /// CPU use across all cores, in thousandths of a CPU (1500 = one and a half cores busy).
    pub cpu_millis_used: u64,
    pub memory_used_bytes: u64,
    pub gpus: Vec<GpuUsage>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuUsage {
    pub index: u32,
    /// Absent when the driver would not say: a GPU without telemetry shows as "no data", never as 0%.
    pub utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub temperature_c: Option<u32>,
    pub power_mw: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Ready,
    /// The agent has not reported within the node timeout.
    NotReady,
}

/// A node as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub name: String,
    pub pool: String,
    pub state: NodeState,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: Vec<Gpu>,
    pub labels: BTreeMap<String, String>,
    pub allocated_cpu_millis: u64,
    pub allocated_memory_bytes: u64,
    pub allocated_gpus: u32,
    pub usage: Option<NodeUsage>,
    pub last_seen_us: i64,
    pub agent_version: String,
    /// How the agent enforces limits: `cgroup-v1`, `cgroup-v2`, or `none` (measuring only).
    pub limits: String,
    pub running_jobs: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// A pool: where its capacity comes from, its place in the order, and how much of it is there now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: String,
    /// `agent` for nodes running `ferry agent`; otherwise the engine: `slurm`, `ray`, `spark`...
    pub kind: String,
    /// Lower fills first; absent for a pool that only its nodes name (not in the configuration).
    pub order: Option<i32>,
    /// Used only when the pools before it cannot hold a job.
    pub burst: bool,
    pub nodes: u32,
    pub nodes_ready: u32,
    /// Capacity of its ready nodes.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// For an engine pool, whether Ferry reaches the engine.
    #[serde(default)]
    pub engine: Option<EngineHealth>,
    /// What the pool's backend can do; the scheduler reads `images` and `gangs` to place jobs.
    pub capabilities: Capabilities,
    /// For an elastic pool: its cloud, its machines by state and what they cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elastic: Option<ElasticPoolStatus>,
}

/// An elastic pool's cloud and machines, as `ferry pools` shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ElasticPoolStatus {
    /// `aws`, `gcp` or `azure`.
    pub provider: String,
    pub region: String,
    pub zones: Vec<String>,
    pub instance_type: String,
    /// `on-demand` or `spot`.
    pub market: String,
    /// What one machine costs an hour.
    pub price_hour: f64,
    pub max_nodes: u32,
    /// Machines asked for that have not joined yet.
    pub starting: u32,
    /// Joined machines running jobs, and those holding none.
    pub busy: u32,
    pub idle: u32,
    /// Being given back.
    pub releasing: u32,
    /// What the pool's machines have cost in all, from each launch request to its end (or now).
    pub spend: f64,
    /// What the pool's machines running now cost an hour.
    pub spend_hour: f64,
    /// Set while the pool is skipped after failing to start machines: until when, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_until_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_reason: Option<String>,
    /// Zones skipped for a while after refusing for capacity (or losing a spot machine), with until when and why.
    #[serde(default)]
    pub zones_cooling: Vec<ZoneCooling>,
    /// The last thing the provider refused, as it said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Its machines not yet ended, oldest first.
    pub machines: Vec<CloudMachine>,
    /// Its latest burst decisions and what came of them, oldest first.
    #[serde(default)]
    pub events: Vec<CloudEvent>,
}

/// Something the scheduler asked of an elastic pool, or that came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CloudEvent {
    pub at_us: i64,
    /// `provision` (machines asked for), `release` (an idle node given back), `abandon` (machines that did not join
    /// in time), `failed` (the provider could not start machines) or `gone` (a machine ended).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// How many machines it concerned.
    pub nodes: u32,
    /// Why, in words.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ZoneCooling {
    pub zone: String,
    pub until_us: i64,
    pub reason: String,
}

/// One machine rented for an elastic pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CloudMachine {
    pub node: String,
    /// `requested`, `launched`, `joined` or `terminating`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    pub requested_at_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_at_us: Option<i64>,
    /// What it has cost so far.
    pub cost: f64,
}

/// What a pool's backend can do beyond starting and stopping runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// Runs jobs in container images (`--image`); only such pools take a job with one.
    pub images: bool,
    /// Runs multi-node jobs (`--nodes`); only such pools take one.
    pub gangs: bool,
    /// Measures each GPU's use; elsewhere GPU utilisation is "no data".
    pub gpus_measured: bool,
    /// Runs have a native id and form in the engine (`ferry show --native`), which its own tools also show.
    pub native_view: bool,
    /// A run lands on the node the scheduler chose (else the engine may choose another node of the pool).
    pub node_pinning: bool,
    /// A run gets the GPUs the scheduler chose, by index (else the engine picks which of the node's GPUs).
    pub gpu_pinning: bool,
}

impl Capabilities {
    /// The capabilities that are there, in words, for tables: `images, gangs, GPUs measured, ...`.
    pub fn words(&self) -> Vec<&'static str> {
        let all = [
            (self.images, "images"),
            (self.gangs, "gangs"),
            (self.gpus_measured, "GPUs measured"),
            (self.native_view, "native view"),
            (self.node_pinning, "node pinning"),
            (self.gpu_pinning, "GPU pinning"),
        ];
        all.into_iter().filter(|(on, _)| *on).map(|(_, word)| word).collect()
    }
}

/// What the server's bridge to an engine last saw of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EngineHealth {
    /// Whether the engine answered the bridge's last call for its nodes.
    pub answering: bool,
    /// Since when it has (or has not) answered; absent before the first call.
    pub since_us: Option<i64>,
    /// The last failure, while it does not answer.
    pub error: Option<String>,
}

/// A pool defined at run time (`ferry pool add` / `update`): the TOML of one `[[pool]]` table, as the server's
/// configuration file writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolDefinition {
    pub definition: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<Pool>,
}
