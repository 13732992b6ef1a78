#!/usr/bin/env bash
# The project's test command (the README's second command):
# formatting, lints, unit tests, then integration tests against the real
# Docker engine with a real local lab (Docker-in-Docker hosts over SSH).
# Needs a running Docker daemon, debootstrap and ssh (see .ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

# The images that do not hold stagectl need no compiler, mostly the network
# and the disk: built in the background while the code is checked and built.
images_log="$(mktemp)"
./scripts/build-images.sh --without-stagectl >"$images_log" 2>&1 &
images_pid=$!
trap 'kill "$images_pid" 2>/dev/null || true' EXIT

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

step "release build (goes into the agent image)"
cargo build --release --locked

step "images"
if ! wait "$images_pid"; then
    cat "$images_log"
    echo "building the images without stagectl failed" >&2
    exit 1
fi
cat "$images_log"
STAGECTL_BIN=target/release/stagectl ./scripts/build-images.sh

step "unit and integration tests"
# Snapshots must match what is committed; a missing one is a failure.
# Not --all-targets: that would also run the benchmark (scripts/bench.sh does).
INSTA_UPDATE=no cargo test --locked --lib --bins --tests

step "end-to-end smoke test (scripts/smoke.sh)"
./scripts/smoke.sh
