"""The dashboard's live updates: Server-Sent Events, bounded.

The endpoint's events are gathered on the hub and sent, at most every
:data:`FLUSH_INTERVAL` seconds, as one ``batch`` event to every open
stream: the newest status of each changed task (a task that reported a
thousand times in between is sent once), the changed agents, the new log
records (at most :data:`MAX_BATCH_LOGS`) and the new erasure records. So
what one stream costs does not grow with how chatty the agents are.

Each stream has a queue of ``queue_size`` batches. Publishing never
blocks the hub: a stream whose queue is full (its browser fell behind) is
dropped, and its browser reconnects for a fresh picture. At most
``max_clients`` streams are open at once.
"""

import json
import logging
import queue
import threading

from teeth_agent import transport

LOG = logging.getLogger(__name__)

#: Seconds between two batches.
FLUSH_INTERVAL = 0.25
#: The most log records, tasks and agents one batch carries; past that a
#: batch says ``resync`` and the page fetches a fresh picture instead.
MAX_BATCH_LOGS = 200
MAX_BATCH_ROWS = 2000
#: Seconds between keep-alive comments on an idle stream (so a dead
#: client is noticed by a failed write).
KEEPALIVE = 15.0


class TooManyClients(Exception):
    """Every live-update slot is taken."""


def json_text(payload):
    """``payload`` as JSON in which every non-ASCII character and every
    ``<``, ``>`` and ``&`` is a ``\\u`` escape: no line break can hide in
    it, and no browser that ignored its type could find markup in it."""
    data = json.dumps(payload, ensure_ascii=True, separators=(",", ":"),
                      default=str)
    # Outside strings JSON has none of these characters.
    return data.replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026")


def encode(event, payload):
    """One SSE event: ``event:`` and one ``data:`` line."""
    return ("event: %s\ndata: %s\n\n" % (event, json_text(payload))).encode(
        "ascii")


class Client:
    """One open stream; its queue is read by its HTTP thread."""

    def __init__(self, queue_size):
        self.queue = queue.Queue(maxsize=queue_size)
        self.dropped = threading.Event()

    def offer(self, data):
        """Queue ``data``; False (and the stream dropped) when full."""
        if self.dropped.is_set():
            return False
        try:
            self.queue.put_nowait(data)
            return True
        except queue.Full:
            self.dropped.set()
            return False

    def next(self, timeout):
        """The next queued event, or None after ``timeout`` seconds or once
        the stream is dropped."""
        if self.dropped.is_set():
            return None
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class EventStream:
    """Gathers the endpoint's events and feeds the open streams."""

    def __init__(self, endpoint, view, records, max_clients=32,
                 queue_size=1000, on_drop=None):
        self.endpoint = endpoint
        self.view = view
        self.records = records
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.on_drop = on_drop
        self.clients = set()
        self._agents = set()
        self._forgotten = set()
        self._tasks = {}
        self._logs = []
        self._logs_dropped = 0
        self._erasures = []
        self._flusher = None
        self._pending = transport.Event()

    def __len__(self):
        return len(self.clients)

    def start(self):
        self.endpoint.subscribe(self.on_event)
        subscribe = getattr(self.records, "subscribe", None)
        if subscribe is not None:
            subscribe(self.on_erasures)
        self._flusher = transport.spawn(self._flush_loop)

    def stop(self):
        self.endpoint.unsubscribe(self.on_event)
        if self._flusher is not None:
            self._flusher.kill()
            self._flusher = None
        for client in list(self.clients):
            client.dropped.set()
        self.clients.clear()

    # -- on the hub -----------------------------------------------------------

    def open(self, erasures=(), erasures_error=None):
        """A new stream whose first event is the whole picture (on the hub,
        so nothing happens between the picture and the stream), with
        ``erasures`` (read by the caller, or ``erasures_error`` saying why
        not). Raises :class:`TooManyClients`."""
        if len(self.clients) >= self.max_clients:
            if self.on_drop is not None:
                self.on_drop()
            raise TooManyClients(
                "%d live-update streams are open (max_event_clients)"
                % len(self.clients))
        client = Client(self.queue_size)
        state = self.view.state(erasures)
        state["erasures_error"] = erasures_error
        client.offer(encode("state", state))
        self.clients.add(client)
        return client

    def close(self, client):
        self.clients.discard(client)

    def on_event(self, event, agent, data):
        if event in ("handshake", "disconnect"):
            self._agents.add(agent.agent_id)
        elif event == "forgotten":
            self._agents.discard(agent.agent_id)
            self._forgotten.add(agent.agent_id)
        elif event == "task_status":
            self._agents.add(agent.agent_id)
            self._tasks[(agent.agent_id, data.get("task_id"))] = None
        elif event == "log":
            self._logs.append(self.view.log_row(agent.agent_id, data))
            if len(self._logs) > MAX_BATCH_LOGS:
                self._logs_dropped += len(self._logs) - MAX_BATCH_LOGS
                del self._logs[:-MAX_BATCH_LOGS]
        else:
            return
        self._pending.set()

    def on_erasures(self, records):
        self._erasures.extend(self.view.erasure_row(record)
                              for record in records)
        del self._erasures[:-MAX_BATCH_ROWS]
        self._pending.set()

    def _flush_loop(self):
        while True:
            self._pending.wait()
            self._pending.clear()
            try:
                self.flush()
            except Exception:
                LOG.exception("dashboard: cannot send live updates")
            transport.sleep(FLUSH_INTERVAL)

    def batch(self):
        """The changes since the last batch (and forget them)."""
        agents = self.endpoint.agents
        resync = len(self._agents) > MAX_BATCH_ROWS or \
            len(self._tasks) > MAX_BATCH_ROWS
        payload = {"resync": resync, "logs": self._logs,
                   "logs_dropped": self._logs_dropped,
                   "erasures": self._erasures,
                   "forgotten": sorted(self._forgotten),
                   "agents": [], "tasks": []}
        if not resync:
            for agent_id in sorted(self._agents):
                agent = agents.get(agent_id)
                if agent is not None:
                    payload["agents"].append(self.view.agent_row(agent))
            for agent_id, task_id in self._tasks:
                agent = agents.get(agent_id)
                status = agent.book.get(task_id) if agent else None
                if status is not None:
                    payload["tasks"].append(
                        self.view.task_row(agent_id, status))
        self._agents, self._forgotten, self._tasks = set(), set(), {}
        self._logs, self._logs_dropped, self._erasures = [], 0, []
        return payload

    def flush(self):
        if not self.clients:
            # Nobody watches: forget the changes without building rows.
            self._agents, self._forgotten, self._tasks = set(), set(), {}
            self._logs, self._logs_dropped, self._erasures = [], 0, []
            return
        data = encode("batch", self.batch())
        for client in list(self.clients):
            if not client.offer(data):
                LOG.warning("dashboard: dropping a live-update stream that "
                            "fell %d updates behind", self.queue_size)
                self.clients.discard(client)
                if self.on_drop is not None:
                    self.on_drop()
