//! [`Clock`]: the wall clock the engine reads to decide whether a value has expired.
//!
//! Expiry times (`expires_at_ms`) are absolute wall-clock milliseconds since the Unix epoch,
//! chosen by whoever stamps the write (the node converts a client's TTL with its own clock).
//! The engine only compares them with "now", read from the [`Clock`] in
//! [`crate::ShardOptions::clock`]: the system clock in production, a [`Clock::manual`] one in
//! tests, so expiry can be tested without sleeping.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Where the engine reads the time. Cheap to clone; clones of a manual clock share its time.
#[derive(Clone, Default)]
pub enum Clock {
    /// The system wall clock (`SystemTime::now`). The default.
    #[default]
    System,
    /// A clock that stands still until told to move: [`Clock::set_ms`], [`Clock::advance_ms`].
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock reading `now_ms`.
    pub fn manual(now_ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(now_ms)))
    }

    /// Milliseconds since the Unix epoch (0 if the system clock is before 1970).
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Sets a manual clock to `now_ms`; does nothing to the system clock.
    pub fn set_ms(&self, now_ms: u64) {
        if let Clock::Manual(ms) = self {
            ms.store(now_ms, Ordering::Relaxed);
        }
    }

    /// Moves a manual clock forward by `delta_ms`; does nothing to the system clock.
    pub fn advance_ms(&self, delta_ms: u64) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(delta_ms, Ordering::Relaxed);
        }
    }
}

fn system_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl PartialEq for Clock {
    /// Two system clocks are equal; manual clocks are equal when they share their time.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Clock::System, Clock::System) => true,
            (Clock::Manual(a), Clock::Manual(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Clock {}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Clock::System => f.write_str("Clock::System"),
            Clock::Manual(ms) => write!(f, "Clock::Manual({})", ms.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let c = Clock::manual(1_000);
        let d = c.clone();
        assert_eq!(c.now_ms(), 1_000);
        d.advance_ms(500);
        assert_eq!(c.now_ms(), 1_500);
        c.set_ms(7);
        assert_eq!(d.now_ms(), 7);
        assert_eq!(c, d);
        assert_ne!(c, Clock::manual(7));
        assert_ne!(c, Clock::System);
        // 2020-01-01 in ms: the system clock is past it on any machine that runs these tests.
        assert!(Clock::System.now_ms() > 1_577_836_800_000);
        Clock::System.set_ms(0);
        assert!(Clock::System.now_ms() > 0);
    }
}
