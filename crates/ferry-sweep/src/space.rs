//! The search space as the methods see it: every numeric parameter in the unit interval (log-scaled for
//! `log_uniform`, integers as equal-width bins), every choice as an index. Pure functions only.

use std::collections::BTreeMap;

use crate::rng::Rng;
use crate::spec::Param;
use crate::ParamValue;

/// A parameter's coordinate in the model space.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Coord {
    /// Numeric parameters: a point in [0, 1].
    Unit(f64),
    /// Choice parameters: the index of the value.
    Cat(usize),
}

/// The number of integer levels of an int parameter.
fn levels(low: i64, high: i64, step: i64) -> u64 {
    ((high as i128 - low as i128) / step as i128 + 1) as u64
}

/// Rounds to 12 significant digits, so that a draw reads `0.00316227766017` instead of `0.0031622776601683794`
/// and a log-spaced grid point reads `0.0001` instead of `0.00010000000000000002`; far below any useful resolution.
fn tidy(x: f64) -> f64 {
    format!("{x:.11e}").parse().unwrap_or(x)
}

/// Turns a model coordinate into the value the trial gets.
pub(crate) fn decode(param: &Param, coord: Coord) -> ParamValue {
    match (param, coord) {
        (Param::Uniform { low, high, .. }, Coord::Unit(u)) => {
            ParamValue::Float(tidy(low + u.clamp(0.0, 1.0) * (high - low)).clamp(*low, *high))
        }
        (Param::LogUniform { low, high, .. }, Coord::Unit(u)) => {
            let x = (low.ln() + u.clamp(0.0, 1.0) * (high.ln() - low.ln())).exp();
            ParamValue::Float(tidy(x).clamp(*low, *high))
        }
        (Param::Int { low, high, step }, Coord::Unit(u)) => {
            let n = levels(*low, *high, *step);
            let k = ((u.clamp(0.0, 1.0) * n as f64) as u64).min(n - 1);
            ParamValue::Int(low + k as i64 * step)
        }
        (Param::Choice { values }, Coord::Cat(i)) => values[i.min(values.len() - 1)].clone(),
        // A coordinate of the wrong kind never comes out of this crate; fall back to the middle of the space.
        (Param::Choice { values }, Coord::Unit(u)) => {
            values[((u.clamp(0.0, 1.0) * values.len() as f64) as usize).min(values.len() - 1)].clone()
        }
        (_, Coord::Cat(_)) => decode(param, Coord::Unit(0.5)),
    }
}

/// Turns a trial's value back into a model coordinate; `None` if it does not fit the parameter (a restored trial
/// from an edited spec, say), in which case the models leave that trial out.
pub(crate) fn encode(param: &Param, value: &ParamValue) -> Option<Coord> {
    let number = match value {
        ParamValue::Int(i) => Some(*i as f64),
        ParamValue::Float(f) => Some(*f),
        _ => None,
    };
    match param {
        Param::Uniform { low, high, .. } => number.map(|x| Coord::Unit(((x - low) / (high - low)).clamp(0.0, 1.0))),
        Param::LogUniform { low, high, .. } => number
            .filter(|x| *x > 0.0)
            .map(|x| Coord::Unit(((x.ln() - low.ln()) / (high.ln() - low.ln())).clamp(0.0, 1.0))),
        Param::Int { low, high, step } => {
            let n = levels(*low, *high, *step);
            let k = ((number? - *low as f64) / *step as f64).round().clamp(0.0, (n - 1) as f64);
            Some(Coord::Unit((k + 0.5) / n as f64))
        }
        Param::Choice { values } => values.iter().position(|v| v == value).map(Coord::Cat),
    }
}

/// Moves a unit coordinate to the centre of its integer bin, so that a model scores the point the trial will get.
pub(crate) fn snap(param: &Param, u: f64) -> f64 {
    match param {
        Param::Int { low, high, step } => {
            let n = levels(*low, *high, *step) as f64;
            ((u.clamp(0.0, 1.0) * n).floor().min(n - 1.0) + 0.5) / n
        }
        _ => u,
    }
}

/// One uniform draw of a parameter (log-uniform for `log_uniform`).
pub(crate) fn sample_coord(param: &Param, rng: &mut Rng) -> Coord {
    match param {
        Param::Choice { values } => Coord::Cat(rng.below(values.len())),
        _ => Coord::Unit(snap(param, rng.unit())),
    }
}

/// A random-search draw of every parameter, in name order.
pub(crate) fn sample(params: &BTreeMap<String, Param>, rng: &mut Rng) -> BTreeMap<String, ParamValue> {
    params.iter().map(|(name, p)| (name.clone(), decode(p, sample_coord(p, rng)))).collect()
}

/// The grid point with this index: the cartesian product in name order, the first parameter varying slowest (as
/// nested loops would), each parameter's points in increasing order. `None` past the end of the grid.
pub(crate) fn grid_point(params: &BTreeMap<String, Param>, index: u64) -> Option<BTreeMap<String, ParamValue>> {
    let lens: Vec<u64> = params.values().map(|p| p.grid_len().unwrap_or(0)).collect();
    let total = lens.iter().fold(1u64, |acc, n| acc.saturating_mul(*n));
    if index >= total {
        return None;
    }
    let mut rest = index;
    let mut digits = vec![0u64; lens.len()];
    for (digit, len) in digits.iter_mut().zip(&lens).rev() {
        *digit = rest % len;
        rest /= len;
    }
    let point = params
        .iter()
        .zip(digits)
        .map(|((name, param), j)| {
            let value = match param {
                Param::Uniform { grid_points, .. } | Param::LogUniform { grid_points, .. } => {
                    let n = u64::from(grid_points.unwrap_or(2));
                    decode(param, Coord::Unit(j as f64 / (n - 1) as f64))
                }
                Param::Int { low, step, .. } => ParamValue::Int(low + j as i64 * step),
                Param::Choice { values } => values[j as usize].clone(),
            };
            (name.clone(), value)
        })
        .collect();
    Some(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let int = Param::Int { low: 1, high: 9, step: 2 };
        for k in [1, 3, 5, 7, 9] {
            let c = encode(&int, &ParamValue::Int(k)).unwrap();
            assert_eq!(decode(&int, c), ParamValue::Int(k));
        }
        let log = Param::LogUniform { low: 1e-5, high: 1e-1, grid_points: None };
        assert_eq!(decode(&log, Coord::Unit(0.0)), ParamValue::Float(1e-5));
        assert_eq!(decode(&log, Coord::Unit(1.0)), ParamValue::Float(1e-1));
        assert_eq!(decode(&log, Coord::Unit(0.25)), ParamValue::Float(1e-4));
        let Some(Coord::Unit(u)) = encode(&log, &ParamValue::Float(1e-3)) else { panic!() };
        assert!((u - 0.5).abs() < 1e-12);
    }
}
