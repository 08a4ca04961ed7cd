//! API tokens. Only a hash of each token is stored; the plain token is shown once, when it is created.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{Store, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: i64,
    pub name: String,
    pub role: String,
}

/// A token as listed: never its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenListing {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_at_us: i64,
    pub revoked_at_us: Option<i64>,
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

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenListing>, StoreError> {
        let rows = sqlx::query("SELECT id, name, role, created_at_us, revoked_at_us FROM tokens ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(listing).collect())
    }

    /// Revokes a token. Returns the token as it is now and whether this call revoked it (`false`: it already was);
    /// `None` when there is no such token.
    pub async fn revoke_token(&self, id: i64, now_us: i64) -> Result<Option<(TokenListing, bool)>, StoreError> {
        let revoked = sqlx::query("UPDATE tokens SET revoked_at_us = ? WHERE id = ? AND revoked_at_us IS NULL")
            .bind(now_us)
            .bind(id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        let row = sqlx::query("SELECT id, name, role, created_at_us, revoked_at_us FROM tokens WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (listing(&r), revoked > 0)))
    }

    pub async fn token_count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM tokens").fetch_one(&self.pool).await?)
    }
}

fn listing(r: &SqliteRow) -> TokenListing {
    TokenListing {
        id: r.get("id"),
        name: r.get("name"),
        role: r.get("role"),
        created_at_us: r.get("created_at_us"),
        revoked_at_us: r.get("revoked_at_us"),
    }
}
