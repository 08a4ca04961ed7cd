//! Gang scheduling: a multi-node job starts all its workers together or not at all.

use ferry_core::{Decision, Event, JobRequest, NodeInfo, PoolInfo, Resources, Scheduler, TeamInfo, WaitReason};

const GIB: u64 = 1 << 30;

fn node(name: &str, pool: &str, gpus: u32) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.into(),
        pool: pool.into(),
        capacity: Resources::new(32_000, 256 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        ..NodeInfo::default()
    })
}

fn job(id: u64, gpus: u32, priority: i32) -> JobRequest {
    JobRequest { user: "ann".into(), ..JobRequest::new(id, Resources::new(1000, GIB, gpus), priority) }
}

fn gang(id: u64, workers: u32, gpus: u32, priority: i32) -> JobRequest {
    JobRequest { nodes: workers, ..job(id, gpus, priority) }
}

fn submit(s: &mut Scheduler, request: JobRequest) {
    s.apply(Event::JobSubmitted(request)).unwrap();
}

/// One cycle's decisions as short lines, with every worker's node and GPUs.
fn cycle(s: &mut Scheduler) -> Vec<String> {
    let out = s
        .schedule()
        .into_iter()
        .map(|d| match d {
            Decision::Start { job, allocation, .. } => {
                let workers: Vec<String> = allocation.workers().map(|(n, g)| format!("{n}{g:?}")).collect();
                format!("start {job} on {}", workers.join(" "))
            }
            Decision::Preempt { job, by, .. } => format!("preempt {job} for {by}"),
            Decision::Lost { job, node } => format!("lost {job} on {node}"),
            Decision::Provision { pool, nodes, .. } => format!("provision {nodes} in {pool}"),
            Decision::Release { node, .. } => format!("release {node}"),
            Decision::NodeNotReady { node, reason } => format!("not ready {node}: {reason}"),
            Decision::Abandon { pool, nodes, reason } => format!("abandon {nodes} in {pool}: {reason}"),
        })
        .collect();
    s.check_invariants().unwrap();
    out
}

fn scheduler(events: Vec<Event>) -> Scheduler {
    let mut s = Scheduler::new();
    s.apply(Event::Tick { now_us: 1_000_000 }).unwrap();
    for e in events {
        s.apply(e).unwrap();
    }
    s
}

#[test]
fn a_gang_starts_every_worker_at_once_on_distinct_nodes_keeping_whole_nodes_for_it() {
    let mut s = scheduler(vec![node("a", "local", 4), node("b", "local", 4), node("c", "local", 4)]);
    submit(&mut s, job(1, 2, 0));
    assert_eq!(cycle(&mut s), ["start 1 on a[0, 1]"]);
    // Two workers of 2 GPUs: best fit takes node a's two free GPUs and one more node, leaving c whole.
    submit(&mut s, gang(2, 2, 2, 0));
    assert_eq!(cycle(&mut s), ["start 2 on a[2, 3] b[0, 1]"]);
    let allocation = s.allocation(2).unwrap();
    assert_eq!(allocation.peers.len(), 1);
    // The gang counts its workers in its user's holdings, and frees every node when it ends.
    s.apply(Event::JobEnded { id: 2 }).unwrap();
    s.check_invariants().unwrap();
    assert_eq!(s.node_usage("b").unwrap().0, Resources::ZERO);
    assert_eq!(s.node_usage("a").unwrap().0.gpus, 2);
}

#[test]
fn nothing_partial_holds_gpus_while_a_gang_waits_and_later_jobs_cannot_starve_it() {
    let mut s = scheduler(vec![node("a", "local", 2), node("b", "local", 2)]);
    submit(&mut s, job(1, 2, 0));
    assert_eq!(cycle(&mut s), ["start 1 on a[0, 1]"]);
    submit(&mut s, gang(2, 2, 2, 0));
    submit(&mut s, job(3, 1, 0));
    // The gang fits on b alone but not on two nodes: it starts nothing, and holds b so that job 3 cannot take it.
    assert!(cycle(&mut s).is_empty());
    assert_eq!(s.allocation(2), None);
    let why = s.explain(2).unwrap();
    assert!(matches!(why, WaitReason::GangWaiting { workers: 2, nodes_free: 1, .. }), "{why:?}");
    assert_eq!(
        why.to_string(),
        "a gang of 2 workers starts only when 2 nodes in one pool have room at once; 1 node in pool local has room now (b)"
    );
    assert_eq!(
        s.explain(3).unwrap().to_string(),
        "the free resources on node b are held for job 2, which is ahead in the queue"
    );
    s.apply(Event::JobEnded { id: 1 }).unwrap();
    assert_eq!(cycle(&mut s), ["start 2 on a[0, 1] b[0, 1]"]);
}

#[test]
fn a_gang_stays_within_one_pool_and_larger_than_any_pool_is_refused() {
    let pools = Event::PoolsConfigured(vec![
        PoolInfo { name: "x".into(), order: 0, ..PoolInfo::default() },
        PoolInfo { name: "y".into(), order: 1, ..PoolInfo::default() },
    ]);
    let mut s = scheduler(vec![pools, node("x1", "x", 2), node("y1", "y", 2), node("y2", "y", 2)]);
    // Pool x has one node, so the gang of two goes to pool y even though x comes first.
    submit(&mut s, gang(1, 2, 2, 0));
    assert_eq!(cycle(&mut s), ["start 1 on y1[0, 1] y2[0, 1]"]);
    let three = gang(2, 3, 1, 0);
    let refused = s.check_feasible(&three).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "a gang of 3 workers needs 3 nodes in one pool that can each hold a worker; at most 2 can"
    );
}

#[test]
fn losing_one_node_of_a_gang_loses_the_whole_gang_and_frees_its_other_nodes() {
    let mut s = scheduler(vec![node("a", "local", 2), node("b", "local", 2)]);
    submit(&mut s, gang(1, 2, 2, 0));
    assert_eq!(cycle(&mut s), ["start 1 on a[0, 1] b[0, 1]"]);
    let lost = s.apply(Event::NodeDown { node: "b".into() }).unwrap();
    assert_eq!(lost, vec![Decision::Lost { job: 1, node: "b".into() }]);
    s.check_invariants().unwrap();
    assert_eq!(s.node_usage("a").unwrap().0, Resources::ZERO);
    assert_eq!(s.running(), 0);
}

#[test]
fn a_high_priority_gang_preempts_on_as_many_nodes_as_it_needs_and_then_starts() {
    let mut s = scheduler(vec![node("a", "local", 2), node("b", "local", 2), node("c", "local", 2)]);
    for id in 1..=3 {
        submit(&mut s, job(id, 2, 0));
    }
    assert_eq!(cycle(&mut s), ["start 1 on a[0, 1]", "start 2 on b[0, 1]", "start 3 on c[0, 1]"]);
    submit(&mut s, gang(4, 2, 2, 10));
    // Fewest victims, then the node names: jobs 1 and 2 go, job 3 keeps running.
    assert_eq!(cycle(&mut s), ["preempt 1 for 4", "preempt 2 for 4"]);
    assert!(matches!(s.explain(4), Some(WaitReason::Preempting { .. })));
    s.apply(Event::JobEnded { id: 1 }).unwrap();
    assert!(cycle(&mut s).is_empty(), "one freed node is not enough for the gang");
    s.apply(Event::JobEnded { id: 2 }).unwrap();
    assert_eq!(cycle(&mut s), ["start 4 on a[0, 1] b[0, 1]"]);
}

#[test]
fn a_gang_counts_every_worker_against_its_team_quota() {
    let team = TeamInfo {
        name: "vision".into(),
        quota: Resources::new(u64::MAX, u64::MAX, 4),
        borrow_limit: Some(Resources::new(0, 0, 0)),
    };
    let teams = Event::TeamsConfigured { teams: vec![team], fair_share_half_life_s: 3600 };
    let mut s = scheduler(vec![teams, node("a", "local", 4), node("b", "local", 4), node("c", "local", 4)]);
    submit(&mut s, JobRequest { team: "vision".into(), ..gang(1, 3, 2, 0) });
    assert!(cycle(&mut s).is_empty());
    assert_eq!(
        s.explain(1).unwrap().to_string(),
        "team vision would hold 6, over its limit of 4 (quota plus what it may borrow); it starts when the team's other jobs end"
    );
    submit(&mut s, JobRequest { team: "vision".into(), ..gang(2, 2, 2, 0) });
    assert_eq!(cycle(&mut s), ["start 2 on a[0, 1] b[0, 1]"]);
    assert_eq!(s.team_held("vision").gpus, 4);
}

#[test]
fn a_gangs_estimated_start_waits_for_its_last_node() {
    let mut s = scheduler(vec![node("a", "local", 2), node("b", "local", 2), node("c", "local", 2)]);
    for (id, runtime_s) in [(1, 100), (2, 300), (3, 200)] {
        submit(&mut s, JobRequest { max_runtime_s: Some(runtime_s), ..job(id, 2, 0) });
    }
    assert_eq!(cycle(&mut s).len(), 3);
    submit(&mut s, gang(4, 2, 2, 0));
    assert!(cycle(&mut s).is_empty());
    // The first two nodes to free are a (after 100 s) and c (after 200 s): it can start when c frees.
    assert_eq!(s.estimate_start(4), Some(1_000_000 + 200_000_000));
}

#[test]
fn a_gang_bursts_at_once_where_no_earlier_pool_could_ever_hold_it() {
    let pools = Event::PoolsConfigured(vec![
        PoolInfo { name: "own".into(), order: 0, ..PoolInfo::default() },
        PoolInfo { name: "cloud".into(), order: 10, burst: true, burst_after_s: Some(3600), ..PoolInfo::default() },
    ]);
    let mut s = scheduler(vec![pools, node("own-a", "own", 4), node("c1", "cloud", 4), node("c2", "cloud", 4)]);
    // The owned pool has the 4 GPUs free that the gang asks for in all, but one node: it could never hold two
    // workers, so the gang does not wait an hour for it.
    submit(&mut s, gang(1, 2, 2, 0));
    assert_eq!(cycle(&mut s), ["start 1 on c1[0, 1] c2[0, 1]"]);
    // With three owned nodes, each with 3 GPUs free, the owned pool could hold a gang of two 4-GPU workers once
    // jobs end there: it waits rather than burst.
    s.apply(node("own-b", "own", 4)).unwrap();
    s.apply(node("own-c", "own", 4)).unwrap();
    s.apply(Event::JobEnded { id: 1 }).unwrap();
    // Seventeen CPUs each keep these three jobs on different nodes.
    for id in 2..=4 {
        submit(&mut s, JobRequest { resources: Resources::new(17_000, GIB, 1), ..job(id, 1, 0) });
    }
    assert_eq!(cycle(&mut s).len(), 3);
    submit(&mut s, gang(5, 2, 4, 0));
    assert!(cycle(&mut s).is_empty());
    assert!(matches!(s.explain(5), Some(WaitReason::BurstNotYet { .. })), "{:?}", s.explain(5));
}
