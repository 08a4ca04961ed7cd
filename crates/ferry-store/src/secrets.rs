//! Secrets, sealed: the store keeps what the server sealed and hands it back; it never sees a plain value, and
//! listings never carry the sealed bytes.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{Store, StoreError, Tx};

/// Whose secret: a user's (`owner` is the user's name) or a project's (`owner` is `team/project`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretOwner {
    pub scope: &'static str,
    pub owner: String,
}

impl SecretOwner {
    pub fn user(name: &str) -> SecretOwner {
        SecretOwner { scope: "user", owner: name.to_string() }
    }

    pub fn project(team: &str, project: &str) -> SecretOwner {
        SecretOwner { scope: "project", owner: format!("{team}/{project}") }
    }

    /// The team and project of a project secret.
    pub fn team_project(&self) -> Option<(&str, &str)> {
        (self.scope == "project").then(|| self.owner.split_once('/')).flatten()
    }
}

/// A sealed value with the nonce it was sealed with.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes)", self.sealed.len())
    }
}

/// A secret as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRecord {
    pub owner: SecretOwner,
    pub name: String,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    pub updated_by: Option<String>,
}

fn record(row: &SqliteRow) -> Result<SecretRecord, StoreError> {
    let scope: String = row.get("scope");
    let scope = match scope.as_str() {
        "user" => "user",
        "project" => "project",
        other => return Err(StoreError::Invalid(format!("unknown secret scope `{other}`"))),
    };
    Ok(SecretRecord {
        owner: SecretOwner { scope, owner: row.get("owner") },
        name: row.get("name"),
        created_at_us: row.get("created_at_us"),
        updated_at_us: row.get("updated_at_us"),
        updated_by: row.get("updated_by"),
    })
}

const SELECT_SEALED: &str = "SELECT nonce, sealed FROM secrets WHERE scope = ? AND owner = ? AND name = ?";

fn sealed(row: &SqliteRow) -> Sealed {
    Sealed { nonce: row.get("nonce"), sealed: row.get("sealed") }
}

impl Store {
    /// Stores a sealed value under `name`, replacing an older one; true when the name is new.
    pub async fn put_secret(
        &self,
        owner: &SecretOwner,
        name: &str,
        value: &Sealed,
        now_us: i64,
        by: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write().await?;
        let existed: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM secrets WHERE scope = ? AND owner = ? AND name = ?")
                .bind(owner.scope)
                .bind(&owner.owner)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO secrets (scope, owner, name, nonce, sealed, created_at_us, updated_at_us, updated_by) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (scope, owner, name) DO UPDATE SET nonce = excluded.nonce, sealed = excluded.sealed, \
             updated_at_us = excluded.updated_at_us, updated_by = excluded.updated_by",
        )
        .bind(owner.scope)
        .bind(&owner.owner)
        .bind(name)
        .bind(&value.nonce)
        .bind(&value.sealed)
        .bind(now_us)
        .bind(now_us)
        .bind(by)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(existed.is_none())
    }

    /// Removes a secret; false when there was none.
    pub async fn delete_secret(&self, owner: &SecretOwner, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM secrets WHERE scope = ? AND owner = ? AND name = ?")
            .bind(owner.scope)
            .bind(&owner.owner)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn secret(&self, owner: &SecretOwner, name: &str) -> Result<Option<SecretRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT scope, owner, name, created_at_us, updated_at_us, updated_by FROM secrets \
             WHERE scope = ? AND owner = ? AND name = ?",
        )
        .bind(owner.scope)
        .bind(&owner.owner)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(record).transpose()
    }

    /// The secrets of these owners, by owner then name.
    pub async fn secrets_of(&self, owners: &[SecretOwner]) -> Result<Vec<SecretRecord>, StoreError> {
        let mut out = Vec::new();
        for owner in owners {
            let rows = sqlx::query(
                "SELECT scope, owner, name, created_at_us, updated_at_us, updated_by FROM secrets \
                 WHERE scope = ? AND owner = ? ORDER BY name",
            )
            .bind(owner.scope)
            .bind(&owner.owner)
            .fetch_all(&self.pool)
            .await?;
            for row in &rows {
                out.push(record(row)?);
            }
        }
        Ok(out)
    }

    /// How many secrets an owner holds.
    pub async fn secret_count(&self, owner: &SecretOwner) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM secrets WHERE scope = ? AND owner = ?")
            .bind(owner.scope)
            .bind(&owner.owner)
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    pub async fn sealed_secret(&self, owner: &SecretOwner, name: &str) -> Result<Option<Sealed>, StoreError> {
        let row = sqlx::query(SELECT_SEALED)
            .bind(owner.scope)
            .bind(&owner.owner)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(sealed))
    }
}

impl Store {
    /// Records that run `attempt` of `job` fetched its secrets; false when it already had.
    pub async fn claim_secret_fetch(&self, job: u64, attempt: u32, now_us: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO secret_fetches (job_id, attempt, fetched_at_us) VALUES (?, ?, ?) \
             ON CONFLICT (job_id, attempt) DO NOTHING",
        )
        .bind(job as i64)
        .bind(attempt as i64)
        .bind(now_us)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

impl Tx {
    /// A sealed value, read inside the transaction that starts the job needing it.
    pub async fn sealed_secret(&mut self, owner: &SecretOwner, name: &str) -> Result<Option<Sealed>, StoreError> {
        let row = sqlx::query(SELECT_SEALED)
            .bind(owner.scope)
            .bind(&owner.owner)
            .bind(name)
            .fetch_optional(self.conn())
            .await?;
        Ok(row.as_ref().map(sealed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_secret_is_stored_replaced_listed_without_its_value_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        let ana = SecretOwner::user("ana");
        let project = SecretOwner::project("ml", "vision");
        let v1 = Sealed { nonce: vec![1; 12], sealed: vec![2; 20] };
        let v2 = Sealed { nonce: vec![3; 12], sealed: vec![4; 20] };
        assert!(store.put_secret(&ana, "HF_TOKEN", &v1, 10, "ana").await.unwrap());
        assert!(!store.put_secret(&ana, "HF_TOKEN", &v2, 20, "ana").await.unwrap());
        assert!(store.put_secret(&project, "HF_TOKEN", &v1, 30, "bo").await.unwrap());
        assert_eq!(store.sealed_secret(&ana, "HF_TOKEN").await.unwrap(), Some(v2));
        assert_eq!(store.sealed_secret(&SecretOwner::user("bo"), "HF_TOKEN").await.unwrap(), None);
        let listed = store.secrets_of(&[ana.clone(), project.clone()]).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].created_at_us, listed[0].updated_at_us), (10, 20));
        assert_eq!(listed[1].owner.team_project(), Some(("ml", "vision")));
        assert_eq!(store.secret_count(&ana).await.unwrap(), 1);
        assert!(store.delete_secret(&ana, "HF_TOKEN").await.unwrap());
        assert!(!store.delete_secret(&ana, "HF_TOKEN").await.unwrap());
        assert_eq!(store.sealed_secret(&ana, "HF_TOKEN").await.unwrap(), None);
        let mut tx = store.begin().await.unwrap();
        assert!(tx.sealed_secret(&project, "HF_TOKEN").await.unwrap().is_some());
        drop(tx);
        assert!(store.claim_secret_fetch(7, 0, 1).await.unwrap());
        assert!(!store.claim_secret_fetch(7, 0, 2).await.unwrap(), "a ticket is used once");
        assert!(store.claim_secret_fetch(7, 1, 3).await.unwrap(), "the next attempt has its own");
    }
}
