"""Prometheus metrics of a real endpoint and a real agent, scraped over
HTTP and parsed with prometheus_client's own parser before and after a
task."""

import json
import unittest
import urllib.request

from prometheus_client import parser

from tests.functional import harness

AGENT_ID = "metrics-test-agent"


def scrape(url):
    """``{(name, frozenset(labels)): value}`` of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode("utf-8")
    found = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = \
                sample.value
    return found


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())), 0)


class TestMetrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.workdir = harness.make_workdir(cls, cls_level=True)
        cls.endpoint = harness.start_endpoint(
            cls, {"dashboard": {"enabled": True, "listen": "127.0.0.1:0"}},
            workdir=cls.workdir, cls_level=True)
        match = cls.endpoint.wait_for_output(
            r"teeth-endpoint dashboard at (http://127\.0\.0\.1:\d+/)")
        cls.endpoint_url = match.group(1) + "metrics"
        cls.agent_port = harness.free_port()
        cls.agent = harness.start_agent(
            cls, [cls.endpoint.address],
            {"DEFAULT": {"agent_id": AGENT_ID},
             "metrics": {"listen": "127.0.0.1:%d" % cls.agent_port}},
            workdir=cls.workdir, cls_level=True)
        cls.agent_url = "http://127.0.0.1:%d/metrics" % cls.agent_port
        harness.wait_until(
            lambda: any(a["agent_id"] == AGENT_ID
                        for a in cls.endpoint.agents()),
            harness.START_TIMEOUT, interval=0.2, what="agent connected")

    def test_a_task_moves_the_endpoint_and_agent_metrics(self):
        before = scrape(self.endpoint_url)
        agent_before = scrape(self.agent_url)
        self.assertEqual(1, value(before, "teeth_endpoint_agents_connected",
                                  tls="true"))
        self.assertEqual(0, value(before, "teeth_endpoint_agents_connected",
                                  tls="false"))
        self.assertEqual(1, value(
            agent_before, "teeth_agent_endpoint_connected",
            endpoint=self.endpoint.address))
        done = self.endpoint.cli(
            "call", AGENT_ID, "testing.sleep",
            json.dumps({"task_id": "metrics-1", "seconds": 1.5,
                        "steps": 3}))
        self.assertEqual(0, done.returncode, done.stderr)

        def finished():
            found = scrape(self.endpoint_url)
            return found if value(
                found, "teeth_endpoint_tasks_finished_total",
                method="testing.sleep", state="complete") >= 1 else None
        after = harness.wait_until(finished, 30, interval=0.2,
                                   what="the task counted")
        self.assertEqual(1, value(after,
                                  "teeth_endpoint_tasks_finished_total",
                                  method="testing.sleep", state="complete")
                         - value(before,
                                 "teeth_endpoint_tasks_finished_total",
                                 method="testing.sleep", state="complete"))
        self.assertEqual(1, value(
            after, "teeth_endpoint_task_duration_seconds_count",
            method="testing.sleep"))
        self.assertGreater(value(
            after, "teeth_endpoint_task_duration_seconds_sum",
            method="testing.sleep"), 0.5)
        self.assertEqual(1, value(after, "teeth_endpoint_tasks",
                                  method="testing.sleep", state="complete"))
        self.assertGreater(
            value(after, "teeth_endpoint_messages_received_total"),
            value(before, "teeth_endpoint_messages_received_total"))
        self.assertGreater(
            value(after, "teeth_endpoint_messages_sent_total"),
            value(before, "teeth_endpoint_messages_sent_total"))
        agent_after = scrape(self.agent_url)
        self.assertEqual(1, value(agent_after,
                                  "teeth_agent_tasks_finished_total",
                                  method="testing.sleep", state="complete"))
        self.assertEqual(1, value(agent_after, "teeth_agent_tasks",
                                  method="testing.sleep", state="complete"))
        self.assertGreater(
            value(agent_after, "teeth_agent_messages_sent_total"),
            value(agent_before, "teeth_agent_messages_sent_total"))
