"""A TCP proxy that breaks the link between an agent and its endpoint.

:class:`FaultProxy` listens on 127.0.0.1 and forwards every connection to an
upstream port on 127.0.0.1, one OS thread per direction. While it forwards
it keeps a tap of every complete line that went through, per direction and
per connection, so a test can check what each side really received. On
request it:

* stalls the links open right now (bytes stop flowing both ways, sockets
  stay open: a silently dead link that only a keepalive can detect);
* drops every link at once (reset, as when a router forgets the flow);
* cuts a link in the middle of the next line that matches a pattern: the
  first half of that line is forwarded, then both sides are closed.

New connections always go through unharmed, so a peer that reconnects
recovers. When the upstream cannot be reached the client side is closed at
once, as a dead endpoint would be.
"""

import re
import socket
import struct
import threading
import time

HOST = "127.0.0.1"
UP = "up"  # client (agent) to upstream (endpoint)
DOWN = "down"  # upstream to client


class _Link:
    """One proxied connection: two sockets and their pump threads."""

    def __init__(self, number, client, upstream):
        self.number = number
        self.client = client
        self.upstream = upstream
        self.stalled = threading.Event()
        self.closed = threading.Event()
        self.partial = {UP: bytearray(), DOWN: bytearray()}

    def close(self, reset=False):
        if self.closed.is_set():
            return
        self.closed.set()
        for sock in (self.client, self.upstream):
            if reset:
                # Linger 0: close sends RST, the way a dropped flow ends.
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                except OSError:
                    pass
            else:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                sock.close()
            except OSError:
                pass


class FaultProxy:
    """See the module docstring. Use :meth:`close` (or as a context
    manager) to stop it; every link is closed then."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links = []
        self._cut = {UP: None, DOWN: None}
        self._cut_done = {UP: threading.Event(), DOWN: threading.Event()}
        self.lines = []  # (direction, link number, line bytes), in order
        self.cut_lines = []  # (direction, link number, the half sent)
        self.accepted = 0
        self.upstream_failures = 0
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop,
                                          name="fault-proxy-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def address(self):
        return "%s:%d" % (HOST, self.port)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # -- faults --------------------------------------------------------------

    def stall(self):
        """Stop the links open now in both directions; returns how many.

        Their sockets stay open, so neither side sees an error: only a
        keepalive can tell the link is dead. Later connections flow.
        """
        with self._lock:
            links = [link for link in self._links
                     if not link.closed.is_set()]
        for link in links:
            link.stalled.set()
        return len(links)

    def drop(self):
        """Reset every open link at once; returns how many."""
        with self._lock:
            links = [link for link in self._links
                     if not link.closed.is_set()]
        for link in links:
            link.close(reset=True)
        return len(links)

    def cut_next(self, direction, pattern):
        """Arm a cut: the next line going ``direction`` that matches the
        regex ``pattern`` (bytes) is forwarded only up to its middle, then
        that link is closed on both sides. :meth:`wait_cut` waits for it.
        """
        self._cut_done[direction].clear()
        self._cut[direction] = re.compile(pattern)

    def wait_cut(self, direction, timeout):
        """True once the armed cut in ``direction`` has happened."""
        return self._cut_done[direction].wait(timeout)

    def open_links(self):
        with self._lock:
            return sum(1 for link in self._links
                       if not link.closed.is_set())

    def close(self):
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        self._acceptor.join(5)

    # -- the tap ----------------------------------------------------------

    def lines_going(self, direction):
        """Complete lines forwarded in ``direction``, as (link, bytes)."""
        with self._lock:
            return [(number, line) for way, number, line in self.lines
                    if way == direction]

    # -- internals --------------------------------------------------------

    def _accept_loop(self):
        self._listener.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(
                    (HOST, self.upstream_port), timeout=5)
            except OSError:
                self.upstream_failures += 1
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                link = _Link(self.accepted, client, upstream)
                self._links.append(link)
            for direction, source, target in ((UP, client, upstream),
                                              (DOWN, upstream, client)):
                threading.Thread(
                    target=self._pump, args=(link, direction, source, target),
                    name="fault-proxy-%d-%s" % (link.number, direction),
                    daemon=True).start()

    def _pump(self, link, direction, source, target):
        source.settimeout(0.1)
        try:
            while not link.closed.is_set():
                if link.stalled.is_set():
                    # Leave the bytes in the kernel: nothing moves.
                    time.sleep(0.05)
                    continue
                try:
                    data = source.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                if not self._forward(link, direction, data, target):
                    return
        except OSError:
            pass
        link.close()

    def _forward(self, link, direction, data, target):
        """Send ``data`` on, recording complete lines; False after a cut.

        ``link.partial[direction]`` holds the start of the current line,
        already forwarded; a line is recorded once its end went through.
        """
        buffer = bytes(link.partial[direction]) + data
        forwarded = len(link.partial[direction])
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = buffer[:end]
            pattern = self._cut[direction]
            if pattern is not None and pattern.search(line):
                self._cut[direction] = None
                half = max(len(line) // 2, 1)
                if half > forwarded:
                    target.sendall(buffer[forwarded:half])
                with self._lock:
                    self.cut_lines.append((direction, link.number,
                                           line[:max(half, forwarded)]))
                # Give the half line time to arrive before the close.
                time.sleep(0.05)
                link.close()
                self._cut_done[direction].set()
                return False
            target.sendall(buffer[forwarded:end + 1])
            with self._lock:
                self.lines.append((direction, link.number,
                                   line.rstrip(b"\r")))
            buffer = buffer[end + 1:]
            forwarded = 0
        if len(buffer) > forwarded:
            target.sendall(buffer[forwarded:])
        link.partial[direction] = bytearray(buffer)
        return True
