//! Goal: the group-commit log writer and the reader agree on the segment format, group commit
//! really shares fdatasyncs among concurrent appenders, and torn tails are reported with the
//! offset to truncate at.
//!
//! Method: each test runs on its own glommio executor over a temporary directory on the real
//! disk; tests garble files between a close and a read with plain `std::fs` (outside the data
//! path).

use glommio::LocalExecutorBuilder;
use kvs_io::{
    Durability, IoError, LogEnd, LogReader, LogWriter, LogWriterOptions, ReadOutcome, TornReason,
};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}

fn opts(durability: Durability) -> LogWriterOptions {
    LogWriterOptions { durability, capacity_bytes: 8 << 20, ..LogWriterOptions::default() }
}

async fn read_all(path: &Path, id: u64) -> (Vec<(u64, Vec<u8>)>, LogEnd) {
    let mut r = LogReader::open(path, Some(id)).await.expect("open reader");
    let mut out = Vec::new();
    loop {
        match r.next().await.expect("read") {
            ReadOutcome::Record(rec) => out.push((rec.offset, rec.payload)),
            ReadOutcome::End(end) => {
                r.close().await.expect("close reader");
                return (out, end);
            }
        }
    }
}

fn seg_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

#[test]
fn concurrent_appenders_share_syncs_and_read_back_in_order() {
    const TASKS: usize = 64;
    const APPENDS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 1);
    run(move || async move {
        let w = Rc::new(LogWriter::create(&path, 1, opts(Durability::Always)).await.unwrap());
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let w = w.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut acked = Vec::new();
                for i in 0..APPENDS {
                    let payload = format!("task {t} record {i} {}", "x".repeat(i % 37));
                    let lsn = w.append_durable(payload.as_bytes()).await.unwrap();
                    // Acknowledged means synced in Always mode.
                    assert!(w.stats().synced_lsn >= lsn.0);
                    acked.push((lsn.0, payload.into_bytes()));
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await);
        }
        let stats = w.stats();
        w.close().await.unwrap();
        let appends = (TASKS * APPENDS) as u64;
        assert_eq!(stats.records_appended, appends);
        assert!(stats.syncs < appends, "group commit: {} syncs for {appends} appends", stats.syncs);
        println!(
            "records per sync: {:.1} ({} records, {} syncs, {} writes)",
            appends as f64 / stats.syncs as f64,
            appends,
            stats.syncs,
            stats.writes
        );

        // Read back: every record, in LSN order.
        acked.sort();
        let (records, end) = read_all(&path, 1).await;
        let LogEnd::Sealed { offset, records: sealed, end_offset } = end else {
            panic!("close must seal: {end:?}");
        };
        assert_eq!((sealed, end_offset), (appends, offset));
        assert_eq!(offset, stats.appended_lsn);
        assert_eq!(records.len(), acked.len());
        for ((off, payload), (lsn, want)) in records.iter().zip(&acked) {
            assert_eq!(payload, want);
            assert_eq!(off + 8 + payload.len() as u64, *lsn);
        }
    });
}

#[test]
fn torn_tail_is_reported_at_several_cut_points() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    // Write one clean segment; copy it and damage the copy in different ways.
    let path = seg_path(&base, 7);
    let payloads: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i + 1; 100 + i as usize * 13]).collect();
    {
        let (path, payloads) = (path.clone(), payloads.clone());
        run(move || async move {
            let w = LogWriter::create(&path, 7, opts(Durability::Always)).await.unwrap();
            for p in &payloads {
                w.append(p).unwrap();
            }
            w.close().await.unwrap();
        });
    }
    let clean = std::fs::read(&path).unwrap();
    // Offsets of each frame.
    let mut offsets = Vec::new();
    let mut off = 64u64;
    for p in &payloads {
        offsets.push(off);
        off += 8 + p.len() as u64;
    }
    let last = *offsets.last().unwrap();
    let end = off;

    enum Damage {
        Cut(u64),
        Flip(u64),
        Garble(u64, usize),
    }
    let cases = [
        (Damage::Cut(end - 1), Some(last)), // last byte of the payload missing
        (Damage::Cut(last + 3), Some(last)), // inside the frame header
        (Damage::Cut(last + 8), Some(last)), // header only, no payload
        (Damage::Cut(last), None),          // exactly at a boundary: clean end
        (Damage::Flip(end - 5), Some(last)), // bit flip in the last payload
        (Damage::Flip(last + 5), Some(last)), // bit flip in the last crc
        (Damage::Garble(offsets[40], 300), Some(offsets[40])), // garbage over several frames
        (Damage::Garble(end, 16), Some(end)), // garbage at the end marker position
    ];
    for (n, (damage, torn_at)) in cases.into_iter().enumerate() {
        let p = base.join(format!("case{n}.wal"));
        let mut bytes = clean.clone();
        match damage {
            Damage::Cut(at) => bytes.truncate(at as usize),
            Damage::Flip(at) => bytes[at as usize] ^= 0x40,
            Damage::Garble(at, len) => {
                for (i, b) in bytes[at as usize..at as usize + len].iter_mut().enumerate() {
                    *b = (i as u8).wrapping_mul(31).wrapping_add(7) | 1;
                }
            }
        }
        std::fs::write(&p, &bytes).unwrap();
        let payloads = payloads.clone();
        let offsets = offsets.clone();
        run(move || async move {
            let (records, log_end) = read_all(&p, 7).await;
            match torn_at {
                Some(at) => {
                    let LogEnd::Torn { offset, file_bytes, .. } = log_end else {
                        panic!("case {n}: expected torn, got {log_end:?}");
                    };
                    assert_eq!(offset, at, "case {n}");
                    assert_eq!(file_bytes, bytes.len() as u64);
                    let kept = offsets.iter().filter(|o| **o < at).count();
                    assert_eq!(records.len(), kept, "case {n}");
                }
                None => {
                    assert!(matches!(log_end, LogEnd::Clean { .. }), "case {n}");
                    assert_eq!(records.len(), payloads.len() - 1);
                }
            }
            for ((_, got), want) in records.iter().zip(&payloads) {
                assert_eq!(got, want, "case {n}");
            }
            // Truncating at the reported offset leaves a segment that reads clean.
            kvs_io::truncate_file(&p, log_end.offset()).await.unwrap();
            let (again, end2) = read_all(&p, 7).await;
            assert_eq!(again, records);
            assert_eq!(end2, LogEnd::Clean { offset: log_end.offset() });
        });
    }
}

#[test]
fn garbage_past_the_end_marker_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 8);
    run(move || async move {
        let w = LogWriter::create(&path, 8, opts(Durability::Always)).await.unwrap();
        let lsn = w.append_durable(b"only record").await.unwrap();
        w.close().await.unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4096, "close trims to the last block");
        bytes.extend_from_slice(&[0u8; 8192]);
        bytes[10_000] = 0xee;
        std::fs::write(&path, &bytes).unwrap();
        let mut r = LogReader::open(&path, Some(8)).await.unwrap();
        assert!(matches!(r.next().await.unwrap(), ReadOutcome::Record(_)));
        assert_eq!(r.nonzero_after_end().await.unwrap(), None, "not at end yet");
        assert_eq!(
            r.next().await.unwrap(),
            ReadOutcome::End(LogEnd::Sealed { offset: lsn.0, records: 1, end_offset: lsn.0 })
        );
        assert_eq!(r.records_read(), 1);
        assert_eq!(r.nonzero_after_end().await.unwrap(), Some(10_000));
        r.close().await.unwrap();
    });
}

#[test]
fn records_from_another_segment_do_not_validate() {
    let dir = tempfile::tempdir().unwrap();
    let a = seg_path(dir.path(), 1);
    let b = seg_path(dir.path(), 2);
    run(move || async move {
        let w = LogWriter::create(&a, 1, opts(Durability::Always)).await.unwrap();
        w.append_durable(b"from segment one").await.unwrap();
        w.close().await.unwrap();
        // Give segment 2 a valid header followed by segment 1's records.
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[..64].copy_from_slice(&kvs_io::format::encode_header(2));
        std::fs::write(&b, &bytes).unwrap();
        let (records, end) = read_all(&b, 2).await;
        assert!(records.is_empty());
        assert!(matches!(
            end,
            LogEnd::Torn { offset: 64, reason: TornReason::ChecksumMismatch { .. }, .. }
        ));
    });
}

#[test]
fn periodic_mode_acks_before_sync_and_syncs_on_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 3);
    run(move || async move {
        let w = Rc::new(
            LogWriter::create(&path, 3, opts(Durability::Periodic { period_ms: 20 }))
                .await
                .unwrap(),
        );
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let w = w.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..100u32 {
                    let p = [t.to_le_bytes(), i.to_le_bytes()].concat();
                    let lsn = w.append_durable(&p).await.unwrap();
                    assert!(w.stats().written_lsn >= lsn.0);
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let before = w.stats();
        assert_eq!(before.records_appended, 800);
        assert!(before.syncs < before.writes || before.syncs <= 1);
        // A periodic sync catches up without further appends.
        glommio::timer::sleep(std::time::Duration::from_millis(80)).await;
        let after = w.stats();
        assert_eq!(after.synced_lsn, after.written_lsn, "{after:?}");
        assert!(after.syncs >= 1);
        w.close().await.unwrap();
        let (records, end) = read_all(&path, 3).await;
        assert_eq!(records.len(), 800);
        assert!(matches!(end, LogEnd::Sealed { records: 800, .. }), "{end:?}");
    });
}

#[test]
fn refusals_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 4);
    run(move || async move {
        let w = LogWriter::create(
            &path,
            4,
            LogWriterOptions {
                capacity_bytes: 8192,
                pending_bytes_max: 3000,
                ..LogWriterOptions::default()
            },
        )
        .await
        .unwrap();
        assert!(matches!(w.append(b""), Err(IoError::RecordSize { .. })));
        w.append(&[1u8; 2000]).unwrap();
        assert!(matches!(
            w.append(&[2u8; 2000]),
            Err(IoError::Overloaded { pending_bytes: 2008, pending_bytes_max: 3000 })
        ));
        // Once the flusher drains, the next append fits in the pending bound.
        let lsn = w.append(&[3u8; 2000]);
        let lsn = match lsn {
            Ok(lsn) => lsn,
            Err(_) => {
                w.durable(kvs_io::Lsn(64 + 2008)).await.unwrap();
                w.append(&[3u8; 2000]).unwrap()
            }
        };
        w.durable(lsn).await.unwrap();
        assert!(!w.fits(8192));
        assert!(matches!(
            w.append(&[4u8; 5000]),
            Err(IoError::SegmentFull { capacity_bytes: 8192, .. })
        ));
        w.close().await.unwrap();
        w.close().await.unwrap();
        assert!(matches!(w.append(b"x"), Err(IoError::Closed { segment_id: 4 })));
        // Creating over an existing segment is refused.
        assert!(LogWriter::create(&path, 4, LogWriterOptions::default()).await.is_err());
    });
}

#[test]
fn bad_headers_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_path_buf();
    run(move || async move {
        let short = base.join("short.wal");
        std::fs::write(&short, [0u8; 10]).unwrap();
        let zero = base.join("zero.wal");
        std::fs::write(&zero, [0u8; 8192]).unwrap();
        let wrong = base.join("wrong.wal");
        std::fs::write(&wrong, kvs_io::format::encode_header(9)).unwrap();
        for (p, want) in [(short, "Short"), (zero, "Zeroed"), (wrong, "WrongSegment")] {
            match LogReader::open(&p, Some(1)).await {
                Err(IoError::SegmentHeader { problem, .. }) => {
                    assert!(format!("{problem:?}").starts_with(want), "{problem:?}")
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("{} opened", p.display()),
            }
        }
    });
}

#[test]
fn drop_without_close_still_drains() {
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 5);
    run(move || async move {
        {
            let w = LogWriter::create(&path, 5, opts(Durability::Periodic { period_ms: 1000 }))
                .await
                .unwrap();
            for i in 0..10u8 {
                w.append(&[i + 1; 10]).unwrap();
            }
        }
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
        let (records, _) = read_all(&path, 5).await;
        assert_eq!(records.len(), 10);
    });
}

/// Regression: glommio 0.9 probes io_uring poll support with the first `DmaFile` opened per
/// device and thread; an empty file fooled the probe and every later direct read failed with
/// EOPNOTSUPP. Here the first file this executor opens is a brand-new segment.
#[test]
fn regression_first_dma_file_on_a_thread_is_a_new_empty_segment() {
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 11);
    run(move || async move {
        let w = LogWriter::create(&path, 11, opts(Durability::Always)).await.unwrap();
        w.append_durable(b"probe me").await.unwrap();
        w.close().await.unwrap();
        let (records, end) = read_all(&path, 11).await;
        assert_eq!(records.len(), 1);
        assert!(matches!(end, LogEnd::Sealed { records: 1, .. }));
    });
}

/// Regression (found by `tests/crash_compaction.rs`): removing an empty file was the first
/// `DmaFile` open on a thread when a crash had left an empty `.sst.tmp` for `Engine::open` to
/// remove, so glommio's poll probe read zero bytes, concluded "pollable", and every later
/// direct read on the device failed with EOPNOTSUPP: the shard could not open its tables.
/// `remove_file` must not open a `DmaFile`.
#[test]
fn regression_remove_file_of_an_empty_file_first_on_a_thread() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("00000000000000000002.sst.tmp");
    std::fs::write(&empty, b"").unwrap();
    let path = seg_path(dir.path(), 13);
    run(move || async move {
        kvs_io::remove_file(&empty).await.unwrap();
        assert!(!empty.exists());
        let w = LogWriter::create(&path, 13, opts(Durability::Always)).await.unwrap();
        w.append_durable(b"read me back").await.unwrap();
        w.close().await.unwrap();
        let (records, _) = read_all(&path, 13).await;
        assert_eq!(records, vec![(64, b"read me back".to_vec())]);
    });
}

/// Regression (found by the engine's model test under load): a cancelled flush task's unlink
/// of a WAL segment completed in the kernel after the reopened engine had listed the segment,
/// and the reopen failed with "No such file or directory" removing it. Removing a file that
/// is already gone succeeds; other errors still report.
#[test]
fn remove_file_of_a_missing_file_succeeds_and_other_errors_report() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("00000000000000000034.wal");
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    run(move || async move {
        kvs_io::remove_file(&gone).await.unwrap();
        let err = kvs_io::remove_file(not_a_dir.join("child")).await.unwrap_err();
        assert!(err.to_string().contains("child"), "{err}");
    });
}

#[test]
fn drop_leaves_the_segment_unsealed_and_seal_segment_seals_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 12);
    run(move || async move {
        let mut end = 0;
        {
            let w = LogWriter::create(&path, 12, opts(Durability::Always)).await.unwrap();
            for i in 0..100u32 {
                end = w.append_durable(&[i as u8 | 1; 99]).await.unwrap().0;
            }
        }
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
        let (records, log_end) = read_all(&path, 12).await;
        assert_eq!(records.len(), 100);
        assert_eq!(log_end, LogEnd::Clean { offset: end });
        kvs_io::seal_segment(&path, 12, 100, end).await.unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size, (end + kvs_io::SEAL_FRAME_BYTES).div_ceil(4096) * 4096, "trimmed");
        let (again, log_end) = read_all(&path, 12).await;
        assert_eq!(again, records);
        assert_eq!(log_end, LogEnd::Sealed { offset: end, records: 100, end_offset: end });
    });
}

#[test]
fn find_valid_frame_sees_frames_past_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = seg_path(dir.path(), 13);
    run(move || async move {
        let w = LogWriter::create(&path, 13, opts(Durability::Always)).await.unwrap();
        let mut lsns = Vec::new();
        for i in 0..40u32 {
            lsns.push(w.append(&vec![i as u8 | 0x80; 50_000]).unwrap().0);
        }
        w.close().await.unwrap();
        // Zero the first record's frame header: the reader stops there.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[64..72].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let mut r = LogReader::open(&path, Some(13)).await.unwrap();
        assert_eq!(r.next().await.unwrap(), ReadOutcome::End(LogEnd::Clean { offset: 64 }));
        assert_eq!(r.nonzero_after_end().await.unwrap(), Some(72));
        // The next frame starts where the first one ended; from past it, the next one.
        assert_eq!(r.find_valid_frame(64, 1 << 20).await.unwrap(), Some(lsns[0]));
        assert_eq!(r.find_valid_frame(lsns[0] + 1, 1 << 20).await.unwrap(), Some(lsns[1]));
        // The seal is a valid frame too; nothing after it.
        let seal_at = *lsns.last().unwrap();
        assert_eq!(r.find_valid_frame(seal_at, 1 << 20).await.unwrap(), Some(seal_at));
        assert_eq!(r.find_valid_frame(seal_at + 1, 1 << 20).await.unwrap(), None);
        // Lengths over the given bound are not considered.
        assert_eq!(r.find_valid_frame(lsns[0] + 1, 1000).await.unwrap(), Some(seal_at));
        r.close().await.unwrap();
    });
}
