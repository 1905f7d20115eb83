"""HTTP(S) sources: one URL read with ``Range`` resumption, checked
redirects and a hash of every byte."""

# Size: 529 lines, over the ~500 guideline: HTTPSource is one class (356
# lines): resumption, redirect checks, deadlines and hashing act on the same
# response stream.

import base64
import hashlib
import http.client
import ipaddress
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.parse

from teeth_agent.fetch import errors
from teeth_agent.fetch import hashes as hashes_mod
from teeth_agent.fetch import proxy as proxy_mod
from teeth_agent.fetch import urls
from teeth_agent import retry
from teeth_agent import units

LOG = logging.getLogger(__name__)


#: Redirects followed per request, at most.
MAX_REDIRECTS = 5
#: How often (seconds) the deadline of a running attempt is looked at.
_WATCH_INTERVAL = 0.2
_MAX_BACKOFF = 30.0


#: See :func:`teeth_agent.fetch.hashes.select` (the image rule).
select_hash = hashes_mod.select
#: See :func:`teeth_agent.fetch.urls.check`.
check_url = urls.check
#: See :func:`teeth_agent.fetch.urls.redact`.
redact_url = urls.redact


def _resolve(host, port):
    """Every address ``host`` resolves to, as ``ipaddress`` objects."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError("cannot resolve %s: %s" % (host, exc)) from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _restriction(address):
    """Why ``address`` is not a plain public address, or None."""
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for test, reason in (("is_unspecified", "unspecified"),
                         ("is_loopback", "loopback"),
                         ("is_link_local", "link-local"),
                         ("is_multicast", "multicast"),
                         ("is_private", "private")):
        if getattr(address, test):
            return reason
    if not address.is_global:
        return "not globally routable"
    return None


def _host_port(host, port):
    shown = "[%s]" % host if ":" in host else host
    return shown if port is None else "%s:%d" % (shown, port)


def _problem(exc):
    """An exception as one phrase: ``connection refused`` (from the
    errno), not ``[Errno 111] ECONNREFUSED``."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) \
            and exc.errno and exc.strerror:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


class RedirectPolicy:
    """Where redirects may lead; see the module documentation.

    ``proxies`` (a :class:`teeth_agent.fetch.proxy.Proxies`; by default
    the environment's) carry the requests: the policy decides where a
    download may go, the proxies how it gets there.
    """

    def __init__(self, allowed_networks=(), max_hops=MAX_REDIRECTS,
                 resolve=_resolve, proxies=None):
        self.proxies = proxies if proxies is not None else \
            proxy_mod.Proxies.from_environment()
        self.allowed_networks = [ipaddress.ip_network(str(n), strict=False)
                                 for n in allowed_networks]
        self.max_hops = max_hops
        self._resolve = resolve

    def check(self, source, target):
        """The addresses to connect to for the redirect from ``source`` to
        ``target``; raises :class:`ValueError` saying why it is refused.
        """
        check_url(target)
        parsed = urllib.parse.urlsplit(target)
        scheme = urllib.parse.urlsplit(source).scheme.lower()
        if parsed.scheme.lower() != scheme:
            # Never down to http; and not up either: the operator chose
            # the scheme, and an https store is given as https.
            raise ValueError("a redirect may not change the scheme (%s to "
                             "%s)" % (scheme, parsed.scheme.lower()))
        port = parsed.port or (443 if parsed.scheme.lower() == "https"
                               else 80)
        addresses = self._resolve(parsed.hostname, port)
        if not addresses:
            raise ValueError("%s resolves to no address" % parsed.hostname)
        for address in addresses:
            reason = _restriction(address)
            if reason is not None and not any(
                    address in network for network in self.allowed_networks):
                raise ValueError(
                    "%s is a %s address (allow it with [standbye] "
                    "allowed_redirect_networks)" % (address, reason))
        return [str(address) for address in addresses]


class Hasher:
    """Running checksums and the digests they must end with: one
    ``algorithm`` and its ``expected`` digest, plus the ``others`` (a dict)
    that are verified too."""

    def __init__(self, algorithm, expected, others=None):
        self.algorithm = algorithm
        self.expected = expected
        self._expected = {algorithm: expected, **(others or {})}
        self._hashes = {name: hashlib.new(name) for name in self._expected}

    @classmethod
    def every(cls, digests):
        """A Hasher verifying every ``{algorithm: digest}`` of ``digests``
        (checked by :func:`teeth_agent.fetch.hashes.check_all`), the first
        :data:`teeth_agent.fetch.hashes.REQUIRED` one being ``algorithm``."""
        algorithm = next(name for name in hashes_mod.REQUIRED
                         if name in digests)
        return cls(algorithm, digests[algorithm],
                   {name: digest for name, digest in digests.items()
                    if name != algorithm})

    def update(self, data):
        for running in self._hashes.values():
            running.update(data)

    def hexdigest(self):
        return self._hashes[self.algorithm].hexdigest()

    def verify(self):
        """Raise :class:`ChecksumMismatch` unless every digest matches;
        returns ``algorithm``'s."""
        for name, expected in self._expected.items():
            actual = self._hashes[name].hexdigest()
            if actual != expected:
                raise errors.ChecksumMismatch(name, expected, actual)
        return self.hexdigest()


def _content_range(value):
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


class _Transient(Exception):
    """An attempt failed in a way another attempt may not."""


class HTTPSource:
    """A readable byte stream over a list of mirror URLs.

    :meth:`readinto` hides retries, resumption and fail-over: the caller
    sees one continuous stream from byte 0. ``size`` is the total length
    once a server announced it. Redirects are checked by ``redirects`` (a
    :class:`RedirectPolicy`; by default one that allows no restricted
    address). With ``attempt_timeout``, an attempt (one connection, from
    the request on) fails once it has run longer than ``attempt_timeout``
    seconds plus ``received / min_rate`` (``received`` being the bytes it
    brought): a watchdog thread then shuts the connection down, so even a
    read that blocks on a server sending a byte a second ends.
    :meth:`close` must be called.
    """

    def __init__(self, urls, expected_size=None, retries=5, backoff=1.0,
                 timeout=60.0, ssl_context=None, sleep=time.sleep,
                 redirects=None, attempt_timeout=None, min_rate=None,
                 clock=time.monotonic):
        if not urls:
            raise ValueError("no URL given")
        for url in urls:
            check_url(url)
        self.urls = list(urls)
        self.expected_size = expected_size
        self.size = expected_size
        self.offset = 0
        self.url = None
        self._retries_left = retries
        self._backoff = retry.Backoff(backoff, _MAX_BACKOFF)
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._sleep = sleep
        self._redirects = redirects or RedirectPolicy()
        self._attempt_timeout = attempt_timeout
        self._min_rate = min_rate
        self._clock = clock
        self._rejected = {}
        self._index = 0
        self._connection = None
        self._response = None
        # The attempt under way: when it started, what it received, the
        # connection the watchdog may shut, and whether it did.
        self._lock = threading.Lock()
        self._attempt_start = None
        self._attempt_bytes = 0
        self._live = None
        self._attempt_url = None
        self._expired = False
        self._closed = threading.Event()
        self._watchdog = None

    # -- the attempt deadline -------------------------------------------------

    def _deadline(self):
        extra = self._attempt_bytes / self._min_rate if self._min_rate \
            else 0.0
        return self._attempt_start + self._attempt_timeout + extra

    def _begin_attempt(self, url):
        self._attempt_url = url
        if self._attempt_timeout is None:
            return
        with self._lock:
            self._attempt_start = self._clock()
            self._attempt_bytes = 0
            self._expired = False
        if self._watchdog is None:
            self._watchdog = threading.Thread(
                target=self._watch, name="download-deadline", daemon=True)
            self._watchdog.start()

    def _watch(self):
        while not self._closed.wait(_WATCH_INTERVAL):
            self.check_deadline()

    def check_deadline(self):
        """Shut the running attempt's connection down once it is past its
        deadline (the watchdog calls this; tests may too)."""
        with self._lock:
            if self._attempt_start is None or self._expired or \
                    self._clock() <= self._deadline():
                return
            self._expired = True
            connection = self._live
        LOG.warning("download attempt at %s is past its deadline (%d "
                    "bytes in %.0fs); dropping it",
                    redact_url(self._attempt_url),
                    self._attempt_bytes,
                    self._clock() - self._attempt_start)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                # The plain socket's shutdown (also for TLS): it ends a
                # recv blocked in another thread.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def credit(self, seconds):
        """Do not count ``seconds`` the consumer made the stream wait (no
        free buffer: a slow disk or decoder) against the attempt."""
        with self._lock:
            if self._attempt_start is not None:
                self._attempt_start += seconds

    def _count(self, count):
        if self._attempt_timeout is not None:
            with self._lock:
                self._attempt_bytes += count

    def _too_slow(self):
        """An :class:`AttemptDeadline` for the expired attempt, or None."""
        with self._lock:
            if not self._expired:
                return None
            received = self._attempt_bytes
        return errors.AttemptDeadline(
            "%s: the attempt ran past its deadline of %gs plus 1s per %d "
            "bytes received ([standbye] download_attempt_timeout and "
            "download_min_rate): %d bytes in %.0fs"
            % (redact_url(self._attempt_url), self._attempt_timeout,
               self._min_rate or 0, received,
               self._clock() - self._attempt_start))

    def _track(self, connection):
        with self._lock:
            self._live = connection
            expired = self._expired
        if expired and connection is not None:
            connection.close()

    # -- connecting -----------------------------------------------------------

    def _request(self, url, offset, limit=None, addresses=None):
        parsed = urllib.parse.urlsplit(url)
        via = self._redirects.proxies.for_url(url)
        https = parsed.scheme.lower() == "https"
        port = parsed.port or (443 if https else 80)
        target = parsed.path or "/"
        if parsed.query:
            target += "?" + parsed.query
        if via is not None:
            # The redirect policy was applied to ``url`` already; the
            # proxy only carries the request (addresses are not pinned).
            LOG.debug("requesting %s through proxy %s", redact_url(url),
                      via.shown())
            if https:
                context = self._ssl_context or ssl.create_default_context()
                connection = http.client.HTTPSConnection(
                    via.host, via.port, timeout=self._timeout,
                    context=context)
                connection.set_tunnel(parsed.hostname, port,
                                      headers=via.headers())
            else:
                connection = http.client.HTTPConnection(
                    via.host, via.port, timeout=self._timeout)
                # An absolute URI, without the user information.
                target = urllib.parse.urlunsplit((
                    parsed.scheme.lower(), _host_port(parsed.hostname,
                                                      parsed.port),
                    parsed.path or "/", parsed.query, ""))
        elif https:
            context = self._ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                parsed.hostname, parsed.port, timeout=self._timeout,
                context=context)
        else:
            connection = http.client.HTTPConnection(
                parsed.hostname, parsed.port, timeout=self._timeout)
        if addresses is not None and via is None:
            connection._create_connection = _pinned(addresses)
        headers = {"User-Agent": "teeth-agent", "Accept-Encoding":
                   "identity"}
        if parsed.username is not None or parsed.password is not None:
            # http.client ignores user information; send it as HTTP basic
            # authentication, which is what such a URL means.
            credentials = "%s:%s" % (
                urllib.parse.unquote(parsed.username or ""),
                urllib.parse.unquote(parsed.password or ""))
            headers["Authorization"] = "Basic " + base64.b64encode(
                credentials.encode("utf-8")).decode("ascii")
        if offset or limit:
            headers["Range"] = "bytes=%d-%s" % (
                offset, "" if limit is None else offset + limit - 1)
        if via is not None and not https:
            headers.update(via.headers())
        self._track(connection)
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._too_slow() or _Transient(
                "%s: %s%s" % (redact_url(url), _problem(exc),
                              "" if via is None else " (through proxy %s)"
                              % via.shown())) from None
        return connection, response

    def _open(self, url, offset, limit=None):
        """Open ``url`` at ``offset``, following redirects.

        Returns ``(connection, response, bytes to skip)``.
        """
        first = url
        secure = False
        addresses = None
        for _ in range(self._redirects.max_hops + 1):
            secure = secure or url.lower().startswith("https:")
            connection, response = self._request(url, offset, limit,
                                                 addresses)
            status = response.status
            if status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                connection.close()
                if not location:
                    raise errors.RedirectRefused(
                        "%s: redirect without Location"
                        % redact_url(url))
                target = urllib.parse.urljoin(url, location)
                try:
                    addresses = self._redirects.check(
                        "https:" if secure else url, target)
                except ValueError as exc:
                    raise errors.RedirectRefused(
                        "redirect from %s to %s refused: %s"
                        % (redact_url(url), redact_url(target), exc)) \
                        from None
                url = target
                continue
            if status == 200:
                length = response.getheader("Content-Length")
                if length and length.isdigit():
                    self._learn_size(int(length), url)
                return connection, response, offset
            if status == 206:
                parsed = _content_range(response.getheader("Content-Range"))
                if parsed is None or parsed[0] != offset:
                    connection.close()
                    raise _Transient("%s: partial answer for the wrong range "
                                     "(%s)" % (redact_url(url),
                                               response.getheader(
                                                   "Content-Range")))
                if parsed[2] is not None:
                    self._learn_size(parsed[2], url)
                return connection, response, 0
            if status == 416 and self.size is not None and \
                    offset >= self.size:
                connection.close()
                return None, None, 0
            connection.close()
            if 400 <= status < 500:
                raise errors.URLRejected("%s: HTTP %d %s"
                                         % (redact_url(url), status,
                                            response.reason))
            raise _Transient("%s: HTTP %d %s" % (redact_url(url), status,
                                                 response.reason))
        raise errors.RedirectRefused(
            "%s: more than %d redirects"
            % (redact_url(first), self._redirects.max_hops))

    def _learn_size(self, size, url):
        if self.expected_size is not None and size != self.expected_size:
            raise errors.SizeMismatch(
                "%s is %d bytes, expected %d"
                % (redact_url(url), size, self.expected_size))
        if self.size is not None and size != self.size:
            raise errors.SizeMismatch(
                "%s is %d bytes but an earlier answer said %d"
                % (redact_url(url), size, self.size))
        self.size = size

    def _candidates(self):
        count = len(self.urls)
        return [self.urls[(self._index + i) % count] for i in range(count)
                if self.urls[(self._index + i) % count] not in self._rejected]

    def _connect(self):
        while True:
            candidates = self._candidates()
            if not candidates:
                raise errors.NoUsableURL(self._rejected)
            url = candidates[0]
            self._begin_attempt(url)
            try:
                connection, response, skip = self._open(url, self.offset)
            except errors.URLRejected as exc:
                LOG.warning("not downloading from %s: %s", redact_url(url),
                            exc)
                self._rejected[url] = exc
                continue
            except (_Transient, errors.AttemptDeadline) as exc:
                self._transient(exc)
                continue
            self.url = url
            self._connection, self._response = connection, response
            if response is not None and skip:
                LOG.info("%s ignores Range; skipping %d bytes already "
                         "received", redact_url(url), skip)
                self._discard(skip)
            return

    def _discard(self, count):
        scratch = bytearray(min(count, units.MIB))
        while count:
            view = memoryview(scratch)[:min(count, len(scratch))]
            try:
                read = self._response.readinto(view)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise self._too_slow() or _Transient(
                    "%s: %s" % (redact_url(self.url), exc)) from None
            self._count(read or 0)
            if not read:
                self._drop()
                raise self._too_slow() or _Transient(
                    "%s: stream ended before the resume point"
                    % redact_url(self.url))
            count -= read

    def _transient(self, exc):
        self._drop()
        if self._retries_left <= 0:
            raise errors.RetryableDownloadError(
                "download failed after retries: %s"
                % exc)
        delay = self._backoff.next_delay()
        self._retries_left -= 1
        self._index = (self._index + 1) % len(self.urls)
        LOG.warning("download interrupted (%s); retrying at byte %d in "
                    "%.1fs", exc, self.offset, delay)
        self._sleep(delay)

    def _drop(self):
        self._track(None)
        if self._connection is not None:
            self._connection.close()
        self._connection = self._response = None

    # -- reading --------------------------------------------------------------

    def readinto(self, buffer):
        """Read up to ``len(buffer)`` bytes; 0 only at the end."""
        while True:
            if self._response is None:
                if self.size is not None and self.offset >= self.size \
                        and self.offset:
                    return 0
                try:
                    self._connect()
                except (_Transient, errors.AttemptDeadline) as exc:
                    self._transient(exc)
                    continue
                if self._response is None:
                    return 0
            try:
                count = self._response.readinto(buffer)
            except (OSError, http.client.HTTPException) as exc:
                self._transient(self._too_slow() or _Transient(
                    "%s: %s" % (redact_url(self.url), exc)))
                continue
            self._count(count or 0)
            too_slow = self._too_slow()
            if too_slow is not None and not count:
                # A shut-down connection reads as the end of the stream;
                # it is not one.
                self._transient(too_slow)
                continue
            if count:
                self.offset += count
                if self.size is not None and self.offset > self.size:
                    raise errors.SizeMismatch(
                        "%s sent more than %d bytes"
                        % (redact_url(self.url), self.size))
                return count
            if self.size is not None and self.offset < self.size:
                self._transient(_Transient(
                    "%s: connection closed at byte %d of %d"
                    % (redact_url(self.url), self.offset, self.size)))
                continue
            self._drop()
            return 0

    def close(self):
        self._closed.set()
        self._drop()
        if self._watchdog is not None:
            self._watchdog.join()
            self._watchdog = None


def _pinned(addresses):
    """A ``create_connection`` for http.client that connects only to
    ``addresses`` (checked by a :class:`RedirectPolicy`), never to what a
    second resolution of the host name might give."""
    def create_connection(address, timeout, source_address=None):
        failure = None
        for host in addresses:
            try:
                return socket.create_connection((host, address[1]), timeout,
                                                source_address)
            except OSError as exc:
                failure = exc
        raise failure
    return create_connection
