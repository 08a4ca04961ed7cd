//! Single sign-on with an OpenID Connect provider.
//!
//! Ferry is the provider's client for both ways in:
//! - the dashboard signs in with the authorisation-code flow and PKCE (`start_login`, then `finish_login` at the
//!   callback, which checks the `state` it made, the code verifier and the ID token's nonce), and gets a session;
//! - the CLI (`ferry login`) asks the server to run the device flow (`start_device`): the user confirms a code at the
//!   provider, the server polls the provider and hands the CLI a session of its own when the user has confirmed.
//!
//! Either way the ID token is checked by `openidconnect` (signature against the provider's keys, issuer, audience,
//! expiry, nonce), the user is found by the provider's subject, or by name when the configuration allows, or
//! created, and the provider's groups become team memberships by the admin's rules (`sign_in`). A session keeps
//! the provider's refresh token and is checked again with the provider every `recheck` (`refresh`): a user the
//! provider disabled, or whose grant it revoked, is signed out at the next check, and a change of groups follows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_api::tokens::{identity_name_problem, TeamRole};
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClient, CoreClientAuthMethod,
    CoreDeviceAuthorizationResponse, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreSubjectIdentifierType, CoreTokenResponse,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceAuthorizationUrl, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};

/// The `[oidc]` table of the configuration file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    issuer: String,
    client_id: String,
    client_secret_env: Option<String>,
    username_claim: Option<String>,
    groups_claim: Option<String>,
    create_users: Option<bool>,
    link_existing_users: Option<bool>,
    session_lifetime: Option<String>,
    recheck: Option<String>,
    scopes: Option<Vec<String>>,
}

/// Single sign-on, as checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    /// The environment variable holding a confidential client's secret.
    pub client_secret_env: Option<String>,
    pub username_claim: String,
    pub groups_claim: String,
    /// Users unknown to Ferry are created at their first sign-in.
    pub create_users: bool,
    /// A sign-in whose user name names an existing Ferry user not yet signed in with single sign-on becomes that
    /// user. Off by default: whoever controls the name claim at the provider would otherwise take over the account.
    pub link_existing_users: bool,
    pub session_lifetime: Duration,
    pub recheck: Duration,
    pub scopes: Vec<String>,
}

impl RawOidc {
    pub fn check(self) -> Result<OidcConfig, String> {
        let issuer = self.issuer.trim_end_matches('/').to_string();
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) || issuer.contains(char::is_whitespace) {
            return Err(format!("`issuer` = `{issuer}` is not an http(s) address such as \"https://id.example.org\""));
        }
        if self.client_id.trim().is_empty() {
            return Err("`client_id` must name the client registered with the provider for Ferry".to_string());
        }
        let duration = |field: &str, text: Option<String>, default: Duration, min: Duration| match text {
            None => Ok(default),
            Some(text) => {
                let d = humantime::parse_duration(&text)
                    .map_err(|_| format!("`{field}` = `{text}` is not a duration such as 12h or 5m"))?;
                if d < min {
                    return Err(format!(
                        "`{field}` = `{text}` is too short; the least is {}",
                        humantime::format_duration(min)
                    ));
                }
                Ok(d)
            }
        };
        let session_lifetime =
            duration("session_lifetime", self.session_lifetime, SESSION_LIFETIME_DEFAULT, Duration::from_secs(5))?;
        let recheck = duration("recheck", self.recheck, RECHECK_DEFAULT, Duration::from_secs(1))?;
        let mut scopes = self.scopes.unwrap_or_else(|| ["profile", "email", "groups"].map(String::from).to_vec());
        scopes.retain(|s| s != "openid");
        if let Some(bad) = scopes.iter().find(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err(format!("`scopes` holds `{bad}`, which is not a scope name"));
        }
        Ok(OidcConfig {
            issuer,
            client_id: self.client_id.trim().to_string(),
            client_secret_env: self.client_secret_env,
            username_claim: self.username_claim.unwrap_or_else(|| "preferred_username".to_string()),
            groups_claim: self.groups_claim.unwrap_or_else(|| "groups".to_string()),
            create_users: self.create_users.unwrap_or(true),
            link_existing_users: self.link_existing_users.unwrap_or(false),
            session_lifetime,
            recheck,
            scopes,
        })
    }
}

/// How long a sign-in lasts unless the configuration says.
pub const SESSION_LIFETIME_DEFAULT: Duration = Duration::from_secs(12 * 3600);
/// How often a session is checked with the provider unless the configuration says.
pub const RECHECK_DEFAULT: Duration = Duration::from_secs(300);
/// How long a started sign-in (browser or device) may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// The most sign-ins under way at once; past it the oldest are forgotten.
const PENDING_MAX: usize = 10_000;
/// How long the provider's discovery document and keys are trusted before they are read again.
const METADATA_TTL: Duration = Duration::from_secs(600);

/// The provider's discovery document, with the device authorisation endpoint that the core metadata leaves out.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DeviceEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

type Metadata = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type ProviderClient =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// Every claim of an ID token, so that the configured name and groups claims can be read whatever they are called.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct AllClaims {
    #[serde(flatten)]
    claims: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for AllClaims {}

type FullIdToken = IdToken<AllClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Who the provider says signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The provider's subject, with its issuer: what binds a Ferry user to a person at the provider.
    pub subject: String,
    pub username: Option<String>,
    pub groups: Vec<String>,
}

/// Why single sign-on failed, in words for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached or answered nonsense: nothing is known about the user.
    #[error("the sign-in provider could not be reached: {0}")]
    Unreachable(String),
    /// The provider, or Ferry's checks, refused: the user is not signed in.
    #[error("{0}")]
    Refused(String),
}

struct PendingLogin {
    verifier: String,
    nonce: String,
    next: String,
    at: Instant,
}

/// A device sign-in under way, as the CLI polls it.
#[derive(Clone, Debug)]
pub enum DeviceState {
    Pending,
    Done { token: String, user: String, expires_at_us: i64 },
    Failed(String),
}

/// The single sign-on client of this server.
pub struct Oidc {
    pub config: OidcConfig,
    /// Seals the refresh tokens sessions keep.
    pub sealer: Sealer,
    secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<(Metadata, Instant)>>,
    logins: Mutex<HashMap<String, PendingLogin>>,
    devices: Mutex<HashMap<String, (DeviceState, Instant)>>,
}

/// The path the provider sends the browser back to.
pub const CALLBACK_PATH: &str = "/auth/callback";

impl Oidc {
    /// The client for `config`, with the server reachable at `base_url` (for the redirect URI); reads the client
    /// secret from its environment variable. `data_secret` (the data directory's) keys the sealing of refresh tokens.
    pub fn new(config: OidcConfig, base_url: &str, data_secret: &[u8]) -> Result<Oidc, String> {
        let secret = match &config.client_secret_env {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(secret) if !secret.is_empty() => Some(ClientSecret::new(secret)),
                _ => {
                    return Err(format!(
                        "[oidc] `client_secret_env` names `{var}`, which is not set in the server's environment; set \
                         it to the client secret the provider gave"
                    ))
                }
            },
        };
        let redirect = RedirectUrl::new(format!("{}{CALLBACK_PATH}", base_url.trim_end_matches('/')))
            .map_err(|e| format!("[oidc] the redirect address is not a URL: {e}; set `public_url`"))?;
        // Following redirects from the provider's endpoints would let them send Ferry anywhere.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| format!("[oidc] cannot make an HTTP client: {e}"))?;
        Ok(Oidc {
            config,
            sealer: Sealer::new(data_secret),
            secret,
            redirect,
            http,
            metadata: tokio::sync::Mutex::new(None),
            logins: Mutex::default(),
            devices: Mutex::default(),
        })
    }

    pub fn redirect_uri(&self) -> &str {
        self.redirect.as_str()
    }

    /// The provider's discovery document and keys, read again after `METADATA_TTL` or when `fresh` (a token signed
    /// by a key not seen yet: the provider rotated its keys).
    async fn metadata(&self, fresh: bool) -> Result<Metadata, OidcError> {
        let mut cached = self.metadata.lock().await;
        if let Some((metadata, at)) = cached.as_ref() {
            if !fresh && at.elapsed() < METADATA_TTL {
                return Ok(metadata.clone());
            }
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| OidcError::Unreachable(e.to_string()))?;
        let metadata = Metadata::discover_async(issuer, &self.http).await.map_err(|e| {
            OidcError::Unreachable(format!(
                "reading {}/.well-known/openid-configuration failed: {}",
                self.config.issuer,
                chain(&e)
            ))
        })?;
        *cached = Some((metadata.clone(), Instant::now()));
        Ok(metadata)
    }

    fn client(&self, metadata: Metadata) -> ProviderClient {
        CoreClient::from_provider_metadata(metadata, ClientId::new(self.config.client_id.clone()), self.secret.clone())
            .set_redirect_uri(self.redirect.clone())
    }

    /// Starts a browser sign-in: the provider's authorisation address to send the browser to, and the `state` it
    /// carries (which the browser also keeps in a cookie, so that only the browser that started a sign-in ends it).
    pub async fn start_login(&self, next: &str) -> Result<(String, String), OidcError> {
        let client = self.client(self.metadata(false).await?);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, state, nonce) = request.url();
        let pending = PendingLogin {
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
            next: next.to_string(),
            at: Instant::now(),
        };
        let mut logins = self.logins.lock().expect("sign-in table lock is never poisoned");
        logins.retain(|_, p| p.at.elapsed() < LOGIN_TTL);
        if logins.len() >= PENDING_MAX {
            logins.clear();
        }
        logins.insert(state.secret().clone(), pending);
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Ends a browser sign-in at the callback: who signed in, the provider's refresh token, and where to go next.
    pub async fn finish_login(&self, state: &str, code: &str) -> Result<(Identity, Option<String>, String), OidcError> {
        let pending = self
            .logins
            .lock()
            .expect("sign-in table lock is never poisoned")
            .remove(state)
            .filter(|p| p.at.elapsed() < LOGIN_TTL)
            .ok_or_else(|| OidcError::Refused("this sign-in is unknown or too old; sign in again".to_string()))?;
        let client = self.client(self.metadata(false).await?);
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Unreachable(format!("the provider names no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier));
        let response = request.request_async(&self.http).await.map_err(token_error)?;
        let nonce = Nonce::new(pending.nonce);
        let identity = self.identity(&response, Some(&nonce)).await?;
        Ok((identity, response.refresh_token().map(|t| t.secret().clone()), pending.next))
    }

    /// Checks a session again with the provider: its refresh token buys a new ID token (when the provider sends one)
    /// and maybe a new refresh token. `Refused` means the provider no longer vouches for the user.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(Option<Identity>, Option<String>), OidcError> {
        let client = self.client(self.metadata(false).await?);
        let token = RefreshToken::new(refresh_token.to_string());
        let request = client
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::Unreachable(format!("the provider names no token endpoint: {e}")))?;
        let response = request.request_async(&self.http).await.map_err(token_error)?;
        let identity = match response.id_token() {
            Some(_) => Some(self.identity(&response, None).await?),
            None => None,
        };
        Ok((identity, response.refresh_token().map(|t| t.secret().clone())))
    }

    /// Starts a device sign-in for the CLI: the provider's answer (user code, address) and a handle for polling.
    pub async fn start_device(&self) -> Result<(CoreDeviceAuthorizationResponse, ProviderClientWithDevice), OidcError> {
        let metadata = self.metadata(false).await?;
        let endpoint = metadata.additional_metadata().device_authorization_endpoint.clone().ok_or_else(|| {
            OidcError::Refused(
                "the sign-in provider offers no device authorisation; sign in to the dashboard instead, or create a \
                 token there with `ferry token create`"
                    .to_string(),
            )
        })?;
        let client = self.client(metadata).set_device_authorization_url(endpoint);
        let mut request = client.exchange_device_code();
        for scope in &self.config.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let details: CoreDeviceAuthorizationResponse = request.request_async(&self.http).await.map_err(token_error)?;
        Ok((details, client))
    }

    /// Waits for the user to confirm a device sign-in (polling the provider at its interval), then checks the ID
    /// token: who signed in, and the provider's refresh token.
    pub async fn wait_device(
        &self,
        client: &ProviderClientWithDevice,
        details: &CoreDeviceAuthorizationResponse,
    ) -> Result<(Identity, Option<String>), OidcError> {
        let request = client
            .exchange_device_access_token(details)
            .map_err(|e| OidcError::Unreachable(format!("the provider names no token endpoint: {e}")))?;
        let response =
            request.request_async(&self.http, tokio::time::sleep, Some(LOGIN_TTL)).await.map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    OidcError::Refused(format!("the sign-in was not confirmed ({})", r.error().as_ref()))
                }
                other => OidcError::Unreachable(chain(&other)),
            })?;
        let identity = self.identity(&response, None).await?;
        Ok((identity, response.refresh_token().map(|t| t.secret().clone())))
    }

    /// Remembers a device sign-in's state under the SHA-256 of its handle.
    pub fn set_device(&self, handle_hash: &str, state: DeviceState) {
        let mut devices = self.devices.lock().expect("device table lock is never poisoned");
        devices.retain(|_, (_, at)| at.elapsed() < LOGIN_TTL * 2);
        if devices.len() >= PENDING_MAX {
            devices.clear();
        }
        devices.insert(handle_hash.to_string(), (state, Instant::now()));
    }

    /// A device sign-in's state; a finished one (done or failed) is told once, then forgotten.
    pub fn take_device(&self, handle_hash: &str) -> Option<DeviceState> {
        let mut devices = self.devices.lock().expect("device table lock is never poisoned");
        match devices.get(handle_hash) {
            None => None,
            Some((DeviceState::Pending, _)) => Some(DeviceState::Pending),
            Some(_) => devices.remove(handle_hash).map(|(state, _)| state),
        }
    }

    /// The checked identity in a token response: the ID token's signature, issuer, audience, expiry and (for a
    /// browser sign-in) nonce, then the configured claims.
    async fn identity(&self, response: &CoreTokenResponse, nonce: Option<&Nonce>) -> Result<Identity, OidcError> {
        let raw = response
            .id_token()
            .ok_or_else(|| {
                OidcError::Refused(
                    "the provider sent no ID token; is the `openid` scope allowed for the client?".to_string(),
                )
            })?
            .to_string();
        let token: FullIdToken =
            raw.parse().map_err(|e| OidcError::Refused(format!("the provider's ID token cannot be read: {e}")))?;
        let check = |metadata: Metadata| {
            let client = self.client(metadata);
            let verifier = client.id_token_verifier();
            let nonce_check = |sent: Option<&Nonce>| match (nonce, sent) {
                (None, _) => Ok(()),
                (Some(expected), Some(sent)) if expected.secret() == sent.secret() => Ok(()),
                _ => Err("the ID token's nonce is not the one this sign-in sent".to_string()),
            };
            token.claims(&verifier, nonce_check).cloned()
        };
        let claims = match check(self.metadata(false).await?) {
            Ok(claims) => claims,
            // The provider may have rotated its keys since they were read: read them again once.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => check(self.metadata(true).await?)
                .map_err(|e| OidcError::Refused(format!("the provider's ID token failed its checks: {e}")))?,
            Err(e) => return Err(OidcError::Refused(format!("the provider's ID token failed its checks: {e}"))),
        };
        let extra = &claims.additional_claims().claims;
        // The standard claims are read by the library (and so are not among the others).
        let username = match self.config.username_claim.as_str() {
            "preferred_username" => claims.preferred_username().map(|u| u.as_str().to_string()),
            "email" => claims.email().map(|e| e.as_str().to_string()),
            "sub" => Some(claims.subject().as_str().to_string()),
            other => extra.get(other).and_then(|v| v.as_str()).map(str::to_string),
        };
        let groups = match extra.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(items)) => {
                items.iter().filter_map(|g| g.as_str().map(str::to_string)).collect()
            }
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Identity { subject: format!("{}#{}", self.config.issuer, claims.subject().as_str()), username, groups })
    }
}

/// The client after the device endpoint is set.
pub type ProviderClientWithDevice =
    CoreClient<EndpointSet, EndpointSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

fn token_error<RE: std::error::Error + 'static, T: openidconnect::ErrorResponse + 'static>(
    e: RequestTokenError<RE, T>,
) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(r) => OidcError::Refused(format!("the sign-in provider refused: {r}")),
        other => OidcError::Unreachable(chain(&other)),
    }
}

/// An error with its causes, for messages that say what actually failed.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Refresh tokens are sealed before they are stored (ChaCha20-Poly1305, a random nonce each, under a key derived from
/// the data directory's secret), so a copy of the database alone does not carry the provider's credentials.
pub struct Sealer {
    key: ring::aead::LessSafeKey,
}

/// The prefix of a sealed value: the format's version, then hex of nonce and ciphertext.
const SEALED_PREFIX: &str = "v1:";

impl Sealer {
    /// A sealer whose key is derived from `secret` (the data directory's job-token key) for this use alone.
    pub fn new(secret: &[u8]) -> Sealer {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(b"ferry: sealing single sign-on refresh tokens");
        let bytes = mac.finalize().into_bytes();
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &bytes).expect("a 32-byte key");
        Sealer { key: ring::aead::LessSafeKey::new(key) }
    }

    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        let mut data = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut data,
            )
            .expect("sealing a short value never fails");
        format!("{SEALED_PREFIX}{}{}", hex::encode(nonce), hex::encode(data))
    }

    /// The value sealed in `sealed`; `None` when it was not sealed under this key or was changed.
    pub fn open(&self, sealed: &str) -> Option<String> {
        let bytes = hex::decode(sealed.strip_prefix(SEALED_PREFIX)?).ok()?;
        if bytes.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce, data) = bytes.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self.key.open_in_place(nonce, ring::aead::Aad::empty(), &mut data).ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

/// The team memberships `groups` grant by the admin's rules: the highest role per team.
pub fn granted(rules: &[ferry_store::GroupRule], groups: &[String]) -> Vec<(String, String)> {
    let mut best: std::collections::BTreeMap<String, TeamRole> = std::collections::BTreeMap::new();
    for rule in rules.iter().filter(|r| groups.contains(&r.group)) {
        if let Some(role) = TeamRole::parse(&rule.role) {
            let entry = best.entry(rule.team.clone()).or_insert(role);
            if role > *entry {
                *entry = role;
            }
        }
    }
    best.into_iter().map(|(team, role)| (team, role.name().to_string())).collect()
}

/// The Ferry user an identity signs in as (see the module's comment), with its memberships brought in line with the
/// provider's groups. A refusal says why in words for the user.
pub async fn sign_in(
    state: &crate::state::AppState,
    config: &OidcConfig,
    identity: &Identity,
) -> Result<ferry_store::UserRecord, OidcError> {
    let store = &state.store;
    let unavailable = |e: ferry_store::StoreError| {
        tracing::error!(error = %e, "store failure during a sign-in");
        OidcError::Unreachable("the server could not reach its database; retry".to_string())
    };
    let refused = |m: String| OidcError::Refused(m);
    let user = match store.user_id_by_subject(&identity.subject).await.map_err(unavailable)? {
        Some(id) => store.user(id).await.map_err(unavailable)?,
        None => {
            let name = identity.username.as_deref().ok_or_else(|| {
                refused(format!(
                    "the provider's ID token has no `{}` claim to name the Ferry user; ask the admin to set \
                     `username_claim` in [oidc]",
                    config.username_claim
                ))
            })?;
            if let Some(problem) = identity_name_problem(name) {
                return Err(refused(format!(
                    "the provider's user name `{name}` cannot be a Ferry user name: {problem}"
                )));
            }
            match store.user_by_name(name).await.map_err(unavailable)? {
                Some(existing) if config.link_existing_users => {
                    if !store.bind_subject(existing.id, &identity.subject).await.map_err(unavailable)? {
                        return Err(refused(format!(
                            "the Ferry user `{name}` signs in as another person at the provider"
                        )));
                    }
                    Some(existing)
                }
                Some(_) => {
                    return Err(refused(format!(
                        "a Ferry user `{name}` exists already and has never signed in with single sign-on; an admin \
                         allows linking existing users by name with `link_existing_users = true` in [oidc]"
                    )))
                }
                None if config.create_users => {
                    let new = ferry_store::NewUser {
                        name,
                        kind: "user",
                        admin: false,
                        default_team: None,
                        created_by: Some("single sign-on"),
                    };
                    let Some(id) = store.create_user(&new, crate::driver::now_us()).await.map_err(unavailable)? else {
                        return Err(refused(format!(
                            "the Ferry user `{name}` was created at the same moment; sign in again"
                        )));
                    };
                    store.bind_subject(id, &identity.subject).await.map_err(unavailable)?;
                    store.user(id).await.map_err(unavailable)?
                }
                None => {
                    return Err(refused(format!(
                        "there is no Ferry user `{name}`; an admin adds it with `ferry user add {name}`"
                    )))
                }
            }
        }
    }
    .ok_or_else(|| refused("the Ferry user of this sign-in no longer exists".to_string()))?;
    if user.disabled_at_us.is_some() {
        return Err(refused(format!(
            "the Ferry user `{}` is disabled; an admin enables it with `ferry user enable`",
            user.name
        )));
    }
    if user.kind == "service" {
        return Err(refused(format!("`{}` is a service account, which signs in with its tokens only", user.name)));
    }
    let rules = store.group_rules().await.map_err(unavailable)?;
    // A recheck that changes nothing keeps every other caller's cached token.
    if store.sync_granted_memberships(user.id, &granted(&rules, &identity.groups)).await.map_err(unavailable)? {
        state.tokens.clear();
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<OidcConfig, String> {
        let text = format!("issuer = \"http://127.0.0.1:9/\"\nclient_id = \"ferry\"\n{extra}");
        toml::from_str::<RawOidc>(&text).map_err(|e| e.to_string())?.check()
    }

    #[test]
    fn the_configuration_has_safe_defaults_and_clear_errors() {
        let c = raw("").unwrap();
        assert_eq!(c.issuer, "http://127.0.0.1:9");
        assert_eq!((c.username_claim.as_str(), c.groups_claim.as_str()), ("preferred_username", "groups"));
        assert!(c.create_users && !c.link_existing_users);
        assert_eq!((c.session_lifetime, c.recheck), (SESSION_LIFETIME_DEFAULT, RECHECK_DEFAULT));
        assert_eq!(c.scopes, ["profile", "email", "groups"]);
        assert!(raw("session_lifetime = \"1s\"").unwrap_err().contains("too short"));
        assert!(raw("recheck = \"soon\"").unwrap_err().contains("not a duration"));
        assert!(raw("scopes = [\"a b\"]").unwrap_err().contains("not a scope name"));
        let bad = toml::from_str::<RawOidc>("issuer = \"id.example.org\"\nclient_id = \"x\"").unwrap().check();
        assert!(bad.unwrap_err().contains("not an http(s) address"));
    }

    #[test]
    fn sealed_refresh_tokens_open_only_under_their_key_and_unchanged() {
        let sealer = Sealer::new(b"data directory secret");
        let sealed = sealer.seal("refresh-token-value");
        assert!(!sealed.contains("refresh-token-value"));
        assert_ne!(sealed, sealer.seal("refresh-token-value"), "a fresh nonce each time");
        assert_eq!(sealer.open(&sealed).as_deref(), Some("refresh-token-value"));
        assert_eq!(Sealer::new(b"another secret").open(&sealed), None);
        let mut changed = sealed.clone().into_bytes();
        let last = changed.len() - 1;
        changed[last] = if changed[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(sealer.open(std::str::from_utf8(&changed).unwrap()), None);
        assert_eq!(sealer.open("refresh-token-value"), None, "an unsealed value is not taken");
    }

    #[test]
    fn groups_grant_the_highest_role_their_rules_give() {
        let rule = |group: &str, team: &str, role: &str| ferry_store::GroupRule {
            group: group.into(),
            team: team.into(),
            role: role.into(),
        };
        let rules = [
            rule("ml", "vision", "member"),
            rule("ml-leads", "vision", "admin"),
            rule("staff", "nlp", "viewer"),
            rule("other", "speech", "member"),
        ];
        let groups = ["ml".to_string(), "ml-leads".to_string(), "staff".to_string()];
        assert_eq!(
            granted(&rules, &groups),
            [("nlp".to_string(), "viewer".to_string()), ("vision".to_string(), "admin".to_string())]
        );
        assert!(granted(&rules, &[]).is_empty());
    }
}
