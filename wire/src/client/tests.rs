//! Goal: the client's routing, pipelining, timeouts, retries and its handling of bad servers.
//!
//! Method: each test runs one glommio executor holding both the client and a fake node: one or
//! more `TcpListener`s on 127.0.0.1:0 that answer Topology with a topology pointing at
//! themselves, keep puts in a `HashMap`, and misbehave on demand (answer in reverse order,
//! never answer, close the connection, send garbage, send error frames, accept a connection and
//! never read from it, as a SIGSTOPped or partitioned server does). Shard listeners
//! refuse keys that `shard_of` does not map to them, so a successful request proves routing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::LocalExecutorBuilder;

use super::*;
use crate::frame::{FrameError, FrameHeader};
use crate::msg::{ArchivedDeleteRequest, ArchivedGetRequest, ArchivedPutRequest};
use crate::placement::vnode_tokens;

/// Runs `make()` to completion on a fresh glommio executor.
fn run<F, Fut>(make: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .spawn(make)
        .expect("spawn executor")
        .join()
        .expect("executor thread");
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    /// Hold data responses until this many are held, then send them newest first.
    Reverse(usize),
    /// Never answer data requests.
    Silent,
    /// Answer data requests with bytes that are not a frame.
    Garbage,
    /// Answer with a valid header and a body that is not an archive.
    BadBody,
    /// Answer a get with a Put response.
    WrongOpcode,
}

/// A listener's part: the node-level port (takes any key) or shard `index` of `count`.
#[derive(Clone, Copy, Debug)]
enum Role {
    Node,
    Shard { index: u16, count: u16 },
}

enum Action {
    /// A well-formed response (held back in Reverse mode when `data`).
    Reply {
        bytes: Vec<u8>,
        data: bool,
    },
    Raw(Vec<u8>),
    Silent,
    Close,
}

type Store = HashMap<Vec<u8>, (Vec<u8>, Stamp)>;

struct State {
    store: RefCell<Store>,
    hlc: Cell<u64>,
    mode: Cell<Mode>,
    /// Close the connection instead of answering the next this-many data requests.
    closes_left: Cell<u32>,
    accepts: Cell<usize>,
    /// Data requests received per listener port.
    data_requests: RefCell<HashMap<u16, usize>>,
    /// Most request frames cut out of a single read.
    frames_per_read_max: Cell<usize>,
    topo: RefCell<TopologyResponse>,
    /// Raw bytes to answer the next data request with, overriding `mode`.
    next_raw: RefCell<Option<Vec<u8>>>,
    /// Never read from (nor answer on) the next this-many connections to shard ports.
    mute_accepts: Cell<usize>,
    /// The connections muted so far, held open.
    muted: RefCell<Vec<TcpStream>>,
    /// The ports Stats requests arrived on.
    stats_ports: RefCell<Vec<u16>>,
    /// The answer to a Stats request (default: one `keys` counter per shard).
    stats_reply: RefCell<Option<StatsResponse>>,
    /// `ttl_ms` of the last put received.
    last_ttl_ms: Cell<Option<u64>>,
    /// Opcode and consistency of the last data request received.
    last_consistency: Cell<Option<(Opcode, Consistency)>>,
    /// The topology epoch stamped on every response (0: none).
    epoch: Cell<u32>,
    /// Topology requests received.
    topology_requests: Cell<usize>,
}

impl State {
    fn data_total(&self) -> usize {
        self.data_requests.borrow().values().sum()
    }

    fn data_at(&self, port: u16) -> usize {
        self.data_requests.borrow().get(&port).copied().unwrap_or(0)
    }

    fn handle(&self, port: u16, role: Role, h: FrameHeader, body: &AlignedVec) -> Action {
        let id = h.request_id;
        let mut out = Vec::new();
        match h.opcode {
            Opcode::Topology => {
                self.topology_requests.set(self.topology_requests.get() + 1);
                msg::write_frame(&mut out, Opcode::Topology, true, id, &*self.topo.borrow())
                    .unwrap();
                return Action::Reply { bytes: out, data: false };
            }
            Opcode::Ping => {
                msg::write_empty_frame(&mut out, Opcode::Ping, true, id);
                return Action::Reply { bytes: out, data: false };
            }
            Opcode::Stats => {
                self.stats_ports.borrow_mut().push(port);
                let reply = self.stats_reply.borrow().clone().unwrap_or_else(|| {
                    let shards = self.topo.borrow().nodes[0].shard_ports.len() as u32;
                    let keys = self.store.borrow().len() as u64;
                    StatsResponse {
                        node_id: 1,
                        shard_count: shards,
                        shards: (0..shards)
                            .map(|shard| ShardStats {
                                shard,
                                counters: vec![Counter { name: "keys".into(), value: keys }],
                            })
                            .collect(),
                        missing: Vec::new(),
                    }
                });
                msg::write_frame(&mut out, Opcode::Stats, true, id, &reply).unwrap();
                return Action::Reply { bytes: out, data: false };
            }
            _ => {}
        }
        *self.data_requests.borrow_mut().entry(port).or_insert(0) += 1;
        if self.closes_left.get() > 0 {
            self.closes_left.set(self.closes_left.get() - 1);
            return Action::Close;
        }
        if let Some(raw) = self.next_raw.borrow_mut().take() {
            return Action::Raw(raw);
        }
        match self.mode.get() {
            Mode::Silent => return Action::Silent,
            Mode::Garbage => {
                return Action::Raw(b"HTTP/1.1 400 Bad Request\r\n\r\nnot a kvs frame".to_vec())
            }
            Mode::BadBody => {
                let mut raw = FrameHeader::response(h.opcode, id, 16).encode().to_vec();
                raw.extend_from_slice(&[0xAB; 16]);
                return Action::Raw(raw);
            }
            Mode::WrongOpcode => {
                let resp = WriteResponse { stamp: Stamp::default() };
                msg::write_frame(&mut out, Opcode::Put, true, id, &resp).unwrap();
                return Action::Raw(out);
            }
            Mode::Normal | Mode::Reverse(_) => {}
        }
        let (key, consistency): (Vec<u8>, Consistency) = match h.opcode {
            Opcode::Get => {
                let a = msg::access::<ArchivedGetRequest>(body).unwrap();
                (a.key.as_slice().to_vec(), a.consistency.to_native())
            }
            Opcode::Put => {
                let a = msg::access::<ArchivedPutRequest>(body).unwrap();
                (a.key.as_slice().to_vec(), a.consistency.to_native())
            }
            Opcode::Delete => {
                let a = msg::access::<ArchivedDeleteRequest>(body).unwrap();
                (a.key.as_slice().to_vec(), a.consistency.to_native())
            }
            other => panic!("unexpected opcode {other:?}"),
        };
        self.last_consistency.set(Some((h.opcode, consistency)));
        if key.starts_with(b"mute") {
            return Action::Silent;
        }
        // "down-" keys answer as a coordinator that finds too few replicas alive, "slow-" keys
        // as one whose replicas did not acknowledge in time.
        if key.starts_with(b"down-") {
            msg::write_error_detail(
                &mut out,
                id,
                ErrorCode::Unavailable,
                ErrorDetail::Unavailable { needed: 2, alive: 1 },
                "not enough replicas alive",
            );
            return Action::Reply { bytes: out, data: true };
        }
        if key.starts_with(b"slow-") {
            msg::write_error_detail(
                &mut out,
                id,
                ErrorCode::Timeout,
                ErrorDetail::Timeout { acknowledged: 1, needed: 2 },
                "",
            );
            return Action::Reply { bytes: out, data: true };
        }
        let error = if key.starts_with(b"bad") {
            Some(ErrorCode::InvalidRequest)
        } else if key.starts_with(b"busy") {
            Some(ErrorCode::Overloaded)
        } else if let Role::Shard { index, count } = role {
            (shard_of(token_of(&key), count).0 != index).then_some(ErrorCode::InvalidRequest)
        } else {
            None
        };
        if let Some(code) = error {
            msg::write_error(
                &mut out,
                id,
                code,
                format!("refused key {}", String::from_utf8_lossy(&key)),
            );
            return Action::Reply { bytes: out, data: true };
        }
        self.hlc.set(self.hlc.get() + 1);
        let stamp = Stamp { hlc: self.hlc.get(), node: 1 };
        match h.opcode {
            Opcode::Get => {
                let found = self.store.borrow().get(&key).cloned();
                let resp = GetResponse {
                    value: found.as_ref().map(|f| f.0.clone()),
                    stamp: found.map(|f| f.1),
                };
                msg::write_frame(&mut out, Opcode::Get, true, id, &resp).unwrap();
            }
            Opcode::Put => {
                let a = msg::access::<ArchivedPutRequest>(body).unwrap();
                self.last_ttl_ms.set(Some(a.ttl_ms.to_native()));
                self.store.borrow_mut().insert(key, (a.value.as_slice().to_vec(), stamp));
                msg::write_frame(&mut out, Opcode::Put, true, id, &WriteResponse { stamp })
                    .unwrap();
            }
            _ => {
                self.store.borrow_mut().remove(&key);
                msg::write_frame(&mut out, Opcode::Delete, true, id, &WriteResponse { stamp })
                    .unwrap();
            }
        }
        Action::Reply { bytes: out, data: true }
    }
}

async fn serve(state: Rc<State>, listener: TcpListener, role: Role) {
    let port = listener.local_addr().unwrap().port();
    while let Ok(stream) = listener.accept().await {
        state.accepts.set(state.accepts.get() + 1);
        if matches!(role, Role::Shard { .. }) && state.mute_accepts.get() > 0 {
            state.mute_accepts.set(state.mute_accepts.get() - 1);
            state.muted.borrow_mut().push(stream);
            continue;
        }
        glommio::spawn_local(serve_conn(state.clone(), stream, port, role)).detach();
    }
}

async fn serve_conn(state: Rc<State>, mut stream: TcpStream, port: u16, role: Role) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        let mut frames = 0;
        loop {
            let h = match FrameHeader::decode(&buf, FRAME_BODY_BYTES_MAX) {
                Ok(h) => h,
                Err(FrameError::Incomplete { .. }) => break,
                Err(e) => panic!("client sent a bad frame: {e}"),
            };
            let total = FRAME_HEADER_BYTES + h.body_len as usize;
            if buf.len() < total {
                break;
            }
            let mut body = AlignedVec::new();
            body.extend_from_slice(&buf[FRAME_HEADER_BYTES..total]);
            buf.drain(..total);
            frames += 1;
            match state.handle(port, role, h, &body) {
                Action::Reply { bytes, data: true } => {
                    if let Mode::Reverse(k) = state.mode.get() {
                        held.push(bytes);
                        if held.len() >= k {
                            for r in held.drain(..).rev() {
                                out.extend_from_slice(&r);
                            }
                        }
                    } else {
                        out.extend_from_slice(&bytes);
                    }
                }
                Action::Reply { bytes, data: false } | Action::Raw(bytes) => {
                    out.extend_from_slice(&bytes)
                }
                Action::Silent => {}
                Action::Close => return,
            }
        }
        state.frames_per_read_max.set(state.frames_per_read_max.get().max(frames));
        crate::frame::stamp_topology_epoch(&mut out, state.epoch.get());
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A fake node: `node_port` answers anything; `shard_ports` check that keys belong to them.
struct Fake {
    state: Rc<State>,
    node_port: u16,
    shard_ports: Vec<u16>,
}

impl Fake {
    /// One listener that is both the node-level port and every one of `shards` shard ports.
    fn single(shards: usize) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = Fake::with_ports(port, vec![port; shards]);
        glommio::spawn_local(serve(fake.state.clone(), listener, Role::Node)).detach();
        fake
    }

    /// A node-level listener plus one listener per shard.
    fn sharded(shards: u16) -> Fake {
        let node = TcpListener::bind("127.0.0.1:0").unwrap();
        let node_port = node.local_addr().unwrap().port();
        let mut shard_listeners = Vec::new();
        for _ in 0..shards {
            shard_listeners.push(TcpListener::bind("127.0.0.1:0").unwrap());
        }
        let ports = shard_listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        let fake = Fake::with_ports(node_port, ports);
        glommio::spawn_local(serve(fake.state.clone(), node, Role::Node)).detach();
        for (index, l) in (0u16..).zip(shard_listeners) {
            glommio::spawn_local(serve(
                fake.state.clone(),
                l,
                Role::Shard { index, count: shards },
            ))
            .detach();
        }
        fake
    }

    fn with_ports(node_port: u16, shard_ports: Vec<u16>) -> Fake {
        let topo = TopologyResponse {
            version: 1,
            self_id: 1,
            replication_factor: 1,
            nodes: vec![NodeInfo {
                id: 1,
                addr: format!("127.0.0.1:{node_port}"),
                shard_ports: shard_ports.clone(),
                tokens: vnode_tokens(NodeId(1), 16).into_iter().map(|t| t.0).collect(),
                status: crate::msg::NodeStatus::Up,
            }],
        };
        let state = Rc::new(State {
            store: RefCell::new(HashMap::new()),
            hlc: Cell::new(0),
            mode: Cell::new(Mode::Normal),
            closes_left: Cell::new(0),
            accepts: Cell::new(0),
            data_requests: RefCell::new(HashMap::new()),
            frames_per_read_max: Cell::new(0),
            topo: RefCell::new(topo),
            next_raw: RefCell::new(None),
            mute_accepts: Cell::new(0),
            muted: RefCell::new(Vec::new()),
            stats_ports: RefCell::new(Vec::new()),
            stats_reply: RefCell::new(None),
            last_ttl_ms: Cell::new(None),
            last_consistency: Cell::new(None),
            epoch: Cell::new(0),
            topology_requests: Cell::new(0),
        });
        Fake { state, node_port, shard_ports }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.node_port)
    }

    async fn client(&self, opts: ClientOptions) -> Client {
        Client::connect(&self.addr(), opts).await.unwrap()
    }
}

fn quick() -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_millis(500), ..ClientOptions::default() }
}

/// Stats goes to the `connect` address (the node-level port), not to a shard, and its answer is
/// checked beyond rkyv validation.
#[test]
fn stats_asks_the_connect_address() {
    run(|| async {
        let fake = Fake::sharded(3);
        let c = fake.client(quick()).await;
        c.put(b"k", b"v").await.unwrap();
        let stats = c.stats().await.unwrap();
        assert_eq!(*fake.state.stats_ports.borrow(), vec![fake.node_port]);
        assert_eq!((stats.node_id, stats.shard_count, stats.shards.len()), (1, 3, 3));
        assert_eq!(stats.shards[2].counters, vec![Counter { name: "keys".into(), value: 1 }]);

        let mut twice = stats.clone();
        twice.missing = vec![0];
        *fake.state.stats_reply.borrow_mut() = Some(twice);
        match c.stats().await {
            Err(ClientError::Protocol(m)) => assert!(m.contains("twice"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
        c.close().await;
    });
}

/// A response whose topology epoch differs from the client's topology makes the client fetch
/// the topology again, in the background and at most once per interval.
#[test]
fn a_changed_topology_epoch_in_responses_refreshes_the_topology() {
    run(|| async {
        let fake = Fake::single(1);
        let v1 = fake.state.topo.borrow().version;
        fake.state.epoch.set(crate::frame::topology_epoch_of(v1));
        let c = fake.client(quick()).await;
        let fetched = fake.state.topology_requests.get();
        c.put(b"k", b"v").await.unwrap();
        glommio::timer::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.state.topology_requests.get(), fetched, "same epoch: no refresh");
        // The node's topology moves on: the next response says so.
        fake.state.topo.borrow_mut().version = v1 + 4;
        fake.state.epoch.set(crate::frame::topology_epoch_of(v1 + 4));
        c.put(b"k", b"v2").await.unwrap();
        c.put(b"k", b"v3").await.unwrap();
        for _ in 0..100 {
            if c.topology().version == v1 + 4 {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(c.topology().version, v1 + 4);
        assert_eq!(fake.state.topology_requests.get(), fetched + 1, "one refresh");
        c.close().await;
    });
}

#[test]
fn round_trip() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        assert_eq!(c.topology(), *fake.state.topo.borrow());
        c.ping().await.unwrap();
        assert_eq!(c.get(b"k").await.unwrap(), None);
        let s1 = c.put(b"k", b"v1").await.unwrap();
        let (v, s) = c.get(b"k").await.unwrap().unwrap();
        assert_eq!((v.as_slice(), s), (&b"v1"[..], s1));
        let s2 = c.put(b"k", &vec![7u8; 300_000]).await.unwrap();
        assert!(s2 > s1);
        assert_eq!(c.get(b"k").await.unwrap().unwrap().0, vec![7u8; 300_000]);
        let s3 = c.delete(b"k").await.unwrap();
        assert!(s3 > s2);
        assert_eq!(c.get(b"k").await.unwrap(), None);
        c.refresh_topology().await.unwrap();
        assert_eq!(fake.state.accepts.get(), 1, "topology, ping and data share one connection");
        c.close().await;
        assert!(matches!(c.get(b"k").await, Err(ClientError::Io { .. })));
    });
}

#[test]
fn put_with_ttl_sends_whole_milliseconds_and_refuses_bad_ttls_unsent() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        c.put(b"k", b"v").await.unwrap();
        assert_eq!(fake.state.last_ttl_ms.get(), Some(0), "a plain put never expires");
        c.put_with_ttl(b"k", b"v", Duration::from_secs(90)).await.unwrap();
        assert_eq!(fake.state.last_ttl_ms.get(), Some(90_000));
        // Rounded up: a sub-millisecond TTL must not become 0 ("never").
        c.put_with_ttl(b"k", b"v", Duration::from_micros(1_500)).await.unwrap();
        assert_eq!(fake.state.last_ttl_ms.get(), Some(2));
        c.put_with_ttl(b"k", b"v", Duration::from_nanos(1)).await.unwrap();
        assert_eq!(fake.state.last_ttl_ms.get(), Some(1));
        c.put_with_ttl(b"k", b"v", Duration::from_millis(TTL_MS_MAX)).await.unwrap();
        assert_eq!(fake.state.last_ttl_ms.get(), Some(TTL_MS_MAX));
        let sent = fake.state.data_total();
        for bad in [Duration::ZERO, Duration::from_millis(TTL_MS_MAX + 1), Duration::MAX] {
            let err = c.put_with_ttl(b"k", b"v", bad).await.unwrap_err();
            assert!(matches!(err, ClientError::InvalidRequest(_)), "{bad:?}: {err:?}");
            assert_eq!(err.code(), ErrorCode::InvalidRequest);
        }
        assert_eq!(fake.state.data_total(), sent, "refused TTLs are not sent");
        c.close().await;
    });
}

/// Requests carry the client's default consistency unless they name their own; a count of 0
/// is refused before anything is sent, in options and per request.
#[test]
fn consistency_goes_on_the_wire_per_request_and_by_default() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        let last = || fake.state.last_consistency.get();
        c.put(b"k", b"v").await.unwrap();
        assert_eq!(last(), Some((Opcode::Put, Consistency::Default)));
        c.get(b"k").await.unwrap();
        assert_eq!(last(), Some((Opcode::Get, Consistency::Default)));
        c.get_with(b"k", Consistency::All).await.unwrap();
        assert_eq!(last(), Some((Opcode::Get, Consistency::All)));
        let opts =
            PutOptions { ttl: Some(Duration::from_secs(5)), consistency: Some(Consistency::One) };
        c.put_with(b"k", b"v", opts).await.unwrap();
        assert_eq!(last(), Some((Opcode::Put, Consistency::One)));
        assert_eq!(fake.state.last_ttl_ms.get(), Some(5000));
        c.delete_with(b"k", Consistency::Count(3)).await.unwrap();
        assert_eq!(last(), Some((Opcode::Delete, Consistency::Count(3))));
        c.close().await;

        let c = fake
            .client(ClientOptions {
                read_consistency: Consistency::Quorum,
                write_consistency: Consistency::Count(2),
                ..quick()
            })
            .await;
        c.get(b"k").await.unwrap();
        assert_eq!(last(), Some((Opcode::Get, Consistency::Quorum)));
        c.put_with_ttl(b"k", b"v", Duration::from_secs(1)).await.unwrap();
        assert_eq!(last(), Some((Opcode::Put, Consistency::Count(2))));
        c.delete(b"k").await.unwrap();
        assert_eq!(last(), Some((Opcode::Delete, Consistency::Count(2))));

        let sent = fake.state.data_total();
        let zero = Consistency::Count(0);
        let errors = [
            c.get_with(b"k", zero).await.unwrap_err(),
            c.put_with(b"k", b"v", PutOptions { ttl: None, consistency: Some(zero) })
                .await
                .unwrap_err(),
            c.delete_with(b"k", zero).await.unwrap_err(),
        ];
        for err in errors {
            assert!(
                matches!(&err, ClientError::InvalidRequest(m) if m.contains("count of 0")),
                "{err:?}"
            );
        }
        assert_eq!(fake.state.data_total(), sent, "a count of 0 is not sent");
        c.close().await;

        for bad in [
            ClientOptions { read_consistency: zero, ..quick() },
            ClientOptions { write_consistency: zero, ..quick() },
        ] {
            let err = Client::connect(&fake.addr(), bad).await.unwrap_err();
            assert!(matches!(err, ClientError::InvalidOptions(_)), "{err:?}");
        }
    });
}

/// `Unavailable` and `Timeout` answers keep their replica counts, print them, and are not
/// retried (the coordinator already asked every replica).
#[test]
fn unavailable_and_timeout_details_surface_and_are_not_retried() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        let err = c.put(b"down-1", b"v").await.unwrap_err();
        match &err {
            ClientError::Server { code, detail, .. } => {
                assert_eq!(*code, ErrorCode::Unavailable);
                assert_eq!(*detail, ErrorDetail::Unavailable { needed: 2, alive: 1 });
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "server error Unavailable: needed 2, alive 1: not enough replicas alive"
        );
        assert_eq!(fake.state.data_total(), 1, "Unavailable is not retried");

        let err = c.get(b"slow-1").await.unwrap_err();
        assert!(matches!(
            err,
            ClientError::Server {
                code: ErrorCode::Timeout,
                detail: ErrorDetail::Timeout { acknowledged: 1, needed: 2 },
                ..
            }
        ));
        assert_eq!(err.code(), ErrorCode::Timeout);
        assert_eq!(err.to_string(), "server error Timeout: 1 of 2 acknowledged");
        assert_eq!(fake.state.data_total(), 2, "a replica Timeout is not retried");
        c.close().await;
    });
}

#[test]
fn pipelines_200_concurrent_requests_on_one_connection() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let c = c.clone();
                glommio::spawn_local(async move {
                    let key = format!("key-{i}");
                    let value = format!("value-{i}").repeat(i as usize % 7 + 1);
                    let stamp = c.put(key.as_bytes(), value.as_bytes()).await.unwrap();
                    let (got, got_stamp) = c.get(key.as_bytes()).await.unwrap().unwrap();
                    assert_eq!(got, value.as_bytes());
                    assert_eq!(got_stamp, stamp);
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        assert_eq!(fake.state.data_total(), 400);
        assert_eq!(fake.state.accepts.get(), 1, "one connection for everything");
        assert!(
            fake.state.frames_per_read_max.get() > 1,
            "requests should be batched into shared writes"
        );
    });
}

#[test]
fn out_of_order_responses_are_matched_by_id() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        for i in 0..10 {
            c.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).await.unwrap();
        }
        fake.state.mode.set(Mode::Reverse(10));
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let c = c.clone();
                glommio::spawn_local(async move {
                    let got = c.get(format!("k{i}").as_bytes()).await.unwrap().unwrap().0;
                    assert_eq!(got, format!("v{i}").into_bytes());
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
    });
}

#[test]
fn timeout_fires_on_a_silent_server() {
    run(|| async {
        let fake = Fake::single(1);
        let opts =
            ClientOptions { request_timeout: Duration::from_millis(100), retries: 0, ..quick() };
        let c = fake.client(opts).await;
        fake.state.mode.set(Mode::Silent);
        let t0 = Instant::now();
        let err = c.get(b"k").await.unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout { after } if after == Duration::from_millis(100)),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::Timeout);
        assert!(t0.elapsed() >= Duration::from_millis(100));

        // Timeouts are retried: one more attempt, after a backoff.
        let opts =
            ClientOptions { request_timeout: Duration::from_millis(100), retries: 1, ..quick() };
        let c = fake.client(opts).await;
        let before = fake.state.data_total();
        let t0 = Instant::now();
        assert!(matches!(c.put(b"k", b"v").await, Err(ClientError::Timeout { .. })));
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(fake.state.data_total() - before, 2);
    });
}

#[test]
fn inflight_bound_makes_requests_wait() {
    run(|| async {
        let fake = Fake::single(1);
        let opts = ClientOptions {
            request_timeout: Duration::from_millis(150),
            retries: 0,
            inflight_max_per_connection: 2,
            ..quick()
        };
        let c = fake.client(opts).await;
        fake.state.mode.set(Mode::Silent);
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let c = c.clone();
                glommio::spawn_local(async move { c.get(format!("k{i}").as_bytes()).await })
            })
            .collect();
        for t in tasks {
            assert!(matches!(t.await, Err(ClientError::Timeout { .. })));
        }
        assert_eq!(fake.state.data_total(), 2, "only two requests may be in flight");
        // The slots are free again once the requests gave up.
        fake.state.mode.set(Mode::Normal);
        c.put(b"k", b"v").await.unwrap();
    });
}

#[test]
fn server_error_frames_surface_with_their_code() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        let err = c.put(b"bad-key", b"v").await.unwrap_err();
        match &err {
            ClientError::Server { code, message, .. } => {
                assert_eq!(*code, ErrorCode::InvalidRequest);
                assert!(message.contains("bad-key"), "{message}");
            }
            other => panic!("expected a server error, got {other:?}"),
        }
        assert_eq!(err.code(), ErrorCode::InvalidRequest);
        assert_eq!(fake.state.data_total(), 1, "InvalidRequest is not retried");

        let err = c.get(b"busy-key").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::Overloaded);
        assert_eq!(fake.state.data_total(), 1 + 3, "Overloaded is retried twice");

        // An error frame with an empty body (the server's fallback) still maps to a code.
        let mut raw = Vec::new();
        msg::write_empty_frame(&mut raw, Opcode::Error, true, c.inner.next_id.get());
        *fake.state.next_raw.borrow_mut() = Some(raw);
        assert_eq!(c.get(b"k").await.unwrap_err().code(), ErrorCode::Internal);
        assert_eq!(fake.state.accepts.get(), 1, "error frames leave the connection up");
    });
}

#[test]
fn closed_connection_fails_then_reconnects() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(ClientOptions { retries: 0, ..quick() }).await;
        fake.state.closes_left.set(1);
        let err = c.put(b"k", b"v").await.unwrap_err();
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
        assert_eq!(err.code(), ErrorCode::Unavailable);
        c.put(b"k", b"v").await.unwrap();
        assert_eq!(fake.state.accepts.get(), 2);

        // With retries the caller never sees the closed connection.
        let c = fake.client(quick()).await;
        fake.state.closes_left.set(2);
        c.put(b"k", b"v2").await.unwrap();
        assert_eq!(c.get(b"k").await.unwrap().unwrap().0, b"v2");
    });
}

#[test]
fn every_pending_request_fails_when_the_connection_dies() {
    run(|| async {
        let fake = Fake::single(1);
        let opts = ClientOptions { request_timeout: Duration::from_secs(5), retries: 0, ..quick() };
        let c = fake.client(opts).await;
        fake.state.mode.set(Mode::Silent);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let c = c.clone();
                glommio::spawn_local(async move { c.get(format!("k{i}").as_bytes()).await })
            })
            .collect();
        glommio::timer::sleep(Duration::from_millis(50)).await;
        fake.state.mode.set(Mode::Normal);
        fake.state.closes_left.set(1);
        let t0 = Instant::now();
        // This request makes the server drop the connection with the 20 silent ones on it.
        assert!(matches!(c.get(b"x").await, Err(ClientError::Io { .. })));
        for t in tasks {
            assert!(matches!(t.await, Err(ClientError::Io { .. })));
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "failed at once, not by timeout");
        c.get(b"k").await.unwrap();
    });
}

#[test]
fn garbage_from_the_server_is_an_error_not_a_panic() {
    run(|| async {
        let fake = Fake::single(1);
        let c = fake.client(quick()).await;
        for mode in [Mode::Garbage, Mode::BadBody, Mode::WrongOpcode] {
            fake.state.mode.set(mode);
            let err = c.get(b"k").await.unwrap_err();
            assert!(
                matches!(err, ClientError::Protocol(_) | ClientError::Io { .. }),
                "{mode:?}: {err}"
            );
            fake.state.mode.set(Mode::Normal);
            c.put(b"k", b"v").await.unwrap();
        }

        // Random bytes, and random bodies behind valid headers, in many shapes.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut protocol_errors = 0;
        for round in 0..60 {
            let opts = ClientOptions {
                request_timeout: Duration::from_millis(200),
                retries: 0,
                ..quick()
            };
            let c2 = fake.client(ClientOptions { frame_body_bytes_max: 1 << 20, ..opts }).await;
            let id = c2.inner.next_id.get();
            let len = rng.gen_range(0..200);
            let body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let raw = match round % 3 {
                0 => body,
                1 => {
                    let op = [Opcode::Get, Opcode::Error, Opcode::Put][rng.gen_range(0..3)];
                    let mut raw = FrameHeader::response(op, id, len as u32).encode().to_vec();
                    raw.extend_from_slice(&body);
                    raw
                }
                _ => {
                    // A header that claims more than the client accepts.
                    FrameHeader::response(Opcode::Get, id, FRAME_BODY_BYTES_MAX).encode().to_vec()
                }
            };
            *fake.state.next_raw.borrow_mut() = Some(raw);
            match c2.get(b"k").await {
                Err(ClientError::Protocol(_)) => protocol_errors += 1,
                Err(
                    ClientError::Io { .. }
                    | ClientError::Timeout { .. }
                    | ClientError::Server { .. },
                ) => {}
                Ok(v) => panic!("round {round}: garbage read as a value: {v:?}"),
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
            c2.close().await;
        }
        assert!(protocol_errors > 50, "garbage is reported as such: {protocol_errors}/60");
        c.get(b"k").await.unwrap();
    });
}

#[test]
fn route_agrees_with_placement_and_requests_land_on_the_owning_shard() {
    run(|| async {
        let fake = Fake::sharded(3);
        let c = fake.client(quick()).await;
        for i in 0..300 {
            let key = format!("user:{i}");
            let shard = shard_of(token_of(key.as_bytes()), 3).0;
            let port = fake.shard_ports[usize::from(shard)];
            assert_eq!(c.route(key.as_bytes()), (format!("127.0.0.1:{port}"), shard));
        }
        // Shard listeners refuse foreign keys, so success proves every request was routed right.
        for i in 0..300 {
            c.put(format!("user:{i}").as_bytes(), b"v").await.unwrap();
        }
        assert_eq!(fake.state.data_at(fake.node_port), 0);
        for p in &fake.shard_ports {
            assert!(fake.state.data_at(*p) > 50, "keys spread over shards");
        }
        c.ping().await.unwrap();

        // Not shard-aware: everything goes to the node-level port.
        let plain = fake.client(ClientOptions { shard_aware: false, ..quick() }).await;
        let before: Vec<usize> = fake.shard_ports.iter().map(|p| fake.state.data_at(*p)).collect();
        for i in 0..50 {
            let key = format!("user:{i}");
            assert_eq!(plain.get(key.as_bytes()).await.unwrap().unwrap().0, b"v");
            let (addr, shard) = plain.route(key.as_bytes());
            assert_eq!((addr, shard), (fake.addr(), shard_of(token_of(key.as_bytes()), 3).0));
        }
        let after: Vec<usize> = fake.shard_ports.iter().map(|p| fake.state.data_at(*p)).collect();
        assert_eq!(before, after);
        assert_eq!(fake.state.data_at(fake.node_port), 50);
    });
}

#[test]
fn falls_back_to_the_next_replica_when_the_primary_is_down() {
    run(|| async {
        let fake = Fake::sharded(2);
        // A second node, listed first, whose ports refuse connections.
        let dead_port =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        {
            let mut topo = fake.state.topo.borrow_mut();
            topo.replication_factor = 2;
            topo.nodes.insert(
                0,
                NodeInfo {
                    id: 2,
                    addr: format!("127.0.0.1:{dead_port}"),
                    shard_ports: vec![dead_port, dead_port],
                    tokens: vnode_tokens(NodeId(2), 16).into_iter().map(|t| t.0).collect(),
                    status: crate::msg::NodeStatus::Up,
                },
            );
        }
        let c = fake.client(quick()).await;
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| c.route(k.as_bytes()).0 == format!("127.0.0.1:{dead_port}"))
            .unwrap();
        c.put(key.as_bytes(), b"v").await.unwrap();
        assert_eq!(c.get(key.as_bytes()).await.unwrap().unwrap().0, b"v");

        let no_retry = fake.client(ClientOptions { retries: 0, ..quick() }).await;
        let err = no_retry.get(key.as_bytes()).await.unwrap_err();
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
    });
}

#[test]
fn empty_topology_and_bad_options_are_reported() {
    run(|| async {
        let fake = Fake::single(1);
        fake.state.topo.borrow_mut().nodes.clear();
        let c = fake.client(quick()).await;
        assert!(matches!(c.get(b"k").await, Err(ClientError::NoNodes)));
        assert_eq!(c.route(b"k"), (fake.addr(), 0));
        c.ping().await.unwrap();

        let err = Client::connect(
            &fake.addr(),
            ClientOptions { inflight_max_per_connection: 0, ..quick() },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ClientError::InvalidOptions(_)));
        let dead_port =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = Client::connect(&format!("127.0.0.1:{dead_port}"), quick()).await.unwrap_err();
        assert!(matches!(err, ClientError::Io { .. }), "{err}");
    });
}

/// The connection the client holds to `addr`, if any.
fn conn_to(c: &Client, addr: &str) -> Option<Rc<Shared>> {
    let ep = c.inner.endpoints.borrow().get(addr).cloned()?;
    let shared = ep.conn.borrow().as_ref().map(|conn| conn.shared.clone());
    shared
}

#[test]
fn a_stopped_server_is_abandoned_and_the_retry_reconnects() {
    run(|| async {
        let fake = Fake::sharded(1);
        let shard_addr = format!("127.0.0.1:{}", fake.shard_ports[0]);
        let opts = ClientOptions { request_timeout: Duration::from_millis(200), ..quick() };
        let c = fake.client(opts.clone()).await;
        assert_eq!(fake.state.accepts.get(), 1, "the node port, for the topology");
        // The first shard connection is accepted and then never read, like a stopped server.
        fake.state.mute_accepts.set(1);
        let t0 = Instant::now();
        c.put(b"k", b"v").await.unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(200), "the first attempt timed out");
        assert_eq!(fake.state.muted.borrow().len(), 1);
        assert_eq!(fake.state.accepts.get(), 3, "the retry made a second shard connection");
        assert_eq!(fake.state.data_at(fake.shard_ports[0]), 1);
        assert_eq!(c.get(b"k").await.unwrap().unwrap().0, b"v");

        // Without retries the caller sees the timeout, and its next call reconnects.
        let c = fake.client(ClientOptions { retries: 0, ..opts }).await;
        fake.state.mute_accepts.set(1);
        let accepts = fake.state.accepts.get();
        let err = c.get(b"k").await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        let stalled = conn_to(&c, &shard_addr).unwrap();
        assert!(stalled.is_dead(), "a stalled connection is failed at the timeout");
        assert_eq!(c.get(b"k").await.unwrap().unwrap().0, b"v");
        assert_eq!(fake.state.accepts.get(), accepts + 2);
    });
}

#[test]
fn a_slow_request_on_a_live_connection_keeps_the_connection() {
    run(|| async {
        let fake = Fake::single(1);
        let opts = ClientOptions { request_timeout: Duration::from_millis(200), ..quick() };
        let c = fake.client(ClientOptions { retries: 0, ..opts }).await;
        let busy = Rc::new(Cell::new(true));
        let chatter = glommio::spawn_local({
            let (c, busy) = (c.clone(), busy.clone());
            async move {
                while busy.get() {
                    c.get(b"k").await.unwrap();
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        // Never answered, but other responses keep arriving on the same connection.
        let err = c.get(b"mute-1").await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        busy.set(false);
        chatter.await;
        assert!(!conn_to(&c, &fake.addr()).unwrap().is_dead());
        assert_eq!(fake.state.accepts.get(), 1, "no reconnection");
    });
}

#[test]
fn a_timeout_moves_on_to_the_next_replica() {
    run(|| async {
        let fake = Fake::sharded(2);
        // A second node, listed first, that accepts connections and never reads from them.
        let hole = TcpListener::bind("127.0.0.1:0").unwrap();
        let hole_port = hole.local_addr().unwrap().port();
        let held: Rc<RefCell<Vec<TcpStream>>> = Rc::default();
        glommio::spawn_local({
            let held = held.clone();
            async move {
                while let Ok(s) = hole.accept().await {
                    held.borrow_mut().push(s);
                }
            }
        })
        .detach();
        {
            let mut topo = fake.state.topo.borrow_mut();
            topo.replication_factor = 2;
            topo.nodes.insert(
                0,
                NodeInfo {
                    id: 2,
                    addr: format!("127.0.0.1:{hole_port}"),
                    shard_ports: vec![hole_port, hole_port],
                    tokens: vnode_tokens(NodeId(2), 16).into_iter().map(|t| t.0).collect(),
                    status: crate::msg::NodeStatus::Up,
                },
            );
        }
        let opts =
            ClientOptions { request_timeout: Duration::from_millis(150), retries: 1, ..quick() };
        let c = fake.client(opts).await;
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| c.route(k.as_bytes()).0 == format!("127.0.0.1:{hole_port}"))
            .unwrap();
        // One timeout on the stopped primary, then the replica answers.
        c.put(key.as_bytes(), b"v").await.unwrap();
        assert_eq!(held.borrow().len(), 1);
        assert_eq!(fake.state.data_total(), 1);
    });
}

#[test]
fn queued_bytes_stay_bounded_when_the_server_never_reads() {
    run(|| async {
        let fake = Fake::sharded(1);
        let shard_addr = format!("127.0.0.1:{}", fake.shard_ports[0]);
        let opts =
            ClientOptions { request_timeout: Duration::from_millis(500), retries: 0, ..quick() };
        let c = fake.client(opts).await;
        fake.state.mute_accepts.set(1);
        // 40 values of 512 KiB: 20 MiB, far more than the kernel's socket buffers plus the bound.
        const VALUE_BYTES: usize = 512 * 1024;
        let value = Rc::new(vec![9u8; VALUE_BYTES]);
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let (c, value) = (c.clone(), value.clone());
                glommio::spawn_local(async move { c.put(format!("k{i}").as_bytes(), &value).await })
            })
            .collect();
        for t in tasks {
            let err = t.await.unwrap_err();
            assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "requests fail by timeout, not hang");
        let conn = conn_to(&c, &shard_addr).unwrap();
        let frame_bytes_max = VALUE_BYTES + 1024;
        let peak = conn.queued_peak();
        assert!(peak >= conn::OUT_BYTES_MAX, "the bound was reached: peak {peak}");
        assert!(peak < conn::OUT_BYTES_MAX + frame_bytes_max, "queue grew past the bound: {peak}");
        assert!(conn.is_dead(), "the connection that stopped writing was failed");
        assert_eq!(conn.queued_bytes(), 0, "a failed connection drops its queue");
    });
}

#[test]
fn host_of_splits_addresses() {
    assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
    assert_eq!(host_of("[::1]:7000"), "[::1]");
    assert_eq!(host_of("[::1]"), "[::1]");
    assert_eq!(host_of("localhost"), "localhost");
    assert_eq!(host_of("db.example:1"), "db.example");
}
