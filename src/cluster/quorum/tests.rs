//! Goal: the quorum arithmetic, the write tracker's decisions and the read resolver's choice of
//! version are right for every order of events, not just the happy ones.
//! Method: a table of consistency resolutions; scenario tests for each rule; property tests that
//! drive trackers and resolvers with random replica sets, random replies in random orders and
//! timeouts, checked against a direct computation (the newest stamp among the replies, the
//! count of acknowledgements).

use proptest::prelude::*;

use super::*;

fn stamp(hlc: u64, node: u64) -> Stamp {
    Stamp { hlc, node }
}

fn up(ids: &[u64]) -> Vec<Replica> {
    ids.iter().map(|&id| Replica { node: NodeId(id), alive: true }).collect()
}

fn req(n: u8) -> Required {
    Required::new(n).unwrap()
}

fn value(hlc: u64, node: u64, v: &str) -> Option<Versioned> {
    Some(Versioned { stamp: stamp(hlc, node), value: Some(v.as_bytes().to_vec()) })
}

fn tombstone(hlc: u64, node: u64) -> Option<Versioned> {
    Some(Versioned { stamp: stamp(hlc, node), value: None })
}

/// The first whitespace-separated word of `s` and the rest, trimmed.
fn first_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// The cases of `testdata/consistency.txt` (format in its header).
#[test]
fn consistency_resolution_table() {
    use Access::{Read, Write};
    use Consistency::{All, Default as Def, One, Quorum};
    let table = include_str!("testdata/consistency.txt");
    let mut cases = 0;
    for (i, line) in table.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("testdata/consistency.txt:{}: {line}", i + 1);
        let (n, rest) = first_word(line);
        let (c, rest) = first_word(rest);
        let (access, expected) = first_word(rest);
        let n: u8 = n.parse().unwrap_or_else(|e| panic!("{at}: N: {e}"));
        let c = match c {
            "default" => Def,
            "one" => One,
            "quorum" => Quorum,
            "all" => All,
            count => Consistency::Count(count.parse().unwrap_or_else(|e| panic!("{at}: {e}"))),
        };
        let access = match access {
            "read" => Read,
            "write" => Write,
            other => panic!("{at}: access {other:?}"),
        };
        let got = QuorumOptions::with_replication_factor(n).required(c, access);
        match expected.strip_prefix("refused:") {
            Some(text) => {
                let err = got.expect_err(&at).to_string();
                assert!(err.contains(text.trim()), "{at}: got {err:?}");
            }
            None => {
                let want: u8 = expected.parse().unwrap_or_else(|e| panic!("{at}: {e}"));
                assert_eq!(got, Ok(req(want)), "{at}");
            }
        }
        cases += 1;
    }
    assert!(cases >= 25, "the table was read: {cases} cases");
    // Configured defaults other than quorum apply to `Default` only.
    let o = QuorumOptions {
        replication_factor: 3,
        read_default: Consistency::One,
        write_default: Consistency::All,
    };
    assert_eq!(o.required(Def, Read), Ok(req(1)));
    assert_eq!(o.required(Def, Write), Ok(req(3)));
    assert_eq!(o.required(Quorum, Write), Ok(req(2)));
}

#[test]
fn quorum_options_validate() {
    assert!(QuorumOptions::default().validate().is_ok());
    assert_eq!(QuorumOptions::default().replication_factor, 3);
    assert!(QuorumOptions::with_replication_factor(1).validate().is_ok());
    let bad = [
        QuorumOptions { replication_factor: 0, ..QuorumOptions::default() },
        QuorumOptions { read_default: Consistency::Default, ..QuorumOptions::default() },
        QuorumOptions { write_default: Consistency::Count(4), ..QuorumOptions::default() },
        QuorumOptions { read_default: Consistency::Count(0), ..QuorumOptions::default() },
    ];
    for o in bad {
        assert!(o.validate().is_err(), "{o:?}");
    }
    let err = QuorumOptions { write_default: Consistency::Count(4), ..QuorumOptions::default() }
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("write_consistency") && err.contains("replication factor 3"), "{err}");
}

#[test]
fn write_is_unavailable_up_front_when_too_few_are_alive() {
    let mut set = up(&[1, 2, 3]);
    set[1].alive = false;
    set[2].alive = false;
    let err = WriteTracker::new(&set, req(2)).unwrap_err();
    assert_eq!(err, QuorumFailure::Unavailable { needed: 2, alive: 1 });
    assert_eq!(err.to_string(), "needed 2, alive 1");
    assert_eq!(err.detail(), ErrorDetail::Unavailable { needed: 2, alive: 1 });
    // A node listed twice is one replica.
    let err = WriteTracker::new(&up(&[1, 1]), req(2)).unwrap_err();
    assert_eq!(err, QuorumFailure::Unavailable { needed: 2, alive: 1 });
    // Fewer replicas than W (a cluster smaller than N) is also unavailable.
    assert!(WriteTracker::new(&up(&[1, 2]), req(3)).is_err());
    assert!(WriteTracker::new(&[], req(1)).is_err());
}

#[test]
fn write_succeeds_at_w_and_names_the_replicas_that_missed_it() {
    let mut set = up(&[1, 2, 3]);
    set[2].alive = false;
    let mut t = WriteTracker::new(&set, req(2)).unwrap();
    assert_eq!(t.targets().collect::<Vec<_>>(), vec![NodeId(1), NodeId(2)]);
    assert_eq!(t.on_ack(NodeId(1)), WriteDecision::Pending);
    // A repeated ack and one from a node that was not sent the write count for nothing.
    assert_eq!(t.on_ack(NodeId(1)), WriteDecision::Pending);
    assert_eq!(t.on_ack(NodeId(3)), WriteDecision::Pending);
    assert_eq!(t.on_ack(NodeId(9)), WriteDecision::Pending);
    assert_eq!(t.acknowledged(), 1);
    assert_eq!(t.on_ack(NodeId(2)), WriteDecision::Success);
    assert!(t.is_settled());
    assert_eq!(t.missed(), vec![NodeId(3)], "the down replica gets a hint");
}

#[test]
fn write_fails_as_soon_as_w_is_out_of_reach() {
    let mut t = WriteTracker::new(&up(&[1, 2, 3]), req(2)).unwrap();
    assert_eq!(t.on_failure(NodeId(1)), WriteDecision::Pending);
    let failed = WriteDecision::Failed(QuorumFailure::Timeout { acknowledged: 0, needed: 2 });
    assert_eq!(t.on_failure(NodeId(2)), failed);
    // Final: a later ack is recorded (no hint needed for node 3) but the answer stands.
    assert_eq!(t.on_ack(NodeId(3)), failed);
    assert_eq!(t.missed(), vec![NodeId(1), NodeId(2)]);
    // A failure after an ack is ignored: the first answer counts.
    let mut t = WriteTracker::new(&up(&[1]), req(1)).unwrap();
    assert_eq!(t.on_ack(NodeId(1)), WriteDecision::Success);
    assert_eq!(t.on_failure(NodeId(1)), WriteDecision::Success);
    assert!(t.missed().is_empty());
}

#[test]
fn write_times_out_with_the_acknowledged_count() {
    let mut t = WriteTracker::new(&up(&[1, 2, 3]), req(3)).unwrap();
    t.on_ack(NodeId(2));
    assert!(!t.is_settled());
    let d = t.on_timeout();
    assert_eq!(d, WriteDecision::Failed(QuorumFailure::Timeout { acknowledged: 1, needed: 3 }));
    assert_eq!(
        QuorumFailure::Timeout { acknowledged: 1, needed: 3 }.to_string(),
        "1 of 3 acknowledged"
    );
    assert!(t.is_settled());
    assert_eq!(t.missed(), vec![NodeId(1), NodeId(3)]);
    // A late ack removes its replica from the hints, not the failure.
    assert_eq!(t.on_ack(NodeId(3)), d);
    assert_eq!(t.missed(), vec![NodeId(1)]);
    // A timeout after success changes nothing but the stragglers' state.
    let mut t = WriteTracker::new(&up(&[1, 2, 3]), req(1)).unwrap();
    assert_eq!(t.on_ack(NodeId(1)), WriteDecision::Success);
    assert_eq!(t.on_timeout(), WriteDecision::Success);
    assert_eq!(t.missed(), vec![NodeId(2), NodeId(3)]);
}

/// The single-node case the shard runs today: one replica, W = 1.
#[test]
fn one_replica_write_and_read() {
    let mut t = WriteTracker::new(&up(&[7]), req(1)).unwrap();
    assert_eq!(t.targets().collect::<Vec<_>>(), vec![NodeId(7)]);
    assert_eq!(t.on_ack(NodeId(7)), WriteDecision::Success);
    let mut r = ReadResolver::new(&up(&[7]), req(1)).unwrap();
    assert_eq!(r.targets(), vec![(NodeId(7), ReadKind::Data)]);
    assert_eq!(r.on_reply(NodeId(7), ReadReply::Data(value(5, 7, "v"))), ReadStep::Resolved);
    let o = r.outcome().unwrap();
    assert_eq!(o.value(), Some((&b"v"[..], stamp(5, 7))));
    assert!(o.stale.is_empty());
}

#[test]
fn read_asks_r_alive_replicas_data_from_the_first() {
    let mut set = up(&[1, 2, 3, 4]);
    set[0].alive = false;
    let r = ReadResolver::new(&set, req(2)).unwrap();
    assert_eq!(r.targets(), vec![(NodeId(2), ReadKind::Data), (NodeId(3), ReadKind::Digest)]);
    let err = ReadResolver::new(&set, req(4)).unwrap_err();
    assert_eq!(err, QuorumFailure::Unavailable { needed: 4, alive: 3 });
}

#[test]
fn older_digest_is_stale_without_a_fetch() {
    let mut r = ReadResolver::new(&up(&[1, 2, 3]), req(3)).unwrap();
    assert_eq!(r.on_reply(NodeId(2), ReadReply::Digest(Some(stamp(4, 1)))), ReadStep::Pending);
    assert_eq!(r.on_reply(NodeId(3), ReadReply::Digest(None)), ReadStep::Pending);
    assert_eq!(r.on_reply(NodeId(1), ReadReply::Data(value(9, 1, "new"))), ReadStep::Resolved);
    let o = r.into_outcome().unwrap();
    assert_eq!(o.value(), Some((&b"new"[..], stamp(9, 1))));
    assert_eq!(o.stale, vec![NodeId(2), NodeId(3)]);
}

#[test]
fn newer_digest_fetches_full_data_then_resolves() {
    let mut r = ReadResolver::new(&up(&[1, 2]), req(2)).unwrap();
    assert_eq!(r.on_reply(NodeId(1), ReadReply::Data(value(3, 1, "old"))), ReadStep::Pending);
    let step = r.on_reply(NodeId(2), ReadReply::Digest(Some(stamp(8, 2))));
    assert_eq!(step, ReadStep::NeedData(vec![NodeId(2)]));
    // The fetch is pending: a timeout now fails the read with what had answered.
    let mut timed = r.clone();
    assert_eq!(
        timed.on_timeout(),
        ReadStep::Failed(QuorumFailure::Timeout { acknowledged: 1, needed: 2 })
    );
    assert_eq!(r.on_reply(NodeId(2), ReadReply::Data(value(8, 2, "new"))), ReadStep::Resolved);
    let o = r.outcome().unwrap();
    assert_eq!(o.value(), Some((&b"new"[..], stamp(8, 2))));
    assert_eq!(o.stale, vec![NodeId(1)]);
}

#[test]
fn newer_tombstone_wins_and_reads_as_missing() {
    let mut r = ReadResolver::new(&up(&[1, 2, 3]), req(3)).unwrap();
    r.on_reply(NodeId(1), ReadReply::Data(value(5, 1, "v")));
    r.on_reply(NodeId(2), ReadReply::Digest(None));
    let step = r.on_reply(NodeId(3), ReadReply::Digest(Some(stamp(6, 3))));
    assert_eq!(step, ReadStep::NeedData(vec![NodeId(3)]));
    assert_eq!(r.on_reply(NodeId(3), ReadReply::Data(tombstone(6, 3))), ReadStep::Resolved);
    let o = r.outcome().unwrap();
    assert_eq!(o.value(), None);
    assert_eq!(o.newest, tombstone(6, 3), "the tombstone is what repair writes");
    assert_eq!(o.stale, vec![NodeId(1), NodeId(2)]);
    // An older tombstone loses to a newer value.
    let mut r = ReadResolver::new(&up(&[1, 2]), req(2)).unwrap();
    r.on_reply(NodeId(2), ReadReply::Digest(Some(stamp(2, 2))));
    assert_eq!(r.on_reply(NodeId(1), ReadReply::Data(value(3, 1, "v"))), ReadStep::Resolved);
    assert_eq!(r.outcome().unwrap().value(), Some((&b"v"[..], stamp(3, 1))));
    assert_eq!(r.outcome().unwrap().stale, vec![NodeId(2)]);
}

#[test]
fn missing_everywhere_is_missing_with_nothing_to_repair() {
    let mut r = ReadResolver::new(&up(&[1, 2]), req(2)).unwrap();
    r.on_reply(NodeId(2), ReadReply::Digest(None));
    assert_eq!(r.on_reply(NodeId(1), ReadReply::Data(None)), ReadStep::Resolved);
    let o = r.outcome().unwrap();
    assert_eq!((o.newest.clone(), o.value(), o.stale.len()), (None, None, 0));
}

#[test]
fn a_failed_replica_is_replaced_by_a_spare() {
    let mut r = ReadResolver::new(&up(&[1, 2, 3]), req(2)).unwrap();
    assert_eq!(r.targets(), vec![(NodeId(1), ReadKind::Data), (NodeId(2), ReadKind::Digest)]);
    assert_eq!(r.replace_with_spare(NodeId(2), ReadKind::Digest), Some(NodeId(3)));
    assert_eq!(r.on_failure(NodeId(2)), ReadStep::Pending, "3 keeps R within reach");
    assert_eq!(r.replace_with_spare(NodeId(3), ReadKind::Digest), None, "no spare left");
    assert_eq!(r.replace_with_spare(NodeId(2), ReadKind::Digest), None, "2 is not awaited");
    assert_eq!(r.on_reply(NodeId(1), ReadReply::Data(value(5, 1, "a"))), ReadStep::Pending);
    assert_eq!(r.on_reply(NodeId(3), ReadReply::Digest(Some(stamp(5, 1)))), ReadStep::Resolved);
    assert_eq!(r.outcome().unwrap().value().unwrap().0, b"a");
}

#[test]
fn read_failures_and_timeouts_report_counts() {
    let mut r = ReadResolver::new(&up(&[1, 2, 3]), req(2)).unwrap();
    assert_eq!(r.on_reply(NodeId(2), ReadReply::Digest(None)), ReadStep::Pending);
    let failed = ReadStep::Failed(QuorumFailure::Timeout { acknowledged: 1, needed: 2 });
    assert_eq!(r.on_failure(NodeId(1)), failed);
    // Final.
    assert_eq!(r.on_reply(NodeId(1), ReadReply::Data(value(1, 1, "v"))), failed);
    assert!(r.outcome().is_none());

    let mut r = ReadResolver::new(&up(&[1, 2, 3]), req(3)).unwrap();
    r.on_reply(NodeId(1), ReadReply::Data(None));
    assert_eq!(
        r.on_timeout(),
        ReadStep::Failed(QuorumFailure::Timeout { acknowledged: 1, needed: 3 })
    );
    // Replies from a replica not asked (a spare) or unknown change nothing.
    let mut r = ReadResolver::new(&up(&[1, 2, 3]), req(1)).unwrap();
    assert_eq!(r.on_reply(NodeId(3), ReadReply::Data(value(9, 3, "x"))), ReadStep::Pending);
    assert_eq!(r.on_reply(NodeId(8), ReadReply::Data(value(9, 8, "x"))), ReadStep::Pending);
    assert_eq!(r.on_reply(NodeId(1), ReadReply::Data(None)), ReadStep::Resolved);
    // The data replica failing while digests are in: not enough answers left.
    let mut r = ReadResolver::new(&up(&[1, 2]), req(2)).unwrap();
    r.on_reply(NodeId(2), ReadReply::Digest(Some(stamp(1, 1))));
    assert!(matches!(r.on_failure(NodeId(1)), ReadStep::Failed(_)));
}

/// One event a test can feed a write tracker.
#[derive(Clone, Debug)]
enum WriteEvent {
    Ack(u64),
    Fail(u64),
    Timeout,
}

fn write_event() -> impl Strategy<Value = WriteEvent> {
    prop_oneof![
        6 => (0u64..7).prop_map(WriteEvent::Ack),
        3 => (0u64..7).prop_map(WriteEvent::Fail),
        1 => Just(WriteEvent::Timeout),
    ]
}

proptest! {
    /// Whatever happens, success is reported exactly when W distinct alive replicas had
    /// acknowledged before any failure decision, never with fewer; a decision never changes;
    /// and a failure counts the acknowledgements truthfully.
    #[test]
    fn tracker_never_succeeds_below_w(
        alive in proptest::collection::vec(any::<bool>(), 1..6),
        w in 1u8..6,
        events in proptest::collection::vec(write_event(), 0..24),
    ) {
        let set: Vec<Replica> = alive
            .iter()
            .enumerate()
            .map(|(i, &a)| Replica { node: NodeId(i as u64), alive: a })
            .collect();
        let alive_count = alive.iter().filter(|a| **a).count() as u8;
        let needed = req(w);
        let mut t = match WriteTracker::new(&set, needed) {
            Err(e) => {
                prop_assert!(alive_count < w);
                prop_assert_eq!(e, QuorumFailure::Unavailable { needed: w, alive: alive_count });
                return Ok(());
            }
            Ok(t) => t,
        };
        prop_assert!(alive_count >= w);
        // The model: per alive replica, its first answer.
        let mut first: std::collections::HashMap<u64, bool> = Default::default();
        let mut timed_out = false;
        let mut decided: Option<WriteDecision> = None;
        for e in events {
            let d = match e {
                WriteEvent::Ack(n) => {
                    if alive.get(n as usize) == Some(&true) && !timed_out {
                        first.entry(n).or_insert(true);
                    }
                    t.on_ack(NodeId(n))
                }
                WriteEvent::Fail(n) => {
                    if alive.get(n as usize) == Some(&true) && !timed_out {
                        first.entry(n).or_insert(false);
                    }
                    t.on_failure(NodeId(n))
                }
                WriteEvent::Timeout => {
                    timed_out = true;
                    t.on_timeout()
                }
            };
            let acks = first.values().filter(|a| **a).count() as u8;
            let fails = first.values().filter(|a| !**a).count() as u8;
            let pending = if timed_out { 0 } else { alive_count - acks - fails };
            match decided {
                Some(prev) => prop_assert_eq!(d, prev, "a decision is final"),
                None => {
                    if acks >= w {
                        prop_assert_eq!(d, WriteDecision::Success);
                    } else if acks + pending < w {
                        prop_assert_eq!(
                            d,
                            WriteDecision::Failed(QuorumFailure::Timeout { acknowledged: acks, needed: w })
                        );
                    } else {
                        prop_assert_eq!(d, WriteDecision::Pending);
                    }
                    if d == WriteDecision::Success {
                        prop_assert!(t.acknowledged() >= w);
                    }
                    if d != WriteDecision::Pending {
                        decided = Some(d);
                    }
                }
            }
        }
        // Every replica not holding an ack is a hint target, and no acked one is.
        let missed = t.missed();
        for r in &set {
            let acked = first.get(&r.node.0) == Some(&true);
            if !timed_out || acked {
                prop_assert_eq!(missed.contains(&r.node), !acked);
            }
        }
    }

    /// Every replica holds some version (or none, or a tombstone); the resolver's reads are
    /// answered in a random order, digests by stamp and data fetches in full. It resolves to
    /// the newest version among the replicas that answered, names exactly the older ones stale,
    /// and with R = N returns the newest version of all.
    #[test]
    fn resolver_returns_the_max_stamp_of_the_replies(
        versions in proptest::collection::vec(
            proptest::option::of((0u64..6, any::<bool>())), 1..6),
        r in 1u8..6,
        order in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let n = versions.len() as u8;
        prop_assume!(r <= n);
        // Replica i's version: hlc from the strategy, node i (so stamps are unique per key).
        let held: Vec<Option<Versioned>> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| v.map(|(hlc, dead)| Versioned {
                stamp: stamp(hlc, i as u64),
                value: (!dead).then(|| format!("v{hlc}.{i}").into_bytes()),
            }))
            .collect();
        let set = up(&(0..u64::from(n)).collect::<Vec<_>>());
        let mut res = ReadResolver::new(&set, req(r)).unwrap();
        let mut queue: Vec<(NodeId, ReadKind)> = res.targets();
        prop_assert_eq!(queue.len(), r as usize);
        let mut answered: Vec<u64> = Vec::new();
        let mut step = ReadStep::Pending;
        let mut picks = order.into_iter();
        let mut rounds = 0;
        while !queue.is_empty() {
            rounds += 1;
            prop_assert!(rounds < 100, "the read must terminate");
            let pick = picks.next().unwrap_or(0) as usize % queue.len();
            let (node, kind) = queue.remove(pick);
            let v = held[node.0 as usize].clone();
            let reply = match kind {
                ReadKind::Data => ReadReply::Data(v),
                ReadKind::Digest => ReadReply::Digest(v.map(|v| v.stamp)),
            };
            if !answered.contains(&node.0) {
                answered.push(node.0);
            }
            step = res.on_reply(node, reply);
            if let ReadStep::NeedData(nodes) = &step {
                prop_assert!(!nodes.is_empty());
                queue.extend(nodes.iter().map(|n| (*n, ReadKind::Data)));
            }
        }
        prop_assert_eq!(&step, &ReadStep::Resolved);
        let o = res.outcome().unwrap();
        let max = answered.iter().map(|&i| held[i as usize].as_ref().map(|v| v.stamp)).max().unwrap();
        prop_assert_eq!(o.newest.as_ref().map(|v| v.stamp), max);
        if let Some(newest) = &o.newest {
            prop_assert_eq!(Some(newest), held[newest.stamp.node as usize].as_ref());
            prop_assert_eq!(o.value().is_none(), newest.value.is_none());
        }
        let mut stale: Vec<u64> = o.stale.iter().map(|n| n.0).collect();
        stale.sort_unstable();
        let mut want: Vec<u64> = answered
            .iter()
            .copied()
            .filter(|&i| held[i as usize].as_ref().map(|v| v.stamp) < max)
            .collect();
        want.sort_unstable();
        prop_assert_eq!(stale, want);
        if r == n {
            let global = held.iter().map(|v| v.as_ref().map(|v| v.stamp)).max().unwrap();
            prop_assert_eq!(max, global);
        }
    }
}

#[test]
fn timeouts_name_the_replicas_that_stayed_silent() {
    let mut w = WriteTracker::new(&up(&[1, 2, 3]), req(2)).unwrap();
    w.on_ack(NodeId(1));
    w.on_failure(NodeId(3));
    assert!(w.timed_out().is_empty(), "nothing timed out before the timeout");
    w.on_timeout();
    assert_eq!(w.timed_out(), vec![NodeId(2)], "3 failed, it did not time out");

    let mut r = ReadResolver::new(&up(&[1, 2, 3]), req(2)).unwrap();
    r.on_reply(NodeId(1), ReadReply::Data(None));
    r.on_timeout();
    assert_eq!(r.timed_out(), vec![NodeId(2)], "3 was a spare, never asked");
}
