//! What every handler can reach: the store, the driver's mailbox, the agent backend, logs, code archives and
//! wake-ups.

use std::sync::Arc;

use ferry_backends::agent::AgentBackend;
use ferry_store::Store;

use crate::auth::TokenCache;
use crate::code::CodeStore;
use crate::driver::DriverHandle;
use crate::logs::LogStore;
use crate::signals::Signals;
use crate::telemetry::Telemetry;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub driver: DriverHandle,
    pub agents: Arc<AgentBackend>,
    pub logs: Arc<LogStore>,
    pub code: Arc<CodeStore>,
    pub signals: Arc<Signals>,
    pub tokens: Arc<TokenCache>,
    /// Failed token checks per source address, for rate limiting.
    pub failures: Arc<crate::auth::FailureLimiter>,
    pub telemetry: Arc<Telemetry>,
    pub series: Arc<ferry_tsdb::Tsdb>,
    /// What engine pools last said of the runs they follow, for `ferry show`, and of their engines' health.
    pub engine_states: Arc<crate::engines::EngineStates>,
    /// The backend of each configured pool, by name (the registry built them); pools only nodes name are agents'.
    pub backends: Arc<std::collections::HashMap<String, Arc<dyn ferry_backends::ComputeBackend>>>,
    /// The configured pools, in the configuration's order.
    pub pools: Arc<PoolSet>,
    /// The configuration file (its teams' and projects' quotas are managed there).
    pub file: Arc<crate::config::FileConfig>,
    /// The sweep controller's mailbox.
    pub sweeps: crate::sweeps::SweepsHandle,
    /// Seals and opens stored secrets.
    pub secrets: Arc<crate::secrets::SecretBox>,
    /// The key that signs jobs' tracking tokens.
    pub job_key: Arc<Vec<u8>>,
    /// MLflow artifacts of runs and logged models.
    pub artifacts: Arc<crate::artifacts::ArtifactStore>,
    /// Each project's artifacts against its quota.
    pub artifact_quotas: Arc<crate::artifact_quota::ArtifactQuotas>,
    /// Single sign-on, when configured.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// The certificate authority of `--tls auto`, which join tokens pin; `None` without one.
    pub tls_authority: Option<Arc<crate::tls::Authority>>,
    /// Elastic pools' machines; `None` without elastic pools.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// The configured pools: the configuration file's, then those added at run time (`ferry pool add`). Readers take a
/// snapshot; a change replaces the whole list, one change at a time.
pub struct PoolSet {
    pools: std::sync::RwLock<Arc<Vec<crate::config::PoolConfig>>>,
    /// Held across one change, from its checks to the core and the fleet hearing of it.
    pub changing: tokio::sync::Mutex<()>,
}

impl PoolSet {
    pub fn new(pools: Vec<crate::config::PoolConfig>) -> PoolSet {
        PoolSet { pools: std::sync::RwLock::new(Arc::new(pools)), changing: tokio::sync::Mutex::new(()) }
    }

    pub fn snapshot(&self) -> Arc<Vec<crate::config::PoolConfig>> {
        self.pools.read().expect("pool set lock is never poisoned").clone()
    }

    pub fn replace(&self, pools: Vec<crate::config::PoolConfig>) {
        *self.pools.write().expect("pool set lock is never poisoned") = Arc::new(pools);
    }
}
