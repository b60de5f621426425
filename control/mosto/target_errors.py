"""Errors every data-plane target (XDP, BMv2) raises, so callers need not know which."""


class TargetError(Exception):
    """An operation on the target failed; the message says why, in one line."""


class TableFull(TargetError):
    """No room for another entry."""
