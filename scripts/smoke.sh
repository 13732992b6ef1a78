#!/usr/bin/env bash
# End-to-end smoke test, on its own: from nothing (images built if needed),
# bring up the local three-host lab of topologies/local.yaml with its two demo
# instances, check that the load balancer answers from both in turn and that
# `status -o json` is healthy, take it down, and check that nothing of the
# environment is left on the local engine (hosts, bridge, volumes) nor in the
# state directory. Exits non-zero on the first failed check.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

topo=topologies/local.yaml
bin=target/release/stagectl
[[ -x $bin ]] || cargo build --release --locked
STAGECTL_BIN=$bin ./scripts/build-images.sh >/dev/null

export STAGECTL_STATE_DIR
STAGECTL_STATE_DIR=$(mktemp -d)
fail() { echo "smoke: FAILED: $*" >&2; exit 1; }
cleanup() { $bin -f $topo down -v >/dev/null 2>&1 || true; rm -rf "$STAGECTL_STATE_DIR"; }
trap cleanup EXIT

env=$(awk '/^name:/ { print $2; exit }' $topo)
lb=10.77.0.13

$bin -f $topo up

# Round-robin: both instances answer within 20 requests, neither alone.
declare -A seen=()
for _ in $(seq 1 20); do
    exec 3<>"/dev/tcp/$lb/80"
    printf 'GET /demo/ HTTP/1.0\r\nHost: smoke\r\n\r\n' >&3
    reply=$(cat <&3)
    exec 3<&-
    [[ $reply == "HTTP/1.1 200"* ]] || fail "the load balancer answered: ${reply%%$'\r'*}"
    id=$(grep -o 'instance=[0-9a-f]*' <<<"$reply")
    seen[$id]=$(( ${seen[$id]:-0} + 1 ))
done
echo "smoke: answers per instance: $(for k in "${!seen[@]}"; do printf '%s:%s ' "$k" "${seen[$k]}"; done)"
(( ${#seen[@]} == 2 )) || fail "expected 2 instances to answer, got ${#seen[@]}"
for n in "${seen[@]}"; do (( n >= 5 )) || fail "unbalanced: ${seen[*]}"; done

json=$($bin -f $topo status -o json) || fail "status exited non-zero: $json"
grep -q '"healthy": true' <<<"$json" || fail "status is not healthy"

$bin -f $topo down
for kind in container network volume; do
    case $kind in
        container) left=$(docker ps -aq --filter "label=io.stagectl.lab=$env") ;;
        network) left=$(docker network ls -q --filter "label=io.stagectl.lab=$env") ;;
        volume) left=$(docker volume ls -q --filter "label=io.stagectl.env=$env") ;;
    esac
    [[ -z $left ]] || fail "a $kind of $env is left: $left"
done
[[ -z $(find "$STAGECTL_STATE_DIR" -type f) ]] || fail "keys are left: $(find "$STAGECTL_STATE_DIR" -type f)"
echo "smoke: passed"
