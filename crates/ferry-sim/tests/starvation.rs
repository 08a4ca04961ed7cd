//! The checker knows the core's reservations: nodes held back for a waiting gang may sit idle while smaller jobs
//! wait, which is reported as a figure and fails nothing (an idle node that no reservation holds still fails a run:
//! see the checker's unit tests).

use ferry_core::{GpuPlacement, NodeInfo, Resources};
use ferry_sim::engine::{replay, CheckConfig, ReplayConfig};
use ferry_sim::workload::WorkloadFormat;
use ferry_sim::{Cluster, JobSpec, Pool, Workload};

const GIB: u64 = 1 << 30;
const HOUR_MS: u64 = 3_600_000;

/// Nodes n1 and n2 with 2 GPUs of model A, and n3 with 2 of model B.
fn cluster() -> Cluster {
    let node = |name: &str, model: &str| NodeInfo {
        name: name.into(),
        pool: "p".into(),
        capacity: Resources::new(8000, 64 * GIB, 2),
        gpu_indices: vec![0, 1],
        gpu_model: Some(model.into()),
        ..NodeInfo::default()
    };
    let pool = Pool {
        name: "p".into(),
        order: 0,
        burst: false,
        burst_after_s: None,
        price_gpu_hour: 0.0,
        price_cpu_hour: 0.0,
        price_node_hour: None,
        elastic: None,
        start_failure_rate: 0.0,
        join_failure_rate: 0.0,
        images: true,
        gangs: true,
    };
    Cluster {
        pools: vec![pool],
        teams: Vec::new(),
        projects: Vec::new(),
        fair_share_half_life_s: 0,
        gpu_placement: GpuPlacement::BestFit,
        queue_order: Default::default(),
        reserve_depth: None,
        nodes: vec![node("n1", "A"), node("n2", "A"), node("n3", "B")],
        failures: Default::default(),
    }
}

fn job(line: u64, arrival_ms: u64, duration_ms: u64, gpus: u32, nodes: u32, models: &[&str]) -> JobSpec {
    JobSpec {
        line,
        arrival_ms,
        duration_ms,
        resources: Resources::new(1000, GIB, gpus),
        gpu_share_milli: 0,
        gpu_models: models.iter().map(|m| m.to_string()).collect(),
        priority: 0,
        user: "ann".into(),
        name: String::new(),
        team: "t".into(),
        project: String::new(),
        nodes,
        selector: Default::default(),
        pool: None,
        image: false,
        max_runtime_s: None,
        outcome: None,
        exit_code: None,
        lifecycle: Default::default(),
    }
}

fn run(jobs: Vec<JobSpec>) -> Result<ferry_sim::engine::ReplayRun, ferry_sim::Violation> {
    let workload = Workload { file: "inline".into(), format: WorkloadFormat::Csv, jobs };
    let config = ReplayConfig {
        seed: 1,
        preempt_grace_ms: 30_000,
        check: CheckConfig::default(),
        predictions: Default::default(),
    };
    replay(&cluster(), &workload, &config)
}

#[test]
fn nodes_held_back_for_a_gang_may_idle_while_a_small_job_waits() {
    // Job 1 holds n3 for 3 hours. The gang (job 2) needs all three nodes: it holds n1 and n2 back, idle, until n3
    // frees. Job 3 (1 GPU) arrives just after the gang and must not take them: it waits 3 hours beside idle nodes,
    // past the 1-hour starvation bound, because the gang was promised them first.
    let jobs = vec![
        job(1, 0, 3 * HOUR_MS, 2, 1, &["B"]),
        job(2, 1000, HOUR_MS, 2, 3, &[]),
        job(3, 2000, 60_000, 1, 1, &[]),
        // Steps in between, so the checker looks while the nodes idle.
        job(4, HOUR_MS, 1000, 0, 1, &[]),
        job(5, 2 * HOUR_MS, 1000, 0, 1, &[]),
    ];
    let run = run(jobs).expect("waiting beside nodes held back for a gang breaks no promise");
    let waits = run.idle_waits;
    // Job 3 waited from its arrival until the gang started at 3h, while n1 and n2 idled; jobs 4 and 5 (no GPU)
    // found room beside the reservations at once.
    assert_eq!(waits.jobs, 1);
    assert_eq!(waits.max_ms, 3 * HOUR_MS - 2000);
}
