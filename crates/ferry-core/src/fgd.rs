//! Fragmentation gradient descent (FGD) GPU placement, after Weng et al., "Beware of Fragmentation: Scheduling
//! GPU-Sharing Workloads with Fragmentation Gradient Descent" (USENIX ATC '23), written from the paper's definitions.
//!
//! A node's free GPU capacity is *fragmented* for a kind of task when that task could not use it: a half-free GPU is
//! a fragment for a task that needs a whole GPU, a 20%-free GPU is one for a task that needs 30%, and all of a node's
//! free GPUs are fragments for a task whose CPU or memory the node cannot hold. The expected fragmentation of a node
//! weighs each kind of task by how often it arrives. FGD places each task where it increases expected fragmentation
//! the least. The mix of task kinds is learnt from submissions, with older ones weighing less.

use std::collections::BTreeMap;

use crate::node::Node;
use crate::resources::Resources;

/// How much each new submission's kind outweighs the mix seen so far (an exponential moving average).
const MIX_LEARNING_RATE: f64 = 0.01;
/// The most kinds of task the mix remembers; the rarest are forgotten first.
const MIX_KINDS_MAX: usize = 64;

/// What a task asks of GPUs: a share of one (thousandths), or whole GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum GpuDemand {
    Share(u32),
    Whole(u32),
}

/// A kind of task in the mix: how often it comes, and the CPUs and memory it typically needs.
#[derive(Clone, Debug, Default)]
struct Kind {
    weight: f64,
    cpu_millis: f64,
    memory_bytes: f64,
}

/// The recent mix of GPU task kinds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Mix {
    kinds: BTreeMap<GpuDemand, Kind>,
}

impl Mix {
    /// Learns from one submitted GPU task.
    pub(crate) fn observe(&mut self, demand: GpuDemand, resources: &Resources) {
        for kind in self.kinds.values_mut() {
            kind.weight *= 1.0 - MIX_LEARNING_RATE;
        }
        let kind = self.kinds.entry(demand).or_default();
        let first = kind.weight == 0.0;
        kind.weight += MIX_LEARNING_RATE;
        let blend = |old: f64, new: u64| if first { new as f64 } else { old * 0.9 + new as f64 * 0.1 };
        kind.cpu_millis = blend(kind.cpu_millis, resources.cpu_millis);
        kind.memory_bytes = blend(kind.memory_bytes, resources.memory_bytes);
        if self.kinds.len() > MIX_KINDS_MAX {
            let rarest = self
                .kinds
                .iter()
                .min_by(|a, b| a.1.weight.total_cmp(&b.1.weight))
                .map(|(d, _)| *d)
                .expect("the mix is not empty");
            self.kinds.remove(&rarest);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    /// The expected fragmentation of a node with `gpus_free` (thousandths free per GPU) and `free` CPU and memory.
    pub(crate) fn fragmentation(&self, gpus_free: &[u32], free: &Resources) -> f64 {
        let total: f64 = self.kinds.values().map(|k| k.weight).sum();
        if total == 0.0 {
            return 0.0;
        }
        let all_free: u32 = gpus_free.iter().sum();
        self.kinds
            .iter()
            .map(|(demand, kind)| {
                let fits_cpu_mem =
                    kind.cpu_millis <= free.cpu_millis as f64 && kind.memory_bytes <= free.memory_bytes as f64;
                let fragment = if !fits_cpu_mem {
                    all_free
                } else {
                    match *demand {
                        GpuDemand::Share(need) => gpus_free.iter().filter(|f| **f < need).sum(),
                        GpuDemand::Whole(k) => {
                            let whole = gpus_free.iter().filter(|f| **f == 1000).count() as u32;
                            if whole >= k {
                                gpus_free.iter().filter(|f| **f < 1000).sum()
                            } else {
                                all_free
                            }
                        }
                    }
                };
                kind.weight / total * fragment as f64
            })
            .sum()
    }
}

/// Thousandths free on each of a node's GPUs.
pub(crate) fn gpus_free(node: &Node) -> Vec<u32> {
    node.info
        .gpu_indices
        .iter()
        .map(
            |g| {
                if node.gpu_owner.contains_key(g) {
                    0
                } else {
                    1000 - node.shared.get(g).map_or(0, |(used, _)| *used)
                }
            },
        )
        .collect()
}

/// The increase of the node's expected fragmentation if a task took `demand` there, with the GPU it would take for
/// a share (`None` for whole GPUs); `None` when the node's GPUs cannot hold it.
pub(crate) fn best_on_node(
    mix: &Mix,
    node: &Node,
    free: &Resources,
    demand: GpuDemand,
    takes: &Resources,
) -> Option<(f64, Option<u32>)> {
    let before_gpus = gpus_free(node);
    let before = mix.fragmentation(&before_gpus, free);
    let after_free = free.saturating_sub(takes);
    match demand {
        GpuDemand::Whole(k) => {
            let mut after = before_gpus.clone();
            let mut left = k;
            for f in after.iter_mut().filter(|f| **f == 1000) {
                if left == 0 {
                    break;
                }
                *f = 0;
                left -= 1;
            }
            (left == 0).then(|| (mix.fragmentation(&after, &after_free) - before, None))
        }
        GpuDemand::Share(need) => {
            let mut best: Option<(f64, Option<u32>)> = None;
            for (position, f) in before_gpus.iter().enumerate() {
                if *f < need {
                    continue;
                }
                let mut after = before_gpus.clone();
                after[position] -= need;
                let delta = mix.fragmentation(&after, &after_free) - before;
                let gpu = node.info.gpu_indices[position];
                if best.as_ref().is_none_or(|(d, _)| delta < *d) {
                    best = Some((delta, Some(gpu)));
                }
            }
            best
        }
    }
}
