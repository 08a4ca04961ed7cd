//! Elastic burst pools: new nodes asked for when blocked jobs may burst and nothing up or starting can hold them,
//! never more than the pool's maximum, and nodes given back once they have idled.

use ferry_core::{
    CoreError, Decision, ElasticPool, Event, JobRequest, NodeInfo, NodeTemplate, PoolInfo, Resources, Scheduler,
    StartForecast, WaitReason,
};

const GIB: u64 = 1 << 30;
const S: i64 = 1_000_000;

/// A cloud node: 8 A100s.
fn template() -> NodeTemplate {
    NodeTemplate {
        capacity: Resources::new(32_000, 256 * GIB, 8),
        gpu_model: Some("A100".into()),
        ..Default::default()
    }
}

/// Pool `owned` first, then the elastic burst pool `cloud` of up to `max_nodes` nodes that start in 3 minutes and
/// are released after 10 idle minutes.
fn pools(max_nodes: u32, burst_after_s: Option<u64>) -> Event {
    let elastic =
        ElasticPool { node: template(), max_nodes, startup_s: 180, idle_release_s: 600, ..ElasticPool::default() };
    Event::PoolsConfigured(vec![
        PoolInfo { name: "owned".into(), order: 0, ..PoolInfo::default() },
        PoolInfo {
            name: "cloud".into(),
            order: 10,
            burst: true,
            burst_after_s,
            elastic: Some(elastic),
            ..PoolInfo::default()
        },
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

/// A node the cloud started from the template.
fn cloud(name: &str) -> Event {
    Event::NodeUp(template().node(name, "cloud"))
}

fn job(id: u64, cpus: u64, gpus: u32) -> JobRequest {
    JobRequest { user: "ann".into(), ..JobRequest::new(id, Resources::new(cpus * 1000, GIB, gpus), 0) }
}

fn submit(s: &mut Scheduler, request: JobRequest) {
    s.apply(Event::JobSubmitted(request)).unwrap();
}

fn at(s: &mut Scheduler, t_s: i64) {
    s.apply(Event::Tick { now_us: t_s * S }).unwrap();
}

/// One cycle's decisions as lines, with the reasons of provisioning and releases.
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
            Decision::Provision { pool, nodes, reason } => format!("provision {nodes} in {pool}: {reason}"),
            Decision::Release { node, reason } => format!("release {node}: {reason}"),
            Decision::NodeNotReady { node, reason } => format!("not ready {node}: {reason}"),
            Decision::Abandon { pool, nodes, reason } => format!("abandon {nodes} in {pool}: {reason}"),
        })
        .collect();
    s.check_invariants().unwrap();
    out
}

fn scheduler(events: Vec<Event>) -> Scheduler {
    let mut s = Scheduler::new();
    at(&mut s, 1);
    for e in events {
        s.apply(e).unwrap();
    }
    s
}

#[test]
fn a_node_is_provisioned_when_owned_capacity_is_full_and_the_job_starts_when_it_is_up() {
    let mut s = scheduler(vec![pools(4, None), owned("own", 4)]);
    submit(&mut s, job(1, 1, 4));
    assert_eq!(cycle(&mut s), ["start 1 on own[0, 1, 2, 3]"]);
    submit(&mut s, job(2, 1, 8));
    assert_eq!(
        cycle(&mut s),
        ["provision 1 in cloud: job 2 needs 8 GPUs; no node up or starting can hold it; pool cloud has room for 4 more nodes (at most 4)"]
    );
    assert_eq!(s.provisioning().collect::<Vec<_>>(), [("cloud", 1)]);
    assert_eq!(
        s.explain(2).unwrap().to_string(),
        "no node can hold it now; it waits for new nodes of elastic pool cloud (1 starting)"
    );
    // The job is feasible on the nodes the pool may start, though no node up could ever hold it.
    assert_eq!(s.check_feasible(&job(9, 1, 8)), Ok(()));
    // Three minutes later the node is up: it is the one requested, and the job bursts onto it.
    at(&mut s, 181);
    s.apply(cloud("cloud-1")).unwrap();
    assert_eq!(s.provisioning().count(), 0);
    assert_eq!(cycle(&mut s), ["start 2 on cloud-1[0, 1, 2, 3, 4, 5, 6, 7]"]);
}

#[test]
fn nothing_is_provisioned_while_owned_pools_could_take_the_job_until_its_burst_wait_is_over() {
    let mut s = scheduler(vec![pools(4, Some(600)), owned("own-a", 2), owned("own-b", 2)]);
    // Seventeen CPUs each keep the two jobs on different nodes, one GPU free on each.
    submit(&mut s, job(1, 17, 1));
    submit(&mut s, job(2, 17, 1));
    assert_eq!(cycle(&mut s).len(), 2);
    // Together the owned nodes have the two GPUs job 3 asks for: it waits for them rather than burst.
    submit(&mut s, JobRequest { submitted_at_us: S, ..job(3, 1, 2) });
    at(&mut s, 300);
    assert!(cycle(&mut s).is_empty());
    assert_eq!(
        s.explain(3).unwrap().to_string(),
        "owned pools have room for it but not on one node yet; it may burst to pool cloud after waiting 10m (waited 4m59s so far)"
    );
    assert_eq!(s.provisioning().count(), 0);
    // Once it has waited burst_after, a node is asked for.
    at(&mut s, 601);
    assert_eq!(
        cycle(&mut s),
        ["provision 1 in cloud: job 3 needs 2 GPUs; no node up or starting can hold it; pool cloud has room for 4 more nodes (at most 4)"]
    );
}

#[test]
fn jobs_share_starting_nodes_and_nothing_is_asked_for_twice() {
    let mut s = scheduler(vec![pools(4, None)]);
    submit(&mut s, job(1, 1, 4));
    assert_eq!(
        cycle(&mut s),
        ["provision 1 in cloud: job 1 needs 4 GPUs; no node up or starting can hold it; pool cloud has room for 4 more nodes (at most 4)"]
    );
    // While it starts, later cycles ask for nothing more: the job waits for the node already asked for.
    at(&mut s, 60);
    assert!(cycle(&mut s).is_empty());
    // Job 2 fits in what job 1 leaves of the starting node; job 3 does not.
    submit(&mut s, job(2, 1, 4));
    submit(&mut s, job(3, 1, 8));
    assert_eq!(
        cycle(&mut s),
        ["provision 1 in cloud: job 3 needs 8 GPUs; no node up or starting can hold it; pool cloud has room for 3 more nodes (at most 4)"]
    );
    assert!(cycle(&mut s).is_empty());
    // The first node up counts against the two requested; the jobs start as nodes come.
    at(&mut s, 181);
    s.apply(cloud("cloud-1")).unwrap();
    assert_eq!(s.provisioning().collect::<Vec<_>>(), [("cloud", 1)]);
    assert_eq!(cycle(&mut s), ["start 1 on cloud-1[0, 1, 2, 3]", "start 2 on cloud-1[4, 5, 6, 7]"]);
    at(&mut s, 241);
    s.apply(cloud("cloud-2")).unwrap();
    assert_eq!(cycle(&mut s), ["start 3 on cloud-2[0, 1, 2, 3, 4, 5, 6, 7]"]);
    assert_eq!(s.provisioning().count(), 0);
}

#[test]
fn a_pool_never_grows_past_its_maximum() {
    let mut s = scheduler(vec![pools(2, None), cloud("cloud-1")]);
    submit(&mut s, job(1, 1, 8));
    assert_eq!(cycle(&mut s), ["start 1 on cloud-1[0, 1, 2, 3, 4, 5, 6, 7]"]);
    // One node is up and the pool may have two: of three more 8-GPU jobs, one gets a new node, two wait.
    for id in 2..=4 {
        submit(&mut s, job(id, 1, 8));
    }
    assert_eq!(
        cycle(&mut s),
        ["provision 1 in cloud: job 2 needs 8 GPUs; no node up or starting can hold it; pool cloud has room for 1 more node (at most 2)"]
    );
    assert!(matches!(s.explain(3), Some(WaitReason::Insufficient { .. })), "{:?}", s.explain(3));
    at(&mut s, 100);
    assert!(cycle(&mut s).is_empty());
    s.apply(cloud("cloud-2")).unwrap();
    assert_eq!(cycle(&mut s), ["start 2 on cloud-2[0, 1, 2, 3, 4, 5, 6, 7]"]);
    // A gang larger than the pool can ever be is infeasible, and no node is asked for it.
    let gang = JobRequest { nodes: 3, ..job(5, 1, 8) };
    assert_eq!(
        s.check_feasible(&gang).unwrap_err().to_string(),
        "a gang of 3 workers needs 3 nodes in one pool that can each hold a worker; at most 2 can"
    );
}

#[test]
fn an_idle_node_is_released_after_idle_release_and_removed() {
    let mut s = scheduler(vec![pools(4, None), cloud("cloud-1"), cloud("cloud-2")]);
    // Idle time counts from the first tick after a node joins or its last job leaves.
    at(&mut s, 1);
    submit(&mut s, job(1, 1, 8));
    assert_eq!(cycle(&mut s), ["start 1 on cloud-1[0, 1, 2, 3, 4, 5, 6, 7]"]);
    // cloud-2 has idled since 1 s; cloud-1 since job 1 ended at 100 s.
    s.apply(Event::JobEnded { id: 1 }).unwrap();
    at(&mut s, 100);
    assert!(cycle(&mut s).is_empty());
    at(&mut s, 601);
    assert_eq!(
        cycle(&mut s),
        ["release cloud-2: it has held no job for 10m; elastic pool cloud releases nodes idle for 10m"]
    );
    // A released node takes no more jobs: this one goes to cloud-1, which still has a minute to go.
    submit(&mut s, job(2, 1, 8));
    assert_eq!(cycle(&mut s), ["start 2 on cloud-1[0, 1, 2, 3, 4, 5, 6, 7]"]);
    s.apply(Event::NodeRemoved { node: "cloud-2".into() }).unwrap();
    assert_eq!(s.node_usage("cloud-2"), None);
    assert_eq!(
        s.apply(Event::NodeRemoved { node: "cloud-1".into() }),
        Err(CoreError::NodeBusy { node: "cloud-1".into(), jobs: vec![2] })
    );
    assert_eq!(s.apply(Event::NodeRemoved { node: "cloud-9".into() }), Err(CoreError::UnknownNode("cloud-9".into())));
    // Once job 2 ends, cloud-1 goes too, ten idle minutes later.
    s.apply(Event::JobEnded { id: 2 }).unwrap();
    at(&mut s, 700);
    at(&mut s, 1299);
    assert!(cycle(&mut s).is_empty());
    at(&mut s, 1300);
    assert_eq!(
        cycle(&mut s),
        ["release cloud-1: it has held no job for 10m; elastic pool cloud releases nodes idle for 10m"]
    );
    assert!(cycle(&mut s).is_empty(), "a node is released once");
}

#[test]
fn a_gang_asks_for_the_nodes_it_lacks_and_starts_when_all_are_up() {
    let mut s = scheduler(vec![pools(4, None), owned("own", 8), cloud("cloud-1")]);
    submit(&mut s, job(1, 1, 4));
    assert_eq!(cycle(&mut s), ["start 1 on own[0, 1, 2, 3]"]);
    // Owned capacity has 4 GPUs free, far from the 24 the gang needs; cloud-1 is up and idle and can hold one of
    // its workers, so it asks for two more nodes.
    submit(&mut s, JobRequest { nodes: 3, ..job(2, 1, 8) });
    assert_eq!(
        cycle(&mut s),
        ["provision 2 in cloud: job 2, a gang of 3 workers of 8 GPUs, needs 2 new nodes; no node up or starting can hold it; pool cloud has room for 3 more nodes (at most 4)"]
    );
    // Nothing partial starts while the nodes start, and nothing more is asked for.
    at(&mut s, 100);
    s.apply(cloud("cloud-2")).unwrap();
    assert!(cycle(&mut s).is_empty());
    at(&mut s, 181);
    s.apply(cloud("cloud-3")).unwrap();
    assert_eq!(
        cycle(&mut s),
        ["start 2 on cloud-1[0, 1, 2, 3, 4, 5, 6, 7] cloud-2[0, 1, 2, 3, 4, 5, 6, 7] cloud-3[0, 1, 2, 3, 4, 5, 6, 7]"]
    );
}

#[test]
fn a_forecast_counts_the_start_up_of_the_nodes_a_job_waits_for() {
    let mut s = scheduler(vec![pools(4, None)]);
    submit(&mut s, job(1, 1, 8));
    assert_eq!(cycle(&mut s).len(), 1);
    // The node was asked for at 1 s and starts in 3 minutes.
    assert_eq!(s.forecast_start(1), Some(StartForecast::At(181 * S)));
}
