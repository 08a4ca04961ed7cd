//! When a queued job can be expected to start: the same core, forked and run forward in virtual time.
//!
//! Every running job is taken to end at its runtime limit, and every job that starts in the forecast to run to its
//! own limit; the queue ahead of the job (priority, fair share, reservations, gangs, quotas) decides in the same
//! order the real cycle would. Jobs of a lower priority are left out: they can start ahead of it only where they do
//! not delay it. Preempted jobs are taken to stop at once and not to come back. A job waiting on work without a
//! runtime limit has no forecast.

use std::collections::BTreeSet;

use crate::scheduler::{Decision, Event, Scheduler};
use crate::JobId;

/// The most scheduling cycles one forecast runs; past it the forecast gives up and says so.
pub const FORECAST_CYCLES_MAX: usize = 2000;

/// What a forecast found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartForecast {
    /// The job starts at this time if every job ahead of it runs to its runtime limit.
    At(i64),
    /// Some job it waits for has no runtime limit, or the forecast ran out of cycles: no time can be given.
    Unknown,
}

impl Scheduler {
    /// Runs a fork of the scheduler forward until `job` starts; `None` for a job that is not queued.
    pub fn forecast_start(&self, job: JobId) -> Option<StartForecast> {
        let priority = self.queued_priority(job)?;
        let mut fork = self.clone();
        for below in fork.queued_below(priority) {
            fork.apply(Event::JobEnded { id: below }).expect("ending a job never fails");
        }
        let mut now = fork.now_us();
        let mut ends: BTreeSet<(i64, JobId)> =
            fork.running_ends().into_iter().filter_map(|(id, end)| end.map(|e| (e.max(now), id))).collect();
        for _ in 0..FORECAST_CYCLES_MAX {
            for decision in fork.schedule() {
                match decision {
                    Decision::Start { job: started, .. } if started == job => return Some(StartForecast::At(now)),
                    Decision::Start { job: started, .. } => {
                        if let Some(end) = fork.ends_by(started) {
                            ends.insert((end, started));
                        }
                    }
                    Decision::Preempt { job: victim, .. } => {
                        ends.retain(|(_, id)| *id != victim);
                        ends.insert((now, victim));
                    }
                    Decision::Lost { .. } => {}
                }
            }
            let Some(&(next, _)) = ends.first() else { return Some(StartForecast::Unknown) };
            now = now.max(next);
            while let Some(&(at, id)) = ends.first() {
                if at > now {
                    break;
                }
                ends.pop_first();
                fork.apply(Event::JobEnded { id }).expect("ending a job never fails");
            }
            fork.apply(Event::Tick { now_us: now }).expect("a tick never fails");
        }
        Some(StartForecast::Unknown)
    }
}
