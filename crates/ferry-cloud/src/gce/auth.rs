//! Google credentials: an access token given as is, or a service account's JSON key from which access tokens are
//! made (a JWT signed with the key, traded at the key's `token_uri`; Google's "Using OAuth 2.0 for Server to Server
//! Applications").
//!
//! The order is explicit settings, then `GOOGLE_OAUTH_ACCESS_TOKEN` (a token made elsewhere, such as by
//! `gcloud auth print-access-token`; it is not refreshed), then the key file in `GOOGLE_APPLICATION_CREDENTIALS`,
//! then the metadata server of the instance Ferry runs on (the tokens of its attached service account, from
//! `http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token`, or the host in
//! `GCE_METADATA_HOST` as Google's libraries read it). The metadata server is only asked at the first call, so a
//! machine that is not on Compute Engine learns that it has no credentials then, from an error naming every place.
//!
//! TODO: `gcloud`'s application default credentials (`~/.config/gcloud/application_default_credentials.json`, an
//! `authorized_user` refresh token).
//!
//! Nothing here may show a key or a token: `Debug` shows the source and the service account's e-mail address, and
//! errors name variables and files, never their contents.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde::Deserialize;

/// The metadata server's name on Compute Engine, where `GCE_METADATA_HOST` does not name another.
const METADATA_HOST_DEFAULT: &str = "metadata.google.internal";
/// The OAuth scope of the Compute Engine API (read and write instances).
pub const SCOPE: &str = "https://www.googleapis.com/auth/compute";
/// The longest life Google grants an assertion: exp − iat may not exceed an hour.
const ASSERTION_LIFETIME_S: u64 = 3600;
/// The most a key file may hold; service account keys are about 2.3 KiB.
const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Google credentials for Compute Engine.
#[derive(Clone)]
pub struct GoogleCredentials {
    pub(crate) kind: Kind,
    source: GoogleCredentialsSource,
}

#[derive(Clone)]
pub(crate) enum Kind {
    /// A ready access token, used as is until it is refused.
    AccessToken(String),
    ServiceAccount(Arc<ServiceAccountKey>),
    /// The metadata server: how messages name it, and its token URL.
    MetadataServer {
        service: String,
        url: String,
    },
}

/// Where credentials came from; shown in `Debug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GoogleCredentialsSource {
    Explicit,
    /// `GOOGLE_OAUTH_ACCESS_TOKEN`.
    TokenEnvironment,
    /// A key file, named by `GOOGLE_APPLICATION_CREDENTIALS` or by the settings.
    KeyFile(PathBuf),
    /// The service account attached to the instance, through its metadata server at `host` (`host[:port]`).
    MetadataServer {
        host: String,
    },
}

/// A service account key: who signs, with what, and where tokens are made.
pub(crate) struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: String,
    pub token_uri: String,
    pub key_pair: RsaKeyPair,
}

/// The fields of a key file Ferry reads (Google's file has more: `project_id`, `client_id`, `auth_uri`, …).
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key_id: String,
    private_key: String,
    token_uri: String,
}

/// Why no usable Google credentials were found; says where Ferry looked and what to set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoogleCredentialsError {
    #[error("cannot read the Google service account key {path}: {reason}")]
    FileUnreadable { path: PathBuf, reason: String },
    #[error(
        "{path} is not a Google service account key ({reason}): create one with `gcloud iam service-accounts keys \
         create` or in the console (IAM & Admin, Service accounts, Keys) and point GOOGLE_APPLICATION_CREDENTIALS at it"
    )]
    NotAKey { path: PathBuf, reason: String },
    #[error(
        "GCE_METADATA_HOST {0:?} is not a host[:port]: write one such as metadata.google.internal or 169.254.169.254"
    )]
    MetadataHost(String),
}

/// How a metadata server's failures are worded: where else Ferry looked, and what to do.
pub(crate) const METADATA_LOOKED: &str =
    "no Google credentials: GOOGLE_OAUTH_ACCESS_TOKEN and GOOGLE_APPLICATION_CREDENTIALS are not set, and";
pub(crate) const METADATA_INSTEAD: &str = "set GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run \
     Ferry on a Compute Engine instance with a service account attached (with the compute or cloud-platform scope)";

impl GoogleCredentials {
    /// An access token given explicitly; used as is, never refreshed.
    pub fn access_token(token: &str) -> GoogleCredentials {
        GoogleCredentials { kind: Kind::AccessToken(token.to_string()), source: GoogleCredentialsSource::Explicit }
    }

    /// A service account key file named explicitly.
    pub fn key_file(path: &Path) -> Result<GoogleCredentials, GoogleCredentialsError> {
        let text = read_small(path)?;
        let key = parse_key(&text, path)?;
        Ok(GoogleCredentials {
            kind: Kind::ServiceAccount(Arc::new(key)),
            source: GoogleCredentialsSource::KeyFile(path.to_path_buf()),
        })
    }

    pub fn source(&self) -> &GoogleCredentialsSource {
        &self.source
    }
}

impl fmt::Debug for GoogleCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("GoogleCredentials");
        d.field("source", &self.source);
        if let Kind::ServiceAccount(key) = &self.kind {
            d.field("client_email", &key.client_email);
        }
        d.finish_non_exhaustive()
    }
}

/// Resolves credentials from the process's environment.
pub fn resolve(explicit: Option<GoogleCredentials>) -> Result<GoogleCredentials, GoogleCredentialsError> {
    resolve_with(explicit, &|name| std::env::var(name).ok())
}

/// Resolves credentials in the documented order, reading variables through `env`.
pub fn resolve_with(
    explicit: Option<GoogleCredentials>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<GoogleCredentials, GoogleCredentialsError> {
    if let Some(credentials) = explicit {
        return Ok(credentials);
    }
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(token) = var("GOOGLE_OAUTH_ACCESS_TOKEN") {
        return Ok(GoogleCredentials {
            kind: Kind::AccessToken(token.trim().to_string()),
            source: GoogleCredentialsSource::TokenEnvironment,
        });
    }
    if let Some(path) = var("GOOGLE_APPLICATION_CREDENTIALS") {
        return GoogleCredentials::key_file(Path::new(&path));
    }
    let host = var("GCE_METADATA_HOST").map_or_else(|| METADATA_HOST_DEFAULT.to_string(), |h| h.trim().to_string());
    // The host goes into a URL as is: only a name or an address, and a port.
    let url = reqwest::Url::parse(&format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token"))
        .ok()
        .filter(|url| host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) && url.has_host())
        .ok_or_else(|| GoogleCredentialsError::MetadataHost(host.clone()))?;
    Ok(GoogleCredentials {
        kind: Kind::MetadataServer { service: format!("the metadata server at http://{host}"), url: url.to_string() },
        source: GoogleCredentialsSource::MetadataServer { host },
    })
}

fn read_small(path: &Path) -> Result<String, GoogleCredentialsError> {
    let unreadable = |reason: String| GoogleCredentialsError::FileUnreadable { path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?;
    if meta.len() > KEY_FILE_BYTES_MAX {
        return Err(unreadable(format!("it has {} bytes, more than a key file ever needs", meta.len())));
    }
    std::fs::read_to_string(path).map_err(|e| unreadable(e.to_string()))
}

/// Reads a key file: a `service_account` with an RSA key in PKCS#8 PEM, as Google writes them.
fn parse_key(text: &str, path: &Path) -> Result<ServiceAccountKey, GoogleCredentialsError> {
    let not_a_key = |reason: &str| GoogleCredentialsError::NotAKey { path: path.to_path_buf(), reason: reason.into() };
    // serde_json's message could quote the key; only the position is kept.
    let file: KeyFile = serde_json::from_str(text).map_err(|e| {
        not_a_key(&format!(
            "it is not JSON with type, client_email, private_key_id, private_key and token_uri (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    if file.kind != "service_account" {
        return Err(not_a_key(&format!("its type is {:?}, not \"service_account\"", file.kind)));
    }
    if rest_endpoint(&file.token_uri).is_none() {
        return Err(not_a_key("its token_uri is not an http(s) URL"));
    }
    let der = pem_body(&file.private_key, "PRIVATE KEY").ok_or_else(|| not_a_key("its private_key is not PEM"))?;
    let key_pair =
        RsaKeyPair::from_pkcs8(&der).map_err(|_| not_a_key("its private_key is not an RSA key in PKCS#8"))?;
    Ok(ServiceAccountKey {
        client_email: file.client_email,
        private_key_id: file.private_key_id,
        token_uri: file.token_uri,
        key_pair,
    })
}

fn rest_endpoint(url: &str) -> Option<()> {
    crate::rest::endpoint(url).ok().map(|_| ())
}

/// The DER inside one PEM block with the given label.
fn pem_body(pem: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)? + begin.len();
    let stop = start + pem[start..].find(&end)?;
    let b64: String = pem[start..stop].chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// The signed JWT that asks `token_uri` for a Compute Engine access token (RFC 7523): header `RS256` with the key's
/// id, claims `iss` (the service account), `scope`, `aud` (the token endpoint), `iat` and `exp` an hour later.
pub(crate) fn assertion(key: &ServiceAccountKey, now_s: u64) -> Result<String, ring::error::Unspecified> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": key.private_key_id });
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": SCOPE,
        "aud": key.token_uri,
        "iat": now_s,
        "exp": now_s + ASSERTION_LIFETIME_S,
    });
    let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let mut signature = vec![0; key.key_pair.public().modulus_len()];
    key.key_pair.sign(&RSA_PKCS1_SHA256, &ring::rand::SystemRandom::new(), signing_input.as_bytes(), &mut signature)?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    use super::*;

    const TEST_KEY_PEM: &str = include_str!("../../tests/data/gce-test-key.pem");

    fn key_json(token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": "ferry-test",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": TEST_KEY_PEM,
            "client_email": "ferry@ferry-test.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn write_key(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("key.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_with_googles_claims() {
        let key = parse_key(&key_json("https://oauth2.googleapis.com/token"), Path::new("k")).unwrap();
        let jwt = assertion(&key, 1_709_285_415).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": key.private_key_id}));
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "ferry@ferry-test.iam.gserviceaccount.com",
                "scope": "https://www.googleapis.com/auth/compute",
                "aud": "https://oauth2.googleapis.com/token",
                "iat": 1_709_285_415u64,
                "exp": 1_709_289_015u64,
            })
        );
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.key_pair.public().as_ref().to_vec());
        let signed = format!("{}.{}", parts[0], parts[1]);
        public.verify(signed.as_bytes(), &decode(parts[2])).unwrap();
    }

    #[test]
    fn the_token_variable_comes_before_the_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), &key_json("https://oauth2.googleapis.com/token"));
        let vars: HashMap<&str, String> = HashMap::from([
            ("GOOGLE_OAUTH_ACCESS_TOKEN", "ya29.from-env".to_string()),
            ("GOOGLE_APPLICATION_CREDENTIALS", path.display().to_string()),
        ]);
        let got = resolve_with(None, &|n| vars.get(n).cloned()).unwrap();
        assert_eq!(got.source(), &GoogleCredentialsSource::TokenEnvironment);
        let got = resolve_with(None, &|n| vars.get(n).filter(|_| n != "GOOGLE_OAUTH_ACCESS_TOKEN").cloned()).unwrap();
        assert_eq!(got.source(), &GoogleCredentialsSource::KeyFile(path));
    }

    #[test]
    fn the_metadata_server_comes_last_and_its_host_may_be_moved() {
        let got = resolve_with(None, &|_| None).unwrap();
        let host = GoogleCredentialsSource::MetadataServer { host: "metadata.google.internal".into() };
        assert_eq!(got.source(), &host);
        let Kind::MetadataServer { url, .. } = &got.kind else { panic!("{got:?}") };
        assert_eq!(url, "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token");
        let got = resolve_with(None, &|n| (n == "GCE_METADATA_HOST").then(|| "127.0.0.1:8080".into())).unwrap();
        assert_eq!(
            format!("{got:?}"),
            r#"GoogleCredentials { source: MetadataServer { host: "127.0.0.1:8080" }, .. }"#
        );
        for bad in ["evil.example/steal?x=", "user@host", "http://x"] {
            let err = resolve_with(None, &|n| (n == "GCE_METADATA_HOST").then(|| bad.into())).unwrap_err();
            assert_eq!(err, GoogleCredentialsError::MetadataHost(bad.into()));
        }
    }

    #[test]
    fn a_bad_key_file_is_named_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let secretish = key_json("https://oauth2.googleapis.com/token").replace("service_account", "authorized_user");
        let cases = [
            "{\"private_key\": \"-----BEGIN PRIVATE KEY-----SECRETSTUFF\"".to_string(),
            secretish,
            key_json("https://oauth2.googleapis.com/token").replace("MII", "XXX"),
            key_json("file:///etc/passwd"),
        ];
        let mut shown = vec![];
        for text in cases {
            let path = write_key(dir.path(), &text);
            let err = GoogleCredentials::key_file(&path).unwrap_err().to_string();
            shown.push(err.replace(&dir.path().display().to_string(), "DIR"));
        }
        expect_test::expect![[r#"
            [
                "DIR/key.json is not a Google service account key (it is not JSON with type, client_email, private_key_id, private_key and token_uri (line 1 column 56)): create one with `gcloud iam service-accounts keys create` or in the console (IAM & Admin, Service accounts, Keys) and point GOOGLE_APPLICATION_CREDENTIALS at it",
                "DIR/key.json is not a Google service account key (its type is \"authorized_user\", not \"service_account\"): create one with `gcloud iam service-accounts keys create` or in the console (IAM & Admin, Service accounts, Keys) and point GOOGLE_APPLICATION_CREDENTIALS at it",
                "DIR/key.json is not a Google service account key (its private_key is not an RSA key in PKCS#8): create one with `gcloud iam service-accounts keys create` or in the console (IAM & Admin, Service accounts, Keys) and point GOOGLE_APPLICATION_CREDENTIALS at it",
                "DIR/key.json is not a Google service account key (its token_uri is not an http(s) URL): create one with `gcloud iam service-accounts keys create` or in the console (IAM & Admin, Service accounts, Keys) and point GOOGLE_APPLICATION_CREDENTIALS at it",
            ]
        "#]]
        .assert_debug_eq(&shown);
        for s in &shown {
            assert!(!s.contains("SECRETSTUFF") && !s.contains("MII"), "{s}");
        }
    }

    #[test]
    fn debug_shows_the_account_not_the_key_or_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_key(dir.path(), &key_json("https://oauth2.googleapis.com/token"));
        let shown = format!(
            "{:?} {:?}",
            GoogleCredentials::key_file(&path).unwrap(),
            GoogleCredentials::access_token("ya29.secret-token")
        );
        assert!(shown.contains("ferry@ferry-test.iam.gserviceaccount.com"), "{shown}");
        assert!(!shown.contains("ya29") && !shown.contains("MII") && !shown.contains("0123456789abcdef"), "{shown}");
    }
}
