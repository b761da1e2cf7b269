//! Compaction: deciding what to merge, and what survives a merge. Not yet used by the engine
//! (the runner that carries plans out comes with the engine wiring).
//!
//! # What is here
//! - [`picker`]: [`pick`] takes the tables per level and [`CompactionOptions`] and returns a
//!   [`CompactionPlan`] (which tables to merge, into which level, why), or `None`. Pure: no
//!   I/O, no clock, so it is tested with data-driven tables of level layouts.
//! - [`merge`]: [`merge_versions`] decides, for the versions of one key met during a merge,
//!   what the output keeps: the newest version, turned into a tombstone, or nothing. Pure.
//!
//! # What is not
//! Reading input tables, writing output tables, committing the manifest edit and deleting the
//! inputs belong to the compaction runner (a glommio task in a low-share task queue, next
//! increment). The picker assumes one compaction at a time per shard: it does not track tables
//! that are already being compacted.
//!
//! # Data flow (once wired)
//! manifest state → [`pick`] → plan → runner merges the inputs' entries in key order, calling
//! [`merge_versions`] per key with `plan.bottommost` → output tables → one
//! [`crate::manifest::ManifestEdit::compaction`] → inputs deleted.

pub mod merge;
pub mod picker;

pub use merge::{
    merge_versions, stamp_ms, MergeContext, MergeOutcome, VersionKind, VersionMeta,
    GC_GRACE_MS_DEFAULT,
};
pub use picker::{
    level_scores, pick, CompactionOptions, CompactionPlan, CompactionReason, CompactionStyle,
    LevelScore, SizeTieredOptions,
};
