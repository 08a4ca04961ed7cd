//! API tokens: an admin creates them (agent join tokens among them), lists them and revokes them.

use axum::extract::{Path, State};
use axum::Json;
use ferry_api::tokens::{CreateToken, CreatedToken, TokenInfo, TokenList, TokenRole, TOKEN_NAME_CHARS_MAX};
use ferry_api::ErrorBody;
use ferry_store::TokenListing;

use crate::auth::{hash_token, new_token, Caller};
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::state::AppState;

#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateToken>, axum::extract::rejection::JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<CreatedToken>), ApiError> {
    caller.require_admin()?;
    let Json(spec) = body.map_err(rejection)?;
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > TOKEN_NAME_CHARS_MAX || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!(
            "a token needs a name of 1 to {TOKEN_NAME_CHARS_MAX} printable characters, such as the machine it is for"
        )));
    }
    let token = new_token();
    let id = state.store.insert_token(name, spec.role.name(), &hash_token(&token), now_us()).await?;
    tracing::info!(id, name, role = spec.role.name(), by = %caller.name, "token created");
    let created = CreatedToken { id, name: name.to_string(), role: spec.role, token };
    Ok((axum::http::StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = TokenList), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<TokenList>, ApiError> {
    caller.require_admin()?;
    let tokens = state.store.tokens().await?.into_iter().filter_map(to_wire).collect();
    Ok(Json(TokenList { tokens }))
}

/// Revokes a token: requests with it are refused from now on, and an agent using it stops.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", params(("id" = i64, Path)),
    responses((status = 200, body = TokenInfo), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    caller.require_admin()?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::invalid(format!("`{id}` is not a token id; `ferry token list` shows the ids")))?;
    let listing = match state.store.revoke_token(id, now_us()).await? {
        None => return Err(ApiError::not_found(format!("no token {id}; `ferry token list` shows the tokens"))),
        Some((_, false)) => {
            return Err(ApiError::new(ferry_api::ErrorCode::Conflict, format!("token {id} is already revoked")))
        }
        Some((listing, true)) => listing,
    };
    // Remembered tokens would keep working for a while: forget them all, so the revocation holds at once.
    state.tokens.clear();
    tracing::info!(id, by = %caller.name, "token revoked");
    to_wire(listing).map(Json).ok_or_else(|| ApiError::not_found(format!("no token {id}")))
}

fn to_wire(t: TokenListing) -> Option<TokenInfo> {
    let role = TokenRole::parse(&t.role)?;
    Some(TokenInfo { id: t.id, name: t.name, role, created_at_us: t.created_at_us, revoked_at_us: t.revoked_at_us })
}
