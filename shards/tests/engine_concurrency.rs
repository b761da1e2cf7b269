//! Goal: concurrent writers share fdatasyncs (group commit) without losing or reordering
//! versions, in both sync modes, across segment rolls and a close racing with writes; stale
//! stamps never overwrite newer ones.
//!
//! Method: many glommio tasks on one executor write through one engine; the test compares the
//! engine's counters (syncs vs records) and reopens the shard to check every acknowledged write.

mod support;

use kvs_shards::{Engine, Lookup, ShardError, ShardOptions, SyncMode};
use std::rc::Rc;

const WRITERS: u64 = 64;

#[test]
fn group_commit_under_64_concurrent_writers() {
    const PER_WRITER: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let opts = support::small_opts(dir.path(), SyncMode::Always);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts.clone()).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let engine = engine.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..PER_WRITER {
                    let k = format!("w{w}-{i}");
                    engine.put(k.as_bytes(), k.as_bytes(), support::stamp(1 + i)).await.unwrap();
                    // Acknowledged means visible.
                    assert!(matches!(
                        engine.get(k.as_bytes()).await.unwrap(),
                        Lookup::Found { .. }
                    ));
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let stats = engine.stats();
        let writes = WRITERS * PER_WRITER;
        assert_eq!(stats.records_written, writes);
        assert_eq!(stats.puts, writes);
        assert!(stats.syncs < writes, "{stats:?}");
        println!(
            "records per sync: {:.1} ({} records, {} syncs)",
            writes as f64 / stats.syncs as f64,
            writes,
            stats.syncs
        );
        engine.close().await.unwrap();
        let (engine, report) = Engine::open(opts).await.unwrap();
        assert_eq!(report.records, writes);
        assert_eq!(engine.stats().keys, writes);
        engine.close().await.unwrap();
    });
}

#[test]
fn periodic_mode_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let opts =
        ShardOptions { sync_period_ms: 20, ..support::small_opts(dir.path(), SyncMode::Periodic) };
    support::run(move || async move {
        let (engine, _) = Engine::open(opts.clone()).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let engine = engine.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..100u64 {
                    let k = format!("w{w}-{i}");
                    engine.put(k.as_bytes(), &[w as u8; 300], support::stamp(i + 1)).await.unwrap();
                }
                engine.delete(format!("w{w}-0").as_bytes(), support::stamp(1000)).await.unwrap();
            }));
        }
        for t in tasks {
            t.await;
        }
        let stats = engine.stats();
        assert_eq!(stats.records_written, 16 * 101);
        // Acknowledged on write, synced on a timer: far fewer syncs than writes.
        assert!(stats.syncs < stats.wal_writes.max(2), "{stats:?}");
        engine.close().await.unwrap();
        let (engine, report) = Engine::open(opts).await.unwrap();
        assert_eq!(report.records, 16 * 101);
        for w in 0..16u64 {
            assert_eq!(
                engine.get(format!("w{w}-0").as_bytes()).await.unwrap(),
                Lookup::Deleted { stamp: support::stamp(1000) }
            );
            assert_eq!(
                engine.get(format!("w{w}-99").as_bytes()).await.unwrap(),
                Lookup::Found { value: vec![w as u8; 300], stamp: support::stamp(100) }
            );
        }
        assert_eq!(engine.stats().tombstones, 16);
        engine.close().await.unwrap();
    });
}

#[test]
fn older_stamps_are_ignored_live_and_after_replay() {
    let dir = tempfile::tempdir().unwrap();
    let opts = support::small_opts(dir.path(), SyncMode::Always);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts.clone()).await.unwrap();
        engine.put(b"k", b"new", support::stamp(10)).await.unwrap();
        engine.put(b"k", b"old", support::stamp(9)).await.unwrap();
        engine.delete(b"k", support::stamp(8)).await.unwrap();
        // Same clock, higher node id wins.
        engine.put(b"j", b"node1", kvs_shards::Stamp { hlc: 5, node: 1 }).await.unwrap();
        engine.put(b"j", b"node0", kvs_shards::Stamp { hlc: 5, node: 0 }).await.unwrap();
        // Many concurrent writers to one key with shuffled stamps: the greatest wins.
        let mut tasks = Vec::new();
        for s in [7u64, 3, 99, 42, 64, 1, 98] {
            let engine = engine.clone();
            tasks.push(glommio::spawn_local(async move {
                engine.put(b"hot", &s.to_le_bytes(), support::stamp(s)).await.unwrap();
            }));
        }
        for t in tasks {
            t.await;
        }
        let check = |engine: Rc<Engine>| async move {
            assert_eq!(
                engine.get(b"k").await.unwrap(),
                Lookup::Found { value: b"new".to_vec(), stamp: support::stamp(10) }
            );
            assert_eq!(
                engine.get(b"j").await.unwrap(),
                Lookup::Found {
                    value: b"node1".to_vec(),
                    stamp: kvs_shards::Stamp { hlc: 5, node: 1 }
                }
            );
            assert_eq!(
                engine.get(b"hot").await.unwrap(),
                Lookup::Found { value: 99u64.to_le_bytes().to_vec(), stamp: support::stamp(99) }
            );
            assert_eq!(engine.get(b"none").await.unwrap(), Lookup::Missing);
        };
        check(engine.clone()).await;
        engine.close().await.unwrap();
        let (engine, report) = Engine::open(opts).await.unwrap();
        assert_eq!(report.max_stamp, Some(support::stamp(99)));
        check(engine.clone()).await;
        engine.close().await.unwrap();
    });
}

#[test]
fn concurrent_writers_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let opts = support::small_opts(dir.path(), SyncMode::Always);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts.clone()).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..32u64 {
            let engine = engine.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..10u64 {
                    let k = format!("w{w}-{i}");
                    engine
                        .put(k.as_bytes(), &vec![(w + i) as u8; 20_000], support::stamp(1))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let stats = engine.stats();
        // 320 x 20 KB = 6.4 MB over 2 MiB segments.
        assert!(stats.wal_segments >= 4, "{stats:?}");
        engine.close().await.unwrap();
        let (engine, report) = Engine::open(opts).await.unwrap();
        assert_eq!(report.records, 320);
        assert_eq!(report.torn_tail, None);
        for w in 0..32u64 {
            for i in 0..10u64 {
                let got = engine.get(format!("w{w}-{i}").as_bytes()).await.unwrap();
                assert_eq!(
                    got,
                    Lookup::Found { value: vec![(w + i) as u8; 20_000], stamp: support::stamp(1) }
                );
            }
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn close_racing_with_writes_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let opts = support::small_opts(dir.path(), SyncMode::Always);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts.clone()).await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let engine = engine.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut acked = Vec::new();
                for i in 0..1000u64 {
                    let k = format!("w{w}-{i}");
                    match engine.put(k.as_bytes(), b"v", support::stamp(1)).await {
                        Ok(()) => acked.push(k),
                        Err(ShardError::Closed) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                acked
            }));
        }
        glommio::timer::sleep(std::time::Duration::from_millis(30)).await;
        engine.close().await.unwrap();
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await);
        }
        assert!(!acked.is_empty());
        assert!(matches!(engine.get(b"x").await, Err(ShardError::Closed)));
        let (engine, _) = Engine::open(opts).await.unwrap();
        for k in &acked {
            assert!(
                matches!(engine.get(k.as_bytes()).await.unwrap(), Lookup::Found { .. }),
                "{k} acknowledged but lost"
            );
        }
        engine.close().await.unwrap();
    });
}

#[test]
fn limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let opts = support::small_opts(dir.path(), SyncMode::Always);
    support::run(move || async move {
        let bad = ShardOptions { wal_segment_bytes: 1000, ..opts.clone() };
        assert!(matches!(Engine::open(bad).await, Err(ShardError::InvalidOptions { .. })));
        let (engine, _) = Engine::open(opts).await.unwrap();
        let big_key = vec![0u8; kvs_shards::limits::KEY_BYTES_MAX as usize + 1];
        assert!(matches!(
            engine.put(&big_key, b"v", support::stamp(1)).await,
            Err(ShardError::KeyTooLarge { .. })
        ));
        let big_value = vec![0u8; kvs_shards::limits::VALUE_BYTES_MAX as usize + 1];
        assert!(matches!(
            engine.put(b"k", &big_value, support::stamp(1)).await,
            Err(ShardError::ValueTooLarge { .. })
        ));
        // The largest allowed record fits in the smallest segment.
        let max_key = vec![1u8; kvs_shards::limits::KEY_BYTES_MAX as usize];
        let max_value = vec![2u8; kvs_shards::limits::VALUE_BYTES_MAX as usize];
        for i in 0..3 {
            engine.put(&max_key, &max_value, support::stamp(i + 1)).await.unwrap();
        }
        engine.close().await.unwrap();
        engine.close().await.unwrap();
    });
}
