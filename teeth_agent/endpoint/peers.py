"""Several endpoint processes on one database: routing between them.

Every ``teeth-endpoint serve`` that shares a database registers itself in
it (:class:`teeth_agent.endpoint.directory.ProcessDirectory`: id, host,
pid, the address of its control socket, start and heartbeat times) and
records which agents it holds. An operator command given to any process
(``call``, ``watch``) for an agent that another process holds is forwarded
to that process's control socket, and the answer and every progress update
come back the same way; the forwarded command is marked ``forwarded`` so it
is never forwarded again (no loops whatever the directory says).

Why the control sockets and not PostgreSQL ``LISTEN/NOTIFY``: a command
needs an answer and a stream of progress back to one caller, which a
request/response link gives for free and a broadcast channel does not (every
process would read every update of every task, and NOTIFY payloads are
capped at 8000 bytes, smaller than a task's final result). It also works
the same with SQLite, where there is no NOTIFY.

The link is picked per holder: a process on this machine (same host name)
is reached through its control socket, a Unix socket checked with
SO_PEERCRED (only root and the server's user), which needs no secret or
port; a process on another machine through its peer port
(:mod:`teeth_agent.endpoint.peer_link`: ``[endpoint] peer_listen``, TLS
with endpoint certificates both ways), published as ``tls:host:port``. Both
carry the same requests and the same pushed ``task_status`` updates. A
holder on another host without a peer port, or a process here without one,
is refused with a message naming the holder (see docs/endpoint.md,
"Scaling out").

A process that dies (SIGKILL, power loss) stops its heartbeat; after
``[endpoint] process_stale_after`` seconds the others count it dead and its
agents as held by nobody until they reconnect (the agent's ``endpoints``
list and its reconnect loop). Following a task survives that: :meth:`follow`
asks the directory again whenever its link to the holder drops, follows the
task locally once the agent has come here, and ends with the final state
as soon as any process has recorded it.
"""

import collections
import logging
import socket

from teeth_agent.endpoint import errors
from teeth_agent import protocol
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

LOG = logging.getLogger(__name__)

#: The scheme of a control-socket address in the directory.
UNIX_SCHEME = "unix:"

#: Seconds between two looks at the directory while an agent is held by
#: no live process (it is reconnecting somewhere).
RESOLVE_INTERVAL = 0.5

#: Extra seconds a forwarded call may take beyond the agent's own timeout
#: (one more hop through a control socket).
HOP_SLACK = 5.0


#: What routing needs of a process (a row of ``endpoint_processes``):
#: ``address`` is its control socket as ``unix:/path`` (None: unknown),
#: ``peer_address`` its peer port as ``tls:host:port`` (None: none).
Peer = collections.namedtuple(
    "Peer", "process_id name host pid address heartbeat_at peer_address",
    defaults=(None,))


class PeerUnreachable(errors.AgentNotConnected):
    """The agent is held by a process this one cannot reach."""


def unix_address(path):
    """The directory address of a control socket at ``path``."""
    return UNIX_SCHEME + path


def local_host():
    """The name this machine registers its processes under."""
    return socket.gethostname()


class PeerRouter:
    """Forwards operator commands to the process holding an agent.

    ``directory`` is a :class:`~teeth_agent.endpoint.directory.
    ProcessDirectory` (its calls block: they are run off the hub here).
    ``connect(path)`` opens a control socket (a test may pass its own).
    ``peer_link`` (a :class:`~teeth_agent.endpoint.peer_link.PeerLink`,
    started, or None) dials processes on other hosts; its address is
    published with this process's.
    """

    def __init__(self, endpoint, directory, heartbeat_interval=5.0,
                 connect=transport.connect_unix, host=None, peer_link=None):
        self.endpoint = endpoint
        self.directory = directory
        self.heartbeat_interval = heartbeat_interval
        self.host = host or local_host()
        self._connect = connect
        self.peer_link = peer_link
        self._beater = None

    @property
    def process_id(self):
        return self.directory.process_id

    # -- lifecycle ------------------------------------------------------------

    def start(self):
        """Register this process (with its peer address) and keep its
        heartbeat."""
        if self.peer_link is not None:
            self.directory.peer_address = self.peer_link.address
        for peer in transport.run_in_thread(self.directory.register) or ():
            LOG.warning("endpoint process %s (pid %s) of this host is gone: "
                        "counted dead, its agents are held by nobody until "
                        "they reconnect", peer.process_id, peer.pid)
        self._beater = transport.spawn(self._heartbeat_loop)
        LOG.info("endpoint process %s registered (host %s)",
                 self.process_id, self.host)

    def stop(self):
        if self._beater is not None:
            self._beater.kill()
            self._beater = None
        try:
            transport.run_in_thread(self.directory.unregister)
        except Exception as exc:
            LOG.warning("cannot unregister endpoint process %s: %s",
                        self.process_id, exc)

    def _heartbeat_loop(self):
        while True:
            transport.sleep(self.heartbeat_interval)
            held = [agent_id for agent_id, agent in
                    list(self.endpoint.agents.items()) if agent.connected]
            try:
                expired = transport.run_in_thread(self.directory.heartbeat,
                                                  held)
            except Exception as exc:
                # The database is away: keep serving the agents held here.
                LOG.warning("endpoint process heartbeat failed: %s", exc)
                continue
            if getattr(self.directory, "revived", False):
                LOG.warning("this endpoint process (%s) had been counted "
                            "dead by the others (no heartbeat for too "
                            "long); it claimed its %d agents again",
                            self.process_id, len(held))
            for peer in expired:
                LOG.warning("endpoint process %s (host %s, pid %s) missed "
                            "its heartbeats: counted dead, its agents are "
                            "held by nobody until they reconnect",
                            peer.process_id, peer.host, peer.pid)

    # -- routing --------------------------------------------------------------

    def _holder(self, agent_id):
        """The live process holding ``agent_id`` other than this one, or
        None."""
        peer = transport.run_in_thread(self.directory.holder, agent_id)
        if peer is None or peer.process_id == self.process_id:
            return None
        return peer

    def _open(self, peer, dispatch):
        """A link to ``peer``: its control socket when it is on this
        host, else its peer port."""
        if peer.host == self.host and \
                (peer.address or "").startswith(UNIX_SCHEME):
            where = peer.address[len(UNIX_SCHEME):]
            what = "control socket"
            connect = self._connect
        elif peer.peer_address and self.peer_link is not None:
            where = peer.peer_address
            what = "peer port"
            connect = self.peer_link.dial
        elif peer.peer_address:
            raise PeerUnreachable(
                "agent is held by endpoint process %s on host %s, "
                "reachable only at its peer port %s, and this process has "
                "no peer link ([endpoint] peer_listen is empty)"
                % (peer.process_id, peer.host, peer.peer_address))
        else:
            raise PeerUnreachable(
                "agent is held by endpoint process %s on host %s, which "
                "this process cannot reach (it has no peer port: set "
                "[endpoint] peer_listen on both, or run the command there)"
                % (peer.process_id, peer.host))
        try:
            sock = connect(where)
        except (OSError, ValueError) as exc:
            raise PeerUnreachable(
                "agent is held by endpoint process %s, whose %s %s does "
                "not answer: %s" % (peer.process_id, what, where,
                                    getattr(exc, "strerror", None) or exc)
            ) from None
        return transport.Connection(
            sock, dispatch, name="endpoint process %s" % peer.process_id
        ).start()

    def call(self, agent_id, method, params, timeout):
        """Send the command through the process that holds the agent.

        Raises :class:`errors.AgentNotConnected` (no live process holds
        it), :class:`PeerUnreachable`, ``transport.RemoteError`` (the
        agent's or the peer's error), ``CallTimeout`` or ``ConnectionLost``.
        """
        peer = self._holder(agent_id)
        if peer is None:
            raise errors.AgentNotConnected(
                "agent %s is not connected to any endpoint process"
                % agent_id)
        link = self._open(peer, _refuse)
        try:
            answer = link.call("call", {
                "agent_id": agent_id, "method": method, "params": params,
                "timeout": timeout, "forwarded": True},
                timeout=timeout + HOP_SLACK)
        finally:
            link.close()
        return answer["result"]

    def follow(self, agent_id, task_id, timeout, push):
        """Follow a task wherever its agent is; ``push(status)`` gets every
        update. Returns the final status, or None after ``timeout``
        seconds (None: no limit).

        Raises :class:`errors.AgentNotConnected` when no process knows the
        agent at all.
        """
        deadline = None if timeout is None else \
            transport.monotonic() + timeout
        if self.endpoint.agents.get(agent_id) is None and \
                not transport.run_in_thread(self.directory.known, agent_id):
            raise errors.AgentNotConnected("agent %s is unknown" % agent_id)
        while True:
            remaining = _remaining(deadline)
            if remaining is not None and remaining <= 0:
                return None
            agent = self.endpoint.agents.get(agent_id)
            if agent is not None and agent.connected:
                final = self.follow_here(agent_id, task_id, remaining, push)
                if final is not None:
                    return final
                continue
            final = transport.run_in_thread(self.directory.task_final,
                                            agent_id, task_id)
            if final is not None:
                push(final)
                return final
            peer = self._holder(agent_id)
            if peer is not None:
                try:
                    final = self._follow_there(peer, agent_id, task_id,
                                               remaining, push)
                except PeerUnreachable as exc:
                    LOG.info("following task %s of agent %s: %s", task_id,
                             agent_id, exc)
                    final = None
                if final is not None:
                    return final
            # Held by nobody (reconnecting) or the holder just went away.
            wait = RESOLVE_INTERVAL if remaining is None else \
                min(RESOLVE_INTERVAL, remaining)
            self.endpoint.wait_for(lambda: _connected_here(
                self.endpoint, agent_id), wait)

    def follow_here(self, agent_id, task_id, timeout, push):
        """Follow the task while its agent is connected to this process.
        Returns the final status, or None when the agent is gone from
        here (or ``timeout`` passed) first."""
        def forward(event, handle, data):
            if event == "task_status" and handle.agent_id == agent_id and \
                    data.get("task_id") == task_id:
                push(data)

        def settled():
            agent = self.endpoint.agents.get(agent_id)
            status = agent.tasks.get(task_id) if agent else None
            if status and status.get("state") in tasks_mod.TERMINAL:
                return {"final": status}
            if agent is None or not agent.connected:
                return {"final": None}
            return None

        self.endpoint.subscribe(forward)
        try:
            agent = self.endpoint.agents.get(agent_id)
            current = agent.tasks.get(task_id) if agent else None
            if current is not None:
                push(current)
            outcome = self.endpoint.wait_for(settled, timeout)
        finally:
            self.endpoint.unsubscribe(forward)
        return outcome["final"] if outcome else None

    def _follow_there(self, peer, agent_id, task_id, timeout, push):
        def relay(connection, command):
            if command.method == "task_status":
                push(command.params)
                return {}
            return _refuse(connection, command)

        link = self._open(peer, relay)
        try:
            answer = link.call("watch_task", {
                "agent_id": agent_id, "task_id": task_id, "timeout": timeout,
                "forwarded": True},
                timeout=(10 ** 7 if timeout is None else timeout) + HOP_SLACK)
        except transport.ConnectionLost as exc:
            LOG.info("lost endpoint process %s while following task %s of "
                     "agent %s: %s", peer.process_id, task_id, agent_id, exc)
            return None
        except transport.RemoteError as exc:
            if exc.type == protocol.NotFound.__name__:
                return None
            raise
        finally:
            link.close()
        if answer.get("gone"):
            return None
        return answer.get("status")


def _refuse(connection, command):
    if command.method == "ping":
        return command.params
    raise protocol.UnknownMethod(command.method)


def _connected_here(endpoint, agent_id):
    agent = endpoint.agents.get(agent_id)
    return agent is not None and agent.connected


def _remaining(deadline):
    if deadline is None:
        return None
    return deadline - transport.monotonic()
