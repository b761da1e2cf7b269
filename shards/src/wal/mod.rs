//! The shard's write-ahead log: segment naming, the record payload ([`record`]), and replay
//! ([`recovery`]). Framing, checksums, group commit and the reader are kvs-io's.
//!
//! Segments live at `<shard dir>/wal/<segment id, 20-digit zero-padded decimal>.wal`, so the
//! lexical order of names is the numeric order of ids. Ids start at 1 and only grow; every
//! [`crate::Engine::open`] starts a fresh segment after the highest id seen.
//!
//! ## Invariants
//! - Only the newest segment can end in a torn tail: a segment is rolled (or the engine
//!   closed) only after its writer appended the seal frame (record count, end offset) and
//!   drained and fdatasync'd everything, before the next segment is created; and recovery
//!   truncates a torn newest segment and seals it (durably) before it creates the next one.
//!   So every segment but the newest ends with a seal that matches its records, and recovery
//!   refuses one that does not.

pub mod record;
pub mod recovery;

use std::path::{Path, PathBuf};

/// Name of the WAL directory inside a shard directory.
pub const WAL_DIR_NAME: &str = "wal";
/// Extension of segment files.
pub const SEGMENT_EXTENSION: &str = "wal";

/// The path of segment `id` in `wal_dir`.
pub fn segment_path(wal_dir: &Path, id: u64) -> PathBuf {
    wal_dir.join(format!("{id:020}.{SEGMENT_EXTENSION}"))
}

/// The segment id named by `path`, if the file name is a segment name.
pub fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = segment_path(Path::new("/d/wal"), 42);
        assert_eq!(p, Path::new("/d/wal/00000000000000000042.wal"));
        assert_eq!(parse_segment_name(&p), Some(42));
        assert_eq!(parse_segment_name(Path::new("00000000000000000042.tmp")), None);
        assert_eq!(parse_segment_name(Path::new("42.wal")), None);
        assert_eq!(parse_segment_name(Path::new("0000000000000000004x.wal")), None);
        assert_eq!(parse_segment_name(Path::new(".kvs-io-probe")), None);
    }
}
