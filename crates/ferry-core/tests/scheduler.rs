//! Behaviour of the scheduler core, through its public events and decisions only.

use expect_test::{expect, Expect};
use ferry_core::{Allocation, Decision, Event, JobRequest, NodeInfo, PoolInfo, Resources, Scheduler};

const GIB: u64 = 1 << 30;

fn node(name: &str, cpus: u64, gpus: u32) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.to_string(),
        pool: "local".to_string(),
        capacity: Resources::new(cpus * 1000, 16 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        ..NodeInfo::default()
    })
}

fn job(id: u64, cpus: u64, gpus: u32, priority: i32) -> Event {
    Event::JobSubmitted(JobRequest::new(id, Resources::new(cpus * 1000, GIB, gpus), priority))
}

/// The jobs a cycle started, with the node each went to.
fn started(decisions: Vec<Decision>) -> Vec<(u64, String)> {
    decisions
        .into_iter()
        .filter_map(|d| match d {
            Decision::Start { job, allocation, .. } => Some((job, allocation.node)),
            _ => None,
        })
        .collect()
}

/// Applies the events, runs one cycle, and renders the starts and every queued job's wait reason.
fn check(events: Vec<Event>, expected: Expect) {
    let mut s = Scheduler::new();
    let mut ids = Vec::new();
    for e in events {
        if let Event::JobSubmitted(r) = &e {
            ids.push(r.id);
        }
        s.apply(e).unwrap();
    }
    let mut out = String::new();
    for d in s.schedule() {
        if let Decision::Start { job, allocation, reason } = d {
            out += &format!("start {job} on {} gpus {:?}: {reason}\n", allocation.node, allocation.gpus);
        }
    }
    for id in ids {
        if let Some(why) = s.explain(id) {
            out += &format!("wait {id}: {why}\n");
        }
    }
    s.check_invariants().unwrap();
    expected.assert_eq(&out);
}

#[test]
fn starts_in_priority_then_submission_order_without_overcommitting() {
    check(
        vec![node("local", 2, 2), job(1, 1, 1, 0), job(2, 1, 1, 0), job(3, 1, 1, 10)],
        expect![[r#"
            start 3 on local gpus [0]: best fit of 1 candidate node in pool local: leaves 1 GPU and 1 CPUs free
            start 1 on local gpus [1]: best fit of 1 candidate node in pool local: leaves 0 GPUs and 0 CPUs free
            wait 2: needs 1 GPU; node local has 0 free (2 held by jobs 1 and 3)
        "#]],
    );
}

#[test]
fn names_the_jobs_that_hold_the_gpus_a_waiting_job_needs() {
    check(
        vec![node("local", 8, 4), job(12, 1, 1, 0), job(15, 1, 1, 0), job(20, 1, 4, 0)],
        expect![[r#"
            start 12 on local gpus [0]: best fit of 1 candidate node in pool local: leaves 3 GPUs and 7 CPUs free
            start 15 on local gpus [1]: best fit of 1 candidate node in pool local: leaves 2 GPUs and 6 CPUs free
            wait 20: needs 4 GPUs; node local has 2 free (2 held by jobs 12 and 15)
        "#]],
    );
}

#[test]
fn a_blocked_job_reserves_what_it_needs_so_later_jobs_cannot_starve_it() {
    // Job 2 needs both GPUs; job 3 (one GPU) must not take the GPU job 1 leaves free, but job 4 (CPU only) may run.
    check(
        vec![node("local", 4, 2), job(1, 1, 1, 0), job(2, 1, 2, 0), job(3, 1, 1, 0), job(4, 1, 0, 0)],
        expect![[r#"
            start 1 on local gpus [0]: best fit of 1 candidate node in pool local: leaves 1 GPU and 3 CPUs free
            start 4 on local gpus []: best fit of 1 candidate node in pool local: leaves 0 GPUs and 0 CPUs free
            wait 2: needs 2 GPUs; node local has 1 free (1 held by job 1)
            wait 3: the free resources on node local are held for job 2, which is ahead in the queue
        "#]],
    );
}

#[test]
fn best_fit_keeps_whole_nodes_free_and_explains_infeasible_and_empty_clusters() {
    check(
        vec![node("big", 8, 8), node("small", 8, 2), job(1, 1, 2, 0), job(2, 1, 16, 0)],
        expect![[r#"
            start 1 on small gpus [0, 1]: best fit of 1 candidate node in pool local: leaves 0 GPUs and 7 CPUs free
            wait 2: no node in any pool has 16 GPUs; the largest has 8
        "#]],
    );
    check(
        vec![job(1, 1, 0, 0)],
        expect![[r#"
            wait 1: no node has registered yet; start an agent (`ferry up` starts one)
        "#]],
    );
}

#[test]
fn a_node_going_down_loses_its_jobs_and_frees_nothing_twice() {
    let mut s = Scheduler::new();
    s.apply(node("a", 2, 2)).unwrap();
    s.apply(job(1, 1, 2, 0)).unwrap();
    assert_eq!(s.schedule().len(), 1);
    let lost = s.apply(Event::NodeDown { node: "a".into() }).unwrap();
    assert_eq!(lost, vec![Decision::Lost { job: 1, node: "a".into() }]);
    s.apply(job(2, 1, 1, 0)).unwrap();
    assert!(s.schedule().is_empty(), "nothing may start on a node that is down");
    assert_eq!(
        s.explain(2).unwrap().to_string(),
        "none of the 1 known nodes is ready; their agents have stopped reporting"
    );
    s.apply(node("a", 2, 2)).unwrap();
    assert_eq!(s.schedule().len(), 1);
    s.check_invariants().unwrap();
}

#[test]
fn adoption_restores_running_jobs_and_refuses_a_gpu_held_twice() {
    let mut s = Scheduler::new();
    s.apply(node("a", 4, 2)).unwrap();
    let alloc = |gpus: Vec<u32>| Allocation {
        node: "a".into(),
        resources: Resources::new(1000, GIB, gpus.len() as u32),
        gpus,
        gpu_share_milli: 0,
        peers: Vec::new(),
    };
    s.apply(Event::JobAdopted {
        request: JobRequest::new(7, Resources::new(1000, GIB, 1), 0),
        allocation: alloc(vec![1]),
    })
    .unwrap();
    let err = s
        .apply(Event::JobAdopted {
            request: JobRequest::new(8, Resources::new(1000, GIB, 1), 0),
            allocation: alloc(vec![1]),
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "job 8 cannot be adopted on node a: GPU 1 is held by job 7");
    s.apply(job(9, 1, 1, 0)).unwrap();
    let starts = s.schedule();
    assert!(matches!(&starts[..], [Decision::Start { job: 9, allocation, .. }] if allocation.gpus == vec![0]));
    s.apply(Event::JobEnded { id: 7 }).unwrap();
    s.apply(Event::JobEnded { id: 9 }).unwrap();
    assert_eq!(s.node_usage("a").unwrap().0, Resources::ZERO);
}

#[test]
fn the_reserve_depth_sets_how_many_blocked_jobs_hold_resources_back() {
    // Nodes a and b each have one GPU taken and one free; jobs 3 and 4 need two GPUs each, job 6 one.
    let cluster = |depth: Option<u32>| {
        let mut s = Scheduler::new();
        if let Some(depth) = depth {
            s.apply(Event::ReserveDepthConfigured(depth)).unwrap();
        }
        for name in ["a", "b"] {
            s.apply(node(name, 4, 2)).unwrap();
        }
        for (id, name) in [(1, "a"), (2, "b")] {
            let allocation = Allocation {
                node: name.into(),
                resources: Resources::new(1000, GIB, 1),
                gpus: vec![0],
                gpu_share_milli: 0,
                peers: Vec::new(),
            };
            s.apply(Event::JobAdopted { request: JobRequest::new(id, allocation.resources, 0), allocation }).unwrap();
        }
        for e in [job(3, 1, 2, 0), job(4, 1, 2, 0), job(6, 1, 1, 0)] {
            s.apply(e).unwrap();
        }
        s
    };
    // By default both blocked jobs hold a node's free GPU back, so job 6 waits.
    let mut s = cluster(None);
    assert_eq!(started(s.schedule()), vec![]);
    assert_eq!((s.held_back("a").map(|h| h.job), s.held_back("b").map(|h| h.job)), (Some(3), Some(4)));
    // Reserving for the first blocked job only, job 4 holds nothing and job 6 takes b's free GPU.
    let mut s = cluster(Some(1));
    assert_eq!(started(s.schedule()), vec![(6, "b".to_string())]);
    assert_eq!(s.held_back("a").map(|h| h.job), Some(3));
    s.check_invariants().unwrap();
    // Depths out of range are refused, and the setting is kept.
    for bad in [0, ferry_core::RESERVE_DEPTH_MAX + 1] {
        let err = s.apply(Event::ReserveDepthConfigured(bad)).unwrap_err().to_string();
        assert_eq!(err, format!("a reserve depth of {bad}: it must be from 1 to 100000"));
    }
}

#[test]
fn a_duplicate_submission_is_refused() {
    let mut s = Scheduler::new();
    s.apply(job(1, 1, 0, 0)).unwrap();
    assert_eq!(s.apply(job(1, 1, 0, 0)).unwrap_err().to_string(), "job 1 is already known to the scheduler");
}

fn gpu_node(name: &str, gpus: u32, model: &str, labels: &[(&str, &str)]) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.to_string(),
        pool: "local".to_string(),
        capacity: Resources::new(16_000, 64 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        gpu_model: Some(model.to_string()),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    })
}

fn share(id: u64, milli: u32) -> Event {
    Event::JobSubmitted(JobRequest { gpu_share_milli: milli, ..JobRequest::new(id, Resources::new(1000, GIB, 0), 0) })
}

#[test]
fn gpu_shares_pack_onto_as_few_gpus_as_possible_and_never_exceed_one() {
    check(
        vec![gpu_node("n", 2, "T4", &[]), share(1, 500), share(2, 300), share(3, 200), share(4, 600), job(5, 1, 1, 0)],
        expect![[r#"
            start 1 on n gpus [0]: best fit of 1 candidate node in pool local: leaves 1 GPU and 15 CPUs free
            start 2 on n gpus [0]: best fit of 1 candidate node in pool local: leaves 1 GPU and 14 CPUs free
            start 3 on n gpus [0]: best fit of 1 candidate node in pool local: leaves 1 GPU and 13 CPUs free
            start 4 on n gpus [1]: best fit of 1 candidate node in pool local: leaves 0 GPUs and 12 CPUs free
            wait 5: needs 1 GPU; node n has 0 free (2 held by jobs 1, 2, 3 and 4)
        "#]],
    );
}

#[test]
fn gpu_models_and_labels_restrict_where_a_job_may_run() {
    let mut s = Scheduler::new();
    s.apply(gpu_node("small-t4", 1, "T4", &[("rack", "a")])).unwrap();
    s.apply(gpu_node("big-a100", 8, "A100", &[("rack", "b")])).unwrap();
    let wants = |id, models: &[&str], selector: &[(&str, &str)]| JobRequest {
        gpu_models: models.iter().map(|m| m.to_string()).collect(),
        selector: selector.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..JobRequest::new(id, Resources::new(1000, GIB, 1), 0)
    };
    s.apply(Event::JobSubmitted(wants(1, &["a100"], &[]))).unwrap();
    s.apply(Event::JobSubmitted(wants(2, &[], &[("rack", "a")]))).unwrap();
    let placed = started(s.schedule());
    assert_eq!(placed, vec![(1, "big-a100".to_string()), (2, "small-t4".to_string())]);
    let nowhere = s.check_feasible(&wants(3, &["V100"], &[])).unwrap_err();
    assert_eq!(nowhere.to_string(), "no node in any pool has GPU model V100; the GPU models known are A100, T4");
    let unlabelled = s.check_feasible(&wants(4, &[], &[("rack", "c")])).unwrap_err();
    assert_eq!(unlabelled.to_string(), "no node in any pool has labels rack=c");
    assert_eq!(s.check_feasible(&wants(5, &["T4"], &[])), Ok(()));
    assert_eq!(s.check_feasible(&JobRequest::new(6, Resources::new(1000, GIB, 2), 0)), Ok(()), "the A100 has 8 GPUs");
    let t4_pair = JobRequest { gpu_models: vec!["T4".into()], ..JobRequest::new(7, Resources::new(1000, GIB, 2), 0) };
    assert_eq!(
        s.check_feasible(&t4_pair).unwrap_err().to_string(),
        "no node in any pool has 2 GPUs; the largest has 1"
    );
    s.check_invariants().unwrap();
}

fn pooled_node(name: &str, pool: &str, gpus: u32) -> Event {
    Event::NodeUp(NodeInfo {
        name: name.to_string(),
        pool: pool.to_string(),
        capacity: Resources::new(16_000, 64 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        ..NodeInfo::default()
    })
}

fn pools() -> Event {
    let pool = |name: &str, order, burst, burst_after_s| PoolInfo {
        name: name.into(),
        order,
        burst,
        burst_after_s,
        ..PoolInfo::default()
    };
    Event::PoolsConfigured(vec![pool("owned", 0, false, None), pool("cloud", 10, true, Some(600))])
}

#[test]
fn owned_pools_fill_first_and_burst_pools_take_what_they_cannot_hold() {
    check(
        vec![
            pools(),
            pooled_node("cloud-1", "cloud", 8),
            pooled_node("own-1", "owned", 2),
            job(1, 1, 2, 0),
            job(2, 1, 1, 0),
        ],
        expect![[r#"
            start 1 on own-1 gpus [0, 1]: best fit of 1 candidate node in pool owned: leaves 0 GPUs and 15 CPUs free
            start 2 on cloud-1 gpus [0]: burst to pool cloud after waiting 0s (owned fully allocated for it); best fit of 1 candidate node in pool cloud: leaves 7 GPUs and 15 CPUs free
        "#]],
    );
}

#[test]
fn a_job_that_owned_pools_could_hold_later_bursts_only_after_its_wait_limit() {
    let mut s = Scheduler::new();
    for e in [
        pools(),
        pooled_node("own-a", "owned", 2),
        pooled_node("own-b", "owned", 2),
        pooled_node("cloud-1", "cloud", 8),
    ] {
        s.apply(e).unwrap();
    }
    // Nine CPUs each keep the two jobs on different nodes.
    s.apply(job(1, 9, 1, 0)).unwrap();
    s.apply(job(2, 9, 1, 0)).unwrap();
    assert_eq!(s.schedule().len(), 2);
    // One GPU is free on each owned node: together they could hold a 2-GPU job, so it waits rather than burst.
    let mut big = JobRequest::new(3, Resources::new(1000, GIB, 2), 0);
    big.submitted_at_us = 1_000_000;
    s.apply(Event::JobSubmitted(big)).unwrap();
    s.apply(Event::Tick { now_us: 61_000_000 }).unwrap();
    assert!(s.schedule().is_empty());
    assert_eq!(
        s.explain(3).unwrap().to_string(),
        "owned pools have room for it but not on one node yet; it may burst to pool cloud after waiting 10m (waited 60s so far)"
    );
    s.apply(Event::Tick { now_us: 601_000_000 }).unwrap();
    let starts = s.schedule();
    let [Decision::Start { job: 3, allocation, reason }] = &starts[..] else { panic!("{starts:?}") };
    assert_eq!(allocation.node, "cloud-1");
    assert_eq!(reason.burst.as_ref().map(|b| b.waited_s), Some(600));
    s.check_invariants().unwrap();
}

#[test]
fn fgd_keeps_whole_gpus_whole_for_the_jobs_that_need_them() {
    // Two nodes: one already holds a 0.6 share on GPU 0. The mix is mostly whole-GPU jobs, so a new 0.3 share
    // belongs next to the existing share (filling that GPU), not on an untouched GPU.
    let mut s = Scheduler::new();
    s.apply(Event::PlacementConfigured(ferry_core::GpuPlacement::Fgd)).unwrap();
    s.apply(gpu_node("a", 2, "T4", &[])).unwrap();
    s.apply(gpu_node("b", 2, "T4", &[])).unwrap();
    s.apply(share(1, 600)).unwrap();
    assert!(matches!(&s.schedule()[..], [Decision::Start { allocation, .. }] if allocation.node == "a"));
    for id in 10..20 {
        s.apply(job(id, 1, 1, -1)).unwrap();
    }
    s.apply(share(2, 300)).unwrap();
    let starts = s.schedule();
    let share_start = starts.iter().find_map(|d| match d {
        Decision::Start { job: 2, allocation, .. } => Some(allocation.clone()),
        _ => None,
    });
    let share_start = share_start.expect("the share starts");
    assert_eq!((share_start.node.as_str(), share_start.gpus.as_slice()), ("a", &[0u32][..]), "{starts:?}");
    s.check_invariants().unwrap();
}

#[test]
fn a_job_pinned_to_a_pool_runs_only_there_and_an_unknown_pool_is_named() {
    let mut s = Scheduler::new();
    let in_pool = |name: &str, pool: &str| {
        Event::NodeUp(NodeInfo {
            name: name.to_string(),
            pool: pool.to_string(),
            capacity: Resources::new(8000, 16 * GIB, 2),
            gpu_indices: vec![0, 1],
            ..NodeInfo::default()
        })
    };
    s.apply(in_pool("owned", "local")).unwrap();
    s.apply(in_pool("rented", "cloud")).unwrap();
    let pinned = |id: u64, pool: Option<&str>, gpus: u32| JobRequest {
        pool: pool.map(str::to_string),
        ..JobRequest::new(id, Resources::new(1000, GIB, gpus), 0)
    };
    // Both nodes have room; the pinned job goes to its pool's, the free one wherever fits best (no pool order is set).
    s.apply(Event::JobSubmitted(pinned(1, Some("cloud"), 1))).unwrap();
    s.apply(Event::JobSubmitted(pinned(2, None, 1))).unwrap();
    let placed = started(s.schedule());
    assert_eq!(placed, vec![(1, "rented".to_string()), (2, "rented".to_string())]);
    let unknown = s.check_feasible(&pinned(3, Some("moon"), 1)).unwrap_err();
    assert_eq!(unknown.to_string(), "there is no pool `moon`; the pools are cloud, local");
    let too_big = s.check_feasible(&pinned(4, Some("cloud"), 4)).unwrap_err();
    assert_eq!(too_big.to_string(), "no node in pool cloud has 4 GPUs; the largest has 2");
    // Waiting for its own pool, now full: the other pool's two free GPUs are no use to it.
    s.apply(Event::JobSubmitted(pinned(5, Some("cloud"), 2))).unwrap();
    assert!(s.schedule().iter().all(|d| !matches!(d, Decision::Start { job: 5, .. })));
    s.check_invariants().unwrap();

    // A configured pool without a node yet (an engine that has not answered) takes jobs; they wait for its nodes.
    let hpc = PoolInfo { name: "hpc".into(), order: 5, ..PoolInfo::default() };
    s.apply(Event::PoolsConfigured(vec![hpc])).unwrap();
    s.check_feasible(&pinned(6, Some("hpc"), 1)).expect("a configured pool's jobs wait for its nodes");
    s.apply(Event::JobSubmitted(pinned(6, Some("hpc"), 1))).unwrap();
    assert!(s.schedule().iter().all(|d| !matches!(d, Decision::Start { job: 6, .. })));
    let why = s.explain(6).unwrap().to_string();
    assert_eq!(why, "pool hpc has no node yet: its engine has not answered, or no agent of the pool has joined");
    let unknown = s.check_feasible(&pinned(7, Some("moon"), 1)).unwrap_err();
    assert_eq!(unknown.to_string(), "there is no pool `moon`; the pools are cloud, hpc, local");
    s.apply(in_pool("slurm-1", "hpc")).unwrap();
    assert!(started(s.schedule()).contains(&(6, "slurm-1".to_string())));
    s.check_invariants().unwrap();
}

/// The core keeps a queued job in a compact form (owner names and constraints interned): the request it gives back
/// is the one submitted, field for field, and the queue is counted by team and pools without a request per job.
#[test]
fn a_queued_request_comes_back_whole_and_the_queue_is_counted_by_team_and_pool() {
    let mut s = Scheduler::new();
    s.apply(pooled_node("a1", "a", 8)).unwrap();
    s.apply(pooled_node("b1", "b", 8)).unwrap();
    let full = JobRequest {
        id: 7,
        resources: Resources::new(4000, 8 * GIB, 2),
        priority: 10,
        gpu_models: vec!["A100".to_string()],
        selector: [("rack".to_string(), "r1".to_string())].into(),
        submitted_at_us: 1_000_000,
        team: "ml".to_string(),
        user: "ana".to_string(),
        max_runtime_s: Some(3600),
        nodes: 2,
        project: "vision".to_string(),
        pool: Some("a".to_string()),
        image: true,
        not_before_us: 2_000_000,
        expected_runtime_s: Some(600),
        attained_gpu_s: 42,
        ..JobRequest::default()
    };
    s.apply(Event::JobSubmitted(full.clone())).unwrap();
    assert_eq!(s.request(7), Some(full));

    let plain = |id: u64, team: &str, at_s: i64| JobRequest {
        team: team.to_string(),
        user: "bo".to_string(),
        submitted_at_us: at_s * 1_000_000,
        ..JobRequest::new(id, Resources::new(1000, GIB, 1), 0)
    };
    for (id, team, at_s) in [(1, "ml", 30), (2, "ml", 10), (3, "", 20)] {
        s.apply(Event::JobSubmitted(plain(id, team, at_s))).unwrap();
    }
    let groups: Vec<String> = s
        .queued_groups()
        .iter()
        .map(|g| {
            format!(
                "team {:?} pools {:?}: {} jobs, oldest at {} s",
                g.team,
                g.pools,
                g.jobs,
                g.oldest_submitted_at_us / 1_000_000
            )
        })
        .collect();
    expect![[r#"
        [
            "team \"\" pools {\"a\", \"b\"}: 1 jobs, oldest at 20 s",
            "team \"ml\" pools {}: 1 jobs, oldest at 1 s",
            "team \"ml\" pools {\"a\", \"b\"}: 2 jobs, oldest at 10 s",
        ]
    "#]]
    .assert_debug_eq(&groups);
}
