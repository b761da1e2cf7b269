#!/usr/bin/env bash
# First throughput figures of a single node (issue 3): 1,000,000 puts with --sync always and
# 1,000,000 verified gets from one client thread with 64 requests in flight on one connection,
# 16-byte keys, 100-byte values, and the ping ceiling (no storage) measured in the same run.
# Closed loop: these are throughput ceilings, not latency figures (see tuning.md, "Running a
# benchmark honestly"). Repeats REPS times (default 3) on a fresh data directory each time and
# prints every report; quote the medians. With OUT set, each report is also kept as JSON in
# $OUT/run<r>-<op>.json (top-level ops_per_sec and p99_us).
#
# Usage: perf/scripts/first_figures.sh [REPS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-3}
count=${2:-1000000}
cargo build --release -q
kvs=${CARGO_TARGET_DIR:-target}/release/kvs
port=${KVS_BENCH_PORT:-7300}
out=${OUT:-}
common=(--threads 1 --connections 1 --pipeline 64 --key-size 16 --value-size 100
        --records "$count" --operations "$count" --progress-interval-ms 0)
for r in $(seq 1 "$reps"); do
  dir=$(mktemp -d /tmp/kvs-bench.XXXXXX)
  "$kvs" server --listen 127.0.0.1:$port --data-dir "$dir/data" --sync always >"$dir/out.log" 2>"$dir/err.log" &
  pid=$!
  for _ in $(seq 1 100); do grep -q "ready" "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
  echo "== run $r: $(cat "$dir/out.log")"
  json() { if [ -n "$out" ]; then mkdir -p "$out"; echo --json "$out/run$r-$1.json"; fi; }
  # put: every key is new (the store is empty); load inserts records 0..count-1 once each.
  "$kvs" bench --target kvs://127.0.0.1:$port --workload load "${common[@]}" $(json put)
  # get: every key was just written; --verify checks each value names its key and is intact.
  "$kvs" bench --target kvs://127.0.0.1:$port --workload c --distribution uniform --verify \
    "${common[@]}" $(json get)
  # ping: the same requests with no storage behind them: the network path's ceiling.
  "$kvs" bench --target ping://127.0.0.1:$port --workload c --distribution uniform \
    "${common[@]}" $(json ping)
  kill -TERM $pid; wait $pid || true
  rm -rf "$dir"
done
