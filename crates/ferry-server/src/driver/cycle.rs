//! The core's timed and scheduling decisions applied: ticks (nodes gone silent, their jobs lost), starts (with each
//! run's assignment, a gang's rendezvous environment included) and preemptions.

use super::*;

impl Driver {
    /// Tells the core the time and applies what the node lifecycle decides of it: nodes that stopped reporting go
    /// not ready and their jobs are lost or requeued; nodes asked of elastic pools that never joined are given up.
    pub(super) async fn tick(&mut self, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        let decisions = self.sched.apply(Event::Tick { now_us: self.clock.now_us() }).expect("a tick never fails");
        let mut silent = HashMap::new();
        for decision in decisions {
            match decision {
                Decision::NodeNotReady { node, reason } => {
                    tracing::warn!(node = %node, silent_s = reason.silent_s, "node stopped reporting; marking it not ready");
                    tx.set_node_ready(&node, false).await?;
                    self.agents.forget_node(&node);
                    silent.insert(node, reason);
                }
                Decision::Lost { job, node } => {
                    // The core lost the job's current run; a job the driver no longer holds has nothing to lose.
                    let Some(attempt) = self.jobs.get(&job).map(|j| j.attempt) else { continue };
                    let (why, cause) = match silent.get(&node) {
                        Some(reason) => (
                            format!("node {node} stopped reporting for {}s", reason.timeout_s),
                            LossCauseRecord::NodeSilent { timeout_s: reason.timeout_s },
                        ),
                        None => (format!("node {node} went down"), LossCauseRecord::NodeDown),
                    };
                    let loss = LossRecord { node: Some(node), cause };
                    // The core already released the job; `lose` re-enters it in the queue if it is retried.
                    self.lose(job, attempt, (&why, loss), tx, fx).await?;
                }
                Decision::Abandon { pool, nodes, reason } => {
                    tracing::warn!(pool = %pool, nodes, %reason, "giving up on cloud machines that did not join");
                    self.cloud_event(tx, &pool, "abandon", None, nodes, reason.to_string()).await?;
                    self.order(crate::fleet::Order::Abandon { pool, nodes, why: reason.to_string() });
                }
                // A tick starts, stops and asks for nothing.
                Decision::Start { .. }
                | Decision::Preempt { .. }
                | Decision::Provision { .. }
                | Decision::Release { .. } => {
                    tracing::error!(?decision, "a tick made a scheduling decision; ignored")
                }
            }
        }
        Ok(())
    }

    /// Runs one scheduling cycle and records each start and preemption.
    pub(super) async fn place(&mut self, tx: &mut Tx, fx: &mut Effects) -> Result<(), StoreError> {
        for decision in self.sched.schedule() {
            match decision {
                Decision::Start { job, allocation, reason } => self.start_job(job, allocation, reason, tx, fx).await?,
                Decision::Preempt { job, by, reason } => self.preempt(job, by, reason, tx, fx).await?,
                // A cycle loses no job and times nothing out: those come of events and ticks.
                Decision::Lost { .. } | Decision::NodeNotReady { .. } | Decision::Abandon { .. } => {}
                Decision::Provision { pool, nodes, reason } => {
                    tracing::info!(pool = %pool, nodes, %reason, "bursting: asking the cloud for machines");
                    self.cloud_event(tx, &pool, "provision", None, nodes, reason.to_string()).await?;
                    self.order(crate::fleet::Order::Provision { pool, nodes });
                }
                Decision::Release { node, reason } => {
                    tracing::info!(node = %node, %reason, "giving an idle cloud machine back");
                    let pool = self.nodes.get(&node).map(|n| n.pool.clone()).unwrap_or_default();
                    self.cloud_event(tx, &pool, "release", Some(&node), 1, reason.to_string()).await?;
                    self.order(crate::fleet::Order::Release { node, why: reason.to_string() });
                }
            }
        }
        Ok(())
    }

    /// Records what was asked of an elastic pool, or came of it, for its history.
    async fn cloud_event(
        &self,
        tx: &mut Tx,
        pool: &str,
        kind: &str,
        node: Option<&str>,
        nodes: u32,
        detail: String,
    ) -> Result<(), StoreError> {
        let event = ferry_store::CloudEvent {
            at_us: self.clock.now_us(),
            pool: pool.to_string(),
            kind: kind.to_string(),
            node: node.map(str::to_string),
            nodes,
            detail,
        };
        tx.cloud_event(&event).await
    }

    /// Hands an order to the fleet, which carries it out without holding the driver up.
    fn order(&self, order: crate::fleet::Order) {
        match &self.fleet {
            Some(fleet) => fleet.order(order),
            None => tracing::error!(?order, "the core asked for cloud machines, but no pool has a cloud; ignored"),
        }
    }

    /// What the fleet found: machines that could not be started (the core skips their pool a while) and machines
    /// gone (their node is removed; its jobs, after a spot reclaim, are lost and requeued).
    pub(super) async fn cloud_news(
        &mut self,
        news: crate::fleet::News,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        match news {
            crate::fleet::News::ProvisionFailed { pool, nodes, failure, detail } => {
                self.cloud_event(tx, &pool, "failed", None, nodes, format!("{failure}: {detail}")).await?;
                let event = Event::ProvisionFailed { pool: pool.clone(), nodes, failure, detail };
                if let Err(e) = self.sched.apply(event) {
                    tracing::error!(pool = %pool, error = %e, "the core refused a provisioning failure");
                }
            }
            crate::fleet::News::Gone { node, pool, why } => {
                self.cloud_event(tx, &pool, "gone", Some(&node), 1, why.clone()).await?;
                if self.sched.node_status(&node).is_none() {
                    // It never joined, or is already gone.
                    return Ok(());
                }
                let lost = self.sched.apply(Event::NodeDown { node: node.clone() }).unwrap_or_default();
                for decision in lost {
                    let Decision::Lost { job, node } = decision else { continue };
                    let Some(attempt) = self.jobs.get(&job).map(|j| j.attempt) else { continue };
                    let text = format!("node {node} is gone: {why}");
                    let loss = LossRecord { node: Some(node), cause: LossCauseRecord::NodeDown };
                    self.reclaimed(job, attempt, (&text, loss), tx, fx).await?;
                }
                if let Err(e) = self.sched.apply(Event::NodeRemoved { node: node.clone() }) {
                    tracing::error!(node = %node, error = %e, "the core kept a node whose machine is gone");
                }
                tx.remove_node(&node).await?;
                self.nodes.remove(&node);
                self.agents.forget_node(&node);
                tracing::info!(node = %node, why = %why, "cloud node removed");
            }
        }
        Ok(())
    }

    pub(super) async fn start_job(
        &mut self,
        job: u64,
        allocation: Allocation,
        reason: ferry_core::Placement,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(mut record) = tx.job(job).await? else {
            tracing::error!(job, "the core started a job the store does not have");
            return Ok(());
        };
        let secrets = match self.secrets.resolve(tx, &record.spec).await? {
            Ok(secrets) => secrets,
            Err(why) => {
                // Nothing can start it as asked: it ends at once rather than waiting for a secret that may never
                // come back.
                let queued = &self.queued[&job];
                let life = JobLife {
                    attempt: queued.attempt,
                    retries: queued.retries,
                    preemptions: queued.preemptions,
                    cancel_requested: record.cancel_requested,
                    preempted: None,
                };
                let (ending, reason) = lifecycle::unstartable(&life, &why);
                tx.finished(job, job_state(ending), None, None, &reason, self.clock.now_us()).await?;
                self.end_job(job, fx);
                return Ok(());
            }
        };
        let gpus = |g: &[u32]| g.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",");
        let cpus = format_cpus(allocation.resources.cpu_millis);
        let why = if allocation.peers.is_empty() {
            format!(
                "placed on node {} with GPUs [{}] and {cpus} CPUs: {reason}",
                allocation.node,
                gpus(&allocation.gpus)
            )
        } else {
            let workers: Vec<String> = allocation
                .workers()
                .enumerate()
                .map(|(rank, (node, g))| format!("rank {rank} on node {node} with GPUs [{}]", gpus(g)))
                .collect();
            format!("placed as a gang: {}; {cpus} CPUs each: {reason}", workers.join(", "))
        };
        let placement = crate::convert::placement(&reason, &allocation);
        tx.placed(job, &allocation.node, &allocation.gpus, self.clock.now_us(), &why, placement).await?;
        let queued = self.queued.remove(&job).expect("a started job was queued");
        let request = self.sched.request(job).expect("the core holds the job it started");
        let active = self.jobs.entry(job).insert_entry(Active::placed(queued, request)).into_mut();
        active.node = Some(allocation.node.clone());
        if !allocation.peers.is_empty() {
            active.workers = allocation
                .workers()
                .enumerate()
                .map(|(rank, (node, gpu_ids))| JobWorker {
                    rank: rank as u32,
                    node: node.to_string(),
                    gpu_ids: gpu_ids.to_vec(),
                    started_at_us: None,
                    end: None,
                })
                .collect();
            tx.set_workers(job, &active.workers).await?;
        }
        let active = active.clone();
        record.attempt = active.attempt;
        record.gpu_ids = allocation.gpus;
        fx.launches.extend(self.assignments(&record, &active, &secrets));
        fx.changed.push(job);
        Ok(())
    }

    /// What each node of a placed job must start: one assignment, or one per worker of a gang with the variables
    /// that let the workers find each other (`torchrun` and TensorFlow read them without further flags).
    pub(super) fn assignments(
        &self,
        record: &JobRecord,
        active: &Active,
        secrets: &SecretEnv,
    ) -> Vec<(String, Assignment)> {
        if active.workers.is_empty() {
            let assignment = |node: &String| (node.clone(), self.assignment(record, &record.gpu_ids, secrets));
            return active.node.iter().map(assignment).collect();
        }
        let addresses: Vec<String> = active
            .workers
            .iter()
            .map(|w| self.nodes.get(&w.node).map_or_else(|| w.node.clone(), |l| l.address.clone()))
            .collect();
        let port = (GANG_PORT_BASE + record.id % GANG_PORT_SPAN).to_string();
        active
            .workers
            .iter()
            .map(|w| {
                let mut a = self.assignment(record, &w.gpu_ids, secrets);
                a.run.rank = w.rank;
                for (key, value) in gang_env(w.rank, &addresses, &port) {
                    // What the user set explicitly wins.
                    a.env.entry(key).or_insert(value);
                }
                (w.node.clone(), a)
            })
            .collect()
    }

    /// One run of a job on a node, with the job's MLflow variables and its secrets.
    pub(super) fn assignment(&self, record: &JobRecord, gpus: &[u32], secrets: &SecretEnv) -> Assignment {
        let mut a = assignment(record, gpus);
        a.secrets = secrets.clone();
        self.tracking.add(record, &mut a.env, &mut a.secrets);
        a
    }

    /// Stops a running job, with its grace period, so that `by` can start; its end requeues it.
    pub(super) async fn preempt(
        &mut self,
        job: u64,
        by: u64,
        reason: ferry_core::PreemptReason,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(active) = self.jobs.get_mut(&job) else { return Ok(()) };
        if active.node.is_none() {
            return Ok(());
        }
        let why = format!("preempted for job {by}: {reason}");
        let message = format!("{why}; stopping it with a grace of {STOP_GRACE_S}s");
        let preemption = crate::convert::preemption(by, &reason, STOP_GRACE_S);
        tx.preempting(job, self.clock.now_us(), active.state, &message, preemption).await?;
        active.preempted = Some(why);
        fx.stops.extend(active.live_runs(job));
        fx.changed.push(job);
        Ok(())
    }
}

/// The first port a gang's rank 0 listens on for its peers; a job's port is this plus its id modulo the span, unless
/// the job sets `MASTER_PORT` itself.
const GANG_PORT_BASE: u64 = 29_500;

const GANG_PORT_SPAN: u64 = 1000;

/// The variables one worker of a gang gets: Ferry's own, the ones PyTorch's `torchrun` reads (`PET_*`, and
/// `MASTER_ADDR`/`MASTER_PORT` for `torch.distributed`), and TensorFlow's `TF_CONFIG`.
fn gang_env(rank: u32, addresses: &[String], port: &str) -> Vec<(String, String)> {
    let n = addresses.len().to_string();
    let master = addresses.first().cloned().unwrap_or_default();
    let workers: Vec<String> = addresses.iter().map(|a| format!("{a}:{port}")).collect();
    let tf_config = serde_json::json!({
        "cluster": { "worker": workers },
        "task": { "type": "worker", "index": rank },
    });
    [
        ("FERRY_NODE_RANK", rank.to_string()),
        ("FERRY_NUM_NODES", n.clone()),
        ("FERRY_NODES", addresses.join(",")),
        ("MASTER_ADDR", master.clone()),
        ("MASTER_PORT", port.to_string()),
        ("NODE_RANK", rank.to_string()),
        ("NNODES", n.clone()),
        ("PET_NNODES", n),
        ("PET_NODE_RANK", rank.to_string()),
        ("PET_MASTER_ADDR", master),
        ("PET_MASTER_PORT", port.to_string()),
        ("TF_CONFIG", tf_config.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn assignment(record: &JobRecord, gpus: &[u32]) -> Assignment {
    Assignment {
        run: RunRef::new(record.id, record.attempt),
        command: record.spec.command.clone(),
        workdir: record.spec.workdir.clone(),
        code: record.spec.code.as_ref().map(|c| c.sha256.clone()),
        env: record.spec.env.clone(),
        secrets: SecretEnv::default(),
        owner: record.spec.owner.clone(),
        cpu_millis: record.spec.resources.cpu_millis,
        memory_bytes: record.spec.resources.memory_bytes,
        gpu_ids: gpus.to_vec(),
        max_runtime_s: record.spec.max_runtime_s,
        grace_s: STOP_GRACE_S,
        image: record.spec.image.clone(),
    }
}
