//! Goal: `kvs put KEY VALUE --ttl SECONDS` writes a key that reads as found until its TTL has
//! passed and as missing after, also after a crash and restart; a later put without a TTL
//! replaces the expiring value; absurd TTLs are refused with `InvalidRequest`, by the CLI
//! (client side) and by the node (a raw frame that skips the client's check).
//! Method: a real `kvs server` on 127.0.0.1 ephemeral ports (two shards, so forwarding is
//! covered too), driven by the CLI binary and raw frames. The only real wait is the 1 s TTL,
//! polled every 50 ms and bounded at 5 s.
#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::time::{Duration, Instant};

use kvs_wire::limits::TTL_MS_MAX;
use kvs_wire::msg::{self, ArchivedErrorResponse, Consistency, PutRequest};
use kvs_wire::{ErrorCode, Opcode};
use support::{kvs, Raw, Server};

fn get(addr: &str, key: &str) -> Option<Vec<u8>> {
    let out = kvs(&["get", key, "--addr", addr], None);
    match out.status.code() {
        Some(0) => Some(out.stdout),
        Some(1) => None,
        other => panic!("get {key}: exit {other:?}: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

fn put(addr: &str, key: &str, value: &str, ttl: Option<&str>) {
    let mut args = vec!["put", key, value, "--addr", addr];
    if let Some(ttl) = ttl {
        args.extend(["--ttl", ttl]);
    }
    let out = kvs(&args, None);
    assert!(out.status.success(), "put {key}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_key_put_with_a_ttl_reads_as_missing_once_it_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "2"]);
    let addr = server.addr.clone();

    let start = Instant::now();
    put(&addr, "temp", "short-lived", Some("1"));
    put(&addr, "replaced", "expiring", Some("1"));
    put(&addr, "replaced", "lasting", None);
    put(&addr, "long", "hour", Some("3600"));
    put(&addr, "plain", "forever", None);
    let got = get(&addr, "temp");
    // The TTL counts from when the node stamped the put, after `start`: found, unless this
    // machine took a whole second to run the commands above.
    if start.elapsed() < Duration::from_millis(900) {
        assert_eq!(got.as_deref(), Some(&b"short-lived"[..]), "read right after the put");
    }

    // Poll until it is gone: never before 1 s after `start`, and within a bound.
    let gone_after = loop {
        let elapsed = start.elapsed();
        if get(&addr, "temp").is_none() {
            break elapsed;
        }
        assert!(elapsed < Duration::from_secs(5), "still found {elapsed:?} after a 1 s TTL");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(gone_after >= Duration::from_millis(990), "expired early: {gone_after:?}");
    assert_eq!(get(&addr, "replaced").as_deref(), Some(&b"lasting"[..]));
    assert_eq!(get(&addr, "long").as_deref(), Some(&b"hour"[..]));
    assert_eq!(get(&addr, "plain").as_deref(), Some(&b"forever"[..]));

    // A crash and restart replays the WAL, expiries included.
    server.kill9();
    let server = Server::start(dir.path(), &["--shards", "2"]);
    let addr = server.addr.clone();
    assert_eq!(get(&addr, "temp"), None);
    assert_eq!(get(&addr, "replaced").as_deref(), Some(&b"lasting"[..]));
    assert_eq!(get(&addr, "long").as_deref(), Some(&b"hour"[..]));
    assert_eq!(get(&addr, "plain").as_deref(), Some(&b"forever"[..]));
}

#[test]
fn absurd_ttls_are_refused_with_invalid_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--shards", "1"]);
    let addr = server.addr.as_str();

    // By the client: zero, and more than 10 years.
    let too_long = (TTL_MS_MAX / 1000 + 1).to_string();
    for ttl in ["0", too_long.as_str()] {
        let out = kvs(&["put", "k", "v", "--ttl", ttl, "--addr", addr], None);
        assert_eq!(out.status.code(), Some(2), "--ttl {ttl}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("InvalidRequest") && err.contains("TTL"), "--ttl {ttl}: {err}");
    }
    // Not a number: clap refuses it.
    let out = kvs(&["put", "k", "v", "--ttl", "soon", "--addr", addr], None);
    assert_eq!(out.status.code(), Some(2));
    // The longest allowed TTL is accepted.
    let longest = (TTL_MS_MAX / 1000).to_string();
    put(addr, "k", "v", Some(&longest));
    assert_eq!(get(addr, "k").as_deref(), Some(&b"v"[..]));

    // By the node, for a client that skips the check.
    let mut raw = Raw::connect(addr);
    let mut frame = Vec::new();
    let bad = PutRequest {
        key: b"k".to_vec(),
        value: b"w".to_vec(),
        ttl_ms: TTL_MS_MAX + 1,
        consistency: Consistency::Default,
    };
    msg::write_frame(&mut frame, Opcode::Put, false, 7, &bad).unwrap();
    raw.send(&frame);
    let (h, body) = raw.recv().expect("an answer");
    assert_eq!((h.opcode, h.request_id), (Opcode::Error, 7));
    let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
    assert_eq!(ErrorCode::from_u16(e.code.to_native()), ErrorCode::InvalidRequest);
    assert!(e.message.contains("ttl_ms"), "{}", e.message);
    assert_eq!(get(addr, "k").as_deref(), Some(&b"v"[..]), "the refused put changed nothing");
}
