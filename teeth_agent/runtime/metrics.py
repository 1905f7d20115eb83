"""The agent's own Prometheus metrics (``[metrics] listen``).

:class:`AgentMetrics` counts finished tasks and the bytes their results
report erased and written (from the task registry's changes, in whichever
thread made them: the counters are thread-safe), and reads at each scrape
the tasks the registry holds, the link to the endpoint and the messages
the agent's connections carried. :func:`serve` puts them on ``/metrics`` of
a small HTTP server in a thread of its own (prometheus_client's); it is
plain HTTP without a login, and serves nothing but these figures.
"""

import collections
import threading

import prometheus_client
from prometheus_client import core as prometheus_core

from teeth_agent.conf import dashboard as conf_dashboard
from teeth_agent import metrics as metrics_mod
from teeth_agent import tasks as tasks_mod

#: Finished task ids remembered so that each is counted once.
MAX_COUNTED = 10000

NAMES = (
    "teeth_agent_tasks",
    "teeth_agent_tasks_finished",
    "teeth_agent_bytes_erased",
    "teeth_agent_bytes_written",
    "teeth_agent_endpoint_connected",
    "teeth_agent_messages_received",
    "teeth_agent_messages_sent",
)


class _LiveCollector:
    def __init__(self, owner):
        self.owner = owner

    def describe(self):
        return list(self._families(None))

    def collect(self):
        return self._families(self.owner.agent)

    def _families(self, agent):
        tasks = prometheus_core.GaugeMetricFamily(
            "teeth_agent_tasks", "Tasks the agent holds, by method and "
            "state.", labels=["method", "state"])
        link = prometheus_core.GaugeMetricFamily(
            "teeth_agent_endpoint_connected",
            "1 for the endpoint the agent is connected to (after its "
            "handshake), 0 for the others it is configured with.",
            labels=["endpoint"])
        stats = self.owner.message_stats
        if agent is not None:
            counts = collections.Counter(
                (self.owner.methods(summary.get("method")),
                 summary.get("state"))
                for summary in agent.tasks.summaries())
            for (method, state), count in sorted(counts.items()):
                tasks.add_metric([method, state], count)
            connected = agent.connected_endpoint
            for host, port in agent.endpoints:
                link.add_metric(["%s:%d" % (host, port)],
                                1 if connected == (host, port) else 0)
        yield tasks
        yield link
        yield prometheus_core.CounterMetricFamily(
            "teeth_agent_messages_received",
            "Messages (commands and responses) received from endpoints.",
            value=stats.received)
        yield prometheus_core.CounterMetricFamily(
            "teeth_agent_messages_sent",
            "Messages (commands and responses) sent to endpoints.",
            value=stats.sent)


class AgentMetrics:
    """The metrics of one :class:`~teeth_agent.runtime.agent.Agent`."""

    def __init__(self, agent):
        self.agent = agent
        self.message_stats = agent.message_stats
        self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self.methods = metrics_mod.LabelValues()
        self._lock = threading.Lock()
        self._counted = collections.OrderedDict()
        self.finished = prometheus_client.Counter(
            "teeth_agent_tasks_finished",
            "Tasks that reached a final state, by method and state.",
            ["method", "state"], registry=self.registry)
        self.erased = prometheus_client.Counter(
            "teeth_agent_bytes_erased",
            "Bytes that finished disk_erase tasks erased.",
            registry=self.registry)
        self.written = prometheus_client.Counter(
            "teeth_agent_bytes_written",
            "Bytes that finished prepare_image tasks wrote.",
            registry=self.registry)
        self.registry.register(_LiveCollector(self))

    def attach(self):
        self.agent.tasks.subscribe(self.on_task)
        return self

    def detach(self):
        self.agent.tasks.unsubscribe(self.on_task)

    def on_task(self, task):
        if task.state not in tasks_mod.TERMINAL:
            return
        with self._lock:
            if task.task_id in self._counted:
                return
            self._counted[task.task_id] = None
            if len(self._counted) > MAX_COUNTED:
                self._counted.popitem(last=False)
        self.finished.labels(self.methods(task.method), task.state).inc()
        result = task.result
        if result is None and task.state == tasks_mod.ERROR:
            result = getattr(task, "details", None)
        erased, written = metrics_mod.result_bytes(task.method, result)
        if erased:
            self.erased.inc(erased)
        if written:
            self.written.inc(written)

    def exposition(self):
        return prometheus_client.generate_latest(self.registry)


def serve(conf, agent):
    """Serve ``agent``'s metrics on ``[metrics] listen``; returns the
    ``(metrics, server)`` or None when the option is empty. Raises
    ValueError (one line) when the address cannot be bound."""
    if not conf.metrics.listen:
        return None
    host, port = conf_dashboard.split_listen(conf.metrics.listen)
    metrics = AgentMetrics(agent)
    try:
        server, _ = prometheus_client.start_http_server(
            port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ValueError("cannot serve the agent's metrics on [metrics] "
                         "listen %s: %s" % (conf.metrics.listen,
                                            exc.strerror or exc)) from None
    return metrics.attach(), server
