#!/bin/sh
# Prove the ARM builds run: build dist/boxbox-aarch64 and dist/boxbox-armv7l, make a minimal
# Debian root filesystem of each architecture, and run boxbox inside it under qemu
# user-mode emulation.
#
#   build/arm-smoke.sh                      # both architectures
#   build/arm-smoke.sh --arch armv7l        # one
#   build/arm-smoke.sh --no-build           # use the dist/boxbox-ARCH already there
#
# Inside the emulated system it runs `boxbox --version` (cold and warm), `boxbox ca init`,
# signs a server and a client certificate, and, when the build has `boxbox server`:
# creates an account, starts the store server as an unprivileged user on 127.0.0.1, and
# runs a small client over loopback TLS 1.3 that encrypts a file, uploads it, downloads it
# again, decrypts it and compares (the `boxbox client` daemon is not needed for that),
# then reloads the server with SIGHUP and stops it with SIGTERM.
#
# Needs root (debootstrap-style rootfs and chroot), Debian's `qemu-user-static` and
# `mmdebstrap` (installed with apt-get when missing), the network for the Debian mirror
# and PyPI. binfmt_misc is not needed: each command runs through the static qemu binary
# copied into the root filesystem. The root filesystems are cached in $BOXBOX_ARM_CACHE
# (default /var/cache/boxbox-arm). Not part of the test suite: it takes minutes.
set -eu
umask 022
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${BOXBOX_ARM_CACHE:-/var/cache/boxbox-arm}
SUITE=${BOXBOX_ARM_SUITE:-bookworm}
MIRROR=${BOXBOX_ARM_MIRROR:-http://deb.debian.org/debian}

die() {
    echo "boxbox: build/arm-smoke.sh: $*" >&2
    exit 1
}

usage() {
    echo "usage: build/arm-smoke.sh [--arch aarch64|armv7l]... [--no-build]" >&2
    exit 2
}

arches="" build=yes
while [ $# -gt 0 ]; do
    case $1 in
        --arch) [ $# -ge 2 ] || usage; arches="$arches $2"; shift 2 ;;
        --arch=*) arches="$arches ${1#--arch=}"; shift ;;
        --no-build) build=no; shift ;;
        -h|--help) usage ;;
        *) echo "boxbox: build/arm-smoke.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
[ -n "$arches" ] || arches="aarch64 armv7l"
for arch in $arches; do
    case $arch in
        aarch64|armv7l) ;;
        *) die "unsupported architecture '$arch' (expected aarch64 or armv7l)" ;;
    esac
done
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap --mode=root and chroot)"
chroot=$(command -v chroot) || die "no chroot command (coreutils)"

now() { date +%s; }
started=$(now)
step() { echo "== [$(($(now) - started))s] $*"; }

# ---- tools
missing=""
command -v qemu-aarch64-static >/dev/null 2>&1 || missing="$missing qemu-user-static"
command -v mmdebstrap >/dev/null 2>&1 || missing="$missing mmdebstrap"
if [ -n "$missing" ]; then
    step "installing$missing"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get to install$missing; install them by hand"
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >/dev/null ||
        die "apt-get install$missing failed"
fi
if [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "binfmt_misc: qemu handlers registered (not needed: commands run through qemu explicitly)"
else
    echo "binfmt_misc: no qemu handler registered here; running every command through qemu-*-static explicitly"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# ---- build, from a snapshot so a half-edited checkout or a concurrent build does not leak in
if [ "$build" = yes ]; then
    step "building$(for a in $arches; do printf ' dist/boxbox-%s' "$a"; done)"
    mkdir -p "$work/src/build"
    tar -cf - --exclude=__pycache__ --exclude='*.pyc' boxbox | tar -C "$work/src" -xf -
    cp build/shiv.sh "$work/src/build/"
    [ ! -d build/wheels/tools ] || cp -r build/wheels "$work/src/build/"
    epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 315532800)}
    platform_args=""
    for arch in $arches; do platform_args="$platform_args --platform $arch"; done
    # shellcheck disable=SC2086  # one word per --platform argument
    SOURCE_DATE_EPOCH=$epoch sh "$work/src/build/shiv.sh" $platform_args || die "build/shiv.sh$platform_args failed"
    mkdir -p dist
    for arch in $arches; do
        # one architecture alone is built as dist/boxbox-ARCH only when it is not this machine's
        cp "$work/src/dist/boxbox-$arch" "dist/.boxbox-$arch.tmp"
        mv "dist/.boxbox-$arch.tmp" "dist/boxbox-$arch"
    done
fi

# ---- the emulated systems
mkdir -p "$CACHE"
failed=""
for arch in $arches; do
    case $arch in
        aarch64) debarch=arm64 qemu=qemu-aarch64-static packages=python3 ;;
        armv7l) debarch=armhf qemu=qemu-arm-static packages=python3,python3-cffi-backend ;;
    esac
    exe="$ROOT/dist/boxbox-$arch"
    [ -f "$exe" ] || die "$exe is missing (run without --no-build)"
    rootfs="$CACHE/$SUITE-$debarch"
    if [ ! -x "$rootfs/usr/bin/python3" ]; then
        step "$arch: making a $SUITE $debarch root filesystem in $rootfs ($packages)"
        rm -rf "$rootfs.tmp"
        # extract: unpack the packages and their dependencies without running any
        # maintainer script, so no foreign binary has to run (no binfmt_misc needed)
        mmdebstrap --quiet --mode=root --variant=extract --architectures="$debarch" \
            --include="$packages" "$SUITE" "$rootfs.tmp" "$MIRROR" ||
            die "$arch: mmdebstrap $SUITE $debarch from $MIRROR failed"
        mv "$rootfs.tmp" "$rootfs"
    fi
    cp "$(command -v "$qemu")" "$rootfs/usr/bin/$qemu"
    mkdir -p "$rootfs/dev" "$rootfs/tmp" "$rootfs/opt"
    chmod 1777 "$rootfs/tmp"
    for dev in "null 1 3" "zero 1 5" "random 1 8" "urandom 1 9"; do
        # shellcheck disable=SC2086  # name, major, minor
        set -- $dev
        [ -e "$rootfs/dev/$1" ] || { mknod -m 0666 "$rootfs/dev/$1" c "$2" "$3"; }
    done
    cp "$exe" "$rootfs/opt/boxbox"
    smoke=/tmp/boxbox-smoke
    rm -rf "${rootfs:?}$smoke"
    mkdir -p "$rootfs$smoke"

    # in_chroot [--user UID] ARGS...: python3 /opt/boxbox ARGS inside the emulated system
    in_chroot() {
        uid=0
        if [ "$1" = --user ]; then uid=$2; shift 2; fi
        env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=$smoke SHIV_ROOT="$smoke/shiv-$uid" \
            "$chroot" --userspec="$uid:$uid" "$rootfs" "/usr/bin/$qemu" /usr/bin/python3 "$@"
    }
    # timed COMMAND...: run it and print its wall time
    timed() {
        t0=$(date +%s%N)
        rc=0
        "$@" || rc=$?
        t1=$(date +%s%N)
        echo "   ($(((t1 - t0) / 1000000)) ms, exit $rc)"
        return $rc
    }

    step "$arch: python3 in the $debarch system: $(in_chroot -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])')"
    # set -e would be ignored inside a subshell whose status is tested (`if ! (...)`)
    set +e
    (
        set -e
        # this subshell's own trap: the outer one is reset here, and the server runs in here
        server_pid=""
        trap 'if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi' EXIT
        step "$arch: boxbox --version (cold: unpacks into SHIV_ROOT)"
        timed in_chroot /opt/boxbox --version
        step "$arch: boxbox --version (warm)"
        timed in_chroot /opt/boxbox --version
        step "$arch: boxbox ca init; sign-server; sign-client 1"
        timed in_chroot /opt/boxbox ca init $smoke/ca
        in_chroot /opt/boxbox ca sign-server $smoke/ca localhost 127.0.0.1 --out $smoke/server
        in_chroot /opt/boxbox ca sign-client $smoke/ca 1 --out $smoke/client
        in_chroot /opt/boxbox ca list $smoke/ca
        if in_chroot /opt/boxbox server --help >/dev/null 2>&1; then
            port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
            cat >"$rootfs$smoke/server.conf" <<EOF
[server]
listen = 127.0.0.1
port = $port
certificate = server/server.crt
private_key = server/server.key
ca_certificate = server/ca.crt
account_database = accounts.db
pid_file = server.pid

[discset 0]
directories = store/0
    store/1
    store/2
EOF
            mkdir -p "$rootfs$smoke/store/0" "$rootfs$smoke/store/1" "$rootfs$smoke/store/2"
            step "$arch: boxbox accounts create 1 (RAID disc set of three directories)"
            in_chroot /opt/boxbox accounts --config $smoke/server.conf create 1 --soft 50M --hard 60M
            chown -R 65534:65534 "$rootfs$smoke"
            step "$arch: boxbox server refuses root"
            if in_chroot /opt/boxbox server --config $smoke/server.conf --foreground; then
                echo "the server ran as root" >&2; exit 1
            fi
            step "$arch: boxbox server --foreground as uid 65534 on 127.0.0.1:$port"
            # not through in_chroot: $! must be the daemon itself (env, chroot and qemu exec
            # in turn), not a subshell around it, or the signals below would miss it
            env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=$smoke SHIV_ROOT="$smoke/shiv-65534" \
                "$chroot" --userspec=65534:65534 "$rootfs" "/usr/bin/$qemu" /usr/bin/python3 \
                /opt/boxbox server --config $smoke/server.conf --foreground 2>"$work/server-$arch.log" &
            server_pid=$!
            i=0
            until grep -q "listening on" "$work/server-$arch.log" 2>/dev/null; do
                i=$((i + 1))
                if [ $i -gt 240 ] || ! kill -0 "$server_pid" 2>/dev/null; then
                    cat "$work/server-$arch.log" >&2; echo "the server did not start" >&2; exit 1
                fi
                sleep 0.5
            done
            cat >"$rootfs$smoke/miniclient.py" <<'EOF'
"""Back up one file to the store server and restore it: what `boxbox client` will do, by hand."""
import glob, hashlib, io, os, sys, time
sys.path[:0] = glob.glob(os.environ["SHIV_ROOT"] + "/*/site-packages")
from boxbox.crypto.keys import create_keys_file
from boxbox.objects.attributes import Attributes, FileType
from boxbox.objects.directory import FILE, Directory, make_entry
from boxbox.objects.file import decode_file, encode_file
from boxbox.wire import tls
from boxbox.wire.client import Client

home, port = sys.argv[1], int(sys.argv[2])
keys = create_keys_file(home + "/keys.dat")
data = os.urandom(150_000) + b"hello from an emulated ARM box\n" * 2000
attrs = Attributes(FileType.REGULAR, 0o644, 1000, 1000, time.time_ns())
ctx = tls.client_context(*(home + "/client/" + n for n in ("client.crt", "client.key", "ca.crt")))
t0 = time.monotonic()
with Client.connect("127.0.0.1", port, ctx, server_hostname="localhost") as c:
    c.login()
    sub = c.create_directory(1, make_entry(keys, 1, b"home", 0, FILE, None).sealed_name)
    entry = make_entry(keys, sub, b"notes.bin", 0, FILE, attrs)
    obj = io.BytesIO()
    encode_file(keys, io.BytesIO(data), obj, container_id=sub, name=b"notes.bin", attributes=attrs)
    fid = c.store_file(sub, entry.sealed_name, io.BytesIO(obj.getvalue()), mtime=entry.mtime_ns,
                       attributes_hash=entry.attr_hash, attributes=entry.sealed_attributes)
    [listed] = Directory.parse(c.list_directory(sub)).entries
    restored = io.BytesIO()
    decode_file(keys, c.get_file(sub, fid), restored, container_id=sub, name=b"notes.bin")
    usage = c.usage()
ok = restored.getvalue() == data and listed.object_id == fid
print(f"backed up {len(data)} bytes as object {fid} ({len(obj.getvalue())} bytes encrypted), restored "
      f"{len(restored.getvalue())} bytes, sha256 {hashlib.sha256(restored.getvalue()).hexdigest()[:16]} "
      f"{'identical' if ok else 'DIFFERENT'}; account uses {usage.blocks_used} blocks; "
      f"{time.monotonic() - t0:.1f} s")
sys.exit(0 if ok else 1)
EOF
            step "$arch: a client over loopback TLS 1.3: encrypt, upload, list, download, decrypt, compare"
            timed in_chroot --user 65534 $smoke/miniclient.py $smoke "$port"
            step "$arch: SIGHUP reloads, SIGTERM stops"
            kill -HUP "$server_pid"
            i=0
            until grep -q "reloaded" "$work/server-$arch.log"; do
                i=$((i + 1)); [ $i -le 60 ] || { echo "no reload logged" >&2; exit 1; }; sleep 0.5
            done
            kill -TERM "$server_pid"
            rc=0; wait "$server_pid" || rc=$?
            server_pid=""
            sed 's/^/   server: /' "$work/server-$arch.log"
            # a SIGTERM stop must not leave a pid file behind
            [ "$rc" = 0 ] || { echo "the server exited $rc after SIGTERM" >&2; exit 1; }
            [ ! -e "$rootfs$smoke/server.pid" ] || { echo "the server left its pid file" >&2; exit 1; }
        else
            echo "   (this build has no \`boxbox server\` yet: server, backup and restore skipped)"
        fi
    )
    rc=$?
    set -e
    [ "$rc" = 0 ] || failed="$failed $arch"
    step "$arch: done"
done
if [ -n "$failed" ]; then
    die "failed on:$failed (see above)"
fi
step "all passed: ${arches# }"
