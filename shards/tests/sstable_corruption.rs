//! Goal: damage anywhere in a table is reported as `ShardError::Corrupt` naming the file (and,
//! for a data block, the block's offset), never returned as data and never a panic.
//!
//! Method: build a small table (zstd and uncompressed), read its layout (blocks, index,
//! bloom, footer offsets) from a clean open, then for each case copy the file under its own
//! name into a fresh directory, flip one bit (or truncate) with plain `std::fs`, reopen and
//! query every key twice through a block cache (the second pass must agree with the first:
//! a damaged block is never cached, a good one is served from the cache). Finally flip many pseudo-random bits across the whole file and check that
//! each read is either the right answer or `Corrupt`.

mod support;

use kvs_shards::cache::BlockCache;
use kvs_shards::sstable::{
    Compression, SstEntry, SstValue, SstableBuilder, SstableOptions, SstableReader, TableId,
};
use kvs_shards::{ShardError, Stamp};
use std::path::{Path, PathBuf};
use std::rc::Rc;

const N: u64 = 2000;
const ID: TableId = TableId(5);

fn entries() -> Vec<SstEntry> {
    (0..N)
        .map(|i| SstEntry {
            key: format!("key-{i:06}").into_bytes(),
            stamp: Stamp { hlc: 1000 + i, node: 2 },
            value: if i % 9 == 0 {
                SstValue::Tombstone
            } else {
                SstValue::Value(format!("value-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes())
            },
            expires_at_ms: (i % 4 == 0).then_some(i),
        })
        .collect()
}

/// Where the regions of the table lie.
struct Layout {
    blocks: Vec<(u64, u64)>,
    index_offset: u64,
    bloom_offset: u64,
    footer_offset: u64,
    file_bytes: u64,
}

/// Builds the reference table in `dir` and returns its path, layout and bytes.
fn build(dir: &Path, compression: Compression) -> (PathBuf, Layout, Vec<u8>) {
    let d = dir.to_path_buf();
    let layout = support::run(move || async move {
        let opts = SstableOptions { compression, ..SstableOptions::default() };
        let mut b = SstableBuilder::create(&d, ID, opts, N).await.expect("create");
        for e in entries() {
            b.add(e.as_ref()).await.expect("add");
        }
        let (path, _) = b.finish().await.expect("finish");
        let r = SstableReader::open(&path).await.expect("open clean");
        let f = r.footer().clone();
        let layout = Layout {
            blocks: r.blocks().iter().map(|h| (h.offset, u64::from(h.stored_bytes))).collect(),
            index_offset: f.index_offset,
            bloom_offset: f.bloom_offset,
            footer_offset: r.file_bytes() - 128,
            file_bytes: r.file_bytes(),
        };
        r.close().await.expect("close");
        layout
    });
    let path = dir.join(ID.file_name());
    let bytes = std::fs::read(&path).expect("read");
    assert_eq!(bytes.len() as u64, layout.file_bytes);
    assert!(layout.blocks.len() >= 8, "enough blocks to aim at one");
    (path, layout, bytes)
}

/// What reading the damaged copy showed.
#[derive(Debug, Default)]
struct Outcome {
    /// The open failed with this `Corrupt` (offset, reason).
    open_corrupt: Option<(u64, String)>,
    /// Offsets named by `Corrupt` errors from `get`.
    get_corrupt: Vec<u64>,
    /// The iterator's `Corrupt` offset, if it failed.
    iter_corrupt: Option<u64>,
    /// Keys answered correctly.
    correct: u64,
}

/// Writes `bytes` as the table in a fresh directory and reads it all. Panics on any wrong
/// answer or any error other than `Corrupt` naming this file.
fn check(bytes: Vec<u8>) -> Outcome {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join(ID.file_name());
    std::fs::write(&path, &bytes).expect("write copy");
    support::run(move || async move {
        let mut out = Outcome::default();
        let corrupt_offset = |e: ShardError| match e {
            ShardError::Corrupt { path: p, offset, reason } => {
                assert_eq!(p, path, "Corrupt names the file");
                (offset, reason)
            }
            other => panic!("expected Corrupt, got {other:?}"),
        };
        let cache = Rc::new(BlockCache::new(1 << 20));
        let r = match SstableReader::open_with_cache(&path, Some(Rc::clone(&cache))).await {
            Ok(r) => r,
            Err(e) => {
                out.open_corrupt = Some(corrupt_offset(e));
                return out;
            }
        };
        let mut first = Vec::new();
        for pass in 0..2 {
            for (i, e) in entries().into_iter().enumerate() {
                let result = match r.get(&e.key).await {
                    Ok(got) => {
                        assert_eq!(got.as_ref(), Some(&e), "wrong answer from a damaged table");
                        None
                    }
                    Err(err) => Some(corrupt_offset(err).0),
                };
                if pass == 0 {
                    match result {
                        None => out.correct += 1,
                        Some(o) => out.get_corrupt.push(o),
                    }
                    first.push(result);
                } else {
                    assert_eq!(result, first[i], "cached read differs for key {i}");
                }
            }
        }
        for &o in &out.get_corrupt {
            assert!(cache.get((ID.0, o)).is_none(), "damaged block at {o} was cached");
        }
        if out.correct > 0 {
            assert!(cache.stats().hits > 0 && r.stats().cache_hits > 0, "{:?}", cache.stats());
        }
        let mut it = r.iter();
        let expected = entries();
        let mut n = 0;
        loop {
            match it.next().await {
                Ok(Some(e)) => {
                    assert_eq!(e, expected[n], "wrong entry from a damaged table");
                    n += 1;
                }
                Ok(None) => break,
                Err(err) => {
                    out.iter_corrupt = Some(corrupt_offset(err).0);
                    break;
                }
            }
        }
        r.close().await.expect("close");
        out
    })
}

fn flip(bytes: &[u8], at: u64, bit: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at as usize] ^= 1 << bit;
    b
}

fn targeted(compression: Compression) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, l, bytes) = build(tmp.path(), compression);

    // The clean copy reads back fully.
    let clean = check(bytes.clone());
    assert!(clean.open_corrupt.is_none() && clean.get_corrupt.is_empty());
    assert_eq!(clean.correct, N);

    // A data block: open succeeds, the keys of that block fail naming the block's offset,
    // every other key is answered, the iterator stops at that block.
    let (block_at, block_len) = l.blocks[3];
    let out = check(flip(&bytes, block_at + block_len / 2, 3));
    assert!(out.open_corrupt.is_none());
    assert!(!out.get_corrupt.is_empty(), "damaged block detected");
    assert!(out.get_corrupt.iter().all(|&o| o == block_at), "{:?}", out.get_corrupt);
    assert_eq!(out.correct + out.get_corrupt.len() as u64, N);
    assert_eq!(out.iter_corrupt, Some(block_at));
    // The trailer's crc itself.
    let out = check(flip(&bytes, block_at + block_len - 1, 0));
    assert!(out.get_corrupt.iter().all(|&o| o == block_at) && !out.get_corrupt.is_empty());

    // Index, bloom and footer: the open fails naming the region.
    for (at, what) in [
        (l.index_offset + 3, "index block"),
        (l.bloom_offset + 100, "bloom block"),
        (l.footer_offset + 30, "footer"),
        (l.footer_offset, "footer"),
        (l.file_bytes - 1, "footer"),
    ] {
        let out = check(flip(&bytes, at, 5));
        let (offset, reason) = out.open_corrupt.unwrap_or_else(|| panic!("{what} damage missed"));
        assert!(reason.starts_with(what), "{what}: {reason}");
        let region = match what {
            "index block" => l.index_offset,
            "bloom block" => l.bloom_offset,
            _ => l.footer_offset,
        };
        assert_eq!(offset, region, "{what}: {reason}");
    }

    // Truncated files.
    for len in [l.file_bytes - 1, l.file_bytes - 128, l.file_bytes / 2, 100, 0] {
        let out = check(bytes[..len as usize].to_vec());
        assert!(out.open_corrupt.is_some(), "truncated to {len} must not open");
    }
    // Extra bytes after the footer.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 10]);
    assert!(check(longer).open_corrupt.is_some());
}

#[test]
fn sstable_corruption_is_reported_uncompressed() {
    targeted(Compression::None);
}

#[test]
fn sstable_corruption_is_reported_zstd() {
    targeted(Compression::Zstd { level: 3 });
}

/// Many single-bit flips spread over the whole file: each read is right or `Corrupt`.
#[test]
fn sstable_random_bit_flips_never_return_wrong_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (_, l, bytes) = build(tmp.path(), Compression::Zstd { level: 1 });
    let mut x = 0x1234_5678_9abc_def0u64;
    let (mut at_open, mut at_get) = (0, 0);
    for _ in 0..60 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = x % l.file_bytes;
        let out = check(flip(&bytes, at, (x >> 40) as u8 % 8));
        if out.open_corrupt.is_some() {
            at_open += 1;
        } else {
            assert!(!out.get_corrupt.is_empty(), "flip at {at} went unnoticed");
            at_get += 1;
        }
    }
    println!("random flips: {at_open} caught at open, {at_get} caught by reads");
}
