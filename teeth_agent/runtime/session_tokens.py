"""The session tokens endpoints gave this agent, kept across restarts.

An endpoint may answer the first handshake of an ``agent_id`` with a
``session_token``; from then on it only accepts handshakes for that id that
send the token back. The agent keeps one token per endpoint (as configured,
``host:port``) for its own ``agent_id``, in memory and, when a state
directory is configured, in one file there: written atomically (a new file
then a rename, so a crash leaves the old or the new token, never half of
one) with mode 0600 (the token is a credential).

Several endpoint processes at different addresses may share one database
and so one token per agent: a token issued by one of them is what the
others ask for. So the handshake to an endpoint of the agent's
``endpoints`` list for which the agent holds no token carries the newest
token it holds for any endpoint of that list (:meth:`SessionTokens.
for_handshake`); an endpoint that lets the agent in with it keeps it as
its own (:meth:`SessionTokens.accepted`), and a token newly issued in place
of an old one replaces that old one wherever the agent holds it (the same
fleet forgot the agent and issued a new one). The trade-off (an endpoint of
the list sees the others' token) is in docs/security.md.

A file that cannot be read, is garbled or was written for another
``agent_id`` is not trusted: the agent logs a WARNING and starts without a
token (the endpoint then decides whether to accept it).
"""

import errno
import json
import logging
import os
import stat
import tempfile

LOG = logging.getLogger(__name__)

FILE_NAME = "session-tokens.json"

#: Tokens longer than this, or not printable ASCII, are refused: the value
#: comes from the network and is written to disk and sent back.
MAX_TOKEN_LENGTH = 1024


def valid_token(token):
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_LENGTH \
        and all(" " < char < "\x7f" for char in token)


class SessionTokens:
    """The tokens of one ``agent_id``, by endpoint."""

    def __init__(self, agent_id, state_dir=None):
        self.agent_id = agent_id
        self.state_dir = state_dir or None
        self._tokens = {}
        if self.state_dir:
            self._load()

    @property
    def path(self):
        return os.path.join(self.state_dir, FILE_NAME) if self.state_dir \
            else None

    def get(self, endpoint):
        """The token held for ``endpoint`` (``"host:port"``), or None."""
        return self._tokens.get(endpoint)

    def for_handshake(self, endpoint, fleet=()):
        """The token to send to ``endpoint``: its own, else (when it is
        one of ``fleet``, the agent's ``endpoints`` list as ``"host:port"``
        values) the newest held for an endpoint of ``fleet``, else None."""
        own = self._tokens.get(endpoint)
        if own is not None:
            return own
        members = set(fleet)
        if endpoint not in members:
            return None
        # The dict keeps the order tokens were set in: the newest last.
        for held, token in reversed(list(self._tokens.items())):
            if held in members:
                return token
        return None

    def set(self, endpoint, token):
        """Keep ``token`` for ``endpoint``, newly issued by it: it replaces
        the endpoint's old one, and that old one wherever else it is held
        (those endpoints shared it: they share the database that issued
        the new one).

        Returns False (and keeps the old one) when the token is not a
        printable string of at most :data:`MAX_TOKEN_LENGTH` characters.
        A token that cannot be written to disk is still kept in memory.
        """
        if not valid_token(token):
            LOG.warning("ignoring the session token offered by %s: not a "
                        "printable string of at most %d characters",
                        endpoint, MAX_TOKEN_LENGTH)
            return False
        old = self._tokens.get(endpoint)
        if old == token:
            return True
        if old is not None:
            for held in [held for held, value in self._tokens.items()
                         if value == old]:
                del self._tokens[held]
                self._tokens[held] = token
        self._keep(endpoint, token)
        return True

    def accepted(self, endpoint, token):
        """``endpoint`` let the agent in with ``token`` (sent by
        :meth:`for_handshake`) and issued none: keep it as the endpoint's
        own."""
        if token is None or self._tokens.get(endpoint) == token:
            return
        self._keep(endpoint, token)

    def _keep(self, endpoint, token):
        self._tokens.pop(endpoint, None)
        self._tokens[endpoint] = token
        if self.state_dir:
            self._save()

    # -- the file -------------------------------------------------------------

    def _load(self):
        try:
            # Never through a symbolic link (it could make the agent read
            # and chmod a file elsewhere), never a FIFO or device (which
            # could block the start-up): a regular file or nothing.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW
                         | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            reason = ("it is a symbolic link" if exc.errno == errno.ELOOP
                      else exc)
            LOG.warning("cannot read the session tokens in %s (%s); "
                        "starting without a token", self.path, reason)
            return
        try:
            with os.fdopen(fd, "rb") as stream:
                mode = os.fstat(stream.fileno()).st_mode
                if not stat.S_ISREG(mode):
                    raise ValueError("not a regular file")
                if mode & 0o077:
                    # Copied with the wrong mode (by hand, from a backup):
                    # the token may have been read; keep it from now on.
                    LOG.warning("the session token file %s was readable by "
                                "other users (mode %o); restricting it to "
                                "0600", self.path, mode & 0o777)
                    os.fchmod(stream.fileno(), 0o600)
                data = json.loads(stream.read().decode("utf-8"))
        except (OSError, ValueError) as exc:
            LOG.warning("cannot read the session tokens in %s (%s); "
                        "starting without a token", self.path, exc)
            return
        if not isinstance(data, dict) or \
                not isinstance(data.get("tokens"), dict):
            LOG.warning("the session token file %s is garbled; starting "
                        "without a token", self.path)
            return
        if data.get("agent_id") != self.agent_id:
            LOG.warning("the session token file %s belongs to agent_id %s, "
                        "not %s; starting without a token", self.path,
                        json.dumps(data.get("agent_id"))[:300],
                        self.agent_id)
            return
        tokens = {endpoint: token
                  for endpoint, token in data["tokens"].items()
                  if valid_token(token)}
        if len(tokens) != len(data["tokens"]):
            LOG.warning("ignoring %d garbled token(s) in %s",
                        len(data["tokens"]) - len(tokens), self.path)
        self._tokens = tokens

    def _save(self):
        # Not sorted: the order of the tokens is the order they were set
        # in (for_handshake takes the newest).
        data = json.dumps({"agent_id": self.agent_id,
                           "tokens": self._tokens})
        tmp = None
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            # mkstemp creates the file with mode 0600, before a byte of the
            # token is in it.
            fd, tmp = tempfile.mkstemp(prefix=".session-tokens-",
                                       dir=self.state_dir)
            with os.fdopen(fd, "w") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(tmp, self.path)
            tmp = None
            _fsync_dir(self.state_dir)
        except OSError as exc:
            LOG.warning("cannot record the session token in %s: %s; it is "
                        "kept in memory only", self.state_dir, exc)
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
