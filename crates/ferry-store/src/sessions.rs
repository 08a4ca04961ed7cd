//! Dashboard sessions, and what single sign-on keeps: the provider's subject of each user, and the admin's rules
//! that turn the provider's groups into team memberships.

use sqlx::Row;

use crate::rows::QuotaRecord;
use crate::{from_json, to_json, Store, StoreError};

/// A live session as the authentication path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    pub id: i64,
    pub user_id: i64,
    pub scope: String,
    /// `token`, `oidc` or `oidc-device`.
    pub via: String,
    /// The API token a sign-in with a token was made with.
    pub token_id: Option<i64>,
    pub expires_at_us: i64,
    /// The provider's refresh token of a single sign-on session.
    pub refresh_token: Option<String>,
    /// When a single sign-on session is next checked with the provider.
    pub recheck_at_us: Option<i64>,
}

/// A session to store; `hash` is the SHA-256 of the id in the browser's cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewSession<'a> {
    pub hash: &'a str,
    pub user_id: i64,
    pub scope: &'a str,
    pub via: &'a str,
    pub token_id: Option<i64>,
    pub expires_at_us: i64,
    pub refresh_token: Option<&'a str>,
    pub recheck_at_us: Option<i64>,
    pub source: Option<&'a str>,
}

/// An admin's rule: members of the provider's group `group` get `role` in `team`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRule {
    pub group: String,
    pub team: String,
    pub role: String,
}

impl Store {
    pub async fn create_session(&self, session: &NewSession<'_>, now_us: i64) -> Result<i64, StoreError> {
        // Expired sessions go as new ones come, so the table holds only live ones and those of the last day.
        sqlx::query("DELETE FROM sessions WHERE expires_at_us < ?").bind(now_us).execute(&self.pool).await?;
        let id = sqlx::query(
            "INSERT INTO sessions (hash, user_id, scope, via, created_at_us, expires_at_us, refresh_token, \
             recheck_at_us, source, token_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(session.hash)
        .bind(session.user_id)
        .bind(session.scope)
        .bind(session.via)
        .bind(now_us)
        .bind(session.expires_at_us)
        .bind(session.refresh_token)
        .bind(session.recheck_at_us)
        .bind(session.source)
        .bind(session.token_id)
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    /// The session with this hash, unless it has expired or the token it was signed in with was revoked or has
    /// expired.
    pub async fn session(&self, hash: &str, now_us: i64) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, s.scope, s.via, s.token_id, s.expires_at_us, s.refresh_token, s.recheck_at_us \
             FROM sessions s LEFT JOIN tokens t ON t.id = s.token_id \
             WHERE s.hash = ?1 AND s.expires_at_us > ?2 AND (s.token_id IS NULL OR (t.revoked_at_us IS NULL \
               AND (t.expires_at_us IS NULL OR t.expires_at_us > ?2)))",
        )
        .bind(hash)
        .bind(now_us)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| SessionRecord {
            id: r.get("id"),
            user_id: r.get("user_id"),
            scope: r.get("scope"),
            via: r.get("via"),
            token_id: r.get("token_id"),
            expires_at_us: r.get("expires_at_us"),
            refresh_token: r.get("refresh_token"),
            recheck_at_us: r.get("recheck_at_us"),
        }))
    }

    /// Records a successful check with the provider: its new refresh token (when it rotated one) and the next check.
    pub async fn renew_session(
        &self,
        id: i64,
        refresh_token: Option<&str>,
        recheck_at_us: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET refresh_token = COALESCE(?, refresh_token), recheck_at_us = ? WHERE id = ?")
            .bind(refresh_token)
            .bind(recheck_at_us)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn end_session(&self, hash: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query("DELETE FROM sessions WHERE hash = ?").bind(hash).execute(&self.pool).await?.rows_affected() > 0)
    }

    pub async fn end_session_by_id(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id = ?").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Ends every session of a user (disabled, or signed out everywhere).
    pub async fn end_sessions_of(&self, user_id: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM sessions WHERE user_id = ?")
            .bind(user_id)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    // Single sign-on.

    /// The user who signed in as the provider's `subject`.
    pub async fn user_id_by_subject(&self, subject: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar("SELECT id FROM users WHERE oidc_subject = ?")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Binds a user to the provider's subject; `false` when the user is bound to another subject already.
    pub async fn bind_subject(&self, user_id: i64, subject: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE users SET oidc_subject = ? WHERE id = ? AND (oidc_subject IS NULL OR oidc_subject = ?)",
        )
        .bind(subject)
        .bind(user_id)
        .bind(subject)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn group_rules(&self) -> Result<Vec<GroupRule>, StoreError> {
        let rows =
            sqlx::query("SELECT grp, team, role FROM group_rules ORDER BY grp, team").fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| GroupRule { group: r.get("grp"), team: r.get("team"), role: r.get("role") }).collect())
    }

    pub async fn set_group_rule(&self, rule: &GroupRule, by: Option<&str>, now_us: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO group_rules (grp, team, role, created_at_us, created_by) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (grp, team) DO UPDATE SET role = excluded.role",
        )
        .bind(&rule.group)
        .bind(&rule.team)
        .bind(&rule.role)
        .bind(now_us)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_group_rule(&self, group: &str, team: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM group_rules WHERE grp = ? AND team = ?")
            .bind(group)
            .bind(team)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Makes the memberships the provider's groups grant a user exactly `granted` (team, role): adds and updates
    /// those, removes other memberships that sign-ins granted before. Memberships an admin set by hand are left
    /// alone (a granted role never lowers one an admin gave). One transaction; returns whether anything changed.
    pub async fn sync_granted_memberships(
        &self,
        user_id: i64,
        granted: &[(String, String)],
    ) -> Result<bool, StoreError> {
        let mut changed = 0;
        let mut tx = self.write().await?;
        let current = sqlx::query("SELECT team, granted_by FROM team_members WHERE user_id = ?")
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
        for row in &current {
            let (team, by): (String, String) = (row.get("team"), row.get("granted_by"));
            if by == "sso" && !granted.iter().any(|(t, _)| *t == team) {
                changed += sqlx::query("DELETE FROM team_members WHERE team = ? AND user_id = ?")
                    .bind(&team)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
        }
        for (team, role) in granted {
            // Only a new membership or a changed role counts as a change.
            changed += sqlx::query(
                "INSERT INTO team_members (team, user_id, role, granted_by) VALUES (?, ?, ?, 'sso') \
                 ON CONFLICT (team, user_id) DO UPDATE SET role = excluded.role \
                 WHERE granted_by = 'sso' AND role <> excluded.role",
            )
            .bind(team)
            .bind(user_id)
            .bind(role)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(changed > 0)
    }
}

/// A quota set through the API: of a team (`project` is `None`) or of one of its projects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredQuota {
    pub team: String,
    pub project: Option<String>,
    pub quota: QuotaRecord,
}

impl Store {
    /// Every quota set through the API. One that cannot be read is left out, with a warning: the configuration
    /// file's quotas and the rest still hold.
    pub async fn quotas(&self) -> Result<Vec<StoredQuota>, StoreError> {
        let rows = sqlx::query(
            "SELECT name AS team, NULL AS project, quota FROM teams WHERE quota IS NOT NULL \
             UNION ALL SELECT team, name AS project, quota FROM projects WHERE quota IS NOT NULL ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let (team, project): (String, Option<String>) = (r.get("team"), r.get("project"));
                match from_json::<QuotaRecord>("quota", r.get("quota")) {
                    Ok(quota) => Some(StoredQuota { team, project, quota }),
                    Err(error) => {
                        tracing::warn!(%team, ?project, %error, "ignoring an unreadable quota");
                        None
                    }
                }
            })
            .collect())
    }

    /// Sets (or with `None` clears) the quota of a team, or of its project; `false` when there is no such one.
    pub async fn set_quota(
        &self,
        team: &str,
        project: Option<&str>,
        quota: Option<&QuotaRecord>,
    ) -> Result<bool, StoreError> {
        let json = quota.map(to_json);
        let done = match project {
            None => {
                sqlx::query("UPDATE teams SET quota = ? WHERE name = ?")
                    .bind(json)
                    .bind(team)
                    .execute(&self.pool)
                    .await?
            }
            Some(project) => {
                sqlx::query("UPDATE projects SET quota = ? WHERE team = ? AND name = ?")
                    .bind(json)
                    .bind(team)
                    .bind(project)
                    .execute(&self.pool)
                    .await?
            }
        };
        Ok(done.rows_affected() > 0)
    }
}
