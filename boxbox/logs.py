"""Log handler set-up: stderr for interactive roles, stderr or syslog for daemons.

Only `boxbox.__main__` and daemon roles (after reading their config) call `configure`;
every other module just does `log = logging.getLogger(__name__)`.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "warning", target: str = "stderr", ident: str = "boxbox") -> None:
    """Replace the root handlers: `target` is 'stderr' or 'syslog'."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handler: logging.Handler
    if target == "syslog" and os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler  # only here: it pulls in socket and pickle (~5 ms a start)

        handler = SysLogHandler(address="/dev/log", facility=SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter(f"{ident}[%(process)d]: %(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
