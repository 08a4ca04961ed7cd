//! API tokens. Only a hash of each token is stored; the plain token is shown once, when it is created.

use sqlx::Row;

use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub role: String,
}

impl Store {
    pub async fn insert_token(&self, name: &str, role: &str, hash: &str, now_us: i64) -> Result<i64, StoreError> {
        let id = sqlx::query("INSERT INTO tokens (name, role, hash, created_at_us) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(role)
            .bind(hash)
            .bind(now_us)
            .execute(&self.pool)
            .await?
            .last_insert_rowid();
        Ok(id)
    }

    /// The live (not revoked) token with this hash.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row = sqlx::query("SELECT id, name, role FROM tokens WHERE hash = ? AND revoked_at_us IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| TokenRecord { id: r.get("id"), name: r.get("name"), role: r.get("role") }))
    }

    pub async fn token_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tokens").fetch_one(&self.pool).await?)
    }
}
