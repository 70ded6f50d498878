#!/bin/sh
# Build the one-file executable dist/boxbox from this checkout, reproducibly.
#
#   build/shiv.sh                                  # dist/boxbox for this machine's CPU
#   build/shiv.sh --platform aarch64 --platform armv7l   # dist/boxbox-aarch64, dist/boxbox-armv7l
#
# The zipapp runs on any system python3 >= 3.10: it carries the abi3 wheel of
# `cryptography` (one .so for every CPython >= 3.9) and one `_cffi_backend` per CPython
# minor version (their .so names carry the ABI tag, so they sit side by side).
# PyPI has no armv7l wheel of cffi, so an armv7l box needs its distribution's backend:
# `apt install python3-cffi-backend`; without it that build exits with a one-line message.
#
# At run time shiv unpacks the bundled packages (native modules cannot load from a zip)
# into $SHIV_ROOT, default ~/.shiv. A daemon user without a writable home needs one:
#   SHIV_ROOT=/var/lib/boxbox/shiv boxbox server ...
#
# Reproducible: same checkout + same SOURCE_DATE_EPOCH (default: the HEAD commit's time)
# gives the same bytes. Needs python3 and pip, and PyPI for the pinned wheels below;
# shiv is taken from PATH or installed (pinned) under build/wheels/tools.
set -eu
umask 022  # file modes go into the zip, so they must not depend on the caller
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}

CRYPTOGRAPHY_VERSION=48.0.0
CFFI_VERSION=2.0.0
TYPING_EXTENSIONS_VERSION=4.15.0  # cryptography imports it on Python 3.10
SHIV_VERSION=1.0.8
PYTHON_VERSIONS="3.10 3.11 3.12 3.13 3.14"

usage() {
    echo "usage: build/shiv.sh [--platform x86_64|aarch64|armv7l]..." >&2
    exit 2
}

platforms=""
while [ $# -gt 0 ]; do
    case $1 in
        --platform) [ $# -ge 2 ] || usage; platforms="$platforms $2"; shift 2 ;;
        --platform=*) platforms="$platforms ${1#--platform=}"; shift ;;
        -h|--help) usage ;;
        *) echo "boxbox: build/shiv.sh: unknown argument '$1'" >&2; usage ;;
    esac
done
native=$(uname -m)
[ -n "$platforms" ] || platforms=$native

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 315532800)
fi
export SOURCE_DATE_EPOCH

if command -v shiv >/dev/null 2>&1; then
    SHIV="shiv"
else
    # pip --target rather than a venv: Debian's python3 has no venv module without python3-venv.
    tools="$ROOT/build/wheels/tools"
    if [ ! -f "$tools/shiv/__init__.py" ]; then
        "$PY" -m pip install --quiet --disable-pip-version-check --target "$tools" "shiv==$SHIV_VERSION"
    fi
    SHIV="env PYTHONPATH=$tools $PY -m shiv"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

# download ARCH PYTHON_VERSION DEST PACKAGE...: that platform's binary wheels, no resolver surprises.
download() {
    arch=$1 pyver=$2 dest=$3
    shift 3
    case $arch in
        x86_64|aarch64) tags="manylinux_2_28_$arch manylinux_2_17_$arch manylinux2014_$arch" ;;
        armv7l) tags="manylinux_2_31_armv7l manylinux_2_17_armv7l manylinux2014_armv7l" ;;
    esac
    plat_args=""
    for t in $tags; do plat_args="$plat_args --platform $t"; done
    # shellcheck disable=SC2086  # word splitting of $plat_args is intended
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --implementation cp --python-version "$pyver" $plat_args --dest "$dest" "$@"
}

for arch in $platforms; do
    case $arch in
        x86_64|aarch64|armv7l) ;;
        *) echo "boxbox: build/shiv.sh: unsupported platform '$arch' (expected x86_64, aarch64 or armv7l)" >&2; exit 2 ;;
    esac
    if [ "$arch" = "$native" ] && [ "$platforms" = "$native" ]; then out=dist/boxbox; else out=dist/boxbox-$arch; fi
    wheels="$work/wheels-$arch" site="$work/site-$arch"
    mkdir -p "$wheels" "$site"
    # Oldest supported Python picks the lowest abi3 tag, which every newer Python loads too.
    download "$arch" 3.10 "$wheels" "cryptography==$CRYPTOGRAPHY_VERSION" "typing_extensions==$TYPING_EXTENSIONS_VERSION"
    if [ "$arch" != armv7l ]; then
        for v in $PYTHON_VERSIONS; do
            download "$arch" "$v" "$wheels" "cffi==$CFFI_VERSION"
        done
    fi
    # A wheel without a .data directory installs by unpacking; sorted, so the last
    # (identical) copy of cffi's pure-Python files is always the same one.
    "$PY" - "$wheels" "$site" <<'EOF'
import sys, zipfile
from pathlib import Path
wheels, site = Path(sys.argv[1]), Path(sys.argv[2])
for wheel in sorted(wheels.glob("*.whl")):
    with zipfile.ZipFile(wheel) as z:
        if any(".data/" in n for n in z.namelist()):
            sys.exit(f"boxbox: build/shiv.sh: {wheel.name} has a .data directory; unpacking is not enough")
        z.extractall(site)
EOF
    tar -cf - --exclude=__pycache__ --exclude='*.pyc' boxbox | tar -C "$site" -xf -
    chmod -R u=rwX,go=rX "$site"
    preamble=""
    if [ "$arch" = armv7l ]; then
        preamble="$work/armv7l_check.py"
        cat >"$preamble" <<'EOF'
import importlib.util, sys
if importlib.util.find_spec("_cffi_backend") is None:
    sys.stderr.write("boxbox: this armv7l build needs the system's cffi backend: apt install python3-cffi-backend\n")
    sys.exit(1)
EOF
    fi
    mkdir -p dist
    $SHIV --site-packages "$site" --reproducible --compressed -p '/usr/bin/env python3' \
        -e boxbox.__main__:main ${preamble:+--preamble "$preamble"} -o "$out" >/dev/null
    size=$(wc -c <"$out")
    echo "$out: $size bytes ($arch, cryptography $CRYPTOGRAPHY_VERSION)"
    if [ "$arch" = armv7l ]; then
        echo "  note: needs the target's cffi backend: apt install python3-cffi-backend"
    fi
done
