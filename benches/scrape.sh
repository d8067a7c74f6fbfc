#!/usr/bin/env bash
# What observing ferry costs: acked publishes/s of one ferry-bench run with nobody looking,
# and of one with PATHS fetched every second (by default /metrics, as Prometheus scrapes;
# PATHS=console adds the reads the web console makes each second: /api/overview,
# /api/topics, /api/groups, /api/connections), alternated ROUNDS times on one server
# (fsync=always), so drift hits both alike. Prints each run and the medians.
#
#   bash benches/scrape.sh                  # ROUNDS=7 COUNT=500000 SIZE=256 PATHS=/metrics
#   PATHS=console bash benches/scrape.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-7}
PATHS=${PATHS:-/metrics}
[ "$PATHS" = console ] && PATHS="/metrics /api/overview /api/topics /api/groups /api/connections"
COUNT=${COUNT:-500000}
SIZE=${SIZE:-256}
PORT=${PORT:-7960}

FERRY_ONLY=1
# shellcheck source=benches/common.sh
source benches/common.sh

target/release/ferry serve --data-dir "$work/data" --listen "127.0.0.1:$PORT" --log-level warn 2>"$work/server.log" &
pids+=($!)
wait_port "$PORT"

# One long-lived scraper process, like Prometheus (a curl per request would spend more CPU
# starting processes than the server spends answering).
observe() {
  # shellcheck disable=SC2086
  exec python3 - "$PORT" $PATHS <<'SCRAPER'
import socket, sys, time
port, paths = int(sys.argv[1]), sys.argv[2:]
while True:
    started = time.monotonic()
    for path in paths:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            while s.recv(65536):
                pass
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
SCRAPER
}

run() {
  "$BENCH" --url "ws://127.0.0.1:$PORT/ws" --count "$COUNT" --size "$SIZE" --json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["acked_publishes_per_s"]))'
}

quiet=()
watched=()
observed_run() {
  observe &
  local observer=$!
  watched+=("$(run)")
  kill "$observer"
  wait "$observer" 2>/dev/null || true
}
# The order alternates: the second run of a pair meets a longer log than the first.
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    quiet+=("$(run)")
    observed_run
  else
    observed_run
    quiet+=("$(run)")
  fi
  echo "round $round: unobserved ${quiet[-1]} acked/s, observed every 1 s ${watched[-1]} acked/s"
done
python3 - "${quiet[*]}" "${watched[*]}" <<'PYEOF'
import statistics, sys
quiet = [int(x) for x in sys.argv[1].split()]
watched = [int(x) for x in sys.argv[2].split()]
q, w = statistics.median(quiet), statistics.median(watched)
print(f"median unobserved {q:.0f} acked/s, observed {w:.0f} acked/s: {100 * (w - q) / q:+.1f} %")
PYEOF
