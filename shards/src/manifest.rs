//! The manifest: the durable list of live SSTables per level, the WAL position up to which
//! everything is flushed, and the next table id. The engine commits flushes here and recovers
//! from it; compactions commit here too (one edit: remove the inputs, add the outputs).
//!
//! # What is here
//! - [`TableId`], [`TableMeta`]: one SSTable as the manifest and the compaction picker see it.
//! - [`WalPosition`]: a place in the WAL, `(segment id, byte offset)`.
//! - [`ManifestState`]: the table set; [`ManifestState::apply`] is a pure function from a state
//!   and a [`ManifestEdit`] to the next state, which checks every invariant.
//! - [`encode`] / [`decode`]: the file format, pure (drawn in `shards/FORMAT.md`, "Manifest").
//! - [`Manifest`]: the async shell that writes one file per generation.
//!
//! # What is not
//! The manifest does not read or delete SSTable files, and does not decide anything: flush
//! and compaction build tables, then commit them here with one edit each.
//!
//! # How a change becomes durable
//! Every change writes a **complete** new manifest file `MANIFEST-<generation, 20 digits>`
//! (generation = previous + 1): the bytes go to `MANIFEST-<generation>.tmp`, which is
//! fdatasync'd, renamed to its final name, and the directory is fsync'd
//! ([`kvs_io::fs::write_file_atomic`]); only then is the previous generation removed. There is
//! no log of edits to replay: a manifest is small (one entry per table) and changes a few
//! times a minute at most, so a rewrite is cheap and needs no compaction of its own.
//!
//! # Opening: what a crash can leave, and what is corruption
//! Because the rename comes after the fdatasync, a crash can leave only:
//! - a `MANIFEST-<g>.tmp` file, complete or torn or empty (the crash came before the rename);
//!   it was never visible and is **removed** at open, whatever it holds;
//! - two named generations (the crash came between the rename and the removal of the older
//!   one); the newer is complete, the older is **removed** at open.
//!
//! So a named manifest file is always complete. [`Manifest::open`] reads only the highest
//! named generation; if it fails to validate, that is real damage (a bad disk, a stray
//! write), not a crash artifact, and open fails with [`ShardError::Corrupt`] naming the file.
//! It never falls back to an older generation, even a valid one: the older one lists tables
//! that compaction may already have deleted and a WAL position that may already have been
//! recycled, so using it would silently lose or resurrect data. A different format version is
//! [`ShardError::UnsupportedVersion`].
//!
//! # WAL position
//! [`ManifestState::flushed`] is a [`WalPosition`] `(segment_id, offset)`: every WAL record
//! that starts before it (in a segment with a lower id, or in `segment_id` before byte
//! `offset`) is in a table the manifest lists. Recovery replays only records at or after it,
//! and WAL segments wholly before it may be deleted. The engine has no global sequence
//! number (stamps are HLC readings, not in WAL order), which is why a position is used. The
//! engine will normally roll the WAL when it freezes a memtable, so the position is the start
//! of the first segment the frozen memtable does not cover: `(next_segment_id, 0)`.
//!
//! # Table ids
//! [`Manifest::allocate_table_id`] hands out ids before a table file is written; the counter is
//! persisted as `next_table_id` with the next edit. After a crash, ids handed out but never
//! committed may be handed out again: recovery must first delete table files the manifest does
//! not list (orphans of an interrupted flush or compaction).
//!
//! # Invariants (checked by [`ManifestState::validate`] before a write and after a read)
//! - Table ids are unique and below `next_table_id`; `level < LEVELS_MAX`.
//! - `1 <= key length <= KEY_BYTES_MAX` and `min_key <= max_key` for each table.
//! - In every level but 0 the tables' key ranges (inclusive) do not overlap.
//! - `flushed` never moves backwards.
//! - An encoded manifest is at most [`MANIFEST_BYTES_MAX`].

use crate::error::ShardError;
use crate::limits::KEY_BYTES_MAX;
use crate::types::Stamp;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Number of levels the format can hold (levels `0..LEVELS_MAX`).
pub const LEVELS_MAX: u8 = 16;
/// The largest manifest file written or read; an edit that would exceed it is refused.
pub const MANIFEST_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// The magic at offset 0 of every manifest file.
pub const MANIFEST_MAGIC: [u8; 8] = *b"KVS-MAN\0";
/// The format version written and the only one read.
pub const MANIFEST_VERSION: u32 = 1;
/// Bytes of the fixed header.
pub const MANIFEST_HEADER_BYTES: u64 = 32;
/// Bytes of the fixed part of the body (before the tables).
const BODY_FIXED_BYTES: u64 = 28;
/// Bytes of one table entry without its keys.
const TABLE_FIXED_BYTES: u64 = 45;
/// File name prefix of a manifest generation.
pub const MANIFEST_PREFIX: &str = "MANIFEST-";
/// Suffix of a manifest being written.
pub const MANIFEST_TMP_SUFFIX: &str = ".tmp";

const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as u64, "key lengths are stored as u16");
const _: () = assert!(MANIFEST_BYTES_MAX <= u32::MAX as u64, "body length is stored as u32");

/// The id of an SSTable: unique in a shard, never reused once committed. Greater ids were
/// allocated later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableId(pub u64);

/// An SSTable as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMeta {
    /// The table's id (and file name).
    pub id: TableId,
    /// The level it lives in, `0..LEVELS_MAX`. Tables in level 0 may overlap each other.
    pub level: u8,
    /// The file's size.
    pub size_bytes: u64,
    /// Entries (values and tombstones) in the table.
    pub entries: u64,
    /// The smallest key in the table (inclusive).
    pub min_key: Vec<u8>,
    /// The greatest key in the table (inclusive).
    pub max_key: Vec<u8>,
    /// The greatest stamp of any entry (recovery moves the clock past it).
    pub max_stamp: Stamp,
}

impl TableMeta {
    /// Whether the inclusive key ranges of `self` and `[min_key, max_key]` share a key.
    pub fn overlaps(&self, min_key: &[u8], max_key: &[u8]) -> bool {
        self.min_key.as_slice() <= max_key && min_key <= self.max_key.as_slice()
    }
}

/// A position in the WAL: segment id, then the byte offset of a record frame in it. Ordered
/// by segment, then offset. `WalPosition::default()` (0, 0) is before every record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition {
    /// The WAL segment id.
    pub segment_id: u64,
    /// Byte offset in that segment.
    pub offset: u64,
}

/// The state the manifest records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestState {
    /// Every record before this position is in a listed table; recovery replays from here.
    pub flushed: WalPosition,
    /// The next table id to allocate; greater than every listed id.
    pub next_table_id: u64,
    /// Tables per level; index = level, always `LEVELS_MAX` entries. Level 0 is sorted by id
    /// (oldest first), the others by `min_key`.
    levels: Vec<Vec<TableMeta>>,
}

impl Default for ManifestState {
    fn default() -> Self {
        ManifestState {
            flushed: WalPosition::default(),
            next_table_id: 1,
            levels: vec![Vec::new(); usize::from(LEVELS_MAX)],
        }
    }
}

/// One atomic change of the table set: remove some tables, add some, and move the flushed
/// WAL position. A flush is `{ add: [new L0 table], flushed: Some(pos) }`; a compaction is
/// `{ remove: inputs, add: outputs }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestEdit {
    /// Tables to add (ids allocated by [`Manifest::allocate_table_id`], not yet listed).
    pub add: Vec<TableMeta>,
    /// Tables to remove (must be listed).
    pub remove: Vec<TableId>,
    /// The new flushed position, if it moves (it must not move backwards).
    pub flushed: Option<WalPosition>,
}

impl ManifestEdit {
    /// The edit a memtable flush commits.
    pub fn flush(table: TableMeta, flushed: WalPosition) -> Self {
        ManifestEdit { add: vec![table], remove: Vec::new(), flushed: Some(flushed) }
    }

    /// The edit a compaction commits.
    pub fn compaction(remove: Vec<TableId>, add: Vec<TableMeta>) -> Self {
        ManifestEdit { add, remove, flushed: None }
    }
}

fn invalid(reason: impl Into<String>) -> ShardError {
    ShardError::InvalidEdit { reason: reason.into() }
}

impl ManifestState {
    /// The tables per level (index = level; `LEVELS_MAX` entries, most of them empty).
    /// Level 0 is sorted oldest first (by id), the others by `min_key`.
    pub fn levels(&self) -> &[Vec<TableMeta>] {
        &self.levels
    }

    /// Every listed table.
    pub fn tables(&self) -> impl Iterator<Item = &TableMeta> {
        self.levels.iter().flatten()
    }

    /// The listed table with id `id`.
    pub fn table(&self, id: TableId) -> Option<&TableMeta> {
        self.tables().find(|t| t.id == id)
    }

    /// The greatest stamp in any listed table.
    pub fn max_stamp(&self) -> Option<Stamp> {
        self.tables().map(|t| t.max_stamp).max()
    }

    /// The state after `edit`, or [`ShardError::InvalidEdit`] when the edit removes an unknown
    /// table, adds a listed or unallocated id, breaks the level invariants or moves `flushed`
    /// backwards. Pure.
    pub fn apply(&self, edit: &ManifestEdit) -> Result<ManifestState, ShardError> {
        let mut next = self.clone();
        let mut removed = BTreeSet::new();
        for id in &edit.remove {
            if !removed.insert(*id) {
                return Err(invalid(format!("table {} removed twice", id.0)));
            }
            let found = next.levels.iter_mut().any(|level| {
                let before = level.len();
                level.retain(|t| t.id != *id);
                level.len() != before
            });
            if !found {
                return Err(invalid(format!("table {} is not listed", id.0)));
            }
        }
        for table in &edit.add {
            if self.table(table.id).is_some() || removed.contains(&table.id) {
                return Err(invalid(format!("table {} is already listed", table.id.0)));
            }
            let level = next.levels.get_mut(usize::from(table.level)).ok_or_else(|| {
                invalid(format!("table {} level {} >= {LEVELS_MAX}", table.id.0, table.level))
            })?;
            level.push(table.clone());
        }
        if let Some(flushed) = edit.flushed {
            if flushed < self.flushed {
                return Err(invalid(format!(
                    "flushed position moves backwards from {:?} to {flushed:?}",
                    self.flushed
                )));
            }
            next.flushed = flushed;
        }
        next.sort();
        next.validate().map_err(invalid)?;
        Ok(next)
    }

    /// Puts every level in its canonical order.
    fn sort(&mut self) {
        for (i, level) in self.levels.iter_mut().enumerate() {
            if i == 0 {
                level.sort_by_key(|t| t.id);
            } else {
                level.sort_by(|a, b| a.min_key.cmp(&b.min_key).then(a.id.cmp(&b.id)));
            }
        }
    }

    /// Checks the invariants of the module doc; `Err` says which one fails.
    pub fn validate(&self) -> Result<(), String> {
        if self.levels.len() != usize::from(LEVELS_MAX) {
            return Err(format!("{} levels, expected {LEVELS_MAX}", self.levels.len()));
        }
        let mut ids = BTreeSet::new();
        for (level_index, level) in self.levels.iter().enumerate() {
            for t in level {
                if usize::from(t.level) != level_index {
                    return Err(format!(
                        "table {} says level {} in level {level_index}",
                        t.id.0, t.level
                    ));
                }
                if !ids.insert(t.id) {
                    return Err(format!("table {} listed twice", t.id.0));
                }
                if t.id.0 >= self.next_table_id {
                    return Err(format!(
                        "table {} not below next_table_id {}",
                        t.id.0, self.next_table_id
                    ));
                }
                for (what, key) in [("min_key", &t.min_key), ("max_key", &t.max_key)] {
                    if key.is_empty() || key.len() as u64 > KEY_BYTES_MAX {
                        return Err(format!("table {} {what} of {} bytes", t.id.0, key.len()));
                    }
                }
                if t.min_key > t.max_key {
                    return Err(format!("table {} min_key > max_key", t.id.0));
                }
            }
            if level_index > 0 {
                for pair in level.windows(2) {
                    if let [a, b] = pair {
                        if a.max_key >= b.min_key {
                            return Err(format!(
                                "tables {} and {} overlap in level {level_index}",
                                a.id.0, b.id.0
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The file name of manifest generation `generation`.
pub fn manifest_name(generation: u64) -> String {
    format!("{MANIFEST_PREFIX}{generation:020}")
}

/// What a file name in the shard directory is, to the manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestFileName {
    /// `MANIFEST-<20 digits>`: a complete generation.
    Generation(u64),
    /// `MANIFEST-<20 digits>.tmp`: a write that was never renamed.
    Temporary(u64),
}

/// Parses a manifest file name; `None` for anything else (other files in the directory).
pub fn parse_manifest_name(name: &str) -> Option<ManifestFileName> {
    let rest = name.strip_prefix(MANIFEST_PREFIX)?;
    let (digits, tmp) = match rest.strip_suffix(MANIFEST_TMP_SUFFIX) {
        Some(d) => (d, true),
        None => (rest, false),
    };
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let generation = digits.parse().ok()?;
    Some(if tmp {
        ManifestFileName::Temporary(generation)
    } else {
        ManifestFileName::Generation(generation)
    })
}

/// Encodes `state` as manifest generation `generation` (format in the module doc and
/// `shards/FORMAT.md`).
pub fn encode(generation: u64, state: &ManifestState) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&state.flushed.segment_id.to_le_bytes());
    body.extend_from_slice(&state.flushed.offset.to_le_bytes());
    body.extend_from_slice(&state.next_table_id.to_le_bytes());
    let count = state.tables().count() as u32;
    body.extend_from_slice(&count.to_le_bytes());
    for t in state.tables() {
        body.extend_from_slice(&t.id.0.to_le_bytes());
        body.push(t.level);
        body.extend_from_slice(&t.size_bytes.to_le_bytes());
        body.extend_from_slice(&t.entries.to_le_bytes());
        body.extend_from_slice(&t.max_stamp.hlc.to_le_bytes());
        body.extend_from_slice(&t.max_stamp.node.to_le_bytes());
        body.extend_from_slice(&(t.min_key.len() as u16).to_le_bytes());
        body.extend_from_slice(&(t.max_key.len() as u16).to_le_bytes());
        body.extend_from_slice(&t.min_key);
        body.extend_from_slice(&t.max_key);
    }
    let mut out = Vec::with_capacity(MANIFEST_HEADER_BYTES as usize + body.len());
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), &body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Why bytes do not decode as a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The magic matched but the version is not [`MANIFEST_VERSION`].
    Version {
        /// The version found.
        found: u32,
    },
    /// Anything else: `offset` is where the problem was found.
    Invalid {
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl DecodeError {
    /// The shard error for this problem in the file at `path`.
    pub fn into_shard_error(self, path: PathBuf) -> ShardError {
        match self {
            DecodeError::Version { found } => {
                ShardError::UnsupportedVersion { path, found, supported: MANIFEST_VERSION }
            }
            DecodeError::Invalid { offset, reason } => {
                ShardError::Corrupt { path, offset, reason: format!("manifest: {reason}") }
            }
        }
    }
}

/// A bounds-checked little-endian reader over a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n);
        match end.and_then(|e| self.bytes.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(DecodeError::Invalid {
                offset: self.pos as u64,
                reason: format!(
                    "truncated {what}: need {n} bytes, {} left",
                    self.bytes.len() - self.pos.min(self.bytes.len())
                ),
            }),
        }
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

/// Decodes and validates a manifest file's bytes: returns its generation and state.
/// Never panics on any input.
pub fn decode(bytes: &[u8]) -> Result<(u64, ManifestState), DecodeError> {
    let bad = |offset: u64, reason: String| DecodeError::Invalid { offset, reason };
    let mut c = Cursor { bytes, pos: 0 };
    let magic: [u8; 8] = c.array("header")?;
    if magic != MANIFEST_MAGIC {
        return Err(bad(0, format!("bad magic {magic:02x?}")));
    }
    let version = c.u32("header")?;
    if version != MANIFEST_VERSION {
        return Err(DecodeError::Version { found: version });
    }
    let flags = c.u32("header")?;
    let generation = c.u64("header")?;
    let body_len = u64::from(c.u32("header")?);
    let crc = c.u32("header")?;
    if flags != 0 {
        return Err(bad(12, format!("unknown flags {flags:#x}")));
    }
    let file_len = bytes.len() as u64;
    if MANIFEST_HEADER_BYTES + body_len != file_len {
        return Err(bad(
            24,
            format!("body length {body_len} does not match file length {file_len}"),
        ));
    }
    let (head, body) = bytes.split_at(MANIFEST_HEADER_BYTES as usize);
    let head_covered = head.get(..28).unwrap_or_default();
    let actual = crc32c::crc32c_append(crc32c::crc32c(head_covered), body);
    if actual != crc {
        return Err(bad(
            28,
            format!("checksum mismatch: stored {crc:#010x}, computed {actual:#010x}"),
        ));
    }
    // The checksum matched: what follows can only fail on bytes a buggy writer produced.
    let mut state = ManifestState::default();
    state.flushed.segment_id = c.u64("body")?;
    state.flushed.offset = c.u64("body")?;
    state.next_table_id = c.u64("body")?;
    let count_offset = c.pos as u64;
    let count = u64::from(c.u32("body")?);
    let room = (body_len - BODY_FIXED_BYTES.min(body_len)) / TABLE_FIXED_BYTES;
    if count > room {
        return Err(bad(
            count_offset,
            format!("{count} tables cannot fit in {body_len} body bytes"),
        ));
    }
    for _ in 0..count {
        let at = c.pos as u64;
        let id = TableId(c.u64("table")?);
        let level = c.u8("table")?;
        let size_bytes = c.u64("table")?;
        let entries = c.u64("table")?;
        let max_stamp = Stamp { hlc: c.u64("table")?, node: c.u64("table")? };
        let min_len = usize::from(c.u16("table")?);
        let max_len = usize::from(c.u16("table")?);
        let min_key = c.take(min_len, "min_key")?.to_vec();
        let max_key = c.take(max_len, "max_key")?.to_vec();
        let slot = state
            .levels
            .get_mut(usize::from(level))
            .ok_or_else(|| bad(at + 8, format!("table {} level {level} >= {LEVELS_MAX}", id.0)))?;
        slot.push(TableMeta { id, level, size_bytes, entries, min_key, max_key, max_stamp });
    }
    if c.pos != bytes.len() {
        return Err(bad(c.pos as u64, format!("{} trailing bytes", bytes.len() - c.pos)));
    }
    state.sort();
    state.validate().map_err(|reason| bad(MANIFEST_HEADER_BYTES, reason))?;
    Ok((generation, state))
}

/// The manifest of one shard directory: the current state and the file that holds it.
///
/// `!Send`; lives on the shard's executor. Edits must be serialized by the caller (the engine
/// commits one flush or compaction at a time), which `&mut self` enforces.
#[derive(Debug)]
pub struct Manifest {
    dir: PathBuf,
    generation: u64,
    state: ManifestState,
    /// Set when a write failed after its outcome on disk became uncertain; refuses edits.
    failed: Option<String>,
}

impl Manifest {
    /// Creates the first manifest (generation 1, empty state) in `dir`, creating `dir` if
    /// needed. Fails with [`ShardError::ManifestExists`] when a manifest is already there.
    pub async fn create(dir: impl AsRef<Path>) -> Result<Manifest, ShardError> {
        let dir = dir.as_ref().to_path_buf();
        kvs_io::create_dir_all(&dir).await.map_err(|e| ShardError::io(&dir, e))?;
        let listing = scan(&dir).await?;
        if let Some(&(generation, _)) = listing.generations.last() {
            return Err(ShardError::ManifestExists { path: dir.join(manifest_name(generation)) });
        }
        remove_temporaries(&dir, &listing.temporaries).await?;
        let state = ManifestState::default();
        write_generation(&dir, 1, &state).await?;
        Ok(Manifest { dir, generation: 1, state, failed: None })
    }

    /// Opens the manifest in `dir`: removes temporary files, reads the highest generation
    /// (which must validate: see the module doc), then removes older generations.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Manifest, ShardError> {
        let dir = dir.as_ref().to_path_buf();
        let listing = scan(&dir).await?;
        remove_temporaries(&dir, &listing.temporaries).await?;
        let Some(&(generation, ref path)) = listing.generations.last() else {
            return Err(ShardError::ManifestMissing { dir });
        };
        let (bytes, file_bytes) = kvs_io::fs::read_file_bounded(path, MANIFEST_BYTES_MAX)
            .await
            .map_err(|e| ShardError::io(path, e))?;
        if file_bytes > MANIFEST_BYTES_MAX {
            return Err(ShardError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason: format!("manifest: {file_bytes} bytes exceeds {MANIFEST_BYTES_MAX}"),
            });
        }
        let (stored_generation, state) =
            decode(&bytes).map_err(|e| e.into_shard_error(path.clone()))?;
        if stored_generation != generation {
            return Err(ShardError::Corrupt {
                path: path.clone(),
                offset: 16,
                reason: format!(
                    "manifest: header says generation {stored_generation}, name says {generation}"
                ),
            });
        }
        let older: Vec<PathBuf> =
            listing.generations.iter().rev().skip(1).map(|(_, p)| p.clone()).collect();
        for p in &older {
            tracing::info!(path = %p.display(), "removing superseded manifest generation");
            kvs_io::fs::remove_file_buffered(p).await.map_err(|e| ShardError::io(p, e))?;
        }
        if !older.is_empty() {
            // IMPORTANT: make the removals durable.
            kvs_io::sync_dir(&dir).await.map_err(|e| ShardError::io(&dir, e))?;
        }
        Ok(Manifest { dir, generation, state, failed: None })
    }

    /// The last committed (durable) state; its `next_table_id` also counts ids allocated
    /// since the last edit.
    pub fn state(&self) -> &ManifestState {
        &self.state
    }

    /// The generation of the current manifest file.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The path of the current manifest file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(manifest_name(self.generation))
    }

    /// Hands out a fresh table id. The counter reaches disk with the next [`Manifest::apply`];
    /// see the module doc on reuse after a crash.
    pub fn allocate_table_id(&mut self) -> TableId {
        let id = TableId(self.state.next_table_id);
        self.state.next_table_id += 1;
        id
    }

    /// Applies `edit` durably: on `Ok` the new state is on disk and is [`Manifest::state`].
    /// An invalid edit writes nothing and leaves the manifest usable. An I/O error leaves the
    /// in-memory state unchanged; the manifest then refuses further edits
    /// ([`ShardError::Failed`]), since whether the new generation reached the disk is unknown
    /// until the next open.
    pub async fn apply(&mut self, edit: &ManifestEdit) -> Result<(), ShardError> {
        if let Some(reason) = &self.failed {
            return Err(ShardError::Failed { reason: reason.clone() });
        }
        let next_state = self.state.apply(edit)?;
        let next_generation = self.generation + 1;
        if let Err(e) = write_generation(&self.dir, next_generation, &next_state).await {
            self.failed = Some(format!("manifest write failed: {e}"));
            return Err(e);
        }
        let previous = self.path();
        self.generation = next_generation;
        self.state = next_state;
        // The new generation is durable; removing the old one is housekeeping that open
        // repeats if it fails here.
        let removed = async {
            kvs_io::fs::remove_file_buffered(&previous).await?;
            // IMPORTANT: make the removal durable (otherwise open removes it later).
            kvs_io::sync_dir(&self.dir).await
        }
        .await;
        if let Err(e) = removed {
            tracing::warn!(path = %previous.display(), error = %e, "could not remove old manifest");
        }
        Ok(())
    }
}

/// Manifest files found in a directory.
struct Listing {
    /// Complete generations, sorted by generation.
    generations: Vec<(u64, PathBuf)>,
    /// Temporary files.
    temporaries: Vec<PathBuf>,
}

async fn scan(dir: &Path) -> Result<Listing, ShardError> {
    let entries = kvs_io::list_dir(dir).await.map_err(|e| ShardError::io(dir, e))?;
    let mut listing = Listing { generations: Vec::new(), temporaries: Vec::new() };
    for path in entries {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        match parse_manifest_name(name) {
            Some(ManifestFileName::Generation(g)) => listing.generations.push((g, path)),
            Some(ManifestFileName::Temporary(_)) => listing.temporaries.push(path),
            None => {}
        }
    }
    listing.generations.sort();
    Ok(listing)
}

async fn remove_temporaries(dir: &Path, temporaries: &[PathBuf]) -> Result<(), ShardError> {
    for p in temporaries {
        tracing::warn!(path = %p.display(), "removing manifest temporary file left by a crash");
        kvs_io::fs::remove_file_buffered(p).await.map_err(|e| ShardError::io(p, e))?;
    }
    if !temporaries.is_empty() {
        // IMPORTANT: make the removals durable.
        kvs_io::sync_dir(dir).await.map_err(|e| ShardError::io(dir, e))?;
    }
    Ok(())
}

async fn write_generation(
    dir: &Path,
    generation: u64,
    state: &ManifestState,
) -> Result<(), ShardError> {
    let bytes = encode(generation, state);
    if bytes.len() as u64 > MANIFEST_BYTES_MAX {
        return Err(invalid(format!(
            "manifest of {} bytes exceeds {MANIFEST_BYTES_MAX}",
            bytes.len()
        )));
    }
    // Pair check (before the write): what we write must read back as what we meant.
    debug_assert_eq!(decode(&bytes).ok(), Some((generation, state.clone())));
    let name = manifest_name(generation);
    let tmp = format!("{name}{MANIFEST_TMP_SUFFIX}");
    // IMPORTANT: write temp + fdatasync + rename + fsync dir (see kvs_io::fs::write_file_atomic).
    kvs_io::fs::write_file_atomic(dir, &name, &tmp, &bytes)
        .await
        .map_err(|e| ShardError::io(dir.join(&name), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(id: u64, level: u8, min: &str, max: &str) -> TableMeta {
        TableMeta {
            id: TableId(id),
            level,
            size_bytes: 1000 * id,
            entries: 10 * id,
            min_key: min.as_bytes().to_vec(),
            max_key: max.as_bytes().to_vec(),
            max_stamp: Stamp { hlc: 100 + id, node: 7 },
        }
    }

    fn state_with(tables: &[TableMeta]) -> ManifestState {
        let s = ManifestState { next_table_id: 100, ..ManifestState::default() };
        s.apply(&ManifestEdit { add: tables.to_vec(), ..ManifestEdit::default() }).unwrap()
    }

    #[test]
    fn manifest_codec_round_trips() {
        let mut s =
            state_with(&[table(3, 0, "a", "z"), table(1, 0, "b", "c"), table(2, 1, "a", "m")]);
        s.flushed = WalPosition { segment_id: 9, offset: 4096 };
        let bytes = encode(42, &s);
        assert_eq!(decode(&bytes).unwrap(), (42, s.clone()));
        let ids: Vec<u64> = s.levels()[0].iter().map(|t| t.id.0).collect();
        assert_eq!(ids, vec![1, 3], "level 0 is sorted by id");
    }

    #[test]
    fn manifest_decode_never_panics_on_damage() {
        let s = state_with(&[table(1, 0, "a", "b"), table(2, 2, "c", "d")]);
        let bytes = encode(5, &s);
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                assert!(decode(&b).is_err(), "flip at {i} went unnoticed");
            }
            assert!(decode(&bytes[..i]).is_err(), "truncation at {i} went unnoticed");
        }
    }

    #[test]
    fn manifest_decode_reports_version() {
        let mut bytes = encode(1, &ManifestState::default());
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Version { found: 2 }));
    }

    #[test]
    fn manifest_names_parse() {
        assert_eq!(manifest_name(7), "MANIFEST-00000000000000000007");
        assert_eq!(parse_manifest_name(&manifest_name(7)), Some(ManifestFileName::Generation(7)));
        assert_eq!(
            parse_manifest_name("MANIFEST-00000000000000000007.tmp"),
            Some(ManifestFileName::Temporary(7))
        );
        for other in [
            "MANIFEST-7",
            "MANIFEST-0000000000000000000x",
            "foo",
            "MANIFEST-00000000000000000007.bak",
        ] {
            assert_eq!(parse_manifest_name(other), None, "{other}");
        }
    }

    #[test]
    fn manifest_edits_check_invariants() {
        let s = state_with(&[table(1, 1, "a", "c")]);
        let overlap = ManifestEdit { add: vec![table(2, 1, "c", "d")], ..ManifestEdit::default() };
        assert!(matches!(s.apply(&overlap), Err(ShardError::InvalidEdit { .. })));
        let dup = ManifestEdit { add: vec![table(1, 0, "x", "y")], ..ManifestEdit::default() };
        assert!(matches!(s.apply(&dup), Err(ShardError::InvalidEdit { .. })));
        let unknown = ManifestEdit::compaction(vec![TableId(9)], vec![]);
        assert!(matches!(s.apply(&unknown), Err(ShardError::InvalidEdit { .. })));
        let unallocated =
            ManifestEdit { add: vec![table(100, 0, "a", "b")], ..ManifestEdit::default() };
        assert!(matches!(s.apply(&unallocated), Err(ShardError::InvalidEdit { .. })));
        let bad_level =
            ManifestEdit { add: vec![table(5, LEVELS_MAX, "a", "b")], ..ManifestEdit::default() };
        assert!(matches!(s.apply(&bad_level), Err(ShardError::InvalidEdit { .. })));
        let reversed = ManifestEdit { add: vec![table(5, 0, "b", "a")], ..ManifestEdit::default() };
        assert!(matches!(s.apply(&reversed), Err(ShardError::InvalidEdit { .. })));
        let forward = s
            .apply(&ManifestEdit {
                flushed: Some(WalPosition { segment_id: 2, offset: 0 }),
                ..ManifestEdit::default()
            })
            .unwrap();
        let back = ManifestEdit {
            flushed: Some(WalPosition { segment_id: 1, offset: 9 }),
            ..ManifestEdit::default()
        };
        assert!(matches!(forward.apply(&back), Err(ShardError::InvalidEdit { .. })));
        // Compaction: replace L1 table 1 by two L2 tables, atomically.
        let moved = s
            .apply(&ManifestEdit::compaction(
                vec![TableId(1)],
                vec![table(3, 2, "a", "b"), table(4, 2, "c", "c")],
            ))
            .unwrap();
        assert!(moved.levels()[1].is_empty());
        assert_eq!(moved.levels()[2].len(), 2);
    }
}
