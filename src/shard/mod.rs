//! The per-shard task: port listener, frame loop, routing and forwarding, and the coordinator.
//!
//! Every executor of a node (the `S` data shards and the cluster core) runs [`ExecutorCtx`]:
//! it accepts connections on its port and reads frames from them. A request whose key the
//! executor's shard owns is executed here (stamped, written to the engine, answered); any other
//! keyed request is forwarded over a bounded glommio channel to the owning shard, whose answer
//! comes back the same way and is written to the client's connection. The cluster core owns no
//! keys, so it forwards every keyed request that arrives on the node-level port.
//!
//! ## Invariants
//! - A request is answered on the connection it came from, with its request id, exactly once
//!   (or the connection closes).
//! - Every queue is bounded: a connection stops being read past `connection_inflight_max`
//!   requests in flight; a full shard-to-shard channel answers `Overloaded`.
//! - Bytes from a socket are validated before use: frame headers by `FrameHeader::decode`,
//!   bodies by rkyv validation. Nothing from the network can panic the node.
//! - This module is the one place that maps internal errors to wire [`ErrorCode`]s.
//!
//! ## Consistency
//! The shard that executes a keyed request is its coordinator. It resolves the request's
//! consistency against the replication factor in the node's topology
//! ([`crate::cluster::quorum::QuorumOptions`]), builds the key's replica set from the ring, and
//! runs the request through a [`crate::cluster::quorum::WriteTracker`] or
//! [`crate::cluster::quorum::ReadResolver`]. A replica counts as alive when it is this node or
//! the failure detector holds its node alive (the cluster core publishes the set as
//! [`ShardMsg::Liveness`]), so too few live replicas answer `Unavailable` before anything is
//! sent. The local copy is applied here; every remote copy goes to the cluster core as a
//! [`ShardMsg::ReplicaOut`] (over the bounded executor channel: a full channel counts as that
//! replica failing), which carries it to the peer and answers with a
//! [`ShardMsg::ReplicaReply`]. The coordinator waits at most `replica_timeout_ms` for the
//! replies it needs (see [`replica`]). A peer's cluster core hands the replica requests it
//! receives to the owning shard (`shard_of(token, S)`) as ordinary forwarded requests with the
//! `ReplicaWrite` / `ReplicaRead` opcodes, which apply the coordinator's stamp as is.
//!
//! A Stats request is answered by the executor it lands on, which gathers every shard's
//! counters over the same channels (see [`stats`]).
//!
//! ## Moving ranges
//! Reads use the ring of Up and Leaving nodes (a joining node has not copied its ranges yet; a
//! leaving one still holds its ranges). While some node is Joining or Leaving, a write goes to
//! the union of the key's replicas in that ring and in the ring of Joining and Up nodes
//! ([`crate::cluster::movement::write_set`]) and needs W plus one acknowledgement per extra
//! (pending) replica, capped at the size of the set: W of the replicas before the move and W of
//! those after it then hold the write, whichever ring the reads use when the move completes.
//!
//! ## Topology
//! Every executor answers Topology requests from its own copy of the topology, an
//! `Arc<TopologyResponse>` in a `RefCell` that only its executor touches (no lock). The cluster
//! core builds a new one when membership changes and sends it to every shard as a
//! [`ShardMsg::Topology`] ([`ExecutorCtx::publish_topology`]); an executor keeps the one with
//! the highest version, so messages that overtake each other do no harm.
//!
//! ## Node-to-node requests
//! Gossip and cluster-status frames (`GossipSyn`, `GossipAck2`, `ClusterStatus`) are handed to
//! the executor's [`PeerService`], which only the cluster core has (it serves the node-level
//! port); a shard port answers them with `InvalidRequest`. Replica links (`PeerHello`, then
//! `ReplicaWrite` and `ReplicaRead`) are served on the node-level port too, and only on a
//! connection whose handshake ([`ReplicaService::hello`]) has verified; any other connection
//! that sends a replica request gets `InvalidRequest` and is closed.

mod conn;
mod exec;
pub mod notify;
pub mod replica;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::shared_channel::ConnectedSender;
use kvs_shards::Engine;
use kvs_wire::msg::{self, AlignedVec, NodeStatus, TopologyResponse};
use kvs_wire::placement::{NodeId, Ring, Token};
use kvs_wire::Opcode;

use crate::cluster::hlc::Hlc;
use crate::cluster::quorum::{QuorumOptions, Replica};
use conn::ConnOut;
use notify::{Latch, Notify};

pub use conn::serve_listener;
pub use exec::shard_error_code;

/// A message between two executors of one node.
pub enum ShardMsg {
    /// Execute a client request on the receiving shard and answer `from` with `corr`.
    Request { from: usize, corr: u64, request_id: u64, opcode: Opcode, body: AlignedVec },
    /// The whole response frame for the request `corr` that this executor forwarded.
    Response { corr: u64, frame: Vec<u8> },
    /// Send this shard's counters to `from` for its stats gather `corr`.
    StatsRequest { from: usize, corr: u64 },
    /// Shard `shard`'s named counters for the stats gather `corr`.
    StatsReply { corr: u64, shard: u32, counters: Vec<(String, u64)> },
    /// A newer topology, from the cluster core.
    Topology(Arc<TopologyResponse>),
    /// The ids of the nodes the failure detector holds alive (alive or suspect), sorted, with
    /// a sequence number that grows with each publication; from the cluster core.
    Liveness { seq: u64, alive: Arc<Vec<u64>> },
    /// A replica request (`ReplicaWrite` or `ReplicaRead`, archived body without a frame
    /// header) for node `target`, from coordinating shard `from` to the cluster core.
    /// `corr` 0 asks for no reply (read repair).
    ReplicaOut { from: usize, corr: u64, target: NodeId, opcode: Opcode, body: Vec<u8> },
    /// A write for `target`, a replica that is down: kept as a hint by the cluster core.
    Hint { target: NodeId, body: Vec<u8> },
    /// The answer to the `ReplicaOut` `corr`, from the cluster core.
    ReplicaReply { corr: u64, answer: replica::ReplicaAnswer },
}

/// The body of a whole response `frame` to `opcode`, or the error it carries.
pub fn response_body(frame: &[u8], opcode: Opcode) -> Result<AlignedVec, String> {
    let header = frame
        .get(..kvs_wire::limits::FRAME_HEADER_BYTES)
        .ok_or("a response shorter than a frame header")?;
    let h = kvs_wire::FrameHeader::decode(header, kvs_wire::limits::FRAME_BODY_BYTES_MAX)
        .map_err(|e| format!("a bad response frame: {e}"))?;
    let rest = frame.get(kvs_wire::limits::FRAME_HEADER_BYTES..).unwrap_or_default();
    let mut body = AlignedVec::with_capacity(rest.len());
    body.extend_from_slice(rest);
    match h.opcode {
        Opcode::Error => Err(match msg::access::<msg::ArchivedErrorResponse>(&body) {
            Ok(e) => e.message.as_str().to_string(),
            Err(e) => format!("an unreadable error response: {e}"),
        }),
        op if op == opcode && h.response => Ok(body),
        op => Err(format!("{opcode:?} answered with {op:?}")),
    }
}

/// Where a node-level connection is in the replica-link handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PeerAuth {
    #[default]
    None,
    /// A Hello was answered with a Challenge; the Proof must match these.
    Challenged { peer: u64, nonce_peer: u64, nonce_ours: u64 },
    /// The peer proved it holds the cluster key.
    Authenticated { peer: u64 },
}

/// Carries replica requests to peers and runs the listener's side of the replica-link
/// handshake; the cluster core has one.
pub trait ReplicaService {
    /// Sends a replica request to `target` and answers shard `from` with a
    /// [`ShardMsg::ReplicaReply`] of `corr` (unless `corr` is 0), exactly once.
    fn send(&self, from: usize, corr: u64, target: NodeId, opcode: Opcode, body: Vec<u8>);
    /// Keeps the write in `body` (an archived `ReplicaWrite`) as a hint for `target`, a
    /// replica that was not asked because it is down.
    fn hint(&self, target: NodeId, body: Vec<u8>);
    /// The live set (sorted ids), every gossip round: replays hints to live targets.
    fn on_liveness(&self, alive: &[u64]);
    /// Answers one `PeerHello` frame, advancing `auth`. Returns false when the connection must
    /// be closed (the error frame is already in `out`).
    fn hello(
        &self,
        request_id: u64,
        body: &AlignedVec,
        auth: &Cell<PeerAuth>,
        out: &mut Vec<u8>,
    ) -> bool;
}

/// Serves node-to-node frames on the executor that has one (the cluster core).
pub trait PeerService {
    /// Answers one request frame (`opcode`, `request_id`, validated header, raw `body`) by
    /// appending exactly one response frame to `out`. Never panics on any body.
    fn handle(&self, opcode: Opcode, request_id: u64, body: &AlignedVec, out: &mut Vec<u8>);
}

/// Settings every executor needs, fixed at start.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub node_id: u64,
    pub shard_count: u16,
    pub key_bytes_max: u32,
    pub value_bytes_max: u32,
    pub frame_body_bytes_max: u32,
    /// Bound on a node-to-node frame's body (gossip), at least `frame_body_bytes_max`; larger
    /// on the cluster core only, and only for the node-to-node opcodes.
    pub peer_body_bytes_max: u32,
    pub connection_inflight_max: usize,
    pub connections_max: usize,
    /// How long a coordinator waits for remote replicas, ms.
    pub replica_timeout_ms: u64,
    /// How long writes still go to the replicas of a read ring that was just replaced, ms
    /// (the node's `ring_delay_ms`).
    pub ring_delay_ms: u64,
    /// The node was started without seeds: while its ring holds only itself it is a
    /// single-node store (effective N of 1). A node with seeds never is: before it has heard
    /// from its peers, quorum requests are `Unavailable` rather than served by one copy.
    pub standalone: bool,
}

/// Counters of one executor, reported at shutdown and, for shards, in stats responses (see
/// [`stats::EXECUTOR_COUNTER_NAMES`]).
#[derive(Default, Debug)]
pub struct ShardCounters {
    /// Requests executed here for a client connected here.
    pub served_local: Cell<u64>,
    /// Requests that arrived here and were forwarded to their owning shard.
    pub forwarded_out: Cell<u64>,
    /// Requests executed here on behalf of another executor.
    pub served_for_peers: Cell<u64>,
    /// Requests refused with `Overloaded` because a peer channel was full.
    pub overloaded: Cell<u64>,
    /// Stale replicas that a read coordinated here sent the newest version to.
    pub read_repairs: Cell<u64>,
    /// Connections accepted.
    pub connections: Cell<u64>,
    /// Frames refused as invalid.
    pub invalid_frames: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

/// A topology and what requests derive from it.
struct Placement {
    topology: Arc<TopologyResponse>,
    /// The ring reads use: Up and Leaving nodes (a joining node has not streamed its ranges
    /// yet; a leaving one still holds its ranges).
    read_ring: Ring,
    /// The ring writes go to as well while a node joins or leaves: Joining and Up nodes.
    /// `None` when it is the read ring (nobody moving).
    pending_ring: Option<Ring>,
    /// The ids of the read ring's nodes, sorted.
    readers: Vec<u64>,
    /// The read ring of an earlier placement, kept for `ring_delay_ms` after the read ring
    /// changed (a node became Up or Left): coordinators that have not heard of the change yet
    /// still read from it, so writes go to its replicas too (with one more acknowledgement
    /// each) until every node has heard. With the topology it came from, for addresses.
    previous: Option<(Ring, Arc<TopologyResponse>, std::time::Instant)>,
    /// The effective N and the default consistencies. N is the configured replication factor,
    /// except on a standalone node (no seeds) whose ring holds only itself, where it is 1: one
    /// node on defaults serves quorum requests. Otherwise a ring with fewer nodes than N has
    /// fewer replicas than N, and a consistency that needs more answers `Unavailable` (never
    /// "all" acknowledged by fewer than N copies).
    quorum: QuorumOptions,
}

impl Placement {
    fn new(topology: Arc<TopologyResponse>, standalone: bool) -> Placement {
        let ring_of = |keep: &dyn Fn(NodeStatus) -> bool| {
            Ring::new(
                topology
                    .nodes
                    .iter()
                    .filter(|n| keep(n.status))
                    .map(|n| (NodeId(n.id), n.tokens.iter().map(|t| Token(*t)).collect())),
            )
        };
        let read_ring = ring_of(&|s| matches!(s, NodeStatus::Up | NodeStatus::Leaving));
        let mut readers: Vec<u64> = topology
            .nodes
            .iter()
            .filter(|n| matches!(n.status, NodeStatus::Up | NodeStatus::Leaving))
            .map(|n| n.id)
            .collect();
        readers.sort_unstable();
        let moving = topology.nodes.iter().any(|n| n.status != NodeStatus::Up);
        let pending_ring =
            moving.then(|| ring_of(&|s| matches!(s, NodeStatus::Joining | NodeStatus::Up)));
        let n = if standalone && topology.nodes.len() <= 1 {
            1
        } else {
            topology.replication_factor.max(1)
        };
        let quorum = QuorumOptions::with_replication_factor(n);
        Placement { topology, read_ring, readers, previous: None, pending_ring, quorum }
    }

    /// The earlier read ring while it is still kept.
    fn previous_ring(&self) -> Option<&Ring> {
        self.previous
            .as_ref()
            .filter(|(_, _, until)| std::time::Instant::now() < *until)
            .map(|(ring, _, _)| ring)
    }
}

/// One executor's state. Lives on its executor only (`Rc`), shared by its tasks.
pub struct ExecutorCtx {
    /// This executor's index: shards are `0..shard_count`, the cluster core is `shard_count`.
    pub index: usize,
    pub settings: ShardSettings,
    /// The storage engine; `None` on the cluster core.
    pub engine: Option<Rc<Engine>>,
    hlc: RefCell<Hlc>,
    /// The topology served to clients, with its ring and quorum settings; replaced (all
    /// three at once) by newer topologies from the cluster core.
    placement: RefCell<Rc<Placement>>,
    /// Gossip and cluster status; set on the cluster core only.
    peer_service: RefCell<Option<Rc<dyn PeerService>>>,
    /// Replica links to peers; set on the cluster core only.
    replica_service: RefCell<Option<Rc<dyn ReplicaService>>>,
    /// Nodes the failure detector holds alive, with the sequence number of that news.
    alive: RefCell<(u64, Arc<Vec<u64>>)>,
    /// Replica requests awaiting the cluster core's answer: corr -> (node, the request's inbox).
    replica_waits: RefCell<HashMap<u64, (NodeId, Rc<replica::ReplicaInbox>)>>,
    /// Senders to every other executor, by index (`None` at our own index).
    peers: Vec<Option<ConnectedSender<ShardMsg>>>,
    /// Forwarded requests awaiting their response: corr -> the client connection to answer.
    pending: RefCell<HashMap<u64, Rc<ConnOut>>>,
    /// Requests this executor's own tasks sent to a shard ([`Self::call_shard`]): corr -> where
    /// the response frame goes. Shares `next_corr`.
    calls: RefCell<HashMap<u64, Rc<notify::Slot<Vec<u8>>>>>,
    /// Stats requests gathering shards' counters: corr -> the gather. Shares `next_corr`.
    gathers: RefCell<HashMap<u64, Rc<stats::Gather>>>,
    next_corr: Cell<u64>,
    /// Raised when the node shuts down: stop accepting and reading.
    pub shutdown: Latch,
    /// Raised once every executor of the node has drained its connections: the cluster
    /// core's replica links stop then, not before (in-flight requests still need them).
    pub stopped: Latch,
    /// Bytes of large unauthenticated frame bodies being read on this executor (see
    /// `conn::UNAUTHENTICATED_LARGE_BYTES_MAX`).
    pub(crate) large_frame_bytes: Cell<u64>,
    /// Stop signals of open connections, by connection id.
    conns: RefCell<HashMap<u64, Rc<Notify>>>,
    next_conn: Cell<u64>,
    /// Notified whenever a connection closes (shutdown waits for all to close).
    conn_closed: Notify,
    pub counters: ShardCounters,
}

impl ExecutorCtx {
    /// A context for executor `index`.
    pub fn new(
        index: usize,
        settings: ShardSettings,
        engine: Option<Rc<Engine>>,
        hlc_floor: u64,
        topology: Arc<TopologyResponse>,
        peers: Vec<Option<ConnectedSender<ShardMsg>>>,
    ) -> ExecutorCtx {
        let mut hlc = Hlc::new();
        hlc.observe(hlc_floor);
        let standalone = settings.standalone;
        ExecutorCtx {
            index,
            settings,
            engine,
            hlc: RefCell::new(hlc),
            placement: RefCell::new(Rc::new(Placement::new(topology, standalone))),
            peer_service: RefCell::new(None),
            replica_service: RefCell::new(None),
            alive: RefCell::new((0, Arc::new(Vec::new()))),
            replica_waits: RefCell::new(HashMap::new()),
            peers,
            pending: RefCell::new(HashMap::new()),
            gathers: RefCell::new(HashMap::new()),
            calls: RefCell::new(HashMap::new()),
            next_corr: Cell::new(1),
            shutdown: Latch::default(),
            stopped: Latch::default(),
            large_frame_bytes: Cell::new(0),
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            conn_closed: Notify::default(),
            counters: ShardCounters::default(),
        }
    }

    /// The topology this executor serves now.
    pub fn topology(&self) -> Arc<TopologyResponse> {
        self.placement.borrow().topology.clone()
    }

    /// The topology with its ring and quorum settings.
    fn placement(&self) -> Rc<Placement> {
        self.placement.borrow().clone()
    }

    /// Keeps `topology` (and rebuilds the ring from it) if it is newer than the one held.
    pub fn set_topology(&self, topology: Arc<TopologyResponse>) {
        let old = self.placement();
        if topology.version <= old.topology.version {
            return;
        }
        let mut new = Placement::new(topology, self.settings.standalone);
        let now = std::time::Instant::now();
        new.previous = if new.readers != old.readers && !old.readers.is_empty() {
            let until = now + std::time::Duration::from_millis(self.settings.ring_delay_ms);
            Some((old.read_ring.clone(), old.topology.clone(), until))
        } else {
            old.previous.clone().filter(|(_, _, until)| now < *until)
        };
        *self.placement.borrow_mut() = Rc::new(new);
    }

    /// The `--listen` address of `node` in the topology served, or in the one before it while
    /// that is kept (a node that has just left still takes the writes of its old ranges).
    pub fn node_addr(&self, node: NodeId) -> Option<String> {
        let p = self.placement();
        let find =
            |t: &TopologyResponse| t.nodes.iter().find(|n| n.id == node.0).map(|n| n.addr.clone());
        find(&p.topology).or_else(|| p.previous.as_ref().and_then(|(_, t, _)| find(t)))
    }

    /// Serves `topology` here and sends it to every other executor of the node.
    pub fn publish_topology(self: &Rc<Self>, topology: Arc<TopologyResponse>) {
        self.set_topology(topology.clone());
        for i in 0..self.peers.len() {
            let ctx = self.clone();
            let t = topology.clone();
            glommio::spawn_local(async move {
                if let Some(Some(peer)) = ctx.peers.get(i) {
                    // The receiver never blocks on us, so awaiting room cannot deadlock.
                    let _ = peer.send(ShardMsg::Topology(t)).await;
                }
            })
            .detach();
        }
    }

    /// Installs the handler of node-to-node frames (the cluster core's gossip).
    pub fn set_peer_service(&self, service: Rc<dyn PeerService>) {
        *self.peer_service.borrow_mut() = Some(service);
    }

    fn peer_service(&self) -> Option<Rc<dyn PeerService>> {
        self.peer_service.borrow().clone()
    }

    /// Installs the replica links (the cluster core's).
    pub fn set_replica_service(&self, service: Rc<dyn ReplicaService>) {
        *self.replica_service.borrow_mut() = Some(service);
    }

    pub fn replica_service(&self) -> Option<Rc<dyn ReplicaService>> {
        self.replica_service.borrow().clone()
    }

    /// Keeps `alive` if it is newer than the set held.
    pub fn set_liveness(&self, seq: u64, alive: Arc<Vec<u64>>) {
        let mut held = self.alive.borrow_mut();
        if seq > held.0 {
            *held = (seq, alive);
        }
    }

    /// The ids of the nodes the failure detector holds alive, sorted.
    pub fn alive_nodes(&self) -> Vec<u64> {
        self.alive.borrow().1.to_vec()
    }

    /// Holds `alive` here and sends it to every other executor of the node.
    pub fn publish_liveness(self: &Rc<Self>, seq: u64, alive: Arc<Vec<u64>>) {
        self.set_liveness(seq, alive.clone());
        for i in 0..self.peers.len() {
            self.send_to(i, ShardMsg::Liveness { seq, alive: alive.clone() });
        }
    }

    /// Sends `msg` to executor `index`, waiting for room in a task of its own: receivers never
    /// block on their senders, so this cannot deadlock; it is for messages that must arrive.
    pub fn send_to(self: &Rc<Self>, index: usize, msg: ShardMsg) {
        let Some(Some(peer)) = self.peers.get(index) else { return };
        if let Err(
            glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg))
            | glommio::GlommioError::Closed(glommio::ResourceType::Channel(msg)),
        ) = peer.try_send(msg)
        {
            let ctx = self.clone();
            glommio::spawn_local(async move {
                if let Some(Some(peer)) = ctx.peers.get(index) {
                    let _ = peer.send(msg).await;
                }
            })
            .detach();
        }
    }

    /// Raises the shutdown latch and tells every open connection to stop reading.
    pub fn begin_shutdown(&self) {
        self.shutdown.raise();
        for stop in self.conns.borrow().values() {
            stop.notify();
        }
    }

    /// Number of open client connections.
    pub fn open_connections(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Waits until every client connection has closed or `grace` has passed.
    pub async fn drain_connections(&self, grace: std::time::Duration) {
        let deadline = std::time::Instant::now() + grace;
        while self.open_connections() > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    executor = self.index,
                    open = self.open_connections(),
                    "shutdown grace period over; closing remaining connections"
                );
                return;
            }
            let _ = glommio::timer::timeout(left, async {
                self.conn_closed.wait().await;
                Ok(())
            })
            .await;
        }
    }

    /// The read replicas of `token` as this node can reach them: the read ring's N replicas,
    /// alive when it is this node or the failure detector holds its node alive; this node first
    /// (it serves reads' full data without a network hop), then the other live ones in ring
    /// order.
    fn replica_set(&self, token: Token) -> Vec<Replica> {
        let p = self.placement();
        let nodes = p.read_ring.replicas(token, usize::from(p.quorum.replication_factor));
        self.reachable(nodes)
    }

    /// The replicas a write of `token` goes to, and how many of them are pending (gaining the
    /// range in a join or leave in progress, on top of the read replicas): see
    /// [`crate::cluster::movement::write_set`].
    fn write_replica_set(&self, token: Token) -> (Vec<Replica>, usize) {
        let p = self.placement();
        let n = usize::from(p.quorum.replication_factor);
        let previous = p.previous_ring();
        if p.pending_ring.is_none() && previous.is_none() {
            return (self.reachable(p.read_ring.replicas(token, n)), 0);
        }
        let mut nodes = p.read_ring.replicas(token, n);
        let read = nodes.len();
        for ring in [p.pending_ring.as_ref(), previous].into_iter().flatten() {
            for node in ring.replicas(token, n) {
                if !nodes.contains(&node) {
                    nodes.push(node);
                }
            }
        }
        let extra = nodes.len().saturating_sub(read);
        (self.reachable(nodes), extra)
    }

    fn reachable(&self, nodes: Vec<NodeId>) -> Vec<Replica> {
        let me = NodeId(self.settings.node_id);
        let alive = self.alive.borrow().1.clone();
        let mut set: Vec<Replica> = nodes
            .into_iter()
            .map(|node| Replica { node, alive: node == me || alive.binary_search(&node.0).is_ok() })
            .collect();
        set.sort_by_key(|r| (r.node != me, !r.alive));
        set
    }

    /// Sends a request (`opcode`, archived `body`) to shard `shard` of this node, as a peer's
    /// request would arrive, and returns the response body; an error response, a full
    /// channel or no answer within `timeout` is an error naming why.
    pub async fn call_shard(
        self: &Rc<Self>,
        shard: usize,
        opcode: Opcode,
        body: AlignedVec,
        timeout: std::time::Duration,
    ) -> Result<AlignedVec, String> {
        let Some(Some(peer)) = self.peers.get(shard) else {
            return Err(format!("no shard {shard} on this node"));
        };
        let corr = self.next_corr.get();
        self.next_corr.set(corr.wrapping_add(1));
        let slot = Rc::new(notify::Slot::default());
        self.calls.borrow_mut().insert(corr, slot.clone());
        let msg = ShardMsg::Request { from: self.index, corr, request_id: corr, opcode, body };
        let sent = futures_lite::future::or(
            async { peer.send(msg).await.map_err(|e| format!("shard {shard}: {e}")) },
            async {
                glommio::timer::sleep(timeout).await;
                Err(format!("shard {shard} took no request for {timeout:?}"))
            },
        )
        .await;
        let answer = match sent {
            Ok(()) => slot.wait_for(timeout).await.ok_or_else(|| {
                format!("shard {shard} did not answer {opcode:?} within {timeout:?}")
            }),
            Err(e) => Err(e),
        };
        self.calls.borrow_mut().remove(&corr);
        response_body(&answer?, opcode).map_err(|e| format!("shard {shard}: {e}"))
    }

    /// Number of forwarded requests still waiting for their owner's answer.
    pub fn pending_forwards(&self) -> usize {
        self.pending.borrow().len()
    }

    /// Handles one message from executor `from`: runs a peer's request, or completes one of ours.
    pub fn on_peer_message(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Request { from, corr, request_id, opcode, body } => {
                bump(&self.counters.served_for_peers);
                let ctx = self.clone();
                glommio::spawn_local(async move {
                    let mut frame = Vec::new();
                    ctx.execute_local(opcode, request_id, &body, &mut frame).await;
                    if let Some(Some(peer)) = ctx.peers.get(from) {
                        // The peer's receiver never blocks on us, so awaiting room cannot deadlock.
                        let _ = peer.send(ShardMsg::Response { corr, frame }).await;
                    }
                })
                .detach();
            }
            ShardMsg::Response { corr, frame } => {
                let conn = self.pending.borrow_mut().remove(&corr);
                if let Some(conn) = conn {
                    conn.push_frame(&frame);
                    conn.finish_one();
                } else if let Some(slot) = self.calls.borrow_mut().remove(&corr) {
                    slot.set(frame);
                }
            }
            ShardMsg::StatsRequest { from, corr } => self.answer_stats(from, corr),
            ShardMsg::StatsReply { corr, shard, counters } => {
                self.on_stats_reply(corr, shard, counters)
            }
            ShardMsg::Topology(topology) => self.set_topology(topology),
            ShardMsg::Liveness { seq, alive } => self.set_liveness(seq, alive),
            ShardMsg::ReplicaOut { from, corr, target, opcode, body } => {
                match self.replica_service() {
                    Some(service) => service.send(from, corr, target, opcode, body),
                    None if corr != 0 => {
                        let answer = replica::ReplicaAnswer::Failed(format!(
                            "executor {} carries no replica requests",
                            self.index
                        ));
                        self.send_to(from, ShardMsg::ReplicaReply { corr, answer });
                    }
                    None => {}
                }
            }
            ShardMsg::ReplicaReply { corr, answer } => self.on_replica_reply(corr, answer),
            ShardMsg::Hint { target, body } => {
                if let Some(service) = self.replica_service() {
                    service.hint(target, body);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_wire::msg::NodeInfo;
    use kvs_wire::placement::vnode_tokens;

    fn topology(nodes: &[u64]) -> Arc<TopologyResponse> {
        Arc::new(TopologyResponse {
            version: 1,
            self_id: nodes[0],
            replication_factor: 3,
            nodes: nodes
                .iter()
                .map(|id| NodeInfo {
                    id: *id,
                    addr: format!("127.0.0.{id}:7000"),
                    shard_ports: vec![7001],
                    tokens: vnode_tokens(NodeId(*id), 8).into_iter().map(|t| t.0).collect(),
                    status: NodeStatus::Up,
                })
                .collect(),
        })
    }

    #[test]
    fn only_a_standalone_node_alone_in_its_ring_runs_with_one_replica() {
        let n = |nodes: &[u64], standalone| {
            Placement::new(topology(nodes), standalone).quorum.replication_factor
        };
        assert_eq!(n(&[1], true), 1, "no seeds, alone: a single-node store");
        assert_eq!(n(&[1], false), 3, "seeds but no peer heard yet: N stays 3 (Unavailable)");
        assert_eq!(n(&[1, 2], true), 3, "a peer joined the seed node: N is the configured 3");
        assert_eq!(n(&[1, 2, 3], false), 3);
    }
}
