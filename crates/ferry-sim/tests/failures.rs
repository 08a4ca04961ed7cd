//! Replays with failures: runs that fail as the workload plants, retries after the server's backoff, checkpoints,
//! nodes that fail and come back; numbers worked out by hand, the mistakes of the new inputs, and a property test
//! over random clusters and workloads with random failures of every kind.

use clap::Parser;
use expect_test::{expect, Expect};
use ferry_sim::cli::{self, SimArgs};
use ferry_sim::engine::{self, AttemptEnd, CheckConfig, ReplayConfig};
use ferry_sim::{parse_cluster_toml, parse_workload_csv, report};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

fn check(flags: &str, expected: Expect) {
    let words = flags.replace("DATA", DATA);
    let cli = Cli::try_parse_from(std::iter::once("sim").chain(words.split_whitespace())).expect("flags parse");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run_with(&cli.args, &mut out, &mut err);
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap().replace(DATA, "DATA");
    expected.assert_eq(&format!("exit {code}\n{}{}", text(out), text(err)));
}

#[test]
fn failures_retries_checkpoints_and_a_node_failure_add_up_as_worked_out_by_hand() {
    // By hand (testdata/failures.csv on testdata/failures.toml; selectors pin jobs 1 and 3 to node a, job 2 to b):
    // job 1 runs 0-30 and fails (its one planted failure); its retry waits the 2s backoff, but job 3 (arrived at 2)
    // has taken node a at 30. Job 3 fails at 35 (5s in, as every run of it does) and waits 2s; job 1 runs 35-135 and
    // succeeds. Job 3 runs again 135-140, fails, has no retry left: failed. Job 2 runs on b from 1, checkpointing
    // every 20s; b fails at 50, 49s in: the checkpoint at 40 holds, 9s are lost, and the job is requeued at once (a
    // retry); b is back at 150, job 2 runs the 160s left, 150-310. Runs: 6 (3 jobs + 3 retries); failed runs 3; lost
    // work 30 + 9 + 5 = 44 GPU-seconds (0.012222 GPU-hours; job 3's last run is its end, not lost); recovered 40
    // GPU-seconds (0.011111). Completion: 135 and 309, average 222.
    check(
        "--cluster DATA/failures.toml --workload DATA/failures.csv --format csv --sample-every 1000s",
        expect![[r#"
            exit 0
            seed,metric,label,value
            1,jobs,,3
            1,completed,,2
            1,steps,,13
            1,job_completion_avg_s,,222
            1,job_completion_p95_s,,309
            1,queueing_delay_avg_s,,77.667
            1,queueing_delay_p95_s,,128
            1,queueing_delay_max_s,,128
            1,predictions_jobs,,0
            1,predictions_median_error_pct,,0
            1,makespan_s,,310
            1,gpu_hours,,0.096944
            1,cost,,0
            1,burst_cost,,0
            1,burst_gpu_hours,,0
            1,preemptions,,0
            1,lost_work_gpu_hours,,0.012222
            1,succeeded,,2
            1,failed,,1
            1,lost,,0
            1,run_failures,,3
            1,node_failures,,1
            1,runs_lost,,1
            1,retries,,3
            1,attempts,,6
            1,recovered_work_gpu_hours,,0.011111
            1,idle_wait_jobs,,0
            1,idle_wait_max_s,,0
            1,idle_wait_p95_s,,0
            1,idle_wait_p99_s,,0
            1,team_gpu_hours,ml,0.096944
            1,team_share,ml,1
            1,gpus_allocated,0,1
            1,gpus_allocated,1000,0
        "#]],
    );
}

#[test]
fn the_table_says_how_jobs_ended_and_what_failures_cost() {
    check(
        "--cluster DATA/failures.toml --workload DATA/failures.csv --sample-every 1000s",
        expect![[r#"
            exit 0
            replay of DATA/failures.csv on DATA/failures.toml (2 nodes, 2 GPUs), best-fit placement, fair-share queue, seed 1
            jobs                  3 (2 completed, 13 steps)
            job completion time   avg 3m42s, p95 5m9s, max 5m9s
            queueing delay        avg 1m18s, p95 2m8s, max 2m8s
            runtime predictions   0 of 3 jobs had one at arrival
            makespan              5m10s
            GPU-hours             0.097
            cost                  0.00 (burst 0.00)
            burst GPU-hours       0.000
            preemptions           0 (lost work 0.012 GPU-hours)
            jobs ended            2 succeeded, 1 failed, 0 lost
            failures              3 failed runs, 1 node failure, 1 run lost with them
            retries               3 (6 runs in all)
            checkpoints           recovered 0.011 GPU-hours
            idle-node wait        0 jobs; max 0s, p95 0s, p99 0s

            GPU-hours by team
              team               GPU-hours   share
              ml                     0.097  100.0%

            GPUs allocated over time (every 16m40s)
              time                    GPUs   share
              0s                     1.000   50.0%
              16m40s                 0.000    0.0%

        "#]],
    );
}

fn cluster_error(text: &str, expected: Expect) {
    let base = "[[pool]]\nname = \"p\"\norder = 0\n[[node]]\nname = \"a\"\npool = \"p\"\ncpus = 4\nmemory = \"8GiB\"\n";
    let message = match parse_cluster_toml("cluster.toml", &format!("{base}{text}")) {
        Ok(cluster) => format!("{:?}", cluster.failures),
        Err(e) => e.to_string(),
    };
    expected.assert_eq(&message);
}

#[test]
fn names_the_line_and_field_of_every_failure_mistake() {
    cluster_error(
        "node_failure_rate = 0.5\nnode_recovery = \"10m\"\n[[failure]]\nnode = \"a\"\nat = \"1h\"\nrecover_after = \"5m\"\n",
        expect!["cluster.toml:9: unknown field `node_failure_rate`, expected one of `name`, `name_prefix`, `count`, `pool`, `cpus`, `memory`, `gpus`, `gpu_model`, `labels`"],
    );
    cluster_error(
        "[[failure]]\nnode = \"z\"\nat = \"1h\"\nrecover_after = \"5m\"\n",
        expect![[
            r#"cluster.toml:10: field node: no [[node]] is named "z"; a failure names one of the nodes the file declares (elastic pools' nodes do not fail)"#
        ]],
    );
    cluster_error(
        "[[failure]]\nnode = \"a\"\nat = \"1h\"\nrecover_after = \"30m\"\n[[failure]]\nnode = \"a\"\nat = \"80m\"\nrecover_after = \"5m\"\n",
        expect!["cluster.toml:15: field at: node a fails again before it is back from its failure at 3600s (back at 5400s); a node fails only while it is up"],
    );
    cluster_error(
        "[[failure]]\nnode = \"a\"\nat = \"1h\"\nrecover_after = \"0s\"\n",
        expect!["cluster.toml:12: field recover_after: `0s` is zero; give a positive duration such as 30m"],
    );
    cluster_error("[[failure]]\nnode = \"a\"\nat = \"soon\"\nrecover_after = \"5m\"\n", expect!["cluster.toml:11: field at: `soon` is not a duration; write a number and a unit, such as 90s, 30m, 2h or 1h30m"]);
    cluster_error("node_failure_rate = 2\n", expect!["cluster.toml:9: unknown field `node_failure_rate`, expected one of `name`, `name_prefix`, `count`, `pool`, `cpus`, `memory`, `gpus`, `gpu_model`, `labels`"]);
    cluster_error("node_failure_rate = -1\nnode_recovery = \"5m\"\n", expect!["cluster.toml:9: unknown field `node_failure_rate`, expected one of `name`, `name_prefix`, `count`, `pool`, `cpus`, `memory`, `gpus`, `gpu_model`, `labels`"]);
}

fn workload_error(row: &str, expected: Expect) {
    let text = format!(
        "arrival_s,duration_s,gpus,cpus,memory,user,team,exit_code,fail_at_s,fails,retries,checkpoint_every_s\n{row}\n"
    );
    let message = match parse_workload_csv("workload.csv", &text) {
        Ok(w) => format!("{:?}", w.jobs[0].lifecycle),
        Err(e) => e.to_string(),
    };
    expected.assert_eq(&message);
}

#[test]
fn names_the_line_and_column_of_every_lifecycle_mistake() {
    workload_error(
        "0,60,1,1,1GiB,a,t,3,30,2,4,10",
        expect!["Lifecycle { fail_at_ms: Some(30000), fails: Some(2), retries: 4, checkpoint_every_ms: Some(10000) }"],
    );
    workload_error("0,60,1,1,1GiB,a,t,0,30,,,", expect!["workload.csv:2: column exit_code: a failing run exits with a code other than 0; write one such as 1, or leave it empty"]);
    workload_error("0,60,1,1,1GiB,a,t,,0,,,", expect!["workload.csv:2: column fail_at_s: a run fails some time into it; write a time above 0 seconds, or leave it empty"]);
    workload_error(
        "0,60,1,1,1GiB,a,t,,,2,,",
        expect!["workload.csv:2: column fails: fails says how many runs fail at fail_at_s; write fail_at_s too"],
    );
    workload_error("0,60,1,1,1GiB,a,t,,30,0,,", expect!["workload.csv:2: column fails: 0 failures is none; leave fail_at_s and fails empty for a job that never fails"]);
    workload_error(
        "0,60,1,1,1GiB,a,t,,,,101,",
        expect!["workload.csv:2: column retries: 101 is more retries than allowed (at most 100)"],
    );
    workload_error("0,60,1,1,1GiB,a,t,,,,,0", expect!["workload.csv:2: column checkpoint_every_s: a job saves a checkpoint every so often; write a time above 0 seconds, or leave it empty"]);
}

mod random {
    //! Random clusters with random node failures, and random workloads with planted failures, retries, checkpoints,
    //! gangs, priorities (so preemptions) and quotas, replayed with every check on after every step. A failure names
    //! the generated files, which replay it.

    use proptest::prelude::*;

    use super::*;

    /// Two to five nodes of two GPUs, two teams with quotas and borrowing limits, at most one listed failure per node,
    /// and maybe a failure rate.
    fn cluster() -> impl Strategy<Value = String> {
        let failure = prop::option::of((1u32..1200, 1u32..900));
        let rate = prop::option::of((1u32..=100, 1u32..=30));
        (prop::collection::vec(failure, 2..=5), rate).prop_map(|(nodes, rate)| {
            let mut text = String::new();
            if let Some((per_day, recovery_m)) = rate {
                text += &format!("node_failure_rate = {per_day}\nnode_recovery = \"{recovery_m}m\"\n");
            }
            text += "[[pool]]\nname = \"own\"\norder = 0\n\
                     [[team]]\nname = \"t0\"\nquota = { gpus = 2 }\nborrow_limit = { gpus = 2 }\n\
                     [[team]]\nname = \"t1\"\nquota = { gpus = 4 }\nborrow_limit = { gpus = 2 }\n";
            for (i, _) in nodes.iter().enumerate() {
                text += &format!("[[node]]\nname = \"n{i}\"\npool = \"own\"\ncpus = 8\nmemory = \"16GiB\"\ngpus = 2\n");
            }
            for (i, failure) in nodes.iter().enumerate() {
                if let Some((at_s, back_s)) = failure {
                    text += &format!("[[failure]]\nnode = \"n{i}\"\nat = \"{at_s}s\"\nrecover_after = \"{back_s}s\"\n");
                }
            }
            text
        })
    }

    /// Jobs of mixed priorities in two teams, so that preemptions for priority and reclaims of borrowed quota meet
    /// (this test once found a job of higher priority that borrowed and a job within its team's quota stopping each
    /// other in turn for ever; see `Scheduler::taken_back`).
    fn workload() -> impl Strategy<Value = String> {
        let job = (
            (0u32..600, 1u32..600, 0u32..=2, 1u32..=2, 0u32..2, -1i32..=1),
            (prop::option::of((1u32..400, prop::option::of(1u32..=3))), 0u32..=3, prop::option::of(5u32..200)),
        );
        prop::collection::vec(job, 1..30).prop_map(|jobs| {
            let mut text = String::from(
                "arrival_s,duration_s,gpus,cpus,memory,user,team,priority,nodes,fail_at_s,fails,retries,checkpoint_every_s\n",
            );
            for ((arrive, duration, gpus, nodes, team, priority), (fail, retries, checkpoint)) in jobs {
                let (fail_at, fails) = match fail {
                    Some((at, fails)) => (at.to_string(), fails.map(|n| n.to_string()).unwrap_or_default()),
                    None => (String::new(), String::new()),
                };
                let checkpoint = checkpoint.map(|c| c.to_string()).unwrap_or_default();
                text += &format!(
                    "{arrive},{duration},{gpus},1,1GiB,u{team},t{team},{priority},{nodes},{fail_at},{fails},{retries},{checkpoint}\n"
                );
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn every_job_ends_once_and_every_check_holds(cluster in cluster(), workload in workload(), seed in 0u64..1000) {
            let cluster = parse_cluster_toml("cluster.toml", &cluster).unwrap();
            let workload = parse_workload_csv("workload.csv", &workload).unwrap();
            prop_assume!(ferry_sim::workload::check_fits(&workload, &cluster).is_ok());

            let config = ReplayConfig { seed, preempt_grace_ms: 30_000, check: CheckConfig::default(), predictions: Default::default() };
            let run = engine::replay(&cluster, &workload, &config).map_err(|v| TestCaseError::fail(v.to_string()))?;
            for (i, o) in run.outcomes.iter().enumerate() {
                let spec = &workload.jobs[o.job];
                let last = o.attempts.last().ok_or_else(|| TestCaseError::fail(format!("job {} never ran", i + 1)))?;
                let ending = o.ending.ok_or_else(|| TestCaseError::fail(format!("job {} never ended", i + 1)))?;
                // The job's last run says how it ended; every run before it ended and was followed by a requeue.
                let expected = match ending {
                    ferry_core::lifecycle::Ending::Succeeded => AttemptEnd::Completed,
                    ferry_core::lifecycle::Ending::Failed => AttemptEnd::Failed,
                    ferry_core::lifecycle::Ending::Lost => AttemptEnd::NodeLost,
                    other => return Err(TestCaseError::fail(format!("job {} ended {other}", i + 1))),
                };
                prop_assert_eq!(last.end, expected, "job {}", i + 1);
                prop_assert!(o.attempts.iter().all(|a| a.end != AttemptEnd::Running && a.end_ms.is_some()));
                prop_assert_eq!(o.attempts.len() as u32, 1 + o.retries + o.preemptions, "job {}", i + 1);
                prop_assert!(o.retries <= spec.lifecycle.retries, "job {} retried past its retries", i + 1);
                // Runs follow one another: none starts before the one before it ended.
                for pair in o.attempts.windows(2) {
                    prop_assert!(pair[0].end_ms.unwrap() <= pair[1].start_ms, "job {} ran twice at once", i + 1);
                    prop_assert_eq!(pair[1].resumed_ms, pair[0].kept_ms, "job {} resumed elsewhere", i + 1);
                }
                // A completed run did exactly the work its checkpoints left.
                if last.end == AttemptEnd::Completed {
                    prop_assert_eq!(last.ran_ms(0), spec.duration_ms - last.resumed_ms, "job {}", i + 1);
                }
            }
            let report = report::replay_report(&run, &cluster, true, None).unwrap();
            let f = report.failures.clone().unwrap();
            prop_assert_eq!(f.succeeded + f.failed + f.lost, report.jobs);
            prop_assert_eq!(f.succeeded, report.completed);
            // The same seed replays the same run.
            let again = engine::replay(&cluster, &workload, &config).unwrap();
            prop_assert_eq!(&again.outcomes, &run.outcomes);
            prop_assert_eq!(again.steps, run.steps);
        }
    }
}
