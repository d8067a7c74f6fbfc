#!/usr/bin/env bash
# How a 3-node ferry cluster's write throughput scales from 1 shard to 3: three publishers,
# each on its own topic (the three topics fall in three different shards), each publishing as
# fast as pubacks allow through the node that leads its topic's shard, with one subscriber
# per topic on that node. With 1 shard one node leads all three topics; with 3 each node
# leads one (shard k is handed to node k+1).
#
#   bash benches/shards.sh            # COUNT=30000 (per publisher) SIZE=256
#
# Durability: every node fsyncs (fsync=always); a puback means a majority (2 of 3) has the
# message. All of it on one machine: the nodes and the load tools share its cores and disk.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-30000}
SIZE=${SIZE:-256}
BASE=${BASE:-7950}

# shellcheck source=benches/common.sh
source benches/common.sh

client_port() { echo $((BASE + $1)); }
peer_port() { echo $((BASE + 10 + $1)); }
url() { echo "ws://127.0.0.1:$(client_port "$1")/ws"; }
peers="1@127.0.0.1:$(peer_port 1),2@127.0.0.1:$(peer_port 2),3@127.0.0.1:$(peer_port 3)"

# Topics of shards 0, 1 and 2 among 3 (FNV-1a 64 of the name mod 3, as `ShardId::of_topic`).
mapfile -t topics < <(python3 - <<'EOF'
def fnv(name):
    h = 0xcbf29ce484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001b3) % (1 << 64)
    return h
found = {}
n = 0
while len(found) < 3:
    found.setdefault(fnv(f"bench{n}") % 3, f"bench{n}")
    n += 1
for shard in range(3):
    print(found[shard])
EOF
)

leader_of() { # shard: the leader named in the newest term of any log
  grep -h "shard $1 leader" "$work"/c"$shards"-node*.log 2>/dev/null | sed 's/.*node \([0-9]*\) (term \([0-9]*\)).*/\2 \1/' | sort -n | tail -1 | cut -d' ' -f2
}

for shards in 1 3; do
  run_pids=()
  for n in 1 2 3; do
    target/release/ferry serve --listen "127.0.0.1:$(client_port "$n")" --data-dir "$work/c$shards-node$n" --fsync always --log-level info \
      --set node_id="$n" --set peer_listen="127.0.0.1:$(peer_port "$n")" --set peers="$peers" --set shards="$shards" 2>>"$work/c$shards-node$n.log" &
    pids+=($!); run_pids+=($!)
  done
  # Wait for every shard's leader; with 3 shards, for each to reach its preferred node.
  for _ in $(seq 1 200); do
    ready=1
    for k in $(seq 0 $((shards - 1))); do
      want=$([ "$shards" = 1 ] && leader_of 0 || echo $((k + 1)))
      [ -n "$want" ] && [ "$(leader_of "$k")" = "$want" ] || ready=0
    done
    [ "$ready" = 1 ] && break
    sleep 0.1
  done
  echo "== $shards shard(s): leaders $(for k in $(seq 0 $((shards - 1))); do printf 'shard %s: node %s; ' "$k" "$(leader_of "$k")"; done)" >&2
  bench_pids=()
  for i in 0 1 2; do
    shard=$([ "$shards" = 1 ] && echo 0 || echo "$i")
    node=$(leader_of "$shard")
    "$BENCH" --url "$(url "$node")" --topic "${topics[$i]}" --count "$COUNT" --size "$SIZE" --json >"$work/s$shards-p$i.json" &
    bench_pids+=($!)
  done
  for pid in "${bench_pids[@]}"; do wait "$pid"; done
  # Each node's CPU time (user + system clock ticks), to show where the leaders' work went.
  for n in 1 2 3; do
    awk -v tick="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / tick}' "/proc/${run_pids[$((n - 1))]}/stat" >"$work/s$shards-cpu$n.txt"
  done
  for pid in "${run_pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
done

python3 - "$work" "$COUNT" "$SIZE" <<'EOF'
import json, sys
work, count, size = sys.argv[1:]
print(f"\n### 3 nodes, 3 publishers on 3 topics, {count} msgs x {size} B each, fsync always\n")
print("| shards | acked pub/s (sum) | per publisher | p50 us (worst) | p99 us (worst) | CPU s node 1 / 2 / 3 |")
print("|---|---|---|---|---|---|")
for shards in (1, 3):
    runs = [json.load(open(f"{work}/s{shards}-p{i}.json")) for i in range(3)]
    rates = [r["acked_publishes_per_s"] for r in runs]
    p50 = max(r["latency_us"]["p50"] for r in runs)
    p99 = max(r["latency_us"]["p99"] for r in runs)
    cpu = [open(f"{work}/s{shards}-cpu{n}.txt").read().strip() for n in (1, 2, 3)]
    print(f"| {shards} | {sum(rates):.0f} | {' / '.join(f'{x:.0f}' for x in rates)} | {p50:.0f} | {p99:.0f} | {' / '.join(cpu)} |")
EOF
