//! AWS credentials: where they come from, and a type that never shows them.
//!
//! The order is the SDKs': explicit settings, then the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`), then the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
//! `~/.aws/credentials`, profile `AWS_PROFILE`, else `default`), then the role of the EC2 instance Ferry runs on
//! (`imds.rs`: the instance metadata service at `AWS_EC2_METADATA_SERVICE_ENDPOINT`, else `http://169.254.169.254`;
//! `AWS_EC2_METADATA_DISABLED=true` skips it). The first three give fixed [`Credentials`]; the instance role gives a
//! [`CredentialsProvider`] that asks the service at the first call and again before the credentials expire, so a
//! machine that is not on EC2 learns that it has no credentials then, from an error naming every place. Resolution
//! reads its environment through a function and its home directory as a value, so tests need not touch the
//! process's.
//!
//! Nothing here may log or format a secret: [`Credentials`]' `Debug` shows where they came from and nothing else,
//! and errors name variables, files and profiles, never values or lines of a file.

mod imds;

use std::fmt;
use std::path::{Path, PathBuf};

pub use imds::InstanceRole;

use crate::ProviderError;

/// The most a credentials file may hold; a larger one is not a credentials file.
const CREDENTIALS_FILE_BYTES_MAX: u64 = 1 << 20;

/// An AWS access key, with the session token of temporary credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub(crate) access_key_id: String,
    pub(crate) secret_access_key: String,
    pub(crate) session_token: Option<String>,
    source: CredentialsSource,
}

/// Where credentials were found; the only part of them that is ever shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialsSource {
    Explicit,
    Environment,
    File {
        path: PathBuf,
        profile: String,
    },
    /// The role of the EC2 instance Ferry runs on.
    InstanceRole {
        role: String,
    },
}

impl Credentials {
    /// Credentials given explicitly, such as from the server's configuration.
    pub fn new(access_key_id: &str, secret_access_key: &str, session_token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: access_key_id.to_string(),
            secret_access_key: secret_access_key.to_string(),
            session_token: session_token.map(str::to_string),
            source: CredentialsSource::Explicit,
        }
    }

    pub fn source(&self) -> &CredentialsSource {
        &self.source
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("source", &self.source)
            .field("session", &self.session_token.is_some())
            .finish_non_exhaustive()
    }
}

/// Why no usable credentials were found; says where Ferry looked and what to set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("{present} is set but {missing} is not: set both, or neither to use ~/.aws/credentials")]
    IncompleteEnvironment { present: &'static str, missing: &'static str },
    #[error("cannot read the AWS credentials file {path}: {reason}")]
    FileUnreadable { path: PathBuf, reason: String },
    #[error("the AWS credentials file {path} has no profile [{profile}]: add it, or set AWS_PROFILE to one it has")]
    ProfileMissing { path: PathBuf, profile: String },
    #[error("profile [{profile}] of {path} has no {missing}: add it")]
    ProfileIncomplete { path: PathBuf, profile: String, missing: &'static str },
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write them to ~/.aws/credentials \
         (the profile in AWS_PROFILE, else [default]); the instance role, the last place to look, is off \
         (AWS_EC2_METADATA_DISABLED is true)"
    )]
    NotFound,
    #[error(
        "AWS_EC2_METADATA_SERVICE_ENDPOINT {endpoint:?} is not an http(s) URL ({reason}): write one such as \
         http://169.254.169.254"
    )]
    MetadataEndpoint { endpoint: String, reason: String },
}

/// What the EC2 provider signs with: fixed credentials, or an instance role's, which change. Its `Debug` shows
/// where they come from, never them.
pub enum CredentialsProvider {
    Static(Credentials),
    InstanceRole(InstanceRole),
}

impl CredentialsProvider {
    /// The credentials for the next request.
    pub(crate) async fn current(&self) -> Result<Credentials, ProviderError> {
        match self {
            CredentialsProvider::Static(credentials) => Ok(credentials.clone()),
            CredentialsProvider::InstanceRole(role) => role.current().await,
        }
    }
}

impl From<Credentials> for CredentialsProvider {
    fn from(credentials: Credentials) -> CredentialsProvider {
        CredentialsProvider::Static(credentials)
    }
}

impl fmt::Debug for CredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialsProvider::Static(credentials) => credentials.fmt(f),
            CredentialsProvider::InstanceRole(role) => role.fmt(f),
        }
    }
}

/// Resolves credentials from the process's environment and home directory.
pub fn resolve(explicit: Option<Credentials>) -> Result<CredentialsProvider, CredentialsError> {
    resolve_with(explicit, &|name| std::env::var(name).ok(), dirs::home_dir().as_deref())
}

/// Resolves credentials in the documented order, reading variables through `env` and the default credentials
/// file under `home`.
pub fn resolve_with(
    explicit: Option<Credentials>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<CredentialsProvider, CredentialsError> {
    match fixed(explicit, env, home) {
        Ok(credentials) => Ok(CredentialsProvider::Static(credentials)),
        Err(CredentialsError::NotFound) => instance_role(env),
        Err(e) => Err(e),
    }
}

/// The instance role, unless `AWS_EC2_METADATA_DISABLED` is true; nothing is asked yet.
fn instance_role(env: &dyn Fn(&str) -> Option<String>) -> Result<CredentialsProvider, CredentialsError> {
    let var = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(CredentialsError::NotFound);
    }
    let text = var("AWS_EC2_METADATA_SERVICE_ENDPOINT").unwrap_or_else(|| imds::ENDPOINT_DEFAULT.to_string());
    let error = |reason| CredentialsError::MetadataEndpoint { endpoint: text.clone(), reason };
    let endpoint = crate::rest::endpoint(&text).map_err(error)?;
    Ok(CredentialsProvider::InstanceRole(InstanceRole::new(endpoint).map_err(error)?))
}

/// Explicit settings, the environment or the credentials file; [`CredentialsError::NotFound`] when none has any.
fn fixed(
    explicit: Option<Credentials>,
    env: &dyn Fn(&str) -> Option<String>,
    home: Option<&Path>,
) -> Result<Credentials, CredentialsError> {
    if let Some(credentials) = explicit {
        return Ok(credentials);
    }
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
                source: CredentialsSource::Environment,
            })
        }
        (Some(_), None) => {
            return Err(CredentialsError::IncompleteEnvironment {
                present: "AWS_ACCESS_KEY_ID",
                missing: "AWS_SECRET_ACCESS_KEY",
            })
        }
        (None, Some(_)) => {
            return Err(CredentialsError::IncompleteEnvironment {
                present: "AWS_SECRET_ACCESS_KEY",
                missing: "AWS_ACCESS_KEY_ID",
            })
        }
        (None, None) => {}
    }
    let explicit_path = var("AWS_SHARED_CREDENTIALS_FILE").map(PathBuf::from);
    let Some(path) = explicit_path.clone().or_else(|| home.map(|h| h.join(".aws/credentials"))) else {
        return Err(CredentialsError::NotFound);
    };
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    // A missing default file means "no credentials here"; a file someone named, or a profile someone chose, must
    // exist.
    if !path.exists() && explicit_path.is_none() && var("AWS_PROFILE").is_none() {
        return Err(CredentialsError::NotFound);
    }
    let text = read_small(&path).map_err(|reason| CredentialsError::FileUnreadable { path: path.clone(), reason })?;
    from_file(&text, &path, &profile)
}

fn read_small(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.len() > CREDENTIALS_FILE_BYTES_MAX {
        return Err(format!("it has {} bytes, more than a credentials file ever needs", meta.len()));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Reads one profile of a credentials file (INI: `[profile]` sections of `key = value` lines).
fn from_file(text: &str, path: &Path, profile: &str) -> Result<Credentials, CredentialsError> {
    let mut in_profile = false;
    let mut found = false;
    let (mut access_key_id, mut secret_access_key, mut session_token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = section.trim() == profile;
            found |= in_profile;
            continue;
        }
        let Some((key, value)) = line.split_once('=').filter(|_| in_profile) else { continue };
        let value = Some(value.trim().to_string()).filter(|v| !v.is_empty());
        match key.trim().to_ascii_lowercase().as_str() {
            "aws_access_key_id" => access_key_id = value,
            "aws_secret_access_key" => secret_access_key = value,
            "aws_session_token" => session_token = value,
            _ => {}
        }
    }
    let incomplete = |missing| CredentialsError::ProfileIncomplete {
        path: path.to_path_buf(),
        profile: profile.to_string(),
        missing,
    };
    if !found {
        return Err(CredentialsError::ProfileMissing { path: path.to_path_buf(), profile: profile.to_string() });
    }
    Ok(Credentials {
        access_key_id: access_key_id.ok_or_else(|| incomplete("aws_access_key_id"))?,
        secret_access_key: secret_access_key.ok_or_else(|| incomplete("aws_secret_access_key"))?,
        session_token,
        source: CredentialsSource::File { path: path.to_path_buf(), profile: profile.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve_in(vars: &[(&str, &str)], home: Option<&Path>) -> Result<Credentials, CredentialsError> {
        match resolve_any(vars, home)? {
            CredentialsProvider::Static(credentials) => Ok(credentials),
            role => panic!("fixed credentials expected, got {role:?}"),
        }
    }

    fn resolve_any(vars: &[(&str, &str)], home: Option<&Path>) -> Result<CredentialsProvider, CredentialsError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        resolve_with(None, &|name| vars.get(name).cloned(), home)
    }

    const FILE: &str =
        "# comment\n[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = secretdefault\n\n\
                        [work]\naws_access_key_id=AKIDWORK\naws_secret_access_key=secretwork\naws_session_token = tok\n\
                        [broken]\naws_access_key_id = AKIDBROKEN\n";

    fn home_with_file() -> tempfile::TempDir {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join(".aws")).unwrap();
        std::fs::write(home.path().join(".aws/credentials"), FILE).unwrap();
        home
    }

    #[test]
    fn explicit_settings_win_over_everything() {
        let explicit = Credentials::new("AKIDX", "sx", None);
        let got = resolve_with(Some(explicit.clone()), &|_| Some("env".into()), None).unwrap();
        assert!(matches!(got, CredentialsProvider::Static(c) if c == explicit));
    }

    #[test]
    fn the_environment_comes_before_the_file() {
        let home = home_with_file();
        let got = resolve_in(
            &[("AWS_ACCESS_KEY_ID", "AKIDENV"), ("AWS_SECRET_ACCESS_KEY", "senv"), ("AWS_SESSION_TOKEN", "t")],
            Some(home.path()),
        )
        .unwrap();
        assert_eq!(got.access_key_id, "AKIDENV");
        assert_eq!(got.session_token.as_deref(), Some("t"));
        assert_eq!(got.source(), &CredentialsSource::Environment);
    }

    #[test]
    fn half_an_environment_is_an_error_not_a_fallback() {
        let err = resolve_in(&[("AWS_ACCESS_KEY_ID", "AKIDENV")], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set both, or neither to use ~/.aws/credentials"
        );
    }

    #[test]
    fn the_file_gives_the_default_profile_or_aws_profile() {
        let home = home_with_file();
        let got = resolve_in(&[], Some(home.path())).unwrap();
        assert_eq!((got.access_key_id.as_str(), got.session_token.as_deref()), ("AKIDDEFAULT", None));
        let got = resolve_in(&[("AWS_PROFILE", "work")], Some(home.path())).unwrap();
        assert_eq!((got.access_key_id.as_str(), got.secret_access_key.as_str()), ("AKIDWORK", "secretwork"));
        assert_eq!(got.session_token.as_deref(), Some("tok"));
    }

    #[test]
    fn a_missing_or_incomplete_profile_is_named() {
        let home = home_with_file();
        let path = home.path().join(".aws/credentials");
        let err = resolve_in(&[("AWS_PROFILE", "nope")], Some(home.path())).unwrap_err();
        assert_eq!(err, CredentialsError::ProfileMissing { path: path.clone(), profile: "nope".into() });
        let err = resolve_in(&[("AWS_PROFILE", "broken")], Some(home.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("profile [broken] of {} has no aws_secret_access_key: add it", path.display())
        );
    }

    #[test]
    fn the_instance_role_comes_last_and_may_be_turned_off() {
        let home = tempfile::tempdir().unwrap();
        let got = resolve_any(&[], Some(home.path())).unwrap();
        assert_eq!(format!("{got:?}"), r#"InstanceRole { endpoint: "http://169.254.169.254", role: None }"#);
        let moved = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1338/")];
        let got = resolve_any(&moved, None).unwrap();
        assert_eq!(format!("{got:?}"), r#"InstanceRole { endpoint: "http://127.0.0.1:1338", role: None }"#);
        let err = resolve_any(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "169.254.169.254")], None).unwrap_err();
        assert!(matches!(err, CredentialsError::MetadataEndpoint { .. }), "{err}");
        // The file and the environment still come first, and turning the role off leaves nothing.
        assert!(matches!(
            resolve_any(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "s")], None),
            Ok(CredentialsProvider::Static(_))
        ));
        let err = resolve_any(&[("AWS_EC2_METADATA_DISABLED", "TRUE")], Some(home.path())).unwrap_err();
        assert_eq!(err, CredentialsError::NotFound);
        assert!(err.to_string().contains("the instance role, the last place to look, is off"), "{err}");
    }

    #[test]
    fn debug_never_shows_a_key() {
        let home = home_with_file();
        let got = resolve_in(&[("AWS_PROFILE", "work")], Some(home.path())).unwrap();
        let shown = format!("{got:?} {:?}", Credentials::new("AKIDX", "topsecret", Some("tok")));
        for secret in ["AKIDWORK", "secretwork", "tok\"", "AKIDX", "topsecret"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
