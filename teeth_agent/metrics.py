"""What both sides count for Prometheus, in one place: the bytes a task
result reports and label values that a peer cannot inflate.

A label value that comes from the other side of the wire (a task's
``method``) is free text: a hostile or broken peer could send a new one
with every message and make the metrics grow without bound. A
:class:`LabelValues` keeps the first ``limit`` well-formed values it sees
and folds every further or malformed one into ``"other"``.
"""

import re

#: The label value given to every value that is not kept.
OTHER = "other"

#: What a kept label value looks like (a command name such as
#: ``decom.disk_erase``).
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")

#: The largest byte count taken from one result: a peer claiming more is
#: counted as this much (no disk set is larger), so one message cannot
#: throw a counter out of all proportion.
MAX_RESULT_BYTES = 1 << 60

#: Methods whose results report erased bytes and written bytes.
ERASE_METHOD = "decom.disk_erase"
WRITE_METHOD = "standbye.prepare_image"


class LabelValues:
    """Free-text label values, bounded (see the module docstring)."""

    def __init__(self, limit=64, known=()):
        self.limit = limit
        self._kept = set(known)

    def __call__(self, value):
        if not isinstance(value, str) or not _LABEL_VALUE.match(value):
            return OTHER
        if value in self._kept:
            return value
        if len(self._kept) >= self.limit:
            return OTHER
        self._kept.add(value)
        return value


def _count(value):
    """``value`` as a byte count: a non-negative int, capped; else 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return min(value, MAX_RESULT_BYTES)


def bytes_erased(result):
    """The bytes a ``decom.disk_erase`` result reports erased: the sum of
    ``bytes`` over its ``devices`` whose ``outcome`` is ``erased``."""
    if not isinstance(result, dict) or \
            not isinstance(result.get("devices"), list):
        return 0
    total = sum(_count(entry.get("bytes")) for entry in result["devices"]
                if isinstance(entry, dict)
                and entry.get("outcome") == "erased")
    return min(total, MAX_RESULT_BYTES)


def bytes_written(result):
    """The bytes a ``standbye.prepare_image`` result reports written to
    the device (``bytes_written``)."""
    if not isinstance(result, dict):
        return 0
    return _count(result.get("bytes_written"))


def result_bytes(method, result):
    """``(erased, written)`` bytes of one finished task's result (or of a
    failed task's details, where a failed erase lists its devices)."""
    if method == ERASE_METHOD:
        return bytes_erased(result), 0
    if method == WRITE_METHOD:
        return 0, bytes_written(result)
    return 0, 0
