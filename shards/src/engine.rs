//! [`Engine`]: one shard's storage engine: WAL + memtable + SSTables, flush and compaction.
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
//! ## Compaction
//! One task per engine, in the shard's `compaction` task queue (100 shares, below the flush's
//! 250 and the foreground's 1000). It sleeps until a flush or a compaction commits (or
//! [`Engine::compact`] asks), then asks the picker ([`crate::compaction::pick`]) for a plan
//! over the manifest's levels (mirrored in `levels`, so picking never waits for a flush that
//! holds the manifest). It merges the input tables ([`crate::compaction::merge_tables`]: key
//! order, newest version per key, tombstones and expired values dropped only past
//! `gc_grace_ms` in a bottommost merge, outputs split at `output_table_bytes`, reads paced to
//! `rate_bytes_per_s`), takes the manifest only to allocate output ids and to commit one edit
//! (remove inputs, add outputs), swaps the readers in one synchronous step, and removes the
//! input files. A crash before the commit leaves unlisted outputs (removed at open); after it,
//! unremoved inputs (likewise). A failed compaction is logged, counted and retried with
//! backoff; its inputs stay live. While level 0 holds `level0_stop_writes_trigger` tables and
//! compaction is healthy, writes wait for the next commit (the only way compaction can hold up
//! the write path, and a bound on read cost).
//!
//! ## Reads
//! Memtable, then the immutable memtable, then the tables (level 0 newest first, then each
//! deeper level; only tables whose key range holds the key). Every version found is
//! reconciled by last-write-wins ([`Entry::supersedes`]): a newer table does not necessarily
//! hold the newer version (read repair and hints write old stamps late). A table whose
//! `max_stamp` is below the best stamp found so far is skipped (it cannot win). A tombstone
//! is a result ([`Lookup::Deleted`]).
//!
//! ## Scans
//! [`Engine::scan_page`] streams the whole key space in pages (for moving token ranges between
//! nodes). A page snapshots, in one synchronous step like a read, the memtable, the immutable
//! memtable and the table list (cloning the readers' `Rc`s). From each source it takes the
//! entries after `after` in key order until the source has given `max_keys` entries or
//! `max_bytes` of key + value bytes; a source stopped with entries left is *cut*. The page's
//! `bound` is the smallest last-taken key among the cut sources: every source has given every
//! version it holds up to `bound` (a cut source stopped at or past it, an uncut one gave
//! everything), so reconciling the versions of keys `<= bound` by last-write-wins yields the
//! newest version of exactly the keys in `(after, bound]`, and the next page starts after
//! `bound`. Hence no key is skipped or repeated across pages, and each page but the last holds
//! at least the entries of the source that defined `bound` (at least one key). With no cut
//! source, the page ends the scan (`next = None`).
//!
//! Pages see different snapshots: a key written before the scan started appears with that
//! version or a newer one; keys written during the scan may or may not appear. Table blocks
//! are read ahead and do not enter the block cache. A compaction that commits while a page
//! reads a table removes the file, but the page's `Rc` keeps the reader and its open file
//! descriptor alive (the engine closes only readers no one else holds), so the page reads the
//! unlinked file to the end; the descriptor is closed (asynchronously, by glommio) when the
//! page drops the last `Rc`. Every page seeks every table anew (an index search, then the
//! block holding the first key after `after`), so a table costs at least one block read per
//! page while it has keys left: pages of many keys amortize that. A
//! tombstone collected by compaction between pages (past `gc_grace_ms`) is simply absent
//! from later pages. Memory per page is bounded by the sources: up to `max_keys` entries and
//! about `max_bytes` (plus one entry) per source, with one table read-ahead buffer at a time.
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
//! - At most one flush and one compaction at a time. Whoever edits the manifest takes it out
//!   of the engine for the edit (the flush for its whole run, a compaction for id allocation
//!   and its commit) and others wait, so edits are serialized.
//! - After `close`, every operation returns [`ShardError::Closed`]; writes acknowledged before
//!   are durable.
//! - After a WAL failure (write, fdatasync or roll), writes return [`ShardError::Failed`] or the
//!   I/O error: durability can no longer be promised until a restart replays the WAL.
//! - Dropping the engine (a simulated crash) cancels the flush and compaction tasks wherever
//!   they are; `close` cancels them too and removes the table files they left unlisted.

use crate::cache::BlockCache;
use crate::compaction::{
    level_scores, merge_tables, pick, CompactionOptions, CompactionPlan, CompactionReason,
    CompactionStyle, MergeContext, MergeSpec,
};
use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::manifest::{self, Manifest, ManifestEdit, TableMeta, WalPosition};
use crate::memtable::{Entry, Memtable};
use crate::options::{ShardOptions, SyncMode};
use crate::sstable::{
    self, EntryRef, ReaderStats, SstValue, SstValueRef, SstableBuilder, SstableOptions,
    SstableReader,
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
/// CPU shares of the compaction task queue: below the flush (which frees memory and WAL).
const COMPACTION_SHARES: usize = 100;
/// First and greatest pause before a failed flush is retried.
const FLUSH_RETRY_MIN: Duration = Duration::from_millis(50);
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(5);

thread_local! {
    /// The flush task queue of this executor, created by the first `Engine::open` on it (task
    /// queues are per executor and never removed, so one is shared by all engines here).
    static FLUSH_QUEUE: Cell<Option<TaskQueueHandle>> = const { Cell::new(None) };
    /// The compaction task queue of this executor (as `FLUSH_QUEUE`).
    static COMPACTION_QUEUE: Cell<Option<TaskQueueHandle>> = const { Cell::new(None) };
}

fn compaction_queue() -> TaskQueueHandle {
    COMPACTION_QUEUE.with(|q| {
        q.get().unwrap_or_else(|| {
            let h = glommio::executor().create_task_queue(
                Shares::Static(COMPACTION_SHARES),
                Latency::NotImportant,
                "compaction",
            );
            q.set(Some(h));
            h
        })
    })
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
    bytes: u64,
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
    /// Live tables by level, then newest (greatest id) first within a level.
    tables: RefCell<Vec<LiveTable>>,
    /// The manifest's levels as of its last commit (for the picker and stats, which must not
    /// wait for a flush that holds the manifest).
    levels: RefCell<Vec<Vec<TableMeta>>>,
    /// `None` while a flush or a compaction commit holds it.
    manifest: RefCell<Option<Manifest>>,
    /// Tasks waiting for the manifest to be put back.
    manifest_waiters: RefCell<Vec<Waker>>,
    /// The compaction task; dropping it (with the engine) cancels it.
    compaction_task: RefCell<Option<glommio::Task<()>>>,
    /// Compaction state shared with the compaction task.
    compaction: RefCell<CompactionState>,
    /// Writers, `compact` and `wait_for_compactions` callers waiting for compaction progress.
    compaction_waiters: RefCell<Vec<Waker>>,
    /// Counters of readers of tables compacted away.
    retired_readers: Cell<ReaderStats>,
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
    flush_bytes_written: Cell<u64>,
    user_bytes_written: Cell<u64>,
    write_stalls: Cell<u64>,
}

/// A live table and its level.
#[derive(Clone)]
struct LiveTable {
    level: u8,
    reader: Rc<SstableReader>,
}

/// What the engine and its compaction task share about compaction.
#[derive(Default)]
struct CompactionState {
    /// Something may be due (a flush or a compaction committed, or one was asked for).
    wanted: bool,
    /// The idle compaction task, to wake when `wanted` is set.
    waker: Option<Waker>,
    /// A compaction is running.
    running: bool,
    /// The last attempt failed with this; cleared by the next success.
    error: Option<String>,
    /// Manual compactions asked for, and done (each a sequence number).
    manual_requested: u64,
    manual_done: u64,
    compactions: u64,
    failures: u64,
    bytes_read: u64,
    bytes_written: u64,
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
        metas.sort_by_key(|t| (t.level, std::cmp::Reverse(t.id)));
        // One cache per engine: a reopened shard starts cold, so table ids reused after a
        // crash (see `manifest`) can never meet blocks of an older table of the same id.
        let cache = Rc::new(BlockCache::new(opts.block_cache_bytes));
        let mut tables = Vec::with_capacity(metas.len());
        for meta in metas {
            let path = dir.join(sstable::TableId(meta.id.0).file_name());
            let reader = SstableReader::open_with_cache(&path, Some(Rc::clone(&cache))).await?;
            tables.push(LiveTable { level: meta.level, reader: Rc::new(reader) });
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
        let levels = manifest.state().levels().to_vec();
        let auto_compaction = opts.compaction.auto;
        let engine = Rc::new_cyclic(|me| Engine {
            opts,
            wal_dir,
            me: me.clone(),
            cache,
            memtable: RefCell::new(recovered.memtable),
            immutable: RefCell::new(None),
            tables: RefCell::new(tables),
            levels: RefCell::new(levels),
            manifest: RefCell::new(Some(manifest)),
            manifest_waiters: RefCell::new(Vec::new()),
            compaction_task: RefCell::new(None),
            compaction: RefCell::new(CompactionState {
                wanted: auto_compaction,
                ..CompactionState::default()
            }),
            compaction_waiters: RefCell::new(Vec::new()),
            retired_readers: Cell::new(ReaderStats::default()),
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
            flush_bytes_written: Cell::new(0),
            user_bytes_written: Cell::new(0),
            write_stalls: Cell::new(0),
        });
        engine.start_compaction_task()?;
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
        self.user_bytes_written
            .set(self.user_bytes_written.get() + (key.len() + value.len()) as u64);
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
        self.user_bytes_written.set(self.user_bytes_written.get() + key.len() as u64);
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
        // Only the tables whose key range holds `key` (at most one per level below 0).
        let tables: Vec<Rc<SstableReader>> = self
            .tables
            .borrow()
            .iter()
            .filter(|t| t.reader.min_key() <= key && key <= t.reader.max_key())
            .map(|t| Rc::clone(&t.reader))
            .collect();
        for table in tables {
            if best.as_ref().is_some_and(|b| table.max_stamp() < b.stamp()) {
                continue;
            }
            if let Some(found) = table.get(key).await? {
                consider(&mut best, entry_of(found).1);
            }
        }
        Ok(best.map_or(Lookup::Missing, |e| e.to_lookup(self.opts.clock.now_ms())))
    }

    /// One page of a scan of the whole key space: the newest version of every key in
    /// `(after, bound]` that `keep` accepts, in key order, as stored (expired values and
    /// tombstones included; expiry is the caller's to judge). See "Scans" in the module docs
    /// for how `bound` is chosen and why pages neither skip nor repeat a key. Resume with
    /// `after = page.next` until it is `None`. `max_keys` and `max_bytes` (key + value bytes)
    /// bound what each source gives to one page; both are clamped to at least 1, so every
    /// page that is not the last makes progress, even past a value larger than `max_bytes`.
    ///
    /// Damage in a table is [`ShardError::Corrupt`] naming the file; a closed engine answers
    /// [`ShardError::Closed`].
    pub async fn scan_page(
        &self,
        after: Option<&[u8]>,
        keep: &dyn Fn(&[u8]) -> bool,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<ScanPage, ShardError> {
        if self.closed.get() {
            return Err(ShardError::Closed);
        }
        let limit = ScanLimit { keys_max: max_keys.max(1), bytes_max: max_bytes.max(1) };
        // One synchronous snapshot, as in `get`: memtable and immutable memtable are copied
        // (up to the limit) and the table list is cloned before the first await, so a flush
        // or a compaction that commits during the page cannot hide a version from it. The
        // `Rc`s keep the readers of tables compacted meanwhile open (see "Scans").
        // Each source after the first reads only up to the page's bound so far (the smallest
        // last key of a cut source): what lies past it would be thrown away, so a page reads
        // about one page of data in all, not one per table.
        let mut runs: Vec<ScanRun> = Vec::new();
        let mut bound: Option<Vec<u8>> = None;
        let add = |run: ScanRun, bound: &mut Option<Vec<u8>>, runs: &mut Vec<ScanRun>| {
            if let Some(k) = run.covered_through() {
                if bound.as_deref().is_none_or(|b| k < b) {
                    *bound = Some(k.to_vec());
                }
            }
            runs.push(run);
        };
        let run = limit.take_memtable(&self.memtable.borrow(), after, bound.as_deref());
        add(run, &mut bound, &mut runs);
        if let Some((imm, _)) = &*self.immutable.borrow() {
            let run = limit.take_memtable(imm, after, bound.as_deref());
            add(run, &mut bound, &mut runs);
        }
        let tables: Vec<Rc<SstableReader>> =
            self.tables.borrow().iter().map(|t| Rc::clone(&t.reader)).collect();
        for table in &tables {
            let run = limit.take_table(table, after, bound.as_deref()).await?;
            add(run, &mut bound, &mut runs);
        }
        Ok(reconcile_page(runs, keep))
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
        let mut readers = self.retired_readers.get();
        tables.iter().for_each(|t| add_reader_stats(&mut readers, &t.reader.stats()));
        let levels = self.levels.borrow();
        let max_levels = usize::from(self.opts.compaction.max_levels).max(levels.len());
        let level_stats: Vec<LevelStats> = (0..max_levels)
            .map(|l| {
                let tables = levels.get(l).map(Vec::as_slice).unwrap_or_default();
                LevelStats {
                    tables: tables.len() as u64,
                    bytes: tables.iter().map(|t| t.size_bytes).sum(),
                }
            })
            .collect();
        let last_used = level_stats.iter().rposition(|l| l.tables > 0).map_or(1, |i| i + 1);
        let compaction = self.compaction.borrow();
        let imm_keys = self.immutable.borrow().as_ref().map_or(0, |(m, _)| m.len() as u64);
        let table_entries: u64 = tables.iter().map(|t| t.reader.footer().entry_count).sum();
        EngineStats {
            keys: memtable.len() as u64,
            keys_estimate: (memtable.len() as u64)
                .saturating_add(imm_keys)
                .saturating_add(table_entries),
            tombstones: memtable.tombstones(),
            memtable_bytes: memtable.approx_bytes(),
            memtable_bytes_max: self.opts.memtable_bytes_max,
            immutable_bytes: self.immutable.borrow().as_ref().map_or(0, |(m, _)| m.approx_bytes()),
            wal_bytes: segments.values().sum::<u64>() + log.appended_lsn,
            wal_segments: segments.len() as u64 + current_segments,
            wal_segment_id: segment_id,
            syncs: retired.syncs + log.syncs,
            records_written: retired.records + log.records_appended,
            wal_bytes_written: retired.bytes + log.bytes_appended,
            wal_writes: retired.writes + log.writes,
            puts: self.puts.get(),
            deletes: self.deletes.get(),
            gets: self.gets.get(),
            user_bytes_written: self.user_bytes_written.get(),
            flushes: self.flushes.get(),
            flush_failures: self.flush_failures.get(),
            flush_bytes_written: self.flush_bytes_written.get(),
            compactions: compaction.compactions,
            compaction_failures: compaction.failures,
            compaction_bytes_read: compaction.bytes_read,
            compaction_bytes_written: compaction.bytes_written,
            compaction_backlog_bytes: compaction_backlog(&levels, &self.opts.compaction),
            compaction_running: compaction.running,
            write_stalls: self.write_stalls.get(),
            tables: tables.len() as u64,
            table_bytes: tables.iter().map(|t| t.reader.file_bytes()).sum(),
            levels: level_stats.into_iter().take(last_used).collect(),
            bloom_useful: readers.bloom_negatives,
            bloom_false_positives: readers.bloom_false_positives,
            blocks_read: readers.blocks_read,
            block_cache_hits: cache.hits,
            block_cache_misses: cache.misses,
            block_cache_bytes: cache.bytes,
        }
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &ShardOptions {
        &self.opts
    }

    /// Writes and fdatasyncs everything appended, closes the WAL; later calls return
    /// [`ShardError::Closed`]. Writes in flight when `close` is called complete normally.
    /// A flush in progress is cancelled (its work is redone from the WAL at the next open)
    /// unless it is committing to the manifest, which it finishes first.
    /// Idempotent.
    pub async fn close(&self) -> Result<(), ShardError> {
        if self.closed.replace(true) {
            return Ok(());
        }
        self.roll_finished().await;
        // A flush or compaction in the middle of its manifest commit finishes it first (one
        // small file write): cancelled there, its rename could still land in the kernel after
        // this engine is gone, under a reopened one. The tasks take nothing new once `closed`.
        wait_until(&self.manifest_waiters, || self.manifest.borrow().is_some()).await;
        let task = self.flush_task.borrow_mut().take();
        if let Some(task) = task {
            task.cancel().await;
        }
        self.wake_flush_waiters();
        // A compaction cancelled mid-merge leaves `.sst.tmp` or unlisted outputs, which the
        // next open removes; one cancelled mid-commit is decided by the manifest on disk.
        let task = self.compaction_task.borrow_mut().take();
        if let Some(task) = task {
            task.cancel().await;
        }
        self.wake_compaction_waiters();
        self.wake_manifest_waiters();
        // Tidy what the cancelled tasks left (open would remove it too): `.sst.tmp` files and
        // finished outputs that were never listed. Skipped if a task was cancelled while it
        // held the manifest (mid-commit: only the manifest on disk can tell).
        let listed = self.manifest.borrow().as_ref().map(|m| m.state().clone());
        if let Some(state) = listed {
            if let Err(e) = remove_stray_tables(&self.opts.dir, &state).await {
                tracing::warn!(error = %e, "could not remove table files of a cancelled task");
            }
        }
        let writer = self.wal.borrow_mut().take();
        if let Some(writer) = writer {
            let result = writer.close().await;
            self.retire(&writer);
            result.map_err(|e| ShardError::io(writer.path(), e))?;
        }
        // Close the table files no read still holds (a read in flight keeps its `Rc`; the
        // file is then closed when it is dropped).
        let tables = std::mem::take(&mut *self.tables.borrow_mut());
        for reader in tables.into_iter().filter_map(|t| Rc::try_unwrap(t.reader).ok()) {
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

    /// The checks before touching the WAL: `Err` when closed or after a WAL failure; waits out
    /// a running roll and returns `Ok(false)` (the caller re-checks everything); `Ok(true)`
    /// when the WAL may be used now.
    async fn wal_ready(&self) -> Result<bool, ShardError> {
        if self.closed.get() {
            return Err(ShardError::Closed);
        }
        if self.rolling.get() {
            self.roll_finished().await;
            return Ok(false);
        }
        if let Some(reason) = self.failed.borrow().clone() {
            return Err(ShardError::Failed { reason });
        }
        Ok(true)
    }

    /// Appends `payload` to the current segment, rolling to a new one when it is full and
    /// freezing the memtable first when it is at its budget.
    async fn append(
        &self,
        payload: &[u8],
    ) -> Result<(Rc<LogWriter>, Lsn, PendingGuard<'_>), ShardError> {
        loop {
            if !self.wal_ready().await? {
                continue;
            }
            if self.writes_stalled() {
                self.write_stalls.set(self.write_stalls.get() + 1);
                self.compaction_progress().await;
                continue;
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
        r.bytes += s.bytes_appended;
        r.writes += s.writes;
        self.retired.set(r);
        self.segments.borrow_mut().insert(writer.segment_id(), s.appended_lsn);
    }

    /// Resolves when no roll is running.
    async fn roll_finished(&self) {
        wait_until(&self.roll_waiters, || !self.rolling.get()).await;
    }

    /// Resolves when no write is between its append and its memtable insert.
    async fn pending_drained(&self) {
        wait_until(&self.pending_waiters, || self.pending.get() == 0).await;
    }

    /// Resolves when there is no immutable memtable, or the flush of it failed.
    async fn flush_finished(&self) {
        wait_until(&self.flush_waiters, || {
            self.immutable.borrow().is_none()
                || self.flush_error.borrow().is_some()
                || self.closed.get()
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
            Ok(task) => {
                // The previous flush task committed its table (there was no immutable
                // memtable) and may still be removing WAL segments: let it finish.
                if let Some(previous) = self.flush_task.borrow_mut().replace(task) {
                    previous.detach();
                }
            }
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

/// Resolves once `done()` holds; until then registers the task in `waiters`, which whoever
/// changes what `done` reads must wake (the engine's waits on rolls, pending writes and
/// flushes).
async fn wait_until(waiters: &RefCell<Vec<Waker>>, done: impl Fn() -> bool) {
    futures_lite::future::poll_fn(|cx| {
        if done() {
            Poll::Ready(())
        } else {
            waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
}

/// A table entry in the memtable's form, with its key.
fn entry_of(found: sstable::SstEntry) -> (Vec<u8>, Entry) {
    let entry = match found.value {
        SstValue::Value(value) => {
            Entry::Value { value, stamp: found.stamp, expires_at_ms: found.expires_at_ms }
        }
        SstValue::Tombstone => Entry::Tombstone { stamp: found.stamp },
    };
    (found.key, entry)
}

/// One page of a scan (see [`Engine::scan_page`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanPage {
    /// The reconciled newest version of every key of the page that `keep` accepted, in key
    /// order, as stored: values with their expiry, expired values and tombstones included.
    pub entries: Vec<(Vec<u8>, Entry)>,
    /// Resume after this key; `None` when the scan has passed the last key.
    pub next: Option<Vec<u8>>,
    /// Distinct keys of the page examined (before `keep`), for progress reporting.
    pub examined: u64,
}

/// What one source (memtable, immutable memtable or table) gives to a page.
struct ScanRun {
    /// Its entries after the page's `after`, in key order, one per key.
    entries: Vec<(Vec<u8>, Entry)>,
    /// It stopped at the limit with entries left: the page may only cover keys up to the
    /// last one taken here.
    cut: bool,
}

impl ScanRun {
    /// The greatest key this source vouches for: every version it holds up to this key is in
    /// `entries`. `None` when it holds nothing more at all (not cut).
    fn covered_through(&self) -> Option<&[u8]> {
        if self.cut {
            self.entries.last().map(|(k, _)| k.as_slice())
        } else {
            None
        }
    }
}

/// How much one source gives to one page (both at least 1).
#[derive(Clone, Copy)]
struct ScanLimit {
    keys_max: usize,
    bytes_max: usize,
}

impl ScanLimit {
    /// Whether a source that gave `keys` entries of `bytes` key + value bytes is done.
    fn reached(&self, keys: usize, bytes: usize) -> bool {
        keys >= self.keys_max || bytes >= self.bytes_max
    }

    /// Copies a memtable's entries after `after` up to the limit or past `bound` (a source
    /// stopped by the bound covers everything up to it: not cut) (synchronous).
    fn take_memtable(
        &self,
        memtable: &Memtable,
        after: Option<&[u8]>,
        bound: Option<&[u8]>,
    ) -> ScanRun {
        let mut run = ScanRun { entries: Vec::new(), cut: false };
        let mut bytes = 0usize;
        for (key, entry) in memtable.iter_after(after) {
            if bound.is_some_and(|b| key > b) {
                break;
            }
            if self.reached(run.entries.len(), bytes) {
                run.cut = true;
                break;
            }
            bytes = bytes.saturating_add(scan_bytes(key, entry));
            run.entries.push((key.to_vec(), entry.clone()));
        }
        run
    }

    /// Reads a table's entries after `after` up to the limit, then one more to learn whether
    /// it is cut (read ahead in about `bytes_max` at a time, not through the block cache).
    async fn take_table(
        &self,
        table: &SstableReader,
        after: Option<&[u8]>,
        bound: Option<&[u8]>,
    ) -> Result<ScanRun, ShardError> {
        if bound.is_some_and(|b| table.min_key() > b) {
            return Ok(ScanRun { entries: Vec::new(), cut: false });
        }
        let mut run = ScanRun { entries: Vec::new(), cut: false };
        let mut bytes = 0usize;
        // Read ahead about what the page may take, not a whole `SCAN_READ_BYTES`: every page
        // seeks every table anew, so a larger read-ahead would mostly be thrown away.
        let read_ahead_bytes = u64::try_from(self.bytes_max).unwrap_or(u64::MAX);
        let mut iter = table.iter_after(after).with_read_ahead_bytes(read_ahead_bytes);
        while let Some(found) = iter.next().await? {
            if bound.is_some_and(|b| found.key.as_slice() > b) {
                break;
            }
            if self.reached(run.entries.len(), bytes) {
                run.cut = true;
                break;
            }
            let (key, entry) = entry_of(found);
            bytes = bytes.saturating_add(scan_bytes(&key, &entry));
            run.entries.push((key, entry));
        }
        Ok(run)
    }
}

/// Key + value bytes of an entry, as a scan's `max_bytes` counts them.
fn scan_bytes(key: &[u8], entry: &Entry) -> usize {
    match entry {
        Entry::Value { value, .. } => key.len().saturating_add(value.len()),
        Entry::Tombstone { .. } => key.len(),
    }
}

/// Builds a page from what each source gave: `bound` is the smallest key a cut source
/// vouches for; versions of keys up to `bound` are reconciled by last-write-wins, then
/// filtered by `keep`. Pure (no I/O), so the page rule is one function.
fn reconcile_page(runs: Vec<ScanRun>, keep: &dyn Fn(&[u8]) -> bool) -> ScanPage {
    let bound: Option<Vec<u8>> =
        runs.iter().filter_map(ScanRun::covered_through).min().map(<[u8]>::to_vec);
    let mut newest: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    for run in runs {
        debug_assert!(run.entries.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0)));
        for (key, entry) in run.entries {
            if bound.as_ref().is_some_and(|b| key > *b) {
                // Entries are in key order: the rest of this run is past the bound too.
                break;
            }
            match newest.entry(key) {
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(entry);
                }
                std::collections::btree_map::Entry::Occupied(mut slot) => {
                    if entry.supersedes(slot.get()) {
                        slot.insert(entry);
                    }
                }
            }
        }
    }
    let examined = newest.len() as u64;
    let entries: Vec<(Vec<u8>, Entry)> = newest.into_iter().filter(|(k, _)| keep(k)).collect();
    ScanPage { entries, next: bound, examined }
}

/// Replaces `best` with `candidate` if it wins by last-write-wins.
fn consider(best: &mut Option<Entry>, candidate: Entry) {
    if best.as_ref().is_none_or(|b| candidate.supersedes(b)) {
        *best = Some(candidate);
    }
}

/// What a flush needs from the engine, taken out synchronously.
struct FlushJob {
    sstable: SstableOptions,
    dir: PathBuf,
    cache: Rc<BlockCache>,
    wal_dir: PathBuf,
    memtable: Rc<Memtable>,
    first_unfrozen: u64,
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
            FlushJob {
                sstable: e.opts.sstable,
                dir: e.opts.dir.clone(),
                cache: Rc::clone(&e.cache),
                wal_dir: e.wal_dir.clone(),
                memtable,
                first_unfrozen,
            }
        };
        let FlushJob { sstable, dir, cache, wal_dir, memtable, first_unfrozen } = job;
        let result = flush_memtable(&engine, &dir, cache, sstable, &memtable, first_unfrozen).await;
        let Some(e) = engine.upgrade() else { return };
        match result {
            Ok((reader, levels)) => {
                let bytes = reader.file_bytes();
                {
                    // One synchronous step: reads see the memtable or the table, never neither.
                    let mut tables = e.tables.borrow_mut();
                    tables.push(LiveTable { level: 0, reader: Rc::new(reader) });
                    sort_tables(&mut tables);
                    e.immutable.borrow_mut().take();
                    *e.levels.borrow_mut() = levels;
                }
                e.flushes.set(e.flushes.get() + 1);
                e.flush_bytes_written.set(e.flush_bytes_written.get() + bytes);
                e.want_compaction();
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
            // Closed before the commit: the table is unlisted; close or the next open
            // removes it, and the WAL still holds its data.
            Err(ShardError::Closed) => return,
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
/// flushed position `(first_unfrozen, 0)`; returns the reader and the levels after the commit.
/// Holds the manifest only for the id allocation and the commit (as compaction does), so
/// `close` never waits for a table build. On failure nothing is committed and the table file
/// is removed (best effort; an open removes any leftover).
async fn flush_memtable(
    engine: &Weak<Engine>,
    dir: &Path,
    cache: Rc<BlockCache>,
    sstable: SstableOptions,
    memtable: &Memtable,
    first_unfrozen: u64,
) -> Result<(SstableReader, Vec<Vec<TableMeta>>), ShardError> {
    let sid = allocate_table_id(engine).await?;
    let id = manifest::TableId(sid.0);
    let built = build_table(dir, sid, sstable, memtable).await;
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
        let Some(mut manifest) = take_manifest(engine).await else {
            return Err(ShardError::Closed);
        };
        commit_attempted = true;
        let applied = manifest.apply(&edit).await;
        let levels = manifest.state().levels().to_vec();
        match engine.upgrade() {
            Some(e) => e.put_manifest(manifest),
            None => return Err(ShardError::Closed),
        }
        applied?;
        Ok((reader, levels))
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
    options: SstableOptions,
    memtable: &Memtable,
) -> Result<(PathBuf, u64), ShardError> {
    let mut builder = SstableBuilder::create(dir, id, options, memtable.len() as u64).await?;
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
            tracing::warn!(path = %path.display(), "removing a table file the manifest does not list");
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

/// Keeps the canonical read order: by level, newest (greatest id) first within a level.
fn sort_tables(tables: &mut [LiveTable]) {
    tables.sort_by_key(|t| (t.level, std::cmp::Reverse(t.reader.id().0)));
}

fn add_reader_stats(total: &mut ReaderStats, s: &ReaderStats) {
    total.gets += s.gets;
    total.range_misses += s.range_misses;
    total.bloom_negatives += s.bloom_negatives;
    total.bloom_false_positives += s.bloom_false_positives;
    total.blocks_read += s.blocks_read;
    total.cache_hits += s.cache_hits;
}

/// Bytes above the levels' targets (leveled: level 0 counts whole once at its trigger), or the
/// bytes of the next size-tiered bucket: an estimate of the work compaction has to catch up.
fn compaction_backlog(levels: &[Vec<TableMeta>], opts: &CompactionOptions) -> u64 {
    let size = |ids: &[manifest::TableId]| -> u64 {
        levels.iter().flatten().filter(|t| ids.contains(&t.id)).map(|t| t.size_bytes).sum()
    };
    match opts.style {
        CompactionStyle::SizeTiered(_) => pick(levels, opts).map_or(0, |p| size(&p.inputs)),
        CompactionStyle::Leveled => level_scores(levels, opts)
            .iter()
            .map(|l| {
                if l.level == 0 {
                    if l.score >= 1.0 {
                        l.size_bytes
                    } else {
                        0
                    }
                } else {
                    l.size_bytes.saturating_sub(opts.target_bytes(l.level))
                }
            })
            .sum(),
    }
}

/// Waits until the manifest is in the engine and takes it; `None` once the engine is gone or
/// closed. Holds the engine only weakly.
async fn take_manifest(engine: &Weak<Engine>) -> Option<Manifest> {
    futures_lite::future::poll_fn(|cx| {
        let Some(e) = engine.upgrade() else { return Poll::Ready(None) };
        if e.closed.get() {
            return Poll::Ready(None);
        }
        let taken = e.manifest.borrow_mut().take();
        match taken {
            Some(m) => Poll::Ready(Some(m)),
            None => {
                e.manifest_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
    })
    .await
}

/// Allocates a table id from the manifest (waiting while a commit holds it).
async fn allocate_table_id(engine: &Weak<Engine>) -> Result<sstable::TableId, ShardError> {
    let Some(mut manifest) = take_manifest(engine).await else { return Err(ShardError::Closed) };
    let id = manifest.allocate_table_id();
    match engine.upgrade() {
        Some(e) => e.put_manifest(manifest),
        None => return Err(ShardError::Closed),
    }
    Ok(sstable::TableId(id.0))
}

/// What a compaction takes from the engine, synchronously.
struct CompactionJob {
    plan: CompactionPlan,
    inputs: Vec<Rc<SstableReader>>,
    input_bytes: u64,
    spec: MergeSpec,
    cache: Rc<BlockCache>,
    /// The manual request this job serves, if any.
    manual: Option<u64>,
}

/// The compaction task: waits until a compaction may be due, runs the picker's plan (or a
/// manual one), and repeats. One per engine; holds the engine only weakly between awaits, so
/// dropping the engine cancels it.
async fn compaction_loop(engine: Weak<Engine>) {
    let mut backoff = FLUSH_RETRY_MIN;
    loop {
        let due = futures_lite::future::poll_fn(|cx| {
            let Some(e) = engine.upgrade() else { return Poll::Ready(false) };
            if e.closed.get() {
                return Poll::Ready(false);
            }
            let mut c = e.compaction.borrow_mut();
            if c.wanted {
                c.wanted = false;
                Poll::Ready(true)
            } else {
                c.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if !due {
            return;
        }
        let job = {
            let Some(e) = engine.upgrade() else { return };
            let job = e.next_compaction();
            if job.is_none() {
                e.compaction.borrow_mut().running = false;
                e.wake_compaction_waiters();
            }
            job
        };
        let Some(job) = job else { continue };
        match run_compaction(&engine, job).await {
            Ok(true) => backoff = FLUSH_RETRY_MIN,
            Ok(false) => return,
            Err(err) => {
                let Some(e) = engine.upgrade() else { return };
                tracing::error!(
                    error = %err,
                    retry_in_ms = backoff.as_millis() as u64,
                    "compaction failed; its inputs stay live"
                );
                {
                    let mut c = e.compaction.borrow_mut();
                    c.failures += 1;
                    c.error = Some(err.to_string());
                    c.running = false;
                }
                e.wake_compaction_waiters();
                drop(e);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(FLUSH_RETRY_MAX);
                if let Some(e) = engine.upgrade() {
                    e.compaction.borrow_mut().wanted = true;
                }
            }
        }
    }
}

/// Runs one compaction job to its commit. `Ok(false)`: the engine went away or closed.
async fn run_compaction(engine: &Weak<Engine>, job: CompactionJob) -> Result<bool, ShardError> {
    let CompactionJob { plan, inputs, input_bytes, spec, cache, manual } = job;
    let started = std::time::Instant::now();
    let merged =
        merge_tables(&inputs, &spec, &cache, async || allocate_table_id(engine).await).await?;
    let written: u64 = merged.outputs.iter().map(|o| o.size_bytes).sum();
    let metas: Vec<TableMeta> = merged
        .outputs
        .iter()
        .map(|o| TableMeta {
            id: manifest::TableId(o.id.0),
            level: plan.output_level,
            size_bytes: o.size_bytes,
            entries: o.entries,
            min_key: o.reader.min_key().to_vec(),
            max_key: o.reader.max_key().to_vec(),
            max_stamp: o.reader.max_stamp(),
        })
        .collect();
    let remove: Vec<manifest::TableId> = plan.inputs.clone();
    let edit = ManifestEdit::compaction(remove, metas);
    let Some(mut manifest) = take_manifest(engine).await else {
        // Closed before the commit: the outputs are unlisted, the next open removes them.
        return Ok(false);
    };
    let applied = manifest.apply(&edit).await;
    let levels = manifest.state().levels().to_vec();
    let Some(e) = engine.upgrade() else { return Ok(false) };
    e.put_manifest(manifest);
    // After a failed manifest write the outputs may be listed on disk; the next open decides
    // (and removes them if they are not).
    applied?;
    {
        // One synchronous step: reads see the inputs or the outputs, never neither.
        let mut tables = e.tables.borrow_mut();
        let mut retired = e.retired_readers.get();
        tables.retain(|t| {
            let gone = plan.inputs.iter().any(|id| id.0 == t.reader.id().0);
            if gone {
                add_reader_stats(&mut retired, &t.reader.stats());
            }
            !gone
        });
        e.retired_readers.set(retired);
        tables.extend(
            merged
                .outputs
                .into_iter()
                .map(|o| LiveTable { level: plan.output_level, reader: Rc::new(o.reader) }),
        );
        sort_tables(&mut tables);
        *e.levels.borrow_mut() = levels;
    }
    let dir = e.opts.dir.clone();
    drop(e);
    tracing::info!(
        reason = ?plan.reason,
        inputs = plan.inputs.len(),
        output_level = plan.output_level,
        input_bytes,
        output_bytes = written,
        keys = merged.keys_in,
        dropped = merged.dropped,
        expired = merged.expired_to_tombstones,
        ms = started.elapsed().as_millis() as u64,
        "compaction committed"
    );
    // The inputs are no longer listed: remove their files. A read still holding a reader keeps
    // its file descriptor (the data stays readable until it is dropped).
    let mut removed_any = false;
    for reader in inputs {
        cache.evict_table(reader.id().0);
        let path = reader.path().to_path_buf();
        if let Ok(r) = Rc::try_unwrap(reader) {
            let _ = r.close().await;
        }
        match kvs_io::remove_file(&path).await {
            Ok(()) => removed_any = true,
            // Housekeeping: the next open removes unlisted tables.
            Err(err) => tracing::warn!(path = %path.display(), error = %err,
                "could not remove a compacted table"),
        }
    }
    if removed_any {
        if let Err(err) = kvs_io::sync_dir(&dir).await {
            tracing::warn!(dir = %dir.display(), error = %err, "could not sync the shard dir");
        }
    }
    // Done (waiters see a tidy directory).
    let Some(e) = engine.upgrade() else { return Ok(false) };
    {
        let mut c = e.compaction.borrow_mut();
        c.compactions += 1;
        c.bytes_read += input_bytes;
        c.bytes_written += written;
        c.error = None;
        c.running = false;
        c.wanted = true;
        if let Some(n) = manual {
            c.manual_done = c.manual_done.max(n);
        }
    }
    e.wake_compaction_waiters();
    Ok(true)
}

impl Engine {
    /// Spawns the compaction task in its low-share task queue.
    fn start_compaction_task(&self) -> Result<(), ShardError> {
        let task = glommio::spawn_local_into(compaction_loop(self.me.clone()), compaction_queue())
            .map_err(|e| ShardError::Failed { reason: format!("spawn compaction task: {e}") })?;
        *self.compaction_task.borrow_mut() = Some(task);
        Ok(())
    }

    /// Puts the manifest back and wakes whoever waits for it.
    fn put_manifest(&self, manifest: Manifest) {
        *self.manifest.borrow_mut() = Some(manifest);
        self.wake_manifest_waiters();
    }

    fn wake_manifest_waiters(&self) {
        let waiters = std::mem::take(&mut *self.manifest_waiters.borrow_mut());
        waiters.into_iter().for_each(Waker::wake);
    }

    fn wake_compaction_waiters(&self) {
        let waiters = std::mem::take(&mut *self.compaction_waiters.borrow_mut());
        waiters.into_iter().for_each(Waker::wake);
    }

    /// Tells the compaction task that a compaction may be due (when automatic).
    fn want_compaction(&self) {
        if self.opts.compaction.auto {
            self.poke_compaction();
        }
    }

    fn poke_compaction(&self) {
        let waker = {
            let mut c = self.compaction.borrow_mut();
            c.wanted = true;
            c.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The next compaction to run (a pending manual one first), with its inputs resolved;
    /// marks it running. `None` when nothing is due.
    fn next_compaction(&self) -> Option<CompactionJob> {
        let levels = self.levels.borrow();
        let opts = &self.opts.compaction;
        let (manual, plan) = {
            let c = self.compaction.borrow();
            if c.manual_requested > c.manual_done {
                (Some(c.manual_requested), manual_plan(&levels, opts))
            } else if opts.auto {
                (None, pick(&levels, opts))
            } else {
                (None, None)
            }
        };
        let Some(plan) = plan else {
            if let Some(n) = manual {
                // Nothing to merge: the manual request is satisfied.
                let mut c = self.compaction.borrow_mut();
                c.manual_done = c.manual_done.max(n);
            }
            return None;
        };
        let tables = self.tables.borrow();
        let mut inputs = Vec::with_capacity(plan.inputs.len());
        for id in &plan.inputs {
            let Some(t) = tables.iter().find(|t| t.reader.id().0 == id.0) else {
                tracing::error!(table = id.0, "compaction input is not open; skipping the plan");
                return None;
            };
            inputs.push(Rc::clone(&t.reader));
        }
        let input_bytes = inputs.iter().map(|r| r.file_bytes()).sum();
        let output_table_bytes = match opts.style {
            CompactionStyle::Leveled if plan.output_level > 0 => opts.output_table_bytes,
            _ => u64::MAX,
        };
        let spec = MergeSpec {
            dir: self.opts.dir.clone(),
            sstable: self.opts.sstable,
            output_table_bytes,
            ctx: MergeContext {
                now_ms: self.opts.clock.now_ms(),
                gc_grace_ms: opts.gc_grace_ms,
                bottommost: plan.bottommost,
            },
            rate_bytes_per_s: opts.rate_bytes_per_s,
        };
        self.compaction.borrow_mut().running = true;
        tracing::debug!(reason = ?plan.reason, inputs = plan.inputs.len(), "compaction starting");
        Some(CompactionJob {
            plan,
            inputs,
            input_bytes,
            spec,
            cache: Rc::clone(&self.cache),
            manual,
        })
    }

    /// Flushes the memtable now (if it holds anything) and waits until it is in a table.
    pub async fn flush(&self) -> Result<(), ShardError> {
        loop {
            if !self.wal_ready().await? {
                continue;
            }
            if self.immutable.borrow().is_some() {
                if let Some(reason) = self.flush_error.borrow().clone() {
                    return Err(ShardError::Failed { reason: format!("flush failed: {reason}") });
                }
                self.flush_finished().await;
                continue;
            }
            if self.memtable.borrow().is_empty() {
                return Ok(());
            }
            self.freeze().await?;
            // Loop: wait for this flush (the memtable is empty afterwards unless new writes
            // came in, which a later flush covers).
            self.flush_finished().await;
            if let Some(reason) = self.flush_error.borrow().clone() {
                return Err(ShardError::Failed { reason: format!("flush failed: {reason}") });
            }
            return Ok(());
        }
    }

    /// Flushes the memtable, then merges every table into one bottommost sorted run (leveled:
    /// in the deepest level in use, at least 1; size-tiered: one level-0 table), dropping
    /// shadowed versions and tombstones past their grace. Waits until it is committed.
    pub async fn compact(&self) -> Result<(), ShardError> {
        self.flush().await?;
        let n = {
            let mut c = self.compaction.borrow_mut();
            c.manual_requested += 1;
            c.manual_requested
        };
        self.poke_compaction();
        futures_lite::future::poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(Err(ShardError::Closed));
            }
            let c = self.compaction.borrow();
            if c.manual_done >= n {
                return Poll::Ready(Ok(()));
            }
            if let (Some(reason), false) = (&c.error, c.running) {
                return Poll::Ready(Err(ShardError::Failed {
                    reason: format!("compaction failed: {reason}"),
                }));
            }
            self.compaction_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Waits until no compaction is due or running (automatic compaction has caught up), or
    /// the last one failed.
    pub async fn wait_for_compactions(&self) -> Result<(), ShardError> {
        self.poke_compaction();
        futures_lite::future::poll_fn(|cx| {
            if self.closed.get() {
                return Poll::Ready(Err(ShardError::Closed));
            }
            let c = self.compaction.borrow();
            if let (Some(reason), false) = (&c.error, c.running) {
                return Poll::Ready(Err(ShardError::Failed {
                    reason: format!("compaction failed: {reason}"),
                }));
            }
            if !c.running && !c.wanted && c.manual_done >= c.manual_requested {
                return Poll::Ready(Ok(()));
            }
            self.compaction_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Whether writes must wait for compaction (level 0 at its stop trigger, leveled, with
    /// compaction healthy).
    fn writes_stalled(&self) -> bool {
        let opts = &self.opts.compaction;
        if opts.level0_stop_writes_trigger == 0
            || !opts.auto
            || !matches!(opts.style, CompactionStyle::Leveled)
        {
            return false;
        }
        let l0 = self.levels.borrow().first().map_or(0, Vec::len) as u64;
        l0 >= u64::from(opts.level0_stop_writes_trigger) && self.compaction.borrow().error.is_none()
    }

    /// Resolves at the next compaction commit, failure or idle.
    async fn compaction_progress(&self) {
        let mut registered = false;
        futures_lite::future::poll_fn(|cx| {
            if registered || self.closed.get() {
                return Poll::Ready(());
            }
            registered = true;
            self.compaction_waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

/// A manual compaction of every table into one bottommost run (see [`Engine::compact`]).
fn manual_plan(levels: &[Vec<TableMeta>], opts: &CompactionOptions) -> Option<CompactionPlan> {
    let tables: Vec<&TableMeta> = levels.iter().flatten().collect();
    if tables.is_empty() {
        return None;
    }
    let output_level = match opts.style {
        CompactionStyle::SizeTiered(_) => 0,
        CompactionStyle::Leveled => {
            let deepest = levels.iter().rposition(|l| !l.is_empty()).unwrap_or(0) as u8;
            deepest.max(1).min(opts.max_levels.saturating_sub(1))
        }
    };
    Some(CompactionPlan {
        inputs: tables.iter().map(|t| t.id).collect(),
        output_level,
        reason: CompactionReason::Manual { tables: tables.len() as u64 },
        bottommost: true,
    })
}
