//! Secrets: a user's own, and a team's projects' (set by the team's admins). Values go in and are never answered
//! back; listings carry names, owners and times. Setting and removing one is audited like every other action (the
//! audit log records the route, never the body).

use axum::extract::{Path, State};
use axum::Json;
use ferry_api::secrets::{
    check_name, FetchSecrets, FetchedSecrets, SecretInfo, SecretList, SecretScope, SecretSet, SetSecret,
    SECRETS_PER_OWNER_MAX, SECRET_BYTES_MAX,
};
use ferry_api::{ErrorBody, ErrorCode};
use ferry_store::{SecretOwner, SecretRecord};

use crate::auth::Caller;
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::state::AppState;

use super::JsonBody;

fn to_wire(r: SecretRecord) -> SecretInfo {
    let (scope, user, team, project) = match r.owner.team_project() {
        Some((team, project)) => (SecretScope::Project, None, Some(team.to_string()), Some(project.to_string())),
        None => (SecretScope::User, Some(r.owner.owner.clone()), None, None),
    };
    SecretInfo {
        name: r.name,
        scope,
        user,
        team,
        project,
        created_at_us: r.created_at_us,
        updated_at_us: r.updated_at_us,
        updated_by: r.updated_by,
    }
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    check_name(name).map_or(Ok(()), |problem| Err(ApiError::invalid(problem)))
}

/// Seals and stores `value` for `owner`.
async fn put(
    state: &AppState,
    caller: &Caller,
    owner: SecretOwner,
    name: &str,
    body: JsonBody<SetSecret>,
) -> Result<Json<SecretSet>, ApiError> {
    checked_name(name)?;
    let Json(SetSecret { value }) = body.map_err(rejection)?;
    if value.len() > SECRET_BYTES_MAX {
        return Err(ApiError::invalid(format!(
            "the value is {} bytes; a secret holds at most {} KiB (keep larger credentials in a file the job reads)",
            value.len(),
            SECRET_BYTES_MAX / 1024
        )));
    }
    if value.contains('\0') {
        return Err(ApiError::invalid("the value holds a NUL byte, which no program can receive in its environment"));
    }
    if state.store.secret(&owner, name).await?.is_none()
        && state.store.secret_count(&owner).await? >= SECRETS_PER_OWNER_MAX as u64
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{} already holds {SECRETS_PER_OWNER_MAX} secrets; remove some first", owner.owner),
        ));
    }
    let sealed = state.secrets.seal(&owner, name, &value).map_err(|e| {
        tracing::error!(error = %e, "cannot seal a secret");
        ApiError::unavailable()
    })?;
    let created = state.store.put_secret(&owner, name, &sealed, now_us(), &caller.name).await?;
    tracing::info!(scope = owner.scope, owner = %owner.owner, name, by = %caller.name, created, "secret set");
    let record = state.store.secret(&owner, name).await?.ok_or_else(ApiError::unavailable)?;
    Ok(Json(SecretSet { secret: to_wire(record), created }))
}

async fn remove(
    state: &AppState,
    caller: &Caller,
    owner: SecretOwner,
    name: &str,
) -> Result<Json<SecretInfo>, ApiError> {
    checked_name(name)?;
    let found = state.store.secret(&owner, name).await?;
    let Some(found) = found else {
        return Err(ApiError::not_found(format!("no secret `{name}` there; `ferry secret list` shows the secrets")));
    };
    state.store.delete_secret(&owner, name).await?;
    tracing::info!(scope = owner.scope, owner = %owner.owner, name, by = %caller.name, "secret removed");
    Ok(Json(to_wire(found)))
}

/// Lists the secrets the caller may use: its own and those of its teams' projects (an installation admin: all
/// projects'). Names only: no value is ever answered.
#[utoipa::path(get, path = "/api/v1/secrets",
    responses((status = 200, body = SecretList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<SecretList>, ApiError> {
    let mut owners = vec![SecretOwner::user(&caller.name)];
    for team in state.store.teams().await? {
        if caller.admin || caller.role_in(&team.name).is_some() {
            owners.extend(team.projects.iter().map(|p| SecretOwner::project(&team.name, p)));
        }
    }
    let secrets = state.store.secrets_of(&owners).await?.into_iter().map(to_wire).collect();
    Ok(Json(SecretList { secrets }))
}

/// Sets one of the caller's own secrets, which only its jobs may use (`ferry run --secret NAME`).
#[utoipa::path(put, path = "/api/v1/secrets/user/{name}", request_body = SetSecret, params(("name" = String, Path)),
    responses((status = 200, body = SecretSet), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: JsonBody<SetSecret>,
) -> Result<Json<SecretSet>, ApiError> {
    let owner = SecretOwner::user(&caller.name);
    put(&state, &caller, owner, &name, body).await
}

/// Removes one of the caller's own secrets. Jobs already queued that need it then fail when they would start.
#[utoipa::path(delete, path = "/api/v1/secrets/user/{name}", params(("name" = String, Path)),
    responses((status = 200, body = SecretInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<SecretInfo>, ApiError> {
    let owner = SecretOwner::user(&caller.name);
    remove(&state, &caller, owner, &name).await
}

/// The project's secrets' owner, when the caller may manage them: an admin of the project's team (admin-scoped
/// token) or an installation admin.
async fn managed_project(
    state: &AppState,
    caller: &Caller,
    team: &str,
    project: &str,
) -> Result<SecretOwner, ApiError> {
    super::users::managed_team(state, caller, team).await?;
    if !state.store.project_exists(team, project).await? {
        return Err(ApiError::not_found(format!(
            "team {team} has no project `{project}`; a team admin creates it with `ferry team project {team} {project}`"
        )));
    }
    Ok(SecretOwner::project(team, project))
}

/// Sets a secret of a team's project, which every job of the project may use; for the team's admins.
#[utoipa::path(put, path = "/api/v1/secrets/projects/{team}/{project}/{name}", request_body = SetSecret,
    params(("team" = String, Path), ("project" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = SecretSet), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_project(
    State(state): State<AppState>,
    caller: Caller,
    Path((team, project, name)): Path<(String, String, String)>,
    body: JsonBody<SetSecret>,
) -> Result<Json<SecretSet>, ApiError> {
    let owner = managed_project(&state, &caller, &team, &project).await?;
    put(&state, &caller, owner, &name, body).await
}

/// Removes a secret of a team's project; for the team's admins.
#[utoipa::path(delete, path = "/api/v1/secrets/projects/{team}/{project}/{name}",
    params(("team" = String, Path), ("project" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = SecretInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_project(
    State(state): State<AppState>,
    caller: Caller,
    Path((team, project, name)): Path<(String, String, String)>,
) -> Result<Json<SecretInfo>, ApiError> {
    let owner = managed_project(&state, &caller, &team, &project).await?;
    remove(&state, &caller, owner, &name).await
}

/// A run on an engine without a secret store (Ray) fetches its secrets when it starts, once, with the ticket its
/// entrypoint carries; anyone else who read the entrypoint finds the ticket used. The run must be the job's current
/// one and running as its engine last reported (409 "not running yet" is retried by the entrypoint's fetcher); an
/// unknown run or a wrong ticket answers 404, a ticket used before 410.
#[utoipa::path(post, path = "/api/v1/runs/{job}/{attempt}/secrets", request_body = FetchSecrets,
    params(("job" = u64, Path), ("attempt" = u32, Path)),
    responses((status = 200, body = FetchedSecrets), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 410, body = ErrorBody)))]
pub async fn fetch(
    State(state): State<AppState>,
    Path((job, attempt)): Path<(String, String)>,
    body: JsonBody<FetchSecrets>,
) -> Result<Json<FetchedSecrets>, ApiError> {
    let Json(FetchSecrets { ticket }) = body.map_err(rejection)?;
    let missing = || ApiError::not_found("no such run, or not its ticket");
    let (Ok(job), Ok(attempt)) = (job.parse::<u64>(), attempt.parse::<u32>()) else { return Err(missing()) };
    if !crate::auth::fetch_ticket_valid(&state.job_key, job, attempt, &ticket) {
        return Err(missing());
    }
    let record = state.store.job(job).await?.ok_or_else(missing)?;
    if record.attempt != attempt || record.state.is_terminal() {
        return Err(ApiError::new(ErrorCode::Gone, format!("run {attempt} of job {job} is over")));
    }
    if record.state != ferry_api::jobs::JobState::Running {
        return Err(ApiError::new(ErrorCode::Conflict, "the run is not running yet; retry in a moment"));
    }
    if !state.store.claim_secret_fetch(job, attempt, now_us()).await? {
        tracing::warn!(job, attempt, "a run's secrets were asked for again with its used ticket");
        return Err(ApiError::new(
            ErrorCode::Gone,
            format!(
                "the secrets of run {attempt} of job {job} were fetched already: a ticket is used once (if the job \
                 itself did not, someone who read its entrypoint did)"
            ),
        ));
    }
    let mut tx = state.store.begin().await?;
    let resolved = state.secrets.resolve(&mut tx, &record.spec).await?;
    drop(tx);
    let mut env = resolved.map_err(|why| ApiError::new(ErrorCode::Gone, why))?.0;
    if record.spec.tracking.is_some() && !record.spec.env.contains_key(crate::jobruns::TOKEN_VAR) {
        env.insert(crate::jobruns::TOKEN_VAR.to_string(), crate::auth::job_token(&state.job_key, job));
    }
    tracing::info!(job, attempt, "a run fetched its secrets");
    Ok(Json(FetchedSecrets { env }))
}
