//! Phi-accrual failure detection (Hayashibara et al. 2004, as in Akka and Cassandra).
//!
//! A detector does not answer "up or down"; it answers how sure it is that a peer is gone:
//! `phi(now) = -log10(P(the next heartbeat arrives later than now - last))`. phi 1 means a 10%
//! chance of a false suspicion, phi 8 (the default threshold) one in 10^8. The probability comes
//! from the peer's own recent history, so a peer whose heartbeats arrive irregularly (a long
//! gossip path, a busy host) is given more slack than one that ticks like a clock.
//!
//! # Model: a normal distribution, not Cassandra's exponential
//! Each peer keeps a bounded window (default [`WINDOW_DEFAULT`] samples) of inter-arrival times,
//! with integer running sums, so mean and standard deviation cost O(1) per arrival. phi uses a
//! normal distribution with that mean and deviation, through the logistic approximation of its
//! tail that Akka uses (`1 / (1 + e^(y(1.5976 + 0.070566 y^2)))`, within 1e-4 of the true CDF).
//! Cassandra's exponential model (`phi = t / mean * log10 e`) ignores the deviation: it
//! crosses 8 only after `8 ln 10 = 18.4` mean intervals whatever the history (about 18 s at a 1 s
//! gossip interval), and jitter cannot widen it. The normal model detects a steady peer within a
//! few intervals and still tolerates a jittery one, which is the point of accrual detection.
//! Its weakness, overconfidence when heartbeats are too regular, is bounded as in Akka by a
//! minimum standard deviation ([`PhiOptions::min_std_dev_ms`]) and a constant acceptable pause
//! added to the mean ([`PhiOptions::acceptable_pause_ms`]).
//!
//! For a steady heartbeat every `i` ms, phi reaches the threshold after a silence of
//! `i + pause + y8 * max(sd, min_sd)`, where `y8` solves
//! `y (1.5976 + 0.070566 y^2) = threshold * ln 10` ([`silence_for_phi_ms`]); with the defaults
//! (1000 ms, 2000 ms, 250 ms, phi 8) that is about 4.3 s.
//!
//! # Bootstrap
//! The first heartbeat of a peer gives no interval yet. It seeds the window with two samples,
//! [`PhiOptions::bootstrap_interval_ms`] plus and minus a quarter of it (Akka's first-heartbeat
//! estimate), so phi is defined from the first beat on and those guesses wash out as real
//! samples arrive.
//!
//! # Not here
//! No clock: every call takes `now_ms`, milliseconds on any monotonic clock the caller chooses.
//! Intervals of 0 ms (two updates observed at the same instant) move `last` but add no sample.

use super::OptionsError;

/// The default phi above which a peer is considered down.
pub const THRESHOLD_DEFAULT: f64 = 8.0;
/// Samples kept per peer unless configured otherwise.
pub const WINDOW_DEFAULT: u32 = 1000;
/// Upper bound on the window (memory per peer is 4 bytes per sample).
pub const WINDOW_MAX: u32 = 100_000;
/// Intervals are clamped to this before they enter the window, which keeps the integer sum of
/// squares far from overflow (`WINDOW_MAX * INTERVAL_MS_MAX^2 < 2^64`).
pub const INTERVAL_MS_MAX: u32 = 3_600_000;
const _: () = assert!(
    (WINDOW_MAX as u128) * (INTERVAL_MS_MAX as u128) * (INTERVAL_MS_MAX as u128) < u64::MAX as u128
);

/// Settings of the detector. One set for all peers of a node.
#[derive(Clone, Debug, PartialEq)]
pub struct PhiOptions {
    /// phi at or above which the peer is down. Default 8 (one false suspicion in 10^8).
    pub threshold: f64,
    /// Inter-arrival samples kept per peer. Default 1000.
    pub window_max: u32,
    /// Floor of the standard deviation, in ms, so a perfectly regular peer is not declared down
    /// the moment one heartbeat is late. Default 250 ms.
    pub min_std_dev_ms: u32,
    /// Silence, in ms, that is always tolerated on top of the mean interval (GC pauses, a slow
    /// gossip path). Default 2000 ms.
    pub acceptable_pause_ms: u32,
    /// The interval assumed before any is measured: the gossip interval. Default 1000 ms.
    pub bootstrap_interval_ms: u32,
}

impl Default for PhiOptions {
    fn default() -> PhiOptions {
        PhiOptions {
            threshold: THRESHOLD_DEFAULT,
            window_max: WINDOW_DEFAULT,
            min_std_dev_ms: 250,
            acceptable_pause_ms: 2000,
            bootstrap_interval_ms: 1000,
        }
    }
}

impl PhiOptions {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let invalid =
            |field, reason: &str| Err(OptionsError::Invalid { field, reason: reason.into() });
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return invalid("threshold", "must be a positive number");
        }
        if self.window_max < 2 || self.window_max > WINDOW_MAX {
            return invalid("window_max", "must be in 2..=100000");
        }
        if self.min_std_dev_ms == 0 {
            return invalid("min_std_dev_ms", "must be at least 1 ms");
        }
        if self.bootstrap_interval_ms < 4 || self.bootstrap_interval_ms > INTERVAL_MS_MAX {
            return invalid("bootstrap_interval_ms", "must be in 4..=3600000");
        }
        Ok(())
    }
}

/// The arrival history of one peer.
#[derive(Clone, Debug)]
pub struct ArrivalWindow {
    /// When the last heartbeat was observed, in the caller's ms.
    last_ms: u64,
    /// Ring buffer of intervals; grows to `window_max` and then overwrites the oldest. Grown
    /// lazily so that a node tracking a thousand short-lived peers stays small.
    samples: Vec<u32>,
    /// Index of the oldest sample once the buffer is full.
    head: usize,
    sum: u64,
    sum_sq: u64,
}

impl ArrivalWindow {
    /// A window whose first heartbeat was observed at `now_ms`, seeded with the bootstrap guess.
    pub fn new(now_ms: u64, options: &PhiOptions) -> ArrivalWindow {
        let mut w =
            ArrivalWindow { last_ms: now_ms, samples: Vec::new(), head: 0, sum: 0, sum_sq: 0 };
        let guess = options.bootstrap_interval_ms;
        w.push(guess + guess / 4, options.window_max);
        w.push(guess - guess / 4, options.window_max);
        w
    }

    /// Records a heartbeat observed at `now_ms`.
    pub fn heartbeat(&mut self, now_ms: u64, options: &PhiOptions) {
        let interval_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        if interval_ms > 0 {
            let clamped = u32::try_from(interval_ms).unwrap_or(u32::MAX).min(INTERVAL_MS_MAX);
            self.push(clamped, options.window_max);
        }
    }

    fn push(&mut self, interval_ms: u32, window_max: u32) {
        let x = u64::from(interval_ms);
        if self.samples.len() < window_max as usize {
            self.samples.push(interval_ms);
        } else {
            let old = u64::from(std::mem::replace(&mut self.samples[self.head], interval_ms));
            self.sum -= old;
            self.sum_sq -= old * old;
            self.head = (self.head + 1) % self.samples.len();
        }
        self.sum += x;
        self.sum_sq += x * x;
    }

    /// When the last heartbeat was observed.
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }

    /// Samples in the window.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the window holds no samples (never true after [`ArrivalWindow::new`]).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Mean interval in ms.
    pub fn mean_ms(&self) -> f64 {
        self.sum as f64 / self.samples.len().max(1) as f64
    }

    /// Population standard deviation of the intervals in ms (before the floor is applied).
    pub fn std_dev_ms(&self) -> f64 {
        let n = self.samples.len().max(1) as f64;
        let mean = self.sum as f64 / n;
        (self.sum_sq as f64 / n - mean * mean).max(0.0).sqrt()
    }

    /// phi at `now_ms`: 0 right after a heartbeat, growing with silence.
    pub fn phi(&self, now_ms: u64, options: &PhiOptions) -> f64 {
        let silence_ms = now_ms.saturating_sub(self.last_ms) as f64;
        let mean = self.mean_ms() + f64::from(options.acceptable_pause_ms);
        let sd = self.std_dev_ms().max(f64::from(options.min_std_dev_ms));
        phi_normal(silence_ms, mean, sd)
    }

    /// Whether phi at `now_ms` is at or above the threshold.
    pub fn is_down(&self, now_ms: u64, options: &PhiOptions) -> bool {
        self.phi(now_ms, options) >= options.threshold
    }
}

/// phi of a silence of `silence_ms` under a normal distribution of intervals with `mean_ms` and
/// `sd_ms`, by Akka's logistic approximation of the tail.
pub fn phi_normal(silence_ms: f64, mean_ms: f64, sd_ms: f64) -> f64 {
    let y = (silence_ms - mean_ms) / sd_ms;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if silence_ms > mean_ms {
        // P(later) = e / (1 + e), so phi = (-ln e + ln(1 + e)) / ln 10; -ln e is written out so
        // that a huge silence (e underflows to 0) stays finite.
        (y * (1.5976 + 0.070566 * y * y) + e.ln_1p()) / std::f64::consts::LN_10
    } else {
        // P(later) = 1 - 1 / (1 + e) = e / (1 + e) too, but e may overflow to infinity here.
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// The silence in ms after which [`phi_normal`] reaches `phi`: `mean + y * sd`, with `y` the
/// root of the (monotone) approximation, found by bisection.
pub fn silence_for_phi_ms(phi: f64, mean_ms: f64, sd_ms: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0_f64, 40.0_f64);
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if phi_normal(mean_ms + mid * sd_ms, mean_ms, sd_ms) < phi {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    mean_ms + hi * sd_ms
}

#[cfg(test)]
mod tests {
    //! Goal: phi grows with silence, stays low right after a beat, crosses the threshold when the
    //! formula says, and gives jittery peers more slack. Method: feed synthetic arrival times.
    use super::*;

    fn steady(interval_ms: u64, beats: u64, options: &PhiOptions) -> ArrivalWindow {
        let mut w = ArrivalWindow::new(0, options);
        for i in 1..=beats {
            w.heartbeat(i * interval_ms, options);
        }
        w
    }

    /// The root of `0.070566 y^3 + 1.5976 y = c` by Cardano's formula (independent of the
    /// bisection in the module).
    fn cardano_root(c: f64) -> f64 {
        let p = 1.5976 / 0.070566;
        let q = -c / 0.070566;
        let d = (q * q / 4.0 + p * p * p / 27.0).sqrt();
        (-q / 2.0 + d).cbrt() + (-q / 2.0 - d).cbrt()
    }

    #[test]
    fn phi_grows_with_silence() {
        let o = PhiOptions::default();
        let w = steady(1000, 50, &o);
        let last = w.last_ms();
        let mut prev = -1.0;
        for t in (0..20_000).step_by(100) {
            let phi = w.phi(last + t, &o);
            assert!(phi >= prev, "phi fell from {prev} to {phi} at +{t} ms");
            assert!(phi.is_finite());
            prev = phi;
        }
        assert!(w.phi(last + 1_000_000_000, &o).is_finite());
    }

    #[test]
    fn steady_heartbeat_crosses_threshold_when_the_formula_says() {
        let o = PhiOptions::default();
        // Enough beats to push the bootstrap samples out of the window: sd falls to the floor.
        let w = steady(1000, u64::from(o.window_max) + 10, &o);
        assert_eq!(w.len(), o.window_max as usize);
        assert_eq!(w.mean_ms(), 1000.0);
        assert_eq!(w.std_dev_ms(), 0.0);
        let last = w.last_ms();
        assert!(w.phi(last, &o) < 1.0);
        assert!(w.phi(last + 1000, &o) < 1.0, "the next beat is due: no suspicion yet");

        // phi = 8 <=> e / (1 + e) = 1e-8 <=> y (1.5976 + 0.070566 y^2) = ln((1 - 1e-8) / 1e-8).
        let y8 = cardano_root(((1.0 - 1e-8) / 1e-8_f64).ln());
        assert!((y8 - 5.22).abs() < 0.01, "y8 = {y8}");
        let expected_ms =
            1000.0 + f64::from(o.acceptable_pause_ms) + y8 * f64::from(o.min_std_dev_ms);
        let crossing_ms = (0..60_000).find(|&t| w.is_down(last + t, &o)).expect("crosses") as f64;
        assert!(
            (crossing_ms - expected_ms).abs() <= 1.0,
            "crossed at {crossing_ms}, formula {expected_ms}"
        );
        let solved = silence_for_phi_ms(8.0, 1000.0 + f64::from(o.acceptable_pause_ms), 250.0);
        assert!((solved - expected_ms).abs() < 0.01, "{solved} vs {expected_ms}");
        assert!((4200.0..4400.0).contains(&crossing_ms));
    }

    #[test]
    fn jitter_raises_the_tolerance() {
        let o = PhiOptions::default();
        let regular = steady(1000, 200, &o);
        // Same 1 s mean, but alternating 200 ms and 1800 ms: sd 800 ms.
        let mut jittery = ArrivalWindow::new(0, &o);
        let mut t = 0;
        for i in 0..200 {
            t += if i % 2 == 0 { 200 } else { 1800 };
            jittery.heartbeat(t, &o);
        }
        assert!((jittery.mean_ms() - regular.mean_ms()).abs() < 10.0);
        let silence = 4500;
        let phi_regular = regular.phi(regular.last_ms() + silence, &o);
        let phi_jittery = jittery.phi(jittery.last_ms() + silence, &o);
        assert!(
            phi_regular >= 8.0 && phi_jittery < 3.0,
            "regular {phi_regular}, jittery {phi_jittery}"
        );
        let down_after = |w: &ArrivalWindow| (0..60_000).find(|&s| w.is_down(w.last_ms() + s, &o));
        assert!(down_after(&jittery) > down_after(&regular));
    }

    #[test]
    fn bootstrap_defines_phi_from_the_first_beat() {
        let o = PhiOptions::default();
        let w = ArrivalWindow::new(5000, &o);
        assert_eq!(w.len(), 2);
        assert_eq!(w.mean_ms(), 1000.0);
        assert!(w.phi(5000, &o) < 0.1);
        assert!(w.is_down(5000 + 10_000, &o));
    }

    #[test]
    fn window_is_bounded_and_sums_stay_exact() {
        let o = PhiOptions { window_max: 10, ..PhiOptions::default() };
        let mut w = ArrivalWindow::new(0, &o);
        let mut t = 0;
        for i in 0..1000u64 {
            t += 500 + (i % 7) * 100;
            w.heartbeat(t, &o);
            w.heartbeat(t, &o); // Same instant: no sample.
        }
        assert_eq!(w.len(), 10);
        let direct: f64 = w.samples.iter().map(|&s| f64::from(s)).sum::<f64>() / 10.0;
        assert_eq!(w.mean_ms(), direct);
    }

    #[test]
    fn options_are_validated() {
        assert!(PhiOptions::default().validate().is_ok());
        assert!(PhiOptions { threshold: 0.0, ..PhiOptions::default() }.validate().is_err());
        assert!(PhiOptions { window_max: 1, ..PhiOptions::default() }.validate().is_err());
        assert!(PhiOptions { min_std_dev_ms: 0, ..PhiOptions::default() }.validate().is_err());
    }
}
