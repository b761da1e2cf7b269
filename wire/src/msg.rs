//! Request and response bodies, archived with rkyv.
//!
//! A body is read in place: [`access`] validates the archive (bounds, pointers, UTF-8, enum
//! tags) and returns a reference into the bytes, so a node reads a key and value without
//! deserializing them. Bodies must be 8-byte aligned when accessed; a reader copies each body
//! into an [`AlignedVec`] (one memcpy, no parse) before access.
//!
//! ## Format
//! Each opcode's body is the rkyv 0.8 archive (little endian, 32-bit relative pointers, the
//! default format) of one struct below, serialized as if the body started at offset 0:
//!
//! | opcode   | request body       | response body                      |
//! |----------|--------------------|------------------------------------|
//! | Ping     | empty              | empty                              |
//! | Topology | empty              | [`TopologyResponse`]               |
//! | Get      | [`GetRequest`]     | [`GetResponse`]                    |
//! | Put      | [`PutRequest`]     | [`WriteResponse`]                  |
//! | Delete   | [`DeleteRequest`]  | [`WriteResponse`]                  |
//! | Stats    | empty              | [`StatsResponse`]                  |
//! | (any)    |                    | opcode `Error`: [`ErrorResponse`]  |
//!
//! Get, Put and Delete carry a [`Consistency`]: how many replicas must answer before the
//! coordinating node does (R for a Get, W for a Put or Delete). An `Unavailable` or `Timeout`
//! error says, in [`ErrorResponse::detail`], how many replicas were needed and how many were
//! alive or acknowledged.
//!
//! ## Versions
//! - 2: `PutRequest::ttl_ms`.
//! - 3: `consistency` in Get, Put and Delete requests; `ErrorResponse::detail`.
//! - 4: `NodeInfo::status` (a joining node takes writes but serves no reads yet; a leaving
//!   node still serves reads); `ClusterStatusResponse::movement`.
//!
//! A change to any struct here is a change of the protocol version in [`crate::frame`]. A new
//! opcode with new structs is not: a server that does not know the opcode answers
//! `InvalidRequest` (unknown opcode) and closes the connection.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Positional, Writer};
use rkyv::{Archive, Deserialize, Portable, Serialize};

pub use rkyv::util::AlignedVec;

use crate::error::ErrorCode;
use crate::frame::{FrameHeader, Opcode};
use crate::limits::{
    ERROR_MESSAGE_BYTES_MAX, FRAME_HEADER_BYTES, STATS_COUNTERS_PER_SHARD_MAX,
    STATS_COUNTER_NAME_BYTES_MAX,
};
use crate::placement::SHARDS_MAX;

/// A write's version: hybrid logical clock reading, then the id of the node that stamped it.
/// Versions order by `(hlc, node)`; the greater one wins.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
)]
#[rkyv(derive(Debug))]
pub struct Stamp {
    pub hlc: u64,
    pub node: u64,
}

/// How many replicas of a key must answer a request before the coordinator does: R for a read
/// (Get), W for a write (Put, Delete), out of the replication factor N.
///
/// - `Default`: the node's configured default for the operation (quorum unless the operator
///   changed it, so R = W = 2 when N = 3).
/// - `One`: 1. The fastest answer; a read may miss the latest write.
/// - `Quorum`: a majority, `N / 2 + 1` (2 of 3). Quorum writes and quorum reads overlap in at
///   least one replica, so a quorum read sees every acknowledged quorum write.
/// - `All`: N. Fails with `Unavailable` as soon as any replica is down.
/// - `Count(n)`: exactly n, `1 <= n <= N`; 0 or more than N is refused with `InvalidRequest`
///   naming N. On a Get it is R, on a Put or Delete it is W.
///
/// A write is sent to every replica whatever its consistency; the consistency only says how
/// many acknowledgements the coordinator waits for. Reads overlap writes (and so see them)
/// when `R + W > N`.
///
/// ## Format
/// An rkyv enum: one tag byte (`Default` 0, `One` 1, `Quorum` 2, `All` 3, `Count` 4), then for
/// `Count` the count as one byte. Size 2, alignment 1.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub enum Consistency {
    #[default]
    Default,
    One,
    Quorum,
    All,
    Count(u8),
}

impl ArchivedConsistency {
    /// The consistency as a native value (every archived tag is valid once `access` checked it).
    pub fn to_native(&self) -> Consistency {
        match self {
            ArchivedConsistency::Default => Consistency::Default,
            ArchivedConsistency::One => Consistency::One,
            ArchivedConsistency::Quorum => Consistency::Quorum,
            ArchivedConsistency::All => Consistency::All,
            ArchivedConsistency::Count(n) => Consistency::Count(*n),
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Consistency::Default => f.write_str("default"),
            Consistency::One => f.write_str("one"),
            Consistency::Quorum => f.write_str("quorum"),
            Consistency::All => f.write_str("all"),
            Consistency::Count(n) => write!(f, "{n}"),
        }
    }
}

/// Read one key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GetRequest {
    pub key: Vec<u8>,
    /// R: how many replicas must answer.
    pub consistency: Consistency,
}

/// Write one key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct PutRequest {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Time to live in milliseconds; 0 = the value never expires. The coordinating node turns
    /// it into an absolute expiry with its own wall clock (`now + ttl_ms`); from then on the
    /// key reads as missing. At most [`crate::limits::TTL_MS_MAX`], else `InvalidRequest`.
    pub ttl_ms: u64,
    /// W: how many replicas must acknowledge.
    pub consistency: Consistency,
}

/// Delete one key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct DeleteRequest {
    pub key: Vec<u8>,
    /// W: how many replicas must acknowledge the tombstone.
    pub consistency: Consistency,
}

/// The answer to a get: the value and its version, or `None` when the key is missing or deleted.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct GetResponse {
    pub value: Option<Vec<u8>>,
    pub stamp: Option<Stamp>,
}

/// The answer to a put or a delete: the version it was stamped with.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WriteResponse {
    pub stamp: Stamp,
}

/// What an error adds to its code and message, as numbers a client can act on.
///
/// ## Format
/// An rkyv enum: one tag byte (`None` 0, `Unavailable` 1, `Timeout` 2), then the variant's
/// fields, one byte each, in the order declared. Size 3, alignment 1.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub enum ErrorDetail {
    /// Nothing beyond the message.
    #[default]
    None,
    /// With `Unavailable`: the request needed `needed` replicas and only `alive` were up, so it
    /// was not attempted on any.
    Unavailable { needed: u8, alive: u8 },
    /// With `Timeout`: only `acknowledged` of the `needed` replicas answered in time (or the
    /// others failed). A write may still have been applied on the ones that did.
    Timeout { acknowledged: u8, needed: u8 },
}

impl ArchivedErrorDetail {
    /// The detail as a native value.
    pub fn to_native(&self) -> ErrorDetail {
        match self {
            ArchivedErrorDetail::None => ErrorDetail::None,
            ArchivedErrorDetail::Unavailable { needed, alive } => {
                ErrorDetail::Unavailable { needed: *needed, alive: *alive }
            }
            ArchivedErrorDetail::Timeout { acknowledged, needed } => {
                ErrorDetail::Timeout { acknowledged: *acknowledged, needed: *needed }
            }
        }
    }
}

impl std::fmt::Display for ErrorDetail {
    /// `needed 2, alive 1` or `1 of 2 acknowledged`; nothing for `None`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorDetail::None => Ok(()),
            ErrorDetail::Unavailable { needed, alive } => {
                write!(f, "needed {needed}, alive {alive}")
            }
            ErrorDetail::Timeout { acknowledged, needed } => {
                write!(f, "{acknowledged} of {needed} acknowledged")
            }
        }
    }
}

/// A failed request: a stable code (see [`ErrorCode::to_u16`]), a readable message and, for
/// `Unavailable` and `Timeout`, the replica counts in `detail`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ErrorResponse {
    pub code: u16,
    pub message: String,
    pub detail: ErrorDetail,
}

impl ErrorResponse {
    /// An error response with no detail, its message cut to [`ERROR_MESSAGE_BYTES_MAX`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorResponse {
        ErrorResponse::with_detail(code, ErrorDetail::None, message)
    }

    /// An error response with `detail`, its message cut to [`ERROR_MESSAGE_BYTES_MAX`].
    pub fn with_detail(
        code: ErrorCode,
        detail: ErrorDetail,
        message: impl Into<String>,
    ) -> ErrorResponse {
        let mut message = message.into();
        if message.len() > ERROR_MESSAGE_BYTES_MAX {
            let mut cut = ERROR_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorResponse { code: code.to_u16(), message, detail }
    }
}

/// One node as the topology describes it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NodeInfo {
    /// Stable node id, made on the node's first start.
    pub id: u64,
    /// The node's `--listen` address, `host:port`: its node-level port.
    pub addr: String,
    /// The port of each shard, on the host of `addr`; its length is the node's shard count.
    pub shard_ports: Vec<u16>,
    /// The node's vnode tokens (see [`crate::placement`]).
    pub tokens: Vec<u64>,
    /// Where the node is in its life in the ring.
    pub status: NodeStatus,
}

/// A node's place in the ring, as the topology shows it (a node that has left is not listed).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum NodeStatus {
    /// Streaming the data of the ranges it takes over: it receives writes for them, and
    /// reads of them still go to the previous replicas.
    Joining,
    /// A full member: reads and writes.
    Up,
    /// Streaming its ranges away: it still serves reads, and writes go to it and to the
    /// nodes taking its ranges over.
    Leaving,
}

/// The cluster as one node sees it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct TopologyResponse {
    /// Grows whenever membership or tokens change.
    pub version: u64,
    /// The id of the node that answered.
    pub self_id: u64,
    /// Replication factor N.
    pub replication_factor: u8,
    pub nodes: Vec<NodeInfo>,
}

/// One named counter of a shard. Names are stable snake_case words (the engine's
/// `EngineStats::counters` and the node's request counters); a name is only ever added, never
/// renamed or reused, so a reader keys on names and ignores the ones it does not know.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Counter {
    /// At most [`STATS_COUNTER_NAME_BYTES_MAX`] bytes.
    pub name: String,
    pub value: u64,
}

/// The counters of one shard of the answering node.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ShardStats {
    /// The shard's index on its node, `0..shard_count`.
    pub shard: u32,
    /// At most [`STATS_COUNTERS_PER_SHARD_MAX`], each name once.
    pub counters: Vec<Counter>,
}

/// The answer to a Stats request: every shard of the answering node that answered in time.
///
/// ## Format
/// The rkyv archive of this struct (see the module docs). `shards` is sorted by `shard`;
/// `missing` lists, sorted, the shards that did not answer within the node's gather timeout
/// (or whose queue was full), so `shards.len() + missing.len() == shard_count`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct StatsResponse {
    /// The id of the node that answered.
    pub node_id: u64,
    /// The node's shard count, at most [`SHARDS_MAX`].
    pub shard_count: u32,
    pub shards: Vec<ShardStats>,
    pub missing: Vec<u32>,
}

impl StatsResponse {
    /// Checks what a reader relies on beyond rkyv validation: the bounds above, shard indexes
    /// below `shard_count`, each shard reported once (answered or missing), unique counter
    /// names. Returns a readable reason when the response breaks one.
    pub fn check(&self) -> Result<(), String> {
        if self.shard_count > u32::from(SHARDS_MAX) {
            return Err(format!("shard_count {} exceeds {SHARDS_MAX}", self.shard_count));
        }
        let mut seen = vec![false; self.shard_count as usize];
        let indexes = self.shards.iter().map(|s| s.shard).chain(self.missing.iter().copied());
        for shard in indexes {
            match seen.get_mut(shard as usize) {
                None => {
                    return Err(format!(
                        "shard {shard} is not below shard_count {}",
                        self.shard_count
                    ))
                }
                Some(true) => return Err(format!("shard {shard} is reported twice")),
                Some(slot) => *slot = true,
            }
        }
        for s in &self.shards {
            if s.counters.len() > STATS_COUNTERS_PER_SHARD_MAX {
                return Err(format!(
                    "shard {} has {} counters (at most {STATS_COUNTERS_PER_SHARD_MAX})",
                    s.shard,
                    s.counters.len()
                ));
            }
            let mut names: Vec<&str> = s.counters.iter().map(|c| c.name.as_str()).collect();
            if let Some(long) = names.iter().find(|n| n.len() > STATS_COUNTER_NAME_BYTES_MAX) {
                return Err(format!("shard {}: counter name {long:?} is too long", s.shard));
            }
            names.sort_unstable();
            if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
                return Err(format!("shard {}: counter {:?} appears twice", s.shard, w.first()));
            }
        }
        Ok(())
    }
}

/// Why a body could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MsgError {
    #[error("invalid message body: {0}")]
    Invalid(rancor::Error),
    #[error("message body too large to frame: {len} bytes")]
    TooLarge { len: usize },
}

/// Validates `bytes` as an archived `T` and returns a reference into them.
/// `bytes` must start at an 8-byte aligned address (use an [`AlignedVec`]).
pub fn access<T>(bytes: &[u8]) -> Result<&T, MsgError>
where
    T: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T, rancor::Error>(bytes).map_err(MsgError::Invalid)
}

/// Deserializes an archived message into its owned form.
pub fn to_owned<T, A>(archived: &A) -> Result<T, MsgError>
where
    A: Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
{
    rkyv::deserialize::<T, rancor::Error>(archived).map_err(MsgError::Invalid)
}

/// Serializer output that appends to a `Vec<u8>` but reports positions relative to where the
/// body starts, so the archive is laid out as if the body began at offset 0.
pub struct BodyWriter<'v> {
    out: &'v mut Vec<u8>,
    base: usize,
}

impl Positional for BodyWriter<'_> {
    fn pos(&self) -> usize {
        self.out.len() - self.base
    }
}

impl<E> Writer<E> for BodyWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
}

/// `msg` archived, as a body without a frame header (for requests handed between a node's
/// executors before they are framed).
pub fn encode_body<T>(msg: &T) -> Result<Vec<u8>, MsgError>
where
    T: for<'a, 'v> Serialize<HighSerializer<BodyWriter<'v>, ArenaHandle<'a>, rancor::Error>>,
{
    let mut out = Vec::new();
    write_frame(&mut out, Opcode::Ping, false, 0, msg)?;
    Ok(out.split_off(FRAME_HEADER_BYTES))
}

/// Appends a frame whose body is `msg` archived: header, then body, then patches the length.
pub fn write_frame<T>(
    out: &mut Vec<u8>,
    opcode: Opcode,
    response: bool,
    request_id: u64,
    msg: &T,
) -> Result<(), MsgError>
where
    T: for<'a, 'v> Serialize<HighSerializer<BodyWriter<'v>, ArenaHandle<'a>, rancor::Error>>,
{
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    let base = out.len();
    let written = rkyv::api::high::to_bytes_in::<_, rancor::Error>(msg, BodyWriter { out, base });
    if let Err(e) = written {
        out.truncate(start);
        return Err(MsgError::Invalid(e));
    }
    let body_len = out.len() - base;
    let Ok(body_len32) = u32::try_from(body_len) else {
        out.truncate(start);
        return Err(MsgError::TooLarge { len: body_len });
    };
    let header = FrameHeader { opcode, response, request_id, body_len: body_len32 };
    if let Some(slot) = out.get_mut(start..base) {
        slot.copy_from_slice(&header.encode());
    }
    Ok(())
}

/// Appends a frame with an empty body (Ping, Topology requests, Ping responses).
pub fn write_empty_frame(out: &mut Vec<u8>, opcode: Opcode, response: bool, request_id: u64) {
    let header = FrameHeader { opcode, response, request_id, body_len: 0 };
    out.extend_from_slice(&header.encode());
}

/// Appends an error response frame with no detail.
pub fn write_error(
    out: &mut Vec<u8>,
    request_id: u64,
    code: ErrorCode,
    message: impl Into<String>,
) {
    write_error_detail(out, request_id, code, ErrorDetail::None, message);
}

/// Appends an error response frame with `detail`.
pub fn write_error_detail(
    out: &mut Vec<u8>,
    request_id: u64,
    code: ErrorCode,
    detail: ErrorDetail,
    message: impl Into<String>,
) {
    let body = ErrorResponse::with_detail(code, detail, message);
    // An ErrorResponse is a u16, a bounded string and three bytes: serializing it cannot fail.
    if write_frame(out, Opcode::Error, true, request_id, &body).is_err() {
        write_empty_frame(out, Opcode::Error, true, request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FRAME_BODY_BYTES_MAX;

    fn body_of(frame: &[u8]) -> (FrameHeader, AlignedVec) {
        let h = FrameHeader::decode(frame, FRAME_BODY_BYTES_MAX).unwrap();
        let mut body: AlignedVec = AlignedVec::new();
        body.extend_from_slice(
            &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + h.body_len as usize],
        );
        (h, body)
    }

    #[test]
    fn put_round_trips_in_place() {
        let mut out = vec![1, 2, 3]; // frames need not start aligned in the output buffer
        let msg = PutRequest {
            key: b"k1".to_vec(),
            value: vec![7; 100],
            ttl_ms: 90_000,
            consistency: Consistency::Count(2),
        };
        write_frame(&mut out, Opcode::Put, false, 42, &msg).unwrap();
        let (h, body) = body_of(&out[3..]);
        assert_eq!((h.opcode, h.request_id, h.response), (Opcode::Put, 42, false));
        let a = access::<ArchivedPutRequest>(&body).unwrap();
        assert_eq!(a.key.as_slice(), b"k1");
        assert_eq!(a.value.as_slice(), &[7u8; 100][..]);
        assert_eq!(a.ttl_ms.to_native(), 90_000);
        assert_eq!(a.consistency.to_native(), Consistency::Count(2));
        let back: PutRequest = to_owned(a).unwrap();
        assert_eq!(back, msg);
    }

    /// The archived bytes of a put, pinned: a change here is a protocol change (bump
    /// `PROTOCOL_VERSION`).
    #[test]
    fn put_body_golden_bytes() {
        let msg = PutRequest {
            key: b"k".to_vec(),
            value: b"vv".to_vec(),
            ttl_ms: 0x0102_0304,
            consistency: Consistency::Count(3),
        };
        let mut out = Vec::new();
        write_frame(&mut out, Opcode::Put, false, 1, &msg).unwrap();
        let (_, body) = body_of(&out);
        assert_eq!(body.as_slice(), GOLDEN_PUT);
    }

    /// The key and value bytes first, then the root at offset 8: each `Vec` as a relative
    /// pointer (i32, from the field's own offset) and a length (u32), then `ttl_ms` (u64), then
    /// `consistency` (tag, count) and padding to the root's alignment of 8.
    #[rustfmt::skip]
    const GOLDEN_PUT: &[u8] = &[
        b'k', b'v', b'v', 0, 0, 0, 0, 0,  // key, value, padding to 8
        0xf8, 0xff, 0xff, 0xff, 1, 0, 0, 0, // key: at 8 - 8 = 0, 1 byte
        0xf1, 0xff, 0xff, 0xff, 2, 0, 0, 0, // value: at 16 - 15 = 1, 2 bytes
        4, 3, 2, 1, 0, 0, 0, 0,             // ttl_ms
        4, 3, 0, 0, 0, 0, 0, 0,             // consistency: Count (tag 4), 3; padding
    ];

    /// Every consistency level survives the trip in each keyed request, and the archived tag
    /// bytes are the documented ones.
    #[test]
    fn consistency_round_trips_in_every_keyed_request() {
        let levels = [
            (Consistency::Default, [0u8, 0]),
            (Consistency::One, [1, 0]),
            (Consistency::Quorum, [2, 0]),
            (Consistency::All, [3, 0]),
            (Consistency::Count(1), [4, 1]),
            (Consistency::Count(255), [4, 255]),
        ];
        for (c, tag) in levels {
            let mut out = Vec::new();
            let get = GetRequest { key: b"g".to_vec(), consistency: c };
            write_frame(&mut out, Opcode::Get, false, 1, &get).unwrap();
            let (_, body) = body_of(&out);
            let a = access::<ArchivedGetRequest>(&body).unwrap();
            assert_eq!(a.consistency.to_native(), c);
            assert_eq!(to_owned::<GetRequest, _>(a).unwrap(), get);
            // The root is the key's pointer and length, then the consistency's two bytes.
            let root = body.len() - std::mem::size_of::<ArchivedGetRequest>();
            assert_eq!(&body[root + 8..root + 10], &tag, "{c:?}");

            let mut out = Vec::new();
            let del = DeleteRequest { key: b"d".to_vec(), consistency: c };
            write_frame(&mut out, Opcode::Delete, false, 2, &del).unwrap();
            let (_, body) = body_of(&out);
            let a = access::<ArchivedDeleteRequest>(&body).unwrap();
            assert_eq!(to_owned::<DeleteRequest, _>(a).unwrap(), del);
        }
    }

    /// The archived sizes the `## Format` sections state.
    #[test]
    fn archived_enum_sizes_are_as_documented() {
        use std::mem::{align_of, size_of};
        assert_eq!((size_of::<ArchivedConsistency>(), align_of::<ArchivedConsistency>()), (2, 1));
        assert_eq!((size_of::<ArchivedErrorDetail>(), align_of::<ArchivedErrorDetail>()), (3, 1));
    }

    /// A consistency tag this version does not define is refused by validation, not misread.
    #[test]
    fn unknown_consistency_tag_is_invalid() {
        let mut out = Vec::new();
        let get = GetRequest { key: b"g".to_vec(), consistency: Consistency::All };
        write_frame(&mut out, Opcode::Get, false, 1, &get).unwrap();
        let (_, mut body) = body_of(&out);
        let root = body.len() - std::mem::size_of::<ArchivedGetRequest>();
        for bad in [5u8, 0x7f, 0xff] {
            body[root + 8] = bad;
            assert!(access::<ArchivedGetRequest>(&body).is_err(), "tag {bad}");
        }
    }

    /// Error details survive the trip with their numbers, and print as the CLI shows them.
    #[test]
    fn error_detail_round_trips() {
        let cases = [
            (ErrorCode::Unavailable, ErrorDetail::Unavailable { needed: 2, alive: 1 }),
            (ErrorCode::Timeout, ErrorDetail::Timeout { acknowledged: 1, needed: 2 }),
            (ErrorCode::InvalidRequest, ErrorDetail::None),
        ];
        let mut out = Vec::new();
        for (i, (code, detail)) in cases.iter().enumerate() {
            write_error_detail(&mut out, i as u64, *code, *detail, "why");
        }
        write_error(&mut out, 9, ErrorCode::Internal, "plain");
        let mut at = 0;
        for (i, (code, detail)) in cases.iter().enumerate() {
            let (h, body) = body_of(&out[at..]);
            at += FRAME_HEADER_BYTES + h.body_len as usize;
            assert_eq!((h.opcode, h.request_id), (Opcode::Error, i as u64));
            let e = access::<ArchivedErrorResponse>(&body).unwrap();
            assert_eq!(ErrorCode::from_u16(e.code.to_native()), *code);
            assert_eq!(e.detail.to_native(), *detail);
            let back: ErrorResponse = to_owned(e).unwrap();
            assert_eq!(back, ErrorResponse::with_detail(*code, *detail, "why"));
        }
        let (_, body) = body_of(&out[at..]);
        let e = access::<ArchivedErrorResponse>(&body).unwrap();
        assert_eq!(e.detail.to_native(), ErrorDetail::None);
        assert_eq!(
            ErrorDetail::Unavailable { needed: 2, alive: 1 }.to_string(),
            "needed 2, alive 1"
        );
        assert_eq!(
            ErrorDetail::Timeout { acknowledged: 1, needed: 2 }.to_string(),
            "1 of 2 acknowledged"
        );
        assert_eq!(ErrorDetail::None.to_string(), "");
    }

    #[test]
    fn topology_and_error_round_trip() {
        let topo = TopologyResponse {
            version: 3,
            self_id: 9,
            replication_factor: 3,
            nodes: vec![NodeInfo {
                id: 9,
                addr: "127.0.0.1:7000".into(),
                shard_ports: vec![7001, 7002],
                tokens: vec![1, 2, 3],
                status: NodeStatus::Up,
            }],
        };
        let mut out = Vec::new();
        write_frame(&mut out, Opcode::Topology, true, 1, &topo).unwrap();
        write_error(&mut out, 2, ErrorCode::TooLarge, "x".repeat(5000));
        let (h1, b1) = body_of(&out);
        let back: TopologyResponse =
            to_owned(access::<ArchivedTopologyResponse>(&b1).unwrap()).unwrap();
        assert_eq!(back, topo);
        let (h2, b2) = body_of(&out[FRAME_HEADER_BYTES + h1.body_len as usize..]);
        assert_eq!(h2.opcode, Opcode::Error);
        let e = access::<ArchivedErrorResponse>(&b2).unwrap();
        assert_eq!(ErrorCode::from_u16(e.code.to_native()), ErrorCode::TooLarge);
        assert_eq!(e.message.len(), ERROR_MESSAGE_BYTES_MAX);
    }

    fn stats_sample() -> StatsResponse {
        let counters = |puts: u64| {
            vec![
                Counter { name: "puts".into(), value: puts },
                Counter { name: "l0_tables".into(), value: 2 },
                Counter { name: "table_bytes".into(), value: u64::MAX },
            ]
        };
        StatsResponse {
            node_id: 0x5c0f_3e1a_9b7d_2c44,
            shard_count: 3,
            shards: vec![
                ShardStats { shard: 0, counters: counters(10) },
                ShardStats { shard: 2, counters: counters(7) },
            ],
            missing: vec![1],
        }
    }

    #[test]
    fn stats_round_trip() {
        let stats = stats_sample();
        let mut out = Vec::new();
        write_empty_frame(&mut out, Opcode::Stats, false, 5);
        write_frame(&mut out, Opcode::Stats, true, 5, &stats).unwrap();
        let (h1, b1) = body_of(&out);
        assert_eq!((h1.opcode, h1.response, h1.body_len), (Opcode::Stats, false, 0));
        assert!(b1.is_empty());
        let (h2, b2) = body_of(&out[FRAME_HEADER_BYTES..]);
        assert_eq!((h2.opcode, h2.response, h2.request_id), (Opcode::Stats, true, 5));
        let a = access::<ArchivedStatsResponse>(&b2).unwrap();
        assert_eq!(a.shards.len(), 2);
        assert_eq!(a.shards[1].counters[0].name.as_str(), "puts");
        assert_eq!(a.shards[1].counters[0].value.to_native(), 7);
        let back: StatsResponse = to_owned(a).unwrap();
        assert_eq!(back, stats);
        assert_eq!(back.check(), Ok(()));
        // A truncated body never validates.
        for cut in [0, 1, b2.len() / 2, b2.len() - 1] {
            let mut short: AlignedVec = AlignedVec::new();
            short.extend_from_slice(&b2[..cut]);
            assert!(access::<ArchivedStatsResponse>(&short).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn stats_check_refuses_inconsistent_responses() {
        let mut s = stats_sample();
        s.missing.clear();
        assert!(s.check().is_ok(), "a shard neither answered nor missing is tolerated");
        let mut s = stats_sample();
        s.missing.push(0);
        assert!(s.check().unwrap_err().contains("twice"));
        let mut s = stats_sample();
        s.shards[0].shard = 3;
        assert!(s.check().unwrap_err().contains("shard_count"));
        let mut s = stats_sample();
        s.shard_count = u32::from(SHARDS_MAX) + 1;
        assert!(s.check().is_err());
        let mut s = stats_sample();
        s.shards[0].counters.push(Counter { name: "puts".into(), value: 1 });
        assert!(s.check().unwrap_err().contains("appears twice"));
        let mut s = stats_sample();
        s.shards[0].counters[0].name = "x".repeat(STATS_COUNTER_NAME_BYTES_MAX + 1);
        assert!(s.check().unwrap_err().contains("too long"));
        let mut s = stats_sample();
        s.shards[0].counters = (0..=STATS_COUNTERS_PER_SHARD_MAX)
            .map(|i| Counter { name: format!("c{i}"), value: 0 })
            .collect();
        assert!(s.check().unwrap_err().contains("counters"));
    }

    #[test]
    fn garbage_bodies_are_rejected_not_trusted() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut rejected = 0;
        for _ in 0..20_000 {
            let len = rng.gen_range(0..64);
            let mut body: AlignedVec = AlignedVec::new();
            for _ in 0..len {
                body.push(rng.gen());
            }
            if access::<ArchivedPutRequest>(&body).is_err() {
                rejected += 1;
            }
            let _ = access::<ArchivedTopologyResponse>(&body);
            let _ = access::<ArchivedGetResponse>(&body);
            let _ = access::<ArchivedStatsResponse>(&body);
            let _ = access::<ArchivedGetRequest>(&body);
            let _ = access::<ArchivedErrorResponse>(&body);
        }
        assert!(rejected > 19_000, "random bytes should almost never validate: {rejected}");
    }
}
