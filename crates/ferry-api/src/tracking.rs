//! Wire types of the MLflow-compatible tracking API (`/api/2.0/mlflow/...`): requests and answers with MLflow's
//! field names and JSON shapes, so the official `mlflow` client works against Ferry unchanged.
//!
//! MLflow's messages are protobuf, written as protobuf's JSON: 64-bit integers may come as numbers or strings, and a
//! double that is not finite is the string `"NaN"`, `"Infinity"` or `"-Infinity"`. Requests accept every such form;
//! answers write integers as numbers (as MLflow's server does) and non-finite doubles as those strings. Every request
//! field is optional here, so the server can say which required field is missing in MLflow's error format.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The most metrics one `runs/log-batch` may carry.
pub const BATCH_METRICS_MAX: usize = 1000;
/// The most params one `runs/log-batch` may carry.
pub const BATCH_PARAMS_MAX: usize = 100;
/// The most tags one `runs/log-batch` may carry.
pub const BATCH_TAGS_MAX: usize = 100;
/// The most metrics, params and tags one `runs/log-batch` may carry together.
pub const BATCH_ENTRIES_MAX: usize = 1000;
/// The longest key of a metric, param or tag, in characters.
pub const KEY_CHARS_MAX: usize = 250;
/// The longest param value, in characters.
pub const PARAM_VALUE_CHARS_MAX: usize = 6000;
/// The longest tag value, in characters.
pub const TAG_VALUE_CHARS_MAX: usize = 8000;

/// MLflow's error body: `{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlflowError {
    pub error_code: String,
    pub message: String,
}

/// A key and a value: a param, or a tag of a run or an experiment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// A key and a value as answered: both always present.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// One value of a metric as a request gives it.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct MetricIn {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub value: Option<f64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub timestamp: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub step: Option<i64>,
}

/// One value of a metric as answered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metric {
    pub key: String,
    #[serde(serialize_with = "proto_f64")]
    pub value: f64,
    pub timestamp: i64,
    pub step: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    pub artifact_location: String,
    pub lifecycle_stage: String,
    pub last_update_time: i64,
    pub creation_time: i64,
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    /// The older name of `run_id`, still read by clients.
    pub run_uuid: String,
    pub run_name: String,
    pub experiment_id: String,
    pub user_id: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<i64>,
    pub artifact_uri: String,
    pub lifecycle_stage: String,
}

/// A run's latest metrics, params and tags.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunData {
    pub metrics: Vec<Metric>,
    pub params: Vec<Tag>,
    pub tags: Vec<Tag>,
}

/// A run's dataset and model inputs: none are recorded yet, so always empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunInputs {}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Run {
    pub info: RunInfo,
    pub data: RunData,
    pub inputs: RunInputs,
}

/// `POST experiments/create`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CreateExperiment {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub artifact_location: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<KeyValue>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CreateExperimentResponse {
    pub experiment_id: String,
}

/// `GET experiments/get`, and the body of `experiments/delete` and `experiments/restore`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ExperimentRef {
    #[serde(default, deserialize_with = "opt_id")]
    pub experiment_id: Option<String>,
}

/// `GET experiments/get-by-name`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ExperimentByName {
    #[serde(default)]
    pub experiment_name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExperimentResponse {
    pub experiment: Experiment,
}

/// `POST experiments/update`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UpdateExperiment {
    #[serde(default, deserialize_with = "opt_id")]
    pub experiment_id: Option<String>,
    #[serde(default)]
    pub new_name: Option<String>,
}

/// `POST experiments/set-experiment-tag`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SetExperimentTag {
    #[serde(default, deserialize_with = "opt_id")]
    pub experiment_id: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// `POST experiments/search`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SearchExperiments {
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub page_token: Option<String>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub order_by: Option<Vec<String>>,
    /// ACTIVE_ONLY (the default), DELETED_ONLY or ALL, or the enum's number (1, 2, 3).
    #[serde(default, deserialize_with = "opt_id")]
    pub view_type: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchExperimentsResponse {
    pub experiments: Vec<Experiment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// `POST runs/create`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CreateRun {
    #[serde(default, deserialize_with = "opt_id")]
    pub experiment_id: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub run_name: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub tags: Option<Vec<KeyValue>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResponse {
    pub run: Run,
}

/// `GET runs/get`, and the body of `runs/delete` and `runs/restore`. Clients send the run's id as `run_id`, the
/// older `run_uuid`, or both.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunRef {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub run_uuid: Option<String>,
}

/// `POST runs/update`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct UpdateRun {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub run_uuid: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub run_name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct UpdateRunResponse {
    pub run_info: RunInfo,
}

/// `POST runs/log-metric`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogMetric {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub run_uuid: Option<String>,
    #[serde(flatten)]
    pub metric: MetricIn,
}

/// `POST runs/log-parameter`, `runs/set-tag` and `runs/delete-tag` (which has no value).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogKeyValue {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub run_uuid: Option<String>,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Option<String>,
}

/// `POST runs/log-batch`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogBatch {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub metrics: Option<Vec<MetricIn>>,
    #[serde(default)]
    pub params: Option<Vec<KeyValue>>,
    #[serde(default)]
    pub tags: Option<Vec<KeyValue>>,
}

/// `POST runs/search`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SearchRuns {
    #[serde(default, deserialize_with = "opt_ids")]
    pub experiment_ids: Option<Vec<String>>,
    #[serde(default)]
    pub filter: Option<String>,
    /// ACTIVE_ONLY (the default), DELETED_ONLY or ALL, or the enum's number (1, 2, 3).
    #[serde(default, deserialize_with = "opt_id")]
    pub run_view_type: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub order_by: Option<Vec<String>>,
    #[serde(default)]
    pub page_token: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SearchRunsResponse {
    pub runs: Vec<Run>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// `GET metrics/get-history`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MetricHistory {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub run_uuid: Option<String>,
    #[serde(default)]
    pub metric_key: Option<String>,
    #[serde(default)]
    pub page_token: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MetricHistoryResponse {
    pub metrics: Vec<Metric>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A 64-bit integer as protobuf's JSON allows it: a number or a decimal string.
fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a 64-bit integer"))),
        Some(serde_json::Value::String(s)) => {
            s.trim().parse().map(Some).map_err(|_| serde::de::Error::custom(format!("`{s}` is not a 64-bit integer")))
        }
        Some(other) => Err(serde::de::Error::custom(format!("{other} is not a 64-bit integer"))),
    }
}

/// A double as protobuf's JSON allows it: a number, a decimal string, or `"NaN"`, `"Infinity"`, `"-Infinity"`.
fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            n.as_f64().map(Some).ok_or_else(|| serde::de::Error::custom(format!("{n} is not a number")))
        }
        Some(serde_json::Value::String(s)) => match s.trim() {
            "NaN" => Ok(Some(f64::NAN)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            text => text.parse().map(Some).map_err(|_| serde::de::Error::custom(format!("`{s}` is not a number"))),
        },
        Some(other) => Err(serde::de::Error::custom(format!("{other} is not a number"))),
    }
}

/// An id that MLflow writes as a string but some clients send as a number (also an enum, by name or number).
fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!("{other} is not an id"))),
    }
}

/// A list of ids, each a string or a number.
fn opt_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    match Option::<Vec<serde_json::Value>>::deserialize(d)? {
        None => Ok(None),
        Some(values) => values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                serde_json::Value::Number(n) => Ok(n.to_string()),
                other => Err(serde::de::Error::custom(format!("{other} is not an id"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// A double as protobuf's JSON writes it: a number when finite, else `"NaN"`, `"Infinity"` or `"-Infinity"`.
fn proto_f64<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
    if value.is_nan() {
        s.serialize_str("NaN")
    } else if value.is_infinite() {
        s.serialize_str(if *value > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*value)
    }
}

/// An artifact file or folder, as MLflow lists them: a folder has no `file_size`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub path: String,
    pub is_dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "opt_i64")]
    pub file_size: Option<i64>,
}

/// `GET /api/2.0/mlflow-artifacts/artifacts?path=...`: the entries of one folder, by name; `files` is left out
/// when there are none, as protobuf's JSON does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactListing {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileInfo>,
}

/// `GET /api/2.0/mlflow/artifacts/list?run_id=...&path=...`: a run's artifacts, paths relative to its root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListArtifactsResponse {
    #[serde(default)]
    pub root_uri: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A logged model (MLflow 3): its info and data.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggedModel {
    pub info: LoggedModelInfo,
    pub data: LoggedModelData,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggedModelInfo {
    /// `m-` and 32 hex digits.
    pub model_id: String,
    pub experiment_id: String,
    pub name: String,
    pub creation_timestamp_ms: i64,
    pub last_updated_timestamp_ms: i64,
    /// `mlflow-artifacts:/<experiment>/models/<model_id>/artifacts`.
    pub artifact_uri: String,
    /// LOGGED_MODEL_PENDING, LOGGED_MODEL_READY or LOGGED_MODEL_UPLOAD_FAILED.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LoggedModelData {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<Tag>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
}

/// The answer of create, get, finalize and set-tags: one model.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoggedModelResponse {
    pub model: LoggedModel,
}

/// `POST logged-models`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CreateLoggedModel {
    #[serde(default, deserialize_with = "opt_id")]
    pub experiment_id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub source_run_id: Option<String>,
    #[serde(default)]
    pub params: Option<Vec<KeyValue>>,
    #[serde(default)]
    pub tags: Option<Vec<KeyValue>>,
}

/// `PATCH logged-models/{model_id}`: the status as the enum's name or number.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FinalizeLoggedModel {
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default, deserialize_with = "opt_id")]
    pub status: Option<String>,
}

/// `PATCH logged-models/{model_id}/tags` and `POST logged-models/{model_id}/params`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LoggedModelKeyValues {
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub tags: Option<Vec<KeyValue>>,
    #[serde(default)]
    pub params: Option<Vec<KeyValue>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct LoggedModelOrder {
    #[serde(default)]
    pub field_name: Option<String>,
    #[serde(default)]
    pub ascending: Option<bool>,
    #[serde(default)]
    pub dataset_name: Option<String>,
}

/// `POST logged-models/search`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SearchLoggedModels {
    #[serde(default, deserialize_with = "opt_ids")]
    pub experiment_ids: Option<Vec<String>>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub datasets: Option<Vec<serde_json::Value>>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub order_by: Option<Vec<LoggedModelOrder>>,
    #[serde(default)]
    pub page_token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SearchLoggedModelsResponse {
    pub models: Vec<LoggedModel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A model a run produced (`runs/outputs`) or used (`runs/log-inputs`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ModelRef {
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub step: Option<i64>,
}

/// `POST runs/outputs` and `POST runs/log-inputs`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LogRunModels {
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub models: Option<Vec<ModelRef>>,
    #[serde(default)]
    pub datasets: Option<Vec<serde_json::Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_come_in_every_form_protobuf_json_allows() {
        let m: LogMetric =
            serde_json::from_str(r#"{"run_id":"r","key":"k","value":"NaN","timestamp":"1700000000000","step":3}"#)
                .unwrap();
        assert!(m.metric.value.is_some_and(f64::is_nan));
        assert_eq!((m.metric.timestamp, m.metric.step), (Some(1_700_000_000_000), Some(3)));
        let m: MetricIn = serde_json::from_str(r#"{"value":"-Infinity"}"#).unwrap();
        assert_eq!(m.value, Some(f64::NEG_INFINITY));
        assert!(serde_json::from_str::<MetricIn>(r#"{"value":"lots"}"#).is_err());
        let s: SearchRuns = serde_json::from_str(r#"{"experiment_ids":["1",2]}"#).unwrap();
        assert_eq!(s.experiment_ids, Some(vec!["1".to_string(), "2".to_string()]));
    }

    #[test]
    fn non_finite_metrics_are_written_as_protobuf_json_strings() {
        let m = |value| Metric { key: "k".into(), value, timestamp: 1, step: 0 };
        let text = serde_json::to_string(&[m(f64::NAN), m(f64::INFINITY), m(0.5)]).unwrap();
        assert_eq!(
            text,
            r#"[{"key":"k","value":"NaN","timestamp":1,"step":0},{"key":"k","value":"Infinity","timestamp":1,"step":0},{"key":"k","value":0.5,"timestamp":1,"step":0}]"#
        );
    }
}
