//! MLflow 3's logged models: each model's record, tags and params, and which runs produced or used it.
//!
//! As in `tracking.rs`, the store keeps what it is given: ids, names, statuses and MLflow's rules are checked by the
//! server before it calls here.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use crate::{Store, StoreError};

/// A logged model as stored, with its tags and params (by key).
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedModelRecord {
    /// `m-` and 32 hex digits.
    pub id: String,
    pub experiment_id: i64,
    pub name: String,
    pub artifact_uri: String,
    /// PENDING, READY or UPLOAD_FAILED.
    pub status: String,
    pub status_message: Option<String>,
    pub model_type: Option<String>,
    pub source_run_id: Option<String>,
    /// `active` or `deleted`.
    pub lifecycle_stage: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub tags: Vec<(String, String)>,
    pub params: Vec<(String, String)>,
}

/// How a run relates to a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunModelDirection {
    /// The run produced the model (`runs/outputs`).
    Output,
    /// The run used the model (`runs/log-inputs`).
    Input,
}

impl RunModelDirection {
    fn as_str(self) -> &'static str {
        match self {
            RunModelDirection::Output => "output",
            RunModelDirection::Input => "input",
        }
    }
}

/// A model's artifacts count against the team and project of the run that produced it, or its experiment's team.
const MODEL_ACCOUNTS: &str = "SELECT m.id AS id, COALESCE(r.team, e.team) AS team, r.project AS project \
     FROM tracking_logged_models m JOIN tracking_experiments e ON e.id = m.experiment_id \
     LEFT JOIN tracking_runs r ON r.id = m.source_run_id";

/// The team and project whose artifact quota an owner's artifacts count against.
pub type Account = (Option<String>, Option<String>);

impl Store {
    /// Whose artifact quota a logged model's artifacts count against; `None` for an unknown model.
    pub async fn model_account(&self, model_id: &str) -> Result<Option<Account>, StoreError> {
        let sql = format!("{MODEL_ACCOUNTS} WHERE m.id = ?");
        let row = sqlx::query(&sql).bind(model_id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| (r.get("team"), r.get("project"))))
    }

    /// Whose artifact quota the artifacts of every run and logged model count against, by run or model id: what
    /// the server reads once at start to count each project's artifacts.
    pub async fn artifact_accounts(&self) -> Result<Vec<(String, Account)>, StoreError> {
        let sql = format!("SELECT id, team, project FROM tracking_runs UNION ALL {MODEL_ACCOUNTS}");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| (r.get("id"), (r.get("team"), r.get("project")))).collect())
    }

    /// Records a new model with its first tags and params.
    pub async fn create_logged_model(&self, model: &LoggedModelRecord) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO tracking_logged_models (id, experiment_id, name, artifact_uri, status, status_message, \
             model_type, source_run_id, lifecycle_stage, created_at_ms, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&model.id)
        .bind(model.experiment_id)
        .bind(&model.name)
        .bind(&model.artifact_uri)
        .bind(&model.status)
        .bind(&model.status_message)
        .bind(&model.model_type)
        .bind(&model.source_run_id)
        .bind(&model.lifecycle_stage)
        .bind(model.created_at_ms)
        .bind(model.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        for (table, pairs) in
            [("tracking_logged_model_tags", &model.tags), ("tracking_logged_model_params", &model.params)]
        {
            for (key, value) in pairs {
                upsert(&mut tx, table, &model.id, key, value).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// A model with its tags and params, deleted or not.
    pub async fn logged_model(&self, id: &str) -> Result<Option<LoggedModelRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tracking_logged_models WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut model = logged_model(&row);
        self.fill(&mut model).await?;
        Ok(Some(model))
    }

    /// Every model of the given experiments in the given lifecycle stage, with tags and params, in no particular
    /// order.
    pub async fn logged_models(
        &self,
        experiment_ids: &[i64],
        stage: &str,
    ) -> Result<Vec<LoggedModelRecord>, StoreError> {
        let mut models = Vec::new();
        for experiment_id in experiment_ids {
            let rows =
                sqlx::query("SELECT * FROM tracking_logged_models WHERE experiment_id = ? AND lifecycle_stage = ?")
                    .bind(experiment_id)
                    .bind(stage)
                    .fetch_all(&self.pool)
                    .await?;
            for row in &rows {
                let mut model = logged_model(row);
                self.fill(&mut model).await?;
                models.push(model);
            }
        }
        Ok(models)
    }

    async fn fill(&self, model: &mut LoggedModelRecord) -> Result<(), StoreError> {
        let pairs = |table: &str| format!("SELECT key, value FROM {table} WHERE model_id = ? ORDER BY key");
        let tags = sqlx::query(&pairs("tracking_logged_model_tags")).bind(&model.id).fetch_all(&self.pool).await?;
        let params = sqlx::query(&pairs("tracking_logged_model_params")).bind(&model.id).fetch_all(&self.pool).await?;
        model.tags = tags.iter().map(|r| (r.get("key"), r.get("value"))).collect();
        model.params = params.iter().map(|r| (r.get("key"), r.get("value"))).collect();
        Ok(())
    }

    /// Sets a model's status (finalizing it).
    pub async fn set_logged_model_status(&self, id: &str, status: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE tracking_logged_models SET status = ?, updated_at_ms = ? WHERE id = ?")
            .bind(status)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Marks a model `deleted` (or `active` again).
    pub async fn set_logged_model_stage(&self, id: &str, stage: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE tracking_logged_models SET lifecycle_stage = ?, updated_at_ms = ? WHERE id = ?")
            .bind(stage)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Sets tags (`params == false`) or params of a model, replacing values of the same keys.
    pub async fn set_logged_model_pairs(
        &self,
        id: &str,
        params: bool,
        pairs: &[(String, String)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let table = if params { "tracking_logged_model_params" } else { "tracking_logged_model_tags" };
        let mut tx = self.write().await?;
        for (key, value) in pairs {
            upsert(&mut tx, table, id, key, value).await?;
        }
        sqlx::query("UPDATE tracking_logged_models SET updated_at_ms = ? WHERE id = ?")
            .bind(now_ms)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a model's tag; false when it had none of that key.
    pub async fn delete_logged_model_tag(&self, id: &str, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tracking_logged_model_tags WHERE model_id = ? AND key = ?")
            .bind(id)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records that a run produced or used models (`(model id, step)`); recording one again updates its step.
    pub async fn log_run_models(
        &self,
        run_id: &str,
        direction: RunModelDirection,
        models: &[(String, i64)],
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        for (model_id, step) in models {
            sqlx::query(
                "INSERT INTO tracking_run_models (run_id, model_id, direction, step) VALUES (?, ?, ?, ?) \
                 ON CONFLICT (run_id, model_id, direction) DO UPDATE SET step = excluded.step",
            )
            .bind(run_id)
            .bind(model_id)
            .bind(direction.as_str())
            .bind(step)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The models a run produced or used, as `(model id, step)`, by model id.
    pub async fn run_models(
        &self,
        run_id: &str,
        direction: RunModelDirection,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT model_id, step FROM tracking_run_models WHERE run_id = ? AND direction = ? ORDER BY model_id",
        )
        .bind(run_id)
        .bind(direction.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get("model_id"), r.get("step"))).collect())
    }
}

async fn upsert(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    table: &str,
    model_id: &str,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    // `table` is one of two constants of this module, never input.
    let sql = format!(
        "INSERT INTO {table} (model_id, key, value) VALUES (?, ?, ?) \
         ON CONFLICT (model_id, key) DO UPDATE SET value = excluded.value"
    );
    sqlx::query(&sql).bind(model_id).bind(key).bind(value).execute(&mut **tx).await?;
    Ok(())
}

fn logged_model(r: &SqliteRow) -> LoggedModelRecord {
    LoggedModelRecord {
        id: r.get("id"),
        experiment_id: r.get("experiment_id"),
        name: r.get("name"),
        artifact_uri: r.get("artifact_uri"),
        status: r.get("status"),
        status_message: r.get("status_message"),
        model_type: r.get("model_type"),
        source_run_id: r.get("source_run_id"),
        lifecycle_stage: r.get("lifecycle_stage"),
        created_at_ms: r.get("created_at_ms"),
        updated_at_ms: r.get("updated_at_ms"),
        tags: Vec::new(),
        params: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_model_keeps_its_tags_params_status_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        let model = LoggedModelRecord {
            id: format!("m-{}", "ab".repeat(16)),
            experiment_id: 0,
            name: "model".into(),
            artifact_uri: "mlflow-artifacts:/0/models/m/artifacts".into(),
            status: "PENDING".into(),
            status_message: None,
            model_type: None,
            source_run_id: None,
            lifecycle_stage: "active".into(),
            created_at_ms: 1,
            updated_at_ms: 1,
            tags: vec![pair("a", "1")],
            params: vec![pair("lr", "0.1")],
        };
        store.create_logged_model(&model).await.unwrap();
        assert_eq!(store.logged_model(&model.id).await.unwrap(), Some(model.clone()));
        store.set_logged_model_status(&model.id, "READY", 2).await.unwrap();
        store.set_logged_model_pairs(&model.id, false, &[pair("a", "2"), pair("b", "3")], 3).await.unwrap();
        assert!(store.delete_logged_model_tag(&model.id, "b").await.unwrap());
        assert!(!store.delete_logged_model_tag(&model.id, "b").await.unwrap());
        let got = store.logged_model(&model.id).await.unwrap().unwrap();
        assert_eq!((got.status.as_str(), got.updated_at_ms, got.tags), ("READY", 3, vec![pair("a", "2")]));
        assert_eq!(store.logged_models(&[0], "active").await.unwrap().len(), 1);
        store.set_logged_model_stage(&model.id, "deleted", 4).await.unwrap();
        assert!(store.logged_models(&[0], "active").await.unwrap().is_empty());
    }
}
