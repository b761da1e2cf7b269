//! # kvs-perf: load generation for kvs and its peers
//!
//! `kvs bench` measures a target (kvs, Redis/Valkey, or kvs's no-op Ping) under a YCSB-style
//! workload and reports throughput and latency percentiles per operation kind. It is not a
//! micro-benchmark harness (those are the criterion benches under `benches/`) and not a test of
//! correctness beyond `--verify`'s value checks.
//!
//! Data flows `workload` → `runner` → `driver`: a seeded [`workload::Generator`] per task names
//! each operation and makes its bytes; the [`runner`] decides when it starts (closed loop, or an
//! open-loop schedule), times it and verifies what it read; a [`driver::Driver`] moves it over
//! the wire. Each client thread owns its drivers, generators and histograms.
//!
//! # Layout
//!
//! - [`workload`]: YCSB-style workloads, key choosers, self-verifying values.
//! - [`driver`]: the `Driver` trait and its kvs, redis and ping implementations.
//! - [`engine`]: `kvs bench engine`: db_bench-style benchmarks of one storage engine in
//!   process (no network), and reading db_bench's output to compare.
//! - [`runner`]: the load loop (closed and open loop, coordinated omission), the report (table,
//!   JSON, SVG plot) and the `kvs bench` flags.

pub mod driver;
pub mod engine;
pub mod runner;
pub mod workload;
