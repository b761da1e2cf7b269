//! The report of `kvs bench engine`: figures per phase, the table and the JSON (pure).
//!
//! ## JSON format
//! One object: `command` (string), `config` ([`EngineBenchConfig`], every setting),
//! `open_s` (seconds to open the engine) and `phases`, a list of [`PhaseReport`] in run order.
//! Latencies are µs with decimals (the histogram holds nanoseconds at 3 significant digits).
//! `perf/engine_vs_db_bench.sh` reads `phases[].benchmark`, `ops_per_sec`, `p50_us`, `p99_us`
//! and the write-amplification fields through `kvs bench engine-compare`.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::{EngineBenchConfig, EngineSnapshot};

/// Latency percentiles of one phase, µs.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencyUs {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl LatencyUs {
    /// The percentiles of a histogram in nanoseconds.
    pub fn of_ns(h: &Histogram<u64>) -> LatencyUs {
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencyUs {
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

/// The figures of one benchmark phase.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhaseReport {
    /// db_bench's name: fillrandom, readrandom, readmissing, overwrite.
    pub benchmark: String,
    /// Operations done (failed ones included).
    pub ops: u64,
    /// Failed operations plus verification errors.
    pub errors: u64,
    /// Values that did not verify, keys missing that should be there, or found that should not.
    pub verify_errors: u64,
    /// The first error, to say what went wrong.
    pub first_error: Option<String>,
    /// Reads that found a value (reads only).
    pub found: u64,
    /// Wall time of the operations, seconds (settling excluded).
    pub elapsed_s: f64,
    pub ops_per_sec: f64,
    #[serde(flatten)]
    pub latency: LatencyUs,
    /// Seconds waited after the phase for background work to finish (write phases).
    pub settle_s: f64,
    /// Whether that wait hit `--settle-timeout-s` with work still pending.
    pub settle_timed_out: bool,
    /// Seconds to close and reopen the engine after the phase (`--reopen`).
    pub reopen_s: Option<f64>,
    /// Key and value bytes this phase wrote.
    pub user_bytes_written: u64,
    /// Bytes this process sent to storage during the phase and its settling
    /// (`/proc/self/io` `write_bytes`); `None` where that file is unavailable.
    pub io_write_bytes: Option<u64>,
    /// `io_write_bytes / user_bytes_written` (write phases).
    pub io_write_amplification: Option<f64>,
    /// The engine's counters after the phase and its settling.
    pub engine: EngineSnapshot,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EngineReport {
    pub command: String,
    pub config: EngineBenchConfig,
    pub open_s: f64,
    pub phases: Vec<PhaseReport>,
}

/// Counters shown under each phase of the table, when the engine has them.
const SHOWN_COUNTERS: &[&str] = &[
    "tables",
    "table_bytes",
    "flushes",
    "compactions",
    "compaction_backlog_bytes",
    "memtable_bytes",
    "immutable_bytes",
    "user_bytes_written",
    "wal_bytes_written",
    "flush_bytes_written",
    "compaction_bytes_written",
    "block_cache_hits",
    "block_cache_misses",
    "bloom_useful",
    "bloom_false_positives",
];

impl EngineReport {
    /// Whether any operation failed or did not verify.
    pub fn failed(&self) -> bool {
        self.phases.iter().any(|p| p.errors > 0)
    }

    /// The JSON described in the module docs.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The table printed at the end of a run.
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(out, "command: {}", self.command);
        let _ = writeln!(
            out,
            "engine bench: {} keys × ({} + {}) bytes = {:.1} MiB, memtable {:.0} MiB, block cache \
             {:.0} MiB, sync {:?}{}, concurrency {}, reopen {}, seed {}",
            c.num,
            c.key_bytes,
            c.value_bytes,
            c.data_bytes as f64 / (1024.0 * 1024.0),
            c.memtable_bytes_max as f64 / (1024.0 * 1024.0),
            c.block_cache_bytes as f64 / (1024.0 * 1024.0),
            c.sync,
            match c.sync {
                super::EngineSync::Periodic => format!(" ({} ms)", c.sync_period_ms),
                super::EngineSync::Always => String::new(),
            },
            c.concurrency,
            c.reopen,
            c.seed,
        );
        let _ = writeln!(
            out,
            "{:<12} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9}",
            "benchmark",
            "ops",
            "ops/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "errors",
            "found"
        );
        for p in &self.phases {
            let _ = writeln!(
                out,
                "{:<12} {:>10} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>10.1} {:>8} {:>9}",
                p.benchmark,
                p.ops,
                p.ops_per_sec,
                p.latency.p50_us,
                p.latency.p99_us,
                p.latency.p999_us,
                p.latency.max_us,
                p.errors,
                p.found
            );
        }
        for p in &self.phases {
            let _ = write!(out, "\nafter {}: settle {:.2} s", p.benchmark, p.settle_s);
            if p.settle_timed_out {
                out.push_str(" (TIMED OUT: background work still pending)");
            }
            if let Some(s) = p.reopen_s {
                let _ = write!(out, ", reopen {s:.2} s");
            }
            if p.user_bytes_written > 0 {
                let wa = p.engine.write_amplification.map_or("n/a".into(), |w| format!("{w:.2}"));
                let io = p.io_write_amplification.map_or("n/a".into(), |w| format!("{w:.2}"));
                let _ = write!(
                    out,
                    "\n  write amplification: engine (since open) {wa}, process io {io} ({} of {} \
                     user bytes)",
                    p.io_write_bytes.map_or("n/a".into(), |b| b.to_string()),
                    p.user_bytes_written
                );
            }
            let counters = &p.engine.counters;
            let mut shown: Vec<String> = SHOWN_COUNTERS
                .iter()
                .filter_map(|name| counters.get(*name).map(|v| format!("{name}={v}")))
                .collect();
            shown.extend(
                counters
                    .iter()
                    .filter(|(k, _)| k.starts_with('l') && k.ends_with("_tables"))
                    .map(|(k, v)| format!("{k}={v}")),
            );
            if !shown.is_empty() {
                let _ = write!(out, "\n  engine: {}", shown.join(" "));
            }
            if let Some(e) = &p.first_error {
                let _ = write!(out, "\n  first error: {e}");
            }
        }
        out.push('\n');
        out
    }
}
