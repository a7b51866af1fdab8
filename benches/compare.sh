#!/usr/bin/env bash
# Side by side, in one run on this machine: the same `homeostat loadgen` workload
# against (a) rotel, the Rust OpenTelemetry collector (OTLP receiver -> blackhole
# exporter), and (b) `homeostat run`. RUNS rounds (default 3); the order of the two
# servers alternates from round to round. For each: accepted spans/s, CPU seconds
# per million accepted spans, spans per CPU-second, peak RSS; then the medians, the
# spread (min-max), the ratios homeostat/rotel of the medians, and homeostat's
# spans per CPU-second against the ceiling: bare prost decoding of the same
# requests (traces, logs, metrics) on one core, and of the traces requests alone.
#
# CPU is counted for the work done, not only the work accepted: homeostat's CPU
# time is read once its pipeline queue has drained (`homeostat_queue_depth` 0 on
# its /metrics; what is still queued after DRAIN_TIMEOUT is reported). rotel
# exports to a blackhole and has no queue to drain; its CPU is read after the same
# settling pause.
#
# The server runs pinned to CPU 0 and the load generator to CPU 1 (when there are
# two CPUs), so "per core" means what it says.
#
# Usage: benches/compare.sh [loadgen options...]
#   env: DURATION (default 30s), CONCURRENCY (8), PROTOCOL (grpc|http, default grpc),
#        RUNS (3), ROTEL_VERSION (default: the newest on PyPI), RATE (0 = as fast
#        as possible), DRAIN_TIMEOUT (seconds, 30)
# Extra arguments go to every loadgen run (e.g. --services 50 --batch-spans 1000).
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/common.sh
DURATION="${DURATION:-30s}"
CONCURRENCY="${CONCURRENCY:-8}"
PROTOCOL="${PROTOCOL:-grpc}"
RATE="${RATE:-0}"
RUNS="${RUNS:-3}"
DRAIN_TIMEOUT="${DRAIN_TIMEOUT:-30}"
ROTEL_VERSION="${ROTEL_VERSION:-}"
log() { printf '[compare] %s\n' "$*" >&2; }

log "building homeostat (release)"
build_release

if [ ! -x "$CACHE/venv/bin/python" ]; then python3 -m venv "$CACHE/venv"; fi
if [ -n "$ROTEL_VERSION" ]; then
  log "installing rotel $ROTEL_VERSION from PyPI"
  "$CACHE/venv/bin/pip" install --quiet "rotel==$ROTEL_VERSION"
else
  log "installing the newest rotel on PyPI"
  "$CACHE/venv/bin/pip" install --quiet --upgrade --pre rotel
fi
ROTEL="$(ls "$CACHE"/venv/lib/python3*/site-packages/rotel/rotel-agent | head -1)"
log "rotel $("$CACHE/venv/bin/pip" show rotel | awk '/^Version/ {print $2}'): $("$ROTEL" --version)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
TICK="$(getconf CLK_TCK)"
WORK="$(mktemp -d -t homeostat-compare.XXXXXX)"

# The spans homeostat still holds in its pipeline queue (from its /metrics); empty
# for a server without one (rotel).
queued() {
  [ -n "${METRICS_URL:-}" ] || return 0
  curl -sf "$METRICS_URL" | awk '/^homeostat_queue_depth / {print $2}'
}

# Waits until the server's queue is empty (or DRAIN_TIMEOUT); prints what is left.
drain() {
  local left
  for _ in $(seq 1 $((DRAIN_TIMEOUT * 10))); do
    left="$(queued)"
    if [ -z "$left" ] || [ "$left" = 0 ]; then echo 0; return; fi
    sleep 0.1
  done
  echo "$left"
}

# measure NAME PORT_TO_WAIT_FOR ENDPOINT COMMAND... ;
# prints "NAME spans_per_sec cpu_s accepted peak_kib queued_after_drain"
measure() {
  local name="$1" port="$2" endpoint="$3"; shift 3
  "${SERVER_CPU[@]}" "$@" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then log "$name exited:"; cat "$WORK/$name.log" >&2; exit 1; fi
    sleep 0.05
  done
  sleep 0.5
  local before after line
  before="$(cpu_ticks "$SERVER_PID")"
  line="$("${LOAD_CPU[@]}" "$BIN" loadgen --endpoint "$endpoint" --duration "$DURATION" \
    --concurrency "$CONCURRENCY" --rate "$RATE" "${EXTRA[@]}" 2>"$WORK/$name.loadgen.log" | tail -1)"
  sleep 0.5
  local left; left="$(drain)"
  after="$(cpu_ticks "$SERVER_PID")"
  local peak; peak="$(peak_rss_kib "$SERVER_PID")"
  stop_server
  log "$name: $line"
  grep -E "requests in" "$WORK/$name.loadgen.log" | sed "s/^/[compare]   /" >&2 || true
  local sps accepted
  sps="$(sed -E 's/.*spans_per_sec=([0-9.]+).*/\1/' <<<"$line")"
  accepted="$(sed -E 's/.*accepted_spans=([0-9]+).*/\1/' <<<"$line")"
  echo "$name $sps $(awk -v a="$after" -v b="$before" -v t="$TICK" 'BEGIN {printf "%.2f", (a-b)/t}') $accepted $peak $left"
}

EXTRA=("$@")
GRPC="$(free_port)"; HTTP="$(free_port)"; API="$(free_port)"
if [ "$PROTOCOL" = grpc ]; then ENDPOINT="grpc://127.0.0.1:$GRPC"; WAIT="$GRPC"; else ENDPOINT="http://127.0.0.1:$HTTP"; WAIT="$HTTP"; fi

log "workload: $PROTOCOL, $CONCURRENCY connections, $DURATION, rate $RATE, ${EXTRA[*]:-default fleet}"
run_rotel() {
  METRICS_URL="" measure rotel "$WAIT" "$ENDPOINT" "$ROTEL" start --exporter blackhole \
    --otlp-grpc-endpoint "127.0.0.1:$GRPC" --otlp-http-endpoint "127.0.0.1:$HTTP"
}
run_homeostat() {
  METRICS_URL="http://127.0.0.1:$API/metrics" HOMEOSTAT__OTLP__GRPC_ADDR="127.0.0.1:$GRPC" \
    HOMEOSTAT__OTLP__HTTP_ADDR="127.0.0.1:$HTTP" HOMEOSTAT__API__ADDR="127.0.0.1:$API" \
    HOMEOSTAT__KAFKA__BROKERS="" RUST_LOG=warn measure homeostat "$WAIT" "$ENDPOINT" "$BIN" run
}
ROWS=()
for round in $(seq 1 "$RUNS"); do
  if [ $((round % 2)) = 1 ]; then order=(run_rotel run_homeostat); else order=(run_homeostat run_rotel); fi
  log "round $round of $RUNS: ${order[*]}"
  for server in "${order[@]}"; do ROWS+=("$($server)"); done
done
CEILING="$("${LOAD_CPU[@]}" "$BIN" loadgen --ceiling --duration 5s "${EXTRA[@]}" 2>/dev/null | tail -1)"
CEILING_SPS="$(sed -E 's/.*ceiling_spans_per_sec=([0-9.]+).*/\1/' <<<"$CEILING")"
TRACES_ONLY_SPS="$(sed -E 's/.*traces_only_spans_per_sec=([0-9.]+).*/\1/' <<<"$CEILING")"

python3 - "$CEILING_SPS" "$TRACES_ONLY_SPS" "${ROWS[@]}" <<'EOF'
import statistics
import sys
ceiling, traces_only = float(sys.argv[1]), float(sys.argv[2])
runs = {}
for row in sys.argv[3:]:
    name, sps, cpu, accepted, peak, left = row.split()
    sps, cpu, accepted, peak = float(sps), float(cpu), int(accepted), int(peak)
    runs.setdefault(name, []).append(dict(
        sps=sps, cpu_per_m=cpu / accepted * 1e6 if accepted else float("inf"),
        per_core=accepted / cpu if cpu else 0.0, peak_mib=peak / 1024, left=int(float(left or 0))))
keys = ["sps", "cpu_per_m", "per_core", "peak_mib"]
print(f"{'':<10} {'accepted spans/s':>24} {'CPU s / M spans':>24} {'spans / CPU-s':>24} "
      f"{'peak RSS MiB':>20} {'queued':>7}")
med = {}
for name, rs in runs.items():
    med[name] = {k: statistics.median(r[k] for r in rs) for k in keys}
    cells = []
    for k, fmt in zip(keys, ["{:.0f}", "{:.3f}", "{:.0f}", "{:.1f}"]):
        lo, hi = min(r[k] for r in rs), max(r[k] for r in rs)
        cells.append(f"{fmt.format(med[name][k])} ({fmt.format(lo)}-{fmt.format(hi)})")
    left = max(r["left"] for r in rs)
    print(f"{name:<10} {cells[0]:>24} {cells[1]:>24} {cells[2]:>24} {cells[3]:>20} {left:>7}")
print(f"median of {len(runs['homeostat'])} runs each (min-max); 'queued': spans still in "
      "homeostat's queue after the drain timeout (CPU is counted up to the drain)")
h, r = med["homeostat"], med["rotel"]
print(f"{'h/rotel':<10} {h['sps'] / r['sps']:>23.2f}x {h['cpu_per_m'] / r['cpu_per_m']:>23.2f}x "
      f"{h['per_core'] / r['per_core']:>23.2f}x {h['peak_mib'] / r['peak_mib']:>19.2f}x")
print(f"ceiling (bare prost decode of the whole workload: traces, logs, metrics; one core): "
      f"{ceiling:.0f} spans/s; homeostat {100 * h['per_core'] / ceiling:.0f}% of it, "
      f"rotel {100 * r['per_core'] / ceiling:.0f}%. It bounds a receiver that decodes all it is sent.")
print(f"traces-only ceiling (the traces requests alone): {traces_only:.0f} spans/s; homeostat "
      f"{100 * h['per_core'] / traces_only:.0f}%, rotel {100 * r['per_core'] / traces_only:.0f}%. "
      "It bounds the spans path alone, ignoring the logs and metrics decoded beside it.")
EOF
