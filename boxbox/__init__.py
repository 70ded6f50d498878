"""boxbox: encrypted, always-on, client/server backup for small servers."""

__version__ = "0.1.0"
