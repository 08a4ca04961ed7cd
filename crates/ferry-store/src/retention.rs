//! What the retention sweep forgets of jobs: their stored output (the store records when it was removed, so readers
//! can say so) and, later, finished jobs whole with what hangs off them (timeline, idempotency keys).
//!
//! Never an unfinished job, and never a trial of a sweep that still runs: its controller would take a trial without
//! a job for one never submitted and run it again. A job's MLflow run stays: tracking data is the users' record of
//! their results, deleted only through the tracking API.

use sqlx::Row;

use crate::{Store, StoreError, Tx};

/// A job that has ended, by the time it ended.
const FINISHED: &str = "state NOT IN ('queued', 'starting', 'running') AND finished_at_us IS NOT NULL";

/// `?, ?, ?` for `n` values.
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

impl Store {
    /// Up to `limit` jobs that finished before `before_us` and whose output was not removed yet, earliest first.
    pub async fn jobs_with_output_before(&self, before_us: i64, limit: u32) -> Result<Vec<u64>, StoreError> {
        let sql = format!(
            "SELECT id FROM jobs WHERE finished_at_us < ? AND {FINISHED} AND output_removed_at_us IS NULL \
             ORDER BY finished_at_us LIMIT ?"
        );
        let rows = sqlx::query(&sql).bind(before_us).bind(limit as i64).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(|r| r.get::<i64, _>("id") as u64).collect())
    }
}

impl Tx {
    /// Records that the output of these finished jobs was removed at `at_us`.
    pub async fn output_removed(&mut self, ids: &[u64], at_us: i64) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE jobs SET output_removed_at_us = ? WHERE id IN ({}) AND {FINISHED}",
            placeholders(ids.len())
        );
        let mut query = sqlx::query(&sql).bind(at_us);
        for id in ids {
            query = query.bind(*id as i64);
        }
        query.execute(self.conn()).await?;
        Ok(())
    }

    /// Deletes up to `limit` jobs that finished before `before_us` (earliest first) with their timelines and
    /// idempotency keys, leaving out trials of sweeps that still run; returns their ids.
    pub async fn forget_finished_jobs(&mut self, before_us: i64, limit: u32) -> Result<Vec<u64>, StoreError> {
        let sql = format!(
            "SELECT id FROM jobs WHERE finished_at_us < ? AND {FINISHED} \
             AND (sweep_id IS NULL OR sweep_id NOT IN (SELECT id FROM sweeps WHERE state = 'running')) \
             ORDER BY finished_at_us LIMIT ?"
        );
        let rows = sqlx::query(&sql).bind(before_us).bind(limit as i64).fetch_all(self.conn()).await?;
        let ids: Vec<u64> = rows.iter().map(|r| r.get::<i64, _>("id") as u64).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        for statement in [
            "DELETE FROM job_events WHERE job_id IN",
            "DELETE FROM submission_keys WHERE job_id IN",
            "DELETE FROM secret_fetches WHERE job_id IN",
            "DELETE FROM jobs WHERE id IN",
        ] {
            let sql = format!("{statement} ({})", placeholders(ids.len()));
            let mut query = sqlx::query(&sql);
            for id in &ids {
                query = query.bind(*id as i64);
            }
            query.execute(self.conn()).await?;
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use ferry_api::jobs::{JobState, PriorityClass};
    use ferry_core::Resources;

    use super::*;
    use crate::{NewJob, SubmissionKey, SweepLink};

    fn job(sweep: Option<SweepLink>) -> NewJob {
        NewJob {
            name: None,
            project: None,
            team: None,
            owner: "ana".into(),
            command: vec!["true".into()],
            workdir: "/tmp".into(),
            env: Default::default(),
            secrets: Default::default(),
            resources: Resources::new(1000, 1 << 20, 0),
            priority: PriorityClass::Normal,
            retries: 0,
            max_runtime_s: None,
            gpu_share_milli: 0,
            gpu_types: Vec::new(),
            selector: Default::default(),
            nodes: 1,
            code: None,
            pool: None,
            image: None,
            tracking: None,
            sweep,
            checkpoints: false,
        }
    }

    /// Jobs submitted at 0: one finished at `at` for each entry (`None`: still queued), the first with a key.
    async fn jobs(store: &Store, ends: &[(Option<i64>, Option<SweepLink>)]) -> Vec<u64> {
        let mut tx = store.begin().await.unwrap();
        let mut ids = Vec::new();
        for (end, sweep) in ends {
            let id = tx.insert_job(&job(*sweep), 0).await.unwrap();
            tx.event(id, 0, JobState::Queued, "submitted").await.unwrap();
            if let Some(at) = end {
                tx.finished(id, JobState::Succeeded, Some(0), None, "done", *at).await.unwrap();
            }
            ids.push(id);
        }
        let key = SubmissionKey { owner: "ana".into(), key: "k".into(), request_sha256: "x".into() };
        tx.record_submission_key(&key, ids[0], 0).await.unwrap();
        tx.commit().await.unwrap();
        ids
    }

    #[tokio::test]
    async fn output_is_marked_removed_for_jobs_finished_before_the_cut_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        let ids = jobs(&store, &[(Some(100), None), (Some(200), None), (Some(900), None), (None, None)]).await;
        assert_eq!(store.jobs_with_output_before(500, 1).await.unwrap(), vec![ids[0]], "earliest first, bounded");
        assert_eq!(store.jobs_with_output_before(500, 10).await.unwrap(), vec![ids[0], ids[1]]);
        let mut tx = store.begin().await.unwrap();
        // An unfinished job is never marked, even when asked.
        tx.output_removed(&[ids[0], ids[3]], 1_000).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.jobs_with_output_before(500, 10).await.unwrap(), vec![ids[1]]);
        assert_eq!(store.job(ids[0]).await.unwrap().unwrap().output_removed_at_us, Some(1_000));
        assert_eq!(store.job(ids[3]).await.unwrap().unwrap().output_removed_at_us, None);
    }

    #[tokio::test]
    async fn finished_jobs_are_forgotten_in_batches_with_what_hangs_off_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("ferry.db")).await.unwrap();
        sqlx::query(
            "INSERT INTO sweeps (id, owner, spec, experiment_id, state, created_at_us) VALUES \
             (1, 'ana', '', 0, 'running', 0), (2, 'ana', '', 0, 'finished', 0)",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        let running = Some(SweepLink { sweep_id: 1, trial: 0 });
        let ended = Some(SweepLink { sweep_id: 2, trial: 0 });
        let ids = jobs(
            &store,
            &[(Some(100), None), (Some(200), running), (Some(300), ended), (Some(900), None), (None, None)],
        )
        .await;
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.forget_finished_jobs(500, 1).await.unwrap(), vec![ids[0]]);
        assert_eq!(tx.forget_finished_jobs(500, 10).await.unwrap(), vec![ids[2]], "a running sweep's trial stays");
        assert_eq!(tx.forget_finished_jobs(500, 10).await.unwrap(), Vec::<u64>::new());
        tx.commit().await.unwrap();
        assert_eq!(store.job(ids[0]).await.unwrap(), None);
        assert!(store.job_events(ids[0]).await.unwrap().is_empty());
        let key = SubmissionKey { owner: "ana".into(), key: "k".into(), request_sha256: "x".into() };
        assert_eq!(store.keyed_job(&key).await.unwrap(), None);
        for kept in [ids[1], ids[3], ids[4]] {
            assert!(store.job(kept).await.unwrap().is_some(), "job {kept} is kept");
        }
        // Everything finished, whenever: still never the unfinished one.
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.forget_finished_jobs(i64::MAX, 10).await.unwrap(), vec![ids[3]]);
        tx.commit().await.unwrap();
        assert!(store.job(ids[4]).await.unwrap().is_some());
    }
}
