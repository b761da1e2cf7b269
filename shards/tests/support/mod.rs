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

/// The environment variable that makes a test binary run one crash round in a child process
/// (see [`crash_in_child`]).
pub const CRASH_ROUND_ENV: &str = "KVS_CRASH_ROUND";

/// In a child started by [`crash_in_child`]: the round to run.
#[allow(dead_code)]
pub fn crash_round() -> Option<u64> {
    std::env::var(CRASH_ROUND_ENV).ok().and_then(|v| v.parse().ok())
}

/// Ends a crash round's child at once, as a crash would: nothing is dropped or closed, and the
/// kernel ends the I/O still in flight with the process. Dropping an executor with I/O in
/// flight inside the test process instead can let a direct read land in memory the allocator
/// has already handed out again (heap corruption). `report` goes to the parent.
#[allow(dead_code)]
pub fn crash_now(report: &str) -> ! {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\nKVS-CRASH-REPORT {report}");
    let _ = out.flush();
    std::process::exit(0)
}

/// Runs round `round` of the test `test` (its full name as `cargo test` lists it) in a child
/// process of this test binary and returns the report it gave [`crash_now`].
#[allow(dead_code)]
pub fn crash_in_child(test: &str, round: u64) -> String {
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CRASH_ROUND_ENV, round.to_string())
        .output()
        .expect("run the crash round");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split("KVS-CRASH-REPORT ").nth(1))
        .map(|r| r.trim().to_string())
        .unwrap_or_else(|| {
            panic!(
                "crash round {round} gave no report (status {:?}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}
