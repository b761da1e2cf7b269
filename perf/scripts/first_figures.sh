#!/usr/bin/env bash
# First throughput figures of a single node (issue 3): 1,000,000 puts with --sync always and
# 1,000,000 gets from one client process with 64 requests in flight, 16-byte keys, 100-byte
# values, and the ping ceiling (no storage) measured in the same run. Repeats REPS times
# (default 3) on a fresh data directory each time and prints every run; quote the medians.
#
# Usage: perf/scripts/first_figures.sh [REPS] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/../.."
reps=${1:-3}
count=${2:-1000000}
cargo build --release -q
kvs=target/release/kvs
port=${KVS_BENCH_PORT:-7300}
for r in $(seq 1 "$reps"); do
  dir=$(mktemp -d /tmp/kvs-bench.XXXXXX)
  "$kvs" server --listen 127.0.0.1:$port --data-dir "$dir/data" --sync always >"$dir/out.log" 2>"$dir/err.log" &
  pid=$!
  for _ in $(seq 1 100); do grep -q "ready" "$dir/out.log" 2>/dev/null && break; sleep 0.1; done
  echo "== run $r: $(cat "$dir/out.log")"
  for op in put get ping; do
    "$kvs" bench --addr 127.0.0.1:$port --op $op --count "$count" --inflight 64 --key-size 16 --value-size 100 2>/dev/null
  done
  kill -TERM $pid; wait $pid || true
  rm -rf "$dir"
done
