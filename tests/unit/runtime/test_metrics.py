"""The agent's own metrics, from a stand-in agent and task registry."""

import socket
import types

from prometheus_client import parser

from teeth_agent.runtime import metrics as runtime_metrics
from teeth_agent import transport
from tests import base


class Registry:
    def __init__(self):
        self.subscribers = []
        self.listed = []

    def subscribe(self, callback):
        self.subscribers.append(callback)

    def unsubscribe(self, callback):
        self.subscribers.remove(callback)

    def summaries(self):
        return list(self.listed)


def task(task_id, method, state, result=None):
    return types.SimpleNamespace(task_id=task_id, method=method,
                                 state=state, result=result)


def samples(metrics):
    found = {}
    text = metrics.exposition().decode("utf-8")
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = \
                sample.value
    return found, {family.name for family in
                   parser.text_string_to_metric_families(text)}


class TestAgentMetrics(base.TestCase):
    def setUp(self):
        super().setUp()
        self.agent = types.SimpleNamespace(
            tasks=Registry(), endpoints=[("10.0.0.1", 9999),
                                         ("10.0.0.2", 9999)],
            connected_endpoint=("10.0.0.2", 9999),
            message_stats=transport.MessageStats())
        self.metrics = runtime_metrics.AgentMetrics(self.agent).attach()

    def test_finished_tasks_and_bytes_counted_once(self):
        erase = task("e", "decom.disk_erase", "complete", {"devices": [
            {"outcome": "erased", "bytes": 2048},
            {"outcome": "failed", "bytes": 9}]})
        for _ in range(3):
            for callback in self.agent.tasks.subscribers:
                callback(erase)
        self.metrics.on_task(task("w", "standbye.prepare_image", "complete",
                                  {"bytes_written": 512}))
        self.metrics.on_task(task("r", "decom.qc", "running"))
        self.metrics.on_task(task("f", "decom.qc", "error"))
        found, _ = samples(self.metrics)

        def value(name, **labels):
            return found.get((name, frozenset(labels.items())), 0)
        self.assertEqual(2048, value("teeth_agent_bytes_erased_total"))
        self.assertEqual(512, value("teeth_agent_bytes_written_total"))
        self.assertEqual(1, value("teeth_agent_tasks_finished_total",
                                  method="decom.disk_erase",
                                  state="complete"))
        self.assertEqual(1, value("teeth_agent_tasks_finished_total",
                                  method="decom.qc", state="error"))
        self.assertEqual(0, value("teeth_agent_tasks_finished_total",
                                  method="decom.qc", state="running"))

    def test_link_state_tasks_held_and_messages(self):
        self.agent.tasks.listed = [
            {"task_id": "a", "method": "decom.qc", "state": "running"},
            {"task_id": "b", "method": "decom.qc", "state": "running"},
            {"task_id": "c", "method": "decom.qc", "state": "complete"}]
        self.agent.message_stats.received = 4
        self.agent.message_stats.sent = 6
        found, names = samples(self.metrics)

        def value(name, **labels):
            return found.get((name, frozenset(labels.items())))
        self.assertEqual(2, value("teeth_agent_tasks", method="decom.qc",
                                  state="running"))
        self.assertEqual(0, value("teeth_agent_endpoint_connected",
                                  endpoint="10.0.0.1:9999"))
        self.assertEqual(1, value("teeth_agent_endpoint_connected",
                                  endpoint="10.0.0.2:9999"))
        self.assertEqual(4, value("teeth_agent_messages_received_total"))
        self.assertEqual(6, value("teeth_agent_messages_sent_total"))
        self.agent.connected_endpoint = None
        found, _ = samples(self.metrics)
        self.assertEqual(0, found[("teeth_agent_endpoint_connected",
                                   frozenset({"endpoint":
                                              "10.0.0.2:9999"}.items()))])
        self.metrics.on_task(task("x", "decom.qc", "complete"))
        _, names = samples(self.metrics)
        self.assertEqual(set(runtime_metrics.NAMES),
                         {name for name in names
                          if not name.endswith("_created")})

    def test_serve_is_off_without_listen_and_a_taken_port_is_one_line(self):
        conf = types.SimpleNamespace(metrics=types.SimpleNamespace(
            listen=""))
        self.assertIsNone(runtime_metrics.serve(conf, self.agent))
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        conf.metrics.listen = "127.0.0.1:%d" % taken.getsockname()[1]
        with self.assertRaises(ValueError) as caught:
            runtime_metrics.serve(conf, self.agent)
        self.assertIn("cannot serve the agent's metrics on [metrics] "
                      "listen 127.0.0.1:", str(caught.exception))
        # Nothing subscribed by the failed serve (only setUp's metrics).
        self.assertEqual(1, len(self.agent.tasks.subscribers))
