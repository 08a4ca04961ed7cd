//! Early-stopping rules. Each keeps only state that is a function of every trial's reported values taken one
//! trial at a time (sorted rung values, per-trial curves), never of the order in which trials interleaved: that is
//! what lets [`crate::Sweep::restore`] rebuild it by replaying each trial's values and reach the very state an
//! uninterrupted sweep has. Every value here is a *loss* (smaller is better, see [`Goal::loss`]); reasons turn it
//! back into the metric's own sign.
//!
//! - **ASHA** (asynchronous successive halving, Li et al. 2018): rungs at `min_steps * rf^k` below `max_steps`. The
//!   first report of a trial at or past a rung records its value there; the trial continues if that value is among
//!   the best `1/rf` of the values recorded at the rung so far (ties continue; with fewer than `rf` values, it
//!   continues). A rung at `max_steps` itself would stop nothing that was not ending anyway, so there is none.
//! - **Hyperband** (Li et al. 2018, asynchronous form): brackets of ASHA whose first rung is `min_steps * rf^s` for
//!   `s = 0, 1, ...` while below `max_steps`, plus one last bracket without rungs (every trial runs to the end).
//!   Trial `i` runs in bracket `i % brackets` and is compared only with trials of its bracket.
//! - **Median rule** (Golovin et al. 2017, Google Vizier): at a step `s >= min_steps`, a trial whose best value so far
//!   is worse than the median of the other trials' running averages up to `s` is stopped. Only trials that reached
//!   `s` count, and at least `min_trials` of them are needed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{EarlyStopping, Goal};
use crate::TrialIndex;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) enum Stopper {
    Rungs(Rungs),
    Median(Median),
}

impl Stopper {
    pub(crate) fn new(rule: &EarlyStopping) -> Stopper {
        match *rule {
            EarlyStopping::Asha { min_steps, max_steps, reduction_factor } => Stopper::Rungs(Rungs {
                hyperband: false,
                reduction_factor,
                brackets: vec![Bracket::new(min_steps, max_steps, reduction_factor)],
                passed: BTreeMap::new(),
            }),
            EarlyStopping::Hyperband { min_steps, max_steps, reduction_factor } => {
                let mut brackets = Vec::new();
                let mut first = min_steps;
                while first < max_steps {
                    brackets.push(Bracket::new(first, max_steps, reduction_factor));
                    first = first.saturating_mul(i64::from(reduction_factor));
                }
                brackets.push(Bracket { steps: Vec::new(), losses: Vec::new() });
                Stopper::Rungs(Rungs { hyperband: true, reduction_factor, brackets, passed: BTreeMap::new() })
            }
            EarlyStopping::Median { min_steps, min_trials } => {
                Stopper::Median(Median { min_steps, min_trials, curves: BTreeMap::new() })
            }
        }
    }

    /// Records a report and says why the trial should stop, if it should. `loss` is finite.
    pub(crate) fn report(&mut self, index: TrialIndex, step: i64, loss: f64, label: &Label) -> Option<String> {
        match self {
            Stopper::Rungs(rungs) => rungs.report(index, step, loss, label),
            Stopper::Median(median) => median.report(index, step, loss, label),
        }
    }
}

/// What a reason needs to speak the user's language: the metric's name and direction.
pub(crate) struct Label<'a> {
    pub(crate) metric: &'a str,
    pub(crate) goal: Goal,
}

impl Label<'_> {
    fn value(&self, loss: f64) -> f64 {
        self.goal.loss(loss)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Rungs {
    hyperband: bool,
    reduction_factor: u32,
    brackets: Vec<Bracket>,
    /// How many rungs of its bracket each trial has recorded a value at.
    passed: BTreeMap<TrialIndex, usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Bracket {
    /// The rung steps, increasing, all below max_steps.
    steps: Vec<i64>,
    /// Per rung, the losses recorded there, sorted ascending (so the order trials arrived in never shows).
    losses: Vec<Vec<f64>>,
}

impl Bracket {
    fn new(first: i64, max_steps: i64, reduction_factor: u32) -> Bracket {
        let mut steps = Vec::new();
        let mut step = first;
        while step < max_steps {
            steps.push(step);
            step = step.saturating_mul(i64::from(reduction_factor));
        }
        let losses = vec![Vec::new(); steps.len()];
        Bracket { steps, losses }
    }
}

impl Rungs {
    fn report(&mut self, index: TrialIndex, step: i64, loss: f64, label: &Label) -> Option<String> {
        let bracket_no = index as usize % self.brackets.len();
        let bracket = &mut self.brackets[bracket_no];
        let passed = self.passed.entry(index).or_insert(0);
        let rf = self.reduction_factor as usize;
        let mut reason = None;
        // Every rung this report reaches gets the value, even past a failed one, so that the state depends only
        // on the trial's values and not on which decisions were taken.
        while *passed < bracket.steps.len() && bracket.steps[*passed] <= step {
            let rung = *passed;
            let losses = &mut bracket.losses[rung];
            let at = losses.partition_point(|l| *l <= loss);
            losses.insert(at, loss);
            *passed += 1;
            if reason.is_some() || losses.len() < rf {
                continue;
            }
            let keep = losses.len() / rf;
            let cutoff = losses[keep - 1];
            if loss > cutoff {
                let place = if self.hyperband {
                    format!("rung {} (step {}) of Hyperband bracket {bracket_no}", rung, bracket.steps[rung])
                } else {
                    format!("ASHA rung {} (step {})", rung, bracket.steps[rung])
                };
                reason = Some(format!(
                    "{} {} at step {step} is not in the top 1/{rf} of the {} trials at {place}: the cut-off is {}",
                    label.metric,
                    label.value(loss),
                    losses.len(),
                    label.value(cutoff),
                ));
            }
        }
        reason
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Median {
    min_steps: i64,
    min_trials: u32,
    curves: BTreeMap<TrialIndex, Curve>,
}

/// One trial's reports sorted by step, with prefix sums for running averages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Curve {
    steps: Vec<i64>,
    /// `sums[i]` is the sum of the losses at `steps[..=i]`.
    sums: Vec<f64>,
    best: f64,
}

impl Curve {
    fn add(&mut self, step: i64, loss: f64) {
        // Reports nearly always come in step order; an out-of-order one costs a rebuild of the sums after it.
        let at = self.steps.partition_point(|s| *s <= step);
        let before = if at == 0 { 0.0 } else { self.sums[at - 1] };
        self.steps.insert(at, step);
        self.sums.insert(at, before + loss);
        for sum in &mut self.sums[at + 1..] {
            *sum += loss;
        }
        self.best = if self.steps.len() == 1 { loss } else { self.best.min(loss) };
    }

    fn reached(&self, step: i64) -> bool {
        self.steps.last().is_some_and(|last| *last >= step)
    }

    /// The mean of the losses reported at or before `step`.
    fn running_average(&self, step: i64) -> Option<f64> {
        let n = self.steps.partition_point(|s| *s <= step);
        (n > 0).then(|| self.sums[n - 1] / n as f64)
    }
}

impl Median {
    fn report(&mut self, index: TrialIndex, step: i64, loss: f64, label: &Label) -> Option<String> {
        self.curves.entry(index).or_default().add(step, loss);
        if step < self.min_steps {
            return None;
        }
        let mut averages: Vec<f64> = self
            .curves
            .iter()
            .filter(|(other, curve)| **other != index && curve.reached(step))
            .filter_map(|(_, curve)| curve.running_average(step))
            .collect();
        if averages.len() < self.min_trials as usize {
            return None;
        }
        averages.sort_by(f64::total_cmp);
        let mid = averages.len() / 2;
        let median = if averages.len() % 2 == 1 { averages[mid] } else { (averages[mid - 1] + averages[mid]) / 2.0 };
        let best = self.curves[&index].best;
        (best > median).then(|| {
            format!(
                "{} {} (its best by step {step}) is worse than the median {} of the running averages of {} other \
                 trials at that step (median rule)",
                label.metric,
                label.value(best),
                label.value(median),
                averages.len(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> Label<'static> {
        Label { metric: "loss", goal: Goal::Minimize }
    }

    #[test]
    fn asha_rungs_stop_below_max() {
        let Stopper::Rungs(r) = Stopper::new(&EarlyStopping::Asha { min_steps: 1, max_steps: 81, reduction_factor: 3 })
        else {
            panic!()
        };
        assert_eq!(r.brackets[0].steps, vec![1, 3, 9, 27]);
    }

    #[test]
    fn hyperband_brackets() {
        let Stopper::Rungs(r) =
            Stopper::new(&EarlyStopping::Hyperband { min_steps: 1, max_steps: 27, reduction_factor: 3 })
        else {
            panic!()
        };
        let steps: Vec<Vec<i64>> = r.brackets.iter().map(|b| b.steps.clone()).collect();
        assert_eq!(steps, vec![vec![1, 3, 9], vec![3, 9], vec![9], vec![]]);
    }

    #[test]
    fn running_average_handles_out_of_order_steps() {
        let mut c = Curve::default();
        c.add(2, 4.0);
        c.add(1, 2.0);
        c.add(3, 6.0);
        assert_eq!(c.running_average(1), Some(2.0));
        assert_eq!(c.running_average(2), Some(3.0));
        assert_eq!(c.running_average(10), Some(4.0));
        assert_eq!(c.running_average(0), None);
        assert_eq!(c.best, 2.0);
    }

    #[test]
    fn asha_needs_rf_values() {
        let mut s = Stopper::new(&EarlyStopping::Asha { min_steps: 1, max_steps: 9, reduction_factor: 2 });
        assert_eq!(s.report(0, 1, 1.0, &label()), None);
        // Two values at the rung: the worse one is out of the top half.
        let reason = s.report(1, 1, 2.0, &label()).unwrap();
        assert!(
            reason.contains("loss 2 at step 1 is not in the top 1/2 of the 2 trials at ASHA rung 0 (step 1)"),
            "{reason}"
        );
        // A tie with the cut-off continues.
        assert_eq!(s.report(2, 1, 1.0, &label()), None);
    }
}
