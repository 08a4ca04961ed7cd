//! Tree-structured Parzen Estimator (Bergstra et al. 2011), in the form Optuna's `TPESampler` uses by default
//! (univariate, prior on, magic clip, Optuna's `default_gamma` and `default_weights`).
//!
//! 1. Order the finished trials: completed ones by loss, then early-stopped ones by the step they reached (further
//!    first) and their last loss there, as Optuna orders pruned trials. The first `min(ceil(0.1 n), 25)` (at least
//!    one) are "good", the rest "bad"; so a stopped trial is good only when too few trials completed.
//! 2. Per parameter, fit a Parzen estimator to each group in the unit space of `space.rs`: a truncated Gaussian per
//!    observation, its width the larger gap to its sorted neighbours (the ends of [0, 1] count), clipped to
//!    `[1 / min(100, kernels + 1), 1]`, plus a prior kernel N(0.5, 1). Choices get smoothed counts instead.
//! 3. Draw [`CANDIDATES`] values from the good estimator l(x) and keep the one with the largest l(x) / g(x).
//!
//! Parameters are drawn independently of each other, as in Optuna's default (non-multivariate) sampler.

use std::collections::BTreeMap;

use crate::normal;
use crate::rng::Rng;
use crate::space::{decode, encode, snap, Coord};
use crate::spec::Param;
use crate::sweep::Observation;
use crate::ParamValue;

/// Candidates drawn from l(x) per parameter (Optuna's `n_ei_candidates`).
const CANDIDATES: usize = 24;
/// Most observations in the good group (Optuna's `default_gamma` cap).
const GOOD_MAX: usize = 25;
/// Weight of the prior kernel or of the prior counts of a choice.
const PRIOR_WEIGHT: f64 = 1.0;
/// Observations that keep full weight; older ones ramp down (Optuna's `default_weights`).
const RECENT_FULL_WEIGHT: usize = 25;
/// Tries at drawing a truncated Gaussian by rejection before clamping; each succeeds with probability > 0.3.
const REJECTION_TRIES_MAX: usize = 64;

/// Proposes one point. `observations` is non-empty.
pub(crate) fn propose(
    params: &BTreeMap<String, Param>,
    observations: &[Observation],
    rng: &mut Rng,
) -> BTreeMap<String, ParamValue> {
    let (good, bad) = split(observations);
    params
        .iter()
        .map(|(name, param)| {
            let coord = match param {
                Param::Choice { values } => {
                    let l = categorical(values.len(), name, param, &good);
                    let g = categorical(values.len(), name, param, &bad);
                    best_choice(&l, &g, rng)
                }
                _ => {
                    let l = Parzen::fit(name, param, &good);
                    let g = Parzen::fit(name, param, &bad);
                    best_numeric(param, &l, &g, rng)
                }
            };
            (name.clone(), decode(param, coord))
        })
        .collect()
}

/// A group of observations, each with its weight.
type Group<'a> = Vec<(&'a Observation<'a>, f64)>;

/// The good and the bad group.
fn split<'a>(observations: &'a [Observation<'a>]) -> (Group<'a>, Group<'a>) {
    let mut order: Vec<&Observation> = observations.iter().collect();
    order.sort_by(|a, b| {
        b.complete
            .cmp(&a.complete)
            .then_with(|| if a.complete { std::cmp::Ordering::Equal } else { b.step.cmp(&a.step) })
            .then_with(|| a.loss.total_cmp(&b.loss))
            .then_with(|| a.index.cmp(&b.index))
    });
    let n_good = observations.len().div_ceil(10).clamp(1, GOOD_MAX);
    let bad = order.split_off(n_good.min(order.len()));
    (weigh(order), weigh(bad))
}

/// Optuna's `default_weights`: the most recent observations (by index) weigh 1, older ones ramp down linearly.
fn weigh<'a>(mut group: Vec<&'a Observation<'a>>) -> Group<'a> {
    group.sort_by_key(|o| o.index);
    let n = group.len();
    let ramp = n.saturating_sub(RECENT_FULL_WEIGHT);
    group
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let w = if i >= ramp {
                1.0
            } else if ramp == 1 {
                1.0 / n as f64
            } else {
                // linspace(1/n, 1, ramp)[i]
                1.0 / n as f64 + (1.0 - 1.0 / n as f64) * i as f64 / (ramp - 1) as f64
            };
            (o, w)
        })
        .collect()
}

/// A mixture of Gaussians truncated to [0, 1].
struct Parzen {
    /// (weight normalised, mean, sigma, mass of the Gaussian inside [0, 1])
    kernels: Vec<(f64, f64, f64, f64)>,
}

impl Parzen {
    fn fit(name: &str, param: &Param, group: &[(&Observation, f64)]) -> Parzen {
        let mut points: Vec<(f64, f64)> = group
            .iter()
            .filter_map(|(o, w)| match encode(param, o.params.get(name)?) {
                Some(Coord::Unit(u)) => Some((u, *w)),
                _ => None,
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let kernels_n = points.len() + 1;
        let sigma_min = 1.0 / (kernels_n as f64 + 1.0).min(100.0);
        let mut kernels = Vec::with_capacity(kernels_n);
        for (i, &(mu, w)) in points.iter().enumerate() {
            let left = if i == 0 { mu } else { mu - points[i - 1].0 };
            let right = if i + 1 == points.len() { 1.0 - mu } else { points[i + 1].0 - mu };
            kernels.push((w, mu, left.max(right).clamp(sigma_min, 1.0)));
        }
        kernels.push((PRIOR_WEIGHT, 0.5, 1.0));
        let total: f64 = kernels.iter().map(|k| k.0).sum();
        let kernels = kernels
            .into_iter()
            .map(|(w, mu, s)| (w / total, mu, s, normal::cdf((1.0 - mu) / s) - normal::cdf(-mu / s)))
            .collect();
        Parzen { kernels }
    }

    fn log_pdf(&self, x: f64) -> f64 {
        // The prior kernel keeps the density above ~0.1 / kernels everywhere in [0, 1], so no log-sum-exp is needed.
        let p: f64 = self.kernels.iter().map(|&(w, mu, s, mass)| w * normal::pdf((x - mu) / s) / (s * mass)).sum();
        p.max(f64::MIN_POSITIVE).ln()
    }

    fn sample(&self, rng: &mut Rng) -> f64 {
        let mut pick = rng.unit();
        let mut chosen = self.kernels[self.kernels.len() - 1];
        for k in &self.kernels {
            if pick < k.0 {
                chosen = *k;
                break;
            }
            pick -= k.0;
        }
        let (_, mu, s, _) = chosen;
        for _ in 0..REJECTION_TRIES_MAX {
            let x = mu + s * rng.normal();
            if (0.0..=1.0).contains(&x) {
                return x;
            }
        }
        mu.clamp(0.0, 1.0)
    }
}

fn best_numeric(param: &Param, l: &Parzen, g: &Parzen, rng: &mut Rng) -> Coord {
    let mut best = (f64::NEG_INFINITY, 0.5);
    for _ in 0..CANDIDATES {
        let x = snap(param, l.sample(rng));
        let score = l.log_pdf(x) - g.log_pdf(x);
        if score > best.0 {
            best = (score, x);
        }
    }
    Coord::Unit(best.1)
}

/// Smoothed category probabilities of a group: weighted counts plus the prior spread evenly.
fn categorical(k: usize, name: &str, param: &Param, group: &[(&Observation, f64)]) -> Vec<f64> {
    let mut p = vec![PRIOR_WEIGHT / k as f64; k];
    for (o, w) in group {
        if let Some(Coord::Cat(i)) = o.params.get(name).and_then(|v| encode(param, v)) {
            p[i] += w;
        }
    }
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= total);
    p
}

fn best_choice(l: &[f64], g: &[f64], rng: &mut Rng) -> Coord {
    let mut best = (f64::NEG_INFINITY, 0);
    for _ in 0..CANDIDATES {
        let mut pick = rng.unit();
        let mut i = l.len() - 1;
        for (j, p) in l.iter().enumerate() {
            if pick < *p {
                i = j;
                break;
            }
            pick -= p;
        }
        let score = l[i].ln() - g[i].ln();
        if score > best.0 {
            best = (score, i);
        }
    }
    Coord::Cat(best.1)
}
