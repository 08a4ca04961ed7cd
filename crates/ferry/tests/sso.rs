//! Single sign-on end to end, against a real OpenID Connect provider (panva's oidc-provider, installed and started by
//! `scripts/oidc/`; see its README for the pages and forms the "browser" here goes through): the dashboard's
//! authorisation-code flow with PKCE, `ferry login`'s device flow, group rules that grant team memberships, sessions
//! checked again with the provider (a changed group, a user the provider disabled), a user disabled in Ferry, an
//! existing account that single sign-on must not take over, and a session that expires.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, stderr, Ferry, NodeSpec};
use reqwest::blocking::{Client, Response};
use reqwest::redirect::Policy;
use serde_json::{json, Value};

const SECRET: &str = "sso-test-secret";

/// The provider, started from the repository's scripts; stopped when dropped.
struct Provider {
    run_dir: tempfile::TempDir,
    issuer: String,
    accounts: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

impl Provider {
    /// Installs (when missing) and starts the provider, for Ferry servers at `redirects`.
    fn start(redirects: &[String], accounts: &Value) -> Provider {
        let run_dir = tempfile::tempdir().unwrap();
        let install = Command::new(repo().join("scripts/oidc/install.sh")).output().unwrap();
        assert!(install.status.success(), "scripts/oidc/install.sh failed: {}", stderr(&install));
        let accounts_path = run_dir.path().join("accounts.json");
        std::fs::write(&accounts_path, accounts.to_string()).unwrap();
        let out = Command::new(repo().join("scripts/oidc/start.sh"))
            .arg(run_dir.path().join("run"))
            .env("OIDC_CLIENT_ID", "ferry")
            .env("OIDC_CLIENT_SECRET", SECRET)
            .env("OIDC_REDIRECT_URIS", redirects.join(","))
            .env("OIDC_ACCOUNTS", &accounts_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "scripts/oidc/start.sh failed: {}", stderr(&out));
        let issuer = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim().to_string();
        Provider { run_dir, issuer, accounts: accounts_path }
    }

    /// Rewrites the accounts file (atomically: the provider reads it on every lookup).
    fn set_accounts(&self, accounts: &Value) {
        let staged = self.accounts.with_extension("tmp");
        std::fs::write(&staged, accounts.to_string()).unwrap();
        std::fs::rename(staged, &self.accounts).unwrap();
    }

    /// Resolves a `Location` the provider sent (sometimes relative) against the issuer.
    fn at(&self, location: &str) -> String {
        if location.starts_with("http") {
            location.to_string()
        } else {
            format!("{}{location}", self.issuer)
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/oidc/stop.sh")).arg(self.run_dir.path().join("run")).output();
    }
}

fn accounts(alice_groups: &[&str], alice_disabled: bool) -> Value {
    json!([
        {"sub": "alice", "password": "pw", "groups": alice_groups, "disabled": alice_disabled},
        {"sub": "bob", "password": "pw", "groups": ["ml-vision"]},
        {"sub": "carol", "password": "pw", "groups": []},
        {"sub": "dave", "password": "pw", "groups": ["ml-vision"]},
    ])
}

/// A browser: keeps cookies, follows no redirect by itself.
fn browser() -> Client {
    Client::builder().cookie_store(true).redirect(Policy::none()).timeout(Duration::from_secs(30)).build().unwrap()
}

fn location(response: &Response) -> String {
    assert!(response.status().is_redirection(), "expected a redirect, got {}", response.status());
    response.headers()["location"].to_str().unwrap().to_string()
}

/// Signs in at the provider's login form: from the provider's first redirect to the redirect back to Ferry, whose
/// address is returned (not followed).
fn provider_login(b: &Client, p: &Provider, first: &str, login: &str) -> String {
    let interaction = location(&b.get(p.at(first)).send().unwrap());
    let form = b.get(p.at(&interaction)).send().unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().unwrap().contains("name=\"password\""));
    let resume = b.post(p.at(&interaction)).form(&[("login", login), ("password", "pw")]).send().unwrap();
    let resume = location(&resume);
    location(&b.get(p.at(&resume)).send().unwrap())
}

/// The dashboard's whole sign-in for `login`: the callback's answer, and the browser (with Ferry's cookies).
fn dashboard_sign_in(f: &Ferry, p: &Provider, login: &str) -> (Client, Response) {
    let b = browser();
    let start = b.get(format!("{}/auth/login", f.url())).send().unwrap();
    let to_provider = location(&start);
    assert!(to_provider.starts_with(&format!("{}/auth?", p.issuer)), "{to_provider}");
    for part in ["code_challenge=", "code_challenge_method=S256", "state=", "nonce=", "client_id=ferry"] {
        assert!(to_provider.contains(part), "the authorisation request lacks {part}: {to_provider}");
    }
    let callback = provider_login(&b, p, &to_provider, login);
    assert!(callback.starts_with(&format!("{}/auth/callback?", f.url())), "{callback}");
    let answer = b.get(&callback).send().unwrap();
    (b, answer)
}

fn whoami(f: &Ferry, b: &Client) -> (u16, Value) {
    let response = b.get(format!("{}/api/v1/whoami", f.url())).send().unwrap();
    (response.status().as_u16(), response.json().unwrap_or(Value::Null))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn config(issuer: &str, extra: &str) -> String {
    format!(
        "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"ferry\"\nclient_secret_env = \"FERRY_TEST_OIDC_SECRET\"\n\
         recheck = \"2s\"\n{extra}"
    )
}

#[test]
fn single_sign_on_from_the_dashboard_and_the_cli() {
    let (port, short_port) = (free_port(), free_port());
    let redirects = [port, short_port].map(|p| format!("http://127.0.0.1:{p}/auth/callback"));
    let p = Provider::start(&redirects, &accounts(&["ml-vision", "staff"], false));
    let env = [("FERRY_TEST_OIDC_SECRET", SECRET)];
    let f = Ferry::start_on_port(port, NodeSpec::default(), &config(&p.issuer, ""), &env);
    f.ok(&["team", "add", "vision"]);
    f.ok(&["team", "group", "vision", "ml-vision", "--role", "member"]);
    f.ok(&["user", "add", "carol"]);
    assert!(f.ok(&["team", "groups"]).contains("ml-vision"));

    // The sign-in page offers single sign-on.
    let page = browser().get(format!("{}/login", f.url())).send().unwrap().text().unwrap();
    assert!(page.contains("href=\"/auth/login\""), "{page}");

    // A callback that another browser carries (login CSRF) is refused, and a made-up one too.
    let b = browser();
    let to_provider = location(&b.get(format!("{}/auth/login", f.url())).send().unwrap());
    let callback = provider_login(&b, &p, &to_provider, "alice");
    let stranger = browser().get(&callback).send().unwrap();
    assert_eq!(stranger.status(), 400);
    assert!(stranger.text().unwrap().contains("not started by this browser"));
    let forged = b.get(format!("{}/auth/callback?code=x&state=y", f.url())).send().unwrap();
    assert_eq!(forged.status(), 400);
    // The browser that started it ends it: a session, and a page of this site that moves on to the dashboard.
    let signed = b.get(&callback).send().unwrap();
    let status = signed.status();
    let cookies: Vec<String> =
        signed.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let page = signed.text().unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(
        cookies.iter().any(|c| c.starts_with("ferry_session=ferry_session_")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Strict")),
        "{cookies:?}"
    );
    let (status, me) = whoami(&f, &b);
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["name"], "alice");
    assert_eq!(me["teams"], json!({"vision": "member"}), "the group ml-vision made alice a member of vision");
    assert_eq!(b.get(format!("{}/jobs", f.url())).send().unwrap().status(), 200, "the dashboard opens");
    // The provider's refresh token is kept sealed: the database alone does not carry it.
    let stored = Command::new("python3")
        .args(["-c", "import sqlite3,sys; print([r[0] for r in sqlite3.connect(sys.argv[1]).execute('SELECT refresh_token FROM sessions WHERE via = \"oidc\"')])"])
        .arg(f.home().join("ferry.db"))
        .output()
        .unwrap();
    let stored = String::from_utf8(stored.stdout).unwrap();
    assert!(stored.starts_with("['v1:") && !stored.contains("None"), "{stored}");
    // The code is spent: replaying the callback signs in no one.
    let replay = b.get(&callback).send().unwrap();
    assert_eq!(replay.status(), 400);
    assert!(replay.text().unwrap().contains("sign in again"));

    // Refresh: the provider's groups change, and at the next check the membership they gave goes.
    p.set_accounts(&accounts(&["staff"], false));
    wait_until("alice's membership to follow the provider's groups", || whoami(&f, &b).1["teams"] == json!({}));
    // A membership the admin gives by hand stays whatever the groups say.
    f.ok(&["team", "member", "vision", "alice", "--role", "viewer"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(whoami(&f, &b).1["teams"], json!({"vision": "viewer"}));
    // The provider disables alice: her session ends at the next check.
    p.set_accounts(&accounts(&["staff"], true));
    let mut refused = Value::Null;
    wait_until("alice's session to end", || {
        let (status, body) = whoami(&f, &b);
        refused = body;
        status == 401
    });
    assert!(refused["message"].as_str().unwrap().contains("no longer vouches"), "{refused}");
    assert_eq!(b.get(format!("{}/jobs", f.url())).send().unwrap().status(), 303, "back to the sign-in page");

    // Disabled in Ferry: bob's session stops at once.
    let (bob, _) = dashboard_sign_in(&f, &p, "bob");
    assert_eq!(whoami(&f, &bob).0, 200);
    f.ok(&["user", "disable", "bob"]);
    assert_eq!(whoami(&f, &bob).0, 401);
    let (_, again) = dashboard_sign_in(&f, &p, "bob");
    assert_eq!(again.status(), 401);
    assert!(again.text().unwrap().contains("is disabled"));

    // carol was made by hand: single sign-on does not take her account over by name.
    let (_, taken) = dashboard_sign_in(&f, &p, "carol");
    assert_eq!(taken.status(), 401);
    assert!(taken.text().unwrap().contains("has never signed in with single sign-on"));

    // The user says no at the provider.
    let b = browser();
    let to_provider = location(&b.get(format!("{}/auth/login", f.url())).send().unwrap());
    let interaction = location(&b.get(p.at(&to_provider)).send().unwrap());
    let aborted = location(&b.post(p.at(&format!("{interaction}/abort"))).send().unwrap());
    let back = location(&b.get(p.at(&aborted)).send().unwrap());
    let denied = b.get(&back).send().unwrap();
    assert_eq!(denied.status(), 401);
    assert!(denied.text().unwrap().contains("access_denied"));

    // The CLI: `ferry login` shows a code, dave confirms it at the provider, and later commands are dave's.
    let credentials = f.root.path().join("credentials.json");
    let mut login = cli_login(&f, &credentials);
    let code = read_code(&login);
    confirm_device(&p, &code, "dave");
    let status = wait_child(&mut login.child);
    std::thread::sleep(Duration::from_millis(200));
    assert!(status.success(), "ferry login failed: {:?}", login.printed());
    assert!(
        login.printed().iter().any(|l| l.contains("Signed in to") && l.contains("as dave")),
        "{:?}",
        login.printed()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&credentials).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the credentials file is the user's alone");
    let me = as_cli(&f, &credentials, &["whoami", "--json"]);
    assert!(me.status.success(), "{}", stderr(&me));
    let me: Value = serde_json::from_slice(&me.stdout).unwrap();
    assert_eq!((me["name"].as_str(), me["teams"].clone()), (Some("dave"), json!({"vision": "member"})));
    let saved: Value = serde_json::from_slice(&std::fs::read(&credentials).unwrap()).unwrap();
    let session = saved[f.url()]["token"].as_str().unwrap().to_string();
    let out = as_cli(&f, &credentials, &["logout"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = http().get(format!("{}/api/v1/whoami", f.url())).bearer_auth(&session).send().unwrap();
    assert_eq!(after.status(), 401, "the session ended at the server too");

    // Every sign-in is in the audit log, refused ones with their reason.
    let admin = std::fs::read_to_string(f.home().join("admin.token")).unwrap();
    let log: Value = http()
        .get(format!("{}/api/v1/audit?action=sign-in&limit=100", f.url()))
        .bearer_auth(admin.trim())
        .send()
        .unwrap()
        .json()
        .unwrap();
    let entries = log["entries"].as_array().unwrap();
    let ok = |who: &str| entries.iter().any(|e| e["actor"] == who && e["result"] == "ok");
    assert!(ok("alice") && ok("bob") && ok("dave"), "{log}");
    assert!(entries.iter().any(|e| e["result"] == "denied"
        && e["detail"].as_str().unwrap_or("").contains("has never signed in with single sign-on")));

    // Sessions end: a server whose sign-ins last five seconds.
    let short =
        Ferry::start_on_port(short_port, NodeSpec::default(), &config(&p.issuer, "session_lifetime = \"5s\""), &env);
    let (b, signed) = dashboard_sign_in(&short, &p, "dave");
    let cookies: Vec<String> =
        signed.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).collect();
    let status = signed.status();
    assert_eq!(status, 200, "{cookies:?} {}", signed.text().unwrap());
    assert_eq!(whoami(&short, &b).0, 200, "{cookies:?}");
    // The browser drops the cookie at its Max-Age; the server refuses the session whoever still presents it.
    let session =
        cookies.iter().find_map(|c| c.split(';').next().filter(|kv| kv.starts_with("ferry_session="))).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let late = http().get(format!("{}/api/v1/whoami", short.url())).header("cookie", session).send().unwrap();
    assert_eq!(late.status(), 401);
    let expired: Value = late.json().unwrap();
    assert!(expired["message"].as_str().unwrap().contains("sign in again"), "{expired}");
}

#[test]
fn a_server_without_single_sign_on_says_so() {
    let f = Ferry::start(NodeSpec::default());
    let page = browser().get(format!("{}/login", f.url())).send().unwrap().text().unwrap();
    assert!(!page.contains("/auth/login"), "no single sign-on link without a provider");
    let start = browser().get(format!("{}/auth/login", f.url())).send().unwrap();
    assert_eq!(start.status(), 404);
    let out = f.cli(&["login"]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert!(stderr(&out).contains("single sign-on is not configured"), "{}", stderr(&out));
}

#[test]
fn the_single_sign_on_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        ("[oidc]\nissuer = \"id.example.org\"\nclient_id = \"x\"\n", "not an http(s) address"),
        ("[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"\"\n", "`client_id`"),
        ("[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"x\"\nrecheck = \"0s\"\n", "too short"),
        (
            "[oidc]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"x\"\nclient_secret_env = \"FERRY_NO_SUCH_VAR\"\n",
            "FERRY_NO_SUCH_VAR",
        ),
    ] {
        let config = dir.path().join("ferry.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(common::ferry_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()])
            .env("FERRY_HOME", dir.path().join("home"))
            .env_remove("FERRY_NO_SUCH_VAR")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(78), "{text}: {}", stderr(&out));
        assert!(stderr(&out).contains(expected), "{text}: {}", stderr(&out));
    }
}

fn http() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// The CLI as a user on their own machine: no data directory of the server's, sessions in `credentials`.
fn as_cli(f: &Ferry, credentials: &Path, args: &[&str]) -> std::process::Output {
    Command::new(common::ferry_bin())
        .args(args)
        .env("FERRY_SERVER", f.url())
        .env("FERRY_HOME", f.root.path().join("elsewhere"))
        .env("FERRY_CREDENTIALS", credentials)
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap()
}

/// `ferry login` running, and the lines it printed so far (read in the background, so it never blocks on a pipe).
struct Login {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Login {
    fn printed(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

fn cli_login(f: &Ferry, credentials: &Path) -> Login {
    let mut child = Command::new(common::ferry_bin())
        .args(["login", "--timeout", "60s"])
        .env("FERRY_SERVER", f.url())
        .env("FERRY_HOME", f.root.path().join("elsewhere"))
        .env("FERRY_CREDENTIALS", credentials)
        .env_remove("FERRY_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Login { child, lines }
}

/// The code `ferry login` shows for the user to confirm.
fn read_code(login: &Login) -> String {
    let mut code = None;
    wait_until("ferry login to show a code", || {
        code = login
            .printed()
            .iter()
            .find_map(|l| l.split("confirm the code ").nth(1).map(|c| c.trim_end_matches(':').to_string()));
        code.is_some()
    });
    code.unwrap()
}

fn wait_child(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "ferry login did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Confirms a device code at the provider as `login`, as a person would in a browser.
fn confirm_device(p: &Provider, code: &str, login: &str) {
    let b = browser();
    let input = b.get(format!("{}/device", p.issuer)).send().unwrap().text().unwrap();
    let xsrf = hidden(&input, "xsrf");
    let confirmed = b
        .post(format!("{}/device", p.issuer))
        .form(&[("xsrf", xsrf.as_str()), ("user_code", code), ("confirm", "yes")])
        .send()
        .unwrap();
    let interaction = location(&confirmed);
    let form = b.get(p.at(&interaction)).send().unwrap();
    assert_eq!(form.status(), 200);
    let resume = b.post(p.at(&interaction)).form(&[("login", login), ("password", "pw")]).send().unwrap();
    let done = b.get(p.at(&location(&resume))).send().unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().unwrap().contains("Sign-in success"));
}

/// The value of the hidden form field `name` in a page.
fn hidden(page: &str, name: &str) -> String {
    let at = page.find(&format!("name=\"{name}\"")).unwrap_or_else(|| panic!("no field {name} in {page}"));
    let tag_start = page[..at].rfind('<').unwrap();
    let tag_end = at + page[at..].find('>').unwrap();
    let tag = &page[tag_start..tag_end];
    let value = tag.split("value=\"").nth(1).unwrap();
    value[..value.find('"').unwrap()].to_string()
}
