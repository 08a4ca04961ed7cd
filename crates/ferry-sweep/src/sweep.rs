//! The sweep state machine: which trials to create, which to stop, which is best.
//!
//! Determinism: trial `i`'s parameters are drawn from the ChaCha8 stream keyed by (seed, `i`) and, for TPE and GP,
//! from a model of the trials that had *ended* when `i` was proposed. The early-stopping state is a function of each
//! trial's values alone (see `stopping.rs`). So the same spec, the same reports and the same calls give the same
//! proposals and decisions, and [`Sweep::restore`] from [`Sweep::trials`] continues exactly as if never stopped.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::space;
use crate::spec::{Method, SweepSpec};
use crate::stopping::{Label, Stopper};
use crate::{gp, tpe, ParamValue, Proposal, StopDecision, TrialIndex, TrialOutcome, TrialRecord};

/// Reports kept per trial; later ones are ignored, so that memory stays bounded (10,000 trials x 100,000 values is
/// already 16 GB) and a restore replays exactly what was recorded.
const VALUES_PER_TRIAL_MAX: usize = 100_000;
/// Draws of a new trial that may repeat an existing trial's parameters before the repeat is accepted (a small
/// discrete space can run out of new points).
const DUPLICATE_REDRAWS_MAX: usize = 16;

/// A canonical text of a trial's parameters, to spot repeats: names come sorted, and `Debug` of a value names its
/// kind and prints floats exactly.
fn key(params: &BTreeMap<String, ParamValue>) -> String {
    params.iter().map(|(name, value)| format!("{name}={value:?}\u{0}")).collect()
}

/// A finished trial as the models see it.
pub(crate) struct Observation<'a> {
    pub(crate) index: TrialIndex,
    pub(crate) params: &'a BTreeMap<String, ParamValue>,
    /// The trial's last value turned so that smaller is better.
    pub(crate) loss: f64,
    /// Completed, as opposed to stopped early.
    pub(crate) complete: bool,
    /// The step of that last value.
    pub(crate) step: i64,
}

/// A running sweep. See the crate documentation for how the server drives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    spec: SweepSpec,
    /// Sorted by index; dense when created by this crate.
    trials: Vec<TrialRecord>,
    stopper: Option<Stopper>,
    /// Trials told to stop that have not ended, so that their later reports do not repeat the decision. Not rebuilt
    /// by `restore`: after a restart the first report of such a trial asks for its stop again, which is what a
    /// server that may have crashed before applying the stop wants.
    stop_asked: BTreeSet<TrialIndex>,
}

impl Sweep {
    pub fn new(spec: SweepSpec) -> Sweep {
        let stopper = spec.early_stopping.as_ref().map(Stopper::new);
        Sweep { spec, trials: Vec::new(), stopper, stop_asked: BTreeSet::new() }
    }

    /// Rebuilds a sweep from its persisted trials (what [`Sweep::trials`] returned). Records may come in any order;
    /// non-finite values are dropped. Indices are expected dense from 0; with gaps, the next trial gets the index
    /// after the greatest.
    pub fn restore(spec: SweepSpec, mut trials: Vec<TrialRecord>) -> Sweep {
        let mut sweep = Sweep::new(spec);
        trials.sort_by_key(|t| t.index);
        trials.dedup_by_key(|t| t.index);
        for mut trial in trials {
            trial.values.retain(|(_, v)| v.is_finite());
            trial.values.truncate(VALUES_PER_TRIAL_MAX);
            if let Some(stopper) = &mut sweep.stopper {
                let label = Label { metric: &sweep.spec.objective.metric, goal: sweep.spec.objective.goal };
                for &(step, value) in &trial.values {
                    stopper.report(trial.index, step, sweep.spec.objective.goal.loss(value), &label);
                }
            }
            sweep.trials.push(trial);
        }
        sweep
    }

    pub fn spec(&self) -> &SweepSpec {
        &self.spec
    }

    pub fn trials(&self) -> &[TrialRecord] {
        &self.trials
    }

    /// New trials to create now: enough to have `max_parallel` running, never past `max_trials` (or the end of the
    /// grid). Each gets the next index.
    pub fn propose(&mut self) -> Vec<Proposal> {
        let limit = self.limit();
        let wanted = (self.spec.max_parallel as usize).saturating_sub(self.running());
        let room = limit.saturating_sub(self.trials.len() as u64).min(wanted as u64) as usize;
        if room == 0 {
            return Vec::new();
        }
        // Each new point is drawn from the same model: the trials proposed in this call are running, not ended,
        // so they would not change it.
        let mut seen: BTreeSet<String> = self.trials.iter().map(|t| key(&t.params)).collect();
        let mut proposals = Vec::with_capacity(room);
        for _ in 0..room {
            let index = self.next_index() + proposals.len() as TrialIndex;
            let params = self.draw(index, &mut seen);
            proposals.push(Proposal { index, params });
        }
        self.trials.extend(proposals.iter().map(|p| TrialRecord {
            index: p.index,
            params: p.params.clone(),
            outcome: None,
            values: Vec::new(),
        }));
        proposals
    }

    /// Records a value of the objective metric from a running trial and applies the early-stopping rule. Reports
    /// with a non-finite value, for an unknown trial or an ended one, or past 100,000 for one trial, are ignored
    /// (and not recorded).
    pub fn report(&mut self, index: TrialIndex, step: i64, value: f64) -> Vec<StopDecision> {
        if !value.is_finite() {
            return Vec::new();
        }
        let Some(trial) = self.trial_mut(index).filter(|t| t.outcome.is_none()) else { return Vec::new() };
        if trial.values.len() >= VALUES_PER_TRIAL_MAX {
            return Vec::new();
        }
        trial.values.push((step, value));
        let goal = self.spec.objective.goal;
        let Some(stopper) = &mut self.stopper else { return Vec::new() };
        let label = Label { metric: &self.spec.objective.metric, goal };
        let reason = stopper.report(index, step, goal.loss(value), &label);
        match reason {
            Some(reason) if self.stop_asked.insert(index) => vec![StopDecision { index, reason }],
            _ => Vec::new(),
        }
    }

    /// A trial ended. Unknown or already ended trials are ignored.
    pub fn finish(&mut self, index: TrialIndex, outcome: TrialOutcome) {
        if let Some(trial) = self.trial_mut(index).filter(|t| t.outcome.is_none()) {
            trial.outcome = Some(outcome);
            self.stop_asked.remove(&index);
        }
    }

    /// The best objective among completed trials (the lowest index wins a tie); early-stopped and failed trials
    /// never count, since their last value is not a final one.
    pub fn best(&self) -> Option<(TrialIndex, f64)> {
        let goal = self.spec.objective.goal;
        self.trials
            .iter()
            .filter(|t| t.outcome == Some(TrialOutcome::Completed))
            .filter_map(|t| t.last_value().map(|(_, v)| (t.index, v)))
            .fold(None, |best, (i, v)| match best {
                Some((_, b)) if !goal.better(v, b) => best,
                _ => Some((i, v)),
            })
    }

    /// Every trial is created (`max_trials`, or the whole grid) and none is running.
    pub fn is_done(&self) -> bool {
        self.trials.len() as u64 >= self.limit() && self.running() == 0
    }

    fn limit(&self) -> u64 {
        let max = u64::from(self.spec.max_trials);
        match self.spec.method {
            Method::Grid => max.min(self.spec.grid_size()),
            _ => max,
        }
    }

    fn running(&self) -> usize {
        self.trials.iter().filter(|t| t.outcome.is_none()).count()
    }

    fn next_index(&self) -> TrialIndex {
        self.trials.last().map_or(0, |t| t.index + 1)
    }

    fn trial_mut(&mut self, index: TrialIndex) -> Option<&mut TrialRecord> {
        let at = self.trials.binary_search_by_key(&index, |t| t.index).ok()?;
        Some(&mut self.trials[at])
    }

    /// The parameters of trial `index`; `seen` holds the keys of every trial's parameters so far.
    fn draw(&self, index: TrialIndex, seen: &mut BTreeSet<String>) -> BTreeMap<String, ParamValue> {
        let params = &self.spec.params;
        if self.spec.method == Method::Grid {
            // Grid points are unique by construction; `limit` keeps the index inside the grid.
            return space::grid_point(params, u64::from(index)).unwrap_or_default();
        }
        let mut rng = Rng::new(self.spec.seed, u64::from(index));
        let observations = match self.spec.method {
            Method::Tpe { startup_trials } | Method::Gp { startup_trials } => {
                Some(self.observations()).filter(|o| o.len() >= startup_trials as usize)
            }
            _ => None,
        };
        let draw = |rng: &mut Rng| match (&self.spec.method, &observations) {
            (Method::Tpe { .. }, Some(observations)) => tpe::propose(params, observations, rng),
            (Method::Gp { .. }, Some(observations)) => {
                gp::propose(params, observations, rng).unwrap_or_else(|| space::sample(params, rng))
            }
            _ => space::sample(params, rng),
        };
        let mut point = draw(&mut rng);
        for _ in 0..DUPLICATE_REDRAWS_MAX {
            if !seen.contains(&key(&point)) {
                break;
            }
            point = draw(&mut rng);
        }
        seen.insert(key(&point));
        point
    }

    /// Ended trials with a value: completed ones, and early-stopped ones at their last value. Failed trials, and
    /// trials that ended without a value, tell the models nothing.
    fn observations(&self) -> Vec<Observation<'_>> {
        let goal = self.spec.objective.goal;
        self.trials
            .iter()
            .filter_map(|t| {
                let complete = match t.outcome? {
                    TrialOutcome::Completed => true,
                    TrialOutcome::Stopped => false,
                    TrialOutcome::Failed => return None,
                };
                let (step, value) = t.last_value()?;
                Some(Observation { index: t.index, params: &t.params, loss: goal.loss(value), complete, step })
            })
            .collect()
    }
}
