//! Nodes: capacity, allocation and what each node measured.

use axum::extract::State;
use axum::Json;
use std::collections::BTreeMap;

use ferry_api::nodes::{
    Capabilities, CloudEvent, CloudMachine, ElasticPoolStatus, Node, NodeList, NodeState, Pool, PoolList, ZoneCooling,
};

use ferry_backends::ComputeBackend;

use crate::auth::Caller;
use crate::driver::Command;
use crate::error::ApiError;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/v1/nodes", responses((status = 200, body = NodeList)))]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Json<NodeList>, ApiError> {
    let allocations = state.driver.ask(|reply| Command::Allocations { reply }).await?;
    let nodes = state
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|r| {
            let (allocated, running_jobs) = allocations.get(&r.name).cloned().unwrap_or_default();
            Node {
                state: if r.ready { NodeState::Ready } else { NodeState::NotReady },
                name: r.name,
                pool: r.pool,
                cpu_millis: r.cpu_millis,
                memory_bytes: r.memory_bytes,
                gpus: r.gpus,
                labels: r.labels,
                allocated_cpu_millis: allocated.cpu_millis,
                allocated_memory_bytes: allocated.memory_bytes,
                allocated_gpus: allocated.gpus,
                usage: r.usage,
                last_seen_us: r.last_seen_us,
                agent_version: r.agent_version,
                limits: r.limits,
                running_jobs,
            }
        })
        .collect();
    Ok(Json(NodeList { nodes }))
}

/// Every pool: the configured ones in their order, then those only nodes name; with their nodes' capacity, what its
/// backend can do and, for engine pools, whether the engine answers.
#[utoipa::path(get, path = "/api/v1/pools", responses((status = 200, body = PoolList)))]
pub async fn pools(State(state): State<AppState>, _caller: Caller) -> Result<Json<PoolList>, ApiError> {
    let mut pools: BTreeMap<String, Pool> = BTreeMap::new();
    let mut order = Vec::new();
    for p in state.pools.snapshot().iter() {
        let kind = p.kind().to_string();
        let engine = p.engine.as_ref().map(|_| state.engine_states.health(&p.info.name));
        let backend = state.backends.get(&p.info.name).map_or(state.agents.capabilities(), |b| b.capabilities());
        order.push(p.info.name.clone());
        pools.insert(
            p.info.name.clone(),
            Pool {
                name: p.info.name.clone(),
                kind,
                order: Some(p.info.order),
                burst: p.info.burst,
                nodes: 0,
                nodes_ready: 0,
                cpu_millis: 0,
                memory_bytes: 0,
                gpus: 0,
                engine,
                capabilities: capabilities(backend),
                elastic: None,
            },
        );
    }
    if state.fleet.is_some() {
        elastic(&state, &mut pools).await?;
    }
    for node in state.store.nodes().await? {
        let pool = pools.entry(node.pool.clone()).or_insert_with(|| {
            order.push(node.pool.clone());
            Pool {
                name: node.pool.clone(),
                kind: "agent".into(),
                order: None,
                burst: false,
                nodes: 0,
                nodes_ready: 0,
                cpu_millis: 0,
                memory_bytes: 0,
                gpus: 0,
                engine: None,
                capabilities: capabilities(state.agents.capabilities()),
                elastic: None,
            }
        });
        pool.nodes += 1;
        if node.ready {
            pool.nodes_ready += 1;
            pool.cpu_millis += node.cpu_millis;
            pool.memory_bytes += node.memory_bytes;
            pool.gpus += node.gpus.len() as u32;
        }
    }
    let pools = order.into_iter().filter_map(|name| pools.remove(&name)).collect();
    Ok(Json(PoolList { pools }))
}

/// How many of an elastic pool's latest events `GET /api/v1/pools` shows.
const EVENTS_SHOWN: u32 = 100;

/// Fills in each elastic pool's cloud: the core's count of its nodes by state, the fleet's machines and their cost.
async fn elastic(state: &AppState, pools: &mut BTreeMap<String, Pool>) -> Result<(), ApiError> {
    let Some(fleet) = &state.fleet else { return Ok(()) };
    let lifecycle = state.driver.ask(|reply| Command::Elastic { reply }).await?;
    let now = crate::clock::now_us();
    let machines = state.store.live_machines().await?;
    let spend: BTreeMap<String, f64> = state.store.cloud_spend(now).await?.into_iter().collect();
    for config in state.pools.snapshot().iter() {
        let (Some(cloud), Some(settings)) = (&config.cloud, &config.info.elastic) else { continue };
        let Some(pool) = pools.get_mut(&config.info.name) else { continue };
        let core = lifecycle.get(&config.info.name).cloned().unwrap_or_default();
        let mine: Vec<&ferry_store::CloudMachine> = machines.iter().filter(|m| m.pool == config.info.name).collect();
        let cloud_status = fleet.status(&config.info.name).unwrap_or_default();
        let events = state.store.cloud_events(&config.info.name, EVENTS_SHOWN).await?;
        pool.elastic = Some(ElasticPoolStatus {
            provider: cloud.provider.clone(),
            region: cloud.region.clone(),
            zones: cloud.zones.clone(),
            instance_type: cloud.instance.name.clone(),
            market: cloud.market().to_string(),
            price_hour: cloud.instance.price_hour,
            max_nodes: settings.max_nodes,
            starting: core.starting,
            busy: core.ready.saturating_sub(core.idle),
            idle: core.idle,
            releasing: core.releasing,
            spend: spend.get(&config.info.name).copied().unwrap_or(0.0),
            spend_hour: mine.iter().filter(|m| m.live()).fold(0.0, |sum, m| sum + m.price_hour),
            cooldown_until_us: core.cooldown.as_ref().map(|c| c.until_us),
            cooldown_reason: core.cooldown.as_ref().map(|c| format!("{}: {}", c.failure, c.detail)),
            zones_cooling: cloud_status
                .zones_cooling
                .into_iter()
                .map(|(zone, until_us, reason)| ZoneCooling { zone, until_us, reason })
                .collect(),
            last_error: cloud_status.last_error,
            machines: mine
                .iter()
                .filter(|m| m.live())
                .map(|m| CloudMachine {
                    node: m.node.clone(),
                    state: m.state.to_string(),
                    zone: m.zone.clone(),
                    instance_id: m.instance_id.clone(),
                    requested_at_us: m.requested_at_us,
                    joined_at_us: m.joined_at_us,
                    cost: m.cost(now),
                })
                .collect(),
            events: events
                .into_iter()
                .map(|e| CloudEvent { at_us: e.at_us, kind: e.kind, node: e.node, nodes: e.nodes, detail: e.detail })
                .collect(),
        });
    }
    Ok(())
}

fn capabilities(c: ferry_backends::Capabilities) -> Capabilities {
    Capabilities {
        images: c.images,
        gangs: c.gangs,
        gpus_measured: c.gpus_measured,
        native_view: c.native_view,
        node_pinning: c.node_pinning,
        gpu_pinning: c.gpu_pinning,
    }
}
