//! An EC2 instance role's credentials, through the instance metadata service version 2 (IMDSv2): a `PUT` for a
//! session token, then the role's name and its temporary credentials, fetched again a few minutes before they
//! expire.
//!
//! Nothing here may log or show the credentials or the session token: errors name the service, the step and the
//! status, and quote only error answers (shortened), never a successful one.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{Credentials, CredentialsSource};
use crate::ec2::PROVIDER;
use crate::{rest, ProviderError, Refusal};

/// Where the service is on every EC2 instance.
pub(super) const ENDPOINT_DEFAULT: &str = "http://169.254.169.254";
/// How long a session token lasts, in seconds: the most IMDSv2 grants. Each refresh asks for a new one.
const SESSION_TTL_S: &str = "21600";
/// Credentials are fetched again this long before they expire; EC2 has the next ones ready at least five minutes
/// before.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// The step that finds the role, whose 404 means there is none.
const ROLE_LIST: &str = "the role list";
/// The longest IAM role name.
const ROLE_CHARS_MAX: usize = 64;
/// What to do when the instance role gives nothing.
const INSTEAD: &str = "attach an IAM role to the instance, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
     a profile in ~/.aws/credentials); AWS_EC2_METADATA_DISABLED=true stops Ferry asking the metadata service";

/// The role of the EC2 instance Ferry runs on, asked for its credentials when first needed and again before they
/// expire. Its `Debug` shows the service and the role, never the credentials.
pub struct InstanceRole {
    /// The service's URL, without a trailing slash.
    endpoint: String,
    http: reqwest::Client,
    /// The credentials in use and when they expire. Never held across an await: two calls that find them stale at
    /// once both fetch, which costs the service a few more local requests and nothing else.
    lease: Mutex<Option<Lease>>,
}

#[derive(Clone)]
struct Lease {
    credentials: Credentials,
    expires: SystemTime,
}

/// The role's credentials as the service answers them.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    code: String,
    #[serde(default)]
    access_key_id: String,
    #[serde(default)]
    secret_access_key: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    expiration: String,
}

impl InstanceRole {
    pub(super) fn new(endpoint: String) -> Result<InstanceRole, String> {
        Ok(InstanceRole { endpoint, http: rest::metadata_client()?, lease: Mutex::new(None) })
    }

    /// The role's credentials: the cached ones while they are good for more than [`REFRESH_MARGIN`], else new ones.
    /// A refresh that fails keeps the cached ones until they expire, since the service may be away for a moment.
    pub(crate) async fn current(&self) -> Result<Credentials, ProviderError> {
        let cached = self.lease.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = SystemTime::now();
        if let Some(lease) = cached.as_ref().filter(|lease| now + REFRESH_MARGIN < lease.expires) {
            return Ok(lease.credentials.clone());
        }
        match self.fetch().await {
            Ok(lease) => {
                let credentials = lease.credentials.clone();
                *self.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
                Ok(credentials)
            }
            Err(error) => match cached {
                Some(lease) if now < lease.expires => {
                    let message =
                        "cannot refresh the instance role's credentials; using the current ones until they expire";
                    tracing::warn!(endpoint = %self.endpoint, %error, "{message}");
                    Ok(lease.credentials)
                }
                _ => Err(error),
            },
        }
    }

    /// A session token, the role's name, then its credentials.
    async fn fetch(&self) -> Result<Lease, ProviderError> {
        let put = self.http.put(format!("{}/latest/api/token", self.endpoint));
        let put = put.header("x-aws-ec2-metadata-token-ttl-seconds", SESSION_TTL_S);
        let session = self.send("the session token", put).await?;
        let get = |path: &str| {
            let url = format!("{}/latest/meta-data/iam/security-credentials/{path}", self.endpoint);
            self.http.get(url).header("x-aws-ec2-metadata-token", session.trim())
        };
        let list = self.send(ROLE_LIST, get("")).await?;
        let role = list.lines().map(str::trim).find(|line| !line.is_empty()).unwrap_or_default().to_string();
        // The name goes into the next URL's path: only what IAM allows in a role name.
        let allowed = |c: char| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c);
        if role.is_empty() || role.len() > ROLE_CHARS_MAX || !role.chars().all(allowed) {
            return Err(self.no_credentials(&format!("listed no usable role ({})", rest::quote(&role))));
        }
        let body = self.send("the role's credentials", get(&role)).await?;
        let answer: RoleCredentials = rest::json(PROVIDER, "instance role credentials", &body)?;
        if answer.code != "Success" || answer.access_key_id.is_empty() || answer.secret_access_key.is_empty() {
            let code = rest::quote(&answer.code);
            return Err(self.no_credentials(&format!("answered {code} for the credentials of role {role}")));
        }
        let expires = rest::rfc3339_ms(&answer.expiration).map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        let expires = expires.ok_or_else(|| {
            rest::malformed(PROVIDER, format!("role {role}'s credentials have no RFC 3339 Expiration"))
        })?;
        tracing::debug!(endpoint = %self.endpoint, %role, "fetched the instance role's credentials");
        let credentials = Credentials {
            access_key_id: answer.access_key_id,
            secret_access_key: answer.secret_access_key,
            session_token: Some(answer.token).filter(|t| !t.is_empty()),
            source: CredentialsSource::InstanceRole { role },
        };
        Ok(Lease { credentials, expires })
    }

    /// Sends one step and returns the answer's body; `what` names the step in errors.
    async fn send(&self, what: &str, request: reqwest::RequestBuilder) -> Result<String, ProviderError> {
        let answer = rest::send(PROVIDER, &format!("the request for {what}"), request, None)
            .await
            .map_err(|e| self.no_credentials(&format!("did not answer ({})", e.refusal().message)))?;
        match answer.status {
            200..=299 => Ok(answer.body),
            404 if what == ROLE_LIST => {
                Err(self.no_credentials("answered 404 for the role list: this machine has no IAM role attached"))
            }
            status @ (429 | 500..=599) => Err(ProviderError::Transient(Refusal {
                provider: PROVIDER,
                code: format!("HTTP{status}"),
                message: format!(
                    "the instance metadata service at {} answered {status} for {what}: {}",
                    self.endpoint,
                    rest::quote(&answer.body)
                ),
                request_id: None,
            })),
            status => {
                Err(self.no_credentials(&format!("answered {status} for {what} ({})", rest::quote(&answer.body))))
            }
        }
    }

    /// The instance role, the last place looked, gave nothing: says what the service did and what to do.
    fn no_credentials(&self, what: &str) -> ProviderError {
        ProviderError::Unauthorized(Refusal {
            provider: PROVIDER,
            code: crate::NO_CREDENTIALS.into(),
            message: format!(
                "no AWS credentials: none in the settings, the environment or the credentials file, and the instance \
                 metadata service at {} {what}: {INSTEAD}",
                self.endpoint
            ),
            request_id: None,
        })
    }
}

impl fmt::Debug for InstanceRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        let role = match lease.as_ref().map(|lease| lease.credentials.source()) {
            Some(CredentialsSource::InstanceRole { role }) => Some(role.clone()),
            _ => None,
        };
        f.debug_struct("InstanceRole").field("endpoint", &self.endpoint).field("role", &role).finish()
    }
}
