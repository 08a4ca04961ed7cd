//! Start forecasts: the queue ahead of a job counts, not only what runs now.

use ferry_core::{Event, JobRequest, NoForecast, NodeInfo, Resources, Scheduler, StartForecast};

const GIB: u64 = 1 << 30;
const S: i64 = 1_000_000;

fn node(name: &str, gpus: u32) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.into(),
        pool: "local".into(),
        capacity: Resources::new(16_000, 64 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        ..NodeInfo::default()
    })
}

fn job(id: u64, gpus: u32, priority: i32, limit_s: Option<u64>) -> Event {
    Event::JobSubmitted(JobRequest {
        max_runtime_s: limit_s,
        user: format!("user{id}"),
        ..JobRequest::new(id, Resources::new(1000, GIB, gpus), priority)
    })
}

fn scheduler(events: Vec<Event>) -> Scheduler {
    let mut s = Scheduler::new();
    s.apply(Event::Tick { now_us: 10 * S }).unwrap();
    for e in events {
        s.apply(e).unwrap();
    }
    s
}

#[test]
fn a_forecast_counts_the_jobs_ahead_in_the_queue() {
    let mut s = scheduler(vec![node("a", 2), job(1, 2, 0, Some(100))]);
    s.schedule();
    s.apply(job(2, 2, 0, Some(50))).unwrap();
    s.apply(job(3, 2, 0, None)).unwrap();
    s.schedule();
    // Job 2 waits for job 1 (100 s); job 3 waits for job 1 and then job 2 (50 s more).
    assert_eq!(s.forecast_start(2), Some(StartForecast::At(110 * S)));
    assert_eq!(s.forecast_start(3), Some(StartForecast::At(160 * S)));
    // The lower bound looks only at what runs now.
    assert_eq!(s.estimate_start(3), Some(110 * S));
    // A job that does not wait has no forecast; the fork leaves the real state alone.
    assert_eq!(s.forecast_start(1), None);
    assert_eq!(s.queued(), 2);
    s.check_invariants().unwrap();
}

#[test]
fn lower_priorities_do_not_delay_a_forecast_and_unlimited_work_makes_it_unknown() {
    let mut s = scheduler(vec![node("a", 2), job(1, 2, 0, Some(100))]);
    s.schedule();
    s.apply(job(2, 2, -100, None)).unwrap();
    s.apply(job(3, 2, 0, Some(10))).unwrap();
    s.schedule();
    assert_eq!(s.forecast_start(3), Some(StartForecast::At(110 * S)));
    // Job 2 waits for job 3, and job 1; nothing it waits for is unlimited, so it has a time too.
    assert_eq!(s.forecast_start(2), Some(StartForecast::At(120 * S)));
    s.apply(job(4, 2, -100, Some(5))).unwrap();
    // Job 4 comes after job 2, which has no limit: nobody can say when job 4 starts.
    assert_eq!(s.forecast_start(4), Some(StartForecast::Unknown(NoForecast::Unlimited)));
}

#[test]
fn a_gang_forecast_waits_for_enough_nodes_at_once() {
    let mut s = scheduler(vec![node("a", 2), node("b", 2), job(1, 2, 0, Some(30)), job(2, 2, 0, Some(60))]);
    s.schedule();
    s.apply(Event::JobSubmitted(JobRequest { nodes: 2, ..JobRequest::new(3, Resources::new(1000, GIB, 2), 0) }))
        .unwrap();
    s.schedule();
    assert_eq!(s.forecast_start(3), Some(StartForecast::At(70 * S)));
}

#[test]
fn a_job_for_a_pool_with_no_node_has_no_forecast_and_says_why() {
    // Nothing runs and nothing is coming for the pool it is pinned to: no runtime limit is to blame.
    let mut s = scheduler(vec![node("a", 2)]);
    s.apply(Event::JobSubmitted(JobRequest {
        max_runtime_s: Some(60),
        pool: Some("cloud".into()),
        ..JobRequest::new(1, Resources::new(1000, GIB, 1), 0)
    }))
    .unwrap();
    s.schedule();
    assert_eq!(s.forecast_start(1), Some(StartForecast::Unknown(NoForecast::NothingFrees)));
}

#[test]
fn a_prediction_stands_in_for_a_missing_limit_and_the_forecast_says_so() {
    let predicted = |id: u64, gpus: u32, expected_s: u64| {
        Event::JobSubmitted(JobRequest {
            expected_runtime_s: Some(expected_s),
            user: format!("user{id}"),
            ..JobRequest::new(id, Resources::new(1000, GIB, gpus), 0)
        })
    };
    let mut s = scheduler(vec![node("a", 2), predicted(1, 2, 300)]);
    s.schedule();
    s.apply(job(2, 2, 0, Some(50))).unwrap();
    s.apply(job(3, 2, 0, None)).unwrap();
    s.schedule();
    // Job 1 has no limit but is predicted to run 300 s: job 2 starts at about 310 s, and that rests on a guess.
    assert_eq!(s.forecast_start(2), Some(StartForecast::Predicted(310 * S)));
    assert_eq!(s.expected_end(1), Some((310 * S, true)));
    // Job 3 has neither a limit nor a prediction, so nothing after it can be forecast; before it, it does not count.
    s.apply(job(4, 2, 0, Some(5))).unwrap();
    assert_eq!(s.forecast_start(4), Some(StartForecast::Unknown(NoForecast::Unlimited)));
    // A prediction never makes room to backfill: only a limit, which is enforced, promises an end.
    assert_eq!(s.estimate_start(2), None);
    // Once the job has overrun its prediction, it is expected to end any moment, not in the past.
    s.apply(Event::Tick { now_us: 400 * S }).unwrap();
    assert_eq!(s.expected_end(1), Some((400 * S, true)));
    assert_eq!(s.forecast_start(2), Some(StartForecast::Predicted(400 * S)));
}
