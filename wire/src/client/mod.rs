//! # The shard-aware client
//!
//! A [`Client`] talks to a kvs cluster from inside a glommio executor. It places every key the
//! way a node does, sends each request straight to the shard that owns it, keeps many requests
//! in flight on each connection, and retries what is safe to retry.
//!
//! ## What it does
//! - [`Client::connect`] fetches the topology (`Opcode::Topology`) from the node-level port it is
//!   given. [`Client::refresh_topology`] fetches it again; the client also does so before
//!   retrying after an I/O error or a timeout, and in the background when a response carries
//!   another topology epoch than the topology it holds (every node stamps its own in the frame
//!   header, see [`crate::frame::topology_epoch`]; at most once per
//!   [`EPOCH_REFRESH_INTERVAL`]).
//! - Placement ([`Client::route`]): `token_of(key)` → the [`Ring`] built from the topology's nodes
//!   → the key's replica set → the primary (the next replica after a connection error or a
//!   timeout) → `shard_of(token, shard_ports.len())` → `host_of(node.addr):shard_ports[shard]`.
//!   With [`ClientOptions::shard_aware`] off, every request goes to the address given to
//!   `connect`, and the node forwards it to the owning shard.
//! - One TCP connection per address (a node's shard port, or the node-level port), created on
//!   first use, with TCP_NODELAY, shared by every request and every clone of the client.
//! - Pipelining: a request gets an id from a per-client counter, queues its frame and waits for
//!   the response with that id; responses may come back in any order. See `conn.rs` for the
//!   writer and reader tasks.
//! - Each attempt is bounded by [`ClientOptions::request_timeout`] (waiting for a connection and
//!   a pipeline slot included). I/O errors, timeouts and `Overloaded` are retried after a short
//!   backoff up to [`ClientOptions::retries`] times; nothing else is.
//! - A timed-out attempt checks its connection: if for a whole request timeout it had requests
//!   pending and read nothing, or had bytes to send and sent none, the server is taken to be
//!   stopped or cut off (a SIGSTOPped or partitioned node sends no FIN or RST, so nothing else
//!   would notice for ~15 minutes, or ever). The connection is then failed: its other requests
//!   fail with [`ClientError::Timeout`] (and retry), and the next attempt reconnects.
//!
//! - [`Client::stats`] asks the node at the `connect` address (its node-level port) for every
//!   shard's counters; it is not routed, so `connect` to the node you want to see.
//!
//! - Consistency: every Get, Put and Delete carries a [`Consistency`] (R for a get, W for a put
//!   or delete). [`ClientOptions::read_consistency`] and [`ClientOptions::write_consistency`]
//!   give the defaults (`Consistency::Default`: the node's configured default);
//!   [`Client::get_with`], [`Client::put_with`] and [`Client::delete_with`] choose per request.
//!   An `Unavailable` or `Timeout` answer carries the replica counts in
//!   [`ClientError::Server`]'s `detail` and is not retried: the coordinator already tried
//!   every replica.
//!
//! ## What it does not do (yet)
//! - No client-side key or value limits beyond the protocol's frame limit: the server enforces
//!   its configured `--key-bytes-max` and `--value-bytes-max` and answers `TooLarge`.
//! - Requests are not cancelled on the server when they time out here; a late response is
//!   discarded. A retried put may therefore be applied twice (last writer wins, so the value is
//!   the same, with a newer stamp).
//! - Host names in addresses are resolved with the system resolver, which blocks the executor
//!   while it runs: prefer IP addresses.
//!
//! ## Data flow
//! ```text
//! get/put/delete/ping ─ route ─> Endpoint (addr) ─ Conn ─ out buffer ─> writer task ─> socket
//!        ^                                           │ pending: id -> oneshot
//!        └──────────── oneshot <── reader task <─────┴──────────────────────────── socket
//! ```
//!
//! ## Invariants
//! - Bytes from the server are validated before use: headers with `FrameHeader::decode` (against
//!   [`ClientOptions::frame_body_bytes_max`]), bodies with `msg::access`. A bad header kills the
//!   connection (the stream cannot be resynchronised) and fails its requests with
//!   [`ClientError::Protocol`]; a bad body fails only its request. Nothing here panics on input.
//! - Everything is bounded: at most `inflight_max_per_connection` requests are registered on a
//!   connection (more wait for a slot), at most 4 MiB plus one frame queued for its socket (more
//!   wait for room, within their timeout, however long the server stops reading), one
//!   connection per address, retries and backoff fixed.
//! - A request that ends for any reason (answer, error, timeout, its future dropped) leaves no
//!   entry behind in its connection's pending map.
//! - A dead connection fails every request pending on it at once and is replaced on next use.
//! - The client is `!Send`: it lives on one executor; clones share connections and topology.

mod conn;
pub mod net;
pub mod oneshot;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use glommio::GlommioError;

use crate::error::ErrorCode;
use crate::frame::Opcode;
use crate::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES, TTL_MS_MAX};
use crate::msg::{
    self, AlignedVec, ArchivedErrorResponse, ArchivedGetResponse, ArchivedStatsResponse,
    ArchivedTopologyResponse, ArchivedWriteResponse, DeleteRequest, GetRequest, GetResponse,
    PutRequest, WriteResponse,
};
pub use crate::msg::{Consistency, ErrorDetail};
use crate::placement::{shard_of, token_of, NodeId, Ring, Token, SHARDS_MAX, VNODES_MAX};

pub use crate::msg::{Counter, NodeInfo, ShardStats, Stamp, StatsResponse, TopologyResponse};

use conn::{Conn, Failure, Shared};

/// Upper bound on [`ClientOptions::retries`].
pub const RETRIES_MAX: u32 = 16;
/// Upper bound on [`ClientOptions::inflight_max_per_connection`].
pub const INFLIGHT_MAX_PER_CONNECTION_MAX: usize = 1 << 20;
/// A client refreshes its topology for a changed epoch at most this often.
pub const EPOCH_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Backoff before retry number `i + 1` (the last entry repeats).
const BACKOFF_MS: [u64; 3] = [10, 50, 100];

/// Settings of a [`Client`]. Check them with [`ClientOptions::validate`]; `connect` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientOptions {
    /// Bound on one attempt of a request, from asking for a connection to the response.
    /// Default 5 s.
    pub request_timeout: Duration,
    /// Bound on establishing one TCP connection. Default 2 s.
    pub connect_timeout: Duration,
    /// Extra attempts after an I/O error, a closed connection, a timeout or `Overloaded`
    /// (never after `InvalidRequest`, `TooLarge` or a protocol error). Default 2, at most
    /// [`RETRIES_MAX`].
    pub retries: u32,
    /// Send each request to the owning shard's port (default `true`). `false` sends everything
    /// to the node-level address given to `connect`, which exercises in-node forwarding.
    pub shard_aware: bool,
    /// Requests in flight per connection; beyond it requests wait for a slot (within their
    /// timeout). Default 4096, at most [`INFLIGHT_MAX_PER_CONNECTION_MAX`]. Independently, the
    /// bytes queued for one connection's socket are bounded (4 MiB plus one frame): a request
    /// that finds the queue full waits for room, also within its timeout.
    pub inflight_max_per_connection: usize,
    /// Largest response body accepted, in bytes; a header claiming more kills the connection.
    /// Default and ceiling [`FRAME_BODY_BYTES_MAX`].
    pub frame_body_bytes_max: u32,
    /// R of a get that does not name its own ([`Client::get`]). Default
    /// [`Consistency::Default`], the node's configured default. `Count(0)` is refused.
    pub read_consistency: Consistency,
    /// W of a put or delete that does not name its own. Default [`Consistency::Default`].
    /// `Count(0)` is refused.
    pub write_consistency: Consistency,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            retries: 2,
            shard_aware: true,
            inflight_max_per_connection: 4096,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX,
            read_consistency: Consistency::Default,
            write_consistency: Consistency::Default,
        }
    }
}

/// Settings of one put ([`Client::put_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Time to live: once it has passed the key reads as missing. `None` (default): never
    /// expires. Rounded up to whole milliseconds, at least 1 ns and at most
    /// [`TTL_MS_MAX`] ms.
    pub ttl: Option<Duration>,
    /// W for this put; `None` (default): [`ClientOptions::write_consistency`].
    pub consistency: Option<Consistency>,
}

impl ClientOptions {
    /// Checks every field against its bounds.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |m: String| Err(ClientError::InvalidOptions(m));
        if self.request_timeout.is_zero() {
            return bad("request_timeout must be above zero".into());
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be above zero".into());
        }
        if self.retries > RETRIES_MAX {
            return bad(format!("retries {} exceeds {RETRIES_MAX}", self.retries));
        }
        if !(1..=INFLIGHT_MAX_PER_CONNECTION_MAX).contains(&self.inflight_max_per_connection) {
            return bad(format!(
                "inflight_max_per_connection {} is outside 1..={INFLIGHT_MAX_PER_CONNECTION_MAX}",
                self.inflight_max_per_connection
            ));
        }
        if !(1..=FRAME_BODY_BYTES_MAX).contains(&self.frame_body_bytes_max) {
            return bad(format!(
                "frame_body_bytes_max {} is outside 1..={FRAME_BODY_BYTES_MAX}",
                self.frame_body_bytes_max
            ));
        }
        check_consistency(self.read_consistency, "read_consistency")
            .and_then(|()| check_consistency(self.write_consistency, "write_consistency"))
            .map_err(ClientError::InvalidOptions)
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error frame. `detail` has the replica counts of an
    /// `Unavailable` or `Timeout` answer (`needed 2, alive 1`, `1 of 2 acknowledged`).
    #[error("server error {code}: {}", server_text(*.detail, .message))]
    Server { code: ErrorCode, message: String, detail: ErrorDetail },
    /// One attempt got no answer in time (the last one, after any retries).
    #[error("request timed out after {after:?}")]
    Timeout { after: Duration },
    /// Connecting to, writing to or reading from `addr` failed, or the connection closed.
    #[error("I/O error with {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The server sent bytes that are not a valid answer: bad frame, bad body, wrong opcode.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The topology lists no node to send the request to.
    #[error("the topology lists no nodes")]
    NoNodes,
    /// [`ClientOptions::validate`] refused the options.
    #[error("invalid client options: {0}")]
    InvalidOptions(String),
    /// An argument the server would refuse (for example a TTL of zero or over
    /// [`crate::limits::TTL_MS_MAX`]); the request was not sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The request's body would exceed the protocol's frame limit; it was not sent.
    #[error("request body of {len} bytes exceeds the frame limit of {max} bytes")]
    TooLarge { len: usize, max: u32 },
}

impl ClientError {
    /// The stable code this error maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClientError::Server { code, .. } => *code,
            ClientError::Timeout { .. } => ErrorCode::Timeout,
            ClientError::Io { .. } | ClientError::NoNodes => ErrorCode::Unavailable,
            ClientError::Protocol(_) => ErrorCode::Internal,
            ClientError::InvalidOptions(_) | ClientError::InvalidRequest(_) => {
                ErrorCode::InvalidRequest
            }
            ClientError::TooLarge { .. } => ErrorCode::TooLarge,
        }
    }

    /// Whether another attempt may succeed: I/O errors (closed connections included), timeouts
    /// and `Overloaded`.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Io { .. }
                | ClientError::Timeout { .. }
                | ClientError::Server { code: ErrorCode::Overloaded, .. }
        )
    }
}

/// `detail: message`, or the message alone when there is no detail.
fn server_text(detail: ErrorDetail, message: &str) -> String {
    match detail {
        ErrorDetail::None => message.to_string(),
        d if message.is_empty() => d.to_string(),
        d => format!("{d}: {message}"),
    }
}

/// Refuses a consistency no node would accept whatever its replication factor.
fn check_consistency(c: Consistency, what: &str) -> Result<(), String> {
    match c {
        Consistency::Count(0) => {
            Err(format!("{what}: a replica count of 0 is not a consistency (use 1 or more)"))
        }
        _ => Ok(()),
    }
}

/// The topology as the client uses it: the response plus what placement needs, precomputed.
struct Topo {
    resp: TopologyResponse,
    ring: Ring,
    /// Node id -> index into `resp.nodes`.
    index: HashMap<NodeId, usize>,
    /// Per node (same order as `resp.nodes`): `host:port` of each shard.
    shard_addrs: Vec<Vec<String>>,
}

impl Topo {
    fn empty() -> Topo {
        Topo::build(TopologyResponse {
            version: 0,
            self_id: 0,
            replication_factor: 1,
            nodes: Vec::new(),
        })
    }

    fn build(resp: TopologyResponse) -> Topo {
        let ring = Ring::new(
            resp.nodes.iter().map(|n| (NodeId(n.id), n.tokens.iter().map(|t| Token(*t)).collect())),
        );
        let mut index = HashMap::new();
        for (i, n) in resp.nodes.iter().enumerate() {
            index.entry(NodeId(n.id)).or_insert(i);
        }
        let shard_addrs = resp
            .nodes
            .iter()
            .map(|n| {
                let host = host_of(&n.addr);
                n.shard_ports.iter().map(|p| format!("{host}:{p}")).collect()
            })
            .collect();
        Topo { resp, ring, index, shard_addrs }
    }

    /// Checks what placement relies on; the body itself was validated by `msg::access`.
    fn validate(resp: &TopologyResponse) -> Result<(), ClientError> {
        for n in &resp.nodes {
            if n.shard_ports.len() > usize::from(SHARDS_MAX) {
                return Err(ClientError::Protocol(format!(
                    "node {} lists {} shards (at most {SHARDS_MAX})",
                    n.id,
                    n.shard_ports.len()
                )));
            }
            if n.tokens.len() > usize::from(VNODES_MAX) {
                return Err(ClientError::Protocol(format!(
                    "node {} lists {} tokens (at most {VNODES_MAX})",
                    n.id,
                    n.tokens.len()
                )));
            }
        }
        Ok(())
    }

    /// Where a request for `token` goes: the replica `skip` places after the primary (wrapping),
    /// its owning shard, and that shard's address (the node's own address when it lists no
    /// shard ports).
    fn target(&self, token: Token, skip: usize) -> Option<(&str, u16)> {
        let n = usize::from(self.resp.replication_factor.max(1));
        // The common case needs no replica list.
        let pick = if skip == 0 {
            self.ring.primary(token)?
        } else {
            let replicas = self.ring.replicas(token, n);
            *replicas.get(skip.checked_rem(replicas.len())?)?
        };
        let i = *self.index.get(&pick)?;
        let node = self.resp.nodes.get(i)?;
        let shards = u16::try_from(node.shard_ports.len()).unwrap_or(u16::MAX);
        let shard = shard_of(token, shards).0;
        let addr = self
            .shard_addrs
            .get(i)
            .and_then(|a| a.get(usize::from(shard)))
            .map_or(node.addr.as_str(), String::as_str);
        Some((addr, shard))
    }

    /// Every address requests may go to, for pruning connections.
    fn addrs(&self) -> HashSet<&str> {
        let mut out: HashSet<&str> = self.resp.nodes.iter().map(|n| n.addr.as_str()).collect();
        out.extend(self.shard_addrs.iter().flatten().map(String::as_str));
        out
    }
}

/// The host part of `host:port` (`[v6]:port` keeps its brackets).
fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => host,
        _ => addr,
    }
}

/// One address's connection slot. `connecting` lets one task connect while the others wait,
/// so concurrent first requests share one connection.
struct Endpoint {
    conn: RefCell<Option<Conn>>,
    connecting: Semaphore,
}

impl Endpoint {
    fn live(&self) -> Option<Rc<Shared>> {
        self.conn.borrow().as_ref().filter(|c| !c.shared.is_dead()).map(|c| c.shared.clone())
    }
}

/// A request body to send, kept outside the retry loop so it is built once.
enum Req {
    Ping,
    Topology,
    Stats,
    Get(GetRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
}

impl Req {
    fn opcode(&self) -> Opcode {
        match self {
            Req::Ping => Opcode::Ping,
            Req::Topology => Opcode::Topology,
            Req::Stats => Opcode::Stats,
            Req::Get(_) => Opcode::Get,
            Req::Put(_) => Opcode::Put,
            Req::Delete(_) => Opcode::Delete,
        }
    }

    /// Appends the request frame to `out`; leaves `out` as it was on error.
    fn encode(&self, out: &mut Vec<u8>, id: u64) -> Result<(), ClientError> {
        let start = out.len();
        let op = self.opcode();
        let written = match self {
            Req::Ping | Req::Topology | Req::Stats => {
                msg::write_empty_frame(out, op, false, id);
                Ok(())
            }
            Req::Get(m) => msg::write_frame(out, op, false, id, m),
            Req::Put(m) => msg::write_frame(out, op, false, id, m),
            Req::Delete(m) => msg::write_frame(out, op, false, id, m),
        };
        if let Err(e) = written {
            out.truncate(start);
            return Err(match e {
                msg::MsgError::TooLarge { len } => {
                    ClientError::TooLarge { len, max: FRAME_BODY_BYTES_MAX }
                }
                other => ClientError::Protocol(format!("cannot encode request: {other}")),
            });
        }
        let body_len = out.len().saturating_sub(start + FRAME_HEADER_BYTES);
        if body_len > FRAME_BODY_BYTES_MAX as usize {
            out.truncate(start);
            return Err(ClientError::TooLarge { len: body_len, max: FRAME_BODY_BYTES_MAX });
        }
        Ok(())
    }
}

/// Where a request goes.
#[derive(Clone, Copy)]
enum Dest {
    /// A keyed request: its token.
    Key(Token),
    /// Shard 0 of the first node.
    Any,
    /// The address given to `connect`.
    Seed,
}

struct Inner {
    seed_addr: String,
    opts: ClientOptions,
    topo: RefCell<Rc<Topo>>,
    endpoints: RefCell<HashMap<String, Rc<Endpoint>>>,
    next_id: Cell<u64>,
    closed: Cell<bool>,
    /// A retry is refreshing the topology; other retries skip their refresh instead of
    /// piling up identical Topology requests.
    refreshing: Cell<bool>,
    /// The topology epoch the last response carried (0: none yet).
    epoch_seen: Rc<Cell<u32>>,
    /// When a refresh for a changed epoch last started.
    epoch_refresh_at: Cell<Option<Instant>>,
}

/// The shard-aware client. Cheap to clone (an `Rc`); clones share connections and topology.
/// `!Send`: create it on the executor that uses it.
#[derive(Clone)]
pub struct Client {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("seed_addr", &self.inner.seed_addr)
            .field("topology_version", &self.inner.topo.borrow().resp.version)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the node-level port `addr` (`host:port`) and fetches the topology.
    pub async fn connect(addr: &str, opts: ClientOptions) -> Result<Client, ClientError> {
        opts.validate()?;
        let client = Client {
            inner: Rc::new(Inner {
                seed_addr: addr.to_string(),
                opts,
                topo: RefCell::new(Rc::new(Topo::empty())),
                endpoints: RefCell::new(HashMap::new()),
                next_id: Cell::new(1),
                closed: Cell::new(false),
                refreshing: Cell::new(false),
                epoch_seen: Rc::new(Cell::new(0)),
                epoch_refresh_at: Cell::new(None),
            }),
        };
        client.refresh_topology().await?;
        Ok(client)
    }

    /// Reads `key` at [`ClientOptions::read_consistency`]: its value and version, or `None`
    /// when it is missing or deleted.
    pub async fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Stamp)>, ClientError> {
        self.get_with(key, self.inner.opts.read_consistency).await
    }

    /// Reads `key` once `consistency` replicas (R) answered: the newest value and its version,
    /// or `None` when it is missing or its newest version is a delete. `Count(0)` is refused
    /// unsent; a count above the replication factor is refused by the node
    /// (`InvalidRequest`).
    pub async fn get_with(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<(Vec<u8>, Stamp)>, ClientError> {
        check_len(key.len())?;
        check_consistency(consistency, "read consistency").map_err(ClientError::InvalidRequest)?;
        let req = Req::Get(GetRequest { key: key.to_vec(), consistency });
        let body = self.send(Dest::Key(token_of(key)), &req).await?;
        let archived = msg::access::<ArchivedGetResponse>(&body).map_err(bad_body("get"))?;
        let resp: GetResponse = msg::to_owned(archived).map_err(bad_body("get"))?;
        match (resp.value, resp.stamp) {
            (Some(v), Some(s)) => Ok(Some((v, s))),
            (None, _) => Ok(None),
            (Some(_), None) => {
                Err(ClientError::Protocol("get response has a value but no stamp".into()))
            }
        }
    }

    /// Writes `value` under `key` at [`ClientOptions::write_consistency`]; returns the version
    /// it was stamped with.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Stamp, ClientError> {
        self.put_with(key, value, PutOptions::default()).await
    }

    /// Writes `value` under `key` with a TTL and a consistency (W) of its own, see
    /// [`PutOptions`]; returns the version it was stamped with. A bad TTL or `Count(0)` is
    /// refused with [`ClientError::InvalidRequest`] and nothing is sent.
    pub async fn put_with(
        &self,
        key: &[u8],
        value: &[u8],
        opts: PutOptions,
    ) -> Result<Stamp, ClientError> {
        let ttl_ms = match opts.ttl {
            Some(ttl) => ttl_ms_of(ttl)?,
            None => 0,
        };
        let consistency = opts.consistency.unwrap_or(self.inner.opts.write_consistency);
        self.put_ttl_ms(key, value, ttl_ms, consistency).await
    }

    /// Writes `value` under `key` to live for `ttl`: once that has passed (by the coordinating
    /// node's wall clock, from when it stamped the write) the key reads as missing. `ttl` is
    /// rounded up to whole milliseconds; it must be at least 1 ns and at most
    /// [`TTL_MS_MAX`] ms, else [`ClientError::InvalidRequest`] and nothing is sent. Returns the
    /// version the write was stamped with.
    pub async fn put_with_ttl(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Stamp, ClientError> {
        self.put_with(key, value, PutOptions { ttl: Some(ttl), consistency: None }).await
    }

    async fn put_ttl_ms(
        &self,
        key: &[u8],
        value: &[u8],
        ttl_ms: u64,
        consistency: Consistency,
    ) -> Result<Stamp, ClientError> {
        check_len(key.len().saturating_add(value.len()))?;
        check_consistency(consistency, "write consistency").map_err(ClientError::InvalidRequest)?;
        let req =
            Req::Put(PutRequest { key: key.to_vec(), value: value.to_vec(), ttl_ms, consistency });
        let body = self.send(Dest::Key(token_of(key)), &req).await?;
        decode_write(&body, "put")
    }

    /// Deletes `key` (writes a tombstone) at [`ClientOptions::write_consistency`]; returns the
    /// tombstone's version.
    pub async fn delete(&self, key: &[u8]) -> Result<Stamp, ClientError> {
        self.delete_with(key, self.inner.opts.write_consistency).await
    }

    /// Deletes `key` once `consistency` replicas (W) acknowledged the tombstone; returns its
    /// version. `Count(0)` is refused unsent.
    pub async fn delete_with(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Stamp, ClientError> {
        check_len(key.len())?;
        check_consistency(consistency, "write consistency").map_err(ClientError::InvalidRequest)?;
        let req = Req::Delete(DeleteRequest { key: key.to_vec(), consistency });
        let body = self.send(Dest::Key(token_of(key)), &req).await?;
        decode_write(&body, "delete")
    }

    /// Round trip with no storage work, on shard 0 of the first node (or the `connect` address
    /// when not shard-aware or the topology is empty).
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.send(Dest::Any, &Req::Ping).await.map(|_| ())
    }

    /// Every shard's counters from the node at the `connect` address (whatever the topology
    /// says): the shards that answered within the node's gather timeout, and the ones that did
    /// not in [`StatsResponse::missing`]. The response is checked with
    /// [`StatsResponse::check`].
    pub async fn stats(&self) -> Result<StatsResponse, ClientError> {
        let body = self.send(Dest::Seed, &Req::Stats).await?;
        let archived = msg::access::<ArchivedStatsResponse>(&body).map_err(bad_body("stats"))?;
        let resp: StatsResponse = msg::to_owned(archived).map_err(bad_body("stats"))?;
        resp.check().map_err(|e| ClientError::Protocol(format!("invalid stats response: {e}")))?;
        Ok(resp)
    }

    /// Fetches the topology again: from the `connect` address, else from each known node in
    /// turn. Keeps the old topology when every one fails.
    pub async fn refresh_topology(&self) -> Result<(), ClientError> {
        let inner = &self.inner;
        let mut candidates: Vec<String> = vec![inner.seed_addr.clone()];
        for n in &inner.topo.borrow().resp.nodes {
            if !candidates.contains(&n.addr) {
                candidates.push(n.addr.clone());
            }
        }
        let mut last = ClientError::NoNodes;
        for addr in &candidates {
            match self.fetch_topology(addr).await {
                Ok(topo) => {
                    self.install(topo);
                    return Ok(());
                }
                Err(e) => {
                    if inner.closed.get() {
                        return Err(e);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// The topology last fetched.
    pub fn topology(&self) -> TopologyResponse {
        self.inner.topo.borrow().resp.clone()
    }

    /// Where a request for `key` goes now: `host:port` and the owning shard on the primary. When
    /// not shard-aware the address is the `connect` address (the shard is still the one the node
    /// will forward to); with an empty topology it is the `connect` address and shard 0.
    pub fn route(&self, key: &[u8]) -> (String, u16) {
        let topo = self.inner.topo.borrow().clone();
        match topo.target(token_of(key), 0) {
            Some((addr, shard)) if self.inner.opts.shard_aware => (addr.to_string(), shard),
            Some((_, shard)) => (self.inner.seed_addr.clone(), shard),
            None => (self.inner.seed_addr.clone(), 0),
        }
    }

    /// Closes every connection; requests in flight fail with an I/O error, and later calls fail
    /// at once. Queued frames not yet written are dropped.
    pub async fn close(&self) {
        self.inner.closed.set(true);
        let endpoints: Vec<Rc<Endpoint>> =
            self.inner.endpoints.borrow_mut().drain().map(|(_, e)| e).collect();
        for ep in endpoints {
            ep.connecting.close();
            let conn = ep.conn.borrow_mut().take();
            if let Some(conn) = conn {
                conn.shutdown(Failure::Io(io::ErrorKind::NotConnected, "client closed".into()))
                    .await;
            }
        }
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Io {
            addr: self.inner.seed_addr.clone(),
            source: io::Error::new(io::ErrorKind::NotConnected, "client closed"),
        }
    }

    /// Sends `req` with retries: each attempt routes anew (a refreshed topology applies, and
    /// after a connection error or a timeout the next replica is tried).
    async fn send(&self, dest: Dest, req: &Req) -> Result<AlignedVec, ClientError> {
        let opts = &self.inner.opts;
        let mut attempt: u32 = 0;
        let mut skip: usize = 0;
        loop {
            if self.inner.closed.get() {
                return Err(self.closed_error());
            }
            let topo = self.inner.topo.borrow().clone();
            let addr = self.addr_for(&topo, dest, skip)?;
            let result = self.attempt(addr, req).await;
            let err = match result {
                Ok(body) => {
                    self.follow_epoch(&topo);
                    return Ok(body);
                }
                Err(e) => e,
            };
            if attempt >= opts.retries || !err.is_retryable() || self.inner.closed.get() {
                return Err(err);
            }
            // A timeout is treated like a connection error: the replica may be stopped or cut
            // off (its connection was failed if it is stalled), so try the next one.
            if matches!(err, ClientError::Io { .. } | ClientError::Timeout { .. }) {
                skip = skip.wrapping_add(1);
                // Best effort: a failed refresh keeps the old topology, and the retry goes on.
                if !self.inner.refreshing.replace(true) {
                    let _reset = ResetOnDrop(&self.inner.refreshing);
                    let _ = self.refresh_topology().await;
                }
            }
            let backoff =
                BACKOFF_MS.get(attempt as usize).or(BACKOFF_MS.last()).copied().unwrap_or(10);
            glommio::timer::sleep(Duration::from_millis(backoff)).await;
            attempt += 1;
        }
    }

    /// Starts a topology refresh in the background when responses carry another epoch than
    /// the topology held (a node joined, left or changed state), at most once per
    /// [`EPOCH_REFRESH_INTERVAL`] (nodes that have not yet heard of a change answer with the
    /// old epoch meanwhile).
    fn follow_epoch(&self, topo: &Topo) {
        let seen = self.inner.epoch_seen.get();
        if seen == 0 || seen == crate::frame::topology_epoch_of(topo.resp.version) {
            return;
        }
        if self.inner.refreshing.get()
            || self
                .inner
                .epoch_refresh_at
                .get()
                .is_some_and(|t| t.elapsed() < EPOCH_REFRESH_INTERVAL)
        {
            return;
        }
        self.inner.epoch_refresh_at.set(Some(Instant::now()));
        self.inner.refreshing.set(true);
        let client = self.clone();
        glommio::spawn_local(async move {
            let _reset = ResetOnDrop(&client.inner.refreshing);
            client.refresh_toward(seen).await;
        })
        .detach();
    }

    /// Fetches the topology from the seed, then the other nodes, until one serves the topology
    /// of `epoch` (nodes that have not heard of a change serve an older one); installs each
    /// newer one it finds. Best effort: failures keep what the client has.
    async fn refresh_toward(&self, epoch: u32) {
        let mut candidates: Vec<String> = vec![self.inner.seed_addr.clone()];
        for n in &self.inner.topo.borrow().resp.nodes {
            if !candidates.contains(&n.addr) {
                candidates.push(n.addr.clone());
            }
        }
        for addr in &candidates {
            if self.inner.closed.get() {
                return;
            }
            if let Ok(topo) = self.fetch_topology(addr).await {
                let version = topo.version;
                self.install(topo);
                if crate::frame::topology_epoch_of(version) == epoch {
                    return;
                }
            }
        }
    }

    fn addr_for<'t>(
        &'t self,
        topo: &'t Topo,
        dest: Dest,
        skip: usize,
    ) -> Result<&'t str, ClientError> {
        if !self.inner.opts.shard_aware || matches!(dest, Dest::Seed) {
            return Ok(&self.inner.seed_addr);
        }
        match dest {
            Dest::Key(token) => {
                topo.target(token, skip).map(|(a, _)| a).ok_or(ClientError::NoNodes)
            }
            Dest::Any => Ok(topo
                .shard_addrs
                .first()
                .and_then(|s| s.first())
                .map(String::as_str)
                .or_else(|| topo.resp.nodes.first().map(|n| n.addr.as_str()))
                .unwrap_or(&self.inner.seed_addr)),
            Dest::Seed => Ok(&self.inner.seed_addr),
        }
    }

    /// One attempt, bounded by the request timeout: get the connection, send, wait, check the
    /// response's opcode. Returns the response body. On timeout, fails the connection if it is
    /// stalled (see `Shared::fail_if_stalled`), so the next attempt reconnects.
    async fn attempt(&self, addr: &str, req: &Req) -> Result<AlignedVec, ClientError> {
        let after = self.inner.opts.request_timeout;
        let started = Instant::now();
        let used: RefCell<Option<Rc<Shared>>> = RefCell::new(None);
        let work = async { Ok(self.attempt_untimed(addr, req, started, &used).await) };
        match glommio::timer::timeout(after, work).await {
            Ok(result) => result,
            Err(GlommioError::TimedOut(_)) => {
                if let Some(shared) = used.borrow_mut().take() {
                    shared.fail_if_stalled(after);
                }
                Err(ClientError::Timeout { after })
            }
            Err(e) => Err(ClientError::Io { addr: addr.to_string(), source: e.into() }),
        }
    }

    async fn attempt_untimed(
        &self,
        addr: &str,
        req: &Req,
        started: Instant,
        used: &RefCell<Option<Rc<Shared>>>,
    ) -> Result<AlignedVec, ClientError> {
        let shared = self.connection(addr).await?;
        *used.borrow_mut() = Some(shared.clone());
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id.wrapping_add(1));
        let frame = shared.call(id, started, |out| req.encode(out, id)).await?;
        let want = req.opcode();
        match frame.header.opcode {
            op if op == want => Ok(frame.body),
            Opcode::Error => Err(decode_error(&frame.body)),
            other => Err(ClientError::Protocol(format!(
                "{}: expected a {want:?} response, got {other:?}",
                shared.addr()
            ))),
        }
    }

    /// The live connection to `addr`, connecting (once, however many tasks ask) if needed.
    async fn connection(&self, addr: &str) -> Result<Rc<Shared>, ClientError> {
        let inner = &self.inner;
        if inner.closed.get() {
            return Err(self.closed_error());
        }
        let existing = inner.endpoints.borrow().get(addr).cloned();
        let ep = match existing {
            Some(ep) => ep,
            None => {
                let ep =
                    Rc::new(Endpoint { conn: RefCell::new(None), connecting: Semaphore::new(1) });
                inner.endpoints.borrow_mut().insert(addr.to_string(), ep.clone());
                ep
            }
        };
        if let Some(s) = ep.live() {
            return Ok(s);
        }
        let Ok(_turn) = ep.connecting.acquire_permit(1).await else {
            return Err(self.closed_error());
        };
        if let Some(s) = ep.live() {
            return Ok(s);
        }
        let o = &inner.opts;
        let conn = Conn::connect(
            addr,
            o.connect_timeout,
            o.inflight_max_per_connection,
            o.frame_body_bytes_max,
            inner.epoch_seen.clone(),
        )
        .await?;
        if inner.closed.get() {
            return Err(self.closed_error());
        }
        let shared = conn.shared.clone();
        // Replacing a dead connection drops it here, which cancels its tasks.
        let old = ep.conn.borrow_mut().replace(conn);
        drop(old);
        Ok(shared)
    }

    async fn fetch_topology(&self, addr: &str) -> Result<TopologyResponse, ClientError> {
        let body = self.attempt(addr, &Req::Topology).await?;
        let archived =
            msg::access::<ArchivedTopologyResponse>(&body).map_err(bad_body("topology"))?;
        let resp: TopologyResponse = msg::to_owned(archived).map_err(bad_body("topology"))?;
        Topo::validate(&resp)?;
        Ok(resp)
    }

    /// Installs a new topology and drops connections to addresses it no longer lists. An older
    /// one than the client holds (from a node that has not heard of a change) is ignored:
    /// versions only grow.
    fn install(&self, resp: TopologyResponse) {
        if resp.version < self.inner.topo.borrow().resp.version {
            return;
        }
        let topo = Rc::new(Topo::build(resp));
        let keep = topo.addrs();
        let stale: Vec<Rc<Endpoint>> = {
            let mut eps = self.inner.endpoints.borrow_mut();
            let gone: Vec<String> = eps
                .keys()
                .filter(|a| a.as_str() != self.inner.seed_addr && !keep.contains(a.as_str()))
                .cloned()
                .collect();
            gone.iter().filter_map(|a| eps.remove(a)).collect()
        };
        *self.inner.topo.borrow_mut() = topo.clone();
        // Dropped outside the borrow: dropping a connection fails its requests, which run later.
        drop(stale);
    }
}

/// Clears a flag when dropped, also when the future holding it is dropped mid-way.
struct ResetOnDrop<'a>(&'a Cell<bool>);

impl Drop for ResetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// `ttl` in whole milliseconds, rounded up (so a short TTL never becomes 0, "no expiry").
fn ttl_ms_of(ttl: Duration) -> Result<u64, ClientError> {
    let ms = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(ClientError::InvalidRequest(
            "a TTL must be positive (use put for a value that never expires)".into(),
        ));
    }
    if ms > TTL_MS_MAX {
        return Err(ClientError::InvalidRequest(format!(
            "TTL of {ms} ms exceeds the maximum of {TTL_MS_MAX} ms (10 years)"
        )));
    }
    Ok(ms)
}

fn check_len(len: usize) -> Result<(), ClientError> {
    if len > FRAME_BODY_BYTES_MAX as usize {
        return Err(ClientError::TooLarge { len, max: FRAME_BODY_BYTES_MAX });
    }
    Ok(())
}

fn bad_body(what: &'static str) -> impl Fn(msg::MsgError) -> ClientError {
    move |e| ClientError::Protocol(format!("invalid {what} response body: {e}"))
}

fn decode_write(body: &AlignedVec, what: &'static str) -> Result<Stamp, ClientError> {
    let archived = msg::access::<ArchivedWriteResponse>(body).map_err(bad_body(what))?;
    let resp: WriteResponse = msg::to_owned(archived).map_err(bad_body(what))?;
    Ok(resp.stamp)
}

fn decode_error(body: &AlignedVec) -> ClientError {
    if body.is_empty() {
        // `msg::write_error` falls back to an empty body if it cannot serialize the message.
        return ClientError::Server {
            code: ErrorCode::Internal,
            message: "(no message)".into(),
            detail: ErrorDetail::None,
        };
    }
    match msg::access::<ArchivedErrorResponse>(body) {
        Ok(e) => ClientError::Server {
            code: ErrorCode::from_u16(e.code.to_native()),
            message: e.message.as_str().to_string(),
            detail: e.detail.to_native(),
        },
        Err(e) => ClientError::Protocol(format!("invalid error response body: {e}")),
    }
}
