//! Azure credentials: a service principal's client secret, traded for Azure Resource Manager tokens through
//! Microsoft Entra ID's client credentials flow (`POST {login}/{tenant}/oauth2/v2.0/token`), or the managed
//! identity of the VM Ferry runs on, whose tokens the instance metadata service hands out
//! (`GET http://169.254.169.254/metadata/identity/oauth2/token`, with the header `Metadata: true`).
//!
//! The order is explicit settings, then `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` (the names
//! Azure's own SDKs and CLI read; a tenant or a secret without the rest is an error, not a fallback), then the
//! managed identity: the VM's system-assigned one, or the user-assigned one whose client id is in `AZURE_CLIENT_ID`
//! alone. `AZURE_IMDS_ENDPOINT` moves the instance metadata service elsewhere; it is Ferry's own variable, for tests
//! (App Service's `IDENTITY_ENDPOINT` speaks another protocol and is not read). The service is only asked at the
//! first call, so a machine that is not an Azure VM learns that it has no credentials then, from an error naming
//! every place.
//!
//! TODO: certificate credentials.
//!
//! Nothing here may show the secret: `Debug` shows where the credentials came from and nothing else, and errors
//! name variables, never values.

use std::fmt;

/// Where the instance metadata service is on every Azure VM.
const IMDS_ENDPOINT_DEFAULT: &str = "http://169.254.169.254";
/// The version of the managed identity token endpoint.
const IMDS_API_VERSION: &str = "2018-02-01";
/// The resource a managed identity's token is for: Azure Resource Manager (the v1 name of [`super::SCOPE`]).
const IMDS_RESOURCE: &str = "https://management.azure.com/";

/// Azure credentials: a service principal's client secret, or a managed identity.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureCredentials {
    pub(crate) kind: Kind,
    source: AzureCredentialsSource,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        client_secret: String,
    },
    /// The instance metadata service at `endpoint`; `client_id` picks a user-assigned identity.
    ManagedIdentity {
        endpoint: String,
        client_id: Option<String>,
    },
}

/// Where credentials came from; the only part of them ever shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureCredentialsSource {
    Explicit,
    Environment,
    /// The VM's managed identity: a user-assigned one named by `AZURE_CLIENT_ID`, else the system-assigned one.
    ManagedIdentity {
        user_assigned: bool,
    },
}

/// How a managed identity's failures are worded: where else Ferry looked, and what to do.
pub(crate) const IMDS_LOOKED: &str = "no Azure credentials: AZURE_TENANT_ID and AZURE_CLIENT_SECRET are not set, and";
pub(crate) const IMDS_INSTEAD: &str = "set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET to a service \
     principal's (`az ad sp create-for-rbac`), or run Ferry on an Azure VM with a managed identity (a user-assigned \
     one named by AZURE_CLIENT_ID)";

/// The three variables, in the order messages name them.
const VARIABLES: [&str; 3] = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"];

/// Why no usable Azure credentials were found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AzureCredentialsError {
    #[error(
        "{present} set but {missing} not: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET together \
         (a service principal: `az ad sp create-for-rbac`)"
    )]
    IncompleteEnvironment { present: String, missing: String },
    #[error(
        "AZURE_IMDS_ENDPOINT {endpoint:?} is not an http(s) URL ({reason}): write one such as {IMDS_ENDPOINT_DEFAULT}"
    )]
    ImdsEndpoint { endpoint: String, reason: String },
    #[error("the Azure tenant id {0:?} is not a tenant: write its GUID or domain, such as contoso.onmicrosoft.com")]
    Tenant(String),
}

impl AzureCredentials {
    /// Credentials given explicitly, such as from the server's configuration.
    pub fn new(tenant_id: &str, client_id: &str, client_secret: &str) -> AzureCredentials {
        AzureCredentials {
            kind: Kind::ClientSecret {
                tenant_id: tenant_id.to_string(),
                client_id: client_id.to_string(),
                client_secret: client_secret.to_string(),
            },
            source: AzureCredentialsSource::Explicit,
        }
    }

    pub fn source(&self) -> &AzureCredentialsSource {
        &self.source
    }

    /// The tenant goes into the token endpoint's path: only a GUID or a domain name may.
    pub(crate) fn check(&self) -> Result<(), AzureCredentialsError> {
        let Kind::ClientSecret { tenant_id: t, .. } = &self.kind else { return Ok(()) };
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
            return Err(AzureCredentialsError::Tenant(t.clone()));
        }
        Ok(())
    }
}

impl fmt::Debug for AzureCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureCredentials").field("source", &self.source).finish_non_exhaustive()
    }
}

/// Resolves credentials from the process's environment.
pub fn resolve(explicit: Option<AzureCredentials>) -> Result<AzureCredentials, AzureCredentialsError> {
    resolve_with(explicit, &|name| std::env::var(name).ok())
}

/// Resolves credentials in the documented order, reading variables through `env`.
pub fn resolve_with(
    explicit: Option<AzureCredentials>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AzureCredentials, AzureCredentialsError> {
    let credentials = match explicit {
        Some(credentials) => credentials,
        None => {
            let values: Vec<Option<String>> = VARIABLES
                .iter()
                .map(|name| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()))
                .collect();
            let named = |present: bool| -> Vec<&str> {
                VARIABLES.iter().zip(&values).filter(|(_, v)| v.is_some() == present).map(|(n, _)| *n).collect()
            };
            match &values[..] {
                [Some(tenant), Some(client), Some(secret)] => AzureCredentials {
                    kind: Kind::ClientSecret {
                        tenant_id: tenant.clone(),
                        client_id: client.clone(),
                        client_secret: secret.clone(),
                    },
                    source: AzureCredentialsSource::Environment,
                },
                [None, client_id, None] => return managed_identity(env, client_id.clone()),
                _ => {
                    let join = |names: Vec<&str>| {
                        let verb = if names.len() == 1 { "is" } else { "are" };
                        format!("{} {verb}", names.join(" and "))
                    };
                    return Err(AzureCredentialsError::IncompleteEnvironment {
                        present: join(named(true)),
                        missing: join(named(false)),
                    });
                }
            }
        }
    };
    credentials.check()?;
    Ok(credentials)
}

/// The managed identity, through the instance metadata service at `AZURE_IMDS_ENDPOINT` or its usual address.
fn managed_identity(
    env: &dyn Fn(&str) -> Option<String>,
    client_id: Option<String>,
) -> Result<AzureCredentials, AzureCredentialsError> {
    let text = env("AZURE_IMDS_ENDPOINT").filter(|v| !v.trim().is_empty());
    let text = text.unwrap_or_else(|| IMDS_ENDPOINT_DEFAULT.to_string());
    let endpoint = crate::rest::endpoint(text.trim())
        .map_err(|reason| AzureCredentialsError::ImdsEndpoint { endpoint: text.clone(), reason })?;
    let source = AzureCredentialsSource::ManagedIdentity { user_assigned: client_id.is_some() };
    Ok(AzureCredentials { kind: Kind::ManagedIdentity { endpoint, client_id }, source })
}

/// The managed identity's token URL at `endpoint`, for Azure Resource Manager.
pub(crate) fn imds_token_url(endpoint: &str, client_id: Option<&str>) -> Result<reqwest::Url, String> {
    let mut url =
        reqwest::Url::parse(&format!("{endpoint}/metadata/identity/oauth2/token")).map_err(|e| e.to_string())?;
    url.query_pairs_mut().append_pair("api-version", IMDS_API_VERSION).append_pair("resource", IMDS_RESOURCE);
    if let Some(client_id) = client_id {
        url.query_pairs_mut().append_pair("client_id", client_id);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve_in(vars: &[(&str, &str)]) -> Result<AzureCredentials, AzureCredentialsError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve_with(None, &|name| vars.get(name).cloned())
    }

    #[test]
    fn the_environment_gives_all_three_or_says_which_is_missing() {
        let got = resolve_in(&[
            ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            ("AZURE_CLIENT_ID", "c0ffee00-0000-4000-8000-000000000001"),
            ("AZURE_CLIENT_SECRET", "s3cr3t~value"),
        ])
        .unwrap();
        assert_eq!(got.source(), &AzureCredentialsSource::Environment);
        assert!(matches!(&got.kind, Kind::ClientSecret { client_secret, .. } if client_secret == "s3cr3t~value"));
        let err = resolve_in(&[("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_SECRET", "s3cr3t")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AZURE_TENANT_ID and AZURE_CLIENT_SECRET are set but AZURE_CLIENT_ID is not: set AZURE_TENANT_ID, \
             AZURE_CLIENT_ID and AZURE_CLIENT_SECRET together (a service principal: `az ad sp create-for-rbac`)"
        );
        let err = resolve_in(&[("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c")]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("AZURE_TENANT_ID and AZURE_CLIENT_ID are set but AZURE_CLIENT_SECRET is not"));
    }

    #[test]
    fn without_a_secret_the_managed_identity_comes_last() {
        let got = resolve_in(&[]).unwrap();
        assert_eq!(got.source(), &AzureCredentialsSource::ManagedIdentity { user_assigned: false });
        let Kind::ManagedIdentity { endpoint, client_id: None } = &got.kind else { panic!("{got:?}") };
        assert_eq!(
            imds_token_url(endpoint, None).unwrap().as_str(),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F"
        );
        let got = resolve_in(&[("AZURE_CLIENT_ID", "c0ffee"), ("AZURE_IMDS_ENDPOINT", "http://127.0.0.1:9/")]).unwrap();
        assert_eq!(format!("{got:?}"), "AzureCredentials { source: ManagedIdentity { user_assigned: true }, .. }");
        let Kind::ManagedIdentity { endpoint, client_id } = &got.kind else { panic!("{got:?}") };
        assert!(imds_token_url(endpoint, client_id.as_deref()).unwrap().as_str().starts_with("http://127.0.0.1:9/"));
        assert!(imds_token_url(endpoint, client_id.as_deref()).unwrap().as_str().ends_with("&client_id=c0ffee"));
        let err = resolve_in(&[("AZURE_IMDS_ENDPOINT", "file:///etc")]).unwrap_err();
        assert!(err.to_string().starts_with("AZURE_IMDS_ENDPOINT \"file:///etc\" is not an http(s) URL"), "{err}");
    }

    #[test]
    fn explicit_settings_win_and_a_bad_tenant_is_refused() {
        let explicit = AzureCredentials::new("contoso.onmicrosoft.com", "c", "s");
        assert_eq!(resolve_with(Some(explicit.clone()), &|_| Some("env".into())).unwrap(), explicit);
        let err = resolve_with(Some(AzureCredentials::new("../evil", "c", "s")), &|_| None).unwrap_err();
        assert_eq!(err, AzureCredentialsError::Tenant("../evil".into()));
    }

    #[test]
    fn debug_never_shows_the_secret_or_ids() {
        let shown = format!("{:?}", AzureCredentials::new("tenant-guid", "client-guid", "s3cr3t"));
        assert_eq!(shown, "AzureCredentials { source: Explicit, .. }");
    }
}
