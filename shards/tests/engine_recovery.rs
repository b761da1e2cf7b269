//! Goal: recovery keeps every record before a torn tail of the newest WAL segment, cuts the
//! tail physically and reports it, and refuses (with file and offset) damage that a crash
//! cannot explain.
//!
//! Method: write known records, close (or "crash" by dropping the engine and its executor),
//! damage the segment files with plain `std::fs` between executors, reopen and compare the
//! report and the data; then reopen once more to check the cut was durable and clean.

mod support;

use kvs_shards::{Engine, Lookup, ShardError, SyncMode};
use std::path::{Path, PathBuf};

const N: u64 = 20;

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:02}").into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    vec![i as u8 + 1; 50 + 17 * i as usize]
}

/// Frame offsets of the N records written by `write_records` into a fresh segment, and the
/// offset one past the last.
fn layout() -> (Vec<u64>, u64) {
    let mut offsets = Vec::new();
    let mut off = 64;
    for i in 0..N {
        offsets.push(off);
        off += 8 + 25 + key(i).len() as u64 + value(i).len() as u64;
    }
    (offsets, off)
}

/// Opens a fresh shard in `dir`, writes the N records, and closes cleanly (`crash == false`)
/// or drops everything without close (`crash == true`). Returns the newest segment's path.
fn write_records(dir: &Path, crash: bool) -> PathBuf {
    let opts = support::small_opts(dir, SyncMode::Always);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        for i in 0..N {
            engine.put(&key(i), &value(i), support::stamp(i + 1)).await.unwrap();
        }
        if !crash {
            engine.close().await.unwrap();
        }
    });
    support::segments(dir).pop().unwrap()
}

/// Reopens and checks that exactly the first `kept` records are present.
fn reopen_and_check(dir: &Path, kept: u64) -> kvs_shards::RecoveryReport {
    let opts = support::small_opts(dir, SyncMode::Always);
    support::run(move || async move {
        let (engine, report) = Engine::open(opts).await.unwrap();
        for i in 0..N {
            let want = if i < kept {
                Lookup::Found { value: value(i), stamp: support::stamp(i + 1) }
            } else {
                Lookup::Missing
            };
            assert_eq!(engine.get(&key(i)).await.unwrap(), want, "key {i}");
        }
        // New writes continue normally after the cut.
        engine.put(b"after", b"recovery", support::stamp(1000)).await.unwrap();
        engine.close().await.unwrap();
        report
    })
}

enum Damage {
    Cut(u64),
    Flip(u64),
    Garble(u64, usize),
    GarbleFileEnd(usize),
}

fn apply(path: &Path, damage: &Damage) {
    let mut bytes = std::fs::read(path).unwrap();
    match *damage {
        Damage::Cut(at) => bytes.truncate(at as usize),
        Damage::Flip(at) => bytes[at as usize] ^= 0x08,
        Damage::Garble(at, len) => bytes[at as usize..at as usize + len]
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i as u8).wrapping_mul(13) | 0x81),
        Damage::GarbleFileEnd(len) => {
            let n = bytes.len();
            bytes[n - len..].iter_mut().for_each(|b| *b = 0xab);
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn torn_tail_at_several_cut_points() {
    let (offsets, end) = layout();
    let last = offsets[N as usize - 1];
    // (damage, crash first?, expected torn offset, records kept)
    let cases = [
        (Damage::Cut(end - 1), false, Some(last), N - 1),
        (Damage::Cut(last + 4), false, Some(last), N - 1),
        (Damage::Cut(last + 8), false, Some(last), N - 1),
        (Damage::Cut(last), false, None, N - 1),
        (Damage::Flip(offsets[10] + 30), false, Some(offsets[10]), 10),
        (Damage::Garble(offsets[3], 40), false, Some(offsets[3]), 3),
        (Damage::Garble(end, 8), false, Some(end), N),
        // The integration tests' way: garble the last bytes of the file. After a clean close
        // that is zero padding past the end marker; after a crash it is the far end of the
        // preallocated segment.
        (Damage::GarbleFileEnd(100), false, Some(end), N),
        (Damage::GarbleFileEnd(100), true, Some(end), N),
        (Damage::Flip(last + 20), true, Some(last), N - 1),
    ];
    for (n, (damage, crash, torn_at, kept)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let seg = write_records(dir.path(), crash);
        apply(&seg, &damage);
        let size_before = std::fs::metadata(&seg).unwrap().len();
        let report = reopen_and_check(dir.path(), kept);
        assert_eq!(report.records, kept, "case {n}");
        match torn_at {
            Some(at) => {
                let torn =
                    report.torn_tail.unwrap_or_else(|| panic!("case {n}: no torn tail reported"));
                assert_eq!(torn.path, seg, "case {n}");
                assert_eq!(torn.offset, at, "case {n}");
                assert_eq!(torn.bytes_dropped, size_before - at, "case {n}");
                assert_eq!(std::fs::metadata(&seg).unwrap().len(), at, "case {n}: cut");
            }
            None => assert_eq!(report.torn_tail, None, "case {n}"),
        }
        if kept > 0 {
            assert_eq!(report.max_stamp, Some(support::stamp(kept)), "case {n}");
        }
        // The cut was durable and clean: the next open finds nothing to repair, and the
        // write made after recovery is there.
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        let again = support::run(move || async move {
            let (engine, report) = Engine::open(opts).await.unwrap();
            assert!(matches!(engine.get(b"after").await.unwrap(), Lookup::Found { .. }));
            engine.close().await.unwrap();
            report
        });
        assert_eq!(again.torn_tail, None, "case {n}");
        assert_eq!(again.records, kept + 1, "case {n}");
    }
}

#[test]
fn damage_in_an_older_segment_is_an_error_naming_file_and_offset() {
    let (offsets, _) = layout();
    for damage in [Damage::Flip(offsets[5] + 12), Damage::Garble(20, 4)] {
        let dir = tempfile::tempdir().unwrap();
        let first = write_records(dir.path(), false);
        // A second run adds a newer segment with a record in it.
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        support::run(move || async move {
            let (engine, _) = Engine::open(opts).await.unwrap();
            engine.put(b"x", b"y", support::stamp(500)).await.unwrap();
            engine.close().await.unwrap();
        });
        assert_eq!(support::segments(dir.path()).len(), 2);
        apply(&first, &damage);
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        let err = support::run(move || async move { Engine::open(opts).await.err() });
        match err {
            Some(ShardError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, first);
                match damage {
                    Damage::Flip(_) => assert_eq!(offset, offsets[5]),
                    _ => assert_eq!(offset, 0, "header damage"),
                }
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn newest_segment_without_a_header_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), false);
    // A crash right after creating (and preallocating) the next segment.
    let ghost = dir.path().join("wal").join(format!("{:020}.wal", 99));
    std::fs::write(&ghost, vec![0u8; 8192]).unwrap();
    let report = reopen_and_check(dir.path(), N);
    let torn = report.torn_tail.unwrap();
    assert_eq!((torn.path, torn.offset, torn.bytes_dropped), (ghost.clone(), 0, 8192));
    assert!(!ghost.exists());
    // The next segment id is above the removed one.
    let newest = support::segments(dir.path()).pop().unwrap();
    assert!(newest > ghost, "{newest:?}");
}

#[test]
fn restarts_without_writes_leave_no_empty_segments() {
    let dir = tempfile::tempdir().unwrap();
    write_records(dir.path(), false);
    for _ in 0..3 {
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        support::run(move || async move {
            let (engine, report) = Engine::open(opts).await.unwrap();
            assert_eq!(report.records, N);
            engine.close().await.unwrap();
        });
    }
    // The data segment plus the one (empty) segment of the last run.
    assert_eq!(support::segments(dir.path()).len(), 2);
}
