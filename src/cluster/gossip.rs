//! Membership by gossip: who is in the cluster, in what state, and who seems dead.
//!
//! Each node keeps a [`Membership`]: one [`NodeState`] per known node (itself included) and, for
//! every peer, a phi-accrual [`ArrivalWindow`] fed with the local times at which that peer's
//! heartbeat was seen to advance. Nothing here reads a clock, opens a socket or spawns a task:
//! the caller passes `now_ms` and an RNG and carries the returned messages, which is what lets
//! `tests/gossip_sim.rs` run a thousand nodes in one process.
//!
//! # Data flow
//! Every gossip interval (1 s) the node calls [`Membership::tick`]: its own heartbeat version
//! goes up by one and it returns a [`GossipMsg::Syn`] (digests: id and heartbeat of every known
//! node) for `fanout` random live peers, plus, with probability `down / (live + 1)`, one for a
//! random down peer so that a returning node is noticed (Cassandra's rule). The exchange is
//! Cassandra's three-way push-pull, each step answered by [`Membership::receive`]:
//!
//! ```text
//!   A --Syn{digests}------------------> B   B compares with its own states
//!   A <--Ack{states A lacks, wants}---- B   A merges, answers what B wants
//!   A --Ack2{states B wants}----------> B   B merges
//! ```
//!
//! # Invariants
//! - Merge rule: per node, the state with the higher [`Heartbeat`] `(generation, version)` wins
//!   whole. A node is the only writer of its own state; a state about us from elsewhere is
//!   ignored. The generation is chosen by the node at start (the node keeps the last one in its
//!   data directory and takes a larger one, as Cassandra uses the start time), so a restarted
//!   node beats its old self.
//! - A peer's detector measures when *we* saw its heartbeat advance, never its clock. A new
//!   generation restarts its detector, since the downtime is not an inter-arrival interval.
//! - Entries are kept sorted by [`NodeId`] and digests are sent sorted, so comparing a digest
//!   with our states is one merge walk, with no hashing (the walks compare the raw `u64` ids,
//!   which keeps the 1,000-node simulation fast in debug builds). At most `nodes_max` nodes are kept, and
//!   a message longer than that or out of order is dropped whole.
//! - [`Status`] (Joining, Up, Leaving, Left) is gossiped: only the node itself sets it, with
//!   one exception: `kvs removenode` marks a dead node Left on its behalf
//!   ([`Membership::remove_node`]), with the dead node's heartbeat version plus one, so the
//!   mark wins the merge everywhere and a Left state never feeds a failure detector.
//!   [`Liveness`] (Alive, Suspect, Down) is each observer's own verdict from phi and is never
//!   gossiped.
//!
//! - The topology version ([`Membership::topology_version`]) is a pure function of the states
//!   known, so nodes that know the same states report the same version, and it only grows:
//!   it is the sum, over every node heard from, of `generation * 4 + status` (status in
//!   Joining 0, Up 1, Leaving 2, Left 3). A node's status only moves forward within a
//!   generation and a restart takes a larger generation (the node keeps it in its data
//!   directory), so each term only grows; nodes are never forgotten, so no term disappears.
//!   Everything the topology shows of a node (address, shard ports, vnode count, status) is
//!   fixed within a generation except the status, so the topology changes only when the
//!   version does.
//!
//! # Node metadata: why the vnode count and not the tokens
//! [`NodeMeta`] carries the node's shard ports and its vnode count, not its tokens. Tokens are
//! `placement::vnode_tokens(id, count)`, a stable function of the id, so every receiver
//! recomputes them; sending 150 tokens would put 1,200 bytes per node into every Ack, about
//! ten times the rest of a state. The price: tokens chosen any other way (moved by an
//! operator, or balanced at join) would need a format change, which the node-to-node format
//! (`kvs_wire::peer`) allows with a new field.
//!
//! # Not yet
//! Left nodes are never forgotten (their term keeps the topology version monotone; a purge
//! after a grace period, as Cassandra's, is not done). Suspect/Down is
//! each node's own verdict and does not change the topology: a down node keeps its tokens
//! (hinted handoff, later, covers its writes).

use std::net::SocketAddr;
use std::sync::Arc;

use kvs_wire::placement::NodeId;
use rand::seq::SliceRandom;
use rand::Rng;

use super::phi::{ArrivalWindow, PhiOptions};
use super::OptionsError;

/// Peers gossiped with per round unless configured otherwise.
pub const FANOUT_DEFAULT: u32 = 3;
/// Upper bound on the nodes a membership holds (and on entries in one message).
pub const NODES_MAX: u32 = 16_384;

/// Settings of the membership state machine.
#[derive(Clone, Debug, PartialEq)]
pub struct GossipOptions {
    /// Live peers sent a Syn per round. Default 3.
    pub fanout: u32,
    /// phi at or above which a peer is shown as Suspect (below the down threshold). Default 5.
    pub suspect_phi: f64,
    /// Nodes kept at most; gossip about more is dropped. Default 4096.
    pub nodes_max: u32,
    /// The failure detector's settings (threshold 8 by default).
    pub phi: PhiOptions,
}

impl Default for GossipOptions {
    fn default() -> GossipOptions {
        GossipOptions {
            fanout: FANOUT_DEFAULT,
            suspect_phi: 5.0,
            nodes_max: 4096,
            phi: PhiOptions::default(),
        }
    }
}

impl GossipOptions {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let invalid =
            |field, reason: &str| Err(OptionsError::Invalid { field, reason: reason.into() });
        if self.fanout == 0 || self.fanout > 64 {
            return invalid("fanout", "must be in 1..=64");
        }
        if self.nodes_max < 2 || self.nodes_max > NODES_MAX {
            return invalid("nodes_max", "must be in 2..=16384");
        }
        self.phi.validate()?;
        if !(self.suspect_phi > 0.0 && self.suspect_phi <= self.phi.threshold) {
            return invalid("suspect_phi", "must be in (0, threshold]");
        }
        Ok(())
    }
}

/// A node's heartbeat: the generation (set at start, larger after each restart) and the version
/// (bumped every round and on every change of the node's own state). Ordered lexicographically.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Heartbeat {
    pub generation: u64,
    pub version: u64,
}

/// The state a node announces about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Taking over token ranges; not yet serving reads for them.
    Joining,
    /// Serving.
    Up,
    /// Handing its ranges away (decommission).
    Leaving,
    /// Dead, and its ranges are being re-replicated by `kvs removenode` (set on its behalf);
    /// placed like Leaving.
    Removing,
    /// Gone for good; no longer a gossip target.
    Left,
}

/// An observer's verdict on a peer, from phi. Never gossiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Ourselves, or a peer whose phi is below `suspect_phi`.
    Alive,
    /// phi at or above `suspect_phi`, below the threshold.
    Suspect,
    /// phi at or above the threshold.
    Down,
    /// A seed we have never heard from.
    Unknown,
}

/// What other nodes need to route to this one, fixed for a generation. The node's address is
/// in [`NodeState::addr`]; its tokens are `placement::vnode_tokens(id, token_count)` (see the
/// module docs for why the count is sent and not the tokens).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// The port of each shard, on the host of the node's address; its length is the shard
    /// count. Shared, so a state is cheap to clone in a thousand-node simulation.
    pub shard_ports: Arc<[u16]>,
    /// The node's vnode count.
    pub token_count: u16,
}

impl NodeMeta {
    /// The node's shard count.
    pub fn shard_count(&self) -> usize {
        self.shard_ports.len()
    }
}

/// Everything gossiped about one node; replaced whole by a newer heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeState {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub heartbeat: Heartbeat,
    pub status: Status,
    pub meta: NodeMeta,
}

/// A node's id and heartbeat: enough to tell who has the newer state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub id: NodeId,
    pub heartbeat: Heartbeat,
}

/// The three steps of an exchange. Lists are sorted by id with no repeats.
#[derive(Clone, Debug, PartialEq)]
pub enum GossipMsg {
    /// Opens an exchange: a digest of every node the sender knows.
    Syn { digests: Vec<Digest> },
    /// States the Syn's sender lacks or has older, and the ids whose states we want.
    Ack { states: Vec<NodeState>, wants: Vec<NodeId> },
    /// The states asked for in the Ack.
    Ack2 { states: Vec<NodeState> },
}

impl Status {
    /// The status's rank in its forward-only order, as used in the topology version.
    pub fn rank(self) -> u64 {
        match self {
            Status::Joining => 0,
            Status::Up => 1,
            Status::Leaving | Status::Removing => 2,
            Status::Left => 3,
        }
    }

    /// A status another node sets on a dead node's behalf (removenode), or the last one: never
    /// a sign of life.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Removing | Status::Left)
    }
}

/// How far a mark made on a dead node's behalf ([`Membership::mark_removed`]) moves its
/// heartbeat version: far past anything the node itself announced, so the mark wins the
/// merge everywhere even where a later heartbeat of the node arrived than the marker saw.
pub const REMOVAL_VERSION_BUMP: u64 = 1 << 32;

impl NodeState {
    /// This state's term in [`Membership::topology_version`]; 0 for an unheard seed.
    pub fn topology_term(&self) -> u64 {
        if self.heartbeat == Heartbeat::default() {
            return 0;
        }
        self.heartbeat.generation.saturating_mul(4).saturating_add(self.status.rank())
    }
}

/// One line of [`Membership::view`].
#[derive(Clone, Debug, PartialEq)]
pub struct PeerView {
    pub state: NodeState,
    /// phi now (0 for ourselves and for seeds never heard from).
    pub phi: f64,
    pub liveness: Liveness,
}

#[derive(Clone, Debug)]
struct Entry {
    state: NodeState,
    /// None for ourselves and for a seed we have not heard from yet.
    arrivals: Option<ArrivalWindow>,
}

/// One node's view of the cluster and its side of the gossip protocol.
#[derive(Clone, Debug)]
pub struct Membership {
    me: NodeId,
    options: GossipOptions,
    /// Sorted by id; ourselves included.
    entries: Vec<Entry>,
    /// Gossip dropped because it was malformed or over `nodes_max` (for the stats).
    rejected: u64,
}

impl Membership {
    /// A membership that knows only itself, in state Joining. `generation` must be at least 1
    /// and larger than any the node used before (0 is the heartbeat of an unheard seed).
    pub fn new(
        me: NodeId,
        addr: SocketAddr,
        generation: u64,
        meta: NodeMeta,
        options: GossipOptions,
    ) -> Membership {
        assert!(generation >= 1, "generation 0 is reserved for seeds");
        debug_assert!(options.validate().is_ok());
        let state = NodeState {
            id: me,
            addr,
            heartbeat: Heartbeat { generation, version: 0 },
            status: Status::Joining,
            meta,
        };
        Membership { me, options, entries: vec![Entry { state, arrivals: None }], rejected: 0 }
    }

    /// Adds a seed to gossip with before we have heard of it. Its placeholder state has
    /// heartbeat (0, 0), so any real state of it wins.
    pub fn add_seed(&mut self, id: NodeId, addr: SocketAddr) {
        if let Err(i) = self.find(id) {
            if self.entries.len() < self.options.nodes_max as usize {
                let state = NodeState {
                    id,
                    addr,
                    heartbeat: Heartbeat::default(),
                    status: Status::Joining,
                    meta: NodeMeta::default(),
                };
                self.entries.insert(i, Entry { state, arrivals: None });
            }
        }
    }

    /// Our id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// A Syn with the digest of every node we know, without starting a round: for contacting
    /// a seed whose id we do not know yet.
    pub fn syn(&self) -> GossipMsg {
        GossipMsg::Syn {
            digests: self
                .entries
                .iter()
                .map(|e| Digest { id: e.state.id, heartbeat: e.state.heartbeat })
                .collect(),
        }
    }

    /// The state we hold of `id`, if known.
    pub fn state(&self, id: NodeId) -> Option<&NodeState> {
        self.find(id).ok().and_then(|i| self.entries.get(i)).map(|e| &e.state)
    }

    /// The topology version of what we know: the sum of every known state's
    /// [`NodeState::topology_term`] (see the module docs for why it only grows and why nodes
    /// that know the same states agree on it).
    pub fn topology_version(&self) -> u64 {
        self.entries.iter().fold(0u64, |sum, e| sum.saturating_add(e.state.topology_term()))
    }

    /// Sets our own status (Joining -> Up -> Leaving -> Left), bumping the version.
    pub fn set_status(&mut self, status: Status) {
        let me = self.me_mut();
        me.status = status;
        me.heartbeat.version += 1;
    }

    /// Marks `id`, a node that is down, Removing or Left on its behalf (`kvs removenode`):
    /// its state with the heartbeat version moved by [`REMOVAL_VERSION_BUMP`], so the mark
    /// wins the merge on every node; a final status never feeds a failure detector. A node
    /// that comes back restarts with a larger generation and rejoins.
    pub fn mark_removed(&mut self, id: NodeId, status: Status) -> Result<(), String> {
        if id == self.me {
            return Err("a node cannot remove itself; use decommission".into());
        }
        if !status.is_final() {
            return Err(format!("{status:?} is not a removal mark"));
        }
        let i = self.find(id).map_err(|_| format!("node {:016x} is not known", id.0))?;
        let e = &mut self.entries[i];
        if e.state.heartbeat == Heartbeat::default() {
            return Err(format!("node {:016x} was never heard from", id.0));
        }
        e.state.status = status;
        e.state.heartbeat.version = e.state.heartbeat.version.saturating_add(REMOVAL_VERSION_BUMP);
        Ok(())
    }

    /// Starts a gossip round at `now_ms`: bumps our heartbeat and returns the Syns to send.
    pub fn tick<R: Rng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Vec<(NodeId, GossipMsg)> {
        self.me_mut().heartbeat.version += 1;
        let mut live = Vec::new();
        let mut down = Vec::new();
        for e in &self.entries {
            if e.state.id == self.me || e.state.status == Status::Left {
                continue;
            }
            match self.liveness_of(e, now_ms) {
                Liveness::Down => down.push(e.state.id),
                _ => live.push(e.state.id),
            }
        }
        let mut targets: Vec<NodeId> =
            live.choose_multiple(rng, self.options.fanout as usize).copied().collect();
        // Probe a down node now and then so that a node that comes back is seen (Cassandra).
        if !down.is_empty() && rng.gen_range(0..live.len() + 1) < down.len() {
            targets.extend(down.choose(rng));
        }
        if targets.is_empty() {
            return Vec::new();
        }
        let digests: Vec<Digest> = self
            .entries
            .iter()
            .map(|e| Digest { id: e.state.id, heartbeat: e.state.heartbeat })
            .collect();
        targets.into_iter().map(|t| (t, GossipMsg::Syn { digests: digests.clone() })).collect()
    }

    /// Handles a message from `from` at `now_ms`, returning the reply to send back, if any.
    pub fn receive(&mut self, now_ms: u64, from: NodeId, msg: GossipMsg) -> Option<GossipMsg> {
        let _ = from; // Part of the interface: the transport's authenticated peer, for stats.
        match msg {
            GossipMsg::Syn { digests } => {
                if !self.well_formed(digests.iter().map(|d| d.id)) {
                    return None;
                }
                Some(self.answer_syn(&digests))
            }
            GossipMsg::Ack { states, wants } => {
                if !self.well_formed(states.iter().map(|s| s.id))
                    || !self.well_formed(wants.iter().copied())
                {
                    return None;
                }
                self.merge(now_ms, &states);
                // Both sorted: one walk.
                let mut entries = self.entries.iter().peekable();
                let mut states = Vec::with_capacity(wants.len());
                for id in wants {
                    while entries.next_if(|e| e.state.id.0 < id.0).is_some() {}
                    states
                        .extend(entries.next_if(|e| e.state.id.0 == id.0).map(|e| e.state.clone()));
                }
                (!states.is_empty()).then_some(GossipMsg::Ack2 { states })
            }
            GossipMsg::Ack2 { states } => {
                if self.well_formed(states.iter().map(|s| s.id)) {
                    self.merge(now_ms, &states);
                }
                None
            }
        }
    }

    /// Every known node with its phi and liveness at `now_ms`, sorted by id.
    pub fn view(&self, now_ms: u64) -> Vec<PeerView> {
        self.entries
            .iter()
            .map(|e| PeerView {
                state: e.state.clone(),
                phi: e.arrivals.as_ref().map_or(0.0, |a| a.phi(now_ms, &self.options.phi)),
                liveness: self.liveness_of(e, now_ms),
            })
            .collect()
    }

    /// Whether `id` is known (a seed never heard from counts).
    pub fn knows(&self, id: NodeId) -> bool {
        self.find(id).is_ok()
    }

    /// Our verdict on `id` at `now_ms`, or None if it is unknown.
    pub fn liveness(&self, id: NodeId, now_ms: u64) -> Option<Liveness> {
        self.find(id).ok().map(|i| self.liveness_of(&self.entries[i], now_ms))
    }

    /// The arrival history of peer `id`, if we have heard from it.
    pub fn arrivals(&self, id: NodeId) -> Option<&ArrivalWindow> {
        self.find(id).ok().and_then(|i| self.entries[i].arrivals.as_ref())
    }

    /// Known nodes, ourselves included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a membership knows at least itself.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages dropped as malformed or oversized.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    fn find(&self, id: NodeId) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&id, |e| e.state.id)
    }

    fn me_mut(&mut self) -> &mut NodeState {
        let i = self.find(self.me).expect("a membership always holds itself");
        &mut self.entries[i].state
    }

    fn liveness_of(&self, e: &Entry, now_ms: u64) -> Liveness {
        if e.state.id == self.me {
            return Liveness::Alive;
        }
        match &e.arrivals {
            None => Liveness::Unknown,
            Some(a) => {
                let phi = a.phi(now_ms, &self.options.phi);
                if phi >= self.options.phi.threshold {
                    Liveness::Down
                } else if phi >= self.options.suspect_phi {
                    Liveness::Suspect
                } else {
                    Liveness::Alive
                }
            }
        }
    }

    /// Outside input first: bounded length, strictly increasing ids.
    fn well_formed(&mut self, ids: impl ExactSizeIterator<Item = NodeId>) -> bool {
        let mut ok = ids.len() <= self.options.nodes_max as usize;
        let mut prev: Option<NodeId> = None;
        for id in ids {
            ok &= prev.is_none_or(|p| p < id);
            prev = Some(id);
        }
        if !ok {
            self.rejected += 1;
        }
        ok
    }

    /// One merge walk of the (sorted) digests against our (sorted) entries.
    fn answer_syn(&self, digests: &[Digest]) -> GossipMsg {
        // Every heartbeat moves each round, so about half the entries differ either way.
        let mut states = Vec::with_capacity(self.entries.len() / 2 + 1);
        let mut wants = Vec::with_capacity(digests.len() / 2 + 1);
        let mut d = digests.iter().peekable();
        for e in &self.entries {
            while let Some(x) = d.next_if(|x| x.id.0 < e.state.id.0) {
                if x.heartbeat > Heartbeat::default() {
                    wants.push(x.id);
                }
            }
            match d.next_if(|x| x.id.0 == e.state.id.0) {
                Some(x) if x.heartbeat > e.state.heartbeat => wants.push(x.id),
                Some(x) if x.heartbeat == e.state.heartbeat => {}
                _ if e.state.heartbeat == Heartbeat::default() => {} // An unheard seed: nothing to tell.
                _ => states.push(e.state.clone()),
            }
        }
        wants.extend(d.filter(|x| x.heartbeat > Heartbeat::default()).map(|x| x.id));
        GossipMsg::Ack { states, wants }
    }

    /// Applies `states` (sorted by id): newer heartbeats win and feed the detectors.
    fn merge(&mut self, now_ms: u64, states: &[NodeState]) {
        // States and entries are both sorted: one walk, with a cursor that only moves forward.
        let mut cursor = 0;
        for s in states {
            if s.id == self.me || s.heartbeat == Heartbeat::default() {
                continue;
            }
            while self.entries.get(cursor).is_some_and(|e| e.state.id.0 < s.id.0) {
                cursor += 1;
            }
            let found = match self.entries.get(cursor) {
                Some(e) if e.state.id == s.id => Ok(cursor),
                _ => Err(cursor),
            };
            match found {
                Ok(i) => {
                    let e = &mut self.entries[i];
                    // Newer heartbeat wins; at an equal one the later status does (so two
                    // marks of a dead node made at once converge).
                    let newer =
                        (s.heartbeat, s.status.rank()) > (e.state.heartbeat, e.state.status.rank());
                    if !newer {
                        continue;
                    }
                    let restarted = s.heartbeat.generation != e.state.heartbeat.generation;
                    e.state = s.clone();
                    match &mut e.arrivals {
                        // A removal mark or a Left state is not a sign of life.
                        _ if s.status.is_final() && !restarted => {}
                        Some(a) if !restarted => a.heartbeat(now_ms, &self.options.phi),
                        slot => *slot = Some(ArrivalWindow::new(now_ms, &self.options.phi)),
                    }
                }
                Err(i) => {
                    if self.entries.len() >= self.options.nodes_max as usize {
                        self.rejected += 1;
                        continue;
                    }
                    // A node first heard of in a final status is not heard alive.
                    let arrivals = (!s.status.is_final())
                        .then(|| ArrivalWindow::new(now_ms, &self.options.phi));
                    self.entries.insert(i, Entry { state: s.clone(), arrivals });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Goal: the merge rule, the three-way exchange and the local verdicts on a few nodes.
    //! Method: drive two or three memberships by hand; the many-node behaviour is in
    //! `tests/gossip_sim.rs`.
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn node(id: u64, generation: u64) -> Membership {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16));
        Membership::new(NodeId(id), addr, generation, NodeMeta::default(), GossipOptions::default())
    }

    /// Runs one exchange a -> b at `now_ms`.
    fn exchange(a: &mut Membership, b: &mut Membership, now_ms: u64) {
        let syn = GossipMsg::Syn {
            digests: a
                .entries
                .iter()
                .map(|e| Digest { id: e.state.id, heartbeat: e.state.heartbeat })
                .collect(),
        };
        if let Some(ack) = b.receive(now_ms, a.id(), syn) {
            if let Some(ack2) = a.receive(now_ms, b.id(), ack) {
                assert!(b.receive(now_ms, a.id(), ack2).is_none());
            }
        }
    }

    #[test]
    fn exchange_teaches_both_sides_and_newer_wins() {
        let (mut a, mut b, mut c) = (node(1, 1), node(2, 1), node(3, 1));
        exchange(&mut b, &mut c, 0);
        exchange(&mut a, &mut b, 0);
        for m in [&a, &b] {
            assert_eq!(m.len(), 3, "{:?}", m.view(0));
        }
        c.set_status(Status::Up);
        exchange(&mut c, &mut a, 1000);
        let seen = a.view(1000).into_iter().find(|v| v.state.id == NodeId(3)).unwrap();
        assert_eq!(seen.state.status, Status::Up);
        // b still holds c's older state; a newer one never loses to it.
        exchange(&mut b, &mut a, 2000);
        assert_eq!(a.view(2000)[2].state.status, Status::Up);
        assert_eq!(b.view(2000)[2].state.status, Status::Up);
    }

    #[test]
    fn restart_with_a_new_generation_wins_and_states_about_us_are_ignored() {
        let (mut a, mut b) = (node(1, 1), node(2, 5));
        for _ in 0..10 {
            b.set_status(Status::Up);
        }
        exchange(&mut a, &mut b, 0);
        let mut b2 = node(2, 6);
        exchange(&mut b2, &mut a, 1000);
        assert_eq!(a.view(1000)[1].state.heartbeat, Heartbeat { generation: 6, version: 0 });
        // a now tells b2 nothing newer about b2 itself; an old b would be told nothing either.
        exchange(&mut a, &mut b, 2000);
        assert_eq!(b.view(2000)[1].state.heartbeat.generation, 5);
    }

    #[test]
    fn silent_peer_goes_suspect_then_down_and_is_probed() {
        let (mut a, mut b) = (node(1, 1), node(2, 1));
        let mut rng = StdRng::seed_from_u64(1);
        for r in 0..20u64 {
            b.tick(r * 1000, &mut rng);
            exchange(&mut b, &mut a, r * 1000);
        }
        let last = 19_000;
        assert_eq!(a.liveness(NodeId(2), last + 1000), Some(Liveness::Alive));
        let states: Vec<Liveness> =
            (1..=200).map(|s| a.liveness(NodeId(2), last + s * 50).unwrap()).collect();
        assert!(states.contains(&Liveness::Suspect), "{states:?}");
        assert_eq!(states.last(), Some(&Liveness::Down));
        // a's only peer is down: it is still probed now and then (probability 1 with no live peer).
        let out = a.tick(last + 10_000, &mut rng);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, NodeId(2));
    }

    #[test]
    fn seeds_are_contacted_and_malformed_gossip_is_dropped() {
        let mut a = node(1, 1);
        a.add_seed(NodeId(9), SocketAddr::from(([127, 0, 0, 9], 7000)));
        assert_eq!(a.liveness(NodeId(9), 0), Some(Liveness::Unknown));
        let out = a.tick(0, &mut StdRng::seed_from_u64(2));
        assert_eq!(out.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![NodeId(9)]);
        let hb = Heartbeat { generation: 1, version: 1 };
        let unsorted = GossipMsg::Syn {
            digests: vec![
                Digest { id: NodeId(5), heartbeat: hb },
                Digest { id: NodeId(4), heartbeat: hb },
            ],
        };
        assert!(a.receive(0, NodeId(5), unsorted).is_none());
        assert_eq!(a.rejected(), 1);
    }

    #[test]
    fn a_removed_node_is_left_everywhere_until_it_restarts() {
        let (mut a, mut b, mut c) = (node(1, 1), node(2, 1), node(3, 1));
        for m in [&mut a, &mut b, &mut c] {
            m.set_status(Status::Up);
        }
        exchange(&mut a, &mut c, 0);
        exchange(&mut a, &mut b, 10);
        assert!(a.mark_removed(NodeId(1), Status::Left).is_err(), "not itself");
        assert!(a.mark_removed(NodeId(9), Status::Left).is_err(), "not an unknown node");
        assert!(a.mark_removed(NodeId(3), Status::Up).is_err(), "only final statuses");
        // Node 3 heartbeats once more, and b hears it but a does not: a's mark still wins.
        c.tick(15, &mut StdRng::seed_from_u64(1));
        exchange(&mut c, &mut b, 15);
        let before = a.topology_version();
        a.mark_removed(NodeId(3), Status::Removing).unwrap();
        assert!(a.topology_version() > before);
        exchange(&mut a, &mut b, 20);
        assert_eq!(b.state(NodeId(3)).unwrap().status, Status::Removing);
        // A mark is not a heartbeat: b's detector still sees node 3 silent since 15.
        assert_eq!(b.arrivals(NodeId(3)).unwrap().last_ms(), 15);
        a.mark_removed(NodeId(3), Status::Left).unwrap();
        exchange(&mut a, &mut b, 25);
        assert_eq!(b.state(NodeId(3)).unwrap().status, Status::Left);
        // The removed node restarts: a larger generation wins over the mark.
        let mut c2 = node(3, 2);
        c2.set_status(Status::Up);
        exchange(&mut c2, &mut b, 30);
        assert_eq!(b.state(NodeId(3)).unwrap().status, Status::Up);
    }

    #[test]
    fn topology_version_agrees_and_only_grows() {
        let (mut a, mut b) = (node(1, 10), node(2, 20));
        let seen = a.topology_version();
        assert_eq!(seen, 40);
        exchange(&mut a, &mut b, 0);
        assert_eq!(a.topology_version(), b.topology_version());
        assert_eq!(a.topology_version(), 40 + 80);
        // A heartbeat alone does not change it; a status change does, on both sides.
        a.tick(1, &mut StdRng::seed_from_u64(3));
        assert_eq!(a.topology_version(), 120);
        b.set_status(Status::Up);
        exchange(&mut b, &mut a, 2);
        assert_eq!((a.topology_version(), b.topology_version()), (121, 121));
        // A restart (Joining again, larger generation) still grows it.
        let mut b2 = node(2, 21);
        exchange(&mut b2, &mut a, 3);
        assert_eq!(a.topology_version(), 40 + 84);
        // An unheard seed counts for nothing.
        a.add_seed(NodeId(7), SocketAddr::from(([127, 0, 0, 7], 7000)));
        assert_eq!(a.topology_version(), 124);
    }

    #[test]
    fn options_are_validated() {
        assert!(GossipOptions::default().validate().is_ok());
        assert!(GossipOptions { fanout: 0, ..GossipOptions::default() }.validate().is_err());
        assert!(GossipOptions { suspect_phi: 9.0, ..GossipOptions::default() }.validate().is_err());
    }
}
