#!/usr/bin/env bash
# kvs side by side with Redis: the same workloads, the same harness, the same machine.
#
# For each durability mode and each pipeline depth this starts a fresh Redis and a fresh kvs
# server on 127.0.0.1, then runs every workload against both with `kvs bench`, alternating which
# system goes first, plus a `ping://` run against kvs (the network ceiling of the path):
#
#   mode     Redis                                   kvs
#   memory   --save '' --appendonly no               --sync periodic (fdatasync every 10 ms)
#   durable  --appendonly yes --appendfsync always   --sync always (ack after fdatasync)
#
# `load` inserts RECORDS records; a, b, c and write then run OPERATIONS operations on the
# loaded data (reads with --verify). Every run is bounded by --operations. Results: one JSON
# per run, the servers' logs, kvs's `kvs stats --json` after the runs (kvs-stats.json) and its
# data size (kvs-stats.txt), commands.txt (every command run) and summary.md (the table, also
# printed) in OUT.
#
# Usage:  perf/compare.sh
# Environment (defaults in brackets):
#   RECORDS [1000000]  OPERATIONS [1000000]  CONNECTIONS [50]  PIPELINES ["1 16"]  THREADS [1]
#   WORKLOADS ["load a b c write"]  MODES ["memory durable"]  OUT [perf/out/compare-<date>]
#   KEY_SIZE [16]  VALUE_SIZE [100]  REDIS_PORT [6390]  KVS_PORT [7400] (kvs shards use the
#   ports after it)  KVS_BIN [$CARGO_TARGET_DIR/release/kvs]  SKIP_BUILD [0]
#
# Needs redis-server: installed from Debian packages when missing and running as root.
# Only 127.0.0.1 is used. Ctrl-C stops both servers and removes their data.
set -euo pipefail

cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-1000000}
OPERATIONS=${OPERATIONS:-1000000}
CONNECTIONS=${CONNECTIONS:-50}
PIPELINES=${PIPELINES:-"1 16"}
THREADS=${THREADS:-1}
WORKLOADS=${WORKLOADS:-"load a b c write"}
MODES=${MODES:-"memory durable"}
KEY_SIZE=${KEY_SIZE:-16}
VALUE_SIZE=${VALUE_SIZE:-100}
REDIS_PORT=${REDIS_PORT:-6390}
KVS_PORT=${KVS_PORT:-7400}
KVS_BIN=${KVS_BIN:-${CARGO_TARGET_DIR:-target}/release/kvs}
SKIP_BUILD=${SKIP_BUILD:-0}
OUT=${OUT:-perf/out/compare-$(date +%Y%m%d-%H%M%S)}
# Seconds to wait for a server to accept connections.
START_TIMEOUT_S=${START_TIMEOUT_S:-60}

REDIS_PID=""
KVS_PID=""
WORK=""

log() { printf '== %s\n' "$*" >&2; }
die() { printf 'compare.sh: %s\n' "$*" >&2; exit 1; }

# Appends the command, shell-quoted, to OUT/commands.txt.
record() { printf '%q ' "$@" >>"$OUT/commands.txt"; echo >>"$OUT/commands.txt"; }

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "redis-server is not installed; as root run: apt-get install -y redis-server"
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "redis-server is not installed and apt-get is missing: install Redis 7 by hand"
  log "installing redis-server from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2 ||
    die "apt-get install redis-server failed"
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get"
}

# Sends SIGTERM to $1 and waits up to 30 s for it to exit, then SIGKILLs it.
stop_pid() {
  local pid=$1 name=$2
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name (pid $pid) ignored SIGTERM for 30 s: killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

stop_servers() {
  stop_pid "$KVS_PID" "kvs server"
  KVS_PID=""
  stop_pid "$REDIS_PID" "redis-server"
  REDIS_PID=""
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_servers
  [ -n "$WORK" ] && rm -rf "$WORK"
  exit "$rc"
}

# start_redis MODE LOGDIR: a Redis on REDIS_PORT with a fresh directory; waits for it.
start_redis() {
  local mode=$1 logdir=$2 dir
  dir="$WORK/redis-$mode"
  rm -rf "$dir" && mkdir -p "$dir"
  local args=(--bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" --daemonize no
    --protected-mode yes --logfile "$logdir/redis.log" --save '')
  case $mode in
    memory) args+=(--appendonly no) ;;
    durable) args+=(--appendonly yes --appendfsync always) ;;
    *) die "unknown mode $mode (memory or durable)" ;;
  esac
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is already in use (set REDIS_PORT)"
  record redis-server "${args[@]}"
  redis-server "${args[@]}" >"$logdir/redis.stdout" 2>&1 &
  REDIS_PID=$!
  local waited=0
  until port_open "$REDIS_PORT"; do
    kill -0 "$REDIS_PID" 2>/dev/null ||
      die "redis-server exited at start; see $logdir/redis.log: $(tail -n 5 "$logdir/redis.log" 2>/dev/null)"
    [ "$waited" -lt $((START_TIMEOUT_S * 10)) ] || die "redis-server did not listen within ${START_TIMEOUT_S} s"
    sleep 0.1
    waited=$((waited + 1))
  done
}

# start_kvs MODE LOGDIR: a kvs server on KVS_PORT with a fresh data directory; waits for the
# line starting `kvs server ready:` on its stdout.
start_kvs() {
  local mode=$1 logdir=$2 dir sync
  case $mode in
    memory) sync=periodic ;;
    durable) sync=always ;;
    *) die "unknown mode $mode (memory or durable)" ;;
  esac
  dir="$WORK/kvs-$mode"
  rm -rf "$dir" && mkdir -p "$dir"
  port_open "$KVS_PORT" && die "port $KVS_PORT is already in use (set KVS_PORT)"
  local args=(server --listen "127.0.0.1:$KVS_PORT" --data-dir "$dir/data" --sync "$sync")
  record "$KVS_BIN" "${args[@]}"
  "$KVS_BIN" "${args[@]}" >"$logdir/kvs.stdout" 2>"$logdir/kvs.stderr" &
  KVS_PID=$!
  local waited=0
  until grep -q '^kvs server ready:' "$logdir/kvs.stdout" 2>/dev/null; do
    kill -0 "$KVS_PID" 2>/dev/null ||
      die "kvs server exited at start; see $logdir/kvs.stderr: $(tail -n 5 "$logdir/kvs.stderr")"
    [ "$waited" -lt $((START_TIMEOUT_S * 10)) ] || die "kvs server not ready within ${START_TIMEOUT_S} s"
    sleep 0.1
    waited=$((waited + 1))
  done
  log "$(grep -m1 '^kvs server ready:' "$logdir/kvs.stdout")"
}

# bench SYSTEM TARGET WORKLOAD PIPELINE JSON: one harness run. A failed run is reported and
# recorded (its row shows n/a); the comparison goes on.
bench() {
  local system=$1 target=$2 workload=$3 pipeline=$4 json=$5 operations=$OPERATIONS
  # `load` inserts every record, whatever OPERATIONS says (the other workloads read them).
  [ "$workload" = load ] && operations=$RECORDS
  local args=(bench --target "$target" --workload "$workload" --records "$RECORDS"
    --operations "$operations" --connections "$CONNECTIONS" --pipeline "$pipeline"
    --threads "$THREADS" --key-size "$KEY_SIZE" --value-size "$VALUE_SIZE" --json "$json")
  # Reads check every value they get; ping stores nothing, so it cannot verify.
  case $workload in load | write) ;; *) [ "$system" = ping ] || args+=(--verify) ;; esac
  record "$KVS_BIN" "${args[@]}"
  log "$system $workload pipeline=$pipeline"
  rm -f "$json"
  if ! "$KVS_BIN" "${args[@]}" >"${json%.json}.log" 2>&1; then
    log "FAILED: $system $workload pipeline=$pipeline (see ${json%.json}.log)"
    rm -f "$json"
  fi
  printf '%s\t%s\t%s\t%s\t%s\n' "$MODE_NOW" "$pipeline" "$workload" "$system" "$json" \
    >>"$OUT/results.tsv"
}

# Prints the markdown table built from OUT/results.tsv (mode, pipeline, workload, system,
# json path per line); a missing file or field shows n/a.
summarize() {
  python3 - "$OUT/results.tsv" <<'PY'
import json, sys

rows, order = {}, []
with open(sys.argv[1]) as f:
    for line in f:
        parts = line.rstrip("\n").split("\t")
        if len(parts) != 5:
            continue
        mode, pipeline, workload, system, path = parts
        try:
            with open(path) as j:
                d = json.load(j)
            r = (float(d["ops_per_sec"]), float(d["p99_us"]))
        except (OSError, ValueError, KeyError, TypeError):
            r = None
        key = (mode, pipeline, workload)
        if system != "ping" and key not in rows:
            order.append(key)
        rows.setdefault(key, {})[system] = r

def ping_of(mode, pipeline):
    for (m, p, _w), v in rows.items():
        if m == mode and p == pipeline and v.get("ping"):
            return v["ping"]
    return None

def num(x, digits=0):
    return "n/a" if x is None else f"{x:,.{digits}f}"

def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b

print("| mode | pipeline | workload | kvs ops/s | redis ops/s | kvs/redis ops | kvs p99 µs "
      "| redis p99 µs | kvs/redis p99 | ping ops/s | kvs/ping |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for key in order:
    mode, pipeline, workload = key
    k = rows[key].get("kvs")
    r = rows[key].get("redis")
    p = ping_of(mode, pipeline)
    k_ops, k_p99 = k if k else (None, None)
    r_ops, r_p99 = r if r else (None, None)
    p_ops = p[0] if p else None
    print(f"| {mode} | {pipeline} | {workload} | {num(k_ops)} | {num(r_ops)} "
          f"| {num(ratio(k_ops, r_ops), 2)} | {num(k_p99)} | {num(r_p99)} "
          f"| {num(ratio(k_p99, r_p99), 2)} | {num(p_ops)} | {num(ratio(k_ops, p_ops), 2)} |")
PY
}

main() {
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to read the JSON results"
  ensure_redis
  if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release"
    cargo build --release
  fi
  [ -x "$KVS_BIN" ] || die "$KVS_BIN is missing (build it, or set KVS_BIN)"
  mkdir -p "$OUT"
  : >"$OUT/results.tsv"
  : >"$OUT/commands.txt"
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-compare.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  local mode pipeline workload n=0 logdir
  for mode in $MODES; do
    MODE_NOW=$mode
    for pipeline in $PIPELINES; do
      logdir="$OUT/$mode-p$pipeline"
      mkdir -p "$logdir"
      log "mode=$mode pipeline=$pipeline: fresh servers"
      start_redis "$mode" "$logdir"
      start_kvs "$mode" "$logdir"
      for workload in $WORKLOADS; do
        n=$((n + 1))
        # Alternate which system runs first, so neither always gets the warmer machine.
        if [ $((n % 2)) -eq 1 ]; then
          bench kvs "kvs://127.0.0.1:$KVS_PORT" "$workload" "$pipeline" "$logdir/kvs-$workload.json"
          bench redis "redis://127.0.0.1:$REDIS_PORT" "$workload" "$pipeline" "$logdir/redis-$workload.json"
        else
          bench redis "redis://127.0.0.1:$REDIS_PORT" "$workload" "$pipeline" "$logdir/redis-$workload.json"
          bench kvs "kvs://127.0.0.1:$KVS_PORT" "$workload" "$pipeline" "$logdir/kvs-$workload.json"
        fi
      done
      # The ceiling: kvs's no-op Ping on the same path, after the workloads.
      bench ping "ping://127.0.0.1:$KVS_PORT" "${PING_WORKLOAD:-c}" "$pipeline" "$logdir/ping.json"
      # The engine's view after the runs: levels, write amplification, cache and Bloom counters.
      record "$KVS_BIN" stats --addr "127.0.0.1:$KVS_PORT" --json
      "$KVS_BIN" stats --addr "127.0.0.1:$KVS_PORT" --json >"$logdir/kvs-stats.json" 2>&1 ||
        log "kvs stats failed (see $logdir/kvs-stats.json)"
      du -sb "$WORK/kvs-$mode" 2>/dev/null | awk '{print "kvs data on disk: " $1 " bytes"}' \
        >>"$logdir/kvs-stats.txt" || true
      stop_servers
    done
  done

  {
    echo "# kvs vs Redis, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "RECORDS=$RECORDS OPERATIONS=$OPERATIONS CONNECTIONS=$CONNECTIONS PIPELINES=\"$PIPELINES\""
    echo "THREADS=$THREADS WORKLOADS=\"$WORKLOADS\" MODES=\"$MODES\" key $KEY_SIZE B, value $VALUE_SIZE B"
    echo "$(redis-server --version | head -n 1); $(nproc) CPUs"
    echo
    echo "memory: Redis --save '' --appendonly no vs kvs --sync periodic;"
    echo "durable: Redis --appendonly yes --appendfsync always vs kvs --sync always."
    echo "Ratios are kvs/Redis (throughput above 1 and p99 below 1 favour kvs); kvs/ping is"
    echo "kvs's throughput against its own no-op ping ceiling. Commands: commands.txt."
    echo
    summarize
  } >"$OUT/summary.md"
  cat "$OUT/summary.md"
  log "results in $OUT"
}

# Sourcing the file (for tests) defines the functions without running anything.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
