//! Goal: `Engine::scan_page` streams the whole key space in pages that, chained by `next`,
//! return the newest stored version of every key exactly once, in key order, whatever the
//! page limits, wherever the versions live (memtable, immutable memtable, tables on several
//! levels), and while writes, flushes and compactions go on.
//!
//! Method:
//! - `scan_matches_the_model`: proptest runs puts (some with a past or future expiry, some
//!   with stale stamps), deletes, flushes, compactions and full scans over a small key space
//!   with a 64 KiB memtable and tiny level targets; a `BTreeMap` model keeps the newest
//!   version per key. Each scan uses random small `max_keys`/`max_bytes` and keeps keys whose
//!   first byte is even; the concatenated pages must equal the filtered model. Stamps are
//!   unique (stale writes carry another node id), so the model's "newest" is the greatest
//!   stamp. A compaction turns an expired newest value into a tombstone at its stamp (merge
//!   rule 3), so an expired value in the model also matches that tombstone.
//! - `scan_during_writes`: a writer task keeps updating, deleting and adding keys (driving
//!   flushes and automatic compactions) while a scan pages through; every key written before
//!   the scan must appear once with a stamp at least as new.
//! - Edge cases: an empty engine, `after` at or past the last key, a value larger than
//!   `max_bytes`, limits of 0 (clamped), a closed engine, a damaged table, the reader's
//!   `iter_after` against a filtered full iteration, and an unlinked table still read through
//!   a held reader.
//!
//! `PROPTEST_CASES` sets the number of model cases (default 32).

mod support;

use kvs_shards::compaction::CompactionOptions;
use kvs_shards::memtable::Entry;
use kvs_shards::sstable::{
    SstEntry, SstValue, SstableBuilder, SstableOptions, SstableReader, TableId,
};
use kvs_shards::{Clock, Engine, ScanPage, ShardError, ShardOptions, Stamp, SyncMode};
use proptest::prelude::*;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

/// An arbitrary wall-clock "now" for the manual clock, 2023-11-14 in ms.
const T0: u64 = 1_700_000_000_000;

/// Keys in play in the model test.
const KEYS: u8 = 48;

/// Key `k`: first bytes spread over both parities, some longer than the memtable's inline
/// key size (22 bytes), some prefixes of others.
fn key(k: u8) -> Vec<u8> {
    let mut key = vec![b'a' + k % 7];
    key.extend_from_slice(format!("{k:02}").as_bytes());
    if k.is_multiple_of(5) {
        key.extend(std::iter::repeat_n(b'x', 24));
    }
    if k % 11 == 3 {
        key.truncate(2);
    }
    key
}

fn keep_even(key: &[u8]) -> bool {
    key.first().is_some_and(|b| b % 2 == 0)
}

fn keep_all(_: &[u8]) -> bool {
    true
}

fn scan_opts(dir: &Path, clock: &Clock, auto_compaction: bool) -> ShardOptions {
    ShardOptions {
        memtable_bytes_max: kvs_shards::limits::MEMTABLE_BYTES_MIN,
        block_cache_bytes: 64 * 1024,
        clock: clock.clone(),
        compaction: CompactionOptions {
            auto: auto_compaction,
            level0_file_trigger: 2,
            level0_stop_writes_trigger: 8,
            level_size_base_bytes: 64 * 1024,
            level_size_multiplier: 2,
            max_levels: 4,
            output_table_bytes: 64 * 1024,
            rate_bytes_per_s: 0,
            gc_grace_ms: u64::MAX,
            ..CompactionOptions::default()
        },
        ..support::small_opts(dir, SyncMode::Periodic)
    }
}

/// Pages through the whole key space from `after`; checks each page's own promises (keys in
/// order, inside `(after, next]`, no more kept than examined, progress) and returns the
/// entries and the number of pages. `limits` gives `(max_keys, max_bytes)` per page, cycled.
async fn scan_all(
    engine: &Engine,
    keep: &dyn Fn(&[u8]) -> bool,
    limits: &[(usize, usize)],
) -> Result<(Vec<(Vec<u8>, Entry)>, u64), String> {
    let mut out: Vec<(Vec<u8>, Entry)> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    let mut pages = 0u64;
    loop {
        let (max_keys, max_bytes) = limits[pages as usize % limits.len()];
        let page: ScanPage = engine
            .scan_page(after.as_deref(), keep, max_keys, max_bytes)
            .await
            .map_err(|e| format!("page {pages}: {e}"))?;
        pages += 1;
        if (page.entries.len() as u64) > page.examined {
            return Err(format!("page {pages}: more entries than examined: {page:?}"));
        }
        for (k, e) in &page.entries {
            let prev = out.last().map(|(p, _)| p.as_slice()).or(after.as_deref());
            if prev.is_some_and(|p| k.as_slice() <= p) {
                return Err(format!("page {pages}: key {k:?} not after {prev:?}"));
            }
            if page.next.as_ref().is_some_and(|n| k > n) {
                return Err(format!("page {pages}: key {k:?} past next {:?}", page.next));
            }
            if !keep(k) {
                return Err(format!("page {pages}: key {k:?} not kept"));
            }
            out.push((k.clone(), e.clone()));
        }
        match page.next {
            None => return Ok((out, pages)),
            Some(next) => {
                if page.examined == 0 {
                    return Err(format!("page {pages}: no progress before {next:?}"));
                }
                if after.as_ref().is_some_and(|a| next <= *a) {
                    return Err(format!("page {pages}: next {next:?} not after {after:?}"));
                }
                after = Some(next);
            }
        }
        if pages > 100_000 {
            return Err("the scan does not end".into());
        }
    }
}

/// Whether the engine's `got` is what the model's `want` may be stored as: the same entry, or
/// for a value expired at `now_ms` the tombstone a compaction writes for it.
fn stored_as(want: &Entry, got: &Entry, now_ms: u64) -> bool {
    want == got || (want.is_expired(now_ms) && *got == Entry::Tombstone { stamp: want.stamp() })
}

// ---------------------------------------------------------------------------------------
// Model test.

#[derive(Clone, Debug)]
enum Expiry {
    Never,
    Past,
    Future,
}

#[derive(Clone, Debug)]
enum Op {
    /// Put key `k` with `len` bytes; `stale` writes 500 below the clock (as node 2).
    Put {
        k: u8,
        len: u16,
        expiry: Expiry,
        stale: bool,
    },
    Delete {
        k: u8,
        stale: bool,
    },
    Flush,
    Compact,
    /// A full scan with these page limits, cycled.
    Scan {
        limits: Vec<(usize, usize)>,
    },
}

fn limits() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((0usize..6, prop_oneof![1usize..64, 64usize..4096]), 1..5)
}

fn op() -> impl Strategy<Value = Op> {
    let expiry =
        prop_oneof![6 => Just(Expiry::Never), 2 => Just(Expiry::Past), 2 => Just(Expiry::Future)];
    prop_oneof![
        30 => (0u8..KEYS, 0u16..1500, expiry, prop::bool::weighted(0.15))
            .prop_map(|(k, len, expiry, stale)| Op::Put { k, len, expiry, stale }),
        8 => (0u8..KEYS, prop::bool::weighted(0.15)).prop_map(|(k, stale)| Op::Delete { k, stale }),
        2 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => limits().prop_map(|limits| Op::Scan { limits }),
    ]
}

type Model = BTreeMap<Vec<u8>, Entry>;

/// Compares a full scan (kept by `keep_even`) with the model.
async fn check_scan(
    engine: &Engine,
    model: &Model,
    limits: &[(usize, usize)],
    at: &str,
) -> Result<(), String> {
    let (got, pages) =
        scan_all(engine, &keep_even, limits).await.map_err(|e| format!("{at}: {e}"))?;
    let want: Vec<(&Vec<u8>, &Entry)> = model.iter().filter(|(k, _)| keep_even(k)).collect();
    let keys_got: Vec<&Vec<u8>> = got.iter().map(|(k, _)| k).collect();
    let keys_want: Vec<&Vec<u8>> = want.iter().map(|(k, _)| *k).collect();
    if keys_got != keys_want {
        return Err(format!("{at}: keys differ: got {keys_got:?}, want {keys_want:?}"));
    }
    for ((k, g), (_, w)) in got.iter().zip(&want) {
        if !stored_as(w, g, T0) {
            return Err(format!("{at}: key {k:?}: got {g:?}, want {w:?}"));
        }
    }
    // Each page but the last examines at least one key of the model.
    if pages > model.len() as u64 + 1 {
        return Err(format!("{at}: {pages} pages for {} keys", model.len()));
    }
    Ok(())
}

fn run_model_case(ops: Vec<Op>, final_limits: Vec<(usize, usize)>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let clock = Clock::manual(T0);
    let opts = scan_opts(dir.path(), &clock, true);
    support::run(move || async move {
        let engine = Engine::open(opts).await.map_err(|e| e.to_string())?.0;
        let mut model = Model::new();
        let mut hlc = 10_000u64;
        for (step, op) in ops.into_iter().enumerate() {
            let at = format!("step {step} ({op:?})");
            match op {
                Op::Put { k, len, expiry, stale } => {
                    hlc += 1;
                    let stamp = if stale {
                        Stamp { hlc: hlc - 500, node: 2 }
                    } else {
                        Stamp { hlc, node: 1 }
                    };
                    let expires_at_ms = match expiry {
                        Expiry::Never => None,
                        Expiry::Past => Some(T0 - 1),
                        Expiry::Future => Some(T0 + 1_000_000_000),
                    };
                    let value = support::value_of(hlc, usize::from(len));
                    engine
                        .put_with_expiry(&key(k), &value, stamp, expires_at_ms)
                        .await
                        .map_err(|e| format!("{at}: {e}"))?;
                    apply(&mut model, key(k), Entry::Value { value, stamp, expires_at_ms });
                }
                Op::Delete { k, stale } => {
                    hlc += 1;
                    let stamp = if stale {
                        Stamp { hlc: hlc - 500, node: 2 }
                    } else {
                        Stamp { hlc, node: 1 }
                    };
                    engine.delete(&key(k), stamp).await.map_err(|e| format!("{at}: {e}"))?;
                    apply(&mut model, key(k), Entry::Tombstone { stamp });
                }
                Op::Flush => engine.flush().await.map_err(|e| format!("{at}: {e}"))?,
                Op::Compact => engine.compact().await.map_err(|e| format!("{at}: {e}"))?,
                Op::Scan { limits } => check_scan(&engine, &model, &limits, &at).await?,
            }
        }
        check_scan(&engine, &model, &final_limits, "final scan").await?;
        engine.wait_for_compactions().await.map_err(|e| e.to_string())?;
        check_scan(&engine, &model, &final_limits, "after compactions").await?;
        engine.close().await.map_err(|e| e.to_string())
    })
}

/// Stamps are unique, so the newest version is the one with the greatest stamp.
fn apply(model: &mut Model, key: Vec<u8>, entry: Entry) {
    if model.get(&key).is_none_or(|old| entry.stamp() > old.stamp()) {
        model.insert(key, entry);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn scan_matches_the_model(
        ops in prop::collection::vec(op(), 50..300),
        final_limits in limits(),
    ) {
        run_model_case(ops, final_limits).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------
// A scan while writes, flushes and compactions continue.

#[test]
fn scan_during_writes() {
    const BEFORE: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let opts = scan_opts(dir.path(), &clock, true);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        let k = |i: u64| format!("key-{i:05}").into_bytes();
        let mut written: BTreeMap<Vec<u8>, Stamp> = BTreeMap::new();
        for i in 0..BEFORE {
            let stamp = support::stamp(1 + i);
            engine.put(&k(i * 2), &support::value_of(i, 700), stamp).await.unwrap();
            written.insert(k(i * 2), stamp);
        }
        let hlc = Rc::new(Cell::new(BEFORE + 1));
        let stop = Rc::new(Cell::new(false));
        let writer = {
            let (engine, hlc, stop) = (engine.clone(), hlc.clone(), stop.clone());
            glommio::spawn_local(async move {
                let mut n = 0u64;
                while !stop.get() {
                    n += 1;
                    let stamp = support::stamp(hlc.get());
                    hlc.set(hlc.get() + 1);
                    // Overwrite, delete, or add a key between the existing ones.
                    let i = n.wrapping_mul(7919) % (BEFORE * 2);
                    if n.is_multiple_of(5) {
                        engine.delete(&k(i), stamp).await.unwrap();
                    } else {
                        engine.put(&k(i), &support::value_of(n, 900), stamp).await.unwrap();
                    }
                    glommio::yield_if_needed().await;
                }
                n
            })
        };
        let stats_before = engine.stats();
        let mut seen: Vec<(Vec<u8>, Entry)> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        let mut pages = 0u64;
        loop {
            let page = engine.scan_page(after.as_deref(), &keep_all, 5, 3000).await.unwrap();
            pages += 1;
            for (key, entry) in page.entries {
                if let Some((prev, _)) = seen.last() {
                    assert!(key > *prev, "page {pages}: {key:?} after {prev:?}");
                }
                seen.push((key, entry));
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
            // Let the writer, the flushes and the compactions run between pages too.
            glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
        }
        stop.set(true);
        let writes = writer.await;
        let stats_after = engine.stats();
        let seen: BTreeMap<Vec<u8>, Entry> = seen.into_iter().collect();
        for (key, stamp) in &written {
            let got = seen.get(key).unwrap_or_else(|| panic!("{key:?} written before is missing"));
            assert!(got.stamp() >= *stamp, "{key:?}: {got:?} older than {stamp:?}");
        }
        println!(
            "{pages} pages, {} keys; {writes} writes, {} flushes and {} compactions during the scan",
            seen.len(),
            stats_after.flushes - stats_before.flushes,
            stats_after.compactions - stats_before.compactions
        );
        assert!(writes > 0);
        engine.close().await.unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Edge cases.

#[test]
fn an_empty_engine_scans_to_one_empty_page() {
    let dir = tempfile::tempdir().unwrap();
    let opts = scan_opts(dir.path(), &Clock::manual(T0), false);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        let page = engine.scan_page(None, &keep_all, 10, 10).await.unwrap();
        assert_eq!(page, ScanPage { entries: vec![], next: None, examined: 0 });
        let page = engine.scan_page(Some(b"m"), &keep_all, 0, 0).await.unwrap();
        assert_eq!(page, ScanPage { entries: vec![], next: None, examined: 0 });
        engine.close().await.unwrap();
        let closed = engine.scan_page(None, &keep_all, 10, 10).await;
        assert!(matches!(closed, Err(ShardError::Closed)), "{closed:?}");
    });
}

#[test]
fn after_at_or_past_the_last_key_ends_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let opts = scan_opts(dir.path(), &Clock::manual(T0), false);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        // "b" and "c" in a table, "d" in the memtable.
        engine.put(b"b", b"1", support::stamp(1)).await.unwrap();
        engine.put(b"c", b"2", support::stamp(2)).await.unwrap();
        engine.flush().await.unwrap();
        engine.put(b"d", b"3", support::stamp(3)).await.unwrap();
        for after in [&b"d"[..], b"d\0", b"zzz", &[0xFF; 40]] {
            let page = engine.scan_page(Some(after), &keep_all, 10, 100).await.unwrap();
            assert_eq!(page, ScanPage { entries: vec![], next: None, examined: 0 }, "{after:?}");
        }
        // Just before the last key of the table, and of the memtable.
        let page = engine.scan_page(Some(b"bz"), &keep_all, 10, 100).await.unwrap();
        assert_eq!(
            page.entries.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
            [&b"c"[..], b"d"]
        );
        assert_eq!(page.next, None);
        let page = engine.scan_page(Some(b"c"), &keep_all, 10, 100).await.unwrap();
        assert_eq!(page.entries.len(), 1);
        assert_eq!(page.next, None);
        engine.close().await.unwrap();
    });
}

#[test]
fn values_larger_than_max_bytes_still_make_progress() {
    let dir = tempfile::tempdir().unwrap();
    let opts = scan_opts(dir.path(), &Clock::manual(T0), false);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        let big = vec![7u8; 200 * 1024];
        engine.put(b"a", b"small", support::stamp(1)).await.unwrap();
        engine.put(b"big", &big, support::stamp(2)).await.unwrap();
        engine.put(b"c", &big, support::stamp(3)).await.unwrap();
        engine.delete(b"d", support::stamp(4)).await.unwrap();
        let want = vec![b"a".to_vec(), b"big".to_vec(), b"c".to_vec(), b"d".to_vec()];
        for round in ["memtable", "table"] {
            for (max_keys, max_bytes) in [(100, 10), (1, 1), (0, 0), (2, 1 << 20)] {
                let (got, pages) =
                    scan_all(&engine, &keep_all, &[(max_keys, max_bytes)]).await.unwrap();
                let keys: Vec<Vec<u8>> = got.iter().map(|(k, _)| k.clone()).collect();
                assert_eq!(keys, want, "{round} {max_keys} {max_bytes}");
                let (_, e) = &got[1];
                assert!(
                    matches!(e, Entry::Value { value, .. } if *value == big),
                    "{round}: the big value whole"
                );
                assert!(pages <= 5, "{round} {max_keys} {max_bytes}: {pages} pages");
            }
            engine.flush().await.unwrap();
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn a_damaged_table_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let opts = scan_opts(dir.path(), &Clock::manual(T0), false);
    let o = opts.clone();
    support::run(move || async move {
        let (engine, _) = Engine::open(o).await.unwrap();
        for i in 0..100u64 {
            engine
                .put(format!("k{i:03}").as_bytes(), &[b'v'; 100], support::stamp(i + 1))
                .await
                .unwrap();
        }
        engine.flush().await.unwrap();
        engine.close().await.unwrap();
    });
    let table = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .expect("a table");
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[200] ^= 0x10; // Inside the first data block.
    std::fs::write(&table, bytes).unwrap();
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        match engine.scan_page(None, &keep_all, 10, 1000).await {
            Err(ShardError::Corrupt { path, .. }) => assert_eq!(path, table),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        engine.close().await.unwrap();
    });
}

/// A table of `n` entries with keys `t00000`, `t00002`, ... (even numbers), small blocks.
async fn build_table(dir: &Path, n: u64) -> std::path::PathBuf {
    let opts = SstableOptions { block_bytes: 1024, ..SstableOptions::default() };
    let mut b = SstableBuilder::create(dir, TableId(1), opts, n).await.unwrap();
    for i in 0..n {
        let e = SstEntry {
            key: format!("t{:05}", i * 2).into_bytes(),
            stamp: Stamp { hlc: i + 1, node: 1 },
            value: if i % 7 == 0 {
                SstValue::Tombstone
            } else {
                SstValue::Value(vec![b'x'; (i % 90) as usize])
            },
            expires_at_ms: (i % 5 == 0).then_some(i),
        };
        b.add(e.as_ref()).await.unwrap();
    }
    b.finish().await.unwrap().0
}

async fn collect(mut it: kvs_shards::sstable::SstableIter<'_>) -> Vec<SstEntry> {
    let mut v = Vec::new();
    while let Some(e) = it.next().await.unwrap() {
        v.push(e);
    }
    v
}

#[test]
fn reader_iter_after_equals_a_filtered_full_iteration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    support::run(move || async move {
        let path = build_table(&d, 600).await;
        let r = SstableReader::open(&path).await.unwrap();
        assert!(r.blocks().len() > 10, "{} blocks", r.blocks().len());
        let all = collect(r.iter()).await;
        assert_eq!(all.len(), 600);
        let mut probes: Vec<Vec<u8>> =
            vec![b"".to_vec(), b"a".to_vec(), b"t".to_vec(), b"z".to_vec()];
        for i in 0..1_201u64 {
            probes.push(format!("t{i:05}").into_bytes());
        }
        // Exactly each block's last key, and just past it.
        for b in r.blocks() {
            probes.push(b.last_key.clone());
            let mut past = b.last_key.clone();
            past.push(0);
            probes.push(past);
        }
        for p in &probes {
            let got = collect(r.iter_after(Some(p))).await;
            let want: Vec<SstEntry> = all.iter().filter(|e| e.key > *p).cloned().collect();
            assert_eq!(got, want, "after {p:?}");
        }
        assert_eq!(collect(r.iter_after(None)).await, all);
        // A read-ahead smaller than a block still reads whole blocks, one at a time.
        for p in probes.iter().step_by(97) {
            let got = collect(r.iter_after(Some(p)).with_read_ahead_bytes(1)).await;
            let want: Vec<SstEntry> = all.iter().filter(|e| e.key > *p).cloned().collect();
            assert_eq!(got, want, "after {p:?}, read-ahead 1 byte");
        }
        // Seeking reads no block in vain: past the last key, none at all.
        let before = r.stats().blocks_read;
        assert!(collect(r.iter_after(Some(b"u"))).await.is_empty());
        assert_eq!(r.stats().blocks_read, before);
        r.close().await.unwrap();
    });
}

#[test]
fn a_held_reader_reads_its_table_after_the_file_is_removed() {
    // What a scan page relies on when a compaction removes a table it is reading: the page's
    // `Rc<SstableReader>` keeps the file descriptor, and the unlinked file stays readable.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    support::run(move || async move {
        let path = build_table(&d, 600).await;
        let r = SstableReader::open(&path).await.unwrap();
        let mut it = r.iter_after(Some(b"t00100"));
        let first = it.next().await.unwrap().unwrap();
        assert_eq!(first.key, b"t00102");
        std::fs::remove_file(&path).unwrap();
        assert!(!path.exists());
        let mut rest = 1;
        while let Some(e) = it.next().await.unwrap() {
            assert!(e.key.as_slice() > b"t00100".as_slice());
            rest += 1;
        }
        assert_eq!(rest, 600 - 51);
        assert_eq!(collect(r.iter()).await.len(), 600);
    });
}

#[test]
fn a_scan_sees_the_immutable_memtable_and_its_flush() {
    let dir = tempfile::tempdir().unwrap();
    let opts = scan_opts(dir.path(), &Clock::manual(T0), false);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        let k = |i: u64| format!("key-{i:04}").into_bytes();
        let mut model = Model::new();
        let mut hlc = 0;
        let mut write = async |range: std::ops::Range<u64>, model: &mut Model| {
            for i in range {
                hlc += 1;
                let stamp = support::stamp(hlc);
                let value = support::value_of(hlc, 40);
                engine.put(&k(i), &value, stamp).await.unwrap();
                apply(model, k(i), Entry::Value { value, stamp, expires_at_ms: None });
            }
        };
        // Oldest versions in a table, newer ones of half the keys frozen in the immutable
        // memtable, the newest of a quarter in the memtable.
        write(0..200, &mut model).await;
        engine.flush().await.unwrap();
        write(100..300, &mut model).await;
        let flush = glommio::spawn_local({
            let engine = engine.clone();
            async move { engine.flush().await.unwrap() }
        });
        let mut polls = 0;
        while engine.stats().immutable_bytes == 0 {
            glommio::yield_if_needed().await;
            glommio::executor().yield_task_queue_now().await;
            polls += 1;
            assert!(polls < 1_000_000, "the memtable was never frozen");
        }
        write(250..260, &mut model).await;
        let imm_at_start = engine.stats().immutable_bytes > 0;
        let (got, _) = scan_all(&engine, &keep_all, &[(3, 100)]).await.unwrap();
        let want: Vec<(Vec<u8>, Entry)> = model.into_iter().collect();
        assert_eq!(got, want);
        println!("immutable memtable present at the start of the scan: {imm_at_start}");
        flush.await;
        engine.close().await.unwrap();
    });
}
