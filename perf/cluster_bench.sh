#!/usr/bin/env bash
# A 3-node kvs cluster (N=3, quorum reads and writes) against one kvs node, on this machine.
#
# Two targets, each fresh, each loaded with RECORDS records and then run with the same
# workloads by the same harness (`kvs bench`), one target after the other:
#
#   single   one `kvs server` on 127.0.0.1 (effective N=1: every request is one local replica
#            operation), --consistency one
#   cluster  `kvs dev-cluster --nodes 3` on 127.0.0.1-3 (N=3), --consistency quorum (W=2 of
#            3 replica writes, R=2 replica reads per request)
#
# For each target and workload: a closed-loop run (the peak), then an open-loop run at
# RATE_FRACTION (0.7) of that peak, whose p50/p99 are the latency at a sustainable load (the
# design's "quorum p99 under 10 ms at 70% of peak"). All nodes share this machine's cores, so
# the cluster does three times the storage work per write: summary.md also gives the cost
# per replica operation against the single node's (target: a replicated write within 2x of a
# local one).
#
# Results in OUT: one JSON and log per run, each node's log, `kvs status` of the cluster,
# commands.txt (every command run) and summary.md (also printed).
#
# Usage:  perf/cluster_bench.sh
# Environment (defaults in brackets):
#   RECORDS [200000]  OPERATIONS [200000]  CONNECTIONS [16]  PIPELINE [4]  THREADS [1]
#   WORKLOADS ["a c write"]  RATE_FRACTION [0.7]  SHARDS [1] (per node)  PORT [7600]
#   KEY_SIZE [16]  VALUE_SIZE [100]  OUT [perf/out/cluster-<date>]
#   KVS_BIN [$CARGO_TARGET_DIR/release/kvs]  SKIP_BUILD [0]
#
# Only 127.0.0.1-3 are used. Every run is bounded by --operations; Ctrl-C stops the nodes.
set -euo pipefail

cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-200000}
OPERATIONS=${OPERATIONS:-200000}
CONNECTIONS=${CONNECTIONS:-16}
PIPELINE=${PIPELINE:-4}
THREADS=${THREADS:-1}
WORKLOADS=${WORKLOADS:-"a c write"}
RATE_FRACTION=${RATE_FRACTION:-0.7}
SHARDS=${SHARDS:-1}
PORT=${PORT:-7600}
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-100}
KVS_BIN=${KVS_BIN:-${CARGO_TARGET_DIR:-target}/release/kvs}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-perf/out/cluster-$(date +%Y%m%d-%H%M%S)}
START_TIMEOUT_S=${START_TIMEOUT_S:-90}

SERVER_PID=""
CLUSTER_PID=""
WORK=""

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'cluster_bench.sh: %s\n' "$*" >&2; exit 1; }
record() { printf '%q ' "$@" >>"$OUT/commands.txt"; echo >>"$OUT/commands.txt"; }

# SIGTERM (SIGINT for the dev-cluster supervisor, which stops its nodes) and a bounded wait.
stop_pid() {
  local pid=$1 sig=$2
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill "-$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  log "pid $pid did not stop within 60 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  stop_pid "$SERVER_PID" TERM
  stop_pid "$CLUSTER_PID" INT
  SERVER_PID=""
  CLUSTER_PID=""
  [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_single() {
  local dir="$WORK/single"
  mkdir -p "$dir"
  local args=(server --listen "127.0.0.1:$PORT" --data-dir "$dir/data" --shards "$SHARDS")
  record "$KVS_BIN" "${args[@]}"
  "$KVS_BIN" "${args[@]}" >"$OUT/single.stdout" 2>"$OUT/single.log" &
  SERVER_PID=$!
  for _ in $(seq 1 $((START_TIMEOUT_S * 10))); do
    grep -q '^kvs server ready:' "$OUT/single.stdout" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || die "the single node exited; see $OUT/single.log"
    sleep 0.1
  done
  die "the single node was not ready within ${START_TIMEOUT_S} s"
}

start_cluster() {
  local args=(dev-cluster --nodes 3 --shards "$SHARDS" --port "$PORT" --dir "$WORK/cluster")
  record "$KVS_BIN" "${args[@]}"
  "$KVS_BIN" "${args[@]}" >"$OUT/cluster.stdout" 2>"$OUT/cluster.stderr" &
  CLUSTER_PID=$!
  for _ in $(seq 1 $((START_TIMEOUT_S * 10))); do
    grep -q '^cluster ready' "$OUT/cluster.stdout" 2>/dev/null && break
    kill -0 "$CLUSTER_PID" 2>/dev/null || die "dev-cluster exited; see $OUT/cluster.stderr"
    sleep 0.1
  done
  grep -q '^cluster ready' "$OUT/cluster.stdout" || die "cluster not ready in ${START_TIMEOUT_S} s"
  # Three nodes, every one up and alive, as node 1 sees it.
  for _ in $(seq 1 $((START_TIMEOUT_S * 10))); do
    if "$KVS_BIN" status --json --addr "127.0.0.1:$PORT" >"$OUT/cluster-status.json" 2>&1 &&
      python3 -c 'import json,sys; sys.exit(len(json.load(open(sys.argv[1]))["nodes"]) != 3)' \
        "$OUT/cluster-status.json"; then
      "$KVS_BIN" status --addr "127.0.0.1:$PORT" >"$OUT/cluster-status.txt" 2>&1 || true
      break
    fi
    sleep 0.1
  done
  # Shards learn liveness from their cluster core one gossip round after `status` shows it:
  # wait until writes at `all` (every replica alive on the coordinating shard) go through
  # for probe keys spread over every node.
  for _ in $(seq 1 $((START_TIMEOUT_S * 2))); do
    local ok=1
    for i in $(seq 1 24); do
      "$KVS_BIN" put "cluster-bench-probe-$i" x --consistency all --addr "127.0.0.1:$PORT" \
        >/dev/null 2>&1 || { ok=0; break; }
    done
    [ "$ok" = 1 ] && return 0
    sleep 0.5
  done
  die "writes at consistency all did not go through within ${START_TIMEOUT_S} s"
  die "the cluster did not converge; see $OUT/cluster-status.txt"
}

# bench NAME TARGET_ADDR CONSISTENCY WORKLOAD [RATE]: one harness run, into OUT/NAME-WORKLOAD[-r].json.
bench() {
  local name=$1 addr=$2 consistency=$3 workload=$4 rate=${5:-}
  local operations=$OPERATIONS json="$OUT/$name-$workload.json"
  [ "$workload" = load ] && operations=$RECORDS
  [ -n "$rate" ] && json="$OUT/$name-$workload-rate.json"
  local args=(bench --target "kvs://$addr" --workload "$workload" --records "$RECORDS"
    --operations "$operations" --connections "$CONNECTIONS" --pipeline "$PIPELINE"
    --threads "$THREADS" --key-size "$KEY_SIZE" --value-size "$VALUE_SIZE"
    --consistency "$consistency" --progress-interval-ms 0 --json "$json")
  [ -n "$rate" ] && args+=(--rate "$rate")
  case $workload in load | write) ;; *) args+=(--verify) ;; esac
  record "$KVS_BIN" "${args[@]}"
  log "$name $workload ${rate:+at $rate ops/s}"
  rm -f "$json"
  if ! "$KVS_BIN" "${args[@]}" >"${json%.json}.log" 2>&1; then
    log "FAILED or had errors: $name $workload (see ${json%.json}.log)"
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$workload" "${rate:-peak}" "$json" >>"$OUT/results.tsv"
}

ops_of() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ops_per_sec"])' "$1" 2>/dev/null ||
    echo ""
}

run_target() {
  local name=$1 addr=$2 consistency=$3
  bench "$name" "$addr" "$consistency" load
  for w in $WORKLOADS; do
    bench "$name" "$addr" "$consistency" "$w"
    local peak
    peak=$(ops_of "$OUT/$name-$w.json")
    if [ -n "$peak" ]; then
      local rate
      rate=$(python3 -c "import sys; print(int(float(sys.argv[1]) * float(sys.argv[2])))" \
        "$peak" "$RATE_FRACTION")
      [ "$rate" -gt 0 ] && bench "$name" "$addr" "$consistency" "$w" "$rate"
    fi
  done
}

summarize() {
  python3 - "$OUT/results.tsv" <<'PY'
import json, sys

rows = {}
for line in open(sys.argv[1]):
    parts = line.rstrip("\n").split("\t")
    if len(parts) != 4:
        continue
    name, workload, kind, path = parts
    try:
        d = json.load(open(path))
        rows[(name, workload, "peak" if kind == "peak" else "rate")] = d
    except (OSError, ValueError):
        pass

def f(d, k):
    v = d.get(k) if d else None
    return v

def num(x, digits=0):
    return "n/a" if x is None else f"{x:,.{digits}f}"

print("| target | workload | peak ops/s | peak p99 µs | ops/s at 70% | p50 µs at 70% | p99 µs at 70% | errors |")
print("|---|---|---|---|---|---|---|---|")
workloads = []
for (name, w, _k) in rows:
    if w not in workloads:
        workloads.append(w)
for w in workloads:
    for name in ("single", "cluster"):
        p = rows.get((name, w, "peak"))
        r = rows.get((name, w, "rate"))
        if not p and not r:
            continue
        errs = sum((d or {}).get("errors", 0) for d in (p, r))
        print(f"| {name} | {w} | {num(f(p, 'ops_per_sec'))} | {num(f(p, 'p99_us'))} "
              f"| {num(f(r, 'ops_per_sec'))} | {num(f(r, 'p50_us'))} | {num(f(r, 'p99_us'))} | {errs} |")

print()
print("Cost per replica operation (same machine, same cores): a cluster write at quorum is 3 "
      "replica writes (W=2 waited for, 3 sent); a quorum read is 2 replica reads.")
for w, per in (("write", 3), ("c", 2), ("load", 3)):
    s = rows.get(("single", w, "peak"))
    c = rows.get(("cluster", w, "peak"))
    if s and c and (s.get("errors") or c.get("errors")):
        print(f"- {w}: n/a (the runs had errors; see their logs)")
    elif s and c and c.get("ops_per_sec"):
        single = s["ops_per_sec"]
        replica_ops = c["ops_per_sec"] * per
        print(f"- {w}: single node {single:,.0f} ops/s; cluster {c['ops_per_sec']:,.0f} ops/s = "
              f"{replica_ops:,.0f} replica ops/s; cost per replica op = "
              f"{single / replica_ops:.2f}x a local op")
PY
}

main() {
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to read the JSON results"
  if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release"
    cargo build --release
  fi
  [ -x "$KVS_BIN" ] || die "no kvs binary at $KVS_BIN"
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  : >"$OUT/commands.txt"
  : >"$OUT/results.tsv"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-cluster-bench.XXXXXX")

  log "single node"
  start_single
  run_target single "127.0.0.1:$PORT" one
  stop_pid "$SERVER_PID" TERM
  SERVER_PID=""

  log "3-node cluster"
  start_cluster
  run_target cluster "127.0.0.1:$PORT" quorum
  "$KVS_BIN" status --addr "127.0.0.1:$PORT" >"$OUT/cluster-status-after.txt" 2>&1 || true
  for n in 1 2 3; do cp "$WORK/cluster/node-$n/server.log" "$OUT/node-$n.log" 2>/dev/null || true; done
  stop_pid "$CLUSTER_PID" INT
  CLUSTER_PID=""

  {
    echo "# kvs: 3-node cluster (N=3, quorum) vs one node, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "records=$RECORDS operations=$OPERATIONS connections=$CONNECTIONS pipeline=$PIPELINE" \
      "threads=$THREADS shards/node=$SHARDS key=$KEY_SIZE value=$VALUE_SIZE" \
      "rate=$RATE_FRACTION of peak; $(nproc) cores shared by every node and the harness"
    echo
    summarize
  } >"$OUT/summary.md"
  cat "$OUT/summary.md"
}

main "$@"
