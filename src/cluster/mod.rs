//! Cluster logic as plain state machines: no glommio, no sockets, no clock reads.
//!
//! Each machine takes messages, the current time (`now_ms`, any monotonic milliseconds) and,
//! where it chooses at random, a seeded RNG as arguments, and returns decisions or messages for
//! the caller to carry. So a deterministic test can drive a thousand of them in one process
//! (`tests/gossip_sim.rs`), and the glommio tasks around them ([`crate::transport`]) only
//! move bytes.
//!
//! # Parts
//! - [`hlc`]: the hybrid logical clock that stamps writes.
//! - [`phi`]: phi-accrual failure detection: per peer, a bounded window of heartbeat
//!   inter-arrival times and `phi(now)` under a normal model (why normal: see the module).
//! - [`quorum`]: one request's consistency: the replica count it needs, a write's
//!   acknowledgements ([`quorum::WriteTracker`]) and a read's replies resolved to the newest
//!   version with the stale replicas named ([`quorum::ReadResolver`]).
//! - [`gossip`]: membership: node states merged by `(generation, version)`, Cassandra's three-way
//!   push-pull exchange with `fanout` random live peers per round, and each observer's local
//!   Alive/Suspect/Down verdict from [`phi`].
//! - [`hints`]: hinted handoff decisions (window, cap, age, replay order and pacing) and the
//!   hint record codec; `crate::transport::hint_log` stores and replays them.
//! - [`movement`]: which token ranges change replicas when the ring changes, who streams each
//!   to whom, and the write set (old and new replicas) while a move is in progress.
//!
//! # Wired into the node
//! The cluster core of every node runs one [`gossip::Membership`] through
//! [`crate::transport::GossipCore`]: authenticated Syn/Ack/Ack2 over TCP on the node port
//! (format in `kvs_wire::peer`), and a topology rebuilt from the membership (Joining and Up
//! nodes) whenever its version grows, published to every shard. `kvs status` and `kvs ring`
//! read the membership through the `ClusterStatus` opcode.
//!
//! The shards run every request through [`quorum`] over the key's replica set, counting as
//! alive the nodes the cluster core's failure detector holds alive (published to every shard
//! each round); remote copies travel over `crate::transport::replica` links.
//!
//! # Not yet
//! A node announces Up at once (no streaming at join, so Joining is unused), there is no
//! decommission (Leaving, Left) or removal of a dead node, and Left nodes are never
//! forgotten. Merkle trees (anti-entropy) join a later increment. Hinted handoff runs on the
//! cluster core (`crate::transport::replica` stores failed replica writes through
//! `crate::transport::hint_log` and replays them when a target is alive again); a node's
//! "down since" is when its cluster core first saw it not alive (not gossiped).

pub mod gossip;
pub mod hints;
pub mod hlc;
pub mod movement;
pub mod phi;
pub mod quorum;

/// An options struct of this module failed `validate()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    #[error("invalid cluster option {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}
