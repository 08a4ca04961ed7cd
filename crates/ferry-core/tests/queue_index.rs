//! The queue filed by class decides exactly what a walk of the whole queue decides: random clusters and workloads,
//! deep enough that most of each cycle runs past the blocked budget, driven through two schedulers in lockstep, one
//! of them walking the queue job by job and trying every job (`set_linear_scan`); every cycle's decisions must be
//! equal. So no job is passed over that could have started.

use std::collections::BTreeMap;

use ferry_core::{
    Decision, Event, JobId, JobRequest, NodeInfo, PoolInfo, ProjectInfo, Resources, Scheduler, TeamInfo,
    RESERVE_DEPTH_DEFAULT,
};

const GIB: u64 = 1 << 30;
/// How many random workloads are tried, each from its own seed.
const CASES: u64 = 24;

/// A small seeded generator (SplitMix64): the test draws no unseeded number, and a failing case names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const MODELS: [&str; 3] = ["A100", "V100", "T4"];

fn cluster(rng: &mut Rng) -> Vec<Event> {
    let burst = rng.below(2) == 0;
    let mut events = vec![
        Event::PoolsConfigured(vec![
            PoolInfo { name: "own".into(), order: 0, ..PoolInfo::default() },
            // Half the clusters burst (where one job may find a place that a smaller one did not), half do not.
            PoolInfo {
                name: "cloud".into(),
                order: 10,
                burst,
                burst_after_s: burst.then_some(600),
                ..PoolInfo::default()
            },
        ]),
        Event::TeamsConfigured {
            teams: vec![
                TeamInfo { name: "a".into(), quota: Resources::new(64_000, 512 * GIB, 8), borrow_limit: None },
                TeamInfo {
                    name: "b".into(),
                    quota: Resources::new(32_000, 256 * GIB, 4),
                    borrow_limit: Some(Resources::new(32_000, 256 * GIB, 8)),
                },
            ],
            fair_share_half_life_s: 3600,
        },
        Event::ProjectsConfigured(vec![ProjectInfo {
            team: "a".into(),
            name: "p".into(),
            quota: Resources::new(16_000, 128 * GIB, 2),
            borrow_limit: Some(Resources::new(16_000, 128 * GIB, 4)),
        }]),
    ];
    for i in 0..(6 + rng.below(10)) {
        let gpus = *rng.pick(&[0u32, 4, 8, 8]);
        let mut labels = BTreeMap::new();
        if rng.below(3) == 0 {
            labels.insert("rack".to_string(), format!("r{}", rng.below(2)));
        }
        events.push(Event::NodeUp(NodeInfo {
            name: format!("n{i:02}"),
            pool: if rng.below(4) == 0 { "cloud" } else { "own" }.into(),
            capacity: Resources::new(32_000, 256 * GIB, gpus),
            gpu_indices: (0..gpus).collect(),
            gpu_model: (gpus > 0).then(|| rng.pick(&MODELS).to_string()),
            labels,
        }));
    }
    events
}

fn job(rng: &mut Rng, id: JobId, now_us: i64) -> JobRequest {
    let gpus = *rng.pick(&[0u32, 1, 1, 2, 4, 8]);
    let mut request = JobRequest::new(
        id,
        Resources::new(1000 * (1 + rng.below(8)), (1 + rng.below(32)) * GIB, gpus),
        *rng.pick(&[0, 0, 0, 10]),
    );
    request.user = format!("u{}", rng.below(4));
    request.team = rng.pick(&["", "a", "b"]).to_string();
    request.project = if request.team == "a" && rng.below(2) == 0 { "p".into() } else { String::new() };
    request.submitted_at_us = now_us;
    if gpus == 1 && rng.below(4) == 0 {
        request.resources.gpus = 0;
        request.gpu_share_milli = 250 * (1 + rng.below(3) as u32);
    }
    if gpus > 0 && rng.below(4) == 0 {
        request.gpu_models = vec![rng.pick(&MODELS).to_string()];
    }
    if rng.below(8) == 0 {
        request.selector.insert("rack".into(), format!("r{}", rng.below(2)));
    }
    if gpus >= 4 && request.gpu_share_milli == 0 && rng.below(3) == 0 {
        request.nodes = 2 + rng.below(2) as u32;
    }
    if rng.below(3) == 0 {
        request.max_runtime_s = Some(60 * (1 + rng.below(120)));
    }
    if rng.below(8) == 0 {
        request.pool = Some(rng.pick(&["own", "cloud"]).to_string());
    }
    request
}

/// Drives both schedulers through one random workload; panics, naming the seed and cycle, where they disagree.
fn check(seed: u64) {
    let mut rng = Rng(seed);
    let mut indexed = Scheduler::new();
    let mut linear = Scheduler::new();
    linear.set_linear_scan(true);
    let mut now_us = 1_000_000i64;
    for s in [&mut indexed, &mut linear] {
        s.apply(Event::Tick { now_us }).unwrap();
    }
    for event in cluster(&mut rng) {
        indexed.apply(event.clone()).unwrap();
        linear.apply(event).unwrap();
    }
    let mut next_id: JobId = 1;
    let mut running: Vec<JobId> = Vec::new();
    // Enough jobs that most cannot fit, so that each cycle spends its blocked budget and walks past it.
    let first = RESERVE_DEPTH_DEFAULT as u64 * 2;
    for cycle in 0..40 {
        let arrivals = if cycle == 0 { first } else { rng.below(40) };
        for _ in 0..arrivals {
            let request = job(&mut rng, next_id, now_us);
            next_id += 1;
            indexed.apply(Event::JobSubmitted(request.clone())).unwrap();
            linear.apply(Event::JobSubmitted(request)).unwrap();
        }
        let a = indexed.schedule();
        let b = linear.schedule();
        assert_eq!(a, b, "seed {seed}, cycle {cycle}: the indexed queue decided otherwise than a linear walk");
        for d in &a {
            if let Decision::Start { job, .. } = d {
                running.push(*job);
            }
        }
        // Some running jobs end (preempted ones among them), time passes.
        let ends = rng.below(running.len() as u64 / 2 + 1);
        for _ in 0..ends {
            let id = running.swap_remove(rng.below(running.len() as u64) as usize);
            indexed.apply(Event::JobEnded { id }).unwrap();
            linear.apply(Event::JobEnded { id }).unwrap();
        }
        now_us += 1_000_000 * (1 + rng.below(900)) as i64;
        for s in [&mut indexed, &mut linear] {
            s.apply(Event::Tick { now_us }).unwrap();
        }
    }
    indexed.check_invariants().unwrap();
    assert_eq!(indexed.queued(), linear.queued());
}

#[test]
fn the_indexed_queue_decides_exactly_as_a_linear_walk_on_random_workloads() {
    for seed in 1..=CASES {
        check(seed);
    }
}
