//! Azure credentials: a service principal's client secret, traded for Azure Resource Manager tokens through
//! Microsoft Entra ID's client credentials flow (`POST {login}/{tenant}/oauth2/v2.0/token`).
//!
//! The order is explicit settings, then `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET` (the names
//! Azure's own SDKs and CLI read).
//!
//! TODO: managed identities (a server running on Azure: the instance metadata service's token endpoint) and
//! certificate credentials.
//!
//! Nothing here may show the secret: `Debug` shows where the credentials came from and nothing else, and errors
//! name variables, never values.

use std::fmt;

/// A service principal's client credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AzureCredentials {
    pub(crate) tenant_id: String,
    pub(crate) client_id: String,
    pub(crate) client_secret: String,
    source: AzureCredentialsSource,
}

/// Where credentials came from; the only part of them ever shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AzureCredentialsSource {
    Explicit,
    Environment,
}

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
        "no Azure credentials: set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET to a service principal's \
         (`az ad sp create-for-rbac`); managed identities are not read yet"
    )]
    NotFound,
    #[error("the Azure tenant id {0:?} is not a tenant: write its GUID or domain, such as contoso.onmicrosoft.com")]
    Tenant(String),
}

impl AzureCredentials {
    /// Credentials given explicitly, such as from the server's configuration.
    pub fn new(tenant_id: &str, client_id: &str, client_secret: &str) -> AzureCredentials {
        AzureCredentials {
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            source: AzureCredentialsSource::Explicit,
        }
    }

    pub fn source(&self) -> &AzureCredentialsSource {
        &self.source
    }

    /// The tenant goes into the token endpoint's path: only a GUID or a domain name may.
    pub(crate) fn check(&self) -> Result<(), AzureCredentialsError> {
        let t = &self.tenant_id;
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
                    tenant_id: tenant.clone(),
                    client_id: client.clone(),
                    client_secret: secret.clone(),
                    source: AzureCredentialsSource::Environment,
                },
                [None, None, None] => return Err(AzureCredentialsError::NotFound),
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
        assert_eq!(got.client_secret, "s3cr3t~value");
        let err = resolve_in(&[("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_SECRET", "s3cr3t")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AZURE_TENANT_ID and AZURE_CLIENT_SECRET are set but AZURE_CLIENT_ID is not: set AZURE_TENANT_ID, \
             AZURE_CLIENT_ID and AZURE_CLIENT_SECRET together (a service principal: `az ad sp create-for-rbac`)"
        );
        assert_eq!(resolve_in(&[]).unwrap_err(), AzureCredentialsError::NotFound);
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
