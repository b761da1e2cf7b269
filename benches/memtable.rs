//! Memtable micro-benchmarks: insert and get of 100k 16-byte keys with 100-byte values into
//! `kvs_shards::memtable::Memtable`, in random key order.
//!
//! Run: `cargo bench --bench memtable`. The memtable is plain in-memory code, so no glommio
//! executor is needed here.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kvs_shards::memtable::Memtable;
use kvs_shards::Stamp;
use std::hint::black_box;

const KEYS: usize = 100_000;
const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 100;

/// 100k distinct 16-byte keys in a scrambled order (a fixed multiplicative hash, so runs are
/// comparable without a random number generator).
fn keys() -> Vec<[u8; KEY_BYTES]> {
    (0..KEYS as u64)
        .map(|i| {
            let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut k = [0u8; KEY_BYTES];
            k[..8].copy_from_slice(&h.to_be_bytes());
            k[8..].copy_from_slice(&i.to_be_bytes());
            k
        })
        .collect()
}

fn filled(keys: &[[u8; KEY_BYTES]], value: &[u8]) -> Memtable {
    let mut m = Memtable::new();
    for (i, k) in keys.iter().enumerate() {
        m.put(k, value, Stamp { hlc: i as u64 + 1, node: 0 });
    }
    m
}

fn bench_memtable(c: &mut Criterion) {
    let keys = keys();
    let value = [0x5au8; VALUE_BYTES];
    let mut group = c.benchmark_group("memtable");
    group.throughput(Throughput::Elements(KEYS as u64));
    group.sample_size(20);

    group.bench_function("insert_100k_16B_keys_100B_values", |b| {
        b.iter_batched(
            Memtable::new,
            |mut m| {
                for (i, k) in keys.iter().enumerate() {
                    m.put(k, &value, Stamp { hlc: i as u64 + 1, node: 0 });
                }
                m
            },
            BatchSize::LargeInput,
        )
    });

    let table = filled(&keys, &value);
    group.bench_function("get_100k_16B_keys", |b| {
        b.iter(|| {
            let mut found = 0usize;
            for k in &keys {
                if table.get(black_box(k)).is_some() {
                    found += 1;
                }
            }
            assert_eq!(found, KEYS);
            found
        })
    });
    group.finish();
}

criterion_group!(benches, bench_memtable);
criterion_main!(benches);
