//! Replay of the WAL into a memtable at open.
//!
//! Segments are replayed in id order. Each record is applied with last-write-wins, so replay is
//! idempotent and independent of the order writers completed in before the crash.
//!
//! What recovery accepts and what it refuses (invariant: an acknowledged write is never
//! dropped silently):
//! - Every segment but the newest must end with a valid seal frame whose record count and
//!   end offset match what was replayed, followed only by zero bytes. A missing seal (an early
//!   end marker, a cut file), a torn or garbled frame, a seal that disagrees, non-zero bytes
//!   after the seal, or a bad header is [`ShardError::Corrupt`] naming the file and offset:
//!   segments are sealed and fdatasync'd before the next one is created, so no crash explains
//!   it, and skipping it would lose acknowledged writes. Such a segment is never removed.
//! - The newest segment may end in a torn tail (a write in flight at a crash): a bad frame, or
//!   non-zero bytes after its end marker or seal, with **no valid frame starting
//!   [`WAL_WRITE_BYTES_MAX`] or more bytes past the end of the valid data** (the torn write
//!   started at or before that point and is at most that long). It is truncated there,
//!   durably, and reported in [`RecoveryReport::torn_tail`] and with `tracing::warn!`. A valid
//!   frame farther on means the damage hit data a later write followed: `Corrupt`.
//! - The newest segment, when it has records but no seal (the process crashed), is then sealed
//!   (seal appended after its last valid record, fdatasync'd) before the engine creates the
//!   next segment, so that at the next open it is a properly sealed older segment. Reported in
//!   [`RecoveryReport::sealed`].
//! - A newest segment whose header never reached the disk (short or all-zero), or with no
//!   records, is removed (every open starts a fresh segment, so a restart without writes would
//!   otherwise leave an empty file behind each time). A headerless one is reported as a torn
//!   tail at offset 0.

use super::parse_segment_name;
use super::record::WalRecord;
use crate::limits::{WAL_RECORD_BYTES_MAX, WAL_WRITE_BYTES_MAX};
use crate::memtable::Memtable;
use crate::types::Stamp;
use crate::ShardError;
use kvs_io::{HeaderProblem, IoError, LogEnd, LogReader, ReadOutcome, SEAL_FRAME_BYTES};
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
    /// The newest segment, if it had records but no seal (the process stopped without closing
    /// the engine) and recovery sealed it.
    pub sealed: Option<PathBuf>,
    /// The greatest stamp in the replayed WAL and in the SSTables the manifest lists (the
    /// node seeds its clock above it).
    pub max_stamp: Option<Stamp>,
    /// SSTables opened (listed in the manifest).
    pub tables: u64,
    /// Files removed because a crash left them: `*.sst.tmp`, and `*.sst` the manifest does
    /// not list (a flush interrupted before its manifest commit).
    pub stray_files_removed: u64,
}

/// The outcome of replay, for the engine.
pub(crate) struct Recovered {
    pub memtable: Memtable,
    pub report: RecoveryReport,
    /// One past the highest segment id ever seen in the directory.
    pub next_segment_id: u64,
    /// Segments left on disk, as `(id, used bytes)`, in id order.
    pub kept: Vec<(u64, u64)>,
}

/// Replays every segment in `wal_dir` (which exists) with id `>= from_segment` into a new
/// memtable. Segments below `from_segment` are wholly in SSTables (the manifest's flushed
/// position): a flush normally deletes them; a crash between its manifest commit and the
/// deletion leaves them, and they are deleted here without being read.
pub(crate) async fn replay(wal_dir: &Path, from_segment: u64) -> Result<Recovered, ShardError> {
    let mut segments: Vec<(u64, PathBuf)> = kvs_io::list_dir(wal_dir)
        .await
        .map_err(|e| ShardError::io(wal_dir, e))?
        .into_iter()
        .filter_map(|p| parse_segment_name(&p).map(|id| (id, p)))
        .collect();
    segments.sort();
    let highest_id = segments.last().map(|(id, _)| *id);
    let mut removed_any = false;
    let (flushed, segments): (Vec<_>, Vec<_>) =
        segments.into_iter().partition(|(id, _)| *id < from_segment);
    for (_, path) in flushed {
        tracing::info!(path = %path.display(), "removing WAL segment already flushed to SSTables");
        kvs_io::remove_file(&path).await.map_err(|e| ShardError::io(&path, e))?;
        removed_any = true;
    }
    let newest_id = segments.last().map(|(id, _)| *id);
    let mut out = Recovered {
        memtable: Memtable::new(),
        report: RecoveryReport::default(),
        // Never below the flushed position: a segment created later must be replayed.
        next_segment_id: highest_id.map_or(1, |id| id.saturating_add(1)).max(from_segment),
        kept: Vec::new(),
    };
    for (id, path) in segments {
        let newest = Some(id) == newest_id;
        match replay_segment(&path, id, newest, &mut out).await? {
            Some(used_bytes) => out.kept.push((id, used_bytes)),
            None => {
                debug_assert!(newest, "only the newest segment is ever removed");
                kvs_io::remove_file(&path).await.map_err(|e| ShardError::io(&path, e))?;
                removed_any = true;
            }
        }
    }
    if removed_any {
        // IMPORTANT: make the removals durable before a new segment is created, so a crash
        // cannot bring an empty (or headerless) segment back below the new newest one (or a
        // flushed segment back at all).
        kvs_io::sync_dir(wal_dir).await.map_err(|e| ShardError::io(wal_dir, e))?;
    }
    Ok(out)
}

/// Replays one segment; returns its used bytes (header, records and seal), or `None` when
/// the segment should be removed (only ever the newest: headerless, or without records).
async fn replay_segment(
    path: &Path,
    id: u64,
    newest: bool,
    out: &mut Recovered,
) -> Result<Option<u64>, ShardError> {
    let corrupt = |offset: u64, reason: String| ShardError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason,
    };
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
            return Err(corrupt(0, format!("segment header: {problem}")))
        }
        Err(e) => return Err(ShardError::io(path, e)),
    };
    out.report.segments += 1;
    let end = loop {
        match reader.next().await.map_err(|e| ShardError::io(path, e))? {
            ReadOutcome::Record(rec) => {
                let decoded = WalRecord::decode(&rec.payload).map_err(|e| {
                    corrupt(
                        rec.offset,
                        format!("record passes its checksum but does not decode: {e}"),
                    )
                })?;
                apply(out, decoded);
            }
            ReadOutcome::End(end) => break end,
        }
    };
    let records = reader.records_read();
    let file_bytes = reader.file_bytes();
    // One past the last valid frame (the seal included), and what is wrong after it, if
    // anything: the file is truncated at `data_end` if the damage is an acceptable torn tail.
    let data_end = end.data_end();
    let damage: Option<String> = match &end {
        LogEnd::Torn { reason, .. } => Some(format!("damaged frame: {reason}")),
        LogEnd::Clean { .. } | LogEnd::Sealed { .. } => {
            reader.nonzero_after_end().await.map_err(|e| ShardError::io(path, e))?.map(|at| {
                let after = if matches!(end, LogEnd::Sealed { .. }) {
                    "the seal"
                } else {
                    "the end marker"
                };
                format!("non-zero byte at offset {at} after {after}")
            })
        }
    };
    if let LogEnd::Sealed { offset, records: sealed_records, end_offset } = end {
        if sealed_records != records || end_offset != offset {
            return Err(corrupt(
                offset,
                format!(
                    "seal claims {sealed_records} records ending at offset {end_offset}, but \
                     replay found {records} records ending at offset {offset}"
                ),
            ));
        }
    }
    let sealed = matches!(end, LogEnd::Sealed { .. });
    if !newest {
        reader.close().await.map_err(|e| ShardError::io(path, e))?;
        if let Some(reason) = damage {
            return Err(corrupt(
                data_end,
                format!("{reason} in a segment that is not the newest (after {records} records)"),
            ));
        }
        if !sealed {
            return Err(corrupt(
                data_end,
                format!(
                    "segment that is not the newest ends without a seal after {records} records \
                     (cut short, or records zeroed)"
                ),
            ));
        }
        return Ok(Some(data_end));
    }
    // The newest segment: a torn tail only if nothing valid lies past the last write window.
    if let Some(reason) = &damage {
        let scan_from = data_end.saturating_add(WAL_WRITE_BYTES_MAX);
        let found = reader
            .find_valid_frame(scan_from, WAL_RECORD_BYTES_MAX)
            .await
            .map_err(|e| ShardError::io(path, e))?;
        if let Some(at) = found {
            reader.close().await.map_err(|e| ShardError::io(path, e))?;
            return Err(corrupt(
                data_end,
                format!(
                    "{reason}, yet a valid frame starts at offset {at}, at least \
                     {WAL_WRITE_BYTES_MAX} bytes (one maximal write) later: not a torn tail"
                ),
            ));
        }
    }
    reader.close().await.map_err(|e| ShardError::io(path, e))?;
    if let Some(reason) = damage {
        // IMPORTANT: truncate_file fdatasyncs the new size: the cut must be durable before the
        // next segment exists, or this segment would be an older segment with a torn tail.
        kvs_io::truncate_file(path, data_end).await.map_err(|e| ShardError::io(path, e))?;
        report_torn(out, path, data_end, file_bytes.saturating_sub(data_end), reason);
    }
    if records == 0 {
        return Ok(None);
    }
    if sealed {
        return Ok(Some(data_end));
    }
    // IMPORTANT: seal (durably) before the engine creates the next segment, so this one reads
    // as a complete older segment from now on.
    kvs_io::seal_segment(path, id, records, data_end).await.map_err(|e| ShardError::io(path, e))?;
    tracing::info!(
        path = %path.display(),
        records,
        offset = data_end,
        "WAL segment left unsealed by a crash sealed during recovery"
    );
    out.report.sealed = Some(path.to_path_buf());
    Ok(Some(data_end + SEAL_FRAME_BYTES))
}

fn apply(out: &mut Recovered, record: WalRecord<'_>) {
    let stamp = match record {
        WalRecord::Put { stamp, key, value, expires_at_ms } => {
            out.memtable.put_expiring(key, value, stamp, expires_at_ms);
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
