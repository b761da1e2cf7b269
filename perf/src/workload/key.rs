//! Key bytes: record index → exactly `key_size` printable bytes, distinct per index.
//!
//! ## Format
//!
//! ```text
//! decimal form, when index < 10^(key_size - 4):
//!   "user" | index in decimal, zero-padded to key_size - 4 digits      "user000000000042"
//! base-62 form, otherwise (only small key sizes get here):
//!   "x"    | index in base 62 (0-9, A-Z, a-z), zero-padded to key_size - 1 digits
//! ```
//!
//! The forms differ in their first byte, and each is a fixed-width positional numeral, so keys
//! are distinct for distinct indexes: for every `u64` from 24 bytes (decimal) or 12 bytes
//! (base 62), and below `62^(key_size-1)` otherwise (3.5 * 10^12 at the 8-byte minimum); past
//! that the base-62 form keeps the low digits, so indexes that far out may share a key. At the
//! default 16 bytes, indexes below 10^12 take the decimal form.
//!
//! Why "user" and decimal: YCSB's keys look the same, and a key in a log or an error message can
//! be read back to its index ([`index_of`]).

/// The smallest key size: the "user" prefix and four digits, or "x" and seven base-62 digits.
pub const KEY_BYTES_MIN: usize = 8;

const PREFIX: &[u8; 4] = b"user";
const BASE62_TAG: u8 = b'x';
const BASE62_DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The bytes of key `index`, exactly `key_size` bytes (see the module's format).
///
/// # Panics
/// If `key_size` is below [`KEY_BYTES_MIN`]; [`super::WorkloadSpec::validate`] refuses such specs.
pub fn key_of(index: u64, key_size: usize) -> Vec<u8> {
    let mut key = vec![0; key_size];
    write_key(index, &mut key);
    key
}

/// Writes key `index` into `out`, which sets the size; no allocation, for drivers that reuse
/// a buffer.
///
/// # Panics
/// If `out` is shorter than [`KEY_BYTES_MIN`].
pub fn write_key(index: u64, out: &mut [u8]) {
    assert!(
        out.len() >= KEY_BYTES_MIN,
        "key size {} is below the minimum of {KEY_BYTES_MIN} bytes",
        out.len()
    );
    let (prefix, digits) = out.split_at_mut(PREFIX.len());
    if fits_decimal(index, digits.len()) {
        prefix.copy_from_slice(PREFIX);
        write_numeral(index, 10, digits);
    } else {
        let (tag, digits) = out.split_at_mut(1);
        tag[0] = BASE62_TAG;
        write_numeral(index, 62, digits);
    }
}

/// Whether `index` has at most `digits` decimal digits.
fn fits_decimal(index: u64, digits: usize) -> bool {
    // 10^19 is the largest power of ten in a u64; every u64 has at most 20 digits.
    digits >= 20 || index < 10u64.pow(digits as u32)
}

/// Writes `value` in `base`, most significant digit first, zero-padded to `out.len()`; digits
/// that do not fit are dropped from the top.
fn write_numeral(mut value: u64, base: u64, out: &mut [u8]) {
    for byte in out.iter_mut().rev() {
        *byte = BASE62_DIGITS[(value % base) as usize];
        value /= base;
    }
}

/// The index `key` was made from by [`key_of`], or `None` if it is not such a key. For base-62
/// keys whose index was too large for their size, this is the index with its top digits cut.
pub fn index_of(key: &[u8]) -> Option<u64> {
    if key.len() < KEY_BYTES_MIN {
        return None;
    }
    let (base, digits) = match key.split_first() {
        Some((&BASE62_TAG, digits)) => (62, digits),
        _ if key.starts_with(PREFIX) => (10, &key[PREFIX.len()..]),
        _ => return None,
    };
    let mut value: u64 = 0;
    for &byte in digits {
        let digit = BASE62_DIGITS.iter().position(|&d| d == byte)? as u64;
        if digit >= base {
            return None;
        }
        value = value.checked_mul(base)?.checked_add(digit)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    //! Goal: keys have the exact size and are distinct. Method: round-trip indexes through
    //! `index_of` around every boundary of the format (a round trip proves distinctness for
    //! the indexes tried), and count distinct keys over dense ranges.
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn keys_have_exact_size_and_read_back() {
        let interesting = |size: usize| {
            let mut indexes = vec![0, 1, 9, 10, 42, 99_999_999, 100_000_000, u64::MAX];
            for digits in [size - 4, 19] {
                if digits < 20 {
                    let power = 10u64.pow(digits as u32);
                    indexes.extend([power - 1, power, power + 1]);
                }
            }
            indexes
        };
        for size in KEY_BYTES_MIN..=40 {
            for index in interesting(size) {
                let key = key_of(index, size);
                assert_eq!(key.len(), size);
                let wraps = size < 12
                    && !fits_decimal(index, size - 4)
                    && index >= 62u64.pow(size as u32 - 1);
                if !wraps {
                    assert_eq!(index_of(&key), Some(index), "size {size}, key {key:?}");
                }
            }
        }
        assert_eq!(key_of(42, 16), b"user000000000042");
        assert_eq!(key_of(12_345, 8), b"x00003D7");
        assert_eq!(key_of(u64::MAX, 24), b"user18446744073709551615");
    }

    #[test]
    fn keys_are_distinct_over_dense_ranges() {
        // Size 8 crosses from decimal to base 62 at 10^4; size 16 is checked near 10^8, the
        // scale the spec asks for (a full 10^8 set would need gigabytes).
        for (size, range) in [
            (8, 0..300_000u64),
            (16, 0..200_000),
            (16, 99_900_000..100_100_000),
            (16, 999_999_900_000..1_000_000_100_000),
        ] {
            let len = range.end - range.start;
            let keys: HashSet<Vec<u8>> = range.map(|i| key_of(i, size)).collect();
            assert_eq!(keys.len() as u64, len, "size {size}");
        }
    }

    #[test]
    #[should_panic(expected = "below the minimum of 8 bytes")]
    fn key_of_refuses_a_short_size() {
        key_of(1, 7);
    }

    #[test]
    fn index_of_refuses_foreign_keys() {
        assert_eq!(index_of(b"user1"), None);
        assert_eq!(index_of(b"user00x1"), None);
        assert_eq!(index_of(b"nope0000"), None);
        assert_eq!(index_of(b"user99999999999999999999"), None, "above u64::MAX");
    }
}
