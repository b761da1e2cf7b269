//! Goal: a flipped bit in an SSTable's data block, index block, bloom block or footer, or in
//! the manifest, is detected and reported with the damaged file's name: damage that makes a
//! shard unusable (footer, index, bloom, manifest) stops the node at start with a non-zero exit
//! and no panic; a damaged data block fails only the reads (and compactions) that need it,
//! with an error naming the file, while every other key reads fine and the node keeps running.
//!
//! Method: a real `kvs server` with one shard and a 1 MiB memtable is filled with unique keys
//! (each key lives in exactly one place) until it has flushed three SSTables, then stopped
//! cleanly. The test opens the manifest and one table with `kvs_shards` (the node is stopped)
//! to locate the regions from the footer and to learn which keys the middle data block holds.
//! For each case it copies the data directory, flips one bit in the region, and restarts a node
//! on the copy. The data-block case restarts with `--level0-file-trigger 2`, so a compaction
//! reads the damaged block at once: it must fail, log the file and be retried, without taking
//! the node down. Uncompressed tables cover every region; a zstd image repeats the data-block
//! case (the checksum covers the compressed bytes).

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvs_shards::sstable::format::FOOTER_BYTES;
use kvs_wire::client::{Client, ClientError, ClientOptions};
use support::{kvs, kvs_bin, on_executor, Server};

/// Keys written per batch while filling the node.
const BATCH_KEYS: u64 = 500;
/// Batches at most (about 15 MiB): the node flushes three tables long before.
const BATCHES_MAX: u64 = 100;
/// Tables to flush before stopping (below the default level-0 trigger of 4, so the image
/// holds exactly the flushed tables).
const TABLES_WANTED: u64 = 3;
const START_WAIT: Duration = Duration::from_secs(60);
const COMPACTION_FAILURE_WAIT: Duration = Duration::from_secs(30);

fn key(i: u64) -> String {
    format!("key-{i:06}")
}

/// About 300 bytes, partly varied so zstd blocks hold a realistic number of entries.
fn value(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = format!("value-{i}-").into_bytes();
    while v.len() < 300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(if x.is_multiple_of(4) { b'a' + (x % 26) as u8 } else { b'.' });
    }
    v
}

/// A filled, cleanly stopped data directory.
struct Image {
    dir: tempfile::TempDir,
    keys: u64,
    compression: &'static str,
}

fn build_image(compression: &'static str) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &["--shards", "1", "--memtable-mb", "1", "--compression", compression],
    );
    let addr = server.addr.clone();
    let keys = on_executor(move || async move {
        let client = Rc::new(Client::connect(&addr, ClientOptions::default()).await.unwrap());
        let mut next = 0u64;
        for _ in 0..BATCHES_MAX {
            let mut tasks = Vec::new();
            for lane in 0..32u64 {
                let client = client.clone();
                let base = next;
                tasks.push(glommio::spawn_local(async move {
                    let mut i = base + lane;
                    while i < base + BATCH_KEYS {
                        client.put(key(i).as_bytes(), &value(i)).await.expect("put");
                        i += 32;
                    }
                }));
            }
            for t in tasks {
                t.await;
            }
            next += BATCH_KEYS;
            let stats = client.stats().await.expect("stats");
            let tables: u64 = stats
                .shards
                .iter()
                .flat_map(|s| &s.counters)
                .filter(|c| c.name == "tables")
                .map(|c| c.value)
                .sum();
            if tables >= TABLES_WANTED {
                break;
            }
        }
        client.close().await;
        next
    });
    assert_eq!(server.stop(), Some(0), "clean stop; stderr:\n{}", server.stderr());
    Image { dir, keys, compression }
}

/// Where the regions of one table are, and which keys its middle data block holds.
#[derive(Debug)]
struct Layout {
    manifest: PathBuf,
    table: PathBuf,
    file_bytes: u64,
    index: (u64, u64),
    bloom: (u64, u64),
    block: (u64, u64),
    block_keys: Vec<String>,
}

fn shard_dir(data: &Path) -> PathBuf {
    data.join("shard-0")
}

fn layout(data: &Path) -> Layout {
    let dir = shard_dir(data);
    on_executor(move || async move {
        let manifest = kvs_shards::manifest::Manifest::open(&dir).await.expect("manifest");
        let tables: Vec<_> = manifest.state().tables().cloned().collect();
        assert!(tables.len() as u64 >= TABLES_WANTED, "tables: {tables:?}");
        let meta = tables.first().unwrap();
        let table = dir.join(kvs_shards::sstable::TableId(meta.id.0).file_name());
        let reader = kvs_shards::sstable::SstableReader::open(&table).await.expect("open table");
        let blocks = reader.blocks().to_vec();
        assert!(blocks.len() >= 3, "{} holds {} blocks", table.display(), blocks.len());
        let i = blocks.len() / 2;
        let (lo, hi) = (blocks[i - 1].last_key.clone(), blocks[i].last_key.clone());
        let mut block_keys = Vec::new();
        let mut it = reader.iter();
        while let Some(e) = it.next().await.expect("intact table reads") {
            if e.key > lo && e.key <= hi {
                block_keys.push(String::from_utf8(e.key).unwrap());
            }
        }
        let f = reader.footer().clone();
        let out = Layout {
            manifest: manifest.path(),
            table: table.clone(),
            file_bytes: reader.file_bytes(),
            index: (f.index_offset, f.index_bytes),
            bloom: (f.bloom_offset, f.bloom_bytes),
            block: (blocks[i].offset, u64::from(blocks[i].stored_bytes)),
            block_keys,
        };
        reader.close().await.unwrap();
        assert!(!out.block_keys.is_empty());
        out
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A copy of `image` with bit 3 of the byte at `offset` of `file` (a path in `image`) flipped.
fn damaged_copy(image: &Image, file: &Path, offset: u64) -> (tempfile::TempDir, PathBuf) {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(image.dir.path(), copy.path());
    let target = copy.path().join(file.strip_prefix(image.dir.path()).unwrap());
    let mut bytes = std::fs::read(&target).unwrap();
    let at = usize::try_from(offset).unwrap();
    assert!(at < bytes.len(), "offset {offset} in {} of {} bytes", target.display(), bytes.len());
    bytes[at] ^= 0x08;
    std::fs::write(&target, bytes).unwrap();
    (copy, target)
}

/// Runs `kvs server` on `data` and expects it to exit without becoming ready; returns its
/// exit code and stderr.
fn start_expecting_refusal(data: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(kvs_bin())
        .args(["server", "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvs server");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + START_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kvs server on damaged data neither exited nor failed within {START_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(!out.contains("kvs server ready"), "the node started on damaged data: {out}");
    (status.code(), err)
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Flips a bit at `offset` of `file` in a copy of `image`; the node must refuse to start,
/// name the file, and not panic.
fn expect_refusal(image: &Image, what: &str, file: &Path, offset: u64) {
    let (copy, _) = damaged_copy(image, file, offset);
    let (code, stderr) = start_expecting_refusal(copy.path());
    let name = file_name(file);
    println!("{what}: exit {code:?}: {}", stderr.lines().find(|l| l.contains(&name)).unwrap_or(""));
    assert!(code.is_some_and(|c| c != 0), "{what}: exit code {code:?}; stderr:\n{stderr}");
    assert!(stderr.contains(&name), "{what}: stderr does not name {name}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: the node panicked:\n{stderr}");
}

/// Flips a bit in the middle data block; the node must start, fail exactly the reads of that
/// block's keys with an error naming the file, serve every other key, survive the failing
/// compaction, and stop cleanly.
fn expect_damaged_block_reported(image: &Image, layout: &Layout) {
    let (block_offset, block_bytes) = layout.block;
    let (copy, _) = damaged_copy(image, &layout.table, block_offset + block_bytes / 2);
    let mut server = Server::start(
        copy.path(),
        &["--shards", "1", "--level0-file-trigger", "2", "--compression", image.compression],
    );
    let name = file_name(&layout.table);
    let damaged: BTreeSet<String> = layout.block_keys.iter().cloned().collect();
    let keys = image.keys;
    let addr = server.addr.clone();
    let (errors, fine) = on_executor(move || async move {
        let client = Client::connect(&addr, ClientOptions::default()).await.unwrap();
        let mut errors = BTreeMap::new();
        let mut fine = 0u64;
        for i in 0..keys {
            let k = key(i);
            match client.get(k.as_bytes()).await {
                Ok(Some((v, _))) if v == value(i) && !damaged.contains(&k) => fine += 1,
                Err(ClientError::Server { message, .. }) if damaged.contains(&k) => {
                    errors.insert(k, message);
                }
                other => panic!(
                    "{k} (in the damaged block: {}): {:?}",
                    damaged.contains(&k),
                    other.map(|o| o.map(|(v, _)| String::from_utf8_lossy(&v).into_owned()))
                ),
            }
        }
        client.close().await;
        (errors, fine)
    });
    assert_eq!(errors.len(), layout.block_keys.len(), "every key of the damaged block fails");
    for (k, message) in &errors {
        assert!(message.contains(&name), "{k}: the error does not name {name}: {message}");
    }
    println!(
        "data block ({}): {} keys fail, e.g. {:?}; {fine} other keys read fine",
        image.compression,
        errors.len(),
        errors.values().next()
    );
    assert_eq!(fine, keys - errors.len() as u64);

    // The CLI reports it too, with a non-zero exit.
    let k = layout.block_keys.first().unwrap();
    let out = kvs(&["get", k, "--addr", &server.addr], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kvs get {k} on a damaged block must fail");
    assert!(stderr.contains(&name), "kvs get {k}: {stderr}");

    // Level 0 holds 3 tables and the trigger is 2: a compaction reads the damaged block, fails
    // and is retried with backoff; its log names the file.
    let deadline = Instant::now() + COMPACTION_FAILURE_WAIT;
    while !server.stderr().lines().any(|l| l.contains("compaction failed") && l.contains(&name)) {
        assert!(
            Instant::now() < deadline,
            "no compaction failure naming {name} was logged; stderr:\n{}",
            server.stderr()
        );
        assert!(server.is_running(), "the node exited; stderr:\n{}", server.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.is_running(), "the node exited; stderr:\n{}", server.stderr());
    let out = kvs(&["get", &key(0), "--addr", &server.addr], None);
    assert!(
        out.status.success() || layout.block_keys.contains(&key(0)),
        "the node still serves reads after the failed compaction"
    );
    assert_eq!(server.stop(), Some(0), "clean stop; stderr:\n{}", server.stderr());
    assert!(!server.stderr().contains("panicked"), "the node panicked:\n{}", server.stderr());
}

#[test]
fn flipped_bits_are_detected_and_reported_with_the_file_name() {
    let image = build_image("none");
    let l = layout(image.dir.path());
    println!(
        "{} keys; damaging {} ({} bytes: index {:?}, bloom {:?}, block {:?} holding {} keys) and {}",
        image.keys,
        l.table.display(),
        l.file_bytes,
        l.index,
        l.bloom,
        l.block,
        l.block_keys.len(),
        l.manifest.display()
    );
    let footer_at = l.file_bytes - FOOTER_BYTES;
    expect_refusal(&image, "footer index_offset", &l.table, footer_at + 50);
    expect_refusal(&image, "footer magic", &l.table, footer_at + 2);
    expect_refusal(&image, "index block", &l.table, l.index.0 + l.index.1 / 2);
    expect_refusal(&image, "bloom block", &l.table, l.bloom.0 + l.bloom.1 / 2);
    let manifest_bytes = std::fs::metadata(&l.manifest).unwrap().len();
    expect_refusal(&image, "manifest header", &l.manifest, 17);
    expect_refusal(&image, "manifest body", &l.manifest, manifest_bytes / 2);
    expect_damaged_block_reported(&image, &l);
}

#[test]
fn flipped_bit_in_a_zstd_data_block_is_reported_with_the_file_name() {
    let image = build_image("zstd");
    let l = layout(image.dir.path());
    expect_damaged_block_reported(&image, &l);
}
