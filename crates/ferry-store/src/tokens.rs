//! Identities: users (people and service accounts), teams with their members and projects, and API tokens.
//!
//! Only a hash of each token is stored; the plain token is shown once, when it is created. The store keeps what it
//! is given: who may create, see or revoke what is decided by the server's authorisation rules, never here.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{Store, StoreError};

/// A token as the authentication path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    /// `user` (a personal token) or `agent` (a join token).
    pub kind: String,
    /// The owner of a personal token.
    pub user_id: Option<i64>,
    /// A personal token's scope: `read`, `submit` or `admin`.
    pub scope: Option<String>,
    /// The node name or pattern an agent token speaks for.
    pub node: Option<String>,
    /// How many distinct nodes an agent token may register.
    pub max_nodes: Option<i64>,
    pub expires_at_us: Option<i64>,
}

/// A token to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub user_id: Option<i64>,
    pub scope: Option<&'a str>,
    pub node: Option<&'a str>,
    pub max_nodes: Option<i64>,
    pub expires_at_us: Option<i64>,
    pub created_by: Option<&'a str>,
    pub hash: &'a str,
}

/// A token as listed: never its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenListing {
    pub id: i64,
    pub name: String,
    pub kind: String,
    /// The owner's name, for a personal token.
    pub user: Option<String>,
    pub user_id: Option<i64>,
    pub scope: Option<String>,
    pub node: Option<String>,
    pub created_at_us: i64,
    pub created_by: Option<String>,
    pub expires_at_us: Option<i64>,
    pub revoked_at_us: Option<i64>,
}

/// A user or service account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub id: i64,
    pub name: String,
    /// `user` or `service`.
    pub kind: String,
    /// An installation admin.
    pub admin: bool,
    pub default_team: Option<String>,
    pub created_at_us: i64,
    pub created_by: Option<String>,
    pub disabled_at_us: Option<i64>,
}

/// A user to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub admin: bool,
    pub default_team: Option<&'a str>,
    pub created_by: Option<&'a str>,
}

/// A team with its members (user name and role, by name) and projects (by name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TeamRecord {
    pub name: String,
    pub created_at_us: i64,
    pub members: Vec<(String, String)>,
    pub projects: Vec<String>,
}

const TOKEN_COLUMNS: &str = "t.id, t.name, t.role, t.user_id, t.scope, t.node, t.created_at_us, t.created_by, \
     t.expires_at_us, t.revoked_at_us, u.name AS user_name";
const USER_COLUMNS: &str = "id, name, kind, admin, default_team, created_at_us, created_by, disabled_at_us";

impl Store {
    pub async fn insert_token(&self, token: &NewToken<'_>, now_us: i64) -> Result<i64, StoreError> {
        let id = sqlx::query(
            "INSERT INTO tokens (name, role, hash, created_at_us, user_id, scope, node, expires_at_us, created_by, \
             max_nodes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(token.name)
        .bind(token.kind)
        .bind(token.hash)
        .bind(now_us)
        .bind(token.user_id)
        .bind(token.scope)
        .bind(token.node)
        .bind(token.expires_at_us)
        .bind(token.created_by)
        .bind(token.max_nodes)
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id)
    }

    /// The live (not revoked) token with this hash; expiry is the caller's to check.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, role, user_id, scope, node, max_nodes, expires_at_us FROM tokens \
             WHERE hash = ? AND revoked_at_us IS NULL",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| TokenRecord {
            id: r.get("id"),
            name: r.get("name"),
            kind: r.get("role"),
            user_id: r.get("user_id"),
            scope: r.get("scope"),
            node: r.get("node"),
            max_nodes: r.get("max_nodes"),
            expires_at_us: r.get("expires_at_us"),
        }))
    }

    /// Every token, oldest first; only those of `user_id` when given.
    pub async fn tokens(&self, user_id: Option<i64>) -> Result<Vec<TokenListing>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens t LEFT JOIN users u ON u.id = t.user_id \
             WHERE ? IS NULL OR t.user_id = ? ORDER BY t.id"
        );
        let rows = sqlx::query(&sql).bind(user_id).bind(user_id).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(listing).collect())
    }

    pub async fn token(&self, id: i64) -> Result<Option<TokenListing>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens t LEFT JOIN users u ON u.id = t.user_id WHERE t.id = ?");
        let row = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(listing))
    }

    /// Revokes a token. Returns whether this call revoked it (`false`: it already was, or there is none).
    pub async fn revoke_token(&self, id: i64, now_us: i64) -> Result<bool, StoreError> {
        let revoked = sqlx::query("UPDATE tokens SET revoked_at_us = ? WHERE id = ? AND revoked_at_us IS NULL")
            .bind(now_us)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(revoked > 0)
    }

    /// Revokes every live agent token of `name` bound to `node` (the local agent's, replaced at each start).
    pub async fn revoke_agent_tokens(&self, name: &str, node: &str, now_us: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE tokens SET revoked_at_us = ? WHERE role = 'agent' AND name = ? AND node = ? \
             AND revoked_at_us IS NULL",
        )
        .bind(now_us)
        .bind(name)
        .bind(node)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// The live agent token a node registered with, if any.
    pub async fn node_token(&self, node: &str) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT n.token_id FROM node_tokens n JOIN tokens t ON t.id = n.token_id \
             WHERE n.node = ? AND t.revoked_at_us IS NULL",
        )
        .bind(node)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records that `node` speaks through `token_id` from now on.
    pub async fn set_node_token(&self, node: &str, token_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO node_tokens (node, token_id) VALUES (?, ?) \
             ON CONFLICT (node) DO UPDATE SET token_id = excluded.token_id",
        )
        .bind(node)
        .bind(token_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many distinct nodes have registered with `token_id`.
    pub async fn nodes_of_token(&self, token_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM node_tokens WHERE token_id = ?")
            .bind(token_id)
            .fetch_one(&self.pool)
            .await?)
    }

    // Users.

    /// Creates a user; `None` when the name is taken.
    pub async fn create_user(&self, user: &NewUser<'_>, now_us: i64) -> Result<Option<i64>, StoreError> {
        let done = sqlx::query(
            "INSERT INTO users (name, kind, admin, default_team, created_at_us, created_by) VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(user.name)
        .bind(user.kind)
        .bind(user.admin)
        .bind(user.default_team)
        .bind(now_us)
        .bind(user.created_by)
        .execute(&self.pool)
        .await?;
        Ok((done.rows_affected() > 0).then(|| done.last_insert_rowid()))
    }

    pub async fn user(&self, id: i64) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from))
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from))
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows =
            sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name")).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(user_from).collect())
    }

    /// Disables (`Some(time)`) or enables (`None`) a user; `false` when there is no such user.
    pub async fn set_user_disabled(&self, id: i64, disabled_at_us: Option<i64>) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE users SET disabled_at_us = ? WHERE id = ?")
            .bind(disabled_at_us)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_user_admin(&self, id: i64, admin: bool) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET admin = ? WHERE id = ?").bind(admin).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    pub async fn set_default_team(&self, id: i64, team: Option<&str>) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET default_team = ? WHERE id = ?").bind(team).bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// How many enabled installation admins there are.
    pub async fn enabled_admins(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE admin = 1 AND disabled_at_us IS NULL")
            .fetch_one(&self.pool)
            .await?)
    }

    // Teams, members and projects.

    /// Creates a team; `false` when it exists.
    pub async fn create_team(&self, name: &str, by: Option<&str>, now_us: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO teams (name, created_at_us, created_by) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_us)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn team_exists(&self, name: &str) -> Result<bool, StoreError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM teams WHERE name = ?").bind(name).fetch_optional(&self.pool).await?;
        Ok(found.is_some())
    }

    /// Every team with its members and projects, by name.
    pub async fn teams(&self) -> Result<Vec<TeamRecord>, StoreError> {
        let teams = sqlx::query("SELECT name, created_at_us FROM teams ORDER BY name").fetch_all(&self.pool).await?;
        let members = sqlx::query(
            "SELECT m.team, u.name, m.role FROM team_members m JOIN users u ON u.id = m.user_id ORDER BY u.name",
        )
        .fetch_all(&self.pool)
        .await?;
        let projects = sqlx::query("SELECT team, name FROM projects ORDER BY name").fetch_all(&self.pool).await?;
        Ok(teams
            .iter()
            .map(|t| {
                let name: String = t.get("name");
                TeamRecord {
                    members: members
                        .iter()
                        .filter(|m| m.get::<String, _>("team") == name)
                        .map(|m| (m.get("name"), m.get("role")))
                        .collect(),
                    projects: projects
                        .iter()
                        .filter(|p| p.get::<String, _>("team") == name)
                        .map(|p| p.get("name"))
                        .collect(),
                    created_at_us: t.get("created_at_us"),
                    name,
                }
            })
            .collect())
    }

    /// Sets a user's role in a team, adding the membership when there is none; a membership an admin sets is the
    /// admin's from then on, which sign-ins leave alone.
    pub async fn set_member(&self, team: &str, user_id: i64, role: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO team_members (team, user_id, role) VALUES (?, ?, ?) \
             ON CONFLICT (team, user_id) DO UPDATE SET role = excluded.role, granted_by = 'admin'",
        )
        .bind(team)
        .bind(user_id)
        .bind(role)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a membership; `false` when there was none.
    pub async fn remove_member(&self, team: &str, user_id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM team_members WHERE team = ? AND user_id = ?")
            .bind(team)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// A user's teams and role in each, by team name.
    pub async fn memberships(&self, user_id: i64) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT team, role FROM team_members WHERE user_id = ? ORDER BY team")
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get("team"), r.get("role"))).collect())
    }

    /// How many admins a team has.
    pub async fn team_admins(&self, team: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM team_members WHERE team = ? AND role = 'admin'")
            .bind(team)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Creates a project of a team; `false` when it exists.
    pub async fn create_project(
        &self,
        team: &str,
        name: &str,
        by: Option<&str>,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO projects (team, name, created_at_us, created_by) VALUES (?, ?, ?, ?) \
             ON CONFLICT (team, name) DO NOTHING",
        )
        .bind(team)
        .bind(name)
        .bind(now_us)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn project_exists(&self, team: &str, name: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM projects WHERE team = ? AND name = ?")
            .bind(team)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }
}

fn listing(r: &SqliteRow) -> TokenListing {
    TokenListing {
        id: r.get("id"),
        name: r.get("name"),
        kind: r.get("role"),
        user: r.get("user_name"),
        user_id: r.get("user_id"),
        scope: r.get("scope"),
        node: r.get("node"),
        created_at_us: r.get("created_at_us"),
        created_by: r.get("created_by"),
        expires_at_us: r.get("expires_at_us"),
        revoked_at_us: r.get("revoked_at_us"),
    }
}

fn user_from(r: &SqliteRow) -> UserRecord {
    UserRecord {
        id: r.get("id"),
        name: r.get("name"),
        kind: r.get("kind"),
        admin: r.get::<i64, _>("admin") != 0,
        default_team: r.get("default_team"),
        created_at_us: r.get("created_at_us"),
        created_by: r.get("created_by"),
        disabled_at_us: r.get("disabled_at_us"),
    }
}
