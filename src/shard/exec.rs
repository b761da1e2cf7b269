//! Routing and execution of one request: validate the body, find the owning shard, and either
//! run it on this shard's engine or forward it.
//!
//! The executing shard coordinates: it resolves the request's consistency to R or W, and runs
//! the request through a [`WriteTracker`] or [`ReadResolver`] over the key's replica set: the
//! local replica through the engine, remote ones through the cluster core (see [`super::replica`]).
//! After a read resolves, the replicas it found stale get the newest version written back
//! (read repair) without delaying the answer.

use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kvs_shards::{Lookup, ShardError};
use kvs_wire::limits::TTL_MS_MAX;
use kvs_wire::msg::{
    self, AlignedVec, ArchivedDeleteRequest, ArchivedGetRequest, ArchivedPutRequest, Consistency,
    ErrorDetail, GetResponse, Stamp, WriteResponse,
};
use kvs_wire::placement::{shard_of, token_of, NodeId};
use kvs_wire::{ErrorCode, Opcode};

use super::conn::ConnOut;
use super::replica::{self, ReplicaAnswer, ReplicaInbox};
use super::{bump, ExecutorCtx, ShardMsg};
use crate::cluster::hlc::wall_ms;
use crate::cluster::quorum::{
    Access, ConsistencyError, QuorumFailure, ReadKind, ReadOutcome, ReadReply, ReadResolver,
    ReadStep, Replica, Required, Versioned, WriteDecision, WriteTracker,
};

/// The one mapping from engine errors to wire error codes.
pub fn shard_error_code(e: &ShardError) -> ErrorCode {
    match e {
        ShardError::Closed => ErrorCode::Unavailable,
        ShardError::Overloaded { .. } => ErrorCode::Overloaded,
        ShardError::KeyTooLarge { .. } | ShardError::ValueTooLarge { .. } => ErrorCode::TooLarge,
        ShardError::EmptyKey => ErrorCode::InvalidRequest,
        _ => ErrorCode::Internal,
    }
}

fn to_wire(s: kvs_shards::Stamp) -> Stamp {
    Stamp { hlc: s.hlc, node: s.node }
}

/// Why a request is answered with an error: its code, the replica counts of an `Unavailable`
/// or `Timeout`, and a readable message.
struct Refusal {
    code: ErrorCode,
    detail: ErrorDetail,
    message: String,
}

impl From<(ErrorCode, String)> for Refusal {
    fn from((code, message): (ErrorCode, String)) -> Refusal {
        Refusal { code, detail: ErrorDetail::None, message }
    }
}

/// The mapping of a consistency the node cannot serve at any health: `InvalidRequest`.
fn consistency_refusal(e: &ConsistencyError) -> Refusal {
    Refusal::from((ErrorCode::InvalidRequest, e.to_string()))
}

/// The mapping of too few replicas: `Unavailable` or `Timeout`, with the counts.
fn quorum_refusal(f: QuorumFailure, access: Access) -> Refusal {
    let letter = access.letter();
    let (code, message) = match f {
        QuorumFailure::Unavailable { needed, .. } => {
            (ErrorCode::Unavailable, format!("too few replicas alive for {letter} = {needed}"))
        }
        QuorumFailure::Timeout { needed, .. } => (
            ErrorCode::Timeout,
            format!("too few replicas answered in time for {letter} = {needed}"),
        ),
    };
    Refusal { code, detail: f.detail(), message }
}

/// `r` with the replicas' reasons for failing appended to its message (at most a few).
fn with_reasons(mut r: Refusal, reasons: &[String]) -> Refusal {
    if !reasons.is_empty() {
        let shown: Vec<&str> = reasons.iter().take(3).map(String::as_str).collect();
        r.message = format!("{}: {}", r.message, shown.join("; "));
    }
    r
}

/// A local engine lookup as a replica's read reply.
/// W for a write with `extra` pending replicas (a node joining or leaving gains the range):
/// W + extra, so that the acknowledgements include W of the replicas before the move and W
/// of those after it (Cassandra's rule); capped at the `total` the write set holds (then every
/// replica must acknowledge; when the ring before the move had fewer than W nodes), never
/// below W.
fn pending_needed(needed: Required, extra: usize, total: usize) -> Required {
    if extra == 0 {
        return needed;
    }
    let want = usize::from(needed.get()).saturating_add(extra).min(total);
    let want = u8::try_from(want).unwrap_or(u8::MAX).max(needed.get());
    Required::new(want).unwrap_or(needed)
}

fn read_reply(lookup: Lookup, kind: ReadKind) -> ReadReply {
    let version = match lookup {
        Lookup::Found { value, stamp } => {
            Some(Versioned { stamp: to_wire(stamp), value: Some(value) })
        }
        Lookup::Deleted { stamp } => Some(Versioned { stamp: to_wire(stamp), value: None }),
        Lookup::Missing => None,
    };
    match kind {
        ReadKind::Data => ReadReply::Data(version),
        ReadKind::Digest => ReadReply::Digest(version.map(|v| v.stamp)),
    }
}

/// The key of a keyed request, and a Put's value and TTL, from one validated access of the
/// body.
struct Keyed<'a> {
    key: &'a [u8],
    value: &'a [u8],
    /// A Put's time to live in ms, 0 = never expires (0 for other opcodes); checked against
    /// [`TTL_MS_MAX`].
    ttl_ms: u64,
    /// R of a Get, W of a Put or Delete, not yet checked against N.
    consistency: Consistency,
}

/// Validates a keyed request's body once and returns its key (and value); or the error to
/// answer with.
fn keyed(opcode: Opcode, body: &AlignedVec) -> Result<Keyed<'_>, (ErrorCode, String)> {
    let invalid =
        |e: msg::MsgError| (ErrorCode::InvalidRequest, format!("bad {opcode:?} body: {e}"));
    let keyed = match opcode {
        Opcode::Get => {
            let get = msg::access::<ArchivedGetRequest>(body).map_err(invalid)?;
            Keyed {
                key: get.key.as_slice(),
                value: &[],
                ttl_ms: 0,
                consistency: get.consistency.to_native(),
            }
        }
        Opcode::Put => {
            let put = msg::access::<ArchivedPutRequest>(body).map_err(invalid)?;
            let ttl_ms = put.ttl_ms.to_native();
            if ttl_ms > TTL_MS_MAX {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!(
                        "ttl_ms {ttl_ms} exceeds the maximum TTL of {TTL_MS_MAX} ms (10 years)"
                    ),
                ));
            }
            Keyed {
                key: put.key.as_slice(),
                value: put.value.as_slice(),
                ttl_ms,
                consistency: put.consistency.to_native(),
            }
        }
        Opcode::Delete => {
            let delete = msg::access::<ArchivedDeleteRequest>(body).map_err(invalid)?;
            Keyed {
                key: delete.key.as_slice(),
                value: &[],
                ttl_ms: 0,
                consistency: delete.consistency.to_native(),
            }
        }
        _ => return Err((ErrorCode::InvalidRequest, format!("{opcode:?} carries no key"))),
    };
    Ok(keyed)
}

impl ExecutorCtx {
    /// Routes a keyed request (Get, Put, Delete) that a client sent to this executor: executes it
    /// here when this shard owns the key, otherwise forwards it. The answer goes to `conn`, and
    /// `conn.finish_one()` is called once it has.
    pub(super) fn route(
        self: &Rc<Self>,
        opcode: Opcode,
        request_id: u64,
        body: AlignedVec,
        conn: Rc<ConnOut>,
    ) {
        let route = if replica::is_replica_opcode(opcode) {
            replica::replica_route(opcode, &body)
        } else {
            keyed(opcode, &body).map(|k| replica::ReplicaRoute::Key(k.key))
        };
        let owner = match route.and_then(|r| match r {
            replica::ReplicaRoute::Key(k) => self
                .check_key(k)
                .map(|()| usize::from(shard_of(token_of(k), self.settings.shard_count).0)),
            replica::ReplicaRoute::Shard(s) if s < self.settings.shard_count => Ok(usize::from(s)),
            replica::ReplicaRoute::Shard(s) => Err((
                ErrorCode::InvalidRequest,
                format!("shard {s} does not exist (this node has {})", self.settings.shard_count),
            )),
        }) {
            Ok(owner) => owner,
            Err((code, message)) => {
                bump(&self.counters.invalid_frames);
                conn.push_error(request_id, code, message);
                conn.finish_one();
                return;
            }
        };
        if owner == self.index && self.engine.is_some() {
            bump(&self.counters.served_local);
            let ctx = self.clone();
            glommio::spawn_local(async move {
                let mut frame = Vec::new();
                ctx.execute_local(opcode, request_id, &body, &mut frame).await;
                conn.push_frame(&frame);
                conn.finish_one();
            })
            .detach();
            return;
        }
        let Some(Some(peer)) = self.peers.get(owner) else {
            conn.push_error(request_id, ErrorCode::Internal, format!("no route to shard {owner}"));
            conn.finish_one();
            return;
        };
        let corr = self.next_corr.get();
        self.next_corr.set(corr.wrapping_add(1));
        let msg = ShardMsg::Request { from: self.index, corr, request_id, opcode, body };
        match peer.try_send(msg) {
            Ok(()) => {
                bump(&self.counters.forwarded_out);
                self.pending.borrow_mut().insert(corr, conn);
            }
            Err(_) => {
                bump(&self.counters.overloaded);
                conn.push_error(
                    request_id,
                    ErrorCode::Overloaded,
                    format!("shard {owner} queue is full; retry later"),
                );
                conn.finish_one();
            }
        }
    }

    /// Executes a keyed request on this shard's engine and appends the response frame to `out`.
    pub(super) async fn execute_local(
        &self,
        opcode: Opcode,
        request_id: u64,
        body: &AlignedVec,
        out: &mut Vec<u8>,
    ) {
        if replica::is_replica_opcode(opcode) {
            self.execute_replica(opcode, request_id, body, out).await;
            return;
        }
        if let Err(r) = self.try_execute(opcode, request_id, body, out).await {
            msg::write_error_detail(out, request_id, r.code, r.detail, r.message);
        }
    }

    async fn try_execute(
        &self,
        opcode: Opcode,
        request_id: u64,
        body: &AlignedVec,
        out: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        let Some(engine) = self.engine.as_ref() else {
            return Err(Refusal::from((
                ErrorCode::Internal,
                "request reached an executor with no storage".into(),
            )));
        };
        let Keyed { key, value, ttl_ms, consistency } = keyed(opcode, body)?;
        let token = token_of(key);
        let owner = shard_of(token, self.settings.shard_count);
        if usize::from(owner.0) != self.index {
            return Err(Refusal::from((
                ErrorCode::Internal,
                format!("key routed to shard {} but owned by {}", self.index, owner.0),
            )));
        }
        self.check_key(key)?;
        let encode_err = |e: msg::MsgError| {
            Refusal::from((ErrorCode::Internal, format!("encoding response: {e}")))
        };
        let access = if opcode == Opcode::Get { Access::Read } else { Access::Write };
        let needed = self
            .placement()
            .quorum
            .required(consistency, access)
            .map_err(|e| consistency_refusal(&e))?;
        let (replicas, needed) = if access == Access::Read {
            (self.replica_set(token), needed)
        } else {
            let (replicas, extra) = self.write_replica_set(token);
            let needed = pending_needed(needed, extra, replicas.len());
            (replicas, needed)
        };
        match opcode {
            Opcode::Get => {
                let resolver =
                    ReadResolver::new(&replicas, needed).map_err(|f| quorum_refusal(f, access))?;
                // A tombstone or nothing reads as missing; the value moves, uncopied.
                let response = match self.read_quorum(resolver, key).await?.newest {
                    Some(Versioned { stamp, value: Some(value) }) => {
                        GetResponse { value: Some(value), stamp: Some(stamp) }
                    }
                    Some(Versioned { value: None, .. }) | None => {
                        GetResponse { value: None, stamp: None }
                    }
                };
                msg::write_frame(out, Opcode::Get, true, request_id, &response)
                    .map_err(encode_err)?;
            }
            Opcode::Put => {
                if value.len() > self.settings.value_bytes_max as usize {
                    return Err(Refusal::from((
                        ErrorCode::TooLarge,
                        format!(
                            "value of {} bytes exceeds value_bytes_max {}",
                            value.len(),
                            self.settings.value_bytes_max
                        ),
                    )));
                }
                let tracker =
                    WriteTracker::new(&replicas, needed).map_err(|f| quorum_refusal(f, access))?;
                let stamp = self.stamp();
                // The expiry is absolute, by this node's wall clock (the engine judges it by
                // the same clock); `ttl_ms <= TTL_MS_MAX` keeps the sum far from overflow.
                let expires_at_ms = (ttl_ms > 0).then(|| wall_ms().saturating_add(ttl_ms));
                // The copy for peers is archived only when some replica is remote.
                let remote = if self.has_remote(&replicas) {
                    replica::write_body(key, Some(value), to_wire(stamp), expires_at_ms)
                        .map_err(encode_err)?
                } else {
                    Vec::new()
                };
                self.hint_down(&replicas, &remote);
                self.write_quorum(
                    tracker,
                    engine.put_with_expiry(key, value, stamp, expires_at_ms),
                    remote,
                )
                .await?;
                let response = WriteResponse { stamp: to_wire(stamp) };
                msg::write_frame(out, Opcode::Put, true, request_id, &response)
                    .map_err(encode_err)?;
            }
            Opcode::Delete => {
                let tracker =
                    WriteTracker::new(&replicas, needed).map_err(|f| quorum_refusal(f, access))?;
                let stamp = self.stamp();
                let remote = if self.has_remote(&replicas) {
                    replica::write_body(key, None, to_wire(stamp), None).map_err(encode_err)?
                } else {
                    Vec::new()
                };
                self.hint_down(&replicas, &remote);
                self.write_quorum(tracker, engine.delete(key, stamp), remote).await?;
                let response = WriteResponse { stamp: to_wire(stamp) };
                msg::write_frame(out, Opcode::Delete, true, request_id, &response)
                    .map_err(encode_err)?;
            }
            other => {
                return Err(Refusal::from((
                    ErrorCode::InvalidRequest,
                    format!("{other:?} is not a keyed request"),
                )))
            }
        }
        Ok(())
    }

    /// An engine error as the answer to a request.
    fn engine_refusal(&self, e: &ShardError) -> Refusal {
        Refusal::from((shard_error_code(e), format!("shard {}: {e}", self.index)))
    }

    /// Runs a write through `tracker`: the remote replicas get `remote` (an archived
    /// `ReplicaWrite` body) through the cluster core, the local replica applies it with
    /// `apply` (when it is a target), and the tracker decides as answers arrive, within
    /// `replica_timeout_ms`. When the write fails with nothing acknowledged and the local
    /// replica said why (`Overloaded`, `TooLarge`, an I/O error), that is the answer: it is
    /// more precise than a count.
    async fn write_quorum(
        &self,
        mut tracker: WriteTracker,
        apply: impl Future<Output = Result<(), ShardError>>,
        remote: Vec<u8>,
    ) -> Result<(), Refusal> {
        let me = NodeId(self.settings.node_id);
        let deadline = Instant::now() + Duration::from_millis(self.settings.replica_timeout_ms);
        let inbox = Rc::new(ReplicaInbox::default());
        let remote_targets: Vec<NodeId> = tracker.targets().filter(|n| *n != me).collect();
        let mut corrs = Vec::with_capacity(remote_targets.len());
        for node in remote_targets {
            corrs.push(self.send_replica(&inbox, node, Opcode::ReplicaWrite, remote.clone()));
        }
        let mut local_error = None;
        let mut failures: Vec<String> = Vec::new();
        let mut decision = tracker.decision();
        if tracker.targets().any(|n| n == me) {
            decision = match apply.await {
                Ok(()) => tracker.on_ack(me),
                Err(e) => {
                    failures.push(format!("node {:016x}: {e}", me.0));
                    local_error = Some(e);
                    tracker.on_failure(me)
                }
            };
        }
        while decision == WriteDecision::Pending {
            for (node, answer) in inbox.drain() {
                decision = match answer {
                    ReplicaAnswer::Ack => tracker.on_ack(node),
                    ReplicaAnswer::Failed(why) => {
                        failures.push(why);
                        tracker.on_failure(node)
                    }
                    ReplicaAnswer::Read(_) => tracker.on_failure(node),
                };
            }
            if decision == WriteDecision::Pending && !inbox.wait_until(deadline).await {
                decision = tracker.on_timeout();
                // Name the replicas that stayed silent: the reasons so far are only from
                // those that failed, which may not be the ones that cost the quorum.
                for node in tracker.timed_out() {
                    failures.push(format!(
                        "node {:016x}: no answer within replica_timeout_ms ({} ms)",
                        node.0, self.settings.replica_timeout_ms
                    ));
                }
            }
        }
        self.forget_replicas(&corrs);
        match decision {
            WriteDecision::Success => Ok(()),
            WriteDecision::Failed(f) => match local_error {
                Some(e) if tracker.acknowledged() == 0 && failures.len() <= 1 => {
                    Err(self.engine_refusal(&e))
                }
                _ => Err(with_reasons(quorum_refusal(f, Access::Write), &failures)),
            },
            WriteDecision::Pending => Err(Refusal::from((
                ErrorCode::Internal,
                format!(
                    "write undecided with {} of {} acknowledged and no replica left to ask",
                    tracker.acknowledged(),
                    tracker.needed().get()
                ),
            ))),
        }
    }

    /// Whether any of `replicas` is another node.
    fn has_remote(&self, replicas: &[Replica]) -> bool {
        replicas.iter().any(|r| r.node.0 != self.settings.node_id)
    }

    /// Hands the write in `remote` to the cluster core as a hint for every replica that is down
    /// (not asked); dropped when its channel is full (read repair catches those up).
    fn hint_down(&self, replicas: &[Replica], remote: &[u8]) {
        let core = usize::from(self.settings.shard_count);
        let topology = self.topology();
        // A node that has left (written to only while others may still read from it) gets
        // no hints.
        let in_ring = |r: &&Replica| topology.nodes.iter().any(|n| n.id == r.node.0);
        for r in replicas.iter().filter(|r| !r.alive).filter(in_ring) {
            if let Some(Some(peer)) = self.peers.get(core) {
                let msg = ShardMsg::Hint { target: r.node, body: remote.to_vec() };
                if peer.try_send(msg).is_err() {
                    bump(&self.counters.overloaded);
                }
            }
        }
    }

    /// Asks `node` for `kind` of `key`: the local engine at once (its reply goes into the
    /// inbox), a remote node through the cluster core. Returns the corr to forget, if any.
    async fn ask_read(
        &self,
        inbox: &Rc<ReplicaInbox>,
        node: NodeId,
        kind: ReadKind,
        key: &[u8],
    ) -> Result<Option<u64>, Refusal> {
        let me = NodeId(self.settings.node_id);
        if node == me {
            let Some(engine) = self.engine.as_ref() else {
                return Err(Refusal::from((
                    ErrorCode::Internal,
                    "read reached an executor with no storage".to_string(),
                )));
            };
            match engine.get(key).await {
                Ok(lookup) => inbox.push_local(me, ReplicaAnswer::Read(read_reply(lookup, kind))),
                Err(e) => return Err(self.engine_refusal(&e)),
            }
            return Ok(None);
        }
        let body = replica::read_body(key, kind).map_err(|e| {
            Refusal::from((ErrorCode::Internal, format!("encoding replica read: {e}")))
        })?;
        Ok(Some(self.send_replica(inbox, node, Opcode::ReplicaRead, body)))
    }

    /// Runs a read through `resolver`: this node answers what it is asked through its engine
    /// (full data, as the first replica), remote replicas through the cluster core; the
    /// resolver picks the newest version, asks for full data where a digest was newer, and
    /// names the stale replicas, which get read repair. A local engine error is the answer.
    async fn read_quorum(
        &self,
        mut resolver: ReadResolver,
        key: &[u8],
    ) -> Result<ReadOutcome, Refusal> {
        let deadline = Instant::now() + Duration::from_millis(self.settings.replica_timeout_ms);
        let inbox = Rc::new(ReplicaInbox::default());
        let me = NodeId(self.settings.node_id);
        let mut corrs = Vec::new();
        let mut targets = resolver.targets();
        // Remote requests first, so they travel while the local engine reads.
        targets.sort_by_key(|(n, _)| *n == me);
        let mut failures: Vec<String> = Vec::new();
        let mut step: ReadStep;
        let mut asked = targets;
        // What each replica was last asked for, to ask a spare for the same.
        let mut kinds: Vec<(NodeId, ReadKind)> = Vec::with_capacity(asked.len());
        'read: loop {
            for (node, kind) in std::mem::take(&mut asked) {
                kinds.retain(|(n, _)| *n != node);
                kinds.push((node, kind));
                match self.ask_read(&inbox, node, kind, key).await {
                    Ok(corr) => corrs.extend(corr),
                    Err(r) => {
                        self.forget_replicas(&corrs);
                        return Err(r);
                    }
                }
            }
            for (node, answer) in inbox.drain() {
                step = match answer {
                    ReplicaAnswer::Read(reply) => resolver.on_reply(node, reply),
                    ReplicaAnswer::Failed(why) => {
                        failures.push(why);
                        // An alive replica the read did not ask takes the failed one's place.
                        let kind = kinds
                            .iter()
                            .find(|(n, _)| *n == node)
                            .map_or(ReadKind::Digest, |(_, k)| *k);
                        if let Some(spare) = resolver.replace_with_spare(node, kind) {
                            asked.push((spare, kind));
                        }
                        resolver.on_failure(node)
                    }
                    ReplicaAnswer::Ack => resolver.on_failure(node),
                };
                match &step {
                    ReadStep::NeedData(nodes) => {
                        asked.extend(nodes.iter().map(|n| (*n, ReadKind::Data)));
                    }
                    ReadStep::Resolved | ReadStep::Failed(_) => break 'read,
                    ReadStep::Pending => {}
                }
            }
            if !asked.is_empty() {
                continue;
            }
            if !inbox.wait_until(deadline).await {
                step = resolver.on_timeout();
                for node in resolver.timed_out() {
                    failures.push(format!(
                        "node {:016x}: no answer within replica_timeout_ms ({} ms)",
                        node.0, self.settings.replica_timeout_ms
                    ));
                }
                if !matches!(step, ReadStep::Pending | ReadStep::NeedData(_)) {
                    break;
                }
            }
        }
        self.forget_replicas(&corrs);
        match step {
            ReadStep::Resolved => {
                let outcome = resolver.into_outcome().ok_or_else(|| {
                    Refusal::from((ErrorCode::Internal, "resolved read has no outcome".to_string()))
                })?;
                self.repair(key, &outcome);
                Ok(outcome)
            }
            ReadStep::Failed(f) => Err(with_reasons(quorum_refusal(f, Access::Read), &failures)),
            ReadStep::Pending | ReadStep::NeedData(_) => Err(Refusal::from((
                ErrorCode::Internal,
                format!(
                    "read of r = {} undecided with no replica left to ask",
                    resolver.needed().get()
                ),
            ))),
        }
    }

    /// Read repair: writes the newest version back to the replicas the read found stale, with
    /// its stamp, in the background. The engine keeps the greatest stamp, so a repair that
    /// races a newer write does no harm. The expiry of a TTL'd value is not known to a read, so
    /// a repaired copy of one carries none (it expires elsewhere, and compaction resolves it).
    fn repair(&self, key: &[u8], outcome: &ReadOutcome) {
        let Some(newest) = outcome.newest.as_ref() else { return };
        if outcome.stale.is_empty() {
            return;
        }
        let me = NodeId(self.settings.node_id);
        let Ok(body) = replica::write_body(key, newest.value.as_deref(), newest.stamp, None) else {
            return;
        };
        for node in &outcome.stale {
            bump(&self.counters.read_repairs);
            if *node == me {
                if let Some(engine) = self.engine.clone() {
                    let (key, value) = (key.to_vec(), newest.value.clone());
                    let stamp =
                        kvs_shards::Stamp { hlc: newest.stamp.hlc, node: newest.stamp.node };
                    glommio::spawn_local(async move {
                        let _ = match value {
                            Some(v) => engine.put(&key, &v, stamp).await,
                            None => engine.delete(&key, stamp).await,
                        };
                    })
                    .detach();
                }
            } else {
                self.send_replica_unanswered(*node, Opcode::ReplicaWrite, body.clone());
            }
        }
    }

    pub(super) fn check_key(&self, key: &[u8]) -> Result<(), (ErrorCode, String)> {
        if key.is_empty() {
            return Err((ErrorCode::InvalidRequest, "empty key".into()));
        }
        if key.len() > self.settings.key_bytes_max as usize {
            return Err((
                ErrorCode::TooLarge,
                format!(
                    "key of {} bytes exceeds key_bytes_max {}",
                    key.len(),
                    self.settings.key_bytes_max
                ),
            ));
        }
        Ok(())
    }

    /// A fresh version for a write coordinated here.
    fn stamp(&self) -> kvs_shards::Stamp {
        let hlc = self.hlc.borrow_mut().tick(wall_ms());
        kvs_shards::Stamp { hlc, node: self.settings.node_id }
    }
}
