//! `/api/v1/sweeps`: start a sweep from its file, list sweeps, show one with its trials, cancel one.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use ferry_api::sweeps::{SubmitSweep, Sweep, SweepList, SweepState, SweepSubmitted, Trial, TrialCounts, TrialState};
use ferry_api::ErrorBody;
use ferry_api::ErrorCode;
use ferry_store::{JobRecord, SweepRecord};
use ferry_sweep::{EarlyStopping, Goal, Method, SweepSpec};
use serde::Deserialize;

use crate::auth::Caller;
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::state::AppState;
use crate::sweeps::TrialJob;

/// The largest sweep file accepted.
const SPEC_BYTES_MAX: usize = 256 * 1024;
/// Sweeps listed at most.
const LIST_LIMIT_MAX: u32 = 1000;

fn method_name(method: &Method) -> &'static str {
    match method {
        Method::Grid => "grid",
        Method::Random => "random",
        Method::Tpe { .. } => "tpe",
        Method::Gp { .. } => "gp",
    }
}

fn rule_name(rule: &EarlyStopping) -> &'static str {
    match rule {
        EarlyStopping::Asha { .. } => "asha",
        EarlyStopping::Hyperband { .. } => "hyperband",
        EarlyStopping::Median { .. } => "median",
    }
}

#[utoipa::path(post, path = "/api/v1/sweeps", request_body = SubmitSweep,
    responses((status = 201, body = SweepSubmitted), (status = 400, body = ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<SubmitSweep>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, axum::Extension<crate::audit::AuditNote>, Json<SweepSubmitted>), ApiError> {
    let Json(req) = body.map_err(rejection)?;
    if req.spec.len() > SPEC_BYTES_MAX {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the sweep file is {} bytes; the limit is {SPEC_BYTES_MAX}", req.spec.len()),
        ));
    }
    let spec = SweepSpec::parse(&req.spec).map_err(|e| ApiError::invalid(e.to_string()))?;
    let trial = TrialJob::parse(&spec).map_err(ApiError::invalid)?;
    // The first trial's job is checked whole now (resources, env names, image, pool), so a sweep that cannot run
    // is refused at once rather than failing trial by trial.
    let first = ferry_sweep::Sweep::new(spec.clone()).propose();
    let mut team = None;
    if let Some(p) = first.first() {
        let submission = trial.submission(&spec, &p.params, 0, req.code.clone()).map_err(ApiError::invalid)?;
        team = crate::submission::prepare(&state, submission, &caller).await?.team;
    }
    let ownership = ferry_store::Ownership { owner: Some(&caller.name), team: team.as_deref() };
    let experiment_id = crate::jobruns::experiment_named(&state.store, &trial.experiment(&spec), ownership).await?;
    let record = SweepRecord {
        id: 0,
        name: spec.name.clone(),
        owner: caller.name.clone(),
        team,
        spec: req.spec,
        code: req.code.as_ref().map(|c| ferry_store::SweepCode {
            sha256: c.sha256.clone(),
            git_commit: c.git_commit.clone(),
            git_diff: c.git_diff.clone(),
        }),
        experiment_id,
        state: "running".to_string(),
        message: None,
        created_at_us: now_us(),
        finished_at_us: None,
    };
    let id = state.store.insert_sweep(&record).await?;
    state.sweeps.started(id).await;
    let note = crate::audit::note(format!("sweep {id}"));
    Ok((axum::http::StatusCode::CREATED, note, Json(SweepSubmitted { id, max_trials: spec.max_trials })))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/sweeps", params(("state" = Option<String>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = SweepList)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SweepList>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    if let Some(s) = &query.state {
        if SweepState::parse(s).is_none() {
            return Err(ApiError::invalid(format!(
                "`{s}` is not a sweep state; use running, finished, cancelled or failed"
            )));
        }
    }
    let visible = crate::routes::jobs::visibility(&caller);
    let limit = query.limit.unwrap_or(100).min(LIST_LIMIT_MAX);
    let records = state.store.sweeps(query.state.as_deref(), limit, visible.as_ref()).await?;
    let mut sweeps = Vec::with_capacity(records.len());
    for record in records {
        let mut sweep = view(&state, record).await?;
        sweep.trials.clear();
        sweep.spec.clear();
        sweeps.push(sweep);
    }
    Ok(Json(SweepList { sweeps }))
}

#[utoipa::path(get, path = "/api/v1/sweeps/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = Sweep), (status = 404, body = ErrorBody)))]
pub async fn show(State(state): State<AppState>, caller: Caller, id: SweepId) -> Result<Json<Sweep>, ApiError> {
    let record = visible(&state, &caller, id).await?;
    Ok(Json(view(&state, record).await?))
}

type SweepId = Result<Path<u64>, axum::extract::rejection::PathRejection>;

/// The sweep at a path's id, if the caller may see it (another team's is answered as missing).
async fn visible(state: &AppState, caller: &Caller, id: SweepId) -> Result<SweepRecord, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::invalid("a sweep id is a number, as `ferry sweep` printed it"))?;
    let missing = || ApiError::not_found(format!("no sweep {id}"));
    let record = state.store.sweep(id).await?.ok_or_else(missing)?;
    if !caller.sees(&record.owner, record.team.as_deref()) {
        return Err(missing());
    }
    Ok(record)
}

#[utoipa::path(post, path = "/api/v1/sweeps/{id}/cancel", params(("id" = u64, Path)),
    responses((status = 200, body = Sweep), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(State(state): State<AppState>, caller: Caller, id: SweepId) -> Result<Json<Sweep>, ApiError> {
    let record = visible(&state, &caller, id).await?;
    if !caller.changes(&record.owner, record.team.as_deref()) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "sweep {} is {}'s; only its owner, an admin of its team or an installation admin may cancel it",
                record.id, record.owner
            ),
        ));
    }
    state.sweeps.cancel(record.id, caller.name.clone()).await?;
    let record = state.store.sweep(record.id).await?.ok_or_else(ApiError::unavailable)?;
    Ok(Json(view(&state, record).await?))
}

/// A sweep as the API shows it, from the store: its trials, their jobs and each one's latest objective value.
async fn view(state: &AppState, record: SweepRecord) -> Result<Sweep, ApiError> {
    let spec = SweepSpec::parse(&record.spec).ok();
    let rows = state.store.trials(record.id).await?;
    let jobs = state.store.sweep_jobs(record.id).await?;
    let by_trial: HashMap<u32, &JobRecord> = jobs.iter().filter_map(|j| j.spec.sweep.map(|l| (l.trial, j))).collect();
    let metric = spec.as_ref().map(|s| s.objective.metric.clone()).unwrap_or_default();
    let goal = spec.as_ref().map_or(Goal::Minimize, |s| s.objective.goal);
    let latest = state.store.sweep_latest_values(record.id, &metric).await?;
    let now = now_us();
    let mut counts = TrialCounts::default();
    let mut best: Option<(u32, f64)> = None;
    let mut trials = Vec::with_capacity(rows.len());
    for row in rows {
        let job = by_trial.get(&row.index);
        let trial_state = match (row.outcome.as_deref(), job.map(|j| j.state)) {
            (Some("completed"), _) => TrialState::Completed,
            (Some("stopped"), _) => TrialState::Stopped,
            (Some(_), _) => TrialState::Failed,
            (None, None | Some(JobState::Queued)) => TrialState::Queued,
            (None, Some(JobState::Starting | JobState::Running)) => TrialState::Running,
            (None, Some(JobState::Cancelled)) => TrialState::Stopped,
            (None, Some(JobState::Succeeded)) if row.stop_reason.is_some() => TrialState::Stopped,
            // Ended, and about to be recorded by the controller.
            (None, Some(JobState::Succeeded)) => TrialState::Completed,
            (None, Some(_)) => TrialState::Failed,
        };
        match trial_state {
            TrialState::Queued => counts.queued += 1,
            TrialState::Running => counts.running += 1,
            TrialState::Completed => counts.completed += 1,
            TrialState::Failed => counts.failed += 1,
            TrialState::Stopped => counts.stopped += 1,
        }
        let value = latest.get(&row.run_id).copied();
        if let (TrialState::Completed, Some((_, v))) = (trial_state, value) {
            if v.is_finite() && best.is_none_or(|(_, b)| goal.better(v, b)) {
                best = Some((row.index, v));
            }
        }
        let runtime_s = job
            .and_then(|j| j.started_at_us.map(|start| (j.finished_at_us.unwrap_or(now) - start).max(0) as f64 / 1e6));
        trials.push(Trial {
            index: row.index,
            job_id: job.map(|j| j.id),
            run_id: row.run_id,
            state: trial_state,
            params: serde_json::from_str(&row.params).unwrap_or_default(),
            value: value.map(|(_, v)| v),
            step: value.map(|(s, _)| s),
            stop_reason: row.stop_reason,
            runtime_s,
        });
    }
    use ferry_api::jobs::JobState;
    Ok(Sweep {
        id: record.id,
        name: record.name,
        owner: record.owner,
        state: SweepState::parse(&record.state).unwrap_or(SweepState::Failed),
        message: record.message,
        method: spec.as_ref().map(|s| method_name(&s.method)).unwrap_or("unknown").to_string(),
        early_stopping: spec.as_ref().and_then(|s| s.early_stopping.as_ref()).map(|r| rule_name(r).to_string()),
        objective: metric,
        goal: match goal {
            Goal::Minimize => "minimize",
            Goal::Maximize => "maximize",
        }
        .to_string(),
        max_trials: spec.as_ref().map_or(0, |s| s.max_trials),
        max_parallel: spec.as_ref().map_or(0, |s| s.max_parallel),
        experiment_id: record.experiment_id.to_string(),
        counts,
        best_trial: best.map(|(i, _)| i),
        best_value: best.map(|(_, v)| v),
        created_at_us: record.created_at_us,
        finished_at_us: record.finished_at_us,
        spec: record.spec,
        trials,
    })
}
