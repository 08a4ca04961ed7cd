//! Azure virtual machines through Azure Resource Manager's Compute REST API (`https://management.azure.com`,
//! api-version [`API_VERSION`]), JSON over reqwest, with bearer tokens from Microsoft Entra ID (`auth.rs`).
//!
//! Written to Microsoft's documentation; no local emulator of Azure Resource Manager exists, so the tests play it
//! with a local server that answers in the documented formats and checks every request against them.
//!
//! - launch: `PUT` the VM (Create Or Update) in the resource group, then poll its `Azure-AsyncOperation` until
//!   it ends (allocation failures are reported there, not by the `PUT`), then `GET` it. The VM creates its own
//!   network interface in the configured subnet, deleted with it, as is its OS disk: one request, nothing to leak.
//!   A VM whose creation failed is deleted before the error is returned.
//! - list: every VM of the resource group, page by page (`nextLink`), kept if tagged with the installation.
//! - terminate: `DELETE` the VM, not waited for; a VM already gone is fine.
//!
//! A VM's provider id is its name in the resource group. The name derives from the installation and the node
//! (`rest::machine_name`), so a repeated launch of the same node updates the first VM in place instead of making a
//! second: `PUT` is idempotent by name, and the launch request's client token is not needed.
//!
//! This module must never retry a failed call (the caller backs off) and never log or return a credential, a token
//! or the user data.

mod auth;
mod body;

use std::fmt;
use std::time::{Duration, Instant};

pub use auth::{resolve, resolve_with, AzureCredentials, AzureCredentialsError, AzureCredentialsSource};

use crate::oauth::{self, Bearer, TokenCache};
use crate::rest::{self, refused};
use crate::{Instance, InstanceType, LaunchRequest, Provider, ProviderError, ProviderFuture};

/// How messages name this provider.
pub(crate) const PROVIDER: &str = "Azure";
/// The Compute API version every request names; the JSON shapes in `body.rs` are this version's.
pub const API_VERSION: &str = "2024-07-01";
pub const MANAGEMENT_ENDPOINT_DEFAULT: &str = "https://management.azure.com";
pub const LOGIN_ENDPOINT_DEFAULT: &str = "https://login.microsoftonline.com";
/// The scope of an Azure Resource Manager token (the resource's `.default` scope).
pub const SCOPE: &str = "https://management.azure.com/.default";
/// The request id Azure gives every answer, quoted to its support.
const REQUEST_ID_HEADER: &str = "x-ms-request-id";
/// The most pages one listing reads; more means something is wrong.
const LIST_PAGES_MAX: usize = 200;
/// How often a launch polls its operation before it returns the VM as it is (it exists: creation is under way),
/// and the wait between polls when Azure names none, and the longest it honours.
const OPERATION_POLLS_MAX: usize = 120;
const POLL_WAIT_DEFAULT: Duration = Duration::from_secs(5);
const POLL_WAIT_MAX: Duration = Duration::from_secs(30);
/// The most a VM's custom data may hold, base64-encoded.
const CUSTOM_DATA_BASE64_BYTES_MAX: usize = 65_535;
/// Azure's longest Linux computer name.
const NAME_CHARS_MAX: usize = 64;
/// The smallest OS disk Ferry asks for; the marketplace's Linux images are 30 GB.
const OS_DISK_GB_MIN: u32 = 30;

/// The image every VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureImage {
    /// A marketplace image, such as `Canonical`, `ubuntu-24_04-lts`, `server`, `latest`.
    Marketplace { publisher: String, offer: String, sku: String, version: String },
    /// A resource id: a managed image or a gallery image version.
    Id(String),
}

/// How to reach Azure and what to launch there.
#[derive(Clone, Debug)]
pub struct AzureSettings {
    pub subscription_id: String,
    pub resource_group: String,
    /// The region, such as `eastus`.
    pub location: String,
    /// Azure Resource Manager's root; `None` for [`MANAGEMENT_ENDPOINT_DEFAULT`]. Tests point it at a local server.
    pub management_endpoint: Option<String>,
    /// Microsoft Entra ID's root; `None` for [`LOGIN_ENDPOINT_DEFAULT`].
    pub login_endpoint: Option<String>,
    pub image: AzureImage,
    pub os_disk_gb: u32,
    /// The subnet the VMs' network interfaces join, as a resource id; it needs outbound access to the Ferry server
    /// (a NAT gateway, for instance).
    pub subnet_id: String,
    pub admin_username: String,
    /// The SSH public key of the admin user: Azure refuses a Linux VM with neither a password nor a key, and Ferry
    /// sets no password.
    pub ssh_public_key: String,
    /// The sizes the pool may launch (such as `Standard_NC4as_T4_v3`), with their prices and zones (`1` to `3`).
    pub instance_types: Vec<InstanceType>,
    /// `None` to look in the environment (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET`), then at the
    /// VM's managed identity.
    pub credentials: Option<AzureCredentials>,
}

/// Settings that cannot work, each with its field and its fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("subscription_id {0:?} is not a subscription id: write its GUID, such as 00000000-0000-0000-0000-000000000000 (`az account show --query id`)")]
    Subscription(String),
    #[error("resource_group {0:?} is not a resource group name: 1 to 90 letters, digits, '-', '_', '.', '(' and ')', not ending in '.'")]
    ResourceGroup(String),
    #[error("location {0:?} is not an Azure region name: write one such as eastus (`az account list-locations --query [].name`)")]
    Location(String),
    #[error("{field} {endpoint:?} is not an http(s) URL ({reason}): write one such as {example}")]
    Endpoint { field: &'static str, endpoint: String, reason: String, example: &'static str },
    #[error("image: {0}")]
    Image(String),
    #[error("os_disk_gb {0} is too small: write {OS_DISK_GB_MIN} or more")]
    OsDisk(u32),
    #[error("subnet_id {0:?} is not a subnet's resource id: write /subscriptions/…/resourceGroups/…/providers/Microsoft.Network/virtualNetworks/…/subnets/…")]
    Subnet(String),
    #[error("admin_username {0:?} is not a Linux user name Azure accepts: 1 to 32 lowercase letters, digits, '-' and '_', not root or admin")]
    AdminUsername(String),
    #[error("ssh_public_key is not an OpenSSH public key: paste one line such as `ssh-ed25519 AAAA… you@host` (Azure needs a key or a password, and Ferry sets no password)")]
    SshPublicKey,
    #[error("instance type {name:?}: {problem}")]
    InstanceType { name: String, problem: String },
    #[error(transparent)]
    Credentials(#[from] AzureCredentialsError),
}

/// The Azure provider of one resource group.
pub struct Azure {
    settings: AzureSettings,
    credentials: AzureCredentials,
    management: String,
    /// `{management}/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines`.
    vms_url: String,
    token_url: String,
    http: reqwest::Client,
    tokens: TokenCache,
    poll_wait_default: Duration,
}

/// Shows where the credentials came from, never them.
impl fmt::Debug for Azure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Azure")
            .field("vms_url", &self.vms_url)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Azure {
    /// Checks the settings and finds the credentials (explicit, else the environment, else the managed identity).
    pub fn new(mut settings: AzureSettings) -> Result<Azure, SettingsError> {
        let credentials = auth::resolve(settings.credentials.take())?;
        Azure::with_credentials(settings, credentials)
    }

    /// As [`Azure::new`], with credentials already resolved.
    pub fn with_credentials(
        mut settings: AzureSettings,
        credentials: AzureCredentials,
    ) -> Result<Azure, SettingsError> {
        settings.credentials = None;
        check(&settings)?;
        credentials.check()?;
        let endpoint = |field, text: Option<&String>, example: &'static str| {
            let text = text.cloned().unwrap_or_else(|| example.to_string());
            rest::endpoint(&text).map_err(|reason| SettingsError::Endpoint { field, endpoint: text, reason, example })
        };
        let management =
            endpoint("management_endpoint", settings.management_endpoint.as_ref(), MANAGEMENT_ENDPOINT_DEFAULT)?;
        let login = endpoint("login_endpoint", settings.login_endpoint.as_ref(), LOGIN_ENDPOINT_DEFAULT)?;
        let http = rest::client().map_err(|reason| SettingsError::Endpoint {
            field: "management_endpoint",
            endpoint: management.clone(),
            reason,
            example: MANAGEMENT_ENDPOINT_DEFAULT,
        })?;
        let vms_url = format!(
            "{management}/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines",
            settings.subscription_id, settings.resource_group
        );
        let token_url = match &credentials.kind {
            auth::Kind::ClientSecret { tenant_id, .. } => format!("{login}/{tenant_id}/oauth2/v2.0/token"),
            auth::Kind::ManagedIdentity { endpoint, client_id } => auth::imds_token_url(endpoint, client_id.as_deref())
                .map_err(|reason| {
                    SettingsError::Credentials(AzureCredentialsError::ImdsEndpoint {
                        endpoint: endpoint.clone(),
                        reason,
                    })
                })?
                .to_string(),
        };
        Ok(Azure {
            settings,
            credentials,
            management,
            vms_url,
            token_url,
            http,
            tokens: TokenCache::default(),
            poll_wait_default: POLL_WAIT_DEFAULT,
        })
    }

    /// Waits `wait` between polls of an operation that names no wait of its own, instead of five seconds.
    pub fn with_poll_wait_default(mut self, wait: Duration) -> Azure {
        self.poll_wait_default = wait.min(POLL_WAIT_MAX);
        self
    }

    async fn token(&self) -> Result<Bearer, ProviderError> {
        if let Some(token) = self.tokens.get(Instant::now()) {
            return Ok(token);
        }
        let (token, lifetime) = match &self.credentials.kind {
            auth::Kind::ClientSecret { client_id, client_secret, .. } => {
                let form = [
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("client_secret", client_secret.as_str()),
                    ("scope", SCOPE),
                ];
                oauth::fetch(PROVIDER, &self.http, &self.token_url, &form).await?
            }
            auth::Kind::ManagedIdentity { endpoint, .. } => {
                let service = format!("the instance metadata service at {endpoint}");
                let metadata = oauth::Metadata {
                    provider: PROVIDER,
                    service: &service,
                    looked: auth::IMDS_LOOKED,
                    instead: auth::IMDS_INSTEAD,
                };
                // The header tells the service that the request was not forwarded from elsewhere.
                oauth::fetch_metadata(&metadata, self.http.get(&self.token_url).header("metadata", "true")).await?
            }
        };
        self.tokens.put(token.clone(), lifetime, Instant::now());
        Ok(token)
    }

    /// Sends one call with the bearer token; a failing status becomes the error it stands for, and with
    /// `missing_ok` a 404 is `None`.
    async fn call(
        &self,
        call: &str,
        request: reqwest::RequestBuilder,
        missing_ok: bool,
    ) -> Result<Option<rest::Answer>, ProviderError> {
        let token = self.token().await?;
        let request = request.bearer_auth(&token.0).header("accept", "application/json");
        let answer = rest::send(PROVIDER, call, request, Some(REQUEST_ID_HEADER)).await?;
        if (200..300).contains(&answer.status) {
            return Ok(Some(answer));
        }
        if answer.status == 404 && missing_ok {
            return Ok(None);
        }
        if answer.status == 401 {
            self.tokens.clear();
        }
        let err = body::error(answer.status, &answer.body, answer.request_id);
        tracing::debug!(call, status = answer.status, code = %err.refusal().code, "Azure refused a call");
        Err(err)
    }

    fn vm_url(&self, name: &str) -> String {
        format!("{}/{name}", self.vms_url)
    }

    async fn launch_one(&self, request: LaunchRequest) -> Result<Instance, ProviderError> {
        self.check_launch(&request)?;
        let name = rest::machine_name(&request.installation, &request.node, NAME_CHARS_MAX);
        let vm = body::virtual_machine(&self.settings, &name, &request);
        let put = self.http.put(self.vm_url(&name)).query(&[("api-version", API_VERSION)]).json(&vm);
        let answer = self.call("Virtual Machines - Create Or Update", put, false).await?.expect("not missing_ok");
        if let Some(operation) = answer.async_operation.clone() {
            if let Err(failure) = self.wait(&operation, answer.retry_after_s).await {
                if !failure.is_transient() || failure.refusal().code != "NoAnswer" {
                    // The VM exists in a failed state: it goes, so that a failed launch leaves nothing behind.
                    if let Err(e) = self.terminate_all(std::slice::from_ref(&name)).await {
                        tracing::warn!(vm = %name, error = %e, "could not delete a VM whose creation failed");
                    }
                }
                return Err(failure);
            }
        }
        let get = self.http.get(self.vm_url(&name)).query(&[("api-version", API_VERSION)]);
        let answer = self.call("Virtual Machines - Get", get, false).await?.expect("not missing_ok");
        let instance = body::vm_answer(&answer.body)?;
        tracing::info!(node = %request.node, pool = %request.pool, id = %instance.id, "launched an Azure VM");
        Ok(instance)
    }

    /// Polls a long-running operation until it ends, waiting what Azure's `Retry-After` says between polls. Gives
    /// up quietly after [`OPERATION_POLLS_MAX`] polls: the VM exists and listing will show how it ends.
    async fn wait(&self, url: &str, mut retry_after_s: Option<u64>) -> Result<(), ProviderError> {
        if !rest::same_origin(url, &self.management) {
            // The token goes only to Azure Resource Manager itself.
            tracing::warn!("Azure named an operation URL outside its management endpoint: not polled");
            return Ok(());
        }
        for _ in 0..OPERATION_POLLS_MAX {
            let pause = retry_after_s.map_or(self.poll_wait_default, Duration::from_secs).min(POLL_WAIT_MAX);
            tokio::time::sleep(pause).await;
            let answer = self.call("the operation status", self.http.get(url), false).await?.expect("not missing_ok");
            let status = body::operation_status(&answer.body)?;
            if !status.in_progress() {
                return status.failure(answer.request_id).map_or(Ok(()), Err);
            }
            retry_after_s = answer.retry_after_s;
        }
        Ok(())
    }

    /// Refuses, without a call, what Azure would refuse for certain or what Ferry never offered.
    fn check_launch(&self, request: &LaunchRequest) -> Result<(), ProviderError> {
        let Some(offered) = self.settings.instance_types.iter().find(|t| t.name == request.instance_type) else {
            return Err(refused(PROVIDER, format!("VM size {} is not one the pool offers", request.instance_type)));
        };
        if !offered.zones.contains(&request.zone) {
            return Err(refused(PROVIDER, format!("VM size {} is not offered in zone {}", offered.name, request.zone)));
        }
        let encoded = request.user_data.len().div_ceil(3) * 4;
        if encoded > CUSTOM_DATA_BASE64_BYTES_MAX {
            return Err(refused(
                PROVIDER,
                format!("the start-up script is {encoded} bytes in base64, more than Azure's {CUSTOM_DATA_BASE64_BYTES_MAX}"),
            ));
        }
        if request.tags().values().any(|v| v.chars().count() > 256) {
            return Err(refused(PROVIDER, "a tag value is longer than Azure's 256 characters".into()));
        }
        Ok(())
    }

    async fn list_all(&self, installation: &str) -> Result<Vec<Instance>, ProviderError> {
        let mut instances = Vec::new();
        let mut request = self.http.get(&self.vms_url).query(&[("api-version", API_VERSION)]);
        for _ in 0..LIST_PAGES_MAX {
            let answer = self.call("Virtual Machines - List", request, false).await?.expect("not missing_ok");
            let page = body::page(&answer.body, installation)?;
            instances.extend(page.instances);
            match page.next_link {
                // The next link carries its own query (the api-version and a skip token).
                Some(link) if rest::same_origin(&link, &self.management) => request = self.http.get(link),
                Some(_) => {
                    return Err(rest::malformed(
                        PROVIDER,
                        "the next page's link is outside the management endpoint".into(),
                    ))
                }
                None => return Ok(instances),
            }
        }
        Err(refused(
            PROVIDER,
            format!("more than {LIST_PAGES_MAX} pages of VMs in the resource group: listing stopped"),
        ))
    }

    async fn terminate_all(&self, ids: &[String]) -> Result<(), ProviderError> {
        for name in ids {
            if !is_vm_name(name) {
                return Err(refused(PROVIDER, format!("{name:?} is not an Azure VM name")));
            }
            let delete = self.http.delete(self.vm_url(name)).query(&[("api-version", API_VERSION)]);
            // 200, 202 and 204 are accepted; 404, a VM already gone, is what terminating wants.
            self.call("Virtual Machines - Delete", delete, true).await?;
        }
        Ok(())
    }
}

impl Provider for Azure {
    fn kind(&self) -> &'static str {
        "azure"
    }

    fn instance_types(&self) -> &[InstanceType] {
        &self.settings.instance_types
    }

    fn launch(&self, request: LaunchRequest) -> ProviderFuture<'_, Instance> {
        Box::pin(self.launch_one(request))
    }

    fn list<'a>(&'a self, installation: &'a str) -> ProviderFuture<'a, Vec<Instance>> {
        Box::pin(self.list_all(installation))
    }

    fn terminate<'a>(&'a self, ids: &'a [String]) -> ProviderFuture<'a, ()> {
        Box::pin(self.terminate_all(ids))
    }
}

/// A VM name Ferry may put in a URL: letters, digits, `-`, `_` and `.`, at most 64.
fn is_vm_name(name: &str) -> bool {
    (1..=NAME_CHARS_MAX).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn check(s: &AzureSettings) -> Result<(), SettingsError> {
    if !is_guid(&s.subscription_id) {
        return Err(SettingsError::Subscription(s.subscription_id.clone()));
    }
    let rg = &s.resource_group;
    if !(1..=90).contains(&rg.len())
        || rg.ends_with('.')
        || !rg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'(' | b')'))
    {
        return Err(SettingsError::ResourceGroup(rg.clone()));
    }
    if s.location.is_empty() || !s.location.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(SettingsError::Location(s.location.clone()));
    }
    match &s.image {
        AzureImage::Marketplace { publisher, offer, sku, version } => {
            if [publisher, offer, sku, version].iter().any(|p| p.trim().is_empty()) {
                return Err(SettingsError::Image(
                    "publisher, offer, sku and version are all needed, such as Canonical, ubuntu-24_04-lts, server, latest".into(),
                ));
            }
        }
        AzureImage::Id(id) => {
            if !id.starts_with("/subscriptions/") {
                return Err(SettingsError::Image(format!("{id:?} is not a resource id: write /subscriptions/…")));
            }
        }
    }
    if s.os_disk_gb < OS_DISK_GB_MIN {
        return Err(SettingsError::OsDisk(s.os_disk_gb));
    }
    if !s.subnet_id.starts_with("/subscriptions/")
        || !s.subnet_id.contains("/providers/Microsoft.Network/virtualNetworks/")
        || !s.subnet_id.contains("/subnets/")
    {
        return Err(SettingsError::Subnet(s.subnet_id.clone()));
    }
    let user = &s.admin_username;
    if !(1..=32).contains(&user.len())
        || ["root", "admin", "administrator"].contains(&user.as_str())
        || !user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        || !user.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(SettingsError::AdminUsername(user.clone()));
    }
    let key = s.ssh_public_key.trim();
    if !(key.starts_with("ssh-") || key.starts_with("ecdsa-"))
        || key.split_whitespace().count() < 2
        || key.contains('\n')
    {
        return Err(SettingsError::SshPublicKey);
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &s.instance_types {
        let problem = |problem: String| Err(SettingsError::InstanceType { name: t.name.clone(), problem });
        if t.name.is_empty() || !t.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || !seen.insert(&t.name)
        {
            return problem(
                "the name is not a VM size or is listed twice: list each once, such as Standard_NC4as_T4_v3".into(),
            );
        }
        if !t.price_hour.is_finite() || t.price_hour < 0.0 {
            return problem(format!("price_hour {} is not a price: write zero or more, such as 0.526", t.price_hour));
        }
        if t.zones.is_empty() {
            return problem("no zones: list at least one of the region's availability zones, 1, 2 or 3".into());
        }
        if let Some(zone) = t.zones.iter().find(|z| !matches!(z.as_str(), "1" | "2" | "3")) {
            return problem(format!("zone {zone:?} is not an availability zone: write 1, 2 or 3"));
        }
        if t.gpus == 0 && t.gpu_model.is_some() || t.gpus > 0 && t.gpu_model.is_none() {
            return problem("gpus and gpu_model disagree: give both or neither".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Market;

    pub(super) fn settings() -> AzureSettings {
        AzureSettings {
            subscription_id: "00000000-0000-4000-8000-000000000000".into(),
            resource_group: "ferry".into(),
            location: "eastus".into(),
            management_endpoint: Some("http://127.0.0.1:5000".into()),
            login_endpoint: Some("http://127.0.0.1:5000".into()),
            image: AzureImage::Marketplace {
                publisher: "Canonical".into(),
                offer: "ubuntu-24_04-lts".into(),
                sku: "server".into(),
                version: "latest".into(),
            },
            os_disk_gb: 128,
            subnet_id: "/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/ferry/providers/Microsoft.Network/virtualNetworks/ferry/subnets/nodes".into(),
            admin_username: "ferry".into(),
            ssh_public_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFerryTestKeyOnlyForTestsXXXXXXXXXXXXXXXXXXXX ferry@test".into(),
            instance_types: vec![InstanceType {
                name: "Standard_NC4as_T4_v3".into(),
                gpus: 1,
                gpu_model: Some("T4".into()),
                cpu_millis: 4000,
                memory_bytes: 28 << 30,
                price_hour: 0.526,
                market: Market::OnDemand,
                zones: vec!["1".into(), "2".into()],
            }],
            credentials: None,
        }
    }

    fn build(settings: AzureSettings) -> Result<Azure, SettingsError> {
        Azure::with_credentials(settings, AzureCredentials::new("tenant-guid", "client-guid", "s3cr3t"))
    }

    #[test]
    fn urls_default_to_azures() {
        let azure = build(AzureSettings { management_endpoint: None, login_endpoint: None, ..settings() }).unwrap();
        assert_eq!(azure.vms_url, "https://management.azure.com/subscriptions/00000000-0000-4000-8000-000000000000/resourceGroups/ferry/providers/Microsoft.Compute/virtualMachines");
        assert_eq!(azure.token_url, "https://login.microsoftonline.com/tenant-guid/oauth2/v2.0/token");
    }

    #[test]
    fn bad_settings_are_named_with_their_fix() {
        let mut cases = vec![
            AzureSettings { subscription_id: "my-sub".into(), ..settings() },
            AzureSettings { resource_group: "a/b".into(), ..settings() },
            AzureSettings { location: "East US".into(), ..settings() },
            AzureSettings { management_endpoint: Some("ftp://x".into()), ..settings() },
            AzureSettings { image: AzureImage::Id("ubuntu".into()), ..settings() },
            AzureSettings { os_disk_gb: 8, ..settings() },
            AzureSettings { subnet_id: "nodes".into(), ..settings() },
            AzureSettings { admin_username: "root".into(), ..settings() },
            AzureSettings { ssh_public_key: "".into(), ..settings() },
        ];
        let mut s = settings();
        s.instance_types[0].zones = vec!["eastus-1".into()];
        cases.push(s);
        let got: Vec<String> = cases.into_iter().map(|s| build(s).unwrap_err().to_string()).collect();
        expect_test::expect![[r#"
            [
                "subscription_id \"my-sub\" is not a subscription id: write its GUID, such as 00000000-0000-0000-0000-000000000000 (`az account show --query id`)",
                "resource_group \"a/b\" is not a resource group name: 1 to 90 letters, digits, '-', '_', '.', '(' and ')', not ending in '.'",
                "location \"East US\" is not an Azure region name: write one such as eastus (`az account list-locations --query [].name`)",
                "management_endpoint \"ftp://x\" is not an http(s) URL (it must be http or https, with a host and without a query): write one such as https://management.azure.com",
                "image: \"ubuntu\" is not a resource id: write /subscriptions/…",
                "os_disk_gb 8 is too small: write 30 or more",
                "subnet_id \"nodes\" is not a subnet's resource id: write /subscriptions/…/resourceGroups/…/providers/Microsoft.Network/virtualNetworks/…/subnets/…",
                "admin_username \"root\" is not a Linux user name Azure accepts: 1 to 32 lowercase letters, digits, '-' and '_', not root or admin",
                "ssh_public_key is not an OpenSSH public key: paste one line such as `ssh-ed25519 AAAA… you@host` (Azure needs a key or a password, and Ferry sets no password)",
                "instance type \"Standard_NC4as_T4_v3\": zone \"eastus-1\" is not an availability zone: write 1, 2 or 3",
            ]
        "#]].assert_debug_eq(&got);
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", build(settings()).unwrap());
        assert!(!shown.contains("s3cr3t") && !shown.contains("client-guid"), "{shown}");
    }
}
