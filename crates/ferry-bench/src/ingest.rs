//! `ingest`: the server taking telemetry from many agents at once. Simulated agents (tasks of this process, each a
//! registered node with 8 GPUs and 8 running jobs' samples) send one batch a second, as real agents do when caught
//! up, in steps of increasing agent count. Each step reports the batches per second the server acknowledged against
//! those sent, the latency of an acknowledgement, and the server's CPU (from /proc/PID/stat) and resident memory.
//! A step is sustained when at least 95% of the due batches were acknowledged within the step and the p99 latency
//! stays under a second; the largest sustained count is reported.
//!
//! The simulated agents run on the same machine as the server, so they take CPU from it: the figure is a lower
//! bound of what a server alone on this machine sustains.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use ferry_api::agent::{RegisterNode, RunRef};
use ferry_api::nodes::{Gpu, GpuUsage, NodeUsage};
use ferry_api::telemetry::{RunGpuSample, RunSample, TelemetryBatch, TelemetrySample};
use ferry_client::Client;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::stats::Samples;
use crate::Common;

const GPUS_PER_NODE: u32 = 8;
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

#[derive(Args)]
pub struct IngestArgs {
    #[command(flatten)]
    common: Common,
    /// The server's process id, to read its CPU time and memory.
    #[arg(long)]
    server_pid: u32,
    /// The agent counts to try, in order; stops after the first step that is not sustained.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,1500,2000,3000")]
    agents: Vec<usize>,
    /// Seconds each step runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

fn node_name(i: usize) -> String {
    format!("sim-{i:05}")
}

/// One second of one simulated node: 8 GPUs at varying use, 8 jobs each on one GPU.
fn batch(node: usize, second: u64) -> TelemetryBatch {
    let at = now_us();
    let busy = |gpu: u32| ((node as u64 * 7 + second * 13 + u64::from(gpu) * 29) % 101) as u32;
    let gpus = (0..GPUS_PER_NODE)
        .map(|index| GpuUsage {
            index,
            utilization_percent: Some(busy(index)),
            memory_used_bytes: Some(20 << 30),
            temperature_c: Some(60),
            power_mw: Some(300_000),
        })
        .collect();
    let runs = (0..GPUS_PER_NODE)
        .map(|index| RunSample {
            run: RunRef::new(1_000_000 + node as u64 * 8 + u64::from(index), 1),
            cpu_millis_used: Some(900),
            memory_used_bytes: Some(4 << 30),
            source: "cgroup-v2".into(),
            gpus: vec![RunGpuSample {
                index,
                utilization_percent: Some(busy(index)),
                memory_used_bytes: Some(20 << 30),
            }],
        })
        .collect();
    TelemetryBatch {
        node: node_name(node),
        sent_at_us: at,
        samples: vec![TelemetrySample {
            node: NodeUsage { sampled_at_us: at, cpu_millis_used: 7200, memory_used_bytes: 32 << 30, gpus },
            runs,
        }],
        dropped: 0,
    }
}

async fn register(client: &Client, node: usize) -> Result<()> {
    let gpus = (0..GPUS_PER_NODE)
        .map(|index| Gpu {
            index,
            model: "Simulated H100".into(),
            memory_bytes: 80 << 30,
            uuid: None,
            source: "config".into(),
        })
        .collect();
    let request = RegisterNode {
        name: node_name(node),
        pool: "sim".into(),
        cpu_millis: 64_000,
        memory_bytes: 512 << 30,
        gpus,
        labels: Default::default(),
        agent_version: "bench".into(),
        limits: "none".into(),
        address: None,
        runs: Vec::new(),
        now_us: now_us(),
    };
    client.register_node(&request).await.with_context(|| format!("registering simulated node {node}"))?;
    Ok(())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the server's /proc stat")?;
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command's closing parenthesis, utime and stime are the 12th and 13th fields.
    Ok((ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND)
}

struct Step {
    agents: usize,
    due: u64,
    acked: u64,
    failed: u64,
    latency: Samples,
    server_cpu_percent: f64,
    rss: u64,
}

impl Step {
    /// The p50 and p99 of acknowledgement latency, in milliseconds (infinite when nothing was acknowledged).
    fn latency_ms(&self) -> (f64, f64) {
        self.latency.summary().map_or((f64::INFINITY, f64::INFINITY), |s| (s.p50, s.p99))
    }

    fn sustained(&self) -> bool {
        self.acked as f64 >= 0.95 * self.due as f64 && self.latency_ms().1 < 1000.0
    }
}

async fn step(client: &Client, args: &IngestArgs, agents: usize) -> Result<Step> {
    let duration = Duration::from_secs(args.seconds);
    let latency = Arc::new(Mutex::new(Samples::default()));
    let cpu_before = cpu_seconds(args.server_pid)?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for node in 0..agents {
        let client = client.clone();
        let latency = latency.clone();
        tasks.spawn(async move {
            // Agents start spread over the first second, as real ones would be.
            let offset = Duration::from_micros((node as u64 * 1_000_000) / agents.max(1) as u64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut acked, mut failed) = (0u64, 0u64);
            for second in 0..duration.as_secs() {
                tick.tick().await;
                let sent = Instant::now();
                match client.send_telemetry(&batch(node, second)).await {
                    Ok(_) => {
                        acked += 1;
                        latency.lock().await.push(sent.elapsed());
                    }
                    Err(_) => failed += 1,
                }
            }
            (acked, failed)
        });
    }
    let (mut acked, mut failed) = (0, 0);
    while let Some(result) = tasks.join_next().await {
        let (a, f) = result.context("a simulated agent panicked")?;
        acked += a;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(args.server_pid)? - cpu_before;
    let (rss, _) = crate::memory_of(args.server_pid)?;
    let latency = std::mem::take(&mut *latency.lock().await);
    Ok(Step {
        agents,
        due: agents as u64 * args.seconds,
        acked,
        failed,
        latency,
        server_cpu_percent: cpu / elapsed * 100.0,
        rss,
    })
}

pub async fn run(args: IngestArgs) -> Result<usize> {
    let client = args.common.client()?;
    let most = args.agents.iter().copied().max().unwrap_or(0);
    let mut registered = 0;
    let mut steps: Vec<Step> = Vec::new();
    for &agents in &args.agents {
        while registered < agents.min(most) {
            register(&client, registered).await?;
            registered += 1;
        }
        let result = step(&client, &args, agents).await?;
        let sustained = result.sustained();
        if !args.common.json {
            println!(
                "{:>6} agents: {:>7}/{:<7} batches acked ({} failed), ack p50 {:>7.1} ms p99 {:>7.1} ms, server CPU \
                 {:>5.1}% of one core, RSS {} MiB{}",
                result.agents,
                result.acked,
                result.due,
                result.failed,
                result.latency_ms().0,
                result.latency_ms().1,
                result.server_cpu_percent,
                result.rss / (1 << 20),
                if sustained { "" } else { "  <- falls behind" }
            );
        }
        steps.push(result);
        if !sustained {
            break;
        }
    }
    let best = steps.iter().filter(|s| s.sustained()).map(|s| s.agents).max().unwrap_or(0);
    let rows: Vec<_> = steps
        .iter()
        .map(|s| {
            json!({
                "agents": s.agents, "due": s.due, "acked": s.acked, "failed": s.failed,
                "p50_ms": s.latency_ms().0, "p99_ms": s.latency_ms().1,
                "server_cpu_percent": s.server_cpu_percent, "server_rss_bytes": s.rss, "sustained": s.sustained(),
            })
        })
        .collect();
    if !args.common.json {
        println!("largest agent count sustained: {best} (8 GPUs and 8 jobs each, one batch a second)");
    }
    println!("{}", json!({ "bench": "ingest", "largest_sustained_agents": best, "steps": rows }));
    Ok(0)
}
