//! The value types the engine's API speaks: [`Stamp`] and [`Lookup`].

/// The version of a write: a hybrid logical clock reading and the id of the node that stamped
/// it. Ordered by `(hlc, node)`; the greater stamp wins (last write wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Stamp {
    /// Hybrid logical clock reading.
    pub hlc: u64,
    /// Id of the node that stamped the write; breaks ties between equal clocks.
    pub node: u64,
}

/// The answer of a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The key holds `value`, written at `stamp`.
    Found {
        /// The value.
        value: Vec<u8>,
        /// Its version.
        stamp: Stamp,
    },
    /// The key was deleted at `stamp` (a tombstone): replicas use the stamp to reconcile.
    Deleted {
        /// The delete's version.
        stamp: Stamp,
    },
    /// Nothing is known about the key.
    Missing,
}
