//! The log reader used by recovery: iterates the records of one segment in order.
//!
//! The reader validates the header (magic, version, crc, segment id), then parses frames with
//! the pure [`crate::format::parse_frame`] over a window it refills in chunks, so memory stays
//! bounded by the chunk plus one record. It stops at the first of:
//! - a seal frame with a valid checksum: [`LogEnd::Sealed`] with the seal's claims (record
//!   count, end offset), which the caller compares with [`LogReader::records_read`] and the
//!   seal's offset;
//! - the zero end marker or the exact end of the file: [`LogEnd::Clean`] (an unsealed end);
//! - a frame that fails its checksum, has a zero length with a non-zero crc, a length over the
//!   limit, or runs past the end of the file: [`LogEnd::Torn`] with the frame's offset, so the
//!   caller can truncate there. Every record before that offset has been yielded.
//!
//! The reader does not decide whether a torn end is acceptable; the shard engine does (only
//! in the newest segment). To help it tell a torn tail from corruption, the reader can look
//! past the end: [`LogReader::nonzero_after_end`] and [`LogReader::find_valid_frame`].

use crate::format::{
    self, FrameParse, TornReason, RECORD_PAYLOAD_BYTES_MAX, SEAL_FRAME_BYTES, SEAL_LEN,
    SEGMENT_HEADER_BYTES,
};
use crate::{HeaderProblem, IoError};
use glommio::io::{DmaFile, OpenOptions};
use std::path::{Path, PathBuf};

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    /// File offset of the record's frame.
    pub offset: u64,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// How a segment ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEnd {
    /// At the zero end marker or the end of the file, at `offset`.
    Clean {
        /// Offset one past the last record.
        offset: u64,
    },
    /// At a seal frame with a valid checksum, at `offset`. Only zero bytes should follow it
    /// (see [`LogReader::nonzero_after_end`]).
    Sealed {
        /// Offset of the seal frame: one past the last record.
        offset: u64,
        /// Record count the seal claims.
        records: u64,
        /// End offset the seal claims (should equal `offset`).
        end_offset: u64,
    },
    /// At a torn or garbled frame starting at `offset`.
    Torn {
        /// Offset of the first bad frame: truncate the file here.
        offset: u64,
        /// What is wrong with it.
        reason: TornReason,
        /// File size, so `file_bytes - offset` bytes would be dropped by truncation.
        file_bytes: u64,
    },
}

impl LogEnd {
    /// The offset one past the last valid record (for a sealed end: the seal's offset).
    pub fn offset(&self) -> u64 {
        match self {
            LogEnd::Clean { offset }
            | LogEnd::Sealed { offset, .. }
            | LogEnd::Torn { offset, .. } => *offset,
        }
    }

    /// The offset one past the last valid frame: after the seal for a sealed end, else
    /// [`LogEnd::offset`].
    pub fn data_end(&self) -> u64 {
        match self {
            LogEnd::Sealed { offset, .. } => *offset + SEAL_FRAME_BYTES,
            other => other.offset(),
        }
    }
}

/// One step of [`LogReader::next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The next record.
    Record(LogRecord),
    /// No more records; returned again on every later call.
    End(LogEnd),
}

/// Reads the records of one segment. See the module docs.
pub struct LogReader {
    path: PathBuf,
    file: DmaFile,
    segment_id: u64,
    file_bytes: u64,
    pos: u64,
    window: Vec<u8>,
    window_pos: u64,
    records: u64,
    ended: Option<LogEnd>,
}

impl LogReader {
    /// Bytes read per refill of the window.
    pub const CHUNK_BYTES: u64 = 1 << 20;
    /// Positions tested per read by [`LogReader::find_valid_frame`].
    pub const SCAN_CHUNK_BYTES: u64 = 4 << 20;

    /// Opens the segment at `path` and validates its header. `expected_segment_id`, when
    /// given, must match the id in the header.
    pub async fn open(
        path: impl AsRef<Path>,
        expected_segment_id: Option<u64>,
    ) -> Result<LogReader, IoError> {
        let path = path.as_ref().to_path_buf();
        crate::fs::probe_device(path.parent().unwrap_or(Path::new("."))).await?;
        let file = OpenOptions::new()
            .read(true)
            .dma_open(&path)
            .await
            .map_err(|e| IoError::os("open segment", &path, e))?;
        let file_bytes =
            file.file_size().await.map_err(|e| IoError::os("stat segment", &path, e))?;
        let first = file
            .read_at(0, SEGMENT_HEADER_BYTES.min(file_bytes) as usize)
            .await
            .map_err(|e| IoError::os("read segment header", &path, e))?;
        let header_problem = |problem| IoError::SegmentHeader { path: path.clone(), problem };
        let segment_id = format::decode_header(&first).map_err(header_problem)?;
        if let Some(expected) = expected_segment_id {
            if expected != segment_id {
                return Err(header_problem(HeaderProblem::WrongSegment {
                    found: segment_id,
                    expected,
                }));
            }
        }
        Ok(LogReader {
            path,
            file,
            segment_id,
            file_bytes,
            pos: SEGMENT_HEADER_BYTES,
            window: Vec::new(),
            window_pos: SEGMENT_HEADER_BYTES,
            records: 0,
            ended: None,
        })
    }

    /// The segment id from the header.
    pub fn segment_id(&self) -> u64 {
        self.segment_id
    }

    /// The file size at open.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The segment path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records yielded so far.
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// The next record, or how the segment ends.
    pub async fn next(&mut self) -> Result<ReadOutcome, IoError> {
        loop {
            if let Some(end) = &self.ended {
                return Ok(ReadOutcome::End(end.clone()));
            }
            let remaining = self.file_bytes.saturating_sub(self.pos);
            let skip = usize::try_from(self.pos - self.window_pos).unwrap_or(usize::MAX);
            let window = self.window.get(skip..).unwrap_or_default();
            match format::parse_frame(self.segment_id, window, remaining) {
                FrameParse::Record { payload, frame_bytes } => {
                    let record = LogRecord {
                        offset: self.pos,
                        payload: window.get(payload).unwrap_or_default().to_vec(),
                    };
                    self.pos += frame_bytes;
                    self.records += 1;
                    return Ok(ReadOutcome::Record(record));
                }
                FrameParse::Seal { records, end_offset } => {
                    self.ended = Some(LogEnd::Sealed { offset: self.pos, records, end_offset })
                }
                FrameParse::End => self.ended = Some(LogEnd::Clean { offset: self.pos }),
                FrameParse::Torn(reason) => {
                    self.ended =
                        Some(LogEnd::Torn { offset: self.pos, reason, file_bytes: self.file_bytes })
                }
                FrameParse::NeedMore { window_bytes } => {
                    let want = window_bytes.max(Self::CHUNK_BYTES).min(remaining);
                    let read = self
                        .file
                        .read_at(self.pos, want as usize)
                        .await
                        .map_err(|e| IoError::os("read segment", &self.path, e))?;
                    self.window.clear();
                    self.window.extend_from_slice(&read);
                    self.window_pos = self.pos;
                    if (self.window.len() as u64) < want {
                        // The file shrank under us: believe what we can read.
                        self.file_bytes = self.pos + self.window.len() as u64;
                    }
                }
            }
        }
    }

    /// After a [`LogEnd::Clean`] or [`LogEnd::Sealed`] end, scans the rest of the file (after
    /// the end marker, or after the seal) and returns the offset of the first non-zero byte,
    /// if any. Non-zero bytes there mean a write that landed out of order or garbage; the
    /// caller decides. Returns `None` before the end is reached or after a torn end.
    pub async fn nonzero_after_end(&mut self) -> Result<Option<u64>, IoError> {
        let mut pos = match &self.ended {
            Some(end @ (LogEnd::Clean { .. } | LogEnd::Sealed { .. })) => end.data_end(),
            _ => return Ok(None),
        };
        while pos < self.file_bytes {
            let want = (self.file_bytes - pos).min(Self::CHUNK_BYTES);
            let read = self
                .file
                .read_at(pos, want as usize)
                .await
                .map_err(|e| IoError::os("read segment tail", &self.path, e))?;
            if let Some(i) = read.iter().position(|b| *b != 0) {
                return Ok(Some(pos + i as u64));
            }
            if read.is_empty() {
                break;
            }
            pos += read.len() as u64;
        }
        Ok(None)
    }

    /// Returns the offset of the first frame at or after `from` that validates in this segment
    /// (a record with `1 <= len <= payload_bytes_max` and a matching checksum, or a seal with
    /// a matching checksum), testing every byte offset up to the end of the file.
    ///
    /// Recovery uses it to tell a torn tail (nothing valid after the damage) from corruption
    /// (valid frames written well after it). Memory is bounded by
    /// [`LogReader::SCAN_CHUNK_BYTES`] plus one frame; runs of zero bytes are skipped quickly,
    /// and a checksum is computed only where the length field is plausible.
    pub async fn find_valid_frame(
        &mut self,
        from: u64,
        payload_bytes_max: u64,
    ) -> Result<Option<u64>, IoError> {
        let payload_bytes_max = payload_bytes_max.min(RECORD_PAYLOAD_BYTES_MAX);
        let frame_max = format::frame_bytes(payload_bytes_max).max(SEAL_FRAME_BYTES);
        let mut pos = from.max(SEGMENT_HEADER_BYTES);
        while pos < self.file_bytes {
            let want = (Self::SCAN_CHUNK_BYTES + frame_max).min(self.file_bytes - pos);
            let read = self
                .file
                .read_at(pos, want as usize)
                .await
                .map_err(|e| IoError::os("scan segment", &self.path, e))?;
            let buf: &[u8] = &read;
            if (buf.len() as u64) < want {
                // The file shrank under us: believe what we can read.
                self.file_bytes = pos + buf.len() as u64;
            }
            let tested = (buf.len() as u64).min(Self::SCAN_CHUNK_BYTES) as usize;
            let mut i = 0usize;
            while i < tested {
                // A frame needs a non-zero length field: skip to 3 bytes before the next
                // non-zero byte.
                let Some(nz) = buf.get(i..).and_then(|b| b.iter().position(|x| *x != 0)) else {
                    break;
                };
                i = (i + nz).saturating_sub(3).max(i);
                if i >= tested {
                    break;
                }
                let at = pos + i as u64;
                let window = buf.get(i..).unwrap_or_default();
                let len = window
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, u32::from_le_bytes);
                if len == SEAL_LEN || (len != 0 && u64::from(len) <= payload_bytes_max) {
                    let parsed = format::parse_frame(self.segment_id, window, self.file_bytes - at);
                    if matches!(parsed, FrameParse::Record { .. } | FrameParse::Seal { .. }) {
                        return Ok(Some(at));
                    }
                }
                i += 1;
            }
            if buf.is_empty() {
                break;
            }
            pos += tested as u64;
        }
        Ok(None)
    }

    /// Closes the file.
    pub async fn close(self) -> Result<(), IoError> {
        self.file.close().await.map_err(|e| IoError::os("close segment", &self.path, e))
    }
}
