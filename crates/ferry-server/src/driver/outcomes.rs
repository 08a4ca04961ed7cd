//! Applying what the lifecycle decided of a job whose runs ended or were lost: requeued, retried, or finished.

use super::*;

impl Driver {
    pub(super) fn end_job(&mut self, id: u64, fx: &mut Effects) {
        self.jobs.remove(&id);
        self.queued.remove(&id);
        self.sched.apply(Event::JobEnded { id }).expect("ending a job never fails");
        fx.finished.push(id);
    }

    /// Ends a job whose every run has ended: requeued after a preemption, retried after a failure, or finished.
    pub(super) async fn job_ended(
        &mut self,
        id: u64,
        job: &Active,
        started_at_us: Option<i64>,
        ended: Ended,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let ran_s = started_at_us.map_or(0, |s| (ended.at_us - s).max(0) / 1_000_000);
        let next = lifecycle::after_runs(
            &job.life(),
            ending_of(ended.state),
            &ended.text,
            core_end(ended.end),
            ran_s,
            self.clock.now_us(),
        );
        match next {
            Next::Requeue { attempt, attempts, preemptions, not_before_us, cause, reason } => {
                let mut requeued = Active { preemptions, preempted: None, ..job.clone() };
                // The least-attained order files a job by the GPU time its attempts had.
                let gpus = job.request.resources.gpus.saturating_mul(job.request.workers());
                let attained = lifecycle::attained_gpu_s(ran_s, gpus);
                requeued.request.attained_gpu_s = requeued.request.attained_gpu_s.saturating_add(attained);
                let why = requeue_record(cause, attempt, attempts, not_before_us, None);
                self.requeue(id, &requeued, attempt, not_before_us, (&reason, why), tx, fx).await
            }
            Next::Finish { ending, reason } => {
                tx.finished(id, job_state(ending), ended.exit_code, ended.signal, &reason, ended.at_us).await?;
                if ending == Ending::Succeeded {
                    // Only a success says how long the work takes; a crash or a stop at the limit does not.
                    let (kind_key, name_key) = job.kind;
                    self.predictor.record_keys(kind_key, name_key, ran_s as u64);
                }
                self.end_job(id, fx);
                Ok(())
            }
        }
    }

    /// Puts a job back in the queue as `attempt`, not to start before `not_before_us`, for why (in words and as
    /// data).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn requeue(
        &mut self,
        id: u64,
        job: &Active,
        attempt: u32,
        not_before_us: i64,
        (why, reason): (&str, RequeueRecord),
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let preemptions = job.preemptions;
        let requeue = Requeue { attempt, not_before_us, preemptions, attained_gpu_s: job.request.attained_gpu_s };
        tx.requeued(id, &requeue, self.clock.now_us(), why, reason).await?;
        self.sched.apply(Event::JobEnded { id }).expect("ending a job never fails");
        let request = JobRequest { not_before_us, ..job.request(id) };
        self.sched.apply(Event::JobSubmitted(request)).expect("an ended job may be queued again");
        self.jobs.remove(&id);
        self.queued.insert(id, Queued { kind: job.kind, attempt, retries: job.retries, preemptions: job.preemptions });
        fx.changed.push(id);
        Ok(())
    }

    /// A run is gone without an exit status (`why`, in words and as data): requeue it if retries allow, else record
    /// it lost.
    pub(super) async fn lose(
        &mut self,
        id: u64,
        attempt: u32,
        why: (&str, LossRecord),
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        self.lose_as(id, attempt, why, false, tx, fx).await
    }

    /// A run gone with a machine its cloud took back: requeued without using a retry (see `lifecycle::after_reclaim`).
    pub(super) async fn reclaimed(
        &mut self,
        id: u64,
        attempt: u32,
        why: (&str, LossRecord),
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        self.lose_as(id, attempt, why, true, tx, fx).await
    }

    async fn lose_as(
        &mut self,
        id: u64,
        attempt: u32,
        (why, loss): (&str, LossRecord),
        reclaimed: bool,
        tx: &mut Tx,
        fx: &mut Effects,
    ) -> Result<(), StoreError> {
        let Some(job) = self.jobs.get(&id).filter(|j| j.attempt == attempt).cloned() else { return Ok(()) };
        fx.ended.extend(job.runs(id));
        if !job.workers.is_empty() {
            // The gang's other workers still run on nodes that are fine: stop them.
            fx.stops.extend(job.live_runs(id));
        }
        let next = if reclaimed {
            lifecycle::after_reclaim(&job.life(), why, self.clock.now_us())
        } else {
            lifecycle::after_loss(&job.life(), why, self.clock.now_us())
        };
        match next {
            Next::Requeue { attempt, attempts, preemptions, not_before_us, cause, reason } => {
                let why = requeue_record(cause, attempt, attempts, not_before_us, Some(loss));
                let requeued = Active { preemptions, ..job };
                self.requeue(id, &requeued, attempt, not_before_us, (&reason, why), tx, fx).await?;
            }
            Next::Finish { ending: Ending::Lost, reason } => {
                tx.lost(id, &reason, self.clock.now_us(), loss).await?;
                self.end_job(id, fx);
            }
            Next::Finish { ending, reason } => {
                tx.finished(id, job_state(ending), None, None, &reason, self.clock.now_us()).await?;
                self.end_job(id, fx);
            }
        }
        Ok(())
    }
}
