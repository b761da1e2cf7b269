//! Replay of the WAL into a memtable at open.
//!
//! Segments are replayed in id order. Each record is applied with last-write-wins, so replay is
//! idempotent and independent of the order writers completed in before the crash.
//!
//! What recovery accepts and what it refuses:
//! - The newest segment may end in a torn tail (a write in flight at a crash): it is truncated
//!   at the first bad frame, durably, and reported in [`RecoveryReport::torn_tail`] and with
//!   `tracing::warn!`. Non-zero bytes after the zero end marker of the newest segment are
//!   treated the same way (truncated at the end marker). A newest segment whose header never
//!   reached the disk (short or all-zero) is removed and reported as a torn tail at offset 0.
//! - Anything else (a torn or garbled older segment, a bad header in an older segment, a
//!   record that passes its checksum but does not decode) is [`ShardError::Corrupt`] naming the
//!   file and offset: it cannot come from a crash, and skipping it could lose acknowledged
//!   writes silently.
//! - Segments with no records after replay are removed (every open starts a fresh segment, so
//!   a restart without writes would otherwise leave an empty file behind each time).

use super::parse_segment_name;
use super::record::WalRecord;
use crate::memtable::{Entry, Memtable};
use crate::types::Stamp;
use crate::ShardError;
use kvs_io::{HeaderProblem, IoError, LogEnd, LogReader, ReadOutcome};
use std::path::{Path, PathBuf};

/// A torn tail found, and cut, during recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub path: PathBuf,
    /// Where the file was truncated: one past the last valid record.
    pub offset: u64,
    /// Bytes removed from the file by the truncation.
    pub bytes_dropped: u64,
    /// What was found at `offset`.
    pub reason: String,
}

/// What [`crate::Engine::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: u64,
    /// Records replayed.
    pub records: u64,
    /// The torn tail of the newest segment, if there was one.
    pub torn_tail: Option<TornTail>,
    /// The greatest stamp replayed (the node seeds its clock above it).
    pub max_stamp: Option<Stamp>,
}

/// The outcome of replay, for the engine.
pub(crate) struct Recovered {
    pub memtable: Memtable,
    pub report: RecoveryReport,
    /// One past the highest segment id ever seen in the directory.
    pub next_segment_id: u64,
    /// Segments left on disk.
    pub segments_kept: u64,
    /// Bytes used (header and records) in the segments left on disk.
    pub wal_bytes: u64,
}

/// Replays every segment in `wal_dir` (which exists) into a new memtable.
pub(crate) async fn replay(wal_dir: &Path) -> Result<Recovered, ShardError> {
    let mut segments: Vec<(u64, PathBuf)> = kvs_io::list_dir(wal_dir)
        .await
        .map_err(|e| ShardError::io(wal_dir, e))?
        .into_iter()
        .filter_map(|p| parse_segment_name(&p).map(|id| (id, p)))
        .collect();
    segments.sort();
    let newest_id = segments.last().map(|(id, _)| *id);
    let mut out = Recovered {
        memtable: Memtable::new(),
        report: RecoveryReport::default(),
        next_segment_id: newest_id.map_or(1, |id| id.saturating_add(1)),
        segments_kept: 0,
        wal_bytes: 0,
    };
    let mut removed_any = false;
    for (id, path) in segments {
        let newest = Some(id) == newest_id;
        let replayed = replay_segment(&path, id, newest, &mut out).await?;
        match replayed {
            Some((records, used_bytes)) if records > 0 => {
                out.segments_kept += 1;
                out.wal_bytes += used_bytes;
            }
            _ => {
                kvs_io::remove_file(&path).await.map_err(|e| ShardError::io(&path, e))?;
                removed_any = true;
            }
        }
    }
    if removed_any {
        // IMPORTANT: make the removals durable before a new segment is created, so a crash
        // cannot bring an empty (or headerless) segment back below the new newest one.
        kvs_io::sync_dir(wal_dir).await.map_err(|e| ShardError::io(wal_dir, e))?;
    }
    Ok(out)
}

/// Replays one segment; returns `(records, used bytes)`, or `None` when the segment should be
/// removed outright (a newest segment whose creation never completed).
async fn replay_segment(
    path: &Path,
    id: u64,
    newest: bool,
    out: &mut Recovered,
) -> Result<Option<(u64, u64)>, ShardError> {
    let mut reader = match LogReader::open(path, Some(id)).await {
        Ok(r) => r,
        Err(IoError::SegmentHeader {
            problem: problem @ (HeaderProblem::Short { .. } | HeaderProblem::Zeroed),
            ..
        }) if newest => {
            let bytes_dropped =
                kvs_io::file_bytes(path).await.map_err(|e| ShardError::io(path, e))?;
            report_torn(out, path, 0, bytes_dropped, problem.to_string());
            return Ok(None);
        }
        Err(IoError::SegmentHeader { problem, .. }) => {
            return Err(ShardError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!("segment header: {problem}"),
            })
        }
        Err(e) => return Err(ShardError::io(path, e)),
    };
    out.report.segments += 1;
    let mut records = 0u64;
    let end = loop {
        match reader.next().await.map_err(|e| ShardError::io(path, e))? {
            ReadOutcome::Record(rec) => {
                let decoded = WalRecord::decode(&rec.payload).map_err(|e| ShardError::Corrupt {
                    path: path.to_path_buf(),
                    offset: rec.offset,
                    reason: format!("record passes its checksum but does not decode: {e}"),
                })?;
                apply(out, decoded);
                records += 1;
            }
            ReadOutcome::End(end) => break end,
        }
    };
    let file_bytes = reader.file_bytes();
    let cut = match &end {
        LogEnd::Torn { offset, reason, .. } => Some((*offset, reason.to_string())),
        LogEnd::Clean { offset } if newest => reader
            .nonzero_after_end()
            .await
            .map_err(|e| ShardError::io(path, e))?
            .map(|at| (*offset, format!("non-zero byte at offset {at} after the end marker"))),
        LogEnd::Clean { .. } => None,
    };
    reader.close().await.map_err(|e| ShardError::io(path, e))?;
    if let Some((offset, reason)) = cut {
        if !newest {
            return Err(ShardError::Corrupt {
                path: path.to_path_buf(),
                offset,
                reason: format!("damaged record in a segment that is not the newest: {reason}"),
            });
        }
        // IMPORTANT: truncate_file fdatasyncs the new size: the cut must be durable before the
        // next segment exists, or this segment would be an older segment with a torn tail.
        kvs_io::truncate_file(path, offset).await.map_err(|e| ShardError::io(path, e))?;
        report_torn(out, path, offset, file_bytes.saturating_sub(offset), reason);
    }
    Ok(Some((records, end.offset())))
}

fn apply(out: &mut Recovered, record: WalRecord<'_>) {
    let stamp = match record {
        WalRecord::Put { stamp, key, value } => {
            out.memtable.insert(key, Entry::Value { value: value.to_vec(), stamp });
            stamp
        }
        WalRecord::Delete { stamp, key } => {
            out.memtable.delete(key, stamp);
            stamp
        }
    };
    out.report.records += 1;
    out.report.max_stamp = out.report.max_stamp.max(Some(stamp));
}

fn report_torn(out: &mut Recovered, path: &Path, offset: u64, bytes_dropped: u64, reason: String) {
    tracing::warn!(
        path = %path.display(),
        offset,
        bytes_dropped,
        %reason,
        "WAL torn tail truncated during recovery"
    );
    out.report.torn_tail =
        Some(TornTail { path: path.to_path_buf(), offset, bytes_dropped, reason });
}
