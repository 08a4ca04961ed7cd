//! Wake-ups per job: the driver and the log uploader signal a job id, and long-polls waiting on that job wake.
//!
//! An entry exists only while someone waits: each waiter holds a `Waiter`, and the last one to go removes the
//! entry, so waits on ids that do not exist, or that time out, leave nothing behind.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Signals {
    waiting: Mutex<HashMap<u64, Arc<Notify>>>,
}

/// One waiter's hold on a job's notifier; create the `notified()` future before checking the condition you wait
/// for.
pub struct Waiter {
    signals: Arc<Signals>,
    job: u64,
    notify: Arc<Notify>,
}

impl Deref for Waiter {
    type Target = Notify;

    fn deref(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.signals.waiting.lock().expect("signals lock is never poisoned");
        // Clones are made and dropped only under the lock, so the count is exact: two means the map's and ours.
        if map.get(&self.job).is_some_and(|n| Arc::ptr_eq(n, &self.notify)) && Arc::strong_count(&self.notify) == 2 {
            map.remove(&self.job);
        }
    }
}

impl Signals {
    /// The notifier of one job, held until the returned waiter is dropped.
    pub fn for_job(self: &Arc<Self>, job: u64) -> Waiter {
        let mut map = self.waiting.lock().expect("signals lock is never poisoned");
        let notify = map.entry(job).or_default().clone();
        Waiter { signals: self.clone(), job, notify }
    }

    pub fn signal(&self, job: u64) {
        let map = self.waiting.lock().expect("signals lock is never poisoned");
        if let Some(n) = map.get(&job) {
            n.notify_waiters();
        }
    }

    /// How many jobs have waiters now.
    #[cfg(test)]
    fn waited_on(&self) -> usize {
        self.waiting.lock().expect("signals lock is never poisoned").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_live_only_while_someone_waits() {
        let signals = Arc::new(Signals::default());
        let first = signals.for_job(7);
        let second = signals.for_job(7);
        assert_eq!(signals.waited_on(), 1);
        {
            let woken = first.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            signals.signal(7);
            woken.await;
        }
        drop(first);
        assert_eq!(signals.waited_on(), 1, "the second waiter still holds it");
        drop(second);
        assert_eq!(signals.waited_on(), 0);
        // Waits on ids nobody signals leave nothing behind.
        for id in 0..1000 {
            drop(signals.for_job(id));
        }
        assert_eq!(signals.waited_on(), 0);
    }
}
