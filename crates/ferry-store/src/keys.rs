//! Idempotency keys of submissions (`Idempotency-Key`): which job a submitter's key created, and for which request.

use sqlx::Row;

use crate::{Store, StoreError, Tx};

/// A key as a submission carries it: the submitter's key and the digest of what it asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubmissionKey {
    pub owner: String,
    pub key: String,
    pub request_sha256: String,
}

/// The job a key already made, and the digest of the request that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedJob {
    pub job_id: u64,
    pub request_sha256: String,
}

const SELECT: &str = "SELECT job_id, request_sha256 FROM submission_keys WHERE owner = ? AND key = ?";

fn keyed(row: &sqlx::sqlite::SqliteRow) -> KeyedJob {
    KeyedJob { job_id: row.get::<i64, _>("job_id") as u64, request_sha256: row.get("request_sha256") }
}

impl Store {
    pub async fn keyed_job(&self, key: &SubmissionKey) -> Result<Option<KeyedJob>, StoreError> {
        let row = sqlx::query(SELECT).bind(&key.owner).bind(&key.key).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(keyed))
    }

    /// Forgets keys recorded before `before_us`; returns how many.
    pub async fn prune_submission_keys(&self, before_us: i64) -> Result<u64, StoreError> {
        Ok(sqlx::query("DELETE FROM submission_keys WHERE created_at_us < ?")
            .bind(before_us)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

impl Tx {
    /// The job a key made, read inside the transaction that is about to insert one.
    pub async fn keyed_job(&mut self, key: &SubmissionKey) -> Result<Option<KeyedJob>, StoreError> {
        let row = sqlx::query(SELECT).bind(&key.owner).bind(&key.key).fetch_optional(self.conn()).await?;
        Ok(row.as_ref().map(keyed))
    }

    pub async fn record_submission_key(
        &mut self,
        key: &SubmissionKey,
        job_id: u64,
        now_us: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO submission_keys (owner, key, request_sha256, job_id, created_at_us) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&key.owner)
        .bind(&key.key)
        .bind(&key.request_sha256)
        .bind(job_id as i64)
        .bind(now_us)
        .execute(self.conn())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_names_the_job_it_made_until_it_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        let key = SubmissionKey { owner: "ana".into(), key: "k1".into(), request_sha256: "ab".into() };
        assert_eq!(store.keyed_job(&key).await.unwrap(), None);
        let mut tx = store.begin().await.unwrap();
        tx.record_submission_key(&key, 7, 1_000).await.unwrap();
        assert_eq!(tx.keyed_job(&key).await.unwrap().map(|k| k.job_id), Some(7));
        tx.commit().await.unwrap();
        // Another user's identical key is a key of its own.
        let other = SubmissionKey { owner: "ned".into(), ..key.clone() };
        assert_eq!(store.keyed_job(&other).await.unwrap(), None);
        assert_eq!(store.prune_submission_keys(1_000).await.unwrap(), 0);
        assert_eq!(store.prune_submission_keys(1_001).await.unwrap(), 1);
        assert_eq!(store.keyed_job(&key).await.unwrap(), None);
    }
}
