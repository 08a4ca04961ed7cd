//! When a queued job can be expected to start: the same core, forked and run forward in virtual time.
//!
//! Every running job is taken to end at its runtime limit, and every job that starts in the forecast to run to its
//! own limit; a job without a limit, for its predicted runtime (`JobRequest::expected_runtime_s`), and the forecast
//! then says that it rests on a prediction. The queue ahead of the job (priority, fair share, reservations, gangs, quotas) decides in the same
//! order the real cycle would. Jobs of a lower priority are left out: they can start ahead of it only where they do
//! not delay it. Preempted jobs are taken to stop at once and not to come back. A job waiting on work without a
//! runtime limit or prediction has no forecast. Nodes asked of an elastic pool come up `startup_s` after they are asked for; those
//! asked for before the forecast are taken to have been asked for just now, so what waits on them starts by then.

use std::collections::{BTreeMap, BTreeSet};

use crate::scheduler::{Decision, Event, NodeInfo, Scheduler};
use crate::JobId;

/// The most scheduling cycles one forecast runs; past it the forecast gives up and says so.
pub const FORECAST_CYCLES_MAX: usize = 2000;

/// What a forecast found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartForecast {
    /// The job starts at this time if every job ahead of it runs to its runtime limit.
    At(i64),
    /// The job starts at about this time if the jobs ahead of it without a runtime limit run as long as jobs like
    /// them did before (their predictions), and the others to their limits.
    Predicted(i64),
    /// No time can be given, and why.
    Unknown(NoForecast),
}

/// Why a forecast gives no time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoForecast {
    /// A job it waits for (running, or ahead in the queue) has no runtime limit and no prediction.
    Unlimited,
    /// Nothing running will end and no node is coming: no node it may use can ever take it as things stand (an
    /// empty pool, for example).
    NothingFrees,
    /// The forecast ran `FORECAST_CYCLES_MAX` cycles without the job starting.
    TooFar,
}

impl std::fmt::Display for NoForecast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NoForecast::Unlimited => "a job it waits for (running, or ahead in the queue) has no --max-runtime and no history to predict it from",
            NoForecast::NothingFrees => {
                "nothing running will free room for it and no node is on its way: no node it may use can take it now"
            }
            NoForecast::TooFar => "too far ahead to forecast",
        })
    }
}

impl Scheduler {
    /// Runs a fork of the scheduler forward until `job` starts; `None` for a job that is not queued.
    pub fn forecast_start(&self, job: JobId) -> Option<StartForecast> {
        let priority = self.queued_priority(job)?;
        let mut fork = self.clone();
        fork.freeze_lifecycle();
        for below in fork.queued_below(priority) {
            fork.apply(Event::JobEnded { id: below }).expect("ending a job never fails");
        }
        let mut now = fork.now_us();
        // When each running job ends, and whether that time is a prediction.
        let mut ends: BTreeSet<(i64, JobId, bool)> = fork
            .running_expected_ends()
            .into_iter()
            .filter_map(|(id, end)| end.map(|(e, predicted)| (e.max(now), id, predicted)))
            .collect();
        let mut predicted = false;
        let mut starting = Starting::default();
        let requested: Vec<(String, u32)> = fork.provisioning().map(|(pool, n)| (pool.to_string(), n)).collect();
        for (pool, nodes) in requested {
            starting.add(&fork, &pool, nodes, now);
        }
        for _ in 0..FORECAST_CYCLES_MAX {
            for decision in fork.schedule() {
                match decision {
                    Decision::Start { job: started, .. } if started == job => {
                        return Some(if predicted { StartForecast::Predicted(now) } else { StartForecast::At(now) });
                    }
                    Decision::Start { job: started, .. } => {
                        if let Some((end, guess)) = fork.expected_end(started) {
                            ends.insert((end, started, guess));
                        }
                    }
                    Decision::Preempt { job: victim, .. } => {
                        ends.retain(|(_, id, _)| *id != victim);
                        ends.insert((now, victim, false));
                    }
                    Decision::Provision { pool, nodes, .. } => starting.add(&fork, &pool, nodes, now),
                    // A released node takes no more jobs, which is all a forecast needs of it; the lifecycle's
                    // clocks are stopped in a forecast, so nothing goes not ready or is abandoned.
                    Decision::Lost { .. }
                    | Decision::Release { .. }
                    | Decision::NodeNotReady { .. }
                    | Decision::Abandon { .. } => {}
                }
            }
            let next_end = ends.first().map(|(at, _, _)| *at);
            let next_up = starting.nodes.first_key_value().map(|((at, _), _)| *at);
            let Some(next) = next_end.into_iter().chain(next_up).min() else {
                // Nothing will end on its own: either something runs without a limit, or nothing runs for it.
                let unlimited = fork.running_expected_ends().iter().any(|(_, end)| end.is_none());
                let why = if unlimited { NoForecast::Unlimited } else { NoForecast::NothingFrees };
                return Some(StartForecast::Unknown(why));
            };
            now = now.max(next);
            while let Some(&(at, id, guess)) = ends.first() {
                if at > now {
                    break;
                }
                predicted |= guess;
                ends.pop_first();
                fork.apply(Event::JobEnded { id }).expect("ending a job never fails");
            }
            while starting.nodes.first_key_value().is_some_and(|((at, _), _)| *at <= now) {
                let (_, info) = starting.nodes.pop_first().expect("a first node was seen");
                fork.apply(Event::NodeUp(info)).expect("a node made from a template is valid");
            }
            fork.apply(Event::Tick { now_us: now }).expect("a tick never fails");
        }
        Some(StartForecast::Unknown(NoForecast::TooFar))
    }
}

/// Nodes of elastic pools starting in a forecast: when each comes up, and the node.
#[derive(Default)]
struct Starting {
    nodes: BTreeMap<(i64, String), NodeInfo>,
    /// The number in the next node's name, so that names never repeat.
    next: u64,
}

impl Starting {
    /// Adds `nodes` nodes of elastic pool `pool`, asked for at `now`, named so that no known node has the name.
    fn add(&mut self, fork: &Scheduler, pool: &str, nodes: u32, now: i64) {
        let Some(elastic) = fork.elastic_pool(pool) else { return };
        let startup_us = i64::try_from(elastic.startup_s.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let due = now.saturating_add(startup_us);
        for _ in 0..nodes {
            let name = loop {
                self.next += 1;
                let name = format!("{pool}-forecast-{}", self.next);
                if fork.node_usage(&name).is_none() {
                    break name;
                }
            };
            self.nodes.insert((due, name.clone()), elastic.node.node(&name, pool));
        }
    }
}
