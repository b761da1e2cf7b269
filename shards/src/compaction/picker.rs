//! The compaction picker: given the tables per level, which tables to merge next. Pure.
//!
//! # Leveled (default)
//! Level `i >= 1` has a target size `level_size_base_bytes * level_size_multiplier^(i-1)`;
//! its score is `size / target`. Level 0 is counted in files instead.
//! 1. If level 0 holds at least `level0_file_trigger` tables: merge **all** of level 0 with
//!    every level-1 table that overlaps their combined key range, into level 1.
//! 2. Otherwise take the level `1 <= i < max_levels - 1` with the highest score, if that score
//!    is at least 1 (ties go to the upper level): merge its **oldest** table (lowest id) with
//!    the tables of level `i + 1` it overlaps, into level `i + 1`. Compaction outputs get new
//!    (greater) ids, so "oldest first" walks through a level's key space much like a
//!    round-robin cursor, without state to keep. The last level is never a source.
//! 3. Otherwise nothing.
//!
//! # Size-tiered
//! All tables live in level 0. They are sorted by size and put into buckets: a table joins the
//! current bucket when its size is within `[bucket_low, bucket_high]` times the bucket's
//! average size, else it starts a new one. The fullest bucket with at least `min_threshold`
//! tables is merged (ties: the bucket of smaller tables, cheaper), at most `max_threshold` of
//! its smallest tables, into level 0.
//!
//! # Bottommost
//! [`CompactionPlan::bottommost`] tells the merge ([`super::merge`]) whether tombstones may be
//! dropped: it is true when no table that may hold older data than the inputs overlaps their
//! key range. Leveled: no table in a level below `output_level` (upper levels hold only newer
//! data). Size-tiered: no table outside the inputs at all (ages mix within level 0).

use crate::manifest::{TableId, TableMeta, LEVELS_MAX};

/// Settings of size-tiered compaction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeTieredOptions {
    /// Fewest tables in a bucket worth merging. Default 4, at least 2.
    pub min_threshold: u32,
    /// Most tables merged at once. Default 32, at least `min_threshold`.
    pub max_threshold: u32,
    /// A table joins a bucket whose average size times this is at most its size. Default 0.5.
    pub bucket_low: f64,
    /// ... and whose average size times this is at least its size. Default 1.5.
    pub bucket_high: f64,
}

impl Default for SizeTieredOptions {
    fn default() -> Self {
        SizeTieredOptions { min_threshold: 4, max_threshold: 32, bucket_low: 0.5, bucket_high: 1.5 }
    }
}

/// How tables are organized.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum CompactionStyle {
    /// Levels of growing size, non-overlapping below level 0 (default).
    #[default]
    Leveled,
    /// Everything in level 0; tables of similar size are merged.
    SizeTiered(SizeTieredOptions),
}

/// Settings of the picker. (They join `ShardOptions` when compaction is wired in.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompactionOptions {
    /// Leveled or size-tiered. Default leveled.
    pub style: CompactionStyle,
    /// Level-0 tables that trigger a level 0 → 1 compaction. Default 4, at least 1.
    pub level0_file_trigger: u32,
    /// Target size of level 1. Default 64 MiB, at least 1.
    pub level_size_base_bytes: u64,
    /// Each level's target is this times the previous one's. Default 10, at least 2.
    pub level_size_multiplier: u64,
    /// Number of levels used, `2..=LEVELS_MAX`. Default 7.
    pub max_levels: u8,
    /// Whether the engine compacts in the background on its own. Default true; false leaves
    /// only explicit compactions (`Engine::compact`), for tests and bulk loads.
    pub auto: bool,
    /// A compaction output is finished once it reaches this many bytes (leveled; size-tiered
    /// writes one output). Default 32 MiB, at least 64 KiB.
    pub output_table_bytes: u64,
    /// Input bytes per second one compaction may read (and so, roughly, write); 0 =
    /// unlimited. Default 256 MiB/s.
    pub rate_bytes_per_s: u64,
    /// How long a tombstone (or an expired value) is kept before a bottommost compaction may
    /// drop it, in ms. Default 72 h ([`super::GC_GRACE_MS_DEFAULT`]).
    pub gc_grace_ms: u64,
    /// Writes wait for compaction while level 0 holds this many tables (leveled only, and
    /// only while compaction is healthy); 0 = never. Default 36: a backstop that keeps reads
    /// from degrading without bound when writes outrun compaction.
    pub level0_stop_writes_trigger: u32,
}

impl Default for CompactionOptions {
    fn default() -> Self {
        CompactionOptions {
            style: CompactionStyle::Leveled,
            level0_file_trigger: 4,
            level_size_base_bytes: 64 * 1024 * 1024,
            level_size_multiplier: 10,
            max_levels: 7,
            auto: true,
            output_table_bytes: 32 * 1024 * 1024,
            rate_bytes_per_s: 256 * 1024 * 1024,
            gc_grace_ms: super::GC_GRACE_MS_DEFAULT,
            level0_stop_writes_trigger: 36,
        }
    }
}

impl CompactionOptions {
    /// Checks every field's range; `Err` names the field.
    pub fn validate(&self) -> Result<(), crate::ShardError> {
        let bad = |field: &'static str, reason: String| {
            Err(crate::ShardError::InvalidOptions { field, reason })
        };
        if self.level0_file_trigger < 1 {
            return bad("level0_file_trigger", "must be at least 1".into());
        }
        if self.level_size_base_bytes < 1 {
            return bad("level_size_base_bytes", "must be at least 1".into());
        }
        if self.level_size_multiplier < 2 {
            return bad("level_size_multiplier", "must be at least 2".into());
        }
        if !(2..=LEVELS_MAX).contains(&self.max_levels) {
            return bad("max_levels", format!("must be in 2..={LEVELS_MAX}"));
        }
        if self.output_table_bytes < 64 * 1024 {
            return bad("output_table_bytes", "must be at least 64 KiB".into());
        }
        if self.level0_stop_writes_trigger != 0
            && self.level0_stop_writes_trigger <= self.level0_file_trigger
        {
            return bad(
                "level0_stop_writes_trigger",
                "must be 0 or above level0_file_trigger".into(),
            );
        }
        if let CompactionStyle::SizeTiered(st) = self.style {
            if st.min_threshold < 2 {
                return bad("min_threshold", "must be at least 2".into());
            }
            if st.max_threshold < st.min_threshold {
                return bad("max_threshold", "must be at least min_threshold".into());
            }
            if !(st.bucket_low > 0.0 && st.bucket_low <= 1.0) {
                return bad("bucket_low", "must be in (0, 1]".into());
            }
            if !(st.bucket_high >= 1.0 && st.bucket_high.is_finite()) {
                return bad("bucket_high", "must be finite and at least 1".into());
            }
        }
        Ok(())
    }

    /// The target size of level `level >= 1` (saturating). Level 0 has no byte target.
    pub fn target_bytes(&self, level: u8) -> u64 {
        let mut target = self.level_size_base_bytes;
        for _ in 1..level {
            target = target.saturating_mul(self.level_size_multiplier);
        }
        target
    }
}

/// Why a plan was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompactionReason {
    /// Asked for (`Engine::compact`): every table into one bottommost run.
    Manual {
        /// Tables merged.
        tables: u64,
    },
    /// Level 0 reached its file trigger.
    Level0Files {
        /// Tables in level 0.
        files: u64,
        /// The trigger.
        trigger: u64,
    },
    /// A level outgrew its target.
    LevelSize {
        /// The source level.
        level: u8,
        /// Its size.
        size_bytes: u64,
        /// Its target.
        target_bytes: u64,
    },
    /// A size-tiered bucket reached `min_threshold` tables.
    SizeTiered {
        /// Tables in the bucket.
        bucket_tables: u64,
        /// The bucket's average table size.
        bucket_avg_bytes: u64,
    },
}

/// A pure decision: merge `inputs` into new tables at `output_level`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactionPlan {
    /// The tables to merge: source level first (level 0 oldest first), then the overlapping
    /// tables of the output level in key order.
    pub inputs: Vec<TableId>,
    /// Where the outputs go.
    pub output_level: u8,
    /// Why.
    pub reason: CompactionReason,
    /// Whether the merge may drop tombstones past their grace period (module doc).
    pub bottommost: bool,
}

/// One level's size and score (leveled).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LevelScore {
    /// The level.
    pub level: u8,
    /// Tables in it.
    pub tables: u64,
    /// Their total size.
    pub size_bytes: u64,
    /// Level 0: `tables / level0_file_trigger`; others: `size_bytes / target_bytes`.
    pub score: f64,
}

fn level_bytes(tables: &[TableMeta]) -> u64 {
    tables.iter().map(|t| t.size_bytes).fold(0, u64::saturating_add)
}

/// The score of each level `0..max_levels` (for stats, and what [`pick`] ranks).
pub fn level_scores(levels: &[Vec<TableMeta>], opts: &CompactionOptions) -> Vec<LevelScore> {
    (0..opts.max_levels)
        .map(|level| {
            let tables = levels.get(usize::from(level)).map(Vec::as_slice).unwrap_or_default();
            let size_bytes = level_bytes(tables);
            let score = if level == 0 {
                tables.len() as f64 / f64::from(opts.level0_file_trigger.max(1))
            } else {
                size_bytes as f64 / opts.target_bytes(level) as f64
            };
            LevelScore { level, tables: tables.len() as u64, size_bytes, score }
        })
        .collect()
}

/// The next compaction to run for `levels` (index = level, as
/// [`crate::manifest::ManifestState::levels`] returns them), or `None` when nothing is due.
pub fn pick(levels: &[Vec<TableMeta>], opts: &CompactionOptions) -> Option<CompactionPlan> {
    match opts.style {
        CompactionStyle::Leveled => pick_leveled(levels, opts),
        CompactionStyle::SizeTiered(st) => pick_size_tiered(levels, &st),
    }
}

fn level_tables(levels: &[Vec<TableMeta>], level: u8) -> &[TableMeta] {
    levels.get(usize::from(level)).map(Vec::as_slice).unwrap_or_default()
}

/// The smallest and greatest key of `tables` (none when empty).
fn key_range<'a>(tables: impl IntoIterator<Item = &'a TableMeta>) -> Option<(&'a [u8], &'a [u8])> {
    tables.into_iter().fold(None, |acc, t| match acc {
        None => Some((t.min_key.as_slice(), t.max_key.as_slice())),
        Some((lo, hi)) => Some((lo.min(t.min_key.as_slice()), hi.max(t.max_key.as_slice()))),
    })
}

/// The tables of `tables` whose key range overlaps `[min_key, max_key]`.
pub fn overlapping<'a>(
    tables: &'a [TableMeta],
    min_key: &'a [u8],
    max_key: &'a [u8],
) -> impl Iterator<Item = &'a TableMeta> + 'a {
    tables.iter().filter(move |t| t.overlaps(min_key, max_key))
}

fn pick_leveled(levels: &[Vec<TableMeta>], opts: &CompactionOptions) -> Option<CompactionPlan> {
    let l0 = level_tables(levels, 0);
    if l0.len() as u64 >= u64::from(opts.level0_file_trigger) {
        let (lo, hi) = key_range(l0)?;
        return Some(plan_into(
            levels,
            l0.iter().collect(),
            1,
            lo,
            hi,
            CompactionReason::Level0Files {
                files: l0.len() as u64,
                trigger: u64::from(opts.level0_file_trigger),
            },
        ));
    }
    // The source level with the highest size/target ratio, compared exactly (u128 cross
    // multiplication), ties to the upper level.
    let mut best: Option<(u8, u64, u64)> = None;
    for level in 1..opts.max_levels.saturating_sub(1) {
        let size = level_bytes(level_tables(levels, level));
        let target = opts.target_bytes(level);
        if size < target {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, s, t)) => {
                u128::from(size) * u128::from(t) > u128::from(s) * u128::from(target)
            }
        };
        if better {
            best = Some((level, size, target));
        }
    }
    let (level, size_bytes, target_bytes) = best?;
    let oldest = level_tables(levels, level).iter().min_by_key(|t| t.id)?;
    Some(plan_into(
        levels,
        vec![oldest],
        level + 1,
        &oldest.min_key,
        &oldest.max_key,
        CompactionReason::LevelSize { level, size_bytes, target_bytes },
    ))
}

/// A leveled plan: `sources` plus the tables of `output_level` overlapping `[lo, hi]`.
fn plan_into(
    levels: &[Vec<TableMeta>],
    sources: Vec<&TableMeta>,
    output_level: u8,
    lo: &[u8],
    hi: &[u8],
    reason: CompactionReason,
) -> CompactionPlan {
    let mut inputs: Vec<TableId> = sources.iter().map(|t| t.id).collect();
    inputs.extend(overlapping(level_tables(levels, output_level), lo, hi).map(|t| t.id));
    let bottommost = levels
        .iter()
        .skip(usize::from(output_level) + 1)
        .all(|tables| overlapping(tables, lo, hi).next().is_none());
    CompactionPlan { inputs, output_level, reason, bottommost }
}

/// Size-tiered buckets of `tables`: groups of similar size, each sorted by size.
pub fn size_tiered_buckets<'a>(
    tables: &'a [TableMeta],
    st: &SizeTieredOptions,
) -> Vec<Vec<&'a TableMeta>> {
    let mut sorted: Vec<&TableMeta> = tables.iter().collect();
    sorted.sort_by_key(|t| (t.size_bytes, t.id));
    let mut buckets: Vec<(Vec<&TableMeta>, f64)> = Vec::new();
    for t in sorted {
        let size = t.size_bytes as f64;
        match buckets.last_mut() {
            Some((bucket, avg))
                if size >= *avg * st.bucket_low && size <= *avg * st.bucket_high =>
            {
                bucket.push(t);
                *avg += (size - *avg) / bucket.len() as f64;
            }
            _ => buckets.push((vec![t], size)),
        }
    }
    buckets.into_iter().map(|(b, _)| b).collect()
}

fn pick_size_tiered(levels: &[Vec<TableMeta>], st: &SizeTieredOptions) -> Option<CompactionPlan> {
    let l0 = level_tables(levels, 0);
    let buckets = size_tiered_buckets(l0, st);
    let chosen = buckets
        .iter()
        .filter(|b| b.len() as u64 >= u64::from(st.min_threshold))
        // Fullest first; on a tie the earlier bucket (smaller tables) wins, since max_by_key
        // keeps the last maximum we iterate in reverse.
        .rev()
        .max_by_key(|b| b.len())?;
    let taken: Vec<&TableMeta> = chosen.iter().take(st.max_threshold as usize).copied().collect();
    let bucket_avg_bytes = level_bytes_refs(&taken) / (taken.len().max(1) as u64);
    let inputs: Vec<TableId> = taken.iter().map(|t| t.id).collect();
    let (lo, hi) = key_range(taken.iter().copied())?;
    let bottommost = levels.iter().flatten().all(|t| inputs.contains(&t.id) || !t.overlaps(lo, hi));
    Some(CompactionPlan {
        inputs,
        output_level: 0,
        reason: CompactionReason::SizeTiered {
            bucket_tables: chosen.len() as u64,
            bucket_avg_bytes,
        },
        bottommost,
    })
}

fn level_bytes_refs(tables: &[&TableMeta]) -> u64 {
    tables.iter().map(|t| t.size_bytes).fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Stamp;

    const MIB: u64 = 1024 * 1024;

    /// A table from a compact spec: `(id, level, "min-max", size MiB)`.
    fn t(id: u64, level: u8, range: &str, size_mib: u64) -> TableMeta {
        let (lo, hi) = range.split_once('-').unwrap();
        TableMeta {
            id: TableId(id),
            level,
            size_bytes: size_mib * MIB,
            entries: 1,
            min_key: lo.as_bytes().to_vec(),
            max_key: hi.as_bytes().to_vec(),
            max_stamp: Stamp::default(),
        }
    }

    fn layout(tables: &[TableMeta]) -> Vec<Vec<TableMeta>> {
        let mut levels = vec![Vec::new(); usize::from(LEVELS_MAX)];
        for x in tables {
            levels[usize::from(x.level)].push(x.clone());
        }
        levels
    }

    fn ids(v: &[u64]) -> Vec<TableId> {
        v.iter().map(|&i| TableId(i)).collect()
    }

    /// Expected plan in short form: (inputs, output level, bottommost).
    type Want = Option<(Vec<u64>, u8, bool)>;

    #[test]
    fn compaction_picker_leveled_layouts() {
        let opts = CompactionOptions::default(); // L1 64 MiB, L2 640 MiB, trigger 4
        let cases: Vec<(&str, Vec<TableMeta>, Want)> = vec![
            ("empty", vec![], None),
            (
                "L0 below trigger",
                vec![t(1, 0, "a-z", 1), t(2, 0, "a-z", 1), t(3, 0, "a-z", 1)],
                None,
            ),
            (
                "L0 at trigger, no L1",
                vec![t(1, 0, "a-c", 1), t(2, 0, "b-d", 1), t(3, 0, "x-y", 1), t(4, 0, "m-n", 1)],
                Some((vec![1, 2, 3, 4], 1, true)),
            ),
            (
                "L0 at trigger takes overlapping L1 only",
                vec![
                    t(5, 0, "c-d", 1),
                    t(6, 0, "e-f", 1),
                    t(7, 0, "c-c", 1),
                    t(8, 0, "d-e", 1),
                    t(1, 1, "a-b", 10),
                    t(2, 1, "c-c", 10),
                    t(3, 1, "f-g", 10),
                    t(4, 1, "h-k", 10),
                ],
                Some((vec![5, 6, 7, 8, 2, 3], 1, true)),
            ),
            (
                "L0 at trigger, deeper level overlaps: not bottommost",
                vec![
                    t(5, 0, "c-d", 1),
                    t(6, 0, "c-d", 1),
                    t(7, 0, "c-d", 1),
                    t(8, 0, "c-d", 1),
                    t(1, 2, "d-e", 10),
                ],
                Some((vec![5, 6, 7, 8], 1, false)),
            ),
            ("L1 under target", vec![t(1, 1, "a-b", 30), t(2, 1, "c-d", 30)], None),
            (
                "L1 over target: oldest table plus overlapping L2",
                vec![
                    t(9, 1, "a-b", 30),
                    t(4, 1, "c-f", 30),
                    t(7, 1, "g-h", 30),
                    t(1, 2, "a-b", 100),
                    t(2, 2, "c-d", 100),
                    t(3, 2, "e-z", 100),
                ],
                Some((vec![4, 2, 3], 2, true)),
            ),
            (
                "highest score wins: L2 (1.5) over L1 (1.1)",
                vec![
                    t(1, 1, "a-b", 70),
                    t(2, 2, "a-c", 480),
                    t(3, 2, "d-f", 480),
                    t(4, 3, "e-e", 100),
                    t(5, 4, "d-d", 100),
                ],
                Some((vec![2], 3, true)),
            ),
            (
                "L0 trigger beats a higher level score",
                vec![
                    t(1, 0, "a-a", 1),
                    t(2, 0, "b-b", 1),
                    t(3, 0, "c-c", 1),
                    t(4, 0, "d-d", 1),
                    t(5, 1, "x-y", 6400),
                ],
                Some((vec![1, 2, 3, 4], 1, true)),
            ),
            ("the last level is never a source", vec![t(1, 6, "a-b", 1_000_000_000)], None),
            (
                "equal scores: upper level first",
                vec![t(1, 1, "a-b", 64), t(2, 2, "a-b", 640)],
                Some((vec![1, 2], 2, true)),
            ),
        ];
        for (name, tables, want) in cases {
            let got =
                pick(&layout(&tables), &opts).map(|p| (p.inputs, p.output_level, p.bottommost));
            let want = want.map(|(i, l, b)| (ids(&i), l, b));
            assert_eq!(got, want, "case: {name}");
        }
    }

    #[test]
    fn compaction_picker_reasons() {
        let opts = CompactionOptions::default();
        let l0: Vec<TableMeta> = (1..=5).map(|i| t(i, 0, "a-b", 1)).collect();
        let p = pick(&layout(&l0), &opts).unwrap();
        assert_eq!(p.reason, CompactionReason::Level0Files { files: 5, trigger: 4 });
        let p = pick(&layout(&[t(1, 2, "a-b", 700)]), &opts).unwrap();
        assert_eq!(
            p.reason,
            CompactionReason::LevelSize {
                level: 2,
                size_bytes: 700 * MIB,
                target_bytes: 640 * MIB
            }
        );
    }

    #[test]
    fn compaction_picker_scores_and_targets() {
        let opts = CompactionOptions::default();
        assert_eq!(opts.target_bytes(1), 64 * MIB);
        assert_eq!(opts.target_bytes(2), 640 * MIB);
        assert_eq!(opts.target_bytes(6), 6_400_000 * MIB);
        let huge = CompactionOptions { level_size_base_bytes: u64::MAX / 2, ..opts };
        assert_eq!(huge.target_bytes(5), u64::MAX, "saturates");
        let levels = layout(&[
            t(1, 0, "a-b", 1),
            t(2, 0, "a-b", 1),
            t(3, 1, "a-b", 32),
            t(4, 2, "c-d", 960),
        ]);
        let scores = level_scores(&levels, &opts);
        assert_eq!(scores.len(), 7);
        let s: Vec<f64> = scores.iter().map(|s| s.score).collect();
        assert_eq!(&s[..3], &[0.5, 0.5, 1.5]);
        assert_eq!(scores[2].size_bytes, 960 * MIB);
        assert_eq!(scores[0].tables, 2);
    }

    #[test]
    fn compaction_picker_overlap_is_inclusive() {
        let tables = vec![t(1, 1, "b-d", 1), t(2, 1, "f-h", 1), t(3, 1, "j-l", 1)];
        let hits = |lo: &str, hi: &str| -> Vec<u64> {
            overlapping(&tables, lo.as_bytes(), hi.as_bytes()).map(|x| x.id.0).collect()
        };
        assert_eq!(hits("a", "a"), Vec::<u64>::new());
        assert_eq!(hits("a", "b"), vec![1], "touching the min key overlaps");
        assert_eq!(hits("d", "f"), vec![1, 2], "touching both ends");
        assert_eq!(hits("e", "e"), Vec::<u64>::new(), "a gap");
        assert_eq!(hits("c", "k"), vec![1, 2, 3]);
        assert_eq!(hits("m", "z"), Vec::<u64>::new());
        // Keys compare bytewise: "b" < "ba" < "c".
        assert_eq!(hits("ba", "bz"), vec![1]);
    }

    #[test]
    fn compaction_picker_size_tiered_buckets() {
        let st = SizeTieredOptions::default();
        let tables = vec![
            t(1, 0, "a-b", 10),
            t(2, 0, "a-b", 12),
            t(3, 0, "a-b", 8), // ~10
            t(4, 0, "a-b", 100),
            t(5, 0, "a-b", 120), // ~110
            t(6, 0, "a-b", 1000),
        ];
        let buckets: Vec<Vec<u64>> = size_tiered_buckets(&tables, &st)
            .iter()
            .map(|b| b.iter().map(|x| x.id.0).collect())
            .collect();
        assert_eq!(buckets, vec![vec![3, 1, 2], vec![4, 5], vec![6]]);
    }

    #[test]
    fn compaction_picker_size_tiered_layouts() {
        let opts = CompactionOptions {
            style: CompactionStyle::SizeTiered(SizeTieredOptions {
                max_threshold: 5,
                ..SizeTieredOptions::default()
            }),
            ..CompactionOptions::default()
        };
        let cases: Vec<(&str, Vec<TableMeta>, Want)> = vec![
            ("empty", vec![], None),
            (
                "no bucket reaches 4",
                vec![t(1, 0, "a-b", 1), t(2, 0, "a-b", 1), t(3, 0, "a-b", 1), t(4, 0, "a-b", 100)],
                None,
            ),
            (
                "four similar tables, a big older one overlaps: not bottommost",
                vec![
                    t(1, 0, "a-z", 1000),
                    t(2, 0, "a-b", 10),
                    t(3, 0, "a-c", 11),
                    t(4, 0, "b-d", 9),
                    t(5, 0, "c-c", 10),
                ],
                Some((vec![4, 2, 5, 3], 0, false)),
            ),
            (
                "four similar tables, nothing else overlaps: bottommost",
                vec![
                    t(1, 0, "x-z", 1000),
                    t(2, 0, "a-b", 10),
                    t(3, 0, "a-c", 11),
                    t(4, 0, "b-d", 9),
                    t(5, 0, "c-c", 10),
                ],
                Some((vec![4, 2, 5, 3], 0, true)),
            ),
            (
                "fullest bucket wins",
                vec![
                    t(1, 0, "a-b", 1),
                    t(2, 0, "a-b", 1),
                    t(3, 0, "a-b", 1),
                    t(4, 0, "a-b", 1),
                    t(5, 0, "a-b", 100),
                    t(6, 0, "a-b", 100),
                    t(7, 0, "a-b", 100),
                    t(8, 0, "a-b", 100),
                    t(9, 0, "a-b", 100),
                ],
                Some((vec![5, 6, 7, 8, 9], 0, false)),
            ),
            (
                "equal buckets: smaller tables first",
                vec![
                    t(5, 0, "a-b", 100),
                    t(6, 0, "a-b", 100),
                    t(7, 0, "a-b", 100),
                    t(8, 0, "a-b", 100),
                    t(1, 0, "a-b", 1),
                    t(2, 0, "a-b", 1),
                    t(3, 0, "a-b", 1),
                    t(4, 0, "a-b", 1),
                ],
                Some((vec![1, 2, 3, 4], 0, false)),
            ),
            (
                "at most max_threshold tables, the smallest",
                (1..=7).map(|i| t(i, 0, "a-b", 10 + (7 - i))).collect(),
                Some((vec![7, 6, 5, 4, 3], 0, false)),
            ),
        ];
        for (name, tables, want) in cases {
            let got =
                pick(&layout(&tables), &opts).map(|p| (p.inputs, p.output_level, p.bottommost));
            let want = want.map(|(i, l, b)| (ids(&i), l, b));
            assert_eq!(got, want, "case: {name}");
        }
    }

    #[test]
    fn compaction_picker_options_validate() {
        assert!(CompactionOptions::default().validate().is_ok());
        let bad = [
            CompactionOptions { level0_file_trigger: 0, ..Default::default() },
            CompactionOptions { level_size_multiplier: 1, ..Default::default() },
            CompactionOptions { max_levels: 1, ..Default::default() },
            CompactionOptions { max_levels: LEVELS_MAX + 1, ..Default::default() },
            CompactionOptions {
                style: CompactionStyle::SizeTiered(SizeTieredOptions {
                    min_threshold: 1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            CompactionOptions {
                style: CompactionStyle::SizeTiered(SizeTieredOptions {
                    bucket_low: 0.0,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        for o in bad {
            assert!(o.validate().is_err(), "{o:?}");
        }
    }
}
