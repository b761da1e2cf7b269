//! Goal: the engine behaves like a last-write-wins map across restarts.
//!
//! Method: a seeded random sequence of put/delete/get (with some stale stamps, which both the
//! engine and the model must ignore) runs against the engine and a `BTreeMap` model; at random
//! points the engine is closed and reopened (a clean restart) or dropped without close (a
//! crash; each life runs on its own executor thread, see `model_run`). Every get and, after every reopen, every
//! key of the model is compared. Small segments make the WAL roll several times; a second
//! variant uses the smallest memtable budget so that many memtables flush to SSTables. Set
//! `KVS_MODEL_SEEDS` to run more seeds; a failure prints its seed.

mod support;

use kvs_shards::{Engine, EngineStats, Lookup, ShardOptions, Stamp, SyncMode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Clone, Debug, PartialEq)]
enum ModelEntry {
    Value(Vec<u8>, Stamp),
    Deleted(Stamp),
}

impl ModelEntry {
    fn stamp(&self) -> Stamp {
        match self {
            ModelEntry::Value(_, s) | ModelEntry::Deleted(s) => *s,
        }
    }
    fn lookup(&self) -> Lookup {
        match self {
            ModelEntry::Value(v, s) => Lookup::Found { value: v.clone(), stamp: *s },
            ModelEntry::Deleted(s) => Lookup::Deleted { stamp: *s },
        }
    }
}

async fn check_all(engine: &Engine, model: &BTreeMap<Vec<u8>, ModelEntry>, seed: u64) {
    for (k, e) in model {
        assert_eq!(engine.get(k).await.unwrap(), e.lookup(), "seed {seed} key {k:?}");
    }
    let stats = engine.stats();
    // `keys` counts the memtable only: it equals the model's keys while nothing is flushed.
    if stats.tables == 0 && stats.immutable_bytes == 0 {
        assert_eq!(stats.keys, model.len() as u64, "seed {seed}");
    }
}

/// What one life of the engine hands to the next.
struct Run {
    rng: StdRng,
    model: BTreeMap<Vec<u8>, ModelEntry>,
    hlc: u64,
    restarts: u32,
    step: u32,
}

/// Runs the seeded sequence; returns [`total_tables`]. Each life of the engine (an open until a
/// restart) runs on its own executor thread, which exits before the next life opens the files,
/// as a process would: I/O the dropped engine's cancelled tasks had in flight completes in the
/// kernel by then, never under the next life.
fn model_run(seed: u64, opts: ShardOptions) -> u64 {
    let mut run = Run {
        rng: StdRng::seed_from_u64(seed),
        model: BTreeMap::new(),
        hlc: 1_000,
        restarts: 0,
        step: 0,
    };
    loop {
        let o = opts.clone();
        let (r, stats) = support::run(move || life(seed, o, run));
        run = r;
        if let Some(stats) = stats {
            assert!(run.restarts > 0);
            assert!(stats.wal_segments >= 1, "seed {seed}: {stats:?} (restarts {})", run.restarts);
            break;
        }
    }
    let o = opts.clone();
    support::run(move || async move {
        let (engine, _) = Engine::open(o).await.unwrap();
        check_all(&engine, &run.model, seed).await;
        engine.close().await.unwrap();
    });
    total_tables(&opts)
}

/// One life: opens (checking every key after a restart), runs steps until the next restart
/// (closed or dropped) or the end (then closed; its stats returned).
async fn life(seed: u64, opts: ShardOptions, run: Run) -> (Run, Option<EngineStats>) {
    let Run { mut rng, mut model, mut hlc, mut restarts, step: first } = run;
    let (engine, report) = Engine::open(opts).await.unwrap();
    if first == 0 {
        assert_eq!(report.records, 0);
    } else {
        assert_eq!(report.torn_tail, None, "seed {seed}");
        if let Some(max) = report.max_stamp {
            assert!(max.hlc <= hlc);
        }
        check_all(&engine, &model, seed).await;
    }
    for step in first..1500 {
        let key = format!("key-{:03}", rng.gen_range(0..120)).into_bytes();
        // Mostly fresh stamps; sometimes a stale one that must be ignored.
        let stamp = if rng.gen_bool(0.1) {
            Stamp { hlc: hlc.saturating_sub(rng.gen_range(1..500)), node: rng.gen_range(0..3) }
        } else {
            hlc += 1;
            Stamp { hlc, node: rng.gen_range(0..3) }
        };
        let newer =
            |m: &BTreeMap<Vec<u8>, ModelEntry>| m.get(&key).is_none_or(|e| stamp > e.stamp());
        match rng.gen_range(0..100) {
            0..=54 => {
                let len = rng.gen_range(0..2000);
                let value: Vec<u8> = (0..len).map(|i| (i as u8) ^ (step as u8)).collect();
                engine.put(&key, &value, stamp).await.unwrap();
                if newer(&model) {
                    model.insert(key, ModelEntry::Value(value, stamp));
                }
            }
            55..=69 => {
                engine.delete(&key, stamp).await.unwrap();
                if newer(&model) {
                    model.insert(key, ModelEntry::Deleted(stamp));
                }
            }
            70..=97 => {
                let want = model.get(&key).map_or(Lookup::Missing, ModelEntry::lookup);
                assert_eq!(engine.get(&key).await.unwrap(), want, "seed {seed} step {step}");
            }
            _ => {
                restarts += 1;
                if rng.gen_bool(0.5) {
                    engine.close().await.unwrap();
                    assert!(matches!(
                        engine.put(b"x", b"y", stamp).await,
                        Err(kvs_shards::ShardError::Closed)
                    ));
                } else {
                    // Dropped without close: a crash.
                    drop(engine);
                }
                return (Run { rng, model, hlc, restarts, step: step + 1 }, None);
            }
        }
    }
    check_all(&engine, &model, seed).await;
    let stats = engine.stats();
    engine.close().await.unwrap();
    (Run { rng, model, hlc, restarts, step: 1500 }, Some(stats))
}

/// How many tables the run made at least: the greatest table id in the shard directory (ids
/// are handed out in order, and compaction merges tables away), after checking no
/// `*.sst.tmp` is left.
fn total_tables(opts: &ShardOptions) -> u64 {
    let names: Vec<String> = std::fs::read_dir(&opts.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.ends_with(".sst.tmp")), "{names:?}");
    names.iter().filter_map(|n| n.strip_suffix(".sst")?.parse::<u64>().ok()).max().unwrap_or(0)
}

fn seeds() -> Vec<u64> {
    let extra: u64 =
        std::env::var("KVS_MODEL_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    (0..2 + extra).map(|i| 0x5eed_0000 + i).collect()
}

#[test]
fn random_ops_match_a_btreemap_across_restarts() {
    for seed in seeds() {
        for sync in [SyncMode::Always, SyncMode::Periodic] {
            let dir = tempfile::tempdir().unwrap();
            let opts = support::small_opts(dir.path(), sync);
            println!("model seed {seed} {sync:?}");
            model_run(seed, opts);
        }
    }
}

/// The same run with the smallest memtable budget (64 KiB): the memtable freezes and flushes
/// to SSTables every few dozen writes, so reads, restarts and crashes all cross tables.
#[test]
fn random_ops_with_many_flushes_match_a_btreemap_across_restarts() {
    for seed in seeds() {
        for sync in [SyncMode::Always, SyncMode::Periodic] {
            let dir = tempfile::tempdir().unwrap();
            let opts = ShardOptions {
                memtable_bytes_max: kvs_shards::limits::MEMTABLE_BYTES_MIN,
                ..support::small_opts(dir.path(), sync)
            };
            println!("model (flushing) seed {seed} {sync:?}");
            let tables = model_run(seed, opts);
            assert!(tables >= 2, "seed {seed}: only {tables} tables: too few flushes");
        }
    }
}

#[test]
fn wal_rolls_and_replays_many_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = support::small_opts(dir.path(), SyncMode::Periodic);
    let path = dir.path().to_path_buf();
    let value = vec![7u8; 100_000];
    support::run(move || async move {
        let (engine, _) = Engine::open(opts.clone()).await.unwrap();
        let engine: Rc<Engine> = engine;
        // ~100 KiB values, 60 of them: 6 MiB over 2 MiB segments.
        for i in 0..60u64 {
            engine.put(format!("k{i}").as_bytes(), &value, support::stamp(i + 1)).await.unwrap();
        }
        let stats = engine.stats();
        assert!(stats.wal_segments >= 3, "{stats:?}");
        engine.close().await.unwrap();
        let on_disk = support::segments(&path).len() as u64;
        assert_eq!(on_disk, stats.wal_segments);
        let (engine, report) = Engine::open(opts).await.unwrap();
        assert_eq!(report.records, 60);
        assert_eq!(report.segments, on_disk);
        assert_eq!(report.max_stamp, Some(support::stamp(60)));
        for i in 0..60u64 {
            assert_eq!(
                engine.get(format!("k{i}").as_bytes()).await.unwrap(),
                Lookup::Found { value: value.clone(), stamp: support::stamp(i + 1) }
            );
        }
        engine.close().await.unwrap();
    });
}
