//! Queue orderings in replays: shortest-first on learned runtime predictions against FIFO and clairvoyant
//! shortest-job-first, the comparison report, and the settings' errors.

use clap::Parser;
use ferry_core::QueueOrder;
use ferry_sim::cli::{self, SimArgs};
use ferry_sim::engine::{self, CheckConfig, ReplayConfig};
use ferry_sim::predictions::Predictions;
use ferry_sim::report::{self, RunReport};
use ferry_sim::synth::{self, SynthSpec};
use ferry_sim::{parse_cluster_toml, Cluster};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

fn sim(flags: &[&str]) -> (i32, String, String) {
    let cli = Cli::try_parse_from(std::iter::once("sim").chain(flags.iter().copied())).expect("flags parse");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = cli::run_with(&cli.args, &mut out, &mut err);
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn replay(cluster: &Cluster, order: QueueOrder, predictions: Predictions, spec: &SynthSpec) -> RunReport {
    let cluster = Cluster { queue_order: order, ..cluster.clone() };
    let workload = synth::workload(spec);
    let config = ReplayConfig { seed: 1, preempt_grace_ms: 30_000, check: CheckConfig::default(), predictions };
    let run = engine::replay(&cluster, &workload, &config).expect("the checker finds nothing");
    report::replay_report(&run, &cluster, false, None).unwrap()
}

#[test]
fn shortest_first_on_learned_predictions_comes_close_to_clairvoyant_sjf_at_high_load() {
    // A trace-shaped workload at 4x load: thousands of jobs wait at the daily peaks.
    let spec = SynthSpec { jobs: 6_000, nodes: 40, load: 4.0, seed: 3, checkpoint_every_s: 0 };
    let cluster = synth::cluster(&spec);
    let fifo = replay(&cluster, QueueOrder::Fifo, Predictions::Learned, &spec);
    let learned = replay(&cluster, QueueOrder::shortest_first(), Predictions::Learned, &spec);
    let clairvoyant = QueueOrder::ShortestFirst { aging_s: 0, unknown_runtime_s: 3600 };
    let sjf = replay(&cluster, clairvoyant, Predictions::Clairvoyant, &spec);
    let mean = |r: &RunReport| r.job_completion.avg_s;
    assert_eq!((learned.completed, fifo.completed, sjf.completed), (6_000, 6_000, 6_000));
    assert!(
        mean(&learned) <= 1.3 * mean(&sjf),
        "shortest-first {}s against clairvoyant {}s",
        mean(&learned),
        mean(&sjf)
    );
    assert!(mean(&learned) * 2.0 < mean(&fifo), "shortest-first {}s against FIFO {}s", mean(&learned), mean(&fifo));
    // Predictions come from the replay's own completed runs: most jobs recur, the first of each kind has none.
    let p = learned.predictions;
    assert!(p.jobs_predicted > 2_000 && p.jobs_predicted < 6_000, "{p:?}");
    assert!(p.accuracy.within_2x > 0.3, "{p:?}");
    // FIFO and clairvoyance do not learn, but the figures of what was predicted are still there for FIFO.
    assert_eq!(sjf.predictions.jobs_predicted, 6_000);
    // The aging bound holds: no job waited much past a day (it then waits only for aged jobs ahead and for room).
    // Measured: 1.37 days with reservations for the first 256 blocked jobs of a cycle, 1.51 days with 64.
    assert!(learned.queueing_delay.max_s < 1.6 * 86_400.0, "{:?}", learned.queueing_delay);
}

#[test]
fn compare_orders_reports_fifo_and_clairvoyant_sjf_beside_the_replay() {
    let (code, out, err) = sim(&[
        "--synthetic",
        "jobs=600,nodes=8,load=3,seed=2",
        "--queue-order",
        "shortest-first",
        "--queue-aging",
        "1d",
        "--compare-orders",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("shortest-first queue"), "{out}");
    assert!(out.contains("The same replay under other queue orders"), "{out}");
    for line in ["shortest-first (this replay)", "fifo", "shortest-first (clairvoyant, no aging)"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(line)), "no line for {line}:\n{out}");
    }
    assert!(out.contains("1.00x"), "the clairvoyant line is the unit:\n{out}");
    // As JSON, the comparison is data.
    let (code, json, _) = sim(&["--synthetic", "jobs=300,nodes=8,seed=2", "--compare-orders", "--format", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let run = &v["runs"][0];
    assert_eq!(run["queue_order"], "fair-share");
    assert_eq!(run["compared"].as_array().unwrap().len(), 2);
    assert!(run["compared"][1]["job_completion"]["avg_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_queue_settings_are_refused_with_the_fix() {
    let (code, _, err) = sim(&["--synthetic", "jobs=10,nodes=8", "--queue-order", "sjf"]);
    assert_eq!(code, 64);
    assert!(
        err.contains("\"sjf\" is not a queue order; write fair-share, fifo, shortest-first or least-attained"),
        "{err}"
    );
    let (code, _, err) = sim(&["--synthetic", "jobs=10,nodes=8", "--queue-order", "fifo", "--queue-aging", "2h"]);
    assert_eq!(code, 64);
    assert!(err.contains("does not age jobs"), "{err}");
    let node = "[[pool]]\nname = \"p\"\norder = 0\n[[node]]\nname = \"a\"\npool = \"p\"\ncpus = 8\nmemory = \"32GiB\"\ngpus = 1\n";
    let err = parse_cluster_toml("c.toml", &format!("queue_order = \"fastest\"\n{node}")).unwrap_err().to_string();
    assert!(err.starts_with("c.toml:1: field queue_order:") && err.contains("not a queue order"), "{err}");
    let err = parse_cluster_toml("c.toml", &format!("queue_aging = \"1d\"\n{node}")).unwrap_err().to_string();
    assert!(err.contains("an aging bound goes with queue_order"), "{err}");
    let err =
        parse_cluster_toml("c.toml", &format!("queue_order = \"least-attained\"\nqueue_aging = \"soon\"\n{node}"))
            .unwrap_err()
            .to_string();
    assert!(err.starts_with("c.toml:2: field queue_aging:"), "{err}");
    let ok = parse_cluster_toml("c.toml", &format!("queue_order = \"shortest-first\"\nqueue_aging = \"12h\"\n{node}"));
    assert_eq!(ok.unwrap().queue_order.aging_s(), Some(12 * 3600));
    // The lease and the levels go with least-attained, from the cluster file or (the lease) the flag.
    let (code, _, err) = sim(&["--synthetic", "jobs=10,nodes=8", "--queue-order", "fifo", "--queue-lease", "10m"]);
    assert_eq!(code, 64);
    assert!(err.contains("--queue-lease: queue order fifo does not preempt"), "{err}");
    let least = "queue_order = \"least-attained\"\n";
    let err = parse_cluster_toml("c.toml", &format!("{least}queue_lease = \"30d\"\n{node}")).unwrap_err().to_string();
    assert!(err.starts_with("c.toml:2: field queue_lease:") && err.contains("write 1s to 7d"), "{err}");
    let err = parse_cluster_toml("c.toml", &format!("{least}queue_levels = [\"9h\", \"2h\"]\n{node}"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("c.toml:2: field queue_levels:") && err.contains("ascend"), "{err}");
    let ok = parse_cluster_toml("c.toml", &format!("{least}queue_lease = \"off\"\nqueue_levels = [\"30m\"]\n{node}"))
        .unwrap();
    assert_eq!((ok.queue_order.lease_s(), ok.queue_order.levels_gpu_s()), (None, Some(&[1800][..])));
}

#[test]
fn the_reserve_depth_comes_from_the_cluster_file_or_the_flag_and_bad_ones_are_refused() {
    let node = "[[pool]]\nname = \"p\"\norder = 0\n[[node]]\nname = \"a\"\npool = \"p\"\ncpus = 8\nmemory = \"32GiB\"\ngpus = 1\n";
    let cluster = parse_cluster_toml("c.toml", &format!("reserve_depth = 8\n{node}")).unwrap();
    assert_eq!(cluster.reserve_depth, Some(8));
    assert_eq!(parse_cluster_toml("c.toml", node).unwrap().reserve_depth, None);
    for bad in ["0", "100001", "-1"] {
        let err = parse_cluster_toml("c.toml", &format!("reserve_depth = {bad}\n{node}")).unwrap_err().to_string();
        assert!(err.starts_with("c.toml:1: field reserve_depth: a reserve depth of"), "{err}");
        assert!(err.contains("must be from 1 to 100000 (the default is 64)"), "{err}");
    }
    for (flag, error) in [("0", "a reserve depth of 0: how many"), ("deep", "\"deep\" is not a whole number")] {
        let parsed = Cli::try_parse_from(["sim", "--synthetic", "jobs=10,nodes=8", "--reserve-depth", flag]);
        let err = parsed.err().expect("refused").to_string();
        assert!(err.contains("--reserve-depth") && err.contains(error), "{err}");
    }

    // At high load the depth changes what starts when: reserving for one blocked job lets more pass the rest.
    let spec = SynthSpec { jobs: 2_000, nodes: 10, load: 4.0, seed: 5, checkpoint_every_s: 0 };
    let cluster = synth::cluster(&spec);
    let run = |depth: u32| {
        let cluster = Cluster { reserve_depth: Some(depth), ..cluster.clone() };
        replay(&cluster, QueueOrder::FairShare, Predictions::Learned, &spec)
    };
    let (shallow, deep) = (run(1), run(1_000));
    assert_eq!((shallow.completed, deep.completed), (2_000, 2_000));
    assert_ne!(shallow.queueing_delay, deep.queueing_delay, "the depth decided nothing");
}

#[test]
fn least_attained_preemption_of_jobs_that_checkpoint_cuts_mean_completion_time_without_any_prediction() {
    // Every job checkpoints every ten minutes; least-attained knows nothing of durations, only the GPU time each job
    // has had. Stopping jobs that had much for jobs that had little (after a lease) lets short jobs through, and the
    // aging bound keeps long jobs from being stopped for ever.
    let spec = SynthSpec { jobs: 3_000, nodes: 20, load: 3.0, seed: 4, checkpoint_every_s: 600 };
    let cluster = synth::cluster(&spec);
    let workload = synth::workload(&spec);
    let run = |order: QueueOrder| {
        let cluster = Cluster { queue_order: order, ..cluster.clone() };
        let config = ReplayConfig {
            seed: 1,
            preempt_grace_ms: 30_000,
            check: CheckConfig::default(),
            predictions: Predictions::Learned,
        };
        let run = engine::replay(&cluster, &workload, &config).expect("the checker finds nothing");
        report::replay_report(&run, &cluster, true, None).unwrap()
    };
    let preempting = run(QueueOrder::least_attained());
    let still = run(QueueOrder::least_attained().with_lease(None).unwrap());
    let unbounded = run(QueueOrder::configure("least-attained", Some(0)).unwrap());
    let mean = |r: &RunReport| r.job_completion.avg_s;
    assert_eq!((preempting.completed, still.completed, unbounded.completed), (3_000, 3_000, 3_000));
    assert!(preempting.preemptions > 100, "{}", preempting.preemptions);
    assert_eq!(still.preemptions, 0);
    // Measured: a mean of 1h31m against 4h49m without preemption (0.32x).
    assert!(mean(&preempting) < 0.6 * mean(&still), "{} against {}", mean(&preempting), mean(&still));
    // Without aging, long jobs are stopped and passed for longer: the longest wait was 2.5 days against 1.2.
    let longest = |r: &RunReport| r.queueing_delay.max_s;
    assert!(longest(&preempting) < longest(&unbounded), "{} against {}", longest(&preempting), longest(&unbounded));
}
