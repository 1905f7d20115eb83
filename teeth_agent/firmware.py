"""Firmware images: checksum rules and a verified download.

A firmware image reaches a hardware manager only as a local file whose
every byte was hashed while it was downloaded and matched the checksums the
server gave. :func:`download` writes to a temporary file in the target
directory and renames it into place only after the checksums match, so a
partial or corrupt image is never visible under its final name.
"""

import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request

from teeth_agent import download as image_download
from teeth_agent import params

LOG = logging.getLogger(__name__)

#: At least one of these must be given for every image.
REQUIRED_ALGORITHMS = ("sha256", "sha512")
#: Every algorithm accepted in ``hashes`` (each given one is verified).
ACCEPTED_ALGORITHMS = ("sha256", "sha384", "sha512")

_CHUNK = 1024 * 1024


class DownloadError(Exception):
    """A download failed; ``final`` is True when retrying cannot help."""

    def __init__(self, url, reason, final=False):
        super().__init__("cannot download %s: %s"
                         % (image_download.redact_url(url), reason))
        self.url = url
        self.reason = reason
        self.final = final


class ChecksumMismatch(DownloadError):
    """The downloaded bytes do not match a given checksum."""

    def __init__(self, url, algorithm, expected, actual):
        super().__init__(url, "%s checksum mismatch: expected %s, got %s"
                         % (algorithm, expected, actual), final=True)
        self.algorithm = algorithm


def check_hashes(hashes, path="hashes"):
    """Validate ``{algorithm: hex digest}``; return it normalised.

    Raises :class:`protocol.InvalidParams` (naming ``path``) when neither
    sha256 nor sha512 is given, an algorithm is not accepted, or a digest
    is not hex of the algorithm's length.
    """
    normalised = {}
    for algorithm, digest in hashes.items():
        name = algorithm.lower().replace("-", "")
        if name not in ACCEPTED_ALGORITHMS:
            raise params.invalid("%s.%s" % (path, algorithm),
                                 "unsupported algorithm; use one of %s"
                                 % ", ".join(ACCEPTED_ALGORITHMS))
        length = hashlib.new(name).digest_size * 2
        if not isinstance(digest, str) or len(digest) != length or \
                any(c not in "0123456789abcdefABCDEF" for c in digest):
            raise params.invalid("%s.%s" % (path, algorithm),
                                 "must be %d hex digits" % length)
        normalised[name] = digest.lower()
    if not any(name in normalised for name in REQUIRED_ALGORITHMS):
        raise params.invalid(path, "needs a %s checksum"
                             % " or ".join(REQUIRED_ALGORITHMS))
    return normalised


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects only to http:// and https:// URLs."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(req.full_url, "redirected to a %s:// URL, "
                                "only http and https are allowed" % scheme,
                                final=True)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener():
    return urllib.request.build_opener(_SchemeCheckingRedirects())


def download(url, hashes, destination, timeout=60.0, attempts=3,
             max_bytes=None, sleep=time.sleep):
    """Download ``url`` to the file ``destination``, verified.

    ``hashes`` is a dict checked by :func:`check_hashes`; every algorithm
    in it is verified over every byte. Connection failures, timeouts and
    5xx answers are retried up to ``attempts`` times in all, with growing
    pauses; 4xx answers, oversize images and checksum mismatches are final.
    Returns the number of bytes written. Raises :class:`DownloadError`
    (or its :class:`ChecksumMismatch`).
    """
    hashes = check_hashes(hashes)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise DownloadError(url, "only http and https URLs are allowed",
                            final=True)
    last = None
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(url, hashes, destination, timeout,
                                  max_bytes)
        except DownloadError as exc:
            last = exc
            if exc.final:
                raise
            LOG.warning("firmware download attempt %d/%d of %s failed: %s",
                        attempt, attempts, image_download.redact_url(url),
                        exc.reason)
            if attempt < attempts:
                sleep(min(2 ** (attempt - 1), 30))
    raise last


def _download_once(url, hashes, destination, timeout, max_bytes):
    digests = {name: hashlib.new(name) for name in hashes}
    directory = os.path.dirname(os.path.abspath(destination))
    partial = "%s.part" % destination
    written = 0
    try:
        with _opener().open(url, timeout=timeout) as response, \
                open(partial, "wb") as stream:
            length = response.headers.get("Content-Length")
            if max_bytes and length and length.isdigit() and \
                    int(length) > max_bytes:
                raise DownloadError(url, "the image is %s bytes, more than "
                                    "the allowed %d" % (length, max_bytes),
                                    final=True)
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                written += len(chunk)
                if max_bytes and written > max_bytes:
                    raise DownloadError(url, "the image is larger than the "
                                        "allowed %d bytes" % max_bytes,
                                        final=True)
                for digest in digests.values():
                    digest.update(chunk)
                stream.write(chunk)
            if length and length.isdigit() and int(length) != written:
                raise DownloadError(url, "the connection ended after %d of "
                                    "%s bytes" % (written, length))
            stream.flush()
            os.fsync(stream.fileno())
        for name, digest in digests.items():
            actual = digest.hexdigest()
            if actual != hashes[name]:
                raise ChecksumMismatch(url, name, hashes[name], actual)
        os.replace(partial, destination)
    except urllib.error.HTTPError as exc:
        _remove(partial)
        raise DownloadError(url, "HTTP %d %s" % (exc.code, exc.reason),
                            final=400 <= exc.code < 500) from None
    except urllib.error.URLError as exc:
        _remove(partial)
        if isinstance(exc.reason, DownloadError):
            raise exc.reason from None
        raise DownloadError(url, str(exc.reason)) from None
    except DownloadError:
        _remove(partial)
        raise
    except OSError as exc:
        # Timeouts and resets while reading the body are worth a retry;
        # a local write failure is not.
        _remove(partial)
        local = getattr(exc, "filename", None) is not None
        raise DownloadError(url, str(exc), final=local) from None
    except (http.client.HTTPException, ValueError) as exc:
        # A truncated or malformed HTTP answer: worth another attempt.
        _remove(partial)
        raise DownloadError(url, "%s: %s" % (type(exc).__name__, exc)) \
            from None
    LOG.info("downloaded %s (%d bytes) to %s, checksums verified",
             image_download.redact_url(url), written, directory)
    return written


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
