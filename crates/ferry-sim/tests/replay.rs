//! Replays through the `ferry sim` command as a user runs it, and through the library: report numbers worked out by
//! hand, determinism, the checker's report of a planted fault, and exit codes for bad input.

use clap::Parser;
use expect_test::{expect, Expect};
use ferry_sim::cli::{self, SimArgs};
use ferry_sim::engine::{self, CheckConfig, ReplayConfig};
use ferry_sim::{parse_cluster_toml, parse_workload_csv, report};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

/// Runs `ferry sim` with these flags (`DATA` standing for the test data folder); returns the exit code, stdout and
/// stderr, with the folder's path shortened back to `DATA`.
fn sim(flags: &str) -> (i32, String, String) {
    let words = flags.replace("DATA", DATA);
    let cli = Cli::try_parse_from(std::iter::once("sim").chain(words.split_whitespace())).expect("flags parse");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run_with(&cli.args, &mut out, &mut err);
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap().replace(DATA, "DATA");
    (code, text(out), text(err))
}

fn check(flags: &str, expected: Expect) {
    let (code, out, err) = sim(flags);
    expected.assert_eq(&format!("exit {code}\n{out}{err}"));
}

#[test]
fn a_tiny_replay_reports_the_numbers_worked_out_by_hand() {
    // By hand (testdata/workload.csv on testdata/cluster.toml, node a: 2 A100s on-prem; node b: 1 T4, burst):
    // job 1 (2 GPUs) runs on a 0-100; job 2 (T4) on b 10-60; job 3 (A100) waits for a until 100 and runs 100-130;
    // job 4 (CPU only) runs 30-70 on a, owned capacity first; job 5 (half a GPU) waits for b's GPU, runs 60-120.
    // Completion times 100, 50, 110, 40, 80: average 76, p95 (nearest rank) 110. Delays 0, 0, 80, 0, 20: average 20,
    // p95 80. Makespan 130. GPU-seconds: 200 + 50 + 30 + 30 = 310, so 0.086111 GPU-hours; ml holds 280 of them
    // (90.3%), vision 30. Cost: on a, 230 GPU-seconds at 2.0 an hour = 0.127778; on b (burst), job 2 is 50
    // GPU-seconds at 3.6 and 50 CPU-seconds at 0.36 an hour = 0.055, job 5 is 30 GPU-seconds and 60 CPU-seconds =
    // 0.036; total 0.218778, burst 0.091; 80 GPU-seconds (0.022222 GPU-hours) in the burst pool. GPUs allocated: 2 from 0, 3 from 10, 2.5 from 60, 1.5 from 100, 1 from 120,
    // 0 from 130.
    check(
        "--cluster DATA/cluster.toml --workload DATA/workload.csv --sample-every 30s",
        expect![[r#"
            exit 0
            replay of DATA/workload.csv on DATA/cluster.toml (2 nodes, 3 GPUs), best-fit placement, fair-share queue, seed 1
            jobs                  5 (5 completed, 10 steps)
            job completion time   avg 1m16s, p95 1m50s, max 1m50s
            queueing delay        avg 20s, p95 1m20s, max 1m20s
            runtime predictions   0 of 5 jobs had one at arrival
            makespan              2m10s
            GPU-hours             0.086
            cost                  0.22 (burst 0.09)
            burst GPU-hours       0.022
            preemptions           0 (lost work 0.000 GPU-hours)
            idle-node wait        0 jobs; max 0s, p95 0s, p99 0s

            GPU-hours by team
              team               GPU-hours   share
              ml                     0.078   90.3%
              vision                 0.008    9.7%

            GPUs allocated over time (every 30s)
              time                    GPUs   share
              0s                     2.000   66.7%
              30s                    3.000  100.0%
              1m                     2.500   83.3%
              1m30s                  2.500   83.3%
              2m                     1.000   33.3%
              2m30s                  0.000    0.0%

        "#]],
    );
    check(
        "--cluster DATA/cluster.toml --workload DATA/workload.csv --sample-every 1m --format csv",
        expect![[r#"
            exit 0
            seed,metric,label,value
            1,jobs,,5
            1,completed,,5
            1,steps,,10
            1,job_completion_avg_s,,76
            1,job_completion_p95_s,,110
            1,queueing_delay_avg_s,,20
            1,queueing_delay_p95_s,,80
            1,queueing_delay_max_s,,80
            1,predictions_jobs,,0
            1,predictions_median_error_pct,,0
            1,makespan_s,,130
            1,gpu_hours,,0.086111
            1,cost,,0.218778
            1,burst_cost,,0.091
            1,burst_gpu_hours,,0.022222
            1,preemptions,,0
            1,lost_work_gpu_hours,,0
            1,idle_wait_jobs,,0
            1,idle_wait_max_s,,0
            1,idle_wait_p95_s,,0
            1,idle_wait_p99_s,,0
            1,team_gpu_hours,ml,0.077778
            1,team_share,ml,0.903226
            1,team_gpu_hours,vision,0.008333
            1,team_share,vision,0.096774
            1,gpus_allocated,0,2
            1,gpus_allocated,60,2.5
            1,gpus_allocated,120,1
            1,gpus_allocated,180,0
        "#]],
    );
}

#[test]
fn a_preempted_job_loses_its_work_and_starts_over() {
    // Job 1 (priority 0) runs from 0; job 2 (priority 10) arrives at 10 and preempts it; after the 30s grace job 1
    // stops at 40 and is queued again, job 2 runs 40-90, job 1 runs again 90-190. Completion: 190 and 80 (average
    // 135). Waiting: job 1 waited 90 - 40 = 50 in all, job 2 30 (average 40). Lost work: 40 GPU-seconds.
    check(
        "--cluster DATA/one-gpu.toml --workload DATA/preempt.csv --preempt-grace 30s --format json --sample-every 100s",
        expect![[r#"
            exit 0
            {
              "mode": "replay",
              "inputs": {
                "cluster": "DATA/one-gpu.toml",
                "workload": "DATA/preempt.csv",
                "nodes": 1,
                "gpus": 1,
                "elastic_nodes_max": 0,
                "gpu_placement": "best-fit"
              },
              "runs": [
                {
                  "seed": 1,
                  "steps": 6,
                  "queue_order": "fair-share",
                  "jobs": 2,
                  "completed": 2,
                  "job_completion": {
                    "avg_s": 135.0,
                    "p95_s": 190.0,
                    "max_s": 190.0
                  },
                  "queueing_delay": {
                    "avg_s": 40.0,
                    "p95_s": 50.0,
                    "max_s": 50.0
                  },
                  "makespan_s": 190.0,
                  "gpu_hours": 0.052778,
                  "gpu_allocation_every_s": 100.0,
                  "gpu_allocation": [
                    {
                      "t_s": 0.0,
                      "gpus": 1.0,
                      "capacity": 1,
                      "share": 1.0
                    },
                    {
                      "t_s": 100.0,
                      "gpus": 1.0,
                      "capacity": 1,
                      "share": 1.0
                    },
                    {
                      "t_s": 200.0,
                      "gpus": 0.0,
                      "capacity": 1,
                      "share": 0.0
                    }
                  ],
                  "teams": [
                    {
                      "team": "research",
                      "gpu_hours": 0.038889,
                      "share": 0.736842
                    },
                    {
                      "team": "prod",
                      "gpu_hours": 0.013889,
                      "share": 0.263158
                    }
                  ],
                  "cost": 0.0,
                  "burst_cost": 0.0,
                  "burst_gpu_hours": 0.0,
                  "preemptions": 1,
                  "lost_work_gpu_hours": 0.011111,
                  "idle_wait": {
                    "jobs": 0,
                    "max_s": 0.0,
                    "p95_s": 0.0,
                    "p99_s": 0.0
                  },
                  "predictions": {
                    "jobs_predicted": 0,
                    "accuracy": {
                      "jobs": 0,
                      "median_error_pct": 0.0,
                      "within_25_pct": 0.0,
                      "within_2x": 0.0,
                      "ran_longer": 0.0
                    }
                  }
                }
              ]
            }
        "#]],
    );
}

#[test]
fn gangs_start_whole_and_count_every_worker_in_the_report() {
    // By hand (testdata/gangs.csv on testdata/gangs.toml, four nodes of 4 GPUs): at 0, job 1 (2 GPUs) and gang 2 (3
    // workers of 4 GPUs) start, on four distinct nodes. Gang 3 (2 workers of 4 GPUs) arrives at 10: no two nodes are
    // free, so it waits, starting nothing, and holds the two free GPUs of job 1's node, so job 4 (2 GPUs) waits too
    // when it arrives at 20. Gang 2 ends at 60: gang 3 starts on two of its nodes, job 4 on job 1's node (60-90).
    // Job 1 ends at 100, gang 3 at 110. Completion times 100, 60, 100, 70: average 82.5, p95 100. Delays 0, 0, 50,
    // 40: average 22.5, p95 50. GPU-seconds: 200 + 3 x 4 x 60 + 2 x 4 x 50 + 60 = 1380 (0.383333 GPU-hours); ml holds
    // 920 of them (66.7%), vision 460. GPUs allocated: 14 from 0, 12 from 60, 10 from 90, 8 from 100, 0 from 110.
    check(
        "--cluster DATA/gangs.toml --workload DATA/gangs.csv --sample-every 30s",
        expect![[r#"
            exit 0
            replay of DATA/gangs.csv on DATA/gangs.toml (4 nodes, 16 GPUs), best-fit placement, fair-share queue, seed 1
            jobs                  4 (4 completed, 7 steps)
            job completion time   avg 1m23s, p95 1m40s, max 1m40s
            queueing delay        avg 22.5s, p95 50s, max 50s
            runtime predictions   0 of 4 jobs had one at arrival
            makespan              1m50s
            GPU-hours             0.383
            cost                  0.00 (burst 0.00)
            burst GPU-hours       0.000
            preemptions           0 (lost work 0.000 GPU-hours)
            idle-node wait        0 jobs; max 0s, p95 0s, p99 0s

            GPU-hours by team
              team               GPU-hours   share
              ml                     0.256   66.7%
              vision                 0.128   33.3%

            GPUs allocated over time (every 30s)
              time                    GPUs   share
              0s                    14.000   87.5%
              30s                   14.000   87.5%
              1m                    12.000   75.0%
              1m30s                 10.000   62.5%
              2m                     0.000    0.0%

        "#]],
    );
    // The core's first decisions start every worker of a gang at once, on nodes of their own.
    let cluster = parse_cluster_toml("gangs.toml", &std::fs::read_to_string(format!("{DATA}/gangs.toml")).unwrap());
    let workload = parse_workload_csv("gangs.csv", &std::fs::read_to_string(format!("{DATA}/gangs.csv")).unwrap());
    let (cluster, workload) = (cluster.unwrap(), workload.unwrap());
    let mut sim = engine::Sim::new(&cluster, 1, &CheckConfig::default()).unwrap();
    for (id, job) in (1..).zip(workload.jobs.iter().filter(|j| j.arrival_ms == 0)) {
        sim.submit(job.request(id, 0), 0).unwrap();
    }
    let starts: Vec<String> = sim
        .schedule(0)
        .unwrap()
        .into_iter()
        .map(|action| match action {
            engine::Action::Start(job, allocation) => {
                let workers: Vec<String> = allocation.workers().map(|(n, g)| format!("{n}{g:?}")).collect();
                format!("start {job} on {}", workers.join(" "))
            }
            other => format!("{other:?}"),
        })
        .collect();
    sim.finish_step(0).unwrap();
    expect![[r#"
        [
            "start 1 on g0[0, 1]",
            "start 2 on g1[0, 1, 2, 3] g2[0, 1, 2, 3] g3[0, 1, 2, 3]",
        ]
    "#]]
    .assert_debug_eq(&starts);
}

#[test]
fn a_project_borrows_its_siblings_idle_quota_and_the_sibling_takes_it_back() {
    // By hand (testdata/projects.csv on testdata/projects.toml: three nodes of 2 GPUs; team research with projects
    // llm, quota 2 GPUs and 2 more it may borrow, and vision, quota 4). Jobs 1 and 2 of llm (2 GPUs, 100s) start at
    // 0: llm holds 4 GPUs, 2 of them vision's idle quota. Job 3 of llm (2 GPUs) arrives at 5 and waits, past its
    // project's limit, though node g2 idles (the starvation bound of 10s lets no other reason pass). Job 4 of vision
    // starts on g2 at 20 (20-70). Job 5 of vision arrives at 30 with no GPU free: vision, within its quota, takes its
    // GPUs back from llm, which borrows them: job 1 is preempted, stops after the 30s grace at 60 and is queued
    // again; job 5 runs 60-110. g2 frees at 70: job 1 runs again, 70-170 (llm holds 4 again); job 2 ends at 100 and
    // job 3 runs 100-160. Completion times 170, 100, 155, 50, 80: average 111, p95 170. Delays 10, 0, 95, 0, 30:
    // average 27, p95 95. GPU-seconds: 2 x (60 + 100) + 200 + 120 + 100 + 100 = 840 (0.233333 GPU-hours), of which
    // the preempted attempt's 120 are lost (0.033333). GPUs allocated: 4 from 0, 6 from 20, 4 from 110, 2 from 160,
    // 0 from 170.
    check(
        "--cluster DATA/projects.toml --workload DATA/projects.csv --starvation-bound 10s --sample-every 1m",
        expect![[r#"
            exit 0
            replay of DATA/projects.csv on DATA/projects.toml (3 nodes, 6 GPUs), best-fit placement, fair-share queue, seed 1
            jobs                  5 (5 completed, 10 steps)
            job completion time   avg 1m51s, p95 2m50s, max 2m50s
            queueing delay        avg 27s, p95 1m35s, max 1m35s
            runtime predictions   0 of 5 jobs had one at arrival
            makespan              2m50s
            GPU-hours             0.233
            cost                  0.00 (burst 0.00)
            burst GPU-hours       0.000
            preemptions           1 (lost work 0.033 GPU-hours)
            idle-node wait        1 jobs; max 15s, p95 15s, p99 15s

            GPU-hours by team
              team               GPU-hours   share
              research               0.233  100.0%

            GPUs allocated over time (every 1m)
              time                    GPUs   share
              0s                     4.000   66.7%
              1m                     6.000  100.0%
              2m                     4.000   66.7%
              3m                     0.000    0.0%

        "#]],
    );
    // Step by step through the library: why job 3 waits, and why job 5 does once it has asked for llm's borrowed
    // GPUs back (the jobs have one priority and one team, so the preemption is vision reclaiming its quota).
    let read = |file: &str| std::fs::read_to_string(format!("{DATA}/{file}")).unwrap();
    let cluster = parse_cluster_toml("projects.toml", &read("projects.toml")).unwrap();
    let workload = parse_workload_csv("projects.csv", &read("projects.csv")).unwrap();
    let mut sim = engine::Sim::new(&cluster, 1, &CheckConfig::default()).unwrap();
    let mut steps = Vec::new();
    for (id, job) in (1..).zip(&workload.jobs) {
        let now_ms = job.arrival_ms;
        sim.submit(job.request(id, now_ms), now_ms).unwrap();
        let actions: Vec<String> = sim
            .schedule(now_ms)
            .unwrap()
            .into_iter()
            .map(|action| match action {
                engine::Action::Start(job, allocation) => format!("start {job} on {}", allocation.node),
                other => format!("{other:?}"),
            })
            .collect();
        sim.finish_step(now_ms).unwrap();
        let waits = sim.core.explain(id).map(|reason| format!("; job {id} waits: {reason}")).unwrap_or_default();
        steps.push(format!("{}s: {actions:?}{waits}", now_ms / 1000));
    }
    expect![[r#"
        [
            "0s: [\"start 1 on g0\"]",
            "0s: [\"start 2 on g1\"]",
            "5s: []; job 3 waits: project llm of team research would hold 6, over its limit of 4 (quota plus what it may borrow); it starts when the project's other jobs end",
            "20s: [\"start 4 on g2\"]",
            "30s: [\"Preempt(1)\"]; job 5 waits: job 1 preempted to make room for it; it starts when they have stopped",
        ]
    "#]].assert_debug_eq(&steps);
}

#[test]
fn bursts_to_elastic_nodes_only_once_owned_capacity_is_full_and_pays_for_them_until_they_are_released() {
    // By hand (testdata/elastic.csv on testdata/elastic.toml: node own with 4 GPUs; pool cloud of up to 3 nodes of
    // 4 GPUs that start in 3 minutes, are released after 10 idle minutes, and cost 4 x 4.0 + 32 x 0.05 = 17.6 an
    // hour). Jobs 1 and 2 (2 GPUs each) fill own at 0 and 10: no node is asked for. Job 3 (4 GPUs) arrives at 60 with
    // own full: cloud-1 is asked for and joins at 240, when job 3 starts (240-1140). The gang (2 workers of 4 GPUs)
    // arrives at 120: own has one node and no room, cloud-1 is taken by job 3, so cloud-2 and cloud-3 are asked for;
    // they join at 300 and the gang runs 300-900. Jobs 1 and 2 end at 600 and 610; job 5 (1 GPU) arrives at 700 and
    // runs on own (owned capacity first) until 760. cloud-2 and cloud-3 idle from 900 and are released at 1500,
    // cloud-1 idles from 1140 and is released at 1740. Node-hours: (1680 + 1380 + 1380) s = 1.233333, costing
    // 21.706667; own's 2460 GPU-seconds cost 0.683333; total 22.39. Burst GPU-hours: 3600 + 4800 GPU-seconds =
    // 2.333333, of 3.016667 in all. Completion times 600, 600, 1080, 780, 60: average 624, p95 1080; delays 0, 0,
    // 180, 180, 0: average 72, p95 180. Peak: 3 elastic nodes at once.
    check(
        "--cluster DATA/elastic.toml --workload DATA/elastic.csv --sample-every 5m",
        expect![[r#"
            exit 0
            replay of DATA/elastic.csv on DATA/elastic.toml (1 node, 4 GPUs, up to 3 elastic nodes), best-fit placement, fair-share queue, seed 1
            jobs                  5 (5 completed, 15 steps)
            job completion time   avg 10m24s, p95 18m, max 18m
            queueing delay        avg 1m12s, p95 3m, max 3m
            runtime predictions   0 of 5 jobs had one at arrival
            makespan              19m
            GPU-hours             3.017
            cost                  22.39 (burst 21.71)
            burst GPU-hours       2.333
            elastic nodes         3 provisioned, 3 released, peak 3; 1.233 node-hours, cost 21.71
            preemptions           0 (lost work 0.000 GPU-hours)
            idle-node wait        0 jobs; max 0s, p95 0s, p99 0s

            GPU-hours by team
              team               GPU-hours   share
              vision                 2.333   77.3%
              ml                     0.683   22.7%

            GPUs allocated over time (every 5m)
              time                    GPUs      of   share
              0s                     2.000       4   50.0%
              5m                    16.000      16  100.0%
              10m                   14.000      16   87.5%
              15m                    4.000      16   25.0%
              20m                    0.000      16    0.0%
              25m                    0.000       8    0.0%
              30m                    0.000       4    0.0%

        "#]],
    );
    // Each node joined exactly the start-up delay after it was asked for, and every one was released.
    expect![[r#"
        [
            "cloud-1 asked 60 up 240 failed - abandoned - released 1740",
            "cloud-2 asked 120 up 300 failed - abandoned - released 1500",
            "cloud-3 asked 120 up 300 failed - abandoned - released 1500",
        ]
    "#]]
    .assert_debug_eq(&elastic_nodes("elastic.toml"));
}

/// The elastic nodes of a replay of `elastic.csv` on `cluster`, one line each, times in seconds.
fn elastic_nodes(cluster: &str) -> Vec<String> {
    let cluster = parse_cluster_toml(cluster, &std::fs::read_to_string(format!("{DATA}/{cluster}")).unwrap());
    let workload = parse_workload_csv("elastic.csv", &std::fs::read_to_string(format!("{DATA}/elastic.csv")).unwrap());
    let config = ReplayConfig {
        seed: 1,
        preempt_grace_ms: 30_000,
        check: CheckConfig::default(),
        predictions: Default::default(),
    };
    let run = engine::replay(&cluster.unwrap(), &workload.unwrap(), &config).unwrap();
    assert!(run.outcomes.iter().all(|o| o.ending.is_some()), "every job ended");
    run.elastic_nodes
        .iter()
        .map(|n| {
            let at = |t: Option<u64>| t.map_or("-".to_string(), |ms| format!("{}", ms / 1000));
            format!(
                "{} asked {} up {} failed {} abandoned {} released {}",
                n.name,
                n.requested_ms / 1000,
                at(n.up_ms),
                at(n.failed_ms),
                at(n.abandoned_ms),
                at(n.released_ms)
            )
        })
        .collect()
}

#[test]
fn a_pool_without_capacity_cools_down_and_the_jobs_burst_to_the_next_pool() {
    // Spot's provider answers every request with "no capacity" a second later: the core hears it, skips spot for its
    // 30-minute retry_after, and asks on-demand instead; failed nodes cost nothing.
    let (code, out, _) = sim("--cluster DATA/elastic-failover.toml --workload DATA/elastic.csv");
    assert_eq!(code, 0, "{out}");
    let line = out.lines().find(|l| l.starts_with("elastic nodes")).unwrap();
    expect!["elastic nodes         4 provisioned, 3 released, 1 failed to start, 0 abandoned, peak 3; 1.233 node-hours, cost 19.73"]
        .assert_eq(line);
    expect![[r#"
        [
            "spot-1 asked 60 up - failed 61 abandoned - released -",
            "ondemand-1 asked 61 up 241 failed - abandoned - released 1741",
            "ondemand-2 asked 120 up 300 failed - abandoned - released 1500",
            "ondemand-3 asked 120 up 300 failed - abandoned - released 1500",
        ]
    "#]]
    .assert_debug_eq(&elastic_nodes("elastic-failover.toml"));
}

#[test]
fn machines_that_never_join_are_given_up_on_at_the_startup_timeout_and_paid_until_then() {
    let (code, out, _) = sim("--cluster DATA/elastic-hang.toml --workload DATA/elastic.csv");
    assert_eq!(code, 0, "{out}");
    let line = out.lines().find(|l| l.starts_with("elastic nodes")).unwrap();
    expect!["elastic nodes         6 provisioned, 3 released, 0 failed to start, 3 abandoned, peak 4; 1.500 node-hours, cost 22.00"].assert_eq(line);
    expect![[r#"
        [
            "spot-1 asked 60 up - failed - abandoned 360 released -",
            "spot-2 asked 120 up - failed - abandoned 420 released -",
            "spot-3 asked 120 up - failed - abandoned 420 released -",
            "ondemand-1 asked 360 up 540 failed - abandoned - released 2040",
            "ondemand-2 asked 360 up 540 failed - abandoned - released 1800",
            "ondemand-3 asked 420 up 600 failed - abandoned - released 1800",
        ]
    "#]]
    .assert_debug_eq(&elastic_nodes("elastic-hang.toml"));
}

#[test]
fn the_elastic_burst_example_prints_what_its_readme_shows() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/elastic-burst");
    let readme = std::fs::read_to_string(format!("{example}/README.md")).unwrap();
    let (command, shown) = readme.split_once("```\n$ ferry sim ").unwrap().1.split_once('\n').unwrap();
    let shown = shown.split_once("```").unwrap().0;
    let (code, out, err) = sim(&command.replace("examples/elastic-burst", example));
    assert_eq!((code, err.as_str()), (0, ""));
    // The table ends with an empty line, which the README leaves out.
    assert_eq!(out.replace(example, "examples/elastic-burst").trim_end(), shown.trim_end());
}

/// A workload whose jobs arrive in bursts at the same times, so that the seed decides their order.
fn bursty_workload() -> String {
    let mut text = String::from("arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_share\n");
    for i in 0..60u32 {
        let (gpus, share) = if i % 5 == 0 { (0, 250 + i * 7 % 500) } else { (i % 3 + 1, 0) };
        let share = if share == 0 { String::new() } else { share.to_string() };
        text += &format!(
            "{},{},{gpus},{},{}GiB,u{},t{},{share}\n",
            i / 10 * 60,
            30 + i * 37 % 400,
            1 + i % 4,
            1 + i % 8,
            i % 7,
            i % 3
        );
    }
    text
}

const CLUSTER: &str = "[[pool]]\nname = \"p\"\norder = 0\n[[node]]\nname_prefix = \"g\"\ncount = 3\npool = \"p\"\ncpus = 16\nmemory = \"64GiB\"\ngpus = 4\n";

fn replay_json(seed: u64) -> String {
    let cluster = parse_cluster_toml("cluster.toml", CLUSTER).unwrap();
    let workload = parse_workload_csv("bursty.csv", &bursty_workload()).unwrap();
    let config =
        ReplayConfig { seed, preempt_grace_ms: 30_000, check: CheckConfig::default(), predictions: Default::default() };
    let run = engine::replay(&cluster, &workload, &config).unwrap();
    serde_json::to_string(&report::replay_report(&run, &cluster, false, None).unwrap()).unwrap()
}

#[test]
fn the_same_seed_replays_the_same_report() {
    assert_eq!(replay_json(7), replay_json(7));
    assert_eq!(replay_json(8), replay_json(8));
}

#[test]
fn a_planted_fault_is_caught_with_its_seed_and_step_and_the_command_replays_it() {
    let flags = "--cluster DATA/cluster.toml --workload DATA/workload.csv --seed 42 --fault-at-step 3";
    let (code, _, err) = sim(flags);
    expect![[r#"
        exit 70
        error: checker failed at step 3 (virtual time 20s) of the run with seed 42: node a has 10001 CPU millis booked of 8000
        replay it with: ferry sim --cluster DATA/cluster.toml --workload DATA/workload.csv --seed 42 --seeds 1 --starvation-bound 3600s --preempt-grace 30s --core-check-every 1 --fault-at-step 3
    "#]].assert_eq(&format!("exit {code}\n{err}"));
    // The printed command fails the same way.
    let replay = err.lines().nth(1).unwrap().strip_prefix("replay it with: ferry sim ").unwrap().to_string();
    assert_eq!(sim(&replay).2, err);
}

#[test]
fn bad_input_exits_64_naming_the_file_line_and_field() {
    check(
        "--cluster DATA/cluster.toml --workload DATA/missing.csv",
        expect![[r#"
        exit 64
        error: cannot read DATA/missing.csv: No such file or directory (os error 2)
    "#]],
    );
    check(
        "--cluster DATA/workload.csv --workload DATA/workload.csv",
        expect![[r#"
        exit 64
        error: DATA/workload.csv:2: key with no value, expected `=`
    "#]],
    );
    check(
        "--cluster DATA/one-gpu.toml --workload DATA/workload.csv",
        expect![[r#"
        exit 64
        error: DATA/workload.csv:3: column gpus: this job fits no node of the cluster: no node in any pool has 2 GPUs; the largest has 1
    "#]],
    );
    check(
        "--cluster DATA/cluster.toml --workload DATA/workload.csv --seeds 0",
        expect![[r#"
        exit 64
        error: --seeds 0: run 1 to 100000 seeds
    "#]],
    );
}

#[test]
fn a_job_its_team_or_project_could_never_hold_is_bad_input() {
    // Team t may hold 2 + 1 GPUs, its project a 1 + 1; nodes have 4.
    let cluster = format!(
        "{CLUSTER}[[team]]\nname = \"t\"\nquota = {{ gpus = 2 }}\nborrow_limit = {{ gpus = 1 }}\n\
         [[team.project]]\nname = \"a\"\nquota = {{ gpus = 1 }}\nborrow_limit = {{ gpus = 1 }}\n"
    );
    let cluster = parse_cluster_toml("cluster.toml", &cluster).unwrap();
    let fits = |job: &str| {
        let text =
            format!("arrival_s,duration_s,gpus,cpus,memory,user,team,nodes,project\n0,60,1,1,1GiB,u,t,,a\n{job}\n");
        let workload = parse_workload_csv("workload.csv", &text).unwrap();
        match ferry_sim::workload::check_fits(&workload, &cluster) {
            Ok(()) => "fits".to_string(),
            Err(e) => e.to_string(),
        }
    };
    expect!["fits"].assert_eq(&fits("0,60,3,1,1GiB,u,t,,"));
    expect!["workload.csv:3: column gpus: this job asks for 4 GPUs in all, more than team t may ever hold: 3 GPUs (its quota plus its borrow_limit)"].assert_eq(&fits("0,60,4,1,1GiB,u,t,,"));
    expect!["workload.csv:3: column nodes: this job asks for 4 GPUs in all, more than team t may ever hold: 3 GPUs (its quota plus its borrow_limit)"].assert_eq(&fits("0,60,2,1,1GiB,u,t,2,"));
    expect!["workload.csv:3: column gpus: this job asks for 3 GPUs in all, more than project a of team t may ever hold: 2 GPUs (its quota plus its borrow_limit)"].assert_eq(&fits("0,60,3,1,1GiB,u,t,,a"));
    // Another team, and another project of t, have no ceiling.
    expect!["fits"].assert_eq(&fits("0,60,4,1,1GiB,u,other,2,a"));
    expect!["fits"].assert_eq(&fits("0,60,3,1,1GiB,u,t,,b"));
}

mod random {
    //! Random clusters and workloads, replayed with every check on: the core must start every job in the end and
    //! never break a promise the checker watches. A failure names the generated files, which replay it.

    use proptest::prelude::*;

    use super::*;

    /// Two fixed nodes in each pool, large enough for any generated job (a gang's workers among them), up to four
    /// random ones, maybe an elastic pool last, and either GPU placement.
    fn cluster() -> impl Strategy<Value = String> {
        let node = (1u32..=4, 0u32..=4, 1u32..=4, prop::sample::select(vec!["A100", "T4"]), any::<bool>());
        let elastic = prop::option::of((1u32..=3, 1u32..=5, 1u32..=10, prop::sample::select(vec!["A100", "T4"])));
        (prop::collection::vec(node, 0..=4), any::<bool>(), elastic).prop_map(|(nodes, fgd, elastic)| {
            let mut text = String::from(
                "[[pool]]\nname = \"own\"\norder = 0\n[[pool]]\nname = \"cloud\"\norder = 1\nburst = true\nburst_after = \"5m\"\n\
                 [[team]]\nname = \"t0\"\nquota = { gpus = 2 }\nborrow_limit = { gpus = 2 }\n\
                 [[team.project]]\nname = \"p0\"\nquota = { gpus = 1 }\nborrow_limit = { gpus = 1 }\n\
                 [[node]]\nname = \"base-a\"\npool = \"own\"\ncpus = 8\nmemory = \"16GiB\"\ngpus = 2\ngpu_model = \"A100\"\n\
                 [[node]]\nname = \"base-a2\"\npool = \"own\"\ncpus = 8\nmemory = \"16GiB\"\ngpus = 2\ngpu_model = \"A100\"\n\
                 [[node]]\nname = \"base-t\"\npool = \"cloud\"\ncpus = 8\nmemory = \"16GiB\"\ngpus = 2\ngpu_model = \"T4\"\n\
                 [[node]]\nname = \"base-t2\"\npool = \"cloud\"\ncpus = 8\nmemory = \"16GiB\"\ngpus = 2\ngpu_model = \"T4\"\n",
            );
            if fgd {
                text.insert_str(0, "gpu_placement = \"fgd\"\n");
            }
            for (i, (cpus, gpus, mem, model, burst)) in nodes.into_iter().enumerate() {
                let pool = if burst { "cloud" } else { "own" };
                text += &format!(
                    "[[node]]\nname = \"n{i}\"\npool = \"{pool}\"\ncpus = {}\nmemory = \"{}GiB\"\ngpus = {gpus}\ngpu_model = \"{model}\"\n",
                    cpus * 4,
                    mem * 8
                );
            }
            if let Some((max_nodes, startup_m, idle_m, model)) = elastic {
                text += &format!(
                    "[[pool]]\nname = \"spot\"\norder = 2\nburst = true\nmax_nodes = {max_nodes}\nstartup = \"{startup_m}m\"\n\
                     idle_release = \"{idle_m}m\"\nnode = {{ cpus = 8, memory = \"16GiB\", gpus = 2, gpu_model = \"{model}\" }}\n"
                );
            }
            text
        })
    }

    fn workload() -> impl Strategy<Value = String> {
        let job = (
            0u32..6,
            1u32..600,
            0u32..=2,
            0u32..3,
            1u32..=4,
            1u32..=8,
            0u32..3,
            0u32..3,
            prop::sample::select(vec!["", "A100", "T4"]),
            -1i32..=1,
            (1u32..=2, 0u32..2),
        );
        prop::collection::vec(job, 1..40).prop_map(|jobs| {
            let mut text = String::from(
                "arrival_s,duration_s,gpus,cpus,memory,user,team,gpu_type,gpu_share,priority,nodes,project\n",
            );
            for (arrive, duration, gpus, share, cpus, mem, user, team, model, priority, (nodes, project)) in jobs {
                // A share of a GPU is for single-node jobs only.
                let (gpus, share, nodes) =
                    if share == 0 && gpus == 0 { (0, String::from("300"), 1) } else { (gpus, String::new(), nodes) };
                text += &format!(
                    "{},{duration},{gpus},{cpus},{mem}GiB,u{user},t{team},{model},{share},{priority},{nodes},p{project}\n",
                    arrive * 60
                );
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_job_finishes_and_every_check_holds(cluster in cluster(), workload in workload(), seed in 0u64..1000) {
            let cluster = parse_cluster_toml("cluster.toml", &cluster).unwrap();
            let workload = parse_workload_csv("workload.csv", &workload).unwrap();
            prop_assume!(ferry_sim::workload::check_fits(&workload, &cluster).is_ok());
            let config = ReplayConfig { seed, preempt_grace_ms: 30_000, check: CheckConfig::default(), predictions: Default::default() };
            let run = engine::replay(&cluster, &workload, &config).map_err(|v| TestCaseError::fail(v.to_string()))?;
            let report = report::replay_report(&run, &cluster, false, None).unwrap();
            prop_assert_eq!(report.completed, report.jobs);
        }
    }
}
