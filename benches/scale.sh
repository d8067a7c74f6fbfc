#!/usr/bin/env bash
# Idle connections at scale on a 5-node ferry cluster on loopback: PER_NODE idle subscribers
# on each node (each its own consumer group), then one message published, and the time from
# its publish to the last subscriber having it; the server RSS per connection on each node.
#
#   bash benches/scale.sh              # NODES=5 PER_NODE=19900 SHARDS=1
#
# The open-file limit here is 20,000 per process, for the server and the load tool alike: a
# node keeps a few descriptors for itself (listeners, peer links, epoll, the data directory),
# so PER_NODE stays a little below it, and every node gets its own ferry-bench process. The
# message's body is the publish's wall-clock time, which every process measures from.
# Pings are set far apart: the load tool holds connections without reading them.
# RAFT_TICK_MS sets raft_tick_ms (default 50, the server's own). Each node logs a loop turn
# longer than 200 ms: the logs are kept in LOGS.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-5}
PER_NODE=${PER_NODE:-19900}
SHARDS=${SHARDS:-1}
BASE=${BASE:-8100}
FERRY_ONLY=1

# shellcheck source=benches/common.sh
source benches/common.sh

client_port() { echo $((BASE + $1)); }
peer_port() { echo $((BASE + 20 + $1)); }
url() { echo "ws://127.0.0.1:$(client_port "$1")/ws"; }
peers=$(for n in $(seq 1 "$NODES"); do printf '%s@127.0.0.1:%s,' "$n" "$(peer_port "$n")"; done)
peers=${peers%,}
declare -A node_pid
for n in $(seq 1 "$NODES"); do
  target/release/ferry serve --listen "127.0.0.1:$(client_port "$n")" --data-dir "$work/node$n" --fsync always --log-level "${LOG_LEVEL:-info}" \
    --set node_id="$n" --set peer_listen="127.0.0.1:$(peer_port "$n")" --set peers="$peers" --set shards="$SHARDS" \
    --set groups_per_topic_max=$((NODES * PER_NODE + 1000)) --set idle_ping_ms=3600000 --set raft_tick_ms="${RAFT_TICK_MS:-50}" 2>>"$work/node$n.log" &
  pids+=($!); node_pid[$n]=$!
done
for n in $(seq 1 "$NODES"); do wait_port "$(client_port "$n")"; done
# Ready once every node can publish (a leader elected, every link to it up).
for n in $(seq 1 "$NODES"); do
  for attempt in $(seq 1 60); do
    "$BENCH" --url "$(url "$n")" --topic warmup --idle-subscribers 0 >/dev/null 2>&1 && break
    [ "$attempt" = 60 ] && { echo "node $n cannot publish after 30 s" >&2; exit 1; }
    sleep 0.5
  done
done

# The nodes' and load tools' logs are kept in LOGS (the work directory goes at exit).
LOGS=${LOGS:-/tmp/ferry-scale-logs}
keep_logs() { rm -rf "$LOGS" && mkdir -p "$LOGS" && cp "$work"/*.log "$LOGS"/; }
fail() {
  echo "$1" >&2
  keep_logs && echo "logs kept in $LOGS" >&2
  exit 1
}

topic="scale-$(date +%s)"
started=$(date +%s.%N)
for n in $(seq 1 "$NODES"); do
  "$BENCH" --url "$(url "$n")" --pid "${node_pid[$n]}" --topic "$topic" --idle-subscribers "$PER_NODE" --group-prefix "n$n-" \
    --await-publish --timeout-s 600 --dump-latencies "$work/latencies$n.txt" --json >"$work/bench$n.json" 2>"$work/bench$n.log" &
  subscribers+=($!)
done
for n in $(seq 1 "$NODES"); do
  until grep -aqs "ready" "$work/bench$n.log"; do
    if ! kill -0 "${subscribers[$((n - 1))]}" 2>/dev/null; then
      fail "node $n's load tool stopped: $(tail -c 300 "$work/bench$n.log")"
    fi
    sleep 0.5
  done
done
connected=$(date +%s.%N)
echo "$((NODES * PER_NODE)) subscribers connected and subscribed in $(echo "$connected - $started" | bc) s" >&2
rss_kib=()
for n in $(seq 1 "$NODES"); do rss_kib+=("$(awk '/VmRSS/ {print $2}' "/proc/${node_pid[$n]}/status")"); done
if [ -n "${PERF_OUT:-}" ]; then # a profile of every node from just before the publish
  node_pids=$(IFS=,; echo "${node_pid[*]}")
  perf record -F 2000 -g -p "$node_pids" -o "$PERF_OUT" -- sleep 3 2>/dev/null &
  perf_pid=$!
  sleep 0.3
fi
"$BENCH" --url "$(url 1)" --topic "$topic" --idle-subscribers 0 --json >"$work/publisher.json" 2>"$work/publisher.log" ||
  fail "the publish failed: $(cat "$work/publisher.log")"
for n in $(seq 1 "$NODES"); do
  wait "${subscribers[$((n - 1))]}" || fail "node $n's load tool failed: $(tail -c 300 "$work/bench$n.log")"
done
[ -n "${perf_pid:-}" ] && wait "$perf_pid"
keep_logs

echo
echo "### $((NODES * PER_NODE)) idle subscribers on a $NODES-node cluster ($PER_NODE per node, $SHARDS shard(s)), one message"
echo
cat "$work"/latencies*.txt | sort -n | awk -v nodes="$NODES" '
  { v[NR] = $1 }
  END {
    printf "| subscribers | p50 ms | p90 ms | p99 ms | last ms |\n|---|---|---|---|---|\n"
    printf "| %d | %.1f | %.1f | %.1f | %.1f |\n", NR, v[int(NR * 0.5)] / 1000, v[int(NR * 0.9)] / 1000, v[int(NR * 0.99)] / 1000, v[NR] / 1000
  }'
echo
for n in $(seq 1 "$NODES"); do
  python3 - "$n" "$work/bench$n.json" "${rss_kib[$((n - 1))]}" "$PER_NODE" <<'PYEOF'
import json, sys
n, path, rss_kib, per_node = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
r = json.load(open(path))
print(f"node {n}: {r['notes']}; RSS {rss_kib / 1024:.0f} MiB with {per_node} connections; {r['connections_per_s']:.0f} connections/s")
PYEOF
done
