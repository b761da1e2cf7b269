//! The WAL record payload: what one put or delete looks like inside a log frame. Pure.
//!
//! ## Format
//!
//! Little-endian, fixed-width integers, no padding (framing and checksum are kvs-io's):
//!
//! ```text
//! kinds 1 (put) and 2 (delete): a 25-byte header
//! 0      1          9           17             21               25         25+K
//! +------+----------+-----------+--------------+----------------+----------+-----------+
//! | kind | hlc u64  | node u64  | key_len u32  | value_len u32  | key (K)  | value (V) |
//! | u8   |          |           | = K          | = V            |          |           |
//! +------+----------+-----------+--------------+----------------+----------+-----------+
//!
//! kind 3 (put with expiry): a 33-byte header
//! 0      1          9           17             21               25                 33       33+K
//! +------+----------+-----------+--------------+----------------+------------------+--------+---------+
//! | kind | hlc u64  | node u64  | key_len u32  | value_len u32  | expires_at_ms u64| key (K)| value(V)|
//! +------+----------+-----------+--------------+----------------+------------------+--------+---------+
//! kind: 1 = put, 2 = delete (a delete has V = 0 and no value bytes), 3 = put that expires
//! ```
//!
//! Kind 3 was added with per-key TTL; kinds 1 and 2 are unchanged, so WAL files written before
//! it replay as they did. A put without expiry is always written as kind 1. `expires_at_ms` is
//! wall-clock milliseconds since the Unix epoch; any value is accepted (one in the past simply
//! reads as expired).
//!
//! ## Invariants
//! - `K <= KEY_BYTES_MAX`, `V <= VALUE_BYTES_MAX`, and the payload is exactly
//!   `header + K + V` bytes (header 25, or 33 for kind 3); the decoder rejects anything else.

use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::types::Stamp;

/// Bytes before the key in a put (kind 1) or delete (kind 2) record.
pub const RECORD_HEADER_BYTES: u64 = 25;
/// Bytes before the key in a put-with-expiry (kind 3) record: the header plus the expiry.
pub const EXPIRING_RECORD_HEADER_BYTES: u64 = RECORD_HEADER_BYTES + 8;
/// The longest header of any record kind.
pub const RECORD_HEADER_BYTES_MAX: u64 = EXPIRING_RECORD_HEADER_BYTES;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_PUT_EXPIRING: u8 = 3;

/// A decoded WAL record, borrowing from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalRecord<'a> {
    /// A put (kind 1 without expiry, kind 3 with).
    Put {
        /// Version.
        stamp: Stamp,
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// When the value expires, ms since the Unix epoch; `None` = never.
        expires_at_ms: Option<u64>,
    },
    /// A delete (tombstone).
    Delete {
        /// Version.
        stamp: Stamp,
        /// Key.
        key: &'a [u8],
    },
}

/// Why a payload that passed its checksum does not decode.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordDecodeError {
    /// Shorter than the fixed header of its kind.
    #[error("record of {len} bytes is shorter than its {header_bytes}-byte header")]
    Short {
        /// Payload length.
        len: u64,
        /// The header length of the record's kind (the shortest one if the kind is unknown).
        header_bytes: u64,
    },
    /// Unknown kind byte.
    #[error("unknown record kind {kind}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A length field is over its limit.
    #[error("key of {key_bytes} or value of {value_bytes} bytes over the limit")]
    TooLarge {
        /// Key length field.
        key_bytes: u64,
        /// Value length field.
        value_bytes: u64,
    },
    /// The lengths do not add up to the payload size.
    #[error("lengths declare {declared} bytes but the record has {actual}")]
    LengthMismatch {
        /// Header + key + value per the fields.
        declared: u64,
        /// Actual payload length.
        actual: u64,
    },
    /// A delete carries a value.
    #[error("delete record carries a {value_bytes}-byte value")]
    DeleteWithValue {
        /// Value length field.
        value_bytes: u64,
    },
}

impl WalRecord<'_> {
    /// Bytes of the header of this record's kind.
    fn header_bytes(&self) -> u64 {
        match self {
            WalRecord::Put { expires_at_ms: Some(_), .. } => EXPIRING_RECORD_HEADER_BYTES,
            WalRecord::Put { .. } | WalRecord::Delete { .. } => RECORD_HEADER_BYTES,
        }
    }

    /// Bytes of the encoded payload.
    pub fn encoded_bytes(&self) -> u64 {
        let body = match self {
            WalRecord::Put { key, value, .. } => key.len() as u64 + value.len() as u64,
            WalRecord::Delete { key, .. } => key.len() as u64,
        };
        self.header_bytes() + body
    }

    /// Encodes the payload. The caller has checked key and value against the limits.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, stamp, key, value, expires_at_ms): (u8, Stamp, &[u8], &[u8], Option<u64>) =
            match *self {
                WalRecord::Put { stamp, key, value, expires_at_ms: None } => {
                    (KIND_PUT, stamp, key, value, None)
                }
                WalRecord::Put { stamp, key, value, expires_at_ms: Some(at) } => {
                    (KIND_PUT_EXPIRING, stamp, key, value, Some(at))
                }
                WalRecord::Delete { stamp, key } => (KIND_DELETE, stamp, key, &[], None),
            };
        debug_assert!(key.len() as u64 <= KEY_BYTES_MAX && value.len() as u64 <= VALUE_BYTES_MAX);
        let mut out = Vec::with_capacity(usize::try_from(self.encoded_bytes()).unwrap_or(0));
        out.push(kind);
        out.extend_from_slice(&stamp.hlc.to_le_bytes());
        out.extend_from_slice(&stamp.node.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        if let Some(at) = expires_at_ms {
            out.extend_from_slice(&at.to_le_bytes());
        }
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        debug_assert_eq!(out.len() as u64, self.encoded_bytes());
        out
    }

    /// Decodes and validates a payload.
    pub fn decode(bytes: &[u8]) -> Result<WalRecord<'_>, RecordDecodeError> {
        let actual = bytes.len() as u64;
        let kind = bytes.first().copied().unwrap_or(0);
        let header_bytes = match kind {
            KIND_PUT_EXPIRING => EXPIRING_RECORD_HEADER_BYTES,
            _ => RECORD_HEADER_BYTES,
        };
        if actual < header_bytes {
            return Err(RecordDecodeError::Short { len: actual, header_bytes });
        }
        let (head, body) = bytes.split_at(header_bytes as usize);
        let hlc = u64::from_le_bytes(array(head, 1));
        let node = u64::from_le_bytes(array(head, 9));
        let key_bytes = u64::from(u32::from_le_bytes(array(head, 17)));
        let value_bytes = u64::from(u32::from_le_bytes(array(head, 21)));
        if !matches!(kind, KIND_PUT | KIND_DELETE | KIND_PUT_EXPIRING) {
            return Err(RecordDecodeError::UnknownKind { kind });
        }
        if key_bytes > KEY_BYTES_MAX || value_bytes > VALUE_BYTES_MAX {
            return Err(RecordDecodeError::TooLarge { key_bytes, value_bytes });
        }
        let declared = header_bytes + key_bytes + value_bytes;
        if declared != actual {
            return Err(RecordDecodeError::LengthMismatch { declared, actual });
        }
        let (key, value) = body.split_at(key_bytes as usize);
        let stamp = Stamp { hlc, node };
        match kind {
            KIND_PUT => Ok(WalRecord::Put { stamp, key, value, expires_at_ms: None }),
            KIND_PUT_EXPIRING => {
                let at = u64::from_le_bytes(array(head, RECORD_HEADER_BYTES as usize));
                Ok(WalRecord::Put { stamp, key, value, expires_at_ms: Some(at) })
            }
            _ if value_bytes != 0 => Err(RecordDecodeError::DeleteWithValue { value_bytes }),
            _ => Ok(WalRecord::Delete { stamp, key }),
        }
    }
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stamp = Stamp { hlc: 0x0102_0304_0506_0708, node: 9 };

    fn put<'a>(key: &'a [u8], value: &'a [u8], expires_at_ms: Option<u64>) -> WalRecord<'a> {
        WalRecord::Put { stamp: S, key, value, expires_at_ms }
    }

    #[test]
    fn round_trip_and_layout() {
        let put1 = put(b"key", b"value", None);
        let bytes = put1.encode();
        assert_eq!(bytes.len() as u64, put1.encoded_bytes());
        assert_eq!(bytes.len(), 25 + 3 + 5);
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..9], &S.hlc.to_le_bytes());
        assert_eq!(&bytes[17..21], &3u32.to_le_bytes());
        assert_eq!(&bytes[25..28], b"key");
        assert_eq!(WalRecord::decode(&bytes), Ok(put1));
        let del = WalRecord::Delete { stamp: S, key: b"" };
        assert_eq!(WalRecord::decode(&del.encode()), Ok(del));
    }

    #[test]
    fn expiring_put_round_trips_as_kind_3() {
        for at in [0, 1, 1_700_000_000_123, u64::MAX] {
            let rec = put(b"key", b"value", Some(at));
            let bytes = rec.encode();
            assert_eq!(bytes.len() as u64, rec.encoded_bytes());
            assert_eq!(bytes.len(), 33 + 3 + 5);
            assert_eq!(bytes[0], 3);
            assert_eq!(&bytes[17..21], &3u32.to_le_bytes());
            assert_eq!(&bytes[21..25], &5u32.to_le_bytes());
            assert_eq!(&bytes[25..33], &at.to_le_bytes());
            assert_eq!(&bytes[33..36], b"key");
            assert_eq!(&bytes[36..], b"value");
            assert_eq!(WalRecord::decode(&bytes), Ok(rec));
        }
        // Empty value, and the largest key and value.
        let rec = put(b"k", b"", Some(5));
        assert_eq!(WalRecord::decode(&rec.encode()), Ok(rec));
        let key = vec![7u8; KEY_BYTES_MAX as usize];
        let value = vec![8u8; VALUE_BYTES_MAX as usize];
        let rec = put(&key, &value, Some(5));
        let bytes = rec.encode();
        assert_eq!(bytes.len() as u64, crate::limits::WAL_RECORD_BYTES_MAX);
        assert_eq!(WalRecord::decode(&bytes), Ok(rec));
    }

    /// A kind-1 record from before kind 3 existed (bytes written by hand) still decodes.
    #[test]
    fn a_plain_put_written_by_hand_still_decodes() {
        let mut bytes = vec![1u8];
        bytes.extend_from_slice(&5u64.to_le_bytes());
        bytes.extend_from_slice(&2u64.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(b"kvv");
        assert_eq!(
            WalRecord::decode(&bytes),
            Ok(WalRecord::Put {
                stamp: Stamp { hlc: 5, node: 2 },
                key: b"k",
                value: b"vv",
                expires_at_ms: None
            })
        );
    }

    #[test]
    fn rejects_bad_payloads() {
        let good = put(b"k", b"v", None).encode();
        assert!(matches!(
            WalRecord::decode(&good[..10]),
            Err(RecordDecodeError::Short { len: 10, header_bytes: 25 })
        ));
        assert!(matches!(WalRecord::decode(&[]), Err(RecordDecodeError::Short { len: 0, .. })));
        let mut b = good.clone();
        b[0] = 7;
        assert_eq!(WalRecord::decode(&b), Err(RecordDecodeError::UnknownKind { kind: 7 }));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(WalRecord::decode(&b), Err(RecordDecodeError::LengthMismatch { .. })));
        let mut b = good.clone();
        b[17..21].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(WalRecord::decode(&b), Err(RecordDecodeError::TooLarge { .. })));
        let mut b = good;
        b[0] = 2;
        assert!(matches!(
            WalRecord::decode(&b),
            Err(RecordDecodeError::DeleteWithValue { value_bytes: 1 })
        ));
    }

    #[test]
    fn rejects_bad_expiring_payloads() {
        let good = put(b"k", b"v", Some(42)).encode();
        // Shorter than the 33-byte header, though longer than the 25-byte one.
        assert_eq!(
            WalRecord::decode(&good[..30]),
            Err(RecordDecodeError::Short { len: 30, header_bytes: 33 })
        );
        // Cut by one byte, one byte too many.
        assert!(matches!(
            WalRecord::decode(&good[..good.len() - 1]),
            Err(RecordDecodeError::LengthMismatch { declared: 35, actual: 34 })
        ));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(WalRecord::decode(&b), Err(RecordDecodeError::LengthMismatch { .. })));
        let mut b = good.clone();
        b[21..25].copy_from_slice(&(VALUE_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(WalRecord::decode(&b), Err(RecordDecodeError::TooLarge { .. })));
        // A kind-1 record relabelled as kind 3 (or the reverse) does not add up.
        let mut b = put(b"key", b"value", None).encode();
        b[0] = 3;
        assert!(matches!(
            WalRecord::decode(&b),
            Err(RecordDecodeError::LengthMismatch { declared: 41, actual: 33 })
        ));
        let mut b = good;
        b[0] = 1;
        assert!(matches!(
            WalRecord::decode(&b),
            Err(RecordDecodeError::LengthMismatch { declared: 27, actual: 35 })
        ));
    }
}
