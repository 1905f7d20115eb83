"""Reading sysfs and procfs files: a missing or unreadable file is None.

Attributes come and go with drivers and kernel versions; the generic manager
and the safety rules both read them, and both must degrade to "unknown"
(None) rather than fail.
"""

import logging
import os

LOG = logging.getLogger(__name__)


def read_text(path):
    """The stripped content of ``path``, or None (logged) when it is
    unreadable or empty."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            value = stream.read().strip()
    except OSError as exc:
        LOG.debug("cannot read %s: %s", path, exc)
        return None
    return value or None


def read_int(path, base=10):
    """The integer in ``path``, or None when unreadable or not a number."""
    value = read_text(path)
    if value is None:
        return None
    try:
        return int(value, base)
    except ValueError:
        LOG.debug("%s holds %r, not an integer", path, value)
        return None


def read_bool(path):
    """``path`` read as a 0/1 flag, or None."""
    value = read_int(path)
    return None if value is None else value != 0


def listdir(path):
    """The sorted entries of a directory; empty when it cannot be listed."""
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        LOG.debug("cannot list %s: %s", path, exc)
        return []
