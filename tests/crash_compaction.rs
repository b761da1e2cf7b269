//! Goal: `kill -9` during a memtable flush or a compaction, at random moments, loses no
//! acknowledged write (overwrites and deletes included) and leaves no table lost or doubled:
//! after every crash each shard directory matches its manifest once the node has reopened it.
//!
//! Method: 20 rounds (`KVS_CRASH_ROUNDS` asks for more) on one data directory, with a seeded rng
//! whose seed is printed (`KVS_CRASH_SEED` replays one). The node runs 2 shards with a 1 MiB
//! memtable, compaction after 2 level-0 tables, a 2 MiB level 1, 1 MiB output tables and an
//! 8 MiB/s compaction rate, so flushes and compactions run all the time and each compaction
//! takes a while. Each round:
//! 1. With the node stopped, reads each shard's newest manifest and checks that every table it
//!    lists is on disk with its recorded size (nothing lost by the crash); counts the stray
//!    `.sst.tmp` and unlisted `.sst` files the crash left.
//! 2. Starts the node, checks that its log reports removing exactly those strays, and reads
//!    every key the test ever wrote: the value must be the latest acknowledged one (a delete
//!    reads as missing). A write whose acknowledgement was lost may or may not be applied: the
//!    writer issues at most one write per key at a time and stops writing a key after a failed
//!    write, so such a key may read as its last acknowledged state or as the failed write; what
//!    it reads after the restart is durable and becomes its only accepted state.
//! 3. Waits (bounded) until no flush or compaction runs, then compares each shard directory
//!    with its manifest exactly (the same table ids and sizes, no `.sst.tmp`) and with the
//!    node's per-level table counters.
//! 4. Streams writes (64 in flight: overwrites of 8,000 keys, new keys, deletes) and, after a
//!    random number of acknowledgements, aims the kill, in turn, at a flush (a shard holds an
//!    immutable memtable), at a compaction (`compaction_running`), or at nothing (at once),
//!    polling the stats for at most 1.5 s; then SIGKILLs the node and records what the last
//!    sample showed.
//!
//! After the rounds the test asserts that kills landed during a flush and during a compaction
//! several times each (by the samples) and that crashes left stray table files (a table write
//! really was cut). Finally it stops the node cleanly and opens every table of each shard's
//! manifest with `SstableReader`: no (key, stamp) is in two tables, and tables of one level
//! below 0 do not overlap.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvs_wire::client::{Client, ClientOptions};
use kvs_wire::frame::FrameHeader;
use kvs_wire::msg::{self, ArchivedStatsResponse, StatsResponse};
use kvs_wire::Opcode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::{on_executor, Raw, Server};

const SHARDS: usize = 2;
const ROUNDS_DEFAULT: u64 = 20;
const OVERWRITE_KEYS: u64 = 8_000;
const NEW_KEYS_PER_ROUND_MAX: u64 = 400;
const INFLIGHT: usize = 64;
/// Writes one round issues at most (the kill normally comes first).
const OPS_PER_ROUND_MAX: u64 = 30_000;
/// Acknowledged writes before the kill is aimed: a random number in this range.
const ACKS_BEFORE_KILL: std::ops::Range<u64> = 500..4_000;
/// How long the killer polls the stats for the state it aims at.
const AIM_WAIT: Duration = Duration::from_millis(1_500);
const QUIESCE_WAIT: Duration = Duration::from_secs(30);
const ROUND_WRITE_WAIT: Duration = Duration::from_secs(30);
/// Kills that must have landed during a flush, and during a compaction.
const LANDED_MIN: u64 = 3;

fn server_args() -> Vec<&'static str> {
    vec![
        "--shards",
        "2",
        "--sync",
        "always",
        "--memtable-mb",
        "1",
        "--level0-file-trigger",
        "2",
        "--level-base-mb",
        "2",
        "--table-mb",
        "1",
        "--compaction-rate-mb",
        "8",
        "--compression",
        "none",
    ]
}

/// What a key may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Val {
    /// The value made by [`value_for`] from this tag.
    Put(u64),
    Deleted,
}

/// A key's accepted states: its last acknowledged write (`None`: never written, reads as
/// missing) and the failed writes after it whose fate is unknown.
#[derive(Clone, Debug, Default)]
struct KeyState {
    acked: Option<Val>,
    maybe: Vec<Val>,
}

impl KeyState {
    fn accepts(&self, key: &str, got: &Option<Vec<u8>>) -> Option<Val> {
        let candidates =
            std::iter::once(self.acked.unwrap_or(Val::Deleted)).chain(self.maybe.iter().copied());
        for c in candidates {
            match (c, got) {
                (Val::Deleted, None) => return Some(Val::Deleted),
                (Val::Put(tag), Some(v)) if *v == value_for(key, tag) => return Some(c),
                _ => {}
            }
        }
        None
    }
}

type Model = BTreeMap<String, KeyState>;

/// A value of 100..1100 bytes that names its key and tag, with incompressible filler.
fn value_for(key: &str, tag: u64) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let len = 100 + (x % 1000) as usize;
    let mut v = format!("{key}:{tag}:").into_bytes();
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

/// Streams writes until `OPS_PER_ROUND_MAX` or the node dies; returns the updated model.
fn write_round(
    addr: String,
    round: u64,
    seed: u64,
    model: Model,
    acked: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
) -> Model {
    on_executor(move || async move {
        let client =
            Client::connect(&addr, support::no_retry_client_opts()).await.expect("connect");
        let model = Rc::new(RefCell::new(model));
        // Keys with a write in flight, and keys whose write failed (not written again).
        let busy = Rc::new(RefCell::new(BTreeSet::<String>::new()));
        let rng = Rc::new(RefCell::new(StdRng::seed_from_u64(seed ^ round.wrapping_mul(7919))));
        let issued = Rc::new(RefCell::new(0u64));
        let new_keys = Rc::new(RefCell::new(0u64));
        let mut tasks = Vec::new();
        for _ in 0..INFLIGHT {
            let (client, model, busy, rng, issued, new_keys, acked, killed) = (
                client.clone(),
                model.clone(),
                busy.clone(),
                rng.clone(),
                issued.clone(),
                new_keys.clone(),
                acked.clone(),
                killed.clone(),
            );
            tasks.push(glommio::spawn_local(async move {
                loop {
                    if killed.load(Ordering::SeqCst) {
                        break;
                    }
                    let (key, val) = {
                        let mut n = issued.borrow_mut();
                        if *n >= OPS_PER_ROUND_MAX {
                            break;
                        }
                        let tag = (round << 32) | (*n + 1);
                        let mut rng = rng.borrow_mut();
                        let roll = rng.gen_range(0..100);
                        let mut new = new_keys.borrow_mut();
                        let key = if roll < 8 && *new < NEW_KEYS_PER_ROUND_MAX {
                            *new += 1;
                            format!("n{round:03}-{:04}", *new)
                        } else {
                            format!("o{:05}", rng.gen_range(0..OVERWRITE_KEYS))
                        };
                        if !busy.borrow_mut().insert(key.clone()) {
                            continue; // in flight, or failed this round
                        }
                        *n += 1;
                        (key, if roll >= 90 { Val::Deleted } else { Val::Put(tag) })
                    };
                    let res = match val {
                        Val::Put(tag) => client.put(key.as_bytes(), &value_for(&key, tag)).await,
                        Val::Deleted => client.delete(key.as_bytes()).await,
                    };
                    let mut m = model.borrow_mut();
                    let st = m.entry(key.clone()).or_default();
                    if res.is_ok() {
                        assert!(st.maybe.is_empty(), "{key}: written again after a failure");
                        st.acked = Some(val);
                        acked.fetch_add(1, Ordering::SeqCst);
                        busy.borrow_mut().remove(&key);
                    } else {
                        // Fate unknown; the key stays busy, so this stays its last write.
                        st.maybe.push(val);
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        client.close().await;
        let m = model.borrow().clone();
        m
    })
}

/// Reads every key of `model`; returns the model collapsed to what was read (durable, since
/// it was read after a restart) and the keys that read a state the model does not accept.
fn verify(addr: String, model: Model) -> (Model, Vec<String>) {
    on_executor(move || async move {
        let client = Client::connect(&addr, ClientOptions::default()).await.expect("connect");
        let keys: Rc<Vec<String>> = Rc::new(model.keys().cloned().collect());
        let model = Rc::new(RefCell::new(model));
        let next = Rc::new(RefCell::new(0usize));
        let bad = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..INFLIGHT {
            let (client, keys, model, next, bad) =
                (client.clone(), keys.clone(), model.clone(), next.clone(), bad.clone());
            tasks.push(glommio::spawn_local(async move {
                loop {
                    let j = {
                        let mut n = next.borrow_mut();
                        *n += 1;
                        *n - 1
                    };
                    let Some(key) = keys.get(j) else { break };
                    let got = match client.get(key.as_bytes()).await {
                        Ok(v) => v.map(|(v, _)| v),
                        Err(e) => {
                            bad.borrow_mut().push(format!("{key}: error {e}"));
                            continue;
                        }
                    };
                    let mut m = model.borrow_mut();
                    let st = m.get_mut(key).expect("key in model");
                    match st.accepts(key, &got) {
                        Some(v) => *st = KeyState { acked: Some(v), maybe: Vec::new() },
                        None => bad.borrow_mut().push(format!(
                            "{key}: read {:?}, expected {:?} or one of {:?}",
                            got.as_ref().map(|v| String::from_utf8_lossy(&v[..v.len().min(24)])),
                            st.acked,
                            st.maybe
                        )),
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        client.close().await;
        let m = model.borrow().clone();
        let b = bad.borrow().clone();
        (m, b)
    })
}

/// Counters of each shard, by name, from a Stats frame on the node port.
fn shard_stats(addr: &str) -> Option<Vec<HashMap<String, u64>>> {
    let mut raw = Raw::connect(addr);
    raw.send(&FrameHeader::request(Opcode::Stats, 1, 0).encode());
    let (h, body) = raw.recv()?;
    if h.opcode != Opcode::Stats {
        return None;
    }
    let resp: StatsResponse =
        msg::to_owned(msg::access::<ArchivedStatsResponse>(&body).ok()?).ok()?;
    if !resp.missing.is_empty() {
        return None;
    }
    Some(
        resp.shards
            .iter()
            .map(|s| s.counters.iter().map(|c| (c.name.clone(), c.value)).collect())
            .collect(),
    )
}

fn get(c: &HashMap<String, u64>, name: &str) -> u64 {
    c.get(name).copied().unwrap_or(0)
}

/// One shard directory as a reader of the files sees it.
#[derive(Debug, PartialEq, Eq)]
struct DirImage {
    /// The newest manifest's tables: id -> (level, size).
    listed: BTreeMap<u64, (u8, u64)>,
    /// `*.sst` files: id -> size.
    sst: BTreeMap<u64, u64>,
    /// `*.sst.tmp` files.
    tmp: Vec<String>,
}

fn read_dir_image(dir: &Path) -> DirImage {
    let mut newest: Option<(u64, std::path::PathBuf)> = None;
    let mut sst = BTreeMap::new();
    let mut tmp = Vec::new();
    for entry in std::fs::read_dir(dir).expect("shard dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if kvs_shards::sstable::is_temp_file_name(&name) {
            tmp.push(name);
        } else if let Some(id) = kvs_shards::sstable::TableId::parse_file_name(&name) {
            sst.insert(id.0, std::fs::metadata(&path).expect("sst metadata").len());
        } else if let Some(kvs_shards::manifest::ManifestFileName::Generation(g)) =
            kvs_shards::manifest::parse_manifest_name(&name)
        {
            if newest.as_ref().is_none_or(|(n, _)| g > *n) {
                newest = Some((g, path));
            }
        }
    }
    let mut listed = BTreeMap::new();
    if let Some((_, path)) = newest {
        let bytes = std::fs::read(&path).expect("read manifest");
        let (_, state) = kvs_shards::manifest::decode(&bytes)
            .unwrap_or_else(|e| panic!("{}: manifest does not decode: {e:?}", path.display()));
        for t in state.tables() {
            assert!(
                listed.insert(t.id.0, (t.level, t.size_bytes)).is_none(),
                "{}: table {} listed twice",
                path.display(),
                t.id.0
            );
        }
    }
    DirImage { listed, sst, tmp }
}

/// Checks the crash image of a stopped node: every listed table is on disk with its size.
/// Returns the stray table files (unlisted `.sst` and `.sst.tmp`) the crash left.
fn check_crash_image(data: &Path, round: u64) -> u64 {
    let mut strays = 0;
    for shard in 0..SHARDS {
        let dir = data.join(format!("shard-{shard}"));
        if !dir.exists() {
            continue;
        }
        let img = read_dir_image(&dir);
        for (id, (level, size)) in &img.listed {
            assert_eq!(
                img.sst.get(id),
                Some(size),
                "round {round}: shard {shard}: table {id} (level {level}) the manifest lists is \
                 lost or has the wrong size after the crash: {img:?}"
            );
        }
        strays += img.tmp.len() as u64;
        strays += img.sst.keys().filter(|id| !img.listed.contains_key(id)).count() as u64;
    }
    strays
}

/// Waits until no shard flushes or compacts, then checks that each shard directory holds
/// exactly the tables its manifest lists and that the node's counters agree. Returns the
/// number of live tables.
fn check_quiet_dirs(server: &Server, round: u64) -> u64 {
    let deadline = Instant::now() + QUIESCE_WAIT;
    let quiet = |s: &[HashMap<String, u64>]| {
        s.iter().all(|c| {
            get(c, "immutable_bytes") == 0
                && get(c, "compaction_running") == 0
                && get(c, "compaction_backlog_bytes") == 0
        })
    };
    loop {
        assert!(
            Instant::now() < deadline,
            "round {round}: flush and compaction did not settle within {QUIESCE_WAIT:?}; \
             stats: {:?}\nstderr:\n{}",
            shard_stats(&server.addr),
            server.stderr()
        );
        let before = match shard_stats(&server.addr) {
            Some(s) if quiet(&s) => s,
            _ => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let images: Vec<DirImage> = (0..SHARDS)
            .map(|i| read_dir_image(&server.data_dir.join(format!("shard-{i}"))))
            .collect();
        let after = shard_stats(&server.addr).expect("stats");
        let progress = |s: &[HashMap<String, u64>]| -> Vec<(u64, u64)> {
            s.iter().map(|c| (get(c, "flushes"), get(c, "compactions"))).collect()
        };
        if !quiet(&after) || progress(&before) != progress(&after) {
            continue; // work started while the directories were read: look again
        }
        let mut tables = 0;
        for (shard, img) in images.iter().enumerate() {
            let on_disk: BTreeMap<u64, u64> = img.sst.clone();
            let listed: BTreeMap<u64, u64> =
                img.listed.iter().map(|(id, (_, size))| (*id, *size)).collect();
            assert_eq!(
                on_disk, listed,
                "round {round}: shard {shard}: the table files differ from the manifest"
            );
            assert!(img.tmp.is_empty(), "round {round}: shard {shard}: {:?} left", img.tmp);
            let c = &after[shard];
            assert_eq!(get(c, "tables"), listed.len() as u64, "round {round}: shard {shard}");
            for level in 0..8u8 {
                let n = img.listed.values().filter(|(l, _)| *l == level).count() as u64;
                assert_eq!(
                    get(c, &format!("l{level}_tables")),
                    n,
                    "round {round}: shard {shard}: level {level} tables"
                );
            }
            tables += listed.len() as u64;
        }
        return tables;
    }
}

/// What the last stats sample before a kill showed.
#[derive(Clone, Copy, Debug, Default)]
struct Landed {
    flush: bool,
    compaction: bool,
}

#[derive(Clone, Copy, Debug)]
enum Aim {
    Flush,
    Compaction,
    Now,
}

/// Lets writes stream until `acks` are acknowledged, aims, and SIGKILLs the node.
fn kill_when(
    round: u64,
    server: &mut Server,
    rng: &mut StdRng,
    acked: &AtomicU64,
    writer_done: &AtomicBool,
) -> (Aim, Landed) {
    let acks = rng.gen_range(ACKS_BEFORE_KILL);
    // Rotate the aims, so every run aims at each state in a third of the rounds; the moment
    // within the state stays random.
    let aim = [Aim::Flush, Aim::Compaction, Aim::Now][(round % 3) as usize];
    let deadline = Instant::now() + ROUND_WRITE_WAIT;
    while acked.load(Ordering::SeqCst) < acks
        && !writer_done.load(Ordering::SeqCst)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let aim_deadline = Instant::now() + AIM_WAIT;
    let mut landed = Landed::default();
    loop {
        if let Some(s) = shard_stats(&server.addr) {
            landed = Landed {
                flush: s.iter().any(|c| get(c, "immutable_bytes") > 0),
                compaction: s.iter().any(|c| get(c, "compaction_running") > 0),
            };
        }
        let hit = match aim {
            Aim::Flush => landed.flush,
            Aim::Compaction => landed.compaction,
            Aim::Now => true,
        };
        if hit || Instant::now() > aim_deadline || writer_done.load(Ordering::SeqCst) {
            break;
        }
    }
    server.kill9();
    (aim, landed)
}

fn assert_no_panic(server: &Server, round: u64) {
    let err = server.stderr();
    assert!(!err.contains("panicked"), "round {round}: the node panicked:\n{err}");
}

#[test]
fn kill_9_during_flush_and_compaction_loses_nothing() {
    let seed = std::env::var("KVS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    let rounds = std::env::var("KVS_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS_DEFAULT)
        .max(ROUNDS_DEFAULT);
    println!("crash_compaction: seed {seed} (replay with KVS_CRASH_SEED={seed}), {rounds} rounds");
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::new();
    let (mut landed_flush, mut landed_compaction, mut stray_total, mut stray_rounds) =
        (0u64, 0u64, 0u64, 0u64);
    for round in 0..=rounds {
        let strays = check_crash_image(dir.path(), round);
        let server = Server::start(dir.path(), &server_args());
        let removed =
            server.stderr().matches("removing a table file the manifest does not list").count()
                as u64;
        assert_eq!(
            removed,
            strays,
            "round {round}: the node must remove exactly the stray table files on open; \
             stderr:\n{}",
            server.stderr()
        );
        if strays > 0 {
            stray_rounds += 1;
            stray_total += strays;
        }
        let (collapsed, bad) = verify(server.addr.clone(), std::mem::take(&mut model));
        assert!(
            bad.is_empty(),
            "seed {seed} round {round}: {} of {} keys read wrong after the crash, e.g. {:#?}",
            bad.len(),
            collapsed.len(),
            &bad[..bad.len().min(5)]
        );
        model = collapsed;
        let tables = check_quiet_dirs(&server, round);
        assert_no_panic(&server, round);
        if round == rounds {
            // The last restart only checks; stop cleanly and look inside the tables.
            let mut server = server;
            assert_eq!(server.stop(), Some(0), "clean stop; stderr:\n{}", server.stderr());
            assert_no_panic(&server, round);
            check_tables_unique(dir.path());
            break;
        }

        let mut server = server;
        let acked = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let writer_done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (addr, acked, killed, done) =
                (server.addr.clone(), acked.clone(), killed.clone(), writer_done.clone());
            let m = std::mem::take(&mut model);
            std::thread::spawn(move || {
                let m = write_round(addr, round, seed, m, acked, killed);
                done.store(true, Ordering::SeqCst);
                m
            })
        };
        let (aim, landed) = kill_when(round, &mut server, &mut rng, &acked, &writer_done);
        killed.store(true, Ordering::SeqCst);
        assert_no_panic(&server, round);
        model = writer.join().expect("writer thread");
        landed_flush += u64::from(landed.flush);
        landed_compaction += u64::from(landed.compaction);
        println!(
            "round {round}: {tables} tables after open, {strays} strays removed; killed after \
             {} acks aiming at {aim:?}: flush running {}, compaction running {} ({:.1} s)",
            acked.load(Ordering::SeqCst),
            landed.flush,
            landed.compaction,
            started.elapsed().as_secs_f64()
        );
    }
    println!(
        "{} keys verified; kills during a flush: {landed_flush}, during a compaction: \
         {landed_compaction}; {stray_total} stray table files in {stray_rounds} crash images; \
         {:.1} s",
        model.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        landed_flush >= LANDED_MIN,
        "seed {seed}: only {landed_flush} kills landed during a flush"
    );
    assert!(
        landed_compaction >= LANDED_MIN,
        "seed {seed}: only {landed_compaction} kills landed during a compaction"
    );
    assert!(stray_rounds >= 1, "seed {seed}: no kill ever cut a table write");
}

/// Opens every table each shard's manifest lists (the node is stopped) and checks that no
/// (key, stamp) is in two tables and that tables of one level below 0 do not overlap.
fn check_tables_unique(data: &Path) {
    let data = data.to_path_buf();
    let (tables, entries) = on_executor(move || async move {
        let (mut tables, mut entries) = (0u64, 0u64);
        for shard in 0..SHARDS {
            let dir = data.join(format!("shard-{shard}"));
            let manifest = kvs_shards::manifest::Manifest::open(&dir).await.expect("manifest");
            let mut seen: HashMap<(Vec<u8>, u64, u64), u64> = HashMap::new();
            for (level, metas) in manifest.state().levels().iter().enumerate() {
                let mut ranges: Vec<(Vec<u8>, Vec<u8>, u64)> = Vec::new();
                for meta in metas {
                    let path = dir.join(kvs_shards::sstable::TableId(meta.id.0).file_name());
                    let reader = kvs_shards::sstable::SstableReader::open(&path)
                        .await
                        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                    assert_eq!(reader.file_bytes(), meta.size_bytes, "{}", path.display());
                    let mut it = reader.iter();
                    let mut n = 0u64;
                    while let Some(e) = it.next().await.expect("table reads") {
                        let id = (e.key, e.stamp.hlc, e.stamp.node);
                        if let Some(other) = seen.insert(id.clone(), meta.id.0) {
                            panic!(
                                "shard {shard}: {:?} at stamp {:?} is in tables {other} and {}",
                                String::from_utf8_lossy(&id.0),
                                e.stamp,
                                meta.id.0
                            );
                        }
                        n += 1;
                    }
                    assert_eq!(n, meta.entries, "{}: entries", path.display());
                    entries += n;
                    tables += 1;
                    if level > 0 {
                        for (lo, hi, other) in &ranges {
                            assert!(
                                !meta.overlaps(lo, hi),
                                "shard {shard}: level {level} tables {other} and {} overlap",
                                meta.id.0
                            );
                        }
                        ranges.push((meta.min_key.clone(), meta.max_key.clone(), meta.id.0));
                    }
                    reader.close().await.expect("close");
                }
            }
        }
        (tables, entries)
    });
    println!("final image: {tables} tables, {entries} entries, each (key, stamp) in one table");
}
