use ferry_api::jobs::{QueueGroup, QueueSummary};
use ferry_core::Resources;

use super::{DriverMetrics, QueuedMetrics, RunMetrics};

#[test]
fn the_queue_is_counted_per_team_and_per_pool_a_job_could_run_in() {
    let queued = |team: &str, at: i64, pools: &[&str]| QueuedMetrics {
        team: team.into(),
        jobs: 1,
        submitted_at_us: at,
        pools: pools.iter().map(|p| p.to_string()).collect(),
    };
    let run = |job_id: u64, node: &str| RunMetrics {
        job_id,
        user: "u".into(),
        team: "t".into(),
        project: String::new(),
        node: node.into(),
        resources: Resources::new(1000, 1 << 30, 1),
        gpu_share_milli: 0,
        gpu_ids: vec![0],
    };
    let metrics = DriverMetrics {
        runs: vec![run(1, "a"), run(2, "a"), run(2, "b")],
        queued: vec![queued("ml", 30, &["local", "cloud"]), queued("ml", 10, &["local"]), queued("", 20, &[])],
        cycles: 0,
        cycle_seconds_sum: 0.0,
    };
    let group = |name: &str, queued, oldest| QueueGroup { name: name.into(), queued, oldest_queued_at_us: oldest };
    assert_eq!(
        metrics.queue_summary(),
        QueueSummary {
            queued: 3,
            placed: 2,
            oldest_queued_at_us: Some(10),
            teams: vec![group("", 1, 20), group("ml", 2, 10)],
            pools: vec![group("cloud", 1, 30), group("local", 2, 10)],
        }
    );
}
