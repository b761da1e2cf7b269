//! The runner of `kvs bench`: drives a workload against a target and reports latency and
//! throughput honestly.
//!
//! # Method
//!
//! **Thread-per-core client.** `--threads T` glommio executors, each with its own
//! `--connections C` drivers, its own `C × P` tasks (`--pipeline P` per connection, one request
//! in flight per task), its own seeded operation sources and its own HDR histograms (µs, 3
//! significant digits, one per operation kind). Nothing is shared on the hot path; histograms
//! are merged once at the end. Executors are unbound by default; `--pin` fixes thread `i` to CPU
//! `i`, which removes migration noise but, on a small machine, competes with a server pinned to
//! the same CPUs (on the 2-core box both share every core either way).
//!
//! **Closed loop** (no `--rate`): each task sends its next request as soon as the previous
//! answer arrives, so at most `T × C × P` are in flight and the offered load is whatever the
//! system sustains. Latency is measured from the send. This finds the throughput ceiling, but
//! its latencies are optimistic: while the system stalls, the clients stop sending, so the
//! requests that *would* have arrived during the stall are never timed. That is *coordinated
//! omission*: the load generator coordinates with the system and omits exactly the bad samples.
//!
//! **Open loop** (`--rate R`): requests have intended start times on a fixed schedule, `R` per
//! second across all threads (see [`schedule::OpenLoopSchedule`]). A free task takes the next
//! slot of the schedule, sleeps until its time, and sends. Latency is measured from the
//! *intended* start, so a request that could not be sent on time because every slot was busy
//! (the system stalled) records the whole time it waited. In-flight requests are still bounded
//! by `T × C × P`; when all are busy, the schedule keeps advancing and the backlog is sent as
//! soon as slots free up, its lateness visible in the latency. The report also gives the
//! service time (from the actual send) so the two can be compared: their difference is the
//! queueing that a closed loop hides. Far below saturation the two
//! differ by the harness's own lateness: a task asleep until its slot wakes some microseconds
//! late (timer and scheduler latency, more when client and server share cores), and that
//! lateness counts as latency. It is small against the stalls open loop is for, but compare
//! open-loop medians with the service-time table before quoting them.
//!
//! **What is recorded.** Operations that start during `--warmup` run but are not recorded. Each
//! measured operation is recorded in its kind's histogram whether it succeeded or failed (a
//! timeout appears in the tail); failures and `--verify` mismatches are counted as errors of
//! that kind, mismatches also as `verify_errors`. A read-modify-write is one operation: the
//! get and the put are timed together. Throughput is measured operations over the measured
//! window (from the end of the warm-up to the last answer). The process's own CPU use
//! (`getrusage`) is reported, so a saturated client is visible.
//!
//! # Layout
//!
//! - [`options`]: `BenchArgs` (the flags) and `BenchConfig` (validated settings).
//! - [`schedule`]: pure: the open-loop timetable, the ticket plan (stop rules), the latency
//!   arithmetic, work split and seeds.
//! - [`stats`]: per-kind histograms and counters, merge.
//! - [`report`]: pure: the table and the JSON (format documented there).
//! - [`plot`]: the SVG percentile plot.
//! - [`progress`]: the once-a-second progress line.
//! - [`exec`]: the glommio shell that carries all of the above out.
//! - [`source`]: where operations come from (`OpSource`, implemented by `workload::Generator`).
//! - [`cpu`]: the process CPU time, from `getrusage`.

pub mod cpu;
pub mod exec;
pub mod options;
pub mod plot;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod source;
pub mod stats;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Instant;

use anyhow::Context;

pub use options::{BenchArgs, BenchConfig};
pub use report::Report;
pub use source::OpSource;

use crate::driver::{Driver, KvsDriver, PingDriver, RedisDriver, Target};
use crate::workload::{Generator, SharedKeys};

/// Exit code of a run that completed without errors.
pub const EXIT_OK: i32 = 0;
/// Exit code of a run that completed but had failed operations or verification mismatches.
pub const EXIT_OPERATIONS_FAILED: i32 = 1;
/// Exit code when the run could not be done (bad flags, no connection, a file not written).
pub const EXIT_CANNOT_RUN: i32 = 2;

/// Runs `kvs bench` with these flags: the load, then the table on stdout, then `--json` and
/// `--plot`. Returns the process exit code ([`EXIT_OK`], [`EXIT_OPERATIONS_FAILED`]); errors
/// that stop the run are returned and map to [`EXIT_CANNOT_RUN`].
pub fn run(args: &BenchArgs) -> anyhow::Result<i32> {
    let (target, config) = args.to_config().map_err(anyhow::Error::msg)?;
    let command = command_line();
    let shared = SharedKeys::new(&config.workload);
    let spec = config.workload.clone();
    let make_source = move |seed| Generator::new(&spec, shared.clone(), seed);
    let report = match target {
        Target::Kvs(_) => measure::<KvsDriver, _, _>(&target, &config, &command, make_source)?,
        Target::Redis(_) => measure::<RedisDriver, _, _>(&target, &config, &command, make_source)?,
        Target::Ping(_) => measure::<PingDriver, _, _>(&target, &config, &command, make_source)?,
    };
    publish(&report, args.json.as_deref(), args.plot.as_deref())?;
    Ok(exit_code(&report))
}

/// Runs the load described by `config` with driver `D` and sources from `make_source` (called
/// once per task with the task's seed), and builds the report. Prints the command line and
/// progress on stderr.
pub fn measure<D, S, F>(
    target: &Target,
    config: &BenchConfig,
    command: &str,
    make_source: F,
) -> anyhow::Result<Report>
where
    D: Driver,
    S: OpSource,
    F: Fn(u64) -> S + Send + Sync + 'static,
{
    eprintln!("command: {command}");
    let cpu_start = cpu::process_cpu_times();
    let wall_start = Instant::now();
    let stats = exec::execute::<D, S, F>(target, config, make_source)?;
    let cpu = cpu::CpuUse::between(cpu_start, cpu::process_cpu_times(), wall_start.elapsed());
    Ok(Report::build(command, config, &stats, cpu))
}

/// Prints the report's table on stdout and writes the JSON and SVG files asked for.
pub fn publish(report: &Report, json: Option<&Path>, plot: Option<&Path>) -> anyhow::Result<()> {
    println!("{}", report.to_table());
    if let Some(path) = json {
        std::fs::write(path, report.to_json() + "\n")
            .with_context(|| format!("writing --json {}", path.display()))?;
    }
    if let Some(path) = plot {
        plot::write_svg(report, path)
            .with_context(|| format!("writing --plot {}", path.display()))?;
    }
    Ok(())
}

/// [`EXIT_OPERATIONS_FAILED`] when any operation failed or any value did not verify.
pub fn exit_code(report: &Report) -> i32 {
    if report.failed() {
        EXIT_OPERATIONS_FAILED
    } else {
        EXIT_OK
    }
}

/// This process's command line, with arguments quoted for a POSIX shell where needed, so it
/// can be pasted to repeat the run.
pub fn command_line() -> String {
    let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    shell_join(&args)
}

/// Joins words into one shell command line, single-quoting those that need it.
pub fn shell_join(words: &[String]) -> String {
    let quote = |w: &String| {
        let plain = !w.is_empty()
            && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
        if plain {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}
