//! Goal: a request's consistency works end to end on a single node (replication factor 1):
//! `--consistency one|quorum|all`, `--r 1` and `--w 1` are served by the local replica, a count
//! above the replication factor is refused with `InvalidRequest` naming the factor, conflicting
//! flags are refused by the CLI before anything is sent, and the client sends the consistency
//! it is given.
//! Method: start a real `kvs server` on 127.0.0.1 ephemeral ports and drive it with the CLI
//! binary, with the native client, and with raw frames carrying each consistency.

mod support;

use kvs_wire::client::{Client, ClientError, Consistency, ErrorDetail, PutOptions};
use kvs_wire::msg::{self, ArchivedErrorResponse, ArchivedGetResponse, GetRequest, PutRequest};
use kvs_wire::{ErrorCode, Opcode};
use support::{kvs, on_executor, Raw, Server};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn cli_consistency_on_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "2"]);
    let addr = server.addr.as_str();

    for (i, flags) in [
        &["--consistency", "all"][..],
        &["--consistency", "quorum"],
        &["--consistency", "one"],
        &["--w", "1"],
        &[],
    ]
    .iter()
    .enumerate()
    {
        let key = format!("k{i}");
        let value = format!("v{i}");
        let mut args = vec!["put", &key, &value, "--addr", addr];
        args.extend_from_slice(flags);
        let out = kvs(&args, None);
        assert!(out.status.success(), "put {flags:?}: {}", text(&out.stderr));
    }
    for (i, flags) in [
        &["--consistency", "all"][..],
        &["--consistency", "quorum"],
        &["--consistency", "one"],
        &["--r", "1"],
        &[],
    ]
    .iter()
    .enumerate()
    {
        let key = format!("k{i}");
        let mut args = vec!["get", &key, "--addr", addr];
        args.extend_from_slice(flags);
        let out = kvs(&args, None);
        assert_eq!(out.status.code(), Some(0), "get {flags:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("v{i}"));
    }
    let out = kvs(&["delete", "k0", "--addr", addr, "--consistency", "all"], None);
    assert!(out.status.success(), "delete --consistency all: {}", text(&out.stderr));
    let out = kvs(&["delete", "k1", "--addr", addr, "--w", "1"], None);
    assert!(out.status.success(), "delete --w 1: {}", text(&out.stderr));
    for key in ["k0", "k1"] {
        let out = kvs(&["get", key, "--addr", addr, "--r", "1"], None);
        assert_eq!(out.status.code(), Some(1), "{key} is deleted");
    }

    // More replicas than the node's replication factor: refused, naming the factor, and the
    // write is not applied.
    let out = kvs(&["put", "k2", "other", "--addr", addr, "--w", "2"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("InvalidRequest") && err.contains("w = 2 exceeds the replication factor 1"),
        "stderr: {err}"
    );
    assert_eq!(text(&kvs(&["get", "k2", "--addr", addr], None).stdout), "v2");
    let out = kvs(&["delete", "k2", "--addr", addr, "--w", "3"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("w = 3 exceeds the replication factor 1"));
    let out = kvs(&["get", "k2", "--addr", addr, "--r", "2"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("r = 2 exceeds the replication factor 1"));

    // Conflicting flags never reach the server: clap refuses them with its usage exit code.
    for args in [
        &["get", "k2", "--addr", addr, "--consistency", "all", "--r", "1"][..],
        &["put", "k2", "x", "--addr", addr, "--consistency", "one", "--w", "1"],
        &["delete", "k2", "--addr", addr, "--w", "1", "--consistency", "all"],
    ] {
        let out = kvs(args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        assert!(err.contains("cannot be used with"), "{args:?}: {err}");
    }
    let out = kvs(&["put", "k2", "x", "--addr", addr, "--w", "0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--w"), "{}", text(&out.stderr));
    assert_eq!(text(&kvs(&["get", "k2", "--addr", addr], None).stdout), "v2");

    assert_eq!(server.stop(), Some(0), "clean shutdown; stderr:\n{}", server.stderr());
}

/// The native client's per-request consistency against a real node, and raw frames with each
/// consistency through the node-level port (forwarded to the owning shard).
#[test]
fn client_and_raw_frames_carry_consistency() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--shards", "2"]);
    let addr = server.addr.clone();
    on_executor(move || async move {
        let c = Client::connect(&addr, support::no_retry_client_opts()).await.unwrap();
        assert_eq!(c.topology().replication_factor, 1);
        let opts = PutOptions { ttl: None, consistency: Some(Consistency::All) };
        let s1 = c.put_with(b"ck", b"v1", opts).await.unwrap();
        let (v, s) = c.get_with(b"ck", Consistency::Count(1)).await.unwrap().unwrap();
        assert_eq!((v.as_slice(), s), (&b"v1"[..], s1));
        let err = c.get_with(b"ck", Consistency::Count(2)).await.unwrap_err();
        match &err {
            ClientError::Server { code, message, detail } => {
                assert_eq!(*code, ErrorCode::InvalidRequest);
                assert_eq!(*detail, ErrorDetail::None);
                assert!(message.contains("replication factor 1"), "{message}");
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
        c.delete_with(b"ck", Consistency::Quorum).await.unwrap();
        assert_eq!(c.get_with(b"ck", Consistency::All).await.unwrap(), None);
        c.close().await;
    });

    let mut raw = Raw::connect(&server.addr);
    let levels = [
        Consistency::Default,
        Consistency::One,
        Consistency::Quorum,
        Consistency::All,
        Consistency::Count(1),
    ];
    for (i, c) in levels.into_iter().enumerate() {
        let id = i as u64 * 2 + 1;
        let key = format!("raw{i}").into_bytes();
        let mut frame = Vec::new();
        let put = PutRequest { key: key.clone(), value: b"x".to_vec(), ttl_ms: 0, consistency: c };
        msg::write_frame(&mut frame, Opcode::Put, false, id, &put).unwrap();
        raw.send(&frame);
        let (h, _) = raw.recv().expect("put answer");
        assert_eq!((h.opcode, h.request_id), (Opcode::Put, id), "{c:?}");
        let mut frame = Vec::new();
        msg::write_frame(
            &mut frame,
            Opcode::Get,
            false,
            id + 1,
            &GetRequest { key, consistency: c },
        )
        .unwrap();
        raw.send(&frame);
        let (h, body) = raw.recv().expect("get answer");
        assert_eq!((h.opcode, h.request_id), (Opcode::Get, id + 1), "{c:?}");
        let got = msg::access::<ArchivedGetResponse>(&body).unwrap();
        assert_eq!(got.value.as_ref().map(|v| v.as_slice()), Some(&b"x"[..]));
    }
    // Count(0) from a client that skips the client crate's check: InvalidRequest, and the
    // connection stays usable.
    for (id, c) in [(100u64, Consistency::Count(0)), (101, Consistency::Count(255))] {
        let mut frame = Vec::new();
        let get = GetRequest { key: b"raw0".to_vec(), consistency: c };
        msg::write_frame(&mut frame, Opcode::Get, false, id, &get).unwrap();
        raw.send(&frame);
        let (h, body) = raw.recv().expect("error answer");
        assert_eq!((h.opcode, h.request_id), (Opcode::Error, id));
        let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
        assert_eq!(ErrorCode::from_u16(e.code.to_native()), ErrorCode::InvalidRequest);
        let want = if c == Consistency::Count(0) { "r = 0" } else { "r = 255 exceeds" };
        assert!(e.message.as_str().contains(want), "{}", e.message.as_str());
    }
    let mut frame = Vec::new();
    msg::write_empty_frame(&mut frame, Opcode::Ping, false, 102);
    raw.send(&frame);
    assert_eq!(raw.recv().expect("ping").0.request_id, 102);
}
