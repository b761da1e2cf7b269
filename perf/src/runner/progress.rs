//! The progress line on stderr, once per `--progress-interval-ms`.
//!
//! Each client thread sends a [`Snapshot`] of its counters per interval (tick) to the calling
//! thread over a bounded channel (a full channel drops the snapshot: progress is best effort and
//! never slows the load). [`ProgressBoard`] keeps the latest snapshot of every thread and makes
//! a line once every running thread has reported a tick: elapsed time, operations per second
//! over the last interval, p50 and p99 so far, errors so far.

use hdrhistogram::Histogram;

use super::stats::new_histogram;

/// One thread's counters at the end of a tick.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub thread: usize,
    /// Intervals since the thread started.
    pub tick: u64,
    /// Whether the warm-up is over.
    pub measuring: bool,
    /// Operations completed and recorded (after the warm-up).
    pub completed: u64,
    /// Operations completed during the warm-up.
    pub warmup_ops: u64,
    pub errors: u64,
    /// Latency of every recorded operation so far, µs.
    pub latency_us: Histogram<u64>,
    /// The thread's last snapshot: later lines wait only for the threads still running.
    pub finished: bool,
}

/// Merges the threads' snapshots into progress lines.
#[derive(Debug)]
pub struct ProgressBoard {
    interval_s: f64,
    latest: Vec<Option<Snapshot>>,
    printed_tick: u64,
    /// Completed operations (recorded + warm-up) at the last printed tick.
    printed_ops: u64,
}

impl ProgressBoard {
    pub fn new(threads: usize, interval_ms: u64) -> ProgressBoard {
        ProgressBoard {
            interval_s: interval_ms as f64 / 1000.0,
            latest: vec![None; threads],
            printed_tick: 0,
            printed_ops: 0,
        }
    }

    /// Takes one snapshot; returns a line when every thread has now reported a tick that has
    /// not been printed.
    pub fn on_snapshot(&mut self, s: Snapshot) -> Option<String> {
        let thread = s.thread;
        if let Some(slot) = self.latest.get_mut(thread) {
            *slot = Some(s);
        }
        let tick = self
            .latest
            .iter()
            .filter(|s| !s.as_ref().is_some_and(|s| s.finished))
            .map(|s| s.as_ref().map_or(0, |s| s.tick))
            .min()?;
        if tick <= self.printed_tick {
            return None;
        }
        let snaps: Vec<&Snapshot> = self.latest.iter().flatten().collect();
        let ops: u64 = snaps.iter().map(|s| s.completed + s.warmup_ops).sum();
        let rate = (ops.saturating_sub(self.printed_ops)) as f64
            / ((tick - self.printed_tick) as f64 * self.interval_s).max(1e-9);
        self.printed_tick = tick;
        self.printed_ops = ops;
        let elapsed_s = tick as f64 * self.interval_s;
        if !snaps.iter().any(|s| s.measuring) {
            return Some(format!("[{elapsed_s:7.1}s] warm-up  {rate:>10.0} ops/s"));
        }
        let mut h = new_histogram();
        for s in &snaps {
            let _ = h.add(&s.latency_us);
        }
        let errors: u64 = snaps.iter().map(|s| s.errors).sum();
        let completed: u64 = snaps.iter().map(|s| s.completed).sum();
        Some(format!(
            "[{elapsed_s:7.1}s] {rate:>10.0} ops/s  p50 {} us  p99 {} us  errors {errors}  ({completed} ops)",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(thread: usize, tick: u64, completed: u64, us: u64) -> Snapshot {
        let mut latency_us = new_histogram();
        latency_us.record(us).unwrap();
        Snapshot {
            thread,
            tick,
            measuring: true,
            completed,
            warmup_ops: 0,
            errors: thread as u64,
            latency_us,
            finished: false,
        }
    }

    #[test]
    fn a_line_once_every_thread_reported() {
        let mut b = ProgressBoard::new(2, 1000);
        assert_eq!(b.on_snapshot(snap(0, 1, 100, 10)), None);
        let line = b.on_snapshot(snap(1, 1, 300, 1000)).unwrap();
        assert!(line.contains("400 ops/s"), "{line}");
        assert!(line.contains("p50 10 us") && line.contains("p99 1000 us"), "{line}");
        assert!(line.contains("errors 1"), "{line}");
        // Thread 1 runs ahead; no line until thread 0 catches up.
        assert_eq!(b.on_snapshot(snap(1, 2, 600, 1000)), None);
        let line = b.on_snapshot(snap(0, 2, 200, 10)).unwrap();
        assert!(line.contains("400 ops/s"), "{line}");
        // Thread 0 finishes; thread 1 goes on printing alone.
        let mut last = snap(0, 2, 250, 10);
        last.finished = true;
        assert_eq!(b.on_snapshot(last), None);
        assert!(b.on_snapshot(snap(1, 3, 700, 1000)).unwrap().contains("150 ops/s"));
    }

    #[test]
    fn warmup_is_labelled() {
        let mut b = ProgressBoard::new(1, 500);
        let mut s = snap(0, 1, 0, 1);
        s.measuring = false;
        s.warmup_ops = 50;
        assert!(b.on_snapshot(s).unwrap().contains("warm-up         100 ops/s"));
    }
}
