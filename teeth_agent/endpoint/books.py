"""What the endpoint remembers of an agent, and the bounds on it: its
tasks, its forwarded log records and its handshake."""

import collections
import itertools
import json

from teeth_agent.endpoint import identity
from teeth_agent import protocol
from teeth_agent import tasks as tasks_mod


TASK_STATES = tasks_mod.TASK_STATES


#: What the endpoint keeps of one agent's handshake, at most (bytes).
HANDSHAKE_KEEP_BYTES = 64 * 1024
#: The longest task_id accepted (the agent's own rule, docs/protocol.md).
MAX_TASK_ID_LENGTH = 256


#: The fields of a running status that are kept.
RUNNING_FIELDS = ("task_id", "state", "percent", "eta", "method")


#: Agent-supplied text longer than this is cut in the endpoint's log.
LOG_TEXT_LIMIT = 4096


DEFAULTS = {
    "agent_identity": identity.IDENTITY_TOKEN,
    "task_history": 100,
    "task_history_bytes": 16 * 1024 * 1024,
    "running_task_limit": 256,
    "log_history": 1000,
    "log_history_bytes": 4 * 1024 * 1024,
    "forget_after": 86400.0,
    "max_agents": 50000,
    "max_connections": 16000,
    "max_connections_per_address": 64,
    "line_idle_timeout": 60.0,
}


def printable(value, limit=LOG_TEXT_LIMIT):
    """``value`` as one line of text safe for a log or a terminal.

    Agent-supplied text may carry newlines (a forged log line), escape
    sequences (which recolour or rewrite an operator's terminal), bidi
    overrides or other control characters. Text made only of printable
    characters is shown as it is; anything else is shown in
    :func:`protocol.printable`'s quoted form, in which every such character
    is escaped (``\\n``, ``\\u001b``), so what is shown is always one line
    and nothing in it is interpreted. Longer than ``limit``: cut, marked.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit and text.isprintable():
        return text
    return protocol.printable(text, limit)


def stored_handshake(params):
    """What the endpoint keeps of a handshake: no ``tasks`` (they are in
    the task book), and only the agent's version when the rest is larger
    than :data:`HANDSHAKE_KEEP_BYTES`."""
    kept = {key: value for key, value in params.items() if key != "tasks"}
    if len(json.dumps(kept, default=str)) > HANDSHAKE_KEEP_BYTES:
        kept = {"agent_id": params.get("agent_id"),
                "agent_version": printable(params.get("agent_version"),
                                           limit=128),
                "truncated": True}
    return kept


def task_summary(status):
    """The summary form of a task status (what lists and handshakes carry)."""
    summary = {"task_id": status.get("task_id"),
               "state": status.get("state")}
    for key in ("method", "percent"):
        if key in status:
            summary[key] = status[key]
    if status.get("state") == tasks_mod.ERROR:
        summary["msg"] = status.get("msg")
    return summary


def same_final(one, other):
    """Whether two final statuses of a task say the same thing."""
    return (one.get("state") == other.get("state")
            and one.get("result") == other.get("result")
            and one.get("msg") == other.get("msg"))


def running_status(status):
    """The part of a running status the endpoint keeps: known fields of
    known types, so a running update cannot carry bulk."""
    kept = {"task_id": status["task_id"], "state": status.get("state")}
    for key in ("percent", "eta"):
        value = status.get(key)
        if value is None or (isinstance(value, (int, float))
                             and not isinstance(value, bool)):
            if key in status:
                kept[key] = value
    method = status.get("method")
    if isinstance(method, str) and len(method) <= MAX_TASK_ID_LENGTH:
        kept["method"] = method
    return kept


class TaskBook:
    """The task states of one agent, bounded.

    Finished tasks (``error``/``complete``) are kept up to ``history`` and
    ``max_bytes`` (their JSON size), the oldest dropped first, the newest
    always kept; running ones up to ``running_limit``, past which a new
    running task id is refused, and only their known small fields. A final
    state never changes once recorded, except that a summary (from a
    handshake) gives way to the full status of the same state.
    """

    def __init__(self, history=DEFAULTS["task_history"],
                 running_limit=DEFAULTS["running_task_limit"],
                 max_bytes=DEFAULTS["task_history_bytes"]):
        self.history = history
        self.running_limit = running_limit
        self.max_bytes = max_bytes
        self.tasks = {}
        self._finished = collections.OrderedDict()
        self._summaries = set()
        self.running = 0
        self.bytes = 0

    def __len__(self):
        return len(self.tasks)

    def get(self, task_id):
        return self.tasks.get(task_id)

    def values(self):
        return self.tasks.values()

    def record(self, status, summary=False):
        """Record ``status``; returns one of "recorded", "duplicate",
        "late_running", "conflict", "summary_ignored" or "over_limit"."""
        task_id = status["task_id"]
        state = status.get("state")
        known = self.tasks.get(task_id)
        final = state in tasks_mod.TERMINAL
        if known is not None and known.get("state") in tasks_mod.TERMINAL:
            if not final:
                return "summary_ignored" if summary else "late_running"
            if summary:
                return ("summary_ignored" if known.get("state") == state
                        else "conflict")
            if task_id in self._summaries and known.get("state") == state:
                self._summaries.discard(task_id)
                self._keep_final(task_id, dict(status))
                return "recorded"
            return "duplicate" if same_final(known, status) else "conflict"
        if not final:
            if known is None and self.running >= self.running_limit:
                return "over_limit"
            kept = running_status(status)
            if known is not None and summary:
                # A summary has no eta; keep what the last update said.
                merged = dict(known)
                merged.update(kept)
                kept = merged
            self.tasks[task_id] = kept
            if known is None:
                self.running += 1
            return "recorded"
        if known is not None:
            self.running -= 1
        if summary:
            self._summaries.add(task_id)
        self._keep_final(task_id, dict(status))
        return "recorded"

    def _keep_final(self, task_id, status):
        size = len(json.dumps(status, default=str))
        self.bytes += size - self._finished.pop(task_id, 0)
        self._finished[task_id] = size
        self.tasks[task_id] = status
        while len(self._finished) > 1 and (
                len(self._finished) > self.history
                or self.bytes > self.max_bytes):
            oldest, old_size = self._finished.popitem(last=False)
            self.bytes -= old_size
            self.tasks.pop(oldest, None)
            self._summaries.discard(oldest)


class LogBook:
    """The latest log records of one agent, bounded by count and bytes."""

    def __init__(self, max_records=DEFAULTS["log_history"],
                 max_bytes=DEFAULTS["log_history_bytes"]):
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._records = collections.deque()
        self.bytes = 0
        self.dropped = 0

    def __len__(self):
        return len(self._records)

    def __iter__(self):
        return (record for record, _ in self._records)

    def newest(self, count):
        """The newest ``count`` records, oldest first (without walking the
        others)."""
        found = list(itertools.islice(reversed(self._records), count))
        return [record for record, _ in reversed(found)]

    def append(self, record, size):
        """Keep ``record`` (``size`` bytes); the oldest ones make room."""
        if size > self.max_bytes:
            self.dropped += 1
            return False
        self._records.append((record, size))
        self.bytes += size
        while len(self._records) > self.max_records or \
                self.bytes > self.max_bytes:
            _, old_size = self._records.popleft()
            self.bytes -= old_size
            self.dropped += 1
        return True
