#!/usr/bin/env bash
# Memory and overload behaviour of `homeostat run` under `homeostat loadgen`.
#
# 1. soak: full-rate load for DURATION (default 5m); RSS sampled every 5 s. Prints
#    the highest RSS in the minute after the warm-up (WARMUP, default 60s) and in
#    the last minute, and the growth, also net of the closed windows retained for
#    queries (`window.retain`, 1 h by default: they grow by design until then;
#    `homeostat_retained_bytes`).
# 2. overload: a tiny pipeline queue and 32 connections at full rate: the engine
#    must shed (503 / UNAVAILABLE) and keep its memory bounded; then a light load
#    (RATE_AFTER spans/s) must be fully accepted again (recovery).
#
# Usage: benches/soak.sh   env: DURATION, WARMUP, PROTOCOL (grpc|http), RATE_AFTER
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/common.sh
DURATION="${DURATION:-5m}"
WARMUP="${WARMUP:-60}"
PROTOCOL="${PROTOCOL:-grpc}"
RATE_AFTER="${RATE_AFTER:-20000}"
log() { printf '[soak] %s\n' "$*" >&2; }

build_release
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
retained_bytes() {
  python3 -c '
import sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
print(next((l.split()[1] for l in text.splitlines() if l.startswith("homeostat_retained_bytes")), 0))
' "$API" 2>/dev/null || echo 0
}
WORK="$(mktemp -d -t homeostat-soak.XXXXXX)"

start_engine() {
  GRPC="$(free_port)"; HTTP="$(free_port)"; API="$(free_port)"
  HOMEOSTAT__OTLP__GRPC_ADDR="127.0.0.1:$GRPC" HOMEOSTAT__OTLP__HTTP_ADDR="127.0.0.1:$HTTP" \
    HOMEOSTAT__API__ADDR="127.0.0.1:$API" RUST_LOG=warn "$@" "${SERVER_CPU[@]}" "$BIN" run \
    >"$WORK/engine.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$API") 2>/dev/null; then break; fi
    sleep 0.05
  done
  if [ "$PROTOCOL" = grpc ]; then ENDPOINT="grpc://127.0.0.1:$GRPC"; else ENDPOINT="http://127.0.0.1:$HTTP"; fi
}

# --- 1. soak -----------------------------------------------------------------------
start_engine env
log "soak: $DURATION at full rate over $PROTOCOL; RSS every 5 s"
"${LOAD_CPU[@]}" "$BIN" loadgen --endpoint "$ENDPOINT" --duration "$DURATION" --concurrency 8 \
  >"$WORK/soak.out" 2>"$WORK/soak.err" &
LOAD=$!
: >"$WORK/rss"
T=0
while kill -0 "$LOAD" 2>/dev/null; do
  echo "$T $(rss_kib "$SERVER_PID") $(retained_bytes)" >>"$WORK/rss"
  sleep 5; T=$((T + 5))
done
wait "$LOAD"
log "soak: $(tail -1 "$WORK/soak.out")"
stop_server
python3 - "$WORK/rss" "$WARMUP" <<'EOF'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 3]
warmup = int(sys.argv[2])
after = [(r, h // 1024) for t, r, h in rows if t >= warmup]
# RSS swings with each 10 s window: compare the highs of the first and the last minute.
first = max(r for r, _ in after[:12])
last = max(r for r, _ in after[-12:])
held = after[-1][1] - after[0][1]
print(f"soak RSS MiB: highest in the minute after the {warmup}s warm-up {first/1024:.1f}, "
      f"in the last minute {last/1024:.1f} ({100*(last-first)/first:+.1f}%); retained windows "
      f"grew {held/1024:.1f} MiB meanwhile, so net of them {100*(last-first-held)/first:+.1f}%")
print("soak RSS MiB over time: " + " ".join(f"{t}s={r/1024:.0f}" for t, r, _ in rows[::6]))
EOF

# --- 2. overload -----------------------------------------------------------------
start_engine env HOMEOSTAT__PIPELINE__QUEUE_CAPACITY=2
log "overload: queue_capacity=2, 32 connections at full rate for 20 s"
"${LOAD_CPU[@]}" "$BIN" loadgen --endpoint "$ENDPOINT" --duration 20s --concurrency 32 \
  >"$WORK/over.out" 2>"$WORK/over.err" &
LOAD=$!
PEAK=0
while kill -0 "$LOAD" 2>/dev/null; do
  R="$(rss_kib "$SERVER_PID")"; [ "$R" -gt "$PEAK" ] && PEAK="$R"; sleep 1
done
wait "$LOAD"
echo "overload: $(grep 'requests in' "$WORK/over.err" | sed 's/^loadgen: //')"
echo "overload: $(tail -1 "$WORK/over.out"); peak RSS $((PEAK / 1024)) MiB"
"${LOAD_CPU[@]}" "$BIN" loadgen --endpoint "$ENDPOINT" --duration 10s --concurrency 2 --rate "$RATE_AFTER" \
  >"$WORK/after.out" 2>"$WORK/after.err"
echo "after overload, $RATE_AFTER spans/s: $(grep 'requests in' "$WORK/after.err" | sed 's/^loadgen: //')"
echo "after overload: $(tail -1 "$WORK/after.out")"
stop_server
