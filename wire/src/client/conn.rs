//! One pipelined TCP connection to one (node, shard) port.
//!
//! A [`Conn`] owns two glommio tasks around one socket:
//!
//! - the writer task sleeps until requests have appended frames to the shared output buffer,
//!   swaps that buffer with its own empty one (so everything queued since its last write goes
//!   out in one `write_all`), writes it, and sleeps again;
//! - the reader task reads into a buffer, cuts frames with [`FrameHeader::decode`]
//!   (`Incomplete` means read more), copies each body into an [`AlignedVec`] and completes the
//!   pending request with the same request id. Responses may come in any order.
//!
//! A request takes a permit of a semaphore sized `inflight_max_per_connection` before it
//! registers, so the pending map holds at most that many requests; more requests wait for a
//! permit (their attempt's timeout still runs).
//!
//! The output buffer is bounded by bytes, not by requests: a request whose frame was handed over
//! but not yet written stops counting against the permits once it times out, yet its bytes stay
//! queued. A request may append its frame only while the bytes not yet written (the output
//! buffer plus the rest of the writer's current batch) are below [`OUT_BYTES_MAX`]; otherwise it
//! waits, within its attempt's timeout, until the writer makes room. So at most
//! `OUT_BYTES_MAX` plus one frame is ever buffered, however long the server stops reading.
//!
//! When either task fails (I/O error, end of stream, a frame that is not a valid response) the
//! connection becomes dead: every pending request fails with the reason, waiting requests get
//! the same error, and the client replaces the connection on its next use. Dropping a [`Conn`]
//! fails its pending requests and cancels both tasks, which closes the socket.
//!
//! A server that stops without closing the socket (SIGSTOP, partition, power loss) produces no
//! error: reads and writes just wait. So when an attempt times out, the client asks the
//! connection whether it is *stalled* ([`Shared::fail_if_stalled`]): it had requests pending for
//! a whole request timeout and read nothing in that time, or it had bytes to write and wrote
//! none in that time. A stalled connection dies with [`Failure::Stalled`] (its requests fail with
//! [`ClientError::Timeout`], which is retried) and the next attempt connects anew.
//! SO_KEEPALIVE is not set: kvs-wire has no direct dependency that exposes `setsockopt`, and
//! with the kernel's default timings (2 h idle) it would not help; the stall check is the fix.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::Task;

use super::net::{resolve, Half};
use super::oneshot;
use super::ClientError;
use crate::frame::{FrameError, FrameHeader};
use crate::limits::FRAME_HEADER_BYTES;
use crate::msg::AlignedVec;

/// Bytes the reader asks the socket for at a time (and keeps as its buffer between frames).
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// An output or input buffer grown beyond this by a large frame is released after use, so one
/// big value does not pin memory for the life of the connection.
const BUFFER_KEEP_BYTES_MAX: usize = 1024 * 1024;
/// Bound on the bytes queued for the writer and not yet written. A request appends its frame
/// only while fewer bytes than this are queued, so the queue holds at most this plus one frame
/// (a frame larger than the bound still goes out, alone). 4 MiB is ~1000 frames of a 4 KiB
/// value, on top of what the kernel's send buffer holds; more would only queue latency.
pub(crate) const OUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A response frame: its header and its body, copied to an 8-aligned buffer for `msg::access`.
pub(crate) struct Frame {
    pub(crate) header: FrameHeader,
    pub(crate) body: AlignedVec,
}

/// Why a connection died. Kept as plain data so each pending request gets its own error.
#[derive(Clone, Debug)]
pub(crate) enum Failure {
    Io(io::ErrorKind, String),
    Protocol(String),
    /// The server went quiet for a whole request timeout with work outstanding (see
    /// [`Shared::fail_if_stalled`]). Reported as [`ClientError::Timeout`].
    Stalled {
        after: Duration,
    },
}

impl Failure {
    pub(crate) fn to_error(&self, addr: &str) -> ClientError {
        match self {
            Failure::Io(kind, msg) => ClientError::Io {
                addr: addr.to_string(),
                source: io::Error::new(*kind, msg.clone()),
            },
            Failure::Protocol(msg) => ClientError::Protocol(format!("{addr}: {msg}")),
            Failure::Stalled { after } => ClientError::Timeout { after: *after },
        }
    }

    fn from_io(e: &io::Error) -> Failure {
        Failure::Io(e.kind(), e.to_string())
    }
}

type Reply = Result<Frame, ClientError>;

/// State shared by the connection's tasks and the requests using it.
pub(crate) struct Shared {
    addr: String,
    /// Request id -> the request waiting for its response. At most `inflight_max` entries.
    pending: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    /// Frames queued for the writer, appended back to back.
    out: RefCell<Vec<u8>>,
    /// Bytes of the writer's current batch not yet written.
    writing: Cell<usize>,
    writer_waker: Cell<Option<Waker>>,
    /// Request id -> a request waiting for room in the output buffer. At most `inflight_max`
    /// entries (waiters hold a permit); each removes itself when it stops waiting.
    space_waiters: RefCell<HashMap<u64, Waker>>,
    /// When the reader last got bytes; `None` before the first.
    read_at: Cell<Option<Instant>>,
    /// When `pending` last went from empty to not empty: the start time of the attempt that
    /// registered then, so the whole attempt counts.
    busy_at: Cell<Instant>,
    /// When `pending` last became empty; `None` while it is not empty.
    idle_at: Cell<Option<Instant>>,
    /// When the writer last wrote bytes, or the queue last went from empty to not empty.
    write_at: Cell<Instant>,
    /// Most bytes ever queued (for tests of the bound).
    #[cfg(test)]
    queued_peak: Cell<usize>,
    /// Set once, when the connection dies.
    dead: RefCell<Option<Failure>>,
    /// Bounds requests in flight on this connection.
    permits: Semaphore,
    frame_body_bytes_max: u32,
    /// The topology epoch of the last response that carried one, shared by every connection
    /// of the client (see `crate::frame::topology_epoch`).
    epoch_seen: Rc<Cell<u32>>,
}

impl Shared {
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.borrow().is_some()
    }

    fn dead_error(&self) -> Option<ClientError> {
        self.dead.borrow().as_ref().map(|f| f.to_error(&self.addr))
    }

    /// Bytes queued for the socket and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.out.borrow().len() + self.writing.get()
    }

    /// The most bytes ever queued on this connection.
    #[cfg(test)]
    pub(crate) fn queued_peak(&self) -> usize {
        self.queued_peak.get()
    }

    /// Called when an attempt on this connection timed out after `timeout`: fails the
    /// connection if it is stalled, that is if for at least `timeout`
    /// - requests were pending and nothing was read, counting from the start of the attempt
    ///   of the first of them (so the time the first attempt on a new connection spent
    ///   connecting counts: a stopped server's kernel still completes the handshake), or
    /// - bytes were queued and nothing was written.
    ///
    /// A live server answers or reads something within a request timeout; one that is stopped,
    /// cut off or powered off does neither, and without this its connection would hold every
    /// request routed to it until the kernel gives up (~15 minutes of retransmissions), or
    /// forever if the peer's kernel still acknowledges. Returns whether it failed it.
    pub(crate) fn fail_if_stalled(&self, timeout: Duration) -> bool {
        if self.is_dead() {
            return false;
        }
        let now = Instant::now();
        let busy_until = self.idle_at.get().unwrap_or(now);
        let busy_at = self.busy_at.get();
        let quiet_since = self.read_at.get().map_or(busy_at, |r| r.max(busy_at));
        let read_stalled = busy_until.saturating_duration_since(quiet_since) >= timeout;
        let write_stalled = self.queued_bytes() > 0
            && now.saturating_duration_since(self.write_at.get()) >= timeout;
        if read_stalled || write_stalled {
            self.fail(Failure::Stalled { after: timeout });
            return true;
        }
        false
    }

    /// Registers the request waiting for `id`; `false` if the id is already pending.
    fn register(&self, id: u64, tx: oneshot::Sender<Reply>, started: Instant) -> bool {
        let mut pending = self.pending.borrow_mut();
        if pending.contains_key(&id) {
            return false;
        }
        if pending.is_empty() {
            self.busy_at.set(started);
            self.idle_at.set(None);
        }
        pending.insert(id, tx);
        true
    }

    /// Removes the request waiting for `id`, if any.
    fn unregister(&self, id: u64) -> Option<oneshot::Sender<Reply>> {
        let mut pending = self.pending.try_borrow_mut().ok()?;
        let tx = pending.remove(&id);
        if tx.is_some() && pending.is_empty() {
            self.idle_at.set(Some(Instant::now()));
        }
        tx
    }

    /// Ready once the output buffer has room (or the connection died).
    fn poll_space(&self, cx: &mut Context<'_>, id: u64) -> Poll<Result<(), ClientError>> {
        if let Some(e) = self.dead_error() {
            return Poll::Ready(Err(e));
        }
        if self.queued_bytes() < OUT_BYTES_MAX {
            return Poll::Ready(Ok(()));
        }
        self.space_waiters.borrow_mut().insert(id, cx.waker().clone());
        Poll::Pending
    }

    /// Wakes the requests waiting for room, if there is room (or the connection is dead).
    fn wake_space(&self) {
        if self.space_waiters.borrow().is_empty()
            || (self.queued_bytes() >= OUT_BYTES_MAX && !self.is_dead())
        {
            return;
        }
        let waiters = std::mem::take(&mut *self.space_waiters.borrow_mut());
        for (_, w) in waiters {
            w.wake();
        }
    }

    /// The writer wrote some bytes; `left` of its batch remain.
    fn wrote(&self, left: usize) {
        self.writing.set(left);
        self.write_at.set(Instant::now());
        self.wake_space();
    }

    /// Marks the connection dead (first reason wins) and fails everything waiting on it.
    pub(crate) fn fail(&self, failure: Failure) {
        {
            let mut dead = self.dead.borrow_mut();
            if dead.is_none() {
                *dead = Some(failure.clone());
            }
        }
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for (_, tx) in pending {
            tx.send(Err(failure.to_error(&self.addr)));
        }
        self.idle_at.set(Some(Instant::now()));
        self.out.borrow_mut().clear();
        self.writing.set(0);
        self.permits.close();
        self.wake_space();
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }

    /// Hands a response to the request waiting for `header.request_id`. A response nobody waits
    /// for (its request timed out or was dropped) is discarded.
    fn complete(&self, frame: Frame) {
        if let Some(tx) = self.unregister(frame.header.request_id) {
            tx.send(Ok(frame));
        }
    }

    /// Sends one request and waits for its response: takes a permit, waits for room in the
    /// output buffer, registers `id`, lets `encode` append the frame to the output buffer and
    /// wakes the writer. `started` is when the attempt began (see [`Shared::fail_if_stalled`]).
    pub(crate) async fn call(
        &self,
        id: u64,
        started: Instant,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), ClientError>,
    ) -> Result<Frame, ClientError> {
        if let Some(e) = self.dead_error() {
            return Err(e);
        }
        let Ok(_permit) = self.permits.acquire_permit(1).await else {
            return Err(self.dead_error().unwrap_or_else(|| closed_error(&self.addr)));
        };
        {
            let _waiting = SpaceGuard { shared: self, id };
            futures_lite::future::poll_fn(|cx| self.poll_space(cx, id)).await?;
        }
        let (tx, rx) = oneshot::channel();
        if !self.register(id, tx, started) {
            // Ids come from a per-client u64 counter: a duplicate means 2^64 requests wrapped
            // around onto one still pending, which cannot happen in practice.
            return Err(ClientError::Protocol(format!("request id {id} already in flight")));
        }
        let guard = PendingGuard { shared: self, id };
        if self.queued_bytes() == 0 {
            self.write_at.set(Instant::now());
        }
        encode(&mut self.out.borrow_mut())?;
        #[cfg(test)]
        self.queued_peak.set(self.queued_peak.get().max(self.queued_bytes()));
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
        let reply = rx.await;
        drop(guard);
        match reply {
            Ok(r) => r,
            Err(oneshot::Canceled) => {
                Err(self.dead_error().unwrap_or_else(|| closed_error(&self.addr)))
            }
        }
    }

    /// The writer waits here for queued frames; swaps them into `spare`. `false` = dead.
    fn poll_batch(&self, cx: &mut Context<'_>, spare: &mut Vec<u8>) -> Poll<bool> {
        if self.is_dead() {
            return Poll::Ready(false);
        }
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            self.writer_waker.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        std::mem::swap(&mut *out, spare);
        self.writing.set(spare.len());
        Poll::Ready(true)
    }
}

fn closed_error(addr: &str) -> ClientError {
    ClientError::Io {
        addr: addr.to_string(),
        source: io::Error::new(io::ErrorKind::ConnectionAborted, "connection closed"),
    }
}

/// Removes a request's pending entry when the request ends for any reason (answered, timed
/// out, dropped), so the map never holds abandoned requests.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

/// Removes a request's entry among the waiters for buffer room when it stops waiting.
struct SpaceGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for SpaceGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.shared.space_waiters.try_borrow_mut() {
            w.remove(&self.id);
        }
    }
}

/// A live connection: the shared state plus the two tasks that move its bytes.
pub(crate) struct Conn {
    pub(crate) shared: Rc<Shared>,
    tasks: RefCell<Vec<Task<()>>>,
}

impl Conn {
    /// Connects to `addr` (`host:port`), sets TCP_NODELAY and starts the reader and writer.
    pub(crate) async fn connect(
        addr: &str,
        connect_timeout: Duration,
        inflight_max: usize,
        frame_body_bytes_max: u32,
        epoch_seen: Rc<Cell<u32>>,
    ) -> Result<Conn, ClientError> {
        let io_err = |source: io::Error| ClientError::Io { addr: addr.to_string(), source };
        let sock_addr = resolve(addr).map_err(io_err)?;
        let stream = TcpStream::connect_timeout(sock_addr, connect_timeout)
            .await
            .map_err(|e| io_err(e.into()))?;
        stream.set_nodelay(true).map_err(|e| io_err(e.into()))?;
        let stream = Rc::new(RefCell::new(stream));
        let now = Instant::now();
        let shared = Rc::new(Shared {
            addr: addr.to_string(),
            pending: RefCell::new(HashMap::new()),
            out: RefCell::new(Vec::new()),
            writing: Cell::new(0),
            writer_waker: Cell::new(None),
            space_waiters: RefCell::new(HashMap::new()),
            read_at: Cell::new(None),
            busy_at: Cell::new(now),
            idle_at: Cell::new(Some(now)),
            write_at: Cell::new(now),
            #[cfg(test)]
            queued_peak: Cell::new(0),
            dead: RefCell::new(None),
            permits: Semaphore::new(u64::try_from(inflight_max).unwrap_or(u64::MAX)),
            frame_body_bytes_max,
            epoch_seen,
        });
        let writer = glommio::spawn_local(writer_task(shared.clone(), Half(stream.clone())));
        let reader = glommio::spawn_local(reader_task(shared.clone(), Half(stream)));
        Ok(Conn { shared, tasks: RefCell::new(vec![writer, reader]) })
    }

    /// Fails pending requests with `why` and stops both tasks, waiting for them to end.
    pub(crate) async fn shutdown(&self, why: Failure) {
        self.shared.fail(why);
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for t in tasks {
            t.cancel().await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared
            .fail(Failure::Io(io::ErrorKind::ConnectionAborted, "connection dropped".to_string()));
        // The tasks are dropped with `self.tasks`, which cancels them and closes the socket.
    }
}

async fn writer_task(shared: Rc<Shared>, mut sink: Half) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let live = futures_lite::future::poll_fn(|cx| shared.poll_batch(cx, &mut batch)).await;
        if !live {
            return;
        }
        // Written piecewise so the queue shrinks (and waiting requests get room) as the socket
        // takes bytes, and each piece counts as progress for the stall check.
        let mut done = 0usize;
        while let Some(rest) = batch.get(done..).filter(|r| !r.is_empty()) {
            match sink.write(rest).await {
                Ok(0) => {
                    shared.fail(Failure::Io(
                        io::ErrorKind::WriteZero,
                        "the socket accepts no more bytes".to_string(),
                    ));
                    return;
                }
                Ok(n) => {
                    done += n;
                    shared.wrote(batch.len().saturating_sub(done));
                }
                Err(e) => {
                    shared.fail(Failure::from_io(&e));
                    return;
                }
            }
        }
        batch.clear();
        if batch.capacity() > BUFFER_KEEP_BYTES_MAX {
            batch = Vec::new();
        }
    }
}

async fn reader_task(shared: Rc<Shared>, mut source: Half) {
    let failure = read_loop(&shared, &mut source).await;
    shared.fail(failure);
}

/// Reads and dispatches frames until the connection fails; returns why.
async fn read_loop(shared: &Shared, source: &mut Half) -> Failure {
    // buf[start..filled] holds bytes read but not yet cut into frames.
    let mut buf: Vec<u8> = vec![0; READ_CHUNK_BYTES];
    let mut start = 0usize;
    let mut filled = 0usize;
    loop {
        // Cut every complete frame out of the buffer.
        let mut frame_bytes_needed = FRAME_HEADER_BYTES;
        loop {
            let avail = buf.get(start..filled).unwrap_or(&[]);
            let header = match FrameHeader::decode(avail, shared.frame_body_bytes_max) {
                Ok(h) => h,
                Err(FrameError::Incomplete { .. }) => break,
                Err(e) => return Failure::Protocol(format!("bad frame from server: {e}")),
            };
            if !header.response {
                return Failure::Protocol(format!(
                    "server sent a request frame ({:?}, id {})",
                    header.opcode, header.request_id
                ));
            }
            let total = FRAME_HEADER_BYTES + header.body_len as usize;
            let Some(body) = avail.get(FRAME_HEADER_BYTES..total) else {
                frame_bytes_needed = total;
                break;
            };
            let epoch = crate::frame::topology_epoch(avail);
            if epoch != 0 {
                shared.epoch_seen.set(epoch);
            }
            let mut aligned = AlignedVec::with_capacity(body.len());
            aligned.extend_from_slice(body);
            start += total;
            shared.complete(Frame { header, body: aligned });
        }
        // Move the partial frame to the front, and make room for the whole of it.
        if start > 0 {
            buf.copy_within(start..filled, 0);
            filled -= start;
            start = 0;
        }
        if frame_bytes_needed > buf.len() {
            buf.resize(frame_bytes_needed, 0);
        } else if buf.len() > BUFFER_KEEP_BYTES_MAX
            && filled <= READ_CHUNK_BYTES
            && frame_bytes_needed <= READ_CHUNK_BYTES
        {
            buf.truncate(READ_CHUNK_BYTES);
            buf.shrink_to_fit();
        }
        if filled == buf.len() {
            // Cannot happen: a partial frame is smaller than the frame it belongs to.
            buf.resize(filled + READ_CHUNK_BYTES, 0);
        }
        let Some(space) = buf.get_mut(filled..) else {
            return Failure::Protocol("reader buffer out of bounds (bug)".to_string());
        };
        match source.read(space).await {
            Ok(0) => {
                return Failure::Io(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the server".to_string(),
                )
            }
            Ok(n) => {
                filled += n;
                shared.read_at.set(Some(Instant::now()));
            }
            Err(e) => return Failure::from_io(&e),
        }
    }
}
