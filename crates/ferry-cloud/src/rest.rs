//! What the JSON REST providers (Compute Engine, Azure) share: the HTTP client and its limits, reading an answer,
//! the errors of a call that got no usable answer, machine names and launch times.
//!
//! Nothing here may put a request's body or headers into an error: bodies carry the start-up script (with a join
//! token) and headers carry bearer tokens.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{ProviderError, Refusal};

/// How long one call may take, connecting included.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes an answer may have; a page of 500 instances is well under 8 MiB.
pub(crate) const RESPONSE_BYTES_MAX: usize = 16 << 20;
/// How long a call to a metadata service on the machine itself (EC2's, Compute Engine's, Azure's) may take, and
/// its connection: where one exists it answers in milliseconds, and a machine without one must fail at once rather
/// than hold up every call for the usual thirty seconds.
pub(crate) const METADATA_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// The most characters of an error answer's body a message quotes: enough for a metadata service's one-line reason.
const QUOTE_CHARS_MAX: usize = 200;
/// The most causes of a failed request a message names; hyper's chains are three or four long.
const ERROR_CAUSES_MAX: usize = 6;
/// The hex digits of the hash that keeps machine names of different installations apart.
const NAME_HASH_HEX: usize = 8;

/// An HTTP client with the timeouts every call has.
pub(crate) fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))
}

/// An HTTP client for a metadata service on the machine itself, with its short timeouts.
pub(crate) fn metadata_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(METADATA_TIMEOUT)
        .connect_timeout(METADATA_CONNECT_TIMEOUT)
        .build()
        .map_err(|e| format!("no HTTP client: {e}"))
}

/// The start of an error answer's body, on one line, for a message. Only ever called on error answers: a
/// successful one from a metadata service holds credentials.
pub(crate) fn quote(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(QUOTE_CHARS_MAX) {
        Some((cut, _)) => format!("{:?}…", &line[..cut]),
        None => format!("{line:?}"),
    }
}

/// Parses an endpoint setting: http or https, with a host, without a query; the path is kept without its trailing
/// slash so that API paths can be appended.
pub(crate) fn endpoint(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.host_str().is_none() {
        return Err("it must be http or https, with a host and without a query".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Whether `url` is on the same scheme, host and port as `base`: a URL the provider hands back (a next page, an
/// operation to poll) gets the bearer token only then.
pub(crate) fn same_origin(url: &str, base: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// An answer: its status, its body up to [`RESPONSE_BYTES_MAX`], and the header the provider names requests by.
pub(crate) struct Answer {
    pub status: u16,
    pub body: String,
    pub request_id: Option<String>,
    /// `Azure-AsyncOperation`, where the answer has one.
    pub async_operation: Option<String>,
    /// `Retry-After` in seconds, where the answer has one.
    pub retry_after_s: Option<u64>,
}

/// Sends a request and reads its answer; a request that got none is [`ProviderError::Transient`], named by `call`.
pub(crate) async fn send(
    provider: &'static str,
    call: &str,
    request: reqwest::RequestBuilder,
    request_id_header: Option<&str>,
) -> Result<Answer, ProviderError> {
    let mut response = request.send().await.map_err(|e| no_answer(provider, call, &without_url(e)))?;
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let request_id = request_id_header.and_then(header);
    let async_operation = header("azure-asyncoperation");
    let retry_after_s = header("retry-after").and_then(|v| v.trim().parse().ok());
    let status = response.status().as_u16();
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| no_answer(provider, call, &without_url(e)))? {
        if body.len() + chunk.len() > RESPONSE_BYTES_MAX {
            return Err(no_answer(provider, call, &format!("the answer is longer than {RESPONSE_BYTES_MAX} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let body = String::from_utf8(body).map_err(|_| no_answer(provider, call, &"the answer is not UTF-8"))?;
    Ok(Answer { status, body, request_id, async_operation, retry_after_s })
}

/// reqwest's error without its URL (a URL handed back by the provider could carry anything), with its causes, which
/// tell a refused connection from a timeout.
fn without_url(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    for _ in 0..ERROR_CAUSES_MAX {
        let Some(c) = cause else { break };
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// A call that got no answer: unreachable endpoint, timeout, cut connection.
pub(crate) fn no_answer(provider: &'static str, call: &str, error: &dyn fmt::Display) -> ProviderError {
    ProviderError::Transient(Refusal {
        provider,
        code: "NoAnswer".into(),
        message: format!("{call} got no answer: {error}"),
        request_id: None,
    })
}

/// An answer that is not what the provider sends: a proxy's page, a truncated body. Worth another try.
pub(crate) fn malformed(provider: &'static str, message: String) -> ProviderError {
    ProviderError::Transient(Refusal { provider, code: "MalformedResponse".into(), message, request_id: None })
}

/// A request Ferry refuses to send, with why.
pub(crate) fn refused(provider: &'static str, message: String) -> ProviderError {
    ProviderError::Invalid(Refusal { provider, code: "FerryRefused".into(), message, request_id: None })
}

/// Reads a JSON answer, or says it is not the provider's.
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    provider: &'static str,
    what: &str,
    body: &str,
) -> Result<T, ProviderError> {
    // serde_json's message may quote a value of the body; only its position is kept.
    serde_json::from_str(body).map_err(|e| {
        malformed(provider, format!("cannot read the {what} answer (line {} column {})", e.line(), e.column()))
    })
}

/// The machine's name for a node: the node's name in lowercase letters, digits and hyphens (anything else becomes a
/// hyphen, a name not starting with a letter gets `ferry-` in front), cut to fit, then a hyphen and eight hex digits
/// of SHA-256 over the installation and the node. The hash keeps two installations sharing a project or resource
/// group apart, and makes the name the same each time the same node is launched, so a repeated launch finds the
/// first machine instead of making a second. Both Compute Engine (`[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63) and
/// Azure (Linux computer names: letters, digits and hyphens, at most 64) accept the result.
pub(crate) fn machine_name(installation: &str, node: &str, length_max: usize) -> String {
    let mut base: String =
        node.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert_str(0, "ferry-");
    }
    base.truncate(length_max - NAME_HASH_HEX - 1);
    let digest = Sha256::digest(format!("{installation}\n{node}").as_bytes());
    format!("{base}-{}", &hex::encode(digest)[..NAME_HASH_HEX])
}

/// A UUID (version 4's layout) derived from a client token, for APIs whose idempotency key must be a UUID: the same
/// token gives the same UUID.
pub(crate) fn uuid_from(token: &str) -> String {
    let mut b: [u8; 16] = Sha256::digest(token.as_bytes())[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// An RFC 3339 time in milliseconds since the Unix epoch.
pub(crate) fn rfc3339_ms(text: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_are_safe_stable_and_apart() {
        assert_eq!(machine_name("inst-1", "gcp-spot-3", 63), machine_name("inst-1", "gcp-spot-3", 63));
        assert_ne!(machine_name("inst-1", "gcp-spot-3", 63), machine_name("inst-2", "gcp-spot-3", 63));
        let name = machine_name("inst-1", "3_Big.Node", 63);
        assert!(name.starts_with("ferry-3-big-node-"), "{name}");
        let long = machine_name("inst-1", &"a".repeat(100), 63);
        assert_eq!(long.len(), 63);
        assert!(long.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'), "{long}");
    }

    #[test]
    fn uuids_from_tokens_are_stable_version_4_uuids() {
        let u = uuid_from("inst-1/gcp-3/1");
        assert_eq!(u, uuid_from("inst-1/gcp-3/1"));
        assert_ne!(u, uuid_from("inst-1/gcp-3/2"));
        let parts: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }

    #[test]
    fn times_with_offsets_and_seven_digit_fractions_are_read() {
        assert_eq!(rfc3339_ms("2024-03-01T01:30:15.123-08:00"), Some(1_709_285_415_123));
        assert_eq!(rfc3339_ms("2024-03-01T09:30:15.1234567+00:00"), Some(1_709_285_415_123));
        assert_eq!(rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn quoted_bodies_are_one_line_and_short() {
        assert_eq!(quote("Identity\n  not found"), "\"Identity not found\"");
        assert_eq!(quote(&"é".repeat(300)).chars().count(), QUOTE_CHARS_MAX + 3);
    }

    #[test]
    fn only_same_origin_urls_get_the_token() {
        assert!(same_origin("https://management.azure.com/x?y", "https://management.azure.com"));
        assert!(!same_origin("https://evil.example/x", "https://management.azure.com"));
        assert!(!same_origin("http://127.0.0.1:81/x", "http://127.0.0.1:80"));
    }
}
