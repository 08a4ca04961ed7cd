//! Google Compute Engine through its REST API v1 (`https://compute.googleapis.com/compute/v1/`), JSON over reqwest,
//! with OAuth 2.0 bearer tokens (`auth.rs`).
//!
//! Written to Google's documentation; no local emulator of Compute Engine exists, so the tests play it with a local
//! server that answers in the documented formats and checks every request against them.
//!
//! - launch: `instances.insert` in the request's zone, then `zoneOperations.wait` until the operation is done
//!   (capacity and quota failures are reported there, not by the insert), then `instances.get`.
//! - list: `aggregated/instances.list` filtered on the `ferry-installation` label, page by page.
//! - terminate: `instances.delete`, not waited for; an instance already gone is fine.
//!
//! An instance's provider id is `{zone}/{name}`: Compute Engine names instances per zone. This module must never
//! retry (the caller backs off) and never log or return a credential, a token or the user data.

mod auth;
mod body;

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use auth::{resolve, resolve_with, GoogleCredentials, GoogleCredentialsError, GoogleCredentialsSource, SCOPE};

use crate::oauth::{self, Bearer, TokenCache};
use crate::rest::{self, refused};
use crate::{Instance, InstanceType, LaunchRequest, Provider, ProviderError, ProviderFuture};

/// How messages name this provider.
pub(crate) const PROVIDER: &str = "Compute Engine";
/// The API's root when the settings name none.
pub const ENDPOINT_DEFAULT: &str = "https://compute.googleapis.com";
/// Instances per aggregated list page by default, which is also the most Compute Engine gives.
const LIST_PAGE_SIZE: u32 = 500;
/// The most pages one listing reads; more means something is wrong.
const LIST_PAGES_MAX: usize = 200;
/// `zoneOperations.wait` answers after at most about two minutes, done or not; a launch waits this many times
/// before it returns the machine as it is (it exists: the operation is under way).
const OPERATION_WAITS_MAX: usize = 5;
/// How long one `wait` call may take: Compute Engine's two minutes, and some slack.
const OPERATION_WAIT_TIMEOUT: Duration = Duration::from_secs(150);
/// The most a metadata value may hold, which bounds the start-up script.
const USER_DATA_BYTES_MAX: usize = 256 * 1024;
/// Compute Engine's longest instance name.
const NAME_CHARS_MAX: usize = 63;
/// The smallest boot disk Ferry asks for; the public Linux images need 10 GB.
const BOOT_DISK_GB_MIN: u32 = 10;

/// How to reach Compute Engine and what to launch there.
#[derive(Clone, Debug)]
pub struct GceSettings {
    /// The project id, such as `ferry-prod-123456`.
    pub project: String,
    /// The API's root; `None` for [`ENDPOINT_DEFAULT`]. Tests point it at a local server.
    pub endpoint: Option<String>,
    /// The boot disk's `sourceImage`, such as `projects/debian-cloud/global/images/family/debian-12`.
    pub image: String,
    pub boot_disk_gb: u32,
    /// The VPC network, such as `global/networks/default`.
    pub network: String,
    /// The subnetwork, such as `regions/us-central1/subnetworks/ferry`; `None` for the network's (auto mode).
    pub subnetwork: Option<String>,
    /// Whether each machine gets an ephemeral external address (`ONE_TO_ONE_NAT`) to reach the server; without one
    /// the subnetwork needs Cloud NAT.
    pub external_ip: bool,
    /// The accelerator to attach to each machine type that needs one attached (N1 types: such as
    /// `n1-standard-8` → `nvidia-tesla-t4`), as many as the type's `gpus`. A2, A3 and G2 types come with theirs.
    pub accelerator_by_type: std::collections::BTreeMap<String, String>,
    /// The types the pool may launch, with their prices and zones (such as `us-central1-b`).
    pub instance_types: Vec<InstanceType>,
    /// `None` to look in the environment (`GOOGLE_OAUTH_ACCESS_TOKEN`, `GOOGLE_APPLICATION_CREDENTIALS`), then at the
    /// metadata server.
    pub credentials: Option<GoogleCredentials>,
}

/// Settings that cannot work, each with its field and its fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error(
        "project {0:?} is not a Google Cloud project id: write the id (6 to 30 lowercase letters, digits and hyphens, \
         such as ferry-prod-123456), not its name or number"
    )]
    Project(String),
    #[error("endpoint {endpoint:?} is not an http(s) URL ({reason}): write one such as {ENDPOINT_DEFAULT}")]
    Endpoint { endpoint: String, reason: String },
    #[error(
        "image is empty: name the boot disk's image, such as projects/debian-cloud/global/images/family/debian-12"
    )]
    Image,
    #[error("boot_disk_gb {0} is too small: write {BOOT_DISK_GB_MIN} or more")]
    BootDisk(u32),
    #[error("network is empty: name the VPC network, such as global/networks/default")]
    Network,
    #[error("instance type {name:?}: {problem}")]
    InstanceType { name: String, problem: String },
    #[error(transparent)]
    Credentials(#[from] GoogleCredentialsError),
}

/// The Compute Engine provider of one project.
pub struct Gce {
    settings: GceSettings,
    credentials: GoogleCredentials,
    /// `{endpoint}/compute/v1/projects/{project}`.
    project_url: String,
    http: reqwest::Client,
    tokens: TokenCache,
    list_page_size: u32,
}

/// Shows where the credentials came from, never them.
impl fmt::Debug for Gce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gce")
            .field("project", &self.settings.project)
            .field("project_url", &self.project_url)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Gce {
    /// Checks the settings and finds the credentials (explicit, else the environment, else the metadata server).
    pub fn new(mut settings: GceSettings) -> Result<Gce, SettingsError> {
        let credentials = auth::resolve(settings.credentials.take())?;
        Gce::with_credentials(settings, credentials)
    }

    /// As [`Gce::new`], with credentials already resolved.
    pub fn with_credentials(mut settings: GceSettings, credentials: GoogleCredentials) -> Result<Gce, SettingsError> {
        settings.credentials = None;
        check(&settings)?;
        let text = settings.endpoint.clone().unwrap_or_else(|| ENDPOINT_DEFAULT.to_string());
        let endpoint_error = |reason: String| SettingsError::Endpoint { endpoint: text.clone(), reason };
        let endpoint = rest::endpoint(&text).map_err(endpoint_error)?;
        let http = rest::client().map_err(endpoint_error)?;
        let project_url = format!("{endpoint}/compute/v1/projects/{}", settings.project);
        Ok(Gce {
            settings,
            credentials,
            project_url,
            http,
            tokens: TokenCache::default(),
            list_page_size: LIST_PAGE_SIZE,
        })
    }

    /// Lists in pages of `size` instances (1 to 500) instead of 500: several pages for a test.
    pub fn with_list_page_size(mut self, size: u32) -> Gce {
        self.list_page_size = size.clamp(1, LIST_PAGE_SIZE);
        self
    }

    /// A token for the next call: the explicit one, else the cached one, else a new one from the key or the
    /// metadata server.
    async fn token(&self) -> Result<Bearer, ProviderError> {
        if let Some(token) = self.tokens.get(Instant::now()) {
            return Ok(token);
        }
        let (token, lifetime) = match &self.credentials.kind {
            auth::Kind::AccessToken(token) => return Ok(Bearer(token.clone())),
            auth::Kind::ServiceAccount(key) => {
                let now_s = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let jwt = auth::assertion(key, now_s).map_err(|_| {
                    refused(PROVIDER, "the service account key could not sign the sign-in request".into())
                })?;
                let form = [("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", jwt.as_str())];
                oauth::fetch(PROVIDER, &self.http, &key.token_uri, &form).await?
            }
            auth::Kind::MetadataServer { service, url } => {
                let metadata = oauth::Metadata {
                    provider: PROVIDER,
                    service,
                    looked: auth::METADATA_LOOKED,
                    instead: auth::METADATA_INSTEAD,
                };
                // The header tells the server that the request was not forwarded from elsewhere.
                oauth::fetch_metadata(&metadata, self.http.get(url).header("metadata-flavor", "Google")).await?
            }
        };
        self.tokens.put(token.clone(), lifetime, Instant::now());
        Ok(token)
    }

    /// Sends one call with the bearer token and returns the answer's body, or the error it stands for. `call`
    /// names it in errors; `missing_ok` makes a 404 answer `None`.
    async fn call(
        &self,
        call: &str,
        request: reqwest::RequestBuilder,
        missing_ok: bool,
    ) -> Result<Option<String>, ProviderError> {
        let token = self.token().await?;
        let request = request.bearer_auth(&token.0).header("accept", "application/json");
        let answer = rest::send(PROVIDER, call, request, None).await?;
        if (200..300).contains(&answer.status) {
            return Ok(Some(answer.body));
        }
        if answer.status == 404 && missing_ok {
            return Ok(None);
        }
        let err = body::error(answer.status, &answer.body);
        if answer.status == 401 {
            // A token revoked or expired early: the next call makes a new one.
            self.tokens.clear();
        }
        tracing::debug!(call, status = answer.status, code = %err.refusal().code, "Compute Engine refused a call");
        Err(err)
    }

    async fn launch_one(&self, request: LaunchRequest) -> Result<Instance, ProviderError> {
        let offered = self.check_launch(&request)?;
        let zone = &request.zone;
        let name = rest::machine_name(&request.installation, &request.node, NAME_CHARS_MAX);
        let instance = body::instance(&self.settings, offered, &name, &request);
        let mut insert = self.http.post(format!("{}/zones/{zone}/instances", self.project_url)).json(&instance);
        if let Some(token) = &request.client_token {
            // Compute Engine takes a UUID: a repeated insert with the same one answers the first operation.
            insert = insert.query(&[("requestId", rest::uuid_from(token))]);
        }
        let answer = self.call("instances.insert", insert, false).await?.unwrap_or_default();
        let mut operation = body::operation(&answer)?;
        for _ in 0..OPERATION_WAITS_MAX {
            if let Some(failure) = operation.failure() {
                return Err(failure);
            }
            if operation.done() {
                break;
            }
            let wait = self
                .http
                .post(format!("{}/zones/{zone}/operations/{}/wait", self.project_url, operation.name))
                .timeout(OPERATION_WAIT_TIMEOUT);
            operation = body::operation(&self.call("zoneOperations.wait", wait, false).await?.unwrap_or_default())?;
        }
        let get = self.http.get(format!("{}/zones/{zone}/instances/{name}", self.project_url));
        let instance = body::instance_answer(&self.call("instances.get", get, false).await?.unwrap_or_default())?;
        tracing::info!(node = %request.node, pool = %request.pool, id = %instance.id, "launched a Compute Engine instance");
        Ok(instance)
    }

    /// Refuses, without a call, what Compute Engine would refuse for certain or what Ferry never offered.
    fn check_launch(&self, request: &LaunchRequest) -> Result<&InstanceType, ProviderError> {
        let Some(offered) = self.settings.instance_types.iter().find(|t| t.name == request.instance_type) else {
            return Err(refused(
                PROVIDER,
                format!("instance type {} is not one the pool offers", request.instance_type),
            ));
        };
        if !offered.zones.contains(&request.zone) {
            return Err(refused(
                PROVIDER,
                format!("instance type {} is not offered in zone {}", offered.name, request.zone),
            ));
        }
        if request.user_data.len() > USER_DATA_BYTES_MAX {
            return Err(refused(
                PROVIDER,
                format!(
                    "the start-up script has {} bytes, more than a metadata value's {USER_DATA_BYTES_MAX}",
                    request.user_data.len()
                ),
            ));
        }
        Ok(offered)
    }

    async fn list_all(&self, installation: &str) -> Result<Vec<Instance>, ProviderError> {
        let mut instances = Vec::new();
        let mut page_token: Option<String> = None;
        for _ in 0..LIST_PAGES_MAX {
            let mut query = vec![
                ("filter", body::installation_filter(installation)),
                ("maxResults", self.list_page_size.to_string()),
            ];
            if let Some(token) = page_token.take() {
                query.push(("pageToken", token));
            }
            let list = self.http.get(format!("{}/aggregated/instances", self.project_url)).query(&query);
            let page = body::aggregated_page(
                &self.call("instances.aggregatedList", list, false).await?.unwrap_or_default(),
                installation,
            )?;
            instances.extend(page.instances);
            match page.next_page_token {
                Some(token) => page_token = Some(token),
                None => return Ok(instances),
            }
        }
        Err(refused(
            PROVIDER,
            format!(
                "more than {} pages of instances are labelled {}={}: listing stopped",
                LIST_PAGES_MAX,
                crate::TAG_INSTALLATION,
                body::label_value(installation)
            ),
        ))
    }

    async fn terminate_all(&self, ids: &[String]) -> Result<(), ProviderError> {
        for id in ids {
            let Some((zone, name)) = id.split_once('/').filter(|(z, n)| is_name(z) && is_name(n)) else {
                return Err(refused(PROVIDER, format!("{id:?} is not a Compute Engine instance id (zone/name)")));
            };
            let delete = self.http.delete(format!("{}/zones/{zone}/instances/{name}", self.project_url));
            // An instance already gone is what terminating wants.
            if let Some(answer) = self.call("instances.delete", delete, true).await? {
                if let Some(failure) = body::operation(&answer)?.failure() {
                    return Err(failure);
                }
            }
        }
        Ok(())
    }
}

impl Provider for Gce {
    fn kind(&self) -> &'static str {
        "gcp"
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

/// A Compute Engine name (zones, instances, machine types): lowercase letters, digits and hyphens, starting with a
/// letter, at most 63.
fn is_name(s: &str) -> bool {
    (1..=NAME_CHARS_MAX).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check(settings: &GceSettings) -> Result<(), SettingsError> {
    let project = &settings.project;
    let project_ok = (6..=30).contains(&project.len())
        && project.starts_with(|c: char| c.is_ascii_lowercase())
        && !project.ends_with('-')
        && project.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !project_ok {
        return Err(SettingsError::Project(project.clone()));
    }
    if settings.image.trim().is_empty() {
        return Err(SettingsError::Image);
    }
    if settings.boot_disk_gb < BOOT_DISK_GB_MIN {
        return Err(SettingsError::BootDisk(settings.boot_disk_gb));
    }
    if settings.network.trim().is_empty() {
        return Err(SettingsError::Network);
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &settings.instance_types {
        let problem = |problem: String| Err(SettingsError::InstanceType { name: t.name.clone(), problem });
        if !is_name(&t.name) || !seen.insert(&t.name) {
            return problem(
                "the name is not a machine type or is listed twice: list each once, such as n1-standard-8".into(),
            );
        }
        if !t.price_hour.is_finite() || t.price_hour < 0.0 {
            return problem(format!("price_hour {} is not a price: write zero or more, such as 0.35", t.price_hour));
        }
        if t.zones.is_empty() {
            return problem("no zones: list at least one, such as us-central1-b".into());
        }
        if let Some(zone) = t.zones.iter().find(|z| !is_name(z) || z.split('-').count() != 3) {
            return problem(format!("zone {zone:?} is not a Compute Engine zone: write one such as us-central1-b"));
        }
        if t.gpus == 0 && t.gpu_model.is_some() || t.gpus > 0 && t.gpu_model.is_none() {
            return problem("gpus and gpu_model disagree: give both or neither".into());
        }
        if let Some(accelerator) = settings.accelerator_by_type.get(&t.name) {
            if t.gpus == 0 || !is_name(accelerator) {
                return problem(format!(
                    "accelerator {accelerator:?} needs gpus above zero and an accelerator type such as nvidia-tesla-t4"
                ));
            }
        }
    }
    if let Some(name) = settings.accelerator_by_type.keys().find(|n| !seen.contains(n)) {
        return Err(SettingsError::InstanceType {
            name: name.clone(),
            problem: "accelerator_by_type names a type the pool does not offer: list it in instance_types".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Market;

    pub(super) fn settings() -> GceSettings {
        GceSettings {
            project: "ferry-test".into(),
            endpoint: Some("http://127.0.0.1:5000".into()),
            image: "projects/debian-cloud/global/images/family/debian-12".into(),
            boot_disk_gb: 100,
            network: "global/networks/default".into(),
            subnetwork: None,
            external_ip: true,
            accelerator_by_type: [("n1-standard-8".to_string(), "nvidia-tesla-t4".to_string())].into(),
            instance_types: vec![InstanceType {
                name: "n1-standard-8".into(),
                gpus: 1,
                gpu_model: Some("T4".into()),
                cpu_millis: 8000,
                memory_bytes: 30 << 30,
                price_hour: 0.73,
                market: Market::OnDemand,
                zones: vec!["us-central1-b".into(), "us-central1-c".into()],
            }],
            credentials: None,
        }
    }

    fn build(settings: GceSettings) -> Result<Gce, SettingsError> {
        Gce::with_credentials(settings, GoogleCredentials::access_token("ya29.secret"))
    }

    #[test]
    fn the_endpoint_defaults_to_googles() {
        let gce = build(GceSettings { endpoint: None, ..settings() }).unwrap();
        assert_eq!(gce.project_url, "https://compute.googleapis.com/compute/v1/projects/ferry-test");
        let gce = build(GceSettings { endpoint: Some("http://127.0.0.1:5000/".into()), ..settings() }).unwrap();
        assert_eq!(gce.project_url, "http://127.0.0.1:5000/compute/v1/projects/ferry-test");
    }

    #[test]
    fn bad_settings_are_named_with_their_fix() {
        let mut cases = vec![
            GceSettings { project: "My Project".into(), ..settings() },
            GceSettings { endpoint: Some("ftp://x".into()), ..settings() },
            GceSettings { image: "".into(), ..settings() },
            GceSettings { boot_disk_gb: 5, ..settings() },
            GceSettings { network: " ".into(), ..settings() },
        ];
        let mut s = settings();
        s.instance_types[0].zones = vec!["us-central1".into()];
        cases.push(s);
        let mut s = settings();
        s.instance_types[0].price_hour = f64::NAN;
        cases.push(s);
        let mut s = settings();
        s.accelerator_by_type.insert("a2-highgpu-1g".into(), "nvidia-tesla-a100".into());
        cases.push(s);
        let got: Vec<String> = cases.into_iter().map(|s| build(s).unwrap_err().to_string()).collect();
        expect_test::expect![[r#"
            [
                "project \"My Project\" is not a Google Cloud project id: write the id (6 to 30 lowercase letters, digits and hyphens, such as ferry-prod-123456), not its name or number",
                "endpoint \"ftp://x\" is not an http(s) URL (it must be http or https, with a host and without a query): write one such as https://compute.googleapis.com",
                "image is empty: name the boot disk's image, such as projects/debian-cloud/global/images/family/debian-12",
                "boot_disk_gb 5 is too small: write 10 or more",
                "network is empty: name the VPC network, such as global/networks/default",
                "instance type \"n1-standard-8\": zone \"us-central1\" is not a Compute Engine zone: write one such as us-central1-b",
                "instance type \"n1-standard-8\": price_hour NaN is not a price: write zero or more, such as 0.35",
                "instance type \"a2-highgpu-1g\": accelerator_by_type names a type the pool does not offer: list it in instance_types",
            ]
        "#]].assert_debug_eq(&got);
    }

    #[test]
    fn debug_shows_no_token() {
        let shown = format!("{:?}", build(settings()).unwrap());
        assert!(!shown.contains("ya29"), "{shown}");
    }
}
