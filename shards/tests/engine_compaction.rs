//! Goal: background compaction keeps the LSM tree in shape without losing or resurrecting
//! anything, survives crashes at any moment, and bounds level 0 under write pressure.
//!
//! Method: the smallest memtable (64 KiB) with ~1 KiB values and tiny level targets, so a few
//! thousand writes flush dozens of tables and compact them through several levels. Checked
//! against a model map and against the manifest on disk: every key reads back; levels 1+
//! hold non-overlapping tables; the files on disk are exactly the listed tables; tombstones
//! survive until their grace has passed and the merge is bottommost; a crash (drop without
//! close) while rate-limited compactions run leaves a consistent directory; writes wait at
//! the level-0 stop trigger and continue.

mod support;

use kvs_shards::compaction::CompactionOptions;
use kvs_shards::manifest::Manifest;
use kvs_shards::{Engine, Lookup, ShardOptions, SyncMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use support::{stamp, value_of};

fn opts(dir: &Path, compaction: CompactionOptions) -> ShardOptions {
    ShardOptions {
        memtable_bytes_max: kvs_shards::limits::MEMTABLE_BYTES_MIN,
        block_cache_bytes: 512 * 1024,
        compaction,
        ..support::small_opts(dir, SyncMode::Always)
    }
}

fn small_levels() -> CompactionOptions {
    CompactionOptions {
        level0_file_trigger: 2,
        level0_stop_writes_trigger: 12,
        level_size_base_bytes: 128 * 1024,
        level_size_multiplier: 4,
        max_levels: 5,
        output_table_bytes: 64 * 1024,
        rate_bytes_per_s: 0,
        // The tests' stamps are from 1970: with a finite grace, bottommost merges would drop
        // tombstones (tested on its own below).
        gc_grace_ms: u64::MAX,
        ..CompactionOptions::default()
    }
}

/// Checks the directory against its manifest: levels 1+ do not overlap, every listed table
/// has its file, and no other table file (or temporary) is there. Returns (tables per level,
/// entries over all tables).
async fn check_dir(dir: &Path) -> (Vec<usize>, u64) {
    let m = Manifest::open(dir).await.unwrap();
    let levels = m.state().levels();
    for (level, tables) in levels.iter().enumerate().skip(1) {
        for pair in tables.windows(2) {
            assert!(
                pair[0].max_key < pair[1].min_key,
                "level {level} overlaps: {:?} and {:?}",
                pair[0].id,
                pair[1].id
            );
        }
    }
    let listed: BTreeSet<String> =
        m.state().tables().map(|t| format!("{:020}.sst", t.id.0)).collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".sst"))
        .collect();
    assert_eq!(on_disk, listed, "table files on disk differ from the manifest");
    let entries = m.state().tables().map(|t| t.entries).sum();
    (levels.iter().map(Vec::len).collect(), entries)
}

async fn check_model(engine: &Engine, model: &BTreeMap<Vec<u8>, Lookup>) {
    for (k, want) in model {
        let got = engine.get(k).await.unwrap();
        assert_eq!(&got, want, "key {}", String::from_utf8_lossy(k));
    }
}

#[test]
fn automatic_compaction_moves_data_down_the_levels_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), small_levels());
    let path = dir.path().to_path_buf();
    support::run(move || async move {
        let (engine, _) = Engine::open(o.clone()).await.unwrap();
        let mut model = BTreeMap::new();
        let mut rng = StdRng::seed_from_u64(7);
        for i in 0..4000u64 {
            let k = format!("key-{:05}", rng.gen_range(0..1500u32)).into_bytes();
            let v = value_of(i, 1000);
            engine.put(&k, &v, stamp(i + 1)).await.unwrap();
            model.insert(k, Lookup::Found { value: v, stamp: stamp(i + 1) });
        }
        engine.wait_for_compactions().await.unwrap();
        let s = engine.stats();
        assert!(s.compactions >= 5, "{s:?}");
        assert!(s.levels.len() >= 3, "data should reach level 2: {s:?}");
        assert!(s.levels[0].tables < 2, "level 0 stays below its trigger once idle: {s:?}");
        assert_eq!(s.compaction_backlog_bytes, 0, "{s:?}");
        assert!(s.compaction_bytes_written > 0 && s.compaction_bytes_read > 0, "{s:?}");
        let wa = s.write_amplification().unwrap();
        assert!(wa > 1.0, "WAL alone writes every byte once: {wa}");
        check_model(&engine, &model).await;
        engine.close().await.unwrap();
        let (levels, entries) = check_dir(&path).await;
        assert!(levels.iter().skip(1).sum::<usize>() >= 2, "{levels:?}");
        assert!(entries >= model.len() as u64 - 200, "{entries} entries for {} keys", model.len());
        let (engine, _) = Engine::open(o).await.unwrap();
        check_model(&engine, &model).await;
        engine.close().await.unwrap();
    });
}

#[test]
fn tombstones_go_only_past_their_grace_in_a_bottommost_merge() {
    let dir = tempfile::tempdir().unwrap();
    let keep = CompactionOptions { auto: false, ..small_levels() };
    let path = dir.path().to_path_buf();
    let o = opts(dir.path(), keep);
    support::run(move || async move {
        let (engine, _) = Engine::open(o.clone()).await.unwrap();
        for i in 0..300u64 {
            engine
                .put(format!("k{i:04}").as_bytes(), &value_of(i, 500), stamp(i + 1))
                .await
                .unwrap();
        }
        for i in (0..300u64).step_by(2) {
            engine.delete(format!("k{i:04}").as_bytes(), stamp(1000 + i)).await.unwrap();
        }
        engine.compact().await.unwrap();
        // Infinite grace: one entry per key, the deleted ones as tombstones.
        assert_eq!(engine.get(b"k0000").await.unwrap(), Lookup::Deleted { stamp: stamp(1000) });
        engine.close().await.unwrap();
        let (levels, entries) = check_dir(&path).await;
        assert_eq!(entries, 300, "{levels:?}");
        assert_eq!(levels[0], 0, "a manual compaction leaves nothing in level 0");

        // Grace 0 (the stamps are from 1970): the bottommost merge drops the tombstones.
        let collect = ShardOptions {
            compaction: CompactionOptions { gc_grace_ms: 0, ..o.compaction },
            ..o.clone()
        };
        let (engine, _) = Engine::open(collect).await.unwrap();
        engine.compact().await.unwrap();
        assert_eq!(engine.get(b"k0000").await.unwrap(), Lookup::Missing);
        assert_eq!(
            engine.get(b"k0001").await.unwrap(),
            Lookup::Found { value: value_of(1, 500), stamp: stamp(2) }
        );
        engine.close().await.unwrap();
        let (_, entries) = check_dir(&path).await;
        assert_eq!(entries, 150);
    });
}

/// The writes of crash round `round` (deterministic, so the parent knows what the child wrote:
/// every one is acknowledged before the crash), and how long to let background work run after
/// them before the crash.
fn crash_round_writes(round: u64) -> (Vec<(Vec<u8>, Lookup)>, u64) {
    let mut rng = StdRng::seed_from_u64(11 + round);
    let writes = (0..300u64)
        .map(|i| {
            let n = round * 300 + i + 1;
            let k = format!("key-{:05}", rng.gen_range(0..800u32)).into_bytes();
            if rng.gen_ratio(1, 10) {
                (k, Lookup::Deleted { stamp: stamp(n) })
            } else {
                (k, Lookup::Found { value: value_of(n, 900), stamp: stamp(n) })
            }
        })
        .collect();
    (writes, rng.gen_range(0..150u64))
}

const CRASH_TEST: &str = "a_crash_during_compaction_leaves_a_consistent_directory";
const CRASH_DIR_ENV: &str = "KVS_CRASH_DIR";

#[test]
fn a_crash_during_compaction_leaves_a_consistent_directory() {
    // Paced to 2 MiB/s so that compactions are in progress when the engine crashes.
    let slow = CompactionOptions { rate_bytes_per_s: 2 * 1024 * 1024, ..small_levels() };
    if let Some(round) = support::crash_round() {
        // The child: one round's writes, then a crash somewhere in the next 0-150 ms of
        // background work, by process exit.
        let dir = std::path::PathBuf::from(std::env::var(CRASH_DIR_ENV).expect("crash dir"));
        support::run(move || async move {
            let (engine, _) = Engine::open(opts(&dir, slow)).await.unwrap();
            let (writes, pause) = crash_round_writes(round);
            for (k, v) in writes {
                match v {
                    Lookup::Found { value, stamp } => engine.put(&k, &value, stamp).await.unwrap(),
                    Lookup::Deleted { stamp } => engine.delete(&k, stamp).await.unwrap(),
                    Lookup::Missing => unreachable!(),
                }
            }
            glommio::timer::sleep(std::time::Duration::from_millis(pause)).await;
            let hit = engine.stats().compaction_running;
            support::crash_now(if hit { "compacting" } else { "idle" })
        });
        unreachable!("the crash round exits");
    }
    let dir = tempfile::tempdir().unwrap();
    let o = opts(dir.path(), slow);
    let path = dir.path().to_path_buf();
    let mut model = BTreeMap::new();
    let mut crashed_while_compacting = 0;
    // Each round crashes a child process (see support::crash_now); between rounds this
    // process opens what it left, checks every acknowledged write, and closes cleanly.
    for round in 0..12u64 {
        std::env::set_var(CRASH_DIR_ENV, &path);
        let report = support::crash_in_child(CRASH_TEST, round);
        crashed_while_compacting += u32::from(report == "compacting");
        model.extend(crash_round_writes(round).0);
        let (o, m) = (o.clone(), model.clone());
        support::run(move || async move {
            let (engine, _) = Engine::open(o).await.unwrap();
            check_model(&engine, &m).await;
            engine.close().await.unwrap();
        });
    }
    assert!(
        crashed_while_compacting >= 3,
        "only {crashed_while_compacting} crashes hit a compaction"
    );
    support::run(move || async move {
        let (engine, _) = Engine::open(o.clone()).await.unwrap();
        check_model(&engine, &model).await;
        engine.wait_for_compactions().await.unwrap();
        check_model(&engine, &model).await;
        engine.close().await.unwrap();
        check_dir(&path).await;
    });
}

#[test]
fn writes_wait_at_the_level0_stop_trigger_and_then_continue() {
    let dir = tempfile::tempdir().unwrap();
    let stall = CompactionOptions {
        level0_file_trigger: 2,
        level0_stop_writes_trigger: 3,
        rate_bytes_per_s: 1024 * 1024,
        ..small_levels()
    };
    let o = opts(dir.path(), stall);
    support::run(move || async move {
        let (engine, _) = Engine::open(o).await.unwrap();
        let engine = Rc::new(engine);
        let mut max_l0 = 0;
        for i in 0..1500u64 {
            let k = format!("key-{i:05}");
            engine.put(k.as_bytes(), &value_of(i, 1000), stamp(i + 1)).await.unwrap();
            max_l0 = max_l0.max(engine.stats().levels[0].tables);
        }
        // A flush already running when the trigger is reached may add one more table.
        assert!(max_l0 <= 4, "level 0 reached {max_l0} tables");
        // Writes at memory speed against compaction paced to 1 MiB/s must have waited.
        assert!(engine.stats().write_stalls > 0, "{:?}", engine.stats());
        engine.wait_for_compactions().await.unwrap();
        for i in (0..1500u64).step_by(7) {
            let k = format!("key-{i:05}");
            assert_eq!(
                engine.get(k.as_bytes()).await.unwrap(),
                Lookup::Found { value: value_of(i, 1000), stamp: stamp(i + 1) }
            );
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn size_tiered_compaction_merges_similar_tables_in_level_0_and_loses_nothing() {
    use kvs_shards::compaction::{CompactionStyle, SizeTieredOptions};
    let dir = tempfile::tempdir().unwrap();
    let tiered = CompactionOptions {
        style: CompactionStyle::SizeTiered(SizeTieredOptions {
            min_threshold: 3,
            ..SizeTieredOptions::default()
        }),
        ..small_levels()
    };
    let o = opts(dir.path(), tiered);
    let path = dir.path().to_path_buf();
    support::run(move || async move {
        let (engine, _) = Engine::open(o.clone()).await.unwrap();
        let mut model = BTreeMap::new();
        let mut rng = StdRng::seed_from_u64(5);
        for i in 0..3000u64 {
            let k = format!("key-{:05}", rng.gen_range(0..1200u32)).into_bytes();
            let v = value_of(i, 1000);
            engine.put(&k, &v, stamp(i + 1)).await.unwrap();
            model.insert(k, Lookup::Found { value: v, stamp: stamp(i + 1) });
        }
        engine.wait_for_compactions().await.unwrap();
        let s = engine.stats();
        assert!(s.compactions >= 3, "{s:?}");
        assert_eq!(s.levels.len(), 1, "size-tiered keeps every table in level 0: {s:?}");
        assert!(
            s.tables < s.flushes,
            "compaction should have merged tables: {} tables after {} flushes",
            s.tables,
            s.flushes
        );
        check_model(&engine, &model).await;
        engine.close().await.unwrap();
        check_dir(&path).await;
        let (engine, _) = Engine::open(o).await.unwrap();
        check_model(&engine, &model).await;
        engine.close().await.unwrap();
    });
}

#[test]
fn expired_values_become_tombstones_and_go_after_their_grace() {
    let dir = tempfile::tempdir().unwrap();
    let clock = kvs_shards::Clock::manual(1_000_000);
    let keep = CompactionOptions { auto: false, gc_grace_ms: 60_000, ..small_levels() };
    let o = ShardOptions { clock: clock.clone(), ..opts(dir.path(), keep) };
    let path = dir.path().to_path_buf();
    support::run(move || async move {
        let (engine, _) = Engine::open(o.clone()).await.unwrap();
        engine.put(b"old", b"v0", stamp(1)).await.unwrap();
        engine.flush().await.unwrap();
        // A newer, expiring value shadows the old one in another table.
        engine.put_with_expiry(b"old", b"v1", stamp(2), Some(1_000_500)).await.unwrap();
        engine.put(b"keep", b"k", stamp(3)).await.unwrap();
        engine.compact().await.unwrap();
        assert_eq!(
            engine.get(b"old").await.unwrap(),
            Lookup::Found { value: b"v1".to_vec(), stamp: stamp(2) }
        );
        clock.set_ms(1_001_000);
        assert_eq!(engine.get(b"old").await.unwrap(), Lookup::Deleted { stamp: stamp(2) });
        // Expired but within grace: compaction keeps a tombstone (it still shadows "v0" for
        // replicas that hold it), not the value.
        engine.compact().await.unwrap();
        assert_eq!(engine.get(b"old").await.unwrap(), Lookup::Deleted { stamp: stamp(2) });
        engine.close().await.unwrap();
        let (_, entries) = check_dir(&path).await;
        assert_eq!(entries, 2);
        // Past the grace: the bottommost merge drops it.
        clock.set_ms(1_000_500 + 60_001);
        let (engine, _) = Engine::open(o.clone()).await.unwrap();
        engine.compact().await.unwrap();
        assert_eq!(engine.get(b"old").await.unwrap(), Lookup::Missing);
        assert_eq!(
            engine.get(b"keep").await.unwrap(),
            Lookup::Found { value: b"k".to_vec(), stamp: stamp(3) }
        );
        engine.close().await.unwrap();
        let (_, entries) = check_dir(&path).await;
        assert_eq!(entries, 1);
    });
}
