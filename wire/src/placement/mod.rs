//! Placement: where a key lives, computed identically by clients and nodes.
//!
//! - A key's [`Token`] is `xxh3_64(key)` with the fixed seed [`TOKEN_SEED`]. It never changes
//!   across processes, machines or versions: the golden values in the tests pin it.
//! - Each node owns [`VNODES_DEFAULT`] vnode tokens derived from its [`NodeId`] with
//!   [`vnode_tokens`]. A vnode token `t` owns the ring range `(previous vnode token, t]`.
//! - The replica set of a token is the owner of that range followed by the next distinct nodes
//!   clockwise, `N` in all ([`Ring::replicas`]).
//! - Inside a node, [`shard_of`] splits the token space into `S` equal contiguous slices, one per
//!   shard, so each shard owns a disjoint slice and a range moves between nodes shard by shard.
//!
//! This module does no I/O and uses no runtime.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of the key hash. Part of the on-disk and wire contract: never change it.
pub const TOKEN_SEED: u64 = 0x6B76_735F_746F_6B6E; // "kvs_tokn"
/// Seed of the vnode token hash. Part of the contract: never change it.
pub const VNODE_SEED: u64 = 0x6B76_735F_766E_6F64; // "kvs_vnod"
/// Vnodes per node unless configured otherwise.
pub const VNODES_DEFAULT: u16 = 150;
/// Upper bound on vnodes per node (keeps topology frames and ring builds small).
pub const VNODES_MAX: u16 = 4096;
/// Upper bound on shards per node.
pub const SHARDS_MAX: u16 = 1024;

/// A position on the ring: the 64-bit hash of a key, or a vnode's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

/// A node's stable identity, made on its first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// A shard (one core's engine) within a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u16);

/// The token of a key.
pub fn token_of(key: &[u8]) -> Token {
    Token(xxh3_64_with_seed(key, TOKEN_SEED))
}

/// The `count` vnode tokens of a node, derived from its id alone.
pub fn vnode_tokens(node: NodeId, count: u16) -> Vec<Token> {
    (0..u64::from(count))
        .map(|i| {
            let mut seed_bytes = [0u8; 16];
            let (a, b) = seed_bytes.split_at_mut(8);
            a.copy_from_slice(&node.0.to_le_bytes());
            b.copy_from_slice(&i.to_le_bytes());
            Token(xxh3_64_with_seed(&seed_bytes, VNODE_SEED))
        })
        .collect()
}

/// The shard of a node that owns `token`, when the node has `shards` shards: the token space
/// cut into `shards` equal contiguous slices. `shards` of 0 is treated as 1.
pub fn shard_of(token: Token, shards: u16) -> ShardId {
    let shards = u128::from(shards.max(1));
    // (token * shards) / 2^64 is below `shards`, so it fits a u16.
    ShardId(((u128::from(token.0) * shards) >> 64) as u16)
}

/// The ring: every vnode token of every node, sorted.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    /// (token, index into `nodes`), sorted by token then node id.
    vnodes: Vec<(Token, u32)>,
    nodes: Vec<NodeId>,
}

impl Ring {
    /// Builds a ring from each node's tokens. A node listed twice is merged.
    pub fn new(members: impl IntoIterator<Item = (NodeId, Vec<Token>)>) -> Ring {
        let mut nodes: Vec<NodeId> = Vec::new();
        let mut vnodes: Vec<(Token, u32)> = Vec::new();
        for (node, tokens) in members {
            let index = match nodes.iter().position(|n| *n == node) {
                Some(i) => i,
                None => {
                    nodes.push(node);
                    nodes.len() - 1
                }
            };
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            vnodes.extend(tokens.into_iter().map(|t| (t, index)));
        }
        let ids = nodes.clone();
        vnodes.sort_by_key(|(t, i)| (*t, ids.get(*i as usize).copied()));
        vnodes.dedup();
        Ring { vnodes, nodes }
    }

    /// Number of distinct nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of vnodes.
    pub fn vnode_count(&self) -> usize {
        self.vnodes.len()
    }

    /// Index in `vnodes` of the vnode owning `token`: the first vnode token >= `token`,
    /// wrapping to the first.
    fn owner_index(&self, token: Token) -> usize {
        let i = self.vnodes.partition_point(|(t, _)| *t < token);
        if i == self.vnodes.len() {
            0
        } else {
            i
        }
    }

    /// The node owning `token` (the first replica), or `None` on an empty ring.
    pub fn primary(&self, token: Token) -> Option<NodeId> {
        let (_, n) = self.vnodes.get(self.owner_index(token))?;
        self.nodes.get(*n as usize).copied()
    }

    /// The replica set of `token`: up to `n` distinct nodes clockwise from its owner. Fewer when
    /// the ring has fewer nodes.
    pub fn replicas(&self, token: Token, n: usize) -> Vec<NodeId> {
        let want = n.min(self.nodes.len());
        let mut out: Vec<NodeId> = Vec::with_capacity(want);
        if want == 0 || self.vnodes.is_empty() {
            return out;
        }
        let start = self.owner_index(token);
        let len = self.vnodes.len();
        for step in 0..len {
            let Some((_, n)) = self.vnodes.get((start + step) % len) else {
                break;
            };
            let Some(node) = self.nodes.get(*n as usize) else {
                continue;
            };
            if !out.contains(node) {
                out.push(*node);
                if out.len() == want {
                    break;
                }
            }
        }
        out
    }

    /// The share of the token space each node owns as primary, in the order nodes were given.
    pub fn ownership(&self) -> Vec<(NodeId, f64)> {
        let mut owned = vec![0u128; self.nodes.len()];
        let len = self.vnodes.len();
        for (i, (t, n)) in self.vnodes.iter().enumerate() {
            // Range (prev, t]: its size is t - prev, wrapping for the first vnode.
            let prev = if i == 0 {
                self.vnodes.get(len - 1).map(|(p, _)| p.0).unwrap_or(0)
            } else {
                self.vnodes.get(i - 1).map(|(p, _)| p.0).unwrap_or(0)
            };
            let size = if len == 1 { 1u128 << 64 } else { u128::from(t.0.wrapping_sub(prev)) };
            if let Some(o) = owned.get_mut(*n as usize) {
                *o += size;
            }
        }
        let total = 2f64.powi(64);
        self.nodes.iter().zip(owned).map(|(id, o)| (*id, o as f64 / total)).collect()
    }
}

#[cfg(test)]
mod tests;
