//! MLflow's artifact endpoints: what the official client's `mlflow-artifacts:` repository calls
//! (`/api/2.0/mlflow-artifacts/artifacts[/<path>]`: upload, download, list, delete) and the tracking API's
//! `GET /api/2.0/mlflow/artifacts/list`, in MLflow's shapes and error format.
//!
//! Paths are relative to the artifact root and must lie in a run's (`<experiment>/<run>/artifacts/...`) or a logged
//! model's (`<experiment>/models/<model>/artifacts/...`) folder, which must exist; writing needs it not deleted.
//! Bodies are streamed into the store (`artifacts.rs`) and out of it, never held whole. Multipart and presigned
//! transfers are not offered (`/api/3.0/mlflow/server-info` says so, and the client then uses plain requests).

use axum::body::Body as RawBody;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::tracking::{ArtifactListing, FileInfo, ListArtifactsResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::artifact_quota;
use crate::artifacts::{ArtifactError, ArtifactPath};
use crate::auth::Tracker;
use crate::routes::mlflow::{may_write, query, run_id, seen_run, user, Answer, Auth, MlflowFailure, ACTIVE};
use crate::state::AppState;

/// After refusing an upload, the server reads (and drops) up to this much more of its body before answering, so a
/// client still sending sees the error instead of a reset connection.
const DRAIN_BYTES_MAX: u64 = 64 << 20;
/// And for at most this long.
const DRAIN_TIME_MAX: std::time::Duration = std::time::Duration::from_secs(10);
/// The scheme of the artifact URIs Ferry gives runs and models.
const SCHEME: &str = "mlflow-artifacts:/";

/// Whose folder a path lies in.
enum Owner {
    Run { experiment_id: String, run_id: String },
    Model { experiment_id: String, model_id: String },
}

/// A checked path: its owner, and whether it names something inside the owner's `artifacts` folder (not the folder
/// itself).
struct Located {
    path: ArtifactPath,
    owner: Owner,
    inside: bool,
}

fn failure(e: ArtifactError) -> MlflowFailure {
    match e {
        ArtifactError::NotFound(path) => MlflowFailure::not_found(format!("No artifact at '{path}'")),
        ArtifactError::TooLarge { .. } => MlflowFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_PARAMETER_VALUE",
            format!("{e}; the server's [artifacts] max_file_bytes sets the limit"),
        ),
        ArtifactError::Body(_) | ArtifactError::Conflict(_) => MlflowFailure::invalid(e.to_string()),
        ArtifactError::Store(_) => {
            tracing::warn!(error = %e, "the artifact store failed");
            MlflowFailure::new(StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE", e.to_string())
        }
    }
}

fn locate(text: &str) -> Result<Located, MlflowFailure> {
    let path = ArtifactPath::parse(text).map_err(MlflowFailure::invalid)?;
    let parts: Vec<&str> = path.segments().collect();
    let outside = || {
        MlflowFailure::invalid(format!(
            "the artifact path '{text}' is not in a run's or a logged model's artifacts; artifact paths are \
             <experiment_id>/<run_id>/artifacts/... or <experiment_id>/models/<model_id>/artifacts/..."
        ))
    };
    let (owner, rest) = match parts.as_slice() {
        [exp, "models", model, "artifacts", rest @ ..] => {
            (Owner::Model { experiment_id: exp.to_string(), model_id: model.to_string() }, rest)
        }
        [exp, run, "artifacts", rest @ ..] => {
            (Owner::Run { experiment_id: exp.to_string(), run_id: run.to_string() }, rest)
        }
        _ => return Err(outside()),
    };
    Ok(Located { inside: !rest.is_empty(), path, owner })
}

/// Checks that the path's run or model exists, that the caller sees it (and, to write, may change it), and, to
/// write, that it is not deleted. Returns, for a write, the account whose artifact quota it counts against.
async fn check_owner(state: &AppState, who: &Tracker, owner: &Owner, write: bool) -> Result<String, MlflowFailure> {
    let (experiment, stage, what, account) = match owner {
        Owner::Run { experiment_id, run_id } => {
            let run = seen_run(state, who, run_id).await?;
            if write {
                may_write(who, &run)?;
            }
            let account = artifact_quota::account(run.team.as_deref(), run.project.as_deref());
            (run.experiment_id.to_string() == *experiment_id, run.lifecycle_stage, format!("run {run_id}"), account)
        }
        Owner::Model { experiment_id, model_id } => {
            let model = crate::routes::mlflow_models::allowed_model(state, who, model_id, true, write).await?;
            let account = match write {
                true => state.store.model_account(model_id).await?,
                false => None,
            };
            let account = account.map(|(team, project)| artifact_quota::account(team.as_deref(), project.as_deref()));
            (
                model.experiment_id.to_string() == *experiment_id,
                model.lifecycle_stage,
                format!("logged model {model_id}"),
                account.unwrap_or_default(),
            )
        }
    };
    if !experiment {
        return Err(MlflowFailure::not_found(format!("the {what} is not in the experiment the artifact path names")));
    }
    if write && stage != ACTIVE {
        return Err(MlflowFailure::invalid(format!(
            "The {what} must be in the 'active' state to log artifacts. Current state is {stage}."
        )));
    }
    Ok(account)
}

/// Waits for the count of every project's artifacts made at start, which quotas need.
async fn counted(state: &AppState) -> Result<(), MlflowFailure> {
    if state.artifact_quotas.wait_counted(artifact_quota::COUNT_WAIT).await {
        return Ok(());
    }
    Err(MlflowFailure::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "TEMPORARILY_UNAVAILABLE",
        "the server is still counting each project's artifacts for their quotas (it does once at start); retry in a \
         minute",
    ))
}

fn over_quota(e: artifact_quota::Exceeded) -> MlflowFailure {
    MlflowFailure::new(StatusCode::INSUFFICIENT_STORAGE, "RESOURCE_EXHAUSTED", e.message())
}

/// What an upload took of its account's quota as its bytes arrived.
#[derive(Default)]
struct Meter {
    /// Bytes of the file it replaces, not yet matched by new ones: they are counted already.
    allowance: u64,
    /// Bytes taken from the quota.
    reserved: u64,
    exceeded: Option<artifact_quota::Exceeded>,
}

impl Meter {
    fn take(&mut self, quotas: &artifact_quota::ArtifactQuotas, account: &str, bytes: u64) -> Result<(), String> {
        let free = self.allowance.min(bytes);
        self.allowance -= free;
        let needed = bytes - free;
        if needed == 0 {
            return Ok(());
        }
        match quotas.reserve(account, needed) {
            Ok(()) => {
                self.reserved += needed;
                Ok(())
            }
            Err(e) => {
                let message = e.message();
                self.exceeded = Some(e);
                Err(message)
            }
        }
    }
}

fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, MlflowFailure> {
    path.map(|Path(p)| p).map_err(|e| MlflowFailure::invalid(format!("the artifact path could not be read: {e}")))
}

/// Reads and drops what is left of a refused upload (bounded), so the client reads the answer.
async fn drain(body: RawBody) {
    let mut stream = body.into_data_stream();
    let mut read: u64 = 0;
    let _ = tokio::time::timeout(DRAIN_TIME_MAX, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len() as u64;
            if read > DRAIN_BYTES_MAX {
                break;
            }
        }
    })
    .await;
}

/// `PUT /api/2.0/mlflow-artifacts/artifacts/<path>`: stores the raw body as the file at `path`, within the size limit
/// and the quota of the project it counts against.
pub async fn upload(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: RawBody,
) -> Response {
    let checked = async {
        let who = user(auth)?;
        let located = locate(&path_param(path)?)?;
        if !located.inside {
            return Err(MlflowFailure::invalid(format!(
                "'{}' is the artifacts folder itself; upload to a file path inside it",
                located.path.as_str()
            )));
        }
        let account = check_owner(&state, &who, &located.owner, true).await?;
        let declared =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > state.artifacts.max_file_bytes) {
            return Err(failure(ArtifactError::TooLarge { limit_bytes: state.artifacts.max_file_bytes }));
        }
        counted(&state).await?;
        // A file it replaces is counted already: only what the new one adds to it must fit.
        let replaced = state.artifacts.size(&located.path).await.unwrap_or(0);
        if let Some(n) = declared {
            state.artifact_quotas.check(&account, n.saturating_sub(replaced)).map_err(over_quota)?;
        }
        Ok((located.path, account, replaced))
    }
    .await;
    let (path, account, replaced) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            drain(body).await;
            return e.into_response();
        }
    };
    let quotas = state.artifact_quotas.clone();
    let mut meter = Meter { allowance: replaced, ..Meter::default() };
    let mut stream = body.into_data_stream();
    let metered = stream.by_ref().map(|chunk| match chunk {
        Ok(bytes) => meter.take(&quotas, &account, bytes.len() as u64).map(|()| bytes),
        Err(e) => Err(e.to_string()),
    });
    let stored = state.artifacts.put(&path, metered).await;
    match stored {
        Ok(bytes) => {
            // What the replaced file held beyond the new one is free again.
            quotas.release(&account, meter.allowance);
            tracing::debug!(path = path.as_str(), bytes, "stored an artifact");
            Json(json!({})).into_response()
        }
        Err(e) => {
            quotas.release(&account, meter.reserved);
            drain(RawBody::from_stream(stream)).await;
            match meter.exceeded {
                Some(exceeded) => over_quota(exceeded).into_response(),
                None => failure(e).into_response(),
            }
        }
    }
}

/// A file's media type from its name, for downloads (browsers are told to save it, never to show it).
fn media_type(name: &str) -> &'static str {
    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" | "md" | "py" | "yaml" | "yml" | "csv" | "toml" | "cfg" | "ini" => "text/plain",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// `GET /api/2.0/mlflow-artifacts/artifacts/<path>`: the file, streamed.
pub async fn download(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, MlflowFailure> {
    let who = user(auth)?;
    let located = locate(&path_param(path)?)?;
    check_owner(&state, &who, &located.owner, false).await?;
    if !located.inside {
        return Err(MlflowFailure::invalid(format!("'{}' is a folder; list it instead", located.path.as_str())));
    }
    let found = state.artifacts.get(&located.path).await.map_err(|e| match e {
        ArtifactError::NotFound(_) => MlflowFailure::not_found(format!("No artifact at '{}'", located.path.as_str())),
        other => failure(other),
    })?;
    let name = located.path.file_name();
    let disposition = format!("attachment; filename=\"{}\"", name.replace(['"', '\\'], "_"));
    let mut response = RawBody::from_stream(found.body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type(name)));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(found.size_bytes));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    Ok(response)
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    #[serde(default)]
    path: Option<String>,
}

/// The entries of a folder as MLflow lists them: names, and sizes for files.
async fn entries(state: &AppState, dir: &ArtifactPath, prefix: Option<&str>) -> Result<Vec<FileInfo>, MlflowFailure> {
    let listed = state.artifacts.list(dir).await.map_err(failure)?;
    Ok(listed
        .into_iter()
        .map(|e| FileInfo {
            path: match prefix {
                Some(p) if !p.is_empty() => format!("{p}/{}", e.name),
                _ => e.name,
            },
            is_dir: e.size_bytes.is_none(),
            file_size: e.size_bytes.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        })
        .collect())
}

/// `GET /api/2.0/mlflow-artifacts/artifacts?path=<folder>`: the folder's entries (none when it does not exist, as
/// MLflow answers).
pub async fn list(State(state): State<AppState>, auth: Auth, uri: Uri) -> Answer<ArtifactListing> {
    let who = user(auth)?;
    let req: ListQuery = query(&uri)?;
    let located = locate(req.path.as_deref().unwrap_or(""))?;
    check_owner(&state, &who, &located.owner, false).await?;
    Ok(Json(ArtifactListing { files: entries(&state, &located.path, None).await? }))
}

/// `DELETE /api/2.0/mlflow-artifacts/artifacts/<path>`: deletes a file, or a folder with everything in it.
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    path: Result<Path<String>, PathRejection>,
) -> Answer<serde_json::Value> {
    let who = user(auth)?;
    let located = locate(&path_param(path)?)?;
    let account = check_owner(&state, &who, &located.owner, true).await?;
    counted(&state).await?;
    let deleted = state.artifacts.delete(&located.path).await.map_err(failure)?;
    state.artifact_quotas.release(&account, deleted.bytes);
    Ok(Json(json!({})))
}

#[derive(Debug, Default, Deserialize)]
struct RunListQuery {
    #[serde(default)]
    run_id: Option<String>,
    #[serde(default)]
    run_uuid: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// `GET /api/2.0/mlflow/artifacts/list?run_id=...&path=...`: a run's artifacts in a folder, paths relative to the
/// run's artifact root.
pub async fn list_run(State(state): State<AppState>, auth: Auth, uri: Uri) -> Answer<ListArtifactsResponse> {
    let who = user(auth)?;
    let req: RunListQuery = query(&uri)?;
    let run = seen_run(&state, &who, run_id(&req.run_id, &req.run_uuid)?).await?;
    let root = run.artifact_uri.strip_prefix(SCHEME).ok_or_else(|| {
        MlflowFailure::invalid(format!("the run's artifacts are at {}, which Ferry does not serve", run.artifact_uri))
    })?;
    let relative = req.path.as_deref().unwrap_or("").trim_end_matches('/');
    let relative = ArtifactPath::parse(relative).map_err(MlflowFailure::invalid)?;
    let full = if relative.is_root() { root.to_string() } else { format!("{root}/{}", relative.as_str()) };
    let located = locate(&full)?;
    Ok(Json(ListArtifactsResponse {
        root_uri: run.artifact_uri.clone(),
        files: entries(&state, &located.path, Some(relative.as_str())).await?,
        next_page_token: None,
    }))
}

/// Multipart uploads and presigned URLs: not offered; the client falls back to plain uploads and downloads.
pub async fn not_offered(uri: Uri) -> MlflowFailure {
    MlflowFailure::new(
        StatusCode::NOT_IMPLEMENTED,
        "NOT_IMPLEMENTED",
        format!(
            "{} is not offered by Ferry: artifacts are uploaded and downloaded whole through \
             /api/2.0/mlflow-artifacts/artifacts/<path>, streamed (see the README)",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_lie_in_a_run_or_a_model() {
        let inside = |p: &str| locate(p).map(|l| l.inside);
        assert_eq!(inside("1/abc/artifacts/a/b.txt").ok(), Some(true));
        assert_eq!(inside("1/abc/artifacts").ok(), Some(false));
        assert_eq!(inside("1/models/m-1/artifacts/MLmodel").ok(), Some(true));
        for bad in ["", "1", "1/abc", "1/abc/other/x", "1/abc/artifacts/../../x", "/1/abc/artifacts/x"] {
            let e = locate(bad).err().unwrap();
            assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
