//! What `kvs status` and `kvs ring` show: a node's [`ClusterStatusResponse`] fetched from its
//! node-level port, with each member's share of the ring, as a table or JSON.
//!
//! Ownership is computed here, not by the node: the ring is the members whose status is
//! Joining, Up or Leaving (the nodes the topology the node serves lists), each with the tokens
//! `placement::vnode_tokens(id, vnodes)`, and [`Ring::ownership`] gives each one's share of
//! the token space as primary. Members outside the ring (Left, never heard) own 0.
//!
//! Load: the CLI asks each alive node's node port for its Stats (one request per node) and
//! shows the bytes of data it holds: SSTables plus memtables, summed over the shards that
//! answered, and its estimated keys (`keys~`): memtable entries plus every table's entry
//! count, an upper bound (a key with versions in several tables, or a tombstone, counts each
//! time; compaction brings it toward the truth). A node that is not alive or does not answer
//! shows `n/a` (`null` in JSON).
//!
//! ## JSON (`kvs status --json`)
//! ```text
//! {
//!   "node_id": "5c0f3e1a9b7d2c44",   the node that answered (16 hex digits)
//!   "cluster_name": "kvs",
//!   "topology_version": 6815744012,
//!   "replication_factor": 3,
//!   "ownership_total": 1.0,
//!   "movement_state": "done",        the answering node's join/decommission/removenode
//!   "movement": "join: done; …",     and its progress line ("" when idle)
//!   "nodes": [ { "id": "…", "addr": "127.0.0.1:7000", "state": "up", "liveness": "alive",
//!                "phi": 0.4, "shards": 1, "vnodes": 150, "ownership": 0.33,
//!                "generation": 1764111111, "heartbeat": 42, "load_bytes": 1234,
//!                "keys_estimate": 10 }, … ]
//! }
//! ```
//! Nodes are sorted by id. `state` is the gossiped status (`joining`, `up`, `leaving`,
//! `left`); `liveness` the answering node's verdict (`alive`, `suspect`, `down`, `unknown`).
//! Keys are only ever added.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use kvs_wire::limits::FRAME_HEADER_BYTES;
use kvs_wire::msg::{
    self, AlignedVec, ArchivedErrorResponse, ArchivedStatsResponse, StatsResponse,
};
use kvs_wire::peer::{
    ArchivedClusterStatusResponse, ClusterStatusResponse, MovementState, PeerStatus,
    GOSSIP_NODES_MAX, LIVENESS_NAMES, PEER_BODY_BYTES_MAX,
};
use kvs_wire::placement::{vnode_tokens, NodeId, Ring, SHARDS_MAX, VNODES_MAX};
use kvs_wire::{FrameHeader, Opcode};
use serde_json::{json, Value};

/// Sends one empty-bodied request of `opcode` to `addr` and returns the response body
/// (blocking, bounded by `timeout` per step; for the CLI thread only).
fn request(addr: &str, opcode: Opcode, timeout: Duration) -> Result<AlignedVec, String> {
    request_with(addr, opcode, &[], timeout)
}

/// Sends one request of `opcode` with the archived `body` to `addr` and returns the response
/// body (as [`request`]).
fn request_with(
    addr: &str,
    opcode: Opcode,
    body: &[u8],
    timeout: Duration,
) -> Result<AlignedVec, String> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)
        .map_err(|e| format!("connecting {addr}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    msg::write_empty_frame(&mut out, opcode, false, 1);
    if !body.is_empty() {
        out.extend_from_slice(body);
        let len = u32::try_from(body.len()).map_err(|_| "request body too large".to_string())?;
        // The body length field of the header (see kvs_wire::frame).
        if let Some(field) = out.get_mut(16..20) {
            field.copy_from_slice(&len.to_le_bytes());
        }
    }
    stream.write_all(&out).map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).map_err(|e| format!("reading from {addr}: {e}"))?;
    let h = FrameHeader::decode(&header, PEER_BODY_BYTES_MAX).map_err(|e| e.to_string())?;
    let mut body: AlignedVec = AlignedVec::with_capacity(h.body_len as usize);
    body.resize(h.body_len as usize, 0);
    stream.read_exact(&mut body).map_err(|e| format!("reading from {addr}: {e}"))?;
    if h.opcode == Opcode::Error {
        let m = msg::access::<ArchivedErrorResponse>(&body)
            .map(|e| e.message.as_str().to_string())
            .unwrap_or_else(|_| "(unreadable error)".into());
        return Err(format!("{addr} answered: {m}"));
    }
    if h.opcode != opcode || !h.response {
        return Err(format!("{addr} answered {:?} to {opcode:?}", h.opcode));
    }
    Ok(body)
}

/// Starts a decommission of the node at `addr` (`remove` None) or the removal of the dead
/// node `remove` by the node at `addr`, then prints its progress (one line each time it
/// changes, every `poll`) until it is done (Ok) or failed (Err with the outcome), or
/// `wait` has passed (Err).
pub fn run_movement(
    addr: &str,
    (key, cluster_name): (&kvs_wire::peer::ClusterKey, &str),
    remove: Option<u64>,
    timeout: Duration,
    poll: Duration,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<String, String> {
    // A decommission names the node it is for (its id, asked first), so a request seen on the
    // network cannot be sent to another node.
    let (opcode, target) = match remove {
        None => (Opcode::Decommission, fetch(addr, timeout)?.self_id),
        Some(id) => (Opcode::RemoveNode, id),
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let nonce = rand::random::<u64>();
    let req = kvs_wire::peer::AdminRequest::new(key, opcode, cluster_name, target, now_ms, nonce);
    let body = msg::encode_body(&req).map_err(|e| e.to_string())?;
    request_with(addr, opcode, &body, timeout)?;
    let deadline = std::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        #[allow(clippy::disallowed_methods)] // The CLI's own thread: no executor to block.
        std::thread::sleep(poll);
        // A node that is leaving may be slow to answer; a failed poll is retried.
        let status = match fetch(addr, timeout) {
            Ok(s) => s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = writeln!(out, "(status: {e})");
                continue;
            }
            Err(e) => return Err(e),
        };
        if status.movement != last {
            let _ = writeln!(out, "{}", status.movement);
            let _ = out.flush();
            last = status.movement.clone();
        }
        match status.movement_state {
            MovementState::Done => return Ok(status.movement),
            MovementState::Failed => return Err(status.movement),
            MovementState::Idle | MovementState::Running => {}
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("still running after {wait:?}: {last}"));
        }
    }
}

/// Asks the node at `addr` for its view of the cluster.
pub fn fetch(addr: &str, timeout: Duration) -> Result<ClusterStatusResponse, String> {
    let body = request(addr, Opcode::ClusterStatus, timeout)?;
    let archived =
        msg::access::<ArchivedClusterStatusResponse>(&body).map_err(|e| e.to_string())?;
    let status: ClusterStatusResponse = msg::to_owned(archived).map_err(|e| e.to_string())?;
    check(&status)?;
    Ok(status)
}

/// The bytes of data the node at `addr` holds (SSTables, memtable and frozen memtables over
/// every shard that answered) and its estimated keys (`keys_estimate`, an upper bound), from
/// its Stats counters; None when it cannot be asked.
pub fn fetch_load(addr: &str, timeout: Duration) -> Option<(u64, u64)> {
    let body = request(addr, Opcode::Stats, timeout).ok()?;
    let stats: StatsResponse =
        msg::to_owned(msg::access::<ArchivedStatsResponse>(&body).ok()?).ok()?;
    stats.check().ok()?;
    let sum = |names: &[&str]| {
        stats
            .shards
            .iter()
            .flat_map(|s| &s.counters)
            .filter(|c| names.contains(&c.name.as_str()))
            .fold(0u64, |sum, c| sum.saturating_add(c.value))
    };
    Some((sum(&["table_bytes", "memtable_bytes", "immutable_bytes"]), sum(&["keys_estimate"])))
}

/// Bounds the report relies on (the ring build is proportional to nodes × vnodes).
fn check(s: &ClusterStatusResponse) -> Result<(), String> {
    if s.members.len() > GOSSIP_NODES_MAX {
        return Err(format!("{} members (at most {GOSSIP_NODES_MAX})", s.members.len()));
    }
    for m in &s.members {
        if m.vnodes > VNODES_MAX || m.shard_ports.len() > usize::from(SHARDS_MAX) {
            return Err(format!("member {:016x} is out of bounds", m.id));
        }
    }
    Ok(())
}

/// One member with its share of the ring.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: u64,
    pub addr: String,
    pub state: &'static str,
    pub liveness: &'static str,
    pub phi: f64,
    pub shards: usize,
    pub vnodes: u16,
    /// Share of the token space owned as primary, 0..=1 (0 outside the ring).
    pub ownership: f64,
    pub generation: u64,
    pub heartbeat: u64,
    /// Whether the member is on the ring (Joining or Up, heard from).
    pub in_ring: bool,
    /// Bytes of data the node holds, when it was asked ([`StatusReport::fill_load`]).
    pub load_bytes: Option<u64>,
    /// Estimated keys it holds (an upper bound), when it was asked.
    pub keys_estimate: Option<u64>,
}

/// A status response made readable.
#[derive(Clone, Debug)]
pub struct StatusReport {
    pub node_id: u64,
    pub cluster_name: String,
    pub topology_version: u64,
    pub replication_factor: u8,
    pub rows: Vec<Row>,
    /// The answering node's range movement: `idle`, `running`, `done` or `failed`.
    pub movement_state: &'static str,
    /// Its progress line (empty when idle).
    pub movement: String,
}

fn state_name(s: PeerStatus) -> &'static str {
    match s {
        PeerStatus::Joining => "joining",
        PeerStatus::Up => "up",
        PeerStatus::Leaving => "leaving",
        PeerStatus::Left => "left",
        PeerStatus::Removing => "removing",
    }
}

impl StatusReport {
    pub fn new(s: &ClusterStatusResponse) -> StatusReport {
        let in_ring = |m: &kvs_wire::peer::MemberStatus| {
            matches!(
                m.status,
                PeerStatus::Joining | PeerStatus::Up | PeerStatus::Leaving | PeerStatus::Removing
            ) && m.heartbeat.generation > 0
        };
        let ring = Ring::new(
            s.members
                .iter()
                .filter(|m| in_ring(m))
                .map(|m| (NodeId(m.id), vnode_tokens(NodeId(m.id), m.vnodes))),
        );
        let shares = ring.ownership();
        let rows = s
            .members
            .iter()
            .map(|m| Row {
                id: m.id,
                addr: m.addr.clone(),
                state: state_name(m.status),
                liveness: LIVENESS_NAMES.get(usize::from(m.liveness)).copied().unwrap_or("?"),
                phi: m.phi,
                shards: m.shard_ports.len(),
                vnodes: m.vnodes,
                ownership: shares
                    .iter()
                    .find(|(id, _)| id.0 == m.id)
                    .map_or(0.0, |(_, share)| *share),
                generation: m.heartbeat.generation,
                heartbeat: m.heartbeat.version,
                in_ring: in_ring(m),
                load_bytes: None,
                keys_estimate: None,
            })
            .collect();
        StatusReport {
            node_id: s.self_id,
            cluster_name: s.cluster_name.clone(),
            topology_version: s.topology_version,
            replication_factor: s.replication_factor,
            rows,
            movement_state: match s.movement_state {
                MovementState::Idle => "idle",
                MovementState::Running => "running",
                MovementState::Done => "done",
                MovementState::Failed => "failed",
            },
            movement: s.movement.clone(),
        }
    }

    /// Asks every alive node for its load (one Stats request each, `timeout` per step);
    /// nodes that are not alive or do not answer keep `None`.
    pub fn fill_load(&mut self, timeout: Duration) {
        for r in &mut self.rows {
            if r.liveness == "alive" {
                let load = fetch_load(&r.addr, timeout);
                r.load_bytes = load.map(|l| l.0);
                r.keys_estimate = load.map(|l| l.1);
            }
        }
    }

    /// The JSON form (see the module docs).
    pub fn to_json(&self) -> Value {
        let nodes: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "id": format!("{:016x}", r.id),
                    "addr": r.addr,
                    "state": r.state,
                    "liveness": r.liveness,
                    "phi": r.phi,
                    "shards": r.shards,
                    "vnodes": r.vnodes,
                    "ownership": r.ownership,
                    "generation": r.generation,
                    "heartbeat": r.heartbeat,
                    "load_bytes": r.load_bytes,
                    "keys_estimate": r.keys_estimate,
                })
            })
            .collect();
        json!({
            "node_id": format!("{:016x}", self.node_id),
            "cluster_name": self.cluster_name,
            "topology_version": self.topology_version,
            "replication_factor": self.replication_factor,
            "ownership_total": self.rows.iter().map(|r| r.ownership).sum::<f64>(),
            "movement_state": self.movement_state,
            "movement": self.movement,
            "nodes": nodes,
        })
    }

    /// The table for people.
    pub fn to_table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "cluster {:?}, as seen by node {:016x}: topology version {}, replication factor {}",
            self.cluster_name, self.node_id, self.topology_version, self.replication_factor
        );
        let _ = writeln!(
            t,
            "{:<16}  {:<21}  {:<7}  {:<8}  {:>7}  {:>6}  {:>6}  {:>9}  {:>10}  {:>10}",
            "id",
            "address",
            "state",
            "liveness",
            "phi",
            "shards",
            "vnodes",
            "owns",
            "load",
            "keys~"
        );
        for r in &self.rows {
            let phi = if r.phi >= 1e6 { "inf".to_string() } else { format!("{:.2}", r.phi) };
            let _ = writeln!(
                t,
                "{:016x}  {:<21}  {:<7}  {:<8}  {:>7}  {:>6}  {:>6}  {:>8.2}%  {:>10}  {:>10}",
                r.id,
                r.addr,
                r.state,
                r.liveness,
                phi,
                r.shards,
                r.vnodes,
                r.ownership * 100.0,
                r.load_bytes.map_or_else(|| "n/a".to_string(), human_bytes),
                r.keys_estimate.map_or_else(|| "n/a".to_string(), |k| k.to_string())
            );
        }
        if !self.movement.is_empty() {
            let _ = writeln!(t, "movement on this node: {}", self.movement);
        }
        t
    }

    /// `kvs ring`: per node on the ring, its vnode count and share; with `tokens`, every
    /// token in ring order with its owner.
    pub fn ring_table(&self, tokens: bool) -> String {
        let mut t = String::new();
        let ring: Vec<&Row> = self.rows.iter().filter(|r| r.in_ring).collect();
        let _ = writeln!(
            t,
            "ring of {} node(s), {} vnodes, topology version {}",
            ring.len(),
            ring.iter().map(|r| usize::from(r.vnodes)).sum::<usize>(),
            self.topology_version
        );
        let _ = writeln!(t, "{:<16}  {:<21}  {:>6}  {:>9}", "id", "address", "tokens", "owns");
        for r in &ring {
            let _ = writeln!(
                t,
                "{:016x}  {:<21}  {:>6}  {:>8.2}%",
                r.id,
                r.addr,
                r.vnodes,
                r.ownership * 100.0
            );
        }
        if tokens {
            let mut all: Vec<(u64, u64)> = ring
                .iter()
                .flat_map(|r| vnode_tokens(NodeId(r.id), r.vnodes).into_iter().map(|x| (x.0, r.id)))
                .collect();
            all.sort_unstable();
            let _ = writeln!(t, "\n{:<20}  owner", "token");
            for (token, owner) in all {
                let _ = writeln!(t, "{token:<20}  {owner:016x}");
            }
        }
        t
    }
}

/// `1536` -> `1.5 KiB`.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_wire::peer::{MemberStatus, PeerHeartbeat};

    fn member(id: u64, status: PeerStatus) -> MemberStatus {
        MemberStatus {
            id,
            addr: format!("127.0.0.{id}:7000"),
            status,
            liveness: 0,
            phi: 0.5,
            heartbeat: PeerHeartbeat { generation: 9, version: 3 },
            shard_ports: vec![7001],
            vnodes: 150,
        }
    }

    #[test]
    fn ownership_covers_the_ring_and_skips_nodes_off_it() {
        let s = ClusterStatusResponse {
            self_id: 1,
            cluster_name: "kvs".into(),
            topology_version: 7,
            replication_factor: 3,
            members: vec![
                member(1, PeerStatus::Up),
                member(2, PeerStatus::Up),
                member(3, PeerStatus::Joining),
                member(4, PeerStatus::Left),
            ],
            movement_state: MovementState::Idle,
            movement: String::new(),
        };
        let r = StatusReport::new(&s);
        let total: f64 = r.rows.iter().map(|x| x.ownership).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert_eq!(r.rows[3].ownership, 0.0);
        assert!(r.rows[..3].iter().all(|x| x.ownership > 0.2 && x.ownership < 0.5));
        let j = r.to_json();
        assert_eq!(j["nodes"].as_array().unwrap().len(), 4);
        assert_eq!(j["nodes"][3]["state"], "left");
        assert!(j["nodes"][0]["load_bytes"].is_null());
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
        assert!(r.to_table().contains("n/a"));
        let ring = r.ring_table(true);
        assert!(ring.starts_with("ring of 3 node(s), 450 vnodes"), "{ring}");
        assert_eq!(ring.lines().count(), 2 + 3 + 2 + 450);
    }
}
