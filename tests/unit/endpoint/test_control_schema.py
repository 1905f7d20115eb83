"""The control socket's real answers fit docs/schema/control/*.result.json.

A real :class:`Endpoint` and :class:`ControlServer` (alone, and two of
them routing to each other as in :mod:`.test_peers`), a simulated agent on
127.0.0.1 and a control client on the Unix socket: every answer and every
pushed ``task_status`` is validated against the schema file of its method,
so a key the code adds, drops or retypes fails here (the files are strict
where the code is their only producer).
"""

import os
import shutil
import tempfile

import jsonschema

from teeth_agent.endpoint import control
from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import transport
from tests import base
from tests.unit.endpoint import test_peers
from tests.unit import test_schema

WAIT = test_peers.WAIT


def check(method, answer):
    """Validate ``answer`` against ``control/<method>.result.json``;
    returns it."""
    test_schema.validator("control/%s.result.json" % method).validate(
        answer)
    return answer


def check_pushed(client):
    for status in client.pushed:
        test_schema.validator("task-status.json").validate(status)
    return client.pushed


class LoneProcessResultsTest(base.TestCase):
    """One endpoint process (no router), as ``teeth-endpoint serve``
    without a database runs."""

    def setUp(self):
        super().setUp()
        self.tempdir = tempfile.mkdtemp(prefix="teeth-control-schema-")
        self.addCleanup(shutil.rmtree, self.tempdir, True)
        self.endpoint = endpoint_mod.Endpoint(port=0, keepalive_interval=60)
        self.endpoint.start()
        self.addCleanup(self.endpoint.stop)
        path = os.path.join(self.tempdir, "control.sock")
        self.control = control.ControlServer(self.endpoint, path)
        self.control.start()
        self.addCleanup(self.control.stop)
        self.client = test_peers.Client(path)
        self.addCleanup(self.client.link.close)

    def agent(self, agent_id="agent-1"):
        agent = test_peers.SimAgent(self.endpoint.port, agent_id)
        self.addCleanup(agent.close)
        self.assertTrue(self.endpoint.wait_for_agent(agent_id, WAIT))
        return agent

    def test_ping(self):
        self.assertEqual({"a": [1]}, check("ping", self.client.call(
            "ping", {"a": [1]})))

    def test_agents_full_entries_and_pages(self):
        agent = self.agent("agent-1")
        self.agent("agent-2")
        agent.status("t1", "running", percent=10.0, eta=5.0)
        agent.status("t2", "complete", result={"ok": True})
        agent.status("t3", "error", msg="boom", details={"why": 1})
        first = check("agents", self.client.call("agents", {"limit": 1}))
        self.assertEqual((2, "agent-1"), (first["total"], first["next"]))
        entry = first["agents"][0]
        self.assertEqual({"t1", "t2", "t3"},
                         {task["task_id"] for task in entry["tasks"]})
        for key in ("identity", "connected_at", "last_seen", "process",
                    "log_records", "violations"):
            self.assertIn(key, entry)
        last = check("agents", self.client.call(
            "agents", {"after": first["next"]}))
        self.assertEqual((["agent-2"], None), (
            [e["agent_id"] for e in last["agents"]], last["next"]))

    def test_agents_entry_too_large_lists_summaries(self):
        agent = self.agent()
        # Over half the line limit (the page's budget), under the limit.
        bulk = "x" * (self.endpoint.max_line_length * 3 // 5)
        agent.status("big", "complete", result={"bulk": bulk})
        answer = check("agents", self.client.call("agents", {}))
        entry = answer["agents"][0]
        self.assertTrue(entry["task_summaries"])
        self.assertNotIn("result", entry["tasks"][0])

    def test_an_undeclared_key_in_an_entry_is_drift(self):
        # The schema is strict: a key the code would add must be declared.
        self.agent()
        answer = self.client.call("agents", {})
        answer["agents"][0]["surprise"] = 1
        self.assertRaises(jsonschema.ValidationError, check, "agents",
                          answer)

    def test_forget(self):
        agent = self.agent()
        agent.close()
        self.assertTrue(self.endpoint.wait_for(
            lambda: not self.endpoint.agents["agent-1"].connected, WAIT))
        self.assertEqual({"forgotten": "agent-1"}, check(
            "forget", self.client.call("forget", {"agent_id": "agent-1"})))

    def test_call(self):
        self.agent()
        answer = check("call", self.client.call("call", {
            "agent_id": "agent-1", "method": "testing.sleep",
            "params": {"task_id": "t1"}}))
        test_schema.validator("task-status.json").validate(answer["result"])

    def test_watch_task_to_its_end(self):
        agent = self.agent()
        agent.status("t1", "running", percent=5.0)
        watching = transport.spawn(self.client.call, "watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}, 30)
        test_peers.base_wait(lambda: self.client.pushed)
        agent.status("t1", "complete", result={"done": True})
        answer = check("watch_task", watching.wait())
        self.assertEqual((True, "complete"), (answer["terminal"],
                                              answer["status"]["state"]))
        self.assertTrue(check_pushed(self.client))

    def test_watch_task_ended_by_its_timeout(self):
        agent = self.agent()
        agent.status("t1", "running", percent=40.0, eta=None)
        running = check("watch_task", self.client.call("watch_task", {
            "agent_id": "agent-1", "task_id": "t1", "timeout": 0.2}))
        self.assertEqual((False, "running"), (running["terminal"],
                                              running["status"]["state"]))
        unknown = check("watch_task", self.client.call("watch_task", {
            "agent_id": "agent-1", "task_id": "nope", "timeout": 0.2}))
        self.assertEqual({"status": None, "terminal": False}, unknown)
        check_pushed(self.client)

    def test_watch_task_that_failed(self):
        agent = self.agent()
        agent.status("t1", "error", msg="disk gone")
        answer = check("watch_task", self.client.call("watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}))
        self.assertEqual("error", answer["status"]["state"])


class RoutedResultsTest(test_peers.TwoProcessesTestCase):
    """Two processes: answers of the process that forwards and of the
    one that is forwarded to."""

    def test_a_forwarded_call(self):
        self.agent_on(self.b)
        answer = check("call", self.client(self.a).call("call", {
            "agent_id": "agent-1", "method": "ping",
            "params": {"x": 1}}))
        self.assertEqual({"result": {"x": 1}}, answer)

    def test_a_watch_through_another_process(self):
        agent = self.agent_on(self.b)
        client = self.client(self.a)
        watching = transport.spawn(client.call, "watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}, 30)
        agent.status("t1", "running", percent=10.0)
        test_peers.base_wait(lambda: client.pushed)
        agent.status("t1", "complete", result={"ok": True})
        answer = check("watch_task", watching.wait())
        self.assertTrue(answer["terminal"])
        self.assertTrue(check_pushed(client))

    def test_a_routed_watch_ended_by_its_timeout(self):
        agent = self.agent_on(self.a)
        agent.status("t1", "running", percent=10.0)
        answer = check("watch_task", self.client(self.a).call(
            "watch_task", {"agent_id": "agent-1", "task_id": "t1",
                           "timeout": 0.2}))
        self.assertEqual((False, "running"), (answer["terminal"],
                                              answer["status"]["state"]))

    def test_a_forwarded_watch_whose_agent_is_gone(self):
        self.shared["known"].add("agent-1")
        answer = check("watch_task", self.client(self.b).call(
            "watch_task", {"agent_id": "agent-1", "task_id": "t1",
                           "forwarded": True}))
        self.assertEqual({"status": None, "gone": True, "terminal": False},
                         answer)


class EndpointResultsTest(base.TestCase):
    """What the endpoint answers an agent fits
    docs/schema/endpoint/*.result.json."""

    def test_handshake_log_task_status_and_ping(self):
        endpoint = endpoint_mod.Endpoint(port=0, keepalive_interval=60)
        endpoint.start()
        self.addCleanup(endpoint.stop)
        link = transport.Connection(
            transport.connect("127.0.0.1", endpoint.port),
            lambda connection, command: command.params,
            name="agent").start()
        self.addCleanup(link.close)
        answers = [
            ("handshake", link.call("handshake", {
                "agent_id": "agent-1", "protocol_versions": ["v1"],
                "agent_version": "1.0.0"}, timeout=WAIT)),
            ("log", link.call("log", {
                "level": "INFO", "message": "hello", "time": 1.5,
                "logger": "teeth"}, timeout=WAIT)),
            ("task_status", link.call("task_status", {
                "task_id": "t1", "state": "complete",
                "method": "decom.qc", "result": {}}, timeout=WAIT)),
            ("ping", link.call("ping", {"n": 1}, timeout=WAIT)),
        ]
        for method, answer in answers:
            with self.subTest(method=method):
                test_schema.validator(
                    "endpoint/%s.result.json" % method).validate(answer)
        self.assertEqual("agent-1", answers[0][1]["agent_id"])
        self.assertIn("session_token", answers[0][1])
