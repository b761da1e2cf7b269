//! Goal: with `--sync always`, every write the server acknowledged survives `kill -9`.
//! Method: five rounds on one data directory. Each round starts the server, writes up to 10,000
//! new keys through the shard-aware client with 128 requests in flight, records each key whose
//! put was acknowledged, and SIGKILLs the server from another thread at a random moment while
//! writes stream. The server is restarted and every key acknowledged in this or an earlier round
//! is read back and compared with its value. The memtable budget is 1 MiB, so shards freeze and
//! flush memtables to SSTables while writes stream and crashes land during and after flushes.

#![allow(clippy::disallowed_methods, reason = "test threads may sleep: they are not executors")]

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kvs_wire::client::{Client, ClientOptions};
use rand::{Rng, SeedableRng};
use support::{on_executor, Server};

const KEYS_PER_ROUND: u64 = 10_000;
const INFLIGHT: u64 = 128;
const ROUNDS: u64 = 5;

fn value_for(round: u64, i: u64) -> Vec<u8> {
    format!("value-{round}-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

/// Writes keys `r{round}-{i}` until done or the server dies; returns the acknowledged ones.
fn write_round(
    addr: String,
    round: u64,
    acked: Arc<AtomicU64>,
    killed: Arc<AtomicBool>,
) -> Vec<u64> {
    on_executor(move || async move {
        let client =
            Client::connect(&addr, support::no_retry_client_opts()).await.expect("connect");
        let next = Rc::new(RefCell::new(0u64));
        let done = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..INFLIGHT {
            let (client, next, done, acked, killed) =
                (client.clone(), next.clone(), done.clone(), acked.clone(), killed.clone());
            tasks.push(glommio::spawn_local(async move {
                loop {
                    let i = {
                        let mut n = next.borrow_mut();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= KEYS_PER_ROUND || killed.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("r{round}-{i}");
                    if client.put(key.as_bytes(), &value_for(round, i)).await.is_ok() {
                        done.borrow_mut().push(i);
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        client.close().await;
        let v = done.borrow().clone();
        v
    })
}

/// Reads every acknowledged key back; returns the keys that are missing or wrong.
fn verify(addr: String, acked: BTreeMap<u64, Vec<u64>>) -> Vec<String> {
    on_executor(move || async move {
        let client =
            Client::connect(&addr, ClientOptions::default()).await.expect("connect after restart");
        let work: Vec<(u64, u64)> =
            acked.iter().flat_map(|(r, is)| is.iter().map(move |i| (*r, *i))).collect();
        let work = Rc::new(work);
        let next = Rc::new(RefCell::new(0usize));
        let bad = Rc::new(RefCell::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (client, work, next, bad) =
                (client.clone(), work.clone(), next.clone(), bad.clone());
            tasks.push(glommio::spawn_local(async move {
                loop {
                    let j = {
                        let mut n = next.borrow_mut();
                        let j = *n;
                        *n += 1;
                        j
                    };
                    let Some(&(round, i)) = work.get(j) else {
                        break;
                    };
                    let key = format!("r{round}-{i}");
                    match client.get(key.as_bytes()).await {
                        Ok(Some((v, _))) if v == value_for(round, i) => {}
                        other => bad
                            .borrow_mut()
                            .push(format!("{key}: {:?}", other.map(|o| o.map(|(v, _)| v.len())))),
                    }
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        client.close().await;
        let b = bad.borrow().clone();
        b
    })
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acked_by_round: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut server =
            Server::start(dir.path(), &["--shards", "2", "--sync", "always", "--memtable-mb", "1"]);
        // Everything acknowledged so far is there after the previous crash.
        let bad = verify(server.addr.clone(), acked_by_round.clone());
        assert!(
            bad.is_empty(),
            "round {round}: {} acknowledged keys lost after restart, e.g. {:?}",
            bad.len(),
            &bad[..bad.len().min(5)]
        );

        let kill_after = rng.gen_range(500..KEYS_PER_ROUND - 1000);
        let acked = Arc::new(AtomicU64::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let writer = {
            let (addr, acked, killed) = (server.addr.clone(), acked.clone(), killed.clone());
            std::thread::spawn(move || write_round(addr, round, acked, killed))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::SeqCst) < kill_after && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        server.kill9();
        killed.store(true, Ordering::SeqCst);
        let done = writer.join().expect("writer thread");
        println!(
            "round {round}: killed after {kill_after} acks; {} writes acknowledged in all",
            done.len()
        );
        assert!(done.len() as u64 >= kill_after, "the server was killed mid-stream, not before it");
        acked_by_round.insert(round, done);
    }
    let server =
        Server::start(dir.path(), &["--shards", "2", "--sync", "always", "--memtable-mb", "1"]);
    let total: usize = acked_by_round.values().map(Vec::len).sum();
    let bad = verify(server.addr.clone(), acked_by_round.clone());
    assert!(
        bad.is_empty(),
        "{} of {total} acknowledged keys lost, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    println!("all {total} acknowledged writes read back after {ROUNDS} crashes");
    // Whether a flush finished before each kill is timing; make sure the store also works with
    // tables on disk: write past the 1 MiB budget on both shards, wait (bounded) for the
    // background flushes, and read everything again, from SSTables this time.
    let tables_on_disk = || -> usize {
        (0..2)
            .map(|i| {
                std::fs::read_dir(dir.path().join(format!("shard-{i}")))
                    .map(|d| {
                        d.filter(|e| {
                            e.as_ref()
                                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sst"))
                        })
                        .count()
                    })
                    .unwrap_or(0)
            })
            .sum()
    };
    let before = tables_on_disk();
    let filler = write_round(
        server.addr.clone(),
        99,
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(filler.len() as u64, KEYS_PER_ROUND, "every filler write is acknowledged");
    let filler2 = write_round(
        server.addr.clone(),
        98,
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(filler2.len() as u64, KEYS_PER_ROUND);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tables_on_disk() <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tables = tables_on_disk();
    println!("SSTables on disk: {before} after the crashes, {tables} after the filler writes");
    assert!(tables > before, "writing past the memtable budget must flush a table");
    acked_by_round.insert(99, filler);
    acked_by_round.insert(98, filler2);
    let bad = verify(server.addr.clone(), acked_by_round);
    assert!(
        bad.is_empty(),
        "{} keys lost with tables on disk, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}
