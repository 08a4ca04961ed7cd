//! What the server forgets on its own, hourly: submission idempotency keys after a day.

use std::time::Duration;

/// How often the sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How long an idempotency key answers retries with its job: far longer than any client retries for.
pub const SUBMISSION_KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);

pub async fn run(store: ferry_store::Store) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        let before = crate::driver::now_us() - SUBMISSION_KEY_RETENTION.as_micros() as i64;
        match store.prune_submission_keys(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "forgot submission keys older than a day"),
            Err(e) => tracing::warn!(error = %e, "could not prune submission keys; will retry"),
        }
    }
}
