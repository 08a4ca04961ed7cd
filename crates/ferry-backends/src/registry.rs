//! The explicit list of compute backends this build contains. Adding a backend means one line here, behind its
//! feature, and nothing in the core or the server.

use std::sync::Arc;

use crate::ComputeBackend;

/// Every backend kind this build knows, for messages that list the choices.
pub fn kinds() -> Vec<&'static str> {
    let built = [("agent", cfg!(feature = "agent"))];
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
