//! Goal: a table built by `SstableBuilder` answers every point read and iterates exactly the
//! entries it was given (values, tombstones, expiries, stamps, sizes from empty to larger
//! than a block), with and without zstd; absent keys are mostly turned away by the bloom
//! filter (about 1% false positives at 10 bits per key); misuse is refused; a builder that
//! never finishes leaves only a `.tmp` file.
//!
//! Method: generate 50k entries from a fixed seed, build one table per compression setting
//! in a temp dir, reopen it, query every key and 50k absent keys inside the key range, and
//! compare the iterator's output with the input. Sizes and the measured false-positive rate
//! are printed (`--nocapture`).

mod support;

use kvs_shards::sstable::{
    Compression, EntryRef, SstEntry, SstValue, SstableBuilder, SstableOptions, SstableReader,
    TableId,
};
use kvs_shards::{ShardError, Stamp};
use std::path::Path;

const N: u64 = 50_000;

/// A small deterministic generator (splitmix64), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Entry `i`: key `k<i, 8 digits>` plus a varied suffix, every 7th a tombstone, every 5th with
/// an expiry, value sizes mostly small, some empty, a few larger than a 4 KiB block.
fn entries() -> Vec<SstEntry> {
    let mut rng = Rng(0x5eed);
    (0..N)
        .map(|i| {
            let suffix_len = (rng.next() % 24) as usize;
            let mut key = format!("k{i:08}").into_bytes();
            key.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, suffix_len));
            let value = if i % 7 == 3 {
                SstValue::Tombstone
            } else {
                let len = match rng.next() % 100 {
                    0 => 6000 + (rng.next() % 20_000) as usize,
                    1..=5 => 0,
                    _ => (rng.next() % 300) as usize,
                };
                // Half the values compress well, half are noise.
                let v: Vec<u8> = if i % 2 == 0 {
                    (0..len).map(|j| b"abcdefgh"[j % 8]).collect()
                } else {
                    (0..len).map(|_| rng.next() as u8).collect()
                };
                SstValue::Value(v)
            };
            SstEntry {
                key,
                stamp: Stamp { hlc: rng.next() >> 8, node: i % 5 },
                value,
                expires_at_ms: (i % 5 == 1).then_some(1_700_000_000_000 + i),
            }
        })
        .collect()
}

async fn build(dir: &Path, id: TableId, opts: SstableOptions, input: &[SstEntry]) -> u64 {
    let mut b = SstableBuilder::create(dir, id, opts, input.len() as u64).await.expect("create");
    for e in input {
        b.add(e.as_ref()).await.expect("add");
    }
    let (path, bytes) = b.finish().await.expect("finish");
    assert_eq!(path, dir.join(id.file_name()));
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), bytes);
    bytes
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn round_trip(compression: Compression) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let (bytes, fp_rate, stats) = support::run(move || async move {
        let input = entries();
        let opts = SstableOptions { compression, ..SstableOptions::default() };
        let id = TableId(7);
        let bytes = build(&dir, id, opts, &input).await;
        assert_eq!(names(&dir), vec![id.file_name()], "only the finished table remains");

        let r = SstableReader::open(dir.join(id.file_name())).await.expect("open");
        assert_eq!(r.footer().entry_count, N);
        assert_eq!(
            r.footer().tombstone_count,
            input.iter().filter(|e| e.value == SstValue::Tombstone).count() as u64
        );
        assert_eq!(r.min_key(), input[0].key.as_slice());
        assert_eq!(r.max_key(), input[input.len() - 1].key.as_slice());
        assert_eq!(r.max_stamp(), input.iter().map(|e| e.stamp).max().expect("max"));
        assert_eq!(r.id(), id);

        for e in &input {
            let got = r.get(&e.key).await.expect("get");
            assert_eq!(got.as_ref(), Some(e), "key {:?}", String::from_utf8_lossy(&e.key));
        }
        let after_hits = r.stats();
        assert_eq!(after_hits.bloom_negatives, 0, "no false negatives");

        // Absent keys inside the range: `k<i>` plus a suffix no entry has.
        let absent = N;
        for i in 0..absent {
            let key = format!("k{i:08}~absent").into_bytes();
            assert_eq!(r.get(&key).await.expect("get absent"), None);
        }
        let s = r.stats();
        let fp = s.bloom_false_positives - after_hits.bloom_false_positives;
        let fp_rate = fp as f64 / absent as f64;
        assert_eq!(s.bloom_negatives + fp + s.range_misses, absent);

        let mut it = r.iter();
        let mut n = 0usize;
        while let Some(e) = it.next().await.expect("iter") {
            assert_eq!(&e, &input[n]);
            n += 1;
        }
        assert_eq!(n, input.len());
        assert_eq!(it.next().await.expect("iter after end"), None);
        r.close().await.expect("close");
        (bytes, fp_rate, s)
    });
    println!(
        "sstable {compression:?}: {N} entries, {bytes} bytes; bloom false positives {:.3}% \
         ({} negatives); stats {stats:?}",
        fp_rate * 100.0,
        stats.bloom_negatives
    );
    assert!(fp_rate < 0.02, "false-positive rate {fp_rate} should be about 1%");
}

#[test]
fn sstable_round_trip_uncompressed() {
    round_trip(Compression::None);
}

#[test]
fn sstable_round_trip_zstd() {
    round_trip(Compression::Zstd { level: 3 });
}

#[test]
fn sstable_build_is_deterministic_and_block_size_configurable() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    support::run(move || async move {
        let input: Vec<SstEntry> = entries().into_iter().take(3000).collect();
        for (id, block_bytes) in [(1, 1024), (2, 1024), (3, 16 * 1024)] {
            let opts = SstableOptions { block_bytes, ..SstableOptions::default() };
            build(&dir, TableId(id), opts, &input).await;
        }
        let read = |id: u64| std::fs::read(dir.join(TableId(id).file_name())).expect("read");
        // Same entries, same id, same options: the same bytes except the footer's table id,
        // its crc and the id-seeded bloom seed/bits.
        assert_eq!(read(1).len(), read(2).len());
        let r1 = SstableReader::open(dir.join(TableId(1).file_name())).await.expect("open");
        let r3 = SstableReader::open(dir.join(TableId(3).file_name())).await.expect("open");
        let data_end = r1.footer().index_offset as usize;
        assert_eq!(read(1)[..data_end], read(2)[..data_end], "data blocks are deterministic");
        assert!(r1.blocks().len() > 4 * r3.blocks().len(), "smaller blocks, more of them");
        for h in r1.blocks() {
            // Cut before passing 1 KiB unless the block is one large entry (values of 6000+
            // bytes are the only entries above 1 KiB).
            assert!(h.raw_bytes <= 1024 || h.raw_bytes > 6000, "{h:?}");
        }
        for e in &input {
            assert_eq!(r3.get(&e.key).await.expect("get").as_ref(), Some(e));
        }
        r1.close().await.expect("close");
        r3.close().await.expect("close");
    });
}

#[test]
fn sstable_builder_refuses_misuse() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    support::run(move || async move {
        let bad = SstableOptions { block_bytes: 100, ..SstableOptions::default() };
        assert!(matches!(
            SstableBuilder::create(&dir, TableId(1), bad, 10).await,
            Err(ShardError::InvalidOptions { .. })
        ));

        let e = |k: &'static [u8]| EntryRef {
            key: k,
            stamp: Stamp { hlc: 1, node: 1 },
            value: kvs_shards::sstable::SstValueRef::Value(b"v"),
            expires_at_ms: None,
        };
        let mut b = SstableBuilder::create(&dir, TableId(2), SstableOptions::default(), 10)
            .await
            .expect("create");
        b.add(e(b"b")).await.expect("add");
        assert!(b.add(e(b"b")).await.is_err(), "duplicate key");
        assert!(b.add(e(b"a")).await.is_err(), "decreasing key");
        let big = vec![0u8; 70_000];
        let too_long = EntryRef { key: &big, ..e(b"c") };
        assert!(matches!(b.add(too_long).await, Err(ShardError::KeyTooLarge { .. })));
        b.add(e(b"c")).await.expect("add after refusals");
        b.finish().await.expect("finish");

        let empty = SstableBuilder::create(&dir, TableId(3), SstableOptions::default(), 0)
            .await
            .expect("create");
        assert!(empty.finish().await.is_err(), "a table needs an entry");

        let aborted = SstableBuilder::create(&dir, TableId(4), SstableOptions::default(), 1)
            .await
            .expect("create");
        aborted.abort().await.expect("abort");
        // The refused empty table stays behind as a .tmp, like a crash.
        assert_eq!(
            names(&dir),
            vec![TableId(2).file_name(), TableId(3).temp_file_name()],
            "abort removed its .tmp; finish made 2 visible"
        );
    });
}

/// A crash before `finish` (here: the builder and its executor dropped mid-table) leaves only
/// `<id>.sst.tmp`, never a `.sst`. Recovery (next session, in the engine) removes stray
/// `.tmp` files; nothing ever opens one.
#[test]
fn sstable_crash_before_finish_leaves_only_tmp() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let d = dir.clone();
    support::run(move || async move {
        let mut b = SstableBuilder::create(&d, TableId(9), SstableOptions::default(), N)
            .await
            .expect("create");
        for e in entries().iter().take(20_000) {
            b.add(e.as_ref()).await.expect("add");
        }
        drop(b);
    });
    assert_eq!(names(&dir), vec![TableId(9).temp_file_name()]);
    assert!(kvs_shards::sstable::is_temp_file_name(&TableId(9).temp_file_name()));
    assert_eq!(TableId::parse_file_name(&TableId(9).temp_file_name()), None);
}
