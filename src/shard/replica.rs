//! The shard's side of replication: a coordinator's requests to remote replicas and their
//! answers, and the execution of replica requests that peers sent to this shard.
//!
//! A coordinating shard sends each remote copy to the cluster core as a
//! [`ShardMsg::ReplicaOut`] with a fresh `corr` and records `corr -> (node, inbox)` in
//! `replica_waits`; the cluster core answers with [`ShardMsg::ReplicaReply`], which lands in the
//! request's [`ReplicaInbox`]. The coordinator drains the inbox into its `WriteTracker` or
//! `ReadResolver` and waits (at most `replica_timeout_ms`) while they are undecided; once it
//! answers, it forgets its `corr`s, so late replies are dropped. A replica request that cannot
//! be handed to the cluster core (its channel is full) fails at once: no unbounded buffer.
//!
//! A replica request from a peer arrives at this shard as a forwarded request with the
//! `ReplicaWrite` or `ReplicaRead` opcode; [`ExecutorCtx::execute_replica`] validates it and
//! applies it with the coordinator's stamp (the engine keeps the greatest stamp, so replays and
//! reordering do no harm).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use kvs_shards::memtable::Entry;
use kvs_shards::{Engine, Lookup};
use kvs_wire::msg::{self, AlignedVec, Stamp};
use kvs_wire::peer::{
    ArchivedReplicaReadRequest, ArchivedReplicaWriteRequest, ArchivedStreamApplyRequest,
    ArchivedStreamScanRequest, ReplicaReadRequest, ReplicaReadResponse, ReplicaVersion,
    ReplicaWriteRequest, StreamEntry, StreamScanResponse, STREAM_PAGE_BYTES_MAX,
    STREAM_PAGE_KEYS_MAX, STREAM_RANGES_MAX,
};
use kvs_wire::placement::{shard_of, token_of, NodeId, Token};
use kvs_wire::{ErrorCode, Opcode};

use super::notify::Notify;
use super::{ExecutorCtx, ShardMsg};
use crate::cluster::movement::{RangeSet, TokenRange};
use crate::cluster::quorum::{ReadKind, ReadReply, Versioned};

/// A remote replica's answer, as the cluster core reports it.
#[derive(Debug)]
pub enum ReplicaAnswer {
    /// The write was applied.
    Ack,
    /// The read's reply.
    Read(ReadReply),
    /// Not applied or not answered; why (names the node).
    Failed(String),
}

/// The answers of one request's remote replicas, as they arrive.
#[derive(Default)]
pub struct ReplicaInbox {
    items: RefCell<Vec<(NodeId, ReplicaAnswer)>>,
    notify: Notify,
}

impl ReplicaInbox {
    /// Takes every answer that has arrived.
    pub fn drain(&self) -> Vec<(NodeId, ReplicaAnswer)> {
        std::mem::take(&mut *self.items.borrow_mut())
    }

    /// Adds the local replica's answer.
    pub fn push_local(&self, node: NodeId, answer: ReplicaAnswer) {
        self.push(node, answer);
    }

    fn push(&self, node: NodeId, answer: ReplicaAnswer) {
        self.items.borrow_mut().push((node, answer));
        self.notify.notify();
    }

    /// Waits for the next answer until `deadline`; false when the deadline passed first.
    pub async fn wait_until(&self, deadline: Instant) -> bool {
        if !self.items.borrow().is_empty() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        futures_lite::future::or(
            async {
                self.notify.wait().await;
                true
            },
            async {
                glommio::timer::sleep(left).await;
                false
            },
        )
        .await
    }
}

/// The archived body of a replica write (no frame header).
pub fn write_body(
    key: &[u8],
    value: Option<&[u8]>,
    stamp: Stamp,
    expires_at_ms: Option<u64>,
) -> Result<Vec<u8>, msg::MsgError> {
    let req = ReplicaWriteRequest {
        key: key.to_vec(),
        value: value.map(<[u8]>::to_vec),
        stamp,
        expires_at_ms: expires_at_ms.unwrap_or(0),
    };
    msg::encode_body(&req)
}

/// The archived body of a replica read (no frame header).
pub fn read_body(key: &[u8], kind: ReadKind) -> Result<Vec<u8>, msg::MsgError> {
    let req = ReplicaReadRequest { key: key.to_vec(), digest: kind == ReadKind::Digest };
    msg::encode_body(&req)
}

/// A validated replica read response as the resolver's reply; `digest` tells which was asked.
pub fn read_reply_of(version: ReplicaVersion, digest: bool) -> Result<ReadReply, String> {
    let reply = match (version, digest) {
        (ReplicaVersion::Digest { stamp }, true) => ReadReply::Digest(stamp),
        (ReplicaVersion::Missing, false) => ReadReply::Data(None),
        (ReplicaVersion::Value { stamp, value }, false) => {
            ReadReply::Data(Some(Versioned { stamp, value: Some(value) }))
        }
        (ReplicaVersion::Tombstone { stamp }, false) => {
            ReadReply::Data(Some(Versioned { stamp, value: None }))
        }
        (v, digest) => {
            return Err(format!("a {} read was answered with {v:?}", kind_name(digest)));
        }
    };
    Ok(reply)
}

fn kind_name(digest: bool) -> &'static str {
    if digest {
        "digest"
    } else {
        "data"
    }
}

impl ExecutorCtx {
    /// Hands a replica request for `node` to the cluster core; its answer will land in `inbox`
    /// (at once, as a failure, when the cluster core's channel is full). Returns the corr to
    /// forget when the request is done.
    pub(super) fn send_replica(
        &self,
        inbox: &Rc<ReplicaInbox>,
        node: NodeId,
        opcode: Opcode,
        body: Vec<u8>,
    ) -> u64 {
        let corr = self.next_corr.get();
        self.next_corr.set(corr.wrapping_add(1).max(1));
        let core = usize::from(self.settings.shard_count);
        let msg = ShardMsg::ReplicaOut { from: self.index, corr, target: node, opcode, body };
        let sent = match self.peers.get(core) {
            Some(Some(peer)) => peer.try_send(msg).is_ok(),
            _ => false,
        };
        if sent {
            self.replica_waits.borrow_mut().insert(corr, (node, inbox.clone()));
        } else {
            super::bump(&self.counters.overloaded);
            inbox.push(
                node,
                ReplicaAnswer::Failed(format!(
                    "shard {}: the queue to the cluster core is full; node {:016x} not asked",
                    self.index, node.0
                )),
            );
        }
        corr
    }

    /// Sends a replica request that wants no answer (read repair); dropped when the cluster
    /// core's channel is full.
    pub(super) fn send_replica_unanswered(&self, node: NodeId, opcode: Opcode, body: Vec<u8>) {
        let core = usize::from(self.settings.shard_count);
        let msg = ShardMsg::ReplicaOut { from: self.index, corr: 0, target: node, opcode, body };
        if let Some(Some(peer)) = self.peers.get(core) {
            if peer.try_send(msg).is_err() {
                super::bump(&self.counters.overloaded);
            }
        }
    }

    /// Stops waiting for the answers of `corrs`.
    pub(super) fn forget_replicas(&self, corrs: &[u64]) {
        let mut waits = self.replica_waits.borrow_mut();
        for c in corrs {
            waits.remove(c);
        }
    }

    /// An answer from the cluster core: into the inbox of the request still waiting for it.
    pub(super) fn on_replica_reply(&self, corr: u64, answer: ReplicaAnswer) {
        let wait = self.replica_waits.borrow_mut().remove(&corr);
        if let Some((node, inbox)) = wait {
            inbox.push(node, answer);
        }
    }

    /// Executes a replica request a peer sent (forwarded here by the cluster core) and appends
    /// the response frame to `out`.
    pub(super) async fn execute_replica(
        &self,
        opcode: Opcode,
        request_id: u64,
        body: &AlignedVec,
        out: &mut Vec<u8>,
    ) {
        if let Err((code, message)) = self.try_execute_replica(opcode, request_id, body, out).await
        {
            msg::write_error(out, request_id, code, message);
        }
    }

    async fn try_execute_replica(
        &self,
        opcode: Opcode,
        request_id: u64,
        body: &AlignedVec,
        out: &mut Vec<u8>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(engine) = self.engine.as_ref() else {
            return Err((ErrorCode::Internal, "replica request reached no storage".into()));
        };
        match opcode {
            Opcode::StreamScan => return self.stream_scan(engine, request_id, body, out).await,
            Opcode::StreamApply => return self.stream_apply(engine, request_id, body, out).await,
            _ => {}
        }
        let key = replica_key(opcode, body)?;
        self.check_key(key)?;
        let owner = shard_of(token_of(key), self.settings.shard_count);
        if usize::from(owner.0) != self.index {
            return Err((
                ErrorCode::Internal,
                format!("replica key routed to shard {} but owned by {}", self.index, owner.0),
            ));
        }
        let engine_err = |e: kvs_shards::ShardError| {
            (super::shard_error_code(&e), format!("shard {}: {e}", self.index))
        };
        match opcode {
            Opcode::ReplicaWrite => {
                let req = msg::access::<ArchivedReplicaWriteRequest>(body)
                    .map_err(|e| (ErrorCode::InvalidRequest, format!("bad ReplicaWrite: {e}")))?;
                let stamp = kvs_shards::Stamp {
                    hlc: req.stamp.hlc.to_native(),
                    node: req.stamp.node.to_native(),
                };
                // Later local stamps must sort after the coordinator's.
                self.hlc.borrow_mut().observe(stamp.hlc);
                match req.value.as_ref() {
                    Some(value) => {
                        let value = value.as_slice();
                        if value.len() > self.settings.value_bytes_max as usize {
                            return Err((
                                ErrorCode::TooLarge,
                                format!(
                                    "value of {} bytes exceeds value_bytes_max {}",
                                    value.len(),
                                    self.settings.value_bytes_max
                                ),
                            ));
                        }
                        let expires = req.expires_at_ms.to_native();
                        let expires = (expires > 0).then_some(expires);
                        engine
                            .put_with_expiry(key, value, stamp, expires)
                            .await
                            .map_err(engine_err)?;
                    }
                    None => engine.delete(key, stamp).await.map_err(engine_err)?,
                }
                msg::write_empty_frame(out, Opcode::ReplicaWrite, true, request_id);
            }
            Opcode::ReplicaRead => {
                let req = msg::access::<ArchivedReplicaReadRequest>(body)
                    .map_err(|e| (ErrorCode::InvalidRequest, format!("bad ReplicaRead: {e}")))?;
                let digest = req.digest;
                let lookup = engine.get(key).await.map_err(engine_err)?;
                let wire = |s: kvs_shards::Stamp| Stamp { hlc: s.hlc, node: s.node };
                let version = match (lookup, digest) {
                    (Lookup::Found { stamp, .. } | Lookup::Deleted { stamp }, true) => {
                        ReplicaVersion::Digest { stamp: Some(wire(stamp)) }
                    }
                    (Lookup::Missing, true) => ReplicaVersion::Digest { stamp: None },
                    (Lookup::Found { value, stamp }, false) => {
                        ReplicaVersion::Value { stamp: wire(stamp), value }
                    }
                    (Lookup::Deleted { stamp }, false) => {
                        ReplicaVersion::Tombstone { stamp: wire(stamp) }
                    }
                    (Lookup::Missing, false) => ReplicaVersion::Missing,
                };
                msg::write_frame(
                    out,
                    Opcode::ReplicaRead,
                    true,
                    request_id,
                    &ReplicaReadResponse { version },
                )
                .map_err(|e| (ErrorCode::Internal, format!("encoding replica read: {e}")))?;
            }
            other => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("{other:?} is not a replica request"),
                ))
            }
        }
        Ok(())
    }
}

impl ExecutorCtx {
    fn check_stream_shard(&self, shard: u16) -> Result<(), (ErrorCode, String)> {
        if usize::from(shard) != self.index {
            return Err((
                ErrorCode::Internal,
                format!("stream request for shard {shard} reached shard {}", self.index),
            ));
        }
        Ok(())
    }

    /// One page of this shard's versions in the request's token ranges.
    async fn stream_scan(
        &self,
        engine: &Engine,
        request_id: u64,
        body: &AlignedVec,
        out: &mut Vec<u8>,
    ) -> Result<(), (ErrorCode, String)> {
        let req = msg::access::<ArchivedStreamScanRequest>(body)
            .map_err(|e| (ErrorCode::InvalidRequest, format!("bad StreamScan: {e}")))?;
        self.check_stream_shard(req.shard.to_native())?;
        if req.ranges.len() > STREAM_RANGES_MAX {
            return Err((
                ErrorCode::InvalidRequest,
                format!("{} ranges in one scan (at most {STREAM_RANGES_MAX})", req.ranges.len()),
            ));
        }
        let ranges =
            RangeSet::new(req.ranges.iter().map(|r| TokenRange {
                start: Token(r.0.to_native()),
                end: Token(r.1.to_native()),
            }));
        let max_keys = req.max_keys.to_native().clamp(1, STREAM_PAGE_KEYS_MAX) as usize;
        let max_bytes = req.max_bytes.to_native().clamp(1, STREAM_PAGE_BYTES_MAX) as usize;
        let keep = |key: &[u8]| ranges.contains(token_of(key));
        let page = engine
            .scan_page(req.after.as_ref().map(|a| a.as_slice()), &keep, max_keys, max_bytes)
            .await
            .map_err(|e| (super::shard_error_code(&e), format!("shard {}: {e}", self.index)))?;
        // The engine's page may hold more than `max_keys` or `max_bytes` (it merges several
        // sources): cut it before the entry that would pass either (never before the first,
        // so a version larger than the page still travels), resuming after the last one kept.
        // A page is then at most `max_bytes` of keys and values, or one version, which keeps
        // every StreamApply made of it under the peer frame bound.
        let mut entries: Vec<StreamEntry> = Vec::with_capacity(page.entries.len().min(max_keys));
        let mut bytes = 0usize;
        let mut next = page.next;
        for (key, entry) in page.entries {
            let size = key.len() + entry_value_len(&entry);
            if !entries.is_empty() && (entries.len() >= max_keys || bytes + size > max_bytes) {
                next = entries.last().map(|e| e.key.clone());
                break;
            }
            bytes += size;
            entries.push(stream_entry(key, entry));
        }
        let response = StreamScanResponse { entries, next, examined: page.examined };
        msg::write_frame(out, Opcode::StreamScan, true, request_id, &response)
            .map_err(|e| (ErrorCode::Internal, format!("encoding a stream page: {e}")))
    }

    /// Applies streamed versions on this shard; the engine keeps the greatest stamp of each
    /// key, so a streamed version never hides a newer write.
    async fn stream_apply(
        &self,
        engine: &Rc<Engine>,
        request_id: u64,
        body: &AlignedVec,
        out: &mut Vec<u8>,
    ) -> Result<(), (ErrorCode, String)> {
        let req = msg::access::<ArchivedStreamApplyRequest>(body)
            .map_err(|e| (ErrorCode::InvalidRequest, format!("bad StreamApply: {e}")))?;
        self.check_stream_shard(req.shard.to_native())?;
        // Check everything before applying anything.
        for e in req.entries.iter() {
            let key = e.key.as_slice();
            self.check_key(key)?;
            if usize::from(shard_of(token_of(key), self.settings.shard_count).0) != self.index {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("a streamed key belongs to another shard than {}", self.index),
                ));
            }
            if e.value.as_ref().is_some_and(|v| v.len() > self.settings.value_bytes_max as usize) {
                return Err((
                    ErrorCode::TooLarge,
                    format!(
                        "a streamed value exceeds value_bytes_max {}",
                        self.settings.value_bytes_max
                    ),
                ));
            }
        }
        // Every write is submitted at once so group commit batches them.
        let mut tasks = Vec::with_capacity(req.entries.len());
        for e in req.entries.iter() {
            let stamp =
                kvs_shards::Stamp { hlc: e.stamp.hlc.to_native(), node: e.stamp.node.to_native() };
            self.hlc.borrow_mut().observe(stamp.hlc);
            let key = e.key.as_slice().to_vec();
            let value = e.value.as_ref().map(|v| v.as_slice().to_vec());
            let expires = e.expires_at_ms.to_native();
            let expires = (expires > 0).then_some(expires);
            let engine = engine.clone();
            tasks.push(glommio::spawn_local(async move {
                match value {
                    Some(v) => engine.put_with_expiry(&key, &v, stamp, expires).await,
                    None => engine.delete(&key, stamp).await,
                }
            }));
        }
        for t in tasks {
            t.await.map_err(|e| {
                (
                    super::shard_error_code(&e),
                    format!("shard {}: applying a stream: {e}", self.index),
                )
            })?;
        }
        msg::write_empty_frame(out, Opcode::StreamApply, true, request_id);
        Ok(())
    }
}

fn entry_value_len(entry: &Entry) -> usize {
    match entry {
        Entry::Value { value, .. } => value.len(),
        Entry::Tombstone { .. } => 0,
    }
}

/// A stored version as streamed.
fn stream_entry(key: Vec<u8>, entry: Entry) -> StreamEntry {
    let wire = |s: kvs_shards::Stamp| Stamp { hlc: s.hlc, node: s.node };
    match entry {
        Entry::Value { value, stamp, expires_at_ms } => StreamEntry {
            key,
            value: Some(value),
            stamp: wire(stamp),
            expires_at_ms: expires_at_ms.unwrap_or(0),
        },
        Entry::Tombstone { stamp } => {
            StreamEntry { key, value: None, stamp: wire(stamp), expires_at_ms: 0 }
        }
    }
}

/// Whether `opcode` is a replica request (keyed, or a stream request for one shard).
pub fn is_replica_opcode(opcode: Opcode) -> bool {
    matches!(
        opcode,
        Opcode::ReplicaWrite | Opcode::ReplicaRead | Opcode::StreamScan | Opcode::StreamApply
    )
}

/// Where a replica request goes on this node.
pub enum ReplicaRoute<'a> {
    /// To the shard that owns this key.
    Key(&'a [u8]),
    /// To this shard (stream requests name it).
    Shard(u16),
}

/// The route of a replica request, from one validated access of its body.
pub fn replica_route(
    opcode: Opcode,
    body: &AlignedVec,
) -> Result<ReplicaRoute<'_>, (ErrorCode, String)> {
    let invalid = |e: msg::MsgError| (ErrorCode::InvalidRequest, format!("bad {opcode:?}: {e}"));
    match opcode {
        Opcode::StreamScan => Ok(ReplicaRoute::Shard(
            msg::access::<ArchivedStreamScanRequest>(body).map_err(invalid)?.shard.to_native(),
        )),
        Opcode::StreamApply => Ok(ReplicaRoute::Shard(
            msg::access::<ArchivedStreamApplyRequest>(body).map_err(invalid)?.shard.to_native(),
        )),
        _ => replica_key(opcode, body).map(ReplicaRoute::Key),
    }
}

/// The key of a replica request, from one validated access of its body.
pub fn replica_key(opcode: Opcode, body: &AlignedVec) -> Result<&[u8], (ErrorCode, String)> {
    let invalid = |e: msg::MsgError| (ErrorCode::InvalidRequest, format!("bad {opcode:?}: {e}"));
    match opcode {
        Opcode::ReplicaWrite => {
            Ok(msg::access::<ArchivedReplicaWriteRequest>(body).map_err(invalid)?.key.as_slice())
        }
        Opcode::ReplicaRead => {
            Ok(msg::access::<ArchivedReplicaReadRequest>(body).map_err(invalid)?.key.as_slice())
        }
        other => Err((ErrorCode::InvalidRequest, format!("{other:?} is not a replica request"))),
    }
}
