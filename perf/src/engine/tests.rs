//! Goal: `kvs bench engine` counts what it did, verifies what it read, and refuses settings
//! that would make the figures meaningless.
//! Method: run the phases against an in-memory map engine (optionally one that corrupts
//! values or loses keys) on a real glommio executor, with a few thousand keys.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use clap::Parser;

use super::exec::parse_proc_io_write_bytes;
use super::*;

/// An engine over a `BTreeMap`; `corrupt_key` makes reads of that key index return a wrong
/// value, `lose_key` makes it missing.
#[derive(Default)]
struct MapEngine {
    map: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
    corrupt_key: Option<u64>,
    lose_key: Option<u64>,
    puts: Cell<u64>,
    gets: Cell<u64>,
    busy_polls: Cell<u32>,
}

impl EngineUnderTest for MapEngine {
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        futures_lite::future::yield_now().await;
        self.map.borrow_mut().insert(key.to_vec(), value.to_vec());
        self.puts.set(self.puts.get() + 1);
        // Pretend a flush is pending for a few polls after writes.
        self.busy_polls.set(2);
        Ok(())
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        futures_lite::future::yield_now().await;
        self.gets.set(self.gets.get() + 1);
        let index = keys::parse_present_key(key);
        if index.is_some() && index == self.lose_key {
            return Ok(None);
        }
        let mut v = self.map.borrow().get(key).cloned();
        if index.is_some() && index == self.corrupt_key {
            if let Some(b) = v.as_mut().and_then(|v| v.last_mut()) {
                *b ^= 0xff;
            }
        }
        Ok(v)
    }

    fn snapshot(&self) -> EngineSnapshot {
        let counters = BTreeMap::from([
            ("puts".to_string(), self.puts.get()),
            ("gets".to_string(), self.gets.get()),
            ("tables".to_string(), 0),
        ]);
        EngineSnapshot { counters, write_amplification: Some(1.0) }
    }

    fn background_busy(&self) -> bool {
        let left = self.busy_polls.get();
        self.busy_polls.set(left.saturating_sub(1));
        left > 0
    }

    async fn close(&self) -> Result<(), String> {
        Ok(())
    }
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: EngineBenchArgs,
}

fn config(extra: &[&str]) -> Result<EngineBenchConfig, String> {
    let mut argv = vec!["kvs-bench-engine"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).map_err(|e| e.to_string())?.args.to_config()
}

thread_local! {
    /// The engine of the run on this executor thread: a reopen finds its data again.
    static OPENED: RefCell<Option<Rc<MapEngine>>> = const { RefCell::new(None) };
}

fn run_map(
    cfg: &EngineBenchConfig,
    corrupt_key: Option<u64>,
    lose_key: Option<u64>,
) -> EngineReport {
    run(cfg, "test", move || async move {
        Ok(OPENED.with(|o| {
            let mut o = o.borrow_mut();
            Rc::clone(o.get_or_insert_with(|| {
                Rc::new(MapEngine { corrupt_key, lose_key, ..MapEngine::default() })
            }))
        }))
    })
    .unwrap()
}

#[test]
fn counts_every_phase() {
    let cfg =
        config(&["--num", "3000", "--reads", "2000", "--writes", "1500", "--allow-small"]).unwrap();
    assert_eq!(cfg.data_bytes, 3000 * 116);
    let r = run_map(&cfg, None, None);
    let names: Vec<&str> = r.phases.iter().map(|p| p.benchmark.as_str()).collect();
    assert_eq!(names, ["fillrandom", "readrandom", "readmissing", "overwrite"]);
    let [fill, read, missing, over] = &r.phases[..] else { unreachable!() };
    assert_eq!((fill.ops, fill.errors, fill.user_bytes_written), (3000, 0, 3000 * 116));
    // Every key written exactly once: the map holds num keys after the fill.
    assert_eq!(fill.engine.counters.get("puts"), Some(&3000));
    assert_eq!((read.ops, read.found, read.errors), (2000, 2000, 0));
    assert_eq!((missing.ops, missing.found, missing.errors), (2000, 0, 0));
    assert_eq!((over.ops, over.errors, over.user_bytes_written), (1500, 0, 1500 * 116));
    assert_eq!(over.engine.counters.get("puts"), Some(&4500));
    assert!(!fill.settle_timed_out && fill.settle_s > 0.0, "settle polls background_busy");
    assert_eq!(read.user_bytes_written, 0);
    assert!(read.latency.p50_us > 0.0 && read.latency.max_us >= read.latency.p99_us);
    assert!(!r.failed());
    let table = r.to_table();
    assert!(table.contains("readmissing") && table.contains("write amplification"), "{table}");
    let back: EngineReport = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(back.phases.len(), 4);
    assert_eq!(back.phases[1].found, 2000);
}

#[test]
fn reads_after_overwrite_accept_the_new_generation() {
    let cfg = config(&[
        "--num",
        "500",
        "--benchmarks",
        "fillrandom,overwrite,readrandom,overwrite,readrandom",
        "--allow-small",
        "--reopen",
    ])
    .unwrap();
    let r = run_map(&cfg, None, None);
    assert!(!r.failed(), "{}", r.to_table());
    assert!(r.phases[0].reopen_s.is_some(), "write phases reopen");
    assert!(r.phases[2].reopen_s.is_none(), "read phases do not");
}

#[test]
fn verification_catches_a_wrong_value_and_a_lost_key() {
    let cfg = config(&["--num", "200", "--reads", "4000", "--allow-small", "--concurrency", "8"])
        .unwrap();
    let r = run_map(&cfg, Some(7), None);
    let read = &r.phases[1];
    assert!(read.verify_errors > 0 && read.verify_errors == read.errors, "{read:?}");
    assert!(read.first_error.as_deref().is_some_and(|e| e.contains("key 7")), "{read:?}");
    assert!(r.failed());
    let r = run_map(&cfg, None, Some(9));
    let read = &r.phases[1];
    assert!(read.verify_errors > 0, "{read:?}");
    assert!(read.first_error.as_deref().is_some_and(|e| e.contains("key 9: not found")));
}

#[test]
fn refuses_meaningless_settings() {
    let small = config(&["--num", "1000"]).unwrap_err();
    assert!(small.contains("--allow-small") && small.contains("1157050"), "{small}");
    // The default size is large enough for the default budgets.
    config(&[]).unwrap();
    for (bad, why) in [
        (&["--benchmarks", "readrandom", "--allow-small"][..], "start with fillrandom"),
        (&["--benchmarks", "fillrandom,fillrandom", "--allow-small"][..], "only once"),
        (&["--key-bytes", "8", "--allow-small"][..], "--key-bytes"),
        (&["--value-bytes", "15", "--allow-small"][..], "--value-bytes"),
        (&["--concurrency", "0", "--allow-small"][..], "--concurrency"),
        (&["--num", "0", "--allow-small"][..], "--num"),
    ] {
        let e = config(bad).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

#[test]
fn reads_proc_io() {
    let text = "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 4096\n\
                cancelled_write_bytes: 0\n";
    assert_eq!(parse_proc_io_write_bytes(text), Some(4096));
    assert_eq!(parse_proc_io_write_bytes("rchar: 1\n"), None);
}

/// Every flag of `kvs bench engine` is documented in tuning.md.
#[test]
fn every_flag_is_in_tuning_md() {
    use clap::{Args, Command};
    let tuning = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning.md"));
    let section = tuning.split("## Engine benchmark").nth(1).expect("tuning.md has the section");
    let cmd = EngineBenchArgs::augment_args(Command::new("engine"));
    for arg in cmd.get_arguments() {
        if let Some(long) = arg.get_long() {
            assert!(section.contains(&format!("`--{long}`")), "tuning.md lacks --{long}");
        }
    }
}
