"""teeth_agent.transport.error_text: a connection failure in plain words,
as the agent's ``cannot connect to endpoint`` warning and the endpoint
CLI's one-line errors tell it."""

import errno
import logging
import socket
import ssl
from unittest import mock

from teeth_agent.cmd import lifecycle
from teeth_agent import transport
from tests import base
from tests.unit.runtime import test_agent


class TestErrorText(base.TestCase):
    def test_plain_words(self):
        verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
        verify.verify_message = "self-signed certificate"
        version = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version")
        version.reason = "WRONG_VERSION_NUMBER"
        # An eventlet Timeout is armed when made: disarmed at once.
        timeout = transport.Timeout(60)
        timeout.cancel()
        for exc, text in (
                # eventlet's form: the errno's name as the message.
                (ConnectionRefusedError(errno.ECONNREFUSED, "ECONNREFUSED"),
                 "connection refused"),
                (OSError(errno.EHOSTUNREACH, "EHOSTUNREACH"),
                 "no route to host"),
                (socket.gaierror(socket.EAI_NONAME,
                                 "Name or service not known"),
                 "cannot resolve the host name: name or service not known"),
                (socket.timeout("timed out"), "timed out"),
                (timeout, "timed out"),
                (verify, "TLS certificate verify failed: self-signed "
                         "certificate"),
                (version, "TLS error: wrong version number"),
                (OSError("no address for x"), "no address for x"),
                (OSError(), "OSError")):
            with self.subTest(exc=repr(exc)):
                shown = transport.error_text(exc)
                self.assertEqual(text, shown)
                self.assertNotIn("Errno", shown)
                self.assertNotIn("ECONN", shown)

    def test_the_cli_uses_the_same_words(self):
        self.assertIs(transport.error_text, lifecycle.os_error_text)


class TestAgentConnectWarning(base.TestCase):
    def test_a_refused_connection_is_told_in_plain_words(self):
        agent = test_agent.make_agent(base.make_conf())
        refused = ConnectionRefusedError(errno.ECONNREFUSED, "ECONNREFUSED")
        with mock.patch.object(transport, "connect", side_effect=refused), \
                self.assertLogs("teeth_agent.runtime.agent",
                                logging.WARNING) as logs:
            self.assertFalse(agent._serve_one("127.0.0.1", 9))
        self.assertEqual(["cannot connect to endpoint 127.0.0.1:9: "
                          "connection refused"],
                         [record.getMessage() for record in logs.records])
