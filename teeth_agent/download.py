"""HTTP(S) downloads that are verified over every byte.

Plain threads and the standard library (``http.client``); no eventlet and no
third-party HTTP client. What callers may rely on:

``select_hash(hashes, allow_md5=False) -> (algorithm, hexdigest)``
    Picks the checksum to verify from an image's ``hashes`` object: the
    rule of :func:`teeth_agent.hashes.select`, where every checksum rule
    lives.

``check_url(url)`` and ``redact_url(url) -> str``
    :func:`teeth_agent.urls.check` (http:// or https:// with a host) and
    :func:`teeth_agent.urls.redact` (credentials in user information and
    query parameters become ``***``). Every URL this module logs or raises
    goes through ``redact_url``, and so must every other place that logs
    one.

``RedirectPolicy(allowed_networks=(), max_hops=MAX_REDIRECTS)``
    Where a download may be redirected to. The first URL is the
    server's (operator's) choice and is used as given; a redirect may
    not change the scheme, and its host is resolved and every
    address checked: loopback, link-local, private, multicast,
    unspecified and other non-global addresses are refused unless an
    ``allowed_networks`` CIDR contains them. The connection then goes to
    an address that was checked (no second resolution).

``fetch(urls, hashes, sink, progress=None, expected_size=None, ...)``
    Streams the first URL that works into ``sink`` (a callable taking a
    bytes-like chunk, or an object with ``write``) and verifies the
    checksum. Download, hashing and ``sink`` run on three threads joined by
    a bounded pool of buffers, so they overlap and memory stays bounded;
    ``sink`` is called from the caller's thread, in order, with a
    memoryview that is reused once ``sink`` returns (copy what you keep).
    Every attempt (one connection) has a deadline (``attempt_timeout``
    seconds plus one second per ``min_rate`` bytes it received), so a
    server that sends a byte now and then cannot hold a task forever.
    Transient
    failures (connection errors, timeouts, deadlines, 5xx) are retried with
    exponential backoff, resuming with an HTTP ``Range`` request (the
    ``206`` answer and its ``Content-Range`` are checked; a server that
    ignores ``Range`` is read from the start and the bytes already
    delivered are skipped) and failing over to the next URL; the pauses
    are :class:`teeth_agent.retry.Backoff`'s. A 4xx answer or a refused
    redirect rules a URL out; a checksum mismatch, a size mismatch and a
    full disk (``ENOSPC`` raised by ``sink``) are final. With
    ``verify_every`` (firmware) every checksum given is verified, by the
    rule of :func:`teeth_agent.hashes.check_all`. ``progress(done,
    total)`` (total may be None) is called after each chunk reached
    ``sink``. Returns ``{"size", "algorithm", "hexdigest", "url"}``;
    raises a :class:`DownloadError`, after ``sink`` may already have
    received every byte: a caller that writes somewhere visible must undo
    it on error.

``download_to_file(urls, hashes, path, progress=None, durable=True, ...)``
    :func:`fetch` into a temporary file next to ``path``, synced (unless
    ``durable`` is False) and renamed to ``path`` only once verified;
    nothing is left behind on failure.

Errors are types; what a caller may test for::

    DownloadError
        RetryableDownloadError     the servers kept failing; retries ran out
            AttemptDeadline        (one attempt past its deadline; retried)
        FinalDownloadError         trying again cannot help
            ChecksumMismatch       the bytes do not have the checksum
            SizeMismatch           not the size expected or announced
            ImageTooLarge          beyond the max_size allowed
            NoSpace                the sink's file system is full
            URLRejected            (one URL ruled out: 4xx; next one tried)
                RedirectRefused    (a redirect the policy refuses)
            NoUsableURL            every URL was ruled out (rejections)

``stream(source, sink, hasher, ...)``
    The three-thread pipeline itself over any ``source`` with a
    ``readinto(buffer)`` method (an :class:`HTTPSource` or an open file),
    used to write cached images the same way as downloaded ones.
"""

import base64
import errno
import hashlib
import http.client
import ipaddress
import logging
import os
import queue
import re
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse

from teeth_agent import hashes as hashes_mod
from teeth_agent import retry
from teeth_agent import units
from teeth_agent import urls

LOG = logging.getLogger(__name__)

#: Redirects followed per request, at most.
MAX_REDIRECTS = 5
#: How often (seconds) the deadline of a running attempt is looked at.
_WATCH_INTERVAL = 0.2
_MAX_BACKOFF = 30.0
DEFAULT_BUFFER_SIZE = 4 * units.MIB
DEFAULT_BUFFER_COUNT = 8


class DownloadError(Exception):
    """A download failed. Its type says whether trying again can help:
    :class:`RetryableDownloadError` or :class:`FinalDownloadError`."""


class RetryableDownloadError(DownloadError):
    """The servers could not be reached or kept failing (connection
    errors, timeouts, deadlines, 5xx) until the retries ran out; a later
    try may work."""


class AttemptDeadline(RetryableDownloadError):
    """A download attempt ran past its deadline (a slow or stalled
    server); the attempt is retried, another URL tried."""


class FinalDownloadError(DownloadError):
    """Trying again cannot help."""


class ChecksumMismatch(FinalDownloadError):
    """The bytes received do not have the expected checksum."""

    def __init__(self, algorithm, expected, actual):
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__("%s checksum mismatch: expected %s, got %s"
                         % (algorithm, expected, actual))


class SizeMismatch(FinalDownloadError):
    """A server's size differs from the expected one (or an earlier
    answer's), or it sent more bytes than it announced."""


class ImageTooLarge(FinalDownloadError):
    """The download is larger than the ``max_size`` allowed."""


class NoSpace(FinalDownloadError):
    """The sink's file system is full (or too small to hold the image)."""


class URLRejected(FinalDownloadError):
    """One URL will not work (a 4xx answer); the next one is tried."""


class RedirectRefused(URLRejected):
    """A URL redirected where a download may not go (see
    :class:`RedirectPolicy`), too often, or without a ``Location``."""


class NoUsableURL(FinalDownloadError):
    """Every URL was ruled out; ``rejections`` maps each URL to its
    :class:`URLRejected`."""

    def __init__(self, rejections):
        self.rejections = dict(rejections)
        super().__init__("no URL could be downloaded: %s"
                         % "; ".join(str(exc)
                                     for exc in self.rejections.values()))


#: See :func:`teeth_agent.hashes.select` (the image rule).
select_hash = hashes_mod.select
#: See :func:`teeth_agent.urls.check`.
check_url = urls.check
#: See :func:`teeth_agent.urls.redact`.
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


class RedirectPolicy:
    """Where redirects may lead; see the module documentation."""

    def __init__(self, allowed_networks=(), max_hops=MAX_REDIRECTS,
                 resolve=_resolve):
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
        (checked by :func:`teeth_agent.hashes.check_all`), the first
        :data:`teeth_agent.hashes.REQUIRED` one being ``algorithm``."""
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
                raise ChecksumMismatch(name, expected, actual)
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
        return AttemptDeadline(
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
        if parsed.scheme.lower() == "https":
            context = self._ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                parsed.hostname, parsed.port, timeout=self._timeout,
                context=context)
        else:
            connection = http.client.HTTPConnection(
                parsed.hostname, parsed.port, timeout=self._timeout)
        if addresses is not None:
            connection._create_connection = _pinned(addresses)
        target = parsed.path or "/"
        if parsed.query:
            target += "?" + parsed.query
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
        self._track(connection)
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise self._too_slow() or _Transient(
                "%s: %s" % (redact_url(url), exc)) from None
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
                    raise RedirectRefused("%s: redirect without Location"
                                          % redact_url(url))
                target = urllib.parse.urljoin(url, location)
                try:
                    addresses = self._redirects.check(
                        "https:" if secure else url, target)
                except ValueError as exc:
                    raise RedirectRefused(
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
                raise URLRejected("%s: HTTP %d %s"
                                  % (redact_url(url), status,
                                     response.reason))
            raise _Transient("%s: HTTP %d %s" % (redact_url(url), status,
                                                 response.reason))
        raise RedirectRefused("%s: more than %d redirects"
                              % (redact_url(first), self._redirects.max_hops))

    def _learn_size(self, size, url):
        if self.expected_size is not None and size != self.expected_size:
            raise SizeMismatch("%s is %d bytes, expected %d"
                               % (redact_url(url), size, self.expected_size))
        if self.size is not None and size != self.size:
            raise SizeMismatch("%s is %d bytes but an earlier answer said %d"
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
                raise NoUsableURL(self._rejected)
            url = candidates[0]
            self._begin_attempt(url)
            try:
                connection, response, skip = self._open(url, self.offset)
            except URLRejected as exc:
                LOG.warning("not downloading from %s: %s", redact_url(url),
                            exc)
                self._rejected[url] = exc
                continue
            except (_Transient, AttemptDeadline) as exc:
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
            raise RetryableDownloadError("download failed after retries: %s"
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
                except (_Transient, AttemptDeadline) as exc:
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
                    raise SizeMismatch("%s sent more than %d bytes"
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


def _fill(source, view):
    filled = 0
    while filled < len(view):
        count = source.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def _as_callable(sink):
    return sink if callable(sink) else sink.write


class _Slot:
    __slots__ = ("buffer", "length", "pending")

    def __init__(self, size):
        self.buffer = bytearray(size)
        self.length = 0
        self.pending = 0


class _Pipeline:
    """The reader, hasher and sink stages of :func:`stream`."""

    def __init__(self, source, hasher, buffer_size, buffer_count, max_size):
        self.source = source
        self.hasher = hasher
        self.buffer_size = buffer_size
        self.max_size = max_size
        self.free = queue.Queue()
        for _ in range(buffer_count):
            self.free.put(_Slot(buffer_size))
        self.to_hash = queue.Queue()
        self.to_sink = queue.Queue()
        self.abort = threading.Event()
        self.failures = []
        self._lock = threading.Lock()

    def fail(self, exc):
        with self._lock:
            self.failures.append(exc)
        self.abort.set()

    def release(self, slot):
        # A slot returns to the pool once both the hasher and the sink
        # are done with it.
        with self._lock:
            slot.pending -= 1
            done = slot.pending == 0
        if done:
            self.free.put(slot)

    def read(self):
        received = 0
        # Time spent waiting for the sink is not the source's slowness.
        credit = getattr(self.source, "credit", None)
        try:
            while not self.abort.is_set():
                waited = time.monotonic()
                try:
                    slot = self.free.get(timeout=0.5)
                except queue.Empty:
                    if credit is not None:
                        credit(time.monotonic() - waited)
                    continue
                if credit is not None:
                    credit(time.monotonic() - waited)
                count = _fill(self.source, memoryview(slot.buffer))
                received += count
                if self.max_size is not None and received > self.max_size:
                    raise ImageTooLarge("the image is larger than %d bytes"
                                        % self.max_size)
                if not count:
                    self.free.put(slot)
                    return
                slot.length = count
                slot.pending = 2
                self.to_hash.put(slot)
                self.to_sink.put(slot)
                if count < self.buffer_size:
                    return
        except BaseException as exc:
            self.fail(exc)
        finally:
            self.to_hash.put(None)
            self.to_sink.put(None)

    def hash(self):
        while True:
            slot = self.to_hash.get()
            if slot is None:
                return
            if not self.abort.is_set():
                try:
                    self.hasher.update(memoryview(slot.buffer)[:slot.length])
                except BaseException as exc:
                    self.fail(exc)
            self.release(slot)

    def deliver(self, sink, progress, total):
        written = 0
        while True:
            slot = self.to_sink.get()
            if slot is None:
                return written
            if not self.abort.is_set():
                try:
                    sink(memoryview(slot.buffer)[:slot.length])
                    written += slot.length
                    if progress is not None:
                        progress(written, total)
                except BaseException as exc:
                    self.fail(exc)
            self.release(slot)


def stream(source, sink, hasher, progress=None, total=None,
           buffer_size=DEFAULT_BUFFER_SIZE, buffer_count=DEFAULT_BUFFER_COUNT,
           max_size=None):
    """Copy ``source`` into ``sink`` while ``hasher`` hashes every byte.

    Three threads: this one calls ``sink``, a reader fills buffers from
    ``source.readinto`` and a hasher feeds ``hasher.update``; at most
    ``buffer_count`` buffers of ``buffer_size`` bytes exist. Returns the
    number of bytes copied. Does not verify: the caller calls
    ``hasher.verify()`` (so it can decide what to undo). Any exception of
    a stage stops the others and is re-raised here. More than ``max_size``
    bytes raise :class:`DownloadError`.
    """
    pipeline = _Pipeline(source, hasher, buffer_size, buffer_count, max_size)
    reader = threading.Thread(target=pipeline.read, name="image-reader",
                              daemon=True)
    hashing = threading.Thread(target=pipeline.hash, name="image-hasher",
                               daemon=True)
    reader.start()
    hashing.start()
    try:
        written = pipeline.deliver(_as_callable(sink), progress, total)
    except BaseException:
        pipeline.abort.set()
        raise
    finally:
        reader.join()
        hashing.join()
    if pipeline.failures:
        raise pipeline.failures[0]
    return written


def fetch(urls, hashes, sink, progress=None, expected_size=None,
          allow_md5=False, retries=5, backoff=1.0, timeout=60.0,
          buffer_size=DEFAULT_BUFFER_SIZE, buffer_count=DEFAULT_BUFFER_COUNT,
          max_size=None, ssl_context=None, sleep=time.sleep, redirects=None,
          attempt_timeout=None, min_rate=None, verify_every=False):
    """Download ``urls`` into ``sink`` and verify ``hashes``.

    See the module documentation; ``redirects``, ``attempt_timeout`` and
    ``min_rate`` are those of :class:`HTTPSource`. With ``verify_every``
    (firmware), ``hashes`` follows :func:`teeth_agent.hashes.check_all`
    and every checksum in it is verified, instead of the one
    :func:`select_hash` picks.
    """
    if verify_every:
        hasher = Hasher.every(hashes_mod.check_all(hashes))
    else:
        hasher = Hasher(*select_hash(hashes, allow_md5))
    algorithm, expected = hasher.algorithm, hasher.expected
    source = HTTPSource(urls, expected_size=expected_size, retries=retries,
                        backoff=backoff, timeout=timeout,
                        ssl_context=ssl_context, sleep=sleep,
                        redirects=redirects, attempt_timeout=attempt_timeout,
                        min_rate=min_rate)

    def report(done, total):
        if progress is not None:
            progress(done, total if total is not None else source.size)

    try:
        size = stream(source, sink, hasher, report, expected_size,
                      buffer_size, buffer_count, max_size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise NoSpace("no space left while writing the download") \
                from exc
        raise
    finally:
        source.close()
    if expected_size is not None and size != expected_size:
        raise SizeMismatch("received %d bytes, expected %d"
                           % (size, expected_size))
    hasher.verify()
    return {"size": size, "algorithm": algorithm, "hexdigest": expected,
            "url": source.url}


def download_to_file(urls, hashes, path, progress=None, durable=True,
                     **kwargs):
    """Download into ``path`` atomically.

    Returns what :func:`fetch` returns. The file appears only once
    verified; with ``durable`` its data is synced to disk before the
    rename, so a crash cannot leave a verified name on unwritten data
    (a file used at once and then deleted can skip that).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, partial = tempfile.mkstemp(
        prefix=".%s.partial-" % os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as output:
            result = fetch(urls, hashes, output, progress=progress, **kwargs)
            output.flush()
            if durable:
                os.fsync(output.fileno())
        os.replace(partial, path)
    except BaseException:
        try:
            os.unlink(partial)
        except OSError:
            pass
        raise
    return result
