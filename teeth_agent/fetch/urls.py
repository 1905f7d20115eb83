"""The URL rules, in one place: which URLs the agent downloads from, and
how a URL is shown in logs and messages.

``check(url)``
    Raises :class:`InvalidURL` unless ``url`` is ``http://`` or
    ``https://`` (:data:`SCHEMES`) with a host. Used for the URLs a command
    gives (:class:`teeth_agent.params.URL`) and for every redirect target
    (:mod:`teeth_agent.fetch.download`).

``redact(url) -> str``
    ``url`` as it may be logged or put in a task message: user
    information becomes ``***`` and so does the value of every query
    parameter whose name looks like a credential (signatures, tokens,
    keys, passwords: ``temp_url_sig``, ``X-Amz-Signature``, ``sig``,
    ``access_token``, ...), and the fragment. Every place that logs or
    raises a download URL goes through it.
"""

import re
import urllib.parse

#: The schemes downloads may use.
SCHEMES = ("http", "https")
# Query parameter names whose values are credentials (matched anywhere in
# the name, case-insensitively): over-redacting costs nothing.
_SENSITIVE_PARAM = re.compile(
    r"sig|token|secret|passw|credential|key|auth|session|policy", re.I)
# What a URL may not hold as such: spaces, control characters, non-ASCII.
_UNSAFE_URL_CHARACTER = re.compile(r"[^\x21-\x7e]")


class InvalidURL(ValueError):
    """A URL the agent does not download from; ``reason`` says why without
    the URL, the message says it with the URL redacted."""

    def __init__(self, reason, url, sentence=None):
        super().__init__("%s: %s" % (sentence or reason, redact(url)))
        self.reason = reason


def check(url):
    """Raise :class:`InvalidURL` unless ``url`` is http(s) with a host and
    made of printable ASCII only (RFC 3986; anything else is
    percent-encoded). Raw, a control character could put a line break or a
    terminal escape into a log, and makes ``http.client`` refuse the URL
    with an error that quotes its query, credentials included."""
    if _UNSAFE_URL_CHARACTER.search(str(url)):
        raise InvalidURL(
            "may hold only printable ASCII characters (percent-encode the "
            "others)", url, "a URL may hold only printable ASCII characters "
            "(percent-encode the others)")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in SCHEMES:
        raise InvalidURL("only %s URLs are allowed"
                         % " and ".join(s + "://" for s in SCHEMES), url)
    if not parsed.hostname:
        raise InvalidURL("has no host", url, "URL has no host")


def redact(url):
    """``url`` with its credentials replaced by ``***`` (see the module
    documentation); what cannot be parsed is not shown at all. Characters
    other than printable ASCII are shown percent-encoded, so a URL cannot
    put a newline or a terminal escape into a log line."""
    url = _UNSAFE_URL_CHARACTER.sub(
        lambda match: urllib.parse.quote(match.group(), safe=""), str(url))
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<a URL that cannot be parsed>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    fields = []
    for field in parts.query.split("&") if parts.query else ():
        name, equals, value = field.partition("=")
        if equals and value and _SENSITIVE_PARAM.search(
                urllib.parse.unquote_plus(name)):
            field = name + "=***"
        elif not equals and _SENSITIVE_PARAM.search(
                urllib.parse.unquote_plus(name)):
            field = "***"
        fields.append(field)
    return urllib.parse.urlunsplit((
        parts.scheme, netloc, parts.path, "&".join(fields),
        "***" if parts.fragment else ""))


def is_sensitive_name(name):
    """Whether a parameter called ``name`` looks like it holds a credential
    (the rule :func:`redact` applies to query parameters)."""
    return bool(_SENSITIVE_PARAM.search(str(name)))
