//! What the server forgets on its own, hourly: submission idempotency keys after a day, and shipped code archives
//! nobody used for `[retention] code` (30 days by default) and no unfinished job needs.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::code::CodeStore;

/// How often the sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How long an idempotency key answers retries with its job: far longer than any client retries for.
pub const SUBMISSION_KEY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How long a code archive nobody submits or asks for is kept, unless configured otherwise.
pub const CODE_RETENTION_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);

pub async fn run(store: ferry_store::Store, code: Arc<CodeStore>, code_retention: Duration) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        every.tick().await;
        let before = crate::driver::now_us() - SUBMISSION_KEY_RETENTION.as_micros() as i64;
        match store.prune_submission_keys(before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(keys = n, "forgot submission keys older than a day"),
            Err(e) => tracing::warn!(error = %e, "could not prune submission keys; will retry"),
        }
        let keep: HashSet<String> = match store.unfinished_code_digests().await {
            Ok(digests) => digests.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which code archives unfinished jobs need; keeping them all");
                continue;
            }
        };
        let before = SystemTime::now() - code_retention;
        let code = code.clone();
        match tokio::task::spawn_blocking(move || code.sweep(before, &keep)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(archives = n, "removed code archives nobody used within the retention"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not sweep the code archives; will retry"),
            Err(e) => tracing::warn!(error = %e, "the code sweep failed"),
        }
    }
}
