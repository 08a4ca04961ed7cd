//! Experiment tracking in MLflow's model: experiments, runs, and each run's params, tags and metrics (every logged
//! value, and the latest value of each metric). Times are milliseconds since the Unix epoch, as MLflow's are.
//!
//! The store keeps what it is given; MLflow's rules (key names, sizes, which states allow logging) are checked by
//! the server before it calls here, except the one rule that needs the stored data: a param, once logged, keeps its
//! value.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use crate::{Store, StoreError};

/// An experiment as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ExperimentRecord {
    pub id: i64,
    pub name: String,
    pub artifact_location: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Its tags, by key.
    pub tags: Vec<(String, String)>,
    /// Who made it, and the team that sees it (`None`: the whole installation).
    pub owner: Option<String>,
    pub team: Option<String>,
}

/// A run as stored, without its params, tags and metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// 32 hex digits.
    pub id: String,
    pub experiment_id: i64,
    pub name: String,
    pub user_id: String,
    /// RUNNING, SCHEDULED, FINISHED, FAILED or KILLED.
    pub status: String,
    pub start_time_ms: Option<i64>,
    pub end_time_ms: Option<i64>,
    pub artifact_uri: String,
    /// `active` or `deleted`.
    pub lifecycle_stage: String,
    /// The identity that made it (a job's owner for a job's run), and the team that sees it; `None` for runs from
    /// before identities, which only installation admins see.
    pub owner: Option<String>,
    pub team: Option<String>,
    /// The project of the job the run was made for (its artifacts count against that project's quota); `None` for
    /// a run no job made or a job without a project.
    pub project: Option<String>,
}

/// Who makes an experiment, and the team that sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ownership<'a> {
    pub owner: Option<&'a str>,
    pub team: Option<&'a str>,
}

/// One logged value of a metric. `value` may be NaN or infinite.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPoint {
    pub key: String,
    pub value: f64,
    pub timestamp_ms: i64,
    pub step: i64,
}

/// A run's params and tags (by key) and the latest value of each of its metrics (by key).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunData {
    pub params: Vec<(String, String)>,
    pub tags: Vec<(String, String)>,
    pub metrics: Vec<MetricPoint>,
}

/// What a log batch could not do: the param `key` already holds `old`, and the batch gave it another value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamConflict {
    pub key: String,
    pub old: String,
    pub new: String,
}

impl Store {
    /// Creates an experiment; `None` when the name is taken. Without an artifact location it gets
    /// `mlflow-artifacts:/<id>`.
    pub async fn create_experiment(
        &self,
        name: &str,
        artifact_location: Option<&str>,
        tags: &[(String, String)],
        ownership: Ownership<'_>,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        // The transaction writes first, so it holds SQLite's write lock from its start and never has to upgrade a
        // read (which fails at once when another writer got in between).
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO tracking_experiments (id, name, artifact_location, lifecycle_stage, created_at_ms, updated_at_ms, \
             owner, team) SELECT COALESCE(MAX(id), 0) + 1, ?, '', 'active', ?, ?, ?, ? FROM tracking_experiments \
             WHERE true ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now_ms)
        .bind(now_ms)
        .bind(ownership.owner)
        .bind(ownership.team)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Ok(None);
        }
        let id = inserted.last_insert_rowid();
        let location = artifact_location.map_or_else(|| format!("mlflow-artifacts:/{id}"), str::to_string);
        sqlx::query("UPDATE tracking_experiments SET artifact_location = ? WHERE id = ?")
            .bind(location)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for (key, value) in tags {
            upsert_experiment_tag(&mut tx, id, key, value).await?;
        }
        tx.commit().await?;
        Ok(Some(id))
    }

    pub async fn experiment(&self, id: i64) -> Result<Option<ExperimentRecord>, StoreError> {
        let row =
            sqlx::query("SELECT * FROM tracking_experiments WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        match row {
            Some(row) => Ok(Some(self.with_experiment_tags(experiment(&row)).await?)),
            None => Ok(None),
        }
    }

    pub async fn experiment_by_name(&self, name: &str) -> Result<Option<ExperimentRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tracking_experiments WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some(self.with_experiment_tags(experiment(&row)).await?)),
            None => Ok(None),
        }
    }

    /// Every experiment, newest first.
    pub async fn experiments(&self) -> Result<Vec<ExperimentRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM tracking_experiments ORDER BY created_at_ms DESC, id DESC")
            .fetch_all(&self.pool)
            .await?;
        let mut all = Vec::with_capacity(rows.len());
        for row in &rows {
            all.push(self.with_experiment_tags(experiment(row)).await?);
        }
        Ok(all)
    }

    async fn with_experiment_tags(&self, mut e: ExperimentRecord) -> Result<ExperimentRecord, StoreError> {
        let rows = sqlx::query("SELECT key, value FROM tracking_experiment_tags WHERE experiment_id = ? ORDER BY key")
            .bind(e.id)
            .fetch_all(&self.pool)
            .await?;
        e.tags = rows.iter().map(|r| (r.get("key"), r.get("value"))).collect();
        Ok(e)
    }

    /// Renames an experiment; `false` when another experiment has the name.
    pub async fn rename_experiment(&self, id: i64, name: &str, now_ms: i64) -> Result<bool, StoreError> {
        let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM tracking_experiments WHERE name = ? AND id != ?")
            .bind(name)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        if taken.is_some() {
            return Ok(false);
        }
        sqlx::query("UPDATE tracking_experiments SET name = ?, updated_at_ms = ? WHERE id = ?")
            .bind(name)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(true)
    }

    /// Marks an experiment `active` or `deleted`.
    pub async fn set_experiment_stage(&self, id: i64, stage: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE tracking_experiments SET lifecycle_stage = ?, updated_at_ms = ? WHERE id = ?")
            .bind(stage)
            .bind(now_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_experiment_tag(&self, id: i64, key: &str, value: &str) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        upsert_experiment_tag(&mut tx, id, key, value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a new run with its first tags.
    pub async fn create_run(&self, run: &RunRecord, tags: &[(String, String)]) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO tracking_runs (id, experiment_id, name, user_id, status, start_time_ms, end_time_ms, \
             artifact_uri, lifecycle_stage, owner, team, project) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&run.id)
        .bind(run.experiment_id)
        .bind(&run.name)
        .bind(&run.user_id)
        .bind(&run.status)
        .bind(run.start_time_ms)
        .bind(run.end_time_ms)
        .bind(&run.artifact_uri)
        .bind(&run.lifecycle_stage)
        .bind(&run.owner)
        .bind(&run.team)
        .bind(&run.project)
        .execute(&mut *tx)
        .await?;
        for (key, value) in tags {
            upsert_tag(&mut tx, &run.id, key, value).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn run(&self, id: &str) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM tracking_runs WHERE id = ?").bind(id).fetch_optional(&self.pool).await?;
        Ok(row.as_ref().map(run))
    }

    /// A run's params, tags and latest metrics.
    pub async fn run_data(&self, id: &str) -> Result<RunData, StoreError> {
        let params = sqlx::query("SELECT key, value FROM tracking_params WHERE run_id = ? ORDER BY key")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let tags = sqlx::query("SELECT key, value FROM tracking_tags WHERE run_id = ? ORDER BY key")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        let metrics = sqlx::query(
            "SELECT key, value, timestamp_ms, step FROM tracking_latest_metrics WHERE run_id = ? ORDER BY key",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(RunData {
            params: params.iter().map(|r| (r.get("key"), r.get("value"))).collect(),
            tags: tags.iter().map(|r| (r.get("key"), r.get("value"))).collect(),
            metrics: metrics.iter().map(metric).collect(),
        })
    }

    /// Every run of an experiment, with its data, in no particular order.
    pub async fn runs_of_experiment(&self, experiment_id: i64) -> Result<Vec<(RunRecord, RunData)>, StoreError> {
        let rows = sqlx::query("SELECT * FROM tracking_runs WHERE experiment_id = ?")
            .bind(experiment_id)
            .fetch_all(&self.pool)
            .await?;
        let mut runs: Vec<(RunRecord, RunData)> = rows.iter().map(|r| (run(r), RunData::default())).collect();
        let index: std::collections::HashMap<String, usize> =
            runs.iter().enumerate().map(|(i, (r, _))| (r.id.clone(), i)).collect();
        let of = |table: &str| {
            format!(
                "SELECT t.* FROM {table} t JOIN tracking_runs r ON r.id = t.run_id WHERE r.experiment_id = ? ORDER BY t.key"
            )
        };
        for row in sqlx::query(&of("tracking_params")).bind(experiment_id).fetch_all(&self.pool).await? {
            if let Some(&i) = index.get(&row.get::<String, _>("run_id")) {
                runs[i].1.params.push((row.get("key"), row.get("value")));
            }
        }
        for row in sqlx::query(&of("tracking_tags")).bind(experiment_id).fetch_all(&self.pool).await? {
            if let Some(&i) = index.get(&row.get::<String, _>("run_id")) {
                runs[i].1.tags.push((row.get("key"), row.get("value")));
            }
        }
        for row in sqlx::query(&of("tracking_latest_metrics")).bind(experiment_id).fetch_all(&self.pool).await? {
            if let Some(&i) = index.get(&row.get::<String, _>("run_id")) {
                runs[i].1.metrics.push(metric(&row));
            }
        }
        Ok(runs)
    }

    /// Changes what is given of a run's status, end time and name.
    pub async fn update_run(
        &self,
        id: &str,
        status: Option<&str>,
        end_time_ms: Option<i64>,
        name: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE tracking_runs SET status = COALESCE(?, status), end_time_ms = COALESCE(?, end_time_ms), \
             name = COALESCE(?, name) WHERE id = ?",
        )
        .bind(status)
        .bind(end_time_ms)
        .bind(name)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(name) = name {
            upsert_tag(&mut tx, id, "mlflow.runName", name).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks a run `active` or `deleted`.
    pub async fn set_run_stage(&self, id: &str, stage: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE tracking_runs SET lifecycle_stage = ? WHERE id = ?")
            .bind(stage)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Logs params, tags and metric values to a run, all or nothing. A param already logged keeps its value: logging
    /// it again with the same value is a no-op, with another value refuses the whole batch.
    pub async fn log_batch(
        &self,
        run_id: &str,
        metrics: &[MetricPoint],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<Result<(), ParamConflict>, StoreError> {
        let mut tx = self.write().await?;
        // A write first takes SQLite's write lock, so the reads of params below never need an upgrade that a
        // concurrent logger could make fail.
        sqlx::query("UPDATE tracking_runs SET id = id WHERE id = ?").bind(run_id).execute(&mut *tx).await?;
        for (key, value) in params {
            let old: Option<String> =
                sqlx::query_scalar("SELECT value FROM tracking_params WHERE run_id = ? AND key = ?")
                    .bind(run_id)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            match old {
                Some(old) if &old != value => {
                    return Ok(Err(ParamConflict { key: key.clone(), old, new: value.clone() }));
                }
                Some(_) => {}
                None => {
                    sqlx::query("INSERT INTO tracking_params (run_id, key, value) VALUES (?, ?, ?)")
                        .bind(run_id)
                        .bind(key)
                        .bind(value)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        for (key, value) in tags {
            upsert_tag(&mut tx, run_id, key, value).await?;
        }
        for m in metrics {
            let value = if m.value.is_nan() { None } else { Some(m.value) };
            sqlx::query("INSERT INTO tracking_metrics (run_id, key, value, timestamp_ms, step) VALUES (?, ?, ?, ?, ?)")
                .bind(run_id)
                .bind(&m.key)
                .bind(value)
                .bind(m.timestamp_ms)
                .bind(m.step)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO tracking_latest_metrics (run_id, key, value, timestamp_ms, step) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value, timestamp_ms = excluded.timestamp_ms, \
                 step = excluded.step WHERE excluded.step > tracking_latest_metrics.step OR \
                 (excluded.step = tracking_latest_metrics.step AND excluded.timestamp_ms >= tracking_latest_metrics.timestamp_ms)",
            )
            .bind(run_id)
            .bind(&m.key)
            .bind(value)
            .bind(m.timestamp_ms)
            .bind(m.step)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Deletes a run's tag; `false` when it had no such tag.
    pub async fn delete_run_tag(&self, run_id: &str, key: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM tracking_tags WHERE run_id = ? AND key = ?")
            .bind(run_id)
            .bind(key)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(done > 0)
    }

    /// Up to `limit` logged values of one metric of a run, in the order they were logged, skipping the first `offset`.
    pub async fn metric_history(
        &self,
        run_id: &str,
        key: &str,
        offset: i64,
        limit: i64,
    ) -> Result<Vec<MetricPoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT key, value, timestamp_ms, step FROM tracking_metrics WHERE run_id = ? AND key = ? \
             ORDER BY id LIMIT ? OFFSET ?",
        )
        .bind(run_id)
        .bind(key)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(metric).collect())
    }
}

async fn upsert_tag(tx: &mut Transaction<'_, Sqlite>, run_id: &str, key: &str, value: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tracking_tags (run_id, key, value) VALUES (?, ?, ?) ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(run_id)
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn upsert_experiment_tag(
    tx: &mut Transaction<'_, Sqlite>,
    id: i64,
    key: &str,
    value: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tracking_experiment_tags (experiment_id, key, value) VALUES (?, ?, ?) \
         ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value",
    )
    .bind(id)
    .bind(key)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn experiment(r: &SqliteRow) -> ExperimentRecord {
    ExperimentRecord {
        id: r.get("id"),
        name: r.get("name"),
        artifact_location: r.get("artifact_location"),
        lifecycle_stage: r.get("lifecycle_stage"),
        created_at_ms: r.get("created_at_ms"),
        updated_at_ms: r.get("updated_at_ms"),
        tags: Vec::new(),
        owner: r.get("owner"),
        team: r.get("team"),
    }
}

fn run(r: &SqliteRow) -> RunRecord {
    RunRecord {
        id: r.get("id"),
        experiment_id: r.get("experiment_id"),
        name: r.get("name"),
        user_id: r.get("user_id"),
        status: r.get("status"),
        start_time_ms: r.get("start_time_ms"),
        end_time_ms: r.get("end_time_ms"),
        artifact_uri: r.get("artifact_uri"),
        lifecycle_stage: r.get("lifecycle_stage"),
        owner: r.get("owner"),
        team: r.get("team"),
        project: r.get("project"),
    }
}

fn metric(r: &SqliteRow) -> MetricPoint {
    let value: Option<f64> = r.get("value");
    MetricPoint {
        key: r.get("key"),
        value: value.unwrap_or(f64::NAN),
        timestamp_ms: r.get("timestamp_ms"),
        step: r.get("step"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_run_keeps_its_history_latest_metrics_and_first_param_values() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        assert_eq!(store.experiment(0).await.unwrap().unwrap().name, "Default");
        let id = store.create_experiment("e", None, &[], Ownership::default(), 5).await.unwrap().unwrap();
        assert_eq!(store.create_experiment("e", None, &[], Ownership::default(), 6).await.unwrap(), None);
        let run = RunRecord {
            id: "ab".repeat(16),
            experiment_id: id,
            name: "r".into(),
            user_id: "u".into(),
            status: "RUNNING".into(),
            start_time_ms: Some(1),
            end_time_ms: None,
            artifact_uri: "x".into(),
            lifecycle_stage: "active".into(),
            owner: None,
            team: None,
            project: None,
        };
        store.create_run(&run, &[]).await.unwrap();
        let point = |value: f64, step| MetricPoint { key: "loss".into(), value, timestamp_ms: 10, step };
        let p = vec![("lr".to_string(), "0.1".to_string())];
        store.log_batch(&run.id, &[point(3.0, 2), point(f64::NAN, 1)], &p, &[]).await.unwrap().unwrap();
        let conflict = vec![("lr".to_string(), "0.2".to_string())];
        assert!(store.log_batch(&run.id, &[point(1.0, 9)], &conflict, &[]).await.unwrap().is_err());
        let data = store.run_data(&run.id).await.unwrap();
        assert_eq!(data.params, p);
        assert_eq!(data.metrics, vec![point(3.0, 2)], "the refused batch logged nothing; step 2 beats step 1");
        let history = store.metric_history(&run.id, "loss", 0, 10).await.unwrap();
        assert_eq!(history.len(), 2);
        assert!(history[1].value.is_nan());
        assert_eq!(store.runs_of_experiment(id).await.unwrap()[0].1, data);
    }
}
