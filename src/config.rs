//! Node configuration: defaults, the TOML file, command-line overrides, and validation.
//!
//! Precedence: a flag given on the command line beats the config file, which beats the default.
//! Every field here is documented in `tuning.md`; a test fails when one is missing there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kvs_shards::compaction::{CompactionOptions, CompactionStyle, SizeTieredOptions};
use kvs_shards::sstable::{Compression, SstableOptions};
use kvs_shards::{ShardOptions, SyncMode};
use kvs_wire::limits::{
    BODY_OVERHEAD_BYTES, FRAME_BODY_BYTES_MAX, KEY_BYTES_MAX_DEFAULT, VALUE_BYTES_MAX_DEFAULT,
};
use kvs_wire::placement::{SHARDS_MAX, VNODES_DEFAULT, VNODES_MAX};
use serde::{Deserialize, Serialize};

/// Most seeds a node takes.
pub const SEEDS_MAX: usize = 64;
/// Longest cluster secret, bytes.
pub const CLUSTER_SECRET_BYTES_MAX: usize = 1024;

/// How the WAL acknowledges writes. Mirrors `kvs_shards::SyncMode` for the config file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncSetting {
    /// Acknowledge a write once it is durable (fdatasync'd). Default.
    #[default]
    Always,
    /// Acknowledge once written to the file; fdatasync every `sync_period_ms`.
    Periodic,
}

/// How a shard organizes its SSTables. Mirrors `kvs_shards::compaction::CompactionStyle`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CompactionSetting {
    /// Levels of growing size, non-overlapping below level 0. Default.
    #[default]
    Leveled,
    /// Tables of similar size are merged together (less write amplification, more space and
    /// more tables per read).
    SizeTiered,
}

/// How SSTable data blocks are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum CompressionSetting {
    /// Blocks stored as they are.
    None,
    /// zstd at `zstd_level`; a block that does not shrink is stored as it is. Default.
    #[default]
    Zstd,
}

/// Everything a node needs to start. Units are in the names.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Node-level address (`host:port`): accepts any request and forwards it to the owning shard.
    /// Default `127.0.0.1:7000`. Shard `i` listens on port `port + 1 + i` of the same host, or
    /// on an ephemeral port when `port` is 0.
    pub listen: String,
    /// Root of the node's files. Default `./kvs-data`.
    pub data_dir: PathBuf,
    /// Data shards (executors). Default: all cores but one, at least 1.
    pub shards: Option<u16>,
    /// WAL acknowledgement mode. Default `always`.
    pub sync: SyncSetting,
    /// fdatasync period in `periodic` mode, milliseconds. Default 10.
    pub sync_period_ms: u64,
    /// Largest key accepted, bytes. Default 4096.
    pub key_bytes_max: u32,
    /// Largest value accepted, bytes. Default 1 MiB.
    pub value_bytes_max: u32,
    /// Vnode tokens this node takes on the ring. Default 150.
    pub vnodes: u16,
    /// WAL segment size before rolling to a new file, MiB. Default 64.
    pub wal_segment_mb: u64,
    /// Memtable budget per shard, MiB. Default 64.
    pub memtable_mb: u64,
    /// Block cache per shard (verified, decompressed SSTable data blocks), MiB. Default 64;
    /// 0 disables it.
    pub block_cache_mb: u64,
    /// How tables are compacted. Default leveled.
    pub compaction: CompactionSetting,
    /// I/O budget of one shard's compaction, MiB/s of input; 0 = unlimited. Default 256.
    pub compaction_rate_mb: u64,
    /// Level-0 tables that start a compaction into level 1 (leveled). Default 4.
    pub level0_file_trigger: u32,
    /// Level-0 tables at which writes wait for compaction (leveled); 0 = never. Default 36.
    pub level0_stop_writes: u32,
    /// Target size of level 1, MiB; each deeper level is 10× the one above. Default 64.
    pub level_base_mb: u64,
    /// Size at which a compaction output table is finished, MiB. Default 32.
    pub table_mb: u64,
    /// How long tombstones (and expired values) are kept before compaction may drop them,
    /// seconds. Default 259200 (72 h).
    pub gc_grace_s: u64,
    /// SSTable block compression. Default zstd.
    pub compression: CompressionSetting,
    /// zstd level, 1..=19. Default 3.
    pub zstd_level: i32,
    /// Target uncompressed size of an SSTable data block, KiB, 1..=64. Default 4.
    pub block_kb: u64,
    /// Bloom filter bits per key, 1..=32 (10 ≈ 1% false positives). Default 10.
    pub bloom_bits_per_key: u32,
    /// Requests in flight on one connection before the node stops reading from it. Default 1024.
    pub connection_inflight_max: usize,
    /// Open client connections per shard (and on the node port); more are refused. Default 4096.
    pub connections_max: usize,
    /// Capacity of each shard-to-shard channel; a full channel answers `Overloaded`. Default 1024.
    pub forward_queue_max: usize,
    /// Pin shard executors to cores when there are enough cores. Default true.
    pub pin: bool,
    /// Seconds to wait for in-flight requests on shutdown before closing anyway. Default 10.
    pub shutdown_grace_s: u64,
    /// Addresses (`host:port`, their `listen`) of nodes to join through. Empty (the default):
    /// a single-node store, until another node names this one as its seed.
    pub seeds: Vec<String>,
    /// Name of the cluster; gossip from a node with another name is refused. Default `kvs`.
    pub cluster_name: String,
    /// The cluster secret that authenticates gossip. Default none (an empty secret: no
    /// protection beyond the cluster name). Prefer `cluster_secret_file`.
    pub cluster_secret: Option<String>,
    /// A file whose contents (trailing newline removed) are the cluster secret. Default none.
    pub cluster_secret_file: Option<PathBuf>,
    /// Time between gossip rounds, milliseconds. Default 1000.
    pub gossip_interval_ms: u64,
    /// phi at or above which a peer is considered down. Default 8.
    pub phi_threshold: f64,
    /// Replication factor N reported in the topology. Default 3.
    pub replication_factor: u8,
    /// How long a node waits after announcing a join or a leave before it streams (so every
    /// node has heard and sends it, or the ranges' new owners, the writes), and after it has
    /// left before it reports done, ms. Default 5000.
    pub ring_delay_ms: u64,
    /// Bytes per page when streaming ranges between nodes, KiB. Default 1024.
    pub stream_page_kb: u32,
    /// Bound on the bytes of versions a movement copies per second, KiB/s. Default 8192.
    pub stream_kb_per_s: u64,
    /// How long a coordinator waits for a remote replica's answer, ms. Default 2000.
    pub replica_timeout_ms: u64,
    /// Hints are kept for a node only while it has been down at most this long, seconds.
    /// Default 10800 (3 h).
    pub hint_window_s: u64,
    /// Bound on all hints this node stores, MiB; 0 disables hinted handoff. Default 1024.
    pub hints_mb: u64,
    /// Hint replay pace per target node, KiB per second. Default 4096.
    pub hint_replay_kb: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: "127.0.0.1:7000".to_string(),
            data_dir: PathBuf::from("./kvs-data"),
            shards: None,
            sync: SyncSetting::Always,
            sync_period_ms: 10,
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            vnodes: VNODES_DEFAULT,
            wal_segment_mb: 64,
            memtable_mb: 64,
            block_cache_mb: 64,
            compaction: CompactionSetting::Leveled,
            compaction_rate_mb: 256,
            level0_file_trigger: 4,
            level0_stop_writes: 36,
            level_base_mb: 64,
            table_mb: 32,
            gc_grace_s: 72 * 3600,
            compression: CompressionSetting::Zstd,
            zstd_level: 3,
            block_kb: 4,
            bloom_bits_per_key: 10,
            connection_inflight_max: 1024,
            connections_max: 4096,
            forward_queue_max: 1024,
            pin: true,
            shutdown_grace_s: 10,
            seeds: Vec::new(),
            cluster_name: "kvs".to_string(),
            cluster_secret: None,
            cluster_secret_file: None,
            gossip_interval_ms: 1000,
            phi_threshold: 8.0,
            replication_factor: 3,
            replica_timeout_ms: 2000,
            ring_delay_ms: 5000,
            stream_page_kb: 1024,
            stream_kb_per_s: 8192,
            hint_window_s: 3 * 3600,
            hints_mb: 1024,
            hint_replay_kb: 4096,
        }
    }
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("bad config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

impl NodeConfig {
    /// Reads a TOML config file; missing keys keep their defaults, unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// The number of data shards: the configured one, or all cores but one (at least 1).
    pub fn shard_count(&self) -> u16 {
        self.shards.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            u16::try_from(cores.saturating_sub(1).max(1)).unwrap_or(1)
        })
    }

    /// The node-level socket address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        use std::net::ToSocketAddrs;
        self.listen
            .to_socket_addrs()
            .map_err(|e| invalid("listen", format!("{}: {e}", self.listen)))?
            .next()
            .ok_or_else(|| invalid("listen", format!("{} resolves to no address", self.listen)))
    }

    /// The seeds' socket addresses (resolved once, at start).
    pub fn seed_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        use std::net::ToSocketAddrs;
        self.seeds
            .iter()
            .map(|s| {
                s.to_socket_addrs()
                    .map_err(|e| invalid("seeds", format!("{s}: {e}")))?
                    .next()
                    .ok_or_else(|| invalid("seeds", format!("{s} resolves to no address")))
            })
            .collect()
    }

    /// The cluster secret's bytes: `cluster_secret`, or the contents of `cluster_secret_file`
    /// without its trailing newline, or empty.
    pub fn cluster_secret_bytes(&self) -> Result<Vec<u8>, ConfigError> {
        match (&self.cluster_secret, &self.cluster_secret_file) {
            (Some(_), Some(_)) => Err(invalid(
                "cluster_secret",
                "give either cluster_secret or cluster_secret_file, not both",
            )),
            (Some(s), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path).map_err(|e| {
                    invalid("cluster_secret_file", format!("{}: {e}", path.display()))
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                if bytes.is_empty() {
                    return Err(invalid(
                        "cluster_secret_file",
                        format!("{} is empty", path.display()),
                    ));
                }
                Ok(bytes)
            }
            (None, None) => Ok(Vec::new()),
        }
    }

    /// The largest frame body this node accepts: a key and a value at their limits plus framing.
    pub fn frame_body_bytes_max(&self) -> u32 {
        self.key_bytes_max
            .saturating_add(self.value_bytes_max)
            .saturating_add(BODY_OVERHEAD_BYTES)
            .min(FRAME_BODY_BYTES_MAX)
    }

    /// Options for shard `index`'s engine.
    pub fn shard_options(&self, index: u16) -> ShardOptions {
        ShardOptions {
            dir: self.data_dir.join(format!("shard-{index}")),
            sync: match self.sync {
                SyncSetting::Always => SyncMode::Always,
                SyncSetting::Periodic => SyncMode::Periodic,
            },
            sync_period_ms: self.sync_period_ms,
            wal_segment_bytes: self.wal_segment_mb.saturating_mul(1024 * 1024),
            memtable_bytes_max: self.memtable_mb.saturating_mul(1024 * 1024),
            block_cache_bytes: self.block_cache_mb.saturating_mul(1024 * 1024),
            sstable: SstableOptions {
                block_bytes: self.block_kb.saturating_mul(1024),
                compression: match self.compression {
                    CompressionSetting::None => Compression::None,
                    CompressionSetting::Zstd => Compression::Zstd { level: self.zstd_level },
                },
                bloom_bits_per_key: self.bloom_bits_per_key,
            },
            compaction: CompactionOptions {
                style: match self.compaction {
                    CompactionSetting::Leveled => CompactionStyle::Leveled,
                    CompactionSetting::SizeTiered => {
                        CompactionStyle::SizeTiered(SizeTieredOptions::default())
                    }
                },
                level0_file_trigger: self.level0_file_trigger,
                level0_stop_writes_trigger: self.level0_stop_writes,
                level_size_base_bytes: self.level_base_mb.saturating_mul(1024 * 1024),
                output_table_bytes: self.table_mb.saturating_mul(1024 * 1024),
                rate_bytes_per_s: self.compaction_rate_mb.saturating_mul(1024 * 1024),
                gc_grace_ms: self.gc_grace_s.saturating_mul(1000),
                ..CompactionOptions::default()
            },
            // Expiry is judged by the same wall clock the node stamps writes and TTLs with.
            clock: kvs_shards::Clock::System,
        }
    }

    /// Checks every setting; the node refuses to start on the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.listen_addr()?;
        let clustered = self.cluster_secret.is_some() || self.cluster_secret_file.is_some();
        if addr.ip().is_unspecified() && (clustered || !self.seeds.is_empty()) {
            return Err(invalid(
                "listen",
                format!(
                    "{addr} is what peers would be told to connect to, and it names no host: \
                     listen on the address other nodes reach this one at"
                ),
            ));
        }
        if !self.seeds.is_empty()
            && self.cluster_secret.is_none()
            && self.cluster_secret_file.is_none()
        {
            return Err(invalid(
                "seeds",
                "joining a cluster needs its secret (cluster_secret_file or cluster_secret): \
                 without one, anyone who learns the cluster name could join",
            ));
        }
        let shards = self.shard_count();
        if shards == 0 || shards > SHARDS_MAX {
            return Err(invalid("shards", format!("{shards} is not in 1..={SHARDS_MAX}")));
        }
        if addr.port() != 0 && u32::from(addr.port()) + u32::from(shards) > u32::from(u16::MAX) {
            return Err(invalid(
                "listen",
                format!("port {} leaves no room for {shards} shard ports above it", addr.port()),
            ));
        }
        let key_cap = kvs_shards::limits::KEY_BYTES_MAX;
        if self.key_bytes_max == 0 || u64::from(self.key_bytes_max) > key_cap {
            return Err(invalid("key_bytes_max", format!("must be in 1..={key_cap}")));
        }
        let value_cap = kvs_shards::limits::VALUE_BYTES_MAX;
        if u64::from(self.value_bytes_max) > value_cap {
            return Err(invalid(
                "value_bytes_max",
                format!("the storage engine stores values up to {value_cap} bytes"),
            ));
        }
        if u64::from(self.key_bytes_max) + u64::from(self.value_bytes_max)
            > u64::from(FRAME_BODY_BYTES_MAX - BODY_OVERHEAD_BYTES)
        {
            return Err(invalid(
                "value_bytes_max",
                format!("key and value limits together exceed the {FRAME_BODY_BYTES_MAX}-byte frame limit"),
            ));
        }
        if self.vnodes == 0 || self.vnodes > VNODES_MAX {
            return Err(invalid("vnodes", format!("{} is not in 1..={VNODES_MAX}", self.vnodes)));
        }
        if self.sync_period_ms == 0 || self.sync_period_ms > 60_000 {
            return Err(invalid("sync_period_ms", "must be in 1..=60000"));
        }
        if self.wal_segment_mb == 0 || self.wal_segment_mb > 4096 {
            return Err(invalid("wal_segment_mb", "must be in 1..=4096"));
        }
        if self.memtable_mb == 0 {
            return Err(invalid("memtable_mb", "must be at least 1"));
        }
        if self.connection_inflight_max == 0 || self.connection_inflight_max > 65_536 {
            return Err(invalid("connection_inflight_max", "must be in 1..=65536"));
        }
        if self.connections_max == 0 {
            return Err(invalid("connections_max", "must be at least 1"));
        }
        if self.forward_queue_max == 0 || self.forward_queue_max > 1 << 20 {
            return Err(invalid("forward_queue_max", "must be in 1..=1048576"));
        }
        if self.level_base_mb == 0 {
            return Err(invalid("level_base_mb", "must be at least 1"));
        }
        if self.table_mb == 0 {
            return Err(invalid("table_mb", "must be at least 1"));
        }
        if self.level0_file_trigger == 0 {
            return Err(invalid("level0_file_trigger", "must be at least 1"));
        }
        if self.level0_stop_writes != 0 && self.level0_stop_writes <= self.level0_file_trigger {
            return Err(invalid("level0_stop_writes", "must be 0 or above level0_file_trigger"));
        }
        if !(1..=19).contains(&self.zstd_level) {
            return Err(invalid("zstd_level", "must be in 1..=19"));
        }
        if !(1..=64).contains(&self.block_kb) {
            return Err(invalid("block_kb", "must be in 1..=64"));
        }
        if !(1..=32).contains(&self.bloom_bits_per_key) {
            return Err(invalid("bloom_bits_per_key", "must be in 1..=32"));
        }
        self.shard_options(0).validate().map_err(|e| invalid("shard options", e.to_string()))?;
        if self.seeds.len() > SEEDS_MAX {
            return Err(invalid("seeds", format!("at most {SEEDS_MAX} seeds")));
        }
        self.seed_addrs()?;
        let name_max = kvs_wire::peer::CLUSTER_NAME_BYTES_MAX;
        if self.cluster_name.is_empty() || self.cluster_name.len() > name_max {
            return Err(invalid("cluster_name", format!("must be 1..={name_max} bytes")));
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.len() > CLUSTER_SECRET_BYTES_MAX) {
            return Err(invalid(
                "cluster_secret",
                format!("at most {CLUSTER_SECRET_BYTES_MAX} bytes"),
            ));
        }
        if !(10..=60_000).contains(&self.gossip_interval_ms) {
            return Err(invalid("gossip_interval_ms", "must be in 10..=60000"));
        }
        if self.hint_window_s > 72 * 3600 {
            return Err(invalid("hint_window_s", "must be at most 259200 (72 h, the hint age)"));
        }
        if self.hints_mb > 1 << 30 {
            return Err(invalid("hints_mb", "must be at most 2^30"));
        }
        if self.hint_replay_kb == 0 || self.hint_replay_kb > 1 << 30 {
            return Err(invalid("hint_replay_kb", "must be in 1..=2^30"));
        }
        if self.ring_delay_ms > 600_000 {
            return Err(invalid("ring_delay_ms", "must be at most 600000"));
        }
        if !(1..=1 << 30).contains(&self.stream_kb_per_s) {
            return Err(invalid("stream_kb_per_s", "must be in 1..=2^30"));
        }
        if !(1..=4096).contains(&self.stream_page_kb) {
            return Err(invalid("stream_page_kb", "must be in 1..=4096"));
        }
        if !(10..=600_000).contains(&self.replica_timeout_ms) {
            return Err(invalid("replica_timeout_ms", "must be in 10..=600000"));
        }
        if !(self.phi_threshold >= 1.0 && self.phi_threshold <= 100.0) {
            return Err(invalid("phi_threshold", "must be in 1..=100"));
        }
        if self.replication_factor == 0 || self.replication_factor > 16 {
            return Err(invalid("replication_factor", "must be in 1..=16"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every config key must be documented in tuning.md with its default.
    #[test]
    fn every_config_key_is_in_tuning_md() {
        let tuning = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tuning.md"));
        let defaults = NodeConfig { shards: Some(1), ..NodeConfig::default() };
        let table: toml::Table = toml::from_str(&toml::to_string(&defaults).unwrap()).unwrap();
        assert!(table.len() >= 15, "expected every field, got {table:?}");
        for key in table.keys() {
            assert!(tuning.contains(&format!("`{key}`")), "tuning.md does not document `{key}`");
            let flag = format!("--{}", key.replace('_', "-"));
            assert!(tuning.contains(&flag), "tuning.md does not name the flag {flag}");
        }
    }

    #[test]
    fn cluster_keys_parse_and_the_secret_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        let text = format!(
            "seeds = [\"127.0.0.2:7000\"]\ncluster_name = \"c1\"\ngossip_interval_ms = 100\n\
             phi_threshold = 6.5\nreplication_factor = 2\ncluster_secret_file = {:?}",
            file.display().to_string()
        );
        let c: NodeConfig = toml::from_str(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.seed_addrs().unwrap(), vec!["127.0.0.2:7000".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.cluster_secret_bytes().unwrap(), b"s3cret");
        assert_eq!((c.gossip_interval_ms, c.phi_threshold, c.replication_factor), (100, 6.5, 2));
        let wildcard = NodeConfig { listen: "0.0.0.0:7000".into(), ..c.clone() };
        let err = wildcard.validate().unwrap_err().to_string();
        assert!(err.contains("names no host"), "{err}");
        let no_secret = NodeConfig { cluster_secret_file: None, ..c.clone() };
        let err = no_secret.validate().unwrap_err().to_string();
        assert!(err.contains("needs its secret"), "seeds without a secret are refused: {err}");
        let both = NodeConfig { cluster_secret: Some("x".into()), ..c };
        assert!(both.cluster_secret_bytes().is_err());
    }

    #[test]
    fn defaults_are_valid() {
        let c = NodeConfig::default();
        c.validate().unwrap();
        assert!(c.shard_count() >= 1);
        assert_eq!(c.listen_addr().unwrap().port(), 7000);
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_keys() {
        let c: NodeConfig = toml::from_str("shards = 3\nsync = \"periodic\"\nvnodes = 16").unwrap();
        assert_eq!((c.shard_count(), c.sync, c.vnodes), (3, SyncSetting::Periodic, 16));
        assert_eq!(c.memtable_mb, 64);
        assert_eq!(c.block_cache_mb, 64);
        assert_eq!(c.shard_options(0).block_cache_bytes, 64 * 1024 * 1024);
        let c: NodeConfig = toml::from_str("block_cache_mb = 0").unwrap();
        c.validate().unwrap();
        assert_eq!(c.shard_options(1).block_cache_bytes, 0);
        assert!(toml::from_str::<NodeConfig>("shardz = 3").is_err());
        let c: NodeConfig = toml::from_str(
            "compaction = \"size-tiered\"\ncompression = \"none\"\ngc_grace_s = 60\ntable_mb = 8",
        )
        .unwrap();
        c.validate().unwrap();
        let o = c.shard_options(0);
        assert!(matches!(o.compaction.style, CompactionStyle::SizeTiered(_)));
        assert_eq!(o.sstable.compression, Compression::None);
        assert_eq!(o.compaction.gc_grace_ms, 60_000);
        assert_eq!(o.compaction.output_table_bytes, 8 << 20);
        let d = NodeConfig::default().shard_options(0);
        assert_eq!(d.sstable.compression, Compression::Zstd { level: 3 });
        assert_eq!(d.compaction.rate_bytes_per_s, 256 << 20);
    }

    #[test]
    fn bad_values_are_refused_with_the_field_name() {
        let cases: Vec<(NodeConfig, &str)> = vec![
            (NodeConfig { shards: Some(0), ..Default::default() }, "shards"),
            (NodeConfig { listen: "nonsense".into(), ..Default::default() }, "listen"),
            (
                NodeConfig {
                    listen: "127.0.0.1:65535".into(),
                    shards: Some(2),
                    ..Default::default()
                },
                "listen",
            ),
            (NodeConfig { key_bytes_max: 0, ..Default::default() }, "key_bytes_max"),
            (NodeConfig { value_bytes_max: u32::MAX, ..Default::default() }, "value_bytes_max"),
            (NodeConfig { vnodes: 0, ..Default::default() }, "vnodes"),
            (NodeConfig { sync_period_ms: 0, ..Default::default() }, "sync_period_ms"),
            (NodeConfig { level0_stop_writes: 3, ..Default::default() }, "level0_stop_writes"),
            (NodeConfig { zstd_level: 0, ..Default::default() }, "zstd_level"),
            (NodeConfig { block_kb: 0, ..Default::default() }, "block_kb"),
            (NodeConfig { bloom_bits_per_key: 0, ..Default::default() }, "bloom_bits_per_key"),
            (NodeConfig { table_mb: 0, ..Default::default() }, "table_mb"),
            (NodeConfig { seeds: vec!["nowhere".into()], ..Default::default() }, "seeds"),
            (NodeConfig { cluster_name: String::new(), ..Default::default() }, "cluster_name"),
            (NodeConfig { gossip_interval_ms: 1, ..Default::default() }, "gossip_interval_ms"),
            (NodeConfig { phi_threshold: f64::NAN, ..Default::default() }, "phi_threshold"),
            (NodeConfig { replication_factor: 0, ..Default::default() }, "replication_factor"),
        ];
        for (c, field) in cases {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err} should name {field}");
        }
    }
}
