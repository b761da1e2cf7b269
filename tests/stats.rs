//! Goal: a Stats request on any port of a node answers with every shard's counters, the counters
//! reflect the work done, `kvs stats` prints them (table and JSON) with the usual exit codes,
//! and a malformed Stats request gets an error frame without hurting the server.
//! Method: a real `kvs server` with 3 shards; writes, reads and deletes through the client, then
//! `kvs stats --json` parsed with serde_json, raw Stats frames on the node port and on shard
//! ports, and bad Stats frames followed by requests that must still work.

mod support;

use kvs_wire::client::{Client, ClientOptions};
use kvs_wire::frame::FrameHeader;
use kvs_wire::msg::{self, ArchivedErrorResponse, ArchivedStatsResponse, StatsResponse};
use kvs_wire::{ErrorCode, Opcode};
use serde_json::Value;
use support::{kvs, on_executor, Raw, Server};

const KEYS: u64 = 60;
const GETS: u64 = 25;
const DELETES: u64 = 7;

fn stats_frame(raw: &mut Raw, id: u64) -> StatsResponse {
    raw.send(&FrameHeader::request(Opcode::Stats, id, 0).encode());
    let (h, body) = raw.recv().expect("stats answered");
    assert_eq!((h.opcode, h.response, h.request_id), (Opcode::Stats, true, id));
    let resp: StatsResponse =
        msg::to_owned(msg::access::<ArchivedStatsResponse>(&body).unwrap()).unwrap();
    assert_eq!(resp.check(), Ok(()));
    resp
}

fn counter(resp: &StatsResponse, name: &str) -> u64 {
    resp.shards.iter().flat_map(|s| &s.counters).filter(|c| c.name == name).map(|c| c.value).sum()
}

fn expect_error(raw: &mut Raw, id: u64) -> ErrorCode {
    let (h, body) = raw.recv().expect("an error frame, not a close");
    assert_eq!((h.opcode, h.request_id), (Opcode::Error, id));
    let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
    ErrorCode::from_u16(e.code.to_native())
}

#[test]
fn stats_reflect_the_work_and_bad_requests_get_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--shards", "3"]);
    let addr = server.addr.clone();

    // Before any work: three shards, nothing written.
    let out = kvs(&["stats", "--json", "--addr", &addr], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(j["shard_count"], 3);
    assert_eq!(j["total"]["counters"]["puts"], 0);

    let a = addr.clone();
    on_executor(move || async move {
        let c = Client::connect(&a, ClientOptions::default()).await.unwrap();
        for i in 0..KEYS {
            c.put(format!("key-{i}").as_bytes(), format!("value-{i}").as_bytes()).await.unwrap();
        }
        for i in 0..GETS {
            assert!(c.get(format!("key-{i}").as_bytes()).await.unwrap().is_some());
        }
        for i in 0..DELETES {
            c.delete(format!("key-{i}").as_bytes()).await.unwrap();
        }
        c.close().await;
    });

    let out = kvs(&["stats", "--json", "--addr", &addr], None);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(j["missing_shards"], serde_json::json!([]));
    let shards = j["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3);
    let sum =
        |name: &str| shards.iter().map(|s| s["counters"][name].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("puts"), KEYS);
    assert_eq!(sum("gets"), GETS);
    assert_eq!(sum("deletes"), DELETES);
    // Deleted keys stay in the memtable as tombstones.
    assert_eq!(sum("keys"), KEYS);
    assert_eq!(sum("keys_estimate"), KEYS, "everything is in the memtables: the estimate is exact");
    assert_eq!(sum("tombstones"), DELETES);
    let total = &j["total"]["counters"];
    assert_eq!(total["puts"], KEYS);
    assert_eq!(total["gets"], GETS);
    assert!(total["memtable_bytes"].as_u64().unwrap() > 0);
    assert!(total.get("l0_tables").is_some(), "level counters flow through: {total}");
    assert!(shards.iter().all(|s| s["counters"]["puts"].as_u64().unwrap() > 0), "spread");
    for derived in ["write_amplification", "block_cache_hit_rate", "bloom_false_positive_rate"] {
        assert!(j["total"]["derived"].get(derived).is_some(), "{derived} in {}", j["total"]);
    }

    // The table names the shards and sums them.
    let out = kvs(&["stats", "--addr", &addr], None);
    assert_eq!(out.status.code(), Some(0));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("shard 0") && table.contains("shard 2") && table.contains("total"));
    let puts: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("puts "))
        .unwrap_or_else(|| panic!("no puts row:\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(puts.last().copied(), Some(KEYS.to_string().as_str()), "{table}");

    // Every port answers for the whole node, and Stats requests pipeline.
    for port_addr in [addr.clone(), server.shard_addr(0), server.shard_addr(2)] {
        let mut raw = Raw::connect(&port_addr);
        let resp = stats_frame(&mut raw, 9);
        assert_eq!((resp.shard_count, resp.shards.len()), (3, 3), "via {port_addr}");
        assert!(resp.missing.is_empty());
        assert_eq!(counter(&resp, "puts"), KEYS);
        let mut batch = Vec::new();
        for id in 100..132 {
            batch.extend_from_slice(&FrameHeader::request(Opcode::Stats, id, 0).encode());
        }
        raw.send(&batch);
        let mut ids: Vec<u64> =
            (0..32).map(|_| raw.recv().expect("pipelined stats").0.request_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (100..132).collect::<Vec<_>>());
    }

    // A Stats request with a body is refused, the connection stays usable, nothing crashes.
    let mut raw = Raw::connect(&server.shard_addr(1));
    let mut bad = FrameHeader::request(Opcode::Stats, 5, 8).encode().to_vec();
    bad.extend_from_slice(&[0xAB; 8]);
    raw.send(&bad);
    assert_eq!(expect_error(&mut raw, 5), ErrorCode::InvalidRequest);
    let mut resp = FrameHeader::response(Opcode::Stats, 6, 0).encode().to_vec();
    resp.extend_from_slice(&FrameHeader::request(Opcode::Ping, 7, 0).encode());
    raw.send(&resp);
    assert_eq!(expect_error(&mut raw, 6), ErrorCode::InvalidRequest);
    let (h, _) = raw.recv().expect("ping after bad stats");
    assert_eq!((h.opcode, h.request_id), (Opcode::Ping, 7));
    let after = stats_frame(&mut raw, 8);
    assert!(counter(&after, "frames_invalid") >= 2, "bad frames are counted");

    // Nothing listening: exit 2 with the error's code.
    let out = kvs(&["stats", "--addr", "127.0.0.1:1", "--timeout-ms", "500"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unavailable"));

    assert_eq!(server.stop(), Some(0), "clean shutdown; stderr:\n{}", server.stderr());
}
