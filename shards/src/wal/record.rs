//! The WAL record payload: what one put or delete looks like inside a log frame. Pure.
//!
//! ## Format
//!
//! Little-endian, fixed-width integers, no padding (framing and checksum are kvs-io's):
//!
//! ```text
//! 0      1          9           17             21               25         25+K
//! +------+----------+-----------+--------------+----------------+----------+-----------+
//! | kind | hlc u64  | node u64  | key_len u32  | value_len u32  | key (K)  | value (V) |
//! | u8   |          |           | = K          | = V            |          |           |
//! +------+----------+-----------+--------------+----------------+----------+-----------+
//! kind: 1 = put, 2 = delete (a delete has V = 0 and no value bytes)
//! ```
//!
//! ## Invariants
//! - `K <= KEY_BYTES_MAX`, `V <= VALUE_BYTES_MAX`, and the payload is exactly `25 + K + V`
//!   bytes; the decoder rejects anything else.

use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::types::Stamp;

/// Bytes before the key.
pub const RECORD_HEADER_BYTES: u64 = 25;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

/// A decoded WAL record, borrowing from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalRecord<'a> {
    /// A put.
    Put {
        /// Version.
        stamp: Stamp,
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
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
    /// Shorter than the fixed header.
    #[error("record of {len} bytes is shorter than its {RECORD_HEADER_BYTES}-byte header")]
    Short {
        /// Payload length.
        len: u64,
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
    /// Bytes of the encoded payload.
    pub fn encoded_bytes(&self) -> u64 {
        match self {
            WalRecord::Put { key, value, .. } => {
                RECORD_HEADER_BYTES + key.len() as u64 + value.len() as u64
            }
            WalRecord::Delete { key, .. } => RECORD_HEADER_BYTES + key.len() as u64,
        }
    }

    /// Encodes the payload. The caller has checked key and value against the limits.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, stamp, key, value): (u8, Stamp, &[u8], &[u8]) = match *self {
            WalRecord::Put { stamp, key, value } => (KIND_PUT, stamp, key, value),
            WalRecord::Delete { stamp, key } => (KIND_DELETE, stamp, key, &[]),
        };
        debug_assert!(key.len() as u64 <= KEY_BYTES_MAX && value.len() as u64 <= VALUE_BYTES_MAX);
        let mut out = Vec::with_capacity(usize::try_from(self.encoded_bytes()).unwrap_or(0));
        out.push(kind);
        out.extend_from_slice(&stamp.hlc.to_le_bytes());
        out.extend_from_slice(&stamp.node.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out
    }

    /// Decodes and validates a payload.
    pub fn decode(bytes: &[u8]) -> Result<WalRecord<'_>, RecordDecodeError> {
        let actual = bytes.len() as u64;
        if actual < RECORD_HEADER_BYTES {
            return Err(RecordDecodeError::Short { len: actual });
        }
        let (head, body) = bytes.split_at(RECORD_HEADER_BYTES as usize);
        let kind = head.first().copied().unwrap_or(0);
        let hlc = u64::from_le_bytes(array(head, 1));
        let node = u64::from_le_bytes(array(head, 9));
        let key_bytes = u64::from(u32::from_le_bytes(array(head, 17)));
        let value_bytes = u64::from(u32::from_le_bytes(array(head, 21)));
        if kind != KIND_PUT && kind != KIND_DELETE {
            return Err(RecordDecodeError::UnknownKind { kind });
        }
        if key_bytes > KEY_BYTES_MAX || value_bytes > VALUE_BYTES_MAX {
            return Err(RecordDecodeError::TooLarge { key_bytes, value_bytes });
        }
        let declared = RECORD_HEADER_BYTES + key_bytes + value_bytes;
        if declared != actual {
            return Err(RecordDecodeError::LengthMismatch { declared, actual });
        }
        let (key, value) = body.split_at(key_bytes as usize);
        let stamp = Stamp { hlc, node };
        if kind == KIND_PUT {
            Ok(WalRecord::Put { stamp, key, value })
        } else if value_bytes != 0 {
            Err(RecordDecodeError::DeleteWithValue { value_bytes })
        } else {
            Ok(WalRecord::Delete { stamp, key })
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

    #[test]
    fn round_trip_and_layout() {
        let put = WalRecord::Put { stamp: S, key: b"key", value: b"value" };
        let bytes = put.encode();
        assert_eq!(bytes.len() as u64, put.encoded_bytes());
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..9], &S.hlc.to_le_bytes());
        assert_eq!(&bytes[17..21], &3u32.to_le_bytes());
        assert_eq!(&bytes[25..28], b"key");
        assert_eq!(WalRecord::decode(&bytes), Ok(put));
        let del = WalRecord::Delete { stamp: S, key: b"" };
        assert_eq!(WalRecord::decode(&del.encode()), Ok(del));
    }

    #[test]
    fn rejects_bad_payloads() {
        let good = WalRecord::Put { stamp: S, key: b"k", value: b"v" }.encode();
        assert!(matches!(
            WalRecord::decode(&good[..10]),
            Err(RecordDecodeError::Short { len: 10 })
        ));
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
}
