//! What agents measured: the checks every telemetry batch passes, and the latest sample of each node and run.
//!
//! Samples are checked whole before any is kept, so a malformed batch harms nothing already stored.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use ferry_api::agent::RunRef;
use ferry_api::jobs::JobUsage;
use ferry_api::telemetry::{
    RunSample, TelemetryAck, TelemetryBatch, TelemetrySample, CLOCK_SKEW_MAX_US, SAMPLE_AGE_MAX_US, SAMPLE_RUNS_MAX,
    TELEMETRY_SAMPLES_MAX,
};

/// The highest GPU utilisation a driver can report.
const UTILIZATION_PERCENT_MAX: u32 = 100;

/// Says whether an agent's clock is close enough to the server's; the error says by how much it is off.
pub fn check_clock(agent_now_us: i64, server_now_us: i64) -> Result<(), String> {
    let off_us = agent_now_us.saturating_sub(server_now_us);
    if off_us.unsigned_abs() <= CLOCK_SKEW_MAX_US.unsigned_abs() {
        return Ok(());
    }
    let direction = if off_us > 0 { "ahead of" } else { "behind" };
    Err(format!(
        "the agent's clock is {} s {direction} the server's (at most {} s is accepted): its measurements would land at \
         the wrong time; synchronise the machine's clock (e.g. with chrony or systemd-timesyncd) and start the agent \
         again",
        off_us.unsigned_abs() / 1_000_000,
        CLOCK_SKEW_MAX_US / 1_000_000
    ))
}

/// Checks a batch whole: its size, its clock, and every sample's values. The error names the first bad value.
pub fn validate(batch: &TelemetryBatch, server_now_us: i64) -> Result<(), String> {
    if batch.samples.len() > TELEMETRY_SAMPLES_MAX {
        return Err(format!(
            "a telemetry batch carries at most {TELEMETRY_SAMPLES_MAX} samples, this one {}; send several batches",
            batch.samples.len()
        ));
    }
    check_clock(batch.sent_at_us, server_now_us)?;
    for (i, sample) in batch.samples.iter().enumerate() {
        validate_sample(sample, batch.sent_at_us).map_err(|e| format!("sample {i} of the batch: {e}"))?;
    }
    Ok(())
}

fn validate_sample(sample: &TelemetrySample, sent_at_us: i64) -> Result<(), String> {
    let at = sample.node.sampled_at_us;
    if at <= 0 {
        return Err(format!("`sampled_at_us` is {at}; it must be the time of the sample in microseconds since 1970"));
    }
    if at > sent_at_us.saturating_add(CLOCK_SKEW_MAX_US) {
        return Err("it was taken after the batch was sent; the agent's clock jumped or the payload is corrupt".into());
    }
    if sample.runs.len() > SAMPLE_RUNS_MAX {
        return Err(format!("it describes {} runs, more than the {SAMPLE_RUNS_MAX} accepted", sample.runs.len()));
    }
    let mut gpus = HashSet::new();
    for gpu in &sample.node.gpus {
        if !gpus.insert(gpu.index) {
            return Err(format!("GPU {} appears twice", gpu.index));
        }
        check_utilization(gpu.utilization_percent, &format!("GPU {}", gpu.index))?;
    }
    let mut runs = HashSet::new();
    for run in &sample.runs {
        if !runs.insert(run.run) {
            return Err(format!("run {} appears twice", describe(run.run)));
        }
        validate_run(run)?;
    }
    Ok(())
}

fn validate_run(run: &RunSample) -> Result<(), String> {
    let mut gpus = HashSet::new();
    for gpu in &run.gpus {
        if !gpus.insert(gpu.index) {
            return Err(format!("run {} lists GPU {} twice", describe(run.run), gpu.index));
        }
        check_utilization(gpu.utilization_percent, &format!("run {}'s GPU {}", describe(run.run), gpu.index))?;
    }
    Ok(())
}

fn check_utilization(value: Option<u32>, what: &str) -> Result<(), String> {
    match value {
        Some(percent) if percent > UTILIZATION_PERCENT_MAX => {
            Err(format!("{what} has a utilisation of {percent}%; utilisation is a percentage from 0 to 100"))
        }
        _ => Ok(()),
    }
}

fn describe(run: RunRef) -> String {
    if run.rank == 0 {
        format!("{}/{}", run.job_id, run.attempt)
    } else {
        format!("{}/{} rank {}", run.job_id, run.attempt, run.rank)
    }
}

/// The newest sample of one run, with the node it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct LatestRun {
    pub node: String,
    pub sampled_at_us: i64,
    pub sample: RunSample,
}

/// The freshest measurements the server holds, for live views (`ferry top`, job pages) and for the rollups of
/// teams, projects, users and pools.
#[derive(Default)]
pub struct Telemetry {
    latest: Mutex<Latest>,
}

#[derive(Default)]
struct Latest {
    runs: BTreeMap<RunRef, LatestRun>,
    /// Samples each node's agent could not keep (its spool was full), as it last said.
    dropped: BTreeMap<String, u64>,
}

impl Telemetry {
    /// Keeps a checked batch: its samples newer than a day are stored, older ones counted.
    pub fn ingest(&self, batch: &TelemetryBatch, server_now_us: i64) -> TelemetryAck {
        let oldest = server_now_us - SAMPLE_AGE_MAX_US;
        let mut ack = TelemetryAck::default();
        let mut latest = self.latest.lock().expect("telemetry lock");
        latest.dropped.insert(batch.node.clone(), batch.dropped);
        for sample in &batch.samples {
            let at = sample.node.sampled_at_us;
            if at < oldest {
                ack.too_old += 1;
                continue;
            }
            ack.accepted += 1;
            for run in &sample.runs {
                let newer = latest.runs.get(&run.run).is_none_or(|l| l.sampled_at_us < at);
                if newer {
                    let entry = LatestRun { node: batch.node.clone(), sampled_at_us: at, sample: run.clone() };
                    latest.runs.insert(run.run, entry);
                }
            }
        }
        ack
    }

    /// The newest sample of each run of a job, by rank.
    pub fn latest_runs(&self, job_id: u64) -> Vec<LatestRun> {
        let latest = self.latest.lock().expect("telemetry lock");
        let from = RunRef { job_id, attempt: 0, rank: 0 };
        let to = RunRef { job_id, attempt: u32::MAX, rank: u32::MAX };
        latest.runs.range(from..=to).map(|(_, l)| l.clone()).collect()
    }

    /// The latest use of a job's current attempt, summed over its workers; `None` before any sample.
    pub fn job_usage(&self, job_id: u64, attempt: u32) -> Option<JobUsage> {
        let runs: Vec<LatestRun> =
            self.latest_runs(job_id).into_iter().filter(|l| l.sample.run.attempt == attempt).collect();
        sum_runs(&runs)
    }

    /// Forgets the runs of jobs that are over, so the map holds only what runs.
    pub fn forget_job(&self, job_id: u64) {
        let mut latest = self.latest.lock().expect("telemetry lock");
        latest.runs.retain(|run, _| run.job_id != job_id);
    }

    /// Samples dropped by each node's agent for want of spool room.
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        self.latest.lock().expect("telemetry lock").dropped.clone()
    }
}

/// Adds up the workers' samples; a figure is present when at least one worker measured it.
pub fn sum_runs(runs: &[LatestRun]) -> Option<JobUsage> {
    let oldest = runs.iter().map(|l| l.sampled_at_us).min()?;
    let total = |values: Vec<u64>| (!values.is_empty()).then(|| values.iter().sum());
    let samples = runs.iter().map(|l| &l.sample);
    let gpus: Vec<_> = samples.clone().flat_map(|s| s.gpus.iter()).collect();
    let utilization: Vec<f64> = gpus.iter().filter_map(|g| g.utilization_percent).map(f64::from).collect();
    Some(JobUsage {
        sampled_at_us: oldest,
        workers: runs.len() as u32,
        cpu_millis_used: total(samples.clone().filter_map(|s| s.cpu_millis_used).collect()),
        memory_used_bytes: total(samples.filter_map(|s| s.memory_used_bytes).collect()),
        gpu_utilization_percent: (!utilization.is_empty())
            .then(|| utilization.iter().sum::<f64>() / utilization.len() as f64),
        gpu_memory_used_bytes: total(gpus.iter().filter_map(|g| g.memory_used_bytes).collect()),
    })
}

#[cfg(test)]
mod tests {
    use ferry_api::nodes::{GpuUsage, NodeUsage};
    use ferry_api::telemetry::RunGpuSample;

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn sample(at: i64) -> TelemetrySample {
        TelemetrySample {
            node: NodeUsage { sampled_at_us: at, cpu_millis_used: 500, memory_used_bytes: 1 << 30, gpus: vec![] },
            runs: vec![RunSample {
                run: RunRef::new(7, 1),
                cpu_millis_used: Some(250),
                memory_used_bytes: Some(1 << 20),
                source: "cgroup-v2".into(),
                gpus: vec![RunGpuSample { index: 0, utilization_percent: Some(40), memory_used_bytes: Some(1 << 30) }],
            }],
        }
    }

    fn batch(samples: Vec<TelemetrySample>) -> TelemetryBatch {
        TelemetryBatch { node: "node-a".into(), sent_at_us: NOW, samples, dropped: 0 }
    }

    #[test]
    fn clocks_within_two_minutes_pass_and_others_are_told_by_how_much() {
        assert!(check_clock(NOW + 119_000_000, NOW).is_ok());
        assert!(check_clock(NOW - 119_000_000, NOW).is_ok());
        let ahead = check_clock(NOW + 3_600_000_000, NOW).unwrap_err();
        assert!(ahead.contains("3600 s ahead of the server's"), "{ahead}");
        let behind = check_clock(NOW - 600_000_000, NOW).unwrap_err();
        assert!(behind.contains("600 s behind"), "{behind}");
    }

    #[test]
    fn malformed_samples_are_named_and_nothing_of_the_batch_is_kept() {
        let mut bad = sample(NOW - 1_000_000);
        bad.node.gpus = vec![
            GpuUsage { index: 0, utilization_percent: Some(20), ..GpuUsage::default() },
            GpuUsage { index: 0, utilization_percent: Some(30), ..GpuUsage::default() },
        ];
        let error = validate(&batch(vec![sample(NOW - 2_000_000), bad]), NOW).unwrap_err();
        assert_eq!(error, "sample 1 of the batch: GPU 0 appears twice");

        let mut over = sample(NOW);
        over.runs[0].gpus[0].utilization_percent = Some(250);
        let error = validate(&batch(vec![over]), NOW).unwrap_err();
        assert!(error.contains("run 7/1's GPU 0 has a utilisation of 250%"), "{error}");

        let error = validate(&batch(vec![sample(0)]), NOW).unwrap_err();
        assert!(error.contains("`sampled_at_us` is 0"), "{error}");
        let error = validate(&batch(vec![sample(NOW + 3_600_000_000)]), NOW).unwrap_err();
        assert!(error.contains("after the batch was sent"), "{error}");
        let error = validate(&batch(vec![sample(NOW); TELEMETRY_SAMPLES_MAX + 1]), NOW).unwrap_err();
        assert!(error.contains("at most 600 samples"), "{error}");
    }

    #[test]
    fn the_newest_sample_of_each_run_is_kept_whatever_the_arrival_order() {
        let telemetry = Telemetry::default();
        let mut newer = sample(NOW - 1_000_000);
        newer.runs[0].cpu_millis_used = Some(900);
        let ack =
            telemetry.ingest(&batch(vec![newer, sample(NOW - 5_000_000), sample(NOW - 2 * SAMPLE_AGE_MAX_US)]), NOW);
        assert_eq!(ack, TelemetryAck { accepted: 2, too_old: 1 });
        let latest = telemetry.latest_runs(7);
        assert_eq!(latest.len(), 1);
        assert_eq!((latest[0].sampled_at_us, latest[0].sample.cpu_millis_used), (NOW - 1_000_000, Some(900)));
        let usage = telemetry.job_usage(7, 1).unwrap();
        assert_eq!((usage.workers, usage.cpu_millis_used, usage.gpu_utilization_percent), (1, Some(900), Some(40.0)));
        assert_eq!(telemetry.job_usage(7, 2), None);
        telemetry.forget_job(7);
        assert!(telemetry.latest_runs(7).is_empty());
    }
}
