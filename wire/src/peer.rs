//! Node-to-node messages: gossip (Syn, Ack, Ack2) and the operator's cluster status.
//!
//! Gossip travels on a node's node-level port (its `--listen` address) in ordinary frames
//! ([`crate::frame`]) with their own opcodes; a new opcode is not a protocol version change
//! (see [`crate::msg`]).
//!
//! | opcode        | request body       | response body                                  |
//! |---------------|--------------------|------------------------------------------------|
//! | GossipSyn     | [`PeerEnvelope`] of [`GossipBody::Syn`]  | [`PeerEnvelope`] of [`GossipBody::Ack`] |
//! | GossipAck2    | [`PeerEnvelope`] of [`GossipBody::Ack2`] | empty                       |
//! | ClusterStatus | empty              | [`ClusterStatusResponse`]                      |
//! | PeerHello     | [`PeerHello`] Hello or Proof | [`PeerHello`] Challenge, or empty (Proof) |
//! | ReplicaWrite  | [`ReplicaWriteRequest`] | empty                                     |
//! | ReplicaRead   | [`ReplicaReadRequest`]  | [`ReplicaReadResponse`]                   |
//! | StreamScan    | [`StreamScanRequest`]   | [`StreamScanResponse`]                    |
//! | StreamApply   | [`StreamApplyRequest`]  | empty                                     |
//! | Decommission  | [`AdminRequest`]        | empty (started; progress in ClusterStatus) |
//! | RemoveNode    | [`AdminRequest`]        | empty (started; progress in ClusterStatus) |
//!
//! ## Streaming
//! When the ring changes, the nodes that gain a token range copy its data from a node that
//! holds it, over the same authenticated replica links: `StreamScan` asks one shard of the
//! source for a page of its keys whose tokens lie in a list of ranges (after a cursor key),
//! and `StreamApply` hands a batch of versions to one shard of the receiver, which keeps each
//! one only if it is newer than what it holds (the stamp decides, as for replica writes).
//! Pages are bounded by [`STREAM_PAGE_KEYS_MAX`] keys and [`STREAM_PAGE_BYTES_MAX`] bytes.
//!
//! ## Replica links
//! Replica copies travel between cluster cores on one long-lived, pipelined connection per
//! peer, authenticated once rather than per message: the connecting node sends
//! [`PeerHello::Hello`] (cluster name, its id, a random nonce `nc`); the listener answers
//! [`PeerHello::Challenge`] (its id, its nonce `ns`, and the tag [`hello_mac`] over both
//! nonces and both ids as the listener); the connecting node checks that tag (so it knows
//! the listener holds the cluster key) and sends [`PeerHello::Proof`], the same tag made as
//! the connector, which the listener checks before it reads any replica request on that
//! connection. Fresh nonces on both sides mean a recorded handshake cannot be replayed. A
//! connection that sends a replica request before its proof verified is refused with an
//! `InvalidRequest` error naming the reason, and closed. The requests themselves carry no
//! tag: the link is as trustworthy as the TCP connection (no encryption, as for gossip).
//!
//! A refused exchange (another cluster, a wrong secret, a malformed body) is answered with an
//! `Error` frame (`InvalidRequest`) whose message says why.
//!
//! ## Authentication
//! Every gossip message, request and response, is a [`PeerEnvelope`]: the cluster name, the
//! sender's node id, a random per-message nonce, the archived [`GossipBody`] as bytes, and a
//! 128-bit tag. The tag is SipHash-2-4-128 ([`mac`]) keyed with a 128-bit key derived from the
//! cluster secret ([`ClusterKey::derive`]) over a domain tag, the opcode and direction, the
//! cluster name, the sender id, the nonce and the body bytes. SipHash was designed as a MAC
//! for short messages; its 128-bit key is the security level, so the secret should carry at
//! least 128 bits of entropy (for example 32 random hex digits). The receiver checks the
//! cluster name and the tag *before* it parses the body, so a stranger's bytes reach no
//! parser beyond the envelope's. A gossip body may exceed the client frame bound and must be
//! read before it can be checked: a node buffers at most 32 MiB of such bodies from
//! unauthenticated connections at once (`Overloaded` and a closed connection past that).
//! What it does not do: encrypt (gossip is readable on the
//! network) or stop replays. A replayed Syn only earns the replayer an Ack it cannot read
//! more from than the Syn it copied; a replayed Ack2 carries states that lose to newer ones
//! by the heartbeat merge rule, so a replay cannot roll membership back.
//!
//! ## Format
//! Each body is the rkyv 0.8 archive of the struct named above, like every body in
//! [`crate::msg`]; `PeerEnvelope::body` holds a second archive (the [`GossipBody`]) as bytes,
//! which the receiver copies into an aligned buffer and validates after the tag checks out.
//! Bounds a reader checks after validation are in [`GossipBody::check`] and
//! [`PeerEnvelope::check`].

use rkyv::{Archive, Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher24};
use std::hash::Hasher;

use crate::frame::Opcode;
use crate::placement::{SHARDS_MAX, VNODES_MAX};

/// Longest cluster name, bytes.
pub const CLUSTER_NAME_BYTES_MAX: usize = 64;
/// Longest node address (`host:port`) in a gossiped state, bytes.
pub const PEER_ADDR_BYTES_MAX: usize = 256;
/// Most node states or digests in one gossip message.
pub const GOSSIP_NODES_MAX: usize = 16_384;
/// The largest gossip or status body a node sends or accepts (a node raises its node port's
/// frame limit to at least this).
pub const PEER_BODY_BYTES_MAX: u32 = 8 * 1024 * 1024;

const _: () = assert!(PEER_BODY_BYTES_MAX <= crate::limits::FRAME_BODY_BYTES_MAX);

/// Domain tag of the MAC: a tag made for another purpose or version never verifies here.
const MAC_DOMAIN: &[u8] = b"kvs-gossip-mac-v1";
/// Domain tag of the key derivation.
const KEY_DOMAIN: &[u8] = b"kvs-cluster-key-v1";

/// A node's heartbeat: generation (larger after each restart), then version.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PeerHeartbeat {
    pub generation: u64,
    pub version: u64,
}

/// The state a node announces about itself.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PeerStatus {
    Joining,
    Up,
    Leaving,
    Left,
    /// Dead and being removed (`kvs removenode`), set on its behalf.
    Removing,
}

/// One node's id and heartbeat.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PeerDigest {
    pub id: u64,
    pub heartbeat: PeerHeartbeat,
}

/// Everything gossiped about one node.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PeerState {
    pub id: u64,
    /// The node's `--listen` address, `host:port`, at most [`PEER_ADDR_BYTES_MAX`] bytes.
    pub addr: String,
    pub heartbeat: PeerHeartbeat,
    pub status: PeerStatus,
    /// Each shard's port on the host of `addr`; at most [`SHARDS_MAX`].
    pub shard_ports: Vec<u16>,
    /// Vnode count, 1..=[`VNODES_MAX`]: the tokens are `placement::vnode_tokens(id, vnodes)`.
    pub vnodes: u16,
}

/// The three steps of a gossip exchange. Lists are sorted by id with no repeats (the
/// membership state machine drops a message that is not).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum GossipBody {
    Syn { digests: Vec<PeerDigest> },
    Ack { states: Vec<PeerState>, wants: Vec<u64> },
    Ack2 { states: Vec<PeerState> },
}

/// An authenticated gossip message (see the module docs).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PeerEnvelope {
    /// At most [`CLUSTER_NAME_BYTES_MAX`] bytes.
    pub cluster_name: String,
    pub sender_id: u64,
    /// Random per message, so equal bodies do not carry equal tags.
    pub nonce: u64,
    /// The archived [`GossipBody`].
    pub body: Vec<u8>,
    /// SipHash-2-4-128 tag, little endian (see [`mac`]).
    pub mac: [u8; 16],
}

/// What a node knows of one member, for `kvs status`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug))]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    pub status: PeerStatus,
    /// The answering node's verdict: 0 alive, 1 suspect, 2 down, 3 unknown (never heard).
    pub liveness: u8,
    /// phi as the answering node computes it now (0 for itself).
    pub phi: f64,
    pub heartbeat: PeerHeartbeat,
    pub shard_ports: Vec<u16>,
    pub vnodes: u16,
}

/// The answer to ClusterStatus: the membership as the answering node sees it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ClusterStatusResponse {
    pub self_id: u64,
    pub cluster_name: String,
    /// The version of the topology the node serves.
    pub topology_version: u64,
    /// The configured replication factor N.
    pub replication_factor: u8,
    /// Every known node, sorted by id, the answering node included.
    pub members: Vec<MemberStatus>,
    /// Where the range movement this node runs or last ran (join, decommission, removenode)
    /// is.
    pub movement_state: MovementState,
    /// That movement's progress or outcome, one line; empty when it never ran one.
    pub movement: String,
}

/// Where a node's range movement is.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum MovementState {
    /// Never ran one.
    Idle,
    Running,
    Done,
    /// Stopped with an error (in the progress line); running the command again retries.
    Failed,
}

/// The handshake of a replica link (see the module docs).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum PeerHello {
    /// Connector to listener. `cluster_name` is at most [`CLUSTER_NAME_BYTES_MAX`] bytes.
    Hello { cluster_name: String, sender_id: u64, nonce: u64 },
    /// Listener to connector: its id and nonce, and its tag over both nonces.
    Challenge { sender_id: u64, nonce: u64, mac: [u8; 16] },
    /// Connector to listener: the connector's tag over both nonces.
    Proof { mac: [u8; 16] },
}

/// Longest key in a replica request: the largest key any node accepts.
pub const REPLICA_KEY_BYTES_MAX: usize = 1024 * 1024;

/// A replica copy of a write, applied as is by the owning shard of the receiving node
/// (no new stamp: the coordinator's stamp decides between versions).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaWriteRequest {
    pub key: Vec<u8>,
    /// The value, or `None` for a tombstone (a delete).
    pub value: Option<Vec<u8>>,
    pub stamp: crate::msg::Stamp,
    /// Absolute expiry in ms since the Unix epoch by the coordinator's clock, 0 = never.
    pub expires_at_ms: u64,
}

/// A replica read: full data, or only the stamp (a digest).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaReadRequest {
    pub key: Vec<u8>,
    pub digest: bool,
}

/// What a replica holds for a key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum ReplicaVersion {
    Missing,
    Value {
        stamp: crate::msg::Stamp,
        value: Vec<u8>,
    },
    Tombstone {
        stamp: crate::msg::Stamp,
    },
    /// The answer to a digest read: the stamp of what it holds, if anything.
    Digest {
        stamp: Option<crate::msg::Stamp>,
    },
}

/// The answer to a [`ReplicaReadRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ReplicaReadResponse {
    pub version: ReplicaVersion,
}

/// Most keys one `StreamScan` page returns (a request asking for more gets this many).
pub const STREAM_PAGE_KEYS_MAX: u32 = 4096;
/// Most key and value bytes one `StreamScan` page returns, roughly (a single version larger
/// than this still travels alone), and most bytes of versions in one `StreamApply`.
pub const STREAM_PAGE_BYTES_MAX: u32 = 4 * 1024 * 1024;
// A StreamApply is at most one page (keys and values within STREAM_PAGE_BYTES_MAX, plus
// about 40 bytes of archive per version) or one version alone (within a client frame): it
// must fit the node-to-node bound.
const _: () = assert!(
    STREAM_PAGE_BYTES_MAX as u64 + STREAM_PAGE_KEYS_MAX as u64 * 64 <= PEER_BODY_BYTES_MAX as u64
);

/// Most token ranges in one `StreamScan` (a node has at most `VNODES_MAX` tokens, and a
/// gaining node takes at most one range per token of the ring's nodes).
pub const STREAM_RANGES_MAX: usize = 1 << 20;

/// One page of one shard's versions whose keys' tokens lie in `ranges`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StreamScanRequest {
    /// The source node's shard to scan.
    pub shard: u16,
    /// Token ranges `(start, end]`, wrapping when `start >= end` (`start == end`: the whole
    /// ring).
    pub ranges: Vec<(u64, u64)>,
    /// Resume after this key (`None`: from the first key).
    pub after: Option<Vec<u8>>,
    /// Keys per page at most (clamped to [`STREAM_PAGE_KEYS_MAX`]).
    pub max_keys: u32,
    /// Bytes per page, roughly (clamped to [`STREAM_PAGE_BYTES_MAX`]).
    pub max_bytes: u32,
}

/// One stored version of a key, as streamed.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StreamEntry {
    pub key: Vec<u8>,
    /// The value, or `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    pub stamp: crate::msg::Stamp,
    /// Absolute expiry in ms since the Unix epoch, 0 = never.
    pub expires_at_ms: u64,
}

/// The answer to a [`StreamScanRequest`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StreamScanResponse {
    /// Versions in key order, newest per key, tombstones included.
    pub entries: Vec<StreamEntry>,
    /// Ask again after this key; `None` when the shard has no more keys.
    pub next: Option<Vec<u8>>,
    /// Keys the page looked at (in the ranges or not), for progress.
    pub examined: u64,
}

/// Versions for one shard of the receiving node.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StreamApplyRequest {
    /// The receiver's shard that owns every key here (`shard_of(token, its shard count)`).
    pub shard: u16,
    pub entries: Vec<StreamEntry>,
}

/// An operator's request that changes the ring (`Decommission`, `RemoveNode`): proof that
/// the sender holds the cluster key. `target` is the node to decommission (the receiving node)
/// or to remove; the tag is [`admin_mac`] over it, so a request seen on the network cannot be
/// turned against another node. The receiver refuses a request
/// issued more than [`ADMIN_REQUEST_AGE_MAX_MS`] from its own clock, so a recorded request
/// cannot be replayed later.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct AdminRequest {
    /// At most [`CLUSTER_NAME_BYTES_MAX`] bytes.
    pub cluster_name: String,
    pub target: u64,
    /// Wall clock of the sender, ms since the Unix epoch.
    pub issued_at_ms: u64,
    pub nonce: u64,
    pub mac: [u8; 16],
}

/// How far an [`AdminRequest`]'s issue time may be from the receiver's clock, ms.
pub const ADMIN_REQUEST_AGE_MAX_MS: u64 = 5 * 60 * 1000;

/// Domain tag of the operator requests' tag.
const ADMIN_DOMAIN: &[u8] = b"kvs-admin-v1";

/// The tag of an [`AdminRequest`] for `opcode`: SipHash-2-4-128 with the cluster key over a
/// domain tag, the opcode, the cluster name, the target, the issue time and the nonce.
pub fn admin_mac(
    key: &ClusterKey,
    opcode: Opcode,
    cluster_name: &str,
    target: u64,
    issued_at_ms: u64,
    nonce: u64,
) -> [u8; 16] {
    let mut h = SipHasher24::new_with_keys(key.k0, key.k1);
    h.write(ADMIN_DOMAIN);
    h.write(&[opcode as u8]);
    write_prefixed(&mut h, cluster_name.as_bytes());
    for v in [target, issued_at_ms, nonce] {
        h.write(&v.to_le_bytes());
    }
    h.finish128().as_u128().to_le_bytes()
}

impl AdminRequest {
    /// A request for `opcode` on `target`, tagged with `key`, issued at `now_ms`.
    pub fn new(
        key: &ClusterKey,
        opcode: Opcode,
        cluster_name: &str,
        target: u64,
        now_ms: u64,
        nonce: u64,
    ) -> AdminRequest {
        AdminRequest {
            cluster_name: cluster_name.to_string(),
            target,
            issued_at_ms: now_ms,
            nonce,
            mac: admin_mac(key, opcode, cluster_name, target, now_ms, nonce),
        }
    }
}

impl ArchivedAdminRequest {
    /// Checks the request for `opcode` against this node's cluster and key at `now_ms`.
    pub fn verify(
        &self,
        key: &ClusterKey,
        opcode: Opcode,
        cluster_name: &str,
        now_ms: u64,
    ) -> Result<(), String> {
        if self.cluster_name.as_str() != cluster_name {
            return Err(format!(
                "the request is for cluster {:?}; this node is in cluster {cluster_name:?}",
                self.cluster_name.as_str()
            ));
        }
        let issued = self.issued_at_ms.to_native();
        if issued.abs_diff(now_ms) > ADMIN_REQUEST_AGE_MAX_MS {
            return Err(format!(
                "the request was issued {} s from this node's clock (at most {} s): check the \
                 clocks",
                issued.abs_diff(now_ms) / 1000,
                ADMIN_REQUEST_AGE_MAX_MS / 1000
            ));
        }
        let expected = admin_mac(
            key,
            opcode,
            cluster_name,
            self.target.to_native(),
            issued,
            self.nonce.to_native(),
        );
        if !tags_equal(&expected, &self.mac) {
            return Err("bad cluster secret: the request's tag does not verify".into());
        }
        Ok(())
    }
}

/// Domain tag of the replica-link handshake tag.
const HELLO_DOMAIN: &[u8] = b"kvs-replica-hello-v1";

/// The handshake tag made by `maker` (the listener when `as_listener`, else the connector):
/// SipHash-2-4-128 with the cluster key over a domain tag, the role, the cluster name, both
/// ids and both nonces, connector's first.
pub fn hello_mac(
    key: &ClusterKey,
    as_listener: bool,
    cluster_name: &str,
    connector: (u64, u64),
    listener: (u64, u64),
) -> [u8; 16] {
    let mut h = SipHasher24::new_with_keys(key.k0, key.k1);
    h.write(HELLO_DOMAIN);
    h.write(&[u8::from(as_listener)]);
    write_prefixed(&mut h, cluster_name.as_bytes());
    for v in [connector.0, connector.1, listener.0, listener.1] {
        h.write(&v.to_le_bytes());
    }
    h.finish128().as_u128().to_le_bytes()
}

/// Liveness codes of [`MemberStatus::liveness`].
pub const LIVENESS_NAMES: [&str; 4] = ["alive", "suspect", "down", "unknown"];

impl PeerState {
    /// Bounds a reader relies on beyond rkyv validation.
    pub fn check(&self) -> Result<(), String> {
        if self.addr.len() > PEER_ADDR_BYTES_MAX {
            return Err(format!("node {:016x}: address of {} bytes", self.id, self.addr.len()));
        }
        if self.shard_ports.is_empty() || self.shard_ports.len() > usize::from(SHARDS_MAX) {
            return Err(format!(
                "node {:016x}: {} shard ports (1..={SHARDS_MAX})",
                self.id,
                self.shard_ports.len()
            ));
        }
        if self.vnodes == 0 || self.vnodes > VNODES_MAX {
            return Err(format!(
                "node {:016x}: {} vnodes (1..={VNODES_MAX})",
                self.id, self.vnodes
            ));
        }
        if self.id == 0 {
            return Err("node id 0".into());
        }
        Ok(())
    }
}

impl GossipBody {
    /// Bounds a reader relies on beyond rkyv validation (sorting is the state machine's check).
    pub fn check(&self) -> Result<(), String> {
        let (states, ids): (&[PeerState], usize) = match self {
            GossipBody::Syn { digests } => (&[], digests.len()),
            GossipBody::Ack { states, wants } => (states, wants.len()),
            GossipBody::Ack2 { states } => (states, 0),
        };
        if states.len() > GOSSIP_NODES_MAX || ids > GOSSIP_NODES_MAX {
            return Err(format!("more than {GOSSIP_NODES_MAX} entries"));
        }
        states.iter().try_for_each(PeerState::check)
    }
}

impl PeerEnvelope {
    /// Bounds of the envelope itself.
    pub fn check(&self) -> Result<(), String> {
        if self.cluster_name.len() > CLUSTER_NAME_BYTES_MAX {
            return Err(format!("cluster name of {} bytes", self.cluster_name.len()));
        }
        Ok(())
    }
}

/// The 128-bit MAC key of a cluster, derived from its secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ClusterKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derives the key from the secret's bytes and the cluster name (so two clusters that
    /// share a secret by mistake still refuse each other): SipHash-2-4-128 under a fixed key
    /// over a domain tag, the name and the secret, each length-prefixed. Not a password hash:
    /// the secret itself must be random.
    pub fn derive(cluster_name: &str, secret: &[u8]) -> ClusterKey {
        let mut h = SipHasher24::new_with_keys(0x6b76_735f_6b65_7931, 0x6b76_735f_6b65_7932);
        h.write(KEY_DOMAIN);
        write_prefixed(&mut h, cluster_name.as_bytes());
        write_prefixed(&mut h, secret);
        let out = h.finish128();
        ClusterKey { k0: out.h1, k1: out.h2 }
    }
}

fn write_prefixed(h: &mut SipHasher24, bytes: &[u8]) {
    h.write(&(bytes.len() as u64).to_le_bytes());
    h.write(bytes);
}

/// The tag of a gossip message: SipHash-2-4-128 keyed with `key` over the domain tag, the
/// opcode and direction, the cluster name, the sender, the nonce and the body.
pub fn mac(
    key: &ClusterKey,
    opcode: Opcode,
    response: bool,
    cluster_name: &str,
    sender_id: u64,
    nonce: u64,
    body: &[u8],
) -> [u8; 16] {
    let mut h = SipHasher24::new_with_keys(key.k0, key.k1);
    h.write(MAC_DOMAIN);
    h.write(&[opcode as u8, u8::from(response)]);
    write_prefixed(&mut h, cluster_name.as_bytes());
    h.write(&sender_id.to_le_bytes());
    h.write(&nonce.to_le_bytes());
    write_prefixed(&mut h, body);
    h.finish128().as_u128().to_le_bytes()
}

/// The rkyv archive of `body` alone, as bytes (for [`PeerEnvelope::body`]).
pub fn archive_body(body: &GossipBody) -> Result<Vec<u8>, crate::msg::MsgError> {
    let mut out = Vec::new();
    crate::msg::write_frame(&mut out, Opcode::GossipSyn, false, 0, body)?;
    Ok(out.split_off(crate::limits::FRAME_HEADER_BYTES))
}

/// Compares two tags without an early exit.
pub fn tags_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{access, to_owned, write_frame, AlignedVec};

    #[test]
    fn admin_requests_verify_only_with_the_key_the_opcode_and_a_fresh_time() {
        let key = ClusterKey::derive("c", b"secret");
        let now = 1_700_000_000_000;
        let req = AdminRequest::new(&key, Opcode::RemoveNode, "c", 7, now, 42);
        let body = crate::msg::encode_body(&req).unwrap();
        let mut aligned: AlignedVec = AlignedVec::new();
        aligned.extend_from_slice(&body);
        let a = access::<ArchivedAdminRequest>(&aligned).unwrap();
        assert!(a.verify(&key, Opcode::RemoveNode, "c", now + 1000).is_ok());
        let other = ClusterKey::derive("c", b"other");
        assert!(a.verify(&other, Opcode::RemoveNode, "c", now).unwrap_err().contains("secret"));
        assert!(a.verify(&key, Opcode::Decommission, "c", now).is_err(), "bound to the opcode");
        assert!(a.verify(&key, Opcode::RemoveNode, "d", now).unwrap_err().contains("cluster"));
        let late = now + ADMIN_REQUEST_AGE_MAX_MS + 1;
        assert!(a.verify(&key, Opcode::RemoveNode, "c", late).unwrap_err().contains("clock"));
        // Another target under the same tag does not verify.
        let mut forged = req.clone();
        forged.target = 8;
        let body = crate::msg::encode_body(&forged).unwrap();
        let mut aligned: AlignedVec = AlignedVec::new();
        aligned.extend_from_slice(&body);
        let f = access::<ArchivedAdminRequest>(&aligned).unwrap();
        assert!(f.verify(&key, Opcode::RemoveNode, "c", now).is_err());
    }

    fn state(id: u64) -> PeerState {
        PeerState {
            id,
            addr: "127.0.0.2:7000".into(),
            heartbeat: PeerHeartbeat { generation: 5, version: 9 },
            status: PeerStatus::Up,
            shard_ports: vec![7001],
            vnodes: 150,
        }
    }

    fn archive<T>(msg: &T) -> AlignedVec
    where
        T: for<'a, 'v> Serialize<
            rkyv::api::high::HighSerializer<
                crate::msg::BodyWriter<'v>,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
    {
        let mut out = Vec::new();
        write_frame(&mut out, Opcode::GossipSyn, false, 1, msg).unwrap();
        let mut body: AlignedVec = AlignedVec::new();
        body.extend_from_slice(&out[crate::limits::FRAME_HEADER_BYTES..]);
        body
    }

    #[test]
    fn envelope_round_trips_and_the_tag_binds_every_field() {
        let key = ClusterKey::derive("c1", b"secret");
        let body = archive(&GossipBody::Ack { states: vec![state(1), state(2)], wants: vec![3] });
        let tag = mac(&key, Opcode::GossipSyn, true, "c1", 7, 42, &body);
        let env = PeerEnvelope {
            cluster_name: "c1".into(),
            sender_id: 7,
            nonce: 42,
            body: body.to_vec(),
            mac: tag,
        };
        let bytes = archive(&env);
        let back: PeerEnvelope = to_owned(access::<ArchivedPeerEnvelope>(&bytes).unwrap()).unwrap();
        assert_eq!(back, env);
        let mut inner: AlignedVec = AlignedVec::new();
        inner.extend_from_slice(&back.body);
        let g: GossipBody = to_owned(access::<ArchivedGossipBody>(&inner).unwrap()).unwrap();
        g.check().unwrap();
        assert!(tags_equal(&tag, &mac(&key, Opcode::GossipSyn, true, "c1", 7, 42, &body)));
        let others = [
            mac(&ClusterKey::derive("c1", b"secreT"), Opcode::GossipSyn, true, "c1", 7, 42, &body),
            mac(&ClusterKey::derive("c2", b"secret"), Opcode::GossipSyn, true, "c1", 7, 42, &body),
            mac(&key, Opcode::GossipAck2, true, "c1", 7, 42, &body),
            mac(&key, Opcode::GossipSyn, false, "c1", 7, 42, &body),
            mac(&key, Opcode::GossipSyn, true, "c2", 7, 42, &body),
            mac(&key, Opcode::GossipSyn, true, "c1", 8, 42, &body),
            mac(&key, Opcode::GossipSyn, true, "c1", 7, 43, &body),
            mac(&key, Opcode::GossipSyn, true, "c1", 7, 42, &body[1..]),
        ];
        for other in others {
            assert!(!tags_equal(&tag, &other));
        }
    }

    #[test]
    fn bounds_are_checked() {
        let mut s = state(1);
        s.check().unwrap();
        s.shard_ports.clear();
        assert!(s.check().is_err());
        let mut s = state(1);
        s.vnodes = 0;
        assert!(s.check().is_err());
        let mut s = state(1);
        s.addr = "x".repeat(PEER_ADDR_BYTES_MAX + 1);
        assert!(GossipBody::Ack2 { states: vec![s] }.check().is_err());
        let e = PeerEnvelope {
            cluster_name: "n".repeat(CLUSTER_NAME_BYTES_MAX + 1),
            sender_id: 1,
            nonce: 1,
            body: vec![],
            mac: [0; 16],
        };
        assert!(e.check().is_err());
    }

    #[test]
    fn garbage_never_validates_or_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..20_000 {
            let len = rng.gen_range(0..96);
            let mut body: AlignedVec = AlignedVec::new();
            for _ in 0..len {
                body.push(rng.gen());
            }
            let _ = access::<ArchivedPeerEnvelope>(&body);
            let _ = access::<ArchivedGossipBody>(&body);
            let _ = access::<ArchivedClusterStatusResponse>(&body);
        }
    }

    #[test]
    fn replica_messages_round_trip_and_hello_tags_bind_role_ids_and_nonces() {
        let w = ReplicaWriteRequest {
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            stamp: crate::msg::Stamp { hlc: 7, node: 9 },
            expires_at_ms: 0,
        };
        let back: ReplicaWriteRequest =
            to_owned(access::<ArchivedReplicaWriteRequest>(&archive(&w)).unwrap()).unwrap();
        assert_eq!(back, w);
        let r = ReplicaReadResponse { version: ReplicaVersion::Digest { stamp: None } };
        let back: ReplicaReadResponse =
            to_owned(access::<ArchivedReplicaReadResponse>(&archive(&r)).unwrap()).unwrap();
        assert_eq!(back, r);
        let key = ClusterKey::derive("c", b"s");
        let t = hello_mac(&key, true, "c", (1, 2), (3, 4));
        assert_ne!(t, hello_mac(&key, false, "c", (1, 2), (3, 4)), "role");
        assert_ne!(t, hello_mac(&key, true, "c", (1, 5), (3, 4)), "connector nonce");
        assert_ne!(t, hello_mac(&key, true, "c", (1, 2), (3, 5)), "listener nonce");
        assert_ne!(t, hello_mac(&key, true, "c", (2, 2), (3, 4)), "connector id");
        assert_ne!(t, hello_mac(&ClusterKey::derive("c", b"t"), true, "c", (1, 2), (3, 4)), "key");
        for len in [0usize, 1, 5, 40] {
            let mut body: AlignedVec = AlignedVec::new();
            body.extend_from_slice(&(0..len).map(|i| i as u8 ^ 0x5a).collect::<Vec<u8>>());
            let _ = access::<ArchivedPeerHello>(&body);
            let _ = access::<ArchivedReplicaWriteRequest>(&body);
            let _ = access::<ArchivedReplicaReadRequest>(&body);
            let _ = access::<ArchivedReplicaReadResponse>(&body);
        }
    }
}
