//! The MLflow tracking REST API (`/api/2.0/mlflow/...`): experiments, runs, params, metrics with their history,
//! tags, log-batch and search, so the official `mlflow` client works against Ferry with `MLFLOW_TRACKING_URI`
//! pointing here and `MLFLOW_TRACKING_TOKEN` holding a Ferry API token.
//!
//! Every answer, errors included (a missing token too), is in MLflow's shape: errors are
//! `{"error_code": "...", "message": "..."}` with the HTTP status MLflow gives that code. Handlers write tracking
//! rows through the store directly: tracking is not scheduling, so the driver is not involved. Artifacts are in
//! `artifacts.rs` and logged models in `mlflow_models.rs`; paths Ferry does not serve answer `ENDPOINT_NOT_FOUND`.

use std::cmp::Ordering;
use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::tracking::*;
use ferry_store::{ExperimentRecord, MetricPoint, RunData as StoredData, RunRecord};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::auth::Tracker;
use crate::error::ApiError;
use crate::state::AppState;

/// The most runs one search answers by default, and the most it may be asked for.
const SEARCH_RUNS_DEFAULT: i64 = 1000;
const SEARCH_RUNS_MAX: i64 = 50_000;
/// The most experiments one search answers by default, and the most it may be asked for.
const SEARCH_EXPERIMENTS_DEFAULT: i64 = 1000;
const SEARCH_EXPERIMENTS_MAX: i64 = 50_000;
/// The most values of a metric one history page may hold.
const HISTORY_PAGE_MAX: i64 = 25_000;
/// The longest filter string, in characters: enough for any hand-written search, and a bound on the work of one.
const FILTER_CHARS_MAX: usize = 10_000;
/// The statuses a run may have.
const RUN_STATUSES: [&str; 5] = ["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"];
pub(crate) const ACTIVE: &str = "active";
pub(crate) const DELETED: &str = "deleted";

/// An error in MLflow's format.
#[derive(Debug)]
pub struct MlflowFailure {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl MlflowFailure {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> MlflowFailure {
        MlflowFailure { status, code, message: message.into() }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> MlflowFailure {
        MlflowFailure::new(StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> MlflowFailure {
        MlflowFailure::new(StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST", message)
    }

    pub(crate) fn exists(message: impl Into<String>) -> MlflowFailure {
        MlflowFailure::new(StatusCode::BAD_REQUEST, "RESOURCE_ALREADY_EXISTS", message)
    }

    pub(crate) fn missing(field: &str) -> MlflowFailure {
        MlflowFailure::invalid(format!("Missing value for required parameter '{field}'."))
    }
}

impl IntoResponse for MlflowFailure {
    fn into_response(self) -> Response {
        let note = crate::audit::AuditNote(self.message.clone());
        let body = MlflowError { error_code: self.code.to_string(), message: self.message };
        let mut response = (self.status, Json(body)).into_response();
        response.extensions_mut().insert(note);
        response
    }
}

impl From<ApiError> for MlflowFailure {
    fn from(e: ApiError) -> MlflowFailure {
        use ferry_api::ErrorCode;
        let (status, code) = match e.code {
            ErrorCode::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
            ErrorCode::StorageFull => (StatusCode::INSUFFICIENT_STORAGE, "TEMPORARILY_UNAVAILABLE"),
            ErrorCode::QuotaExceeded => (StatusCode::INSUFFICIENT_STORAGE, "RESOURCE_EXHAUSTED"),
            ErrorCode::Gone => (StatusCode::GONE, "RESOURCE_DOES_NOT_EXIST"),
            _ => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        };
        let message = if e.code == ErrorCode::Unauthenticated {
            format!("{} (MLflow clients send it from MLFLOW_TRACKING_TOKEN)", e.message)
        } else {
            e.message
        };
        MlflowFailure::new(status, code, message)
    }
}

impl From<ferry_store::StoreError> for MlflowFailure {
    fn from(e: ferry_store::StoreError) -> MlflowFailure {
        ApiError::from(e).into()
    }
}

pub(crate) type Answer<T> = Result<Json<T>, MlflowFailure>;
pub(crate) type Auth = Result<Tracker, ApiError>;
pub(crate) type Body = Result<Bytes, BytesRejection>;

/// The caller: a user, or a job with its tracking token (the route's guard admitted nobody else).
pub(crate) fn user(auth: Auth) -> Result<Tracker, MlflowFailure> {
    Ok(auth?)
}

pub(crate) fn denied(message: impl Into<String>) -> MlflowFailure {
    MlflowFailure::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message)
}

/// An experiment the caller may see; another team's is answered as missing.
pub(crate) async fn seen_experiment(
    state: &AppState,
    who: &Tracker,
    id: &str,
) -> Result<ExperimentRecord, MlflowFailure> {
    let found = find_experiment(state, id).await?;
    if !who.sees_experiment(&found) {
        return Err(MlflowFailure::not_found(format!("No Experiment with id={id} exists")));
    }
    Ok(found)
}

/// An experiment the caller may change.
async fn written_experiment(state: &AppState, who: &Tracker, id: &str) -> Result<ExperimentRecord, MlflowFailure> {
    let found = seen_experiment(state, who, id).await?;
    if !who.writes_experiment(&found) {
        return Err(denied(format!(
            "{} may not change experiment {id}: only its creator, an admin of its team or an installation admin may",
            who.name()
        )));
    }
    Ok(found)
}

/// A run the caller may see; another's is answered as missing.
pub(crate) async fn seen_run(state: &AppState, who: &Tracker, id: &str) -> Result<RunRecord, MlflowFailure> {
    let found = find_run(state, id).await?;
    if !who.sees_run(&found) {
        return Err(MlflowFailure::not_found(format!("Run with id={id} not found")));
    }
    Ok(found)
}

/// Checks that the caller may write to a run it sees.
pub(crate) fn may_write(who: &Tracker, run: &RunRecord) -> Result<(), MlflowFailure> {
    if who.writes_run(run) {
        Ok(())
    } else {
        Err(denied(format!(
            "{} may not change run {}: only its owner, an admin of its team or an installation admin may",
            who.name(),
            run.id
        )))
    }
}

/// A run the caller may write to.
pub(crate) async fn written_run(state: &AppState, who: &Tracker, id: &str) -> Result<RunRecord, MlflowFailure> {
    let found = seen_run(state, who, id).await?;
    may_write(who, &found)?;
    Ok(found)
}

/// A JSON body; an empty one reads as `{}`.
pub(crate) fn body<T: DeserializeOwned>(body: Body) -> Result<T, MlflowFailure> {
    let bytes = body.map_err(|e| {
        MlflowFailure::new(e.status(), "INVALID_PARAMETER_VALUE", format!("the request body could not be read: {e}"))
    })?;
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    serde_json::from_slice(text)
        .map_err(|e| MlflowFailure::invalid(format!("the request body is not valid for this endpoint: {e}")))
}

/// The query string's fields.
pub(crate) fn query<T: DeserializeOwned>(uri: &Uri) -> Result<T, MlflowFailure> {
    Query::try_from_uri(uri)
        .map(|Query(q)| q)
        .map_err(|e| MlflowFailure::invalid(format!("the query string is not valid for this endpoint: {e}")))
}

pub(crate) fn now_ms() -> i64 {
    crate::driver::now_us() / 1000
}

pub(crate) fn required<'a>(value: &'a Option<String>, field: &str) -> Result<&'a str, MlflowFailure> {
    value.as_deref().filter(|v| !v.is_empty()).ok_or_else(|| MlflowFailure::missing(field))
}

/// A run's id from `run_id` or the older `run_uuid`.
pub(crate) fn run_id<'a>(run_id: &'a Option<String>, run_uuid: &'a Option<String>) -> Result<&'a str, MlflowFailure> {
    run_id
        .as_deref()
        .filter(|v| !v.is_empty())
        .or(run_uuid.as_deref().filter(|v| !v.is_empty()))
        .ok_or_else(|| MlflowFailure::missing("run_id"))
}

pub(crate) fn experiment_id(text: &str) -> Result<i64, MlflowFailure> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| MlflowFailure::invalid(format!("Invalid experiment ID: '{text}'")))
}

/// Checks a metric, param or tag key as MLflow does: 1 to 250 characters of letters, digits, `_-. /:`, and a
/// normalized relative path (no `..`, no leading `/`, no empty part).
pub(crate) fn check_key(kind: &str, key: &str) -> Result<(), MlflowFailure> {
    if key.is_empty() {
        return Err(MlflowFailure::missing("key"));
    }
    if key.chars().count() > KEY_CHARS_MAX {
        return Err(MlflowFailure::invalid(format!(
            "{kind} '{}...' had length {}, which exceeded length limit of {KEY_CHARS_MAX}",
            key.chars().take(40).collect::<String>(),
            key.chars().count()
        )));
    }
    let chars_ok = key.chars().all(|c| c.is_alphanumeric() || "_-. /:".contains(c));
    let path_ok = !key.starts_with('/') && key.split('/').all(|part| !part.is_empty() && part != ".." && part != ".");
    if !chars_ok || !path_ok {
        return Err(MlflowFailure::invalid(format!(
            "Invalid {kind} name: '{key}'. Names may only contain alphanumerics, underscores (_), dashes (-), periods \
             (.), spaces ( ), colons (:) and slashes (/), and must be a normalized relative path"
        )));
    }
    Ok(())
}

pub(crate) fn check_value(kind: &str, key: &str, value: &str, max: usize) -> Result<(), MlflowFailure> {
    let length = value.chars().count();
    if length > max {
        return Err(MlflowFailure::invalid(format!(
            "{kind} '{key}' had a value of length {length}, which exceeded length limit of {max}"
        )));
    }
    Ok(())
}

/// A param or tag from a request, checked.
pub(crate) fn key_value(kind: &str, kv: &KeyValue, max: usize) -> Result<(String, String), MlflowFailure> {
    let key = kv.key.as_deref().unwrap_or("");
    check_key(kind, key)?;
    let value = kv.value.as_deref().ok_or_else(|| MlflowFailure::missing("value"))?;
    check_value(kind, key, value, max)?;
    Ok((key.to_string(), value.to_string()))
}

/// A metric value from a request, checked. The step defaults to 0; NaN and infinities are kept.
fn metric_point(m: &MetricIn) -> Result<MetricPoint, MlflowFailure> {
    let key = m.key.as_deref().unwrap_or("");
    check_key("Metric", key)?;
    let value = m.value.ok_or_else(|| MlflowFailure::missing("value"))?;
    let timestamp_ms = m.timestamp.ok_or_else(|| MlflowFailure::missing("timestamp"))?;
    Ok(MetricPoint { key: key.to_string(), value, timestamp_ms, step: m.step.unwrap_or(0) })
}

pub(crate) fn page_offset(token: &Option<String>) -> Result<i64, MlflowFailure> {
    match token.as_deref().filter(|t| !t.is_empty()) {
        None => Ok(0),
        Some(t) => t
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| MlflowFailure::invalid(format!("Invalid page token '{t}'"))),
    }
}

pub(crate) fn page_size(given: Option<i64>, default: i64, max: i64, what: &str) -> Result<i64, MlflowFailure> {
    match given {
        None => Ok(default),
        Some(n) if n >= 1 && n <= max => Ok(n),
        Some(n) => Err(MlflowFailure::invalid(format!(
            "Invalid value {n} for parameter 'max_results' supplied: {what} must be between 1 and {max}"
        ))),
    }
}

pub(crate) fn tags(pairs: &[(String, String)]) -> Vec<Tag> {
    pairs.iter().map(|(key, value)| Tag { key: key.clone(), value: value.clone() }).collect()
}

fn wire_experiment(e: ExperimentRecord) -> Experiment {
    Experiment {
        experiment_id: e.id.to_string(),
        name: e.name,
        artifact_location: e.artifact_location,
        lifecycle_stage: e.lifecycle_stage,
        last_update_time: e.updated_at_ms,
        creation_time: e.created_at_ms,
        tags: tags(&e.tags),
    }
}

fn wire_metric(m: &MetricPoint) -> Metric {
    Metric { key: m.key.clone(), value: m.value, timestamp: m.timestamp_ms, step: m.step }
}

fn wire_info(r: &RunRecord) -> RunInfo {
    RunInfo {
        run_id: r.id.clone(),
        run_uuid: r.id.clone(),
        run_name: r.name.clone(),
        experiment_id: r.experiment_id.to_string(),
        user_id: r.user_id.clone(),
        status: r.status.clone(),
        start_time: r.start_time_ms,
        end_time: r.end_time_ms,
        artifact_uri: r.artifact_uri.clone(),
        lifecycle_stage: r.lifecycle_stage.clone(),
    }
}

fn wire_run(r: &RunRecord, d: &StoredData) -> Run {
    Run {
        info: wire_info(r),
        data: RunData {
            metrics: d.metrics.iter().map(wire_metric).collect(),
            params: tags(&d.params),
            tags: tags(&d.tags),
        },
        inputs: RunInputs::default(),
    }
}

pub(crate) async fn find_experiment(state: &AppState, id: &str) -> Result<ExperimentRecord, MlflowFailure> {
    state
        .store
        .experiment(experiment_id(id)?)
        .await?
        .ok_or_else(|| MlflowFailure::not_found(format!("No Experiment with id={id} exists")))
}

pub(crate) async fn find_run(state: &AppState, id: &str) -> Result<RunRecord, MlflowFailure> {
    state.store.run(id).await?.ok_or_else(|| MlflowFailure::not_found(format!("Run with id={id} not found")))
}

/// A run that may be logged to: it exists and is not deleted.
pub(crate) async fn active_run(state: &AppState, id: &str) -> Result<RunRecord, MlflowFailure> {
    let run = find_run(state, id).await?;
    if run.lifecycle_stage != ACTIVE {
        return Err(MlflowFailure::invalid(format!(
            "The run {id} must be in the 'active' state. Current state is {}.",
            run.lifecycle_stage
        )));
    }
    Ok(run)
}

/// `GET /api/3.0/mlflow/server-info`: what the client asks before artifact uploads.
pub async fn server_info() -> Json<serde_json::Value> {
    Json(json!({ "store_type": "SqlStore", "multipart_uploads_enabled": false, "workspaces_enabled": false }))
}

/// Any other path under the MLflow prefixes: not implemented (yet), in MLflow's format.
pub async fn not_implemented(uri: Uri) -> MlflowFailure {
    MlflowFailure::new(
        StatusCode::NOT_FOUND,
        "ENDPOINT_NOT_FOUND",
        format!(
            "{} is not implemented by Ferry's MLflow-compatible API (the README lists what is); the model \
             registry, traces and datasets are not offered",
            uri.path()
        ),
    )
}

/// A known MLflow path called with the wrong method.
pub async fn wrong_method(method: axum::http::Method, uri: Uri) -> MlflowFailure {
    MlflowFailure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "BAD_REQUEST",
        format!("{} does not accept {method}; see MLflow's REST API reference", uri.path()),
    )
}

pub async fn create_experiment(
    State(state): State<AppState>,
    auth: Auth,
    raw: Body,
) -> Answer<CreateExperimentResponse> {
    let who = user(auth)?;
    let creator = who.user()?;
    let req: CreateExperiment = body(raw)?;
    let name = required(&req.name, "name")?.trim();
    if name.is_empty() || name.chars().count() > 500 {
        return Err(MlflowFailure::invalid("An experiment name must be 1 to 500 characters"));
    }
    let mut tag_pairs = Vec::new();
    for kv in req.tags.iter().flatten() {
        tag_pairs.push(key_value("Tag", kv, TAG_VALUE_CHARS_MAX)?);
    }
    let location = req.artifact_location.as_deref().filter(|l| !l.is_empty());
    if name.chars().any(char::is_control) {
        return Err(MlflowFailure::invalid("An experiment name may not hold control characters"));
    }
    let team = crate::auth::tracking_team(creator, None);
    let ownership = ferry_store::Ownership { owner: Some(&creator.name), team: team.as_deref() };
    let id =
        state.store.create_experiment(name, location, &tag_pairs, ownership, now_ms()).await?.ok_or_else(|| {
            MlflowFailure::exists(format!("Experiment(name={name}) already exists. Error: the name is taken"))
        })?;
    Ok(Json(CreateExperimentResponse { experiment_id: id.to_string() }))
}

pub async fn get_experiment(State(state): State<AppState>, auth: Auth, uri: Uri) -> Answer<ExperimentResponse> {
    let who = user(auth)?;
    let req: ExperimentRef = query(&uri)?;
    let id = required(&req.experiment_id, "experiment_id")?;
    Ok(Json(ExperimentResponse { experiment: wire_experiment(seen_experiment(&state, &who, id).await?) }))
}

pub async fn get_experiment_by_name(State(state): State<AppState>, auth: Auth, uri: Uri) -> Answer<ExperimentResponse> {
    let who = user(auth)?;
    let req: ExperimentByName = query(&uri)?;
    let name = required(&req.experiment_name, "experiment_name")?;
    let found = state
        .store
        .experiment_by_name(name)
        .await?
        .filter(|e| who.sees_experiment(e))
        .ok_or_else(|| MlflowFailure::not_found(format!("Could not find experiment with name '{name}'")))?;
    Ok(Json(ExperimentResponse { experiment: wire_experiment(found) }))
}

pub async fn update_experiment(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: UpdateExperiment = body(raw)?;
    let experiment = written_experiment(&state, &who, required(&req.experiment_id, "experiment_id")?).await?;
    let name = required(&req.new_name, "new_name")?.trim();
    if experiment.lifecycle_stage != ACTIVE {
        return Err(MlflowFailure::invalid("Cannot rename a non-active experiment."));
    }
    if !state.store.rename_experiment(experiment.id, name, now_ms()).await? {
        return Err(MlflowFailure::exists(format!("Experiment(name={name}) already exists.")));
    }
    Ok(Json(json!({})))
}

pub async fn delete_experiment(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    set_experiment_stage(state, auth, raw, DELETED).await
}

pub async fn restore_experiment(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    set_experiment_stage(state, auth, raw, ACTIVE).await
}

async fn set_experiment_stage(state: AppState, auth: Auth, raw: Body, stage: &str) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: ExperimentRef = body(raw)?;
    let experiment = written_experiment(&state, &who, required(&req.experiment_id, "experiment_id")?).await?;
    if experiment.id == 0 && stage == DELETED {
        return Err(MlflowFailure::invalid(
            "Cannot delete the default experiment '0'. This is an internally reserved ID.",
        ));
    }
    state.store.set_experiment_stage(experiment.id, stage, now_ms()).await?;
    Ok(Json(json!({})))
}

pub async fn set_experiment_tag(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: SetExperimentTag = body(raw)?;
    let experiment = written_experiment(&state, &who, required(&req.experiment_id, "experiment_id")?).await?;
    let (key, value) = key_value("Tag", &KeyValue { key: req.key, value: req.value }, TAG_VALUE_CHARS_MAX)?;
    state.store.set_experiment_tag(experiment.id, &key, &value).await?;
    Ok(Json(json!({})))
}

pub async fn search_experiments(
    State(state): State<AppState>,
    auth: Auth,
    raw: Body,
) -> Answer<SearchExperimentsResponse> {
    let who = user(auth)?;
    let req: SearchExperiments = body(raw)?;
    let limit = page_size(req.max_results, SEARCH_EXPERIMENTS_DEFAULT, SEARCH_EXPERIMENTS_MAX, "experiments")?;
    let offset = page_offset(&req.page_token)?;
    let stages = view_stages(req.view_type.as_deref())?;
    let clauses = parse_filter(req.filter.as_deref().unwrap_or(""))?;
    for c in &clauses {
        match &c.field {
            Field::Attribute(a) if a == "name" => {}
            Field::Tag(_) => {}
            other => {
                return Err(MlflowFailure::invalid(format!(
                    "Invalid filter for experiments: {}; only name and tags.<key> can be searched",
                    other.describe()
                )))
            }
        }
    }
    let orders = parse_order_by(req.order_by.as_deref().unwrap_or_default())?;
    for o in &orders {
        let ok = matches!(&o.field, Field::Attribute(a) if ["name", "experiment_id", "creation_time", "last_update_time"].contains(&a.as_str()));
        if !ok {
            return Err(MlflowFailure::invalid(format!(
                "Invalid order_by for experiments: {}; use name, experiment_id, creation_time or last_update_time",
                o.field.describe()
            )));
        }
    }
    let mut found: Vec<ExperimentRecord> = state
        .store
        .experiments()
        .await?
        .into_iter()
        .filter(|e| who.sees_experiment(e))
        .filter(|e| stages.contains(&e.lifecycle_stage.as_str()))
        .filter(|e| {
            clauses.iter().all(|c| match &c.field {
                Field::Tag(k) => c.matches_text(e.tags.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str())),
                _ => c.matches_text(Some(&e.name)),
            })
        })
        .collect();
    found.sort_by(|a, b| {
        for o in &orders {
            let Field::Attribute(name) = &o.field else { continue };
            let ord = match name.as_str() {
                "name" => a.name.cmp(&b.name),
                "experiment_id" => a.id.cmp(&b.id),
                "creation_time" => a.created_at_ms.cmp(&b.created_at_ms),
                _ => a.updated_at_ms.cmp(&b.updated_at_ms),
            };
            let ord = if o.ascending { ord } else { ord.reverse() };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id))
    });
    let (page, next_page_token) = paginate(found, offset, limit);
    Ok(Json(SearchExperimentsResponse {
        experiments: page.into_iter().map(wire_experiment).collect(),
        next_page_token,
    }))
}

fn view_stages(view: Option<&str>) -> Result<Vec<&'static str>, MlflowFailure> {
    match view.unwrap_or("ACTIVE_ONLY") {
        "ACTIVE_ONLY" | "1" | "" => Ok(vec![ACTIVE]),
        "DELETED_ONLY" | "2" => Ok(vec![DELETED]),
        "ALL" | "3" => Ok(vec![ACTIVE, DELETED]),
        other => {
            Err(MlflowFailure::invalid(format!("Invalid view type '{other}'; use ACTIVE_ONLY, DELETED_ONLY or ALL")))
        }
    }
}

/// One page of `all` from `offset`, and the token of the next page when there is one.
pub(crate) fn paginate<T>(all: Vec<T>, offset: i64, limit: i64) -> (Vec<T>, Option<String>) {
    let total = all.len();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(total);
    let count = usize::try_from(limit).unwrap_or(usize::MAX);
    let page: Vec<T> = all.into_iter().skip(start).take(count).collect();
    let end = start + page.len();
    let next = (end < total).then(|| end.to_string());
    (page, next)
}

pub async fn create_run(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<RunResponse> {
    let who = user(auth)?;
    let caller = who.user()?;
    let req: CreateRun = body(raw)?;
    let experiment =
        seen_experiment(&state, &who, req.experiment_id.as_deref().filter(|e| !e.is_empty()).unwrap_or("0")).await?;
    if experiment.lifecycle_stage != ACTIVE {
        return Err(MlflowFailure::invalid(format!(
            "The experiment {} must be in the 'active' state. Current state is {}.",
            experiment.id, experiment.lifecycle_stage
        )));
    }
    let mut tag_pairs: Vec<(String, String)> = Vec::new();
    for kv in req.tags.iter().flatten() {
        let pair = key_value("Tag", kv, TAG_VALUE_CHARS_MAX)?;
        tag_pairs.retain(|(k, _)| *k != pair.0);
        tag_pairs.push(pair);
    }
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let id = hex::encode(bytes);
    let tagged_name = tag_pairs.iter().find(|(k, _)| k == "mlflow.runName").map(|(_, v)| v.clone());
    let name = match req.run_name.filter(|n| !n.is_empty()).or(tagged_name) {
        Some(name) => name,
        None => format!("run-{}", &id[..8]),
    };
    check_value("Run name", "run_name", &name, KEY_CHARS_MAX)?;
    tag_pairs.retain(|(k, _)| k != "mlflow.runName");
    tag_pairs.push(("mlflow.runName".to_string(), name.clone()));
    let run = RunRecord {
        id: id.clone(),
        experiment_id: experiment.id,
        name,
        user_id: req.user_id.filter(|u| !u.is_empty()).unwrap_or_else(|| caller.name.clone()),
        status: "RUNNING".to_string(),
        start_time_ms: Some(req.start_time.unwrap_or_else(now_ms)),
        end_time_ms: None,
        artifact_uri: format!("{}/{id}/artifacts", experiment.artifact_location.trim_end_matches('/')),
        lifecycle_stage: ACTIVE.to_string(),
        owner: Some(caller.name.clone()),
        team: crate::auth::tracking_team(caller, experiment.team.as_deref()),
        project: None,
    };
    state.store.create_run(&run, &tag_pairs).await?;
    let data = state.store.run_data(&id).await?;
    Ok(Json(RunResponse { run: wire_run(&run, &data) }))
}

pub async fn get_run(State(state): State<AppState>, auth: Auth, uri: Uri) -> Answer<RunResponse> {
    let who = user(auth)?;
    let req: RunRef = query(&uri)?;
    let run = seen_run(&state, &who, run_id(&req.run_id, &req.run_uuid)?).await?;
    let data = state.store.run_data(&run.id).await?;
    Ok(Json(RunResponse { run: wire_run(&run, &data) }))
}

pub async fn update_run(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<UpdateRunResponse> {
    let who = user(auth)?;
    let req: UpdateRun = body(raw)?;
    written_run(&state, &who, run_id(&req.run_id, &req.run_uuid)?).await?;
    let run = active_run(&state, run_id(&req.run_id, &req.run_uuid)?).await?;
    let status = req.status.as_deref().filter(|s| !s.is_empty());
    if let Some(status) = status {
        if !RUN_STATUSES.contains(&status) {
            return Err(MlflowFailure::invalid(format!(
                "Invalid run status '{status}'; use one of {}",
                RUN_STATUSES.join(", ")
            )));
        }
    }
    let name = req.run_name.as_deref().filter(|n| !n.is_empty());
    if let Some(name) = name {
        check_value("Run name", "run_name", name, KEY_CHARS_MAX)?;
    }
    state.store.update_run(&run.id, status, req.end_time, name).await?;
    let run = find_run(&state, &run.id).await?;
    Ok(Json(UpdateRunResponse { run_info: wire_info(&run) }))
}

pub async fn delete_run(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    set_run_stage(state, auth, raw, DELETED).await
}

pub async fn restore_run(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    set_run_stage(state, auth, raw, ACTIVE).await
}

async fn set_run_stage(state: AppState, auth: Auth, raw: Body, stage: &str) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: RunRef = body(raw)?;
    let run = written_run(&state, &who, run_id(&req.run_id, &req.run_uuid)?).await?;
    state.store.set_run_stage(&run.id, stage).await?;
    Ok(Json(json!({})))
}

/// Logs to a run after every check, refusing a param whose value would change.
async fn log(
    state: &AppState,
    who: &Tracker,
    run: &str,
    metrics: &[MetricPoint],
    params: &[(String, String)],
    tags: &[(String, String)],
) -> Answer<serde_json::Value> {
    written_run(state, who, run).await?;
    let run = active_run(state, run).await?;
    if let Err(c) = state.store.log_batch(&run.id, metrics, params, tags).await? {
        return Err(MlflowFailure::invalid(format!(
            "Changing param values is not allowed. Param with key='{}' was already logged with value='{}' for run \
             ID='{}'. Attempted logging new value '{}'.",
            c.key, c.old, run.id, c.new
        )));
    }
    Ok(Json(json!({})))
}

pub async fn log_metric(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogMetric = body(raw)?;
    let run = run_id(&req.run_id, &req.run_uuid)?;
    let point = metric_point(&req.metric)?;
    log(&state, &who, run, &[point], &[], &[]).await
}

pub async fn log_parameter(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogKeyValue = body(raw)?;
    let run = run_id(&req.run_id, &req.run_uuid)?;
    let param = key_value("Param", &KeyValue { key: req.key, value: req.value }, PARAM_VALUE_CHARS_MAX)?;
    log(&state, &who, run, &[], &[param], &[]).await
}

pub async fn set_tag(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogKeyValue = body(raw)?;
    let run = run_id(&req.run_id, &req.run_uuid)?;
    let tag = key_value("Tag", &KeyValue { key: req.key, value: req.value }, TAG_VALUE_CHARS_MAX)?;
    if tag.0 == "mlflow.runName" {
        written_run(&state, &who, run).await?;
        let found = active_run(&state, run).await?;
        check_value("Run name", "run_name", &tag.1, KEY_CHARS_MAX)?;
        state.store.update_run(&found.id, None, None, Some(&tag.1)).await?;
        return Ok(Json(json!({})));
    }
    log(&state, &who, run, &[], &[], &[tag]).await
}

pub async fn delete_tag(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogKeyValue = body(raw)?;
    written_run(&state, &who, run_id(&req.run_id, &req.run_uuid)?).await?;
    let run = active_run(&state, run_id(&req.run_id, &req.run_uuid)?).await?;
    let key = required(&req.key, "key")?;
    if !state.store.delete_run_tag(&run.id, key).await? {
        return Err(MlflowFailure::not_found(format!("No tag with name: {key} in run with id {}", run.id)));
    }
    Ok(Json(json!({})))
}

pub async fn log_batch(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogBatch = body(raw)?;
    let run = required(&req.run_id, "run_id")?;
    let (metrics, params, tags) =
        (req.metrics.unwrap_or_default(), req.params.unwrap_or_default(), req.tags.unwrap_or_default());
    let too_many = |what: &str, n: usize, max: usize| {
        MlflowFailure::invalid(format!(
            "A batch logging request can contain at most {max} {what}. Got {n} {what}. Please split up {what} across \
             multiple requests and try again."
        ))
    };
    if metrics.len() > BATCH_METRICS_MAX {
        return Err(too_many("metrics", metrics.len(), BATCH_METRICS_MAX));
    }
    if params.len() > BATCH_PARAMS_MAX {
        return Err(too_many("params", params.len(), BATCH_PARAMS_MAX));
    }
    if tags.len() > BATCH_TAGS_MAX {
        return Err(too_many("tags", tags.len(), BATCH_TAGS_MAX));
    }
    let total = metrics.len() + params.len() + tags.len();
    if total > BATCH_ENTRIES_MAX {
        return Err(too_many("metrics, params and tags in total", total, BATCH_ENTRIES_MAX));
    }
    let points = metrics.iter().map(metric_point).collect::<Result<Vec<_>, _>>()?;
    let mut param_pairs: Vec<(String, String)> = Vec::new();
    for kv in &params {
        let (key, value) = key_value("Param", kv, PARAM_VALUE_CHARS_MAX)?;
        match param_pairs.iter().find(|(k, _)| *k == key) {
            Some((_, v)) if *v != value => {
                return Err(MlflowFailure::invalid(format!(
                    "Duplicate parameter keys have been submitted: '{key}' with different values"
                )))
            }
            Some(_) => {}
            None => param_pairs.push((key, value)),
        }
    }
    let mut tag_pairs: Vec<(String, String)> = Vec::new();
    for kv in &tags {
        let pair = key_value("Tag", kv, TAG_VALUE_CHARS_MAX)?;
        tag_pairs.retain(|(k, _)| *k != pair.0);
        tag_pairs.push(pair);
    }
    log(&state, &who, run, &points, &param_pairs, &tag_pairs).await
}

pub async fn metric_history(State(state): State<AppState>, auth: Auth, uri: Uri) -> Answer<MetricHistoryResponse> {
    let who = user(auth)?;
    let req: MetricHistory = query(&uri)?;
    let run = seen_run(&state, &who, run_id(&req.run_id, &req.run_uuid)?).await?;
    let key = required(&req.metric_key, "metric_key")?;
    let offset = page_offset(&req.page_token)?;
    let paged = req.max_results.is_some() || req.page_token.as_deref().is_some_and(|t| !t.is_empty());
    let limit = page_size(req.max_results, HISTORY_PAGE_MAX, HISTORY_PAGE_MAX, "the values of a metric")?;
    // Without paging the whole history is answered, as MLflow does; with it, one more tells whether a page follows.
    let fetch = if paged { limit + 1 } else { i64::MAX };
    let mut points = state.store.metric_history(&run.id, key, offset, fetch).await?;
    let next_page_token = (paged && points.len() as i64 > limit).then(|| {
        points.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        (offset + limit).to_string()
    });
    Ok(Json(MetricHistoryResponse { metrics: points.iter().map(wire_metric).collect(), next_page_token }))
}

pub async fn search_runs(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<SearchRunsResponse> {
    let who = user(auth)?;
    let req: SearchRuns = body(raw)?;
    let limit = page_size(req.max_results, SEARCH_RUNS_DEFAULT, SEARCH_RUNS_MAX, "runs")?;
    let offset = page_offset(&req.page_token)?;
    let stages = view_stages(req.run_view_type.as_deref())?;
    let clauses = parse_filter(req.filter.as_deref().unwrap_or(""))?;
    for c in &clauses {
        c.check_for_runs()?;
    }
    let orders = parse_order_by(req.order_by.as_deref().unwrap_or_default())?;
    for o in &orders {
        if let Field::Attribute(a) = &o.field {
            if sort_attribute(a).is_none() {
                return Err(MlflowFailure::invalid(format!(
                    "Invalid order_by attribute '{a}'; use start_time, end_time, run_name, status, user_id or run_id, \
                     or metrics.<key>, params.<key>, tags.<key>"
                )));
            }
        }
    }
    let mut seen = HashSet::new();
    let mut runs: Vec<(RunRecord, StoredData)> = Vec::new();
    for id in req.experiment_ids.iter().flatten() {
        let id = experiment_id(id)?;
        if seen.insert(id) {
            runs.extend(state.store.runs_of_experiment(id).await?);
        }
    }
    runs.retain(|(r, d)| {
        who.sees_run(r) && stages.contains(&r.lifecycle_stage.as_str()) && clauses.iter().all(|c| c.matches_run(r, d))
    });
    runs.sort_by(|a, b| compare_runs(&orders, a, b));
    let (page, next_page_token) = paginate(runs, offset, limit);
    Ok(Json(SearchRunsResponse { runs: page.iter().map(|(r, d)| wire_run(r, d)).collect(), next_page_token }))
}

/// What a filter clause or an order_by names.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Field {
    Metric(String),
    Param(String),
    Tag(String),
    Attribute(String),
}

impl Field {
    pub(crate) fn describe(&self) -> String {
        match self {
            Field::Metric(k) => format!("metrics.{k}"),
            Field::Param(k) => format!("params.{k}"),
            Field::Tag(k) => format!("tags.{k}"),
            Field::Attribute(k) => format!("attributes.{k}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Literal {
    Text(String),
    Number(f64),
}

/// One comparison of a filter: `metrics.loss < 0.5`, `params.lr = '0.1'`, `attributes.status = 'FINISHED'`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Clause {
    pub(crate) field: Field,
    pub(crate) op: String,
    pub(crate) value: Literal,
}

/// The attributes of a run that filters compare as numbers.
const NUMERIC_ATTRIBUTES: [&str; 2] = ["start_time", "end_time"];
/// The attributes of a run that filters compare as text.
const TEXT_ATTRIBUTES: [&str; 5] = ["status", "run_name", "run_id", "user_id", "artifact_uri"];

impl Clause {
    fn check_for_runs(&self) -> Result<(), MlflowFailure> {
        let numeric = ["=", "!=", ">", ">=", "<", "<="];
        let text = ["=", "!=", "LIKE", "ILIKE"];
        let (ops, want_number) = match &self.field {
            Field::Metric(_) => (&numeric[..], true),
            Field::Attribute(a) if NUMERIC_ATTRIBUTES.contains(&a.as_str()) => (&numeric[..], true),
            Field::Attribute(a) if !TEXT_ATTRIBUTES.contains(&a.as_str()) => {
                return Err(MlflowFailure::invalid(format!(
                    "Invalid attribute key '{a}' in the filter; searchable attributes are {} and {}",
                    TEXT_ATTRIBUTES.join(", "),
                    NUMERIC_ATTRIBUTES.join(", ")
                )))
            }
            _ => (&text[..], false),
        };
        if !ops.contains(&self.op.as_str()) {
            return Err(MlflowFailure::invalid(format!(
                "Invalid comparator '{}' for {}; use one of {}",
                self.op,
                self.field.describe(),
                ops.join(", ")
            )));
        }
        match (&self.value, want_number) {
            (Literal::Number(_), true) | (Literal::Text(_), false) => Ok(()),
            (_, true) => Err(MlflowFailure::invalid(format!(
                "Expected a numeric value for {} but got a string",
                self.field.describe()
            ))),
            (_, false) => Err(MlflowFailure::invalid(format!(
                "Expected a quoted string value for {} (such as '0.1')",
                self.field.describe()
            ))),
        }
    }

    pub(crate) fn matches_text(&self, actual: Option<&str>) -> bool {
        let (Some(actual), Literal::Text(want)) = (actual, &self.value) else { return false };
        match self.op.as_str() {
            "=" => actual == want,
            "!=" => actual != want,
            "LIKE" => like(actual, want),
            "ILIKE" => like(&actual.to_lowercase(), &want.to_lowercase()),
            _ => false,
        }
    }

    pub(crate) fn matches_number(&self, actual: Option<f64>) -> bool {
        let (Some(a), Literal::Number(b)) = (actual, &self.value) else { return false };
        match self.op.as_str() {
            "=" => a == *b,
            "!=" => a != *b,
            ">" => a > *b,
            ">=" => a >= *b,
            "<" => a < *b,
            "<=" => a <= *b,
            _ => false,
        }
    }

    fn matches_run(&self, run: &RunRecord, data: &StoredData) -> bool {
        let find = |pairs: &[(String, String)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        match &self.field {
            Field::Metric(k) => self.matches_number(data.metrics.iter().find(|m| &m.key == k).map(|m| m.value)),
            Field::Param(k) => self.matches_text(find(&data.params, k).as_deref()),
            Field::Tag(k) => self.matches_text(find(&data.tags, k).as_deref()),
            Field::Attribute(a) => match a.as_str() {
                "start_time" => self.matches_number(run.start_time_ms.map(|t| t as f64)),
                "end_time" => self.matches_number(run.end_time_ms.map(|t| t as f64)),
                other => self.matches_text(text_attribute(run, other)),
            },
        }
    }
}

fn text_attribute<'a>(run: &'a RunRecord, name: &str) -> Option<&'a str> {
    match name {
        "status" => Some(&run.status),
        "run_name" => Some(&run.name),
        "run_id" => Some(&run.id),
        "user_id" => Some(&run.user_id),
        "artifact_uri" => Some(&run.artifact_uri),
        _ => None,
    }
}

/// SQL's LIKE: `%` matches any run of characters, `_` any one character.
fn like(text: &str, pattern: &str) -> bool {
    let t: Vec<char> = text.chars().collect();
    let p: Vec<char> = pattern.chars().collect();
    // Positions in the pattern reachable after each prefix of the text.
    let mut reach = vec![false; p.len() + 1];
    reach[0] = true;
    let close = |reach: &mut Vec<bool>| {
        for i in 0..p.len() {
            if reach[i] && p[i] == '%' {
                reach[i + 1] = true;
            }
        }
    };
    close(&mut reach);
    for c in t {
        let mut next = vec![false; p.len() + 1];
        for i in 0..p.len() {
            if reach[i] {
                match p[i] {
                    '%' => next[i] = true,
                    '_' => next[i + 1] = true,
                    pc if pc == c => next[i + 1] = true,
                    _ => {}
                }
            }
        }
        close(&mut next);
        reach = next;
    }
    reach[p.len()]
}

/// A character-level reader of filter and order_by text.
struct Reader<'a> {
    chars: Vec<char>,
    at: usize,
    source: &'a str,
}

impl<'a> Reader<'a> {
    fn new(source: &'a str) -> Reader<'a> {
        Reader { chars: source.chars().collect(), at: 0, source }
    }

    fn skip_space(&mut self) {
        while self.chars.get(self.at).is_some_and(|c| c.is_whitespace()) {
            self.at += 1;
        }
    }

    fn done(&mut self) -> bool {
        self.skip_space();
        self.at >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn error(&self, what: &str) -> MlflowFailure {
        MlflowFailure::invalid(format!(
            "Error on parsing filter '{}': {what} at character {}",
            self.source,
            self.at + 1
        ))
    }

    /// A quoted string (`'...'`, `"..."` or `` `...` ``), without its quotes.
    fn quoted(&mut self) -> Result<String, MlflowFailure> {
        let quote = self.peek().ok_or_else(|| self.error("expected a quoted string"))?;
        self.at += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(c) if c == quote => {
                    self.at += 1;
                    return Ok(text);
                }
                Some(c) => {
                    text.push(c);
                    self.at += 1;
                }
            }
        }
    }

    /// A bare word: everything up to whitespace, a comparison sign or a quote.
    fn word(&mut self) -> String {
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || "=!<>'\"`".contains(c) {
                break;
            }
            text.push(c);
            self.at += 1;
        }
        text
    }

    /// `entity.key`, where the key may be quoted; a bare name is an attribute.
    fn field(&mut self) -> Result<Field, MlflowFailure> {
        self.skip_space();
        let first = self.word();
        let (entity, key) = match first.split_once('.') {
            Some((entity, "")) if matches!(self.peek(), Some('`' | '"')) => (entity.to_string(), self.quoted()?),
            Some((entity, key)) => (entity.to_string(), key.to_string()),
            None => ("attributes".to_string(), first.clone()),
        };
        if key.is_empty() {
            return Err(self.error("expected a name such as metrics.loss, params.lr or attributes.status"));
        }
        match entity.to_lowercase().as_str() {
            "metric" | "metrics" => Ok(Field::Metric(key)),
            "param" | "params" | "parameter" | "parameters" => Ok(Field::Param(key)),
            "tag" | "tags" => Ok(Field::Tag(key)),
            "attribute" | "attributes" | "attr" | "run" => Ok(Field::Attribute(key)),
            other => Err(self.error(&format!("unknown entity '{other}'; use metrics., params., tags. or attributes."))),
        }
    }

    fn comparator(&mut self) -> Result<String, MlflowFailure> {
        self.skip_space();
        for op in [">=", "<=", "!=", "=", ">", "<"] {
            let len = op.chars().count();
            if self.chars.get(self.at..self.at + len).is_some_and(|s| s.iter().copied().eq(op.chars())) {
                self.at += len;
                return Ok(op.to_string());
            }
        }
        let word = self.word().to_uppercase();
        match word.as_str() {
            "LIKE" | "ILIKE" => Ok(word),
            "" => Err(self.error("expected a comparator (=, !=, >, >=, <, <=, LIKE, ILIKE)")),
            other => Err(self.error(&format!("unsupported comparator '{other}'"))),
        }
    }

    fn literal(&mut self) -> Result<Literal, MlflowFailure> {
        self.skip_space();
        match self.peek() {
            Some('\'' | '"') => Ok(Literal::Text(self.quoted()?)),
            _ => {
                let word = self.word();
                word.parse::<f64>()
                    .map(Literal::Number)
                    .map_err(|_| self.error(&format!("expected a number or a quoted string, got '{word}'")))
            }
        }
    }

    /// The keyword `AND` (any case) between clauses.
    fn and(&mut self) -> Result<(), MlflowFailure> {
        self.skip_space();
        let word = self.word();
        if word.eq_ignore_ascii_case("and") {
            Ok(())
        } else {
            Err(self.error(&format!("expected AND between conditions, got '{word}' (OR is not supported)")))
        }
    }
}

/// Parses a filter: comparisons joined by AND.
pub(crate) fn parse_filter(text: &str) -> Result<Vec<Clause>, MlflowFailure> {
    if text.chars().count() > FILTER_CHARS_MAX {
        return Err(MlflowFailure::invalid(format!("A filter may be at most {FILTER_CHARS_MAX} characters long")));
    }
    let mut reader = Reader::new(text);
    let mut clauses = Vec::new();
    while !reader.done() {
        if !clauses.is_empty() {
            reader.and()?;
        }
        let field = reader.field()?;
        let op = reader.comparator()?;
        let value = reader.literal()?;
        clauses.push(Clause { field, op, value });
    }
    Ok(clauses)
}

/// One order_by: a field and its direction.
struct Order {
    field: Field,
    ascending: bool,
}

fn parse_order_by(items: &[String]) -> Result<Vec<Order>, MlflowFailure> {
    let mut orders = Vec::new();
    for item in items {
        let mut reader = Reader::new(item);
        let field = reader.field()?;
        reader.skip_space();
        let direction = reader.word().to_uppercase();
        let ascending = match direction.as_str() {
            "" | "ASC" => true,
            "DESC" => false,
            other => return Err(reader.error(&format!("expected ASC or DESC, got '{other}'"))),
        };
        if !reader.done() {
            return Err(reader.error("unexpected text after the direction"));
        }
        orders.push(Order { field, ascending });
    }
    Ok(orders)
}

/// A value runs are sorted by.
#[derive(PartialEq, PartialOrd)]
enum SortValue {
    Number(f64),
    Text(String),
}

/// The name of the run attribute an order_by may use (`created` is MLflow's alias of `start_time`).
fn sort_attribute(name: &str) -> Option<&'static str> {
    match name {
        "start_time" | "created" => Some("start_time"),
        "end_time" => Some("end_time"),
        "run_name" => Some("run_name"),
        "status" => Some("status"),
        "user_id" => Some("user_id"),
        "run_id" => Some("run_id"),
        _ => None,
    }
}

fn sort_value(field: &Field, run: &RunRecord, data: &StoredData) -> Option<SortValue> {
    let find = |pairs: &[(String, String)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match field {
        Field::Metric(k) => data.metrics.iter().find(|m| &m.key == k).map(|m| SortValue::Number(m.value)),
        Field::Param(k) => find(&data.params, k).map(SortValue::Text),
        Field::Tag(k) => find(&data.tags, k).map(SortValue::Text),
        Field::Attribute(a) => match sort_attribute(a)? {
            "start_time" => run.start_time_ms.map(|t| SortValue::Number(t as f64)),
            "end_time" => run.end_time_ms.map(|t| SortValue::Number(t as f64)),
            other => text_attribute(run, other).map(|t| SortValue::Text(t.to_string())),
        },
    }
}

/// Orders runs by each order_by in turn, runs without the value last; then newest first, then by id.
fn compare_runs(orders: &[Order], a: &(RunRecord, StoredData), b: &(RunRecord, StoredData)) -> Ordering {
    for o in orders {
        let (x, y) = (sort_value(&o.field, &a.0, &a.1), sort_value(&o.field, &b.0, &b.1));
        let ord = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let ord = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
                if o.ascending {
                    ord
                } else {
                    ord.reverse()
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    b.0.start_time_ms.cmp(&a.0.start_time_ms).then_with(|| a.0.id.cmp(&b.0.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_the_supported_subset() {
        let clauses = parse_filter(
            "metrics.loss > 1 and params.lr = '0.1' AND tags.`my tag` = \"v\" AND attributes.status = 'FINISHED'",
        )
        .unwrap();
        assert_eq!(clauses.len(), 4);
        assert_eq!(
            clauses[0],
            Clause { field: Field::Metric("loss".into()), op: ">".into(), value: Literal::Number(1.0) }
        );
        assert_eq!(clauses[2].field, Field::Tag("my tag".into()));
        assert_eq!(clauses[3].field, Field::Attribute("status".into()));
        assert!(parse_filter("metrics.loss > 1 OR metrics.loss < 0").is_err());
        assert!(parse_filter("params.lr = '0.1").is_err());
        assert!(parse_filter("bogus.x = 1").is_err());
        assert!(parse_filter("").unwrap().is_empty());
        let c = &parse_filter("metrics.loss = 'x'").unwrap()[0];
        assert!(c.check_for_runs().is_err(), "a metric compares with a number");
    }

    #[test]
    fn like_matches_sql_wildcards() {
        assert!(like("train-loss", "train%"));
        assert!(like("train-loss", "%loss"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_"));
        assert!(like("", "%"));
    }

    #[test]
    fn keys_are_checked_as_mlflow_does() {
        assert!(check_key("Param", "lr").is_ok());
        assert!(check_key("Tag", "mlflow.source.name").is_ok());
        assert!(check_key("Metric", "a/b c:d-e_f").is_ok());
        for bad in ["", "../x", "/abs", "a//b", "a;b", &"k".repeat(251)] {
            assert!(check_key("Param", bad).is_err(), "{bad}");
        }
    }
}
