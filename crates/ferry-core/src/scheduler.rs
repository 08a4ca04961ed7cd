//! One scheduling state and the cycle that turns it into decisions.
//!
//! The queue is ordered by priority (higher first), then by job id (which the store hands out in submission order).
//! A cycle walks the queue once: a job that fits on a ready node starts there (best fit, to keep large holes for
//! large jobs); a job that does not fit reserves what it needs on the node closest to holding it, so that jobs
//! behind it may only use what it does not need and can never starve it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::reason::{NodeShortfall, Placement, ResourceKind, WaitReason, SHORTFALL_NODES_MAX};
use crate::resources::Resources;
use crate::JobId;

/// A node as its backend describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub pool: String,
    /// CPUs and memory the node offers; `gpus` must equal `gpu_indices.len()`.
    pub capacity: Resources,
    /// The device indices of the node's GPUs, as the node's driver numbers them.
    pub gpu_indices: Vec<u32>,
}

/// What the scheduler needs to know of a queued job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub id: JobId,
    pub resources: Resources,
    pub priority: i32,
}

/// Where a job runs and what it holds there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub node: String,
    pub resources: Resources,
    pub gpus: Vec<u32>,
}

/// Everything that changes the scheduler's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node registered, or re-registered with new capacity; it is ready.
    NodeUp(NodeInfo),
    /// A node stopped reporting. Its jobs are lost: each yields a `Decision::Lost`.
    NodeDown { node: String },
    /// A job entered the queue.
    JobSubmitted(JobRequest),
    /// A job already running somewhere is re-entered after a restart of the server.
    JobAdopted { id: JobId, allocation: Allocation },
    /// A job left the system (finished, cancelled or lost), wherever it was; its resources are free again.
    JobEnded { id: JobId },
}

/// What the driver must do. Every decision carries its reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Start { job: JobId, allocation: Allocation, reason: Placement },
    Lost { job: JobId, node: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CoreError {
    #[error("job {0} is already known to the scheduler")]
    DuplicateJob(JobId),
    #[error("node {0} is not known to the scheduler")]
    UnknownNode(String),
    #[error("job {job} cannot be adopted on node {node}: {why}")]
    AdoptionConflict { job: JobId, node: String, why: String },
    #[error("node {node} declares {gpus} GPUs but lists {indices} device indices")]
    GpuCountMismatch { node: String, gpus: u32, indices: usize },
}

#[derive(Clone, Debug)]
struct Node {
    info: NodeInfo,
    ready: bool,
    allocated: Resources,
    /// Which job holds each allocated GPU; a GPU absent from this map is free.
    gpu_owner: BTreeMap<u32, JobId>,
    jobs: BTreeSet<JobId>,
}

impl Node {
    fn free(&self) -> Resources {
        self.info.capacity.saturating_sub(&self.allocated)
    }

    fn free_gpus(&self) -> impl Iterator<Item = u32> + '_ {
        self.info.gpu_indices.iter().copied().filter(|g| !self.gpu_owner.contains_key(g))
    }
}

type QueueKey = (Reverse<i32>, JobId);

/// The scheduler's whole state. Cloning it is how the simulator or a what-if query forks it.
#[derive(Clone, Debug, Default)]
pub struct Scheduler {
    nodes: BTreeMap<String, Node>,
    queue: BTreeSet<QueueKey>,
    pending: HashMap<JobId, JobRequest>,
    running: HashMap<JobId, Allocation>,
    /// What the last cycle held back for blocked jobs: job id to the node it reserved.
    reservations: HashMap<JobId, String>,
}

impl Scheduler {
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn allocation(&self, job: JobId) -> Option<&Allocation> {
        self.running.get(&job)
    }

    /// Allocated resources and capacity of a node, for reports.
    pub fn node_usage(&self, node: &str) -> Option<(Resources, Resources)> {
        self.nodes.get(node).map(|n| (n.allocated, n.info.capacity))
    }

    /// Applies one event. Only `NodeDown` yields decisions (the jobs it loses).
    pub fn apply(&mut self, event: Event) -> Result<Vec<Decision>, CoreError> {
        match event {
            Event::NodeUp(info) => self.node_up(info).map(|()| Vec::new()),
            Event::NodeDown { node } => self.node_down(&node),
            Event::JobSubmitted(request) => self.submit(request).map(|()| Vec::new()),
            Event::JobAdopted { id, allocation } => self.adopt(id, allocation).map(|()| Vec::new()),
            Event::JobEnded { id } => {
                self.end(id);
                Ok(Vec::new())
            }
        }
    }

    fn node_up(&mut self, info: NodeInfo) -> Result<(), CoreError> {
        if info.capacity.gpus as usize != info.gpu_indices.len() {
            return Err(CoreError::GpuCountMismatch {
                node: info.name,
                gpus: info.capacity.gpus,
                indices: info.gpu_indices.len(),
            });
        }
        match self.nodes.get_mut(&info.name) {
            Some(node) => {
                node.info = info;
                node.ready = true;
            }
            None => {
                let node = Node {
                    info: info.clone(),
                    ready: true,
                    allocated: Resources::ZERO,
                    gpu_owner: BTreeMap::new(),
                    jobs: BTreeSet::new(),
                };
                self.nodes.insert(info.name, node);
            }
        }
        Ok(())
    }

    fn node_down(&mut self, name: &str) -> Result<Vec<Decision>, CoreError> {
        let node = self.nodes.get_mut(name).ok_or_else(|| CoreError::UnknownNode(name.to_string()))?;
        node.ready = false;
        let lost: Vec<JobId> = node.jobs.iter().copied().collect();
        for &job in &lost {
            self.end(job);
        }
        Ok(lost.into_iter().map(|job| Decision::Lost { job, node: name.to_string() }).collect())
    }

    fn submit(&mut self, request: JobRequest) -> Result<(), CoreError> {
        if self.pending.contains_key(&request.id) || self.running.contains_key(&request.id) {
            return Err(CoreError::DuplicateJob(request.id));
        }
        self.queue.insert((Reverse(request.priority), request.id));
        self.pending.insert(request.id, request);
        Ok(())
    }

    fn adopt(&mut self, id: JobId, allocation: Allocation) -> Result<(), CoreError> {
        if self.pending.contains_key(&id) || self.running.contains_key(&id) {
            return Err(CoreError::DuplicateJob(id));
        }
        let conflict = |why: String| CoreError::AdoptionConflict { job: id, node: allocation.node.clone(), why };
        let node = self.nodes.get(&allocation.node).ok_or_else(|| CoreError::UnknownNode(allocation.node.clone()))?;
        for gpu in &allocation.gpus {
            if !node.info.gpu_indices.contains(gpu) {
                return Err(conflict(format!("the node has no GPU {gpu}")));
            }
            if let Some(owner) = node.gpu_owner.get(gpu) {
                return Err(conflict(format!("GPU {gpu} is held by job {owner}")));
            }
        }
        // Adoption records what already runs, so it may exceed capacity if the node shrank; it never double-books a
        // GPU, which the checks above guarantee.
        self.allocate(id, allocation);
        Ok(())
    }

    fn allocate(&mut self, id: JobId, allocation: Allocation) {
        let node = self.nodes.get_mut(&allocation.node).expect("allocation on a known node");
        node.allocated = node.allocated.checked_add(&allocation.resources).unwrap_or(node.allocated);
        for &gpu in &allocation.gpus {
            let previous = node.gpu_owner.insert(gpu, id);
            assert!(previous.is_none(), "GPU {gpu} of node {} allocated twice", allocation.node);
        }
        node.jobs.insert(id);
        self.running.insert(id, allocation);
    }

    fn end(&mut self, id: JobId) {
        if let Some(request) = self.pending.remove(&id) {
            self.queue.remove(&(Reverse(request.priority), id));
        }
        self.reservations.remove(&id);
        let Some(allocation) = self.running.remove(&id) else { return };
        let Some(node) = self.nodes.get_mut(&allocation.node) else { return };
        node.allocated = node.allocated.saturating_sub(&allocation.resources);
        for gpu in &allocation.gpus {
            node.gpu_owner.remove(gpu);
        }
        node.jobs.remove(&id);
    }

    /// One scheduling cycle: starts every queued job that fits, in queue order, honouring the reservations of the
    /// blocked jobs ahead of it.
    pub fn schedule(&mut self) -> Vec<Decision> {
        // Step 1: what each ready node has free; reservations shrink it as the walk goes on.
        let mut free: BTreeMap<String, Resources> =
            self.nodes.iter().filter(|(_, n)| n.ready).map(|(name, n)| (name.clone(), n.free())).collect();
        self.reservations.clear();
        let mut starts = Vec::new();
        let order: Vec<QueueKey> = self.queue.iter().copied().collect();
        for key in order {
            // Every job needs some CPU, so once no CPU is left unreserved nothing further can start.
            if free.values().all(|r| r.cpu_millis == 0) {
                break;
            }
            let request = &self.pending[&key.1];
            // Step 2: feasibility, then ranking by best fit (fewest GPUs, then CPUs left over; name breaks ties).
            let fitting = free.iter().filter(|(_, f)| request.resources.fits_in(f));
            let candidates = fitting.clone().count() as u32;
            let best = fitting
                .map(|(name, f)| {
                    let left = f.saturating_sub(&request.resources);
                    ((left.gpus, left.cpu_millis, left.memory_bytes), name)
                })
                .min()
                .map(|(_, name)| name.clone());
            match best {
                Some(node) => {
                    let request = self.pending.remove(&key.1).expect("queued job is pending");
                    self.queue.remove(&key);
                    let slot = free.get_mut(&node).expect("candidate is a ready node");
                    *slot = slot.saturating_sub(&request.resources);
                    let gpus: Vec<u32> = self.nodes[&node].free_gpus().take(request.resources.gpus as usize).collect();
                    let reason =
                        Placement { candidates, gpus_free_after: slot.gpus, cpu_millis_free_after: slot.cpu_millis };
                    let allocation = Allocation { node, resources: request.resources, gpus };
                    self.allocate(request.id, allocation.clone());
                    starts.push(Decision::Start { job: request.id, allocation, reason });
                }
                None => self.reserve(key.1, &mut free),
            }
        }
        debug_assert_eq!(self.check_invariants(), Ok(()));
        starts
    }

    /// Holds back, on the node closest to fitting a blocked job, what that job needs.
    fn reserve(&mut self, job: JobId, free: &mut BTreeMap<String, Resources>) {
        let needs = self.pending[&job].resources;
        let nearest = free
            .iter()
            .filter(|(name, _)| needs.fits_in(&self.nodes[*name].info.capacity))
            .max_by_key(|(name, f)| (f.gpus.min(needs.gpus), f.cpu_millis.min(needs.cpu_millis), Reverse(*name)))
            .map(|(name, _)| name.clone());
        if let Some(node) = nearest {
            let slot = free.get_mut(&node).expect("nearest is a ready node");
            *slot = slot.saturating_sub(&needs);
            self.reservations.insert(job, node);
        }
    }

    /// Why a queued job waits, computed from the current state. `None` for a job that is not queued.
    pub fn explain(&self, job: JobId) -> Option<WaitReason> {
        let request = self.pending.get(&job)?;
        let needs = request.resources;
        if self.nodes.is_empty() {
            return Some(WaitReason::NoNodes);
        }
        if let Some(reason) = self.infeasible(&needs) {
            return Some(reason);
        }
        let ready: Vec<&Node> = self.nodes.values().filter(|n| n.ready).collect();
        if ready.is_empty() {
            return Some(WaitReason::NoReadyNodes { nodes: self.nodes.len() as u32 });
        }
        if ready.iter().any(|n| needs.fits_in(&n.free())) {
            let my_key = (Reverse(request.priority), job);
            let blocker = self
                .reservations
                .iter()
                .filter(|(other, _)| self.pending.get(other).is_some_and(|r| (Reverse(r.priority), **other) < my_key))
                .min_by_key(|(other, _)| (Reverse(self.pending[other].priority), **other));
            return Some(match blocker {
                Some((other, node)) => WaitReason::ReservedFor { job: *other, node: node.clone() },
                None => WaitReason::Starting,
            });
        }
        Some(self.shortfall(&needs, &ready))
    }

    fn infeasible(&self, needs: &Resources) -> Option<WaitReason> {
        if self.nodes.values().any(|n| needs.fits_in(&n.info.capacity)) {
            return None;
        }
        let largest = self.nodes.values().fold(Resources::ZERO, |acc, n| acc.max(&n.info.capacity));
        let (resource, needed, largest) = first_short(needs, &largest)?;
        Some(WaitReason::Infeasible { resource, needed, largest })
    }

    /// The largest capacity of any known node, per dimension; `None` before any node registered.
    pub fn largest_node(&self) -> Option<Resources> {
        self.nodes.values().map(|n| n.info.capacity).reduce(|a, b| a.max(&b))
    }

    /// Why `needs` cannot be placed at all, if no known node is large enough even when empty.
    pub fn check_feasible(&self, needs: &Resources) -> Result<(), WaitReason> {
        match self.infeasible(needs) {
            Some(reason) if !self.nodes.is_empty() => Err(reason),
            _ => Ok(()),
        }
    }

    fn shortfall(&self, needs: &Resources, ready: &[&Node]) -> WaitReason {
        // Name the dimension most nodes are short of, GPUs first since they are the scarce resource.
        let mut shortfalls: Vec<NodeShortfall> = ready
            .iter()
            .filter_map(|node| {
                let (resource, _, free) = first_short(needs, &node.free())?;
                let held_by: Vec<JobId> = match resource {
                    ResourceKind::Gpus => {
                        node.gpu_owner.values().copied().collect::<BTreeSet<_>>().into_iter().collect()
                    }
                    ResourceKind::Cpus | ResourceKind::Memory => node.jobs.iter().copied().collect(),
                };
                let held = match resource {
                    ResourceKind::Gpus => node.allocated.gpus as u64,
                    ResourceKind::Cpus => node.allocated.cpu_millis,
                    ResourceKind::Memory => node.allocated.memory_bytes,
                };
                Some(NodeShortfall { node: node.info.name.clone(), resource, free, held, held_by })
            })
            .collect();
        // Nodes whose capacity could never hold the job matter less than those that are merely busy.
        shortfalls.sort_by_key(|s| (!needs.fits_in(&self.nodes[&s.node].info.capacity), Reverse(s.free)));
        let resource = shortfalls.first().map(|s| s.resource).unwrap_or(ResourceKind::Cpus);
        shortfalls.retain(|s| s.resource == resource);
        let more_nodes = shortfalls.len().saturating_sub(SHORTFALL_NODES_MAX) as u32;
        shortfalls.truncate(SHORTFALL_NODES_MAX);
        let needed = amount(needs, resource);
        WaitReason::Insufficient { resource, needed, shortfalls, more_nodes }
    }

    /// Checks, from the outside, what the cycle promises: no GPU held twice, no node over capacity, each job in
    /// exactly one place. The simulator calls this after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (job, allocation) in &self.running {
            if self.pending.contains_key(job) {
                return Err(format!("job {job} is both queued and running"));
            }
            let node = &self.nodes[&allocation.node];
            for gpu in &allocation.gpus {
                if node.gpu_owner.get(gpu) != Some(job) {
                    return Err(format!("GPU {gpu} of node {} is not recorded as job {job}'s", node.info.name));
                }
            }
        }
        for node in self.nodes.values() {
            let sum = node
                .jobs
                .iter()
                .map(|j| self.running[j].resources)
                .fold(Resources::ZERO, |acc, r| acc.checked_add(&r).unwrap_or(acc));
            if sum != node.allocated {
                return Err(format!(
                    "node {} records {:?} allocated but its jobs hold {:?}",
                    node.info.name, node.allocated, sum
                ));
            }
            if node.gpu_owner.len() as u32 != node.allocated.gpus {
                return Err(format!(
                    "node {} has {} GPU owners for {} allocated GPUs",
                    node.info.name,
                    node.gpu_owner.len(),
                    node.allocated.gpus
                ));
            }
        }
        if self.queue.len() != self.pending.len() {
            return Err(format!("queue holds {} entries for {} pending jobs", self.queue.len(), self.pending.len()));
        }
        Ok(())
    }
}

fn amount(r: &Resources, kind: ResourceKind) -> u64 {
    match kind {
        ResourceKind::Gpus => r.gpus as u64,
        ResourceKind::Cpus => r.cpu_millis,
        ResourceKind::Memory => r.memory_bytes,
    }
}

/// The first dimension, GPUs then CPUs then memory, in which `needs` exceeds `available`: (kind, needed, available).
fn first_short(needs: &Resources, available: &Resources) -> Option<(ResourceKind, u64, u64)> {
    [ResourceKind::Gpus, ResourceKind::Cpus, ResourceKind::Memory]
        .into_iter()
        .find(|&k| amount(needs, k) > amount(available, k))
        .map(|k| (k, amount(needs, k), amount(available, k)))
}
