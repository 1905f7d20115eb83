"""The endpoint: the server side of the protocol, as a library.

An :class:`Endpoint` accepts agents (plaintext, TLS or mutual TLS), tracks
them by ``agent_id``, answers ``ping``, ``handshake``, ``log`` and
``task_status``, calls methods on agents with timeouts, and lets callers
subscribe to events or wait for a task to end. It runs on the transport's
hub: one process holds thousands of agents, each costing one green thread
and a socket.

Identity (``agent_identity``): with ``certificate`` the agent_id comes from
the client certificate of a mutual-TLS link; with ``token`` the first
handshake of an agent_id is answered with a ``session_token`` that every
later handshake of that id must present (only its SHA-256 is kept). A link
that cannot prove the identity never replaces a live one, and task states
are recorded only from the link that owns the agent. Everything an agent can
make the endpoint remember is bounded (tasks, logs, agents, connections).

Use from green threads (the console script, tests running on the hub)::

    endpoint = Endpoint(port=0)
    endpoint.start()
    agent = endpoint.wait_for_agent(timeout=30)
    endpoint.call(agent.agent_id, "decom.qc", {"task_id": "t1", "spec": {}})
    final = endpoint.wait_for_task(agent.agent_id, "t1", timeout=600)
"""

# Size: 940 lines, over the ~500 guideline: the Endpoint class (712 lines) is
# one object whose methods share its locks and books; errors, identity and the
# bounded books live in their own modules.

import collections
import json
import logging
import os
import resource
import socket
import ssl
import stat
import time

from teeth_agent import commands
from teeth_agent.conf import tls as conf_tls
from teeth_agent.endpoint import books
from teeth_agent.endpoint import errors
from teeth_agent.endpoint import identity as endpoint_identity
from teeth_agent.endpoint import persistence as persistence_mod
from teeth_agent import params as params_mod
from teeth_agent import protocol
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

LOG = logging.getLogger(__name__)


#: Kept violations per agent (the newest ones).
MAX_VIOLATIONS = 100


#: The longest agent_id accepted: it is a key of every book, of the token
#: file and of every listing, so an agent cannot make it bulk (what it
#: holds is shown escaped, see :func:`printable`).
MAX_AGENT_ID_LENGTH = 256


#: Open files the endpoint needs besides its agents' sockets.
FILE_HEADROOM = 256


#: The smallest max_line_length an agent accepts in a handshake answer
#: (the agent's MIN_PEER_LINE_LENGTH); a lower one would cut every agent off.
MIN_LINE_LENGTH = 4096
#: The ``session`` of an inbound command (:class:`commands.CommandSpec`)
#: that only a connection that has not made its handshake may send.
SESSION_HANDSHAKE = "handshake"
#: The ``session`` of an inbound command that only the connection that owns
#: a handshaken agent may send; its handler gets the agent.
SESSION_AGENT = "agent"


def _as_sent(doc):
    """A field the endpoint takes as the agent sent it (any value, null
    included; left out when missing): declared for its ``doc``."""
    return params_mod.Any(nullable=True, default=params_mod.OMIT, doc=doc)


def _is_running_status(command):
    """Whether ``command`` is an agent's ``running`` task update."""
    params = command.params
    return command.method == "task_status" and isinstance(params, dict) \
        and params.get("state") == "running"


def handshake_summary(status):
    """What is kept of a task a handshake lists: its summary only (the
    protocol's summary fields, of their types, ``msg`` cut), so a handshake
    cannot leave results or bulk behind; the full final status comes in
    ``task_status``."""
    kept = {"task_id": status["task_id"], "state": status["state"]}
    method = status.get("method")
    if isinstance(method, str) and len(method) <= books.MAX_TASK_ID_LENGTH:
        kept["method"] = method
    percent = status.get("percent")
    if isinstance(percent, (int, float)) and not isinstance(percent, bool):
        kept["percent"] = percent
    if status["state"] == tasks_mod.ERROR:
        msg = status.get("msg")
        kept["msg"] = msg[:books.LOG_TEXT_LIMIT] if isinstance(
            msg, str) else None
    return kept


class AgentHandle:
    """What the endpoint knows about one agent (kept across its links)."""

    def __init__(self, agent_id, connection, handshake, identity=None,
                 task_history=books.DEFAULTS["task_history"],
                 running_task_limit=books.DEFAULTS["running_task_limit"],
                 log_history=books.DEFAULTS["log_history"],
                 log_history_bytes=books.DEFAULTS["log_history_bytes"],
                 task_history_bytes=books.DEFAULTS["task_history_bytes"]):
        self.agent_id = agent_id
        self.connection = connection
        self.handshake = handshake
        self.identity = identity or endpoint_identity.IDENTITY_TOKEN
        self.connected_at = time.time()
        self.last_seen_at = self.connected_at
        #: The endpoint process holding the link (None: disconnected).
        self.process = None
        self.disconnected_at = None
        self.book = books.TaskBook(task_history, running_task_limit,
                                   task_history_bytes)
        self.task_updates = collections.Counter()
        self.violations = collections.deque(maxlen=MAX_VIOLATIONS)
        self.logs = books.LogBook(log_history, log_history_bytes)
        self.refused_running = 0

    @property
    def tasks(self):
        """task_id -> latest status (bounded, see :class:`TaskBook`)."""
        return self.book.tasks

    @property
    def connected(self):
        return self.connection is not None and not self.connection.closed

    @property
    def tls(self):
        return bool(self.connection is not None
                    and self.connection.user_data.get("tls"))

    def violation(self, text):
        self.violations.append(text)
        LOG.warning("agent %s: %s", books.printable(self.agent_id),
                    books.printable(text))

    def describe(self, full=True):
        """A JSON-able description; ``full=False`` lists tasks as
        summaries (what the control socket's listing sends)."""
        tasks = list(self.book.values())
        if not full:
            tasks = [books.task_summary(status) for status in tasks]
        return {
            "agent_id": self.agent_id,
            "connected": self.connected,
            "peer": self.connection.name if self.connection else None,
            "tls": self.tls,
            "identity": self.identity,
            "connected_at": self.connected_at,
            "last_seen": time.time() if self.connected else
            self.last_seen_at,
            "process": self.process if self.connected else None,
            "agent_version": self.handshake.get("agent_version"),
            "hardware": self.handshake.get("hardware"),
            "extensions": self.handshake.get("extensions"),
            "tasks": tasks,
            "log_records": len(self.logs),
            "violations": list(self.violations),
        }


class Endpoint:
    """Accepts agents and talks to them. See the module docstring."""

    #: Inbound methods answered without a green thread of their own: their
    #: handlers (and the subscribers they call) never block.
    INLINE_METHODS = ("ping", "handshake", "task_status", "log")

    def __init__(self, host="127.0.0.1", port=9999, tls_context=None,
                 max_line_length=protocol.DEFAULT_MAX_LINE_LENGTH,
                 call_timeout=30.0, handshake_timeout=30.0,
                 keepalive_interval=30.0, keepalive_timeout=30.0,
                 max_connections_per_address=books.DEFAULTS[
                     "max_connections_per_address"],
                 max_connections=books.DEFAULTS["max_connections"],
                 agent_identity=books.DEFAULTS["agent_identity"],
                 state_dir=None,
                 task_history=books.DEFAULTS["task_history"],
                 task_history_bytes=books.DEFAULTS["task_history_bytes"],
                 running_task_limit=books.DEFAULTS["running_task_limit"],
                 log_history=books.DEFAULTS["log_history"],
                 log_history_bytes=books.DEFAULTS["log_history_bytes"],
                 forget_after=books.DEFAULTS["forget_after"],
                 max_agents=books.DEFAULTS["max_agents"],
                 line_idle_timeout=books.DEFAULTS["line_idle_timeout"],
                 store=None, reuse_port=False):
        if agent_identity not in endpoint_identity.IDENTITIES:
            raise errors.EndpointConfigError(
                "agent_identity must be one of %s"
                % ", ".join(endpoint_identity.IDENTITIES))
        if agent_identity == endpoint_identity.IDENTITY_CERTIFICATE and (
                tls_context is None
                or tls_context.verify_mode != ssl.CERT_REQUIRED):
            raise errors.EndpointConfigError(
                "agent_identity = certificate needs mutual TLS: set "
                "[endpoint] tls_enabled and tls_require_client_cert (with "
                "tls_ca_file naming the authority of the agents' "
                "certificates)")
        if max_line_length < MIN_LINE_LENGTH:
            raise errors.EndpointConfigError(
                "max_line_length must be at least %d: agents refuse a "
                "smaller limit" % MIN_LINE_LENGTH)
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.max_line_length = max_line_length
        self.call_timeout = call_timeout
        self.handshake_timeout = handshake_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.max_per_address = max_connections_per_address
        self.max_connections = max_connections
        self.agent_identity = agent_identity
        self.task_history = task_history
        self.task_history_bytes = task_history_bytes
        self.running_task_limit = running_task_limit
        self.log_history = log_history
        self.log_history_bytes = log_history_bytes
        self.forget_after = forget_after
        self.max_agents = max_agents
        self.line_idle_timeout = line_idle_timeout
        self.reuse_port = reuse_port
        self.state_dir = state_dir or None
        self.tokens = endpoint_identity.TokenStore(
            os.path.join(state_dir, endpoint_identity.TOKEN_FILE)
            if state_dir else None)
        self.agents = {}
        # Disconnected agents, the one gone longest first.
        self._gone = collections.OrderedDict()
        self.connections = set()
        # Shared by every agent connection (the metrics read it).
        self.message_stats = transport.MessageStats()
        self._admitted = 0
        self._per_address = collections.Counter()
        self._subscribers = []
        self._changed = transport.Event()
        self._listener = None
        self._acceptor = None
        self._reaper = None
        self._last_sweep = transport.monotonic()
        self._state_loaded = False
        # The database (teeth_agent.db.store.Store), or memory only.
        self.persistence = persistence_mod.Persistence(
            store, commit_timeout=call_timeout) if store is not None else None
        self.process_name = "%s:%d" % (socket.gethostname(), os.getpid())
        self.commands = commands.CommandTable.of(self)

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def from_conf(cls, conf):
        group = conf.endpoint
        tls_settings = conf_tls.endpoint_settings(conf)
        tls_context = (transport.server_tls_context(**tls_settings)
                       if tls_settings is not None else None)
        return cls(host=group.listen_host, port=group.listen_port,
                   tls_context=tls_context,
                   max_line_length=group.max_line_length,
                   call_timeout=group.call_timeout,
                   handshake_timeout=group.handshake_timeout,
                   keepalive_interval=group.keepalive_interval,
                   keepalive_timeout=group.keepalive_timeout,
                   max_connections_per_address=(
                       group.max_connections_per_address),
                   reuse_port=group.reuse_port,
                   store=persistence_mod.store_from_conf(conf),
                   **trust_options(group)).load_state()

    def load_state(self):
        """Read the saved session-token hashes (once); returns self.

        Raises :class:`EndpointConfigError` when the file is unreadable.
        """
        if not self._state_loaded:
            if self.state_dir is not None:
                self._make_state_dir()
            elif self.agent_identity == endpoint_identity.IDENTITY_TOKEN \
                    and self.persistence is None:
                LOG.warning("[endpoint] state_dir is empty: session tokens "
                            "are kept in memory only, and after a restart "
                            "the first handshake of every agent_id is "
                            "trusted on first use")
            if self.persistence is not None:
                self.persistence.open(self)
                self.process_name = self.persistence.process_name
            else:
                self.tokens.load()
            self._state_loaded = True
        return self

    def _make_state_dir(self):
        """Create ``state_dir`` (mode 0700) when missing. An existing one
        is used as it is (it may be shared with other files); the token
        file in it is mode 0600 whatever the directory's mode."""
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            mode = os.stat(self.state_dir).st_mode
        except OSError as exc:
            raise errors.EndpointConfigError(
                "cannot create the state_dir %s: %s"
                % (self.state_dir, exc)) from None
        if not stat.S_ISDIR(mode):
            raise errors.EndpointConfigError(
                "the state_dir %s is not a directory"
                % self.state_dir)
        if mode & 0o022:
            LOG.warning("the state_dir %s may be written by other users "
                        "(mode %o): they could replace the agent tokens; "
                        "make it mode 0700", self.state_dir,
                        stat.S_IMODE(mode))

    def start(self):
        """Listen and accept in the background; returns the bound port."""
        self.load_state()
        self._listener = transport.listen(self.host, self.port,
                                          reuse_port=self.reuse_port)
        self.port = self._listener.getsockname()[1]
        # The TLS handshake runs in _on_socket, after the connection has
        # been counted against the limits, so a flood of half-done TLS
        # handshakes is bounded too.
        self._acceptor = transport.spawn(
            transport.accept_loop, self._listener, self._on_socket,
            None, self.handshake_timeout, self._admit)
        self._reaper = transport.spawn(self._keepalive_loop)
        if self.persistence is not None:
            self.persistence.start(self)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if self.max_connections and soft != resource.RLIM_INFINITY and \
                soft < self.max_connections + FILE_HEADROOM:
            LOG.warning("max_connections is %d but the open-file limit is "
                        "%d: agents past about %d will fail to connect "
                        "(lower max_connections or raise the limit)",
                        self.max_connections, soft, soft - FILE_HEADROOM)
        LOG.info("endpoint listening on %s:%d%s, agent identity: %s",
                 self.host, self.port,
                 " (TLS)" if self.tls_context else " (plaintext)",
                 self.agent_identity)
        return self.port

    def stop(self):
        for thread in (self._acceptor, self._reaper):
            if thread is not None:
                thread.kill()
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.close("endpoint stopping")
        self._flush_tokens()
        if self.persistence is not None:
            self.persistence.stop()

    def subscribe(self, callback):
        """``callback(event, agent, data)`` for every event: ``handshake``,
        ``task_status``, ``log``, ``disconnect``, ``refused`` (a link
        refused at its handshake: ``agent`` is the agent it claimed, or
        None when unknown; ``data`` has ``agent_id``, ``reason``, ``peer``
        and ``live_peer``) and ``forgotten``. Called on the hub; keep it
        short and non-blocking."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback):
        self._subscribers.remove(callback)

    def _emit(self, event, agent, data):
        for callback in list(self._subscribers):
            try:
                callback(event, agent, data)
            except Exception:
                LOG.exception("endpoint subscriber failed on %s", event)
        self._changed.set()

    def _flush_tokens(self, in_thread=False):
        """Save new or forgotten tokens; ``in_thread`` writes from an OS
        thread so a large file never stalls the hub."""
        if self.tokens.path is None or not self.tokens.dirty:
            return
        hashes = self.tokens.snapshot()
        try:
            if in_thread:
                transport.run_in_thread(self.tokens.write, hashes)
            else:
                self.tokens.write(hashes)
        except OSError as exc:
            self.tokens.dirty = True
            LOG.error("cannot save the agent tokens to %s: %s",
                      self.tokens.path, exc)

    # -- connections ----------------------------------------------------------

    def _admit(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.max_connections and self._admitted >= self.max_connections:
            LOG.warning("refusing a connection from %s: the endpoint holds "
                        "%d connections (max_connections)", host,
                        self._admitted)
            return False
        if self.max_per_address and \
                self._per_address[host] >= self.max_per_address:
            LOG.warning("refusing a connection from %s: it already holds %d "
                        "(max_connections_per_address)",
                        host, self._per_address[host])
            return False
        # Counted from here, before any TLS handshake.
        self._per_address[host] += 1
        self._admitted += 1
        return True

    def _release(self, host):
        self._admitted -= 1
        self._per_address[host] -= 1
        if self._per_address[host] <= 0:
            del self._per_address[host]

    def _on_socket(self, sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        name = "%s:%s" % address[:2] if isinstance(address, tuple) else host
        if not isinstance(address, tuple):
            # In-process links (tests, tools) are not admitted by the
            # accept loop; count them here so the books stay balanced.
            self._per_address[host] += 1
            self._admitted += 1
        peercert = None
        if self.tls_context is not None:
            try:
                with transport.Timeout(self.handshake_timeout):
                    sock = self.tls_context.wrap_socket(sock,
                                                        server_side=True)
                peercert = sock.getpeercert()
            except (OSError, transport.Timeout) as exc:
                LOG.warning("TLS handshake with %s failed: %s", name,
                            exc if not isinstance(exc, transport.Timeout)
                            else "timed out")
                try:
                    sock.close()
                except OSError:
                    pass
                self._release(host)
                return
        connection = transport.Connection(
            sock, self._dispatch, name="agent at %s" % name,
            max_line_length=self.max_line_length,
            write_timeout=self.keepalive_interval + self.keepalive_timeout,
            on_close=self._on_close, inline_methods=self._inline_methods(),
            inline_if=self._inline_if(),
            line_idle_timeout=self.line_idle_timeout,
            stats=self.message_stats)
        connection.user_data["address"] = host
        connection.user_data["peer"] = name
        connection.user_data["agent"] = None
        connection.user_data["tls"] = self.tls_context is not None
        connection.user_data["cert_agent_id"] = \
            endpoint_identity.agent_id_from_certificate(peercert)
        self.connections.add(connection)
        connection.start()

    def _inline_methods(self):
        """With a database a final ``task_status`` waits for its commit:
        each one then runs in a green thread of its link's pool, so the
        finals of one link are committed together (up to the pool's
        bound, which is also the link's backpressure) instead of one
        commit after the other."""
        if self.persistence is None:
            return self.INLINE_METHODS
        return tuple(method for method in self.INLINE_METHODS
                     if method != "task_status")

    def _inline_if(self):
        """With a database, a ``running`` ``task_status`` still runs in
        the reader: only a final state waits for a commit, and a busy
        fleet's running updates are most of what it sends, and a green
        thread each is work the endpoint in memory does not do. Should one
        wait after
        all (a state the book holds as final), it holds only its own
        link's reader, as the handshake's token commit does."""
        if self.persistence is None:
            return None
        return _is_running_status

    def _on_close(self, connection, reason):
        self.connections.discard(connection)
        self._release(connection.user_data.get("address"))
        agent = connection.user_data.get("agent")
        if agent is not None and agent.connection is connection:
            agent.disconnected_at = transport.monotonic()
            agent.last_seen_at = time.time()
            agent.process = None
            self._gone.pop(agent.agent_id, None)
            self._gone[agent.agent_id] = None
            LOG.info(
                "agent %s disconnected: %s", books.printable(agent.agent_id),
                reason)
            self._emit("disconnect", agent, {"reason": reason})

    def _keepalive_loop(self):
        """Close connections that never handshake, ping idle agents, save
        new tokens, forget agents gone for ``forget_after``."""
        while True:
            transport.sleep(min(1.0, self.handshake_timeout / 4))
            now = transport.monotonic()
            for connection in list(self.connections):
                agent = connection.user_data.get("agent")
                if agent is None:
                    if now - connection.created > self.handshake_timeout:
                        connection.fatal("no handshake within %ss"
                                         % self.handshake_timeout)
                    continue
                idle = now - connection.last_received
                if idle > self.keepalive_interval and \
                        not connection.user_data.get("pinging"):
                    transport.spawn(self._ping_idle, connection)
            if now - self._last_sweep >= min(60.0, self.forget_after / 4):
                self._last_sweep = now
                self.forget_gone(now)
            self._flush_tokens(in_thread=True)

    def forget_gone(self, now=None):
        """Forget agents disconnected for more than ``forget_after``
        seconds; returns how many."""
        now = transport.monotonic() if now is None else now
        forgotten = 0
        for agent_id in list(self._gone):
            agent = self.agents.get(agent_id)
            if agent is not None and (
                    agent.connected or agent.disconnected_at is None):
                self._gone.pop(agent_id)
                continue
            if agent is not None and \
                    now - agent.disconnected_at <= self.forget_after:
                break
            self.forget(agent_id, "disconnected for more than %ss"
                        % self.forget_after)
            forgotten += 1
        return forgotten

    def forget(self, agent_id, reason="forgotten"):
        """Drop everything known about a disconnected agent, its session
        token included (its next handshake is a first use again)."""
        agent = self.agents.get(agent_id)
        if agent is not None and agent.connected:
            raise ValueError("agent %s is connected" % agent_id)
        self.agents.pop(agent_id, None)
        self._gone.pop(agent_id, None)
        self.tokens.forget(agent_id)
        LOG.info("forgot agent %s: %s", books.printable(agent_id), reason)
        if agent is not None:
            self._emit("forgotten", agent, {"reason": reason})

    def _ping_idle(self, connection):
        connection.user_data["pinging"] = True
        try:
            connection.call("ping", {"keepalive": True},
                            timeout=self.keepalive_timeout)
        except transport.CallTimeout:
            connection.close("keepalive: no answer within %ss"
                             % self.keepalive_timeout)
        except (transport.ConnectionLost, transport.RemoteError):
            pass
        finally:
            connection.user_data["pinging"] = False

    # -- inbound commands -----------------------------------------------------

    def _dispatch(self, connection, command):
        """Answer an agent's command from :attr:`commands`, after the
        checks its declared ``session`` asks for."""
        method = command.method
        if connection.closed:
            return {}
        spec = self.commands.spec(method)
        session = spec.session if spec is not None else SESSION_AGENT
        if session is None:
            return self.commands.dispatch(method, command.params, connection)
        if session == SESSION_HANDSHAKE:
            try:
                if connection.user_data.get("handshaken"):
                    raise errors.HandshakeRepeated(
                        "handshake already done on this "
                        "connection")
                return self.commands.dispatch(method, command.params,
                                              connection)
            except errors.HandshakeRefused as exc:
                self._refuse(connection, command.params, exc)
                return {}
        # An unknown method gets the checks of the agent's methods, except
        # that a link without an agent hears UnknownMethod for it.
        agent = connection.user_data.get("agent")
        if agent is None:
            if spec is not None:
                raise protocol.InvalidRequest(
                    "%s before handshake: send handshake first" % method)
            raise self.commands.unknown(method)
        if agent.connection is not connection:
            # Replaced by a newer link of the agent; only the owner speaks.
            LOG.warning("dropping %s for agent %s from %s: another link "
                        "owns the agent", method, books.printable(
                            agent.agent_id),
                        connection.name)
            raise protocol.InvalidRequest(
                "this connection does not own agent %s" % agent.agent_id)
        return self.commands.dispatch(method, command.params, agent)

    @commands.command(name="ping", extra=True)
    def _ping(self, connection, params):
        return params

    def _refuse(self, connection, params, exc):
        claimed = params.get("agent_id")
        claimed = claimed if isinstance(claimed, str) else None
        agent = self.agents.get(claimed) if claimed is not None else None
        live = agent.connection if agent is not None and agent.connected \
            and agent.connection is not connection else None
        peer = connection.user_data.get("peer") or connection.name
        live_peer = live.user_data.get("peer") if live is not None else None
        reason = str(exc)
        LOG.warning("refused handshake from %s (agent_id %s; live link: %s): "
                    "%s", peer, books.printable(claimed), live_peer or "none",
                    books.printable(reason))
        if agent is not None:
            agent.violations.append("refused a link from %s: %s"
                                    % (peer, reason))
        connection.fatal(reason)
        self._emit("refused", agent, {
            "agent_id": claimed, "reason": reason,
            "type": type(exc).__name__, "peer": peer,
            "live_peer": live_peer})

    def _prove(self, connection, agent_id, params, agent):
        """Check the link's claim to ``agent_id``.

        Returns ``(proven, new_token)``: ``proven`` when the link proved
        the identity (certificate or token), ``new_token`` when this is a
        first use and a token is issued. Raises :class:`HandshakeRefused`.
        """
        live = agent is not None and agent.connected and \
            agent.connection is not connection
        live_peer = agent.connection.user_data.get("peer") if live else None
        if self.agent_identity == endpoint_identity.IDENTITY_CERTIFICATE:
            named = connection.user_data.get("cert_agent_id")
            if named is None:
                raise errors.CertificateMismatch(
                    "handshake refused: the client certificate names no "
                    "agent_id, handshake claims %s" % agent_id)
            if named != agent_id:
                raise errors.CertificateMismatch(
                    "handshake refused: certificate names agent_id %s, "
                    "handshake claims %s" % (named, agent_id))
            return True, None
        named = connection.user_data.get("cert_agent_id")
        if named is not None and named != agent_id:
            # A verified client certificate is never ignored: one that
            # names another agent refutes the claim, whatever the token.
            raise errors.CertificateMismatch(
                "handshake refused: certificate names agent_id %s, "
                "handshake claims %s" % (named, agent_id))
        token = params.get("session_token")
        if agent_id in self.tokens:
            if self.tokens.verify(agent_id, token):
                return True, None
            if live:
                raise errors.IdentityHeld(
                    "handshake refused: agent_id %s is held by a live "
                    "connection from %s and this link did not prove the "
                    "identity" % (agent_id, live_peer))
            raise errors.TokenMismatch(
                "handshake refused: session_token %s for agent_id %s"
                % ("missing" if token is None else "mismatch", agent_id))
        if live:
            # A live link without a token (agent_identity was changed or
            # the token was forgotten): never let a newcomer take it.
            raise errors.IdentityHeld(
                "handshake refused: agent_id %s is held by a live "
                "connection from %s and this link did not prove the "
                "identity" % (agent_id, live_peer))
        return False, self.tokens.issue(agent_id)

    def new_handle(self, agent_id, connection, handshake):
        """A new :class:`AgentHandle` with this endpoint's bounds."""
        return AgentHandle(agent_id, connection, handshake,
                           identity=self.agent_identity,
                           task_history=self.task_history,
                           running_task_limit=self.running_task_limit,
                           log_history=self.log_history,
                           log_history_bytes=self.log_history_bytes,
                           task_history_bytes=self.task_history_bytes)

    def _check_room(self):
        """Before a new agent_id is proven: refuse it when ``max_agents``
        agents are known and all of them are connected. Forgets nothing
        but agents past ``forget_after``, so a handshake that is refused
        later never made the endpoint forget anyone."""
        if not self.max_agents or len(self.agents) < self.max_agents:
            return
        self.forget_gone()
        if len(self.agents) >= self.max_agents and not self._gone:
            raise errors.TooManyAgents(
                "handshake refused: the endpoint already holds %d connected "
                "agents (max_agents)" % len(self.agents))

    def _make_room(self, agent_id):
        """Once a new agent_id is accepted (after :meth:`_check_room`, with
        nothing in between): at ``max_agents`` forget the agent
        disconnected longest ago."""
        if not self.max_agents or len(self.agents) < self.max_agents or \
                not self._gone:
            return
        oldest = self.agents[next(iter(self._gone))]
        LOG.warning("max_agents (%d) reached: forgetting agent %s, the one "
                    "disconnected longest ago, for new agent %s",
                    self.max_agents, books.printable(oldest.agent_id),
                    books.printable(agent_id))
        self.forget(oldest.agent_id, "max_agents reached")

    # Only agent_id is typed: the other fields are as free-form as they
    # have always been (a wrong protocol_versions is UnsupportedVersion,
    # malformed tasks are skipped); kept as the agent sent them.
    @commands.command(name="handshake", extra=True, session=SESSION_HANDSHAKE,
                      params={
                          "agent_id": params_mod.String(
                              required=True, min_length=1, max_length=None,
                              problem="is required"),
                          "agent_version": _as_sent("The agent's version."),
                          "protocol_versions": _as_sent(
                              "The protocol versions the agent speaks (a "
                              "list); without v1 the handshake is refused "
                              "with UnsupportedVersion."),
                          "hardware": _as_sent("The hardware summary."),
                          "extensions": _as_sent(
                              "The command groups and methods the agent "
                              "serves."),
                          "tasks": _as_sent(
                              "Summaries of the agent's tasks; malformed "
                              "ones are skipped."),
                          "session_token": _as_sent(
                              "The token the endpoint issued to this "
                              "agent_id, never stored."),
                      })
    def _handshake(self, connection, params):
        agent_id = params["agent_id"]
        if len(agent_id) > MAX_AGENT_ID_LENGTH:
            raise protocol.InvalidParams(
                "agent_id: must be 1 to %d characters"
                % MAX_AGENT_ID_LENGTH, details={"param": "agent_id"})
        versions = params.get("protocol_versions") or [protocol.VERSION]
        if not isinstance(versions, list) or protocol.VERSION not in versions:
            raise protocol.UnsupportedVersion(
                "no common protocol version: %r" % (versions,),
                details={"supported": list(protocol.SUPPORTED_VERSIONS)})
        agent = self.agents.get(agent_id)
        if agent is None:
            self._check_room()
        proven, new_token = self._prove(connection, agent_id, params, agent)
        if new_token is not None and self.persistence is not None:
            problem = self.persistence.token_committed()
            if problem is not None:
                self.tokens.forget(agent_id)
                raise errors.HandshakeRefused(
                    "handshake refused: the endpoint cannot store the "
                    "session token (%s)" % problem)
        if agent is None:
            self._make_room(agent_id)
        # Never keep the token in what describe() and subscribers see.
        params = {key: value for key, value in params.items()
                  if key != "session_token"}
        kept = books.stored_handshake(params)
        if agent is None:
            agent = self.new_handle(agent_id, connection, kept)
            self.agents[agent_id] = agent
        else:
            old = agent.connection
            if old is not None and old is not connection and not old.closed:
                LOG.info("agent %s reconnected from %s and proved its "
                         "identity; closing its old connection from %s",
                         books.printable(agent_id), connection.name, old.name)
                old.user_data["agent"] = None
                old.close("replaced by a new connection of the same agent")
            agent.connection = connection
            agent.handshake = kept
            agent.identity = self.agent_identity
            agent.connected_at = time.time()
            agent.disconnected_at = None
            self._gone.pop(agent_id, None)
        agent.last_seen_at = time.time()
        agent.process = self.process_name
        connection.user_data["handshaken"] = True
        connection.user_data["agent"] = agent
        for status in params.get("tasks") or []:
            if isinstance(status, dict) and \
                    isinstance(status.get("task_id"), str) and \
                    0 < len(
                        status["task_id"]) <= books.MAX_TASK_ID_LENGTH and \
                    status.get("state") in books.TASK_STATES:
                summary = handshake_summary(status)
                if self._record_task(agent, summary, from_handshake=True) \
                        == "recorded" and self.persistence is not None:
                    self.persistence.task_recorded(
                        agent, summary["task_id"], acknowledge=False)
        LOG.info(
            "agent %s connected from %s (%s, %s)", books.printable(agent_id),
            connection.name,
            "TLS" if connection.user_data.get("tls") else "plaintext",
            "identity proven" if proven else
            "first use: session token issued")
        self._emit("handshake", agent, params)
        answer = {"agent_id": agent_id, "protocol_version": protocol.VERSION,
                  "max_line_length": self.max_line_length}
        if new_token is not None:
            answer["session_token"] = new_token
        return answer

    # Fields besides task_id and state are kept as sent: running_status()
    # and the task book decide what of them is remembered.
    @commands.command(name="task_status", extra=True, session=SESSION_AGENT,
                      params={
                          "task_id": params_mod.String(
                              required=True, min_length=1,
                              max_length=books.MAX_TASK_ID_LENGTH,
                              problem="must be a string of 1 to %d "
                                      "characters" % books.MAX_TASK_ID_LENGTH),
                          "state": params_mod.String(
                              required=True, choices=books.TASK_STATES,
                              problem="must be one of %s"
                                      % ", ".join(books.TASK_STATES)),
                          "method": _as_sent("The task's command."),
                          "percent": _as_sent("Progress of a running "
                                              "task, 0 to 100."),
                          "eta": _as_sent("Seconds of work left, or "
                                          "null."),
                          "msg": _as_sent("Why the task failed."),
                          "result": _as_sent("What the task produced."),
                      })
    def _task_status(self, agent, params):
        outcome = self._record_task(agent, params)
        if outcome == "over_limit":
            raise protocol.InvalidRequest(
                "too many running tasks: %d already (running_task_limit)"
                % agent.book.running_limit)
        if self.persistence is not None and (
                outcome == "recorded" or (outcome == "duplicate" and (
                    agent.agent_id, params["task_id"])
                    in self.persistence.unsaved)):
            # A final state is committed before it is acknowledged; when
            # it cannot be, the link is closed unanswered and the agent
            # sends the state again on its next link.
            problem = self.persistence.task_recorded(agent,
                                                     params["task_id"])
            if problem is not None:
                LOG.error("closing the link of agent %s: the final state of "
                          "task %s is not stored (%s)",
                          books.printable(agent.agent_id),
                          books.printable(params["task_id"]), problem)
                agent.connection.close("the endpoint could not store a "
                                       "final task state")
                return {}
        if outcome == "recorded":
            self._emit("task_status", agent, params)
        return {}

    def _record_task(self, agent, status, from_handshake=False):
        task_id = status["task_id"]
        known = agent.book.get(task_id)
        outcome = agent.book.record(status, summary=from_handshake)
        if outcome == "late_running":
            agent.violation("running update for %s after its final state"
                            % task_id)
        elif outcome == "conflict":
            agent.violation(
                "conflicting final state for task %s: %s after %s; the "
                "first is kept" % (task_id, status.get("state"),
                                   known.get("state")))
        elif outcome == "over_limit":
            agent.refused_running += 1
            if agent.refused_running == 1 or \
                    agent.refused_running % 1000 == 0:
                agent.violation(
                    "running task %s refused: %d running tasks already "
                    "(running_task_limit); %d refused so far"
                    % (task_id, agent.book.running_limit,
                       agent.refused_running))
        elif outcome == "recorded" and not from_handshake:
            agent.task_updates[task_id] += 1
            if len(agent.task_updates) > len(agent.book):
                # Counters of dropped tasks go with them.
                for stale in [key for key in agent.task_updates
                              if key not in agent.book.tasks]:
                    del agent.task_updates[stale]
        return outcome

    @commands.command(name="log", extra=True, session=SESSION_AGENT, params={
        "level": _as_sent("The level name (INFO when not one)."),
        "message": _as_sent("The record's text."),
        "time": _as_sent("When, in epoch seconds."),
        "logger": _as_sent("The logger's name."),
    })
    def _log(self, agent, params):
        size = len(json.dumps(params, default=str))
        agent.logs.append(params, size)
        level = params.get("level")
        numeric = logging.getLevelName(level) if isinstance(level, str) \
            else logging.INFO
        if not isinstance(numeric, int):
            numeric = logging.INFO
        LOG.log(numeric, "[%s] %s: %s", books.printable(agent.agent_id),
                books.printable(params.get("logger")),
                books.printable(params.get("message")))
        self._emit("log", agent, params)
        return {}

    # -- outbound -------------------------------------------------------------

    def get_agent(self, agent_id):
        agent = self.agents.get(agent_id)
        if agent is None or not agent.connected:
            raise errors.AgentNotConnected(
                "agent %s is not connected" % agent_id)
        return agent

    def call(self, agent_id, method, params=None, timeout=None):
        """Send a command to an agent and wait for the result.

        Raises :class:`AgentNotConnected`, ``transport.RemoteError``,
        ``transport.CallTimeout`` or ``transport.ConnectionLost``.
        """
        agent = self.get_agent(agent_id)
        if self.persistence is not None:
            self.persistence.task_sent(agent_id, method, params)
        try:
            return agent.connection.call(method, params or {},
                                         timeout=timeout or self.call_timeout)
        except transport.RemoteError:
            if self.persistence is not None:
                self.persistence.task_refused(agent_id, params)
            raise

    def wait_for(self, predicate, timeout=None):
        """Wait until ``predicate()`` is true; False on timeout."""
        deadline = None if timeout is None else \
            transport.monotonic() + timeout
        while True:
            self._changed.clear()
            value = predicate()
            if value:
                return value
            remaining = None if deadline is None else \
                deadline - transport.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._changed.wait(remaining)

    def wait_for_agent(self, agent_id=None, timeout=None):
        """The connected agent (the given one, or any), or None."""
        def connected():
            if agent_id is not None:
                agent = self.agents.get(agent_id)
                return agent if agent is not None and agent.connected \
                    else None
            for agent in self.agents.values():
                if agent.connected:
                    return agent
            return None
        return self.wait_for(connected, timeout) or None

    def wait_for_task(self, agent_id, task_id, timeout=None):
        """The task's final status (``error`` or ``complete``), or None."""
        def finished():
            agent = self.agents.get(agent_id)
            status = agent.tasks.get(task_id) if agent else None
            if status and status.get("state") in tasks_mod.TERMINAL:
                return status
            return None
        return self.wait_for(finished, timeout) or None


def trust_options(group):
    """The constructor arguments of :class:`Endpoint` that come from the
    [endpoint] identity and bounds options."""
    return {"agent_identity": group.agent_identity,
            "state_dir": group.state_dir,
            "max_connections": group.max_connections,
            "task_history": group.task_history,
            "task_history_bytes": group.task_history_bytes,
            "running_task_limit": group.running_task_limit,
            "log_history": group.log_history,
            "log_history_bytes": group.log_history_bytes,
            "forget_after": group.forget_after,
            "max_agents": group.max_agents,
            "line_idle_timeout": group.line_idle_timeout}
