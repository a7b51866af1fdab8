#!/usr/bin/env bash
# Replays the nezha-ob corpus (../shared/nezha-ob, team data: not needed by the
# build or the tests) into a fresh release engine and scores its incidents with
# the corpus's scorer. Prints the scorer's report; keeps everything in
# target/nezha-ob/. Usage: benches/nezha.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS="${1:-../shared/nezha-ob}"
OUT=target/nezha-ob
[ -d "$CORPUS/data" ] || { echo "no corpus at $CORPUS" >&2; exit 1; }
cargo build --release --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/homeostat"
VENV="${HOMEOSTAT_CACHE:-$HOME/.cache/homeostat}/nezha-venv"
if ! "$VENV/bin/python" -c 'import opentelemetry.proto' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet opentelemetry-proto==1.45.2
fi
rm -rf "$OUT"; mkdir -p "$OUT/store"
HOMEOSTAT__OTLP__GRPC_ADDR=127.0.0.1:14317 HOMEOSTAT__OTLP__HTTP_ADDR=127.0.0.1:14318 \
HOMEOSTAT__API__ADDR=127.0.0.1:17070 HOMEOSTAT__API__MAX_RESULT_ROWS=1000000 HOMEOSTAT__WINDOW__RETAIN=48h \
HOMEOSTAT__STORE__PATH="$OUT/store" HOMEOSTAT__WINDOW__IDLE_TIMEOUT=5s \
  "$BIN" run >"$OUT/engine.log" 2>&1 &
ENGINE=$!
trap 'kill $ENGINE 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:17070/readyz >/dev/null 2>&1 && break
  sleep 0.1
done
"$VENV/bin/python" "$CORPUS/replay.py" --endpoint http://127.0.0.1:14318 \
  --days 2022-08-22,2022-08-23 --slice-seconds 10 --truth "$OUT/truth.json" >"$OUT/replay.log"
sleep 10   # the idle timeout closes the last windows
"$BIN" incidents --api 127.0.0.1:17070 --format json >"$OUT/incidents.json"
curl -sf -d 'SELECT * FROM anomalies ORDER BY onset' \
  'http://127.0.0.1:17070/sql?format=json' >"$OUT/anomalies.json" || true
python3 "$CORPUS/score.py" --truth "$OUT/truth.json" --incidents "$OUT/incidents.json" \
  --json "$OUT/score.json" | tee "$OUT/score.txt"
