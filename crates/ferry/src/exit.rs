//! The CLI's exit codes, documented in the README. Codes other than these come from the job itself
//! (`ferry run --follow` exits with the job's own exit code), so Ferry's own failures use the high `sysexits.h`
//! range that programs rarely use. Command-line usage errors exit with 2, as clap reports them.

use ferry_api::ErrorCode;
use ferry_client::ClientError;

/// The input was invalid or the request cannot be satisfied (bad units, empty command, too many GPUs).
pub const INVALID: i32 = 64;
/// The request conflicts with the current state (cancelling a finished job).
pub const CONFLICT: i32 = 65;
/// The job or other object does not exist.
pub const NOT_FOUND: i32 = 66;
/// No server answered, or it is shutting down.
pub const UNAVAILABLE: i32 = 69;
/// A fault inside Ferry.
pub const INTERNAL: i32 = 70;
/// A followed job was cancelled or lost, and so has no exit code of its own.
pub const JOB_DID_NOT_FINISH: i32 = 75;
/// No token, or a token the server refuses.
pub const AUTH: i32 = 77;
/// The data directory or a configuration file is unusable.
pub const CONFIG: i32 = 78;
/// A followed job was stopped at its maximum runtime (as `timeout(1)` reports it).
pub const TIMED_OUT: i32 = 124;

/// An error the CLI prints as one sentence before exiting with its code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn new(code: i32, message: impl Into<String>) -> CliError {
        CliError { code, message: message.into() }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let code = match &e {
            ClientError::Unreachable { .. } => UNAVAILABLE,
            ClientError::Transport { .. } => UNAVAILABLE,
            ClientError::Untrusted { .. } | ClientError::PinMismatch { .. } => AUTH,
            ClientError::NotTls { .. } | ClientError::Setup(_) => CONFIG,
            ClientError::Api { body, .. } => match body.code {
                ErrorCode::InvalidRequest | ErrorCode::Unsatisfiable | ErrorCode::PayloadTooLarge => INVALID,
                ErrorCode::Unauthenticated | ErrorCode::Forbidden => AUTH,
                ErrorCode::NotFound | ErrorCode::Gone => NOT_FOUND,
                ErrorCode::Conflict | ErrorCode::QuotaExceeded => CONFLICT,
                ErrorCode::Unavailable | ErrorCode::RateLimited | ErrorCode::StorageFull => UNAVAILABLE,
                ErrorCode::Internal => INTERNAL,
            },
        };
        CliError { code, message: e.to_string() }
    }
}
