//! Who is calling, and what each kind of caller may do.
//!
//! Every request that is not public passes through `guard`, installed on each route by the route table
//! (`routes::table`) with that route's `Access`: it authenticates the token (or the dashboard's cookie), refuses a
//! caller of the wrong kind or scope, and leaves the `Principal` in the request for the handler, whose extractor
//! (`Caller`, `AgentCaller`, `Tracker`) can only be had through the guard. Handlers then check the object itself
//! (this job, that run) with the methods here, which are pure and unit-tested.
//!
//! Tokens are 256 random bits, so a single SHA-256 is a sound way to store them: there is nothing to brute-force.
//! A plain token is never logged or stored; it is shown once, when created.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_api::tokens::{TeamRole, TokenKind, TokenScope};
use ferry_api::ErrorCode;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

pub const TOKEN_PREFIX: &str = "ferry_";

pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who may call a route: the one rule every route of the table carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token: health, metrics, the OpenAPI document, the dashboard's pages and sign-in.
    Public,
    /// A user or service account (personal token or dashboard session) whose token has at least this scope.
    User(TokenScope),
    /// An agent, with a join token bound to the node it speaks for.
    Agent,
    /// The MLflow tracking API: a user with at least this scope, or a job with its tracking token (which reaches
    /// only the job's own run, checked per object). Errors in MLflow's shape.
    Tracking(TokenScope),
}

impl Access {
    pub fn describe(self) -> String {
        match self {
            Access::Public => "public".to_string(),
            Access::User(scope) => format!("user:{}", scope.name()),
            Access::Agent => "agent".to_string(),
            Access::Tracking(scope) => format!("tracking:{}", scope.name()),
        }
    }
}

/// A user or service account, as authenticated by one of its tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserCaller {
    pub id: i64,
    pub name: String,
    /// An installation admin; the powers need a token of `admin` scope, reading everything does not.
    pub admin: bool,
    pub service: bool,
    /// The scope of the token in use.
    pub scope: TokenScope,
    /// The token in use; `None` for a caller made inside the server.
    pub token_id: Option<i64>,
    pub expires_at_us: Option<i64>,
    pub teams: BTreeMap<String, TeamRole>,
    pub default_team: Option<String>,
}

impl UserCaller {
    /// Installation-admin powers: an admin user with an admin-scoped token.
    pub fn is_admin(&self) -> bool {
        self.admin && self.scope == TokenScope::Admin
    }

    pub fn role_in(&self, team: &str) -> Option<TeamRole> {
        self.teams.get(team).copied()
    }

    /// Sees what belongs to `team` (any role), or everything as an installation admin.
    pub fn sees_team(&self, team: Option<&str>) -> bool {
        self.admin || team.is_some_and(|t| self.teams.contains_key(t))
    }

    /// Sees a job or run of `owner` in `team`.
    pub fn sees(&self, owner: &str, team: Option<&str>) -> bool {
        self.admin || owner == self.name || self.sees_team(team)
    }

    /// Changes (cancels, logs to, deletes) something of `owner` in `team`: its owner, a team admin, an admin.
    pub fn changes(&self, owner: &str, team: Option<&str>) -> bool {
        self.scope >= TokenScope::Submit
            && (self.is_admin() || owner == self.name || team.is_some_and(|t| self.role_in(t) == Some(TeamRole::Admin)))
    }

    /// Sees a job's environment values: its owner, a team admin, an admin (other viewers see the names only).
    pub fn sees_env(&self, owner: &str, team: Option<&str>) -> bool {
        self.admin || owner == self.name || team.is_some_and(|t| self.role_in(t) == Some(TeamRole::Admin))
    }

    /// Manages a team's members and projects.
    pub fn manages_team(&self, team: &str) -> bool {
        self.scope == TokenScope::Admin && (self.is_admin() || self.role_in(team) == Some(TeamRole::Admin))
    }

    /// Submits work to `team`: a member or team admin (an installation admin anywhere).
    pub fn submits_to(&self, team: &str) -> bool {
        self.admin || self.role_in(team).is_some_and(|r| r >= TeamRole::Member)
    }

    /// The team a submission goes to: the one named, else the default team, else the only team the caller may
    /// submit to. An installation admin with no team submits outside every team; anyone else must have one.
    pub fn submission_team(&self, named: Option<&str>) -> Result<Option<String>, String> {
        if let Some(team) = named {
            return if self.submits_to(team) {
                Ok(Some(team.to_string()))
            } else {
                Err(format!("{} may not submit to team `{team}`; {}", self.name, self.teams_hint()))
            };
        }
        if let Some(team) = self.default_team.as_deref().filter(|t| self.submits_to(t)) {
            return Ok(Some(team.to_string()));
        }
        let mut submittable = self.teams.iter().filter(|(_, r)| **r >= TeamRole::Member).map(|(t, _)| t);
        match (submittable.next(), submittable.next()) {
            (Some(only), None) => Ok(Some(only.clone())),
            (Some(_), Some(_)) => Err(format!("{} belongs to several teams; name one with --team ({})", self.name, {
                let teams: Vec<&str> = self.submitting_teams();
                teams.join(", ")
            })),
            (None, _) if self.admin => Ok(None),
            (None, _) => Err(format!(
                "{} is in no team it may submit to; an admin adds members with `ferry team member TEAM USER --role \
                 member`",
                self.name
            )),
        }
    }

    fn submitting_teams(&self) -> Vec<&str> {
        self.teams.iter().filter(|(_, r)| **r >= TeamRole::Member).map(|(t, _)| t.as_str()).collect()
    }

    fn teams_hint(&self) -> String {
        let teams = self.submitting_teams();
        if teams.is_empty() {
            "it is a member of no team".to_string()
        } else {
            format!("it may submit to {}", teams.join(", "))
        }
    }
}

/// An agent, as authenticated by its join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    pub token_id: i64,
    /// The token's name, for logs.
    pub name: String,
    /// The node name, or a pattern with `*`, the token speaks for.
    pub node: String,
    /// How many distinct nodes the token may register.
    pub max_nodes: i64,
}

impl AgentIdentity {
    pub fn may_speak_for(&self, node: &str) -> bool {
        glob_match(&self.node, node)
    }
}

/// A running job, as authenticated by its tracking token: the MLflow API, on its own run only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobIdentity {
    pub job: u64,
    pub owner: String,
    pub team: Option<String>,
    pub run_id: Option<String>,
    pub experiment_id: Option<i64>,
}

/// Whoever made the request, as the guard authenticated them.
#[derive(Clone, Debug)]
pub enum Principal {
    User(Arc<UserCaller>),
    Agent(Arc<AgentIdentity>),
    Job(Arc<JobIdentity>),
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A user caller, for handlers of `Access::User` routes.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<UserCaller>);

impl std::ops::Deref for Caller {
    type Target = UserCaller;
    fn deref(&self) -> &UserCaller {
        &self.0
    }
}

/// An agent caller, for handlers of `Access::Agent` routes.
#[derive(Clone, Debug)]
pub struct AgentCaller(pub Arc<AgentIdentity>);

impl std::ops::Deref for AgentCaller {
    type Target = AgentIdentity;
    fn deref(&self) -> &AgentIdentity {
        &self.0
    }
}

/// A caller of the MLflow API: a user, or a job with its tracking token.
#[derive(Clone, Debug)]
pub enum Tracker {
    User(Arc<UserCaller>),
    Job(Arc<JobIdentity>),
}

impl Tracker {
    /// The name runs and experiments it makes are recorded under.
    pub fn name(&self) -> &str {
        match self {
            Tracker::User(u) => &u.name,
            Tracker::Job(j) => &j.owner,
        }
    }

    /// A user (not a job): what makes experiments and runs of its own.
    pub fn user(&self) -> Result<&UserCaller, ApiError> {
        match self {
            Tracker::User(u) => Ok(u),
            Tracker::Job(j) => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("the tracking token of job {} reaches only the job's own run", j.job),
            )),
        }
    }

    /// Sees a run: a job only its own; a user its own, its teams', or all as an installation admin (runs from before
    /// identities have no owner, and only admins see them).
    pub fn sees_run(&self, run: &ferry_store::RunRecord) -> bool {
        match self {
            Tracker::Job(j) => j.run_id.as_deref() == Some(run.id.as_str()),
            Tracker::User(u) => u.admin || run.owner.as_deref().is_some_and(|o| u.sees(o, run.team.as_deref())),
        }
    }

    /// Writes to a run (logs, tags, status, artifacts, deletion): a job its own; a user its own, as a team admin its
    /// team's, or any as an installation admin.
    pub fn writes_run(&self, run: &ferry_store::RunRecord) -> bool {
        match self {
            Tracker::Job(j) => j.run_id.as_deref() == Some(run.id.as_str()),
            Tracker::User(u) => u.is_admin() || run.owner.as_deref().is_some_and(|o| u.changes(o, run.team.as_deref())),
        }
    }

    /// Sees an experiment: a job only its own; a user those of its teams, its own, and the installation's shared
    /// ones (no team).
    pub fn sees_experiment(&self, e: &ferry_store::ExperimentRecord) -> bool {
        match self {
            Tracker::Job(j) => j.experiment_id == Some(e.id),
            Tracker::User(u) => {
                e.team.is_none() || u.sees_team(e.team.as_deref()) || e.owner.as_deref() == Some(u.name.as_str())
            }
        }
    }

    /// Renames, tags, deletes or restores an experiment: its creator, an admin of its team, an installation admin;
    /// never a job.
    pub fn writes_experiment(&self, e: &ferry_store::ExperimentRecord) -> bool {
        match self {
            Tracker::Job(_) => false,
            Tracker::User(u) => {
                u.is_admin()
                    || (u.scope >= TokenScope::Submit
                        && (e.owner.as_deref() == Some(u.name.as_str())
                            || e.team.as_deref().is_some_and(|t| u.role_in(t) == Some(TeamRole::Admin))))
            }
        }
    }
}

/// The team a user's new run or experiment belongs to: the experiment's team when the user may submit to it, else
/// the user's own team for submissions; `None` (the installation's) when it has none.
pub fn tracking_team(user: &UserCaller, experiment_team: Option<&str>) -> Option<String> {
    match experiment_team {
        Some(team) if user.submits_to(team) => Some(team.to_string()),
        _ => user.submission_team(None).ok().flatten(),
    }
}

fn unguarded() -> ApiError {
    ApiError::new(ErrorCode::Forbidden, "this route has no access rule; it is refused until it gets one")
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(Principal::User(u)) => Ok(Caller(u.clone())),
            _ => Err(unguarded()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<AgentCaller, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(Principal::Agent(a)) => Ok(AgentCaller(a.clone())),
            _ => Err(unguarded()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tracker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Tracker, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(Principal::User(u)) => Ok(Tracker::User(u.clone())),
            Some(Principal::Job(j)) => Ok(Tracker::Job(j.clone())),
            _ => Err(unguarded()),
        }
    }
}

/// The guard every non-public route runs first (see the module's comment).
pub async fn guard(State((state, access)): State<(AppState, Access)>, mut request: Request, next: Next) -> Response {
    if access == Access::Public {
        return next.run(request).await;
    }
    let source = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    // The body is not `Sync`, so the request cannot be borrowed across the awaits below: its parts are copied.
    let (headers, method) = (request.headers().clone(), request.method().clone());
    // A request without any credential guesses nothing: it neither counts against the source's limit nor goes to
    // the audit log, so that anonymous noise cannot fill either; a presented credential that fails does both.
    let presented = headers.contains_key(axum::http::header::AUTHORIZATION) || session_cookie(&headers).is_some();
    let anonymous = || presented.then(crate::audit::Actor::anonymous);
    let outcome = async {
        if let Some(ip) = source {
            state.failures.check(ip).map_err(|e| (e, None))?;
        }
        let principal = authenticate_request(&state, &headers, &method).await.map_err(|e| {
            if e.code == ErrorCode::Unauthenticated && presented {
                if let Some(ip) = source {
                    state.failures.record(ip);
                }
            }
            (e, anonymous())
        })?;
        admit(access, &principal).map_err(|e| (e, Some(crate::audit::Actor::of(&principal))))?;
        Ok::<_, (ApiError, Option<crate::audit::Actor>)>(principal)
    };
    match outcome.await {
        Ok(principal) => {
            let actor = crate::audit::Actor::of(&principal);
            request.extensions_mut().insert(principal);
            let mut response = next.run(request).await;
            response.extensions_mut().insert(actor);
            response
        }
        Err((e, actor)) => {
            let mut response = match access {
                Access::Tracking(_) => crate::routes::mlflow::MlflowFailure::from(e).into_response(),
                _ => e.into_response(),
            };
            if let Some(actor) = actor {
                response.extensions_mut().insert(actor);
            }
            response
        }
    }
}

/// Whether the authenticated caller is of the kind, and has the scope, the route needs.
pub fn admit(access: Access, principal: &Principal) -> Result<(), ApiError> {
    let forbidden = |message: String| Err(ApiError::new(ErrorCode::Forbidden, message));
    match (access, principal) {
        (Access::Public, _) => Ok(()),
        (Access::User(needed) | Access::Tracking(needed), Principal::User(u)) => {
            if u.scope >= needed {
                Ok(())
            } else {
                forbidden(format!(
                    "this token's scope is `{}` and this request needs `{}`; create one with `ferry token create \
                     --scope {}`",
                    u.scope.name(),
                    needed.name(),
                    needed.name()
                ))
            }
        }
        (Access::Agent, Principal::Agent(_)) => Ok(()),
        (Access::Tracking(_), Principal::Job(_)) => Ok(()),
        (_, Principal::Agent(_)) => forbidden("an agent token may only be used by agents".to_string()),
        (_, Principal::Job(_)) => forbidden(
            "a job's tracking token (MLFLOW_TRACKING_TOKEN) may only be used with the MLflow tracking API".to_string(),
        ),
        (Access::Agent, Principal::User(_)) => forbidden(
            "this route is for agents; a user's token may not be used here (an admin creates a join token with \
             `ferry token create --agent --node NAME`)"
                .to_string(),
        ),
    }
}

/// The prefix of a job's tracking token: `ferry_job_<job id>_<HMAC-SHA256 of the id, hex>`.
const JOB_TOKEN_PREFIX: &str = "ferry_job_";
/// How long after its job has ended a job's token is still accepted, for the last writes of a client that flushes
/// at exit (and for an end reported before the job's own last request).
const JOB_TOKEN_AFTER_END_US: i64 = 10 * 60 * 1_000_000;
/// The most nodes an agent token bound to a pattern registers when its creator did not say.
pub const AGENT_NODES_DEFAULT: i64 = 64;

fn job_mac(key: &[u8]) -> hmac::Hmac<Sha256> {
    use hmac::Mac;
    hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// The tracking token of job `job`, given to it as `MLFLOW_TRACKING_TOKEN`. Nothing is stored: the server checks
/// a token by computing it again, so a token is valid exactly while its job is (see `authenticate`).
pub fn job_token(key: &[u8], job: u64) -> String {
    use hmac::Mac;
    let mut mac = job_mac(key);
    mac.update(format!("ferry job token {job}").as_bytes());
    format!("{JOB_TOKEN_PREFIX}{job}_{}", hex::encode(mac.finalize().into_bytes()))
}

/// The job a well-formed, correctly signed job token belongs to.
fn job_of_token(key: &[u8], token: &str) -> Option<u64> {
    use hmac::Mac;
    let (id, mac) = token.strip_prefix(JOB_TOKEN_PREFIX)?.split_once('_')?;
    let job: u64 = id.parse().ok()?;
    let mac = hex::decode(mac).ok()?;
    let mut expected = job_mac(key);
    expected.update(format!("ferry job token {job}").as_bytes());
    // `verify_slice` compares in constant time.
    expected.verify_slice(&mac).ok().map(|_| job)
}

/// The one-time ticket with which run `attempt` of job `job` on an engine without a secret store (Ray) fetches its
/// secrets when it starts (`routes/secrets.rs`, `fetch`): an HMAC of the run, so nothing is stored but the fact
/// that it was used.
pub fn fetch_ticket(key: &[u8], job: u64, attempt: u32) -> String {
    use hmac::Mac;
    let mut mac = job_mac(key);
    mac.update(format!("ferry secrets fetch {job} {attempt}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `ticket` is run `attempt` of job `job`'s, compared in constant time.
pub fn fetch_ticket_valid(key: &[u8], job: u64, attempt: u32, ticket: &str) -> bool {
    use hmac::Mac;
    let Ok(mac) = hex::decode(ticket) else { return false };
    let mut expected = job_mac(key);
    expected.update(format!("ferry secrets fetch {job} {attempt}").as_bytes());
    expected.verify_slice(&mac).is_ok()
}

/// The cookie the web dashboard signs in with: a session id (never an API token), HTTP-only and `SameSite=Strict`, so
/// page scripts cannot read it and other sites cannot send it.
pub const SESSION_COOKIE: &str = "ferry_session";
/// The prefix of a session id: `ferry_session_<64 hex digits>`. The CLI's single sign-on uses one as its bearer
/// token, the dashboard's cookie holds one.
pub const SESSION_PREFIX: &str = "ferry_session_";
/// How long a dashboard sign-in with an API token lasts (at most as long as the token).
pub const TOKEN_SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, message)
}

/// Authenticates a request from its `Authorization: Bearer` header or the dashboard's cookie.
pub async fn authenticate_request(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    method: &axum::http::Method,
) -> Result<Principal, ApiError> {
    let missing = || {
        unauthenticated(
            "no API token; pass one with --token or FERRY_TOKEN (`ferry up` writes the admin token to admin.token in \
             its data directory)",
        )
    };
    if let Some(header) = headers.get(axum::http::header::AUTHORIZATION) {
        let token = header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).ok_or_else(|| {
            unauthenticated("the Authorization header must be `Bearer <token>`; pass the token with --token")
        })?;
        return authenticate(state, token).await;
    }
    let token = session_cookie(headers).ok_or_else(missing)?;
    if !token.starts_with(SESSION_PREFIX) {
        return Err(unauthenticated("the dashboard's cookie holds no session; sign in again at /login"));
    }
    if !method.is_safe() && !same_origin(headers) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a request signed in by the dashboard's cookie must come from the dashboard's own origin",
        ));
    }
    authenticate(state, &token).await
}

/// A job's tracking token: valid while its job is queued or running, and for a while after it ended.
async fn authenticate_job(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let invalid = || unauthenticated("the job tracking token is not valid");
    let job = job_of_token(&state.job_key, token).ok_or_else(invalid)?;
    let record = state.store.job(job).await?.ok_or_else(invalid)?;
    if let Some(finished) = record.finished_at_us {
        if crate::driver::now_us() - finished > JOB_TOKEN_AFTER_END_US {
            return Err(unauthenticated(format!(
                "the tracking token of job {job} expired when the job ended; use an API token"
            )));
        }
    }
    Ok(Principal::Job(Arc::new(JobIdentity {
        job,
        owner: record.spec.owner,
        team: record.spec.team,
        run_id: record.spec.tracking.as_ref().map(|t| t.run_id.clone()),
        experiment_id: record.spec.tracking.as_ref().map(|t| t.experiment_id),
    })))
}

/// The session id in the dashboard's cookie, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// The value of the cookie `name`, if the request carries a non-empty one.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

/// Whether a browser says the request comes from a page of this server (`Origin` names the `Host` it was sent to).
/// A state-changing request signed in by cookie must, so no other site can make a browser act for its user.
pub fn same_origin(headers: &axum::http::HeaderMap) -> bool {
    let text = |name| headers.get(name).and_then(|v: &axum::http::HeaderValue| v.to_str().ok());
    match (text(axum::http::header::ORIGIN), text(axum::http::header::HOST)) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
        }
        _ => false,
    }
}

/// Who holds `token`: from the cache, else the store (then cached). Expiry is checked on every use.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let token = token.trim();
    if token.starts_with(JOB_TOKEN_PREFIX) {
        return authenticate_job(state, token).await;
    }
    let hash = hash_token(token);
    let session = token.starts_with(SESSION_PREFIX);
    let (principal, expires_at_us, _) = match state.tokens.get(&hash) {
        Some(found) => found,
        None => {
            let found = if session { load_session(state, &hash).await? } else { load(state, &hash).await? };
            state.tokens.put(hash, found.clone());
            found
        }
    };
    if expires_at_us.is_some_and(|at| at <= crate::driver::now_us()) {
        return Err(unauthenticated(if session {
            "the sign-in has expired; sign in again (`ferry login`, or the dashboard's sign-in page)"
        } else {
            "the API token has expired; create a new one with `ferry token create`"
        }));
    }
    Ok(principal)
}

/// A session's user, checked again with the sign-in provider when its time has come (see `crate::oidc`).
async fn load_session(state: &AppState, hash: &str) -> Result<Checked, ApiError> {
    let now = crate::driver::now_us();
    let ended =
        || unauthenticated("the sign-in has ended; sign in again (`ferry login`, or the dashboard's sign-in page)");
    let mut session = state.store.session(hash, now).await?.ok_or_else(ended)?;
    if session.refresh_token.is_some() && session.recheck_at_us.is_some_and(|at| at <= now) {
        session.recheck_at_us = Some(recheck_session(state, &session, now).await?);
    }
    let user = state.store.user(session.user_id).await?.ok_or_else(ended)?;
    let scope = TokenScope::parse(&session.scope).unwrap_or(TokenScope::Read);
    let token = TokenUse { id: None, scope, expires_at_us: Some(session.expires_at_us) };
    let caller = user_caller(state, user, token).await?;
    Ok((Principal::User(Arc::new(caller)), Some(session.expires_at_us), session.recheck_at_us))
}

/// Checks a single sign-on session with the provider through its refresh token; returns when to check it next. A
/// provider that no longer vouches for the user (or names another) ends the session; one that cannot be reached
/// leaves it going, to be asked again in a minute, so that an outage of the provider does not sign everyone out.
async fn recheck_session(state: &AppState, session: &ferry_store::SessionRecord, now: i64) -> Result<i64, ApiError> {
    use crate::oidc::OidcError::{Refused, Unreachable};
    let ended =
        || unauthenticated("the sign-in has ended; sign in again (`ferry login`, or the dashboard's sign-in page)");
    let oidc = state.oidc.as_ref().ok_or_else(ended)?;
    // A refresh token that does not open (the data directory's secret changed) cannot be checked: signed out.
    let Some(refresh_token) = session.refresh_token.as_deref().and_then(|sealed| oidc.sealer.open(sealed)) else {
        state.store.end_session_by_id(session.id).await?;
        return Err(ended());
    };
    let (identity, rotated) = match oidc.refresh(&refresh_token).await {
        Ok(answer) => answer,
        Err(Refused(reason)) => {
            tracing::info!(session = session.id, %reason, "the sign-in provider ended a session");
            state.store.end_session_by_id(session.id).await?;
            return Err(unauthenticated(
                "the sign-in provider no longer vouches for this sign-in; sign in again (`ferry login`, or the \
                 dashboard's sign-in page)",
            ));
        }
        Err(Unreachable(reason)) => {
            tracing::warn!(session = session.id, %reason, "could not check a session with the sign-in provider");
            let next = now + 60_000_000;
            state.store.renew_session(session.id, None, next).await?;
            return Ok(next);
        }
    };
    if let Some(identity) = identity {
        match crate::oidc::sign_in(state, &oidc.config, &identity).await {
            Ok(user) if user.id == session.user_id => {}
            Ok(_) | Err(Refused(_)) => {
                state.store.end_session_by_id(session.id).await?;
                return Err(ended());
            }
            Err(Unreachable(m)) => return Err(ApiError::new(ErrorCode::Unavailable, m)),
        }
    }
    let next = now + micros(oidc.config.recheck);
    let rotated = rotated.map(|t| oidc.sealer.seal(&t));
    state.store.renew_session(session.id, rotated.as_deref(), next).await?;
    Ok(next)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

/// A session to start: whose, acting with which scope, signed in how (`token`, `oidc`, `oidc-device`; a token's id
/// for a sign-in with an API token, whose revocation ends the session), until when, and for single sign-on the
/// provider's refresh token with how often to check it again; from which address.
pub struct SessionStart<'a> {
    pub user_id: i64,
    pub scope: TokenScope,
    pub via: &'a str,
    pub token_id: Option<i64>,
    pub expires_at_us: i64,
    pub provider: Option<(Option<&'a str>, Duration)>,
    pub source: Option<&'a str>,
}

/// Starts a session. Returns its id (shown once: to the browser's cookie or the CLI).
pub async fn start_session(state: &AppState, start: SessionStart<'_>) -> Result<String, ApiError> {
    let now = crate::driver::now_us();
    let id = format!("{SESSION_PREFIX}{}", new_token().trim_start_matches(TOKEN_PREFIX));
    let (refresh_token, recheck_at_us) = match (start.provider, state.oidc.as_ref()) {
        (Some((refresh, recheck)), Some(oidc)) => {
            (refresh.map(|t| oidc.sealer.seal(t)), refresh.map(|_| now + micros(recheck)))
        }
        _ => (None, None),
    };
    let session = ferry_store::NewSession {
        hash: &hash_token(&id),
        user_id: start.user_id,
        scope: start.scope.name(),
        via: start.via,
        token_id: start.token_id,
        expires_at_us: start.expires_at_us,
        refresh_token: refresh_token.as_deref(),
        recheck_at_us,
        source: start.source,
    };
    state.store.create_session(&session, now).await?;
    Ok(id)
}

/// Ends the session `id` (sign-out).
pub async fn end_session(state: &AppState, id: &str) -> Result<(), ApiError> {
    state.store.end_session(&hash_token(id)).await?;
    state.tokens.clear();
    Ok(())
}

async fn load(state: &AppState, hash: &str) -> Result<Checked, ApiError> {
    let record = state
        .store
        .token_by_hash(hash)
        .await?
        .ok_or_else(|| unauthenticated("the API token is not valid; check --token or FERRY_TOKEN"))?;
    let principal = match TokenKind::parse(&record.kind) {
        Some(TokenKind::Agent) => Principal::Agent(Arc::new(AgentIdentity {
            token_id: record.id,
            name: record.name,
            node: record.node.unwrap_or_default(),
            max_nodes: record.max_nodes.unwrap_or(AGENT_NODES_DEFAULT),
        })),
        Some(TokenKind::User) => {
            let user = match record.user_id {
                Some(id) => state.store.user(id).await?,
                None => None,
            }
            .ok_or_else(|| unauthenticated("the API token belongs to no user"))?;
            let scope = record.scope.as_deref().and_then(TokenScope::parse).unwrap_or(TokenScope::Read);
            let token = TokenUse { id: Some(record.id), scope, expires_at_us: record.expires_at_us };
            Principal::User(Arc::new(user_caller(state, user, token).await?))
        }
        None => return Err(unauthenticated(format!("the token's kind `{}` is not known", record.kind))),
    };
    Ok((principal, record.expires_at_us, None))
}

/// The token a user calls with: which one (none for work the server does on the user's behalf), its scope and expiry.
struct TokenUse {
    id: Option<i64>,
    scope: TokenScope,
    expires_at_us: Option<i64>,
}

async fn user_caller(state: &AppState, user: ferry_store::UserRecord, token: TokenUse) -> Result<UserCaller, ApiError> {
    if user.disabled_at_us.is_some() {
        return Err(unauthenticated(format!(
            "user {} is disabled; an admin enables it with `ferry user enable`",
            user.name
        )));
    }
    let teams = roles(state, user.id).await?;
    Ok(UserCaller {
        id: user.id,
        name: user.name,
        admin: user.admin,
        service: user.kind == "service",
        scope: token.scope,
        token_id: token.id,
        expires_at_us: token.expires_at_us,
        teams,
        default_team: user.default_team,
    })
}

/// The user `name` as a caller of submit scope, for work the server does on a user's behalf (a sweep's trials): it
/// acts with the user's rights as they are now, so a disabled user or a lost membership stops it.
pub async fn user_named(state: &AppState, name: &str) -> Result<UserCaller, ApiError> {
    let user = state
        .store
        .user_by_name(name)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::Forbidden, format!("user {name} no longer exists")))?;
    let token = TokenUse { id: None, scope: TokenScope::Submit, expires_at_us: None };
    // A disabled user stops the work; a store that does not answer is retried by the caller.
    user_caller(state, user, token).await.map_err(|e| match e.code {
        ErrorCode::Unauthenticated => ApiError::new(ErrorCode::Forbidden, e.message),
        _ => e,
    })
}

/// A user's teams and role in each.
pub async fn roles(state: &AppState, user_id: i64) -> Result<BTreeMap<String, TeamRole>, ApiError> {
    let memberships = state.store.memberships(user_id).await?;
    Ok(memberships.into_iter().filter_map(|(team, role)| TeamRole::parse(&role).map(|r| (team, r))).collect())
}

/// How long a token, once checked against the store, is trusted without asking the store again; every change of
/// identities (a revocation, a disabled user, a membership) clears the cache at once.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
/// The most tokens remembered at once.
const TOKEN_CACHE_ENTRIES_MAX: usize = 1024;

/// Who a token speaks for, when it expires, and (for a single sign-on session) when it must be checked with the
/// provider again, which the cache does not answer past.
type Checked = (Principal, Option<i64>, Option<i64>);

/// Recently checked tokens, by hash, so that busy clients and agents do not cost database reads per request.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Checked, Instant)>>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> Option<Checked> {
        let entries = self.entries.lock().expect("token cache lock is never poisoned");
        let now = crate::driver::now_us();
        entries
            .get(hash)
            .filter(|((_, _, recheck_at), at)| at.elapsed() < TOKEN_CACHE_TTL && recheck_at.is_none_or(|r| r > now))
            .map(|(found, _)| found.clone())
    }

    /// Forgets every remembered token, so that a change of identities takes effect on the next request.
    pub fn clear(&self) {
        self.entries.lock().expect("token cache lock is never poisoned").clear();
    }

    fn put(&self, hash: String, found: Checked) {
        let mut entries = self.entries.lock().expect("token cache lock is never poisoned");
        if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
            if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (found, Instant::now()));
    }
}

/// Failed token checks per source address allowed within `FAILURE_WINDOW`; past it, the source is refused with 429
/// until the window passes, so a guessing client learns nothing more.
const FAILURES_PER_WINDOW_MAX: u32 = 30;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The most sources tracked at once (a flood of sources clears the table rather than growing it).
const FAILURE_SOURCES_MAX: usize = 10_000;

/// The environment variable that changes `FAILURES_PER_WINDOW_MAX` for an installation (for example a test suite that
/// presents hundreds of bad tokens on purpose).
pub const FAILURES_VAR: &str = "FERRY_AUTH_FAILURES_PER_MINUTE";

/// Failed sign-ins and token checks per source.
pub struct FailureLimiter {
    sources: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    max: u32,
}

impl Default for FailureLimiter {
    fn default() -> FailureLimiter {
        FailureLimiter { sources: Mutex::default(), max: FAILURES_PER_WINDOW_MAX }
    }
}

impl FailureLimiter {
    /// The limiter with the limit of `FERRY_AUTH_FAILURES_PER_MINUTE` when it is set to a number.
    pub fn from_env() -> FailureLimiter {
        let max = std::env::var(FAILURES_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(FAILURES_PER_WINDOW_MAX);
        FailureLimiter { max, ..FailureLimiter::default() }
    }

    pub fn check(&self, source: IpAddr) -> Result<(), ApiError> {
        let sources = self.sources.lock().expect("limiter lock is never poisoned");
        match sources.get(&source) {
            Some((count, since)) if *count >= self.max && since.elapsed() < FAILURE_WINDOW => Err(ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "too many failed token checks from {source}; wait {} s and check the token",
                    FAILURE_WINDOW.saturating_sub(since.elapsed()).as_secs().max(1)
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Checks the source's budget and spends one from it: for requests that cost something whether or not they
    /// succeed (starting a sign-in with the provider).
    pub fn spend(&self, source: IpAddr) -> Result<(), ApiError> {
        self.check(source)?;
        self.record(source);
        Ok(())
    }

    pub fn record(&self, source: IpAddr) {
        let mut sources = self.sources.lock().expect("limiter lock is never poisoned");
        if sources.len() >= FAILURE_SOURCES_MAX {
            sources.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
            if sources.len() >= FAILURE_SOURCES_MAX {
                sources.clear();
            }
        }
        let entry = sources.entry(source).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_session_cookie_is_found_among_others_and_empty_is_none() {
        let h = headers(&[(header::COOKIE, "theme=dark; ferry_session=ferry_abc ; other=1")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("ferry_abc"));
        let h = headers(&[(header::COOKIE, "a=1"), (header::COOKIE, "ferry_session=ferry_x")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("ferry_x"));
        assert_eq!(session_cookie(&headers(&[(header::COOKIE, "ferry_session=")])), None);
        assert_eq!(session_cookie(&headers(&[(header::COOKIE, "xferry_session=ferry_x")])), None);
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn only_a_page_of_this_server_is_same_origin() {
        let ok = headers(&[(header::ORIGIN, "http://127.0.0.1:7750"), (header::HOST, "127.0.0.1:7750")]);
        assert!(same_origin(&ok));
        let other = headers(&[(header::ORIGIN, "http://evil.example"), (header::HOST, "127.0.0.1:7750")]);
        assert!(!same_origin(&other));
        assert!(!same_origin(&headers(&[(header::HOST, "127.0.0.1:7750")])), "no Origin: not known to be ours");
    }

    #[test]
    fn node_patterns_match_whole_names() {
        let check = |pattern: &str, name: &str, expected: bool| {
            assert_eq!(glob_match(pattern, name), expected, "{pattern} ~ {name}");
        };
        check("node-a", "node-a", true);
        check("node-a", "node-ab", false);
        check("gpu-*", "gpu-1", true);
        check("gpu-*", "gpu-", true);
        check("gpu-*", "cpu-1", false);
        check("*.rack-b", "n1.rack-b", true);
        check("*.rack-b", "n1.rack-c", false);
        check("a*b*c", "axxbyyc", true);
        check("a*b*c", "axxc", false);
        check("ab*ba", "aba", false);
        check("*", "anything", true);
    }

    fn user(admin: bool, scope: TokenScope, teams: &[(&str, TeamRole)]) -> UserCaller {
        UserCaller {
            id: 1,
            name: "ana".into(),
            admin,
            service: false,
            scope,
            token_id: Some(1),
            expires_at_us: None,
            teams: teams.iter().map(|(t, r)| (t.to_string(), *r)).collect(),
            default_team: None,
        }
    }

    #[test]
    fn roles_and_scopes_decide_what_a_user_may_do() {
        let member = user(false, TokenScope::Submit, &[("vision", TeamRole::Member), ("nlp", TeamRole::Viewer)]);
        assert!(member.sees("bo", Some("vision")) && member.sees("bo", Some("nlp")));
        assert!(!member.sees("bo", Some("speech")) && !member.sees("bo", None));
        assert!(member.changes("ana", Some("speech")), "its own work, wherever it is");
        assert!(!member.changes("bo", Some("vision")), "a member cancels only its own jobs");
        assert!(!member.sees_env("bo", Some("vision")));
        assert!(member.submits_to("vision") && !member.submits_to("nlp") && !member.submits_to("speech"));
        assert_eq!(member.submission_team(None), Ok(Some("vision".into())), "the only team it may submit to");
        assert!(member.submission_team(Some("nlp")).unwrap_err().contains("may not submit to team `nlp`"));
        assert!(!member.manages_team("vision"));

        let lead = user(false, TokenScope::Admin, &[("vision", TeamRole::Admin)]);
        assert!(lead.changes("bo", Some("vision")) && lead.sees_env("bo", Some("vision")));
        assert!(lead.manages_team("vision") && !lead.manages_team("nlp"));
        let lead_reading = UserCaller { scope: TokenScope::Read, ..lead.clone() };
        assert!(!lead_reading.changes("bo", Some("vision")) && !lead_reading.manages_team("vision"));

        let loner = user(false, TokenScope::Admin, &[]);
        assert!(loner.submission_team(None).unwrap_err().contains("in no team it may submit to"));
        let admin = user(true, TokenScope::Admin, &[]);
        assert_eq!(admin.submission_team(None), Ok(None), "an installation admin may submit outside teams");
        assert!(admin.submits_to("anything") && admin.changes("bo", Some("x")));
        let admin_reading = user(true, TokenScope::Read, &[]);
        assert!(admin_reading.sees("bo", Some("x")) && !admin_reading.is_admin());
        let two = user(false, TokenScope::Submit, &[("a", TeamRole::Member), ("b", TeamRole::Admin)]);
        assert!(two.submission_team(None).unwrap_err().contains("several teams; name one with --team (a, b)"));
        let with_default = UserCaller { default_team: Some("b".into()), ..two };
        assert_eq!(with_default.submission_team(None), Ok(Some("b".into())));
    }

    #[test]
    fn each_kind_of_caller_reaches_only_its_routes() {
        let user = Principal::User(Arc::new(user(false, TokenScope::Submit, &[])));
        let agent =
            Principal::Agent(Arc::new(AgentIdentity { token_id: 1, name: "n".into(), node: "n".into(), max_nodes: 1 }));
        let job = Principal::Job(Arc::new(JobIdentity {
            job: 1,
            owner: "ana".into(),
            team: None,
            run_id: None,
            experiment_id: None,
        }));
        let code = |access, who: &Principal| admit(access, who).err().map(|e| e.code);
        assert_eq!(code(Access::User(TokenScope::Submit), &user), None);
        assert_eq!(code(Access::User(TokenScope::Admin), &user), Some(ErrorCode::Forbidden));
        assert_eq!(code(Access::User(TokenScope::Read), &agent), Some(ErrorCode::Forbidden));
        assert_eq!(code(Access::User(TokenScope::Read), &job), Some(ErrorCode::Forbidden));
        assert_eq!(code(Access::Agent, &agent), None);
        assert_eq!(code(Access::Agent, &user), Some(ErrorCode::Forbidden));
        assert_eq!(code(Access::Agent, &job), Some(ErrorCode::Forbidden));
        assert_eq!(code(Access::Tracking(TokenScope::Submit), &job), None);
        assert_eq!(code(Access::Tracking(TokenScope::Read), &agent), Some(ErrorCode::Forbidden));
    }

    #[test]
    fn a_source_that_keeps_failing_is_refused_for_a_while() {
        let limiter = FailureLimiter::default();
        let source: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..FAILURES_PER_WINDOW_MAX {
            assert!(limiter.check(source).is_ok());
            limiter.record(source);
        }
        assert_eq!(limiter.check(source).unwrap_err().code, ErrorCode::RateLimited);
        assert!(limiter.check("127.0.0.10".parse().unwrap()).is_ok(), "other sources are not affected");
    }
}
