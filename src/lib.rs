//! # kvs: the node and its command line
//!
//! kvs is a Dynamo-style distributed key-value store built thread-per-core: each data shard is
//! a glommio executor that owns a disjoint slice of the token space with its own WAL and
//! memtable, and clients send each request straight to the owning shard's port.
//!
//! # Layout
//! - [`cli`]: the `kvs` command (clap): `server`, `put`, `get`, `delete`, `topology`, `stats`,
//!   `status`, `ring`, `bench`, `dev-cluster`.
//! - [`dev_cluster`]: `kvs dev-cluster`, a supervisor of N local nodes on 127.0.0.x.
//! - [`engine_bench`]: `kvs bench engine`, the db_bench-style benchmark of one shard engine.
//! - [`config`]: [`config::NodeConfig`], from defaults, a TOML file and flags, with `validate()`.
//! - [`node`]: bootstrap of the shard executors and the cluster core, pinning, shutdown.
//! - [`shard`]: the per-executor task: listener, frame loop, routing and forwarding between
//!   shards, and the coordinator that stamps requests, applies the local replica, fans the
//!   others out through the cluster core and repairs stale replicas after reads.
//! - [`stats_report`]: what `kvs stats` prints: totals, derived ratios, table and JSON.
//! - [`cluster`]: pure state machines of the cluster: hybrid logical clock, phi-accrual
//!   failure detector, gossip membership, quorum bookkeeping, hinted handoff decisions, range
//!   movement plans.
//! - [`transport`]: the glommio tasks around [`cluster`]: gossip exchanges over TCP on the
//!   cluster core, their authentication, the topology and live set that follow membership,
//!   the authenticated replica links to peers (with hinted handoff), and the durable hint log.
//! - [`status_report`]: what `kvs status` and `kvs ring` print.
//!
//! Below this crate: `kvs-wire` (protocol, placement, client), `kvs-shards` (the per-core
//! storage engine) and `kvs-io` (direct I/O and group commit). `kvs-perf` holds the load harness.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod dev_cluster;
pub mod engine_bench;
pub mod node;
pub mod shard;
pub mod stats_report;
pub mod status_report;
pub mod transport;
