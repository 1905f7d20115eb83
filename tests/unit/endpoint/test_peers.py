"""Routing between endpoint processes, in one test process.

Two real :class:`Endpoint` objects (A and B) with their control servers on
Unix sockets in a temp dir, a simulated agent connected over 127.0.0.1, and
a directory double standing for the database (which process holds which
agent, which final states are recorded).
"""

import os
import shutil
import tempfile

from teeth_agent.endpoint import control
from teeth_agent.endpoint import peers
from teeth_agent.endpoint import server as endpoint_mod
from teeth_agent import protocol
from teeth_agent import transport
from tests import base

WAIT = 10.0


class FakeDirectory:
    """The database as routing sees it: holder per agent, finals."""

    def __init__(self, process_id, shared):
        self.process_id = process_id
        self.shared = shared

    def register(self):
        pass

    def unregister(self):
        pass

    def heartbeat(self):
        return []

    def holder(self, agent_id):
        process_id = self.shared["holders"].get(agent_id)
        return self.shared["processes"].get(process_id)

    def known(self, agent_id):
        return agent_id in self.shared["known"]

    def task_final(self, agent_id, task_id):
        return self.shared["finals"].get((agent_id, task_id))


class SimAgent:
    """An agent link: answers ``testing.sleep`` with running, sends the
    updates it is told to."""

    def __init__(self, port, agent_id="agent-1"):
        self.agent_id = agent_id
        self.calls = []
        self.link = transport.Connection(
            transport.connect("127.0.0.1", port), self.dispatch,
            name="sim agent").start()
        self.link.call("handshake", {"agent_id": agent_id,
                                     "protocol_versions": ["v1"]})

    def dispatch(self, connection, command):
        self.calls.append((command.method, command.params))
        if command.method == "ping":
            return command.params
        if command.method == "testing.sleep":
            return {"task_id": command.params["task_id"],
                    "state": "running"}
        raise protocol.UnknownMethod(command.method)

    def status(self, task_id, state, **fields):
        self.link.call("task_status", dict(fields, task_id=task_id,
                                           state=state))

    def close(self):
        self.link.close()


class Process:
    """One endpoint process: endpoint, control socket, router."""

    def __init__(self, name, tempdir, shared):
        self.name = name
        self.endpoint = endpoint_mod.Endpoint(port=0, keepalive_interval=60)
        self.endpoint.start()
        self.path = os.path.join(tempdir, "control.%s.sock" % name)
        self.directory = FakeDirectory(name, shared)
        self.router = peers.PeerRouter(self.endpoint, self.directory,
                                       heartbeat_interval=60,
                                       host="this-host")
        self.control = control.ControlServer(self.endpoint, self.path,
                                             router=self.router)
        self.control.start()
        self.router.start()
        shared["processes"][name] = peers.Peer(
            name, "host:" + name, "this-host", 1, peers.unix_address(
                self.path), 0.0)

    def stop(self):
        self.router.stop()
        self.control.stop()
        self.endpoint.stop()


class Client:
    """A control client of one process, keeping the pushed updates."""

    def __init__(self, path):
        self.pushed = []
        self.link = transport.Connection(transport.connect_unix(path),
                                         self.dispatch,
                                         name="client").start()

    def dispatch(self, connection, command):
        if command.method == "task_status":
            self.pushed.append(command.params)
            return {}
        raise protocol.UnknownMethod(command.method)

    def call(self, method, params, timeout=WAIT):
        return self.link.call(method, params, timeout=timeout)


class RoutingTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.tempdir = tempfile.mkdtemp(prefix="teeth-peers-")
        self.addCleanup(shutil.rmtree, self.tempdir, True)
        self.shared = {"holders": {}, "processes": {}, "known": set(),
                       "finals": {}}
        self.a = self.process("A")
        self.b = self.process("B")

    def process(self, name):
        process = Process(name, self.tempdir, self.shared)
        self.addCleanup(process.stop)
        return process

    def agent_on(self, process, agent_id="agent-1"):
        agent = SimAgent(process.endpoint.port, agent_id)
        self.addCleanup(agent.close)
        self.assertTrue(process.endpoint.wait_for_agent(agent_id, WAIT))
        self.shared["holders"][agent_id] = process.name
        self.shared["known"].add(agent_id)
        return agent

    def client(self, process):
        client = Client(process.path)
        self.addCleanup(client.link.close)
        return client

    def test_a_call_reaches_the_agent_through_the_holding_process(self):
        agent = self.agent_on(self.b)
        answer = self.client(self.a).call("call", {
            "agent_id": "agent-1", "method": "testing.sleep",
            "params": {"task_id": "t1"}})
        self.assertEqual({"task_id": "t1", "state": "running"},
                         answer["result"])
        self.assertEqual([("testing.sleep", {"task_id": "t1"})],
                         agent.calls)

    def test_the_agents_error_comes_back_with_its_type(self):
        self.agent_on(self.b)
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("call", {"agent_id": "agent-1",
                                              "method": "nope"})
        self.assertEqual("UnknownMethod", caught.exception.type)

    def test_a_forwarded_call_is_never_forwarded_again(self):
        # The directory is wrong (says B holds an agent that is on A and
        # B thinks A holds it): no ping-pong, a NotFound from B.
        self.agent_on(self.a)
        self.shared["holders"]["agent-1"] = "B"
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.b).call("call", {
                "agent_id": "agent-1", "method": "testing.sleep",
                "params": {"task_id": "t1"}, "forwarded": True})
        self.assertEqual("NotFound", caught.exception.type)

    def test_an_agent_held_nowhere_is_not_found(self):
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("call", {"agent_id": "ghost",
                                              "method": "ping"})
        self.assertEqual("NotFound", caught.exception.type)
        self.assertIn("not connected to any endpoint process",
                      caught.exception.msg)

    def test_a_holder_on_another_host_is_refused_with_its_name(self):
        self.shared["known"].add("far")
        self.shared["holders"]["far"] = "C"
        self.shared["processes"]["C"] = peers.Peer(
            "C", "other:7", "other-host", 7, "unix:/x", 0.0)
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("call", {"agent_id": "far",
                                              "method": "ping"})
        self.assertEqual("NotFound", caught.exception.type)
        self.assertIn("on host other-host", caught.exception.msg)

    def test_progress_and_final_state_come_back_through_another_process(
            self):
        agent = self.agent_on(self.b)
        client = self.client(self.a)
        watching = transport.spawn(client.call, "watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}, 30)
        agent.status("t1", "running", percent=10.0)
        transport.sleep(0.3)
        agent.status("t1", "running", percent=50.0)
        agent.status("t1", "complete", result={"ok": True})
        answer = watching.wait()
        self.assertEqual("complete", answer["status"]["state"])
        self.assertEqual({"ok": True}, answer["status"]["result"])
        self.assertIn(50.0, [status.get("percent")
                             for status in client.pushed])

    def test_following_goes_on_when_the_holder_dies_and_the_agent_moves(
            self):
        agent = self.agent_on(self.b)
        client = self.client(self.a)
        watching = transport.spawn(client.call, "watch_task", {
            "agent_id": "agent-1", "task_id": "t1"}, 30)
        agent.status("t1", "running", percent=20.0)
        base_wait(lambda: any(s.get("percent") == 20.0
                              for s in client.pushed))
        # B goes away (its links drop); the agent reconnects to A.
        self.b.stop()
        agent.close()
        moved = self.agent_on(self.a)
        moved.status("t1", "running", percent=70.0)
        moved.status("t1", "complete", result={"moved": True})
        answer = watching.wait()
        self.assertEqual({"moved": True}, answer["status"]["result"])
        self.assertIn(70.0, [status.get("percent")
                             for status in client.pushed])

    def test_a_final_state_recorded_by_another_process_ends_the_follow(
            self):
        # The agent is held by nobody now; the database has the end.
        self.shared["known"].add("agent-9")
        watching = transport.spawn(self.client(self.a).call, "watch_task", {
            "agent_id": "agent-9", "task_id": "t9"}, 30)
        transport.sleep(0.2)
        self.shared["finals"][("agent-9", "t9")] = {
            "task_id": "t9", "state": "error", "msg": "disk gone"}
        answer = watching.wait()
        self.assertEqual("error", answer["status"]["state"])
        self.assertTrue(answer["terminal"])

    def test_following_an_unknown_agent_is_not_found(self):
        with self.assertRaises(transport.RemoteError) as caught:
            self.client(self.a).call("watch_task", {"agent_id": "ghost",
                                                    "task_id": "t"})
        self.assertEqual("NotFound", caught.exception.type)

    def test_a_forwarded_watch_answers_gone_when_the_agent_is_not_here(
            self):
        self.shared["known"].add("agent-1")
        answer = self.client(self.b).call("watch_task", {
            "agent_id": "agent-1", "task_id": "t1", "forwarded": True})
        self.assertEqual({"status": None, "gone": True, "terminal": False},
                         answer)


def base_wait(predicate, timeout=WAIT):
    deadline = transport.monotonic() + timeout
    while not predicate():
        if transport.monotonic() > deadline:
            raise AssertionError("condition not met within %ss" % timeout)
        transport.sleep(0.02)
