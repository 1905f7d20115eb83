"""Firmware images: checksum rules and a verified download.

A firmware image reaches a hardware manager only as a local file whose
every byte was hashed while it was downloaded and matched the checksums the
server gave. The download is :mod:`teeth_agent.fetch.download`'s, as for tenant
images: resumed with ``Range`` after a transient failure, redirects checked
by a :class:`~teeth_agent.fetch.http_source.RedirectPolicy` (no redirect to a
loopback, link-local or private address outside ``[standbye]
allowed_redirect_networks``, none to another scheme), each attempt bounded
by a deadline, URLs redacted in every log and message. It writes to a
temporary file in the target directory, synced and renamed into place only
after every checksum matched, so a partial or corrupt image is never
visible under its final name.
"""

import logging
import time

from teeth_agent.fetch import download as image_download
from teeth_agent.fetch import hashes as hashes_mod
from teeth_agent.fetch import http_source
from teeth_agent import params
from teeth_agent import units

LOG = logging.getLogger(__name__)

# Firmware images are small next to tenant images: smaller buffers.
_BUFFER_SIZE = units.MIB
_BUFFER_COUNT = 4


def check_hashes(hashes, path="hashes"):
    """Validate ``{algorithm: hex digest}``; return it normalised.

    The rule is :func:`teeth_agent.fetch.hashes.check_all`: every algorithm
    must
    be one of :data:`teeth_agent.fetch.hashes.ACCEPTED` and is verified, and
    sha256 or sha512 must be among them. Raises
    :class:`protocol.InvalidParams` naming ``path`` (or the key at fault
    under it).
    """
    try:
        return hashes_mod.check_all(hashes)
    except hashes_mod.InvalidHashes as exc:
        raise params.invalid(
            path if exc.name is None else "%s.%s" % (path, exc.name),
            str(exc)) from None


def download(url, hashes, destination, timeout=60.0, attempts=3,
             max_bytes=None, sleep=time.sleep, redirects=None,
             attempt_timeout=None, min_rate=None):
    """Download ``url`` to the file ``destination``, verified.

    ``hashes`` follows :func:`check_hashes`; every algorithm in it is
    verified over every byte. The download is tried ``attempts`` times in
    all (connection failures, timeouts, deadlines and 5xx answers are
    retried with growing pauses, resuming where the last attempt stopped);
    ``redirects``, ``attempt_timeout`` and ``min_rate`` are those of
    :class:`teeth_agent.fetch.http_source.HTTPSource`. Returns the number of
    bytes
    written. Raises :class:`teeth_agent.fetch.errors.DownloadError`: a
    :class:`~teeth_agent.fetch.errors.FinalDownloadError` (4xx, refused
    redirect, image beyond ``max_bytes``, checksum mismatch, full disk) or
    a :class:`~teeth_agent.fetch.errors.RetryableDownloadError`; an
    :class:`OSError` when ``destination`` cannot be written, and a
    :class:`ValueError` for a URL or checksums that break the rules
    (commands check both first).
    """
    result = image_download.download_to_file(
        [url], hashes, destination, verify_every=True, retries=attempts - 1,
        timeout=timeout, max_size=max_bytes, sleep=sleep, redirects=redirects,
        attempt_timeout=attempt_timeout, min_rate=min_rate,
        buffer_size=_BUFFER_SIZE, buffer_count=_BUFFER_COUNT)
    LOG.info("downloaded %s (%d bytes) to %s, checksums verified",
             http_source.redact_url(url), result["size"], destination)
    return result["size"]
