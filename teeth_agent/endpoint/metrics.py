"""The endpoint's Prometheus metrics.

:class:`EndpointMetrics` subscribes to an :class:`~.server.Endpoint` and
keeps its counters and histograms in a registry of its own (never the
process-wide default one, so several endpoints in one process, as in the
tests, do not mix). Gauges (agents connected, tasks by state) are read
from the endpoint's books when the registry is collected, so they cannot
drift from what the endpoint holds. Everything here runs on the hub: the
dashboard's HTTP thread collects through a :class:`transport.ThreadBridge`.

Label values an agent chooses (a task's ``method``) are bounded by
:class:`teeth_agent.metrics.LabelValues`; a refusal's ``reason`` is the
name of the refusal's type, a closed set.
"""

import collections

import prometheus_client
from prometheus_client import core as prometheus_core

from teeth_agent import metrics as metrics_mod
from teeth_agent import tasks as tasks_mod
from teeth_agent import transport

#: The buckets of the task durations, in seconds: from a ping-like task to
#: a day-long overwrite of a large disk set.
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400,
                    43200, 86400)

#: How many running tasks the endpoint remembers the start of (for their
#: durations); past it the oldest is forgotten and its duration not
#: observed.
MAX_STARTS = 100000

#: Every metric name the endpoint exports (without the ``_total``,
#: ``_bucket``, ... suffixes), for the Grafana dashboard's check.
NAMES = (
    "teeth_endpoint_agents_connected",
    "teeth_endpoint_agents_known",
    "teeth_endpoint_tasks",
    "teeth_endpoint_tasks_finished",
    "teeth_endpoint_task_duration_seconds",
    "teeth_endpoint_bytes_erased",
    "teeth_endpoint_bytes_written",
    "teeth_endpoint_handshake_refusals",
    "teeth_endpoint_messages_received",
    "teeth_endpoint_messages_sent",
    "teeth_endpoint_log_records",
    "teeth_endpoint_dashboard_event_clients",
    "teeth_endpoint_dashboard_event_clients_dropped",
)


class _BooksCollector:
    """The gauges read from the endpoint's books at collection time."""

    def __init__(self, owner):
        self.owner = owner

    def describe(self):
        # Described without reading the books (registration calls this).
        return list(self._families({}))

    def collect(self):
        return self._families(self.owner.book_figures())

    @staticmethod
    def _families(figures):
        connected = prometheus_core.GaugeMetricFamily(
            "teeth_endpoint_agents_connected",
            "Agents connected now, by whether their link is TLS.",
            labels=["tls"])
        for tls in ("true", "false"):
            connected.add_metric([tls], figures.get("connected", {}).get(
                tls, 0))
        yield connected
        yield prometheus_core.GaugeMetricFamily(
            "teeth_endpoint_agents_known",
            "Agents the endpoint remembers, connected or not.",
            value=figures.get("known", 0))
        tasks = prometheus_core.GaugeMetricFamily(
            "teeth_endpoint_tasks",
            "Tasks in the endpoint's books, by method and state.",
            labels=["method", "state"])
        for (method, state), count in sorted(
                figures.get("tasks", {}).items()):
            tasks.add_metric([method, state], count)
        yield tasks
        received = prometheus_core.CounterMetricFamily(
            "teeth_endpoint_messages_received",
            "Messages (commands and responses) received from agents.",
            value=figures.get("received", 0))
        yield received
        yield prometheus_core.CounterMetricFamily(
            "teeth_endpoint_messages_sent",
            "Messages (commands and responses) sent to agents.",
            value=figures.get("sent", 0))
        yield prometheus_core.GaugeMetricFamily(
            "teeth_endpoint_dashboard_event_clients",
            "Dashboard live-update streams open now.",
            value=figures.get("event_clients", 0))


class EndpointMetrics:
    """The metrics of one endpoint (see the module docstring)."""

    def __init__(self, endpoint, clock=transport.monotonic):
        self.endpoint = endpoint
        self.clock = clock
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.methods = metrics_mod.LabelValues()
        #: A callable giving the open live-update streams (the dashboard
        #: sets it).
        self.event_clients = None
        self._starts = collections.OrderedDict()
        #: (method label, state) -> tasks in the books, and per agent
        #: task_id -> its (method label, state).
        self.task_counts = collections.Counter()
        self._tasks = {}
        registry = self.registry
        self.finished = prometheus_client.Counter(
            "teeth_endpoint_tasks_finished",
            "Tasks that reached a final state, by method and state.",
            ["method", "state"], registry=registry)
        self.durations = prometheus_client.Histogram(
            "teeth_endpoint_task_duration_seconds",
            "How long tasks ran, from their first running update to their "
            "final state, by method.", ["method"],
            buckets=DURATION_BUCKETS, registry=registry)
        self.erased = prometheus_client.Counter(
            "teeth_endpoint_bytes_erased",
            "Bytes that finished disk_erase tasks report erased.",
            registry=registry)
        self.written = prometheus_client.Counter(
            "teeth_endpoint_bytes_written",
            "Bytes that finished prepare_image tasks report written.",
            registry=registry)
        self.refusals = prometheus_client.Counter(
            "teeth_endpoint_handshake_refusals",
            "Handshakes refused, by the refusal's kind.", ["reason"],
            registry=registry)
        self.logs = prometheus_client.Counter(
            "teeth_endpoint_log_records",
            "Log records agents forwarded.", registry=registry)
        self.dropped_clients = prometheus_client.Counter(
            "teeth_endpoint_dashboard_event_clients_dropped",
            "Dashboard live-update streams dropped because they fell "
            "behind or were refused at the limit.", registry=registry)
        registry.register(_BooksCollector(self))

    def attach(self):
        """Count the tasks already in the books, then follow the endpoint's
        events; returns self."""
        for agent in list(self.endpoint.agents.values()):
            self._index_agent(agent)
        self.endpoint.subscribe(self.on_event)
        return self

    def detach(self):
        self.endpoint.unsubscribe(self.on_event)

    def book_figures(self):
        """The figures the gauges report. The tasks by method and state
        come from :attr:`task_counts`, kept up to date by the events, so a
        scrape walks the agents but never their books."""
        connected = collections.Counter()
        for agent in list(self.endpoint.agents.values()):
            if agent.connected:
                connected["true" if agent.tls else "false"] += 1
        stats = self.endpoint.message_stats
        return {"connected": connected, "known": len(self.endpoint.agents),
                "tasks": {key: count for key, count
                          in self.task_counts.items() if count},
                "received": stats.received, "sent": stats.sent,
                "event_clients": (self.event_clients()
                                  if self.event_clients else 0)}

    # -- the tasks in the books, counted as they change -----------------------

    def _index_agent(self, agent):
        """Count ``agent``'s tasks afresh from its book (after a handshake,
        which records tasks without events, and after a final state that
        made the book drop its oldest finished ones)."""
        self._drop_agent(agent.agent_id)
        index = self._tasks[agent.agent_id] = {}
        for status in list(agent.book.values()):
            key = (self.methods(status.get("method")), status.get("state"))
            index[status.get("task_id")] = key
            self.task_counts[key] += 1

    def _drop_agent(self, agent_id):
        for key in self._tasks.pop(agent_id, {}).values():
            self.task_counts[key] -= 1

    def _index_task(self, agent, status):
        index = self._tasks.get(agent.agent_id)
        if index is None:
            return self._index_agent(agent)
        task_id = status.get("task_id")
        kept = agent.book.get(task_id)
        old = index.pop(task_id, None)
        if old is not None:
            self.task_counts[old] -= 1
        if kept is not None:
            key = (self.methods(kept.get("method")), kept.get("state"))
            index[task_id] = key
            self.task_counts[key] += 1
        if len(index) != len(agent.book):
            self._index_agent(agent)

    def on_event(self, event, agent, data):
        if event == "task_status":
            self._index_task(agent, data)
            self._task(agent, data)
        elif event == "handshake":
            self._index_agent(agent)
        elif event == "forgotten":
            self._drop_agent(agent.agent_id)
        elif event == "refused":
            self.refusals.labels(data.get("type") or "unknown").inc()
        elif event == "log":
            self.logs.inc()

    def _task(self, agent, status):
        key = (agent.agent_id, status.get("task_id"))
        state = status.get("state")
        if state not in tasks_mod.TERMINAL:
            if key not in self._starts:
                self._starts[key] = self.clock()
                if len(self._starts) > MAX_STARTS:
                    self._starts.popitem(last=False)
            return
        method = status.get("method")
        label = self.methods(method)
        self.finished.labels(label, state).inc()
        started = self._starts.pop(key, None)
        if started is not None:
            self.durations.labels(label).observe(
                max(0.0, self.clock() - started))
        # A failed erase may still have erased some devices: counted too
        # (only the entries whose outcome is "erased" count).
        result = status.get("result")
        if result is None and state == tasks_mod.ERROR:
            result = status.get("details")
        erased, written = metrics_mod.result_bytes(method, result)
        if erased:
            self.erased.inc(erased)
        if written:
            self.written.inc(written)

    def exposition(self):
        """The text exposition format of every metric (call on the hub)."""
        return prometheus_client.generate_latest(self.registry)
