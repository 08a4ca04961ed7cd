//! OAuth 2.0 access tokens as Compute Engine and Azure hand them out: one form `POST` to a token endpoint
//! (RFC 6749 §4.4 client credentials for Azure, RFC 7523 JWT bearer for Google), or one `GET` to a metadata service
//! on the machine itself (Compute Engine's metadata server, Azure's managed identity endpoint), the token kept until
//! shortly before it expires.
//!
//! A token, a client secret or an assertion must never reach a log line, a `Debug` or an error: errors carry the
//! endpoint's error code and description only, never the form that was sent.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::rest;
use crate::{ProviderError, Refusal};

/// A token is fetched again this long before it expires, so that no call goes out with one about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long a token is kept when the endpoint does not say (both document an hour).
const LIFETIME_DEFAULT: Duration = Duration::from_secs(3600);

/// A bearer token; its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Bearer(pub String);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bearer(..)")
    }
}

/// The token in use and when it should be replaced.
#[derive(Default)]
pub(crate) struct TokenCache(Mutex<Option<(Bearer, Instant)>>);

impl TokenCache {
    /// The cached token, if it is good for a while yet.
    pub fn get(&self, now: Instant) -> Option<Bearer> {
        let cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cached.as_ref().filter(|(_, refresh_at)| now < *refresh_at).map(|(token, _)| token.clone())
    }

    pub fn put(&self, token: Bearer, lifetime: Duration, now: Instant) {
        let refresh_at = now + lifetime.saturating_sub(REFRESH_MARGIN);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((token, refresh_at));
    }

    /// Forgets the token, after the API refused it.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

/// `expires_in` as a number (RFC 6749, Google) or as a string of digits (Azure's instance metadata service).
fn seconds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    Ok(match Option::<Seconds>::deserialize(deserializer)? {
        Some(Seconds::Number(n)) => Some(n),
        Some(Seconds::Text(text)) => Some(text.trim().parse().map_err(serde::de::Error::custom)?),
        None => None,
    })
}

#[derive(Deserialize)]
struct TokenRefusal {
    error: String,
    #[serde(default)]
    error_description: String,
}

/// Posts `form` to a token endpoint and returns the access token and how long it lasts.
pub(crate) async fn fetch(
    provider: &'static str,
    http: &reqwest::Client,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(Bearer, Duration), ProviderError> {
    let request = http.post(url).header("accept", "application/json").form(form);
    let answer = rest::send(provider, "the token request", request, Some("x-ms-request-id")).await?;
    if (200..300).contains(&answer.status) {
        let token: TokenAnswer = rest::json(provider, "token", &answer.body)?;
        let lifetime = token.expires_in.map_or(LIFETIME_DEFAULT, Duration::from_secs);
        return Ok((Bearer(token.access_token), lifetime));
    }
    Err(refusal(provider, answer.status, &answer.body, answer.request_id))
}

/// A token service on the machine itself, and how its failures are worded.
pub(crate) struct Metadata<'a> {
    pub provider: &'static str,
    /// The service as messages name it, with where it is: `the metadata server at http://metadata.google.internal`.
    pub service: &'a str,
    /// Where else Ferry looked, as a message's start: `no Google credentials: … are not set, and`.
    pub looked: &'a str,
    /// What to do instead.
    pub instead: &'a str,
}

/// Sends `request` (a `GET` with the service's header) to a metadata service and returns the access token and how
/// long it lasts. No answer at all, or a refusal, means there are no credentials here (`Unauthorized`, naming where
/// Ferry looked); only the service's throttling and faults are `Transient`. Error answers are quoted, shortened;
/// a successful answer never is, as it holds the token.
pub(crate) async fn fetch_metadata(
    metadata: &Metadata<'_>,
    request: reqwest::RequestBuilder,
) -> Result<(Bearer, Duration), ProviderError> {
    let Metadata { provider, service, looked, instead } = *metadata;
    let no_credentials = |what: String| {
        ProviderError::Unauthorized(Refusal {
            provider,
            code: crate::NO_CREDENTIALS.into(),
            message: format!("{looked} {service} {what}: {instead}"),
            request_id: None,
        })
    };
    let request = request.timeout(rest::METADATA_TIMEOUT).header("accept", "application/json");
    let answer = rest::send(provider, "the token request", request, None)
        .await
        .map_err(|e| no_credentials(format!("did not answer ({})", e.refusal().message)))?;
    match answer.status {
        200..=299 => {
            let token: TokenAnswer = rest::json(provider, "metadata token", &answer.body)?;
            Ok((Bearer(token.access_token), token.expires_in.map_or(LIFETIME_DEFAULT, Duration::from_secs)))
        }
        status @ (429 | 500..=599) => Err(ProviderError::Transient(Refusal {
            provider,
            code: format!("HTTP{status}"),
            message: format!("{service} answered {status} to the token request: {}", rest::quote(&answer.body)),
            request_id: None,
        })),
        status => {
            Err(no_credentials(format!("answered {status} to the token request ({})", rest::quote(&answer.body))))
        }
    }
}

/// What a token endpoint's refusal stands for: RFC 6749's `{"error", "error_description"}`.
pub(crate) fn refusal(provider: &'static str, status: u16, body: &str, request_id: Option<String>) -> ProviderError {
    let (code, message) = match serde_json::from_str::<TokenRefusal>(body) {
        Ok(r) => (r.error, r.error_description),
        Err(_) => (format!("HTTP{status}"), String::new()),
    };
    let refusal = Refusal { provider, code, message: format!("signing in: {message}"), request_id };
    match (status, refusal.code.as_str()) {
        (429 | 500..=599, _) | (_, "temporarily_unavailable" | "server_error") => ProviderError::Transient(refusal),
        (_, "invalid_request" | "invalid_scope" | "unsupported_grant_type") => ProviderError::Invalid(refusal),
        // invalid_grant, invalid_client, unauthorized_client and any other refusal: the credentials are wrong.
        _ => ProviderError::Unauthorized(refusal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_replaced_before_it_expires() {
        let cache = TokenCache::default();
        let t0 = Instant::now();
        assert_eq!(cache.get(t0), None);
        cache.put(Bearer("a".into()), Duration::from_secs(3599), t0);
        assert_eq!(cache.get(t0 + Duration::from_secs(3000)), Some(Bearer("a".into())));
        assert_eq!(cache.get(t0 + Duration::from_secs(3300)), None);
        cache.put(Bearer("b".into()), Duration::from_secs(3599), t0);
        cache.clear();
        assert_eq!(cache.get(t0), None);
        assert_eq!(format!("{:?}", Bearer("ya29.secret".into())), "Bearer(..)");
    }

    #[test]
    fn expires_in_may_be_a_number_or_a_string() {
        let lifetime = |body: &str| serde_json::from_str::<TokenAnswer>(body).map(|t| t.expires_in).ok();
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":3599}"#), Some(Some(3599)));
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":"86399"}"#), Some(Some(86399)));
        assert_eq!(lifetime(r#"{"access_token":"a"}"#), Some(None));
        assert_eq!(lifetime(r#"{"access_token":"a","expires_in":"soon"}"#), None);
    }

    #[test]
    fn token_endpoint_refusals_are_typed() {
        let google = r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        let err = refusal("Compute Engine", 400, google, None);
        assert!(matches!(&err, ProviderError::Unauthorized(r) if r.code == "invalid_grant"), "{err:?}");
        assert_eq!(err.refusal().message, "signing in: Invalid JWT Signature.");
        let azure = r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.","error_codes":[7000215],"timestamp":"2024-03-01 09:30:15Z","trace_id":"0b4e8f3a-0000-4000-8000-000000000001","correlation_id":"0b4e8f3a-0000-4000-8000-000000000002"}"#;
        assert!(matches!(refusal("Azure", 401, azure, None), ProviderError::Unauthorized(_)));
        assert!(refusal("Azure", 503, "<html>", None).is_transient());
        let scope = r#"{"error":"invalid_scope","error_description":"AADSTS70011: The provided value for the input parameter 'scope' is not valid."}"#;
        assert!(matches!(refusal("Azure", 400, scope, None), ProviderError::Invalid(_)));
    }
}
