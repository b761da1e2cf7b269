//! The durable side of hinted handoff: per target node, an append-only sequence of checksummed
//! log segments (kvs-io [`LogWriter`], fdatasync'd before a hint counts as stored), replayed
//! oldest first and removed segment by segment once the target has every hint in it. The
//! decisions (window, cap, age, pacing) are [`crate::cluster::hints`]; this only carries them
//! out. Runs on the cluster core's executor.
//!
//! # Layout
//! `DIR/<target node id, 16 hex digits>/<segment id, 20 digits>.hint`, each file a kvs-io log
//! segment whose records are [`Hint`] payloads. Segment ids are unique across targets and only
//! grow (the next id is one past the greatest found at open). A segment is written by one
//! writer only, never reopened for appends: after a restart new hints go to new segments, so a
//! torn tail (a crash while appending) only ever ends the newest segment of a target; the
//! reader stops there and the hints before it are kept.
//!
//! # Replay
//! [`HintLog::replay`] first closes the target's open segment (new hints then start a new one,
//! which the next replay covers), then for each segment: drops it whole if all of it is past
//! the hint age; otherwise sends each hint still young enough, paced by a [`TokenBucket`], and
//! removes the segment once every send succeeded. A failed send stops the replay and keeps the
//! segment; the next replay sends it again from its start, which is harmless (a replica keeps
//! the newer version by stamp).
//!
//! # Damage
//! A segment whose bytes are bad (a damaged header or record frame) is renamed to `<name>.hint.bad`, logged as an error and
//! forgotten, at open or during a replay, and the log goes on with the others: one damaged file
//! costs the hints in it (read repair and later writes catch those keys up), never hinted
//! handoff as a whole. A torn tail is not damage (see Layout), nor is an error of the system
//! (no file descriptors, a failing disk): the segment stays and the next replay tries again.

use std::cell::{Cell, Ref, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use kvs_io::{IoError, LogEnd, LogReader, LogWriter, LogWriterOptions, ReadOutcome};

use crate::cluster::hints::{
    Hint, HintCounters, HintLedger, HintOptions, HintRefusal, SegmentInfo, TokenBucket,
};

/// File name suffix of a hint segment.
pub const HINT_SEGMENT_SUFFIX: &str = ".hint";

/// Settings of a [`HintLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintLogOptions {
    /// The hints directory (`DATA/hints`).
    pub dir: PathBuf,
    /// Size of one segment, bytes (a multiple of 4096). Default 16 MiB.
    pub segment_bytes: u64,
    pub hints: HintOptions,
}

impl HintLogOptions {
    pub fn new(dir: impl Into<PathBuf>) -> HintLogOptions {
        HintLogOptions { dir: dir.into(), segment_bytes: 16 << 20, hints: HintOptions::default() }
    }
}

/// A hint log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HintLogError {
    #[error("hint log I/O: {0}")]
    Io(#[from] IoError),
    #[error("hint log: {reason}")]
    Invalid { reason: String },
    #[error("hint of {bytes} bytes is larger than a hint segment can hold ({max})")]
    TooLarge { bytes: u64, max: u64 },
}

/// What [`HintLog::store`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Durable in the log.
    Kept,
    /// Not stored (counted): repair has to catch the target up.
    Refused(HintRefusal),
}

/// What [`HintLog::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HintLogReport {
    pub targets: u64,
    pub segments: u64,
    pub hints: u64,
    /// Segments whose end was torn (a crash while appending); their hints before the tear
    /// are kept.
    pub torn_segments: u64,
    /// Records that passed their checksum but did not decode (skipped, logged).
    pub undecodable: u64,
    /// Segments whose bytes are bad (a damaged header or record frame): renamed to
    /// `*.hint.bad`, logged, and left out, so one damaged file does not stop hinted handoff.
    pub quarantined: u64,
}

/// What one [`HintLog::replay`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub sent: u64,
    pub sent_bytes: u64,
    /// Hints dropped for age (not sent).
    pub expired: u64,
    pub segments_removed: u64,
    /// Sum of the pauses the pacing asked for, ms.
    pub paced_ms: u64,
    /// Why the replay stopped early, if it did (the failed send's error).
    pub stopped: Option<String>,
    /// Segments that could not be read (renamed to `*.hint.bad`, see [`HintLogReport`]);
    /// the hints of theirs sent before the damage are counted in `sent`.
    pub quarantined: u64,
}

/// The hint log of one node. `!Send`: lives on the cluster core.
pub struct HintLog {
    opts: HintLogOptions,
    ledger: RefCell<HintLedger>,
    /// The open segment per target.
    writers: RefCell<BTreeMap<u64, Rc<LogWriter>>>,
    next_segment: Cell<u64>,
    /// Serializes segment creation (it awaits between reading and changing `writers`).
    gate: glommio::sync::Semaphore,
    /// Targets being replayed now.
    replaying: RefCell<BTreeSet<u64>>,
}

impl HintLog {
    /// Opens (creating if missing) the hint log in `opts.dir` and reads every segment to
    /// rebuild the ledger.
    pub async fn open(opts: HintLogOptions) -> Result<(HintLog, HintLogReport), HintLogError> {
        opts.hints.validate().map_err(|e| HintLogError::Invalid { reason: e.to_string() })?;
        let writer_opts = writer_options(opts.segment_bytes);
        writer_opts.validate()?;
        kvs_io::create_dir_all(&opts.dir).await?;
        let mut ledger = HintLedger::new(opts.hints);
        let mut report = HintLogReport::default();
        let mut next_segment = 1u64;
        for target_dir in kvs_io::list_dir(&opts.dir).await? {
            let Some(target) = parse_target_dir(&target_dir) else {
                tracing::warn!(path = %target_dir.display(), "ignoring a stray entry in the hints directory");
                continue;
            };
            let mut found = false;
            for path in kvs_io::list_dir(&target_dir).await? {
                let Some(segment) = parse_segment_name(&path) else { continue };
                next_segment = next_segment.max(segment.saturating_add(1));
                let (info, torn, undecodable) = match scan_segment(&path, segment).await {
                    Ok(scanned) => scanned,
                    Err(HintLogError::Io(e)) if is_damage(&e) => {
                        quarantine(&path, &e).await?;
                        report.quarantined += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                report.segments += 1;
                report.hints += info.hints;
                report.torn_segments += u64::from(torn);
                report.undecodable += undecodable;
                ledger.on_recovered(target, segment, info);
                found = true;
            }
            report.targets += u64::from(found);
        }
        if report.segments > 0 {
            tracing::info!(
                targets = report.targets,
                segments = report.segments,
                hints = report.hints,
                torn = report.torn_segments,
                quarantined = report.quarantined,
                "hint log opened"
            );
        }
        let log = HintLog {
            opts,
            ledger: RefCell::new(ledger),
            writers: RefCell::new(BTreeMap::new()),
            next_segment: Cell::new(next_segment),
            gate: glommio::sync::Semaphore::new(1),
            replaying: RefCell::new(BTreeSet::new()),
        };
        Ok((log, report))
    }

    /// Stores `hint` for `target` (down since `down_since_ms` by the failure detector, if it
    /// is known down) at `now_ms` (wall clock), durably, unless the ledger refuses it.
    pub async fn store(
        &self,
        target: u64,
        down_since_ms: Option<u64>,
        hint: &Hint,
        now_ms: u64,
    ) -> Result<Stored, HintLogError> {
        let mut payload = Vec::with_capacity(hint.encoded_bytes());
        hint.encode(&mut payload);
        let bytes = payload.len() as u64;
        let max = self.opts.segment_bytes / 2;
        if bytes > max {
            return Err(HintLogError::TooLarge { bytes, max });
        }
        let admitted = self.ledger.borrow().admit(down_since_ms, now_ms, bytes);
        if let Err(why) = admitted {
            self.ledger.borrow_mut().on_refused(why);
            return Ok(Stored::Refused(why));
        }
        loop {
            let writer = self.writer_for(target).await?;
            match writer.append(&payload) {
                Ok(lsn) => {
                    // Counted at once, before the await: a replay that starts meanwhile closes
                    // this segment (which makes the record durable first) and must see it.
                    let segment = writer.segment_id();
                    self.ledger.borrow_mut().on_stored(target, segment, bytes, now_ms);
                    if let Err(e) = writer.durable(lsn).await {
                        self.ledger.borrow_mut().on_store_failed(target, segment, bytes);
                        return Err(e.into());
                    }
                    return Ok(Stored::Kept);
                }
                Err(IoError::SegmentFull { .. }) => self.seal(target, &writer).await?,
                // A replay closed the segment: the next one takes the hint.
                Err(IoError::Closed { .. }) => self.seal(target, &writer).await?,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends every hint for `target` through `send`, oldest first, paced; removes each segment
    /// once all of its hints were sent (or dropped for age). `now_ms` reads the wall clock.
    pub async fn replay<F, Fut>(
        &self,
        target: u64,
        now_ms: impl Fn() -> u64,
        mut send: F,
    ) -> Result<ReplayReport, HintLogError>
    where
        F: FnMut(Hint) -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut report = ReplayReport::default();
        // One replay per target at a time; other targets' replays and every store go on.
        let Some(_replaying) = ReplayGuard::enter(&self.replaying, target) else {
            report.stopped = Some("a replay of this target is already running".into());
            return Ok(report);
        };
        // Take the open segment out and list the segments to replay in one synchronous step:
        // a store after it starts a new segment, which the next replay covers. Closing makes
        // every record appended to it durable, and the ledger counted each at its append.
        let open = self.writers.borrow_mut().remove(&target);
        let segments = self.ledger.borrow().replay_order(target);
        if let Some(writer) = open {
            writer.close().await?;
        }
        let mut bucket = TokenBucket::new(self.opts.hints.replay_bytes_per_s, now_ms());
        for segment in segments {
            let path = segment_path(&self.opts.dir, target, segment);
            if self.ledger.borrow().is_expired(target, segment, now_ms()) {
                let hints = self.ledger.borrow().info(target, segment).map_or(0, |i| i.hints);
                self.remove_segment(target, segment, &path, 0, hints).await?;
                report.expired += hints;
                report.segments_removed += 1;
                continue;
            }
            let mut reader = match LogReader::open(&path, Some(segment)).await {
                Ok(r) => r,
                Err(e) if is_damage(&e) => {
                    self.quarantine_segment(target, segment, &path, 0, 0, &e.into()).await?;
                    report.quarantined += 1;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let (mut sent, mut expired) = (0u64, 0u64);
            let mut damaged: Option<HintLogError> = None;
            loop {
                let record = match reader.next().await {
                    Ok(ReadOutcome::Record(r)) => r,
                    Ok(ReadOutcome::End(_)) => break,
                    // Unreadable from here on: what was sent is counted, the rest is lost.
                    Err(e) if is_damage(&e) => {
                        damaged = Some(e.into());
                        break;
                    }
                    // An error of the system (no file descriptors, an I/O error): the segment
                    // stays for the next replay.
                    Err(e) => {
                        let _ = reader.close().await;
                        report.sent += sent;
                        report.expired += expired;
                        report.stopped = Some(format!("reading {}: {e}", path.display()));
                        return Ok(report);
                    }
                };
                let hint = match Hint::decode(&record.payload) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), offset = record.offset, error = %e,
                            "skipping an undecodable hint");
                        continue;
                    }
                };
                if self.ledger.borrow().hint_expired(hint.hinted_at_ms, now_ms()) {
                    expired += 1;
                    continue;
                }
                let bytes = record.payload.len() as u64;
                let wait_ms = bucket.take(bytes, now_ms());
                if wait_ms > 0 {
                    report.paced_ms += wait_ms;
                    glommio::timer::sleep(Duration::from_millis(wait_ms)).await;
                }
                if let Err(reason) = send(hint).await {
                    let _ = reader.close().await;
                    report.sent += sent;
                    report.expired += expired;
                    report.stopped = Some(reason);
                    return Ok(report);
                }
                sent += 1;
                report.sent_bytes += bytes;
            }
            let _ = reader.close().await;
            report.sent += sent;
            report.expired += expired;
            match damaged {
                Some(e) => {
                    self.quarantine_segment(target, segment, &path, sent, expired, &e).await?;
                    report.quarantined += 1;
                }
                None => {
                    self.remove_segment(target, segment, &path, sent, expired).await?;
                    report.segments_removed += 1;
                }
            }
        }
        Ok(report)
    }

    /// Closes every open segment (their hints stay for the next open).
    pub async fn close(&self) -> Result<(), HintLogError> {
        let writers = std::mem::take(&mut *self.writers.borrow_mut());
        for writer in writers.into_values() {
            writer.close().await?;
        }
        Ok(())
    }

    pub fn ledger(&self) -> Ref<'_, HintLedger> {
        self.ledger.borrow()
    }

    pub fn counters(&self) -> HintCounters {
        self.ledger.borrow().counters()
    }

    /// The open writer for `target`, creating a segment if there is none.
    async fn writer_for(&self, target: u64) -> Result<Rc<LogWriter>, HintLogError> {
        if let Some(w) = self.writers.borrow().get(&target) {
            return Ok(Rc::clone(w));
        }
        let _permit = self.gate.acquire_permit(1).await.map_err(closed)?;
        // Another task may have created it while this one waited.
        if let Some(w) = self.writers.borrow().get(&target) {
            return Ok(Rc::clone(w));
        }
        let dir = target_dir(&self.opts.dir, target);
        kvs_io::create_dir_all(&dir).await?;
        let segment = self.next_segment.get();
        self.next_segment.set(segment.saturating_add(1));
        let path = segment_path(&self.opts.dir, target, segment);
        // LogWriter::create syncs the directory, so the segment's name is durable.
        let writer = Rc::new(
            LogWriter::create(&path, segment, writer_options(self.opts.segment_bytes)).await?,
        );
        self.writers.borrow_mut().insert(target, Rc::clone(&writer));
        Ok(writer)
    }

    /// Closes `full` (the target's open segment, if still it) so the next store starts a new
    /// one.
    async fn seal(&self, target: u64, full: &Rc<LogWriter>) -> Result<(), HintLogError> {
        let current = self.writers.borrow().get(&target).cloned();
        if current.is_some_and(|c| Rc::ptr_eq(&c, full)) {
            self.writers.borrow_mut().remove(&target);
            full.close().await?;
        }
        Ok(())
    }

    async fn remove_segment(
        &self,
        target: u64,
        segment: u64,
        path: &Path,
        replayed: u64,
        expired: u64,
    ) -> Result<(), HintLogError> {
        kvs_io::remove_file(path).await?;
        // IMPORTANT: the removal is durable only once the directory is fsync'd; until then a
        // crash brings the segment back and it is replayed again (harmless).
        kvs_io::sync_dir(target_dir(&self.opts.dir, target)).await?;
        self.ledger.borrow_mut().on_segment_removed(target, segment, replayed, expired);
        Ok(())
    }
}

impl HintLog {
    /// Takes an unreadable segment out of the log: renamed aside (see [`quarantine`]) and
    /// forgotten by the ledger, with what was replayed from it before the damage.
    async fn quarantine_segment(
        &self,
        target: u64,
        segment: u64,
        path: &Path,
        replayed: u64,
        expired: u64,
        why: &HintLogError,
    ) -> Result<(), HintLogError> {
        quarantine(path, why).await?;
        kvs_io::sync_dir(target_dir(&self.opts.dir, target)).await?;
        self.ledger.borrow_mut().on_segment_removed(target, segment, replayed, expired);
        Ok(())
    }
}

/// Whether `e` says the segment's bytes are bad (set it aside) rather than that the system
/// failed to read them (keep it and try again later).
fn is_damage(e: &IoError) -> bool {
    matches!(e, IoError::SegmentHeader { .. } | IoError::RecordSize { .. })
}

/// Renames an unreadable segment to `<name>.bad` beside it (kept for inspection, never read
/// again: its name no longer parses as a segment) and logs why.
async fn quarantine(path: &Path, why: &dyn std::fmt::Display) -> Result<(), HintLogError> {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let bad = PathBuf::from(bad);
    tracing::error!(path = %path.display(), renamed = %bad.display(), error = %why,
        "unreadable hint segment set aside; its hints are not replayed");
    std::fs::rename(path, &bad).map_err(|e| {
        HintLogError::Io(IoError::Os {
            op: "rename hint segment",
            path: path.to_path_buf(),
            source: e,
        })
    })?;
    Ok(())
}

/// Marks a target as being replayed until dropped (also when the replay is cancelled).
struct ReplayGuard<'a> {
    set: &'a RefCell<BTreeSet<u64>>,
    target: u64,
}

impl<'a> ReplayGuard<'a> {
    fn enter(set: &'a RefCell<BTreeSet<u64>>, target: u64) -> Option<ReplayGuard<'a>> {
        let entered = set.borrow_mut().insert(target);
        // (Built only when entered: a guard dropped here would unmark the running replay.)
        entered.then(|| ReplayGuard { set, target })
    }
}

impl Drop for ReplayGuard<'_> {
    fn drop(&mut self) {
        self.set.borrow_mut().remove(&self.target);
    }
}

fn closed<T>(e: glommio::GlommioError<T>) -> HintLogError {
    HintLogError::Invalid { reason: format!("hint log closed: {e}") }
}

fn writer_options(segment_bytes: u64) -> LogWriterOptions {
    LogWriterOptions { capacity_bytes: segment_bytes, ..LogWriterOptions::default() }
}

fn target_dir(dir: &Path, target: u64) -> PathBuf {
    dir.join(format!("{target:016x}"))
}

fn segment_path(dir: &Path, target: u64, segment: u64) -> PathBuf {
    target_dir(dir, target).join(format!("{segment:020}{HINT_SEGMENT_SUFFIX}"))
}

fn parse_target_dir(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    (name.len() == 16).then(|| u64::from_str_radix(name, 16).ok()).flatten()
}

fn parse_segment_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?.strip_suffix(HINT_SEGMENT_SUFFIX)?;
    (name.len() == 20).then(|| name.parse().ok()).flatten()
}

/// Reads a segment through: its ledger entry, whether its end was torn, and how many records
/// did not decode.
async fn scan_segment(path: &Path, segment: u64) -> Result<(SegmentInfo, bool, u64), HintLogError> {
    let mut reader = LogReader::open(path, Some(segment)).await?;
    let mut info = SegmentInfo::default();
    let mut undecodable = 0;
    let torn = loop {
        match reader.next().await? {
            ReadOutcome::Record(r) => match Hint::decode(&r.payload) {
                Ok(h) => {
                    info.bytes += r.payload.len() as u64;
                    info.hints += 1;
                    info.newest_ms = info.newest_ms.max(h.hinted_at_ms);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), offset = r.offset, error = %e,
                        "undecodable hint record");
                    undecodable += 1;
                }
            },
            ReadOutcome::End(end) => {
                let torn = matches!(end, LogEnd::Torn { .. });
                if torn {
                    tracing::warn!(path = %path.display(), end = ?end,
                        "hint segment ends torn (a crash while appending); keeping the hints before it");
                }
                break torn;
            }
        }
    };
    reader.close().await?;
    Ok((info, torn, undecodable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F, Fut, T>(f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        glommio::LocalExecutorBuilder::default().spawn(f).unwrap().join().unwrap()
    }

    fn hint(i: u64, at_ms: u64) -> Hint {
        Hint {
            key: format!("key-{i:05}").into_bytes(),
            value: (!i.is_multiple_of(5)).then(|| vec![i as u8; 200]),
            stamp_hlc: 1000 + i,
            stamp_node: 9,
            hinted_at_ms: at_ms,
            expires_at_ms: 0,
        }
    }

    fn opts(dir: &Path) -> HintLogOptions {
        HintLogOptions { segment_bytes: 16 * 1024, ..HintLogOptions::new(dir.join("hints")) }
    }

    fn files(dir: &Path, target: u64) -> usize {
        std::fs::read_dir(target_dir(&dir.join("hints"), target)).map_or(0, |d| d.count())
    }

    #[test]
    fn hints_survive_a_restart_and_replay_in_order_then_their_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let (log, _) = HintLog::open(opts(&path)).await.unwrap();
            for i in 0..300u64 {
                let target = if i.is_multiple_of(3) { 0xB } else { 0xA };
                assert_eq!(
                    log.store(target, Some(0), &hint(i, 10), 10).await.unwrap(),
                    Stored::Kept
                );
            }
            log.close().await.unwrap();
            assert!(files(&path, 0xA) > 2, "200 hints of ~240 bytes roll 16 KiB segments");

            let (log, report) = HintLog::open(opts(&path)).await.unwrap();
            assert_eq!(report.hints, 300);
            assert_eq!(report.targets, 2);
            assert_eq!(log.ledger().hints_for(0xA), 200);
            let got = RefCell::new(Vec::new());
            let r = log
                .replay(
                    0xA,
                    || 20,
                    |h| {
                        got.borrow_mut().push(h);
                        async { Ok(()) }
                    },
                )
                .await
                .unwrap();
            let want: Vec<Hint> =
                (0..300u64).filter(|i| !i.is_multiple_of(3)).map(|i| hint(i, 10)).collect();
            assert_eq!(*got.borrow(), want, "every hint, oldest first");
            assert_eq!((r.sent, r.expired, r.stopped), (200, 0, None));
            assert_eq!(files(&path, 0xA), 0, "replayed segments are removed");
            assert_eq!(log.ledger().hints_for(0xB), 100, "other targets untouched");
            assert_eq!(log.ledger().hints_for(0xA), 0);
            log.close().await.unwrap();
        });
    }

    #[test]
    fn a_failed_send_keeps_the_rest_for_the_next_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let (log, _) = HintLog::open(opts(&path)).await.unwrap();
            for i in 0..200 {
                log.store(7, None, &hint(i, 10), 10).await.unwrap();
            }
            let delivered = RefCell::new(std::collections::BTreeSet::new());
            let r = log
                .replay(
                    7,
                    || 20,
                    |h| {
                        let ok = delivered.borrow().len() < 120;
                        if ok {
                            delivered.borrow_mut().insert(h.key);
                        }
                        async move {
                            if ok {
                                Ok(())
                            } else {
                                Err("peer timed out".to_string())
                            }
                        }
                    },
                )
                .await
                .unwrap();
            assert_eq!(r.stopped.as_deref(), Some("peer timed out"));
            assert!(log.ledger().hints_for(7) > 0 && log.ledger().hints_for(7) < 200);
            // New hints while the target flaps go to a new segment, replayed next time.
            log.store(7, None, &hint(500, 11), 11).await.unwrap();
            let r = log
                .replay(
                    7,
                    || 20,
                    |h| {
                        delivered.borrow_mut().insert(h.key);
                        async { Ok(()) }
                    },
                )
                .await
                .unwrap();
            assert_eq!(r.stopped, None);
            assert_eq!(delivered.borrow().len(), 201, "every hint delivered at least once");
            assert_eq!(log.ledger().total_bytes(), 0);
            assert_eq!(files(&path, 7), 0);
        });
    }

    #[test]
    fn stores_during_a_replay_are_kept_for_the_next_and_other_targets_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let (log, _) = HintLog::open(opts(&path)).await.unwrap();
            let log = Rc::new(log);
            for i in 0..30 {
                log.store(7, None, &hint(i, 10), 10).await.unwrap();
            }
            let sent = Rc::new(RefCell::new(Vec::new()));
            let replay = {
                let (log, sent) = (log.clone(), sent.clone());
                glommio::spawn_local(async move {
                    log.replay(
                        7,
                        || 20,
                        |h| {
                            sent.borrow_mut().push(h.key);
                            // A slow peer: the replay yields between hints.
                            async {
                                glommio::timer::sleep(Duration::from_millis(2)).await;
                                Ok(())
                            }
                        },
                    )
                    .await
                    .unwrap()
                })
            };
            // While it runs: a second replay of the same target declines, stores for it and
            // for another target go through.
            glommio::timer::sleep(Duration::from_millis(5)).await;
            let second = log.replay(7, || 20, |_| async { Ok(()) }).await.unwrap();
            assert!(second.stopped.is_some_and(|s| s.contains("already running")));
            for i in 100..120 {
                assert_eq!(log.store(7, None, &hint(i, 11), 11).await.unwrap(), Stored::Kept);
                assert_eq!(log.store(8, None, &hint(i, 11), 11).await.unwrap(), Stored::Kept);
            }
            let first = replay.await;
            assert_eq!(first.stopped, None);
            assert_eq!(first.sent, 30, "the replay covers what was stored before it");
            assert_eq!(log.ledger().hints_for(7), 20, "hints stored meanwhile are kept");
            assert_eq!(log.ledger().hints_for(8), 20);
            let again = log.replay(7, || 20, |_| async { Ok(()) }).await.unwrap();
            assert_eq!(again.sent, 20);
            assert_eq!(log.ledger().hints_for(7), 0);
        });
    }

    #[test]
    fn refusals_and_age_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let hints = HintOptions { bytes_max: 2000, ..HintOptions::default() };
            let (log, _) = HintLog::open(HintLogOptions { hints, ..opts(&path) }).await.unwrap();
            const H: u64 = 3600 * 1000;
            // Down for 4 h: past the 3 h window.
            assert!(matches!(
                log.store(1, Some(0), &hint(1, 4 * H), 4 * H).await.unwrap(),
                Stored::Refused(HintRefusal::WindowPassed { .. })
            ));
            let mut kept = 0;
            for i in 0..20 {
                if log.store(1, None, &hint(i, 0), 0).await.unwrap() == Stored::Kept {
                    kept += 1;
                }
            }
            assert!(kept > 0 && kept < 20, "the 2000-byte cap stops storing: kept {kept}");
            let c = log.counters();
            assert_eq!((c.refused_window, c.refused_full, c.stored), (1, 20 - kept, kept));
            // 73 h later every hint is past its 72 h age: dropped, not sent.
            let r = log
                .replay(1, || 73 * H, |_| async { Err::<(), _>("must not send".to_string()) })
                .await
                .unwrap();
            assert_eq!((r.sent, r.expired, r.stopped), (0, kept, None));
            assert_eq!(files(&path, 1), 0);
        });
    }

    #[test]
    fn replay_is_paced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let hints = HintOptions { replay_bytes_per_s: 20_000, ..HintOptions::default() };
            let (log, _) = HintLog::open(HintLogOptions { hints, ..opts(&path) }).await.unwrap();
            for i in 0..200 {
                log.store(3, None, &hint(i, 0), 0).await.unwrap();
            }
            let bytes = log.ledger().total_bytes();
            let start = std::time::Instant::now();
            let now = move || start.elapsed().as_millis() as u64;
            let r = log.replay(3, now, |_| async { Ok(()) }).await.unwrap();
            assert_eq!(r.sent, 200);
            assert!(r.paced_ms > 0, "the bucket asked for pauses");
            // A bucket of 20 KB/s with a 1 s burst can have sent at most 20 KB + 20 KB/s x t
            // by time t, however slow or fast the machine: a lower bound, so noise cannot
            // fail it; only broken pacing can.
            let floor_ms = (bytes - 20_000) * 1000 / 20_000;
            let took_ms = start.elapsed().as_millis() as u64;
            assert!(took_ms + 5 >= floor_ms, "{bytes} bytes in {took_ms} ms");
        });
    }

    #[test]
    fn a_torn_tail_keeps_the_hints_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let seg = run(move || async move {
            let (log, _) = HintLog::open(opts(&path)).await.unwrap();
            for i in 0..10 {
                log.store(5, None, &hint(i, 0), 0).await.unwrap();
            }
            let seg = log.ledger().replay_order(5)[0];
            // A crash: dropped without close.
            drop(log);
            seg
        });
        let file = segment_path(&dir.path().join("hints"), 5, seg);
        // Garble the last record's bytes (the 10th hint sits near the end of the data).
        let mut bytes = std::fs::read(&file).unwrap();
        let end = bytes.iter().rposition(|b| *b != 0).unwrap();
        bytes[end] ^= 0xff;
        std::fs::write(&file, &bytes).unwrap();
        let path = dir.path().to_path_buf();
        run(move || async move {
            let (log, report) = HintLog::open(opts(&path)).await.unwrap();
            assert_eq!(report.torn_segments, 1);
            assert_eq!(report.hints, 9);
            let got = RefCell::new(0);
            log.replay(
                5,
                || 1,
                |_| {
                    *got.borrow_mut() += 1;
                    async { Ok(()) }
                },
            )
            .await
            .unwrap();
            assert_eq!(*got.borrow(), 9);
        });
    }

    #[test]
    fn an_unreadable_segment_is_set_aside_and_the_others_replay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let (first, second) = run(move || async move {
            let (log, _) = HintLog::open(opts(&path)).await.unwrap();
            for i in 0..5 {
                log.store(5, None, &hint(i, 0), 0).await.unwrap();
            }
            // A replay whose first send fails closes the open segment and keeps it.
            let r = log.replay(5, || 1, |_| async { Err("down".to_string()) }).await.unwrap();
            assert_eq!(r.stopped.as_deref(), Some("down"));
            for i in 5..8 {
                log.store(5, None, &hint(i, 0), 0).await.unwrap();
            }
            let order = log.ledger().replay_order(5);
            assert_eq!(order.len(), 2);
            log.close().await.unwrap();
            (order[0], order[1])
        });
        let hints = dir.path().join("hints");
        let damage = |seg: u64| {
            let file = segment_path(&hints, 5, seg);
            let mut bytes = std::fs::read(&file).unwrap();
            bytes[0] ^= 0xff; // the segment header
            std::fs::write(&file, &bytes).unwrap();
        };
        // Damaged while the node is down: open sets it aside and keeps the other.
        damage(first);
        let path = dir.path().to_path_buf();
        run(move || async move {
            let (log, report) = HintLog::open(opts(&path)).await.unwrap();
            assert_eq!((report.quarantined, report.segments, report.hints), (1, 1, 3));
            let got = RefCell::new(0);
            let r = log
                .replay(
                    5,
                    || 1,
                    |_| {
                        *got.borrow_mut() += 1;
                        async { Ok(()) }
                    },
                )
                .await
                .unwrap();
            assert_eq!((*got.borrow(), r.segments_removed), (3, 1));
        });
        assert!(segment_path(&hints, 5, first).with_extension("hint.bad").exists());
        assert!(!segment_path(&hints, 5, second).exists(), "replayed and removed");

        // Damaged while the node runs: the replay sets it aside and goes on to the next.
        let path = dir.path().to_path_buf();
        let hints2 = hints.clone();
        run(move || async move {
            let (log, _) = HintLog::open(opts(&path)).await.unwrap();
            for i in 0..4 {
                log.store(6, None, &hint(i, 0), 0).await.unwrap();
            }
            let _ = log.replay(6, || 1, |_| async { Err("down".to_string()) }).await.unwrap();
            for i in 4..6 {
                log.store(6, None, &hint(i, 0), 0).await.unwrap();
            }
            let order = log.ledger().replay_order(6);
            let file = segment_path(&hints2, 6, order[0]);
            let mut bytes = std::fs::read(&file).unwrap();
            bytes[0] ^= 0xff;
            std::fs::write(&file, &bytes).unwrap();
            let got = RefCell::new(0);
            let r = log
                .replay(
                    6,
                    || 1,
                    |_| {
                        *got.borrow_mut() += 1;
                        async { Ok(()) }
                    },
                )
                .await
                .unwrap();
            assert_eq!((r.quarantined, *got.borrow()), (1, 2));
            assert!(log.ledger().replay_order(6).is_empty(), "the ledger forgot both");
        });
    }
}
