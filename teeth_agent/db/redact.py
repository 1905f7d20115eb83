"""What of a task's params and results may be stored: secrets redacted.

A command's params may carry credentials: signed download URLs
(``temp_url_sig``, ``X-Amz-Signature``, user information), passwords in a
config drive's ``meta_data`` (``admin_pass``), tokens, keys. Nothing in the
params declarations of the agent's commands marks a field secret, and the
endpoint does not know every command an agent serves, so the rule is
structural and errs on the side of hiding:

* a field whose name looks like a credential
  (:func:`teeth_agent.fetch.urls.is_sensitive_name`, the URL rule's own
  test) or says password in another way (``pass``, ``pwd``, ``private``:
  ``admin_pass``) has its value replaced by :data:`REDACTED`;
* the fields that carry whole documents a tenant writes
  (:data:`OPAQUE_FIELDS`: ``user_data``, ``config_drive``, ``files``,
  ``vendor_data``) are replaced by ``"<redacted: N bytes>"``;
* every string that is an ``http(s)://`` URL goes through
  :func:`teeth_agent.fetch.urls.redact` (one URL rule, one place);
* nesting deeper than :data:`MAX_DEPTH` is cut.
"""

import json
import re

from teeth_agent.fetch import urls

REDACTED = "***"
#: Fields whose whole value is a tenant's document.
OPAQUE_FIELDS = frozenset(("user_data", "config_drive", "files",
                           "vendor_data"))
MAX_DEPTH = 16
# What the URL rule does not catch because a query parameter rarely says it.
_MORE_SENSITIVE = re.compile(r"pass|pwd|private", re.I)
_URL_PREFIXES = ("http://", "https://")


def _size(value):
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    return len(json.dumps(value, default=str))


def redact(value, depth=0):
    """A copy of ``value`` (JSON-like) with its secrets redacted."""
    if depth > MAX_DEPTH:
        return "<redacted: nested too deep>"
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            name = str(key)
            if name in OPAQUE_FIELDS and item is not None:
                kept[name] = "<redacted: %d bytes>" % _size(item)
            elif (urls.is_sensitive_name(name)
                  or _MORE_SENSITIVE.search(name)) and \
                    item is not None and not isinstance(item, bool):
                kept[name] = REDACTED
            else:
                kept[name] = redact(item, depth + 1)
        return kept
    if isinstance(value, (list, tuple)):
        return [redact(item, depth + 1) for item in value]
    if isinstance(value, str) and value[:8].lower().startswith(
            _URL_PREFIXES):
        return urls.redact(value)
    return value
