# Shared by the benchmark scripts (sourced, not run): the release build, CPU
# pinning (server on CPU 0, load generator on CPU 1 when there are two), free
# ports, and stopping the server under test on exit.
CACHE="${HOMEOSTAT_CACHE:-$HOME/.cache/homeostat}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
BIN="$CARGO_TARGET_DIR/release/homeostat"
build_release() { cargo build --release --locked --quiet; }

if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  SERVER_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1)
else
  SERVER_CPU=(); LOAD_CPU=()
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# The server under test; killed on exit if still running.
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -INT "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap stop_server EXIT
