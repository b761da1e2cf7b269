//! kvs-io: direct I/O building blocks for the storage engine, on glommio (io_uring).
//!
//! # What is here
//! - [`checksum`]: crc32c helpers.
//! - [`format`]: the byte layout of a log segment (header, record frames, end marker), pure.
//! - [`plan`]: the group-commit policy as pure state ([`GroupCommitPlan`], [`TailBuffer`]).
//! - [`writer`]: [`LogWriter`], the append-only segment writer with group commit, the thin
//!   async shell that carries out the plan with `DmaFile` writes and `fdatasync`.
//! - [`reader`]: [`LogReader`], which iterates a segment's records for recovery and reports a
//!   torn tail with its offset.
//! - [`fs`]: directory fsync, creation, listing, truncation, removal.
//!
//! # What is not
//! Nothing here knows what a record means, how segments are named, or when to roll to the
//! next segment: the shard engine (kvs-shards) decides that. This crate uses no other crate of
//! ours.
//!
//! # Data flow
//! `LogWriter::append` copies a framed record into the in-memory tail and returns its
//! [`Lsn`]; the writer's flusher task writes the pending bytes (4 KiB aligned, rewriting the
//! partial last block), fdatasyncs, and wakes every `LogWriter::durable` waiter the sync
//! covers. Recovery opens each segment with `LogReader` and replays until `LogEnd`.
//!
//! # Invariants
//! - Every record on disk is framed with its length and a crc32c seeded with the segment id;
//!   zero bytes after the last record mean "end". A closed segment ends with a seal frame
//!   (record count and end offset) after its last record; a crashed one does not.
//! - A record is reported durable only after the bytes are written (`Periodic`) or written and
//!   fdatasync'd (`Always`); after a failed write or fdatasync the writer refuses all work.
//! - All buffers are bounded: pending bytes by `pending_bytes_max`, one write by
//!   `write_bytes_max`, the reader's window by its chunk plus one record.
//! - Everything here is `!Send` and runs on the glommio executor that created it.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::host_endian_bytes
    )
)]

pub mod checksum;
mod error;
pub mod format;
pub mod fs;
pub mod plan;
pub mod reader;
pub mod writer;

pub use error::{HeaderProblem, IoError};
pub use format::{
    TornReason, BLOCK_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEAL_FRAME_BYTES, SEGMENT_HEADER_BYTES,
};
pub use fs::{
    create_dir_all, file_bytes, list_dir, probe_device, remove_file, sync_dir, truncate_file,
};
pub use plan::{Durability, GroupCommitPlan, TailBuffer};
pub use reader::{LogEnd, LogReader, LogRecord, ReadOutcome};
pub use writer::{seal_segment, Durable, LogStats, LogWriter, LogWriterOptions, Lsn};
