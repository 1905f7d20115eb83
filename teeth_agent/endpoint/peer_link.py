"""The peer link: routed commands between endpoint processes on several
machines.

A ``serve`` process with ``[endpoint] peer_listen`` accepts, on that TCP
port, the commands other processes of its database route to the agents it
holds (:mod:`teeth_agent.endpoint.peers`), and dials the peer ports of the
others for agents they hold. The link speaks what the control socket
speaks (line-delimited JSON requests, ``task_status`` pushed back while a
``watch_task`` runs); only the transport differs:

* TLS both ways, never plaintext: the process presents its endpoint
  certificate (``[endpoint] tls_cert_file``) as server and as client and
  verifies the other's against ``[endpoint] peer_ca_file`` (default
  ``tls_ca_file``); the dialling side also checks that the certificate
  names the address it dialled.
* Only endpoint certificates (:func:`teeth_agent.pki.
  is_endpoint_certificate`: the SAN URI ``teeth-endpoint:...`` with
  ``serverAuth`` and ``clientAuth``) are accepted, on both ends: an agent's
  certificate, signed by the same CA, is refused on the peer port, and a
  server that shows one is not dialled further.
* Only ``ping``, ``call`` and ``watch_task`` are served, each as a
  forwarded command (``forwarded`` is set here whatever the peer sent), so
  a command that came over the link is answered by this process and never
  routed again.

Its address is published in the database as ``tls:HOST:PORT``
(``[endpoint] peer_advertise``, else the listen address).
"""

import logging

from teeth_agent.conf import tls as conf_tls
from teeth_agent import pki
from teeth_agent import protocol
from teeth_agent import transport

LOG = logging.getLogger(__name__)

#: The scheme of a peer-port address in the directory.
TLS_SCHEME = "tls:"

#: The commands served on the peer port.
PEER_METHODS = ("ping", "call", "watch_task")

#: Seconds a peer may take for its TLS handshake; and may stay silent in
#: the middle of a line.
HANDSHAKE_TIMEOUT = 10.0
LINE_IDLE_TIMEOUT = 60.0

#: The most connections the peer port holds at once, TLS handshakes in
#: progress included (far more than a fleet's processes need: one per
#: routed command being answered); further ones are closed at once.
CONNECTION_LIMIT = 256


class NotAnEndpoint(OSError):
    """The other end of a peer link showed a certificate that is not an
    endpoint's."""


def tls_address(host, port):
    """The directory address of a peer port: ``tls:host:port``
    (``tls:[v6]:port``)."""
    if ":" in host:
        host = "[%s]" % host
    return "%s%s:%d" % (TLS_SCHEME, host, port)


def parse_tls_address(address):
    """``tls:host:port`` -> ``(host, port)``; raises ValueError."""
    if not (address or "").startswith(TLS_SCHEME):
        raise ValueError("%r is not a tls: address" % (address,))
    host, sep, port = address[len(TLS_SCHEME):].rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or \
            not 0 < int(port) < 65536:
        raise ValueError("%r is not tls:host:port" % (address,))
    return host, int(port)


class PeerLink:
    """The peer port of one process and its way of dialling the others.

    ``settings`` is what :func:`teeth_agent.conf.tls.peer_settings`
    returns. The constructor builds the TLS contexts and checks that
    ``tls_cert_file`` is an endpoint certificate; raises
    :class:`~teeth_agent.conf.tls.TLSConfigError` (one line) otherwise.
    """

    def __init__(self, settings, connect=transport.connect):
        self.settings = settings
        self._connect = connect
        cert_file = settings["cert_file"]
        try:
            own = pki.load_certificate(cert_file)
        except pki.PKIError as exc:
            raise conf_tls.TLSConfigError(str(exc)) from None
        if not pki.is_endpoint_certificate(own):
            raise conf_tls.TLSConfigError(
                "[endpoint] peer_listen: %s is not an endpoint certificate "
                "(SAN URI %s with serverAuth and clientAuth); issue a new "
                "one with teeth-endpoint issue-cert --server"
                % (cert_file, pki.endpoint_uri("HOST")))
        try:
            self.server_context = transport.server_tls_context(
                cert_file, settings["key_file"], settings["ca_file"],
                require_client_cert=True,
                minimum_version=settings["minimum_version"])
            self.client_context = transport.client_tls_context(
                settings["ca_file"], cert_file, settings["key_file"],
                check_hostname=True,
                minimum_version=settings["minimum_version"])
        except transport.TLSContextError as exc:
            raise conf_tls.TLSConfigError(str(exc)) from None
        self.port = None
        self.connection_limit = CONNECTION_LIMIT
        self._held = 0
        self._listener = None
        self._acceptor = None
        self._control = None

    @property
    def address(self):
        """This process's peer address for the directory (after
        :meth:`start`)."""
        port = self.settings["advertise_port"] or self.port
        return tls_address(self.settings["advertise_host"], port)

    def start(self, control):
        """Listen; the commands are served by ``control`` (the process's
        :class:`~teeth_agent.endpoint.control.ControlServer`). Raises
        OSError when the port cannot be had."""
        self._control = control
        self._listener = transport.listen(self.settings["host"],
                                          self.settings["port"])
        self.port = self._listener.getsockname()[1]
        # The TLS handshake is done in _on_socket, so that the
        # connections it holds count against CONNECTION_LIMIT.
        self._acceptor = transport.spawn(
            transport.accept_loop, self._listener, self._on_socket)
        LOG.info("peer link on %s:%d (published as %s)",
                 self.settings["host"], self.port, self.address)
        return self.port

    def stop(self):
        if self._acceptor is not None:
            self._acceptor.kill()
            self._acceptor = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- serving ------------------------------------------------------------

    def _on_socket(self, sock, address):
        peer = "%s:%d" % tuple(address[:2])
        if self._held >= self.connection_limit:
            LOG.warning("refusing the peer link from %s: %d peer "
                        "connections are open", peer, self._held)
            sock.close()
            return
        self._held += 1
        connection = None
        try:
            sock = transport.secure_accepted(sock, peer, self.server_context,
                                             HANDSHAKE_TIMEOUT)
            if sock is None:
                return
            if not pki.is_endpoint_certificate_der(
                    sock.getpeercert(binary_form=True)):
                LOG.warning("refusing the peer link from %s: its "
                            "certificate is not an endpoint certificate (an "
                            "agent's?)", peer)
                sock.close()
                return
            connection = transport.Connection(
                sock, self._dispatch, name="endpoint peer %s" % peer,
                line_idle_timeout=LINE_IDLE_TIMEOUT,
                on_close=self._released)
            connection.start()
        finally:
            if connection is None:
                self._held -= 1

    def _released(self, connection, reason):
        self._held -= 1

    def _dispatch(self, connection, command):
        if command.method not in PEER_METHODS:
            raise protocol.UnknownMethod(command.method)
        params = dict(command.params or {})
        if command.method != "ping":
            # Whatever the peer says: a command that came over the link
            # is answered here and never routed again.
            params["forwarded"] = True
        return self._control.commands.dispatch(command.method, params,
                                               connection)

    # -- dialling -----------------------------------------------------------

    def dial(self, address):
        """A TLS socket to the peer port at ``address`` (``tls:h:p``),
        whose certificate names ``h`` and is an endpoint's. Raises
        ValueError (a bad address), :class:`NotAnEndpoint` or OSError."""
        host, port = parse_tls_address(address)
        sock = self._connect(host, port, self.client_context)
        if not pki.is_endpoint_certificate_der(
                sock.getpeercert(binary_form=True)):
            sock.close()
            raise NotAnEndpoint("%s shows a certificate that is not an "
                                "endpoint certificate" % address)
        return sock
