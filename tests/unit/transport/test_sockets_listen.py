"""transport.listen: SO_REUSEPORT lets two listeners share a port."""

import socket
import unittest

from teeth_agent import transport


class TestReusePort(unittest.TestCase):
    def test_two_listeners_share_a_port_with_reuse_port(self):
        first = transport.listen("127.0.0.1", 0, reuse_port=True)
        self.addCleanup(first.close)
        port = first.getsockname()[1]
        second = transport.listen("127.0.0.1", port, reuse_port=True)
        self.addCleanup(second.close)
        self.assertEqual(port, second.getsockname()[1])
        self.assertEqual(1, second.getsockopt(socket.SOL_SOCKET,
                                              socket.SO_REUSEPORT))

    def test_without_reuse_port_a_held_port_is_refused(self):
        first = transport.listen("127.0.0.1", 0, reuse_port=True)
        self.addCleanup(first.close)
        with self.assertRaises(OSError):
            transport.listen("127.0.0.1", first.getsockname()[1])
