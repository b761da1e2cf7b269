//! Goal: gossip membership works between real processes: three nodes that share a cluster
//! name and secret find each other through a seed and agree on membership, topology version
//! and ring ownership; a node with the wrong secret never enters the membership and both
//! sides say why; a node killed with SIGKILL is marked down by the others within a bounded
//! time and comes back up when restarted; malformed gossip frames get an error, not a crash.
//! Method: `kvs server` processes on 127.0.0.1, 127.0.0.2 and 127.0.0.3, all on the same port
//! (a node is known by its `--listen` address; the port is probed free on the three addresses
//! first), with a 100 ms gossip interval, observed through `kvs status --json`; the strangers
//! listen on ephemeral ports. Every wait is a
//! bounded poll; the measured detection time is printed (`--nocapture` shows it).

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kvs_wire::msg::{self, ArchivedErrorResponse};
use kvs_wire::{ErrorCode, FrameHeader, Opcode};
use serde_json::Value;
use support::{kvs, members, wait_for, Raw, Server};

const GOSSIP: &[&str] = &["--shards", "1", "--gossip-interval-ms", "100", "--ring-delay-ms", "300"];

/// `kvs status --json` of the node at `addr`, or None when it could not be asked.
fn status(addr: &str) -> Option<Value> {
    let out = kvs(&["status", "--addr", addr, "--json", "--timeout-ms", "2000"], None);
    if out.status.code() == Some(2) {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The statuses of `nodes` once each lists exactly `ids`, all up and alive, with one
/// topology version.
fn converged(nodes: &[&Server], ids: &[&String]) -> Option<Vec<Value>> {
    let statuses: Vec<Value> = nodes.iter().map(|n| status(&n.addr)).collect::<Option<_>>()?;
    for s in &statuses {
        let m = members(s);
        if m.len() != ids.len()
            || !ids.iter().all(|id| m.get(*id).is_some_and(|(st, l)| st == "up" && l == "alive"))
        {
            return None;
        }
    }
    let v0 = &statuses[0]["topology_version"];
    statuses.iter().all(|s| &s["topology_version"] == v0).then_some(statuses)
}

fn liveness_of(s: &Value, id: &str) -> Option<String> {
    members(s).get(id).map(|(_, l)| l.clone())
}

#[test]
fn three_nodes_converge_refuse_a_stranger_and_track_a_crash() {
    let started = Instant::now();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let secret_file = dirs[0].path().join("cluster.secret");
    std::fs::write(&secret_file, "0f1e2d3c4b5a69788796a5b4c3d2e1f0\n").unwrap();
    let secret = secret_file.to_str().unwrap();
    let cluster = |seeds: &str| -> Vec<String> {
        let mut a: Vec<String> = GOSSIP.iter().map(|s| s.to_string()).collect();
        a.extend(["--cluster-name", "test-c", "--cluster-secret-file", secret].map(String::from));
        if !seeds.is_empty() {
            a.extend(["--seeds".to_string(), seeds.to_string()]);
        }
        a
    };
    let port = port_free_on_three_addresses();
    let listen = |ip: u8| format!("127.0.0.{ip}:{port}");
    let a1 = cluster("");
    let n1 = Server::start_at(&listen(1), dirs[0].path().join("d").as_path(), &refs(&a1));
    let seed = n1.addr.clone();
    let a2 = cluster(&seed);
    let n2 = Server::start_at(&listen(2), dirs[1].path(), &refs(&a2));
    let n3_dir = dirs[2].path().to_path_buf();
    let mut n3 = Server::start_at(&listen(3), &n3_dir, &refs(&a2));
    // A node of the same cluster name with the wrong secret, seeded at n1.
    let mut a4: Vec<String> = GOSSIP.iter().map(|s| s.to_string()).collect();
    a4.extend(
        ["--cluster-name", "test-c", "--cluster-secret", "not-the-secret", "--seeds", &seed]
            .map(String::from),
    );
    let n4 = Server::start_at("127.0.0.1:0", dirs[3].path(), &refs(&a4));
    // And a node of another cluster with the right secret.
    let dir5 = tempfile::tempdir().unwrap();
    let mut a5: Vec<String> = GOSSIP.iter().map(|s| s.to_string()).collect();
    a5.extend(
        ["--cluster-name", "other-c", "--cluster-secret-file", secret, "--seeds", &seed]
            .map(String::from),
    );
    let n5 = Server::start_at("127.0.0.5:0", dir5.path(), &refs(&a5));
    let (id1, id2, id3) = (n1.node_id.clone(), n2.node_id.clone(), n3.node_id.clone());
    let ids = [&id1, &id2, &id3];

    let statuses = wait_for("3 nodes up everywhere", Duration::from_secs(15), || {
        converged(&[&n1, &n2, &n3], &ids)
    });
    let t_converged = started.elapsed();
    let owns = |s: &Value| -> BTreeMap<String, f64> {
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].as_str().unwrap().to_string(), n["ownership"].as_f64().unwrap()))
            .collect()
    };
    for s in &statuses {
        let total = s["ownership_total"].as_f64().unwrap();
        assert!((total - 1.0).abs() < 1e-6, "ownership sums to {total}: {s}");
        assert_eq!(owns(s), owns(&statuses[0]), "every node sees the same ring");
        assert!(owns(s).values().all(|o| *o > 0.15 && *o < 0.55), "{s}");
        assert_eq!(s["replication_factor"], 3);
        assert_eq!(s["cluster_name"], "test-c");
    }
    // The topology clients fetch follows membership, on any node.
    let topo = kvs(&["topology", "--addr", &n2.addr], None);
    let text = String::from_utf8_lossy(&topo.stdout);
    assert_eq!(text.matches("node ").count(), 4, "header + 3 nodes:\n{text}");
    assert!(text.contains(&format!("version {}", statuses[0]["topology_version"])), "{text}");
    // Shards serve the topology the cluster core published, too.
    let host2 = n2.addr.rsplit_once(':').unwrap().0;
    let shard2 = format!("{host2}:{}", n2.shard_ports[0]);
    let topo = kvs(&["topology", "--addr", &shard2], None);
    let text = String::from_utf8_lossy(&topo.stdout);
    assert_eq!(text.matches("node ").count(), 4, "from a shard port:\n{text}");
    // Quorum (the default) reaches the remote replicas: a key written through one node is read
    // through another. The shards learn liveness with the next gossip round, so the first
    // write may still see too few replicas alive for a moment.
    wait_for("a quorum write", Duration::from_secs(3), || {
        let put = kvs(&["put", "cluster-key", "v1", "--addr", &n1.addr], None);
        put.status.success().then_some(())
    });
    let get = kvs(&["get", "cluster-key", "--addr", &n3.addr], None);
    assert_eq!(get.stdout, b"v1", "{}", String::from_utf8_lossy(&get.stderr));
    // Load: the bytes each node holds, asked of each node (null when a node did not answer
    // within the load timeout); the key is somewhere.
    let s = status(&n2.addr).unwrap();
    let loads: Vec<u64> =
        s["nodes"].as_array().unwrap().iter().filter_map(|n| n["load_bytes"].as_u64()).collect();
    assert!(loads.iter().sum::<u64>() > 0, "{s}");

    // The strangers: refused with the reason on both sides, never listed.
    wait_for("the refusals to be logged", Duration::from_secs(10), || {
        let (e1, e4, e5) = (n1.stderr(), n4.stderr(), n5.stderr());
        (e1.contains("bad cluster secret")
            && e4.contains("peer refused our gossip")
            && e4.contains("bad cluster secret")
            && e1.contains(r#"gossip from cluster "other-c" refused"#)
            && e5.contains("peer refused our gossip")
            && e5.contains(r#"this node is in cluster "test-c""#))
        .then_some(())
    });
    for n in [&n1, &n2, &n3] {
        let s = status(&n.addr).unwrap();
        for stranger in [&n4, &n5] {
            assert!(!members(&s).contains_key(&stranger.node_id), "{} lists {s}", n.addr);
        }
    }
    for stranger in [&n4, &n5] {
        let s = status(&stranger.addr).unwrap();
        assert_eq!(members(&s).len(), 1, "a stranger learned nobody: {s}");
    }

    // kill -9 n3: n1 and n2 mark it down.
    let old_version = statuses[0]["topology_version"].as_u64().unwrap();
    n3.kill9();
    let killed = Instant::now();
    let n3_id = n3.node_id.clone();
    wait_for("n3 marked down by n1 and n2", Duration::from_secs(15), || {
        [&n1, &n2]
            .iter()
            .all(|n| {
                status(&n.addr).is_some_and(|s| liveness_of(&s, &n3_id).as_deref() == Some("down"))
            })
            .then_some(())
    });
    let detection = killed.elapsed();
    eprintln!("detection of a SIGKILLed node at 100 ms gossip, phi 8: {detection:?}");
    for n in [&n1, &n2] {
        let s = status(&n.addr).unwrap();
        assert_eq!(s["topology_version"].as_u64(), Some(old_version), "down is not a ring change");
    }

    // Restart n3 on the same data and address (same id, new generation): up again everywhere.
    let restarted = Instant::now();
    n3 = Server::start_at(&listen(3), &n3_dir, &refs(&a2));
    assert_eq!((n3.node_id.as_str(), n3.addr.as_str()), (n3_id.as_str(), listen(3).as_str()));
    let statuses = wait_for("n3 up again everywhere", Duration::from_secs(15), || {
        converged(&[&n1, &n2, &n3], &ids)
    });
    let back = restarted.elapsed();
    let new_version = statuses[0]["topology_version"].as_u64().unwrap();
    assert!(new_version > old_version, "a restart grows the version: {old_version} {new_version}");
    let addrs: Vec<&str> = statuses[0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["addr"].as_str().unwrap())
        .collect();
    assert_eq!(addrs.len(), 3);
    for ip in 1..=3 {
        assert!(addrs.contains(&listen(ip).as_str()), "{addrs:?}");
    }
    eprintln!(
        "converged in {t_converged:?} from the first start; detection {detection:?}; back up \
         {back:?} after restart; whole test {:?}",
        started.elapsed()
    );
}

/// A port P with P and P+1 (node and shard port) free on 127.0.0.1, .2 and .3.
fn port_free_on_three_addresses() -> u16 {
    support::port_free_on_hosts(3, 1)
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn malformed_gossip_gets_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), GOSSIP);
    let expect_error = |raw: &mut Raw, id: u64, what: &str| {
        let (h, body) = raw.recv().expect("an answer");
        assert_eq!((h.opcode, h.request_id), (Opcode::Error, id), "{what}");
        let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
        assert_eq!(e.code.to_native(), ErrorCode::InvalidRequest.to_u16(), "{what}");
        e.message.as_str().to_string()
    };
    let mut raw = Raw::connect(&server.addr);
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    for (i, len) in [0usize, 1, 7, 16, 64, 300].into_iter().enumerate() {
        let body: Vec<u8> = (0..len)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect();
        for op in [Opcode::GossipSyn, Opcode::GossipAck2] {
            let id = 10 + i as u64;
            let mut frame = FrameHeader::request(op, id, body.len() as u32).encode().to_vec();
            frame.extend_from_slice(&body);
            raw.send(&frame);
            let m = expect_error(&mut raw, id, &format!("{op:?} of {len} random bytes"));
            assert!(m.contains("malformed gossip"), "{m}");
        }
    }
    // The node port takes larger gossip frames, but a client frame keeps the client bound.
    let mut big = Raw::connect(&server.addr);
    big.send(&FrameHeader::request(Opcode::Put, 3, 2 << 20).encode());
    let (h, body) = big.recv().expect("an answer");
    assert_eq!((h.opcode, h.request_id), (Opcode::Error, 3));
    let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
    assert_eq!(e.code.to_native(), ErrorCode::TooLarge.to_u16());
    // Gossip on a shard port is refused; the node keeps serving.
    let mut shard = Raw::connect(&server.shard_addr(0));
    shard.send(&FrameHeader::request(Opcode::GossipSyn, 5, 0).encode());
    assert!(expect_error(&mut shard, 5, "shard port").contains("node-level port"));
    let s = status(&server.addr).expect("still serving");
    assert_eq!(members(&s).len(), 1);
    assert!(server.stderr().contains("malformed gossip"), "the refusal is logged");
}
