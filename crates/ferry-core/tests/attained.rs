//! Least-attained preemption (after Tiresias): under the least-attained order, a blocked job may stop a running job of
//! its priority that checkpoints, has run its lease, and has received more GPU time (a higher level). Replayed here
//! through the core's events as a driver would: a preempted job ends at the next step and is queued again with the
//! GPU time it had; it resumes from its checkpoint, so only its remaining work runs.

use std::collections::BTreeMap;

use ferry_core::{Decision, Event, JobRequest, NodeInfo, PreemptReason, QueueOrder, Resources, Scheduler};

const GIB: u64 = 1 << 30;
const S: i64 = 1_000_000;
/// The replay's step: every minute, as a server's cycles would be coarser than its ticks.
const STEP_S: i64 = 60;

fn node(name: &str, gpus: u32) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.into(),
        pool: "own".into(),
        capacity: Resources::new(64_000, 256 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        ..NodeInfo::default()
    })
}

fn job(id: u64, gpus: u32, checkpoints: bool) -> JobRequest {
    JobRequest { user: format!("u{id}"), checkpoints, ..JobRequest::new(id, Resources::new(1000, GIB, gpus), 0) }
}

/// What happened in a replay, in order: (time in seconds, job, what).
#[derive(Debug, PartialEq, Eq, Clone)]
enum Happened {
    Started,
    Preempted(PreemptReason),
    Finished,
}

struct Replay {
    s: Scheduler,
    now_s: i64,
    /// Job id to (request as queued again, work left in seconds).
    jobs: BTreeMap<u64, (JobRequest, i64)>,
    /// Running jobs: when they started.
    running: BTreeMap<u64, i64>,
    /// Victims to stop at the next step (their grace period).
    stopping: Vec<u64>,
    log: Vec<(i64, u64, Happened)>,
}

impl Replay {
    fn new(order: QueueOrder, nodes: &[(&str, u32)]) -> Replay {
        let mut s = Scheduler::new();
        s.apply(Event::QueueOrderConfigured(order)).unwrap();
        s.apply(Event::Tick { now_us: 0 }).unwrap();
        for (name, gpus) in nodes {
            s.apply(node(name, *gpus)).unwrap();
        }
        Replay { s, now_s: 0, jobs: BTreeMap::new(), running: BTreeMap::new(), stopping: Vec::new(), log: Vec::new() }
    }

    fn submit(&mut self, mut request: JobRequest, work_s: i64) {
        request.submitted_at_us = self.now_s * S;
        self.jobs.insert(request.id, (request.clone(), work_s));
        self.s.apply(Event::JobSubmitted(request)).unwrap();
    }

    /// Stops the victims, ends what finished, schedules, and moves time on one step.
    fn step(&mut self) {
        self.s.apply(Event::Tick { now_us: self.now_s * S }).unwrap();
        for id in std::mem::take(&mut self.stopping) {
            let started = self.running.remove(&id).unwrap();
            let (request, left) = self.jobs.get_mut(&id).unwrap();
            let ran = self.now_s - started;
            *left -= ran;
            request.attained_gpu_s += ran as u64 * u64::from(request.resources.gpus);
            self.s.apply(Event::JobEnded { id }).unwrap();
            self.s.apply(Event::JobSubmitted(request.clone())).unwrap();
        }
        let done: Vec<u64> =
            self.running.iter().filter(|(id, &at)| self.now_s - at >= self.jobs[id].1).map(|(id, _)| *id).collect();
        for id in done {
            self.running.remove(&id);
            self.jobs.remove(&id);
            self.s.apply(Event::JobEnded { id }).unwrap();
            self.log.push((self.now_s, id, Happened::Finished));
        }
        for decision in self.s.schedule() {
            match decision {
                Decision::Start { job, .. } => {
                    self.running.insert(job, self.now_s);
                    self.log.push((self.now_s, job, Happened::Started));
                }
                Decision::Preempt { job, reason, .. } => {
                    self.stopping.push(job);
                    self.log.push((self.now_s, job, Happened::Preempted(reason)));
                }
                _ => {}
            }
        }
        self.s.check_invariants().unwrap();
        self.now_s += STEP_S;
    }

    fn run_until(&mut self, until_s: i64) {
        while self.now_s <= until_s {
            self.step();
        }
    }

    fn run_to_end(&mut self) {
        for _ in 0..100_000 {
            if self.jobs.is_empty() {
                return;
            }
            self.step();
        }
        panic!("jobs never finished: {:?}", self.jobs.keys().collect::<Vec<_>>());
    }

    fn of(&self, id: u64) -> Vec<(i64, Happened)> {
        self.log.iter().filter(|(_, j, _)| *j == id).map(|(t, _, h)| (*t, h.clone())).collect()
    }
}

#[test]
fn a_long_job_that_checkpoints_is_stopped_for_new_work_once_it_had_a_gpu_hour_and_resumes_after() {
    let mut r = Replay::new(QueueOrder::least_attained(), &[("n", 1)]);
    r.submit(job(1, 1, true), 5 * 3600);
    r.step();
    r.submit(job(2, 1, false), 2 * 3600);
    r.run_to_end();
    // Job 1 is stopped when it reaches the first level (a GPU-hour), not before; job 2 has had none.
    let stopped = Happened::Preempted(PreemptReason::Attained { victim_gpu_s: 3600, preemptor_gpu_s: 0 });
    assert_eq!(r.of(1)[..2], [(0, Happened::Started), (3600, stopped)]);
    // Job 2 runs to its end: job 1, queued again at level 1, cannot stop it before it has had ten GPU-hours.
    assert_eq!(r.of(2), [(3660, Happened::Started), (3660 + 7200, Happened::Finished)]);
    // Job 1 resumes from its checkpoint and runs what it had left (it ran 61 minutes, to the end of its grace).
    assert_eq!(r.of(1)[2..], [(10_860, Happened::Started), (10_860 + 5 * 3600 - 3660, Happened::Finished)]);
}

#[test]
fn a_job_that_does_not_checkpoint_is_never_stopped_for_attained_service() {
    let mut r = Replay::new(QueueOrder::least_attained(), &[("n", 1)]);
    r.submit(job(1, 1, false), 5 * 3600);
    r.step();
    r.submit(job(2, 1, false), 600);
    r.run_to_end();
    assert_eq!(r.of(1), [(0, Happened::Started), (5 * 3600, Happened::Finished)]);
    assert_eq!(r.of(2)[0], (5 * 3600, Happened::Started));
}

#[test]
fn a_resumed_job_runs_its_lease_before_it_can_be_stopped_again() {
    // Job 1 already had eleven GPU-hours (the top level); it starts again and job 2, fresh, arrives a minute later.
    let mut r = Replay::new(QueueOrder::least_attained(), &[("n", 1)]);
    let mut resumed = job(1, 1, true);
    resumed.attained_gpu_s = 11 * 3600;
    r.submit(resumed, 3 * 3600);
    r.step();
    r.submit(job(2, 1, false), 600);
    r.run_until(3600);
    let stopped = Happened::Preempted(PreemptReason::Attained { victim_gpu_s: 11 * 3600 + 600, preemptor_gpu_s: 0 });
    assert_eq!(r.of(1)[..2], [(0, Happened::Started), (600, stopped)], "stopped at the lease of ten minutes");
    assert_eq!(r.of(2)[0], (660, Happened::Started));
}

#[test]
fn with_the_lease_off_or_another_order_nothing_is_stopped_for_attained_service() {
    let off = QueueOrder::least_attained().with_lease(None).unwrap();
    for order in [off, QueueOrder::Fifo, QueueOrder::shortest_first(), QueueOrder::FairShare] {
        let mut r = Replay::new(order.clone(), &[("n", 1)]);
        r.submit(job(1, 1, true), 3 * 3600);
        r.step();
        r.submit(job(2, 1, true), 600);
        r.run_to_end();
        assert_eq!(r.of(1), [(0, Happened::Started), (3 * 3600, Happened::Finished)], "{order:?}");
    }
}

#[test]
fn attained_service_never_stops_a_job_of_higher_priority_and_priority_still_stops_any() {
    let mut r = Replay::new(QueueOrder::least_attained(), &[("n", 1)]);
    let mut important = job(1, 1, true);
    important.priority = 5;
    r.submit(important, 3 * 3600);
    r.step();
    r.submit(job(2, 1, false), 600);
    r.run_to_end();
    assert_eq!(r.of(1), [(0, Happened::Started), (3 * 3600, Happened::Finished)]);
    // A job of higher priority stops a checkpointing job for priority, whatever either had.
    let mut r = Replay::new(QueueOrder::least_attained(), &[("n", 1)]);
    r.submit(job(1, 1, true), 3 * 3600);
    r.step();
    let mut urgent = job(2, 1, false);
    urgent.priority = 5;
    urgent.attained_gpu_s = 50 * 3600;
    r.submit(urgent, 600);
    r.step();
    let priority = PreemptReason::Priority { victim_priority: 0, preemptor_priority: 5 };
    assert_eq!(r.of(1)[1], (60, Happened::Preempted(priority)));
}

#[test]
fn the_job_that_had_the_most_is_stopped_first() {
    // Two 1-GPU jobs that checkpoint on a 2-GPU node; job 2 started an hour after job 1, both past a GPU-hour.
    let mut r = Replay::new(QueueOrder::least_attained(), &[("n", 2)]);
    let mut long = job(1, 1, true);
    long.attained_gpu_s = 20 * 3600;
    r.submit(long, 30 * 3600);
    let mut shorter = job(2, 1, true);
    shorter.attained_gpu_s = 2 * 3600;
    r.submit(shorter, 30 * 3600);
    r.run_until(3600);
    r.submit(job(3, 1, false), 600);
    r.step();
    let preempted: Vec<u64> =
        r.log.iter().filter(|(_, _, h)| matches!(h, Happened::Preempted(_))).map(|(_, j, _)| *j).collect();
    assert_eq!(preempted, vec![1], "the job at the top level goes, once");
}

/// A small deterministic generator, so the property test needs no dependency.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[test]
fn random_checkpointing_workloads_finish_and_every_stop_comes_after_a_lease() {
    for seed in 1..=20 {
        let mut rng = Lcg(seed);
        let mut r = Replay::new(QueueOrder::least_attained(), &[("a", 4), ("b", 4), ("c", 2)]);
        let mut next = 1;
        let mut checkpointing = std::collections::BTreeSet::new();
        // Jobs arrive over ten hours: heavy-tailed durations from minutes to a day, one to four GPUs.
        while r.now_s < 10 * 3600 {
            for _ in 0..rng.below(3) {
                let gpus = [1, 1, 1, 2, 4][rng.below(5) as usize];
                let work_s = [300, 900, 3600, 4 * 3600, 24 * 3600][rng.below(5) as usize] as i64;
                let checkpoints = rng.below(4) != 0;
                if checkpoints {
                    checkpointing.insert(next);
                }
                r.submit(job(next, gpus, checkpoints), work_s);
                next += 1;
            }
            for _ in 0..10 {
                r.step();
            }
        }
        r.run_to_end();
        // Every stop is for attained service, of a job that checkpoints, after it ran at least the lease.
        let mut started_at: BTreeMap<u64, i64> = BTreeMap::new();
        let mut stops = 0;
        for (t, id, what) in &r.log {
            match what {
                Happened::Started => {
                    started_at.insert(*id, *t);
                }
                Happened::Preempted(reason) => {
                    stops += 1;
                    assert!(matches!(reason, PreemptReason::Attained { .. }), "seed {seed}: {reason:?}");
                    assert!(checkpointing.contains(id), "seed {seed}: job {id} does not checkpoint");
                    assert!(t - started_at[id] >= 600, "seed {seed}: job {id} stopped within its lease");
                }
                Happened::Finished => {}
            }
        }
        assert!(stops > 0, "seed {seed}: the workload never exercised preemption");
        assert!(stops < next as usize * 4, "seed {seed}: {stops} stops for {next} jobs is churn");
    }
}

#[test]
fn a_job_that_waited_the_aging_bound_is_not_stopped_for_attained_service() {
    // Job 1 waits two hours behind job 9 (which does not checkpoint), then runs; job 2 arrives once job 1 has had
    // more than a GPU-hour. With an aging bound of an hour, job 1 waited past it and keeps running; with three
    // hours, it had not, and is stopped.
    for (aging_s, stopped) in [(3600, false), (3 * 3600, true)] {
        let order = QueueOrder::configure("least-attained", Some(aging_s)).unwrap();
        let mut r = Replay::new(order, &[("n", 1)]);
        r.submit(job(9, 1, false), 2 * 3600);
        r.step();
        r.submit(job(1, 1, true), 5 * 3600);
        r.run_until(2 * 3600 + 3600 + 600);
        r.submit(job(2, 1, false), 600);
        r.run_until(4 * 3600);
        let preempted = r.of(1).iter().any(|(_, h)| matches!(h, Happened::Preempted(_)));
        assert_eq!(preempted, stopped, "aging {aging_s}: {:?}", r.of(1));
    }
}
