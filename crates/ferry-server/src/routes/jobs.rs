//! Jobs: submit, list, show, wait, cancel, and read their output.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use ferry_api::code::JobCode as WireCode;
use ferry_api::jobs::{
    Job, JobList, JobState, NativeJob, PredictedRuntime, PredictionAccuracy, QueueSummary, SubmitJob, Submitted,
    Waiting,
};
use ferry_api::ErrorBody;
use ferry_core::StartForecast;
use ferry_store::{JobFilter, JobRecord};
use serde::Deserialize;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::auth::{Caller, UserCaller};
use crate::driver::{now_us, Command};
use crate::error::{rejection, ApiError};
use crate::state::AppState;
use crate::submission::{prepare, submit_tracked};

/// The most jobs one listing returns.
const LIST_LIMIT_MAX: u32 = 10_000;
/// The default size of a listing.
const LIST_LIMIT_DEFAULT: u32 = 500;
/// The longest a wait request is held.
const WAIT_MS_MAX: u64 = 60_000;
/// Bytes read from a log file per chunk of a streamed response.
const LOG_READ_CHUNK_BYTES: usize = 256 * 1024;
/// While following a log, how long to wait for a wake-up before looking again anyway.
const FOLLOW_RECHECK: Duration = Duration::from_millis(500);

#[utoipa::path(post, path = "/api/v1/jobs", request_body = SubmitJob,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "A key of the client's choosing (1 to 128 printable ASCII characters): a retry with the same key \
            and request answers 200 with the job the first try made; with a different request, 409. Kept a day.")),
    responses((status = 201, body = Submitted), (status = 200, body = Submitted), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: Result<Json<SubmitJob>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, axum::Extension<crate::audit::AuditNote>, Json<Submitted>), ApiError> {
    let Json(spec) = body.map_err(rejection)?;
    let key = submission_key(&headers, &caller.name, &spec)?;
    // A retry whose first try got through: the first job, made nothing new. The driver checks again when it
    // records the key, for retries that race each other.
    if let Some(key) = &key {
        if let Some(keyed) = state.store.keyed_job(key).await? {
            let again = crate::driver::keyed_answer(key, &keyed)?;
            return Ok(submitted(again));
        }
    }
    let experiment = spec.experiment.clone();
    let job = prepare(&state, spec, &caller).await?;
    let answer = submit_tracked(&state, job, key, experiment.as_deref(), Vec::new(), Vec::new()).await?;
    Ok(submitted(answer))
}

/// The name of the header that carries a submission's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The longest idempotency key.
const IDEMPOTENCY_KEY_CHARS_MAX: usize = 128;

/// The submission's idempotency key, if it sent one, bound to the submitter and the request's digest.
fn submission_key(
    headers: &axum::http::HeaderMap,
    owner: &str,
    spec: &SubmitJob,
) -> Result<Option<ferry_store::SubmissionKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_CHARS_MAX && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "the Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII characters \
                 without spaces (a UUID, for example)"
            ))
        })?;
    let request = serde_json::to_vec(spec).map_err(|e| ApiError::invalid(format!("the job cannot be read: {e}")))?;
    let request_sha256 = hex::encode(sha2::Sha256::digest(&request));
    Ok(Some(ferry_store::SubmissionKey { owner: owner.to_string(), key: key.to_string(), request_sha256 }))
}

/// The answer to a submission: 201 for a new job, 200 for a retry answered with the job its key made.
fn submitted(
    answer: crate::driver::Submitted,
) -> (axum::http::StatusCode, axum::Extension<crate::audit::AuditNote>, Json<Submitted>) {
    let id = answer.id;
    if answer.again {
        (
            axum::http::StatusCode::OK,
            crate::audit::note(format!("job {id} (a retry; nothing new)")),
            Json(Submitted { id }),
        )
    } else {
        (axum::http::StatusCode::CREATED, crate::audit::note(format!("job {id}")), Json(Submitted { id }))
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    #[serde(default)]
    all: bool,
    limit: Option<u32>,
    owner: Option<String>,
    team: Option<String>,
    project: Option<String>,
    pool: Option<String>,
    node: Option<String>,
    /// Submitted within this long back from now (`1d`), or since this RFC 3339 time.
    since: Option<String>,
    /// The next page: jobs with ids below this one.
    before: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/jobs", params(("state" = Option<String>, Query), ("all" = Option<bool>, Query), ("limit" = Option<u32>, Query),
    ("owner" = Option<String>, Query), ("team" = Option<String>, Query), ("project" = Option<String>, Query),
    ("pool" = Option<String>, Query), ("node" = Option<String>, Query), ("since" = Option<String>, Query),
    ("before" = Option<u64>, Query)),
    responses((status = 200, body = JobList)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let states = match (&query.state, query.all) {
        (Some(text), _) => vec![JobState::parse(text).ok_or_else(|| {
            let names: Vec<&str> = JobState::ALL.iter().map(|s| s.name()).collect();
            ApiError::invalid(format!("`{text}` is not a job state; use one of {}", names.join(", ")))
        })?],
        (None, true) => Vec::new(),
        (None, false) => vec![JobState::Queued, JobState::Starting, JobState::Running],
    };
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT).min(LIST_LIMIT_MAX);
    let submitted_after_us =
        query.since.as_deref().map(|text| crate::routes::series::parse_time(text, now_us(), "since")).transpose()?;
    let nonempty = |value: Option<String>| value.filter(|v| !v.is_empty());
    let filter = JobFilter {
        states,
        limit,
        owner: nonempty(query.owner),
        team: nonempty(query.team),
        project: nonempty(query.project),
        pool: nonempty(query.pool),
        node: nonempty(query.node),
        submitted_after_us,
        before_id: query.before,
        visible_to: visibility(&caller),
    };
    let records = state.store.jobs(&filter).await?;
    let mut jobs = Vec::with_capacity(records.len());
    for record in records {
        jobs.push(to_wire(&state, &caller, record, None).await);
    }
    Ok(Json(JobList { jobs }))
}

#[utoipa::path(get, path = "/api/v1/queue", responses((status = 200, body = QueueSummary)))]
pub async fn queue(State(state): State<AppState>, _caller: Caller) -> Result<Json<QueueSummary>, ApiError> {
    let metrics = state.driver.ask(|reply| Command::Metrics { reply }).await?;
    Ok(Json(metrics.queue_summary()))
}

/// Whose jobs a caller may see, for listings: everything for an installation admin.
pub(crate) fn visibility(caller: &UserCaller) -> Option<ferry_store::Visibility> {
    (!caller.admin)
        .then(|| ferry_store::Visibility { owner: caller.name.clone(), teams: caller.teams.keys().cloned().collect() })
}

/// A job the caller may see. Another team's job is answered as missing, so its existence is not revealed either.
pub(crate) async fn load(state: &AppState, caller: &UserCaller, id: u64) -> Result<JobRecord, ApiError> {
    let missing = || ApiError::not_found(format!("no job {id}; `ferry ps --all` lists jobs"));
    let record = state.store.job(id).await?.ok_or_else(missing)?;
    if !caller.sees(&record.spec.owner, record.spec.team.as_deref()) {
        return Err(missing());
    }
    Ok(record)
}

/// A job with its timeline and, when queued, the scheduler's reason for the wait.
async fn full(state: &AppState, caller: &UserCaller, record: JobRecord) -> Result<Job, ApiError> {
    let waiting = if record.state == JobState::Queued {
        let (reason, fork) = state.driver.ask(|reply| Command::Explain { id: record.id, reply }).await?;
        // The forecast runs the scheduler forward in virtual time: on a blocking thread, never in the driver.
        let id = record.id;
        let forecast = match fork {
            Some(fork) => tokio::task::spawn_blocking(move || fork.forecast_start(id)).await.ok().flatten(),
            None => None,
        };
        let (estimated_start_us, estimate_predicted, no_estimate) = match forecast {
            Some(StartForecast::At(at)) => (Some(at), false, None),
            Some(StartForecast::Predicted(at)) => (Some(at), true, None),
            Some(StartForecast::Unknown(why)) => (None, false, Some(why.to_string())),
            None => (None, false, None),
        };
        reason.map(|r| Waiting {
            message: r.to_string(),
            reason: crate::convert::wait_reason(&r),
            estimated_start_us,
            estimate_predicted,
            no_estimate,
        })
    } else {
        None
    };
    let timeline = state.store.job_events(record.id).await?.into_iter().map(crate::convert::job_event).collect();
    let mut job = to_wire(state, caller, record, waiting).await;
    job.timeline = timeline;
    Ok(job)
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let record = load(&state, &caller, parse_id(&id)?).await?;
    Ok(Json(full(&state, &caller, record).await?))
}

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    timeout_ms: Option<u64>,
}

/// Holds the request until the job reaches a final state or the timeout passes, then returns the job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/wait", params(("id" = u64, Path), ("timeout_ms" = Option<u64>, Query)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
pub async fn wait(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(rejection)?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(query.timeout_ms.unwrap_or(WAIT_MS_MAX).min(WAIT_MS_MAX));
    loop {
        let notify = state.signals.for_job(id);
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let record = load(&state, &caller, id).await?;
        if record.state.is_terminal() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(full(&state, &caller, record).await?));
        }
        let _ = tokio::time::timeout_at(deadline, woken).await;
    }
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(("id" = u64, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let id = parse_id(&id)?;
    let record = load(&state, &caller, id).await?;
    if !caller.changes(&record.spec.owner, record.spec.team.as_deref()) {
        return Err(ApiError::new(
            ferry_api::ErrorCode::Forbidden,
            format!(
                "job {id} is {}'s; only its owner, an admin of its team or an installation admin may cancel it",
                record.spec.owner
            ),
        ));
    }
    let by = caller.name.clone();
    state.driver.call(|reply| Command::Cancel { id, by, reply }).await?;
    tracing::info!(job = id, by = %caller.name, "job cancelled");
    let record = load(&state, &caller, id).await?;
    Ok(Json(full(&state, &caller, record).await?))
}

#[derive(Debug, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    follow: bool,
    attempt: Option<u32>,
    /// Which worker of a gang; 0 (rank 0) by default.
    #[serde(default)]
    rank: u32,
}

/// The job's output as raw bytes, from `offset`; with `follow`, the response stays open until the job ends and
/// every byte it wrote has been sent.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs",
    params(("id" = u64, Path), ("offset" = Option<u64>, Query), ("follow" = Option<bool>, Query), ("attempt" = Option<u32>, Query), ("rank" = Option<u32>, Query)),
    responses((status = 200, description = "The output bytes", content_type = "application/octet-stream"), (status = 404, body = ErrorBody), (status = 410, description = "The output was removed by the server's retention", body = ErrorBody)))]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let Query(query) = query.map_err(rejection)?;
    let record = load(&state, &caller, id).await?;
    if let Some(removed_at_us) = output_removed(&record) {
        let words = ferry_api::jobs::output_removed_words(record.finished_at_us, removed_at_us);
        return Err(ApiError::new(
            ferry_api::ErrorCode::Gone,
            format!(
                "the output of job {id} was {words}; the server keeps a finished job's output for [retention] logs \
                 of its configuration (an admin may keep it longer)"
            ),
        ));
    }
    let attempt = query.attempt.unwrap_or(record.attempt);
    if attempt > record.attempt {
        return Err(ApiError::not_found(format!(
            "job {id} has no attempt {attempt}; its latest is {}",
            record.attempt
        )));
    }
    let rank = query.rank;
    if rank >= record.spec.nodes {
        return Err(ApiError::not_found(match record.spec.nodes {
            1 => format!("job {id} runs on one node; it has no worker of rank {rank}"),
            n => format!("job {id} has {n} workers, ranks 0 to {}; there is no rank {rank}", n - 1),
        }));
    }
    let follower = Follower { state, id, attempt, rank, offset: query.offset, follow: query.follow, done: false };
    let stream = futures_util::stream::unfold(follower, |mut f| async move {
        f.next_chunk().await.map(|chunk| (Ok::<Bytes, std::io::Error>(chunk), f))
    });
    Ok(Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from_stream(stream))
        .expect("static headers are valid"))
}

struct Follower {
    state: AppState,
    id: u64,
    attempt: u32,
    rank: u32,
    offset: u64,
    follow: bool,
    done: bool,
}

impl Follower {
    /// The next piece of output, waiting for more while following; `None` at the end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            let notify = self.state.signals.for_job(self.id);
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let chunk = self.read().await;
            if !chunk.is_empty() {
                self.offset += chunk.len() as u64;
                return Some(chunk);
            }
            if !self.follow {
                self.done = true;
                return None;
            }
            // Agents upload every byte before they report the end, so once the state is final one more read
            // drains the file.
            let finished = match self.state.store.job(self.id).await {
                Ok(Some(r)) => r.state.is_terminal() || r.attempt != self.attempt,
                _ => true,
            };
            if finished {
                self.follow = false;
                continue;
            }
            let _ = tokio::time::timeout(FOLLOW_RECHECK, woken).await;
        }
    }

    async fn read(&self) -> Bytes {
        let path = self.state.logs.path(self.id, self.attempt, self.rank);
        let Ok(mut file) = tokio::fs::File::open(&path).await else { return Bytes::new() };
        if file.seek(std::io::SeekFrom::Start(self.offset)).await.is_err() {
            return Bytes::new();
        }
        let mut buf = vec![0u8; LOG_READ_CHUNK_BYTES];
        match file.read(&mut buf).await {
            Ok(n) => {
                buf.truncate(n);
                Bytes::from(buf)
            }
            Err(_) => Bytes::new(),
        }
    }
}

/// The uncommitted changes the job was submitted with (`git diff HEAD`), as plain text; empty when there were none.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/diff", responses((status = 200, content_type = "text/plain"), (status = 404, body = ErrorBody)))]
pub async fn diff(State(state): State<AppState>, caller: Caller, Path(id): Path<String>) -> Result<Response, ApiError> {
    let record = load(&state, &caller, parse_id(&id)?).await?;
    let text = record.spec.code.and_then(|c| c.git_diff).unwrap_or_default();
    Ok(Response::builder()
        .header(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .unwrap_or_default())
}

/// The most values of one metric `GET /api/v1/jobs/{id}/metrics?key=` returns.
const METRIC_HISTORY_MAX: i64 = 100_000;

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    key: Option<String>,
}

fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// What the job logged to its MLflow run: params, each metric's summary, and one metric's history with `?key=`.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/metrics", params(("id" = u64, Path), ("key" = Option<String>, Query)),
    responses((status = 200, body = ferry_api::jobs::JobMetrics), (status = 404, body = ErrorBody)))]
pub async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<MetricsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ferry_api::jobs::JobMetrics>, ApiError> {
    let Query(query) = query.map_err(rejection)?;
    let record = load(&state, &caller, parse_id(&id)?).await?;
    let tracking = record.spec.tracking.ok_or_else(|| {
        ApiError::not_found(format!("job {} has no MLflow run: it was submitted before Ferry tracked runs", record.id))
    })?;
    let run = state.store.run(&tracking.run_id).await?.ok_or_else(|| {
        ApiError::not_found(format!("the MLflow run {} of job {} no longer exists", tracking.run_id, record.id))
    })?;
    let data = state.store.run_data(&tracking.run_id).await?;
    let metrics = state
        .store
        .metric_stats(&tracking.run_id)
        .await?
        .into_iter()
        .map(|m| ferry_api::jobs::MetricSummary {
            key: m.key,
            last: finite(m.last),
            step: m.step,
            min: m.min,
            max: m.max,
            count: m.count,
        })
        .collect::<Vec<_>>();
    let history = match query.key.filter(|k| !k.is_empty()) {
        Some(key) => {
            if !metrics.iter().any(|m| m.key == key) {
                let known: Vec<&str> = metrics.iter().map(|m| m.key.as_str()).collect();
                return Err(ApiError::not_found(format!(
                    "job {} logged no metric `{key}`; it logged: {}",
                    record.id,
                    if known.is_empty() { "nothing yet".to_string() } else { known.join(", ") }
                )));
            }
            state
                .store
                .metric_history(&tracking.run_id, &key, 0, METRIC_HISTORY_MAX)
                .await?
                .into_iter()
                .map(|p| ferry_api::jobs::MetricValue {
                    step: p.step,
                    value: finite(p.value),
                    timestamp_ms: p.timestamp_ms,
                })
                .collect()
        }
        None => Vec::new(),
    };
    Ok(Json(ferry_api::jobs::JobMetrics {
        job_id: record.id,
        run_id: tracking.run_id,
        experiment_id: tracking.experiment_id.to_string(),
        status: run.status,
        params: data.params.into_iter().collect(),
        metrics,
        history,
    }))
}

/// When the retention sweep removed the job's output, for a job that ran (one that never did had none to remove).
fn output_removed(record: &JobRecord) -> Option<i64> {
    record.output_removed_at_us.filter(|_| record.started_at_us.is_some())
}

pub fn parse_id(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>().map_err(|_| {
        ApiError::invalid(format!("`{text}` is not a job id; job ids are numbers, as `ferry ps` shows them"))
    })
}

/// What a job's environment values read as to those who may see only their names.
pub const HIDDEN_VALUE: &str = "(hidden)";

/// Converts a stored job into its wire form, as `caller` may see it: environment values only for its owner, its
/// team's admins and installation admins.
async fn to_wire(state: &AppState, caller: &UserCaller, r: JobRecord, waiting: Option<Waiting>) -> Job {
    let output_removed_at_us = output_removed(&r);
    let predicted_runtime = r.prediction.map(|p| PredictedRuntime {
        runtime_s: p.runtime_s,
        samples: p.samples,
        basis: p.basis.name().to_string(),
    });
    let mut env = r.spec.env;
    if !caller.sees_env(&r.spec.owner, r.spec.team.as_deref()) {
        env.values_mut().for_each(|v| *v = HIDDEN_VALUE.to_string());
    }
    let log_bytes = state.logs.stored_size(r.id, r.attempt, 0).await;
    let usage = (r.state == JobState::Running).then(|| state.telemetry.job_usage(r.id, r.attempt)).flatten();
    Job {
        id: r.id,
        name: r.spec.name,
        project: r.spec.project,
        team: r.spec.team,
        owner: r.spec.owner,
        state: r.state,
        command: r.spec.command,
        workdir: r.spec.workdir,
        image: r.spec.image,
        code: r.spec.code.map(|c| WireCode {
            sha256: c.sha256,
            size_bytes: c.size_bytes,
            git_commit: c.git_commit,
            git_dirty: c.git_diff.is_some(),
        }),
        env,
        secrets: r.spec.secrets,
        cpu_millis: r.spec.resources.cpu_millis,
        memory_bytes: r.spec.resources.memory_bytes,
        gpus: r.spec.resources.gpus,
        gpu_share_milli: r.spec.gpu_share_milli,
        gpu_types: r.spec.gpu_types,
        selector: r.spec.selector,
        pool: r.spec.pool,
        priority: r.spec.priority,
        retries: r.spec.retries,
        attempt: r.attempt,
        max_runtime_s: r.spec.max_runtime_s,
        node: r.node,
        gpu_ids: r.gpu_ids,
        nodes: r.spec.nodes,
        workers: r.workers,
        exit_code: r.exit_code,
        signal: r.signal,
        message: r.message,
        submitted_at_us: r.submitted_at_us,
        started_at_us: r.started_at_us,
        finished_at_us: r.finished_at_us,
        log_bytes,
        output_removed_at_us,
        waiting,
        timeline: Vec::new(),
        usage,
        native: r.native.map(|n| NativeJob {
            kind: n.kind,
            id: n.id,
            spec: n.spec,
            state: state.engine_states.get(r.id),
        }),
        tracking: r
            .spec
            .tracking
            .map(|t| ferry_api::jobs::JobTracking { run_id: t.run_id, experiment_id: t.experiment_id.to_string() }),
        predicted_runtime,
        checkpoints: r.spec.checkpoints,
        preemptions: r.preemptions,
        attained_gpu_s: r.attained_gpu_s,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PredictionsQuery {
    /// An RFC 3339 time or a duration back from now (`30d`); 30 days ago when absent.
    #[serde(default)]
    since: Option<String>,
}

/// The most finished jobs an accuracy report reads: the most recent.
const PREDICTION_JOBS_MAX: u32 = 100_000;

/// How well runtime predictions matched what the caller's visible jobs then ran.
#[utoipa::path(get, path = "/api/v1/predictions", params(PredictionsQuery),
    responses((status = 200, body = PredictionAccuracy), (status = 400, body = ErrorBody)))]
pub async fn prediction_accuracy(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<PredictionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PredictionAccuracy>, ApiError> {
    let Query(q) = query.map_err(crate::error::rejection)?;
    let now = crate::driver::now_us();
    let since_us = match q.since.as_deref() {
        Some(t) => crate::routes::series::parse_time(t, now, "since")?,
        None => now - 30 * 86_400 * 1_000_000,
    };
    let visible = visibility(&caller);
    let pairs = state.store.prediction_outcomes(since_us, visible.as_ref(), PREDICTION_JOBS_MAX).await?;
    let a = ferry_core::predict::Accuracy::of(pairs);
    Ok(Json(PredictionAccuracy {
        since_us,
        jobs: a.jobs,
        median_error_pct: a.median_error_pct,
        within_25_pct: a.within_25_pct,
        within_2x: a.within_2x,
        ran_longer: a.ran_longer,
    }))
}
