//! Goal: through flushes, compactions and restarts, the engine answers every read like a
//! last-write-wins map.
//!
//! Method: proptest generates sequences of put, delete (some with stale stamps, which both
//! sides must ignore), get, flush, compact, clean restart and crash restart (drop without
//! close) over a small key space; the engine runs them with a 64 KiB memtable, tiny level
//! targets and automatic compaction, so flushes, level-0 → 1 and deeper compactions happen
//! inside a case; a `BTreeMap` model runs them too. Every get, and every key after every
//! restart and at the end, must agree. Two properties:
//! - `model_with_automatic_compaction`: tombstones are never collected (infinite grace), so
//!   the model is exact whatever compaction ran when.
//! - `model_with_tombstone_collection`: grace 0 and only manual compactions, so the model
//!   knows when tombstones go: after `compact`, deleted keys read as missing, and a later
//!   stale put may bring a key back (what collecting a tombstone means).
//!
//! `PROPTEST_CASES` sets the number of cases (default 24 each, sized for CI).

mod support;

use kvs_shards::compaction::CompactionOptions;
use kvs_shards::{Engine, EngineStats, Lookup, ShardOptions, Stamp, SyncMode};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug)]
enum Op {
    /// Put key `k` with a value of `len` bytes; `stale` writes 1000 below the clock.
    Put {
        k: u8,
        len: u16,
        stale: bool,
    },
    Delete {
        k: u8,
        stale: bool,
    },
    Get {
        k: u8,
    },
    Flush,
    Compact,
    Restart,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0u8..KEYS, 1u16..2048, prop::bool::weighted(0.1))
            .prop_map(|(k, len, stale)| Op::Put { k, len, stale }),
        8 => (0u8..KEYS, prop::bool::weighted(0.1)).prop_map(|(k, stale)| Op::Delete { k, stale }),
        12 => (0u8..KEYS).prop_map(|k| Op::Get { k }),
        2 => Just(Op::Flush),
        2 => Just(Op::Compact),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum ModelEntry {
    Value(Vec<u8>, Stamp),
    Deleted(Stamp),
}

impl ModelEntry {
    fn lookup(&self) -> Lookup {
        match self {
            ModelEntry::Value(v, s) => Lookup::Found { value: v.clone(), stamp: *s },
            ModelEntry::Deleted(s) => Lookup::Deleted { stamp: *s },
        }
    }
    /// Last-write-wins as the engine orders versions: stamp, then tombstone over value, then
    /// the greater value.
    fn supersedes(&self, other: &ModelEntry) -> bool {
        let rank = |e: &ModelEntry| match e {
            ModelEntry::Value(v, s) => (*s, 0u8, v.clone()),
            ModelEntry::Deleted(s) => (*s, 1u8, Vec::new()),
        };
        rank(self) > rank(other)
    }
}

/// Keys in play: enough live data (up to ~300 KiB) to fill levels 1 and 2 below.
const KEYS: u8 = 160;

fn key(k: u8) -> Vec<u8> {
    format!("key-{k:03}").into_bytes()
}

fn opts(dir: &Path, collect_tombstones: bool) -> ShardOptions {
    ShardOptions {
        memtable_bytes_max: kvs_shards::limits::MEMTABLE_BYTES_MIN,
        block_cache_bytes: 256 * 1024,
        compaction: CompactionOptions {
            auto: !collect_tombstones,
            level0_file_trigger: 2,
            level0_stop_writes_trigger: 8,
            level_size_base_bytes: 64 * 1024,
            level_size_multiplier: 2,
            max_levels: 4,
            output_table_bytes: 64 * 1024,
            rate_bytes_per_s: 0,
            gc_grace_ms: if collect_tombstones { 0 } else { u64::MAX },
            ..CompactionOptions::default()
        },
        ..support::small_opts(dir, SyncMode::Always)
    }
}

type Model = BTreeMap<Vec<u8>, ModelEntry>;

/// How one life of the engine (one open) ended.
enum End {
    /// `Restart` at this step: closed cleanly.
    Restart(usize),
    /// `Crash` at this step: dropped without close.
    Crash(usize),
    /// Every op ran; the engine's stats after its compactions caught up.
    Done(Box<EngineStats>),
}

/// Runs `ops` against a fresh engine and the model; `Err` describes the first disagreement.
///
/// Each life of the engine (from an open to a restart or crash) runs on its own executor
/// thread, which exits before the next life opens the files, like a process. A crash is
/// faithful only that way: I/O that a dropped engine's cancelled tasks had already submitted
/// (a segment unlink, a manifest rename) completes in the kernel before the thread's exit
/// finishes, never under the next life.
fn run_case(ops: Vec<Op>, collect_tombstones: bool) -> Result<EngineStats, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let opts = opts(dir.path(), collect_tombstones);
    let mut model = Model::new();
    let mut clock = 10_000u64;
    let mut next = 0usize;
    let mut after = String::new();
    loop {
        let life_ops: Vec<(usize, Op)> = ops.iter().cloned().enumerate().skip(next).collect();
        let (o, m) = (opts.clone(), std::mem::take(&mut model));
        let label = std::mem::take(&mut after);
        let (end, m, c) =
            support::run(move || life(o, life_ops, m, clock, collect_tombstones, label))?;
        model = m;
        clock = c;
        match end {
            End::Restart(step) => {
                (next, after) = (step + 1, format!("step {step} (after restart)"))
            }
            End::Crash(step) => (next, after) = (step + 1, format!("step {step} (after crash)")),
            End::Done(stats) => {
                let o = opts.clone();
                support::run(move || async move {
                    let engine = Engine::open(o).await.map_err(|e| e.to_string())?.0;
                    check_all(&engine, &model, "after the final reopen").await?;
                    engine.close().await.map_err(|e| e.to_string())
                })?;
                return Ok(*stats);
            }
        }
    }
}

/// One life: opens the engine (checking every key against the model when it is a reopen,
/// `after` names it), runs `ops` until a restart, a crash or the end.
async fn life(
    opts: ShardOptions,
    ops: Vec<(usize, Op)>,
    mut model: Model,
    mut clock: u64,
    collect_tombstones: bool,
    after: String,
) -> Result<(End, Model, u64), String> {
    let engine = Engine::open(opts).await.map_err(|e| format!("{after}: open: {e}"))?.0;
    if !after.is_empty() {
        check_all(&engine, &model, &after).await?;
    }
    for (step, op) in ops {
        let at = |what: &str| format!("step {step} ({what})");
        match op {
            Op::Put { k, len, stale } => {
                clock += 1;
                let stamp = support::stamp(if stale { clock - 1000 } else { clock });
                let value = support::value_of(clock, usize::from(len));
                engine.put(&key(k), &value, stamp).await.map_err(|e| at(&e.to_string()))?;
                apply(&mut model, key(k), ModelEntry::Value(value, stamp));
            }
            Op::Delete { k, stale } => {
                clock += 1;
                let stamp = support::stamp(if stale { clock - 1000 } else { clock });
                engine.delete(&key(k), stamp).await.map_err(|e| at(&e.to_string()))?;
                apply(&mut model, key(k), ModelEntry::Deleted(stamp));
            }
            Op::Get { k } => compare(&engine, &model, &key(k), &at("get")).await?,
            Op::Flush => engine.flush().await.map_err(|e| at(&format!("flush: {e}")))?,
            Op::Compact => {
                engine.compact().await.map_err(|e| at(&format!("compact: {e}")))?;
                if collect_tombstones {
                    // Grace 0, everything merged bottommost: every tombstone is gone.
                    model.retain(|_, e| matches!(e, ModelEntry::Value(..)));
                }
                let s = engine.stats();
                if s.tables > 0 && s.levels.first().is_some_and(|l| l.tables > 0) {
                    return Err(at(&format!("level 0 not empty after compact: {s:?}")));
                }
            }
            Op::Restart => {
                engine.close().await.map_err(|e| at(&e.to_string()))?;
                return Ok((End::Restart(step), model, clock));
            }
            Op::Crash => {
                drop(engine);
                return Ok((End::Crash(step), model, clock));
            }
        }
    }
    engine.wait_for_compactions().await.map_err(|e| e.to_string())?;
    let stats = engine.stats();
    check_all(&engine, &model, "at the end").await?;
    engine.close().await.map_err(|e| e.to_string())?;
    Ok((End::Done(Box::new(stats)), model, clock))
}

fn apply(model: &mut Model, k: Vec<u8>, e: ModelEntry) {
    match model.get(&k) {
        Some(old) if !e.supersedes(old) => {}
        _ => {
            model.insert(k, e);
        }
    }
}

async fn compare(engine: &Engine, model: &Model, k: &[u8], at: &str) -> Result<(), String> {
    let got = engine.get(k).await.map_err(|e| format!("{at}: get: {e}"))?;
    let want = model.get(k).map_or(Lookup::Missing, ModelEntry::lookup);
    if got != want {
        let key = String::from_utf8_lossy(k);
        return Err(format!("{at}: {key}: engine {got:?}, model {want:?}"));
    }
    Ok(())
}

async fn check_all(engine: &Engine, model: &Model, at: &str) -> Result<(), String> {
    for k in 0..KEYS {
        compare(engine, model, &key(k), at).await?;
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24)
}

/// The configuration above does exercise compaction: a plain sequence of overwrites reaches
/// level 2 through automatic compactions (guards the property against a setting that would
/// make compaction never run).
#[test]
fn automatic_compaction_reaches_level_2_in_this_configuration() {
    let ops: Vec<Op> = (0..1500u32)
        .map(|i| Op::Put {
            k: (i.wrapping_mul(37) % u32::from(KEYS)) as u8,
            len: 1500,
            stale: false,
        })
        .collect();
    let stats = run_case(ops, false).unwrap();
    assert!(stats.compactions >= 3, "{stats:?}");
    assert!(stats.levels.len() >= 3, "nothing reached level 2: {stats:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn model_with_automatic_compaction(ops in prop::collection::vec(op(), 1..600)) {
        run_case(ops, false).map(drop).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn model_with_tombstone_collection(ops in prop::collection::vec(op(), 1..600)) {
        run_case(ops, true).map(drop).map_err(TestCaseError::fail)?;
    }
}
