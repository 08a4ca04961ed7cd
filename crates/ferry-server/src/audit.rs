//! The audit log: every state-changing request, every sign-in and every refusal, appended to the store with who made
//! it, what and on which object, when, from where and with what result.
//!
//! One middleware (`record`) sees every request once the router has matched it. It learns who called from the
//! `Actor` the guard (or a sign-in handler) leaves in the response, and what the handler had to say from the
//! `AuditNote` (every `ApiError` leaves its message as one). A route of the table marked `quiet` (the agent
//! protocol's routine traffic, a run's metrics and artifacts) is data, not an action, and is recorded only when it
//! is refused. A request no one was authenticated for is recorded only when it was refused by a guard or was a
//! sign-in, so that anonymous noise cannot fill the log; failed token checks are also rate-limited per source.
//!
//! The log is append-only in the store (a trigger refuses updates); `prune` is the only deletion, of entries older
//! than the retention the configuration sets.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use ferry_store::NewAudit;

use crate::auth::Principal;
use crate::state::AppState;

/// Who made a request, left in the response by the guard or a sign-in handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: Option<String>,
    pub kind: &'static str,
}

impl Actor {
    pub fn anonymous() -> Actor {
        Actor { name: None, kind: "anonymous" }
    }

    pub fn of(principal: &Principal) -> Actor {
        match principal {
            Principal::User(u) => {
                Actor { name: Some(u.name.clone()), kind: if u.service { "service" } else { "user" } }
            }
            Principal::Agent(a) => Actor { name: Some(format!("agent:{}", a.name)), kind: "agent" },
            Principal::Job(j) => Actor { name: Some(format!("job:{}", j.job)), kind: "job" },
        }
    }

    pub fn user(name: &str) -> Actor {
        Actor { name: Some(name.to_string()), kind: "user" }
    }
}

/// What a handler says of the request for the log: what it created, or why it refused.
#[derive(Clone, Debug)]
pub struct AuditNote(pub String);

/// The note as a response part: `(StatusCode::CREATED, note(format!("job {id}")), Json(...))`.
pub fn note(text: impl Into<String>) -> axum::Extension<AuditNote> {
    axum::Extension(AuditNote(text.into()))
}

/// A named action recorded whatever the method (a sign-in is a `GET` of the provider's callback).
#[derive(Clone, Copy, Debug)]
pub struct AuditAction(pub &'static str);

/// Marks a route's answers as data rather than actions (see the module's comment).
#[derive(Clone, Copy, Debug)]
pub struct Quiet;

/// The longest detail kept.
const DETAIL_CHARS_MAX: usize = 500;

/// The middleware (see the module's comment).
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let object = request.uri().path().to_string();
    let source = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let response = next.run(request).await;
    let (Some(route), Some(actor)) = (route, response.extensions().get::<Actor>()) else {
        return response;
    };
    let status = response.status();
    let refused = status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN;
    let named = response.extensions().get::<AuditAction>().map(|a| a.0);
    let quiet = response.extensions().get::<Quiet>().is_some();
    let changing = !method.is_safe() && !quiet && actor.name.is_some();
    if !(refused || changing || named.is_some()) {
        return response;
    }
    let entry = NewAudit {
        actor: actor.name.clone(),
        actor_kind: actor.kind.to_string(),
        action: named.map(str::to_string).unwrap_or_else(|| format!("{method} {route}")),
        object: Some(object),
        detail: response.extensions().get::<AuditNote>().map(|n| n.0.chars().take(DETAIL_CHARS_MAX).collect()),
        status: i64::from(status.as_u16()),
        result: result_of(status).to_string(),
        source,
    };
    // The request is done whatever happens here: a log that cannot be written is the server log's to tell.
    if let Err(e) = state.store.append_audit(&entry, crate::driver::now_us()).await {
        tracing::error!(error = %e, action = %entry.action, "could not append to the audit log");
    }
    response
}

pub fn result_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 | 429 => "denied",
        code if code < 400 => "ok",
        _ => "failed",
    }
}

/// How long entries are kept when the configuration does not say.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(365 * 86_400);
/// How often old entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes entries older than `retention`, now and every hour.
pub async fn prune(store: ferry_store::Store, retention: Duration) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        let before = crate::driver::now_us() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX / 2);
        match store.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "pruned audit log entries past their retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune the audit log; will retry"),
        }
    }
}

/// Appends an entry for something that happened outside a request's own answer (a device sign-in that finished in
/// the background, an admin restored from the server's machine).
pub async fn append(
    state: &AppState,
    actor: Option<String>,
    action: &str,
    result: &str,
    detail: Option<String>,
    source: Option<String>,
) {
    let entry = NewAudit {
        actor_kind: if actor.is_some() { "user" } else { "anonymous" }.to_string(),
        actor,
        action: action.to_string(),
        object: None,
        detail,
        status: if result == "ok" { 200 } else { 401 },
        result: result.to_string(),
        source,
    };
    if let Err(e) = state.store.append_audit(&entry, crate::driver::now_us()).await {
        tracing::error!(error = %e, action, "could not append to the audit log");
    }
}
