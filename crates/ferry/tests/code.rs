//! Shipping code, end to end: `ferry run` packs the submitting folder, uploads it once, and the agent unpacks it
//! into the run's own folder; archives that try to leave that folder make the run fail to start.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{stderr, Ferry, NodeSpec};
use sha2::{Digest, Sha256};

/// A folder to submit from, beside the test's own work folder.
fn project(f: &Ferry, name: &str) -> PathBuf {
    let dir = f.root.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, path: &str, content: &[u8]) {
    let path = dir.join(path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// Submits from `dir`, shipping it, and returns the job id and the CLI's stderr.
fn ship(f: &Ferry, dir: &Path, command: &[&str]) -> (u64, String) {
    let mut args = vec!["run", "--cpus", "0.1", "--"];
    args.extend_from_slice(command);
    let out = f.cli_shipping_in(dir, &args);
    assert!(out.status.success(), "ferry run failed: {}\n{}", stderr(&out), f.logs_for_failure());
    (String::from_utf8_lossy(&out.stdout).trim().parse().unwrap(), stderr(&out))
}

fn finished(f: &Ferry, id: u64) -> serde_json::Value {
    f.wait_for(&format!("job {id} to finish"), |f| {
        matches!(f.state(id).as_str(), "succeeded" | "failed" | "cancelled" | "lost" | "timed_out")
    });
    f.job(id)
}

/// Calls the API with curl and the admin token; returns the status and the body.
fn curl(f: &Ferry, args: &[&str]) -> (u16, String) {
    let token = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let out: Output = Command::new("curl")
        .args(["-s", "--path-as-is", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn api(f: &Ferry, path: &str) -> String {
    format!("{}/api/v1{path}", f.url())
}

#[test]
fn a_folder_ships_without_its_ignored_files_and_is_uploaded_once() {
    let f = Ferry::start(NodeSpec::default());
    let dir = project(&f, "proj");
    write(&dir, "train.py", b"print('hi')\n");
    write(&dir, ".gitignore", b"big.bin\ncheckpoints/\n");
    write(&dir, "big.bin", &vec![7u8; 3 << 20]);
    write(&dir, "checkpoints/step-1.pt", b"weights");
    write(&dir, "sub/data.txt", b"1,2,3\n");
    std::os::unix::fs::symlink("sub/data.txt", dir.join("data")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("outside")).unwrap();

    let list = ["sh", "-c", "find . | sort; cat data; pwd"];
    let (id, note) = ship(&f, &dir, &list);
    assert!(note.contains("shipped ") && note.contains("not a git checkout"), "{note}");
    assert!(
        note.contains("not shipping 1 symlink(s) that point outside the folder: outside -> /etc/hostname"),
        "{note}"
    );
    let job = finished(&f, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    let output = f.ok(&["logs", &id.to_string()]);
    let (listing, rest) = output.split_at(output.find("1,2,3").unwrap());
    assert_eq!(listing, ".\n./.gitignore\n./data\n./sub\n./sub/data.txt\n./train.py\n");
    let pwd = rest.lines().nth(1).unwrap();
    let agent_dir = f.agent_dir().canonicalize().unwrap();
    assert!(Path::new(pwd).starts_with(&agent_dir), "the job runs in its own copy under the agent: {pwd}");
    let sha256 = job["code"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(job["workdir"], "");
    assert_eq!(job["code"]["git_commit"], serde_json::Value::Null);
    assert!(f.ok(&["show", &id.to_string()]).contains("shipped code, "));

    // The same folder again: the server says it has the digest, so nothing is uploaded.
    let (code, _) = curl(&f, &["-I", &api(&f, &format!("/code/{sha256}"))]);
    assert_eq!(code, 200);
    let (again, note) = ship(&f, &dir, &list);
    assert!(note.contains("already on the server"), "{note}");
    assert_eq!(finished(&f, again)["code"]["sha256"], sha256.as_str());
    let server_log = std::fs::read_to_string(f.root.path().join("server.log")).unwrap();
    assert_eq!(server_log.matches("stored code archive").count(), 1, "{server_log}");
}

#[test]
fn a_git_checkout_records_its_commit_and_uncommitted_diff() {
    let f = Ferry::start(NodeSpec::default());
    let dir = project(&f, "repo");
    let git = |args: &[&str]| {
        let out = Command::new("git").arg("-C").arg(&dir).args(args).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "-q"]);
    write(&dir, "train.py", b"print('one')\n");
    git(&["add", "train.py"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first"]);
    write(&dir, "train.py", b"print('two')\n");
    let head = git(&["rev-parse", "HEAD"]).trim().to_string();

    let (id, note) = ship(&f, &dir, &["sh", "-c", "cat train.py; ls -A"]);
    assert!(note.contains(&format!("git {} + uncommitted changes", &head[..12])), "{note}");
    let job = finished(&f, id);
    assert_eq!(job["state"], "succeeded", "{job}");
    // The job sees the folder as it is, uncommitted change included, and no .git.
    assert_eq!(f.ok(&["logs", &id.to_string()]), "print('two')\ntrain.py\n");
    assert_eq!(job["code"]["git_commit"], head.as_str());
    assert_eq!(job["code"]["git_dirty"], true);
    let (code, diff) = curl(&f, &[&api(&f, &format!("/jobs/{id}/diff"))]);
    assert_eq!(code, 200);
    assert!(diff.contains("-print('one')") && diff.contains("+print('two')"), "{diff}");
    assert_eq!(f.ok(&["show", &id.to_string(), "--diff"]), diff);
    // The job's MLflow run records the commit where MLflow records it.
    let run = job["tracking"]["run_id"].as_str().unwrap();
    let (code, body) = curl(&f, &[&format!("{}/api/2.0/mlflow/runs/get?run_id={run}", f.url())]);
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tags = answer["run"]["data"]["tags"].as_array().unwrap();
    assert!(tags.iter().any(|t| t["key"] == "mlflow.source.git.commit" && t["value"] == head.as_str()), "{answer:#}");
}

#[test]
fn no_code_runs_in_an_empty_folder_and_workdir_runs_in_place() {
    let f = Ferry::start(NodeSpec::default());
    let out = f.cli(&["run", "--no-code", "--cpus", "0.1", "--", "sh", "-c", "ls -A | wc -l; pwd"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("shipped"), "{}", stderr(&out));
    let id: u64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    assert_eq!(finished(&f, id)["state"], "succeeded");
    let output = f.ok(&["logs", &id.to_string()]);
    let mut lines = output.lines();
    assert_eq!(lines.next().unwrap().trim(), "0");
    assert!(Path::new(lines.next().unwrap()).starts_with(f.agent_dir().canonicalize().unwrap()), "{output}");
    assert_eq!(f.job(id)["code"], serde_json::Value::Null);

    let place = project(&f, "place");
    write(&place, "marker", b"here\n");
    let place_text = place.canonicalize().unwrap().display().to_string();
    let out = f.cli(&["run", "--workdir", &place_text, "--cpus", "0.1", "--", "cat", "marker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let id: u64 = String::from_utf8(out.stdout).unwrap().trim().parse().unwrap();
    assert_eq!(finished(&f, id)["state"], "succeeded");
    assert_eq!(f.ok(&["logs", &id.to_string()]), "here\n");
    assert_eq!(f.job(id)["workdir"], place_text.as_str());

    let out = f.cli(&["run", "--workdir", "relative/dir", "--", "true"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(stderr(&out).contains("must be an absolute path"), "{}", stderr(&out));
}

#[test]
fn an_oversized_folder_is_refused_before_anything_is_queued() {
    let f = Ferry::start(NodeSpec::default());
    let dir = project(&f, "huge");
    write(&dir, "train.py", b"print(1)\n");
    // Incompressible bytes, a little over the 100 MiB limit.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut file = std::fs::File::create(dir.join("dataset.bin")).unwrap();
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..101 {
        for chunk in block.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).unwrap();
    }
    drop(file);
    let out = f.cli_shipping_in(&dir, &["run", "--", "python", "train.py"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(message.contains("the folder is too big to ship: more than 100 MiB compressed"), "{message}");
    assert!(message.contains("101.0 MiB  dataset.bin"), "{message}");
    assert!(message.contains(".gitignore or .ignore") && message.contains("--no-code"), "{message}");
    assert_eq!(f.json(&["ps", "--all", "--json"])["jobs"], serde_json::json!([]));
}

/// One tar entry whose name (and link target) are written as raw bytes, as an attacker would, past the checks a
/// well-behaved tar writer makes.
fn raw_entry(name: &str, kind: tar::EntryType, link: &str, content: &[u8]) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(content.len() as u64);
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(content);
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    bytes
}

fn archive(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut tar: Vec<u8> = entries.concat();
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[test]
fn a_malicious_archive_makes_its_run_fail_to_start_and_writes_nothing_outside() {
    let f = Ferry::start(NodeSpec::default());
    let outside = f.root.path().join("outside");
    let escape = outside.join("escaped.txt");
    let ok = || raw_entry("fine.txt", tar::EntryType::Regular, "", b"fine\n");
    // A GNU long name declaring 2 GiB, sent with 4 KiB of it: refused at its header, nothing allocated.
    let mut huge_name = raw_entry("././@LongLink", tar::EntryType::GNULongName, "", &[b'a'; 4096]);
    let mut header = tar::Header::from_byte_slice(&huge_name[..512]).clone();
    header.set_size(2 << 30);
    header.set_cksum();
    huge_name[..512].copy_from_slice(header.as_bytes());
    let cases = [
        (
            raw_entry("../../../../outside/escaped.txt", tar::EntryType::Regular, "", b"x"),
            "leads out of the folder with `..`",
        ),
        (raw_entry(&escape.display().to_string(), tar::EntryType::Regular, "", b"x"), "is an absolute path"),
        (raw_entry("link", tar::EntryType::Symlink, "../../../../outside", b""), "points outside the folder"),
        // Each link passes a check by its text alone; the second leads four folders above the root through the first.
        (
            [
                raw_entry("a/b/c/d", tar::EntryType::Symlink, "../../..", b""),
                raw_entry("a/b/c/up", tar::EntryType::Symlink, "d/../../../..", b""),
            ]
            .concat(),
            "symlink `a/b/c/up` points outside the folder",
        ),
        (huge_name, "long name of 2147483648 bytes"),
    ];
    std::fs::create_dir_all(&outside).unwrap();
    for (bad, expected) in cases {
        // The bad entry comes after a good one and before a file that would be written through it.
        let through = raw_entry("link/escaped.txt", tar::EntryType::Regular, "", b"x");
        let bytes = archive(&[ok(), bad, through]);
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let path = f.root.path().join(format!("{sha256}.tar.gz"));
        std::fs::write(&path, &bytes).unwrap();
        let (code, body) = curl(
            &f,
            &["-X", "PUT", "--data-binary", &format!("@{}", path.display()), &api(&f, &format!("/code/{sha256}"))],
        );
        assert_eq!(code, 201, "{body}");
        let spec = format!(r#"{{"command":["cat","fine.txt"],"code":{{"sha256":"{sha256}"}}}}"#);
        let (code, body) =
            curl(&f, &["-X", "POST", "-H", "content-type: application/json", "-d", &spec, &api(&f, "/jobs")]);
        assert_eq!(code, 201, "{body}");
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().unwrap();
        let job = finished(&f, id);
        assert_eq!(job["state"], "failed", "{job}");
        let message = job["message"].as_str().unwrap();
        assert!(message.contains("cannot unpack the job's code") && message.contains(expected), "{message}");
        assert!(message.contains("nothing was written outside"), "{message}");
        assert!(message.len() < 2000, "a bounded report: {message}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "something was written outside");
    }
    // The node stayed ready through all of it and runs the next job.
    let id = f.submit(&["--", "true"]);
    assert_eq!(finished(&f, id)["state"], "succeeded");
    assert_eq!(f.json(&["nodes", "--json"])["nodes"][0]["state"], "ready");
}

#[test]
fn the_code_api_answers_bad_digests_and_paths_with_json_errors() {
    let f = Ferry::start(NodeSpec::default());
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap_or(serde_json::Value::Null);
    let (code, body) = curl(&f, &[&api(&f, "/code/not-a-digest")]);
    assert_eq!((code, json(&body)["code"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(json(&body)["message"].as_str().unwrap().contains("is not a SHA-256 digest"), "{body}");
    let (code, _) = curl(&f, &["-I", &api(&f, "/code/not-a-digest")]);
    assert_eq!(code, 400);
    let missing = "0".repeat(64);
    let (code, body) = curl(&f, &[&api(&f, &format!("/code/{missing}"))]);
    assert_eq!((code, json(&body)["code"].as_str()), (404, Some("not_found")), "{body}");
    let (code, _) = curl(&f, &["-I", &api(&f, &format!("/code/{missing}"))]);
    assert_eq!(code, 404);
    // Bytes that do not hash to the digest they are uploaded as are refused, and nothing is kept.
    let (code, body) = curl(&f, &["-X", "PUT", "--data-binary", "hello", &api(&f, &format!("/code/{missing}"))]);
    assert_eq!((code, json(&body)["code"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(json(&body)["message"].as_str().unwrap().contains("not the 0000"), "{body}");
    let (code, _) = curl(&f, &["-I", &api(&f, &format!("/code/{missing}"))]);
    assert_eq!(code, 404);
    let (code, body) = curl(&f, &["-X", "PUT", "--data-binary", "x", &api(&f, "/code/../../etc/passwd")]);
    assert!((400..500).contains(&code), "{code} {body}");
    assert!(json(&body)["code"].is_string(), "{body}");
    // A job naming code the server does not hold, or code and a working directory at once, is refused.
    for spec in [
        format!(r#"{{"command":["true"],"code":{{"sha256":"{missing}"}}}}"#),
        format!(r#"{{"command":["true"],"workdir":"/","code":{{"sha256":"{missing}"}}}}"#),
        r#"{"command":["true"],"code":{"sha256":"../x"}}"#.to_string(),
    ] {
        let (code, body) =
            curl(&f, &["-X", "POST", "-H", "content-type: application/json", "-d", &spec, &api(&f, "/jobs")]);
        assert_eq!((code, json(&body)["code"].as_str()), (400, Some("invalid_request")), "{spec}: {body}");
    }
    assert_eq!(f.json(&["ps", "--all", "--json"])["jobs"], serde_json::json!([]));
}

#[test]
fn a_run_whose_code_cannot_be_fetched_fails_to_start_with_the_reason() {
    let mut f = Ferry::start(NodeSpec::default());
    let dir = project(&f, "gone");
    write(&dir, "train.py", b"print(1)\n");
    f.kill_agent();
    let (id, _) = ship(&f, &dir, &["cat", "train.py"]);
    let sha256 = f.job(id)["code"]["sha256"].as_str().unwrap().to_string();
    // The archive disappears from the server before any node has fetched it.
    std::fs::remove_file(f.home().join("code").join(format!("{sha256}.tar.gz"))).unwrap();
    f.start_agent();
    let job = finished(&f, id);
    assert_eq!(job["state"], "failed", "{job}");
    let message = job["message"].as_str().unwrap();
    assert!(message.contains(&format!("cannot fetch the job's code (sha256 {sha256})")), "{message}");
    assert!(message.contains("the server holds no code archive"), "{message}");
}
