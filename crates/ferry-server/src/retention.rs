//! What the server forgets on its own, at start and then hourly: submission idempotency keys after a day, shipped
//! code archives nobody used for `[retention] code` (30 days by default) and no unfinished job needs, the stored
//! output of jobs finished more than `[retention] logs` ago (90 days), and finished jobs themselves after
//! `[retention] jobs` (400 days).
//!
//! Jobs are deleted by the driver (the only writer of jobs), in batches of `JOBS_PER_BATCH`, each its own short
//! command, so the sweep never holds the database's write lock for long. A job's output is always removed before the
//! job: files first, then the record that they were removed, so a crash in between leaves a job whose output is gone
//! and not yet marked, which the next sweep marks. Unfinished jobs are never touched. Usage reports do not read jobs
//! (they sum the time series, kept five years), so forgetting jobs never changes a past report.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::code::CodeStore;
use crate::driver::{now_us, Command, DriverHandle};
use crate::logs::LogStore;

/// How often the sweep runs (and once at start).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How long an idempotency key answers retries with its job: far longer than any client retries for.
pub const SUBMISSION_KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long a code archive nobody submits or asks for is kept, unless configured otherwise.
pub const CODE_RETENTION_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the output of a finished job is kept, unless configured otherwise.
pub const LOG_RETENTION_DEFAULT: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long a finished job is kept, unless configured otherwise: over a year, so that a job of any day of the last
/// full year can still be looked up.
pub const JOB_RETENTION_DEFAULT: Duration = Duration::from_secs(400 * 24 * 3600);
/// The most jobs one step of the sweep handles: one short write of the driver.
const JOBS_PER_BATCH: u32 = 500;
/// The most steps of one kind per sweep, a bound on one sweep's work (a million jobs); the rest waits an hour.
const BATCHES_PER_SWEEP_MAX: usize = 2000;

/// What the sweep needs and how long things are kept.
pub struct Retention {
    pub store: ferry_store::Store,
    pub driver: DriverHandle,
    pub code: Arc<CodeStore>,
    pub logs: Arc<LogStore>,
    pub code_period: Duration,
    /// `None`: kept forever.
    pub log_period: Option<Duration>,
    pub job_period: Option<Duration>,
}

pub async fn run(retention: Retention) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        retention.sweep().await;
    }
}

impl Retention {
    /// One sweep: each part on its own, so one that fails (and logs why) leaves the others to do their work.
    pub async fn sweep(&self) {
        let before = now_us() - SUBMISSION_KEY_RETENTION.as_micros() as i64;
        match self.store.prune_submission_keys(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "forgot submission keys older than a day"),
            Err(e) => tracing::warn!(error = %e, "could not prune submission keys; will retry"),
        }
        self.sweep_code().await;
        match self.sweep_output().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "removed the stored output of jobs finished before the retention"),
            Err(e) => tracing::warn!(error = %e, "could not remove old job output; will retry"),
        }
        match self.sweep_jobs().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "deleted jobs finished before the retention"),
            Err(e) => tracing::warn!(error = %e, "could not delete old jobs; will retry"),
        }
    }

    async fn sweep_code(&self) {
        let keep: HashSet<String> = match self.store.unfinished_code_digests().await {
            Ok(digests) => digests.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which code archives unfinished jobs need; keeping them all");
                return;
            }
        };
        let before = SystemTime::now() - self.code_period;
        let code = self.code.clone();
        match tokio::task::spawn_blocking(move || code.sweep(before, &keep)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(archives = n, "removed code archives nobody used within the retention"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not sweep the code archives; will retry"),
            Err(e) => tracing::warn!(error = %e, "the code sweep failed"),
        }
    }

    /// Removes the output of jobs finished before the output's retention, or the jobs' own when that is shorter (a
    /// job's output always goes before the job); returns for how many jobs.
    async fn sweep_output(&self) -> Result<u64, String> {
        let Some(period) = [self.log_period, self.job_period].into_iter().flatten().min() else { return Ok(0) };
        let before = now_us() - period.as_micros() as i64;
        let mut removed = 0;
        for _ in 0..BATCHES_PER_SWEEP_MAX {
            let ids = self.store.jobs_with_output_before(before, JOBS_PER_BATCH).await.map_err(|e| e.to_string())?;
            for id in &ids {
                self.logs.remove_job(*id).await.map_err(|e| format!("removing the output of job {id}: {e}"))?;
            }
            let n = ids.len();
            let at_us = now_us();
            self.driver.call(|reply| Command::OutputRemoved { ids, at_us, reply }).await.map_err(|e| e.message)?;
            removed += n as u64;
            if n < JOBS_PER_BATCH as usize {
                break;
            }
        }
        Ok(removed)
    }

    /// Deletes the jobs finished before the jobs' retention; returns how many.
    async fn sweep_jobs(&self) -> Result<u64, String> {
        let Some(period) = self.job_period else { return Ok(0) };
        let before_us = now_us() - period.as_micros() as i64;
        let mut deleted = 0;
        for _ in 0..BATCHES_PER_SWEEP_MAX {
            let limit = JOBS_PER_BATCH;
            let ids = self
                .driver
                .call(|reply| Command::ForgetJobs { before_us, limit, reply })
                .await
                .map_err(|e| e.message)?;
            for id in &ids {
                // Removed already by `sweep_output`, unless a crash came in between.
                if let Err(e) = self.logs.remove_job(*id).await {
                    tracing::warn!(job = id, error = %e, "could not remove a deleted job's output");
                }
            }
            deleted += ids.len() as u64;
            if ids.len() < limit as usize {
                break;
            }
        }
        Ok(deleted)
    }
}
