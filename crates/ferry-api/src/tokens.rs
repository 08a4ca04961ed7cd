//! Identities on the wire: API tokens (creating, listing, revoking), users and service accounts, teams with their
//! members and projects. A plain token appears only in the answer that creates it; listings never carry it, nor its
//! hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest token name.
pub const TOKEN_NAME_CHARS_MAX: usize = 128;
/// The longest user, team or project name.
pub const IDENTITY_NAME_CHARS_MAX: usize = 64;

/// What a personal token may do, within what its owner may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Reads only: jobs, logs, metrics, nodes, usage.
    Read,
    /// Reads, and submitting and cancelling work, logging to MLflow, managing one's own tokens.
    Submit,
    /// Everything the owner's roles allow: team administration, and for installation admins, the installation.
    Admin,
}

impl TokenScope {
    pub const ALL: [TokenScope; 3] = [TokenScope::Read, TokenScope::Submit, TokenScope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            TokenScope::Read => "read",
            TokenScope::Submit => "submit",
            TokenScope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<TokenScope> {
        TokenScope::ALL.into_iter().find(|s| s.name() == text)
    }
}

/// Whom a token speaks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// A personal token of a user or service account.
    #[default]
    User,
    /// A join token for `ferry agent`: the agent protocol only, for the node name or pattern it is bound to.
    Agent,
}

impl TokenKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::User => "user",
            TokenKind::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<TokenKind> {
        [TokenKind::User, TokenKind::Agent].into_iter().find(|k| k.name() == text)
    }
}

/// A member's role in a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TeamRole {
    /// Sees the team's jobs, runs and usage.
    Viewer,
    /// Also submits to the team's projects and cancels its own jobs.
    Member,
    /// Also manages the team's members and projects and cancels any of the team's jobs.
    Admin,
}

impl TeamRole {
    pub const ALL: [TeamRole; 3] = [TeamRole::Viewer, TeamRole::Member, TeamRole::Admin];

    pub fn name(self) -> &'static str {
        match self {
            TeamRole::Viewer => "viewer",
            TeamRole::Member => "member",
            TeamRole::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<TeamRole> {
        TeamRole::ALL.into_iter().find(|r| r.name() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for, such as the laptop or the CI job it is handed to, or the machine an agent token is for.
    pub name: String,
    #[serde(default)]
    pub kind: TokenKind,
    /// A personal token's scope; `submit` by default. Never wider than the scope of the token that creates it.
    #[serde(default)]
    pub scope: Option<TokenScope>,
    /// Whose personal token: the caller by default; an installation admin may name any user or service account.
    #[serde(default)]
    pub user: Option<String>,
    /// Seconds until the token expires; none for a token that lasts until revoked (not allowed when the creating
    /// token itself expires).
    #[serde(default)]
    pub expires_in_s: Option<u64>,
    /// An agent token's node name, or a pattern with `*` (such as `gpu-*`); required for agent tokens.
    #[serde(default)]
    pub node: Option<String>,
    /// How many distinct nodes an agent token with a pattern may register (64 by default; 1 for a plain name).
    #[serde(default)]
    pub max_nodes: Option<u32>,
}

/// The answer to creating a token: the only time the plain token is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
    /// For a join token of a server with a certificate authority of its own (`--tls auto`): the authority's
    /// fingerprint, `sha256:<hex>`, which the agent pins (`ferry agent --join-token TOKEN#FINGERPRINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_sha256: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub kind: TokenKind,
    /// A personal token's owner and scope.
    pub user: Option<String>,
    pub scope: Option<TokenScope>,
    /// An agent token's node name or pattern.
    pub node: Option<String>,
    pub created_at_us: i64,
    /// Who created it.
    pub created_by: Option<String>,
    pub expires_at_us: Option<i64>,
    /// Set once the token is revoked; it is refused from then on.
    pub revoked_at_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub name: String,
    /// A service account, for automation: it signs in with tokens only.
    #[serde(default)]
    pub service: bool,
    /// An installation admin.
    #[serde(default)]
    pub admin: bool,
    /// Teams to join at once, with the role in each.
    #[serde(default)]
    pub teams: BTreeMap<String, TeamRole>,
    /// The team a job goes to when its submitter names none; the only team joined when left out.
    #[serde(default)]
    pub default_team: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub service: bool,
    pub admin: bool,
    pub disabled: bool,
    pub default_team: Option<String>,
    /// Teams and the role in each.
    pub teams: BTreeMap<String, TeamRole>,
    pub created_at_us: i64,
    pub created_by: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserInfo>,
}

/// Who the caller is: the user, the scope of the token in use, and its teams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    #[serde(flatten)]
    pub user: UserInfo,
    pub scope: TokenScope,
    /// When the token in use expires.
    pub expires_at_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMember {
    pub role: TeamRole,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TeamInfo {
    pub name: String,
    /// Members by name, with their roles.
    pub members: BTreeMap<String, TeamRole>,
    pub projects: Vec<String>,
    pub created_at_us: i64,
    /// The team's quota, from the configuration file or the API; absent: no quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// The quotas of its projects that have one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub project_quotas: BTreeMap<String, Quota>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TeamList {
    pub teams: Vec<TeamInfo>,
}

/// What a user, team or project name must look like: 1 to 64 letters, digits, `.`, `_`, `-` and `@`, starting with
/// a letter or digit. Names end up in paths, engine namespaces and logs, so nothing else is allowed.
pub fn identity_name_problem(name: &str) -> Option<String> {
    let valid = !name.is_empty()
        && name.chars().count() <= IDENTITY_NAME_CHARS_MAX
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
    (!valid).then(|| {
        format!(
            "`{}` is not a valid name: use 1 to {IDENTITY_NAME_CHARS_MAX} letters, digits, `.`, `_`, `-` or `@`, \
             starting with a letter or digit",
            name.escape_debug()
        )
    })
}

/// An admin's rule for single sign-on: members of the provider's group `group` get `role` in `team`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupRule {
    pub group: String,
    pub team: String,
    pub role: TeamRole,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GroupRuleList {
    pub rules: Vec<GroupRule>,
}

/// `PUT /api/v1/teams/{team}/groups`: members of the provider's `group` get `role` in the team at their next sign-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetGroupRule {
    pub group: String,
    pub role: TeamRole,
}

/// The longest group name a rule may hold.
pub const GROUP_NAME_CHARS_MAX: usize = 256;

/// A device sign-in under way (`ferry login`): the user confirms `user_code` at `verification_uri`; the CLI polls
/// with `handle`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceLogin {
    pub handle: String,
    pub user_code: String,
    pub verification_uri: String,
    /// The address with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    pub expires_in_s: u64,
    /// How long to wait between polls.
    pub interval_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePoll {
    pub handle: String,
}

/// Where a device sign-in stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeviceLoginState {
    /// Not confirmed yet: poll again after the interval.
    Pending,
    /// Signed in: `token` is a session for the CLI (shown once), valid until `expires_at_us`.
    Done { token: String, user: String, expires_at_us: i64 },
    /// The sign-in failed, for the reason given.
    Failed { message: String },
}

/// An amount of resources in a quota; what is left out is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaAmount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

impl QuotaAmount {
    /// The largest amount a quota may name in each dimension (well under the scheduler's "unlimited").
    pub const MAX: QuotaAmount =
        QuotaAmount { gpus: Some(1_000_000), cpu_millis: Some(1_000_000_000_000), memory_bytes: Some(1 << 60) };

    /// What is wrong with this amount, if anything.
    pub fn problem(&self) -> Option<String> {
        let max = QuotaAmount::MAX;
        if self.gpus > max.gpus || self.cpu_millis > max.cpu_millis || self.memory_bytes > max.memory_bytes {
            return Some("a quota amount is larger than any cluster; leave a resource out for no limit".to_string());
        }
        None
    }
}

/// `PUT /api/v1/teams/{team}/quota` and `PUT /api/v1/teams/{team}/projects/{project}/quota`: the guaranteed amount,
/// and how much more may be borrowed from others' idle quota (as much as is idle when absent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub quota: QuotaAmount,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub borrow_limit: Option<QuotaAmount>,
}
