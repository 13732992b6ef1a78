#!/usr/bin/env bash
# Bring up the local lab environment (topologies/local.yaml) and show it
# working: builds the binary and images when needed, runs `stagectl up`, asks
# the load balancer on host-3 a few times (the two demo instances on host-1
# and host-2 answer in turn), then shows `stagectl status`.
# Take it away with: ./target/release/stagectl down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --locked
STAGECTL_BIN=target/release/stagectl ./scripts/build-images.sh
./target/release/stagectl -f topologies/local.yaml up

lb=10.77.0.13
echo
echo "GET http://$lb/demo/ four times:"
for _ in 1 2 3 4; do
    # bash's /dev/tcp: no curl needed.
    exec 3<>"/dev/tcp/$lb/80"
    printf 'GET /demo/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$lb" >&3
    tail -n 1 <&3
    exec 3<&-
done
echo
./target/release/stagectl -f topologies/local.yaml status
