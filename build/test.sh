#!/bin/sh
# Run every test on a fresh machine: make a virtualenv, install boxbox with its test
# extra, run the whole pytest suite with the derandomized Hypothesis `ci` profile.
# Extra arguments go to pytest (e.g. `build/test.sh -m slow` for the soak tests).
set -eu
cd "$(dirname "$0")/.."
VENV=${BOXBOX_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install --quiet -e '.[test]'
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
