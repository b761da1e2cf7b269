//! The log reader used by recovery: iterates the records of one segment in order.
//!
//! The reader validates the header (magic, version, crc, segment id), then parses frames with
//! the pure [`crate::format::parse_frame`] over a window it refills in chunks, so memory stays
//! bounded by the chunk plus one record. It stops at the first of:
//! - the zero end marker or the exact end of the file: [`LogEnd::Clean`];
//! - a frame that fails its checksum, has a zero length with a non-zero crc, a length over the
//!   limit, or runs past the end of the file: [`LogEnd::Torn`] with the frame's offset, so the
//!   caller can truncate there. Every record before that offset has been yielded.
//!
//! The reader does not decide whether a torn end is acceptable; the shard engine does (only
//! in the newest segment).

use crate::format::{self, FrameParse, TornReason, SEGMENT_HEADER_BYTES};
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
    /// The offset one past the last valid record.
    pub fn offset(&self) -> u64 {
        match self {
            LogEnd::Clean { offset } | LogEnd::Torn { offset, .. } => *offset,
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
    ended: Option<LogEnd>,
}

impl LogReader {
    /// Bytes read per refill of the window.
    pub const CHUNK_BYTES: u64 = 1 << 20;

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
                    return Ok(ReadOutcome::Record(record));
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

    /// After a [`LogEnd::Clean`] end, scans the rest of the file and returns the offset of the
    /// first non-zero byte, if any. Non-zero bytes past the end marker mean a write that
    /// landed out of order or garbage; the caller decides (the engine truncates the newest
    /// segment there). Returns `None` before the end is reached or after a torn end.
    pub async fn nonzero_after_end(&mut self) -> Result<Option<u64>, IoError> {
        let Some(LogEnd::Clean { offset }) = self.ended else {
            return Ok(None);
        };
        let mut pos = offset;
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

    /// Closes the file.
    pub async fn close(self) -> Result<(), IoError> {
        self.file.close().await.map_err(|e| IoError::os("close segment", &self.path, e))
    }
}
