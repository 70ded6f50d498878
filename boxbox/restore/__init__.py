"""Restore, compare and point-in-time reconstruction: the read side of `boxbox query`."""
