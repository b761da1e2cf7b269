//! Glommio tasks that move bytes for [`crate::cluster`]: gossip on the cluster core, the
//! replica links to peers ([`replica`]: replica writes and reads, hinted handoff), and the
//! durable hint log ([`hint_log`]: stores and replays what `cluster::hints` decides).
//!
//! [`GossipCore`] wraps one [`Membership`] (the pure state machine) on the cluster-core
//! executor. It does three things and decides nothing itself:
//! - **Rounds**: every `gossip_interval_ms` it calls [`Membership::tick`] and, for each Syn
//!   the machine returns, opens a TCP connection to that peer's node-level port (its
//!   `--listen` address) and runs one exchange ([`GossipCore::exchange`]): Syn out, Ack in,
//!   Ack2 out. Seeds whose address no heard-from member has yet get a Syn every round too.
//!   One exchange per peer address at a time; each is bounded by [`exchange_timeout`].
//!   Connections are not reused: one short connection per exchange, which at one round per
//!   second and a fanout of 3 costs nothing measurable and keeps no state per peer.
//! - **Serving**: the cluster core's connection loop hands it the `GossipSyn`, `GossipAck2`
//!   and `ClusterStatus` frames that arrive on the node port ([`PeerService`]).
//! - **Topology**: after every merge it compares [`Membership::topology_version`] with the
//!   version it last published and, when it grew, builds a new [`TopologyResponse`] (nodes
//!   whose status is Joining, Up or Leaving, with their shard ports and their tokens recomputed from
//!   id and vnode count) and publishes it to every executor
//!   ([`ExecutorCtx::publish_topology`]).
//!
//! ## Authentication
//! Every message is sealed and opened here with the cluster key (format and reasoning in
//! [`kvs_wire::peer`]). A refused message never reaches the membership: the node logs why
//! (at most once per [`REFUSAL_LOG_INTERVAL`] per peer and reason, and at most
//! [`REFUSAL_LOGS_PER_INTERVAL_MAX`] lines per interval in all) and answers the sender
//! with an `InvalidRequest` error that says why, which the sender logs in turn.
//!
//! - **Liveness**: every round and after every merge it publishes to every shard the set of
//!   nodes the failure detector holds alive (alive or suspect) when it changed ([`ExecutorCtx::publish_liveness`]),
//!   so coordinators count only reachable replicas.
//!
//! Replica requests travel on their own long-lived links ([`replica`]), not on gossip's
//! short connections.
//!
//! - **Movement**: a node's first start with seeds is a join ([`stream`]): it stays Joining
//!   until it has copied its ranges, then announces Up; Decommission and RemoveNode requests
//!   on the node port start a [`stream::Mover`] task and answer at once (progress in
//!   ClusterStatus). The topology lists Joining, Up and Leaving nodes with their status, which
//!   decides where each shard reads and writes (see `crate::shard`).
//!
//! Hinted handoff is wired in through [`replica`]: failed replica writes become hints in
//! [`hint_log`], replayed when the live set shows the target again.

pub mod hint_log;
pub mod replica;
pub mod stream;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kvs_wire::limits::FRAME_HEADER_BYTES;
use kvs_wire::msg::{
    self, AlignedVec, ArchivedErrorResponse, NodeInfo, NodeStatus, TopologyResponse,
};
use kvs_wire::peer::{
    self, ArchivedGossipBody, ArchivedPeerEnvelope, ClusterKey, ClusterStatusResponse, GossipBody,
    MemberStatus, MovementState, PeerDigest, PeerEnvelope, PeerHeartbeat, PeerState, PeerStatus,
    PEER_BODY_BYTES_MAX,
};
use kvs_wire::placement::{vnode_tokens, NodeId};
use kvs_wire::{ErrorCode, FrameHeader, Opcode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::gossip::{
    Digest, GossipMsg, Heartbeat, Liveness, Membership, NodeMeta, NodeState, Status,
};
use crate::shard::{ExecutorCtx, PeerService};

/// The same peer and reason are logged at most this often.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct (peer, reason) pairs remembered for log throttling; the memory is cleared when full.
const REFUSAL_KEYS_MAX: usize = 1024;
/// Refusal lines logged at most per [`REFUSAL_LOG_INTERVAL`] in all, so strangers that vary
/// their claimed id cannot flood the log; the number left out is logged with the first
/// refusal after the window.
pub const REFUSAL_LOGS_PER_INTERVAL_MAX: u32 = 20;

/// How long one exchange (connect, Syn, Ack, Ack2) may take: two gossip intervals, within
/// 200 ms..=5 s, so a stuck peer never holds more than a few rounds' worth of tasks.
pub fn exchange_timeout(gossip_interval_ms: u64) -> Duration {
    Duration::from_millis(gossip_interval_ms.saturating_mul(2).clamp(200, 5000))
}

/// What the cluster core needs to gossip, fixed at start.
pub struct ClusterSettings {
    /// This node's `--listen` address as bound.
    pub addr: SocketAddr,
    /// Addresses to join through (this node's own address is skipped).
    pub seeds: Vec<SocketAddr>,
    pub cluster_name: String,
    pub key: ClusterKey,
    pub gossip_interval_ms: u64,
    /// Replication factor N to report in the topology.
    pub replication_factor: u8,
}

/// Why a gossip message was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("malformed gossip: {0}")]
    Malformed(String),
    #[error("gossip from cluster {theirs:?} refused: this node is in cluster {ours:?}")]
    OtherCluster { theirs: String, ours: String },
    #[error(
        "gossip from node {sender:016x} refused: bad cluster secret (message authentication \
         failed)"
    )]
    BadSecret { sender: u64 },
}

impl Refusal {
    fn kind(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::OtherCluster { .. } => "cluster",
            Refusal::BadSecret { .. } => "secret",
        }
    }
}

/// The topology the membership describes: Joining, Up and Leaving nodes, sorted by id.
pub fn topology_of(membership: &Membership, replication_factor: u8) -> TopologyResponse {
    let nodes = membership
        .view(0)
        .into_iter()
        .filter(|v| v.state.heartbeat != Heartbeat::default())
        .filter_map(|v| {
            let status = match v.state.status {
                Status::Joining => NodeStatus::Joining,
                Status::Up => NodeStatus::Up,
                Status::Leaving | Status::Removing => NodeStatus::Leaving,
                Status::Left => return None,
            };
            Some((v, status))
        })
        .map(|(v, status)| NodeInfo {
            status,
            id: v.state.id.0,
            addr: v.state.addr.to_string(),
            shard_ports: v.state.meta.shard_ports.to_vec(),
            tokens: vnode_tokens(v.state.id, v.state.meta.token_count)
                .into_iter()
                .map(|t| t.0)
                .collect(),
        })
        .collect();
    TopologyResponse {
        version: membership.topology_version(),
        self_id: membership.id().0,
        replication_factor,
        nodes,
    }
}

fn status_to_wire(s: Status) -> PeerStatus {
    match s {
        Status::Joining => PeerStatus::Joining,
        Status::Up => PeerStatus::Up,
        Status::Leaving => PeerStatus::Leaving,
        Status::Removing => PeerStatus::Removing,
        Status::Left => PeerStatus::Left,
    }
}

fn status_from_wire(s: PeerStatus) -> Status {
    match s {
        PeerStatus::Joining => Status::Joining,
        PeerStatus::Up => Status::Up,
        PeerStatus::Leaving => Status::Leaving,
        PeerStatus::Removing => Status::Removing,
        PeerStatus::Left => Status::Left,
    }
}

fn hb_to_wire(h: Heartbeat) -> PeerHeartbeat {
    PeerHeartbeat { generation: h.generation, version: h.version }
}

fn state_to_wire(s: &NodeState) -> PeerState {
    PeerState {
        id: s.id.0,
        addr: s.addr.to_string(),
        heartbeat: hb_to_wire(s.heartbeat),
        status: status_to_wire(s.status),
        shard_ports: s.meta.shard_ports.to_vec(),
        vnodes: s.meta.token_count,
    }
}

/// How far ahead of this node's clock a gossiped generation (a node's start time, seconds
/// since the Unix epoch) may be; a state past it is left out of the message (the rest is
/// used). Bounding it keeps the topology version, a sum of generations, far from overflow:
/// one bad state cannot pin it at its maximum.
pub const GENERATION_AHEAD_MAX_S: u64 = 7 * 24 * 3600;

fn state_from_wire(s: PeerState) -> Result<NodeState, Refusal> {
    let addr: SocketAddr = s.addr.parse().map_err(|_| {
        Refusal::Malformed(format!("node {:016x}: address {:?} is not ip:port", s.id, s.addr))
    })?;
    Ok(NodeState {
        id: NodeId(s.id),
        addr,
        heartbeat: Heartbeat { generation: s.heartbeat.generation, version: s.heartbeat.version },
        status: status_from_wire(s.status),
        meta: NodeMeta { shard_ports: Arc::from(s.shard_ports), token_count: s.vnodes },
    })
}

/// The wire form of a gossip message.
pub fn msg_to_wire(m: &GossipMsg) -> GossipBody {
    let digests = |d: &[Digest]| {
        d.iter().map(|d| PeerDigest { id: d.id.0, heartbeat: hb_to_wire(d.heartbeat) }).collect()
    };
    match m {
        GossipMsg::Syn { digests: d } => GossipBody::Syn { digests: digests(d) },
        GossipMsg::Ack { states, wants } => GossipBody::Ack {
            states: states.iter().map(state_to_wire).collect(),
            wants: wants.iter().map(|id| id.0).collect(),
        },
        GossipMsg::Ack2 { states } => {
            GossipBody::Ack2 { states: states.iter().map(state_to_wire).collect() }
        }
    }
}

/// The state machine's form of a checked wire message.
pub fn msg_from_wire(b: GossipBody) -> Result<GossipMsg, Refusal> {
    b.check().map_err(Refusal::Malformed)?;
    let limit = crate::cluster::hlc::wall_ms() / 1000 + GENERATION_AHEAD_MAX_S;
    let states = |s: Vec<PeerState>| -> Result<Vec<NodeState>, Refusal> {
        s.into_iter()
            .filter(|st| {
                let ok = st.heartbeat.generation <= limit;
                if !ok {
                    tracing::debug!(
                        node = format!("{:016x}", st.id),
                        generation = st.heartbeat.generation,
                        "gossiped state left out: its generation is too far ahead of this clock"
                    );
                }
                ok
            })
            .map(state_from_wire)
            .collect()
    };
    Ok(match b {
        GossipBody::Syn { digests } => GossipMsg::Syn {
            digests: digests
                .into_iter()
                .map(|d| Digest {
                    id: NodeId(d.id),
                    heartbeat: Heartbeat {
                        generation: d.heartbeat.generation,
                        version: d.heartbeat.version,
                    },
                })
                .collect(),
        },
        GossipBody::Ack { states: s, wants } => {
            GossipMsg::Ack { states: states(s)?, wants: wants.into_iter().map(NodeId).collect() }
        }
        GossipBody::Ack2 { states: s } => GossipMsg::Ack2 { states: states(s)? },
    })
}

/// Seals `m` from `sender` into an authenticated envelope for a frame of `opcode`.
pub fn seal(
    cluster_name: &str,
    key: &ClusterKey,
    sender: NodeId,
    opcode: Opcode,
    response: bool,
    m: &GossipMsg,
    nonce: u64,
) -> Result<PeerEnvelope, String> {
    let body = peer::archive_body(&msg_to_wire(m)).map_err(|e| format!("encoding gossip: {e}"))?;
    let mac = peer::mac(key, opcode, response, cluster_name, sender.0, nonce, &body);
    Ok(PeerEnvelope {
        cluster_name: cluster_name.to_string(),
        sender_id: sender.0,
        nonce,
        body,
        mac,
    })
}

/// Checks an envelope's cluster name and tag, then parses its body: the sender and message.
pub fn open(
    cluster_name: &str,
    key: &ClusterKey,
    opcode: Opcode,
    response: bool,
    bytes: &[u8],
) -> Result<(NodeId, GossipMsg), Refusal> {
    let mut aligned: AlignedVec = AlignedVec::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    let env = msg::access::<ArchivedPeerEnvelope>(&aligned)
        .map_err(|e| Refusal::Malformed(format!("envelope: {e}")))?;
    let theirs = env.cluster_name.as_str();
    if theirs.len() > peer::CLUSTER_NAME_BYTES_MAX {
        return Err(Refusal::Malformed(format!("cluster name of {} bytes", theirs.len())));
    }
    if theirs != cluster_name {
        return Err(Refusal::OtherCluster {
            theirs: theirs.to_string(),
            ours: cluster_name.into(),
        });
    }
    let sender = env.sender_id.to_native();
    let nonce = env.nonce.to_native();
    let body = env.body.as_slice();
    let expected = peer::mac(key, opcode, response, cluster_name, sender, nonce, body);
    if !peer::tags_equal(&expected, &env.mac) {
        return Err(Refusal::BadSecret { sender });
    }
    if sender == 0 {
        return Err(Refusal::Malformed("sender id 0".into()));
    }
    let mut inner: AlignedVec = AlignedVec::with_capacity(body.len());
    inner.extend_from_slice(body);
    let archived = msg::access::<ArchivedGossipBody>(&inner)
        .map_err(|e| Refusal::Malformed(format!("body: {e}")))?;
    let owned: GossipBody =
        msg::to_owned(archived).map_err(|e| Refusal::Malformed(format!("body: {e}")))?;
    Ok((NodeId(sender), msg_from_wire(owned)?))
}

/// Membership on the cluster core, and the tasks that carry its messages.
pub struct GossipCore {
    settings: ClusterSettings,
    membership: RefCell<Membership>,
    /// Origin of `now_ms` (monotonic).
    start: Instant,
    ctx: Weak<ExecutorCtx>,
    rng: RefCell<StdRng>,
    /// Peer addresses with an exchange in flight.
    in_flight: RefCell<Vec<SocketAddr>>,
    published_version: Cell<u64>,
    /// Last liveness logged per peer, to log transitions only.
    last_liveness: RefCell<HashMap<NodeId, Liveness>>,
    /// (peer, reason) -> when it was last logged.
    refusals_logged: RefCell<HashMap<(String, &'static str), Instant>>,
    /// Start of the current refusal-log window, lines logged in it and lines left out.
    refusal_window: Cell<(Instant, u32, u64)>,
    /// The live set last published to the shards, and its sequence number.
    published_alive: RefCell<(u64, Arc<Vec<u64>>)>,
    /// Runs joins, decommissions and removals; set once after start.
    mover: RefCell<Option<Weak<stream::Mover>>>,
}

impl GossipCore {
    /// A core around `membership` (ourselves already in it) serving executor `ctx`.
    pub fn new(
        settings: ClusterSettings,
        membership: Membership,
        ctx: Weak<ExecutorCtx>,
        published_version: u64,
    ) -> Rc<GossipCore> {
        Rc::new(GossipCore {
            settings,
            membership: RefCell::new(membership),
            start: Instant::now(),
            ctx,
            rng: RefCell::new(StdRng::from_entropy()),
            in_flight: RefCell::new(Vec::new()),
            published_version: Cell::new(published_version),
            last_liveness: RefCell::new(HashMap::new()),
            refusals_logged: RefCell::new(HashMap::new()),
            refusal_window: Cell::new((Instant::now(), 0, 0)),
            published_alive: RefCell::new((0, Arc::new(Vec::new()))),
            mover: RefCell::new(None),
        })
    }

    /// Installs the mover that serves Decommission and RemoveNode.
    pub fn set_mover(&self, mover: &Rc<stream::Mover>) {
        *self.mover.borrow_mut() = Some(Rc::downgrade(mover));
    }

    /// Sets this node's own status (Joining -> Up -> Leaving -> Left) and publishes the
    /// topology that follows; gossip carries it to the peers at the next round.
    pub fn set_own_status(&self, status: Status) {
        self.membership.borrow_mut().set_status(status);
        self.publish_if_changed();
    }

    /// This node's own status.
    pub fn own_status(&self) -> Status {
        let m = self.membership.borrow();
        m.state(m.id()).map_or(Status::Joining, |s| s.status)
    }

    /// Marks `id`, a dead node, Removing (to start `kvs removenode`) or Left (to finish it)
    /// on its behalf. Starting is refused unless the failure detector holds it down and it is
    /// Up; finishing needs it Removing.
    pub fn mark_removed(&self, id: NodeId, status: Status) -> Result<(), String> {
        let now = self.now_ms();
        {
            let mut m = self.membership.borrow_mut();
            let current = m.state(id).map(|s| s.status);
            match (status, current) {
                (_, None) => return Err(format!("node {:016x} is not known here", id.0)),
                // Run again: the node is already marked.
                (Status::Removing, Some(Status::Removing)) => {}
                // A dead node, Up or stuck Leaving (a decommission that failed, or a node that
                // died mid-decommission).
                (Status::Removing, Some(Status::Up | Status::Leaving)) => {
                    match m.liveness(id, now) {
                        Some(Liveness::Down) => {}
                        l => {
                            return Err(format!(
                                "node {:016x} is {} here, not down: removenode is for dead \
                                 nodes; use `kvs decommission` on a live one",
                                id.0,
                                l.map_or("unknown".to_string(), |l| format!("{l:?}"))
                            ))
                        }
                    }
                }
                (Status::Removing, Some(s)) => {
                    return Err(format!(
                        "node {:016x} is {s:?}: only an Up or Leaving node is removed",
                        id.0
                    ))
                }
                (Status::Left, Some(Status::Removing)) => {}
                (_, Some(s)) => {
                    return Err(format!("node {:016x} is {s:?}, not being removed", id.0))
                }
            }
            m.mark_removed(id, status)?;
        }
        self.publish_if_changed();
        Ok(())
    }

    /// The gossiped status of `id`, if known.
    pub fn status_of(&self, id: NodeId) -> Option<Status> {
        self.membership.borrow().state(id).map(|s| s.status)
    }

    /// How many peers (besides this node) have been heard from.
    pub fn peers_heard(&self) -> usize {
        let m = self.membership.borrow();
        let me = m.id();
        m.view(0)
            .iter()
            .filter(|v| v.state.id != me && v.state.heartbeat != Heartbeat::default())
            .count()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn me(&self) -> NodeId {
        self.membership.borrow().id()
    }

    /// Runs gossip rounds until the executor shuts down.
    pub async fn run(self: Rc<Self>) {
        let interval = Duration::from_millis(self.settings.gossip_interval_ms);
        loop {
            let Some(ctx) = self.ctx.upgrade() else { return };
            let stopped = futures_lite::future::or(
                async {
                    glommio::timer::sleep(interval).await;
                    false
                },
                async {
                    ctx.shutdown.wait().await;
                    true
                },
            )
            .await;
            drop(ctx);
            if stopped {
                return;
            }
            self.round();
        }
    }

    /// One round: tick the membership, start the exchanges it asks for, contact unheard seeds.
    fn round(self: &Rc<Self>) {
        let now = self.now_ms();
        let mut targets: Vec<(SocketAddr, GossipMsg)> = Vec::new();
        {
            let mut m = self.membership.borrow_mut();
            let syns = m.tick(now, &mut *self.rng.borrow_mut());
            for (id, syn) in syns {
                if let Some(s) = m.state(id) {
                    targets.push((s.addr, syn));
                }
            }
            let view = m.view(now);
            for seed in &self.settings.seeds {
                let heard = view
                    .iter()
                    .any(|v| v.state.addr == *seed && v.state.heartbeat != Heartbeat::default());
                if *seed != self.settings.addr && !heard && !targets.iter().any(|t| t.0 == *seed) {
                    targets.push((*seed, m.syn()));
                }
            }
        }
        for (addr, syn) in targets {
            if self.in_flight.borrow().contains(&addr) {
                continue;
            }
            self.in_flight.borrow_mut().push(addr);
            let core = self.clone();
            glommio::spawn_local(async move {
                let timeout = exchange_timeout(core.settings.gossip_interval_ms);
                let outcome = futures_lite::future::or(
                    async { Some(core.exchange(addr, syn).await) },
                    async {
                        glommio::timer::sleep(timeout).await;
                        None
                    },
                )
                .await;
                match outcome {
                    Some(Ok(())) => {}
                    Some(Err(e)) => tracing::debug!(%addr, "gossip exchange failed: {e}"),
                    None => tracing::debug!(%addr, "gossip exchange timed out after {timeout:?}"),
                }
                core.in_flight.borrow_mut().retain(|a| *a != addr);
            })
            .detach();
        }
        self.log_liveness(now);
        self.publish_if_changed();
        self.publish_liveness_if_changed(now);
    }

    /// The ids of the nodes the failure detector holds alive (alive or suspect, never down
    /// or unheard), this node included, sorted.
    pub fn alive_nodes(&self, now: u64) -> Vec<u64> {
        let m = self.membership.borrow();
        let me = m.id();
        let mut alive: Vec<u64> = m
            .view(now)
            .into_iter()
            .filter(|v| {
                v.state.id == me || matches!(v.liveness, Liveness::Alive | Liveness::Suspect)
            })
            .map(|v| v.state.id.0)
            .collect();
        alive.sort_unstable();
        alive.dedup();
        alive
    }

    /// Sends the live set to every shard when it changed since the last publication.
    fn publish_liveness_if_changed(&self, now: u64) {
        let alive = self.alive_nodes(now);
        if let Some(service) = self.ctx.upgrade().and_then(|c| c.replica_service()) {
            service.on_liveness(&alive);
        }
        let seq = {
            let held = self.published_alive.borrow();
            if *held.1 == alive {
                return;
            }
            held.0 + 1
        };
        let alive = Arc::new(alive);
        *self.published_alive.borrow_mut() = (seq, alive.clone());
        tracing::debug!(alive = alive.len(), "live set changed");
        if let Some(ctx) = self.ctx.upgrade() {
            ctx.publish_liveness(seq, alive);
        }
    }

    /// One exchange with the node at `addr`: Syn, Ack, Ack2 over one short connection.
    async fn exchange(&self, addr: SocketAddr, syn: GossipMsg) -> Result<(), String> {
        let connect = exchange_timeout(self.settings.gossip_interval_ms);
        let mut stream = TcpStream::connect_timeout(addr, connect)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        let _ = stream.set_nodelay(true);
        let frame = self.sealed_frame(Opcode::GossipSyn, false, 1, &syn)?;
        stream.write_all(&frame).await.map_err(|e| format!("sending Syn: {e}"))?;
        let (header, body) = read_frame(&mut stream).await?;
        if header.opcode == Opcode::Error {
            self.log_refused_by(addr, &body);
            return Err("refused by peer".into());
        }
        if header.opcode != Opcode::GossipSyn || !header.response || header.request_id != 1 {
            return Err(format!("unexpected answer {:?} to a Syn", header.opcode));
        }
        let (from, ack) = match open(
            &self.settings.cluster_name,
            &self.settings.key,
            Opcode::GossipSyn,
            true,
            &body,
        ) {
            Ok(x) => x,
            Err(e) => {
                self.log_refusal(&addr.to_string(), &e);
                return Err(e.to_string());
            }
        };
        if !matches!(ack, GossipMsg::Ack { .. }) {
            return Err("the answer to a Syn is not an Ack".into());
        }
        let reply = self.membership.borrow_mut().receive(self.now_ms(), from, ack);
        self.publish_if_changed();
        self.publish_liveness_if_changed(self.now_ms());
        let Some(ack2) = reply else {
            let _ = stream.close().await;
            return Ok(());
        };
        let frame = self.sealed_frame(Opcode::GossipAck2, false, 2, &ack2)?;
        stream.write_all(&frame).await.map_err(|e| format!("sending Ack2: {e}"))?;
        let (header, body) = read_frame(&mut stream).await?;
        if header.opcode == Opcode::Error {
            self.log_refused_by(addr, &body);
        }
        let _ = stream.close().await;
        Ok(())
    }

    fn sealed_frame(
        &self,
        opcode: Opcode,
        response: bool,
        request_id: u64,
        m: &GossipMsg,
    ) -> Result<Vec<u8>, String> {
        let nonce = self.rng.borrow_mut().gen();
        let env = seal(
            &self.settings.cluster_name,
            &self.settings.key,
            self.me(),
            opcode,
            response,
            m,
            nonce,
        )?;
        let mut out = Vec::new();
        msg::write_frame(&mut out, opcode, response, request_id, &env)
            .map_err(|e| format!("encoding envelope: {e}"))?;
        Ok(out)
    }

    /// Publishes a new topology when the membership's version moved past the published one.
    fn publish_if_changed(&self) {
        let (version, topology) = {
            let m = self.membership.borrow();
            let version = m.topology_version();
            if version <= self.published_version.get() {
                return;
            }
            (version, topology_of(&m, self.settings.replication_factor))
        };
        self.published_version.set(version);
        tracing::info!(version, nodes = topology.nodes.len(), "topology changed");
        if let Some(ctx) = self.ctx.upgrade() {
            ctx.publish_topology(Arc::new(topology));
        }
    }

    fn log_liveness(&self, now: u64) {
        let view = self.membership.borrow().view(now);
        let mut last = self.last_liveness.borrow_mut();
        for v in view {
            if v.state.id == self.me() || v.liveness == Liveness::Unknown {
                continue;
            }
            let before = last.insert(v.state.id, v.liveness);
            if before != Some(v.liveness) {
                let id = format!("{:016x}", v.state.id.0);
                match v.liveness {
                    Liveness::Down => {
                        tracing::warn!(node = id, addr = %v.state.addr, phi = v.phi, "peer is down")
                    }
                    l => {
                        tracing::info!(node = id, addr = %v.state.addr, phi = v.phi, "peer is {l:?}")
                    }
                }
            }
        }
    }

    fn log_refusal(&self, peer: &str, e: &Refusal) {
        if self.should_log(peer, e.kind()) {
            tracing::error!(peer, "{e}");
        }
    }

    fn log_refused_by(&self, addr: SocketAddr, body: &[u8]) {
        let mut aligned: AlignedVec = AlignedVec::with_capacity(body.len());
        aligned.extend_from_slice(body);
        let message = msg::access::<ArchivedErrorResponse>(&aligned)
            .map(|e| e.message.as_str().to_string())
            .unwrap_or_else(|_| "(unreadable error)".into());
        if self.should_log(&addr.to_string(), "refused-by") {
            tracing::error!(peer = %addr, "peer refused our gossip: {message}");
        }
    }

    fn should_log(&self, peer: &str, kind: &'static str) -> bool {
        let now = Instant::now();
        let (start, lines, left_out) = self.refusal_window.get();
        let (start, lines, left_out) = if now.duration_since(start) >= REFUSAL_LOG_INTERVAL {
            if left_out > 0 {
                tracing::error!(
                    "{left_out} more gossip refusals in the last {REFUSAL_LOG_INTERVAL:?} not logged"
                );
            }
            (now, 0, 0)
        } else {
            (start, lines, left_out)
        };
        if lines >= REFUSAL_LOGS_PER_INTERVAL_MAX {
            self.refusal_window.set((start, lines, left_out + 1));
            return false;
        }
        let mut logged = self.refusals_logged.borrow_mut();
        if logged.len() >= REFUSAL_KEYS_MAX {
            logged.clear();
        }
        match logged.get(&(peer.to_string(), kind)) {
            Some(at) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => {
                self.refusal_window.set((start, lines, left_out));
                false
            }
            _ => {
                logged.insert((peer.to_string(), kind), now);
                self.refusal_window.set((start, lines + 1, left_out));
                true
            }
        }
    }

    /// Answers a Syn with an Ack, or an Ack2 with an empty response.
    fn serve_gossip(&self, opcode: Opcode, request_id: u64, body: &[u8], out: &mut Vec<u8>) {
        let opened = open(&self.settings.cluster_name, &self.settings.key, opcode, false, body);
        let (from, m) = match opened {
            Ok(x) => x,
            Err(e) => {
                let sender = match &e {
                    Refusal::BadSecret { sender } => format!("node {sender:016x}"),
                    _ => "a peer".to_string(),
                };
                self.log_refusal(&sender, &e);
                msg::write_error(out, request_id, ErrorCode::InvalidRequest, e.to_string());
                return;
            }
        };
        let step_fits = match opcode {
            Opcode::GossipSyn => matches!(m, GossipMsg::Syn { .. }),
            _ => matches!(m, GossipMsg::Ack2 { .. }),
        };
        if !step_fits {
            msg::write_error(
                out,
                request_id,
                ErrorCode::InvalidRequest,
                format!("{opcode:?} carries the wrong gossip step"),
            );
            return;
        }
        let rejected_before = self.membership.borrow().rejected();
        let reply = self.membership.borrow_mut().receive(self.now_ms(), from, m);
        if self.membership.borrow().rejected() > rejected_before {
            msg::write_error(
                out,
                request_id,
                ErrorCode::InvalidRequest,
                "gossip dropped: ids not sorted or too many nodes",
            );
            return;
        }
        self.publish_if_changed();
        // A merge can make a node alive at once (its first heartbeats): tell the shards now
        // rather than at the next round, so they count it as soon as `kvs status` shows it.
        self.publish_liveness_if_changed(self.now_ms());
        match (opcode, reply) {
            (Opcode::GossipSyn, Some(ack)) => {
                match self.sealed_frame(Opcode::GossipSyn, true, request_id, &ack) {
                    Ok(frame) => out.extend_from_slice(&frame),
                    Err(e) => msg::write_error(out, request_id, ErrorCode::Internal, e),
                }
            }
            _ => msg::write_empty_frame(out, opcode, true, request_id),
        }
    }

    /// The membership as this node sees it now.
    pub fn status(&self) -> ClusterStatusResponse {
        let m = self.membership.borrow();
        let members = m
            .view(self.now_ms())
            .into_iter()
            .map(|v| MemberStatus {
                id: v.state.id.0,
                addr: v.state.addr.to_string(),
                status: status_to_wire(v.state.status),
                liveness: match v.liveness {
                    Liveness::Alive => 0,
                    Liveness::Suspect => 1,
                    Liveness::Down => 2,
                    Liveness::Unknown => 3,
                },
                // phi is 0 or more; -0.0 and NaN (never heard) read as 0, infinity as MAX.
                phi: if v.phi.is_finite() {
                    if v.phi > 0.0 {
                        v.phi
                    } else {
                        0.0
                    }
                } else if v.phi > 0.0 {
                    f64::MAX
                } else {
                    0.0
                },
                heartbeat: hb_to_wire(v.state.heartbeat),
                shard_ports: v.state.meta.shard_ports.to_vec(),
                vnodes: v.state.meta.token_count,
            })
            .collect();
        ClusterStatusResponse {
            self_id: m.id().0,
            cluster_name: self.settings.cluster_name.clone(),
            topology_version: self.published_version.get(),
            replication_factor: self.settings.replication_factor,
            members,
            movement_state: self
                .mover
                .borrow()
                .as_ref()
                .and_then(Weak::upgrade)
                .map_or(MovementState::Idle, |m| m.state()),
            movement: self
                .mover
                .borrow()
                .as_ref()
                .and_then(Weak::upgrade)
                .map_or_else(String::new, |m| m.progress_line()),
        }
    }

    fn mover(&self) -> Option<Rc<stream::Mover>> {
        self.mover.borrow().as_ref().and_then(Weak::upgrade)
    }
}

impl PeerService for GossipCore {
    fn handle(&self, opcode: Opcode, request_id: u64, body: &AlignedVec, out: &mut Vec<u8>) {
        match opcode {
            Opcode::GossipSyn | Opcode::GossipAck2 => {
                self.serve_gossip(opcode, request_id, body, out)
            }
            Opcode::ClusterStatus => {
                if msg::write_frame(out, opcode, true, request_id, &self.status()).is_err() {
                    msg::write_error(out, request_id, ErrorCode::Internal, "encoding status");
                }
            }
            Opcode::Decommission | Opcode::RemoveNode => {
                let Some(mover) = self.mover() else {
                    msg::write_error(out, request_id, ErrorCode::Internal, "the node is stopping");
                    return;
                };
                let now = crate::cluster::hlc::wall_ms();
                let started = msg::access::<peer::ArchivedAdminRequest>(body)
                    .map_err(|e| format!("bad {opcode:?} request: {e}"))
                    .and_then(|r| {
                        r.verify(&self.settings.key, opcode, &self.settings.cluster_name, now)?;
                        Ok(r.target.to_native())
                    })
                    .and_then(|target| match (opcode, target) {
                        (Opcode::Decommission, t) if t == self.me().0 => mover.start_decommission(),
                        (Opcode::Decommission, t) => Err(format!(
                            "a decommission of node {t:016x} reached node {:016x}",
                            self.me().0
                        )),
                        (_, t) => mover.start_remove(NodeId(t)),
                    });
                if let Err(why) = &started {
                    tracing::warn!("{opcode:?} refused: {why}");
                }
                match started {
                    Ok(()) => msg::write_empty_frame(out, opcode, true, request_id),
                    Err(why) => msg::write_error(out, request_id, ErrorCode::InvalidRequest, why),
                }
            }
            other => msg::write_error(
                out,
                request_id,
                ErrorCode::InvalidRequest,
                format!("{other:?} is not a node-to-node request"),
            ),
        }
    }
}

/// Reads one frame (bounded by [`PEER_BODY_BYTES_MAX`]) from a peer.
async fn read_frame(stream: &mut TcpStream) -> Result<(FrameHeader, Vec<u8>), String> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream.read_exact(&mut header).await.map_err(|e| format!("reading header: {e}"))?;
    let h = FrameHeader::decode(&header, PEER_BODY_BYTES_MAX)
        .map_err(|e| format!("bad frame from peer: {e}"))?;
    let mut body = vec![0u8; h.body_len as usize];
    stream.read_exact(&mut body).await.map_err(|e| format!("reading body: {e}"))?;
    Ok((h, body))
}

#[cfg(test)]
mod tests {
    //! Goal: sealing and opening refuse the wrong cluster, the wrong secret and garbage, and a
    //! sealed message round-trips. Method: seal with one key, open with others.
    use super::*;

    fn state(id: u64) -> NodeState {
        NodeState {
            id: NodeId(id),
            addr: "127.0.0.3:7000".parse().unwrap(),
            heartbeat: Heartbeat { generation: 3, version: 4 },
            status: Status::Up,
            meta: NodeMeta { shard_ports: Arc::from(vec![7001, 7002]), token_count: 150 },
        }
    }

    #[test]
    fn a_state_from_the_far_future_is_left_out() {
        let mut far = state(1);
        far.heartbeat.generation = u64::MAX / 4;
        let body = msg_to_wire(&GossipMsg::Ack2 { states: vec![far, state(2)] });
        // Left out; the rest of the message is used.
        assert_eq!(msg_from_wire(body).unwrap(), GossipMsg::Ack2 { states: vec![state(2)] });
    }

    #[test]
    fn sealed_gossip_opens_only_with_the_right_cluster_and_secret() {
        let key = ClusterKey::derive("c", b"s");
        let m = GossipMsg::Ack { states: vec![state(1), state(2)], wants: vec![NodeId(5)] };
        let env = seal("c", &key, NodeId(9), Opcode::GossipSyn, true, &m, 77).unwrap();
        let mut bytes = Vec::new();
        msg::write_frame(&mut bytes, Opcode::GossipSyn, true, 1, &env).unwrap();
        let body = &bytes[FRAME_HEADER_BYTES..];
        let (from, back) = open("c", &key, Opcode::GossipSyn, true, body).unwrap();
        assert_eq!((from, back), (NodeId(9), m));
        let wrong_secret = ClusterKey::derive("c", b"t");
        assert!(matches!(
            open("c", &wrong_secret, Opcode::GossipSyn, true, body),
            Err(Refusal::BadSecret { sender: 9 })
        ));
        assert!(matches!(
            open("d", &key, Opcode::GossipSyn, true, body),
            Err(Refusal::OtherCluster { .. })
        ));
        // The tag covers the direction: a request replayed as a response does not verify.
        assert!(open("c", &key, Opcode::GossipSyn, false, body).is_err());
        for cut in [0, 1, 8, body.len() / 2, body.len() - 1] {
            assert!(open("c", &key, Opcode::GossipSyn, true, &body[..cut]).is_err());
        }
    }

    fn core(id: u64, secret: &[u8]) -> Rc<GossipCore> {
        let addr: SocketAddr = format!("127.0.0.{id}:7000").parse().unwrap();
        let meta = NodeMeta { shard_ports: Arc::from(vec![7001]), token_count: 4 };
        let mut m = Membership::new(NodeId(id), addr, 5, meta, Default::default());
        m.set_status(Status::Up);
        let settings = ClusterSettings {
            addr,
            seeds: Vec::new(),
            cluster_name: "c".into(),
            key: ClusterKey::derive("c", secret),
            gossip_interval_ms: 100,
            replication_factor: 3,
        };
        GossipCore::new(settings, m, Weak::new(), 0)
    }

    /// One request frame through `to`'s service; returns the response header and body.
    fn serve(to: &GossipCore, frame: &[u8]) -> (FrameHeader, Vec<u8>) {
        let h = FrameHeader::decode(frame, PEER_BODY_BYTES_MAX).unwrap();
        let mut body: AlignedVec = AlignedVec::new();
        body.extend_from_slice(&frame[FRAME_HEADER_BYTES..]);
        let mut out = Vec::new();
        to.handle(h.opcode, h.request_id, &body, &mut out);
        let rh = FrameHeader::decode(&out, PEER_BODY_BYTES_MAX).unwrap();
        assert_eq!(out.len(), FRAME_HEADER_BYTES + rh.body_len as usize, "exactly one frame");
        (rh, out[FRAME_HEADER_BYTES..].to_vec())
    }

    #[test]
    fn the_service_runs_an_exchange_and_refuses_strangers_and_misplaced_steps() {
        let (a, b) = (core(1, b"s"), core(2, b"s"));
        // a -> b: Syn, answered with an Ack that a merges; a's Ack2 is answered empty.
        let syn = a.membership.borrow().syn();
        let (h, body) = serve(&b, &a.sealed_frame(Opcode::GossipSyn, false, 7, &syn).unwrap());
        assert_eq!((h.opcode, h.response, h.request_id), (Opcode::GossipSyn, true, 7));
        let (from, ack) = open("c", &a.settings.key, Opcode::GossipSyn, true, &body).unwrap();
        assert_eq!(from, NodeId(2));
        let ack2 = a.membership.borrow_mut().receive(0, from, ack).unwrap();
        let (h, body) = serve(&b, &a.sealed_frame(Opcode::GossipAck2, false, 8, &ack2).unwrap());
        assert_eq!((h.opcode, h.response, body.len()), (Opcode::GossipAck2, true, 0));
        assert_eq!((a.membership.borrow().len(), b.membership.borrow().len()), (2, 2));
        assert_eq!(a.status().members.len(), 2);

        // A wrong secret: an error, and b learns nothing of the stranger.
        let stranger = core(3, b"other");
        let syn = stranger.membership.borrow().syn();
        let frame = stranger.sealed_frame(Opcode::GossipSyn, false, 9, &syn).unwrap();
        let (h, _) = serve(&b, &frame);
        assert_eq!(h.opcode, Opcode::Error);
        assert!(!b.membership.borrow().knows(NodeId(3)));
        // An Ack2 sent as a Syn, or a Syn sent as an Ack2: errors.
        let (h, _) = serve(&b, &a.sealed_frame(Opcode::GossipSyn, false, 10, &ack2).unwrap());
        assert_eq!(h.opcode, Opcode::Error);
        let syn = a.membership.borrow().syn();
        let (h, _) = serve(&b, &a.sealed_frame(Opcode::GossipAck2, false, 11, &syn).unwrap());
        assert_eq!(h.opcode, Opcode::Error);
        // Status is served too.
        let mut status = Vec::new();
        msg::write_empty_frame(&mut status, Opcode::ClusterStatus, false, 12);
        let (h, _) = serve(&b, &status);
        assert_eq!((h.opcode, h.response), (Opcode::ClusterStatus, true));
    }

    #[test]
    fn refusal_logs_are_bounded_per_peer_and_in_all() {
        let c = core(1, b"s");
        assert!(c.should_log("p", "secret"));
        assert!(!c.should_log("p", "secret"), "the same peer and reason: once per interval");
        assert!(c.should_log("p", "cluster"));
        let logged = (0..100).filter(|i| c.should_log(&format!("q{i}"), "secret")).count();
        assert_eq!(logged as u32, REFUSAL_LOGS_PER_INTERVAL_MAX - 2);
    }

    #[test]
    fn topology_lists_joining_and_up_nodes_with_their_tokens() {
        let meta = NodeMeta { shard_ports: Arc::from(vec![9001]), token_count: 8 };
        let mut m = Membership::new(
            NodeId(1),
            "127.0.0.1:9000".parse().unwrap(),
            2,
            meta,
            Default::default(),
        );
        m.set_status(Status::Up);
        let mut left = state(3);
        left.status = Status::Left;
        m.receive(0, NodeId(2), GossipMsg::Ack2 { states: vec![state(2), left] });
        let t = topology_of(&m, 3);
        assert_eq!(t.nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(t.nodes[0].tokens.len(), 8);
        assert_eq!(t.nodes[1].shard_ports, vec![7001, 7002]);
        assert_eq!(t.version, m.topology_version());
        assert_eq!(t.replication_factor, 3);
    }
}
