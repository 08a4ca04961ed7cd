//! `ferry login` and `ferry logout`: single sign-on from the command line, and where the CLI keeps what it got.
//!
//! `ferry login` asks the server to start a device sign-in with the organisation's provider, shows the code for the
//! user to confirm in a browser (on any device), and polls until the server hands out a session. The session goes to
//! `credentials.json` in the user's configuration directory (`~/.config/ferry/`, mode 0600), by server address;
//! later commands use it when no `--token` or `FERRY_TOKEN` is given. It lasts as long as the server's
//! `session_lifetime` and only while the provider still vouches for the user.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ferry_api::tokens::DeviceLoginState;
use serde::{Deserialize, Serialize};

use crate::exit::{self, CliError};
use crate::{format, Global};

/// A session the CLI keeps for one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub token: String,
    pub user: String,
    pub expires_at_us: i64,
}

/// The file the CLI keeps sessions in: `FERRY_CREDENTIALS`, or `ferry/credentials.json` in the configuration
/// directory.
pub fn credentials_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FERRY_CREDENTIALS") {
        return Some(PathBuf::from(path));
    }
    dirs::config_dir().map(|d| d.join("ferry").join("credentials.json"))
}

fn key(server: &str) -> String {
    server.trim_end_matches('/').to_string()
}

fn read_all() -> BTreeMap<String, Credential> {
    credentials_path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The session kept for `server`, if any (expired or not: the caller tells the user).
pub fn credential(server: &str) -> Option<Credential> {
    read_all().remove(&key(server))
}

/// Writes the sessions file: only its owner may read it, and it is replaced whole so no reader sees half of it.
fn write_all(all: &BTreeMap<String, Credential>) -> Result<PathBuf, CliError> {
    let path = credentials_path()
        .ok_or_else(|| CliError::new(exit::CONFIG, "cannot find a configuration directory; set FERRY_CREDENTIALS"))?;
    let fail = |e: std::io::Error| CliError::new(exit::CONFIG, format!("cannot write {}: {e}", path.display()));
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(fail)?;
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file().set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    }
    std::io::Write::write_all(&mut file, &serde_json::to_vec_pretty(all).expect("credentials serialize"))
        .map_err(fail)?;
    file.persist(&path).map_err(|e| fail(e.error))?;
    Ok(path)
}

#[derive(Args)]
pub struct LoginArgs {
    /// Give up waiting for the confirmation after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
pub struct LogoutArgs {}

pub async fn login(g: &Global, args: LoginArgs) -> Result<i32, CliError> {
    let server = g.server_url();
    let client = ferry_client::Client::new(&server, None);
    let started = client.start_device_login().await?;
    let address = started.verification_uri_complete.as_deref().unwrap_or(&started.verification_uri);
    eprintln!("To sign in to {server}, open this address in a browser and confirm the code {}:", started.user_code);
    eprintln!();
    eprintln!("    {address}");
    eprintln!();
    eprintln!("Waiting for the confirmation (Ctrl-C to give up)...");
    let deadline = tokio::time::Instant::now() + args.timeout.min(Duration::from_secs(started.expires_in_s.max(1)));
    let interval = Duration::from_secs(started.interval_s.max(1));
    loop {
        match client.poll_device_login(&started.handle).await? {
            DeviceLoginState::Pending => {}
            DeviceLoginState::Done { token, user, expires_at_us } => {
                let mut all = read_all();
                all.insert(key(&server), Credential { token, user: user.clone(), expires_at_us });
                let path = write_all(&all)?;
                eprintln!(
                    "Signed in to {server} as {user} until {} (kept in {}).",
                    format::timestamp(expires_at_us),
                    path.display()
                );
                return Ok(0);
            }
            DeviceLoginState::Failed { message } => {
                return Err(CliError::new(exit::AUTH, format!("the sign-in failed: {message}")));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::new(exit::AUTH, "the code was not confirmed in time; run `ferry login` again"));
        }
        tokio::time::sleep(interval).await;
    }
}

pub async fn logout(g: &Global, _args: LogoutArgs) -> Result<i32, CliError> {
    let server = g.server_url();
    let mut all = read_all();
    let Some(found) = all.remove(&key(&server)) else {
        eprintln!("not signed in to {server}");
        return Ok(0);
    };
    // Ending the session at the server may fail (it expired, the server is away): the local copy goes regardless.
    if let Err(e) = ferry_client::Client::new(&server, Some(found.token)).logout().await {
        eprintln!("note: the server did not end the session ({e}); it ends at its expiry");
    }
    write_all(&all)?;
    eprintln!("signed out of {server}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_keyed_without_a_trailing_slash() {
        assert_eq!(key("http://127.0.0.1:7750/"), key("http://127.0.0.1:7750"));
    }
}
