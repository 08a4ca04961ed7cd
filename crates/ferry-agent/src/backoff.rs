//! Capped exponential backoff for talking to a server that does not answer.
//!
//! It only computes delays: it must never sleep or log, so callers decide how to wait and what to say.

use std::time::Duration;

/// The first wait after a failure.
const BACKOFF_MIN_MS: u64 = 100;
/// The longest wait between tries, so the agent is back within two seconds of the server.
const BACKOFF_MAX_MS: u64 = 2_000;

#[derive(Debug)]
pub(crate) struct Backoff {
    next_ms: u64,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next_ms: BACKOFF_MIN_MS }
    }

    /// The wait before the next try; each call doubles the following one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(BACKOFF_MAX_MS);
        Duration::from_millis(delay)
    }

    pub fn reset(&mut self) {
        self.next_ms = BACKOFF_MIN_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new();
        let delays: Vec<u64> = (0..7).map(|_| backoff.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
