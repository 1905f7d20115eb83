"""The agent killed mid-task and started again with the same state dir.

A task that was running when the agent died cannot be trusted half-done:
the next agent reports it as ``error`` in its handshake and through
``task_status``, and never runs it again. A final state the endpoint had not
acknowledged is delivered again; one it had acknowledged is not. What the
agent can and cannot know is written down in ``docs/faults.md``.
"""

import os
import signal
import unittest

from tests.functional import faults_endpoint
from tests.functional import harness

LOST = "the agent stopped while this task was running"


def kill(agent):
    """SIGKILL: no handler runs, nothing is flushed or said goodbye."""
    os.kill(agent.pid, signal.SIGKILL)
    agent.process.wait(harness.START_TIMEOUT)


def answer_all_but_task_status(message):
    if harness.is_command(message, "task_status"):
        return None
    return harness.answer_core(message)


def task_in(statuses, task_id):
    for status in statuses:
        if status.get("task_id") == task_id:
            return status
    return None


class TestKilledAgent(unittest.TestCase):
    def setUp(self):
        self.server = harness.start_server(self)
        self.workdir = harness.make_workdir(self)

    def start_agent(self):
        return harness.start_agent(self, [self.server.address],
                                   workdir=self.workdir)

    def connect(self, answer=harness.answer_core):
        peer, handshake = harness.accept_handshake(self.server,
                                                   answer=answer)
        self.addCleanup(peer.close)
        return peer, handshake

    def test_running_task_is_reported_as_error_after_a_kill(self):
        agent = self.start_agent()
        peer, _ = self.connect()
        started = peer.call("testing.sleep", {"task_id": "k1",
                                              "seconds": 120, "steps": 600})
        self.assertEqual("running", started["result"]["state"])
        peer.take(lambda m: harness.is_task_status(m, "k1"),
                  what="a running update of k1")
        kill(agent)
        self.assertTrue(peer.wait_closed())

        self.start_agent()
        peer, handshake = self.connect()
        lost = task_in(handshake["params"]["tasks"], "k1")
        self.assertIsNotNone(lost, handshake)
        self.assertEqual("error", lost["state"])
        self.assertIn(LOST, lost["msg"])
        update = peer.take(lambda m: harness.is_task_status(m, "k1"),
                           what="the error of k1")
        self.assertEqual("error", update["params"]["state"])
        self.assertIn(LOST, update["params"]["msg"])
        # The same task id does not start the work again.
        again = peer.call("testing.sleep", {"task_id": "k1",
                                            "seconds": 120, "steps": 600})
        self.assertEqual("error", again["result"]["state"])
        status = peer.call("status", {})["result"]
        self.assertEqual(["error"], [t["state"] for t in status["tasks"]
                                     if t["task_id"] == "k1"])
        self.assertEqual([], [t for t in status["tasks"]
                              if t["state"] == "running"])

    def test_acknowledged_error_is_not_sent_again_by_the_next_agent(self):
        agent = self.start_agent()
        peer, _ = self.connect()
        peer.call("testing.sleep", {"task_id": "k2", "seconds": 120,
                                    "steps": 600})
        kill(agent)
        peer.wait_closed()
        agent = self.start_agent()
        peer, _ = self.connect()
        peer.take(lambda m: harness.is_task_status(m, "k2"),
                  what="the error of k2")
        # The answer is on its way; a round trip later it has arrived.
        peer.call("ping", {})
        agent.stop()
        peer.wait_closed()

        self.start_agent()
        peer, handshake = self.connect()
        self.assertEqual("error",
                         task_in(handshake["params"]["tasks"], "k2")["state"])
        # A status round trip: the reporter has had its turn by now.
        peer.call("status", {})
        peer.call("ping", {})
        self.assertEqual([], peer.pending(
            lambda m: harness.is_task_status(m, "k2")))

    def test_unacknowledged_final_state_is_delivered_after_a_kill(self):
        agent = self.start_agent()
        peer, _ = self.connect(answer=answer_all_but_task_status)
        peer.call("testing.sleep", {"task_id": "k3", "seconds": 0.1,
                                    "steps": 1})
        final = peer.take(
            lambda m: harness.is_task_status(m, "k3")
            and m["params"]["state"] == "complete", what="k3 complete")
        self.assertEqual({"slept": 0.1, "steps": 1},
                         final["params"]["result"])
        kill(agent)
        peer.wait_closed()

        self.start_agent()
        peer, handshake = self.connect()
        self.assertEqual("complete",
                         task_in(handshake["params"]["tasks"], "k3")["state"])
        again = peer.take(lambda m: harness.is_task_status(m, "k3"),
                          what="k3 delivered again")
        self.assertEqual("complete", again["params"]["state"])
        self.assertEqual({"slept": 0.1, "steps": 1},
                         again["params"]["result"])

    def test_unreadable_state_record_does_not_stop_the_agent(self):
        state_dir = os.path.join(self.workdir, "state")
        os.makedirs(state_dir)
        with open(os.path.join(state_dir, "task-torn.json"), "w") as stream:
            stream.write('{"task_id": "torn", "state": "runn')
        agent = self.start_agent()
        peer, handshake = self.connect()
        self.assertIsNone(task_in(handshake["params"]["tasks"], "torn"))
        self.assertEqual({"ok": 1}, peer.call("ping", {"ok": 1})["result"])
        self.assertRegex(agent.output(), r"ignoring unreadable task record")


class TestKilledAgentWithRealEndpoint(unittest.TestCase):
    def test_endpoint_learns_the_lost_task_failed(self):
        endpoint = faults_endpoint.RestartableEndpoint(self)
        workdir = harness.make_workdir(self)
        overrides = {"DEFAULT": {"agent_id": "restart-agent"}}
        agent = harness.start_agent(self, [endpoint.address], overrides,
                                    workdir=workdir)
        endpoint.wait_agent("restart-agent")
        response = endpoint.ask(lambda c: c.call(
            "restart-agent", "testing.sleep",
            {"task_id": "r1", "seconds": 120, "steps": 600}))
        self.assertEqual("running", response["result"]["result"]["state"])
        endpoint.wait_task("restart-agent", "r1", ("running",))
        kill(agent)
        harness.start_agent(self, [endpoint.address], overrides,
                            workdir=workdir)
        final = endpoint.wait_task("restart-agent", "r1", ("error",))
        self.assertIn(LOST, final["msg"])


if __name__ == "__main__":
    unittest.main()
