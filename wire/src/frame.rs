//! The frame header and the codec that cuts a byte stream into frames.
//!
//! ## Format
//! See the crate docs: a 24-byte little-endian header (magic, version, opcode, flags,
//! request id, body length, reserved) followed by the body.
//!
//! Decoding tells [`FrameError::Incomplete`] (read more bytes) from the invalid cases (close the
//! connection after answering with an error frame): the reader never guesses where a frame
//! starts after garbage.

use crate::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES};

/// "KVS1" as a little-endian u32.
pub const MAGIC: u32 = 0x4B56_5331;
/// The protocol version this crate speaks. Only this version is accepted: a frame of any other
/// version is refused with [`FrameError::BadVersion`] (history in [`crate::msg`]).
pub const PROTOCOL_VERSION: u16 = 4;
/// Bit set in the opcode of every response.
pub const RESPONSE_BIT: u8 = 0x80;

/// What a frame is. Responses carry the request's opcode with [`RESPONSE_BIT`] set, or
/// [`Opcode::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// No-op that touches no storage: the ceiling of the network path. Empty body.
    Ping = 1,
    /// The node's topology: ids, shard ports, tokens. Empty request body.
    Topology = 2,
    /// Read one key.
    Get = 3,
    /// Write one key.
    Put = 4,
    /// Delete one key (writes a tombstone).
    Delete = 5,
    /// Every shard's engine counters, from any port of a node. Empty request body.
    Stats = 6,
    /// Node to node, on the node-level port: opens a gossip exchange; the body is a
    /// `peer::PeerEnvelope` of a Syn, the response one of an Ack.
    GossipSyn = 0x20,
    /// Node to node: the last step of an exchange; the body is a `peer::PeerEnvelope` of an
    /// Ack2, the response is empty.
    GossipAck2 = 0x21,
    /// The membership as the answering node sees it (`kvs status`, `kvs ring`), from its
    /// node-level port. Empty request body; the response is a `peer::ClusterStatusResponse`.
    ClusterStatus = 0x22,
    /// Node to node: the authentication handshake of a replica link (`peer::PeerHello`);
    /// a connection must finish it before it may send `ReplicaWrite` or `ReplicaRead`.
    PeerHello = 0x23,
    /// Node to node: apply one replica copy (`peer::ReplicaWriteRequest`) on the owning
    /// shard; the response is empty.
    ReplicaWrite = 0x24,
    /// Node to node: read one replica (`peer::ReplicaReadRequest`); the response is a
    /// `peer::ReplicaReadResponse`.
    ReplicaRead = 0x25,
    /// Node to node, on a replica link: one page of a shard's keys in token ranges
    /// (`peer::StreamScanRequest`); the response is a `peer::StreamScanResponse`.
    StreamScan = 0x26,
    /// Node to node, on a replica link: apply streamed versions on one shard
    /// (`peer::StreamApplyRequest`); the response is empty.
    StreamApply = 0x27,
    /// Operator to node, on its node-level port: stream this node's ranges to the nodes that
    /// take them over, then leave the ring (`peer::AdminRequest`, target its id). The response
    /// (empty) says the decommission started; its progress shows in `ClusterStatus`.
    Decommission = 0x28,
    /// Operator to node, on its node-level port: re-replicate the ranges of a dead node
    /// (`peer::AdminRequest`, target its id) from the survivors and remove it from the ring. The
    /// response (empty) says the removal started; its progress shows in `ClusterStatus`.
    RemoveNode = 0x29,
    /// An error response; body is an `ErrorResponse`.
    Error = 0x7F,
}

impl Opcode {
    /// Every opcode, for tests and documentation. The numbers are part of the protocol: never
    /// renumber, only add.
    pub const ALL: [Opcode; 17] = [
        Opcode::Ping,
        Opcode::Topology,
        Opcode::Get,
        Opcode::Put,
        Opcode::Delete,
        Opcode::Stats,
        Opcode::GossipSyn,
        Opcode::GossipAck2,
        Opcode::ClusterStatus,
        Opcode::PeerHello,
        Opcode::ReplicaWrite,
        Opcode::ReplicaRead,
        Opcode::StreamScan,
        Opcode::StreamApply,
        Opcode::Decommission,
        Opcode::RemoveNode,
        Opcode::Error,
    ];

    /// Decodes the low 7 bits of an opcode byte.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        match v & !RESPONSE_BIT {
            1 => Some(Opcode::Ping),
            2 => Some(Opcode::Topology),
            3 => Some(Opcode::Get),
            4 => Some(Opcode::Put),
            5 => Some(Opcode::Delete),
            6 => Some(Opcode::Stats),
            0x20 => Some(Opcode::GossipSyn),
            0x21 => Some(Opcode::GossipAck2),
            0x22 => Some(Opcode::ClusterStatus),
            0x23 => Some(Opcode::PeerHello),
            0x24 => Some(Opcode::ReplicaWrite),
            0x25 => Some(Opcode::ReplicaRead),
            0x26 => Some(Opcode::StreamScan),
            0x27 => Some(Opcode::StreamApply),
            0x28 => Some(Opcode::Decommission),
            0x29 => Some(Opcode::RemoveNode),
            0x7F => Some(Opcode::Error),
            _ => None,
        }
    }
}

/// A decoded, validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub opcode: Opcode,
    /// True for a response frame.
    pub response: bool,
    pub request_id: u64,
    pub body_len: u32,
}

/// Why bytes are not (yet) a frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Not enough bytes yet; `needed` more would complete the header.
    #[error("incomplete frame header: {needed} more bytes needed")]
    Incomplete { needed: usize },
    #[error("bad magic 0x{got:08x} (expected 0x{MAGIC:08x}): not a kvs client or server")]
    BadMagic { got: u32 },
    #[error(
        "unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION}): client and \
         server are from different kvs releases; upgrade the older one"
    )]
    BadVersion { got: u16 },
    #[error("unknown opcode 0x{got:02x}")]
    BadOpcode { got: u8 },
    #[error("reserved header fields must be zero")]
    Reserved,
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: u32, max: u32 },
}

impl FrameHeader {
    /// A request header.
    pub fn request(opcode: Opcode, request_id: u64, body_len: u32) -> FrameHeader {
        FrameHeader { opcode, response: false, request_id, body_len }
    }

    /// A response header.
    pub fn response(opcode: Opcode, request_id: u64, body_len: u32) -> FrameHeader {
        FrameHeader { opcode, response: true, request_id, body_len }
    }

    /// Encodes the header into 24 bytes.
    pub fn encode(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        let op = self.opcode as u8 | if self.response { RESPONSE_BIT } else { 0 };
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out[6] = op;
        out[7] = 0;
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.body_len.to_le_bytes());
        out
    }

    /// Decodes and validates a header from the start of `bytes`, checking the body length
    /// against `body_bytes_max` (itself capped by [`FRAME_BODY_BYTES_MAX`]).
    pub fn decode(bytes: &[u8], body_bytes_max: u32) -> Result<FrameHeader, FrameError> {
        let Some(h) = bytes.get(..FRAME_HEADER_BYTES) else {
            return Err(FrameError::Incomplete { needed: FRAME_HEADER_BYTES - bytes.len() });
        };
        let h: &[u8; FRAME_HEADER_BYTES] = h.try_into().map_err(|_| FrameError::Reserved)?;
        let [m0, m1, m2, m3, v0, v1, op, flags, r0, r1, r2, r3, r4, r5, r6, r7, l0, l1, l2, l3, z0, z1, z2, z3] =
            *h;
        let magic = u32::from_le_bytes([m0, m1, m2, m3]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { got: magic });
        }
        let version = u16::from_le_bytes([v0, v1]);
        if version != PROTOCOL_VERSION {
            return Err(FrameError::BadVersion { got: version });
        }
        let opcode = Opcode::from_u8(op).ok_or(FrameError::BadOpcode { got: op })?;
        // Bytes 20..24 carry the topology epoch in responses; requests leave them zero.
        let response = op & RESPONSE_BIT != 0;
        if flags != 0 || (!response && [z0, z1, z2, z3] != [0; 4]) {
            return Err(FrameError::Reserved);
        }
        let body_len = u32::from_le_bytes([l0, l1, l2, l3]);
        let max = body_bytes_max.min(FRAME_BODY_BYTES_MAX);
        if body_len > max {
            return Err(FrameError::TooLarge { len: body_len, max });
        }
        Ok(FrameHeader {
            opcode,
            response: op & RESPONSE_BIT != 0,
            request_id: u64::from_le_bytes([r0, r1, r2, r3, r4, r5, r6, r7]),
            body_len,
        })
    }
}

/// The topology epoch of a topology version: its low 32 bits, 0 mapped to 1 (0 means "not
/// told"). Versions only grow, and a change moves the low bits unless it jumps by a multiple
/// of 2^32, so a client comparing epochs notices a change with no new field in any message.
pub fn topology_epoch_of(version: u64) -> u32 {
    (version as u32).max(1)
}

/// The topology epoch a response header carries (0: none, or `header` too short).
pub fn topology_epoch(header: &[u8]) -> u32 {
    header.get(20..24).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_le_bytes)
}

/// Writes `epoch` into every response header among the whole frames in `frames` (frames
/// back to back from the start, as a connection's output buffer holds them); stops at the
/// first incomplete one.
pub fn stamp_topology_epoch(frames: &mut [u8], epoch: u32) {
    let mut at = 0usize;
    while let Some(header) = frames.get_mut(at..at + FRAME_HEADER_BYTES) {
        let body_len = header
            .get(16..20)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_le_bytes);
        if header.get(6).is_some_and(|op| op & RESPONSE_BIT != 0) {
            if let Some(field) = header.get_mut(20..24) {
                field.copy_from_slice(&epoch.to_le_bytes());
            }
        }
        at = at.saturating_add(FRAME_HEADER_BYTES).saturating_add(body_len as usize);
    }
}

/// Appends a whole frame (header and body) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, header: FrameHeader, body: &[u8]) {
    debug_assert_eq!(header.body_len as usize, body.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for op in Opcode::ALL {
            for response in [false, true] {
                let h = FrameHeader {
                    opcode: op,
                    response,
                    request_id: 0xDEAD_BEEF_0102,
                    body_len: 77,
                };
                assert_eq!(FrameHeader::decode(&h.encode(), 1000), Ok(h));
            }
        }
    }

    #[test]
    fn opcode_numbers_are_stable() {
        let numbers: Vec<u8> = Opcode::ALL.iter().map(|op| *op as u8).collect();
        assert_eq!(
            numbers,
            vec![
                1, 2, 3, 4, 5, 6, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x7F
            ]
        );
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u8(op as u8), Some(op));
            assert_eq!(Opcode::from_u8(op as u8 | RESPONSE_BIT), Some(op));
        }
        for unknown in [0u8, 7, 0x33, 0x7E] {
            assert_eq!(Opcode::from_u8(unknown), None);
        }
    }

    #[test]
    fn header_golden_bytes() {
        let h = FrameHeader::request(Opcode::Get, 1, 2);
        assert_eq!(
            h.encode(),
            [0x31, 0x53, 0x56, 0x4B, 4, 0, 3, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        let h = FrameHeader::response(Opcode::Stats, 7, 0);
        assert_eq!(
            h.encode(),
            [0x31, 0x53, 0x56, 0x4B, 4, 0, 0x86, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn responses_carry_the_topology_epoch_and_requests_may_not() {
        let mut frames = Vec::new();
        encode_frame(&mut frames, FrameHeader::response(Opcode::Get, 1, 3), b"abc");
        encode_frame(&mut frames, FrameHeader::request(Opcode::Ping, 2, 0), b"");
        encode_frame(&mut frames, FrameHeader::response(Opcode::Ping, 3, 0), b"");
        stamp_topology_epoch(&mut frames, 0xDEAD_BEEF);
        assert_eq!(topology_epoch(&frames), 0xDEAD_BEEF);
        let second = &frames[FRAME_HEADER_BYTES + 3..];
        assert_eq!(topology_epoch(second), 0, "requests are left alone");
        let third = &second[FRAME_HEADER_BYTES..];
        assert_eq!(topology_epoch(third), 0xDEAD_BEEF);
        assert_eq!(FrameHeader::decode(&frames, 100).unwrap().request_id, 1);
        let mut req = FrameHeader::request(Opcode::Ping, 2, 0).encode();
        req[20] = 1;
        assert_eq!(FrameHeader::decode(&req, 100), Err(FrameError::Reserved));
        assert_eq!(topology_epoch_of(0), 1);
        assert_eq!(topology_epoch_of((7 << 32) | 5), 5);
        // A cut buffer is stamped up to its last whole header.
        stamp_topology_epoch(&mut frames[..30], 1);
    }

    #[test]
    fn rejects_bad_headers() {
        let good = FrameHeader::request(Opcode::Put, 9, 10).encode();
        assert_eq!(
            FrameHeader::decode(&good[..10], 100),
            Err(FrameError::Incomplete { needed: 14 })
        );
        let mut b = good;
        b[0] ^= 1;
        assert!(matches!(FrameHeader::decode(&b, 100), Err(FrameError::BadMagic { .. })));
        let mut b = good;
        b[4] = 5;
        assert_eq!(FrameHeader::decode(&b, 100), Err(FrameError::BadVersion { got: 5 }));
        // Older versions (1 before `PutRequest::ttl_ms`, 2 before the request consistency and
        // error details, 3 before the node status in the topology) are refused, not misread,
        // and the error says what to do.
        for old in [1u8, 2, 3] {
            let mut b = good;
            b[4] = old;
            let err = FrameHeader::decode(&b, 100).unwrap_err();
            assert_eq!(err, FrameError::BadVersion { got: u16::from(old) });
            let text = err.to_string();
            assert!(
                text.contains(&format!("version {old}")) && text.contains("speaks 4"),
                "{text}"
            );
            assert!(text.contains("upgrade"), "{text}");
        }
        let mut b = good;
        b[6] = 0x33;
        assert_eq!(FrameHeader::decode(&b, 100), Err(FrameError::BadOpcode { got: 0x33 }));
        let mut b = good;
        b[21] = 1;
        assert_eq!(FrameHeader::decode(&b, 100), Err(FrameError::Reserved));
        let huge = FrameHeader::request(Opcode::Put, 9, u32::MAX).encode();
        assert_eq!(
            FrameHeader::decode(&huge, u32::MAX),
            Err(FrameError::TooLarge { len: u32::MAX, max: FRAME_BODY_BYTES_MAX })
        );
        assert_eq!(FrameHeader::decode(&good, 5), Err(FrameError::TooLarge { len: 10, max: 5 }));
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100_000 {
            let len = rng.gen_range(0..40);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = FrameHeader::decode(&bytes, FRAME_BODY_BYTES_MAX);
        }
    }
}
