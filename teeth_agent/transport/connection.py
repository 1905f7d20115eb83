"""A connection: one :class:`teeth_agent.protocol.Session` over a socket.

A reader green thread feeds the session, a writer sends what it encodes;
calls wait for their response with a timeout (:class:`CallTimeout`), a
remote error arrives as :class:`RemoteError`, a lost link as
:class:`ConnectionLost`.
"""

import logging
import socket as _std_socket
import ssl as _std_ssl
import warnings

with warnings.catch_warnings():
    # eventlet announces its maintenance mode on import; it is confined to
    # this package for exactly that reason.
    warnings.simplefilter("ignore")
    import eventlet
    import eventlet.event
    import eventlet.greenpool
    import eventlet.hubs
    import eventlet.queue
    import eventlet.semaphore
    import eventlet.tpool

from teeth_agent import protocol
from teeth_agent.transport import hub

LOG = logging.getLogger(__name__)


class ConnectionLost(Exception):
    """The connection closed before the call was answered."""


class CallTimeout(Exception):
    """The peer did not answer a call in time."""


class RemoteError(Exception):
    """The peer answered a call with an error response."""

    def __init__(self, error):
        self.error = error if isinstance(error, dict) else {"msg": str(error)}
        #: The error as a :class:`protocol.WireError` (the subclass its
        #: type names, when this side knows it).
        self.wire = protocol.WireError.from_dict(self.error)
        self.type = self.wire.type
        self.code = self.wire.code
        self.msg = self.wire.msg
        super().__init__("%s: %s" % (self.type, self.msg))


class MessageStats:
    """Messages received and sent, counted by every connection it is given
    to (the endpoint shares one among its agents' connections)."""

    def __init__(self):
        self.received = 0
        self.sent = 0


#: How long, and how many bytes, a connection that sent a fatal_error
#: reads and drops what its peer still sends before it closes
#: (:meth:`Connection._linger`).
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 * 1024 * 1024


class Connection:
    """One protocol connection over a green socket.

    A reader green thread parses what arrives and never waits for a command
    to finish: each inbound command runs in a green pool bounded by
    ``max_inflight`` (when it is full the reader stops reading, which pushes
    back on the peer). Writes are serialised by a lock and bounded by
    ``write_timeout`` so a peer that stops reading is dropped.

    ``dispatch(connection, command)`` returns the result dict or raises
    :class:`protocol.WireError`; any other exception becomes an
    ``InternalError`` response. ``on_close(connection, reason)`` runs once.
    """

    def __init__(self, sock, dispatch, name="peer",
                 max_line_length=protocol.DEFAULT_MAX_LINE_LENGTH,
                 max_inflight=64, write_timeout=30.0, on_close=None,
                 inline_methods=(), line_idle_timeout=None, stats=None,
                 inline_if=None):
        self.sock = sock
        self.stats = stats if stats is not None else MessageStats()
        # A peer that sent part of a line and then nothing for this long
        # is dropped, so half-written lines cannot pin connections forever.
        self._line_idle_timeout = line_idle_timeout
        # Methods whose handlers never block run in the reader itself: no
        # green thread per message, which matters to an endpoint holding
        # thousands of agents that ping and report all the time.
        self._inline = frozenset(inline_methods)
        # And commands ``inline_if(command)`` says never block, of other
        # methods (a method that blocks only for some of its messages).
        self._inline_if = inline_if
        # The plain non-blocking socket under a green TCP socket, for
        # writes that fit in the send buffer (almost all): they need no
        # timer. TLS sockets always take the green path.
        raw = getattr(sock, "fd", None)
        self._raw = raw if isinstance(raw, _std_socket.socket) and \
            not isinstance(sock, _std_ssl.SSLSocket) else None
        self.name = name
        self.session = protocol.Session(max_line_length=max_line_length)
        self._dispatch = dispatch
        self._on_close = on_close
        self._pool = eventlet.greenpool.GreenPool(max_inflight)
        self._write_lock = eventlet.semaphore.Semaphore()
        self._write_timeout = write_timeout
        self._drain_timeout = 2.0
        self._waiters = {}
        self._closed = hub.Event()
        self.close_reason = None
        # The text of a fatal_error the peer sent (its reason for closing).
        self.fatal_error_received = None
        # Whether this end sent a fatal_error: the close then lingers (see
        # _linger).
        self._fatal_sent = False
        self.last_received = hub.monotonic()
        self.last_sent = hub.monotonic()
        self.created = hub.monotonic()
        self._reader = None
        self.user_data = {}

    @property
    def closed(self):
        return self._closed.is_set()

    def start(self):
        self._reader = eventlet.spawn(self._read_loop)
        return self

    def wait_closed(self, timeout=None):
        return self._closed.wait(timeout)

    # -- outbound calls ------------------------------------------------------

    def call(self, method, params=None, timeout=30.0):
        """Send a command and wait for its answer; returns the result dict.

        Raises :class:`RemoteError`, :class:`CallTimeout` or
        :class:`ConnectionLost`.
        """
        if self.closed or self.session.receive_closed:
            raise ConnectionLost(self.close_reason
                                 or self.session.close_reason)
        command_id, data = self.session.send_command(method, params)
        waiter = eventlet.event.Event()
        self._waiters[command_id] = waiter
        try:
            self._write(data)
            with hub.Timeout(timeout, False):
                response = waiter.wait()
                if isinstance(response, BaseException):
                    raise response
                if not response.ok:
                    raise RemoteError(response.error)
                return response.result
            raise CallTimeout("%s did not answer %s within %ss"
                              % (self.name, method, timeout))
        finally:
            self._waiters.pop(command_id, None)
            if not self.session.closed:
                self.session.forget(command_id)

    def call_async(self, method, params=None, timeout=30.0, callback=None):
        """Like :meth:`call` in a new green thread; ``callback(result,
        exception)`` runs when it is answered, fails or times out."""
        def run():
            try:
                result = self.call(method, params, timeout)
            except Exception as exc:
                if callback is not None:
                    callback(None, exc)
                return
            if callback is not None:
                callback(result, None)
        return eventlet.spawn(run)

    # -- closing -------------------------------------------------------------

    def fatal(self, reason):
        """Send a fatal error and close."""
        if self.closed:
            return
        try:
            data = self.session.send_fatal(reason)
            self._write(data, closing=True)
            self._fatal_sent = True
        except Exception:
            pass
        self.close("fatal error sent: %s" % reason)

    def close(self, reason="closed"):
        if self.closed:
            return
        self.close_reason = reason
        self._closed.set()
        if self._fatal_sent:
            if self._reader is not None and \
                    self._reader is not eventlet.getcurrent():
                # One reader at a time: the linger reads in its place.
                self._reader.kill()
            self._linger()
        try:
            self.sock.shutdown(_std_socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        lost = ConnectionLost("connection to %s closed: %s"
                              % (self.name, reason))
        for waiter in list(self._waiters.values()):
            if not waiter.ready():
                waiter.send(lost)
        self._waiters.clear()
        if self._reader is not None and \
                self._reader is not eventlet.getcurrent():
            self._reader.kill()
        if self._on_close is not None:
            try:
                self._on_close(self, reason)
            except Exception:
                LOG.exception("close handler of %s failed", self.name)

    def _linger(self):
        """After a fatal_error: end the sending side (the peer reads the
        error, then end of stream) and read and drop what the peer still
        sends, until it closes, for at most :data:`LINGER_SECONDS` and
        :data:`LINGER_BYTES`. Closed with unread bytes in its receive
        queue (the rest of an oversize line, say), the socket would send
        a reset instead, and a reset makes the peer's kernel drop the
        fatal_error before the peer has read it."""
        try:
            self.sock.shutdown(_std_socket.SHUT_WR)
        except OSError:
            return
        left = LINGER_BYTES
        deadline = hub.monotonic() + LINGER_SECONDS
        try:
            while left > 0:
                remaining = deadline - hub.monotonic()
                if remaining <= 0:
                    return
                with hub.Timeout(remaining):
                    data = self.sock.recv(min(65536, left))
                if not data:
                    return
                left -= len(data)
        except (hub.Timeout, OSError, _std_ssl.SSLError):
            return

    # -- internals -----------------------------------------------------------

    def _write(self, data, closing=False):
        if self.closed and not closing:
            raise ConnectionLost(self.close_reason)
        with self._write_lock:
            try:
                if self._raw is not None:
                    try:
                        sent = self._raw.send(data)
                    except BlockingIOError:
                        sent = 0
                    data = data[sent:]
                if data:
                    with hub.Timeout(self._write_timeout):
                        self.sock.sendall(data)
                self.last_sent = hub.monotonic()
                self.stats.sent += 1
            except hub.Timeout:
                self.close("write timed out after %ss" % self._write_timeout)
                raise ConnectionLost("write to %s timed out" % self.name)
            except OSError as exc:
                self.close("write failed: %s" % exc)
                raise ConnectionLost("write to %s failed: %s"
                                     % (self.name, exc))

    def _read_loop(self):
        reason = "closed by peer"
        partial = False
        try:
            while not self.closed:
                idle_limit = self._line_idle_timeout if partial else None
                try:
                    with hub.Timeout(idle_limit):
                        data = self.sock.recv(65536)
                except hub.Timeout:
                    reason = ("a partial line was left unfinished for %ss"
                              % idle_limit)
                    LOG.warning("%s: %s", self.name, reason)
                    self.fatal(reason)
                    break
                except OSError as exc:
                    reason = "read failed: %s" % exc
                    break
                partial = bool(data) and not data.endswith(b"\n")
                if data:
                    self.last_received = hub.monotonic()
                events = self.session.receive_data(data)
                for event in events:
                    self._handle(event)
                if not data or self.session.receive_closed:
                    if self.session.close_reason and data:
                        reason = self.session.close_reason
                    if not data:
                        # The peer may only have shut its writing side:
                        # commands it already sent still get answers.
                        self._drain()
                    break
        finally:
            self.close(reason)

    def _handle(self, event):
        if isinstance(event, (protocol.CommandReceived,
                              protocol.ResponseReceived)):
            self.stats.received += 1
        if isinstance(event, protocol.CommandReceived):
            command = event.command
            if command.method in self._inline or (
                    self._inline_if is not None
                    and self._inline_if(command)):
                self._run_command(command)
            else:
                self._pool.spawn_n(self._run_command, command)
        elif isinstance(event, protocol.ResponseReceived):
            waiter = self._waiters.get(event.response.id)
            if waiter is not None and not waiter.ready():
                waiter.send(event.response)
        elif isinstance(event, protocol.CommandRejected):
            self._send_quietly(self.session.send_error, event.id, event.error)
        elif isinstance(event, protocol.UnmatchedResponse):
            LOG.warning("dropping a response from %s that matches no "
                        "outstanding command: %.200s", self.name,
                        event.response)
        elif isinstance(event, protocol.ProtocolViolation):
            LOG.warning("%s broke the protocol: %s", self.name, event.reason)
            # Commands read before the bad line still get their answers
            # (bounded: a long-running one is not waited for).
            self._drain()
            try:
                self._write(self.session.send_fatal(event.reason),
                            closing=True)
                self._fatal_sent = True
            except Exception:
                pass
        elif isinstance(event, protocol.FatalErrorReceived):
            self.fatal_error_received = event.message
            LOG.warning("%s sent a fatal error: %s", self.name,
                        protocol.printable(event.message))
        elif isinstance(event, protocol.ConnectionClosed):
            if event.partial:
                LOG.debug("%s closed in the middle of a line", self.name)

    def _drain(self):
        """Wait (bounded) for the commands being executed to answer."""
        with hub.Timeout(self._drain_timeout, False):
            self._pool.waitall()

    def _run_command(self, command):
        try:
            result = self._dispatch(self, command)
        except protocol.WireError as exc:
            self._send_quietly(self.session.send_error, command.id, exc)
            return
        except Exception as exc:
            LOG.exception("command %s from %s failed", command.method,
                          self.name)
            self._send_quietly(self.session.send_error, command.id,
                               protocol.InternalError(
                                   "%s failed: %s" % (command.method, exc)))
            return
        if result is None:
            result = {}
        if not isinstance(result, dict):
            LOG.error("command %s returned %s, not an object", command.method,
                      type(result).__name__)
            result = protocol.InternalError(
                "%s returned a %s, not an object"
                % (command.method, type(result).__name__))
            self._send_quietly(self.session.send_error, command.id, result)
            return
        self._send_quietly(self.session.send_result, command.id, result)

    def _send_quietly(self, encode, *args):
        """Answer a command; a connection that is gone just drops it."""
        if self.closed:
            return
        try:
            data = encode(*args)
        except protocol.LocalProtocolError:
            return
        try:
            self._write(data)
        except ConnectionLost:
            pass
