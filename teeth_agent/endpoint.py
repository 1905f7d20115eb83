"""The endpoint: the server side of the protocol, as a library.

An :class:`Endpoint` accepts agents (plaintext, TLS or mutual TLS), tracks
them by ``agent_id`` (a reconnect replaces the old connection), answers
``ping``, ``handshake``, ``log`` and ``task_status``, calls methods on agents
with timeouts, and lets callers subscribe to events or wait for a task to
end. It runs on the transport's hub: one process holds thousands of agents,
each costing one green thread and a socket.

Use from green threads (the console script, tests running on the hub)::

    endpoint = Endpoint(port=0)
    endpoint.start()
    agent = endpoint.wait_for_agent(timeout=30)
    endpoint.call(agent.agent_id, "decom.qc", {"task_id": "t1", "spec": {}})
    final = endpoint.wait_for_task(agent.agent_id, "t1", timeout=600)
"""

import collections
import logging
import time

from teeth_agent.conf import tls as conf_tls
from teeth_agent import protocol
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

LOG = logging.getLogger(__name__)

TASK_STATES = tasks_mod.TASK_STATES


class AgentNotConnected(Exception):
    """No agent with that id is connected."""


class AgentHandle:
    """What the endpoint knows about one agent."""

    def __init__(self, agent_id, connection, handshake):
        self.agent_id = agent_id
        self.connection = connection
        self.handshake = handshake
        self.connected_at = time.time()
        self.tasks = {}
        self.task_updates = collections.Counter()
        self.violations = []
        self.logs = collections.deque(maxlen=1000)

    @property
    def connected(self):
        return self.connection is not None and not self.connection.closed

    def describe(self):
        return {
            "agent_id": self.agent_id,
            "connected": self.connected,
            "peer": self.connection.name if self.connection else None,
            "connected_at": self.connected_at,
            "agent_version": self.handshake.get("agent_version"),
            "hardware": self.handshake.get("hardware"),
            "extensions": self.handshake.get("extensions"),
            "tasks": list(self.tasks.values()),
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
                 max_connections_per_address=0):
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.max_line_length = max_line_length
        self.call_timeout = call_timeout
        self.handshake_timeout = handshake_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.max_per_address = max_connections_per_address
        self.agents = {}
        self.connections = set()
        self._per_address = collections.Counter()
        self._subscribers = []
        self._changed = transport.Event()
        self._listener = None
        self._acceptor = None
        self._reaper = None

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
                       group.max_connections_per_address))

    def start(self):
        """Listen and accept in the background; returns the bound port."""
        self._listener = transport.listen(self.host, self.port)
        self.port = self._listener.getsockname()[1]
        self._acceptor = transport.spawn(
            transport.accept_loop, self._listener, self._on_socket,
            self.tls_context, self.handshake_timeout, self._admit)
        self._reaper = transport.spawn(self._keepalive_loop)
        LOG.info("endpoint listening on %s:%d%s", self.host, self.port,
                 " (TLS)" if self.tls_context else "")
        return self.port

    def stop(self):
        for thread in (self._acceptor, self._reaper):
            if thread is not None:
                thread.kill()
        if self._listener is not None:
            self._listener.close()
        for connection in list(self.connections):
            connection.close("endpoint stopping")

    def subscribe(self, callback):
        """``callback(event, agent, data)`` for every event: ``handshake``,
        ``task_status``, ``log``, ``disconnect``. Called on the hub; keep it
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

    # -- connections ----------------------------------------------------------

    def _admit(self, address):
        if not self.max_per_address:
            return True
        host = address[0] if isinstance(address, tuple) else address
        if self._per_address[host] >= self.max_per_address:
            LOG.warning("refusing a connection from %s: it already holds %d",
                        host, self._per_address[host])
            return False
        return True

    def _on_socket(self, sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        name = "%s:%s" % address[:2] if isinstance(address, tuple) else host
        connection = transport.Connection(
            sock, self._dispatch, name="agent at %s" % name,
            max_line_length=self.max_line_length,
            write_timeout=self.keepalive_interval + self.keepalive_timeout,
            on_close=self._on_close, inline_methods=self.INLINE_METHODS)
        connection.user_data["address"] = host
        connection.user_data["agent"] = None
        self._per_address[host] += 1
        self.connections.add(connection)
        connection.start()

    def _on_close(self, connection, reason):
        self.connections.discard(connection)
        host = connection.user_data.get("address")
        self._per_address[host] -= 1
        if self._per_address[host] <= 0:
            del self._per_address[host]
        agent = connection.user_data.get("agent")
        if agent is not None and agent.connection is connection:
            LOG.info("agent %s disconnected: %s", agent.agent_id, reason)
            self._emit("disconnect", agent, {"reason": reason})

    def _keepalive_loop(self):
        """Close connections that never handshake, ping idle agents."""
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
        method = command.method
        if method == "ping":
            return command.params
        if method == "handshake":
            return self._handshake(connection, command.params)
        agent = connection.user_data.get("agent")
        if agent is None:
            if method in ("log", "task_status"):
                raise protocol.InvalidRequest(
                    "%s before handshake: send handshake first" % method)
            raise protocol.UnknownMethod("unknown method %s" % method,
                                         details={"method": method})
        if method == "task_status":
            return self._task_status(agent, command.params)
        if method == "log":
            return self._log(agent, command.params)
        raise protocol.UnknownMethod("unknown method %s" % method,
                                     details={"method": method})

    def _handshake(self, connection, params):
        agent_id = params.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            raise protocol.InvalidParams("agent_id: is required",
                                         details={"param": "agent_id"})
        versions = params.get("protocol_versions") or [protocol.VERSION]
        if not isinstance(versions, list) or protocol.VERSION not in versions:
            raise protocol.UnsupportedVersion(
                "no common protocol version: %r" % (versions,),
                details={"supported": list(protocol.SUPPORTED_VERSIONS)})
        previous = self.agents.get(agent_id)
        agent = AgentHandle(agent_id, connection, params)
        if previous is not None:
            agent.tasks = previous.tasks
            agent.task_updates = previous.task_updates
            agent.violations = previous.violations
            agent.logs = previous.logs
            old = previous.connection
            if old is not None and old is not connection and not old.closed:
                LOG.info("agent %s reconnected; closing its old connection",
                         agent_id)
                old.user_data["agent"] = None
                old.close("replaced by a new connection of the same agent")
        for status in params.get("tasks") or []:
            if isinstance(status, dict) and \
                    isinstance(status.get("task_id"), str):
                self._record_task(agent, status, from_handshake=True)
        connection.user_data["agent"] = agent
        self.agents[agent_id] = agent
        LOG.info("agent %s connected from %s", agent_id, connection.name)
        self._emit("handshake", agent, params)
        return {"agent_id": agent_id, "protocol_version": protocol.VERSION}

    def _task_status(self, agent, params):
        task_id = params.get("task_id")
        state = params.get("state")
        if not isinstance(task_id, str):
            raise protocol.InvalidParams("task_id: must be a string",
                                         details={"param": "task_id"})
        if state not in TASK_STATES:
            raise protocol.InvalidParams(
                "state: must be one of %s" % ", ".join(TASK_STATES),
                details={"param": "state"})
        self._record_task(agent, params)
        self._emit("task_status", agent, params)
        return {}

    def _record_task(self, agent, status, from_handshake=False):
        task_id = status["task_id"]
        known = agent.tasks.get(task_id)
        if known is not None and known.get("state") in tasks_mod.TERMINAL:
            if status.get("state") == tasks_mod.RUNNING:
                agent.violations.append(
                    "running update for %s after its final state" % task_id)
                LOG.warning("agent %s sent a running update for task %s "
                            "after its final state", agent.agent_id, task_id)
            return
        agent.tasks[task_id] = dict(status)
        if not from_handshake:
            agent.task_updates[task_id] += 1

    def _log(self, agent, params):
        agent.logs.append(params)
        level = params.get("level")
        numeric = logging.getLevelName(level) if isinstance(level, str) \
            else logging.INFO
        if not isinstance(numeric, int):
            numeric = logging.INFO
        LOG.log(numeric, "[%s] %s: %s", agent.agent_id, params.get("logger"),
                params.get("message"))
        self._emit("log", agent, params)
        return {}

    # -- outbound -------------------------------------------------------------

    def get_agent(self, agent_id):
        agent = self.agents.get(agent_id)
        if agent is None or not agent.connected:
            raise AgentNotConnected("agent %s is not connected" % agent_id)
        return agent

    def call(self, agent_id, method, params=None, timeout=None):
        """Send a command to an agent and wait for the result.

        Raises :class:`AgentNotConnected`, ``transport.RemoteError``,
        ``transport.CallTimeout`` or ``transport.ConnectionLost``.
        """
        agent = self.get_agent(agent_id)
        return agent.connection.call(method, params or {},
                                     timeout=timeout or self.call_timeout)

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
