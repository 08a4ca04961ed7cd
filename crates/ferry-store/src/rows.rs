//! What the store writes as JSON or as names, in forms of its own.
//!
//! The server hands some values over in the API's types (job states and priority classes, a gang's workers, a
//! node's GPUs and usage). They are stored through the row types and name tables here, converted field by field
//! with every field named, so that a change to the API's JSON cannot silently change what is stored: a field added
//! to or renamed in a wire type fails to compile here, and a serde attribute on it changes nothing stored. The
//! tests at the end pin the exact stored strings. The timeline's reasons (`EventReason`) are the store's own public
//! type, and so are quotas set through the API (`QuotaRecord`): the server converts them from and to the API's.
//!
//! Nothing here may take its stored form from `ferry_api`: no serializing of a wire type, no `JobState::name`.

use ferry_api::jobs::{JobState, JobWorker, PriorityClass, WorkerEnd};
use ferry_api::nodes::{Gpu, GpuUsage, NodeUsage};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A job state as the `state` columns of `jobs` and `job_events`, and a gang worker's end, hold it.
pub(crate) fn state_name(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Starting => "starting",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::TimedOut => "timed_out",
        JobState::Lost => "lost",
    }
}

pub(crate) fn state_from(text: &str) -> Result<JobState, StoreError> {
    JobState::ALL
        .into_iter()
        .find(|s| state_name(*s) == text)
        .ok_or_else(|| StoreError::Invalid(format!("unknown job state `{text}`")))
}

/// A priority class as the `priority` column holds it.
pub(crate) fn priority_name(priority: PriorityClass) -> &'static str {
    match priority {
        PriorityClass::Low => "low",
        PriorityClass::Normal => "normal",
        PriorityClass::High => "high",
        PriorityClass::Urgent => "urgent",
    }
}

pub(crate) fn priority_from(text: &str) -> Result<PriorityClass, StoreError> {
    PriorityClass::ALL
        .into_iter()
        .find(|p| priority_name(*p) == text)
        .ok_or_else(|| StoreError::Invalid(format!("unknown priority `{text}`")))
}

/// One worker of a gang, as the `workers` column of `jobs` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WorkerRow {
    rank: u32,
    node: String,
    gpu_ids: Vec<u32>,
    #[serde(default)]
    started_at_us: Option<i64>,
    #[serde(default)]
    end: Option<WorkerEndRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WorkerEndRow {
    /// A state's stored name (`state_name`).
    state: String,
    exit_code: Option<i32>,
    signal: Option<i32>,
    message: String,
    finished_at_us: i64,
    /// Written only when set, so that rows from before it are the same form.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    failed_to_start: bool,
}

impl WorkerRow {
    pub(crate) fn from_wire(worker: &JobWorker) -> WorkerRow {
        let JobWorker { rank, node, gpu_ids, started_at_us, end } = worker;
        WorkerRow {
            rank: *rank,
            node: node.clone(),
            gpu_ids: gpu_ids.clone(),
            started_at_us: *started_at_us,
            end: end.as_ref().map(|end| {
                let WorkerEnd { state, exit_code, signal, message, finished_at_us, failed_to_start } = end;
                WorkerEndRow {
                    state: state_name(*state).to_string(),
                    exit_code: *exit_code,
                    signal: *signal,
                    message: message.clone(),
                    finished_at_us: *finished_at_us,
                    failed_to_start: *failed_to_start,
                }
            }),
        }
    }

    pub(crate) fn into_wire(self) -> Result<JobWorker, StoreError> {
        let WorkerRow { rank, node, gpu_ids, started_at_us, end } = self;
        let end = match end {
            Some(WorkerEndRow { state, exit_code, signal, message, finished_at_us, failed_to_start }) => {
                let state = state_from(&state)?;
                Some(WorkerEnd { state, exit_code, signal, message, finished_at_us, failed_to_start })
            }
            None => None,
        };
        Ok(JobWorker { rank, node, gpu_ids, started_at_us, end })
    }
}

/// One GPU of a node, as the `gpus` column of `nodes` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GpuRow {
    index: u32,
    model: String,
    memory_bytes: u64,
    uuid: Option<String>,
    source: String,
}

impl GpuRow {
    pub(crate) fn from_wire(gpu: &Gpu) -> GpuRow {
        let Gpu { index, model, memory_bytes, uuid, source } = gpu;
        GpuRow {
            index: *index,
            model: model.clone(),
            memory_bytes: *memory_bytes,
            uuid: uuid.clone(),
            source: source.clone(),
        }
    }

    pub(crate) fn into_wire(self) -> Gpu {
        let GpuRow { index, model, memory_bytes, uuid, source } = self;
        Gpu { index, model, memory_bytes, uuid, source }
    }
}

/// A node's latest measurement, as the `usage` column of `nodes` holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct NodeUsageRow {
    sampled_at_us: i64,
    cpu_millis_used: u64,
    memory_used_bytes: u64,
    gpus: Vec<GpuUsageRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct GpuUsageRow {
    index: u32,
    utilization_percent: Option<u32>,
    memory_used_bytes: Option<u64>,
    temperature_c: Option<u32>,
    power_mw: Option<u32>,
}

impl NodeUsageRow {
    pub(crate) fn from_wire(usage: &NodeUsage) -> NodeUsageRow {
        let NodeUsage { sampled_at_us, cpu_millis_used, memory_used_bytes, gpus } = usage;
        let gpus = gpus
            .iter()
            .map(|gpu| {
                let GpuUsage { index, utilization_percent, memory_used_bytes, temperature_c, power_mw } = gpu;
                GpuUsageRow {
                    index: *index,
                    utilization_percent: *utilization_percent,
                    memory_used_bytes: *memory_used_bytes,
                    temperature_c: *temperature_c,
                    power_mw: *power_mw,
                }
            })
            .collect();
        NodeUsageRow {
            sampled_at_us: *sampled_at_us,
            cpu_millis_used: *cpu_millis_used,
            memory_used_bytes: *memory_used_bytes,
            gpus,
        }
    }

    pub(crate) fn into_wire(self) -> NodeUsage {
        let NodeUsageRow { sampled_at_us, cpu_millis_used, memory_used_bytes, gpus } = self;
        let gpus = gpus
            .into_iter()
            .map(|gpu| {
                let GpuUsageRow { index, utilization_percent, memory_used_bytes, temperature_c, power_mw } = gpu;
                GpuUsage { index, utilization_percent, memory_used_bytes, temperature_c, power_mw }
            })
            .collect();
        NodeUsage { sampled_at_us, cpu_millis_used, memory_used_bytes, gpus }
    }
}

/// A quota set through the API, as the `quota` columns of `teams` and `projects` hold it (JSON): the guaranteed
/// amount and how much more may be borrowed; what an amount leaves out is unlimited (or, for a project, its team's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    pub quota: AmountRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrow_limit: Option<AmountRecord>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmountRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

/// One entry of a job's timeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    pub at_us: i64,
    pub state: JobState,
    pub message: String,
    /// Why, as data, for the entries the scheduler decided (placements, preemptions); `None` for the rest and for
    /// entries written before reasons were stored.
    pub reason: Option<EventReason>,
}

/// Why a timeline entry happened, as the `reason` column of `job_events` holds it (JSON, tagged by `kind`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventReason {
    Placed(PlacementRecord),
    Preempted(PreemptionRecord),
    Requeued(RequeueRecord),
    Lost(LossRecord),
}

/// How a job's run was lost with its node: which node (none where it was placed on none) and what befell it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub cause: LossCauseRecord,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossCauseRecord {
    /// The node's agent stopped reporting for the node timeout.
    NodeSilent { timeout_s: u64 },
    /// The node was reported down.
    NodeDown,
    /// The node's agent came back without any record of the run.
    RunForgotten,
    /// The server restarted and could not take the job back.
    ServerRestart,
}

/// Why a job went back to the queue, and for which attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequeueRecord {
    pub cause: RequeueCauseRecord,
    /// The attempt it waits for, counting from 1, and the most it may make.
    pub attempt: u32,
    pub attempts: u32,
    /// Not before this time (a retry's backoff).
    pub not_before_us: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequeueCauseRecord {
    Preempted { ran_s: u64 },
    Failed { delay_s: u64 },
    NodeLost(LossRecord),
}

/// Where a job was placed and why there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub pool: String,
    /// Every worker's node and GPUs, rank 0 first.
    pub workers: Vec<PlacedWorkerRecord>,
    /// Each worker's CPUs, in thousandths.
    pub cpu_millis: u64,
    pub gpu_share_milli: u32,
    /// How many ready nodes could hold it.
    pub candidates: u32,
    /// What rank 0's node kept free.
    pub gpus_free_after: u32,
    pub cpu_millis_free_after: u64,
    /// The blocked job whose held resources it was backfilled onto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfilled_before: Option<u64>,
    /// How long it had waited when it burst to a burst pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_waited_s: Option<u64>,
    /// The pools before the burst pool that could not hold it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub burst_past: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedWorkerRecord {
    pub node: String,
    pub gpu_ids: Vec<u32>,
}

/// For which job and by which rule a job was preempted, and the grace it was given to stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreemptionRecord {
    pub by: u64,
    pub rule: PreemptRuleRecord,
    pub grace_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreemptRuleRecord {
    Priority {
        victim_priority: i32,
        preemptor_priority: i32,
    },
    Reclaim {
        victim_team: String,
        preemptor_team: String,
    },
    ReclaimProject {
        team: String,
        victim_project: String,
        preemptor_project: String,
    },
    /// Under the least-attained order: the job checkpoints and had more GPU time than the one it made room for.
    Attained {
        victim_gpu_s: u64,
        preemptor_gpu_s: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::to_json;

    /// The stored forms, exactly: a change here is a change of every database's contents, and needs a migration
    /// (or reading the old form too), never just a new expectation.
    #[test]
    fn stored_forms_are_pinned() {
        let worker = JobWorker {
            rank: 1,
            node: "gpu-2".into(),
            gpu_ids: vec![0, 3],
            started_at_us: Some(5),
            end: Some(WorkerEnd {
                state: JobState::TimedOut,
                exit_code: None,
                signal: Some(9),
                message: "stopped".into(),
                finished_at_us: 9,
                failed_to_start: false,
            }),
        };
        let stored = to_json(&WorkerRow::from_wire(&worker));
        assert_eq!(
            stored,
            r#"{"rank":1,"node":"gpu-2","gpu_ids":[0,3],"started_at_us":5,"end":{"state":"timed_out","exit_code":null,"signal":9,"message":"stopped","finished_at_us":9}}"#
        );
        let back: WorkerRow = serde_json::from_str(&stored).unwrap();
        assert_eq!(back.into_wire().unwrap(), worker);
        let mut unstarted = worker.clone();
        unstarted.end.as_mut().unwrap().failed_to_start = true;
        let stored = to_json(&WorkerRow::from_wire(&unstarted));
        assert!(stored.ends_with(r#""finished_at_us":9,"failed_to_start":true}}"#), "{stored}");
        assert_eq!(serde_json::from_str::<WorkerRow>(&stored).unwrap().into_wire().unwrap(), unstarted);

        let gpu = Gpu { index: 2, model: "A100".into(), memory_bytes: 80 << 30, uuid: None, source: "nvml".into() };
        let stored = to_json(&GpuRow::from_wire(&gpu));
        assert_eq!(stored, r#"{"index":2,"model":"A100","memory_bytes":85899345920,"uuid":null,"source":"nvml"}"#);
        assert_eq!(serde_json::from_str::<GpuRow>(&stored).unwrap().into_wire(), gpu);

        let usage = NodeUsage {
            sampled_at_us: 7,
            cpu_millis_used: 1500,
            memory_used_bytes: 1 << 30,
            gpus: vec![GpuUsage {
                index: 0,
                utilization_percent: Some(90),
                memory_used_bytes: None,
                temperature_c: Some(60),
                power_mw: None,
            }],
        };
        let stored = to_json(&NodeUsageRow::from_wire(&usage));
        assert_eq!(
            stored,
            r#"{"sampled_at_us":7,"cpu_millis_used":1500,"memory_used_bytes":1073741824,"gpus":[{"index":0,"utilization_percent":90,"memory_used_bytes":null,"temperature_c":60,"power_mw":null}]}"#
        );
        assert_eq!(serde_json::from_str::<NodeUsageRow>(&stored).unwrap().into_wire(), usage);

        let placed = EventReason::Placed(PlacementRecord {
            pool: "onprem".into(),
            workers: vec![PlacedWorkerRecord { node: "gpu-1".into(), gpu_ids: vec![1] }],
            cpu_millis: 2000,
            gpu_share_milli: 0,
            candidates: 3,
            gpus_free_after: 1,
            cpu_millis_free_after: 6000,
            backfilled_before: Some(12),
            burst_waited_s: None,
            burst_past: Vec::new(),
        });
        assert_eq!(
            to_json(&placed),
            r#"{"kind":"placed","pool":"onprem","workers":[{"node":"gpu-1","gpu_ids":[1]}],"cpu_millis":2000,"gpu_share_milli":0,"candidates":3,"gpus_free_after":1,"cpu_millis_free_after":6000,"backfilled_before":12}"#
        );
        let preempted = EventReason::Preempted(PreemptionRecord {
            by: 4,
            rule: PreemptRuleRecord::ReclaimProject {
                team: "ml".into(),
                victim_project: "a".into(),
                preemptor_project: "b".into(),
            },
            grace_s: 30,
        });
        let requeued = EventReason::Requeued(RequeueRecord {
            cause: RequeueCauseRecord::Failed { delay_s: 4 },
            attempt: 3,
            attempts: 4,
            not_before_us: 9,
        });
        let lost = EventReason::Requeued(RequeueRecord {
            cause: RequeueCauseRecord::NodeLost(LossRecord {
                node: Some("gpu-1".into()),
                cause: LossCauseRecord::NodeSilent { timeout_s: 30 },
            }),
            attempt: 2,
            attempts: 2,
            not_before_us: 9,
        });
        assert_eq!(
            to_json(&lost),
            r#"{"kind":"requeued","cause":{"kind":"node_lost","node":"gpu-1","cause":{"kind":"node_silent","timeout_s":30}},"attempt":2,"attempts":2,"not_before_us":9}"#
        );
        let gone = EventReason::Lost(LossRecord { node: None, cause: LossCauseRecord::ServerRestart });
        assert_eq!(to_json(&gone), r#"{"kind":"lost","cause":{"kind":"server_restart"}}"#);
        assert_eq!(serde_json::from_str::<EventReason>(&to_json(&lost)).unwrap(), lost);
        assert_eq!(
            to_json(&requeued),
            r#"{"kind":"requeued","cause":{"kind":"failed","delay_s":4},"attempt":3,"attempts":4,"not_before_us":9}"#
        );
        assert_eq!(
            to_json(&preempted),
            r#"{"kind":"preempted","by":4,"rule":{"kind":"reclaim_project","team":"ml","victim_project":"a","preemptor_project":"b"},"grace_s":30}"#
        );
        for reason in [placed, preempted] {
            assert_eq!(serde_json::from_str::<EventReason>(&to_json(&reason)).unwrap(), reason);
        }

        let quota = QuotaRecord {
            quota: AmountRecord { gpus: Some(8), cpu_millis: None, memory_bytes: Some(1 << 40) },
            borrow_limit: Some(AmountRecord { gpus: Some(4), ..AmountRecord::default() }),
        };
        let stored = to_json(&quota);
        assert_eq!(stored, r#"{"quota":{"gpus":8,"memory_bytes":1099511627776},"borrow_limit":{"gpus":4}}"#);
        assert_eq!(serde_json::from_str::<QuotaRecord>(&stored).unwrap(), quota);
        let unlimited = QuotaRecord::default();
        assert_eq!(to_json(&unlimited), r#"{"quota":{}}"#);
    }

    /// Every state and class has a distinct stored name that reads back as itself, and the names are those already
    /// in every database.
    #[test]
    fn names_are_pinned_and_read_back() {
        let states: Vec<&str> = JobState::ALL.into_iter().map(state_name).collect();
        assert_eq!(states, ["queued", "starting", "running", "succeeded", "failed", "cancelled", "timed_out", "lost"]);
        for state in JobState::ALL {
            assert_eq!(state_from(state_name(state)).unwrap(), state);
        }
        let classes: Vec<&str> = PriorityClass::ALL.into_iter().map(priority_name).collect();
        assert_eq!(classes, ["low", "normal", "high", "urgent"]);
        for class in PriorityClass::ALL {
            assert_eq!(priority_from(priority_name(class)).unwrap(), class);
        }
        assert!(state_from("paused").unwrap_err().to_string().contains("unknown job state `paused`"));
        assert!(priority_from("vip").is_err());
    }
}
