"""The dashboard's login: one access token, kept as its SHA-256.

``teeth-endpoint dashboard-token`` makes a random token (256 bits),
prints it once and writes only its SHA-256 (hex) to
``[endpoint] state_dir``/``dashboard-token.sha256`` (mode 0600). A
request proves it with ``Authorization: Bearer TOKEN`` (Prometheus'
``bearer_token``) or HTTP Basic with any user name and the token as the
password (what a browser asks for). The hashes are compared in constant
time. The token is random and long, so a plain hash is as good as a slow
one here, and it lets every request be checked without slowing the
endpoint down.
"""

import base64
import binascii
import hashlib
import hmac
import os
import secrets

from teeth_agent.conf import dashboard as conf_dashboard
from teeth_agent.endpoint import errors


class TokenFileError(errors.EndpointConfigError):
    """The token file is missing, unreadable or malformed."""


def token_path(state_dir):
    return os.path.join(state_dir, conf_dashboard.TOKEN_FILE)


def digest(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_token(state_dir):
    """Make a token, write its hash (mode 0600, replacing an older one)
    and return the token."""
    if not state_dir:
        raise TokenFileError(
            "[endpoint] state_dir is empty: the dashboard token's hash is "
            "kept there")
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path = token_path(state_dir)
    temporary = path + ".new"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(digest(token) + "\n")
    os.replace(temporary, path)
    return token


def load_hash(state_dir):
    """The stored hash. Raises :class:`TokenFileError`."""
    path = token_path(state_dir) if state_dir else None
    if path is None or not os.path.exists(path):
        raise TokenFileError(
            "the dashboard needs a login here but %s has no token: run "
            "teeth-endpoint dashboard-token first"
            % (path or "an empty [endpoint] state_dir"))
    try:
        with open(path) as handle:
            stored = handle.read().strip()
    except OSError as exc:
        raise TokenFileError("cannot read the dashboard token file %s: %s"
                             % (path, exc.strerror)) from None
    if len(stored) != 64 or any(c not in "0123456789abcdef" for c in stored):
        raise TokenFileError(
            "the dashboard token file %s does not hold a SHA-256; run "
            "teeth-endpoint dashboard-token to make a new token" % path)
    return stored


def presented_token(header):
    """The token an ``Authorization`` header presents, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, sep, password = decoded.partition(":")
        return password if sep and password else None
    return None


def authorized(header, stored_hash):
    """Whether the ``Authorization`` header proves the token."""
    token = presented_token(header)
    if token is None:
        return False
    return hmac.compare_digest(digest(token), stored_hash)
