//! The web dashboard, end to end: the real `ferry` server and agent, and real headless Chromium driven through
//! chromedriver over the W3C WebDriver protocol (plain JSON over HTTP, with reqwest). A scenario of a running, a
//! queued and a finished job is made with the CLI; the tests sign in, open every page, check what it shows, watch a
//! live update arrive without a reload, and save a screenshot of each page under `target/dashboard-screenshots/`.
//! A plain HTTP test checks the sign-in rules, the security headers and the size of the assets.
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver` packages (scripts/test installs
//! them); without them the browser test fails and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{build_fake_nvml, Ferry, NodeSpec, WAIT};
use reqwest::blocking::Client;
use reqwest::redirect::Policy;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long a live update may take to show: the pages poll every 5 seconds.
const LIVE_WAIT: Duration = Duration::from_secs(15);
/// WebDriver's key codes for Tab and Enter.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";
/// The most the dashboard's files may weigh together, uncompressed.
const ASSETS_BYTES_MAX: usize = 300 * 1024;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver on a port of its own, with one browser session; both end when this is dropped.
struct Browser {
    driver: Child,
    http: Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the dashboard tests need headless Chromium and chromedriver; install them with \
                 `apt-get install -y chromium chromium-driver` (scripts/test does), then rerun (package {package})"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{base}/status")).send().ok().and_then(|r| r.json::<Value>().ok());
            if ready.is_some_and(|v| v["value"]["ready"] == true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver did not become ready on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,800",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let mut browser = Browser { driver, http, session: String::new(), _profile: profile };
        let answer = browser.call(reqwest::Method::POST, &format!("{base}/session"), Some(capabilities));
        let id = answer["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}"));
        browser.session = format!("{base}/session/{id}");
        browser
    }

    fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().unwrap_or_else(|e| panic!("WebDriver {method} {url}: {e}"));
        let status = response.status();
        let value: Value = response.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "WebDriver {method} {url} answered {status}: {value}");
        value["value"].clone()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, &format!("{}{path}", self.session), Some(body))
    }

    fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("{}{path}", self.session), None)
    }

    fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    fn url(&self) -> String {
        self.get("/url").as_str().unwrap().to_string()
    }

    fn find(&self, css: &str) -> String {
        let found = self.post("/element", json!({ "using": "css selector", "value": css }));
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.post(&format!("/element/{element}/clear"), json!({}));
        self.post(&format!("/element/{element}/value"), json!({ "text": text }));
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.post(&format!("/element/{element}/click"), json!({}));
    }

    fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
    }

    /// The visible text of the page's main part.
    fn text(&self) -> String {
        self.script("const m = document.getElementById('main'); return m ? m.innerText : document.body.innerText;")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Presses and releases one key (a WebDriver key code such as [`TAB`]) on whatever has the focus.
    fn key(&self, key: &str) {
        let press = json!([{ "type": "keyDown", "value": key }, { "type": "keyUp", "value": key }]);
        self.post("/actions", json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": press }] }));
        self.call(reqwest::Method::DELETE, &format!("{}/actions", self.session), None);
    }

    /// Presses Tab until the focused element matches `css`, as a keyboard user would, and checks that it shows
    /// where the focus is: inside the window, with a visible outline.
    fn tab_to(&self, css: &str) {
        let matches = format!("return document.activeElement !== null && document.activeElement.matches({css:?})");
        for _ in 0..60 {
            self.key(TAB);
            if self.script(&matches) == true {
                let ring = self.script(
                    "const a = document.activeElement, s = getComputedStyle(a), r = a.getBoundingClientRect(); \
                     return { outline: s.outlineStyle, width: parseFloat(s.outlineWidth), \
                       inside: r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0 && \
                         r.bottom <= innerHeight && r.right <= innerWidth };",
                );
                assert!(
                    ring["outline"] != "none" && ring["width"].as_f64() >= Some(2.0) && ring["inside"] == true,
                    "{css} has the focus but does not show it: {ring}"
                );
                return;
            }
        }
        let active = self.script("const a = document.activeElement; return a && a.outerHTML.slice(0, 200);");
        panic!("Tab never reached {css} on {}; the focus is on {active}", self.url());
    }

    /// Waits until `condition` holds for the page, failing with the page's text.
    fn wait_for(&self, what: &str, within: Duration, condition: impl Fn(&Browser) -> bool) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}; the page at {} shows:\n{}", self.url(), self.text());
    }

    fn wait_text(&self, what: &str, needle: &str) {
        self.wait_for(what, WAIT, |b| b.text().contains(needle));
    }

    /// Fails if the page's scripts recorded an error, or the browser logged a severe entry other than `allowed`.
    fn assert_no_errors(&self, page: &str, allowed: &[&str]) {
        let errors = self.script("return window.__ferryErrors === undefined ? null : window.__ferryErrors;");
        assert!(errors.is_array(), "{page}: the dashboard's script did not run (no window.__ferryErrors)");
        assert_eq!(errors, json!([]), "{page}: the page's scripts recorded errors");
        self.assert_no_errors_in_log(page, allowed);
    }

    fn assert_no_errors_in_log(&self, page: &str, allowed: &[&str]) {
        for entry in self.browser_log() {
            let message = entry["message"].as_str().unwrap_or_default();
            let severe = entry["level"] == "SEVERE";
            assert!(!severe || allowed.iter().any(|a| message.contains(a)), "{page}: the browser logged {entry}");
        }
    }

    /// The browser's console and network log since the last call, from chromedriver's log endpoint.
    fn browser_log(&self) -> Vec<Value> {
        let url = format!("{}/se/log", self.session);
        let answer = self.http.post(&url).json(&json!({ "type": "browser" })).send();
        let value = answer.ok().and_then(|r| r.json::<Value>().ok()).unwrap_or(Value::Null);
        value["value"].as_array().cloned().unwrap_or_default()
    }

    /// Saves a PNG of the whole page: the window is made as tall as the page for the picture, then set back.
    fn screenshot(&self, name: &str) -> PathBuf {
        let height =
            self.script("return document.documentElement.scrollHeight").as_u64().unwrap_or(800).clamp(800, 4000);
        self.post("/window/rect", json!({ "width": 1280, "height": height + 90 }));
        let encoded = self.get("/screenshot");
        self.post("/window/rect", json!({ "width": 1280, "height": 800 }));
        let png = base64_decode(encoded.as_str().expect("a base64 screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is a PNG");
        let path = screenshots_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http.delete(&self.session).send();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn admin_token(f: &Ferry) -> String {
    std::fs::read_to_string(f.home().join("admin.token")).unwrap().trim().to_string()
}

/// A running job holding one of the two GPUs, a queued job that needs both, and a finished job.
struct Scenario {
    running: u64,
    queued: u64,
    finished: u64,
    owner: String,
}

fn scenario(f: &Ferry) -> Scenario {
    f.ok(&["team", "add", "vision"]);
    f.ok(&["team", "project", "vision", "detector"]);
    // Run twice: the second run has the first's runtime as its prediction.
    let quick = ["--cpus", "0.5", "--memory", "256MiB", "--name", "quick", "--", "echo", "done"];
    let first = f.submit(&quick);
    f.wait_state(first, "succeeded");
    let finished = f.submit(&quick);
    f.wait_state(finished, "succeeded");
    let script = "echo hello-from-trainer; echo step 1 loss 0.5; sleep 300";
    let running = f.submit(&[
        "--gpus",
        "1",
        "--cpus",
        "0.5",
        "--memory",
        "512MiB",
        "--name",
        "trainer",
        "--team",
        "vision",
        "--project",
        "detector",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let job = f.wait_state(running, "running");
    let queued = f.submit(&["--gpus", "2", "--cpus", "0.5", "--memory", "256MiB", "--name", "waiter", "--", "true"]);
    f.wait_state(queued, "queued");
    f.wait_for("the running job's output", |f| f.job(running)["log_bytes"].as_u64().unwrap_or(0) > 0);
    Scenario { running, queued, finished, owner: job["owner"].as_str().unwrap().to_string() }
}

#[test]
fn every_page_signs_in_shows_the_scenario_and_updates_live() {
    let f = Ferry::start(NodeSpec { gpus: 2, ..NodeSpec::default() });
    let s = scenario(&f);
    let b = Browser::start();
    let base = f.url();

    // A page without a session goes to sign-in; a wrong token is refused there with a message.
    b.goto(&format!("{base}/jobs"));
    assert_eq!(b.url(), format!("{base}/login"));
    b.type_into("#token", "ferry_not_a_real_token");
    b.click("button[type=submit]");
    b.wait_text("the wrong token's message", "That token is not valid");
    assert_eq!(b.url(), format!("{base}/login"));
    b.screenshot("login-refused");
    // The refused sign-in's 401 is in the browser's log, as it should be; nothing after it may be.
    b.assert_no_errors_in_log(
        "login",
        &["/login - Failed to load resource: the server responded with a status of 401"],
    );
    b.type_into("#token", &admin_token(&f));
    b.click("button[type=submit]");
    b.wait_for("the overview after signing in", WAIT, |b| b.url() == format!("{base}/"));

    // Overview: allocation, the queue, the idle GPUs (none measured: no telemetry) and who runs what.
    b.wait_text("the overview's allocation", "1 of 2 GPUs allocated");
    b.wait_text("the pool's chart", "Pool local");
    let text = b.text();
    assert!(text.contains("1 queued") && text.contains("oldest waiting"), "{text}");
    assert!(text.contains("1 running"), "{text}");
    assert!(text.contains("measured on 0 of 2 GPUs") && text.contains("0 idle"), "{text}");
    // Each pool with its backend and what that can do, as `ferry pools` says it.
    let pools = b.script("return document.getElementById('pools').innerText").as_str().unwrap_or_default().to_string();
    assert!(pools.contains("local\tagent: images, gangs, GPUs measured, node pinning, GPU pinning\t1 of 1"), "{pools}");
    // Which kinds of GPU are connected: the harness declares two "Test GPU"s, one of them held.
    let models =
        b.script("return document.getElementById('models').innerText").as_str().unwrap_or_default().to_string();
    assert!(models.contains("Test GPU\t2\t1\t16"), "{models}");
    assert!(text.contains(&s.owner) && text.contains("vision"), "the running job's user and team:\n{text}");
    assert!(b.script("return document.querySelectorAll('#charts-all svg.chart path').length").as_u64() > Some(0));
    b.assert_no_errors("overview", &[]);
    b.screenshot("overview");

    // Nodes: each GPU, who holds it, and "no data" (never 0%) without telemetry; the heatmap has a row per GPU.
    b.goto(&format!("{base}/nodes"));
    b.wait_text("the node", "GPUs 1 of 2 allocated");
    b.wait_for("the heatmap", WAIT, |b| b.script("return document.querySelector('#heatmap svg') !== null") == true);
    let text = b.text();
    assert!(text.contains(&format!("job {} ({})", s.running, s.owner)), "{text}");
    assert!(text.contains("no data") && !text.contains("0%"), "no telemetry is no data, never 0%:\n{text}");
    let heat_rows = b.script("return [...document.querySelectorAll('#heatmap svg text')].map(t => t.textContent)");
    let heat_rows: Vec<&str> = heat_rows.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(heat_rows.contains(&"node-a/0") && heat_rows.contains(&"node-a/1"), "{heat_rows:?}");
    b.assert_no_errors("nodes", &[]);
    b.screenshot("nodes");

    // Jobs: the running and queued jobs by default, every job with "any state", and a new job without a reload.
    b.goto(&format!("{base}/jobs"));
    let row = |id: u64| format!("return document.querySelector('tr[data-job=\"{id}\"]') !== null");
    b.wait_for("the running job's row", WAIT, |b| b.script(&row(s.running)) == true);
    assert_eq!(b.script(&row(s.queued)), true);
    assert_eq!(b.script(&row(s.finished)), false, "a finished job is not active");
    let running_row = b.script(&format!("return document.querySelector('tr[data-job=\"{}\"]').innerText", s.running));
    let running_row = running_row.as_str().unwrap();
    assert!(running_row.contains("trainer") && running_row.contains("running"), "{running_row}");
    b.script("window.__loadedOnce = true; return null;");
    let late = f.submit(&["--cpus", "0.5", "--memory", "256MiB", "--name", "latecomer", "--", "sleep", "300"]);
    b.wait_for("the new job to appear without a reload", LIVE_WAIT, |b| b.script(&row(late)) == true);
    assert_eq!(b.script("return window.__loadedOnce === true"), true, "the page was not reloaded");
    b.click("button[data-sort=owner]");
    assert!(b.url().contains("sort=owner"), "sorting shows in the address: {}", b.url());
    b.assert_no_errors("jobs", &[]);
    b.screenshot("jobs");
    // Filtering by state: the finished job is there among "succeeded".
    b.goto(&format!("{base}/jobs?state=succeeded"));
    b.wait_for("the finished job's row", WAIT, |b| b.script(&row(s.finished)) == true);
    assert_eq!(b.script(&row(s.running)), false);
    // Filters go to the server: typing a team asks the API for that team's jobs only, and the address keeps it.
    b.goto(&format!("{base}/jobs?state=all"));
    b.wait_for("every job", WAIT, |b| b.script(&row(s.queued)) == true && b.script(&row(s.running)) == true);
    b.type_into("input[name=team]", "vision");
    b.wait_for("only the team's jobs", LIVE_WAIT, |b| b.script(&row(s.queued)) == false);
    assert_eq!(b.script(&row(s.running)), true, "the running job is the team's");
    assert_eq!(b.script(&row(s.finished)), false, "the finished job has no team");
    assert!(b.url().contains("team=vision"), "the filter is in the address: {}", b.url());
    let asked = b.script(
        "return performance.getEntriesByType('resource').map(e => e.name)\
           .filter(n => n.includes('/api/v1/jobs?') && n.includes('team=vision'))",
    );
    assert!(asked.as_array().is_some_and(|a| !a.is_empty()), "the team filter never reached the API");
    // A shared address with an unknown owner shows no jobs (the server matches names exactly).
    b.goto(&format!("{base}/jobs?state=all&user=nobody-at-all"));
    b.wait_text("an empty listing", "No jobs match.");
    // Pages: the newest first, then older ones with "Load more" (`before`), until none are left.
    b.goto(&format!("{base}/jobs?state=all&per_page=2"));
    let rows = "return document.querySelectorAll('tr[data-job]').length";
    b.wait_for("the first page", WAIT, |b| b.script(rows) == 2);
    assert_eq!(b.script(&row(late)), true, "the newest job is on the first page");
    assert_eq!(b.script(&row(s.finished)), false, "the oldest job is not");
    assert_eq!(b.script("return document.getElementById('jobs-more').hidden"), false);
    b.click("#jobs-more");
    b.wait_for("the second page", WAIT, |b| b.script(rows) == 4);
    assert_eq!(b.script(&row(s.finished)), true);
    // The third page holds the scenario's first run of `quick` alone.
    b.click("#jobs-more");
    b.wait_for("no more pages", WAIT, |b| b.script("return document.getElementById('jobs-more').hidden") == true);
    assert_eq!(b.script(rows), 5);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(b.script(rows), 5, "a live update keeps the pages loaded");
    assert_eq!(b.script("return document.getElementById('jobs-more').hidden"), true, "and knows none are left");
    b.assert_no_errors("jobs pages", &[]);

    // The keyboard reaches every page from the navigation (Tab, then Enter), and the focus always shows.
    b.goto(&format!("{base}/"));
    let pages = [("nodes", "/nodes"), ("jobs", "/jobs"), ("sweeps", "/sweeps"), ("usage", "/usage"), ("overview", "/")];
    for (page, path) in pages {
        b.tab_to(&format!("nav a[data-page={page}]"));
        b.key(ENTER);
        b.wait_for(&format!("the {page} page by keyboard"), WAIT, |b| {
            b.url().split('?').next() == Some(&format!("{base}{path}"))
        });
    }
    // The jobs table's column headers are buttons: Enter sorts, and the focus stays on the header.
    b.goto(&format!("{base}/jobs"));
    b.wait_for("the running job's row", WAIT, |b| b.script(&row(s.running)) == true);
    b.tab_to("button[data-sort=team]");
    b.key(ENTER);
    b.wait_for("sorting by team", WAIT, |b| b.url().contains("sort=team&dir=asc"));
    let sorted = "return document.querySelector('th[aria-sort]').innerText";
    assert_eq!(b.script(sorted).as_str().map(str::trim), Some("Team ▲"));
    assert_eq!(b.script("return document.activeElement.dataset.sort"), "team", "the focus stays on the header");
    b.key(ENTER);
    b.wait_for("sorting by team, descending", WAIT, |b| b.url().contains("sort=team") && !b.url().contains("dir=asc"));
    // A redraw by the live update keeps the focus where it was.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(b.script("return document.activeElement.dataset.sort"), "team", "the focus survives a live update");
    b.assert_no_errors("keyboard", &[]);

    // One job: its spec, placement, charts and the live tail of its log, searchable.
    b.goto(&format!("{base}/jobs/{}", s.running));
    b.wait_for("the job's log tail", WAIT, |b| {
        b.script("return document.getElementById('log').textContent")
            .as_str()
            .unwrap_or("")
            .contains("hello-from-trainer")
    });
    let text = b.text();
    assert!(text.contains("sh -c 'echo hello-from-trainer; echo step 1 loss 0.5; sleep 300'"), "{text}");
    assert!(text.contains("Asked for\n1 GPU, 0.5 CPU cores, 512 MiB memory"), "one GPU, not \"1 GPUs\":\n{text}");
    assert!(text.contains("node-a") && text.contains("vision") && text.contains("detector"), "{text}");
    // The placement's reason as facts under its sentence in the timeline.
    let placed = b.script("return document.querySelector('#job-timeline .reason[data-kind=placed]').textContent");
    let placed = placed.as_str().unwrap_or_default();
    assert!(
        placed.starts_with("pool ") && placed.contains(" · node-a, GPU ") && placed.contains(" · chosen of "),
        "{placed}"
    );
    b.wait_for("the job's charts", WAIT, |b| {
        b.script("return document.querySelectorAll('#job-charts svg.chart').length").as_u64() == Some(3)
    });
    // The environment shows its names; the values (a whole PATH) only when opened.
    assert!(text.contains("PATH") && !text.contains("PATH="), "{text}");
    // Memory under 1 GiB is charted in MiB, its axis labels distinct rather than all "0".
    let memory_axis = b.script(
        "return Array.from(document.querySelectorAll('#job-charts svg.chart')[1].querySelectorAll('.axis text')).map((t) => t.textContent)",
    );
    let labels: Vec<&str> = memory_axis.as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(labels.contains(&"MiB"), "{labels:?}");
    assert!(labels.iter().filter(|l| **l == "0").count() <= 1, "{labels:?}");
    b.type_into("#log-search", "loss");
    let log = b.script("return document.getElementById('log').innerText");
    assert_eq!(log.as_str().map(str::trim), Some("step 1 loss 0.5"), "the search keeps only matching lines");
    assert!(b.script("return document.querySelector('#log mark').textContent") == "loss");
    let download = b.script("return document.querySelector('a[download]').getAttribute('href')");
    assert_eq!(download, json!(format!("/api/v1/jobs/{}/logs", s.running)));
    b.assert_no_errors("job", &[]);
    b.screenshot("job");
    // A queued job says why it waits.
    b.goto(&format!("{base}/jobs/{}", s.queued));
    b.wait_text("the queued job's reason", "Why it waits");
    b.assert_no_errors("queued job", &[]);
    // A finished job cannot be cancelled; a running one can, in two steps, through the API with the cookie.
    b.goto(&format!("{base}/jobs/{}", s.finished));
    b.wait_text("the finished job", "succeeded");
    b.wait_text("the finished job's prediction", "Expected run");
    assert_eq!(b.script("return document.getElementById('cancel-job') === null"), true, "nothing to cancel");
    b.goto(&format!("{base}/jobs/{late}"));
    b.wait_for("the cancel button", WAIT, |b| {
        b.script("return document.getElementById('cancel-job') !== null") == true
    });
    b.click("#cancel-job");
    b.wait_text("the confirmation", &format!("Cancel job {late}?"));
    assert_eq!(f.job(late)["state"], "running", "asking is not cancelling");
    b.click("#cancel-keep");
    assert_eq!(b.script("return document.getElementById('cancel-confirm') === null"), true);
    b.click("#cancel-job");
    b.screenshot("job-cancel");
    b.click("#cancel-confirm");
    b.wait_for("the cancel result", WAIT, |b| {
        b.script("return document.getElementById('cancel-result').textContent")
            .as_str()
            .is_some_and(|t| t.starts_with("Cancel requested"))
    });
    f.wait_state(late, "cancelled");
    b.wait_for("the job page to show it cancelled", LIVE_WAIT, |b| {
        b.script("return document.querySelector('h1 .state').textContent") == "cancelled"
    });
    assert_eq!(b.script("return document.getElementById('cancel-job') === null"), true, "nothing left to cancel");
    b.assert_no_errors("cancel", &[]);

    // Usage: hours allocated and used per user, with a CSV link to the API.
    b.goto(&format!("{base}/usage"));
    b.wait_for("the usage report", WAIT, |b| {
        b.script("return document.querySelector('#usage table, #usage-error') !== null") == true
    });
    let error = b.script("const e = document.getElementById('usage-error'); return e && e.textContent");
    assert_eq!(error, Value::Null, "the usage report failed");
    b.wait_text("the owner's usage row", &s.owner);
    let csv = b.script("return document.getElementById('usage-csv').getAttribute('href')");
    assert_eq!(csv, json!("/api/v1/usage?by=user&start=30d&format=csv"));
    b.assert_no_errors("usage", &[]);
    b.screenshot("usage");

    // Signing out forgets the session: pages go back to sign-in.
    b.click("form.logout button");
    b.wait_for("the sign-in page", WAIT, |b| b.url() == format!("{base}/login"));
    b.goto(&format!("{base}/"));
    assert_eq!(b.url(), format!("{base}/login"));
}

/// Signs in through the sign-in page with the admin token and waits for the overview.
fn sign_in(b: &Browser, f: &Ferry) {
    let base = f.url();
    b.goto(&format!("{base}/login"));
    b.type_into("#token", &admin_token(f));
    b.click("button[type=submit]");
    b.wait_for("the overview after signing in", WAIT, |b| b.url() == format!("{base}/"));
}

#[test]
fn measured_gpu_use_shows_utilisation_idle_gpus_and_a_coloured_heatmap() {
    // Two GPUs found through NVML, one busy 87% and one 5%: below the 10% that makes an allocated GPU idle.
    let library_dir = tempfile::tempdir().unwrap();
    let library = build_fake_nvml(library_dir.path(), &["-DFAKE_GPU1_PERCENT=5"]);
    let f = Ferry::start_with_agent_config(
        NodeSpec { gpus: 0, ..NodeSpec::default() },
        &format!("nvml_library = '{}'", library.display()),
        "30s",
    );
    let job = f.submit(&["--gpus", "2", "--cpus", "0.5", "--memory", "256MiB", "--name", "both", "--", "sleep", "300"]);
    f.wait_state(job, "running");
    let b = Browser::start();
    let base = f.url();
    sign_in(&b, &f);

    // Overview: the measured mean of 87% and 5%, both GPUs measured, and the 5% one counted and listed as idle.
    b.wait_text("the measured utilisation", "measured on 2 of 2 GPUs");
    b.wait_text("the idle GPU", "1 idle");
    let text = b.text();
    assert!(text.contains("2 of 2 GPUs allocated") && text.contains("1 of 1 node ready"), "{text}");
    let models =
        b.script("return document.getElementById('models').innerText").as_str().unwrap_or_default().to_string();
    assert!(models.contains("Fake H100 80GB\t2\t2") && models.contains("46%"), "{models}");
    let card = b.script(
        "return [...document.querySelectorAll('.card')].find(c => c.textContent.includes('GPU utilisation')).textContent",
    );
    assert!(card.as_str().is_some_and(|c| c.contains("46%")), "the mean of 87% and 5% is 46%: {card}");
    let idle = b.script("return document.getElementById('idle').innerText");
    let idle = idle.as_str().unwrap_or_default();
    assert!(idle.contains("node-a/1") && idle.contains("5%") && idle.contains("idle"), "{idle}");
    assert!(!idle.contains("node-a/0"), "the 87% GPU is not idle: {idle}");
    assert_eq!(b.script("return document.querySelector('.card.waste') !== null"), true, "the idle card is marked");
    b.assert_no_errors("overview with telemetry", &[]);
    b.screenshot("telemetry-overview");

    // Nodes: each GPU's measured figure, the idle one marked in words, and, once samples are stored, coloured cells
    // in the heatmap for both GPUs (not the hatch of "no data").
    b.goto(&format!("{base}/nodes"));
    b.wait_text("the GPUs' utilisation", "87%");
    let gpu_row = |index: u32| {
        b.script(&format!(
            "return [...document.querySelectorAll('#nodes tbody tr')].map(r => r.innerText)\
               .find(t => t.startsWith('{index}\t')) || ''"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    };
    let (first, second) = (gpu_row(0), gpu_row(1));
    assert!(first.contains("87%") && !first.contains("idle"), "{first}");
    assert!(second.contains("5%") && second.contains("idle"), "{second}");
    assert!(first.contains(&format!("job {job}")) && second.contains(&format!("job {job}")), "{first}\n{second}");
    let coloured = |b: &Browser, gpu: &str| {
        b.script(&format!(
            "const label = [...document.querySelectorAll('#heatmap svg text')].find(t => t.textContent === '{gpu}'); \
             if (!label) return 0; const y = label.getAttribute('y'); \
             return [...document.querySelectorAll('#heatmap svg rect')].filter(r => \
               Number(r.getAttribute('y')) + Number(r.getAttribute('height')) - 4 === Number(y) && \
               !r.getAttribute('fill').startsWith('url(')).length"
        ))
        .as_u64()
        .unwrap_or(0)
    };
    b.wait_for("coloured heatmap cells for both GPUs", WAIT, |b| {
        coloured(b, "node-a/0") > 0 && coloured(b, "node-a/1") > 0
    });
    let cell = b.script(
        "return [...document.querySelectorAll('#heatmap svg rect title')].map(t => t.textContent)\
           .filter(t => t.startsWith('node-a/0') && !t.endsWith('no data'))",
    );
    assert!(cell.as_array().is_some_and(|c| c.iter().all(|t| t.as_str().unwrap_or("").ends_with("87%"))), "{cell}");
    b.assert_no_errors("nodes with telemetry", &[]);
    b.screenshot("telemetry-nodes");

    // The job's page: its three charts (per-process GPU figures need the stand-in's process file, not used here).
    b.goto(&format!("{base}/jobs/{job}"));
    b.wait_for("the job's charts", WAIT, |b| {
        b.script("return document.querySelectorAll('#job-charts svg.chart').length").as_u64() == Some(3)
    });
    b.assert_no_errors("job with telemetry", &[]);
    b.screenshot("telemetry-job");
}

/// Posts to the MLflow tracking API with the admin token, failing the test on an error answer.
fn mlflow_post(http: &Client, f: &Ferry, path: &str, body: Value) {
    let response = http
        .post(format!("{}/api/2.0/mlflow/{path}", f.url()))
        .bearer_auth(admin_token(f))
        .json(&body)
        .send()
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status();
    assert!(status.is_success(), "{path} answered {status}: {}", response.text().unwrap_or_default());
}

#[test]
fn the_job_page_shows_the_runs_metrics_params_and_artifacts() {
    let f = Ferry::start(NodeSpec::default());
    // The job logs to its own run with the variables it is given, as `mlflow` inside it would: two params, an
    // accuracy at three steps and an artifact in a folder, once the test says go (so the page is seen empty first).
    let go = tempfile::tempdir().unwrap();
    let go_file = go.path().join("go");
    let script = r#"set -e
while [ ! -e "$GO" ]; do sleep 0.1; done
api="$MLFLOW_TRACKING_URI/api/2.0"; auth="Authorization: Bearer $MLFLOW_TRACKING_TOKEN"; now=$(date +%s)000
point() { echo '{"key":"accuracy","value":'$1',"step":'$2',"timestamp":'$now'}'; }
curl -sSf -H "$auth" -H 'content-type: application/json' "$api/mlflow/runs/log-batch" -d '{"run_id":"'$MLFLOW_RUN_ID'",
  "params":[{"key":"lr","value":"0.001"},{"key":"optimizer","value":"adam"}],
  "metrics":['"$(point 0.5 0),$(point 0.75 100),$(point 0.875 200)"']}'
printf 'w = 1\n' | curl -sSf -H "$auth" -X PUT --data-binary @- \
  "$api/mlflow-artifacts/artifacts/$MLFLOW_EXPERIMENT_ID/$MLFLOW_RUN_ID/artifacts/model/weights.txt"
echo logged
sleep 300"#;
    let env = format!("GO={}", go_file.display());
    let job =
        f.submit(&["--cpus", "0.5", "--memory", "256MiB", "--name", "train", "--env", &env, "--", "sh", "-c", script]);
    let record = f.wait_state(job, "running");
    let run = record["tracking"]["run_id"].as_str().unwrap_or_else(|| panic!("no tracking run: {record}")).to_string();
    let experiment = record["tracking"]["experiment_id"].as_str().unwrap().to_string();
    let http = plain_client();
    let base = f.url();
    let b = Browser::start();
    sign_in(&b, &f);

    // Before anything is logged the page says so.
    b.goto(&format!("{base}/jobs/{job}"));
    b.wait_for("the empty run", WAIT, |b| b.script("return document.getElementById('ml-none') !== null") == true);

    // The job logs; the test adds 1,200 points of a loss (more than are drawn: the chart keeps each bucket's
    // extremes). The page picks them up while the job runs.
    std::fs::write(&go_file, "").unwrap();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    for chunk in (0..1200u64).collect::<Vec<_>>().chunks(600) {
        let metrics: Vec<Value> = chunk
            .iter()
            .map(|&s| json!({ "key": "loss", "value": 1.0 / (1.0 + s as f64), "timestamp": now_ms + s, "step": s }))
            .collect();
        mlflow_post(&http, &f, "runs/log-batch", json!({ "run_id": run, "metrics": metrics }));
    }
    f.wait_for("the job to log", |f| f.ok(&["logs", &job.to_string()]).contains("logged") || f.state(job) != "running");
    assert_eq!(f.state(job), "running", "the job could not log: {}", f.ok(&["logs", &job.to_string()]));

    let charts = "return document.querySelectorAll('#ml-charts svg.chart').length";
    b.wait_for("a chart per metric", Duration::from_secs(30), |b| b.script(charts).as_u64() == Some(2));
    let captions = b.script("return [...document.querySelectorAll('#ml-charts figcaption')].map(c => c.textContent)");
    assert_eq!(captions, json!(["accuracy by step (3 points)", "loss by step (1200 points)"]));
    let drawn = b.script(
        "const p = document.querySelectorAll('#ml-charts svg.chart path')[1]; \
         return p.getAttribute('d').split(/[MLH]/).length - 1",
    );
    assert!(drawn.as_u64().is_some_and(|n| n > 100 && n <= 600), "the loss is drawn from at most 600 points: {drawn}");
    let latest = b.script("return document.getElementById('ml-latest').innerText");
    let latest = latest.as_str().unwrap_or_default();
    assert!(latest.contains("loss\t8.33e-4\t1199") && latest.contains("accuracy\t0.875\t200"), "{latest}");
    let params = b.script("return document.getElementById('ml-params').innerText");
    let params = params.as_str().unwrap_or_default();
    assert!(params.contains("lr\t0.001") && params.contains("optimizer\tadam"), "{params}");

    // The artifacts: a folder that opens on a click, and a download link that the session cookie signs.
    b.wait_for("the artifacts' folder", WAIT, |b| {
        b.script("return document.querySelector('#artifacts button.folder') !== null") == true
    });
    b.click("#artifacts button.folder");
    let link = "const a = document.querySelector('#artifacts a[download]'); return a && a.getAttribute('href')";
    b.wait_for("the artifact's link", WAIT, |b| !b.script(link).is_null());
    assert_eq!(
        b.script(link),
        json!(format!("/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/model/weights.txt"))
    );
    assert!(b.text().contains("weights.txt 6 B"), "{}", b.text());
    let fetched = b.post(
        "/execute/async",
        json!({ "script": "const done = arguments[0]; \
            fetch(document.querySelector('#artifacts a[download]').href, { credentials: 'same-origin' }) \
              .then(r => r.text().then(t => done(r.status + ' ' + t)), e => done(String(e)));", "args": [] }),
    );
    assert_eq!(fetched, "200 w = 1\n", "the artifact downloads with the session cookie");
    b.assert_no_errors("job with a run", &[]);
    b.screenshot("job-run");

    // A finished job's page reads its run once more and then stops asking.
    f.ok(&["cancel", &job.to_string()]);
    f.wait_state(job, "cancelled");
    b.goto(&format!("{base}/jobs/{job}"));
    b.wait_for("the finished job's charts", WAIT, |b| b.script(charts).as_u64() == Some(2));
    b.assert_no_errors("finished job with a run", &[]);
}

/// A grid over `x` in 1..=4: each trial logs `score = x`; x = 3 then fails and x = 4 keeps running.
const SWEEP: &str = r#"
name = "ui-sweep"
max_trials = 4
max_parallel = 4
seed = 7
command = ["sh", "-c", '''
now=$(date +%s)000
curl -sSf -H "Authorization: Bearer $MLFLOW_TRACKING_TOKEN" -H 'content-type: application/json' \
  "$MLFLOW_TRACKING_URI/api/2.0/mlflow/runs/log-metric" \
  -d '{{"run_id":"'$MLFLOW_RUN_ID'","key":"score","value":{x},"step":1,"timestamp":'$now'}}'
case {x} in 3) exit 1;; 4) sleep 300;; esac
''']

[objective]
metric = "score"
goal = "minimize"

[method]
name = "grid"

[params.x]
distribution = "choice"
values = [1, 2, 3, 4]

[trial]
cpus = 0.5
memory = "128MiB"
"#;

#[test]
fn the_sweep_pages_show_trials_the_best_one_and_cancel() {
    let f = Ferry::start(NodeSpec::default());
    let http = plain_client();
    let base = f.url();
    let submitted = http
        .post(format!("{base}/api/v1/sweeps"))
        .bearer_auth(admin_token(&f))
        .json(&json!({ "spec": SWEEP }))
        .send()
        .unwrap();
    assert!(submitted.status().is_success(), "the sweep was refused: {}", submitted.text().unwrap_or_default());
    let id = submitted.json::<Value>().unwrap()["id"].as_u64().unwrap();
    let sweep = || -> Value {
        let answer = http.get(format!("{base}/api/v1/sweeps/{id}")).bearer_auth(admin_token(&f)).send().unwrap();
        answer.json().unwrap()
    };
    // Every trial has logged its score: two completed, one failed, one still running.
    f.wait_for("the sweep's trials to settle", |_| {
        let s = sweep();
        let c = &s["counts"];
        let trials = s["trials"].as_array().cloned().unwrap_or_default();
        let logged = trials.iter().any(|t| t["state"] == "running" && t["value"] == 4.0);
        c["completed"] == 2 && c["failed"] == 1 && c["running"] == 1 && logged
    });
    let s = sweep();
    let best = s["best_trial"].as_u64().expect("a best trial");
    let best_job = s["trials"].as_array().unwrap().iter().find(|t| t["index"] == best).unwrap()["job_id"].clone();
    assert_eq!(s["best_value"], 1.0, "the lowest score is best: {s}");

    let b = Browser::start();
    sign_in(&b, &f);
    // The list: the sweep with its progress and best value.
    b.goto(&format!("{base}/sweeps"));
    b.wait_text("the sweep's row", "ui-sweep");
    let text = b.text();
    assert!(text.contains("3 of 4 trials ended (2 completed, 1 failed, 1 running)"), "{text}");
    assert!(text.contains(&format!("1 (trial {best})")) && text.contains("minimize score"), "{text}");
    b.assert_no_errors("sweeps", &[]);
    b.screenshot("sweeps");

    // The sweep: its best trial linked to its job, a mark per trial with a value, and the trials' table.
    b.click(&format!("a[href=\"/sweeps/{id}\"]"));
    let rows = "return document.querySelectorAll('#trials-table tbody tr[data-trial]').length";
    b.wait_for("the trials' table", WAIT, |b| b.script(rows) == 4);
    let text = b.text();
    assert!(text.contains(&format!("Best trial: trial {best}, score = 1 (minimize) · job {best_job} · x=1")), "{text}");
    assert_eq!(b.script("return document.querySelector('tr.best').dataset.trial"), json!(best.to_string()));
    let headers = b.script("return [...document.querySelectorAll('#trials-table th')].map(t => t.innerText.trim())");
    let expected = json!(["Trial ▲", "State", "x", "Objective", "Step", "Runtime", "Stop reason", "Job"]);
    assert_eq!(headers, expected, "a column per parameter");
    let marks = b.script(
        "return [...document.querySelectorAll('#sweep-chart svg.chart title')].map(t => t.textContent)\
           .filter(t => t.startsWith('trial')).sort()",
    );
    let marks: Vec<&str> = marks.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(marks.len(), 4, "{marks:?}");
    let failed = marks.iter().any(|m| m.contains("(failed): 3"));
    assert!(failed && marks.iter().any(|m| m.contains("(running): 4")), "{marks:?}");
    // Sorting by the objective, lowest first, then highest first; the focus stays on the header.
    b.click("button[data-sort=value]");
    let first = "return document.querySelector('#trials-table tbody tr').dataset.trial";
    assert_eq!(b.script(first), json!(best.to_string()));
    b.click("button[data-sort=value]");
    let top = b.script("return document.querySelector('#trials-table tbody tr').innerText");
    assert!(top.as_str().is_some_and(|t| t.contains("running")), "the highest score is the running trial's: {top}");
    assert_eq!(b.script("return document.activeElement.dataset.sort"), "value");
    b.assert_no_errors("sweep", &[]);
    b.screenshot("sweep");

    // Cancelling, in two steps, with the session cookie: the running trial stops and the page shows it live.
    b.click("#cancel-sweep");
    b.wait_text("the confirmation", &format!("Cancel sweep {id}?"));
    b.click("#cancel-confirm");
    b.wait_text("the cancel result", &format!("Cancel requested for sweep {id}."));
    b.wait_for("the sweep to show it cancelled", LIVE_WAIT, |b| {
        b.script("return document.querySelector('h1 .state').textContent") == "cancelled"
    });
    assert_eq!(sweep()["state"], "cancelled");
    assert_eq!(b.script("return document.getElementById('cancel-sweep') === null"), true, "nothing left to cancel");
    b.assert_no_errors("cancelled sweep", &[]);
}

fn plain_client() -> Client {
    Client::builder().redirect(Policy::none()).timeout(Duration::from_secs(30)).build().unwrap()
}

#[test]
fn pages_need_a_session_cookie_and_assets_are_small_and_safe() {
    let f = Ferry::start(NodeSpec { gpus: 1, ..NodeSpec::default() });
    let http = plain_client();
    let base = f.url();
    for page in ["/", "/nodes", "/jobs", "/jobs/1", "/sweeps", "/sweeps/1", "/usage"] {
        let response = http.get(format!("{base}{page}")).send().unwrap();
        assert_eq!(response.status(), 303, "{page} without a session");
        assert_eq!(response.headers()["location"], "/login", "{page}");
    }
    let login = http.get(format!("{base}/login")).send().unwrap();
    assert_eq!(login.status(), 200);
    assert_eq!(login.headers()["content-type"], "text/html; charset=utf-8");
    assert!(login.headers()["content-security-policy"].to_str().unwrap().starts_with("default-src 'self'"));
    assert_eq!(login.headers()["x-content-type-options"], "nosniff");
    let login_page = login.text().unwrap();
    assert!(login_page.contains("type=\"password\""));

    let sign_in = |token: &str| {
        http.post(format!("{base}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .unwrap()
    };
    let wrong = sign_in("ferry_0000");
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    assert!(wrong.text().unwrap().contains("That token is not valid"));
    assert_eq!(sign_in("").status(), 401, "an empty token is refused, not an error");
    assert_eq!(sign_in("%zz;%20").status(), 401, "a malformed token is refused, not an error");
    let agent = f.ok(&["token", "create", "--agent", "--node", "node-b", "--name", "rack-b"]);
    let refused = sign_in(agent.trim());
    assert_eq!(refused.status(), 401, "an agent token does not sign in to the dashboard");
    assert!(refused.text().unwrap().contains("agent token"));

    let signed = sign_in(&admin_token(&f));
    assert_eq!(signed.status(), 303);
    assert_eq!(signed.headers()["location"], "/");
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    // The cookie holds a session of its own, never the token that signed in.
    assert!(cookie.starts_with("ferry_session=ferry_session_"), "{cookie}");
    assert!(cookie.ends_with("; HttpOnly; SameSite=Strict; Path=/; Max-Age=43200"), "{cookie}");
    assert!(!cookie.contains(admin_token(&f).trim_start_matches("ferry_")), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    let token_cookie = format!("ferry_session={}", admin_token(&f));
    let with_token = http.get(format!("{base}/api/v1/nodes")).header("cookie", &token_cookie).send().unwrap();
    assert_eq!(with_token.status(), 401, "an API token in the cookie is no session");
    let page = http.get(format!("{base}/jobs")).header("cookie", &token_cookie).send().unwrap();
    assert_eq!(page.status(), 303, "an API token in the cookie signs in no page");
    let page = http.get(format!("{base}/jobs/1")).header("cookie", &session).send().unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(page.text().unwrap().contains("<script src=\"/ui/app.js\""));
    let nodes = http.get(format!("{base}/api/v1/nodes")).header("cookie", &session).send().unwrap();
    assert_eq!(nodes.status(), 200, "the API takes the session cookie");

    // Signing out must come from the dashboard's own page.
    let logout = |origin: Option<&str>| {
        let mut request = http.post(format!("{base}/logout")).header("cookie", &session);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().unwrap()
    };
    assert_eq!(logout(None).status(), 403, "no Origin");
    assert_eq!(logout(Some("http://evil.example")).status(), 403, "another site");
    let out = logout(Some(&base));
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()["location"], "/login");
    assert!(out.headers()["set-cookie"].to_str().unwrap().starts_with("ferry_session=; "));
    assert!(out.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    // Signed out is signed out: the old cookie, replayed, opens nothing.
    let replayed = http.get(format!("{base}/api/v1/nodes")).header("cookie", &session).send().unwrap();
    assert_eq!(replayed.status(), 401, "the session ended at sign-out");
    assert_eq!(http.get(format!("{base}/jobs")).header("cookie", &session).send().unwrap().status(), 303);
    // Sign-ins and sign-outs are in the audit log, refused ones too, with where they came from.
    let audit: Value = http
        .get(format!("{base}/api/v1/audit?action=sign-"))
        .bearer_auth(admin_token(&f))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let entries: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap().to_string(), e["result"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(entries.iter().filter(|(a, r)| a == "sign-in" && r == "ok").count(), 1, "{entries:?}");
    assert!(entries.iter().filter(|(a, r)| a == "sign-in" && r == "denied").count() >= 2, "{entries:?}");
    assert_eq!(entries[0], ("sign-out".to_string(), "ok".to_string()), "{entries:?}");
    assert_eq!(audit["entries"][0]["actor"], "admin");
    assert_eq!(audit["entries"][0]["source"], "127.0.0.1");

    // The assets: proper types, security headers, revalidated by their hash; all of them together under 300 KB.
    let mut served = login_page.len();
    for (name, kind) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("charts.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("logo.svg", "image/svg+xml"),
    ] {
        let response = http.get(format!("{base}/ui/{name}")).send().unwrap();
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.headers()["content-type"], kind, "{name}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff", "{name}");
        assert_eq!(response.headers()["cache-control"], "no-cache", "{name}");
        let etag = response.headers()["etag"].clone();
        served += response.bytes().unwrap().len();
        let again = http.get(format!("{base}/ui/{name}")).header("if-none-match", etag).send().unwrap();
        assert_eq!(again.status(), 304, "{name} unchanged");
    }
    assert_eq!(http.get(format!("{base}/ui/nothing.js")).send().unwrap().status(), 404);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ferry-server/ui");
    let on_disk: u64 = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(served < ASSETS_BYTES_MAX, "the served assets weigh {served} bytes");
    assert!((on_disk as usize) < ASSETS_BYTES_MAX, "{} holds {on_disk} bytes", dir.display());
}

/// A server whose elastic pool `aws` asks EC2 at a closed port: bursting to it is real (the pool's cloud, its price
/// from the catalog, the decision to ask for a machine, the provider's failure and the cooldown that follows all come
/// from the server), though no machine ever starts.
fn elastic_config(port: u16) -> String {
    format!(
        "public_url = \"http://127.0.0.1:{port}\"\n[[pool]]\nname = \"local\"\norder = 0\n\n[[pool]]\nname = \"aws\"\n\
         order = 10\nburst = true\nmax_nodes = 2\nstartup = \"5s\"\n[pool.cloud]\nprovider = \"aws\"\n\
         region = \"us-east-1\"\nzones = [\"us-east-1a\"]\ninstance_type = \"m5.large\"\nimage = \"ami-12c6146b\"\n\
         endpoint = \"http://127.0.0.1:9\"\n"
    )
}

/// What the browser is told about pool `aws` on top of the server's answer: two live machines, a zone cooling, and
/// a history of every kind of burst event, with markup in the provider's and the scheduler's words, which must show
/// as text.
fn elastic_extra(now_us: i64) -> Value {
    let ago = |s: i64| now_us - s * 1_000_000;
    json!({
        "starting": 1, "busy": 1, "idle": 0, "releasing": 0, "spend": 1.2345, "spend_hour": 0.192,
        "zones_cooling": [{ "zone": "us-east-1a", "until_us": ago(-300),
            "reason": "capacity: InsufficientInstanceCapacity <b>none left</b>" }],
        "last_error": "EC2 answered Unsupported: <img src=x onerror=\"window.__injected = 1\"> m5.large is not offered",
        "machines": [
            { "node": "aws-1", "state": "joined", "zone": "us-east-1b", "instance_id": "i-0abc123def4567890",
              "requested_at_us": ago(3720), "joined_at_us": ago(3630), "cost": 0.0992 },
            { "node": "aws-2", "state": "requested", "requested_at_us": ago(20), "cost": 0.0005 },
        ],
        "events": [
            { "at_us": ago(3720), "kind": "provision", "nodes": 1,
              "detail": "job 7; no node up or starting can hold it; pool aws has room for 2 more nodes (at most 2)" },
            { "at_us": ago(2400), "kind": "failed", "nodes": 1, "detail": "capacity: InsufficientInstanceCapacity" },
            { "at_us": ago(1800), "kind": "provision", "nodes": 2, "detail": "jobs 9, 10" },
            { "at_us": ago(900), "kind": "abandon", "node": "aws-3", "nodes": 1, "detail": "it did not join in 15m" },
            { "at_us": ago(600), "kind": "release", "node": "aws-4", "nodes": 1,
              "detail": "it has held no job for 10m; elastic pool aws releases nodes idle for 10m" },
            { "at_us": ago(590), "kind": "gone", "node": "aws-4", "nodes": 1, "detail": "terminated: released" },
            { "at_us": ago(20), "kind": "provision", "nodes": 1,
              "detail": "<script>window.__injected = 2</script>job 12" },
        ],
    })
}

/// Makes the page's own requests for `path` answer what the server answered, changed by `patch` (a JavaScript
/// function of the answer's JSON that returns the answer to give), until the page is left.
fn patch_answers(b: &Browser, path: &str, patch: &str) {
    b.script(&format!(
        "const path = {path:?}, patch = {patch}, real = window.fetch; \
         window.fetch = async (url, options) => {{ \
           const res = await real(url, options); \
           if (String(url) !== path || !res.ok) return res; \
           const answer = patch(await res.json()); \
           return new Response(JSON.stringify(answer), {{ status: 200, headers: {{ 'content-type': 'application/json' }} }}); \
         }}; return null;"
    ));
}

#[test]
fn an_elastic_pool_shows_its_cloud_machines_spend_and_burst_history() {
    let port = free_port();
    let aws = [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")];
    let f = Ferry::start_on_port(port, NodeSpec { gpus: 0, cpus: 2, memory: "4GiB" }, &elastic_config(port), &aws);
    // The local node is full, so the second job can only burst; the cloud does not answer.
    let local = f.submit(&["--cpus", "2", "--memory", "1GiB", "--name", "local", "--", "sleep", "300"]);
    f.wait_state(local, "running");
    let burst = f.submit(&["--cpus", "2", "--memory", "1GiB", "--name", "burst", "--", "true"]);
    let elastic = |f: &Ferry| -> Value {
        let pools = f.json(&["pools", "--json"])["pools"].as_array().cloned().unwrap_or_default();
        pools.into_iter().find(|p| p["name"] == "aws").map(|p| p["elastic"].clone()).unwrap_or(Value::Null)
    };
    f.wait_for("the burst to fail", |f| {
        let e = elastic(f);
        e["events"].as_array().is_some_and(|e| e.iter().any(|e| e["kind"] == "failed"))
            && e["cooldown_reason"].is_string()
    });
    assert_eq!(f.state(burst), "queued");
    let e = elastic(&f);
    let b = Browser::start();
    let base = f.url();
    sign_in(&b, &f);

    // The server's own answer: the cloud and its catalog price, no machine, nothing spent, the pool cooling down
    // after the provider's failure, and the burst decision and its failure in the history.
    let panel = "const p = document.querySelector('section.elastic[data-pool=\"aws\"]'); return p ? p.innerText : ''";
    b.wait_for("the elastic pool's panel", WAIT, |b| b.script(panel).as_str().is_some_and(|t| t.contains("failed")));
    let text = b.script(panel).as_str().unwrap_or_default().to_string();
    assert!(text.starts_with("aws cooling down\n"), "{text}");
    assert!(text.contains("aws on-demand m5.large in us-east-1 (us-east-1a), $0.096/h each"), "{text}");
    assert!(text.contains("0 of at most 2 machines: 0 starting, 0 busy, 0 idle, 0 releasing"), "{text}");
    assert!(text.contains("$0.00 so far, $0.00/h now"), "{text}");
    let reason = e["cooldown_reason"].as_str().unwrap();
    assert!(text.contains("skipped for ") && text.contains(&format!(": {reason}")), "{text}");
    assert!(text.contains(&format!("Last provider error\n{}", e["last_error"].as_str().unwrap())), "{text}");
    assert!(text.contains("No machines: none asked for, or all given back."), "{text}");
    let kinds = "return [...document.querySelectorAll('section.elastic[data-pool=\"aws\"] .cloud-events tbody tr')]\
                   .map(r => r.cells[1].innerText)";
    assert_eq!(b.script(kinds), json!(["failed", "provision"]), "newest first");
    let marks = "return [...document.querySelectorAll('section.elastic[data-pool=\"aws\"] svg.chart g title')]\
                   .map(t => t.textContent.split(': ')[1].split(',')[0]).sort()";
    assert_eq!(b.script(marks), json!(["failed", "provision"]), "a mark per event");
    b.assert_no_errors("elastic pool", &[]);

    // Machines, spend, a zone cooling and every kind of event, added to the answer in the browser; the provider's
    // and the scheduler's words carry markup, which shows as text and runs nothing.
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let extra = elastic_extra(now_us);
    patch_answers(
        &b,
        "/api/v1/pools",
        &format!("(a) => {{ Object.assign(a.pools.find(p => p.name === 'aws').elastic, {extra}); return a; }}"),
    );
    b.wait_for("the machines", LIVE_WAIT, |b| b.script(panel).as_str().is_some_and(|t| t.contains("aws-1")));
    let text = b.script(panel).as_str().unwrap_or_default().to_string();
    assert!(text.contains("2 of at most 2 machines: 1 starting, 1 busy, 0 idle, 0 releasing"), "{text}");
    assert!(text.contains("$1.23 so far, $0.19/h now"), "{text}");
    assert!(
        text.contains("Zones cooling\nus-east-1a: skipped for 4m")
            && text.contains(": capacity: InsufficientInstanceCapacity <b>none left</b>"),
        "{text}"
    );
    assert!(text.contains(&format!("Last provider error\n{}", extra["last_error"].as_str().unwrap())), "{text}");
    let machines = b.script(
        "return [...document.querySelectorAll('section.elastic[data-pool=\"aws\"] .cloud-machines tbody tr')]\
           .map(r => r.innerText)",
    );
    let machines: Vec<&str> = machines.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(machines.len(), 2, "{machines:?}");
    assert_eq!(machines[0], "aws-1\tjoined\tus-east-1b\ti-0abc123def4567890\t1h 2m (joined after 1m 30s)\t$0.10");
    assert!(machines[1].starts_with("aws-2\trequested\t–\t–\t") && machines[1].ends_with("s\t$0.00"), "{machines:?}");
    let rows = b.script(
        "return [...document.querySelectorAll('section.elastic[data-pool=\"aws\"] .cloud-events tbody tr')]\
           .map(r => [r.cells[1].innerText, r.cells[2].innerText, r.cells[3].innerText, r.cells[4].innerText])",
    );
    assert_eq!(rows[0], json!(["provision", "1", "–", "<script>window.__injected = 2</script>job 12"]));
    let kinds: Vec<&str> = rows.as_array().unwrap().iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(kinds, ["provision", "gone", "release", "abandon", "provision", "failed", "provision"]);
    assert_eq!(rows[4], json!(["provision", "2", "–", "jobs 9, 10"]));
    assert_eq!(rows[1][2], "aws-4");
    // The chart: a mark per event, its shape by what the event did to the machines, at how many it concerned.
    let shapes = b.script(
        "const svg = document.querySelector('section.elastic[data-pool=\"aws\"] svg.chart'); \
         return [...svg.querySelectorAll('g > circle, g > path')].filter(m => m.querySelector('title'))\
           .map(m => m.querySelector('title').textContent.split(': ')[1].split(',')[0] + ' ' + m.tagName)",
    );
    let mut shapes: Vec<&str> = shapes.as_array().unwrap().iter().filter_map(Value::as_str).collect();
    shapes.sort();
    let expected =
        "abandon path, failed path, gone path, provision circle, provision circle, provision circle, release path";
    assert_eq!(shapes.join(", "), expected, "crosses, triangles and circles");
    let legend = b.script(
        "return [...document.querySelectorAll('section.elastic[data-pool=\"aws\"] .legend span')].map(s => s.textContent)",
    );
    assert_eq!(
        legend,
        json!(["machines asked for (provision)", "given back or gone (release, gone)", "not had (failed, abandon)"])
    );
    assert_eq!(b.script("return window.__injected === undefined"), true, "the markup ran");
    assert_eq!(b.script("return document.querySelector('#elastic script, #elastic img, #elastic b') === null"), true);
    b.assert_no_errors("elastic pool with machines", &[]);
    b.screenshot("elastic-pool");

    // A job that burst says which pools were full for it, as `ferry show` does.
    b.goto(&format!("{base}/jobs/{local}"));
    b.wait_text("the job's timeline", "chosen of");
    patch_answers(
        &b,
        &format!("/api/v1/jobs/{local}"),
        "(j) => { const placed = j.timeline.find(e => e.reason && e.reason.kind === 'placed'); \
           Object.assign(placed.reason, { burst_waited_s: 300, burst_past: ['local', 'gpu'] }); return j; }",
    );
    let placed = "return document.querySelector('#job-timeline .reason[data-kind=placed]').textContent";
    b.wait_for("the burst's reason", LIVE_WAIT, |b| {
        b.script(placed)
            .as_str()
            .is_some_and(|t| t.contains("burst after waiting 5m 0s: local, gpu were fully allocated for it"))
    });
    b.assert_no_errors("a burst job", &[]);
}
