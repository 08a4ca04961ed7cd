//! What becomes of a job once it was placed: how a run's end reads in the job's terms, whether the job is retried
//! (after a backoff), requeued after a preemption, lost with its node, or finished; and how the ends of a gang's
//! workers make the job's. Pure decisions over plain facts: the server's driver hands them what its nodes reported
//! and applies what they return to the store and the scheduler; the simulator can run the same rules.

use std::fmt;

/// How a run ended, as the node that ran it saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEnd {
    Exited,
    /// Stopped because it reached its maximum runtime.
    TimedOut,
    /// Stopped because the server asked (a cancel or a preemption).
    Stopped,
    /// The program could not be started at all.
    FailedToStart,
}

/// How a job (or one run of it) ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
}

/// One run's end as its node reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    pub end: RunEnd,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// What the node said about it (why it could not start, the last words of a failure).
    pub message: Option<String>,
}

/// What the lifecycle needs to know of a job.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobLife {
    /// Which attempt this is: 0 for the first.
    pub attempt: u32,
    /// How many times a failure may be retried.
    pub retries: u32,
    /// Attempts that preemption used; they do not count against `retries`.
    pub preemptions: u32,
    pub cancel_requested: bool,
    /// Set, with the reason, while the job is stopped to make room for another.
    pub preempted: Option<String>,
}

impl JobLife {
    /// Failures so far that count against the retries.
    fn failures(&self) -> u32 {
        self.attempt - self.preemptions.min(self.attempt)
    }

    /// Whether a failure may be retried: preemptions do not use up retries.
    pub fn may_retry(&self) -> bool {
        self.failures() < self.retries
    }
}

/// What happens next to a job whose runs have all ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Back in the queue as attempt `attempt` of at most `attempts`, not to start before `not_before_us`, because of
    /// `cause` (which `reason` says in words).
    Requeue { attempt: u32, attempts: u32, preemptions: u32, not_before_us: i64, cause: RequeueCause, reason: String },
    /// Over, for the reason given.
    Finish { ending: Ending, reason: String },
}

/// Why a job went back to the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequeueCause {
    /// Its run was preempted; the attempt had run `ran_s` (lost but for what its checkpoints kept). Preemptions do
    /// not use up retries.
    Preempted { ran_s: u64 },
    /// Its run failed and a retry is left; the retry waits `delay_s` (see `retry_delay_s`).
    Failed { delay_s: u64 },
    /// Its node (or a gang worker's) was lost with the run; retried at once, using up a retry.
    NodeLost,
}

/// The first retry waits this long; each later one twice as long as the one before, up to [`RETRY_DELAY_MAX_S`]:
/// a job that fails at once does not spin through its retries, nor hold a node that something else could use.
pub const RETRY_DELAY_FIRST_S: u64 = 2;
pub const RETRY_DELAY_MAX_S: u64 = 300;

/// How long retry number `n` (1 for the first) waits before it may start.
pub fn retry_delay_s(n: u32) -> u64 {
    let doublings = n.saturating_sub(1).min(16);
    (RETRY_DELAY_FIRST_S << doublings).min(RETRY_DELAY_MAX_S)
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ending::Succeeded => "succeeded",
            Ending::Failed => "failed",
            Ending::TimedOut => "timed out",
            Ending::Cancelled => "cancelled",
            Ending::Lost => "lost",
        })
    }
}

/// How one run ended, in the job's terms, and the sentence that says why. A cancel the user asked for wins over
/// however the run ended.
pub fn run_outcome(job: &JobLife, run: &RunResult) -> (Ending, String) {
    let status = match (run.exit_code, run.signal) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown exit status".to_string(),
    };
    if job.cancel_requested {
        return (Ending::Cancelled, format!("cancelled by request ({status})"));
    }
    match run.end {
        RunEnd::TimedOut => (Ending::TimedOut, format!("stopped after reaching its maximum runtime ({status})")),
        RunEnd::FailedToStart => {
            (Ending::Failed, run.message.clone().unwrap_or_else(|| "the command could not be started".to_string()))
        }
        RunEnd::Stopped => (Ending::Cancelled, format!("stopped by the server ({status})")),
        RunEnd::Exited if run.exit_code == Some(0) => (Ending::Succeeded, "exited with code 0".to_string()),
        RunEnd::Exited => (
            Ending::Failed,
            match &run.message {
                Some(m) => format!("{status}: {m}"),
                None => status,
            },
        ),
    }
}

/// How a job ends whose run could not even be prepared (`why`: a secret it reads is gone): as a program that could
/// not start, failed and never retried (another try would fail the same way), or cancelled where that was asked.
pub fn unstartable(job: &JobLife, why: &str) -> (Ending, String) {
    let run = RunResult { end: RunEnd::FailedToStart, exit_code: None, signal: None, message: Some(why.to_string()) };
    run_outcome(job, &run)
}

/// What follows once every run of the job's attempt has ended as `ending` (said by `text`; `end` is how the run that
/// decided it ended; `ran_s` how long the attempt ran): a preempted job is requeued without using a retry, unless
/// it succeeded before its grace period was over (its work is done); a failure is retried after a backoff while
/// retries are left, unless the program could not start at all (another try would fail the same way); anything else
/// is final.
pub fn after_runs(job: &JobLife, ending: Ending, text: &str, end: RunEnd, ran_s: i64, now_us: i64) -> Next {
    if let (Some(why), false, false) = (&job.preempted, job.cancel_requested, ending == Ending::Succeeded) {
        return Next::Requeue {
            attempt: job.attempt + 1,
            // A preemption adds an attempt that uses no retry.
            attempts: job.retries + job.preemptions + 2,
            preemptions: job.preemptions + 1,
            not_before_us: now_us,
            cause: RequeueCause::Preempted { ran_s: ran_s.max(0) as u64 },
            reason: format!("{why}; {}s of work lost; requeued", ran_s.max(0)),
        };
    }
    if ending == Ending::Failed && end != RunEnd::FailedToStart && job.may_retry() {
        let delay_s = retry_delay_s(job.failures() + 1);
        return Next::Requeue {
            attempt: job.attempt + 1,
            attempts: job.retries + job.preemptions + 1,
            preemptions: job.preemptions,
            not_before_us: now_us + delay_s as i64 * 1_000_000,
            cause: RequeueCause::Failed { delay_s },
            reason: format!(
                "{text}; retrying in {delay_s}s (attempt {} of {})",
                job.attempt + 2,
                job.retries + job.preemptions + 1
            ),
        };
    }
    Next::Finish { ending, reason: text.to_string() }
}

/// What follows when the job's node (or a gang worker's) is gone with the run and no exit status: cancelled if that
/// was asked, else requeued at once while retries are left (the job did not fail; its node did), else lost.
pub fn after_loss(job: &JobLife, why: &str, now_us: i64) -> Next {
    if job.cancel_requested {
        return Next::Finish { ending: Ending::Cancelled, reason: format!("cancelled; {why}") };
    }
    if job.may_retry() {
        return Next::Requeue {
            attempt: job.attempt + 1,
            attempts: job.retries + job.preemptions + 1,
            preemptions: job.preemptions,
            not_before_us: now_us,
            cause: RequeueCause::NodeLost,
            reason: format!("{why}; retrying (attempt {} of {})", job.attempt + 2, job.retries + job.preemptions + 1),
        };
    }
    Next::Finish { ending: Ending::Lost, reason: why.to_string() }
}

/// What follows when the cloud took back the machine the job ran on (a spot reclaim): cancelled if that was asked,
/// else requeued at once, and, as after a preemption, without using up a retry: neither the job nor its node failed,
/// the machine's owner took it back. The job resumes from its checkpoints where it keeps them.
pub fn after_reclaim(job: &JobLife, why: &str, now_us: i64) -> Next {
    if job.cancel_requested {
        return Next::Finish { ending: Ending::Cancelled, reason: format!("cancelled; {why}") };
    }
    let preemptions = job.preemptions + 1;
    let attempts = job.retries + preemptions + 1;
    Next::Requeue {
        attempt: job.attempt + 1,
        attempts,
        preemptions,
        not_before_us: now_us,
        cause: RequeueCause::NodeLost,
        reason: format!("{why}; requeued without using a retry (attempt {} of {attempts})", job.attempt + 2),
    }
}

/// What a cancel asks of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelStep {
    /// Not on any node yet (queued, or placed nowhere): it ends at once, cancelled for `reason`.
    EndNow { reason: String },
    /// Running (or starting) somewhere: its runs are stopped (SIGTERM, the grace period, SIGKILL) and their end
    /// reads as cancelled (see [`run_outcome`]).
    StopRuns,
    /// A cancel was asked before and its runs are stopping: nothing more to do.
    AlreadyStopping,
}

/// Decides what `by`'s cancel does to a job: `placed` whether it is on a node, `requested` whether a cancel was
/// asked before.
pub fn on_cancel(placed: bool, requested: bool, by: &str) -> CancelStep {
    match (placed, requested) {
        (false, _) => CancelStep::EndNow { reason: format!("cancelled by {by} before it started") },
        (true, false) => CancelStep::StopRuns,
        (true, true) => CancelStep::AlreadyStopping,
    }
}

/// Where a stored, unfinished job stood when the server stopped, as the server's restart finds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stored {
    /// In the queue.
    #[default]
    Queued,
    /// Placed, and sent to its nodes without word back yet that it runs.
    Starting,
    /// Running (some or all of its runs reported started).
    Running,
    /// Not queued, yet on no node: its record lost its placement (a bug, or a hand-edited store).
    Nowhere,
}

/// What a server restart does with one unfinished job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Back into the core's queue as it was.
    Requeue,
    /// Re-entered into the core where it runs (`Event::JobAdopted`), then `then`.
    Adopt { then: AfterAdoption },
    /// It cannot be picked up again: over, lost, for `reason`.
    Lose { reason: String },
}

/// What follows a job's adoption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterAdoption {
    /// Its runs are stopped, as they were being before the restart: a cancel or a preemption was under way, or a
    /// gang worker had failed (which stops the rest).
    StopRuns,
    /// Its starts are sent again: the nodes may never have received them (a node drops a start it already runs).
    Resend,
    /// Nothing: its nodes go on reporting.
    Follow,
}

/// Decides what a restart does with a stored job: `job` says whether a cancel or preemption was under way,
/// `worker_failed` whether a gang worker had ended other than in success.
pub fn on_restart(stored: Stored, job: &JobLife, worker_failed: bool) -> Restart {
    let then = if job.cancel_requested || job.preempted.is_some() || worker_failed {
        AfterAdoption::StopRuns
    } else if stored == Stored::Starting {
        AfterAdoption::Resend
    } else {
        AfterAdoption::Follow
    };
    match stored {
        Stored::Queued => Restart::Requeue,
        Stored::Starting | Stored::Running => Restart::Adopt { then },
        Stored::Nowhere => Restart::Lose { reason: "lost when the server restarted: it was placed on no node".into() },
    }
}

/// The reason a job is lost when the core refuses to take it back at a restart (`refusal` is the core's error: its
/// node is gone, or what it holds there is now held by another job).
pub fn lost_at_restart(refusal: &str) -> String {
    format!("lost when the server restarted: {refusal}")
}

/// How one worker of a gang ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerEnded {
    pub rank: u32,
    pub ending: Ending,
    pub message: String,
    pub finished_at_us: i64,
}

/// What a gang's worker's end means for the rest of the gang.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GangStep {
    /// The first failure, in a gang that is not being stopped anyway: stop the workers still running (a gang cannot
    /// go on without one of its members), then wait for them.
    StopOthers,
    /// Others still run: wait for them.
    Wait,
    /// Every worker has ended: the job's attempt ends as `ending`, decided by worker `rank` (the earliest failure, or
    /// rank 0 when none failed), said by `text`.
    AllEnded { rank: u32, ending: Ending, text: String },
}

/// Decides a gang's next step after one of its workers ended. `ended` holds every worker's end so far (the new one
/// included), `workers` how many there are, `first_failure` whether the new end is the gang's first failure, and
/// `stopping` whether the gang is already being stopped (cancelled or preempted).
pub fn gang_step(workers: usize, ended: &[WorkerEnded], first_failure: bool, stopping: bool) -> GangStep {
    if ended.len() < workers {
        return if first_failure && !stopping { GangStep::StopOthers } else { GangStep::Wait };
    }
    let failure = ended.iter().filter(|e| e.ending != Ending::Succeeded).min_by_key(|e| (e.finished_at_us, e.rank));
    match failure {
        Some(e) if workers > 1 => GangStep::AllEnded {
            rank: e.rank,
            ending: e.ending,
            text: format!("worker {} failed: {}; the other workers were stopped", e.rank, e.message),
        },
        Some(e) => GangStep::AllEnded { rank: e.rank, ending: e.ending, text: e.message.clone() },
        None => {
            let root = ended.iter().find(|e| e.rank == 0).or(ended.first());
            let (rank, text) = root.map_or((0, String::new()), |e| (e.rank, e.message.clone()));
            GangStep::AllEnded { rank, ending: Ending::Succeeded, text }
        }
    }
}

/// When a gang runs: once every worker has started (`starts`, by rank), from the earliest start; `None` while one
/// has not.
pub fn gang_running_since(starts: &[Option<i64>]) -> Option<i64> {
    starts.iter().copied().collect::<Option<Vec<i64>>>()?.into_iter().min()
}

/// The GPU-seconds a run adds to what its job attained: `ran_s` seconds on `gpus` GPUs in all (every worker of a
/// gang counted). The least-attained order files a job by the sum over its attempts.
pub fn attained_gpu_s(ran_s: i64, gpus: u32) -> u64 {
    (ran_s.max(0) as u64).saturating_mul(u64::from(gpus))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_whose_run_cannot_be_prepared_fails_unless_it_was_cancelled() {
        let job = JobLife { retries: 3, ..JobLife::default() };
        assert_eq!(unstartable(&job, "secret HF_TOKEN is gone"), (Ending::Failed, "secret HF_TOKEN is gone".into()));
        let cancelled = JobLife { cancel_requested: true, ..job };
        assert_eq!(unstartable(&cancelled, "secret HF_TOKEN is gone").0, Ending::Cancelled);
    }

    #[test]
    fn a_gang_runs_once_every_worker_started_from_the_first_start_and_attains_gpu_time_on_all_its_gpus() {
        assert_eq!(gang_running_since(&[Some(7), None, Some(3)]), None);
        assert_eq!(gang_running_since(&[Some(7), Some(5), Some(3)]), Some(3));
        assert_eq!(gang_running_since(&[]), None);
        assert_eq!(attained_gpu_s(3600, 8), 28_800);
        assert_eq!(attained_gpu_s(-5, 8), 0, "a clock step back attains nothing");
    }

    fn life(attempt: u32, retries: u32) -> JobLife {
        JobLife { attempt, retries, ..JobLife::default() }
    }

    fn exited(code: i32) -> RunResult {
        RunResult { end: RunEnd::Exited, exit_code: Some(code), signal: None, message: None }
    }

    #[test]
    fn a_run_end_reads_in_the_jobs_terms() {
        let job = life(0, 0);
        assert_eq!(run_outcome(&job, &exited(0)), (Ending::Succeeded, "exited with code 0".into()));
        assert_eq!(run_outcome(&job, &exited(3)), (Ending::Failed, "exit code 3".into()));
        let said = RunResult { message: Some("out of memory".into()), ..exited(137) };
        assert_eq!(run_outcome(&job, &said), (Ending::Failed, "exit code 137: out of memory".into()));
        let timed = RunResult { end: RunEnd::TimedOut, exit_code: None, signal: Some(15), message: None };
        assert_eq!(run_outcome(&job, &timed).0, Ending::TimedOut);
        assert!(run_outcome(&job, &timed).1.contains("maximum runtime (killed by signal 15)"));
        let missing = RunResult { end: RunEnd::FailedToStart, exit_code: None, signal: None, message: None };
        assert_eq!(run_outcome(&job, &missing), (Ending::Failed, "the command could not be started".into()));
        let stopped = RunResult { end: RunEnd::Stopped, ..exited(143) };
        assert_eq!(run_outcome(&job, &stopped).0, Ending::Cancelled);
        // A cancel asked for wins, whatever the run did.
        let cancelled = JobLife { cancel_requested: true, ..job };
        assert_eq!(
            run_outcome(&cancelled, &exited(0)),
            (Ending::Cancelled, "cancelled by request (exit code 0)".into())
        );
    }

    #[test]
    fn failures_are_retried_with_a_growing_backoff_until_the_retries_are_used() {
        let now = 1_000_000_000;
        let first = after_runs(&life(0, 2), Ending::Failed, "exit code 1", RunEnd::Exited, 5, now);
        assert_eq!(
            first,
            Next::Requeue {
                attempt: 1,
                attempts: 3,
                preemptions: 0,
                not_before_us: now + 2_000_000,
                cause: RequeueCause::Failed { delay_s: 2 },
                reason: "exit code 1; retrying in 2s (attempt 2 of 3)".into()
            }
        );
        let Next::Requeue { not_before_us, .. } = after_runs(&life(1, 2), Ending::Failed, "x", RunEnd::Exited, 5, now)
        else {
            panic!("the second failure is retried")
        };
        assert_eq!(not_before_us, now + 4_000_000);
        assert_eq!(
            after_runs(&life(2, 2), Ending::Failed, "exit code 1", RunEnd::Exited, 5, now),
            Next::Finish { ending: Ending::Failed, reason: "exit code 1".into() }
        );
        assert_eq!((retry_delay_s(1), retry_delay_s(2), retry_delay_s(8), retry_delay_s(40)), (2, 4, 256, 300));
    }

    #[test]
    fn what_another_try_cannot_fix_and_what_succeeded_is_final() {
        let job = life(0, 5);
        let missing = after_runs(&job, Ending::Failed, "no such file", RunEnd::FailedToStart, 0, 0);
        assert_eq!(missing, Next::Finish { ending: Ending::Failed, reason: "no such file".into() });
        for ending in [Ending::Succeeded, Ending::TimedOut, Ending::Cancelled] {
            assert!(matches!(after_runs(&job, ending, "t", RunEnd::Exited, 0, 0), Next::Finish { .. }), "{ending}");
        }
    }

    #[test]
    fn a_restart_requeues_the_queued_adopts_the_placed_and_finishes_what_was_under_way() {
        let plain = life(0, 0);
        assert_eq!(on_restart(Stored::Queued, &plain, false), Restart::Requeue);
        assert_eq!(on_restart(Stored::Running, &plain, false), Restart::Adopt { then: AfterAdoption::Follow });
        assert_eq!(on_restart(Stored::Starting, &plain, false), Restart::Adopt { then: AfterAdoption::Resend });
        let stop = Restart::Adopt { then: AfterAdoption::StopRuns };
        let cancelled = JobLife { cancel_requested: true, ..plain.clone() };
        assert_eq!(on_restart(Stored::Starting, &cancelled, false), stop, "a cancel under way is not sent again");
        let preempted = JobLife { preempted: Some("for job 9".into()), ..plain.clone() };
        assert_eq!(on_restart(Stored::Running, &preempted, false), stop);
        assert_eq!(on_restart(Stored::Running, &plain, true), stop, "a gang with a failed worker stops the rest");
        assert!(matches!(on_restart(Stored::Nowhere, &plain, false), Restart::Lose { .. }));
        assert_eq!(lost_at_restart("node n is not known"), "lost when the server restarted: node n is not known");
    }

    #[test]
    fn a_preempted_job_is_requeued_at_once_without_using_a_retry() {
        let job = JobLife { preempted: Some("preempted for job 9".into()), ..life(0, 0) };
        let next = after_runs(&job, Ending::Cancelled, "stopped", RunEnd::Stopped, 42, 7);
        assert_eq!(
            next,
            Next::Requeue {
                attempt: 1,
                attempts: 2,
                preemptions: 1,
                not_before_us: 7,
                cause: RequeueCause::Preempted { ran_s: 42 },
                reason: "preempted for job 9; 42s of work lost; requeued".into()
            }
        );
        // It still has its own retries: attempt 1 after one preemption counts no failure.
        let after = JobLife { attempt: 1, preemptions: 1, retries: 1, ..JobLife::default() };
        assert!(after.may_retry());
        // A job that finishes its work within the grace period is done: nothing is left to requeue.
        assert_eq!(
            after_runs(&job, Ending::Succeeded, "exited with code 0", RunEnd::Exited, 42, 7),
            Next::Finish { ending: Ending::Succeeded, reason: "exited with code 0".into() }
        );
        // A cancel during the preemption ends it.
        let cancelled = JobLife { cancel_requested: true, ..job };
        assert!(matches!(after_runs(&cancelled, Ending::Cancelled, "c", RunEnd::Stopped, 1, 7), Next::Finish { .. }));
    }

    #[test]
    fn a_lost_node_requeues_while_retries_last_then_loses_the_job() {
        let why = "node a stopped reporting for 30s";
        assert_eq!(
            after_loss(&life(0, 1), why, 5),
            Next::Requeue {
                attempt: 1,
                attempts: 2,
                preemptions: 0,
                not_before_us: 5,
                cause: RequeueCause::NodeLost,
                reason: format!("{why}; retrying (attempt 2 of 2)")
            }
        );
        assert_eq!(after_loss(&life(1, 1), why, 5), Next::Finish { ending: Ending::Lost, reason: why.into() });
        let cancelled = JobLife { cancel_requested: true, ..life(0, 3) };
        assert_eq!(
            after_loss(&cancelled, why, 5),
            Next::Finish { ending: Ending::Cancelled, reason: format!("cancelled; {why}") }
        );
    }

    #[test]
    fn a_reclaimed_machines_job_is_requeued_without_using_a_retry_unless_cancelled() {
        let why = "node aws-1 is gone: the provider reclaimed spot machine i-1";
        let next = after_reclaim(&life(0, 0), why, 5);
        assert_eq!(
            next,
            Next::Requeue {
                attempt: 1,
                attempts: 2,
                preemptions: 1,
                not_before_us: 5,
                cause: RequeueCause::NodeLost,
                reason: format!("{why}; requeued without using a retry (attempt 2 of 2)")
            }
        );
        // The requeued job has all its retries left: a later failure is retried as before.
        let again = JobLife { attempt: 1, preemptions: 1, ..life(0, 1) };
        assert!(again.may_retry());
        let cancelled = JobLife { cancel_requested: true, ..life(0, 3) };
        assert!(matches!(after_reclaim(&cancelled, why, 5), Next::Finish { ending: Ending::Cancelled, .. }));
    }

    #[test]
    fn a_cancel_ends_a_queued_job_at_once_and_stops_a_running_one_once() {
        assert_eq!(
            on_cancel(false, false, "ana"),
            CancelStep::EndNow { reason: "cancelled by ana before it started".into() }
        );
        assert_eq!(on_cancel(true, false, "ana"), CancelStep::StopRuns);
        assert_eq!(on_cancel(true, true, "bo"), CancelStep::AlreadyStopping);
    }

    fn ended(rank: u32, ending: Ending, at: i64) -> WorkerEnded {
        WorkerEnded { rank, ending, message: format!("w{rank}"), finished_at_us: at }
    }

    #[test]
    fn the_first_failed_worker_stops_the_gang_and_decides_how_it_ends() {
        // Worker 2 of 3 fails first: the others are stopped.
        let so_far = [ended(2, Ending::Failed, 10)];
        assert_eq!(gang_step(3, &so_far, true, false), GangStep::StopOthers);
        // A gang already being stopped (cancelled, preempted) just waits.
        assert_eq!(gang_step(3, &so_far, true, true), GangStep::Wait);
        // The stopped ones end later; the job ends as worker 2 did.
        let all = [ended(2, Ending::Failed, 10), ended(0, Ending::Cancelled, 12), ended(1, Ending::Cancelled, 11)];
        assert_eq!(gang_step(3, &all[..2], false, false), GangStep::Wait);
        assert_eq!(
            gang_step(3, &all, false, false),
            GangStep::AllEnded {
                rank: 2,
                ending: Ending::Failed,
                text: "worker 2 failed: w2; the other workers were stopped".into()
            }
        );
        // Every worker succeeded: the job ends as rank 0 did.
        let fine = [ended(1, Ending::Succeeded, 5), ended(0, Ending::Succeeded, 6)];
        assert_eq!(
            gang_step(2, &fine, false, false),
            GangStep::AllEnded { rank: 0, ending: Ending::Succeeded, text: "w0".into() }
        );
    }
}
