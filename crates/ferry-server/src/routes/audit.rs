//! `GET /api/v1/audit`: the audit log, newest first, filtered, as JSON pages or CSV. Installation admins read every
//! entry; everyone else reads their own.

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::audit::{AuditEntry, AuditPage, AUDIT_RESULTS};
use ferry_api::ErrorBody;
use ferry_store::{AuditFilter, AuditRecord};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::Caller;
use crate::driver::now_us;
use crate::error::{rejection, ApiError};
use crate::routes::series::parse_time;
use crate::routes::usage::csv_field;
use crate::state::AppState;

const LIMIT_DEFAULT: i64 = 100;
const LIMIT_MAX: i64 = 10_000;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Entries of this actor only (a user's name, `agent:<token>`, `job:<id>`); others than oneself need an admin.
    #[serde(default)]
    actor: Option<String>,
    /// Entries whose action contains this text (`cancel`, `POST /api/v1/tokens`, `sign-in`).
    #[serde(default)]
    action: Option<String>,
    /// Entries whose object contains this text (`/jobs/12`).
    #[serde(default)]
    object: Option<String>,
    /// `ok`, `denied` or `failed`.
    #[serde(default)]
    result: Option<String>,
    /// An RFC 3339 time or a duration back from now (`24h`).
    #[serde(default)]
    since: Option<String>,
    /// Like `since`.
    #[serde(default)]
    until: Option<String>,
    /// Entries older than this id (from `next_before` of the previous page).
    #[serde(default)]
    before: Option<i64>,
    /// At most this many entries (100 by default, 10000 at most).
    #[serde(default)]
    limit: Option<i64>,
    /// `json` (the default) or `csv`.
    #[serde(default)]
    format: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = AuditPage, description = "Entries, newest first (or CSV with format=csv)"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(rejection)?;
    // Reading is not a power: an admin user reads every entry with any token, like every other read.
    let actor = match q.actor {
        Some(actor) if caller.admin || actor == caller.name => Some(actor),
        Some(actor) => {
            return Err(ApiError::new(
                ferry_api::ErrorCode::Forbidden,
                format!("only an installation admin reads the audit entries of others than oneself (`{actor}`)"),
            ))
        }
        None if caller.admin => None,
        None => Some(caller.name.clone()),
    };
    if let Some(result) = q.result.as_deref().filter(|r| !AUDIT_RESULTS.contains(r)) {
        return Err(ApiError::invalid(format!(
            "`result={result}` is not known; use one of {}",
            AUDIT_RESULTS.join(", ")
        )));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::invalid(format!("`format={other}` is not known; use json or csv"))),
    };
    let limit = q.limit.unwrap_or(LIMIT_DEFAULT);
    if !(1..=LIMIT_MAX).contains(&limit) {
        return Err(ApiError::invalid(format!("`limit={limit}` must be between 1 and {LIMIT_MAX}")));
    }
    let now = now_us();
    let filter = AuditFilter {
        actor,
        action: q.action,
        object: q.object,
        result: q.result,
        since_us: q.since.as_deref().map(|t| parse_time(t, now, "since")).transpose()?,
        until_us: q.until.as_deref().map(|t| parse_time(t, now, "until")).transpose()?,
        before_id: q.before,
        limit,
    };
    let entries: Vec<AuditEntry> = state.store.audit(&filter).await?.into_iter().map(entry).collect();
    let next_before = (entries.len() as i64 == limit).then(|| entries.last().map(|e| e.id)).flatten();
    if csv {
        let headers = [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"ferry-audit.csv\"".to_string()),
        ];
        return Ok((headers, to_csv(&entries)).into_response());
    }
    Ok(Json(AuditPage { entries, next_before }).into_response())
}

fn entry(r: AuditRecord) -> AuditEntry {
    AuditEntry {
        id: r.id,
        at_us: r.at_us,
        actor: r.actor,
        actor_kind: r.actor_kind,
        action: r.action,
        object: r.object,
        detail: r.detail,
        status: r.status,
        result: r.result,
        source: r.source,
    }
}

/// The entries as CSV, with times in RFC 3339 (UTC) so that a spreadsheet reads them.
fn to_csv(entries: &[AuditEntry]) -> String {
    let mut out = String::from("id,time,actor,actor_kind,action,object,status,result,source,detail\n");
    for e in entries {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(e.at_us.max(0) as u64);
        let cells = [
            e.id.to_string(),
            humantime::format_rfc3339_micros(time).to_string(),
            csv_field(e.actor.as_deref().unwrap_or("")),
            csv_field(&e.actor_kind),
            csv_field(&e.action),
            csv_field(e.object.as_deref().unwrap_or("")),
            e.status.to_string(),
            csv_field(&e.result),
            csv_field(e.source.as_deref().unwrap_or("")),
            csv_field(e.detail.as_deref().unwrap_or("")),
        ];
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_one_line_per_entry_with_quoted_details() {
        let e = AuditEntry {
            id: 7,
            at_us: 1_700_000_000_000_000,
            actor: Some("ana".into()),
            actor_kind: "user".into(),
            action: "POST /api/v1/jobs/{id}/cancel".into(),
            object: Some("/api/v1/jobs/3/cancel".into()),
            detail: Some("job 3, \"train\"\nsecond line".into()),
            status: 200,
            result: "ok".into(),
            source: Some("127.0.0.1".into()),
        };
        let csv = to_csv(&[e]);
        let mut lines = csv.splitn(2, '\n');
        assert_eq!(lines.next().unwrap(), "id,time,actor,actor_kind,action,object,status,result,source,detail");
        assert_eq!(
            lines.next().unwrap(),
            "7,2023-11-14T22:13:20.000000Z,ana,user,POST /api/v1/jobs/{id}/cancel,/api/v1/jobs/3/cancel,200,ok,\
             127.0.0.1,\"job 3, \"\"train\"\"\nsecond line\"\n"
        );
    }
}
