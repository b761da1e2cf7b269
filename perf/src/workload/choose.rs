//! Key choosers: which record an operation touches.
//!
//! Three shapes, as in YCSB's `CoreWorkload`:
//!
//! - uniform: every record equally likely ([`Rng::below`]);
//! - [`ScrambledZipfian`]: a few records are hot, and the hot ones are spread over the key space
//!   rather than bunched at the low indexes;
//! - [`SkewedLatest`]: the most recently inserted records are hot.
//!
//! All of them sample with [`Zipfian`], YCSB's port of the algorithm of Gray et al., "Quickly
//! generating billion-record synthetic databases" (SIGMOD 1994): ranks 0 and 1 exactly, every
//! other rank from a closed-form inverse, so a draw costs one `powf` whatever the item count.
//!
//! The choosers are pure: they take the random source and the current item count as arguments
//! and own no shared state, so they are deterministic for a seed and can be tested alone.
//! Invariant: a chooser over `n` items returns an index in `[0, n)`.

/// The skew of every zipfian chooser, YCSB's `ZIPFIAN_CONSTANT`.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// The item count YCSB's scrambled zipfian draws ranks from, whatever the real record count
/// (`ScrambledZipfianGenerator.ITEM_COUNT`).
pub const SCRAMBLED_RANKS: u64 = 10_000_000_000;

/// `zeta(SCRAMBLED_RANKS, ZIPFIAN_THETA)`, precomputed by YCSB (`ScrambledZipfianGenerator.ZETAN`).
/// A test checks it against [`zeta`].
pub const SCRAMBLED_ZETA: f64 = 26.46902820178302;

/// Terms [`zeta`] sums one by one before it switches to the Euler–Maclaurin tail; also the
/// largest growth [`Zipfian::grow_to`] adds term by term. At 1024 the tail's error is below
/// 1e-14, and a full recompute costs about a microsecond.
const ZETA_TERMS_EXACT: u64 = 1024;

/// SplitMix64 (Steele, Lea and Flood, 2014): one 64-bit word of state, one add and a mixing
/// function per draw. Chosen over `rand`'s `StdRng` because its stream is fixed by this code,
/// not by a crate version, so a seed names the same run forever; it passes BigCrush, which is
/// far more than a workload needs.
#[derive(Clone, Debug)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`, with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` by Lemire's multiply-shift. The bias is below `n / 2^64`, far under
    /// anything a run can measure, and there is no rejection loop. `n == 0` gives 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// `sum(1 / i^theta, i = 1..=n)`, the normaliser of a zipfian over `n` items.
///
/// The first `ZETA_TERMS_EXACT` terms are summed; the rest is the Euler–Maclaurin formula
/// with two correction terms, so any `n` (YCSB's 10^10 included) costs about a thousand `powf`
/// instead of `n`. `theta` must be in `(0, 1)`.
pub fn zeta(n: u64, theta: f64) -> f64 {
    assert!(theta > 0.0 && theta < 1.0, "zipfian theta must be in (0, 1), got {theta}");
    let exact_last = n.min(ZETA_TERMS_EXACT - 1);
    let head = zeta_terms(0, exact_last, theta);
    if n <= exact_last {
        return head;
    }
    head + zeta_tail(ZETA_TERMS_EXACT, n, theta)
}

/// `sum(1 / i^theta, i = from+1..=to)`, term by term.
fn zeta_terms(from: u64, to: u64, theta: f64) -> f64 {
    (from + 1..=to).map(|i| (i as f64).powf(-theta)).sum()
}

/// `sum(1 / i^theta, i = m..=n)` by Euler–Maclaurin: the integral, the mean of the end terms,
/// then the `B2` and `B4` corrections. The next term is below `m^-(theta+5)`.
fn zeta_tail(m: u64, n: u64, theta: f64) -> f64 {
    let (m, n) = (m as f64, n as f64);
    let f = |x: f64| x.powf(-theta);
    let f1 = |x: f64| -theta * x.powf(-theta - 1.0);
    let f3 = |x: f64| -theta * (theta + 1.0) * (theta + 2.0) * x.powf(-theta - 3.0);
    let integral = (n.powf(1.0 - theta) - m.powf(1.0 - theta)) / (1.0 - theta);
    integral + (f(m) + f(n)) / 2.0 + (f1(n) - f1(m)) / 12.0 - (f3(n) - f3(m)) / 720.0
}

/// Zipfian ranks over `[0, items)`: rank `r` has probability `1 / ((r+1)^theta * zeta(items))`,
/// so rank 0 is the most popular. YCSB's `ZipfianGenerator`, theta [`ZIPFIAN_THETA`].
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    zeta_items: f64,
    /// `(1 - (2/n)^(1-theta)) / (1 - zeta(2)/zeta(n))`, Gray et al.'s scale of the inverse.
    eta: f64,
}

impl Zipfian {
    /// A zipfian over `items` items (at least 1), its normaliser computed by [`zeta`].
    pub fn new(items: u64) -> Zipfian {
        Zipfian::with_zeta(items, zeta(items, ZIPFIAN_THETA))
    }

    /// A zipfian over `items` items whose normaliser `zeta_items` the caller knows.
    pub fn with_zeta(items: u64, zeta_items: f64) -> Zipfian {
        assert!(items >= 1, "a zipfian needs at least one item");
        let mut zipfian = Zipfian { items, zeta_items, eta: 0.0 };
        zipfian.eta = zipfian.eta_for();
        zipfian
    }

    fn eta_for(&self) -> f64 {
        let theta = ZIPFIAN_THETA;
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        (1.0 - (2.0 / self.items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / self.zeta_items)
    }

    pub fn items(&self) -> u64 {
        self.items
    }

    /// The exact probability of `rank`, which the sampler approximates beyond rank 1.
    pub fn probability(&self, rank: u64) -> f64 {
        ((rank + 1) as f64).powf(-ZIPFIAN_THETA) / self.zeta_items
    }

    /// Widens the zipfian to `items` items. Growth by at most `ZETA_TERMS_EXACT` adds the new
    /// terms to the normaliser (YCSB does the same), so a chooser following a slowly growing
    /// insert counter pays a few `powf` per insert; a larger jump or a shrink recomputes it.
    pub fn grow_to(&mut self, items: u64) {
        if items == self.items {
            return;
        }
        self.zeta_items = if items > self.items && items - self.items <= ZETA_TERMS_EXACT {
            self.zeta_items + zeta_terms(self.items, items, ZIPFIAN_THETA)
        } else {
            zeta(items, ZIPFIAN_THETA)
        };
        self.items = items;
        self.eta = self.eta_for();
    }

    /// A rank in `[0, items)`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let theta = ZIPFIAN_THETA;
        let u = rng.next_f64();
        let uz = u * self.zeta_items;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(theta) {
            return 1.min(self.items - 1);
        }
        let alpha = 1.0 / (1.0 - theta);
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(alpha)) as u64;
        // The float can round up to `items` as `u` nears 1.
        rank.min(self.items - 1)
    }
}

/// YCSB's `ScrambledZipfianGenerator`: a zipfian rank over [`SCRAMBLED_RANKS`] items, hashed
/// with FNV-1a 64 and reduced modulo the record count.
///
/// Why the fixed 10^10 ranks rather than a zipfian over the records themselves: it is what YCSB
/// does (whatever the record count), so results compare with published YCSB figures, and the
/// normaliser is a constant. The price is a milder skew than a pure zipfian over few records:
/// rank 0 has probability `1 / 26.47 = 3.8%`, and the ranks beyond the record count (72% of the
/// mass at 1,000 records, 45% at 1M) fold back spread almost evenly. The tests print the figures.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    items: u64,
    ranks: Zipfian,
}

impl ScrambledZipfian {
    /// A chooser over `[0, items)`, `items` at least 1.
    pub fn new(items: u64) -> ScrambledZipfian {
        assert!(items >= 1, "a chooser needs at least one item");
        ScrambledZipfian { items, ranks: Zipfian::with_zeta(SCRAMBLED_RANKS, SCRAMBLED_ZETA) }
    }

    /// An index in `[0, items)`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        fnv1a64_abs(self.ranks.sample(rng)) % self.items
    }
}

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 little-endian bytes, then Java's `Math.abs` of
/// the signed result (which leaves `i64::MIN` negative; as unsigned that is `2^63`).
fn fnv1a64_abs(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01B3;
    let hash = value
        .to_le_bytes()
        .iter()
        .fold(OFFSET_BASIS, |hash, &octet| (hash ^ u64::from(octet)).wrapping_mul(PRIME));
    (hash as i64).unsigned_abs()
}

/// YCSB's `SkewedLatestGenerator`: `latest - zipfian(latest)`, so the newest record is the most
/// popular and popularity falls with age.
///
/// The item count is passed to every draw (the shared insert counter), and the zipfian widens
/// with it. One deliberate difference from YCSB, which draws `max - zipfian(max)` from
/// `[1, max]` with `max` the last key: this draws `inserted - 1 - zipfian(inserted)`, from
/// `[0, inserted)`, so record 0 can be chosen and nothing past the last insert can.
#[derive(Clone, Debug)]
pub struct SkewedLatest {
    ages: Zipfian,
}

impl SkewedLatest {
    /// A chooser that starts over `inserted` records (at least 1).
    pub fn new(inserted: u64) -> SkewedLatest {
        SkewedLatest { ages: Zipfian::new(inserted) }
    }

    /// An index in `[0, inserted)`, skewed towards `inserted - 1`. `inserted` is at least 1.
    pub fn sample(&mut self, rng: &mut Rng, inserted: u64) -> u64 {
        assert!(inserted >= 1, "the latest chooser needs at least one inserted record");
        self.ages.grow_to(inserted);
        inserted - 1 - self.ages.sample(rng)
    }
}

#[cfg(test)]
mod tests {
    //! Goal: the choosers have the shapes they claim. Method: draw a million samples, compare
    //! frequencies with the closed-form probabilities, and print the figures (`--nocapture`).
    use super::*;

    const SAMPLES: usize = 1_000_000;

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let f = a.next_f64();
            assert!((0.0..1.0).contains(&f));
            assert!(a.below(10) < 10);
            b.next_f64();
            b.below(10);
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert_eq!(Rng::new(3).below(0), 0);
        let mut rng = Rng::new(3);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[rng.below(10) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "below(10) must reach every value");
    }

    #[test]
    fn zeta_tail_formula_matches_the_exact_sum() {
        for n in [1, 2, 3, 1000, 1023, 1024, 1025, 5000, 1_000_000] {
            let exact = zeta_terms(0, n, ZIPFIAN_THETA);
            let fast = zeta(n, ZIPFIAN_THETA);
            let relative = ((fast - exact) / exact).abs();
            assert!(relative < 1e-12, "zeta({n}): exact {exact}, fast {fast}");
        }
    }

    #[test]
    fn zeta_reproduces_ycsb_constant() {
        let computed = zeta(SCRAMBLED_RANKS, ZIPFIAN_THETA);
        println!("zeta(1e10, 0.99): computed {computed}, YCSB {SCRAMBLED_ZETA}");
        assert!((computed - SCRAMBLED_ZETA).abs() < 1e-6);
    }

    #[test]
    fn zipfian_matches_predicted_frequencies_and_falls_with_rank() {
        let zipfian = Zipfian::new(1000);
        let mut rng = Rng::new(42);
        let mut counts = vec![0u64; 1000];
        for _ in 0..SAMPLES {
            counts[zipfian.sample(&mut rng) as usize] += 1;
        }
        for rank in [0u64, 1, 2, 3, 9, 99] {
            let observed = counts[rank as usize] as f64 / SAMPLES as f64;
            let predicted = zipfian.probability(rank);
            println!("zipfian(1000) rank {rank}: observed {observed:.5}, predicted {predicted:.5}");
        }
        // Ranks 0 and 1 are sampled exactly. The rest come from Gray's closed-form inverse,
        // which YCSB uses too and which over-weights the low ranks after 1 (rank 2 by ~17%).
        for (rank, tolerance) in [(0u64, 0.02), (1, 0.03), (2, 0.20), (3, 0.20), (9, 0.10)] {
            let observed = counts[rank as usize] as f64 / SAMPLES as f64;
            let predicted = zipfian.probability(rank);
            assert!(
                (observed / predicted - 1.0).abs() < tolerance,
                "rank {rank}: observed {observed}, predicted {predicted}"
            );
        }
        // Strictly decreasing over the head, where counts are far apart compared with noise.
        for rank in 0..8 {
            assert!(counts[rank] > counts[rank + 1], "rank {rank}: {counts:?}");
        }
        // Over the whole range, by the mean count per rank in doubling buckets.
        let means: Vec<f64> = (0..9)
            .map(|k| {
                let bucket = &counts[(1usize << k) - 1..(1usize << (k + 1)) - 1];
                bucket.iter().sum::<u64>() as f64 / bucket.len() as f64
            })
            .collect();
        println!("zipfian(1000) mean count per rank, buckets [2^k-1, 2^(k+1)-1): {means:.0?}");
        assert!(means.windows(2).all(|w| w[0] > w[1]), "{means:?}");
    }

    #[test]
    fn zipfian_never_leaves_its_range() {
        let mut rng = Rng::new(5);
        for items in [1u64, 2, 3, 10] {
            let zipfian = Zipfian::new(items);
            for _ in 0..10_000 {
                assert!(zipfian.sample(&mut rng) < items);
            }
        }
    }

    /// Share of the draws that went to the most drawn `top` items.
    fn head_share(counts: &[u32], top: usize) -> f64 {
        let mut sorted = counts.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let total: u64 = sorted.iter().map(|&c| u64::from(c)).sum();
        sorted.iter().take(top).map(|&c| u64::from(c)).sum::<u64>() as f64 / total as f64
    }

    #[test]
    fn scrambled_zipfian_keeps_a_heavy_head() {
        let mut rng = Rng::new(9);
        // 1,000 records: the folded tail flattens the head (see the type's doc).
        let small = ScrambledZipfian::new(1000);
        let mut counts = vec![0u32; 1000];
        for _ in 0..SAMPLES {
            counts[small.sample(&mut rng) as usize] += 1;
        }
        let top_item = head_share(&counts, 1);
        let top_1pct = head_share(&counts, 10);
        let top_10pct = head_share(&counts, 100);
        println!(
            "scrambled zipfian(1000): top item {top_item:.4}, top 1% {top_1pct:.4}, top 10% \
             {top_10pct:.4} (uniform: 0.001, 0.01, 0.1)"
        );
        // Rank 0 alone is 1/26.47 = 3.78%; its item also gets ~0.07% of folded tail.
        assert!((0.035..0.045).contains(&top_item), "{top_item}");
        assert!(top_1pct > 0.10, "{top_1pct}");
        assert!(top_10pct > 0.25, "{top_10pct}");

        // 1M records, the size of a real run: the top 1% takes over 30%.
        let large = ScrambledZipfian::new(1_000_000);
        let mut counts = vec![0u32; 1_000_000];
        for _ in 0..SAMPLES {
            counts[large.sample(&mut rng) as usize] += 1;
        }
        let top_1pct = head_share(&counts, 10_000);
        let hit = counts.iter().filter(|&&c| c > 0).count();
        println!("scrambled zipfian(1M): top 1% {top_1pct:.4}, items drawn at least once {hit}");
        assert!(top_1pct > 0.30, "{top_1pct}");
        // Scrambled: the hot items are not the low indexes.
        let low_share =
            counts[..10_000].iter().map(|&c| u64::from(c)).sum::<u64>() as f64 / SAMPLES as f64;
        println!("scrambled zipfian(1M): share of indexes [0, 10000): {low_share:.4}");
        assert!(low_share < 0.05, "{low_share}");
    }

    #[test]
    fn fnv_matches_ycsb() {
        // FNV-1a 64 of eight zero bytes, as Java's fnvhash64(0) computes it.
        let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
        for _ in 0..8 {
            hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
        }
        assert_eq!(fnv1a64_abs(0), (hash as i64).unsigned_abs());
        assert_ne!(fnv1a64_abs(1), fnv1a64_abs(2));
    }

    #[test]
    fn latest_favours_recent_records_and_never_passes_the_last() {
        let mut rng = Rng::new(11);
        let mut latest = SkewedLatest::new(1000);
        let mut newest_10 = 0usize;
        let mut newest_1 = 0usize;
        for _ in 0..SAMPLES {
            let index = latest.sample(&mut rng, 1000);
            assert!(index < 1000);
            newest_10 += usize::from(index >= 990);
            newest_1 += usize::from(index == 999);
        }
        let share_10 = newest_10 as f64 / SAMPLES as f64;
        let share_1 = newest_1 as f64 / SAMPLES as f64;
        let predicted_1 = Zipfian::new(1000).probability(0);
        println!(
            "latest(1000): newest key {share_1:.4} (predicted {predicted_1:.4}), newest 10 keys \
             {share_10:.4} (uniform 0.01)"
        );
        assert!((share_1 / predicted_1 - 1.0).abs() < 0.02);
        assert!(share_10 > 0.35, "{share_10}");

        // As inserts arrive, draws follow the counter and never pass it.
        let mut inserted = 1;
        let mut latest = SkewedLatest::new(inserted);
        for step in 0..200_000u64 {
            if step % 20 == 0 {
                inserted += 1 + step % 3;
            }
            if step == 100_000 {
                inserted += 50_000; // a jump: full recompute
            }
            assert!(latest.sample(&mut rng, inserted) < inserted);
        }
        let grown = latest.ages.zeta_items;
        let direct = zeta(inserted, ZIPFIAN_THETA);
        assert!(((grown - direct) / direct).abs() < 1e-9, "grown {grown}, direct {direct}");
    }
}
