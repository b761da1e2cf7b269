//! The byte layout of a log segment: header, record frames, end marker. Pure code, no I/O.
//!
//! ## Format
//!
//! All integers are little-endian. A segment is one file:
//!
//! ```text
//! offset 0                                                           64
//! +----------------+-------------+-------------+---------------+------------+----------+
//! | magic [u8; 8]  | version u32 | flags u32   | segment_id u64| crc32c u32 | zero x36 |
//! | "KVS-WAL\0"    | = 1         | = 0         |               | of 0..24   |          |
//! +----------------+-------------+-------------+---------------+------------+----------+
//! offset 64: records, back to back, no alignment:
//! +-------------+-------------+-----------------+-------------+-----
//! | len u32     | crc u32     | payload (len)   | len u32     | ...
//! +-------------+-------------+-----------------+-------------+-----
//! A finished segment ends with one seal frame after its last record (24 bytes):
//! +------------------+-------------+-------------+----------------+
//! | len u32          | crc u32     | records u64 | end_offset u64 |
//! | = SEAL_LEN (!0)  |             |             |                |
//! +------------------+-------------+-------------+----------------+
//! then zero bytes ("len = 0, crc = 0") up to the end of the file: the end marker.
//! ```
//!
//! `crc = crc32c_append(crc32c(segment_id as u64 LE), len LE ++ payload)`. Seeding with the
//! segment id means bytes left over from another segment (a recycled file, a stale block)
//! never validate in this one. The seal's crc is computed the same way over `SEAL_LEN` and its
//! 16-byte body; `records` counts the records before it and `end_offset` is the seal's own
//! offset (one past the last record), so a reader can prove it saw the whole segment.
//!
//! ## Invariants
//! - `1 <= len <= RECORD_PAYLOAD_BYTES_MAX` for a record; a zero `len` is the end marker, so a
//!   record payload is never empty; `len = SEAL_LEN` (`u32::MAX`, far over the payload limit)
//!   is a seal and nothing else.
//! - A seal is the last frame of a segment: only zero bytes follow it.
//! - Records are appended in order and never rewritten with different content, so every
//!   prefix of the record sequence that validates was once written in that order.

use crate::checksum;
use std::ops::Range;

/// The magic number at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"KVS-WAL\0";
/// The segment format version this crate writes and reads. Version 2 added the seal frame;
/// version 1 segments are refused ([`crate::HeaderProblem::UnsupportedVersion`]).
pub const SEGMENT_VERSION: u32 = 2;
/// Bytes of the segment header; records start here.
pub const SEGMENT_HEADER_BYTES: u64 = 64;
/// Bytes of the frame before each payload: `len u32` + `crc u32`.
pub const FRAME_HEADER_BYTES: u64 = 8;
/// The largest record payload, a format limit (the reader treats larger lengths as garbage).
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// The I/O block: writes are this aligned and sized; a partial last block is rewritten.
pub const BLOCK_BYTES: u64 = 4096;
/// The reserved `len` value of a seal frame (never a record length: over the payload limit).
pub const SEAL_LEN: u32 = u32::MAX;
/// Bytes of a seal frame's body: `records u64` + `end_offset u64`.
pub const SEAL_BODY_BYTES: u64 = 16;
/// Bytes of a whole seal frame. A writer keeps this much room free at the end of a segment.
pub const SEAL_FRAME_BYTES: u64 = FRAME_HEADER_BYTES + SEAL_BODY_BYTES;

const _: () = assert!(SEGMENT_HEADER_BYTES < BLOCK_BYTES);
const _: () = assert!(RECORD_PAYLOAD_BYTES_MAX < u32::MAX as u64);
const _: () = assert!(BLOCK_BYTES.is_power_of_two());
const _: () = assert!(SEAL_LEN as u64 > RECORD_PAYLOAD_BYTES_MAX);

/// Encodes the header of segment `segment_id`.
pub fn encode_header(segment_id: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut out = [0u8; SEGMENT_HEADER_BYTES as usize];
    let mut w = Cursor::new(&mut out);
    w.put(&SEGMENT_MAGIC);
    w.put(&SEGMENT_VERSION.to_le_bytes());
    w.put(&0u32.to_le_bytes());
    w.put(&segment_id.to_le_bytes());
    let crc = checksum::crc32c(w.written());
    w.put(&crc.to_le_bytes());
    out
}

/// Decodes and validates a segment header, returning its segment id.
pub fn decode_header(bytes: &[u8]) -> Result<u64, crate::HeaderProblem> {
    use crate::HeaderProblem;
    let Some(header) = bytes.get(..SEGMENT_HEADER_BYTES as usize) else {
        return Err(HeaderProblem::Short { file_bytes: bytes.len() as u64 });
    };
    if header.iter().all(|b| *b == 0) {
        return Err(HeaderProblem::Zeroed);
    }
    let magic: [u8; 8] = le_array(header, 0);
    if magic != SEGMENT_MAGIC {
        return Err(HeaderProblem::BadMagic { found: magic });
    }
    let version = u32::from_le_bytes(le_array(header, 8));
    if version != SEGMENT_VERSION {
        return Err(HeaderProblem::UnsupportedVersion { version });
    }
    let segment_id = u64::from_le_bytes(le_array(header, 16));
    let stored = u32::from_le_bytes(le_array(header, 24));
    let computed = checksum::crc32c(header.get(..24).unwrap_or_default());
    if stored != computed {
        return Err(HeaderProblem::ChecksumMismatch { stored, computed });
    }
    Ok(segment_id)
}

/// Bytes a record with `payload_bytes` of payload takes in the log.
pub const fn frame_bytes(payload_bytes: u64) -> u64 {
    FRAME_HEADER_BYTES + payload_bytes
}

/// The record checksum: covers the length and the payload, seeded with the segment id.
pub fn record_crc(segment_id: u64, len: u32, payload: &[u8]) -> u32 {
    let seed = checksum::crc32c(&segment_id.to_le_bytes());
    let crc = checksum::crc32c_append(seed, &len.to_le_bytes());
    checksum::crc32c_append(crc, payload)
}

/// Appends the frame of `payload` to `out`. The caller has checked the payload size.
pub fn encode_frame(segment_id: u64, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!payload.is_empty() && payload.len() as u64 <= RECORD_PAYLOAD_BYTES_MAX);
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(segment_id, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The 16-byte body of a seal frame.
fn seal_body(records: u64, end_offset: u64) -> [u8; SEAL_BODY_BYTES as usize] {
    let mut body = [0u8; SEAL_BODY_BYTES as usize];
    let mut w = Cursor::new(&mut body);
    w.put(&records.to_le_bytes());
    w.put(&end_offset.to_le_bytes());
    body
}

/// Appends the seal frame of a segment holding `records` records that end at `end_offset`
/// (where the seal itself is placed) to `out`.
pub fn encode_seal(segment_id: u64, records: u64, end_offset: u64, out: &mut Vec<u8>) {
    let body = seal_body(records, end_offset);
    out.extend_from_slice(&SEAL_LEN.to_le_bytes());
    out.extend_from_slice(&record_crc(segment_id, SEAL_LEN, &body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Why the log ends in a torn (or garbled) tail rather than a clean end marker.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TornReason {
    /// Fewer than a frame header's bytes remain and they are not all zero.
    ShortFrame {
        /// Bytes left in the file.
        remaining_bytes: u64,
    },
    /// `len` is zero but the crc field is not: not an end marker, not a record.
    ZeroLength {
        /// The crc field found.
        crc: u32,
    },
    /// `len` is larger than [`RECORD_PAYLOAD_BYTES_MAX`].
    LengthTooLarge {
        /// The length field found.
        len: u32,
    },
    /// The frame runs past the end of the file.
    PastEof {
        /// The length field found.
        len: u32,
        /// Bytes left in the file after the frame header.
        remaining_bytes: u64,
    },
    /// The checksum does not match.
    ChecksumMismatch {
        /// The crc stored in the frame.
        stored: u32,
        /// The crc computed over the bytes found.
        computed: u32,
    },
}

impl std::fmt::Display for TornReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TornReason::ShortFrame { remaining_bytes } => {
                write!(f, "{remaining_bytes} non-zero bytes, too short for a frame")
            }
            TornReason::ZeroLength { crc } => write!(f, "zero length with crc {crc:#010x}"),
            TornReason::LengthTooLarge { len } => write!(f, "length {len} over the limit"),
            TornReason::PastEof { len, remaining_bytes } => {
                write!(f, "length {len} runs past end of file ({remaining_bytes} left)")
            }
            TornReason::ChecksumMismatch { stored, computed } => {
                write!(f, "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")
            }
        }
    }
}

/// What [`parse_frame`] found at the start of a byte window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameParse {
    /// A valid record; `payload` indexes the window; `frame_bytes` is how far to advance.
    Record {
        /// Where the payload lies in the window.
        payload: Range<usize>,
        /// The whole frame length.
        frame_bytes: u64,
    },
    /// A seal frame (its checksum verified); the caller checks its claims.
    Seal {
        /// Records the seal says precede it.
        records: u64,
        /// Where the seal says it lies (one past the last record).
        end_offset: u64,
    },
    /// The end marker (or the exact end of the file).
    End,
    /// A torn or garbled frame.
    Torn(TornReason),
    /// The window is too short; read at least `window_bytes` bytes from the same position.
    NeedMore {
        /// Bytes the window must hold.
        window_bytes: u64,
    },
}

/// Parses the frame at the start of `window`. `file_remaining_bytes` counts the bytes from
/// the window start to the end of the file (so the parser can tell a short window from a
/// short file).
pub fn parse_frame(segment_id: u64, window: &[u8], file_remaining_bytes: u64) -> FrameParse {
    let have = window.len() as u64;
    debug_assert!(have <= file_remaining_bytes);
    if file_remaining_bytes < FRAME_HEADER_BYTES {
        if have < file_remaining_bytes {
            return FrameParse::NeedMore { window_bytes: file_remaining_bytes };
        }
        return if window.iter().all(|b| *b == 0) {
            FrameParse::End
        } else {
            FrameParse::Torn(TornReason::ShortFrame { remaining_bytes: file_remaining_bytes })
        };
    }
    if have < FRAME_HEADER_BYTES {
        return FrameParse::NeedMore { window_bytes: FRAME_HEADER_BYTES };
    }
    let len = u32::from_le_bytes(le_array(window, 0));
    let stored = u32::from_le_bytes(le_array(window, 4));
    if len == 0 {
        return if stored == 0 {
            FrameParse::End
        } else {
            FrameParse::Torn(TornReason::ZeroLength { crc: stored })
        };
    }
    if len == SEAL_LEN {
        return parse_seal(segment_id, window, file_remaining_bytes, stored);
    }
    if u64::from(len) > RECORD_PAYLOAD_BYTES_MAX {
        return FrameParse::Torn(TornReason::LengthTooLarge { len });
    }
    let frame = frame_bytes(u64::from(len));
    if frame > file_remaining_bytes {
        return FrameParse::Torn(TornReason::PastEof {
            len,
            remaining_bytes: file_remaining_bytes - FRAME_HEADER_BYTES,
        });
    }
    if have < frame {
        return FrameParse::NeedMore { window_bytes: frame };
    }
    let payload = FRAME_HEADER_BYTES as usize..frame as usize;
    let computed = record_crc(segment_id, len, window.get(payload.clone()).unwrap_or_default());
    if computed != stored {
        return FrameParse::Torn(TornReason::ChecksumMismatch { stored, computed });
    }
    FrameParse::Record { payload, frame_bytes: frame }
}

/// The rest of [`parse_frame`] for a frame whose `len` is [`SEAL_LEN`].
fn parse_seal(
    segment_id: u64,
    window: &[u8],
    file_remaining_bytes: u64,
    stored: u32,
) -> FrameParse {
    if SEAL_FRAME_BYTES > file_remaining_bytes {
        return FrameParse::Torn(TornReason::PastEof {
            len: SEAL_LEN,
            remaining_bytes: file_remaining_bytes - FRAME_HEADER_BYTES,
        });
    }
    if (window.len() as u64) < SEAL_FRAME_BYTES {
        return FrameParse::NeedMore { window_bytes: SEAL_FRAME_BYTES };
    }
    let body =
        window.get(FRAME_HEADER_BYTES as usize..SEAL_FRAME_BYTES as usize).unwrap_or_default();
    let computed = record_crc(segment_id, SEAL_LEN, body);
    if computed != stored {
        return FrameParse::Torn(TornReason::ChecksumMismatch { stored, computed });
    }
    FrameParse::Seal {
        records: u64::from_le_bytes(le_array(body, 0)),
        end_offset: u64::from_le_bytes(le_array(body, 8)),
    }
}

/// Reads `N` bytes at `at`, zero-filled if the slice is short (callers check lengths first).
fn le_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// A tiny bounds-checked writer into a fixed array.
struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.pos..self.pos + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.pos += bytes.len();
        } else {
            debug_assert!(false, "header cursor overflow");
        }
    }
    fn written(&self) -> &[u8] {
        self.buf.get(..self.pos).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HeaderProblem;

    #[test]
    fn header_round_trip() {
        let h = encode_header(42);
        assert_eq!(decode_header(&h), Ok(42));
        assert_eq!(&h[..8], b"KVS-WAL\0");
        assert!(h[28..].iter().all(|b| *b == 0));
    }

    #[test]
    fn header_problems() {
        assert_eq!(decode_header(&[0u8; 10]), Err(HeaderProblem::Short { file_bytes: 10 }));
        assert_eq!(decode_header(&[0u8; 64]), Err(HeaderProblem::Zeroed));
        let mut h = encode_header(7);
        h[20] ^= 1;
        assert!(matches!(decode_header(&h), Err(HeaderProblem::ChecksumMismatch { .. })));
        let mut h = encode_header(7);
        h[8] = 9;
        assert_eq!(decode_header(&h), Err(HeaderProblem::UnsupportedVersion { version: 9 }));
        let mut h = encode_header(7);
        h[0] = b'X';
        assert!(matches!(decode_header(&h), Err(HeaderProblem::BadMagic { .. })));
    }

    #[test]
    fn frame_round_trip_and_end() {
        let mut buf = Vec::new();
        encode_frame(3, b"hello", &mut buf);
        buf.extend_from_slice(&[0u8; 16]);
        let total = buf.len() as u64;
        match parse_frame(3, &buf, total) {
            FrameParse::Record { payload, frame_bytes } => {
                assert_eq!(&buf[payload], b"hello");
                assert_eq!(frame_bytes, 13);
                assert_eq!(parse_frame(3, &buf[13..], total - 13), FrameParse::End);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seal_round_trip_and_damage() {
        let mut buf = Vec::new();
        encode_seal(5, 17, 4242, &mut buf);
        assert_eq!(buf.len() as u64, SEAL_FRAME_BYTES);
        assert_eq!(&buf[..4], &[0xff; 4]);
        buf.extend_from_slice(&[0u8; 8]);
        let total = buf.len() as u64;
        assert_eq!(parse_frame(5, &buf, total), FrameParse::Seal { records: 17, end_offset: 4242 });
        assert_eq!(parse_frame(5, &buf[..10], total), FrameParse::NeedMore { window_bytes: 24 });
        assert!(matches!(
            parse_frame(6, &buf, total),
            FrameParse::Torn(TornReason::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            parse_frame(5, &buf[..20], 20),
            FrameParse::Torn(TornReason::PastEof { len: SEAL_LEN, remaining_bytes: 12 })
        ));
        let mut bad = buf.clone();
        bad[12] ^= 1;
        assert!(matches!(
            parse_frame(5, &bad, total),
            FrameParse::Torn(TornReason::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn other_segment_never_validates() {
        let mut buf = Vec::new();
        encode_frame(3, b"hello", &mut buf);
        assert!(matches!(
            parse_frame(4, &buf, buf.len() as u64),
            FrameParse::Torn(TornReason::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn torn_cases() {
        let mut buf = Vec::new();
        encode_frame(1, &[7u8; 100], &mut buf);
        // Cut inside the payload: runs past EOF.
        assert!(matches!(
            parse_frame(1, &buf[..50], 50),
            FrameParse::Torn(TornReason::PastEof { len: 100, .. })
        ));
        // Short window but long file: need more.
        assert_eq!(parse_frame(1, &buf[..50], 1000), FrameParse::NeedMore { window_bytes: 108 });
        assert_eq!(parse_frame(1, &buf[..3], 1000), FrameParse::NeedMore { window_bytes: 8 });
        // Cut inside the frame header.
        assert!(matches!(
            parse_frame(1, &buf[..5], 5),
            FrameParse::Torn(TornReason::ShortFrame { remaining_bytes: 5 })
        ));
        assert_eq!(parse_frame(1, &[0u8; 5], 5), FrameParse::End);
        assert_eq!(parse_frame(1, &[], 0), FrameParse::End);
        // Flipped payload bit.
        let mut bad = buf.clone();
        bad[60] ^= 0x10;
        assert!(matches!(
            parse_frame(1, &bad, bad.len() as u64),
            FrameParse::Torn(TornReason::ChecksumMismatch { .. })
        ));
        // Huge length.
        let mut huge = vec![0xfeu8; 8];
        huge.extend_from_slice(&[0u8; 8]);
        assert!(matches!(
            parse_frame(1, &huge, 16),
            FrameParse::Torn(TornReason::LengthTooLarge { .. })
        ));
        // The seal's length marker over garbage or a short file is torn too.
        huge[..4].copy_from_slice(&SEAL_LEN.to_le_bytes());
        assert!(matches!(parse_frame(1, &huge, 16), FrameParse::Torn(TornReason::PastEof { .. })));
        huge.extend_from_slice(&[0u8; 8]);
        assert!(matches!(
            parse_frame(1, &huge, 24),
            FrameParse::Torn(TornReason::ChecksumMismatch { .. })
        ));
        // Zero length with non-zero crc.
        let zl = [0, 0, 0, 0, 1, 0, 0, 0];
        assert!(matches!(
            parse_frame(1, &zl, 8),
            FrameParse::Torn(TornReason::ZeroLength { crc: 1 })
        ));
    }
}
