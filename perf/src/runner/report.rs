//! The report of a run, built from the merged histograms without any I/O: the table printed at
//! the end, and the JSON written by `--json`.
//!
//! ## JSON format
//!
//! One object. Top-level keys (scripts read `ops_per_sec` and `p99_us` from here):
//!
//! | key | type | meaning |
//! |---|---|---|
//! | `command` | string | the exact command line |
//! | `ops_per_sec` | number | measured operations / measured seconds, all kinds |
//! | `count`, `errors`, `verify_errors` | integer | all kinds |
//! | `p50_us` `p90_us` `p99_us` `p999_us` `max_us` `mean_us` | integer, number | latency, all kinds |
//! | `elapsed_s` | number | the measured window |
//! | `warmup_ops` | integer | operations done during `--warmup`, not recorded |
//! | `loop` | string | `closed` or `open` |
//! | `latency_from` | string | `send` (closed) or `intended_start` (open loop) |
//! | `service` | object or absent | open loop: the same percentiles measured from the actual send |
//! | `operations` | object | per kind (`read`, `update`, `insert`, `read-modify-write`, `delete`): the same fields as the top level, plus `first_error` |
//! | `histogram` | array | `[percentile, value_us]` points, see below; also in each operation |
//! | `histogram_format` | string | describes `histogram` |
//! | `client_cpu` | object | `user_s`, `sys_s`, `total_s`, `wall_s`, `core_percent` |
//! | `config` | object | every setting of the run |
//!
//! Histograms are lists of `[percentile, value_us]` from HdrHistogram's `iter_quantiles(2)`:
//! percentiles from 0 to 100, each step halving the distance to 100, so the tail is sampled
//! finely; the last point is the maximum at percentile 100. Values are µs at 3 significant
//! digits. Enough to redraw a percentile curve; not a full histogram.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;

use super::cpu::CpuUse;
use super::options::BenchConfig;
use super::stats::{OpStats, RunStats};

/// Steps per halving of the distance to 100% in the stored percentile points.
pub const QUANTILE_TICKS_PER_HALF: u32 = 2;

/// What `histogram` holds, stored in the JSON next to it.
pub const HISTOGRAM_FORMAT: &str =
    "[percentile, value_us] points of HdrHistogram iter_quantiles(2) \
     (µs, 3 significant digits); the last point is the max at percentile 100";

/// Latency percentiles of one histogram, µs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

/// The figures of one operation kind, or of all of them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpReport {
    pub count: u64,
    pub ops_per_sec: f64,
    #[serde(flatten)]
    pub latency: Latency,
    pub errors: u64,
    pub verify_errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Open loop only: latency from the actual send, which hides waiting for a free slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<Latency>,
    pub histogram: Vec<(f64, u64)>,
}

impl OpReport {
    fn of(s: &OpStats, measured_s: f64, open_loop: bool) -> OpReport {
        OpReport {
            count: s.count,
            ops_per_sec: if measured_s > 0.0 { s.count as f64 / measured_s } else { 0.0 },
            latency: Latency::of(&s.latency_us),
            errors: s.errors,
            verify_errors: s.verify_errors,
            first_error: s.first_error.clone(),
            service: open_loop.then(|| Latency::of(&s.service_us)),
            histogram: quantile_points(&s.latency_us),
        }
    }
}

/// The whole report; serializes to the JSON described in the module docs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub command: String,
    #[serde(flatten)]
    pub overall: OpReport,
    pub elapsed_s: f64,
    pub warmup_ops: u64,
    #[serde(rename = "loop")]
    pub loop_kind: &'static str,
    pub latency_from: &'static str,
    pub operations: BTreeMap<String, OpReport>,
    pub histogram_format: &'static str,
    pub client_cpu: CpuUse,
    pub config: BenchConfig,
}

impl Report {
    /// Builds the report of a finished run.
    pub fn build(command: &str, config: &BenchConfig, stats: &RunStats, cpu: CpuUse) -> Report {
        let open_loop = config.rate.is_some();
        let measured_s = stats.measured_ns as f64 / 1e9;
        let operations = stats
            .ops
            .iter()
            .map(|(kind, s)| (kind.name().to_string(), OpReport::of(s, measured_s, open_loop)))
            .collect();
        Report {
            command: command.to_string(),
            overall: OpReport::of(&stats.overall(), measured_s, open_loop),
            elapsed_s: measured_s,
            warmup_ops: stats.warmup_ops,
            loop_kind: if open_loop { "open" } else { "closed" },
            latency_from: if open_loop { "intended_start" } else { "send" },
            operations,
            histogram_format: HISTOGRAM_FORMAT,
            client_cpu: cpu,
            config: config.clone(),
        }
    }

    /// Whether anything failed: an operation error or a verification mismatch.
    pub fn failed(&self) -> bool {
        self.overall.errors > 0 || self.overall.verify_errors > 0
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        match serde_json::to_string_pretty(self) {
            Ok(s) => s,
            // Only non-string map keys or failing Serialize impls can fail; there are none.
            Err(e) => unreachable!("report serializes: {e}"),
        }
    }

    /// The human-readable report: command, setup, one row per operation kind, CPU use.
    pub fn to_table(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(out, "command: {}", self.command);
        let shape = match c.rate {
            Some(rate) => format!(
                "open loop at {rate} ops/s (latency from each request's intended start; \
                 at most {} in flight)",
                c.in_flight_max()
            ),
            None => "closed loop (latency from send)".to_string(),
        };
        let _ = writeln!(
            out,
            "target {}  workload {}  {} thread(s) x {} connection(s) x {} pipeline  {}",
            c.target,
            super::options::workload_name(c.workload.kind),
            c.threads,
            c.connections,
            c.pipeline,
            shape
        );
        let _ = writeln!(
            out,
            "measured {:.2} s, {} operations ({} during warm-up, not recorded)",
            self.elapsed_s, self.overall.count, self.warmup_ops
        );
        table(&mut out, "latency us", &self.operations, &self.overall, |r| &r.latency);
        if c.rate.is_some() {
            let _ = writeln!(
                out,
                "service time (from the actual send; hides time spent waiting for a slot):"
            );
            table(&mut out, "service us", &self.operations, &self.overall, |r| {
                r.service.as_ref().unwrap_or(&r.latency)
            });
        }
        if self.overall.verify_errors > 0 || c.verify {
            let _ = writeln!(out, "verify errors: {}", self.overall.verify_errors);
        }
        for (name, r) in &self.operations {
            if let Some(e) = &r.first_error {
                let _ = writeln!(out, "first {name} error: {e}");
            }
        }
        let cpu = &self.client_cpu;
        let _ = write!(
            out,
            "client cpu: user {:.2} s + sys {:.2} s = {:.2} s over {:.2} s wall = {:.0}% of one core",
            cpu.user_s, cpu.sys_s, cpu.total_s, cpu.wall_s, cpu.core_percent
        );
        out
    }
}

fn table(
    out: &mut String,
    unit: &str,
    operations: &BTreeMap<String, OpReport>,
    overall: &OpReport,
    pick: impl Fn(&OpReport) -> &Latency,
) {
    let _ = writeln!(
        out,
        "{:<18} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}   ({unit})",
        "operation", "count", "ops/s", "p50", "p90", "p99", "p99.9", "max", "errors"
    );
    let rows = operations.iter().map(|(n, r)| (n.as_str(), r)).chain([("all", overall)]);
    for (name, r) in rows {
        let l = pick(r);
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>11.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            name,
            r.count,
            r.ops_per_sec,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            r.errors
        );
    }
}

/// `[percentile, value_us]` points of `h` (see [`HISTOGRAM_FORMAT`]); empty when `h` is.
pub fn quantile_points(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points: Vec<(f64, u64)> = h
        .iter_quantiles(QUANTILE_TICKS_PER_HALF)
        .map(|v| (v.quantile_iterated_to() * 100.0, h.highest_equivalent(v.value_iterated_to())))
        .collect();
    points.dedup_by(|b, a| a.0 == b.0);
    if points.last().is_none_or(|&(p, _)| p < 100.0) {
        points.push((100.0, h.max()));
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::stats::Outcome;
    use crate::workload::{Distribution, OpKind, ValueSize, WorkloadKind, WorkloadSpec};

    fn config(rate: Option<f64>) -> BenchConfig {
        let mut c = BenchConfig::new(
            "kvs://127.0.0.1:7000",
            WorkloadSpec {
                kind: WorkloadKind::A,
                records: 100,
                distribution: Distribution::Uniform,
                key_size: 16,
                value_size: ValueSize { min: 100, max: 100 },
            },
        );
        c.rate = rate;
        c
    }

    fn stats() -> RunStats {
        let mut s = RunStats::default();
        for us in 1..=1000 {
            s.record(OpKind::Read, us, Some(us / 2), &Outcome::Ok);
        }
        s.record(OpKind::Update, 5000, Some(10), &Outcome::Failed("timeout".into()));
        s.measured_ns = 2_000_000_000;
        s
    }

    #[test]
    fn report_has_the_keys_scripts_read() {
        let cpu = CpuUse { user_s: 1.0, sys_s: 0.5, total_s: 1.5, wall_s: 3.0, core_percent: 50.0 };
        let r = Report::build("kvs bench --x", &config(None), &stats(), cpu);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for key in [
            "command",
            "ops_per_sec",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "count",
            "verify_errors",
            "histogram",
            "config",
            "client_cpu",
            "operations",
        ] {
            assert!(v.get(key).is_some(), "missing top-level {key}");
        }
        assert_eq!(v["count"], 1001);
        assert_eq!(v["errors"], 1);
        assert!((v["ops_per_sec"].as_f64().unwrap() - 500.5).abs() < 1e-9);
        assert_eq!(v["p50_us"], 501);
        assert_eq!(v["operations"]["update"]["first_error"], "timeout");
        assert_eq!(v["operations"]["read"]["count"], 1000);
        assert!(v.get("service").is_none(), "closed loop has no separate service time");
        assert_eq!(v["loop"], "closed");
        assert_eq!(v["config"]["threads"], 1);
        assert!(r.failed());
        let table = r.to_table();
        assert!(table.starts_with("command: kvs bench --x\n"));
        assert!(table.contains("read") && table.contains("update") && table.contains("all"));
    }

    #[test]
    fn open_loop_reports_service_time_too() {
        let cpu = CpuUse::between(Default::default(), Default::default(), Default::default());
        let r = Report::build("c", &config(Some(100.0)), &stats(), cpu);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(v["latency_from"], "intended_start");
        assert_eq!(v["service"]["p50_us"], 250);
        assert!(r.to_table().contains("service time"));
    }

    #[test]
    fn quantile_points_rise_to_the_max() {
        let mut h = crate::runner::stats::new_histogram();
        for us in 1..=10_000 {
            h.record(us).unwrap();
        }
        let p = quantile_points(&h);
        assert_eq!(p.first().unwrap().0, 0.0);
        assert_eq!(*p.last().unwrap(), (100.0, h.max()));
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(p.iter().any(|&(q, _)| q > 99.9 && q < 100.0));
        assert!(quantile_points(&crate::runner::stats::new_histogram()).is_empty());
    }
}
