#!/usr/bin/env bash
# Side by side, in one run on this machine: the same `homeostat loadgen` workload
# against (a) rotel, the Rust OpenTelemetry collector (OTLP receiver -> blackhole
# exporter), and (b) `homeostat run`, one after the other. For each: accepted
# spans/s, CPU seconds per million accepted spans, peak RSS; then the ratios
# homeostat/rotel, and homeostat's spans per CPU-second as a fraction of the
# ceiling: bare prost decoding of the same requests (traces, logs, metrics) on one
# core, and of the traces requests alone.
#
# The server runs pinned to CPU 0 and the load generator to CPU 1 (when there are
# two CPUs), so "per core" means what it says.
#
# Usage: benches/compare.sh [loadgen options...]
#   env: DURATION (default 30s), CONCURRENCY (8), PROTOCOL (grpc|http, default grpc),
#        ROTEL_VERSION (default 0.0.1a10), RATE (0 = as fast as possible)
# Extra arguments go to both loadgen runs (e.g. --services 50 --batch-spans 1000).
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/common.sh
DURATION="${DURATION:-30s}"
CONCURRENCY="${CONCURRENCY:-8}"
PROTOCOL="${PROTOCOL:-grpc}"
RATE="${RATE:-0}"
ROTEL_VERSION="${ROTEL_VERSION:-0.0.1a10}"
log() { printf '[compare] %s\n' "$*" >&2; }

log "building homeostat (release)"
build_release

ROTEL="$(ls "$CACHE"/venv/lib/python3*/site-packages/rotel/rotel-agent 2>/dev/null | head -1 || true)"
if [ -z "$ROTEL" ]; then
  log "installing rotel $ROTEL_VERSION from PyPI"
  if [ ! -x "$CACHE/venv/bin/python" ]; then python3 -m venv "$CACHE/venv"; fi
  "$CACHE/venv/bin/pip" install --quiet "rotel==$ROTEL_VERSION"
  ROTEL="$(ls "$CACHE"/venv/lib/python3*/site-packages/rotel/rotel-agent | head -1)"
fi
log "rotel: $("$ROTEL" --version)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
TICK="$(getconf CLK_TCK)"
WORK="$(mktemp -d -t homeostat-compare.XXXXXX)"

# measure NAME PORT_TO_WAIT_FOR ENDPOINT COMMAND... ; prints "NAME spans_per_sec cpu_s accepted peak_kib"
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
  after="$(cpu_ticks "$SERVER_PID")"
  local peak; peak="$(peak_rss_kib "$SERVER_PID")"
  stop_server
  log "$name: $line"
  grep -E "requests in" "$WORK/$name.loadgen.log" | sed "s/^/[compare]   /" >&2 || true
  local sps accepted
  sps="$(sed -E 's/.*spans_per_sec=([0-9.]+).*/\1/' <<<"$line")"
  accepted="$(sed -E 's/.*accepted_spans=([0-9]+).*/\1/' <<<"$line")"
  echo "$name $sps $(awk -v a="$after" -v b="$before" -v t="$TICK" 'BEGIN {printf "%.2f", (a-b)/t}') $accepted $peak"
}

EXTRA=("$@")
GRPC="$(free_port)"; HTTP="$(free_port)"; API="$(free_port)"
if [ "$PROTOCOL" = grpc ]; then ENDPOINT="grpc://127.0.0.1:$GRPC"; WAIT="$GRPC"; else ENDPOINT="http://127.0.0.1:$HTTP"; WAIT="$HTTP"; fi

log "workload: $PROTOCOL, $CONCURRENCY connections, $DURATION, rate $RATE, ${EXTRA[*]:-default fleet}"
ROTEL_ROW="$(measure rotel "$WAIT" "$ENDPOINT" "$ROTEL" start --exporter blackhole \
  --otlp-grpc-endpoint "127.0.0.1:$GRPC" --otlp-http-endpoint "127.0.0.1:$HTTP")"
HOMEOSTAT_ROW="$(HOMEOSTAT__OTLP__GRPC_ADDR="127.0.0.1:$GRPC" HOMEOSTAT__OTLP__HTTP_ADDR="127.0.0.1:$HTTP" \
  HOMEOSTAT__API__ADDR="127.0.0.1:$API" HOMEOSTAT__KAFKA__BROKERS="" RUST_LOG=warn \
  measure homeostat "$WAIT" "$ENDPOINT" "$BIN" run)"
CEILING="$("${LOAD_CPU[@]}" "$BIN" loadgen --ceiling --duration 5s "${EXTRA[@]}" 2>/dev/null | tail -1)"
CEILING_SPS="$(sed -E 's/.*ceiling_spans_per_sec=([0-9.]+).*/\1/' <<<"$CEILING")"
TRACES_ONLY_SPS="$(sed -E 's/.*traces_only_spans_per_sec=([0-9.]+).*/\1/' <<<"$CEILING")"

python3 - "$ROTEL_ROW" "$HOMEOSTAT_ROW" "$CEILING_SPS" "$TRACES_ONLY_SPS" <<'EOF'
import sys
rows = {}
for row in sys.argv[1:3]:
    name, sps, cpu, accepted, peak = row.split()
    sps, cpu, accepted, peak = float(sps), float(cpu), int(accepted), int(peak)
    rows[name] = dict(sps=sps, cpu_per_m=cpu / accepted * 1e6 if accepted else float("inf"),
                      per_core=accepted / cpu if cpu else 0.0, peak_mib=peak / 1024)
ceiling, traces_only = float(sys.argv[3]), float(sys.argv[4])
print(f"{'':<10} {'accepted spans/s':>17} {'CPU s / M spans':>16} {'spans / CPU-s':>14} {'peak RSS MiB':>13}")
for name, r in rows.items():
    print(f"{name:<10} {r['sps']:>17.0f} {r['cpu_per_m']:>16.3f} {r['per_core']:>14.0f} {r['peak_mib']:>13.1f}")
h, r = rows["homeostat"], rows["rotel"]
print(f"{'h/rotel':<10} {h['sps'] / r['sps']:>16.2f}x {h['cpu_per_m'] / r['cpu_per_m']:>15.2f}x "
      f"{h['per_core'] / r['per_core']:>13.2f}x {h['peak_mib'] / r['peak_mib']:>12.2f}x")
print(f"ceiling (bare prost decode of the same requests, one core): {ceiling:.0f} spans/s; "
      f"homeostat spans per CPU-second = {100 * h['per_core'] / ceiling:.0f}% of it, "
      f"rotel {100 * r['per_core'] / ceiling:.0f}%")
print(f"traces requests alone decode at {traces_only:.0f} spans/s; against that, "
      f"homeostat {100 * h['per_core'] / traces_only:.0f}%, rotel {100 * r['per_core'] / traces_only:.0f}%")
EOF
