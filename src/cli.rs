//! The `kvs` command line.
//!
//! Exit codes of the client commands: 0 on success; 1 when `get` finds no value (with
//! `not found` on stderr) or when `stats` got no answer from some shard (the report of the
//! others is still printed, the missing shards named); 2 on any error, with its stable code and
//! message on stderr.
//! `bench`: 0 when every operation succeeded; 1 when any failed or did not verify (the report
//! is still printed and written); 2 when the run could not be done (bad flags, no connection).
//!
//! `Unavailable` and `Timeout` errors print their replica counts first, as in
//! `error: Unavailable: needed 2, alive 1 (too few replicas alive for w = 2)` and
//! `error: Timeout: 1 of 2 acknowledged (...)`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvs_wire::client::{Client, ClientError, ClientOptions, Consistency, ErrorDetail, PutOptions};

use crate::config::{CompactionSetting, CompressionSetting, NodeConfig, SyncSetting};

#[derive(Parser, Debug)]
#[command(name = "kvs", version, about = "kvs: a thread-per-core distributed key-value store")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node. With no flags: a single-node store on 127.0.0.1:7000 with data in ./kvs-data.
    Server(ServerArgs),
    /// Write a value. `kvs put KEY -` reads the value from stdin. Succeeds once W replicas
    /// acknowledged (`--consistency` or `--w`).
    Put {
        key: String,
        value: String,
        /// Time to live, seconds: once it has passed the key reads as missing. At least 1, at
        /// most 10 years [default: never expires].
        #[arg(long, value_name = "SECONDS")]
        ttl: Option<u64>,
        #[command(flatten)]
        consistency: WriteConsistencyArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print a key's value to stdout (raw bytes): the newest of the R replicas that answered
    /// (`--consistency` or `--r`). Exits 1 if the key is missing.
    Get {
        key: String,
        #[command(flatten)]
        consistency: ReadConsistencyArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Delete a key. Succeeds once W replicas acknowledged (`--consistency` or `--w`).
    Delete {
        key: String,
        #[command(flatten)]
        consistency: WriteConsistencyArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print every node of the cluster as the node at --addr sees it: id, address, state,
    /// liveness and phi, shard count, share of the ring, and the bytes of data each alive
    /// node holds (asked of each node). Exits 1 when some node is not up and alive.
    Status {
        /// Print one JSON object instead of a table (format in src/status_report.rs).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Decommission the node at --addr: it streams its ranges to the nodes that take them
    /// over, then leaves the ring. Prints progress until it is done (exit 0; the process can
    /// then be stopped) or failed (exit 1; running it again retries).
    Decommission {
        /// Give up following the progress after this long, s (the decommission goes on).
        #[arg(long, default_value_t = 86_400)]
        wait_s: u64,
        #[command(flatten)]
        cluster: ClusterKeyArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Remove a dead node (its 16-hex-digit id, from `kvs status`) from the ring: the node at
    /// --addr marks it left and re-replicates its ranges from the surviving replicas. Prints
    /// progress until done (exit 0) or failed (exit 1). Refused while the node is alive.
    Removenode {
        /// The dead node's id.
        id: String,
        /// Give up following the progress after this long, s (the removal goes on).
        #[arg(long, default_value_t = 86_400)]
        wait_s: u64,
        #[command(flatten)]
        cluster: ClusterKeyArgs,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print token ownership as the node at --addr sees it: per node on the ring, its
    /// vnode tokens and share.
    Ring {
        /// Also list every token in ring order with its owner.
        #[arg(long)]
        tokens: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print the node's topology: id, address, shard ports, vnode count.
    Topology {
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Print every shard's engine counters of the node at --addr (memtable, levels, flushes,
    /// compactions, caches, write amplification) with a node total. Exits 1 when some shard
    /// did not answer in time (the others are still printed).
    Stats {
        /// Print one JSON object instead of a table (format in README.md).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Load a target with a YCSB-style workload and report throughput and latency per
    /// operation (closed loop, or open loop at --rate). Exits 0 when every operation succeeded,
    /// 1 when any failed or did not verify, 2 when the run could not be done. `kvs bench engine`
    /// benchmarks one storage engine in process instead (db_bench-style).
    Bench(BenchCommand),
    /// Start a local cluster of real `kvs server` processes on 127.0.0.1 .. 127.0.0.N (same
    /// port), data and logs under --dir; Ctrl-C stops every node cleanly. For trying the store
    /// and for tests.
    DevCluster(crate::dev_cluster::DevClusterArgs),
}

/// `kvs bench [FLAGS]` (the load harness) or `kvs bench SUBCOMMAND`.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchCommand {
    #[command(subcommand)]
    pub sub: Option<BenchSub>,
    #[command(flatten)]
    pub load: kvs_perf::runner::BenchArgs,
}

/// Benchmarks other than the network load harness.
#[derive(Subcommand, Debug)]
pub enum BenchSub {
    /// fillrandom, readrandom, readmissing and overwrite on ONE shard engine, in process (no
    /// network), with db_bench's key layout. Exits 0 when every operation succeeded and
    /// verified, 1 otherwise, 2 when the run could not be done.
    Engine(kvs_perf::engine::EngineBenchArgs),
    /// Print a `kvs bench engine --json` report next to db_bench output, with ratios.
    EngineCompare(kvs_perf::engine::db_bench::CompareArgs),
}

/// How a client command reaches the store.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Any node's address (its --listen address).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: String,
    /// Per-attempt request timeout, milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

/// A named consistency level for `--consistency`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsistencyLevel {
    /// One replica.
    One,
    /// A majority of the N replicas (2 of 3).
    Quorum,
    /// All N replicas.
    All,
}

impl ConsistencyLevel {
    fn to_wire(self) -> Consistency {
        match self {
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::All => Consistency::All,
        }
    }
}

/// How many replicas must answer a read: a level or a count, not both.
#[derive(Args, Debug, Clone, Default)]
pub struct ReadConsistencyArgs {
    /// Replicas that must answer [default: the node's default, a quorum].
    #[arg(long, value_enum, value_name = "LEVEL", conflicts_with = "r")]
    pub consistency: Option<ConsistencyLevel>,
    /// R: this many replicas must answer, 1 up to the replication factor N (a node refuses
    /// more, naming N).
    #[arg(long = "r", value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub r: Option<u8>,
}

impl ReadConsistencyArgs {
    /// The request's consistency; `Default` (the node's) when no flag is given.
    pub fn to_wire(&self) -> Consistency {
        match (self.consistency, self.r) {
            (Some(level), _) => level.to_wire(),
            (None, Some(n)) => Consistency::Count(n),
            (None, None) => Consistency::Default,
        }
    }
}

/// How many replicas must acknowledge a write: a level or a count, not both.
#[derive(Args, Debug, Clone, Default)]
pub struct WriteConsistencyArgs {
    /// Replicas that must acknowledge [default: the node's default, a quorum].
    #[arg(long, value_enum, value_name = "LEVEL", conflicts_with = "w")]
    pub consistency: Option<ConsistencyLevel>,
    /// W: this many replicas must acknowledge, 1 up to the replication factor N (a node
    /// refuses more, naming N).
    #[arg(long = "w", value_name = "N", value_parser = clap::value_parser!(u8).range(1..))]
    pub w: Option<u8>,
}

impl WriteConsistencyArgs {
    /// The request's consistency; `Default` (the node's) when no flag is given.
    pub fn to_wire(&self) -> Consistency {
        match (self.consistency, self.w) {
            (Some(level), _) => level.to_wire(),
            (None, Some(n)) => Consistency::Count(n),
            (None, None) => Consistency::Default,
        }
    }
}

/// Flags of `kvs server`. Each overrides the same key of the config file.
#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// TOML config file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Node-level address HOST:PORT [default: 127.0.0.1:7000]. Shard i listens on PORT+1+i.
    #[arg(long)]
    pub listen: Option<String>,
    /// Data directory [default: ./kvs-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Data shards (executors) [default: cores - 1, at least 1].
    #[arg(long)]
    pub shards: Option<u16>,
    /// WAL acknowledgement: always (after fdatasync) or periodic [default: always].
    #[arg(long, value_enum)]
    pub sync: Option<SyncSetting>,
    /// fdatasync period in periodic mode, ms [default: 10].
    #[arg(long)]
    pub sync_period_ms: Option<u64>,
    /// Largest key, bytes [default: 4096].
    #[arg(long)]
    pub key_bytes_max: Option<u32>,
    /// Largest value, bytes [default: 1048576].
    #[arg(long)]
    pub value_bytes_max: Option<u32>,
    /// Vnode tokens of this node [default: 150].
    #[arg(long)]
    pub vnodes: Option<u16>,
    /// Memtable budget per shard, MiB [default: 64].
    #[arg(long)]
    pub memtable_mb: Option<u64>,
    /// WAL segment size, MiB [default: 64].
    #[arg(long)]
    pub wal_segment_mb: Option<u64>,
    /// Block cache per shard, MiB; 0 disables it [default: 64].
    #[arg(long)]
    pub block_cache_mb: Option<u64>,
    /// Compaction style [default: leveled].
    #[arg(long, value_enum)]
    pub compaction: Option<CompactionSetting>,
    /// Compaction I/O budget per shard, MiB/s; 0 = unlimited [default: 256].
    #[arg(long)]
    pub compaction_rate_mb: Option<u64>,
    /// Level-0 tables that start a compaction [default: 4].
    #[arg(long)]
    pub level0_file_trigger: Option<u32>,
    /// Level-0 tables at which writes wait for compaction; 0 = never [default: 36].
    #[arg(long)]
    pub level0_stop_writes: Option<u32>,
    /// Target size of level 1, MiB [default: 64].
    #[arg(long)]
    pub level_base_mb: Option<u64>,
    /// Size of a compaction output table, MiB [default: 32].
    #[arg(long)]
    pub table_mb: Option<u64>,
    /// Seconds tombstones are kept before compaction may drop them [default: 259200].
    #[arg(long)]
    pub gc_grace_s: Option<u64>,
    /// SSTable block compression [default: zstd].
    #[arg(long, value_enum)]
    pub compression: Option<CompressionSetting>,
    /// zstd level, 1..=19 [default: 3].
    #[arg(long)]
    pub zstd_level: Option<i32>,
    /// SSTable data block size, KiB [default: 4].
    #[arg(long)]
    pub block_kb: Option<u64>,
    /// Bloom filter bits per key [default: 10].
    #[arg(long)]
    pub bloom_bits_per_key: Option<u32>,
    /// Requests in flight per connection before reading pauses [default: 1024].
    #[arg(long)]
    pub connection_inflight_max: Option<usize>,
    /// Open connections per port [default: 4096].
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Capacity of each shard-to-shard channel [default: 1024].
    #[arg(long)]
    pub forward_queue_max: Option<usize>,
    /// Pin executors to cores when there is a core for each [default: true].
    #[arg(long)]
    pub pin: Option<bool>,
    /// Seconds to finish in-flight requests on shutdown [default: 10].
    #[arg(long)]
    pub shutdown_grace_s: Option<u64>,
    /// Nodes to join through, HOST:PORT,... (their --listen addresses) [default: none].
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<String>>,
    /// Cluster name; gossip from another cluster is refused [default: kvs].
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// Cluster secret that authenticates gossip (visible in `ps`: prefer
    /// --cluster-secret-file) [default: none].
    #[arg(long)]
    pub cluster_secret: Option<String>,
    /// File holding the cluster secret [default: none].
    #[arg(long)]
    pub cluster_secret_file: Option<PathBuf>,
    /// Time between gossip rounds, ms [default: 1000].
    #[arg(long)]
    pub gossip_interval_ms: Option<u64>,
    /// phi at which a peer is considered down [default: 8].
    #[arg(long)]
    pub phi_threshold: Option<f64>,
    /// Replication factor N reported in the topology [default: 3].
    #[arg(long)]
    pub replication_factor: Option<u8>,
    /// How long a coordinator waits for a remote replica, ms [default: 2000].
    #[arg(long)]
    pub replica_timeout_ms: Option<u64>,
    /// Wait after announcing a join or leave before streaming, ms [default: 5000].
    #[arg(long)]
    pub ring_delay_ms: Option<u64>,
    /// Page size when streaming ranges between nodes, KiB [default: 1024].
    #[arg(long)]
    pub stream_page_kb: Option<u32>,
    /// Bound on the copy rate of a join, decommission or removenode, KiB/s [default: 8192].
    #[arg(long)]
    pub stream_kb_per_s: Option<u64>,
    /// Keep hints for a node down at most this long, s [default: 10800].
    #[arg(long)]
    pub hint_window_s: Option<u64>,
    /// Bound on stored hints, MiB; 0 disables hinted handoff [default: 1024].
    #[arg(long)]
    pub hints_mb: Option<u64>,
    /// Hint replay pace per target node, KiB/s [default: 4096].
    #[arg(long)]
    pub hint_replay_kb: Option<u64>,
}

impl ServerArgs {
    /// The config these flags describe: the file (or defaults), then each given flag.
    pub fn to_config(&self) -> Result<NodeConfig, crate::config::ConfigError> {
        let mut c = match &self.config {
            Some(path) => NodeConfig::from_file(path)?,
            None => NodeConfig::default(),
        };
        if let Some(v) = &self.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if self.shards.is_some() {
            c.shards = self.shards;
        }
        if let Some(v) = self.sync {
            c.sync = v;
        }
        if let Some(v) = self.sync_period_ms {
            c.sync_period_ms = v;
        }
        if let Some(v) = self.key_bytes_max {
            c.key_bytes_max = v;
        }
        if let Some(v) = self.value_bytes_max {
            c.value_bytes_max = v;
        }
        if let Some(v) = self.vnodes {
            c.vnodes = v;
        }
        if let Some(v) = self.memtable_mb {
            c.memtable_mb = v;
        }
        if let Some(v) = self.wal_segment_mb {
            c.wal_segment_mb = v;
        }
        if let Some(v) = self.block_cache_mb {
            c.block_cache_mb = v;
        }
        if let Some(v) = self.compaction {
            c.compaction = v;
        }
        if let Some(v) = self.compaction_rate_mb {
            c.compaction_rate_mb = v;
        }
        if let Some(v) = self.level0_file_trigger {
            c.level0_file_trigger = v;
        }
        if let Some(v) = self.level0_stop_writes {
            c.level0_stop_writes = v;
        }
        if let Some(v) = self.level_base_mb {
            c.level_base_mb = v;
        }
        if let Some(v) = self.table_mb {
            c.table_mb = v;
        }
        if let Some(v) = self.gc_grace_s {
            c.gc_grace_s = v;
        }
        if let Some(v) = self.compression {
            c.compression = v;
        }
        if let Some(v) = self.zstd_level {
            c.zstd_level = v;
        }
        if let Some(v) = self.block_kb {
            c.block_kb = v;
        }
        if let Some(v) = self.bloom_bits_per_key {
            c.bloom_bits_per_key = v;
        }
        if let Some(v) = self.connection_inflight_max {
            c.connection_inflight_max = v;
        }
        if let Some(v) = self.connections_max {
            c.connections_max = v;
        }
        if let Some(v) = self.forward_queue_max {
            c.forward_queue_max = v;
        }
        if let Some(v) = self.pin {
            c.pin = v;
        }
        if let Some(v) = self.shutdown_grace_s {
            c.shutdown_grace_s = v;
        }
        if let Some(v) = &self.seeds {
            c.seeds = v.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        if let Some(v) = &self.cluster_name {
            c.cluster_name = v.clone();
        }
        if let Some(v) = &self.cluster_secret {
            c.cluster_secret = Some(v.clone());
            c.cluster_secret_file = None;
        }
        if let Some(v) = &self.cluster_secret_file {
            c.cluster_secret_file = Some(v.clone());
            c.cluster_secret = None;
        }
        if let Some(v) = self.gossip_interval_ms {
            c.gossip_interval_ms = v;
        }
        if let Some(v) = self.phi_threshold {
            c.phi_threshold = v;
        }
        if let Some(v) = self.replication_factor {
            c.replication_factor = v;
        }
        if let Some(v) = self.ring_delay_ms {
            c.ring_delay_ms = v;
        }
        if let Some(v) = self.stream_page_kb {
            c.stream_page_kb = v;
        }
        if let Some(v) = self.stream_kb_per_s {
            c.stream_kb_per_s = v;
        }
        if let Some(v) = self.replica_timeout_ms {
            c.replica_timeout_ms = v;
        }
        if let Some(v) = self.hint_window_s {
            c.hint_window_s = v;
        }
        if let Some(v) = self.hints_mb {
            c.hints_mb = v;
        }
        if let Some(v) = self.hint_replay_kb {
            c.hint_replay_kb = v;
        }
        Ok(c)
    }
}

/// `kvs status` waits at most this long per step for each node's load (the Stats gather
/// itself waits up to 1 s for the node's shards).
const LOAD_TIMEOUT_MS: u64 = 1500;

/// Parses the command line, runs it, and returns the process exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
    match cli.command {
        Command::Server(args) => match args
            .to_config()
            .map_err(anyhow::Error::from)
            .and_then(|c| crate::node::run(c).map_err(anyhow::Error::from))
        {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                2
            }
        },
        Command::DevCluster(args) => match crate::dev_cluster::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        },
        Command::Bench(BenchCommand { sub: Some(BenchSub::Engine(args)), .. }) => {
            match crate::engine_bench::run(&args) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    kvs_perf::runner::EXIT_CANNOT_RUN
                }
            }
        }
        Command::Bench(BenchCommand { sub: Some(BenchSub::EngineCompare(args)), .. }) => {
            match kvs_perf::engine::db_bench::run_compare(&args) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    kvs_perf::runner::EXIT_CANNOT_RUN
                }
            }
        }
        Command::Bench(BenchCommand { sub: None, load: args }) => {
            match kvs_perf::runner::run(&args) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    kvs_perf::runner::EXIT_CANNOT_RUN
                }
            }
        }
        Command::Status { json, conn } => {
            match crate::status_report::fetch(&conn.addr, Duration::from_millis(conn.timeout_ms)) {
                Ok(status) => {
                    let mut report = crate::status_report::StatusReport::new(&status);
                    report.fill_load(Duration::from_millis(conn.timeout_ms.min(LOAD_TIMEOUT_MS)));
                    let text =
                        if json { format!("{:#}\n", report.to_json()) } else { report.to_table() };
                    let mut out = std::io::stdout().lock();
                    if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                        return 2;
                    }
                    let all_up = report
                        .rows
                        .iter()
                        .all(|r| r.state == "left" || (r.state == "up" && r.liveness == "alive"));
                    i32::from(!all_up)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
        Command::Decommission { wait_s, cluster, conn } => {
            movement_command(&conn, &cluster, None, wait_s)
        }
        Command::Removenode { id, wait_s, cluster, conn } => {
            match u64::from_str_radix(&id, 16).ok().filter(|_| id.len() == 16) {
                Some(id) => movement_command(&conn, &cluster, Some(id), wait_s),
                None => {
                    eprintln!("error: {id:?} is not a node id (16 hex digits, see kvs status)");
                    2
                }
            }
        }
        Command::Ring { tokens, conn } => {
            match crate::status_report::fetch(&conn.addr, Duration::from_millis(conn.timeout_ms)) {
                Ok(status) => {
                    let report = crate::status_report::StatusReport::new(&status);
                    let mut out = std::io::stdout().lock();
                    let text = report.ring_table(tokens);
                    if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                        return 2;
                    }
                    0
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    2
                }
            }
        }
        Command::Put { key, value, ttl, consistency, conn } => {
            client_command(&conn, move |c| async move {
                let value = if value == "-" {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .map_err(|e| ClientError::Protocol(format!("reading stdin: {e}")))?;
                    buf
                } else {
                    value.into_bytes()
                };
                let opts = PutOptions {
                    ttl: ttl.map(Duration::from_secs),
                    consistency: Some(consistency.to_wire()),
                };
                c.put_with(key.as_bytes(), &value, opts).await?;
                Ok(0)
            })
        }
        Command::Get { key, consistency, conn } => client_command(&conn, move |c| async move {
            match c.get_with(key.as_bytes(), consistency.to_wire()).await? {
                Some((value, _stamp)) => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&value)
                        .and_then(|_| out.flush())
                        .map_err(|e| ClientError::Protocol(format!("writing stdout: {e}")))?;
                    Ok(0)
                }
                None => {
                    eprintln!("not found");
                    Ok(1)
                }
            }
        }),
        Command::Delete { key, consistency, conn } => client_command(&conn, move |c| async move {
            c.delete_with(key.as_bytes(), consistency.to_wire()).await?;
            Ok(0)
        }),
        Command::Topology { conn } => client_command(&conn, move |c| async move {
            let t = c.topology();
            println!("topology version {} (answered by node {:016x})", t.version, t.self_id);
            for n in &t.nodes {
                let ports: Vec<String> = n.shard_ports.iter().map(|p| p.to_string()).collect();
                println!(
                    "node {:016x}  addr {}  shards {}  shard_ports {}  vnodes {}",
                    n.id,
                    n.addr,
                    n.shard_ports.len(),
                    ports.join(","),
                    n.tokens.len()
                );
            }
            Ok(0)
        }),
        Command::Stats { json, conn } => client_command(&conn, move |c| async move {
            let stats = c.stats().await?;
            let report = crate::stats_report::StatsReport::new(&stats);
            let text = if json {
                let mut t = serde_json::to_string_pretty(&report.to_json())
                    .map_err(|e| ClientError::Protocol(format!("encoding JSON: {e}")))?;
                t.push('\n');
                t
            } else {
                report.to_table()
            };
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|_| out.flush())
                .map_err(|e| ClientError::Protocol(format!("writing stdout: {e}")))?;
            if !report.missing.is_empty() {
                eprintln!("incomplete: {} shard(s) did not answer in time", report.missing.len());
                return Ok(1);
            }
            Ok(0)
        }),
    }
}

/// Runs one client command on a single glommio executor and maps its outcome to an exit code.
/// The cluster's name and secret, which requests that change the ring must prove.
#[derive(Args, Debug, Clone)]
pub struct ClusterKeyArgs {
    /// The cluster's name [default: kvs].
    #[arg(long, default_value = "kvs")]
    pub cluster_name: String,
    /// The cluster secret (visible in the process list; prefer --cluster-secret-file).
    #[arg(long)]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (trailing newline removed).
    #[arg(long)]
    pub cluster_secret_file: Option<std::path::PathBuf>,
}

/// Runs a decommission or removenode and follows it (see `status_report::run_movement`).
fn movement_command(
    conn: &ConnArgs,
    cluster: &ClusterKeyArgs,
    remove: Option<u64>,
    wait_s: u64,
) -> i32 {
    let config = NodeConfig {
        cluster_name: cluster.cluster_name.clone(),
        cluster_secret: cluster.cluster_secret.clone(),
        cluster_secret_file: cluster.cluster_secret_file.clone(),
        ..NodeConfig::default()
    };
    let secret = match config.cluster_secret_bytes() {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => {
            eprintln!(
                "error: give the cluster secret (--cluster-secret-file F): a request that \
                 changes the ring must prove it"
            );
            return 2;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let key = kvs_wire::peer::ClusterKey::derive(&cluster.cluster_name, &secret);
    let mut out = std::io::stdout().lock();
    match crate::status_report::run_movement(
        &conn.addr,
        (&key, &cluster.cluster_name),
        remove,
        Duration::from_millis(conn.timeout_ms),
        Duration::from_secs(1),
        Duration::from_secs(wait_s),
        &mut out,
    ) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn client_command<F, Fut>(conn: &ConnArgs, f: F) -> i32
where
    F: FnOnce(Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<i32, ClientError>>,
{
    let addr = conn.addr.clone();
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(conn.timeout_ms),
        ..ClientOptions::default()
    };
    let outcome = glommio::LocalExecutorBuilder::default()
        .name("kvs-cli")
        .spawn(move || async move {
            let client = Client::connect(&addr, opts).await?;
            let code = f(client.clone()).await;
            client.close().await;
            code
        })
        .map_err(|e| format!("cannot start the client executor: {e}"))
        .and_then(|h| h.join().map_err(|e| format!("client executor failed: {e}")));
    match outcome {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {}", error_line(&e));
            2
        }
        Err(e) => {
            eprintln!("error: Internal: {e}");
            2
        }
    }
}

/// How a client error is printed after `error: `: its stable code first; for a server's answer
/// the replica counts of `Unavailable` and `Timeout` next, then the server's message.
fn error_line(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, message, detail } => match (detail, message.is_empty()) {
            (ErrorDetail::None, _) => format!("{code}: {message}"),
            (detail, true) => format!("{code}: {detail}"),
            (detail, false) => format!("{code}: {detail} ({message})"),
        },
        e => format!("{}: {e}", e.code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_wire::ErrorCode;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kvs").chain(args.iter().copied()))
    }

    #[test]
    fn consistency_flags_parse_to_the_wire_consistency() {
        let get = |args: &[&str]| match parse(args).unwrap().command {
            Command::Get { consistency, .. } => consistency.to_wire(),
            other => panic!("{other:?}"),
        };
        assert_eq!(get(&["get", "k"]), Consistency::Default);
        assert_eq!(get(&["get", "k", "--consistency", "all"]), Consistency::All);
        assert_eq!(get(&["get", "k", "--consistency", "one"]), Consistency::One);
        assert_eq!(get(&["get", "k", "--r", "2"]), Consistency::Count(2));
        let put = |args: &[&str]| match parse(args).unwrap().command {
            Command::Put { consistency, .. } => consistency.to_wire(),
            other => panic!("{other:?}"),
        };
        assert_eq!(put(&["put", "k", "v", "--consistency", "quorum"]), Consistency::Quorum);
        assert_eq!(put(&["put", "k", "v", "--w", "3", "--ttl", "5"]), Consistency::Count(3));
        match parse(&["delete", "k", "--w", "1"]).unwrap().command {
            Command::Delete { consistency, .. } => {
                assert_eq!(consistency.to_wire(), Consistency::Count(1))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conflicting_or_misplaced_consistency_flags_are_refused() {
        for args in [
            &["get", "k", "--consistency", "all", "--r", "1"][..],
            &["put", "k", "v", "--w", "1", "--consistency", "one"],
            &["delete", "k", "--consistency", "quorum", "--w", "2"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{args:?}");
            assert!(err.to_string().contains("cannot be used with"), "{err}");
        }
        // R belongs to reads and W to writes; 0 and unknown levels are refused.
        for args in [
            &["get", "k", "--w", "1"][..],
            &["put", "k", "v", "--r", "1"],
            &["get", "k", "--r", "0"],
            &["put", "k", "v", "--w", "256"],
            &["get", "k", "--consistency", "two"],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn replica_counts_are_printed_first() {
        let e = ClientError::Server {
            code: ErrorCode::Unavailable,
            message: "too few replicas alive for w = 2".into(),
            detail: ErrorDetail::Unavailable { needed: 2, alive: 1 },
        };
        assert_eq!(
            error_line(&e),
            "Unavailable: needed 2, alive 1 (too few replicas alive for w = 2)"
        );
        let e = ClientError::Server {
            code: ErrorCode::Timeout,
            message: String::new(),
            detail: ErrorDetail::Timeout { acknowledged: 1, needed: 2 },
        };
        assert_eq!(error_line(&e), "Timeout: 1 of 2 acknowledged");
        let e = ClientError::Server {
            code: ErrorCode::InvalidRequest,
            message: "w = 2 exceeds the replication factor 1".into(),
            detail: ErrorDetail::None,
        };
        assert_eq!(error_line(&e), "InvalidRequest: w = 2 exceeds the replication factor 1");
        let e = ClientError::InvalidRequest("a TTL must be positive".into());
        assert_eq!(error_line(&e), "InvalidRequest: invalid request: a TTL must be positive");
    }
}
