//! API tokens on the wire: creating, listing and revoking them. A plain token appears only in the answer that
//! creates it; listings never carry it, nor its hash.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest token name.
pub const TOKEN_NAME_CHARS_MAX: usize = 128;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenRole {
    /// Everything, through the API and the CLI.
    Admin,
    /// Only the agent protocol: for `ferry agent --join-token` on a machine that joins the cluster.
    Agent,
}

impl TokenRole {
    pub fn name(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Agent => "agent",
        }
    }

    pub fn parse(text: &str) -> Option<TokenRole> {
        [TokenRole::Admin, TokenRole::Agent].into_iter().find(|r| r.name() == text)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for, such as the machine or rack an agent token is handed to.
    pub name: String,
    pub role: TokenRole,
}

/// The answer to creating a token: the only time the plain token is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub id: i64,
    pub name: String,
    pub role: TokenRole,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub role: TokenRole,
    pub created_at_us: i64,
    /// Set once the token is revoked; it is refused from then on.
    pub revoked_at_us: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}
