//! What a pool's backend can do (`PoolInfo::images`, `PoolInfo::gangs`, from the backend's capabilities) decides
//! where a job may run: a job with an image only on pools that run images, a gang only on pools that run gangs, with
//! a wait reason that says so.

use ferry_core::{Decision, Event, JobRequest, NodeInfo, PoolInfo, Resources, Scheduler, WaitReason};

const GIB: u64 = 1 << 30;

fn node(name: &str, pool: &str) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.into(),
        pool: pool.into(),
        capacity: Resources::new(8000, 16 * GIB, 0),
        ..NodeInfo::default()
    })
}

fn started(decisions: Vec<Decision>) -> Vec<(u64, String)> {
    let mut starts: Vec<(u64, String)> = decisions
        .into_iter()
        .filter_map(|d| match d {
            Decision::Start { job, allocation, .. } => Some((job, allocation.node)),
            _ => None,
        })
        .collect();
    starts.sort();
    starts
}

fn image(id: u64) -> JobRequest {
    JobRequest { image: true, ..JobRequest::new(id, Resources::new(1000, GIB, 0), 0) }
}

fn gang(id: u64, nodes: u32) -> JobRequest {
    JobRequest { nodes, ..JobRequest::new(id, Resources::new(1000, GIB, 0), 0) }
}

/// A Slurm-like pool (gangs, no images) first, a Ray-like pool (neither) after it.
fn engines() -> Scheduler {
    let mut s = Scheduler::new();
    let slurm = PoolInfo { name: "hpc".into(), order: 0, images: false, ..PoolInfo::default() };
    let ray = PoolInfo { name: "ray".into(), order: 1, images: false, gangs: false, ..PoolInfo::default() };
    s.apply(Event::PoolsConfigured(vec![slurm, ray])).unwrap();
    for (name, pool) in [("hpc/a", "hpc"), ("hpc/b", "hpc"), ("ray/a", "ray"), ("ray/b", "ray")] {
        s.apply(node(name, pool)).unwrap();
    }
    s
}

#[test]
fn a_job_with_an_image_runs_only_where_images_run_and_says_why_it_cannot() {
    let mut s = engines();
    let refused = s.check_feasible(&image(1)).unwrap_err();
    assert!(matches!(refused, WaitReason::NoMatchingNode { image: true, gang: false, .. }), "{refused:?}");
    assert_eq!(refused.to_string(), "no node in any pool has support for container images (the job has --image)");
    let pinned = JobRequest { pool: Some("ray".into()), ..image(2) };
    assert_eq!(
        s.check_feasible(&pinned).unwrap_err().to_string(),
        "no node of pool ray has support for container images (the job has --image)"
    );

    // A pool of agents (not configured: the core's default) runs images; the image job goes there and nowhere else.
    s.apply(node("agent-1", "local")).unwrap();
    s.apply(Event::JobSubmitted(image(3))).unwrap();
    s.apply(Event::JobSubmitted(JobRequest::new(4, Resources::new(1000, GIB, 0), 0))).unwrap();
    let starts = started(s.schedule());
    assert_eq!(starts[0], (3, "agent-1".to_string()));
    assert_eq!(starts[1].0, 4, "a job without an image may go anywhere: {starts:?}");
    s.check_invariants().unwrap();
}

#[test]
fn a_gang_runs_only_in_a_pool_that_runs_gangs_and_waits_with_the_reason() {
    let mut s = engines();
    // Both pools have two nodes; only hpc runs gangs, so the gang lands there even though hpc's first node is taken.
    s.apply(Event::JobSubmitted(gang(1, 2))).unwrap();
    let starts = started(s.schedule());
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(starts[0].1.starts_with("hpc/"), "{starts:?}");

    // A gang pinned to the pool that runs none cannot run at all, and the reason names the gang.
    let pinned = JobRequest { pool: Some("ray".into()), ..gang(2, 2) };
    let refused = s.check_feasible(&pinned).unwrap_err();
    assert!(matches!(refused, WaitReason::NoMatchingNode { gang: true, image: false, .. }), "{refused:?}");
    assert_eq!(refused.to_string(), "no node of pool ray has support for multi-node jobs (the job has --nodes)");

    // A job that names a GPU model no node has is not told about gangs when every pool it could use runs them.
    let mut t = Scheduler::new();
    t.apply(node("n1", "local")).unwrap();
    let model = JobRequest { gpu_models: vec!["H100".into()], resources: Resources::new(1000, GIB, 1), ..gang(3, 2) };
    let refused = t.check_feasible(&model).unwrap_err();
    assert!(matches!(refused, WaitReason::NoMatchingNode { gang: false, image: false, .. }), "{refused:?}");
}

#[test]
fn a_queued_job_follows_a_change_of_what_a_pool_runs() {
    // The only pool runs no images at first: the image job is queued (the pool is configured, its nodes may come)
    // and told why it waits; once the pool runs images, the next cycle starts it.
    let mut s = Scheduler::new();
    let no_images = PoolInfo { name: "k8s".into(), images: false, ..PoolInfo::default() };
    s.apply(Event::PoolsConfigured(vec![no_images.clone()])).unwrap();
    s.apply(node("k8s/a", "k8s")).unwrap();
    s.apply(Event::JobSubmitted(JobRequest { pool: Some("k8s".into()), ..image(1) })).unwrap();
    assert!(started(s.schedule()).is_empty());
    let why = s.explain(1).unwrap();
    assert!(matches!(why, WaitReason::NoMatchingNode { image: true, .. }), "{why:?}");
    s.apply(Event::PoolsConfigured(vec![PoolInfo { images: true, ..no_images }])).unwrap();
    assert_eq!(started(s.schedule()), vec![(1, "k8s/a".to_string())]);
    s.check_invariants().unwrap();
}
