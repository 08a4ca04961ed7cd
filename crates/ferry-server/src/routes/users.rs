//! Users, service accounts and teams: installation admins create users and teams and disable users; team admins
//! manage their team's members and projects; everyone may ask who they are and see the teams they belong to.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_api::tokens::{
    identity_name_problem, CreateProject, CreateTeam, CreateUser, GroupRule, GroupRuleList, Quota, QuotaAmount,
    SetGroupRule, SetMember, TeamInfo, TeamList, TeamRole, UserInfo, UserList, WhoAmI, GROUP_NAME_CHARS_MAX,
};
use ferry_api::{ErrorBody, ErrorCode};
use ferry_store::{NewUser, UserRecord};

use crate::auth::Caller;
use crate::convert::{quota_amount, quota_from_record, quota_record, quota_resources};
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::state::AppState;

use super::JsonBody;

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

pub(crate) fn admin_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(forbidden(format!("only an installation admin (with an admin-scoped token) may {what}")))
    }
}

fn checked_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    match identity_name_problem(name) {
        Some(problem) => Err(ApiError::invalid(problem)),
        None => Ok(name),
    }
}

async fn user_info(state: &AppState, user: UserRecord) -> Result<UserInfo, ApiError> {
    let teams = crate::auth::roles(state, user.id).await?;
    Ok(UserInfo {
        name: user.name,
        service: user.kind == "service",
        admin: user.admin,
        disabled: user.disabled_at_us.is_some(),
        default_team: user.default_team,
        teams,
        created_at_us: user.created_at_us,
        created_by: user.created_by,
    })
}

async fn find_user(state: &AppState, name: &str) -> Result<UserRecord, ApiError> {
    state
        .store
        .user_by_name(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no user `{name}`; `ferry user list` shows them")))
}

/// Who the caller is: the user behind the token, the token's scope and the caller's teams.
#[utoipa::path(get, path = "/api/v1/whoami",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn whoami(State(state): State<AppState>, caller: Caller) -> Result<Json<WhoAmI>, ApiError> {
    let user = state.store.user(caller.id).await?.ok_or_else(ApiError::unavailable)?;
    Ok(Json(WhoAmI { user: user_info(&state, user).await?, scope: caller.scope, expires_at_us: caller.expires_at_us }))
}

/// Users and service accounts: all of them for an installation admin, oneself for anyone else.
#[utoipa::path(get, path = "/api/v1/users",
    responses((status = 200, body = UserList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<UserList>, ApiError> {
    let mut users = Vec::new();
    for user in state.store.users().await? {
        if caller.admin || user.id == caller.id {
            users.push(user_info(&state, user).await?);
        }
    }
    Ok(Json(UserList { users }))
}

#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUser,
    responses((status = 201, body = UserInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateUser>,
) -> Result<(StatusCode, axum::Extension<crate::audit::AuditNote>, Json<UserInfo>), ApiError> {
    admin_only(&caller, "create users")?;
    let Json(spec) = body.map_err(rejection)?;
    let name = checked_name(&spec.name)?;
    for team in spec.teams.keys() {
        if !state.store.team_exists(team).await? {
            return Err(ApiError::not_found(format!("no team `{team}`; create it with `ferry team add {team}`")));
        }
    }
    let default_team = match (&spec.default_team, spec.teams.len()) {
        (Some(team), _) if !spec.teams.contains_key(team) => {
            return Err(ApiError::invalid(format!("the default team `{team}` must be one of the user's teams")))
        }
        (Some(team), _) => Some(team.clone()),
        (None, 1) => spec.teams.keys().next().cloned(),
        (None, _) => None,
    };
    let kind = if spec.service { "service" } else { "user" };
    let new = NewUser {
        name,
        kind,
        admin: spec.admin,
        default_team: default_team.as_deref(),
        created_by: Some(&caller.name),
    };
    let id = state
        .store
        .create_user(&new, now_us())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, format!("there is already a user `{name}`")))?;
    for (team, role) in &spec.teams {
        state.store.set_member(team, id, role.name()).await?;
    }
    tracing::info!(user = name, kind, admin = spec.admin, by = %caller.name, "user created");
    let user = state.store.user(id).await?.ok_or_else(ApiError::unavailable)?;
    let note = crate::audit::note(format!("{kind} {name}{}", if spec.admin { " (installation admin)" } else { "" }));
    Ok((StatusCode::CREATED, note, Json(user_info(&state, user).await?)))
}

/// Disables a user: every token and session of theirs is refused from now on; their jobs keep running.
#[utoipa::path(post, path = "/api/v1/users/{name}/disable", params(("name" = String, Path)),
    responses((status = 200, body = UserInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn disable(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<UserInfo>, ApiError> {
    admin_only(&caller, "disable users")?;
    let user = find_user(&state, &name).await?;
    if user.disabled_at_us.is_some() {
        return Err(ApiError::new(ErrorCode::Conflict, format!("user {name} is already disabled")));
    }
    if user.admin && state.store.enabled_admins().await? <= 1 {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{name} is the last installation admin; make another admin first (`ferry user add NAME --admin`)"),
        ));
    }
    state.store.set_user_disabled(user.id, Some(now_us())).await?;
    state.store.end_sessions_of(user.id).await?;
    state.tokens.clear();
    tracing::info!(user = %name, by = %caller.name, "user disabled");
    Ok(Json(user_info(&state, find_user(&state, &name).await?).await?))
}

#[utoipa::path(post, path = "/api/v1/users/{name}/enable", params(("name" = String, Path)),
    responses((status = 200, body = UserInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn enable(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<UserInfo>, ApiError> {
    admin_only(&caller, "enable users")?;
    let user = find_user(&state, &name).await?;
    if user.disabled_at_us.is_none() {
        return Err(ApiError::new(ErrorCode::Conflict, format!("user {name} is not disabled")));
    }
    state.store.set_user_disabled(user.id, None).await?;
    state.tokens.clear();
    tracing::info!(user = %name, by = %caller.name, "user enabled");
    Ok(Json(user_info(&state, find_user(&state, &name).await?).await?))
}

/// Teams: all of them for an installation admin, the caller's own for anyone else.
#[utoipa::path(get, path = "/api/v1/teams",
    responses((status = 200, body = TeamList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn teams(State(state): State<AppState>, caller: Caller) -> Result<Json<TeamList>, ApiError> {
    let quotas = Quotas::read(&state).await?;
    let teams = state
        .store
        .teams()
        .await?
        .into_iter()
        .filter(|t| caller.sees_team(Some(&t.name)))
        .map(|t| quotas.team_wire(t))
        .collect();
    Ok(Json(TeamList { teams }))
}

/// The quotas in force, as the scheduler has them (the configuration file's, and the store's where it sets none).
struct Quotas {
    teams: Vec<ferry_core::TeamInfo>,
    projects: Vec<ferry_core::ProjectInfo>,
    /// What was set through the API, as written (what a project's quota names, before its team fills the rest).
    stored: Vec<ferry_store::StoredQuota>,
}

impl Quotas {
    async fn read(state: &AppState) -> Result<Quotas, ApiError> {
        let stored = state.store.quotas().await?;
        let (teams, projects) = crate::config::effective_quotas(&state.file, &stored);
        Ok(Quotas { teams, projects, stored })
    }

    fn team(&self, team: &str) -> Option<&ferry_core::TeamInfo> {
        self.teams.iter().find(|t| t.name == team)
    }

    fn team_wire(&self, team: ferry_store::TeamRecord) -> TeamInfo {
        let wire = |quota: &ferry_core::Resources, borrow: Option<&ferry_core::Resources>| Quota {
            quota: quota_amount(quota),
            borrow_limit: borrow.map(quota_amount),
        };
        TeamInfo {
            members: team.members.into_iter().filter_map(|(u, r)| TeamRole::parse(&r).map(|r| (u, r))).collect(),
            quota: self.team(&team.name).map(|t| wire(&t.quota, t.borrow_limit.as_ref())),
            project_quotas: self
                .projects
                .iter()
                .filter(|p| p.team == team.name)
                .map(|p| (p.name.clone(), wire(&p.quota, p.borrow_limit.as_ref())))
                .collect(),
            name: team.name,
            projects: team.projects,
            created_at_us: team.created_at_us,
        }
    }
}

async fn team_info(state: &AppState, name: &str) -> Result<TeamInfo, ApiError> {
    let team = state.store.teams().await?.into_iter().find(|t| t.name == name).ok_or_else(ApiError::unavailable)?;
    Ok(Quotas::read(state).await?.team_wire(team))
}

#[utoipa::path(post, path = "/api/v1/teams", request_body = CreateTeam,
    responses((status = 201, body = TeamInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_team(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<CreateTeam>,
) -> Result<(StatusCode, axum::Extension<crate::audit::AuditNote>, Json<TeamInfo>), ApiError> {
    admin_only(&caller, "create teams")?;
    let Json(spec) = body.map_err(rejection)?;
    let name = checked_name(&spec.name)?;
    if !state.store.create_team(name, Some(&caller.name), now_us()).await? {
        return Err(ApiError::new(ErrorCode::Conflict, format!("there is already a team `{name}`")));
    }
    tracing::info!(team = name, by = %caller.name, "team created");
    Ok((StatusCode::CREATED, crate::audit::note(format!("team {name}")), Json(team_info(&state, name).await?)))
}

/// A team the caller may manage, or why not. Another team is not confirmed to exist to a non-member.
pub(crate) async fn managed_team(state: &AppState, caller: &Caller, team: &str) -> Result<(), ApiError> {
    let exists = state.store.team_exists(team).await?;
    if !exists || !caller.sees_team(Some(team)) {
        return Err(ApiError::not_found(format!("no team `{team}`; `ferry team list` shows your teams")));
    }
    if !caller.manages_team(team) {
        return Err(forbidden(format!(
            "only an admin of team {team} (with an admin-scoped token) or an installation admin may change it"
        )));
    }
    Ok(())
}

/// Adds a member to a team or changes their role.
#[utoipa::path(put, path = "/api/v1/teams/{team}/members/{user}", request_body = SetMember,
    params(("team" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = TeamInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((team, user)): Path<(String, String)>,
    body: JsonBody<SetMember>,
) -> Result<Json<TeamInfo>, ApiError> {
    let Json(spec) = body.map_err(rejection)?;
    managed_team(&state, &caller, &team).await?;
    let found = find_user(&state, &user).await?;
    let current: BTreeMap<String, String> = state.store.memberships(found.id).await?.into_iter().collect();
    if current.get(&team).map(String::as_str) == Some("admin")
        && spec.role != TeamRole::Admin
        && state.store.team_admins(&team).await? <= 1
        && !caller.is_admin()
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{user} is the last admin of team {team}; make another member admin first"),
        ));
    }
    state.store.set_member(&team, found.id, spec.role.name()).await?;
    if found.default_team.is_none() && spec.role >= TeamRole::Member {
        state.store.set_default_team(found.id, Some(&team)).await?;
    }
    state.tokens.clear();
    tracing::info!(team = %team, user = %user, role = spec.role.name(), by = %caller.name, "team member set");
    Ok(Json(team_info(&state, &team).await?))
}

#[utoipa::path(delete, path = "/api/v1/teams/{team}/members/{user}",
    params(("team" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = TeamInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((team, user)): Path<(String, String)>,
) -> Result<Json<TeamInfo>, ApiError> {
    managed_team(&state, &caller, &team).await?;
    let found = find_user(&state, &user).await?;
    let current: BTreeMap<String, String> = state.store.memberships(found.id).await?.into_iter().collect();
    match current.get(&team).map(String::as_str) {
        None => return Err(ApiError::not_found(format!("{user} is not a member of team {team}"))),
        Some("admin") if state.store.team_admins(&team).await? <= 1 && !caller.is_admin() => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("{user} is the last admin of team {team}; make another member admin first"),
            ))
        }
        Some(_) => {}
    }
    state.store.remove_member(&team, found.id).await?;
    if found.default_team.as_deref() == Some(team.as_str()) {
        state.store.set_default_team(found.id, None).await?;
    }
    state.tokens.clear();
    tracing::info!(team = %team, user = %user, by = %caller.name, "team member removed");
    Ok(Json(team_info(&state, &team).await?))
}

#[utoipa::path(post, path = "/api/v1/teams/{team}/projects", request_body = CreateProject,
    params(("team" = String, Path)),
    responses((status = 201, body = TeamInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(team): Path<String>,
    body: JsonBody<CreateProject>,
) -> Result<(StatusCode, axum::Extension<crate::audit::AuditNote>, Json<TeamInfo>), ApiError> {
    let Json(spec) = body.map_err(rejection)?;
    managed_team(&state, &caller, &team).await?;
    let name = checked_name(&spec.name)?;
    if !state.store.create_project(&team, name, Some(&caller.name), now_us()).await? {
        return Err(ApiError::new(ErrorCode::Conflict, format!("team {team} already has a project `{name}`")));
    }
    tracing::info!(team = %team, project = name, by = %caller.name, "project created");
    let note = crate::audit::note(format!("project {name}"));
    Ok((StatusCode::CREATED, note, Json(team_info(&state, &team).await?)))
}

/// The single sign-on group rules: all of them for an installation admin, those of the caller's teams for anyone
/// else.
#[utoipa::path(get, path = "/api/v1/groups",
    responses((status = 200, body = GroupRuleList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn group_rules(State(state): State<AppState>, caller: Caller) -> Result<Json<GroupRuleList>, ApiError> {
    let rules = state
        .store
        .group_rules()
        .await?
        .into_iter()
        .filter(|r| caller.sees_team(Some(&r.team)))
        .filter_map(|r| Some(GroupRule { role: TeamRole::parse(&r.role)?, group: r.group, team: r.team }))
        .collect();
    Ok(Json(GroupRuleList { rules }))
}

/// Members of the provider's group get a role in the team, from their next sign-in (or session check) on.
#[utoipa::path(put, path = "/api/v1/teams/{team}/groups", request_body = SetGroupRule,
    params(("team" = String, Path)),
    responses((status = 200, body = GroupRule), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_group_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(team): Path<String>,
    body: JsonBody<SetGroupRule>,
) -> Result<Json<GroupRule>, ApiError> {
    let Json(spec) = body.map_err(rejection)?;
    managed_team(&state, &caller, &team).await?;
    let group = spec.group.trim();
    if group.is_empty() || group.chars().count() > GROUP_NAME_CHARS_MAX || group.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "the group must be the provider's group name, 1 to {GROUP_NAME_CHARS_MAX} characters without control \
             characters"
        )));
    }
    if spec.role == TeamRole::Admin && !caller.is_admin() {
        return Err(forbidden("only an installation admin may let a provider's group make team admins"));
    }
    let rule =
        ferry_store::GroupRule { group: group.to_string(), team: team.clone(), role: spec.role.name().to_string() };
    state.store.set_group_rule(&rule, Some(&caller.name), now_us()).await?;
    tracing::info!(team = %team, group, role = spec.role.name(), by = %caller.name, "group rule set");
    Ok(Json(GroupRule { group: rule.group, team, role: spec.role }))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupQuery {
    /// The provider's group whose rule for the team goes.
    group: String,
}

/// Removes a group rule; the memberships it granted go at each member's next sign-in (or session check).
#[utoipa::path(delete, path = "/api/v1/teams/{team}/groups", params(("team" = String, Path), GroupQuery),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_group_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(team): Path<String>,
    query: Result<axum::extract::Query<GroupQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let axum::extract::Query(q) = query.map_err(rejection)?;
    managed_team(&state, &caller, &team).await?;
    if !state.store.remove_group_rule(&q.group, &team).await? {
        return Err(ApiError::not_found(format!("team {team} has no rule for the group `{}`", q.group)));
    }
    tracing::info!(team = %team, group = %q.group, by = %caller.name, "group rule removed");
    Ok(StatusCode::NO_CONTENT)
}

fn checked_quota(quota: &Quota) -> Result<(), ApiError> {
    for amount in std::iter::once(&quota.quota).chain(quota.borrow_limit.as_ref()) {
        if let Some(problem) = amount.problem() {
            return Err(ApiError::invalid(problem));
        }
    }
    Ok(())
}

fn in_file(state: &AppState, team: &str, project: Option<&str>) -> Result<(), ApiError> {
    if crate::config::quota_in_file(&state.file, team, project) {
        let what = match project {
            Some(p) => format!("project {p} of team {team}"),
            None => format!("team {team}"),
        };
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("the quota of {what} is set in the server's configuration file; change it there and restart"),
        ));
    }
    Ok(())
}

/// Sets a team's quota (installation admins): guaranteed resources and how much more the team may borrow.
#[utoipa::path(put, path = "/api/v1/teams/{team}/quota", request_body = Quota, params(("team" = String, Path)),
    responses((status = 200, body = TeamInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_team_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path(team): Path<String>,
    body: JsonBody<Quota>,
) -> Result<Json<TeamInfo>, ApiError> {
    let Json(quota) = body.map_err(rejection)?;
    admin_only(&caller, "set a team's quota")?;
    change_quota(&state, &caller, &team, None, Some(quota)).await
}

/// Removes a team's quota set through the API: the team is then limited by nothing but fair share.
#[utoipa::path(delete, path = "/api/v1/teams/{team}/quota", params(("team" = String, Path)),
    responses((status = 200, body = TeamInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn clear_team_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path(team): Path<String>,
) -> Result<Json<TeamInfo>, ApiError> {
    admin_only(&caller, "remove a team's quota")?;
    change_quota(&state, &caller, &team, None, None).await
}

/// Sets a project's quota (the team's admins), a share of the team's quota.
#[utoipa::path(put, path = "/api/v1/teams/{team}/projects/{project}/quota", request_body = Quota,
    params(("team" = String, Path), ("project" = String, Path)),
    responses((status = 200, body = TeamInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn set_project_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path((team, project)): Path<(String, String)>,
    body: JsonBody<Quota>,
) -> Result<Json<TeamInfo>, ApiError> {
    let Json(quota) = body.map_err(rejection)?;
    managed_team(&state, &caller, &team).await?;
    change_quota(&state, &caller, &team, Some(&project), Some(quota)).await
}

#[utoipa::path(delete, path = "/api/v1/teams/{team}/projects/{project}/quota",
    params(("team" = String, Path), ("project" = String, Path)),
    responses((status = 200, body = TeamInfo), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn clear_project_quota(
    State(state): State<AppState>,
    caller: Caller,
    Path((team, project)): Path<(String, String)>,
) -> Result<Json<TeamInfo>, ApiError> {
    managed_team(&state, &caller, &team).await?;
    change_quota(&state, &caller, &team, Some(&project), None).await
}

/// Sets or clears a quota after checking that it fits: a project's within its team's, a team's above each of its
/// projects'; then the scheduler runs with it at once.
async fn change_quota(
    state: &AppState,
    caller: &Caller,
    team: &str,
    project: Option<&str>,
    quota: Option<Quota>,
) -> Result<Json<TeamInfo>, ApiError> {
    if !state.store.team_exists(team).await? {
        return Err(ApiError::not_found(format!("no team `{team}`; `ferry team list` shows the teams")));
    }
    if let Some(project) = project {
        if !state.store.project_exists(team, project).await? {
            return Err(ApiError::not_found(format!(
                "team {team} has no project `{project}`; add it with `ferry team project {team} {project}`"
            )));
        }
    }
    in_file(state, team, project)?;
    let current = Quotas::read(state).await?;
    if let Some(quota) = &quota {
        checked_quota(quota)?;
        match project {
            Some(project) => {
                if let Some(team_quota) = current.team(team).map(|t| t.quota) {
                    // What the project's quota leaves out is the team's; what it names must fit within the team's.
                    if !crate::config::project_amount(&quota.quota, &team_quota).fits_in(&team_quota) {
                        return Err(ApiError::invalid(format!(
                            "project {project}'s quota must fit within team {team}'s ({}); ask an installation admin \
                             to raise the team's quota",
                            describe(&quota_amount(&team_quota))
                        )));
                    }
                }
            }
            None => {
                // A project's own amounts must fit; what it leaves out follows the team's new quota.
                let amount = quota_resources(&quota.quota);
                let named = |p: &ferry_core::ProjectInfo| -> QuotaAmount {
                    let own =
                        current.stored.iter().find(|s| s.team == team && s.project.as_deref() == Some(p.name.as_str()));
                    match own {
                        Some(s) => quota_from_record(&s.quota).quota,
                        None => quota_amount(&p.quota),
                    }
                };
                let over: Vec<&str> = current
                    .projects
                    .iter()
                    .filter(|p| p.team == team && !crate::config::project_amount(&named(p), &amount).fits_in(&amount))
                    .map(|p| p.name.as_str())
                    .collect();
                if !over.is_empty() {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "the quotas of team {team}'s projects {} do not fit within this quota; lower them first",
                            over.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    let record = quota.as_ref().map(quota_record);
    state.store.set_quota(team, project, record.as_ref()).await?;
    state.driver.call(|reply| crate::driver::Command::QuotasChanged { reply }).await?;
    tracing::info!(team, project = ?project, ?quota, by = %caller.name, "quota changed");
    Ok(Json(team_info(state, team).await?))
}

/// A quota amount in words, for messages: `8 GPUs, 64 CPUs, 512 GiB`; `no limit` when it has none.
fn describe(amount: &QuotaAmount) -> String {
    let mut parts = Vec::new();
    if let Some(gpus) = amount.gpus {
        parts.push(format!("{gpus} GPUs"));
    }
    if let Some(millis) = amount.cpu_millis {
        parts.push(format!("{} CPUs", millis as f64 / 1000.0));
    }
    if let Some(bytes) = amount.memory_bytes {
        parts.push(format!("{} GiB memory", bytes as f64 / (1u64 << 30) as f64));
    }
    if parts.is_empty() {
        "no limit".to_string()
    } else {
        parts.join(", ")
    }
}
