//! The memtable: the sorted in-memory map of the newest version of each key.
//!
//! Today a `BTreeMap`; the engine flushes it to SSTables through [`Memtable::iter`] (keys in
//! order), scans it from a key on through [`Memtable::iter_after`], and may change the
//! structure behind the same interface.
//!
//! ## Invariants
//! - Last write wins by [`Entry`] precedence: the greater [`Stamp`]; on equal stamps a
//!   tombstone beats a value and a greater value beats a smaller one; on equal values, the one
//!   that lives longer (no expiry, else the later expiry). Precedence is a total
//!   order, so applying the same entries in any order yields the same map: concurrent writers
//!   may complete in any order and WAL replay is idempotent.
//! - Expiry does not change precedence beyond a last tie-break: an expired value keeps its
//!   place (it still shadows older versions); readers turn it into a tombstone at its stamp
//!   ([`Entry::to_lookup`] with the reader's `now_ms`). Nothing is removed from the map when
//!   it expires: compaction drops it later (see `compaction::merge`, rule 3).
//! - `approx_bytes` is the sum of [`Entry::approx_bytes`] over the map (key and value bytes
//!   plus a fixed per-entry overhead); it only estimates memory, for the flush budget.
//!
//! ## Keys
//! The map key is `MemKey`, not `Vec<u8>`: keys of up to `INLINE_KEY_BYTES` (22) bytes are
//! stored inside the map node (no heap pointer to chase per comparison), and every comparison
//! first compares the first 16 bytes as one big-endian `u128` instead of calling `memcmp`.
//! Lookups borrow the query as a `KeyRef` with the same ordering. The order is exactly the
//! lexicographic byte order of `<[u8]>::cmp` (see `key_cmp`), so [`Memtable::iter`] is
//! unchanged.

use crate::types::{Lookup, Stamp};
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::btree_map::{self, BTreeMap};
use std::fmt;
use std::ops::Bound;

/// Bytes charged per entry on top of key and value: map node share, `Vec` headers, stamp.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The newest known version of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A value written at `stamp`.
    Value {
        /// The value bytes.
        value: Vec<u8>,
        /// Its version.
        stamp: Stamp,
        /// When the value expires, in wall-clock ms since the Unix epoch; `None` = never. From
        /// that instant on it reads as a tombstone at `stamp`.
        expires_at_ms: Option<u64>,
    },
    /// A delete at `stamp`.
    Tombstone {
        /// The delete's version.
        stamp: Stamp,
    },
}

impl Entry {
    /// The entry's version.
    pub fn stamp(&self) -> Stamp {
        match self {
            Entry::Value { stamp, .. } | Entry::Tombstone { stamp } => *stamp,
        }
    }

    /// Whether this entry takes precedence over `other` (see the module invariants).
    pub fn supersedes(&self, other: &Entry) -> bool {
        self.precedence() > other.precedence()
    }

    /// The total order of entries: stamp, then kind (tombstone last), then value bytes, then
    /// lifetime (`None` = never expires, above every expiry; tombstones have none).
    fn precedence(&self) -> (Stamp, u8, &[u8], bool, u64) {
        match self {
            Entry::Value { value, stamp, expires_at_ms } => {
                (*stamp, 0, value, expires_at_ms.is_none(), expires_at_ms.unwrap_or(0))
            }
            Entry::Tombstone { stamp } => (*stamp, 1, &[], true, 0),
        }
    }

    /// When the entry expires (ms since the Unix epoch); `None` for tombstones and for values
    /// that never expire.
    pub fn expires_at_ms(&self) -> Option<u64> {
        match self {
            Entry::Value { expires_at_ms, .. } => *expires_at_ms,
            Entry::Tombstone { .. } => None,
        }
    }

    /// Whether this is a value whose expiry is at or before `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms().is_some_and(|at| at <= now_ms)
    }

    /// Estimated memory of this entry under `key_bytes` of key.
    pub fn approx_bytes(&self, key_bytes: usize) -> u64 {
        let value_bytes = match self {
            Entry::Value { value, .. } => value.len(),
            Entry::Tombstone { .. } => 0,
        };
        (key_bytes + value_bytes) as u64 + ENTRY_OVERHEAD_BYTES
    }

    /// The entry as a read answer at wall-clock `now_ms`: a value that expired at or before
    /// `now_ms` reads as [`Lookup::Deleted`] at its own stamp, like a tombstone.
    pub fn to_lookup(&self, now_ms: u64) -> Lookup {
        match self {
            Entry::Value { stamp, .. } if self.is_expired(now_ms) => {
                Lookup::Deleted { stamp: *stamp }
            }
            Entry::Value { value, stamp, .. } => {
                Lookup::Found { value: value.clone(), stamp: *stamp }
            }
            Entry::Tombstone { stamp } => Lookup::Deleted { stamp: *stamp },
        }
    }
}

/// The first (up to) 16 bytes of `b`, zero-padded on the right, read as a big-endian `u128`:
/// comparing two of these compares those bytes lexicographically in one integer compare.
#[inline(always)]
fn prefix16(b: &[u8]) -> u128 {
    if let Some(head) = b.first_chunk::<16>() {
        return u128::from_be_bytes(*head);
    }
    // Here `b.len() < 16`. The two (possibly overlapping) loads below put byte `i` at bits
    // `(15 - i) * 8`; overlapping bytes land on the same bits with the same value, so OR is
    // exact, and bits of positions `len..16` stay zero.
    let shift = (16 - b.len()) * 8;
    if let (Some(hi), Some(tail)) = (b.first_chunk::<8>(), b.last_chunk::<8>()) {
        return (u128::from(u64::from_be_bytes(*hi)) << 64)
            | (u128::from(u64::from_be_bytes(*tail)) << shift);
    }
    if let (Some(hi), Some(tail)) = (b.first_chunk::<4>(), b.last_chunk::<4>()) {
        return (u128::from(u32::from_be_bytes(*hi)) << 96)
            | (u128::from(u32::from_be_bytes(*tail)) << shift);
    }
    let mut p = 0u128;
    for (i, &x) in b.iter().enumerate() {
        p |= u128::from(x) << ((15 - i) * 8);
    }
    p
}

/// Lexicographic byte order, exactly `a.cmp(b)`, but cheap on keys with long common prefixes.
///
/// Proof that it equals `<[u8]>::cmp`: let `pa`, `pb` be the zero-padded 16-byte prefixes.
/// - If `pa != pb`, let `i < 16` be the first differing position; the `u128` compare (big
///   endian) decides by position `i`. If `i < min(a.len(), b.len())`, both bytes are real and
///   `a.cmp(b)` is decided by the same byte. Otherwise one side, say `a`, is padding at `i`
///   (`i >= a.len()`) and so reads 0, while `b[i] != 0` is real: then `a` is a proper prefix of
///   `b` (all positions before `i` are equal), so `a < b` — and the `u128` compare says
///   `0 < b[i]`, also `a < b`. Padding can make an unequal pair compare equal, never reverse it.
/// - If `pa == pb`, the first `m = min(a.len(), b.len(), 16)` bytes are real on both sides and
///   equal, so `a.cmp(b) == a[m..].cmp(b[m..])`, which the fallback computes; it decides every
///   remaining byte and the lengths (e.g. `b"a"` vs `b"a\0"`: equal prefixes, shorter first).
#[inline(always)]
fn key_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match prefix16(a).cmp(&prefix16(b)) {
        Ordering::Equal => {
            let m = a.len().min(b.len()).min(16);
            // `m` is at most either length, so both are `Some` and compare as the slices.
            a.get(m..).cmp(&b.get(m..))
        }
        unequal => unequal,
    }
}

/// A borrowed key for map queries, ordered like [`MemKey`] (by [`key_cmp`]).
#[repr(transparent)]
struct KeyRef([u8]);

impl KeyRef {
    /// Views `bytes` as a key, without copying.
    #[inline(always)]
    fn new(bytes: &[u8]) -> &KeyRef {
        // SAFETY: `KeyRef` is `#[repr(transparent)]` over `[u8]`, so `&[u8]` and `&KeyRef` have
        // the same layout and pointer metadata (the length); the cast keeps the lifetime and
        // mutability of the input, and `KeyRef` adds no invariant beyond `[u8]`'s.
        unsafe { &*(bytes as *const [u8] as *const KeyRef) }
    }
}

impl PartialEq for KeyRef {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for KeyRef {}

impl Ord for KeyRef {
    #[inline(always)]
    fn cmp(&self, other: &Self) -> Ordering {
        key_cmp(&self.0, &other.0)
    }
}

impl PartialOrd for KeyRef {
    #[inline(always)]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Keys up to this many bytes are stored inline in [`MemKey`] (the enum stays 24 bytes, the
/// size of a `Vec<u8>`).
const INLINE_KEY_BYTES: usize = 22;

/// An owned memtable key: inline when short, boxed otherwise. Ordered by [`key_cmp`] (exactly
/// byte order); borrows as [`KeyRef`] so lookups need no allocation.
#[derive(Clone)]
enum MemKey {
    /// `buf[..len]` is the key (`len <= INLINE_KEY_BYTES`); the rest is zero.
    Inline {
        /// Key length.
        len: u8,
        /// Key bytes, zero-padded.
        buf: [u8; INLINE_KEY_BYTES],
    },
    /// A key longer than [`INLINE_KEY_BYTES`].
    Heap(Box<[u8]>),
}

impl MemKey {
    /// Copies `bytes` into a key.
    #[inline]
    fn new(bytes: &[u8]) -> Self {
        let mut buf = [0u8; INLINE_KEY_BYTES];
        match buf.get_mut(..bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                // `bytes.len() <= INLINE_KEY_BYTES < 256`: the cast is exact.
                MemKey::Inline { len: bytes.len() as u8, buf }
            }
            None => MemKey::Heap(bytes.into()),
        }
    }

    /// The key bytes.
    #[inline(always)]
    fn as_bytes(&self) -> &[u8] {
        match self {
            MemKey::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or_default(),
            MemKey::Heap(bytes) => bytes,
        }
    }
}

impl Borrow<KeyRef> for MemKey {
    #[inline(always)]
    fn borrow(&self) -> &KeyRef {
        KeyRef::new(self.as_bytes())
    }
}

impl PartialEq for MemKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for MemKey {}

impl Ord for MemKey {
    #[inline(always)]
    fn cmp(&self, other: &Self) -> Ordering {
        key_cmp(self.as_bytes(), other.as_bytes())
    }
}

impl PartialOrd for MemKey {
    #[inline(always)]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for MemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_bytes(), f)
    }
}

/// The sorted in-memory table. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct Memtable {
    map: BTreeMap<MemKey, Entry>,
    approx_bytes: u64,
    tombstones: u64,
}

impl Memtable {
    /// An empty memtable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `entry` to `key` if it supersedes what is stored; returns whether it did.
    pub fn insert(&mut self, key: &[u8], entry: Entry) -> bool {
        self.apply(key, entry.stamp(), || entry)
    }

    /// Applies a put of a value that never expires; see [`Memtable::insert`].
    pub fn put(&mut self, key: &[u8], value: &[u8], stamp: Stamp) -> bool {
        self.put_expiring(key, value, stamp, None)
    }

    /// Applies a put of a value that expires at `expires_at_ms` (ms since the Unix epoch;
    /// `None` = never); see [`Memtable::insert`].
    pub fn put_expiring(
        &mut self,
        key: &[u8],
        value: &[u8],
        stamp: Stamp,
        expires_at_ms: Option<u64>,
    ) -> bool {
        // The value is only copied once no newer stamp is stored.
        self.apply(key, stamp, || Entry::Value { value: value.to_vec(), stamp, expires_at_ms })
    }

    /// One map search per write: finds or reserves the slot for `key`, returns early if the
    /// stored entry has a newer stamp (it wins whatever `make` builds, since precedence orders
    /// by stamp first), and only then builds the entry.
    fn apply(&mut self, key: &[u8], stamp: Stamp, make: impl FnOnce() -> Entry) -> bool {
        let key_bytes = key.len();
        // Keys up to `INLINE_KEY_BYTES` need no allocation, so the owned key costs nothing
        // even when the key is already stored.
        match self.map.entry(MemKey::new(key)) {
            btree_map::Entry::Occupied(mut slot) => {
                let old = slot.get_mut();
                if old.stamp() > stamp {
                    return false;
                }
                let entry = make();
                if !entry.supersedes(old) {
                    return false;
                }
                let old_bytes = old.approx_bytes(key_bytes);
                let old_tomb = u64::from(matches!(old, Entry::Tombstone { .. }));
                let new_bytes = entry.approx_bytes(key_bytes);
                let new_tomb = u64::from(matches!(entry, Entry::Tombstone { .. }));
                *old = entry;
                self.approx_bytes = self.approx_bytes - old_bytes + new_bytes;
                self.tombstones = self.tombstones - old_tomb + new_tomb;
            }
            btree_map::Entry::Vacant(slot) => {
                let entry = make();
                self.approx_bytes += entry.approx_bytes(key_bytes);
                self.tombstones += u64::from(matches!(entry, Entry::Tombstone { .. }));
                slot.insert(entry);
            }
        }
        true
    }

    /// Applies a delete (a tombstone); see [`Memtable::insert`].
    pub fn delete(&mut self, key: &[u8], stamp: Stamp) -> bool {
        self.insert(key, Entry::Tombstone { stamp })
    }

    /// The entry stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(KeyRef::new(key))
    }

    /// The read answer for `key` at wall-clock `now_ms` (see [`Entry::to_lookup`]).
    pub fn lookup(&self, key: &[u8], now_ms: u64) -> Lookup {
        self.get(key).map_or(Lookup::Missing, |e| e.to_lookup(now_ms))
    }

    /// Number of keys, tombstones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of tombstones.
    pub fn tombstones(&self) -> u64 {
        self.tombstones
    }

    /// Estimated memory use, in bytes.
    pub fn approx_bytes(&self) -> u64 {
        self.approx_bytes
    }

    /// All entries in key order (for the flush to SSTables).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.map.iter().map(|(k, v)| (k.as_bytes(), v))
    }

    /// The entries whose key is strictly greater than `after` (all of them for `None`), in key
    /// order (for scans). The range is taken on the borrowed [`KeyRef`] form, whose order is
    /// the map's, so no owned key is built and the bound is exact byte order.
    pub fn iter_after(&self, after: Option<&[u8]>) -> impl Iterator<Item = (&[u8], &Entry)> {
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(KeyRef::new(a)));
        // The end is unbounded, so `range` cannot meet an inverted or empty-excluded range
        // (the cases where it panics).
        self.map.range::<KeyRef, _>((start, Bound::Unbounded)).map(|(k, v)| (k.as_bytes(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(hlc: u64, node: u64) -> Stamp {
        Stamp { hlc, node }
    }

    fn val(v: &[u8], stamp: Stamp, expires_at_ms: Option<u64>) -> Entry {
        Entry::Value { value: v.to_vec(), stamp, expires_at_ms }
    }

    #[test]
    fn a_value_reads_as_a_tombstone_from_its_expiry_on() {
        let mut m = Memtable::new();
        assert!(m.put_expiring(b"k", b"v", s(10, 1), Some(1_000)));
        let found = Lookup::Found { value: b"v".to_vec(), stamp: s(10, 1) };
        assert_eq!(m.lookup(b"k", 0), found);
        assert_eq!(m.lookup(b"k", 999), found);
        // Expired exactly at its expiry, and it keeps its stamp.
        assert_eq!(m.lookup(b"k", 1_000), Lookup::Deleted { stamp: s(10, 1) });
        assert_eq!(m.lookup(b"k", u64::MAX), Lookup::Deleted { stamp: s(10, 1) });
        // Still an entry: it shadows older writes, and it is not counted as a tombstone (it is
        // written to tables as a value with its expiry).
        assert!(!m.put(b"k", b"older", s(9, 9)));
        assert_eq!(m.len(), 1);
        assert_eq!(m.tombstones(), 0);
        assert!(m.get(b"k").is_some_and(|e| e.is_expired(1_000) && !e.is_expired(999)));
        // A newer write without expiry replaces it.
        assert!(m.put(b"k", b"new", s(11, 0)));
        assert_eq!(
            m.lookup(b"k", u64::MAX),
            Lookup::Found { value: b"new".to_vec(), stamp: s(11, 0) }
        );
        assert_eq!(m.get(b"k").and_then(Entry::expires_at_ms), None);
    }

    #[test]
    fn expiry_breaks_ties_of_equal_stamp_and_value_the_same_in_any_order() {
        let entries = [
            val(b"v", s(5, 5), Some(10)),
            val(b"v", s(5, 5), Some(20)),
            val(b"v", s(5, 5), None),
            val(b"a", s(5, 5), None),
        ];
        let mut perms = vec![];
        permute(&[0, 1, 2, 3], &mut vec![], &mut perms);
        for p in perms {
            let mut m = Memtable::new();
            for i in p {
                m.insert(b"k", entries[i].clone());
            }
            assert_eq!(m.get(b"k"), Some(&entries[2]));
        }
        assert!(entries[1].supersedes(&entries[0]));
        assert!(!entries[0].supersedes(&entries[1]));
        assert!(Entry::Tombstone { stamp: s(5, 5) }.supersedes(&entries[2]));
    }

    #[test]
    fn older_stamp_is_ignored() {
        let mut m = Memtable::new();
        assert!(m.put(b"k", b"new", s(10, 1)));
        assert!(!m.put(b"k", b"old", s(9, 5)));
        assert!(!m.delete(b"k", s(10, 0)));
        assert_eq!(m.lookup(b"k", 0), Lookup::Found { value: b"new".to_vec(), stamp: s(10, 1) });
        assert!(m.delete(b"k", s(11, 0)));
        assert_eq!(m.lookup(b"k", 0), Lookup::Deleted { stamp: s(11, 0) });
        assert_eq!(m.tombstones(), 1);
        assert!(m.put(b"k", b"again", s(12, 0)));
        assert_eq!(m.tombstones(), 0);
        assert_eq!(m.lookup(b"zz", 0), Lookup::Missing);
    }

    #[test]
    fn equal_stamps_resolve_the_same_in_any_order() {
        let entries = [
            val(b"a", s(5, 5), None),
            val(b"b", s(5, 5), None),
            Entry::Tombstone { stamp: s(5, 5) },
            val(b"z", s(4, 9), None),
        ];
        let mut results = Vec::new();
        // All 24 orders.
        let idx = [0usize, 1, 2, 3];
        let mut perms = vec![];
        permute(&idx, &mut vec![], &mut perms);
        for p in perms {
            let mut m = Memtable::new();
            for i in p {
                m.insert(b"k", entries[i].clone());
            }
            results.push(m.lookup(b"k", 0));
        }
        assert!(results.iter().all(|r| *r == results[0]));
        assert_eq!(results[0], Lookup::Deleted { stamp: s(5, 5) });
    }

    fn permute(rest: &[usize], cur: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if rest.is_empty() {
            out.push(cur.clone());
        }
        for (i, x) in rest.iter().enumerate() {
            let mut r = rest.to_vec();
            r.remove(i);
            cur.push(*x);
            permute(&r, cur, out);
            cur.pop();
        }
    }

    #[test]
    fn approx_bytes_tracks_replacements() {
        let mut m = Memtable::new();
        m.put(b"key", &[0u8; 100], s(1, 0));
        assert_eq!(m.approx_bytes(), 3 + 100 + ENTRY_OVERHEAD_BYTES);
        m.put(b"key", &[0u8; 10], s(2, 0));
        assert_eq!(m.approx_bytes(), 3 + 10 + ENTRY_OVERHEAD_BYTES);
        m.delete(b"key", s(3, 0));
        assert_eq!(m.approx_bytes(), 3 + ENTRY_OVERHEAD_BYTES);
        m.put(b"b", b"", s(1, 0));
        assert_eq!(m.len(), 2);
        let keys: Vec<&[u8]> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![&b"b"[..], &b"key"[..]]);
    }

    #[test]
    fn iter_after_starts_strictly_after_the_key() {
        let mut m = Memtable::new();
        // Short (inline) and long (heap) keys, and keys that are prefixes of each other.
        let keys: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"ab".to_vec(),
            vec![b'a'; 30],
            vec![b'a'; 31],
            b"b".to_vec(),
            vec![0xFF; 25],
        ];
        for (i, k) in keys.iter().enumerate() {
            m.put(k, b"v", s(i as u64, 0));
        }
        let mut sorted = keys.clone();
        sorted.sort();
        let all: Vec<&[u8]> = m.iter_after(None).map(|(k, _)| k).collect();
        assert_eq!(all, sorted.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let probes: Vec<Vec<u8>> = vec![
            vec![],
            b"a".to_vec(),
            b"a\0\0".to_vec(),
            vec![b'a'; 29],
            vec![b'a'; 30],
            b"az".to_vec(),
            vec![0xFF; 26],
        ];
        for probe in probes.iter().chain(&keys) {
            let got: Vec<&[u8]> = m.iter_after(Some(probe)).map(|(k, _)| k).collect();
            let want: Vec<&[u8]> = sorted
                .iter()
                .filter(|k| k.as_slice() > probe.as_slice())
                .map(Vec::as_slice)
                .collect();
            assert_eq!(got, want, "after {probe:?}");
        }
    }

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// A random key of 0..40 bytes, biased to 0x00, 0xFF and a few letters so that shared
    /// prefixes, zero padding look-alikes and extreme bytes are common.
    fn rand_key(rng: &mut StdRng) -> Vec<u8> {
        let len = rng.gen_range(0..40);
        (0..len)
            .map(|_| match rng.gen_range(0..6) {
                0 => 0x00,
                1 => 0xFF,
                2 => b'a',
                3 => b'b',
                _ => rng.gen(),
            })
            .collect()
    }

    /// A key related to `a`: a prefix of it, an extension, or a copy with one byte changed.
    fn related_key(rng: &mut StdRng, a: &[u8]) -> Vec<u8> {
        let keep = rng.gen_range(0..=a.len());
        let mut b = a[..keep].to_vec();
        match rng.gen_range(0..4) {
            0 => {}
            1 => b.extend(std::iter::repeat_n(0u8, rng.gen_range(1..4))),
            2 => b.extend(rand_key(rng)),
            _ => {
                b.extend_from_slice(&a[keep..]);
                if let Some(x) = b.get_mut(keep) {
                    *x = match rng.gen_range(0..3) {
                        0 => 0x00,
                        1 => 0xFF,
                        _ => rng.gen(),
                    };
                }
            }
        }
        b.truncate(39);
        b
    }

    #[test]
    fn prefix16_is_the_zero_padded_big_endian_head() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50_000 {
            let a = rand_key(&mut rng);
            let mut pad = [0u8; 16];
            let n = a.len().min(16);
            pad[..n].copy_from_slice(&a[..n]);
            assert_eq!(prefix16(&a), u128::from_be_bytes(pad), "{a:?}");
        }
    }

    #[test]
    fn key_order_equals_byte_order() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let mut fixed: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![0xFF], b"a".to_vec()];
        fixed.push(b"user000000012345".to_vec());
        fixed.push(b"user0000000123450".to_vec());
        fixed.push(b"user000000012345\0".to_vec());
        fixed.push(b"user00000001234".to_vec());
        fixed.push(vec![0xFF; 16]);
        fixed.push(vec![0xFF; 17]);
        fixed.push(vec![0; 16]);
        fixed.push(vec![0; 17]);
        for a in &fixed {
            for b in &fixed {
                assert_eq!(key_cmp(a, b), a.cmp(b), "{a:?} vs {b:?}");
            }
        }
        let mut pairs = 0;
        while pairs < 250_000 {
            let a = rand_key(&mut rng);
            let b = if rng.gen_bool(0.75) { related_key(&mut rng, &a) } else { rand_key(&mut rng) };
            let want = a.cmp(&b);
            assert_eq!(key_cmp(&a, &b), want, "{a:?} vs {b:?}");
            assert_eq!(KeyRef::new(&a).cmp(KeyRef::new(&b)), want, "{a:?} vs {b:?}");
            let (ka, kb) = (MemKey::new(&a), MemKey::new(&b));
            assert_eq!(ka.cmp(&kb), want, "{a:?} vs {b:?}");
            assert_eq!(ka == kb, want.is_eq());
            // The `Borrow` contract: the owned and borrowed orders agree.
            assert_eq!(Borrow::<KeyRef>::borrow(&ka).cmp(KeyRef::new(&b)), want);
            assert_eq!(ka.as_bytes(), &a[..]);
            pairs += 1;
        }
    }

    #[test]
    fn iteration_and_lookups_match_a_vec_keyed_btreemap() {
        let mut rng = StdRng::seed_from_u64(42);
        for round in 0..20 {
            let mut m = Memtable::new();
            let mut reference: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
            let mut keys: Vec<Vec<u8>> = Vec::new();
            for i in 0..2_000u64 {
                let key = match keys.len() {
                    0 => rand_key(&mut rng),
                    n => match rng.gen_range(0..4) {
                        0 => keys[rng.gen_range(0..n)].clone(),
                        1 => {
                            let j = rng.gen_range(0..n);
                            related_key(&mut rng, &keys[j])
                        }
                        2 => format!("user{:012}", rng.gen_range(0..5_000u64)).into_bytes(),
                        _ => rand_key(&mut rng),
                    },
                };
                let stamp = s(rng.gen_range(0..3_000), rng.gen_range(0..3));
                let entry = if rng.gen_bool(0.2) {
                    Entry::Tombstone { stamp }
                } else {
                    let expires_at_ms = match rng.gen_range(0..4) {
                        0 => Some(rng.gen_range(0..4)),
                        _ => None,
                    };
                    Entry::Value { value: i.to_be_bytes().to_vec(), stamp, expires_at_ms }
                };
                let want = reference.get(&key).is_none_or(|old| entry.supersedes(old));
                if want {
                    reference.insert(key.clone(), entry.clone());
                }
                let applied = match &entry {
                    Entry::Value { value, stamp, expires_at_ms } if round % 2 == 0 => {
                        m.put_expiring(&key, value, *stamp, *expires_at_ms)
                    }
                    _ => m.insert(&key, entry),
                };
                assert_eq!(applied, want, "{key:?}");
                keys.push(key);
            }
            let got: Vec<(&[u8], &Entry)> = m.iter().collect();
            let expected: Vec<(&[u8], &Entry)> =
                reference.iter().map(|(k, v)| (k.as_slice(), v)).collect();
            assert_eq!(got, expected);
            assert_eq!(m.len(), reference.len());
            let bytes: u64 = reference.iter().map(|(k, v)| v.approx_bytes(k.len())).sum();
            assert_eq!(m.approx_bytes(), bytes);
            let tombs = reference.values().filter(|e| matches!(e, Entry::Tombstone { .. })).count();
            assert_eq!(m.tombstones(), tombs as u64);
            for _ in 0..2_000 {
                let j = rng.gen_range(0..keys.len());
                let probe = related_key(&mut rng, &keys[j]);
                assert_eq!(m.get(&probe), reference.get(&probe), "{probe:?}");
            }
        }
    }
}
