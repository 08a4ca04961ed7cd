//! Reports: the numbers a run produced, as data (serialized to JSON), a human table, or CSV rows. Building a report
//! is pure arithmetic over a run's outcomes; nothing here changes or reruns a simulation.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use ferry_core::predict::Accuracy;

use crate::cluster::Cluster;
use crate::engine::{AttemptEnd, ElasticNode, GpuStep, ReplayRun};
use crate::error::{fmt_ms, SimError};
use crate::fgd::{FgdRun, PUBLISHED};
use ferry_core::lifecycle::Ending;

/// How many samples the GPU allocation series has at most when the interval is chosen automatically: few enough for
/// the table to stay readable; `--sample-every` gives a finer series.
pub const SAMPLES_AUTO_MAX: u64 = 40;
/// How many samples the series may have at most when the interval is given, so that a tiny interval over a long
/// trace fails with a message instead of filling memory.
pub const SAMPLES_MAX: u64 = 1_000_000;
/// The intervals the automatic choice picks from, in seconds: the smallest that keeps the series short wins.
const NICE_INTERVALS_S: [u64; 22] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800,
    2_592_000, 31_536_000,
];

/// What the report says about its inputs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Inputs {
    pub cluster: String,
    pub workload: String,
    pub nodes: u64,
    pub gpus: u64,
    /// The most nodes the elastic pools may start, all together; 0 for a fixed cluster.
    pub elastic_nodes_max: u64,
    /// How GPU jobs chose among nodes: `best-fit` or `fgd`.
    pub gpu_placement: ferry_core::GpuPlacement,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Report {
    Replay { inputs: Inputs, runs: Vec<RunReport> },
    Fgd(FgdReport),
}

/// An average, a 95th percentile (nearest rank) and the largest, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Stat {
    pub avg_s: f64,
    pub p95_s: f64,
    pub max_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// GPUs allocated: whole GPUs plus shares in thousandths over 1000.
    pub gpus: f64,
    /// The GPUs of the nodes there are: the cluster's, and those of elastic nodes up.
    pub capacity: u64,
    /// `gpus` over `capacity`.
    pub share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TeamShare {
    pub team: String,
    pub gpu_hours: f64,
    pub share: f64,
}

/// The report of one replay run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub steps: u64,
    /// How the queue was ordered within a priority (`fair-share`, `fifo`, `shortest-first`, `least-attained`).
    pub queue_order: String,
    pub jobs: u64,
    pub completed: u64,
    /// From arrival to end, over completed jobs.
    pub job_completion: Stat,
    /// From arrival to start, over started jobs.
    pub queueing_delay: Stat,
    /// From the first arrival to the last end.
    pub makespan_s: f64,
    pub gpu_hours: f64,
    /// GPUs allocated, sampled every `gpu_allocation_every_s` from time 0 to the last event.
    pub gpu_allocation_every_s: f64,
    pub gpu_allocation: Vec<Sample>,
    /// GPU-hours per team, largest first.
    pub teams: Vec<TeamShare>,
    /// GPU-hours and CPU-hours times the prices of the pool each job ran in; for an elastic pool, the hours each of
    /// its nodes existed, from the request to the release, times the node's GPUs and CPUs at the pool's prices.
    pub cost: f64,
    /// The part of `cost` spent in burst pools.
    pub burst_cost: f64,
    /// GPU-hours allocated in burst pools (elastic or not).
    pub burst_gpu_hours: f64,
    /// The nodes elastic pools started; absent for a fixed cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elastic: Option<ElasticReport>,
    /// Attempts cut short by preemption.
    pub preemptions: u64,
    /// GPU-hours of work done again: what runs cut short (preempted, failed or lost with their node) ran past their
    /// last checkpoint, when another run followed.
    pub lost_work_gpu_hours: f64,
    /// Failures and what became of them; absent where neither the cluster nor the workload has any failure, retry
    /// or checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures: Option<FailureReport>,
    /// How long jobs waited while an idle node could hold them (held back for a gang, say): see the checker.
    pub idle_wait: IdleWait,
    /// How well the runtimes predicted at arrival matched what the jobs ran.
    pub predictions: PredictionReport,
    /// The same replay under other queue orderings, for comparison (`--compare-orders`); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compared: Vec<OrderFigures>,
}

/// The runtime predictions of a replay: how many jobs had one when they arrived, and how good they were.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PredictionReport {
    pub jobs_predicted: u64,
    pub accuracy: Accuracy,
}

/// One queue ordering's figures on the same workload and cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OrderFigures {
    /// The ordering, as `RunReport::queue_order` names it, and what fed it (`learned` or `clairvoyant`
    /// predictions).
    pub order: String,
    pub job_completion: Stat,
    pub queueing_delay: Stat,
}

impl OrderFigures {
    pub fn of(order: String, r: &RunReport) -> OrderFigures {
        OrderFigures { order, job_completion: r.job_completion, queueing_delay: r.queueing_delay }
    }
}

/// How jobs ended and what failures cost, with the counters the server keeps: jobs finished by state, and the
/// attempts of each job (1 plus its retries and its requeues after preemption).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureReport {
    pub succeeded: u64,
    /// Jobs that failed for good: a failure with no retry left.
    pub failed: u64,
    /// Jobs lost with their node, no retry left.
    pub lost: u64,
    /// Runs that failed as the workload planted.
    pub run_failures: u64,
    /// Times a declared node failed.
    pub node_failures: u64,
    /// Runs lost with their node (a gang's counted once).
    pub runs_lost: u64,
    /// Requeues that used a retry: after a failure, or the loss of a node.
    pub retries: u64,
    /// Runs of all jobs: the jobs that started, plus their retries and requeues after preemption.
    pub attempts: u64,
    /// GPU-hours of work that checkpoints saved from being done again.
    pub recovered_work_gpu_hours: f64,
}

/// The checker's starvation figure: the jobs that waited while a node that could hold them sat idle, and how long,
/// the percentiles over every job of the run (nearest rank), in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct IdleWait {
    pub jobs: u64,
    pub max_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
}

/// What the elastic pools of a replay did, all together.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ElasticReport {
    pub nodes_provisioned: u64,
    pub nodes_released: u64,
    /// Nodes whose provider could not start them (the pool's `start_failure_rate`); absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub nodes_failed_to_start: u64,
    /// Nodes the core gave up on after the pool's `startup_timeout`; absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub nodes_abandoned: u64,
    /// The most nodes asked for and not yet released at any one time.
    pub nodes_peak: u64,
    /// Hours from each node's request to its release (clouds bill start-up time too).
    pub node_hours: f64,
    /// `node_hours` times each node's GPUs and CPUs at its pool's prices.
    pub cost: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Published {
    pub policy: String,
    pub allocation_share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FgdReport {
    pub inputs: Inputs,
    /// The pod list's size, which the sample is drawn from.
    pub tasks_in_workload: u64,
    pub runs: Vec<FgdRun>,
    /// The mean of the runs' allocation shares: Ferry's result.
    pub allocation_share: f64,
    /// The paper's results on the same trace, for comparison.
    pub published: Vec<Published>,
}

impl FgdReport {
    pub fn new(inputs: Inputs, tasks_in_workload: u64, runs: Vec<FgdRun>) -> FgdReport {
        let mean = runs.iter().map(|r| r.allocation_share).sum::<f64>() / runs.len().max(1) as f64;
        let published =
            PUBLISHED.iter().map(|(p, s)| Published { policy: p.to_string(), allocation_share: *s }).collect();
        FgdReport { inputs, tasks_in_workload, runs, allocation_share: mean, published }
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// The nearest-rank percentile of sorted values: the smallest value with at least `p`% of values at or below it.
fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() as u64 * p).div_ceil(100).max(1);
    sorted[rank as usize - 1]
}

fn stat(mut values: Vec<u64>) -> Stat {
    values.sort_unstable();
    let avg_ms = values.iter().sum::<u64>() as f64 / values.len().max(1) as f64;
    let max_s = secs(values.last().copied().unwrap_or(0));
    Stat { avg_s: (avg_ms.round()) / 1000.0, p95_s: secs(percentile(&values, 95)), max_s }
}

/// Rounds to six decimals, so that reports read well and compare exactly.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Counts how the jobs of a replay ended and what failures cost.
fn failure_report(run: &ReplayRun) -> FailureReport {
    let ended = |ending: Ending| run.outcomes.iter().filter(|o| o.ending == Some(ending)).count() as u64;
    let runs = run.outcomes.iter().flat_map(|o| o.attempts.iter().map(move |a| (o, a)));
    let lost_runs = runs.filter(|(_, a)| a.end == AttemptEnd::NodeLost).count() as u64;
    // Checkpoints recover work only for a run that follows.
    let resumed = run.outcomes.iter().flat_map(|o| o.attempts.iter().rev().skip(1).map(move |a| (o, a)));
    let recovered_ms: f64 = resumed.map(|(o, a)| o.gpu_milli as f64 / 1000.0 * a.recovered_ms() as f64).sum();
    FailureReport {
        succeeded: ended(Ending::Succeeded),
        failed: ended(Ending::Failed),
        lost: ended(Ending::Lost),
        run_failures: run.outcomes.iter().map(|o| o.failures()).sum(),
        node_failures: run.node_failures,
        runs_lost: lost_runs,
        retries: run.outcomes.iter().map(|o| u64::from(o.retries)).sum(),
        attempts: run.outcomes.iter().map(|o| o.attempts.len() as u64).sum(),
        recovered_work_gpu_hours: round6(recovered_ms / 3_600_000.0),
    }
}

/// Summarises a replay. `sample_every_ms` fixes the allocation series' interval; `None` picks one. `has_failures`
/// says whether the inputs plant failures or ask for retries or checkpoints, which adds the failure counts.
pub fn replay_report(
    run: &ReplayRun,
    cluster: &Cluster,
    has_failures: bool,
    sample_every_ms: Option<u64>,
) -> Result<RunReport, SimError> {
    let outcomes = &run.outcomes;
    let completion: Vec<u64> = outcomes.iter().filter_map(|o| o.completed_ms().map(|e| e - o.arrival_ms)).collect();
    // Waiting is the time not spent running: before the first start, and between a preemption and the next start.
    let delay: Vec<u64> = outcomes
        .iter()
        .filter(|o| !o.attempts.is_empty())
        .map(|o| {
            let last = o.attempts.last().map_or(o.arrival_ms, |a| a.start_ms);
            let ran: u64 =
                o.attempts[..o.attempts.len() - 1].iter().map(|a| a.end_ms.unwrap_or(a.start_ms) - a.start_ms).sum();
            (last - o.arrival_ms).saturating_sub(ran)
        })
        .collect();
    // Predicted at arrival against what the completing attempt ran.
    let predicted: Vec<(u64, u64)> = outcomes
        .iter()
        .filter_map(|o| {
            let last = o.attempts.last()?;
            Some((o.predicted_s?, (o.completed_ms()? - last.start_ms) / 1000))
        })
        .collect();
    let predictions = PredictionReport {
        jobs_predicted: outcomes.iter().filter(|o| o.predicted_s.is_some()).count() as u64,
        accuracy: Accuracy::of(predicted),
    };
    let first_arrival = outcomes.iter().map(|o| o.arrival_ms).min().unwrap_or(0);
    let last_end = outcomes.iter().filter_map(|o| o.completed_ms()).max().unwrap_or(first_arrival);
    let (mut gpu_hours, mut cost, mut burst_cost, mut burst_gpu_hours, mut lost_gpu_hours) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut preemptions = 0;
    let mut teams: BTreeMap<&str, f64> = BTreeMap::new();
    for o in outcomes {
        for (i, attempt) in o.attempts.iter().enumerate() {
            let hours =
                (attempt.end_ms.unwrap_or(last_end).max(attempt.start_ms) - attempt.start_ms) as f64 / 3_600_000.0;
            let attempt_gpu_hours = o.gpu_milli as f64 / 1000.0 * hours;
            gpu_hours += attempt_gpu_hours;
            *teams.entry(&o.team).or_default() += attempt_gpu_hours;
            if attempt.end == AttemptEnd::Preempted {
                preemptions += 1;
            }
            // Only work that a later run did again is lost; the last run's is the job's end, whatever it was.
            if i + 1 < o.attempts.len() {
                lost_gpu_hours += o.gpu_milli as f64 / 1000.0 * attempt.lost_ms(last_end) as f64 / 3_600_000.0;
            }
            let Some(pool) = cluster.pool(&attempt.pool) else { continue };
            if pool.burst {
                burst_gpu_hours += attempt_gpu_hours;
            }
            // An elastic pool's nodes are paid for by the hour whether jobs use them or not: see below.
            if pool.elastic.is_none() {
                let cpu_hours = o.cpu_millis as f64 / 1000.0 * hours;
                let attempt_cost = attempt_gpu_hours * pool.price_gpu_hour + cpu_hours * pool.price_cpu_hour;
                cost += attempt_cost;
                if pool.burst {
                    burst_cost += attempt_cost;
                }
            }
        }
    }
    let failures = has_failures.then(|| failure_report(run));
    let elastic = (cluster.elastic_nodes_max() > 0).then(|| elastic_report(&run.elastic_nodes, cluster, run.end_ms));
    if let Some(elastic) = &elastic {
        cost += elastic.cost;
        burst_cost += elastic.cost;
    }
    let mut teams: Vec<TeamShare> = teams
        .into_iter()
        .map(|(team, h)| TeamShare {
            team: team.to_string(),
            gpu_hours: round6(h),
            share: if gpu_hours > 0.0 { round6(h / gpu_hours) } else { 0.0 },
        })
        .collect();
    teams.sort_by(|a, b| b.gpu_hours.total_cmp(&a.gpu_hours).then_with(|| a.team.cmp(&b.team)));
    let end_ms = run.gpu_steps.last().map_or(0, |step| step.t_ms).max(last_end);
    let every_ms = match sample_every_ms {
        Some(every) => {
            let every = every.max(1);
            if end_ms.div_ceil(every) + 1 > SAMPLES_MAX {
                return Err(SimError::Usage(format!(
                    "--sample-every {}s gives more than {SAMPLES_MAX} samples over {}s; choose a longer interval",
                    fmt_ms(every),
                    fmt_ms(end_ms)
                )));
            }
            every
        }
        None => auto_interval_ms(end_ms),
    };
    Ok(RunReport {
        seed: run.seed,
        steps: run.steps,
        queue_order: cluster.queue_order.name().to_string(),
        jobs: outcomes.len() as u64,
        completed: completion.len() as u64,
        job_completion: stat(completion),
        queueing_delay: stat(delay),
        makespan_s: secs(last_end - first_arrival),
        gpu_hours: round6(gpu_hours),
        gpu_allocation_every_s: secs(every_ms),
        gpu_allocation: samples(&run.gpu_steps, end_ms, every_ms, cluster.gpus()),
        teams,
        cost: round6(cost),
        burst_cost: round6(burst_cost),
        burst_gpu_hours: round6(burst_gpu_hours),
        elastic,
        preemptions,
        lost_work_gpu_hours: round6(lost_gpu_hours),
        failures,
        idle_wait: IdleWait {
            jobs: run.idle_waits.jobs,
            max_s: secs(run.idle_waits.max_ms),
            p95_s: secs(run.idle_waits.p95_ms),
            p99_s: secs(run.idle_waits.p99_ms),
        },
        predictions,
        compared: Vec::new(),
    })
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts the nodes elastic pools started and what they cost: each from its request to its release (or to the end of
/// the run, for one never released); one that failed to start costs nothing, one given up on costs until then.
fn elastic_report(nodes: &[ElasticNode], cluster: &Cluster, end_ms: u64) -> ElasticReport {
    let (mut node_hours, mut cost) = (0.0, 0.0);
    // +1 when a node is asked for, -1 when it is released; releases first at the same time.
    let mut changes: Vec<(u64, i64)> = Vec::with_capacity(nodes.len() * 2);
    for node in nodes {
        let gone_ms = node.released_ms.or(node.abandoned_ms).or(node.failed_ms.map(|_| node.requested_ms));
        let until_ms = gone_ms.unwrap_or(end_ms).max(node.requested_ms);
        let hours = (until_ms - node.requested_ms) as f64 / 3_600_000.0;
        node_hours += hours;
        if let Some((pool, elastic)) = cluster.pool(&node.pool).and_then(|p| Some((p, p.elastic.as_ref()?))) {
            cost += hours * pool.node_price_hour(&elastic.node.capacity);
        }
        // A node that failed to start never was.
        if node.failed_ms.is_some() {
            continue;
        }
        changes.push((node.requested_ms, 1));
        if let Some(gone_ms) = gone_ms {
            changes.push((gone_ms.max(node.requested_ms), -1));
        }
    }
    changes.sort_unstable();
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, change) in changes {
        now += change;
        peak = peak.max(now);
    }
    ElasticReport {
        nodes_provisioned: nodes.len() as u64,
        nodes_released: nodes.iter().filter(|n| n.released_ms.is_some()).count() as u64,
        nodes_failed_to_start: nodes.iter().filter(|n| n.failed_ms.is_some()).count() as u64,
        nodes_abandoned: nodes.iter().filter(|n| n.abandoned_ms.is_some()).count() as u64,
        nodes_peak: peak as u64,
        node_hours: round6(node_hours),
        cost: round6(cost),
    }
}

/// The smallest interval from the nice list that keeps the series within `SAMPLES_AUTO_MAX` samples.
fn auto_interval_ms(end_ms: u64) -> u64 {
    NICE_INTERVALS_S
        .iter()
        .map(|s| s * 1000)
        .find(|every| end_ms.div_ceil(*every) < SAMPLES_AUTO_MAX)
        .unwrap_or_else(|| end_ms.div_ceil(SAMPLES_AUTO_MAX - 1).max(1))
}

/// Samples a step function at 0, every, 2·every, ... up to the first sample at or after `end_ms`: each sample is the
/// value after every step at or before its time; before the first step, nothing is allocated of the cluster's `gpus`.
fn samples(steps: &[GpuStep], end_ms: u64, every_ms: u64, gpus: u64) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut next = 0;
    let mut value = GpuStep { t_ms: 0, allocated_milli: 0, gpus };
    for k in 0..=end_ms.div_ceil(every_ms) {
        let t = k * every_ms;
        while let Some(step) = steps.get(next) {
            if step.t_ms > t {
                break;
            }
            value = *step;
            next += 1;
        }
        let g = value.allocated_milli as f64 / 1000.0;
        let share = if value.gpus > 0 { round6(g / value.gpus as f64) } else { 0.0 };
        out.push(Sample { t_s: secs(t), gpus: g, capacity: value.gpus, share });
    }
    out
}

/// A duration the way people read it: `45s`, `2m30s`, `3h`, `2d4h`; below a minute, with milliseconds.
pub fn human(ms: u64) -> String {
    if ms < 60_000 {
        return format!("{}s", fmt_ms(ms));
    }
    let s = (ms + 500) / 1000;
    let parts = [(s / 86400, "d"), (s / 3600 % 24, "h"), (s / 60 % 60, "m"), (s % 60, "s")];
    parts.iter().filter(|(v, _)| *v > 0).map(|(v, u)| format!("{v}{u}")).collect()
}

fn human_s(s: f64) -> String {
    human((s * 1000.0).round() as u64)
}

/// The placement's name as the cluster file and the flag write it: `best-fit`, `fgd`.
fn placement_name(placement: ferry_core::GpuPlacement) -> String {
    serde_json::to_string(&placement).unwrap_or_default().trim_matches('"').to_string()
}

fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// The human table.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    match report {
        Report::Replay { inputs, runs } => {
            for run in runs {
                replay_table(&mut out, inputs, run);
            }
        }
        Report::Fgd(fgd) => fgd_table(&mut out, fgd),
    }
    out
}

fn replay_table(out: &mut String, inputs: &Inputs, r: &RunReport) {
    let w = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "{k:<22}{v}");
    };
    let elastic = match inputs.elastic_nodes_max {
        0 => String::new(),
        n => format!(", up to {n} elastic nodes"),
    };
    let _ = writeln!(
        out,
        "replay of {} on {} ({}, {} GPUs{elastic}), {} placement, {} queue, seed {}",
        inputs.workload,
        inputs.cluster,
        counted(inputs.nodes, "node"),
        inputs.gpus,
        placement_name(inputs.gpu_placement),
        r.queue_order,
        r.seed
    );
    w(out, "jobs", format!("{} ({} completed, {} steps)", r.jobs, r.completed, r.steps));
    let stat = |s: &Stat| format!("avg {}, p95 {}, max {}", human_s(s.avg_s), human_s(s.p95_s), human_s(s.max_s));
    w(out, "job completion time", stat(&r.job_completion));
    w(out, "queueing delay", stat(&r.queueing_delay));
    let p = &r.predictions;
    let predicted = if p.accuracy.jobs == 0 {
        format!("{} of {} jobs had one at arrival", p.jobs_predicted, r.jobs)
    } else {
        format!(
            "{} of {} jobs had one at arrival; median error {:.0}%, {} within 25%, {} within 2x, {} ran longer",
            p.jobs_predicted,
            r.jobs,
            p.accuracy.median_error_pct,
            percent(p.accuracy.within_25_pct),
            percent(p.accuracy.within_2x),
            percent(p.accuracy.ran_longer)
        )
    };
    w(out, "runtime predictions", predicted);
    w(out, "makespan", human_s(r.makespan_s));
    w(out, "GPU-hours", format!("{:.3}", r.gpu_hours));
    w(out, "cost", format!("{:.2} (burst {:.2})", r.cost, r.burst_cost));
    w(out, "burst GPU-hours", format!("{:.3}", r.burst_gpu_hours));
    if let Some(e) = &r.elastic {
        let mut line = format!("{} provisioned, {} released", e.nodes_provisioned, e.nodes_released);
        if e.nodes_failed_to_start > 0 || e.nodes_abandoned > 0 {
            line += &format!(", {} failed to start, {} abandoned", e.nodes_failed_to_start, e.nodes_abandoned);
        }
        line += &format!(", peak {}; {:.3} node-hours, cost {:.2}", e.nodes_peak, e.node_hours, e.cost);
        w(out, "elastic nodes", line);
    }
    w(out, "preemptions", format!("{} (lost work {:.3} GPU-hours)", r.preemptions, r.lost_work_gpu_hours));
    if let Some(f) = &r.failures {
        let ended = format!("{} succeeded, {} failed, {} lost", f.succeeded, f.failed, f.lost);
        w(out, "jobs ended", ended);
        let failures = format!(
            "{}, {}, {} lost with them",
            counted(f.run_failures, "failed run"),
            counted(f.node_failures, "node failure"),
            counted(f.runs_lost, "run")
        );
        w(out, "failures", failures);
        w(out, "retries", format!("{} ({} in all)", f.retries, counted(f.attempts, "run")));
        w(out, "checkpoints", format!("recovered {:.3} GPU-hours", f.recovered_work_gpu_hours));
    }
    let i = &r.idle_wait;
    let idle = format!("{} jobs; max {}, p95 {}, p99 {}", i.jobs, human_s(i.max_s), human_s(i.p95_s), human_s(i.p99_s));
    w(out, "idle-node wait", idle);
    if !r.compared.is_empty() {
        let _ = writeln!(out, "\nThe same replay under other queue orders");
        let _ = writeln!(
            out,
            "  {:<40}{:>12}{:>12}{:>12}{:>12}",
            "queue order", "mean JCT", "p95 JCT", "max wait", "vs SJF"
        );
        let sjf = r.compared.iter().find(|o| o.order.contains("clairvoyant")).map(|o| o.job_completion.avg_s);
        let mine = OrderFigures::of(format!("{} (this replay)", r.queue_order), r);
        for o in std::iter::once(&mine).chain(&r.compared) {
            let ratio = match sjf {
                Some(s) if s > 0.0 => format!("{:.2}x", o.job_completion.avg_s / s),
                _ => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<40}{:>12}{:>12}{:>12}{:>12}",
                o.order,
                human_s(o.job_completion.avg_s),
                human_s(o.job_completion.p95_s),
                human_s(o.queueing_delay.max_s),
                ratio
            );
        }
    }
    let _ = writeln!(out, "\nGPU-hours by team");
    let _ = writeln!(out, "  {:<16}{:>12}{:>8}", "team", "GPU-hours", "share");
    for t in &r.teams {
        let _ = writeln!(out, "  {:<16}{:>12.3}{:>8}", t.team, t.gpu_hours, percent(t.share));
    }
    let _ = writeln!(out, "\nGPUs allocated over time (every {})", human_s(r.gpu_allocation_every_s));
    if r.elastic.is_some() {
        // Elastic nodes come and go, so the GPUs there are change too.
        let _ = writeln!(out, "  {:<16}{:>12}{:>8}{:>8}", "time", "GPUs", "of", "share");
        for s in &r.gpu_allocation {
            let _ = writeln!(out, "  {:<16}{:>12.3}{:>8}{:>8}", human_s(s.t_s), s.gpus, s.capacity, percent(s.share));
        }
    } else {
        let _ = writeln!(out, "  {:<16}{:>12}{:>8}", "time", "GPUs", "share");
        for s in &r.gpu_allocation {
            let _ = writeln!(out, "  {:<16}{:>12.3}{:>8}", human_s(s.t_s), s.gpus, percent(s.share));
        }
    }
    out.push('\n');
}

/// `1 node`, `3 nodes`.
fn counted(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

fn fgd_table(out: &mut String, r: &FgdReport) {
    let i = &r.inputs;
    let _ = writeln!(
        out,
        "FGD experiment: tasks from {} ({} in the list) on {} ({}, {} GPUs), {} seed{}",
        i.workload,
        r.tasks_in_workload,
        i.cluster,
        counted(i.nodes, "node"),
        i.gpus,
        r.runs.len(),
        if r.runs.len() == 1 { "" } else { "s" }
    );
    let _ = writeln!(out, "tasks arrive and never depart until the GPUs they ask for reach 100% of capacity\n");
    let _ = writeln!(
        out,
        "  {:<8}{:>10}{:>10}{:>10}{:>14}{:>14}{:>10}",
        "seed", "arrived", "placed", "failed", "GPUs asked", "GPUs alloc", "share"
    );
    for run in &r.runs {
        let _ = writeln!(
            out,
            "  {:<8}{:>10}{:>10}{:>10}{:>14.3}{:>14.3}{:>10}",
            run.seed,
            run.tasks_arrived,
            run.tasks_placed,
            run.tasks_failed,
            run.gpu_milli_requested as f64 / 1000.0,
            run.gpu_milli_allocated as f64 / 1000.0,
            percent(run.allocation_share)
        );
    }
    let _ = writeln!(out, "\nshare of GPUs allocated");
    let ferry = format!("Ferry ({})", placement_name(i.gpu_placement));
    let _ = writeln!(out, "  {:<24}{:>8}", ferry, format!("{:.2}%", r.allocation_share * 100.0));
    for p in &r.published {
        let _ = writeln!(out, "  {:<24}{:>8}", format!("{} (published)", p.policy), percent(p.allocation_share));
    }
}

/// CSV rows `seed,metric,label,value`: one per number, the label naming a team, a sample's time in seconds or a
/// published policy, and `seed` empty for numbers about all seeds.
pub fn csv(report: &Report) -> String {
    let mut out = String::from("seed,metric,label,value\n");
    let mut row = |seed: Option<u64>, metric: &str, label: &str, value: String| {
        let seed = seed.map(|s| s.to_string()).unwrap_or_default();
        let _ = writeln!(out, "{seed},{metric},{},{value}", csv_field(label));
    };
    match report {
        Report::Replay { runs, .. } => {
            for r in runs {
                let s = Some(r.seed);
                row(s, "jobs", "", r.jobs.to_string());
                row(s, "completed", "", r.completed.to_string());
                row(s, "steps", "", r.steps.to_string());
                row(s, "job_completion_avg_s", "", r.job_completion.avg_s.to_string());
                row(s, "job_completion_p95_s", "", r.job_completion.p95_s.to_string());
                row(s, "queueing_delay_avg_s", "", r.queueing_delay.avg_s.to_string());
                row(s, "queueing_delay_p95_s", "", r.queueing_delay.p95_s.to_string());
                row(s, "queueing_delay_max_s", "", r.queueing_delay.max_s.to_string());
                row(s, "predictions_jobs", "", r.predictions.jobs_predicted.to_string());
                row(s, "predictions_median_error_pct", "", r.predictions.accuracy.median_error_pct.to_string());
                for o in &r.compared {
                    row(s, "compared_job_completion_avg_s", &o.order, o.job_completion.avg_s.to_string());
                    row(s, "compared_job_completion_p95_s", &o.order, o.job_completion.p95_s.to_string());
                    row(s, "compared_queueing_delay_max_s", &o.order, o.queueing_delay.max_s.to_string());
                }
                row(s, "makespan_s", "", r.makespan_s.to_string());
                row(s, "gpu_hours", "", r.gpu_hours.to_string());
                row(s, "cost", "", r.cost.to_string());
                row(s, "burst_cost", "", r.burst_cost.to_string());
                row(s, "burst_gpu_hours", "", r.burst_gpu_hours.to_string());
                if let Some(e) = &r.elastic {
                    row(s, "elastic_nodes_provisioned", "", e.nodes_provisioned.to_string());
                    row(s, "elastic_nodes_released", "", e.nodes_released.to_string());
                    if e.nodes_failed_to_start > 0 || e.nodes_abandoned > 0 {
                        row(s, "elastic_nodes_failed_to_start", "", e.nodes_failed_to_start.to_string());
                        row(s, "elastic_nodes_abandoned", "", e.nodes_abandoned.to_string());
                    }
                    row(s, "elastic_nodes_peak", "", e.nodes_peak.to_string());
                    row(s, "elastic_node_hours", "", e.node_hours.to_string());
                    row(s, "elastic_cost", "", e.cost.to_string());
                }
                row(s, "preemptions", "", r.preemptions.to_string());
                row(s, "lost_work_gpu_hours", "", r.lost_work_gpu_hours.to_string());
                if let Some(f) = &r.failures {
                    row(s, "succeeded", "", f.succeeded.to_string());
                    row(s, "failed", "", f.failed.to_string());
                    row(s, "lost", "", f.lost.to_string());
                    row(s, "run_failures", "", f.run_failures.to_string());
                    row(s, "node_failures", "", f.node_failures.to_string());
                    row(s, "runs_lost", "", f.runs_lost.to_string());
                    row(s, "retries", "", f.retries.to_string());
                    row(s, "attempts", "", f.attempts.to_string());
                    row(s, "recovered_work_gpu_hours", "", f.recovered_work_gpu_hours.to_string());
                }
                row(s, "idle_wait_jobs", "", r.idle_wait.jobs.to_string());
                row(s, "idle_wait_max_s", "", r.idle_wait.max_s.to_string());
                row(s, "idle_wait_p95_s", "", r.idle_wait.p95_s.to_string());
                row(s, "idle_wait_p99_s", "", r.idle_wait.p99_s.to_string());
                for t in &r.teams {
                    row(s, "team_gpu_hours", &t.team, t.gpu_hours.to_string());
                    row(s, "team_share", &t.team, t.share.to_string());
                }
                for sample in &r.gpu_allocation {
                    row(s, "gpus_allocated", &sample.t_s.to_string(), sample.gpus.to_string());
                    if r.elastic.is_some() {
                        row(s, "gpus_present", &sample.t_s.to_string(), sample.capacity.to_string());
                    }
                }
            }
        }
        Report::Fgd(r) => {
            for run in &r.runs {
                let s = Some(run.seed);
                row(s, "tasks_arrived", "", run.tasks_arrived.to_string());
                row(s, "tasks_failed", "", run.tasks_failed.to_string());
                row(s, "gpus_requested", "", (run.gpu_milli_requested as f64 / 1000.0).to_string());
                row(s, "gpus_allocated", "", (run.gpu_milli_allocated as f64 / 1000.0).to_string());
                row(s, "allocation_share", "", run.allocation_share.to_string());
            }
            row(None, "allocation_share", "ferry", r.allocation_share.to_string());
            for p in &r.published {
                row(None, "allocation_share_published", &p.policy, p.allocation_share.to_string());
            }
        }
    }
    out
}

/// Quotes a field that holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
