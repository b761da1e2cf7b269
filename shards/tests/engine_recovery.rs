//! Goal: recovery keeps every record before a torn tail of the newest WAL segment, cuts the
//! tail physically and reports it, and refuses (with file and offset) damage that a crash
//! cannot explain.
//!
//! Method: write known records, close (or "crash" by dropping the engine and its executor),
//! damage the segment files with plain `std::fs` between executors, reopen and compare the
//! report and the data; then reopen once more to check the cut was durable and clean, and
//! that the recovered segment was sealed (it is an older segment at that second open).

mod support;

use kvs_shards::{Engine, Lookup, ShardError, SyncMode};
use std::path::{Path, PathBuf};

const N: u64 = 20;
/// Bytes of the seal frame that ends a finished segment (`len = u32::MAX`, crc, count, offset).
const SEAL: u64 = kvs_io::SEAL_FRAME_BYTES;

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

/// Checks that `seg` holds a seal for `records` records at `at`, followed only by zeros.
fn assert_seal(seg: &Path, at: u64, records: u64) {
    let bytes = std::fs::read(seg).unwrap();
    let at = at as usize;
    assert!(bytes.len() >= at + SEAL as usize, "{}: no room for a seal", seg.display());
    assert_eq!(&bytes[at..at + 4], &[0xff; 4], "{}: seal length marker", seg.display());
    assert_eq!(&bytes[at + 8..at + 16], &records.to_le_bytes(), "seal record count");
    assert_eq!(&bytes[at + 16..at + 24], &(at as u64).to_le_bytes(), "seal end offset");
    assert!(bytes[at + SEAL as usize..].iter().all(|b| *b == 0), "only zeros after the seal");
}

/// Writes the N records and closes, then runs once more adding one record to a newer segment,
/// so the first segment is an older one. Returns the first segment's path.
fn older_segment_with_records(dir: &Path) -> PathBuf {
    let first = write_records(dir, false);
    let opts = support::small_opts(dir, SyncMode::Always);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        engine.put(b"x", b"y", support::stamp(500)).await.unwrap();
        engine.close().await.unwrap();
    });
    assert_eq!(support::segments(dir).len(), 2);
    first
}

/// Opens the shard in `dir` expecting `Corrupt`; returns its path and offset.
fn open_expecting_corrupt(dir: &Path) -> (PathBuf, u64, String) {
    let opts = support::small_opts(dir, SyncMode::Always);
    match support::run(move || async move { Engine::open(opts).await.err() }) {
        Some(ShardError::Corrupt { path, offset, reason }) => (path, offset, reason),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

enum Damage {
    Cut(u64),
    Flip(u64),
    Garble(u64, usize),
    GarbleFileEnd(usize),
    Zero(u64, usize),
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
        Damage::Zero(at, len) => bytes[at as usize..at as usize + len].fill(0),
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
        // After a clean close the seal sits at `end`: garbling it leaves a torn tail there.
        (Damage::Garble(end, 8), false, Some(end), N),
        // The integration tests' way: garble the last bytes of the file. After a clean close
        // that is zero padding past the seal (cut after the seal, which stays); after a crash
        // it is the far end of the preallocated segment.
        (Damage::GarbleFileEnd(100), false, Some(end + SEAL), N),
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
            }
            None => assert_eq!(report.torn_tail, None, "case {n}"),
        }
        // The segment now ends with a seal right after its last kept record (added by
        // recovery unless the cut kept the seal of the clean close), then only zeros.
        let seal_at = if kept == N { end } else { offsets[kept as usize] };
        assert_seal(&seg, seal_at, kept);
        let resealed = torn_at != Some(end + SEAL);
        assert_eq!(report.sealed, resealed.then(|| seg.clone()), "case {n}");
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
        let first = older_segment_with_records(dir.path());
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

/// The reviewer's cases: damage in an older segment that reads like a clean end (a zeroed
/// frame header at a record boundary, or a file cut at one) used to drop every later record
/// silently, and a zeroed first record got the segment deleted. Each is `Corrupt` naming the
/// file, and the file stays.
#[test]
fn older_segment_ending_early_is_corrupt_not_a_clean_end() {
    let (offsets, end) = layout();
    let cases = [
        (Damage::Zero(offsets[5], 8), offsets[5]),
        (Damage::Zero(offsets[0], 8), offsets[0]),
        (Damage::Cut(offsets[5]), offsets[5]),
        // The whole tail zeroed from record 5 on, seal included: nothing non-zero follows.
        (Damage::Zero(offsets[5], (end + SEAL - offsets[5]) as usize), offsets[5]),
        // Only the seal missing.
        (Damage::Cut(end), end),
        (Damage::Zero(end, SEAL as usize), end),
        // A torn frame and junk after the seal.
        (Damage::Cut(offsets[7] + 3), offsets[7]),
        (Damage::GarbleFileEnd(10), end + SEAL),
    ];
    for (n, (damage, at)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let first = older_segment_with_records(dir.path());
        apply(&first, &damage);
        let size = std::fs::metadata(&first).unwrap().len();
        let (path, offset, reason) = open_expecting_corrupt(dir.path());
        assert_eq!(path, first, "case {n}: {reason}");
        assert_eq!(offset, at, "case {n}: {reason}");
        assert!(first.exists(), "case {n}: an older segment is never removed");
        assert_eq!(std::fs::metadata(&first).unwrap().len(), size, "case {n}: left untouched");
        assert_eq!(support::segments(dir.path()).len(), 2, "case {n}");
    }
}

/// A seal whose count disagrees with the records replayed (checksum recomputed, so only the
/// claim is wrong) is corruption even in the newest segment.
#[test]
fn seal_that_disagrees_with_the_records_is_corrupt() {
    let (_, end) = layout();
    let dir = tempfile::tempdir().unwrap();
    let seg = write_records(dir.path(), false);
    let mut bytes = std::fs::read(&seg).unwrap();
    let mut seal = Vec::new();
    kvs_io::format::encode_seal(1, N + 1, end, &mut seal);
    bytes[end as usize..(end + SEAL) as usize].copy_from_slice(&seal);
    std::fs::write(&seg, bytes).unwrap();
    let (path, offset, reason) = open_expecting_corrupt(dir.path());
    assert_eq!((path, offset), (seg, end), "{reason}");
}

/// Damage in the newest segment with valid frames more than one maximal write (1 MiB) past
/// it is not a torn tail: `Corrupt`, and nothing is cut.
#[test]
fn newest_segment_damage_followed_by_far_valid_frames_is_corrupt() {
    const BIG: u64 = 12;
    let big = |i: u64| vec![i as u8 | 0x40; 150_000];
    for (crash, zero) in [(true, false), (false, false), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        support::run(move || async move {
            let (engine, _) = Engine::open(opts).await.unwrap();
            for i in 0..BIG {
                engine.put(&key(i), &big(i), support::stamp(i + 1)).await.unwrap();
            }
            if !crash {
                engine.close().await.unwrap();
            }
        });
        let segs = support::segments(dir.path());
        assert_eq!(segs.len(), 1, "all in one segment");
        let seg = segs[0].clone();
        let second = 64 + 8 + 25 + key(0).len() as u64 + 150_000;
        // Damage the second record: the first stays, ~1.5 MiB of records follow.
        if zero {
            apply(&seg, &Damage::Zero(second, 8));
        } else {
            apply(&seg, &Damage::Flip(second + 100));
        }
        let size = std::fs::metadata(&seg).unwrap().len();
        let (path, offset, reason) = open_expecting_corrupt(dir.path());
        assert_eq!((&path, offset), (&seg, second), "{reason}");
        assert!(reason.contains("not a torn tail"), "{reason}");
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), size, "nothing cut");
    }
}

/// A crash leaves the newest segment unsealed; the next open seals it before starting a new
/// segment, so the open after that finds a properly sealed older segment.
#[test]
fn crash_then_two_reopens_seals_the_recovered_segment() {
    let (_, end) = layout();
    let dir = tempfile::tempdir().unwrap();
    let seg = write_records(dir.path(), true);
    let report = reopen_and_check(dir.path(), N);
    assert_eq!(report.torn_tail, None);
    assert_eq!(report.sealed, Some(seg.clone()));
    assert_seal(&seg, end, N);
    assert_eq!(support::segments(dir.path()).len(), 2);
    // Twice more, the second time after another crash: the data and the write made after
    // each recovery are all there.
    for round in 0..2u64 {
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        let report = support::run(move || async move {
            let (engine, report) = Engine::open(opts).await.unwrap();
            for i in 0..N {
                assert!(matches!(engine.get(&key(i)).await.unwrap(), Lookup::Found { .. }));
            }
            assert!(matches!(engine.get(b"after").await.unwrap(), Lookup::Found { .. }));
            engine
                .put(format!("r{round}").as_bytes(), b"v", support::stamp(2000 + round))
                .await
                .unwrap();
            if round == 1 {
                engine.close().await.unwrap();
            }
            report
        });
        assert_eq!(report.torn_tail, None, "round {round}");
        assert_eq!(report.records, N + 1 + round, "round {round}");
        // Round 0 found the "after" segment closed (sealed); round 1 the crashed one.
        assert_eq!(report.sealed.is_some(), round == 1, "round {round}");
    }
    assert_seal(&seg, end, N);
}

/// A normal run across several segments (rolls seal each full one), a crash in the last, and
/// reopens: every record is there, and every segment but the newest is sealed.
#[test]
fn rolls_across_segments_then_crash_and_reopen() {
    const K: u64 = 60;
    let value = |i: u64| vec![i as u8; 100_000];
    let dir = tempfile::tempdir().unwrap();
    for crash in [false, true] {
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        let base = if crash { K } else { 0 };
        support::run(move || async move {
            let (engine, _) = Engine::open(opts).await.unwrap();
            for i in base..base + K {
                engine.put(&key(i), &value(i), support::stamp(i + 1)).await.unwrap();
            }
            if !crash {
                engine.close().await.unwrap();
            }
        });
    }
    let segs = support::segments(dir.path());
    assert!(segs.len() >= 6, "{segs:?}");
    for seg in &segs[..segs.len() - 1] {
        // Walk the frames to the seal.
        let bytes = std::fs::read(seg).unwrap();
        let (mut at, mut records) = (64usize, 0u64);
        loop {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
            if len == u32::MAX {
                break;
            }
            assert_ne!(len, 0, "{}: end marker before a seal", seg.display());
            at += 8 + len as usize;
            records += 1;
        }
        assert_seal(seg, at as u64, records);
    }
    for _ in 0..2 {
        let opts = support::small_opts(dir.path(), SyncMode::Always);
        let report = support::run(move || async move {
            let (engine, report) = Engine::open(opts).await.unwrap();
            for i in 0..2 * K {
                assert_eq!(
                    engine.get(&key(i)).await.unwrap(),
                    Lookup::Found { value: value(i), stamp: support::stamp(i + 1) },
                    "key {i}"
                );
            }
            engine.close().await.unwrap();
            report
        });
        assert_eq!(report.records, 2 * K);
        assert_eq!(report.torn_tail, None);
    }
}

/// Segments of an earlier format version are refused with a clear error.
#[test]
fn old_format_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_records(dir.path(), false);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    let crc = crc32c_of(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, bytes).unwrap();
    let (path, offset, reason) = open_expecting_corrupt(dir.path());
    assert_eq!((path, offset), (seg, 0));
    assert!(reason.contains("unsupported format version 1"), "{reason}");
}

fn crc32c_of(bytes: &[u8]) -> u32 {
    kvs_io::checksum::crc32c(bytes)
}
