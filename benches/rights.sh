#!/usr/bin/env bash
# What permission checks cost: acked publishes/s of ferry-bench runs against a server with no
# identities and against one whose clients are a user with rights on topic patterns (every
# op checked: publish and read patterns with a deny entry each), alternated ROUNDS times
# (fsync=always). Prints each run and the medians.
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
open_server() { bench_fresh "$OPEN_PORT" ws; }
checked_server() { FERRY_TOKEN=bench-user bench_fresh "$CHECKED_PORT" ws --config "$work/users.toml"; }
alternate "without identities" open_server "with a user's rights checked" checked_server
