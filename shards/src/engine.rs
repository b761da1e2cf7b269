//! [`Engine`]: one shard's storage engine: WAL + memtable (SSTables come later).
//!
//! A write encodes its WAL record, appends it to the current segment's [`LogWriter`]
//! (synchronously, into the group-commit tail), awaits durability per [`SyncMode`], and only
//! then applies it to the memtable and returns. A read looks in the memtable.
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
//! ## Invariants
//! - `!Send`: the engine lives on one glommio executor; state is in `Cell`/`RefCell`, and no
//!   `RefCell` borrow is held across an `.await` (borrows are taken in small blocks or by
//!   cloning the `Rc` of the current writer out).
//! - At most one roll at a time (`rolling`); while it runs, no record is appended anywhere.
//! - After `close`, every operation returns [`ShardError::Closed`]; writes acknowledged before
//!   are durable.
//! - After a WAL failure (write, fdatasync or roll), writes return [`ShardError::Failed`] or the
//!   I/O error: durability can no longer be promised until a restart replays the WAL.

use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::memtable::Memtable;
use crate::options::{ShardOptions, SyncMode};
use crate::types::{Lookup, Stamp};
use crate::wal::record::WalRecord;
use crate::wal::recovery::{self, RecoveryReport};
use crate::wal::{segment_path, WAL_DIR_NAME};
use crate::ShardError;
use kvs_io::{IoError, LogStats, LogWriter, Lsn};
use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// A snapshot of the engine's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Keys in the memtable, tombstones included.
    pub keys: u64,
    /// Tombstones in the memtable.
    pub tombstones: u64,
    /// Estimated memtable memory, in bytes.
    pub memtable_bytes: u64,
    /// The memtable budget from the options, in bytes.
    pub memtable_bytes_max: u64,
    /// Bytes used (headers and records) in the WAL segments on disk.
    pub wal_bytes: u64,
    /// WAL segments on disk.
    pub wal_segments: u64,
    /// The id of the segment being written.
    pub wal_segment_id: u64,
    /// WAL fdatasyncs since open.
    pub syncs: u64,
    /// WAL records written since open.
    pub records_written: u64,
    /// WAL write calls since open.
    pub wal_writes: u64,
    /// Puts acknowledged since open.
    pub puts: u64,
    /// Deletes acknowledged since open.
    pub deletes: u64,
    /// Gets served since open.
    pub gets: u64,
}

/// Counters of writers already closed (rolled), added to the current writer's.
#[derive(Clone, Copy, Debug, Default)]
struct Retired {
    syncs: u64,
    records: u64,
    writes: u64,
    /// Used bytes of segments on disk other than the current one.
    wal_bytes: u64,
    /// Segments on disk other than the current one.
    segments: u64,
}

/// One shard's storage engine. See the module docs.
pub struct Engine {
    opts: ShardOptions,
    wal_dir: PathBuf,
    memtable: RefCell<Memtable>,
    /// The current segment writer; `None` once closed or after a failed roll.
    wal: RefCell<Option<Rc<LogWriter>>>,
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
}

impl Engine {
    /// Opens the shard in `opts.dir` (creating it if missing), replays the WAL, truncates a
    /// torn tail of the newest segment and seals it if a crash left it unsealed, and starts a
    /// fresh segment for new writes.
    pub async fn open(opts: ShardOptions) -> Result<(Rc<Engine>, RecoveryReport), ShardError> {
        opts.validate()?;
        let wal_dir = opts.dir.join(WAL_DIR_NAME);
        kvs_io::create_dir_all(&wal_dir).await.map_err(|e| ShardError::io(&wal_dir, e))?;
        let recovered = recovery::replay(&wal_dir).await?;
        let id = recovered.next_segment_id;
        let path = segment_path(&wal_dir, id);
        let writer = LogWriter::create(&path, id, opts.log_writer_options())
            .await
            .map_err(|e| ShardError::io(&path, e))?;
        let report = recovered.report;
        tracing::info!(
            dir = %opts.dir.display(),
            segments = report.segments,
            records = report.records,
            torn_tail = report.torn_tail.is_some(),
            segment_id = id,
            "shard engine opened"
        );
        let engine = Engine {
            opts,
            wal_dir,
            memtable: RefCell::new(recovered.memtable),
            wal: RefCell::new(Some(Rc::new(writer))),
            next_segment_id: Cell::new(id.saturating_add(1)),
            rolling: Cell::new(false),
            roll_waiters: RefCell::new(Vec::new()),
            closed: Cell::new(false),
            failed: RefCell::new(None),
            retired: Cell::new(Retired {
                wal_bytes: recovered.wal_bytes,
                segments: recovered.segments_kept,
                ..Retired::default()
            }),
            puts: Cell::new(0),
            deletes: Cell::new(0),
            gets: Cell::new(0),
        };
        Ok((Rc::new(engine), report))
    }

    /// Writes `value` under `key` at `stamp`; returns once durable per [`SyncMode`]. A write
    /// older than the stored version is made durable but does not change the stored value.
    pub async fn put(&self, key: &[u8], value: &[u8], stamp: Stamp) -> Result<(), ShardError> {
        check_key(key)?;
        if value.len() as u64 > VALUE_BYTES_MAX {
            return Err(ShardError::ValueTooLarge {
                value_bytes: value.len() as u64,
                value_bytes_max: VALUE_BYTES_MAX,
            });
        }
        let payload = WalRecord::Put { stamp, key, value }.encode();
        self.log(&payload).await?;
        self.memtable.borrow_mut().put(key, value, stamp);
        self.puts.set(self.puts.get() + 1);
        Ok(())
    }

    /// Deletes `key` at `stamp` by writing a tombstone; returns once durable per [`SyncMode`].
    pub async fn delete(&self, key: &[u8], stamp: Stamp) -> Result<(), ShardError> {
        check_key(key)?;
        let payload = WalRecord::Delete { stamp, key }.encode();
        self.log(&payload).await?;
        self.memtable.borrow_mut().delete(key, stamp);
        self.deletes.set(self.deletes.get() + 1);
        Ok(())
    }

    /// Reads `key`. Async because SSTable reads will come later.
    pub async fn get(&self, key: &[u8]) -> Result<Lookup, ShardError> {
        if self.closed.get() {
            return Err(ShardError::Closed);
        }
        check_key(key)?;
        self.gets.set(self.gets.get() + 1);
        Ok(self.memtable.borrow().lookup(key))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EngineStats {
        let memtable = self.memtable.borrow();
        let retired = self.retired.get();
        let current = self.wal.borrow().as_ref().map(|w| (w.segment_id(), w.stats()));
        let (segment_id, log) = current.unwrap_or((0, LogStats::default()));
        let current_segments = u64::from(segment_id != 0);
        EngineStats {
            keys: memtable.len() as u64,
            tombstones: memtable.tombstones(),
            memtable_bytes: memtable.approx_bytes(),
            memtable_bytes_max: self.opts.memtable_bytes_max,
            wal_bytes: retired.wal_bytes + log.appended_lsn,
            wal_segments: retired.segments + current_segments,
            wal_segment_id: segment_id,
            syncs: retired.syncs + log.syncs,
            records_written: retired.records + log.records_appended,
            wal_writes: retired.writes + log.writes,
            puts: self.puts.get(),
            deletes: self.deletes.get(),
            gets: self.gets.get(),
        }
    }

    /// The options the engine was opened with.
    pub fn options(&self) -> &ShardOptions {
        &self.opts
    }

    /// Writes and fdatasyncs everything appended, closes the WAL; later calls return
    /// [`ShardError::Closed`]. Writes in flight when `close` is called complete normally.
    /// Idempotent.
    pub async fn close(&self) -> Result<(), ShardError> {
        if self.closed.replace(true) {
            return Ok(());
        }
        self.roll_finished().await;
        let writer = self.wal.borrow_mut().take();
        if let Some(writer) = writer {
            let result = writer.close().await;
            self.retire(&writer);
            result.map_err(|e| ShardError::io(writer.path(), e))?;
        }
        tracing::info!(dir = %self.opts.dir.display(), "shard engine closed");
        Ok(())
    }

    /// Appends `payload` to the WAL and waits until it is durable per the sync mode.
    async fn log(&self, payload: &[u8]) -> Result<(), ShardError> {
        let (writer, lsn) = self.append(payload).await?;
        writer.durable(lsn).await.map_err(|e| ShardError::io(writer.path(), e))
    }

    /// Appends `payload` to the current segment, rolling to a new one when it is full.
    async fn append(&self, payload: &[u8]) -> Result<(Rc<LogWriter>, Lsn), ShardError> {
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
            let writer = self.wal.borrow().clone().ok_or(ShardError::Closed)?;
            match writer.append(payload) {
                Ok(lsn) => return Ok((writer, lsn)),
                Err(IoError::SegmentFull { .. }) => self.roll(writer).await?,
                Err(IoError::Overloaded { pending_bytes, pending_bytes_max }) => {
                    return Err(ShardError::Overloaded { pending_bytes, pending_bytes_max })
                }
                Err(e) => return Err(ShardError::io(writer.path(), e)),
            }
        }
    }

    /// Closes the full segment and starts the next. Runs with `rolling` set.
    async fn roll(&self, full: Rc<LogWriter>) -> Result<(), ShardError> {
        debug_assert!(!self.rolling.get());
        self.rolling.set(true);
        let result = self.roll_inner(&full).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "WAL segment roll failed");
            self.failed.borrow_mut().get_or_insert_with(|| e.to_string());
            self.wal.borrow_mut().take();
        }
        self.rolling.set(false);
        let waiters = std::mem::take(&mut *self.roll_waiters.borrow_mut());
        waiters.into_iter().for_each(Waker::wake);
        result
    }

    async fn roll_inner(&self, full: &Rc<LogWriter>) -> Result<(), ShardError> {
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
        Ok(())
    }

    /// Moves a closed writer's counters into the retired totals.
    fn retire(&self, writer: &LogWriter) {
        let s = writer.stats();
        let mut r = self.retired.get();
        r.syncs += s.syncs;
        r.records += s.records_appended;
        r.writes += s.writes;
        r.wal_bytes += s.appended_lsn;
        r.segments += 1;
        self.retired.set(r);
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

    /// Whether writes are acknowledged before fdatasync.
    pub fn sync_mode(&self) -> SyncMode {
        self.opts.sync
    }
}

fn check_key(key: &[u8]) -> Result<(), ShardError> {
    if key.len() as u64 > KEY_BYTES_MAX {
        return Err(ShardError::KeyTooLarge {
            key_bytes: key.len() as u64,
            key_bytes_max: KEY_BYTES_MAX,
        });
    }
    Ok(())
}
