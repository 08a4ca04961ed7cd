//! API tokens: everyone creates, lists and revokes their own personal tokens; installation admins also those of
//! others (service accounts among them) and agent join tokens, each bound to a node name or pattern.

use axum::extract::{Path, State};
use axum::Json;
use ferry_api::tokens::{CreateToken, CreatedToken, TokenInfo, TokenKind, TokenList, TokenScope, TOKEN_NAME_CHARS_MAX};
use ferry_api::{ErrorBody, ErrorCode};
use ferry_store::{NewToken, TokenListing};

use crate::auth::{hash_token, new_token, Caller, AGENT_NODES_DEFAULT};
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::state::AppState;

/// The longest a token may be made to last, in seconds (ten years): longer is "until revoked", said plainly.
const EXPIRY_S_MAX: u64 = 10 * 365 * 24 * 3600;
/// The most nodes one agent token may be allowed to register.
const AGENT_NODES_MAX: u32 = 100_000;

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, message)
}

#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, axum::Extension<crate::audit::AuditNote>, Json<CreatedToken>), ApiError> {
    let Json(spec) = body.map_err(rejection)?;
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > TOKEN_NAME_CHARS_MAX || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "a token needs a name of 1 to {TOKEN_NAME_CHARS_MAX} printable characters, such as the machine it is for"
        )));
    }
    let now = now_us();
    let expires_at_us = match spec.expires_in_s {
        Some(0) => return Err(ApiError::invalid("expires_in_s is 0; give a positive lifetime such as --expires 30d")),
        Some(s) if s > EXPIRY_S_MAX => {
            return Err(ApiError::invalid("the lifetime is over ten years; leave --expires out for a token that lasts"))
        }
        Some(s) => Some(now + (s as i64) * 1_000_000),
        None => None,
    };
    // A token never outlives the token that made it, so a stolen short-lived token cannot mint a lasting one.
    if let Some(limit) = caller.expires_at_us {
        if expires_at_us.is_none_or(|at| at > limit) {
            return Err(forbidden(
                "this token expires, so it may only create tokens that expire no later; pass --expires",
            ));
        }
    }
    let token = new_token();
    let hash = hash_token(&token);
    let record = match spec.kind {
        TokenKind::Agent => {
            if !caller.is_admin() {
                return Err(forbidden("only an installation admin (with an admin-scoped token) creates join tokens"));
            }
            if spec.scope.is_some() || spec.user.is_some() {
                return Err(ApiError::invalid("a join token has no scope or user; give it --node instead"));
            }
            let node = spec.node.as_deref().map(str::trim).filter(|n| !n.is_empty()).ok_or_else(|| {
                ApiError::invalid(
                    "a join token is bound to a node: give its name, or a pattern such as gpu-*, with --node",
                )
            })?;
            if let Some(problem) = node_pattern_problem(node) {
                return Err(ApiError::invalid(problem));
            }
            let max_nodes = match (spec.max_nodes, node.contains('*')) {
                (Some(0), _) | (Some(AGENT_NODES_MAX..), _) => {
                    return Err(ApiError::invalid(format!("max_nodes must be 1 to {}", AGENT_NODES_MAX - 1)))
                }
                (Some(_), false) => {
                    return Err(ApiError::invalid("max_nodes applies to a pattern; a name is one node"))
                }
                (Some(n), true) => n as i64,
                (None, true) => AGENT_NODES_DEFAULT,
                (None, false) => 1,
            };
            let new = NewToken {
                name,
                kind: "agent",
                user_id: None,
                scope: None,
                node: Some(node),
                max_nodes: Some(max_nodes),
                expires_at_us,
                created_by: Some(&caller.name),
                hash: &hash,
            };
            state.store.insert_token(&new, now).await?
        }
        TokenKind::User => {
            if spec.node.is_some() || spec.max_nodes.is_some() {
                return Err(ApiError::invalid("--node and max_nodes apply to join tokens (--agent) only"));
            }
            let scope = spec.scope.unwrap_or(TokenScope::Submit.min(caller.scope));
            if scope > caller.scope {
                return Err(forbidden(format!(
                    "this token's scope is `{}`; it cannot create a token of the wider scope `{}`",
                    caller.scope.name(),
                    scope.name()
                )));
            }
            let owner = match spec.user.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
                None => caller.id,
                Some(user) if user == caller.name => caller.id,
                Some(user) => {
                    if !caller.is_admin() {
                        return Err(forbidden(format!(
                            "only an installation admin creates tokens for another user; {} may create its own",
                            caller.name
                        )));
                    }
                    let found = state.store.user_by_name(user).await?.ok_or_else(|| {
                        ApiError::not_found(format!("no user `{user}`; `ferry user list` shows them"))
                    })?;
                    if found.disabled_at_us.is_some() {
                        return Err(ApiError::new(ErrorCode::Conflict, format!("user {user} is disabled")));
                    }
                    found.id
                }
            };
            let new = NewToken {
                name,
                kind: "user",
                user_id: Some(owner),
                scope: Some(scope.name()),
                node: None,
                max_nodes: None,
                expires_at_us,
                created_by: Some(&caller.name),
                hash: &hash,
            };
            state.store.insert_token(&new, now).await?
        }
    };
    let listing = state.store.token(record).await?.ok_or_else(ApiError::unavailable)?;
    tracing::info!(id = record, name, kind = spec.kind.name(), by = %caller.name, "token created");
    let info = to_wire(listing).ok_or_else(ApiError::unavailable)?;
    // A join token carries the fingerprint of the server's own certificate authority, which the agent pins.
    let ca_sha256 = match spec.kind {
        TokenKind::Agent => state.tls_authority.as_ref().map(|a| a.fingerprint.to_string()),
        TokenKind::User => None,
    };
    let note = crate::audit::note(format!("token {} `{}` ({})", info.id, info.name, info.kind.name()));
    Ok((axum::http::StatusCode::CREATED, note, Json(CreatedToken { info, token, ca_sha256 })))
}

/// The server's certificate authority in PEM, for agents that pin it by the fingerprint in their join token.
#[utoipa::path(get, path = "/api/v1/tls/ca",
    responses((status = 200, description = "The certificate authority (PEM)", content_type = "application/x-pem-file",
        body = String), (status = 404, body = ErrorBody)))]
pub async fn authority(State(state): State<AppState>) -> Result<impl axum::response::IntoResponse, ApiError> {
    let authority = state.tls_authority.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "this server has no certificate authority of its own (it was not started with `--tls auto`); ask its \
             operator for the CA certificate and pass it with --ca-cert",
        )
    })?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-pem-file")], authority.pem.clone()))
}

/// What makes a node name or pattern unusable for a join token.
fn node_pattern_problem(node: &str) -> Option<String> {
    let valid = node.len() <= 253
        && node.chars().all(|c| c.is_ascii_alphanumeric() || "._-*/".contains(c))
        && node.chars().any(|c| c != '*');
    (!valid).then(|| {
        format!(
            "`{}` is not a node name or pattern: use letters, digits, `.`, `_`, `-`, `/`, and `*` for any run of \
             characters (a bare `*` would speak for every node)",
            node.escape_debug()
        )
    })
}

/// Tokens: one's own; every token for an installation admin.
#[utoipa::path(get, path = "/api/v1/tokens",
    responses((status = 200, body = TokenList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<TokenList>, ApiError> {
    let whose = if caller.admin { None } else { Some(caller.id) };
    let tokens = state.store.tokens(whose).await?.into_iter().filter_map(to_wire).collect();
    Ok(Json(TokenList { tokens }))
}

/// Revokes a token: requests with it are refused from now on, and an agent using it stops. One's own personal
/// tokens, or any token for an installation admin.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", params(("id" = i64, Path)),
    responses((status = 200, body = TokenInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::invalid(format!("`{id}` is not a token id; `ferry token list` shows the ids")))?;
    let missing = || ApiError::not_found(format!("no token {id}; `ferry token list` shows your tokens"));
    let found = state.store.token(id).await?.ok_or_else(missing)?;
    let own = found.user_id == Some(caller.id);
    if !own && !caller.is_admin() {
        // Another's token is not even confirmed to exist.
        return Err(if caller.admin {
            forbidden("revoking another's token needs an admin-scoped token")
        } else {
            missing()
        });
    }
    if found.revoked_at_us.is_some() || !state.store.revoke_token(id, now_us()).await? {
        return Err(ApiError::new(ErrorCode::Conflict, format!("token {id} is already revoked")));
    }
    // Remembered tokens would keep working for a while: forget them all, so the revocation holds at once.
    state.tokens.clear();
    tracing::info!(id, by = %caller.name, "token revoked");
    let listing = state.store.token(id).await?.ok_or_else(missing)?;
    to_wire(listing).map(Json).ok_or_else(missing)
}

pub(crate) fn to_wire(t: TokenListing) -> Option<TokenInfo> {
    Some(TokenInfo {
        id: t.id,
        name: t.name,
        kind: TokenKind::parse(&t.kind)?,
        user: t.user,
        scope: t.scope.as_deref().and_then(TokenScope::parse),
        node: t.node,
        created_at_us: t.created_at_us,
        created_by: t.created_by,
        expires_at_us: t.expires_at_us,
        revoked_at_us: t.revoked_at_us,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_patterns_are_names_with_stars_but_never_a_bare_star() {
        use super::node_pattern_problem as problem;
        assert_eq!(problem("node-a"), None);
        assert_eq!(problem("gpu-*"), None);
        assert_eq!(problem("hpc/node1"), None);
        assert!(problem("*").is_some());
        assert!(problem("**").is_some());
        assert!(problem("a b").is_some());
        assert!(problem("").is_some());
    }
}
