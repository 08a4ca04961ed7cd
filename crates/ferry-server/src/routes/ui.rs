//! The web dashboard: its pages, sign-in and sign-out, and its static assets, all embedded in the binary.
//!
//! The pages are shells: the same HTML for every page, whose script reads its data from the JSON API with the
//! session cookie. This module never renders cluster data into HTML and never fetches anything at run time; a page
//! holds no secret, and the cookie holds the API token itself, HTTP-only so page scripts cannot read it.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::auth::{authenticate, same_origin, session_cookie, Principal, SESSION_COOKIE};
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

/// Whether the request's cookie signs in a user (not an agent).
async fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    match session_cookie(headers) {
        Some(token) => authenticate(state, &token).await.is_ok_and(|p| matches!(p, Principal::User(_))),
        None => false,
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

fn login_page(status: StatusCode, message: Option<&str>) -> Response {
    let paragraph = match message {
        Some(text) => format!("<p class=\"error\" id=\"login-error\" role=\"alert\">{}</p>", escape(text)),
        None => String::new(),
    };
    html(status, LOGIN_HTML.replace("{{message}}", &paragraph))
}

/// `GET /login`: the sign-in form.
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// `POST /login`: checks the token from the form; on success sets the session cookie and goes to the overview.
pub async fn login(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if body.len() > LOGIN_BODY_BYTES_MAX {
        return login_page(StatusCode::PAYLOAD_TOO_LARGE, Some("The form was too large to be a sign-in."));
    }
    let token = form_field(&body, "token").unwrap_or_default();
    let token = token.trim();
    if token.is_empty() {
        return login_page(StatusCode::UNAUTHORIZED, Some("Enter an API token to sign in."));
    }
    // A token that could not be a cookie value (spaces, semicolons) is no token Ferry made.
    let cookie_safe = token.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"');
    let caller = match cookie_safe {
        true => authenticate(&state, token).await,
        false => Err(crate::error::ApiError::invalid("not a token")),
    };
    let Ok(caller) = caller else {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid. Check it and try again; `ferry up` writes the admin token to admin.token in its data directory."),
        );
    };
    if !matches!(caller, Principal::User(_)) {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is an agent token, which only agents may use. Sign in with a user or admin token."),
        );
    }
    let secure_flag = if over_https(&headers) { "; Secure" } else { "" };
    let cookie = format!("{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{secure_flag}");
    let mut response = see_other("/");
    match HeaderValue::from_str(&cookie) {
        Ok(value) => {
            response.headers_mut().insert(header::SET_COOKIE, value);
            response
        }
        Err(_) => login_page(StatusCode::UNAUTHORIZED, Some("That token is not valid.")),
    }
}

/// `POST /logout`: forgets the session cookie. Only from the dashboard's own pages, so no other site can sign a user
/// out.
pub async fn logout(headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        let response = (StatusCode::FORBIDDEN, "sign out from the dashboard's own page").into_response();
        return secure(response, "no-store");
    }
    let mut response = see_other("/login");
    let cookie = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("a valid header"));
    response
}

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
    fn the_dashboard_stays_small() {
        assert!(assets_bytes() < 300 * 1024, "the dashboard's files are {} bytes", assets_bytes());
    }
}
