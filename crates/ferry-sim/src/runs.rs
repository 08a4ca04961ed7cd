//! One job's progress through its runs in a replay: the work its checkpoints saved, the failures the workload planted
//! in it so far, and what the core's lifecycle rules (`ferry_core::lifecycle`) need to know of it. Pure arithmetic
//! over virtual milliseconds; what follows a run's end is decided by those rules alone, never here.

use ferry_core::lifecycle::JobLife;

use crate::workload::JobSpec;

/// How a run that starts now will end if nothing cuts it short, and after how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunPlan {
    /// It finishes the job's work.
    Complete { after_ms: u64 },
    /// It fails, as the workload planted.
    Fail { after_ms: u64 },
}

/// Where one job stands between its runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobRun {
    /// What the lifecycle rules read: the attempt, the retries, the preemptions, a preemption under way.
    pub life: JobLife,
    /// The work its checkpoints saved, which the next run resumes from.
    pub saved_ms: u64,
    /// How many of its runs failed as the workload planted.
    pub failed: u32,
}

impl JobRun {
    pub fn new(spec: &JobSpec) -> JobRun {
        JobRun { life: JobLife { retries: spec.lifecycle.retries, ..JobLife::default() }, ..JobRun::default() }
    }

    /// How the run starting now ends if nothing cuts it short: it fails at `fail_at` into the run while the workload
    /// plants failures and the work left is longer than that, else it completes the work left.
    pub fn plan(&self, spec: &JobSpec) -> RunPlan {
        let left_ms = spec.duration_ms.saturating_sub(self.saved_ms).max(1);
        let l = &spec.lifecycle;
        match l.fail_at_ms {
            Some(at) if at < left_ms && l.fails.is_none_or(|n| self.failed < n) => RunPlan::Fail { after_ms: at },
            _ => RunPlan::Complete { after_ms: left_ms },
        }
    }

    /// The work saved once a run that resumed at `saved_ms` is cut short after `ran_ms`: up to its last checkpoint,
    /// which falls on a whole multiple of `checkpoint_every` of the job's work; without checkpoints, nothing.
    pub fn kept_ms(&self, spec: &JobSpec, ran_ms: u64) -> u64 {
        match spec.lifecycle.checkpoint_every_ms {
            Some(every) => {
                let reached = (self.saved_ms + ran_ms).min(spec.duration_ms);
                (reached / every * every).max(self.saved_ms)
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::Resources;

    use super::*;
    use crate::workload::Lifecycle;

    fn spec(duration_ms: u64, lifecycle: Lifecycle) -> JobSpec {
        JobSpec {
            line: 2,
            arrival_ms: 0,
            duration_ms,
            resources: Resources::new(1000, 1 << 30, 1),
            gpu_share_milli: 0,
            gpu_models: Vec::new(),
            priority: 0,
            user: "u".into(),
            name: String::new(),
            team: "t".into(),
            project: String::new(),
            nodes: 1,
            selector: Default::default(),
            pool: None,
            image: false,
            max_runtime_s: None,
            outcome: None,
            exit_code: None,
            lifecycle,
        }
    }

    #[test]
    fn a_run_fails_where_planted_while_failures_are_left_then_runs_through() {
        let job = spec(100_000, Lifecycle { fail_at_ms: Some(30_000), fails: Some(2), ..Lifecycle::default() });
        let mut run = JobRun::new(&job);
        assert_eq!(run.plan(&job), RunPlan::Fail { after_ms: 30_000 });
        run.failed = 2;
        assert_eq!(run.plan(&job), RunPlan::Complete { after_ms: 100_000 });
        // Every run fails when `fails` is left out; a run whose work left ends before the failure completes.
        let always = spec(100_000, Lifecycle { fail_at_ms: Some(30_000), ..Lifecycle::default() });
        let run = JobRun { failed: 50, ..JobRun::new(&always) };
        assert_eq!(run.plan(&always), RunPlan::Fail { after_ms: 30_000 });
        let resumed = JobRun { saved_ms: 80_000, ..run };
        assert_eq!(resumed.plan(&always), RunPlan::Complete { after_ms: 20_000 });
    }

    #[test]
    fn a_cut_run_keeps_its_work_up_to_the_last_checkpoint() {
        let job = spec(100_000, Lifecycle { checkpoint_every_ms: Some(25_000), ..Lifecycle::default() });
        let run = JobRun { saved_ms: 25_000, ..JobRun::new(&job) };
        // 25 + 40 = 65 s of work reached: the checkpoint at 50 holds.
        assert_eq!(run.kept_ms(&job, 40_000), 50_000);
        // Cut before its next checkpoint, it keeps what it resumed from.
        assert_eq!(run.kept_ms(&job, 10_000), 25_000);
        // Without checkpoints it starts over.
        let plain = spec(100_000, Lifecycle::default());
        assert_eq!(JobRun::new(&plain).kept_ms(&plain, 90_000), 0);
    }
}
