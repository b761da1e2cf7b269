//! `kvs bench engine`: the harness of `kvs_perf::engine` run against one `kvs_shards::Engine`,
//! in process, on one glommio executor, with no network.
//!
//! This lives in the `kvs` crate because `kvs-perf` may not depend on `kvs-shards`
//! (ARCHITECTURE.md); it only adapts the engine to [`EngineUnderTest`] and maps the flags to
//! [`ShardOptions`] (every field the flags do not name keeps its default, so new engine
//! options, e.g. for compaction, take their defaults here too).
//!
//! Stamps: the adapter is the only writer, so it stamps writes with a counter (node 1) that
//! starts above the greatest stamp the engine recovered: after `--reopen`, an overwrite still
//! supersedes the fill.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

use anyhow::Context;
use kvs_perf::engine::{
    EngineBenchArgs, EngineBenchConfig, EngineSnapshot, EngineSync, EngineUnderTest,
};
use kvs_shards::{Engine, Lookup, ShardOptions, Stamp, SyncMode};

/// Node id of the benchmark's stamps.
const BENCH_NODE: u64 = 1;

/// One shard engine under test.
pub struct KvsEngine {
    engine: Rc<Engine>,
    /// The hybrid-clock reading of the last write.
    hlc: Cell<u64>,
}

impl KvsEngine {
    /// Opens the engine with `opts`, seeding the stamp counter above what it recovered.
    pub async fn open(opts: ShardOptions) -> Result<Rc<KvsEngine>, String> {
        let (engine, report) = Engine::open(opts).await.map_err(|e| e.to_string())?;
        let hlc = report.max_stamp.map_or(0, |s| s.hlc);
        Ok(Rc::new(KvsEngine { engine, hlc: Cell::new(hlc) }))
    }
}

impl EngineUnderTest for KvsEngine {
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let hlc = self.hlc.get() + 1;
        self.hlc.set(hlc);
        let stamp = Stamp { hlc, node: BENCH_NODE };
        self.engine.put(key, value, stamp).await.map_err(|e| e.to_string())
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self.engine.get(key).await.map_err(|e| e.to_string())? {
            Lookup::Found { value, .. } => Ok(Some(value)),
            Lookup::Deleted { .. } | Lookup::Missing => Ok(None),
        }
    }

    fn snapshot(&self) -> EngineSnapshot {
        let stats = self.engine.stats();
        EngineSnapshot {
            counters: stats.counters().into_iter().collect(),
            write_amplification: stats.write_amplification(),
        }
    }

    fn background_busy(&self) -> bool {
        let s = self.engine.stats();
        s.immutable_bytes > 0 || s.compaction_running || s.compaction_backlog_bytes > 0
    }

    async fn close(&self) -> Result<(), String> {
        self.engine.close().await.map_err(|e| e.to_string())
    }
}

/// The engine options a benchmark configuration asks for.
pub fn shard_options(config: &EngineBenchConfig) -> ShardOptions {
    ShardOptions {
        dir: config.dir.clone(),
        sync: match config.sync {
            EngineSync::Always => SyncMode::Always,
            EngineSync::Periodic => SyncMode::Periodic,
        },
        sync_period_ms: config.sync_period_ms,
        memtable_bytes_max: config.memtable_bytes_max,
        block_cache_bytes: config.block_cache_bytes,
        ..ShardOptions::default()
    }
}

/// Runs `kvs bench engine`: checks the flags and the directory, runs the phases, prints the
/// table and writes `--json`. Returns the exit code (0, or 1 when an operation failed or did
/// not verify); an error means the run could not be done.
pub fn run(args: &EngineBenchArgs) -> anyhow::Result<i32> {
    let config = args.to_config().map_err(anyhow::Error::msg)?;
    let report = run_config(&config, &kvs_perf::runner::command_line())?;
    println!("{}", report.to_table());
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing --json {}", path.display()))?;
    }
    Ok(if report.failed() {
        kvs_perf::runner::EXIT_OPERATIONS_FAILED
    } else {
        kvs_perf::runner::EXIT_OK
    })
}

/// Runs the phases of `config` against a kvs engine in `config.dir`, which must be absent or
/// empty.
pub fn run_config(
    config: &EngineBenchConfig,
    command: &str,
) -> anyhow::Result<kvs_perf::engine::EngineReport> {
    ensure_empty_dir(&config.dir)?;
    let opts = shard_options(config);
    opts.validate().map_err(|e| anyhow::anyhow!("engine options: {e}"))?;
    eprintln!("command: {command}");
    kvs_perf::engine::run(config, command, move || KvsEngine::open(opts.clone()))
}

fn ensure_empty_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                anyhow::bail!(
                    "--dir {} is not empty: the benchmark fills a fresh engine; remove it or \
                     name another",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::anyhow!("--dir {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    //! Goal: the harness runs against the real engine: every phase counts its operations,
    //! every read verifies, flushes happen and are reported, and a reopen keeps the data.
    //! Method: a few thousand keys with the smallest memtable, so the fill flushes tables.
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EngineBenchArgs,
    }

    fn config(dir: &Path, extra: &[&str]) -> EngineBenchConfig {
        let mut argv = vec!["engine", "--dir", dir.to_str().unwrap(), "--allow-small"];
        argv.extend_from_slice(extra);
        let mut c = Cli::try_parse_from(argv).unwrap().args.to_config().unwrap();
        // Below the 1 MiB the flag can say: flush every ~64 KiB, several tables.
        c.memtable_bytes_max = 64 * 1024;
        c.block_cache_bytes = 64 * 1024;
        c
    }

    #[test]
    fn runs_every_phase_on_the_real_engine() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("engine");
        let c = config(
            &dir,
            &[
                "--num",
                "4000",
                "--reads",
                "3000",
                "--writes",
                "2000",
                "--reopen",
                "--concurrency",
                "16",
            ],
        );
        let r = run_config(&c, "test").unwrap();
        assert!(!r.failed(), "{}", r.to_table());
        let [fill, read, missing, over] = &r.phases[..] else { panic!("{}", r.to_table()) };
        assert_eq!((fill.ops, fill.errors), (4000, 0));
        assert!(!fill.settle_timed_out);
        assert!(fill.reopen_s.is_some());
        let flushes = fill.engine.counters.get("flushes").copied().unwrap_or(0);
        let tables = fill.engine.counters.get("tables").copied().unwrap_or(0);
        assert!(flushes > 0 && tables > 0, "{}", r.to_table());
        assert_eq!(fill.engine.counters.get("puts"), Some(&4000));
        assert_eq!((read.ops, read.found, read.verify_errors), (3000, 3000, 0));
        assert_eq!((missing.ops, missing.found, missing.verify_errors), (3000, 0, 0));
        assert_eq!((over.ops, over.errors), (2000, 0));
        assert_eq!(over.user_bytes_written, 2000 * 116);
        // The directory now holds an engine: a second run refuses it.
        let e = run_config(&c, "test").unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
    }

    #[test]
    fn an_overwrite_after_a_reopen_supersedes_the_fill() {
        let tmp = tempfile::tempdir().unwrap();
        let c = config(
            &tmp.path().join("engine"),
            &["--num", "2000", "--benchmarks", "fillrandom,overwrite,readrandom", "--reopen"],
        );
        let r = run_config(&c, "test").unwrap();
        assert!(!r.failed(), "{}", r.to_table());
        assert_eq!(r.phases[2].found, 2000);
        // Reads accept any generation written so far, so a lost overwrite would still
        // verify: look at the stored generations. 2000 uniform overwrites of 2000 keys reach
        // about 63% of them (1264 ± 21); with stamps restarting at 0 after the reopen about
        // half of those would lose to the fill's stamps.
        let opts = shard_options(&c);
        let overwritten = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let (engine, _) = Engine::open(opts).await.unwrap();
                let mut key = Vec::new();
                let mut overwritten = 0;
                for i in 0..2000 {
                    kvs_perf::engine::keys::present_key(i, 16, &mut key);
                    let Lookup::Found { value, .. } = engine.get(&key).await.unwrap() else {
                        panic!("key {i} lost");
                    };
                    kvs_perf::engine::keys::verify_value(i, 1, 100, &value).unwrap();
                    overwritten += u32::from(value.get(8..12) == Some(&1u32.to_le_bytes()[..]));
                }
                engine.close().await.unwrap();
                overwritten
            })
            .unwrap()
            .join()
            .unwrap();
        assert!((1150..=1400).contains(&overwritten), "{overwritten} keys hold generation 1");
    }
}
