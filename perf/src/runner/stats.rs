//! What a run counts: per operation kind, HDR histograms of latency and service time, the
//! number of operations, errors and verification mismatches.
//!
//! Each glommio thread owns one [`RunStats`] (its tasks share it through an `Rc<RefCell<_>>`
//! and never hold the borrow across an await); the threads' stats are merged once at the end.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::workload::OpKind;

/// The largest latency a histogram holds, µs (10 minutes); longer ones are recorded as this.
/// Requests time out long before (`--timeout-ms`), so this only bounds a bug.
pub const LATENCY_US_MAX: u64 = 600_000_000;

/// Significant decimal digits of every histogram: values are exact to 0.1%.
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram in microseconds, 1 µs to [`LATENCY_US_MAX`], 3 digits.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_max(LATENCY_US_MAX, HISTOGRAM_SIGNIFICANT_DIGITS) {
        Ok(h) => h,
        Err(e) => unreachable!("constant histogram bounds are valid: {e:?}"),
    }
}

/// How one operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The driver failed (timeout, i/o, server or protocol error).
    Failed(String),
    /// The operation succeeded but what it read is wrong (`--verify`).
    Mismatch(String),
}

/// The counts of one operation kind.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// From the intended start (open loop) or the send (closed loop) to the answer, µs. Every
    /// completed operation is recorded, failed ones included, so timeouts show in the tail.
    pub latency_us: Histogram<u64>,
    /// From the actual send to the answer, µs. Recorded in open loop only, to show how much of
    /// the latency was waiting for a free slot.
    pub service_us: Histogram<u64>,
    /// Operations completed in the measured window, failed ones included.
    pub count: u64,
    /// Failed operations plus verification mismatches.
    pub errors: u64,
    /// Verification mismatches (also counted in `errors`).
    pub verify_errors: u64,
    /// The first error seen, to say what went wrong.
    pub first_error: Option<String>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            latency_us: new_histogram(),
            service_us: new_histogram(),
            count: 0,
            errors: 0,
            verify_errors: 0,
            first_error: None,
        }
    }
}

impl OpStats {
    /// Adds `other`'s counts into `self`.
    pub fn merge(&mut self, other: &OpStats) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        let _ = self.service_us.add(&other.service_us);
        self.count += other.count;
        self.errors += other.errors;
        self.verify_errors += other.verify_errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// Everything one thread (or, merged, the whole run) measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub ops: BTreeMap<OpKind, OpStats>,
    /// Length of the measured window: from the end of the warm-up to the last measured answer.
    pub measured_ns: u64,
    /// Operations completed during the warm-up (not recorded anywhere else).
    pub warmup_ops: u64,
}

impl RunStats {
    /// Records one measured operation. `service_us` is `None` in closed loop, where it equals
    /// the latency.
    pub fn record(
        &mut self,
        kind: OpKind,
        latency_us: u64,
        service_us: Option<u64>,
        outcome: &Outcome,
    ) {
        let s = self.ops.entry(kind).or_default();
        s.latency_us.saturating_record(latency_us.min(LATENCY_US_MAX));
        if let Some(us) = service_us {
            s.service_us.saturating_record(us.min(LATENCY_US_MAX));
        }
        s.count += 1;
        match outcome {
            Outcome::Ok => {}
            Outcome::Failed(e) => {
                s.errors += 1;
                s.first_error.get_or_insert_with(|| e.clone());
            }
            Outcome::Mismatch(e) => {
                s.errors += 1;
                s.verify_errors += 1;
                s.first_error.get_or_insert_with(|| format!("verify: {e}"));
            }
        }
    }

    /// Adds another thread's stats; the measured window is the longest of the two.
    pub fn merge(&mut self, other: &RunStats) {
        for (kind, s) in &other.ops {
            self.ops.entry(*kind).or_default().merge(s);
        }
        self.measured_ns = self.measured_ns.max(other.measured_ns);
        self.warmup_ops += other.warmup_ops;
    }

    /// Every operation kind together.
    pub fn overall(&self) -> OpStats {
        let mut all = OpStats::default();
        for s in self.ops.values() {
            all.merge(s);
        }
        all
    }

    /// Operations completed and errors, all kinds.
    pub fn totals(&self) -> (u64, u64) {
        self.ops.values().fold((0, 0), |(c, e), s| (c + s.count, e + s.errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_merge_count_every_outcome() {
        let mut a = RunStats::default();
        a.record(OpKind::Read, 100, None, &Outcome::Ok);
        a.record(OpKind::Read, 200, None, &Outcome::Mismatch("wrong key".into()));
        a.record(OpKind::Update, 300, Some(10), &Outcome::Failed("timeout".into()));
        a.measured_ns = 5;
        let mut b = RunStats::default();
        b.record(OpKind::Read, 0, None, &Outcome::Ok);
        b.record(OpKind::Read, LATENCY_US_MAX * 2, None, &Outcome::Ok);
        b.measured_ns = 9;
        a.merge(&b);
        let read = &a.ops[&OpKind::Read];
        assert_eq!((read.count, read.errors, read.verify_errors), (4, 1, 1));
        assert_eq!(read.first_error.as_deref(), Some("verify: wrong key"));
        assert_eq!(read.latency_us.len(), 4);
        assert!(read.latency_us.max() >= LATENCY_US_MAX);
        assert_eq!(a.measured_ns, 9);
        assert_eq!(a.totals(), (5, 2));
        let all = a.overall();
        assert_eq!((all.count, all.errors, all.verify_errors), (5, 2, 1));
        assert_eq!(all.service_us.len(), 1);
    }
}
