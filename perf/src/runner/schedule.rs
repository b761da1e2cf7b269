//! The pure arithmetic of a run: how work is split across threads, when each open-loop request
//! is meant to start, and what latency each request records.
//!
//! Nothing here reads a clock or touches glommio: callers pass offsets from the start of the run
//! in nanoseconds, so the tests can play out a stall without waiting for one.

use std::time::Duration;

/// The fixed timetable of one thread's open-loop requests.
///
/// Request `i` of thread `t` is meant to start at `phase_ns + i * 1e9 / rate_per_thread`
/// nanoseconds after the run starts, whether or not anything is free to send it then. Threads are
/// offset by a fraction of the total interval (`phase_ns`) so that together they send evenly at
/// the total rate instead of in bursts of `threads` requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenLoopSchedule {
    /// Requests per second of this thread.
    rate_per_thread: f64,
    /// Offset of request 0 from the run's start, ns.
    phase_ns: u64,
}

impl OpenLoopSchedule {
    /// The schedule of thread `thread` of `threads` when all of them together send `rate_total`
    /// requests per second. `rate_total` must be positive and finite.
    pub fn for_thread(rate_total: f64, threads: usize, thread: usize) -> OpenLoopSchedule {
        assert!(rate_total.is_finite() && rate_total > 0.0, "rate must be positive");
        assert!(threads >= 1 && thread < threads);
        let interval_total_ns = 1e9 / rate_total;
        OpenLoopSchedule {
            rate_per_thread: rate_total / threads as f64,
            phase_ns: (interval_total_ns * thread as f64) as u64,
        }
    }

    /// When request `index` should start, ns after the run's start. Computed from the index
    /// (never by adding intervals) so rounding does not drift over a long run.
    pub fn intended_start_ns(&self, index: u64) -> u64 {
        self.phase_ns.saturating_add((index as f64 * 1e9 / self.rate_per_thread) as u64)
    }

    /// How long a sender that is free at `now_ns` waits before sending request `index`: zero
    /// when the request is already late (the backlog is sent at once, and its lateness shows
    /// in its latency).
    pub fn wait_before_send_ns(&self, index: u64, now_ns: u64) -> u64 {
        self.intended_start_ns(index).saturating_sub(now_ns)
    }
}

/// The latency an open-loop request records: from when it *should* have started to when its
/// answer arrived. This is the correction for coordinated omission: a request that could not be
/// sent because the system was stalled still counts the whole time it waited.
pub fn latency_from_intended_ns(intended_ns: u64, done_ns: u64) -> u64 {
    done_ns.saturating_sub(intended_ns)
}

/// The service time of a request: from when it was actually sent to its answer. This is what a
/// closed loop measures, and what an open loop would measure if it ignored its schedule; it
/// leaves out the time a request waited for a free connection slot.
pub fn service_time_ns(sent_ns: u64, done_ns: u64) -> u64 {
    done_ns.saturating_sub(sent_ns)
}

/// Microseconds for a histogram, rounding down; values round to at least 0.
pub fn ns_to_us(ns: u64) -> u64 {
    ns / 1_000
}

/// The whole nanoseconds of `d`, saturating at `u64::MAX` (584 years).
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The share of `total` that part `part` of `parts` gets: `total / parts`, with the remainder
/// spread over the first parts so that the shares add up to `total` exactly.
pub fn split_evenly(total: u64, parts: usize, part: usize) -> u64 {
    assert!(parts >= 1 && part < parts);
    let parts = parts as u64;
    let part = part as u64;
    total / parts + u64::from(part < total % parts)
}

/// The seed of task `task` of thread `thread`: a SplitMix64 step over the run's seed and the
/// task's position, so that every task draws a different, reproducible sequence.
pub fn task_seed(run_seed: u64, thread: usize, task: usize) -> u64 {
    let position = ((thread as u64) << 32) | task as u64;
    let mut z = run_seed ^ position.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One permission to start an operation, from [`TicketPlan::take`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// When the operation should start, ns after the run's start: its schedule slot in open
    /// loop, the moment it was asked for in closed loop.
    pub intended_ns: u64,
    /// Whether it falls in the measured window (after the warm-up) and is recorded.
    pub measured: bool,
}

/// Decides, for one thread, whether another operation may start and when: the stop rules of a
/// run (`--operations`, `--duration`, `--warmup`) and the open-loop schedule in one place.
///
/// Every task of the thread asks before each operation; a task that gets `None` stops. Once
/// `None` is returned it is returned forever, because time and the counters only grow.
#[derive(Clone, Debug)]
pub struct TicketPlan {
    /// `Some` in open loop.
    schedule: Option<OpenLoopSchedule>,
    /// End of the warm-up, ns after the start; operations starting before are not recorded.
    measure_start_ns: u64,
    /// End of the measured window (`--duration`), ns after the start.
    measure_end_ns: Option<u64>,
    /// Measured operations this thread may start (`--operations`, this thread's share).
    budget: Option<u64>,
    /// Measured operations started so far.
    measured_taken: u64,
    /// Open loop: the index of the next schedule slot.
    next_index: u64,
}

impl TicketPlan {
    pub fn new(
        schedule: Option<OpenLoopSchedule>,
        warmup_ns: u64,
        duration_ns: Option<u64>,
        budget: Option<u64>,
    ) -> TicketPlan {
        TicketPlan {
            schedule,
            measure_start_ns: warmup_ns,
            measure_end_ns: duration_ns.map(|d| warmup_ns.saturating_add(d)),
            budget,
            measured_taken: 0,
            next_index: 0,
        }
    }

    /// The next operation's ticket for a task that is free at `now_ns`, or `None` when the run
    /// is over for this thread. In open loop the ticket is the next unclaimed schedule slot,
    /// which is in the past when every task was busy: the task sends at once and the request's
    /// latency includes how late it is.
    pub fn take(&mut self, now_ns: u64) -> Option<Ticket> {
        let intended_ns = match &self.schedule {
            Some(s) => s.intended_start_ns(self.next_index),
            None => now_ns,
        };
        let measured = intended_ns >= self.measure_start_ns;
        if measured {
            if self.measure_end_ns.is_some_and(|end| intended_ns >= end) {
                return None;
            }
            if self.budget.is_some_and(|b| self.measured_taken >= b) {
                return None;
            }
            self.measured_taken += 1;
        }
        self.next_index += 1;
        Some(Ticket { intended_ns, measured })
    }

    /// Whether tickets follow an open-loop schedule.
    pub fn is_open_loop(&self) -> bool {
        self.schedule.is_some()
    }

    /// Measured operations started so far.
    pub fn measured_taken(&self) -> u64 {
        self.measured_taken
    }

    /// End of the warm-up, ns after the start.
    pub fn measure_start_ns(&self) -> u64 {
        self.measure_start_ns
    }
}

/// What a simulated open loop records for one request, for tests and for explaining the method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimulatedRequest {
    pub intended_ns: u64,
    pub sent_ns: u64,
    pub done_ns: u64,
}

/// Plays out an open loop on paper: `count` requests on `schedule`, `slots` of them in flight
/// at most, against a system that answers each request `service_ns` after it is sent, except
/// that nothing completes during `[stall_start_ns, stall_end_ns)`: a request in flight then
/// completes at `stall_end_ns` at the earliest. A request is sent when it is due and a slot is
/// free, the earliest-freed slot first, exactly as the runner's tasks take tickets.
pub fn simulate_open_loop(
    schedule: &OpenLoopSchedule,
    count: u64,
    slots: usize,
    service_ns: u64,
    stall: (u64, u64),
) -> Vec<SimulatedRequest> {
    assert!(slots >= 1);
    let (stall_start_ns, stall_end_ns) = stall;
    let mut free_at_ns = vec![0u64; slots];
    let mut out = Vec::new();
    for i in 0..count {
        let intended_ns = schedule.intended_start_ns(i);
        let (slot, slot_free_ns) =
            free_at_ns.iter().copied().enumerate().min_by_key(|&(_, t)| t).unwrap_or((0, 0));
        let sent_ns = intended_ns.max(slot_free_ns);
        let mut done_ns = sent_ns + service_ns;
        if sent_ns < stall_end_ns && done_ns >= stall_start_ns {
            done_ns = done_ns.max(stall_end_ns);
        }
        if let Some(f) = free_at_ns.get_mut(slot) {
            *f = done_ns;
        }
        out.push(SimulatedRequest { intended_ns, sent_ns, done_ns });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_and_threads_interleave() {
        let s0 = OpenLoopSchedule::for_thread(1000.0, 2, 0);
        let s1 = OpenLoopSchedule::for_thread(1000.0, 2, 1);
        // 500/s per thread: 2 ms apart; thread 1 is offset by 1 ms.
        assert_eq!(s0.intended_start_ns(0), 0);
        assert_eq!(s0.intended_start_ns(1), 2_000_000);
        assert_eq!(s1.intended_start_ns(0), 1_000_000);
        assert_eq!(s1.intended_start_ns(3), 7_000_000);
        // No drift after many requests.
        let s = OpenLoopSchedule::for_thread(3.0, 1, 0);
        assert_eq!(s.intended_start_ns(3_000_000), 1_000_000 * 1_000_000_000);
    }

    #[test]
    fn late_requests_are_sent_at_once() {
        let s = OpenLoopSchedule::for_thread(1000.0, 1, 0);
        assert_eq!(s.wait_before_send_ns(5, 4_000_000), 1_000_000);
        assert_eq!(s.wait_before_send_ns(5, 9_000_000), 0);
    }

    #[test]
    fn latency_counts_from_the_intended_start() {
        assert_eq!(latency_from_intended_ns(1_000, 201_000), 200_000);
        assert_eq!(service_time_ns(200_000, 201_000), 1_000);
        assert_eq!(latency_from_intended_ns(5, 3), 0);
        assert_eq!(ns_to_us(1_999), 1);
    }

    #[test]
    fn split_adds_up_exactly() {
        for total in [0u64, 1, 7, 1_000_001] {
            for parts in 1..6 {
                let sum: u64 = (0..parts).map(|p| split_evenly(total, parts, p)).sum();
                assert_eq!(sum, total);
            }
        }
        assert_eq!(split_evenly(7, 3, 0), 3);
        assert_eq!(split_evenly(7, 3, 2), 2);
    }

    #[test]
    fn task_seeds_differ() {
        let mut seeds: Vec<u64> =
            (0..4).flat_map(|t| (0..64).map(move |k| task_seed(1, t, k))).collect();
        seeds.sort_unstable();
        seeds.dedup();
        assert_eq!(seeds.len(), 256);
        assert_eq!(task_seed(9, 1, 2), task_seed(9, 1, 2));
    }

    #[test]
    fn closed_loop_tickets_stop_at_the_budget_after_the_warmup() {
        let mut plan = TicketPlan::new(None, 1_000, None, Some(3));
        assert_eq!(plan.take(10), Some(Ticket { intended_ns: 10, measured: false }));
        assert_eq!(plan.take(999), Some(Ticket { intended_ns: 999, measured: false }));
        for now in [1_000, 1_001, 5_000] {
            assert_eq!(plan.take(now), Some(Ticket { intended_ns: now, measured: true }));
        }
        assert_eq!(plan.take(6_000), None);
        assert_eq!(plan.take(7_000), None);
        assert_eq!(plan.measured_taken(), 3);
    }

    #[test]
    fn closed_loop_tickets_stop_at_the_deadline() {
        let mut plan = TicketPlan::new(None, 0, Some(100), None);
        assert!(plan.take(99).is_some());
        assert_eq!(plan.take(100), None);
    }

    #[test]
    fn open_loop_tickets_follow_the_schedule_whenever_they_are_taken() {
        // 1,000/s: a slot every ms; 2 ms of warm-up; 3 ms measured.
        let s = OpenLoopSchedule::for_thread(1000.0, 1, 0);
        let mut plan = TicketPlan::new(Some(s), 2_000_000, Some(3_000_000), None);
        let got: Vec<Ticket> = std::iter::from_fn(|| plan.take(50_000_000)).collect();
        let intended: Vec<u64> = got.iter().map(|t| t.intended_ns / 1_000_000).collect();
        assert_eq!(intended, vec![0, 1, 2, 3, 4]);
        let measured: Vec<bool> = got.iter().map(|t| t.measured).collect();
        assert_eq!(measured, vec![false, false, true, true, true]);
        // With a budget instead, exactly that many measured tickets.
        let mut plan = TicketPlan::new(Some(s), 0, None, Some(7));
        assert_eq!(std::iter::from_fn(|| plan.take(0)).count(), 7);
    }

    /// The method on paper: 1,000 requests/s, one slot (a closed loop of one would behave the
    /// same), 100 µs service, a 200 ms stall at 300 ms. Every request due during the stall
    /// records at least the time left of the stall when it was due; measured from its actual
    /// send it would look fast, hiding the stall in all but one sample.
    #[test]
    fn simulated_stall_shows_only_when_measured_from_the_intended_start() {
        let s = OpenLoopSchedule::for_thread(1000.0, 1, 0);
        let stall = (300_000_000, 500_000_000);
        let reqs = simulate_open_loop(&s, 1000, 1, 100_000, stall);
        let mut corrected: Vec<u64> =
            reqs.iter().map(|r| latency_from_intended_ns(r.intended_ns, r.done_ns)).collect();
        let mut naive: Vec<u64> =
            reqs.iter().map(|r| service_time_ns(r.sent_ns, r.done_ns)).collect();
        for r in &reqs {
            if r.intended_ns >= stall.0 && r.intended_ns < stall.1 {
                assert!(r.done_ns - r.intended_ns >= stall.1 - r.intended_ns);
            }
        }
        corrected.sort_unstable();
        naive.sort_unstable();
        let p99 = |v: &[u64]| v[v.len() * 99 / 100];
        assert!(p99(&corrected) >= 150_000_000, "corrected p99 {}", p99(&corrected));
        assert!(p99(&naive) < 1_000_000, "naive p99 {}", p99(&naive));
        assert!(naive.iter().filter(|&&n| n >= 100_000_000).count() <= 1);
    }
}
