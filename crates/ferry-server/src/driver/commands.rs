//! Requests from the API: submit, cancel, the native view of an engine's run, and the metrics the server exports.

use super::*;

impl Driver {
    /// Records what an engine made of a run, if the run is still the job's current one on that node.
    pub(super) async fn native(
        &mut self,
        node: &str,
        run: RunRef,
        native: ferry_store::Native,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<bool, StoreError> {
        let Some(active) = self.jobs.get_mut(&run.job_id) else { return Ok(false) };
        if active.attempt != run.attempt || active.node_of(run.rank) != Some(node) || active.cancel_requested {
            return Ok(false);
        }
        if run.rank == 0 {
            active.native = Some(format!("{} job {}", native.kind, native.id));
            tx.native(run.job_id, &native, self.clock.now_us(), active.state).await?;
            fx.changed.push(run.job_id);
        }
        Ok(true)
    }

    pub(super) async fn submit(
        &mut self,
        job: NewJob,
        key: Option<SubmissionKey>,
        tx: &mut Tx,
    ) -> Result<Result<Submitted, ApiError>, StoreError> {
        let now = self.clock.now_us();
        // Checked here too, inside the transaction that records the key: two retries racing past the handler's
        // check still make one job.
        if let Some(key) = &key {
            if let Some(keyed) = tx.keyed_job(key).await? {
                return Ok(keyed_answer(key, &keyed));
            }
        }
        let mut request = core_request(0, &job, now);
        if let Err(reason) = self.sched.check_feasible(&request) {
            return Ok(Err(ApiError::new(ErrorCode::Unsatisfiable, format!("{reason}; {}", fix_for(&reason)))));
        }
        let id = tx.insert_job(&job, now).await?;
        let kind = crate::predictions::keys(&job);
        let prediction = self.predictor.predict_keys(kind.0, kind.1);
        tx.set_prediction(id, kind.0, kind.1, prediction.as_ref()).await?;
        request.expected_runtime_s = prediction.map(|p| p.runtime_s);
        if let Some(key) = &key {
            tx.record_submission_key(key, id, now).await?;
        }
        request.id = id;
        self.sched.apply(Event::JobSubmitted(request)).expect("a fresh id is unknown to the core");
        self.queued.insert(id, Queued { kind, attempt: 0, retries: job.retries, preemptions: 0 });
        Ok(Ok(Submitted { id, again: false }))
    }

    pub(super) async fn cancel(
        &mut self,
        id: u64,
        by: &str,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<Result<(), ApiError>, StoreError> {
        if self.queued.contains_key(&id) {
            let CancelStep::EndNow { reason } = lifecycle::on_cancel(false, false, by) else {
                unreachable!("a job that never ran ends when it is cancelled")
            };
            tx.finished(id, JobState::Cancelled, None, None, &reason, self.clock.now_us()).await?;
            self.end_job(id, fx);
            return Ok(Ok(()));
        }
        let Some(active) = self.jobs.get_mut(&id) else {
            return Ok(Err(match tx.job(id).await? {
                Some(record) => ApiError::new(
                    ErrorCode::Conflict,
                    format!("job {id} already {}; there is nothing to cancel", record.state.name()),
                ),
                None => ApiError::not_found(format!("no job {id}; `ferry ps --all` lists jobs")),
            }));
        };
        let placed = active.state != JobState::Queued && active.node.is_some();
        match lifecycle::on_cancel(placed, active.cancel_requested, by) {
            CancelStep::EndNow { reason } => {
                tx.finished(id, JobState::Cancelled, None, None, &reason, self.clock.now_us()).await?;
                self.end_job(id, fx);
            }
            CancelStep::StopRuns => {
                active.cancel_requested = true;
                tx.cancel_requested(id, self.clock.now_us(), active.state, by).await?;
                fx.stops.extend(active.live_runs(id));
                fx.changed.push(id);
            }
            CancelStep::AlreadyStopping => {}
        }
        Ok(Ok(()))
    }

    pub(super) fn metrics(&self) -> DriverMetrics {
        let mut metrics =
            DriverMetrics { cycles: self.cycles, cycle_seconds_sum: self.cycle_seconds_sum, ..Default::default() };
        // The core counts the queue by group: a deep queue costs neither a copy of every job nor a lookup of its
        // pools per job (the time-series tick asks for this every 10 s).
        metrics.queued = (self.sched.queued_groups().into_iter())
            .map(|g| QueuedMetrics {
                team: g.team,
                jobs: g.jobs,
                submitted_at_us: g.oldest_submitted_at_us,
                pools: g.pools.into_iter().collect(),
            })
            .collect();
        for (id, job) in &self.jobs {
            let r = &job.request;
            match job.state {
                JobState::Starting | JobState::Running => {
                    for (node, run) in job.runs(*id) {
                        let gpu_ids = match job.workers.get(run.rank as usize) {
                            Some(worker) => worker.gpu_ids.clone(),
                            None => self.sched.allocation(*id).map(|a| a.gpus.clone()).unwrap_or_default(),
                        };
                        metrics.runs.push(RunMetrics {
                            gpu_ids,
                            job_id: *id,
                            user: r.user.clone(),
                            team: r.team.clone(),
                            project: r.project.clone(),
                            node,
                            resources: r.resources,
                            gpu_share_milli: r.gpu_share_milli,
                        });
                    }
                }
                _ => {}
            }
        }
        metrics.runs.sort_by(|a, b| (a.job_id, &a.node).cmp(&(b.job_id, &b.node)));
        metrics
    }
}
