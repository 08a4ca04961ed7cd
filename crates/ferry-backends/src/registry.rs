//! The explicit list of compute backends this build contains. Adding a backend means one line here, behind its
//! feature, and nothing in the core or the server.

use std::sync::Arc;

use crate::engine::Engine;
use crate::ComputeBackend;

/// Every backend kind this build knows, for messages that list the choices.
pub fn kinds() -> Vec<&'static str> {
    let built = [
        ("agent", cfg!(feature = "agent")),
        ("slurm", cfg!(feature = "slurm")),
        ("ray", cfg!(feature = "ray")),
        ("spark", cfg!(feature = "spark")),
        ("kubernetes", cfg!(feature = "kubernetes")),
    ];
    built.into_iter().filter(|(_, on)| *on).map(|(kind, _)| kind).collect()
}

/// Builds the backend of the given kind, or `None` when this build does not include it.
pub fn build(kind: &str) -> Option<Arc<dyn ComputeBackend>> {
    match kind {
        #[cfg(feature = "agent")]
        "agent" => Some(Arc::new(crate::agent::AgentBackend::new(crate::agent::new_epoch()))),
        _ => None,
    }
}

/// Connects an engine of the given kind from its settings (the `[pool.engine]` table, as JSON). The error says what
/// is wrong with the settings, or which kinds there are.
pub fn build_engine(kind: &str, settings: serde_json::Value) -> Result<Box<dyn Engine>, String> {
    fn parse<T: serde::de::DeserializeOwned>(kind: &str, settings: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(settings).map_err(|e| format!("the settings of a {kind} pool: {e}"))
    }
    match kind {
        #[cfg(feature = "slurm")]
        "slurm" => crate::slurm::connect(parse(kind, settings)?),
        #[cfg(feature = "ray")]
        "ray" => crate::ray::connect(parse(kind, settings)?),
        #[cfg(feature = "spark")]
        "spark" => crate::spark::connect(parse(kind, settings)?),
        #[cfg(feature = "kubernetes")]
        "kubernetes" => crate::kubernetes::connect(parse(kind, settings)?),
        _ => {
            let _ = (parse::<serde_json::Value>, settings);
            let engines: Vec<&str> = kinds().into_iter().filter(|k| *k != "agent").collect();
            Err(format!("there is no engine kind `{kind}`; this build has {}", engines.join(", ")))
        }
    }
}
