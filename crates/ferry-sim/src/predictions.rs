//! Runtime predictions in a replay: learned from the replay's own completed jobs as they end, as the server learns
//! from its history, or taken from the workload's true durations (clairvoyance, for the shortest-job-first bound).
//!
//! The queue orderings that use a job's expected runtime (`QueueOrder::ShortestFirst`) and start forecasts read
//! `JobRequest::expected_runtime_s`; `least-attained` reads `attained_gpu_s`, the GPU time of a job's earlier
//! attempts. Both are set here, when a job is submitted or queued again.

use ferry_core::predict::{JobKind, Predictor};
use ferry_core::{JobId, JobRequest};

use crate::workload::JobSpec;

/// Where the expected runtimes of a replay's jobs come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Predictions {
    /// From earlier completed runs of the same kind in the replay (`ferry_core::predict`), as the server does.
    #[default]
    Learned,
    /// The job's true duration: what no real scheduler knows, for the clairvoyant bound.
    Clairvoyant,
}

/// The predictor of one replay.
#[derive(Default)]
pub(crate) struct Learner {
    mode: Predictions,
    predictor: Predictor,
}

impl JobSpec {
    /// What makes the job alike to others for prediction: the workload has no command, so the name stands for it.
    pub fn kind(&self) -> JobKind<'_> {
        JobKind {
            user: &self.user,
            name: &self.name,
            command: "",
            project: &self.project,
            resources: self.resources,
            gpu_share_milli: self.gpu_share_milli,
            nodes: self.nodes,
        }
    }
}

impl Learner {
    pub(crate) fn new(mode: Predictions) -> Learner {
        Learner { mode, predictor: Predictor::new() }
    }

    /// The request for `spec` submitted (or queued again) at `now_ms` as job `id`, after `attained_gpu_s` of GPU
    /// time in earlier attempts, and the runtime it is expected to take.
    pub(crate) fn request(
        &self,
        spec: &JobSpec,
        id: JobId,
        now_ms: u64,
        attained_gpu_s: u64,
    ) -> (JobRequest, Option<u64>) {
        let expected = match self.mode {
            Predictions::Learned => self.predictor.predict(&spec.kind()).map(|p| p.runtime_s),
            Predictions::Clairvoyant => Some(spec.duration_ms.div_ceil(1000)),
        };
        let mut request = spec.request(id, now_ms);
        request.expected_runtime_s = expected;
        request.attained_gpu_s = attained_gpu_s;
        (request, expected)
    }

    /// Learns from a run of `spec` that completed after `ran_ms`.
    pub(crate) fn completed(&mut self, spec: &JobSpec, ran_ms: u64) {
        if self.mode == Predictions::Learned {
            self.predictor.record(&spec.kind(), ran_ms / 1000);
        }
    }
}
