//! Taking the state back at start: the configured quotas, and every unfinished job and node from the store, each
//! re-entered in the core (adopted, requeued or lost as `lifecycle::on_restart` decides).

use super::*;

impl Driver {
    /// Gives the core the teams' and projects' quotas: the configuration file's, and the store's for the teams and
    /// projects the file does not set.
    pub(super) async fn apply_quotas(&mut self) -> Result<(), StoreError> {
        let stored = self.store.quotas().await?;
        let (teams, projects) = crate::config::effective_quotas(&self.config, &stored);
        let teams = Event::TeamsConfigured { teams, fair_share_half_life_s: self.config.fair_share_half_life_s };
        self.sched.apply(teams).expect("configuring teams never fails");
        self.sched.apply(Event::ProjectsConfigured(projects)).expect("configuring projects never fails");
        Ok(())
    }

    /// Rebuilds the core from the store: nodes get a fresh timeout to report, running jobs are adopted where they
    /// run, jobs placed but unconfirmed are sent to their node again.
    pub(super) async fn reload(&mut self) -> Result<(), StoreError> {
        self.sched = Scheduler::new();
        let pools = self.config.pools.iter().map(|p| p.info.clone()).collect();
        self.sched.apply(Event::PoolsConfigured(pools)).expect("configuring pools never fails");
        self.apply_quotas().await?;
        self.sched.apply(Event::PlacementConfigured(self.config.gpu_placement)).expect("configuring never fails");
        let order = Event::QueueOrderConfigured(self.config.queue_order.clone());
        self.sched.apply(order).expect("configuring never fails");
        if let Some(depth) = self.config.reserve_depth {
            self.sched.apply(Event::ReserveDepthConfigured(depth)).expect("the configuration checked the depth");
        }
        let timeout_s = self.node_timeout.as_secs().max(1);
        self.sched.apply(Event::NodeTimeoutConfigured(Some(timeout_s))).expect("configuring never fails");
        // Known nodes are heard from as of now: each gets the whole node timeout to report again.
        self.sched.apply(Event::Tick { now_us: self.clock.now_us() }).expect("a first tick decides nothing");
        self.jobs.clear();
        self.queued.clear();
        self.nodes.clear();
        for record in self.store.nodes().await? {
            if let Err(e) = self.sched.apply(Event::NodeUp(node_info(&record))) {
                tracing::error!(node = %record.name, error = %e, "stored node is inconsistent; ignoring it");
                continue;
            }
            let address = record.address.clone().unwrap_or_else(|| record.name.clone());
            let pool = record.pool.clone();
            self.nodes.insert(record.name.clone(), NodeEntry { address, pool });
        }
        // Machines asked of elastic pools that have not joined yet: after the known nodes, as a new node takes the
        // oldest request.
        let mut starting: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for m in self.store.live_machines().await? {
            if matches!(m.state, ferry_store::MachineState::Requested | ferry_store::MachineState::Launched) {
                starting.entry(m.pool).or_default().push(m.requested_at_us);
            }
        }
        for (pool, requested_at_us) in starting {
            if let Err(e) = self.sched.apply(Event::NodesStarting { pool: pool.clone(), requested_at_us }) {
                tracing::warn!(pool = %pool, error = %e, "cloud machines of a pool that is no longer elastic");
            }
        }
        let mut tx = self.store.begin().await?;
        let mut fx = Effects::default();
        for record in self.store.unfinished_jobs().await? {
            let active = Active::from_record(&record);
            let stored = match (&record.state, &record.node) {
                (JobState::Queued, _) => lifecycle::Stored::Queued,
                (JobState::Starting, Some(_)) => lifecycle::Stored::Starting,
                (_, Some(_)) => lifecycle::Stored::Running,
                (_, None) => lifecycle::Stored::Nowhere,
            };
            let worker_failed =
                active.workers.iter().any(|w| w.end.as_ref().is_some_and(|e| e.state != JobState::Succeeded));
            let then = match lifecycle::on_restart(stored, &active.life(), worker_failed) {
                lifecycle::Restart::Requeue => {
                    if let Err(e) = self.sched.apply(Event::JobSubmitted(active.request(record.id))) {
                        let message = lifecycle::lost_at_restart(&e.to_string());
                        tx.lost(record.id, &message, self.clock.now_us(), lost_at_restart(&record)).await?;
                        continue;
                    }
                    let queued = Queued {
                        kind: active.kind,
                        attempt: active.attempt,
                        retries: active.retries,
                        preemptions: active.preemptions,
                    };
                    self.queued.insert(record.id, queued);
                    continue;
                }
                lifecycle::Restart::Lose { reason } => {
                    tx.lost(record.id, &reason, self.clock.now_us(), lost_at_restart(&record)).await?;
                    continue;
                }
                lifecycle::Restart::Adopt { then } => then,
            };
            let node = record.node.clone().expect("an adopted job is on a node");
            let allocation = Allocation {
                node,
                resources: record.spec.resources,
                gpus: record.gpu_ids.clone(),
                gpu_share_milli: record.spec.gpu_share_milli,
                peers: record
                    .workers
                    .iter()
                    .skip(1)
                    .map(|w| Peer { node: w.node.clone(), gpus: w.gpu_ids.clone() })
                    .collect(),
            };
            if let Err(e) = self.sched.apply(Event::JobAdopted { request: active.request(record.id), allocation }) {
                let message = lifecycle::lost_at_restart(&e.to_string());
                tx.lost(record.id, &message, self.clock.now_us(), lost_at_restart(&record)).await?;
                continue;
            }
            match then {
                lifecycle::AfterAdoption::StopRuns => fx.stops.extend(active.live_runs(record.id)),
                lifecycle::AfterAdoption::Resend => match self.secrets.resolve(&mut tx, &record.spec).await? {
                    // The agents drop what they already run.
                    Ok(secrets) => fx.launches.extend(self.assignments(&record, &active, &secrets)),
                    Err(why) => {
                        let (ending, reason) = lifecycle::unstartable(&active.life(), &why);
                        tx.finished(record.id, job_state(ending), None, None, &reason, self.clock.now_us()).await?;
                        self.sched.apply(Event::JobEnded { id: record.id }).expect("ending a job never fails");
                        continue;
                    }
                },
                lifecycle::AfterAdoption::Follow => {}
            }
            self.jobs.insert(record.id, active);
        }
        tx.commit().await?;
        self.dispatch(fx).await;
        Ok(())
    }
}
