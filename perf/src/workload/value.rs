//! Self-verifying values: a value names the key it was written for and carries a checksum of
//! itself, so a read can tell a lost or misrouted write (wrong key) from a damaged one.
//!
//! ## Format
//!
//! ```text
//! offset  bytes  field
//!      0      8  key_hash   xxh3-64 of the key, little-endian
//!      8      4  crc        crc32c of bytes [0, 8) then [12, len), little-endian
//!     12      4  len        the value's length in bytes, little-endian
//!     16    ...  filler     SplitMix64 stream seeded with the nonce, little-endian words,
//!                           the last one cut to fit
//! ```
//!
//! crc32c catches every burst of up to 32 bits, so any single changed byte is caught, whatever
//! its position; `len` is inside the checksum and tells a cut value from a damaged one without
//! relying on the 2^-32 chance of a crc collision. The nonce makes two writes of one key differ,
//! so a read that returns an older version is not mistaken for the newest one by a caller that
//! compares bytes.

use super::choose::Rng;

/// Bytes of the header every value starts with; the smallest value size.
pub const VALUE_HEADER_BYTES: usize = 16;

/// Why a value read does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("value too short to carry its header: {len} bytes")]
    TooShort { len: usize },
    #[error("value belongs to another key")]
    WrongKey,
    #[error("value checksum mismatch")]
    Corrupt,
}

/// A value of `size` bytes for `key` that carries a hash of the key and a checksum of itself.
/// A `size` below [`VALUE_HEADER_BYTES`] is rounded up to it.
///
/// # Panics
/// If `size` does not fit the 32-bit length field.
pub fn make_value(key: &[u8], size: usize, nonce: u64) -> Vec<u8> {
    let mut value = Vec::new();
    write_value(key, size, nonce, &mut value);
    value
}

/// [`make_value`] into `out` (cleared first), for callers that reuse a buffer.
pub fn write_value(key: &[u8], size: usize, nonce: u64, out: &mut Vec<u8>) {
    let size = size.max(VALUE_HEADER_BYTES);
    let len = u32::try_from(size).expect("value size fits the 32-bit length field");
    out.clear();
    out.resize(size, 0);
    out[0..8].copy_from_slice(&key_hash(key).to_le_bytes());
    out[12..16].copy_from_slice(&len.to_le_bytes());
    let mut filler = Rng::new(nonce);
    for chunk in out[VALUE_HEADER_BYTES..].chunks_mut(8) {
        let word = filler.next_u64().to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    let crc = checksum(out);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Checks that `value` was made for `key` and is intact. The checksum is checked first: a
/// damaged value is `Corrupt` even when the damage is in the key hash; `WrongKey` means an
/// intact value made for another key.
pub fn verify_value(key: &[u8], value: &[u8]) -> Result<(), VerifyError> {
    let header =
        value.get(..VALUE_HEADER_BYTES).ok_or(VerifyError::TooShort { len: value.len() })?;
    let field = |range: std::ops::Range<usize>| &header[range];
    let stored_crc = u32::from_le_bytes(field(8..12).try_into().expect("4 bytes"));
    let stored_len = u32::from_le_bytes(field(12..16).try_into().expect("4 bytes"));
    let stored_hash = u64::from_le_bytes(field(0..8).try_into().expect("8 bytes"));
    if stored_crc != checksum(value) || u64::from(stored_len) != value.len() as u64 {
        return Err(VerifyError::Corrupt);
    }
    if stored_hash != key_hash(key) {
        return Err(VerifyError::WrongKey);
    }
    Ok(())
}

fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// crc32c of the whole value but its own field; `value` is at least a header long.
fn checksum(value: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&value[0..8]), &value[12..])
}

#[cfg(test)]
mod tests {
    //! Goal: every value verifies for its key and nothing else, and any damage is caught.
    //! Method: round trips over many sizes, then every single-byte change at every position.
    use super::*;
    use crate::workload::key_of;

    #[test]
    fn round_trip_over_sizes_and_nonces() {
        for size in [16, 17, 23, 24, 25, 100, 1000, 4096 + 3] {
            for nonce in [0, 1, u64::MAX] {
                let key = key_of(size as u64, 16);
                let value = make_value(&key, size, nonce);
                assert_eq!(value.len(), size);
                assert_eq!(verify_value(&key, &value), Ok(()));
            }
        }
        let key = key_of(1, 16);
        assert_ne!(make_value(&key, 100, 1), make_value(&key, 100, 2), "nonce changes filler");
        assert_eq!(make_value(&key, 100, 1), make_value(&key, 100, 1), "deterministic");
        // Too small a size is rounded up to the header.
        assert_eq!(make_value(&key, 0, 1).len(), VALUE_HEADER_BYTES);
        assert_eq!(verify_value(&key, &make_value(&key, 3, 1)), Ok(()));
        let mut reused = vec![9; 500];
        write_value(&key, 100, 1, &mut reused);
        assert_eq!(reused, make_value(&key, 100, 1));
    }

    #[test]
    fn wrong_key_and_short_values_are_reported() {
        let value = make_value(&key_of(1, 16), 100, 7);
        assert_eq!(verify_value(&key_of(2, 16), &value), Err(VerifyError::WrongKey));
        assert_eq!(verify_value(b"user1", &value), Err(VerifyError::WrongKey));
        assert_eq!(verify_value(b"k", &value[..15]), Err(VerifyError::TooShort { len: 15 }));
        assert_eq!(verify_value(b"k", &[]), Err(VerifyError::TooShort { len: 0 }));
        // Cut or extended, it is damaged, not another key's.
        assert_eq!(verify_value(&key_of(1, 16), &value[..99]), Err(VerifyError::Corrupt));
        assert_eq!(verify_value(&key_of(1, 16), &value[..16]), Err(VerifyError::Corrupt));
        let mut longer = value.clone();
        longer.push(0);
        assert_eq!(verify_value(&key_of(1, 16), &longer), Err(VerifyError::Corrupt));
    }

    #[test]
    fn every_single_byte_change_is_caught() {
        let key = key_of(77, 16);
        let value = make_value(&key, 64, 3);
        let mut checked = 0;
        for position in 0..value.len() {
            for mask in 1..=255u8 {
                let mut damaged = value.clone();
                damaged[position] ^= mask;
                assert_eq!(
                    verify_value(&key, &damaged),
                    Err(VerifyError::Corrupt),
                    "position {position}, mask {mask:#04x}"
                );
                checked += 1;
            }
        }
        // A longer value, one flip per position.
        let value = make_value(&key, 4000, 4);
        for position in 0..value.len() {
            let mut damaged = value.clone();
            damaged[position] ^= 0x10;
            assert_eq!(verify_value(&key, &damaged), Err(VerifyError::Corrupt));
            checked += 1;
        }
        println!("single-byte changes checked: {checked}");
    }
}
