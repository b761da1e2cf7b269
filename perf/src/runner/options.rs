//! The flags of `kvs bench` and the validated settings of a run.
//!
//! [`BenchArgs`] is what clap parses; [`BenchArgs::to_config`] checks it and turns it into a
//! [`BenchConfig`], which is what the runner reads and what the JSON report stores in full.

use std::path::PathBuf;
use std::time::Duration;

use crate::driver::{Target, PIPELINE_MAX};
use crate::workload::{Distribution, ValueSize, WorkloadKind, WorkloadSpec};

/// Client threads (one glommio executor each) at most.
pub const THREADS_MAX: usize = 256;
/// Connections per thread at most.
pub const CONNECTIONS_MAX: usize = 1024;
/// Requests in flight in one thread (connections × pipeline) at most: one task each.
pub const TASKS_PER_THREAD_MAX: usize = 65_536;

/// Flags of `kvs bench`. Every flag is documented in `tuning.md`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure: kvs://HOST:PORT, redis://HOST:PORT, or ping://HOST:PORT (kvs Ping
    /// for every operation: the network ceiling).
    #[arg(long, default_value = "kvs://127.0.0.1:7000")]
    pub target: String,
    /// Operation mix: load (insert every record once), a (50% read, 50% update), b (95/5),
    /// c (read only), d (read latest, 5% insert), f (50% read, 50% read-modify-write), write
    /// (update only), delete-mix (50% read, 25% update, 25% delete).
    #[arg(long, value_enum, default_value = "a")]
    pub workload: WorkloadKind,
    /// Records in the data set (loaded by `--workload load`; read and updated by the others).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Operations to measure, all threads together [default: --records, unless --duration is
    /// given; `load` stops by itself after --records inserts].
    #[arg(long)]
    pub operations: Option<u64>,
    /// Seconds to measure (fractions allowed); with --operations, whichever ends first.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds to run before measuring: operations then are done but not recorded.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Client threads, one glommio executor each.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections per thread.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    pub pipeline: usize,
    /// Key size, bytes.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value size, bytes: fixed ("100") or a uniform range ("100-200").
    #[arg(long, default_value = "100")]
    pub value_size: String,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value = "zipfian")]
    pub distribution: Distribution,
    /// Open loop at this many operations per second, all threads together; without it the run
    /// is a closed loop (as fast as the in-flight requests allow).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Consistency level passed to the driver (one, quorum, all or a number).
    #[arg(long)]
    pub consistency: Option<String>,
    /// Check every value read, and that loaded keys are found; mismatches are errors.
    #[arg(long)]
    pub verify: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw the latency percentile curve per operation to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Seed of every generator (each task derives its own from it).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Per-request timeout, ms.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Progress line period on stderr, ms; 0 turns it off.
    #[arg(long, default_value_t = 1000)]
    pub progress_interval_ms: u64,
    /// Pin client thread i to CPU i (only when there are at least --threads CPUs).
    #[arg(long)]
    pub pin: bool,
}

/// The settings of a run, checked. Stored whole in the JSON report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchConfig {
    pub target: String,
    pub workload: WorkloadSpec,
    /// Operations to measure, all threads together; `None`: until `duration_s` or the source
    /// runs out.
    pub operations: Option<u64>,
    /// Seconds to measure; `None`: until `operations`.
    pub duration_s: Option<f64>,
    pub warmup_s: f64,
    pub threads: usize,
    pub connections: usize,
    pub pipeline: usize,
    /// Open-loop rate, operations per second, all threads; `None`: closed loop.
    pub rate: Option<f64>,
    pub consistency: Option<String>,
    pub verify: bool,
    pub seed: u64,
    pub timeout_ms: u64,
    pub progress_interval_ms: u64,
    pub pin: bool,
}

impl BenchConfig {
    /// A closed-loop configuration with the defaults of the flags, for tests and callers that
    /// build runs in code.
    pub fn new(target: &str, workload: WorkloadSpec) -> BenchConfig {
        BenchConfig {
            target: target.to_string(),
            workload,
            operations: None,
            duration_s: None,
            warmup_s: 0.0,
            threads: 1,
            connections: 1,
            pipeline: 16,
            rate: None,
            consistency: None,
            verify: false,
            seed: 1,
            timeout_ms: 5000,
            progress_interval_ms: 1000,
            pin: false,
        }
    }

    /// Checks every bound that does not depend on the target's scheme.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=THREADS_MAX).contains(&self.threads) {
            return Err(format!("--threads must be 1 to {THREADS_MAX}"));
        }
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return Err(format!("--connections must be 1 to {CONNECTIONS_MAX}"));
        }
        if !(1..=PIPELINE_MAX).contains(&self.pipeline) {
            return Err(format!("--pipeline must be 1 to {PIPELINE_MAX}"));
        }
        if self.connections * self.pipeline > TASKS_PER_THREAD_MAX {
            return Err(format!(
                "--connections × --pipeline must be at most {TASKS_PER_THREAD_MAX} per thread"
            ));
        }
        if self.workload.records == 0 {
            return Err("--records must be at least 1".into());
        }
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err("--rate must be a positive number of operations per second".into());
            }
        }
        if let Some(d) = self.duration_s {
            if !(d.is_finite() && d > 0.0) {
                return Err("--duration must be a positive number of seconds".into());
            }
        }
        if !(self.warmup_s.is_finite() && self.warmup_s >= 0.0) {
            return Err("--warmup must be zero or a positive number of seconds".into());
        }
        if self.operations.is_none()
            && self.duration_s.is_none()
            && self.workload.kind != WorkloadKind::Load
        {
            return Err("give --operations or --duration (only load stops by itself)".into());
        }
        if self.operations == Some(0) {
            return Err("--operations must be at least 1".into());
        }
        if self.timeout_ms == 0 {
            return Err("--timeout-ms must be at least 1".into());
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    pub fn duration(&self) -> Option<Duration> {
        self.duration_s.map(Duration::from_secs_f64)
    }

    /// Requests in flight at most, all threads together.
    pub fn in_flight_max(&self) -> usize {
        self.threads * self.connections * self.pipeline
    }
}

/// The flag spelling of a workload: `a`, `delete-mix`, ...
pub fn workload_name(kind: WorkloadKind) -> String {
    use clap::ValueEnum;
    kind.to_possible_value().map_or_else(|| format!("{kind:?}"), |v| v.get_name().to_string())
}

impl BenchArgs {
    /// The checked settings these flags describe, and the parsed target.
    pub fn to_config(&self) -> Result<(Target, BenchConfig), String> {
        let target: Target = self.target.parse()?;
        let value_size: ValueSize =
            self.value_size.parse().map_err(|e| format!("--value-size: {e}"))?;
        let workload = WorkloadSpec {
            kind: self.workload,
            records: self.records,
            distribution: self.distribution,
            key_size: self.key_size,
            value_size,
        };
        let operations = match (self.operations, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) if self.workload == WorkloadKind::Load => None,
            (None, None) => Some(self.records),
        };
        let config = BenchConfig {
            target: target.to_string(),
            workload,
            operations,
            duration_s: self.duration,
            warmup_s: self.warmup,
            threads: self.threads,
            connections: self.connections,
            pipeline: self.pipeline,
            rate: self.rate,
            consistency: self.consistency.clone(),
            verify: self.verify,
            seed: self.seed,
            timeout_ms: self.timeout_ms,
            progress_interval_ms: self.progress_interval_ms,
            pin: self.pin,
        };
        config.validate()?;
        config.workload.validate().map_err(|e| {
            format!("{e} (check --key-size, --value-size, --records and --workload)")
        })?;
        if config.verify && matches!(target, Target::Ping(_)) {
            return Err("--verify cannot check ping:// (a ping carries no value); \
                        drop --verify or measure kvs:// or redis://"
                .into());
        }
        Ok((target, config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, Command};

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            kind: WorkloadKind::A,
            records: 10,
            distribution: Distribution::Uniform,
            key_size: 16,
            value_size: ValueSize { min: 100, max: 100 },
        }
    }

    fn parse(line: &str) -> Result<(Target, BenchConfig), String> {
        let cmd = BenchArgs::augment_args(Command::new("bench"));
        let m = cmd.try_get_matches_from(line.split_whitespace()).map_err(|e| e.to_string())?;
        let args = <BenchArgs as clap::FromArgMatches>::from_arg_matches(&m).unwrap();
        args.to_config()
    }

    #[test]
    fn flags_become_a_config() {
        let (t, c) = parse("bench").unwrap();
        assert_eq!(t, Target::Kvs("127.0.0.1:7000".into()));
        assert_eq!(c.operations, Some(100_000), "defaults to --records");
        assert_eq!(c.rate, None);
        let (_, c) = parse("bench --workload load --records 500").unwrap();
        assert_eq!(c.operations, None, "load stops by itself");
        let (_, c) = parse("bench --duration 2.5 --rate 1000 --value-size 100-200").unwrap();
        assert_eq!((c.operations, c.duration_s, c.rate), (None, Some(2.5), Some(1000.0)));
        assert_eq!(c.workload.value_size, ValueSize { min: 100, max: 200 });
        let (t, _) = parse("bench --target redis://h:6379 --verify").unwrap();
        assert_eq!(t, Target::Redis("h:6379".into()));
    }

    #[test]
    fn bad_flags_are_refused_with_a_reason() {
        let e = parse("bench --target ping://h:1 --verify").unwrap_err();
        assert!(e.contains("--verify") && e.contains("ping"), "{e}");
        assert!(parse("bench --target h:1").unwrap_err().contains("scheme"));
        assert!(parse("bench --value-size x").unwrap_err().contains("--value-size"));
        assert!(parse("bench --key-size 2").unwrap_err().contains("key size"));
        assert!(parse("bench --connections 0").unwrap_err().contains("--connections"));
        assert!(parse("bench --workload e").is_err());
    }

    /// Every flag of `kvs bench` is documented in tuning.md.
    #[test]
    fn every_flag_is_in_tuning_md() {
        let tuning = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning.md"));
        let cmd = BenchArgs::augment_args(Command::new("bench"));
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                assert!(tuning.contains(&format!("`--{long}")), "tuning.md lacks --{long}");
            }
        }
    }

    #[test]
    fn validate_names_the_bad_flag() {
        let mut ok = BenchConfig::new("kvs://h:1", spec());
        assert!(ok.validate().unwrap_err().contains("--operations"));
        ok.operations = Some(10);
        assert_eq!(ok.validate(), Ok(()));
        let mut c = ok.clone();
        c.threads = 0;
        assert!(c.validate().unwrap_err().contains("--threads"));
        let mut c = ok.clone();
        c.rate = Some(0.0);
        assert!(c.validate().unwrap_err().contains("--rate"));
        let mut c = ok.clone();
        c.pipeline = PIPELINE_MAX + 1;
        assert!(c.validate().unwrap_err().contains("--pipeline"));
        let mut c = ok;
        c.duration_s = Some(f64::NAN);
        assert!(c.validate().unwrap_err().contains("--duration"));
    }
}
