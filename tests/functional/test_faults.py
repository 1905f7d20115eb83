"""Fault injection: dead endpoints, broken links, and the endpoint's limits.

Real ``teeth-agent`` and ``teeth-endpoint`` processes on 127.0.0.1, with a
:class:`faults_proxy.FaultProxy` between them where the link itself must
misbehave. The proxy's tap records every complete line that went through,
so the tests check what each side was really sent, not what it logged.
Every wait is bounded and no test asserts how fast anything happened.
"""

import hashlib
import http.server
import json
import os
import socket
import threading
import unittest
import uuid

from importlib import metadata

from tests.functional import faults_endpoint
from tests.functional import faults_proxy
from tests.functional import faults_throttle
from tests.functional import harness
from tests.functional import loopdev

AGENT_ID = "fault-agent"

# Short timers so a broken link is noticed and left quickly. Plaintext,
# explicitly: the proxy reads and cuts the lines going through, and the
# limits below are about raw bytes on the endpoint's port.
FAST_AGENT = harness.merge_sections(harness.PLAINTEXT_AGENT, {
    "DEFAULT": {"agent_id": AGENT_ID,
                "reconnect_initial_delay": 0.05,
                "reconnect_max_delay": 0.3,
                "task_status_interval": 0.05}})


def tapped_messages(proxy, direction):
    """Every complete line the proxy forwarded, decoded; a line that is not
    a JSON object fails the test (nobody may ever have been sent one)."""
    messages = []
    for number, line in proxy.lines_going(direction):
        try:
            message = json.loads(line)
        except ValueError:
            raise AssertionError("a corrupt line went through: %r"
                                 % line[:200]) from None
        if not isinstance(message, dict):
            raise AssertionError("a non-object line went through: %r"
                                 % line[:200])
        messages.append((number, message))
    return messages


class FaultTestCase(unittest.TestCase):
    def start_chain(self, agent_overrides=None, endpoint_overrides=None):
        """endpoint <- proxy <- agent; returns (endpoint, proxy, agent)."""
        endpoint = faults_endpoint.RestartableEndpoint(
            self, harness.merge_sections(harness.PLAINTEXT_ENDPOINT,
                                         endpoint_overrides))
        proxy = faults_proxy.FaultProxy(endpoint.port)
        self.addCleanup(proxy.close)
        agent = harness.start_agent(
            self, [proxy.address],
            harness.merge_sections(FAST_AGENT, agent_overrides))
        endpoint.wait_agent(AGENT_ID)
        return endpoint, proxy, agent

    def start_task(self, endpoint, method, params):
        response = endpoint.ask(
            lambda client: client.call(AGENT_ID, method, params))
        self.assertIn("result", response, response)
        self.assertEqual("running", response["result"]["result"]["state"])

    def assert_no_update_after_final(self, proxy, task_id):
        """In the tapped agent-to-endpoint stream, no ``running`` update of
        the task follows its first final state."""
        statuses = faults_endpoint.task_statuses(
            proxy.lines_going(faults_proxy.UP), task_id)
        states = [params["state"] for _, params in statuses]
        finals = [i for i, state in enumerate(states)
                  if state in ("complete", "error")]
        self.assertTrue(finals, "no final state was sent: %s" % states)
        after = states[finals[0]:]
        self.assertNotIn("running", after, states)
        # Every repeat of the final state is the same state.
        self.assertEqual({states[finals[0]]}, set(after), states)

    def restart_during(self, endpoint, task_id, times=10):
        """Kill and restart the endpoint ``times`` times, each time once
        the running server has learned that the task is still running."""
        for _ in range(times):
            endpoint.wait_agent(AGENT_ID)
            endpoint.wait_task(AGENT_ID, task_id, ("running",))
            endpoint.restart()
        endpoint.wait_agent(AGENT_ID)

    def assert_restarts_seen(self, endpoint, proxy, task_id, times=10):
        handshakes = [m for _, m in tapped_messages(proxy, faults_proxy.UP)
                      if harness.is_command(m, "handshake")]
        self.assertGreaterEqual(len(handshakes), times + 1)
        for handshake in handshakes[1:]:
            self.assertIn(task_id, [t["task_id"]
                                    for t in handshake["params"]["tasks"]])
        outputs = endpoint.outputs()
        self.assertEqual(times + 1, len(outputs))
        for output in outputs:
            self.assertNotIn("after its final state", output)

    def assert_never_broke_protocol(self, *outputs):
        for output in outputs:
            self.assertNotIn("broke the protocol", output)
            self.assertNotIn("not valid JSON", output)


class TestEndpointRestarts(FaultTestCase):
    def test_endpoint_killed_ten_times_during_a_long_task(self):
        endpoint, proxy, agent = self.start_chain()
        release = os.path.join(endpoint.workdir, "release-t1")
        self.start_task(endpoint, "testing.disk",
                        {"task_id": "t1", "release_file": release,
                         "seconds": 300})
        self.restart_during(endpoint, "t1")
        with open(release, "w"):
            pass
        final = endpoint.wait_task(AGENT_ID, "t1", ("complete", "error"))
        self.assertEqual("complete", final["state"], final)
        # The task was still holding on when the tenth restart was done.
        self.assertTrue(final["result"]["released"], final)
        # Eleven servers, each greeted by a handshake carrying the task.
        self.assert_restarts_seen(endpoint, proxy, "t1")
        # Once the final state is acknowledged nothing more is sent: a
        # ping round trip through the agent proves the link is idle-safe.
        endpoint.ask(lambda c: c.call(AGENT_ID, "ping", {"after": 1}))
        self.assert_no_update_after_final(proxy, "t1")
        self.assert_never_broke_protocol(agent.output(), *endpoint.outputs())


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        return


class TestEndpointRestartsDuringDiskTasks(FaultTestCase):
    """The same ten restarts during a real erase and a real image write.

    The agent's writes to its loop device are throttled (a blkio cgroup)
    so the task is certainly still running through every restart; the
    limit is lifted afterwards and the task finishes at full speed.
    """

    SLOW = 512 * 1024  # bytes per second while the endpoint restarts

    def setUp(self):
        loopdev.require_root()
        installed = {entry.name for entry in metadata.entry_points(
            group="teeth_agent.extensions")}
        if not {"decom", "standbye"} <= installed:
            self.skipTest("decom and standbye are not both installed")
        if not faults_throttle.available():
            self.skipTest("no cgroup v1 blkio throttling on this machine")
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)

    def start_disk_chain(self, device):
        work = harness.make_workdir(self)
        endpoint, proxy, agent = self.start_chain({
            "DEFAULT": {"enabled_extensions": ["decom", "standbye"]},
            "hardware": {"device_include": [device]},
            "standbye": {"image_cache_dir": os.path.join(work, "cache"),
                         "work_dir": os.path.join(work, "standbye")}})
        throttle = faults_throttle.WriteThrottle(self, [device], self.SLOW)
        throttle.add(agent.pid)
        return endpoint, proxy, agent, throttle

    def serve(self, directory):
        def handler(*args, **kwargs):
            return _QuietHandler(*args, directory=directory, **kwargs)
        server = http.server.ThreadingHTTPServer((harness.HOST, 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        return "http://%s:%d/" % (harness.HOST, server.server_address[1])

    def test_erase_survives_ten_endpoint_restarts(self):
        size = 16 * 1024 * 1024
        device = self.loops.create(size, fill="random")
        endpoint, proxy, agent, throttle = self.start_disk_chain(device)
        self.start_task(endpoint, "decom.disk_erase",
                        {"task_id": "e1", "devices": [device]})
        self.restart_during(endpoint, "e1")
        throttle.limit(0)
        final = endpoint.wait_task(AGENT_ID, "e1", ("complete", "error"),
                                   timeout=120)
        self.assertEqual("complete", final["state"], final)
        (erased,) = final["result"]["devices"]
        self.assertTrue(erased["verified"], erased)
        with open(self.loops.backing_file(device), "rb") as stream:
            self.assertEqual(bytes(size), stream.read())
        self.assert_restarts_seen(endpoint, proxy, "e1")
        self.assert_no_update_after_final(proxy, "e1")
        self.assert_never_broke_protocol(agent.output(), *endpoint.outputs())

    def test_image_write_survives_ten_endpoint_restarts(self):
        # 64 s of writing at SLOW: the ten restarts (two or three seconds
        # each on a loaded machine) must all happen while it runs. The
        # limit is lifted after them.
        size = 32 * 1024 * 1024
        images = harness.make_workdir(self)
        content = os.urandom(size)
        with open(os.path.join(images, "image.raw"), "wb") as stream:
            stream.write(content)
        base_url = self.serve(images)
        device = self.loops.create(size + 4 * 1024 * 1024)
        endpoint, proxy, agent, throttle = self.start_disk_chain(device)
        self.start_task(endpoint, "standbye.prepare_image", {
            "task_id": "p1",
            "image": {"id": str(uuid.uuid4()),
                      "urls": [base_url + "image.raw"],
                      "hashes": {"sha256":
                                 hashlib.sha256(content).hexdigest()},
                      "size": size},
            "root_device_hints": {"name": device}})
        self.restart_during(endpoint, "p1")
        throttle.limit(0)
        final = endpoint.wait_task(AGENT_ID, "p1", ("complete", "error"),
                                   timeout=120)
        self.assertEqual("complete", final["state"], final)
        with open(self.loops.backing_file(device), "rb") as stream:
            self.assertEqual(content, stream.read(size))
        self.assert_restarts_seen(endpoint, proxy, "p1")
        self.assert_no_update_after_final(proxy, "p1")
        self.assert_never_broke_protocol(agent.output(), *endpoint.outputs())


class TestBrokenLinks(FaultTestCase):
    def test_stalled_link_is_detected_by_keepalive_and_recovers(self):
        endpoint, proxy, agent = self.start_chain(
            # Short enough to keep the test quick, long enough that a loaded
            # 2-core machine does not drop the link before the stall.
            {"DEFAULT": {"keepalive_interval": 1.0,
                         "keepalive_timeout": 2.0}})
        self.assertEqual(1, proxy.stall())
        agent.wait_for_output(r"keepalive: no answer")
        harness.wait_until(lambda: proxy.accepted >= 2, harness.START_TIMEOUT,
                           what="a new connection after the stall")
        endpoint.wait_agent(AGENT_ID)
        response = endpoint.ask(
            lambda c: c.call(AGENT_ID, "ping", {"after": "stall"}))
        self.assertEqual({"after": "stall"}, response["result"]["result"])
        # The answer came over a new link; the stalled one moved nothing.
        pings = [n for n, m in tapped_messages(proxy, faults_proxy.DOWN)
                 if harness.is_command(m, "ping")
                 and m["params"] == {"after": "stall"}]
        self.assertEqual(1, len(pings))
        self.assertGreater(pings[0], 1)

    def test_dropped_links_do_not_lose_a_task(self):
        endpoint, proxy, agent = self.start_chain()
        self.start_task(endpoint, "testing.sleep",
                        {"task_id": "d1", "seconds": 3, "steps": 30})
        for drop in range(3):
            harness.wait_until(lambda: proxy.open_links() == 1,
                               harness.START_TIMEOUT, what="a live link")
            endpoint.wait_agent(AGENT_ID)
            self.assertEqual(1, proxy.drop())
        final = endpoint.wait_task(AGENT_ID, "d1", ("complete", "error"))
        self.assertEqual("complete", final["state"], final)
        self.assertEqual({"slept": 3, "steps": 30}, final["result"])
        self.assertGreaterEqual(proxy.accepted, 4)
        self.assert_no_update_after_final(proxy, "d1")
        self.assert_never_broke_protocol(agent.output(),
                                         *endpoint.outputs())

    def test_final_state_cut_mid_line_is_resent_and_never_half_read(self):
        endpoint, proxy, agent = self.start_chain()
        proxy.cut_next(faults_proxy.UP,
                       rb'"task_status".*"state":\s*"complete"')
        self.start_task(endpoint, "testing.sleep",
                        {"task_id": "c1", "seconds": 0.5, "steps": 5})
        self.assertTrue(proxy.wait_cut(faults_proxy.UP,
                                       harness.START_TIMEOUT))
        final = endpoint.wait_task(AGENT_ID, "c1", ("complete", "error"))
        self.assertEqual("complete", final["state"], final)
        # The half that went through is not JSON: had the endpoint taken
        # it as a message it would have sent a fatal error and said so.
        (direction, link, half), = proxy.cut_lines
        self.assertEqual(1, link)
        with self.assertRaises(ValueError):
            json.loads(half)
        # The complete state reached the endpoint on a later connection.
        # The endpoint may learn the outcome first from the new link's
        # handshake summary; the full task_status follows it on that link.

        def completes():
            statuses = faults_endpoint.task_statuses(
                proxy.lines_going(faults_proxy.UP), "c1")
            return [n for n, p in statuses if p["state"] == "complete"]
        harness.wait_until(completes, harness.START_TIMEOUT,
                           what="the complete task_status re-sent")
        completes = completes()
        self.assertGreater(min(completes), 1)
        fatal = [m for _, m in tapped_messages(proxy, faults_proxy.DOWN)
                 if "fatal_error" in m]
        self.assertEqual([], fatal)
        self.assert_no_update_after_final(proxy, "c1")
        self.assert_never_broke_protocol(agent.output(),
                                         *endpoint.outputs())

    def test_command_cut_mid_line_is_never_run_by_the_agent(self):
        endpoint, proxy, agent = self.start_chain()
        proxy.cut_next(faults_proxy.DOWN, rb"cut-marker-one")
        response = endpoint.ask(lambda c: c.call(
            AGENT_ID, "testing.echo",
            {"value": 1, "log_message": "cut-marker-one"}))
        self.assertIn("error", response, response)
        # The proxy marks the cut done just after closing the link, which
        # is what ended the call: on a loaded machine the mark may come a
        # moment after the answer.
        self.assertTrue(proxy.wait_cut(faults_proxy.DOWN,
                                       harness.MESSAGE_TIMEOUT))
        endpoint.wait_agent(AGENT_ID)
        harness.wait_until(lambda: proxy.accepted >= 2, harness.START_TIMEOUT,
                           what="the agent's new connection")
        response = endpoint.ask(lambda c: c.call(
            AGENT_ID, "testing.echo",
            {"value": 2, "log_message": "cut-marker-two"}))
        self.assertEqual({"value": 2}, response["result"]["result"])
        agent.wait_for_output(r"cut-marker-two")
        output = agent.output()
        self.assertNotIn("cut-marker-one", output)
        fatal = [m for _, m in tapped_messages(proxy, faults_proxy.UP)
                 if "fatal_error" in m]
        self.assertEqual([], fatal)
        self.assert_never_broke_protocol(output, *endpoint.outputs())


class TestEndpointLimits(unittest.TestCase):
    def test_two_mib_line_is_fatal(self):
        endpoint = harness.start_endpoint(self, harness.PLAINTEXT_ENDPOINT)
        peer = harness.connect_peer(endpoint.port)
        self.addCleanup(peer.close)
        line = b'{"id":"big","version":"v1","method":"ping","params":{"x":"'
        line += b"x" * (2 * 1024 * 1024) + b'"}}\n'
        peer.send_raw(line, ignore_errors=True)
        fatal = peer.take(lambda m: "fatal_error" in m,
                          what="fatal_error")
        self.assertIn("longer than", fatal["fatal_error"])
        self.assertTrue(peer.wait_closed())
        self.assertEqual([], peer.pending(lambda m: harness.is_response(m)))
        # The endpoint itself is fine: a new connection is served.
        other = harness.connect_peer(endpoint.port)
        self.addCleanup(other.close)
        self.assertEqual({"n": 1}, other.call("ping", {"n": 1})["result"])

    def test_connections_per_address_are_limited(self):
        endpoint = harness.start_endpoint(self, harness.merge_sections(
            harness.PLAINTEXT_ENDPOINT,
            {"endpoint": {"max_connections_per_address": 3}}))
        peers = []
        for number in range(3):
            peer = harness.connect_peer(endpoint.port)
            self.addCleanup(peer.close)
            self.assertEqual({"n": number},
                             peer.call("ping", {"n": number})["result"])
            peers.append(peer)
        extra = harness.connect_peer(endpoint.port)
        self.addCleanup(extra.close)
        extra.send_raw(
            b'{"id":"x","version":"v1","method":"ping","params":{}}\n',
            ignore_errors=True)
        self.assertTrue(extra.wait_closed(), "a fourth connection was kept")
        self.assertEqual([], extra.received)
        # The three admitted ones are still served.
        for number, peer in enumerate(peers):
            self.assertEqual({"again": number},
                             peer.call("ping", {"again": number})["result"])
        # Closing one frees a slot.
        peers[0].close()

        def admitted():
            peer = harness.connect_peer(endpoint.port)
            try:
                response = peer.call("ping", {"n": "later"})
            except AssertionError:
                return None
            finally:
                peer.close()
            return response
        response = harness.wait_until(admitted, harness.START_TIMEOUT,
                                      what="a freed connection slot")
        self.assertEqual({"n": "later"}, response["result"])

    def test_connection_without_handshake_is_closed(self):
        endpoint = harness.start_endpoint(self, harness.merge_sections(
            harness.PLAINTEXT_ENDPOINT,
            {"endpoint": {"handshake_timeout": 1.0}}))
        silent = harness.connect_peer(endpoint.port)
        self.addCleanup(silent.close)
        agent = harness.connect_peer(endpoint.port)
        self.addCleanup(agent.close)
        response = agent.call("handshake", {
            "agent_id": "limits-agent", "agent_version": "test",
            "protocol_versions": ["v1"], "hardware": {}, "extensions": {},
            "tasks": []})
        self.assertIn("result", response, response)
        # The silent connection is told why and closed.
        fatal = silent.take(lambda m: "fatal_error" in m,
                            timeout=harness.START_TIMEOUT,
                            what="fatal_error")
        self.assertIn("no handshake", fatal["fatal_error"])
        self.assertTrue(silent.wait_closed())
        # The agent that shook hands outlived the silent one and is served.
        self.assertFalse(agent.closed)
        self.assertEqual({"still": True},
                         agent.call("ping", {"still": True})["result"])

    def test_half_open_tcp_connection_is_closed_too(self):
        # A client that sends part of a line and nothing more is still an
        # unauthenticated connection: the same limit applies.
        endpoint = harness.start_endpoint(self, harness.merge_sections(
            harness.PLAINTEXT_ENDPOINT,
            {"endpoint": {"handshake_timeout": 1.0}}))
        sock = socket.create_connection((harness.HOST, endpoint.port),
                                        timeout=harness.MESSAGE_TIMEOUT)
        peer = harness.JsonLinePeer(sock, name="half a line")
        self.addCleanup(peer.close)
        peer.send_raw(b'{"id":"h","version":"v1","method":"handsh')
        self.assertTrue(peer.wait_closed(harness.START_TIMEOUT),
                        "a never-finished line kept the connection open")


if __name__ == "__main__":
    unittest.main()
