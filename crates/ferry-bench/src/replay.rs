//! `ferry-bench replay`: the simulator's replay, the outside checker on after every step, timed on the synthetic
//! trace-shaped workload (`ferry_sim::synth`) or on the Alibaba trace's files. It measures the core's cycles on a
//! queue that grows to thousands at the daily peaks, and what the checker costs on top.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use ferry_sim::engine::{self, AttemptEnd, CheckConfig, ReplayConfig, ReplayRun};
use ferry_sim::synth::{self, SynthSpec};
use ferry_sim::{Cluster, Workload};
use serde_json::json;

#[derive(Args)]
pub struct ReplayArgs {
    /// The synthetic workload's spec (`jobs=70000,nodes=350,load=4,seed=1`, any subset); the default when no trace
    /// is given.
    #[arg(long, default_value = "")]
    synthetic: String,
    /// Replay the Alibaba trace instead: its node list ...
    #[arg(long, requires = "trace_pods")]
    trace_nodes: Option<PathBuf>,
    /// ... and its pod list.
    #[arg(long, requires = "trace_nodes")]
    trace_pods: Option<PathBuf>,
    /// The seed of the replay (same-time arrivals are ordered by it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The checker's starvation bound, in seconds.
    #[arg(long, default_value_t = 3600)]
    starvation_bound_s: u64,
    /// How many blocked jobs hold resources back each cycle [default: the core's, 64].
    #[arg(long)]
    reserve_depth: Option<u32>,
    /// Every how many steps the core's own invariant check runs (0 never); the outside checks run every step.
    #[arg(long, default_value_t = 0)]
    core_check_every: u64,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<usize> {
    let (mut cluster, workload, name) = inputs(&args)?;
    cluster.reserve_depth = args.reserve_depth.or(cluster.reserve_depth);
    let check = CheckConfig {
        starvation_bound_ms: args.starvation_bound_s.saturating_mul(1000),
        core_check_every: args.core_check_every,
        fault: None,
    };
    let config = ReplayConfig { seed: args.seed, preempt_grace_ms: 30_000, check, predictions: Default::default() };
    let started = Instant::now();
    let run = engine::replay(&cluster, &workload, &config).map_err(|v| anyhow::anyhow!("{v}"))?;
    let wall_s = started.elapsed().as_secs_f64();
    let peak = peak_waiting(&run);
    let fingerprint = fingerprint(&run);
    let (all, big) = (waits(&run, 0), waits(&run, BIG_GPU_MILLI));
    if !args.json {
        println!("replay with the checker on: {name}, {} nodes, {} jobs", cluster.nodes.len(), workload.jobs.len());
        println!("  wall time                 {wall_s:>9.2} s");
        println!("  steps                     {:>9}", run.steps);
        println!("  most jobs waiting at once {:>9}", peak);
        println!("  virtual span              {:>9.1} h", run.end_ms as f64 / 3.6e6);
        let i = &run.idle_waits;
        println!(
            "  waited by an idle node    {:>9} jobs (max {:.0} s, p99 {:.0} s)",
            i.jobs,
            i.max_ms as f64 / 1e3,
            i.p99_ms as f64 / 1e3
        );
        for (label, w) in [("every job", &all), ("jobs of 8+ GPUs", &big)] {
            println!(
                "  wait to start, {label:<15} mean {:.0} s, p95 {:.0} s, max {:.0} s ({} jobs)",
                w.mean_s, w.p95_s, w.max_s, w.jobs
            );
        }
        println!("  decisions fingerprint     {fingerprint:016x}");
    }
    println!(
        "{}",
        json!({"bench": "replay", "inputs": name, "nodes": cluster.nodes.len(), "jobs": workload.jobs.len(),
               "seed": args.seed, "wall_s": wall_s, "steps": run.steps, "peak_waiting": peak,
               "span_h": run.end_ms as f64 / 3.6e6, "fingerprint": format!("{fingerprint:016x}"),
               "idle_wait_jobs": run.idle_waits.jobs, "idle_wait_max_s": run.idle_waits.max_ms as f64 / 1e3,
               "idle_wait_p99_s": run.idle_waits.p99_ms as f64 / 1e3,
               "wait_mean_s": all.mean_s, "wait_p95_s": all.p95_s, "wait_max_s": all.max_s,
               "big_wait_mean_s": big.mean_s, "big_wait_p95_s": big.p95_s, "big_wait_max_s": big.max_s})
    );
    Ok(0)
}

fn inputs(args: &ReplayArgs) -> anyhow::Result<(Cluster, Workload, String)> {
    if let (Some(nodes), Some(pods)) = (&args.trace_nodes, &args.trace_pods) {
        let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        let (nodes_name, pods_name) = (nodes.display().to_string(), pods.display().to_string());
        let cluster = ferry_sim::parse_trace_nodes(&nodes_name, &read(nodes)?)?;
        let workload = ferry_sim::parse_trace_pods(&pods_name, &read(pods)?)?;
        return Ok((cluster, workload, pods_name));
    }
    let spec = match SynthSpec::parse(&args.synthetic) {
        Ok(spec) => spec,
        Err(e) => bail!("--synthetic {:?}: {e}", args.synthetic),
    };
    Ok((synth::cluster(&spec), synth::workload(&spec), format!("synthetic({})", spec.describe())))
}

/// The most jobs waiting at once: each waits from its arrival to its first start (and between a preemption and the
/// next start, or between any run cut short and the next).
fn peak_waiting(run: &ReplayRun) -> usize {
    let mut changes: Vec<(u64, i64)> = Vec::new();
    for outcome in &run.outcomes {
        let mut waiting_since = Some(outcome.arrival_ms);
        for attempt in &outcome.attempts {
            if let Some(since) = waiting_since.take() {
                changes.push((since, 1));
                changes.push((attempt.start_ms, -1));
            }
            // A run cut short (preempted, failed, lost with its node) leaves the job waiting again.
            if attempt.end != AttemptEnd::Completed {
                waiting_since = attempt.end_ms;
            }
        }
    }
    // At one time, starts count before arrivals: a job that arrives and starts in one step never waited.
    changes.sort_unstable();
    let (mut now, mut most) = (0i64, 0i64);
    for (_, change) in changes {
        now += change;
        most = most.max(now);
    }
    most as usize
}

/// Jobs of at least this many GPUs (in thousandths, every worker counted) are the ones reservations protect: whole
/// nodes and gangs, which wait for a node to empty while smaller jobs could fill it first.
const BIG_GPU_MILLI: u64 = 8000;

/// How long jobs (of at least `min_gpu_milli`) waited from arrival to their first start.
struct Waits {
    jobs: usize,
    mean_s: f64,
    p95_s: f64,
    max_s: f64,
}

fn waits(run: &ReplayRun, min_gpu_milli: u64) -> Waits {
    let mut waited: Vec<u64> = run
        .outcomes
        .iter()
        .filter(|o| o.gpu_milli >= min_gpu_milli)
        .filter_map(|o| o.attempts.first().map(|a| a.start_ms.saturating_sub(o.arrival_ms)))
        .collect();
    waited.sort_unstable();
    let at = |q: f64| waited.get(((waited.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0);
    let mean = if waited.is_empty() { 0.0 } else { waited.iter().sum::<u64>() as f64 / waited.len() as f64 };
    Waits { jobs: waited.len(), mean_s: mean / 1e3, p95_s: at(0.95) as f64 / 1e3, max_s: at(1.0) as f64 / 1e3 }
}

/// A hash of every attempt's start, end and pool: two runs that decided alike have the same fingerprint.
fn fingerprint(run: &ReplayRun) -> u64 {
    // FNV-1a: fixed, simple, and the same on every platform.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for outcome in &run.outcomes {
        eat(&outcome.job.to_le_bytes());
        for a in &outcome.attempts {
            eat(&a.start_ms.to_le_bytes());
            eat(&a.end_ms.unwrap_or(u64::MAX).to_le_bytes());
            eat(a.pool.as_bytes());
        }
    }
    h
}
