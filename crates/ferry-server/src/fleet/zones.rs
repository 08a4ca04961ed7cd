//! Which zone of an elastic pool to launch in next, and how fast to call a provider: plain bookkeeping over times
//! passed in, so that it is tested without a clock or a cloud.
//!
//! A pool lists its zones in the admin's order; a launch tries them in that order, skipping each zone that refused
//! for capacity (or lost a spot machine to a reclaim) within the pool's `retry_after`. Only when every zone has
//! refused does the core hear of a failure, and then it skips the whole pool for `retry_after` and offers the jobs
//! the next pool in order.

use std::collections::BTreeMap;
use std::time::Duration;

/// The zones of one pool, in order, with those cooling down after a refusal.
#[derive(Debug, Clone)]
pub struct ZoneBook {
    zones: Vec<String>,
    /// Until when (µs) each zone is skipped, and why.
    cooling: BTreeMap<String, (i64, String)>,
    cooldown_us: i64,
}

impl ZoneBook {
    pub fn new(zones: Vec<String>, cooldown_s: u64) -> ZoneBook {
        let cooldown_us = i64::try_from(cooldown_s.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        ZoneBook { zones, cooling: BTreeMap::new(), cooldown_us }
    }

    /// The zones to try at `now_us`, in order: those not cooling down.
    pub fn order(&self, now_us: i64) -> Vec<String> {
        self.zones.iter().filter(|z| !self.is_cooling(z, now_us)).cloned().collect()
    }

    fn is_cooling(&self, zone: &str, now_us: i64) -> bool {
        self.cooling.get(zone).is_some_and(|(until, _)| *until > now_us)
    }

    /// `zone` refused (no capacity) or lost a machine at `now_us`: it is skipped for the pool's cooldown.
    pub fn cool(&mut self, zone: &str, why: &str, now_us: i64) {
        if self.zones.iter().any(|z| z == zone) {
            let until = now_us.saturating_add(self.cooldown_us);
            self.cooling.insert(zone.to_string(), (until, why.to_string()));
        }
    }

    /// The zones cooling down at `now_us`, with until when and why, for `ferry pools`.
    pub fn cooling(&self, now_us: i64) -> Vec<(String, i64, String)> {
        self.zones
            .iter()
            .filter_map(|z| {
                self.cooling.get(z).filter(|(until, _)| *until > now_us).map(|(u, w)| (z.clone(), *u, w.clone()))
            })
            .collect()
    }
}

/// A token bucket: `burst` calls at once, then `per_second` a second. `take` says how long to wait for the next call.
#[derive(Debug, Clone)]
pub struct RateLimit {
    burst: f64,
    per_second: f64,
    tokens: f64,
    /// When `tokens` was last brought up to date (µs).
    at_us: i64,
}

impl RateLimit {
    pub fn new(burst: u32, per_second: f64, now_us: i64) -> RateLimit {
        RateLimit {
            burst: f64::from(burst.max(1)),
            per_second: per_second.max(0.001),
            tokens: f64::from(burst.max(1)),
            at_us: now_us,
        }
    }

    /// Takes one call's token at `now_us`: `None` to go now, or how long to wait first (the token is taken either
    /// way, so that calls queue up in order).
    pub fn take(&mut self, now_us: i64) -> Option<Duration> {
        let elapsed_s = (now_us - self.at_us).max(0) as f64 / 1e6;
        self.tokens = (self.tokens + elapsed_s * self.per_second).min(self.burst);
        self.at_us = now_us.max(self.at_us);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            None
        } else {
            Some(Duration::from_secs_f64(-self.tokens / self.per_second))
        }
    }
}

/// How long to wait before try `attempt` (from 1) of a call that failed for a passing reason: doubling from one
/// second, at most a minute.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    #[test]
    fn a_zone_that_refused_is_skipped_until_its_cooldown_ends() {
        let mut book = ZoneBook::new(vec!["a".into(), "b".into(), "c".into()], 600);
        assert_eq!(book.order(0), ["a", "b", "c"]);
        book.cool("a", "no capacity", 10 * S);
        book.cool("elsewhere", "not ours", 10 * S);
        assert_eq!(book.order(11 * S), ["b", "c"]);
        assert_eq!(book.cooling(11 * S), [("a".to_string(), 610 * S, "no capacity".to_string())]);
        assert_eq!(book.order(610 * S), ["a", "b", "c"], "the order is the admin's again once the cooldown is over");
        book.cool("b", "x", 700 * S);
        book.cool("c", "x", 700 * S);
        book.cool("a", "x", 700 * S);
        assert!(book.order(701 * S).is_empty(), "every zone refused: the pool has nowhere to launch");
    }

    #[test]
    fn the_rate_limit_lets_a_burst_through_then_paces_calls() {
        let mut limit = RateLimit::new(2, 4.0, 0);
        assert_eq!((limit.take(0), limit.take(0)), (None, None));
        assert_eq!(limit.take(0), Some(Duration::from_millis(250)));
        assert_eq!(limit.take(0), Some(Duration::from_millis(500)), "calls queue behind each other");
        // A second later four tokens came back, two of them owed.
        assert_eq!(limit.take(S), None);
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(60));
    }
}
