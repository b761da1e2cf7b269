//! The SSTable byte layout, pure: constants, the entry and data-block codec, the index block
//! and the footer. No I/O here; the builder and the reader call these. `shards/FORMAT.md`
//! ("SSTable") draws the same bytes.
//!
//! ## Format
//! ```text
//! [data block 0][data block 1]...[data block n-1][index block][bloom block][footer 128 B]
//! ```
//! All integers little-endian. Every region's crc32c is seeded with its own file offset
//! (`crc32c_parts([offset as u64 LE, bytes...])`), so a region copied to another place in the
//! file (or into another table at another offset) does not validate.
//!
//! Decoders never trust a length from disk: every length is checked against the bytes at hand
//! and against a `*_MAX` bound before it is used, and a failure is a reason string that the
//! reader turns into `ShardError::Corrupt` with the file and the region's offset.

use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::types::Stamp;
use kvs_io::checksum::crc32c_parts;

/// The table's magic number, the first 8 bytes of the footer: `"KVS-SST\0"`.
pub const MAGIC: [u8; 8] = *b"KVS-SST\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the footer, the last bytes of every table.
pub const FOOTER_BYTES: u64 = 128;
/// Bytes after each data block's payload: compression `u8`, crc32c `u32`.
pub const BLOCK_TRAILER_BYTES: u64 = 5;
/// Fixed bytes of an entry before its optional expiry, key and value.
pub const ENTRY_HEADER_BYTES: u64 = 24;
/// Bytes of the optional expiry field.
pub const EXPIRY_BYTES: u64 = 8;
/// Largest encoded entry: header, expiry, key and value.
pub const ENTRY_BYTES_MAX: u64 =
    ENTRY_HEADER_BYTES + EXPIRY_BYTES + KEY_BYTES_MAX + VALUE_BYTES_MAX;
/// Smallest configurable data-block target.
pub const BLOCK_BYTES_MIN: u64 = 1024;
/// Largest configurable data-block target.
pub const BLOCK_BYTES_MAX: u64 = 64 * 1024;
/// Default data-block target.
pub const BLOCK_BYTES_DEFAULT: u64 = 4096;
/// Largest uncompressed data block: a block is cut before it passes its target unless it holds
/// a single entry, so it is at most the largest target or one largest entry plus its offset
/// and count.
pub const BLOCK_RAW_BYTES_MAX: u64 = 2 * 1024 * 1024;
/// Largest data block on disk (payload stored uncompressed when zstd does not shrink it).
pub const BLOCK_STORED_BYTES_MAX: u64 = BLOCK_RAW_BYTES_MAX + BLOCK_TRAILER_BYTES;
/// Largest index block; the reader holds it in memory.
pub const INDEX_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Largest bloom block; the reader holds it in memory.
pub const BLOOM_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Most hash functions a stored bloom filter may ask for (10 bits per key gives 7).
pub const BLOOM_HASHES_MAX: u32 = 32;
/// Fixed bytes of an index entry before its key.
pub const INDEX_ENTRY_HEADER_BYTES: u64 = 18;

const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as u64);
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(BLOCK_RAW_BYTES_MAX >= BLOCK_BYTES_MAX);
const _: () = assert!(BLOCK_RAW_BYTES_MAX >= ENTRY_BYTES_MAX + 8);
const _: () = assert!(BLOCK_STORED_BYTES_MAX <= u32::MAX as u64);
const _: () =
    assert!(BLOCK_BYTES_MIN <= BLOCK_BYTES_DEFAULT && BLOCK_BYTES_DEFAULT <= BLOCK_BYTES_MAX);

/// Entry kind byte: a value.
pub const KIND_VALUE: u8 = 1;
/// Entry kind byte: a tombstone.
pub const KIND_TOMBSTONE: u8 = 2;
/// Entry flag: an expiry follows the header.
pub const FLAG_EXPIRY: u8 = 1;
/// Block compression byte: payload stored as is.
pub const COMPRESSION_NONE: u8 = 0;
/// Block compression byte: payload is one zstd frame.
pub const COMPRESSION_ZSTD: u8 = 1;

/// The crc32c of a region at file offset `offset` made of `parts`.
pub fn region_crc(offset: u64, parts: &[&[u8]]) -> u32 {
    let seed = offset.to_le_bytes();
    let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    all.push(&seed);
    all.extend_from_slice(parts);
    crc32c_parts(&all)
}

/// A bounds-checked little-endian reader over a byte slice.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(u8::from_le_bytes(self.array()?))
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
}

/// An entry's value: bytes, or a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SstValueRef<'a> {
    /// A value.
    Value(&'a [u8]),
    /// A delete.
    Tombstone,
}

/// One entry decoded in place from a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The key.
    pub key: &'a [u8],
    /// Its version.
    pub stamp: Stamp,
    /// Value or tombstone.
    pub value: SstValueRef<'a>,
    /// Expiry time in ms since the Unix epoch, if any. The table stores it; readers decide.
    pub expires_at_ms: Option<u64>,
}

/// Encoded length of an entry with these parts.
pub fn entry_bytes(key_bytes: usize, value_bytes: usize, has_expiry: bool) -> u64 {
    ENTRY_HEADER_BYTES
        + if has_expiry { EXPIRY_BYTES } else { 0 }
        + key_bytes as u64
        + value_bytes as u64
}

/// Appends `e` to `out`. The caller has checked the key and value limits.
pub fn encode_entry(out: &mut Vec<u8>, e: &EntryRef<'_>) {
    let (kind, value): (u8, &[u8]) = match e.value {
        SstValueRef::Value(v) => (KIND_VALUE, v),
        SstValueRef::Tombstone => (KIND_TOMBSTONE, &[]),
    };
    debug_assert!(e.key.len() as u64 <= KEY_BYTES_MAX);
    debug_assert!(value.len() as u64 <= VALUE_BYTES_MAX);
    out.push(kind);
    out.push(if e.expires_at_ms.is_some() { FLAG_EXPIRY } else { 0 });
    out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.stamp.hlc.to_le_bytes());
    out.extend_from_slice(&e.stamp.node.to_le_bytes());
    if let Some(t) = e.expires_at_ms {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(e.key);
    out.extend_from_slice(value);
}

/// Decodes the entry that must fill `bytes` exactly.
pub fn decode_entry(bytes: &[u8]) -> Result<EntryRef<'_>, String> {
    let mut c = Cursor::new(bytes);
    let short = || "entry shorter than its header".to_string();
    let kind = c.u8().ok_or_else(short)?;
    let flags = c.u8().ok_or_else(short)?;
    let key_len = c.u16().ok_or_else(short)?;
    let value_len = c.u32().ok_or_else(short)?;
    let hlc = c.u64().ok_or_else(short)?;
    let node = c.u64().ok_or_else(short)?;
    if flags & !FLAG_EXPIRY != 0 {
        return Err(format!("entry has unknown flags {flags:#04x}"));
    }
    let expires_at_ms = if flags & FLAG_EXPIRY != 0 {
        Some(c.u64().ok_or_else(|| "entry shorter than its expiry".to_string())?)
    } else {
        None
    };
    if u64::from(value_len) > VALUE_BYTES_MAX {
        return Err(format!("entry value of {value_len} bytes exceeds {VALUE_BYTES_MAX}"));
    }
    let key = c
        .bytes(usize::from(key_len))
        .ok_or_else(|| format!("entry key of {key_len} bytes runs past the entry"))?;
    let value = match kind {
        KIND_VALUE => SstValueRef::Value(
            c.bytes(value_len as usize)
                .ok_or_else(|| format!("entry value of {value_len} bytes runs past the entry"))?,
        ),
        KIND_TOMBSTONE if value_len == 0 => SstValueRef::Tombstone,
        KIND_TOMBSTONE => return Err(format!("tombstone with a {value_len}-byte value")),
        other => return Err(format!("unknown entry kind {other}")),
    };
    if c.remaining() != 0 {
        return Err(format!("{} stray bytes after the entry", c.remaining()));
    }
    Ok(EntryRef { key, stamp: Stamp { hlc, node }, value, expires_at_ms })
}

/// A validated view of one uncompressed data block.
///
/// Layout: `entries | offsets: u32 × count | count: u32`; `offsets[0] == 0`, strictly
/// increasing, and entry `i` spans `offsets[i]..offsets[i+1]` (the last one up to the start of
/// the offset array).
pub struct BlockView<'a> {
    entries: &'a [u8],
    offsets: &'a [u8],
    count: usize,
}

impl<'a> BlockView<'a> {
    /// Checks the trailer and the offsets of `raw` (O(count)).
    pub fn parse(raw: &'a [u8]) -> Result<Self, String> {
        let len = raw.len();
        let count_at =
            len.checked_sub(4).ok_or_else(|| "block shorter than its count".to_string())?;
        let count =
            raw.get(count_at..)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or_else(|| "block shorter than its count".to_string())? as usize;
        if count == 0 {
            return Err("block holds no entries".into());
        }
        let offsets_at = count
            .checked_mul(4)
            .and_then(|b| count_at.checked_sub(b))
            .ok_or_else(|| format!("block of {len} bytes cannot hold {count} offsets"))?;
        let (entries, rest) = raw.split_at_checked(offsets_at).ok_or("block split")?;
        let offsets = rest.get(..count * 4).ok_or("block offsets")?;
        let view = BlockView { entries, offsets, count };
        let mut prev: Option<usize> = None;
        for i in 0..count {
            let off = view.offset(i);
            match prev {
                None if off != 0 => return Err(format!("first entry offset is {off}, not 0")),
                Some(p) if off <= p => return Err(format!("entry offset {off} after {p}")),
                _ => {}
            }
            if off >= entries.len() {
                return Err(format!("entry offset {off} past the entries ({})", entries.len()));
            }
            prev = Some(off);
        }
        Ok(view)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Always false: a parsed block holds at least one entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn offset(&self, i: usize) -> usize {
        self.offsets
            .get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(usize::MAX, |b| u32::from_le_bytes(b) as usize)
    }

    /// Decodes entry `i` (`i < len()`).
    pub fn entry(&self, i: usize) -> Result<EntryRef<'a>, String> {
        let start = self.offset(i);
        let end = if i + 1 < self.count { self.offset(i + 1) } else { self.entries.len() };
        let bytes =
            self.entries.get(start..end).ok_or_else(|| format!("entry {i} out of range"))?;
        decode_entry(bytes).map_err(|r| format!("entry {i}: {r}"))
    }

    /// Binary search for `key`; entries must be in strictly increasing key order (checked on
    /// the entries visited).
    pub fn find(&self, key: &[u8]) -> Result<Option<EntryRef<'a>>, String> {
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.entry(mid)?;
            match e.key.cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(Some(e)),
            }
        }
        Ok(None)
    }
}

/// Where one data block lives, and the last key in it (the index entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockHandle {
    /// File offset of the block.
    pub offset: u64,
    /// Bytes on disk, trailer included.
    pub stored_bytes: u32,
    /// Bytes of the uncompressed block.
    pub raw_bytes: u32,
    /// The greatest key in the block.
    pub last_key: Vec<u8>,
}

/// Appends one index entry.
pub fn encode_index_entry(out: &mut Vec<u8>, offset: u64, stored: u32, raw: u32, last_key: &[u8]) {
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&stored.to_le_bytes());
    out.extend_from_slice(&raw.to_le_bytes());
    out.extend_from_slice(&(last_key.len() as u16).to_le_bytes());
    out.extend_from_slice(last_key);
}

/// The decoded index block: the table's smallest key and the block handles.
#[derive(Debug)]
pub struct Index {
    /// The smallest key in the table.
    pub min_key: Vec<u8>,
    /// One handle per data block, in key (and file) order.
    pub blocks: Vec<BlockHandle>,
}

/// Decodes and validates the index block against the footer: `block_count` handles, blocks
/// contiguous from offset 0 to `data_end`, lengths in bounds, last keys strictly increasing,
/// the smallest key not above the first block's last key.
pub fn decode_index(bytes: &[u8], block_count: u64, data_end: u64) -> Result<Index, String> {
    let mut c = Cursor::new(bytes);
    let count = c.u32().ok_or("index shorter than its count")?;
    if u64::from(count) != block_count {
        return Err(format!("index holds {count} blocks, footer says {block_count}"));
    }
    let min_len = c.u16().ok_or("index shorter than its min key length")?;
    let min_key =
        c.bytes(usize::from(min_len)).ok_or("index min key runs past the index")?.to_vec();
    // Bounded: each handle takes at least INDEX_ENTRY_HEADER_BYTES of the (bounded) block.
    if u64::from(count) > bytes.len() as u64 / INDEX_ENTRY_HEADER_BYTES {
        return Err(format!("index of {} bytes cannot hold {count} blocks", bytes.len()));
    }
    let mut blocks: Vec<BlockHandle> = Vec::with_capacity(count as usize);
    let mut next_offset = 0u64;
    for i in 0..count {
        let bad = |what: &str| format!("index entry {i}: {what}");
        let offset = c.u64().ok_or_else(|| bad("truncated"))?;
        let stored_bytes = c.u32().ok_or_else(|| bad("truncated"))?;
        let raw_bytes = c.u32().ok_or_else(|| bad("truncated"))?;
        let key_len = c.u16().ok_or_else(|| bad("truncated"))?;
        let last_key = c.bytes(usize::from(key_len)).ok_or_else(|| bad("key truncated"))?.to_vec();
        if offset != next_offset {
            return Err(bad(&format!("block at {offset}, expected {next_offset}")));
        }
        if u64::from(stored_bytes) <= BLOCK_TRAILER_BYTES
            || u64::from(stored_bytes) > BLOCK_STORED_BYTES_MAX
        {
            return Err(bad(&format!("stored length {stored_bytes} out of bounds")));
        }
        if raw_bytes < 8 || u64::from(raw_bytes) > BLOCK_RAW_BYTES_MAX {
            return Err(bad(&format!("raw length {raw_bytes} out of bounds")));
        }
        if let Some(prev) = blocks.last() {
            if prev.last_key >= last_key {
                return Err(bad("last keys not strictly increasing"));
            }
        } else if min_key > last_key {
            return Err(bad("min key above the first block's last key"));
        }
        next_offset = offset + u64::from(stored_bytes);
        blocks.push(BlockHandle { offset, stored_bytes, raw_bytes, last_key });
    }
    if next_offset != data_end {
        return Err(format!("data blocks end at {next_offset}, footer says {data_end}"));
    }
    if c.remaining() != 0 {
        return Err(format!("{} stray bytes after the index entries", c.remaining()));
    }
    Ok(Index { min_key, blocks })
}

/// The fixed-size footer at the end of every table.
///
/// ```text
/// 0   magic "KVS-SST\0"     8   version u32       12  flags u32 = 0
/// 16  table_id u64          24  entry_count u64   32  tombstone_count u64
/// 40  block_count u64       48  index_offset u64  56  index_bytes u64
/// 64  bloom_offset u64      72  bloom_bytes u64   80  index_crc u32   84  bloom_crc u32
/// 88  min_stamp.hlc u64     96  min_stamp.node    104 max_stamp.hlc   112 max_stamp.node
/// 120 reserved u32 = 0      124 crc32c of [0,124) seeded with the footer's offset
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Footer {
    /// The table id (equal to the id in the file name).
    pub table_id: u64,
    /// Entries in the table.
    pub entry_count: u64,
    /// Tombstones among them.
    pub tombstone_count: u64,
    /// Data blocks.
    pub block_count: u64,
    /// File offset of the index block (= bytes of data blocks).
    pub index_offset: u64,
    /// Bytes of the index block.
    pub index_bytes: u64,
    /// File offset of the bloom block (= index end).
    pub bloom_offset: u64,
    /// Bytes of the bloom block.
    pub bloom_bytes: u64,
    /// crc32c of the index block, seeded with its offset.
    pub index_crc: u32,
    /// crc32c of the bloom block, seeded with its offset.
    pub bloom_crc: u32,
    /// Smallest stamp in the table.
    pub min_stamp: Stamp,
    /// Greatest stamp in the table.
    pub max_stamp: Stamp,
}

impl Footer {
    /// Encodes the footer that will sit at file offset `at`.
    pub fn encode(&self, at: u64) -> [u8; FOOTER_BYTES as usize] {
        let mut v: Vec<u8> = Vec::with_capacity(FOOTER_BYTES as usize);
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&VERSION.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        for x in [
            self.table_id,
            self.entry_count,
            self.tombstone_count,
            self.block_count,
            self.index_offset,
            self.index_bytes,
            self.bloom_offset,
            self.bloom_bytes,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&self.index_crc.to_le_bytes());
        v.extend_from_slice(&self.bloom_crc.to_le_bytes());
        for x in [self.min_stamp.hlc, self.min_stamp.node, self.max_stamp.hlc, self.max_stamp.node]
        {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(&0u32.to_le_bytes());
        let crc = region_crc(at, &[&v]);
        v.extend_from_slice(&crc.to_le_bytes());
        let mut out = [0u8; FOOTER_BYTES as usize];
        out.copy_from_slice(&v);
        out
    }

    /// Decodes the footer read at file offset `at`: crc first, then magic, version, flags.
    pub fn decode(bytes: &[u8], at: u64) -> Result<Footer, String> {
        if bytes.len() as u64 != FOOTER_BYTES {
            return Err(format!("footer is {} bytes, expected {FOOTER_BYTES}", bytes.len()));
        }
        let (body, crc_bytes) = bytes.split_at_checked(124).ok_or("footer split")?;
        let stored = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| "footer crc")?);
        let computed = region_crc(at, &[body]);
        if stored != computed {
            return Err(format!(
                "footer checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ));
        }
        let mut c = Cursor::new(body);
        let bad = || "footer truncated".to_string();
        let magic = c.bytes(8).ok_or_else(bad)?;
        if magic != MAGIC {
            return Err(format!("bad footer magic {magic:02x?}"));
        }
        let version = c.u32().ok_or_else(bad)?;
        if version != VERSION {
            return Err(format!(
                "unsupported format version {version}: this build reads only version {VERSION}"
            ));
        }
        let flags = c.u32().ok_or_else(bad)?;
        if flags != 0 {
            return Err(format!("unknown footer flags {flags:#x}"));
        }
        let mut u = || c.u64().ok_or_else(bad);
        let table_id = u()?;
        let entry_count = u()?;
        let tombstone_count = u()?;
        let block_count = u()?;
        let index_offset = u()?;
        let index_bytes = u()?;
        let bloom_offset = u()?;
        let bloom_bytes = u()?;
        let index_crc = c.u32().ok_or_else(bad)?;
        let bloom_crc = c.u32().ok_or_else(bad)?;
        let mut u = || c.u64().ok_or_else(bad);
        let min_stamp = Stamp { hlc: u()?, node: u()? };
        let max_stamp = Stamp { hlc: u()?, node: u()? };
        if c.u32().ok_or_else(bad)? != 0 {
            return Err("footer reserved field is not zero".into());
        }
        Ok(Footer {
            table_id,
            entry_count,
            tombstone_count,
            block_count,
            index_offset,
            index_bytes,
            bloom_offset,
            bloom_bytes,
            index_crc,
            bloom_crc,
            min_stamp,
            max_stamp,
        })
    }

    /// Checks that the regions tile the file of `file_bytes` exactly and respect the bounds:
    /// `[0, index_offset)` data, then index, then bloom, then the footer.
    pub fn check_layout(&self, file_bytes: u64) -> Result<(), String> {
        let footer_at = file_bytes.checked_sub(FOOTER_BYTES).ok_or("file shorter than footer")?;
        if self.index_bytes > INDEX_BYTES_MAX || self.index_bytes < 6 {
            return Err(format!("index length {} out of bounds", self.index_bytes));
        }
        if self.bloom_bytes > BLOOM_BYTES_MAX || self.bloom_bytes == 0 {
            return Err(format!("bloom length {} out of bounds", self.bloom_bytes));
        }
        let index_end = self.index_offset.checked_add(self.index_bytes);
        let bloom_end = self.bloom_offset.checked_add(self.bloom_bytes);
        if index_end != Some(self.bloom_offset) || bloom_end != Some(footer_at) {
            return Err(format!(
                "regions do not tile the file: index {}+{}, bloom {}+{}, footer at {footer_at}",
                self.index_offset, self.index_bytes, self.bloom_offset, self.bloom_bytes
            ));
        }
        if self.block_count == 0 || self.entry_count < self.block_count {
            return Err(format!("{} entries in {} blocks", self.entry_count, self.block_count));
        }
        if self.tombstone_count > self.entry_count || self.min_stamp > self.max_stamp {
            return Err("footer counts or stamps inconsistent".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trip_and_bounds() {
        let e = EntryRef {
            key: b"k1",
            stamp: Stamp { hlc: 7, node: 9 },
            value: SstValueRef::Value(b"hello"),
            expires_at_ms: Some(42),
        };
        let mut buf = Vec::new();
        encode_entry(&mut buf, &e);
        assert_eq!(buf.len() as u64, entry_bytes(2, 5, true));
        assert_eq!(decode_entry(&buf).unwrap(), e);
        for cut in 0..buf.len() {
            assert!(decode_entry(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let t = EntryRef { value: SstValueRef::Tombstone, expires_at_ms: None, ..e };
        buf.clear();
        encode_entry(&mut buf, &t);
        assert_eq!(decode_entry(&buf).unwrap(), t);
        buf[0] = 9;
        assert!(decode_entry(&buf).is_err());
    }

    #[test]
    fn block_view_rejects_bad_trailers() {
        assert!(BlockView::parse(&[]).is_err());
        assert!(BlockView::parse(&0u32.to_le_bytes()).is_err());
        assert!(BlockView::parse(&u32::MAX.to_le_bytes()).is_err());
        let mut raw = vec![0u8; 30];
        raw.extend_from_slice(&5u32.to_le_bytes()); // offset 5, not 0
        raw.extend_from_slice(&1u32.to_le_bytes());
        assert!(BlockView::parse(&raw).is_err());
    }

    #[test]
    fn footer_round_trip_and_checksum() {
        let f = Footer {
            table_id: 3,
            entry_count: 10,
            tombstone_count: 1,
            block_count: 2,
            index_offset: 100,
            index_bytes: 50,
            bloom_offset: 150,
            bloom_bytes: 60,
            index_crc: 1,
            bloom_crc: 2,
            min_stamp: Stamp { hlc: 1, node: 1 },
            max_stamp: Stamp { hlc: 5, node: 2 },
        };
        let bytes = f.encode(210);
        assert_eq!(Footer::decode(&bytes, 210).unwrap(), f);
        assert!(Footer::decode(&bytes, 211).is_err(), "crc is seeded with the offset");
        f.check_layout(210 + FOOTER_BYTES).unwrap();
        assert!(f.check_layout(211 + FOOTER_BYTES).is_err());
        for bit in 0..FOOTER_BYTES as usize * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Footer::decode(&b, 210).is_err(), "bit {bit}");
        }
    }
}
