"""The agent runtime: connect, handshake, serve commands, report tasks.

:class:`Agent` keeps one connection to an endpoint at a time. It tries the
configured endpoints in order with exponential backoff and jitter, sends the
handshake first on every connection, answers the endpoint's commands from a
method table (core methods plus the loaded extensions), keeps the link alive
with pings, forwards log records and reports task progress through
``task_status`` (running updates coalesced and rate-limited; final states
re-delivered until acknowledged).

What the agent sends is bounded: the handshake and ``status`` list task
summaries, never results, and drop the oldest summaries (counting them in
``tasks_omitted``) when the list would not fit; once the endpoint announced
``max_line_length`` no line longer than that is sent (oversized results are
replaced by a stand-in, oversized log messages cut). A ``session_token`` the
endpoint hands out is kept (:mod:`teeth_agent.runtime.session_tokens`) and sent
back in every later handshake to that endpoint.

The agent runs on the transport's hub (green threads); machine work runs in
OS threads and reaches the hub through :class:`transport.ThreadBridge`.
"""

# Size: 536 lines, over the ~500 guideline: Agent is one class (392 lines):
# the connection loop, the handshake and the method table share its state; log
# forwarding is runtime/logforward.py.

import functools
import logging
import os
import random
import socket
import time

from teeth_agent import commands
from teeth_agent.extensions import base as ext_base
from teeth_agent import protocol
from teeth_agent import retry
from teeth_agent.runtime import logforward
from teeth_agent.runtime import session_tokens as session_tokens_mod
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

LOG = logging.getLogger(__name__)


#: Until an endpoint has announced its ``max_line_length`` the handshake is
#: kept within this many bytes: every endpoint is expected to accept lines
#: of this size.
HANDSHAKE_LINE_BUDGET = 64 * 1024

#: An announced ``max_line_length`` below this leaves no room for a task's
#: final state or a log record; such an endpoint is treated as broken.
MIN_PEER_LINE_LENGTH = 4096


@functools.lru_cache(maxsize=1)
def agent_version():
    try:
        from importlib import metadata
        return metadata.version("teeth-agent")
    except Exception:
        return "unknown"


def parse_endpoint(text):
    """``"host:port"`` (or ``"[v6]:port"``) -> ``(host, port)``."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or \
            not 0 < int(port) < 65536:
        raise ValueError("endpoint %r is not host:port" % text)
    return host.strip("[]"), int(port)


class Backoff(retry.Backoff):
    """The reconnect policy: :class:`teeth_agent.retry.Backoff` with
    jitter, each delay drawn from [d/2, d], d doubling from ``initial`` up
    to ``maximum``.

    A link only resets the backoff once it has stayed up for
    ``stable_after`` seconds: an endpoint that answers the handshake and
    drops the link at once (or refuses it with a fatal error) is retried no
    faster than one that cannot be reached. Call :meth:`link_up` when a
    handshake succeeds and :meth:`link_down` when that link ends.
    """

    def __init__(self, initial, maximum, rng=random.random,
                 clock=time.monotonic, stable_after=0.0):
        super().__init__(initial, max(maximum, initial), jitter=True,
                         rng=rng)
        self.stable_after = stable_after
        self._clock = clock
        self._up_since = None

    def link_up(self):
        self._up_since = self._clock()

    def link_down(self):
        """The link ended; True (and the backoff reset) when it had been
        up for at least ``stable_after`` seconds."""
        up_since, self._up_since = self._up_since, None
        if up_since is None or \
                self._clock() - up_since < self.stable_after:
            return False
        self.reset()
        return True


def fit_task_summaries(message, summaries, room):
    """Put ``summaries`` in ``message["tasks"]`` within ``room`` bytes.

    ``room`` is the largest :func:`protocol.encoded_size` the whole
    ``message`` may have (None: no limit). When not all fit, running tasks
    come first, then the newest; the ones left out are counted in
    ``message["tasks_omitted"]`` (absent when none is). The listed ones keep
    their order (oldest first). Returns ``message``.
    """
    message["tasks"] = list(summaries)
    message.pop("tasks_omitted", None)
    if room is None or protocol.encoded_size(message) <= room:
        return message
    # Priority: running first, then newest first.
    order = sorted(range(len(summaries)),
                   key=lambda i: (summaries[i].get("state")
                                  != tasks_mod.RUNNING, -i))
    message["tasks"] = []
    message["tasks_omitted"] = len(summaries)
    used = protocol.encoded_size(message)
    chosen = []
    for index in order:
        # One comma per entry after the first.
        cost = protocol.encoded_size(summaries[index]) + (1 if chosen else 0)
        if used + cost > room:
            continue
        used += cost
        chosen.append(index)
    chosen.sort()
    message["tasks"] = [summaries[i] for i in chosen]
    message["tasks_omitted"] = len(summaries) - len(chosen)
    while message["tasks"] and protocol.encoded_size(message) > room:
        # Fewer omitted tasks can only shorten the count; this is a guard.
        message["tasks"].pop(0)
        message["tasks_omitted"] += 1
    if not message["tasks_omitted"]:
        del message["tasks_omitted"]
    return message


class Agent:
    """One agent: its method table, its tasks and its link to an endpoint."""

    def __init__(self, conf, hardware, extensions, registry, power,
                 agent_id, hardware_summary=None, tls_context=None,
                 session_tokens=None):
        self.conf = conf
        self.hardware = hardware
        self.extensions = extensions
        self.tasks = registry
        self.power = power
        self.agent_id = agent_id
        self.hardware_summary = hardware_summary or {}
        self.tls_context = tls_context
        # Memory only unless the caller gives a store with a state dir.
        self.session_tokens = session_tokens or \
            session_tokens_mod.SessionTokens(agent_id)
        # The max_line_length each endpoint announced last, for the size
        # of the next handshake to it.
        self.peer_line_limits = {}
        self.started = time.monotonic()
        self.endpoints = [parse_endpoint(e) for e in conf.endpoints]
        if not self.endpoints:
            raise ValueError("no endpoints configured")
        self.bridge = transport.ThreadBridge()
        self.connection = None
        self.connected_endpoint = None
        # Shared by the agent's connections (the metrics read it).
        self.message_stats = transport.MessageStats()
        self._stopping = False
        self._status_wake = transport.Event()
        self._log_wake = transport.Event()
        self.log_handler = None
        self.commands = self._build_method_table()
        self.tasks.subscribe(self._task_changed)

    # -- method table ---------------------------------------------------------

    def _build_method_table(self):
        """The :class:`commands.CommandTable`: the core methods and every
        extension's commands; handlers get ``(connection, command,
        params)``."""
        table = commands.CommandTable.of(self)
        for extension in self.extensions.values():
            for wire_name, (spec, func) in extension.commands().items():
                # A task command checks its params itself (a repeat is
                # answered before they are checked).
                table.add(wire_name, spec,
                          self._wrap_command(extension, spec, func,
                                             wire_name),
                          checked=not spec.is_task)
        return table

    def extension_methods(self):
        return {name: sorted(extension.commands())
                for name, extension in self.extensions.items()}

    def _wrap_command(self, extension, spec, func, wire_name):
        if not spec.is_task:
            def run_sync(connection, command, checked):
                return transport.run_in_thread(func, **checked)
            return run_sync

        def run_task(connection, command, params):
            task_id = params.get("task_id") if isinstance(params, dict) \
                else None
            if isinstance(task_id, str) and \
                    self.tasks.get(task_id) is not None:
                # A repeat answers the current state without new work; the
                # id reused for other work is a Conflict (raised here).
                try:
                    digest = tasks_mod.params_digest(
                        wire_name, ext_base.check_params(spec, params))
                except protocol.InvalidParams:
                    digest = "invalid params"  # not those the task ran with
                existing = self.tasks.existing(task_id, wire_name, digest)
                if existing is not None:
                    return existing.status()
            checked = ext_base.check_params(spec, params)
            task_id = checked["task_id"]
            digest = tasks_mod.params_digest(wire_name, checked)
            checked = transport.run_in_thread(extension.validate, spec,
                                              checked)

            def body(task):
                return func(task, **checked)

            task, created = self.tasks.start(task_id, wire_name, body,
                                             exclusive=spec.exclusive,
                                             params_digest=digest)
            if not created:
                return task.status()
            return {"task_id": task_id, "state": tasks_mod.RUNNING}
        return run_task

    def dispatch(self, connection, command):
        return self.commands.dispatch(command.method, command.params,
                                      connection, command)

    @commands.command(name="ping", extra=True)
    def _ping(self, connection, command, params):
        return params

    @commands.command(name="status", extra=True)
    def _status_command(self, connection, command, params):
        room = connection.session.room_for_result(command.id) \
            if connection is not None else None
        return self._status(params, room=room)

    def _status(self, params, room=None):
        """The agent's status; ``tasks`` are summaries fitted to ``room``
        bytes (see :func:`fit_task_summaries`)."""
        status = {
            "agent_id": self.agent_id,
            "agent_version": agent_version(),
            "uptime": round(time.monotonic() - self.started, 3),
            "extensions": self.extension_methods(),
            "hardware_manager": self.hardware.describe(),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "endpoint": "%s:%d" % self.connected_endpoint
            if self.connected_endpoint else None,
        }
        return fit_task_summaries(status, self.tasks.summaries(), room)

    def handshake_params(self, endpoint=None, room=None):
        """The handshake for ``endpoint`` (``"host:port"``): its session
        token when one is held, else the newest one held for another
        endpoint of the list (:meth:`SessionTokens.for_handshake`); task
        summaries fitted to ``room`` bytes."""
        params = {
            "agent_id": self.agent_id,
            "agent_version": agent_version(),
            "protocol_versions": list(protocol.SUPPORTED_VERSIONS),
            "hardware": self.hardware_summary,
            "extensions": self.extension_methods(),
        }
        token = self.session_tokens.for_handshake(
            endpoint, self.fleet()) if endpoint else None
        if token is not None:
            params["session_token"] = token
        return fit_task_summaries(params, self.tasks.summaries(), room)

    def fleet(self):
        """The endpoints of the list, as ``"host:port"`` values (the keys
        of :attr:`session_tokens`)."""
        return ["%s:%d" % endpoint for endpoint in self.endpoints]

    def _handshake_room(self, connection, endpoint):
        """Bytes the handshake params may take on ``connection``: what the
        endpoint announced last time, else :data:`HANDSHAKE_LINE_BUDGET`."""
        limit = self.peer_line_limits.get(endpoint, HANDSHAKE_LINE_BUDGET)
        return connection.session.room_for_params("handshake", limit)

    # -- running --------------------------------------------------------------

    def attach_log_handler(self, handler):
        """Forward the records ``handler`` buffers (replacing a handler
        attached before)."""
        if self.log_handler is not None:
            self.log_handler.unsubscribe(self._log_record_added)
        self.log_handler = handler
        handler.subscribe(self._log_record_added)

    def run(self):
        """Connect and serve until :meth:`stop` (call from the hub)."""
        self.bridge.start()
        backoff = Backoff(self.conf.reconnect_initial_delay,
                          self.conf.reconnect_max_delay,
                          stable_after=self.conf.keepalive_interval)
        index = 0
        while not self._stopping:
            host, port = self.endpoints[index]
            self._serve_one(host, port, backoff)
            if self._stopping:
                break
            if not backoff.link_down():
                # No link, or one that did not last: try the next endpoint,
                # waiting longer each time. A link that lasted brings the
                # agent back quickly, to the same endpoint.
                index = (index + 1) % len(self.endpoints)
            delay = backoff.next_delay()
            LOG.info("reconnecting in %.2fs", delay)
            transport.sleep(delay)
        self.bridge.stop()

    def stop(self):
        self._stopping = True
        if self.connection is not None:
            self.connection.close("agent stopping")

    def _serve_one(self, host, port, backoff=None):
        """One connection's life; True when the handshake succeeded
        (``backoff.link_up()`` is called then)."""
        failure = None
        try:
            sock = transport.connect(host, port, self.tls_context,
                                     timeout=self.conf.connect_timeout)
        except (OSError, transport.Timeout) as exc:
            failure = exc
        if failure is not None:
            # Outside the except block: there oslo.log would append the
            # exception a second time ("...: ConnectionRefusedError: ...").
            LOG.warning("cannot connect to endpoint %s:%d: %s", host, port,
                        transport.error_text(failure))
            return False
        connection = transport.Connection(
            sock, self.dispatch, name="endpoint %s:%d" % (host, port),
            max_line_length=self.conf.max_line_length,
            max_inflight=self.conf.max_inflight_commands,
            write_timeout=self.conf.keepalive_timeout
            + self.conf.keepalive_interval, stats=self.message_stats)
        connection.start()
        endpoint = "%s:%d" % (host, port)
        failure = None
        handshake = self.handshake_params(
            endpoint, self._handshake_room(connection, endpoint))
        try:
            answer = connection.call("handshake", handshake,
                                     timeout=self.conf.call_timeout)
        except (transport.RemoteError, transport.CallTimeout,
                transport.ConnectionLost, protocol.LocalProtocolError) as exc:
            failure = exc
        if failure is not None:
            # Outside the except block, as for the connect above.
            # The endpoint may have lowered its limit since it last
            # announced it: the next handshake keeps to the default budget.
            self.peer_line_limits.pop(endpoint, None)
            refusal = connection.fatal_error_received
            if refusal is not None:
                LOG.error("endpoint %s:%d refused the handshake: %s", host,
                          port, protocol.printable(refusal))
            else:
                LOG.warning("handshake with %s:%d failed: %s", host, port,
                            failure)
            connection.close("handshake failed")
            return False
        if not self._accept_handshake_answer(
                connection, endpoint, answer,
                handshake.get("session_token")):
            connection.close("unusable handshake answer")
            return False
        if backoff is not None:
            backoff.link_up()
        LOG.info("connected to endpoint %s:%d as %s", host, port,
                 self.agent_id)
        self.connection = connection
        self.connected_endpoint = (host, port)
        helpers = [transport.spawn(self._keepalive, connection),
                   transport.spawn(self._report_tasks, connection),
                   transport.spawn(self._forward_logs, connection)]
        connection.wait_closed()
        for helper in helpers:
            helper.kill()
        self.connection = None
        self.connected_endpoint = None
        if connection.fatal_error_received is not None:
            LOG.error("endpoint %s:%d ended the connection with a fatal "
                      "error: %s", host, port,
                      protocol.printable(connection.fatal_error_received))
        else:
            LOG.warning("connection to endpoint %s:%d lost: %s", host, port,
                        connection.close_reason)
        return True

    def _accept_handshake_answer(self, connection, endpoint, answer,
                                 sent_token=None):
        """Act on the handshake answer's ``session_token`` (or, without
        one, keep ``sent_token`` as the endpoint's) and
        ``max_line_length``; False when the limit is unusable."""
        # The token first: an endpoint that issued one holds it whatever
        # becomes of this link.
        if "session_token" in answer:
            if self.session_tokens.set(endpoint, answer["session_token"]):
                LOG.info("endpoint %s issued a session token for %s",
                         endpoint, self.agent_id)
        else:
            self.session_tokens.accepted(endpoint, sent_token)
        limit = answer.get("max_line_length")
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or \
                    limit < MIN_PEER_LINE_LENGTH:
                LOG.error("endpoint %s announced max_line_length %s; the "
                          "agent needs an integer of at least %d",
                          endpoint, protocol.printable(limit, 40),
                          MIN_PEER_LINE_LENGTH)
                return False
            connection.session.limit_sent_lines(limit)
            self.peer_line_limits[endpoint] = limit
        return True

    # -- keepalive ------------------------------------------------------------

    def _keepalive(self, connection):
        interval = self.conf.keepalive_interval
        while not connection.closed:
            idle = transport.monotonic() - connection.last_received
            if idle < interval:
                transport.sleep(interval - idle)
                continue
            try:
                connection.call("ping", {"keepalive": True},
                                timeout=self.conf.keepalive_timeout)
            except transport.CallTimeout:
                connection.close("keepalive: no answer within %ss"
                                 % self.conf.keepalive_timeout)
                return
            except (transport.ConnectionLost, transport.RemoteError):
                return

    # -- task status ----------------------------------------------------------

    def _wake(self, event):
        """Set a green event from any thread (OS threads go through the
        bridge, since green events belong to the hub)."""
        if self.bridge.in_hub_thread():
            event.set()
        else:
            try:
                self.bridge.call(event.set)
            except OSError:
                pass  # the bridge is closed: the agent is stopping

    def _task_changed(self, task):
        self._wake(self._status_wake)

    def _report_tasks(self, connection):
        interval = self.conf.task_status_interval
        last_running_sent = {}
        in_flight = {}
        while not connection.closed:
            self._status_wake.clear()
            next_due = None
            now = transport.monotonic()
            for task, version, status in self.tasks.undelivered():
                if in_flight.get(task.task_id, -1) >= version:
                    continue
                if status["state"] == tasks_mod.RUNNING:
                    due = last_running_sent.get(task.task_id, -1e9) + interval
                    if due > now:
                        next_due = due if next_due is None \
                            else min(next_due, due)
                        continue
                    last_running_sent[task.task_id] = now
                in_flight[task.task_id] = version
                status = self._fit_task_status(connection, status)
                connection.call_async(
                    "task_status", status, timeout=self.conf.call_timeout,
                    callback=self._acknowledger(task.task_id, version,
                                                in_flight))
            wait = None if next_due is None else max(0.0, next_due - now)
            self._status_wake.wait(wait)

    def _fit_task_status(self, connection, status):
        room = connection.session.room_for_params("task_status")
        if room is None:
            return status
        fitted = tasks_mod.shrink_status(status, room)
        if fitted is None:
            # Cannot happen with MIN_PEER_LINE_LENGTH and bounded task ids;
            # sending it would fail with LineTooLong (and be dropped).
            LOG.error("the status of task %s cannot be made to fit the "
                      "endpoint's line limit", status.get("task_id"))
            return status
        if fitted is not status:
            LOG.warning("the final state of task %s is too large for the "
                        "endpoint's %d-byte line limit; sending a stand-in",
                        status.get("task_id"),
                        connection.session.peer_max_line_length)
        return fitted

    def _acknowledger(self, task_id, version, in_flight):
        def callback(result, exc):
            if exc is None or isinstance(exc, (transport.RemoteError,
                                               protocol.LocalProtocolError)):
                # An error response is an answer too: the endpoint has seen
                # the update, resending it would only repeat the refusal
                # (and one that cannot be encoded never will be sent).
                if exc is not None:
                    LOG.warning("endpoint refused task_status of %s: %s",
                                task_id, exc)
                self.tasks.acknowledge(task_id, version)
            else:
                LOG.debug("task_status %s v%d not acknowledged: %s",
                          task_id, version, exc)
                if in_flight.get(task_id) == version:
                    del in_flight[task_id]
            self._status_wake.set()
        return callback

    # -- logs -----------------------------------------------------------------

    def _log_record_added(self):
        self._wake(self._log_wake)

    def _forward_logs(self, connection):
        handler = self.log_handler
        if handler is None:
            return
        while not connection.closed:
            entry = handler.pop()
            if entry is None:
                self._log_wake.clear()
                self._log_wake.wait()
                continue
            entry = logforward.fit_log_record(
                entry, connection.session.room_for_params("log"))
            if entry is None:
                continue  # no room even for an empty message
            try:
                connection.call("log", entry, timeout=self.conf.call_timeout)
            except transport.RemoteError as exc:
                # The endpoint refused this record; do not retry it forever.
                LOG.debug("endpoint refused a log record: %s", exc)
            except (transport.CallTimeout, transport.ConnectionLost):
                handler.push_back(entry)
                return
