"""The eventlet connection over an in-process socket pair."""

import json
import threading

from teeth_agent import protocol
from teeth_agent import transport
from tests import base


def echo(connection, command):
    if command.method == "ping":
        return command.params
    if command.method == "slow":
        transport.sleep(0.2)
        return {"slow": True}
    raise protocol.UnknownMethod("unknown method %s" % command.method)


class RawPeer:
    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def lines(self, timeout=5):
        """Every line until the connection closes."""
        out = []
        with transport.Timeout(timeout):
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.buffer += data
        for raw in self.buffer.split(b"\n"):
            if raw:
                out.append(json.loads(raw))
        return out


class ConnectionTest(base.TestCase):
    def setUp(self):
        super().setUp()
        ours, theirs = transport.socketpair()
        self.connection = transport.Connection(ours, echo, name="test")
        self.connection.start()
        self.addCleanup(self.connection.close)
        self.peer = RawPeer(theirs)
        self.addCleanup(theirs.close)

    def test_commands_before_a_bad_line_are_answered_first(self):
        self.peer.send(b'{"version":"v1","id":"1","method":"slow"}\n'
                       b'{"version":"v1","id":"2","method":"ping",'
                       b'"params":{"a":1}}\n{garbage\n')
        lines = self.peer.lines()
        self.assertEqual({"1", "2"}, {line.get("id") for line in lines[:2]})
        self.assertIn("fatal_error", lines[-1])
        self.assertTrue(self.connection.wait_closed(5))

    def test_infinite_number_gets_an_error_not_silence(self):
        self.peer.send(b'{"version":"v1","id":"9","method":"ping",'
                       b'"params":{"x":1e400}}\n')
        self.peer.sock.shutdown(1)
        (line,) = self.peer.lines()
        self.assertEqual("9", line["id"])
        self.assertEqual("InternalError", line["error"]["type"])

    def test_call_and_timeout(self):
        result = {}

        def answer():
            data = b""
            while not data.endswith(b"\n"):
                data += self.peer.sock.recv(4096)
            command = json.loads(data)
            result["command"] = command
            self.peer.send(json.dumps({"id": command["id"],
                                       "result": {"ok": True}}).encode()
                           + b"\n")
        responder = transport.spawn(answer)
        self.assertEqual({"ok": True},
                         self.connection.call("status", {}, timeout=5))
        responder.wait()
        self.assertEqual("status", result["command"]["method"])
        self.assertRaises(transport.CallTimeout, self.connection.call,
                          "status", {}, timeout=0.05)


class FatalOverTCPTest(base.TestCase):
    """A fatal_error sent while the peer is still sending reaches it: the
    connection ends its sending side and reads what is left before it
    closes, so its kernel sends no reset (which would drop the error from
    the peer's receive queue before it is read). Over TCP on 127.0.0.1,
    where a reset is what closing with unread bytes does."""

    def setUp(self):
        super().setUp()
        listener = transport.listen("127.0.0.1", 0)
        self.addCleanup(listener.close)
        theirs = transport.connect("127.0.0.1",
                                   listener.getsockname()[1])
        self.addCleanup(theirs.close)
        ours, _ = listener.accept()
        self.connection = transport.Connection(
            ours, echo, name="test", max_line_length=64 * 1024)
        self.connection.start()
        self.addCleanup(self.connection.close)
        self.peer = RawPeer(theirs)

    def test_an_oversize_line_still_being_sent_gets_its_fatal_error(self):
        # 4 MiB without a newline: the limit is met after the first
        # 64 KiB, while most of the line is still on its way.
        self.peer.send(b'{"version":"v1","id":"x","method":"ping",'
                       b'"params":{"pad":"' + b"x" * (4 * 1024 * 1024))
        lines = self.peer.lines(timeout=10)
        self.assertEqual(1, len(lines), lines)
        self.assertIn("fatal_error", lines[0])
        self.assertTrue(self.connection.wait_closed(5))

    def test_a_peer_that_never_stops_is_cut_off(self):
        stop = []

        def flood():
            chunk = b"y" * 65536
            try:
                while not stop:
                    self.peer.sock.sendall(chunk)
            except OSError:
                pass
        flooder = transport.spawn(flood)
        self.addCleanup(stop.append, True)
        # Bounded by LINGER_SECONDS / LINGER_BYTES, whichever first.
        self.assertTrue(self.connection.wait_closed(30))
        stop.append(True)
        flooder.wait()


class ThreadBridgeTest(base.TestCase):
    def test_call_from_a_thread_runs_on_the_hub(self):
        bridge = transport.ThreadBridge()
        bridge.start()
        self.addCleanup(bridge.stop)
        results = {}

        def worker():
            results["value"] = bridge.run(lambda: threading.get_ident(),
                                          timeout=5)
        thread = threading.Thread(target=worker)
        thread.start()
        while thread.is_alive():
            transport.sleep(0.01)
        self.assertEqual(threading.get_ident(), results["value"])

    def test_call_after_stop_is_refused(self):
        bridge = transport.ThreadBridge()
        bridge.start()
        bridge.stop()
        bridge.stop()
        with self.assertRaises(OSError):
            bridge.call(lambda: None)
