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

/// Starts `ferry server` on `home` and returns its exit code and output, or `None` when it kept running.
fn server_start_fails(home: &std::path::Path) -> (i32, String) {
    let port = common::free_port().to_string();
    let out = std::process::Command::new(common::ferry_bin())
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .env("FERRY_HOME", home)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), common::stderr(&out)))
}

#[test]
fn an_empty_or_foreign_database_is_refused() {
    let mut f = Ferry::start(NodeSpec::default());
    f.submit(&["--", "true"]);
    f.kill_server();
    let db = f.home().join("ferry.db");
    // After a crash, the writes may all be in the write-ahead log: keep both files, then leave only the database.
    let files = ["ferry.db", "ferry.db-wal"];
    for name in files {
        let _ = std::fs::copy(f.home().join(name), f.root.path().join(name));
    }
    for extra in ["ferry.db-wal", "ferry.db-shm"] {
        let _ = std::fs::remove_file(f.home().join(extra));
    }
    // Truncated to nothing: a fresh, empty installation must not start in its place.
    std::fs::write(&db, b"").unwrap();
    let (code, output) = server_start_fails(&f.home());
    assert_eq!(code, 78, "{output}");
    assert!(
        output.contains("is empty, but a Ferry database never is") && output.contains("ferry admin restore"),
        "{output}"
    );
    assert_eq!(std::fs::metadata(&db).unwrap().len(), 0, "the file is left as it was");
    // Another program's SQLite database.
    std::fs::remove_file(&db).unwrap();
    let made = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import sqlite3; c = sqlite3.connect('{}'); c.execute('CREATE TABLE users (name TEXT)'); c.commit()",
                db.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(made.success());
    let (code, output) = server_start_fails(&f.home());
    assert_eq!(code, 78, "{output}");
    assert!(output.contains("is not a Ferry database") && output.contains("users"), "{output}");
    // Not a database at all.
    std::fs::write(&db, "hello, I am a text file and not a database at all, as anyone can see").unwrap();
    let (code, output) = server_start_fails(&f.home());
    assert_eq!(code, 78, "{output}");
    assert!(output.contains("damaged or unreadable"), "{output}");
    // The real one back: everything is there.
    for name in files {
        let _ = std::fs::copy(f.root.path().join(name), f.home().join(name));
    }
    f.start_server();
    assert_eq!(f.json(&["ps", "--all", "--json"])["jobs"].as_array().unwrap().len(), 1);
}

/// A server whose data directory is on a tmpfs of `size` in a mount namespace of its own, so the test can fill its
/// disk; the file system goes away with the process.
struct SmallDisk {
    server: std::process::Child,
    home: std::path::PathBuf,
    url: String,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn start(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("disk");
        std::fs::create_dir(&mount).unwrap();
        let home = mount.join("home");
        let port = common::free_port();
        let script = format!(
            "mount -t tmpfs -o size={size} ferry-test-disk {mount} && exec {ferry} server --listen 127.0.0.1:{port}",
            mount = mount.display(),
            ferry = common::ferry_bin()
        );
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let server = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env("FERRY_HOME", &home)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("this test needs root and util-linux's `unshare` to make a small file system");
        let disk = SmallDisk { server, home, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        let deadline = Instant::now() + common::WAIT;
        while disk.cli(&["ps"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "the server did not start:\n{}", disk.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        disk
    }

    /// A path inside the server's mount namespace, as this process reaches it.
    fn inside(&self, path: &std::path::Path) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{}/root{}", self.server.id(), path.display()))
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let token = std::fs::read_to_string(self.inside(&self.home.join("admin.token"))).unwrap_or_default();
        std::process::Command::new(common::ferry_bin())
            .args(args)
            .env("FERRY_SERVER", &self.url)
            .env("FERRY_TOKEN", token.trim())
            .env("FERRY_HOME", "/nonexistent")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn the_store_recovers_by_itself_when_the_disk_has_room_again() {
    let disk = SmallDisk::start("24m");
    let submit = |name: &str| disk.cli(&["run", "--no-code", "--name", name, "--", "true"]);
    assert!(submit("before").status.success(), "{}", disk.log());
    // Fill the disk to the last byte.
    let filler = disk.inside(&disk.home.join("filler"));
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![7u8; 64 << 10];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    let mut refused = 0;
    for i in 0..5 {
        let out = submit(&format!("full-{i}"));
        if !out.status.success() {
            refused += 1;
            let text = common::stderr(&out);
            assert!(text.contains("disk is full") && text.contains("without a restart"), "{text}");
        }
    }
    assert!(refused > 0, "writes on a full disk failed");
    // Room again: the next submission goes through without a restart.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = submit("after");
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "still failing with room again: {}\n{}", common::stderr(&out), disk.log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let jobs = String::from_utf8(disk.cli(&["ps", "--all"]).stdout).unwrap();
    assert!(jobs.contains("before") && jobs.contains("after"), "{jobs}");
}

#[test]
fn a_runs_output_is_capped_on_the_server_with_a_line_saying_where() {
    let f = Ferry::start_with_server_config(NodeSpec::default(), "", "[logs]\nmax_bytes_per_run = \"1MiB\"\n");
    // Three MiB of output: the server keeps one, says where it cut, and the job ends as it would have.
    let id = f.submit(&["--", "sh", "-c", "head -c 3145728 /dev/zero | tr '\\0' 'x'; echo; echo done"]);
    f.wait_for("the job to finish", |f| f.state(id) == "succeeded");
    let out = f.cli(&["logs", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.len() < (1 << 20) + 1000, "{} bytes kept", text.len());
    assert!(text.starts_with("xxxx"), "{}", &text[..40]);
    assert!(text.trim_end().ends_with("the rest was discarded while the job ran on"), "{}", &text[text.len() - 300..]);
    // A bad limit is refused at start with the reason.
    let out = common::server_with_config("[logs]\nmax_bytes_per_run = \"10KiB\"\n");
    assert_eq!(out.status.code(), Some(78));
    assert!(common::stderr(&out).contains("`max_bytes_per_run` is under 1 MiB"), "{}", common::stderr(&out));
}

#[test]
fn control_characters_are_refused_wherever_a_name_or_key_goes() {
    let f = Ferry::start(NodeSpec::default());
    f.ok(&["team", "add", "vision"]);
    let admin = std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string();
    let client = reqwest::blocking::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        let response = client.post(format!("{}{path}", f.url())).bearer_auth(&admin).json(&body).send().unwrap();
        (response.status().as_u16(), response.text().unwrap_or_default())
    };
    let experiment = post("/api/2.0/mlflow/experiments/create", serde_json::json!({"name": "fine"}));
    assert_eq!(experiment.0, 200, "{}", experiment.1);
    let experiment_id = serde_json::from_str::<serde_json::Value>(&experiment.1).unwrap()["experiment_id"].clone();
    let run = post("/api/2.0/mlflow/runs/create", serde_json::json!({"experiment_id": experiment_id}));
    let run_id = serde_json::from_str::<serde_json::Value>(&run.1).unwrap()["run"]["info"]["run_id"].clone();
    for bad in ["a\u{0}b", "a\nb", "a\u{1b}[31mb"] {
        let cases = [
            ("/api/v1/users", serde_json::json!({"name": bad})),
            ("/api/v1/teams", serde_json::json!({"name": bad})),
            ("/api/v1/teams/vision/projects", serde_json::json!({"name": bad})),
            ("/api/v1/tokens", serde_json::json!({"name": bad})),
            ("/api/v1/jobs", serde_json::json!({"command": ["true"], "workdir": "/tmp", "name": bad})),
            ("/api/v1/jobs", serde_json::json!({"command": ["true"], "workdir": "/tmp", "project": bad})),
            ("/api/v1/jobs", serde_json::json!({"command": ["true"], "workdir": format!("/tmp/{bad}")})),
            ("/api/v1/jobs", serde_json::json!({"command": ["true"], "workdir": "/tmp", "env": {"X": "a\u{0}b"}})),
            ("/api/v1/jobs", serde_json::json!({"command": ["true"], "workdir": "/tmp", "selector": {bad: "x"}})),
            ("/api/2.0/mlflow/experiments/create", serde_json::json!({"name": bad})),
            ("/api/2.0/mlflow/runs/log-parameter", serde_json::json!({"run_id": run_id, "key": bad, "value": "1"})),
            ("/api/2.0/mlflow/runs/set-tag", serde_json::json!({"run_id": run_id, "key": bad, "value": "1"})),
            (
                "/api/2.0/mlflow/runs/log-metric",
                serde_json::json!({"run_id": run_id, "key": bad, "value": 1.0, "timestamp": 1, "step": 0}),
            ),
        ];
        for (path, body) in cases {
            let (status, answer) = post(path, body.clone());
            assert!((400..500).contains(&status), "{path} {body} was taken ({status}): {answer}");
        }
    }
}
