//! Replica links: the cluster core's long-lived, pipelined, authenticated connection to each
//! peer's cluster core, which carries the replica requests of this node's coordinators.
//!
//! ## Flow
//! A coordinating shard sends a `ShardMsg::ReplicaOut` (target node, opcode, archived body) to
//! the cluster core, which calls [`ReplicaLinks::send`]. The request joins the target's
//! [`Link`] queue; the link's task connects when there is work (to the node's `--listen`
//! address from the topology), runs the handshake, then writes every queued request as soon as
//! it is queued (pipelined, each with its own request id) while a reader matches responses to
//! requests by id and answers the shard with a `ShardMsg::ReplicaReply`. On the peer, the
//! cluster core's connection loop hands each request to the owning shard (`shard_of(token, S)`
//! of the peer's own shard count, see `crate::shard`).
//!
//! ## Authentication
//! Once per connection, as described in [`kvs_wire::peer`] ("Replica links"): Hello with the
//! connector's nonce, Challenge with the listener's nonce and tag, Proof with the connector's
//! tag. [`ReplicaLinks::hello`] is the listener's side.
//!
//! ## Bounds and failures
//! - At most [`LINK_REQUESTS_MAX`] requests per peer, queued and in flight together; past it a
//!   request fails at once (the coordinator counts that replica as failed), so a slow peer
//!   cannot grow this node's memory.
//! - A connect or handshake that fails marks the link unreachable for [`reconnect_backoff`];
//!   requests in that time fail at once with the reason, and the next request after it tries
//!   again.
//! - A connection with requests in flight that reads nothing for `replica_timeout_ms` is
//!   dropped; its requests fail. An idle connection is closed after [`LINK_IDLE`].
//! - Every failure is reported to the coordinator exactly once, with the node and the reason.
//! - Links keep serving while the node drains its connections at shutdown (requests in
//!   flight still need their replicas); they stop once every executor has drained.
//!
//! ## Hinted handoff
//! A coordinator's replica write that fails here (unreachable, refused, full queue, link
//! dropped or silent for `replica_timeout_ms`) is stored as a hint for its target in the
//! node's [`HintLog`], and so is every write for a replica the coordinator found down
//! (`ShardMsg::Hint`). Stores run in the background, at most [`HINT_STORES_MAX`] at once.
//! Every gossip round [`ReplicaLinks::on_liveness`] notes since when each node is not alive
//! (the hint window's `down_since_ms`) and starts a replay, one per target at a time, for
//! every alive target with hints: each hint is sent on the same link and acknowledged before
//! the next (paced by the log's token bucket); a failure stops the replay, and the next round
//! tries again. A coordinator's write that times out at the coordinator while still in flight
//! here is hinted only if it then fails here too. Replays and read repairs are never hinted.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use kvs_wire::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES};
use kvs_wire::msg::{self, AlignedVec, ArchivedErrorResponse, Stamp};
use kvs_wire::peer::{
    self, hello_mac, ArchivedPeerHello, ArchivedReplicaReadResponse, ClusterKey, PeerHello,
    ReplicaReadResponse, CLUSTER_NAME_BYTES_MAX,
};
use kvs_wire::placement::NodeId;
use kvs_wire::{ErrorCode, FrameHeader, Opcode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::hints::Hint;
use crate::cluster::hlc::wall_ms;
use crate::shard::notify::Slot;
use crate::shard::replica::{read_reply_of, write_body, ReplicaAnswer};
use crate::shard::{ExecutorCtx, PeerAuth, ReplicaService, ShardMsg};
use crate::transport::hint_log::{HintLog, Stored};

/// Requests queued and in flight to one peer, at most.
pub const LINK_REQUESTS_MAX: usize = 4096;
/// An idle connection (nothing queued or in flight) is closed after this long.
pub const LINK_IDLE: Duration = Duration::from_secs(30);
/// Hint stores (each waits for an fdatasync) in progress at most; more hints are dropped.
pub const HINT_STORES_MAX: usize = 4096;
/// Refused handshakes are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How long a link stays unreachable after a failed connect: the replica timeout, within
/// 50 ms..=1 s.
pub fn reconnect_backoff(replica_timeout: Duration) -> Duration {
    replica_timeout.clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Who waits for a replica request's answer.
enum Reply {
    /// Shard `from`, for its request `corr`; 0: nobody (read repair).
    Shard { from: usize, corr: u64 },
    /// A task of the cluster core (hint replay).
    Local(Rc<Slot<ReplicaAnswer>>),
    /// A task of the cluster core that wants the response body as is (streaming), or why
    /// there is none.
    Raw(Rc<Slot<Result<AlignedVec, String>>>),
}

/// One replica request on its way to a peer.
struct Outgoing {
    reply: Reply,
    opcode: Opcode,
    body: Vec<u8>,
    /// A `ReplicaRead` of the digest only (to check the answer's kind).
    digest: bool,
    /// Store a hint when this write fails (coordinators' writes; not replays or repairs).
    hint: bool,
}

/// The link to one peer.
struct Link {
    node: NodeId,
    queue: RefCell<VecDeque<Outgoing>>,
    inflight: RefCell<HashMap<u64, Outgoing>>,
    wake: crate::shard::notify::Notify,
    running: Cell<bool>,
    /// Unreachable until then, and why.
    down_until: RefCell<Option<(Instant, String)>>,
    next_id: Cell<u64>,
    /// Last time a response arrived or the link went from idle to busy.
    last_progress: Cell<Instant>,
}

/// The replica links of one node; lives on the cluster core.
pub struct ReplicaLinks {
    me: NodeId,
    cluster_name: String,
    key: ClusterKey,
    timeout: Duration,
    ctx: Weak<ExecutorCtx>,
    links: RefCell<HashMap<NodeId, Rc<Link>>>,
    rng: RefCell<StdRng>,
    last_refusal_log: Cell<Option<Instant>>,
    /// Hinted handoff; `None` when disabled (`hints_mb = 0`) or the log could not open.
    hints: Option<Rc<HintLog>>,
    /// Targets whose hints are being replayed.
    replaying: RefCell<HashSet<u64>>,
    /// Wall-clock ms since which each known node has been seen not alive.
    down_since: RefCell<HashMap<u64, u64>>,
    /// Hint stores in progress (each an fdatasync); past [`HINT_STORES_MAX`] hints are dropped.
    hint_stores: Cell<usize>,
    hints_dropped: Cell<u64>,
}

impl ReplicaLinks {
    pub fn new(
        me: NodeId,
        cluster_name: String,
        key: ClusterKey,
        replica_timeout_ms: u64,
        ctx: Weak<ExecutorCtx>,
        hints: Option<Rc<HintLog>>,
    ) -> Rc<ReplicaLinks> {
        Rc::new(ReplicaLinks {
            me,
            cluster_name,
            key,
            timeout: Duration::from_millis(replica_timeout_ms),
            ctx,
            links: RefCell::new(HashMap::new()),
            rng: RefCell::new(StdRng::from_entropy()),
            last_refusal_log: Cell::new(None),
            hints,
            replaying: RefCell::new(HashSet::new()),
            down_since: RefCell::new(HashMap::new()),
            hint_stores: Cell::new(0),
            hints_dropped: Cell::new(0),
        })
    }

    /// Delivers the answer to `o` (to its shard or task), and keeps a hint for `node` when a
    /// coordinator's write failed.
    fn finish(self: &Rc<Self>, node: NodeId, o: Outgoing, answer: ReplicaAnswer) {
        if o.hint
            && o.opcode == Opcode::ReplicaWrite
            && matches!(answer, ReplicaAnswer::Failed(_))
            && self.in_ring(node)
        {
            self.store_hint(node, o.body);
        }
        match o.reply {
            Reply::Shard { corr: 0, .. } => {}
            Reply::Shard { from, corr } => {
                if let Some(ctx) = self.ctx.upgrade() {
                    ctx.send_to(from, ShardMsg::ReplicaReply { corr, answer });
                }
            }
            Reply::Local(slot) => slot.set(answer),
            Reply::Raw(slot) => slot.set(Err(match answer {
                ReplicaAnswer::Failed(why) => why,
                other => format!("unexpected answer {other:?}"),
            })),
        }
    }

    /// Sends one request (`opcode`, archived `body`) to `node` on its replica link and returns
    /// the response body; a failure, an error response or no answer within `limit` is an
    /// error naming the node and why. For streaming: these requests are never hinted.
    pub async fn call(
        self: &Rc<Self>,
        node: NodeId,
        opcode: Opcode,
        body: Vec<u8>,
        limit: Duration,
    ) -> Result<AlignedVec, String> {
        let slot = Rc::new(Slot::default());
        let o =
            Outgoing { reply: Reply::Raw(slot.clone()), opcode, body, digest: false, hint: false };
        self.enqueue(node, o);
        slot.wait_for(limit).await.unwrap_or_else(|| {
            Err(format!("node {:016x} did not answer {opcode:?} within {limit:?}", node.0))
        })
    }

    /// Whether `node` is in the topology (a node that has left gets no hints).
    fn in_ring(&self, node: NodeId) -> bool {
        self.ctx.upgrade().is_some_and(|c| c.topology().nodes.iter().any(|n| n.id == node.0))
    }

    fn fail_all(self: &Rc<Self>, link: &Link, why: &str) {
        let inflight: Vec<Outgoing> = link.inflight.borrow_mut().drain().map(|(_, o)| o).collect();
        let queued: Vec<Outgoing> = link.queue.borrow_mut().drain(..).collect();
        for o in inflight.into_iter().chain(queued) {
            self.finish(link.node, o, ReplicaAnswer::Failed(why.to_string()));
        }
    }

    /// Stores the write in `body` (an archived `ReplicaWriteRequest`) as a hint for `node`,
    /// in the background; dropped (counted) when hints are off or too many stores are running.
    pub fn store_hint(self: &Rc<Self>, node: NodeId, body: Vec<u8>) {
        let Some(log) = self.hints.clone() else { return };
        if self.hint_stores.get() >= HINT_STORES_MAX {
            self.hints_dropped.set(self.hints_dropped.get() + 1);
            return;
        }
        let mut aligned: AlignedVec = AlignedVec::with_capacity(body.len());
        aligned.extend_from_slice(&body);
        let Ok(w) = msg::access::<peer::ArchivedReplicaWriteRequest>(&aligned) else { return };
        let now = wall_ms();
        let hint = Hint {
            key: w.key.as_slice().to_vec(),
            value: w.value.as_ref().map(|v| v.as_slice().to_vec()),
            stamp_hlc: w.stamp.hlc.to_native(),
            stamp_node: w.stamp.node.to_native(),
            hinted_at_ms: now,
            expires_at_ms: w.expires_at_ms.to_native(),
        };
        let down_since = self.down_since.borrow().get(&node.0).copied();
        self.hint_stores.set(self.hint_stores.get() + 1);
        let links = self.clone();
        glommio::spawn_local(async move {
            match log.store(node.0, down_since, &hint, now).await {
                Ok(Stored::Kept) => {}
                Ok(Stored::Refused(why)) => {
                    tracing::debug!(node = format!("{:016x}", node.0), "hint refused: {why:?}")
                }
                Err(e) => tracing::warn!(node = format!("{:016x}", node.0), "storing a hint: {e}"),
            }
            links.hint_stores.set(links.hint_stores.get().saturating_sub(1));
        })
        .detach();
    }

    /// News of the live set (every gossip round): tracks since when nodes are down, and
    /// replays the hints of every live target that has some.
    pub fn on_liveness(self: &Rc<Self>, alive: &[u64]) {
        let now = wall_ms();
        if let Some(ctx) = self.ctx.upgrade() {
            let topology = ctx.topology();
            let mut down = self.down_since.borrow_mut();
            for n in &topology.nodes {
                if alive.binary_search(&n.id).is_ok() {
                    down.remove(&n.id);
                } else {
                    down.entry(n.id).or_insert(now);
                }
            }
            down.retain(|id, _| topology.nodes.iter().any(|n| n.id == *id));
        }
        let Some(log) = self.hints.clone() else { return };
        let targets = log.ledger().targets();
        for target in targets {
            if target == self.me.0
                || alive.binary_search(&target).is_err()
                || !self.replaying.borrow_mut().insert(target)
            {
                continue;
            }
            let links = self.clone();
            let log = log.clone();
            glommio::spawn_local(async move {
                let sender = links.clone();
                let report = log
                    .replay(target, wall_ms, move |hint| {
                        let sender = sender.clone();
                        async move { sender.replay_one(NodeId(target), hint).await }
                    })
                    .await;
                match report {
                    // A replay that sent nothing and stopped (the target is not reachable yet:
                    // a node just killed is still held alive until phi crosses the threshold)
                    // is retried every round: not worth a line each time.
                    Ok(r) if r.sent == 0 && r.expired == 0 && r.stopped.is_some() => {
                        tracing::debug!(
                            node = format!("{target:016x}"),
                            stopped = r.stopped.as_deref().unwrap_or("no"),
                            "hint replay did not start"
                        );
                    }
                    Ok(r) if r.sent > 0 || r.expired > 0 || r.stopped.is_some() => {
                        tracing::info!(
                            node = format!("{target:016x}"),
                            sent = r.sent,
                            expired = r.expired,
                            stopped = r.stopped.as_deref().unwrap_or("no"),
                            "hints replayed"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(node = format!("{target:016x}"), "hint replay: {e}"),
                }
                links.replaying.borrow_mut().remove(&target);
            })
            .detach();
        }
    }

    /// Sends one hint to `node` and waits for its acknowledgement.
    async fn replay_one(self: &Rc<Self>, node: NodeId, hint: Hint) -> Result<(), String> {
        let stamp = Stamp { hlc: hint.stamp_hlc, node: hint.stamp_node };
        let expires = (hint.expires_at_ms > 0).then_some(hint.expires_at_ms);
        let body = write_body(&hint.key, hint.value.as_deref(), stamp, expires)
            .map_err(|e| format!("encoding a hint: {e}"))?;
        let slot = Rc::new(Slot::default());
        let o = Outgoing {
            reply: Reply::Local(slot.clone()),
            opcode: Opcode::ReplicaWrite,
            body,
            digest: false,
            hint: false,
        };
        self.enqueue(node, o);
        let limit = self.timeout.saturating_mul(2);
        match slot.wait_for(limit).await {
            Some(ReplicaAnswer::Ack) => Ok(()),
            Some(ReplicaAnswer::Failed(why)) => Err(why),
            Some(ReplicaAnswer::Read(_)) => Err("a write answered as a read".into()),
            None => Err(format!("no answer within {limit:?}")),
        }
    }

    /// Queues `o` for `target` (failing it at once when the link is unreachable or full) and
    /// makes sure the link's task runs.
    fn enqueue(self: &Rc<Self>, target: NodeId, o: Outgoing) {
        let node = target.0;
        if target == self.me {
            let why = format!("node {node:016x} is this node: not sent");
            self.finish(target, o, ReplicaAnswer::Failed(why));
            return;
        }
        let link = self.link(target);
        let down = link.down_until.borrow().clone();
        if let Some((until, why)) = down {
            if Instant::now() < until {
                let why = format!("node {node:016x} is unreachable: {why}");
                self.finish(target, o, ReplicaAnswer::Failed(why));
                return;
            }
        }
        let held = link.queue.borrow().len() + link.inflight.borrow().len();
        if held >= LINK_REQUESTS_MAX {
            let why = format!(
                "the queue to node {node:016x} is full ({held} requests; LINK_REQUESTS_MAX \
                 {LINK_REQUESTS_MAX})"
            );
            self.finish(target, o, ReplicaAnswer::Failed(why));
            return;
        }
        link.queue.borrow_mut().push_back(o);
        link.wake.notify();
        if !link.running.get() {
            link.running.set(true);
            glommio::spawn_local(self.clone().run_link(link)).detach();
        }
    }

    /// The `--listen` address of `node` in the current topology (or the one before it, while
    /// the shards still write to a node that has just left).
    fn addr_of(&self, node: NodeId) -> Result<SocketAddr, String> {
        let ctx = self.ctx.upgrade().ok_or("the node is stopping")?;
        let addr = ctx
            .node_addr(node)
            .ok_or_else(|| format!("node {:016x} is not in the topology", node.0))?;
        addr.parse().map_err(|_| format!("node {:016x} has a bad address {addr:?}", node.0))
    }

    fn link(&self, node: NodeId) -> Rc<Link> {
        self.links
            .borrow_mut()
            .entry(node)
            .or_insert_with(|| {
                Rc::new(Link {
                    node,
                    queue: RefCell::new(VecDeque::new()),
                    inflight: RefCell::new(HashMap::new()),
                    wake: Default::default(),
                    running: Cell::new(false),
                    down_until: RefCell::new(None),
                    next_id: Cell::new(1),
                    last_progress: Cell::new(Instant::now()),
                })
            })
            .clone()
    }

    /// Runs one link until it has been idle for [`LINK_IDLE`] or the node stops.
    async fn run_link(self: Rc<Self>, link: Rc<Link>) {
        loop {
            let Some(ctx) = self.ctx.upgrade() else { break };
            if ctx.stopped.is_raised() {
                self.fail_all(&link, "the node is stopping");
                break;
            }
            if link.queue.borrow().is_empty() {
                let woke = futures_lite::future::or(
                    async {
                        link.wake.wait().await;
                        true
                    },
                    async {
                        futures_lite::future::or(
                            ctx.stopped.wait(),
                            glommio::timer::sleep(LINK_IDLE),
                        )
                        .await;
                        false
                    },
                )
                .await;
                if !woke && link.queue.borrow().is_empty() {
                    break;
                }
                continue;
            }
            drop(ctx);
            let connected =
                futures_lite::future::or(async { Some(self.connect(link.node).await) }, async {
                    glommio::timer::sleep(self.timeout).await;
                    None
                })
                .await;
            let stream = match connected {
                Some(Ok(stream)) => stream,
                Some(Err(e)) => {
                    self.mark_down(&link, e);
                    continue;
                }
                None => {
                    self.mark_down(
                        &link,
                        format!("connect and handshake took over {:?}", self.timeout),
                    );
                    continue;
                }
            };
            *link.down_until.borrow_mut() = None;
            if let Err(e) = self.serve_connection(&link, stream).await {
                tracing::debug!(node = format!("{:016x}", link.node.0), "replica link closed: {e}");
                self.fail_all(&link, &format!("node {:016x}: {e}", link.node.0));
            }
        }
        link.running.set(false);
        // Requests queued after the last look must not wait for a task that has ended.
        if !link.queue.borrow().is_empty() {
            self.fail_all(&link, "the replica link stopped");
        }
    }

    fn mark_down(self: &Rc<Self>, link: &Link, e: String) {
        let why = format!("node {:016x} is unreachable: {e}", link.node.0);
        tracing::debug!("{why}");
        *link.down_until.borrow_mut() = Some((Instant::now() + reconnect_backoff(self.timeout), e));
        self.fail_all(link, &why);
    }

    /// Connects to `node` and runs the connector's side of the handshake.
    async fn connect(&self, node: NodeId) -> Result<TcpStream, String> {
        let addr = self.addr_of(node)?;
        let mut stream = TcpStream::connect_timeout(addr, self.timeout)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let nonce_ours: u64 = self.rng.borrow_mut().gen();
        let hello = PeerHello::Hello {
            cluster_name: self.cluster_name.clone(),
            sender_id: self.me.0,
            nonce: nonce_ours,
        };
        let body = hello_step(&mut stream, addr, "hello", &hello).await?;
        let (peer_id, nonce_peer, tag) = match msg::access::<ArchivedPeerHello>(&body) {
            Ok(ArchivedPeerHello::Challenge { sender_id, nonce, mac }) => {
                (sender_id.to_native(), nonce.to_native(), *mac)
            }
            Ok(_) => return Err(format!("{addr} answered a hello with the wrong step")),
            Err(e) => return Err(format!("{addr} sent a malformed challenge: {e}")),
        };
        if peer_id != node.0 {
            return Err(format!("expected node {:016x} at {addr}, found {peer_id:016x}", node.0));
        }
        let expected = hello_mac(
            &self.key,
            true,
            &self.cluster_name,
            (self.me.0, nonce_ours),
            (peer_id, nonce_peer),
        );
        if !peer::tags_equal(&expected, &tag) {
            return Err(format!(
                "node {peer_id:016x} at {addr} failed authentication (a different cluster secret)"
            ));
        }
        let proof = PeerHello::Proof {
            mac: hello_mac(
                &self.key,
                false,
                &self.cluster_name,
                (self.me.0, nonce_ours),
                (peer_id, nonce_peer),
            ),
        };
        hello_step(&mut stream, addr, "proof", &proof).await?;
        Ok(stream)
    }

    /// Carries `link`'s requests over `stream` until it fails or idles out.
    async fn serve_connection(
        self: &Rc<Self>,
        link: &Link,
        stream: TcpStream,
    ) -> Result<(), String> {
        let (mut rd, mut wr) = futures_lite::io::split(stream);
        let reader = async {
            loop {
                let (h, body) = read_frame(&mut rd).await?;
                link.last_progress.set(Instant::now());
                self.on_response(link, h, body);
            }
        };
        let check = (self.timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(500));
        let writer = async {
            let mut buf = Vec::new();
            let mut idle_since = Instant::now();
            loop {
                let batch: Vec<Outgoing> = link.queue.borrow_mut().drain(..).collect();
                if !batch.is_empty() {
                    if link.inflight.borrow().is_empty() {
                        link.last_progress.set(Instant::now());
                    }
                    buf.clear();
                    for o in batch {
                        let id = link.next_id.get();
                        link.next_id.set(id.wrapping_add(1));
                        let header = FrameHeader {
                            opcode: o.opcode,
                            response: false,
                            request_id: id,
                            body_len: u32::try_from(o.body.len()).unwrap_or(u32::MAX),
                        };
                        buf.extend_from_slice(&header.encode());
                        buf.extend_from_slice(&o.body);
                        link.inflight.borrow_mut().insert(id, o);
                    }
                    wr.write_all(&buf).await.map_err(|e| format!("sending: {e}"))?;
                    continue;
                }
                let ctx = self.ctx.upgrade().ok_or("the node is stopping")?;
                futures_lite::future::or(
                    link.wake.wait(),
                    futures_lite::future::or(ctx.stopped.wait(), glommio::timer::sleep(check)),
                )
                .await;
                if ctx.stopped.is_raised() {
                    return Err("the node is stopping".to_string());
                }
                let busy = !link.inflight.borrow().is_empty() || !link.queue.borrow().is_empty();
                if busy {
                    idle_since = Instant::now();
                }
                if !link.inflight.borrow().is_empty()
                    && link.last_progress.get().elapsed() > self.timeout
                {
                    return Err(format!("no answer for {:?}", self.timeout));
                }
                if !busy && idle_since.elapsed() > LINK_IDLE {
                    let _ = wr.close().await;
                    return Ok(());
                }
            }
        };
        futures_lite::future::or(reader, writer).await
    }

    /// A response from `link`'s peer: the answer to the request with its id.
    fn on_response(self: &Rc<Self>, link: &Link, h: FrameHeader, body: AlignedVec) {
        let Some(o) = link.inflight.borrow_mut().remove(&h.request_id) else {
            return;
        };
        let node = link.node.0;
        if let Reply::Raw(slot) = &o.reply {
            slot.set(match (h.opcode, h.response) {
                (Opcode::Error, _) => Err(format!("node {node:016x}: {}", error_message(&body))),
                (op, true) if op == o.opcode => Ok(body),
                (op, _) => Err(format!("node {node:016x} answered {:?} with {op:?}", o.opcode)),
            });
            return;
        }
        let answer = match (h.opcode, h.response) {
            (Opcode::Error, _) => {
                ReplicaAnswer::Failed(format!("node {node:016x}: {}", error_message(&body)))
            }
            (Opcode::ReplicaWrite, true) if o.opcode == Opcode::ReplicaWrite => ReplicaAnswer::Ack,
            (Opcode::ReplicaRead, true) if o.opcode == Opcode::ReplicaRead => {
                match msg::access::<ArchivedReplicaReadResponse>(&body)
                    .and_then(msg::to_owned::<ReplicaReadResponse, _>)
                {
                    Ok(r) => match read_reply_of(r.version, o.digest) {
                        Ok(reply) => ReplicaAnswer::Read(reply),
                        Err(e) => ReplicaAnswer::Failed(format!("node {node:016x}: {e}")),
                    },
                    Err(e) => ReplicaAnswer::Failed(format!(
                        "node {node:016x} sent a malformed replica read: {e}"
                    )),
                }
            }
            (op, _) => ReplicaAnswer::Failed(format!(
                "node {node:016x} answered {:?} with {op:?}",
                o.opcode
            )),
        };
        self.finish(link.node, o, answer);
    }

    fn log_refusal(&self, message: &str) {
        let now = Instant::now();
        let due = self
            .last_refusal_log
            .get()
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_INTERVAL);
        if due {
            self.last_refusal_log.set(Some(now));
            tracing::error!("{message}");
        }
    }
}

impl ReplicaLinks {
    /// The listener's side of the handshake (see [`ReplicaService::hello`]).
    pub fn serve_hello(
        &self,
        request_id: u64,
        body: &AlignedVec,
        auth: &Cell<PeerAuth>,
        out: &mut Vec<u8>,
    ) -> bool {
        let refuse = |out: &mut Vec<u8>, message: String| {
            self.log_refusal(&message);
            msg::write_error(out, request_id, ErrorCode::InvalidRequest, message);
            false
        };
        let hello = match msg::access::<ArchivedPeerHello>(body) {
            Ok(h) => h,
            Err(e) => return refuse(out, format!("malformed PeerHello: {e}")),
        };
        match (auth.get(), hello) {
            (PeerAuth::None, ArchivedPeerHello::Hello { cluster_name, sender_id, nonce }) => {
                let theirs = cluster_name.as_str();
                if theirs.len() > CLUSTER_NAME_BYTES_MAX || theirs != self.cluster_name {
                    let shown: String = theirs.chars().take(CLUSTER_NAME_BYTES_MAX).collect();
                    return refuse(
                        out,
                        format!(
                            "replica link from cluster {shown:?} refused: this node is in \
                             cluster {:?}",
                            self.cluster_name
                        ),
                    );
                }
                let (peer, nonce_peer) = (sender_id.to_native(), nonce.to_native());
                if peer == 0 {
                    return refuse(out, "replica link from node id 0 refused".into());
                }
                let nonce_ours: u64 = self.rng.borrow_mut().gen();
                let mac = hello_mac(
                    &self.key,
                    true,
                    &self.cluster_name,
                    (peer, nonce_peer),
                    (self.me.0, nonce_ours),
                );
                let challenge =
                    PeerHello::Challenge { sender_id: self.me.0, nonce: nonce_ours, mac };
                if msg::write_frame(out, Opcode::PeerHello, true, request_id, &challenge).is_err() {
                    msg::write_error(out, request_id, ErrorCode::Internal, "encoding challenge");
                    return false;
                }
                auth.set(PeerAuth::Challenged { peer, nonce_peer, nonce_ours });
                true
            }
            (
                PeerAuth::Challenged { peer, nonce_peer, nonce_ours },
                ArchivedPeerHello::Proof { mac },
            ) => {
                let expected = hello_mac(
                    &self.key,
                    false,
                    &self.cluster_name,
                    (peer, nonce_peer),
                    (self.me.0, nonce_ours),
                );
                if !peer::tags_equal(&expected, mac) {
                    auth.set(PeerAuth::None);
                    return refuse(
                        out,
                        format!(
                            "replica link from node {peer:016x} refused: bad cluster secret \
                             (handshake authentication failed)"
                        ),
                    );
                }
                auth.set(PeerAuth::Authenticated { peer });
                tracing::debug!(peer = format!("{peer:016x}"), "replica link authenticated");
                msg::write_empty_frame(out, Opcode::PeerHello, true, request_id);
                true
            }
            (state, _) => {
                refuse(out, format!("PeerHello step out of order (connection is {state:?})"))
            }
        }
    }
}

/// The error message of an `Error` frame's body.
/// One step of the connecting side's handshake: sends `step` (`what`: "hello" or "proof")
/// as a PeerHello frame and returns the body of the PeerHello response; an error frame or any
/// other answer is the reason the link is refused.
async fn hello_step(
    stream: &mut TcpStream,
    addr: SocketAddr,
    what: &str,
    step: &PeerHello,
) -> Result<AlignedVec, String> {
    let mut out = Vec::new();
    msg::write_frame(&mut out, Opcode::PeerHello, false, 0, step)
        .map_err(|e| format!("encoding {what}: {e}"))?;
    stream.write_all(&out).await.map_err(|e| format!("sending {what} to {addr}: {e}"))?;
    let (h, body) = read_frame(stream).await?;
    if h.opcode == Opcode::Error {
        return Err(format!("{addr} refused our {what}: {}", error_message(&body)));
    }
    if h.opcode != Opcode::PeerHello || !h.response {
        return Err(format!("{addr} answered our {what} with {:?}", h.opcode));
    }
    Ok(body)
}

fn error_message(body: &[u8]) -> String {
    let mut aligned: AlignedVec = AlignedVec::with_capacity(body.len());
    aligned.extend_from_slice(body);
    msg::access::<ArchivedErrorResponse>(&aligned)
        .map(|e| e.message.as_str().to_string())
        .unwrap_or_else(|_| "(unreadable error)".into())
}

/// Reads one frame (bounded by the protocol's largest body) into an aligned buffer.
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Result<(FrameHeader, AlignedVec), String> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    rd.read_exact(&mut header).await.map_err(|e| format!("reading header: {e}"))?;
    let h = FrameHeader::decode(&header, FRAME_BODY_BYTES_MAX)
        .map_err(|e| format!("bad frame from peer: {e}"))?;
    let mut body = vec![0u8; h.body_len as usize];
    rd.read_exact(&mut body).await.map_err(|e| format!("reading body: {e}"))?;
    let mut aligned: AlignedVec = AlignedVec::with_capacity(body.len());
    aligned.extend_from_slice(&body);
    Ok((h, aligned))
}

/// The [`ReplicaService`] a cluster core installs: [`ReplicaLinks`] behind an `Rc`, so
/// sending can start a link's task.
pub struct ReplicaLinksHandle(pub Rc<ReplicaLinks>);

impl ReplicaService for ReplicaLinksHandle {
    fn send(&self, from: usize, corr: u64, target: NodeId, opcode: Opcode, body: Vec<u8>) {
        let digest = opcode == Opcode::ReplicaRead && is_digest_read(&body);
        // Coordinators' writes become hints when they fail; read repairs (corr 0) do not.
        let hint = opcode == Opcode::ReplicaWrite && corr != 0;
        let o = Outgoing { reply: Reply::Shard { from, corr }, opcode, body, digest, hint };
        self.0.enqueue(target, o);
    }

    fn hint(&self, target: NodeId, body: Vec<u8>) {
        self.0.store_hint(target, body);
    }

    fn on_liveness(&self, alive: &[u64]) {
        self.0.on_liveness(alive);
    }

    fn hello(
        &self,
        request_id: u64,
        body: &AlignedVec,
        auth: &Cell<PeerAuth>,
        out: &mut Vec<u8>,
    ) -> bool {
        self.0.serve_hello(request_id, body, auth, out)
    }
}

/// Whether an archived `ReplicaReadRequest` (made by our own shard) asks for a digest.
fn is_digest_read(body: &[u8]) -> bool {
    let mut aligned: AlignedVec = AlignedVec::with_capacity(body.len());
    aligned.extend_from_slice(body);
    msg::access::<peer::ArchivedReplicaReadRequest>(&aligned).map(|r| r.digest).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    //! Goal: the listener's side of the handshake admits a connector that holds the cluster key
    //! and refuses every other (wrong secret, wrong cluster, steps out of order, garbage).
    //! Method: drive `serve_hello` with frames a connector would send, computing its tags.
    use super::*;

    fn listener(secret: &[u8]) -> Rc<ReplicaLinks> {
        ReplicaLinks::new(
            NodeId(2),
            "c".into(),
            ClusterKey::derive("c", secret),
            100,
            Weak::new(),
            None,
        )
    }

    fn body_of(m: &PeerHello) -> AlignedVec {
        let mut out = Vec::new();
        msg::write_frame(&mut out, Opcode::PeerHello, false, 1, m).unwrap();
        let mut body: AlignedVec = AlignedVec::new();
        body.extend_from_slice(&out[FRAME_HEADER_BYTES..]);
        body
    }

    /// Runs Hello then Proof from node 1 holding `secret`; returns whether the proof passed.
    fn handshake(l: &ReplicaLinks, cluster: &str, secret: &[u8]) -> (bool, PeerAuth) {
        let auth = Cell::new(PeerAuth::None);
        let mut out = Vec::new();
        let hello = PeerHello::Hello { cluster_name: cluster.into(), sender_id: 1, nonce: 11 };
        if !l.serve_hello(1, &body_of(&hello), &auth, &mut out) {
            return (false, auth.get());
        }
        let h = FrameHeader::decode(&out, 1 << 20).unwrap();
        assert_eq!((h.opcode, h.response), (Opcode::PeerHello, true));
        let mut body: AlignedVec = AlignedVec::new();
        body.extend_from_slice(&out[FRAME_HEADER_BYTES..]);
        let ArchivedPeerHello::Challenge { sender_id, nonce, mac } =
            msg::access::<ArchivedPeerHello>(&body).unwrap()
        else {
            panic!("not a challenge")
        };
        let key = ClusterKey::derive("c", secret);
        let listener = (sender_id.to_native(), nonce.to_native());
        let expected = hello_mac(&key, true, "c", (1, 11), listener);
        // The connector checks the listener's tag: it matches only with the same key.
        assert_eq!(peer::tags_equal(&expected, mac), secret == b"s");
        let proof = PeerHello::Proof { mac: hello_mac(&key, false, "c", (1, 11), listener) };
        out.clear();
        let ok = l.serve_hello(2, &body_of(&proof), &auth, &mut out);
        (ok, auth.get())
    }

    #[test]
    fn only_a_connector_with_the_cluster_key_is_authenticated() {
        let l = listener(b"s");
        assert_eq!(handshake(&l, "c", b"s"), (true, PeerAuth::Authenticated { peer: 1 }));
        assert_eq!(handshake(&l, "c", b"wrong"), (false, PeerAuth::None));
        assert_eq!(handshake(&l, "other", b"s"), (false, PeerAuth::None));
        // A proof before any hello, and garbage: refused with an error frame.
        let auth = Cell::new(PeerAuth::None);
        let mut out = Vec::new();
        assert!(!l.serve_hello(3, &body_of(&PeerHello::Proof { mac: [0; 16] }), &auth, &mut out));
        assert_eq!(FrameHeader::decode(&out, 1 << 20).unwrap().opcode, Opcode::Error);
        let mut junk: AlignedVec = AlignedVec::new();
        junk.extend_from_slice(&[7u8; 13]);
        out.clear();
        assert!(!l.serve_hello(4, &junk, &auth, &mut out));
        assert_eq!(auth.get(), PeerAuth::None);
    }
}
