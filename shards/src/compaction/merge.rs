//! The merge policy: what a compaction writes for one key, given every version of it found
//! in the input tables. Pure: a function of the versions' metadata, `now_ms`, the grace period
//! and whether the output is bottommost.
//!
//! # Rules
//! 1. **Newest wins.** Only the newest version (`versions[0]`) can reach the output; every
//!    older version is shadowed by it and dropped.
//! 2. **Tombstones live for `gc_grace_ms`, and die only at the bottom.** A tombstone is dropped
//!    only when it is older than `gc_grace_ms` (by its stamp's wall-clock milliseconds) *and*
//!    the output is bottommost (no table outside the compaction's inputs can hold an older
//!    version of the key). Why both:
//!    - Bottommost: a tombstone's job is to shadow older versions. If a table in a lower level
//!      (or, size-tiered, any table not among the inputs) may still hold an older value of the
//!      key, dropping the tombstone here would make that value visible again: the delete would
//!      be undone. Only when the merge sees every older table for the key range is dropping it
//!      safe.
//!    - Grace: replicas that missed the delete learn of it by read repair or anti-entropy,
//!      which need the tombstone. Dropped too early, a replica that still holds the old value
//!      would repair it back onto this one. Operators must run repair more often than
//!      `gc_grace_ms` (default 72 h; Cassandra's `gc_grace_seconds` plays the same role).
//! 3. **An expired value is a tombstone from its expiry on.** Dropping it outright is wrong
//!    for the same two reasons (it shadows older versions, and replicas need to agree), so an
//!    expired newest value becomes a tombstone with the value's stamp
//!    ([`MergeOutcome::KeepAsTombstone`]) and is dropped when `now_ms - expiry_ms >
//!    gc_grace_ms` at the bottom. Expired *older* versions go by rule 1. The
//!    engine's reads apply the same rule (an expired value reads as deleted at its stamp).
//!
//! A tombstone's time is taken from its stamp: the HLC reading holds wall-clock milliseconds
//! in its high 48 bits ([`stamp_ms`]; this matches `kvs::cluster::hlc::LOGICAL_BITS`). A stamp
//! from the future (clock skew) has age 0 and is kept.

use crate::types::Stamp;

/// Default grace period of tombstones: 72 hours.
pub const GC_GRACE_MS_DEFAULT: u64 = 72 * 3600 * 1000;

/// Bits of the logical counter in an HLC reading (the low bits); the rest is milliseconds.
pub const STAMP_LOGICAL_BITS: u32 = 16;

/// The wall-clock milliseconds of `stamp` (its HLC reading without the logical counter).
pub fn stamp_ms(stamp: Stamp) -> u64 {
    stamp.hlc >> STAMP_LOGICAL_BITS
}

/// What a version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionKind {
    /// A value.
    Value,
    /// A delete.
    Tombstone,
}

/// What the merge policy needs to know of one version of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionMeta {
    /// Its version.
    pub stamp: Stamp,
    /// Value or tombstone.
    pub kind: VersionKind,
    /// When a value expires (wall-clock ms since the epoch); `None` = never. Ignored for
    /// tombstones.
    pub expiry_ms: Option<u64>,
}

/// The circumstances of one compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeContext {
    /// The wall clock, ms since the epoch, read once per compaction.
    pub now_ms: u64,
    /// How long a tombstone must be kept; default [`GC_GRACE_MS_DEFAULT`].
    pub gc_grace_ms: u64,
    /// The plan's `bottommost`: no table outside the inputs may hold an older version.
    pub bottommost: bool,
}

/// What the output gets for the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Write `versions[0]` as it is.
    Keep,
    /// Write a tombstone with `versions[0]`'s stamp (it was a value that expired).
    KeepAsTombstone,
    /// Write nothing for this key.
    Drop,
}

/// Decides what the output keeps of `versions`, the versions of one key from newest to
/// oldest (the merge iterator's order: greater stamp first, tombstone before value on equal
/// stamps). Only `versions[0]` can be kept; see the module doc for the rules.
pub fn merge_versions(versions: &[VersionMeta], ctx: &MergeContext) -> MergeOutcome {
    debug_assert!(
        versions.windows(2).all(|w| matches!(w, [a, b] if a.stamp >= b.stamp)),
        "versions must come newest first"
    );
    let Some(newest) = versions.first() else {
        return MergeOutcome::Drop;
    };
    let older_than_grace =
        |dead_since_ms: u64| ctx.now_ms.saturating_sub(dead_since_ms) > ctx.gc_grace_ms;
    match (newest.kind, newest.expiry_ms) {
        (VersionKind::Tombstone, _) => {
            if ctx.bottommost && older_than_grace(stamp_ms(newest.stamp)) {
                MergeOutcome::Drop
            } else {
                MergeOutcome::Keep
            }
        }
        (VersionKind::Value, Some(expiry_ms)) if expiry_ms <= ctx.now_ms => {
            if ctx.bottommost && older_than_grace(expiry_ms) {
                MergeOutcome::Drop
            } else {
                MergeOutcome::KeepAsTombstone
            }
        }
        (VersionKind::Value, _) => MergeOutcome::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR_MS: u64 = 3600 * 1000;
    const NOW_MS: u64 = 1_700_000_000_000;

    fn at_ms(ms: u64, logical: u64) -> Stamp {
        Stamp { hlc: (ms << STAMP_LOGICAL_BITS) | logical, node: 1 }
    }
    fn value(ms: u64) -> VersionMeta {
        VersionMeta { stamp: at_ms(ms, 0), kind: VersionKind::Value, expiry_ms: None }
    }
    fn expiring(ms: u64, expiry_ms: u64) -> VersionMeta {
        VersionMeta { expiry_ms: Some(expiry_ms), ..value(ms) }
    }
    fn tombstone(ms: u64) -> VersionMeta {
        VersionMeta { stamp: at_ms(ms, 0), kind: VersionKind::Tombstone, expiry_ms: None }
    }

    /// Data-driven cases: (name, versions newest first, bottommost, expected).
    #[test]
    fn compaction_merge_policy_cases() {
        let grace = GC_GRACE_MS_DEFAULT;
        let old = NOW_MS - grace - 1; // beyond grace
        let recent = NOW_MS - HOUR_MS; // within grace
        let cases: Vec<(&str, Vec<VersionMeta>, bool, MergeOutcome)> = vec![
            ("no versions", vec![], true, MergeOutcome::Drop),
            (
                "newest value wins over older value",
                vec![value(recent), value(old)],
                false,
                MergeOutcome::Keep,
            ),
            (
                "newest value wins over older tombstone",
                vec![value(recent), tombstone(old)],
                true,
                MergeOutcome::Keep,
            ),
            (
                "tombstone within grace kept at bottom",
                vec![tombstone(recent), value(old)],
                true,
                MergeOutcome::Keep,
            ),
            (
                "tombstone within grace kept above bottom",
                vec![tombstone(recent)],
                false,
                MergeOutcome::Keep,
            ),
            (
                "tombstone beyond grace dropped at bottom",
                vec![tombstone(old), value(old - 5)],
                true,
                MergeOutcome::Drop,
            ),
            (
                "tombstone beyond grace kept above bottom",
                vec![tombstone(old), value(old - 5)],
                false,
                MergeOutcome::Keep,
            ),
            (
                "tombstone exactly at grace kept",
                vec![tombstone(NOW_MS - grace)],
                true,
                MergeOutcome::Keep,
            ),
            (
                "tombstone from the future kept",
                vec![tombstone(NOW_MS + HOUR_MS)],
                true,
                MergeOutcome::Keep,
            ),
            (
                "value not yet expired kept",
                vec![expiring(recent, NOW_MS + 1)],
                true,
                MergeOutcome::Keep,
            ),
            (
                "expired value dropped at bottom after grace",
                vec![expiring(old - 10, old)],
                true,
                MergeOutcome::Drop,
            ),
            (
                "expired value above bottom becomes a tombstone",
                vec![expiring(old - 10, old), value(old - 20)],
                false,
                MergeOutcome::KeepAsTombstone,
            ),
            (
                "recently expired value becomes a tombstone",
                vec![expiring(recent - 10, recent)],
                true,
                MergeOutcome::KeepAsTombstone,
            ),
            (
                "expired older version is shadowed",
                vec![value(recent), expiring(old - 10, old)],
                false,
                MergeOutcome::Keep,
            ),
        ];
        for (name, versions, bottommost, expected) in cases {
            let ctx = MergeContext { now_ms: NOW_MS, gc_grace_ms: grace, bottommost };
            assert_eq!(merge_versions(&versions, &ctx), expected, "case: {name}");
        }
    }

    #[test]
    fn compaction_merge_stamp_ms_drops_the_logical_counter() {
        assert_eq!(stamp_ms(at_ms(NOW_MS, 0xffff)), NOW_MS);
        // The logical counter never makes a tombstone look older or newer by a millisecond.
        let ctx = MergeContext { now_ms: NOW_MS, gc_grace_ms: 10, bottommost: true };
        let t = VersionMeta { stamp: at_ms(NOW_MS - 10, 0xffff), ..tombstone(0) };
        assert_eq!(merge_versions(&[t], &ctx), MergeOutcome::Keep);
        let t = VersionMeta { stamp: at_ms(NOW_MS - 11, 0xffff), ..tombstone(0) };
        assert_eq!(merge_versions(&[t], &ctx), MergeOutcome::Drop);
    }
}
