//! Shared helpers for process tests: start a real `kvs server` on 127.0.0.1 with ephemeral
//! ports, talk raw frames to it, run the CLI. A [`Server`] kills its process on drop; the data
//! directory belongs to the test's `TempDir`, so a test can restart a server on the same data.
#![allow(dead_code)]
#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kvs_wire::limits::{FRAME_BODY_BYTES_MAX, FRAME_HEADER_BYTES};
use kvs_wire::msg::AlignedVec;
use kvs_wire::FrameHeader;

pub mod netns;

/// Path of the `kvs` binary under test.
pub fn kvs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvs")
}

/// A running `kvs server` process.
pub struct Server {
    child: Option<Child>,
    /// The node-level address, `127.0.0.1:PORT`.
    pub addr: String,
    /// The node id, 16 hex digits, from the ready line.
    pub node_id: String,
    pub shard_ports: Vec<u16>,
    pub data_dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts a server on ephemeral ports with `data_dir` and extra flags, and waits until it
    /// prints its ready line (at most 60 s).
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Server::start_at("127.0.0.1:0", data_dir, extra)
    }

    /// Like [`Server::start`], listening on `listen` (for example `127.0.0.2:0`).
    pub fn start_at(listen: &str, data_dir: &Path, extra: &[&str]) -> Server {
        Server::spawn(Command::new(kvs_bin()), listen, data_dir, extra)
    }

    /// Runs `kvs server --listen LISTEN --data-dir DATA_DIR EXTRA...` through `cmd` (the `kvs`
    /// binary, or a wrapper such as `ip netns exec NS kvs`) and waits (at most 60 s) for its
    /// ready line.
    pub fn spawn(mut cmd: Command, listen: &str, data_dir: &Path, extra: &[&str]) -> Server {
        cmd.args(["server", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kvs server");
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let pipe = child.stderr.take().expect("stderr pipe");
            let sink = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let (tx, rx) = mpsc::channel();
        {
            let pipe = child.stdout.take().expect("stdout pipe");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.starts_with("kvs server ready:") {
                        let _ = tx.send(line);
                    }
                }
            });
        }
        let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server at {listen} did not become ready; stderr:\n{}", stderr.lock().unwrap());
        };
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")).map(str::to_string))
                .unwrap_or_else(|| panic!("no {name}= in ready line {line:?}"))
        };
        Server {
            child: Some(child),
            addr: field("listen"),
            node_id: field("node"),
            shard_ports: field("shard_ports").split(',').map(|p| p.parse().unwrap()).collect(),
            data_dir: data_dir.to_path_buf(),
            stderr,
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// `host:port` of shard `i` (on the host of the node's address).
    pub fn shard_addr(&self, i: usize) -> String {
        let host = self.addr.rsplit_once(':').map_or("127.0.0.1", |(h, _)| h);
        format!("{host}:{}", self.shard_ports[i])
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Resident memory of the server process in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (at most 30 s) for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("server did not stop within 30 s of SIGTERM; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the CLI with `args` (and optional stdin) and returns its output.
pub fn kvs(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(kvs_bin())
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvs");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().expect("kvs output")
}

/// A raw protocol connection for tests that send exact bytes.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one frame; `None` when the server closed the connection.
    pub fn recv(&mut self) -> Option<(FrameHeader, AlignedVec)> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if self.stream.read_exact(&mut header).is_err() {
            return None;
        }
        let h =
            FrameHeader::decode(&header, FRAME_BODY_BYTES_MAX).expect("server sent a bad header");
        let mut body = vec![0u8; h.body_len as usize];
        self.stream.read_exact(&mut body).expect("body");
        let mut aligned = AlignedVec::new();
        aligned.extend_from_slice(&body);
        Some((h, aligned))
    }
}

/// Runs `f` on a fresh glommio executor and returns its result.
pub fn on_executor<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    glommio::LocalExecutorBuilder::default()
        .spawn(f)
        .expect("executor")
        .join()
        .expect("executor join")
}

/// Client options for crash tests: a 2 s request timeout and no retries, so every failure
/// is seen (and a write is acknowledged exactly when its own attempt was).
#[allow(dead_code)]
pub fn no_retry_client_opts() -> kvs_wire::client::ClientOptions {
    kvs_wire::client::ClientOptions {
        request_timeout: Duration::from_secs(2),
        retries: 0,
        ..kvs_wire::client::ClientOptions::default()
    }
}

/// A port P such that P ..= P+`span` are free on 127.0.0.1 ..= 127.0.0.`hosts` (node port and
/// shard ports of nodes that share one port on several loopback addresses). Chosen at random
/// below the kernel's ephemeral range (32768 and up by default), so no outgoing connection
/// of a concurrent test or process can take it between this probe and the nodes' bind.
pub fn port_free_on_hosts(hosts: u8, span: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let p = 20_000 + (h.finish() % 12_000) as u16;
        let held: Vec<_> = (1..=hosts)
            .flat_map(|ip| (p..=p + span).map(move |port| format!("127.0.0.{ip}:{port}")))
            .map(std::net::TcpListener::bind)
            .collect();
        if held.iter().all(Result::is_ok) {
            return p;
        }
    }
    panic!("no port range free on 127.0.0.1-{hosts} after 200 tries");
}

/// Polls `check` every 100 ms until it returns Some, at most `limit`; panics with `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    for _ in 0..10_000 {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up waiting for {what}");
}

/// Sends one raw request frame on `raw` and returns the answer: Ok(the value of a Get, or None
/// for a missing key or any other answer) or Err(the error message).
#[allow(dead_code)]
pub fn raw_call_on(raw: &mut Raw, frame: &[u8]) -> Result<Option<Vec<u8>>, String> {
    use kvs_wire::msg::{self, ArchivedErrorResponse, ArchivedGetResponse};
    raw.send(frame);
    let (h, body) = raw.recv().ok_or("the node closed the connection")?;
    match h.opcode {
        kvs_wire::Opcode::Error => {
            Err(msg::access::<ArchivedErrorResponse>(&body).unwrap().message.as_str().to_string())
        }
        kvs_wire::Opcode::Get => Ok(msg::access::<ArchivedGetResponse>(&body)
            .unwrap()
            .value
            .as_ref()
            .map(|v| v.as_slice().to_vec())),
        _ => Ok(None),
    }
}

/// [`raw_call_on`] over a new connection to `addr`.
#[allow(dead_code)]
pub fn raw_call(addr: &str, frame: &[u8]) -> Result<Option<Vec<u8>>, String> {
    raw_call_on(&mut Raw::connect(addr), frame)
}

/// A Get request frame (request id 1).
#[allow(dead_code)]
pub fn get_frame(key: &str, consistency: kvs_wire::msg::Consistency) -> Vec<u8> {
    let mut out = Vec::new();
    let req = kvs_wire::msg::GetRequest { key: key.as_bytes().to_vec(), consistency };
    kvs_wire::msg::write_frame(&mut out, kvs_wire::Opcode::Get, false, 1, &req).unwrap();
    out
}

/// A Put request frame (request id 1, no TTL).
#[allow(dead_code)]
pub fn put_frame(key: &str, value: &str, consistency: kvs_wire::msg::Consistency) -> Vec<u8> {
    let mut out = Vec::new();
    let req = kvs_wire::msg::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ttl_ms: 0,
        consistency,
    };
    kvs_wire::msg::write_frame(&mut out, kvs_wire::Opcode::Put, false, 1, &req).unwrap();
    out
}

/// What `node` alone holds for `key`: a Get at consistency one sent to the shard of `node`
/// that owns the key (a coordinator that is a replica reads its own copy first). Ok(None):
/// missing; Err: the error message.
#[allow(dead_code)]
pub fn local_get(node: &Server, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
    use kvs_wire::msg::{self, Consistency};
    use kvs_wire::placement::{shard_of, token_of};
    let shards = u16::try_from(node.shard_ports.len()).unwrap();
    let shard = shard_of(token_of(key), shards).0;
    let mut raw = Raw::connect(&node.shard_addr(usize::from(shard)));
    let mut frame = Vec::new();
    let req = msg::GetRequest { key: key.to_vec(), consistency: Consistency::One };
    msg::write_frame(&mut frame, kvs_wire::Opcode::Get, false, 1, &req).unwrap();
    raw_call_on(&mut raw, &frame)
}

/// Node id -> (state, liveness) in a `kvs status --json` answer.
pub fn members(s: &serde_json::Value) -> std::collections::BTreeMap<String, (String, String)> {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let f = |k: &str| n[k].as_str().unwrap().to_string();
            (f("id"), (f("state"), f("liveness")))
        })
        .collect()
}
