//! `/metrics`: a snapshot of what the server already knows (nodes from the store, unfinished jobs and cycle times
//! from the driver, job counts from the store) rendered in the Prometheus text format.
//!
//! Rendering is pure: the handler gathers a `Snapshot`, `render` turns it into text. Only ids, users, teams,
//! projects, pools, nodes, GPU indexes and models appear as labels; job names, commands, environments and tokens
//! must never be exported, since `/metrics` needs no token. A measured figure is exported only when it was
//! measured: a GPU its agent reported no telemetry for, or a node that is not ready, has no utilisation sample
//! rather than a 0.
//!
//! The names and labels are a stable interface, documented in the README ("Prometheus metrics"); rename nothing
//! without saying so there.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use ferry_api::jobs::JobState;
use ferry_store::NodeRecord;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::driver::DriverMetrics;

/// The content type of the text `render` writes (OpenMetrics text, which Prometheus reads natively).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Everything one scrape exports, gathered at one moment.
pub struct Snapshot {
    pub now_us: i64,
    pub nodes: Vec<NodeRecord>,
    pub driver: DriverMetrics,
    /// Jobs per state over the whole history, as the store counts them.
    pub job_counts: Vec<(JobState, u64)>,
    /// Elastic pools' machines not yet ended: pool and state of each.
    pub cloud_machines: Vec<(String, String)>,
    /// What each elastic pool's machines have cost in all.
    pub cloud_spend: Vec<(String, f64)>,
}

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// A registry filled for one scrape.
#[derive(Default)]
struct Out {
    registry: Registry,
}

impl Out {
    fn gauges(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let family = Family::<Labels, FloatGauge>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
    }

    /// `name` without `_total`: the encoder appends it to the samples.
    fn counters(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, f64)>) {
        let family = Family::<Labels, Counter<f64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    fn counter(&mut self, name: &str, help: &str, value: f64) {
        let counter = Counter::<f64, AtomicU64>::default();
        counter.inc_by(value);
        self.registry.register(name, help, counter);
    }
}

fn node_labels(n: &NodeRecord) -> Labels {
    vec![("node", n.name.clone()), ("pool", n.pool.clone())]
}

/// The GPUs a run holds: whole GPUs, or its share of one.
fn run_gpus(run: &crate::driver::RunMetrics) -> f64 {
    f64::from(run.resources.gpus) + f64::from(run.gpu_share_milli) / 1000.0
}

/// The whole exposition for one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = Out::default();
    nodes(&mut out, s);
    gpus(&mut out, s);
    jobs(&mut out, s);
    cloud(&mut out, s);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &out.registry).expect("writing to a String never fails");
    text
}

fn nodes(out: &mut Out, s: &Snapshot) {
    let each = |f: &dyn Fn(&NodeRecord) -> f64| s.nodes.iter().map(|n| (node_labels(n), f(n))).collect::<Vec<_>>();
    out.gauges("ferry_node_ready", "1 while the node's agent reports within the node timeout, else 0", {
        each(&|n| if n.ready { 1.0 } else { 0.0 })
    });
    out.gauges(
        "ferry_node_heartbeat_age_seconds",
        "Seconds since the node's agent last reported",
        each(&|n| (s.now_us.saturating_sub(n.last_seen_us)).max(0) as f64 / 1e6),
    );
    out.gauges("ferry_node_cpu_millis", "CPU capacity, in thousandths of a CPU", each(&|n| n.cpu_millis as f64));
    out.gauges("ferry_node_memory_bytes", "Memory capacity", each(&|n| n.memory_bytes as f64));
    let mut by_model: BTreeMap<(&str, &str, &str), u32> = BTreeMap::new();
    for n in &s.nodes {
        for g in &n.gpus {
            *by_model.entry((n.name.as_str(), n.pool.as_str(), g.model.as_str())).or_default() += 1;
        }
    }
    out.gauges(
        "ferry_node_gpus",
        "GPUs the node has, per model",
        by_model.into_iter().map(|((node, pool, model), count)| {
            (vec![("node", node.to_string()), ("pool", pool.to_string()), ("model", model.to_string())], count.into())
        }),
    );

    let mut allocated: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for run in &s.driver.runs {
        let entry = allocated.entry(run.node.as_str()).or_default();
        entry.0 += run_gpus(run);
        entry.1 += run.resources.cpu_millis as f64;
        entry.2 += run.resources.memory_bytes as f64;
    }
    let held = |n: &NodeRecord| allocated.get(n.name.as_str()).copied().unwrap_or_default();
    out.gauges(
        "ferry_node_allocated_gpus",
        "GPUs allocated to starting and running jobs (a share of a GPU counts as its fraction)",
        each(&|n| held(n).0),
    );
    out.gauges("ferry_node_allocated_cpu_millis", "CPU allocated to starting and running jobs", each(&|n| held(n).1));
    out.gauges("ferry_node_allocated_memory_bytes", "Memory allocated to starting and running jobs", {
        each(&|n| held(n).2)
    });

    // Measured use: only from nodes that report now, so a silent node's last sample does not live on.
    let measured = || s.nodes.iter().filter(|n| n.ready).filter_map(|n| Some((n, n.usage.as_ref()?)));
    out.gauges(
        "ferry_node_cpu_used_millis",
        "CPU in use on the node as its agent measured it, in thousandths of a CPU",
        measured().map(|(n, u)| (node_labels(n), u.cpu_millis_used as f64)),
    );
    out.gauges(
        "ferry_node_memory_used_bytes",
        "Memory in use on the node as its agent measured it",
        measured().map(|(n, u)| (node_labels(n), u.memory_used_bytes as f64)),
    );
}

fn gpus(out: &mut Out, s: &Snapshot) {
    let labels = |n: &NodeRecord, index: u32| {
        let model = n.gpus.iter().find(|g| g.index == index).map(|g| g.model.clone()).unwrap_or_default();
        let mut l = node_labels(n);
        l.extend([("gpu", index.to_string()), ("model", model)]);
        l
    };
    out.gauges(
        "ferry_gpu_memory_bytes",
        "Memory of each GPU",
        s.nodes.iter().flat_map(|n| n.gpus.iter().map(move |g| (labels(n, g.index), g.memory_bytes as f64))),
    );
    // Allocation is what the scheduler holds, not a measurement: a free GPU is a 0.
    let mut held: BTreeMap<(&str, u32), f64> = BTreeMap::new();
    for run in &s.driver.runs {
        let each = if run.gpu_share_milli > 0 { f64::from(run.gpu_share_milli) / 1000.0 } else { 1.0 };
        for index in &run.gpu_ids {
            *held.entry((run.node.as_str(), *index)).or_default() += each;
        }
    }
    out.gauges(
        "ferry_gpu_allocated",
        "How much of each GPU starting and running jobs hold: 1 for a whole GPU, a fraction for shares, 0 when free",
        s.nodes.iter().flat_map(|n| {
            let held = &held;
            n.gpus.iter().map(move |g| {
                (labels(n, g.index), held.get(&(n.name.as_str(), g.index)).copied().unwrap_or(0.0).min(1.0))
            })
        }),
    );
    pools(out, s, &held);
    // A GPU appears below only when its agent measured it: no telemetry means no sample, never a 0.
    let measured: Vec<_> = s
        .nodes
        .iter()
        .filter(|n| n.ready)
        .filter_map(|n| Some((n, n.usage.as_ref()?)))
        .flat_map(|(n, u)| u.gpus.iter().map(move |g| (n, g)))
        .collect();
    out.gauges(
        "ferry_gpu_utilization_percent",
        "GPU utilisation as the driver measured it (NVML), 0 to 100",
        measured.iter().filter_map(|(n, g)| Some((labels(n, g.index), g.utilization_percent?.into()))),
    );
    out.gauges(
        "ferry_gpu_memory_used_bytes",
        "GPU memory in use as the driver measured it (NVML)",
        measured.iter().filter_map(|(n, g)| Some((labels(n, g.index), g.memory_used_bytes? as f64))),
    );
    out.gauges(
        "ferry_gpu_temperature_celsius",
        "GPU temperature as the driver measured it (NVML)",
        measured.iter().filter_map(|(n, g)| Some((labels(n, g.index), g.temperature_c?.into()))),
    );
    out.gauges(
        "ferry_gpu_power_watts",
        "GPU power draw as the driver measured it (NVML)",
        measured.iter().filter_map(|(n, g)| Some((labels(n, g.index), f64::from(g.power_mw?) / 1000.0))),
    );
}

/// Capacity, allocation and measured utilisation of each pool's GPUs.
fn pools(out: &mut Out, s: &Snapshot, held: &BTreeMap<(&str, u32), f64>) {
    #[derive(Default)]
    struct Pool {
        gpus: f64,
        allocated: f64,
        measured: Vec<f64>,
    }
    let mut pools: BTreeMap<&str, Pool> = BTreeMap::new();
    for n in &s.nodes {
        let pool = pools.entry(n.pool.as_str()).or_default();
        pool.gpus += n.gpus.len() as f64;
        pool.allocated +=
            n.gpus.iter().map(|g| held.get(&(n.name.as_str(), g.index)).copied().unwrap_or(0.0)).sum::<f64>();
        if let Some(usage) = n.usage.as_ref().filter(|_| n.ready) {
            pool.measured.extend(usage.gpus.iter().filter_map(|g| g.utilization_percent).map(f64::from));
        }
    }
    let label = |pool: &str| vec![("pool", pool.to_string())];
    out.gauges("ferry_pool_gpus", "GPUs in the pool's nodes", pools.iter().map(|(p, v)| (label(p), v.gpus)));
    out.gauges(
        "ferry_pool_allocated_gpus",
        "GPUs of the pool that starting and running jobs hold (shares count as their fraction)",
        pools.iter().map(|(p, v)| (label(p), v.allocated)),
    );
    out.gauges(
        "ferry_pool_gpu_utilization_percent",
        "Mean measured utilisation of the pool's GPUs that have telemetry; absent when none has",
        pools
            .iter()
            .filter(|(_, v)| !v.measured.is_empty())
            .map(|(p, v)| (label(p), v.measured.iter().sum::<f64>() / v.measured.len() as f64)),
    );
}

/// Elastic pools: machines by state, and the money spent on them (exported only when there is an elastic pool's
/// machine to speak of).
fn cloud(out: &mut Out, s: &Snapshot) {
    if s.cloud_spend.is_empty() {
        return;
    }
    let mut by_state: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for (pool, state) in &s.cloud_machines {
        *by_state.entry((pool.as_str(), state.as_str())).or_default() += 1;
    }
    out.gauges(
        "ferry_cloud_machines",
        "Elastic pools' machines not yet ended, by state: requested, launched, joined, terminating",
        by_state
            .into_iter()
            .map(|((pool, state), n)| (vec![("pool", pool.to_string()), ("state", state.to_string())], n.into())),
    );
    out.counters(
        "ferry_cloud_spend",
        "What an elastic pool's machines have cost, each from its launch request to its end, at its price per hour",
        s.cloud_spend.iter().map(|(pool, spend)| (vec![("pool", pool.clone())], *spend)),
    );
}

fn jobs(out: &mut Out, s: &Snapshot) {
    let count = |state: JobState| {
        let n = s.job_counts.iter().filter(|(st, _)| *st == state).map(|(_, n)| *n).sum::<u64>();
        (vec![("state", state.name().to_string())], n as f64)
    };
    let (unfinished, finished): (Vec<JobState>, Vec<JobState>) =
        JobState::ALL.into_iter().partition(|st| !st.is_terminal());
    out.gauges(
        "ferry_jobs",
        "Unfinished jobs, by state (queued, starting, running)",
        unfinished.into_iter().map(count),
    );
    out.counters(
        "ferry_jobs_finished",
        "Jobs that ended, by final state, over the server's whole history",
        finished.into_iter().map(count),
    );

    let queue = s.driver.queue_summary();
    let waited = |oldest: i64| s.now_us.saturating_sub(oldest).max(0) as f64 / 1e6;
    for (label, groups, jobs, wait, jobs_help, wait_help) in [
        (
            "team",
            &queue.teams,
            "ferry_queue_jobs",
            "ferry_queue_wait_seconds_max",
            "Queued jobs, by team (empty for jobs of no team)",
            "How long the oldest queued job of each team has waited",
        ),
        (
            "pool",
            &queue.pools,
            "ferry_pool_queue_jobs",
            "ferry_pool_queue_wait_seconds_max",
            "Queued jobs that could run in the pool (a job that fits several pools waits in each)",
            "How long the oldest queued job that could run in the pool has waited",
        ),
    ] {
        out.gauges(jobs, jobs_help, groups.iter().map(|g| (vec![(label, g.name.clone())], g.queued as f64)));
        out.gauges(
            wait,
            wait_help,
            groups.iter().map(|g| (vec![(label, g.name.clone())], waited(g.oldest_queued_at_us))),
        );
    }

    let run_labels = |r: &crate::driver::RunMetrics| -> Labels {
        vec![
            ("job_id", r.job_id.to_string()),
            ("user", r.user.clone()),
            ("team", r.team.clone()),
            ("project", r.project.clone()),
            ("node", r.node.clone()),
        ]
    };
    let runs = &s.driver.runs;
    out.gauges(
        "ferry_job_allocated_gpus",
        "GPUs a starting or running job holds on a node (a gang has one series per worker)",
        runs.iter().map(|r| (run_labels(r), run_gpus(r))),
    );
    out.gauges(
        "ferry_job_allocated_cpu_millis",
        "CPU a starting or running job holds on a node",
        runs.iter().map(|r| (run_labels(r), r.resources.cpu_millis as f64)),
    );
    out.gauges(
        "ferry_job_allocated_memory_bytes",
        "Memory a starting or running job holds on a node",
        runs.iter().map(|r| (run_labels(r), r.resources.memory_bytes as f64)),
    );

    out.counter("ferry_scheduler_cycles", "Scheduling cycles run since the server started", s.driver.cycles as f64);
    out.counter(
        "ferry_scheduler_cycle_seconds",
        "Seconds spent in scheduling cycles since the server started; divide its rate by the cycles' rate for the mean",
        s.driver.cycle_seconds_sum,
    );
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};
    use ferry_api::nodes::{Gpu, GpuUsage, NodeUsage};
    use ferry_core::Resources;

    use super::*;
    use crate::driver::{QueuedMetrics, RunMetrics};

    fn node(name: &str, ready: bool, gpus: u32, usage: Option<NodeUsage>) -> NodeRecord {
        let gpu = |index| Gpu {
            index,
            model: "A100".to_string(),
            memory_bytes: 80 << 30,
            uuid: None,
            source: "config".to_string(),
        };
        NodeRecord {
            name: name.to_string(),
            pool: "local".to_string(),
            cpu_millis: 8000,
            memory_bytes: 64 << 30,
            gpus: (0..gpus).map(gpu).collect(),
            labels: BTreeMap::new(),
            agent_version: "0.1.0".to_string(),
            limits: "none".to_string(),
            address: None,
            ready,
            usage,
            last_seen_us: 1_000_000,
        }
    }

    /// Samples of a family come out in hash order; they are sorted here so the expectation is stable.
    fn check(snapshot: Snapshot, expected: Expect) {
        let text = render(&snapshot);
        let mut lines: Vec<&str> = Vec::new();
        let mut samples: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') {
                samples.sort_unstable();
                lines.append(&mut samples);
                lines.push(line);
            } else {
                samples.push(line);
            }
        }
        expected.assert_eq(&(lines.join("\n") + "\n"));
    }

    #[test]
    fn only_measured_gpus_have_utilisation_and_only_ids_are_labels() {
        // GPU 1 of node a has no telemetry, and node b is not ready: neither may show a utilisation sample.
        let measured = NodeUsage {
            sampled_at_us: 1_000_000,
            cpu_millis_used: 1500,
            memory_used_bytes: 4 << 30,
            gpus: vec![GpuUsage {
                index: 0,
                utilization_percent: Some(87),
                memory_used_bytes: Some(10 << 30),
                temperature_c: Some(61),
                power_mw: None,
            }],
        };
        let run = RunMetrics {
            job_id: 7,
            user: "alice".to_string(),
            team: "vision".to_string(),
            project: "detection".to_string(),
            node: "a".to_string(),
            resources: Resources::new(2000, 8 << 30, 1),
            gpu_share_milli: 0,
            gpu_ids: vec![1],
        };
        let snapshot = Snapshot {
            now_us: 3_500_000,
            nodes: vec![node("a", true, 2, Some(measured.clone())), node("b", false, 1, Some(measured))],
            driver: DriverMetrics {
                runs: vec![run],
                queued: vec![QueuedMetrics {
                    team: String::new(),
                    jobs: 1,
                    submitted_at_us: 500_000,
                    pools: vec!["local".to_string(), "cloud".to_string()],
                }],
                cycles: 4,
                cycle_seconds_sum: 0.25,
            },
            job_counts: vec![(JobState::Running, 1), (JobState::Queued, 1), (JobState::Succeeded, 3)],
            cloud_machines: vec![
                ("aws".into(), "joined".into()),
                ("aws".into(), "joined".into()),
                ("aws".into(), "requested".into()),
            ],
            cloud_spend: vec![("aws".into(), 1.25)],
        };
        check(
            snapshot,
            expect![[r##"
                # HELP ferry_node_ready 1 while the node's agent reports within the node timeout, else 0.
                # TYPE ferry_node_ready gauge
                ferry_node_ready{node="a",pool="local"} 1.0
                ferry_node_ready{node="b",pool="local"} 0.0
                # HELP ferry_node_heartbeat_age_seconds Seconds since the node's agent last reported.
                # TYPE ferry_node_heartbeat_age_seconds gauge
                ferry_node_heartbeat_age_seconds{node="a",pool="local"} 2.5
                ferry_node_heartbeat_age_seconds{node="b",pool="local"} 2.5
                # HELP ferry_node_cpu_millis CPU capacity, in thousandths of a CPU.
                # TYPE ferry_node_cpu_millis gauge
                ferry_node_cpu_millis{node="a",pool="local"} 8000.0
                ferry_node_cpu_millis{node="b",pool="local"} 8000.0
                # HELP ferry_node_memory_bytes Memory capacity.
                # TYPE ferry_node_memory_bytes gauge
                ferry_node_memory_bytes{node="a",pool="local"} 68719476736.0
                ferry_node_memory_bytes{node="b",pool="local"} 68719476736.0
                # HELP ferry_node_gpus GPUs the node has, per model.
                # TYPE ferry_node_gpus gauge
                ferry_node_gpus{node="a",pool="local",model="A100"} 2.0
                ferry_node_gpus{node="b",pool="local",model="A100"} 1.0
                # HELP ferry_node_allocated_gpus GPUs allocated to starting and running jobs (a share of a GPU counts as its fraction).
                # TYPE ferry_node_allocated_gpus gauge
                ferry_node_allocated_gpus{node="a",pool="local"} 1.0
                ferry_node_allocated_gpus{node="b",pool="local"} 0.0
                # HELP ferry_node_allocated_cpu_millis CPU allocated to starting and running jobs.
                # TYPE ferry_node_allocated_cpu_millis gauge
                ferry_node_allocated_cpu_millis{node="a",pool="local"} 2000.0
                ferry_node_allocated_cpu_millis{node="b",pool="local"} 0.0
                # HELP ferry_node_allocated_memory_bytes Memory allocated to starting and running jobs.
                # TYPE ferry_node_allocated_memory_bytes gauge
                ferry_node_allocated_memory_bytes{node="a",pool="local"} 8589934592.0
                ferry_node_allocated_memory_bytes{node="b",pool="local"} 0.0
                # HELP ferry_node_cpu_used_millis CPU in use on the node as its agent measured it, in thousandths of a CPU.
                # TYPE ferry_node_cpu_used_millis gauge
                ferry_node_cpu_used_millis{node="a",pool="local"} 1500.0
                # HELP ferry_node_memory_used_bytes Memory in use on the node as its agent measured it.
                # TYPE ferry_node_memory_used_bytes gauge
                ferry_node_memory_used_bytes{node="a",pool="local"} 4294967296.0
                # HELP ferry_gpu_memory_bytes Memory of each GPU.
                # TYPE ferry_gpu_memory_bytes gauge
                ferry_gpu_memory_bytes{node="a",pool="local",gpu="0",model="A100"} 85899345920.0
                ferry_gpu_memory_bytes{node="a",pool="local",gpu="1",model="A100"} 85899345920.0
                ferry_gpu_memory_bytes{node="b",pool="local",gpu="0",model="A100"} 85899345920.0
                # HELP ferry_gpu_allocated How much of each GPU starting and running jobs hold: 1 for a whole GPU, a fraction for shares, 0 when free.
                # TYPE ferry_gpu_allocated gauge
                ferry_gpu_allocated{node="a",pool="local",gpu="0",model="A100"} 0.0
                ferry_gpu_allocated{node="a",pool="local",gpu="1",model="A100"} 1.0
                ferry_gpu_allocated{node="b",pool="local",gpu="0",model="A100"} 0.0
                # HELP ferry_pool_gpus GPUs in the pool's nodes.
                # TYPE ferry_pool_gpus gauge
                ferry_pool_gpus{pool="local"} 3.0
                # HELP ferry_pool_allocated_gpus GPUs of the pool that starting and running jobs hold (shares count as their fraction).
                # TYPE ferry_pool_allocated_gpus gauge
                ferry_pool_allocated_gpus{pool="local"} 1.0
                # HELP ferry_pool_gpu_utilization_percent Mean measured utilisation of the pool's GPUs that have telemetry; absent when none has.
                # TYPE ferry_pool_gpu_utilization_percent gauge
                ferry_pool_gpu_utilization_percent{pool="local"} 87.0
                # HELP ferry_gpu_utilization_percent GPU utilisation as the driver measured it (NVML), 0 to 100.
                # TYPE ferry_gpu_utilization_percent gauge
                ferry_gpu_utilization_percent{node="a",pool="local",gpu="0",model="A100"} 87.0
                # HELP ferry_gpu_memory_used_bytes GPU memory in use as the driver measured it (NVML).
                # TYPE ferry_gpu_memory_used_bytes gauge
                ferry_gpu_memory_used_bytes{node="a",pool="local",gpu="0",model="A100"} 10737418240.0
                # HELP ferry_gpu_temperature_celsius GPU temperature as the driver measured it (NVML).
                # TYPE ferry_gpu_temperature_celsius gauge
                ferry_gpu_temperature_celsius{node="a",pool="local",gpu="0",model="A100"} 61.0
                # HELP ferry_jobs Unfinished jobs, by state (queued, starting, running).
                # TYPE ferry_jobs gauge
                ferry_jobs{state="queued"} 1.0
                ferry_jobs{state="running"} 1.0
                ferry_jobs{state="starting"} 0.0
                # HELP ferry_jobs_finished Jobs that ended, by final state, over the server's whole history.
                # TYPE ferry_jobs_finished counter
                ferry_jobs_finished_total{state="cancelled"} 0.0
                ferry_jobs_finished_total{state="failed"} 0.0
                ferry_jobs_finished_total{state="lost"} 0.0
                ferry_jobs_finished_total{state="succeeded"} 3.0
                ferry_jobs_finished_total{state="timed_out"} 0.0
                # HELP ferry_queue_jobs Queued jobs, by team (empty for jobs of no team).
                # TYPE ferry_queue_jobs gauge
                ferry_queue_jobs{team=""} 1.0
                # HELP ferry_queue_wait_seconds_max How long the oldest queued job of each team has waited.
                # TYPE ferry_queue_wait_seconds_max gauge
                ferry_queue_wait_seconds_max{team=""} 3.0
                # HELP ferry_pool_queue_jobs Queued jobs that could run in the pool (a job that fits several pools waits in each).
                # TYPE ferry_pool_queue_jobs gauge
                ferry_pool_queue_jobs{pool="cloud"} 1.0
                ferry_pool_queue_jobs{pool="local"} 1.0
                # HELP ferry_pool_queue_wait_seconds_max How long the oldest queued job that could run in the pool has waited.
                # TYPE ferry_pool_queue_wait_seconds_max gauge
                ferry_pool_queue_wait_seconds_max{pool="cloud"} 3.0
                ferry_pool_queue_wait_seconds_max{pool="local"} 3.0
                # HELP ferry_job_allocated_gpus GPUs a starting or running job holds on a node (a gang has one series per worker).
                # TYPE ferry_job_allocated_gpus gauge
                ferry_job_allocated_gpus{job_id="7",user="alice",team="vision",project="detection",node="a"} 1.0
                # HELP ferry_job_allocated_cpu_millis CPU a starting or running job holds on a node.
                # TYPE ferry_job_allocated_cpu_millis gauge
                ferry_job_allocated_cpu_millis{job_id="7",user="alice",team="vision",project="detection",node="a"} 2000.0
                # HELP ferry_job_allocated_memory_bytes Memory a starting or running job holds on a node.
                # TYPE ferry_job_allocated_memory_bytes gauge
                ferry_job_allocated_memory_bytes{job_id="7",user="alice",team="vision",project="detection",node="a"} 8589934592.0
                # HELP ferry_scheduler_cycles Scheduling cycles run since the server started.
                # TYPE ferry_scheduler_cycles counter
                ferry_scheduler_cycles_total 4.0
                # HELP ferry_scheduler_cycle_seconds Seconds spent in scheduling cycles since the server started; divide its rate by the cycles' rate for the mean.
                # TYPE ferry_scheduler_cycle_seconds counter
                ferry_scheduler_cycle_seconds_total 0.25
                # HELP ferry_cloud_machines Elastic pools' machines not yet ended, by state: requested, launched, joined, terminating.
                # TYPE ferry_cloud_machines gauge
                ferry_cloud_machines{pool="aws",state="joined"} 2.0
                ferry_cloud_machines{pool="aws",state="requested"} 1.0
                # HELP ferry_cloud_spend What an elastic pool's machines have cost, each from its launch request to its end, at its price per hour.
                # TYPE ferry_cloud_spend counter
                ferry_cloud_spend_total{pool="aws"} 1.25
                # EOF
            "##]],
        );
    }
}
