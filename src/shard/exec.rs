//! Routing and execution of one request: validate the body, find the owning shard, and either
//! run it on this shard's engine or forward it.

use std::rc::Rc;

use kvs_shards::{Lookup, ShardError};
use kvs_wire::limits::TTL_MS_MAX;
use kvs_wire::msg::{
    self, AlignedVec, ArchivedDeleteRequest, ArchivedGetRequest, ArchivedPutRequest, GetResponse,
    Stamp, WriteResponse,
};
use kvs_wire::placement::{shard_of, token_of};
use kvs_wire::{ErrorCode, Opcode};

use super::conn::ConnOut;
use super::{bump, ExecutorCtx, ShardMsg};
use crate::cluster::hlc::wall_ms;

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

/// The key of a keyed request, and a Put's value and TTL, from one validated access of the
/// body.
struct Keyed<'a> {
    key: &'a [u8],
    value: &'a [u8],
    /// A Put's time to live in ms, 0 = never expires (0 for other opcodes); checked against
    /// [`TTL_MS_MAX`].
    ttl_ms: u64,
}

/// Validates a keyed request's body once and returns its key (and value); or the error to
/// answer with.
fn keyed(opcode: Opcode, body: &AlignedVec) -> Result<Keyed<'_>, (ErrorCode, String)> {
    let invalid =
        |e: msg::MsgError| (ErrorCode::InvalidRequest, format!("bad {opcode:?} body: {e}"));
    let keyed = match opcode {
        Opcode::Get => {
            let get = msg::access::<ArchivedGetRequest>(body).map_err(invalid)?;
            Keyed { key: get.key.as_slice(), value: &[], ttl_ms: 0 }
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
            Keyed { key: put.key.as_slice(), value: put.value.as_slice(), ttl_ms }
        }
        Opcode::Delete => {
            let delete = msg::access::<ArchivedDeleteRequest>(body).map_err(invalid)?;
            Keyed { key: delete.key.as_slice(), value: &[], ttl_ms: 0 }
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
        if let Err((code, message)) = self.try_execute(opcode, request_id, body, out).await {
            msg::write_error(out, request_id, code, message);
        }
    }

    async fn try_execute(
        &self,
        opcode: Opcode,
        request_id: u64,
        body: &AlignedVec,
        out: &mut Vec<u8>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(engine) = self.engine.as_ref() else {
            return Err((
                ErrorCode::Internal,
                "request reached an executor with no storage".into(),
            ));
        };
        let Keyed { key, value, ttl_ms } = keyed(opcode, body)?;
        let owner = shard_of(token_of(key), self.settings.shard_count);
        if usize::from(owner.0) != self.index {
            return Err((
                ErrorCode::Internal,
                format!("key routed to shard {} but owned by {}", self.index, owner.0),
            ));
        }
        self.check_key(key)?;
        let engine_err =
            |e: ShardError| (shard_error_code(&e), format!("shard {}: {e}", self.index));
        let encode_err =
            |e: msg::MsgError| (ErrorCode::Internal, format!("encoding response: {e}"));
        match opcode {
            Opcode::Get => {
                let response = match engine.get(key).await.map_err(engine_err)? {
                    Lookup::Found { value, stamp } => {
                        GetResponse { value: Some(value), stamp: Some(to_wire(stamp)) }
                    }
                    Lookup::Deleted { .. } | Lookup::Missing => {
                        GetResponse { value: None, stamp: None }
                    }
                };
                msg::write_frame(out, Opcode::Get, true, request_id, &response)
                    .map_err(encode_err)?;
            }
            Opcode::Put => {
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
                let stamp = self.stamp();
                // The expiry is absolute, by this node's wall clock (the engine judges it by
                // the same clock); `ttl_ms <= TTL_MS_MAX` keeps the sum far from overflow.
                let expires_at_ms = (ttl_ms > 0).then(|| wall_ms().saturating_add(ttl_ms));
                engine
                    .put_with_expiry(key, value, stamp, expires_at_ms)
                    .await
                    .map_err(engine_err)?;
                let response = WriteResponse { stamp: to_wire(stamp) };
                msg::write_frame(out, Opcode::Put, true, request_id, &response)
                    .map_err(encode_err)?;
            }
            Opcode::Delete => {
                let stamp = self.stamp();
                engine.delete(key, stamp).await.map_err(engine_err)?;
                let response = WriteResponse { stamp: to_wire(stamp) };
                msg::write_frame(out, Opcode::Delete, true, request_id, &response)
                    .map_err(encode_err)?;
            }
            other => {
                return Err((
                    ErrorCode::InvalidRequest,
                    format!("{other:?} is not a keyed request"),
                ))
            }
        }
        Ok(())
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
