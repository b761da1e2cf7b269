//! Routing and execution of one request: validate the body, find the owning shard, and either
//! run it on this shard's engine or forward it.
//!
//! The executing shard coordinates: it resolves the request's consistency to R or W, and runs
//! the request through a [`WriteTracker`] or [`ReadResolver`] over the key's replica set (see
//! the module docs of `shard` for why that set has only this node's replica reachable today).

use std::rc::Rc;

use std::future::Future;

use kvs_shards::{Lookup, ShardError};
use kvs_wire::limits::TTL_MS_MAX;
use kvs_wire::msg::{
    self, AlignedVec, ArchivedDeleteRequest, ArchivedGetRequest, ArchivedPutRequest, Consistency,
    ErrorDetail, GetResponse, Stamp, WriteResponse,
};
use kvs_wire::placement::{shard_of, token_of, NodeId};
use kvs_wire::{ErrorCode, Opcode};

use super::conn::ConnOut;
use super::{bump, ExecutorCtx, ShardMsg};
use crate::cluster::hlc::wall_ms;
use crate::cluster::quorum::{
    Access, ConsistencyError, QuorumFailure, ReadKind, ReadOutcome, ReadReply, ReadResolver,
    ReadStep, Versioned, WriteDecision, WriteTracker,
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

/// A local engine lookup as a replica's read reply.
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
        let owner = match keyed(opcode, &body).and_then(|k| self.check_key(k.key).map(|()| k.key)) {
            Ok(key) => usize::from(shard_of(token_of(key), self.settings.shard_count).0),
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
        let needed =
            self.quorum.required(consistency, access).map_err(|e| consistency_refusal(&e))?;
        let replicas = self.replica_set(token);
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
                self.write_quorum(
                    tracker,
                    engine.put_with_expiry(key, value, stamp, expires_at_ms),
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
                self.write_quorum(tracker, engine.delete(key, stamp)).await?;
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

    /// Runs a write through `tracker`: the local replica applies it with `apply` (when it is a
    /// target), and the tracker decides. When the write fails with nothing acknowledged and the
    /// local replica said why (`Overloaded`, `TooLarge`, an I/O error), that is the answer: it
    /// is more precise than a count.
    async fn write_quorum(
        &self,
        mut tracker: WriteTracker,
        apply: impl Future<Output = Result<(), ShardError>>,
    ) -> Result<(), Refusal> {
        let me = NodeId(self.settings.node_id);
        let mut local_error = None;
        let mut decision = tracker.decision();
        if tracker.targets().any(|n| n == me) {
            decision = match apply.await {
                Ok(()) => tracker.on_ack(me),
                Err(e) => {
                    local_error = Some(e);
                    tracker.on_failure(me)
                }
            };
        }
        // Remote replicas join with the fan-out: they ack here, and `tracker.missed()` becomes
        // their hints. Today the local replica is the only target, so its answer decides.
        match decision {
            WriteDecision::Success => Ok(()),
            WriteDecision::Failed(f) => match local_error {
                Some(e) if tracker.acknowledged() == 0 => Err(self.engine_refusal(&e)),
                _ => Err(quorum_refusal(f, Access::Write)),
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

    /// Runs a read through `resolver`: the local replica answers what it is asked (full data,
    /// as the first replica), and the resolver picks the newest version. Errors as in
    /// [`Self::write_quorum`].
    async fn read_quorum(
        &self,
        mut resolver: ReadResolver,
        key: &[u8],
    ) -> Result<ReadOutcome, Refusal> {
        let Some(engine) = self.engine.as_ref() else {
            return Err(Refusal::from((
                ErrorCode::Internal,
                "read reached an executor with no storage".to_string(),
            )));
        };
        let me = NodeId(self.settings.node_id);
        let mut local_error = None;
        let mut step = ReadStep::Pending;
        for (node, kind) in resolver.targets() {
            if node != me {
                continue;
            }
            step = match engine.get(key).await {
                Ok(lookup) => resolver.on_reply(me, read_reply(lookup, kind)),
                Err(e) => {
                    local_error = Some(e);
                    resolver.on_failure(me)
                }
            };
        }
        // With remote replicas (the fan-out), `NeedData` asks them for full data and the
        // outcome's `stale` replicas get read repair.
        match step {
            ReadStep::Resolved => resolver.into_outcome().ok_or_else(|| {
                Refusal::from((ErrorCode::Internal, "resolved read has no outcome".to_string()))
            }),
            ReadStep::Failed(f) => match local_error {
                Some(e) => Err(self.engine_refusal(&e)),
                None => Err(quorum_refusal(f, Access::Read)),
            },
            ReadStep::Pending | ReadStep::NeedData(_) => Err(Refusal::from((
                ErrorCode::Internal,
                format!(
                    "read of r = {} undecided with no replica left to ask",
                    resolver.needed().get()
                ),
            ))),
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), (ErrorCode, String)> {
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
