//! Preemption makes progress: no job is stopped over and over for jobs that are then stopped in turn. Found by the
//! simulator's property test (a job of higher priority whose team borrows, and a job within its team's quota,
//! stopping each other for ever), replayed here through the core's events like a driver would: a preempted job ends
//! and is queued again, a started job runs for its duration.

use std::collections::BTreeMap;

use ferry_core::{Decision, Event, JobRequest, NodeInfo, Resources, Scheduler, TeamInfo};

const GIB: u64 = 1 << 30;
/// More cycles than the scenario needs by far; a livelock never gets every job done within them.
const CYCLES_MAX: u32 = 1_000;

fn node(name: &str) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.into(),
        pool: "own".into(),
        capacity: Resources::new(8_000, 16 * GIB, 2),
        gpu_indices: vec![0, 1],
        ..NodeInfo::default()
    })
}

fn team(name: &str, quota: u32, borrow: u32) -> TeamInfo {
    TeamInfo {
        name: name.into(),
        quota: Resources::new(64_000, 256 * GIB, quota),
        borrow_limit: Some(Resources::new(64_000, 256 * GIB, borrow)),
    }
}

/// A job of `workers` workers of `gpus` GPUs each.
fn job(id: u64, team: &str, priority: i32, gpus: u32, workers: u32) -> JobRequest {
    JobRequest {
        user: format!("u-{team}"),
        team: team.into(),
        nodes: workers,
        ..JobRequest::new(id, Resources::new(1000, GIB, gpus), priority)
    }
}

/// Runs the jobs (request, duration in cycles) to their ends; returns how many preemptions it took and the jobs
/// that never started.
fn run(nodes: &[&str], teams: Vec<TeamInfo>, jobs: Vec<(JobRequest, u32)>) -> (u32, Vec<u64>) {
    let mut s = Scheduler::new();
    s.apply(Event::Tick { now_us: 1_000_000 }).unwrap();
    for name in nodes {
        s.apply(node(name)).unwrap();
    }
    s.apply(Event::TeamsConfigured { teams, fair_share_half_life_s: 3600 }).unwrap();
    let requests: BTreeMap<u64, JobRequest> = jobs.iter().map(|(r, _)| (r.id, r.clone())).collect();
    let durations: BTreeMap<u64, u32> = jobs.iter().map(|(r, d)| (r.id, *d)).collect();
    for (request, _) in jobs {
        s.apply(Event::JobSubmitted(request)).unwrap();
    }
    let (mut preemptions, mut left) = (0, durations.clone());
    let mut running: BTreeMap<u64, u32> = BTreeMap::new();
    let mut stopping: Vec<u64> = Vec::new();
    for cycle in 1..=CYCLES_MAX {
        s.apply(Event::Tick { now_us: 1_000_000 + i64::from(cycle) * 1_000_000 }).unwrap();
        // Victims stopped since the last cycle go back to the queue; finished jobs end.
        for id in stopping.drain(..) {
            running.remove(&id);
            s.apply(Event::JobEnded { id }).unwrap();
            s.apply(Event::JobSubmitted(requests[&id].clone())).unwrap();
        }
        let done: Vec<u64> = running.iter().filter(|(_, &end)| end <= cycle).map(|(id, _)| *id).collect();
        for id in done {
            running.remove(&id);
            left.remove(&id);
            s.apply(Event::JobEnded { id }).unwrap();
        }
        if left.is_empty() {
            return (preemptions, Vec::new());
        }
        for decision in s.schedule() {
            match decision {
                Decision::Start { job, .. } => {
                    running.insert(job, cycle + durations[&job]);
                }
                Decision::Preempt { job, .. } => {
                    preemptions += 1;
                    stopping.push(job);
                }
                _ => {}
            }
        }
        s.check_invariants().unwrap();
    }
    (preemptions, left.into_keys().collect())
}

#[test]
fn a_borrowing_job_of_higher_priority_and_a_job_within_its_quota_do_not_stop_each_other_for_ever() {
    // Three 2-GPU nodes. Team a (quota 2, may borrow 2) runs a 4-GPU gang of priority 1; team b (quota 4) a 2-GPU
    // job of priority 0. b's job is within b's quota, and a's gang borrows: whenever the gang runs, b reclaims, and
    // the gang came back by stopping b's job for priority, for as long as both lived.
    let teams = vec![team("a", 2, 2), team("b", 4, 0)];
    let jobs = vec![(job(1, "b", 0, 2, 1), 50), (job(2, "b", 0, 2, 1), 50), (job(3, "a", 1, 2, 2), 50)];
    let (preemptions, never_done) = run(&["n0", "n1", "n2"], teams, jobs);
    assert_eq!(never_done, Vec::<u64>::new(), "every job ends");
    assert!(preemptions <= 2, "{preemptions} preemptions");
}

#[test]
fn a_reclaim_stops_no_job_of_higher_priority_that_would_stop_its_own_team_to_come_back() {
    // Two 2-GPU nodes. Team a (quota 2, may borrow 2) runs a 2-GPU job of priority 1 and starts a 1-GPU job of
    // priority 0, which makes it borrow; team b's 2-worker gang of priority -1 reclaimed the priority-1 job, which
    // came back by stopping the gang and its own team's job, which started again and made a borrow again.
    let teams = vec![team("a", 2, 2), team("b", 4, 2)];
    let jobs = vec![(job(1, "b", -1, 1, 2), 30), (job(2, "a", 1, 2, 1), 250), (job(3, "a", 0, 1, 1), 270)];
    let (preemptions, never_done) = run(&["n0", "n1"], teams, jobs);
    assert_eq!(never_done, Vec::<u64>::new(), "every job ends");
    assert!(preemptions <= 2, "{preemptions} preemptions");
}
