//! The checker's starvation watch: waiting jobs that some idle node could hold.
//!
//! Two things are kept, each at a cost proportional to what a step changed rather than to waiting jobs times nodes:
//! - the promise: no job waits longer than the starvation bound while an idle node could hold it, when no
//!   reservation of the core holds that node back (for a gang waiting for the rest of its nodes, say) and no policy
//!   holds the job (its team's or project's limit, a burst pool's delay, preemptions under way for it). Breaking it
//!   fails the run;
//! - a figure: how long each job waited while some idle node could hold it, whatever held it back (reservations
//!   included), reported with the run.
//!
//! Waiting jobs are filed by class: jobs alike in what they need of each node, how many workers they have and which
//! nodes allow them. Whether an idle node could hold a class is worked out once per class and step, and only while
//! some node is idle; the core's explanation of a single job's wait (which looks at every node) is asked only for the
//! jobs of a class that an unreserved idle node could hold, which a working core leaves few of.
//!
//! This module must never change the state it checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_core::{JobId, JobRequest, NodeInfo, Resources, Scheduler, WaitReason};

use crate::checker::allows;
use crate::error::fmt_ms;
use crate::ledger::Ledger;

/// What decides which idle nodes could hold a job.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClassKey {
    needs: Resources,
    workers: u32,
    wants_gpu: bool,
    gpu_models: Vec<String>,
    selector: BTreeMap<String, String>,
}

impl ClassKey {
    fn of(request: &JobRequest) -> ClassKey {
        ClassKey {
            needs: needs(request),
            workers: request.workers(),
            wants_gpu: request.resources.gpus > 0 || request.gpu_share_milli > 0,
            gpu_models: request.gpu_models.clone(),
            selector: request.selector.clone(),
        }
    }
}

/// What a job needs of each of its nodes: its CPUs, memory and whole GPUs, a share counting as one GPU.
fn needs(request: &JobRequest) -> Resources {
    let gpus = request.resources.gpus + u32::from(request.gpu_share_milli > 0);
    Resources { gpus, ..request.resources }
}

/// The waiting jobs of one class, and the time some idle node could hold them: `idle_ms` in total up to
/// `idle_since`, and since then if it is set.
#[derive(Debug)]
struct Class {
    /// A job of the class, to match nodes against.
    request: JobRequest,
    jobs: BTreeSet<JobId>,
    idle_ms: u64,
    idle_since: Option<u64>,
}

impl Class {
    /// The class's idle time up to `now_ms`.
    fn idle_ms_at(&self, now_ms: u64) -> u64 {
        self.idle_ms + self.idle_since.map_or(0, |since| now_ms.saturating_sub(since))
    }
}

/// How long jobs waited while an idle node could hold them, over a whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdleWaits {
    /// Jobs that waited at all while a node that could hold them idled.
    pub jobs: u64,
    pub max_ms: u64,
    /// The 95th and 99th percentiles (nearest rank) over every job of the run, those that never waited so included.
    pub p95_ms: u64,
    pub p99_ms: u64,
}

/// The starvation watch of one run.
#[derive(Debug)]
pub struct Starvation {
    bound_ms: u64,
    classes: Vec<Class>,
    ids: HashMap<ClassKey, usize>,
    /// Each waiting job's class, and its class's idle time when it began to wait.
    waiting: HashMap<JobId, (usize, u64)>,
    /// Classes that some idle node could hold at the last step.
    idle_for: BTreeSet<usize>,
    /// Jobs that an unreserved idle node could hold with no policy holding them, and since when.
    runnable_since: BTreeMap<JobId, u64>,
    /// Each job's time waiting while an idle node could hold it, over all its waits.
    idle_waits_ms: HashMap<JobId, u64>,
}

impl Starvation {
    pub fn new(bound_ms: u64) -> Starvation {
        Starvation {
            bound_ms,
            classes: Vec::new(),
            ids: HashMap::new(),
            waiting: HashMap::new(),
            idle_for: BTreeSet::new(),
            runnable_since: BTreeMap::new(),
            idle_waits_ms: HashMap::new(),
        }
    }

    /// A job began to wait at `now_ms`.
    pub fn submitted(&mut self, request: &JobRequest, now_ms: u64) {
        let key = ClassKey::of(request);
        let next = self.classes.len();
        let k = *self.ids.entry(key).or_insert(next);
        if k == next {
            let class = Class { request: request.clone(), jobs: BTreeSet::new(), idle_ms: 0, idle_since: None };
            self.classes.push(class);
        }
        let class = &mut self.classes[k];
        class.jobs.insert(request.id);
        self.waiting.insert(request.id, (k, class.idle_ms_at(now_ms)));
    }

    /// A job stopped waiting at `now_ms` (it started, or left the queue).
    pub fn left(&mut self, job: JobId, now_ms: u64) {
        let Some((k, at_entry)) = self.waiting.remove(&job) else { return };
        let class = &mut self.classes[k];
        class.jobs.remove(&job);
        let waited = class.idle_ms_at(now_ms).saturating_sub(at_entry);
        if waited > 0 {
            *self.idle_waits_ms.entry(job).or_default() += waited;
        }
        self.runnable_since.remove(&job);
    }

    /// Checks the promise after a step at `now_ms`, then notes which waiting jobs idle nodes could hold from now on.
    pub fn check(&mut self, core: &Scheduler, ledger: &Ledger, now_ms: u64) -> Result<(), String> {
        if self.waiting.len() != ledger.waiting.len() {
            return Err(format!(
                "the checker follows {} waiting jobs, the ledger has {}: a job's wait began or ended unseen",
                self.waiting.len(),
                ledger.waiting.len()
            ));
        }
        // The state held from `since` until now, since nothing changes between steps.
        for (job, since) in &self.runnable_since {
            if now_ms - since > self.bound_ms {
                let request = &ledger.waiting[job];
                let idle = IdleNodes::of(core, ledger);
                let node = idle.first_for(request, true).map(|n| n.name.as_str()).unwrap_or("?");
                return Err(format!(
                    "job {job} waited {}s, beyond the starvation bound of {}s, while node {node} sat idle, held back for no job, and could hold it",
                    fmt_ms(now_ms - since),
                    fmt_ms(self.bound_ms),
                ));
            }
        }
        let mut idle_for = BTreeSet::new();
        let mut runnable = BTreeSet::new();
        // Gathered only when some job waits: a trace with idle nodes and an empty queue costs nothing here.
        if !ledger.idle.is_empty() && !ledger.waiting.is_empty() {
            let idle = IdleNodes::of(core, ledger);
            for (k, class) in self.classes.iter().enumerate().filter(|(_, c)| !c.jobs.is_empty()) {
                if idle.first_for(&class.request, false).is_none() {
                    continue;
                }
                idle_for.insert(k);
                if idle.first_for(&class.request, true).is_some() {
                    let waits_on_purpose =
                        |job: &JobId| held_by_policy(core, *job) || backing_off(ledger, *job, now_ms);
                    runnable.extend(class.jobs.iter().copied().filter(|job| !waits_on_purpose(job)));
                }
            }
        }
        for &k in self.idle_for.difference(&idle_for) {
            let class = &mut self.classes[k];
            class.idle_ms = class.idle_ms_at(now_ms);
            class.idle_since = None;
        }
        for &k in idle_for.difference(&self.idle_for) {
            self.classes[k].idle_since = Some(now_ms);
        }
        self.idle_for = idle_for;
        self.runnable_since.retain(|job, _| runnable.contains(job));
        for job in runnable {
            self.runnable_since.entry(job).or_insert(now_ms);
        }
        Ok(())
    }

    /// The figure of the run so far, over `jobs` jobs (those that never waited while a node idled count as 0).
    pub fn idle_waits(&self, jobs: u64) -> IdleWaits {
        let mut waits: Vec<u64> = self.idle_waits_ms.values().copied().collect();
        if waits.is_empty() {
            return IdleWaits::default();
        }
        waits.sort_unstable();
        let rank = |p: u64| -> u64 {
            // Nearest rank over all jobs: the jobs that never waited fill the ranks below the listed ones.
            let n = jobs.max(waits.len() as u64);
            let r = (p * n).div_ceil(100).max(1);
            let zeros = n - waits.len() as u64;
            if r <= zeros {
                0
            } else {
                waits[(r - zeros - 1) as usize]
            }
        };
        IdleWaits {
            jobs: waits.len() as u64,
            max_ms: waits.last().copied().unwrap_or(0),
            p95_ms: rank(95),
            p99_ms: rank(99),
        }
    }
}

/// Whether the job is a retry waiting out its backoff (`JobRequest::not_before_us`), which the core keeps from
/// starting on purpose.
fn backing_off(ledger: &Ledger, job: JobId, now_ms: u64) -> bool {
    ledger.waiting.get(&job).is_some_and(|r| r.not_before_us > (now_ms as i64).saturating_mul(1000))
}

/// Whether the core says a policy keeps the job waiting on purpose.
fn held_by_policy(core: &Scheduler, job: JobId) -> bool {
    matches!(
        core.explain(job),
        Some(
            WaitReason::OverTeamLimit { .. }
                | WaitReason::OverProjectLimit { .. }
                | WaitReason::BurstNotYet { .. }
                | WaitReason::Preempting { .. }
        )
    )
}

/// An idle node that allows the job and whose capacity holds it; for a gang, the first of as many such nodes in one
/// pool as it has workers.
pub fn idle_node_for<'a>(ledger: &'a Ledger, request: &JobRequest) -> Option<&'a NodeInfo> {
    let idle: Vec<(&NodeInfo, Resources)> =
        ledger.idle.keys().map(|name| (&ledger.nodes[name].info, Resources::ZERO)).collect();
    IdleNodes(idle).first_for(request, false)
}

/// The idle nodes after a step, in name order, each with what the core's last cycle held back there for blocked
/// jobs; gathered once a step, since every class of waiting jobs is matched against them.
struct IdleNodes<'a>(Vec<(&'a NodeInfo, Resources)>);

impl<'a> IdleNodes<'a> {
    fn of(core: &Scheduler, ledger: &'a Ledger) -> IdleNodes<'a> {
        let held = |name: &str| core.held_back(name).map_or(Resources::ZERO, |h| h.resources);
        IdleNodes(ledger.idle.keys().map(|name| (&ledger.nodes[name].info, held(name))).collect())
    }

    /// The first idle node that allows the job and holds it in its capacity (less what is held back there, where
    /// `unreserved`); for a gang, the first of as many such nodes in one pool as it has workers.
    fn first_for(&self, request: &JobRequest, unreserved: bool) -> Option<&'a NodeInfo> {
        let needs = needs(request);
        let mut fitting = self.0.iter().filter_map(|&(info, held)| {
            let room = if unreserved { info.capacity.saturating_sub(&held) } else { info.capacity };
            // The numbers first: most idle nodes are ruled out by them, before any name is compared.
            (needs.fits_in(&room) && allows(info, request)).then_some(info)
        });
        let workers = request.workers() as usize;
        if workers == 1 {
            return fitting.next();
        }
        let mut by_pool: BTreeMap<&str, Vec<&NodeInfo>> = BTreeMap::new();
        for info in fitting {
            let nodes = by_pool.entry(info.pool.as_str()).or_default();
            nodes.push(info);
            if nodes.len() == workers {
                return Some(nodes[0]);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figure_ranks_over_every_job() {
        let mut s = Starvation::new(1);
        s.idle_waits_ms.insert(1, 50);
        s.idle_waits_ms.insert(2, 10);
        let figure = s.idle_waits(100);
        assert_eq!(figure, IdleWaits { jobs: 2, max_ms: 50, p95_ms: 0, p99_ms: 10 });
        assert_eq!(s.idle_waits(2).p95_ms, 50);
        assert_eq!(Starvation::new(1).idle_waits(0), IdleWaits::default());
    }
}
