#!/usr/bin/env bash
# Build every image stagectl needs on the local Docker engine, from Debian packages only.
#
# There is no container registry here: nothing can be pulled, so the base image is
# made with debootstrap and `docker import`, and every other image is built FROM it.
#
#   stagectl/base:bookworm   debootstrap minbase, slimmed
#   stagectl/runtime:bookworm glibc's loader and libraries + busybox, from the base
#                            (about 4 MB: what the agents and Consul run on)
#   stagectl/labhost:latest  Docker engine + sshd: one "lab host" (docker-in-docker)
#   stagectl/consul:1.8.7    Debian bullseye's consul, binary only, on the runtime
#   stagectl/nginx:1.22      Debian bookworm's nginx, includes conf.d/*.conf (http)
#                            and conf.d/*.stream (TCP listeners)
#   stagectl/redis:7         Debian bookworm's Redis: the example stack's database
#   stagectl/agent:latest    runtime + the stagectl binary (ENTRYPOINT stagectl)
#   stagectl/demo:latest     agent + CMD demo-http --port 8080
#
# Idempotent: each image carries the label io.stagectl.inputs=<sha256 of its inputs>
# (recipe files, mirror, parent image ID, binary). An image whose label already
# matches is left alone, so a second run with unchanged inputs builds nothing.
#
# Environment:
#   STAGECTL_BIN           stagectl binary for the agent image
#                          (default: target/release/stagectl; built with
#                          `cargo build --release` when that default is missing)
#   STAGECTL_DEBIAN_MIRROR Debian mirror URL (default: read from the apt sources)
#   STAGECTL_FORCE=1       rebuild every image even when its inputs are unchanged
#                          (e.g. to pick up new Debian security updates: the
#                          hashes see the recipes, not the mirror's contents)
#
# Usage: build-images.sh [--without-stagectl]
#   --without-stagectl     only the images that do not hold the stagectl binary
#                          (all but agent and demo): they can be built while
#                          the binary compiles; a second run adds the other two
#
# Needs: root (debootstrap), a running Docker daemon. Starts nothing else.
set -euo pipefail

WITH_STAGECTL=1
case "${1:-}" in
"") ;;
--without-stagectl) WITH_STAGECTL=0 ;;
*)
    echo "usage: $0 [--without-stagectl]" >&2
    exit 2
    ;;
esac

# Bump to force every image to be rebuilt after a change the hashes cannot see.
readonly RECIPE_VERSION=1

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
IMAGES_DIR="$SCRIPT_DIR/images"
readonly SCRIPT_DIR REPO_ROOT IMAGES_DIR

readonly BASE_IMAGE=stagectl/base:bookworm
readonly SUITE=bookworm

# The Docker client here is 28.x without the buildx plugin, talking to a 20.10
# engine. `docker build` then falls back to the classic builder anyway (with a
# deprecation notice); asking for it explicitly keeps the behaviour the same on a
# machine that does have buildx, where BuildKit would not see our local images
# the same way and would print a different log.
export DOCKER_BUILDKIT=0

START_TIME=$SECONDS
BUILT=()     # images built by this run
REPLACED=()  # IDs of the images they replaced, deleted at the end

log() { printf '[build-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A scratch directory for build logs, the debootstrap root and build contexts.
WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/stagectl-images.XXXXXX")"
cleanup() {
    # debootstrap mounts /proc and /sys inside the root it builds; if it died half
    # way they may still be mounted: unmount before deleting anything.
    awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
        while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

# apt_source_uri SUITE: the URI of the first enabled `deb` source serving SUITE in
# the machine's apt configuration (deb822 *.sources and one-line *.list files).
# Reading it keeps mirror host names out of this repository.
apt_source_uri() {
    local suite=$1 f uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        if [[ $f == *.sources ]]; then
            # deb822: paragraphs of "Field: value" lines; comment lines are skipped.
            uri="$(awk -v s="$suite" '
                BEGIN { RS = ""; FS = "\n" }
                {
                    uris = ""; suite_ok = 0; deb = 0; enabled = 1
                    for (i = 1; i <= NF; i++) {
                        line = $i
                        if (line ~ /^[ \t]*#/) continue
                        if (line ~ /^Types:/ && line ~ /[ \t]deb([ \t]|$)/) deb = 1
                        if (line ~ /^Enabled:[ \t]*[Nn]o/) enabled = 0
                        if (line ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", line); split(line, u, /[ \t]+/); uris = u[1] }
                        if (line ~ /^Suites:/) {
                            sub(/^Suites:[ \t]*/, "", line)
                            n = split(line, s2, /[ \t]+/)
                            for (j = 1; j <= n; j++) if (s2[j] == s) suite_ok = 1
                        }
                    }
                    if (deb && enabled && suite_ok && uris != "") { print uris; exit }
                }' "$f")"
        else
            # one-line: deb [options] URI SUITE COMPONENT...
            uri="$(awk -v s="$suite" '
                $1 == "deb" {
                    i = 2
                    if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                    if ($(i + 1) == s) { print $i; exit }
                }' "$f")"
        fi
        if [[ -n $uri ]]; then
            printf '%s\n' "${uri%/}"
            return 0
        fi
    done
    return 1
}

# image_label IMAGE LABEL: the label's value, empty if the image or label is absent.
image_label() {
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
}

image_id() {
    docker image inspect --format '{{ .Id }}' "$1" 2>/dev/null || true
}

# hash_dir DIR: a digest of every file under DIR: relative path, mode and content.
hash_dir() {
    (
        cd "$1"
        find . -type f -print0 | LC_ALL=C sort -z | while IFS= read -r -d '' f; do
            printf '%s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum <"$f" | cut -d' ' -f1)"
        done
    ) | sha256sum | cut -d' ' -f1
}

# inputs_hash LINES...: one digest of everything that defines an image.
inputs_hash() {
    printf '%s\n' "recipe=$RECIPE_VERSION" "$@" | sha256sum | cut -d' ' -f1
}

# up_to_date IMAGE HASH: true (and logs it) when IMAGE exists with that inputs hash.
up_to_date() {
    if [[ ${STAGECTL_FORCE:-0} != 1 && "$(image_label "$1" io.stagectl.inputs)" == "$2" ]]; then
        log "$1: up to date (inputs ${2:0:12})"
        return 0
    fi
    return 1
}

# run_logged NAME CMD...: run CMD with its output in a log file; show the end of
# that log when it fails (a full apt or debootstrap log would drown the CI output).
run_logged() {
    local name=$1; shift
    local logfile="$WORK/$name.log"
    if ! "$@" >"$logfile" 2>&1; then
        log "$name failed; last lines of its log:"
        tail -n 60 "$logfile" | sed 's/^/    /' >&2
        return 1
    fi
}

# note_replaced OLD_ID IMAGE: remember the image IMAGE pointed at before a
# rebuild, so that rebuilds do not pile up untagged images (see the end).
note_replaced() {
    if [[ -n $1 && $1 != "$(image_id "$2")" ]]; then
        REPLACED+=("$1")
    fi
}

# build_dockerfile_image NAME IMAGE HASH CONTEXT [docker build args...]
build_dockerfile_image() {
    local name=$1 image=$2 hash=$3 context=$4; shift 4
    up_to_date "$image" "$hash" && return 0
    local t0=$SECONDS old
    old="$(image_id "$image")"
    log "$image: building (inputs ${hash:0:12})"
    # --pull is never given: FROM names our own local images; there is no registry.
    # --force-rm: a failed step leaves no stopped container behind.
    run_logged "$name" docker build --force-rm \
        --label "io.stagectl.image=$name" \
        --label "io.stagectl.inputs=$hash" \
        --tag "$image" "$@" "$context" ||
        die "$image: docker build failed"
    note_replaced "$old" "$image"
    log "$image: built in $((SECONDS - t0)) s"
    BUILT+=("$image")
}

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------

command -v docker >/dev/null || die "docker client not found"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (docker info failed); start dockerd first"

if [[ -n ${STAGECTL_DEBIAN_MIRROR:-} ]]; then
    MIRROR="${STAGECTL_DEBIAN_MIRROR%/}"
else
    MIRROR="$(apt_source_uri "$SUITE")" ||
        die "no apt source for suite $SUITE in /etc/apt/sources.list{,.d/*}; set STAGECTL_DEBIAN_MIRROR"
fi
# Updates and security fixes for packages installed in the images, when the machine
# has those sources (security is usually a different URI than the main mirror).
UPDATES_URI="$(apt_source_uri "$SUITE-updates" || true)"
SECURITY_URI="$(apt_source_uri "$SUITE-security" || true)"
log "Debian mirror: $MIRROR"

# The stagectl binary for the agent image, resolved now so that a missing one
# fails the run before the long builds rather than after them.
if ((!WITH_STAGECTL)); then
    log "without stagectl: agent and demo are left for a later run"
elif [[ -n ${STAGECTL_BIN:-} ]]; then
    [[ -f $STAGECTL_BIN ]] || die "STAGECTL_BIN=$STAGECTL_BIN: no such file"
    BIN="$STAGECTL_BIN"
else
    BIN="$REPO_ROOT/target/release/stagectl"
    if [[ ! -f $BIN ]]; then
        command -v cargo >/dev/null || die "$BIN is missing and cargo is not installed"
        log "$BIN missing: cargo build --release"
        t0=$SECONDS
        run_logged cargo-build cargo build --release --manifest-path "$REPO_ROOT/Cargo.toml" ||
            die "cargo build --release failed"
        log "cargo build --release: $((SECONDS - t0)) s"
        [[ -f $BIN ]] || die "cargo build --release did not produce $BIN"
    fi
fi
if ((WITH_STAGECTL)); then
    BIN_HASH="$(sha256sum <"$BIN" | cut -d' ' -f1)"
    log "stagectl binary: $BIN (sha256 ${BIN_HASH:0:12})"
fi

# ---------------------------------------------------------------------------
# 1. stagectl/base:bookworm: debootstrap + docker import
# ---------------------------------------------------------------------------

# The apt sources written into the base image (and so into every image).
base_sources() {
    echo "deb $MIRROR $SUITE main"
    [[ -z $UPDATES_URI ]] || echo "deb $UPDATES_URI $SUITE-updates main"
    [[ -z $SECURITY_URI ]] || echo "deb $SECURITY_URI $SUITE-security main"
}

ensure_debootstrap() {
    if ! command -v debootstrap >/dev/null || [[ ! -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        log "installing debootstrap with apt-get"
        run_logged apt-get-update apt-get update || die "apt-get update failed"
        run_logged apt-get-install env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends debootstrap debian-archive-keyring ||
            die "apt-get install debootstrap failed"
    fi
}

# slim_rootfs ROOT: delete what a container never needs. C.UTF-8 lives in
# /usr/lib/locale (libc-bin) and stays; /usr/share/locale holds translations only.
slim_rootfs() {
    local r=$1
    rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/archives/partial/* \
        "$r"/var/cache/apt/*.bin "$r"/var/lib/apt/lists/* \
        "$r"/usr/share/doc/* "$r"/usr/share/man/* "$r"/usr/share/info/* \
        "$r"/usr/share/lintian "$r"/usr/share/linda
    find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    find "$r/var/log" -type f -delete
    # debootstrap copied the build machine's resolv.conf and hostname; Docker
    # provides both at run time, and the machine's values do not belong in an image.
    : >"$r/etc/resolv.conf"
    rm -f "$r/etc/hostname"
    # Some maintainer scripts expect the man directories to exist.
    mkdir -p "$r"/usr/share/man/man{1..8}
}

build_base() {
    local hash=$1 rootfs="$WORK/rootfs" t0=$SECONDS old
    [[ $(id -u) == 0 ]] || die "building $BASE_IMAGE needs root (debootstrap)"
    ensure_debootstrap
    old="$(image_id "$BASE_IMAGE")"
    log "$BASE_IMAGE: debootstrap --variant=minbase $SUITE (about 30 s)"
    run_logged debootstrap debootstrap --variant=minbase \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg \
        "$SUITE" "$rootfs" "$MIRROR" ||
        die "debootstrap failed"
    base_sources >"$rootfs/etc/apt/sources.list"
    # Slimming and no-service-start settings that also apply to later apt installs.
    cp -a "$IMAGES_DIR/base/rootfs/." "$rootfs/"
    # debootstrap installs from $SUITE alone: bring in its updates and security
    # fixes now, in the same layer (a later `apt-get upgrade` layer would store
    # every upgraded file twice).
    log "$BASE_IMAGE: apt-get dist-upgrade in the new root"
    run_logged base-upgrade chroot "$rootfs" /bin/sh -c \
        'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get -y dist-upgrade' ||
        die "apt-get dist-upgrade in the new root failed"
    slim_rootfs "$rootfs"
    log "$BASE_IMAGE: importing ($(du -sh --one-file-system "$rootfs" | cut -f1))"
    # --numeric-owner: the image must carry the root's own uid/gid numbers, not the
    # build machine's names for them.
    tar -C "$rootfs" --numeric-owner -c . |
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            --change 'LABEL io.stagectl.image=base' \
            --change "LABEL io.stagectl.inputs=$hash" \
            --message "stagectl base: debootstrap --variant=minbase $SUITE" \
            - "$BASE_IMAGE" >/dev/null ||
        die "docker import failed"
    note_replaced "$old" "$BASE_IMAGE"
    log "$BASE_IMAGE: built in $((SECONDS - t0)) s"
    BUILT+=("$BASE_IMAGE")
}

# The base recipe is this script's own code: hash the function bodies, so an edit
# to them (or to the overlay files, or the mirror) rebuilds the base.
BASE_HASH="$(inputs_hash "suite=$SUITE" "$(base_sources)" \
    "$(declare -f build_base slim_rootfs)" "overlay=$(hash_dir "$IMAGES_DIR/base/rootfs")")"
up_to_date "$BASE_IMAGE" "$BASE_HASH" || build_base "$BASE_HASH"
BASE_ID="$(image_id "$BASE_IMAGE")"

# ---------------------------------------------------------------------------
# 2-4. Images built FROM the base with a Dockerfile under scripts/images/<name>/
# ---------------------------------------------------------------------------

# dir_image NAME IMAGE [docker build args...]: an image whose inputs are its
# directory, the base image and the mirror.
dir_image() {
    local name=$1 image=$2; shift 2
    local hash
    hash="$(inputs_hash "base=$BASE_ID" "runtime=${RUNTIME_ID:-}" "mirror=$MIRROR" "dir=$(hash_dir "$IMAGES_DIR/$name")" "args=$*")"
    build_dockerfile_image "$name" "$image" "$hash" "$IMAGES_DIR/$name" "$@"
}

dir_image labhost stagectl/labhost:latest
dir_image nginx stagectl/nginx:1.22
dir_image redis stagectl/redis:7
# The agents' runtime: glibc and busybox taken out of the base (see its Dockerfile).
dir_image runtime stagectl/runtime:bookworm
RUNTIME_ID="$(image_id stagectl/runtime:bookworm)"
# Consul 1.8.7 is only in bullseye; its Dockerfile adds that suite on our mirror.
dir_image consul stagectl/consul:1.8.7 --build-arg "DEBIAN_MIRROR=$MIRROR"

# ---------------------------------------------------------------------------
# 5-6. stagectl/agent and stagectl/demo: the stagectl binary on the base
# ---------------------------------------------------------------------------

if ((WITH_STAGECTL)); then
    # The build context is the Dockerfile plus a copy of the binary, not the repository.
    AGENT_CTX="$WORK/agent-context"
    mkdir -p "$AGENT_CTX"
    cp "$IMAGES_DIR/agent/Dockerfile" "$AGENT_CTX/Dockerfile"
    install -m 0755 "$BIN" "$AGENT_CTX/stagectl"
    AGENT_HASH="$(inputs_hash "runtime=$RUNTIME_ID" "dir=$(hash_dir "$IMAGES_DIR/agent")" "bin=$BIN_HASH")"
    build_dockerfile_image agent stagectl/agent:latest "$AGENT_HASH" "$AGENT_CTX"

    DEMO_HASH="$(inputs_hash "agent=$(image_id stagectl/agent:latest)" "dir=$(hash_dir "$IMAGES_DIR/demo")")"
    build_dockerfile_image demo stagectl/demo:latest "$DEMO_HASH" "$IMAGES_DIR/demo"
fi

# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

# Tidy up: the images this run replaced (children first, so that an old base is
# no longer in use when its turn comes), then the untagged leftovers of our own
# builds (the consul build's first stage, the steps of a failed build). Only
# images with our label are pruned; an image a container still uses stays.
for ((i = ${#REPLACED[@]} - 1; i >= 0; i--)); do
    docker image rm "${REPLACED[i]}" >/dev/null 2>&1 || true
done
docker image prune --force --filter label=io.stagectl.image >/dev/null || true

if ((${#BUILT[@]})); then
    log "built: ${BUILT[*]}"
else
    log "nothing to build: every image is up to date"
fi
log "done in $((SECONDS - START_TIME)) s"
docker image ls --filter 'reference=stagectl/*' \
    --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}' |
    { IFS= read -r header; echo "$header"; sort; }
