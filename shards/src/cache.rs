//! [`BlockCache`]: one shard's cache of verified, decompressed SSTable data blocks.
//!
//! Keyed by `(table id, block offset)`; the value is the block's uncompressed bytes as
//! [`SstableReader`](crate::sstable::SstableReader) returns them after its checks (crc,
//! decompression to the indexed length, last key equal to the index's). Only checked bytes
//! are ever inserted, so a corrupt block is reported on every read and never cached.
//!
//! # Budget and eviction
//! `capacity_bytes` bounds the sum of the cached blocks' lengths (the map and slot overhead,
//! about 64 bytes a block, is not counted). A block larger than the whole budget is not
//! cached. Eviction is CLOCK (second chance): slots in a ring, each with a referenced bit set
//! by insert and by every hit; the hand clears set bits and evicts the first slot found
//! clear. Every bit it clears was set by an earlier insert or hit, so eviction is O(1)
//! amortized. Capacity 0 disables the cache: lookups return `None` without counting and
//! inserts do nothing.
//!
//! # Table ids
//! Table ids are never reused within a process (`Manifest::allocate_table_id` only counts
//! up; after a crash an id may be handed out again, but a reopened engine has a fresh cache),
//! so the blocks of a dropped table can simply age out. [`BlockCache::evict_table`] frees
//! them eagerly for callers that want the memory back at once (compaction, when wired).
//!
//! # Invariants
//! - `!Send`, single-threaded: state is in a `RefCell` borrowed only inside the synchronous
//!   methods here, never across an `.await`.
//! - `bytes <= capacity_bytes` after every call.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// `(table id, block offset in the file)`.
pub type BlockKey = (u64, u64);

/// A snapshot of the cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockCacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups not in the cache (the block was then read from disk).
    pub misses: u64,
    /// Blocks evicted to make room (not counting `evict_table` or replacements).
    pub evictions: u64,
    /// Bytes of the cached blocks.
    pub bytes: u64,
    /// Blocks cached.
    pub blocks: u64,
    /// The budget, in bytes.
    pub capacity_bytes: u64,
}

struct Slot {
    key: BlockKey,
    data: Rc<[u8]>,
    referenced: bool,
}

#[derive(Default)]
struct Inner {
    map: HashMap<BlockKey, usize>,
    /// The CLOCK ring; `None` is a free slot (its index is in `free`).
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    hand: usize,
    bytes: u64,
}

impl Inner {
    fn remove_slot(&mut self, i: usize) -> Option<Slot> {
        let slot = self.slots.get_mut(i)?.take()?;
        self.map.remove(&slot.key);
        self.bytes -= slot.data.len() as u64;
        self.free.push(i);
        Some(slot)
    }

    /// Advances the hand until it evicts one block; `false` if the cache is empty.
    fn evict_one(&mut self) -> bool {
        if self.map.is_empty() {
            return false;
        }
        // Each full turn clears every bit, so the second turn evicts at the latest.
        for _ in 0..=2 * self.slots.len() {
            let i = self.hand;
            self.hand = if i + 1 >= self.slots.len() { 0 } else { i + 1 };
            match self.slots.get_mut(i) {
                Some(Some(slot)) if slot.referenced => slot.referenced = false,
                Some(Some(_)) => return self.remove_slot(i).is_some(),
                _ => {}
            }
        }
        false
    }
}

/// A shard's block cache. See the module docs.
pub struct BlockCache {
    capacity_bytes: u64,
    inner: RefCell<Inner>,
    hits: Cell<u64>,
    misses: Cell<u64>,
    evictions: Cell<u64>,
}

impl BlockCache {
    /// A cache holding up to `capacity_bytes` of blocks; 0 disables it.
    pub fn new(capacity_bytes: u64) -> Self {
        BlockCache {
            capacity_bytes,
            inner: RefCell::new(Inner::default()),
            hits: Cell::new(0),
            misses: Cell::new(0),
            evictions: Cell::new(0),
        }
    }

    /// Whether the cache holds anything at all (capacity above 0).
    pub fn enabled(&self) -> bool {
        self.capacity_bytes > 0
    }

    /// The budget in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The cached block at `key`, marking it recently used. Counts a hit or a miss (nothing
    /// when the cache is disabled).
    pub fn get(&self, key: BlockKey) -> Option<Rc<[u8]>> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.inner.borrow_mut();
        let found = inner.map.get(&key).copied();
        let data = found.and_then(|i| inner.slots.get_mut(i)).and_then(|s| s.as_mut()).map(|s| {
            s.referenced = true;
            Rc::clone(&s.data)
        });
        drop(inner);
        let counter = if data.is_some() { &self.hits } else { &self.misses };
        counter.set(counter.get() + 1);
        data
    }

    /// Caches `data` (checked bytes only) at `key`, replacing any block there and evicting
    /// others until it fits. A block larger than the budget is not cached.
    pub fn insert(&self, key: BlockKey, data: Rc<[u8]>) {
        let len = data.len() as u64;
        if !self.enabled() || len > self.capacity_bytes {
            return;
        }
        let mut inner = self.inner.borrow_mut();
        if let Some(i) = inner.map.get(&key).copied() {
            inner.remove_slot(i);
        }
        let mut evicted = 0u64;
        while inner.bytes + len > self.capacity_bytes {
            if !inner.evict_one() {
                break;
            }
            evicted += 1;
        }
        debug_assert!(inner.bytes + len <= self.capacity_bytes);
        let slot = Slot { key, data, referenced: true };
        let i = match inner.free.pop() {
            Some(i) => {
                if let Some(s) = inner.slots.get_mut(i) {
                    *s = Some(slot);
                }
                i
            }
            None => {
                inner.slots.push(Some(slot));
                inner.slots.len() - 1
            }
        };
        inner.map.insert(key, i);
        inner.bytes += len;
        drop(inner);
        self.evictions.set(self.evictions.get() + evicted);
    }

    /// Drops every cached block of table `table_id` (O(cached blocks)).
    pub fn evict_table(&self, table_id: u64) {
        let mut inner = self.inner.borrow_mut();
        let doomed: Vec<usize> =
            inner.map.iter().filter(|(k, _)| k.0 == table_id).map(|(_, &i)| i).collect();
        for i in doomed {
            inner.remove_slot(i);
        }
    }

    /// The counters and current size.
    pub fn stats(&self) -> BlockCacheStats {
        let inner = self.inner.borrow();
        BlockCacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            evictions: self.evictions.get(),
            bytes: inner.bytes,
            blocks: inner.map.len() as u64,
            capacity_bytes: self.capacity_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(len: usize, fill: u8) -> Rc<[u8]> {
        vec![fill; len].into()
    }

    #[test]
    fn hits_after_insert_and_misses_before() {
        let c = BlockCache::new(10_000);
        assert!(c.get((1, 0)).is_none());
        c.insert((1, 0), block(100, 7));
        assert_eq!(&*c.get((1, 0)).unwrap(), &[7u8; 100][..]);
        assert!(c.get((1, 4096)).is_none());
        assert!(c.get((2, 0)).is_none(), "other table, same offset");
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.bytes, s.blocks, s.evictions), (1, 3, 100, 1, 0));
    }

    #[test]
    fn budget_is_respected_and_old_blocks_are_evicted() {
        let c = BlockCache::new(4 * 1000);
        for i in 0..100u64 {
            c.insert((1, i * 1000), block(1000, i as u8));
            let s = c.stats();
            assert!(s.bytes <= 4000, "{s:?}");
        }
        let s = c.stats();
        assert_eq!((s.bytes, s.blocks, s.evictions), (4000, 4, 96));
        for i in 96..100u64 {
            assert_eq!(c.get((1, i * 1000)).unwrap()[0], i as u8);
        }
        assert!(c.get((1, 0)).is_none());
    }

    #[test]
    fn clock_keeps_referenced_blocks() {
        let c = BlockCache::new(3 * 100);
        for i in 0..3u64 {
            c.insert((1, i), block(100, 0));
        }
        // The first insert pass clears every bit and evicts block 0; then 1 is hot.
        c.insert((1, 3), block(100, 0));
        assert!(c.get((1, 0)).is_none());
        assert!(c.get((1, 1)).is_some());
        c.insert((1, 4), block(100, 0));
        assert!(c.get((1, 1)).is_some(), "referenced block got a second chance");
        assert!(c.get((1, 2)).is_none(), "unreferenced block evicted");
        assert!(c.stats().bytes <= 300);
    }

    #[test]
    fn mixed_sizes_stay_within_budget() {
        let c = BlockCache::new(10_000);
        for i in 0..1000u64 {
            let len = 100 + (i as usize * 37) % 4000;
            c.insert((i % 7, i), block(len, 1));
            if i % 3 == 0 {
                c.get((i % 7, i / 2));
            }
            let s = c.stats();
            assert!(s.bytes <= 10_000, "{s:?}");
            let inner = c.inner.borrow();
            let sum: u64 = inner.slots.iter().flatten().map(|s| s.data.len() as u64).sum();
            assert_eq!(sum, s.bytes);
            assert_eq!(inner.map.len() as u64, s.blocks);
        }
    }

    #[test]
    fn replacing_a_key_does_not_double_count() {
        let c = BlockCache::new(1000);
        c.insert((1, 0), block(300, 1));
        c.insert((1, 0), block(500, 2));
        let s = c.stats();
        assert_eq!((s.bytes, s.blocks), (500, 1));
        assert_eq!(c.get((1, 0)).unwrap()[0], 2);
    }

    #[test]
    fn oversize_block_is_not_cached() {
        let c = BlockCache::new(1000);
        c.insert((1, 0), block(600, 1));
        c.insert((1, 4096), block(1001, 2));
        assert!(c.get((1, 4096)).is_none());
        assert!(c.get((1, 0)).is_some(), "an oversize block evicts nothing");
        assert_eq!(c.stats().bytes, 600);
        c.insert((1, 8192), block(1000, 3));
        assert_eq!(c.stats().bytes, 1000, "exactly the budget fits");
    }

    #[test]
    fn capacity_zero_disables() {
        let c = BlockCache::new(0);
        assert!(!c.enabled());
        c.insert((1, 0), block(1, 1));
        c.insert((1, 1), block(0, 1));
        assert!(c.get((1, 0)).is_none());
        assert_eq!(c.stats(), BlockCacheStats::default());
    }

    #[test]
    fn evict_table_drops_only_that_table() {
        let c = BlockCache::new(10_000);
        for t in 1..=3u64 {
            for o in 0..3u64 {
                c.insert((t, o * 4096), block(100, t as u8));
            }
        }
        c.evict_table(2);
        let s = c.stats();
        assert_eq!((s.bytes, s.blocks), (600, 6));
        assert!(c.get((2, 0)).is_none());
        assert!(c.get((1, 0)).is_some() && c.get((3, 8192)).is_some());
        // Freed slots are reused.
        c.insert((4, 0), block(100, 4));
        assert_eq!(c.inner.borrow().slots.len(), 9);
    }
}
