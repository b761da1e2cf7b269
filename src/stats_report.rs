//! What `kvs stats` shows: a [`StatsResponse`] turned into per-shard counter maps, a node
//! total, derived ratios, and its two renderings (a table for people, JSON for programs).
//!
//! Pure functions of the response: no I/O, so the arithmetic is unit-tested here. The ratios
//! are computed from the named counters with the same formulas as `kvs_shards::EngineStats`
//! (a test holds them together), so counters a newer engine adds need no change here.
//!
//! ## JSON
//! ```text
//! {
//!   "node_id": "5c0f3e1a9b7d2c44",        16 hex digits, as the CLI prints node ids
//!   "shard_count": 2,
//!   "missing_shards": [],                 shards that did not answer in time
//!   "shards": [ { "shard": 0, "counters": { "puts": 10, ... }, "derived": { ... } }, ... ],
//!   "total": { "counters": { ... }, "derived": { ... } }
//! }
//! ```
//! `counters` holds every counter the shard sent, by name (keys sorted); `total.counters` sums
//! them over the shards that answered, except the ids in [`NOT_SUMMED`]. `derived` holds
//! `write_amplification`, `block_cache_hit_rate` and `bloom_false_positive_rate`, each `null`
//! while its denominator is zero. Keys are only ever added.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kvs_wire::msg::StatsResponse;
use serde_json::{json, Map, Value};

/// Counters that are identifiers, not quantities: left out of the node total.
pub const NOT_SUMMED: [&str; 1] = ["wal_segment_id"];

/// Named counters of one shard, or of the node.
pub type Counters = BTreeMap<String, u64>;

/// Ratios computed from counters; `None` while the denominator is zero.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Derived {
    /// Bytes written to the device (WAL, flushes, compactions) per byte users wrote.
    pub write_amplification: Option<f64>,
    /// Share of table block reads the block cache served.
    pub block_cache_hit_rate: Option<f64>,
    /// Share of Bloom filter checks for absent keys that the filter let through.
    pub bloom_false_positive_rate: Option<f64>,
}

impl Derived {
    /// The ratios of `c`, as `EngineStats::write_amplification` and
    /// `EngineStats::block_cache_hit_rate` compute them.
    pub fn of(c: &Counters) -> Derived {
        let get = |name: &str| c.get(name).copied().unwrap_or(0);
        let ratio = |num: u64, den: u64| (den > 0).then(|| num as f64 / den as f64);
        let device = get("wal_bytes_written")
            .saturating_add(get("flush_bytes_written"))
            .saturating_add(get("compaction_bytes_written"));
        let hits = get("block_cache_hits");
        let fp = get("bloom_false_positives");
        Derived {
            write_amplification: ratio(device, get("user_bytes_written")),
            block_cache_hit_rate: ratio(hits, hits.saturating_add(get("block_cache_misses"))),
            bloom_false_positive_rate: ratio(fp, fp.saturating_add(get("bloom_useful"))),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "write_amplification": self.write_amplification,
            "block_cache_hit_rate": self.block_cache_hit_rate,
            "bloom_false_positive_rate": self.bloom_false_positive_rate,
        })
    }
}

/// A node's stats, ready to print.
#[derive(Clone, Debug, PartialEq)]
pub struct StatsReport {
    pub node_id: u64,
    pub shard_count: u32,
    /// Shards that did not answer.
    pub missing: Vec<u32>,
    /// Answered shards, by index.
    pub shards: Vec<(u32, Counters)>,
    /// Sums over `shards` (without [`NOT_SUMMED`]).
    pub total: Counters,
}

impl StatsReport {
    /// The report of a (checked) response.
    pub fn new(resp: &StatsResponse) -> StatsReport {
        let mut shards: Vec<(u32, Counters)> = resp
            .shards
            .iter()
            .map(|s| (s.shard, s.counters.iter().map(|c| (c.name.clone(), c.value)).collect()))
            .collect();
        shards.sort_by_key(|(shard, _)| *shard);
        let mut total = Counters::new();
        for (_, counters) in &shards {
            for (name, value) in counters {
                if !NOT_SUMMED.contains(&name.as_str()) {
                    let sum = total.entry(name.clone()).or_insert(0);
                    *sum = sum.saturating_add(*value);
                }
            }
        }
        let mut missing = resp.missing.clone();
        missing.sort_unstable();
        StatsReport { node_id: resp.node_id, shard_count: resp.shard_count, missing, shards, total }
    }

    /// The JSON object described in the module docs.
    pub fn to_json(&self) -> Value {
        let counters = |c: &Counters| -> Value {
            Value::Object(
                c.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect::<Map<_, _>>(),
            )
        };
        let shards: Vec<Value> = self
            .shards
            .iter()
            .map(|(shard, c)| {
                json!({ "shard": shard, "counters": counters(c), "derived": Derived::of(c).to_json() })
            })
            .collect();
        json!({
            "node_id": format!("{:016x}", self.node_id),
            "shard_count": self.shard_count,
            "missing_shards": self.missing,
            "shards": shards,
            "total": {
                "counters": counters(&self.total),
                "derived": Derived::of(&self.total).to_json(),
            },
        })
    }

    /// The table for people: the counters that matter most, a column per answered shard and
    /// one for the node total. Byte counters are shown in binary units.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "node {:016x}  shards {}", self.node_id, self.shard_count);
        if self.missing.is_empty() {
            out.push('\n');
        } else {
            let m: Vec<String> = self.missing.iter().map(u32::to_string).collect();
            let _ = writeln!(out, "  missing (did not answer in time): {}", m.join(","));
        }
        let mut header = vec![String::new()];
        header.extend(self.shards.iter().map(|(s, _)| format!("shard {s}")));
        header.push("total".into());
        let mut rows = vec![header];
        for name in self.row_names() {
            let mut row = vec![name.clone()];
            let cell = |c: &Counters| c.get(&name).map_or("-".to_string(), |v| show(&name, *v));
            row.extend(self.shards.iter().map(|(_, c)| cell(c)));
            row.push(if NOT_SUMMED.contains(&name.as_str()) {
                "-".into()
            } else {
                cell(&self.total)
            });
            rows.push(row);
        }
        type Pick = fn(&Derived) -> Option<f64>;
        let ratios: [(&str, Pick, bool); 3] = [
            ("write_amplification", |d| d.write_amplification, false),
            ("block_cache_hit_rate", |d| d.block_cache_hit_rate, true),
            ("bloom_false_positive_rate", |d| d.bloom_false_positive_rate, true),
        ];
        for (name, pick, percent) in ratios {
            let cell = |c: &Counters| match pick(&Derived::of(c)) {
                None => "-".to_string(),
                Some(r) if percent => format!("{:.1}%", r * 100.0),
                Some(r) => format!("{r:.2}"),
            };
            let mut row = vec![name.to_string()];
            row.extend(self.shards.iter().map(|(_, c)| cell(c)));
            row.push(cell(&self.total));
            rows.push(row);
        }
        let columns = rows.first().map_or(0, Vec::len);
        let widths: Vec<usize> = (0..columns)
            .map(|i| rows.iter().filter_map(|r| r.get(i)).map(String::len).max().unwrap_or(0))
            .collect();
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i == 0 {
                    let _ = write!(line, "{cell:<width$}");
                } else {
                    let _ = write!(line, "  {cell:>width$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// The counters the table shows, in order: those of [`TABLE_ROWS`] that some shard sent,
    /// with the per-level rows in place of `levels`.
    fn row_names(&self) -> Vec<String> {
        let has = |name: &str| self.shards.iter().any(|(_, c)| c.contains_key(name));
        let mut names = Vec::new();
        for row in TABLE_ROWS {
            if row == "levels" {
                for level in 0.. {
                    let (tables, bytes) = (format!("l{level}_tables"), format!("l{level}_bytes"));
                    if !has(&tables) && !has(&bytes) {
                        break;
                    }
                    names.push(tables);
                    names.push(bytes);
                }
            } else if has(row) {
                names.push(row.to_string());
            }
        }
        names
    }
}

/// The rows of the human table, in order; `levels` stands for `l<N>_tables` and `l<N>_bytes`
/// of every level present. Every other counter is in the JSON.
const TABLE_ROWS: [&str; 29] = [
    "keys",
    "keys_estimate",
    "memtable_bytes",
    "immutable_bytes",
    "levels",
    "tables",
    "table_bytes",
    "wal_bytes",
    "flushes",
    "compactions",
    "compaction_running",
    "compaction_backlog_bytes",
    "write_stalls",
    "puts",
    "deletes",
    "gets",
    "user_bytes_written",
    "wal_bytes_written",
    "flush_bytes_written",
    "compaction_bytes_read",
    "compaction_bytes_written",
    "blocks_read",
    "block_cache_hits",
    "block_cache_misses",
    "block_cache_bytes",
    "bloom_useful",
    "bloom_false_positives",
    "requests_forwarded_out",
    "requests_overloaded",
];

/// A counter's value for people: bytes in binary units, anything else as is.
fn show(name: &str, value: u64) -> String {
    if !name.contains("bytes") {
        return value.to_string();
    }
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = value as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    match (unit, UNITS.get(unit)) {
        (0, _) | (_, None) => format!("{value} B"),
        (_, Some(u)) => format!("{v:.1} {u}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvs_shards::{EngineStats, LevelStats};
    use kvs_wire::msg::{Counter, ShardStats};

    fn engine_stats(puts: u64) -> EngineStats {
        EngineStats {
            puts,
            gets: 3,
            user_bytes_written: 1000,
            wal_bytes_written: 1500,
            flush_bytes_written: 900,
            compaction_bytes_written: 600,
            block_cache_hits: 30,
            block_cache_misses: 10,
            bloom_useful: 90,
            bloom_false_positives: 10,
            wal_segment_id: 7,
            levels: vec![LevelStats { tables: 2, bytes: 4096 }, LevelStats { tables: 1, bytes: 9 }],
            ..EngineStats::default()
        }
    }

    fn response(stats: &[EngineStats], missing: Vec<u32>) -> StatsResponse {
        let shards = (0u32..)
            .zip(stats)
            .map(|(shard, s)| ShardStats {
                shard,
                counters: s
                    .counters()
                    .into_iter()
                    .map(|(name, value)| Counter { name, value })
                    .collect(),
            })
            .collect();
        let shard_count = stats.len() as u32 + missing.len() as u32;
        StatsResponse { node_id: 0xabc, shard_count, shards, missing }
    }

    #[test]
    fn ratios_match_the_engine() {
        for s in [engine_stats(1), EngineStats::default()] {
            let c: Counters = s.counters().into_iter().collect();
            let d = Derived::of(&c);
            assert_eq!(d.write_amplification, s.write_amplification());
            assert_eq!(d.block_cache_hit_rate, s.block_cache_hit_rate());
        }
        let d = Derived::of(&engine_stats(1).counters().into_iter().collect());
        assert_eq!(d.bloom_false_positive_rate, Some(0.1));
    }

    #[test]
    fn totals_sum_quantities_not_ids() {
        let r = StatsReport::new(&response(&[engine_stats(4), engine_stats(6)], vec![]));
        assert_eq!(r.total.get("puts"), Some(&10));
        assert_eq!(r.total.get("l0_tables"), Some(&4));
        assert_eq!(r.total.get("wal_segment_id"), None);
        assert_eq!(Derived::of(&r.total).write_amplification, Some(3.0));
    }

    #[test]
    fn json_is_stable() {
        let r = StatsReport::new(&response(&[engine_stats(4)], vec![1]));
        let j = r.to_json();
        assert_eq!(j["node_id"], "0000000000000abc");
        assert_eq!(j["shard_count"], 2);
        assert_eq!(j["missing_shards"], json!([1]));
        assert_eq!(j["shards"][0]["shard"], 0);
        assert_eq!(j["shards"][0]["counters"]["puts"], 4);
        assert_eq!(j["shards"][0]["derived"]["write_amplification"], 3.0);
        assert_eq!(j["total"]["counters"]["l1_bytes"], 9);
        assert_eq!(j["total"]["derived"]["block_cache_hit_rate"], 0.75);
        let empty = StatsReport::new(&response(&[EngineStats::default()], vec![]));
        assert_eq!(empty.to_json()["total"]["derived"]["write_amplification"], Value::Null);
    }

    #[test]
    fn table_shows_shards_levels_total_and_missing() {
        let r = StatsReport::new(&response(&[engine_stats(4), engine_stats(6)], vec![2]));
        let t = r.to_table();
        assert!(t.starts_with("node 0000000000000abc  shards 3  missing"), "{t}");
        let line = |name: &str| {
            t.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_default()
        };
        assert_eq!(line("puts").split_whitespace().collect::<Vec<_>>(), ["puts", "4", "6", "10"]);
        assert!(line("l1_tables").ends_with(" 2"), "{t}");
        assert!(line("l0_bytes").contains("4.0 KiB"), "{t}");
        assert!(line("write_amplification").ends_with("3.00"), "{t}");
        assert!(line("block_cache_hit_rate").ends_with("75.0%"), "{t}");
        assert!(t.lines().nth(1).unwrap().contains("shard 0") && t.contains("total"), "{t}");
    }
}
