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
pub fn small_opts(dir: &Path, sync: SyncMode) -> ShardOptions {
    ShardOptions {
        dir: dir.to_path_buf(),
        sync,
        sync_period_ms: 5,
        wal_segment_bytes: kvs_shards::limits::WAL_SEGMENT_BYTES_MIN,
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
