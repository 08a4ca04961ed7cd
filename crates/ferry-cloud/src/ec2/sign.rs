//! AWS Signature Version 4, for the requests this crate sends.
//!
//! Written here over the workspace's `hmac`, `sha2` and `hex` rather than taken from AWS's `aws-sigv4` crate, a
//! decision with evidence (crates/ferry-cloud/README.md has the figures):
//! - `aws-sigv4` 1.6 adds ten crates to the tree (`aws-smithy-types`, `-runtime-api`, `-async`, `-http`,
//!   `aws-credential-types`, `base64-simd`, `vsimd`, `outref`, `bytes-utils` and itself), about 11 s of compile time:
//!   light enough on its own;
//! - but every current AWS crate declares rust-version 1.94.1 while the workspace declares 1.85, and AWS raises it
//!   with the toolchain; the newest line that still builds on 1.85 (`aws-sigv4` 1.3.6) brings a second HTTP stack
//!   (`http` 0.2, `http-body` 0.4) and is no longer patched;
//! - the EC2 Query API needs only the plain case: `POST /`, no query string, a form body and four headers, none of
//!   the corners (path normalisation, double encoding, S3's payload modes, presigning, SigV4a) where a hand-written
//!   signer goes wrong. object_store, already in the tree, signs its S3 requests the same way for the same reason.
//!
//! The tests check this signer against AWS's published test suite (`get-vanilla`, with a session token, and a form
//! POST), and `tests/ec2.rs` against moto with authentication on, which recomputes every signature with botocore.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::credentials::Credentials;

type HmacSha256 = Hmac<Sha256>;

/// One request to sign: everything the signature covers.
pub(crate) struct Signable<'a> {
    pub method: &'a str,
    /// The URI path, already as it goes on the wire (`/` for EC2).
    pub path: &'a str,
    /// The query string's pairs, not yet encoded.
    pub query: &'a [(&'a str, &'a str)],
    /// Every header to sign, `host` and `x-amz-date` (and `x-amz-security-token`) included; names in any case.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Where and when a request is signed.
pub(crate) struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
    /// The request's time as `x-amz-date` writes it: `20150830T123600Z`.
    pub amz_date: &'a str,
}

/// The `Authorization` header's value for a request.
pub(crate) fn authorization(request: &Signable<'_>, scope: &Scope<'_>, credentials: &Credentials) -> String {
    let (canonical, signed_headers) = canonical_request(request);
    let date = &scope.amz_date[..8];
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{credential_scope}\n{}",
        scope.amz_date,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", credentials.secret_access_key).as_bytes(), date.as_bytes());
    for part in [scope.region, scope.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

/// The canonical request and its signed-headers list.
fn canonical_request(request: &Signable<'_>) -> (String, String) {
    let mut query: Vec<(String, String)> = request.query.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut headers: Vec<(String, String)> =
        request.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), collapse_spaces(v))).collect();
    headers.sort();
    let signed_headers = headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(";");
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        request.path,
        query.join("&"),
        hex::encode(Sha256::digest(request.body))
    );
    (canonical, signed_headers)
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Trims a header value and collapses runs of spaces into one, as the canonical form requires.
fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encodes everything but RFC 3986's unreserved characters: SigV4's rule for query strings, and a valid
/// `application/x-www-form-urlencoded` body that the canonical request and the wire then agree on byte for byte.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The credentials and scope of AWS's Signature Version 4 test suite.
    fn suite_credentials(token: Option<&str>) -> Credentials {
        Credentials::new("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    }

    const SUITE_SCOPE: Scope<'static> = Scope { region: "us-east-1", service: "service", amz_date: "20150830T123600Z" };

    #[test]
    fn get_vanilla_gives_the_published_signature() {
        let request = Signable {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
            body: b"",
        };
        assert_eq!(
            authorization(&request, &SUITE_SCOPE, &suite_credentials(None)),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn get_vanilla_with_session_token_gives_the_published_signature() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let request = Signable {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Security-Token", token),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            body: b"",
        };
        assert_eq!(
            authorization(&request, &SUITE_SCOPE, &suite_credentials(Some(token))),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
    }

    #[test]
    fn a_form_post_gives_the_published_signature() {
        let request = Signable {
            method: "POST",
            path: "/",
            query: &[],
            headers: &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Host", "example.amazonaws.com"),
                ("Content-Length", "13"),
                ("X-Amz-Date", "20150830T123600Z"),
                ("x-amz-content-sha256", "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e"),
            ],
            body: b"Param1=value1",
        };
        assert!(authorization(&request, &SUITE_SCOPE, &suite_credentials(None))
            .ends_with("Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"));
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("a-b_c.d~e f/g+h=i&j\u{e9}"), "a-b_c.d~e%20f%2Fg%2Bh%3Di%26j%C3%A9");
    }
}
