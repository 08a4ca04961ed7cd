//! `ferry-bench cycle`: the scheduler core alone, in memory: how long one scheduling cycle takes on a large cluster
//! with a deep queue, and how many placements per second that makes. No server, no I/O: the core's own speed.

use std::time::Instant;

use clap::Args;
use ferry_core::{Decision, Event, JobRequest, NodeInfo, Resources, Scheduler};
use serde_json::json;

const GIB: u64 = 1 << 30;
/// How many cycles on the full cluster are timed.
const FULL_CYCLES: usize = 5;

#[derive(Args)]
pub struct CycleArgs {
    /// Nodes in the cluster (8 GPUs, 64 CPUs and 512 GiB each; an eighth of them CPU-only).
    #[arg(long, default_value_t = 10_000)]
    nodes: u32,
    /// Jobs queued before the first cycle.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// How many blocked jobs hold resources back each cycle [default: the core's, 64].
    #[arg(long)]
    reserve_depth: Option<u32>,
    /// Print only the JSON line.
    #[arg(long)]
    json: bool,
}

/// A mix of job shapes like a real queue's: many 1-GPU jobs, some 2-, 4- and 8-GPU jobs, CPU-only work, GPU shares,
/// spread over users and priorities. Deterministic, so runs compare.
fn job(id: u64) -> JobRequest {
    let gpus = [1, 1, 1, 1, 2, 2, 4, 8, 0, 0][(id % 10) as usize];
    let mut request = JobRequest::new(
        id,
        Resources::new(1000 * (1 + id % 8), (4 + id % 60) * GIB, gpus),
        [0, 0, 0, 100][(id % 4) as usize],
    );
    request.user = format!("user{}", id % 50);
    if id % 17 == 0 {
        request.resources.gpus = 0;
        request.gpu_share_milli = 250;
    }
    request
}

pub fn run(args: CycleArgs) -> anyhow::Result<usize> {
    let mut s = Scheduler::new();
    if let Some(depth) = args.reserve_depth {
        s.apply(Event::ReserveDepthConfigured(depth)).map_err(|e| anyhow::anyhow!("--reserve-depth: {e}"))?;
    }
    let setup = Instant::now();
    for i in 0..args.nodes {
        let gpus = if i % 8 == 7 { 0 } else { 8 };
        s.apply(Event::NodeUp(NodeInfo {
            name: format!("node-{i:05}"),
            pool: "owned".into(),
            capacity: Resources::new(64_000, 512 * GIB, gpus),
            gpu_indices: (0..gpus).collect(),
            gpu_model: (gpus > 0).then(|| "A100".to_string()),
            ..NodeInfo::default()
        }))?;
    }
    for id in 1..=args.jobs {
        s.apply(Event::JobSubmitted(job(id)))?;
    }
    s.apply(Event::Tick { now_us: 1_000_000 })?;
    let setup_s = setup.elapsed().as_secs_f64();
    let first = Instant::now();
    let decisions = s.schedule();
    let first_ms = first.elapsed().as_secs_f64() * 1e3;
    let started = decisions.iter().filter(|d| matches!(d, Decision::Start { .. })).count();
    // The queue is topped up to `jobs` again, so that the full cluster's cycles face as many queued jobs as asked;
    // at the lower priority, like the jobs left queued, so that the cycles place and preempt nothing.
    let mut id = args.jobs;
    while (s.queued() as u64) < args.jobs {
        id += 1;
        s.apply(Event::JobSubmitted(JobRequest { priority: 0, ..job(id) }))?;
    }
    let queued_full = s.queued();
    // Cycles on the now full cluster: the cost of a cycle that places nothing. The median of several, so that one
    // slow cycle (another process on the machine) does not decide the figure.
    let mut times = Vec::new();
    let mut again = 0;
    for _ in 0..FULL_CYCLES {
        let cycle = Instant::now();
        again = s.schedule().len();
        times.push(cycle.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let full_ms = times[times.len() / 2];
    s.check_invariants().map_err(anyhow::Error::msg)?;
    let peak_bytes = peak_rss_bytes();
    if !args.json {
        println!("scheduling cycle: {} nodes, {} queued jobs", args.nodes, args.jobs);
        println!("  set-up (events in)        {setup_s:>9.3} s");
        println!(
            "  first cycle               {first_ms:>9.1} ms   ({started} placed, {:.0} placements/s)",
            started as f64 / (first_ms / 1e3)
        );
        println!(
            "  cycle on a full cluster   {full_ms:>9.1} ms   ({queued_full} queued, {again} decisions; median of {FULL_CYCLES})"
        );
        println!("  still queued              {:>9}", s.queued());
        println!("  peak memory (VmHWM)       {:>9.1} MiB", peak_bytes as f64 / (1 << 20) as f64);
    }
    println!(
        "{}",
        json!({"bench": "cycle", "nodes": args.nodes, "jobs": args.jobs, "first_cycle_ms": first_ms, "placed": started,
               "placements_per_s": started as f64 / (first_ms / 1e3), "full_cycle_ms": full_ms,
               "full_cycle_queued": queued_full, "queued": s.queued(),
               "peak_rss_bytes": peak_bytes})
    );
    Ok(0)
}

/// This process's peak resident memory, from /proc (0 where there is none).
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}
