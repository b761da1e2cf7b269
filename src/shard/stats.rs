//! Stats requests: the executor a Stats request lands on (any shard, or the cluster core on the
//! node-level port) gathers every shard's counters over the in-node channels and answers with
//! one [`StatsResponse`].
//!
//! ## Flow
//! ```text
//! client ─ Stats ─> executor X ── ShardMsg::StatsRequest { from: X, corr } ──> shard i (i != X)
//!                       │  <──── ShardMsg::StatsReply { corr, shard: i, counters } ──┘
//!                       └─ its own counters when X is a shard; waits at most
//!                          STATS_GATHER_TIMEOUT for the replies, then answers
//! ```
//! A shard's counters are its engine's `EngineStats::counters()` followed by its executor's
//! request counters ([`EXECUTOR_COUNTER_NAMES`]).
//!
//! ## Invariants
//! - The wait is bounded: a shard that does not answer within [`STATS_GATHER_TIMEOUT`], or whose
//!   channel is full (the request is not queued, as for forwarded requests), is listed in
//!   `missing` instead of holding the request. A reply that comes later is dropped.
//! - The response always passes `StatsResponse::check`: counters are cut to the protocol's
//!   bounds and each name appears once per shard.
//! - A Stats request has an empty body; anything else is refused with `InvalidRequest`.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use kvs_wire::limits::{STATS_COUNTERS_PER_SHARD_MAX, STATS_COUNTER_NAME_BYTES_MAX};
use kvs_wire::msg::{self, Counter, ShardStats, StatsResponse};
use kvs_wire::{ErrorCode, Opcode};

use super::notify::Notify;
use super::{bump, ExecutorCtx, ShardMsg};

/// How long the gathering executor waits for the other shards' replies. Below the client's
/// default request timeout (5 s), so a slow shard shows up as missing rather than as a timeout.
pub const STATS_GATHER_TIMEOUT: Duration = Duration::from_millis(1000);

/// Names of the executor's request counters, in the order [`ExecutorCtx::shard_counters`]
/// appends them after the engine's.
pub const EXECUTOR_COUNTER_NAMES: [&str; 7] = [
    "requests_served_local",
    "requests_forwarded_out",
    "requests_served_for_peers",
    "requests_overloaded",
    "connections_accepted",
    "frames_invalid",
    "read_repairs",
];

/// One Stats request being gathered: a slot per shard, filled by replies.
pub(super) struct Gather {
    slots: RefCell<Vec<Option<Vec<Counter>>>>,
    /// Replies still expected (requests sent and not yet answered).
    waiting: Cell<usize>,
    /// Notified on every reply.
    replied: Notify,
}

impl Gather {
    fn new(shards: usize) -> Gather {
        Gather {
            slots: RefCell::new((0..shards).map(|_| None).collect()),
            waiting: Cell::new(0),
            replied: Notify::default(),
        }
    }

    /// Stores shard `shard`'s counters, once; a second reply for the same shard is ignored.
    pub(super) fn fill(&self, shard: usize, counters: Vec<(String, u64)>) {
        let mut slots = self.slots.borrow_mut();
        if let Some(slot @ None) = slots.get_mut(shard) {
            *slot = Some(to_wire_counters(counters));
            self.waiting.set(self.waiting.get().saturating_sub(1));
            self.replied.notify();
        }
    }

    /// The response: the shards filled so far, the others missing. Empties the slots.
    fn take_response(&self, node_id: u64) -> StatsResponse {
        let slots = self.slots.take();
        let shard_count = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        let mut shards = Vec::with_capacity(slots.len());
        let mut missing = Vec::new();
        for (shard, slot) in (0u32..).zip(slots) {
            match slot {
                Some(counters) => shards.push(ShardStats { shard, counters }),
                None => missing.push(shard),
            }
        }
        StatsResponse { node_id, shard_count, shards, missing }
    }
}

/// Named counters in wire form, within the protocol's bounds: names too long or seen before
/// are dropped, and at most `STATS_COUNTERS_PER_SHARD_MAX` are kept.
fn to_wire_counters(counters: Vec<(String, u64)>) -> Vec<Counter> {
    let mut seen = HashSet::with_capacity(counters.len());
    let mut out = Vec::with_capacity(counters.len().min(STATS_COUNTERS_PER_SHARD_MAX));
    for (name, value) in counters {
        debug_assert!(name.len() <= STATS_COUNTER_NAME_BYTES_MAX, "counter name {name:?}");
        if out.len() == STATS_COUNTERS_PER_SHARD_MAX {
            break;
        }
        if name.len() <= STATS_COUNTER_NAME_BYTES_MAX && seen.insert(name.clone()) {
            out.push(Counter { name, value });
        }
    }
    out
}

impl ExecutorCtx {
    /// This shard's counters: the engine's, then the executor's. `None` on the cluster core.
    pub(super) fn shard_counters(&self) -> Option<Vec<(String, u64)>> {
        let engine = self.engine.as_ref()?;
        let mut out = engine.stats().counters();
        let c = &self.counters;
        let values = [
            c.served_local.get(),
            c.forwarded_out.get(),
            c.served_for_peers.get(),
            c.overloaded.get(),
            c.connections.get(),
            c.invalid_frames.get(),
            c.read_repairs.get(),
        ];
        out.extend(EXECUTOR_COUNTER_NAMES.iter().zip(values).map(|(n, v)| (n.to_string(), v)));
        Some(out)
    }

    /// Answers a peer's [`ShardMsg::StatsRequest`] with this shard's counters.
    pub(super) fn answer_stats(self: &Rc<Self>, from: usize, corr: u64) {
        let shard = u32::try_from(self.index).unwrap_or(u32::MAX);
        let counters = self.shard_counters().unwrap_or_default();
        let ctx = self.clone();
        glommio::spawn_local(async move {
            if let Some(Some(peer)) = ctx.peers.get(from) {
                // The peer's receiver never blocks on us, so awaiting room cannot deadlock.
                let _ = peer.send(ShardMsg::StatsReply { corr, shard, counters }).await;
            }
        })
        .detach();
    }

    /// Records a [`ShardMsg::StatsReply`]; a reply for a gather that ended is dropped.
    pub(super) fn on_stats_reply(&self, corr: u64, shard: u32, counters: Vec<(String, u64)>) {
        let gather = self.gathers.borrow().get(&corr).cloned();
        if let Some(gather) = gather {
            gather.fill(shard as usize, counters);
        }
    }

    /// Answers a Stats request: validates the body, gathers every shard's counters (bounded by
    /// [`STATS_GATHER_TIMEOUT`]) and returns the whole response frame.
    pub(super) async fn gather_stats(self: &Rc<Self>, request_id: u64, body_len: usize) -> Vec<u8> {
        let mut frame = Vec::new();
        if body_len != 0 {
            bump(&self.counters.invalid_frames);
            msg::write_error(
                &mut frame,
                request_id,
                ErrorCode::InvalidRequest,
                format!("a Stats request has an empty body, got {body_len} bytes"),
            );
            return frame;
        }
        let shards = usize::from(self.settings.shard_count);
        let corr = self.next_corr.get();
        self.next_corr.set(corr.wrapping_add(1));
        let gather = Rc::new(Gather::new(shards));
        self.gathers.borrow_mut().insert(corr, gather.clone());
        for shard in 0..shards {
            if shard == self.index {
                if let Some(counters) = self.shard_counters() {
                    gather.waiting.set(gather.waiting.get() + 1);
                    gather.fill(shard, counters);
                }
                continue;
            }
            let Some(Some(peer)) = self.peers.get(shard) else { continue };
            match peer.try_send(ShardMsg::StatsRequest { from: self.index, corr }) {
                Ok(()) => gather.waiting.set(gather.waiting.get() + 1),
                Err(_) => bump(&self.counters.overloaded),
            }
        }
        let all = async {
            while gather.waiting.get() > 0 {
                gather.replied.wait().await;
            }
            Ok(())
        };
        if glommio::timer::timeout(STATS_GATHER_TIMEOUT, all).await.is_err() {
            tracing::warn!(
                executor = self.index,
                waiting = gather.waiting.get(),
                "stats: some shards did not answer in time; reporting them as missing"
            );
        }
        self.gathers.borrow_mut().remove(&corr);
        let response = gather.take_response(self.settings.node_id);
        debug_assert_eq!(response.check(), Ok(()));
        if let Err(e) = msg::write_frame(&mut frame, Opcode::Stats, true, request_id, &response) {
            frame.clear();
            msg::write_error(
                &mut frame,
                request_id,
                ErrorCode::Internal,
                format!("encoding stats: {e}"),
            );
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_counters_keep_bounds_and_unique_names() {
        let mut input: Vec<(String, u64)> =
            vec![("puts".into(), 1), ("puts".into(), 2), ("gets".into(), 3)];
        let wire = to_wire_counters(input.clone());
        assert_eq!(
            wire,
            vec![
                Counter { name: "puts".into(), value: 1 },
                Counter { name: "gets".into(), value: 3 }
            ]
        );
        input = (0..STATS_COUNTERS_PER_SHARD_MAX + 5).map(|i| (format!("c{i}"), 0)).collect();
        assert_eq!(to_wire_counters(input).len(), STATS_COUNTERS_PER_SHARD_MAX);
    }

    #[test]
    fn gather_reports_unanswered_shards_as_missing() {
        let g = Gather::new(3);
        g.waiting.set(2);
        g.fill(2, vec![("puts".into(), 5)]);
        g.fill(2, vec![("puts".into(), 9)]);
        g.fill(7, vec![]);
        assert_eq!(g.waiting.get(), 1);
        let r = g.take_response(42);
        assert_eq!((r.node_id, r.shard_count, r.missing.clone()), (42, 3, vec![0, 1]));
        assert_eq!(r.shards.len(), 1);
        assert_eq!(r.shards[0].counters, vec![Counter { name: "puts".into(), value: 5 }]);
        assert_eq!(r.check(), Ok(()));
    }
}
