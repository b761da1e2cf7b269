//! Helpers shared by the engine tests: run a future on a fresh glommio executor, and small
//! option builders.
#![allow(dead_code)]

use kvs_shards::{ShardOptions, Stamp, SyncMode};
use std::future::Future;
use std::path::{Path, PathBuf};

/// Runs `f` on its own glommio executor thread and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// Options for a shard in `dir` with the smallest segments (2 MiB), to exercise rolling.
/// Tombstones are never collected (infinite `gc_grace_ms`): the tests' stamps are small
/// numbers, i.e. from 1970, so any finite grace would let a bottommost compaction drop them
/// (tests of collection set their own grace).
pub fn small_opts(dir: &Path, sync: SyncMode) -> ShardOptions {
    ShardOptions {
        dir: dir.to_path_buf(),
        sync,
        sync_period_ms: 5,
        wal_segment_bytes: kvs_shards::limits::WAL_SEGMENT_BYTES_MIN,
        compaction: kvs_shards::compaction::CompactionOptions {
            gc_grace_ms: u64::MAX,
            ..Default::default()
        },
        ..ShardOptions::default()
    }
}

/// The WAL segment files of the shard in `dir`, sorted by id.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .expect("read wal dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

pub fn stamp(hlc: u64) -> Stamp {
    Stamp { hlc, node: 1 }
}

/// A deterministic value of `len` bytes for write number `i`.
pub fn value_of(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as u8).wrapping_mul(31) ^ (j as u8)).collect()
}

/// Waits until `engine` committed at least `n` flushes and holds no immutable memtable.
pub async fn wait_flushed(engine: &kvs_shards::Engine, n: u64) {
    for _ in 0..10_000 {
        let s = engine.stats();
        if s.flushes >= n && s.immutable_bytes == 0 {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("flush did not finish: {:?}", engine.stats());
}

/// Writes 1 KiB values to `keys` fresh keys, with increasing stamps from `first`, into `e`.
pub async fn fill(e: &kvs_shards::Engine, prefix: &str, keys: u64, first: u64) {
    for i in 0..keys {
        e.put(format!("{prefix}{i:04}").as_bytes(), &value_of(i, 1024), stamp(first + i))
            .await
            .expect("put");
    }
}
