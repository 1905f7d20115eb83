"""A real agent process against a raw-socket server following docs/protocol.md.

The test is the endpoint: it listens on 127.0.0.1, a real ``teeth-agent``
(with the test-only ``testing`` extension) connects to it, and every exchange
is written and read as bytes. Nothing of the project's own client or
transport is used on the test's side.
"""

import json
import os
import unittest

from tests.functional import harness

EXPECTED_TESTING_METHODS = ["testing.disk", "testing.echo", "testing.sleep"]


class AgentPeerTestCase(unittest.TestCase):
    """One agent per class; every test gets a fresh connection to it.

    Closing the previous connection makes the agent reconnect, so each test
    starts right after a handshake, whatever the test before it did to the
    connection (fatal errors included).
    """

    agent_overrides = None

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.workdir = harness.make_workdir(cls, cls_level=True)
        cls.server = harness.start_server(cls, cls_level=True)
        cls.agent = harness.start_agent(cls, [cls.server.address],
                                        cls.agent_overrides,
                                        workdir=cls.workdir, cls_level=True)
        cls.current = None

    @classmethod
    def tearDownClass(cls):
        if cls.current is not None:
            cls.current.close()
            cls.current = None
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.peer, self.handshake = self.reconnect()

    def reconnect(self, answer=harness.answer_core):
        """Drop the current connection and accept the agent's next one."""
        cls = type(self)
        if cls.current is not None:
            cls.current.close()
            cls.current = None
        try:
            peer, handshake = harness.accept_handshake(self.server,
                                                       answer=answer)
        except AssertionError as exc:
            raise AssertionError("%s\nagent output:\n%s"
                                 % (exc, self.agent.output()[-4000:]))
        cls.current = peer
        return peer, handshake

    def assert_error(self, response, error_type, code=None):
        self.assertIn("error", response, response)
        self.assertNotIn("result", response, response)
        error = response["error"]
        self.assertEqual(error_type, error.get("type"), response)
        self.assertIsInstance(error.get("msg"), str, response)
        self.assertTrue(error["msg"], response)
        if code is not None:
            self.assertEqual(code, error.get("code"), response)
        else:
            self.assertIsInstance(error.get("code"), int, response)
        self.assertEqual("v1", response.get("version"), response)
        return error

    def assert_alive(self, peer=None):
        """A ping on the connection is answered: it is still up."""
        peer = peer or self.peer
        params = {"still": "up"}
        response = peer.call("ping", params)
        self.assertEqual(params, response.get("result"), response)

    def assert_fatal_then_closed(self, peer=None):
        peer = peer or self.peer
        fatal = peer.take(lambda m: "fatal_error" in m,
                          what="a fatal_error message")
        self.assertIsInstance(fatal["fatal_error"], str)
        self.assertTrue(peer.wait_closed(), "the agent did not close the "
                        "connection after its fatal error")
        answers = [m for m in peer.received
                   if harness.is_response(m) and m.get("id") in
                   peer.sent_ids]
        self.assertEqual([], answers, "a message answered before the "
                         "fatal error was expected to be none")
        return fatal


class TestHandshakeAndCoreMethods(AgentPeerTestCase):
    def test_handshake_comes_first_with_every_field(self):
        self.assertEqual("v1", self.handshake.get("version"))
        self.assertIsInstance(self.handshake.get("id"), str)
        params = self.handshake["params"]
        for field in ("agent_id", "agent_version", "protocol_versions",
                      "hardware", "extensions", "tasks"):
            self.assertIn(field, params)
        self.assertIsInstance(params["agent_id"], str)
        self.assertTrue(params["agent_id"])
        self.assertIsInstance(params["agent_version"], str)
        self.assertEqual(["v1"], params["protocol_versions"])
        hardware = params["hardware"]
        for field in ("vendor", "serial", "uuid", "macs"):
            self.assertIn(field, hardware)
        self.assertTrue("product" in hardware or "model" in hardware,
                        hardware)
        self.assertIsInstance(hardware["macs"], list)
        self.assertEqual({"testing": EXPECTED_TESTING_METHODS},
                         params["extensions"])
        self.assertIsInstance(params["tasks"], list)
        # Nothing came before the handshake.
        self.assertIs(self.handshake, self.peer.received[0])

    def test_handshake_is_sent_again_on_every_connection(self):
        first_id = self.handshake["params"]["agent_id"]
        peer, again = self.reconnect()
        self.assertIs(again, peer.received[0])
        self.assertEqual(first_id, again["params"]["agent_id"])

    def test_ping_echoes_params_unchanged(self):
        cases = [
            {},
            {"a": 1},
            {"text": "Grüße, 你好, emoji \U0001F980, nul \u0000 and \"q\""},
            {"nested": {"list": [1, 2.5, -3, None, True, False, "x"],
                        "deep": {"a": {"b": {"c": [[], {}, [{}]]}}}}},
            {"big": 2 ** 62, "small": -2 ** 62, "float": 1.0e-300,
             "empty": "", "keys with space": {"": "empty key"}},
        ]
        for params in cases:
            with self.subTest(params=params):
                response = self.peer.call("ping", params)
                self.assertEqual(params, response.get("result"), response)
                self.assertNotIn("error", response)
                self.assertEqual("v1", response.get("version"))

    def test_ping_echo_preserves_escaped_unicode_bytes(self):
        # Hand-written JSON with escapes and raw UTF-8 side by side.
        line = ('{"version":"v1","id":"u1","method":"ping","params":'
                '{"esc":"\\u00e9\\ud83e\\udd80","raw":"é🦀"}}\n')
        self.peer.send_raw(line.encode("utf-8"))
        response = self.peer.take_response("u1")
        self.assertEqual({"esc": "é\U0001F980", "raw": "é\U0001F980"},
                         response["result"])

    def test_status_has_the_contract_fields(self):
        response = self.peer.call("status", {})
        result = response.get("result")
        self.assertIsInstance(result, dict, response)
        self.assertEqual(self.handshake["params"]["agent_id"],
                         result["agent_id"])
        self.assertEqual(self.handshake["params"]["agent_version"],
                         result["agent_version"])
        self.assertIsInstance(result["uptime"], (int, float))
        self.assertGreaterEqual(result["uptime"], 0)
        self.assertEqual({"testing": EXPECTED_TESTING_METHODS},
                         result["extensions"])
        self.assertIn("hardware_manager", result)
        self.assertTrue(result["hardware_manager"])
        self.assertIsInstance(result["tasks"], list)

    def test_status_uptime_grows(self):
        first = self.peer.call("status", {})["result"]["uptime"]
        harness.wait_until(
            lambda: self.peer.call("status", {})["result"]["uptime"] > first,
            10, what="a larger uptime")


class TestCommandErrors(AgentPeerTestCase):
    def test_unknown_method_is_an_error_and_connection_stays_up(self):
        response = self.peer.call("no.such_method", {"x": 1})
        error = self.assert_error(response, "UnknownMethod", -32601)
        self.assertIn("no.such_method", error["msg"])
        self.assert_alive()

    def test_non_object_params_is_invalid_params(self):
        for params in ([1, 2], "text", 5, None, True):
            with self.subTest(params=params):
                command_id = self.peer.new_id()
                self.peer.send({"version": "v1", "id": command_id,
                                "method": "ping", "params": params})
                response = self.peer.take_response(command_id)
                self.assert_error(response, "InvalidParams", -32602)
        self.assert_alive()

    def test_unsupported_version_is_an_error(self):
        for version in ("v2", "v0", 1):
            with self.subTest(version=version):
                response = self.peer.call("ping", {"a": 1}, version=version)
                self.assert_error(response, "UnsupportedVersion")
        self.assert_alive()

    def test_response_with_unknown_id_is_dropped(self):
        self.peer.send({"version": "v1", "id": "nobody-asked-1",
                        "result": {"x": 1}})
        self.peer.send({"version": "v1", "id": "nobody-asked-2",
                        "error": {"type": "InternalError", "code": -32603,
                                  "msg": "stray"}})
        self.peer.send({"id": "nobody-asked-3", "result": {}})
        ping_id = self.peer.send_command("ping", {"after": "stray"})
        response = self.peer.take_response(ping_id)
        self.assertEqual({"after": "stray"}, response["result"])
        # Nothing answered the stray responses, and no fatal error came.
        stray = [m for m in self.peer.received
                 if isinstance(m, dict) and
                 (str(m.get("id", "")).startswith("nobody-asked")
                  or "fatal_error" in m)]
        self.assertEqual([], stray)
        self.assertFalse(self.peer.closed)

    def test_crlf_terminated_command_is_answered(self):
        self.peer.send_raw(b'{"version":"v1","id":"crlf-1","method":"ping",'
                           b'"params":{"line":"crlf"}}\r\n')
        response = self.peer.take_response("crlf-1")
        self.assertEqual({"line": "crlf"}, response["result"])

    def test_empty_lines_are_ignored(self):
        self.peer.send_raw(b'\n\r\n\n{"version":"v1","id":"after-empty",'
                           b'"method":"ping","params":{"n":1}}\n\n\r\n')
        response = self.peer.take_response("after-empty")
        self.assertEqual({"n": 1}, response["result"])
        self.assert_alive()
        fatal = [m for m in self.peer.received if "fatal_error" in m]
        self.assertEqual([], fatal)

    def test_200_pipelined_pings_in_one_write_each_answered_once(self):
        ids = ["pipe-%03d" % n for n in range(200)]
        data = b"".join(
            json.dumps({"version": "v1", "id": command_id, "method": "ping",
                        "params": {"n": n}}).encode() + b"\n"
            for n, command_id in enumerate(ids))
        self.peer.send_raw(data)
        answers = {}
        for n, command_id in enumerate(ids):
            response = self.peer.take_response(command_id)
            answers[command_id] = response
            self.assertEqual({"n": n}, response["result"], response)
        # Exactly once each: no second answer arrived by the time a later
        # command (sent after all of them) is answered.
        self.assert_alive()
        counts = {}
        for message in self.peer.received:
            if harness.is_response(message) and message["id"] in answers:
                counts[message["id"]] = counts.get(message["id"], 0) + 1
        self.assertEqual({command_id: 1 for command_id in ids}, counts)


class TestFatalErrors(AgentPeerTestCase):
    """Each of these ends the connection; the agent then reconnects."""

    def test_malformed_json_is_fatal(self):
        self.peer.send_raw(b'{"version":"v1","id":"m1","method":"ping",\n')
        self.assert_fatal_then_closed()

    def test_invalid_utf8_is_fatal(self):
        self.peer.send_raw(b'{"version":"v1","id":"m2","method":"ping",'
                           b'"params":{"x":"\xff\xfe"}}\n')
        self.assert_fatal_then_closed()

    def test_command_without_id_is_fatal(self):
        self.peer.send({"version": "v1", "method": "ping", "params": {}})
        self.assert_fatal_then_closed()

    def test_command_with_non_string_id_is_fatal(self):
        self.peer.send({"version": "v1", "id": 7, "method": "ping",
                        "params": {}})
        self.assert_fatal_then_closed()

    def test_non_object_message_is_fatal(self):
        for message in (b"[1,2]\n", b'"text"\n', b"42\n", b"null\n"):
            with self.subTest(message=message):
                self.peer.send_raw(message)
                self.assert_fatal_then_closed()
                self.peer, self.handshake = self.reconnect()

    def test_two_mib_line_is_fatal_and_the_agent_reconnects(self):
        line = (b'{"version":"v1","id":"huge","method":"ping","params":'
                b'{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}}\n')
        self.peer.send_raw(line, ignore_errors=True)
        fatal_seen = self.peer.wait_closed()
        self.assertTrue(fatal_seen, "the agent kept a 2 MiB line open")
        fatal = [m for m in self.peer.received if "fatal_error" in m]
        answered = [m for m in self.peer.received
                    if harness.is_response(m, "huge")]
        self.assertEqual([], answered)
        self.assertEqual(1, len(fatal), self.peer.received[-5:])
        peer, handshake = self.reconnect()
        self.assertEqual(self.handshake["params"]["agent_id"],
                         handshake["params"]["agent_id"])
        self.assert_alive(peer)

    def test_fatal_error_from_the_server_closes_and_agent_reconnects(self):
        self.peer.send({"fatal_error": "the test says goodbye"})
        self.assertTrue(self.peer.wait_closed(),
                        "the agent kept the connection after fatal_error")
        peer, _ = self.reconnect()
        self.assert_alive(peer)


class TestTasks(AgentPeerTestCase):
    def statuses_of(self, task_id):
        return [m["params"] for m in self.peer.received
                if harness.is_task_status(m, task_id)]

    def wait_terminal(self, task_id, peer=None):
        peer = peer or self.peer
        return peer.take(
            lambda m: (harness.is_task_status(m, task_id)
                       and m["params"].get("state") in ("error",
                                                        "complete")),
            timeout=30, what="final task_status of %s" % task_id)

    def agent_status(self, peer=None):
        return (peer or self.peer).call("status", {})["result"]

    def test_task_acknowledged_at_once_then_reports_to_the_end(self):
        response = self.peer.call("testing.sleep", {
            "task_id": "sleep-1", "seconds": 1.0, "steps": 10})
        self.assertEqual({"task_id": "sleep-1", "state": "running"},
                         response.get("result"), response)
        final = self.wait_terminal("sleep-1")
        # Anything still in flight for the task arrives before the answer
        # to a ping sent now.
        self.assert_alive()
        updates = self.statuses_of("sleep-1")
        running = [u for u in updates if u["state"] == "running"]
        terminal = [u for u in updates if u["state"] != "running"]
        self.assertEqual(1, len(terminal), updates)
        self.assertEqual(terminal[0], updates[-1], "an update came after "
                         "the final state: %s" % updates)
        self.assertEqual("complete", final["params"]["state"])
        self.assertEqual({"slept": 1.0, "steps": 10},
                         final["params"]["result"])
        self.assertTrue(running, "no running update was sent")
        percents = [u["percent"] for u in running]
        self.assertEqual(sorted(percents), percents, "percent went down")
        for update in running:
            self.assertIn("eta", update)
            self.assertTrue(update["eta"] is None
                            or isinstance(update["eta"], (int, float)))
            self.assertTrue(0 <= update["percent"] <= 100, update)
        self.assertTrue(any(u["percent"] > 0 for u in running), running)
        self.assertTrue(any(isinstance(u["eta"], (int, float))
                            for u in running), running)

    def test_failing_task_ends_in_error_with_msg(self):
        self.peer.call("testing.sleep", {"task_id": "fail-1",
                                         "seconds": 0.2, "steps": 2,
                                         "fail": True})
        final = self.wait_terminal("fail-1")["params"]
        self.assertEqual("error", final["state"])
        self.assertIn("failed on request", final["msg"])
        status = {t["task_id"]: t for t in self.agent_status()["tasks"]}
        self.assertEqual("error", status["fail-1"]["state"])

    def test_same_task_id_returns_current_state_without_new_work(self):
        first = self.peer.call("testing.sleep", {
            "task_id": "dup-1", "seconds": 0.6, "steps": 3})
        self.assertEqual("running", first["result"]["state"])
        again = self.peer.call("testing.sleep", {
            "task_id": "dup-1", "seconds": 0.6, "steps": 3})
        self.assertEqual("dup-1", again["result"]["task_id"])
        self.assertIn(again["result"]["state"],
                      ("running", "complete"), again)
        self.wait_terminal("dup-1")
        after = self.peer.call("testing.sleep", {
            "task_id": "dup-1", "steps": 3, "seconds": 0.6})
        self.assertEqual("complete", after["result"]["state"], after)
        self.assertEqual({"slept": 0.6, "steps": 3},
                         after["result"]["result"])
        # The same id with other parameters is other work: Conflict.
        other = self.peer.call("testing.sleep", {
            "task_id": "dup-1", "seconds": 5, "steps": 1})
        error = self.assert_error(other, "Conflict", -32005)
        self.assertEqual("testing.sleep", error["details"]["method"])
        self.assert_alive()
        terminal = [u for u in self.statuses_of("dup-1")
                    if u["state"] != "running"]
        self.assertEqual(1, len(terminal), self.statuses_of("dup-1"))
        tasks = [t for t in self.agent_status()["tasks"]
                 if t["task_id"] == "dup-1"]
        self.assertEqual(1, len(tasks))
        self.assertEqual("complete", tasks[0]["state"])

    def test_exclusive_task_while_another_runs_is_busy(self):
        release = os.path.join(self.workdir, "release-disk-1")
        first = self.peer.call("testing.disk", {
            "task_id": "disk-1", "release_file": release, "seconds": 60})
        self.assertEqual("running", first["result"]["state"], first)
        try:
            second = self.peer.call("testing.disk", {
                "task_id": "disk-2", "seconds": 0.1})
            error = self.assert_error(second, "Busy")
            self.assertIn("disk-1", error["msg"])
            # A non-exclusive task is not held up.
            other = self.peer.call("testing.sleep", {
                "task_id": "beside-disk-1", "seconds": 0.1, "steps": 1})
            self.assertEqual("running", other["result"]["state"], other)
        finally:
            open(release, "w").close()
        final = self.wait_terminal("disk-1")["params"]
        self.assertEqual("complete", final["state"])
        self.assertTrue(final["result"]["released"])
        tasks = {t["task_id"] for t in self.agent_status()["tasks"]}
        self.assertNotIn("disk-2", tasks)
        # Once the first has ended, the exclusive slot is free again.
        third = self.peer.call("testing.disk", {"task_id": "disk-3",
                                                "seconds": 0.1})
        self.assertEqual("running", third["result"]["state"], third)
        self.wait_terminal("disk-3")

    def test_bad_params_are_refused_before_any_task_exists(self):
        cases = [
            ("missing task_id", {"seconds": 1}, "task_id", None),
            ("task_id not a string", {"task_id": 5}, "task_id", None),
            ("wrong type", {"task_id": "bad-type", "seconds": "ten"},
             "seconds", "bad-type"),
            ("out of range", {"task_id": "bad-range", "steps": 0},
             "steps", "bad-range"),
            ("unknown key", {"task_id": "bad-key", "sconds": 1},
             "sconds", "bad-key"),
            ("path traversal", {"task_id": "../x"}, "task_id", "../x"),
            ("absolute path", {"task_id": "/etc/passwd"}, "task_id",
             "/etc/passwd"),
            ("empty", {"task_id": ""}, "task_id", ""),
        ]
        for label, params, param_name, task_id in cases:
            with self.subTest(label):
                response = self.peer.call("testing.sleep", params)
                error = self.assert_error(response, "InvalidParams", -32602)
                self.assertIn(param_name, error["msg"])
        bad_disk = self.peer.call("testing.disk", {
            "task_id": "bad-disk", "devices": ["/dev/../etc/passwd"]})
        error = self.assert_error(bad_disk, "InvalidParams", -32602)
        self.assertIn("devices", error["msg"])
        self.assert_alive()
        known = {t["task_id"] for t in self.agent_status()["tasks"]}
        for _, _, _, task_id in cases:
            self.assertNotIn(task_id, known)
        self.assertNotIn("bad-disk", known)
        self.assertEqual([], [m for m in self.peer.received
                              if harness.is_task_status(m)
                              and m["params"]["task_id"] in
                              {c[3] for c in cases} | {"bad-disk"}])
        state_dir = os.path.join(self.workdir, "state")
        recorded = os.listdir(state_dir) if os.path.isdir(state_dir) else []
        self.assertEqual([], [name for name in recorded if "bad" in name])

    def test_final_state_is_redelivered_until_answered(self):
        def hold_final(message):
            # Leave the final state of this task unanswered.
            if harness.is_task_status(message, "redeliver-1") and \
                    message["params"].get("state") != "running":
                return None
            return harness.answer_core(message)
        self.peer.answer = hold_final
        self.peer.call("testing.sleep", {"task_id": "redeliver-1",
                                         "seconds": 0.2, "steps": 2})
        first_final = self.wait_terminal("redeliver-1")
        self.assertEqual("complete", first_final["params"]["state"])
        peer, handshake = self.reconnect(answer=hold_final)
        listed = {t["task_id"]: t for t in handshake["params"]["tasks"]}
        self.assertIn("redeliver-1", listed)
        self.assertEqual("complete", listed["redeliver-1"]["state"])
        again = self.wait_terminal("redeliver-1", peer)
        self.assertEqual(first_final["params"], again["params"])
        # This time it is answered; the agent then stops re-sending it.
        peer.respond(again, {})
        self.assert_alive(peer)
        peer, handshake = self.reconnect()
        listed = {t["task_id"]: t for t in handshake["params"]["tasks"]}
        self.assertEqual("complete", listed["redeliver-1"]["state"])
        # A task known to be delivered is not sent again: the answer to a
        # status call made after the handshake comes with no update for it.
        self.agent_status(peer)
        self.assertEqual([], [m for m in peer.received
                              if harness.is_task_status(m, "redeliver-1")])

    def test_log_record_is_forwarded_as_a_log_command(self):
        marker = "forward me %s" % os.urandom(6).hex()
        response = self.peer.call("testing.echo", {"value": [1, "two"],
                                                   "log_message": marker})
        self.assertEqual({"value": [1, "two"]}, response["result"])
        log = self.peer.take_command(
            "log", predicate=lambda m: m["params"].get("message") == marker)
        params = log["params"]
        self.assertEqual("WARNING", params["level"])
        self.assertIsInstance(params["time"], float)
        self.assertEqual("teeth_agent.testing_plugin", params["logger"])
        self.assertEqual("v1", log["version"])

    def test_records_logged_while_disconnected_are_forwarded_later(self):
        # The agent logs the loss of a connection while it has none; that
        # record is buffered and must arrive over the next connection.
        peer, _ = self.reconnect()
        log = peer.take_command(
            "log", predicate=lambda m: "lost" in m["params"].get("message",
                                                                 ""))
        self.assertEqual("WARNING", log["params"]["level"])
        self.assertTrue(log["params"]["logger"].startswith("teeth_agent"))
        self.assertIsInstance(log["params"]["time"], float)


if __name__ == "__main__":
    unittest.main()
