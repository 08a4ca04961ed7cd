//! Runtime predictions in the server: what kind of job a submission is, and the predictor the driver keeps, fed at
//! start from the store's recent successful jobs and then by each job that succeeds (`ferry_core::predict`).

use ferry_core::predict::{JobKind, Predictor};
use ferry_store::{NewJob, Store, StoreError};

/// How far back the server learns from at start.
pub const HISTORY_S: i64 = 90 * 86_400;
/// The most finished jobs read at start (the most recent); each kind keeps only its last few anyway.
pub const HISTORY_JOBS_MAX: u32 = 200_000;

/// The prediction keys of a job: its kind (user, name, command, project and resources) and its user and name.
pub fn keys(job: &NewJob) -> (u64, u64) {
    // The command's words joined by a byte no argument holds, so that ["a b"] and ["a", "b"] differ.
    let command = job.command.join("\u{1f}");
    let kind = JobKind {
        user: &job.owner,
        name: job.name.as_deref().unwrap_or(""),
        command: &command,
        project: job.project.as_deref().unwrap_or(""),
        resources: job.resources,
        gpu_share_milli: job.gpu_share_milli,
        nodes: job.nodes,
    };
    (kind.key(), kind.name_key())
}

/// A predictor that knows the runtimes of the jobs that succeeded in the last `HISTORY_S`.
pub async fn load(store: &Store, now_us: i64) -> Result<Predictor, StoreError> {
    let mut predictor = Predictor::new();
    let since = now_us.saturating_sub(HISTORY_S.saturating_mul(1_000_000));
    for (kind, name, ran_s) in store.succeeded_runtimes(since, HISTORY_JOBS_MAX).await? {
        predictor.record_keys(kind, name, ran_s);
    }
    Ok(predictor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_words_and_the_owner_make_the_kind() {
        let job = |owner: &str, command: &[&str]| NewJob {
            owner: owner.into(),
            name: Some("train".into()),
            command: command.iter().map(|w| w.to_string()).collect(),
            ..NewJob::default()
        };
        let a = keys(&job("ana", &["python", "train.py"]));
        assert_eq!(a, keys(&job("ana", &["python", "train.py"])));
        assert_ne!(a.0, keys(&job("ana", &["python train.py"])).0);
        assert_ne!(a.0, keys(&job("ned", &["python", "train.py"])).0);
        // The name key ignores the command.
        assert_eq!(a.1, keys(&job("ana", &["python", "other.py"])).1);
    }
}
