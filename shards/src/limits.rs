//! Every bound of the shard engine, in one place, related by compile-time assertions.

use crate::wal::record::RECORD_HEADER_BYTES_MAX;

/// Largest key, in bytes.
pub const KEY_BYTES_MAX: u64 = 64 * 1024 - 1;
/// Largest value, in bytes.
pub const VALUE_BYTES_MAX: u64 = 1024 * 1024;
/// Largest WAL record payload the engine produces: the longest header (a put with expiry),
/// key and value.
pub const WAL_RECORD_BYTES_MAX: u64 = RECORD_HEADER_BYTES_MAX + KEY_BYTES_MAX + VALUE_BYTES_MAX;
/// Smallest WAL segment: room for the segment header block and the largest record.
pub const WAL_SEGMENT_BYTES_MIN: u64 = 2 * 1024 * 1024;
/// Largest WAL segment.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Smallest memtable budget.
pub const MEMTABLE_BYTES_MIN: u64 = 64 * 1024;
/// Longest periodic sync interval: the most recent writes a power loss may take.
pub const SYNC_PERIOD_MS_MAX: u64 = 60_000;
/// Bound on WAL bytes appended but not yet written; beyond it writes get `Overloaded`.
pub const WAL_PENDING_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Bound on one WAL write (and its DMA buffer). Also recovery's torn-tail window: a valid frame
/// found this far or farther past the damage in the newest segment cannot come from the write
/// that was in flight at a crash, so the damage is reported as corruption.
pub const WAL_WRITE_BYTES_MAX: u64 = 1024 * 1024;

const _: () = assert!(WAL_RECORD_BYTES_MAX <= kvs_io::RECORD_PAYLOAD_BYTES_MAX);
const _: () = assert!(
    WAL_SEGMENT_BYTES_MIN
        >= kvs_io::BLOCK_BYTES
            + kvs_io::format::frame_bytes(WAL_RECORD_BYTES_MAX)
            + kvs_io::SEAL_FRAME_BYTES
);
const _: () = assert!(WAL_PENDING_BYTES_MAX >= kvs_io::format::frame_bytes(WAL_RECORD_BYTES_MAX));
const _: () = assert!(WAL_SEGMENT_BYTES_MIN.is_multiple_of(kvs_io::BLOCK_BYTES));
