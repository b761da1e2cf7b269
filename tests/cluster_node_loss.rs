//! Goal: losing one node of three to `kill -9` under a steady stream of quorum writes and reads
//! costs at most the requests issued before the cluster and the client have got over it: once
//! the failure detector's verdict has reached the survivors' shards and a replica timeout and
//! one whole client request budget (timeout × attempts, plus backoff) have passed on top, every
//! quorum request succeeds; the ones that failed before are counted by kind and reported. No
//! acknowledged write is lost, and once the node restarts on its data, hinted handoff gives it
//! every key written while it was down.
//!
//! Method: three `kvs server` processes on 127.0.0.1, .2 and .3 with one port, one shard each,
//! a 100 ms gossip interval and a 2 s replica timeout. One shard-aware client
//! (`kvs_wire::client`, seeded with node 1, 2.5 s per attempt, 2 retries), shared by four
//! tasks, runs a stream of pairs (a quorum put of a fresh key, then a quorum get of it), paced
//! and bounded in count and in time. The client sends each request to the key's primary
//! replica and, after an I/O error or a timeout, to the next replica: keys whose primary is
//! node 3 first try it and then reach a survivor, so the killed node is never the only route.
//! After some pairs have succeeded node 3 is SIGKILLed; the test polls until both survivors'
//! shards count it down (a write at `all` is refused with "too few replicas alive"), which is
//! the verdict; the window ends a replica timeout, a client budget and a 1 s margin later.
//! Each request is classified by when it was issued: before the kill, between the kill and the
//! verdict, after the verdict within the window, after the window. Only the last class is
//! asserted to succeed in full; every failure is reported with its kind. Then, with node 3
//! still down, every acknowledged key is read back at quorum. Node 3 restarts on the same
//! address and data; the test polls (bounded) until node 3 alone (a Get at consistency one on
//! its own shard: the coordinator reads its own replica first and, with R = 1, only it) holds
//! every key acknowledged while it was down, and checks that a survivor logged a hint replay.
//! Nothing reads through node 3 at quorum before that, so read repair cannot stand in for the
//! hints. No latency is asserted; every wait is a bounded poll. `--nocapture` shows the report.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvs_wire::client::{Client, ClientError, ClientOptions, Consistency, PutOptions};
use serde_json::Value;
use support::{get_frame, kvs, on_executor, put_frame, raw_call_on, wait_for, Raw, Server};

/// Flags every node starts with (one shard, fast gossip, the replica timeout, one cluster).
const NODE_ARGS: [&str; 12] = [
    "--shards",
    "1",
    "--gossip-interval-ms",
    "100",
    "--ring-delay-ms",
    "300",
    "--replica-timeout-ms",
    REPLICA_TIMEOUT_MS,
    "--cluster-name",
    "node-loss",
    "--cluster-secret",
    "5e1f0c2a9b7d4e3f8a6c1b0d2e4f6a8c",
];
/// The node default. With 1 s, survivors timed out on each other (`no answer for 1s`) while
/// another build loaded the 2-core machine, which has nothing to do with the lost node.
const REPLICA_TIMEOUT_MS: &str = "2000";
/// Per-attempt client timeout, above the replica timeout so that a coordinator's own
/// `Timeout` answer arrives first; with [`RETRIES`] it makes one request's whole budget.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2500);
const RETRIES: u32 = 2;
/// The client's backoffs before retries 1 and 2 (`BACKOFF_MS` in the client), summed.
const BACKOFF_TOTAL: Duration = Duration::from_millis(10 + 50);
/// Margin added to the window for a loaded machine.
const WINDOW_MARGIN: Duration = Duration::from_secs(1);
/// Pairs that must have succeeded before the kill.
const PAIRS_BEFORE_KILL: usize = 100;
/// How long the stream goes on after the window.
const AFTER_WINDOW: Duration = Duration::from_secs(3);
/// Concurrent pairs, so the kill finds requests in flight.
const WORKERS: usize = 4;
/// Pause between one worker's pairs: a steady stream, light on a 2-core machine.
const PAIR_PAUSE: Duration = Duration::from_millis(20);
/// Bounds on the stream whatever happens: pairs, and time from its start.
const PAIRS_MAX: usize = 5000;
const STREAM_TIME_MAX: Duration = Duration::from_secs(50);

/// `kvs status --json` of the node at `addr`, or None when it could not be asked.
fn status(addr: &str) -> Option<Value> {
    let out = kvs(&["status", "--addr", addr, "--json", "--timeout-ms", "2000"], None);
    serde_json::from_slice(&out.stdout).ok()
}

/// Whether every node in `nodes` sees every node in `ids` up (joined) and alive.
fn all_alive(nodes: &[&Server], ids: &[&str]) -> bool {
    nodes.iter().all(|n| {
        status(&n.addr).is_some_and(|s| {
            let m = support::members(&s);
            ids.iter().all(|id| m.get(*id).is_some_and(|(st, l)| st == "up" && l == "alive"))
        })
    })
}

/// The address of the only shard of `node` (its node port's host).
fn shard_of(node: &Server) -> String {
    let host = node.addr.rsplit_once(':').unwrap().0;
    format!("{host}:{}", node.shard_ports[0])
}

/// The answer of `node`'s shard to a put of `probe` at consistency `all`.
fn put_all_probe(node: &Server) -> Result<Option<Vec<u8>>, String> {
    raw_call_on(&mut Raw::connect(&shard_of(node)), &put_frame("probe", "p", Consistency::All))
}

/// Those of `keys` (with their values) that `node` alone does not hold: Gets at consistency
/// one on its owning shard, over one connection.
fn missing_on<'k>(node: &Server, keys: &[&'k (String, String)]) -> Vec<&'k (String, String)> {
    let mut raw = Raw::connect(&shard_of(node));
    keys.iter()
        .copied()
        .filter(|(k, v)| {
            raw_call_on(&mut raw, &get_frame(k, Consistency::One)).ok().flatten().as_deref()
                != Some(v.as_bytes())
        })
        .collect()
}

fn key_of(i: usize) -> String {
    format!("loss-{i}")
}

fn value_of(i: usize) -> String {
    format!("v{i}")
}

/// What the stream and the main thread share.
#[derive(Default)]
struct Shared {
    /// Pairs that succeeded so far.
    pairs_ok: AtomicUsize,
    /// When the stream stops (set once the window is known).
    stop_at: OnceLock<Instant>,
}

/// One request of the stream.
struct Op {
    put: bool,
    key: usize,
    issued: Instant,
    /// The key's primary replica, where the client sends it first, is the killed node.
    via_killed: bool,
    /// `None`: it succeeded (a get also returned the value when its put was acknowledged).
    failure: Option<(String, String)>,
}

/// A failure's kind, as the issue names them: a server's `Timeout` or `Unavailable` (with the
/// replica counts), the client's own timeout, an I/O error, or anything else.
fn kind_of(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, .. } => format!("{code} (server)"),
        ClientError::Timeout { .. } => "Timeout (client)".to_string(),
        ClientError::Io { .. } => "I/O".to_string(),
        other => format!("other: {}", other.code()),
    }
}

/// The stream: [`WORKERS`] tasks sharing one client, each running pairs of a quorum put of a
/// fresh key and a quorum get of it, until `stop_at` (or the bounds). Then, with the killed node
/// still down, each reads back its acknowledged keys at quorum. Returns the requests, and the
/// acknowledged keys that did not read back.
async fn stream(seed: String, killed_host: String, shared: Arc<Shared>) -> (Vec<Op>, Vec<String>) {
    let opts = ClientOptions {
        request_timeout: REQUEST_TIMEOUT,
        retries: RETRIES,
        ..ClientOptions::default()
    };
    let c = Client::connect(&seed, opts).await.expect("connect");
    let started = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (c, killed_host, shared) = (c.clone(), killed_host.clone(), shared.clone());
            glommio::spawn_local(worker(c, w, killed_host, shared, started))
        })
        .collect();
    let (mut ops, mut lost) = (Vec::new(), Vec::new());
    for t in tasks {
        let (o, l) = t.await;
        ops.extend(o);
        lost.extend(l);
    }
    c.close().await;
    ops.sort_by_key(|o| o.issued);
    (ops, lost)
}

/// Worker `w` of [`stream`]: keys `w`, `w + WORKERS`, `w + 2 * WORKERS`, ...
async fn worker(
    c: Client,
    w: usize,
    killed_host: String,
    shared: Arc<Shared>,
    started: Instant,
) -> (Vec<Op>, Vec<String>) {
    let quorum = PutOptions { ttl: None, consistency: Some(Consistency::Quorum) };
    let mut ops = Vec::new();
    let mut acked = Vec::new();
    for i in (w..PAIRS_MAX).step_by(WORKERS) {
        let now = Instant::now();
        if now > started + STREAM_TIME_MAX || shared.stop_at.get().is_some_and(|t| now > *t) {
            break;
        }
        let (key, value) = (key_of(i), value_of(i));
        let via_killed = c.route(key.as_bytes()).0.starts_with(&killed_host);
        let issued = Instant::now();
        let put = c.put_with(key.as_bytes(), value.as_bytes(), quorum).await;
        let put_ok = put.is_ok();
        let failure = put.err().map(|e| (kind_of(&e), e.to_string()));
        ops.push(Op { put: true, key: i, issued, via_killed, failure });
        if put_ok {
            acked.push(i);
        }
        let issued = Instant::now();
        let failure = match c.get_with(key.as_bytes(), Consistency::Quorum).await {
            Ok(Some((v, _))) if v == value.as_bytes() => None,
            Ok(_) if !put_ok => None,
            Ok(got) => Some((
                "stale read".to_string(),
                format!("acknowledged {value:?}, read {:?}", got.map(|(v, _)| v)),
            )),
            Err(e) => Some((kind_of(&e), e.to_string())),
        };
        if put_ok && failure.is_none() {
            shared.pairs_ok.fetch_add(1, Ordering::SeqCst);
        }
        ops.push(Op { put: false, key: i, issued, via_killed, failure });
        glommio::timer::sleep(PAIR_PAUSE).await;
    }
    let mut lost = Vec::new();
    for i in acked {
        let got = c.get_with(key_of(i).as_bytes(), Consistency::Quorum).await;
        match got {
            Ok(Some((v, _))) if v == value_of(i).as_bytes() => {}
            other => lost.push(format!("{}: {other:?}", key_of(i))),
        }
    }
    (ops, lost)
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Failures among `ops` by kind, e.g. `{"Timeout (server)": 2}`.
fn failures_by_kind(ops: &[&Op]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (kind, _) in ops.iter().filter_map(|o| o.failure.as_ref()) {
        *out.entry(kind.clone()).or_default() += 1;
    }
    out
}

#[test]
fn after_a_kill_9_quorum_requests_succeed_once_the_window_passed_and_hints_refill_the_node() {
    let started = Instant::now();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let port = support::port_free_on_hosts(3, 1);
    let listen = |i: usize| format!("127.0.0.{}:{port}", i + 1);
    let args = |i: usize| -> Vec<String> {
        let mut a: Vec<String> = NODE_ARGS.iter().map(|s| s.to_string()).collect();
        if i > 0 {
            a.extend(["--seeds".to_string(), listen(0)]);
        }
        a
    };
    let start = |i: usize| {
        let a = args(i);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        Server::start_at(&listen(i), dirs[i].path(), &refs)
    };
    let n1 = start(0);
    let n2 = start(1);
    let mut n3 = start(2);
    let ids = [n1.node_id.clone(), n2.node_id.clone(), n3.node_id.clone()];
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_for("every node to see all three alive", Duration::from_secs(30), || {
        all_alive(&[&n1, &n2, &n3], &id_refs).then_some(())
    });
    // The shards learn the live set a gossip round after `kvs status` shows it.
    for n in [&n1, &n2, &n3] {
        wait_for("the shard to count all three alive", Duration::from_secs(10), || {
            put_all_probe(n).ok()
        });
    }
    let t_formed = started.elapsed();
    eprintln!("cluster formed in {t_formed:?}");

    let shared = Arc::new(Shared::default());
    let stream_thread = {
        let (seed, shared) = (n1.addr.clone(), shared.clone());
        let killed_host = format!("{}:", n3.addr.rsplit_once(':').unwrap().0);
        std::thread::spawn(move || on_executor(move || stream(seed, killed_host, shared)))
    };
    wait_for("pairs to succeed before the kill", Duration::from_secs(30), || {
        (shared.pairs_ok.load(Ordering::SeqCst) >= PAIRS_BEFORE_KILL).then_some(())
    });
    let kill_at = Instant::now();
    n3.kill9();
    eprintln!("node 3 killed at {:?}", started.elapsed());

    // The survivors' coordinators count node 3 down once their shards refuse `all` for too
    // few live replicas (before that, an `all` write is sent to node 3 and fails there).
    for n in [&n1, &n2] {
        wait_for("the survivors' shards to count node 3 down", Duration::from_secs(20), || {
            put_all_probe(n).err().filter(|e| e.contains("too few replicas alive"))
        });
    }
    let settled = kill_at.elapsed();
    let replica_timeout = Duration::from_millis(REPLICA_TIMEOUT_MS.parse().unwrap());
    let budget = REQUEST_TIMEOUT * (RETRIES + 1) + BACKOFF_TOTAL;
    let window = settled + replica_timeout + budget + WINDOW_MARGIN;
    shared.stop_at.set(kill_at + window + AFTER_WINDOW).unwrap();
    eprintln!(
        "survivors' shards counted node 3 down {settled:?} after the kill; window: {window:?} \
         (+ replica timeout {replica_timeout:?}, client budget {budget:?}, margin \
         {WINDOW_MARGIN:?})"
    );
    let (ops, lost) = stream_thread.join().expect("stream thread");
    let t_stream = kill_at.elapsed();

    // Classify by the instant each request was issued.
    let before: Vec<&Op> = ops.iter().filter(|o| o.issued < kill_at).collect();
    let to_verdict: Vec<&Op> =
        ops.iter().filter(|o| o.issued >= kill_at && o.issued < kill_at + settled).collect();
    let in_window: Vec<&Op> = ops
        .iter()
        .filter(|o| o.issued >= kill_at + settled && o.issued < kill_at + window)
        .collect();
    let after: Vec<&Op> = ops.iter().filter(|o| o.issued >= kill_at + window).collect();
    let failed = |v: &[&Op]| v.iter().filter(|o| o.failure.is_some()).count();
    let window_failures: Vec<&Op> =
        before.iter().chain(&to_verdict).chain(&in_window).copied().collect();
    let window_kinds = failures_by_kind(&window_failures);
    eprintln!("stream: {} requests (half puts, half gets, all at quorum)", ops.len());
    eprintln!(
        "  issued before the kill: {}, failed {} {:?}",
        before.len(),
        failed(&before),
        failures_by_kind(&before)
    );
    eprintln!(
        "  kill .. shards' verdict ({settled:?}): {}, failed {} {:?}",
        to_verdict.len(),
        failed(&to_verdict),
        failures_by_kind(&to_verdict)
    );
    eprintln!(
        "  verdict .. end of window ({window:?}): {}, failed {} {:?}",
        in_window.len(),
        failed(&in_window),
        failures_by_kind(&in_window)
    );
    eprintln!(
        "  after the window: {}, failed {} {:?}",
        after.len(),
        failed(&after),
        failures_by_kind(&after)
    );
    for o in ops.iter().filter(|o| o.failure.is_some()) {
        let (kind, message) = o.failure.as_ref().unwrap();
        let at = o.issued.saturating_duration_since(kill_at);
        let sign = if o.issued < kill_at { "-" } else { "+" };
        eprintln!(
            "  failed: {} {} (primary {}) issued kill{sign}{at:?}: {kind}: {message}",
            if o.put { "put" } else { "get" },
            key_of(o.key),
            if o.via_killed { "node 3" } else { "a survivor" },
        );
    }

    let stale: Vec<&Op> =
        ops.iter().filter(|o| o.failure.as_ref().is_some_and(|(k, _)| k == "stale read")).collect();
    assert!(stale.is_empty(), "{} quorum reads missed an acknowledged quorum write", stale.len());
    assert!(ops.len() < 2 * PAIRS_MAX, "the stream hit its count bound before its end");
    assert!(
        after.len() >= 20,
        "the stream ran only {} requests after the window ({t_stream:?} after the kill)",
        after.len()
    );
    assert!(
        after.iter().any(|o| o.via_killed) && after.iter().any(|o| !o.via_killed),
        "after the window, requests went first to the killed node and to survivors alike"
    );
    let late_failures: Vec<String> = after
        .iter()
        .filter_map(|o| {
            let (kind, m) = o.failure.as_ref()?;
            Some(format!("{} {}: {kind}: {m}", if o.put { "put" } else { "get" }, key_of(o.key)))
        })
        .collect();
    assert!(
        late_failures.is_empty(),
        "{} of {} quorum requests issued after the window ({window:?} after the kill) failed: \
         {late_failures:?}; before it {} of {} failed, by kind {window_kinds:?}",
        late_failures.len(),
        after.len(),
        window_failures.iter().filter(|o| o.failure.is_some()).count(),
        window_failures.len()
    );
    assert!(lost.is_empty(), "acknowledged writes not read back at quorum: {lost:?}");

    // Restart node 3 on its data; hinted handoff must give it every key acknowledged while it
    // was down (put issued after the kill).
    let acked: Vec<(usize, Instant)> =
        ops.iter().filter(|o| o.put && o.failure.is_none()).map(|o| (o.key, o.issued)).collect();
    let written_down: Vec<(String, String)> = acked
        .iter()
        .filter(|(_, t)| *t >= kill_at)
        .map(|(i, _)| (key_of(*i), value_of(*i)))
        .collect();
    let written_up: Vec<(String, String)> = acked
        .iter()
        .filter(|(_, t)| *t < kill_at)
        .map(|(i, _)| (key_of(*i), value_of(*i)))
        .collect();
    let restarted_at = Instant::now();
    let n3 = start(2);
    assert_eq!(n3.node_id, ids[2], "node 3 keeps its id across the restart");
    let mut missing: Vec<&(String, String)> = written_down.iter().collect();
    let n_down = written_down.len();
    let deadline = restarted_at + Duration::from_secs(30);
    loop {
        missing = missing_on(&n3, &missing);
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n_down} keys acknowledged while node 3 was down are still missing on it \
             {:?} after its restart (e.g. {:?}); survivors' logs, last lines:\n{}\n{}",
            missing.len(),
            restarted_at.elapsed(),
            missing.iter().take(5).collect::<Vec<_>>(),
            tail(&n1.stderr(), 20),
            tail(&n2.stderr(), 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let caught_up = restarted_at.elapsed();
    let logs = n1.stderr() + &n2.stderr();
    // Until the verdict the survivors hold node 3 alive and try to replay its hints every
    // gossip round; those attempts stop at once as unreachable and are logged at debug level
    // only, so this count is normally 0. Counted, not listed.
    let (refused, replays): (Vec<&str>, Vec<&str>) = logs
        .lines()
        .filter(|l| l.contains("hints replayed"))
        .partition(|l| l.contains("sent=0") && l.contains("unreachable"));
    assert!(
        replays.iter().any(|l| !l.contains("sent=0")),
        "a survivor logs its hint replay:\n{}",
        tail(&logs, 40)
    );
    eprintln!(
        "survivors' hint replays ({} more stopped at once: node 3 unreachable):\n  {}",
        refused.len(),
        replays.join("\n  ")
    );
    // Keys acknowledged before the kill: node 3 had them, or got them as hints when its copy
    // was in flight at the kill. Reported, not asserted (W = 2 needs only two copies).
    let up_missing = missing_on(&n3, &written_up.iter().collect::<Vec<_>>());
    eprintln!(
        "restarted node 3 held all {n_down} keys acknowledged while it was down {caught_up:?} \
         after its restart; of {} keys acknowledged before the kill it lacks {}",
        written_up.len(),
        up_missing.len()
    );
    eprintln!(
        "formed {t_formed:?}; verdict {settled:?} after the kill; stream ran {t_stream:?} after \
         the kill; whole test {:?}",
        started.elapsed()
    );
}
