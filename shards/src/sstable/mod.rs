//! SSTables: immutable sorted tables, one file each, written once by [`SstableBuilder`] and
//! read by [`SstableReader`].
//!
//! # What is here
//! - [`format`]: the byte layout, pure (entries, data blocks, index, footer).
//! - [`SstableBuilder`]: streams sorted entries into a `*.sst.tmp` file with 4 KiB-aligned
//!   direct-I/O writes, then appends the index block, the bloom block and the footer, fsyncs,
//!   renames to `<table id, 20 digits>.sst` and fsyncs the directory.
//! - [`SstableReader`]: opens a table (validates footer, index and bloom), answers point reads
//!   with one positional direct read of one data block, and iterates all entries in order
//!   ([`SstableIter`]) for compaction.
//!
//! # What is not (yet)
//! Compaction does not use it yet (the engine's flush and recovery do). A reader opened with
//! [`SstableReader::open_with_cache`] serves blocks from the shard's
//! [`BlockCache`](crate::cache::BlockCache) and caches each block `get` reads, after its
//! checks; without one every `get` reads its block from disk. Expiry is stored and returned, never applied:
//! the engine decides with its clock. No prefix compression of keys.
//!
//! # Data flow
//! flush / compaction → `SstableBuilder::add` (keys strictly increasing) → data blocks cut at
//! `block_bytes`, optionally zstd-compressed, crc32c each → `finish` → `NNN.sst`.
//! `SstableReader::get(key)`: key range → bloom → index binary search → read one block →
//! crc → decompress → binary search in the block.
//!
//! # Invariants
//! - One entry per key per table, keys strictly increasing (the builder refuses anything
//!   else): a table holds the newest version of each key its source knew, tombstones included.
//! - Every region (data block, index, bloom, footer) is guarded by a crc32c seeded with its
//!   file offset; every length read from disk is bounded before use. Damage is reported as
//!   [`ShardError::Corrupt`] naming the file and the region's offset, never returned as data
//!   and never a panic.
//! - A table becomes visible atomically: written as `*.sst.tmp`, fdatasync'd, renamed, and the
//!   directory fsync'd. A crash before that leaves only the `.tmp` file, which recovery
//!   (`Engine::open`) deletes: a `.tmp` is never read.
//! - Readers and builders are `!Send` and live on one glommio executor.
//!
//! The bytes are drawn in `shards/FORMAT.md` ("SSTable").

mod bloom;
mod builder;
pub mod format;
mod reader;

pub use builder::SstableBuilder;
pub use format::{EntryRef, SstValueRef};
pub use reader::{ReaderStats, SstableIter, SstableReader};

use crate::error::ShardError;
use crate::types::Stamp;

/// The id of a table: names its file, seeds its bloom filter and its footer records it.
/// Assigned by the engine (manifest), never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub u64);

impl TableId {
    /// The table's file name: `<id, 20-digit zero-padded decimal>.sst`.
    pub fn file_name(self) -> String {
        format!("{:020}.sst", self.0)
    }

    /// The name of the table while it is written: `<id>.sst.tmp`.
    pub fn temp_file_name(self) -> String {
        format!("{:020}.sst.tmp", self.0)
    }

    /// Parses a table file name (`<20 digits>.sst`); anything else (`.tmp` included) is `None`.
    pub fn parse_file_name(name: &str) -> Option<TableId> {
        let digits = name.strip_suffix(".sst")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(TableId)
    }
}

/// Whether `name` is a table left unfinished by a crash (`*.sst.tmp`): recovery removes it.
pub fn is_temp_file_name(name: &str) -> bool {
    name.ends_with(".sst.tmp")
}

/// How data blocks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    /// Blocks stored as is.
    #[default]
    None,
    /// Each block is one zstd frame; a block zstd does not shrink is stored as is.
    Zstd {
        /// zstd level, 1..=19 (3 is zstd's default).
        level: i32,
    },
}

/// Settings of a table being built. Readers need none: everything is in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SstableOptions {
    /// Target bytes of an uncompressed data block: a block is cut before an entry would push
    /// it past this, unless the block is empty (one large entry makes one large block).
    /// Default 4096, range [`format::BLOCK_BYTES_MIN`]..=[`format::BLOCK_BYTES_MAX`] (1–64 KiB).
    pub block_bytes: u64,
    /// Block compression. Default [`Compression::None`].
    pub compression: Compression,
    /// Bloom filter bits per expected key: 10 gives about 1% false positives. Default 10,
    /// range 1..=32.
    pub bloom_bits_per_key: u32,
}

impl Default for SstableOptions {
    fn default() -> Self {
        SstableOptions {
            block_bytes: format::BLOCK_BYTES_DEFAULT,
            compression: Compression::None,
            bloom_bits_per_key: 10,
        }
    }
}

impl SstableOptions {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), ShardError> {
        if !(format::BLOCK_BYTES_MIN..=format::BLOCK_BYTES_MAX).contains(&self.block_bytes) {
            return Err(ShardError::InvalidOptions {
                field: "sstable.block_bytes",
                reason: format!(
                    "{} is outside {}..={}",
                    self.block_bytes,
                    format::BLOCK_BYTES_MIN,
                    format::BLOCK_BYTES_MAX
                ),
            });
        }
        if let Compression::Zstd { level } = self.compression {
            if !(1..=19).contains(&level) {
                return Err(ShardError::InvalidOptions {
                    field: "sstable.compression",
                    reason: format!("zstd level {level} is outside 1..=19"),
                });
            }
        }
        if !(1..=32).contains(&self.bloom_bits_per_key) {
            return Err(ShardError::InvalidOptions {
                field: "sstable.bloom_bits_per_key",
                reason: format!("{} is outside 1..=32", self.bloom_bits_per_key),
            });
        }
        Ok(())
    }
}

/// An entry's value, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SstValue {
    /// A value.
    Value(Vec<u8>),
    /// A delete.
    Tombstone,
}

/// One entry of a table, owned (what [`SstableReader::get`] and [`SstableIter`] return).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SstEntry {
    /// The key.
    pub key: Vec<u8>,
    /// Its version.
    pub stamp: Stamp,
    /// Value or tombstone.
    pub value: SstValue,
    /// Expiry in ms since the Unix epoch, if any (stored, not applied).
    pub expires_at_ms: Option<u64>,
}

impl SstEntry {
    /// Borrows the entry in the form the builder takes.
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            key: &self.key,
            stamp: self.stamp,
            value: match &self.value {
                SstValue::Value(v) => SstValueRef::Value(v),
                SstValue::Tombstone => SstValueRef::Tombstone,
            },
            expires_at_ms: self.expires_at_ms,
        }
    }
}

impl From<EntryRef<'_>> for SstEntry {
    fn from(e: EntryRef<'_>) -> Self {
        SstEntry {
            key: e.key.to_vec(),
            stamp: e.stamp,
            value: match e.value {
                SstValueRef::Value(v) => SstValue::Value(v.to_vec()),
                SstValueRef::Tombstone => SstValue::Tombstone,
            },
            expires_at_ms: e.expires_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        let id = TableId(42);
        assert_eq!(id.file_name(), "00000000000000000042.sst");
        assert_eq!(TableId::parse_file_name(&id.file_name()), Some(id));
        assert_eq!(TableId::parse_file_name(&id.temp_file_name()), None);
        assert!(is_temp_file_name(&id.temp_file_name()));
        assert_eq!(TableId::parse_file_name("42.sst"), None);
        assert_eq!(TableId::parse_file_name("9999999999999999999x.sst"), None);
        assert_eq!(TableId::parse_file_name("99999999999999999999.sst"), None, "overflows u64");
    }

    #[test]
    fn options_validate() {
        SstableOptions::default().validate().unwrap();
        for bad in [
            SstableOptions { block_bytes: 512, ..Default::default() },
            SstableOptions { block_bytes: 128 * 1024, ..Default::default() },
            SstableOptions { bloom_bits_per_key: 0, ..Default::default() },
            SstableOptions { compression: Compression::Zstd { level: 0 }, ..Default::default() },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
