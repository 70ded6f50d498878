#!/bin/sh
# Write packaging/examples/server.conf and client.conf from the config table
# (boxbox/config.py, the same generator as `boxbox config example ROLE`), with the paths
# that packaging/install.sh and the init scripts use.
#
#   packaging/make-examples.sh            # rewrite the examples
#   packaging/make-examples.sh --check    # exit 1 if they are not the generator's output
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
check=no
case ${1:-} in
    --check) check=yes ;;
    '') ;;
    *) echo "boxbox: packaging/make-examples.sh: unknown argument '$1' (expected --check)" >&2; exit 2 ;;
esac

PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} "$PY" - "$check" <<'PYEOF'
import sys
from pathlib import Path

from boxbox import config

INTRO = {
    "server": """\
# Installed as /etc/boxbox/server.conf by packaging/install.sh --role server.
# The server runs as the user `boxbox`: it must be able to read the certificate, the key
# and the CA certificate (`chgrp boxbox /etc/boxbox/server.key; chmod 0640 ...`), and
# write the account database and every [discset] directory. Check with:
#   boxbox config check server /etc/boxbox/server.conf
""",
    "client": """\
# Installed as /etc/boxbox/client.conf by packaging/install.sh --role client.
# Copy client.crt, client.key and ca.crt (from `boxbox ca sign-client`) next to it, make
# the keys file with `boxbox client init`, and KEEP A COPY OF keys.dat ELSEWHERE: without
# it nothing can be restored. Check with:
#   boxbox config check client /etc/boxbox/client.conf
""",
}
OVERRIDES = {
    "server": {
        "server": {
            "certificate": Path("/etc/boxbox/server.crt"),
            "private_key": Path("/etc/boxbox/server.key"),
            "ca_certificate": Path("/etc/boxbox/ca.crt"),
            "account_database": Path("/var/lib/boxbox/accounts.db"),
        },
        "discset 0": {"directories": ["/srv/boxbox/0"]},
    },
    "client": {
        "client": {
            "certificate": Path("/etc/boxbox/client.crt"),
            "private_key": Path("/etc/boxbox/client.key"),
            "ca_certificate": Path("/etc/boxbox/ca.crt"),
            "keys_file": Path("/etc/boxbox/keys.dat"),
            "data_directory": Path("/var/lib/boxbox-client"),
        },
    },
}
check = sys.argv[1] == "yes"
stale = []
for role in ("server", "client"):
    text = INTRO[role] + "\n" + config.example(role, OVERRIDES[role])
    if not text.endswith("\n"):
        text += "\n"
    path = Path("packaging/examples") / f"{role}.conf"
    if check:
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(str(path))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
if stale:
    sys.exit(f"boxbox: packaging/make-examples.sh: {', '.join(stale)} differ from the config table; "
             "run packaging/make-examples.sh")
PYEOF
