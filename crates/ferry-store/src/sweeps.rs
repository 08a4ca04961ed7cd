//! Hyperparameter sweeps: the sweep file as submitted, and each trial's parameters, MLflow run and outcome. A trial's
//! job is linked from the job's own row (`jobs.sweep_id`, `jobs.sweep_trial`), written in the driver's transaction.

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use serde::{Deserialize, Serialize};

use crate::{from_json, to_json, Store, StoreError};

/// A sweep as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepRecord {
    pub id: u64,
    pub name: Option<String>,
    pub owner: String,
    /// The team its trials run in.
    pub team: Option<String>,
    /// The sweep file (TOML).
    pub spec: String,
    /// The shipped folder of every trial.
    pub code: Option<SweepCode>,
    pub experiment_id: i64,
    /// `running`, `finished`, `cancelled` or `failed`.
    pub state: String,
    pub message: Option<String>,
    pub created_at_us: i64,
    pub finished_at_us: Option<i64>,
}

/// A trial as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrialRow {
    pub sweep_id: u64,
    pub index: u32,
    /// The parameters, as JSON.
    pub params: String,
    pub run_id: String,
    /// `None` while it runs; `completed`, `failed` or `stopped`.
    pub outcome: Option<String>,
    pub stop_reason: Option<String>,
}

/// One logged value of a metric, with where it came from and its place in the log (for reading on after it).
#[derive(Clone, Debug, PartialEq)]
pub struct LoggedValue {
    pub seq: i64,
    pub run_id: String,
    pub step: i64,
    /// NaN when the logged value was NaN.
    pub value: f64,
}

/// The shipped folder every trial of a sweep runs in, in the store's own form (stored as JSON in `sweeps.code`, so
/// that a change of the API's shape cannot change what is stored).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepCode {
    pub sha256: String,
    #[serde(default)]
    pub git_commit: Option<String>,
    #[serde(default)]
    pub git_diff: Option<String>,
}

fn sweep(row: &SqliteRow) -> Result<SweepRecord, StoreError> {
    Ok(SweepRecord {
        id: row.get::<i64, _>("id") as u64,
        name: row.get("name"),
        owner: row.get("owner"),
        team: row.get("team"),
        spec: row.get("spec"),
        code: row.get::<Option<String>, _>("code").map(|json| from_json("code", &json)).transpose()?,
        experiment_id: row.get("experiment_id"),
        state: row.get("state"),
        message: row.get("message"),
        created_at_us: row.get("created_at_us"),
        finished_at_us: row.get("finished_at_us"),
    })
}

fn trial(row: &SqliteRow) -> TrialRow {
    TrialRow {
        sweep_id: row.get::<i64, _>("sweep_id") as u64,
        index: row.get::<i64, _>("idx") as u32,
        params: row.get("params"),
        run_id: row.get("run_id"),
        outcome: row.get("outcome"),
        stop_reason: row.get("stop_reason"),
    }
}

impl Store {
    /// Records a new sweep, `running`; returns its id.
    pub async fn insert_sweep(&self, s: &SweepRecord) -> Result<u64, StoreError> {
        let id = sqlx::query(
            "INSERT INTO sweeps (name, owner, spec, code, experiment_id, state, message, created_at_us, team) \
             VALUES (?, ?, ?, ?, ?, 'running', NULL, ?, ?)",
        )
        .bind(&s.name)
        .bind(&s.owner)
        .bind(&s.spec)
        .bind(s.code.as_ref().map(to_json))
        .bind(s.experiment_id)
        .bind(s.created_at_us)
        .bind(&s.team)
        .execute(&self.pool)
        .await?
        .last_insert_rowid();
        Ok(id as u64)
    }

    pub async fn sweep(&self, id: u64) -> Result<Option<SweepRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM sweeps WHERE id = ?").bind(id as i64).fetch_optional(&self.pool).await?;
        row.as_ref().map(sweep).transpose()
    }

    /// Sweeps newest first; only those in `state` when given, and only those `visible` when given.
    pub async fn sweeps(
        &self,
        state: Option<&str>,
        limit: u32,
        visible: Option<&crate::Visibility>,
    ) -> Result<Vec<SweepRecord>, StoreError> {
        let seen = match visible {
            Some(v) => format!("AND (owner = ? OR team IN ({}))", vec!["?"; v.teams.len()].join(", ")),
            None => String::new(),
        };
        let sql = format!("SELECT * FROM sweeps WHERE (? IS NULL OR state = ?) {seen} ORDER BY id DESC LIMIT ?");
        let mut query = sqlx::query(&sql).bind(state).bind(state);
        if let Some(v) = visible {
            query = query.bind(&v.owner);
            for team in &v.teams {
                query = query.bind(team);
            }
        }
        let rows = query.bind(limit as i64).fetch_all(&self.pool).await?;
        rows.iter().map(sweep).collect()
    }

    /// Ends a sweep, unless it already ended; `false` when it had.
    pub async fn end_sweep(&self, id: u64, state: &str, message: Option<&str>, at_us: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sweeps SET state = ?, message = ?, finished_at_us = ? WHERE id = ? AND state = 'running'",
        )
        .bind(state)
        .bind(message)
        .bind(at_us)
        .bind(id as i64)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(done > 0)
    }

    pub async fn insert_trial(&self, t: &TrialRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sweep_trials (sweep_id, idx, params, run_id) VALUES (?, ?, ?, ?)")
            .bind(t.sweep_id as i64)
            .bind(t.index as i64)
            .bind(&t.params)
            .bind(&t.run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every trial of a sweep, by index.
    pub async fn trials(&self, sweep_id: u64) -> Result<Vec<TrialRow>, StoreError> {
        let rows = sqlx::query("SELECT * FROM sweep_trials WHERE sweep_id = ? ORDER BY idx")
            .bind(sweep_id as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(trial).collect())
    }

    /// Records how a trial ended (once: a later call leaves the first outcome).
    pub async fn end_trial(
        &self,
        sweep_id: u64,
        index: u32,
        outcome: &str,
        stop_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sweep_trials SET outcome = ?, stop_reason = COALESCE(stop_reason, ?) \
             WHERE sweep_id = ? AND idx = ? AND outcome IS NULL",
        )
        .bind(outcome)
        .bind(stop_reason)
        .bind(sweep_id as i64)
        .bind(index as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Notes why a trial is being stopped, before its job is cancelled, so the reason survives a restart.
    pub async fn stopping_trial(&self, sweep_id: u64, index: u32, reason: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sweep_trials SET stop_reason = ? WHERE sweep_id = ? AND idx = ? AND stop_reason IS NULL")
            .bind(reason)
            .bind(sweep_id as i64)
            .bind(index as i64)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Values of metric `key` logged to any of the sweep's trial runs after `after_seq`, in the order logged, at
    /// most `limit` of them.
    pub async fn sweep_metric_values(
        &self,
        sweep_id: u64,
        key: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<LoggedValue>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.id, m.run_id, m.step, m.value FROM tracking_metrics m \
             JOIN sweep_trials t ON t.run_id = m.run_id \
             WHERE t.sweep_id = ? AND m.key = ? AND m.id > ? ORDER BY m.id LIMIT ?",
        )
        .bind(sweep_id as i64)
        .bind(key)
        .bind(after_seq)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| LoggedValue {
                seq: r.get("id"),
                run_id: r.get("run_id"),
                step: r.get("step"),
                value: r.get::<Option<f64>, _>("value").unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// The latest value (at the greatest step) of metric `key` of each trial run of a sweep, by run.
    pub async fn sweep_latest_values(
        &self,
        sweep_id: u64,
        key: &str,
    ) -> Result<std::collections::HashMap<String, (i64, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.run_id, m.step, m.value FROM tracking_latest_metrics m \
             JOIN sweep_trials t ON t.run_id = m.run_id WHERE t.sweep_id = ? AND m.key = ?",
        )
        .bind(sweep_id as i64)
        .bind(key)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get("run_id"), (r.get("step"), r.get::<Option<f64>, _>("value").unwrap_or(f64::NAN))))
            .collect())
    }
}

/// One metric of a run, summed up.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricStats {
    pub key: String,
    pub last: f64,
    pub step: i64,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub count: u64,
}

impl Store {
    /// Every metric of a run with its latest value, extremes and count, by key.
    pub async fn metric_stats(&self, run_id: &str) -> Result<Vec<MetricStats>, StoreError> {
        let rows = sqlx::query(
            "SELECT l.key, l.value AS last, l.step, s.min, s.max, s.n FROM tracking_latest_metrics l \
             JOIN (SELECT key, MIN(value) AS min, MAX(value) AS max, COUNT(*) AS n FROM tracking_metrics \
                   WHERE run_id = ? GROUP BY key) s ON s.key = l.key \
             WHERE l.run_id = ? ORDER BY l.key",
        )
        .bind(run_id)
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| MetricStats {
                key: r.get("key"),
                last: r.get::<Option<f64>, _>("last").unwrap_or(f64::NAN),
                step: r.get("step"),
                min: r.get("min"),
                max: r.get("max"),
                count: r.get::<i64, _>("n") as u64,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep's code is stored in the store's own form, pinned here: a change is a change of every database.
    #[tokio::test]
    async fn a_sweeps_code_is_stored_in_the_stores_own_form() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        let code = SweepCode { sha256: "ab".repeat(32), git_commit: Some("c0ffee".into()), git_diff: None };
        let record = SweepRecord {
            id: 0,
            name: Some("lr".into()),
            owner: "ana".into(),
            team: None,
            spec: "[trial]\n".into(),
            code: Some(code.clone()),
            experiment_id: 0, // MLflow's Default experiment, which every store has
            state: "running".into(),
            message: None,
            created_at_us: 5,
            finished_at_us: None,
        };
        let id = store.insert_sweep(&record).await.unwrap();
        let stored: String = sqlx::query_scalar("SELECT code FROM sweeps WHERE id = ?")
            .bind(id as i64)
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(stored, format!(r#"{{"sha256":"{}","git_commit":"c0ffee","git_diff":null}}"#, "ab".repeat(32)));
        assert_eq!(store.sweep(id).await.unwrap().unwrap().code, Some(code));
    }
}
