//! Identities from the command line: `ferry token`, `ferry user`, `ferry team`, `ferry whoami`, and `ferry admin
//! restore`, which works on the server's data directory instead of the API.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use ferry_api::tokens::{
    CreateProject, CreateTeam, CreateToken, CreateUser, Quota, QuotaAmount, SetGroupRule, SetMember, TeamRole,
    TokenInfo, TokenKind, TokenScope,
};

use crate::exit::{self, CliError};
use crate::{format, Global};

fn scope(text: &str) -> Result<TokenScope, String> {
    TokenScope::parse(text).ok_or_else(|| format!("`{text}` is not a scope; use read, submit or admin"))
}

fn role(text: &str) -> Result<TeamRole, String> {
    TeamRole::parse(text).ok_or_else(|| format!("`{text}` is not a team role; use viewer, member or admin"))
}

fn cpus(text: &str) -> Result<u64, String> {
    ferry_units::parse_cpus(text).map_err(|e| e.0)
}

fn memory(text: &str) -> Result<u64, String> {
    ferry_units::parse_memory(text).map_err(|e| e.0)
}

/// A quota in words: `8 GPUs, 64 CPUs, 512GiB (+4 GPUs borrowed at most)`; `-` for none.
fn quota_text(quota: Option<&Quota>) -> String {
    let Some(quota) = quota else { return "-".to_string() };
    let amount = |a: &QuotaAmount| {
        let mut parts = Vec::new();
        if let Some(g) = a.gpus {
            parts.push(format!("{g} GPUs"));
        }
        if let Some(c) = a.cpu_millis {
            parts.push(format!("{} CPUs", format::cpus(c)));
        }
        if let Some(m) = a.memory_bytes {
            parts.push(format::bytes(m));
        }
        if parts.is_empty() {
            "no limit".to_string()
        } else {
            parts.join(" ")
        }
    };
    match &quota.borrow_limit {
        Some(b) => format!("{} (+{} borrowed at most)", amount(&quota.quota), amount(b)),
        None => amount(&quota.quota),
    }
}

fn expiry(text: &str) -> Result<u64, String> {
    ferry_units::parse_duration_s(text).map_err(|e| e.0)
}

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("wire types serialize"));
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it: the only time it is shown. A personal token by default (`--scope`, `--expires`);
    /// `--agent --node NAME` makes a join token for `ferry agent` on that node.
    Create {
        /// What the token is for, such as the laptop, CI job or machine it is handed to.
        #[arg(long)]
        name: String,
        /// What a personal token may do: read, submit (the default) or admin; never more than the token in use.
        #[arg(long, value_parser = scope)]
        scope: Option<TokenScope>,
        /// How long until it expires, such as 30d or 12h; without it, the token lasts until revoked.
        #[arg(long, value_parser = expiry)]
        expires: Option<u64>,
        /// Whose token (installation admins only): a user or service account.
        #[arg(long = "for")]
        user: Option<String>,
        /// A join token for agents: it may only register the node it is bound to and run that node's work.
        #[arg(long, requires = "node")]
        agent: bool,
        /// The node name a join token is bound to, or a pattern with `*` such as `gpu-*`.
        #[arg(long, requires = "agent")]
        node: Option<String>,
        /// How many nodes a join token with a pattern may register (64 by default).
        #[arg(long, requires = "node")]
        max_nodes: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their values): yours, or every token for an installation admin.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it is refused from now on, and an agent using it stops.
    Revoke { id: String },
}

pub async fn token(g: &Global, args: TokenArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    match args.command {
        TokenCommand::Create { name, scope, expires, user, agent, node, max_nodes, json } => {
            let spec = CreateToken {
                name,
                kind: if agent { TokenKind::Agent } else { TokenKind::User },
                scope,
                user,
                expires_in_s: expires,
                node,
                max_nodes,
            };
            let created = client.create_token(&spec).await?;
            if json {
                print_json(&created);
                return Ok(0);
            }
            // A join token of a server with its own certificate authority is printed with the authority's
            // fingerprint (`TOKEN#sha256:...`), the one string an agent needs.
            let ca = created.ca_sha256.as_deref().map(str::parse::<ferry_api::tls::CaFingerprint>).transpose();
            let ca =
                ca.map_err(|e| CliError::new(exit::INTERNAL, format!("the server sent a bad fingerprint: {e}")))?;
            println!("{}", ferry_api::tls::JoinString { token: created.token.clone(), ca });
            let info = &created.info;
            let what = match (&info.node, &info.user, info.scope) {
                (Some(node), _, _) => format!("join token for node {node}"),
                (None, Some(user), Some(scope)) => format!("{} token of {user}", scope.name()),
                _ => "token".to_string(),
            };
            let expires = info.expires_at_us.map(|at| format!(", expires {} UTC", format::timestamp(at)));
            eprintln!(
                "token {} ({}, {what}{}) created; it is shown only now{}",
                info.id,
                info.name,
                expires.unwrap_or_default(),
                match (agent, ca.is_some()) {
                    (true, true) =>
                        ": start the agent with `ferry agent --server https://HOST:PORT --join-token JOIN`, \
                                     JOIN being the line above, which also pins the server's certificate authority",
                    (true, false) => ": start the agent with `ferry agent --server URL --join-token TOKEN`",
                    _ => "",
                }
            );
        }
        TokenCommand::List { json } => {
            let list = client.tokens().await?;
            if json {
                print_json(&list);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list.tokens.iter().map(token_row).collect();
            let header = ["ID", "NAME", "FOR", "SCOPE", "CREATED (UTC)", "EXPIRES (UTC)", "REVOKED (UTC)"];
            print!("{}", format::table(&header, &rows));
        }
        TokenCommand::Revoke { id } => {
            let revoked = client.revoke_token(&id).await?;
            eprintln!("token {} ({}) revoked", revoked.id, revoked.name);
        }
    }
    Ok(0)
}

fn token_row(t: &TokenInfo) -> Vec<String> {
    let time = |at: Option<i64>| at.map(format::timestamp).unwrap_or_else(|| "-".into());
    let whom = match (&t.node, &t.user) {
        (Some(node), _) => format!("node {node}"),
        (None, Some(user)) => user.clone(),
        _ => "-".into(),
    };
    vec![
        t.id.to_string(),
        t.name.clone(),
        whom,
        t.scope.map_or_else(|| "agent".to_string(), |s| s.name().to_string()),
        format::timestamp(t.created_at_us),
        time(t.expires_at_us),
        time(t.revoked_at_us),
    ]
}

#[derive(Args)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCommand,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user or service account (installation admins).
    Add {
        name: String,
        /// A service account, for automation: it works with tokens only.
        #[arg(long)]
        service: bool,
        /// An installation admin.
        #[arg(long)]
        admin: bool,
        /// Teams to join, as TEAM or TEAM:ROLE (viewer, member, admin); member by default.
        #[arg(long = "team")]
        teams: Vec<String>,
        /// The team the user's jobs go to when they name none.
        #[arg(long)]
        default_team: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List users: all of them for an installation admin, yourself otherwise.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Disable a user: every token of theirs is refused from now on; their jobs keep running.
    Disable { name: String },
    /// Enable a disabled user again.
    Enable { name: String },
}

pub async fn user(g: &Global, args: UserArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    match args.command {
        UserCommand::Add { name, service, admin, teams, default_team, json } => {
            let mut joined = BTreeMap::new();
            for text in teams {
                let (team, role_text) = text.split_once(':').unwrap_or((&text, "member"));
                joined.insert(team.to_string(), role(role_text).map_err(|e| CliError::new(exit::INVALID, e))?);
            }
            let user = client.create_user(&CreateUser { name, service, admin, teams: joined, default_team }).await?;
            if json {
                print_json(&user);
            } else {
                let kind = if user.service { "service account" } else { "user" };
                eprintln!(
                    "{kind} {} added; give it a token with `ferry token create --for {} --name NAME`",
                    user.name, user.name
                );
            }
        }
        UserCommand::List { json } => {
            let list = client.users().await?;
            if json {
                print_json(&list);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .users
                .iter()
                .map(|u| {
                    let teams: Vec<String> = u.teams.iter().map(|(t, r)| format!("{t}:{}", r.name())).collect();
                    let kind = match (u.service, u.admin) {
                        (true, _) => "service",
                        (false, true) => "admin",
                        _ => "user",
                    };
                    vec![
                        u.name.clone(),
                        kind.to_string(),
                        if teams.is_empty() { "-".into() } else { teams.join(", ") },
                        u.default_team.clone().unwrap_or_else(|| "-".into()),
                        if u.disabled { "disabled".into() } else { "enabled".into() },
                    ]
                })
                .collect();
            print!("{}", format::table(&["NAME", "KIND", "TEAMS", "DEFAULT TEAM", "STATE"], &rows));
        }
        UserCommand::Disable { name } => {
            client.set_user_disabled(&name, true).await?;
            eprintln!("user {name} disabled");
        }
        UserCommand::Enable { name } => {
            client.set_user_disabled(&name, false).await?;
            eprintln!("user {name} enabled");
        }
    }
    Ok(0)
}

#[derive(Args)]
pub struct TeamArgs {
    #[command(subcommand)]
    command: TeamCommand,
}

#[derive(Subcommand)]
enum TeamCommand {
    /// Add a team (installation admins).
    Add { name: String },
    /// List teams: all for an installation admin, yours otherwise, with members and projects.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a member to a team or change their role (team admins and installation admins).
    Member {
        team: String,
        user: String,
        /// viewer, member or admin.
        #[arg(long, value_parser = role, default_value = "member")]
        role: TeamRole,
    },
    /// Remove a member from a team.
    RemoveMember { team: String, user: String },
    /// Add a project to a team; jobs of the team may then name it with --project.
    Project { team: String, project: String },
    /// Single sign-on: members of the provider's GROUP get a role in TEAM at their next sign-in (`--remove` ends the
    /// rule, and the memberships it gave go at each member's next sign-in).
    Group {
        team: String,
        group: String,
        /// viewer, member or admin (admin: installation admins only).
        #[arg(long, value_parser = role, default_value = "member")]
        role: TeamRole,
        #[arg(long, conflicts_with = "role")]
        remove: bool,
    },
    /// Set the quota of a team (installation admins) or, with --project, of one of its projects (team admins; within
    /// the team's). What is left out is unlimited; `--clear` removes the quota.
    Quota {
        team: String,
        #[arg(long)]
        project: Option<String>,
        /// Guaranteed GPUs.
        #[arg(long)]
        gpus: Option<u32>,
        /// Guaranteed CPUs, such as 64 or 0.5.
        #[arg(long, value_parser = cpus)]
        cpus: Option<u64>,
        /// Guaranteed memory, such as 512GiB.
        #[arg(long, value_parser = memory)]
        memory: Option<u64>,
        /// At most this many more GPUs borrowed from others' idle quota (without any --borrow-*: whatever is idle).
        #[arg(long)]
        borrow_gpus: Option<u32>,
        #[arg(long, value_parser = cpus)]
        borrow_cpus: Option<u64>,
        #[arg(long, value_parser = memory)]
        borrow_memory: Option<u64>,
        #[arg(long, conflicts_with_all = ["gpus", "cpus", "memory", "borrow_gpus", "borrow_cpus", "borrow_memory"])]
        clear: bool,
    },
    /// List the single sign-on group rules.
    Groups {
        #[arg(long)]
        json: bool,
    },
}

pub async fn team(g: &Global, args: TeamArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    match args.command {
        TeamCommand::Add { name } => {
            let team = client.create_team(&CreateTeam { name }).await?;
            eprintln!(
                "team {} added; add members with `ferry team member {} USER --role member`",
                team.name, team.name
            );
        }
        TeamCommand::List { json } => {
            let list = client.teams().await?;
            if json {
                print_json(&list);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> = list
                .teams
                .iter()
                .map(|t| {
                    let members: Vec<String> = t.members.iter().map(|(u, r)| format!("{u}:{}", r.name())).collect();
                    let projects: Vec<String> = t
                        .projects
                        .iter()
                        .map(|p| match t.project_quotas.get(p) {
                            Some(q) => format!("{p} ({})", quota_text(Some(q))),
                            None => p.clone(),
                        })
                        .collect();
                    let projects = if projects.is_empty() { "-".to_string() } else { projects.join(", ") };
                    vec![t.name.clone(), quota_text(t.quota.as_ref()), members.join(", "), projects]
                })
                .collect();
            print!("{}", format::table(&["TEAM", "QUOTA", "MEMBERS", "PROJECTS"], &rows));
        }
        TeamCommand::Member { team, user, role } => {
            client.set_member(&team, &user, &SetMember { role }).await?;
            eprintln!("{user} is now {} of team {team}", role.name());
        }
        TeamCommand::RemoveMember { team, user } => {
            client.remove_member(&team, &user).await?;
            eprintln!("{user} removed from team {team}");
        }
        TeamCommand::Project { team, project } => {
            client.create_project(&team, &CreateProject { name: project.clone() }).await?;
            eprintln!("project {project} added to team {team}");
        }
        TeamCommand::Group { team, group, role, remove } => {
            if remove {
                client.remove_group_rule(&team, &group).await?;
                eprintln!("members of the group {group} no longer join team {team} by it");
            } else {
                client.set_group_rule(&team, &SetGroupRule { group: group.clone(), role }).await?;
                eprintln!("members of the group {group} join team {team} as {} at their next sign-in", role.name());
            }
        }
        TeamCommand::Quota { team, project, gpus, cpus, memory, borrow_gpus, borrow_cpus, borrow_memory, clear } => {
            let quota = QuotaAmount { gpus, cpu_millis: cpus, memory_bytes: memory };
            let borrow = QuotaAmount { gpus: borrow_gpus, cpu_millis: borrow_cpus, memory_bytes: borrow_memory };
            let spec = Quota { quota, borrow_limit: (borrow != QuotaAmount::default()).then_some(borrow) };
            if !clear && quota == QuotaAmount::default() {
                return Err(CliError::new(
                    exit::INVALID,
                    "name at least one of --gpus, --cpus and --memory, or --clear to remove the quota",
                ));
            }
            let info = client.set_quota(&team, project.as_deref(), (!clear).then_some(&spec)).await?;
            let what = match &project {
                Some(p) => format!("project {p} of team {team}"),
                None => format!("team {team}"),
            };
            let now = match &project {
                Some(p) => info.project_quotas.get(p).copied(),
                None => info.quota,
            };
            match now {
                Some(quota) => eprintln!("the quota of {what} is now {}", quota_text(Some(&quota))),
                None => eprintln!("{what} has no quota now"),
            }
        }
        TeamCommand::Groups { json } => {
            let list = client.group_rules().await?;
            if json {
                print_json(&list);
                return Ok(0);
            }
            let rows: Vec<Vec<String>> =
                list.rules.iter().map(|r| vec![r.group.clone(), r.team.clone(), r.role.name().to_string()]).collect();
            print!("{}", format::table(&["GROUP", "TEAM", "ROLE"], &rows));
        }
    }
    Ok(0)
}

#[derive(Args)]
pub struct WhoAmIArgs {
    #[arg(long)]
    json: bool,
}

pub async fn whoami(g: &Global, args: WhoAmIArgs) -> Result<i32, CliError> {
    let me = g.client()?.whoami().await?;
    if args.json {
        print_json(&me);
        return Ok(0);
    }
    let teams: Vec<String> = me.user.teams.iter().map(|(t, r)| format!("{t} ({})", r.name())).collect();
    println!("{}{}", me.user.name, if me.user.admin { " (installation admin)" } else { "" });
    println!("  token scope: {}", me.scope.name());
    if let Some(at) = me.expires_at_us {
        println!("  expires:     {} UTC", format::timestamp(at));
    }
    println!("  teams:       {}", if teams.is_empty() { "none".to_string() } else { teams.join(", ") });
    if let Some(team) = &me.user.default_team {
        println!("  default:     {team}");
    }
    Ok(0)
}

#[derive(Args)]
pub struct AuditArgs {
    /// Entries of this actor only: a user, `agent:TOKEN-NAME` or `job:ID` (others than yourself: admins only).
    #[arg(long)]
    actor: Option<String>,
    /// Entries whose action contains this text, such as `cancel`, `tokens` or `sign-in`.
    #[arg(long)]
    action: Option<String>,
    /// Entries whose object contains this text, such as `/jobs/12`.
    #[arg(long)]
    object: Option<String>,
    /// ok, denied or failed.
    #[arg(long)]
    result: Option<String>,
    /// Since this long ago (`24h`) or this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Until this long ago or this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// At most this many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Print CSV (for spreadsheets and archives) instead of a table.
    #[arg(long, conflicts_with = "json")]
    csv: bool,
    #[arg(long)]
    json: bool,
}

pub async fn audit(g: &Global, args: AuditArgs) -> Result<i32, CliError> {
    let client = g.client()?;
    let query = ferry_client::AuditQuery {
        actor: args.actor,
        action: args.action,
        object: args.object,
        result: args.result,
        since: args.since,
        until: args.until,
        before: None,
        limit: Some(args.limit),
    };
    if args.csv {
        print!("{}", client.audit_csv(&query).await?);
        return Ok(0);
    }
    let page = client.audit(&query).await?;
    if args.json {
        print_json(&page);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = page
        .entries
        .iter()
        .map(|e| {
            vec![
                format::timestamp(e.at_us),
                e.actor.clone().unwrap_or_else(|| "-".to_string()),
                e.action.clone(),
                e.object.clone().unwrap_or_else(|| "-".to_string()),
                format!("{} {}", e.result, e.status),
                e.source.clone().unwrap_or_else(|| "-".to_string()),
                e.detail.as_deref().map(|d| short(&d.replace(['\n', '\r'], " "), 60)).unwrap_or_default(),
            ]
        })
        .collect();
    print!("{}", format::table(&["TIME (UTC)", "ACTOR", "ACTION", "OBJECT", "RESULT", "FROM", "DETAIL"], &rows));
    if page.next_before.is_some() {
        eprintln!("(more entries: raise --limit, narrow with --since, or export with --csv)");
    }
    Ok(0)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn short(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((at, _)) if text.chars().count() > max => format!("{}…", &text[..at]),
        _ => text.to_string(),
    }
}

#[derive(Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// On the server's machine: make USER (default `admin`) an enabled installation admin, mint a new admin token
    /// and write it to admin.token in the data directory. Holding the data directory is the proof of authority; it
    /// works while the server runs.
    Restore {
        #[arg(long, default_value = ferry_server::BOOTSTRAP_ADMIN)]
        user: String,
    },
}

pub async fn admin(g: &Global, args: AdminArgs) -> Result<i32, CliError> {
    match args.command {
        AdminCommand::Restore { user } => {
            let dir = g.data_dir()?;
            let path = ferry_server::restore_admin(&dir, &user)
                .await
                .map_err(|e| CliError::new(exit::CONFIG, e.to_string()))?;
            eprintln!("{user} is an installation admin with a new admin token in {}", path.display());
        }
    }
    Ok(0)
}
