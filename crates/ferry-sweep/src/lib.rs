//! `ferry-sweep`: hyperparameter sweeps as a pure, deterministic state machine. A sweep file ([`SweepSpec`]) names a
//! command with `{param}` placeholders, a search space, a search method (grid, random, TPE, GP) and an optional
//! early-stopping rule (ASHA, Hyperband, median). The server drives a [`Sweep`]: it asks for [`Proposal`]s, launches
//! each as a Ferry job, feeds the objective metric back with [`Sweep::report`], applies the [`StopDecision`]s that
//! come out, and tells the sweep when a trial ended with [`Sweep::finish`].
//!
//! This crate never does I/O, never reads a clock, never spawns a thread and never draws an unseeded random number:
//! every random draw comes from a ChaCha8 stream keyed by the sweep's seed and the trial index (see `rng.rs`), so the
//! same spec, seed and reports give the same proposals, and [`Sweep::restore`] after a server restart continues
//! exactly where the sweep was.
//!
//! # Module map
//!
//! - `spec`: the TOML sweep file, its validation and the command/env substitution.
//! - `space`: the search space in a unit cube: encoding, decoding, uniform draws and grid points.
//! - `tpe`, `gp`: the two model-based methods; both see only ended trials (`sweep::Observation`).
//! - `stopping`: the early-stopping rules and their per-rung state.
//! - `sweep`: the state machine that ties them together.

mod gp;
mod normal;
mod rng;
mod space;
mod spec;
mod stopping;
mod sweep;
mod tpe;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use spec::{
    EarlyStopping, Goal, Method, Objective, Param, SpecError, SweepSpec, MAX_PARALLEL_DEFAULT, MAX_TRIALS_MAX,
};
pub use sweep::Sweep;

/// A trial's number within its sweep: 0-based, dense, in creation order.
pub type TrialIndex = u32;

/// One parameter's value in a trial.
///
/// Serialized untagged, as a plain JSON number, string or bool. `Int` comes before `Float` so that `3` reads back as
/// `Int(3)`; a `Float` always reads back as `Float` because serde_json (and TOML) write every float with a fractional
/// part or an exponent (`1.0`, `1e-5`), which never parses as an integer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
}

impl fmt::Display for ParamValue {
    /// What is substituted into the command and logged as the MLflow param: floats in Rust's shortest round-trip
    /// form (`0.001`, `0.0000001`, `2`), everything else as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Float(v) => write!(f, "{v}"),
            ParamValue::Text(v) => f.write_str(v),
            ParamValue::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// A trial to create now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub index: TrialIndex,
    pub params: BTreeMap<String, ParamValue>,
}

/// How a trial ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrialOutcome {
    /// The job ran to its end and exited successfully.
    Completed,
    /// The job failed (non-zero exit, lost node, ...).
    Failed,
    /// Cancelled: by the early-stopping rule or by the user.
    Stopped,
}

/// The early-stopping rule asks the server to stop a trial; `reason` is human text for the trial's event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StopDecision {
    pub index: TrialIndex,
    pub reason: String,
}

/// Everything the sweep knows about one trial; what the server persists and hands back to [`Sweep::restore`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    pub index: TrialIndex,
    pub params: BTreeMap<String, ParamValue>,
    /// `None` while the trial runs.
    pub outcome: Option<TrialOutcome>,
    /// Every accepted report of the objective metric as (step, value), in arrival order. Non-finite values and
    /// reports for ended trials are never recorded.
    pub values: Vec<(i64, f64)>,
}

impl TrialRecord {
    /// The trial's objective: its last reported value at its greatest step.
    pub fn last_value(&self) -> Option<(i64, f64)> {
        // A later report at the same step replaces an earlier one, hence `>=`.
        let mut last: Option<(i64, f64)> = None;
        for &(step, value) in &self.values {
            if last.is_none_or(|(s, _)| step >= s) {
                last = Some((step, value));
            }
        }
        last
    }
}
