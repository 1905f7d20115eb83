"""A real agent against a raw-socket endpoint: trust and size rules.

The endpoint here is a listening socket driven by hand (harness), so each
test decides exactly what the agent is answered: a ``session_token``, a
``max_line_length``, a ``fatal_error`` or a link that closes at once. The
links are plaintext, set explicitly as the TLS contract asks.
"""

import json
import os
import re
import stat
import time
import unittest

from tests.functional import harness
from tests.unit.runtime import test_agent_trust as fixtures

PLAINTEXT = {"tls": {"enabled": "false"}}
LIMIT = 64 * 1024


class RecordingPeer(harness.JsonLinePeer):
    """A peer that notes the length of every line it receives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line_lengths = []

    def _received_line(self, line):
        self.line_lengths.append(len(line))
        super()._received_line(line)


def accept_recording(server, answer=harness.answer_core,
                     timeout=harness.MESSAGE_TIMEOUT):
    server.sock.settimeout(timeout)
    sock, address = server.sock.accept()
    sock.settimeout(None)
    return RecordingPeer(sock, name="agent at %s:%d" % address,
                         answer=answer)


def overrides(agent_id, **defaults):
    sections = harness.merge_sections(PLAINTEXT, {
        "DEFAULT": dict({"agent_id": agent_id}, **defaults)})
    return sections


class AgentCase(unittest.TestCase):
    def setUp(self):
        self.server = harness.start_server(self)
        self.workdir = harness.make_workdir(self)
        self.state_dir = os.path.join(self.workdir, "state")

    def start_agent(self, agent_id, **defaults):
        return harness.start_agent(self, [self.server.address],
                                   overrides(agent_id, **defaults),
                                   workdir=self.workdir)

    def handshake(self, reply=None, answer=harness.answer_core):
        peer, first = harness.accept_handshake(self.server, answer=answer,
                                               reply=reply)
        self.addCleanup(peer.close)
        return peer, first["params"]


class TestSessionToken(AgentCase):
    def test_token_is_sent_back_after_reconnects_and_restarts(self):
        agent = self.start_agent("trust-token-1")
        peer, params = self.handshake(reply={
            "agent_id": "trust-token-1", "protocol_version": "v1",
            "session_token": "tok-1"})
        self.assertNotIn("session_token", params)
        peer.close()
        peer, params = self.handshake()
        self.assertEqual("tok-1", params.get("session_token"))
        path = os.path.join(self.state_dir, "session-tokens.json")
        self.assertEqual(0o600, stat.S_IMODE(os.stat(path).st_mode))
        with open(path) as stream:
            self.assertEqual("trust-token-1", json.load(stream)["agent_id"])
        agent.stop()
        peer.wait_closed()

        self.start_agent("trust-token-1")
        peer, params = self.handshake(reply={"session_token": "tok-2"})
        self.assertEqual("tok-1", params.get("session_token"))
        peer.close()
        peer, params = self.handshake()
        self.assertEqual("tok-2", params.get("session_token"))

    def test_garbled_or_foreign_token_file_starts_without_token(self):
        os.makedirs(self.state_dir)
        path = os.path.join(self.state_dir, "session-tokens.json")
        for content in ('{"agent_id": "trust-token-2", "tok',
                        json.dumps({"agent_id": "someone-else", "tokens": {
                            self.server.address: "stolen"}})):
            with self.subTest(content=content[:30]):
                with open(path, "w") as stream:
                    stream.write(content)
                agent = self.start_agent("trust-token-2")
                peer, params = self.handshake()
                self.assertNotIn("session_token", params)
                agent.wait_for_output(r"WARNING .*session token")
                agent.stop()
                peer.wait_closed()

    def test_fatal_error_answer_is_logged_escaped_at_error(self):
        agent = self.start_agent("trust-fatal-1")
        peer = self.server.accept()
        self.addCleanup(peer.close)
        peer.take_command("handshake")
        peer.send({"fatal_error": "handshake refused: session_token "
                                  "mismatch\nFAKE 1999 INFO forged line"})
        peer.close()
        agent.wait_for_output(
            r"ERROR .*refused the handshake: \"handshake refused: "
            r"session_token mismatch\\nFAKE")
        self.assertIsNone(re.search(r"^FAKE", agent.output(), re.M))


class TestBackoff(AgentCase):
    def connection_times(self, refuse, window):
        """Accept for ``window`` seconds; each link is answered (or refused
        with a fatal error) and closed at once."""
        times = []
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            try:
                peer = self.server.accept(
                    timeout=max(0.05, deadline - time.monotonic()))
            except harness.PeerTimeout:
                break
            times.append(time.monotonic())
            try:
                first = peer.take_command("handshake")
                if refuse:
                    peer.send({"fatal_error": "handshake refused: test"})
                else:
                    peer.respond(first, {"agent_id": "x"})
            except (AssertionError, OSError):
                pass
            peer.close()
        return times

    def check_growth(self, times):
        intervals = [b - a for a, b in zip(times, times[1:])]
        # Reset on every handshake, 0.2 s would allow some 40 links in 8 s;
        # growing to 2 s it allows at most about 8.
        self.assertLessEqual(len(times), 12, intervals)
        self.assertGreaterEqual(len(times), 4, intervals)
        self.assertGreater(max(intervals[-2:]), 0.7, intervals)
        self.assertGreater(max(intervals[-2:]), 2 * min(intervals[:2]),
                           intervals)

    def test_link_that_closes_at_once_backs_off(self):
        self.start_agent("trust-backoff-1", reconnect_initial_delay=0.2,
                         reconnect_max_delay=2.0)
        self.check_growth(self.connection_times(refuse=False, window=8.0))

    def test_fatal_error_at_handshake_backs_off(self):
        self.start_agent("trust-backoff-2", reconnect_initial_delay=0.2,
                         reconnect_max_delay=2.0)
        self.check_growth(self.connection_times(refuse=True, window=8.0))


class TestLineLimit(AgentCase):
    """An endpoint that accepts 64 KiB lines and an agent with 201 tasks."""

    def test_200_task_state_dir_under_a_64_kib_limit(self):
        records = fixtures.many_records(200, result_size=1024, msg_size=1000)
        for entry in records:
            entry["method"] = "testing.sleep"
        huge = fixtures.record("huge", "testing.sleep",
                               result={"blob": "h" * (200 * 1024)})
        fixtures.write_records(self.state_dir, records + [huge])
        self.start_agent("trust-limit-1")

        # The endpoint: a line over the limit is fatal, as a real one does.
        for attempt in range(3):
            peer = accept_recording(self.server)
            self.addCleanup(peer.close)
            first = peer.take_command("handshake")
            if max(peer.line_lengths) <= LIMIT:
                break
            peer.send({"fatal_error": "line longer than %d bytes" % LIMIT})
            peer.close()
        else:
            self.fail("every handshake was longer than %d bytes: the agent "
                      "loops on fatal_error" % LIMIT)
        peer.respond(first, {"agent_id": "trust-limit-1",
                             "protocol_version": "v1",
                             "max_line_length": LIMIT})
        listed = first["params"]["tasks"]
        self.assertEqual(201, len(listed)
                         + first["params"].get("tasks_omitted", 0))
        self.assertEqual([], [t for t in listed if "result" in t])

        finals = {}
        while len(finals) < 201:
            update = peer.take(
                lambda m: harness.is_task_status(m)
                and m["params"]["state"] != "running",
                what="the final states (%d so far)" % len(finals))
            finals[update["params"]["task_id"]] = update["params"]
        self.assertEqual({r["task_id"] for r in records} | {"huge"},
                         set(finals))
        stand_in = finals["huge"]["result"]
        self.assertTrue(stand_in["truncated"])
        self.assertGreater(stand_in["size"], 200 * 1024)
        self.assertEqual({"blob": "r" * 1024}, finals["task-001"]["result"])
        self.assertEqual("m" * 1000, finals["task-000"]["msg"])

        def listed_in_status():
            status = peer.call("status", {})["result"]
            return len(status["tasks"]) + status.get("tasks_omitted", 0)
        # Once the final states are acknowledged, the agent keeps only its
        # task_history (100) of them.
        harness.wait_until(lambda: listed_in_status() == 100, 15,
                           what="status listing task_history tasks")
        # Answers that cannot fit are refused, not sent oversized.
        echo = peer.call("testing.echo", {"value": "e" * (100 * 1024)})
        self.assertEqual("ResponseTooLarge", echo["error"]["type"])
        again = peer.call("testing.sleep", {"task_id": "huge"})
        self.assertEqual("ResponseTooLarge", again["error"]["type"])
        self.assertEqual({"x": 1}, peer.call("ping", {"x": 1})["result"])
        self.assertLessEqual(max(peer.line_lengths), LIMIT)


class TestConflict(AgentCase):
    def test_task_id_reused_for_other_work_is_a_conflict(self):
        fixtures.write_records(self.state_dir, [
            fixtures.record("erase-old", "decom.disk_erase",
                            result={"devices": []}),
            fixtures.record("erase-new", "decom.disk_erase",
                            result={"devices": []}, digest="0" * 64)])
        agent = self.start_agent("trust-conflict-1",
                                 enabled_extensions=["testing", "decom"])
        peer, _ = self.handshake()
        conflict = peer.call("decom.qc", {"task_id": "erase-old",
                                          "spec": {}})
        self.assertEqual("Conflict", conflict["error"]["type"], conflict)
        self.assertEqual(-32005, conflict["error"]["code"])
        self.assertEqual({"task_id": "erase-old",
                          "method": "decom.disk_erase"},
                         conflict["error"]["details"])
        # A record from before digests: the same method is a repeat.
        repeat = peer.call("decom.disk_erase", {"task_id": "erase-old"})
        self.assertEqual("complete", repeat["result"]["state"], repeat)
        # A record with a digest: other params are a conflict.
        other = peer.call("decom.disk_erase", {"task_id": "erase-new"})
        self.assertEqual("Conflict", other["error"]["type"], other)

        started = peer.call("testing.sleep", {"task_id": "live-1",
                                              "seconds": 0.1, "steps": 1})
        self.assertEqual("running", started["result"]["state"])
        peer.take(lambda m: harness.is_task_status(m, "live-1")
                  and m["params"]["state"] == "complete")
        agent.stop()
        peer.wait_closed()

        self.start_agent("trust-conflict-1",
                         enabled_extensions=["testing", "decom"])
        peer, _ = self.handshake()
        for method, params in (
                ("testing.disk", {"task_id": "live-1"}),
                ("testing.sleep", {"task_id": "live-1", "seconds": 0.2,
                                   "steps": 1})):
            answer = peer.call(method, params)
            self.assertEqual("Conflict", answer["error"]["type"], answer)
            self.assertEqual("testing.sleep",
                             answer["error"]["details"]["method"])
        same = peer.call("testing.sleep", {"steps": 1, "seconds": 0.1,
                                           "task_id": "live-1"})
        self.assertEqual("complete", same["result"]["state"], same)
        self.assertEqual({"slept": 0.1, "steps": 1},
                         same["result"]["result"])


if __name__ == "__main__":
    unittest.main()
