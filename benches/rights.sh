#!/usr/bin/env bash
# What permission checks cost: acked publishes/s of ferry-bench runs against a server with no
# identities and against one whose clients are a user with rights on topic patterns (every
# op checked: publish and read patterns with a deny entry each), alternated ROUNDS times
# (fsync=always), so drift hits both alike. Prints each run and the medians.
#
#   bash benches/rights.sh            # ROUNDS=5 COUNT=300000 SIZE=256
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
COUNT=${COUNT:-300000}
SIZE=${SIZE:-256}
OPEN_PORT=${OPEN_PORT:-7970}
CHECKED_PORT=${CHECKED_PORT:-7971}

FERRY_ONLY=1
# shellcheck source=benches/common.sh
source benches/common.sh

cat > "$work/users.toml" <<'TOML'
[[users]]
token = "bench-user"
publish = ["orders.*", "!bench-forbidden", ">"]
subscribe = ["orders.> billing", "!bench-secret", ">"]
TOML
# Each run gets a fresh server and data directory: a log grown by earlier runs would tilt
# the comparison.
run() {
  local port=$1 token=$2 extra=()
  [ -n "$token" ] && extra=(--config "$work/users.toml")
  rm -rf "$work/data"
  target/release/ferry serve --data-dir "$work/data" --listen "127.0.0.1:$port" --log-level warn "${extra[@]}" 2>"$work/server.log" &
  local server=$!
  wait_port "$port"
  FERRY_TOKEN=$token "$BENCH" --url "ws://127.0.0.1:$port/ws" --count "$COUNT" --size "$SIZE" --json 2>/dev/null |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["acked_publishes_per_s"]))'
  kill "$server"
  wait "$server" 2>/dev/null || true
}

open=()
checked=()
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    open+=("$(run "$OPEN_PORT" "")")
    checked+=("$(run "$CHECKED_PORT" bench-user)")
  else
    checked+=("$(run "$CHECKED_PORT" bench-user)")
    open+=("$(run "$OPEN_PORT" "")")
  fi
  echo "round $round: no identities ${open[-1]} acked/s, a user with rights ${checked[-1]} acked/s"
done
python3 - "${open[*]}" "${checked[*]}" <<'PYEOF'
import statistics, sys
o = statistics.median(int(x) for x in sys.argv[1].split())
c = statistics.median(int(x) for x in sys.argv[2].split())
print(f"median without identities {o:.0f} acked/s, with a user's rights checked {c:.0f} acked/s: {100 * (c - o) / o:+.1f} %")
PYEOF
