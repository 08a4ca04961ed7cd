//! The simulator's errors: bad input, located by file, line and field so that a person can fix it, and a checker
//! violation, which carries the seed and step that reproduce it.

use std::fmt;

/// A problem with one input file. `Display` is the whole message the CLI prints:
/// `workload.csv:17: column gpus: "two" is not a whole number`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct InputError {
    /// The file as the user named it.
    pub file: String,
    /// The 1-based line the problem is on.
    pub line: u64,
    /// What the problem is in, such as `column gpus` or `field memory`; `None` for the line as a whole.
    pub field: Option<String>,
    pub message: String,
}

impl InputError {
    pub fn new(file: &str, line: u64, field: Option<String>, message: impl Into<String>) -> InputError {
        InputError { file: file.to_string(), line, field, message: message.into() }
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A broken promise found by the checker: what went wrong, and the seed and step that replay it exactly.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("checker failed at step {step} (virtual time {time_s}s) of the run with seed {seed}: {message}", time_s = fmt_ms(*.time_ms))]
pub struct Violation {
    pub seed: u64,
    /// The number of steps completed before the failing one, plus one: a step is one batch of same-time events
    /// followed by one scheduling cycle.
    pub step: u64,
    pub time_ms: u64,
    pub message: String,
}

/// Everything that stops a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    /// Flags or inputs that do not go together, such as `--fgd` on a cluster without GPUs.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Checker(#[from] Violation),
}

/// Milliseconds as seconds with at most three decimals: `90`, `1.5`, `0.001`.
pub fn fmt_ms(ms: u64) -> String {
    let whole = ms / 1000;
    match ms % 1000 {
        0 => whole.to_string(),
        frac => format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0')),
    }
}
