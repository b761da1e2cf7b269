//! Goal: put, get and delete work end to end through the `kvs` CLI against a real server, with
//! 1 and with 3 shards, and requests that land on a shard that does not own their key (or on
//! the node-level port) are forwarded inside the node.
//! Method: start `kvs server` processes on 127.0.0.1 ephemeral ports and drive them with the
//! CLI binary and with raw frames.

mod support;

use kvs_wire::msg::{self, ArchivedGetResponse, Consistency, GetRequest, PutRequest};
use kvs_wire::placement::{shard_of, token_of};
use kvs_wire::Opcode;
use support::{kvs, Raw, Server};

fn round_trip(shards: &str, sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", shards, "--sync", sync]);
    let addr = server.addr.as_str();
    assert_eq!(server.shard_ports.len(), shards.parse::<usize>().unwrap());

    let out = kvs(&["put", "greeting", "hello, world", "--addr", addr], None);
    assert!(out.status.success(), "put failed: {}", String::from_utf8_lossy(&out.stderr));
    let out = kvs(&["get", "greeting", "--addr", addr], None);
    assert_eq!(out.status.code(), Some(0), "get: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"hello, world");

    // Binary value from stdin, printed back raw.
    let binary: Vec<u8> = (0..=255u8).collect();
    let out = kvs(&["put", "bin", "-", "--addr", addr], Some(&binary));
    assert!(out.status.success(), "put -: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kvs(&["get", "bin", "--addr", addr], None).stdout, binary);

    // Many keys, so every shard owns some.
    for i in 0..20 {
        let k = format!("key-{i}");
        assert!(kvs(&["put", &k, &format!("v{i}"), "--addr", addr], None).status.success());
    }
    for i in 0..20 {
        let out = kvs(&["get", &format!("key-{i}"), "--addr", addr], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("v{i}"));
    }

    let out = kvs(&["delete", "greeting", "--addr", addr], None);
    assert!(out.status.success(), "delete: {}", String::from_utf8_lossy(&out.stderr));
    let out = kvs(&["get", "greeting", "--addr", addr], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));

    // A missing key never written.
    assert_eq!(kvs(&["get", "never-written", "--addr", addr], None).status.code(), Some(1));

    // An error exits 2 with its code and message.
    let big_key = "k".repeat(5000);
    let out = kvs(&["put", &big_key, "v", "--addr", addr], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TooLarge") && err.contains("key_bytes_max"), "stderr: {err}");

    // Nothing listening: exit 2, not a hang or a panic.
    let out = kvs(&["get", "x", "--addr", "127.0.0.1:1", "--timeout-ms", "500"], None);
    assert_eq!(out.status.code(), Some(2));

    let out = kvs(&["topology", "--addr", addr], None);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("shards {shards}")));

    // A clean stop and restart keeps everything, in either sync mode.
    assert_eq!(server.stop(), Some(0), "clean shutdown; stderr:\n{}", server.stderr());
    let server = Server::start(dir.path(), &["--shards", shards, "--sync", sync]);
    let addr = server.addr.as_str();
    assert_eq!(kvs(&["get", "bin", "--addr", addr], None).stdout, binary);
    for i in 0..20 {
        let out = kvs(&["get", &format!("key-{i}"), "--addr", addr], None);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("v{i}"));
    }
    assert_eq!(kvs(&["get", "greeting", "--addr", addr], None).status.code(), Some(1));
}

#[test]
fn cli_round_trip_one_shard() {
    round_trip("1", "always");
}

#[test]
fn cli_round_trip_three_shards() {
    round_trip("3", "always");
}

#[test]
fn cli_round_trip_periodic_sync() {
    round_trip("2", "periodic");
}

/// A key owned by shard 2, sent to the node-level port and to shard 0's port, is forwarded to
/// shard 2 and works; reading it through shard 2's own port sees the same value.
#[test]
fn key_on_shard_2_through_other_ports() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "3"]);
    let key = (0..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| shard_of(token_of(k), 3).0 == 2)
        .unwrap();
    let entries = [
        (server.addr.clone(), b"via-node-port".to_vec()),
        (server.shard_addr(0), b"via-shard-0".to_vec()),
    ];
    for (i, (addr, value)) in entries.iter().enumerate() {
        let mut raw = Raw::connect(addr);
        let mut frame = Vec::new();
        let id = 100 + i as u64;
        msg::write_frame(
            &mut frame,
            Opcode::Put,
            false,
            id,
            &PutRequest {
                key: key.clone(),
                value: value.clone(),
                ttl_ms: 0,
                consistency: Consistency::Default,
            },
        )
        .unwrap();
        raw.send(&frame);
        let (h, _) = raw.recv().expect("put answer");
        assert_eq!((h.opcode, h.request_id), (Opcode::Put, id));
        // Pipelined responses may come in any order, so the get goes after the put's answer.
        let mut frame = Vec::new();
        msg::write_frame(
            &mut frame,
            Opcode::Get,
            false,
            id + 10,
            &GetRequest { key: key.clone(), consistency: Consistency::Default },
        )
        .unwrap();
        raw.send(&frame);
        let (h, body) = raw.recv().expect("get answer");
        assert_eq!((h.opcode, h.request_id), (Opcode::Get, id + 10));
        let got = msg::access::<ArchivedGetResponse>(&body).unwrap();
        assert_eq!(got.value.as_ref().map(|v| v.as_slice()), Some(value.as_slice()));
        // The owner's own port sees it too.
        let out = kvs(&["get", std::str::from_utf8(&key).unwrap(), "--addr", &server.addr], None);
        assert_eq!(&out.stdout, value);
    }
    assert_eq!(server.stop(), Some(0), "clean shutdown; stderr:\n{}", server.stderr());
    let log = server.stderr();
    assert!(log.contains("forwarded_out"), "shutdown reports forwarding counters:\n{log}");
}
