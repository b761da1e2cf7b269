//! kvs-shards: the per-core storage engine of one shard.
//!
//! # What is here
//! - [`Engine`]: the shard's API for the node: `open` (manifest, tables, WAL replay), `put`,
//!   `put_with_expiry` (per-key TTL as an absolute expiry), `delete`, `get`, `scan_page`
//!   (paged scan of the whole key space, [`ScanPage`]), `stats`, `close`; memtable freeze and
//!   background flush to SSTables.
//! - [`Clock`]: the wall clock reads judge expiry by (manual in tests).
//! - [`memtable`]: the sorted in-memory table, last-write-wins by [`Stamp`].
//! - [`wal`]: segment naming, the WAL record payload and recovery. Framing, checksums and group
//!   commit come from kvs-io.
//! - [`ShardOptions`] / [`SyncMode`], [`limits`], [`ShardError`].
//!
//! # What is not
//! No networking, no cluster knowledge (this crate may use kvs-io only). Each engine has a
//! [`cache::BlockCache`] of data blocks (`ShardOptions::block_cache_bytes`) and one background
//! [`compaction`] task (leveled by default, size-tiered as an option).
//!
//! # Data flow
//! `put`/`delete` → WAL record appended to the current segment → group commit (one fdatasync
//! for many writers) → memtable insert → acknowledged. A full memtable is frozen (the WAL rolls
//! at the same moment) and flushed by a background task to a level-0 SSTable, committed in the
//! manifest, after which the WAL segments it covers are removed; a background compaction merges
//! tables down the levels. `get` reconciles memtable,
//! frozen memtable and tables by stamp. `open` opens the manifest and its tables and replays
//! the WAL segments from the flushed position into a fresh memtable. The on-disk bytes and the
//! directory layout are drawn in `shards/FORMAT.md`.
//!
//! # Invariants
//! - An acknowledged write is in the WAL, fdatasync'd in [`SyncMode::Always`] (written to the
//!   file in [`SyncMode::Periodic`]), before the call returns.
//! - Last write wins by ([`Stamp`], tombstone over value, greater value): the result does not
//!   depend on completion or replay order.
//! - A value whose expiry has passed reads as a tombstone at its stamp wherever it is stored
//!   (memtable or SSTable), so it still shadows older versions.
//! - Only the newest WAL segment may have a torn tail (nothing valid past the last write
//!   window); recovery truncates it, reports it, and seals the segment. Every older segment
//!   must end with a matching seal. Damage anywhere else is an error naming the file and
//!   offset.
//! - The engine is `!Send` and runs on one glommio executor.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::host_endian_bytes
    )
)]

pub mod cache;
mod clock;
pub mod compaction;
mod engine;
mod error;
pub mod limits;
pub mod manifest;
pub mod memtable;
mod options;
pub mod sstable;
mod stats;
mod types;
pub mod wal;

pub use clock::Clock;
pub use engine::{Engine, ScanPage};
pub use error::ShardError;
pub use options::{ShardOptions, SyncMode};
pub use stats::{EngineStats, LevelStats};
pub use types::{Lookup, Stamp};
pub use wal::recovery::{RecoveryReport, TornTail};
