//! [`Engine`]: one shard's storage engine: WAL + memtable + SSTables (flush; no compaction yet).
//!
//! A write encodes its WAL record, appends it to the current segment's [`LogWriter`]
//! (synchronously, into the group-commit tail), awaits durability per [`SyncMode`], and only
//! then applies it to the memtable and returns. A read looks in the memtable, the immutable
//! memtable and the SSTables and returns the greatest version (see "Reads").
//!
//! Why the memtable insert comes *after* durability: a read never sees a write that a crash
//! could still take away (in `Always` mode), and a write whose WAL append fails leaves no trace
//! in memory. The cost is that a write is invisible for the duration of its group commit; since
//! last-write-wins makes the insert order irrelevant, nothing else depends on when it happens.
//!
//! Segments: a write that does not fit the current segment rolls to a new one. The roll closes
//! the old writer first (seal + drain + fdatasync, which also acknowledges everything appended
//! to it), then creates the next segment; writes arriving meanwhile wait for the roll. Preparing
//! the next segment ahead of time is a later optimization.
//!
//! ## Freeze and flush
//! A write that finds the memtable at or above `memtable_bytes_max` first **freezes** it: under
//! the roll flag (no appends), the current segment is closed and segment `N` created exactly
//! as in a roll; then the freeze waits until every write appended before (to segments `< N`)
//! has been applied to the memtable (`pending` reaches 0); then the memtable becomes the
//! immutable memtable and a fresh one takes writes. So every record in segments `< N` is in the
//! immutable memtable (or in older tables), and every later record goes to the new memtable.
//!
//! A background task in the shard's low-share `flush` task queue then writes the immutable
//! memtable into a new level-0 table (`<id>.sst`, id from the manifest), opens a reader on it,
//! commits `ManifestEdit::flush(meta, (N, 0))`, swaps the immutable memtable for the reader
//! (one synchronous step: a read sees one or the other), and finally removes WAL segments
//! `< N`. A crash at any point loses nothing: before the manifest commit the WAL still holds
//! every record and recovery removes the unlisted table; after it, recovery replays only from
//! segment `N` and removes older segments left behind.
//!
//! Bounded memory: there is at most one immutable memtable. A write that needs a freeze while
//! a flush runs **waits for that flush** (the memtable may exceed its budget by the writes in
//! flight, so the total stays near 2 × `memtable_bytes_max`). If the flush failed, such a write
//! returns [`ShardError::Failed`] instead of waiting, while the flush task retries with backoff
//! (keeping the immutable memtable and the WAL: nothing acknowledged is dropped); writes that
//! fit the memtable continue. A manifest write failure is permanent until restart.
//!
//! ## Reads
//! Memtable, then the immutable memtable, then the tables newest first. Every version found is
//! reconciled by last-write-wins ([`Entry::supersedes`]): a newer table does not necessarily
//! hold the newer version (read repair and hints write old stamps late). A table whose
//! `max_stamp` is below the best stamp found so far is skipped (it cannot win). A tombstone
//! is a result ([`Lookup::Deleted`]).
//!
//! ## Open (recovery)
//! Manifest (created in a fresh directory; `*.sst` without a manifest is `Corrupt`) → remove
//! `*.sst.tmp` and `*.sst` the manifest does not list → open a reader per listed table →
//! replay the WAL from the manifest's flushed segment (removing older segments) → start a
//! fresh segment. `RecoveryReport::max_stamp` covers the WAL and the tables.
//!
//! ## Invariants
//! - `!Send`: the engine lives on one glommio executor; state is in `Cell`/`RefCell`, and no
//!   `RefCell` borrow is held across an `.await` (borrows are taken in small blocks or by
//!   cloning the `Rc` of the current writer out).
//! - At most one roll or freeze at a time (`rolling`); while it runs, no record is appended.
//! - At most one flush at a time (there is one immutable memtable); the flush task holds the
//!   manifest (taken out of the engine) while it runs, so edits are serialized.
//! - After `close`, every operation returns [`ShardError::Closed`]; writes acknowledged before
//!   are durable.
//! - After a WAL failure (write, fdatasync or roll), writes return [`ShardError::Failed`] or the
//!   I/O error: durability can no longer be promised until a restart replays the WAL.
//! - Dropping the engine (a simulated crash) cancels the flush task wherever it is.

use crate::cache::BlockCache;
use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::manifest::{self, Manifest, ManifestEdit, TableMeta, WalPosition};
use crate::memtable::{Entry, Memtable};
use crate::options::{ShardOptions, SyncMode};
use crate::sstable::{
    self, EntryRef, SstValue, SstValueRef, SstableBuilder, SstableOptions, SstableReader,
};
use crate::stats::{EngineStats, LevelStats};
use crate::types::{Lookup, Stamp};
use crate::wal::record::WalRecord;
use crate::wal::recovery::{self, RecoveryReport};
use crate::wal::{parse_segment_name, segment_path, WAL_DIR_NAME};
use crate::ShardError;
use glommio::{Latency, Shares, TaskQueueHandle};
use kvs_io::{IoError, LogStats, LogWriter, Lsn};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::Duration;

/// CPU shares of the flush task queue (glommio's default queue has 1000).
const FLUSH_SHARES: usize = 250;
/// First and greatest pause before a failed flush is retried.
const FLUSH_RETRY_MIN: Duration = Duration::from_millis(50);
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(5);

thread_local! {
    /// The flush task queue of this executor, created by the first `Engine::open` on it (task
    /// queues are per executor and never removed, so one is shared by all engines here).
    static FLUSH_QUEUE: Cell<Option<TaskQueueHandle>> = const { Cell::new(None) };
}

fn flush_queue() -> TaskQueueHandle {
    FLUSH_QUEUE.with(|q| {
        q.get().unwrap_or_else(|| {
            let h = glommio::executor().create_task_queue(
                Shares::Static(FLUSH_SHARES),
                Latency::NotImportant,
                "flush",
            );
            q.set(Some(h));
            h
        })
    })
}

/// Counters of writers already closed (rolled), added to the current writer's.
#[derive(Clone, Copy, Debug, Default)]
struct Retired {
    syncs: u64,
    records: u64,
    writes: u64,
}

/// One shard's storage engine. See the module docs.
pub struct Engine {
    opts: ShardOptions,
    wal_dir: PathBuf,
    /// Itself, for spawning the flush task (which holds only this weak reference).
    me: Weak<Engine>,
    memtable: RefCell<Memtable>,
    /// The frozen memtable being flushed, and the first segment it does not cover.
    immutable: RefCell<Option<(Rc<Memtable>, u64)>>,
    /// The shard's block cache, shared by every table reader.
    cache: Rc<BlockCache>,
    /// Live tables, newest (greatest id) first.
    tables: RefCell<Vec<Rc<SstableReader>>>,
    /// `None` while the flush task holds it.
    manifest: RefCell<Option<Manifest>>,
    /// The running flush; dropping it (with the engine) cancels it.
    flush_task: RefCell<Option<glommio::Task<()>>>,
    /// Writers waiting for the flush to finish; bounded by the tasks in flight.
    flush_waiters: RefCell<Vec<Waker>>,
    /// The last flush failure, rendered; cleared by a successful flush.
    flush_error: RefCell<Option<String>>,
    /// Writes appended to the WAL and not yet applied to the memtable (or abandoned).
    pending: Cell<u64>,
    /// A freeze waiting for `pending` to reach 0.
    pending_waiters: RefCell<Vec<Waker>>,
    /// The current segment writer; `None` once closed or after a failed roll.
    wal: RefCell<Option<Rc<LogWriter>>>,
    /// Segments on disk other than the current one: id → used bytes.
    segments: RefCell<BTreeMap<u64, u64>>,
    next_segment_id: Cell<u64>,
    rolling: Cell<bool>,
    /// Tasks waiting for a roll to finish; bounded by the tasks in flight.
    roll_waiters: RefCell<Vec<Waker>>,
    closed: Cell<bool>,
    /// The first roll failure, rendered.
    failed: RefCell<Option<String>>,
    retired: Cell<Retired>,
    puts: Cell<u64>,
    deletes: Cell<u64>,
    gets: Cell<u64>,
    flushes: Cell<u64>,
    flush_failures: Cell<u64>,
}

/// Counts a write between its WAL append and its memtable insert (see "Freeze and flush").
struct PendingGuard<'a>(&'a Engine);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let e = self.0;
        e.pending.set(e.pending.get().saturating_sub(1));
        if e.pending.get() == 0 {
            let waiters = std::mem::take(&mut *e.pending_waiters.borrow_mut());
            waiters.into_iter().for_each(Waker::wake);
        }
    }
}

impl Engine {
    /// Opens the shard in `opts.dir` (creating it if missing): opens (or creates) the manifest,
    /// removes table files a crash left behind, opens the listed tables, replays the WAL from
    /// the flushed position, truncates a torn tail of the newest segment and seals it if a
    /// crash left it unsealed, and starts a fresh segment for new writes.
    pub async fn open(opts: ShardOptions) -> Result<(Rc<Engine>, RecoveryReport), ShardError> {
        opts.validate()?;
        let dir = opts.dir.clone();
        let wal_dir = dir.join(WAL_DIR_NAME);
        kvs_io::create_dir_all(&wal_dir).await.map_err(|e| ShardError::io(&wal_dir, e))?;
        let manifest = open_manifest(&dir).await?;
        let stray_files_removed = remove_stray_tables(&dir, manifest.state()).await?;
        let mut metas: Vec<&TableMeta> = manifest.state().tables().collect();
        metas.sort_by_key(|t| std::cmp::Reverse(t.id));
        // One cache per engine: a reopened shard starts cold, so table ids reused after a
        // crash (see `manifest`) can never meet blocks of an older table of the same id.
        let cache = Rc::new(BlockCache::new(opts.block_cache_bytes));
        let mut tables = Vec::with_capacity(metas.len());
        for meta in metas {
            let path = dir.join(sstable::TableId(meta.id.0).file_name());
            let reader = SstableReader::open_with_cache(&path, Some(Rc::clone(&cache))).await?;
            tables.push(Rc::new(reader));
        }
        let flushed = manifest.state().flushed;
        let recovered = recovery::replay(&wal_dir, flushed.segment_id).await?;
        let id = recovered.next_segment_id;
        let path = segment_path(&wal_dir, id);
        let writer = LogWriter::create(&path, id, opts.log_writer_options())
            .await
            .map_err(|e| ShardError::io(&path, e))?;
        let mut report = recovered.report;
        report.max_stamp = report.max_stamp.max(manifest.state().max_stamp());
        report.tables = tables.len() as u64;
        report.stray_files_removed = stray_files_removed;
        tracing::info!(
            dir = %opts.dir.display(),
            tables = report.tables,
            segments = report.segments,
            records = report.records,
            torn_tail = report.torn_tail.is_some(),
            segment_id = id,
            "shard engine opened"
        );
        let engine = Rc::new_cyclic(|me| Engine {
            opts,
            wal_dir,
            me: me.clone(),
            cache,
            memtable: RefCell::new(recovered.memtable),
            immutable: RefCell::new(None),
            tables: RefCell::new(tables),
            manifest: RefCell::new(Some(manifest)),
            flush_task: RefCell::new(None),
            flush_waiters: RefCell::new(Vec::new()),
            flush_error: RefCell::new(None),
            pending: Cell::new(0),
            pending_waiters: RefCell::new(Vec::new()),
            wal: RefCell::new(Some(Rc::new(writer))),
            segments: RefCell::new(recovered.kept.into_iter().collect()),
            next_segment_id: Cell::new(id.saturating_add(1)),
            rolling: Cell::new(false),
            roll_waiters: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            failed: RefCell::new(None),
            retired: Cell::new(Retired::default()),
            puts: Cell::new(0),
            deletes: Cell::new(0),
            gets: Cell::new(0),
            flushes: Cell::new(0),
            flush_failures: Cell::new(0),
        });
        Ok((engine, report))
    }

    /// Writes `value` under `key` at `stamp`; returns once durable per [`SyncMode`]. A write
    /// older than the stored version is made durable but does not change the stored value.
    pub async fn put(&self, key: &[u8], value: &[u8], stamp: Stamp) -> Result<(), ShardError> {
        self.put_with_expiry(key, value, stamp, None).await
    }

    /// [`Engine::put`] of a value that expires at `expires_at_ms` (wall-clock ms since the
    /// Unix epoch; `None` = never). From then on reads of `key` answer [`Lookup::Deleted`] at
    /// `stamp` (judged by [`ShardOptions::clock`]): the expired value still shadows older
    /// versions, as a tombstone would. The expiry goes into the WAL record and the SSTable.
    pub async fn put_with_expiry(
        &self,
        key: &[u8],
        value: &[u8],
        stamp: Stamp,
        expires_at_ms: Option<u64>,
    ) -> Result<(), ShardError> {
        check_key(key)?;
        if value.len() as u64 > VALUE_BYTES_MAX {
            return Err(ShardError::ValueTooLarge {
                value_bytes: value.len() as u64,
                value_bytes_max: VALUE_BYTES_MAX,
            });
        }
        let payload = WalRecord::Put { stamp, key, value, expires_at_ms }.encode();
        let pending = self.log(&payload).await?;
        self.memtable.borrow_mut().put_expiring(key, value, stamp, expires_at_ms);
        drop(pending);
        self.puts.set(self.puts.get() + 1);
        Ok(())
    }

    /// Deletes `key` at `stamp` by writing a tombstone; returns once durable per [`SyncMode`].
    pub async fn delete(&self, key: &[u8], stamp: Stamp) -> Result<(), ShardError> {
        check_key(key)?;
        let payload = WalRecord::Delete { stamp, key }.encode();
        let pending = self.log(&payload).await?;
        self.memtable.borrow_mut().delete(key, stamp);
        drop(pending);
        self.deletes.set(self.deletes.get() + 1);
        Ok(())
    }

    /// Reads `key`: the greatest version in the memtable, the immutable memtable and the
    /// tables (see "Reads" in the module docs). Versions are reconciled as stored; if the
    /// winner is a value whose expiry is at or before [`ShardOptions::clock`]'s now, the answer
    /// is [`Lookup::Deleted`] at its stamp (like `compaction::merge` rule 3).
    pub async fn get(&self, key: &[u8]) -> Result<Lookup, ShardError> {
        if self.closed.get() {
            return Err(ShardError::Closed);
        }
        check_key(key)?;
        self.gets.set(self.gets.get() + 1);
        // One synchronous snapshot of memtable, immutable memtable and table list: a flush
        // swaps the immutable memtable for its table in one step, so nothing is missed.
        let mut best: Option<Entry> = self.memtable.borrow().get(key).cloned();
        if let Some((imm, _)) = &*self.immutable.borrow() {
            if let Some(e) = imm.get(key) {
                consider(&mut best, e.clone());
            }
        }
        let tables: Vec<Rc<SstableReader>> = self.tables.borrow().clone();
        for table in tables {
            if best.as_ref().is_some_and(|b| table.max_stamp() < b.stamp()) {
                continue;
            }
            if let Some(found) = table.get(key).await? {
                let entry = match found.value {
                    SstValue::Value(value) => Entry::Value {
                        value,
                        stamp: found.stamp,
                        expires_at_ms: found.expires_at_ms,
                    },
                    SstValue::Tombstone => Entry::Tombstone { stamp: found.stamp },
                };
                consider(&mut best, entry);
            }
        }
        Ok(best.map_or(Lookup::Missing, |e| e.to_lookup(self.opts.clock.now_ms())))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EngineStats {
        let memtable = self.memtable.borrow();
        let retired = self.retired.get();
        let current = self.wal.borrow().as_ref().map(|w| (w.segment_id(), w.stats()));
        let (segment_id, log) = current.unwrap_or((0, LogStats::default()));
        let current_segments = u64::from(segment_id != 0);
        let segments = self.segments.borrow();
        let tables = self.tables.borrow();
        let cache = self.cache.stats();
        EngineStats {
            keys: memtable.len() as u64,
            tombstones: memtable.tombstones(),
            memtable_bytes: memtable.approx_bytes(),
            memtable_bytes_max: self.opts.memtable_bytes_max,
            immutable_bytes: self.immutable.borrow().as_ref().map_or(0, |(m, _)| m.approx_bytes()),
            wal_bytes: segments.values().sum::<u64>() + log.appended_lsn,
            wal_segments: segments.len() as u64 + current_segments,
            wal_segment_id: segment_id,
            syncs: retired.syncs + log.syncs,
            records_written: retired.records + log.records_appended,
            wal_writes: retired.writes + log.writes,
            puts: self.puts.get(),
            deletes: self.deletes.get(),
            gets: self.gets.get(),
            flushes: self.flushes.get(),
            flush_failures: self.flush_failures.get(),
            tables: tables.len() as u64,
            table_bytes: tables.iter().map(|t| t.file_bytes()).sum(),
            block_cache_hits: cache.hits,
            block_cache_misses: cache.misses,
            block_cache_bytes: cache.bytes,
            levels: vec![LevelStats {
                tables: tables.len() as u64,
                bytes: tables.iter().map(|t| t.file_bytes()).sum(),
            }],
            wal_bytes_written: 0,
            ..EngineStats::default()
        }
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &ShardOptions {
        &self.opts
    }

    /// Writes and fdatasyncs everything appended, closes the WAL; later calls return
    /// [`ShardError::Closed`]. Writes in flight when `close` is called complete normally.
    /// A flush in progress is cancelled (its work is redone from the WAL at the next open).
    /// Idempotent.
    pub async fn close(&self) -> Result<(), ShardError> {
        if self.closed.replace(true) {
            return Ok(());
        }
        self.roll_finished().await;
        let task = self.flush_task.borrow_mut().take();
        if let Some(task) = task {
            task.cancel().await;
        }
        self.wake_flush_waiters();
        let writer = self.wal.borrow_mut().take();
        if let Some(writer) = writer {
            let result = writer.close().await;
            self.retire(&writer);
            result.map_err(|e| ShardError::io(writer.path(), e))?;
        }
        // Close the table files no read still holds (a read in flight keeps its `Rc`; the
        // file is then closed when it is dropped).
        let tables = std::mem::take(&mut *self.tables.borrow_mut());
        for reader in tables.into_iter().filter_map(|t| Rc::try_unwrap(t).ok()) {
            let path = reader.path().to_path_buf();
            if let Err(e) = reader.close().await {
                tracing::warn!(path = %path.display(), error = %e, "could not close a table");
            }
        }
        tracing::info!(dir = %self.opts.dir.display(), "shard engine closed");
        Ok(())
    }

    /// Appends `payload` to the WAL and waits until it is durable per the sync mode. The
    /// returned guard counts the write as pending until the caller has applied it.
    async fn log(&self, payload: &[u8]) -> Result<PendingGuard<'_>, ShardError> {
        let (writer, lsn, guard) = self.append(payload).await?;
        writer.durable(lsn).await.map_err(|e| ShardError::io(writer.path(), e))?;
        Ok(guard)
    }

    /// Appends `payload` to the current segment, rolling to a new one when it is full and
    /// freezing the memtable first when it is at its budget.
    async fn append(
        &self,
        payload: &[u8],
    ) -> Result<(Rc<LogWriter>, Lsn, PendingGuard<'_>), ShardError> {
        loop {
            if self.closed.get() {
                return Err(ShardError::Closed);
            }
            if self.rolling.get() {
                self.roll_finished().await;
                continue;
            }
            if let Some(reason) = self.failed.borrow().clone() {
                return Err(ShardError::Failed { reason });
            }
            if self.memtable.borrow().approx_bytes() >= self.opts.memtable_bytes_max {
                let flushing = self.immutable.borrow().is_some();
                // (Taken out first: no `RefCell` borrow may live across the awaits below.)
                let flush_error = self.flush_error.borrow().clone();
                match (flushing, flush_error) {
                    (false, _) => self.freeze().await?,
                    (true, Some(reason)) => {
                        return Err(ShardError::Failed {
                            reason: format!("flush failed: {reason}"),
                        })
                    }
                    (true, None) => self.flush_finished().await,
                }
                continue;
            }
            let writer = self.wal.borrow().clone().ok_or(ShardError::Closed)?;
            match writer.append(payload) {
                Ok(lsn) => {
                    self.pending.set(self.pending.get() + 1);
                    return Ok((writer, lsn, PendingGuard(self)));
                }
                Err(IoError::SegmentFull { .. }) => self.roll(writer, false).await?,
                Err(IoError::Overloaded { pending_bytes, pending_bytes_max }) => {
                    return Err(ShardError::Overloaded { pending_bytes, pending_bytes_max })
                }
                Err(e) => return Err(ShardError::io(writer.path(), e)),
            }
        }
    }

    /// Freezes the memtable (see "Freeze and flush") and starts its flush.
    async fn freeze(&self) -> Result<(), ShardError> {
        let writer = self.wal.borrow().clone().ok_or(ShardError::Closed)?;
        self.roll(writer, true).await
    }

    /// Closes the current segment and starts the next; with `freeze`, also swaps the memtable
    /// for a fresh one once every earlier write is applied. Runs with `rolling` set.
    async fn roll(&self, full: Rc<LogWriter>, freeze: bool) -> Result<(), ShardError> {
        debug_assert!(!self.rolling.get());
        self.rolling.set(true);
        let result = self.roll_inner(&full).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL segment roll failed");
            self.failed.borrow_mut().get_or_insert_with(|| e.to_string());
            self.wal.borrow_mut().take();
        }
        if let (Ok(first_unfrozen), true) = (&result, freeze) {
            // Every write appended to the closed segments is durable; wait until each has
            // reached the memtable (no new append can start: `rolling` is set).
            self.pending_drained().await;
            let frozen = std::mem::take(&mut *self.memtable.borrow_mut());
            tracing::debug!(
                bytes = frozen.approx_bytes(),
                keys = frozen.len(),
                segment = first_unfrozen,
                "memtable frozen"
            );
            *self.immutable.borrow_mut() = Some((Rc::new(frozen), *first_unfrozen));
            self.start_flush();
        }
        self.rolling.set(false);
        let waiters = std::mem::take(&mut *self.roll_waiters.borrow_mut());
        waiters.into_iter().for_each(Waker::wake);
        result.map(|_| ())
    }

    /// Returns the id of the new segment.
    async fn roll_inner(&self, full: &Rc<LogWriter>) -> Result<u64, ShardError> {
        // Everything appended to the full segment, and its seal, becomes durable before the
        // next segment exists, so only the newest segment can ever lack a seal or be torn.
        let closed = full.close().await;
        self.retire(full);
        closed.map_err(|e| ShardError::io(full.path(), e))?;
        let id = self.next_segment_id.get();
        self.next_segment_id.set(id.saturating_add(1));
        let path = segment_path(&self.wal_dir, id);
        let writer = LogWriter::create(&path, id, self.opts.log_writer_options())
            .await
            .map_err(|e| ShardError::io(&path, e))?;
        tracing::debug!(segment = %path.display(), "WAL rolled to a new segment");
        *self.wal.borrow_mut() = Some(Rc::new(writer));
        Ok(id)
    }

    /// Moves a closed writer's counters into the retired totals.
    fn retire(&self, writer: &LogWriter) {
        let s = writer.stats();
        let mut r = self.retired.get();
        r.syncs += s.syncs;
        r.records += s.records_appended;
        r.writes += s.writes;
        self.retired.set(r);
        self.segments.borrow_mut().insert(writer.segment_id(), s.appended_lsn);
    }

    /// Resolves when no roll is running.
    async fn roll_finished(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.rolling.get() {
                self.roll_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Resolves when no write is between its append and its memtable insert.
    async fn pending_drained(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.pending.get() > 0 {
                self.pending_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Resolves when there is no immutable memtable, or the flush of it failed.
    async fn flush_finished(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.immutable.borrow().is_some()
                && self.flush_error.borrow().is_none()
                && !self.closed.get()
            {
                self.flush_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    fn wake_flush_waiters(&self) {
        let waiters = std::mem::take(&mut *self.flush_waiters.borrow_mut());
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Spawns the flush task of the immutable memtable in the flush task queue.
    fn start_flush(&self) {
        let task = glommio::spawn_local_into(flush_loop(self.me.clone()), flush_queue());
        match task {
            Ok(task) => *self.flush_task.borrow_mut() = Some(task),
            Err(e) => {
                // The immutable memtable and the WAL stay; the next open replays them.
                tracing::error!(error = %e, "could not spawn the flush task");
                *self.flush_error.borrow_mut() = Some(format!("spawn flush task: {e}"));
            }
        }
    }

    /// Whether writes are acknowledged before fdatasync.
    pub fn sync_mode(&self) -> SyncMode {
        self.opts.sync
    }
}

/// Replaces `best` with `candidate` if it wins by last-write-wins.
fn consider(best: &mut Option<Entry>, candidate: Entry) {
    if best.as_ref().is_none_or(|b| candidate.supersedes(b)) {
        *best = Some(candidate);
    }
}

/// What a flush needs from the engine, taken out synchronously.
struct FlushJob {
    dir: PathBuf,
    cache: Rc<BlockCache>,
    wal_dir: PathBuf,
    memtable: Rc<Memtable>,
    first_unfrozen: u64,
    manifest: Manifest,
}

/// The flush task: flushes the immutable memtable, retrying with backoff on failure. Holds
/// the engine only weakly and only between awaits, so dropping the engine drops (cancels) it.
async fn flush_loop(engine: Weak<Engine>) {
    let mut backoff = FLUSH_RETRY_MIN;
    loop {
        let job = {
            let Some(e) = engine.upgrade() else { return };
            let imm = e.immutable.borrow().clone();
            let Some((memtable, first_unfrozen)) = imm else { return };
            let Some(manifest) = e.manifest.borrow_mut().take() else {
                tracing::error!("flush found no manifest (another flush running?)");
                return;
            };
            FlushJob {
                dir: e.opts.dir.clone(),
                cache: Rc::clone(&e.cache),
                wal_dir: e.wal_dir.clone(),
                memtable,
                first_unfrozen,
                manifest,
            }
        };
        let FlushJob { dir, cache, wal_dir, memtable, first_unfrozen, mut manifest } = job;
        let result = flush_memtable(&dir, cache, &memtable, first_unfrozen, &mut manifest).await;
        let Some(e) = engine.upgrade() else { return };
        *e.manifest.borrow_mut() = Some(manifest);
        match result {
            Ok(reader) => {
                {
                    // One synchronous step: reads see the memtable or the table, never neither.
                    e.tables.borrow_mut().insert(0, Rc::new(reader));
                    e.immutable.borrow_mut().take();
                }
                e.flushes.set(e.flushes.get() + 1);
                e.flush_error.borrow_mut().take();
                e.wake_flush_waiters();
                drop(e);
                let removed = remove_flushed_segments(&wal_dir, first_unfrozen).await;
                let Some(e) = engine.upgrade() else { return };
                match removed {
                    Ok(ids) => {
                        let mut segments = e.segments.borrow_mut();
                        ids.iter().for_each(|id| {
                            segments.remove(id);
                        });
                    }
                    // Housekeeping: the next open removes them (they are below `flushed`).
                    Err(err) => {
                        tracing::warn!(error = %err, "could not remove flushed WAL segments")
                    }
                }
                return;
            }
            Err(err) => {
                tracing::error!(
                    error = %err,
                    retry_in_ms = backoff.as_millis() as u64,
                    "memtable flush failed; the immutable memtable and the WAL are kept"
                );
                e.flush_failures.set(e.flush_failures.get() + 1);
                *e.flush_error.borrow_mut() = Some(err.to_string());
                e.wake_flush_waiters();
                drop(e);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(FLUSH_RETRY_MAX);
            }
        }
    }
}

/// Writes `memtable` as a new level-0 table, opens it, and commits it to the manifest with the
/// flushed position `(first_unfrozen, 0)`. On failure nothing is committed and the table file
/// is removed (best effort; an open removes any leftover).
async fn flush_memtable(
    dir: &Path,
    cache: Rc<BlockCache>,
    memtable: &Memtable,
    first_unfrozen: u64,
    manifest: &mut Manifest,
) -> Result<SstableReader, ShardError> {
    let id = manifest.allocate_table_id();
    let sid = sstable::TableId(id.0);
    let built = build_table(dir, sid, memtable).await;
    let (path, size_bytes) = match built {
        Ok(b) => b,
        Err(e) => {
            remove_quietly(&dir.join(sid.temp_file_name())).await;
            remove_quietly(&dir.join(sid.file_name())).await;
            return Err(e);
        }
    };
    let mut commit_attempted = false;
    let committed = async {
        let reader = SstableReader::open_with_cache(&path, Some(cache)).await?;
        let meta = TableMeta {
            id,
            level: 0,
            size_bytes,
            entries: memtable.len() as u64,
            min_key: reader.min_key().to_vec(),
            max_key: reader.max_key().to_vec(),
            max_stamp: reader.max_stamp(),
        };
        let edit = ManifestEdit::flush(meta, WalPosition { segment_id: first_unfrozen, offset: 0 });
        commit_attempted = true;
        manifest.apply(&edit).await?;
        Ok(reader)
    }
    .await;
    // After a failed manifest write the new generation may or may not be on disk, so the
    // table may be listed: leave it to the next open (which removes it if it is not).
    if committed.is_err() && !commit_attempted {
        remove_quietly(&path).await;
    }
    committed
}

async fn build_table(
    dir: &Path,
    id: sstable::TableId,
    memtable: &Memtable,
) -> Result<(PathBuf, u64), ShardError> {
    let mut builder =
        SstableBuilder::create(dir, id, SstableOptions::default(), memtable.len() as u64).await?;
    for (key, entry) in memtable.iter() {
        let value = match entry {
            Entry::Value { value, .. } => SstValueRef::Value(value),
            Entry::Tombstone { .. } => SstValueRef::Tombstone,
        };
        let expires_at_ms = entry.expires_at_ms();
        let entry = EntryRef { key, stamp: entry.stamp(), value, expires_at_ms };
        if let Err(e) = builder.add(entry).await {
            let _ = builder.abort().await;
            return Err(e);
        }
    }
    builder.finish().await
}

async fn remove_quietly(path: &Path) {
    if kvs_io::file_bytes(path).await.is_ok() {
        if let Err(e) = kvs_io::remove_file(path).await {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a failed table");
        }
    }
}

/// Removes WAL segments with id below `first_unfrozen`; returns the ids removed.
async fn remove_flushed_segments(
    wal_dir: &Path,
    first_unfrozen: u64,
) -> Result<Vec<u64>, ShardError> {
    let listing = kvs_io::list_dir(wal_dir).await.map_err(|e| ShardError::io(wal_dir, e))?;
    let mut removed = Vec::new();
    for path in listing {
        let Some(id) = parse_segment_name(&path).filter(|id| *id < first_unfrozen) else {
            continue;
        };
        kvs_io::remove_file(&path).await.map_err(|e| ShardError::io(&path, e))?;
        removed.push(id);
    }
    if !removed.is_empty() {
        kvs_io::sync_dir(wal_dir).await.map_err(|e| ShardError::io(wal_dir, e))?;
    }
    Ok(removed)
}

/// Opens the manifest in `dir`, or creates one in a fresh directory. Table files without a
/// manifest are `Corrupt`: the tables' data is no longer in the WAL, and nothing says which
/// of them are live.
async fn open_manifest(dir: &Path) -> Result<Manifest, ShardError> {
    match Manifest::open(dir).await {
        Ok(m) => Ok(m),
        Err(ShardError::ManifestMissing { .. }) => {
            let listing = kvs_io::list_dir(dir).await.map_err(|e| ShardError::io(dir, e))?;
            let table = listing.iter().find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| sstable::TableId::parse_file_name(n).is_some())
            });
            if let Some(path) = table {
                return Err(ShardError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!(
                        "SSTable without a manifest in {}: cannot tell which tables are live",
                        dir.display()
                    ),
                });
            }
            Manifest::create(dir).await
        }
        Err(e) => Err(e),
    }
}

/// Removes `*.sst.tmp` files and `*.sst` files `state` does not list; returns how many.
async fn remove_stray_tables(
    dir: &Path,
    state: &manifest::ManifestState,
) -> Result<u64, ShardError> {
    let listing = kvs_io::list_dir(dir).await.map_err(|e| ShardError::io(dir, e))?;
    let mut removed = 0u64;
    for path in listing {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let stray = sstable::is_temp_file_name(name)
            || sstable::TableId::parse_file_name(name)
                .is_some_and(|id| state.table(manifest::TableId(id.0)).is_none());
        if stray {
            tracing::warn!(path = %path.display(), "removing table file left by a crash");
            kvs_io::remove_file(&path).await.map_err(|e| ShardError::io(&path, e))?;
            removed += 1;
        }
    }
    if removed > 0 {
        // IMPORTANT: durable before a new table may reuse an id.
        kvs_io::sync_dir(dir).await.map_err(|e| ShardError::io(dir, e))?;
    }
    Ok(removed)
}

fn check_key(key: &[u8]) -> Result<(), ShardError> {
    if key.is_empty() {
        return Err(ShardError::EmptyKey);
    }
    if key.len() as u64 > KEY_BYTES_MAX {
        return Err(ShardError::KeyTooLarge {
            key_bytes: key.len() as u64,
            key_bytes_max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}
