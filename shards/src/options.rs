//! [`ShardOptions`]: every setting of one shard engine, with defaults, units and `validate`.

use crate::compaction::CompactionOptions;
use crate::limits;
use crate::sstable::SstableOptions;
use crate::{Clock, ShardError};
use std::path::PathBuf;

/// When a write is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// After its WAL record is fdatasync'd (shared with concurrent writes by group commit).
    /// Survives power loss.
    #[default]
    Always,
    /// After its WAL record is written to the file; the WAL is fdatasync'd every
    /// `sync_period_ms`. Survives a process crash; a power loss may take the last period.
    Periodic,
}

/// Settings of one shard engine.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardOptions {
    /// This shard's own directory, e.g. `DATA/shard-0`; created if missing. The WAL lives in
    /// `<dir>/wal/`. Default `./kvs-data/shard-0`.
    pub dir: PathBuf,
    /// When writes are acknowledged. Default [`SyncMode::Always`].
    pub sync: SyncMode,
    /// Milliseconds between WAL fdatasyncs in [`SyncMode::Periodic`]. Default 10; range
    /// 1..=[`limits::SYNC_PERIOD_MS_MAX`].
    pub sync_period_ms: u64,
    /// WAL segment size in bytes; a write that does not fit rolls to a new segment. Default
    /// 64 MiB; a multiple of 4096 in
    /// [`limits::WAL_SEGMENT_BYTES_MIN`]..=[`limits::WAL_SEGMENT_BYTES_MAX`].
    pub wal_segment_bytes: u64,
    /// Memtable budget in bytes: a write that finds the memtable at this size freezes it and
    /// a background task flushes it to an SSTable; with one flush running, memory stays near
    /// twice this. Default 64 MiB; at least [`limits::MEMTABLE_BYTES_MIN`].
    pub memtable_bytes_max: u64,
    /// Budget of the shard's block cache (verified, decompressed SSTable data blocks), in
    /// bytes. Default 64 MiB; 0 disables the cache (every table read goes to disk).
    pub block_cache_bytes: u64,
    /// Settings of the tables flushes and compactions write (block size, compression, Bloom
    /// bits per key). Default: 4 KiB blocks, no compression, 10 bits per key.
    pub sstable: SstableOptions,
    /// Compaction: style, level sizes, output size, I/O rate, tombstone grace, write stall.
    pub compaction: CompactionOptions,
    /// Where reads take "now" when they decide whether a value has expired (see
    /// [`crate::Clock`]). Default [`Clock::System`]; tests use [`Clock::manual`].
    pub clock: Clock,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            dir: PathBuf::from("kvs-data/shard-0"),
            sync: SyncMode::Always,
            sync_period_ms: 10,
            wal_segment_bytes: 64 * 1024 * 1024,
            memtable_bytes_max: 64 * 1024 * 1024,
            block_cache_bytes: 64 * 1024 * 1024,
            sstable: SstableOptions::default(),
            compaction: CompactionOptions::default(),
            clock: Clock::System,
        }
    }
}

impl ShardOptions {
    /// Checks every field against its range.
    pub fn validate(&self) -> Result<(), ShardError> {
        let bad = |field, reason: String| Err(ShardError::InvalidOptions { field, reason });
        if self.dir.as_os_str().is_empty() {
            return bad("dir", "must not be empty".to_owned());
        }
        if !(1..=limits::SYNC_PERIOD_MS_MAX).contains(&self.sync_period_ms) {
            return bad(
                "sync_period_ms",
                format!("{} is outside 1..={}", self.sync_period_ms, limits::SYNC_PERIOD_MS_MAX),
            );
        }
        let seg = self.wal_segment_bytes;
        if !(limits::WAL_SEGMENT_BYTES_MIN..=limits::WAL_SEGMENT_BYTES_MAX).contains(&seg)
            || !seg.is_multiple_of(kvs_io::BLOCK_BYTES)
        {
            return bad(
                "wal_segment_bytes",
                format!(
                    "{seg} must be a multiple of {} in {}..={}",
                    kvs_io::BLOCK_BYTES,
                    limits::WAL_SEGMENT_BYTES_MIN,
                    limits::WAL_SEGMENT_BYTES_MAX
                ),
            );
        }
        if self.memtable_bytes_max < limits::MEMTABLE_BYTES_MIN {
            return bad(
                "memtable_bytes_max",
                format!(
                    "{} is below the minimum {}",
                    self.memtable_bytes_max,
                    limits::MEMTABLE_BYTES_MIN
                ),
            );
        }
        // `block_cache_bytes`: any value is valid (u64, so >= 0); 0 disables the cache.
        self.sstable.validate()?;
        self.compaction.validate()
    }

    /// The log writer settings these options imply.
    pub(crate) fn log_writer_options(&self) -> kvs_io::LogWriterOptions {
        kvs_io::LogWriterOptions {
            durability: match self.sync {
                SyncMode::Always => kvs_io::Durability::Always,
                SyncMode::Periodic => {
                    kvs_io::Durability::Periodic { period_ms: self.sync_period_ms }
                }
            },
            capacity_bytes: self.wal_segment_bytes,
            pending_bytes_max: limits::WAL_PENDING_BYTES_MAX,
            write_bytes_max: limits::WAL_WRITE_BYTES_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bounds_are_enforced() {
        let ok = ShardOptions::default();
        ok.validate().unwrap();
        assert_eq!(ok.block_cache_bytes, 64 * 1024 * 1024);
        ShardOptions { block_cache_bytes: 0, ..ok.clone() }.validate().unwrap();
        assert_eq!(ok.sync, SyncMode::Always);
        assert_eq!(ok.sync_period_ms, 10);
        for bad in [
            ShardOptions { sync_period_ms: 0, ..ok.clone() },
            ShardOptions { wal_segment_bytes: 4096, ..ok.clone() },
            ShardOptions { wal_segment_bytes: limits::WAL_SEGMENT_BYTES_MIN + 1, ..ok.clone() },
            ShardOptions { memtable_bytes_max: 1, ..ok.clone() },
            ShardOptions { dir: PathBuf::new(), ..ok.clone() },
        ] {
            assert!(matches!(bad.validate(), Err(ShardError::InvalidOptions { .. })));
        }
    }
}
