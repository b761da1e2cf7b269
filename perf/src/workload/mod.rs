//! Workload generation: YCSB-style operation mixes, key choosers and self-verifying values.
//!
//! A run is described by a [`WorkloadSpec`]. The runner builds one [`SharedKeys`] per run and
//! one [`Generator`] per task (each with its own seed); every task then loops on
//! [`Generator::next_op`], turns the [`Op`]'s index into bytes with [`Generator::key`] and,
//! for writes, [`Generator::value`], and checks what it reads with [`verify_value`] and
//! [`Generator::must_exist`].
//!
//! This module decides *what* to send; it does no I/O and knows nothing of drivers, timing or
//! histograms. Generators are deterministic for a seed, except where they read the shared
//! insert counter, whose order depends on how tasks interleave.
//!
//! Invariants:
//! - records `[0, records)` are the loaded ones; `load` hands out each exactly once, across all
//!   generators, through the one atomic counter in [`SharedKeys`];
//! - a chosen index is below the number of records inserted (handed out) so far;
//! - workload `D` inserts fresh indexes from `records` upward, through the same counter;
//! - `delete-mix` deletes only [`deletable`] indexes, so every other loaded record must always
//!   be found;
//! - [`Generator::next_op`] takes no lock and allocates nothing.
//!
//! Submodules: [`choose`] (random source and key choosers), `key` (index → bytes), `value`
//! (self-verifying values).

pub mod choose;
mod key;
mod value;

pub use key::{index_of, key_of, write_key, KEY_BYTES_MIN};
pub use value::{make_value, verify_value, write_value, VerifyError, VALUE_HEADER_BYTES};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use choose::{Rng, ScrambledZipfian, SkewedLatest};

/// The largest key or value size a spec may ask for: the wire's hard bound on a frame body.
/// The server's configured limits (`--key-bytes-max`, `--value-bytes-max`) are usually lower
/// and are its to enforce.
pub const ITEM_BYTES_MAX: usize = kvs_wire::limits::FRAME_BODY_BYTES_MAX as usize;

/// `delete-mix` deletes and re-inserts only the indexes with this remainder modulo
/// [`DELETABLE_EVERY`].
pub const DELETABLE_REMAINDER: u64 = 3;
/// One index in this many is deletable in `delete-mix`.
pub const DELETABLE_EVERY: u64 = 4;

const _: () = assert!(VALUE_HEADER_BYTES <= ITEM_BYTES_MAX);
const _: () = assert!(ITEM_BYTES_MAX <= u32::MAX as usize, "value length field is 32 bits");
const _: () = assert!(DELETABLE_REMAINDER < DELETABLE_EVERY);

/// The workload of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// Insert records 0..records once each (YCSB load phase).
    Load,
    /// 50% read, 50% update.
    A,
    /// 95% read, 5% update.
    B,
    /// 100% read.
    C,
    /// 95% read (latest distribution), 5% insert.
    D,
    /// 50% read, 50% read-modify-write.
    F,
    /// 100% update (put).
    Write,
    /// 50% read, 25% update, 25% delete; deletes touch only the deletable quarter of the keys
    /// (index % 4 == 3), so every other loaded key must always be found.
    DeleteMix,
}

impl WorkloadKind {
    /// The operation mix: each kind with its share in percent, the shares summing to 100.
    /// `Load` is 100% insert but is bounded by the record count rather than drawn.
    pub fn mix(self) -> &'static [(OpKind, u32)] {
        use OpKind::*;
        match self {
            WorkloadKind::Load => &[(Insert, 100)],
            WorkloadKind::A => &[(Read, 50), (Update, 50)],
            WorkloadKind::B => &[(Read, 95), (Update, 5)],
            WorkloadKind::C => &[(Read, 100)],
            WorkloadKind::D => &[(Read, 95), (Insert, 5)],
            WorkloadKind::F => &[(Read, 50), (ReadModifyWrite, 50)],
            WorkloadKind::Write => &[(Update, 100)],
            WorkloadKind::DeleteMix => &[(Read, 50), (Update, 25), (Delete, 25)],
        }
    }
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    Uniform,
    /// Scrambled zipfian, theta 0.99, as YCSB's ScrambledZipfianGenerator.
    Zipfian,
    /// Skewed towards the most recently inserted keys, as YCSB's SkewedLatestGenerator.
    Latest,
}

/// One kind of operation, reported separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    Read,
    Update,
    Insert,
    ReadModifyWrite,
    Delete,
}

impl OpKind {
    pub const ALL: [OpKind; 5] =
        [OpKind::Read, OpKind::Update, OpKind::Insert, OpKind::ReadModifyWrite, OpKind::Delete];

    /// Lower-case name for tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::ReadModifyWrite => "read-modify-write",
            OpKind::Delete => "delete",
        }
    }
}

/// Value size: fixed (`100`) or a uniform range (`100-200`), bytes.
///
/// Both bounds are at least [`VALUE_HEADER_BYTES`] (a value carries a 16-byte header) and at
/// most [`ITEM_BYTES_MAX`]; parsing refuses anything else, so every size drawn is honoured
/// exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ValueSize {
    pub min: usize,
    pub max: usize,
}

impl ValueSize {
    /// Checks the bounds described on the type.
    pub fn validate(self) -> Result<(), String> {
        if self.min > self.max {
            return Err(format!("value size range {self} has min above max"));
        }
        if self.min < VALUE_HEADER_BYTES {
            return Err(format!(
                "value size {self} is below {VALUE_HEADER_BYTES} bytes, the size of the \
                 verification header every value carries"
            ));
        }
        if self.max > ITEM_BYTES_MAX {
            return Err(format!(
                "value size {self} is above the frame limit of {ITEM_BYTES_MAX} bytes"
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for ValueSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl std::str::FromStr for ValueSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = |part: &str| {
            part.trim().parse::<usize>().map_err(|e| {
                format!("value size {s:?}: {part:?} is not a byte count ({e}); expected BYTES or MIN-MAX")
            })
        };
        let size = match s.split_once('-') {
            None => {
                let n = bytes(s)?;
                ValueSize { min: n, max: n }
            }
            Some((min, max)) => ValueSize { min: bytes(min)?, max: bytes(max)? },
        };
        size.validate()?;
        Ok(size)
    }
}

/// Everything that defines the operations of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkloadSpec {
    pub kind: WorkloadKind,
    /// Records loaded (or to load).
    pub records: u64,
    pub distribution: Distribution,
    pub key_size: usize,
    pub value_size: ValueSize,
}

impl WorkloadSpec {
    /// Checks what [`Generator::new`] asserts: a key size in `[KEY_BYTES_MIN, ITEM_BYTES_MAX]`,
    /// a valid value size, at least one record, and for `delete-mix` at least
    /// [`DELETABLE_EVERY`] records so that one is deletable.
    pub fn validate(&self) -> Result<(), String> {
        if !(KEY_BYTES_MIN..=ITEM_BYTES_MAX).contains(&self.key_size) {
            return Err(format!(
                "key size {} is outside [{KEY_BYTES_MIN}, {ITEM_BYTES_MAX}] bytes",
                self.key_size
            ));
        }
        self.value_size.validate()?;
        if self.records == 0 {
            return Err("the record count must be at least 1".to_string());
        }
        if self.kind == WorkloadKind::DeleteMix && self.records < DELETABLE_EVERY {
            return Err(format!(
                "delete-mix needs at least {DELETABLE_EVERY} records (one in {DELETABLE_EVERY} \
                 is deletable), got {}",
                self.records
            ));
        }
        Ok(())
    }
}

/// Whether `delete-mix` may delete (and so re-insert) record `index`: one index in four.
pub fn deletable(index: u64) -> bool {
    index % DELETABLE_EVERY == DELETABLE_REMAINDER
}

/// State shared by every generator of a run (all threads): the insert counter that `load`, `D`
/// and the latest chooser advance.
#[derive(Debug)]
pub struct SharedKeys {
    records: u64,
    /// The next index to hand out for insertion: 0 for `load`, `records` for the other
    /// workloads (whose records are loaded already). Only `fetch_add` and `load` touch it,
    /// `Relaxed`: it publishes no other memory, it only has to hand out each value once.
    next_insert: AtomicU64,
    /// `load` overshoots `next_insert` once per generator call after the last record; reads
    /// of the counter are capped here (`records` for load, unbounded otherwise).
    insert_end: u64,
}

impl SharedKeys {
    pub fn new(spec: &WorkloadSpec) -> Arc<SharedKeys> {
        let (first, insert_end) = match spec.kind {
            WorkloadKind::Load => (0, spec.records),
            _ => (spec.records, u64::MAX),
        };
        Arc::new(SharedKeys {
            records: spec.records,
            next_insert: AtomicU64::new(first),
            insert_end,
        })
    }

    /// Indexes handed out for insertion so far: the records `[0, inserted)` are loaded or on
    /// their way. Handed out is not acknowledged: the newest few inserts may still be in flight
    /// (YCSB's acknowledged counter would close that gap at the cost of a lock), so a read of
    /// an index at or above `records` may miss, and [`Generator::must_exist`] says so.
    pub fn inserted(&self) -> u64 {
        self.next_insert.load(Ordering::Relaxed).min(self.insert_end)
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Hands out the next insert index.
    fn take_insert(&self) -> u64 {
        self.next_insert.fetch_add(1, Ordering::Relaxed)
    }
}

/// One operation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub kind: OpKind,
    pub key_index: u64,
}

/// Where the keys of non-insert operations come from.
#[derive(Clone, Debug)]
enum KeyChooser {
    /// Uniform over `[0, records)`: only `D` inserts, and `D` always uses `Latest`.
    Uniform,
    Zipfian(ScrambledZipfian),
    /// Over the shared insert counter.
    Latest(SkewedLatest),
}

/// A per-task operation generator (seeded, deterministic for a seed).
pub struct Generator {
    kind: WorkloadKind,
    records: u64,
    key_size: usize,
    value_size: ValueSize,
    shared: Arc<SharedKeys>,
    rng: Rng,
    chooser: KeyChooser,
}

impl Generator {
    /// # Panics
    /// If `spec` fails [`WorkloadSpec::validate`] (the runner validates first), or `shared`
    /// was built for another record count.
    pub fn new(spec: &WorkloadSpec, shared: Arc<SharedKeys>, seed: u64) -> Generator {
        if let Err(e) = spec.validate() {
            panic!("invalid workload spec: {e}");
        }
        assert_eq!(shared.records, spec.records, "SharedKeys built for another spec");
        // D reads the latest records whatever --distribution says, as YCSB's workload D does.
        let distribution =
            if spec.kind == WorkloadKind::D { Distribution::Latest } else { spec.distribution };
        let chooser = match distribution {
            Distribution::Uniform => KeyChooser::Uniform,
            Distribution::Zipfian => KeyChooser::Zipfian(ScrambledZipfian::new(spec.records)),
            Distribution::Latest => KeyChooser::Latest(SkewedLatest::new(shared.inserted().max(1))),
        };
        Generator {
            kind: spec.kind,
            records: spec.records,
            key_size: spec.key_size,
            value_size: spec.value_size,
            shared,
            rng: Rng::new(seed),
            chooser,
        }
    }

    /// The next operation. For `Load`, `None` once every record has been handed out.
    pub fn next_op(&mut self) -> Option<Op> {
        if self.kind == WorkloadKind::Load {
            let key_index = self.shared.take_insert();
            return (key_index < self.records).then_some(Op { kind: OpKind::Insert, key_index });
        }
        let kind = self.draw_kind();
        let key_index = match kind {
            OpKind::Insert => self.shared.take_insert(),
            OpKind::Delete => deletable_near(self.choose_index(), self.records),
            OpKind::Read | OpKind::Update | OpKind::ReadModifyWrite => self.choose_index(),
        };
        Some(Op { kind, key_index })
    }

    /// Draws an operation kind by the workload's mix.
    fn draw_kind(&mut self) -> OpKind {
        let mix = self.kind.mix();
        let mut draw = self.rng.below(100) as u32;
        for &(kind, share_percent) in mix {
            if draw < share_percent {
                return kind;
            }
            draw -= share_percent;
        }
        unreachable!("the shares of {:?} sum to 100", self.kind)
    }

    fn choose_index(&mut self) -> u64 {
        match &mut self.chooser {
            KeyChooser::Uniform => self.rng.below(self.records),
            KeyChooser::Zipfian(zipfian) => zipfian.sample(&mut self.rng),
            KeyChooser::Latest(latest) => latest.sample(&mut self.rng, self.shared.inserted()),
        }
    }

    /// Whether a read of `key_index` that finds nothing is a verification error (the key was
    /// loaded and this workload never deletes it).
    ///
    /// True for every index below `records`, except in `delete-mix` for the [`deletable`] ones
    /// (index % 4 == 3), which may have been deleted. False at or above `records`: those are
    /// `D`'s inserts, which may still be in flight when another task reads them.
    pub fn must_exist(&self, key_index: u64) -> bool {
        let loaded = key_index < self.records;
        match self.kind {
            WorkloadKind::DeleteMix => loaded && !deletable(key_index),
            _ => loaded,
        }
    }

    /// The bytes of key `index`, `key_size` bytes.
    pub fn key(&self, index: u64) -> Vec<u8> {
        key_of(index, self.key_size)
    }

    /// [`Generator::key`] into a reused buffer.
    pub fn key_into(&self, index: u64, out: &mut Vec<u8>) {
        out.resize(self.key_size, 0);
        write_key(index, out);
    }

    /// A fresh value for `key` (size drawn from the spec's ValueSize).
    pub fn value(&mut self, key: &[u8]) -> Vec<u8> {
        let mut value = Vec::new();
        self.value_into(key, &mut value);
        value
    }

    /// [`Generator::value`] into a reused buffer. The size is uniform in `[min, max]`; the
    /// nonce is the next random word, so successive writes of one key differ.
    pub fn value_into(&mut self, key: &[u8], out: &mut Vec<u8>) {
        let spread = (self.value_size.max - self.value_size.min) as u64;
        let size = self.value_size.min + self.rng.below(spread + 1) as usize;
        let nonce = self.rng.next_u64();
        write_value(key, size, nonce, out);
    }
}

/// The deletable index closest above `index` (`index | 3` for groups of four), or the one in
/// the group below when that passes the last record. `records >= DELETABLE_EVERY`, so the
/// group below exists whenever it is needed.
fn deletable_near(index: u64, records: u64) -> u64 {
    let up = index - index % DELETABLE_EVERY + DELETABLE_REMAINDER;
    if up < records {
        up
    } else {
        up - DELETABLE_EVERY
    }
}

#[cfg(test)]
mod tests {
    //! Goal: generators produce the mixes, key ranges and insert hand-outs the spec promises.
    //! Method: draw 200k operations per workload from seeded generators and count; run the load
    //! hand-out on four threads sharing one counter. Figures print with `--nocapture`.
    use super::*;
    use std::collections::BTreeMap;

    fn spec(kind: WorkloadKind, records: u64, distribution: Distribution) -> WorkloadSpec {
        WorkloadSpec {
            kind,
            records,
            distribution,
            key_size: 16,
            value_size: ValueSize { min: 100, max: 100 },
        }
    }

    fn generator(spec: &WorkloadSpec, seed: u64) -> Generator {
        Generator::new(spec, SharedKeys::new(spec), seed)
    }

    #[test]
    fn mixes_match_their_proportions() {
        const OPS: usize = 200_000;
        use WorkloadKind::*;
        for kind in [A, B, C, D, F, Write, DeleteMix] {
            for distribution in [Distribution::Uniform, Distribution::Zipfian] {
                let mut generator = generator(&spec(kind, 10_000, distribution), 1);
                let mut counts: BTreeMap<OpKind, usize> = BTreeMap::new();
                for _ in 0..OPS {
                    *counts.entry(generator.next_op().expect("not load").kind).or_default() += 1;
                }
                let shares: Vec<String> = counts
                    .iter()
                    .map(|(op, n)| format!("{} {:.4}", op.name(), *n as f64 / OPS as f64))
                    .collect();
                println!("{kind:?} ({distribution:?}): {}", shares.join(", "));
                let expected_total: u32 = kind.mix().iter().map(|&(_, share)| share).sum();
                assert_eq!(expected_total, 100);
                assert_eq!(counts.len(), kind.mix().len(), "{kind:?}: {counts:?}");
                for &(op, share_percent) in kind.mix() {
                    let observed = counts.get(&op).copied().unwrap_or(0) as f64 / OPS as f64;
                    let expected = f64::from(share_percent) / 100.0;
                    assert!((observed - expected).abs() < 0.01, "{kind:?} {op:?}: {observed}");
                }
            }
        }
    }

    #[test]
    fn chosen_keys_stay_in_range() {
        for distribution in [Distribution::Uniform, Distribution::Zipfian, Distribution::Latest] {
            let mut generator = generator(&spec(WorkloadKind::A, 777, distribution), 2);
            let mut max = 0;
            for _ in 0..100_000 {
                let op = generator.next_op().expect("not load");
                assert!(op.key_index < 777, "{distribution:?}: {op:?}");
                assert!(generator.must_exist(op.key_index));
                max = max.max(op.key_index);
            }
            assert!(max > 700, "{distribution:?} reaches the top of the range: {max}");
        }
    }

    #[test]
    fn generators_are_deterministic_per_seed() {
        let spec = spec(WorkloadKind::DeleteMix, 1000, Distribution::Zipfian);
        let (mut a, mut b, mut c) =
            (generator(&spec, 9), generator(&spec, 9), generator(&spec, 10));
        let ops_a: Vec<Op> = (0..1000).filter_map(|_| a.next_op()).collect();
        let ops_b: Vec<Op> = (0..1000).filter_map(|_| b.next_op()).collect();
        let ops_c: Vec<Op> = (0..1000).filter_map(|_| c.next_op()).collect();
        assert_eq!(ops_a, ops_b);
        assert_ne!(ops_a, ops_c);
        assert_eq!(a.value(b"k"), b.value(b"k"));
    }

    #[test]
    fn load_hands_out_each_index_once_across_four_threads() {
        const RECORDS: u64 = 200_000;
        let spec = spec(WorkloadKind::Load, RECORDS, Distribution::Uniform);
        let shared = SharedKeys::new(&spec);
        // The barrier starts the threads together, so their hand-outs interleave.
        let start = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|seed| {
                let mut generator = Generator::new(&spec, Arc::clone(&shared), seed);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let mut indexes = Vec::new();
                    while let Some(op) = generator.next_op() {
                        assert_eq!(op.kind, OpKind::Insert);
                        indexes.push(op.key_index);
                    }
                    // Exhausted stays exhausted.
                    assert_eq!(generator.next_op(), None);
                    indexes
                })
            })
            .collect();
        let per_thread: Vec<Vec<u64>> =
            handles.into_iter().map(|h| h.join().expect("load thread")).collect();
        let sizes: Vec<usize> = per_thread.iter().map(Vec::len).collect();
        println!("load of {RECORDS} over 4 generators: {sizes:?}");
        let mut all: Vec<u64> = per_thread.into_iter().flatten().collect();
        all.sort_unstable();
        assert_eq!(all, (0..RECORDS).collect::<Vec<u64>>());
        assert_eq!(shared.inserted(), RECORDS);
    }

    #[test]
    fn delete_mix_never_deletes_a_key_that_must_exist() {
        for records in [4, 5, 7, 1000, 1003] {
            for distribution in [Distribution::Uniform, Distribution::Zipfian, Distribution::Latest]
            {
                let mut generator =
                    generator(&spec(WorkloadKind::DeleteMix, records, distribution), 3);
                let mut deletes = 0;
                for _ in 0..20_000 {
                    let op = generator.next_op().expect("not load");
                    assert!(op.key_index < records, "{op:?}");
                    if op.kind == OpKind::Delete {
                        deletes += 1;
                        assert!(deletable(op.key_index), "{op:?}");
                        assert!(!generator.must_exist(op.key_index), "{op:?}");
                    }
                }
                assert!(deletes > 0);
            }
        }
        let generator = generator(&spec(WorkloadKind::DeleteMix, 100, Distribution::Uniform), 3);
        let must: Vec<bool> = (0..8).map(|i| generator.must_exist(i)).collect();
        assert_eq!(must, [true, true, true, false, true, true, true, false]);
        assert!(!generator.must_exist(100));
        assert_eq!(deletable_near(0, 4), 3);
        assert_eq!(deletable_near(5, 6), 3);
        assert_eq!(deletable_near(5, 8), 7);
    }

    #[test]
    fn d_inserts_fresh_keys_and_reads_recent_ones() {
        const RECORDS: u64 = 10_000;
        // --distribution uniform is overridden: D reads the latest records.
        let spec = spec(WorkloadKind::D, RECORDS, Distribution::Uniform);
        let shared = SharedKeys::new(&spec);
        let mut generator = Generator::new(&spec, Arc::clone(&shared), 4);
        let mut next_insert = RECORDS;
        let (mut reads, mut recent_reads) = (0u64, 0u64);
        for _ in 0..200_000 {
            let op = generator.next_op().expect("not load");
            match op.kind {
                OpKind::Insert => {
                    assert_eq!(op.key_index, next_insert);
                    assert!(!generator.must_exist(op.key_index));
                    next_insert += 1;
                }
                OpKind::Read => {
                    assert!(op.key_index < shared.inserted(), "{op:?}");
                    reads += 1;
                    recent_reads += u64::from(op.key_index + 100 >= shared.inserted());
                }
                other => panic!("D does not {other:?}"),
            }
        }
        assert_eq!(shared.inserted(), next_insert);
        let recent = recent_reads as f64 / reads as f64;
        println!(
            "D: {} inserts, share of reads on the newest 100 of ~{} records: {recent:.4}",
            next_insert - RECORDS,
            shared.inserted()
        );
        assert!(recent > 0.4, "{recent}");
    }

    #[test]
    fn keys_and_values_follow_the_spec() {
        let mut spec = spec(WorkloadKind::A, 100, Distribution::Uniform);
        spec.key_size = 24;
        spec.value_size = ValueSize { min: 20, max: 30 };
        let mut generator = generator(&spec, 5);
        assert_eq!(generator.key(7), key_of(7, 24));
        let mut reused = Vec::new();
        generator.key_into(7, &mut reused);
        assert_eq!(reused, generator.key(7));
        let mut sizes = [0usize; 31];
        for i in 0..10_000 {
            let key = generator.key(i % 100);
            let value = generator.value(&key);
            assert_eq!(verify_value(&key, &value), Ok(()));
            sizes[value.len()] += 1;
        }
        assert!(sizes[..20].iter().all(|&n| n == 0));
        assert!(sizes[20..].iter().all(|&n| n > 0), "every size in [20, 30]: {sizes:?}");
    }

    #[test]
    fn value_size_parses_and_refuses_clearly() {
        assert_eq!("100".parse(), Ok(ValueSize { min: 100, max: 100 }));
        assert_eq!("100-200".parse(), Ok(ValueSize { min: 100, max: 200 }));
        assert_eq!(" 16 - 16 ".parse(), Ok(ValueSize { min: 16, max: 16 }));
        for bad in
            ["", "abc", "-5", "100-", "-100", "1-2-3", "200-100", "15", "8-100", "10-12", "1e3"]
        {
            let err = bad.parse::<ValueSize>().expect_err(bad);
            assert!(!err.is_empty());
            println!("{bad:?}: {err}");
        }
        assert!("200-100".parse::<ValueSize>().unwrap_err().contains("min above max"));
        assert!("8".parse::<ValueSize>().unwrap_err().contains("header"));
        assert!(format!("{}", ITEM_BYTES_MAX + 1).parse::<ValueSize>().is_err());
        for size in [ValueSize { min: 16, max: 16 }, ValueSize { min: 100, max: 4096 }] {
            assert_eq!(size.to_string().parse(), Ok(size));
        }
    }

    #[test]
    fn spec_validation_refuses_what_generators_cannot_run() {
        let good = spec(WorkloadKind::DeleteMix, 4, Distribution::Uniform);
        assert_eq!(good.validate(), Ok(()));
        let mut bad = good.clone();
        bad.key_size = 7;
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.records = 3;
        assert!(bad.validate().is_err());
        let mut bad = good.clone();
        bad.kind = WorkloadKind::A;
        bad.records = 0;
        assert!(bad.validate().is_err());
        let mut bad = good;
        bad.value_size = ValueSize { min: 200, max: 100 };
        assert!(bad.validate().is_err());
    }
}
