//! Compaction: deciding what to merge, what survives a merge, and the merge itself. The engine
//! runs one compaction at a time per shard in a low-share task queue (`engine.rs`).
//!
//! # What is here
//! - [`picker`]: [`pick`] takes the tables per level and [`CompactionOptions`] and returns a
//!   [`CompactionPlan`] (which tables to merge, into which level, why), or `None`. Pure: no
//!   I/O, no clock, so it is tested with data-driven tables of level layouts.
//! - [`merge`]: [`merge_versions`] decides, for the versions of one key met during a merge,
//!   what the output keeps: the newest version, turned into a tombstone, or nothing. Pure.
//!
//! - [`runner`]: [`merge_tables`] reads the inputs in key order, applies [`merge_versions`] per
//!   key and writes output tables split at a target size, paced by a [`RateLimiter`].
//!
//! # What is not
//! Committing the manifest edit, swapping readers and deleting the inputs belong to the engine.
//! The picker assumes one compaction at a time per shard: it does not track tables that are
//! already being compacted.
//!
//! # Data flow
//! manifest state → [`pick`] → plan → runner merges the inputs' entries in key order, calling
//! [`merge_versions`] per key with `plan.bottommost` → output tables → one
//! [`crate::manifest::ManifestEdit::compaction`] → inputs deleted.

pub mod merge;
pub mod picker;
pub mod runner;

pub use merge::{
    merge_versions, stamp_ms, MergeContext, MergeOutcome, VersionKind, VersionMeta,
    GC_GRACE_MS_DEFAULT,
};
pub use picker::{
    level_scores, pick, CompactionOptions, CompactionPlan, CompactionReason, CompactionStyle,
    LevelScore, SizeTieredOptions,
};
pub use runner::{merge_tables, MergeResult, MergeSpec, RateLimiter};
