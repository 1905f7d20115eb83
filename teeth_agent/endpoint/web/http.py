"""The dashboard's HTTP(S) listener, in OS threads of its own.

Why threads and not the hub: the standard library's HTTP server is small
and well known, a slow browser then costs one bounded thread and never a
stall of the hub, and the hub's books are read only through a
:class:`teeth_agent.transport.ThreadBridge` (every read is one short call
on the hub). Connections are bounded (``max_connections``; the next one is
answered 503), every socket has a timeout (a client that stops reading is
dropped), and the HTTP/1.0 default closes each connection after its
answer, so idle browsers hold no slots.

Routes (GET and HEAD only: the dashboard changes nothing, so there is no
form, no cookie and nothing for a cross-site request to forge):

=====================  ==================================================
``/``                  the page (``static/index.html``)
``/static/NAME``       its script, style sheet and icon
``/api/state``         the whole picture as JSON (:mod:`.views`)
``/api/events``        Server-Sent Events: ``state`` once, then ``batch``
                       events (:mod:`.events`)
``/api/erasures.json`` the erasure report, a download
``/api/erasures.csv``  the same as CSV
``/metrics``           Prometheus metrics
=====================  ==================================================

Every answer carries a strict Content-Security-Policy (scripts and styles
from this origin only, no inline code, no framing), ``nosniff`` and
``no-referrer``.
"""

import http.server
import importlib.resources
import ipaddress
import logging
import socket
import ssl
import threading
import time

from teeth_agent.conf import dashboard as conf_dashboard
from teeth_agent.conf import tls as conf_tls
from teeth_agent.endpoint import errors
from teeth_agent.endpoint import metrics as metrics_mod
from teeth_agent.endpoint.web import auth
from teeth_agent.endpoint.web import events as events_mod
from teeth_agent.endpoint.web import records as records_mod
from teeth_agent.endpoint.web import report
from teeth_agent.endpoint.web import views
from teeth_agent import transport

LOG = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'")

#: The static files served, by name, with their content types.
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

#: Seconds an HTTP thread waits for the hub to answer one read.
HUB_TIMEOUT = 10.0


class RecordsUnavailable(Exception):
    """The erasure records cannot be read now (the database failed)."""


_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def load_static():
    """The static files' bytes, read once from the package data."""
    base = importlib.resources.files(__package__) / "static"
    return {name: (base / name).read_bytes() for name in STATIC}


def server_tls_context(cert_file, key_file=None, minimum_version="1.2"):
    """A standard-library (not green) server context for the dashboard's
    threads, from the endpoint's certificate. Raises
    :class:`~teeth_agent.endpoint.errors.EndpointConfigError`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = transport.TLS_VERSIONS[minimum_version]
    try:
        context.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise errors.EndpointConfigError(
            "the dashboard cannot load [endpoint] tls_cert_file %s: %s"
            % (cert_file, getattr(exc, "strerror", None) or exc)) from None
    return context


def _host_name(header):
    """The host part of a ``Host`` header (brackets of IPv6 removed)."""
    header = (header or "").strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "teeth-endpoint"
    sys_version = ""

    def version_string(self):
        # Only the name: no Python version for a scanner to match.
        return self.server_version

    # -- the answers --------------------------------------------------------

    def _headers(self, status, content_type, length=None, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "no-store")
        if self.server.owner.tls_context is not None:
            self.send_header("Strict-Transport-Security", "max-age=31536000")
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()

    def _send(self, status, body, content_type, extra=()):
        if isinstance(body, str):
            body = body.encode("utf-8")
        self._headers(status, content_type, len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status, text, extra=()):
        self._send(status, text + "\n", "text/plain; charset=utf-8", extra)

    def _json(self, payload):
        self._send(200, events_mod.json_text(payload), "application/json")

    def log_message(self, fmt, *args):
        LOG.debug("dashboard %s: " + fmt, self.address_string(), *args)

    # -- the checks ---------------------------------------------------------

    def _allowed(self):
        owner = self.server.owner
        if owner.token_hash is not None:
            if auth.authorized(self.headers.get("Authorization"),
                               owner.token_hash):
                return True
            self._error(401, "This dashboard needs its access token (the "
                             "one teeth-endpoint dashboard-token printed).",
                        [("WWW-Authenticate",
                          'Basic realm="teeth-endpoint", charset="UTF-8"')])
            return False
        # Without a login only loopback names may be asked for: a web
        # site cannot rebind its own name to 127.0.0.1 and read the page.
        host = _host_name(self.headers.get("Host"))
        if host in _LOOPBACK_NAMES or host == owner.host.lower():
            return True
        try:
            if ipaddress.ip_address(host).is_loopback:
                return True
        except ValueError:
            pass
        self._error(421, "This dashboard answers only to a loopback host "
                         "name.")
        return False

    # -- the routes ---------------------------------------------------------

    def do_GET(self):
        owner = self.server.owner
        path = self.path.partition("?")[0]
        if not self._allowed():
            return
        try:
            if path == "/" or path == "/index.html":
                return self._static("index.html")
            if path.startswith("/static/") and \
                    path[len("/static/"):] in STATIC:
                return self._static(path[len("/static/"):])
            if path == "/api/state":
                erasures, problem = owner.shown_erasures()
                state = owner.on_hub(owner.view.state, erasures)
                state["erasures_error"] = problem
                return self._json(state)
            if path == "/api/events":
                return self._events()
            if path in ("/api/erasures.json", "/api/erasures.csv"):
                return self._report(path.rpartition(".")[2])
            if path == "/metrics":
                return self._send(
                    200, owner.on_hub(owner.metrics.exposition),
                    "text/plain; version=0.0.4; charset=utf-8")
        except TimeoutError:
            return self._error(503, "The endpoint is too busy to answer; "
                                    "try again.")
        except RecordsUnavailable as exc:
            return self._error(503, "The erasure records cannot be read "
                                    "now: %s" % exc)
        self._error(404, "There is nothing at this address.")

    do_HEAD = do_GET

    def _method_not_allowed(self):
        self._error(405, "The dashboard is read-only: only GET and HEAD "
                         "are answered.", [("Allow", "GET, HEAD")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = \
        _method_not_allowed

    def _static(self, name):
        self._send(200, self.server.owner.static[name], STATIC[name])

    def _report(self, kind):
        owner = self.server.owner
        records = owner.read_erasures(None)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        disposition = ('attachment; filename="erasures-%s.%s"'
                       % (stamp, kind))
        if kind == "csv":
            body = report.as_csv(records)
            content_type = "text/csv; charset=utf-8"
        else:
            body = report.as_json(records, time.time())
            content_type = "application/json"
        self._send(200, body, content_type,
                   [("Content-Disposition", disposition)])

    def _events(self):
        owner = self.server.owner
        erasures, problem = owner.shown_erasures()
        try:
            client = owner.on_hub(owner.events.open, erasures, problem)
        except events_mod.TooManyClients as exc:
            return self._error(
                503, "Too many live-update streams are open (%s); the page "
                     "works without live updates." % exc,
                [("Retry-After", "30")])
        try:
            self._headers(200, "text/event-stream")
            if self.command == "HEAD":
                return
            self.wfile.write(b"retry: 3000\n\n")
            last_write = time.monotonic()
            while not owner.stopping.is_set():
                data = client.next(1.0)
                if client.dropped.is_set():
                    break
                if data is None:
                    if time.monotonic() - last_write < \
                            events_mod.KEEPALIVE:
                        continue
                    data = b": keepalive\n\n"
                self.wfile.write(data)
                self.wfile.flush()
                last_write = time.monotonic()
        except OSError:
            pass  # the browser went away or stopped reading
        finally:
            owner.hub_call(owner.events.close, client)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner):
        self.owner = owner
        self.slots = threading.BoundedSemaphore(owner.max_connections)
        if ":" in owner.host:
            self.address_family = socket.AF_INET6
        super().__init__((owner.host, owner.port), _Handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            if self.owner.tls_context is None:
                try:
                    request.settimeout(1.0)
                    request.sendall(b"HTTP/1.0 503 Service Unavailable\r\n"
                                    b"Content-Length: 0\r\n\r\n")
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request, client_address):
        request.settimeout(self.owner.write_timeout)
        context = self.owner.tls_context
        if context is None:
            return super().finish_request(request, client_address)
        try:
            wrapped = context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            LOG.debug("dashboard: TLS handshake with %s failed: %s",
                      client_address, exc)
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            wrapped.close()


class DashboardServer:
    """The dashboard of ``endpoint`` on ``host:port`` (see the module
    docstring). ``token_hash`` (from :func:`auth.load_hash`) asks every
    request for the token; ``tls_context`` (a standard-library context,
    :func:`server_tls_context`) serves HTTPS. ``records`` is where the
    report and the page read erasure records from (an erasure record
    source, :mod:`.records`; by default the in-memory book, which also
    feeds the live updates). Start and stop it on the hub."""

    def __init__(self, endpoint, host="127.0.0.1", port=8780,
                 tls_context=None, token_hash=None, max_connections=64,
                 max_event_clients=32, event_queue=1000, write_timeout=10.0,
                 records=None):
        self.endpoint = endpoint
        self.host = host
        self.port = port
        self.tls_context = tls_context
        self.token_hash = token_hash
        self.max_connections = max_connections
        self.write_timeout = write_timeout
        self.static = load_static()
        self.book = records_mod.ErasureBook(endpoint)
        self.records = records or self.book
        self.view = views.DashboardView(endpoint)
        self.metrics = metrics_mod.EndpointMetrics(endpoint)
        self.events = events_mod.EventStream(
            endpoint, self.view, self.book, max_clients=max_event_clients,
            queue_size=event_queue, on_drop=self.metrics.dropped_clients.inc)
        self.metrics.event_clients = self.events.__len__
        self.stopping = threading.Event()
        self._bridge = transport.ThreadBridge()
        self._server = None
        self._thread = None
        self._started = False

    @classmethod
    def from_conf(cls, conf, endpoint, records=None):
        """From ``[dashboard]`` (and ``[endpoint]`` for TLS and the token).
        Raises :class:`~teeth_agent.endpoint.errors.EndpointConfigError`
        when it is not on loopback and TLS or the token is missing."""
        group = conf.dashboard
        if group.max_event_clients >= group.max_connections:
            raise errors.EndpointConfigError(
                "[dashboard] max_event_clients (%d) must be below "
                "max_connections (%d), or live-update streams could take "
                "every connection and leave none for the page"
                % (group.max_event_clients, group.max_connections))
        host, port = conf_dashboard.split_listen(group.listen)
        loopback = conf_dashboard.is_loopback(host)
        tls_context = None
        if not loopback:
            endpoint_group = conf.endpoint
            if not endpoint_group.tls_enabled or \
                    not endpoint_group.tls_cert_file:
                raise errors.EndpointConfigError(
                    "[dashboard] listen %s is not a loopback address, so "
                    "the dashboard serves HTTPS only, with the certificate "
                    "of [endpoint] tls_cert_file, and TLS is not set up "
                    "there" % group.listen)
            conf_tls.endpoint_settings(conf)
            tls_context = server_tls_context(
                endpoint_group.tls_cert_file, endpoint_group.tls_key_file,
                endpoint_group.tls_minimum_version)
        token_hash = None
        if not loopback or group.require_token:
            token_hash = auth.load_hash(conf.endpoint.state_dir)
        persistence = getattr(endpoint, "persistence", None)
        if records is None and persistence is not None:
            records = records_mod.StoreRecords(persistence.store)
        return cls(endpoint, host=host, port=port, tls_context=tls_context,
                   token_hash=token_hash,
                   max_connections=group.max_connections,
                   max_event_clients=group.max_event_clients,
                   event_queue=group.event_queue,
                   write_timeout=group.write_timeout, records=records)

    @property
    def url(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s://%s:%d/" % ("https" if self.tls_context else "http",
                                host, self.port)

    def on_hub(self, func, *args):
        """Run ``func`` on the hub and return its result (from an HTTP
        thread). Raises TimeoutError when the hub does not answer."""
        try:
            return self._bridge.run(func, *args, timeout=HUB_TIMEOUT)
        except OSError as exc:
            raise TimeoutError(str(exc)) from None

    def read_erasures(self, limit):
        """The newest ``limit`` erasure records (all with None), from an
        HTTP thread: a blocking source (a database) is read right here,
        the in-memory book on the hub. Raises :class:`RecordsUnavailable`
        or TimeoutError."""
        if not getattr(self.records, "blocking", False):
            return self.on_hub(self.records.erasure_records, limit)
        try:
            return self.records.erasure_records(limit)
        except Exception as exc:
            # Whatever the store raised, the page says it in one line.
            LOG.warning("dashboard: cannot read the erasure records: %s",
                        exc)
            raise RecordsUnavailable(str(exc).splitlines()[0]
                                     if str(exc) else type(exc).__name__)

    def shown_erasures(self):
        """``(records, problem)``: the erasure records the page shows, or
        none and the one-line reason they cannot be read (the page works
        on without them)."""
        try:
            return self.read_erasures(views.MAX_ERASURES), None
        except RecordsUnavailable as exc:
            return [], "The erasure records cannot be read now: %s" % exc

    def hub_call(self, func, *args):
        """Run ``func`` on the hub without waiting for it."""
        try:
            self._bridge.call(func, *args)
        except OSError:
            pass  # the bridge is stopped: the dashboard is stopping

    def start(self):
        """Listen and serve in a thread; returns the bound port. Raises
        :class:`EndpointConfigError` when the address cannot be bound."""
        try:
            self._server = _Server(self)
        except OSError as exc:
            raise errors.EndpointConfigError(
                "the dashboard cannot listen on %s:%d: %s"
                % (self.host, self.port, exc.strerror or exc)) from None
        self.port = self._server.server_address[1]
        self._bridge.start()
        self.book.attach()
        self.metrics.attach()
        self.events.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
            name="teeth-dashboard", daemon=True)
        self._thread.start()
        self._started = True
        LOG.info("dashboard at %s (%s)", self.url,
                 "token required" if self.token_hash else
                 "loopback, no login")
        return self.port

    def stop(self):
        """Stop serving (nothing happens when it was never started)."""
        if not self._started:
            return
        self._started = False
        self.stopping.set()
        if self._server is not None:
            # shutdown() waits for serve_forever in an OS thread, so the
            # hub keeps serving the bridge meanwhile.
            transport.run_in_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None
        self.events.stop()
        self.metrics.detach()
        self.book.detach()
        self._bridge.stop()
