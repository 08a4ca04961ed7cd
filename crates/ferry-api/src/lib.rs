//! Ferry's wire types: every value that crosses the HTTP/JSON API, for users, the CLI and agents alike.
//!
//! The types here are converted by hand from the domain types of the core and the store (in the server), so that the
//! wire format changes only when someone means it to. This crate must never depend on the core, the server, the
//! store or any I/O: no domain type is re-exported, and every JSON shape the API answers is a type of its own here.

pub mod agent;
pub mod audit;
pub mod code;
pub mod error;
pub mod history;
pub mod jobs;
pub mod nodes;
pub mod reasons;
pub mod secrets;
pub mod sweeps;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod tokens;
pub mod tracking;

pub use error::{ErrorBody, ErrorCode};

/// The version of the HTTP API, part of every path (`/api/v1/...`).
pub const API_PREFIX: &str = "/api/v1";

/// The port `ferry up` listens on unless `--listen` says otherwise.
pub const DEFAULT_PORT: u16 = 7750;
