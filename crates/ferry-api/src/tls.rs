//! The certificate authority's fingerprint and the join string that carries it to agents.
//!
//! A server started with `--tls auto` has a certificate authority of its own. An agent that has never seen the
//! server cannot know that authority, so its join token carries the authority's SHA-256 fingerprint (as kubeadm's
//! `--discovery-token-ca-cert-hash` does): the agent accepts the authority whose certificate has that digest and no
//! other. This module only parses and formats; it never reads a file or the network.

use std::fmt;
use std::str::FromStr;

/// The path (under `/api/v1`) of the server's certificate authority in PEM, public so a joining agent can fetch it.
pub const CA_PATH: &str = "/tls/ca";

/// What a fingerprint starts with; the digest is the only one Ferry uses, and naming it keeps the text unambiguous.
const SHA256_PREFIX: &str = "sha256:";
/// What separates a join token from the fingerprint in a join string: no token contains it, and a shell leaves it
/// alone inside a word.
const JOIN_SEPARATOR: char = '#';

/// The SHA-256 digest of a certificate authority's certificate (its DER bytes), written `sha256:<64 hex digits>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaFingerprint(pub [u8; 32]);

impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a fingerprint or a join string does not parse; each message says what a good one looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("a certificate authority's fingerprint starts with `sha256:` (got `{0}`); copy it whole from `ferry token create --agent`")]
    Prefix(String),
    #[error("a certificate authority's fingerprint is `sha256:` and 64 hexadecimal digits (got {0} characters after `sha256:`); copy it whole from `ferry token create --agent`")]
    Length(usize),
    #[error("a certificate authority's fingerprint is `sha256:` and 64 hexadecimal digits, and `{0}` is not one; copy it whole from `ferry token create --agent`")]
    Digits(String),
    #[error(
        "the join string has no token before `#`; it is `TOKEN#sha256:HEX` as `ferry token create --agent` prints it"
    )]
    EmptyToken,
}

impl FromStr for CaFingerprint {
    type Err = FingerprintError;

    fn from_str(text: &str) -> Result<CaFingerprint, FingerprintError> {
        let text = text.trim();
        let prefix = text.get(..SHA256_PREFIX.len()).filter(|p| p.eq_ignore_ascii_case(SHA256_PREFIX));
        let Some(prefix) = prefix else {
            return Err(FingerprintError::Prefix(text.chars().take(16).collect()));
        };
        // Colons between bytes, as `openssl x509 -fingerprint` writes them, are accepted and ignored.
        let digits: String = text[prefix.len()..].chars().filter(|c| *c != ':').collect();
        if digits.len() != 64 {
            return Err(FingerprintError::Length(digits.chars().count()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(&digits, &mut bytes).map_err(|_| FingerprintError::Digits(digits.clone()))?;
        Ok(CaFingerprint(bytes))
    }
}

/// A join token with, when the server has a certificate authority of its own, that authority's fingerprint:
/// `TOKEN` or `TOKEN#sha256:HEX`, the form `ferry token create --agent` prints and `ferry agent` reads.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinString {
    pub token: String,
    pub ca: Option<CaFingerprint>,
}

impl JoinString {
    pub fn parse(text: &str) -> Result<JoinString, FingerprintError> {
        let text = text.trim();
        match text.split_once(JOIN_SEPARATOR) {
            None => Ok(JoinString { token: text.to_string(), ca: None }),
            Some((token, fingerprint)) => {
                let token = token.trim();
                if token.is_empty() {
                    return Err(FingerprintError::EmptyToken);
                }
                Ok(JoinString { token: token.to_string(), ca: Some(fingerprint.parse()?) })
            }
        }
    }
}

impl fmt::Display for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca {
            Some(ca) => write!(f, "{}{JOIN_SEPARATOR}{ca}", self.token),
            None => f.write_str(&self.token),
        }
    }
}

/// The token is a secret: a join string is never printed whole by accident.
impl fmt::Debug for JoinString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinString").field("token", &"[secret]").field("ca", &self.ca).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn check_fingerprint(text: &str, expected: Result<&str, &str>) {
        let got = text.parse::<CaFingerprint>().map(|f| f.to_string()).map_err(|e| e.to_string());
        assert_eq!(got.as_deref().map_err(String::as_str), expected, "{text}");
    }

    #[test]
    fn fingerprints_parse_in_their_one_form_and_print_back() {
        let canonical = format!("sha256:{HEX}");
        check_fingerprint(&canonical, Ok(&canonical));
        check_fingerprint(&format!("  SHA256:{}\n", HEX.to_uppercase()), Ok(&canonical));
        let with_colons: Vec<String> = HEX.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into()).collect();
        check_fingerprint(&format!("sha256:{}", with_colons.join(":")), Ok(&canonical));
    }

    #[test]
    fn bad_fingerprints_say_what_a_good_one_is() {
        check_fingerprint(
            HEX,
            Err("a certificate authority's fingerprint starts with `sha256:` (got `0011223344556677`); copy it whole from `ferry token create --agent`"),
        );
        check_fingerprint(
            "sha256:abc",
            Err("a certificate authority's fingerprint is `sha256:` and 64 hexadecimal digits (got 3 characters after `sha256:`); copy it whole from `ferry token create --agent`"),
        );
        let not_hex = format!("sha256:{}zz", &HEX[..62]);
        let message = not_hex.parse::<CaFingerprint>().unwrap_err().to_string();
        assert!(message.contains("is not one"), "{message}");
        check_fingerprint("", Err("a certificate authority's fingerprint starts with `sha256:` (got ``); copy it whole from `ferry token create --agent`"));
        check_fingerprint("sha25", Err("a certificate authority's fingerprint starts with `sha256:` (got `sha25`); copy it whole from `ferry token create --agent`"));
        // A multi-byte character where the prefix would end is an error, not a panic.
        check_fingerprint("sha25é", Err("a certificate authority's fingerprint starts with `sha256:` (got `sha25é`); copy it whole from `ferry token create --agent`"));
    }

    #[test]
    fn join_strings_carry_a_token_and_maybe_a_fingerprint() {
        let plain = JoinString::parse(" ferry_abc\n").unwrap();
        assert_eq!((plain.token.as_str(), plain.ca), ("ferry_abc", None));
        assert_eq!(plain.to_string(), "ferry_abc");
        let pinned = JoinString::parse(&format!("ferry_abc#sha256:{HEX}")).unwrap();
        assert_eq!(pinned.token, "ferry_abc");
        assert_eq!(pinned.ca.unwrap().to_string(), format!("sha256:{HEX}"));
        assert_eq!(pinned.to_string(), format!("ferry_abc#sha256:{HEX}"));
        assert!(!format!("{pinned:?}").contains("ferry_abc"));
        assert_eq!(JoinString::parse(&format!("#sha256:{HEX}")), Err(FingerprintError::EmptyToken));
        assert_eq!(JoinString::parse("ferry_abc#"), Err(FingerprintError::Prefix(String::new())));
        assert!(JoinString::parse("ferry_abc#sha256:00").is_err());
    }
}
