//! The audit log: appended by the server for every state-changing request, sign-in and refusal; read with filters;
//! pruned only by the retention sweep.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{Store, StoreError};

/// One entry of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: i64,
    pub at_us: i64,
    pub actor: Option<String>,
    pub actor_kind: String,
    pub action: String,
    pub object: Option<String>,
    pub detail: Option<String>,
    pub status: i64,
    pub result: String,
    pub source: Option<String>,
}

/// An entry to append (its id and time are the store's and the caller's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewAudit {
    pub actor: Option<String>,
    pub actor_kind: String,
    pub action: String,
    pub object: Option<String>,
    pub detail: Option<String>,
    pub status: i64,
    pub result: String,
    pub source: Option<String>,
}

/// Which entries to read: every given field must match; `action` and `object` match a substring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub object: Option<String>,
    pub result: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Entries before this id only (for paging back through the log, newest first).
    pub before_id: Option<i64>,
    pub limit: i64,
}

impl Store {
    pub async fn append_audit(&self, entry: &NewAudit, at_us: i64) -> Result<i64, StoreError> {
        let id = sqlx::query(
            "INSERT INTO audit_log (at_us, actor, actor_kind, action, object, detail, status, result, source) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(at_us)
        .bind(&entry.actor)
        .bind(&entry.actor_kind)
        .bind(&entry.action)
        .bind(&entry.object)
        .bind(&entry.detail)
        .bind(entry.status)
        .bind(&entry.result)
        .bind(&entry.source)
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    /// Matching entries, newest first.
    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let like = |s: &Option<String>| s.as_ref().map(|s| format!("%{}%", escape_like(s)));
        let rows = sqlx::query(
            "SELECT id, at_us, actor, actor_kind, action, object, detail, status, result, source FROM audit_log \
             WHERE (?1 IS NULL OR actor = ?1) \
               AND (?2 IS NULL OR action LIKE ?2 ESCAPE '\\') \
               AND (?3 IS NULL OR object LIKE ?3 ESCAPE '\\') \
               AND (?4 IS NULL OR result = ?4) \
               AND (?5 IS NULL OR at_us >= ?5) \
               AND (?6 IS NULL OR at_us < ?6) \
               AND (?7 IS NULL OR id < ?7) \
             ORDER BY id DESC LIMIT ?8",
        )
        .bind(&filter.actor)
        .bind(like(&filter.action))
        .bind(like(&filter.object))
        .bind(&filter.result)
        .bind(filter.since_us)
        .bind(filter.until_us)
        .bind(filter.before_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(record).collect())
    }

    /// Deletes entries older than `before_us` (the retention sweep); returns how many.
    pub async fn prune_audit(&self, before_us: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM audit_log WHERE at_us < ?")
            .bind(before_us)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

fn escape_like(text: &str) -> String {
    text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_")
}

fn record(r: &SqliteRow) -> AuditRecord {
    AuditRecord {
        id: r.get("id"),
        at_us: r.get("at_us"),
        actor: r.get("actor"),
        actor_kind: r.get("actor_kind"),
        action: r.get("action"),
        object: r.get("object"),
        detail: r.get("detail"),
        status: r.get("status"),
        result: r.get("result"),
        source: r.get("source"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(actor: &str, action: &str, result: &str) -> NewAudit {
        NewAudit {
            actor: Some(actor.into()),
            actor_kind: "user".into(),
            action: action.into(),
            object: Some("/api/v1/jobs/1_0/cancel".into()),
            status: 200,
            result: result.into(),
            ..NewAudit::default()
        }
    }

    #[tokio::test]
    async fn the_log_filters_newest_first_refuses_updates_and_prunes_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        store.append_audit(&entry("ana", "POST /api/v1/jobs", "ok"), 10).await.unwrap();
        store.append_audit(&entry("bo", "POST /api/v1/jobs/{id}/cancel", "denied"), 20).await.unwrap();
        store.append_audit(&entry("ana", "POST /api/v1/jobs/{id}/cancel", "ok"), 30).await.unwrap();
        let all = AuditFilter { limit: 10, ..AuditFilter::default() };
        let found = store.audit(&all).await.unwrap();
        assert_eq!(found.iter().map(|e| e.at_us).collect::<Vec<_>>(), vec![30, 20, 10]);
        let ana = AuditFilter { actor: Some("ana".into()), action: Some("cancel".into()), ..all.clone() };
        assert_eq!(store.audit(&ana).await.unwrap().len(), 1);
        let denied =
            AuditFilter { result: Some("denied".into()), since_us: Some(15), until_us: Some(25), ..all.clone() };
        assert_eq!(store.audit(&denied).await.unwrap()[0].actor.as_deref(), Some("bo"));
        // `_` and `%` in a filter are letters, not patterns.
        let literal = AuditFilter { object: Some("1_0".into()), ..all.clone() };
        assert_eq!(store.audit(&literal).await.unwrap().len(), 3);
        let wildcard = AuditFilter { object: Some("1%0".into()), ..all.clone() };
        assert!(store.audit(&wildcard).await.unwrap().is_empty());
        let page = AuditFilter { before_id: Some(found[0].id), limit: 1, ..all.clone() };
        assert_eq!(store.audit(&page).await.unwrap()[0].at_us, 20);

        let update = sqlx::query("UPDATE audit_log SET actor = 'mallory'").execute(&store.pool).await;
        assert!(update.unwrap_err().to_string().contains("append-only"));
        assert_eq!(store.prune_audit(25).await.unwrap(), 2);
        assert_eq!(store.audit(&all).await.unwrap().len(), 1);
    }
}
