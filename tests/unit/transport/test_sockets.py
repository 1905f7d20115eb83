"""Both ends of an agent-endpoint link, and the stand-in endpoint the
functional tests and benchmarks use, turn Nagle's algorithm off.

With it on, a small write that follows another one before the peer has
ACKed it waits for that ACK; Linux delays an ACK by about 40 ms when it has
nothing to send back. A ``ping`` written right after the answer to a
``task_status`` then takes 40 ms whatever the other side does, which is what
an erase's few progress updates did to the ping latency the responsiveness
benchmark reported.
"""

import socket

from teeth_agent import transport
from tests import base
from tests.functional import harness


def nagle_off(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


class TestNoDelay(base.TestCase):
    def listen(self):
        listener = transport.listen("127.0.0.1", 0)
        self.addCleanup(listener.close)
        return listener, listener.getsockname()[1]

    def test_agent_side_connection(self):
        listener, port = self.listen()
        sock = transport.connect("127.0.0.1", port, timeout=5)
        self.addCleanup(sock.close)
        self.assertTrue(nagle_off(sock))

    def test_endpoint_side_accepted_connection(self):
        listener, port = self.listen()
        accepted = transport.Queue()
        acceptor = transport.spawn(
            transport.accept_loop, listener,
            lambda sock, address: accepted.put(sock), None, 5.0)
        self.addCleanup(acceptor.kill)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(client.close)
        sock = accepted.get(timeout=5)
        self.addCleanup(sock.close)
        self.assertTrue(nagle_off(sock))

    def test_stand_in_endpoint_accepted_peer(self):
        server = harness.ListeningServer(tls=False)
        self.addCleanup(server.close)
        client = socket.create_connection(("127.0.0.1", server.port),
                                          timeout=5)
        self.addCleanup(client.close)
        peer = server.accept(timeout=5)
        self.addCleanup(peer.close)
        self.assertTrue(nagle_off(peer.sock))

    def test_stand_in_connected_peer(self):
        listener, port = self.listen()
        peer = harness.connect_peer(port, tls=False, timeout=5)
        self.addCleanup(peer.close)
        self.assertTrue(nagle_off(peer.sock))
