//! Client connections: the accept loop, the frame reader, and the batching response writer.
//!
//! Each connection has a reader (this task) and a writer task. The reader cuts frames from the
//! byte stream, answers Ping and Topology at once, starts a gather for Stats and routes keyed
//! requests; responses, from whichever task finishes them, are appended to the connection's
//! output buffer and the writer sends everything buffered in one write, so a pipelining client
//! gets its answers in batches.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use kvs_wire::frame::FrameError;
use kvs_wire::limits::FRAME_HEADER_BYTES;
use kvs_wire::msg::{self, AlignedVec};
use kvs_wire::{ErrorCode, FrameHeader, Opcode};

use super::notify::Notify;
use super::{bump, ExecutorCtx, PeerAuth};

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes of responses one connection may have waiting to be sent before the node stops
/// reading requests from it: a client that pipelines without reading cannot grow the node's
/// memory past this (plus one response per request in flight).
const OUT_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The sending side of one client connection, shared by every task answering on it.
pub struct ConnOut {
    buf: RefCell<Vec<u8>>,
    /// Wakes the writer when `buf` has bytes or the connection is closing.
    wake_writer: Notify,
    closing: Cell<bool>,
    /// The socket failed: responses are dropped and the reader stops.
    broken: Cell<bool>,
    /// Requests read but not yet answered.
    inflight: Cell<usize>,
    /// Wakes the reader when a request finishes (it may be waiting for room).
    wake_reader: Notify,
    /// The replica-link handshake of this connection (node-level port only).
    peer_auth: Cell<PeerAuth>,
}

impl ConnOut {
    fn new() -> ConnOut {
        ConnOut {
            buf: RefCell::new(Vec::with_capacity(READ_CHUNK_BYTES)),
            wake_writer: Notify::default(),
            closing: Cell::new(false),
            broken: Cell::new(false),
            inflight: Cell::new(0),
            wake_reader: Notify::default(),
            peer_auth: Cell::new(PeerAuth::None),
        }
    }

    /// Queues a complete response frame.
    pub fn push_frame(&self, frame: &[u8]) {
        if !self.broken.get() {
            self.buf.borrow_mut().extend_from_slice(frame);
            self.wake_writer.notify();
        }
    }

    /// Queues an error response.
    pub fn push_error(&self, request_id: u64, code: ErrorCode, message: impl Into<String>) {
        if !self.broken.get() {
            msg::write_error(&mut self.buf.borrow_mut(), request_id, code, message);
            self.wake_writer.notify();
        }
    }

    /// Whether the reader may take another request: few enough in flight and few enough
    /// response bytes waiting for the socket.
    fn has_room(&self, inflight_max: usize) -> bool {
        self.inflight.get() < inflight_max && self.buf.borrow().len() < OUT_BYTES_MAX
    }

    fn start_one(&self) {
        self.inflight.set(self.inflight.get() + 1);
    }

    /// Marks one request as answered.
    pub fn finish_one(&self) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        self.wake_reader.notify();
    }
}

/// Accepts connections on `listener` until shutdown and serves each in its own task.
pub async fn serve_listener(ctx: Rc<ExecutorCtx>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            ctx.shutdown.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => break,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(executor = ctx.index, "accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        bump(&ctx.counters.connections);
        if ctx.open_connections() >= ctx.settings.connections_max {
            glommio::spawn_local(refuse(stream, ctx.settings.connections_max)).detach();
            continue;
        }
        let id = ctx.next_conn.get();
        ctx.next_conn.set(id + 1);
        let stop = Rc::new(Notify::default());
        ctx.conns.borrow_mut().insert(id, stop.clone());
        let c = ctx.clone();
        glommio::spawn_local(async move {
            serve_connection(&c, stream, &stop).await;
            c.conns.borrow_mut().remove(&id);
            c.conn_closed.notify();
        })
        .detach();
    }
}

async fn refuse(mut stream: TcpStream, max: usize) {
    let mut out = Vec::new();
    msg::write_error(
        &mut out,
        0,
        ErrorCode::Overloaded,
        format!("too many connections (connections_max {max})"),
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// Serves one connection until the client closes it, it sends an unframeable byte, or shutdown.
async fn serve_connection(ctx: &Rc<ExecutorCtx>, stream: TcpStream, stop: &Notify) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = futures_lite::io::split(stream);
    let out = Rc::new(ConnOut::new());
    let writer = {
        let out = out.clone();
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            loop {
                let mut bytes = std::mem::take(&mut *out.buf.borrow_mut());
                // Every response tells the client which topology this node serves, so a
                // client holding another one fetches it again.
                let epoch = kvs_wire::frame::topology_epoch_of(ctx.topology().version);
                kvs_wire::frame::stamp_topology_epoch(&mut bytes, epoch);
                if bytes.is_empty() {
                    if out.closing.get() {
                        break;
                    }
                    out.wake_writer.wait().await;
                    continue;
                }
                if wr.write_all(&bytes).await.is_err() {
                    out.broken.set(true);
                    out.buf.borrow_mut().clear();
                    out.wake_reader.notify();
                    break;
                }
                // Sent bytes may make room for the reader to take more requests.
                out.wake_reader.notify();
                // Give the buffer's allocation back for reuse when nothing was queued meanwhile.
                let mut b = out.buf.borrow_mut();
                if b.is_empty() {
                    let mut bytes = bytes;
                    bytes.clear();
                    *b = bytes;
                }
            }
            let _ = wr.close().await;
        })
    };

    let body_max = ctx.settings.frame_body_bytes_max;
    let peer_body_max = ctx.settings.peer_body_bytes_max.max(body_max);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let inflight_max = ctx.settings.connection_inflight_max;
    let mut reservation = LargeFrameReservation { ctx, held: 0, since: None };
    'conn: loop {
        // Cut complete frames out of `buf` while the connection has room for more work.
        let mut start = 0;
        loop {
            if !out.has_room(inflight_max) {
                break;
            }
            let Some(avail) = buf.get(start..) else { break };
            let header = match FrameHeader::decode(avail, peer_body_max) {
                // Only node-to-node frames may use the larger bound.
                // Replica and stream requests need an authenticated link: refused on the
                // header, before a large body is buffered.
                Ok(h)
                    if h.body_len > body_max
                        && needs_link(h.opcode)
                        && !matches!(out.peer_auth.get(), PeerAuth::Authenticated { .. }) =>
                {
                    bump(&ctx.counters.invalid_frames);
                    out.push_error(
                        h.request_id,
                        ErrorCode::InvalidRequest,
                        format!(
                            "{:?} refused: replica requests need a connection to the node-level \
                             port authenticated with the cluster key (PeerHello); closing",
                            h.opcode
                        ),
                    );
                    break 'conn;
                }
                Ok(h) if h.body_len > body_max && !is_peer_opcode(h.opcode) => {
                    bump(&ctx.counters.invalid_frames);
                    let e = FrameError::TooLarge { len: h.body_len, max: body_max };
                    out.push_error(
                        h.request_id,
                        ErrorCode::TooLarge,
                        format!("{e}; closing connection"),
                    );
                    break 'conn;
                }
                Ok(h) => h,
                Err(FrameError::Incomplete { .. }) => break,
                Err(e) => {
                    bump(&ctx.counters.invalid_frames);
                    let (code, request_id) = match e {
                        FrameError::TooLarge { .. } => (ErrorCode::TooLarge, request_id_of(avail)),
                        _ => (ErrorCode::InvalidRequest, 0),
                    };
                    out.push_error(request_id, code, format!("{e}; closing connection"));
                    break 'conn;
                }
            };
            let total = FRAME_HEADER_BYTES + header.body_len as usize;
            // A body beyond the client bound from a connection that has not authenticated
            // (gossip checks each message after reading it) is buffered only within the
            // node's budget for such frames, so strangers cannot make it hold gigabytes.
            let large = header.body_len > body_max
                && !matches!(out.peer_auth.get(), PeerAuth::Authenticated { .. });
            if large && !reservation.hold(header.body_len) {
                bump(&ctx.counters.invalid_frames);
                out.push_error(
                    header.request_id,
                    ErrorCode::Overloaded,
                    format!(
                        "too many large unauthenticated frames in flight on this node \
                         ({UNAUTHENTICATED_LARGE_BYTES_MAX} bytes at most); closing"
                    ),
                );
                break 'conn;
            }
            let Some(body_bytes) = avail.get(FRAME_HEADER_BYTES..total) else {
                break;
            };
            let mut body = AlignedVec::<16>::with_capacity(body_bytes.len());
            body.extend_from_slice(body_bytes);
            start += total;
            reservation.release();
            if !dispatch(ctx, header, body, &out) {
                break 'conn;
            }
        }
        if start > 0 {
            buf.drain(..start);
        }
        if ctx.shutdown.is_raised() || out.broken.get() {
            break;
        }
        if !out.has_room(inflight_max) {
            // Back-pressure: read nothing more until requests finish or responses are sent.
            futures_lite::future::or(out.wake_reader.wait(), stop.wait()).await;
            continue;
        }
        // A large unauthenticated frame holds part of the node's budget: it must arrive
        // whole within LARGE_FRAME_TIME_MAX, or the connection is closed and the budget freed.
        let deadline = reservation.since.map(|t| t + LARGE_FRAME_TIME_MAX);
        let read = futures_lite::future::or(async { Some(rd.read(&mut chunk).await) }, async {
            match deadline {
                Some(d) => {
                    futures_lite::future::or(stop.wait(), async {
                        glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await;
                    })
                    .await
                }
                None => stop.wait().await,
            }
            None
        })
        .await;
        match read {
            Some(Ok(0)) | None => break,
            Some(Ok(n)) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Some(Err(_)) => break,
        }
    }
    // Answer what was read before closing: in-flight requests finish and are flushed.
    while out.inflight.get() > 0 {
        out.wake_reader.wait().await;
    }
    out.closing.set(true);
    out.wake_writer.notify();
    writer.await;
}

/// The node-to-node requests whose body may exceed the client bound: gossip states (up to
/// the gossip bound), replica writes (a client's largest value plus the replica envelope) and
/// streamed batches. ClusterStatus, PeerHello, ReplicaRead, StreamScan and the operator's
/// requests are small and keep the client bound, so an unauthenticated sender cannot make the
/// node buffer a large frame with them.
fn is_peer_opcode(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::GossipSyn | Opcode::GossipAck2 | Opcode::ReplicaWrite | Opcode::StreamApply
    )
}

/// Bytes of bodies beyond the client bound that unauthenticated connections (gossip, which is
/// authenticated per message after it is read) may have buffered at once on one executor.
pub const UNAUTHENTICATED_LARGE_BYTES_MAX: u64 = 32 * 1024 * 1024;

/// One connection's share of [`UNAUTHENTICATED_LARGE_BYTES_MAX`]: held while a large frame's
/// body is being read, released when it is complete or the connection ends.
struct LargeFrameReservation<'a> {
    ctx: &'a ExecutorCtx,
    held: u64,
    /// When the frame holding it began to arrive.
    since: Option<Instant>,
}

/// How long a large unauthenticated frame may take to arrive whole.
pub const LARGE_FRAME_TIME_MAX: Duration = Duration::from_secs(10);

impl LargeFrameReservation<'_> {
    /// Holds `bytes` (once per frame); false when the budget has no room.
    fn hold(&mut self, bytes: u32) -> bool {
        if self.held > 0 {
            return true;
        }
        let in_use = self.ctx.large_frame_bytes.get();
        let bytes = u64::from(bytes);
        if in_use.saturating_add(bytes) > UNAUTHENTICATED_LARGE_BYTES_MAX {
            return false;
        }
        self.ctx.large_frame_bytes.set(in_use + bytes);
        self.held = bytes;
        self.since = Some(Instant::now());
        true
    }

    fn release(&mut self) {
        let in_use = self.ctx.large_frame_bytes.get();
        self.ctx.large_frame_bytes.set(in_use.saturating_sub(self.held));
        self.held = 0;
        self.since = None;
    }
}

impl Drop for LargeFrameReservation<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// The requests served only on an authenticated replica link.
fn needs_link(op: Opcode) -> bool {
    matches!(
        op,
        Opcode::ReplicaWrite | Opcode::ReplicaRead | Opcode::StreamScan | Opcode::StreamApply
    )
}

fn request_id_of(header: &[u8]) -> u64 {
    header.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// Answers or routes one frame read from a client. Returns false when the connection must
/// close (after the error already queued).
fn dispatch(
    ctx: &Rc<ExecutorCtx>,
    header: FrameHeader,
    body: AlignedVec,
    out: &Rc<ConnOut>,
) -> bool {
    let id = header.request_id;
    if header.response {
        bump(&ctx.counters.invalid_frames);
        out.push_error(id, ErrorCode::InvalidRequest, "a client sent a response frame");
        return true;
    }
    match header.opcode {
        Opcode::Ping => {
            msg::write_empty_frame(&mut out.buf.borrow_mut(), Opcode::Ping, true, id);
            out.wake_writer.notify();
        }
        Opcode::Topology => {
            let mut b = out.buf.borrow_mut();
            if msg::write_frame(&mut b, Opcode::Topology, true, id, &*ctx.topology()).is_err() {
                msg::write_error(&mut b, id, ErrorCode::Internal, "cannot encode topology");
            }
            drop(b);
            out.wake_writer.notify();
        }
        Opcode::Get | Opcode::Put | Opcode::Delete => {
            out.start_one();
            ctx.route(header.opcode, id, body, out.clone());
        }
        Opcode::Stats => {
            out.start_one();
            let (ctx, out) = (ctx.clone(), out.clone());
            glommio::spawn_local(async move {
                let frame = ctx.gather_stats(id, body.len()).await;
                out.push_frame(&frame);
                out.finish_one();
            })
            .detach();
        }
        Opcode::GossipSyn
        | Opcode::GossipAck2
        | Opcode::ClusterStatus
        | Opcode::Decommission
        | Opcode::RemoveNode => match ctx.peer_service() {
            Some(service) => {
                service.handle(header.opcode, id, &body, &mut out.buf.borrow_mut());
                out.wake_writer.notify();
            }
            None => {
                bump(&ctx.counters.invalid_frames);
                out.push_error(
                    id,
                    ErrorCode::InvalidRequest,
                    format!("{:?} is served on the node-level port only", header.opcode),
                );
            }
        },
        Opcode::PeerHello => match ctx.replica_service() {
            Some(service) => {
                let keep = service.hello(id, &body, &out.peer_auth, &mut out.buf.borrow_mut());
                out.wake_writer.notify();
                if !keep {
                    bump(&ctx.counters.invalid_frames);
                }
                return keep;
            }
            None => {
                bump(&ctx.counters.invalid_frames);
                out.push_error(
                    id,
                    ErrorCode::InvalidRequest,
                    "PeerHello is served on the node-level port only",
                );
                return false;
            }
        },
        Opcode::ReplicaWrite | Opcode::ReplicaRead | Opcode::StreamScan | Opcode::StreamApply => {
            if !matches!(out.peer_auth.get(), PeerAuth::Authenticated { .. }) {
                bump(&ctx.counters.invalid_frames);
                out.push_error(
                    id,
                    ErrorCode::InvalidRequest,
                    format!(
                        "{:?} refused: replica requests need a connection to the node-level \
                         port authenticated with the cluster key (PeerHello); closing",
                        header.opcode
                    ),
                );
                return false;
            }
            out.start_one();
            ctx.route(header.opcode, id, body, out.clone());
        }
        Opcode::Error => {
            bump(&ctx.counters.invalid_frames);
            out.push_error(id, ErrorCode::InvalidRequest, "a client sent an error frame");
        }
    }
    true
}
