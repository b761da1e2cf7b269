//! Hybrid logical clock: versions that follow wall time but never go backwards.
//!
//! A reading is a `u64`: milliseconds since the Unix epoch in the high 48 bits and a logical
//! counter in the low 16. [`Hlc::tick`] returns a reading greater than every reading it returned
//! or observed before, and as close to the wall clock as that allows; [`Hlc::observe`] moves the
//! clock past a reading seen elsewhere (a peer's stamp, or the newest stamp found on disk at
//! recovery, so a clock that went backwards across a restart cannot reorder writes).

/// Bits of the logical counter.
pub const LOGICAL_BITS: u32 = 16;

/// The clock. One per shard; shards never share it, since stamps of a key come from the shard
/// that owns the key.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that has seen nothing.
    pub fn new() -> Hlc {
        Hlc { last: 0 }
    }

    /// The next reading, given the wall clock in milliseconds.
    pub fn tick(&mut self, wall_ms: u64) -> u64 {
        let physical = wall_ms << LOGICAL_BITS;
        self.last = physical.max(self.last.saturating_add(1));
        self.last
    }

    /// Moves the clock past `reading`.
    pub fn observe(&mut self, reading: u64) {
        self.last = self.last.max(reading);
    }

    /// The last reading handed out or observed.
    pub fn last(&self) -> u64 {
        self.last
    }
}

/// The wall clock in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX >> LOGICAL_BITS))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotone_under_a_stuck_or_backward_clock() {
        let mut c = Hlc::new();
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(999);
        assert!(a < b && b < d);
        assert_eq!(a, 1000 << LOGICAL_BITS);
        let e = c.tick(2000);
        assert_eq!(e, 2000 << LOGICAL_BITS, "follows the wall clock when it moves ahead");
    }

    #[test]
    fn observe_moves_past_remote_readings() {
        let mut c = Hlc::new();
        c.observe(5000 << LOGICAL_BITS);
        assert!(c.tick(10) > 5000 << LOGICAL_BITS);
        c.observe(1);
        assert!(c.last() > 1);
    }
}
