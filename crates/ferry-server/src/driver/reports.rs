//! Reports from nodes: an agent registering (and the runs it forgot), and each run's start and end, single or a
//! gang's worker, turned into core events and lifecycle steps.

use super::*;

impl Driver {
    pub(super) async fn register(
        &mut self,
        node: RegisterNode,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Registered, StoreError> {
        let now = self.clock.now_us();
        let record = NodeRecord {
            name: node.name.clone(),
            pool: node.pool.clone(),
            cpu_millis: node.cpu_millis,
            memory_bytes: node.memory_bytes,
            gpus: node.gpus.clone(),
            labels: node.labels.clone(),
            agent_version: node.agent_version.clone(),
            limits: node.limits.clone(),
            address: node.address.clone(),
            ready: true,
            usage: None,
            last_seen_us: now,
        };
        tx.upsert_node(&record, now).await?;
        if let Err(e) = self.sched.apply(Event::NodeUp(node_info(&record))) {
            tracing::warn!(node = %node.name, error = %e, "node registration is inconsistent");
        }
        if let Err(e) = self.sched.apply(Event::NodeSeen { node: node.name.clone(), at_us: now }) {
            tracing::warn!(node = %node.name, error = %e, "node registration is inconsistent");
        }
        let address = node.address.clone().unwrap_or_else(|| node.name.clone());
        let pool = node.pool.clone();
        self.nodes.insert(node.name.clone(), NodeEntry { address, pool });
        tracing::info!(node = %node.name, runs = node.runs.len(), "node registered");
        let mut stop = Vec::new();
        for report in &node.runs {
            // An end listed at registration may precede the upload of the run's last output; the agent reports it
            // again once everything is shipped, and only that report may close the job.
            if matches!(report.status, RunStatus::Finished { .. }) {
                continue;
            }
            stop.extend(self.report(&node.name, report, tx, fx).await?);
        }
        // A job the server believes runs here, which the agent no longer knows, is gone: its record vanished with the
        // agent's data. Starting ones are simply sent again (the agent may never have received them).
        let known: Vec<RunRef> = node.runs.iter().map(|r| r.run).collect();
        let vanished: Vec<(u64, u32)> = self
            .jobs
            .iter()
            .filter(|(id, j)| {
                let started = |rank: u32| match j.workers.get(rank as usize) {
                    Some(worker) => worker.started_at_us.is_some() && worker.end.is_none(),
                    None => j.state == JobState::Running,
                };
                j.live_runs(**id).iter().any(|(n, run)| *n == node.name && started(run.rank) && !known.contains(run))
            })
            .map(|(id, j)| (*id, j.attempt))
            .collect();
        for (id, attempt) in vanished {
            let loss = LossRecord { node: Some(node.name.clone()), cause: LossCauseRecord::RunForgotten };
            self.lose(id, attempt, ("its node's agent restarted without any record of it", loss), tx, fx).await?;
        }
        Ok(Registered { heartbeat_ms: HEARTBEAT_MS, stop })
    }

    pub(super) async fn reports(
        &mut self,
        reports: Reports,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Result<ReportsAck, ApiError>, StoreError> {
        if !self.nodes.contains_key(&reports.node) {
            return Ok(Err(ApiError::not_found(format!("node {} is not registered; register first", reports.node))));
        }
        if !matches!(self.sched.node_status(&reports.node), Some(NodeStatus::Ready { .. })) {
            // A node given up on must register again, listing its runs, so that the copies of jobs that were
            // requeued or lost meanwhile are stopped.
            return Ok(Err(ApiError::not_found(format!("node {} was marked not ready; register again", reports.node))));
        }
        let now = self.clock.now_us();
        self.sched.apply(Event::NodeSeen { node: reports.node.clone(), at_us: now }).expect("the node is known");
        tx.node_seen(&reports.node, reports.usage.as_ref(), now).await?;
        let mut stop = Vec::new();
        for report in &reports.runs {
            stop.extend(self.report(&reports.node, report, tx, fx).await?);
        }
        Ok(Ok(ReportsAck { stop }))
    }

    /// Applies one run's state; returns the run if the server does not want it to run.
    pub(super) async fn report(
        &mut self,
        node: &str,
        report: &RunReport,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Option<RunRef>, StoreError> {
        let run = report.run;
        let current = self
            .jobs
            .get(&run.job_id)
            .filter(|j| j.attempt == run.attempt && j.node_of(run.rank) == Some(node))
            .cloned();
        match (&report.status, current) {
            (RunStatus::Running { .. }, None) => {
                fx.ended.push((node.to_string(), run));
                Ok(Some(run))
            }
            (RunStatus::Running { pid, started_at_us }, Some(job)) if !job.workers.is_empty() => {
                fx.started.push((node.to_string(), run));
                self.worker_started(run, *started_at_us, &format!("on node {node} as pid {pid}"), tx, fx).await?;
                Ok(None)
            }
            (RunStatus::Running { pid, started_at_us }, Some(job)) => {
                fx.started.push((node.to_string(), run));
                if job.state == JobState::Starting {
                    let how = match &job.native {
                        Some(native) => format!("running on node {node} as {native}"),
                        None => format!("running on node {node} as pid {pid}"),
                    };
                    tx.running(run.job_id, *started_at_us, &how).await?;
                    let active = self.jobs.get_mut(&run.job_id).expect("current job is active");
                    active.state = JobState::Running;
                    active.started_at_us = Some(*started_at_us);
                    fx.changed.push(run.job_id);
                }
                Ok(None)
            }
            (RunStatus::Finished { .. }, None) => {
                fx.ended.push((node.to_string(), run));
                Ok(None)
            }
            (RunStatus::Finished { end, exit_code, signal, finished_at_us, message, started_at_us, .. }, Some(job)) => {
                fx.ended.push((node.to_string(), run));
                let result =
                    RunResult { end: core_end(*end), exit_code: *exit_code, signal: *signal, message: message.clone() };
                let (ending, text) = lifecycle::run_outcome(&job.life(), &result);
                let state = job_state(ending);
                if !job.workers.is_empty() {
                    if let Some(started) = started_at_us {
                        self.worker_started(run, *started, &format!("on node {node}"), tx, fx).await?;
                    }
                    let ended = WorkerEnd {
                        state,
                        exit_code: *exit_code,
                        signal: *signal,
                        message: text,
                        finished_at_us: *finished_at_us,
                        failed_to_start: *end == RunEnd::FailedToStart,
                    };
                    return self.worker_ended(run, node, ended, *end, tx, fx).await.map(|()| None);
                }
                // A run can end before its start was reported; the timeline still shows that it ran.
                if let (JobState::Starting, Some(started)) = (job.state, started_at_us) {
                    tx.running(run.job_id, *started, &format!("running on node {node}")).await?;
                }
                let started = started_at_us.or(job.started_at_us);
                let end =
                    Ended { state, text, end: *end, exit_code: *exit_code, signal: *signal, at_us: *finished_at_us };
                self.job_ended(run.job_id, &job, started, end, tx, fx).await.map(|()| None)
            }
        }
    }

    /// Records that a gang's worker started; the job is running once every worker is.
    pub(super) async fn worker_started(
        &mut self,
        run: RunRef,
        started_at_us: i64,
        how: &str,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let active = self.jobs.get_mut(&run.job_id).expect("current job is active");
        let Some(worker) = active.workers.get_mut(run.rank as usize) else { return Ok(()) };
        if worker.started_at_us.is_some() {
            return Ok(());
        }
        worker.started_at_us = Some(started_at_us);
        tx.set_workers(run.job_id, &active.workers).await?;
        let starts: Vec<Option<i64>> = active.workers.iter().map(|w| w.started_at_us).collect();
        let running_since = lifecycle::gang_running_since(&starts).filter(|_| active.state == JobState::Starting);
        if let Some(first) = running_since {
            let nodes: Vec<&str> = active.workers.iter().map(|w| w.node.as_str()).collect();
            let message = format!("all {} workers running, on nodes {}", nodes.len(), nodes.join(", "));
            tx.running(run.job_id, first, &message).await?;
            active.state = JobState::Running;
            active.started_at_us = Some(first);
        } else {
            let message = format!("worker {} running {how}", run.rank);
            tx.event(run.job_id, started_at_us, active.state, &message).await?;
        }
        fx.changed.push(run.job_id);
        Ok(())
    }

    /// Records how a gang's worker ended. The first worker to fail stops the others; once every worker has ended,
    /// the job ends as its first failure did (or succeeds when none failed).
    pub(super) async fn worker_ended(
        &mut self,
        run: RunRef,
        node: &str,
        ended: WorkerEnd,
        end: RunEnd,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let id = run.job_id;
        let active = self.jobs.get_mut(&id).expect("current job is active");
        let Some(worker) = active.workers.get_mut(run.rank as usize) else { return Ok(()) };
        if worker.end.is_some() {
            return Ok(());
        }
        let failed = ended.state != JobState::Succeeded;
        let first_failure =
            failed && !active.workers.iter().any(|w| w.end.as_ref().is_some_and(|e| e.state != JobState::Succeeded));
        let message = format!("worker {} on node {node} ended: {}", run.rank, ended.message);
        let at_us = ended.finished_at_us;
        active.workers[run.rank as usize].end = Some(ended);
        tx.set_workers(id, &active.workers).await?;
        tx.event(id, at_us, active.state, &message).await?;
        fx.changed.push(id);
        let job = active.clone();
        let ends: Vec<WorkerEnded> = job
            .workers
            .iter()
            .filter_map(|w| {
                w.end.as_ref().map(|e| WorkerEnded {
                    rank: w.rank,
                    ending: ending_of(e.state),
                    message: e.message.clone(),
                    finished_at_us: e.finished_at_us,
                })
            })
            .collect();
        let stopping = job.preempted.is_some() || job.cancel_requested;
        let (rank, ending, text) = match lifecycle::gang_step(job.workers.len(), &ends, first_failure, stopping) {
            // A gang cannot go on without one of its workers: stop the others, keeping their output.
            GangStep::StopOthers => {
                fx.stops.extend(job.live_runs(id));
                return Ok(());
            }
            GangStep::Wait => return Ok(()),
            GangStep::AllEnded { rank, ending, text } => (rank, ending, text),
        };
        let decided = job.workers[rank as usize].end.as_ref().expect("the deciding worker ended");
        // The end that decides about retrying is the deciding worker's; the others were stopped for it. Its end as
        // reported now, or as recorded when it came earlier (a program that could not start is not retried).
        let end = match (rank == run.rank, decided.failed_to_start) {
            (true, _) => end,
            (false, true) => RunEnd::FailedToStart,
            (false, false) => RunEnd::Exited,
        };
        let started = job.started_at_us.or(job.workers.iter().filter_map(|w| w.started_at_us).min());
        let at_us = job.workers.iter().filter_map(|w| w.end.as_ref().map(|e| e.finished_at_us)).max().unwrap_or(at_us);
        let ended =
            Ended { state: job_state(ending), text, end, exit_code: decided.exit_code, signal: decided.signal, at_us };
        self.job_ended(id, &job, started, ended, tx, fx).await
    }
}
