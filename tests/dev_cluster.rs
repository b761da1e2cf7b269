//! `kvs dev-cluster`: starts real nodes on 127.0.0.1..3 with one port, serves requests on any
//! of them, stops every node on SIGINT with exit 0, and a restart on the same directory finds
//! the data again.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{kvs, kvs_bin};

/// A port free (with the shard port above it) on 127.0.0.1, .2 and .3.
fn free_port() -> u16 {
    support::port_free_on_hosts(3, 1)
}

/// A running supervisor and its stdout lines.
struct DevCluster {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl DevCluster {
    fn start(dir: &std::path::Path, port: u16) -> DevCluster {
        let mut child = Command::new(kvs_bin())
            .args(["dev-cluster", "--nodes", "3", "--shards", "1", "--port"])
            .arg(port.to_string())
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kvs dev-cluster");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        DevCluster { child, lines }
    }

    /// Waits (at most 90 s) for the ready line; returns the node pids from the table.
    fn wait_ready(&mut self) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut pids = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).expect("dev-cluster ready within 90 s");
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() == 5 && fields[1].starts_with("127.0.0.") {
                pids.push(fields[3].parse().expect("pid column"));
            }
            if line.starts_with("cluster ready: 3 nodes") {
                assert_eq!(pids.len(), 3, "table rows");
                return pids;
            }
        }
    }

    /// SIGINT, as Ctrl-C; the exit code (at most 60 s).
    fn interrupt(mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-INT").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "dev-cluster did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        // A failed test: take the supervisor down; its nodes get SIGTERM from the kernel
        // (parent-death signal) and stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Runs the CLI with `args`, again while it answers `Unavailable` for at most 3 s: the shards
/// learn the failure detector's verdicts with the next gossip round (1 s in a dev cluster).
fn quorum_settled(args: &[&str]) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let out = kvs(args, None);
        if !String::from_utf8_lossy(&out.stderr).contains("Unavailable")
            || Instant::now() > deadline
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (at most 30 s) until `kvs status` at `addr` shows three nodes, all up and alive.
fn wait_all_up(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kvs(&["status", "--json", "--addr", addr], None);
        let up = serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().is_some_and(|s| {
            s["nodes"].as_array().is_some_and(|nodes| {
                nodes.len() == 3
                    && nodes.iter().all(|n| n["state"] == "up" && n["liveness"] == "alive")
            })
        });
        if up {
            return;
        }
        assert!(Instant::now() < deadline, "not all up within 30 s: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dev_cluster_starts_serves_stops_and_restarts_on_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = |n: u8| format!("127.0.0.{n}:{port}");

    let mut cluster = DevCluster::start(dir.path(), port);
    let pids = cluster.wait_ready();
    // The nodes form one cluster (the status of every node lists all three, up and alive).
    for n in 1..=3u8 {
        wait_all_up(&addr(n));
    }
    // Quorum (the default) through each node, read back at quorum through the next one.
    for n in 1..=3u8 {
        let key = format!("key-{n}");
        let out = quorum_settled(&["put", &key, "hello", "--addr", &addr(n)]);
        assert!(out.status.success(), "put via node {n}: {out:?}");
        let next = n % 3 + 1;
        let out = quorum_settled(&["get", &key, "--addr", &addr(next)]);
        assert_eq!(out.stdout, b"hello", "get via node {next}: {out:?}");
    }
    assert_eq!(cluster.interrupt(), Some(0), "clean stop");
    for pid in &pids {
        assert!(!alive(*pid), "node pid {pid} still running after the supervisor exited");
    }
    for n in 1..=3u8 {
        let log = dir.path().join(format!("node-{n}/server.log"));
        assert!(log.exists(), "{} missing", log.display());
    }

    // The same directory again: same nodes, same secret, the data is still there.
    let secret = std::fs::read_to_string(dir.path().join("cluster-secret")).unwrap();
    let mut cluster = DevCluster::start(dir.path(), port);
    cluster.wait_ready();
    wait_all_up(&addr(3));
    assert_eq!(std::fs::read_to_string(dir.path().join("cluster-secret")).unwrap(), secret);
    for n in 1..=3u8 {
        let key = format!("key-{n}");
        let out = quorum_settled(&["get", &key, "--addr", &addr(n)]);
        assert_eq!(out.stdout, b"hello", "after restart, node {n}: {out:?}");
    }
    assert_eq!(cluster.interrupt(), Some(0));
}

#[test]
fn dev_cluster_refuses_a_bad_node_count() {
    let out = kvs(&["dev-cluster", "--nodes", "0"], None);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"), "{out:?}");
}
