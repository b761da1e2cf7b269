//! Range movement: when the ring changes (a node joins, leaves or is removed), which token
//! ranges change replicas, which node must receive each range's data, and from whom. Pure: the
//! streaming tasks carry the plan out; the coordinator uses [`write_set`] while a move is in
//! progress so that no write is lost to it.
//!
//! # Method
//! Every vnode token of the old and the new ring, together, cuts the ring into elementary
//! ranges `(previous token, token]`; inside one, every token has the same replica set in each
//! ring, so comparing the two sets at the range's end token decides the whole range. A node in
//! the new set but not the old one *gains* the range and streams it from an old replica:
//! preferably one that is losing the range (it is not serving it afterwards, so reading from it
//! does not compete with foreground reads), then the others, never an unavailable node.
//! Adjacent ranges with the same old and new sets are merged.
//!
//! # Invariants
//! - A range appears in the plan iff its old and new replica sets differ (as sets).
//! - Every gaining node appears in exactly one [`Stream`] of its range, and never holds the
//!   range already.
//! - Streaming sources are old replicas of the range that are not unavailable; a range whose
//!   old replicas are all unavailable is listed in [`MovePlan::unstreamable`].

use kvs_wire::placement::{NodeId, Ring, Token};

/// The token range `(start, end]`, wrapping past `u64::MAX` when `start >= end` (a range with
/// `start == end` is the whole ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRange {
    pub start: Token,
    pub end: Token,
}

impl TokenRange {
    /// Whether `token` lies in the range.
    pub fn contains(&self, token: Token) -> bool {
        let (s, e, t) = (self.start.0, self.end.0, token.0);
        if s < e {
            s < t && t <= e
        } else {
            t > s || t <= e
        }
    }

    /// The number of tokens in the range.
    pub fn size(&self) -> u128 {
        if self.start == self.end {
            1u128 << 64
        } else {
            u128::from(self.end.0.wrapping_sub(self.start.0))
        }
    }
}

/// One node receiving one range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub to: NodeId,
    /// Candidate sources, preferred first (a node losing the range, then other old replicas);
    /// never empty.
    pub from: Vec<NodeId>,
}

/// A range whose replica set changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeMove {
    pub range: TokenRange,
    /// Replicas before, in ring order.
    pub old: Vec<NodeId>,
    /// Replicas after, in ring order.
    pub new: Vec<NodeId>,
    pub streams: Vec<Stream>,
}

/// Everything that changes between two rings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MovePlan {
    pub moves: Vec<RangeMove>,
    /// Ranges some node gains but no available old replica can send (data only on
    /// unavailable nodes: repair or their return is needed).
    pub unstreamable: Vec<(TokenRange, NodeId)>,
    /// Share of the token space whose replica set changes.
    pub changed_share: f64,
    /// Share of the token space whose primary (first replica) changes: about 1/(nodes after)
    /// for one node joining with random vnode tokens.
    pub primary_moved_share: f64,
}

impl MovePlan {
    /// The share of the token space `node` gains as a replica.
    pub fn gained_share(&self, node: NodeId) -> f64 {
        let gained: u128 = self
            .moves
            .iter()
            .filter(|m| m.streams.iter().any(|s| s.to == node))
            .map(|m| m.range.size())
            .sum();
        gained as f64 / 2f64.powi(64)
    }
}

/// Plans the move from the ring of `old` members to the ring of `new` members with
/// replication factor `n`, never streaming from a node in `unavailable`.
pub fn plan(
    old: &[(NodeId, Vec<Token>)],
    new: &[(NodeId, Vec<Token>)],
    n: usize,
    unavailable: &[NodeId],
) -> MovePlan {
    let old_ring = Ring::new(old.iter().cloned());
    let new_ring = Ring::new(new.iter().cloned());
    let mut bounds: Vec<Token> =
        old.iter().chain(new).flat_map(|(_, tokens)| tokens.iter().copied()).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut plan = MovePlan::default();
    let Some(last) = bounds.last().copied() else { return plan };
    let mut changed: u128 = 0;
    let mut primary_moved: u128 = 0;
    let mut prev = last;
    for &end in &bounds {
        let range = TokenRange { start: prev, end };
        prev = end;
        let before = old_ring.replicas(end, n);
        let after = new_ring.replicas(end, n);
        if before.first() != after.first() {
            primary_moved += range.size();
        }
        if same_set(&before, &after) {
            continue;
        }
        changed += range.size();
        // Merge with the previous move when it is adjacent and alike.
        if let Some(m) = plan.moves.last_mut() {
            if m.range.end == range.start && m.old == before && m.new == after {
                m.range.end = range.end;
                continue;
            }
        }
        let losing: Vec<NodeId> = before.iter().filter(|b| !after.contains(b)).copied().collect();
        let staying: Vec<NodeId> = before.iter().filter(|b| after.contains(b)).copied().collect();
        let sources: Vec<NodeId> =
            losing.iter().chain(&staying).filter(|s| !unavailable.contains(s)).copied().collect();
        let streams = after
            .iter()
            .filter(|a| !before.contains(a))
            .map(|to| Stream { to: *to, from: sources.clone() })
            .collect();
        plan.moves.push(RangeMove { range, old: before, new: after, streams });
    }
    // A move merged across the wrap point is fine as is; unstreamable ranges are listed once
    // per gaining node.
    for m in &plan.moves {
        for s in m.streams.iter().filter(|s| s.from.is_empty()) {
            plan.unstreamable.push((m.range, s.to));
        }
    }
    plan.moves.iter_mut().for_each(|m| m.streams.retain(|s| !s.from.is_empty()));
    let total = 2f64.powi(64);
    plan.changed_share = changed as f64 / total;
    plan.primary_moved_share = primary_moved as f64 / total;
    plan
}

/// The nodes a write of `token` must reach while the ring moves from `old` to `new`: the old
/// replicas (they still serve reads) and the new ones (they will), old first. Reads keep using
/// the old set until the new replicas have streamed their ranges.
pub fn write_set(old: &Ring, new: &Ring, token: Token, n: usize) -> Vec<NodeId> {
    let mut set = old.replicas(token, n);
    for node in new.replicas(token, n) {
        if !set.contains(&node) {
            set.push(node);
        }
    }
    set
}

/// A set of token ranges for fast membership tests: the ranges cut at the wrap point into
/// `(lo, hi]` intervals (`lo` may be `None`: from the start of the token space), sorted and
/// merged where they touch or overlap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    /// Sorted, disjoint `(lo exclusive or None, hi inclusive)`.
    spans: Vec<(Option<u64>, u64)>,
}

impl RangeSet {
    pub fn new(ranges: impl IntoIterator<Item = TokenRange>) -> RangeSet {
        let mut spans: Vec<(Option<u64>, u64)> = Vec::new();
        for r in ranges {
            let (s, e) = (r.start.0, r.end.0);
            if s < e {
                spans.push((Some(s), e));
            } else {
                // Wraps (or is the whole ring when s == e): (s, MAX] and [0, e].
                if s < u64::MAX {
                    spans.push((Some(s), u64::MAX));
                }
                spans.push((None, e));
                if s == e {
                    spans.push((None, u64::MAX));
                }
            }
        }
        spans.sort_unstable();
        let mut merged: Vec<(Option<u64>, u64)> = Vec::with_capacity(spans.len());
        for (lo, hi) in spans {
            match merged.last_mut() {
                // Touching or overlapping: (a, b] and (c, d] with c <= b (None is below all).
                Some(last) if lo.is_none_or(|c| c <= last.1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        RangeSet { spans: merged }
    }

    /// Whether `token` lies in one of the ranges.
    pub fn contains(&self, token: Token) -> bool {
        let t = token.0;
        // The first span whose end is at or after t; t is inside iff it is past its start.
        let i = self.spans.partition_point(|(_, hi)| *hi < t);
        self.spans.get(i).is_some_and(|(lo, _)| lo.is_none_or(|lo| t > lo))
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

fn same_set(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_wire::placement::vnode_tokens;
    use proptest::prelude::*;

    fn members(ids: &[u64]) -> Vec<(NodeId, Vec<Token>)> {
        ids.iter().map(|id| (NodeId(*id), vnode_tokens(NodeId(*id), 150))).collect()
    }

    #[test]
    fn a_fourth_node_joining_takes_about_a_quarter_and_only_it_receives() {
        let old = members(&[1, 2, 3]);
        let new = members(&[1, 2, 3, 4]);
        let p = plan(&old, &new, 3, &[]);
        assert!(
            (0.20..=0.30).contains(&p.primary_moved_share),
            "primary share moved {}",
            p.primary_moved_share
        );
        // With N=3 of 4 nodes the new node holds about 3/4 of the ring as a replica.
        let gained = p.gained_share(NodeId(4));
        assert!((0.70..=0.80).contains(&gained), "node 4 gained {gained}");
        assert!((p.changed_share - gained).abs() < 1e-9, "only node 4 gains");
        for m in &p.moves {
            assert_eq!(m.streams.len(), 1);
            assert_eq!(m.streams[0].to, NodeId(4));
            // The first source is the node the range leaves (3 old replicas, 3 new: one goes).
            let leaving = m.old.iter().find(|o| !m.new.contains(o)).unwrap();
            assert_eq!(m.streams[0].from[0], *leaving);
        }
        assert!(p.unstreamable.is_empty());
    }

    #[test]
    fn with_three_nodes_and_n3_a_join_is_a_copy_to_the_new_node() {
        // Three nodes hold every key already; going to four, every range changes exactly by
        // swapping one replica for node 4.
        let p = plan(&members(&[1, 2, 3]), &members(&[1, 2, 3, 4]), 3, &[]);
        for m in &p.moves {
            assert_eq!(m.old.len(), 3);
            assert_eq!(m.new.len(), 3);
            assert!(m.new.contains(&NodeId(4)));
        }
    }

    #[test]
    fn a_dead_node_is_never_a_source_and_a_range_only_it_held_is_unstreamable() {
        let old = members(&[1, 2, 3, 4]);
        let new = members(&[1, 2, 3]);
        let p = plan(&old, &new, 3, &[NodeId(4)]);
        assert!(p.unstreamable.is_empty(), "two other replicas of every range survive");
        for m in &p.moves {
            for s in &m.streams {
                assert!(!s.from.contains(&NodeId(4)));
                assert!(!s.from.is_empty());
            }
        }
        // N=1: ranges that lived only on node 4 cannot be streamed by anyone.
        let p = plan(&old, &new, 1, &[NodeId(4)]);
        assert!(!p.unstreamable.is_empty());
        assert!(p.moves.iter().all(|m| m.streams.iter().all(|s| !s.from.is_empty())));
    }

    #[test]
    fn writes_during_a_move_reach_old_and_new_replicas() {
        let old = Ring::new(members(&[1, 2, 3]));
        let new = Ring::new(members(&[1, 2, 3, 4]));
        let mut seen_four = false;
        for k in 0..200u32 {
            let t = kvs_wire::placement::token_of(&k.to_le_bytes());
            let w = write_set(&old, &new, t, 3);
            assert_eq!(&w[..3], &old.replicas(t, 3)[..]);
            for r in new.replicas(t, 3) {
                assert!(w.contains(&r));
            }
            seen_four |= w.len() == 4;
        }
        assert!(seen_four);
    }

    #[test]
    fn token_ranges_wrap() {
        let r = TokenRange { start: Token(u64::MAX - 1), end: Token(5) };
        assert!(r.contains(Token(u64::MAX)));
        assert!(r.contains(Token(0)));
        assert!(r.contains(Token(5)));
        assert!(!r.contains(Token(6)));
        assert!(!r.contains(Token(u64::MAX - 1)));
        assert_eq!(r.size(), 7);
        assert_eq!(TokenRange { start: Token(3), end: Token(3) }.size(), 1u128 << 64);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// A RangeSet holds a token iff one of its ranges does.
        #[test]
        fn a_range_set_agrees_with_its_ranges(
            ranges in prop::collection::vec((any::<u64>(), any::<u64>()), 0..8),
            edges in prop::collection::vec(0usize..16, 0..8),
            probes in prop::collection::vec(any::<u64>(), 64),
        ) {
            let ranges: Vec<TokenRange> =
                ranges.into_iter().map(|(s, e)| TokenRange { start: Token(s), end: Token(e) }).collect();
            let set = RangeSet::new(ranges.iter().copied());
            // Probe at and around every boundary as well as at random.
            let mut all = probes;
            for i in edges {
                if let Some(r) = ranges.get(i % ranges.len().max(1)) {
                    all.extend([r.start.0, r.start.0.wrapping_add(1), r.end.0, r.end.0.wrapping_add(1)]);
                }
            }
            all.extend([0, u64::MAX]);
            for t in all.into_iter().map(Token) {
                prop_assert_eq!(set.contains(t), ranges.iter().any(|r| r.contains(t)), "token {}", t.0);
            }
        }

        /// Applying the plan to the old replica sets gives exactly the new ones.
        #[test]
        fn the_plan_turns_old_placement_into_new(
            old_ids in prop::collection::btree_set(1u64..20, 1..7),
            new_ids in prop::collection::btree_set(1u64..20, 1..7),
            n in 1usize..4,
            probes in prop::collection::vec(any::<u64>(), 50),
        ) {
            let old_ids: Vec<u64> = old_ids.into_iter().collect();
            let new_ids: Vec<u64> = new_ids.into_iter().collect();
            let mk = |ids: &[u64]| -> Vec<(NodeId, Vec<Token>)> {
                ids.iter().map(|id| (NodeId(*id), vnode_tokens(NodeId(*id), 16))).collect()
            };
            let (old, new) = (mk(&old_ids), mk(&new_ids));
            let p = plan(&old, &new, n, &[]);
            let (old_ring, new_ring) = (Ring::new(old.clone()), Ring::new(new.clone()));
            for t in probes.into_iter().map(Token) {
                let before = old_ring.replicas(t, n);
                let after = new_ring.replicas(t, n);
                let m = p.moves.iter().find(|m| m.range.contains(t));
                match m {
                    None => prop_assert!(same_set(&before, &after)),
                    Some(m) => {
                        prop_assert_eq!(&m.old, &before);
                        prop_assert_eq!(&m.new, &after);
                        let gainers: Vec<NodeId> = after.iter().filter(|a| !before.contains(a)).copied().collect();
                        let streamed: Vec<NodeId> = m.streams.iter().map(|s| s.to).collect();
                        prop_assert_eq!(gainers, streamed);
                        for s in &m.streams {
                            prop_assert!(s.from.iter().all(|f| before.contains(f)));
                        }
                    }
                }
            }
        }
    }
}
