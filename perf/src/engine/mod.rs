//! `kvs bench engine`: db_bench-style benchmarks of ONE shard engine, in process, no network.
//!
//! What it is: fillrandom, readrandom, readmissing and overwrite run against a storage engine
//! on one glommio executor, with db_bench's key layout (see [`keys`]), so that the figures can
//! be set next to RocksDB's `db_bench` run with the same key count, sizes and sync setting
//! (`perf/engine_vs_db_bench.sh`, and [`db_bench`] for reading db_bench's output). What it is
//! not: a test of the network path or of more than one shard (that is `kvs bench`).
//!
//! This crate may not depend on `kvs-shards` (ARCHITECTURE.md: `perf -> wire` only), so the
//! engine is reached through the [`EngineUnderTest`] trait; the `kvs` crate implements it for
//! `kvs_shards::Engine` (`src/engine_bench.rs`) and passes an opener to [`exec::run`].
//!
//! # Method
//! - **One executor, `--concurrency` tasks** (default 64). Each task takes the next operation
//!   of the phase, awaits it, records its latency and takes the next. This models a shard
//!   serving many connections: concurrent writes share WAL group commits. db_bench runs one
//!   thread doing one operation at a time (`--threads 1`); the comparison script states this.
//! - **fillrandom** writes every key `0..num` exactly once, in a seeded random order (a
//!   shuffle), like db_bench's `filluniquerandom` (db_bench's own `fillrandom` draws keys with
//!   replacement and leaves about 37% of them unwritten, which would make readrandom miss).
//! - **readrandom** reads `--reads` keys drawn uniformly from `0..num` and verifies each value
//!   ([`keys::verify_value`]); a key not found is a verification error.
//! - **readmissing** reads `--reads` keys that were never written but sort among written ones;
//!   a key found is a verification error.
//! - **overwrite** writes `--writes` keys drawn uniformly from `0..num` with the next value
//!   generation.
//! - Between a write phase and the next phase the engine is left to **settle**: the runner
//!   polls [`EngineUnderTest::background_busy`] (flush or compaction pending) every 10 ms, up to
//!   `--settle-timeout-s`, and reports how long it waited and whether it timed out. With
//!   `--reopen` the engine is then closed and reopened (reads start with a cold block cache,
//!   as db_bench's `--use_existing_db` read phase does).
//! - Latencies go into an HDR histogram in nanoseconds (3 significant digits) and are
//!   reported in µs with decimals, as db_bench prints them. Every operation is timed and
//!   recorded; failed ones count as errors. Throughput is operations / phase wall time.
//! - After each phase the engine's counters are snapshotted; for write phases the report gives
//!   the engine's own write amplification (since open) and, independently, the bytes this
//!   process sent to storage during the phase and its settling (`/proc/self/io`
//!   `write_bytes`) per user byte written (key + value).
//!
//! # Layout
//! - [`keys`]: key layout and self-verifying values (pure).
//! - [`report`]: per-phase figures, the table and the JSON (pure).
//! - [`exec`]: the glommio shell that runs the phases.
//! - [`db_bench`]: parse db_bench's output and compare it with a kvs report (pure).

pub mod db_bench;
pub mod exec;
pub mod keys;
pub mod report;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use exec::run;
pub use report::{EngineReport, PhaseReport};

/// Concurrent tasks at most.
pub const CONCURRENCY_MAX: usize = 4096;
/// Keys at most (the fill order is held in memory: 8 bytes a key).
pub const NUM_MAX: u64 = 1 << 30;
/// Largest value the benchmark writes, bytes.
pub const VALUE_BYTES_MAX: usize = 64 * 1024;
/// Largest key the benchmark writes, bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// The data set must be at least this many times the memtable plus block cache budget, so
/// that reads cannot be served from memory alone (unless `--allow-small`).
pub const DATA_OVER_MEMORY_MIN: u64 = 4;

/// One benchmark, named as db_bench names it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Benchmark {
    /// Write every key once, in random order.
    Fillrandom,
    /// Read existing keys, uniformly at random, and verify the values.
    Readrandom,
    /// Read keys that were never written.
    Readmissing,
    /// Write existing keys again, uniformly at random.
    Overwrite,
}

impl Benchmark {
    /// db_bench's name of the benchmark.
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Fillrandom => "fillrandom",
            Benchmark::Readrandom => "readrandom",
            Benchmark::Readmissing => "readmissing",
            Benchmark::Overwrite => "overwrite",
        }
    }

    /// Whether it writes.
    pub fn writes(self) -> bool {
        matches!(self, Benchmark::Fillrandom | Benchmark::Overwrite)
    }
}

/// When the engine acknowledges a write.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum EngineSync {
    /// After the WAL record is fdatasync'd (group commit). db_bench's `--sync=1`.
    Always,
    /// After the WAL record is written; fdatasync every `--sync-period-ms`. The closest to
    /// db_bench's `--sync=0 --disable_wal=0` (WAL written to the page cache, never fsynced per
    /// write).
    Periodic,
}

/// Flags of `kvs bench engine`. Every flag is documented in `tuning.md`.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineBenchArgs {
    /// The engine's directory; must be absent or empty (the run fills it).
    #[arg(long, default_value = "kvs-bench-engine")]
    pub dir: PathBuf,
    /// Keys written by fillrandom (the data set is num × (key + value) bytes).
    #[arg(long, default_value_t = 1_200_000)]
    pub num: u64,
    /// Key size, bytes (8-byte big-endian index, then padding, as db_bench).
    #[arg(long, default_value_t = 16)]
    pub key_bytes: usize,
    /// Value size, bytes.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Memtable budget, MiB (db_bench --write_buffer_size).
    #[arg(long, default_value_t = 16)]
    pub memtable_mb: u64,
    /// Block cache budget, MiB (db_bench --cache_size); 0 disables it.
    #[arg(long, default_value_t = 16)]
    pub block_cache_mb: u64,
    /// When a write is acknowledged: periodic (db_bench --sync=0) or always (--sync=1).
    #[arg(long, value_enum, default_value = "periodic")]
    pub sync: EngineSync,
    /// fdatasync period of --sync periodic, ms.
    #[arg(long, default_value_t = 10)]
    pub sync_period_ms: u64,
    /// Operations in flight: tasks on the one executor, each with one operation at a time.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Benchmarks to run, in order, comma-separated; fillrandom must come first.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fillrandom,readrandom,readmissing,overwrite"
    )]
    pub benchmarks: Vec<Benchmark>,
    /// Reads per read benchmark [default: --num].
    #[arg(long)]
    pub reads: Option<u64>,
    /// Writes of overwrite [default: --num].
    #[arg(long)]
    pub writes: Option<u64>,
    /// Seed of the fill order and of the read and overwrite key choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Longest wait for background flush and compaction after a write phase, seconds; 0 does
    /// not wait.
    #[arg(long, default_value_t = 600.0)]
    pub settle_timeout_s: f64,
    /// Close and reopen the engine after each write phase (after settling).
    #[arg(long)]
    pub reopen: bool,
    /// Allow a data set smaller than 4 × (memtable + block cache) (smoke tests).
    #[arg(long)]
    pub allow_small: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The validated settings of a run (stored in full in the JSON report).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineBenchConfig {
    pub dir: PathBuf,
    pub num: u64,
    pub key_bytes: usize,
    pub value_bytes: usize,
    pub memtable_bytes_max: u64,
    pub block_cache_bytes: u64,
    pub sync: EngineSync,
    pub sync_period_ms: u64,
    pub concurrency: usize,
    pub benchmarks: Vec<Benchmark>,
    pub reads: u64,
    pub writes: u64,
    pub seed: u64,
    pub settle_timeout_s: f64,
    pub reopen: bool,
    /// num × (key_bytes + value_bytes).
    pub data_bytes: u64,
}

const MIB: u64 = 1024 * 1024;

impl EngineBenchArgs {
    /// Checks the flags and returns the settings; the message says which flag is wrong.
    pub fn to_config(&self) -> Result<EngineBenchConfig, String> {
        if !(1..=NUM_MAX).contains(&self.num) {
            return Err(format!("--num {} is outside 1..={NUM_MAX}", self.num));
        }
        if !(keys::KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&self.key_bytes) {
            return Err(format!(
                "--key-bytes {} is outside {}..={KEY_BYTES_MAX}",
                self.key_bytes,
                keys::KEY_BYTES_MIN
            ));
        }
        if !(keys::VALUE_BYTES_MIN..=VALUE_BYTES_MAX).contains(&self.value_bytes) {
            return Err(format!(
                "--value-bytes {} is outside {}..={VALUE_BYTES_MAX}",
                self.value_bytes,
                keys::VALUE_BYTES_MIN
            ));
        }
        if !(1..=CONCURRENCY_MAX).contains(&self.concurrency) {
            return Err(format!(
                "--concurrency {} is outside 1..={CONCURRENCY_MAX}",
                self.concurrency
            ));
        }
        if self.benchmarks.first() != Some(&Benchmark::Fillrandom) {
            return Err("--benchmarks must start with fillrandom (the reads verify what it \
                        wrote)"
                .into());
        }
        if self.benchmarks.iter().skip(1).any(|b| *b == Benchmark::Fillrandom) {
            return Err("--benchmarks may name fillrandom only once".into());
        }
        if !(self.settle_timeout_s.is_finite() && self.settle_timeout_s >= 0.0) {
            return Err(format!("--settle-timeout-s {} must be 0 or more", self.settle_timeout_s));
        }
        let memtable_bytes_max =
            self.memtable_mb.checked_mul(MIB).ok_or("--memtable-mb too large")?;
        let block_cache_bytes =
            self.block_cache_mb.checked_mul(MIB).ok_or("--block-cache-mb too large")?;
        let data_bytes = self.num * (self.key_bytes + self.value_bytes) as u64;
        let memory = memtable_bytes_max.saturating_add(block_cache_bytes);
        if !self.allow_small && data_bytes < memory.saturating_mul(DATA_OVER_MEMORY_MIN) {
            return Err(format!(
                "the data set ({data_bytes} bytes = --num {} × {} bytes) is below \
                 {DATA_OVER_MEMORY_MIN} × (memtable + block cache) = {} bytes: raise --num to at \
                 least {}, or pass --allow-small",
                self.num,
                self.key_bytes + self.value_bytes,
                memory.saturating_mul(DATA_OVER_MEMORY_MIN),
                memory
                    .saturating_mul(DATA_OVER_MEMORY_MIN)
                    .div_ceil((self.key_bytes + self.value_bytes) as u64)
            ));
        }
        Ok(EngineBenchConfig {
            dir: self.dir.clone(),
            num: self.num,
            key_bytes: self.key_bytes,
            value_bytes: self.value_bytes,
            memtable_bytes_max,
            block_cache_bytes,
            sync: self.sync,
            sync_period_ms: self.sync_period_ms,
            concurrency: self.concurrency,
            benchmarks: self.benchmarks.clone(),
            reads: self.reads.unwrap_or(self.num),
            writes: self.writes.unwrap_or(self.num),
            seed: self.seed,
            settle_timeout_s: self.settle_timeout_s,
            reopen: self.reopen,
            data_bytes,
        })
    }
}

/// The engine's counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineSnapshot {
    /// Every counter by name (the engine's flat view, e.g. `tables`, `l0_tables`,
    /// `flush_bytes_written`, `user_bytes_written`).
    pub counters: BTreeMap<String, u64>,
    /// The engine's write amplification since open (device bytes written per user byte), if
    /// it computes one.
    pub write_amplification: Option<f64>,
}

/// What the benchmark needs from an engine. Implemented by `kvs` for `kvs_shards::Engine`
/// (and by a map in the tests). Methods take `&self` and are called by many tasks at once on
/// one executor; an engine is not `Send`.
#[expect(
    async_fn_in_trait,
    reason = "used by generic code on one executor, never as dyn or across threads"
)]
pub trait EngineUnderTest: 'static {
    /// Stores `value` under `key`; returns once the engine acknowledged it.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String>;
    /// The value of `key`, or `None`.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    /// The engine's counters now.
    fn snapshot(&self) -> EngineSnapshot;
    /// Whether background work (a flush, a compaction, a compaction backlog) is pending.
    fn background_busy(&self) -> bool;
    /// Makes everything durable and closes the engine.
    async fn close(&self) -> Result<(), String>;
}
