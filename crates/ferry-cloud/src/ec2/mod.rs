//! AWS EC2 through its Query API: form-encoded `POST`s (`Action=RunInstances&Version=2016-11-15&…`) to the
//! regional endpoint, signed with Signature Version 4 (`sign.rs`), answered in XML (`xml.rs`).
//!
//! Not the AWS SDK: `aws-sdk-ec2`'s first release build took about 17 minutes on a 2-core machine, for four calls.
//! This module must never retry (the caller backs off, knowing what else is going on) and never log or return a
//! credential or the user data (which carries a join token).

mod query;
mod sign;
mod xml;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub(crate) use xml::PROVIDER;

use crate::credentials::{self, Credentials, CredentialsError, CredentialsProvider};
use crate::{Instance, InstanceType, LaunchRequest, Provider, ProviderError, ProviderFuture, Refusal};

/// The API version every request names; the XML shapes in `xml.rs` are this version's.
const API_VERSION: &str = "2016-11-15";
/// How long one call may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes an answer may have; a page of 1,000 instances is well under 8 MiB.
const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// Instances per `DescribeInstances` page by default, and the range EC2 allows.
const LIST_PAGE_SIZE: u32 = 1000;
const LIST_PAGE_SIZE_MIN: u32 = 5;
/// The most pages one listing reads: 100,000 machines at the default page size, far past any installation; more
/// means something is wrong.
const LIST_PAGES_MAX: usize = 100;
/// Instance ids per `TerminateInstances` call (EC2 takes at most 1,000).
const TERMINATE_BATCH: usize = 1000;
/// The most user data EC2 takes, before base64.
const USER_DATA_BYTES_MAX: usize = 16 * 1024;

/// How to reach EC2 and what to launch there.
#[derive(Clone, Debug)]
pub struct Ec2Settings {
    /// Such as `us-east-1`.
    pub region: String,
    /// The API's URL; `None` for the region's (`https://ec2.REGION.amazonaws.com`). Tests point it at moto.
    pub endpoint: Option<String>,
    /// The machine image (AMI) every instance boots.
    pub image_id: String,
    /// The types the pool may launch, with their prices (from the pool's configuration).
    pub instance_types: Vec<InstanceType>,
    /// Security groups for the instances; empty for the VPC's default.
    pub security_group_ids: Vec<String>,
    /// The subnet to launch into in each zone; a zone without one gets its default subnet.
    pub subnet_by_zone: BTreeMap<String, String>,
    /// `None` to look in the environment, then the shared credentials file, then the instance's role.
    pub credentials: Option<Credentials>,
}

/// Settings that cannot work, each with its field and its fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("region {0:?} is not an AWS region: write one such as us-east-1")]
    Region(String),
    #[error(
        "endpoint {endpoint:?} is not an http(s) URL ({reason}): write one such as https://ec2.us-east-1.amazonaws.com"
    )]
    Endpoint { endpoint: String, reason: String },
    #[error("image_id is empty: name the AMI the instances boot, such as ami-0abcdef1234567890")]
    ImageId,
    #[error("instance type {name:?}: {problem}")]
    InstanceType { name: String, problem: String },
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// The EC2 provider of one region.
pub struct Ec2 {
    settings: Ec2Settings,
    credentials: CredentialsProvider,
    endpoint: reqwest::Url,
    /// `host[:port]` as the request's `Host` header carries it, and as it is signed.
    host: String,
    http: reqwest::Client,
    list_page_size: u32,
}

/// Shows where the credentials came from, never them.
impl fmt::Debug for Ec2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ec2")
            .field("region", &self.settings.region)
            .field("endpoint", &self.endpoint.as_str())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Ec2 {
    /// Checks the settings and finds the credentials (explicit, else the environment, else the shared file, else
    /// the instance role).
    pub fn new(mut settings: Ec2Settings) -> Result<Ec2, SettingsError> {
        let credentials = credentials::resolve(settings.credentials.take())?;
        Ec2::with_credentials_provider(settings, credentials)
    }

    /// As [`Ec2::new`], with credentials already resolved.
    pub fn with_credentials(settings: Ec2Settings, credentials: Credentials) -> Result<Ec2, SettingsError> {
        Ec2::with_credentials_provider(settings, CredentialsProvider::Static(credentials))
    }

    /// As [`Ec2::new`], with where the credentials come from already resolved ([`credentials::resolve_with`]).
    pub fn with_credentials_provider(
        mut settings: Ec2Settings,
        credentials: CredentialsProvider,
    ) -> Result<Ec2, SettingsError> {
        settings.credentials = None;
        check(&settings)?;
        let endpoint_text =
            settings.endpoint.clone().unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com/", settings.region));
        let endpoint_error = |reason: String| SettingsError::Endpoint { endpoint: endpoint_text.clone(), reason };
        let endpoint = reqwest::Url::parse(&endpoint_text).map_err(|e| endpoint_error(e.to_string()))?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.query().is_some() {
            return Err(endpoint_error("it must be http or https, without a query".into()));
        }
        let Some(host_name) = endpoint.host_str() else { return Err(endpoint_error("it has no host".into())) };
        // `port()` is `None` for the scheme's default port, which the Host header leaves out too.
        let host = match endpoint.port() {
            Some(port) => format!("{host_name}:{port}"),
            None => host_name.to_string(),
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| endpoint_error(format!("no HTTP client: {e}")))?;
        Ok(Ec2 { settings, credentials, endpoint, host, http, list_page_size: LIST_PAGE_SIZE })
    }

    /// Lists in pages of `size` instances (clamped to EC2's 5 to 1,000) instead of 1,000: smaller answers for a
    /// slow link, and several pages for a test.
    pub fn with_list_page_size(mut self, size: u32) -> Ec2 {
        self.list_page_size = size.clamp(LIST_PAGE_SIZE_MIN, LIST_PAGE_SIZE);
        self
    }

    /// Sends one action and returns the answer's body, or the error it stands for.
    async fn call(&self, action: &str, params: &[(String, String)]) -> Result<String, ProviderError> {
        let mut form = vec![format!("Action={}", sign::encode(action)), format!("Version={API_VERSION}")];
        form.extend(params.iter().map(|(k, v)| format!("{}={}", sign::encode(k), sign::encode(v))));
        let body = form.join("&");
        let credentials = self.credentials.current().await?;
        let amz_date = amz_date(time::OffsetDateTime::now_utc());
        let mut headers = vec![
            ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("host", self.host.as_str()),
            ("x-amz-date", amz_date.as_str()),
        ];
        if let Some(token) = &credentials.session_token {
            headers.push(("x-amz-security-token", token.as_str()));
        }
        let authorization = sign::authorization(
            &sign::Signable {
                method: "POST",
                path: self.endpoint.path(),
                query: &[],
                headers: &headers,
                body: body.as_bytes(),
            },
            &sign::Scope { region: &self.settings.region, service: "ec2", amz_date: &amz_date },
            &credentials,
        );
        let mut request = self.http.post(self.endpoint.clone()).header("authorization", authorization).body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| network(action, &e))?;
        let status = response.status().as_u16();
        let text = read_limited(response).await.map_err(|e| network(action, &e))?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            let err = xml::error(status, &text);
            tracing::debug!(action, status, code = %err.refusal().code, "EC2 refused a call");
            Err(err)
        }
    }

    async fn launch_one(&self, request: LaunchRequest) -> Result<Instance, ProviderError> {
        self.check_launch(&request)?;
        let params = query::run_instances(&self.settings, &request);
        let body = self.call("RunInstances", &params).await?;
        let mut instances = xml::run_instances(&body)?;
        if instances.len() != 1 {
            return Err(ProviderError::Transient(Refusal {
                provider: xml::PROVIDER,
                code: "MalformedResponse".into(),
                message: format!("RunInstances for one instance answered {} instances", instances.len()),
                request_id: None,
            }));
        }
        let instance = instances.remove(0);
        tracing::info!(node = %request.node, pool = %request.pool, id = %instance.id, "launched an EC2 instance");
        Ok(instance)
    }

    /// Refuses, without a call, what EC2 would refuse for certain or what Ferry never offered.
    fn check_launch(&self, request: &LaunchRequest) -> Result<(), ProviderError> {
        let invalid = |message: String| {
            Err(ProviderError::Invalid(Refusal {
                provider: xml::PROVIDER,
                code: "FerryRefused".into(),
                message,
                request_id: None,
            }))
        };
        let Some(offered) = self.settings.instance_types.iter().find(|t| t.name == request.instance_type) else {
            return invalid(format!("instance type {} is not one the pool offers", request.instance_type));
        };
        if !offered.zones.contains(&request.zone) {
            return invalid(format!("instance type {} is not offered in zone {}", offered.name, request.zone));
        }
        if request.user_data.len() > USER_DATA_BYTES_MAX {
            return invalid(format!(
                "the start-up script has {} bytes, more than EC2's {USER_DATA_BYTES_MAX}",
                request.user_data.len()
            ));
        }
        if let Some(token) = &request.client_token {
            if token.is_empty() || token.len() > 64 || !token.is_ascii() {
                return invalid("the client token must be 1 to 64 ASCII characters".into());
            }
        }
        Ok(())
    }

    async fn list_all(&self, installation: &str) -> Result<Vec<Instance>, ProviderError> {
        let mut instances = Vec::new();
        let mut next_token = None;
        for _ in 0..LIST_PAGES_MAX {
            let params = query::describe_instances(installation, self.list_page_size, next_token.as_deref());
            let page = xml::describe_instances(&self.call("DescribeInstances", &params).await?)?;
            instances.extend(page.instances);
            match page.next_token {
                Some(token) => next_token = Some(token),
                None => return Ok(instances),
            }
        }
        Err(ProviderError::Invalid(Refusal {
            provider: xml::PROVIDER,
            code: "FerryRefused".into(),
            message: format!(
                "more than {} instances are tagged {}={installation}: listing stopped",
                LIST_PAGES_MAX * self.list_page_size as usize,
                crate::TAG_INSTALLATION
            ),
            request_id: None,
        }))
    }

    async fn terminate_all(&self, ids: &[String]) -> Result<(), ProviderError> {
        for batch in ids.chunks(TERMINATE_BATCH) {
            let mut batch: Vec<&str> = batch.iter().map(String::as_str).collect();
            // EC2 refuses a whole batch when one id no longer exists; the ids it names are gone already, which is
            // what terminating wants, so the rest is sent again once.
            match self.call("TerminateInstances", &query::terminate_instances(&batch)).await {
                Ok(_) => {}
                Err(ProviderError::Invalid(r)) if r.code == "InvalidInstanceID.NotFound" => {
                    let gone = query::instance_ids_in(&r.message);
                    batch.retain(|id| !gone.contains(id));
                    if gone.is_empty() {
                        return Err(ProviderError::Invalid(r));
                    }
                    if !batch.is_empty() {
                        self.call("TerminateInstances", &query::terminate_instances(&batch)).await?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Provider for Ec2 {
    fn kind(&self) -> &'static str {
        "aws"
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

fn check(settings: &Ec2Settings) -> Result<(), SettingsError> {
    let region = &settings.region;
    let region_ok = !region.is_empty()
        && region.split('-').count() >= 3
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_ok {
        return Err(SettingsError::Region(region.clone()));
    }
    if settings.image_id.trim().is_empty() {
        return Err(SettingsError::ImageId);
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in &settings.instance_types {
        let problem = |problem: String| Err(SettingsError::InstanceType { name: t.name.clone(), problem });
        if t.name.is_empty() || !seen.insert(&t.name) {
            return problem("the name is empty or listed twice: list each type once, such as g5.xlarge".into());
        }
        if !t.price_hour.is_finite() || t.price_hour < 0.0 {
            return problem(format!("price_hour {} is not a price: write zero or more, such as 1.006", t.price_hour));
        }
        if t.zones.is_empty() {
            return problem(format!("no zones: list at least one of {region}'s, such as {region}a"));
        }
        if let Some(zone) = t.zones.iter().find(|z| !z.starts_with(region.as_str()) || z.len() == region.len()) {
            return problem(format!("zone {zone:?} is not in region {region}: write one such as {region}a"));
        }
        if t.gpus == 0 && t.gpu_model.is_some() || t.gpus > 0 && t.gpu_model.is_none() {
            return problem("gpus and gpu_model disagree: give both or neither".into());
        }
    }
    Ok(())
}

/// `x-amz-date`'s form of a time: `20150830T123600Z`.
fn amz_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Reads an answer's body, up to [`RESPONSE_BYTES_MAX`].
async fn read_limited(mut response: reqwest::Response) -> Result<String, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Err(format!("the answer is longer than {RESPONSE_BYTES_MAX} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())
}

/// A call that got no answer: unreachable endpoint, timeout, cut connection. The message names the endpoint and
/// the cause, never the request.
fn network(action: &str, error: &dyn fmt::Display) -> ProviderError {
    ProviderError::Transient(Refusal {
        provider: xml::PROVIDER,
        code: "NoAnswer".into(),
        message: format!("{action} got no answer: {error}"),
        request_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Market;

    pub(super) fn settings() -> Ec2Settings {
        Ec2Settings {
            region: "us-east-1".into(),
            endpoint: Some("http://127.0.0.1:5000".into()),
            image_id: "ami-12c6146b".into(),
            instance_types: vec![InstanceType {
                name: "g5.xlarge".into(),
                gpus: 1,
                gpu_model: Some("A10G".into()),
                cpu_millis: 4000,
                memory_bytes: 16 << 30,
                price_hour: 1.006,
                market: Market::OnDemand,
                zones: vec!["us-east-1a".into(), "us-east-1b".into()],
            }],
            security_group_ids: vec![],
            subnet_by_zone: BTreeMap::new(),
            credentials: None,
        }
    }

    fn build(settings: Ec2Settings) -> Result<Ec2, SettingsError> {
        Ec2::with_credentials(settings, Credentials::new("AKIDEXAMPLE", "secret", None))
    }

    #[test]
    fn the_endpoint_defaults_to_the_regions_and_keeps_a_port() {
        let ec2 = build(Ec2Settings { endpoint: None, ..settings() }).unwrap();
        assert_eq!(
            (ec2.endpoint.as_str(), ec2.host.as_str()),
            ("https://ec2.us-east-1.amazonaws.com/", "ec2.us-east-1.amazonaws.com")
        );
        let ec2 = build(settings()).unwrap();
        assert_eq!(ec2.host, "127.0.0.1:5000");
    }

    #[test]
    fn bad_settings_are_named_with_their_fix() {
        let mut cases = vec![];
        cases.push(Ec2Settings { region: "mars".into(), ..settings() });
        cases.push(Ec2Settings { endpoint: Some("ftp://x".into()), ..settings() });
        cases.push(Ec2Settings { image_id: " ".into(), ..settings() });
        let mut s = settings();
        s.instance_types[0].price_hour = -1.0;
        cases.push(s);
        let mut s = settings();
        s.instance_types[0].zones = vec!["eu-west-1a".into()];
        cases.push(s);
        let mut s = settings();
        s.instance_types[0].zones = vec![];
        cases.push(s);
        let got: Vec<String> = cases.into_iter().map(|s| build(s).unwrap_err().to_string()).collect();
        expect_test::expect![[r#"
            [
                "region \"mars\" is not an AWS region: write one such as us-east-1",
                "endpoint \"ftp://x\" is not an http(s) URL (it must be http or https, without a query): write one such as https://ec2.us-east-1.amazonaws.com",
                "image_id is empty: name the AMI the instances boot, such as ami-0abcdef1234567890",
                "instance type \"g5.xlarge\": price_hour -1 is not a price: write zero or more, such as 1.006",
                "instance type \"g5.xlarge\": zone \"eu-west-1a\" is not in region us-east-1: write one such as us-east-1a",
                "instance type \"g5.xlarge\": no zones: list at least one of us-east-1's, such as us-east-1a",
            ]
        "#]]
        .assert_debug_eq(&got);
    }

    #[test]
    fn debug_shows_no_secret() {
        let ec2 = build(settings()).unwrap();
        let shown = format!("{ec2:?}");
        assert!(!shown.contains("AKIDEXAMPLE") && !shown.contains("secret"), "{shown}");
    }

    #[test]
    fn amz_date_is_basic_iso8601_in_utc() {
        let t = time::OffsetDateTime::from_unix_timestamp(1_440_938_160).unwrap();
        assert_eq!(amz_date(t), "20150830T123600Z");
    }
}
