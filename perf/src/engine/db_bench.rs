//! Reading RocksDB `db_bench` output and setting it next to a `kvs bench engine` report (pure).
//!
//! [`parse`] reads what db_bench prints with `--histogram=1` (and `--statistics=1`): one
//! result line per benchmark,
//!
//! ```text
//! readrandom   :       3.284 micros/op 302626 ops/sec 0.017 seconds 5000 operations;   33.5 MB/s (5000 of 5000 found)
//! ```
//!
//! followed by its histogram, whose `Percentiles:` line gives P50/P75/P99/P99.9/P99.99 and
//! whose `Min: .. Median: .. Max: ..` line gives the maximum (all µs); and, at the end,
//! `rocksdb.<name> COUNT : <n>` statistics. Lines of other shapes (progress, compaction
//! stats) are skipped. Tested against captured output of db_bench 7.8.3 (`testdata/`).
//!
//! [`compare`] builds the side-by-side table `kvs bench engine-compare` prints: per benchmark,
//! ops/s and p50/p99 of both and the ratio kvs / db_bench, plus write amplification of the
//! fill. kvs's fillrandom writes every key once in random order, so it is matched with
//! db_bench's `filluniquerandom` (or `fillrandom` when that is what was run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use super::report::EngineReport;

/// One benchmark's result in db_bench's output.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DbBenchResult {
    pub benchmark: String,
    pub micros_per_op: f64,
    pub ops_per_sec: f64,
    pub seconds: f64,
    pub operations: u64,
    /// `(found, asked)` of read benchmarks.
    pub found: Option<(u64, u64)>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
}

/// Everything read from one db_bench output.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct DbBenchOutput {
    /// `RocksDB:    version 7.8.3`, if printed.
    pub version: Option<String>,
    pub results: Vec<DbBenchResult>,
    /// `rocksdb.*` tickers (`--statistics=1`), the last value of each.
    pub statistics: BTreeMap<String, u64>,
}

impl DbBenchOutput {
    /// db_bench's write amplification of this run: bytes of WAL, flushes and compactions
    /// (`rocksdb.wal.bytes + rocksdb.flush.write.bytes + rocksdb.compact.write.bytes`) per
    /// user byte (`user_bytes`, key + value of every write, the denominator kvs uses; db_bench's
    /// own `rocksdb.bytes.written` also counts write-batch headers). `None` without
    /// `--statistics=1` or with no user bytes.
    pub fn write_amplification(&self, user_bytes: u64) -> Option<f64> {
        let s = |name: &str| self.statistics.get(name).copied();
        let device = s("rocksdb.wal.bytes")?
            + s("rocksdb.flush.write.bytes")?
            + s("rocksdb.compact.write.bytes")?;
        (user_bytes > 0).then(|| device as f64 / user_bytes as f64)
    }
}

/// Parses db_bench's output (stdout and stderr together are fine).
pub fn parse(text: &str) -> DbBenchOutput {
    let mut out = DbBenchOutput::default();
    for raw in text.lines() {
        let line = strip_progress(raw);
        let line = line.trim();
        if let Some(v) = line.strip_prefix("RocksDB:") {
            out.version = Some(v.trim().trim_start_matches("version").trim().to_string());
        } else if let Some(r) = parse_result_line(line) {
            out.results.push(r);
        } else if let Some(rest) = line.strip_prefix("Percentiles:") {
            if let Some(r) = out.results.last_mut().filter(|r| r.p50_us.is_none()) {
                let p = parse_pairs(rest);
                r.p50_us = p.get("P50").copied();
                r.p99_us = p.get("P99").copied();
                r.p999_us = p.get("P99.9").copied();
            }
        } else if line.starts_with("Min:") && line.contains("Max:") {
            if let Some(r) = out.results.last_mut().filter(|r| r.max_us.is_none()) {
                r.max_us = parse_pairs(line).get("Max").copied();
            }
        } else if line.starts_with("rocksdb.") {
            if let Some((name, count)) = line.split_once(" COUNT : ") {
                if let Ok(n) = count.trim().parse() {
                    out.statistics.insert(name.trim().to_string(), n);
                }
            }
        }
    }
    out
}

/// The text after db_bench's progress output (`... finished N ops` repeated, padded with
/// spaces and no newline when stdout is not a terminal), which may share a line with a result.
fn strip_progress(raw: &str) -> &str {
    let last = raw.rsplit("... finished").next().unwrap_or(raw).trim_start();
    match last.split_once(" ops") {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => last,
    }
}

/// `name : X micros/op Y ops/sec Z seconds N operations; ... (F of A found)`.
fn parse_result_line(line: &str) -> Option<DbBenchResult> {
    let (name, rest) = line.split_once(':')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let words: Vec<&str> = rest.split_whitespace().collect();
    let before = |unit: &str| -> Option<&str> {
        let at = words.iter().position(|w| w.trim_end_matches(';') == unit)?;
        words.get(at.checked_sub(1)?).copied()
    };
    let micros_per_op = before("micros/op")?.parse().ok()?;
    let ops_per_sec = before("ops/sec")?.parse().ok()?;
    let seconds = before("seconds")?.parse().ok()?;
    let operations = before("operations")?.parse().ok()?;
    let found = rest.rsplit_once('(').and_then(|(_, tail)| {
        let tail = tail.strip_suffix(" found)")?;
        let (f, a) = tail.split_once(" of ")?;
        Some((f.trim().parse().ok()?, a.trim().parse().ok()?))
    });
    Some(DbBenchResult {
        benchmark: name.to_string(),
        micros_per_op,
        ops_per_sec,
        seconds,
        operations,
        found,
        ..DbBenchResult::default()
    })
}

/// `K1: v1 K2: v2 ...` into a map (values that do not parse are left out).
fn parse_pairs(text: &str) -> BTreeMap<&str, f64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .filter_map(|w| match w {
            [k, v] => Some((k.strip_suffix(':')?, v.parse().ok()?)),
            _ => None,
        })
        .collect()
}

/// Flags of `kvs bench engine-compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct CompareArgs {
    /// The JSON report of `kvs bench engine --json`.
    #[arg(long)]
    pub kvs: PathBuf,
    /// db_bench output files (all benchmarks of all files are read, in order; a later result
    /// of the same benchmark wins). The first file's statistics give the fill's write
    /// amplification.
    #[arg(long = "db-bench", required = true)]
    pub db_bench: Vec<PathBuf>,
    /// Also write the comparison as Markdown to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Also write both sides' parsed figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Runs `kvs bench engine-compare`: reads the files, prints the comparison and writes the
/// files asked for.
pub fn run_compare(args: &CompareArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(&args.kvs)
        .with_context(|| format!("reading --kvs {}", args.kvs.display()))?;
    let kvs: EngineReport = serde_json::from_str(&text).with_context(|| {
        format!("--kvs {} is not a kvs bench engine report", args.kvs.display())
    })?;
    let mut db = Vec::with_capacity(args.db_bench.len());
    for path in &args.db_bench {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --db-bench {}", path.display()))?;
        let parsed = parse(&text);
        if parsed.results.is_empty() {
            anyhow::bail!("--db-bench {}: no benchmark result found", path.display());
        }
        db.push(parsed);
    }
    let table = compare(&kvs, &db);
    println!("{table}");
    if let Some(path) = &args.markdown {
        std::fs::write(path, &table)
            .with_context(|| format!("writing --markdown {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let both = serde_json::json!({ "kvs": kvs, "db_bench": db });
        std::fs::write(path, serde_json::to_string_pretty(&both)? + "\n")
            .with_context(|| format!("writing --json {}", path.display()))?;
    }
    Ok(())
}

/// The db_bench benchmark that corresponds to a kvs one.
fn db_bench_names(kvs: &str) -> &'static [&'static str] {
    match kvs {
        "fillrandom" => &["filluniquerandom", "fillrandom"],
        "readrandom" => &["readrandom"],
        "readmissing" => &["readmissing"],
        "overwrite" => &["overwrite"],
        _ => &[],
    }
}

/// The side-by-side comparison as a Markdown table (also readable as text).
pub fn compare(kvs: &EngineReport, db: &[DbBenchOutput]) -> String {
    let mut out = String::new();
    let ratio = |a: f64, b: Option<f64>| match b {
        Some(b) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    };
    let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
    let _ = writeln!(
        out,
        "| benchmark | kvs ops/s | db_bench ops/s | ops/s kvs/db | kvs p50 µs | db p50 µs | kvs p99 \
         µs | db p99 µs | p99 kvs/db | kvs p99.9 µs | db p99.9 µs |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &kvs.phases {
        let names = db_bench_names(&p.benchmark);
        let d = db
            .iter()
            .flat_map(|o| o.results.iter())
            .rfind(|r| names.contains(&r.benchmark.as_str()));
        let label = match d {
            Some(d) if d.benchmark != p.benchmark => format!("{} ({})", p.benchmark, d.benchmark),
            _ => p.benchmark.clone(),
        };
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {:.2} | {} |",
            p.ops_per_sec,
            d.map_or("n/a".into(), |d| format!("{:.0}", d.ops_per_sec)),
            ratio(p.ops_per_sec, d.map(|d| d.ops_per_sec)),
            p.latency.p50_us,
            opt(d.and_then(|d| d.p50_us)),
            p.latency.p99_us,
            opt(d.and_then(|d| d.p99_us)),
            ratio(p.latency.p99_us, d.and_then(|d| d.p99_us)),
            p.latency.p999_us,
            opt(d.and_then(|d| d.p999_us)),
        );
    }
    let c = &kvs.config;
    let fill_user_bytes = c.num * (c.key_bytes + c.value_bytes) as u64;
    let fill = kvs.phases.iter().find(|p| p.benchmark == "fillrandom");
    let db_wa = db.first().and_then(|o| o.write_amplification(fill_user_bytes));
    let _ = writeln!(
        out,
        "\nWrite amplification of the fill (device bytes per user byte, user bytes = num × \
         (key + value) = {fill_user_bytes}):\n\n\
         | | kvs engine counters | kvs process io (/proc/self/io) | db_bench (wal + flush + \
         compaction bytes) |\n|---|---:|---:|---:|\n| fill | {} | {} | {} |",
        opt(fill.and_then(|p| p.engine.write_amplification)),
        opt(fill.and_then(|p| p.io_write_amplification)),
        opt(db_wa),
    );
    if let Some(v) = db.iter().find_map(|o| o.version.clone()) {
        let _ = writeln!(out, "\ndb_bench: RocksDB {v}");
    }
    for p in &kvs.phases {
        if p.errors > 0 {
            let _ = writeln!(
                out,
                "\nkvs {}: {} errors ({} verification): {}",
                p.benchmark,
                p.errors,
                p.verify_errors,
                p.first_error.as_deref().unwrap_or("")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    //! Goal: db_bench 7.8.3's real output is read correctly (captured files in `testdata/`),
    //! and the comparison pairs benchmarks and computes ratios.
    use super::*;

    const FILL: &str = include_str!("testdata/db_bench_7.8.3_fill.txt");
    const READS: &str = include_str!("testdata/db_bench_7.8.3_reads.txt");

    #[test]
    fn parses_fill_output() {
        let o = parse(FILL);
        assert_eq!(o.version.as_deref(), Some("7.8.3"));
        assert_eq!(o.results.len(), 1, "{:?}", o.results);
        let r = &o.results[0];
        assert_eq!(r.benchmark, "filluniquerandom");
        assert_eq!(r.micros_per_op, 5.304);
        assert_eq!(r.ops_per_sec, 188_403.0);
        assert_eq!(r.seconds, 0.106);
        assert_eq!(r.operations, 20_000);
        assert_eq!(r.found, None);
        assert_eq!(r.p50_us, Some(4.44));
        assert_eq!(r.p99_us, Some(12.02));
        assert_eq!(r.p999_us, Some(57.94));
        assert_eq!(r.max_us, Some(3531.0));
        assert_eq!(o.statistics.get("rocksdb.wal.bytes"), Some(&2_620_000));
        assert_eq!(o.statistics.get("rocksdb.flush.write.bytes"), Some(&1_728_257));
        assert_eq!(o.statistics.get("rocksdb.compact.write.bytes"), Some(&0));
        let wa = o.write_amplification(20_000 * 116).unwrap();
        assert!((wa - (2_620_000.0 + 1_728_257.0) / 2_320_000.0).abs() < 1e-9);
        assert_eq!(o.write_amplification(0), None);
    }

    #[test]
    fn parses_read_output() {
        let o = parse(READS);
        let names: Vec<&str> = o.results.iter().map(|r| r.benchmark.as_str()).collect();
        assert_eq!(names, ["readrandom", "readmissing", "overwrite"]);
        let rr = &o.results[0];
        assert_eq!(rr.ops_per_sec, 302_626.0);
        assert_eq!(rr.found, Some((5000, 5000)));
        assert_eq!(rr.p50_us, Some(2.98));
        assert_eq!(rr.p99_us, Some(9.53));
        let rm = &o.results[1];
        assert_eq!(rm.found, Some((0, 5000)));
        assert_eq!(rm.p99_us, Some(3.59));
        assert_eq!(rm.max_us, Some(202.0));
        let ow = &o.results[2];
        assert_eq!(ow.operations, 20_000);
        assert_eq!(ow.p50_us, Some(3.11));
        assert_eq!(ow.p999_us, Some(43.0));
    }

    #[test]
    fn result_line_shapes() {
        let r = parse_result_line(
            "readrandom   :       1.888 micros/op 528820 ops/sec 0.038 seconds 20000 operations;   \
             36.3 MB/s (12409 of 20000 found)",
        )
        .unwrap();
        assert_eq!(r.found, Some((12_409, 20_000)));
        assert_eq!(r.micros_per_op, 1.888);
        assert!(parse_result_line("Keys:       16 bytes each").is_none());
        assert!(parse_result_line("DB path: [/tmp/x]").is_none());
        assert!(parse_result_line("").is_none());
        // A result glued to a progress line, as db_bench prints it without a terminal.
        let o = parse(
            "... finished 20000 ops                              fillrandom   :       3.842 \
             micros/op 260152 ops/sec 0.077 seconds 20000 operations;   28.8 MB/s\n\
             Percentiles: P50: 2.98 P75: 3.56 P99: 6.63 P99.9: 33.00 P99.99: 315.00\n",
        );
        assert_eq!(o.results.len(), 1);
        assert_eq!(o.results[0].benchmark, "fillrandom");
        assert_eq!(o.results[0].p99_us, Some(6.63));
    }
}
