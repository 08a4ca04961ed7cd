//! Telemetry on the wire: what agents measured, sample by sample, and the time series the server answers with.
//!
//! An agent samples its node and every run it supervises once a second, keeps the samples in a bounded spool on its
//! own disk, and sends them in batches (`POST /api/v1/agent/telemetry`) until the server acknowledges them, so a
//! network partition delays samples but does not lose them. Every figure here was measured: a value the agent could
//! not read is absent (`None`), never 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::agent::RunRef;
use crate::nodes::NodeUsage;

/// The most samples one telemetry batch may carry; an agent with more sends several batches.
pub const TELEMETRY_SAMPLES_MAX: usize = 600;
/// The most runs one sample may describe.
pub const SAMPLE_RUNS_MAX: usize = 4096;
/// How far an agent's clock may be from the server's before its registration and its telemetry are refused:
/// timestamps further off than this would put measurements at the wrong place in every time series.
pub const CLOCK_SKEW_MAX_US: i64 = 120 * 1_000_000;
/// How old a sample may be when it arrives: older ones are outside the finest time-series tier and are dropped
/// (counted in the acknowledgement). One day, the raw tier's retention.
pub const SAMPLE_AGE_MAX_US: i64 = 24 * 3600 * 1_000_000;

/// One run's use of its node at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunSample {
    pub run: RunRef,
    /// CPU used since the previous sample, in thousandths of a CPU.
    pub cpu_millis_used: Option<u64>,
    /// Memory in use: the cgroup's charge, or the resident memory of the run's processes where there is no cgroup.
    pub memory_used_bytes: Option<u64>,
    /// Where the CPU and memory figures came from: `cgroup-v2`, `cgroup-v1` or `proc`.
    pub source: String,
    /// The run's use of each GPU it holds, by device index.
    #[serde(default)]
    pub gpus: Vec<RunGpuSample>,
}

/// One run's use of one GPU, from NVML: per process where the driver gives it, otherwise the whole device's when
/// the run holds the device alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunGpuSample {
    pub index: u32,
    pub utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
}

/// Everything one node measured at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetrySample {
    /// The node as a whole: CPU, memory and each GPU, with the sample's time (the agent's clock, microseconds
    /// since the Unix epoch).
    pub node: NodeUsage,
    #[serde(default)]
    pub runs: Vec<RunSample>,
}

/// A batch of samples from one agent, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryBatch {
    pub node: String,
    /// The agent's clock when it sent the batch, to check it against the server's.
    pub sent_at_us: i64,
    pub samples: Vec<TelemetrySample>,
    /// Samples the agent had to drop because its spool was full (counted since it started); the server exports the
    /// figure so that a gap in the series is explained.
    #[serde(default)]
    pub dropped: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TelemetryAck {
    /// Samples stored.
    pub accepted: u64,
    /// Samples too old to store (older than a day); the agent must not send them again.
    pub too_old: u64,
}

/// What a time-series query asks for (`GET /api/v1/series`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// The metric, e.g. `gpu_utilization`; `GET /api/v1/series/metrics` lists them.
    pub metric: String,
    /// The kind of thing the series are about: node, gpu, job, user, project, team or pool.
    pub by: String,
    /// Only this one, e.g. `node-a/0` for a GPU or `ml` for a team; all of that kind when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// The start, as an RFC 3339 time or a duration back from now (`90d`, `1h`); one hour ago when absent.
    #[serde(default)]
    pub start: Option<String>,
    /// The end, like `start`; now when absent.
    #[serde(default)]
    pub end: Option<String>,
    /// The step between points (`10s`, `1m`, `1h`); chosen to give about 300 points when absent.
    #[serde(default)]
    pub step: Option<String>,
}

/// One series, in columns: point `i` covers the step starting at `start_us + i * step_s` seconds of the answer, and
/// holds the mean and the maximum of the samples in it, or `null` for both where nothing was measured ("no data",
/// never 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Series {
    pub id: String,
    pub mean: Vec<Option<f64>>,
    pub max: Vec<Option<f64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeriesAnswer {
    pub metric: String,
    pub by: String,
    pub unit: String,
    /// The start of the first step, microseconds since the Unix epoch.
    pub start_us: i64,
    pub end_us: i64,
    pub step_s: u64,
    /// The storage tier the points came from: `raw` (10 s), `1m` or `1h`.
    pub tier: String,
    /// Every series of the kind asked for (or the one named), in id order.
    pub series: Vec<Series>,
}

/// A metric the server keeps as time series, and the kinds of thing it is kept for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricInfo {
    pub name: String,
    pub unit: String,
    pub help: String,
    pub by: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MetricList {
    pub metrics: Vec<MetricInfo>,
    /// Each tier's step and how long it is kept, e.g. `raw` → `10s for 1d`.
    pub tiers: BTreeMap<String, String>,
}
