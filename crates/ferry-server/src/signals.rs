//! Wake-ups per job: the driver and the log uploader signal a job id, and long-polls waiting on that job wake.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Signals {
    waiting: Mutex<HashMap<u64, Arc<Notify>>>,
}

impl Signals {
    /// The notifier of one job; create the `notified()` future before checking the condition you wait for.
    pub fn for_job(&self, job: u64) -> Arc<Notify> {
        let mut map = self.waiting.lock().expect("signals lock is never poisoned");
        map.entry(job).or_default().clone()
    }

    pub fn signal(&self, job: u64) {
        let map = self.waiting.lock().expect("signals lock is never poisoned");
        if let Some(n) = map.get(&job) {
            n.notify_waiters();
        }
    }

    /// Signals and forgets a job that reached its final state; later waiters see the state in the store.
    pub fn finish(&self, job: u64) {
        let removed = self.waiting.lock().expect("signals lock is never poisoned").remove(&job);
        if let Some(n) = removed {
            n.notify_waiters();
        }
    }
}
