//! `ferry secret`: values jobs read from their environment, stored sealed by the server and never shown again.
//!
//! A value is read from standard input (never from the command line, where `ps` and shell history would keep it):
//! typed at a terminal with echo off, or piped (`... | ferry secret set NAME`, or `--from-file`).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_api::secrets::{SecretInfo, SecretScope, SECRET_BYTES_MAX};

use crate::exit::{self, CliError};
use crate::{format, Global};

#[derive(Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    command: SecretCommand,
}

/// Whose secret: yours by default, or a project's.
#[derive(Args)]
struct Owner {
    /// A project's secret, which every job of the project may use (team admins): `--project NAME` in your default
    /// team, or `--project TEAM/NAME`.
    #[arg(long)]
    project: Option<String>,
    /// The project's team, when it is not your default one.
    #[arg(long, requires = "project")]
    team: Option<String>,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Store a secret, read from standard input (typed without echo at a terminal, or piped); a job reads it with
    /// `ferry run --secret NAME`.
    Set {
        name: String,
        #[command(flatten)]
        owner: Owner,
        /// Read the value from this file instead (its whole content, a trailing line break removed).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// List the secrets you may use: yours and your teams' projects' (names only; values are never shown).
    #[command(alias = "ls")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret. Queued jobs that need it fail when they would start.
    #[command(alias = "rm")]
    Remove {
        name: String,
        #[command(flatten)]
        owner: Owner,
    },
}

pub async fn secret(g: &Global, args: SecretArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    match args.command {
        SecretCommand::Set { name, owner, from_file } => {
            if let Some(problem) = ferry_api::secrets::check_name(&name) {
                return Err(CliError::new(exit::INVALID, problem));
            }
            let project = project_of(&client, &owner).await?;
            let value = read_value(&name, from_file)?;
            let project_ref = project.as_ref().map(|(t, p)| (t.as_str(), p.as_str()));
            let set = client.set_secret(project_ref, &name, value).await?;
            let verb = if set.created { "stored" } else { "replaced" };
            eprintln!("secret {name} {verb} for {}; jobs read it with `ferry run --secret {name}`", whose(&set.secret));
        }
        SecretCommand::List { json } => {
            let list = client.secrets().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .secrets
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        whose(s),
                        format::timestamp(s.updated_at_us),
                        s.updated_by.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            print!("{}", format::table(&["NAME", "FOR", "UPDATED (UTC)", "BY"], &rows));
        }
        SecretCommand::Remove { name, owner } => {
            let project = project_of(&client, &owner).await?;
            let project_ref = project.as_ref().map(|(t, p)| (t.as_str(), p.as_str()));
            let removed = client.remove_secret(project_ref, &name).await?;
            eprintln!("secret {name} of {} removed", whose(&removed));
        }
    }
    Ok(0)
}

fn whose(s: &SecretInfo) -> String {
    match s.scope {
        SecretScope::User => format!("user {}", s.user.as_deref().unwrap_or("?")),
        SecretScope::Project => {
            format!("project {}/{}", s.team.as_deref().unwrap_or("?"), s.project.as_deref().unwrap_or("?"))
        }
    }
}

/// The team and project a `--project` names: `TEAM/NAME`, `--team TEAM`, or the caller's default team.
async fn project_of(client: &ferry_client::Client, owner: &Owner) -> Result<Option<(String, String)>, CliError> {
    let Some(project) = &owner.project else { return Ok(None) };
    if let Some((team, name)) = project.split_once('/') {
        return Ok(Some((team.to_string(), name.to_string())));
    }
    if let Some(team) = &owner.team {
        return Ok(Some((team.clone(), project.clone())));
    }
    let me = client.whoami().await?;
    match me.user.default_team {
        Some(team) => Ok(Some((team, project.clone()))),
        None => Err(CliError::new(
            exit::INVALID,
            format!("you have no default team: name the project's team with --team TEAM or --project TEAM/{project}"),
        )),
    }
}

/// The value, from the file, a terminal (echo off) or a pipe; one trailing line break removed.
fn read_value(name: &str, from_file: Option<PathBuf>) -> Result<String, CliError> {
    let invalid = |m: String| CliError::new(exit::INVALID, m);
    let mut bytes = Vec::new();
    match from_file {
        Some(file) => {
            let meta = std::fs::metadata(&file).map_err(|e| invalid(format!("--from-file {}: {e}", file.display())))?;
            if meta.len() > SECRET_BYTES_MAX as u64 {
                return Err(invalid(format!(
                    "--from-file {} is {} bytes; a secret holds at most {} KiB",
                    file.display(),
                    meta.len(),
                    SECRET_BYTES_MAX / 1024
                )));
            }
            bytes = std::fs::read(&file).map_err(|e| invalid(format!("--from-file {}: {e}", file.display())))?;
        }
        None if std::io::stdin().is_terminal() => {
            eprint!("value of {name} (not shown): ");
            let line = read_hidden_line().map_err(|e| invalid(format!("cannot read the value: {e}")))?;
            eprintln!();
            bytes = line.into_bytes();
        }
        None => {
            std::io::stdin()
                .take(SECRET_BYTES_MAX as u64 + 2)
                .read_to_end(&mut bytes)
                .map_err(|e| invalid(format!("cannot read the value from standard input: {e}")))?;
        }
    }
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() > SECRET_BYTES_MAX {
        return Err(invalid(format!("the value is over {} KiB, the most a secret holds", SECRET_BYTES_MAX / 1024)));
    }
    if bytes.is_empty() {
        return Err(invalid(format!(
            "the value of {name} is empty; type it, or pipe it in: `... | ferry secret set {name}`"
        )));
    }
    String::from_utf8(bytes)
        .map_err(|_| invalid("the value is not UTF-8 text; store binary credentials base64-encoded".into()))
}

/// One line from the terminal with echo off, restored afterwards whatever happens.
fn read_hidden_line() -> std::io::Result<String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    quiet.local_flags.insert(LocalFlags::ECHONL);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    read.map(|_| line)
}
