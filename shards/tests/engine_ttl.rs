//! Goal: a value written with an expiry reads as deleted from its expiry on, wherever it lives
//! (memtable, SSTable), across a restart through the WAL and through a table, and while
//! expired it still shadows older versions of its key.
//!
//! Method: engines opened with a manual [`Clock`], moved by hand around each expiry (no real
//! waiting); the smallest memtable budget (64 KiB) and ~1 KiB filler values, so a few dozen
//! writes freeze the memtable and a background flush moves the keys into a table.

mod support;

use support::{value_of, wait_flushed};

use kvs_shards::{Clock, Engine, Lookup, ShardOptions, SyncMode};
use std::path::Path;

/// An arbitrary wall-clock start, 2023-11-14 in ms.
const T0: u64 = 1_700_000_000_000;

fn ttl_opts(dir: &Path, clock: &Clock) -> ShardOptions {
    ShardOptions {
        memtable_bytes_max: kvs_shards::limits::MEMTABLE_BYTES_MIN,
        clock: clock.clone(),
        ..support::small_opts(dir, SyncMode::Always)
    }
}

fn found(value: &[u8], hlc: u64) -> Lookup {
    Lookup::Found { value: value.to_vec(), stamp: support::stamp(hlc) }
}

fn deleted(hlc: u64) -> Lookup {
    Lookup::Deleted { stamp: support::stamp(hlc) }
}

#[test]
fn a_value_in_the_memtable_expires_at_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let opts = ttl_opts(dir.path(), &clock);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts).await.unwrap();
        engine.put_with_expiry(b"k", b"v", support::stamp(10), Some(T0 + 100)).await.unwrap();
        engine.put_with_expiry(b"forever", b"v", support::stamp(11), None).await.unwrap();
        // Expired when written: never readable.
        engine.put_with_expiry(b"past", b"v", support::stamp(12), Some(T0 - 1)).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"v", 10));
        assert_eq!(engine.get(b"past").await.unwrap(), deleted(12));
        clock.advance_ms(99);
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"v", 10));
        clock.advance_ms(1);
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(10), "expired at exactly T0 + 100");
        assert_eq!(engine.get(b"forever").await.unwrap(), found(b"v", 11));
        // An older write does not come back from under the expired value...
        engine.put(b"k", b"older", support::stamp(9)).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(10));
        // ...a newer one replaces it, and the clock going back revives nothing it shouldn't.
        engine.put(b"k", b"newer", support::stamp(20)).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"newer", 20));
        clock.set_ms(T0);
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"newer", 20));
        engine.close().await.unwrap();
    });
}

#[test]
fn an_expired_value_shadows_an_older_value_in_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let opts = ttl_opts(dir.path(), &clock);
    support::run(move || async move {
        let (engine, _) = Engine::open(opts.clone()).await.unwrap();
        engine.put(b"k", b"old", support::stamp(10)).await.unwrap();
        support::fill(&engine, "f1-", 80, 1_000).await;
        wait_flushed(&engine, 1).await;
        // The older value is in a table now; the expiring one goes to the memtable.
        engine.put_with_expiry(b"k", b"new", support::stamp(20), Some(T0 + 50)).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"new", 20));
        clock.advance_ms(50);
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(20));
        // Both in tables (the expiring one in the newer table): still deleted, not "old".
        support::fill(&engine, "f2-", 80, 2_000).await;
        wait_flushed(&engine, 2).await;
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(20));
        // An older write arriving late (read repair, a hint) lands in the memtable; the
        // expired value in the table still wins over it.
        engine.put(b"k", b"late", support::stamp(15)).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(20));
        engine.close().await.unwrap();
        let (engine, _) = Engine::open(opts).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(20));
        engine.close().await.unwrap();
    });
}

#[test]
fn expiry_survives_a_restart_through_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let opts = ttl_opts(dir.path(), &clock);
    support::run(move || async move {
        {
            let (engine, _) = Engine::open(opts.clone()).await.unwrap();
            // Every record kind in one WAL: plain put (kind 1), delete (2), expiring put (3).
            engine.put(b"plain", b"p", support::stamp(1)).await.unwrap();
            engine.put(b"gone", b"g", support::stamp(2)).await.unwrap();
            engine.delete(b"gone", support::stamp(3)).await.unwrap();
            engine.put_with_expiry(b"k", b"v", support::stamp(4), Some(T0 + 100)).await.unwrap();
            engine.put(b"shadowed", b"old", support::stamp(5)).await.unwrap();
            engine
                .put_with_expiry(b"shadowed", b"new", support::stamp(6), Some(T0 + 100))
                .await
                .unwrap();
            // Dropped without close: a crash; recovery replays (and seals) the segment.
        }
        let (engine, report) = Engine::open(opts.clone()).await.unwrap();
        assert_eq!(report.records, 6);
        assert_eq!(report.tables, 0);
        assert_eq!(engine.get(b"plain").await.unwrap(), found(b"p", 1));
        assert_eq!(engine.get(b"gone").await.unwrap(), deleted(3));
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"v", 4));
        assert_eq!(engine.get(b"shadowed").await.unwrap(), found(b"new", 6));
        clock.advance_ms(100);
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(4));
        assert_eq!(engine.get(b"shadowed").await.unwrap(), deleted(6));
        assert_eq!(engine.get(b"plain").await.unwrap(), found(b"p", 1));
        engine.close().await.unwrap();
        // Once more after a clean close, and with the clock back before the expiry.
        clock.set_ms(T0);
        let (engine, _) = Engine::open(opts).await.unwrap();
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"v", 4));
        clock.set_ms(T0 + 100);
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(4));
        engine.close().await.unwrap();
    });
}

#[test]
fn expiry_survives_a_restart_through_an_sstable() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual(T0);
    let opts = ttl_opts(dir.path(), &clock);
    support::run(move || async move {
        {
            let (engine, _) = Engine::open(opts.clone()).await.unwrap();
            engine.put_with_expiry(b"k", b"v", support::stamp(1), Some(T0 + 100)).await.unwrap();
            engine
                .put_with_expiry(b"later", b"l", support::stamp(2), Some(T0 + 10_000))
                .await
                .unwrap();
            support::fill(&engine, "f-", 80, 100).await;
            wait_flushed(&engine, 1).await;
            engine.close().await.unwrap();
        }
        let (engine, report) = Engine::open(opts).await.unwrap();
        assert_eq!(report.tables, 1);
        // The expiring writes were flushed: only later filler records are left in the WAL.
        assert!(report.records < 80, "{report:?}");
        assert_eq!(engine.get(b"k").await.unwrap(), found(b"v", 1));
        assert_eq!(engine.get(b"later").await.unwrap(), found(b"l", 2));
        clock.advance_ms(100);
        assert_eq!(engine.get(b"k").await.unwrap(), deleted(1));
        assert_eq!(engine.get(b"later").await.unwrap(), found(b"l", 2));
        clock.advance_ms(10_000);
        assert_eq!(engine.get(b"later").await.unwrap(), deleted(2));
        assert_eq!(engine.get(b"f-0000").await.unwrap(), found(&value_of(0, 1024), 100));
        engine.close().await.unwrap();
    });
}
