//! Placement tests: golden hashes (a change of hash or seed is a breaking change and must fail
//! here), ring balance, movement on join, replica sets and shard slices.

use super::*;

#[test]
fn golden_tokens() {
    // If one of these changes, every existing cluster would misplace its data.
    let golden: [(&[u8], u64); 4] = [
        (b"", GOLDEN[0]),
        (b"a", GOLDEN[1]),
        (b"user:42", GOLDEN[2]),
        (b"0123456789abcdef", GOLDEN[3]),
    ];
    for (key, want) in golden {
        assert_eq!(token_of(key).0, want, "token of {:?}", String::from_utf8_lossy(key));
    }
    assert_eq!(vnode_tokens(NodeId(1), 3).iter().map(|t| t.0).collect::<Vec<_>>(), GOLDEN_VNODES);
}

const GOLDEN: [u64; 4] = [
    6_237_117_507_376_537_841,
    11_181_319_484_591_275_021,
    514_986_918_102_235_087,
    13_878_701_302_311_715_007,
];
const GOLDEN_VNODES: [u64; 3] =
    [16_227_122_573_192_845_806, 488_641_946_304_343_734, 4_048_795_067_081_911_441];

fn ring_of(ids: impl IntoIterator<Item = u64>) -> Ring {
    Ring::new(ids.into_iter().map(|id| (NodeId(id), vnode_tokens(NodeId(id), VNODES_DEFAULT))))
}

#[test]
fn ring_balance_150_vnodes_10_nodes() {
    let ring = ring_of(1..=10);
    let own = ring.ownership();
    let mean = 1.0 / 10.0;
    let var = own.iter().map(|(_, o)| (o - mean).powi(2)).sum::<f64>() / own.len() as f64;
    let total: f64 = own.iter().map(|(_, o)| o).sum();
    println!("ownership per node: {own:?}");
    println!(
        "mean {mean:.4}, std dev {:.4} ({:.1}% of mean)",
        var.sqrt(),
        100.0 * var.sqrt() / mean
    );
    assert!((total - 1.0).abs() < 1e-9, "ownership sums to {total}");
    for (node, o) in own {
        let dev = (o - mean).abs() / mean;
        assert!(dev <= 0.25, "node {node:?} owns {o:.4}, {:.1}% off the mean", dev * 100.0);
    }
}

#[test]
fn eleventh_node_moves_about_one_eleventh() {
    let before = ring_of(1..=10);
    let after = ring_of(1..=11);
    let keys = 200_000u64;
    let mut moved = 0u64;
    for i in 0..keys {
        let t = token_of(format!("key-{i}").as_bytes());
        if before.primary(t) != after.primary(t) {
            moved += 1;
            assert_eq!(after.primary(t), Some(NodeId(11)), "a key may only move to the new node");
        }
    }
    let share = moved as f64 / keys as f64;
    println!("moved {moved} of {keys} keys: {share:.4} (ideal 1/11 = {:.4})", 1.0 / 11.0);
    assert!((share - 1.0 / 11.0).abs() < 0.03, "moved share {share}");
}

#[test]
fn replicas_are_distinct_and_clockwise() {
    let ring = ring_of(1..=5);
    for i in 0..10_000u64 {
        let t = token_of(&i.to_le_bytes());
        let r = ring.replicas(t, 3);
        assert_eq!(r.len(), 3);
        assert_eq!(r.first().copied(), ring.primary(t));
        let mut d = r.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 3, "replicas {r:?} not distinct");
    }
    // Fewer nodes than N: every node, once.
    let small = ring_of([7, 8]);
    let r = small.replicas(Token(123), 3);
    assert_eq!(r.len(), 2);
    assert!(Ring::default().replicas(Token(1), 3).is_empty());
    assert_eq!(Ring::default().primary(Token(1)), None);
}

#[test]
fn replicas_match_a_naive_walk() {
    let ring = ring_of(1..=4);
    let mut all: Vec<(u64, u64)> = (1..=4u64)
        .flat_map(|id| vnode_tokens(NodeId(id), VNODES_DEFAULT).into_iter().map(move |t| (t.0, id)))
        .collect();
    all.sort();
    for i in 0..2_000u64 {
        let t = token_of(format!("k{i}").as_bytes());
        let start = all.iter().position(|(vt, _)| *vt >= t.0).unwrap_or(0);
        let mut want = Vec::new();
        for j in 0..all.len() {
            let id = all[(start + j) % all.len()].1;
            if !want.contains(&NodeId(id)) {
                want.push(NodeId(id));
            }
            if want.len() == 3 {
                break;
            }
        }
        assert_eq!(ring.replicas(t, 3), want);
    }
}

#[test]
fn shard_slices_are_contiguous_and_cover_everything() {
    assert_eq!(shard_of(Token(0), 3), ShardId(0));
    assert_eq!(shard_of(Token(u64::MAX), 3), ShardId(2));
    assert_eq!(shard_of(Token(u64::MAX), 1), ShardId(0));
    assert_eq!(shard_of(Token(12345), 0), ShardId(0));
    for s in 1..=16u16 {
        let mut last = 0;
        for k in 0..1000u64 {
            let t = Token(k.wrapping_mul(u64::MAX / 1000));
            let sh = shard_of(t, s).0;
            assert!(sh < s);
            assert!(sh >= last, "shards must be monotone in the token");
            last = sh;
        }
    }
    // Keys spread evenly over shards.
    let mut counts = [0u32; 3];
    for i in 0..30_000u64 {
        counts[shard_of(token_of(&i.to_le_bytes()), 3).0 as usize] += 1;
    }
    for c in counts {
        assert!((9_000..11_000).contains(&c), "shard counts {counts:?}");
    }
}
