//! Gaussian-process search: a GP with a Matérn 5/2 kernel on the unit-cube encoding of `space.rs` (log scale for
//! `log_uniform`, bins for `int`, one-hot for choices), losses standardised to mean 0 and variance 1, the length
//! scale and noise picked from a small grid by marginal likelihood, and Expected Improvement maximised over
//! [`CANDIDATES_RANDOM`] uniform points plus [`CANDIDATES_LOCAL`] perturbations of the best trial so far.
//!
//! Early-stopped trials enter with their last value. For a learning curve that value is worse than the trial's
//! final value would have been, which steers the model away from them much as TPE's bad group does.

use std::collections::BTreeMap;

use crate::normal;
use crate::rng::Rng;
use crate::space::{decode, encode, sample_coord, snap, Coord};
use crate::spec::Param;
use crate::sweep::Observation;
use crate::ParamValue;

/// Observations the GP is fitted to; a fit costs O(n^3) per hyperparameter pair. Past it, the best
/// [`POINTS_BEST_KEPT`] are kept and the rest are the most recent.
const POINTS_MAX: usize = 200;
const POINTS_BEST_KEPT: usize = 50;
/// Length scales tried, in unit-cube distance.
const LENGTH_SCALES: [f64; 4] = [0.1, 0.25, 0.5, 1.0];
/// Noise variances tried, relative to the standardised signal variance of 1.
const NOISES: [f64; 2] = [1e-3, 0.1];
/// Added to the diagonal so that Cholesky never sees a singular matrix from duplicate points.
const JITTER: f64 = 1e-8;
const CANDIDATES_RANDOM: usize = 400;
const CANDIDATES_LOCAL: usize = 100;
/// Standard deviation of a local candidate around the incumbent, per unit coordinate.
const LOCAL_SIGMA: f64 = 0.05;
/// Chance that a local candidate changes a choice parameter.
const LOCAL_SWITCH_CHANCE: f64 = 0.2;
/// Exploration margin of Expected Improvement, in standardised units.
const EI_XI: f64 = 0.01;

/// Proposes one point, or `None` when no usable observation is left (the caller then draws at random).
pub(crate) fn propose(
    params: &BTreeMap<String, Param>,
    observations: &[Observation],
    rng: &mut Rng,
) -> Option<BTreeMap<String, ParamValue>> {
    let mut points: Vec<(Vec<Coord>, f64, u32)> = observations
        .iter()
        .filter_map(|o| {
            let coords: Option<Vec<Coord>> =
                params.iter().map(|(name, p)| o.params.get(name).and_then(|v| encode(p, v))).collect();
            Some((coords?, o.loss, o.index))
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    thin(&mut points);
    let xs: Vec<Vec<f64>> = points.iter().map(|(c, _, _)| features(params, c)).collect();
    let ys = standardise(points.iter().map(|p| p.1).collect());
    let model = Model::fit(xs, &ys)?;
    let best_y = ys.iter().copied().fold(f64::INFINITY, f64::min);
    let incumbent = &points[ys.iter().position(|y| *y == best_y).unwrap_or(0)].0;

    let mut best: Option<(f64, Vec<Coord>)> = None;
    for i in 0..CANDIDATES_RANDOM + CANDIDATES_LOCAL {
        let candidate: Vec<Coord> = if i < CANDIDATES_RANDOM {
            params.values().map(|p| sample_coord(p, rng)).collect()
        } else {
            params.values().zip(incumbent).map(|(p, c)| perturb(p, *c, rng)).collect()
        };
        let ei = model.expected_improvement(&features(params, &candidate), best_y);
        if best.as_ref().is_none_or(|(b, _)| ei > *b) {
            best = Some((ei, candidate));
        }
    }
    let (_, coords) = best?;
    Some(params.iter().zip(coords).map(|((name, p), c)| (name.clone(), decode(p, c))).collect())
}

/// Keeps at most [`POINTS_MAX`] points: the best few and then the most recent.
fn thin(points: &mut Vec<(Vec<Coord>, f64, u32)>) {
    if points.len() <= POINTS_MAX {
        return;
    }
    points.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.2.cmp(&b.2)));
    let mut rest = points.split_off(POINTS_BEST_KEPT);
    rest.sort_by_key(|p| std::cmp::Reverse(p.2));
    rest.truncate(POINTS_MAX - POINTS_BEST_KEPT);
    points.extend(rest);
}

fn perturb(param: &Param, coord: Coord, rng: &mut Rng) -> Coord {
    match (param, coord) {
        (Param::Choice { values }, Coord::Cat(i)) => {
            if rng.unit() < LOCAL_SWITCH_CHANCE {
                Coord::Cat(rng.below(values.len()))
            } else {
                Coord::Cat(i)
            }
        }
        (_, Coord::Unit(u)) => Coord::Unit(snap(param, (u + LOCAL_SIGMA * rng.normal()).clamp(0.0, 1.0))),
        (_, c) => c,
    }
}

fn features(params: &BTreeMap<String, Param>, coords: &[Coord]) -> Vec<f64> {
    let mut x = Vec::with_capacity(coords.len());
    for (param, coord) in params.values().zip(coords) {
        match (param, coord) {
            (Param::Choice { values }, Coord::Cat(i)) => x.extend((0..values.len()).map(|j| f64::from(j == *i))),
            (_, Coord::Unit(u)) => x.push(*u),
            (_, Coord::Cat(_)) => x.push(0.5),
        }
    }
    x
}

fn standardise(ys: Vec<f64>) -> Vec<f64> {
    let n = ys.len() as f64;
    let mean = ys.iter().sum::<f64>() / n;
    let var = ys.iter().map(|y| (y - mean).powi(2)).sum::<f64>() / n;
    let sd = if var > 1e-24 { var.sqrt() } else { 1.0 };
    ys.into_iter().map(|y| (y - mean) / sd).collect()
}

fn matern52(x: &[f64], y: &[f64], length_scale: f64) -> f64 {
    let d2: f64 = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum();
    let r = 5f64.sqrt() * d2.sqrt() / length_scale;
    (1.0 + r + r * r / 3.0) * (-r).exp()
}

struct Model {
    xs: Vec<Vec<f64>>,
    length_scale: f64,
    /// Lower Cholesky factor of K + noise I, row-major n x n.
    chol: Vec<f64>,
    alpha: Vec<f64>,
}

impl Model {
    /// Fits every (length scale, noise) pair of the grid and keeps the one of greatest marginal likelihood.
    fn fit(xs: Vec<Vec<f64>>, ys: &[f64]) -> Option<Model> {
        let n = xs.len();
        let mut best: Option<(f64, f64, Vec<f64>, Vec<f64>)> = None;
        for &length_scale in &LENGTH_SCALES {
            for &noise in &NOISES {
                let mut k = vec![0.0; n * n];
                for i in 0..n {
                    for j in 0..=i {
                        let v = matern52(&xs[i], &xs[j], length_scale);
                        k[i * n + j] = v;
                        k[j * n + i] = v;
                    }
                    k[i * n + i] += noise + JITTER;
                }
                let Some(chol) = cholesky(k, n) else { continue };
                let alpha = solve_upper_t(&chol, n, &solve_lower(&chol, n, ys));
                let fit: f64 = ys.iter().zip(&alpha).map(|(y, a)| y * a).sum();
                let log_det: f64 = (0..n).map(|i| chol[i * n + i].ln()).sum();
                let log_likelihood = -0.5 * fit - log_det;
                if best.as_ref().is_none_or(|b| log_likelihood > b.0) {
                    best = Some((log_likelihood, length_scale, chol, alpha));
                }
            }
        }
        let (_, length_scale, chol, alpha) = best?;
        Some(Model { xs, length_scale, chol, alpha })
    }

    /// Expected Improvement below `best_y` (standardised losses) at `x`.
    fn expected_improvement(&self, x: &[f64], best_y: f64) -> f64 {
        let n = self.xs.len();
        let ks: Vec<f64> = self.xs.iter().map(|xi| matern52(xi, x, self.length_scale)).collect();
        let mean: f64 = ks.iter().zip(&self.alpha).map(|(k, a)| k * a).sum();
        let v = solve_lower(&self.chol, n, &ks);
        let var = (1.0 - v.iter().map(|a| a * a).sum::<f64>()).max(1e-12);
        let sd = var.sqrt();
        let improvement = best_y - mean - EI_XI;
        let z = improvement / sd;
        improvement * normal::cdf(z) + sd * normal::pdf(z)
    }
}

/// Cholesky factorisation of a symmetric positive-definite matrix (row-major), or `None` if it is not.
fn cholesky(mut a: Vec<f64>, n: usize) -> Option<Vec<f64>> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
        for k in j + 1..n {
            a[j * n + k] = 0.0;
        }
    }
    Some(a)
}

/// Solves L x = b.
fn solve_lower(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    for i in 0..n {
        let mut s = x[i];
        for k in 0..i {
            s -= l[i * n + k] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

/// Solves Lᵀ x = b.
fn solve_upper_t(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut x = b.to_vec();
    for i in (0..n).rev() {
        let mut s = x[i];
        for k in i + 1..n {
            s -= l[k * n + i] * x[k];
        }
        x[i] = s / l[i * n + i];
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves() {
        // A = [[4, 2], [2, 3]]
        let l = cholesky(vec![4.0, 2.0, 2.0, 3.0], 2).unwrap();
        let b = [2.0, 1.0];
        let x = solve_upper_t(&l, 2, &solve_lower(&l, 2, &b));
        // A x = b  =>  x = [0.5, 0]
        assert!((x[0] - 0.5).abs() < 1e-12 && x[1].abs() < 1e-12, "{x:?}");
        assert!(cholesky(vec![1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn posterior_interpolates() {
        let xs = vec![vec![0.0], vec![0.5], vec![1.0]];
        let ys = [1.0, -1.0, 1.0];
        let m = Model::fit(xs, &ys).unwrap();
        // EI is largest near the observed minimum, not at the observed maxima.
        assert!(m.expected_improvement(&[0.5], -1.0) > m.expected_improvement(&[0.0], -1.0));
    }
}
