//! Hostile clients against the real binary (issue 15): connections that never finish a request, and waits on jobs
//! that do not exist.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Ferry, NodeSpec};

/// Whether the server closed `stream`: a read returns end of file (or a reset) instead of timing out.
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // An answer (408, or the end of a kept-alive one) before the close: read on.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn half_sent_requests_and_idle_connections_are_closed() {
    let f = Ferry::start(NodeSpec::default());
    let address = format!("127.0.0.1:{}", f.port);
    // Many connections that send half a request head and then nothing, as a slowloris client does.
    let mut half_sent: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).unwrap();
            stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ").unwrap();
            stream
        })
        .collect();
    // One that sends nothing at all, and one kept alive after a whole request.
    let mut silent = TcpStream::connect(&address).unwrap();
    let mut kept = TcpStream::connect(&address).unwrap();
    kept.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let started = Instant::now();
    // The server still answers others meanwhile.
    f.ok(&["nodes"]);
    let deadline = started + Duration::from_secs(60);
    while Instant::now() < deadline {
        if half_sent.iter_mut().all(closed) && closed(&mut silent) && closed(&mut kept) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let waited = started.elapsed();
    assert!(half_sent.iter_mut().all(closed), "half-sent requests are still open after {waited:?}");
    assert!(closed(&mut silent), "a silent connection is still open after {waited:?}");
    assert!(closed(&mut kept), "an idle kept-alive connection is still open after {waited:?}");
    f.ok(&["nodes"]);
}

#[test]
fn waits_on_jobs_that_do_not_exist_answer_at_once() {
    let f = Ferry::start(NodeSpec::default());
    let client = reqwest::blocking::Client::new();
    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    for id in [999_999u64, 0, u64::MAX] {
        let response = client
            .get(format!("{}/api/v1/jobs/{id}/wait?timeout_ms=30000", f.url()))
            .bearer_auth(token.trim())
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap();
        assert!(matches!(response.status().as_u16(), 400 | 404), "job {id}: {}", response.status());
    }
}

#[test]
fn a_retried_submission_returns_the_first_job() {
    let f = Ferry::start(NodeSpec::default());
    f.ok(&["team", "add", "vision"]);
    f.ok(&["user", "add", "ana", "--team", "vision"]);
    let ana = f.ok(&["token", "create", "--for", "ana", "--name", "ana"]).trim().to_string();
    let admin = std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string();
    let client = reqwest::blocking::Client::new();
    let post = |token: &str, key: Option<&str>, body: serde_json::Value| {
        let mut request = client.post(format!("{}/api/v1/jobs", f.url())).bearer_auth(token).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().unwrap();
        (response.status().as_u16(), response.json::<serde_json::Value>().unwrap())
    };
    let job = serde_json::json!({"command": ["true"], "workdir": "/tmp"});
    let (status, first) = post(&admin, Some("key-1"), job.clone());
    assert_eq!(status, 201, "{first}");
    let (status, again) = post(&admin, Some("key-1"), job.clone());
    assert_eq!((status, &again["id"]), (200, &first["id"]), "a retry answers the first job");
    // The same key for a different request is refused: it would answer with a job the client did not ask for.
    let (status, body) = post(&admin, Some("key-1"), serde_json::json!({"command": ["false"], "workdir": "/tmp"}));
    assert_eq!(status, 409, "{body}");
    assert!(body["message"].as_str().unwrap().contains("with a different request"), "{body}");
    // Another user's key of the same text is a key of its own.
    let (status, other) = post(&ana, Some("key-1"), job.clone());
    assert_eq!(status, 201, "{other}");
    assert_ne!(other["id"], first["id"]);
    // Keys must be printable, without spaces, and short.
    for bad in ["has space", &"k".repeat(129)] {
        let (status, body) = post(&admin, Some(bad), job.clone());
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["message"].as_str().unwrap().contains("Idempotency-Key"), "{body}");
    }
    // Without a key, each submission is a job of its own.
    let (_, a) = post(&admin, None, job.clone());
    let (_, b) = post(&admin, None, job);
    assert_ne!(a["id"], b["id"]);
    assert_eq!(f.json(&["ps", "--all", "--json"])["jobs"].as_array().unwrap().len(), 4);
}
