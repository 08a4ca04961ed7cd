//! Wake-ups per job: the driver and the log uploader signal a job id, and long-polls waiting on that job wake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub struct Signals {
    waiting: Mutex<HashMap<u64, Arc<Notify>>>,
    /// Every job whose state changed, for followers of many jobs (the tracking runs of jobs, sweeps). A follower
    /// that falls behind by more than the channel holds is told it lagged and reads the store again.
    changes: tokio::sync::broadcast::Sender<u64>,
}

/// Job changes a follower may fall behind by before it must read the store again.
const CHANGES_BUFFERED: usize = 16 * 1024;

impl Default for Signals {
    fn default() -> Signals {
        Signals { waiting: Mutex::default(), changes: tokio::sync::broadcast::channel(CHANGES_BUFFERED).0 }
    }
}

impl Signals {
    /// The notifier of one job; create the `notified()` future before checking the condition you wait for.
    pub fn for_job(&self, job: u64) -> Arc<Notify> {
        let mut map = self.waiting.lock().expect("signals lock is never poisoned");
        map.entry(job).or_default().clone()
    }

    /// Job changes from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A job's state changed (the driver says so after each commit); wakes its waiters too.
    pub fn changed(&self, job: u64) {
        // No follower is not an error.
        let _ = self.changes.send(job);
        self.signal(job);
    }

    pub fn signal(&self, job: u64) {
        let map = self.waiting.lock().expect("signals lock is never poisoned");
        if let Some(n) = map.get(&job) {
            n.notify_waiters();
        }
    }

    /// Signals and forgets a job that reached its final state; later waiters see the state in the store.
    /// A job reached its final state (the driver says so after the commit).
    pub fn ended(&self, job: u64) {
        let _ = self.changes.send(job);
        self.finish(job);
    }

    pub fn finish(&self, job: u64) {
        let removed = self.waiting.lock().expect("signals lock is never poisoned").remove(&job);
        if let Some(n) = removed {
            n.notify_waiters();
        }
    }
}
