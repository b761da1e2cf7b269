//! Goal: a WAL whose newest segment ends in a torn or garbled record still recovers: the server
//! starts, says it truncated the tail, and keeps every record before it.
//! Method: write keys one at a time (so the WAL order is the key order), kill -9, garble the
//! last bytes of the newest segment's data (or append junk after it), restart, read back.

mod support;

use std::path::{Path, PathBuf};

use support::{kvs, Server};

const KEYS: usize = 300;

fn newest_segment(data_dir: &Path) -> PathBuf {
    let wal = data_dir.join("shard-0").join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap_or_else(|e| panic!("{}: {e}", wal.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a WAL segment")
}

/// Offset just past the last non-zero byte: the end of the last record (segments are
/// preallocated and zero-padded after it).
fn data_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b != 0).map(|p| p + 1).expect("segment has data")
}

fn write_keys(server: &Server) {
    for i in 0..KEYS {
        let out = kvs(
            &[
                "put",
                &format!("key-{i:04}"),
                &format!("value-{i:04}-{}", "y".repeat(40)),
                "--addr",
                &server.addr,
            ],
            None,
        );
        assert!(out.status.success(), "put {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn read_back(server: &Server, keep: usize) -> usize {
    let mut found = 0;
    for i in 0..KEYS {
        let out = kvs(&["get", &format!("key-{i:04}"), "--addr", &server.addr], None);
        if i < keep {
            assert_eq!(
                out.status.code(),
                Some(0),
                "key-{i:04} lost; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("value-{i:04}-{}", "y".repeat(40))
            );
        }
        if out.status.code() == Some(0) {
            found += 1;
        }
    }
    found
}

#[test]
fn garbled_last_record_is_truncated_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "1"]);
    write_keys(&server);
    server.kill9();

    let seg = newest_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = data_end(&bytes);
    for b in &mut bytes[end - 8..end] {
        *b ^= 0x5A;
    }
    std::fs::write(&seg, &bytes).unwrap();

    let server = Server::start(dir.path(), &["--shards", "1"]);
    let log = server.stderr().to_lowercase();
    assert!(
        log.contains("torn") || log.contains("truncat"),
        "recovery must report the truncation:\n{log}"
    );
    let found = read_back(&server, KEYS - 1);
    assert_eq!(found, KEYS - 1, "only the garbled last record is dropped");
    // The store keeps working after the repair, and the repaired WAL replays cleanly again.
    let out = kvs(&["put", "after", "repair", "--addr", &server.addr], None);
    assert!(out.status.success());
    drop(server);
    let server = Server::start(dir.path(), &["--shards", "1"]);
    assert_eq!(kvs(&["get", "after", "--addr", &server.addr], None).stdout, b"repair");
    assert_eq!(read_back(&server, KEYS - 1), KEYS - 1);
}

#[test]
fn junk_after_the_last_record_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "1"]);
    write_keys(&server);
    server.kill9();

    // A torn append: the start of a record that claims more bytes than were written.
    let seg = newest_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let end = data_end(&bytes);
    let junk = [0x40, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3];
    if bytes.len() < end + junk.len() {
        bytes.resize(end + junk.len(), 0);
    }
    bytes[end..end + junk.len()].copy_from_slice(&junk);
    std::fs::write(&seg, &bytes).unwrap();

    let server = Server::start(dir.path(), &["--shards", "1"]);
    let log = server.stderr().to_lowercase();
    assert!(
        log.contains("torn") || log.contains("truncat"),
        "recovery must report the truncation:\n{log}"
    );
    assert_eq!(read_back(&server, KEYS), KEYS, "every record before the junk is kept");
}
