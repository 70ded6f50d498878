#!/bin/sh
# Prove the ARM builds run: build dist/boxbox-aarch64 and dist/boxbox-armv7l, make a minimal
# Debian root filesystem of each architecture, and run boxbox inside it under qemu
# user-mode emulation.
#
#   build/arm-smoke.sh                      # both architectures
#   build/arm-smoke.sh --arch armv7l        # one
#   build/arm-smoke.sh --no-build           # use the dist/boxbox-ARCH already there
#
# Inside the emulated system it runs `boxbox --version` (cold and warm), `boxbox ca init`
# and signs a server and a client certificate; then, as an unprivileged user, a real
# `boxbox quickstart DIR` (CA, RAID store, account, keys, configs, the store server on
# 127.0.0.1, a first backup over TLS 1.3), the `boxbox query ... restore` it printed,
# compared with the original (contents, types, modes, symlinks), a change and a second
# quickstart that backs it up, a check that the server refuses root, SIGHUP (reload) and
# the printed stop command (SIGTERM).
#
# Needs root (debootstrap-style rootfs and chroot), Debian's `qemu-user-static` and
# `mmdebstrap` (installed with apt-get when missing), the network for the Debian mirror
# and PyPI. binfmt_misc is not needed: each command runs through the static qemu binary
# copied into the root filesystem (and the copy of boxbox there names it in its shebang, so
# quickstart can start the server). The root filesystems are cached in $BOXBOX_ARM_CACHE
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
    # No binfmt_misc here, so the kernel cannot exec an ARM binary itself; quickstart starts the
    # store server by exec'ing its own executable, so this copy's shebang names the (host-native,
    # static) qemu binary with the emulated python3 as its argument. The zip part is unchanged.
    { printf '#!/usr/bin/%s /usr/bin/python3\n' "$qemu"; tail -n +2 "$exe"; } >"$rootfs/opt/boxbox"
    chmod 0755 "$rootfs/opt/boxbox"
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
        # the store server quickstart starts (its pid file, and the pid read from it)
        qshome=$smoke/.boxbox  # quickstart's default home: $HOME/.boxbox
        server_pid=""
        # shellcheck disable=SC2317  # called by the trap
        stop_servers() {
            for pid in "$server_pid" "$(cat "$rootfs$qshome/server.pid" 2>/dev/null)"; do
                if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
            done
        }
        trap stop_servers EXIT
        step "$arch: boxbox --version (cold: unpacks into SHIV_ROOT)"
        timed in_chroot /opt/boxbox --version
        step "$arch: boxbox --version (warm)"
        timed in_chroot /opt/boxbox --version
        step "$arch: boxbox ca init; sign-server; sign-client 1"
        timed in_chroot /opt/boxbox ca init $smoke/ca
        in_chroot /opt/boxbox ca sign-server $smoke/ca localhost 127.0.0.1 --out $smoke/server
        in_chroot /opt/boxbox ca sign-client $smoke/ca 1 --out $smoke/client
        in_chroot /opt/boxbox ca list $smoke/ca
        step "$arch: a directory to back up; \`boxbox quickstart\` as uid 65534 (its own CA, RAID store, server, first backup)"
        mkdir -p "$rootfs$smoke/data/docs/deep" "$rootfs$smoke/data/private"
        head -c 150000 /dev/urandom >"$rootfs$smoke/data/docs/random.bin"
        printf 'hello from an emulated ARM box\n' >"$rootfs$smoke/data/docs/deep/hello.txt"
        printf '#!/bin/sh\necho hi\n' >"$rootfs$smoke/data/run.sh"
        chmod 0755 "$rootfs$smoke/data/run.sh"
        printf 'mine\n' >"$rootfs$smoke/data/private/secret"
        chmod 0700 "$rootfs$smoke/data/private"
        chmod 0600 "$rootfs$smoke/data/private/secret"
        ln -s docs/deep/hello.txt "$rootfs$smoke/data/link"
        chown -R 65534:65534 "$rootfs$smoke"
        if ! timed in_chroot --user 65534 /opt/boxbox quickstart $smoke/data >"$work/quickstart-$arch.out"; then
            cat "$work/quickstart-$arch.out"; echo "quickstart failed" >&2; exit 1
        fi
        cat "$work/quickstart-$arch.out"
        grep -q "^backed up 5 files" "$work/quickstart-$arch.out" || { echo "quickstart backed up the wrong count" >&2; exit 1; }
        grep -q "^    /opt/boxbox query --config $qshome/client.conf restore data restored-data\$" \
            "$work/quickstart-$arch.out" || { echo "quickstart printed no restore command" >&2; exit 1; }
        server_pid=$(cat "$rootfs$qshome/server.pid")
        step "$arch: the printed restore command (into $smoke/restored-data), compared with the original"
        timed in_chroot --user 65534 /opt/boxbox query --config $qshome/client.conf restore data $smoke/restored-data
        listing() { (cd "$1" && find . -mindepth 1 -printf '%p %y %m %l\n' | sort); }
        listing "$rootfs$smoke/data" >"$work/data-$arch.list"
        listing "$rootfs$smoke/restored-data" >"$work/restored-$arch.list"
        diff "$work/data-$arch.list" "$work/restored-$arch.list" || { echo "names, types, modes or links differ" >&2; exit 1; }
        diff -r --no-dereference "$rootfs$smoke/data" "$rootfs$smoke/restored-data" ||
            { echo "restored contents differ" >&2; exit 1; }
        echo "   restored tree identical: $(wc -l <"$work/data-$arch.list") entries, same contents, modes and links"
        step "$arch: a change, and \`boxbox quickstart\` again (reuses everything, backs up the change)"
        printf 'changed on ARM\n' >>"$rootfs$smoke/data/docs/deep/hello.txt"
        sleep 1.1
        if ! timed in_chroot --user 65534 /opt/boxbox quickstart >"$work/quickstart2-$arch.out"; then
            cat "$work/quickstart2-$arch.out"; echo "the second quickstart failed" >&2; exit 1
        fi
        grep -E "^(  kept|  made|backed up|the store)" "$work/quickstart2-$arch.out"
        grep -q "^backed up 1 file " "$work/quickstart2-$arch.out" || { echo "the change was not backed up" >&2; exit 1; }
        if grep -q "^  made" "$work/quickstart2-$arch.out"; then echo "the second run made something anew" >&2; exit 1; fi
        [ "$(cat "$rootfs$qshome/server.pid")" = "$server_pid" ] || { echo "a second server was started" >&2; exit 1; }
        step "$arch: boxbox server refuses root"
        if in_chroot /opt/boxbox server --config $qshome/server.conf --foreground; then
            echo "the server ran as root" >&2; exit 1
        fi
        step "$arch: SIGHUP reloads the server (pid $server_pid); the printed stop command (SIGTERM) stops it"
        kill -HUP "$server_pid"
        i=0
        until grep -q "reloaded" "$rootfs$qshome/server.log"; do
            i=$((i + 1)); [ $i -le 60 ] || { echo "no reload logged" >&2; exit 1; }; sleep 0.5
        done
        # the printed `kill "$(cat HOME/server.pid)"`, with the path as the host sees it
        kill "$(cat "$rootfs$qshome/server.pid")"
        i=0
        # gone, or a zombie: quickstart exited, so only this machine's init may reap it
        while [ -e "$rootfs$qshome/server.pid" ] ||
            { [ -e "/proc/$server_pid" ] && [ "$(sed 's/.*) //' "/proc/$server_pid/stat" | cut -d' ' -f1)" != Z ]; }; do
            i=$((i + 1)); [ $i -le 120 ] || { echo "the server did not stop" >&2; exit 1; }; sleep 0.5
        done
        server_pid=""
        sed 's/^/   server: /' "$rootfs$qshome/server.log"
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
