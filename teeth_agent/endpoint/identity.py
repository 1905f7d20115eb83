"""Agent identity: the agent_id from a client certificate, or a session
token the endpoint hands out and keeps only as its SHA-256."""

import hashlib
import hmac
import json
import os
import secrets
import tempfile

from teeth_agent.endpoint import errors
from teeth_agent import pki


IDENTITY_TOKEN = "token"
IDENTITY_CERTIFICATE = "certificate"
IDENTITIES = (IDENTITY_TOKEN, IDENTITY_CERTIFICATE)
#: The SAN URI scheme of an agent's client certificate.
CERT_URI_PREFIX = pki.AGENT_URI_SCHEME + ":"
#: The SAN URI scheme of an endpoint's certificate (never an agent's).
ENDPOINT_URI_PREFIX = pki.ENDPOINT_URI_SCHEME + ":"
#: The file in ``state_dir`` that keeps the session-token hashes.
TOKEN_FILE = "agent-tokens.json"
#: Bytes of randomness in a session token (256 bits).
TOKEN_BYTES = 32


def agent_id_from_certificate(peercert):
    """The agent_id a client certificate names, or None.

    ``peercert`` is what ``SSLSocket.getpeercert()`` returns. A SAN URI
    ``teeth-agent:<agent_id>`` wins; without one the subject's common name
    is taken. Two different SAN URIs make the certificate ambiguous: None.
    An endpoint's certificate (SAN URI ``teeth-endpoint:...``, see
    :func:`teeth_agent.pki.is_endpoint_certificate`) names no agent: None.
    """
    if not peercert:
        return None
    if any(kind == "URI" and value.startswith(ENDPOINT_URI_PREFIX)
           for kind, value in peercert.get("subjectAltName") or ()):
        return None
    names = {value[len(CERT_URI_PREFIX):]
             for kind, value in peercert.get("subjectAltName") or ()
             if kind == "URI" and value.startswith(CERT_URI_PREFIX)}
    names.discard("")
    if len(names) == 1:
        return names.pop()
    if names:
        return None
    for rdn in peercert.get("subject") or ():
        for key, value in rdn:
            if key == "commonName" and value:
                return value
    return None


def hash_token(token):
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The session tokens of agents, kept as SHA-256 hashes only.

    With a ``path`` the hashes are loaded at start and saved (atomically,
    mode 0600) by :meth:`flush` when they changed, so identities survive an
    endpoint restart; without one they live in memory only.
    """

    def __init__(self, path=None):
        self.path = path
        self._hashes = {}
        self.dirty = False

    def __len__(self):
        return len(self._hashes)

    def __contains__(self, agent_id):
        return agent_id in self._hashes

    def issue(self, agent_id):
        """A new random token for ``agent_id`` (replacing any old one)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._hashes[agent_id] = hash_token(token)
        self.dirty = True
        return token

    def verify(self, agent_id, token):
        """True when ``token`` is the agent's token (constant time)."""
        known = self._hashes.get(agent_id)
        if known is None or not isinstance(token, str):
            return False
        return hmac.compare_digest(known, hash_token(token))

    def forget(self, agent_id):
        if self._hashes.pop(agent_id, None) is not None:
            self.dirty = True

    def load(self):
        """Read the saved hashes; a missing file is an empty store."""
        if self.path is None:
            return
        try:
            with open(self.path, encoding="utf-8") as stream:
                data = json.load(stream)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise errors.EndpointConfigError(
                "cannot read the agent tokens in %s: "
                "%s" % (self.path, exc)) from None
        hashes = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(hashes, dict):
            raise errors.EndpointConfigError(
                "%s holds no agent tokens" % self.path)
        self._hashes = {str(key): str(value)
                        for key, value in hashes.items()}
        self.dirty = False

    def snapshot(self):
        """A copy of the hashes to :meth:`write`; the store counts as saved
        from here on (set ``dirty`` again when the write fails)."""
        self.dirty = False
        return dict(self._hashes)

    def write(self, hashes):
        """Save ``hashes`` atomically (temporary file, fsync, rename), mode
        0600. Safe to run in another thread: it touches only its argument.
        """
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".tokens-", dir=directory)
        try:
            os.fchmod(handle, 0o600)
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump({"version": 1, "tokens": hashes}, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise

    def flush(self):
        """Save the hashes when they changed since the last save."""
        if self.path is None or not self.dirty:
            return
        try:
            self.write(self.snapshot())
        except BaseException:
            self.dirty = True
            raise
