#!/usr/bin/env bash
# Bring up the local lab environment (topologies/local.yaml) and show it
# working: builds the binary and images when needed, runs `stagectl up`,
# then `stagectl status`. Take it away with: target/release/stagectl down
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --locked
STAGECTL_BIN=target/release/stagectl ./scripts/build-images.sh
./target/release/stagectl -f topologies/local.yaml up
./target/release/stagectl -f topologies/local.yaml status
