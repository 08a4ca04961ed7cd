//! HTTPS: the server's certificate (given as files, or issued by a certificate authority of its own that `--tls auto`
//! generates in the data directory), and the listener that accepts TLS connections for axum.
//!
//! The authority's key never leaves `tls/ca-key.pem` (mode 0600) and is never logged. Agents pin the authority by
//! the SHA-256 of its certificate, which rides in their join tokens. This module must never accept a plain HTTP
//! request on a TLS listener: such a connection gets one 400 answer saying to use `https://`, then is closed.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferry_api::tls::CaFingerprint;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::either::Either;

/// The folder of the data directory with the authority and the certificate of `--tls auto`.
pub const TLS_DIR: &str = "tls";
/// The authority's certificate, relative to the data directory: public, and what the CLI on this machine trusts.
pub const CA_CERT_FILE: &str = "tls/ca.pem";
/// The authority's private key, readable by the server's user only.
const CA_KEY_FILE: &str = "ca-key.pem";
/// The server's certificate followed by the authority's, the chain it presents.
const CERT_FILE: &str = "server.pem";
const KEY_FILE: &str = "server-key.pem";
/// The names the certificate was issued for and when it expires, so a start with other names issues a new one.
const NAMES_FILE: &str = "server.names";
/// The authority's common name; fixed, because the server rebuilds the issuer from it to sign new certificates.
const CA_NAME: &str = "Ferry certificate authority";
/// How long the authority lasts: ten years, since replacing it means new join tokens for every agent.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a server certificate lasts; it is issued anew at a start within `CERT_RENEW_BEFORE` of its end.
const CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
const CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start to be valid a little before now, for clients whose clocks run behind.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// How long a client may take to finish the TLS handshake before its connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most handshakes in progress at once; past it the listener accepts no more until one ends.
const HANDSHAKES_MAX: usize = 1024;
/// How much of a plain HTTP request is read before it is answered, so the answer is not lost to a reset.
const PLAIN_REQUEST_BYTES_MAX: usize = 16 * 1024;
/// The first byte of every TLS connection (a handshake record); anything else is not TLS.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// How the server serves: plain HTTP, HTTPS with the operator's certificate, or HTTPS with its own authority.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TlsSetting {
    #[default]
    Off,
    /// `--tls-cert PATH --tls-key PATH`: a PEM certificate chain and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// `--tls auto`: an authority in `<data_dir>/tls`, and a certificate it issues for localhost, the loopback
    /// addresses, the listen address and these names (`--tls-name`).
    Auto { names: Vec<String> },
}

/// The server's own certificate authority, as joining agents and the CLI see it.
#[derive(Clone, Debug)]
pub struct Authority {
    pub pem: String,
    pub fingerprint: CaFingerprint,
}

/// What a TLS listener needs: the rustls configuration and, with `--tls auto`, the authority.
pub struct Tls {
    config: Arc<rustls::ServerConfig>,
    pub authority: Option<Authority>,
}

/// Prepares TLS for `setting`: loads the given files, or makes (the first time) and loads the authority and a
/// certificate for `listen`. `Ok(None)` for plain HTTP. Errors are sentences that name the file and the fix.
pub fn prepare(setting: &TlsSetting, data_dir: &Path, listen: SocketAddr) -> Result<Option<Tls>, String> {
    match setting {
        TlsSetting::Off => Ok(None),
        TlsSetting::Files { cert, key } => {
            let chain = read_chain(cert)?;
            let key_der = read_key(key)?;
            let config = server_config(chain, key_der).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "the private key in {} does not belong to the certificate in {}; pass the key the certificate \
                     was issued for",
                    key.display(),
                    cert.display()
                ),
                e => format!("cannot serve TLS with {} and {}: {e}", cert.display(), key.display()),
            })?;
            Ok(Some(Tls { config, authority: None }))
        }
        TlsSetting::Auto { names } => {
            let dir = data_dir.join(TLS_DIR);
            std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let (authority, ca_key) = ensure_authority(&dir)?;
            let names = certificate_names(names, listen)?;
            ensure_certificate(&dir, &authority, &ca_key, &names)?;
            let chain = read_chain(&dir.join(CERT_FILE))?;
            let key = read_key(&dir.join(KEY_FILE))?;
            let config = server_config(chain, key).map_err(|e| {
                format!(
                    "cannot serve TLS with the certificate in {}: {e}; remove server.pem to issue a new one",
                    dir.display()
                )
            })?;
            Ok(Some(Tls { config, authority: Some(authority) }))
        }
    }
}

/// Plain HTTP carries tokens in the clear, so it is served on loopback only unless the operator says otherwise.
pub fn check_plain_http(listen: SocketAddr, tls: bool, insecure_http: bool) -> Result<(), String> {
    if tls || insecure_http || listen.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "refusing to serve plain HTTP on {listen}, which other machines can reach: tokens would cross the network \
         in the clear. Serve HTTPS with `--tls auto` (a certificate authority of Ferry's own, pinned by agents \
         through their join tokens) or `--tls-cert PATH --tls-key PATH`, or pass --insecure-http to serve plain \
         HTTP anyway on a network you trust"
    ))
}

/// The SHA-256 fingerprint of a certificate, as join tokens carry it.
pub fn fingerprint(der: &[u8]) -> CaFingerprint {
    CaFingerprint(sha2::Sha256::digest(der).into())
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    // The router speaks HTTP/1.1 only (axum's `http1` feature).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}; check --tls-cert", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain ({e}); check --tls-cert", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate (no `-----BEGIN CERTIFICATE-----` block); --tls-cert takes a PEM certificate \
             chain, the server's certificate first",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text =
        std::fs::read(path).map_err(|e| format!("cannot read the TLS key {}: {e}; check --tls-key", path.display()))?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        format!("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1) ({e}); check --tls-key", path.display())
    })
}

/// The names the server's certificate is issued for: localhost, both loopback addresses, the listen address unless it
/// is every address, and the operator's names; sorted, each once.
fn certificate_names(extra: &[String], listen: SocketAddr) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    for name in extra {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        let host = name.chars().all(|c| c.is_ascii_alphanumeric() || "-.*".contains(c));
        if name.is_empty() || !(host || name.parse::<std::net::IpAddr>().is_ok()) {
            return Err(format!(
                "--tls-name `{}` is not a host name or IP address; give the name agents and users reach this server \
                 by, such as ferry.example.org",
                name.escape_debug()
            ));
        }
        names.push(name);
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The authority's parameters. Signing needs only its name and key, so the issuer is rebuilt from these at every
/// start rather than parsed back from the certificate.
fn authority_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    name.push(DnType::OrganizationName, "Ferry");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Loads the authority of `dir`, or makes one when there is none. A half-present authority is an error: making a new
/// one silently would break every agent that pinned the old one.
fn ensure_authority(dir: &Path) -> Result<(Authority, KeyPair), String> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join(CA_KEY_FILE);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&cert_path)
                .map_err(|e| format!("cannot read the certificate authority {}: {e}", cert_path.display()))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| format!("cannot read the certificate authority's key {}: {e}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| format!("{} is not a private key ({e}); restore it from a backup", key_path.display()))?;
            let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                format!("{} is not a PEM certificate ({e}); restore it from a backup", cert_path.display())
            })?;
            Ok((Authority { fingerprint: fingerprint(&der), pem }, key))
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
            let mut params = authority_params();
            params.not_before = now() - CLOCK_SKEW;
            params.not_after = now() + CA_VALIDITY;
            let cert = params.self_signed(&key).map_err(|e| format!("cannot make a certificate authority: {e}"))?;
            write_file(&key_path, key.serialize_pem().as_bytes(), true)?;
            write_file(&cert_path, cert.pem().as_bytes(), false)?;
            let authority = Authority { fingerprint: fingerprint(cert.der()), pem: cert.pem() };
            tracing::info!(cert = %cert_path.display(), fingerprint = %authority.fingerprint,
                "made a certificate authority for TLS");
            Ok((authority, key))
        }
        _ => Err(format!(
            "{} holds only half of a certificate authority (ca.pem and ca-key.pem go together); restore the missing \
             file, or remove both to make a new authority (agents then need new join tokens)",
            dir.display()
        )),
    }
}

/// Issues a certificate for `names` unless the one on disk has exactly these names and is not near its end.
fn ensure_certificate(dir: &Path, authority: &Authority, ca_key: &KeyPair, names: &[String]) -> Result<(), String> {
    let recorded = std::fs::read_to_string(dir.join(NAMES_FILE)).unwrap_or_default();
    let mut lines = recorded.lines();
    let not_after = lines.next().and_then(|l| l.strip_prefix("not_after ")).and_then(|s| s.parse::<i64>().ok());
    let same_names = lines.eq(names.iter().map(String::as_str));
    let fresh = not_after.is_some_and(|end| end - CERT_RENEW_BEFORE.as_secs() as i64 > now().unix_timestamp());
    if same_names && fresh && dir.join(CERT_FILE).exists() && dir.join(KEY_FILE).exists() {
        return Ok(());
    }
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| format!("cannot issue a certificate: {e}"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, names.first().map_or("localhost", String::as_str));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now() - CLOCK_SKEW;
    params.not_after = now() + CERT_VALIDITY;
    let key = KeyPair::generate().map_err(|e| format!("cannot generate a key: {e}"))?;
    let issuer = Issuer::new(authority_params(), ca_key);
    let cert = params.signed_by(&key, &issuer).map_err(|e| format!("cannot issue a certificate: {e}"))?;
    write_file(&dir.join(KEY_FILE), key.serialize_pem().as_bytes(), true)?;
    write_file(&dir.join(CERT_FILE), format!("{}{}", cert.pem(), authority.pem).as_bytes(), false)?;
    let record = format!("not_after {}\n{}\n", params.not_after.unix_timestamp(), names.join("\n"));
    write_file(&dir.join(NAMES_FILE), record.as_bytes(), false)?;
    tracing::info!(names = %names.join(", "), "issued the server's TLS certificate");
    Ok(())
}

/// Writes a file whole through a temporary one renamed over it; `secret` ones are readable by their owner only.
fn write_file(path: &Path, content: &[u8], secret: bool) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let temporary = path.with_extension("tmp");
    let _ = std::fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(content).and_then(|_| file.sync_all()).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

/// A connection as axum gets it: plain TCP, or TLS over TCP.
pub type Connection = Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

/// The server's listener: hands axum plain connections, or TLS connections whose handshakes ran in tasks of their
/// own, so a slow client never holds up the others. Dropping it (axum does when it stops) ends the handshakes.
pub struct Listener {
    tcp: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    handshakes: JoinSet<Option<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>>,
}

impl Listener {
    pub fn new(tcp: TcpListener, tls: Option<&Tls>) -> Listener {
        let acceptor = tls.map(|tls| tokio_rustls::TlsAcceptor::from(tls.config.clone()));
        Listener { tcp, acceptor, handshakes: JoinSet::new() }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let Some(acceptor) = self.acceptor.clone() else {
            loop {
                match self.tcp.accept().await {
                    Ok((stream, addr)) => return (Either::Left(stream), addr),
                    Err(e) => accept_failed(e).await,
                }
            }
        };
        loop {
            // Both branches are cancel-safe: axum drops this future when it stops.
            tokio::select! {
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some((stream, addr))) = done {
                        return (Either::Right(stream), addr);
                    }
                }
                accepted = self.tcp.accept(), if self.handshakes.len() < HANDSHAKES_MAX => match accepted {
                    Ok((stream, addr)) => {
                        self.handshakes.spawn(handshake(acceptor.clone(), stream, addr));
                    }
                    Err(e) => accept_failed(e).await,
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// As axum's own listener does: a failed connection is the client's business; anything else (out of file
/// descriptors) is logged and waited out, so the accept loop does not spin.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "cannot accept a connection; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)> {
    let attempt = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await? == 1 && first[0] != TLS_HANDSHAKE_RECORD {
            refuse_plain_http(stream).await;
            return Ok(None);
        }
        acceptor.accept(stream).await.map(Some)
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt).await {
        Ok(Ok(Some(stream))) => Some((stream, addr)),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::debug!(client = %addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(client = %addr, "TLS handshake timed out");
            None
        }
    }
}

/// Answers a plain HTTP request on the TLS port with a 400 in the API's error shape, so a client that used
/// `http://` learns why, then closes the connection.
async fn refuse_plain_http(mut stream: TcpStream) {
    // Reads the request's head first: closing with unread data would reset the connection and lose the answer.
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while head.len() < PLAIN_REQUEST_BYTES_MAX && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let body = serde_json::to_string(&ferry_api::ErrorBody {
        code: ferry_api::ErrorCode::InvalidRequest,
        message: "this Ferry server speaks HTTPS only: use an https:// URL (for the CLI and agents, \
                  --server https://HOST:PORT or FERRY_SERVER)"
            .to_string(),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(addr: &str) -> SocketAddr {
        addr.parse().unwrap()
    }

    #[test]
    fn plain_http_is_for_loopback_unless_the_operator_says_so() {
        assert!(check_plain_http(listen("127.0.0.1:7750"), false, false).is_ok());
        assert!(check_plain_http(listen("[::1]:7750"), false, false).is_ok());
        let refused = check_plain_http(listen("0.0.0.0:7750"), false, false).unwrap_err();
        assert!(refused.contains("--tls auto") && refused.contains("--insecure-http"), "{refused}");
        assert!(check_plain_http(listen("10.1.2.3:7750"), false, false).is_err());
        assert!(check_plain_http(listen("0.0.0.0:7750"), true, false).is_ok());
        assert!(check_plain_http(listen("0.0.0.0:7750"), false, true).is_ok());
    }

    #[test]
    fn certificate_names_cover_loopback_the_listen_address_and_the_operators_names() {
        let names = certificate_names(&["Ferry.Example.org.".into(), "10.0.0.5".into()], listen("10.0.0.5:7750"));
        assert_eq!(names.unwrap(), ["10.0.0.5", "127.0.0.1", "::1", "ferry.example.org", "localhost"]);
        let every = certificate_names(&[], listen("0.0.0.0:7750")).unwrap();
        assert_eq!(every, ["127.0.0.1", "::1", "localhost"]);
        let bad = certificate_names(&["no spaces".into()], listen("127.0.0.1:1")).unwrap_err();
        assert!(bad.contains("--tls-name `no spaces`"), "{bad}");
    }

    #[test]
    fn the_authority_is_made_once_and_the_certificate_follows_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let auto = |names: &[&str]| TlsSetting::Auto { names: names.iter().map(|s| s.to_string()).collect() };
        let first = prepare(&auto(&[]), dir.path(), listen("127.0.0.1:0")).unwrap().unwrap();
        let tls = dir.path().join(TLS_DIR);
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(tls.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(CA_KEY_FILE), mode(KEY_FILE)), (0o600, 0o600));
        let cert = std::fs::read(tls.join(CERT_FILE)).unwrap();
        // Same names: nothing is issued again.
        prepare(&auto(&[]), dir.path(), listen("127.0.0.1:0")).unwrap();
        assert_eq!(std::fs::read(tls.join(CERT_FILE)).unwrap(), cert);
        // Another name: a new certificate from the same authority.
        let again = prepare(&auto(&["ferry.test"]), dir.path(), listen("127.0.0.1:0")).unwrap().unwrap();
        assert_ne!(std::fs::read(tls.join(CERT_FILE)).unwrap(), cert);
        let (a, b) = (first.authority.unwrap(), again.authority.unwrap());
        assert_eq!((a.fingerprint, a.pem), (b.fingerprint, b.pem));
        // Half an authority is refused rather than replaced.
        std::fs::remove_file(tls.join(CA_KEY_FILE)).unwrap();
        let half = prepare(&auto(&[]), dir.path(), listen("127.0.0.1:0")).err().unwrap();
        assert!(half.contains("only half of a certificate authority"), "{half}");
    }

    #[test]
    fn missing_or_wrong_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = |cert: &Path, key: &Path| TlsSetting::Files { cert: cert.into(), key: key.into() };
        let missing = dir.path().join("missing.pem");
        let error = prepare(&files(&missing, &missing), dir.path(), listen("127.0.0.1:0")).err().unwrap();
        assert!(error.contains("cannot read the TLS certificate") && error.contains("--tls-cert"), "{error}");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let error = prepare(&files(&not_pem, &not_pem), dir.path(), listen("127.0.0.1:0")).err().unwrap();
        assert!(error.contains("holds no certificate"), "{error}");
        // A certificate with another certificate's key.
        prepare(&TlsSetting::Auto { names: vec![] }, dir.path(), listen("127.0.0.1:0")).unwrap();
        let tls = dir.path().join(TLS_DIR);
        let error =
            prepare(&files(&tls.join(CERT_FILE), &tls.join(CA_KEY_FILE)), dir.path(), listen("127.0.0.1:0")).err();
        let error = error.unwrap();
        assert!(error.contains("does not belong to the certificate"), "{error}");
    }
}
