//! The table's Bloom filter: the `bloomfilter` crate (3.x), made deterministic and persisted.
//!
//! ## Format
//! The bloom block is exactly `bloomfilter::Bloom::to_bytes()`: `version u8 = 1 |
//! bitmap_bytes u64 LE | k u32 LE | seed [u8; 32] | bitmap (bitmap_bytes)`. The seed holds the
//! two SipHash-1-3 keys (`seed[0..16]`, `seed[16..32]`), so a reader rebuilds the exact filter.
//!
//! Determinism: the seed is not random but `"kvs-sst-bloom-v1" ++ table_id u64 LE ++ 8 zero
//! bytes`, and a key is hashed as its bytes alone (`Hasher::write(key)`, no length prefix and
//! no `usize`, so no dependence on the platform or on std's `Hash for [u8]`). The same entries
//! therefore give the same file, byte for byte. The bit positions come from the crate's
//! double hashing; a golden test below pins them, so a crate update that changed them would
//! fail the build's tests instead of silently breaking stored filters.

use super::format::BLOOM_HASHES_MAX;
use bloomfilter::Bloom;
use std::hash::{Hash, Hasher};

/// A key as the filter hashes it: its bytes, written once.
#[repr(transparent)]
pub(crate) struct BloomKey([u8]);

impl BloomKey {
    pub(crate) fn new(key: &[u8]) -> &BloomKey {
        let ptr = key as *const [u8] as *const BloomKey;
        // SAFETY: `BloomKey` is `repr(transparent)` over `[u8]`, so the pointer (with its
        // length metadata) points to a valid `BloomKey` with the same lifetime as `key`.
        unsafe { &*ptr }
    }
}

impl Hash for BloomKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// Bytes of the crate's header before the bitmap: version, length, k, seed.
pub(crate) const BLOOM_HEADER_BYTES: usize = 1 + 8 + 4 + 32;

/// The filter type stored in a table.
pub(crate) type KeyBloom = Bloom<BloomKey>;

/// The deterministic seed of table `table_id`'s filter.
pub(crate) fn seed(table_id: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    let (head, tail) = s.split_at_mut(16);
    head.copy_from_slice(b"kvs-sst-bloom-v1");
    if let Some(id) = tail.get_mut(..8) {
        id.copy_from_slice(&table_id.to_le_bytes());
    }
    s
}

/// An empty filter for about `expected_entries` keys at `bits_per_key` bits each (at least one
/// byte and one key, as the crate requires).
pub(crate) fn new_filter(
    table_id: u64,
    expected_entries: u64,
    bits_per_key: u32,
) -> Result<KeyBloom, String> {
    let entries = expected_entries.max(1);
    let bitmap_bytes = entries.saturating_mul(u64::from(bits_per_key)).div_ceil(8).max(1);
    let bitmap_bytes = usize::try_from(bitmap_bytes).map_err(|_| "bloom too large".to_string())?;
    let items = usize::try_from(entries).map_err(|_| "too many entries".to_string())?;
    Bloom::new_with_seed(bitmap_bytes, items, &seed(table_id)).map_err(str::to_string)
}

/// Rebuilds a stored filter, rejecting shapes that would misbehave (no bits, no or too many
/// hash functions). The caller has checked the block's crc and length bound.
pub(crate) fn decode_filter(bytes: &[u8]) -> Result<KeyBloom, String> {
    let bloom = KeyBloom::from_slice(bytes).map_err(|e| format!("bloom block: {e}"))?;
    // A bitmap of no bits would make every probe divide by zero inside the crate.
    if bytes.len() <= BLOOM_HEADER_BYTES {
        return Err("bloom block has no bits".into());
    }
    let k = bloom.number_of_hash_functions();
    if k == 0 || k > BLOOM_HASHES_MAX {
        return Err(format!("bloom block asks for {k} hash functions (1..={BLOOM_HASHES_MAX})"));
    }
    Ok(bloom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_deterministic_and_round_trips() {
        let build = || {
            let mut b = new_filter(7, 1000, 10).unwrap();
            for i in 0..1000u32 {
                b.set(BloomKey::new(format!("key-{i}").as_bytes()));
            }
            b
        };
        let a = build().to_bytes();
        assert_eq!(a, build().to_bytes());
        let r = decode_filter(&a).unwrap();
        for i in 0..1000u32 {
            assert!(r.check(BloomKey::new(format!("key-{i}").as_bytes())));
        }
        assert_eq!(r.number_of_hash_functions(), 7);
        // Golden: pins the crate's bit positions and our key hashing. If this changes, stored
        // filters would no longer match: bump the format version instead of updating blindly.
        assert_eq!(kvs_io::checksum::crc32c(&a), GOLDEN_CRC, "bloom bytes changed");
    }

    const GOLDEN_CRC: u32 = 0x8778_0499;

    #[test]
    fn decode_rejects_bad_shapes() {
        assert!(decode_filter(&[]).is_err());
        let mut b = new_filter(1, 10, 10).unwrap().to_bytes();
        b[9..13].copy_from_slice(&0u32.to_le_bytes()); // k = 0
        assert!(decode_filter(&b).is_err());
        b[9..13].copy_from_slice(&1000u32.to_le_bytes());
        assert!(decode_filter(&b).is_err());
        let mut empty = new_filter(1, 10, 10).unwrap().to_bytes();
        empty.truncate(45);
        empty[1..9].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_filter(&empty).is_err(), "zero bits would divide by zero");
    }
}
