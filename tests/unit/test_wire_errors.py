"""protocol.WireError.from_dict and its users (transport.RemoteError,
control.PassedThroughError)."""

from teeth_agent.endpoint import control
from teeth_agent import protocol
from teeth_agent import transport
from tests import base


class FromDictTest(base.TestCase):

    def test_round_trip_gives_the_subclass(self):
        for cls in (protocol.InvalidRequest, protocol.UnknownMethod,
                    protocol.InvalidParams, protocol.InternalError,
                    protocol.UnsupportedVersion, protocol.Busy,
                    protocol.NotFound, protocol.ResponseTooLarge,
                    protocol.Conflict):
            with self.subTest(cls.type):
                sent = cls("went wrong", details={"param": "x"})
                received = protocol.WireError.from_dict(sent.to_dict())
                self.assertIs(cls, type(received))
                self.assertEqual(sent.to_dict(), received.to_dict())

    def test_unknown_type_keeps_type_and_code(self):
        error = protocol.WireError.from_dict(
            {"type": "FutureThing", "code": -32050, "msg": "new"})
        self.assertIs(protocol.WireError, type(error))
        self.assertEqual(("FutureThing", -32050, "new"),
                         (error.type, error.code, error.msg))

    def test_missing_fields_and_non_objects(self):
        error = protocol.WireError.from_dict({})
        self.assertIs(protocol.WireError, type(error))
        self.assertIsNone(error.type)
        self.assertIsNone(error.code)
        self.assertEqual("", error.msg)
        error = protocol.WireError.from_dict("boom")
        self.assertEqual("boom", error.msg)
        self.assertIsNone(error.type)

    def test_known_type_with_another_code_keeps_the_code_received(self):
        error = protocol.WireError.from_dict(
            {"type": "Busy", "code": 7, "msg": "m"})
        self.assertIsInstance(error, protocol.Busy)
        self.assertEqual(7, error.code)


class UsersTest(base.TestCase):

    def test_remote_error(self):
        exc = transport.RemoteError(
            {"type": "NotFound", "code": -32003, "msg": "no such task"})
        self.assertIsInstance(exc.wire, protocol.NotFound)
        self.assertEqual(("NotFound", -32003, "no such task"),
                         (exc.type, exc.code, exc.msg))
        self.assertEqual("NotFound: no such task", str(exc))

    def test_passed_through_error_keeps_its_defaults(self):
        exc = control.PassedThroughError({"msg": "x", "details": {"a": 1}})
        self.assertEqual({"type": "InternalError", "code": -32603,
                          "msg": "x", "details": {"a": 1}}, exc.to_dict())
        exc = control.PassedThroughError(
            {"type": "Busy", "code": -32002, "msg": "busy"})
        self.assertEqual({"type": "Busy", "code": -32002, "msg": "busy"},
                         exc.to_dict())
        self.assertEqual("error", control.PassedThroughError({}).msg)
