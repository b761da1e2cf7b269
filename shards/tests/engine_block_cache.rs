//! Goal: the shard's block cache serves repeated reads of flushed keys without disk reads.
//!
//! Method: the smallest memtable budget (64 KiB) with ~1 KiB values, so a few hundred writes
//! flush tables; then one key that lives only in a table is read repeatedly and the engine's
//! block cache counters are checked, with the cache on and off. (A file of its own so it does
//! not run in parallel with the timing-sensitive crash tests in `engine_flush.rs`.)

mod support;

use support::{value_of, wait_flushed};

use kvs_shards::{Engine, Lookup, ShardOptions, SyncMode};

/// After a flush, a repeated get of a key that lives only in a table is served by the block
/// cache (hits grow, misses do not); with the cache disabled every such get reads the disk.
#[test]
fn repeated_gets_of_flushed_keys_hit_the_block_cache() {
    for cache_bytes in [64 * 1024 * 1024, 0] {
        let dir = tempfile::tempdir().unwrap();
        let opts = ShardOptions {
            block_cache_bytes: cache_bytes,
            memtable_bytes_max: kvs_shards::limits::MEMTABLE_BYTES_MIN,
            ..support::small_opts(dir.path(), SyncMode::Periodic)
        };
        support::run(move || async move {
            let (engine, _) = Engine::open(opts).await.unwrap();
            for i in 0..300u64 {
                let key = format!("k{i:04}");
                let value = value_of(i, 1000);
                engine.put(key.as_bytes(), &value, support::stamp(i + 1)).await.unwrap();
            }
            wait_flushed(&engine, 2).await;
            let expected = Lookup::Found { value: value_of(0, 1000), stamp: support::stamp(1) };
            let before = engine.stats();
            assert_eq!(engine.get(b"k0000").await.unwrap(), expected);
            let first = engine.stats();
            for _ in 0..10 {
                assert_eq!(engine.get(b"k0000").await.unwrap(), expected);
            }
            let after = engine.stats();
            if cache_bytes > 0 {
                assert!(first.block_cache_misses > before.block_cache_misses, "{first:?}");
                assert!(first.block_cache_bytes > 0, "{first:?}");
                assert_eq!(after.block_cache_misses, first.block_cache_misses, "{after:?}");
                assert!(after.block_cache_hits >= first.block_cache_hits + 10, "{after:?}");
                assert!(after.block_cache_bytes <= cache_bytes);
            } else {
                assert_eq!(
                    (after.block_cache_hits, after.block_cache_misses, after.block_cache_bytes),
                    (0, 0, 0)
                );
            }
            engine.close().await.unwrap();
        });
    }
}
