//! Goal: the Redis driver answers correctly under pipelining and fails fast, without panics,
//! when the server misbehaves.
//!
//! Method: each test runs one glommio executor holding both the driver and a fake RESP server
//! (a `TcpListener` on 127.0.0.1:0) that implements GET, SET and DEL over a `HashMap`, answers
//! every complete command of a read in one write, answers `-ERR boom` for the key `err`, and
//! misbehaves on demand (garbage, silence, closing). If `redis-server` is installed, one test
//! also runs against a real one; it is skipped, and says so, when it is not.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Task};

use super::super::resp::{self, Reply};
use super::*;

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
    /// Answers every read with bytes that are no RESP reply.
    Garbage,
    /// Reads once, then closes the connection without answering.
    CloseAfterRead,
    /// Reads and never answers.
    Silent,
}

type Store = Rc<RefCell<HashMap<Vec<u8>, Vec<u8>>>>;

/// Starts a fake server; returns its address and the accept task (dropping it stops accepting).
fn fake_server(mode: Mode) -> (String, Task<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let store: Store = Rc::default();
    let task = glommio::spawn_local(async move {
        while let Ok(stream) = listener.accept().await {
            glommio::spawn_local(serve(stream, mode, store.clone())).detach();
        }
    });
    (addr, task)
}

async fn serve(mut stream: TcpStream, mode: Mode, store: Store) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let out = match mode {
            Mode::CloseAfterRead => return,
            Mode::Silent => continue,
            Mode::Garbage => b"?garbage\xff\r\n".to_vec(),
            Mode::Normal => {
                let mut out = Vec::new();
                while let Some((args, used)) = parse_command(&buf) {
                    buf.drain(..used);
                    answer(&args, &store, &mut out);
                }
                out
            }
        };
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Cuts one `*N` array of bulk strings off `buf` (test input is trusted: panics on bad bytes).
fn parse_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    if buf.is_empty() {
        return None;
    }
    assert_eq!(buf[0], b'*', "command must be an array");
    let nl = buf.windows(2).position(|w| w == b"\r\n")?;
    let n: usize = std::str::from_utf8(&buf[1..nl]).unwrap().parse().unwrap();
    let mut at = nl + 2;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        match resp::parse(&buf[at..]) {
            Ok((Reply::Bulk(Some(a)), used)) => {
                args.push(a);
                at += used;
            }
            Err(resp::ParseError::Incomplete) => return None,
            other => panic!("bad argument: {other:?}"),
        }
    }
    Some((args, at))
}

fn answer(args: &[Vec<u8>], store: &Store, out: &mut Vec<u8>) {
    if args.get(1).is_some_and(|k| k == b"err") {
        out.extend_from_slice(b"-ERR boom\r\n");
        return;
    }
    let mut store = store.borrow_mut();
    match (args[0].as_slice(), args.len()) {
        (b"GET", 2) => match store.get(&args[1]) {
            Some(v) => {
                out.extend_from_slice(format!("${}\r\n", v.len()).as_bytes());
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"$-1\r\n"),
        },
        (b"SET", 3) => {
            store.insert(args[1].clone(), args[2].clone());
            out.extend_from_slice(b"+OK\r\n");
        }
        (b"DEL", 2) => {
            let n = usize::from(store.remove(&args[1]).is_some());
            out.extend_from_slice(format!(":{n}\r\n").as_bytes());
        }
        _ => out.extend_from_slice(b"-ERR unknown command\r\n"),
    }
}

fn opts(pipeline: usize, timeout: Duration) -> DriverOptions {
    DriverOptions { timeout, pipeline, consistency: None }
}

async fn connect(addr: &str, pipeline: usize, timeout: Duration) -> RedisDriver {
    RedisDriver::connect(&Target::Redis(addr.to_string()), &opts(pipeline, timeout))
        .await
        .expect("connect")
}

#[test]
fn round_trip_and_null_bulk() {
    run(|| async {
        let (addr, _server) = fake_server(Mode::Normal);
        let d = connect(&addr, 16, Duration::from_secs(5)).await;
        assert_eq!(d.get(b"k").await.unwrap(), None, "missing key is the null bulk string");
        d.put(b"k", b"v\r\n1").await.unwrap();
        assert_eq!(d.get(b"k").await.unwrap(), Some(b"v\r\n1".to_vec()));
        d.put(b"empty", b"").await.unwrap();
        assert_eq!(d.get(b"empty").await.unwrap(), Some(Vec::new()));
        d.delete(b"k").await.unwrap();
        d.delete(b"k").await.unwrap();
        assert_eq!(d.get(b"k").await.unwrap(), None);
        d.close().await;
        assert!(matches!(d.get(b"k").await, Err(DriverError::Io(_))));
    });
}

#[test]
fn pipelined_concurrent_ops_are_matched_in_order() {
    run(|| async {
        let (addr, _server) = fake_server(Mode::Normal);
        // 200 tasks over 32 slots; some values span several reads.
        let d = Rc::new(connect(&addr, 32, Duration::from_secs(10)).await);
        let value = |i: usize| {
            let len = if i.is_multiple_of(50) { 200_000 } else { i };
            (0..len).map(|j| (i * 31 + j) as u8).collect::<Vec<u8>>()
        };
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let d = d.clone();
                glommio::spawn_local(async move {
                    let key = format!("key-{i}").into_bytes();
                    d.put(&key, &value(i)).await.expect("put");
                    let got = d.get(&key).await.expect("get");
                    assert_eq!(got.as_deref(), Some(&value(i)[..]), "key {i}");
                    if i.is_multiple_of(2) {
                        d.delete(&key).await.expect("delete");
                        assert_eq!(d.get(&key).await.expect("get after delete"), None);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        assert!(d.shared.pending.borrow().is_empty());
    });
}

#[test]
fn server_error_reply_is_server_and_keeps_the_connection() {
    run(|| async {
        let (addr, _server) = fake_server(Mode::Normal);
        let d = connect(&addr, 4, Duration::from_secs(5)).await;
        match d.put(b"err", b"x").await {
            Err(DriverError::Server(m)) => assert_eq!(m, "ERR boom"),
            other => panic!("expected a server error, got {other:?}"),
        }
        assert!(matches!(d.get(b"err").await, Err(DriverError::Server(_))));
        d.put(b"fine", b"1").await.unwrap();
        assert_eq!(d.get(b"fine").await.unwrap(), Some(b"1".to_vec()));
    });
}

#[test]
fn garbage_from_the_server_is_an_error_not_a_panic() {
    run(|| async {
        let (addr, _server) = fake_server(Mode::Garbage);
        let d = connect(&addr, 4, Duration::from_secs(5)).await;
        assert!(matches!(d.get(b"k").await, Err(DriverError::Protocol(_))));
        // The connection is broken for good: later requests fail at once.
        let t0 = Instant::now();
        assert!(d.put(b"k", b"v").await.is_err());
        assert!(t0.elapsed() < Duration::from_secs(1));
    });
}

#[test]
fn server_closing_fails_every_pending_request_fast() {
    run(|| async {
        let (addr, _server) = fake_server(Mode::CloseAfterRead);
        let d = Rc::new(connect(&addr, 64, Duration::from_secs(30)).await);
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let d = d.clone();
                glommio::spawn_local(async move { d.get(format!("k{i}").as_bytes()).await })
            })
            .collect();
        for t in tasks {
            let r = t.await;
            assert!(matches!(r, Err(DriverError::Io(_))), "{r:?}");
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
        assert!(matches!(d.get(b"k").await, Err(DriverError::Io(_))));
    });
}

#[test]
fn timeout_breaks_the_connection() {
    run(|| async {
        let (addr, _server) = fake_server(Mode::Silent);
        let d = Rc::new(connect(&addr, 8, Duration::from_millis(200)).await);
        let other = {
            let d = d.clone();
            glommio::spawn_local(async move { d.get(b"other").await })
        };
        let first = d.get(b"k").await;
        let second = other.await;
        // The first timer to fire gives its request `Timeout` and breaks the connection, which
        // fails the other request with `Io` unless its own timer fired too.
        let timed_out =
            [&first, &second].iter().filter(|r| matches!(r, Err(DriverError::Timeout))).count();
        assert!(timed_out >= 1, "{first:?} {second:?}");
        for r in [&first, &second] {
            assert!(matches!(r, Err(DriverError::Timeout | DriverError::Io(_))), "{r:?}");
        }
        let t0 = Instant::now();
        assert!(matches!(d.get(b"k").await, Err(DriverError::Io(_))));
        assert!(t0.elapsed() < Duration::from_millis(100));
    });
}

#[test]
fn connect_refuses_what_it_cannot_serve() {
    run(|| async {
        let o = opts(1, Duration::from_secs(1));
        let kvs = Target::Kvs("127.0.0.1:1".into());
        assert!(matches!(RedisDriver::connect(&kvs, &o).await, Err(DriverError::Unsupported(_))));
        let redis = Target::Redis("127.0.0.1:1".into());
        let quorum = DriverOptions { consistency: Some("quorum".into()), ..o.clone() };
        assert!(matches!(
            RedisDriver::connect(&redis, &quorum).await,
            Err(DriverError::Unsupported(_))
        ));
        assert!(matches!(
            RedisDriver::connect(&redis, &opts(0, Duration::from_secs(1))).await,
            Err(DriverError::Unsupported(_))
        ));
        // Nothing listens on a port just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let closed = Target::Redis(port.to_string());
        assert!(matches!(RedisDriver::connect(&closed, &o).await, Err(DriverError::Io(_))));
        // The kvs drivers check scheme and consistency before connecting.
        assert!(matches!(
            crate::driver::KvsDriver::connect(&redis, &o).await,
            Err(DriverError::Unsupported(_))
        ));
        for bad in ["most", "0", "256"] {
            let bad = DriverOptions { consistency: Some(bad.into()), ..o.clone() };
            assert!(matches!(
                crate::driver::KvsDriver::connect(&kvs, &bad).await,
                Err(DriverError::Unsupported(_))
            ));
        }
        assert!(matches!(
            crate::driver::PingDriver::connect(&kvs, &o).await,
            Err(DriverError::Unsupported(_))
        ));
        let kvs_closed = Target::Kvs(port.to_string());
        assert!(matches!(
            crate::driver::KvsDriver::connect(&kvs_closed, &o).await,
            Err(DriverError::Io(_))
        ));
    });
}

/// Kills the child and removes its directory when the test ends, however it ends.
struct RedisGuard {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn real_redis_server_when_installed() {
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("skipped: redis-server is not installed");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("kvs-perf-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let child = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly"])
        .args(["no", "--dir", dir.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    let _guard = RedisGuard { child, dir };
    run(move || async move {
        let target = Target::Redis(format!("127.0.0.1:{port}"));
        let o = opts(32, Duration::from_secs(5));
        let mut d = None;
        for _ in 0..100 {
            match RedisDriver::connect(&target, &o).await {
                Ok(c) => {
                    d = Some(Rc::new(c));
                    break;
                }
                Err(_) => glommio::timer::sleep(Duration::from_millis(50)).await,
            }
        }
        let d = d.expect("redis-server did not start listening");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let d = d.clone();
                glommio::spawn_local(async move {
                    let key = format!("kvs-perf-test-{i}").into_bytes();
                    let value = vec![i as u8; i];
                    d.put(&key, &value).await.expect("put");
                    assert_eq!(d.get(&key).await.expect("get"), Some(value));
                    d.delete(&key).await.expect("delete");
                    assert_eq!(d.get(&key).await.expect("get"), None);
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        // A wrong-arity command gets an error reply, and the connection stays in step.
        assert!(matches!(d.request(&[b"GET"]).await, Ok(Reply::Error(_))));
        assert_eq!(d.get(b"kvs-perf-test-missing").await.expect("get"), None);
        d.close().await;
    });
}
