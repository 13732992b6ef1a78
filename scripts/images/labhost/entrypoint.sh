#!/bin/sh
# Entrypoint of stagectl/labhost: start sshd, then become dockerd.
#
# stagectl uploads two files with the Docker archive API after creating the
# container and before starting it (by hand: docker cp):
#   /etc/ssh/ssh_host_ed25519_key   this host's ed25519 private key (mode 0600)
#   /root/.ssh/authorized_keys      the public key(s) allowed to log in as root
# It then knows the host key in advance and can keep strict host key checking.
# Arguments, if any, are passed on to dockerd.
set -eu

HOST_KEY=/etc/ssh/ssh_host_ed25519_key
AUTH_KEYS=/root/.ssh/authorized_keys

log() { echo "labhost: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ -s "$HOST_KEY" ] ||
    die "$HOST_KEY is missing: upload this host's ed25519 private key (mode 0600) into the container before starting it"
[ -s "$AUTH_KEYS" ] ||
    die "$AUTH_KEYS is missing: upload the authorized public key(s) into the container before starting it"

# sshd ignores a private key others can read, and StrictModes rejects an
# authorized_keys in a directory others can write: whatever modes the upload
# carried, make them right.
chown root:root "$HOST_KEY" "$AUTH_KEYS" /root /root/.ssh
chmod 0600 "$HOST_KEY" "$AUTH_KEYS"
chmod 0700 /root/.ssh

case "$(ssh-keygen -y -f "$HOST_KEY" 2>/dev/null || true)" in
    ssh-ed25519\ *) ;;
    *) die "$HOST_KEY is not a readable, unencrypted ed25519 private key" ;;
esac

# sshd's privilege separation directory; /run is not kept in the image.
mkdir -p /run/sshd
chmod 0755 /run/sshd
/usr/sbin/sshd -t || die "sshd refused its configuration (see above)"
# -D: stay a child of this container (tini reaps it); -e: log to the container log.
/usr/sbin/sshd -D -e &
log "sshd started (pid $!)"

# A pid file left by an earlier run of this same container (docker restart) would
# make dockerd refuse to start.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid

# overlay2 works because /var/lib/docker is a volume, not the container's own root.
log "starting dockerd"
exec dockerd --host=unix:///var/run/docker.sock --storage-driver=overlay2 "$@"
