//! Shipped code on the wire: the folder a job was submitted from, packed into one content-addressed archive.
//!
//! An archive is a gzip-compressed tar named by the SHA-256 of its bytes. The CLI asks whether the server has a
//! digest (`HEAD /api/v1/code/{sha256}`) and uploads it only when not (`PUT`); agents download it (`GET`) before
//! they start a run that has code. This module holds only the names, the limits and the wire types; the unpacker and its limits are in
//! `ferry-archive`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest archive, compressed, that the CLI sends and the server stores.
pub const CODE_ARCHIVE_BYTES_MAX: u64 = 100 << 20;
/// The longest uncommitted diff recorded with a job; a longer one is cut and marked so.
pub const GIT_DIFF_BYTES_MAX: usize = 1 << 20;

/// What a job was shipped with, as submitted by the CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CodeSpec {
    /// The SHA-256 of the archive, 64 lowercase hex digits; the server must already hold it.
    pub sha256: String,
    /// The git commit checked out in the submitting folder, when it is a git checkout.
    #[serde(default)]
    pub git_commit: Option<String>,
    /// `git diff HEAD` at submission: the uncommitted changes, cut at `GIT_DIFF_BYTES_MAX`.
    #[serde(default)]
    pub git_diff: Option<String>,
}

/// What a job was shipped with, as the API shows it. The diff itself is at `GET /api/v1/jobs/{id}/diff`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobCode {
    pub sha256: String,
    /// The archive's size, compressed.
    pub size_bytes: u64,
    pub git_commit: Option<String>,
    /// Whether the folder had uncommitted changes at submission.
    pub git_dirty: bool,
}

/// The answer to an upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CodeStored {
    pub sha256: String,
    pub size_bytes: u64,
    /// False when the server already held the archive, so nothing new was stored.
    pub created: bool,
}

/// Whether `text` is a SHA-256 digest as the API names archives: 64 lowercase hex digits.
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_64_lowercase_hex_digits() {
        assert!(is_sha256(&"ab".repeat(32)));
        assert!(!is_sha256(&"AB".repeat(32)));
        assert!(!is_sha256(&"ab".repeat(31)));
        assert!(!is_sha256(&format!("{}/..", "a".repeat(61))));
    }
}
