//! [`RedisDriver`]: Redis (or Valkey) over RESP2 on one pipelined TCP connection.
//!
//! ## Data flow
//! ```text
//! get/put/delete ─ permit ─ encode into `out` + push oneshot on `pending` ─> writer task ─> socket
//!        ^                                  │ pending: FIFO of oneshots
//!        └──── oneshot <── reader task (resp::parse, complete FIFO head) <──────────────── socket
//! ```
//! - A request takes one permit of a semaphore sized [`DriverOptions::pipeline`], then, in one
//!   synchronous step, appends its command to the shared output buffer and pushes its oneshot
//!   on the FIFO of pending requests, and wakes the writer. Bytes and FIFO entries therefore
//!   stay in the same order, even when many tasks call at once.
//! - The writer task swaps the output buffer with an empty one and writes everything queued
//!   since its last write in one `write_all`, so concurrent requests share a syscall.
//! - The reader task reads into a buffer, cuts replies with [`resp::parse`] (`Incomplete` means
//!   read more) and hands each to the oldest pending request: RESP answers in order.
//!
//! ## Failures
//! The connection breaks, once, on the first of: an I/O error, end of stream, bytes that are
//! not a valid reply, a reply with no request waiting, a request timeout, or
//! [`Driver::close`]. Breaking fails every pending request at once (`Io`, or `Protocol` for bad
//! bytes) and every later request fails at once with the same error: nothing hangs and nothing
//! reconnects, so the runner sees and counts the failure.
//!
//! A timeout breaks the connection because RESP has no request ids: replies are matched to
//! requests only by position. The driver cannot tell a reply that is late from one that will
//! never come, and a stream it no longer trusts must not hand a wrong value to a later GET.
//!
//! A request whose future is dropped (not timed out) keeps its FIFO entry, so its reply, when
//! it comes, is discarded and the order holds. Its permit is released at once, so for that
//! moment the wire may hold one more request than `pipeline`.
//!
//! ## Invariants
//! - `pending.len()` equals the number of commands written or queued whose reply has not been
//!   read; it is at most `pipeline` plus dropped requests still on the wire.
//! - Nothing here panics on bytes from the server; the reader's buffer is bounded by
//!   [`resp::REPLY_BYTES_MAX`] plus one read.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::Task;

use super::resp::{self, ParseError, Reply};
use super::{Driver, DriverError, DriverOptions, Target};
use kvs_wire::client::net::{resolve, Half};
use kvs_wire::client::oneshot;

/// Bytes the reader asks the socket for at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A buffer grown beyond this by a large reply or batch is released after use.
const BUFFER_KEEP_BYTES_MAX: usize = 1024 * 1024;

/// Redis or Valkey through RESP GET/SET/DEL, pipelined on one connection. See the module docs.
pub struct RedisDriver {
    shared: Rc<Shared>,
    tasks: RefCell<Vec<Task<()>>>,
    timeout: Duration,
}

/// Why the connection broke. Plain data, so each request gets its own error.
#[derive(Clone, Debug)]
enum Failure {
    Io(String),
    Protocol(String),
    TimedOut(Duration),
    Closed,
}

impl Failure {
    fn to_error(&self, addr: &str) -> DriverError {
        match self {
            Failure::Io(m) => DriverError::Io(format!("{addr}: {m}")),
            Failure::Protocol(m) => DriverError::Protocol(format!("{addr}: {m}")),
            Failure::TimedOut(after) => DriverError::Io(format!(
                "{addr}: connection broken: a request timed out after {after:?} and RESP replies \
                 cannot be matched after that"
            )),
            Failure::Closed => DriverError::Io(format!("{addr}: connection closed by the driver")),
        }
    }
}

type ReplyResult = Result<Reply, DriverError>;

/// State shared by the connection's tasks and the requests using it.
struct Shared {
    addr: String,
    /// Requests whose replies are due, oldest first.
    pending: RefCell<VecDeque<oneshot::Sender<ReplyResult>>>,
    /// Commands queued for the writer, back to back.
    out: RefCell<Vec<u8>>,
    writer_waker: Cell<Option<Waker>>,
    /// Set once, when the connection breaks.
    broken: RefCell<Option<Failure>>,
    /// Bounds requests in flight to `DriverOptions::pipeline`.
    permits: Semaphore,
}

impl Shared {
    fn broken_error(&self) -> Option<DriverError> {
        self.broken.borrow().as_ref().map(|f| f.to_error(&self.addr))
    }

    /// Breaks the connection (the first reason wins) and fails everything waiting on it.
    fn fail(&self, failure: Failure) {
        {
            let mut broken = self.broken.borrow_mut();
            if broken.is_none() {
                *broken = Some(failure);
            }
        }
        let err = self.broken_error();
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        for tx in pending {
            if let Some(e) = &err {
                tx.send(Err(e.clone()));
            }
        }
        self.out.borrow_mut().clear();
        self.permits.close();
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }

    /// Hands `reply` to the oldest pending request; `false` if none is waiting.
    fn complete(&self, reply: Reply) -> bool {
        let tx = self.pending.borrow_mut().pop_front();
        match tx {
            Some(tx) => {
                tx.send(Ok(reply));
                true
            }
            None => false,
        }
    }

    /// Sends one command and waits for its reply (no timeout here).
    async fn call(&self, args: &[&[u8]]) -> ReplyResult {
        if let Some(e) = self.broken_error() {
            return Err(e);
        }
        let Ok(_permit) = self.permits.acquire_permit(1).await else {
            return Err(self
                .broken_error()
                .unwrap_or_else(|| Failure::Closed.to_error(&self.addr)));
        };
        if let Some(e) = self.broken_error() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        // One synchronous step: the command's bytes and its FIFO entry go in together.
        resp::encode_command(&mut self.out.borrow_mut(), args);
        self.pending.borrow_mut().push_back(tx);
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
        match rx.await {
            Ok(r) => r,
            Err(oneshot::Canceled) => {
                Err(self.broken_error().unwrap_or_else(|| Failure::Closed.to_error(&self.addr)))
            }
        }
    }

    /// The writer waits here for queued commands and swaps them into `spare`. `false`: broken.
    fn poll_batch(&self, cx: &mut Context<'_>, spare: &mut Vec<u8>) -> Poll<bool> {
        if self.broken.borrow().is_some() {
            return Poll::Ready(false);
        }
        let mut out = self.out.borrow_mut();
        if out.is_empty() {
            self.writer_waker.set(Some(cx.waker().clone()));
            return Poll::Pending;
        }
        std::mem::swap(&mut *out, spare);
        Poll::Ready(true)
    }
}

impl RedisDriver {
    /// Sends one command under the per-request timeout; a timeout breaks the connection.
    async fn request(&self, args: &[&[u8]]) -> ReplyResult {
        let shared = &self.shared;
        match glommio::timer::timeout(self.timeout, async { Ok(shared.call(args).await) }).await {
            Ok(r) => r,
            Err(_) => {
                shared.fail(Failure::TimedOut(self.timeout));
                Err(DriverError::Timeout)
            }
        }
    }
}

fn unexpected(cmd: &str, reply: &Reply) -> DriverError {
    DriverError::Protocol(format!("unexpected reply to {cmd}: {reply:?}"))
}

fn server_error(message: &[u8]) -> DriverError {
    DriverError::Server(String::from_utf8_lossy(message).into_owned())
}

impl Driver for RedisDriver {
    /// Connects to a `redis://` target and sets TCP_NODELAY. Redis has no consistency levels:
    /// any `consistency` other than `one` is `Unsupported`.
    async fn connect(target: &Target, opts: &DriverOptions) -> Result<Self, DriverError> {
        opts.validate()?;
        let Target::Redis(addr) = target else {
            return Err(DriverError::Unsupported(format!(
                "the Redis driver needs a redis:// target, not {target}"
            )));
        };
        if let Some(c) = opts.consistency.as_deref() {
            if c != "one" {
                return Err(DriverError::Unsupported(format!(
                    "--consistency {c}: a single Redis server has no consistency levels"
                )));
            }
        }
        let sock_addr = resolve(addr).map_err(|e| DriverError::Io(format!("{addr}: {e}")))?;
        let stream = TcpStream::connect_timeout(sock_addr, opts.timeout)
            .await
            .map_err(|e| DriverError::Io(format!("connecting to {addr}: {e}")))?;
        stream.set_nodelay(true).map_err(|e| DriverError::Io(format!("{addr}: nodelay: {e}")))?;
        let stream = Rc::new(RefCell::new(stream));
        let shared = Rc::new(Shared {
            addr: addr.clone(),
            pending: RefCell::new(VecDeque::with_capacity(opts.pipeline.min(1 << 16))),
            out: RefCell::new(Vec::new()),
            writer_waker: Cell::new(None),
            broken: RefCell::new(None),
            permits: Semaphore::new(u64::try_from(opts.pipeline).unwrap_or(u64::MAX)),
        });
        let writer = glommio::spawn_local(writer_task(shared.clone(), Half(stream.clone())));
        let reader = glommio::spawn_local(reader_task(shared.clone(), Half(stream)));
        Ok(RedisDriver { shared, tasks: RefCell::new(vec![writer, reader]), timeout: opts.timeout })
    }

    /// `GET key`: a bulk string, or `None` for the null bulk string.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, DriverError> {
        match self.request(&[b"GET", key]).await? {
            Reply::Bulk(v) => Ok(v),
            Reply::Error(m) => Err(server_error(&m)),
            other => Err(unexpected("GET", &other)),
        }
    }

    /// `SET key value`: expects `+OK`.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), DriverError> {
        match self.request(&[b"SET", key, value]).await? {
            Reply::Simple(s) if s == b"OK" => Ok(()),
            Reply::Error(m) => Err(server_error(&m)),
            other => Err(unexpected("SET", &other)),
        }
    }

    /// `DEL key`: expects the number of keys removed (0 or 1); a missing key is not an error.
    async fn delete(&self, key: &[u8]) -> Result<(), DriverError> {
        match self.request(&[b"DEL", key]).await? {
            Reply::Integer(0 | 1) => Ok(()),
            Reply::Error(m) => Err(server_error(&m)),
            other => Err(unexpected("DEL", &other)),
        }
    }

    /// Fails pending requests, stops both tasks and closes the socket.
    async fn close(&self) {
        self.shared.fail(Failure::Closed);
        let tasks = std::mem::take(&mut *self.tasks.borrow_mut());
        for t in tasks {
            t.cancel().await;
        }
    }
}

impl Drop for RedisDriver {
    fn drop(&mut self) {
        self.shared.fail(Failure::Closed);
        // Dropping `self.tasks` cancels both tasks, which closes the socket.
    }
}

async fn writer_task(shared: Rc<Shared>, mut sink: Half) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let live = futures_lite::future::poll_fn(|cx| shared.poll_batch(cx, &mut batch)).await;
        if !live {
            return;
        }
        if let Err(e) = sink.write_all(&batch).await {
            shared.fail(Failure::Io(format!("write: {e}")));
            return;
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

/// Reads and dispatches replies until the connection fails; returns why.
async fn read_loop(shared: &Shared, source: &mut Half) -> Failure {
    // buf[..filled] holds bytes read but not yet parsed.
    let mut buf: Vec<u8> = vec![0; READ_CHUNK_BYTES];
    let mut filled = 0usize;
    loop {
        let mut used = 0usize;
        loop {
            match resp::parse(buf.get(used..filled).unwrap_or(&[])) {
                Ok((reply, n)) => {
                    used += n;
                    if !shared.complete(reply) {
                        return Failure::Protocol("reply with no request waiting for it".into());
                    }
                }
                Err(ParseError::Incomplete) => break,
                Err(ParseError::Invalid(m)) => return Failure::Protocol(format!("bad reply: {m}")),
            }
        }
        if used > 0 {
            buf.copy_within(used..filled, 0);
            filled -= used;
        }
        if filled > resp::REPLY_BYTES_MAX {
            // Cannot happen: `parse` refuses any reply longer than this.
            return Failure::Protocol("reply exceeds the parser's bound (bug)".into());
        }
        if filled == buf.len() {
            // A reply longer than the buffer: grow (parse bounds a reply's size).
            buf.resize(filled + READ_CHUNK_BYTES, 0);
        } else if buf.len() > BUFFER_KEEP_BYTES_MAX && filled < READ_CHUNK_BYTES {
            buf.truncate(READ_CHUNK_BYTES);
            buf.shrink_to_fit();
        }
        let Some(space) = buf.get_mut(filled..) else {
            return Failure::Protocol("reader buffer out of bounds (bug)".into());
        };
        match source.read(space).await {
            Ok(0) => return Failure::Io("connection closed by the server".into()),
            Ok(n) => filled += n,
            Err(e) => return Failure::Io(format!("read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests;
