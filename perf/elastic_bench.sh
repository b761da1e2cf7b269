#!/usr/bin/env bash
# Grow a loaded 3-node kvs cluster to 4 nodes and shrink it back to 3, under a steady quorum
# load, on this machine; report how long each move took, how much it streamed, the share of
# replica copies that moved, and the client's latency before and during the moves.
#
# Steps (every node on 127.0.0.1-4, same port, N=3, SHARDS shards each):
#   1. nodes 1-3 start (2 and 3 seeding 1) and join; RECORDS records are loaded at quorum;
#   2. baseline: workload a (50/50) at RATE ops/s, quorum, for BASE_S seconds;
#   3. the same load runs for MOVE_S seconds while node 4 joins (streaming its ranges) and,
#      once it is up, is decommissioned (streaming them away); node 4 stops after that;
#   4. summary.md: join and decommission time, versions and MiB streamed and the rate, the
#      share of replica copies moved (versions / (3 x records); 1/4 expected for a fourth
#      node), and p50/p99/errors of the load before and during the moves.
#
# Results in OUT: bench JSON and logs, node logs, status snapshots, commands.txt, summary.md.
#
# Usage:  perf/elastic_bench.sh
# Environment (defaults in brackets):
#   RECORDS [1000000]  RATE [4000]  BASE_S [20]  MOVE_S [90]  CONNECTIONS [8]  PIPELINE [2]
#   SHARDS [1]  PORT [7700]  VALUE_SIZE [100]  RING_DELAY_MS [2000]  STREAM_KB_PER_S [8192]
#   OUT [perf/out/elastic-<date>]  KVS_BIN [$CARGO_TARGET_DIR/release/kvs]  SKIP_BUILD [0]
#
# Only 127.0.0.1-4 are used. Every run is bounded by --duration; every node is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
RATE=${RATE:-4000}
BASE_S=${BASE_S:-20}
MOVE_S=${MOVE_S:-90}
CONNECTIONS=${CONNECTIONS:-8}
PIPELINE=${PIPELINE:-2}
SHARDS=${SHARDS:-1}
PORT=${PORT:-7700}
VALUE_SIZE=${VALUE_SIZE:-100}
RING_DELAY_MS=${RING_DELAY_MS:-2000}
STREAM_KB_PER_S=${STREAM_KB_PER_S:-8192}
KVS_BIN=${KVS_BIN:-${CARGO_TARGET_DIR:-target}/release/kvs}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-perf/out/elastic-$(date +%Y%m%d-%H%M%S)}
SECRET=5d0c3b2a19f8e7d6c5b4a39281706f5e

PIDS=()
WORK=""

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'elastic_bench.sh: %s\n' "$*" >&2; exit 1; }
record() { printf '%q ' "$@" >>"$OUT/commands.txt"; echo >>"$OUT/commands.txt"; }

stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 600); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  for p in "${PIDS[@]}"; do stop_pid "$p"; done
  PIDS=()
  [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_node I [SEED]: node I on 127.0.0.I:PORT; prints its pid.
start_node() {
  local i=$1 seed=${2:-}
  local args=(server --listen "127.0.0.$i:$PORT" --data-dir "$WORK/node-$i" --shards "$SHARDS"
    --cluster-name elastic-bench --cluster-secret "$SECRET" --ring-delay-ms "$RING_DELAY_MS"
    --stream-kb-per-s "$STREAM_KB_PER_S")
  [ -n "$seed" ] && args+=(--seeds "$seed")
  record "$KVS_BIN" "${args[@]}"
  "$KVS_BIN" "${args[@]}" >"$OUT/node-$i.stdout" 2>"$OUT/node-$i.log" &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    grep -q '^kvs server ready:' "$OUT/node-$i.stdout" 2>/dev/null && return 0
    sleep 0.1
  done
  die "node $i was not ready within 60 s; see $OUT/node-$i.log"
}

# wait_up N: until node 1 sees N nodes up and alive (and any others left).
wait_up() {
  local n=$1
  for _ in $(seq 1 1200); do
    if "$KVS_BIN" status --json --addr "127.0.0.1:$PORT" >"$OUT/status.json" 2>/dev/null ||
      [ -s "$OUT/status.json" ]; then
      if python3 - "$OUT/status.json" "$n" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
up = [m for m in s["nodes"] if m["state"] == "up" and m["liveness"] == "alive"]
rest = [m for m in s["nodes"] if m not in up and m["state"] != "left"]
sys.exit(0 if len(up) == int(sys.argv[2]) and not rest else 1)
PY
      then return 0; fi
    fi
    sleep 0.1
  done
  die "the cluster did not reach $n nodes up within 120 s"
}

# snapshot ADDR FILE: `kvs status --json` of the node at ADDR (its movement line) into OUT/FILE.
snapshot() { "$KVS_BIN" status --json --addr "$1" >"$OUT/$2" 2>/dev/null || true; }

bench() {
  local name=$1 workload=$2 seconds=${3:-}
  local args=(bench --target "kvs://127.0.0.1:$PORT" --workload "$workload" --records "$RECORDS"
    --value-size "$VALUE_SIZE" --consistency quorum --progress-interval-ms 0
    --json "$OUT/$name.json")
  if [ "$workload" = load ]; then
    args+=(--pipeline 16 --connections 16)
  else
    args+=(--connections "$CONNECTIONS" --pipeline "$PIPELINE" --rate "$RATE"
      --duration "$seconds")
  fi
  record "$KVS_BIN" "${args[@]}"
  "$KVS_BIN" "${args[@]}" >"$OUT/$name.log" 2>&1 || log "bench $name had errors (see $OUT/$name.log)"
}

main() {
  command -v python3 >/dev/null 2>&1 || die "python3 is needed"
  if [ "$SKIP_BUILD" != 1 ]; then cargo build --release; fi
  [ -x "$KVS_BIN" ] || die "no kvs binary at $KVS_BIN"
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  : >"$OUT/commands.txt"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-elastic-bench.XXXXXX")

  log "3 nodes"
  start_node 1
  start_node 2 "127.0.0.1:$PORT"
  start_node 3 "127.0.0.1:$PORT"
  wait_up 3
  log "loading $RECORDS records at quorum"
  bench load load
  log "baseline: workload a at $RATE ops/s for $BASE_S s"
  bench baseline a "$BASE_S"

  log "moves under load: workload a at $RATE ops/s for $MOVE_S s"
  bench moving a "$MOVE_S" &
  local bench_pid=$!
  sleep 3
  local t0 t1 t2 t3
  t0=$(date +%s.%N)
  start_node 4 "127.0.0.1:$PORT"
  wait_up 4
  t1=$(date +%s.%N)
  snapshot "127.0.0.4:$PORT" join-status.json
  log "node 4 joined in $(python3 -c "print(round($t1-$t0,1))") s; decommissioning it"
  sleep 3
  t2=$(date +%s.%N)
  local decom=(decommission --addr "127.0.0.4:$PORT" --cluster-name elastic-bench
    --cluster-secret "$SECRET")
  record "$KVS_BIN" "${decom[@]}"
  "$KVS_BIN" "${decom[@]}" | tee "$OUT/decommission.txt" >&2 ||
    log "decommission failed (see $OUT/decommission.txt)"
  t3=$(date +%s.%N)
  snapshot "127.0.0.4:$PORT" leave-status.json
  wait_up 3
  wait "$bench_pid" || true
  "$KVS_BIN" status --addr "127.0.0.1:$PORT" >"$OUT/status-after.txt" 2>&1 || true

  python3 - "$OUT" "$RECORDS" "$t0" "$t1" "$t2" "$t3" "$RING_DELAY_MS" <<'PY' | tee "$OUT/summary.md"
import json, re, sys
out, records = sys.argv[1], int(sys.argv[2])
t0, t1, t2, t3 = map(float, sys.argv[3:7])
ring_delay = int(sys.argv[7]) / 1000

def load(name):
    try:
        return json.load(open(f"{out}/{name}"))
    except (OSError, ValueError):
        return {}

def moved(status):
    line = status.get("movement", "")
    m = re.search(r"(\d+) versions \(([\d.]+) MiB\)", line)
    return (int(m.group(1)), float(m.group(2)), line) if m else (0, 0.0, line or "(none)")

print("| move | wall time s | versions streamed | MiB | share of replica copies moved |")
print("|---|---|---|---|---|")
for name, status, secs in (("join (node 4)", load("join-status.json"), t1 - t0),
                           ("decommission (node 4)", load("leave-status.json"), t3 - t2)):
    v, mib, line = moved(status)
    print(f"| {name} | {secs:.1f} | {v:,} | {mib:.1f} | {v / (3 * records):.3f} |")
print()
print(f"(wall time includes ring_delay_ms = {ring_delay:.1f} s once for a join, twice for a "
      "decommission, and process start for the join)")
for name in ("join-status.json", "leave-status.json"):
    print(f"- {name}: {moved(load(name))[2]}")
print()
print("| load (workload a, quorum) | ops/s | p50 µs | p99 µs | p999 µs | errors |")
print("|---|---|---|---|---|---|")
for name in ("baseline", "moving"):
    d = load(f"{name}.json")
    def g(k):
        v = d.get(k)
        return "n/a" if v is None else f"{v:,.0f}"
    print(f"| {name} | {g('ops_per_sec')} | {g('p50_us')} | {g('p99_us')} | {g('p999_us')} | {d.get('errors', 'n/a')} |")
PY
}

main "$@"
