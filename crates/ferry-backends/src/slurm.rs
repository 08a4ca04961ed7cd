//! The Slurm engine. (Being written: see the engine trait in engine.rs.)

use crate::engine::Engine;

/// How a slurm pool reaches its engine: the `[pool.engine]` table of the server's configuration, or the settings of
/// `ferry pool add`.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// Connects to the engine (without contacting it: an engine that is down is reported by its calls, not here).
pub fn connect(_config: Config) -> Result<Box<dyn Engine>, String> {
    Err("the slurm engine is not built yet".into())
}
