//! # kvs-wire: the contract between nodes and clients
//!
//! This crate is what a client and a node must agree on, byte for byte:
//!
//! - [`frame`]: the frame header (magic, protocol version, opcode, request id, body length) and
//!   the codec that cuts a byte stream into frames, telling `Incomplete` from `Invalid`.
//! - [`msg`]: the request and response bodies as rkyv archives. Bodies are always accessed with
//!   validation ([`msg::access`]); a body from a socket is never trusted.
//! - [`peer`]: node-to-node bodies: authenticated gossip (Syn, Ack, Ack2) and the cluster
//!   status an operator reads.
//! - [`error`]: the stable [`ErrorCode`]s every failure maps to, with a readable message.
//! - [`limits`]: the protocol's hard bounds (frame size) and the configurable defaults
//!   (key and value size) that servers enforce.
//! - [`placement`]: the stable token hash, the vnode ring, replica sets and `shard_of`, so a client
//!   places a key exactly as a node does.
//! - `client` (behind the default `client` feature): the shard-aware client on glommio.
//!
//! Everything except `client` is runtime-free: it can be unit-tested and fuzzed without a node.
//!
//! ## Format
//! A frame is a 24-byte header followed by `body_len` bytes of body:
//!
//! ```text
//! offset size field
//!  0     4    magic       0x4B56_5331 ("KVS1"), little endian
//!  4     2    version     protocol version, currently 4 (2 added `PutRequest::ttl_ms`, 3 the
//!                         request consistency and `ErrorResponse::detail`, 4 the node status
//!                         in the topology and the topology epoch); no other is read
//!  6     1    opcode      see frame::Opcode (responses set bit 0x80)
//!  7     1    flags       reserved, must be 0
//!  8     8    request_id  chosen by the client, echoed in the response
//! 16     4    body_len    bytes of body that follow, at most limits::FRAME_BODY_BYTES_MAX
//! 20     4    epoch       requests: 0. Responses: the answering node's topology epoch
//!                         (frame::topology_epoch_of), or 0; a client whose topology has
//!                         another epoch fetches it again
//! 24     ..   body        an rkyv archive of the message for the opcode (see msg; empty for
//!                         Ping, and for Topology and Stats requests)
//! ```
//! All integers are little endian. A request and its response carry the same request id; a
//! connection may have many requests in flight and responses may come back in any order.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::host_endian_bytes
    )
)]

pub mod error;
pub mod frame;
pub mod limits;
pub mod msg;
pub mod peer;
pub mod placement;

#[cfg(feature = "client")]
pub mod client;

pub use error::ErrorCode;
pub use frame::{FrameError, FrameHeader, Opcode};
