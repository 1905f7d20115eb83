"""The agent's life as a process: start-up, identity, failover, reconnects.

Real ``teeth-agent`` processes against raw listening sockets on 127.0.0.1.
Every wait is bounded; no test asserts how fast anything happened, only
that it happened and in which order.
"""

import re
import unittest

from tests.functional import harness


class TestStartUp(unittest.TestCase):
    def test_unknown_extension_stops_start_up_listing_available_ones(self):
        server = harness.start_server(self)
        agent = harness.start_agent(self, [server.address], {
            "DEFAULT": {"enabled_extensions": ["testing", "no_such_group"]}})
        code = agent.wait_exit()
        output = agent.output()
        self.assertNotEqual(0, code, output)
        self.assertIn("no_such_group", output)
        available = re.search(r"available: ([^\n]*)", output)
        self.assertIsNotNone(available, output)
        listed = [name.strip() for name in available.group(1).split(",")]
        self.assertIn("testing", listed)
        self.assertIn("broken", listed)

    def test_plugin_that_fails_to_import_stops_start_up_loudly(self):
        server = harness.start_server(self)
        agent = harness.start_agent(self, [server.address], {
            "DEFAULT": {"enabled_extensions": ["testing", "broken"]}})
        code = agent.wait_exit()
        output = agent.output()
        self.assertNotEqual(0, code, output)
        self.assertIn("broken", output)
        self.assertIn("fails to import on purpose", output)
        self.assertRegex(output, r"ERROR")

    def test_agent_never_connects_when_start_up_fails(self):
        server = harness.start_server(self)
        agent = harness.start_agent(self, [server.address], {
            "DEFAULT": {"enabled_extensions": ["broken"]}})
        self.assertNotEqual(0, agent.wait_exit())
        # The process is gone: a pending connection would be in the
        # listen queue, so accept would return it at once.
        with self.assertRaises(harness.PeerTimeout):
            server.accept(timeout=0.5)

    def test_agent_id_is_stable_across_restarts(self):
        server = harness.start_server(self)
        workdir = harness.make_workdir(self)
        ids = []
        for _ in range(2):
            agent = harness.start_agent(self, [server.address],
                                        workdir=workdir)
            peer, handshake = harness.accept_handshake(server)
            ids.append(handshake["params"]["agent_id"])
            peer.close()
            agent.stop()
        self.assertTrue(ids[0])
        self.assertEqual(ids[0], ids[1])

    def test_agent_id_override_from_config(self):
        server = harness.start_server(self)
        harness.start_agent(self, [server.address], {
            "DEFAULT": {"agent_id": "rack7-slot3"}})
        peer, handshake = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        self.assertEqual("rack7-slot3", handshake["params"]["agent_id"])
        status = peer.call("status", {})["result"]
        self.assertEqual("rack7-slot3", status["agent_id"])


class TestEndpointsAndReconnects(unittest.TestCase):
    def test_fails_over_to_the_second_endpoint(self):
        closed_socket, closed_port = harness.refused_port()
        self.addCleanup(closed_socket.close)
        server = harness.start_server(self)
        agent = harness.start_agent(
            self, ["%s:%d" % (harness.HOST, closed_port), server.address])
        peer, handshake = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        self.assertEqual("v1", handshake["version"])
        agent.wait_for_output(r"cannot connect to endpoint "
                              r"127\.0\.0\.1:%d" % closed_port)
        response = peer.call("ping", {"via": "second"})
        self.assertEqual({"via": "second"}, response["result"])

    def test_refused_handshake_makes_the_agent_retry(self):
        server = harness.start_server(self)
        harness.start_agent(self, [server.address])
        peer = server.accept()
        self.addCleanup(peer.close)
        first = peer.take_any()
        self.assertTrue(harness.is_command(first, "handshake"), first)
        peer.respond(first, error={"type": "Busy", "code": -32002,
                                   "msg": "come back later"})
        self.assertTrue(peer.wait_closed(), "the agent stayed on a "
                        "connection whose handshake was refused")
        peer, again = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        self.assertEqual(first["params"]["agent_id"],
                         again["params"]["agent_id"])
        self.assertEqual({"n": 1}, peer.call("ping", {"n": 1})["result"])

    def test_server_restart_costs_one_backoff_period(self):
        server = harness.start_server(self)
        agent = harness.start_agent(self, [server.address], {
            "DEFAULT": {"reconnect_initial_delay": 0.2,
                        "reconnect_max_delay": 1.0}})
        peer, first = harness.accept_handshake(server)
        # Restart: the listening socket and the connection go away, then
        # the server listens on the same port again.
        server.close()
        peer.close()
        server.listen()
        peer, second = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        self.assertEqual(first["params"]["agent_id"],
                         second["params"]["agent_id"])
        self.assertNotEqual(first["id"], second["id"])
        self.assertEqual({"n": 2}, peer.call("ping", {"n": 2})["result"])
        # The server was back before the agent's first retry, so that retry
        # succeeded: exactly one backoff delay, no refused attempt.
        output = agent.output()
        after_loss = output[output.index("lost"):]
        self.assertEqual(1, after_loss.count("reconnecting in"), output)
        self.assertNotIn("cannot connect", after_loss, output)

    def test_server_down_for_a_while_then_back(self):
        server = harness.start_server(self)
        agent = harness.start_agent(self, [server.address], {
            "DEFAULT": {"reconnect_initial_delay": 0.05,
                        "reconnect_max_delay": 0.5}})
        peer, first = harness.accept_handshake(server)
        server.close()
        peer.close()
        # Let the agent fail a few times, growing its backoff to the cap.
        agent.wait_for_output(r"cannot connect to endpoint", count=4)
        server.listen()
        peer, second = harness.accept_handshake(
            server, timeout=harness.MESSAGE_TIMEOUT)
        self.addCleanup(peer.close)
        self.assertEqual(first["params"]["agent_id"],
                         second["params"]["agent_id"])
        delays = [float(d) for d in
                  re.findall(r"reconnecting in ([0-9.]+)s", agent.output())]
        self.assertTrue(delays)
        self.assertLessEqual(max(delays), 0.5, "a backoff delay exceeded "
                             "reconnect_max_delay: %s" % delays)

    def test_keepalive_drops_a_peer_that_stops_answering(self):
        server = harness.start_server(self)
        agent = harness.start_agent(self, [server.address], {
            "DEFAULT": {"keepalive_interval": 0.3,
                        "keepalive_timeout": 0.5}})
        peer, first = harness.accept_handshake(server,
                                               answer=harness.answer_nothing)
        self.addCleanup(peer.close)
        # The peer reads everything and answers nothing.
        self.assertTrue(peer.wait_closed(), "the agent kept a silent peer")
        pings = [m for m in peer.received if harness.is_command(m, "ping")]
        self.assertTrue(pings, "the agent closed without pinging first")
        self.assertEqual({"keepalive": True}, pings[0]["params"])
        agent.wait_for_output(r"lost: keepalive: no answer")
        peer, second = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        self.assertEqual(first["params"]["agent_id"],
                         second["params"]["agent_id"])

    def test_keepalive_keeps_an_answering_peer(self):
        server = harness.start_server(self)
        harness.start_agent(self, [server.address], {
            "DEFAULT": {"keepalive_interval": 0.2,
                        "keepalive_timeout": 5.0}})
        peer, _ = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        for _ in range(3):
            peer.take_command("ping", timeout=harness.MESSAGE_TIMEOUT)
        self.assertFalse(peer.closed)
        self.assertEqual({"ok": 1}, peer.call("ping", {"ok": 1})["result"])


class TestTaskStateAcrossRestarts(unittest.TestCase):
    def test_task_running_when_the_agent_died_is_reported_failed(self):
        server = harness.start_server(self)
        workdir = harness.make_workdir(self)
        agent = harness.start_agent(self, [server.address], workdir=workdir)
        peer, _ = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        response = peer.call("testing.sleep", {"task_id": "killed-1",
                                               "seconds": 300, "steps": 300})
        self.assertEqual("running", response["result"]["state"])
        peer.take(lambda m: harness.is_task_status(m, "killed-1"),
                  what="a running update of killed-1")
        # No clean shutdown: the process dies in the middle of the task.
        agent.process.kill()
        agent.wait_exit()
        self.assertTrue(peer.wait_closed())
        harness.start_agent(self, [server.address], workdir=workdir)
        peer, handshake = harness.accept_handshake(server)
        self.addCleanup(peer.close)
        listed = {t["task_id"]: t for t in handshake["params"]["tasks"]}
        self.assertIn("killed-1", listed)
        self.assertEqual("error", listed["killed-1"]["state"])
        self.assertTrue(listed["killed-1"]["msg"])
        final = peer.take(lambda m: harness.is_task_status(m, "killed-1"),
                          what="the final state of killed-1")
        self.assertEqual("error", final["params"]["state"])
        status = peer.call("status", {})["result"]
        states = {t["task_id"]: t["state"] for t in status["tasks"]}
        self.assertEqual("error", states["killed-1"])


if __name__ == "__main__":
    unittest.main()
