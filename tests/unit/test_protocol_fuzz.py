"""Fuzzing the protocol engine: no input crashes or hangs it, and every
input gets the answer the contract gives."""

import json

from hypothesis import given
from hypothesis import strategies as st

from teeth_agent import protocol
from tests import base

json_scalars = st.none() | st.booleans() | st.integers() | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) |
    st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)

message_like = st.fixed_dictionaries(
    {},
    optional={"id": st.one_of(st.text(max_size=8), json_values),
              "method": st.one_of(st.sampled_from(["ping", "status"]),
                                  json_values),
              "version": st.one_of(st.just("v1"), json_values),
              "params": json_values,
              "result": json_values,
              "error": json_values,
              "fatal_error": json_values})


def expected_kind(message):
    """What docs/protocol.md says the receiver does with one decoded line."""
    if not isinstance(message, dict):
        return protocol.ProtocolViolation
    if "method" in message:
        if not isinstance(message.get("id"), str):
            return protocol.ProtocolViolation
        if message.get("version") != "v1":
            return protocol.CommandRejected
        if not isinstance(message["method"], str) or not message["method"]:
            return protocol.CommandRejected
        if not isinstance(message.get("params", {}), dict):
            return protocol.CommandRejected
        return protocol.CommandReceived
    if "fatal_error" in message:
        return protocol.FatalErrorReceived
    if "result" in message or "error" in message:
        return protocol.UnmatchedResponse
    if isinstance(message.get("id"), str):
        return protocol.CommandRejected
    return protocol.ProtocolViolation


class FuzzTest(base.TestCase):
    @given(st.binary(max_size=4096))
    def test_arbitrary_bytes_never_crash(self, data):
        session = protocol.Session(max_line_length=1024)
        events = session.receive_data(data) + session.receive_data(b"")
        for event in events:
            self.assertIsInstance(event, (
                protocol.CommandReceived, protocol.CommandRejected,
                protocol.UnmatchedResponse, protocol.FatalErrorReceived,
                protocol.ProtocolViolation, protocol.ConnectionClosed))
        # Whatever came in, the answers can be encoded.
        for event in events:
            if isinstance(event, protocol.CommandReceived) and \
                    not session.closed:
                session.send_result(event.command.id, event.command.params)

    @given(st.one_of(message_like, json_values))
    def test_each_message_gets_the_contract_answer(self, message):
        session = protocol.Session()
        data = (json.dumps(message) + "\n").encode()
        events = session.receive_data(data)
        self.assertEqual(1, len(events))
        self.assertIsInstance(events[0], expected_kind(message))
        if isinstance(events[0], protocol.CommandReceived):
            echoed = json.loads(session.send_result(
                events[0].command.id, events[0].command.params))
            self.assertEqual(message.get("params", {}), echoed["result"])
        if isinstance(events[0], protocol.CommandRejected):
            answer = json.loads(session.send_error(events[0].id,
                                                   events[0].error))
            self.assertIn(answer["error"]["type"], (
                "UnsupportedVersion", "InvalidParams", "InvalidRequest"))
            self.assertIsInstance(answer["error"]["code"], int)

    @given(st.lists(st.one_of(message_like, json_values), max_size=20),
           st.integers(min_value=1, max_value=64))
    def test_chunking_does_not_change_events(self, messages, chunk):
        data = b"".join((json.dumps(m) + "\r\n").encode() for m in messages)
        if not data:
            return  # b"" means end of stream, not a message
        whole = protocol.Session(id_prefix="p").receive_data(data)
        pieces = protocol.Session(id_prefix="p")
        chunked = []
        for start in range(0, len(data), chunk):
            chunked += pieces.receive_data(data[start:start + chunk])
        self.assertEqual([type(e) for e in whole], [type(e) for e in chunked])
