//! The FGD experiment of the Alibaba v2023 trace's paper ("Beware of Fragmentation", USENIX ATC'23), run on Ferry's
//! scheduler core: tasks sampled from the pod list arrive one after another and never depart, until the GPUs they
//! ask for reach the cluster's GPU capacity; the result is the share of all GPUs then allocated.
//!
//! A task that cannot be placed when it arrives fails and leaves, as in the paper's simulator, rather than waiting
//! in the queue and holding reservations. The sample is a seeded permutation of the whole pod list, continued by
//! draws with replacement once the list is used up (the paper "inflates" the workload the same way).

use ferry_core::JobId;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::engine::{self, Action, CheckConfig, Sim};
use crate::error::{SimError, Violation};
use crate::workload::JobSpec;

/// The published results on this trace (the paper's artifact, 10 seeds): name and share of GPUs allocated.
pub const PUBLISHED: [(&str, f64); 6] = [
    ("Random", 0.863),
    ("DotProduct", 0.906),
    ("Clustering", 0.917),
    ("Packing", 0.918),
    ("BestFit", 0.929),
    ("FGD", 0.952),
];

/// One seed's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FgdRun {
    pub seed: u64,
    pub steps: u64,
    pub tasks_arrived: u64,
    pub tasks_placed: u64,
    pub tasks_failed: u64,
    /// GPUs asked for by all arrived tasks, in thousandths.
    pub gpu_milli_requested: u64,
    /// GPUs allocated at the end, in thousandths: whole GPUs count 1000, shares their thousandths.
    pub gpu_milli_allocated: u64,
    /// `gpu_milli_allocated` over the cluster's GPU capacity.
    pub allocation_share: f64,
}

/// Checks that the experiment can run: the cluster has GPUs and some task asks for some.
pub fn check_inputs(cluster: &Cluster, tasks: &[JobSpec]) -> Result<(), SimError> {
    if cluster.elastic_nodes_max() > 0 {
        return Err(SimError::Usage(
            "the FGD experiment runs on a fixed cluster; this one has elastic pools (max_nodes)".to_string(),
        ));
    }
    if cluster.gpus() == 0 {
        return Err(SimError::Usage("the FGD experiment needs a cluster with GPUs; this one has none".to_string()));
    }
    if tasks.iter().all(|t| t.gpu_milli() == 0) {
        return Err(SimError::Usage(
            "the FGD experiment needs tasks that ask for GPUs; this workload has none".to_string(),
        ));
    }
    Ok(())
}

/// Runs the experiment with one seed. `check_inputs` must have passed.
pub fn run(cluster: &Cluster, tasks: &[JobSpec], seed: u64, check: &CheckConfig) -> Result<FgdRun, Violation> {
    let mut rng = engine::rng(seed);
    let mut sample: Vec<usize> = (0..tasks.len()).collect();
    sample.shuffle(&mut rng);
    let mut sim = Sim::new(cluster, seed, check)?;
    let capacity_milli = cluster.gpus() * 1000;
    let (mut requested, mut placed, mut failed) = (0u64, 0u64, 0u64);
    let mut arrived: u64 = 0;
    while requested < capacity_milli {
        let index = match sample.get(arrived as usize) {
            Some(&i) => i,
            None => rng.random_range(0..tasks.len()),
        };
        let task = &tasks[index];
        arrived += 1;
        requested += task.gpu_milli();
        // Each task arrives one virtual second after the last, so that a failure names a distinct time.
        let now_ms = arrived * 1000;
        let id = arrived as JobId;
        sim.submit(task.request(id, now_ms), now_ms)?;
        match sim.schedule(now_ms)?.as_slice() {
            [] => {
                failed += 1;
                sim.end(id, now_ms)?;
            }
            [Action::Start(job, _)] if *job == id => placed += 1,
            other => {
                let message =
                    format!("the FGD experiment expects task {id} to start or fail, but the core did {other:?}");
                return Err(sim.violation(now_ms, message));
            }
        }
        // Tasks that do not fit fail at once, so no step is ever needed for one to burst later.
        sim.take_wakes();
        sim.finish_step(now_ms)?;
    }
    sim.finish(arrived * 1000)?;
    let allocated = sim.ledger.gpu_milli;
    Ok(FgdRun {
        seed,
        steps: sim.steps(),
        tasks_arrived: arrived,
        tasks_placed: placed,
        tasks_failed: failed,
        gpu_milli_requested: requested,
        gpu_milli_allocated: allocated,
        allocation_share: allocated as f64 / capacity_milli as f64,
    })
}
