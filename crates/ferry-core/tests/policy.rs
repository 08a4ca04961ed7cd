//! Quotas, fair share and preemption, through the core's events and decisions.

use ferry_core::{Decision, Event, JobRequest, NodeInfo, ProjectInfo, Resources, Scheduler, TeamInfo};

const GIB: u64 = 1 << 30;

fn node(gpus: u32) -> Event {
    Event::NodeUp(NodeInfo {
        name: "n".into(),
        pool: "local".into(),
        capacity: Resources::new(64_000, 256 * GIB, gpus),
        gpu_indices: (0..gpus).collect(),
        ..NodeInfo::default()
    })
}

fn gpu_job(id: u64, user: &str, team: &str, priority: i32) -> Event {
    Event::JobSubmitted(JobRequest {
        user: user.into(),
        team: team.into(),
        ..JobRequest::new(id, Resources::new(1000, GIB, 1), priority)
    })
}

fn teams(list: &[(&str, u32, Option<u32>)]) -> Event {
    let teams = list
        .iter()
        .map(|(name, quota, borrow)| TeamInfo {
            name: name.to_string(),
            quota: Resources::new(64_000, 256 * GIB, *quota),
            borrow_limit: borrow.map(|b| Resources::new(64_000, 256 * GIB, b)),
        })
        .collect();
    Event::TeamsConfigured { teams, fair_share_half_life_s: 3600 }
}

/// One cycle's decisions as short lines.
fn cycle(s: &mut Scheduler) -> Vec<String> {
    let out = s
        .schedule()
        .into_iter()
        .map(|d| match d {
            Decision::Start { job, .. } => format!("start {job}"),
            Decision::Preempt { job, by, reason } => format!("preempt {job} for {by}: {reason}"),
            Decision::Lost { job, .. } => format!("lost {job}"),
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
fn a_sweep_does_not_starve_a_colleagues_single_run() {
    let mut events = vec![node(4)];
    events.extend((1..=10).map(|id| gpu_job(id, "ann", "", 0)));
    events.push(gpu_job(11, "bob", "", 0));
    let mut s = scheduler(events);
    assert_eq!(cycle(&mut s), ["start 1", "start 11", "start 2", "start 3"]);
}

#[test]
fn projects_share_fairly_before_their_users_do() {
    // Project vision has two users with five jobs each, project nlp one user with five: the four GPUs go two to
    // each project, not three to vision because it has more users.
    let job = |id: u64, user: &str, project: &str| {
        Event::JobSubmitted(JobRequest {
            user: user.into(),
            team: "research".into(),
            project: project.into(),
            ..JobRequest::new(id, Resources::new(1000, GIB, 1), 0)
        })
    };
    let mut events = vec![node(4)];
    events.extend((1..=5).map(|id| job(id, "ann", "vision")));
    events.extend((6..=10).map(|id| job(id, "carl", "vision")));
    events.extend((11..=15).map(|id| job(id, "bob", "nlp")));
    let mut s = scheduler(events);
    assert_eq!(cycle(&mut s), ["start 1", "start 11", "start 6", "start 12"]);
}

#[test]
fn recent_usage_weighs_until_it_decays() {
    let mut s = scheduler(vec![node(1), gpu_job(1, "ann", "", 0)]);
    assert_eq!(cycle(&mut s), ["start 1"]);
    // Ann holds the GPU for an hour; then both queue a job, Ann first.
    s.apply(Event::Tick { now_us: 3_601_000_000 }).unwrap();
    s.apply(Event::JobEnded { id: 1 }).unwrap();
    s.apply(gpu_job(2, "ann", "", 0)).unwrap();
    s.apply(gpu_job(3, "bob", "", 0)).unwrap();
    assert_eq!(cycle(&mut s), ["start 3"], "Bob has used nothing lately, so his job goes first");
}

#[test]
fn higher_priority_preempts_the_newest_lower_priority_job_and_then_starts() {
    let mut s = scheduler(vec![node(2), gpu_job(1, "ann", "", 0), gpu_job(2, "ann", "", 0)]);
    assert_eq!(cycle(&mut s), ["start 1", "start 2"]);
    s.apply(gpu_job(3, "bob", "", 100)).unwrap();
    assert_eq!(
        cycle(&mut s),
        ["preempt 2 for 3: a job of higher priority (100) needs its resources (its priority is 0)"]
    );
    assert_eq!(
        s.explain(3).unwrap().to_string(),
        "job 2 preempted to make room for it; it starts when they have stopped"
    );
    assert!(cycle(&mut s).is_empty(), "no second victim while the first is stopping");
    s.apply(Event::JobEnded { id: 2 }).unwrap();
    assert_eq!(cycle(&mut s), ["start 3"]);
}

#[test]
fn a_team_takes_back_its_guaranteed_quota_from_a_borrower() {
    let mut events = vec![node(4), teams(&[("vision", 2, None), ("nlp", 2, None)])];
    events.extend((1..=4).map(|id| gpu_job(id, "nina", "nlp", 0)));
    let mut s = scheduler(events);
    assert_eq!(cycle(&mut s), ["start 1", "start 2", "start 3", "start 4"], "nlp borrows vision's idle quota");
    s.apply(gpu_job(5, "vic", "vision", 0)).unwrap();
    assert_eq!(
        cycle(&mut s),
        ["preempt 4 for 5: team nlp borrowed beyond its quota and team vision needs its guaranteed share back"]
    );
    s.apply(Event::JobEnded { id: 4 }).unwrap();
    assert_eq!(cycle(&mut s), ["start 5"]);
    // Within its own quota, nlp is safe from vision: a third vision job beyond vision's quota only waits.
    s.apply(gpu_job(6, "vic", "vision", 0)).unwrap();
    s.apply(gpu_job(7, "vic", "vision", 0)).unwrap();
    let decisions = cycle(&mut s);
    assert_eq!(
        decisions,
        ["preempt 3 for 6: team nlp borrowed beyond its quota and team vision needs its guaranteed share back"]
    );
    s.apply(Event::JobEnded { id: 3 }).unwrap();
    assert_eq!(cycle(&mut s), ["start 6"]);
    assert!(cycle(&mut s).is_empty(), "job 7 would take vision past its quota, and nlp is within its own");
}

#[test]
fn a_team_never_holds_more_than_its_quota_plus_its_borrowing_limit() {
    let mut s = scheduler(vec![node(8), teams(&[("small", 1, Some(1))]), gpu_job(1, "sam", "small", 0)]);
    s.apply(gpu_job(2, "sam", "small", 0)).unwrap();
    s.apply(gpu_job(3, "sam", "small", 0)).unwrap();
    assert_eq!(cycle(&mut s), ["start 1", "start 2"]);
    assert_eq!(
        s.explain(3).unwrap().to_string(),
        "team small would hold 3, over its limit of 2 (quota plus what it may borrow); it starts when the team's other jobs end"
    );
    assert_eq!(s.team_held("small").gpus, 2);
}

fn limited(id: u64, gpus: u32, max_runtime_s: Option<u64>) -> Event {
    Event::JobSubmitted(JobRequest { max_runtime_s, ..JobRequest::new(id, Resources::new(1000, GIB, gpus), 0) })
}

#[test]
fn short_jobs_backfill_around_a_blocked_job_only_when_they_end_before_its_start() {
    let mut s = scheduler(vec![node(4), limited(1, 2, Some(3600)), limited(2, 1, Some(7200))]);
    assert_eq!(cycle(&mut s), ["start 1", "start 2"]);
    s.apply(limited(3, 4, None)).unwrap();
    s.apply(limited(4, 1, Some(1800))).unwrap();
    s.apply(limited(5, 1, Some(3 * 3600))).unwrap();
    s.apply(limited(6, 1, None)).unwrap();
    assert_eq!(cycle(&mut s), ["start 4"], "only the half-hour job ends before job 3 can start, in two hours");
    assert_eq!(s.estimate_start(3), Some(1_000_000 + 7200 * 1_000_000), "job 2's limit decides when 4 GPUs are free");
    assert_eq!(s.estimate_start(6), Some(1_000_000 + 1800 * 1_000_000), "a GPU frees when job 4 reaches its limit");
    assert_eq!(s.explain(5).unwrap().to_string(), "needs 1 GPU; node n has 0 free (4 held by jobs 1, 2 and 4)");
}

#[test]
fn what_a_preemption_frees_goes_to_the_job_it_was_for() {
    // nlp borrows all 8 GPUs; ben (nlp, no usage yet) queues a run; vision takes back 3 GPUs. The GPUs the victims
    // free must go to vision's jobs, not to ben's run, which fair share would otherwise put first (and which vision
    // would then preempt again, and again).
    let mut s = Scheduler::new();
    s.apply(Event::Tick { now_us: 1 }).unwrap();
    s.apply(Event::NodeUp(NodeInfo {
        name: "n".into(),
        pool: "p".into(),
        capacity: Resources::new(64_000, 512 * GIB, 8),
        gpu_indices: (0..8).collect(),
        ..NodeInfo::default()
    }))
    .unwrap();
    let unl = Resources::new(u64::MAX / 4, u64::MAX / 4, u32::MAX / 4);
    let t = |n: &str| TeamInfo { name: n.into(), quota: Resources { gpus: 4, ..unl }, borrow_limit: None };
    s.apply(Event::TeamsConfigured { teams: vec![t("nlp"), t("vision")], fair_share_half_life_s: 3600 }).unwrap();
    let job = |id: u64, user: &str, team: &str| {
        Event::JobSubmitted(JobRequest {
            user: user.into(),
            team: team.into(),
            ..JobRequest::new(id, Resources::new(4000, 32 * GIB, 1), 0)
        })
    };
    for id in 1..=10 {
        s.apply(job(id, "ana", "nlp")).unwrap();
    }
    let mut log = vec![];
    let mut ending: Vec<u64> = vec![];
    for step in 0..12 {
        if step == 1 {
            s.apply(job(11, "ben", "nlp")).unwrap();
        }
        if step == 2 {
            for id in 12..=14 {
                s.apply(job(id, "vic", "vision")).unwrap();
            }
        }
        for id in ending.drain(..) {
            s.apply(Event::JobEnded { id }).unwrap();
            s.apply(job(id, if id == 11 { "ben" } else { "ana" }, "nlp")).unwrap();
        }
        s.apply(Event::Tick { now_us: 1 + (step + 1) * 30_000_000 }).unwrap();
        for d in s.schedule() {
            match d {
                Decision::Start { job, .. } => log.push(format!("{step}: start {job}")),
                Decision::Preempt { job, by, .. } => {
                    log.push(format!("{step}: preempt {job} for {by}"));
                    ending.push(job);
                }
                _ => {}
            }
        }
    }
    let tail: Vec<&str> = log.iter().skip(8).map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "2: preempt 8 for 12",
            "2: preempt 7 for 13",
            "2: preempt 6 for 14",
            "3: start 12",
            "3: start 13",
            "3: start 14"
        ]
    );
}

#[test]
fn a_project_takes_back_its_quota_from_a_sibling_project_and_a_capped_project_waits() {
    let project = |name: &str, gpus: u32, borrow: Option<u32>| ProjectInfo {
        team: "research".into(),
        name: name.into(),
        quota: Resources::new(u64::MAX, u64::MAX, gpus),
        borrow_limit: borrow.map(|b| Resources::new(0, 0, b)),
    };
    let projects = Event::ProjectsConfigured(vec![
        project("vision", 2, None),
        project("nlp", 2, None),
        project("audio", 1, Some(0)),
    ]);
    let job = |id: u64, user: &str, project: &str| {
        Event::JobSubmitted(JobRequest {
            user: user.into(),
            team: "research".into(),
            project: project.into(),
            ..JobRequest::new(id, Resources::new(1000, GIB, 1), 0)
        })
    };
    let mut s = scheduler(vec![node(4), projects]);
    for id in 1..=4 {
        s.apply(job(id, "ann", "vision")).unwrap();
    }
    // Vision borrows nlp's idle quota.
    assert_eq!(cycle(&mut s), ["start 1", "start 2", "start 3", "start 4"]);
    s.apply(job(5, "bob", "nlp")).unwrap();
    assert_eq!(
        cycle(&mut s),
        ["preempt 4 for 5: project vision of team research borrowed beyond its quota and project nlp needs its guaranteed share back"]
    );
    s.apply(Event::JobEnded { id: 4 }).unwrap();
    assert_eq!(cycle(&mut s), ["start 5"]);
    // Audio may hold one GPU and borrow none.
    s.apply(Event::JobEnded { id: 3 }).unwrap();
    s.apply(Event::JobEnded { id: 2 }).unwrap();
    s.apply(job(6, "cat", "audio")).unwrap();
    s.apply(job(7, "cat", "audio")).unwrap();
    assert_eq!(cycle(&mut s), ["start 6"]);
    assert_eq!(
        s.explain(7).unwrap().to_string(),
        "project audio of team research would hold 2, over its limit of 1 (quota plus what it may borrow); it starts when the project's other jobs end"
    );
}

#[test]
fn a_job_waiting_for_its_victims_counts_against_its_team_so_no_sibling_takes_its_room() {
    // Team t may hold 2 GPUs. Job 2 (2 GPUs) preempts job 1 of another team; while job 1 stops, job 3 of team t
    // must not start, or team t would hold 3 GPUs once job 2 starts.
    let nodes = vec![
        Event::NodeUp(NodeInfo {
            name: "a".into(),
            pool: "p".into(),
            capacity: Resources::new(8000, 32 * GIB, 2),
            gpu_indices: vec![0, 1],
            ..NodeInfo::default()
        }),
        Event::NodeUp(NodeInfo {
            name: "c".into(),
            pool: "p".into(),
            capacity: Resources::new(8000, 32 * GIB, 1),
            gpu_indices: vec![0],
            ..NodeInfo::default()
        }),
    ];
    let job = |id: u64, team: &str, gpus: u32, priority: i32| {
        Event::JobSubmitted(JobRequest {
            user: format!("u{id}"),
            team: team.into(),
            ..JobRequest::new(id, Resources::new(1000, GIB, gpus), priority)
        })
    };
    let mut events = nodes;
    events.push(teams(&[("t", 1, Some(1))]));
    events.push(job(1, "other", 2, 0));
    let mut s = scheduler(events);
    assert_eq!(cycle(&mut s), ["start 1"]);
    s.apply(job(2, "t", 2, 1)).unwrap();
    assert_eq!(
        cycle(&mut s),
        ["preempt 1 for 2: a job of higher priority (1) needs its resources (its priority is 0)"]
    );
    s.apply(job(3, "t", 1, 0)).unwrap();
    assert!(cycle(&mut s).is_empty(), "job 3 would take team t past its limit once job 2 starts");
    assert_eq!(
        s.explain(3).unwrap().to_string(),
        "team t would hold 3, over its limit of 2 (quota plus what it may borrow); it starts when the team's other jobs end"
    );
    s.apply(Event::JobEnded { id: 1 }).unwrap();
    assert_eq!(cycle(&mut s), ["start 2"]);
    assert_eq!(s.team_held("t").gpus, 2);
}
