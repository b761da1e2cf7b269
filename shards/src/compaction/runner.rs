//! The merge a compaction runs: the input tables' entries in key order, one surviving version
//! per key ([`super::merge_versions`]), written into new tables split at a target size, at a
//! bounded I/O rate. The engine (`engine.rs`) decides when to run it, allocates the output
//! ids, commits the manifest edit and swaps the readers.
//!
//! # Invariants
//! - Outputs hold strictly increasing keys, one entry per key, none in two outputs: a split
//!   happens only between keys, so the outputs of one merge never overlap (what a level below
//!   0 needs).
//! - On `Err` no output file is left behind (finished outputs are removed, the open one
//!   aborted), best effort: the next open removes what a failed removal leaves.
//! - The input readers are only read; blocks read here do not enter the block cache (a
//!   compaction would otherwise evict the hot set).

use super::merge::{merge_versions, MergeContext, MergeOutcome, VersionKind, VersionMeta};
use crate::cache::BlockCache;
use crate::sstable::{
    EntryRef, SstEntry, SstValue, SstValueRef, SstableBuilder, SstableOptions, SstableReader,
    TableId,
};
use crate::ShardError;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Input bytes between two checks of the rate limiter.
const RATE_CHECK_BYTES: u64 = 64 * 1024;
/// Entries merged between two offers to yield the CPU to the foreground task queue.
const YIELD_EVERY_ENTRIES: u32 = 64;

/// Paces a stream of bytes to an average rate: [`RateLimiter::account`] says how long to pause
/// so that the bytes accounted since the first call have taken at least `bytes / rate`.
/// Pure (the caller passes the clock). One limiter per compaction, so no credit accumulates
/// across idle time.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_s: u64,
    start: Option<Instant>,
    bytes: u64,
}

impl RateLimiter {
    /// A limiter at `bytes_per_s`; 0 means unlimited.
    pub fn new(bytes_per_s: u64) -> Self {
        RateLimiter { bytes_per_s, start: None, bytes: 0 }
    }

    /// Accounts `bytes` more at `now`; returns the pause that keeps the average at the rate
    /// (zero when within it).
    pub fn account(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bytes_per_s == 0 {
            return Duration::ZERO;
        }
        let start = *self.start.get_or_insert(now);
        self.bytes = self.bytes.saturating_add(bytes);
        let due = Duration::from_secs_f64(self.bytes as f64 / self.bytes_per_s as f64);
        due.saturating_sub(now.saturating_duration_since(start))
    }
}

/// How a merge writes its outputs.
#[derive(Clone, Debug)]
pub struct MergeSpec {
    /// The shard directory the outputs go to.
    pub dir: PathBuf,
    /// Settings of the output tables.
    pub sstable: SstableOptions,
    /// An output is finished once it reaches this many bytes (`u64::MAX`: one output).
    pub output_table_bytes: u64,
    /// Tombstone and expiry rules for this merge.
    pub ctx: MergeContext,
    /// Input bytes per second; 0 = unlimited.
    pub rate_bytes_per_s: u64,
}

/// One finished output table, opened.
pub struct MergeOutput {
    /// Its id.
    pub id: TableId,
    /// Its file size.
    pub size_bytes: u64,
    /// Entries in it.
    pub entries: u64,
    /// A reader on it (sharing the shard's block cache).
    pub reader: SstableReader,
}

/// What a merge did.
pub struct MergeResult {
    /// The outputs, in key order (possibly none: everything was dropped).
    pub outputs: Vec<MergeOutput>,
    /// Keys met in the inputs.
    pub keys_in: u64,
    /// Entries read from the inputs.
    pub entries_in: u64,
    /// Keys written as tombstones because their value had expired.
    pub expired_to_tombstones: u64,
    /// Keys written nowhere (tombstones or expired values past their grace, at the bottom).
    pub dropped: u64,
}

/// Merges `inputs` into new tables per `spec`, calling `next_id` for each output's id. See the
/// module doc for the guarantees.
pub async fn merge_tables(
    inputs: &[Rc<SstableReader>],
    spec: &MergeSpec,
    cache: &Rc<BlockCache>,
    mut next_id: impl AsyncFnMut() -> Result<TableId, ShardError>,
) -> Result<MergeResult, ShardError> {
    let mut outputs: Vec<MergeOutput> = Vec::new();
    let mut open: Option<SstableBuilder> = None;
    let result = merge_into(inputs, spec, cache, &mut next_id, &mut outputs, &mut open).await;
    match result {
        Ok(mut r) => {
            r.outputs = outputs;
            Ok(r)
        }
        Err(e) => {
            if let Some(builder) = open.take() {
                let _ = builder.abort().await;
            }
            for out in outputs {
                let path = out.reader.path().to_path_buf();
                let _ = out.reader.close().await;
                if let Err(err) = kvs_io::remove_file(&path).await {
                    tracing::warn!(path = %path.display(), error = %err,
                        "could not remove the output of a failed compaction");
                }
            }
            Err(e)
        }
    }
}

async fn merge_into(
    inputs: &[Rc<SstableReader>],
    spec: &MergeSpec,
    cache: &Rc<BlockCache>,
    next_id: &mut impl AsyncFnMut() -> Result<TableId, ShardError>,
    outputs: &mut Vec<MergeOutput>,
    open: &mut Option<SstableBuilder>,
) -> Result<MergeResult, ShardError> {
    let mut iters: Vec<_> = inputs.iter().map(|r| r.iter()).collect();
    let mut heads: Vec<Option<SstEntry>> = Vec::with_capacity(iters.len());
    for it in &mut iters {
        heads.push(it.next().await?);
    }
    let entries_total: u64 = inputs.iter().map(|r| r.footer().entry_count).sum();
    let bytes_total: u64 = inputs.iter().map(|r| r.file_bytes()).sum();
    // Bloom sizing: the entries an output of `output_table_bytes` holds at the inputs'
    // average entry size (+10%), never more than all of them.
    let per_output = if spec.output_table_bytes == u64::MAX || bytes_total == 0 {
        entries_total
    } else {
        let avg = (bytes_total / entries_total.max(1)).max(1);
        (spec.output_table_bytes / avg).saturating_mul(11) / 10
    }
    .clamp(1, entries_total.max(1));
    let mut limiter = RateLimiter::new(spec.rate_bytes_per_s);
    let mut unpaced_bytes = 0u64;
    let mut since_yield = 0u32;
    let mut r = MergeResult {
        outputs: Vec::new(),
        keys_in: 0,
        entries_in: 0,
        expired_to_tombstones: 0,
        dropped: 0,
    };
    let mut versions: Vec<SstEntry> = Vec::new();
    let mut metas: Vec<VersionMeta> = Vec::new();
    while let Some(min_key) = heads.iter().flatten().map(|e| e.key.as_slice()).min() {
        let min_key = min_key.to_vec();
        versions.clear();
        for (head, it) in heads.iter_mut().zip(iters.iter_mut()) {
            if head.as_ref().is_some_and(|e| e.key == min_key) {
                let next = it.next().await?;
                if let Some(e) = std::mem::replace(head, next) {
                    unpaced_bytes += (e.key.len() + value_len(&e) + 32) as u64;
                    versions.push(e);
                }
            }
        }
        r.keys_in += 1;
        r.entries_in += versions.len() as u64;
        // Newest first, by the engine's last-write-wins order (stamp, then a tombstone over a
        // value, then the greater value).
        versions.sort_by(|a, b| precedence(b).cmp(&precedence(a)));
        metas.clear();
        metas.extend(versions.iter().map(|e| VersionMeta {
            stamp: e.stamp,
            kind: match e.value {
                SstValue::Value(_) => VersionKind::Value,
                SstValue::Tombstone => VersionKind::Tombstone,
            },
            expiry_ms: e.expires_at_ms,
        }));
        let Some(newest) = versions.first() else { continue };
        let entry = match merge_versions(&metas, &spec.ctx) {
            MergeOutcome::Keep => Some(newest.as_ref()),
            MergeOutcome::KeepAsTombstone => {
                r.expired_to_tombstones += 1;
                Some(EntryRef {
                    key: &newest.key,
                    stamp: newest.stamp,
                    value: SstValueRef::Tombstone,
                    expires_at_ms: None,
                })
            }
            MergeOutcome::Drop => {
                r.dropped += 1;
                None
            }
        };
        if let Some(entry) = entry {
            if open.as_ref().is_some_and(|b| b.approx_bytes() >= spec.output_table_bytes) {
                if let Some(full) = open.take() {
                    outputs.push(finish(full, cache).await?);
                }
            }
            if open.is_none() {
                let id = next_id().await?;
                *open =
                    Some(SstableBuilder::create(&spec.dir, id, spec.sstable, per_output).await?);
            }
            if let Some(builder) = open.as_mut() {
                builder.add(entry).await?;
            }
        }
        if unpaced_bytes >= RATE_CHECK_BYTES {
            let pause = limiter.account(unpaced_bytes, Instant::now());
            unpaced_bytes = 0;
            if !pause.is_zero() {
                glommio::timer::sleep(pause).await;
            }
        }
        since_yield += 1;
        if since_yield >= YIELD_EVERY_ENTRIES {
            since_yield = 0;
            glommio::yield_if_needed().await;
        }
    }
    if let Some(last) = open.take() {
        if last.entry_count() > 0 {
            outputs.push(finish(last, cache).await?);
        } else {
            last.abort().await?;
        }
    }
    Ok(r)
}

fn value_len(e: &SstEntry) -> usize {
    match &e.value {
        SstValue::Value(v) => v.len(),
        SstValue::Tombstone => 0,
    }
}

/// The last-write-wins order of `crate::memtable::Entry::supersedes`.
fn precedence(e: &SstEntry) -> (crate::Stamp, u8, &[u8]) {
    match &e.value {
        SstValue::Value(v) => (e.stamp, 0, v.as_slice()),
        SstValue::Tombstone => (e.stamp, 1, &[]),
    }
}

async fn finish(
    builder: SstableBuilder,
    cache: &Rc<BlockCache>,
) -> Result<MergeOutput, ShardError> {
    let id = builder.id();
    let entries = builder.entry_count();
    let (path, size_bytes) = builder.finish().await?;
    match SstableReader::open_with_cache(&path, Some(Rc::clone(cache))).await {
        Ok(reader) => Ok(MergeOutput { id, size_bytes, entries, reader }),
        Err(e) => {
            remove_quietly(&path).await;
            Err(e)
        }
    }
}

async fn remove_quietly(path: &Path) {
    if let Err(e) = kvs_io::remove_file(path).await {
        tracing::warn!(path = %path.display(), error = %e, "could not remove a compaction output");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_paces_to_the_average() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1000);
        assert_eq!(l.account(500, t0), Duration::from_millis(500));
        // 500 ms later, 500 more bytes are due at 1 s.
        assert_eq!(l.account(500, t0 + Duration::from_millis(500)), Duration::from_millis(500));
        // Slow input: nothing to wait for.
        assert_eq!(l.account(100, t0 + Duration::from_secs(5)), Duration::ZERO);
        let mut unlimited = RateLimiter::new(0);
        assert_eq!(unlimited.account(u64::MAX, t0), Duration::ZERO);
    }
}
