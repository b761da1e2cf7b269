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
//! [`crate::cluster::quorum::ReadResolver`]. Only this node's replica is reachable today (no
//! transport carries requests to peers yet), so remote replicas count as not alive: with the
//! single-node topology (N = 1) every consistency but a count above 1 is served by the local
//! replica, and a count above N is `InvalidRequest` naming N.
//!
//! A Stats request is answered by the executor it lands on, which gathers every shard's
//! counters over the same channels (see [`stats`]).

mod conn;
mod exec;
pub mod notify;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::shared_channel::ConnectedSender;
use kvs_shards::Engine;
use kvs_wire::msg::{AlignedVec, TopologyResponse};
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
}

/// Settings every executor needs, fixed at start.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    pub node_id: u64,
    pub shard_count: u16,
    pub key_bytes_max: u32,
    pub value_bytes_max: u32,
    pub frame_body_bytes_max: u32,
    pub connection_inflight_max: usize,
    pub connections_max: usize,
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
    /// Connections accepted.
    pub connections: Cell<u64>,
    /// Frames refused as invalid.
    pub invalid_frames: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get().wrapping_add(1));
}

/// One executor's state. Lives on its executor only (`Rc`), shared by its tasks.
pub struct ExecutorCtx {
    /// This executor's index: shards are `0..shard_count`, the cluster core is `shard_count`.
    pub index: usize,
    pub settings: ShardSettings,
    /// The storage engine; `None` on the cluster core.
    pub engine: Option<Rc<Engine>>,
    hlc: RefCell<Hlc>,
    topology: Arc<TopologyResponse>,
    /// The ring of `topology`, for replica sets.
    ring: Ring,
    /// N from `topology` and the default consistencies.
    quorum: QuorumOptions,
    /// Senders to every other executor, by index (`None` at our own index).
    peers: Vec<Option<ConnectedSender<ShardMsg>>>,
    /// Forwarded requests awaiting their response: corr -> the client connection to answer.
    pending: RefCell<HashMap<u64, Rc<ConnOut>>>,
    /// Stats requests gathering shards' counters: corr -> the gather. Shares `next_corr`.
    gathers: RefCell<HashMap<u64, Rc<stats::Gather>>>,
    next_corr: Cell<u64>,
    /// Raised when the node shuts down: stop accepting and reading.
    pub shutdown: Latch,
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
        let ring = Ring::new(
            topology
                .nodes
                .iter()
                .map(|n| (NodeId(n.id), n.tokens.iter().map(|t| Token(*t)).collect())),
        );
        let quorum = QuorumOptions::with_replication_factor(topology.replication_factor.max(1));
        ExecutorCtx {
            index,
            settings,
            engine,
            hlc: RefCell::new(hlc),
            topology,
            ring,
            quorum,
            peers,
            pending: RefCell::new(HashMap::new()),
            gathers: RefCell::new(HashMap::new()),
            next_corr: Cell::new(1),
            shutdown: Latch::default(),
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            conn_closed: Notify::default(),
            counters: ShardCounters::default(),
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

    /// The replica set of `token` as this node can reach it: the ring's N replicas, this node
    /// first (it serves reads' full data), alive only when it is this node, since no transport
    /// carries requests to peers yet.
    fn replica_set(&self, token: Token) -> Vec<Replica> {
        let me = NodeId(self.settings.node_id);
        let mut set: Vec<Replica> = self
            .ring
            .replicas(token, usize::from(self.quorum.replication_factor))
            .into_iter()
            .map(|node| Replica { node, alive: node == me })
            .collect();
        set.sort_by_key(|r| !r.alive);
        set
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
                }
            }
            ShardMsg::StatsRequest { from, corr } => self.answer_stats(from, corr),
            ShardMsg::StatsReply { corr, shard, counters } => {
                self.on_stats_reply(corr, shard, counters)
            }
        }
    }
}
