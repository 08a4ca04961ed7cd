//! Signing in from the CLI with single sign-on (`ferry login`, the device flow run by the server; see
//! `crate::oidc`), and signing out a session.

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_api::tokens::{DeviceLogin, DeviceLoginState, DevicePoll, TokenScope};
use ferry_api::{ErrorBody, ErrorCode};

use crate::auth::{end_session, hash_token, new_token, start_session, Caller, SessionStart, SESSION_PREFIX};
use crate::error::{rejection, ApiError};
use crate::oidc::{DeviceState, OidcError};
use crate::state::AppState;

fn not_configured() -> ApiError {
    ApiError::not_found(
        "single sign-on is not configured on this server; sign in with an API token (an admin makes one with `ferry \
         token create --for USER`)",
    )
}

fn provider_error(e: OidcError) -> ApiError {
    match e {
        OidcError::Unreachable(m) => {
            ApiError::new(ErrorCode::Unavailable, format!("the sign-in provider could not be reached: {m}"))
        }
        OidcError::Refused(m) => ApiError::new(ErrorCode::Forbidden, m),
    }
}

/// Starts a device sign-in: the code for the user to confirm at the provider, and a handle to poll with.
#[utoipa::path(post, path = "/api/v1/auth/device",
    responses((status = 200, body = DeviceLogin), (status = 404, body = ErrorBody, description = "No single sign-on"),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn device_start(State(state): State<AppState>, request: Request) -> Result<Json<DeviceLogin>, ApiError> {
    let oidc = state.oidc.clone().ok_or_else(not_configured)?;
    let source = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    // Each start costs a request to the provider: counted like a failed sign-in, so that no one floods it through us.
    if let Some(ip) = source {
        state.failures.spend(ip)?;
    }
    let (details, client) = oidc.start_device().await.map_err(provider_error)?;
    let handle = new_token();
    let key = hash_token(&handle);
    oidc.set_device(&key, DeviceState::Pending);
    let answer = DeviceLogin {
        handle,
        user_code: details.user_code().secret().clone(),
        verification_uri: details.verification_uri().to_string(),
        verification_uri_complete: details.verification_uri_complete().map(|u| u.secret().clone()),
        expires_in_s: details.expires_in().as_secs(),
        interval_s: details.interval().as_secs().max(1),
    };
    let source = source.map(|ip| ip.to_string());
    tokio::spawn(async move {
        let outcome = match oidc.wait_device(&client, &details).await {
            Ok((identity, refresh)) => match crate::oidc::sign_in(&state, &oidc.config, &identity).await {
                Ok(user) => {
                    let expires_at_us = crate::driver::now_us() + oidc.config.session_lifetime.as_micros() as i64;
                    let provider = Some((refresh.as_deref(), oidc.config.recheck));
                    let start = SessionStart {
                        user_id: user.id,
                        scope: TokenScope::Admin,
                        via: "oidc-device",
                        token_id: None,
                        expires_at_us,
                        provider,
                        source: source.as_deref(),
                    };
                    let started = start_session(&state, start).await;
                    match started {
                        Ok(token) => DeviceState::Done { token, user: user.name, expires_at_us },
                        Err(e) => DeviceState::Failed(e.message),
                    }
                }
                Err(e) => DeviceState::Failed(e.to_string()),
            },
            Err(e) => DeviceState::Failed(e.to_string()),
        };
        let (actor, result, detail) = match &outcome {
            DeviceState::Done { user, .. } => {
                (Some(user.clone()), "ok", "with single sign-on, from the CLI".to_string())
            }
            DeviceState::Failed(reason) => (None, "denied", reason.clone()),
            DeviceState::Pending => (None, "failed", String::new()),
        };
        crate::audit::append(&state, actor, "sign-in", result, Some(detail), source).await;
        oidc.set_device(&key, outcome);
    });
    Ok(Json(answer))
}

/// Where a device sign-in stands; the session is handed out once.
#[utoipa::path(post, path = "/api/v1/auth/device/poll", request_body = DevicePoll,
    responses((status = 200, body = DeviceLoginState), (status = 404, body = ErrorBody)))]
pub async fn device_poll(
    State(state): State<AppState>,
    body: Result<Json<DevicePoll>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<DeviceLoginState>, ApiError> {
    let oidc = state.oidc.clone().ok_or_else(not_configured)?;
    let Json(poll) = body.map_err(rejection)?;
    let state = oidc.take_device(&hash_token(&poll.handle)).ok_or_else(|| {
        ApiError::not_found(
            "no sign-in under way with this handle (it finished, or is too old); run `ferry login` again",
        )
    })?;
    Ok(Json(match state {
        DeviceState::Pending => DeviceLoginState::Pending,
        DeviceState::Done { token, user, expires_at_us } => DeviceLoginState::Done { token, user, expires_at_us },
        DeviceState::Failed(message) => DeviceLoginState::Failed { message },
    }))
}

/// Ends the session the request is made with (`ferry logout`); an API token is left alone (revoke it instead).
#[utoipa::path(post, path = "/api/v1/auth/logout",
    responses((status = 204, description = "Signed out"),
        (status = 400, body = ErrorBody, description = "Made with an API token, not a sign-in session"),
        (status = 401, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, _caller: Caller, request: Request) -> Result<StatusCode, ApiError> {
    let bearer = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| t.starts_with(SESSION_PREFIX));
    match bearer {
        Some(session) => {
            end_session(&state, session).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::invalid(
            "this request is made with an API token, not a sign-in session; revoke a token with `ferry token revoke`",
        )),
    }
}
