//! Goal: no input from the network can crash the server or make it lose its footing; each bad
//! frame gets a clear error frame or a closed connection, and other clients are still served.
//! Method: a real server; for each kind of bad input, a fresh raw connection sends it, we read
//! what comes back, then a separate well-behaved client checks that the server still works.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::io::Read;
use std::time::Duration;

use kvs_wire::frame::{FrameHeader, MAGIC};
use kvs_wire::msg::{
    self, ArchivedErrorResponse, ArchivedGetResponse, Consistency, GetRequest, PutRequest,
};
use kvs_wire::{ErrorCode, Opcode};
use rand::{Rng, SeedableRng};
use support::{Raw, Server};

/// Reads until an error frame or close; returns the error code seen, if any.
fn error_or_close(raw: &mut Raw) -> Option<ErrorCode> {
    match raw.recv() {
        None => None,
        Some((h, body)) => {
            assert_eq!(h.opcode, Opcode::Error, "expected an error frame, got {h:?}");
            let e = msg::access::<ArchivedErrorResponse>(&body).expect("valid error body");
            assert!(!e.message.is_empty(), "error frames carry a message");
            Some(ErrorCode::from_u16(e.code.to_native()))
        }
    }
}

/// Then the connection must be closed by the server.
fn assert_closed(raw: &mut Raw) {
    let mut buf = [0u8; 64];
    match raw.stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the server to close the connection, got {other:?}"),
    }
}

fn still_serves(server: &Server, n: u64) {
    let mut raw = Raw::connect(&server.addr);
    let key = format!("health-{n}").into_bytes();
    let mut frame = Vec::new();
    msg::write_frame(
        &mut frame,
        Opcode::Put,
        false,
        1,
        &PutRequest {
            key: key.clone(),
            value: b"ok".to_vec(),
            ttl_ms: 0,
            consistency: Consistency::Default,
        },
    )
    .unwrap();
    raw.send(&frame);
    let (h, _) = raw.recv().expect("put answered");
    assert_eq!(h.opcode, Opcode::Put);
    // Responses to pipelined requests may come in any order: read after the put's answer.
    let mut frame = Vec::new();
    msg::write_frame(
        &mut frame,
        Opcode::Get,
        false,
        2,
        &GetRequest { key, consistency: Consistency::Default },
    )
    .unwrap();
    raw.send(&frame);
    let (h, body) = raw.recv().expect("get answered");
    assert_eq!(h.opcode, Opcode::Get);
    let v = msg::access::<ArchivedGetResponse>(&body).unwrap();
    assert_eq!(v.value.as_ref().map(|v| v.as_slice()), Some(&b"ok"[..]));
}

#[test]
fn bad_input_gets_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "2"]);
    let mut round = 0u64;
    let mut check = |server: &Server| {
        round += 1;
        still_serves(server, round);
    };

    // 1. Random bytes: an InvalidRequest error (bad magic) and a close, or just a close.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for _ in 0..20 {
        let mut raw = Raw::connect(&server.addr);
        let bytes: Vec<u8> = (0..rng.gen_range(1..4096)).map(|_| rng.gen()).collect();
        raw.send(&bytes);
        if let Some(code) = error_or_close(&mut raw) {
            assert_eq!(code, ErrorCode::InvalidRequest);
            assert_closed(&mut raw);
        }
    }
    check(&server);

    // 2. Wrong magic.
    let mut raw = Raw::connect(&server.shard_addr(0));
    let mut h = FrameHeader::request(Opcode::Get, 5, 0).encode();
    h[..4].copy_from_slice(&(MAGIC ^ 0xFFFF).to_le_bytes());
    raw.send(&h);
    assert_eq!(error_or_close(&mut raw), Some(ErrorCode::InvalidRequest));
    assert_closed(&mut raw);
    check(&server);

    // 3. A frame that claims a 4 GiB body: TooLarge with its request id, then close.
    let mut raw = Raw::connect(&server.addr);
    let mut h = FrameHeader::request(Opcode::Put, 77, 0).encode();
    h[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    raw.send(&h);
    let (eh, body) = raw.recv().expect("an error frame for the oversized frame");
    assert_eq!(eh.request_id, 77);
    let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
    assert_eq!(ErrorCode::from_u16(e.code.to_native()), ErrorCode::TooLarge);
    assert_closed(&mut raw);
    check(&server);

    // 4. A valid header with a garbage body: InvalidRequest for that request, and the
    //    connection stays usable because framing is intact.
    let mut raw = Raw::connect(&server.shard_addr(1));
    for op in [Opcode::Get, Opcode::Put, Opcode::Delete] {
        let garbage: Vec<u8> = (0..40).map(|_| rng.gen()).collect();
        let mut frame = FrameHeader::request(op, 9, garbage.len() as u32).encode().to_vec();
        frame.extend_from_slice(&garbage);
        raw.send(&frame);
        let (eh, body) = raw.recv().expect("an error frame for the garbage body");
        assert_eq!((eh.opcode, eh.request_id), (Opcode::Error, 9));
        let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
        assert_eq!(ErrorCode::from_u16(e.code.to_native()), ErrorCode::InvalidRequest);
    }
    let mut frame = Vec::new();
    msg::write_frame(
        &mut frame,
        Opcode::Get,
        false,
        10,
        &GetRequest { key: b"after-garbage".to_vec(), consistency: Consistency::Default },
    )
    .unwrap();
    raw.send(&frame);
    let (h, _) = raw.recv().expect("same connection still served");
    assert_eq!((h.opcode, h.request_id), (Opcode::Get, 10));
    check(&server);

    // 5. A 1 MiB key: TooLarge naming the limit; the connection stays open.
    let mut raw = Raw::connect(&server.addr);
    let mut frame = Vec::new();
    msg::write_frame(
        &mut frame,
        Opcode::Put,
        false,
        11,
        &PutRequest {
            key: vec![b'k'; 1 << 20],
            value: b"v".to_vec(),
            ttl_ms: 0,
            consistency: Consistency::Default,
        },
    )
    .unwrap();
    raw.send(&frame);
    let (h, body) = raw.recv().expect("answer to the 1 MiB key");
    assert_eq!((h.opcode, h.request_id), (Opcode::Error, 11));
    let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
    assert_eq!(ErrorCode::from_u16(e.code.to_native()), ErrorCode::TooLarge);
    assert!(e.message.as_str().contains("key_bytes_max"), "message: {}", e.message.as_str());
    check(&server);

    // 6. Empty key, a response frame from a client, an unknown opcode.
    let mut raw = Raw::connect(&server.addr);
    let mut frame = Vec::new();
    msg::write_frame(
        &mut frame,
        Opcode::Get,
        false,
        12,
        &GetRequest { key: Vec::new(), consistency: Consistency::Default },
    )
    .unwrap();
    msg::write_frame(
        &mut frame,
        Opcode::Get,
        true,
        13,
        &GetRequest { key: b"x".to_vec(), consistency: Consistency::Default },
    )
    .unwrap();
    raw.send(&frame);
    let mut ids: Vec<u64> = (0..2)
        .map(|_| {
            let (h, _) = raw.recv().expect("answered");
            assert_eq!(h.opcode, Opcode::Error);
            h.request_id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, vec![12, 13]);
    let mut h = FrameHeader::request(Opcode::Get, 14, 0).encode();
    h[6] = 0x55;
    raw.send(&h);
    assert_eq!(error_or_close(&mut raw), Some(ErrorCode::InvalidRequest));
    check(&server);

    // 7. A client that connects and vanishes mid-frame.
    for _ in 0..10 {
        let mut raw = Raw::connect(&server.addr);
        raw.send(&FrameHeader::request(Opcode::Put, 1, 1000).encode()[..]);
        raw.send(&[1, 2, 3]);
        drop(raw);
    }
    std::thread::sleep(Duration::from_millis(100));
    check(&server);

    assert!(server.is_running(), "server died; stderr:\n{}", server.stderr());
    assert!(!server.stderr().contains("panicked"), "server panicked:\n{}", server.stderr());
    assert_eq!(server.stop(), Some(0), "clean exit; stderr:\n{}", server.stderr());
}

/// A client that pipelines requests and never reads the answers must not grow the server's
/// memory: the node stops reading from it once its responses back up.
#[test]
fn a_client_that_never_reads_cannot_grow_server_memory() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "1"]);
    let before = server.rss_kib();
    let mut raw = Raw::connect(&server.addr);
    raw.stream.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    // Topology answers are ~1.3 KiB for a 24-byte request: the worst amplification we have.
    let mut batch = Vec::new();
    for i in 0..1000u64 {
        batch.extend_from_slice(&FrameHeader::request(Opcode::Topology, i, 0).encode());
    }
    let mut sent_bytes = 0usize;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        match raw.stream.write_all(&batch) {
            Ok(()) => sent_bytes += batch.len(),
            Err(_) => break, // the server stopped reading: back-pressure works
        }
    }
    let after = server.rss_kib();
    println!("sent {sent_bytes} bytes of requests; server RSS {before} KiB -> {after} KiB");
    assert!(after < before + 200 * 1024, "server RSS grew from {before} KiB to {after} KiB");
    still_serves(&server, 1000);
    drop(raw);
    assert_eq!(server.stop(), Some(0), "clean exit; stderr:\n{}", server.stderr());
}

/// Strangers announcing large gossip bodies (up to the 8 MiB gossip bound, beyond the client
/// bound) and sending them slowly: the node buffers at most 32 MiB of such bodies at once;
/// the connection past that is refused with Overloaded and closed, and the budget comes back
/// when the others go.
#[test]
fn large_unauthenticated_bodies_are_bounded_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--shards", "1"]);
    let announce = |raw: &mut Raw| {
        let len = 8 * 1024 * 1024 - 1024;
        raw.send(&FrameHeader::request(Opcode::GossipSyn, 9, len).encode());
        raw.send(&[0u8; 4096]); // a start of the body, never finished
    };
    let mut held: Vec<Raw> = Vec::new();
    for _ in 0..4 {
        let mut raw = Raw::connect(&server.addr);
        announce(&mut raw);
        held.push(raw);
    }
    // Each is being read once its header arrived; give the node a moment to see all four.
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = Raw::connect(&server.addr);
    announce(&mut fifth);
    assert_eq!(error_or_close(&mut fifth), Some(ErrorCode::Overloaded));
    assert_closed(&mut fifth);
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = Raw::connect(&server.addr);
    announce(&mut again);
    std::thread::sleep(Duration::from_millis(300));
    again.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut byte = [0u8; 1];
    match again.stream.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the budget came back: the node waits for the body, got {other:?}"),
    }
    still_serves(&server, 1);
}
