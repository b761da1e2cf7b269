//! Ring lookups: token hash of a 16-byte key, primary owner and the N=3 replica set on rings of
//! 3, 10 and 100 nodes with 150 vnodes each, and shard_of.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kvs_wire::placement::{shard_of, token_of, vnode_tokens, NodeId, Ring, VNODES_DEFAULT};

fn ring(c: &mut Criterion) {
    let keys: Vec<Vec<u8>> = (0..1024u64).map(|i| format!("k{i:015}").into_bytes()).collect();
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("token_of_16B", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(token_of(black_box(&keys[i])))
        })
    });
    g.bench_function("shard_of", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(shard_of(token_of(&keys[i]), 7))
        })
    });
    for nodes in [3u64, 10, 100] {
        let ring =
            Ring::new((1..=nodes).map(|n| (NodeId(n), vnode_tokens(NodeId(n), VNODES_DEFAULT))));
        g.bench_with_input(BenchmarkId::new("primary", nodes), &ring, |b, ring| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(ring.primary(token_of(&keys[i])))
            })
        });
        g.bench_with_input(BenchmarkId::new("replicas_n3", nodes), &ring, |b, ring| {
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(ring.replicas(token_of(&keys[i]), 3))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ring);
criterion_main!(benches);
