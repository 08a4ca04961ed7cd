//! Pools managed at run time (`ferry pool add`, `update`, `remove`): pools of agents and elastic pools, checked as the
//! configuration file's pools are, kept in the store, and handed to the core and the fleet at once. The
//! configuration file's own pools are changed in the file.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_api::nodes::PoolDefinition;
use ferry_api::{ErrorBody, ErrorCode};
use ferry_backends::ComputeBackend;
use ferry_store::RuntimePool;

use crate::auth::Caller;
use crate::config::PoolConfig;
use crate::driver::{now_us, Command};
use crate::error::{rejection, ApiError};
use crate::routes::users::admin_only;
use crate::state::AppState;

use super::JsonBody;

/// The most bytes one pool's definition may have.
const DEFINITION_BYTES_MAX: usize = 64 * 1024;

/// Checks a definition as the configuration file's pools are checked, and builds the provider of an elastic pool.
fn checked(state: &AppState, definition: &str) -> Result<PoolConfig, ApiError> {
    if definition.len() > DEFINITION_BYTES_MAX {
        return Err(ApiError::invalid(format!("the definition is over {DEFINITION_BYTES_MAX} bytes")));
    }
    let mut pool =
        crate::config::runtime_pool(definition, state.file.public_url.as_deref()).map_err(ApiError::invalid)?;
    let capabilities = state.agents.capabilities();
    (pool.info.images, pool.info.gangs) = (capabilities.images, capabilities.gangs);
    Ok(pool)
}

/// Where a pool of this name is defined, if anywhere: the configuration file, or the store.
async fn defined(state: &AppState, name: &str) -> Result<Option<&'static str>, ApiError> {
    if state.file.pools.iter().any(|p| p.info.name == name) {
        return Ok(Some("file"));
    }
    let stored = state.store.runtime_pools().await?;
    Ok(stored.iter().any(|p| p.name == name).then_some("runtime"))
}

/// Hands the new list of pools to the core, the fleet and the readers, in that order.
async fn apply(
    state: &AppState,
    pools: Vec<PoolConfig>,
    changed: Option<&PoolConfig>,
    removed: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(fleet) = &state.fleet {
        if let Some(pool) = changed.filter(|p| p.cloud.is_some()) {
            fleet.set_pool(pool).map_err(ApiError::invalid)?;
        }
        if let Some(name) = removed {
            fleet.remove_pool(name);
        }
        if let Some(pool) = changed.filter(|p| p.cloud.is_none()) {
            fleet.remove_pool(&pool.info.name);
        }
    }
    let for_driver = pools.clone();
    state.driver.call(|reply| Command::PoolsChanged { pools: for_driver, reply }).await?;
    state.pools.replace(pools);
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/pools", request_body = PoolDefinition,
    responses((status = 201, body = PoolDefinition), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody<PoolDefinition>,
) -> Result<(StatusCode, axum::Extension<crate::audit::AuditNote>, Json<PoolDefinition>), ApiError> {
    admin_only(&caller, "add pools")?;
    let Json(spec) = body.map_err(rejection)?;
    let _one_at_a_time = state.pools.changing.lock().await;
    let pool = checked(&state, &spec.definition)?;
    let name = pool.info.name.clone();
    match defined(&state, &name).await? {
        Some("file") => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("pool `{name}` is defined in the server's configuration file; change it there"),
            ))
        }
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("there is already a pool `{name}`; change it with `ferry pool update`"),
            ))
        }
        None => {}
    }
    let stored = RuntimePool {
        name: name.clone(),
        definition: spec.definition.clone(),
        created_by: caller.name.clone(),
        updated_at_us: now_us(),
    };
    if !state.store.put_runtime_pool(&stored, false, now_us()).await? {
        return Err(ApiError::new(ErrorCode::Conflict, format!("there is already a pool `{name}`")));
    }
    let mut pools = state.pools.snapshot().as_ref().clone();
    pools.push(pool.clone());
    apply(&state, pools, Some(&pool), None).await?;
    tracing::info!(pool = %name, by = %caller.name, elastic = pool.cloud.is_some(), "pool added");
    Ok((StatusCode::CREATED, crate::audit::note(format!("pool {name}")), Json(spec)))
}

#[utoipa::path(put, path = "/api/v1/pools/{name}", request_body = PoolDefinition,
    responses((status = 200, body = PoolDefinition), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: JsonBody<PoolDefinition>,
) -> Result<(axum::Extension<crate::audit::AuditNote>, Json<PoolDefinition>), ApiError> {
    admin_only(&caller, "change pools")?;
    let Json(spec) = body.map_err(rejection)?;
    let _one_at_a_time = state.pools.changing.lock().await;
    let pool = checked(&state, &spec.definition)?;
    if pool.info.name != name {
        return Err(ApiError::invalid(format!(
            "the definition names pool `{}`, not `{name}`; a pool is renamed by adding the new one and removing the old",
            pool.info.name
        )));
    }
    match defined(&state, &name).await? {
        Some("file") => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("pool `{name}` is defined in the server's configuration file; change it there"),
            ))
        }
        None => return Err(ApiError::not_found(format!("no pool `{name}` was added at run time; add it first"))),
        Some(_) => {}
    }
    let stored = RuntimePool {
        name: name.clone(),
        definition: spec.definition.clone(),
        created_by: caller.name.clone(),
        updated_at_us: now_us(),
    };
    state.store.put_runtime_pool(&stored, true, now_us()).await?;
    let pools: Vec<PoolConfig> =
        state.pools.snapshot().iter().map(|p| if p.info.name == name { pool.clone() } else { p.clone() }).collect();
    apply(&state, pools, Some(&pool), None).await?;
    tracing::info!(pool = %name, by = %caller.name, "pool changed");
    Ok((crate::audit::note(format!("pool {name}")), Json(spec)))
}

#[utoipa::path(delete, path = "/api/v1/pools/{name}",
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<(StatusCode, axum::Extension<crate::audit::AuditNote>), ApiError> {
    admin_only(&caller, "remove pools")?;
    let _one_at_a_time = state.pools.changing.lock().await;
    match defined(&state, &name).await? {
        Some("file") => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("pool `{name}` is defined in the server's configuration file; remove it there"),
            ))
        }
        None => return Err(ApiError::not_found(format!("no pool `{name}` was added at run time"))),
        Some(_) => {}
    }
    let nodes: Vec<String> =
        state.store.nodes().await?.into_iter().filter(|n| n.pool == name).map(|n| n.name).collect();
    let machines: Vec<String> =
        state.store.live_machines().await?.into_iter().filter(|m| m.pool == name).map(|m| m.node).collect();
    if !nodes.is_empty() || !machines.is_empty() {
        let extra: Vec<String> = machines.into_iter().filter(|m| !nodes.contains(m)).collect();
        let mut all = nodes;
        all.extend(extra);
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "pool `{name}` still has nodes or machines ({}); stop their agents (an elastic pool's idle machines are \
                 given back after its idle_release) and try again",
                all.join(", ")
            ),
        ));
    }
    state.store.remove_runtime_pool(&name).await?;
    let pools: Vec<PoolConfig> = state.pools.snapshot().iter().filter(|p| p.info.name != name).cloned().collect();
    apply(&state, pools, None, Some(&name)).await?;
    tracing::info!(pool = %name, by = %caller.name, "pool removed");
    Ok((StatusCode::NO_CONTENT, crate::audit::note(format!("pool {name}"))))
}
