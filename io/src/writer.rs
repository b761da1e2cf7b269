//! The append-only log writer with group commit: the thin async shell around
//! [`crate::plan::GroupCommitPlan`].
//!
//! One [`LogWriter`] owns one segment file, opened with direct I/O. Callers [`LogWriter::append`]
//! a record (synchronous: the frame is copied into the in-memory [`TailBuffer`]) and get its
//! [`Lsn`]; then they await [`LogWriter::durable`]. A single flusher task per writer carries out
//! the plan's actions: it copies the pending bytes, from the start of the partial last block,
//! into a block-aligned DMA buffer, writes them, calls `fdatasync`, publishes the new durable
//! offset and wakes every waiter at or below it. Records appended while a write or sync is in
//! flight ride the next round, so concurrent writers share each `fdatasync`.
//!
//! [`LogWriter::close`] appends the seal frame (see [`crate::format`]) after the last record
//! and makes it durable with everything else, so a finished segment proves its own
//! completeness; [`seal_segment`] seals a segment found unsealed by recovery (its writer
//! crashed). Dropping a writer without `close` leaves the segment unsealed, like a crash.
//!
//! The segment is preallocated (`fallocate`) to its capacity at creation, so the file size
//! does not change on every write. Pre-zeroing and recycling segments (overwriting blocks that
//! were already written is markedly faster than extending, see ARCHITECTURE.md) is a later
//! optimization, as is double-buffering the DMA buffer instead of copying the tail per write.
//!
//! ## Invariants
//! - One flusher per writer, one I/O in flight at a time; the flusher never holds a `RefCell`
//!   borrow across an `.await`.
//! - A waiter is woken only after the durable offset (per [`Durability`]) covers its LSN, or
//!   when the writer has failed. After a failed write or `fdatasync` the writer is poisoned:
//!   the kernel may have dropped dirty pages, so no later success may be reported.
//! - Pending (appended, unwritten) bytes are bounded by `pending_bytes_max`; beyond it
//!   [`LogWriter::append`] returns [`IoError::Overloaded`].
//! - Rewriting the partial last block repeats the bytes already there, so a torn rewrite of
//!   that block can only damage already-synced records on devices that tear *inside* a sector;
//!   this is the usual trade-off of block-rewriting logs (RocksDB, LevelDB).

use crate::format::{
    self, BLOCK_BYTES, RECORD_PAYLOAD_BYTES_MAX, SEAL_FRAME_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::plan::{
    align_down, align_up, AppendRefusal, Durability, FlushAction, GroupCommitPlan, TailBuffer,
};
use crate::IoError;
use glommio::io::{DmaFile, OpenOptions};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A log sequence number: the file offset one past the end of a record's frame, within its
/// segment. LSNs of one segment grow with append order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Settings of one [`LogWriter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogWriterOptions {
    /// When a record counts as durable. Default [`Durability::Always`].
    pub durability: Durability,
    /// Segment size: preallocated at creation, appends beyond it get
    /// [`IoError::SegmentFull`]. Default 64 MiB; a multiple of 4096, at least
    /// [`LogWriterOptions::CAPACITY_BYTES_MIN`].
    pub capacity_bytes: u64,
    /// Bound on appended-but-unwritten bytes held in memory. Default 16 MiB.
    pub pending_bytes_max: u64,
    /// Bound on the bytes of one write (and its DMA buffer). Default 1 MiB; a multiple of 4096,
    /// at least two blocks.
    pub write_bytes_max: u64,
}

impl LogWriterOptions {
    /// The smallest segment: the header block plus one more block.
    pub const CAPACITY_BYTES_MIN: u64 = 2 * BLOCK_BYTES;

    /// Checks every field against its range.
    pub fn validate(&self) -> Result<(), IoError> {
        let bad = |name, reason: String| Err(IoError::InvalidOption { name, reason });
        if self.capacity_bytes < Self::CAPACITY_BYTES_MIN
            || !self.capacity_bytes.is_multiple_of(BLOCK_BYTES)
        {
            return bad(
                "capacity_bytes",
                format!(
                    "{} must be a multiple of {BLOCK_BYTES} and at least {}",
                    self.capacity_bytes,
                    Self::CAPACITY_BYTES_MIN
                ),
            );
        }
        if self.write_bytes_max < 2 * BLOCK_BYTES
            || !self.write_bytes_max.is_multiple_of(BLOCK_BYTES)
        {
            return bad(
                "write_bytes_max",
                format!(
                    "{} must be a multiple of {BLOCK_BYTES} and at least two blocks",
                    self.write_bytes_max
                ),
            );
        }
        if self.pending_bytes_max == 0 {
            return bad("pending_bytes_max", "must be positive".to_owned());
        }
        if let Durability::Periodic { period_ms } = self.durability {
            if period_ms == 0 {
                return bad("durability.period_ms", "must be positive".to_owned());
            }
        }
        Ok(())
    }
}

impl Default for LogWriterOptions {
    fn default() -> Self {
        LogWriterOptions {
            durability: Durability::Always,
            capacity_bytes: 64 << 20,
            pending_bytes_max: 16 << 20,
            write_bytes_max: 1 << 20,
        }
    }
}

/// Counters of one writer, for stats, tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records accepted by `append`.
    pub records_appended: u64,
    /// Frame bytes accepted by `append`.
    pub bytes_appended: u64,
    /// `write` calls completed.
    pub writes: u64,
    /// `fdatasync` calls completed (the header sync at creation not counted).
    pub syncs: u64,
    /// Offset up to which records are durable per the writer's [`Durability`].
    pub durable_lsn: u64,
    /// Offset up to which bytes are fdatasync'd.
    pub synced_lsn: u64,
    /// Offset up to which bytes are written to the file.
    pub written_lsn: u64,
    /// Offset up to which bytes are appended.
    pub appended_lsn: u64,
}

/// An append-only segment writer with group commit. See the module docs.
///
/// `!Send`: it lives on one glommio executor. Call [`LogWriter::close`] to drain and sync;
/// dropping it without closing lets the flusher drain in the background but reports nothing.
pub struct LogWriter {
    inner: Rc<Inner>,
    flusher: RefCell<Option<glommio::Task<()>>>,
}

struct Inner {
    path: PathBuf,
    segment_id: u64,
    started: Instant,
    /// Taken by `close` once the flusher has exited.
    file: RefCell<Option<Rc<DmaFile>>>,
    state: RefCell<State>,
    flusher_waker: Cell<Option<Waker>>,
}

struct State {
    plan: GroupCommitPlan,
    tail: TailBuffer,
    /// Durability waiters keyed by (lsn, waiter id); bounded by the records in flight.
    waiters: BTreeMap<(u64, u64), Waker>,
    next_waiter_id: u64,
    /// The first flusher error, rendered; set once, never cleared.
    failed: Option<String>,
    stats: LogStats,
}

impl LogWriter {
    /// Creates segment `segment_id` at `path` (which must not exist), preallocates it, writes
    /// and syncs its header, syncs the parent directory, and starts the flusher.
    pub async fn create(
        path: impl AsRef<Path>,
        segment_id: u64,
        opts: LogWriterOptions,
    ) -> Result<LogWriter, IoError> {
        opts.validate()?;
        let path = path.as_ref().to_path_buf();
        let parent = path.parent().unwrap_or(Path::new("."));
        crate::fs::probe_device(parent).await?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .dma_open(&path)
            .await
            .map_err(|e| IoError::os("create segment", &path, e))?;
        if !BLOCK_BYTES.is_multiple_of(file.alignment()) {
            return Err(IoError::InvalidOption {
                name: "device alignment",
                reason: format!(
                    "{} does not divide the {BLOCK_BYTES}-byte block",
                    file.alignment()
                ),
            });
        }
        file.pre_allocate(opts.capacity_bytes, false)
            .await
            .map_err(|e| IoError::os("preallocate segment", &path, e))?;
        let header = format::encode_header(segment_id);
        let mut buf = file.alloc_dma_buffer(BLOCK_BYTES as usize);
        let bytes = buf.as_bytes_mut();
        bytes.fill(0);
        if let Some(dst) = bytes.get_mut(..header.len()) {
            dst.copy_from_slice(&header);
        }
        let written = file
            .write_at(buf, 0)
            .await
            .map_err(|e| IoError::os("write segment header", &path, e))?;
        if written as u64 != BLOCK_BYTES {
            return Err(IoError::ShortWrite {
                path,
                offset: 0,
                written_bytes: written as u64,
                expected_bytes: BLOCK_BYTES,
            });
        }
        // IMPORTANT: the header must be durable before any record is acknowledged, and the
        // directory entry must be durable before the file is relied upon after a crash.
        file.fdatasync().await.map_err(|e| IoError::os("fdatasync segment header", &path, e))?;
        crate::sync_dir(parent).await?;
        let started = Instant::now();
        let state = State {
            plan: GroupCommitPlan::new(
                opts.durability,
                SEGMENT_HEADER_BYTES,
                opts.capacity_bytes,
                opts.pending_bytes_max,
                opts.write_bytes_max,
                0,
            ),
            tail: TailBuffer::new(0, &header),
            waiters: BTreeMap::new(),
            next_waiter_id: 0,
            failed: None,
            stats: LogStats {
                durable_lsn: SEGMENT_HEADER_BYTES,
                synced_lsn: SEGMENT_HEADER_BYTES,
                written_lsn: SEGMENT_HEADER_BYTES,
                appended_lsn: SEGMENT_HEADER_BYTES,
                ..LogStats::default()
            },
        };
        let file = Rc::new(file);
        let inner = Rc::new(Inner {
            path,
            segment_id,
            started,
            file: RefCell::new(Some(file.clone())),
            state: RefCell::new(state),
            flusher_waker: Cell::new(None),
        });
        let task = glommio::spawn_local(flusher_task(inner.clone(), file));
        Ok(LogWriter { inner, flusher: RefCell::new(Some(task)) })
    }

    /// Appends one record and returns its LSN. Synchronous: the record is only in memory until
    /// [`LogWriter::durable`] resolves for the LSN.
    pub fn append(&self, payload: &[u8]) -> Result<Lsn, IoError> {
        let payload_bytes = payload.len() as u64;
        if payload.is_empty() || payload_bytes > RECORD_PAYLOAD_BYTES_MAX {
            return Err(IoError::RecordSize {
                payload_bytes,
                payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX,
            });
        }
        let frame_bytes = format::frame_bytes(payload_bytes);
        let lsn = {
            let mut st = self.inner.state.borrow_mut();
            if let Some(reason) = &st.failed {
                return Err(IoError::Failed {
                    path: self.inner.path.clone(),
                    reason: reason.clone(),
                });
            }
            let end = match st.plan.reserve(frame_bytes) {
                Ok(end) => end,
                Err(AppendRefusal::Closing) => {
                    return Err(IoError::Closed { segment_id: self.inner.segment_id })
                }
                Err(AppendRefusal::SegmentFull { used_bytes }) => {
                    return Err(IoError::SegmentFull {
                        segment_id: self.inner.segment_id,
                        used_bytes,
                        capacity_bytes: st.plan.capacity_bytes(),
                        frame_bytes,
                    })
                }
                Err(AppendRefusal::Overloaded { pending_bytes }) => {
                    return Err(IoError::Overloaded {
                        pending_bytes,
                        pending_bytes_max: st.plan.pending_bytes_max(),
                    })
                }
            };
            st.tail.push_frame(self.inner.segment_id, payload);
            debug_assert_eq!(st.tail.end(), end);
            st.stats.records_appended += 1;
            st.stats.bytes_appended += frame_bytes;
            st.stats.appended_lsn = end;
            end
        };
        self.inner.wake_flusher();
        Ok(Lsn(lsn))
    }

    /// Resolves once the record ending at `lsn` is durable per the writer's [`Durability`],
    /// or with [`IoError::Failed`] if the writer failed first.
    pub fn durable(&self, lsn: Lsn) -> Durable {
        Durable { inner: self.inner.clone(), lsn: lsn.0, id: None }
    }

    /// [`LogWriter::append`] then [`LogWriter::durable`].
    pub async fn append_durable(&self, payload: &[u8]) -> Result<Lsn, IoError> {
        let lsn = self.append(payload)?;
        self.durable(lsn).await?;
        Ok(lsn)
    }

    /// Whether a frame with `payload_bytes` of payload still fits in this segment.
    pub fn fits(&self, payload_bytes: u64) -> bool {
        let st = self.inner.state.borrow();
        st.plan.appended_lsn() + format::frame_bytes(payload_bytes) + SEAL_FRAME_BYTES
            <= st.plan.capacity_bytes()
    }

    /// Stops accepting appends, appends the seal frame (unless the writer failed), writes and
    /// fdatasyncs everything appended (in both modes), trims the preallocated space past the
    /// last block, and closes the file. Idempotent: only the first call seals.
    pub async fn close(&self) -> Result<(), IoError> {
        {
            let mut st = self.inner.state.borrow_mut();
            let st = &mut *st;
            if st.failed.is_some() {
                st.plan.begin_close();
            } else if let Ok(at) = st.plan.reserve_seal() {
                st.tail.push_seal(self.inner.segment_id, st.stats.records_appended);
                debug_assert_eq!(st.tail.end(), at + SEAL_FRAME_BYTES);
                st.stats.appended_lsn = at + SEAL_FRAME_BYTES;
            }
        }
        self.inner.wake_flusher();
        let task = self.flusher.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
        if let Some(reason) = self.inner.state.borrow().failed.clone() {
            return Err(IoError::Failed { path: self.inner.path.clone(), reason });
        }
        let file = self.inner.file.borrow_mut().take();
        let Some(file) = file else {
            return Ok(());
        };
        let path = &self.inner.path;
        let written = self.inner.state.borrow().plan.written_lsn();
        // Give back the preallocated space past the last written block; the reader treats
        // the end of the file like the zero end marker.
        file.truncate(align_up(written)).await.map_err(|e| IoError::os("trim segment", path, e))?;
        // IMPORTANT: make the new size durable so the file never reads back shorter than
        // its records after a crash.
        file.fdatasync().await.map_err(|e| IoError::os("fdatasync trimmed segment", path, e))?;
        match Rc::try_unwrap(file) {
            Ok(file) => file.close().await.map_err(|e| IoError::os("close segment", path, e)),
            // Unreachable: the flusher, the only other holder, has exited. Dropping closes.
            Err(_) => Ok(()),
        }
    }

    /// The segment id.
    pub fn segment_id(&self) -> u64 {
        self.inner.segment_id
    }

    /// The segment path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A snapshot of the counters and offsets.
    pub fn stats(&self) -> LogStats {
        self.inner.state.borrow().stats
    }

    /// Whether the writer has failed (and refuses all work).
    pub fn is_failed(&self) -> bool {
        self.inner.state.borrow().failed.is_some()
    }
}

/// Seals the segment at `path` (id `segment_id`), whose `records` valid records end at
/// `end_offset` and which has no seal: writes the seal frame at `end_offset` (rewriting the
/// block that holds it with the same bytes before it and zeros after), fdatasyncs, trims the
/// file to the block holding the seal's end and fdatasyncs again.
///
/// For recovery, which must seal the segment a crash left unsealed before it creates the next
/// one. The caller has checked the records and cut anything past `end_offset` it meant to
/// cut; the file must be at least `end_offset` bytes long.
pub async fn seal_segment(
    path: impl AsRef<Path>,
    segment_id: u64,
    records: u64,
    end_offset: u64,
) -> Result<(), IoError> {
    let path = path.as_ref();
    crate::fs::probe_device(path.parent().unwrap_or(Path::new("."))).await?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await
        .map_err(|e| IoError::os("open segment to seal", path, e))?;
    let pos = align_down(end_offset);
    let prefix_bytes = end_offset - pos;
    let prefix = if prefix_bytes > 0 {
        let read = file
            .read_at(pos, prefix_bytes as usize)
            .await
            .map_err(|e| IoError::os("read block before seal", path, e))?;
        if read.len() as u64 != prefix_bytes {
            return Err(IoError::os(
                "read block before seal",
                path,
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ));
        }
        read.to_vec()
    } else {
        Vec::new()
    };
    let mut bytes = prefix;
    format::encode_seal(segment_id, records, end_offset, &mut bytes);
    let end = align_up(end_offset + SEAL_FRAME_BYTES);
    let mut buf = file.alloc_dma_buffer((end - pos) as usize);
    let dst = buf.as_bytes_mut();
    dst.fill(0);
    if let Some(d) = dst.get_mut(..bytes.len()) {
        d.copy_from_slice(&bytes);
    }
    let expected = buf.len() as u64;
    let written =
        file.write_at(buf, pos).await.map_err(|e| IoError::os("write seal", path, e))? as u64;
    if written != expected {
        return Err(IoError::ShortWrite {
            path: path.to_path_buf(),
            offset: pos,
            written_bytes: written,
            expected_bytes: expected,
        });
    }
    // IMPORTANT: the seal must be durable before the caller creates the next segment.
    file.fdatasync().await.map_err(|e| IoError::os("fdatasync seal", path, e))?;
    file.truncate(end).await.map_err(|e| IoError::os("trim sealed segment", path, e))?;
    file.fdatasync().await.map_err(|e| IoError::os("fdatasync trimmed segment", path, e))?;
    file.close().await.map_err(|e| IoError::os("close sealed segment", path, e))
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        if let Some(task) = self.flusher.get_mut().take() {
            if let Ok(mut st) = self.inner.state.try_borrow_mut() {
                st.plan.begin_close();
            }
            self.inner.wake_flusher();
            // Let the flusher drain and sync in the background rather than cancel it mid-I/O.
            drop(task.detach());
        }
    }
}

impl State {
    /// Publishes offsets into the stats and takes the wakers whose LSN is now durable.
    fn publish(&mut self) -> Vec<Waker> {
        self.stats.durable_lsn = self.plan.durable_lsn();
        self.stats.synced_lsn = self.plan.synced_lsn();
        self.stats.written_lsn = self.plan.written_lsn();
        let durable = self.plan.durable_lsn();
        let later = self.waiters.split_off(&(durable.saturating_add(1), 0));
        std::mem::replace(&mut self.waiters, later).into_values().collect()
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn wake_flusher(&self) {
        if let Some(waker) = self.flusher_waker.take() {
            waker.wake();
        }
    }

    /// Poisons the writer and wakes every waiter so each sees the failure.
    fn fail(&self, err: IoError) {
        tracing::error!(path = %self.path.display(), error = %err, "log writer failed");
        let wakers: Vec<Waker> = {
            let mut st = self.state.borrow_mut();
            if st.failed.is_none() {
                st.failed = Some(err.to_string());
            }
            std::mem::take(&mut st.waiters).into_values().collect()
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// The flusher: carries out the plan's actions until the plan says `Finished` or an I/O fails.
async fn flusher_task(inner: Rc<Inner>, file: Rc<DmaFile>) {
    loop {
        let action = inner.state.borrow_mut().plan.next_action(inner.now_ms());
        match action {
            FlushAction::Write { pos, end } => {
                let buf = {
                    let st = inner.state.borrow();
                    st.tail.slice(pos, end).map(|bytes| {
                        let mut buf = file.alloc_dma_buffer(align_up(end - pos) as usize);
                        let dst = buf.as_bytes_mut();
                        let (data, pad) = dst.split_at_mut(bytes.len());
                        data.copy_from_slice(bytes);
                        pad.fill(0);
                        buf
                    })
                };
                let Some(buf) = buf else {
                    debug_assert!(false, "tail buffer lost bytes {pos}..{end}");
                    inner.fail(IoError::Failed {
                        path: inner.path.clone(),
                        reason: format!("internal: tail buffer does not hold bytes {pos}..{end}"),
                    });
                    return;
                };
                let expected = buf.len() as u64;
                match file.write_at(buf, pos).await {
                    Ok(n) if n as u64 == expected => {}
                    Ok(n) => {
                        inner.fail(IoError::ShortWrite {
                            path: inner.path.clone(),
                            offset: pos,
                            written_bytes: n as u64,
                            expected_bytes: expected,
                        });
                        return;
                    }
                    Err(e) => {
                        inner.fail(IoError::os("write segment", &inner.path, e));
                        return;
                    }
                }
                let wakers = {
                    let mut st = inner.state.borrow_mut();
                    st.plan.on_write_done(end);
                    st.tail.release_before(end);
                    st.stats.writes += 1;
                    st.publish()
                };
                wakers.into_iter().for_each(Waker::wake);
            }
            FlushAction::Sync { upto } => {
                // IMPORTANT: this fdatasync is what makes `Always` records durable; every
                // waiter at or below `upto` is acknowledged only after it returns.
                if let Err(e) = file.fdatasync().await {
                    inner.fail(IoError::os("fdatasync segment", &inner.path, e));
                    return;
                }
                let wakers = {
                    let mut st = inner.state.borrow_mut();
                    st.plan.on_sync_done(upto, inner.now_ms());
                    st.stats.syncs += 1;
                    st.publish()
                };
                wakers.into_iter().for_each(Waker::wake);
            }
            FlushAction::Wait { deadline_ms } => {
                let work = futures_lite::future::poll_fn(|cx| {
                    if inner.state.borrow().plan.has_work() {
                        Poll::Ready(())
                    } else {
                        inner.flusher_waker.set(Some(cx.waker().clone()));
                        Poll::Pending
                    }
                });
                match deadline_ms {
                    None => work.await,
                    Some(deadline_ms) => {
                        let wait_ms = deadline_ms.saturating_sub(inner.now_ms());
                        if wait_ms > 0 {
                            futures_lite::future::or(
                                work,
                                glommio::timer::sleep(Duration::from_millis(wait_ms)),
                            )
                            .await;
                        }
                    }
                }
            }
            FlushAction::Finished => return,
        }
    }
}

/// The future returned by [`LogWriter::durable`].
pub struct Durable {
    inner: Rc<Inner>,
    lsn: u64,
    /// Set once registered as a waiter, so re-polls replace rather than add an entry.
    id: Option<u64>,
}

impl Future for Durable {
    type Output = Result<(), IoError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut st = this.inner.state.borrow_mut();
        if st.plan.durable_lsn() >= this.lsn {
            if let Some(id) = this.id.take() {
                st.waiters.remove(&(this.lsn, id));
            }
            return Poll::Ready(Ok(()));
        }
        if let Some(reason) = &st.failed {
            return Poll::Ready(Err(IoError::Failed {
                path: this.inner.path.clone(),
                reason: reason.clone(),
            }));
        }
        let id = match this.id {
            Some(id) => id,
            None => {
                st.next_waiter_id += 1;
                let id = st.next_waiter_id;
                this.id = Some(id);
                id
            }
        };
        st.waiters.insert((this.lsn, id), cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if let Ok(mut st) = self.inner.state.try_borrow_mut() {
                st.waiters.remove(&(self.lsn, id));
            }
        }
    }
}
