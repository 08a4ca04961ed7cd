//! HTTPS end to end with the real binary: `--tls auto` with agents pinning the server's certificate authority through
//! their join tokens, the CLI verifying with the data directory's authority or `--ca-cert`, certificates given as
//! files, and plain HTTP kept to loopback. Everything listens on and talks to loopback only.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Instant;

use common::{ferry_bin, stderr, Ferry, NodeSpec, WAIT};
use sha2::Digest;

/// The SHA-256 of the first certificate in a PEM file, as `sha256:<hex>`.
fn fingerprint(pem_path: &Path) -> String {
    let text = std::fs::read_to_string(pem_path).unwrap();
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let der = base64_decode(&body);
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// Standard base64, enough for a PEM body; the test needs no crate for it.
fn base64_decode(text: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        let value = alphabet.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    out
}

fn ca_path(f: &Ferry) -> PathBuf {
    f.home().join("tls/ca.pem")
}

#[test]
fn an_agent_joins_with_a_pinned_token_and_runs_a_job_over_https() {
    let f = Ferry::start_with_server_args(NodeSpec::default(), &["--tls", "auto"]);
    assert!(f.url().starts_with("https://"));
    // The join string the harness's agent used carries the authority's fingerprint.
    let join = std::fs::read_to_string(f.root.path().join("join-node-a.token")).unwrap();
    let (_, pinned) = join.trim().split_once('#').expect("a join string with a fingerprint");
    assert_eq!(pinned, fingerprint(&ca_path(&f)));
    // The authority's key is the server's user's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(f.home().join("tls/ca-key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A job runs end to end through the agent that pinned the authority.
    let id = f.submit(&["--", "sh", "-c", "echo hello over tls"]);
    f.wait_state(id, "succeeded");
    assert!(f.ok(&["logs", &id.to_string()]).contains("hello over tls"));
    // The job's MLflow client is pointed at the authority the agent trusts: an https client in the job (curl, as
    // MLflow's would) reaches the tracking API with it, and verifies the server.
    let script = "curl -sS -o /dev/null -w 'tracking %{http_code}\n' --cacert \"$MLFLOW_TRACKING_SERVER_CERT_PATH\" \
        -H \"Authorization: Bearer $MLFLOW_TRACKING_TOKEN\" \
        \"$MLFLOW_TRACKING_URI/api/2.0/mlflow/runs/get?run_id=$MLFLOW_RUN_ID\"";
    let id = f.submit(&["--", "sh", "-c", script]);
    let job = f.wait_state(id, "succeeded");
    let logs = f.ok(&["logs", &id.to_string()]);
    assert!(logs.contains("tracking 200"), "{logs}\n{job}");
    let given = f.agent_dir().join("server-ca.pem");
    assert_eq!(std::fs::read(&given).unwrap(), std::fs::read(ca_path(&f)).unwrap(), "the server's own authority");
    // The JSON answer of a join token names the fingerprint as well.
    let created = f.json(&["token", "create", "--agent", "--node", "node-b", "--name", "b", "--json"]);
    assert_eq!(created["ca_sha256"].as_str(), Some(pinned));
    // A personal token carries none.
    let personal = f.json(&["token", "create", "--name", "mine", "--json"]);
    assert!(personal.get("ca_sha256").is_none(), "{personal}");
}

#[test]
fn the_wrong_fingerprint_plain_http_and_unknown_authorities_fail_clearly() {
    let f = Ferry::start_with_server_args(NodeSpec { gpus: 0, ..NodeSpec::default() }, &["--tls", "auto"]);
    let join = std::fs::read_to_string(f.join_token_file("node-x")).unwrap();
    let token = join.trim().split_once('#').unwrap().0;

    // An agent whose join token pins another authority stops with the reason, and never registers.
    let wrong = format!("{token}#sha256:{}", "ab".repeat(32));
    let out = Command::new(ferry_bin())
        .args(["agent", "--server", &f.url(), "--name", "node-x", "--join-token", &wrong, "--data-dir"])
        .arg(f.root.path().join("agent-x"))
        .env_remove("FERRY_HOME")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains(&format!("not the certificate authority sha256:{}", "ab".repeat(32))), "{message}");
    assert!(message.contains(&format!("presented the certificate authority {}", fingerprint(&ca_path(&f)))));
    assert!(!f.ok(&["nodes"]).contains("node-x"));

    // A plain HTTP client on the HTTPS port is told to use https://.
    let plain = f.url().replace("https://", "http://");
    let out = cli(&f, &["--server", &plain, "ps"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("speaks HTTPS only: use an https:// URL"), "{}", stderr(&out));

    // A CLI away from the data directory does not know the authority, and is told which flag fixes that.
    let admin = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let elsewhere = f.root.path().join("elsewhere");
    let away = |extra: &[&str]| {
        Command::new(ferry_bin())
            .args(["--server", &f.url(), "--token", admin.trim()])
            .args(extra)
            .arg("whoami")
            .env("FERRY_HOME", &elsewhere)
            .env_remove("FERRY_CA_CERT")
            .output()
            .unwrap()
    };
    let out = away(&[]);
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot verify the TLS certificate"), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ca-cert PATH or FERRY_CA_CERT"), "{}", stderr(&out));
    let ca = ca_path(&f).display().to_string();
    let out = away(&["--ca-cert", &ca]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs the CLI as the harness does, with these arguments first.
fn cli(f: &Ferry, args: &[&str]) -> Output {
    Command::new(ferry_bin())
        .args(args)
        .env("FERRY_HOME", f.home())
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `ferry server` with `args`, its output in `log`.
fn spawn_server(home: &Path, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(ferry_bin())
        .arg("server")
        .args(args)
        .env("FERRY_HOME", home)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until `ready` holds, or the server exits (then fails with its log).
fn wait_until(child: &mut Child, log: &Path, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("timed out; server log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn plain_http_stays_on_loopback_unless_the_operator_says_otherwise() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let out = Command::new(ferry_bin())
        .args(["server", "--listen", "0.0.0.0:0"])
        .env("FERRY_HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("refusing to serve plain HTTP on 0.0.0.0:0"), "{message}");
    assert!(message.contains("--tls auto") && message.contains("--insecure-http"), "{message}");

    // With --insecure-http it serves, and answers on loopback.
    let port = free_port();
    let log = root.path().join("server.log");
    let mut child = spawn_server(&home, &["--listen", &format!("0.0.0.0:{port}"), "--insecure-http"], &log);
    let url = format!("http://127.0.0.1:{port}");
    wait_until(&mut child, &log, || {
        Command::new(ferry_bin())
            .args(["--server", &url, "whoami"])
            .env("FERRY_HOME", &home)
            .output()
            .unwrap()
            .status
            .success()
    });
    // An https:// URL for this plain HTTP server says what is wrong.
    let https = url.replace("http://", "https://");
    let out = Command::new(ferry_bin()).args(["--server", &https, "whoami"]).env("FERRY_HOME", &home).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not speak TLS"), "{}", stderr(&out));
    stop(child);
}

/// A certificate authority and a certificate it issued for 127.0.0.1, as PEM files in `dir`: (ca, cert, key).
fn make_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    // A key of another certificate, for the mismatch.
    std::fs::write(dir.join("other-key.pem"), ca_key.serialize_pem()).unwrap();
    paths
}

#[test]
fn given_certificate_files_serve_https_and_bad_ones_are_named() {
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("home");
    let (ca, cert, key) = make_certificate(root.path());
    let (ca, cert, key) = (ca.display().to_string(), cert.display().to_string(), key.display().to_string());

    let port = free_port();
    let log = root.path().join("server.log");
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_server(&home, &["--listen", &listen, "--tls-cert", &cert, "--tls-key", &key], &log);
    let url = format!("https://127.0.0.1:{port}");
    let whoami = |extra: &[&str]| {
        Command::new(ferry_bin())
            .args(["--server", &url])
            .args(extra)
            .arg("whoami")
            .env("FERRY_HOME", &home)
            .env_remove("FERRY_CA_CERT")
            .output()
            .unwrap()
    };
    wait_until(&mut child, &log, || whoami(&["--ca-cert", &ca]).status.success());
    // The server has no authority of its own: no fingerprint in join tokens, and none to fetch.
    let created = Command::new(ferry_bin())
        .args([
            "--server",
            &url,
            "--ca-cert",
            &ca,
            "token",
            "create",
            "--agent",
            "--node",
            "n",
            "--name",
            "n",
            "--json",
        ])
        .env("FERRY_HOME", &home)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", stderr(&created));
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert!(created.get("ca_sha256").is_none(), "{created}");
    // Without the authority, the system's roots do not know it.
    let out = whoami(&[]);
    assert!(stderr(&out).contains("cannot verify the TLS certificate"), "{}", stderr(&out));
    stop(child);

    // A missing file and a key of another certificate stop the server with the reason, not a panic.
    let missing = root.path().join("missing.pem").display().to_string();
    let other_key = root.path().join("other-key.pem").display().to_string();
    for (cert, key, expected) in [
        (&missing, &key, "cannot read the TLS certificate"),
        (&cert, &missing, "cannot read the TLS key"),
        (&cert, &other_key, "does not belong to the certificate"),
    ] {
        let out = Command::new(ferry_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--tls-cert", cert, "--tls-key", key])
            .env("FERRY_HOME", &home)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{expected}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}
