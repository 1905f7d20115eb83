"""What the dashboard shows, as JSON-able rows read from the endpoint's
books (on the hub).

Agent-sent text is passed on as text, never as markup: the page puts it
in the document with ``textContent`` only. Here it is cut to
:data:`TEXT_LIMIT` characters so one agent cannot bloat every page.
"""

import os
import socket
import time

from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

#: The longest agent-sent text shown in one field.
TEXT_LIMIT = 2000
#: The most agents, tasks, log records and erasure records one snapshot
#: holds (the newest or the connected first).
MAX_AGENTS = 1000
MAX_TASKS = 1000
MAX_LOGS = 200
MAX_ERASURES = 200
#: The newest log records taken from each agent shown, so the picture of
#: a large fleet costs the hub little.
LOGS_PER_AGENT = 20


def holder_name():
    """This endpoint process, as the dashboard names it (host:pid, as the
    endpoint's database does)."""
    return "%s:%d" % (socket.gethostname(), os.getpid())


def text(value, limit=TEXT_LIMIT):
    """Agent-sent ``value`` as a str of at most ``limit`` characters (or
    None)."""
    if value is None:
        return None
    value = value if isinstance(value, str) else str(value)
    return value if len(value) <= limit else value[:limit] + "\u2026"


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    return value


def wall_clock(monotonic_time, now=None, mono_now=None):
    """A monotonic time of this process as epoch seconds."""
    if monotonic_time is None:
        return None
    now = time.time() if now is None else now
    mono_now = transport.monotonic() if mono_now is None else mono_now
    return now - (mono_now - monotonic_time)


class DashboardView:
    """Rows of the dashboard, read from ``endpoint`` and ``records`` (an
    erasure record source, see :mod:`.records`)."""

    def __init__(self, endpoint, holder=None):
        self.endpoint = endpoint
        self.holder = holder or getattr(endpoint, "process_name", None) \
            or holder_name()

    def agent_row(self, agent):
        connection = agent.connection
        # An endpoint with a database knows the process holding each
        # agent and when agents it loaded at start were last seen.
        process = getattr(agent, "process", None)
        if agent.connected:
            last_seen = wall_clock(connection.last_received)
            holder = process or self.holder
        else:
            last_seen = getattr(agent, "last_seen_at", None) or \
                wall_clock(agent.disconnected_at)
            holder = None
        running = agent.book.running
        return {
            "agent_id": text(agent.agent_id),
            "state": "connected" if agent.connected else "disconnected",
            "tls": agent.tls,
            "identity": agent.identity,
            "peer": text(connection.name) if connection else None,
            "holder": text(holder, 200),
            "last_seen": last_seen,
            "connected_at": agent.connected_at,
            "agent_version": text(agent.handshake.get("agent_version"), 200),
            "running_tasks": running,
            "violations": len(agent.violations),
        }

    @staticmethod
    def task_row(agent_id, status):
        return {
            "agent_id": text(agent_id),
            "task_id": text(status.get("task_id")),
            "method": text(status.get("method"), 200),
            "state": status.get("state"),
            "percent": _number(status.get("percent")),
            "eta": _number(status.get("eta")),
            "msg": text(status.get("msg")),
        }

    @staticmethod
    def log_row(agent_id, record):
        return {
            "agent_id": text(agent_id),
            "time": _number(record.get("time")),
            "level": text(record.get("level"), 20),
            "logger": text(record.get("logger"), 200),
            "message": text(record.get("message")),
        }

    @staticmethod
    def erasure_row(record):
        return {key: (text(value) if isinstance(value, str) else
                      value if value is None or isinstance(
                          value, (bool, int, float)) else text(value))
                for key, value in record.items() if key != "device"}

    def state(self, erasures=()):
        """The whole picture (bounded), for the first paint and for each
        new live-update stream: the first :data:`MAX_AGENTS` agents
        (connected first), and the tasks and newest log records of those
        only, so its cost does not grow with the fleet; ``erasures`` are
        the erasure records to show (read by the caller)."""
        agents = sorted(self.endpoint.agents.values(),
                        key=lambda agent: (not agent.connected,
                                           agent.agent_id))
        total = len(agents)
        agents = agents[:MAX_AGENTS]
        tasks, logs = [], []
        for agent in agents:
            for status in list(agent.book.values()):
                tasks.append(self.task_row(agent.agent_id, status))
            for record in agent.logs.newest(LOGS_PER_AGENT):
                logs.append(self.log_row(agent.agent_id, record))
        # Running tasks first, then the rest; the newest log records.
        tasks.sort(key=lambda row: row["state"] != tasks_mod.RUNNING)
        logs.sort(key=lambda row: row["time"] or 0)
        return {
            "endpoint": {"holder": self.holder, "port": self.endpoint.port,
                         "tls": self.endpoint.tls_context is not None,
                         "agent_identity": self.endpoint.agent_identity,
                         "agents_total": total},
            "agents": [self.agent_row(agent) for agent in agents],
            "tasks": tasks[:MAX_TASKS],
            "logs": logs[-MAX_LOGS:],
            "erasures": [self.erasure_row(record) for record in erasures],
            "now": time.time(),
        }
