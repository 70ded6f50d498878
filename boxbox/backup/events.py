"""The client's events (what `notify_script` gets) as syslog lines that log-based alerting can match.

Tag `boxbox-event`, facility daemon, errors at LOG_ERR; the message is a human part and a
key=value tail that always starts with ` -- event=`:

    boxbox-event[812]: backup-error: the store is full -- event=backup-error account=0000002a detail="the store is full"

Every event is sent, repeats too (the notify script's repeat suppression is for mail,
not for alert rules that look at the latest line). Sent with the stdlib `syslog` module,
which talks to /dev/log itself and so does not depend on how the daemon's own log is set.
"""

from __future__ import annotations

import re

#: The syslog tag (ident) of event lines: stable, alert rules match on it.
TAG = "boxbox-event"
#: Events at LOG_ERR; the others at LOG_INFO (backup-ok) or LOG_NOTICE.
ERROR_EVENTS = frozenset(("backup-error", "store-full", "read-error"))
_PLAIN = re.compile(r"[A-Za-z0-9_.:/+-]+")


def quote(value: object) -> str:
    """A value of the key=value tail: bare if simple, else in double quotes with \\ and \" escaped."""
    text = " ".join(str(value).split())  # one line, whatever the detail held
    if _PLAIN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line(event: str, detail: str, fields: dict[str, object]) -> str:
    """The syslog message: `EVENT[: DETAIL] -- event=EVENT k=v ...` (detail last in the tail)."""
    human = f"{event}: {' '.join(detail.split())}" if detail else event
    tail = {"event": event, **fields, **({"detail": detail} if detail else {})}
    return human + " -- " + " ".join(f"{k}={quote(v)}" for k, v in tail.items())


def send(event: str, detail: str, fields: dict[str, object]) -> None:
    import syslog  # only here: the ctl and query roles never load it

    priority = syslog.LOG_ERR if event in ERROR_EVENTS else syslog.LOG_INFO if event == "backup-ok" \
        else syslog.LOG_NOTICE
    syslog.openlog(TAG, syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(priority, line(event, detail, fields))
