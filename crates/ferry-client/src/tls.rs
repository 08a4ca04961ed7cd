//! Whom the client trusts for HTTPS: the system's roots, or one certificate authority alone (a private one given by
//! path, the server's own from its data directory, or one an agent pinned by the fingerprint in its join token).
//!
//! Every connection is verified. The one custom verifier here (`PinnedAuthority`, used only to fetch a pinned
//! authority) is stricter than the default, not looser: it accepts a server only if the chain it presents holds the
//! pinned authority and the server's certificate verifies against that authority for the server's name.

use std::sync::{Arc, Mutex};

use ferry_api::tls::CaFingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::Digest;

/// Whom a client trusts for the server's certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system's certificate authorities, as a browser would (a server with a certificate from a public or a
    /// company authority that the machine already trusts).
    #[default]
    System,
    /// This authority and no other.
    Authority(CaCert),
}

/// One certificate authority's certificate, parsed and with its fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCert {
    der: CertificateDer<'static>,
    /// The PEM text it was read from, for handing on to clients that read PEM files (a job's MLflow client).
    pem: Vec<u8>,
    pub fingerprint: CaFingerprint,
}

impl std::fmt::Debug for CaCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCert").field("fingerprint", &self.fingerprint).finish()
    }
}

impl CaCert {
    /// The first certificate of a PEM text; `origin` names where it came from for the error.
    pub fn from_pem(pem: &[u8], origin: &str) -> Result<CaCert, String> {
        let der = CertificateDer::from_pem_slice(pem).map_err(|e| {
            format!("{origin} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`): {e}; give the certificate authority's certificate")
        })?;
        Ok(CaCert { fingerprint: fingerprint(&der), der, pem: pem.to_vec() })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The PEM text the certificate was read from.
    pub fn pem(&self) -> &[u8] {
        &self.pem
    }
}

pub fn fingerprint(der: &[u8]) -> CaFingerprint {
    CaFingerprint(sha2::Sha256::digest(der).into())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client builder that trusts `trust`.
pub(crate) fn builder(trust: &Trust) -> Result<reqwest::ClientBuilder, String> {
    let builder = reqwest::Client::builder();
    match trust {
        Trust::System => Ok(builder),
        Trust::Authority(ca) => {
            let certificate = reqwest::Certificate::from_der(&ca.der)
                .map_err(|e| format!("cannot use the certificate authority {}: {e}", ca.fingerprint))?;
            Ok(builder.tls_built_in_root_certs(false).add_root_certificate(certificate))
        }
    }
}

/// A builder whose connections succeed only with a server whose chain holds the authority `pin`; what the server
/// presented instead is kept in the returned verifier, for the error.
pub(crate) fn pinned_builder(pin: CaFingerprint) -> Result<(reqwest::ClientBuilder, Arc<PinnedAuthority>), String> {
    let verifier = Arc::new(PinnedAuthority { pin, provider: provider(), presented: Mutex::new(None) });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    Ok((reqwest::Client::builder().use_preconfigured_tls(config), verifier))
}

/// Verifies the server against the pinned authority, found in the chain the server presents.
#[derive(Debug)]
pub(crate) struct PinnedAuthority {
    pin: CaFingerprint,
    provider: Arc<CryptoProvider>,
    /// The fingerprint of the top of the chain of a server that did not hold the pinned authority.
    presented: Mutex<Option<CaFingerprint>>,
}

impl PinnedAuthority {
    pub(crate) fn mismatch(&self) -> Option<CaFingerprint> {
        *self.presented.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ServerCertVerifier for PinnedAuthority {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(authority) = intermediates.iter().find(|c| fingerprint(c) == self.pin) else {
            let top = intermediates.last().unwrap_or(end_entity);
            *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint(top));
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        };
        let mut roots = RootCertStore::empty();
        roots.add(authority.clone().into_owned())?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A certificate's fault in words.
pub(crate) fn certificate_problem(error: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match error {
        E::UnknownIssuer => "it was issued by a certificate authority this client does not trust".into(),
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "it is not issued for the host name in the server's URL".into()
        }
        E::Expired | E::ExpiredContext { .. } => "it has expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet (check the clocks)".into(),
        other => format!("{other:?}"),
    }
}

/// What went wrong in TLS, if anything: rustls' error somewhere in the chain of causes (inside I/O errors, whose `source`
/// skips the error they wrap).
pub(crate) fn tls_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        current = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    None
}
