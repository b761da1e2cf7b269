//! Range movement on the cluster core: a node joining streams the ranges it takes over, a
//! node decommissioned streams its ranges away, and `kvs removenode` re-replicates a dead
//! node's ranges from the survivors. What moves and from where is decided by
//! [`crate::cluster::movement::plan`]; this module carries the plan out.
//!
//! ## How a join goes
//! A node started for the first time with seeds (marked by [`BOOTSTRAP_MARKER`] in its data
//! directory until the join completes, so a crash mid-join joins again) gossips as Joining.
//! Once it has heard a peer it waits `ring_delay_ms`, so that every node knows it is joining
//! and sends it the writes of the ranges it gains (coordinators write to the old and the new
//! replicas while a node is Joining or Leaving, and need W more acknowledgements per pending
//! replica: see `crate::shard`); then it plans the move from the ring of Up and Leaving nodes
//! to that ring plus itself and copies every range it gains from one of the range's current
//! replicas (the one losing the range first). Reads of those ranges keep going to the old
//! replicas until the node announces Up, after the last range is in.
//!
//! ## Decommission and removenode
//! `kvs decommission` (the `Decommission` request on the node port) makes the node Leaving; after
//! `ring_delay_ms` it copies each of its ranges to the node that gains it, then announces Left
//! and, after `ring_delay_ms` more, reports done: the process can be stopped. `kvs removenode
//! ID` (on any live node) checks that the node is down, marks it Left on its behalf (gossip
//! spreads the mark) and copies every range that gains a replica from a surviving replica. A
//! range whose every old replica is unavailable cannot be copied and is reported.
//!
//! ## Copying a range
//! For each shard of the source: `StreamScan` pages (the source's shard reads its engine in
//! key order and keeps the keys whose token lies in the ranges), each page split by the
//! target's shards (`shard_of(token, S)`) and applied there with `StreamApply`, which keeps
//! every version only if newer than what the shard holds. Local sources and targets are
//! called through the node's own shard channels, remote ones over the replica links. A
//! source that fails is replaced by the range's next candidate and the copy starts over from
//! that one (applying a version twice is harmless).
//!
//! ## Progress
//! One line, in `kvs status` (ClusterStatus's `movement`): what runs, versions and bytes
//! copied, streams done of all, and the outcome.
//!
//! ## Not yet
//! A leaving node's old data stays on the nodes that lost a range to a joining node (no
//! cleanup); Left nodes stay in gossip for good; one movement at a time per node, and the
//! node refuses to decommission while another node is joining or leaving, but two nodes may
//! join at once (each plans against the Up nodes only).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use kvs_wire::msg::{self, AlignedVec, NodeStatus, TopologyResponse};
use kvs_wire::peer::{
    ArchivedStreamScanResponse, MovementState, StreamApplyRequest, StreamEntry, StreamScanRequest,
    StreamScanResponse,
};
use kvs_wire::placement::{shard_of, token_of, NodeId, Token};
use kvs_wire::Opcode;

use super::replica::ReplicaLinks;
use super::GossipCore;
use crate::cluster::gossip::Status;
use crate::cluster::hints::TokenBucket;
use crate::cluster::hlc::wall_ms;
use crate::cluster::movement::{self, TokenRange};
use crate::shard::ExecutorCtx;

/// The file in a node's data directory that says a join has not completed.
pub const BOOTSTRAP_MARKER: &str = "joining";
/// The file in a node's data directory that says it was decommissioned: it refuses to start
/// (its data is stale; a new node needs an empty directory).
pub const LEFT_MARKER: &str = "left";
/// Keys per `StreamScan` page.
const PAGE_KEYS: u32 = 1024;
/// How long one stream request may take before it counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A join that failed tries again after this long.
const JOIN_RETRY: Duration = Duration::from_secs(5);
/// Tries of one stream request before its copy fails (pauses 0.1, 0.2, 0.4, 0.8, 1.6, 2 s).
const CALL_ATTEMPTS: u32 = 7;

/// Which side of a copy failed: a source is replaced by the range's next candidate; a target
/// failing ends the movement (another source would not help).
#[derive(Debug)]
enum CopyError {
    Source(String),
    Target(String),
}

/// What a mover needs, fixed at start.
pub struct MoverSettings {
    pub ring_delay: Duration,
    pub gossip_interval: Duration,
    /// Bytes per stream page.
    pub page_bytes: u32,
    /// Bound on the bytes of versions copied per second (`stream_kb_per_s`).
    pub bytes_per_s: u64,
    /// The bootstrap marker's path (see [`BOOTSTRAP_MARKER`]).
    pub marker: PathBuf,
    /// The decommission marker's path (see [`LEFT_MARKER`]).
    pub left_marker: PathBuf,
}

/// One range to copy to `target`, with the nodes that can send it, preferred first.
#[derive(Clone, Debug)]
struct Work {
    range: TokenRange,
    target: NodeId,
    sources: Vec<NodeId>,
}

/// Counters of the movement in progress.
#[derive(Default)]
struct Progress {
    kind: &'static str,
    phase: String,
    started: Option<Instant>,
    versions: u64,
    bytes: u64,
    streams_done: usize,
    streams_total: usize,
    /// Ranges copied from a later candidate because an earlier one failed.
    fallbacks: usize,
    /// The outcome once done or failed.
    outcome: String,
}

/// Runs this node's range movements; lives on the cluster core.
pub struct Mover {
    me: NodeId,
    settings: MoverSettings,
    ctx: Weak<ExecutorCtx>,
    core: Rc<GossipCore>,
    links: Rc<ReplicaLinks>,
    state: Cell<MovementState>,
    progress: RefCell<Progress>,
    /// Paces the copy (`stream_kb_per_s`): every node of a small cluster shares its cores
    /// with the requests it serves, and an unpaced copy takes them all.
    pace: RefCell<TokenBucket>,
}

impl Mover {
    pub fn new(
        me: NodeId,
        settings: MoverSettings,
        ctx: Weak<ExecutorCtx>,
        core: Rc<GossipCore>,
        links: Rc<ReplicaLinks>,
    ) -> Rc<Mover> {
        let settings_rate = settings.bytes_per_s;
        let mover = Rc::new(Mover {
            me,
            settings,
            ctx,
            core,
            links,
            state: Cell::new(MovementState::Idle),
            progress: RefCell::new(Progress::default()),
            pace: RefCell::new(TokenBucket::new(settings_rate, wall_ms())),
        });
        mover.core.set_mover(&mover);
        mover
    }

    /// Where the movement is.
    pub fn state(&self) -> MovementState {
        self.state.get()
    }

    /// The movement's one line of progress or outcome.
    pub fn progress_line(&self) -> String {
        let p = self.progress.borrow();
        if p.kind.is_empty() {
            return String::new();
        }
        let secs = p.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let mut copied = format!(
            "{} versions ({:.1} MiB) copied, {}/{} streams done",
            p.versions,
            p.bytes as f64 / (1u64 << 20) as f64,
            p.streams_done,
            p.streams_total
        );
        if p.fallbacks > 0 {
            // The preferred source holds every write acknowledged for the range; another old
            // replica may lack one acknowledged by the preferred source and a third node.
            copied.push_str(&format!(
                "; {} ranges came from a fallback source (a write acknowledged by the failed \
                 source may have one copy fewer until read repair or hints fix it)",
                p.fallbacks
            ));
        }
        match self.state.get() {
            MovementState::Idle => String::new(),
            MovementState::Running => format!("{}: {} ({secs:.1} s); {copied}", p.kind, p.phase),
            MovementState::Done => format!("{}: done; {copied}; {}", p.kind, p.outcome),
            MovementState::Failed => format!("{}: failed: {}; {copied}", p.kind, p.outcome),
        }
    }

    fn begin(&self, kind: &'static str) {
        self.state.set(MovementState::Running);
        *self.progress.borrow_mut() = Progress {
            kind,
            phase: "starting".into(),
            started: Some(Instant::now()),
            ..Progress::default()
        };
    }

    fn phase(&self, phase: impl Into<String>) {
        let phase = phase.into();
        tracing::info!(kind = self.progress.borrow().kind, "{phase}");
        self.progress.borrow_mut().phase = phase;
    }

    fn finish(&self, outcome: Result<String, String>) {
        let kind = self.progress.borrow().kind;
        let secs = self.progress.borrow().started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        match outcome {
            Ok(note) => {
                self.progress.borrow_mut().outcome = format!("{note} (in {secs:.1} s)");
                self.state.set(MovementState::Done);
                tracing::info!(kind, "{}", self.progress_line());
            }
            Err(e) => {
                self.progress.borrow_mut().outcome = e;
                self.state.set(MovementState::Failed);
                tracing::warn!(kind, "{}", self.progress_line());
            }
        }
    }

    fn topology(&self) -> Option<std::sync::Arc<TopologyResponse>> {
        self.ctx.upgrade().map(|c| c.topology())
    }

    /// Reports `what` was announced and waits `ring_delay_ms` for gossip to carry it to every
    /// node; false when the node began to stop meanwhile.
    async fn announce_and_wait(&self, what: &str) -> bool {
        self.phase(format!(
            "{what}; waiting ring_delay_ms ({:?}) for every node to hear",
            self.settings.ring_delay
        ));
        self.sleep(self.settings.ring_delay).await
    }

    /// Sleeps `d`; false when the node began to stop meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        let Some(ctx) = self.ctx.upgrade() else { return false };
        futures_lite::future::or(
            async {
                glommio::timer::sleep(d).await;
                true
            },
            async {
                ctx.shutdown.wait().await;
                false
            },
        )
        .await
    }

    /// Joins the ring (see the module docs); runs until the node is Up or stops.
    pub async fn join(self: Rc<Self>) {
        self.begin("join");
        self.phase("waiting to hear from a seed");
        while self.core.peers_heard() == 0 {
            if !self.sleep(self.settings.gossip_interval).await {
                return;
            }
        }
        if !self.announce_and_wait("announced Joining").await {
            return;
        }
        loop {
            let Some(topology) = self.topology() else { return };
            // One movement at a time: a node leaving changes the ring this join plans against.
            if let Some(n) = topology.nodes.iter().find(|n| n.status == NodeStatus::Leaving) {
                self.phase(format!("waiting for node {:016x} to finish leaving", n.id));
                if !self.sleep(self.settings.gossip_interval).await {
                    return;
                }
                continue;
            }
            let planned = readers(&topology);
            let (work, unstreamable, share) = join_work(&topology, self.me, &self.alive());
            self.phase(format!(
                "copying {} ranges ({share:.3} of the ring) from their replicas",
                work.len()
            ));
            let outcome = match self.copy_all(work).await {
                Ok(()) if unstreamable > 0 => Err(format!(
                    "{unstreamable} ranges have no live replica to copy from (waiting for one)"
                )),
                other => other,
            };
            match outcome {
                // The ring moved meanwhile (a node came up or went): plan again, copying what
                // the new plan adds (a version applied twice is harmless).
                Ok(()) if self.topology().is_some_and(|t| readers(&t) != planned) => {
                    self.phase("the ring changed during the copy; planning again");
                }
                Ok(()) => {
                    if let Err(e) = remove_marker(&self.settings.marker) {
                        // The join is complete; a marker left behind only makes the next
                        // start join again (copying what it holds already).
                        tracing::warn!("removing the bootstrap marker: {e}");
                    }
                    self.core.set_own_status(Status::Up);
                    self.finish(Ok(format!("the node is Up; it gained {share:.3} of the ring")));
                    return;
                }
                Err(e) => {
                    tracing::warn!("join: {e}; trying again in {JOIN_RETRY:?}");
                    self.phase(format!("retrying after: {e}"));
                    if !self.sleep(JOIN_RETRY).await {
                        return;
                    }
                }
            }
        }
    }

    /// Starts a decommission of this node, or says why not.
    pub fn start_decommission(self: &Rc<Self>) -> Result<(), String> {
        if self.state.get() == MovementState::Running {
            return Err(format!("a {} is running on this node", self.progress.borrow().kind));
        }
        match self.core.own_status() {
            Status::Up | Status::Leaving => {}
            Status::Joining => return Err("the node is still joining".into()),
            Status::Left | Status::Removing => {
                return Err("the node has already left the ring".into())
            }
        }
        let topology = self.topology().ok_or("the node is stopping")?;
        one_movement_at_a_time(&topology, Some(self.me), false)?;
        let remaining = topology.nodes.iter().filter(|n| n.id != self.me.0).count();
        if remaining < usize::from(topology.replication_factor) {
            return Err(format!(
                "decommission would leave {remaining} nodes for replication factor {}: add a \
                 node first",
                topology.replication_factor
            ));
        }
        self.begin("decommission");
        glommio::spawn_local(self.clone().decommission()).detach();
        Ok(())
    }

    async fn decommission(self: Rc<Self>) {
        self.core.set_own_status(Status::Leaving);
        if !self.announce_and_wait("announced Leaving").await {
            return;
        }
        loop {
            let Some(topology) = self.topology() else { return };
            let planned = readers(&topology);
            let (work, share) = leave_work(&topology, self.me, &self.alive());
            self.phase(format!("copying {} ranges ({share:.3} of the ring) away", work.len()));
            if let Err(e) = self.copy_all(work).await {
                self.finish(Err(format!("{e}; the node stays Leaving: run decommission again")));
                return;
            }
            if self.topology().is_some_and(|t| readers(&t) == planned) {
                break;
            }
            self.phase("the ring changed during the copy; planning again");
        }
        if let Err(e) = write_marker(&self.settings.left_marker) {
            self.finish(Err(format!(
                "writing {}: {e}; the node stays Leaving",
                self.settings.left_marker.display()
            )));
            return;
        }
        self.core.set_own_status(Status::Left);
        if !self.announce_and_wait("announced Left").await {
            return;
        }
        self.finish(Ok("the node has left the ring and can be stopped".into()));
    }

    /// Starts removing `id`, a dead node, or says why not.
    pub fn start_remove(self: &Rc<Self>, id: NodeId) -> Result<(), String> {
        if self.state.get() == MovementState::Running {
            return Err(format!("a {} is running on this node", self.progress.borrow().kind));
        }
        let topology = self.topology().ok_or("the node is stopping")?;
        // The node itself may be Removing already (a removal that failed or whose runner
        // stopped is run again), and a join may be waiting for exactly this removal.
        one_movement_at_a_time(&topology, Some(id), true)?;
        // Removing: reads still go to the old replicas (the dead one does not answer; the
        // others do) and writes to old and new ones, until the copy is done.
        self.core.mark_removed(id, Status::Removing)?;
        self.begin("removenode");
        glommio::spawn_local(self.clone().remove(id)).detach();
        Ok(())
    }

    async fn remove(self: Rc<Self>, id: NodeId) {
        if !self.announce_and_wait(&format!("marked {:016x} Removing", id.0)).await {
            return;
        }
        let Some(topology) = self.topology() else { return };
        let (work, unstreamable, share) = remove_work(&topology, id, &self.alive());
        self.phase(format!(
            "copying {} ranges ({share:.3} of the ring) from the surviving replicas",
            work.len()
        ));
        if let Err(e) = self.copy_all(work).await {
            self.finish(Err(format!(
                "{e}; {:016x} stays Removing: run removenode again to retry",
                id.0
            )));
            return;
        }
        if let Err(e) = self.core.mark_removed(id, Status::Left) {
            self.finish(Err(format!("marking {:016x} Left: {e}", id.0)));
            return;
        }
        match unstreamable {
            0 => self.finish(Ok(format!("node {:016x} is removed", id.0))),
            n => self.finish(Err(format!(
                "node {:016x} is removed, but {n} ranges had no surviving replica to copy \
                 from (their data was only on it)",
                id.0
            ))),
        }
    }

    fn alive(&self) -> Vec<u64> {
        self.ctx.upgrade().map(|c| c.alive_nodes()).unwrap_or_default()
    }

    /// Copies every range of `work` to its target, from its first source that succeeds.
    async fn copy_all(&self, work: Vec<Work>) -> Result<(), String> {
        // Group by (target, first source): one pass over each source's shards per group.
        let mut queue: Vec<Vec<Work>> = group(work);
        self.progress.borrow_mut().streams_total = queue.len();
        self.progress.borrow_mut().streams_done = 0;
        while let Some(items) = queue.pop() {
            let Some((target, source)) =
                items.first().and_then(|w| w.sources.first().map(|s| (w.target, *s)))
            else {
                continue;
            };
            let ranges: Vec<TokenRange> = items.iter().map(|w| w.range).collect();
            match self.copy(source, target, &ranges).await {
                Ok(()) => self.progress.borrow_mut().streams_done += 1,
                Err(CopyError::Target(e)) => {
                    return Err(format!("applying on {:016x} failed: {e}", target.0))
                }
                Err(CopyError::Source(e)) => {
                    tracing::warn!(
                        source = format!("{:016x}", source.0),
                        target = format!("{:016x}", target.0),
                        "copying {} ranges failed: {e}",
                        ranges.len()
                    );
                    let rest: Vec<Work> = items
                        .into_iter()
                        .map(|mut w| {
                            w.sources =
                                w.sources.split_first().map_or_else(Vec::new, |(_, r)| r.to_vec());
                            w
                        })
                        .collect();
                    if rest.iter().any(|w| w.sources.is_empty()) {
                        return Err(format!(
                            "copying to {:016x}: no source left (last: {:016x}: {e})",
                            target.0, source.0
                        ));
                    }
                    let regrouped = group(rest);
                    {
                        let mut p = self.progress.borrow_mut();
                        p.streams_total += regrouped.len().saturating_sub(1);
                        p.fallbacks += ranges.len();
                    }
                    queue.extend(regrouped);
                }
            }
        }
        Ok(())
    }

    /// Copies `ranges` from `source` to `target`, shard by shard of the source. A failing
    /// request is retried (a busy shard answers `Overloaded`) before the copy fails, with the
    /// side that failed.
    async fn copy(
        &self,
        source: NodeId,
        target: NodeId,
        ranges: &[TokenRange],
    ) -> Result<(), CopyError> {
        let topology = self.topology().ok_or(CopyError::Source("the node is stopping".into()))?;
        let shards_of = |id: NodeId| {
            topology
                .nodes
                .iter()
                .find(|n| n.id == id.0)
                .map(|n| u16::try_from(n.shard_ports.len().max(1)).unwrap_or(u16::MAX))
                .ok_or_else(|| format!("node {:016x} is not in the topology", id.0))
        };
        let source_shards = shards_of(source).map_err(CopyError::Source)?;
        let target_shards = shards_of(target).map_err(CopyError::Target)?;
        let wire_ranges: Vec<(u64, u64)> = ranges.iter().map(|r| (r.start.0, r.end.0)).collect();
        for shard in 0..source_shards {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let req = StreamScanRequest {
                    shard,
                    ranges: wire_ranges.clone(),
                    after: after.clone(),
                    max_keys: PAGE_KEYS,
                    max_bytes: self.settings.page_bytes,
                };
                let body = msg::encode_body(&req)
                    .map_err(|e| CopyError::Source(format!("encoding: {e}")))?;
                let answer = self
                    .call_retrying(source, shard, Opcode::StreamScan, body)
                    .await
                    .map_err(CopyError::Source)?;
                let page: StreamScanResponse = msg::access::<ArchivedStreamScanResponse>(&answer)
                    .and_then(msg::to_owned)
                    .map_err(|e| {
                        CopyError::Source(format!("node {:016x} sent a bad page: {e}", source.0))
                    })?;
                self.apply(target, target_shards, page.entries).await.map_err(CopyError::Target)?;
                match page.next {
                    None => break,
                    Some(next) => {
                        if after.as_ref().is_some_and(|a| next <= *a) {
                            return Err(CopyError::Source(format!(
                                "node {:016x} shard {shard}: the scan did not advance",
                                source.0
                            )));
                        }
                        after = Some(next);
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies one page's versions on `target`, split by its shards.
    async fn apply(
        &self,
        target: NodeId,
        target_shards: u16,
        entries: Vec<StreamEntry>,
    ) -> Result<(), String> {
        let mut by_shard: BTreeMap<u16, Vec<StreamEntry>> = BTreeMap::new();
        for e in entries {
            let shard = shard_of(token_of(&e.key), target_shards).0;
            by_shard.entry(shard).or_default().push(e);
        }
        for (shard, entries) in by_shard {
            let count = entries.len() as u64;
            let bytes: u64 = entries
                .iter()
                .map(|e| (e.key.len() + e.value.as_ref().map_or(0, Vec::len)) as u64)
                .sum();
            let body = msg::encode_body(&StreamApplyRequest { shard, entries })
                .map_err(|e| format!("encoding: {e}"))?;
            self.call_retrying(target, shard, Opcode::StreamApply, body).await?;
            {
                let mut p = self.progress.borrow_mut();
                p.versions += count;
                p.bytes += bytes;
            }
            let wait_ms = self.pace.borrow_mut().take(bytes, wall_ms());
            if wait_ms > 0 && !self.sleep(Duration::from_millis(wait_ms)).await {
                return Err("the node is stopping".into());
            }
        }
        Ok(())
    }

    /// [`Self::call`], tried up to [`CALL_ATTEMPTS`] times with a growing pause between.
    async fn call_retrying(
        &self,
        node: NodeId,
        shard: u16,
        opcode: Opcode,
        body: Vec<u8>,
    ) -> Result<AlignedVec, String> {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.call(node, shard, opcode, body.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(e) if attempt >= CALL_ATTEMPTS => {
                    return Err(format!("{e} (after {attempt} attempts)"))
                }
                Err(e) => {
                    tracing::debug!(node = format!("{:016x}", node.0), "{opcode:?}: {e}; retrying");
                    if !self.sleep(pause).await {
                        return Err("the node is stopping".into());
                    }
                    pause = (pause * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
            }
        }
    }

    /// One stream request to `shard` of `node`: through this node's shard channels when it
    /// is this node, over the replica link otherwise.
    async fn call(
        &self,
        node: NodeId,
        shard: u16,
        opcode: Opcode,
        body: Vec<u8>,
    ) -> Result<AlignedVec, String> {
        if node == self.me {
            let ctx = self.ctx.upgrade().ok_or("the node is stopping")?;
            let mut aligned = AlignedVec::with_capacity(body.len());
            aligned.extend_from_slice(&body);
            ctx.call_shard(usize::from(shard), opcode, aligned, CALL_TIMEOUT).await
        } else {
            self.links.call(node, opcode, body, CALL_TIMEOUT).await
        }
    }
}

/// Groups work by (target, first source).
fn group(work: Vec<Work>) -> Vec<Vec<Work>> {
    let mut groups: BTreeMap<(u64, u64), Vec<Work>> = BTreeMap::new();
    for w in work {
        let first = w.sources.first().map_or(0, |s| s.0);
        groups.entry((w.target.0, first)).or_default().push(w);
    }
    groups.into_values().collect()
}

fn members(
    topology: &TopologyResponse,
    keep: impl Fn(&kvs_wire::msg::NodeInfo) -> bool,
) -> Vec<(NodeId, Vec<Token>)> {
    topology
        .nodes
        .iter()
        .filter(|n| keep(n))
        .map(|n| (NodeId(n.id), n.tokens.iter().map(|t| Token(*t)).collect()))
        .collect()
}

fn unavailable(topology: &TopologyResponse, alive: &[u64]) -> Vec<NodeId> {
    topology
        .nodes
        .iter()
        .filter(|n| alive.binary_search(&n.id).is_err())
        .map(|n| NodeId(n.id))
        .collect()
}

fn is_reader(n: &kvs_wire::msg::NodeInfo) -> bool {
    matches!(n.status, NodeStatus::Up | NodeStatus::Leaving)
}

/// The ids of the nodes reads use (Up and Leaving): a movement planned against one set and
/// finished against another plans again.
fn readers(topology: &TopologyResponse) -> Vec<u64> {
    topology.nodes.iter().filter(|n| is_reader(n)).map(|n| n.id).collect()
}

/// Refuses a decommission or removenode while another node (not `subject`) joins or leaves:
/// each plans against the ring as it is, and two plans at once could leave a range unstreamed.
/// With `joins_ok` (removenode) joining nodes do not count: a join plans against the nodes that
/// serve reads, which a removal changes only when it ends, and then the join plans again (it
/// may be waiting for the removal, when only the dead node held some of its ranges).
fn one_movement_at_a_time(
    topology: &TopologyResponse,
    subject: Option<NodeId>,
    joins_ok: bool,
) -> Result<(), String> {
    match topology.nodes.iter().find(|n| {
        Some(NodeId(n.id)) != subject
            && n.status != NodeStatus::Up
            && !(joins_ok && n.status == NodeStatus::Joining)
    }) {
        Some(n) => Err(format!(
            "node {:016x} is {:?}: one node joins or leaves at a time; wait for it",
            n.id, n.status
        )),
        None => Ok(()),
    }
}

/// What `me` copies to itself to join: the ranges it gains going from the ring of Up and
/// Leaving nodes to that ring plus itself; how many of them no live replica holds; and the
/// share of the ring it gains.
fn join_work(topology: &TopologyResponse, me: NodeId, alive: &[u64]) -> (Vec<Work>, usize, f64) {
    let old = members(topology, |n| n.id != me.0 && is_reader(n));
    if old.is_empty() {
        return (Vec::new(), 0, 0.0);
    }
    let mut new = old.clone();
    new.extend(members(topology, |n| n.id == me.0));
    let n = usize::from(topology.replication_factor.max(1));
    let mut down = unavailable(topology, alive);
    down.retain(|d| *d != me);
    let plan = movement::plan(&old, &new, n, &down);
    let work = work_of(&plan, |s| s.to == me);
    let unstreamable = plan.unstreamable.iter().filter(|(_, to)| *to == me).count();
    (work, unstreamable, plan.gained_share(me))
}

/// What `me` copies away to leave: every range that gains a replica going from the ring of
/// Up and Leaving nodes to that ring without `me`, from `me` first; and the share that moves.
fn leave_work(topology: &TopologyResponse, me: NodeId, alive: &[u64]) -> (Vec<Work>, f64) {
    let old = members(topology, is_reader);
    let new = members(topology, |n| n.id != me.0 && is_reader(n));
    let n = usize::from(topology.replication_factor.max(1));
    let mut down = unavailable(topology, alive);
    down.retain(|d| *d != me);
    let plan = movement::plan(&old, &new, n, &down);
    let mut work = work_of(&plan, |_| true);
    for w in &mut work {
        // This node holds every range it loses: send from here first.
        w.sources.retain(|x| *x != me);
        w.sources.insert(0, me);
    }
    (work, plan.changed_share)
}

/// What re-replicates the ranges of `dead`: every range that gains a replica going from the
/// ring of Up and Leaving nodes to that ring without `dead`, from surviving replicas; the
/// number of ranges no survivor holds; and the share that moves.
fn remove_work(
    topology: &TopologyResponse,
    dead: NodeId,
    alive: &[u64],
) -> (Vec<Work>, usize, f64) {
    let old = members(topology, is_reader);
    let new = members(topology, |n| n.id != dead.0 && is_reader(n));
    let n = usize::from(topology.replication_factor.max(1));
    let mut down = unavailable(topology, alive);
    if !down.contains(&dead) {
        down.push(dead);
    }
    let plan = movement::plan(&old, &new, n, &down);
    (work_of(&plan, |_| true), plan.unstreamable.len(), plan.changed_share)
}

/// The streams of `plan` that `keep` accepts, as work.
fn work_of(plan: &movement::MovePlan, keep: impl Fn(&movement::Stream) -> bool) -> Vec<Work> {
    plan.moves
        .iter()
        .flat_map(|m| {
            m.streams.iter().filter(|s| keep(s)).map(|s| Work {
                range: m.range,
                target: s.to,
                sources: s.from.clone(),
            })
        })
        .collect()
}

/// Writes the bootstrap marker (fsynced with its directory).
pub fn write_marker(path: &std::path::Path) -> std::io::Result<()> {
    let f = std::fs::File::create(path)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn remove_marker(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_wire::msg::NodeInfo;
    use kvs_wire::placement::vnode_tokens;

    fn topology(nodes: &[(u64, NodeStatus)]) -> TopologyResponse {
        TopologyResponse {
            version: 1,
            self_id: nodes[0].0,
            replication_factor: 3,
            nodes: nodes
                .iter()
                .map(|(id, status)| NodeInfo {
                    id: *id,
                    addr: format!("127.0.0.{id}:7000"),
                    shard_ports: vec![7001, 7002],
                    tokens: vnode_tokens(NodeId(*id), 32).into_iter().map(|t| t.0).collect(),
                    status: *status,
                })
                .collect(),
        }
    }

    #[test]
    fn a_joining_node_copies_what_it_gains_and_a_leaving_one_sends_from_itself() {
        use NodeStatus::*;
        let alive = [1, 2, 3, 4];
        let t = topology(&[(1, Up), (2, Up), (3, Up), (4, Joining)]);
        let (work, unstreamable, share) = join_work(&t, NodeId(4), &alive);
        assert_eq!(unstreamable, 0);
        assert!(!work.is_empty());
        assert!((0.6..0.9).contains(&share), "N=3 of 4 nodes: about 3/4, got {share}");
        assert!(work.iter().all(|w| w.target == NodeId(4) && !w.sources.contains(&NodeId(4))));
        // Nobody Up yet: nothing to copy.
        let t = topology(&[(1, Joining), (2, Joining)]);
        assert!(join_work(&t, NodeId(1), &[1, 2]).0.is_empty());
        // Every old replica down: nothing can be copied, and the join says so.
        let t = topology(&[(1, Up), (2, Up), (3, Up), (4, Joining)]);
        let (work, unstreamable, _) = join_work(&t, NodeId(4), &[4]);
        assert!(work.is_empty() && unstreamable > 0);
        // A decommission waits for another node's join; a removal does not.
        assert!(one_movement_at_a_time(&t, Some(NodeId(1)), false).is_err());
        assert!(one_movement_at_a_time(&t, Some(NodeId(4)), false).is_ok());
        assert!(one_movement_at_a_time(&t, Some(NodeId(1)), true).is_ok());
        // A removal run again: the node being removed shows as Leaving.
        let t = topology(&[(1, Up), (2, Up), (3, Leaving)]);
        assert!(one_movement_at_a_time(&t, Some(NodeId(3)), true).is_ok());
        assert!(one_movement_at_a_time(&t, Some(NodeId(2)), true).is_err());

        let t = topology(&[(1, Up), (2, Up), (3, Up), (4, Leaving)]);
        let (work, _) = leave_work(&t, NodeId(4), &alive);
        assert!(!work.is_empty());
        assert!(work.iter().all(|w| w.sources[0] == NodeId(4) && w.target != NodeId(4)));
    }

    #[test]
    fn removing_a_dead_node_never_reads_from_it() {
        use NodeStatus::*;
        let t = topology(&[(1, Up), (2, Up), (3, Up), (4, Up)]);
        let (work, unstreamable, share) = remove_work(&t, NodeId(4), &[1, 2, 3]);
        assert_eq!(unstreamable, 0);
        assert!(share > 0.5);
        assert!(work.iter().all(|w| !w.sources.is_empty() && !w.sources.contains(&NodeId(4))));
        assert!(work.iter().all(|w| w.target != NodeId(4)));
    }

    #[test]
    fn work_is_grouped_by_target_and_first_source() {
        let w = |t: u64, s: &[u64]| Work {
            range: TokenRange { start: Token(t), end: Token(t + 1) },
            target: NodeId(t),
            sources: s.iter().map(|x| NodeId(*x)).collect(),
        };
        let groups = group(vec![w(1, &[2, 3]), w(1, &[2, 4]), w(1, &[3]), w(2, &[3])]);
        assert_eq!(groups.len(), 3);
        assert!(groups.iter().any(|g| g.len() == 2));
    }
}
