"""The endpoint's local control socket.

``teeth-endpoint agents`` and ``teeth-endpoint call`` reach a running
``teeth-endpoint serve`` through a Unix socket that speaks the same
line-delimited JSON protocol. The socket is created with mode 0600 in a
directory of mode 0700, and every connection is checked with SO_PEERCRED:
only root and the server's own user are served.

Methods served:

``agents``  ``{after, limit}``
    One page of the agents the endpoint knows, in agent_id order:
    ``{"agents": [...], "total": n, "next": cursor or null, "port": p}``.
    A page starts after the agent_id ``after`` (from the start without
    it), holds at most ``limit`` agents (default and ceiling
    :data:`PAGE_LIMIT`) and stays well below the line limit, so a fleet of
    any size is listed page by page; ``next`` is the ``after`` of the next
    page. An agent whose entry alone would be too large has its tasks
    listed as summaries (``task_summaries``: true) or, failing that, only
    its identity and link (``truncated``: true). With a database the
    listing is the fleet's: the agents this process holds (``source``:
    ``"process"``, as it sees them live) and every other agent the
    database records (``source``: ``"database"``: held by another live
    process, named in ``process``, or disconnected, with its last seen
    time and newest tasks), see
    :func:`teeth_agent.endpoint.directory.describe_stored`. When the
    database cannot be read the page lists what this process knows and
    says why in ``partial``.
``forget``  ``{agent_id}``
    Forget a disconnected agent, its session token included, so that it
    may make a first handshake again (an agent that lost its token).
``call``  ``{agent_id, method, params, timeout}``
    Sends the command to the agent; the result is ``{"result": ...}``. An
    error from the agent is passed through with its type, code and msg.
``watch_task``  ``{agent_id, task_id, timeout}``
    Sends each ``task_status`` update of the task to the caller as a
    ``task_status`` command and answers with the final status
    (``terminal``: true), or with the current one (``terminal``: false;
    null when the endpoint has none) when ``timeout`` seconds pass first.
``ping``
    Echoes its params.

With several endpoint processes on one database (:mod:`.peers`), ``call``
and ``watch_task`` for an agent that another process holds are forwarded
to that process's control socket (same host) or peer port (another host,
:mod:`.peer_link`) with ``forwarded: true``; a forwarded
command is answered by the process it reaches and never forwarded again.
A forwarded ``watch_task`` follows the task only while the agent stays
there and answers ``{"status": null, "gone": true}`` when it left, so the
first process looks for the agent again.

The methods are a :class:`teeth_agent.commands.CommandTable`; their params
are checked as declared there (undeclared params are ignored).
"""

import bisect
import json
import logging
import os

from teeth_agent import commands
from teeth_agent.db import schema
from teeth_agent.endpoint import directory as directory_mod
from teeth_agent.endpoint import errors
from teeth_agent import params as params_mod
from teeth_agent import protocol
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

LOG = logging.getLogger(__name__)

#: The most agents one ``agents`` page holds.
PAGE_LIMIT = 500


def _name(**kwargs):
    """A required non-empty string (an agent_id, a method, a task_id)."""
    return params_mod.String(required=True, min_length=1, max_length=None,
                             problem="must be a non-empty string", **kwargs)


class _CommandParams(params_mod.Object):
    """The params ``call`` passes on: an object of any fields; absent,
    null or any other empty value (``[]``, ``""``, ``0``, ``false``) is
    the empty object."""

    def __init__(self, **kwargs):
        super().__init__(extra=True, **kwargs)

    def validate(self, value, path):
        if not value:
            return {}
        return super().validate(value, path)


#: The wait of ``call`` and ``watch_task`` in seconds; not checked here
#: (``call`` uses the endpoint's call_timeout when it is absent, null or
#: 0; ``watch_task`` waits for ever).
_TIMEOUT = params_mod.Any(nullable=True)


class PassedThroughError(protocol.WireError):
    """An agent's error response, handed on to the control client."""

    def __init__(self, error):
        wire = protocol.WireError.from_dict(error)
        super().__init__(wire.msg or "error", wire.details)
        self.type = wire.type or "InternalError"
        self.code = wire.code or -32603


#: Set by a process that forwards a command to the one holding the agent
#: (:mod:`teeth_agent.endpoint.peers`): it is answered here, never again
#: forwarded.
_FORWARDED = params_mod.Boolean(default=False)


class ControlServer:
    """``router`` (a :class:`~teeth_agent.endpoint.peers.PeerRouter`, or
    None for a lone process) forwards commands for agents that another
    process holds."""

    def __init__(self, endpoint, path, router=None):
        self.endpoint = endpoint
        self.path = path
        self.router = router
        self._listener = None
        self._acceptor = None
        self.commands = commands.CommandTable.of(self)

    def start(self):
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._listener = transport.listen_unix(self.path)
        self._acceptor = transport.spawn(transport.accept_loop,
                                         self._listener, self._on_socket)
        LOG.info("control socket at %s", self.path)

    def stop(self):
        if self._acceptor is not None:
            self._acceptor.kill()
        if self._listener is not None:
            self._listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _on_socket(self, sock, address):
        uid = transport.peer_uid(sock)
        if uid not in (0, os.getuid()):
            LOG.warning("refusing control connection from uid %d", uid)
            sock.close()
            return
        transport.Connection(sock, self._dispatch,
                             name="control client uid %d" % uid).start()

    def _dispatch(self, connection, command):
        return self.commands.dispatch(command.method, command.params,
                                      connection)

    @commands.command(name="ping", extra=True)
    def _ping(self, connection, params):
        return params

    @commands.command(name="agents", extra=True, params={
        "after": params_mod.String(nullable=True, max_length=None),
        "limit": params_mod.Integer(minimum=1, default=PAGE_LIMIT,
                                    problem="must be a positive integer"),
    })
    def _agents(self, connection, params):
        after = params["after"]
        limit = min(params["limit"], PAGE_LIMIT)
        local = self.endpoint.agents
        stored, problem = (), None
        if self.router is not None:
            try:
                stored = transport.run_in_thread(
                    self.router.directory.agent_ids)
            except schema.DatabaseError as exc:  # a partial listing
                problem = str(exc)
        if stored:
            # Forgotten here, its row not deleted yet: not listed.
            forgetting = getattr(self.endpoint.persistence, "forgetting",
                                 ())
            stored = [agent_id for agent_id in stored
                      if agent_id not in forgetting or agent_id in local]
        ids = sorted(set(local).union(stored)) if stored else sorted(local)
        start = 0 if after is None else bisect.bisect_right(ids, after)
        rows = {}
        if stored:
            wanted = [agent_id for agent_id in ids[start:start + limit]
                      if not (agent_id in local
                              and local[agent_id].connected)]
            try:
                rows = transport.run_in_thread(
                    self.router.directory.agent_rows, wanted,
                    self.endpoint.task_history)
            except schema.DatabaseError as exc:  # a partial listing
                problem = str(exc)
                ids = sorted(local)
                start = 0 if after is None else bisect.bisect_right(
                    ids, after)

        def describe(agent_id, full):
            agent = local.get(agent_id)
            if agent_id in rows and (agent is None or not agent.connected):
                return directory_mod.describe_stored(rows[agent_id], full)
            entry = agent.describe(full=full)
            entry["source"] = "process"
            return entry
        # Half the line limit: room for the envelope and for an agent whose
        # description alone is large.
        budget = connection.session.max_line_length // 2
        page, used, index = [], 0, start
        while index < len(ids) and len(page) < limit:
            agent_id = ids[index]
            if agent_id not in local and agent_id not in rows:
                # Recorded by another process, but its row is gone since
                # the ids were read (forgotten meanwhile).
                index += 1
                continue
            entry = describe(agent_id, True)
            size = len(json.dumps(entry, default=str))
            if size > budget:
                # Full task results are what make an entry big.
                entry = describe(agent_id, False)
                entry["task_summaries"] = True
                size = len(json.dumps(entry, default=str))
            if size > budget:
                entry = {key: entry[key] for key in (
                    "agent_id", "connected", "peer", "tls", "identity",
                    "connected_at", "agent_version", "source")}
                entry["truncated"] = True
                size = len(json.dumps(entry, default=str))
            if page and used + size > budget:
                break
            page.append(entry)
            used += size
            index += 1
        more = index < len(ids)
        answer = {"agents": page, "total": len(ids),
                  "next": page[-1]["agent_id"] if more and page else None,
                  "port": self.endpoint.port}
        if problem is not None:
            answer["partial"] = (
                "the database could not be read: only the agents this "
                "process knows are listed (%s)" % problem)
        return answer

    @commands.command(name="forget", extra=True,
                      params={"agent_id": _name()})
    def _forget(self, connection, params):
        agent_id = params["agent_id"]
        if agent_id not in self.endpoint.agents and \
                agent_id not in self.endpoint.tokens:
            raise protocol.NotFound("agent %s is unknown" % agent_id)
        try:
            self.endpoint.forget(agent_id, "forgotten by the operator")
        except ValueError as exc:
            raise protocol.InvalidRequest(str(exc)) from None
        return {"forgotten": agent_id}

    @commands.command(name="call", extra=True, params={
        "agent_id": _name(), "method": _name(), "params": _CommandParams(),
        "timeout": _TIMEOUT, "forwarded": _FORWARDED,
    })
    def _call(self, connection, params):
        agent_id = params["agent_id"]
        method = params["method"]
        call_params = params["params"] or {}
        timeout = params["timeout"] or self.endpoint.call_timeout
        try:
            try:
                result = self.endpoint.call(agent_id, method, call_params,
                                            timeout=timeout)
            except errors.AgentNotConnected:
                if self.router is None or params["forwarded"]:
                    raise
                result = self.router.call(agent_id, method, call_params,
                                          timeout)
        except errors.AgentNotConnected as exc:
            raise protocol.NotFound(str(exc)) from None
        except transport.RemoteError as exc:
            raise PassedThroughError(exc.error) from None
        except (transport.CallTimeout, transport.ConnectionLost) as exc:
            raise protocol.InternalError(str(exc)) from None
        return {"result": result}

    @commands.command(name="watch_task", extra=True, params={
        "agent_id": _name(), "task_id": _name(), "timeout": _TIMEOUT,
        "forwarded": _FORWARDED,
    })
    def _watch(self, connection, params):
        agent_id = params["agent_id"]
        task_id = params["task_id"]
        timeout = params["timeout"]
        if self.router is not None:
            return self._watch_routed(connection, params)
        agent = self.endpoint.agents.get(agent_id)
        if agent is None:
            raise protocol.NotFound("agent %s is unknown" % agent_id)

        def forward(event, handle, data):
            if event == "task_status" and handle.agent_id == agent_id and \
                    data.get("task_id") == task_id and not connection.closed:
                connection.call_async("task_status", data)

        self.endpoint.subscribe(forward)
        try:
            current = agent.tasks.get(task_id)
            if current is not None and not connection.closed:
                connection.call_async("task_status", current)
            final = self.endpoint.wait_for_task(agent_id, task_id, timeout)
        finally:
            self.endpoint.unsubscribe(forward)
        if final is None:
            # The wait ended first: the task goes on; the caller decides.
            return {"status": agent.tasks.get(task_id), "terminal": False}
        return {"status": final,
                "terminal": final.get("state") in tasks_mod.TERMINAL}

    def _watch_routed(self, connection, params):
        """``watch_task`` of a process among several: the task is followed
        wherever its agent goes. A forwarded watch follows it only while
        the agent is here and answers ``{"gone": true}`` when it left."""
        agent_id = params["agent_id"]
        task_id = params["task_id"]
        timeout = params["timeout"]

        def push(status):
            if not connection.closed:
                connection.call_async("task_status", status)

        if params["forwarded"]:
            final = self.router.follow_here(agent_id, task_id, timeout, push)
            if final is None:
                return {"status": None, "gone": True, "terminal": False}
        else:
            try:
                final = self.router.follow(agent_id, task_id, timeout, push)
            except errors.AgentNotConnected as exc:
                raise protocol.NotFound(str(exc)) from None
        if final is None:
            # The wait ended first: the task goes on; the caller decides
            # (as without a router). The status is known when the agent
            # is held here.
            agent = self.endpoint.agents.get(agent_id)
            return {"status": agent.tasks.get(task_id) if agent else None,
                    "terminal": False}
        return {"status": final,
                "terminal": final.get("state") in tasks_mod.TERMINAL}
