//! MLflow 3's logged models (`/api/2.0/mlflow/logged-models/...`) and the run calls that tie runs to models
//! (`runs/outputs`, `runs/log-inputs`, `runs/log-model`): what `mlflow.<flavor>.log_model` and loading a model by
//! `models:/<id>` or `runs:/<run>/<name>` call, in MLflow's shapes and error format.
//!
//! A model is created PENDING with the artifact URI `mlflow-artifacts:/<experiment>/models/<id>/artifacts`, its
//! files are uploaded through the artifact endpoints, and the client finalizes it READY (or UPLOAD_FAILED).
//! Searching supports filters joined by AND over `name`, `model_id`, `status`, `source_run_id`, `model_type`,
//! `creation_timestamp`, `last_updated_timestamp`, `tags.<key>` and `params.<key>`; not metrics or datasets.

use std::cmp::Ordering;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::Json;
use ferry_api::tracking::*;
use ferry_store::{LoggedModelRecord, RunModelDirection};
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Tracker;
use crate::routes::mlflow::{
    active_run, body, denied, experiment_id, key_value, now_ms, page_offset, page_size, paginate, parse_filter, query,
    required, seen_experiment, tags, user, written_run, Answer, Auth, Body, Clause, Field, Literal, MlflowFailure,
    ACTIVE, DELETED,
};
use crate::state::AppState;

/// The most models one search answers by default, and the most it may be asked for.
const SEARCH_MODELS_DEFAULT: i64 = 100;
const SEARCH_MODELS_MAX: i64 = 1000;
/// The most tags or params one request may set, and models one `runs/outputs` may name.
const PAIRS_MAX: usize = 1000;
/// The tag where `runs/log-model` keeps a run's logged models (MLflow 2's record), and its longest value.
const LOG_MODEL_HISTORY_TAG: &str = "mlflow.log-model.history";
const LOG_MODEL_JSON_BYTES_MAX: usize = 1 << 20;
/// What a model's status is stored as, and its name on the wire.
const STATUSES: [(&str, &str, i64); 3] = [
    ("PENDING", "LOGGED_MODEL_PENDING", 1),
    ("READY", "LOGGED_MODEL_READY", 2),
    ("UPLOAD_FAILED", "LOGGED_MODEL_UPLOAD_FAILED", 3),
];
const TEXT_ATTRIBUTES: [&str; 5] = ["name", "model_id", "status", "source_run_id", "model_type"];
const NUMERIC_ATTRIBUTES: [&str; 2] = ["creation_timestamp", "last_updated_timestamp"];

fn wire_status(stored: &str) -> String {
    STATUSES.iter().find(|(s, _, _)| *s == stored).map(|(_, w, _)| w.to_string()).unwrap_or_default()
}

/// A status as the client sends it: the enum's name (with or without its prefix) or number.
fn parse_status(text: &str) -> Result<&'static str, MlflowFailure> {
    STATUSES
        .iter()
        .find(|(short, wire, number)| text == *short || text == *wire || text == number.to_string())
        .map(|(short, _, _)| *short)
        .ok_or_else(|| {
            MlflowFailure::invalid(format!(
                "Invalid logged model status '{text}'; use LOGGED_MODEL_READY or LOGGED_MODEL_UPLOAD_FAILED"
            ))
        })
}

fn wire_model(m: &LoggedModelRecord) -> LoggedModel {
    LoggedModel {
        info: LoggedModelInfo {
            model_id: m.id.clone(),
            experiment_id: m.experiment_id.to_string(),
            name: m.name.clone(),
            creation_timestamp_ms: m.created_at_ms,
            last_updated_timestamp_ms: m.updated_at_ms,
            artifact_uri: m.artifact_uri.clone(),
            status: wire_status(&m.status),
            model_type: m.model_type.clone(),
            source_run_id: m.source_run_id.clone(),
            status_message: m.status_message.clone(),
            tags: tags(&m.tags),
        },
        data: LoggedModelData { params: tags(&m.params), metrics: Vec::new() },
    }
}

fn model_id_param(path: Result<Path<String>, PathRejection>) -> Result<String, MlflowFailure> {
    path.map(|Path(p)| p).map_err(|e| MlflowFailure::invalid(format!("the model id could not be read: {e}")))
}

/// A model that exists (deleted ones only when `allow_deleted`).
async fn find_model(state: &AppState, id: &str, allow_deleted: bool) -> Result<LoggedModelRecord, MlflowFailure> {
    match state.store.logged_model(id).await? {
        Some(m) if allow_deleted || m.lifecycle_stage == ACTIVE => Ok(m),
        _ => Err(MlflowFailure::not_found(format!("Logged model with ID '{id}' not found"))),
    }
}

/// Whether the caller sees a logged model, and may change it: it sees the model's experiment and the run that
/// logged it (a job: its own run only); it changes it where it may write to that run, or, for a model no run
/// logged, to the experiment.
async fn model_access(state: &AppState, who: &Tracker, m: &LoggedModelRecord) -> Result<(bool, bool), MlflowFailure> {
    let Some(experiment) = state.store.experiment(m.experiment_id).await? else { return Ok((false, false)) };
    if !who.sees_experiment(&experiment) {
        return Ok((false, false));
    }
    match &m.source_run_id {
        Some(run) => match state.store.run(run).await? {
            Some(run) => Ok((who.sees_run(&run), who.writes_run(&run))),
            None => Ok((false, false)),
        },
        None => Ok((matches!(who, Tracker::User(_)), who.writes_experiment(&experiment))),
    }
}

/// A logged model the caller sees (another's is answered as missing) and, with `write`, may change.
pub(crate) async fn allowed_model(
    state: &AppState,
    who: &Tracker,
    id: &str,
    allow_deleted: bool,
    write: bool,
) -> Result<LoggedModelRecord, MlflowFailure> {
    let model = find_model(state, id, allow_deleted).await?;
    let (sees, writes) = model_access(state, who, &model).await?;
    if !sees {
        return Err(MlflowFailure::not_found(format!("Logged model with ID '{id}' not found")));
    }
    if write && !writes {
        return Err(denied(format!("{} may not change logged model {id}", who.name())));
    }
    Ok(model)
}

fn pairs(kind: &str, given: &Option<Vec<KeyValue>>) -> Result<Vec<(String, String)>, MlflowFailure> {
    let given = given.as_deref().unwrap_or_default();
    if given.len() > PAIRS_MAX {
        return Err(MlflowFailure::invalid(format!("at most {PAIRS_MAX} {kind}s per request; {} given", given.len())));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for kv in given {
        let pair = key_value(kind, kv, TAG_VALUE_CHARS_MAX)?;
        out.retain(|(k, _)| *k != pair.0);
        out.push(pair);
    }
    Ok(out)
}

/// `POST /api/2.0/mlflow/logged-models`.
pub async fn create(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<LoggedModelResponse> {
    let who = user(auth)?;
    let req: CreateLoggedModel = body(raw)?;
    let experiment = seen_experiment(&state, &who, required(&req.experiment_id, "experiment_id")?).await?;
    if experiment.lifecycle_stage != ACTIVE {
        return Err(MlflowFailure::invalid(format!(
            "The experiment {} must be in the 'active' state. Current state is {}.",
            experiment.id, experiment.lifecycle_stage
        )));
    }
    let source_run_id = req.source_run_id.filter(|r| !r.is_empty());
    match &source_run_id {
        Some(run) => {
            written_run(&state, &who, run).await?;
            active_run(&state, run).await?;
        }
        // A job logs models from its own run only.
        None => {
            who.user()?;
        }
    }
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let id = format!("m-{}", hex::encode(bytes));
    let name = req.name.filter(|n| !n.is_empty()).unwrap_or_else(|| format!("model-{}", &id[2..10]));
    if name.chars().count() > KEY_CHARS_MAX || name.contains('/') || name.chars().any(char::is_control) {
        return Err(MlflowFailure::invalid(format!(
            "Invalid model name '{name}': at most {KEY_CHARS_MAX} characters, without '/'"
        )));
    }
    let now = now_ms();
    let model = LoggedModelRecord {
        artifact_uri: format!("{}/models/{id}/artifacts", experiment.artifact_location.trim_end_matches('/')),
        id,
        experiment_id: experiment.id,
        name,
        status: "PENDING".to_string(),
        status_message: None,
        model_type: req.model_type.filter(|t| !t.is_empty()),
        source_run_id,
        lifecycle_stage: ACTIVE.to_string(),
        created_at_ms: now,
        updated_at_ms: now,
        tags: pairs("Tag", &req.tags)?,
        params: pairs("Param", &req.params)?,
    };
    state.store.create_logged_model(&model).await?;
    Ok(Json(LoggedModelResponse { model: wire_model(&model) }))
}

#[derive(Debug, Default, Deserialize)]
struct GetQuery {
    #[serde(default)]
    allow_deleted: Option<String>,
}

/// `GET /api/2.0/mlflow/logged-models/{model_id}`.
pub async fn get_model(
    State(state): State<AppState>,
    auth: Auth,
    uri: Uri,
    path: Result<Path<String>, PathRejection>,
) -> Answer<LoggedModelResponse> {
    let who = user(auth)?;
    let id = model_id_param(path)?;
    let q: GetQuery = query(&uri)?;
    let allow_deleted = q.allow_deleted.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let model = allowed_model(&state, &who, &id, allow_deleted, false).await?;
    Ok(Json(LoggedModelResponse { model: wire_model(&model) }))
}

/// `PATCH /api/2.0/mlflow/logged-models/{model_id}`: finalizes the model's status.
pub async fn finalize(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<String>, PathRejection>,
    raw: Body,
) -> Answer<LoggedModelResponse> {
    let who = user(auth)?;
    let id = model_id_param(path)?;
    let req: FinalizeLoggedModel = body(raw)?;
    let status = parse_status(required(&req.status, "status")?)?;
    allowed_model(&state, &who, &id, false, true).await?;
    state.store.set_logged_model_status(&id, status, now_ms()).await?;
    let model = find_model(&state, &id, false).await?;
    Ok(Json(LoggedModelResponse { model: wire_model(&model) }))
}

/// `DELETE /api/2.0/mlflow/logged-models/{model_id}`: marks the model deleted (its artifacts stay, as MLflow's).
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<String>, PathRejection>,
) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let id = model_id_param(path)?;
    // The right to delete is checked before whether it already is, so a refusal never depends on the order.
    let model = allowed_model(&state, &who, &id, true, true).await?;
    if model.lifecycle_stage != ACTIVE {
        return Err(MlflowFailure::not_found(format!("Logged model with ID '{id}' not found")));
    }
    state.store.set_logged_model_stage(&id, DELETED, now_ms()).await?;
    Ok(Json(json!({})))
}

/// `PATCH /api/2.0/mlflow/logged-models/{model_id}/tags`.
pub async fn set_tags(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<String>, PathRejection>,
    raw: Body,
) -> Answer<LoggedModelResponse> {
    set_pairs(state, auth, path, raw, false).await
}

/// `POST /api/2.0/mlflow/logged-models/{model_id}/params`.
pub async fn log_params(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<String>, PathRejection>,
    raw: Body,
) -> Answer<LoggedModelResponse> {
    set_pairs(state, auth, path, raw, true).await
}

async fn set_pairs(
    state: AppState,
    auth: Auth,
    path: Result<Path<String>, PathRejection>,
    raw: Body,
    params: bool,
) -> Answer<LoggedModelResponse> {
    let who = user(auth)?;
    let id = model_id_param(path)?;
    let req: LoggedModelKeyValues = body(raw)?;
    let given = if params { pairs("Param", &req.params)? } else { pairs("Tag", &req.tags)? };
    allowed_model(&state, &who, &id, false, true).await?;
    state.store.set_logged_model_pairs(&id, params, &given, now_ms()).await?;
    let model = find_model(&state, &id, false).await?;
    Ok(Json(LoggedModelResponse { model: wire_model(&model) }))
}

/// `DELETE /api/2.0/mlflow/logged-models/{model_id}/tags/{tag_key}`.
pub async fn delete_tag(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let (id, key) =
        path.map(|Path(p)| p).map_err(|e| MlflowFailure::invalid(format!("the path could not be read: {e}")))?;
    allowed_model(&state, &who, &id, false, true).await?;
    if !state.store.delete_logged_model_tag(&id, &key).await? {
        return Err(MlflowFailure::not_found(format!("No tag with key '{key}' on logged model '{id}'")));
    }
    Ok(Json(json!({})))
}

/// Checks a search filter's clauses against what models have.
fn check_clause(c: &Clause) -> Result<(), MlflowFailure> {
    let numeric = match &c.field {
        Field::Attribute(a) if NUMERIC_ATTRIBUTES.contains(&a.as_str()) => true,
        Field::Attribute(a) if TEXT_ATTRIBUTES.contains(&a.as_str()) => false,
        Field::Tag(_) | Field::Param(_) => false,
        other => {
            return Err(MlflowFailure::invalid(format!(
                "Ferry cannot search logged models by {}; it searches by {}, {}, tags.<key> and params.<key>",
                other.describe(),
                TEXT_ATTRIBUTES.join(", "),
                NUMERIC_ATTRIBUTES.join(", ")
            )))
        }
    };
    let ops: &[&str] = if numeric { &["=", "!=", ">", ">=", "<", "<="] } else { &["=", "!=", "LIKE", "ILIKE"] };
    if !ops.contains(&c.op.as_str()) {
        return Err(MlflowFailure::invalid(format!(
            "Invalid comparator '{}' for {}; use one of {}",
            c.op,
            c.field.describe(),
            ops.join(", ")
        )));
    }
    match (&c.value, numeric) {
        (Literal::Number(_), true) | (Literal::Text(_), false) => Ok(()),
        _ => Err(MlflowFailure::invalid(format!("The value for {} has the wrong type", c.field.describe()))),
    }
}

fn matches(c: &Clause, m: &LoggedModelRecord) -> bool {
    let find = |pairs: &[(String, String)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    match &c.field {
        Field::Tag(k) => c.matches_text(find(&m.tags, k).as_deref()),
        Field::Param(k) => c.matches_text(find(&m.params, k).as_deref()),
        Field::Attribute(a) => match a.as_str() {
            "creation_timestamp" => c.matches_number(Some(m.created_at_ms as f64)),
            "last_updated_timestamp" => c.matches_number(Some(m.updated_at_ms as f64)),
            "name" => c.matches_text(Some(&m.name)),
            "model_id" => c.matches_text(Some(&m.id)),
            "model_type" => c.matches_text(m.model_type.as_deref()),
            "source_run_id" => c.matches_text(m.source_run_id.as_deref()),
            "status" => {
                let wire = matches!(&c.value, Literal::Text(t) if t.starts_with("LOGGED_MODEL_"));
                c.matches_text(Some(&if wire { wire_status(&m.status) } else { m.status.clone() }))
            }
            _ => false,
        },
        Field::Metric(_) => false,
    }
}

fn compare(field: &str, a: &LoggedModelRecord, b: &LoggedModelRecord) -> Ordering {
    match field {
        "name" => a.name.cmp(&b.name),
        "model_id" => a.id.cmp(&b.id),
        "last_updated_timestamp" => a.updated_at_ms.cmp(&b.updated_at_ms),
        _ => a.created_at_ms.cmp(&b.created_at_ms),
    }
}

/// `POST /api/2.0/mlflow/logged-models/search`.
pub async fn search(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<SearchLoggedModelsResponse> {
    let who = user(auth)?;
    let req: SearchLoggedModels = body(raw)?;
    let ids = req.experiment_ids.unwrap_or_default();
    if ids.is_empty() {
        return Err(MlflowFailure::missing("experiment_ids"));
    }
    if req.datasets.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(MlflowFailure::invalid("Ferry cannot search logged models by datasets"));
    }
    let experiment_ids = ids.iter().map(|id| experiment_id(id)).collect::<Result<Vec<_>, _>>()?;
    let clauses = parse_filter(req.filter.as_deref().unwrap_or(""))?;
    clauses.iter().try_for_each(check_clause)?;
    let mut orders = Vec::new();
    for o in req.order_by.iter().flatten() {
        let field = o.field_name.as_deref().unwrap_or("");
        if !["name", "model_id", "creation_timestamp", "last_updated_timestamp"].contains(&field) {
            return Err(MlflowFailure::invalid(format!(
                "Ferry cannot order logged models by '{field}'; use name, model_id, creation_timestamp or \
                 last_updated_timestamp"
            )));
        }
        orders.push((field.to_string(), o.ascending.unwrap_or(true)));
    }
    if orders.is_empty() {
        orders.push(("creation_timestamp".to_string(), false));
    }
    let offset = page_offset(&req.page_token)?;
    let limit = page_size(req.max_results, SEARCH_MODELS_DEFAULT, SEARCH_MODELS_MAX, "max_results")?;
    let mut models: Vec<LoggedModelRecord> = Vec::new();
    for m in state.store.logged_models(&experiment_ids, ACTIVE).await? {
        if clauses.iter().all(|c| matches(c, &m)) && model_access(&state, &who, &m).await?.0 {
            models.push(m);
        }
    }
    models.sort_by(|a, b| {
        orders
            .iter()
            .map(|(f, asc)| if *asc { compare(f, a, b) } else { compare(f, b, a) })
            .find(|o| o.is_ne())
            .unwrap_or_else(|| a.id.cmp(&b.id))
    });
    let (page, next_page_token) = paginate(models, offset, limit);
    Ok(Json(SearchLoggedModelsResponse { models: page.iter().map(wire_model).collect(), next_page_token }))
}

async fn log_run_models(
    state: &AppState,
    who: &Tracker,
    req: LogRunModels,
    direction: RunModelDirection,
) -> Answer<serde_json::Value> {
    written_run(state, who, required(&req.run_id, "run_id")?).await?;
    let run = active_run(state, required(&req.run_id, "run_id")?).await?;
    let models = req.models.unwrap_or_default();
    if models.len() > PAIRS_MAX {
        return Err(MlflowFailure::invalid(format!("at most {PAIRS_MAX} models per request")));
    }
    let mut refs = Vec::with_capacity(models.len());
    for m in &models {
        let id = required(&m.model_id, "model_id")?;
        allowed_model(state, who, id, false, false).await?;
        refs.push((id.to_string(), m.step.unwrap_or(0)));
    }
    state.store.log_run_models(&run.id, direction, &refs).await?;
    Ok(Json(json!({})))
}

/// `POST /api/2.0/mlflow/runs/outputs`: the models a run produced.
pub async fn log_outputs(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogRunModels = body(raw)?;
    log_run_models(&state, &who, req, RunModelDirection::Output).await
}

/// `POST /api/2.0/mlflow/runs/log-inputs`: the models a run used. Datasets are not recorded, and a request with
/// datasets is refused rather than half done.
pub async fn log_inputs(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogRunModels = body(raw)?;
    if req.datasets.as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(MlflowFailure::new(
            StatusCode::NOT_IMPLEMENTED,
            "NOT_IMPLEMENTED",
            "Ferry does not record dataset inputs of runs yet; model inputs are recorded",
        ));
    }
    log_run_models(&state, &who, req, RunModelDirection::Input).await
}

#[derive(Debug, Default, Deserialize)]
struct LogModel {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    model_json: Option<String>,
}

/// `POST /api/2.0/mlflow/runs/log-model`: appends the model's description to the run's
/// `mlflow.log-model.history` tag, as MLflow's stores do.
pub async fn log_model(State(state): State<AppState>, auth: Auth, raw: Body) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let req: LogModel = body(raw)?;
    written_run(&state, &who, required(&req.run_id, "run_id")?).await?;
    let run = active_run(&state, required(&req.run_id, "run_id")?).await?;
    let text = required(&req.model_json, "model_json")?;
    if text.len() > LOG_MODEL_JSON_BYTES_MAX {
        return Err(MlflowFailure::invalid(format!("model_json is larger than {LOG_MODEL_JSON_BYTES_MAX} bytes")));
    }
    let model: serde_json::Value =
        serde_json::from_str(text).map_err(|e| MlflowFailure::invalid(format!("model_json is not valid JSON: {e}")))?;
    let data = state.store.run_data(&run.id).await?;
    let mut history: Vec<serde_json::Value> = data
        .tags
        .iter()
        .find(|(k, _)| k == LOG_MODEL_HISTORY_TAG)
        .and_then(|(_, v)| serde_json::from_str(v).ok())
        .unwrap_or_default();
    history.push(model);
    let value = serde_json::Value::Array(history).to_string();
    state
        .store
        .log_batch(&run.id, &[], &[], &[(LOG_MODEL_HISTORY_TAG.to_string(), value)])
        .await?
        .map_err(|c| MlflowFailure::invalid(format!("could not record the model: the param {} conflicts", c.key)))?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_every_form_the_client_sends() {
        for (text, want) in [("LOGGED_MODEL_READY", "READY"), ("READY", "READY"), ("3", "UPLOAD_FAILED")] {
            assert_eq!(parse_status(text).ok(), Some(want));
        }
        assert!(parse_status("DONE").is_err());
        assert_eq!(wire_status("PENDING"), "LOGGED_MODEL_PENDING");
    }
}
