//! Cluster logic as plain state machines: no glommio, no sockets, no clock reads.
//!
//! Each machine takes messages and the current time as arguments and returns decisions, so a
//! deterministic test can drive many of them in one process. For the single-node skeleton only
//! the hybrid logical clock lives here; membership, phi accrual, quorum bookkeeping, hints and
//! Merkle trees join it in the cluster issue.

pub mod hlc;
