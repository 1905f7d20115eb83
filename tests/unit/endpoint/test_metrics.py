"""The endpoint's Prometheus metrics, fed by an in-process endpoint, and
the Grafana dashboard that queries them."""

import json
import os
import re

from prometheus_client import parser

from teeth_agent.endpoint import metrics as metrics_mod
from tests import base
from tests.unit.endpoint.web import fakes

GRAFANA = os.path.join(os.path.dirname(__file__), "..", "..", "..", "etc",
                       "teeth-agent", "grafana-endpoint.json")


def samples(metrics):
    """``{(name, frozenset(labels)): value}`` of one scrape."""
    text = metrics.exposition().decode("utf-8")
    found = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = \
                sample.value
    return found


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())), 0)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class TestEndpointMetrics(base.TestCase):
    def setUp(self):
        super().setUp()
        self.fleet = fakes.Fleet()
        self.clock = Clock()
        self.metrics = metrics_mod.EndpointMetrics(
            self.fleet.endpoint, clock=self.clock).attach()

    def test_agents_connected_by_tls_and_known(self):
        self.fleet.connect("a", tls=True)
        self.fleet.connect("b", tls=False)
        self.fleet.connect("c", tls=True)
        self.fleet.disconnect("c")
        found = samples(self.metrics)
        self.assertEqual(1, value(found, "teeth_endpoint_agents_connected",
                                  tls="true"))
        self.assertEqual(1, value(found, "teeth_endpoint_agents_connected",
                                  tls="false"))
        self.assertEqual(3, value(found, "teeth_endpoint_agents_known"))

    def test_tasks_by_state_duration_and_bytes(self):
        self.fleet.connect("a")
        self.fleet.task("a", "e1", "running", method="decom.disk_erase",
                        percent=10.0)
        self.fleet.task("a", "s1", "running", method="testing.sleep")
        found = samples(self.metrics)
        self.assertEqual(1, value(found, "teeth_endpoint_tasks",
                                  method="decom.disk_erase",
                                  state="running"))
        self.clock.now += 90.0
        self.fleet.task("a", "e1", "complete", method="decom.disk_erase",
                        result=fakes.erase_result(
                            ("/dev/sda", "erased", 1000),
                            ("/dev/sdb", "failed", 500)))
        self.fleet.task("a", "w1", "complete",
                        method="standbye.prepare_image",
                        result={"bytes_written": 4096})
        found = samples(self.metrics)
        self.assertEqual(1, value(found, "teeth_endpoint_tasks",
                                  method="decom.disk_erase",
                                  state="complete"))
        self.assertEqual(1, value(
            found, "teeth_endpoint_tasks_finished_total",
            method="decom.disk_erase", state="complete"))
        self.assertEqual(1000, value(found,
                                     "teeth_endpoint_bytes_erased_total"))
        self.assertEqual(4096, value(found,
                                     "teeth_endpoint_bytes_written_total"))
        self.assertEqual(1, value(
            found, "teeth_endpoint_task_duration_seconds_count",
            method="decom.disk_erase"))
        self.assertEqual(90.0, value(
            found, "teeth_endpoint_task_duration_seconds_sum",
            method="decom.disk_erase"))
        self.assertEqual(1, value(
            found, "teeth_endpoint_task_duration_seconds_bucket",
            method="decom.disk_erase", le="300.0"))
        self.assertEqual(0, value(
            found, "teeth_endpoint_task_duration_seconds_bucket",
            method="decom.disk_erase", le="60.0"))
        # A task first seen in its final state has no known duration.
        self.assertEqual(0, value(
            found, "teeth_endpoint_task_duration_seconds_count",
            method="standbye.prepare_image"))

    def test_task_gauge_follows_the_books_without_walking_them(self):
        fleet = fakes.Fleet(task_history=3)
        fleet.connect("early")
        fleet.task("early", "x", "running", method="decom.qc")
        metrics = metrics_mod.EndpointMetrics(fleet.endpoint).attach()
        fleet.connect("a")
        for n in range(6):
            fleet.task("a", "t%d" % n, "running", method="decom.qc")
            fleet.task("a", "t%d" % n, "complete", method="decom.qc")
        fleet.task("a", "r", "running", method="decom.disk_erase")
        fleet.task("a", "r", "running", method="decom.disk_erase",
                   percent=50.0)
        # A handshake records tasks without task_status events.
        fleet.disconnect("a")
        fleet.endpoint._dispatch(fakes.FakeConnection("10.0.0.7:1"),
                                 fakes.Command("handshake", {
                                     "agent_id": "b",
                                     "protocol_versions": ["v1"],
                                     "tasks": [{"task_id": "h",
                                                "state": "running",
                                                "method": "decom.qc"}]}))
        fleet.disconnect("early")
        fleet.endpoint.forget("early")

        def from_books():
            counted = {}
            for agent in fleet.endpoint.agents.values():
                for status in agent.book.values():
                    key = (status.get("method"), status["state"])
                    counted[key] = counted.get(key, 0) + 1
            return counted
        figures = metrics.book_figures()["tasks"]
        self.assertEqual(from_books(), figures)
        self.assertEqual({("decom.qc", "complete"): 3,
                          ("decom.disk_erase", "running"): 1,
                          ("decom.qc", "running"): 1}, figures)

    def test_a_failed_erase_counts_the_devices_it_erased(self):
        self.fleet.connect("a")
        self.fleet.task("a", "e", "error", method="decom.disk_erase",
                        msg="one failed", details=fakes.erase_result(
                            ("/dev/sda", "erased", 700),
                            ("/dev/sdb", "failed", 0)))
        found = samples(self.metrics)
        self.assertEqual(700, value(found,
                                    "teeth_endpoint_bytes_erased_total"))
        self.assertEqual(1, value(
            found, "teeth_endpoint_tasks_finished_total",
            method="decom.disk_erase", state="error"))

    def test_a_repeated_final_state_is_counted_once(self):
        self.fleet.connect("a")
        result = fakes.erase_result(("/dev/sda", "erased", 1000))
        for _ in range(3):
            self.fleet.task("a", "e1", "complete",
                            method="decom.disk_erase", result=result)
        found = samples(self.metrics)
        self.assertEqual(1000, value(found,
                                     "teeth_endpoint_bytes_erased_total"))
        self.assertEqual(1, value(
            found, "teeth_endpoint_tasks_finished_total",
            method="decom.disk_erase", state="complete"))

    def test_hostile_method_names_cannot_grow_the_metrics(self):
        self.fleet.connect("a")
        for n in range(300):
            self.fleet.task("a", "t%d" % n, "complete",
                            method='evil"} 1\n# m%d' % n if n % 2 else
                            "m%d" % n)
        found = samples(self.metrics)
        methods = {dict(labels).get("method") for name, labels in found
                   if name == "teeth_endpoint_tasks_finished_total"}
        self.assertLessEqual(len(methods), 65)
        self.assertIn("other", methods)

    def test_refusals_by_reason_and_messages(self):
        self.fleet.connect("a")
        self.fleet.connect("a", peer="10.9.9.9:1", name="impostor")
        self.assertTrue(self.fleet.links["impostor"].closed)
        self.assertFalse(self.fleet.links["a"].closed)
        self.fleet.endpoint.message_stats.received += 5
        self.fleet.endpoint.message_stats.sent += 7
        self.fleet.log("a", "hello")
        found = samples(self.metrics)
        self.assertEqual(1, value(
            found, "teeth_endpoint_handshake_refusals_total",
            reason="IdentityHeld"))
        self.assertEqual(5, value(found,
                                  "teeth_endpoint_messages_received_total"))
        self.assertEqual(7, value(found,
                                  "teeth_endpoint_messages_sent_total"))
        self.assertEqual(1, value(found,
                                  "teeth_endpoint_log_records_total"))

    def test_every_declared_name_is_exported(self):
        self.fleet.connect("a")
        self.fleet.task("a", "t", "running", method="decom.qc")
        self.fleet.task("a", "t", "complete", method="decom.qc")
        self.metrics.dropped_clients.inc()
        text = self.metrics.exposition().decode("utf-8")
        # prometheus_client adds a *_created series to each counter.
        families = {family.name for family in
                    parser.text_string_to_metric_families(text)
                    if not family.name.endswith("_created")}
        self.assertEqual(set(metrics_mod.NAMES), families)


class TestGrafanaDashboard(base.TestCase):
    """etc/teeth-agent/grafana-endpoint.json queries only metrics the
    endpoint exports."""

    def test_every_queried_metric_exists(self):
        with open(GRAFANA) as handle:
            dashboard = json.load(handle)
        exprs = [target["expr"] for panel in dashboard["panels"]
                 for target in panel["targets"]]
        exprs.append(dashboard["templating"]["list"][1]["definition"])
        fleet = fakes.Fleet()
        metrics = metrics_mod.EndpointMetrics(fleet.endpoint).attach()
        fleet.connect("a")
        fleet.task("a", "t", "running", method="decom.qc")
        fleet.task("a", "t", "complete", method="decom.qc")
        fleet.log("a", "x")
        metrics.dropped_clients.inc()
        metrics.refusals.labels("TokenMismatch").inc()
        exported = {sample.name for family in
                    parser.text_string_to_metric_families(
                        metrics.exposition().decode("utf-8"))
                    for sample in family.samples}
        queried = set()
        for expr in exprs:
            queried.update(re.findall(r"\bteeth_[a-z_]+\b", expr))
        self.assertTrue(queried)
        self.assertEqual(set(), queried - exported)
        # Every exported family is on the dashboard.
        bare = {re.sub(r"_(total|bucket|count|sum)$", "", name)
                for name in queried}
        self.assertEqual(set(metrics_mod.NAMES), bare)
