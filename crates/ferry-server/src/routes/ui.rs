//! The web dashboard: its pages, sign-in and sign-out, and its static assets, all embedded in the binary.
//!
//! The pages are shells: the same HTML for every page, whose script reads its data from the JSON API with the
//! session cookie. This module never renders cluster data into HTML and never fetches anything at run time; a page
//! holds no secret, and the cookie holds a session id (never an API token), HTTP-only so page scripts cannot read it.
//! Sign-in is with an API token (`POST /login`) or, when configured, single sign-on (`/auth/login`, then the
//! provider's redirect to `/auth/callback`; see `crate::oidc`).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use axum::extract::{ConnectInfo, Query, Request};
use ferry_api::tokens::TokenScope;

use crate::audit::{Actor, AuditAction, AuditNote};
use crate::auth::{
    authenticate, end_session, same_origin, session_cookie, start_session, Principal, SessionStart, SESSION_COOKIE,
    SESSION_PREFIX, TOKEN_SESSION_LIFETIME,
};
use crate::state::AppState;

/// Every static file of the dashboard, by the name it is served under (`/ui/{name}`), with its content type.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.js", "text/javascript; charset=utf-8", include_bytes!("../../ui/app.js")),
    ("charts.js", "text/javascript; charset=utf-8", include_bytes!("../../ui/charts.js")),
    ("style.css", "text/css; charset=utf-8", include_bytes!("../../ui/style.css")),
    ("logo.svg", "image/svg+xml", include_bytes!("../../ui/logo.svg")),
];
/// The shell of every signed-in page.
const APP_HTML: &str = include_str!("../../ui/index.html");
/// The sign-in page; `{{message}}` is replaced by an error paragraph, or nothing.
const LOGIN_HTML: &str = include_str!("../../ui/login.html");

/// Scripts, styles and images only from this server; no inline script, no framing by other sites, and forms post
/// only here.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";
/// The longest sign-in form accepted: a token is 70 characters, so anything much longer is not a sign-in.
const LOGIN_BODY_BYTES_MAX: usize = 4096;

/// Headers every dashboard response carries.
fn secure(mut response: Response, cache: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

fn html(status: StatusCode, body: String) -> Response {
    // Pages depend on who is signed in: never stored by a cache.
    let response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    secure(response, "no-store")
}

fn see_other(location: &'static str) -> Response {
    secure((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(), "no-store")
}

/// Whether the request's cookie holds a live session.
async fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    match session_cookie(headers) {
        Some(id) if id.starts_with(SESSION_PREFIX) => {
            authenticate(state, &id).await.is_ok_and(|p| matches!(p, Principal::User(_)))
        }
        _ => false,
    }
}

/// `GET /`, `/nodes`, `/jobs`, `/jobs/{id}`, `/sweeps`, `/sweeps/{id}`, `/usage`: the page shell, or a redirect to
/// sign in.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !signed_in(&state, &headers).await {
        return see_other("/login");
    }
    html(StatusCode::OK, APP_HTML.to_string())
}

fn login_page(state: &AppState, status: StatusCode, message: Option<&str>) -> Response {
    let paragraph = match message {
        Some(text) => format!("<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>", escape(text)),
        None => String::new(),
    };
    let sso = match state.oidc {
        Some(_) => "<a class=\"sso\" id=\"sso\" href=\"/auth/login\">Sign in with single sign-on</a>",
        None => "",
    };
    html(status, LOGIN_HTML.replace("{{message}}", &paragraph).replace("{{sso}}", sso))
}

/// The sign-in form again, when the store did not answer.
fn unavailable(state: &AppState) -> Response {
    login_page(state, StatusCode::SERVICE_UNAVAILABLE, Some("The server could not reach its database; try again."))
}

/// `GET /login`: the sign-in form.
pub async fn login_form(State(state): State<AppState>) -> Response {
    login_page(&state, StatusCode::OK, None)
}

/// The client's address, for rate limits and the audit log.
fn source_of(request: &Request) -> Option<std::net::IpAddr> {
    request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// Marks a response as a sign-in (or sign-out) by `actor` for the audit log, with what happened.
fn audited(mut response: Response, action: &'static str, actor: Actor, note: Option<&str>) -> Response {
    let extensions = response.extensions_mut();
    extensions.insert(actor);
    extensions.insert(AuditAction(action));
    if let Some(note) = note {
        extensions.insert(AuditNote(note.to_string()));
    }
    response
}

/// A refused sign-in: counted against the source's failures, logged, and answered with the form and the reason.
fn refused(state: &AppState, source: Option<std::net::IpAddr>, status: StatusCode, message: &str) -> Response {
    if let Some(ip) = source {
        state.failures.record(ip);
    }
    audited(login_page(state, status, Some(message)), "sign-in", Actor::anonymous(), Some(message))
}

/// The cookie that holds a session id, for `lifetime_s` seconds.
fn session_cookie_header(id: &str, lifetime_s: i64, secure: bool) -> Option<HeaderValue> {
    let secure_flag = if secure { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={lifetime_s}{secure_flag}");
    HeaderValue::from_str(&cookie).ok()
}

/// `POST /login`: checks the token from the form; on success starts a session (the cookie holds its id, never the
/// token) and goes to the overview. Failures count against the source's rate limit.
pub async fn login(State(state): State<AppState>, request: Request) -> Response {
    let source = source_of(&request);
    if let Some(ip) = source {
        if let Err(e) = state.failures.check(ip) {
            return audited(
                login_page(&state, StatusCode::TOO_MANY_REQUESTS, Some(&e.message)),
                "sign-in",
                Actor::anonymous(),
                None,
            );
        }
    }
    // A browser always says where a form came from: another site's form would sign the user in as someone else.
    if request.headers().contains_key(header::ORIGIN) && !same_origin(request.headers()) {
        return refused(&state, source, StatusCode::FORBIDDEN, "Sign in from this server's own sign-in page.");
    }
    let secure = over_https(request.headers());
    let Ok(body) = axum::body::to_bytes(request.into_body(), LOGIN_BODY_BYTES_MAX).await else {
        return login_page(&state, StatusCode::PAYLOAD_TOO_LARGE, Some("The form was too large to be a sign-in."));
    };
    let token = form_field(&body, "token").unwrap_or_default();
    let token = token.trim();
    if token.is_empty() {
        return login_page(&state, StatusCode::UNAUTHORIZED, Some("Enter an API token to sign in."));
    }
    // Only API tokens sign in here; a session id is the dashboard's own, never typed in.
    let caller = match token.starts_with(SESSION_PREFIX) {
        false => authenticate(&state, token).await,
        true => Err(crate::error::ApiError::invalid("not a token")),
    };
    let user = match caller {
        Ok(Principal::User(user)) => user,
        Ok(_) => {
            let message = "That is an agent token or a job's tracking token, which only agents and jobs may use. Sign in with a user or admin token.";
            return refused(&state, source, StatusCode::UNAUTHORIZED, message);
        }
        Err(_) => {
            let message = "That token is not valid. Check it and try again; `ferry up` writes the admin token to admin.token in its data directory.";
            return refused(&state, source, StatusCode::UNAUTHORIZED, message);
        }
    };
    let now = crate::driver::now_us();
    let lifetime_end = now + TOKEN_SESSION_LIFETIME.as_micros() as i64;
    let expires_at_us = user.expires_at_us.map_or(lifetime_end, |at| at.min(lifetime_end));
    let source_text = source.map(|ip| ip.to_string());
    let started = start_session(
        &state,
        SessionStart {
            user_id: user.id,
            scope: user.scope,
            via: "token",
            token_id: user.token_id,
            expires_at_us,
            provider: None,
            source: source_text.as_deref(),
        },
    )
    .await;
    let Ok(id) = started else {
        return unavailable(&state);
    };
    let mut response = see_other("/");
    match session_cookie_header(&id, (expires_at_us - now) / 1_000_000, secure) {
        Some(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        None => return login_page(&state, StatusCode::SERVICE_UNAVAILABLE, Some("The session could not be started.")),
    }
    let note = format!("with an API token of scope {}", user.scope.name());
    audited(
        response,
        "sign-in",
        Actor { name: Some(user.name.clone()), kind: if user.service { "service" } else { "user" } },
        Some(&note),
    )
}

/// `POST /logout`: ends the session and forgets its cookie. Only from the dashboard's own pages, so no other site can
/// sign a user out.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        let response = (StatusCode::FORBIDDEN, "sign out from the dashboard's own page").into_response();
        return secure(response, "no-store");
    }
    let mut actor = Actor::anonymous();
    if let Some(id) = session_cookie(&headers).filter(|id| id.starts_with(SESSION_PREFIX)) {
        if let Ok(principal) = authenticate(&state, &id).await {
            actor = Actor::of(&principal);
        }
        if let Err(e) = end_session(&state, &id).await {
            tracing::warn!(error = %e.message, "could not end a session at sign-out");
        }
    }
    let mut response = see_other("/login");
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a valid header"));
    if actor.name.is_none() {
        return response;
    }
    audited(response, "sign-out", actor, None)
}

/// Whether `next` is a path of this server: never an address elsewhere (`//host`, `/\\host`, or `/<TAB>/host`, which a
/// browser reads as `//host` once it drops the tab).
fn local_path(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && next.len() <= 2048
        && !next.chars().any(|c| c == '\\' || c.is_control() || c.is_whitespace())
}

/// The cookie that ties a single sign-on to the browser that started it: `Lax`, so that the provider's redirect back
/// (a top-level navigation from another site) carries it, and only to `/auth`.
const STATE_COOKIE: &str = "ferry_sso_state";

#[derive(serde::Deserialize)]
pub struct SsoStart {
    #[serde(default)]
    next: Option<String>,
}

/// `GET /auth/login`: sends the browser to the sign-in provider (authorisation code with PKCE).
pub async fn sso_start(State(state): State<AppState>, Query(q): Query<SsoStart>, request: Request) -> Response {
    let Some(oidc) = state.oidc.clone() else {
        return login_page(
            &state,
            StatusCode::NOT_FOUND,
            Some("Single sign-on is not configured on this server; sign in with an API token."),
        );
    };
    // Each start holds a pending sign-in and may cost a request to the provider: counted like a failed sign-in, so
    // that no one floods either.
    if let Some(ip) = source_of(&request) {
        if let Err(e) = state.failures.spend(ip) {
            return login_page(&state, StatusCode::TOO_MANY_REQUESTS, Some(&e.message));
        }
    }
    let headers = request.headers();
    let next = q.next.filter(|n| local_path(n)).unwrap_or_else(|| "/".to_string());
    match oidc.start_login(&next).await {
        Ok((url, sso_state)) => {
            let secure_flag = if over_https(headers) { "; Secure" } else { "" };
            let cookie =
                format!("{STATE_COOKIE}={sso_state}; HttpOnly; SameSite=Lax; Path=/auth; Max-Age=600{secure_flag}");
            let mut response = secure((StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response(), "no-store");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not start a single sign-on");
            login_page(&state, StatusCode::BAD_GATEWAY, Some(&format!("Single sign-on is unavailable: {e}")))
        }
    }
}

#[derive(serde::Deserialize)]
pub struct SsoCallback {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /auth/callback`: where the provider sends the browser back. Checks that this browser started the sign-in,
/// exchanges the code (with the PKCE verifier), checks the ID token, finds or creates the user, and starts a session.
pub async fn sso_callback(State(state): State<AppState>, Query(q): Query<SsoCallback>, request: Request) -> Response {
    let source = source_of(&request);
    let headers = request.headers();
    if let Some(ip) = source {
        if let Err(e) = state.failures.check(ip) {
            return login_page(&state, StatusCode::TOO_MANY_REQUESTS, Some(&e.message));
        }
    }
    let Some(oidc) = state.oidc.clone() else {
        return login_page(&state, StatusCode::NOT_FOUND, Some("Single sign-on is not configured on this server."));
    };
    if let Some(error) = q.error {
        let detail = q.error_description.unwrap_or_default();
        return refused(
            &state,
            source,
            StatusCode::UNAUTHORIZED,
            &format!(
                "The sign-in provider did not sign you in ({error}{}{detail}).",
                if detail.is_empty() { "" } else { ": " }
            ),
        );
    }
    let (Some(code), Some(sso_state)) = (q.code, q.state) else {
        return refused(
            &state,
            source,
            StatusCode::BAD_REQUEST,
            "The sign-in provider's answer lacks its code or state; sign in again.",
        );
    };
    let cookie_state = crate::auth::cookie(headers, STATE_COOKIE);
    if cookie_state.as_deref() != Some(sso_state.as_str()) {
        return refused(
            &state,
            source,
            StatusCode::BAD_REQUEST,
            "This sign-in was not started by this browser; sign in again.",
        );
    }
    let secure_cookie = over_https(headers);
    let signed = match oidc.finish_login(&sso_state, &code).await {
        Ok((identity, refresh, next)) => {
            crate::oidc::sign_in(&state, &oidc.config, &identity).await.map(|u| (u, refresh, next))
        }
        Err(e) => Err(e),
    };
    let (user, refresh, next) = match signed {
        Ok(found) => found,
        Err(e) => {
            tracing::info!(error = %e, "a single sign-on was refused");
            return refused(&state, source, StatusCode::UNAUTHORIZED, &format!("Single sign-on failed: {e}"));
        }
    };
    let now = crate::driver::now_us();
    let lifetime = oidc.config.session_lifetime;
    let expires_at_us = now + lifetime.as_micros() as i64;
    let source_text = source.map(|ip| ip.to_string());
    let provider = Some((refresh.as_deref(), oidc.config.recheck));
    let started = start_session(
        &state,
        SessionStart {
            user_id: user.id,
            scope: TokenScope::Admin,
            via: "oidc",
            token_id: None,
            expires_at_us,
            provider,
            source: source_text.as_deref(),
        },
    )
    .await;
    let Ok(id) = started else {
        return unavailable(&state);
    };
    // A page of this site moves on to `next`, so that the session's `SameSite=Strict` cookie goes with that request
    // (a redirect would still count as the provider's cross-site navigation, and the browser would leave it out).
    let body = CONTINUE_HTML.replace("{{next}}", &escape(&next));
    let mut response = html(StatusCode::OK, body);
    if let Some(value) = session_cookie_header(&id, lifetime.as_secs() as i64, secure_cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    let clear = format!("{STATE_COOKIE}=; HttpOnly; SameSite=Lax; Path=/auth; Max-Age=0");
    response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&clear).expect("a valid header"));
    audited(response, "sign-in", Actor::user(&user.name), Some("with single sign-on"))
}

/// The page a single sign-on ends on: it moves on to the page the user wanted (no script: a refresh).
const CONTINUE_HTML: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"0;url={{next}}\"><title>Signed in · Ferry</title>\
<link rel=\"stylesheet\" href=\"/ui/style.css\"></head><body class=\"login-body\"><main class=\"login\">\
<p>Signed in. <a id=\"continue\" href=\"{{next}}\">Continue</a></p></main></body></html>";

/// Whether the browser reached the server over https (directly, or through a proxy that says so).
fn over_https(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    text("x-forwarded-proto").as_deref() == Some("https")
        || text("origin").is_some_and(|origin| origin.starts_with("https://"))
}

/// The content hash of each asset, so a browser revalidates cheaply and never runs a stale script after an upgrade.
fn etags() -> &'static Vec<String> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        ASSETS.iter().map(|(_, _, bytes)| format!("\"{}\"", &hex::encode(Sha256::digest(bytes))[..16])).collect()
    })
}

/// `GET /ui/{name}`: a static file. Assets hold no data, so they need no sign-in.
pub async fn asset(axum::extract::Path(name): axum::extract::Path<String>, headers: HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|(n, _, _)| *n == name) else {
        return secure((StatusCode::NOT_FOUND, "no such dashboard file").into_response(), "no-store");
    };
    let (_, content_type, bytes) = ASSETS[index];
    let etag = &etags()[index];
    let cache = "no-cache";
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return secure((StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response(), cache);
    }
    let response =
        ([(header::CONTENT_TYPE, content_type.to_string()), (header::ETAG, etag.clone())], bytes).into_response();
    secure(response, cache)
}

/// The total size of the dashboard's files, for the test that keeps them small.
#[cfg(test)]
pub fn assets_bytes() -> usize {
    ASSETS.iter().map(|(_, _, b)| b.len()).sum::<usize>() + APP_HTML.len() + LOGIN_HTML.len()
}

/// The first value of `name` in a form-encoded body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').filter_map(|pair| pair.split_once('=')).find(|(n, _)| *n == name).and_then(|(_, v)| decode(v))
}

/// Decodes one `application/x-www-form-urlencoded` value: `+` is a space, `%XX` a byte.
fn decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(form_field(b"token=ferry_ab%2Bc+d&x=1", "token").as_deref(), Some("ferry_ab+c d"));
        assert_eq!(form_field(b"x=1&token=", "token").as_deref(), Some(""));
        assert_eq!(form_field(b"x=1", "token"), None);
        assert_eq!(form_field(b"token=%zz", "token"), None);
        assert_eq!(form_field(b"token=%4", "token"), None);
    }

    #[test]
    fn only_paths_of_this_server_are_gone_to_after_a_sign_in() {
        for good in ["/", "/jobs/12", "/jobs?state=running"] {
            assert!(local_path(good), "{good}");
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "https://evil.example",
            "jobs",
            "/ /x",
        ] {
            assert!(!local_path(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_dashboard_stays_small() {
        assert!(assets_bytes() < 300 * 1024, "the dashboard's files are {} bytes", assets_bytes());
    }
}
