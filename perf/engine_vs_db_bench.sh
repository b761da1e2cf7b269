#!/usr/bin/env bash
# One kvs shard engine next to RocksDB's db_bench: the same benchmarks, key count, sizes,
# memory budgets and sync setting, in the same run on the same machine.
#
# kvs:      kvs bench engine (kvs_shards::Engine in process on one glommio executor, no
#           network), once per --kvs-concurrency value (tasks on the executor, one operation
#           in flight each).
# db_bench: RocksDB's own benchmark, one thread (--threads 1: one operation in flight).
#
# What is matched, exactly:
#   keys           NUM keys, 16 bytes (8-byte big-endian index + '0' padding, db_bench's layout),
#                  values 100 bytes; kvs fillrandom writes every key once in random order,
#                  matched with db_bench filluniquerandom (db_bench fillrandom draws with
#                  replacement and would leave ~37% of the keys unwritten).
#   reads          READS uniform random reads of existing keys (readrandom) and of never
#                  written keys inside the key range (readmissing); overwrite writes NUM
#                  uniform random existing keys.
#   memory         memtable MEMTABLE_MB (db_bench --write_buffer_size, --max_write_buffer_number=2:
#                  one mutable + one flushing, as kvs), block cache BLOCK_CACHE_MB
#                  (--cache_size). Data set >= 4 x (memtable + cache).
#   files          no compression on both (the engine's default; the server's default is
#                  zstd), Bloom 10 bits/key on both, 4 KiB blocks on both.
#   compaction     leveled on both with kvs's defaults: level-0 trigger 4, stop writes at 36
#                  level-0 tables, level 1 64 MiB, x10 per level, 32 MiB output tables
#                  (db_bench --level0_file_num_compaction_trigger, --level0_stop_writes_trigger,
#                  --max_bytes_for_level_base, --target_file_size_base). Not matched: kvs
#                  compacts on the shard's own thread (a low-share task queue, input paced to
#                  256 MiB/s), RocksDB in background threads (db_bench default jobs).
#                  kvs reads tables with O_DIRECT, so db_bench gets --use_direct_reads=1 and
#                  --use_direct_io_for_flush_and_compaction=1 (else the OS page cache would give
#                  RocksDB memory beyond its budget); --buffered-db-bench turns that off.
#   sync           periodic: kvs --sync periodic (WAL written per group commit, fdatasync
#                            every 10 ms) vs db_bench --sync=0 --disable_wal=0 (WAL written to
#                            the page cache per write, never fsynced by the write).
#                  always:   kvs --sync always (ack after fdatasync, shared by group commit) vs
#                            db_bench --sync=1 (one fsync per write; with one thread nothing
#                            to group).
#   phases         both: fill, wait for flush/compaction to finish (kvs polls its stats;
#                  db_bench waitforcompaction), close, reopen (kvs --reopen; db_bench a second
#                  process with --use_existing_db=1), then readrandom, readmissing, overwrite.
#                  Reads therefore start with a cold block cache on both.
#   concurrency    NOT matched by default on purpose: kvs runs at each --kvs-concurrency value
#                  (default "1 64"); at 1 it has one operation in flight like db_bench
#                  --threads 1 (like for like); at 64 it models a shard serving connections, and
#                  its latencies then include queueing behind 63 others.
#   write amp.     fill only: kvs from its engine counters (EngineStats::write_amplification:
#                  WAL + flush + compaction bytes per user byte) and from /proc/self/io write_bytes
#                  of the process; db_bench from --statistics (wal + flush + compaction bytes).
#                  Both per user byte = NUM x (16 + 100).
#
# Output (OUT, default perf/results/engine-vs-db_bench-<date>): OUT/commands.txt (every command), kvs-c<N>.json and .txt, db_bench-fill.txt and
# db_bench-run.txt (raw output), compare-c<N>.md/.json, and OUT/summary.md (also printed).
#
# Usage: perf/engine_vs_db_bench.sh [--quick] [--num N] [--reads N] [--memtable-mb M]
#          [--block-cache-mb M] [--sync periodic|always] [--kvs-concurrency "1 64"]
#          [--seed S] [--out DIR] [--data-dir DIR] [--kvs-bin PATH] [--skip-build]
#          [--buffered-db-bench]
#   --quick   smoke test: 20,000 keys, 5,000 reads, memtable 1 MiB, cache 1 MiB (the data set
#             is then below 4x the budgets: its figures are not results).
# Defaults: memtable 16 MiB, cache 16 MiB, NUM = 4 x (memtable + cache) / 116 rounded up to
# 100,000 (1,200,000), READS = NUM, sync periodic, data under perf/out/engine-data (removed
# at the end).
#
# Needs db_bench: installed from Debian's rocksdb-tools when missing and running as root.
set -euo pipefail

cd "$(dirname "$0")/.."

QUICK=0
NUM=""
READS=""
MEMTABLE_MB=16
BLOCK_CACHE_MB=16
SYNC=periodic
KVS_CONCURRENCY="1 64"
SEED=1
OUT=""
DATA_DIR=""
KVS_BIN=${KVS_BIN:-${CARGO_TARGET_DIR:-target}/release/kvs}
SKIP_BUILD=0
DIRECT_DB_BENCH=1
KEY_BYTES=16
VALUE_BYTES=100
# Size factor: data >= FACTOR x (memtable + block cache).
FACTOR=4

die() { printf 'engine_vs_db_bench.sh: %s\n' "$*" >&2; exit 2; }
log() { printf '== %s\n' "$*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --num) NUM=$2; shift ;;
    --reads) READS=$2; shift ;;
    --memtable-mb) MEMTABLE_MB=$2; shift ;;
    --block-cache-mb) BLOCK_CACHE_MB=$2; shift ;;
    --sync) SYNC=$2; shift ;;
    --kvs-concurrency) KVS_CONCURRENCY=$2; shift ;;
    --seed) SEED=$2; shift ;;
    --out) OUT=$2; shift ;;
    --data-dir) DATA_DIR=$2; shift ;;
    --kvs-bin) KVS_BIN=$2; shift ;;
    --skip-build) SKIP_BUILD=1 ;;
    --buffered-db-bench) DIRECT_DB_BENCH=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done

case "$SYNC" in
  periodic) DBB_SYNC=0 ;;
  always) DBB_SYNC=1 ;;
  *) die "--sync must be periodic or always, not $SYNC" ;;
esac

ALLOW_SMALL=()
if [ "$QUICK" = 1 ]; then
  NUM=${NUM:-20000}
  READS=${READS:-5000}
  MEMTABLE_MB=1
  BLOCK_CACHE_MB=1
  ALLOW_SMALL=(--allow-small)
fi
MIB=$((1024 * 1024))
ENTRY_BYTES=$((KEY_BYTES + VALUE_BYTES))
MIN_NUM=$(( (FACTOR * (MEMTABLE_MB + BLOCK_CACHE_MB) * MIB + ENTRY_BYTES - 1) / ENTRY_BYTES ))
if [ -z "$NUM" ]; then
  NUM=$(( (MIN_NUM + 99999) / 100000 * 100000 ))
fi
READS=${READS:-$NUM}
if [ "$QUICK" = 0 ] && [ "$NUM" -lt "$MIN_NUM" ]; then
  die "--num $NUM gives less than $FACTOR x (memtable + cache) of data: use at least $MIN_NUM"
fi

STAMP=$(date -u +%Y-%m-%dT%H%MZ)
OUT=${OUT:-perf/results/engine-vs-db_bench-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# The engines' files: on a real disk (not tmpfs: O_DIRECT and the figures depend on it), and
# outside perf/results, which is committed.
DATA_DIR=${DATA_DIR:-perf/out/engine-data}
mkdir -p "$DATA_DIR"
DATA_DIR=$(cd "$DATA_DIR" && pwd)
: >"$OUT/commands.txt"

record() { printf '%q ' "$@" >>"$OUT/commands.txt"; echo >>"$OUT/commands.txt"; }

cleanup() { [ -n "${DATA_DIR:-}" ] && rm -rf "$DATA_DIR/kvs-c"* "$DATA_DIR/db_bench"; }
trap cleanup EXIT

ensure_db_bench() {
  command -v db_bench >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "db_bench is not installed; as root run: apt-get install -y rocksdb-tools"
  fi
  command -v apt-get >/dev/null 2>&1 || die "db_bench is missing and apt-get is not available"
  log "installing rocksdb-tools (db_bench) from Debian packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rocksdb-tools >&2 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rocksdb-tools >&2; } ||
    die "apt-get install rocksdb-tools failed"
  command -v db_bench >/dev/null 2>&1 || die "db_bench still missing after apt-get"
}

# Writes dirty pages back and, as root, empties the page cache, so no run inherits another's.
quiesce() {
  sync
  if [ -w /proc/sys/vm/drop_caches ]; then echo 3 >/proc/sys/vm/drop_caches || true; fi
}

ensure_db_bench
if [ "$SKIP_BUILD" = 0 ]; then
  log "building kvs (release)"
  cargo build --release --bin kvs >&2
fi
[ -x "$KVS_BIN" ] || die "no kvs binary at $KVS_BIN (set --kvs-bin or KVS_BIN)"
log "NUM=$NUM READS=$READS memtable ${MEMTABLE_MB} MiB cache ${BLOCK_CACHE_MB} MiB sync $SYNC" \
  "data $((NUM * ENTRY_BYTES / MIB)) MiB, kvs concurrency: $KVS_CONCURRENCY"

# --- kvs -----------------------------------------------------------------------------------
for c in $KVS_CONCURRENCY; do
  quiesce
  dir="$DATA_DIR/kvs-c$c"
  rm -rf "$dir"
  cmd=("$KVS_BIN" bench engine --dir "$dir" --num "$NUM" --reads "$READS" --writes "$NUM"
    --key-bytes "$KEY_BYTES" --value-bytes "$VALUE_BYTES" --memtable-mb "$MEMTABLE_MB"
    --block-cache-mb "$BLOCK_CACHE_MB" --sync "$SYNC" --sync-period-ms 10 --concurrency "$c"
    --benchmarks fillrandom,readrandom,readmissing,overwrite --reopen --seed "$SEED"
    "${ALLOW_SMALL[@]}" --json "$OUT/kvs-c$c.json")
  record "${cmd[@]}"
  log "kvs, concurrency $c"
  RUST_LOG=${RUST_LOG:-warn} "${cmd[@]}" >"$OUT/kvs-c$c.txt" 2>&1 ||
    { cat "$OUT/kvs-c$c.txt" >&2; die "kvs bench engine failed (see $OUT/kvs-c$c.txt)"; }
  du -sb "$dir" | awk '{print "kvs data on disk after the run: " $1 " bytes"}' >>"$OUT/kvs-c$c.txt"
  rm -rf "$dir"
done

# --- db_bench ------------------------------------------------------------------------------
DB="$DATA_DIR/db_bench"
rm -rf "$DB"
common=(--db="$DB" --num="$NUM" --key_size="$KEY_BYTES" --value_size="$VALUE_BYTES"
  --write_buffer_size=$((MEMTABLE_MB * MIB)) --max_write_buffer_number=2
  --cache_size=$((BLOCK_CACHE_MB * MIB)) --bloom_bits=10 --compression_type=none
  --block_size=4096 --sync="$DBB_SYNC" --disable_wal=0 --threads=1 --histogram=1
  --statistics=1 --level0_file_num_compaction_trigger=4 --level0_stop_writes_trigger=36
  --max_bytes_for_level_base=$((64 * MIB)) --target_file_size_base=$((32 * MIB)))
if [ "$DIRECT_DB_BENCH" = 1 ]; then
  common+=(--use_direct_reads=1 --use_direct_io_for_flush_and_compaction=1)
fi
quiesce
fill=(db_bench "${common[@]}" --benchmarks=filluniquerandom,waitforcompaction --seed="$SEED")
record "${fill[@]}"
log "db_bench fill"
"${fill[@]}" >"$OUT/db_bench-fill.txt" 2>&1 ||
  { tail -20 "$OUT/db_bench-fill.txt" >&2; die "db_bench fill failed"; }
quiesce
run=(db_bench "${common[@]}" --use_existing_db=1 --reads="$READS"
  --benchmarks=readrandom,readmissing,overwrite,waitforcompaction --seed=$((SEED + 1)))
record "${run[@]}"
log "db_bench reads and overwrite"
"${run[@]}" >"$OUT/db_bench-run.txt" 2>&1 ||
  { tail -20 "$OUT/db_bench-run.txt" >&2; die "db_bench read phase failed"; }
du -sb "$DB" | awk '{print "db_bench data on disk after the run: " $1 " bytes"}' >>"$OUT/db_bench-run.txt"
rm -rf "$DB"

# --- side by side --------------------------------------------------------------------------
{
  echo "# kvs engine vs RocksDB db_bench, $STAMP"
  echo
  [ "$QUICK" = 1 ] && echo "**--quick smoke run: the data set is below 4x the memory budgets; not a result.**" && echo
  echo "NUM=$NUM keys x ($KEY_BYTES + $VALUE_BYTES) bytes = $((NUM * ENTRY_BYTES / MIB)) MiB;" \
    "READS=$READS; overwrite $NUM; memtable $MEMTABLE_MB MiB; block cache $BLOCK_CACHE_MB MiB;" \
    "sync $SYNC (db_bench --sync=$DBB_SYNC --disable_wal=0); no compression; bloom 10 bits/key;" \
    "db_bench direct I/O: $([ "$DIRECT_DB_BENCH" = 1 ] && echo yes || echo no); seed $SEED."
  echo "$(grep -m1 '^RocksDB:' "$OUT/db_bench-fill.txt" | tr -s ' ' || echo 'RocksDB ?'); $(nproc) CPUs;" \
    "kvs $(git rev-parse --short HEAD 2>/dev/null || echo '?'); data dir filesystem $(stat -f -c %T "$DATA_DIR")."
  echo "kvs: one engine on one glommio executor with C tasks (one operation in flight each);"
  echo "db_bench: --threads 1. Fill, settle, reopen, then reads and overwrite (see the script header)."
  echo "Ratios are kvs/db_bench: ops/s above 1 and p99 below 1 favour kvs. Commands: commands.txt."
} >"$OUT/summary.md"
for c in $KVS_CONCURRENCY; do
  cmp=("$KVS_BIN" bench engine-compare --kvs "$OUT/kvs-c$c.json"
    --db-bench "$OUT/db_bench-fill.txt" --db-bench "$OUT/db_bench-run.txt"
    --markdown "$OUT/compare-c$c.md" --json "$OUT/compare-c$c.json")
  record "${cmp[@]}"
  "${cmp[@]}" >/dev/null
  { echo; echo "## kvs concurrency $c"; echo; cat "$OUT/compare-c$c.md"; } >>"$OUT/summary.md"
done
cat "$OUT/summary.md"
log "results in $OUT"
