//! The error type of the shard engine.

use std::path::PathBuf;

/// Errors of the kvs-shards crate.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// An I/O operation on a WAL file or directory failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: kvs_io::IoError,
    },

    /// Stored bytes are damaged somewhere a torn tail cannot explain (an older WAL segment,
    /// a segment header, a record that passes its checksum but does not decode).
    #[error("corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// The engine was closed.
    #[error("shard engine is closed")]
    Closed,

    /// The key is longer than [`crate::limits::KEY_BYTES_MAX`].
    #[error("key of {key_bytes} bytes exceeds the limit of {key_bytes_max}")]
    KeyTooLarge {
        /// The key length.
        key_bytes: u64,
        /// The limit.
        key_bytes_max: u64,
    },

    /// The key is empty (tables and the manifest record key ranges of non-empty keys).
    #[error("empty key")]
    EmptyKey,

    /// The value is longer than [`crate::limits::VALUE_BYTES_MAX`].
    #[error("value of {value_bytes} bytes exceeds the limit of {value_bytes_max}")]
    ValueTooLarge {
        /// The value length.
        value_bytes: u64,
        /// The limit.
        value_bytes_max: u64,
    },

    /// Too many WAL bytes wait to be written; retry later.
    #[error("shard overloaded: {pending_bytes} WAL bytes pending, max {pending_bytes_max}")]
    Overloaded {
        /// Bytes appended and not yet written.
        pending_bytes: u64,
        /// The bound.
        pending_bytes_max: u64,
    },

    /// A table builder was fed input it cannot write (keys out of order, an empty table, a
    /// call after finish): a bug in the caller, never caused by data from outside.
    #[error("invalid SSTable builder input: {reason}")]
    SstableInput {
        /// What was wrong.
        reason: String,
    },

    /// An option is out of range.
    #[error("invalid shard option {field}: {reason}")]
    InvalidOptions {
        /// The field name.
        field: &'static str,
        /// Why.
        reason: String,
    },

    /// The WAL failed earlier (a write, fdatasync or segment roll); the engine refuses writes
    /// because durability can no longer be promised. Restart to recover from the WAL.
    #[error("shard WAL unusable after an earlier failure: {reason}")]
    Failed {
        /// The first failure, rendered.
        reason: String,
    },

    /// A file's format version is not the one this build reads (the magic matched).
    #[error(
        "unsupported format version {found} in {path}: this build reads only version {supported}"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: u32,
        /// The only version this build reads.
        supported: u32,
    },

    /// `Manifest::open` found no manifest file in the directory.
    #[error("no manifest in {dir}")]
    ManifestMissing {
        /// The directory searched.
        dir: PathBuf,
    },

    /// `Manifest::create` found a manifest already in place.
    #[error("a manifest already exists: {path}")]
    ManifestExists {
        /// The manifest found.
        path: PathBuf,
    },

    /// A manifest edit breaks an invariant of the table set (an unknown or duplicate table,
    /// overlapping ranges in a level, a WAL position that goes backwards, ...). Nothing was
    /// written.
    #[error("invalid manifest edit: {reason}")]
    InvalidEdit {
        /// What is wrong.
        reason: String,
    },
}

impl ShardError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: kvs_io::IoError) -> Self {
        ShardError::Io { path: path.into(), source }
    }
}
