//! Wire types of hyperparameter sweeps (`/api/v1/sweeps`): a sweep file in, a sweep with its trials out.
//!
//! A sweep's trials are ordinary Ferry jobs, each with an MLflow run holding its parameters and the objective
//! metric it logs; these types add the sweep's own view (progress, the best trial, why a trial was stopped).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A request to start a sweep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitSweep {
    /// The sweep file (TOML): search space, objective, method, early stopping, limits and the trial's job.
    pub spec: String,
    /// The shipped folder the trials run in, already uploaded to `/api/v1/code/{sha256}`.
    #[serde(default)]
    pub code: Option<crate::code::CodeSpec>,
}

/// The answer to a sweep submission.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SweepSubmitted {
    pub id: u64,
    /// How many trials the sweep may run in all.
    pub max_trials: u32,
}

/// Where a sweep stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SweepState {
    /// Trials are being created and run.
    Running,
    /// Every trial has ended.
    Finished,
    /// Cancelled by its owner: its running trials were stopped.
    Cancelled,
    /// Stopped because it could not go on (e.g. its trials are refused); `message` says why.
    Failed,
}

impl SweepState {
    pub fn name(self) -> &'static str {
        match self {
            SweepState::Running => "running",
            SweepState::Finished => "finished",
            SweepState::Cancelled => "cancelled",
            SweepState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<SweepState> {
        [SweepState::Running, SweepState::Finished, SweepState::Cancelled, SweepState::Failed]
            .into_iter()
            .find(|s| s.name() == text)
    }
}

/// Where one trial stands, from its job and the sweep's early stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Its job waits in the queue (or is about to be submitted).
    Queued,
    Running,
    /// Its job ended well.
    Completed,
    /// Its job failed, or ended without logging the objective.
    Failed,
    /// Stopped early by the sweep's rule (see `stop_reason`), or by cancelling the sweep.
    Stopped,
}

/// One trial of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Trial {
    /// 0-based, in the order the trials were created.
    pub index: u32,
    /// The trial's job; absent for the instant between creating a trial and submitting its job.
    pub job_id: Option<u64>,
    /// The MLflow run holding the trial's params and metrics.
    pub run_id: String,
    pub state: TrialState,
    /// The trial's parameters as they were passed (numbers as numbers, choices as given).
    #[schema(value_type = Object)]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// The latest value of the objective metric and its step; absent before the first is logged.
    pub value: Option<f64>,
    pub step: Option<i64>,
    /// Why the sweep stopped the trial early.
    pub stop_reason: Option<String>,
    /// Seconds the trial's job ran (so far, for a running one).
    pub runtime_s: Option<f64>,
}

/// Counts of a sweep's trials by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TrialCounts {
    pub queued: u32,
    pub running: u32,
    pub completed: u32,
    pub failed: u32,
    pub stopped: u32,
}

/// A sweep, with its trials in `GET /api/v1/sweeps/{id}` (empty in listings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sweep {
    pub id: u64,
    pub name: Option<String>,
    pub owner: String,
    pub state: SweepState,
    pub message: Option<String>,
    /// `grid`, `random`, `tpe` or `gp`.
    pub method: String,
    /// `asha`, `hyperband` or `median`; absent without early stopping.
    pub early_stopping: Option<String>,
    pub objective: String,
    /// `minimize` or `maximize`.
    pub goal: String,
    pub max_trials: u32,
    pub max_parallel: u32,
    /// The MLflow experiment holding the trials' runs.
    pub experiment_id: String,
    pub counts: TrialCounts,
    /// The best completed trial so far and its objective.
    pub best_trial: Option<u32>,
    pub best_value: Option<f64>,
    pub created_at_us: i64,
    pub finished_at_us: Option<i64>,
    /// The sweep file as submitted.
    #[serde(default)]
    pub spec: String,
    #[serde(default)]
    pub trials: Vec<Trial>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SweepList {
    pub sweeps: Vec<Sweep>,
}
