//! [`EngineStats`]: a snapshot of one shard engine's counters, and a flat named view of them
//! ([`EngineStats::counters`]) for the stats request and `kvs stats`.
//!
//! Counters marked "since open" restart at zero when the shard opens; the others are gauges
//! of the current state.

/// Tables and bytes of one LSM level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelStats {
    /// Live tables in the level.
    pub tables: u64,
    /// Their file bytes.
    pub bytes: u64,
}

/// A snapshot of the engine's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Keys in the memtable, tombstones included.
    pub keys: u64,
    /// Estimated keys in the shard: memtable and immutable memtable entries plus every
    /// table's entry count. An upper bound: a key with versions in several places counts once
    /// per place, and tombstones count.
    pub keys_estimate: u64,
    /// Tombstones in the memtable.
    pub tombstones: u64,
    /// Estimated memtable memory, in bytes.
    pub memtable_bytes: u64,
    /// The memtable budget from the options, in bytes.
    pub memtable_bytes_max: u64,
    /// Estimated memory of the immutable memtable being flushed (0 when none).
    pub immutable_bytes: u64,
    /// Bytes used (headers and records) in the WAL segments on disk.
    pub wal_bytes: u64,
    /// WAL segments on disk.
    pub wal_segments: u64,
    /// The id of the segment being written.
    pub wal_segment_id: u64,
    /// WAL fdatasyncs since open.
    pub syncs: u64,
    /// WAL records written since open.
    pub records_written: u64,
    /// WAL frame bytes appended since open.
    pub wal_bytes_written: u64,
    /// WAL write calls since open.
    pub wal_writes: u64,
    /// Puts acknowledged since open.
    pub puts: u64,
    /// Deletes acknowledged since open.
    pub deletes: u64,
    /// Gets served since open.
    pub gets: u64,
    /// Key and value bytes of the puts and deletes acknowledged since open: what the users
    /// wrote, the denominator of write amplification.
    pub user_bytes_written: u64,
    /// Memtable flushes committed since open.
    pub flushes: u64,
    /// Flush attempts that failed since open (each is retried).
    pub flush_failures: u64,
    /// Table bytes written by committed flushes since open.
    pub flush_bytes_written: u64,
    /// Compactions committed since open.
    pub compactions: u64,
    /// Compaction attempts that failed since open.
    pub compaction_failures: u64,
    /// Table bytes read by committed compactions since open (their inputs).
    pub compaction_bytes_read: u64,
    /// Table bytes written by committed compactions since open (their outputs).
    pub compaction_bytes_written: u64,
    /// Bytes the compaction picker would still merge to bring every level within its target
    /// (the inputs of the plans it would make, estimated): 0 when compaction is caught up.
    pub compaction_backlog_bytes: u64,
    /// Whether a compaction is running now.
    pub compaction_running: bool,
    /// Times a write waited for compaction because level 0 was at its stop trigger, since
    /// open (a write that waits for several compactions counts once per wait).
    pub write_stalls: u64,
    /// Live SSTables.
    pub tables: u64,
    /// Bytes of the live SSTables.
    pub table_bytes: u64,
    /// Tables and bytes per level, level 0 first.
    pub levels: Vec<LevelStats>,
    /// Table lookups the Bloom filter answered "absent" (no block read) since open.
    pub bloom_useful: u64,
    /// Table lookups the Bloom filter let through for a key the table does not hold (one
    /// block read wasted) since open.
    pub bloom_false_positives: u64,
    /// Data blocks read from disk by gets and compactions since open.
    pub blocks_read: u64,
    /// Table block reads served by the block cache since open.
    pub block_cache_hits: u64,
    /// Table block reads the block cache did not hold (read from disk) since open; 0 when
    /// the cache is disabled.
    pub block_cache_misses: u64,
    /// Bytes of blocks in the block cache.
    pub block_cache_bytes: u64,
}

impl EngineStats {
    /// Bytes written to the device (WAL, flushes, compactions) per byte the users wrote, since
    /// open; `None` before the first write.
    pub fn write_amplification(&self) -> Option<f64> {
        if self.user_bytes_written == 0 {
            return None;
        }
        let device =
            self.wal_bytes_written + self.flush_bytes_written + self.compaction_bytes_written;
        Some(device as f64 / self.user_bytes_written as f64)
    }

    /// Share of block reads the cache served, since open; `None` before the first.
    pub fn block_cache_hit_rate(&self) -> Option<f64> {
        let total = self.block_cache_hits + self.block_cache_misses;
        (total > 0).then(|| self.block_cache_hits as f64 / total as f64)
    }

    /// Every counter by a stable snake_case name (levels as `l<N>_tables` / `l<N>_bytes`),
    /// for transports that carry counters generically. Names only ever get added.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = [
            ("keys", self.keys),
            ("keys_estimate", self.keys_estimate),
            ("tombstones", self.tombstones),
            ("memtable_bytes", self.memtable_bytes),
            ("memtable_bytes_max", self.memtable_bytes_max),
            ("immutable_bytes", self.immutable_bytes),
            ("wal_bytes", self.wal_bytes),
            ("wal_segments", self.wal_segments),
            ("wal_segment_id", self.wal_segment_id),
            ("syncs", self.syncs),
            ("records_written", self.records_written),
            ("wal_bytes_written", self.wal_bytes_written),
            ("wal_writes", self.wal_writes),
            ("puts", self.puts),
            ("deletes", self.deletes),
            ("gets", self.gets),
            ("user_bytes_written", self.user_bytes_written),
            ("flushes", self.flushes),
            ("flush_failures", self.flush_failures),
            ("flush_bytes_written", self.flush_bytes_written),
            ("compactions", self.compactions),
            ("compaction_failures", self.compaction_failures),
            ("compaction_bytes_read", self.compaction_bytes_read),
            ("compaction_bytes_written", self.compaction_bytes_written),
            ("compaction_backlog_bytes", self.compaction_backlog_bytes),
            ("compaction_running", u64::from(self.compaction_running)),
            ("write_stalls", self.write_stalls),
            ("tables", self.tables),
            ("table_bytes", self.table_bytes),
            ("bloom_useful", self.bloom_useful),
            ("bloom_false_positives", self.bloom_false_positives),
            ("blocks_read", self.blocks_read),
            ("block_cache_hits", self.block_cache_hits),
            ("block_cache_misses", self.block_cache_misses),
            ("block_cache_bytes", self.block_cache_bytes),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        for (level, l) in self.levels.iter().enumerate() {
            out.push((format!("l{level}_tables"), l.tables));
            out.push((format!("l{level}_bytes"), l.bytes));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_name_every_field_once() {
        let s = EngineStats {
            levels: vec![LevelStats { tables: 3, bytes: 30 }, LevelStats { tables: 1, bytes: 9 }],
            compaction_running: true,
            ..EngineStats::default()
        };
        let c = s.counters();
        let mut names: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), c.len(), "duplicate counter names");
        let get = |n: &str| c.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(get("l0_tables"), Some(3));
        assert_eq!(get("l1_bytes"), Some(9));
        assert_eq!(get("compaction_running"), Some(1));
        assert_eq!(get("l2_tables"), None);
    }

    #[test]
    fn ratios() {
        let mut s = EngineStats::default();
        assert_eq!(s.write_amplification(), None);
        assert_eq!(s.block_cache_hit_rate(), None);
        s.user_bytes_written = 100;
        s.wal_bytes_written = 120;
        s.flush_bytes_written = 80;
        s.compaction_bytes_written = 200;
        assert_eq!(s.write_amplification(), Some(4.0));
        s.block_cache_hits = 3;
        s.block_cache_misses = 1;
        assert_eq!(s.block_cache_hit_rate(), Some(0.75));
    }
}
