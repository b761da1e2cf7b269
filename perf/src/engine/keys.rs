//! Keys and self-verifying values of the engine benchmark (pure; no I/O).
//!
//! ## Keys
//! Key `i` (0 ≤ i < `--num`) is laid out as db_bench's `GenerateKeyFromInt` does it: the index
//! as 8 big-endian bytes, then `'0'` bytes up to `--key-bytes` (16 by default). So the byte
//! order of keys is the numeric order of their indices, as in db_bench.
//!
//! The **missing** key `i` (readmissing) is the same 8 bytes followed by `'1'` bytes: never
//! written, and it sorts between existing keys `i` and `i + 1`, so a lookup cannot be
//! refused by a table's key range alone; it has to go through the Bloom filter (db_bench's
//! readmissing also asks for keys inside the written range).
//!
//! ## Values
//! The value of key `i` written in generation `g` (0 for fillrandom, 1 for the first
//! overwrite pass, ...) is `--value-bytes` long:
//!
//! ```text
//! [index u64 LE][generation u32 LE][filler ...]
//! ```
//!
//! where the filler is the little-endian bytes of successive xxh3-64 hashes of
//! `(index, generation, word)`. A read can therefore check, from the key alone and the highest
//! generation written so far, that the value is exactly one this run wrote for this key
//! ([`verify_value`]). The filler is incompressible, which is why the comparison runs both
//! engines without compression (see `perf/engine_vs_db_bench.sh`).

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bytes of the index prefix of every key.
pub const KEY_INDEX_BYTES: usize = 8;
/// Shortest key: the index and at least one padding byte (which tells existing keys from
/// missing ones).
pub const KEY_BYTES_MIN: usize = KEY_INDEX_BYTES + 1;
/// Bytes of a value's header (index and generation).
pub const VALUE_HEADER_BYTES: usize = 12;
/// Shortest value: the header and a little filler.
pub const VALUE_BYTES_MIN: usize = 16;

/// Padding byte of keys that are written.
const PAD_PRESENT: u8 = b'0';
/// Padding byte of keys that are never written.
const PAD_MISSING: u8 = b'1';

/// The key of index `i` that fillrandom writes, `key_bytes` long.
pub fn present_key(i: u64, key_bytes: usize, out: &mut Vec<u8>) {
    make_key(i, key_bytes, PAD_PRESENT, out);
}

/// The key of index `i` that no benchmark writes (readmissing), `key_bytes` long.
pub fn missing_key(i: u64, key_bytes: usize, out: &mut Vec<u8>) {
    make_key(i, key_bytes, PAD_MISSING, out);
}

fn make_key(i: u64, key_bytes: usize, pad: u8, out: &mut Vec<u8>) {
    debug_assert!(key_bytes >= KEY_BYTES_MIN);
    out.clear();
    out.extend_from_slice(&i.to_be_bytes());
    out.resize(key_bytes.max(KEY_BYTES_MIN), pad);
}

/// The index of a key made by [`present_key`], or `None` when `key` is not one.
pub fn parse_present_key(key: &[u8]) -> Option<u64> {
    let (index, pad) = key.split_at_checked(KEY_INDEX_BYTES)?;
    if pad.is_empty() || pad.iter().any(|&b| b != PAD_PRESENT) {
        return None;
    }
    Some(u64::from_be_bytes(index.try_into().ok()?))
}

/// The value of key `i` in generation `generation`, `value_bytes` long.
pub fn make_value(i: u64, generation: u32, value_bytes: usize, out: &mut Vec<u8>) {
    debug_assert!(value_bytes >= VALUE_BYTES_MIN);
    out.clear();
    out.extend_from_slice(&i.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    let seed = i ^ (u64::from(generation) << 48);
    let mut word = 0u64;
    while out.len() < value_bytes {
        let h = xxh3_64_with_seed(&word.to_le_bytes(), seed);
        let take = (value_bytes - out.len()).min(8);
        out.extend_from_slice(h.to_le_bytes().get(..take).unwrap_or_default());
        word += 1;
    }
}

/// Checks that `value` is the value of key `i` written in some generation up to
/// `generation_max`; says what is wrong otherwise.
pub fn verify_value(
    i: u64,
    generation_max: u32,
    value_bytes: usize,
    value: &[u8],
) -> Result<(), String> {
    if value.len() != value_bytes {
        return Err(format!("key {i}: value of {} bytes, expected {value_bytes}", value.len()));
    }
    let index = value.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if index != Some(i) {
        return Err(format!("key {i}: value belongs to key {index:?}"));
    }
    let generation = value.get(8..12).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let Some(generation) = generation.filter(|g| *g <= generation_max) else {
        return Err(format!("key {i}: generation {generation:?} was never written"));
    };
    let mut expected = Vec::with_capacity(value_bytes);
    make_value(i, generation, value_bytes, &mut expected);
    if expected != value {
        return Err(format!("key {i}: value bytes differ from generation {generation}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Goal: keys have db_bench's layout and order, missing keys fall between present ones,
    //! and value verification accepts exactly what was written.
    use super::*;

    #[test]
    fn keys_follow_db_bench_layout() {
        let mut k = Vec::new();
        present_key(0x0102, 16, &mut k);
        assert_eq!(k, b"\0\0\0\0\0\0\x01\x0200000000");
        assert_eq!(parse_present_key(&k), Some(0x0102));
        let mut m = Vec::new();
        missing_key(0x0102, 16, &mut m);
        assert_eq!(m.len(), 16);
        assert_eq!(parse_present_key(&m), None);
        let mut next = Vec::new();
        present_key(0x0103, 16, &mut next);
        assert!(k < m && m < next, "a missing key sorts between its neighbours");
        present_key(7, 9, &mut k);
        assert_eq!(k.len(), 9);
        assert_eq!(parse_present_key(&k), Some(7));
        assert_eq!(parse_present_key(b"short"), None);
        assert_eq!(parse_present_key(&7u64.to_be_bytes()), None);
    }

    #[test]
    fn key_order_is_index_order() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for i in [0u64, 1, 255, 256, 65_535, 1 << 40] {
            present_key(i, 16, &mut a);
            present_key(i + 1, 16, &mut b);
            assert!(a < b);
        }
    }

    #[test]
    fn values_verify() {
        let mut v = Vec::new();
        make_value(42, 0, 100, &mut v);
        assert_eq!(v.len(), 100);
        verify_value(42, 0, 100, &v).unwrap();
        verify_value(42, 3, 100, &v).unwrap();
        let mut v2 = Vec::new();
        make_value(42, 1, 100, &mut v2);
        assert_ne!(v, v2);
        assert!(verify_value(42, 0, 100, &v2).unwrap_err().contains("never written"));
        assert!(verify_value(43, 0, 100, &v).unwrap_err().contains("belongs to key"));
        assert!(verify_value(42, 0, 99, &v).unwrap_err().contains("100 bytes"));
        let mut bad = v.clone();
        if let Some(b) = bad.last_mut() {
            *b ^= 1;
        }
        assert!(verify_value(42, 0, 100, &bad).unwrap_err().contains("differ"));
        make_value(1, 0, 17, &mut v);
        assert_eq!(v.len(), 17);
        verify_value(1, 0, 17, &v).unwrap();
    }
}
