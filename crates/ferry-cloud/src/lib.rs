//! Cloud providers: the one trait through which Ferry rents machines, and the providers that implement it.
//!
//! A [`Provider`] offers [`InstanceType`]s, launches a machine for a node of an elastic pool (tagged with the
//! installation, the pool and the node, so that the machines can be listed and matched to nodes later, after a
//! crash too), lists an installation's machines by that tag and terminates them. Its errors are typed
//! ([`ProviderError`]) so that the caller can tell "try another zone" from "fix the credentials" from "retry later".
//!
//! This crate must never decide anything: which pool, zone or type to launch, when to give a machine back and how
//! often to retry are the scheduler core's and the server's. It must never log, print or return credentials: they
//! are redacted from every `Debug` and never part of an error.
//!
//! Providers: [`ec2`] (AWS EC2 through its Query API), [`gce`] (Google Compute Engine through its REST API v1) and
//! [`azure`] (Azure virtual machines through Azure Resource Manager's Compute REST API). GCE and Azure have no local
//! emulator: they are written to their documented REST APIs and tested against a local server that answers in
//! those formats (see the README).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub mod azure;
pub mod catalog;
pub mod credentials;
pub mod ec2;
pub mod gce;
pub mod memory;
mod oauth;
pub mod registry;
mod rest;

/// The tag that names the Ferry installation a machine belongs to; listing filters on it.
pub const TAG_INSTALLATION: &str = "ferry-installation";
/// The tag that names the elastic pool a machine was launched for.
pub const TAG_POOL: &str = "ferry-pool";
/// The tag that names the node a machine was launched to become.
pub const TAG_NODE: &str = "ferry-node";

/// A future a provider returns; boxed so that providers can sit behind `dyn Provider` (as backends do).
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProviderError>> + Send + 'a>>;

/// One cloud's machines, as Ferry rents them.
pub trait Provider: Send + Sync {
    /// The provider's name as configuration and messages write it, such as `aws`.
    fn kind(&self) -> &'static str;

    /// The instance types this provider offers to Ferry: those the pool's configuration lists, with their prices.
    fn instance_types(&self) -> &[InstanceType];

    /// Launches one machine. Returning is not joining: the machine's agent registers when it has started.
    fn launch(&self, request: LaunchRequest) -> ProviderFuture<'_, Instance>;

    /// The installation's machines, found by their installation tag, in every state the provider still reports
    /// (terminated machines stay listed for a while after termination).
    fn list<'a>(&'a self, installation: &'a str) -> ProviderFuture<'a, Vec<Instance>>;

    /// Terminates machines by their provider ids. Terminating a machine that is already gone is not an error.
    fn terminate<'a>(&'a self, ids: &'a [String]) -> ProviderFuture<'a, ()>;
}

/// How a machine is rented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Market {
    /// Paid by the hour at the list price; the provider does not take it back.
    OnDemand,
    /// Spare capacity at a lower price, which the provider may reclaim at short notice.
    Spot,
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Market::OnDemand => "on-demand",
            Market::Spot => "spot",
        })
    }
}

/// A kind of machine a provider offers, with what a node of it has and what it costs.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceType {
    /// The provider's name for it, such as `g5.xlarge`.
    pub name: String,
    pub gpus: u32,
    /// The GPU model, such as `A10G`; `None` for a machine without GPUs.
    pub gpu_model: Option<String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// The price of one machine for one hour, in the currency the installation bills in.
    pub price_hour: f64,
    pub market: Market,
    /// The zones it may be launched in, such as `us-east-1a`.
    pub zones: Vec<String>,
}

/// What to launch: one machine that becomes one node of an elastic pool.
#[derive(Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// The Ferry installation's id, tagged on the machine so that listing finds it.
    pub installation: String,
    pub pool: String,
    /// The node the machine becomes; also its name in the provider's console.
    pub node: String,
    pub instance_type: String,
    pub zone: String,
    pub market: Market,
    /// The start-up script the machine runs on its first boot (it starts `ferry agent` with a join token).
    pub user_data: String,
    /// Makes the launch idempotent where the provider supports it: a second launch with the same token within the
    /// provider's window returns the first machine instead of a new one (EC2's `ClientToken`, at most 64 ASCII
    /// characters). `None` launches every time.
    pub client_token: Option<String>,
}

impl LaunchRequest {
    /// The tags every machine carries, by which [`Provider::list`] finds it and the server matches it to its node.
    pub fn tags(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TAG_INSTALLATION.to_string(), self.installation.clone()),
            (TAG_POOL.to_string(), self.pool.clone()),
            (TAG_NODE.to_string(), self.node.clone()),
        ])
    }
}

/// The user data carries a join token: it is left out.
impl fmt::Debug for LaunchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LaunchRequest")
            .field("installation", &self.installation)
            .field("pool", &self.pool)
            .field("node", &self.node)
            .field("instance_type", &self.instance_type)
            .field("zone", &self.zone)
            .field("market", &self.market)
            .field("user_data_bytes", &self.user_data.len())
            .field("client_token", &self.client_token)
            .finish()
    }
}

/// Where a machine is in its life, as the provider reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InstanceState {
    /// Asked for and starting; not yet running.
    Pending,
    Running,
    /// Shutting down or stopping: on its way to stopped or terminated.
    Stopping,
    /// Stopped but not terminated: it still exists (and its disks still cost), and Ferry should terminate it.
    Stopped,
    Terminated,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Terminated => "terminated",
        })
    }
}

/// A machine the provider reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The provider's id, such as `i-0123456789abcdef0`.
    pub id: String,
    pub state: InstanceState,
    pub instance_type: String,
    pub zone: String,
    pub market: Market,
    /// When the provider launched it, in milliseconds since the Unix epoch.
    pub launch_time_ms: u64,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// The node it was launched to become, from its tag.
    pub fn node(&self) -> Option<&str> {
        self.tags.get(TAG_NODE).map(String::as_str)
    }

    /// The pool it was launched for, from its tag.
    pub fn pool(&self) -> Option<&str> {
        self.tags.get(TAG_POOL).map(String::as_str)
    }
}

/// What a provider said when it refused or failed a call: enough to act on and to quote to its support.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The provider, as messages name it: `EC2`, `Compute Engine`, `Azure`.
    pub provider: &'static str,
    /// The provider's error code, such as `InsufficientInstanceCapacity`.
    pub code: String,
    /// The provider's own message.
    pub message: String,
    /// The provider's id of the failed request, where it gave one.
    pub request_id: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} answered {}", self.provider, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message.trim_end_matches('.'))?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " (request {id})")?;
        }
        Ok(())
    }
}

/// Why a provider call failed, by what the caller should do about it. No variant ever holds a credential.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider has no machines of that type in that zone (or market) right now.
    #[error("{0}; there is no capacity for it now: try another zone or instance type, on-demand instead of spot, or the next pool")]
    NoCapacity(Refusal),
    /// The account's limit on machines or CPUs is reached.
    #[error("{0}; the account's quota is reached: raise it with the provider ({fix}) or lower the pool's max_nodes", fix = quota_fix(.0))]
    QuotaExceeded(Refusal),
    /// The request itself is wrong: an unknown instance type, image or zone, a malformed parameter.
    #[error("{0}; the request is invalid: check the pool's instance type, image, region and zones")]
    Invalid(Refusal),
    /// The credentials are missing, wrong or expired, or may not do this.
    #[error("{}", unauthorized(.0))]
    Unauthorized(Refusal),
    /// Throttling, a provider fault or a network failure: the same call may succeed later.
    #[error("{0}; this is likely temporary: the call may be retried with backoff")]
    Transient(Refusal),
}

/// Where each provider's quotas are raised.
fn quota_fix(refusal: &Refusal) -> &'static str {
    match refusal.provider {
        gce::PROVIDER => "for Compute Engine: IAM & Admin, Quotas, the region's CPUs or GPUs of the family",
        azure::PROVIDER => "for Azure: Subscriptions, Usage + quotas, the region's vCPUs of the VM family",
        _ => "for EC2: Service Quotas, the instance family's vCPU limit",
    }
}

/// Credentials that were refused, and where to look; credentials that were never found say where they were looked
/// for themselves (`NoCredentials`), so nothing is added to them.
fn unauthorized(refusal: &Refusal) -> String {
    if refusal.code == NO_CREDENTIALS {
        return refusal.to_string();
    }
    format!(
        "{refusal}; the credentials were refused: check them ({}) and that they may run, describe and terminate \
         instances",
        credentials_fix(refusal)
    )
}

/// The code of a refusal made by Ferry itself when no credentials were found.
pub const NO_CREDENTIALS: &str = "NoCredentials";

/// Where each provider's credentials are read from.
fn credentials_fix(refusal: &Refusal) -> &'static str {
    match refusal.provider {
        gce::PROVIDER => {
            "for Compute Engine: the service account key in GOOGLE_APPLICATION_CREDENTIALS, or the token in \
             GOOGLE_OAUTH_ACCESS_TOKEN, or the machine's service account through its metadata server, with a role \
             such as roles/compute.instanceAdmin.v1 on the project"
        }
        azure::PROVIDER => {
            "for Azure: AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, or the machine's managed identity, \
             a service principal or identity with a role such as Virtual Machine Contributor and Network Contributor \
             on the resource group"
        }
        _ => {
            "for AWS: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE's entry in ~/.aws/credentials, or the \
             instance's IAM role"
        }
    }
}

impl ProviderError {
    /// An error whose code named no kind, by its HTTP status: refused credentials (401, 403), throttling or a fault
    /// of the provider (429, 5xx), else an invalid request.
    pub(crate) fn by_status(status: u16, refusal: Refusal) -> ProviderError {
        match status {
            401 | 403 => ProviderError::Unauthorized(refusal),
            429 | 500..=599 => ProviderError::Transient(refusal),
            _ => ProviderError::Invalid(refusal),
        }
    }

    /// What the provider said.
    pub fn refusal(&self) -> &Refusal {
        match self {
            ProviderError::NoCapacity(r)
            | ProviderError::QuotaExceeded(r)
            | ProviderError::Invalid(r)
            | ProviderError::Unauthorized(r)
            | ProviderError::Transient(r) => r,
        }
    }

    /// Whether the same call may succeed if repeated later, unchanged.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_))
    }
}
