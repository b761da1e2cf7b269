//! The harness's own CPU use, from `getrusage(RUSAGE_SELF)`: all threads of this process.
//!
//! A load generator that saturates its cores measures itself, not the server. The report says
//! how much CPU the client used so a reader can tell: near 100% per client thread means more
//! client threads (or another machine) are needed before the figure says anything about kvs.

use std::time::Duration;

/// User and system CPU time used by this process so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: Duration,
    pub sys: Duration,
}

/// CPU time of the whole process so far; zero if the call fails (it cannot for RUSAGE_SELF).
pub fn process_cpu_times() -> CpuTimes {
    // SAFETY: rusage is plain old data (integers and timevals), so all-zero bytes are valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage that outlives the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return CpuTimes::default();
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    CpuTimes { user: tv(usage.ru_utime), sys: tv(usage.ru_stime) }
}

/// CPU used between two readings over `wall` of real time.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct CpuUse {
    pub user_s: f64,
    pub sys_s: f64,
    /// `user_s + sys_s`.
    pub total_s: f64,
    /// The real time the readings span (connect, warm-up and measurement).
    pub wall_s: f64,
    /// `total_s / wall_s` as a percentage of one core (200 = two cores busy).
    pub core_percent: f64,
}

impl CpuUse {
    pub fn between(start: CpuTimes, end: CpuTimes, wall: Duration) -> CpuUse {
        let user_s = end.user.saturating_sub(start.user).as_secs_f64();
        let sys_s = end.sys.saturating_sub(start.sys).as_secs_f64();
        let total_s = user_s + sys_s;
        let wall_s = wall.as_secs_f64();
        let core_percent = if wall_s > 0.0 { 100.0 * total_s / wall_s } else { 0.0 };
        CpuUse { user_s, sys_s, total_s, wall_s, core_percent }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_use_is_a_share_of_one_core() {
        let a = CpuTimes { user: Duration::from_millis(100), sys: Duration::from_millis(50) };
        let b = CpuTimes { user: Duration::from_millis(900), sys: Duration::from_millis(250) };
        let u = CpuUse::between(a, b, Duration::from_secs(2));
        assert!((u.total_s - 1.0).abs() < 1e-9);
        assert!((u.core_percent - 50.0).abs() < 1e-9);
        // Spinning shows up in the process's user time.
        let before = process_cpu_times();
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = process_cpu_times();
        assert!(after.user + after.sys > before.user + before.sys);
    }
}
