//! The node lifecycle as core decisions: a node silent past the node timeout goes not ready at a tick and loses its
//! jobs; nodes asked of an elastic pool that fail to start (the provider says so, or none joins in time) are not
//! waited for, the pool cools down, and the jobs that wanted it are offered the next elastic pool in order.

use ferry_core::{
    Decision, ElasticPool, ElasticStatus, Event, JobRequest, NodeInfo, NodeStatus, NodeTemplate, PoolInfo,
    ProvisionFailure, Resources, Scheduler, StartForecast,
};

const GIB: u64 = 1 << 30;
const S: i64 = 1_000_000;

fn template() -> NodeTemplate {
    NodeTemplate {
        capacity: Resources::new(32_000, 256 * GIB, 8),
        gpu_model: Some("A100".into()),
        ..Default::default()
    }
}

/// Pool `owned`, then elastic pools `spot` and `ondemand` in that order, each of up to 4 nodes that should join within
/// 10 minutes and, after a failure, are skipped for 5 minutes.
fn pools() -> Event {
    let elastic = ElasticPool {
        node: template(),
        max_nodes: 4,
        startup_s: 180,
        idle_release_s: 600,
        startup_timeout_s: 600,
        retry_after_s: 300,
    };
    let burst = |name: &str, order: i32| PoolInfo {
        name: name.into(),
        order,
        burst: true,
        elastic: Some(elastic.clone()),
        ..PoolInfo::default()
    };
    Event::PoolsConfigured(vec![
        PoolInfo { name: "owned".into(), order: 0, ..PoolInfo::default() },
        burst("spot", 10),
        burst("ondemand", 20),
    ])
}

fn owned(name: &str, gpus: u32) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.into(),
        pool: "owned".into(),
        capacity: Resources::new(32_000, 256 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        ..NodeInfo::default()
    })
}

fn job(id: u64, gpus: u32) -> JobRequest {
    JobRequest {
        user: "ann".into(),
        max_runtime_s: Some(3600),
        ..JobRequest::new(id, Resources::new(1000, GIB, gpus), 0)
    }
}

fn lines(decisions: Vec<Decision>) -> Vec<String> {
    decisions
        .into_iter()
        .map(|d| match d {
            Decision::Start { job, allocation, .. } => format!("start {job} on {}", allocation.node),
            Decision::Preempt { job, by, .. } => format!("preempt {job} for {by}"),
            Decision::Lost { job, node } => format!("lost {job} on {node}"),
            Decision::NodeNotReady { node, reason } => format!("not ready {node}: {reason}"),
            Decision::Provision { pool, nodes, .. } => format!("provision {nodes} in {pool}"),
            Decision::Abandon { pool, nodes, reason } => format!("abandon {nodes} in {pool}: {reason}"),
            Decision::Release { node, .. } => format!("release {node}"),
        })
        .collect()
}

fn tick(s: &mut Scheduler, t_s: i64) -> Vec<String> {
    lines(s.apply(Event::Tick { now_us: t_s * S }).unwrap())
}

fn cycle(s: &mut Scheduler) -> Vec<String> {
    let out = lines(s.schedule());
    s.check_invariants().unwrap();
    out
}

fn seen(s: &mut Scheduler, node: &str, t_s: i64) {
    s.apply(Event::NodeSeen { node: node.into(), at_us: t_s * S }).unwrap();
}

fn scheduler() -> Scheduler {
    let mut s = Scheduler::new();
    tick(&mut s, 1);
    s.apply(pools()).unwrap();
    s
}

#[test]
fn a_node_silent_past_the_timeout_goes_not_ready_at_a_tick_and_loses_its_jobs() {
    let mut s = scheduler();
    s.apply(Event::NodeTimeoutConfigured(Some(30))).unwrap();
    s.apply(owned("a", 4)).unwrap();
    s.apply(owned("b", 4)).unwrap();
    s.apply(Event::JobSubmitted(job(1, 4))).unwrap();
    assert_eq!(cycle(&mut s), ["start 1 on a"]);
    seen(&mut s, "a", 20);
    seen(&mut s, "b", 40);
    // `a` was last heard at 20 s: at 50 s it has been silent exactly the timeout, which is allowed.
    assert!(tick(&mut s, 50).is_empty());
    assert_eq!(s.node_status("a"), Some(NodeStatus::Ready { idle_since_us: None }));
    assert_eq!(tick(&mut s, 51), ["not ready a: it has not reported for 31s (the node timeout is 30s)", "lost 1 on a"]);
    assert_eq!(s.node_status("a"), Some(NodeStatus::NotReady));
    // Heartbeats of a node given up on count for nothing: it must come up again.
    seen(&mut s, "a", 52);
    assert!(tick(&mut s, 60).is_empty(), "a not-ready node is not timed out twice");
    s.apply(Event::JobSubmitted(job(2, 4))).unwrap();
    assert_eq!(cycle(&mut s), ["start 2 on b"]);
    s.apply(Event::JobSubmitted(job(3, 4))).unwrap();
    assert!(cycle(&mut s).iter().all(|d| !d.contains(" on a")), "nothing is placed on a node that is not ready");
    s.apply(owned("a", 4)).unwrap();
    assert_eq!(s.node_status("a"), Some(NodeStatus::Ready { idle_since_us: Some(60 * S) }), "idle since job 1 left");
    assert_eq!(cycle(&mut s), ["start 3 on a"]);
    // Up again at the last tick's time (60 s), so it is not silent at 85 s, and is at 91 s; `b` went silent too.
    assert_eq!(
        tick(&mut s, 91),
        [
            "not ready a: it has not reported for 31s (the node timeout is 30s)",
            "lost 3 on a",
            "not ready b: it has not reported for 51s (the node timeout is 30s)",
            "lost 2 on b",
        ]
    );
    // A heartbeat from a node the core does not know is an error the driver logs.
    assert!(s.apply(Event::NodeSeen { node: "ghost".into(), at_us: 0 }).is_err());
}

#[test]
fn without_a_node_timeout_nodes_never_go_not_ready() {
    let mut s = scheduler();
    s.apply(owned("a", 4)).unwrap();
    assert!(tick(&mut s, 1_000_000).is_empty());
    s.apply(Event::NodeTimeoutConfigured(Some(30))).unwrap();
    s.apply(Event::NodeTimeoutConfigured(None)).unwrap();
    assert!(tick(&mut s, 2_000_000).is_empty());
    assert_eq!(s.node_status("a"), Some(NodeStatus::Ready { idle_since_us: Some(1_000_000 * S) }));
}

/// Owned capacity full, so job 2 bursts: `spot` is asked first.
fn bursting() -> Scheduler {
    let mut s = scheduler();
    s.apply(owned("own", 8)).unwrap();
    s.apply(Event::JobSubmitted(job(1, 8))).unwrap();
    s.apply(Event::JobSubmitted(job(2, 8))).unwrap();
    assert_eq!(cycle(&mut s), ["start 1 on own", "provision 1 in spot"]);
    s
}

#[test]
fn a_provider_that_has_no_capacity_sends_the_jobs_to_the_next_elastic_pool_until_its_cooldown_ends() {
    let mut s = bursting();
    assert_eq!(s.elastic_status("spot").unwrap().starting, 1);
    s.apply(Event::ProvisionFailed {
        pool: "spot".into(),
        nodes: 1,
        failure: ProvisionFailure::NoCapacity,
        detail: "InsufficientInstanceCapacity in every zone".into(),
    })
    .unwrap();
    let spot = s.elastic_status("spot").unwrap();
    assert_eq!(spot.starting, 0);
    let cooldown = spot.cooldown.expect("the pool cools down");
    assert_eq!((cooldown.until_us, cooldown.failure), (301 * S, ProvisionFailure::NoCapacity));
    // The next cycle asks the next pool in order, once.
    assert_eq!(cycle(&mut s), ["provision 1 in ondemand"]);
    assert!(cycle(&mut s).is_empty());
    // That one joins; job 2 runs there. A third job waits while `spot` cools down: `ondemand` is asked again.
    tick(&mut s, 200);
    s.apply(Event::NodeUp(template().node("ondemand-1", "ondemand"))).unwrap();
    assert_eq!(cycle(&mut s), ["start 2 on ondemand-1"]);
    s.apply(Event::JobSubmitted(job(3, 8))).unwrap();
    assert_eq!(cycle(&mut s), ["provision 1 in ondemand"]);
    // Once the cooldown is over, `spot` is first in the order again (job 3 keeps the node on its way to `ondemand`).
    s.apply(Event::JobSubmitted(job(4, 8))).unwrap();
    tick(&mut s, 301);
    assert!(s.elastic_status("spot").unwrap().cooldown.is_none());
    assert_eq!(cycle(&mut s), ["provision 1 in spot"]);
}

#[test]
fn nodes_that_do_not_join_within_the_startup_timeout_are_abandoned_and_the_next_pool_is_asked() {
    let mut s = bursting();
    // Asked at 1 s with a 10-minute timeout: still waited for at 601 s, abandoned after.
    assert!(tick(&mut s, 601).is_empty());
    assert_eq!(
        tick(&mut s, 602),
        ["abandon 1 in spot: no node joined elastic pool spot within its start-up timeout of 600s (asked 601s ago); the pool is skipped for 300s"]
    );
    let spot = s.elastic_status("spot").unwrap();
    assert_eq!((spot.starting, spot.cooldown.map(|c| c.failure)), (0, Some(ProvisionFailure::StartupTimeout)));
    assert_eq!(cycle(&mut s), ["provision 1 in ondemand"]);
    // A machine of the abandoned request that joins late is still a node of its pool, and is used.
    s.apply(Event::NodeUp(template().node("spot-1", "spot"))).unwrap();
    assert_eq!(cycle(&mut s), ["start 2 on spot-1"]);
    assert_eq!(s.elastic_status("ondemand").unwrap().starting, 1);
}

#[test]
fn an_elastic_pool_reports_its_nodes_by_lifecycle_state() {
    let mut s = bursting();
    tick(&mut s, 100);
    s.apply(Event::NodeUp(template().node("spot-1", "spot"))).unwrap();
    s.apply(Event::JobSubmitted(job(3, 8))).unwrap();
    s.apply(Event::NodeUp(template().node("spot-2", "spot"))).unwrap();
    assert_eq!(cycle(&mut s), ["start 2 on spot-1", "start 3 on spot-2"]);
    s.apply(Event::JobEnded { id: 3 }).unwrap();
    tick(&mut s, 200);
    assert_eq!(
        s.elastic_status("spot").unwrap(),
        ElasticStatus { ready: 2, idle: 1, ..ElasticStatus::default() },
        "spot-2's second node joined without a request of its own: the pool has none outstanding"
    );
    tick(&mut s, 800);
    assert_eq!(cycle(&mut s), ["release spot-2"]);
    assert_eq!(s.node_status("spot-2"), Some(NodeStatus::Releasing));
    let status = s.elastic_status("spot").unwrap();
    assert_eq!((status.ready, status.idle, status.releasing), (1, 0, 1));
    s.apply(Event::NodeRemoved { node: "spot-2".into() }).unwrap();
    assert_eq!(s.node_status("spot-2"), None);
    assert_eq!(s.elastic_status("owned"), None, "an owned pool has no elastic status");
}

#[test]
fn forecasts_do_not_time_nodes_out() {
    let mut s = scheduler();
    s.apply(Event::NodeTimeoutConfigured(Some(30))).unwrap();
    s.apply(owned("own", 8)).unwrap();
    s.apply(Event::JobSubmitted(job(1, 8))).unwrap();
    s.apply(Event::JobSubmitted(JobRequest { pool: Some("owned".into()), ..job(2, 8) })).unwrap();
    assert_eq!(cycle(&mut s), ["start 1 on own"]);
    // Job 1 runs its hour: job 2 starts when it ends, though no heartbeat reaches the forecast meanwhile.
    assert_eq!(s.forecast_start(2), Some(StartForecast::At(3601 * S)));
}

#[test]
fn nodes_still_starting_at_a_restart_are_neither_asked_for_again_nor_waited_for_past_their_timeout() {
    // The server asked `spot` for a node at 1 s and restarted: the new core hears of the owned node, then of the
    // request still outstanding, with its time.
    let mut s = scheduler();
    s.apply(owned("own", 8)).unwrap();
    s.apply(Event::JobSubmitted(job(1, 8))).unwrap();
    s.apply(Event::JobSubmitted(job(2, 8))).unwrap();
    s.apply(Event::NodesStarting { pool: "spot".into(), requested_at_us: vec![S] }).unwrap();
    assert_eq!(cycle(&mut s), ["start 1 on own"], "job 2 waits for the node already asked for");
    assert_eq!(s.elastic_status("spot").unwrap().oldest_request_us, Some(S));
    assert_eq!(tick(&mut s, 602)[0].split(':').next(), Some("abandon 1 in spot"));
    let refused = s.apply(Event::NodesStarting { pool: "owned".into(), requested_at_us: vec![S] });
    assert!(refused.unwrap_err().to_string().contains("owned, which is not an elastic pool"));
}

#[test]
fn a_job_that_only_a_cooling_elastic_pool_could_hold_says_so() {
    let mut s = bursting();
    let failed = |pool: &str| Event::ProvisionFailed {
        pool: pool.into(),
        nodes: 1,
        failure: ProvisionFailure::Unauthorized,
        detail: "EC2 answered AuthFailure".into(),
    };
    s.apply(failed("spot")).unwrap();
    assert_eq!(cycle(&mut s), ["provision 1 in ondemand"]);
    s.apply(failed("ondemand")).unwrap();
    assert!(cycle(&mut s).is_empty(), "both pools cool down: nothing is asked");
    let reason = s.explain(2).unwrap();
    assert_eq!(
        reason,
        ferry_core::WaitReason::ElasticCoolingDown {
            pool: "spot".into(),
            until_us: 301 * S,
            failure: "credentials refused".into(),
            detail: "EC2 answered AuthFailure".into(),
        },
        "the first pool in order that could hold it"
    );
    assert!(reason.to_string().contains("elastic pool spot, which could start one, is skipped for a while"));
    // Once the cooldown is over, the job is asked for again and waits for its node.
    tick(&mut s, 301);
    assert_eq!(cycle(&mut s), ["provision 1 in spot"]);
    assert!(matches!(s.explain(2), Some(ferry_core::WaitReason::Provisioning { .. })));
}
