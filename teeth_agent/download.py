"""HTTP(S) downloads that are verified over every byte.

Plain threads and the standard library (``http.client``); no eventlet and no
third-party HTTP client. What callers may rely on:

``select_hash(hashes, allow_md5=False) -> (algorithm, hexdigest)``
    Picks the checksum to verify from an image's ``hashes`` object
    (``sha256`` preferred, then ``sha512``, ``md5`` only when allowed).
    Raises :class:`ValueError` naming the problem.

``check_url(url)``
    Raises :class:`ValueError` unless ``url`` is ``http://`` or
    ``https://`` with a host.

``fetch(urls, hashes, sink, progress=None, expected_size=None, ...)``
    Streams the first URL that works into ``sink`` (a callable taking a
    bytes-like chunk, or an object with ``write``) and verifies the
    checksum. Download, hashing and ``sink`` run on three threads joined by
    a bounded pool of buffers, so they overlap and memory stays bounded;
    ``sink`` is called from the caller's thread, in order, with a
    memoryview that is reused once ``sink`` returns (copy what you keep).
    Transient
    failures (connection errors, timeouts, 5xx) are retried with
    exponential backoff, resuming with an HTTP ``Range`` request (the
    ``206`` answer and its ``Content-Range`` are checked; a server that
    ignores ``Range`` is read from the start and the bytes already
    delivered are skipped) and failing over to the next URL. A 4xx answer
    rules a URL out; a checksum mismatch, a size mismatch and a full disk
    (``ENOSPC`` raised by ``sink``) are final. ``progress(done, total)``
    (total may be None) is called after each chunk reached ``sink``.
    Returns ``{"size", "algorithm", "hexdigest", "url"}``; raises
    :class:`DownloadError` (:class:`ChecksumMismatch` on a bad checksum),
    after ``sink`` may already have received every byte: a caller that
    writes somewhere visible must undo it on error.

``download_to_file(urls, hashes, path, progress=None, durable=True, ...)``
    :func:`fetch` into a temporary file next to ``path``, synced (unless
    ``durable`` is False) and renamed to ``path`` only once verified;
    nothing is left behind on failure.

``stream(source, sink, hasher, ...)``
    The three-thread pipeline itself over any ``source`` with a
    ``readinto(buffer)`` method (an :class:`HTTPSource` or an open file),
    used to write cached images the same way as downloaded ones.
"""

import errno
import hashlib
import http.client
import logging
import os
import queue
import re
import ssl
import tempfile
import threading
import time
import urllib.parse

LOG = logging.getLogger(__name__)

#: Checksums accepted, strongest-and-fastest first.
PREFERRED_ALGORITHMS = ("sha256", "sha512")
_HEX_LENGTHS = {"md5": 32, "sha256": 64, "sha512": 128}
_MAX_REDIRECTS = 5
_MAX_BACKOFF = 30.0
DEFAULT_BUFFER_SIZE = 4 * 1024 * 1024
DEFAULT_BUFFER_COUNT = 8


class DownloadError(Exception):
    """A download failed.

    ``final`` is True when retrying cannot help (every URL answered 4xx,
    checksum or size mismatch, full disk); ``no_space`` marks a full disk
    and ``too_large`` an image beyond the ``max_size`` allowed.
    """

    def __init__(self, msg, final=False, no_space=False, too_large=False):
        super().__init__(msg)
        self.final = final
        self.no_space = no_space
        self.too_large = too_large


class ChecksumMismatch(DownloadError):
    """The bytes received do not have the expected checksum."""

    def __init__(self, algorithm, expected, actual):
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        super().__init__("%s checksum mismatch: expected %s, got %s"
                         % (algorithm, expected, actual), final=True)


def select_hash(hashes, allow_md5=False):
    """``(algorithm, lowercase hexdigest)`` to verify, from ``hashes``."""
    if not isinstance(hashes, dict) or not hashes:
        raise ValueError("no checksum given")
    normalised = {}
    for name, digest in hashes.items():
        key = str(name).lower().replace("-", "")
        if not isinstance(digest, str):
            raise ValueError("checksum %s must be a string" % name)
        normalised[key] = digest.strip().lower()
    allowed = PREFERRED_ALGORITHMS + (("md5",) if allow_md5 else ())
    for algorithm in allowed:
        digest = normalised.get(algorithm)
        if digest is None:
            continue
        if len(digest) != _HEX_LENGTHS[algorithm] or \
                not re.fullmatch(r"[0-9a-f]+", digest):
            raise ValueError("%s checksum must be %d hexadecimal digits"
                             % (algorithm, _HEX_LENGTHS[algorithm]))
        return algorithm, digest
    if "md5" in normalised:
        raise ValueError("an md5 checksum alone is not accepted; give "
                         "sha256 or sha512")
    raise ValueError("a sha256 or sha512 checksum is required")


def check_url(url):
    """Raise ValueError unless ``url`` is http(s) with a host."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme.lower() not in ("http", "https"):
        raise ValueError("only http:// and https:// URLs are allowed: %s"
                         % url)
    if not parsed.hostname:
        raise ValueError("URL has no host: %s" % url)


class Hasher:
    """One running checksum and the digest it must end with."""

    def __init__(self, algorithm, expected):
        self.algorithm = algorithm
        self.expected = expected
        self._hash = hashlib.new(algorithm)

    def update(self, data):
        self._hash.update(data)

    def hexdigest(self):
        return self._hash.hexdigest()

    def verify(self):
        """Raise :class:`ChecksumMismatch` unless the digest matches."""
        actual = self._hash.hexdigest()
        if actual != self.expected:
            raise ChecksumMismatch(self.algorithm, self.expected, actual)
        return actual


def _content_range(value):
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        return None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


class _Transient(Exception):
    """An attempt failed in a way another attempt may not."""


class _UrlRejected(Exception):
    """This URL will not work (4xx, bad redirect): try the next one."""


class HTTPSource:
    """A readable byte stream over a list of mirror URLs.

    :meth:`readinto` hides retries, resumption and fail-over: the caller
    sees one continuous stream from byte 0. ``size`` is the total length
    once a server announced it.
    """

    def __init__(self, urls, expected_size=None, retries=5, backoff=1.0,
                 timeout=60.0, ssl_context=None, sleep=time.sleep):
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
        self._backoff = backoff
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._sleep = sleep
        self._rejected = {}
        self._index = 0
        self._connection = None
        self._response = None

    # -- connecting -----------------------------------------------------------

    def _request(self, url, offset, limit=None):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme.lower() == "https":
            context = self._ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(
                parsed.hostname, parsed.port, timeout=self._timeout,
                context=context)
        else:
            connection = http.client.HTTPConnection(
                parsed.hostname, parsed.port, timeout=self._timeout)
        target = parsed.path or "/"
        if parsed.query:
            target += "?" + parsed.query
        headers = {"User-Agent": "teeth-agent", "Accept-Encoding":
                   "identity"}
        if offset or limit:
            headers["Range"] = "bytes=%d-%s" % (
                offset, "" if limit is None else offset + limit - 1)
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise _Transient("%s: %s" % (url, exc)) from None
        return connection, response

    def _open(self, url, offset, limit=None):
        """Open ``url`` at ``offset``, following redirects.

        Returns ``(connection, response, bytes to skip)``.
        """
        for _ in range(_MAX_REDIRECTS + 1):
            connection, response = self._request(url, offset, limit)
            status = response.status
            if status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                connection.close()
                if not location:
                    raise _UrlRejected("%s: redirect without Location" % url)
                url = urllib.parse.urljoin(url, location)
                try:
                    check_url(url)
                except ValueError as exc:
                    raise _UrlRejected(str(exc)) from None
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
                                     "(%s)" % (url, response.getheader(
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
                raise _UrlRejected("%s: HTTP %d %s"
                                   % (url, status, response.reason))
            raise _Transient("%s: HTTP %d %s" % (url, status, response.reason))
        raise _UrlRejected("%s: too many redirects" % url)

    def _learn_size(self, size, url):
        if self.expected_size is not None and size != self.expected_size:
            raise DownloadError("%s is %d bytes, expected %d"
                                % (url, size, self.expected_size), final=True)
        if self.size is not None and size != self.size:
            raise DownloadError("%s is %d bytes but an earlier answer said %d"
                                % (url, size, self.size), final=True)
        self.size = size

    def _candidates(self):
        count = len(self.urls)
        return [self.urls[(self._index + i) % count] for i in range(count)
                if self.urls[(self._index + i) % count] not in self._rejected]

    def _connect(self):
        while True:
            candidates = self._candidates()
            if not candidates:
                raise DownloadError(
                    "no URL could be downloaded: %s"
                    % "; ".join(self._rejected.values()), final=True)
            url = candidates[0]
            try:
                connection, response, skip = self._open(url, self.offset)
            except _UrlRejected as exc:
                LOG.warning("not downloading from %s: %s", url, exc)
                self._rejected[url] = str(exc)
                continue
            except _Transient as exc:
                self._transient(exc)
                continue
            self.url = url
            self._connection, self._response = connection, response
            if response is not None and skip:
                LOG.info("%s ignores Range; skipping %d bytes already "
                         "received", url, skip)
                self._discard(skip)
            return

    def _discard(self, count):
        scratch = bytearray(min(count, 1024 * 1024))
        while count:
            view = memoryview(scratch)[:min(count, len(scratch))]
            try:
                read = self._response.readinto(view)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise _Transient("%s: %s" % (self.url, exc)) from None
            if not read:
                self._drop()
                raise _Transient("%s: stream ended before the resume point"
                                 % self.url)
            count -= read

    def _transient(self, exc):
        self._drop()
        if self._retries_left <= 0:
            raise DownloadError("download failed after retries: %s" % exc)
        delay = min(self._backoff, _MAX_BACKOFF)
        self._retries_left -= 1
        self._backoff = self._backoff * 2 if self._backoff else 0
        self._index = (self._index + 1) % len(self.urls)
        LOG.warning("download interrupted (%s); retrying at byte %d in "
                    "%.1fs", exc, self.offset, delay)
        self._sleep(delay)

    def _drop(self):
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
                except _Transient as exc:
                    self._transient(exc)
                    continue
                if self._response is None:
                    return 0
            try:
                count = self._response.readinto(buffer)
            except (OSError, http.client.HTTPException) as exc:
                self._transient(_Transient("%s: %s" % (self.url, exc)))
                continue
            if count:
                self.offset += count
                if self.size is not None and self.offset > self.size:
                    raise DownloadError("%s sent more than %d bytes"
                                        % (self.url, self.size), final=True)
                return count
            if self.size is not None and self.offset < self.size:
                self._transient(_Transient(
                    "%s: connection closed at byte %d of %d"
                    % (self.url, self.offset, self.size)))
                continue
            self._drop()
            return 0

    def close(self):
        self._drop()


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
        try:
            while not self.abort.is_set():
                try:
                    slot = self.free.get(timeout=0.5)
                except queue.Empty:
                    continue
                count = _fill(self.source, memoryview(slot.buffer))
                received += count
                if self.max_size is not None and received > self.max_size:
                    raise DownloadError("the image is larger than %d bytes"
                                        % self.max_size, final=True,
                                        too_large=True)
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
          max_size=None, ssl_context=None, sleep=time.sleep):
    """Download ``urls`` into ``sink`` and verify ``hashes``.

    See the module documentation.
    """
    algorithm, expected = select_hash(hashes, allow_md5)
    source = HTTPSource(urls, expected_size=expected_size, retries=retries,
                        backoff=backoff, timeout=timeout,
                        ssl_context=ssl_context, sleep=sleep)
    hasher = Hasher(algorithm, expected)

    def report(done, total):
        if progress is not None:
            progress(done, total if total is not None else source.size)

    try:
        size = stream(source, sink, hasher, report, expected_size,
                      buffer_size, buffer_count, max_size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DownloadError("no space left while writing the download",
                                final=True, no_space=True) from exc
        raise
    finally:
        source.close()
    if expected_size is not None and size != expected_size:
        raise DownloadError("received %d bytes, expected %d"
                            % (size, expected_size), final=True)
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
