//! API tokens: generation, hashing and the extractor that authenticates each request.
//!
//! Tokens are 256 random bits, so a single SHA-256 is a sound way to store them: there is nothing to brute-force.
//! A plain token is never logged or stored; it is shown once, when created.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Agent,
    /// A running job's tracking token (`MLFLOW_TRACKING_TOKEN`): the MLflow API only.
    Job,
}

/// The prefix of a job's tracking token: `ferry_job_<job id>_<HMAC-SHA256 of the id, hex>`.
const JOB_TOKEN_PREFIX: &str = "ferry_job_";
/// How long after its job has ended a job's token is still accepted, for the last writes of a client that flushes
/// at exit (and for an end reported before the job's own last request).
const JOB_TOKEN_AFTER_END_US: i64 = 10 * 60 * 1_000_000;

fn job_mac(key: &[u8], job: u64) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("ferry job token {job}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The tracking token of job `job`, given to it as `MLFLOW_TRACKING_TOKEN`. Nothing is stored: the server checks
/// a token by computing it again, so a token is valid exactly while its job is (see `authenticate`).
pub fn job_token(key: &[u8], job: u64) -> String {
    format!("{JOB_TOKEN_PREFIX}{job}_{}", job_mac(key, job))
}

/// The job a well-formed, correctly signed job token belongs to.
fn job_of_token(key: &[u8], token: &str) -> Option<u64> {
    use hmac::Mac;
    let (id, mac) = token.strip_prefix(JOB_TOKEN_PREFIX)?.split_once('_')?;
    let job: u64 = id.parse().ok()?;
    let mac = hex::decode(mac).ok()?;
    let mut expected = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    expected.update(format!("ferry job token {job}").as_bytes());
    // `verify_slice` compares in constant time.
    expected.verify_slice(&mac).ok().map(|_| job)
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

/// Who is calling: every handler that takes a `Caller` is authenticated.
#[derive(Clone, Debug)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Agents may only use the agent protocol, and jobs the tracking API.
    pub fn require_user(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Agent => Err(ApiError::new(ErrorCode::Forbidden, "an agent token may only be used by agents")),
            Role::Job => Err(ApiError::new(
                ErrorCode::Forbidden,
                "a job's tracking token (MLFLOW_TRACKING_TOKEN) may only be used with the MLflow tracking API",
            )),
        }
    }

    /// The MLflow tracking API: users, and jobs with their tracking tokens.
    pub fn require_tracking(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::Job => Ok(()),
            Role::Agent => Err(ApiError::new(ErrorCode::Forbidden, "an agent token may only be used by agents")),
        }
    }

    /// Managing tokens takes an admin token.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Agent | Role::Job => {
                Err(ApiError::new(ErrorCode::Forbidden, "only an admin token may manage tokens"))
            }
        }
    }
}

/// The cookie the web dashboard signs in with: the API token itself, HTTP-only and `SameSite=Strict`, so page scripts
/// cannot read it and other sites cannot send it.
pub const SESSION_COOKIE: &str = "ferry_token";

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let missing = || {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "no API token; pass one with --token or FERRY_TOKEN (`ferry up` writes the admin token to admin.token in its data directory)",
            )
        };
        let bearer = parts.headers.get(axum::http::header::AUTHORIZATION);
        if let Some(header) = bearer {
            let token = header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).ok_or_else(missing)?;
            return authenticate(state, token).await;
        }
        let token = session_cookie(&parts.headers).ok_or_else(missing)?;
        if !parts.method.is_safe() && !same_origin(&parts.headers) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "a request signed in by the dashboard's cookie must come from the dashboard's own origin",
            ));
        }
        authenticate(state, &token).await
    }
}

/// A job's tracking token: valid while its job is queued or running, and for a while after it ended; the caller is
/// the job's owner, with the `Job` role.
async fn authenticate_job(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    let invalid = || ApiError::new(ErrorCode::Unauthenticated, "the job tracking token is not valid");
    let job = job_of_token(&state.job_key, token).ok_or_else(invalid)?;
    let record = state.store.job(job).await?.ok_or_else(invalid)?;
    if let Some(finished) = record.finished_at_us {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(i64::MAX);
        if now - finished > JOB_TOKEN_AFTER_END_US {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                format!("the tracking token of job {job} expired when the job ended; use an API token"),
            ));
        }
    }
    Ok(Caller { name: record.spec.owner, role: Role::Job })
}

/// The token in the dashboard's cookie, if the request carries one.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
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

/// Who holds `token`: from the cache, else the store (then cached).
pub async fn authenticate(state: &AppState, token: &str) -> Result<Caller, ApiError> {
    if token.trim().starts_with(JOB_TOKEN_PREFIX) {
        return authenticate_job(state, token.trim()).await;
    }
    let hash = hash_token(token.trim());
    if let Some(caller) = state.tokens.get(&hash) {
        return Ok(caller);
    }
    let record = state.store.token_by_hash(&hash).await?.ok_or_else(|| {
        ApiError::new(ErrorCode::Unauthenticated, "the API token is not valid; check --token or FERRY_TOKEN")
    })?;
    let role = Role::parse(&record.role)
        .ok_or_else(|| ApiError::new(ErrorCode::Forbidden, format!("token role `{}` is not known", record.role)))?;
    let caller = Caller { name: record.name, role };
    state.tokens.put(hash, caller.clone());
    Ok(caller)
}

/// How long a token, once checked against the store, is trusted without asking the store again; a revoked token
/// stops working within this time.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
/// The most tokens remembered at once.
const TOKEN_CACHE_ENTRIES_MAX: usize = 1024;

/// Recently checked tokens, by hash, so that busy clients and agents do not cost a database read per request.
#[derive(Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> Option<Caller> {
        let entries = self.entries.lock().expect("token cache lock is never poisoned");
        entries.get(hash).filter(|(_, at)| at.elapsed() < TOKEN_CACHE_TTL).map(|(caller, _)| caller.clone())
    }

    /// Forgets every remembered token, so a revocation takes effect on the next request.
    pub fn clear(&self) {
        self.entries.lock().expect("token cache lock is never poisoned").clear();
    }

    fn put(&self, hash: String, caller: Caller) {
        let mut entries = self.entries.lock().expect("token cache lock is never poisoned");
        if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
            if entries.len() >= TOKEN_CACHE_ENTRIES_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (caller, Instant::now()));
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
        let h = headers(&[(header::COOKIE, "theme=dark; ferry_token=ferry_abc ; other=1")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("ferry_abc"));
        let h = headers(&[(header::COOKIE, "a=1"), (header::COOKIE, "ferry_token=ferry_x")]);
        assert_eq!(session_cookie(&h).as_deref(), Some("ferry_x"));
        assert_eq!(session_cookie(&headers(&[(header::COOKIE, "ferry_token=")])), None);
        assert_eq!(session_cookie(&headers(&[(header::COOKIE, "xferry_token=ferry_x")])), None);
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
}
