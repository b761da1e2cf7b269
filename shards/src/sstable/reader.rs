//! [`SstableReader`]: opens a table, validates its footer, index and bloom block, and reads
//! data blocks with positional direct reads.

use super::bloom::{decode_filter, BloomKey, KeyBloom};
use super::format::{
    decode_index, region_crc, BlockHandle, BlockView, Footer, BLOCK_TRAILER_BYTES,
    COMPRESSION_NONE, COMPRESSION_ZSTD, FOOTER_BYTES,
};
use super::{SstEntry, TableId};
use crate::cache::BlockCache;
use crate::error::ShardError;
use crate::types::Stamp;
use glommio::io::DmaFile;
use kvs_io::IoError;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Counters of one reader, for the engine's stats and tuning of the bloom filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// `get` calls.
    pub gets: u64,
    /// Keys outside `[min_key, max_key]`, answered without the filter.
    pub range_misses: u64,
    /// Keys the bloom filter rejected (no block read).
    pub bloom_negatives: u64,
    /// Keys the bloom filter let through that the table does not hold (a block read wasted).
    pub bloom_false_positives: u64,
    /// Data blocks read from disk (by `get` and by iterators); blocks served by the block
    /// cache are not counted here.
    pub blocks_read: u64,
    /// Data blocks served by the block cache.
    pub cache_hits: u64,
}

/// An open table. `!Send`: it lives on the executor that opened it.
pub struct SstableReader {
    path: PathBuf,
    file: DmaFile,
    file_bytes: u64,
    footer: Footer,
    min_key: Vec<u8>,
    blocks: Vec<BlockHandle>,
    bloom: KeyBloom,
    stats: Cell<ReaderStats>,
    /// The shard's block cache, if any.
    cache: Option<Rc<BlockCache>>,
}

fn os_err(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> ShardError {
    ShardError::io(path, IoError::Os { op, path: path.to_path_buf(), source: e.into() })
}

impl SstableReader {
    /// Opens the table at `path`: reads and checks the footer (crc, magic, version, layout),
    /// the index block and the bloom block (crc and structure). Damage anywhere in them is
    /// `ShardError::Corrupt` with the file and the offset of the damaged region.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, ShardError> {
        Self::open_with_cache(path, None).await
    }

    /// [`SstableReader::open`] with the shard's block cache: `get` looks blocks up there
    /// first and caches every block it reads (after its checks).
    pub async fn open_with_cache(
        path: impl AsRef<Path>,
        cache: Option<Rc<BlockCache>>,
    ) -> Result<Self, ShardError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            kvs_io::probe_device(dir).await.map_err(|e| ShardError::io(dir, e))?;
        }
        let file = DmaFile::open(&path).await.map_err(|e| os_err("open table", &path, e))?;
        match Self::load(&path, &file).await {
            Ok((file_bytes, footer, min_key, blocks, bloom)) => Ok(SstableReader {
                path,
                file,
                file_bytes,
                footer,
                min_key,
                blocks,
                bloom,
                stats: Cell::new(ReaderStats::default()),
                cache,
            }),
            Err(e) => {
                // Best effort: the open error is what the caller needs to see.
                let _ = file.close().await;
                Err(e)
            }
        }
    }

    async fn load(
        path: &Path,
        file: &DmaFile,
    ) -> Result<(u64, Footer, Vec<u8>, Vec<BlockHandle>, KeyBloom), ShardError> {
        let corrupt = |offset: u64, reason: String| ShardError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason,
        };
        let file_bytes = file.file_size().await.map_err(|e| os_err("stat table", path, e))?;
        let footer_at = file_bytes.checked_sub(FOOTER_BYTES).ok_or_else(|| {
            corrupt(0, format!("footer: file of {file_bytes} bytes is shorter than the footer"))
        })?;
        let raw = read_exact(file, path, footer_at, FOOTER_BYTES).await?;
        let footer = Footer::decode(&raw, footer_at)
            .map_err(|r| corrupt(footer_at, format!("footer: {r}")))?;
        footer.check_layout(file_bytes).map_err(|r| corrupt(footer_at, format!("footer: {r}")))?;
        if let Some(id) =
            path.file_name().and_then(|n| n.to_str()).and_then(TableId::parse_file_name)
        {
            if id.0 != footer.table_id {
                return Err(corrupt(
                    footer_at,
                    format!(
                        "footer: table id {} but the file is named for {}",
                        footer.table_id, id.0
                    ),
                ));
            }
        }

        let at = footer.index_offset;
        let index = read_exact(file, path, at, footer.index_bytes).await?;
        let crc = region_crc(at, &[&index]);
        if crc != footer.index_crc {
            return Err(corrupt(
                at,
                format!(
                    "index block: checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                    footer.index_crc
                ),
            ));
        }
        let index = decode_index(&index, footer.block_count, footer.index_offset)
            .map_err(|r| corrupt(at, format!("index block: {r}")))?;

        let at = footer.bloom_offset;
        let bloom = read_exact(file, path, at, footer.bloom_bytes).await?;
        let crc = region_crc(at, &[&bloom]);
        if crc != footer.bloom_crc {
            return Err(corrupt(
                at,
                format!(
                    "bloom block: checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                    footer.bloom_crc
                ),
            ));
        }
        let bloom = decode_filter(&bloom).map_err(|r| corrupt(at, format!("bloom block: {r}")))?;
        Ok((file_bytes, footer, index.min_key, index.blocks, bloom))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table id recorded in the footer.
    pub fn id(&self) -> TableId {
        TableId(self.footer.table_id)
    }

    /// The validated footer (counts, stamps, region offsets).
    pub fn footer(&self) -> &Footer {
        &self.footer
    }

    /// Size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// The data blocks: offset, lengths and last key of each.
    pub fn blocks(&self) -> &[BlockHandle] {
        &self.blocks
    }

    /// The smallest key in the table.
    pub fn min_key(&self) -> &[u8] {
        &self.min_key
    }

    /// The greatest key in the table.
    pub fn max_key(&self) -> &[u8] {
        self.blocks.last().map_or(&[], |b| b.last_key.as_slice())
    }

    /// The greatest stamp in the table.
    pub fn max_stamp(&self) -> Stamp {
        self.footer.max_stamp
    }

    /// The counters so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut ReaderStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Whether the bloom filter may hold `key` (no I/O).
    pub fn may_contain(&self, key: &[u8]) -> bool {
        self.bloom.check(BloomKey::new(key))
    }

    /// The table's entry for `key`, if any: key range, bloom filter, index binary search, one
    /// positional read of one block, crc, decompression, binary search in the block. Expired
    /// entries are returned as stored. A damaged block is `Corrupt` naming its offset.
    pub async fn get(&self, key: &[u8]) -> Result<Option<SstEntry>, ShardError> {
        self.bump(|s| s.gets += 1);
        if key < self.min_key() || key > self.max_key() {
            self.bump(|s| s.range_misses += 1);
            return Ok(None);
        }
        if !self.may_contain(key) {
            self.bump(|s| s.bloom_negatives += 1);
            return Ok(None);
        }
        let i = self.blocks.partition_point(|b| b.last_key.as_slice() < key);
        if i >= self.blocks.len() {
            self.bump(|s| s.bloom_false_positives += 1);
            return Ok(None);
        }
        let raw = self.read_block(i, true).await?;
        let handle =
            self.blocks.get(i).ok_or_else(|| self.corrupt_block(i, "no such block".into()))?;
        let found = BlockView::parse(&raw)
            .and_then(|v| v.find(key))
            .map_err(|r| self.corrupt_block(i, r))?
            .map(SstEntry::from);
        if found.is_none() {
            self.bump(|s| s.bloom_false_positives += 1);
        }
        debug_assert!(key <= handle.last_key.as_slice());
        Ok(found)
    }

    fn corrupt_block(&self, i: usize, reason: String) -> ShardError {
        let offset = self.blocks.get(i).map_or(0, |b| b.offset);
        ShardError::Corrupt {
            path: self.path.clone(),
            offset,
            reason: format!("data block {i} at offset {offset}: {reason}"),
        }
    }

    /// Block `i`'s uncompressed, checked bytes: from the block cache if it holds them,
    /// otherwise read from disk and checked (see [`Self::read_block_from_disk`]) and, with
    /// `fill`, cached. Only checked bytes are cached, so a damaged block is reported on every
    /// read. Iterators (compaction) pass `fill = false` so a full scan does not flush the
    /// cache of its hot blocks.
    pub(crate) async fn read_block(&self, i: usize, fill: bool) -> Result<Rc<[u8]>, ShardError> {
        let h = self.blocks.get(i).ok_or_else(|| self.corrupt_block(i, "no such block".into()))?;
        let key = (self.footer.table_id, h.offset);
        let cache = self.cache.as_ref().filter(|c| c.enabled());
        if let Some(raw) = cache.and_then(|c| c.get(key)) {
            self.bump(|s| s.cache_hits += 1);
            return Ok(raw);
        }
        let raw: Rc<[u8]> = self.read_block_from_disk(i).await?.into();
        if let (Some(c), true) = (cache, fill) {
            c.insert(key, Rc::clone(&raw));
        }
        Ok(raw)
    }

    /// Reads block `i` from disk and returns its uncompressed, checked bytes: crc over the
    /// stored bytes, decompression to exactly the indexed length, and the block's last key
    /// equal to the index's (a pair check between index and data).
    async fn read_block_from_disk(&self, i: usize) -> Result<Vec<u8>, ShardError> {
        let h = self.blocks.get(i).ok_or_else(|| self.corrupt_block(i, "no such block".into()))?;
        self.bump(|s| s.blocks_read += 1);
        let stored =
            read_exact(&self.file, &self.path, h.offset, u64::from(h.stored_bytes)).await?;
        self.check_block(i, &stored)
    }

    /// Block `i` for a scan: from `ahead` when it holds the block's bytes, otherwise after
    /// reading this block and as many following ones as fit in `ahead.limit_bytes` (default
    /// [`SCAN_READ_BYTES`]) into `ahead` (one large read instead of one per block). Checked
    /// like any block; not cached.
    async fn read_block_scan(
        &self,
        i: usize,
        ahead: &mut ReadAhead,
    ) -> Result<Vec<u8>, ShardError> {
        let h = self.blocks.get(i).ok_or_else(|| self.corrupt_block(i, "no such block".into()))?;
        let end = h.offset + u64::from(h.stored_bytes);
        let held = ahead.start <= h.offset && end <= ahead.start + ahead.bytes.len() as u64;
        if !held {
            let mut last_end = end;
            for next in self.blocks.iter().skip(i + 1) {
                let next_end = next.offset + u64::from(next.stored_bytes);
                if next_end - h.offset > ahead.limit_bytes {
                    break;
                }
                last_end = next_end;
            }
            ahead.bytes = read_exact(&self.file, &self.path, h.offset, last_end - h.offset).await?;
            ahead.start = h.offset;
        }
        self.bump(|s| s.blocks_read += 1);
        let from = (h.offset - ahead.start) as usize;
        let stored = ahead
            .bytes
            .get(from..from + h.stored_bytes as usize)
            .ok_or_else(|| self.corrupt_block(i, "outside the read-ahead buffer".into()))?;
        self.check_block(i, stored)
    }

    /// Checks block `i`'s stored bytes and returns them uncompressed (see
    /// [`Self::read_block_from_disk`]).
    fn check_block(&self, i: usize, stored: &[u8]) -> Result<Vec<u8>, ShardError> {
        let h = self.blocks.get(i).ok_or_else(|| self.corrupt_block(i, "no such block".into()))?;
        let payload_len = stored.len().saturating_sub(BLOCK_TRAILER_BYTES as usize);
        let (payload, trailer) = stored
            .split_at_checked(payload_len)
            .ok_or_else(|| self.corrupt_block(i, "shorter than its trailer".into()))?;
        let (kind, crc_bytes) =
            trailer.split_first().ok_or_else(|| self.corrupt_block(i, "no trailer".into()))?;
        let stored_crc = crc_bytes
            .try_into()
            .map(u32::from_le_bytes)
            .map_err(|_| self.corrupt_block(i, "short trailer".into()))?;
        let crc = region_crc(h.offset, &[payload, std::slice::from_ref(kind)]);
        if crc != stored_crc {
            return Err(self.corrupt_block(
                i,
                format!("checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"),
            ));
        }
        let raw = match *kind {
            COMPRESSION_NONE => payload.to_vec(),
            COMPRESSION_ZSTD => zstd::bulk::decompress(payload, h.raw_bytes as usize)
                .map_err(|e| self.corrupt_block(i, format!("zstd: {e}")))?,
            other => return Err(self.corrupt_block(i, format!("unknown compression {other}"))),
        };
        if raw.len() != h.raw_bytes as usize {
            return Err(self.corrupt_block(
                i,
                format!("{} bytes uncompressed, index says {}", raw.len(), h.raw_bytes),
            ));
        }
        let view = BlockView::parse(&raw).map_err(|r| self.corrupt_block(i, r))?;
        let last =
            view.entry(view.len().saturating_sub(1)).map_err(|r| self.corrupt_block(i, r))?;
        if last.key != h.last_key.as_slice() {
            return Err(self.corrupt_block(i, "last key differs from the index".into()));
        }
        Ok(raw)
    }

    /// An iterator over all entries in key order, reading [`SCAN_READ_BYTES`] of blocks at a
    /// time.
    pub fn iter(&self) -> SstableIter<'_> {
        self.iter_after(None)
    }

    /// An iterator over the entries whose key is strictly greater than `after` (all entries
    /// for `None`), in key order: it starts at the first block whose last key is greater than
    /// `after` (an index binary search, no I/O) and skips that block's entries up to `after`.
    /// When `after` is at or past the greatest key, it reads nothing. Like [`Self::iter`], it
    /// reads ahead and does not fill the block cache.
    pub fn iter_after(&self, after: Option<&[u8]>) -> SstableIter<'_> {
        let next_block =
            after.map_or(0, |a| self.blocks.partition_point(|b| b.last_key.as_slice() <= a));
        SstableIter {
            reader: self,
            next_block,
            entries: Default::default(),
            prev: None,
            // Only the first block read can hold keys at or below `after` (every earlier
            // block ends at or below it); later blocks are checked anyway, for free.
            after: after.map(<[u8]>::to_vec),
            ahead: ReadAhead::default(),
        }
    }

    /// Closes the file.
    pub async fn close(self) -> Result<(), ShardError> {
        self.file.close().await.map_err(|e| os_err("close table", &self.path, e))
    }
}

/// Reads exactly `len` bytes at `pos` with a positional direct read (glommio aligns the
/// request to 4 KiB and returns the slice asked for). A short read is corruption: the footer
/// said the bytes are there.
async fn read_exact(
    file: &DmaFile,
    path: &Path,
    pos: u64,
    len: u64,
) -> Result<Vec<u8>, ShardError> {
    let want = usize::try_from(len).map_err(|_| ShardError::Corrupt {
        path: path.to_path_buf(),
        offset: pos,
        reason: format!("region of {len} bytes does not fit in memory"),
    })?;
    let got = file.read_at(pos, want).await.map_err(|e| os_err("read table", path, e))?;
    if got.len() != want {
        return Err(ShardError::Corrupt {
            path: path.to_path_buf(),
            offset: pos,
            reason: format!("short read: {} of {want} bytes", got.len()),
        });
    }
    Ok(got.to_vec())
}

/// The entries of a table in key order, all of them (compaction) or those after a key (scans,
/// [`SstableReader::iter_after`]). Holds one decoded block at a time.
/// Call [`SstableIter::next`] until it returns `Ok(None)`; an error ends the iteration.
pub struct SstableIter<'a> {
    reader: &'a SstableReader,
    next_block: usize,
    /// The rest of the current block's entries.
    entries: std::collections::VecDeque<SstEntry>,
    /// The last key decoded, to check the order across blocks.
    prev: Option<Vec<u8>>,
    /// Entries with keys at or below this are skipped (see [`SstableReader::iter_after`]).
    after: Option<Vec<u8>>,
    ahead: ReadAhead,
}

/// Bytes a scan reads from a table at once (whole blocks; at least one block).
pub const SCAN_READ_BYTES: u64 = 256 * 1024;

/// File bytes read ahead by a scan: `bytes` starts at file offset `start`.
struct ReadAhead {
    start: u64,
    bytes: Vec<u8>,
    /// Bytes to read at once (whole blocks; at least one block whatever this says).
    limit_bytes: u64,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead { start: 0, bytes: Vec::new(), limit_bytes: SCAN_READ_BYTES }
    }
}

impl SstableIter<'_> {
    /// Reads ahead at most `bytes` of the file at once (capped at [`SCAN_READ_BYTES`], and
    /// still at least one whole block): for a reader that wants only a few entries, such as
    /// one page of a scan, so it does not read a quarter MiB per table to return a handful.
    pub fn with_read_ahead_bytes(mut self, bytes: u64) -> Self {
        self.ahead.limit_bytes = bytes.min(SCAN_READ_BYTES);
        self
    }

    /// The next entry, or `None` after the last.
    pub async fn next(&mut self) -> Result<Option<SstEntry>, ShardError> {
        while self.entries.is_empty() {
            let i = self.next_block;
            if i >= self.reader.blocks.len() {
                return Ok(None);
            }
            let raw = self.reader.read_block_scan(i, &mut self.ahead).await?;
            let view = BlockView::parse(&raw).map_err(|r| self.reader.corrupt_block(i, r))?;
            for j in 0..view.len() {
                let e = view.entry(j).map_err(|r| self.reader.corrupt_block(i, r))?;
                if self.prev.as_deref().is_some_and(|p| p >= e.key) {
                    return Err(self
                        .reader
                        .corrupt_block(i, format!("entry {j} out of key order")));
                }
                self.prev = Some(e.key.to_vec());
                if self.after.as_deref().is_some_and(|a| e.key <= a) {
                    continue;
                }
                self.entries.push_back(SstEntry::from(e));
            }
            self.next_block += 1;
        }
        Ok(self.entries.pop_front())
    }
}
