//! Queue orderings: FIFO, shortest expected service first with aging, least attained service.

use ferry_core::{Decision, Event, JobRequest, NodeInfo, QueueOrder, Resources, Scheduler};

const GIB: u64 = 1 << 30;
const S: i64 = 1_000_000;

fn started(decisions: &[Decision]) -> Vec<u64> {
    decisions.iter().filter_map(|d| if let Decision::Start { job, .. } = d { Some(*job) } else { None }).collect()
}

/// A one-GPU node that runs job 100; then jobs 1.. queue behind it, each for the whole GPU.
fn busy(order: QueueOrder, jobs: &[JobRequest]) -> Scheduler {
    let mut s = Scheduler::new();
    s.apply(Event::QueueOrderConfigured(order)).unwrap();
    s.apply(Event::Tick { now_us: 0 }).unwrap();
    s.apply(Event::NodeUp(NodeInfo {
        name: "a".into(),
        pool: "local".into(),
        capacity: Resources::new(8000, 32 * GIB, 1),
        gpu_indices: vec![0],
        ..NodeInfo::default()
    }))
    .unwrap();
    s.apply(Event::JobSubmitted(JobRequest { user: "x".into(), ..JobRequest::new(100, gpu(), 0) })).unwrap();
    assert_eq!(started(&s.schedule()), vec![100]);
    for j in jobs {
        s.apply(Event::JobSubmitted(j.clone())).unwrap();
    }
    s
}

fn gpu() -> Resources {
    Resources::new(1000, GIB, 1)
}

fn job(id: u64, user: &str, expected_s: Option<u64>, submitted_s: i64) -> JobRequest {
    JobRequest {
        user: user.into(),
        expected_runtime_s: expected_s,
        submitted_at_us: submitted_s * S,
        ..JobRequest::new(id, gpu(), 0)
    }
}

/// Ends whatever runs and schedules, one job at a time, returning the order in which the queue started.
fn drain(s: &mut Scheduler, mut running: u64, now_s: i64) -> Vec<u64> {
    let mut order = Vec::new();
    let mut now = now_s;
    loop {
        s.apply(Event::JobEnded { id: running }).unwrap();
        now += 1;
        s.apply(Event::Tick { now_us: now * S }).unwrap();
        let next = started(&s.schedule());
        s.check_invariants().unwrap();
        match next.as_slice() {
            [] => return order,
            [one] => {
                order.push(*one);
                running = *one;
            }
            more => panic!("one GPU started {more:?}"),
        }
    }
}

#[test]
fn each_ordering_starts_the_queue_in_its_own_order() {
    // ana's long job came first, then ned's short ones and one without history.
    let jobs = [
        job(1, "ana", Some(36_000), 1),
        job(2, "ana", Some(600), 2),
        job(3, "ned", Some(60), 3),
        job(4, "ned", None, 4),
    ];
    let mut fifo = busy(QueueOrder::Fifo, &jobs);
    assert_eq!(drain(&mut fifo, 100, 10), vec![1, 2, 3, 4]);
    // Shortest first: 60 s, 600 s, the unknown one (taken as an hour), then ten hours.
    let mut sjf = busy(QueueOrder::ShortestFirst { aging_s: 0, unknown_runtime_s: 3600 }, &jobs);
    assert_eq!(drain(&mut sjf, 100, 10), vec![3, 2, 4, 1]);
}

#[test]
fn aging_bounds_how_long_shorter_arrivals_can_pass_a_long_job() {
    // A ten-hour job waits; short jobs keep arriving. With aging at an hour, it starts once it has waited an hour,
    // ahead of the short jobs that arrived since; without aging it would wait behind every one of them.
    let order = QueueOrder::ShortestFirst { aging_s: 3600, unknown_runtime_s: 3600 };
    let mut s = busy(order, &[job(1, "ana", Some(36_000), 0)]);
    let mut running = 100;
    let mut now = 0;
    let mut next_id = 2;
    let long_started_at = loop {
        // A short job arrives every 10 minutes, and whatever runs ends then.
        now += 600;
        s.apply(Event::Tick { now_us: now * S }).unwrap();
        s.apply(Event::JobSubmitted(job(next_id, "ned", Some(60), now))).unwrap();
        next_id += 1;
        s.apply(Event::JobEnded { id: running }).unwrap();
        let next = started(&s.schedule());
        assert_eq!(next.len(), 1);
        running = next[0];
        if running == 1 {
            break now;
        }
        assert!(now < 10 * 3600, "the long job starved");
    };
    assert_eq!(long_started_at, 3600, "the first cycle past its aging bound starts it");
}

#[test]
fn least_attained_puts_work_that_already_had_gpu_time_behind_new_work() {
    let mut resumed = job(1, "ana", None, 1);
    resumed.attained_gpu_s = 50_000;
    let mut partly = job(2, "ana", None, 2);
    partly.attained_gpu_s = 4_000;
    let fresh = job(3, "ned", None, 3);
    let mut s = busy(QueueOrder::least_attained(), &[resumed, partly, fresh]);
    assert_eq!(drain(&mut s, 100, 10), vec![3, 2, 1]);
}

#[test]
fn priority_still_comes_first_under_every_ordering() {
    let mut urgent = job(9, "ana", Some(86_400), 5);
    urgent.priority = 10;
    let jobs = [job(1, "ned", Some(10), 1), urgent];
    for order in [QueueOrder::Fifo, QueueOrder::shortest_first(), QueueOrder::least_attained()] {
        let mut s = busy(order.clone(), &jobs);
        assert_eq!(drain(&mut s, 100, 10), vec![9, 1], "{order:?}");
    }
}
