#!/usr/bin/env bash
# What TLS costs: acked publishes/s of ferry-bench runs over ws:// and over wss:// (the same
# server settings plus tls_cert/tls_key: an ECDSA P-256 certificate from a CA made here with
# openssl; TLS 1.3), alternated ROUNDS times (fsync=always). ferry-bench does its side of TLS
# on the same machine, so the figure is the cost to the whole system, client included.
#
#   bash benches/tls.sh            # ROUNDS=5 COUNT=300000 SIZE=256
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
COUNT=${COUNT:-300000}
SIZE=${SIZE:-256}
PLAIN_PORT=${PLAIN_PORT:-7972}
TLS_PORT=${TLS_PORT:-7973}

FERRY_ONLY=1
# shellcheck source=benches/common.sh
source benches/common.sh

(
  cd "$work"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca-key.pem -out ca.pem -days 2 -subj /CN=ferry-bench-ca
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out request.pem -subj /CN=localhost
  printf "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" >ext.cnf
  openssl x509 -req -in request.pem -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out cert.pem -days 2 -extfile ext.cnf
) 2>/dev/null
plain_server() { bench_fresh "$PLAIN_PORT" ws; }
tls_server() { FERRY_CA="$work/ca.pem" bench_fresh "$TLS_PORT" wss --set "tls_cert=$work/cert.pem" --set "tls_key=$work/key.pem"; }
alternate "ws://" plain_server "wss://" tls_server
