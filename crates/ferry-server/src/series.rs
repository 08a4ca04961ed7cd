//! Capacity, allocation and measured use as time series, per GPU, node, job, user, project, team, pool and for the
//! whole installation, kept in the embedded store `ferry-tsdb` (raw 10 s buckets for a day, 1-minute for 90 days,
//! 1-hour for five years).
//!
//! Two sources feed it:
//! - Agents' samples, as they arrive (`record_batch`): each GPU's and node's measured use, and each job's (summed over
//!   a gang's workers). Samples that arrive late, after a network partition heals, land at the time they were taken.
//! - A tick every `TICK` (`record_tick`): capacity and allocation from the scheduler's state, and measured use summed
//!   per user, project, team, pool and installation from the freshest sample of each node and run (a sample older
//!   than `FRESH_US` counts as no data). These sums are taken live, so use that arrives late fills the GPU, node and
//!   job series but not the sums for the time it was cut off.
//!
//! Allocation is never utilisation: a series named `*_used` or `gpu_utilization` only ever holds measurements.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_api::jobs::JobUsage;
use ferry_api::telemetry::{MetricInfo, TelemetryBatch};
use ferry_store::NodeRecord;
use ferry_tsdb::{Point, SeriesKey, Tsdb};

use crate::driver::RunMetrics;
use crate::telemetry::Telemetry;

/// How often capacity, allocation and the sums are recorded.
pub const TICK: Duration = Duration::from_secs(10);
/// How old the latest sample of a node or run may be and still count in the live sums.
pub const FRESH_US: i64 = 30 * 1_000_000;

const KIND_GPU: &str = "gpu";
const KIND_NODE: &str = "node";
const KIND_JOB: &str = "job";
const KIND_USER: &str = "user";
const KIND_PROJECT: &str = "project";
const KIND_TEAM: &str = "team";
const KIND_POOL: &str = "pool";
/// The whole installation; its one id is `all`.
const KIND_ALL: &str = "all";
const ALL: &str = "all";

const OWNERS: [&str; 3] = [KIND_USER, KIND_PROJECT, KIND_TEAM];

/// One metric kept as time series: its name, unit, meaning and the kinds of thing it is kept for.
struct Metric {
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    by: &'static [&'static str],
}

const EVERY: &[&str] = &[KIND_GPU, KIND_NODE, KIND_JOB, KIND_USER, KIND_PROJECT, KIND_TEAM, KIND_POOL, KIND_ALL];
const HOLDERS: &[&str] = &[KIND_NODE, KIND_JOB, KIND_USER, KIND_PROJECT, KIND_TEAM, KIND_POOL, KIND_ALL];
const PLACES: &[&str] = &[KIND_NODE, KIND_POOL, KIND_ALL];

const METRICS: &[Metric] = &[
    Metric { name: "gpu_capacity", unit: "GPUs", help: "GPUs of ready nodes", by: PLACES },
    Metric { name: "gpu_allocated", unit: "GPUs", help: "GPUs held by starting and running jobs", by: EVERY },
    Metric {
        name: "gpu_utilization",
        unit: "percent",
        help: "Measured utilisation (NVML), the mean over the GPUs measured; for users, projects and teams, over the \
               GPUs their jobs hold",
        by: EVERY,
    },
    Metric {
        name: "gpu_used",
        unit: "GPUs",
        help: "Measured GPU use as busy-GPU equivalents: the sum of utilisation/100 over the GPUs",
        by: HOLDERS,
    },
    Metric { name: "gpu_memory_used", unit: "bytes", help: "Measured GPU memory in use", by: &[KIND_GPU, KIND_JOB] },
    Metric { name: "cpu_capacity", unit: "cores", help: "CPUs of ready nodes", by: PLACES },
    Metric { name: "cpu_allocated", unit: "cores", help: "CPUs held by starting and running jobs", by: HOLDERS },
    Metric { name: "cpu_used", unit: "cores", help: "Measured CPU use", by: HOLDERS },
    Metric { name: "memory_capacity", unit: "bytes", help: "Memory of ready nodes", by: PLACES },
    Metric { name: "memory_allocated", unit: "bytes", help: "Memory held by starting and running jobs", by: HOLDERS },
    Metric { name: "memory_used", unit: "bytes", help: "Measured memory in use", by: HOLDERS },
];

/// Every metric kept, for `GET /api/v1/series/metrics`.
pub fn catalogue() -> Vec<MetricInfo> {
    METRICS
        .iter()
        .map(|m| MetricInfo {
            name: m.name.to_string(),
            unit: m.unit.to_string(),
            help: m.help.to_string(),
            by: m.by.iter().map(|k| k.to_string()).collect(),
        })
        .collect()
}

/// The unit of `metric` when `kind` is one it is kept for; otherwise an error naming what is.
pub fn check(metric: &str, kind: &str) -> Result<&'static str, String> {
    let Some(found) = METRICS.iter().find(|m| m.name == metric) else {
        let names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        return Err(format!("there is no metric `{metric}`; the metrics kept are {}", names.join(", ")));
    };
    if !found.by.contains(&kind) {
        return Err(format!("`{metric}` is not kept by `{kind}`; it is kept by {}", found.by.join(", ")));
    }
    Ok(found.unit)
}

/// A point before it is handed to the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Owned {
    pub metric: &'static str,
    pub kind: &'static str,
    pub id: String,
    pub t_us: i64,
    pub value: f64,
}

impl Owned {
    fn new(metric: &'static str, kind: &'static str, id: impl Into<String>, t_us: i64, value: f64) -> Owned {
        Owned { metric, kind, id: id.into(), t_us, value }
    }
}

/// The points to store for each owned point, borrowing its strings.
pub fn borrowed(points: &[Owned]) -> Vec<Point<'_>> {
    points
        .iter()
        .map(|p| Point { key: SeriesKey { metric: p.metric, kind: p.kind, id: &p.id }, t_us: p.t_us, value: p.value })
        .collect()
}

/// A GPU's series id: its node and device index.
pub fn gpu_id(node: &str, index: u32) -> String {
    format!("{node}/{index}")
}

/// A project's series id: projects are named within their team.
fn project_id(team: &str, project: &str) -> String {
    if team.is_empty() {
        project.to_string()
    } else {
        format!("{team}/{project}")
    }
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The points of a checked batch: the node's and its GPUs' measured use at each sample's time, and each job's, summed
/// over its workers from their latest samples (`telemetry` has already taken the batch in).
pub fn record_batch(batch: &TelemetryBatch, telemetry: &Telemetry, oldest_us: i64) -> Vec<Owned> {
    let mut points = Vec::new();
    for sample in batch.samples.iter().filter(|s| s.node.sampled_at_us >= oldest_us) {
        let node = &sample.node;
        let t = node.sampled_at_us;
        points.push(Owned::new("cpu_used", KIND_NODE, &batch.node, t, node.cpu_millis_used as f64 / 1000.0));
        points.push(Owned::new("memory_used", KIND_NODE, &batch.node, t, node.memory_used_bytes as f64));
        let mut utilization = Vec::new();
        for gpu in &node.gpus {
            let id = gpu_id(&batch.node, gpu.index);
            if let Some(percent) = gpu.utilization_percent {
                utilization.push(f64::from(percent));
                points.push(Owned::new("gpu_utilization", KIND_GPU, id.clone(), t, f64::from(percent)));
            }
            if let Some(bytes) = gpu.memory_used_bytes {
                points.push(Owned::new("gpu_memory_used", KIND_GPU, id, t, bytes as f64));
            }
        }
        if let Some(mean) = mean(&utilization) {
            points.push(Owned::new("gpu_utilization", KIND_NODE, &batch.node, t, mean));
            points.push(Owned::new("gpu_used", KIND_NODE, &batch.node, t, utilization.iter().sum::<f64>() / 100.0));
        }
        for run in &sample.runs {
            let job = run.run.job_id.to_string();
            // A gang's job is the sum of its workers: the latest of each, taken now. A worker's sample that is not its
            // newest (it arrived late) stands for the job only when the job has one worker.
            let workers = telemetry.latest_runs(run.run.job_id);
            let newest = workers.iter().any(|w| w.sample.run == run.run && w.sampled_at_us == t);
            let usage = if newest {
                let attempt: Vec<_> =
                    workers.iter().filter(|w| w.sample.run.attempt == run.run.attempt).cloned().collect();
                crate::telemetry::sum_runs(&attempt)
            } else if workers.iter().all(|w| w.sample.run.rank == 0) {
                Some(usage_of_one(run, t))
            } else {
                None
            };
            if let Some(usage) = usage {
                job_points(&mut points, &job, t, &usage, run.gpus.len());
            }
        }
    }
    points
}

fn usage_of_one(run: &ferry_api::telemetry::RunSample, t: i64) -> JobUsage {
    let utilization: Vec<f64> = run.gpus.iter().filter_map(|g| g.utilization_percent).map(f64::from).collect();
    let memory: Vec<u64> = run.gpus.iter().filter_map(|g| g.memory_used_bytes).collect();
    JobUsage {
        sampled_at_us: t,
        workers: 1,
        cpu_millis_used: run.cpu_millis_used,
        memory_used_bytes: run.memory_used_bytes,
        gpu_utilization_percent: mean(&utilization),
        gpu_memory_used_bytes: (!memory.is_empty()).then(|| memory.iter().sum()),
    }
}

fn job_points(points: &mut Vec<Owned>, job: &str, t: i64, usage: &JobUsage, gpus: usize) {
    if let Some(cpu) = usage.cpu_millis_used {
        points.push(Owned::new("cpu_used", KIND_JOB, job, t, cpu as f64 / 1000.0));
    }
    if let Some(memory) = usage.memory_used_bytes {
        points.push(Owned::new("memory_used", KIND_JOB, job, t, memory as f64));
    }
    if let Some(percent) = usage.gpu_utilization_percent {
        points.push(Owned::new("gpu_utilization", KIND_JOB, job, t, percent));
        let measured = gpus.max(1) as f64 * usage.workers.max(1) as f64;
        points.push(Owned::new("gpu_used", KIND_JOB, job, t, percent / 100.0 * measured));
    }
    if let Some(bytes) = usage.gpu_memory_used_bytes {
        points.push(Owned::new("gpu_memory_used", KIND_JOB, job, t, bytes as f64));
    }
}

/// Sums kept per owner (user, project, team), pool and the installation.
#[derive(Default)]
struct Sums {
    gpu_capacity: f64,
    cpu_capacity: f64,
    memory_capacity: f64,
    gpu_allocated: f64,
    cpu_allocated: f64,
    memory_allocated: f64,
    /// Measured utilisation of each GPU counted, in percent.
    gpu_utilization: Vec<f64>,
    cpu_used: Option<f64>,
    memory_used: Option<f64>,
}

impl Sums {
    fn hold(&mut self, gpus: f64, cpu_cores: f64, memory: f64) {
        self.gpu_allocated += gpus;
        self.cpu_allocated += cpu_cores;
        self.memory_allocated += memory;
    }

    fn add_used(&mut self, cpu_cores: Option<f64>, memory: Option<f64>, gpus: &[f64]) {
        if let Some(cpu) = cpu_cores {
            *self.cpu_used.get_or_insert(0.0) += cpu;
        }
        if let Some(memory) = memory {
            *self.memory_used.get_or_insert(0.0) += memory;
        }
        self.gpu_utilization.extend_from_slice(gpus);
    }

    fn points(&self, out: &mut Vec<Owned>, kind: &'static str, id: &str, t: i64, places: bool) {
        if places {
            out.push(Owned::new("gpu_capacity", kind, id, t, self.gpu_capacity));
            out.push(Owned::new("cpu_capacity", kind, id, t, self.cpu_capacity));
            out.push(Owned::new("memory_capacity", kind, id, t, self.memory_capacity));
        }
        out.push(Owned::new("gpu_allocated", kind, id, t, self.gpu_allocated));
        out.push(Owned::new("cpu_allocated", kind, id, t, self.cpu_allocated));
        out.push(Owned::new("memory_allocated", kind, id, t, self.memory_allocated));
        if let Some(mean) = mean(&self.gpu_utilization) {
            out.push(Owned::new("gpu_utilization", kind, id, t, mean));
            out.push(Owned::new("gpu_used", kind, id, t, self.gpu_utilization.iter().sum::<f64>() / 100.0));
        }
        if let Some(cpu) = self.cpu_used {
            out.push(Owned::new("cpu_used", kind, id, t, cpu));
        }
        if let Some(memory) = self.memory_used {
            out.push(Owned::new("memory_used", kind, id, t, memory));
        }
    }
}

/// The points of one tick at `now_us`: capacity and allocation of every GPU, node, job, owner and pool, and the
/// measured use of owners, pools and the installation from the freshest samples.
///
/// `known` are the users, projects and teams the store has series for: those that hold nothing now get zeros, so
/// that a mean over any period is a mean over time, and usage hours add up.
pub fn record_tick(
    now_us: i64,
    nodes: &[NodeRecord],
    runs: &[RunMetrics],
    telemetry: &Telemetry,
    known: &[(&'static str, String)],
) -> Vec<Owned> {
    let mut points = Vec::new();
    let fresh = |at: i64| now_us.saturating_sub(at) <= FRESH_US;
    let ready: Vec<&NodeRecord> = nodes.iter().filter(|n| n.ready).collect();
    let pool_of: BTreeMap<&str, &str> = nodes.iter().map(|n| (n.name.as_str(), n.pool.as_str())).collect();

    let mut all = Sums::default();
    let mut pools: BTreeMap<&str, Sums> = BTreeMap::new();
    let mut node_alloc: BTreeMap<&str, Sums> = BTreeMap::new();
    for node in &ready {
        let usage = node.usage.as_ref().filter(|u| fresh(u.sampled_at_us));
        let gpus: Vec<f64> = usage
            .map(|u| u.gpus.iter().filter_map(|g| g.utilization_percent).map(f64::from).collect())
            .unwrap_or_default();
        let cpu = usage.map(|u| u.cpu_millis_used as f64 / 1000.0);
        let memory = usage.map(|u| u.memory_used_bytes as f64);
        for sums in [&mut all, pools.entry(node.pool.as_str()).or_default()] {
            sums.gpu_capacity += node.gpus.len() as f64;
            sums.cpu_capacity += node.cpu_millis as f64 / 1000.0;
            sums.memory_capacity += node.memory_bytes as f64;
            sums.add_used(cpu, memory, &gpus);
        }
        let mine = node_alloc.entry(node.name.as_str()).or_default();
        mine.gpu_capacity = node.gpus.len() as f64;
        mine.cpu_capacity = node.cpu_millis as f64 / 1000.0;
        mine.memory_capacity = node.memory_bytes as f64;
    }

    let mut owners: BTreeMap<(&'static str, String), Sums> = BTreeMap::new();
    let mut jobs: BTreeMap<u64, Sums> = BTreeMap::new();
    let mut gpu_held: BTreeMap<String, f64> = BTreeMap::new();
    for run in runs {
        let share = if run.gpu_share_milli > 0 { f64::from(run.gpu_share_milli) / 1000.0 } else { 1.0 };
        let gpus = if run.gpu_share_milli > 0 { share } else { f64::from(run.resources.gpus) };
        let cpu = run.resources.cpu_millis as f64 / 1000.0;
        let memory = run.resources.memory_bytes as f64;
        for index in &run.gpu_ids {
            *gpu_held.entry(gpu_id(&run.node, *index)).or_default() += share;
        }
        let owner_keys: Vec<(&'static str, String)> = [
            (KIND_USER, run.user.clone()),
            (KIND_PROJECT, if run.project.is_empty() { String::new() } else { project_id(&run.team, &run.project) }),
            (KIND_TEAM, run.team.clone()),
        ]
        .into_iter()
        .filter(|(_, id)| !id.is_empty())
        .collect();
        let pool = pool_of.get(run.node.as_str()).copied().unwrap_or_default();
        for key in &owner_keys {
            owners.entry(key.clone()).or_default().hold(gpus, cpu, memory);
        }
        jobs.entry(run.job_id).or_default().hold(gpus, cpu, memory);
        all.hold(gpus, cpu, memory);
        pools.entry(pool).or_default().hold(gpus, cpu, memory);
        node_alloc.entry(run.node.as_str()).or_default().hold(gpus, cpu, memory);
        // Measured use of the run, from its freshest sample; each worker of a gang counts once.
        let latest = telemetry.latest_runs(run.job_id);
        let Some(sample) = latest.iter().find(|l| l.node == run.node && fresh(l.sampled_at_us)) else { continue };
        let cpu_used = sample.sample.cpu_millis_used.map(|c| c as f64 / 1000.0);
        let memory_used = sample.sample.memory_used_bytes.map(|m| m as f64);
        let gpus_used: Vec<f64> =
            sample.sample.gpus.iter().filter_map(|g| g.utilization_percent).map(f64::from).collect();
        for key in &owner_keys {
            owners.entry(key.clone()).or_default().add_used(cpu_used, memory_used, &gpus_used);
        }
    }

    for node in &ready {
        for gpu in &node.gpus {
            let id = gpu_id(&node.name, gpu.index);
            let held = gpu_held.get(&id).copied().unwrap_or(0.0).min(1.0);
            points.push(Owned::new("gpu_allocated", KIND_GPU, id, now_us, held));
        }
    }
    for (node, sums) in &node_alloc {
        // A node's measured use comes from its samples as they arrive; only capacity and allocation here.
        points.push(Owned::new("gpu_capacity", KIND_NODE, *node, now_us, sums.gpu_capacity));
        points.push(Owned::new("cpu_capacity", KIND_NODE, *node, now_us, sums.cpu_capacity));
        points.push(Owned::new("memory_capacity", KIND_NODE, *node, now_us, sums.memory_capacity));
        points.push(Owned::new("gpu_allocated", KIND_NODE, *node, now_us, sums.gpu_allocated));
        points.push(Owned::new("cpu_allocated", KIND_NODE, *node, now_us, sums.cpu_allocated));
        points.push(Owned::new("memory_allocated", KIND_NODE, *node, now_us, sums.memory_allocated));
    }
    for (job, sums) in &jobs {
        let id = job.to_string();
        points.push(Owned::new("gpu_allocated", KIND_JOB, id.clone(), now_us, sums.gpu_allocated));
        points.push(Owned::new("cpu_allocated", KIND_JOB, id.clone(), now_us, sums.cpu_allocated));
        points.push(Owned::new("memory_allocated", KIND_JOB, id, now_us, sums.memory_allocated));
    }
    for ((kind, id), sums) in &owners {
        debug_assert!(OWNERS.contains(kind));
        sums.points(&mut points, kind, id, now_us, false);
    }
    // Known owners that hold nothing now: they have nothing allocated and use nothing.
    for (kind, id) in known.iter().filter(|(kind, id)| !owners.contains_key(&(*kind, id.clone()))) {
        for metric in ["gpu_allocated", "cpu_allocated", "memory_allocated", "gpu_used", "cpu_used", "memory_used"] {
            points.push(Owned::new(metric, kind, id.clone(), now_us, 0.0));
        }
    }
    for (pool, sums) in &pools {
        if !pool.is_empty() {
            sums.points(&mut points, KIND_POOL, pool, now_us, true);
        }
    }
    all.points(&mut points, KIND_ALL, ALL, now_us, true);
    points
}

/// How often what was ingested is made durable: a crash loses at most this much of the time series.
pub const FLUSH: Duration = Duration::from_secs(2);

/// Records a tick every `TICK`, flushes every `FLUSH` and runs the store's upkeep (expiry, compaction) with each
/// tick, all on blocking threads; runs until the server aborts it.
pub async fn record(
    series: std::sync::Arc<Tsdb>,
    store: ferry_store::Store,
    driver: crate::driver::DriverHandle,
    telemetry: std::sync::Arc<Telemetry>,
) {
    let mut flush = tokio::time::interval(FLUSH);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = flush.tick() => {
                let series = series.clone();
                let flushed = tokio::task::spawn_blocking(move || series.flush()).await;
                if let Ok(Err(e)) = flushed {
                    tracing::error!(error = %e, "cannot write time series to disk; retrying");
                }
            }
            _ = tick.tick() => {
                let Ok(runs) = driver.ask(|reply| crate::driver::Command::Metrics { reply }).await else { return };
                let nodes = match store.nodes().await {
                    Ok(nodes) => nodes,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read nodes for the time series; skipping this tick");
                        continue;
                    }
                };
                let now = crate::driver::now_us();
                let known: Vec<(&'static str, String)> = OWNERS
                    .iter()
                    .flat_map(|kind| series.kinds_and_ids("gpu_allocated", kind).into_iter().map(move |id| (*kind, id)))
                    .collect();
                let points = record_tick(now, &nodes, &runs.runs, &telemetry, &known);
                let series = series.clone();
                let done = tokio::task::spawn_blocking(move || {
                    series.ingest(&borrowed(&points))?;
                    series.maintain(now)
                })
                .await;
                if let Ok(Err(e)) = done {
                    tracing::error!(error = %e, "cannot record capacity and allocation in the time series");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_api::agent::RunRef;
    use ferry_api::nodes::{Gpu, GpuUsage, NodeUsage};
    use ferry_api::telemetry::{RunGpuSample, RunSample, TelemetrySample};
    use ferry_core::Resources;

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn node(name: &str, pool: &str, gpus: u32, usage: Option<NodeUsage>) -> NodeRecord {
        let gpu =
            |index| Gpu { index, model: "A100".into(), memory_bytes: 80 << 30, uuid: None, source: "config".into() };
        NodeRecord {
            name: name.into(),
            pool: pool.into(),
            cpu_millis: 8000,
            memory_bytes: 64 << 30,
            gpus: (0..gpus).map(gpu).collect(),
            labels: BTreeMap::new(),
            agent_version: "test".into(),
            limits: "none".into(),
            address: None,
            ready: true,
            usage,
            last_seen_us: NOW,
        }
    }

    fn run(job_id: u64, node: &str, gpu_ids: Vec<u32>) -> RunMetrics {
        RunMetrics {
            job_id,
            user: "alice".into(),
            team: "vision".into(),
            project: "detection".into(),
            node: node.into(),
            resources: Resources::new(2000, 8 << 30, gpu_ids.len() as u32),
            gpu_share_milli: 0,
            gpu_ids,
        }
    }

    fn run_sample(job_id: u64, busy: Option<u32>) -> RunSample {
        RunSample {
            run: RunRef::new(job_id, 1),
            cpu_millis_used: Some(1500),
            memory_used_bytes: Some(1 << 30),
            source: "proc".into(),
            gpus: vec![RunGpuSample { index: 0, utilization_percent: busy, memory_used_bytes: None }],
        }
    }

    fn value(points: &[Owned], metric: &str, kind: &str, id: &str) -> Option<f64> {
        points.iter().find(|p| p.metric == metric && p.kind == kind && p.id == id).map(|p| p.value)
    }

    #[test]
    fn a_tick_records_capacity_allocation_and_the_owners_measured_use() {
        let usage = NodeUsage {
            sampled_at_us: NOW - 1_000_000,
            cpu_millis_used: 3000,
            memory_used_bytes: 16 << 30,
            gpus: vec![GpuUsage { index: 0, utilization_percent: Some(60), ..GpuUsage::default() }],
        };
        let nodes = [node("a", "local", 2, Some(usage)), node("b", "cloud", 4, None)];
        let telemetry = Telemetry::default();
        let batch = ferry_api::telemetry::TelemetryBatch {
            node: "a".into(),
            sent_at_us: NOW,
            samples: vec![TelemetrySample {
                node: NodeUsage { sampled_at_us: NOW - 1_000_000, ..NodeUsage::default() },
                runs: vec![run_sample(7, Some(60))],
            }],
            dropped: 0,
        };
        telemetry.ingest(&batch, NOW);
        let known = [(KIND_USER, "bob".to_string()), (KIND_USER, "alice".to_string())];
        let points = record_tick(NOW, &nodes, &[run(7, "a", vec![0]), run(8, "b", vec![1, 2])], &telemetry, &known);
        // Bob holds nothing now: zeros, not gaps, so his usage over any period adds up.
        assert_eq!(value(&points, "gpu_allocated", "user", "bob"), Some(0.0));
        assert_eq!(value(&points, "gpu_used", "user", "bob"), Some(0.0));
        assert_eq!(value(&points, "gpu_utilization", "user", "bob"), None);

        assert_eq!(value(&points, "gpu_capacity", "all", "all"), Some(6.0));
        assert_eq!(value(&points, "gpu_capacity", "pool", "cloud"), Some(4.0));
        assert_eq!(value(&points, "gpu_allocated", "all", "all"), Some(3.0));
        assert_eq!(value(&points, "gpu_allocated", "team", "vision"), Some(3.0));
        assert_eq!(value(&points, "gpu_allocated", "project", "vision/detection"), Some(3.0));
        assert_eq!(value(&points, "gpu_allocated", "gpu", "a/0"), Some(1.0));
        assert_eq!(value(&points, "gpu_allocated", "gpu", "a/1"), Some(0.0));
        assert_eq!(value(&points, "gpu_allocated", "job", "8"), Some(2.0));
        // Measured: only job 7 reported; job 8's GPUs are allocated but have no data, so they do not count as idle.
        assert_eq!(value(&points, "gpu_utilization", "user", "alice"), Some(60.0));
        assert_eq!(value(&points, "gpu_used", "team", "vision"), Some(0.6));
        assert_eq!(value(&points, "gpu_utilization", "pool", "local"), Some(60.0));
        assert_eq!(value(&points, "gpu_utilization", "pool", "cloud"), None);
        assert_eq!(value(&points, "cpu_used", "user", "alice"), Some(1.5));

        // A stale sample counts as no data.
        let later = record_tick(NOW + 2 * FRESH_US, &nodes, &[run(7, "a", vec![0])], &telemetry, &[]);
        assert_eq!(value(&later, "gpu_utilization", "user", "alice"), None);
        assert_eq!(value(&later, "gpu_utilization", "all", "all"), None);
        assert_eq!(value(&later, "gpu_allocated", "user", "alice"), Some(1.0));
    }

    #[test]
    fn a_batch_records_each_gpu_node_and_job_at_the_time_of_its_samples() {
        let telemetry = Telemetry::default();
        let at = NOW - 5_000_000;
        let batch = ferry_api::telemetry::TelemetryBatch {
            node: "a".into(),
            sent_at_us: NOW,
            samples: vec![TelemetrySample {
                node: NodeUsage {
                    sampled_at_us: at,
                    cpu_millis_used: 2500,
                    memory_used_bytes: 1 << 30,
                    gpus: vec![
                        GpuUsage { index: 0, utilization_percent: Some(90), ..GpuUsage::default() },
                        GpuUsage { index: 1, utilization_percent: None, ..GpuUsage::default() },
                    ],
                },
                runs: vec![run_sample(7, Some(90))],
            }],
            dropped: 0,
        };
        telemetry.ingest(&batch, NOW);
        let points = record_batch(&batch, &telemetry, NOW - 86_400_000_000);
        assert!(points.iter().all(|p| p.t_us == at));
        assert_eq!(value(&points, "gpu_utilization", "gpu", "a/0"), Some(90.0));
        assert_eq!(value(&points, "gpu_utilization", "gpu", "a/1"), None, "an unread GPU has no point, not a 0");
        assert_eq!(value(&points, "gpu_utilization", "node", "a"), Some(90.0));
        assert_eq!(value(&points, "cpu_used", "node", "a"), Some(2.5));
        assert_eq!(value(&points, "cpu_used", "job", "7"), Some(1.5));
        assert_eq!(value(&points, "gpu_used", "job", "7"), Some(0.9));
    }

    #[test]
    fn only_kept_metrics_and_kinds_can_be_asked_for() {
        assert_eq!(check("gpu_utilization", "team"), Ok("percent"));
        assert!(check("gpu_capacity", "job").unwrap_err().contains("kept by node, pool, all"));
        assert!(check("joy", "gpu").unwrap_err().contains("the metrics kept are gpu_capacity"));
        assert!(catalogue().iter().all(|m| !m.by.is_empty()));
    }
}
