//! Goal: the cluster grows and shrinks under load with no failed request and no lost key
//! (issue 6, "Join and decommission"), and a dead node's ranges are re-replicated by
//! `kvs removenode`.
//! Method: real `kvs server` processes on 127.0.0.1-4 (one port each, gossip every 100 ms,
//! ring delay 300 ms, N=3). A client on its own executor thread writes new keys and reads
//! earlier ones at quorum throughout, bounded in count and time, and records every outcome.
//! Node 4 (two shards, where the others have one, so streamed keys change shard layout too)
//! joins; once every node sees four up, node 4 is decommissioned with the CLI, which
//! follows its progress to the end; then it is stopped. Afterwards every acknowledged key
//! must read back its last value at quorum, and each of a sample of keys must be held by
//! every replica of the final ring (read at consistency one on that replica, which reads its
//! own copy first). The share of replica copies that moved (versions streamed / (N x keys))
//! is printed: about 1/4 for a fourth node.
//! What it proves: join streaming, writes to old and new replicas during a move (keys
//! written during the join are on node 4 after it is up although it never streamed them),
//! reads only from replicas that have the data, decommission, and removenode.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_wire::client::{Client, ClientOptions, PutOptions};
use kvs_wire::msg::Consistency;
use kvs_wire::placement::{token_of, vnode_tokens, NodeId, Ring};
use serde_json::Value;
use support::{kvs, local_get, members, on_executor, port_free_on_hosts, wait_for, Server};

const SECRET: &str = "4f1d0c9e8b7a69584736251403f2e1d0";
/// The flags that prove the cluster key to `kvs decommission` and `kvs removenode`.
const KEY: &[&str] = &["--cluster-name", "elastic", "--cluster-secret", SECRET];

fn node_args<'a>(shards: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--shards",
        shards,
        "--gossip-interval-ms",
        "100",
        "--ring-delay-ms",
        "300",
        "--cluster-name",
        "elastic",
        "--cluster-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    args
}

fn status(addr: &str) -> Option<Value> {
    let out = kvs(&["status", "--addr", addr, "--json", "--timeout-ms", "2000"], None);
    serde_json::from_slice(&out.stdout).ok()
}

/// Whether every node in `at` sees exactly `ids` up and alive (others, if any, left).
fn converged(at: &[&Server], ids: &[&str]) -> bool {
    at.iter().all(|n| {
        let Some(s) = status(&n.addr) else { return false };
        let m = members(&s);
        ids.iter().all(|id| m.get(*id).is_some_and(|(st, l)| st == "up" && l == "alive"))
            && m.iter().all(|(id, (st, _))| ids.contains(&id.as_str()) || st == "left")
    })
}

fn ring_of(nodes: &[&Server]) -> Ring {
    Ring::new(nodes.iter().map(|n| {
        let id = NodeId(u64::from_str_radix(&n.node_id, 16).unwrap());
        (id, vnode_tokens(id, 150))
    }))
}

/// The outcomes of the background load.
#[derive(Default)]
struct Load {
    /// Key -> last acknowledged value.
    acked: BTreeMap<String, String>,
    writes: u64,
    reads: u64,
    /// (when, after the load started; what failed).
    failures: Vec<(Duration, String)>,
    /// The topology version the client held at the end.
    final_version: u64,
}

/// Runs quorum writes of new keys and reads of acknowledged ones through a client of `seed`
/// until `stop` or the bounds; returns what happened. The client follows the ring by itself
/// (responses carry the topology epoch); its topology version is recorded at the end.
fn run_load(seed: String, stop: Arc<AtomicBool>, state: Arc<Mutex<Load>>, max_ops: u64) {
    on_executor(move || async move {
        let opts = ClientOptions {
            request_timeout: Duration::from_secs(3),
            read_consistency: Consistency::Quorum,
            write_consistency: Consistency::Quorum,
            ..ClientOptions::default()
        };
        let client = Client::connect(&seed, opts).await.expect("load client connects");
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) && i < max_ops && Instant::now() < deadline {
            i += 1;
            let key = format!("load-{i}");
            let value = format!("v{i}");
            match client.put_with(key.as_bytes(), value.as_bytes(), PutOptions::default()).await {
                Ok(_) => {
                    let mut s = state.lock().unwrap();
                    s.writes += 1;
                    s.acked.insert(key, value);
                }
                Err(e) => state
                    .lock()
                    .unwrap()
                    .failures
                    .push((started.elapsed(), format!("put {key}: {e}"))),
            }
            // Read back an earlier key.
            let probe = {
                let s = state.lock().unwrap();
                let n = s.acked.len();
                (n > 0).then(|| {
                    let (k, v) = s.acked.iter().nth((i as usize * 7919) % n).unwrap();
                    (k.clone(), v.clone())
                })
            };
            if let Some((k, v)) = probe {
                let got = client.get(k.as_bytes()).await;
                let mut s = state.lock().unwrap();
                s.reads += 1;
                match got {
                    Ok(Some((value, _))) if value == v.as_bytes() => {}
                    Ok(other) => s.failures.push((
                        started.elapsed(),
                        format!("get {k}: expected {v}, got {:?}", other.map(|o| o.0)),
                    )),
                    Err(e) => s.failures.push((started.elapsed(), format!("get {k}: {e}"))),
                }
            }
        }
        state.lock().unwrap().final_version = client.topology().version;
        client.close().await;
    });
}

/// Writes `count` keys `pre-{i}` at quorum through `seed`, 64 at a time; returns them with
/// their values.
fn preload(seed: &str, count: usize) -> BTreeMap<String, String> {
    let seed = seed.to_string();
    on_executor(move || async move {
        let client =
            std::rc::Rc::new(Client::connect(&seed, ClientOptions::default()).await.unwrap());
        let mut acked = BTreeMap::new();
        for chunk in (0..count).collect::<Vec<_>>().chunks(64) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|i| {
                    let (k, v) = (format!("pre-{i}"), format!("p{i}"));
                    let c = client.clone();
                    glommio::spawn_local(async move {
                        c.put_with(k.as_bytes(), v.as_bytes(), PutOptions::default())
                            .await
                            .unwrap_or_else(|e| panic!("preload {k}: {e}"));
                        (k, v)
                    })
                })
                .collect();
            for t in tasks {
                let (k, v) = t.await;
                acked.insert(k, v);
            }
        }
        client.close().await;
        acked
    })
}

/// What `node` alone holds for `key`.
fn local_value(node: &Server, key: &str) -> Option<String> {
    local_get(node, key.as_bytes()).ok().flatten().map(|v| String::from_utf8(v).unwrap())
}

/// Checks that each of `sample` is held with its value by every replica in `ring` (N=3).
fn replicas_hold(nodes: &[&Server], ring: &Ring, sample: &[(String, String)]) {
    let by_id: BTreeMap<u64, &Server> =
        nodes.iter().map(|n| (u64::from_str_radix(&n.node_id, 16).unwrap(), *n)).collect();
    let mut missing = Vec::new();
    for (k, v) in sample {
        for r in ring.replicas(token_of(k.as_bytes()), 3) {
            let node = by_id[&r.0];
            if local_value(node, k).as_deref() != Some(v.as_str()) {
                missing.push(format!("{k} on {}", node.addr));
            }
        }
    }
    assert!(missing.is_empty(), "{} replica copies missing: {:?}", missing.len(), missing);
}

/// Versions copied by the movement reported in `kvs status` of `addr` (its progress line).
fn versions_copied(addr: &str) -> u64 {
    let s = status(addr).unwrap();
    let line = s["movement"].as_str().unwrap().to_string();
    let n = line
        .split(';')
        .find_map(|part| part.trim().split_once(" versions"))
        .map(|(n, _)| n.trim().parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("no version count in {line:?}"));
    eprintln!("{addr}: {line}");
    n
}

fn sample_of(keys: &BTreeMap<String, String>, n: usize) -> Vec<(String, String)> {
    let step = (keys.len() / n).max(1);
    keys.iter().step_by(step).map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn start(i: u8, port: u16, dir: &Path, shards: &str, seed: Option<&str>) -> Server {
    let listen = format!("127.0.0.{i}:{port}");
    let mut extra = Vec::new();
    if let Some(s) = seed {
        extra.extend(["--seeds", s]);
    }
    Server::start_at(&listen, dir, &node_args(shards, &extra))
}

#[test]
fn three_to_four_to_three_under_load_loses_nothing() {
    let t0 = Instant::now();
    let port = port_free_on_hosts(4, 2);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = start(1, port, dirs[0].path(), "1", None);
    let seed = n1.addr.clone();
    let n2 = start(2, port, dirs[1].path(), "1", Some(&seed));
    let n3 = start(3, port, dirs[2].path(), "1", Some(&seed));
    let three = [&n1, &n2, &n3];
    let ids3: Vec<&str> = three.iter().map(|n| n.node_id.as_str()).collect();
    wait_for("three nodes up and alive", Duration::from_secs(30), || {
        converged(&three, &ids3).then_some(())
    });
    let mut keys = preload(&seed, 3000);
    eprintln!("3 nodes up, 3000 keys written at {:?}", t0.elapsed());

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    let loader = {
        let (seed, stop, load) = (seed.clone(), stop.clone(), load.clone());
        std::thread::spawn(move || run_load(seed, stop, load, 200_000))
    };
    std::thread::sleep(Duration::from_millis(500));

    // Grow: node 4 joins (two shards) and streams its ranges.
    let join_started = Instant::now();
    let mut n4 = start(4, port, dirs[3].path(), "2", Some(&seed));
    let four = [&n1, &n2, &n3, &n4];
    let ids4: Vec<&str> = four.iter().map(|n| n.node_id.as_str()).collect();
    wait_for("four nodes up and alive", Duration::from_secs(60), || {
        converged(&four, &ids4).then_some(())
    });
    let joined_in = join_started.elapsed();
    let copied_in = versions_copied(&n4.addr);
    std::thread::sleep(Duration::from_millis(500));
    let during_join: Vec<(String, String)> = {
        let l = load.lock().unwrap();
        eprintln!(
            "after the join ({joined_in:?}): {} writes, {} reads, {} failures",
            l.writes,
            l.reads,
            l.failures.len()
        );
        keys.extend(l.acked.clone());
        sample_of(&l.acked, 40)
    };
    let total_keys = keys.len() as u64;
    let moved_in = copied_in as f64 / (3 * total_keys) as f64;
    eprintln!(
        "join: node 4 received {copied_in} versions of ~{total_keys} keys: {:.3} of all replica \
         copies moved (1/4 expected for a fourth node)",
        moved_in
    );
    // Every replica of the four-node ring holds the keys: preloaded ones by streaming, and
    // those written during the join by the writes to pending replicas.
    let ring4 = ring_of(&four);
    let mut sample = sample_of(&keys, 120);
    sample.extend(during_join);
    replicas_hold(&four, &ring4, &sample);

    // Shrink: decommission node 4 with the CLI, which follows it to the end.
    // Without the cluster's secret the request is refused.
    let refused = kvs(
        &[
            "decommission",
            "--addr",
            &n4.addr,
            "--cluster-name",
            "elastic",
            "--cluster-secret",
            "wrong",
        ],
        None,
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bad cluster secret"));
    let out =
        kvs(&[&["decommission", "--addr", &n4.addr, "--timeout-ms", "3000"], KEY].concat(), None);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("kvs decommission:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "decommission failed: {text}");
    assert!(text.contains("left the ring"), "{text}");
    let copied_out = versions_copied(&n4.addr);
    wait_for("three nodes up and node 4 left", Duration::from_secs(30), || {
        converged(&three, &ids3).then_some(())
    });
    assert_eq!(n4.stop(), Some(0), "the decommissioned node stops cleanly");
    // Started again on its old data, it refuses: the data is stale.
    let again = std::process::Command::new(support::kvs_bin())
        .args(["server", "--listen", &n4.addr, "--data-dir"])
        .arg(dirs[3].path())
        .args(node_args("2", &["--seeds", &seed]))
        .output()
        .unwrap();
    assert!(!again.status.success());
    let why = String::from_utf8_lossy(&again.stderr);
    assert!(why.contains("left the ring"), "{why}");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    loader.join().unwrap();

    let l = load.lock().unwrap();
    keys.extend(l.acked.clone());
    let moved_out = copied_out as f64 / (3 * keys.len() as u64) as f64;
    eprintln!(
        "decommission: node 4 sent {copied_out} versions of ~{} keys: {:.3} of all replica \
         copies moved",
        keys.len(),
        moved_out
    );
    eprintln!(
        "load through 3 -> 4 -> 3: {} writes, {} reads acknowledged, {} failed; whole test {:?}",
        l.writes,
        l.reads,
        l.failures.len(),
        t0.elapsed()
    );
    assert!(l.writes > 100 && l.reads > 100, "the load ran: {} writes {} reads", l.writes, l.reads);
    assert!(l.failures.is_empty(), "requests failed during the moves: {:?}", l.failures);
    // The client followed the ring by itself: it holds the three-node topology (node 4 gone).
    let served = status(&n1.addr).unwrap()["topology_version"].as_u64().unwrap();
    assert_eq!(l.final_version, served, "the client's topology is the one node 1 serves");
    assert!((0.15..0.40).contains(&moved_in), "join moved {moved_in:.3} of the replica copies");
    assert!((0.15..0.40).contains(&moved_out), "leave moved {moved_out:.3} of the copies");
    drop(l);

    // No acknowledged key is lost, and the three-node ring's replicas hold the sample.
    let all = keys.clone();
    let seed2 = seed.clone();
    let lost: Vec<String> = on_executor(move || async move {
        let client = Client::connect(&seed2, ClientOptions::default()).await.unwrap();
        let mut lost = Vec::new();
        for (k, v) in &all {
            match client.get_with(k.as_bytes(), Consistency::Quorum).await {
                Ok(Some((got, _))) if got == v.as_bytes() => {}
                other => lost.push(format!("{k}: {other:?}")),
            }
        }
        client.close().await;
        lost
    });
    assert!(
        lost.is_empty(),
        "{} acknowledged keys lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    replicas_hold(&three, &ring_of(&three), &sample_of(&keys, 120));
}

#[test]
fn removenode_re_replicates_a_dead_nodes_ranges() {
    let port = port_free_on_hosts(4, 1);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let n1 = start(1, port, dirs[0].path(), "1", None);
    let seed = n1.addr.clone();
    let n2 = start(2, port, dirs[1].path(), "1", Some(&seed));
    let n3 = start(3, port, dirs[2].path(), "1", Some(&seed));
    let mut n4 = start(4, port, dirs[3].path(), "1", Some(&seed));
    let four = [&n1, &n2, &n3, &n4];
    let ids4: Vec<&str> = four.iter().map(|n| n.node_id.as_str()).collect();
    wait_for("four nodes up and alive", Duration::from_secs(30), || {
        converged(&four, &ids4).then_some(())
    });
    let keys = preload(&seed, 1500);
    let dead = n4.node_id.clone();
    n4.kill9();
    wait_for("node 4 seen down", Duration::from_secs(20), || {
        let s = status(&n1.addr)?;
        (members(&s).get(&dead)?.1 == "down").then_some(())
    });
    // Refused for a live node.
    let refused = kvs(&[&["removenode", &n2.node_id, "--addr", &n1.addr], KEY].concat(), None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not down"));

    let out = kvs(
        &[&["removenode", &dead, "--addr", &n1.addr, "--timeout-ms", "3000"], KEY].concat(),
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("kvs removenode:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "removenode failed: {text}");
    let three = [&n1, &n2, &n3];
    let ids3: Vec<&str> = three.iter().map(|n| n.node_id.as_str()).collect();
    wait_for("every survivor sees node 4 left", Duration::from_secs(20), || {
        converged(&three, &ids3).then_some(())
    });
    // Every key is on all three survivors (the three-node ring's replicas), read one by one.
    replicas_hold(&three, &ring_of(&three), &sample_of(&keys, 150));
}
