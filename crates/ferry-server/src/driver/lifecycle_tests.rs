//! The driver's lifecycle, deterministically: a manual clock, the store in a temporary file, commands applied in
//! batches as the driver's loop would.

use ferry_api::agent::{RunEnd, RunRef, RunReport, RunStatus};
use ferry_api::jobs::PriorityClass;

use super::*;
use crate::clock::{Clock, ManualClock};

async fn driver(clock: &ManualClock) -> (Driver, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
    (driver_on(store, clock).await, dir)
}

/// A driver started on `store`, as a server restarting on its data would.
async fn driver_on(store: Store, clock: &ManualClock) -> Driver {
    let sources = RunSources {
        tracking: crate::jobruns::TrackingEnv { key: Arc::new(vec![1; 32]), uri: None },
        secrets: Arc::new(crate::secrets::SecretBox::new(&[2; 32]).unwrap()),
        clock: Arc::new(clock.clone()),
    };
    let agents = Arc::new(AgentBackend::new("epoch".into()));
    let signals = Arc::new(Signals::default());
    let timeout = Duration::from_secs(30);
    let (driver, _handle, _commands) =
        Driver::start(store, agents, HashMap::new(), signals, timeout, FileConfig::default(), sources).await.unwrap();
    driver
}

fn job(retries: u32) -> NewJob {
    NewJob {
        name: None,
        project: None,
        team: None,
        owner: "ana".into(),
        command: vec!["train".into()],
        workdir: "/tmp".into(),
        env: Default::default(),
        secrets: Default::default(),
        resources: Resources::new(1000, 1 << 30, 0),
        priority: PriorityClass::Normal,
        retries,
        max_runtime_s: None,
        gpu_share_milli: 0,
        gpu_types: Vec::new(),
        selector: Default::default(),
        nodes: 1,
        code: None,
        pool: None,
        image: None,
        tracking: None,
        sweep: None,
        checkpoints: false,
    }
}

/// Applies one command and returns its answer.
async fn ask<T>(driver: &mut Driver, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    driver.apply_batch(vec![make(reply)]).await;
    answer.await.expect("every command is answered")
}

async fn state(driver: &Driver, id: u64) -> (JobState, u32) {
    let record = driver.store.job(id).await.unwrap().unwrap();
    (record.state, record.attempt)
}

fn finished(attempt: u32, code: i32, at_us: i64) -> Reports {
    let status = RunStatus::Finished {
        end: RunEnd::Exited,
        exit_code: Some(code),
        signal: None,
        finished_at_us: at_us,
        log_bytes: 0,
        message: None,
        started_at_us: Some(at_us - 1_000_000),
    };
    Reports { node: "n1".into(), runs: vec![RunReport { run: RunRef::new(1, attempt), status }], usage: None }
}

fn node(clock: &ManualClock) -> RegisterNode {
    RegisterNode {
        name: "n1".into(),
        pool: "local".into(),
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        gpus: Vec::new(),
        labels: Default::default(),
        agent_version: "test".into(),
        limits: "none".into(),
        address: None,
        runs: Vec::new(),
        now_us: clock.now_us(),
    }
}

#[tokio::test]
async fn a_failed_run_is_retried_only_once_its_backoff_has_passed() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    let node = node(&clock);
    ask(&mut d, |reply| Command::Register { node, reply }).await.unwrap();
    let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(2)), key: None, reply }).await.unwrap().id;
    assert_eq!(state(&d, id).await, (JobState::Starting, 0), "placed in the batch that accepted it");

    // The run fails: the job is queued again, and stays queued for the 2 s of its first retry's backoff.
    let reports = finished(0, 1, clock.now_us());
    ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Queued, 1));
    clock.advance_s(1);
    d.apply_batch(Vec::new()).await;
    assert_eq!(state(&d, id).await, (JobState::Queued, 1), "still within its backoff");
    clock.advance_s(1);
    d.apply_batch(Vec::new()).await;
    assert_eq!(state(&d, id).await, (JobState::Starting, 1), "placed once the backoff has passed");

    // The second failure waits twice as long; the third is final (two retries were asked for).
    let reports = finished(1, 1, clock.now_us());
    ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
    clock.advance_s(3);
    d.apply_batch(Vec::new()).await;
    assert_eq!(state(&d, id).await, (JobState::Queued, 2));
    clock.advance_s(1);
    d.apply_batch(Vec::new()).await;
    assert_eq!(state(&d, id).await, (JobState::Starting, 2));
    let reports = finished(2, 1, clock.now_us());
    ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Failed, 2));
    let record = d.store.job(id).await.unwrap().unwrap();
    assert_eq!(record.finished_at_us, Some(clock.now_us()), "the driver records the clock it was given");
}

#[tokio::test]
async fn a_node_silent_past_the_timeout_by_the_drivers_clock_loses_its_job_and_must_register_again() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    let first = node(&clock);
    ask(&mut d, |reply| Command::Register { node: first, reply }).await.unwrap();
    let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
    assert_eq!(state(&d, id).await, (JobState::Starting, 0));
    // A report at 20 s keeps it alive until 50 s by the clock the driver was given (the timeout is 30 s).
    clock.advance_s(20);
    let reports = Reports { node: "n1".into(), runs: Vec::new(), usage: None };
    ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
    clock.advance_s(30);
    d.apply_batch(Vec::new()).await;
    assert_eq!(state(&d, id).await, (JobState::Starting, 0), "silent for exactly the timeout");
    assert!(d.store.nodes().await.unwrap()[0].ready);
    clock.advance_s(1);
    d.apply_batch(Vec::new()).await;
    // Lost with its node and retried (one retry was asked for): queued, as no node is ready.
    assert_eq!(state(&d, id).await, (JobState::Queued, 1));
    assert!(!d.store.nodes().await.unwrap()[0].ready);
    let events = d.store.job_events(id).await.unwrap();
    let said = events.iter().any(|e| e.message.contains("node n1 stopped reporting for 30s"));
    assert!(said, "{events:?}");
    // Its reports are refused until it registers again; then the job is placed there again.
    let reports = Reports { node: "n1".into(), runs: Vec::new(), usage: None };
    let refused = ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap_err();
    assert!(refused.message.contains("register again"), "{}", refused.message);
    let again = node(&clock);
    ask(&mut d, |reply| Command::Register { node: again, reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Starting, 1));
}

#[tokio::test]
async fn a_run_its_agent_forgot_is_lost_and_the_timeline_says_so_as_data() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    ask(&mut d, |reply| Command::Register { node: node(&clock), reply }).await.unwrap();
    let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(0)), key: None, reply }).await.unwrap().id;
    let running = RunStatus::Running { pid: 42, started_at_us: clock.now_us() };
    let run = RunRef { job_id: id, attempt: 0, rank: 0 };
    let reports = Reports { node: "n1".into(), runs: vec![RunReport { run, status: running }], usage: None };
    ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Running, 0));
    // The agent comes back with no record of the run (its data directory was wiped): no retry is left.
    ask(&mut d, |reply| Command::Register { node: node(&clock), reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Lost, 0));
    let events = d.store.job_events(id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.message, "its node's agent restarted without any record of it");
    let loss = LossRecord { node: Some("n1".into()), cause: LossCauseRecord::RunForgotten };
    assert_eq!(last.reason, Some(ferry_store::EventReason::Lost(loss)));
}

#[tokio::test]
async fn a_job_a_restart_cannot_take_back_is_lost_and_the_timeline_says_so_as_data() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    // No node: the job stays queued. The store then says it runs, on no node (as a torn write could leave it).
    let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
    let mut tx = d.store.begin().await.unwrap();
    tx.running(id, clock.now_us(), "running").await.unwrap();
    tx.commit().await.unwrap();
    let store = d.store.clone();
    drop(d);
    let d = driver_on(store, &clock).await;
    assert_eq!(state(&d, id).await, (JobState::Lost, 0));
    let events = d.store.job_events(id).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.message, "lost when the server restarted: it was placed on no node");
    let loss = LossRecord { node: None, cause: LossCauseRecord::ServerRestart };
    assert_eq!(last.reason, Some(ferry_store::EventReason::Lost(loss)));
}

#[tokio::test]
async fn a_requeued_jobs_preemptions_and_attained_gpu_time_survive_a_restart() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    let first = node(&clock);
    ask(&mut d, |reply| Command::Register { node: first, reply }).await.unwrap();
    let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
    // Requeued as if preempted after an hour on a GPU: one preemption, 3,600 GPU-seconds attained.
    let mut job = d.jobs[&id].clone();
    job.preemptions = 1;
    job.request.attained_gpu_s = 3600;
    let (mut tx, mut fx) = (d.store.begin().await.unwrap(), Effects::default());
    let why = requeue_record(RequeueCause::Preempted { ran_s: 3600 }, 1, 3, 0, None);
    d.requeue(id, &job, 1, 0, ("preempted", why), &mut tx, &mut fx).await.unwrap();
    tx.commit().await.unwrap();
    let store = d.store.clone();
    drop(d);
    let d = driver_on(store, &clock).await;
    let record = d.store.job(id).await.unwrap().unwrap();
    assert_eq!((record.attempt, record.preemptions, record.attained_gpu_s), (1, 1, 3600));
    assert_eq!(d.queued[&id].preemptions, 1, "the preemption does not count against its one retry");
    assert_eq!(d.sched.request(id).unwrap().attained_gpu_s, 3600, "least-attained files it by its GPU time");
    // The timeline says why as data: the cause and the attempt, counted from 1.
    let events = d.store.job_events(id).await.unwrap();
    let expected = RequeueRecord {
        cause: RequeueCauseRecord::Preempted { ran_s: 3600 },
        attempt: 2,
        attempts: 3,
        not_before_us: 0,
    };
    assert_eq!(events.last().unwrap().reason, Some(ferry_store::EventReason::Requeued(expected)));
}

#[tokio::test]
async fn cycles_are_paced_only_when_the_queue_is_deep_and_they_are_slow() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    let slow = Some((Instant::now(), Duration::from_secs(3600)));
    d.last_cycle = slow;
    assert!(d.cycle_due(), "a short queue gets a cycle after every batch, however slow the last one was");
    for id in 1..=PACED_QUEUE_MIN as u64 {
        let request = JobRequest::new(id, Resources::new(1000, 1 << 30, 0), 0);
        d.sched.apply(Event::JobSubmitted(request)).unwrap();
    }
    assert!(!d.cycle_due(), "a deep queue waits as long as its last cycle took");
    d.last_cycle = Some((Instant::now(), PACED_CYCLE_MIN / 2));
    assert!(d.cycle_due(), "quick cycles are never put off");
    d.last_cycle = Some((Instant::now() - Duration::from_millis(200), Duration::from_millis(100)));
    assert!(d.cycle_due(), "the wait is over");
}

#[tokio::test]
async fn a_retry_waiting_out_its_backoff_still_waits_after_a_restart() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    let node = node(&clock);
    ask(&mut d, |reply| Command::Register { node, reply }).await.unwrap();
    let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
    let reports = finished(0, 1, clock.now_us());
    ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Queued, 1));
    // The server restarts a second later: the job remembers when it may start.
    let store = d.store.clone();
    drop(d);
    clock.advance_s(1);
    let mut d = driver_on(store, &clock).await;
    d.apply_batch(Vec::new()).await;
    assert_eq!(state(&d, id).await, (JobState::Queued, 1), "still within its backoff after the restart");
    clock.advance_s(1);
    d.apply_batch(Vec::new()).await;
    assert_eq!(state(&d, id).await, (JobState::Starting, 1));
}

/// A queued job's request lives in the core alone: the driver keeps only its counters until it is placed, and
/// gets the request back from the core then (and for a requeue, from its placed record).
#[tokio::test]
async fn a_queued_job_is_held_once_and_placed_with_the_cores_request() {
    let clock = ManualClock::at(1_800_000_000_000_000);
    let (mut d, _dir) = driver(&clock).await;
    let id = ask(&mut d, |reply| Command::Submit { job: Box::new(job(1)), key: None, reply }).await.unwrap().id;
    assert_eq!(state(&d, id).await, (JobState::Queued, 0), "no node yet");
    assert!(d.jobs.is_empty() && d.queued.contains_key(&id));
    assert_eq!(d.sched.request(id).map(|r| r.user), Some(job(1).owner));

    let node = node(&clock);
    ask(&mut d, |reply| Command::Register { node, reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Starting, 0));
    assert!(d.queued.is_empty());
    assert_eq!(Some(&d.jobs[&id].request), d.sched.request(id).as_ref());

    // A failed run requeues it: back to counters, with the attempt counted.
    let reports = finished(0, 1, clock.now_us());
    ask(&mut d, |reply| Command::Reports { reports, reply }).await.unwrap();
    assert_eq!(state(&d, id).await, (JobState::Queued, 1));
    assert!(d.jobs.is_empty());
    assert_eq!(d.queued[&id].attempt, 1);
    ask(&mut d, |reply| Command::Cancel { id, by: "ana".into(), reply }).await.unwrap();
    assert!(d.queued.is_empty() && d.sched.request(id).is_none());
}
