#!/usr/bin/env bash
# The throughput cost of the incident stage (grouping, service graph, series
# history, root-cause ranking): the same release binary under the same
# `homeostat loadgen` workload with `incident.enabled` true and false, RUNS
# rounds each (default 3), the order alternating. The engine is pinned to CPU 0,
# the load generator to CPU 1. For each run: accepted spans/s, and spans per
# CPU-second of the engine, its CPU read once its pipeline queue has drained.
# Then the medians and the ratios on/off.
#
# Usage: benches/incident_cost.sh   (env: DURATION=30s, RUNS=3)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${DURATION:-30s}"
RUNS="${RUNS:-3}"
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/homeostat"
TICK="$(getconf CLK_TCK)"
OUT="$(mktemp -t homeostat-incident-cost.XXXXXX)"

run() {
  local enabled=$1
  HOMEOSTAT__OTLP__GRPC_ADDR=127.0.0.1:14317 HOMEOSTAT__OTLP__HTTP_ADDR=127.0.0.1:14318 \
  HOMEOSTAT__API__ADDR=127.0.0.1:17070 HOMEOSTAT__KAFKA__BROKERS="" \
  HOMEOSTAT__INCIDENT__ENABLED="$enabled" RUST_LOG=warn taskset -c 0 "$BIN" run >/dev/null 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:17070/readyz >/dev/null 2>&1 && break; sleep 0.1; done
  local before after line
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  line=$(taskset -c 1 "$BIN" loadgen --endpoint grpc://127.0.0.1:14317 --duration "$DURATION" 2>/dev/null | tail -1)
  for _ in $(seq 1 300); do
    [ "$(curl -sf http://127.0.0.1:17070/metrics | awk '/^homeostat_queue_depth / {print $2}')" = 0 ] && break
    sleep 0.1
  done
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local accepted rate
  accepted=$(sed -E 's/.*accepted_spans=([0-9]+).*/\1/' <<<"$line")
  rate=$(sed -E 's/.*spans_per_sec=([0-9.]+).*/\1/' <<<"$line")
  awk -v e="$enabled" -v r="$rate" -v n="$accepted" -v a="$after" -v b="$before" -v t="$TICK" \
    'BEGIN { printf "%s %.0f %.0f\n", e, r, n / ((a - b) / t) }' | tee -a "$OUT"
}

for round in $(seq 1 "$RUNS"); do
  if [ $((round % 2)) = 1 ]; then run true; run false; else run false; run true; fi
done
python3 - "$OUT" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda e, i: statistics.median(float(r[i]) for r in rows if r[0] == e)
for i, what in [(1, "spans/s"), (2, "spans per CPU-s")]:
    on, off = med("true", i), med("false", i)
    print(f"{what}: incidents on {on:.0f}, off {off:.0f}, on/off {on / off:.3f}")
PY
