//! The memtable: the sorted in-memory map of the newest version of each key.
//!
//! Today a `BTreeMap`; a later issue flushes it to SSTables through [`Memtable::iter`] (keys in
//! order) and may change the structure behind the same interface.
//!
//! ## Invariants
//! - Last write wins by [`Entry`] precedence: the greater [`Stamp`]; on equal stamps a
//!   tombstone beats a value and a greater value beats a smaller one. Precedence is a total
//!   order, so applying the same entries in any order yields the same map: concurrent writers
//!   may complete in any order and WAL replay is idempotent.
//! - `approx_bytes` is the sum of [`Entry::approx_bytes`] over the map (key and value bytes
//!   plus a fixed per-entry overhead); it only estimates memory, for the flush budget.

use crate::types::{Lookup, Stamp};
use std::collections::BTreeMap;

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

    fn precedence(&self) -> (Stamp, u8, &[u8]) {
        match self {
            Entry::Value { value, stamp } => (*stamp, 0, value),
            Entry::Tombstone { stamp } => (*stamp, 1, &[]),
        }
    }

    /// Estimated memory of this entry under `key_bytes` of key.
    pub fn approx_bytes(&self, key_bytes: usize) -> u64 {
        let value_bytes = match self {
            Entry::Value { value, .. } => value.len(),
            Entry::Tombstone { .. } => 0,
        };
        (key_bytes + value_bytes) as u64 + ENTRY_OVERHEAD_BYTES
    }

    /// The entry as a read answer.
    pub fn to_lookup(&self) -> Lookup {
        match self {
            Entry::Value { value, stamp } => Lookup::Found { value: value.clone(), stamp: *stamp },
            Entry::Tombstone { stamp } => Lookup::Deleted { stamp: *stamp },
        }
    }
}

/// The sorted in-memory table. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct Memtable {
    map: BTreeMap<Vec<u8>, Entry>,
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
        let new_bytes = entry.approx_bytes(key.len());
        let new_tomb = u64::from(matches!(entry, Entry::Tombstone { .. }));
        match self.map.get_mut(key) {
            Some(old) => {
                if !entry.supersedes(old) {
                    return false;
                }
                let old_bytes = old.approx_bytes(key.len());
                let old_tomb = u64::from(matches!(old, Entry::Tombstone { .. }));
                *old = entry;
                self.approx_bytes = self.approx_bytes - old_bytes + new_bytes;
                self.tombstones = self.tombstones - old_tomb + new_tomb;
            }
            None => {
                self.map.insert(key.to_vec(), entry);
                self.approx_bytes += new_bytes;
                self.tombstones += new_tomb;
            }
        }
        true
    }

    /// Applies a put; see [`Memtable::insert`].
    pub fn put(&mut self, key: &[u8], value: &[u8], stamp: Stamp) -> bool {
        // Skip copying the value when an existing entry wins anyway.
        if let Some(old) = self.map.get(key) {
            if old.stamp() > stamp {
                return false;
            }
        }
        self.insert(key, Entry::Value { value: value.to_vec(), stamp })
    }

    /// Applies a delete (a tombstone); see [`Memtable::insert`].
    pub fn delete(&mut self, key: &[u8], stamp: Stamp) -> bool {
        self.insert(key, Entry::Tombstone { stamp })
    }

    /// The entry stored for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        self.map.get(key)
    }

    /// The read answer for `key`.
    pub fn lookup(&self, key: &[u8]) -> Lookup {
        self.get(key).map_or(Lookup::Missing, Entry::to_lookup)
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
        self.map.iter().map(|(k, v)| (k.as_slice(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(hlc: u64, node: u64) -> Stamp {
        Stamp { hlc, node }
    }

    #[test]
    fn older_stamp_is_ignored() {
        let mut m = Memtable::new();
        assert!(m.put(b"k", b"new", s(10, 1)));
        assert!(!m.put(b"k", b"old", s(9, 5)));
        assert!(!m.delete(b"k", s(10, 0)));
        assert_eq!(m.lookup(b"k"), Lookup::Found { value: b"new".to_vec(), stamp: s(10, 1) });
        assert!(m.delete(b"k", s(11, 0)));
        assert_eq!(m.lookup(b"k"), Lookup::Deleted { stamp: s(11, 0) });
        assert_eq!(m.tombstones(), 1);
        assert!(m.put(b"k", b"again", s(12, 0)));
        assert_eq!(m.tombstones(), 0);
        assert_eq!(m.lookup(b"zz"), Lookup::Missing);
    }

    #[test]
    fn equal_stamps_resolve_the_same_in_any_order() {
        let entries = [
            Entry::Value { value: b"a".to_vec(), stamp: s(5, 5) },
            Entry::Value { value: b"b".to_vec(), stamp: s(5, 5) },
            Entry::Tombstone { stamp: s(5, 5) },
            Entry::Value { value: b"z".to_vec(), stamp: s(4, 9) },
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
            results.push(m.lookup(b"k"));
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
}
