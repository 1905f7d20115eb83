"""A real ``teeth-endpoint serve`` against raw-socket agents.

The test plays the agent: it connects to the endpoint process on 127.0.0.1
with a plain socket and writes docs/protocol.md messages by hand.
"""

import json
import unittest

from tests.functional import harness

HANDSHAKE_TIMEOUT = 2.0


def handshake_params(agent_id, **extra):
    params = {
        "agent_id": agent_id,
        "agent_version": "raw-test 1.0",
        "protocol_versions": ["v1"],
        "hardware": {"vendor": "Raw", "product": "Socket", "serial": "S1",
                     "uuid": None, "macs": ["02:00:00:00:00:01"]},
        "extensions": {"testing": ["testing.echo"]},
        "tasks": [],
    }
    params.update(extra)
    return params


class EndpointPeerTestCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.endpoint = harness.start_endpoint(cls, {
            "endpoint": {"handshake_timeout": HANDSHAKE_TIMEOUT}},
            cls_level=True)

    def connect(self, name="endpoint"):
        peer = harness.connect_peer(self.endpoint.port, name=name)
        self.addCleanup(peer.close)
        return peer

    def connect_and_handshake(self, agent_id=None):
        agent_id = agent_id or "raw-%s" % self.id().rsplit(".", 1)[-1]
        peer = self.connect()
        response = peer.call("handshake", handshake_params(agent_id))
        self.assertIsInstance(response.get("result"), dict, response)
        return peer

    def assert_error(self, response, error_type, code=None):
        self.assertIn("error", response, response)
        self.assertNotIn("result", response, response)
        error = response["error"]
        self.assertEqual(error_type, error.get("type"), response)
        self.assertIsInstance(error.get("msg"), str)
        self.assertTrue(error["msg"])
        if code is not None:
            self.assertEqual(code, error.get("code"), response)
        else:
            self.assertIsInstance(error.get("code"), int, response)
        return error

    def assert_alive(self, peer):
        response = peer.call("ping", {"alive": True})
        self.assertEqual({"alive": True}, response.get("result"), response)

    def assert_fatal_then_closed(self, peer):
        peer.take(lambda m: "fatal_error" in m, what="a fatal_error message")
        self.assertTrue(peer.wait_closed(), "the endpoint kept the "
                        "connection open after its fatal error")


class TestHandshakeAndPing(EndpointPeerTestCase):
    def test_handshake_is_answered_with_an_object(self):
        peer = self.connect()
        response = peer.call("handshake", handshake_params("raw-hs-1"))
        self.assertEqual("v1", response.get("version"))
        self.assertIsInstance(response.get("result"), dict, response)
        self.assertNotIn("error", response)
        self.assert_alive(peer)

    def test_handshake_without_agent_id_is_invalid_params(self):
        peer = self.connect()
        params = handshake_params("x")
        del params["agent_id"]
        response = peer.call("handshake", params)
        error = self.assert_error(response, "InvalidParams", -32602)
        self.assertIn("agent_id", error["msg"])

    def test_handshake_without_a_common_version_is_refused(self):
        peer = self.connect()
        response = peer.call("handshake", handshake_params(
            "raw-hs-v9", protocol_versions=["v9"]))
        self.assert_error(response, "UnsupportedVersion")
        # Refused, so this connection is no agent yet.
        self.assertNotIn("raw-hs-v9",
                         {a["agent_id"] for a in self.endpoint.agents()})

    def test_ping_echoes_params_unchanged(self):
        peer = self.connect_and_handshake()
        for params in ({}, {"u": "Grüße \U0001F980", "n": [1, {"x": None}]},
                       {"deep": {"a": {"b": [True, False, 2.5, -7]}}}):
            with self.subTest(params=params):
                self.assertEqual(params,
                                 peer.call("ping", params).get("result"))

    def test_ping_before_handshake_is_answered(self):
        peer = self.connect()
        self.assertEqual({"early": 1},
                         peer.call("ping", {"early": 1}).get("result"))

    def test_task_status_before_handshake_is_refused(self):
        peer = self.connect()
        response = peer.call("task_status", {"task_id": "t1",
                                             "state": "running",
                                             "percent": 1.0, "eta": None})
        self.assertIn("error", response, response)
        self.assertIn("handshake", response["error"]["msg"])
        # The refusal is an answer, not a fatal error.
        self.assert_alive(peer)

    def test_task_status_after_handshake_is_acknowledged(self):
        peer = self.connect_and_handshake()
        response = peer.call("task_status", {"task_id": "t1",
                                             "state": "running",
                                             "percent": 10.0, "eta": 3.0})
        self.assertEqual({}, response.get("result"), response)
        response = peer.call("task_status", {"task_id": "t1",
                                             "state": "complete",
                                             "result": {"ok": True}})
        self.assertIsInstance(response.get("result"), dict, response)

    def test_log_after_handshake_is_acknowledged(self):
        peer = self.connect_and_handshake()
        response = peer.call("log", {"level": "INFO", "message": "hello",
                                     "time": 1.5, "logger": "raw"})
        self.assertIsInstance(response.get("result"), dict, response)


class TestCommandErrors(EndpointPeerTestCase):
    def test_unknown_method(self):
        peer = self.connect_and_handshake()
        response = peer.call("no.such_method", {})
        self.assert_error(response, "UnknownMethod", -32601)
        self.assert_alive(peer)

    def test_non_object_params(self):
        peer = self.connect_and_handshake()
        for params in ([1], "x", 3, None):
            with self.subTest(params=params):
                command_id = peer.new_id()
                peer.send({"version": "v1", "id": command_id,
                           "method": "ping", "params": params})
                self.assert_error(peer.take_response(command_id),
                                  "InvalidParams", -32602)
        self.assert_alive(peer)

    def test_unsupported_version(self):
        peer = self.connect_and_handshake()
        for version in ("v2", 1):
            with self.subTest(version=version):
                response = peer.call("ping", {}, version=version)
                self.assert_error(response, "UnsupportedVersion")
        self.assert_alive(peer)

    def test_unmatched_response_is_dropped(self):
        peer = self.connect_and_handshake()
        peer.send({"version": "v1", "id": "stray-1", "result": {}})
        peer.send({"id": "stray-2", "error": {"type": "X", "code": 1,
                                              "msg": "stray"}})
        ping_id = peer.send_command("ping", {"after": "stray"})
        self.assertEqual({"after": "stray"},
                         peer.take_response(ping_id)["result"])
        unexpected = [m for m in peer.received
                      if "fatal_error" in m
                      or str(m.get("id", "")).startswith("stray")]
        self.assertEqual([], unexpected)

    def test_crlf(self):
        peer = self.connect_and_handshake()
        peer.send_raw(b'{"version":"v1","id":"c1","method":"ping",'
                      b'"params":{"crlf":true}}\r\n\r\n\n')
        self.assertEqual({"crlf": True}, peer.take_response("c1")["result"])
        self.assert_alive(peer)

    def test_200_pipelined_commands(self):
        peer = self.connect_and_handshake()
        ids = ["p%03d" % n for n in range(200)]
        peer.send_raw(b"".join(
            json.dumps({"version": "v1", "id": command_id, "method": "ping",
                        "params": {"n": n}}).encode() + b"\n"
            for n, command_id in enumerate(ids)))
        for n, command_id in enumerate(ids):
            self.assertEqual({"n": n},
                             peer.take_response(command_id)["result"])
        self.assert_alive(peer)
        counts = {}
        for message in peer.received:
            if harness.is_response(message) and message["id"] in ids:
                counts[message["id"]] = counts.get(message["id"], 0) + 1
        self.assertEqual({command_id: 1 for command_id in ids}, counts)


class TestFatalErrors(EndpointPeerTestCase):
    def test_malformed_json(self):
        peer = self.connect_and_handshake()
        peer.send_raw(b'{"version": "v1", "id": \n')
        self.assert_fatal_then_closed(peer)

    def test_missing_id(self):
        peer = self.connect_and_handshake()
        peer.send({"version": "v1", "method": "ping", "params": {}})
        self.assert_fatal_then_closed(peer)

    def test_non_object_message(self):
        peer = self.connect_and_handshake()
        peer.send_raw(b"[1,2]\n")
        self.assert_fatal_then_closed(peer)

    def test_two_mib_line(self):
        peer = self.connect_and_handshake()
        peer.send_raw(b'{"version":"v1","id":"big","method":"ping",'
                      b'"params":{"pad":"' + b"y" * (2 * 1024 * 1024)
                      + b'"}}\n', ignore_errors=True)
        self.assertTrue(peer.wait_closed(), "the endpoint kept a 2 MiB line")
        self.assertEqual([], [m for m in peer.received
                              if harness.is_response(m, "big")])
        self.assertEqual(1, len([m for m in peer.received
                                 if "fatal_error" in m]), peer.received)

    def test_connection_without_handshake_is_closed(self):
        peer = self.connect()
        # Silent: no handshake, nothing at all.
        self.assertTrue(peer.wait_closed(timeout=HANDSHAKE_TIMEOUT + 15),
                        "a connection without handshake stayed open")
        fatal = [m for m in peer.received if "fatal_error" in m]
        self.assertEqual(1, len(fatal), peer.received)
        self.assertIn("handshake", fatal[0]["fatal_error"])

    def test_handshaken_connection_outlives_the_handshake_timeout(self):
        peer = self.connect_and_handshake()
        silent = self.connect()
        # Once the silent connection has been closed for its missing
        # handshake, the handshaken one must still be up.
        self.assertTrue(silent.wait_closed(timeout=HANDSHAKE_TIMEOUT + 15))
        self.assert_alive(peer)


class TestAgentIdentity(EndpointPeerTestCase):
    def test_second_connection_with_same_agent_id_replaces_the_first(self):
        first = self.connect()
        answer = first.call("handshake", handshake_params("raw-same-agent"))
        token = answer["result"]["session_token"]
        # The second link proves the identity with the session token.
        second = self.connect()
        response = second.call("handshake", handshake_params(
            "raw-same-agent", session_token=token))
        self.assertIsInstance(response.get("result"), dict, response)
        self.assertTrue(first.wait_closed(), "the replaced connection of "
                        "the agent stayed open")
        self.assert_alive(second)
        agents = [a for a in self.endpoint.agents()
                  if a["agent_id"] == "raw-same-agent"]
        self.assertEqual(1, len(agents), agents)

    def test_different_agent_ids_coexist(self):
        one = self.connect_and_handshake("raw-agent-one")
        two = self.connect_and_handshake("raw-agent-two")
        self.assert_alive(one)
        self.assert_alive(two)
        ids = {a["agent_id"] for a in self.endpoint.agents()}
        self.assertLessEqual({"raw-agent-one", "raw-agent-two"}, ids)


if __name__ == "__main__":
    unittest.main()
