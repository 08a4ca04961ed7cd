//! Jobs: submit, list, show, wait, cancel, and read their output.

use std::collections::BTreeMap;
use std::path::Path as FsPath;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::Json;
use bytes::Bytes;
use ferry_api::code::{is_sha256, JobCode as WireCode, GIT_DIFF_BYTES_MAX};
use ferry_api::jobs::{
    Job, JobList, JobState, NativeJob, QueueSummary, SubmitJob, Submitted, Waiting, COMMAND_BYTES_MAX, ENV_VARS_MAX,
    NAME_CHARS_MAX, NODES_MAX, RETRIES_MAX,
};
use ferry_api::ErrorBody;
use ferry_core::{Resources, StartForecast};
use ferry_store::{JobCode, JobFilter, JobRecord, NewJob};
use serde::Deserialize;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::auth::{Caller, UserCaller};
use crate::driver::{now_us, Command};
use crate::error::{rejection, ApiError};
use crate::state::AppState;

/// Default CPU request: one core.
const DEFAULT_CPU_MILLIS: u64 = 1000;
/// Default memory request: 1 GiB.
const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;
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

/// Checks a submission and turns it into a job to store. Pure, so every rule is testable without a server.
pub fn validate(spec: SubmitJob, owner: &str) -> Result<NewJob, ApiError> {
    if spec.command.is_empty() || spec.command[0].trim().is_empty() {
        return Err(ApiError::invalid(
            "the command is empty; give one after `--`, as in `ferry run -- python train.py`",
        ));
    }
    let command_bytes: usize = spec.command.iter().map(|a| a.len()).sum();
    if command_bytes > COMMAND_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "the command is {command_bytes} bytes long; the limit is {COMMAND_BYTES_MAX}: put long arguments in a file"
        )));
    }
    if spec.command.iter().any(|a| a.contains('\0')) {
        return Err(ApiError::invalid("the command contains a NUL byte, which no program can receive"));
    }
    ferry_api::text::check_plain("the working directory", &spec.workdir).map_err(ApiError::invalid)?;
    if !spec.workdir.is_empty() && !FsPath::new(&spec.workdir).is_absolute() {
        return Err(ApiError::invalid(format!("the working directory `{}` must be an absolute path", spec.workdir)));
    }
    let code = match spec.code {
        Some(_) if !spec.workdir.is_empty() => {
            return Err(ApiError::invalid(
                "a job runs either in its shipped code or in a working directory on the node, not both",
            ))
        }
        Some(code) if !is_sha256(&code.sha256) => {
            return Err(ApiError::invalid(format!(
                "`{}` is not a SHA-256 digest; code archives are named by 64 lowercase hex digits",
                code.sha256
            )))
        }
        Some(code) => Some(JobCode {
            sha256: code.sha256,
            // Filled in by the handler, which asks the code store.
            size_bytes: 0,
            git_commit: code.git_commit.filter(|c| !c.is_empty()).map(|c| cap(c, NAME_CHARS_MAX)),
            git_diff: code.git_diff.filter(|d| !d.is_empty()).map(|d| cap(d, GIT_DIFF_BYTES_MAX)),
        }),
        None => None,
    };
    let image = match spec.image {
        Some(image) => match image_problem(&image) {
            Some(problem) => {
                return Err(ApiError::invalid(format!(
                    "`{}` is not a container image reference: {problem}; write one such as localhost/busybox:ferry \
                     or ghcr.io/org/train:1.2",
                    image.escape_debug()
                )))
            }
            None => Some(image),
        },
        None => None,
    };
    if spec.env.len() > ENV_VARS_MAX {
        return Err(ApiError::invalid(format!(
            "{} environment variables given; the limit is {ENV_VARS_MAX}",
            spec.env.len()
        )));
    }
    // Names every shell and engine accepts, so that one job runs unchanged on agents, Slurm, Ray and Spark.
    if let Some(key) = spec.env.keys().find(|k| !ferry_backends::engine::valid_env_name(k)) {
        return Err(ApiError::invalid(format!(
            "`{}` is not a valid environment variable name: use letters, digits and `_`, not starting with a digit; \
             write --env NAME=VALUE",
            key.escape_debug()
        )));
    }
    if let Some(key) = spec.env.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(ApiError::invalid(format!("the value of `{key}` holds a NUL byte, which no program can receive")));
    }
    check_secrets(&spec.secrets, &spec.env)?;
    if let Some(name) = &spec.name {
        if name.chars().count() > NAME_CHARS_MAX || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!("job names are at most {NAME_CHARS_MAX} printable characters")));
        }
    }
    let cpu_millis = spec.cpu_millis.unwrap_or(DEFAULT_CPU_MILLIS);
    let memory_bytes = spec.memory_bytes.unwrap_or(DEFAULT_MEMORY_BYTES);
    if cpu_millis == 0 {
        return Err(ApiError::invalid("cpu_millis is 0; every job needs some CPU, such as --cpus 0.1"));
    }
    if memory_bytes == 0 {
        return Err(ApiError::invalid("memory_bytes is 0; ask for some memory, such as --memory 512MiB"));
    }
    let gpus = spec.gpus.unwrap_or(0);
    let gpu_share_milli = spec.gpu_share_milli.unwrap_or(0);
    if gpu_share_milli >= 1000 {
        return Err(ApiError::invalid(format!(
            "gpu_share_milli is {gpu_share_milli}; a share is less than one GPU (1 to 999), ask for whole GPUs instead"
        )));
    }
    if gpu_share_milli > 0 && gpus > 0 {
        return Err(ApiError::invalid("ask for whole GPUs or a share of one GPU, not both"));
    }
    if let Some(bad) = spec.gpu_types.iter().find(|t| t.trim().is_empty() || t.len() > NAME_CHARS_MAX) {
        return Err(ApiError::invalid(format!("`{bad}` is not a GPU model; write one such as A100 or T4")));
    }
    if let Some((k, v)) = spec.selector.iter().find(|(k, v)| k.is_empty() || k.contains('=') || v.contains('=')) {
        return Err(ApiError::invalid(format!("`{k}={v}` is not a label selector; write --selector NAME=VALUE")));
    }
    let retries = spec.retries.unwrap_or(0);
    if retries > RETRIES_MAX {
        return Err(ApiError::invalid(format!("{retries} retries asked; the limit is {RETRIES_MAX}")));
    }
    if spec.max_runtime_s == Some(0) {
        return Err(ApiError::invalid("max_runtime_s is 0; give a positive limit such as --max-runtime 2h"));
    }
    let nodes = spec.nodes.unwrap_or(1);
    if nodes == 0 || nodes > NODES_MAX {
        return Err(ApiError::invalid(format!(
            "nodes is {nodes}; a job runs on 1 to {NODES_MAX} nodes, such as --nodes 4 for a gang of four workers"
        )));
    }
    if nodes > 1 && gpu_share_milli > 0 {
        return Err(ApiError::invalid(
            "a multi-node job takes whole GPUs on each node; use --gpus 1 or more with --nodes, not a share",
        ));
    }
    Ok(NewJob {
        name: spec.name,
        project: spec.project,
        team: spec.team,
        owner: owner.to_string(),
        command: spec.command,
        workdir: spec.workdir,
        env: spec.env,
        secrets: spec.secrets,
        resources: Resources::new(cpu_millis, memory_bytes, gpus),
        priority: spec.priority.unwrap_or_default(),
        retries,
        max_runtime_s: spec.max_runtime_s,
        gpu_share_milli,
        gpu_types: spec.gpu_types,
        selector: spec.selector,
        nodes,
        code,
        pool: spec.pool.filter(|p| !p.is_empty()),
        image,
        tracking: None,
        sweep: None,
    })
}

/// The form of a job's secrets: how many, valid variable and secret names, none that Ferry sets itself or that the
/// job's plain environment sets too.
fn check_secrets(secrets: &BTreeMap<String, String>, env: &BTreeMap<String, String>) -> Result<(), ApiError> {
    use ferry_api::secrets::{check_job_var, check_name, SECRETS_PER_JOB_MAX};
    if secrets.len() > SECRETS_PER_JOB_MAX {
        return Err(ApiError::invalid(format!(
            "{} secrets given; a job may use at most {SECRETS_PER_JOB_MAX}",
            secrets.len()
        )));
    }
    for (var, name) in secrets {
        if !ferry_backends::engine::valid_env_name(var) {
            return Err(ApiError::invalid(format!(
                "`{}` is not a valid environment variable name for a secret: use letters, digits and `_`, not \
                 starting with a digit; write --secret NAME or --secret VAR=NAME",
                var.escape_debug()
            )));
        }
        if let Some(problem) = check_name(name).or_else(|| check_job_var(var)) {
            return Err(ApiError::invalid(problem));
        }
        if env.contains_key(var) {
            return Err(ApiError::invalid(format!("`{var}` is set both by --env and from a secret; keep one of them")));
        }
    }
    Ok(())
}

/// Every secret a job names exists for its owner or its project, so that a typo is caught at submission rather
/// than when the job starts.
async fn secrets_exist(state: &AppState, job: &NewJob) -> Result<(), ApiError> {
    use ferry_store::SecretOwner;
    let user = SecretOwner::user(&job.owner);
    let project = job.team.as_deref().zip(job.project.as_deref()).map(|(t, p)| SecretOwner::project(t, p));
    for name in job.secrets.values() {
        if state.store.secret(&user, name).await?.is_some() {
            continue;
        }
        if let Some(project) = &project {
            if state.store.secret(project, name).await?.is_some() {
                continue;
            }
        }
        let whose = match project.as_ref().and_then(|p| p.team_project()) {
            Some((team, project)) => {
                format!("{} has no secret `{name}`, nor has project {project} of team {team}", job.owner)
            }
            None => format!("{} has no secret `{name}` (and the job names no project)", job.owner),
        };
        return Err(ApiError::invalid(format!(
            "{whose}; set it with `ferry secret set {name}` (yours) or `ferry secret set {name} --project PROJECT` \
             (a team admin), then submit again"
        )));
    }
    Ok(())
}

/// The longest image reference accepted, as Docker's own limit on a name.
const IMAGE_CHARS_MAX: usize = 255;

/// What is wrong with an image reference, `[registry[:port]/]name[/name...][:tag][@algorithm:digest]`, or `None`
/// when it is plausible. Only the form is checked: whether the node has (or can pull) the image is the agent's
/// business.
fn image_problem(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("it is empty".into());
    }
    if image.chars().count() > IMAGE_CHARS_MAX {
        return Some(format!("it is longer than {IMAGE_CHARS_MAX} characters"));
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it holds whitespace or control characters".into());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let plausible = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            !algorithm.is_empty()
                && algorithm.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !plausible {
            return Some(format!("`@{digest}` is not a digest such as @sha256:<64 hex digits>"));
        }
    }
    // A tag follows the last `:` after the last `/`; a `:` before that belongs to a registry's port.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            return Some(format!("the tag `{tag}` is not 1 to 128 letters, digits, `_`, `.` or `-`"));
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part names a registry when it looks like a host (a dot, a port, or `localhost`) and more follows.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let registry = parts.remove(0);
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        let host_ok = !host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
            && !host.starts_with(['.', '-']);
        let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !(host_ok && port_ok) {
            return Some(format!("`{registry}` is not a registry host such as localhost or ghcr.io:443"));
        }
    }
    for part in parts {
        let bytes = part.as_bytes();
        let valid = bytes.first().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.last().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
        if !valid {
            return Some(format!(
                "the name part `{part}` is not lowercase letters and digits, separated by `.`, `_` or `-`"
            ));
        }
    }
    None
}

/// Cuts `text` to at most `bytes_max` bytes, on a character boundary, saying so at the end.
fn cap(mut text: String, bytes_max: usize) -> String {
    if text.len() > bytes_max {
        let mut end = bytes_max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n[cut by Ferry]\n");
    }
    text
}

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

/// A submission checked (`validate`) for its submitter, who owns it: its team and project are ones the submitter
/// belongs to (`ownership`), and its shipped code's size is filled in from the archive the server holds.
pub(crate) async fn prepare(state: &AppState, spec: SubmitJob, submitter: &UserCaller) -> Result<NewJob, ApiError> {
    let mut job = validate(spec, &submitter.name)?;
    ownership(state, submitter, &mut job).await?;
    secrets_exist(state, &job).await?;
    if let Some(code) = &mut job.code {
        code.size_bytes = state.code.size(&code.sha256).await.ok_or_else(|| {
            ApiError::invalid(format!(
                "the server holds no code archive {}; upload it with PUT /api/v1/code/{{sha256}} first",
                code.sha256
            ))
        })?;
    }
    Ok(job)
}

/// Settles a job's team and project for its submitter: the team must be one the submitter may submit to (by
/// default its default or only team), and a project must be one of that team's. Quotas, fair share and usage follow
/// from this, so nothing the request claims is taken on trust.
async fn ownership(state: &AppState, submitter: &UserCaller, job: &mut NewJob) -> Result<(), ApiError> {
    let forbidden = |message: String| ApiError::new(ferry_api::ErrorCode::Forbidden, message);
    let named = job.team.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(team) = named {
        if !state.store.team_exists(team).await? {
            return Err(ApiError::invalid(format!(
                "there is no team `{team}`; `ferry team list` shows the teams you belong to"
            )));
        }
    }
    job.team = submitter.submission_team(named).map_err(forbidden)?;
    let project = job.project.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(str::to_string);
    job.project = match (project, job.team.as_deref()) {
        (None, _) => None,
        (Some(project), Some(team)) => {
            if !state.store.project_exists(team, &project).await? {
                return Err(ApiError::invalid(format!(
                    "team {team} has no project `{project}`; a team admin creates it with `ferry team project {team} \
                     {project}`"
                )));
            }
            Some(project)
        }
        // An installation admin's job outside every team may carry any project name (no quota applies to it).
        (Some(project), None) => Some(project),
    };
    Ok(())
}

/// Submits a job with an MLflow run of its own: the run is made first, the job carries its id into the driver's
/// commit, and a refused job leaves its run deleted.
pub(crate) async fn submit_tracked(
    state: &AppState,
    mut job: NewJob,
    key: Option<ferry_store::SubmissionKey>,
    experiment: Option<&str>,
    params: Vec<(String, String)>,
    tags: Vec<(String, String)>,
) -> Result<crate::driver::Submitted, ApiError> {
    let run = crate::jobruns::NewRun {
        experiment,
        project: job.project.as_deref(),
        owner: &job.owner,
        team: job.team.as_deref(),
        name: job.name.as_deref(),
        command: &job.command,
        git_commit: job.code.as_ref().and_then(|c| c.git_commit.as_deref()),
        params,
        tags,
    };
    let tracking = crate::jobruns::create(&state.store, run).await?;
    let run_id = tracking.run_id.clone();
    let named = job.name.is_some();
    job.tracking = Some(tracking);
    match state.driver.call(|reply| Command::Submit { job: Box::new(job), key, reply }).await {
        Ok(answer) if answer.again => {
            // A racing retry made the job first; this try's run is not wanted.
            crate::jobruns::discard(&state.store, &run_id).await;
            Ok(answer)
        }
        Ok(answer) => {
            crate::jobruns::attach(&state.store, &run_id, answer.id, named).await?;
            Ok(answer)
        }
        Err(e) => {
            crate::jobruns::discard(&state.store, &run_id).await;
            Err(e)
        }
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
        let (estimated_start_us, no_estimate) = match forecast {
            Some(StartForecast::At(at)) => (Some(at), None),
            Some(StartForecast::Unknown(why)) => (None, Some(why.to_string())),
            None => (None, None),
        };
        reason.map(|r| Waiting {
            message: r.to_string(),
            reason: serde_json::to_value(&r).expect("reasons serialize"),
            estimated_start_us,
            no_estimate,
        })
    } else {
        None
    };
    let timeline = state.store.job_events(record.id).await?;
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
    }
}

#[cfg(test)]
mod image_tests {
    use super::image_problem;

    #[test]
    fn plausible_image_references_pass() {
        for image in [
            "busybox",
            "localhost/busybox:ferry",
            "ghcr.io/org/train:1.2",
            "registry.example.com:5000/team/sub_project/img-x:v1.0-rc_2",
            "docker.io/library/ubuntu@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "nvcr.io/nvidia/pytorch:24.05-py3",
        ] {
            assert_eq!(image_problem(image), None, "{image}");
        }
    }

    #[test]
    fn implausible_image_references_say_what_is_wrong() {
        let cases = [
            ("", "it is empty"),
            ("busy box", "it holds whitespace or control characters"),
            ("busybox\n", "it holds whitespace or control characters"),
            ("Busybox", "the name part `Busybox` is not lowercase letters and digits"),
            ("busybox:", "the tag `` is not 1 to 128 letters"),
            ("busybox:-x", "the tag `-x` is not"),
            ("localhost/busybox@md5", "`@md5` is not a digest"),
            ("a//b", "the name part `` is not"),
            ("localhost:x/busybox", "`localhost:x` is not a registry host"),
        ];
        for (image, expected) in cases {
            let problem = image_problem(image).unwrap_or_default();
            assert!(problem.starts_with(expected), "{image:?}: {problem}");
        }
        assert!(image_problem(&"a".repeat(256)).unwrap().contains("longer than 255"));
    }
}
