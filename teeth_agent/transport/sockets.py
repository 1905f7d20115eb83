"""Sockets: TLS contexts, listening, connecting and the accept loop.

Every socket here is a green socket of the hub; an accepted socket
becomes a :class:`~teeth_agent.transport.connection.Connection`.
"""

import errno
import logging
import os
import socket as _std_socket
import ssl as _std_ssl
import time
import warnings

with warnings.catch_warnings():
    # eventlet announces its maintenance mode on import; it is confined to
    # this package for exactly that reason.
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

from teeth_agent.transport import hub

LOG = logging.getLogger(__name__)


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


def error_text(exc):
    """A connection failure as one short phrase for an operator:
    ``connection refused``, not ``[Errno 111] ECONNREFUSED`` (eventlet's
    text, the errno's name) nor ``...: ConnectionRefusedError: ...``.

    ``exc`` is what :func:`connect` or a listen raised: an OSError (a
    TLS failure, a name that does not resolve, a timeout among them) or
    a :class:`~teeth_agent.transport.hub.Timeout`."""
    if isinstance(exc, _std_ssl.SSLCertVerificationError):
        # OpenSSL's words, which operators search for.
        return "TLS certificate verify failed: %s" % (
            exc.verify_message or exc.reason or "unknown reason")
    if isinstance(exc, _std_ssl.SSLError):
        # errno here is OpenSSL's code (1: "Operation not permitted" as an
        # errno), so the reason (WRONG_VERSION_NUMBER) is what is told.
        reason = exc.reason or exc.strerror or str(exc)
        return "TLS error: %s" % reason.replace("_", " ").lower()
    if isinstance(exc, _std_socket.gaierror):
        # Negative codes (EAI_*) are no errno: their own text is.
        return "cannot resolve the host name: %s" % (
            exc.strerror or exc).lower()
    if isinstance(exc, (eventlet.Timeout, TimeoutError)):
        return "timed out"
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code > 0:
        return os.strerror(code).lower()
    return str(exc) or type(exc).__name__


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


def listen(host, port, backlog=1024, reuse_port=False):
    """A listening TCP socket; ``port=0`` picks a free port.

    With ``reuse_port`` the socket sets SO_REUSEPORT before binding, so
    several processes of the same user listen on one port and the kernel
    spreads new connections over them (a process that exits leaves the
    others listening)."""
    family = _std_socket.AF_INET6 if ":" in host else _std_socket.AF_INET
    sock = green_socket.socket(family, _std_socket.SOCK_STREAM)
    sock.setsockopt(_std_socket.SOL_SOCKET, _std_socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(_std_socket.SOL_SOCKET, _std_socket.SO_REUSEPORT, 1)
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


def secure_accepted(sock, address, tls_context, handshake_timeout=10.0):
    """The TLS socket of an accepted ``sock`` after the server side of the
    handshake, or None when it failed or took longer than
    ``handshake_timeout`` (logged, ``sock`` closed)."""
    try:
        with hub.Timeout(handshake_timeout):
            return tls_context.wrap_socket(sock, server_side=True)
    except (OSError, hub.Timeout) as exc:
        LOG.warning(
            "TLS handshake with %s failed: %s", address,
            exc if not isinstance(exc, hub.Timeout) else "timed out")
        sock.close()
        return None


def _start_accepted(sock, address, on_socket, tls_context, handshake_timeout):
    if tls_context is not None:
        sock = secure_accepted(sock, address, tls_context, handshake_timeout)
        if sock is None:
            return
    on_socket(sock, address)
