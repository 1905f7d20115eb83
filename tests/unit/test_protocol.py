"""The sans-IO protocol: framing, message rules and two in-memory ends."""

import io
import json
import logging

from teeth_agent import protocol
from tests import base


def line(obj):
    return (json.dumps(obj) + "\n").encode()


def command(method="ping", params=None, id="c1", version="v1"):
    message = {"id": id, "method": method}
    if version is not None:
        message["version"] = version
    if params is not None:
        message["params"] = params
    return message


class FramingTest(base.TestCase):
    def test_line_split_across_chunks(self):
        session = protocol.Session()
        data = line(command(params={"a": "b"}))
        events = []
        for i in range(len(data)):
            events += session.receive_data(data[i:i + 1])
        self.assertEqual(1, len(events))
        self.assertEqual({"a": "b"}, events[0].command.params)

    def test_crlf_and_empty_lines(self):
        session = protocol.Session()
        data = b"\r\n\n" + line(command(id="a"))[:-1] + b"\r\n\n  \n" + \
            line(command(id="b"))
        events = session.receive_data(data)
        self.assertEqual(["a", "b"], [e.command.id for e in events])

    def test_many_commands_in_one_chunk(self):
        session = protocol.Session()
        data = b"".join(line(command(id=str(i))) for i in range(200))
        events = session.receive_data(data)
        self.assertEqual([str(i) for i in range(200)],
                         [e.command.id for e in events])

    def test_line_at_limit_is_accepted(self):
        session = protocol.Session(max_line_length=1024)
        message = command(params={"pad": ""})
        pad = 1024 - len(json.dumps(message))
        message["params"]["pad"] = "x" * pad
        data = json.dumps(message).encode()
        self.assertEqual(1024, len(data))
        events = session.receive_data(data + b"\r\n")
        self.assertIsInstance(events[0], protocol.CommandReceived)

    def test_line_over_limit_is_fatal_before_its_end(self):
        session = protocol.Session(max_line_length=1024)
        events = session.receive_data(b'{"x": "' + b"y" * 2000)
        self.assertEqual(1, len(events))
        self.assertIsInstance(events[0], protocol.ProtocolViolation)
        self.assertIn("longer than 1024", events[0].reason)
        self.assertTrue(session.receive_closed)
        self.assertEqual([], session.receive_data(b"\n"))

    def test_terminated_line_over_limit_is_fatal(self):
        session = protocol.Session(max_line_length=1024)
        events = session.receive_data(b"x" * 1025 + b"\n")
        self.assertIsInstance(events[0], protocol.ProtocolViolation)

    def test_end_of_stream_with_partial_line(self):
        session = protocol.Session()
        self.assertEqual([], session.receive_data(b'{"id": "x", "meth'))
        events = session.receive_data(b"")
        self.assertEqual([protocol.ConnectionClosed(partial=True)], events)

    def test_events_after_violation_are_not_produced(self):
        session = protocol.Session()
        events = session.receive_data(b"garbage\n" + line(command()))
        self.assertEqual(1, len(events))
        self.assertIsInstance(events[0], protocol.ProtocolViolation)


class MessageRulesTest(base.TestCase):
    def parse(self, raw):
        session = protocol.Session()
        if isinstance(raw, (dict, list, str, int)) and \
                not isinstance(raw, bytes):
            raw = line(raw)
        return session.receive_data(raw)

    def assert_fatal(self, raw):
        events = self.parse(raw)
        self.assertEqual(1, len(events), events)
        self.assertIsInstance(events[0], protocol.ProtocolViolation)

    def assert_rejected(self, raw, error_type, code):
        events = self.parse(raw)
        self.assertEqual(1, len(events), events)
        self.assertIsInstance(events[0], protocol.CommandRejected)
        self.assertEqual(error_type, events[0].error.type)
        self.assertEqual(code, events[0].error.code)

    def test_invalid_json_is_fatal(self):
        self.assert_fatal(b"{not json}\n")

    def test_invalid_utf8_is_fatal(self):
        self.assert_fatal(b'{"id": "\xff"}\n')

    def test_nan_is_fatal(self):
        self.assert_fatal(b'{"id": "a", "method": "ping", "params": '
                          b'{"x": NaN}, "version": "v1"}\n')

    def test_deep_nesting_is_fatal_not_a_crash(self):
        self.assert_fatal(b"[" * 100000 + b"]" * 100000 + b"\n")

    def test_non_object_is_fatal(self):
        for value in ([1, 2], "text", 3, None, True):
            self.assert_fatal(line(value))

    def test_command_without_string_id_is_fatal(self):
        self.assert_fatal(line({"method": "ping", "version": "v1"}))
        self.assert_fatal(line({"method": "ping", "version": "v1",
                                "id": 7}))

    def test_unsupported_or_missing_version(self):
        self.assert_rejected(command(version="v9"), "UnsupportedVersion",
                             -32001)
        self.assert_rejected(command(version=None), "UnsupportedVersion",
                             -32001)

    def test_non_object_params(self):
        for params in ([1], "x", 5, None):
            message = command()
            message["params"] = params
            self.assert_rejected(message, "InvalidParams", -32602)

    def test_missing_params_means_empty(self):
        events = self.parse(command())
        self.assertEqual({}, events[0].command.params)

    def test_non_string_method(self):
        self.assert_rejected(command(method=5), "InvalidRequest", -32600)

    def test_neither_command_nor_response(self):
        self.assert_rejected({"id": "x", "version": "v1"}, "InvalidRequest",
                             -32600)
        self.assert_fatal({"version": "v1"})

    def test_fatal_error_received(self):
        events = self.parse({"fatal_error": "bye"})
        self.assertEqual([protocol.FatalErrorReceived("bye")], events)

    def test_unmatched_response(self):
        events = self.parse({"id": "nope", "result": {}})
        self.assertIsInstance(events[0], protocol.UnmatchedResponse)


class SendingTest(base.TestCase):
    def test_error_response_shape(self):
        session = protocol.Session()
        data = session.send_error("c1", protocol.InvalidParams(
            "task_id: is required", details={"param": "task_id"}))
        self.assertEqual({"version": "v1", "id": "c1", "error": {
            "type": "InvalidParams", "code": -32602,
            "msg": "task_id: is required",
            "details": {"param": "task_id"}}}, json.loads(data))

    def test_result_too_large_becomes_error(self):
        session = protocol.Session(max_line_length=2048)
        data = session.send_result("c1", {"x": "y" * 4096})
        error = json.loads(data)["error"]
        self.assertEqual("ResponseTooLarge", error["type"])

    def test_lone_surrogate_is_echoed_as_valid_output(self):
        session = protocol.Session()
        events = session.receive_data(
            b'{"id":"a","version":"v1","method":"ping",'
            b'"params":{"s":"\\ud800"}}\n')
        params = events[0].command.params
        data = session.send_result("a", params)
        data.decode("utf-8")
        self.assertEqual(params, json.loads(data)["result"])

    def test_unencodable_result_still_gets_an_answer(self):
        session = protocol.Session()
        (event,) = session.receive_data(
            b'{"id":"a","version":"v1","method":"ping",'
            b'"params":{"x":1e400}}\n')
        answer = json.loads(session.send_result(
            "a", event.command.params))
        self.assertEqual("InternalError", answer["error"]["type"])
        self.assertEqual("a", answer["id"])
        answer = json.loads(session.send_error(
            "b", {"msg": "x", "details": {1, 2}}))
        self.assertEqual("InternalError", answer["error"]["type"])
        self.assertRaises(protocol.LocalProtocolError, session.send_command,
                          "task_status", {"bad": {1}})

    def test_fatal_closes_session(self):
        session = protocol.Session()
        data = session.send_fatal("bad")
        self.assertEqual({"fatal_error": "bad"}, json.loads(data))
        self.assertRaises(protocol.LocalProtocolError,
                          session.send_result, "x", {})

    def test_local_misuse_raises(self):
        session = protocol.Session()
        self.assertRaises(protocol.LocalProtocolError, session.send_result,
                          "x", ["not", "a", "dict"])
        self.assertRaises(protocol.LocalProtocolError, session.send_command,
                          "ping", "params")


class TwoEndsTest(base.TestCase):
    """Two sessions wired back to back, as agent and endpoint would be."""

    def test_call_and_answer(self):
        agent = protocol.Session(id_prefix="agent")
        server = protocol.Session(id_prefix="server")
        command_id, data = server.send_command("ping", {"n": 1})
        self.assertEqual({command_id: "ping"}, server.outstanding)
        (received,) = agent.receive_data(data)
        self.assertEqual("ping", received.command.method)
        answer = agent.send_result(received.command.id,
                                   received.command.params)
        (response,) = server.receive_data(answer)
        self.assertIsInstance(response, protocol.ResponseReceived)
        self.assertTrue(response.response.ok)
        self.assertEqual({"n": 1}, response.response.result)
        self.assertEqual("ping", response.method)
        self.assertEqual({}, server.outstanding)

    def test_error_answer(self):
        agent = protocol.Session()
        server = protocol.Session()
        command_id, data = server.send_command("nope", {})
        (received,) = agent.receive_data(data)
        answer = agent.send_error(received.command.id, protocol.UnknownMethod(
            "unknown method nope"))
        (response,) = server.receive_data(answer)
        self.assertFalse(response.response.ok)
        self.assertEqual("UnknownMethod", response.response.error["type"])

    def test_forgotten_call_answer_is_unmatched(self):
        agent = protocol.Session()
        server = protocol.Session()
        command_id, data = server.send_command("ping", {})
        server.forget(command_id)
        (received,) = agent.receive_data(data)
        (event,) = server.receive_data(agent.send_result(command_id, {}))
        self.assertIsInstance(event, protocol.UnmatchedResponse)

    def test_response_without_version_is_accepted(self):
        server = protocol.Session()
        command_id, _ = server.send_command("ping", {})
        (event,) = server.receive_data(line({"id": command_id,
                                             "result": {"ok": 1}}))
        self.assertEqual({"ok": 1}, event.response.result)

    def test_non_object_result_is_flagged(self):
        server = protocol.Session()
        command_id, _ = server.send_command("ping", {})
        (event,) = server.receive_data(line({"id": command_id,
                                             "result": [1]}))
        self.assertFalse(event.response.ok)
        self.assertEqual("InvalidResponse", event.response.error["type"])

    def test_ids_are_unique(self):
        server = protocol.Session()
        ids = {server.send_command("ping")[0] for _ in range(1000)}
        self.assertEqual(1000, len(ids))


class EscapingLogFilterTest(base.TestCase):
    """What a peer or a server chose is logged as one printable line."""

    def log(self, *args):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        logger = logging.getLogger("tests.escaping")
        logger.propagate = False
        logger.addHandler(handler)
        self.addCleanup(logger.removeHandler, handler)
        protocol.install_log_escaping(logger)
        protocol.install_log_escaping(logger)
        self.assertEqual(1, len(handler.filters))
        logger.warning(*args)
        return stream.getvalue()

    def test_control_characters_newlines_and_overrides_are_escaped(self):
        text = self.log("image %s: %s", "x\x1b[2J",
                        "bad\nCRITICAL forged\t\u202e\udcff")
        self.assertEqual("WARNING image x\\x1b[2J: bad\\nCRITICAL forged"
                         "\\t\\u202e\\udcff\n", text)

    def test_printable_text_is_unchanged(self):
        self.assertEqual("WARNING caf\u00e9 50% \\n ok\n",
                         self.log("caf\u00e9 %d%% \\n ok", 50))

    def test_escaping_twice_changes_nothing(self):
        once = protocol.escape_unprintable("a\x00b\nc")
        self.assertEqual("a\\x00b\\nc", once)
        self.assertEqual(once, protocol.escape_unprintable(once))
