//! Quorum bookkeeping of one request: how many replicas a consistency asks for, when a write
//! has enough acknowledgements, and which version a read returns.
//!
//! Three pure parts, fed by the coordinator (the shard that received the request) with what
//! happened, in any order; none does I/O, reads a clock or spawns a task:
//!
//! - [`QuorumOptions::required`] turns a request's [`Consistency`] into a replica count for its
//!   [`Access`] (R for a read, W for a write), given the replication factor N, or refuses it
//!   ([`ConsistencyError`], answered as `InvalidRequest`).
//! - [`WriteTracker`]: built from the key's replica set (each replica alive or not, per the
//!   failure detector) and W. Refuses up front with `Unavailable { needed, alive }` when fewer
//!   than W replicas are alive; then takes each replica's acknowledgement or failure and the
//!   coordinator's timeout, and decides `Success` once W acknowledged, or `Timeout
//!   { acknowledged, needed }` once W can no longer be reached or time is up. It names the
//!   replicas that missed the write (down, failed, timed out): they get hints.
//! - [`ReadResolver`]: built the same way with R. It picks the replicas to ask (the first R
//!   alive, in the caller's order: full data from the first, digests from the others), takes
//!   their replies, asks for full data when a digest is newer than every data reply, and
//!   resolves to the newest version by stamp `(hlc, node)` and the replicas that answered with
//!   an older one (stale: they get read repair).
//!
//! ## Digests are stamps
//! Cassandra's digest is a hash of the data because its cell timestamps come from clients and
//! may collide. A kvs version's stamp is unique per key (one shard stamps every write of a key,
//! with a hybrid logical clock that never repeats, and the node id), so the stamp identifies the
//! version: a digest reply is the replica's newest stamp (or none), 16 bytes whatever the value's
//! size, and comparing two versions needs no hashing. A digest older than the data reply's
//! stamp needs no fetch: the data is newer and the digest's replica is stale. Only a digest
//! newer than every data reply asks for that replica's full data.
//!
//! ## Tombstones
//! A delete is a version like any other (its value is `None`): a newer tombstone wins over an
//! older value and the read answers "missing"; replicas holding the older value are stale. A
//! replica with nothing at all for the key ranks below every version.
//!
//! ## Decisions are final
//! Once a tracker or a resolver has decided (success, failure, resolved) its decision does not
//! change. Replies that arrive later are still recorded where they matter (a late write
//! acknowledgement removes the replica from [`WriteTracker::missed`]).
//!
//! ## Not yet
//! - No speculative reads: a read asks exactly R replicas, so one of them failing fails the
//!   read even when a spare replica is alive (as Cassandra without speculative retry).
//! - Replies that arrive after a read is resolved are not looked at, so a late replica's
//!   staleness is left to anti-entropy.
//! - [`Versioned`] has no expiry: read repair of a value with a TTL needs the engine to report
//!   the expiry with the value (`kvs_shards::Lookup` does not yet).
//!
//! ## Defaults
//! The node's configured defaults are [`READ_CONSISTENCY_DEFAULT`] and
//! [`WRITE_CONSISTENCY_DEFAULT`] (quorum: R = W = 2 when N =
//! [`REPLICATION_FACTOR_DEFAULT`] = 3) until the node config carries its own keys.

use kvs_wire::msg::{Consistency, ErrorDetail, Stamp};
use kvs_wire::placement::NodeId;

use super::OptionsError;

/// N, replicas of each key, unless configured otherwise.
pub const REPLICATION_FACTOR_DEFAULT: u8 = 3;
/// What `Consistency::Default` means for a read: a quorum (R = 2 of N = 3).
pub const READ_CONSISTENCY_DEFAULT: Consistency = Consistency::Quorum;
/// What `Consistency::Default` means for a write: a quorum (W = 2 of N = 3).
pub const WRITE_CONSISTENCY_DEFAULT: Consistency = Consistency::Quorum;

/// Whether a request reads (counts R) or writes (counts W).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    /// `r` or `w`, as the CLI flags name the counts.
    pub fn letter(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

/// How many replicas a request needs: at least 1 (and at most N when it comes from
/// [`QuorumOptions::required`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Required(u8);

impl Required {
    /// `Some` for 1 and more.
    pub fn new(count: u8) -> Option<Required> {
        (count > 0).then_some(Required(count))
    }

    /// The count.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Why a request's consistency cannot be served whatever the replicas' health.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsistencyError {
    #[error("{} = 0 is not a consistency: a {} needs at least 1 replica", .access.letter(), .access.noun())]
    Zero { access: Access },
    #[error(
        "{} = {count} exceeds the replication factor {replication_factor}: a {} has at most \
         {replication_factor} replica(s) to answer it",
        .access.letter(),
        .access.noun()
    )]
    AboveReplicationFactor { access: Access, count: u8, replication_factor: u8 },
}

/// N and what `Consistency::Default` means for reads and for writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumOptions {
    /// N, replicas per key, at least 1. Default [`REPLICATION_FACTOR_DEFAULT`].
    pub replication_factor: u8,
    /// R of a read at `Consistency::Default`; itself not `Default`, and at most N once
    /// resolved. Default [`READ_CONSISTENCY_DEFAULT`].
    pub read_default: Consistency,
    /// W of a write at `Consistency::Default`. Default [`WRITE_CONSISTENCY_DEFAULT`].
    pub write_default: Consistency,
}

impl Default for QuorumOptions {
    fn default() -> QuorumOptions {
        QuorumOptions::with_replication_factor(REPLICATION_FACTOR_DEFAULT)
    }
}

impl QuorumOptions {
    /// The default consistencies with `replication_factor` replicas.
    pub fn with_replication_factor(replication_factor: u8) -> QuorumOptions {
        QuorumOptions {
            replication_factor,
            read_default: READ_CONSISTENCY_DEFAULT,
            write_default: WRITE_CONSISTENCY_DEFAULT,
        }
    }

    /// Checks N and that each default names a count this N can serve.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.replication_factor == 0 {
            return Err(OptionsError::Invalid {
                field: "replication_factor",
                reason: "must be at least 1".into(),
            });
        }
        for (field, access, c) in [
            ("read_consistency", Access::Read, self.read_default),
            ("write_consistency", Access::Write, self.write_default),
        ] {
            if c == Consistency::Default {
                return Err(OptionsError::Invalid {
                    field,
                    reason: "the default cannot be `default`: name one, quorum, all or a count"
                        .into(),
                });
            }
            self.required(c, access)
                .map_err(|e| OptionsError::Invalid { field, reason: e.to_string() })?;
        }
        Ok(())
    }

    /// The replica count `consistency` asks of an `access`: `One` 1, `Quorum` N / 2 + 1, `All`
    /// N, `Count(n)` n when 1 <= n <= N, `Default` the configured default for the access.
    pub fn required(
        &self,
        consistency: Consistency,
        access: Access,
    ) -> Result<Required, ConsistencyError> {
        let n = self.replication_factor;
        let resolved = match consistency {
            Consistency::Default => match access {
                Access::Read => self.read_default,
                Access::Write => self.write_default,
            },
            other => other,
        };
        let count = match resolved {
            Consistency::One => 1,
            Consistency::Quorum => n / 2 + 1,
            Consistency::All => n,
            Consistency::Count(count) => count,
            // A default that is itself `Default` fails `validate`; read it as a quorum rather
            // than refuse every request.
            Consistency::Default => n / 2 + 1,
        };
        if count > n {
            return Err(ConsistencyError::AboveReplicationFactor {
                access,
                count,
                replication_factor: n,
            });
        }
        Required::new(count).ok_or(ConsistencyError::Zero { access })
    }
}

/// One replica of a key's replica set, as the coordinator sees it when the request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Replica {
    pub node: NodeId,
    /// Whether the failure detector takes it to be up (and the coordinator can reach it).
    pub alive: bool,
}

/// Why a request failed for want of replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum QuorumFailure {
    /// Fewer than `needed` replicas were alive; the request was sent to none.
    #[error("needed {needed}, alive {alive}")]
    Unavailable { needed: u8, alive: u8 },
    /// Only `acknowledged` of the `needed` replicas answered: the others timed out or failed.
    /// A write stays applied on the ones that acknowledged.
    #[error("{acknowledged} of {needed} acknowledged")]
    Timeout { acknowledged: u8, needed: u8 },
}

impl QuorumFailure {
    /// The counts as the wire carries them.
    pub fn detail(self) -> ErrorDetail {
        match self {
            QuorumFailure::Unavailable { needed, alive } => {
                ErrorDetail::Unavailable { needed, alive }
            }
            QuorumFailure::Timeout { acknowledged, needed } => {
                ErrorDetail::Timeout { acknowledged, needed }
            }
        }
    }
}

/// Counts fit a `u8`: replica sets have at most N <= 255 members.
fn count_u8(n: usize) -> u8 {
    u8::try_from(n).unwrap_or(u8::MAX)
}

/// The replicas of `set`, each node once (its first entry wins), and how many are alive; or
/// `Unavailable` when fewer than `needed` are.
fn distinct_alive(set: &[Replica], needed: Required) -> Result<(Vec<Replica>, u8), QuorumFailure> {
    let mut distinct: Vec<Replica> = Vec::with_capacity(set.len());
    for r in set {
        if !distinct.iter().any(|d| d.node == r.node) {
            distinct.push(*r);
        }
    }
    let alive = count_u8(distinct.iter().filter(|r| r.alive).count());
    if alive < needed.get() {
        return Err(QuorumFailure::Unavailable { needed: needed.get(), alive });
    }
    Ok((distinct, alive))
}

/// Where a write stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WriteDecision {
    /// Fewer than W acknowledged so far, and W can still be reached.
    Pending,
    /// W replicas acknowledged.
    Success,
    /// W cannot be reached any more, or time ran out first.
    Failed(QuorumFailure),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteState {
    /// Not alive when the write started: not sent.
    Down,
    Pending,
    Acked,
    Failed,
    /// Still pending when the coordinator's timeout fired.
    TimedOut,
}

/// The acknowledgements of one write. See the module docs.
#[derive(Clone, Debug)]
pub struct WriteTracker {
    needed: Required,
    replicas: Vec<(NodeId, WriteState)>,
    decision: WriteDecision,
}

impl WriteTracker {
    /// A tracker for a write to `replicas` needing `needed` acknowledgements; `Unavailable` when
    /// fewer than that are alive. The write goes to every alive replica ([`Self::targets`]).
    pub fn new(replicas: &[Replica], needed: Required) -> Result<WriteTracker, QuorumFailure> {
        let (distinct, _) = distinct_alive(replicas, needed)?;
        let replicas = distinct
            .iter()
            .map(|r| (r.node, if r.alive { WriteState::Pending } else { WriteState::Down }))
            .collect();
        Ok(WriteTracker { needed, replicas, decision: WriteDecision::Pending })
    }

    /// The replicas to send the write to: every one alive at the start.
    pub fn targets(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().filter(|(_, s)| *s != WriteState::Down).map(|(n, _)| *n)
    }

    /// W.
    pub fn needed(&self) -> Required {
        self.needed
    }

    /// `node` acknowledged the write. A node that was not sent the write, or already answered,
    /// changes nothing; a late acknowledgement (after the timeout) is recorded for
    /// [`Self::missed`] but does not change a decision.
    pub fn on_ack(&mut self, node: NodeId) -> WriteDecision {
        if let Some(slot) = self.slot(node) {
            if matches!(*slot, WriteState::Pending | WriteState::TimedOut) {
                *slot = WriteState::Acked;
            }
        }
        self.decide()
    }

    /// `node` answered that it could not apply the write (or its link failed).
    pub fn on_failure(&mut self, node: NodeId) -> WriteDecision {
        if let Some(slot) = self.slot(node) {
            if *slot == WriteState::Pending {
                *slot = WriteState::Failed;
            }
        }
        self.decide()
    }

    /// The coordinator's wait is over: replicas still pending have timed out.
    pub fn on_timeout(&mut self) -> WriteDecision {
        for (_, s) in &mut self.replicas {
            if *s == WriteState::Pending {
                *s = WriteState::TimedOut;
            }
        }
        self.decide()
    }

    /// The decision so far.
    pub fn decision(&self) -> WriteDecision {
        self.decision
    }

    /// Replicas that acknowledged.
    pub fn acknowledged(&self) -> u8 {
        self.count(WriteState::Acked)
    }

    /// Whether every replica sent the write has answered (or timed out): nothing more will
    /// change [`Self::missed`] except late acknowledgements.
    pub fn is_settled(&self) -> bool {
        self.count(WriteState::Pending) == 0
    }

    /// Replicas that do not hold the write as far as the coordinator knows: down at the start,
    /// failed, timed out, or not answered yet. They are the write's hints once it is settled.
    pub fn missed(&self) -> Vec<NodeId> {
        self.replicas.iter().filter(|(_, s)| *s != WriteState::Acked).map(|(n, _)| *n).collect()
    }

    /// The replicas that had not answered when the timeout came (for the error message).
    pub fn timed_out(&self) -> Vec<NodeId> {
        self.replicas.iter().filter(|(_, s)| *s == WriteState::TimedOut).map(|(n, _)| *n).collect()
    }

    fn slot(&mut self, node: NodeId) -> Option<&mut WriteState> {
        self.replicas.iter_mut().find(|(n, _)| *n == node).map(|(_, s)| s)
    }

    fn count(&self, state: WriteState) -> u8 {
        count_u8(self.replicas.iter().filter(|(_, s)| *s == state).count())
    }

    fn decide(&mut self) -> WriteDecision {
        if self.decision != WriteDecision::Pending {
            return self.decision;
        }
        let needed = self.needed.get();
        let acked = self.acknowledged();
        let pending = self.count(WriteState::Pending);
        if acked >= needed {
            self.decision = WriteDecision::Success;
        } else if acked.saturating_add(pending) < needed {
            self.decision =
                WriteDecision::Failed(QuorumFailure::Timeout { acknowledged: acked, needed });
        }
        self.decision
    }
}

/// A version of a key as a replica holds it: a value, or a tombstone (`value: None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub stamp: Stamp,
    pub value: Option<Vec<u8>>,
}

/// What a replica answered to a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadReply {
    /// Its newest version in full, or `None` when it holds nothing for the key.
    Data(Option<Versioned>),
    /// The stamp of its newest version, or `None` (see "Digests are stamps" in the module docs).
    Digest(Option<Stamp>),
}

impl ReadReply {
    fn stamp(&self) -> Option<Stamp> {
        match self {
            ReadReply::Data(v) => v.as_ref().map(|v| v.stamp),
            ReadReply::Digest(s) => *s,
        }
    }
}

/// What to ask a replica for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadKind {
    Data,
    Digest,
}

/// Where a read stands after an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadStep {
    /// Waiting for replies.
    Pending,
    /// Ask these replicas for their full data: each answered with a digest newer than every
    /// data reply. Their [`ReadReply::Data`] answers go to [`ReadResolver::on_reply`].
    NeedData(Vec<NodeId>),
    /// Decided: see [`ReadResolver::outcome`].
    Resolved,
    /// Fewer than R replicas answered in time, or R cannot be reached any more.
    Failed(QuorumFailure),
}

/// A resolved read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    /// The newest version among the replies; `None` when no replica holds any.
    pub newest: Option<Versioned>,
    /// Replicas that answered with an older version (or none): they need read repair with
    /// `newest`.
    pub stale: Vec<NodeId>,
}

impl ReadOutcome {
    /// What the read answers: the value and its stamp, or `None` when the key is missing or its
    /// newest version is a tombstone.
    pub fn value(&self) -> Option<(&[u8], Stamp)> {
        let v = self.newest.as_ref()?;
        v.value.as_deref().map(|bytes| (bytes, v.stamp))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ReadState {
    /// Not alive at the start.
    Down,
    /// Alive but not asked (the read asks only R).
    Spare,
    Awaiting(ReadKind),
    Answered(ReadReply),
    Failed,
    TimedOut,
}

/// The replies of one read. See the module docs.
#[derive(Clone, Debug)]
pub struct ReadResolver {
    needed: Required,
    replicas: Vec<(NodeId, ReadState)>,
    outcome: Option<ReadOutcome>,
    failed: Option<QuorumFailure>,
}

impl ReadResolver {
    /// A resolver for a read of `replicas` needing `needed` replies; `Unavailable` when fewer
    /// than that are alive. It asks the first `needed` alive replicas in the order given (put
    /// the local replica first): full data from the first, digests from the others.
    pub fn new(replicas: &[Replica], needed: Required) -> Result<ReadResolver, QuorumFailure> {
        let (distinct, _) = distinct_alive(replicas, needed)?;
        let mut asked = 0u8;
        let replicas = distinct
            .iter()
            .map(|r| {
                let state = if !r.alive {
                    ReadState::Down
                } else if asked < needed.get() {
                    let kind = if asked == 0 { ReadKind::Data } else { ReadKind::Digest };
                    asked += 1;
                    ReadState::Awaiting(kind)
                } else {
                    ReadState::Spare
                };
                (r.node, state)
            })
            .collect();
        Ok(ReadResolver { needed, replicas, outcome: None, failed: None })
    }

    /// The replicas to ask and what to ask each for.
    pub fn targets(&self) -> Vec<(NodeId, ReadKind)> {
        self.replicas
            .iter()
            .filter_map(|(n, s)| match s {
                ReadState::Awaiting(kind) => Some((*n, *kind)),
                _ => None,
            })
            .collect()
    }

    /// R.
    /// The replicas that had not answered when the timeout came (for the error message).
    pub fn timed_out(&self) -> Vec<NodeId> {
        self.replicas.iter().filter(|(_, s)| *s == ReadState::TimedOut).map(|(n, _)| *n).collect()
    }

    pub fn needed(&self) -> Required {
        self.needed
    }

    /// `node` answered. A node not asked, or one that already answered (unless it was asked
    /// again for data), changes nothing; nor does anything after the decision.
    pub fn on_reply(&mut self, node: NodeId, reply: ReadReply) -> ReadStep {
        if self.is_decided() {
            return self.step_decided();
        }
        if let Some(slot) = self.slot(node) {
            if matches!(slot, ReadState::Awaiting(_)) {
                *slot = ReadState::Answered(reply);
            }
        }
        self.decide()
    }

    /// `node` could not answer (an error, a broken link).
    pub fn on_failure(&mut self, node: NodeId) -> ReadStep {
        if self.is_decided() {
            return self.step_decided();
        }
        if let Some(slot) = self.slot(node) {
            if matches!(slot, ReadState::Awaiting(_)) {
                *slot = ReadState::Failed;
            }
        }
        self.decide()
    }

    /// The coordinator's wait is over: every replica still awaited has timed out.
    /// Replaces `failed`, a replica asked for `kind` that failed before answering, with a spare
    /// (an alive replica the read did not ask): the spare is now awaited for `kind` and
    /// returned for the caller to ask. Call it before [`ReadResolver::on_failure`] so the read
    /// stays within reach of R. None when the read is decided, `failed` was not awaited, or no
    /// spare is left.
    pub fn replace_with_spare(&mut self, failed: NodeId, kind: ReadKind) -> Option<NodeId> {
        if self.is_decided() {
            return None;
        }
        let awaited =
            self.replicas.iter().any(|(n, s)| *n == failed && matches!(s, ReadState::Awaiting(_)));
        if !awaited {
            return None;
        }
        let (node, slot) = self.replicas.iter_mut().find(|(_, s)| *s == ReadState::Spare)?;
        *slot = ReadState::Awaiting(kind);
        Some(*node)
    }

    pub fn on_timeout(&mut self) -> ReadStep {
        if self.is_decided() {
            return self.step_decided();
        }
        for (_, s) in &mut self.replicas {
            if matches!(s, ReadState::Awaiting(_)) {
                *s = ReadState::TimedOut;
            }
        }
        match self.decide() {
            // Data can no longer arrive: a read that still needed some has failed.
            ReadStep::Pending | ReadStep::NeedData(_) => {
                let failure = QuorumFailure::Timeout {
                    acknowledged: self.answered(),
                    needed: self.needed.get(),
                };
                self.failed = Some(failure);
                ReadStep::Failed(failure)
            }
            step => step,
        }
    }

    /// The resolved read, once [`ReadStep::Resolved`].
    pub fn outcome(&self) -> Option<&ReadOutcome> {
        self.outcome.as_ref()
    }

    /// The resolved read, by value.
    pub fn into_outcome(self) -> Option<ReadOutcome> {
        self.outcome
    }

    fn is_decided(&self) -> bool {
        self.outcome.is_some() || self.failed.is_some()
    }

    fn step_decided(&self) -> ReadStep {
        match self.failed {
            Some(f) => ReadStep::Failed(f),
            None => ReadStep::Resolved,
        }
    }

    fn slot(&mut self, node: NodeId) -> Option<&mut ReadState> {
        self.replicas.iter_mut().find(|(n, _)| *n == node).map(|(_, s)| s)
    }

    fn answers(&self) -> impl Iterator<Item = (NodeId, &ReadReply)> {
        self.replicas.iter().filter_map(|(n, s)| match s {
            ReadState::Answered(r) => Some((*n, r)),
            _ => None,
        })
    }

    /// Replies that count towards R: every answer, since a digest older than the data is as
    /// good as data (and a newer one is fetched).
    fn answered(&self) -> u8 {
        count_u8(self.answers().count())
    }

    fn awaiting(&self) -> u8 {
        count_u8(self.replicas.iter().filter(|(_, s)| matches!(s, ReadState::Awaiting(_))).count())
    }

    fn decide(&mut self) -> ReadStep {
        let needed = self.needed.get();
        let answered = self.answered();
        let awaiting = self.awaiting();
        if answered < needed {
            if answered.saturating_add(awaiting) < needed {
                let failure = QuorumFailure::Timeout { acknowledged: answered, needed };
                self.failed = Some(failure);
                return ReadStep::Failed(failure);
            }
            return ReadStep::Pending;
        }
        // The newest full version; `Some(None)` when data replies hold nothing.
        let best_data: Option<Option<&Versioned>> = self
            .answers()
            .filter_map(|(_, r)| match r {
                ReadReply::Data(v) => Some(v.as_ref()),
                ReadReply::Digest(_) => None,
            })
            .max_by_key(|v| v.map(|v| v.stamp));
        let best_data_stamp = best_data.map(|v| v.map(|v| v.stamp));
        let best_digest: Option<Option<Stamp>> = self
            .answers()
            .filter_map(|(_, r)| match r {
                ReadReply::Digest(s) => Some(*s),
                ReadReply::Data(_) => None,
            })
            .max();
        let fetch_from = match (best_data_stamp, best_digest) {
            // No full data yet: wait for a data reply still coming, else fetch the newest digest.
            (None, Some(digest)) => {
                if self.replicas.iter().any(|(_, s)| *s == ReadState::Awaiting(ReadKind::Data)) {
                    return ReadStep::Pending;
                }
                Some(digest)
            }
            (Some(data), Some(digest)) if digest > data => Some(digest),
            _ => None,
        };
        if let Some(wanted) = fetch_from {
            let newer: Vec<NodeId> = self
                .answers()
                .filter(|(_, r)| matches!(r, ReadReply::Digest(s) if *s == wanted))
                .map(|(n, _)| n)
                .take(1)
                .collect();
            for node in &newer {
                if let Some(slot) = self.slot(*node) {
                    *slot = ReadState::Awaiting(ReadKind::Data);
                }
            }
            return ReadStep::NeedData(newer);
        }
        let newest: Option<Versioned> = best_data.flatten().cloned();
        let newest_stamp = newest.as_ref().map(|v| v.stamp);
        let stale =
            self.answers().filter(|(_, r)| r.stamp() < newest_stamp).map(|(n, _)| n).collect();
        self.outcome = Some(ReadOutcome { newest, stale });
        ReadStep::Resolved
    }
}

#[cfg(test)]
mod tests;
