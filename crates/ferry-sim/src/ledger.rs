//! The simulator's own record of the cluster, kept from the decisions the core hands out and independent of the
//! core's internal state, so that the checker can compare the two. It records whatever it is told, double bookings
//! included: judging is the checker's job.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_core::{Allocation, JobId, JobRequest, NodeInfo, Resources};

/// What one node holds, as the decisions say.
#[derive(Clone, Debug)]
pub struct NodeBook {
    pub info: NodeInfo,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// For each wholly allocated GPU, every job the decisions gave it to (more than one is a violation).
    pub whole: BTreeMap<u32, Vec<JobId>>,
    /// For each shared GPU, the jobs sharing it and their thousandths.
    pub shared: BTreeMap<u32, Vec<(JobId, u32)>>,
    pub jobs: BTreeSet<JobId>,
}

impl NodeBook {
    fn new(info: NodeInfo) -> NodeBook {
        NodeBook {
            info,
            cpu_millis: 0,
            memory_bytes: 0,
            whole: BTreeMap::new(),
            shared: BTreeMap::new(),
            jobs: BTreeSet::new(),
        }
    }

    /// Whole GPUs held, counting a GPU once per job that holds it.
    pub fn whole_gpus(&self) -> u32 {
        self.whole.values().map(|jobs| jobs.len() as u32).sum()
    }
}

/// The simulator's view: every node's bookings, the waiting jobs and the running ones, and the nodes elastic pools
/// are starting.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub nodes: BTreeMap<String, NodeBook>,
    pub waiting: BTreeMap<JobId, JobRequest>,
    pub running: HashMap<JobId, (JobRequest, Allocation)>,
    /// Nodes with nothing running on them, and since when (virtual milliseconds).
    pub idle: BTreeMap<String, u64>,
    /// GPUs allocated across the cluster, in thousandths (whole GPUs count 1000).
    pub gpu_milli: u64,
    /// The GPUs of all nodes there are now.
    pub gpus: u64,
    /// How many nodes each pool has now.
    pub pool_nodes: BTreeMap<String, u32>,
    /// For each elastic pool, how many nodes were asked for and are not up yet.
    pub starting: BTreeMap<String, u32>,
    /// What the running jobs of each team hold, as quotas count it (see `quota_amount`), every worker the decisions
    /// name counted; teams holding nothing are left out.
    team_held: HashMap<String, Resources>,
    /// The same for each project, by team and then project.
    project_held: HashMap<String, HashMap<String, Resources>>,
}

impl Ledger {
    pub fn new(nodes: &[NodeInfo]) -> Ledger {
        let mut ledger = Ledger::default();
        for node in nodes {
            ledger.add_node(node.clone(), 0);
        }
        ledger
    }

    /// Records a node that joined at `now_ms`, idle; a node of an elastic pool is one of those it was asked for.
    pub fn add_node(&mut self, info: NodeInfo, now_ms: u64) {
        if let Some(starting) = self.starting.get_mut(&info.pool) {
            *starting = starting.saturating_sub(1);
        }
        *self.pool_nodes.entry(info.pool.clone()).or_default() += 1;
        self.gpus += u64::from(info.capacity.gpus);
        self.idle.insert(info.name.clone(), now_ms);
        self.nodes.insert(info.name.clone(), NodeBook::new(info));
    }

    /// Records that a node is gone; it must exist and hold no job (the error says which is not so). Returns its book.
    pub fn remove_node(&mut self, name: &str) -> Result<NodeBook, String> {
        let Some(book) = self.nodes.get(name) else {
            return Err("it is not in the cluster".to_string());
        };
        if !book.jobs.is_empty() {
            return Err(format!("it holds jobs {:?}", book.jobs));
        }
        let book = self.nodes.remove(name).expect("checked above");
        if let Some(nodes) = self.pool_nodes.get_mut(&book.info.pool) {
            *nodes = nodes.saturating_sub(1);
        }
        self.gpus -= u64::from(book.info.capacity.gpus);
        self.idle.remove(name);
        Ok(book)
    }

    /// Records that `nodes` more nodes of an elastic pool were asked for.
    pub fn provision(&mut self, pool: &str, nodes: u32) {
        *self.starting.entry(pool.to_string()).or_default() += nodes;
    }

    /// `nodes` of the nodes asked of `pool` will not join (they failed to start, or were given up on).
    pub fn not_starting(&mut self, pool: &str, nodes: u32) {
        if let Some(starting) = self.starting.get_mut(pool) {
            *starting = starting.saturating_sub(nodes);
        }
    }

    pub fn submit(&mut self, request: JobRequest) {
        self.waiting.insert(request.id, request);
    }

    /// Records a start, on every worker's node for a gang. Errors only when the start cannot even be recorded: an
    /// unknown job or node.
    pub fn start(&mut self, job: JobId, allocation: Allocation) -> Result<(), String> {
        if !self.waiting.contains_key(&job) {
            return Err(format!("the core started job {job}, which is not waiting"));
        }
        if let Some((node, _)) = allocation.workers().find(|(node, _)| !self.nodes.contains_key(*node)) {
            return Err(format!("the core started job {job} on node {node}, which does not exist"));
        }
        let request = self.waiting.remove(&job).expect("checked above");
        for (node, gpus) in allocation.workers() {
            let book = self.nodes.get_mut(node).expect("checked above");
            book.cpu_millis += allocation.resources.cpu_millis;
            book.memory_bytes += allocation.resources.memory_bytes;
            if allocation.gpu_share_milli > 0 {
                for &gpu in gpus {
                    book.shared.entry(gpu).or_default().push((job, allocation.gpu_share_milli));
                }
            } else {
                for &gpu in gpus {
                    book.whole.entry(gpu).or_default().push(job);
                }
            }
            book.jobs.insert(job);
            self.idle.remove(node);
        }
        self.gpu_milli += held_gpu_milli(&allocation);
        let amount = allocation_quota_amount(&allocation);
        let team = self.team_held.entry(request.team.clone()).or_default();
        *team = saturating_add(team, &amount);
        let projects = self.project_held.entry(request.team.clone()).or_default();
        let project = projects.entry(request.project.clone()).or_default();
        *project = saturating_add(project, &amount);
        self.running.insert(job, (request, allocation));
        Ok(())
    }

    /// What team `team` holds now.
    pub fn team_held(&self, team: &str) -> Resources {
        self.team_held.get(team).copied().unwrap_or_default()
    }

    /// What project `project` of team `team` holds now.
    pub fn project_held(&self, team: &str, project: &str) -> Resources {
        self.project_held.get(team).and_then(|p| p.get(project)).copied().unwrap_or_default()
    }

    /// Takes what a job that ended held off its team's and its project's sums, dropping sums that reach nothing.
    fn release_quota(&mut self, request: &JobRequest, amount: &Resources) {
        if let Some(held) = self.team_held.get_mut(&request.team) {
            *held = held.saturating_sub(amount);
            if *held == Resources::ZERO {
                self.team_held.remove(&request.team);
            }
        }
        if let Some(projects) = self.project_held.get_mut(&request.team) {
            if let Some(held) = projects.get_mut(&request.project) {
                *held = held.saturating_sub(amount);
                if *held == Resources::ZERO {
                    projects.remove(&request.project);
                }
            }
            if projects.is_empty() {
                self.project_held.remove(&request.team);
            }
        }
    }

    /// Records that a job left at `now_ms`, waiting or running; its bookings are released on every worker's node at
    /// once.
    pub fn end(&mut self, job: JobId, now_ms: u64) {
        self.waiting.remove(&job);
        let Some((request, allocation)) = self.running.remove(&job) else { return };
        self.gpu_milli -= held_gpu_milli(&allocation);
        self.release_quota(&request, &allocation_quota_amount(&allocation));
        for (node, gpus) in allocation.workers() {
            let Some(book) = self.nodes.get_mut(node) else { continue };
            book.cpu_millis -= allocation.resources.cpu_millis;
            book.memory_bytes -= allocation.resources.memory_bytes;
            for gpu in gpus {
                if let Some(jobs) = book.whole.get_mut(gpu) {
                    jobs.retain(|j| *j != job);
                    if jobs.is_empty() {
                        book.whole.remove(gpu);
                    }
                }
                if let Some(jobs) = book.shared.get_mut(gpu) {
                    jobs.retain(|(j, _)| *j != job);
                    if jobs.is_empty() {
                        book.shared.remove(gpu);
                    }
                }
            }
            book.jobs.remove(&job);
            if book.jobs.is_empty() {
                self.idle.insert(node.to_string(), now_ms);
            }
        }
    }
}

/// What a job counts against its team's and its project's quotas: what each of its `workers` holds, a share of a
/// GPU counting as one GPU, times `workers`. Worked out here rather than taken from the core, so that a mistake in
/// the core's sums is caught.
pub fn quota_amount(resources: &Resources, gpu_share_milli: u32, workers: u32) -> Resources {
    let gpus = resources.gpus.saturating_add(u32::from(gpu_share_milli > 0));
    let n = u64::from(workers);
    Resources {
        cpu_millis: resources.cpu_millis.saturating_mul(n),
        memory_bytes: resources.memory_bytes.saturating_mul(n),
        gpus: gpus.saturating_mul(workers),
    }
}

/// What a started job counts against its quotas, as its decision says: every worker it was given.
fn allocation_quota_amount(allocation: &Allocation) -> Resources {
    let workers = u32::try_from(allocation.workers().count()).unwrap_or(u32::MAX);
    quota_amount(&allocation.resources, allocation.gpu_share_milli, workers)
}

/// `a` plus `b`, each resource saturating at its largest value.
pub(crate) fn saturating_add(a: &Resources, b: &Resources) -> Resources {
    Resources {
        cpu_millis: a.cpu_millis.saturating_add(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_add(b.memory_bytes),
        gpus: a.gpus.saturating_add(b.gpus),
    }
}

/// The GPUs an allocation holds in thousandths, every worker of a gang counted: 1000 per whole GPU, or its share.
pub fn held_gpu_milli(allocation: &Allocation) -> u64 {
    allocation
        .workers()
        .map(|(_, gpus)| match allocation.gpu_share_milli {
            0 => gpus.len() as u64 * 1000,
            share => u64::from(share),
        })
        .sum()
}
