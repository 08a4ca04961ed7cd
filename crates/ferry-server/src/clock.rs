//! The server's one clock. Everything that records or decides by wall-clock time reads it here: the driver through
//! the [`Clock`] it was given (tests hand it a [`ManualClock`] and move time themselves), everything else through
//! [`now_us`], the system clock.

#[cfg(test)]
use std::sync::atomic::{AtomicI64, Ordering};
#[cfg(test)]
use std::sync::Arc;

/// Wall-clock time in microseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_us(&self) -> i64;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> i64 {
        now_us()
    }
}

/// A clock that moves only when told: for deterministic tests of what depends on time.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub struct ManualClock(Arc<AtomicI64>);

#[cfg(test)]
impl ManualClock {
    pub fn at(us: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(us)))
    }

    pub fn advance_s(&self, s: i64) {
        self.0.fetch_add(s * 1_000_000, Ordering::SeqCst);
    }
}

#[cfg(test)]
impl Clock for ManualClock {
    fn now_us(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The system clock's time, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
