"""The transport: the one module of teeth-agent that uses eventlet.

Everything that needs green threads goes through here: TCP and TLS sockets,
the :class:`Connection` that runs the sans-IO :mod:`teeth_agent.protocol`
over a socket, and a few concurrency helpers (``spawn``, ``sleep``,
:class:`Event`, :class:`ThreadBridge`). No other module imports eventlet and
nothing is monkey-patched: the work that touches the machine (disk I/O,
subprocesses, hashing) runs in ordinary OS threads and talks to the hub
through :class:`ThreadBridge`, so hardware managers and extensions are plain
blocking Python code, and the protocol core never depends on eventlet.
"""

import concurrent.futures
import errno
import logging
import os
import queue
import socket as _std_socket
import ssl as _std_ssl
import threading
import time
import warnings

with warnings.catch_warnings():
    # eventlet announces its maintenance mode on import; it is confined to
    # this module for exactly that reason.
    warnings.simplefilter("ignore")
    import eventlet
    import eventlet.event
    from eventlet.green import socket as green_socket
    from eventlet.green import ssl as green_ssl
    import eventlet.greenpool
    import eventlet.hubs
    import eventlet.queue
    import eventlet.semaphore
    import eventlet.tpool

from teeth_agent import protocol

LOG = logging.getLogger(__name__)

Timeout = eventlet.Timeout
monotonic = time.monotonic


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


# -- green-thread helpers ----------------------------------------------------

def spawn(func, *args, **kwargs):
    """Run ``func`` in a new green thread; returns a handle with ``kill()``
    and ``wait()``."""
    return eventlet.spawn(func, *args, **kwargs)


def spawn_after(seconds, func, *args, **kwargs):
    return eventlet.spawn_after(seconds, func, *args, **kwargs)


def sleep(seconds=0):
    eventlet.sleep(seconds)


def run_in_thread(func, *args, **kwargs):
    """Run a blocking call in an OS thread; the calling green thread waits
    while the hub keeps serving the others."""
    return eventlet.tpool.execute(func, *args, **kwargs)


class Event:
    """A resettable green event (wait with an optional timeout)."""

    def __init__(self):
        self._event = eventlet.event.Event()

    def set(self, value=True):
        if not self._event.ready():
            self._event.send(value)

    def is_set(self):
        return self._event.ready()

    def clear(self):
        if self._event.ready():
            self._event = eventlet.event.Event()

    def wait(self, timeout=None):
        """Return True when set, False on timeout."""
        if self._event.ready():
            return True
        with Timeout(timeout, False):
            self._event.wait()
            return True
        return False


Queue = eventlet.queue.Queue
LightQueue = eventlet.queue.LightQueue
QueueEmpty = eventlet.queue.Empty


class ThreadBridge:
    """Lets OS threads hand work to the hub thread.

    :meth:`call` may be used from any thread: it queues the callable, wakes
    the hub through a pipe and returns a :class:`concurrent.futures.Future`.
    The callable runs in a green thread of the hub, where it may use the
    connections. Start the bridge from the hub's thread.
    """

    def __init__(self):
        self._queue = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._hub_thread = None
        self._worker = None
        # Guards the pipe against a task thread writing to it while stop()
        # closes it (the descriptor number could be reused meanwhile).
        self._pipe_lock = threading.Lock()
        self._stopped = False

    def start(self):
        self._hub_thread = threading.get_ident()
        self._worker = eventlet.spawn(self._run)

    def in_hub_thread(self):
        return threading.get_ident() == self._hub_thread

    def call(self, func, *args, **kwargs):
        future = concurrent.futures.Future()
        with self._pipe_lock:
            if self._stopped:
                raise OSError(errno.ESHUTDOWN, "the thread bridge is stopped")
            self._queue.put((future, func, args, kwargs))
            try:
                os.write(self._write_fd, b"x")
            except BlockingIOError:
                pass  # the pipe is full, so the hub is already awake
        return future

    def run(self, func, *args, timeout=None, **kwargs):
        """Like :meth:`call`, but wait for the result (from an OS thread)."""
        if self.in_hub_thread():
            return func(*args, **kwargs)
        return self.call(func, *args, **kwargs).result(timeout)

    def _run(self):
        while True:
            eventlet.hubs.trampoline(self._read_fd, read=True)
            try:
                while os.read(self._read_fd, 4096):
                    pass
            except BlockingIOError:
                pass
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                eventlet.spawn_n(self._execute, *item)

    @staticmethod
    def _execute(future, func, args, kwargs):
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(func(*args, **kwargs))
        except BaseException as exc:  # handed to the waiting thread
            future.set_exception(exc)

    def stop(self):
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
        with self._pipe_lock:
            if self._stopped:
                return
            self._stopped = True
            for fd in (self._read_fd, self._write_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass


# -- sockets -----------------------------------------------------------------

TLS_VERSIONS = {"1.2": _std_ssl.TLSVersion.TLSv1_2,
                "1.3": _std_ssl.TLSVersion.TLSv1_3}


class TLSContextError(ValueError):
    """A TLS context cannot be built: a file is missing, unreadable or
    not what it should be."""


def _load(what, path, loader):
    try:
        loader()
    except (OSError, ValueError) as exc:
        # ssl.SSLError is an OSError; a wrong password or format a
        # ValueError or SSLError. One line naming the file.
        raise TLSContextError("cannot load the %s %s: %s"
                              % (what, path, exc)) from None


def _minimum(version):
    try:
        return TLS_VERSIONS[version]
    except KeyError:
        raise TLSContextError("unknown TLS version %r (choose from %s)"
                              % (version, ", ".join(sorted(TLS_VERSIONS))))


def client_tls_context(ca_file, cert_file=None, key_file=None,
                       check_hostname=True, minimum_version="1.2"):
    """A TLS context for the agent: it verifies the server against
    ``ca_file`` only (never the system's store) and never goes below
    ``minimum_version``. Raises :class:`TLSContextError`."""
    if not ca_file:
        raise TLSContextError("a TLS client needs a CA file to verify the "
                              "endpoint with")
    context = green_ssl.SSLContext(_std_ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _minimum(minimum_version)
    context.check_hostname = check_hostname
    context.verify_mode = _std_ssl.CERT_REQUIRED
    _load("CA file", ca_file,
          lambda: context.load_verify_locations(cafile=ca_file))
    if cert_file:
        _load("client certificate", cert_file,
              lambda: context.load_cert_chain(cert_file, key_file))
    return context


def server_tls_context(cert_file, key_file=None, ca_file=None,
                       require_client_cert=False, minimum_version="1.2"):
    """A TLS context for the endpoint. With ``ca_file`` agents are asked
    for a certificate signed by it (one that does not verify is refused);
    with ``require_client_cert`` only agents presenting one get through.
    Raises :class:`TLSContextError`."""
    if require_client_cert and not ca_file:
        raise TLSContextError("requiring client certificates needs a CA "
                              "file to verify them with")
    context = green_ssl.SSLContext(_std_ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _minimum(minimum_version)
    _load("server certificate", cert_file,
          lambda: context.load_cert_chain(cert_file, key_file))
    if ca_file:
        _load("client CA file", ca_file,
              lambda: context.load_verify_locations(cafile=ca_file))
        context.verify_mode = (_std_ssl.CERT_REQUIRED if require_client_cert
                               else _std_ssl.CERT_OPTIONAL)
    return context


def connect(host, port, tls_context=None, timeout=10.0):
    """Open a TCP (and TLS, when a context is given) connection.

    Raises OSError (including ``ssl.SSLError``) on failure.
    """
    sock = None
    last_error = None
    for family, kind, proto, _, address in green_socket.getaddrinfo(
            host, port, type=_std_socket.SOCK_STREAM):
        try:
            sock = green_socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            sock.connect(address)
            break
        except OSError as exc:
            last_error = exc
            if sock is not None:
                sock.close()
            sock = None
    if sock is None:
        raise last_error or OSError(errno.EHOSTUNREACH,
                                    "no address for %s" % host)
    _tune(sock)
    if tls_context is not None:
        try:
            sock = tls_context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
    sock.settimeout(None)
    return sock


def _tune(sock):
    try:
        sock.setsockopt(_std_socket.IPPROTO_TCP, _std_socket.TCP_NODELAY, 1)
        sock.setsockopt(_std_socket.SOL_SOCKET, _std_socket.SO_KEEPALIVE, 1)
    except OSError:
        pass


def listen(host, port, backlog=1024):
    """A listening TCP socket; ``port=0`` picks a free port."""
    family = _std_socket.AF_INET6 if ":" in host else _std_socket.AF_INET
    sock = green_socket.socket(family, _std_socket.SOCK_STREAM)
    sock.setsockopt(_std_socket.SOL_SOCKET, _std_socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def listen_unix(path, mode=0o600, backlog=64):
    """A listening Unix socket at ``path`` with the given permissions."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = green_socket.socket(_std_socket.AF_UNIX, _std_socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


def connect_unix(path, timeout=10.0):
    sock = green_socket.socket(_std_socket.AF_UNIX, _std_socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(path)
    sock.settimeout(None)
    return sock


def socketpair():
    """Two connected green sockets (in-process ends, for tests and tools)."""
    return green_socket.socketpair()


def peer_uid(sock):
    """The uid of the process at the other end of a Unix socket."""
    import struct
    creds = sock.getsockopt(_std_socket.SOL_SOCKET, _std_socket.SO_PEERCRED,
                            struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def accept_loop(listener, on_socket, tls_context=None, handshake_timeout=10.0,
                accept_filter=None):
    """Accept connections forever, calling ``on_socket(sock, address)`` in
    a new green thread for each (after the TLS handshake, when a context is
    given). ``accept_filter(address)`` may refuse a connection by returning
    False. Returns when the listener is closed."""
    last_complaint = -1e9
    while True:
        try:
            sock, address = listener.accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS,
                             errno.ENOMEM):
                now = time.monotonic()
                if now - last_complaint > 10:
                    LOG.error("cannot accept a connection: %s (raise the "
                              "open-file limit?)", exc)
                    last_complaint = now
                eventlet.sleep(0.1)
                continue
            if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                continue
            return
        if accept_filter is not None and not accept_filter(address):
            sock.close()
            continue
        if sock.family != _std_socket.AF_UNIX:
            _tune(sock)
        eventlet.spawn_n(_start_accepted, sock, address, on_socket,
                         tls_context, handshake_timeout)


def _start_accepted(sock, address, on_socket, tls_context, handshake_timeout):
    if tls_context is not None:
        try:
            with Timeout(handshake_timeout):
                sock = tls_context.wrap_socket(sock, server_side=True)
        except (OSError, Timeout) as exc:
            LOG.warning("TLS handshake with %s failed: %s", address,
                        exc if not isinstance(exc, Timeout) else "timed out")
            sock.close()
            return
    on_socket(sock, address)


# -- connections -------------------------------------------------------------

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
                 inline_methods=(), line_idle_timeout=None):
        self.sock = sock
        # A peer that sent part of a line and then nothing for this long
        # is dropped, so half-written lines cannot pin connections forever.
        self._line_idle_timeout = line_idle_timeout
        # Methods whose handlers never block run in the reader itself: no
        # green thread per message, which matters to an endpoint holding
        # thousands of agents that ping and report all the time.
        self._inline = frozenset(inline_methods)
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
        self._closed = Event()
        self.close_reason = None
        # The text of a fatal_error the peer sent (its reason for closing).
        self.fatal_error_received = None
        self.last_received = monotonic()
        self.last_sent = monotonic()
        self.created = monotonic()
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
            with Timeout(timeout, False):
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
        except Exception:
            pass
        self.close("fatal error sent: %s" % reason)

    def close(self, reason="closed"):
        if self.closed:
            return
        self.close_reason = reason
        self._closed.set()
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
                    with Timeout(self._write_timeout):
                        self.sock.sendall(data)
                self.last_sent = monotonic()
            except Timeout:
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
                    with Timeout(idle_limit):
                        data = self.sock.recv(65536)
                except Timeout:
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
                    self.last_received = monotonic()
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
        if isinstance(event, protocol.CommandReceived):
            if event.command.method in self._inline:
                self._run_command(event.command)
            else:
                self._pool.spawn_n(self._run_command, event.command)
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
        with Timeout(self._drain_timeout, False):
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
