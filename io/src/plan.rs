//! The group-commit policy, as pure state: no I/O, no clock, no executor.
//!
//! [`GroupCommitPlan`] tracks three file offsets of one segment and decides what the flusher
//! does next; [`TailBuffer`] holds the bytes not yet written plus the partial last block. The
//! async shell in [`crate::writer`] only carries out the [`FlushAction`]s, which makes the
//! policy unit-testable without a disk.
//!
//! ```text
//!  0         synced            written                appended            capacity
//!  |=========|=================|======================|.....................|
//!   durable    written, not     appended (in memory),   free
//!              yet fdatasync'd  not yet written
//! ```
//!
//! ## Invariants
//! - `synced <= written <= appended <= capacity`, all only grow.
//! - Records leave [`crate::format::SEAL_FRAME_BYTES`] free at the end of the segment, so the
//!   seal ([`GroupCommitPlan::reserve_seal`]) always fits after the last record.
//! - One action is in flight at a time (one flusher), so a record appended while a write or a
//!   sync is running is picked up by the *next* write and made durable by the *next* sync:
//!   every sync covers everything written before it, and many appenders share one sync.
//! - `Always`: the durable offset is `synced`; the flusher syncs after every write.
//!   `Periodic`: the durable offset is `written` (in the kernel, not on the platter) and a
//!   sync runs at most `period_ms` after the previous one whenever something is unsynced.
//!   Before finishing (close), everything is written and synced in both modes.
//! - Writes start at the block holding `written` (the partial last block is rewritten in
//!   full) and are at most `write_bytes_max` long, so the DMA buffer of one write is bounded.

use crate::format::{BLOCK_BYTES, SEAL_FRAME_BYTES};

/// When an appended record counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Durable once fdatasync'd: survives power loss.
    #[default]
    Always,
    /// Durable once written to the file (survives a process crash, not a power loss); the
    /// file is fdatasync'd every `period_ms` milliseconds while something is unsynced.
    Periodic {
        /// Milliseconds between fdatasyncs.
        period_ms: u64,
    },
}

/// The next thing the flusher should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushAction {
    /// Write file bytes `[pos, end)`, zero-padded to the next block boundary. `pos` is
    /// block-aligned.
    Write {
        /// Aligned start offset.
        pos: u64,
        /// End of the appended bytes this write carries.
        end: u64,
    },
    /// fdatasync; afterwards everything up to `upto` is on disk.
    Sync {
        /// The written offset when the sync was decided.
        upto: u64,
    },
    /// Nothing to do until an append or close arrives, or until `deadline_ms` (a periodic
    /// sync falls due).
    Wait {
        /// When to look again even without news.
        deadline_ms: Option<u64>,
    },
    /// Closing and everything is durable: the flusher may exit.
    Finished,
}

/// Why an append was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendRefusal {
    /// The writer is closing.
    Closing,
    /// The frame does not fit in the segment.
    SegmentFull {
        /// Bytes used.
        used_bytes: u64,
    },
    /// Too many bytes wait to be written.
    Overloaded {
        /// Bytes appended and not yet written.
        pending_bytes: u64,
    },
}

/// The group-commit decision state of one segment. See the module docs.
#[derive(Debug, Clone)]
pub struct GroupCommitPlan {
    durability: Durability,
    capacity_bytes: u64,
    pending_bytes_max: u64,
    write_bytes_max: u64,
    appended: u64,
    written: u64,
    synced: u64,
    in_flight: Option<FlushAction>,
    last_sync_ms: u64,
    closing: bool,
}

impl GroupCommitPlan {
    /// A plan for a segment whose first `start` bytes (the header) are already durable.
    ///
    /// `write_bytes_max` is rounded down to whole blocks and is at least two blocks, so a
    /// write always makes progress.
    pub fn new(
        durability: Durability,
        start: u64,
        capacity_bytes: u64,
        pending_bytes_max: u64,
        write_bytes_max: u64,
        now_ms: u64,
    ) -> Self {
        debug_assert!(start + SEAL_FRAME_BYTES <= capacity_bytes);
        GroupCommitPlan {
            durability,
            capacity_bytes,
            pending_bytes_max,
            write_bytes_max: align_down(write_bytes_max).max(2 * BLOCK_BYTES),
            appended: start,
            written: start,
            synced: start,
            in_flight: None,
            last_sync_ms: now_ms,
            closing: false,
        }
    }

    /// Reserves room for a frame of `frame_bytes` and returns its end offset (its LSN).
    ///
    /// A frame is always accepted into an empty buffer, so one record larger than
    /// `pending_bytes_max` does not wedge the writer; the format bounds its size. The frame
    /// must leave room for the seal.
    pub fn reserve(&mut self, frame_bytes: u64) -> Result<u64, AppendRefusal> {
        if self.closing {
            return Err(AppendRefusal::Closing);
        }
        let end = self.appended.saturating_add(frame_bytes);
        if end.saturating_add(SEAL_FRAME_BYTES) > self.capacity_bytes {
            return Err(AppendRefusal::SegmentFull { used_bytes: self.appended });
        }
        let pending_bytes = self.appended - self.written;
        if pending_bytes > 0 && pending_bytes + frame_bytes > self.pending_bytes_max {
            return Err(AppendRefusal::Overloaded { pending_bytes });
        }
        self.appended = end;
        Ok(end)
    }

    /// Reserves the seal frame after the last record and begins closing; returns the seal's
    /// offset. Ignores the pending bound (the seal is tiny and must not be refused). Refused
    /// once closing, so a segment gets at most one seal.
    pub fn reserve_seal(&mut self) -> Result<u64, AppendRefusal> {
        if self.closing {
            return Err(AppendRefusal::Closing);
        }
        let at = self.appended;
        // `reserve` kept room for it.
        debug_assert!(at + SEAL_FRAME_BYTES <= self.capacity_bytes);
        self.appended = at + SEAL_FRAME_BYTES;
        self.closing = true;
        Ok(at)
    }

    /// Stops accepting appends; the flusher drains and syncs, then finishes.
    pub fn begin_close(&mut self) {
        self.closing = true;
    }

    /// Whether [`GroupCommitPlan::begin_close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Decides the next action and marks it in flight. Call the matching `on_*_done` after
    /// carrying out a `Write` or `Sync`.
    pub fn next_action(&mut self, now_ms: u64) -> FlushAction {
        debug_assert!(self.in_flight.is_none(), "one flush action at a time");
        let unsynced = self.written > self.synced;
        let unwritten = self.appended > self.written;
        let action = match self.durability {
            Durability::Always => {
                if unsynced {
                    self.sync_action()
                } else if unwritten {
                    self.write_action()
                } else if self.closing {
                    FlushAction::Finished
                } else {
                    FlushAction::Wait { deadline_ms: None }
                }
            }
            Durability::Periodic { period_ms } => {
                let due_ms = self.last_sync_ms.saturating_add(period_ms);
                if unsynced && (now_ms >= due_ms || (self.closing && !unwritten)) {
                    self.sync_action()
                } else if unwritten {
                    self.write_action()
                } else if unsynced {
                    FlushAction::Wait { deadline_ms: Some(due_ms) }
                } else if self.closing {
                    FlushAction::Finished
                } else {
                    FlushAction::Wait { deadline_ms: None }
                }
            }
        };
        if matches!(action, FlushAction::Write { .. } | FlushAction::Sync { .. }) {
            self.in_flight = Some(action);
        }
        action
    }

    fn write_action(&self) -> FlushAction {
        let pos = align_down(self.written);
        let end = self.appended.min(pos + self.write_bytes_max);
        debug_assert!(end > self.written);
        FlushAction::Write { pos, end }
    }

    fn sync_action(&self) -> FlushAction {
        FlushAction::Sync { upto: self.written }
    }

    /// The write of `[.., end)` completed.
    pub fn on_write_done(&mut self, end: u64) {
        debug_assert!(
            matches!(self.in_flight, Some(FlushAction::Write { end: e, .. }) if e == end)
        );
        self.in_flight = None;
        debug_assert!(end > self.written && end <= self.appended);
        self.written = end;
    }

    /// The sync decided with `upto` completed at `now_ms`.
    pub fn on_sync_done(&mut self, upto: u64, now_ms: u64) {
        debug_assert!(matches!(self.in_flight, Some(FlushAction::Sync { upto: u }) if u == upto));
        self.in_flight = None;
        debug_assert!(upto <= self.written);
        self.synced = self.synced.max(upto);
        self.last_sync_ms = now_ms;
    }

    /// The offset up to which appended records count as durable in this mode.
    pub fn durable_lsn(&self) -> u64 {
        match self.durability {
            Durability::Always => self.synced,
            Durability::Periodic { .. } => self.written,
        }
    }

    /// The segment capacity.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The bound on appended-but-unwritten bytes.
    pub fn pending_bytes_max(&self) -> u64 {
        self.pending_bytes_max
    }

    /// End of appended bytes.
    pub fn appended_lsn(&self) -> u64 {
        self.appended
    }

    /// End of bytes written to the file.
    pub fn written_lsn(&self) -> u64 {
        self.written
    }

    /// End of bytes fdatasync'd.
    pub fn synced_lsn(&self) -> u64 {
        self.synced
    }

    /// Whether the flusher has something to do now (used to decide whether to wake it).
    pub fn has_work(&self) -> bool {
        self.appended > self.written || self.closing
    }
}

/// The in-memory tail of a segment: the file bytes from the start of the block holding the
/// written offset up to the appended offset.
///
/// ## Invariants
/// - `base` is block-aligned and equals `align_down(written)` of the matching plan, so the
///   bytes of the partial last block stay available to rewrite it.
/// - `base + bytes.len()` equals the plan's appended offset.
#[derive(Debug, Clone)]
pub struct TailBuffer {
    base: u64,
    bytes: Vec<u8>,
}

impl TailBuffer {
    /// A tail starting at block-aligned `base` holding `initial` bytes (the header for a new
    /// segment).
    pub fn new(base: u64, initial: &[u8]) -> Self {
        debug_assert_eq!(base % BLOCK_BYTES, 0);
        TailBuffer { base, bytes: initial.to_vec() }
    }

    /// The file offset one past the last byte held.
    pub fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Appends a framed record (see [`crate::format`]).
    pub fn push_frame(&mut self, segment_id: u64, payload: &[u8]) {
        crate::format::encode_frame(segment_id, payload, &mut self.bytes);
    }

    /// Appends the seal frame for `records` records; it lands at [`TailBuffer::end`].
    pub fn push_seal(&mut self, segment_id: u64, records: u64) {
        let at = self.end();
        crate::format::encode_seal(segment_id, records, at, &mut self.bytes);
    }

    /// The bytes of file range `[pos, end)`, if held.
    pub fn slice(&self, pos: u64, end: u64) -> Option<&[u8]> {
        let from = usize::try_from(pos.checked_sub(self.base)?).ok()?;
        let to = usize::try_from(end.checked_sub(self.base)?).ok()?;
        self.bytes.get(from..to)
    }

    /// Forgets the whole blocks before the block holding `written`.
    pub fn release_before(&mut self, written: u64) {
        let new_base = align_down(written);
        if new_base > self.base {
            let drop_bytes =
                usize::try_from(new_base - self.base).unwrap_or(usize::MAX).min(self.bytes.len());
            self.bytes.drain(..drop_bytes);
            self.base = new_base;
        }
    }

    /// Bytes held in memory.
    pub fn len_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Rounds down to a block boundary.
pub const fn align_down(v: u64) -> u64 {
    v & !(BLOCK_BYTES - 1)
}

/// Rounds up to a block boundary.
pub const fn align_up(v: u64) -> u64 {
    align_down(v + BLOCK_BYTES - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn plan(d: Durability) -> GroupCommitPlan {
        GroupCommitPlan::new(d, 64, 64 * MIB, MIB, MIB, 0)
    }

    #[test]
    fn always_batches_appends_made_during_a_sync() {
        let mut p = plan(Durability::Always);
        assert_eq!(p.next_action(0), FlushAction::Wait { deadline_ms: None });
        let a = p.reserve(100).unwrap();
        assert_eq!(a, 164);
        assert_eq!(p.next_action(0), FlushAction::Write { pos: 0, end: 164 });
        // Appends arriving while the write is in flight wait for the next round.
        let b = p.reserve(50).unwrap();
        let c = p.reserve(50).unwrap();
        p.on_write_done(164);
        assert_eq!(p.durable_lsn(), 64, "written is not durable in Always");
        assert_eq!(p.next_action(0), FlushAction::Sync { upto: 164 });
        let d = p.reserve(10).unwrap();
        p.on_sync_done(164, 1);
        assert_eq!(p.durable_lsn(), 164);
        assert!(p.durable_lsn() < b);
        // One write + one sync covers b, c and d together.
        assert_eq!(p.next_action(1), FlushAction::Write { pos: 0, end: d });
        p.on_write_done(d);
        assert_eq!(p.next_action(1), FlushAction::Sync { upto: d });
        p.on_sync_done(d, 2);
        assert!(p.durable_lsn() >= c && p.durable_lsn() >= d);
        assert_eq!(p.next_action(2), FlushAction::Wait { deadline_ms: None });
        p.begin_close();
        assert_eq!(p.next_action(2), FlushAction::Finished);
    }

    #[test]
    fn periodic_acks_on_write_and_syncs_on_schedule() {
        let mut p = plan(Durability::Periodic { period_ms: 10 });
        let a = p.reserve(100).unwrap();
        assert_eq!(p.next_action(1), FlushAction::Write { pos: 0, end: a });
        p.on_write_done(a);
        assert_eq!(p.durable_lsn(), a);
        assert_eq!(p.next_action(2), FlushAction::Wait { deadline_ms: Some(10) });
        // A continuous stream of writes must not starve the due sync.
        let b = p.reserve(100).unwrap();
        assert_eq!(p.next_action(11), FlushAction::Sync { upto: a });
        p.on_sync_done(a, 11);
        assert_eq!(p.synced_lsn(), a);
        assert_eq!(p.next_action(11), FlushAction::Write { pos: 0, end: b });
        p.on_write_done(b);
        // Close syncs at once, regardless of the period.
        p.begin_close();
        assert_eq!(p.next_action(12), FlushAction::Sync { upto: b });
        p.on_sync_done(b, 12);
        assert_eq!(p.next_action(12), FlushAction::Finished);
        assert_eq!(p.reserve(1), Err(AppendRefusal::Closing));
    }

    #[test]
    fn refusals_and_write_bounds() {
        let mut p = GroupCommitPlan::new(Durability::Always, 64, 3 * BLOCK_BYTES, 5000, 0, 0);
        assert_eq!(p.reserve(3 * BLOCK_BYTES), Err(AppendRefusal::SegmentFull { used_bytes: 64 }));
        p.reserve(4000).unwrap();
        assert_eq!(p.reserve(4000), Err(AppendRefusal::Overloaded { pending_bytes: 4000 }));
        // write_bytes_max of 0 is raised to two blocks so writes progress.
        assert_eq!(p.next_action(0), FlushAction::Write { pos: 0, end: 4064 });
        p.on_write_done(4064);
        p.next_action(0);
        p.on_sync_done(4064, 0);
        // A big append is written in pieces of at most write_bytes_max from the aligned start.
        let mut p = GroupCommitPlan::new(Durability::Always, 64, 1 << 20, 1 << 20, 0, 0);
        let end = p.reserve(20_000).unwrap();
        assert_eq!(p.next_action(0), FlushAction::Write { pos: 0, end: 8192 });
        p.on_write_done(8192);
        assert_eq!(p.next_action(0), FlushAction::Sync { upto: 8192 });
        p.on_sync_done(8192, 0);
        assert_eq!(p.next_action(0), FlushAction::Write { pos: 8192, end: 16384 });
        p.on_write_done(16384);
        p.next_action(0);
        p.on_sync_done(16384, 0);
        assert_eq!(p.next_action(0), FlushAction::Write { pos: 16384, end });
    }

    #[test]
    fn seal_always_fits_and_closes() {
        let cap = 2 * BLOCK_BYTES;
        let mut p = GroupCommitPlan::new(Durability::Always, 64, cap, MIB, MIB, 0);
        // A record may not take the seal's room.
        let room = cap - 64 - SEAL_FRAME_BYTES;
        assert_eq!(p.reserve(room + 1), Err(AppendRefusal::SegmentFull { used_bytes: 64 }));
        assert_eq!(p.reserve(room), Ok(cap - SEAL_FRAME_BYTES));
        assert_eq!(p.reserve_seal(), Ok(cap - SEAL_FRAME_BYTES));
        assert_eq!(p.appended_lsn(), cap);
        assert!(p.is_closing());
        assert_eq!(p.reserve_seal(), Err(AppendRefusal::Closing));
        assert_eq!(p.reserve(1), Err(AppendRefusal::Closing));
    }

    #[test]
    fn tail_buffer_keeps_partial_block() {
        let mut t = TailBuffer::new(0, &[1u8; 64]);
        t.push_frame(1, &[9u8; 5000]);
        assert_eq!(t.end(), 64 + 8 + 5000);
        assert_eq!(t.slice(0, 10).unwrap(), &[1u8; 10]);
        t.release_before(5072);
        assert_eq!(t.end(), 5072);
        assert!(t.slice(0, 10).is_none());
        assert_eq!(t.slice(4096, 5072).unwrap().len(), 976);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_down(4095), 0);
    }
}
