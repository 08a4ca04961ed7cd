//! The checks run after every step of a simulation: the core's own `check_invariants`, and the simulator's checks
//! from the outside, against its own ledger of the decisions the core made.
//!
//! The outside checks are:
//! - no GPU index is held by two jobs at once (whole, or whole and shared), and only GPUs the node has are held;
//! - the shares of one GPU never add up to more than 1000 thousandths;
//! - no node's CPUs or memory are booked beyond its capacity;
//! - a started job got what it asked for, on a node whose GPU model and labels allow it;
//! - gangs whole: a started gang has exactly as many workers as it asked for, on distinct nodes of one pool, each
//!   holding what it asked for; the core records all of them from the step it started the gang, and none of them
//!   once the gang has ended;
//! - the core and the ledger agree on what each touched node holds and how many jobs wait and run;
//! - quotas respected: no team holds more than its quota plus its `borrow_limit`, and no project more than its quota
//!   plus its own `borrow_limit`, counting every running job in the ledger with all its workers (a share of a GPU as
//!   one GPU). Only teams and projects with a `borrow_limit` have such a ceiling; a group's holdings grow only when
//!   one of its jobs starts, so the groups of the jobs started in a step are the ones checked;
//! - elastic pools: a pool never has more nodes, up or starting, than its `max_nodes`; a node is released only once
//!   it has held no job for the pool's `idle_release`, and never holds none for longer without being released; no
//!   elastic node is left up, nor asked for and not started, after the last event;
//! - starvation (see `starvation`): no job waits longer than the starvation bound while some node that allows it is
//!   completely idle and large enough to hold it in what the core's reservations leave of it, unless the core says a
//!   policy holds it back on purpose (its team's or its project's limit, a burst pool's delay, or preemptions under
//!   way for it). A node held back for a blocked job (a gang waiting for the rest of its nodes) may sit idle on
//!   purpose: such waits are reported as a figure, not failed. A job still waiting after the last event would wait
//!   forever, and is reported too.
//!
//! The core's `check_invariants` walks every running job, so calling it after every step makes a long run
//! quadratic; `core_check_every` can space it out (1, every step, is the default everywhere but one test).
//!
//! This module must never change the state it checks.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ferry_core::{Allocation, JobId, JobRequest, NodeInfo, ProjectInfo, Resources, Scheduler, TeamInfo};

use crate::cluster::first_over;
use crate::error::fmt_ms;
use crate::ledger::{saturating_add, Ledger, NodeBook};
use crate::starvation::{idle_node_for, IdleWaits, Starvation};

/// What one step changed: the nodes touched, the jobs submitted, started and ended (running, or still waiting:
/// withdrawn), and the nodes released.
#[derive(Debug, Default)]
pub struct StepChanges {
    pub nodes: BTreeSet<String>,
    pub submitted: Vec<JobId>,
    pub started: Vec<JobId>,
    pub ended: Vec<JobId>,
    pub withdrawn: Vec<JobId>,
    pub released: Vec<Released>,
}

/// A node of an elastic pool that the core released, and since when it had held no job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    pub node: String,
    pub pool: String,
    pub idle_since_ms: u64,
}

/// What the checker holds an elastic pool to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElasticLimits {
    pub max_nodes: u32,
    pub idle_release_ms: u64,
}

/// The most each team and each project may hold at once: its quota plus its `borrow_limit`, for those with one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ceilings {
    teams: HashMap<String, Resources>,
    /// By team, then project.
    projects: HashMap<String, HashMap<String, Resources>>,
}

impl Ceilings {
    /// The ceilings of the teams and projects that have a `borrow_limit`.
    pub fn new(teams: &[TeamInfo], projects: &[ProjectInfo]) -> Ceilings {
        let mut ceilings = Ceilings::default();
        for team in teams {
            if let Some(borrow) = &team.borrow_limit {
                ceilings.teams.insert(team.name.clone(), saturating_add(&team.quota, borrow));
            }
        }
        for project in projects {
            if let Some(borrow) = &project.borrow_limit {
                let team = ceilings.projects.entry(project.team.clone()).or_default();
                team.insert(project.name.clone(), saturating_add(&project.quota, borrow));
            }
        }
        ceilings
    }

    /// The most team `team` may hold, if it has a ceiling.
    pub fn team(&self, team: &str) -> Option<&Resources> {
        self.teams.get(team)
    }

    /// The most project `project` of team `team` may hold, if it has a ceiling.
    pub fn project(&self, team: &str, project: &str) -> Option<&Resources> {
        self.projects.get(team)?.get(project)
    }
}

/// The outside checker, which remembers since when each waiting job could have run on an idle node.
#[derive(Debug)]
pub struct Checker {
    /// Every how many steps the core's own invariants are checked; 0 never.
    core_check_every: u64,
    starvation: Starvation,
    /// The elastic pools, by name.
    elastic: BTreeMap<String, ElasticLimits>,
    ceilings: Ceilings,
}

impl Checker {
    pub fn new(
        starvation_bound_ms: u64,
        core_check_every: u64,
        elastic: BTreeMap<String, ElasticLimits>,
        ceilings: Ceilings,
    ) -> Checker {
        Checker { core_check_every, starvation: Starvation::new(starvation_bound_ms), elastic, ceilings }
    }

    /// How long jobs waited while an idle node could hold them, over the `jobs` jobs of the run so far.
    pub fn idle_waits(&self, jobs: u64) -> IdleWaits {
        self.starvation.idle_waits(jobs)
    }

    /// Checks the state after step `step` at virtual time `now_ms`. The message says what is wrong.
    pub fn check_step(
        &mut self,
        core: &Scheduler,
        ledger: &Ledger,
        changes: &StepChanges,
        step: u64,
        now_ms: u64,
    ) -> Result<(), String> {
        if self.core_check_every > 0 && step % self.core_check_every == 0 {
            core.check_invariants().map_err(|e| format!("the core's own invariants fail: {e}"))?;
        }
        for node in &changes.nodes {
            let book = ledger.nodes.get(node).ok_or_else(|| format!("node {node} is not in the cluster"))?;
            check_node(book)?;
            check_agreement(core, book)?;
        }
        for job in &changes.started {
            check_placement(ledger, *job)?;
            check_recorded(core, ledger, *job)?;
        }
        for job in &changes.ended {
            check_released(core, ledger, *job)?;
        }
        self.check_quotas(ledger, &changes.started)?;
        if !self.elastic.is_empty() {
            self.check_elastic(ledger, &changes.released, now_ms)?;
        }
        if core.running() != ledger.running.len() || core.queued() != ledger.waiting.len() {
            return Err(format!(
                "the core counts {} running and {} queued jobs, the decisions {} running and {} waiting",
                core.running(),
                core.queued(),
                ledger.running.len(),
                ledger.waiting.len()
            ));
        }
        self.check_starvation(core, ledger, changes, now_ms)
    }

    /// Follows the step's changes to the waiting jobs, then checks that none starves.
    fn check_starvation(
        &mut self,
        core: &Scheduler,
        ledger: &Ledger,
        changes: &StepChanges,
        now_ms: u64,
    ) -> Result<(), String> {
        // A job submitted and started (or withdrawn) in one step never waited between steps.
        for request in changes.submitted.iter().filter_map(|job| ledger.waiting.get(job)) {
            self.starvation.submitted(request, now_ms);
        }
        for job in changes.started.iter().chain(&changes.withdrawn) {
            self.starvation.left(*job, now_ms);
        }
        self.starvation.check(core, ledger, now_ms)
    }

    /// Checks that the teams and projects of the jobs started in the step hold no more than their ceilings.
    fn check_quotas(&self, ledger: &Ledger, started: &[JobId]) -> Result<(), String> {
        for job in started {
            let Some((request, _)) = ledger.running.get(job) else { continue };
            let team = &request.team;
            if let Some(ceiling) = self.ceilings.team(team) {
                if let Some((kind, held, most)) = first_over(&ledger.team_held(team), ceiling) {
                    return Err(format!(
                        "team {team} holds {} once job {job} started, more than its quota plus its borrow_limit ({})",
                        kind.amount(held),
                        kind.amount(most)
                    ));
                }
            }
            let project = &request.project;
            if let Some(ceiling) = self.ceilings.project(team, project) {
                if let Some((kind, held, most)) = first_over(&ledger.project_held(team, project), ceiling) {
                    return Err(format!(
                        "project {project} of team {team} holds {} once job {job} started, more than its quota plus its borrow_limit ({})",
                        kind.amount(held),
                        kind.amount(most)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks the elastic pools: within `max_nodes`, nodes released only once idle long enough, and none idle
    /// longer than that.
    fn check_elastic(&self, ledger: &Ledger, released: &[Released], now_ms: u64) -> Result<(), String> {
        for (pool, limits) in &self.elastic {
            let up = ledger.pool_nodes.get(pool).copied().unwrap_or(0);
            let starting = ledger.starting.get(pool).copied().unwrap_or(0);
            if up + starting > limits.max_nodes {
                return Err(format!(
                    "elastic pool {pool} has {up} nodes and {starting} starting, more than its max_nodes of {}",
                    limits.max_nodes
                ));
            }
        }
        for r in released {
            // The simulator refuses a release from a pool that is not elastic before it gets here.
            let Some(limits) = self.elastic.get(&r.pool) else { continue };
            let idle_ms = now_ms.saturating_sub(r.idle_since_ms);
            if idle_ms < limits.idle_release_ms {
                return Err(format!(
                    "node {} of elastic pool {} was released after {}s without a job, before its idle_release of {}s",
                    r.node,
                    r.pool,
                    fmt_ms(idle_ms),
                    fmt_ms(limits.idle_release_ms)
                ));
            }
        }
        for (node, since) in &ledger.idle {
            let pool = &ledger.nodes[node].info.pool;
            let Some(limits) = self.elastic.get(pool) else { continue };
            let idle_ms = now_ms.saturating_sub(*since);
            if idle_ms > limits.idle_release_ms {
                return Err(format!(
                    "node {node} of elastic pool {pool} has held no job for {}s, past its idle_release of {}s, and was not released",
                    fmt_ms(idle_ms),
                    fmt_ms(limits.idle_release_ms)
                ));
            }
        }
        Ok(())
    }

    /// Checks the state once no event is left: a job still waiting then would wait forever, and an elastic node still
    /// up or starting would never be released.
    pub fn check_end(&self, ledger: &Ledger) -> Result<(), String> {
        if let Some((pool, n)) = ledger.starting.iter().find(|(_, n)| **n > 0) {
            return Err(format!("{n} nodes of elastic pool {pool} were asked for and never started"));
        }
        if let Some(book) = ledger.nodes.values().find(|b| self.elastic.contains_key(&b.info.pool)) {
            return Err(format!(
                "node {} of elastic pool {} is still up after the last event, so it would never be released",
                book.info.name, book.info.pool
            ));
        }
        match ledger.waiting.values().next() {
            None => Ok(()),
            Some(request) => Err(format!(
                "job {} (and {} more) still waits after the last event, so it would never start{}",
                request.id,
                ledger.waiting.len() - 1,
                match idle_node_for(ledger, request) {
                    Some(node) => format!(", although node {} is idle and could hold it", node.name),
                    None => String::new(),
                }
            )),
        }
    }
}

/// Whether a node's GPU model and labels allow a job, whatever is free there. Written here again rather than taken
/// from the core, so that a mistake in the core's version is caught.
pub fn allows(info: &NodeInfo, request: &JobRequest) -> bool {
    let wants_gpu = request.resources.gpus > 0 || request.gpu_share_milli > 0;
    let model_ok = !wants_gpu
        || request.gpu_models.is_empty()
        || info.gpu_model.as_ref().is_some_and(|m| request.gpu_models.iter().any(|w| w.eq_ignore_ascii_case(m)));
    model_ok && request.selector.iter().all(|(k, v)| info.labels.get(k) == Some(v))
}

/// Checks one node's bookings: GPUs held once, shares within a GPU, CPUs and memory within capacity.
pub fn check_node(book: &NodeBook) -> Result<(), String> {
    let name = &book.info.name;
    for (gpu, jobs) in &book.whole {
        if !book.info.gpu_indices.contains(gpu) {
            return Err(format!("job {} holds GPU {gpu} of node {name}, which has no such GPU", jobs[0]));
        }
        if jobs.len() > 1 {
            return Err(format!("GPU {gpu} of node {name} is allocated to jobs {jobs:?} at once"));
        }
        if let Some(sharers) = book.shared.get(gpu) {
            return Err(format!(
                "GPU {gpu} of node {name} is held whole by job {} and shared by job {}",
                jobs[0], sharers[0].0
            ));
        }
    }
    for (gpu, sharers) in &book.shared {
        if !book.info.gpu_indices.contains(gpu) {
            return Err(format!("job {} shares GPU {gpu} of node {name}, which has no such GPU", sharers[0].0));
        }
        let used: u64 = sharers.iter().map(|(_, milli)| u64::from(*milli)).sum();
        if used > 1000 {
            return Err(format!("GPU {gpu} of node {name} is shared {used}/1000 by jobs {:?}", job_ids(sharers)));
        }
    }
    let capacity = &book.info.capacity;
    if book.cpu_millis > capacity.cpu_millis {
        return Err(format!("node {name} has {} CPU millis booked of {}", book.cpu_millis, capacity.cpu_millis));
    }
    if book.memory_bytes > capacity.memory_bytes {
        return Err(format!(
            "node {name} has {} bytes of memory booked of {}",
            book.memory_bytes, capacity.memory_bytes
        ));
    }
    Ok(())
}

fn job_ids(sharers: &[(JobId, u32)]) -> Vec<JobId> {
    sharers.iter().map(|(j, _)| *j).collect()
}

/// Checks that the core's record of a node matches the decisions it handed out.
fn check_agreement(core: &Scheduler, book: &NodeBook) -> Result<(), String> {
    let name = &book.info.name;
    let (allocated, _) = core.node_usage(name).ok_or_else(|| format!("the core does not know node {name}"))?;
    let ours = (book.cpu_millis, book.memory_bytes, book.whole_gpus());
    if (allocated.cpu_millis, allocated.memory_bytes, allocated.gpus) != ours {
        return Err(format!(
            "the core says node {name} holds {allocated:?}, but its decisions add up to {} CPU millis, {} bytes and {} whole GPUs",
            ours.0, ours.1, ours.2
        ));
    }
    Ok(())
}

/// Checks that a started job got what it asked for, on nodes that allow it; for a gang, that it is whole: as many
/// workers as it asked for, on distinct nodes of one pool.
pub fn check_placement(ledger: &Ledger, job: JobId) -> Result<(), String> {
    let Some((request, allocation)) = ledger.running.get(&job) else { return Ok(()) };
    let gpus_expected = match request.gpu_share_milli {
        0 => request.resources.gpus as usize,
        _ => 1,
    };
    let asked_for = || {
        format!(
            "job {job} asked for {:?} and a share of {}, but was given {allocation:?}",
            request.resources, request.gpu_share_milli
        )
    };
    if allocation.resources != request.resources || allocation.gpu_share_milli != request.gpu_share_milli {
        return Err(asked_for());
    }
    check_gang_whole(ledger, request, allocation)?;
    for (node, gpus) in allocation.workers() {
        let info =
            &ledger.nodes.get(node).ok_or_else(|| format!("job {job} runs on node {node}, which is unknown"))?.info;
        if !allows(info, request) {
            return Err(format!(
                "job {job} was started on node {}, whose GPU model {:?} or labels {:?} it does not allow (it asks for models {:?} and labels {:?})",
                info.name, info.gpu_model, info.labels, request.gpu_models, request.selector
            ));
        }
        if gpus.len() != gpus_expected {
            return Err(asked_for());
        }
        let mut distinct = gpus.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != gpus.len() {
            return Err(format!("job {job} was given the same GPU twice on node {node}: {gpus:?}"));
        }
    }
    Ok(())
}

/// Gangs whole: exactly `nodes` workers, each on a node of its own, all in one pool.
fn check_gang_whole(ledger: &Ledger, request: &JobRequest, allocation: &Allocation) -> Result<(), String> {
    let job = request.id;
    let nodes: Vec<&str> = allocation.workers().map(|(node, _)| node).collect();
    if nodes.len() != request.workers() as usize {
        return Err(format!(
            "gang job {job} asks for {} workers but was started with {} (on {nodes:?})",
            request.workers(),
            nodes.len()
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(twice) = nodes.iter().find(|node| !seen.insert(**node)) {
        return Err(format!("gang job {job} has two workers on node {twice}; each worker needs a node of its own"));
    }
    let pools: BTreeSet<&str> =
        nodes.iter().filter_map(|node| ledger.nodes.get(*node)).map(|book| book.info.pool.as_str()).collect();
    if pools.len() > 1 {
        return Err(format!("gang job {job} has workers in pools {pools:?}; a gang runs within one pool"));
    }
    Ok(())
}

/// Checks that the core records a job it just started exactly as its decision said: every worker of a gang from the
/// step it started.
fn check_recorded(core: &Scheduler, ledger: &Ledger, job: JobId) -> Result<(), String> {
    let Some((_, allocation)) = ledger.running.get(&job) else { return Ok(()) };
    match core.allocation(job) {
        Some(recorded) if recorded == allocation => Ok(()),
        recorded => Err(format!("the core records job {job} as {recorded:?}, but its decision gave {allocation:?}")),
    }
}

/// Checks that the core released every worker of a job that ended (unless it started again in the same step).
fn check_released(core: &Scheduler, ledger: &Ledger, job: JobId) -> Result<(), String> {
    match core.allocation(job) {
        Some(held) if !ledger.running.contains_key(&job) => {
            Err(format!("job {job} ended, but the core still records it on {:?}", held.workers().collect::<Vec<_>>()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{expect, Expect};
    use ferry_core::{Allocation, Resources};

    use super::*;

    const GIB: u64 = 1 << 30;

    /// Nodes with two A100s each, in pools: `n1` of pool p, and so on.
    fn ledger(nodes: &[(&str, &str)]) -> Ledger {
        let nodes: Vec<NodeInfo> = nodes
            .iter()
            .map(|(name, pool)| NodeInfo {
                name: name.to_string(),
                pool: pool.to_string(),
                capacity: Resources::new(8000, 32 * GIB, 2),
                gpu_indices: vec![0, 1],
                gpu_model: Some("A100".to_string()),
                ..NodeInfo::default()
            })
            .collect();
        Ledger::new(&nodes)
    }

    /// Fabricates a start in the ledger, bypassing the core, and renders what the node and placement checks say.
    fn check(starts: &[(JobRequest, Allocation)], expected: Expect) {
        let mut ledger = ledger(&[("n1", "p")]);
        for (request, allocation) in starts {
            ledger.submit(request.clone());
            ledger.start(request.id, allocation.clone()).unwrap();
        }
        let mut out = String::new();
        for book in ledger.nodes.values() {
            out += &format!("node: {:?}\n", check_node(book));
        }
        for (request, _) in starts {
            out += &format!("job {}: {:?}\n", request.id, check_placement(&ledger, request.id));
        }
        expected.assert_eq(&out);
    }

    fn whole(id: JobId, cpus: u64, gpus: &[u32]) -> (JobRequest, Allocation) {
        let resources = Resources::new(cpus * 1000, GIB, gpus.len() as u32);
        let allocation = Allocation {
            node: "n1".to_string(),
            resources,
            gpus: gpus.to_vec(),
            gpu_share_milli: 0,
            peers: Vec::new(),
        };
        (JobRequest::new(id, resources, 0), allocation)
    }

    fn share(id: JobId, gpu: u32, milli: u32) -> (JobRequest, Allocation) {
        let resources = Resources::new(1000, GIB, 0);
        let allocation = Allocation {
            node: "n1".to_string(),
            resources,
            gpus: vec![gpu],
            gpu_share_milli: milli,
            peers: Vec::new(),
        };
        (JobRequest { gpu_share_milli: milli, ..JobRequest::new(id, resources, 0) }, allocation)
    }

    #[test]
    fn a_consistent_state_passes() {
        check(
            &[whole(1, 2, &[0]), share(2, 1, 600), share(3, 1, 400)],
            expect![[r#"
                node: Ok(())
                job 1: Ok(())
                job 2: Ok(())
                job 3: Ok(())
            "#]],
        );
    }

    #[test]
    fn catches_a_gpu_given_to_two_jobs() {
        check(
            &[whole(1, 1, &[0]), whole(2, 1, &[0, 1])],
            expect![[r#"
                node: Err("GPU 0 of node n1 is allocated to jobs [1, 2] at once")
                job 1: Ok(())
                job 2: Ok(())
            "#]],
        );
    }

    #[test]
    fn catches_an_overfull_shared_gpu_and_a_whole_gpu_also_shared() {
        check(
            &[share(1, 1, 600), share(2, 1, 500)],
            expect![[r#"
                node: Err("GPU 1 of node n1 is shared 1100/1000 by jobs [1, 2]")
                job 1: Ok(())
                job 2: Ok(())
            "#]],
        );
        check(
            &[whole(1, 1, &[1]), share(2, 1, 500)],
            expect![[r#"
                node: Err("GPU 1 of node n1 is held whole by job 1 and shared by job 2")
                job 1: Ok(())
                job 2: Ok(())
            "#]],
        );
    }

    #[test]
    fn catches_overbooked_cpus_and_gpus_the_node_lacks() {
        check(
            &[whole(1, 6, &[]), whole(2, 3, &[])],
            expect![[r#"
                node: Err("node n1 has 9000 CPU millis booked of 8000")
                job 1: Ok(())
                job 2: Ok(())
            "#]],
        );
        check(
            &[whole(1, 1, &[7])],
            expect![[r#"
                node: Err("job 1 holds GPU 7 of node n1, which has no such GPU")
                job 1: Ok(())
            "#]],
        );
    }

    #[test]
    fn catches_a_placement_the_node_does_not_allow_or_the_job_did_not_ask_for() {
        let (request, allocation) = whole(1, 1, &[0]);
        let v100 = (JobRequest { gpu_models: vec!["V100".to_string()], ..request.clone() }, allocation.clone());
        let wrong = (request.clone(), Allocation { gpus: vec![0, 1], ..allocation });
        check(
            &[v100],
            expect![[r#"
                node: Ok(())
                job 1: Err("job 1 was started on node n1, whose GPU model Some(\"A100\") or labels {} it does not allow (it asks for models [\"V100\"] and labels {})")
            "#]],
        );
        check(
            &[wrong],
            expect![[r#"
                node: Ok(())
                job 1: Err("job 1 asked for Resources { cpu_millis: 1000, memory_bytes: 1073741824, gpus: 1 } and a share of 0, but was given Allocation { node: \"n1\", resources: Resources { cpu_millis: 1000, memory_bytes: 1073741824, gpus: 1 }, gpus: [0, 1], gpu_share_milli: 0, peers: [] }")
            "#]],
        );
    }

    /// A gang of `workers` workers of one GPU each, started on these nodes (rank 0 first) with GPU 0 on each.
    fn gang(id: JobId, workers: u32, nodes: &[&str]) -> (JobRequest, Allocation) {
        let resources = Resources::new(1000, GIB, 1);
        let peers = nodes[1..].iter().map(|n| ferry_core::Peer { node: n.to_string(), gpus: vec![0] }).collect();
        let allocation = Allocation { node: nodes[0].to_string(), resources, gpus: vec![0], gpu_share_milli: 0, peers };
        (JobRequest { nodes: workers, ..JobRequest::new(id, resources, 0) }, allocation)
    }

    /// Fabricates gang starts on nodes n1 and n2 of pool p and n3 of pool q, and renders what the checks say.
    fn check_gangs(starts: &[(JobRequest, Allocation)], expected: Expect) {
        let mut ledger = ledger(&[("n1", "p"), ("n2", "p"), ("n3", "q")]);
        let mut out = String::new();
        for (request, allocation) in starts {
            ledger.submit(request.clone());
            ledger.start(request.id, allocation.clone()).unwrap();
            out += &format!("job {}: {:?}\n", request.id, check_placement(&ledger, request.id));
        }
        for book in ledger.nodes.values() {
            out += &format!("{}: {:?} {:?}\n", book.info.name, book.jobs, check_node(book));
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn a_whole_gang_passes_and_books_every_worker() {
        check_gangs(
            &[gang(1, 2, &["n1", "n2"])],
            expect![[r#"
                job 1: Ok(())
                n1: {1} Ok(())
                n2: {1} Ok(())
                n3: {} Ok(())
            "#]],
        );
    }

    #[test]
    fn catches_a_broken_gang() {
        check_gangs(
            &[gang(1, 3, &["n1", "n2"]), gang(2, 2, &["n1", "n1"]), gang(3, 2, &["n2", "n3"])],
            expect![[r#"
                job 1: Err("gang job 1 asks for 3 workers but was started with 2 (on [\"n1\", \"n2\"])")
                job 2: Err("gang job 2 has two workers on node n1; each worker needs a node of its own")
                job 3: Err("gang job 3 has workers in pools {\"p\", \"q\"}; a gang runs within one pool")
                n1: {1, 2} Err("GPU 0 of node n1 is allocated to jobs [1, 2, 2] at once")
                n2: {1, 3} Err("GPU 0 of node n2 is allocated to jobs [1, 3] at once")
                n3: {3} Ok(())
            "#]],
        );
    }

    #[test]
    fn catches_a_gang_the_core_records_partly_or_keeps_after_its_end() {
        let mut ledger = ledger(&[("n1", "p"), ("n2", "p"), ("n3", "q")]);
        let mut core = Scheduler::new();
        for book in ledger.nodes.values() {
            core.apply(ferry_core::Event::NodeUp(book.info.clone())).unwrap();
        }
        let (request, _) = gang(1, 2, &["n1", "n2"]);
        ledger.submit(request.clone());
        core.apply(ferry_core::Event::JobSubmitted(request)).unwrap();
        let Some(ferry_core::Decision::Start { allocation, .. }) = core.schedule().into_iter().next() else {
            panic!("the gang starts")
        };
        // The decision names both workers; a ledger that lost one disagrees with what the core records.
        ledger.start(1, Allocation { peers: Vec::new(), ..allocation.clone() }).unwrap();
        expect![[r#"
            Err(
                "the core records job 1 as Some(Allocation { node: \"n1\", resources: Resources { cpu_millis: 1000, memory_bytes: 1073741824, gpus: 1 }, gpus: [0], gpu_share_milli: 0, peers: [Peer { node: \"n2\", gpus: [0] }] }), but its decision gave Allocation { node: \"n1\", resources: Resources { cpu_millis: 1000, memory_bytes: 1073741824, gpus: 1 }, gpus: [0], gpu_share_milli: 0, peers: [] }",
            )
        "#]]
        .assert_debug_eq(&check_recorded(&core, &ledger, 1));
        // The gang ended in the ledger but not in the core: the core still holds its workers.
        ledger.end(1, 0);
        expect![[r#"
            Err(
                "job 1 ended, but the core still records it on [(\"n1\", [0]), (\"n2\", [0])]",
            )
        "#]]
        .assert_debug_eq(&check_released(&core, &ledger, 1));
        core.apply(ferry_core::Event::JobEnded { id: 1 }).unwrap();
        assert_eq!(check_released(&core, &ledger, 1), Ok(()));
    }

    #[test]
    fn catches_a_team_or_a_project_past_its_quota_plus_borrow_limit() {
        // Team t may hold 3 + 1 GPUs; its project a 1 + 1, its project b has no ceiling of its own.
        let gpus = |n: u32| Resources { gpus: n, ..Resources::UNLIMITED };
        let team = TeamInfo { name: "t".to_string(), quota: gpus(3), borrow_limit: Some(gpus(1)) };
        let project = |name: &str, borrow_limit| ProjectInfo {
            team: "t".to_string(),
            name: name.to_string(),
            quota: gpus(1),
            borrow_limit,
        };
        let ceilings = Ceilings::new(&[team], &[project("a", Some(gpus(1))), project("b", None)]);
        let checker = Checker::new(60_000, 1, BTreeMap::new(), ceilings);
        let mut ledger = ledger(&[("n1", "p"), ("n2", "p"), ("n3", "p")]);
        let mut out = String::new();
        // Job 4 is a gang with workers on n2 and n3; job 2 holds a share of a GPU, which counts as one GPU.
        let starts = [
            (1, "a", 0, "n1", 0),
            (2, "a", 500, "n1", 1),
            (3, "a", 0, "n2", 0),
            (4, "b", 0, "n2", 0),
            (5, "", 0, "n3", 1),
        ];
        for (id, project, share, node, gpu) in starts {
            let resources = Resources::new(1000, GIB, u32::from(share == 0));
            let peers: Vec<ferry_core::Peer> =
                (id == 4).then(|| ferry_core::Peer { node: "n3".to_string(), gpus: vec![0] }).into_iter().collect();
            let request = JobRequest {
                team: "t".to_string(),
                project: project.to_string(),
                gpu_share_milli: share,
                nodes: peers.len() as u32 + 1,
                ..JobRequest::new(id, resources, 0)
            };
            let allocation =
                Allocation { node: node.to_string(), resources, gpus: vec![gpu], gpu_share_milli: share, peers };
            ledger.submit(request);
            ledger.start(id, allocation).unwrap();
            out += &format!("job {id}: {:?}\n", checker.check_quotas(&ledger, &[id]));
            // Project a's third GPU was caught; taking it back leaves room for the gang.
            if id == 3 {
                ledger.end(3, 0);
            }
        }
        out += &format!("team t holds {:?}, project a {:?}", ledger.team_held("t"), ledger.project_held("t", "a").gpus);
        expect![[r#"
            job 1: Ok(())
            job 2: Ok(())
            job 3: Err("project a of team t holds 3 GPUs once job 3 started, more than its quota plus its borrow_limit (2 GPUs)")
            job 4: Ok(())
            job 5: Err("team t holds 5 GPUs once job 5 started, more than its quota plus its borrow_limit (4 GPUs)")
            team t holds Resources { cpu_millis: 5000, memory_bytes: 5368709120, gpus: 5 }, project a 2"#]].assert_eq(&out);
    }

    #[test]
    fn catches_elastic_pools_past_their_bounds() {
        let limits = ElasticLimits { max_nodes: 1, idle_release_ms: 600_000 };
        let checker = Checker::new(60_000, 1, BTreeMap::from([("p".to_string(), limits)]), Ceilings::default());
        // Node n1 of elastic pool p has idled since 0.
        let mut ledger = ledger(&[("n1", "p")]);
        assert_eq!(checker.check_elastic(&ledger, &[], 600_000), Ok(()));
        expect![[r#"
            Err(
                "node n1 of elastic pool p has held no job for 600.001s, past its idle_release of 600s, and was not released",
            )
        "#]].assert_debug_eq(&checker.check_elastic(&ledger, &[], 600_001));
        expect![[r#"
            Err(
                "node n1 of elastic pool p is still up after the last event, so it would never be released",
            )
        "#]]
        .assert_debug_eq(&checker.check_end(&ledger));
        // Released a millisecond early.
        ledger.remove_node("n1").unwrap();
        let early = Released { node: "n1".to_string(), pool: "p".to_string(), idle_since_ms: 0 };
        expect![[r#"
            Err(
                "node n1 of elastic pool p was released after 599.999s without a job, before its idle_release of 600s",
            )
        "#]]
        .assert_debug_eq(&checker.check_elastic(&ledger, &[early], 599_999));
        // Two nodes asked for where the pool may have one.
        ledger.provision("p", 2);
        expect![[r#"
            Err(
                "elastic pool p has 0 nodes and 2 starting, more than its max_nodes of 1",
            )
        "#]]
        .assert_debug_eq(&checker.check_elastic(&ledger, &[], 0));
        expect![[r#"
            Err(
                "2 nodes of elastic pool p were asked for and never started",
            )
        "#]]
        .assert_debug_eq(&checker.check_end(&ledger));
    }

    #[test]
    fn catches_a_job_that_waits_past_the_bound_while_a_node_idles() {
        let mut ledger = ledger(&[("n1", "p")]);
        ledger.submit(JobRequest::new(1, Resources::new(1000, GIB, 1), 0));
        let core = Scheduler::new();
        let mut checker = Checker::new(60_000, 1, BTreeMap::new(), Ceilings::default());
        let submitted = StepChanges { submitted: vec![1], ..StepChanges::default() };
        assert_eq!(checker.check_starvation(&core, &ledger, &submitted, 0), Ok(()));
        let nothing = StepChanges::default();
        assert_eq!(checker.check_starvation(&core, &ledger, &nothing, 60_000), Ok(()));
        expect![[r#"
            Err(
                "job 1 waited 60.001s, beyond the starvation bound of 60s, while node n1 sat idle, held back for no job, and could hold it",
            )
        "#]]
        .assert_debug_eq(&checker.check_starvation(&core, &ledger, &nothing, 60_001));
        expect![[r#"
            Err(
                "job 1 (and 0 more) still waits after the last event, so it would never start, although node n1 is idle and could hold it",
            )
        "#]]
        .assert_debug_eq(&checker.check_end(&ledger));
    }
}
