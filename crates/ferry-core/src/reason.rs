//! Why a job starts where it does, and why a job waits: structured data first, text second.

use std::fmt;

use ferry_units::{format_bytes, format_cpus};
use serde::{Deserialize, Serialize};

use crate::resources::Resources;
use crate::JobId;

/// How many nodes a wait reason names before it summarises the rest, so that a message stays readable on a large
/// cluster.
pub const SHORTFALL_NODES_MAX: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Gpus,
    Cpus,
    Memory,
}

impl ResourceKind {
    /// Renders an amount of this resource the way a person writes it: "4 GPUs", "1.5 CPUs", "8GiB of memory".
    pub fn amount(self, value: u64) -> String {
        match self {
            ResourceKind::Gpus if value == 1 => "1 GPU".to_string(),
            ResourceKind::Gpus => format!("{value} GPUs"),
            ResourceKind::Cpus if value == 1000 => "1 CPU".to_string(),
            ResourceKind::Cpus => format!("{} CPUs", format_cpus(value)),
            ResourceKind::Memory => format!("{} of memory", format_bytes(value)),
        }
    }

    fn free_amount(self, value: u64) -> String {
        match self {
            ResourceKind::Gpus => value.to_string(),
            ResourceKind::Cpus => format!("{} CPUs", format_cpus(value)),
            ResourceKind::Memory => format_bytes(value),
        }
    }
}

/// How one node falls short of what a waiting job needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeShortfall {
    pub node: String,
    pub resource: ResourceKind,
    pub free: u64,
    /// The amount of that resource held by running jobs on the node.
    pub held: u64,
    /// The running jobs that hold some of it, lowest id first.
    pub held_by: Vec<JobId>,
}

/// Why a queued job has not started. Every variant is data the API returns as is; `Display` is the sentence the CLI
/// prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitReason {
    /// No node has ever registered with the server.
    NoNodes,
    /// Nodes exist, but none the job may run on is ready (their agents stopped reporting, their engine does not
    /// answer). `nodes` counts the nodes it may run on: those of `pool` when it is pinned to one, which may have none
    /// yet (an engine not connected, agents not joined).
    NoReadyNodes {
        nodes: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<String>,
    },
    /// No node allows the job: none has the GPU model it asks for, or the labels its selector names.
    NoMatchingNode {
        gpu_models: Vec<String>,
        selector: Vec<String>,
        models_known: Vec<String>,
        /// The pool the job is pinned to, if it is, and the pools there are.
        #[serde(default)]
        pool: Option<String>,
        #[serde(default)]
        pools_known: Vec<String>,
        /// The job runs in a container image, and some pools' backends do not run images.
        #[serde(default)]
        image: bool,
        /// The job is a gang (a multi-node job), and some pools' backends do not run gangs.
        #[serde(default)]
        gang: bool,
    },
    /// Running jobs are being preempted to make room for it; it starts when they have stopped.
    Preempting { jobs: Vec<JobId> },
    /// Starting the job would take its team past its quota plus what it may borrow.
    OverTeamLimit { team: String, resource: ResourceKind, would_hold: u64, limit: u64 },
    /// Starting the job would take its project past the project's quota plus what it may borrow within the team.
    OverProjectLimit { team: String, project: String, resource: ResourceKind, would_hold: u64, limit: u64 },
    /// No node, even empty, is large enough for the job.
    Infeasible {
        resource: ResourceKind,
        needed: u64,
        largest: u64,
        /// The pool the job is pinned to, whose nodes were the only ones looked at.
        #[serde(default)]
        pool: Option<String>,
    },
    /// Some node could hold the job, but none has enough free right now.
    Insufficient { resource: ResourceKind, needed: u64, shortfalls: Vec<NodeShortfall>, more_nodes: u32 },
    /// The job would fit, but the free resources are held back for a job ahead of it in the queue.
    ReservedFor { job: JobId, node: String },
    /// Only a burst pool could run it now, and bursting is not yet allowed: earlier pools have room for it in
    /// total (it waits for them) and it has not waited `after_s`.
    BurstNotYet { pool: String, after_s: Option<u64>, waited_s: u64 },
    /// A gang (a multi-node job) needs more nodes in one pool than could ever each hold one of its workers.
    GangInfeasible { workers: u32, nodes_able: u32 },
    /// A gang waits until enough nodes of one pool can each hold a worker at the same time; nothing partial starts.
    GangWaiting { workers: u32, nodes_free: u32, pool: String, nodes: Vec<String> },
    /// No node can hold the job now, and new nodes of an elastic pool that can have been requested for it; it
    /// starts when they are up. `nodes_starting` counts all of the pool's requested nodes not yet up.
    Provisioning { pool: String, nodes_starting: u32 },
    /// No node can hold the job now, and the elastic pool that could start one for it is skipped after it failed to
    /// start nodes (`failure`, in the provider's words `detail`), until `until_us`.
    ElasticCoolingDown { pool: String, until_us: i64, failure: String, detail: String },
    /// The job fits now and starts in the next scheduling cycle.
    Starting,
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NoNodes => write!(f, "no node has registered yet; start an agent (`ferry up` starts one)"),
            WaitReason::NoReadyNodes { nodes: 0, pool: Some(pool) } => write!(
                f,
                "pool {pool} has no node yet: its engine has not answered, or no agent of the pool has joined"
            ),
            WaitReason::NoReadyNodes { nodes, pool: Some(pool) } => write!(
                f,
                "none of the {nodes} nodes of pool {pool} is ready; their agents or their engine stopped reporting"
            ),
            WaitReason::NoReadyNodes { nodes, pool: None } => {
                write!(f, "none of the {nodes} known nodes is ready; their agents have stopped reporting")
            }
            WaitReason::NoMatchingNode { gpu_models, selector, models_known, pool, pools_known, image, gang } => {
                let mut wants = Vec::new();
                if *image {
                    wants.push("support for container images (the job has --image)".to_string());
                }
                if *gang {
                    wants.push("support for multi-node jobs (the job has --nodes)".to_string());
                }
                if !gpu_models.is_empty() {
                    wants.push(format!("GPU model {}", gpu_models.join(" or ")));
                }
                if !selector.is_empty() {
                    wants.push(format!("labels {}", selector.join(", ")));
                }
                match pool {
                    Some(pool) if !pools_known.contains(pool) => {
                        write!(f, "there is no pool `{pool}`; the pools are {}", pools_known.join(", "))?;
                        return Ok(());
                    }
                    Some(pool) if wants.is_empty() => write!(f, "no node of pool {pool} can run it")?,
                    Some(pool) => write!(f, "no node of pool {pool} has {}", wants.join(" and "))?,
                    None => write!(f, "no node in any pool has {}", wants.join(" and "))?,
                }
                if !gpu_models.is_empty() {
                    match models_known.as_slice() {
                        [] => write!(f, "; no node reports a GPU model")?,
                        known => write!(f, "; the GPU models known are {}", known.join(", "))?,
                    }
                }
                Ok(())
            }
            WaitReason::Preempting { jobs } => {
                write!(f, "{} preempted to make room for it; it starts when they have stopped", jobs_phrase(jobs))
            }
            WaitReason::OverTeamLimit { team, resource, would_hold, limit } => write!(
                f,
                "team {team} would hold {}, over its limit of {} (quota plus what it may borrow); it starts when the team's other jobs end",
                resource.free_amount(*would_hold),
                resource.free_amount(*limit)
            ),
            WaitReason::OverProjectLimit { team, project, resource, would_hold, limit } => write!(
                f,
                "project {project} of team {team} would hold {}, over its limit of {} (quota plus what it may borrow); it starts when the project's other jobs end",
                resource.free_amount(*would_hold),
                resource.free_amount(*limit)
            ),
            WaitReason::Infeasible { resource, needed, largest, pool } => {
                let place = match pool {
                    Some(pool) => format!("pool {pool}"),
                    None => "any pool".to_string(),
                };
                write!(
                    f,
                    "no node in {place} has {}; the largest has {}",
                    resource.amount(*needed),
                    resource.free_amount(*largest)
                )
            }
            WaitReason::Insufficient { resource, needed, shortfalls, more_nodes } => {
                write!(f, "needs {}; ", resource.amount(*needed))?;
                for (i, s) in shortfalls.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "node {} has {} free", s.node, s.resource.free_amount(s.free))?;
                    if !s.held_by.is_empty() {
                        write!(f, " ({} held by {})", s.resource.free_amount(s.held), jobs_phrase(&s.held_by))?;
                    }
                }
                if *more_nodes > 0 {
                    write!(f, ", and {more_nodes} more nodes are short too")?;
                }
                Ok(())
            }
            WaitReason::ReservedFor { job, node } => {
                write!(f, "the free resources on node {node} are held for job {job}, which is ahead in the queue")
            }
            WaitReason::BurstNotYet { pool, after_s, waited_s } => {
                write!(f, "owned pools have room for it but not on one node yet; ")?;
                match after_s {
                    Some(after) => write!(
                        f,
                        "it may burst to pool {pool} after waiting {} (waited {} so far)",
                        duration(*after),
                        duration(*waited_s)
                    ),
                    None => write!(f, "pool {pool} takes jobs only when the pools before it are full"),
                }
            }
            WaitReason::GangInfeasible { workers, nodes_able } => write!(
                f,
                "a gang of {workers} workers needs {workers} nodes in one pool that can each hold a worker; at most {nodes_able} can"
            ),
            WaitReason::GangWaiting { workers, nodes_free, pool, nodes } => {
                write!(f, "a gang of {workers} workers starts only when {workers} nodes in one pool have room at once; ")?;
                match nodes.as_slice() {
                    [] => write!(f, "no node has room for a worker now"),
                    _ => write!(
                        f,
                        "{nodes_free} node{} in pool {pool} {} room now ({}{})",
                        if *nodes_free == 1 { "" } else { "s" },
                        if *nodes_free == 1 { "has" } else { "have" },
                        nodes.join(", "),
                        if (*nodes_free as usize) > nodes.len() { ", ..." } else { "" }
                    ),
                }
            }
            WaitReason::Provisioning { pool, nodes_starting } => write!(
                f,
                "no node can hold it now; it waits for new nodes of elastic pool {pool} ({nodes_starting} starting)"
            ),
            WaitReason::ElasticCoolingDown { pool, failure, detail, .. } => write!(
                f,
                "no node can hold it now, and elastic pool {pool}, which could start one, is skipped for a while after \
                 it failed to start nodes ({failure}: {detail})"
            ),
            WaitReason::Starting => write!(f, "resources are free; it starts in the next scheduling cycle"),
        }
    }
}

/// "job 3", "jobs 12 and 15", "jobs 1, 2 and 3".
fn jobs_phrase(jobs: &[JobId]) -> String {
    match jobs {
        [one] => format!("job {one}"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|j| j.to_string()).collect();
            format!("jobs {} and {last}", init.join(", "))
        }
        [] => "no job".to_string(),
    }
}

/// "90s", "5m", "2h", "1h30m".
fn duration(s: u64) -> String {
    match s {
        0..120 => format!("{s}s"),
        120..7200 if s.is_multiple_of(60) => format!("{}m", s / 60),
        120..7200 => format!("{}m{}s", s / 60, s % 60),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Why a job went to a burst pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstReason {
    /// How long it had waited when it burst.
    pub waited_s: u64,
    /// The pools before it in the admin's order that the job may use and that could not hold it then (fully
    /// allocated for what it needs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past: Vec<String>,
}

/// Why a job was started on the node it was: its pool, how many ready nodes could hold it and what the chosen one
/// keeps free.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub pool: String,
    /// Set when the pool is a burst pool.
    pub burst: Option<BurstReason>,
    /// Set when the job used resources held for this blocked job, ending (by its runtime limit) before that job's
    /// expected start.
    pub backfilled_before: Option<JobId>,
    pub candidates: u32,
    pub gpus_free_after: u32,
    pub cpu_millis_free_after: u64,
    /// For a gang, every worker's node, rank 0 first; empty for a single-node job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gang_nodes: Vec<String>,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(job) = self.backfilled_before {
            write!(f, "backfilled: it ends by its runtime limit before job {job} can start; ")?;
        }
        if let Some(burst) = &self.burst {
            write!(f, "burst to pool {} after waiting {}", self.pool, duration(burst.waited_s))?;
            if !burst.past.is_empty() {
                write!(f, " ({} fully allocated for it)", burst.past.join(", "))?;
            }
            f.write_str("; ")?;
        }
        if !self.gang_nodes.is_empty() {
            return write!(
                f,
                "gang of {} workers started together on nodes {} in pool {} (best fit); rank 0's node leaves {} GPU{} and {} CPUs free",
                self.gang_nodes.len(),
                self.gang_nodes.join(", "),
                self.pool,
                self.gpus_free_after,
                if self.gpus_free_after == 1 { "" } else { "s" },
                format_cpus(self.cpu_millis_free_after)
            );
        }
        write!(
            f,
            "best fit of {} candidate node{} in pool {}: leaves {} GPU{} and {} CPUs free",
            self.candidates,
            if self.candidates == 1 { "" } else { "s" },
            self.pool,
            self.gpus_free_after,
            if self.gpus_free_after == 1 { "" } else { "s" },
            format_cpus(self.cpu_millis_free_after)
        )
    }
}

/// How many jobs a provisioning reason names before it summarises the rest.
pub const PROVISION_JOBS_NAMED_MAX: usize = 3;

/// A blocked job that new nodes are requested for, and how many of them it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesNeeded {
    pub job: JobId,
    /// Its workers: 1, or more for a gang.
    pub workers: u32,
    /// How many of the new nodes it needs (jobs smaller than a node share them).
    pub nodes: u32,
    /// What each worker needs of a node; a share of a GPU counts as one GPU.
    pub needs: Resources,
}

impl fmt::Display for NodesNeeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.needs.gpus, self.needs.cpu_millis) {
            (0, cpus) => ResourceKind::Cpus.amount(cpus),
            (gpus, _) => ResourceKind::Gpus.amount(u64::from(gpus)),
        };
        match self.workers {
            0 | 1 => write!(f, "job {} needs {what}", self.job),
            workers => write!(
                f,
                "job {}, a gang of {workers} workers of {what}, needs {} new node{}",
                self.job,
                self.nodes,
                if self.nodes == 1 { "" } else { "s" }
            ),
        }
    }
}

/// Why new nodes of an elastic pool are requested: the blocked jobs that no node up or starting can hold, which
/// the burst rules let into the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionReason {
    pub pool: String,
    /// The first jobs the new nodes are for, in queue order (at most `PROVISION_JOBS_NAMED_MAX`).
    pub jobs: Vec<NodesNeeded>,
    /// How many more jobs the new nodes are for.
    pub more_jobs: u32,
    /// How many nodes the pool had, up or starting, before this request.
    pub nodes_before: u32,
    pub max_nodes: u32,
}

impl fmt::Display for ProvisionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, job) in self.jobs.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{job}")?;
        }
        if self.more_jobs > 0 {
            write!(f, ", and {} more job{}", self.more_jobs, if self.more_jobs == 1 { "" } else { "s" })?;
        }
        let room = self.max_nodes.saturating_sub(self.nodes_before);
        write!(
            f,
            "; no node up or starting can hold {}; pool {} has room for {room} more node{} (at most {})",
            if self.jobs.len() + self.more_jobs as usize == 1 { "it" } else { "them" },
            self.pool,
            if room == 1 { "" } else { "s" },
            self.max_nodes
        )
    }
}

/// Why a node of an elastic pool is given back: it has held no job for the pool's `idle_release_s`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseReason {
    pub pool: String,
    /// How long it has held no job.
    pub idle_s: u64,
    pub idle_release_s: u64,
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "it has held no job for {}; elastic pool {} releases nodes idle for {}",
            duration(self.idle_s),
            self.pool,
            duration(self.idle_release_s)
        )
    }
}
