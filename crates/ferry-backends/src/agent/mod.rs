//! The Ferry agent backend: work waits in a per-node mailbox until the node's agent long-polls for it.
//!
//! The mailbox holds every start and stop that the node has not yet confirmed, each with a sequence number. An
//! agent asks for what came after the last number it saw; an agent that restarted, or that polls a server that
//! restarted (a new epoch), is sent everything outstanding and drops what it already runs. Nothing here is durable:
//! after a server restart the driver refills the mailboxes from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use ferry_api::agent::{Assignment, RunRef, Work};
use tokio::sync::watch;

use crate::{BackendError, BackendFuture, Capabilities, ComputeBackend};

#[derive(Clone, Debug)]
enum Item {
    Start(Box<Assignment>),
    Stop,
}

struct Mailbox {
    seq: u64,
    /// For each run, its outstanding item and the sequence number it was posted with.
    items: BTreeMap<RunRef, (u64, Item)>,
    changed: watch::Sender<u64>,
}

impl Mailbox {
    fn new() -> Mailbox {
        Mailbox { seq: 0, items: BTreeMap::new(), changed: watch::channel(0).0 }
    }

    fn post(&mut self, run: RunRef, item: Item) {
        self.seq += 1;
        self.items.insert(run, (self.seq, item));
        self.changed.send_replace(self.seq);
    }

    fn since(&self, epoch: &str, after_seq: u64) -> Work {
        let mut work = Work { epoch: epoch.to_string(), seq: self.seq, start: Vec::new(), stop: Vec::new() };
        for (run, (seq, item)) in &self.items {
            if *seq <= after_seq {
                continue;
            }
            match item {
                Item::Start(assignment) => work.start.push((**assignment).clone()),
                Item::Stop => work.stop.push(*run),
            }
        }
        work
    }
}

/// A fresh epoch name for one life of the server.
pub fn new_epoch() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// What a pool of Ferry agents can do: the agent runs containers (Podman or Docker), the workers of a gang, and runs
/// on the GPUs chosen for them, and it measures every GPU through NVML.
pub const CAPABILITIES: Capabilities = Capabilities {
    images: true,
    gangs: true,
    gpus_measured: true,
    native_view: false,
    node_pinning: true,
    gpu_pinning: true,
};

pub struct AgentBackend {
    epoch: String,
    mailboxes: Mutex<HashMap<String, Mailbox>>,
}

impl AgentBackend {
    pub fn new(epoch: String) -> AgentBackend {
        AgentBackend { epoch, mailboxes: Mutex::new(HashMap::new()) }
    }

    fn with_mailbox<T>(&self, node: &str, f: impl FnOnce(&mut Mailbox) -> T) -> T {
        let mut boxes = self.mailboxes.lock().expect("mailbox lock is never poisoned: no panics inside");
        f(boxes.entry(node.to_string()).or_insert_with(Mailbox::new))
    }

    /// Waits up to `wait` for work posted after `after_seq` and returns it (possibly none).
    pub async fn poll(&self, node: &str, epoch: &str, after_seq: u64, wait: Duration) -> Work {
        let after_seq = if epoch == self.epoch { after_seq } else { 0 };
        let (work, mut changed) = self.with_mailbox(node, |m| (m.since(&self.epoch, after_seq), m.changed.subscribe()));
        if !work.start.is_empty() || !work.stop.is_empty() {
            return work;
        }
        let _ = tokio::time::timeout(wait, changed.wait_for(|seq| *seq > after_seq)).await;
        self.with_mailbox(node, |m| m.since(&self.epoch, after_seq))
    }

    /// The node confirmed the run is running: its start is delivered.
    pub fn confirm_started(&self, node: &str, run: RunRef) {
        self.with_mailbox(node, |m| {
            if matches!(m.items.get(&run), Some((_, Item::Start(_)))) {
                m.items.remove(&run);
            }
        });
    }

    /// The node reported the run finished: nothing more is owed to it.
    pub fn confirm_finished(&self, node: &str, run: RunRef) {
        self.with_mailbox(node, |m| {
            m.items.remove(&run);
        });
    }

    /// Drops everything outstanding for a node that went away; the driver requeues or loses its jobs.
    pub fn forget_node(&self, node: &str) {
        self.mailboxes.lock().expect("mailbox lock is never poisoned: no panics inside").remove(node);
    }
}

impl ComputeBackend for AgentBackend {
    fn kind(&self) -> &'static str {
        "agent"
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn launch<'a>(&'a self, node: &'a str, assignment: Assignment) -> BackendFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.with_mailbox(node, |m| m.post(assignment.run, Item::Start(Box::new(assignment))));
            Ok(())
        })
    }

    fn stop<'a>(&'a self, node: &'a str, run: RunRef) -> BackendFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.with_mailbox(node, |m| m.post(run, Item::Stop));
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(job_id: u64) -> Assignment {
        Assignment {
            run: RunRef::new(job_id, 0),
            command: vec!["true".into()],
            workdir: "/".into(),
            code: None,
            env: Default::default(),
            secrets: Default::default(),
            owner: String::new(),
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpu_ids: vec![],
            max_runtime_s: None,
            grace_s: 10,
            image: None,
        }
    }

    #[tokio::test]
    async fn delivers_each_item_once_per_sequence_and_everything_after_a_new_epoch() {
        let backend = AgentBackend::new("e1".into());
        backend.launch("n", assignment(1)).await.unwrap();
        let first = backend.poll("n", "", 0, Duration::ZERO).await;
        assert_eq!((first.seq, first.start.len()), (1, 1));
        let again = backend.poll("n", "e1", first.seq, Duration::from_millis(1)).await;
        assert!(again.start.is_empty(), "nothing new after seq 1");
        // An agent that restarted (or a server with a new epoch) gets the unconfirmed start again.
        assert_eq!(backend.poll("n", "old", 1, Duration::ZERO).await.start.len(), 1);
        backend.confirm_started("n", RunRef::new(1, 0));
        backend.stop("n", RunRef::new(1, 0)).await.unwrap();
        let stop = backend.poll("n", "e1", 1, Duration::ZERO).await;
        assert_eq!(stop.stop, vec![RunRef::new(1, 0)]);
    }

    #[tokio::test]
    async fn a_waiting_poll_wakes_when_work_arrives() {
        let backend = std::sync::Arc::new(AgentBackend::new("e".into()));
        let poller = {
            let backend = backend.clone();
            tokio::spawn(async move { backend.poll("n", "e", 0, Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        backend.launch("n", assignment(7)).await.unwrap();
        let work = poller.await.unwrap();
        assert_eq!(work.start[0].run.job_id, 7);
    }
}
