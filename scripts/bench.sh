#!/usr/bin/env bash
# Benchmarks on the local lab (prints figures; asserts nothing):
#   cold up   from nothing (no lab, no containers) to a leader-elected cluster,
#             lab hosts created and images streamed in included
#   no-op up  a second `up` on a converged environment
#   status    one `status` on a converged environment
#   down      everything removed, lab included
# Targets (issue 2): cold up < 30 s, no-op up < 2 s.
# Usage: scripts/bench.sh [TRIALS]   (default 3; each trial is a full cycle)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
trials=${1:-3}

cargo build --release --locked >/dev/null 2>&1
STAGECTL_BIN=target/release/stagectl ./scripts/build-images.sh >/dev/null 2>&1

work=$(mktemp -d)
export STAGECTL_STATE_DIR=$work/state
topo=$work/bench.yaml
cat >"$topo" <<YAML
name: bench
lab: { subnet: 10.77.60.0/24 }
hosts:
  host-1: { driver: local, address: 10.77.60.11, roles: [app] }
  host-2: { driver: local, address: 10.77.60.12, roles: [app] }
  host-3: { driver: local, address: 10.77.60.13, roles: [lb] }
YAML
bin=target/release/stagectl
trap '$bin -f "$topo" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
timed() { local t0; t0=$(now); "$@" >/dev/null 2>&1; elapsed "$t0" "$(now)"; }

declare -a cold noop status down
for i in $(seq 1 "$trials"); do
    cold+=("$(timed $bin -f "$topo" up)")
    for _ in 1 2 3; do noop+=("$(timed $bin -f "$topo" up)"); done
    status+=("$(timed $bin -f "$topo" status)")
    down+=("$(timed $bin -f "$topo" down)")
done

stats() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { printf "%6.2f %6.2f %6.2f %4d", a[1], a[int((NR + 1) / 2)], a[NR], NR }'; }
printf '\nstagectl benchmark: 3-host local lab, %s, %s cores\n' "$(uname -m)" "$(nproc)"
printf '%-10s %6s %6s %6s %4s  %s\n' what min median max n target
printf '%-10s %s  %s\n' "cold up" "$(stats "${cold[@]}")" "< 30 s"
printf '%-10s %s  %s\n' "no-op up" "$(stats "${noop[@]}")" "< 2 s"
printf '%-10s %s\n' "status" "$(stats "${status[@]}")"
printf '%-10s %s\n' "down" "$(stats "${down[@]}")"
