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
