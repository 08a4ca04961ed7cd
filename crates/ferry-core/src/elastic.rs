//! Elastic pools: burst capacity that a provider (a cloud) starts on request, node by node, up to a maximum, and
//! takes back when it has idled.
//!
//! A cycle notes which blocked jobs the burst rules let into an elastic pool and whose workers a new node of the
//! pool could hold. `plan` then packs those jobs, in queue order, first onto the nodes already requested and still
//! starting, and only then onto new nodes, never past the pool's `max_nodes`: so a job is asked for once, however
//! many cycles it waits for its nodes. A gang gets all its new nodes or none. Idle nodes are released by the
//! scheduler, which knows since when each node has held no job.
//!
//! Nothing here starts, stops or bills a machine: the core only asks (`Decision::Provision`, `Decision::Release`)
//! and learns what happened from events (`Event::NodeUp`, `Event::NodeRemoved`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reason::NodesNeeded;
use crate::resources::Resources;
use crate::scheduler::NodeInfo;
use crate::JobId;

/// One node of an elastic pool, as its provider starts it: every new node of the pool is alike.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTemplate {
    /// CPUs, memory and GPUs of one node.
    pub capacity: Resources,
    /// The model of its GPUs, which jobs' GPU-model constraints match.
    pub gpu_model: Option<String>,
    /// Its labels, which job selectors match.
    pub labels: BTreeMap<String, String>,
}

impl NodeTemplate {
    /// The node called `name` in pool `pool`, made from the template, its GPUs numbered from 0.
    pub fn node(&self, name: &str, pool: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            pool: pool.to_string(),
            capacity: self.capacity,
            gpu_indices: (0..self.capacity.gpus).collect(),
            gpu_model: self.gpu_model.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// The elastic capacity of a pool: nodes like `node` that its provider starts when blocked jobs need them, at most
/// `max_nodes` at a time (those up, down or still starting all count), each given back once it has held no job for
/// `idle_release_s`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ElasticPool {
    pub node: NodeTemplate,
    pub max_nodes: u32,
    /// How long the provider takes to start a node. The core does not use it: a requested node counts as starting
    /// until its `NodeUp`, however long that takes. Drivers and the simulator do.
    pub startup_s: u64,
    /// How long a node must have held no job before it is released. Longer than the spread of start-up times, or a
    /// gang's first nodes may be released while it waits for its last.
    pub idle_release_s: u64,
    /// How long a requested node may take to join before the core stops waiting for it (`Decision::Abandon`); 0: for
    /// ever.
    #[serde(default)]
    pub startup_timeout_s: u64,
    /// How long the pool is asked for no new node after it failed to start some (see `nodelife`); 0: not at all.
    #[serde(default)]
    pub retry_after_s: u64,
}

/// What one elastic pool can offer this cycle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Supply {
    /// One new node's capacity.
    pub(crate) capacity: Resources,
    /// Nodes requested and not yet up.
    pub(crate) starting: u32,
    /// How many more nodes may be requested.
    pub(crate) room: u32,
}

/// A blocked job that new nodes of some elastic pools could hold.
#[derive(Clone, Debug)]
pub(crate) struct Want {
    pub(crate) job: JobId,
    /// What each worker needs of a node (a share of a GPU counts as one GPU).
    pub(crate) needs: Resources,
    pub(crate) workers: u32,
    /// The pools it may use, as indices into the supplies in order, and how many new nodes it needs in each: a gang
    /// needs fewer where some nodes that are up could each hold a worker now.
    pub(crate) pools: Vec<(usize, u32)>,
}

/// What to ask one pool for: how many new nodes, and for which jobs (in queue order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) nodes: u32,
    pub(crate) jobs: Vec<NodesNeeded>,
}

/// Packs the wanting jobs, in queue order: each onto nodes still starting in the first of its pools (in order) where
/// they can hold it whole, else onto new nodes of the first pool with room, first fit, each worker of a gang on a
/// node of its own. Nodes on their way are used before new ones are asked for, even where an earlier pool now has room
/// (it was cooling down, say, when they were asked of a later one). Returns what to ask each pool for, and which pool
/// each job waits for.
pub(crate) fn plan(supplies: &[Supply], wants: &[Want]) -> (Vec<Request>, Vec<(JobId, usize)>) {
    let mut requests = vec![Request::default(); supplies.len()];
    let mut bins: Vec<Vec<Resources>> = supplies.iter().map(|s| vec![s.capacity; s.starting as usize]).collect();
    let mut waits = Vec::new();
    'wants: for want in wants {
        for may_ask in [false, true] {
            for &(pool, new_nodes) in &want.pools {
                let supply = &supplies[pool];
                let room = if may_ask { supply.room - requests[pool].nodes } else { 0 };
                let Some(opened) = pack(&mut bins[pool], supply.capacity, room, want.needs, new_nodes) else {
                    continue;
                };
                if opened > 0 {
                    requests[pool].nodes += opened;
                    let needs = want.needs;
                    let nodes = NodesNeeded { job: want.job, workers: want.workers, nodes: opened, needs };
                    requests[pool].jobs.push(nodes);
                }
                waits.push((want.job, pool));
                continue 'wants;
            }
        }
    }
    (requests, waits)
}

/// Places `workers` workers needing `needs` each on distinct nodes: the first node with room, else a new one while
/// `room` allows. Returns how many new nodes it took, or `None` (changing nothing) when the workers do not all fit.
fn pack(bins: &mut Vec<Resources>, capacity: Resources, room: u32, needs: Resources, workers: u32) -> Option<u32> {
    let existing = bins.len();
    let mut used: Vec<usize> = Vec::new();
    for _ in 0..workers {
        let fits = (0..existing).find(|b| !used.contains(b) && needs.fits_in(&bins[*b]));
        match fits {
            Some(b) => {
                bins[b] = bins[b].saturating_sub(&needs);
                used.push(b);
            }
            None if ((bins.len() - existing) as u32) < room && needs.fits_in(&capacity) => {
                bins.push(capacity.saturating_sub(&needs));
            }
            None => {
                for b in used {
                    bins[b] = bins[b].checked_add(&needs).unwrap_or(capacity);
                }
                bins.truncate(existing);
                return None;
            }
        }
    }
    Some((bins.len() - existing) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Resources = Resources { cpu_millis: 8000, memory_bytes: 64 << 30, gpus: 8 };

    fn want(job: JobId, gpus: u32, workers: u32, pools: &[(usize, u32)]) -> Want {
        Want { job, needs: Resources::new(1000, 1 << 30, gpus), workers, pools: pools.to_vec() }
    }

    /// The requests as `pool: nodes for job/nodes ...`, then which pool each job waits for.
    fn render(supplies: &[Supply], wants: &[Want]) -> String {
        let (requests, waits) = plan(supplies, wants);
        let mut out: Vec<String> = requests
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let jobs: Vec<String> = r.jobs.iter().map(|n| format!("{}/{}", n.job, n.nodes)).collect();
                format!("pool {i}: {} for {}", r.nodes, jobs.join(" "))
            })
            .collect();
        out.push(format!("waits {waits:?}"));
        out.join("; ")
    }

    #[test]
    fn small_jobs_share_a_new_node_and_starting_nodes_are_used_first() {
        let fresh = Supply { capacity: NODE, starting: 0, room: 4 };
        let wants = [want(1, 4, 1, &[(0, 1)]), want(2, 4, 1, &[(0, 1)]), want(3, 2, 1, &[(0, 1)])];
        assert_eq!(render(&[fresh], &wants), "pool 0: 2 for 1/1 3/1; waits [(1, 0), (2, 0), (3, 0)]");
        // One node already starting takes the first two jobs: only the third needs a new one.
        let starting = Supply { starting: 1, ..fresh };
        assert_eq!(render(&[starting], &wants), "pool 0: 1 for 3/1; waits [(1, 0), (2, 0), (3, 0)]");
    }

    #[test]
    fn nodes_on_their_way_to_a_later_pool_are_used_before_new_ones_of_an_earlier_pool() {
        let first = Supply { capacity: NODE, starting: 0, room: 4 };
        let later = Supply { capacity: NODE, starting: 1, room: 3 };
        let wants = [want(1, 8, 1, &[(0, 1), (1, 1)]), want(2, 8, 1, &[(0, 1), (1, 1)])];
        assert_eq!(render(&[first, later], &wants), "pool 0: 1 for 2/1; pool 1: 0 for ; waits [(1, 1), (2, 0)]");
    }

    #[test]
    fn a_gang_gets_all_its_nodes_or_none_and_room_is_never_exceeded() {
        let supply = Supply { capacity: NODE, starting: 1, room: 2 };
        // The gang of four needs four nodes; one is starting and two more fit: not enough, so nothing is taken for
        // it, and the single job behind it gets the starting node.
        let wants = [want(1, 8, 4, &[(0, 4)]), want(2, 8, 1, &[(0, 1)]), want(3, 8, 2, &[(0, 2)])];
        assert_eq!(render(&[supply], &wants), "pool 0: 2 for 3/2; waits [(2, 0), (3, 0)]");
    }

    #[test]
    fn a_job_goes_to_the_first_pool_that_can_take_it() {
        let full = Supply { capacity: NODE, starting: 0, room: 0 };
        let open = Supply { capacity: NODE, starting: 0, room: 1 };
        let wants = [want(1, 8, 1, &[(0, 1), (1, 1)]), want(2, 8, 1, &[(0, 1), (1, 1)])];
        assert_eq!(render(&[full, open], &wants), "pool 0: 0 for ; pool 1: 1 for 1/1; waits [(1, 1)]");
    }
}
