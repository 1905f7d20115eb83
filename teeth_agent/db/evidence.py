"""Erasure records from a ``disk_erase`` task's final state.

The task's result (``complete``) or details (``error``) lists one entry
per device: ``path``, ``outcome``, ``method``, ``nist_category``,
``verified`` and, from agents that report them, ``serial``, ``model``,
``wwn``, ``firmware``, ``size_bytes``, ``verification``, ``started_at``,
``ended_at``, ``tool`` and ``tool_version``. Each becomes one record; a
field that is missing or of the wrong type is left empty (the whole entry
is kept in ``record`` anyway), so an older or a hostile agent cannot make
the endpoint fail to store the rest.
"""

import datetime
import math

#: Methods whose final states carry erasure evidence.
ERASE_METHODS = ("decom.disk_erase",)
MAX_DEVICES = 4096
_TEXT_LIMIT = 255
_ERROR_LIMIT = 4096


def _text(value, limit=_TEXT_LIMIT):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        return None
    return value[:limit]


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _time(value):
    """Epoch seconds from a number or an ISO 8601 text (with an offset,
    else taken as UTC); None for anything else."""
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value[:64])
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.timestamp()
    return _number(value)


def _size(value):
    number = _number(value)
    if number is None or number < 0 or number >= 2 ** 63:
        return None
    return int(number)


def _verification(entry):
    value = entry.get("verification")
    if isinstance(value, dict):
        return value
    kept = {key: entry[key] for key in (
        "verified", "blocks_checked", "verify_problems") if key in entry}
    return kept or None


def _tool(entry):
    tool = entry.get("tool")
    if isinstance(tool, dict):
        return _text(tool.get("name")), _text(tool.get("version"))
    return _text(tool), _text(entry.get("tool_version"))


def device_entries(method, status):
    """The per-device entries of a final ``status`` of ``method`` (a
    list, empty for other methods or a malformed result)."""
    if method not in ERASE_METHODS:
        return []
    body = status.get("result") if status.get("state") == "complete" \
        else status.get("details")
    devices = body.get("devices") if isinstance(body, dict) else None
    if not isinstance(devices, list):
        return []
    return [entry for entry in devices[:MAX_DEVICES]
            if isinstance(entry, dict) and isinstance(entry.get("path"), str)
            and entry["path"]]


def record_columns(entry):
    """The erasure table's columns for one device entry."""
    tool, tool_version = _tool(entry)
    verified = entry.get("verified")
    return {
        "device": entry["path"][:_TEXT_LIMIT],
        "outcome": _text(entry.get("outcome"), 32),
        "method": _text(entry.get("method"), 64),
        "nist_category": _text(entry.get("nist_category"), 16),
        "verified": verified if isinstance(verified, bool) else None,
        "verification": _verification(entry),
        "serial": _text(entry.get("serial")),
        "model": _text(entry.get("model")),
        "wwn": _text(entry.get("wwn")),
        "firmware": _text(entry.get("firmware")),
        "size_bytes": _size(entry.get("size_bytes")),
        "tool": tool,
        "tool_version": tool_version,
        "error": _text(entry.get("error") or entry.get("reason"),
                       _ERROR_LIMIT),
        "started_at": _time(entry.get("started_at")),
        "ended_at": _time(entry.get("ended_at")),
        "record": entry,
    }
