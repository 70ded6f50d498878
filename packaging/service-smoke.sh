#!/bin/sh
# From "copied one file" to a running store server, in a fresh Debian system: run
# packaging/install.sh for real (user, directories, init script) inside a minimal Debian
# root file system of this machine's architecture, add certificates and an account, then
# start, reload and stop the server through /etc/init.d/boxbox-server, first with the
# sysvinit script, then with the OpenRC one (Debian's openrc package), checking each time
# that it runs as the `boxbox` user with SHIV_ROOT in its state directory.
#
#   packaging/service-smoke.sh              # builds boxbox from a snapshot of the checkout first
#   packaging/service-smoke.sh --exe PATH   # or installs this one (e.g. dist/boxbox)
#
# Needs root (mmdebstrap --mode=root, chroot, mounting /proc in the chroot) and the Debian
# mirror the first time; the root file system is cached in $BOXBOX_SERVICE_CACHE (default
# /var/cache/boxbox-service). Not part of the test suite (`pytest -m slow` runs it).
set -eu
umask 022
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${BOXBOX_SERVICE_CACHE:-/var/cache/boxbox-service}
SUITE=${BOXBOX_SERVICE_SUITE:-bookworm}
MIRROR=${BOXBOX_SERVICE_MIRROR:-http://deb.debian.org/debian}

die() {
    echo "boxbox: packaging/service-smoke.sh: $*" >&2
    exit 1
}

exe=""
while [ $# -gt 0 ]; do
    case $1 in
        --exe) [ $# -ge 2 ] || die "--exe needs a path"; exe=$2; shift 2 ;;
        *) echo "boxbox: packaging/service-smoke.sh: unknown argument '$1'" >&2
           echo "usage: packaging/service-smoke.sh [--exe PATH]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap --mode=root, chroot, mount)"
[ -z "$exe" ] || [ -f "$exe" ] || die "$exe is missing"
chroot=$(command -v chroot) || die "no chroot command (coreutils)"
if ! command -v mmdebstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap >/dev/null ||
        die "apt-get install mmdebstrap failed"
fi
started=$(date +%s)
step() { echo "== [$(($(date +%s) - started))s] $*"; }

if [ -z "$exe" ]; then
    step "building boxbox from a snapshot of the checkout"
    snap=$(mktemp -d)
    mkdir -p "$snap/build"
    tar -cf - --exclude=__pycache__ --exclude='*.pyc' boxbox | tar -C "$snap" -xf -
    cp build/shiv.sh "$snap/build/"
    epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 315532800)}
    SOURCE_DATE_EPOCH=$epoch sh "$snap/build/shiv.sh" >/dev/null || { rm -rf "$snap"; die "build/shiv.sh failed"; }
    mkdir -p "$CACHE"
    cp "$snap/dist/boxbox" "$CACHE/boxbox"
    rm -rf "$snap"
    exe=$CACHE/boxbox
fi

arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
mkdir -p "$CACHE"
base="$CACHE/$SUITE-$arch"
if [ ! -x "$base/usr/bin/python3" ] || [ ! -x "$base/sbin/openrc-run" ]; then
    step "making a $SUITE $arch root file system (minbase + python3, openrc) in $base"
    rm -rf "$base" "$base.tmp"
    mmdebstrap --quiet --mode=root --variant=minbase --include=python3,openrc "$SUITE" "$base.tmp" "$MIRROR" ||
        die "mmdebstrap $SUITE $arch from $MIRROR failed"
    mv "$base.tmp" "$base"
fi

# a throw-away copy of the cached system, so every run starts from a system without boxbox
rootfs=$(mktemp -d "$CACHE/run.XXXXXX")
cleanup() {
    if [ -n "${rootfs:-}" ]; then
        if [ -f "$rootfs/var/run/boxbox-server/boxbox-server.pid" ]; then
            kill "$(cat "$rootfs/var/run/boxbox-server/boxbox-server.pid")" 2>/dev/null || true
        fi
        if [ -f "$rootfs/run/openrc/softlevel" ]; then
            "$chroot" "$rootfs" /etc/init.d/boxbox-server stop >/dev/null 2>&1 || true
        fi
        umount "$rootfs/proc" 2>/dev/null || true
        rm -rf "$rootfs"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
step "copying the system to $rootfs"
cp -a "$base/." "$rootfs/"
mkdir -p "$rootfs/proc" "$rootfs/dev" "$rootfs/tmp/boxbox-src/dist"
mount -t proc proc "$rootfs/proc" || die "cannot mount /proc in the chroot"
for dev in "null 1 3" "zero 1 5" "random 1 8" "urandom 1 9"; do
    # shellcheck disable=SC2086  # name, major, minor
    set -- $dev
    [ -e "$rootfs/dev/$1" ] || mknod -m 0666 "$rootfs/dev/$1" c "$2" "$3"
done
cp -r "$ROOT/packaging" "$rootfs/tmp/boxbox-src/"
cp "$exe" "$rootfs/tmp/boxbox-src/dist/boxbox"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cat >"$rootfs/tmp/boxbox-src/inside.sh" <<'EOF'
set -eu
port=$1
step() { echo "== (chroot) $*"; }
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
log=/var/log/boxbox-server.log

# wait_log TEXT: the server's log says TEXT within 30 s
wait_log() {
    i=0
    until grep -q "$1" "$log" 2>/dev/null; do
        i=$((i + 1)); [ $i -le 60 ] || { echo "never logged: $1" >&2; exit 1; }; sleep 0.5
    done
}

# check_daemon: the running server is the boxbox user's, with SHIV_ROOT in its state directory
check_daemon() {
    found=""
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "^python3 /usr/local/bin/boxbox server --config"; then
            found=${p#/proc/}
            user=$(stat -c %U "$p")
            shiv=$(tr '\0' '\n' <"$p/environ" | sed -n 's/^SHIV_ROOT=//p')
            echo "   pid $found runs as $user, SHIV_ROOT=$shiv: $(tr '\0' ' ' <"$p/cmdline")"
            [ "$user" = boxbox ] || { echo "the server runs as $user, not boxbox" >&2; exit 1; }
            [ "$shiv" = /var/lib/boxbox/shiv ] || { echo "SHIV_ROOT is '$shiv'" >&2; exit 1; }
        fi
    done
    [ -n "$found" ] || { echo "no server process" >&2; exit 1; }
    ls -d /var/lib/boxbox/shiv/boxbox_* >/dev/null || { echo "nothing unpacked in /var/lib/boxbox/shiv" >&2; exit 1; }
    wait_log "listening on 127.0.0.1 port $port"
    python3 -c "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=10).close()" "$port"
    echo "   port $port accepts connections"
}

step "packaging/install.sh --role server --init sysvinit"
sh /tmp/boxbox-src/packaging/install.sh --role server --init sysvinit
step "what it made"
for p in /usr/local/bin/boxbox /etc/boxbox /etc/boxbox/server.conf /var/lib/boxbox /srv/boxbox /srv/boxbox/0 /etc/init.d/boxbox-server; do
    stat -c '   %A %U:%G %n' "$p"
done
getent passwd boxbox | sed 's/^/   /'
step "certificates, config, an account (as boxbox)"
# the administrator's own SHIV_ROOT: the init scripts must not hand it to the daemon
export SHIV_ROOT=/root/.shiv
boxbox ca init /root/ca >/dev/null
boxbox ca sign-server /root/ca localhost 127.0.0.1 --out /root/server >/dev/null
cp /root/server/server.crt /root/server/server.key /root/server/ca.crt /etc/boxbox/
chgrp boxbox /etc/boxbox/server.key
chmod 0640 /etc/boxbox/server.key
sed -i -e "s/^# listen = .*/listen = 127.0.0.1/" -e "s/^# port = .*/port = $port/" /etc/boxbox/server.conf
boxbox config check server /etc/boxbox/server.conf
su -s /bin/sh -c "SHIV_ROOT=/var/lib/boxbox/shiv boxbox accounts --config /etc/boxbox/server.conf create 1 --soft 10M --hard 20M" boxbox

step "sysvinit: /etc/init.d/boxbox-server start, status, reload, stop"
/etc/init.d/boxbox-server start
/etc/init.d/boxbox-server status
check_daemon
/etc/init.d/boxbox-server reload
wait_log "reloaded"
/etc/init.d/boxbox-server stop
rc=0; /etc/init.d/boxbox-server status || rc=$?
[ "$rc" = 3 ] || { echo "status after stop: exit $rc, expected 3" >&2; exit 1; }
wait_log "stopped"
sed 's/^/   log: /' "$log"
: >"$log"

step "OpenRC: packaging/install.sh --init openrc (keeps the config), then start, status, reload, stop"
sh /tmp/boxbox-src/packaging/install.sh --role server --init openrc | grep -E "^(installed|kept)"
# what booting OpenRC would have set up
mkdir -p /run/openrc
for d in started starting stopping inactive wasinactive failed hotplugged daemons options exclusive scheduled tmp; do
    mkdir -p "/run/openrc/$d"
done
echo default >/run/openrc/softlevel
/etc/init.d/boxbox-server start 2>&1 | grep -v "needs non existent service"
/etc/init.d/boxbox-server status
check_daemon
/etc/init.d/boxbox-server reload
wait_log "reloaded"
/etc/init.d/boxbox-server stop
rc=0; /etc/init.d/boxbox-server status || rc=$?
[ "$rc" = 3 ] || { echo "status after stop: exit $rc, expected 3" >&2; exit 1; }
wait_log "stopped"
sed 's/^/   log: /' "$log"
EOF
step "inside a fresh $SUITE $arch system"
"$chroot" "$rootfs" /bin/sh /tmp/boxbox-src/inside.sh "$port" || die "failed (see above)"
step "passed"
