//! Goal: the replica fan-out works between real processes: on three nodes with N = 3 every key
//! written at quorum is stored on exactly three nodes; a quorum write through one node is read
//! at quorum through another; after a node is killed with SIGKILL and marked down, `all` is
//! refused with `Unavailable` (needed 3, alive 2) while quorum keeps succeeding. A node that
//! was down during writes gets them back by hinted handoff once restarted; with hints off, a
//! quorum read through it repairs it (read repair).
//! Method: `kvs server` processes on 127.0.0.1, .2 and .3 with one port, one shard each and a
//! 100 ms gossip interval. "Stored on a node" is checked by a Get at consistency one sent in a
//! raw frame to that node's owning shard (the coordinator there reads its own replica first,
//! and with R = 1 only it), so a missing copy fails the test. Every wait is a bounded poll.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::time::{Duration, Instant};

use kvs_wire::msg::{self, ArchivedErrorResponse, Consistency};
use kvs_wire::{FrameHeader, Opcode};
use serde_json::Value;
use support::{get_frame, kvs, members, put_frame, raw_call, wait_for, Raw, Server};

/// `kvs status --json` of the node at `addr`, or None when it could not be asked.
fn status(addr: &str) -> Option<Value> {
    let out = kvs(&["status", "--addr", addr, "--json", "--timeout-ms", "2000"], None);
    serde_json::from_slice(&out.stdout).ok()
}

/// Liveness of node `id` as the node at `addr` sees it.
fn liveness(addr: &str, id: &str) -> Option<String> {
    let s = status(addr)?;
    s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"].as_str() == Some(id))
        .and_then(|n| n["liveness"].as_str().map(String::from))
}

/// Whether every node in `nodes` sees every node in `ids` up (joined) and alive.
fn all_alive(nodes: &[&Server], ids: &[&str]) -> bool {
    nodes.iter().all(|n| {
        let Some(s) = status(&n.addr) else { return false };
        let m = members(&s);
        ids.iter().all(|id| m.get(*id).is_some_and(|(st, l)| st == "up" && l == "alive"))
    })
}

/// Waits until every node's shard counts all three replicas alive: the shards learn the
/// failure detector's verdicts with the gossip round after `kvs status` shows them, so this
/// probes with a write at consistency `all`.
fn shards_see_all_alive(nodes: &[&Server]) {
    for n in nodes {
        wait_for("the shard to count all three alive", Duration::from_secs(5), || {
            raw_call(&shard_of(n), &put_frame("probe", "p", Consistency::All)).ok()
        });
    }
}

/// The address of the only shard of `node` (its node port's host).
fn shard_of(node: &Server) -> String {
    let host = node.addr.rsplit_once(':').unwrap().0;
    format!("{host}:{}", node.shard_ports[0])
}

/// What `node` alone holds for `key` (a Get at consistency one on its owning shard).
fn local_value(node: &Server, key: &str) -> Option<Vec<u8>> {
    raw_call(&shard_of(node), &get_frame(key, Consistency::One)).expect("a local read")
}

/// Flags every node of these tests starts with (one shard, fast gossip, one cluster).
const NODE_ARGS: [&str; 10] = [
    "--shards",
    "1",
    "--gossip-interval-ms",
    "100",
    "--ring-delay-ms",
    "300",
    "--cluster-name",
    "repl",
    "--cluster-secret",
    "00112233445566778899aabbccddeeff",
];

#[test]
fn three_replicas_quorum_across_coordinators_and_all_unavailable_after_a_kill() {
    let started = Instant::now();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let port = port_free_on_three_addresses();
    let listen = |ip: u8| format!("127.0.0.{ip}:{port}");
    let base = NODE_ARGS;
    let n1 = Server::start_at(&listen(1), dirs[0].path(), &base);
    let mut with_seed: Vec<&str> = base.to_vec();
    let seed = n1.addr.clone();
    with_seed.extend(["--seeds", &seed]);
    let n2 = Server::start_at(&listen(2), dirs[1].path(), &with_seed);
    let mut n3 = Server::start_at(&listen(3), dirs[2].path(), &with_seed);
    let ids = [n1.node_id.as_str(), n2.node_id.as_str(), n3.node_id.as_str()];
    wait_for("every node to see all three alive", Duration::from_secs(20), || {
        all_alive(&[&n1, &n2, &n3], &ids).then_some(())
    });
    shards_see_all_alive(&[&n1, &n2, &n3]);
    let t_up = started.elapsed();

    // Quorum writes through each node in turn: each key ends up on all three nodes.
    let nodes = [&n1, &n2, &n3];
    let keys: Vec<String> = (0..30).map(|i| format!("rk-{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let r = raw_call(
            &shard_of(nodes[i % 3]),
            &put_frame(key, &format!("v{i}"), Consistency::Quorum),
        );
        assert!(r.is_ok(), "quorum put {key} through node {}: {r:?}", i % 3 + 1);
    }
    let t_written = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let want = format!("v{i}").into_bytes();
        for (j, node) in nodes.iter().enumerate() {
            // W = 2 answers before the third copy lands: give it a moment.
            wait_for(&format!("{key} on node {}", j + 1), Duration::from_secs(5), || {
                (local_value(node, key).as_deref() == Some(&want[..])).then_some(())
            });
        }
    }
    eprintln!("30 keys on 3 of 3 nodes, checked in {:?}", t_written.elapsed());
    // A key none wrote is on no node (the check can fail).
    assert_eq!(local_value(&n2, "never-written"), None);

    // A quorum write through n1 is read at quorum through n2, and through n3 with the CLI.
    let r = raw_call(&shard_of(&n1), &put_frame("cross", "c1", Consistency::Quorum));
    assert!(r.is_ok(), "{r:?}");
    let r = raw_call(&shard_of(&n2), &get_frame("cross", Consistency::Quorum));
    assert_eq!(r, Ok(Some(b"c1".to_vec())));
    let get = kvs(&["get", "cross", "--addr", &n3.addr], None);
    assert_eq!(get.stdout, b"c1", "{}", String::from_utf8_lossy(&get.stderr));
    let r = raw_call(&shard_of(&n3), &put_frame("cross", "c2", Consistency::All));
    assert!(r.is_ok(), "all with three alive: {r:?}");

    // kill -9 n3; once n1 and n2 mark it down, `all` is Unavailable and quorum succeeds.
    let n3_id = n3.node_id.clone();
    n3.kill9();
    let killed = Instant::now();
    wait_for("n3 marked down by n1 and n2", Duration::from_secs(20), || {
        [&n1, &n2]
            .iter()
            .all(|n| liveness(&n.addr, &n3_id).as_deref() == Some("down"))
            .then_some(())
    });
    let detection = killed.elapsed();
    for n in [&n1, &n2] {
        // The shards learn the verdict with the next gossip round (100 ms).
        let e = wait_for("shards to count n3 down", Duration::from_secs(2), || {
            let r = raw_call(&shard_of(n), &put_frame("after-kill", "x", Consistency::All));
            let e = r.expect_err("all with a node down");
            e.contains("too few replicas alive").then_some(e)
        });
        assert!(e.contains("too few replicas alive for w = 3"), "{e}");
    }
    // The CLI may coordinate through either live node: both count n3 down now.
    for n in [&n1, &n2] {
        let out = kvs(&["put", "after-kill", "x", "--consistency", "all", "--addr", &n.addr], None);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Unavailable: needed 3, alive 2"), "{err}");
        let out = kvs(&["get", "cross", "--consistency", "all", "--addr", &n.addr], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Unavailable: needed 3, alive 2"), "{err}");
    }
    let out = kvs(&["put", "after-kill", "q", "--addr", &n1.addr], None);
    assert!(out.status.success(), "quorum with 2 of 3: {}", String::from_utf8_lossy(&out.stderr));
    let out = kvs(&["get", "after-kill", "--addr", &n2.addr], None);
    assert_eq!(out.stdout, b"q", "{}", String::from_utf8_lossy(&out.stderr));
    for key in keys.iter().take(10) {
        let out = kvs(&["get", key, "--addr", &n1.addr], None);
        assert!(out.status.success(), "{key}: {}", String::from_utf8_lossy(&out.stderr));
    }
    eprintln!(
        "up in {t_up:?}; n3 detected down in {detection:?}; whole test {:?}",
        started.elapsed()
    );
}

/// Three nodes on 127.0.0.1..3 with one port, one shard each, 100 ms gossip and `extra` flags.
struct Three {
    dirs: Vec<tempfile::TempDir>,
    port: u16,
    extra: Vec<String>,
    nodes: Vec<Server>,
}

impl Three {
    fn start(extra: &[&str]) -> Three {
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let port = port_free_on_three_addresses();
        let mut three = Three {
            dirs,
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            nodes: Vec::new(),
        };
        for i in 0..3 {
            let n = three.start_node(i);
            three.nodes.push(n);
        }
        three
    }

    fn start_node(&self, i: usize) -> Server {
        let mut args: Vec<String> = NODE_ARGS.iter().map(|s| s.to_string()).collect();
        args.extend(self.extra.iter().cloned());
        if i > 0 {
            args.extend(["--seeds".to_string(), format!("127.0.0.1:{}", self.port)]);
        }
        let listen = format!("127.0.0.{}:{}", i + 1, self.port);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_at(&listen, self.dirs[i].path(), &refs)
    }

    fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node_id.clone()).collect()
    }

    /// Waits until every running node sees all three alive.
    fn wait_all_alive(&self) {
        let ids = self.ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let nodes: Vec<&Server> = self.nodes.iter().collect();
        wait_for("every node to see all three alive", Duration::from_secs(20), || {
            all_alive(&nodes, &ids).then_some(())
        });
        shards_see_all_alive(&nodes);
    }

    /// kill -9 node `i` and waits until the others mark it down and their shards count it so.
    fn kill_and_wait_down(&mut self, i: usize) {
        let id = self.nodes[i].node_id.clone();
        self.nodes[i].kill9();
        for (j, n) in self.nodes.iter().enumerate() {
            if j == i {
                continue;
            }
            wait_for("the killed node marked down", Duration::from_secs(20), || {
                (liveness(&n.addr, &id).as_deref() == Some("down")).then_some(())
            });
            wait_for("shards to count it down", Duration::from_secs(2), || {
                let r = raw_call(&shard_of(n), &put_frame("probe", "p", Consistency::All));
                r.err().filter(|e| e.contains("too few replicas alive"))
            });
        }
    }
}

/// Writes `keys` at quorum through the nodes other than `skip`, in turn.
fn write_around(three: &Three, skip: usize, keys: &[String]) {
    let live: Vec<&Server> =
        three.nodes.iter().enumerate().filter(|(j, _)| *j != skip).map(|(_, n)| n).collect();
    for (i, key) in keys.iter().enumerate() {
        let r = raw_call(
            &shard_of(live[i % live.len()]),
            &put_frame(key, &format!("h{i}"), Consistency::Quorum),
        );
        assert!(r.is_ok(), "quorum put {key} with a node down: {r:?}");
    }
}

#[test]
fn a_node_down_during_writes_gets_them_by_hinted_handoff() {
    let started = Instant::now();
    let mut three = Three::start(&[]);
    three.wait_all_alive();
    three.kill_and_wait_down(2);
    let keys: Vec<String> = (0..20).map(|i| format!("hk-{i}")).collect();
    write_around(&three, 2, &keys);
    let restarted = Instant::now();
    three.nodes[2] = three.start_node(2);
    for (i, key) in keys.iter().enumerate() {
        let want = format!("h{i}").into_bytes();
        wait_for(&format!("{key} on the restarted node"), Duration::from_secs(20), || {
            (local_value(&three.nodes[2], key).as_deref() == Some(&want[..])).then_some(())
        });
    }
    let caught_up = restarted.elapsed();
    let logs = three.nodes[0].stderr() + &three.nodes[1].stderr();
    assert!(logs.contains("hints replayed"), "a coordinator logs its replay");
    eprintln!(
        "restarted node held all 20 keys {caught_up:?} after restart; test {:?}",
        started.elapsed()
    );
}

#[test]
fn with_hints_off_a_quorum_read_repairs_the_stale_replica() {
    let started = Instant::now();
    let mut three = Three::start(&["--hints-mb", "0"]);
    three.wait_all_alive();
    three.kill_and_wait_down(2);
    let keys: Vec<String> = (0..20).map(|i| format!("rr-{i}")).collect();
    write_around(&three, 2, &keys);
    three.nodes[2] = three.start_node(2);
    three.wait_all_alive();
    // Stale: no hints were kept, so the restarted node alone has none of the keys.
    for key in &keys {
        assert_eq!(local_value(&three.nodes[2], key), None, "{key} arrived without repair");
    }
    // A quorum read coordinated by the stale node answers the newest version and repairs it.
    let stale = shard_of(&three.nodes[2]);
    for (i, key) in keys.iter().enumerate() {
        let want = format!("h{i}").into_bytes();
        let got =
            wait_for("a quorum read through the restarted node", Duration::from_secs(3), || {
                raw_call(&stale, &get_frame(key, Consistency::Quorum)).ok()
            });
        assert_eq!(got.as_deref(), Some(&want[..]), "{key}");
    }
    for (i, key) in keys.iter().enumerate() {
        let want = format!("h{i}").into_bytes();
        wait_for(&format!("{key} repaired"), Duration::from_secs(5), || {
            (local_value(&three.nodes[2], key).as_deref() == Some(&want[..])).then_some(())
        });
    }
    eprintln!("20 keys repaired by quorum reads; test {:?}", started.elapsed());
}

#[test]
fn replica_requests_without_the_handshake_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--shards", "1"]);
    for addr in [server.addr.clone(), server.shard_addr(0)] {
        let ops =
            [Opcode::ReplicaWrite, Opcode::ReplicaRead, Opcode::StreamScan, Opcode::StreamApply];
        // An empty body, and a header announcing 6 MiB that is never sent: both are refused
        // on the header (the node does not wait for, or buffer, a stranger's large body).
        for (op, len) in ops.iter().flat_map(|op| [(*op, 0), (*op, 6 << 20)]) {
            let mut raw = Raw::connect(&addr);
            raw.send(&FrameHeader::request(op, 4, len).encode());
            let (h, body) = raw.recv().expect("an answer");
            assert_eq!((h.opcode, h.request_id), (Opcode::Error, 4), "{op:?} {len}");
            let e = msg::access::<ArchivedErrorResponse>(&body).unwrap();
            let m = e.message.as_str();
            assert!(
                m.contains("authenticated") || m.contains("exceeds the limit"),
                "{op:?} {len}: {m}"
            );
            assert!(raw.recv().is_none(), "the connection is closed");
        }
        // A malformed hello: an error and a closed connection, not a crash.
        let mut raw = Raw::connect(&addr);
        let mut frame = FrameHeader::request(Opcode::PeerHello, 5, 3).encode().to_vec();
        frame.extend_from_slice(&[1, 2, 3]);
        raw.send(&frame);
        let (h, _) = raw.recv().expect("an answer");
        assert_eq!(h.opcode, Opcode::Error);
    }
    let out = kvs(&["put", "k", "v", "--addr", &server.addr], None);
    assert!(out.status.success(), "still serving: {}", String::from_utf8_lossy(&out.stderr));
}

/// A port P with P and P+1 (node and shard port) free on 127.0.0.1, .2 and .3.
fn port_free_on_three_addresses() -> u16 {
    support::port_free_on_hosts(3, 1)
}
