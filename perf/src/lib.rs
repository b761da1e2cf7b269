//! # kvs-perf: load generation for kvs
//!
//! For now one closed-loop driver, [`quick`]: one process, one glommio executor, one
//! shard-aware client, `P` requests in flight, HDR latency histograms. The full harness (YCSB
//! workloads, open loop, peers such as Redis) grows here in the load-harness issue.

pub mod quick;
