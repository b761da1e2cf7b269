//! The error type of the io crate.
//!
//! Every variant carries typed fields so callers (the shard engine) can decide what to do
//! without parsing strings: a torn tail is not an error here (the reader reports it as a
//! [`crate::LogEnd::Torn`]), but a bad segment header is.

use std::path::PathBuf;

/// Errors of the kvs-io crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// An operating-system I/O call failed.
    #[error("{op} failed on {path}: {source}")]
    Os {
        /// What we were doing ("open", "write", "fdatasync", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A write returned fewer bytes than asked (for example a full device).
    #[error(
        "short write on {path} at offset {offset}: wrote {written_bytes} of {expected_bytes} bytes"
    )]
    ShortWrite {
        /// The file written.
        path: PathBuf,
        /// The aligned file offset of the write.
        offset: u64,
        /// Bytes the kernel accepted.
        written_bytes: u64,
        /// Bytes we asked to write.
        expected_bytes: u64,
    },

    /// The segment header is missing or invalid.
    #[error("bad segment header in {path}: {problem}")]
    SegmentHeader {
        /// The segment file.
        path: PathBuf,
        /// What is wrong with it.
        problem: HeaderProblem,
    },

    /// The record does not fit in what is left of the segment; the caller should roll to a
    /// new segment.
    #[error("segment {segment_id} is full: {used_bytes} of {capacity_bytes} bytes used, record frame needs {frame_bytes}")]
    SegmentFull {
        /// The segment id.
        segment_id: u64,
        /// Bytes appended so far, header included.
        used_bytes: u64,
        /// The segment capacity.
        capacity_bytes: u64,
        /// The frame that did not fit.
        frame_bytes: u64,
    },

    /// Too many bytes are waiting to be written; the caller should shed load.
    #[error("log writer overloaded: {pending_bytes} bytes pending, max {pending_bytes_max}")]
    Overloaded {
        /// Bytes appended and not yet written.
        pending_bytes: u64,
        /// The configured bound.
        pending_bytes_max: u64,
    },

    /// A record payload is empty or larger than [`crate::RECORD_PAYLOAD_BYTES_MAX`].
    #[error("record payload of {payload_bytes} bytes is outside 1..={payload_bytes_max}")]
    RecordSize {
        /// The payload size given.
        payload_bytes: u64,
        /// The format limit.
        payload_bytes_max: u64,
    },

    /// The writer was closed (or is closing); no more appends are accepted.
    #[error("log writer for segment {segment_id} is closed")]
    Closed {
        /// The segment id.
        segment_id: u64,
    },

    /// An earlier write or fdatasync failed; the writer refuses all further work because the
    /// state of the file after a failed fsync is unknown.
    #[error("log writer for {path} failed earlier and is unusable: {reason}")]
    Failed {
        /// The segment file.
        path: PathBuf,
        /// The first error, rendered.
        reason: String,
    },

    /// An option is out of its allowed range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option name.
        name: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

/// What is wrong with a segment header.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    /// The file is shorter than a header: it was being created when the process stopped.
    #[error("file has {file_bytes} bytes, shorter than the header")]
    Short {
        /// File size.
        file_bytes: u64,
    },
    /// The header bytes are all zero: the file was created and preallocated, but the header
    /// never reached the disk.
    #[error("header is all zero")]
    Zeroed,
    /// The magic number does not match.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The format version is not one we read.
    #[error(
        "unsupported format version {version}: this build reads only version {}",
        crate::format::SEGMENT_VERSION
    )]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The header checksum does not match.
    #[error("header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// Stored crc.
        stored: u32,
        /// Computed crc.
        computed: u32,
    },
    /// The header names a different segment id than expected.
    #[error("header names segment {found}, expected {expected}")]
    WrongSegment {
        /// Segment id in the header.
        found: u64,
        /// Segment id the caller expected.
        expected: u64,
    },
}

impl IoError {
    /// Wraps a glommio error with the operation and path.
    pub(crate) fn os(
        op: &'static str,
        path: impl Into<PathBuf>,
        err: impl Into<std::io::Error>,
    ) -> Self {
        IoError::Os { op, path: path.into(), source: err.into() }
    }
}
