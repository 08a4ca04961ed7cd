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
    /// Agents may only use the agent protocol.
    pub fn require_user(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Agent => Err(ApiError::new(ErrorCode::Forbidden, "an agent token may only be used by agents")),
        }
    }

    /// Managing tokens takes an admin token.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Agent => Err(ApiError::new(ErrorCode::Forbidden, "only an admin token may manage tokens")),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let missing = || {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "no API token; pass one with --token or FERRY_TOKEN (`ferry up` writes the admin token to admin.token in its data directory)",
            )
        };
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(missing)?;
        let token = header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")).ok_or_else(missing)?;
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
