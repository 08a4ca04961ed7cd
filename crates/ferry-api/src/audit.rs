//! The audit log as the API shows it: who did what, to which object, when, from where, and with what result.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    /// Microseconds since the Unix epoch.
    pub at_us: i64,
    /// The user's or service account's name, `agent:<token name>`, `job:<id>`; absent when no one was authenticated.
    pub actor: Option<String>,
    /// `user`, `service`, `agent`, `job`, `local` or `anonymous`.
    pub actor_kind: String,
    /// The method and route (`POST /api/v1/jobs/{id}/cancel`), or a named action (`sign-in`).
    pub action: String,
    /// The request's path with its values (`/api/v1/jobs/12/cancel`).
    pub object: Option<String>,
    /// What the server said of it: what was created, or why it was refused.
    pub detail: Option<String>,
    /// The HTTP status of the answer.
    pub status: i64,
    /// `ok`, `denied` (401, 403) or `failed`.
    pub result: String,
    /// The client's address.
    pub source: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` to read the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// The results an entry may have.
pub const AUDIT_RESULTS: [&str; 3] = ["ok", "denied", "failed"];
