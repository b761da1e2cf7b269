//! Hinted handoff, the decisions: which missed replica writes to keep, in which order to hand
//! them back, how fast, and when a hint is too old to replay. Pure: time comes in as `now_ms`;
//! the durable log that carries the decisions out is `crate::transport::hint_log`.
//!
//! # Model
//! A coordinator whose replica write to node T failed or timed out keeps the write as a *hint*
//! for T. Hints for T live in T's own sequence of log segments, oldest first. When gossip sees
//! T up again, the segments are replayed to T in order, paced by a [`TokenBucket`], and each
//! segment is removed once T acknowledged every hint in it. Replaying twice is harmless: a
//! replica keeps the newer version by stamp.
//!
//! # Rules (Cassandra's, with our names)
//! - **Window**: no hints are stored for a node that has been down longer than
//!   [`HintOptions::window_ms`] (3 h): past that, repair is the cheaper way to catch it up, and
//!   hints would pile up without bound.
//! - **Cap**: all hints together stay under [`HintOptions::bytes_max`]; past it, new hints are
//!   refused (counted; anti-entropy repair covers them).
//! - **Age**: a hint older than [`HintOptions::age_max_ms`] (the tombstone grace, 72 h) is
//!   dropped instead of replayed: the other replicas may have collected a tombstone that this
//!   hint's older write would otherwise bring back.
//!
//! # Invariants
//! - [`HintLedger::total_bytes`] is the sum of the bytes of every segment it lists.
//! - A refused hint changes nothing but a counter.

use std::collections::BTreeMap;

use crate::cluster::OptionsError;

/// Hinted handoff settings (config keys `hint_window_s`, `hints_mb`, `hint_replay_kb`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HintOptions {
    /// Keep hints for a node only while it has been down at most this long; 0 turns hinted
    /// handoff off. Default 3 h.
    pub window_ms: u64,
    /// Bound on all stored hints, bytes. Default 1 GiB.
    pub bytes_max: u64,
    /// Hints older than this are dropped, not replayed. Default 72 h (the tombstone grace).
    pub age_max_ms: u64,
    /// Replay pace, bytes per second (per target node). Default 4 MiB/s.
    pub replay_bytes_per_s: u64,
}

impl Default for HintOptions {
    fn default() -> Self {
        HintOptions {
            window_ms: 3 * 3600 * 1000,
            bytes_max: 1 << 30,
            age_max_ms: 72 * 3600 * 1000,
            replay_bytes_per_s: 4 << 20,
        }
    }
}

impl HintOptions {
    /// Checks every field against its range.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let bad =
            |field, reason: &str| Err(OptionsError::Invalid { field, reason: reason.to_string() });
        if self.bytes_max == 0 {
            return bad("hints bytes_max", "must be positive (set the window to 0 to disable)");
        }
        if self.replay_bytes_per_s == 0 {
            return bad("hint replay_bytes_per_s", "must be positive");
        }
        if self.age_max_ms < self.window_ms {
            return bad("hint age_max_ms", "must be at least the hint window");
        }
        Ok(())
    }
}

/// Why a hint was not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HintRefusal {
    /// Hints are off (a window of 0).
    Disabled,
    /// The target has been down longer than the window.
    WindowPassed { down_for_ms: u64, window_ms: u64 },
    /// Storing it would pass the cap.
    Full { bytes: u64, bytes_max: u64 },
}

impl std::fmt::Display for HintRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HintRefusal::Disabled => write!(f, "hinted handoff is off (hint window 0)"),
            HintRefusal::WindowPassed { down_for_ms, window_ms } => write!(
                f,
                "target down for {} s, longer than the hint window of {} s",
                down_for_ms / 1000,
                window_ms / 1000
            ),
            HintRefusal::Full { bytes, bytes_max } => {
                write!(f, "hints hold {bytes} bytes; the cap is {bytes_max}")
            }
        }
    }
}

/// What the ledger knows of one segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentInfo {
    pub bytes: u64,
    pub hints: u64,
    /// When the newest hint in it was stored (ms, the caller's clock).
    pub newest_ms: u64,
}

/// Counters, for stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintCounters {
    pub stored: u64,
    pub refused_window: u64,
    pub refused_full: u64,
    pub replayed: u64,
    pub expired: u64,
}

/// Every stored hint segment, per target node, and the decisions over them.
#[derive(Clone, Debug, Default)]
pub struct HintLedger {
    options: HintOptions,
    /// Target node id → segment id → info (ascending ids: replay order).
    segments: BTreeMap<u64, BTreeMap<u64, SegmentInfo>>,
    total_bytes: u64,
    counters: HintCounters,
}

impl HintLedger {
    pub fn new(options: HintOptions) -> HintLedger {
        HintLedger { options, ..HintLedger::default() }
    }

    pub fn options(&self) -> &HintOptions {
        &self.options
    }

    /// Whether a hint of `bytes` for a target that has been down since `down_since_ms` (None:
    /// not known to be down, e.g. it only timed out) may be stored at `now_ms`.
    pub fn admit(
        &self,
        down_since_ms: Option<u64>,
        now_ms: u64,
        bytes: u64,
    ) -> Result<(), HintRefusal> {
        if self.options.window_ms == 0 {
            // Hints are off.
            return Err(HintRefusal::Disabled);
        }
        if let Some(since) = down_since_ms {
            let down_for_ms = now_ms.saturating_sub(since);
            if down_for_ms > self.options.window_ms {
                return Err(HintRefusal::WindowPassed {
                    down_for_ms,
                    window_ms: self.options.window_ms,
                });
            }
        }
        if self.total_bytes.saturating_add(bytes) > self.options.bytes_max {
            return Err(HintRefusal::Full {
                bytes: self.total_bytes,
                bytes_max: self.options.bytes_max,
            });
        }
        Ok(())
    }

    /// Counts a refusal decided by [`HintLedger::admit`].
    pub fn on_refused(&mut self, why: HintRefusal) {
        match why {
            HintRefusal::Disabled | HintRefusal::WindowPassed { .. } => {
                self.counters.refused_window += 1
            }
            HintRefusal::Full { .. } => self.counters.refused_full += 1,
        }
    }

    /// A hint of `bytes` for `target` is durable in `segment` (stored at `now_ms`).
    pub fn on_stored(&mut self, target: u64, segment: u64, bytes: u64, now_ms: u64) {
        let info = self.segments.entry(target).or_default().entry(segment).or_default();
        info.bytes += bytes;
        info.hints += 1;
        info.newest_ms = info.newest_ms.max(now_ms);
        self.total_bytes += bytes;
        self.counters.stored += 1;
    }

    /// A hint counted by [`HintLedger::on_stored`] did not become durable (the log failed).
    pub fn on_store_failed(&mut self, target: u64, segment: u64, bytes: u64) {
        if let Some(info) = self.segments.get_mut(&target).and_then(|s| s.get_mut(&segment)) {
            info.bytes = info.bytes.saturating_sub(bytes);
            info.hints = info.hints.saturating_sub(1);
            self.total_bytes = self.total_bytes.saturating_sub(bytes);
            self.counters.stored = self.counters.stored.saturating_sub(1);
        }
    }

    /// A segment found at startup, with what reading it showed.
    pub fn on_recovered(&mut self, target: u64, segment: u64, info: SegmentInfo) {
        let old = self.segments.entry(target).or_default().insert(segment, info);
        self.total_bytes += info.bytes;
        self.total_bytes -= old.map_or(0, |o| o.bytes);
    }

    /// Target nodes that have hints, ascending.
    pub fn targets(&self) -> Vec<u64> {
        self.segments.iter().filter(|(_, s)| !s.is_empty()).map(|(t, _)| *t).collect()
    }

    /// `target`'s segments in replay order.
    pub fn replay_order(&self, target: u64) -> Vec<u64> {
        self.segments.get(&target).map(|s| s.keys().copied().collect()).unwrap_or_default()
    }

    /// Whether `segment` of `target` holds only hints past their age at `now_ms` (drop it
    /// without replaying).
    pub fn is_expired(&self, target: u64, segment: u64, now_ms: u64) -> bool {
        self.info(target, segment)
            .is_some_and(|i| now_ms.saturating_sub(i.newest_ms) > self.options.age_max_ms)
    }

    /// Whether one hint stored at `hinted_at_ms` is past its age at `now_ms`.
    pub fn hint_expired(&self, hinted_at_ms: u64, now_ms: u64) -> bool {
        now_ms.saturating_sub(hinted_at_ms) > self.options.age_max_ms
    }

    pub fn info(&self, target: u64, segment: u64) -> Option<SegmentInfo> {
        self.segments.get(&target)?.get(&segment).copied()
    }

    /// `segment` of `target` is gone: `replayed` of its hints were delivered, `expired`
    /// dropped for age.
    pub fn on_segment_removed(&mut self, target: u64, segment: u64, replayed: u64, expired: u64) {
        if let Some(segments) = self.segments.get_mut(&target) {
            if let Some(info) = segments.remove(&segment) {
                self.total_bytes -= info.bytes;
            }
            if segments.is_empty() {
                self.segments.remove(&target);
            }
        }
        self.counters.replayed += replayed;
        self.counters.expired += expired;
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Hints stored for `target` (all segments).
    pub fn hints_for(&self, target: u64) -> u64 {
        self.segments.get(&target).map_or(0, |s| s.values().map(|i| i.hints).sum())
    }

    pub fn counters(&self) -> HintCounters {
        self.counters
    }
}

/// Paces a byte stream at `rate_bytes_per_s` with bursts up to one second's worth.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate_bytes_per_s: u64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate_bytes_per_s: u64, now_ms: u64) -> TokenBucket {
        TokenBucket { rate_bytes_per_s, tokens: rate_bytes_per_s as f64, last_ms: now_ms }
    }

    /// Takes `bytes` at `now_ms`; returns how long to wait (ms) before sending more, 0 when
    /// the bucket still had them.
    pub fn take(&mut self, bytes: u64, now_ms: u64) -> u64 {
        let rate = self.rate_bytes_per_s.max(1) as f64;
        let elapsed_ms = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = (self.tokens + rate * elapsed_ms as f64 / 1000.0).min(rate);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            0
        } else {
            (-self.tokens * 1000.0 / rate).ceil() as u64
        }
    }
}

/// One stored hint: the write the target missed.
///
/// ## Format (one log record's payload; little endian)
/// ```text
/// u8  version (1)
/// u8  kind: 0 value, 1 tombstone
/// u64 stamp hlc, u64 stamp node
/// u64 hinted_at_ms (the coordinator's wall clock when stored)
/// u64 expires_at_ms (0: never)
/// u32 key length, key bytes
/// u32 value length, value bytes (length 0 for a tombstone)
/// ```
/// The target node is the directory the segment is in. Records are framed and checksummed by
/// the log segment (kvs-io), so this codec only checks its own lengths and fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    pub key: Vec<u8>,
    /// `None`: a delete (tombstone).
    pub value: Option<Vec<u8>>,
    pub stamp_hlc: u64,
    pub stamp_node: u64,
    pub hinted_at_ms: u64,
    /// 0: never expires.
    pub expires_at_ms: u64,
}

/// The hint codec's version byte.
pub const HINT_FORMAT_VERSION: u8 = 1;
const HINT_FIXED_BYTES: usize = 1 + 1 + 8 + 8 + 8 + 8 + 4 + 4;

/// A hint payload that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HintDecodeError {
    #[error("hint record too short: {got} bytes, need {need}")]
    Incomplete { got: usize, need: usize },
    #[error("hint record version {found}, this build reads {HINT_FORMAT_VERSION}")]
    Version { found: u8 },
    #[error("invalid hint record: {reason}")]
    Invalid { reason: String },
}

impl Hint {
    /// Bytes of the encoded form.
    pub fn encoded_bytes(&self) -> usize {
        HINT_FIXED_BYTES + self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_bytes());
        out.push(HINT_FORMAT_VERSION);
        out.push(u8::from(self.value.is_none()));
        out.extend_from_slice(&self.stamp_hlc.to_le_bytes());
        out.extend_from_slice(&self.stamp_node.to_le_bytes());
        out.extend_from_slice(&self.hinted_at_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_at_ms.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.key);
        let value = self.value.as_deref().unwrap_or_default();
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(value);
    }

    pub fn decode(bytes: &[u8]) -> Result<Hint, HintDecodeError> {
        let mut r = Cursor { bytes, pos: 0 };
        let version = r.u8()?;
        if version != HINT_FORMAT_VERSION {
            return Err(HintDecodeError::Version { found: version });
        }
        let kind = r.u8()?;
        if kind > 1 {
            return Err(HintDecodeError::Invalid { reason: format!("kind {kind}") });
        }
        let stamp_hlc = r.u64()?;
        let stamp_node = r.u64()?;
        let hinted_at_ms = r.u64()?;
        let expires_at_ms = r.u64()?;
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?.to_vec();
        if key.is_empty() {
            return Err(HintDecodeError::Invalid { reason: "empty key".into() });
        }
        let value_len = r.u32()? as usize;
        let value = r.take(value_len)?.to_vec();
        if r.pos != bytes.len() {
            return Err(HintDecodeError::Invalid {
                reason: format!("{} bytes after the value", bytes.len() - r.pos),
            });
        }
        let value = match kind {
            0 => Some(value),
            _ if value.is_empty() => None,
            _ => return Err(HintDecodeError::Invalid { reason: "tombstone with a value".into() }),
        };
        Ok(Hint { key, value, stamp_hlc, stamp_node, hinted_at_ms, expires_at_ms })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HintDecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or(
            HintDecodeError::Incomplete { got: self.bytes.len(), need: self.pos.saturating_add(n) },
        )?;
        let s = self.bytes.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, HintDecodeError> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }
    fn u32(&mut self) -> Result<u32, HintDecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, HintDecodeError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: u64 = 3600 * 1000;

    fn ledger() -> HintLedger {
        HintLedger::new(HintOptions { bytes_max: 1000, ..HintOptions::default() })
    }

    #[test]
    fn hints_are_refused_past_the_window_and_past_the_cap() {
        let mut l = ledger();
        assert_eq!(l.admit(Some(0), 3 * H, 10), Ok(()));
        assert_eq!(
            l.admit(Some(0), 3 * H + 1, 10),
            Err(HintRefusal::WindowPassed { down_for_ms: 3 * H + 1, window_ms: 3 * H })
        );
        // Not known down (a timeout): no window applies.
        assert_eq!(l.admit(None, 100 * H, 10), Ok(()));
        l.on_stored(7, 1, 990, 0);
        assert_eq!(l.admit(None, 0, 10), Ok(()));
        assert_eq!(l.admit(None, 0, 11), Err(HintRefusal::Full { bytes: 990, bytes_max: 1000 }));
        l.on_refused(HintRefusal::Full { bytes: 990, bytes_max: 1000 });
        assert_eq!(l.counters().refused_full, 1);
        let off = HintLedger::new(HintOptions { window_ms: 0, ..HintOptions::default() });
        assert_eq!(off.admit(None, 0, 1), Err(HintRefusal::Disabled));
        assert_eq!(l.total_bytes(), 990, "a refusal changes nothing but a counter");
    }

    #[test]
    fn segments_replay_oldest_first_and_leave_the_ledger_when_removed() {
        let mut l = ledger();
        l.on_stored(7, 3, 10, 5);
        l.on_stored(7, 1, 20, 1);
        l.on_stored(9, 2, 30, 2);
        l.on_stored(7, 1, 5, 6);
        assert_eq!(l.replay_order(7), vec![1, 3]);
        assert_eq!(l.targets(), vec![7, 9]);
        assert_eq!(l.info(7, 1), Some(SegmentInfo { bytes: 25, hints: 2, newest_ms: 6 }));
        assert_eq!(l.hints_for(7), 3);
        assert_eq!(l.total_bytes(), 65);
        l.on_segment_removed(7, 1, 2, 0);
        l.on_segment_removed(7, 3, 0, 1);
        assert_eq!(l.targets(), vec![9]);
        assert_eq!(l.total_bytes(), 30);
        assert_eq!(l.counters().replayed, 2);
        assert_eq!(l.counters().expired, 1);
    }

    #[test]
    fn a_segment_expires_when_its_newest_hint_passed_the_age() {
        let mut l = ledger();
        l.on_stored(7, 1, 10, 0);
        l.on_stored(7, 1, 10, H);
        assert!(!l.is_expired(7, 1, 72 * H));
        assert!(l.is_expired(7, 1, 73 * H + 1));
        assert!(l.hint_expired(0, 72 * H + 1));
        assert!(!l.hint_expired(0, 72 * H));
    }

    #[test]
    fn options_are_validated() {
        assert!(HintOptions::default().validate().is_ok());
        let bad = HintOptions { age_max_ms: 1, ..HintOptions::default() };
        assert!(bad.validate().is_err());
        assert!(HintOptions { replay_bytes_per_s: 0, ..HintOptions::default() }
            .validate()
            .is_err());
    }

    #[test]
    fn the_bucket_paces_to_its_rate_after_a_one_second_burst() {
        let mut b = TokenBucket::new(1000, 0);
        assert_eq!(b.take(1000, 0), 0, "a full second's burst");
        assert_eq!(b.take(500, 0), 500, "then half a second per 500 bytes");
        assert_eq!(b.take(0, 500), 0);
        // Over a long run the rate holds: 10 000 bytes in 100-byte pieces take ~9 s after
        // the burst.
        let mut b = TokenBucket::new(1000, 0);
        let mut now = 0;
        for _ in 0..100 {
            now += b.take(100, now);
        }
        assert!((8_900..=9_100).contains(&now), "{now}");
    }

    #[test]
    fn decode_refuses_truncation_bad_versions_and_trailing_bytes() {
        let h = Hint {
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
            stamp_hlc: 1,
            stamp_node: 2,
            hinted_at_ms: 3,
            expires_at_ms: 0,
        };
        let mut bytes = Vec::new();
        h.encode(&mut bytes);
        assert_eq!(bytes.len(), h.encoded_bytes());
        for cut in 0..bytes.len() {
            assert!(Hint::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut v = bytes.clone();
        v[0] = 9;
        assert_eq!(Hint::decode(&v), Err(HintDecodeError::Version { found: 9 }));
        let mut v = bytes.clone();
        v.push(0);
        assert!(matches!(Hint::decode(&v), Err(HintDecodeError::Invalid { .. })));
        let mut v = bytes;
        v[1] = 1; // a tombstone that carries a value
        assert!(matches!(Hint::decode(&v), Err(HintDecodeError::Invalid { .. })));
    }

    proptest! {
        #[test]
        fn hints_round_trip(
            key in prop::collection::vec(any::<u8>(), 1..64),
            value in prop::option::of(prop::collection::vec(any::<u8>(), 0..256)),
            hlc: u64, node: u64, at: u64, exp: u64,
        ) {
            let h = Hint { key, value, stamp_hlc: hlc, stamp_node: node, hinted_at_ms: at, expires_at_ms: exp };
            let mut bytes = Vec::new();
            h.encode(&mut bytes);
            let back = Hint::decode(&bytes).unwrap();
            // An empty value and a tombstone differ by kind, so both survive.
            prop_assert_eq!(back, h);
        }

        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
            let _ = Hint::decode(&bytes);
        }
    }
}
