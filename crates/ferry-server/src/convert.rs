//! Conversions between the core's types, the store's and the wire's, written out field by field in one place.
//!
//! The wire crate knows neither the core nor the store, and the store keeps forms of its own, so each crossing is a
//! function here: a change to the core's reasons reaches the API or the database only when this file changes with
//! it. Every conversion names every field of what it reads, so that a field added on one side fails to compile here
//! rather than being dropped unnoticed.

use ferry_api::history::HistoryJob;
use ferry_api::jobs::JobEvent;
use ferry_api::reasons as wire;
use ferry_api::tokens::{Quota, QuotaAmount};
use ferry_core::{Allocation, NodeShortfall, Placement, PreemptReason, ResourceKind, Resources, WaitReason};
use ferry_store::{
    AmountRecord, EventReason, EventRecord, HistoryRecord, LossCauseRecord, LossRecord, PlacedWorkerRecord,
    PlacementRecord, PreemptRuleRecord, PreemptionRecord, QuotaRecord, RequeueCauseRecord, RequeueRecord,
};

/// A quota amount as the scheduler counts it: unlimited where left out.
pub fn quota_resources(amount: &QuotaAmount) -> Resources {
    let QuotaAmount { gpus, cpu_millis, memory_bytes } = *amount;
    let unlimited = Resources::UNLIMITED;
    Resources {
        cpu_millis: cpu_millis.unwrap_or(unlimited.cpu_millis),
        memory_bytes: memory_bytes.unwrap_or(unlimited.memory_bytes),
        gpus: gpus.unwrap_or(unlimited.gpus),
    }
}

/// The scheduler's amount as a quota: what is unlimited is left out.
pub fn quota_amount(resources: &Resources) -> QuotaAmount {
    let Resources { cpu_millis, memory_bytes, gpus } = *resources;
    let unlimited = Resources::UNLIMITED;
    QuotaAmount {
        gpus: (gpus < unlimited.gpus).then_some(gpus),
        cpu_millis: (cpu_millis < unlimited.cpu_millis).then_some(cpu_millis),
        memory_bytes: (memory_bytes < unlimited.memory_bytes).then_some(memory_bytes),
    }
}

/// A quota set through the API, as the store keeps it.
pub fn quota_record(quota: &Quota) -> QuotaRecord {
    let amount = |a: &QuotaAmount| {
        let QuotaAmount { gpus, cpu_millis, memory_bytes } = *a;
        AmountRecord { gpus, cpu_millis, memory_bytes }
    };
    let Quota { quota, borrow_limit } = quota;
    QuotaRecord { quota: amount(quota), borrow_limit: borrow_limit.as_ref().map(amount) }
}

/// A stored quota, as the API shows it.
pub fn quota_from_record(record: &QuotaRecord) -> Quota {
    let amount = |a: &AmountRecord| {
        let AmountRecord { gpus, cpu_millis, memory_bytes } = *a;
        QuotaAmount { gpus, cpu_millis, memory_bytes }
    };
    let QuotaRecord { quota, borrow_limit } = record;
    Quota { quota: amount(quota), borrow_limit: borrow_limit.as_ref().map(amount) }
}

fn resource_kind(kind: ResourceKind) -> wire::ResourceKind {
    match kind {
        ResourceKind::Gpus => wire::ResourceKind::Gpus,
        ResourceKind::Cpus => wire::ResourceKind::Cpus,
        ResourceKind::Memory => wire::ResourceKind::Memory,
    }
}

fn shortfall(s: &NodeShortfall) -> wire::NodeShortfall {
    let NodeShortfall { node, resource, free, held, held_by } = s;
    wire::NodeShortfall {
        node: node.clone(),
        resource: resource_kind(*resource),
        free: *free,
        held: *held,
        held_by: held_by.clone(),
    }
}

/// Why a queued job waits, in the API's terms.
pub fn wait_reason(reason: &WaitReason) -> wire::WaitReason {
    use wire::WaitReason as W;
    match reason.clone() {
        WaitReason::NoNodes => W::NoNodes,
        WaitReason::NoReadyNodes { nodes, pool } => W::NoReadyNodes { nodes, pool },
        WaitReason::NoMatchingNode { gpu_models, selector, models_known, pool, pools_known, image, gang } => {
            W::NoMatchingNode { gpu_models, selector, models_known, pool, pools_known, image, gang }
        }
        WaitReason::Preempting { jobs } => W::Preempting { jobs },
        WaitReason::OverTeamLimit { team, resource, would_hold, limit } => {
            W::OverTeamLimit { team, resource: resource_kind(resource), would_hold, limit }
        }
        WaitReason::OverProjectLimit { team, project, resource, would_hold, limit } => {
            W::OverProjectLimit { team, project, resource: resource_kind(resource), would_hold, limit }
        }
        WaitReason::Infeasible { resource, needed, largest, pool } => {
            W::Infeasible { resource: resource_kind(resource), needed, largest, pool }
        }
        WaitReason::Insufficient { resource, needed, shortfalls, more_nodes } => W::Insufficient {
            resource: resource_kind(resource),
            needed,
            shortfalls: shortfalls.iter().map(shortfall).collect(),
            more_nodes,
        },
        WaitReason::ReservedFor { job, node } => W::ReservedFor { job, node },
        WaitReason::BurstNotYet { pool, after_s, waited_s } => W::BurstNotYet { pool, after_s, waited_s },
        WaitReason::GangInfeasible { workers, nodes_able } => W::GangInfeasible { workers, nodes_able },
        WaitReason::GangWaiting { workers, nodes_free, pool, nodes } => {
            W::GangWaiting { workers, nodes_free, pool, nodes }
        }
        WaitReason::Provisioning { pool, nodes_starting } => W::Provisioning { pool, nodes_starting },
        WaitReason::ElasticCoolingDown { pool, until_us, failure, detail } => {
            W::ElasticCoolingDown { pool, until_us, failure, detail }
        }
        WaitReason::Starting => W::Starting,
    }
}

/// Where the core started a job and why there, as the store keeps it in the job's timeline.
pub fn placement(reason: &Placement, allocation: &Allocation) -> PlacementRecord {
    // A gang's nodes are in the allocation too, each with its GPUs, which is what the record keeps.
    let Placement { pool, burst, backfilled_before, candidates, gpus_free_after, cpu_millis_free_after, gang_nodes: _ } =
        reason;
    PlacementRecord {
        pool: pool.clone(),
        workers: allocation
            .workers()
            .map(|(node, gpu_ids)| PlacedWorkerRecord { node: node.to_string(), gpu_ids: gpu_ids.to_vec() })
            .collect(),
        cpu_millis: allocation.resources.cpu_millis,
        gpu_share_milli: allocation.gpu_share_milli,
        candidates: *candidates,
        gpus_free_after: *gpus_free_after,
        cpu_millis_free_after: *cpu_millis_free_after,
        backfilled_before: *backfilled_before,
        burst_waited_s: burst.as_ref().map(|b| b.waited_s),
        burst_past: burst.as_ref().map(|b| b.past.clone()).unwrap_or_default(),
    }
}

/// For which job and by which rule the core preempted a job, as the store keeps it in the job's timeline.
pub fn preemption(by: u64, reason: &PreemptReason, grace_s: u64) -> PreemptionRecord {
    let rule = match reason.clone() {
        PreemptReason::Priority { victim_priority, preemptor_priority } => {
            PreemptRuleRecord::Priority { victim_priority, preemptor_priority }
        }
        PreemptReason::Reclaim { victim_team, preemptor_team } => {
            PreemptRuleRecord::Reclaim { victim_team, preemptor_team }
        }
        PreemptReason::ReclaimProject { team, victim_project, preemptor_project } => {
            PreemptRuleRecord::ReclaimProject { team, victim_project, preemptor_project }
        }
        PreemptReason::Attained { victim_gpu_s, preemptor_gpu_s } => {
            PreemptRuleRecord::Attained { victim_gpu_s, preemptor_gpu_s }
        }
    };
    PreemptionRecord { by, rule, grace_s }
}

/// A job as history, as the API shows it to the simulator's export.
pub fn history_job(record: HistoryRecord) -> HistoryJob {
    let HistoryRecord {
        id,
        name,
        owner,
        team,
        project,
        state,
        exit_code,
        signal,
        submitted_at_us,
        started_at_us,
        finished_at_us,
        attempt,
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_share_milli,
        gpu_types,
        selector,
        nodes,
        priority,
        pool,
        image,
        max_runtime_s,
    } = record;
    HistoryJob {
        id,
        name,
        owner,
        team,
        project,
        state,
        exit_code,
        signal,
        submitted_at_us,
        started_at_us,
        finished_at_us,
        attempt,
        cpu_millis,
        memory_bytes,
        gpus,
        gpu_share_milli,
        gpu_types,
        selector,
        nodes,
        priority,
        pool,
        image,
        max_runtime_s,
    }
}

/// One entry of a job's timeline, as the API shows it.
pub fn job_event(event: EventRecord) -> JobEvent {
    let EventRecord { at_us, state, message, reason } = event;
    JobEvent { at_us, state, message, reason: reason.map(timeline_reason) }
}

fn loss_cause(cause: LossCauseRecord) -> wire::LossCause {
    match cause {
        LossCauseRecord::NodeSilent { timeout_s } => wire::LossCause::NodeSilent { timeout_s },
        LossCauseRecord::NodeDown => wire::LossCause::NodeDown,
        LossCauseRecord::RunForgotten => wire::LossCause::RunForgotten,
        LossCauseRecord::ServerRestart => wire::LossCause::ServerRestart,
    }
}

fn timeline_reason(reason: EventReason) -> wire::TimelineReason {
    match reason {
        EventReason::Placed(PlacementRecord {
            pool,
            workers,
            cpu_millis,
            gpu_share_milli,
            candidates,
            gpus_free_after,
            cpu_millis_free_after,
            backfilled_before,
            burst_waited_s,
            burst_past,
        }) => wire::TimelineReason::Placed {
            pool,
            workers: workers
                .into_iter()
                .map(|PlacedWorkerRecord { node, gpu_ids }| wire::PlacedWorker { node, gpu_ids })
                .collect(),
            cpu_millis,
            gpu_share_milli,
            candidates,
            gpus_free_after,
            cpu_millis_free_after,
            backfilled_before,
            burst_waited_s,
            burst_past,
        },
        EventReason::Preempted(PreemptionRecord { by, rule, grace_s }) => {
            let rule = match rule {
                PreemptRuleRecord::Priority { victim_priority, preemptor_priority } => {
                    wire::PreemptRule::Priority { victim_priority, preemptor_priority }
                }
                PreemptRuleRecord::Reclaim { victim_team, preemptor_team } => {
                    wire::PreemptRule::Reclaim { victim_team, preemptor_team }
                }
                PreemptRuleRecord::ReclaimProject { team, victim_project, preemptor_project } => {
                    wire::PreemptRule::ReclaimProject { team, victim_project, preemptor_project }
                }
                PreemptRuleRecord::Attained { victim_gpu_s, preemptor_gpu_s } => {
                    wire::PreemptRule::Attained { victim_gpu_s, preemptor_gpu_s }
                }
            };
            wire::TimelineReason::Preempted { by, rule, grace_s }
        }
        EventReason::Requeued(RequeueRecord { cause, attempt, attempts, not_before_us }) => {
            let cause = match cause {
                RequeueCauseRecord::Preempted { ran_s } => wire::RequeueCause::Preempted { ran_s },
                RequeueCauseRecord::Failed { delay_s } => wire::RequeueCause::Failed { delay_s },
                RequeueCauseRecord::NodeLost(LossRecord { node, cause }) => {
                    wire::RequeueCause::NodeLost { node, cause: loss_cause(cause) }
                }
            };
            wire::TimelineReason::Requeued { cause, attempt, attempts, not_before_us }
        }
        EventReason::Lost(LossRecord { node, cause }) => wire::TimelineReason::Lost { node, cause: loss_cause(cause) },
    }
}

#[cfg(test)]
mod tests {
    use ferry_api::jobs::JobState;
    use ferry_core::Peer;

    use super::*;

    /// One of every wait reason, with the optional fields both set and not.
    fn every_wait_reason() -> Vec<WaitReason> {
        let shortfall = NodeShortfall {
            node: "gpu-1".into(),
            resource: ResourceKind::Memory,
            free: 1 << 30,
            held: 7 << 30,
            held_by: vec![3, 4],
        };
        vec![
            WaitReason::NoNodes,
            WaitReason::NoReadyNodes { nodes: 2, pool: None },
            WaitReason::NoReadyNodes { nodes: 0, pool: Some("hpc".into()) },
            WaitReason::NoMatchingNode {
                gpu_models: vec!["A100".into()],
                selector: vec!["rack=a".into()],
                models_known: vec!["T4".into()],
                pool: None,
                pools_known: vec!["local".into()],
                image: true,
                gang: true,
            },
            WaitReason::Preempting { jobs: vec![5, 6] },
            WaitReason::OverTeamLimit { team: "ml".into(), resource: ResourceKind::Gpus, would_hold: 9, limit: 8 },
            WaitReason::OverProjectLimit {
                team: "ml".into(),
                project: "nlp".into(),
                resource: ResourceKind::Cpus,
                would_hold: 9000,
                limit: 8000,
            },
            WaitReason::Infeasible { resource: ResourceKind::Gpus, needed: 16, largest: 8, pool: Some("a".into()) },
            WaitReason::Insufficient {
                resource: ResourceKind::Memory,
                needed: 8 << 30,
                shortfalls: vec![shortfall],
                more_nodes: 4,
            },
            WaitReason::ReservedFor { job: 2, node: "gpu-1".into() },
            WaitReason::BurstNotYet { pool: "cloud".into(), after_s: Some(600), waited_s: 30 },
            WaitReason::BurstNotYet { pool: "cloud".into(), after_s: None, waited_s: 30 },
            WaitReason::GangInfeasible { workers: 4, nodes_able: 2 },
            WaitReason::GangWaiting { workers: 4, nodes_free: 1, pool: "a".into(), nodes: vec!["gpu-1".into()] },
            WaitReason::Provisioning { pool: "cloud".into(), nodes_starting: 2 },
            WaitReason::ElasticCoolingDown {
                pool: "cloud".into(),
                until_us: 600_000_000,
                failure: "no capacity".into(),
                detail: "EC2 answered InsufficientInstanceCapacity".into(),
            },
            WaitReason::Starting,
        ]
    }

    /// The API's wait reasons are the core's, the same JSON that clients read before the wire had types of its own,
    /// and a client reads them back as what was sent.
    #[test]
    fn wait_reasons_keep_the_json_clients_read() {
        for reason in every_wait_reason() {
            let sent = wait_reason(&reason);
            let json = serde_json::to_value(&sent).unwrap();
            assert_eq!(json, serde_json::to_value(&reason).unwrap(), "{reason:?}");
            assert_eq!(serde_json::from_value::<wire::WaitReason>(json).unwrap(), sent);
        }
    }

    /// A reason from a newer server reads as `other` rather than making the whole job unreadable.
    #[test]
    fn an_unknown_reason_reads_as_other() {
        let newer = serde_json::json!({ "kind": "maintenance", "window": "sunday" });
        assert_eq!(serde_json::from_value::<wire::WaitReason>(newer.clone()).unwrap(), wire::WaitReason::Other);
        assert_eq!(serde_json::from_value::<wire::TimelineReason>(newer).unwrap(), wire::TimelineReason::Other);
    }

    #[test]
    fn quotas_leave_out_what_is_unlimited() {
        let amount = QuotaAmount { gpus: Some(8), cpu_millis: None, memory_bytes: Some(1 << 40) };
        let resources = quota_resources(&amount);
        assert_eq!(
            resources,
            Resources { gpus: 8, cpu_millis: Resources::UNLIMITED.cpu_millis, memory_bytes: 1 << 40 }
        );
        assert_eq!(quota_amount(&resources), amount);
        assert_eq!(quota_amount(&Resources::UNLIMITED), QuotaAmount::default());
        let quota =
            Quota { quota: amount, borrow_limit: Some(QuotaAmount { gpus: Some(2), ..QuotaAmount::default() }) };
        let record = quota_record(&quota);
        assert_eq!(record.borrow_limit.unwrap().gpus, Some(2));
        assert_eq!(quota_from_record(&record), quota);
    }

    /// A gang's placement keeps every worker's node and GPUs, rank 0 first, and the core's why, through the store
    /// and out to the API.
    #[test]
    fn a_placement_reaches_the_api_with_every_worker() {
        let core = Placement {
            pool: "onprem".into(),
            burst: Some(ferry_core::BurstReason { waited_s: 300, past: vec!["onprem".into()] }),
            backfilled_before: Some(7),
            candidates: 3,
            gpus_free_after: 0,
            cpu_millis_free_after: 4000,
            gang_nodes: vec!["a".into(), "b".into()],
        };
        let allocation = Allocation {
            node: "a".into(),
            resources: Resources::new(2000, 1 << 30, 2),
            gpus: vec![0, 1],
            gpu_share_milli: 0,
            peers: vec![Peer { node: "b".into(), gpus: vec![2, 3] }],
        };
        let stored = EventRecord {
            at_us: 10,
            state: JobState::Starting,
            message: "placed".into(),
            reason: Some(EventReason::Placed(placement(&core, &allocation))),
        };
        let shown = job_event(stored);
        let expected = wire::TimelineReason::Placed {
            pool: "onprem".into(),
            workers: vec![
                wire::PlacedWorker { node: "a".into(), gpu_ids: vec![0, 1] },
                wire::PlacedWorker { node: "b".into(), gpu_ids: vec![2, 3] },
            ],
            cpu_millis: 2000,
            gpu_share_milli: 0,
            candidates: 3,
            gpus_free_after: 0,
            cpu_millis_free_after: 4000,
            backfilled_before: Some(7),
            burst_waited_s: Some(300),
            burst_past: vec!["onprem".into()],
        };
        assert_eq!(
            shown,
            JobEvent { at_us: 10, state: JobState::Starting, message: "placed".into(), reason: Some(expected) }
        );
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["reason"]["kind"], "placed");
        assert_eq!(json["reason"]["workers"][1]["gpu_ids"], serde_json::json!([2, 3]));
    }

    #[test]
    fn a_preemption_reaches_the_api_with_its_rule() {
        let rules = [
            (
                PreemptReason::Priority { victim_priority: 0, preemptor_priority: 100 },
                serde_json::json!({ "kind": "priority", "victim_priority": 0, "preemptor_priority": 100 }),
            ),
            (
                PreemptReason::Reclaim { victim_team: "a".into(), preemptor_team: "b".into() },
                serde_json::json!({ "kind": "reclaim", "victim_team": "a", "preemptor_team": "b" }),
            ),
            (
                PreemptReason::ReclaimProject {
                    team: "t".into(),
                    victim_project: "a".into(),
                    preemptor_project: "b".into(),
                },
                serde_json::json!({ "kind": "reclaim_project", "team": "t", "victim_project": "a", "preemptor_project": "b" }),
            ),
            (
                PreemptReason::Attained { victim_gpu_s: 7200, preemptor_gpu_s: 60 },
                serde_json::json!({ "kind": "attained", "victim_gpu_s": 7200, "preemptor_gpu_s": 60 }),
            ),
        ];
        for (rule, expected) in rules {
            let stored = EventRecord {
                at_us: 1,
                state: JobState::Running,
                message: "preempted".into(),
                reason: Some(EventReason::Preempted(preemption(9, &rule, 10))),
            };
            let json = serde_json::to_value(job_event(stored)).unwrap();
            assert_eq!(
                json["reason"],
                serde_json::json!({ "kind": "preempted", "by": 9, "rule": expected, "grace_s": 10 })
            );
        }
    }

    /// An entry without a reason has no `reason` field at all, as before reasons were stored.
    #[test]
    fn an_entry_without_a_reason_leaves_the_field_out() {
        let plain = EventRecord { at_us: 1, state: JobState::Queued, message: "submitted".into(), reason: None };
        let json = serde_json::to_value(job_event(plain)).unwrap();
        assert_eq!(json, serde_json::json!({ "at_us": 1, "state": "queued", "message": "submitted" }));
    }
}
