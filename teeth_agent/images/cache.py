"""The image cache: verified images kept on the chassis ahead of time.

Layout of ``[standbye] image_cache_dir``: ``<id>.image`` holds the image
as served (compressed images stay compressed) and ``<id>.json`` what was
verified about it (size, checksum, format). An image counts as cached only
when both exist and agree; a download goes to a hidden ``.<id>.image.
partial-*`` name and is renamed only after its checksum matched, and the
record is written (atomically) after that, so a partial or unverified file
is never seen as cached. The space budget is the file system's free space
minus ``[standbye] cache_reserve``.
"""

import contextlib
import json
import logging
import os
import threading
import time
import uuid

from teeth_agent.fetch import download
from teeth_agent.fetch import errors
from teeth_agent.fetch import http_source
from teeth_agent.images import formats
from teeth_agent.images import qcow2
from teeth_agent import processes

LOG = logging.getLogger(__name__)

CACHED = "cached"
ALREADY_CACHED = "already_cached"
SKIPPED = "skipped"
FAILED = "failed"

# Download failures that mean "the image does not fit", not "it is bad".
_DOES_NOT_FIT = (errors.NoSpace, errors.ImageTooLarge)


def normalise_id(image_id):
    """The canonical (lowercase, dashed) form of an image UUID."""
    return str(uuid.UUID(str(image_id)))


class ImageCache:
    """The cache directory; safe to use from several task threads."""

    def __init__(self, directory, reserve, allow_md5=False):
        self.directory = directory
        self.reserve = reserve
        self.allow_md5 = allow_md5
        self._lock = threading.RLock()
        self._in_use = {}

    # -- reading ------------------------------------------------------------

    def data_path(self, image_id):
        return os.path.join(self.directory, "%s.image" % image_id)

    def _record_path(self, image_id):
        return os.path.join(self.directory, "%s.json" % image_id)

    def entries(self):
        """``{id: record}`` of every complete cache entry."""
        found = {}
        try:
            names = os.listdir(self.directory)
        except OSError:
            return found
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            record = self._read(name[:-len(".json")])
            if record is not None:
                found[record["id"]] = record
        return found

    def _read(self, image_id):
        try:
            with open(self._record_path(image_id)) as stream:
                record = json.load(stream)
            size = os.stat(self.data_path(image_id)).st_size
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("id") != image_id \
                or record.get("size") != size:
            return None
        record["path"] = self.data_path(image_id)
        return record

    def lookup(self, image_id, hashes=None):
        """The record of ``image_id`` when cached and matching ``hashes``.

        With ``hashes`` the cached image is used only when the checksum it
        was verified with is among them and equal; otherwise (or when the
        id is not cached) returns None.
        """
        record = self._read(normalise_id(image_id))
        if record is None:
            return None
        if hashes:
            given = {str(k).lower().replace("-", ""): str(v).lower()
                     for k, v in hashes.items()}
            if given.get(record["algorithm"]) != record["hexdigest"]:
                return None
        return record

    def available(self):
        """Bytes that may still be cached: free space minus the reserve."""
        stats = os.statvfs(self.directory)
        return stats.f_bavail * stats.f_frsize - self.reserve

    @contextlib.contextmanager
    def using(self, image_id):
        """Keep ``image_id`` from being evicted while the block runs."""
        with self._lock:
            self._in_use[image_id] = self._in_use.get(image_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use[image_id] -= 1
                if not self._in_use[image_id]:
                    del self._in_use[image_id]

    # -- changing -----------------------------------------------------------

    def prepare(self):
        """Create the directory and clean up what a crash left."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.cleanup()

    def cleanup(self):
        """Remove what an interrupted or failed caching left behind.

        Partial downloads and records (hidden ``.partial-`` names), data
        files without a valid record (the agent stopped between the
        rename and the record, or the record does not match the data) and
        records without their data. Does nothing when the directory does
        not exist; errors are logged. Runs at agent start-up and before
        every ``cache_images``, which never overlaps another disk task.
        """
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        except OSError as exc:
            LOG.warning("cannot list the image cache %s: %s",
                        self.directory, exc)
            return
        names = set(names)
        stale = []
        for name in sorted(names):
            if name.startswith(".") and ".partial-" in name:
                stale.append((name, "partial download"))
            elif name.endswith(".image") and not name.startswith("."):
                image_id = name[:-len(".image")]
                if image_id in self._in_use:
                    continue
                if self._read(image_id) is None:
                    stale.append((name, "image without a valid record"))
                    if "%s.json" % image_id in names:
                        stale.append(("%s.json" % image_id,
                                      "record not matching its image"))
            elif name.endswith(".json") and not name.startswith(".") \
                    and "%s.image" % name[:-len(".json")] not in names:
                stale.append((name, "record without its image"))
        for name, why in stale:
            LOG.info("removing %s from the image cache: %s", name, why)
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                LOG.warning("cannot remove %s: %s", name, exc)

    def evict(self, image_id):
        """Remove a cached image unless a task is using it.

        The record goes first, so the entry is never seen half-removed.
        """
        with self._lock:
            if image_id in self._in_use:
                return False
            for path in (self._record_path(image_id),
                         self.data_path(image_id)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        LOG.info("evicted image %s from the cache", image_id)
        return True

    def _make_room(self, needed, keep):
        """Evict images not in ``keep`` until ``needed`` bytes are free.

        Oldest first; returns whether the room was made.
        """
        if needed <= self.available():
            return True
        candidates = sorted(
            (record for image_id, record in self.entries().items()
             if image_id not in keep and image_id not in self._in_use),
            key=lambda record: record.get("cached_at", 0))
        if needed > self.available() + sum(r["size"] for r in candidates):
            return False
        for record in candidates:
            if needed <= self.available():
                break
            self.evict(record["id"])
        return needed <= self.available()

    def add(self, image, progress=None, keep=(), **fetch_options):
        """Download ``image`` into the cache; return its result entry.

        ``image`` is ``{"id", "urls", "hashes", "size"?}``. The result is
        ``{"id", "status", "reason"?, "size"?}`` with status ``cached``,
        ``already_cached``, ``skipped`` (does not fit, or an older copy is
        in use and cannot be replaced) or ``failed``; a failed or skipped
        image leaves no file behind. Images in ``keep`` are never evicted
        to make room. Without a ``size``, the download may use the space
        free now; when it needs more (the budget or the disk runs out),
        every image not in ``keep`` is evicted and the download is retried
        once with the space that made: the size is unknown, so a smaller
        eviction could not be known to be enough.
        """
        image_id = normalise_id(image["id"])
        if self.lookup(image_id, image["hashes"]) is not None:
            return {"id": image_id, "status": ALREADY_CACHED}
        size = image.get("size")
        with self._lock:
            if size is not None and not self._make_room(size, keep):
                return {"id": image_id, "status": SKIPPED, "reason": (
                    "does not fit: needs %d bytes, %d available after "
                    "evicting images not in the list"
                    % (size, max(self._room(keep), 0)))}
            if os.path.exists(self.data_path(image_id)) and \
                    not self.evict(image_id):
                # A copy with other checksums that a task is reading: it
                # stays as it is until that task is done with it.
                return {"id": image_id, "status": SKIPPED, "reason":
                        "an older copy of this image is in use and cannot "
                        "be replaced now"}
        algorithm, hexdigest = http_source.select_hash(image["hashes"],
                                                       self.allow_md5)
        try:
            result = self._download(image, progress, keep, **fetch_options)
        except errors.DownloadError as exc:
            if isinstance(exc, _DOES_NOT_FIT):
                return {"id": image_id, "status": SKIPPED,
                        "reason": "does not fit: %s" % exc}
            return {"id": image_id, "status": FAILED, "reason": str(exc)}
        try:
            fmt, reason = self._check_content(image_id)
            if reason is None:
                record = {"id": image_id, "size": result["size"],
                          "algorithm": algorithm, "hexdigest": hexdigest,
                          "format": fmt, "cached_at": time.time()}
                self._write_record(record)
        except (processes.ProcessError, OSError) as exc:
            reason = "cannot check or record the image: %s" % exc
        if reason is not None:
            self._discard(image_id)
            return {"id": image_id, "status": FAILED, "reason": reason}
        LOG.info("cached image %s (%s, %d bytes)", image_id, fmt,
                 result["size"])
        return {"id": image_id, "status": CACHED, "size": result["size"],
                "format": fmt}

    def _download(self, image, progress, keep, **fetch_options):
        image_id = normalise_id(image["id"])
        size = image.get("size")
        for attempt in (1, 2):
            try:
                return download.download_to_file(
                    image["urls"], image["hashes"], self.data_path(image_id),
                    progress=progress, expected_size=size,
                    allow_md5=self.allow_md5,
                    max_size=max(self.available(), 0), **fetch_options)
            except errors.DownloadError as exc:
                if attempt == 2 or size is not None or \
                        not isinstance(exc, _DOES_NOT_FIT):
                    raise
                if not self._evict_all_but(keep):
                    raise
                LOG.info("image %s needs more than the space that was free "
                         "(%s); retrying after evicting images not in the "
                         "list", image_id, exc)

    def _evict_all_but(self, keep):
        """Evict every cached image not in ``keep`` and not in use,
        oldest first; return whether any was evicted."""
        with self._lock:
            candidates = sorted(
                (record for image_id, record in self.entries().items()
                 if image_id not in keep and image_id not in self._in_use),
                key=lambda record: record.get("cached_at", 0))
            return sum(1 for record in candidates
                       if self.evict(record["id"])) > 0

    def _discard(self, image_id):
        """Remove the data and record of an image that failed its checks,
        whatever state they are in."""
        for path in (self._record_path(image_id), self.data_path(image_id),
                     os.path.join(self.directory,
                                  ".%s.json.partial-record" % image_id)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                LOG.error("cannot remove %s: %s", path, exc)

    def _room(self, keep):
        return self.available() + sum(
            record["size"] for image_id, record in self.entries().items()
            if image_id not in keep and image_id not in self._in_use)

    def _check_content(self, image_id):
        path = self.data_path(image_id)
        with open(path, "rb") as stream:
            head = stream.read(formats.HEAD_SIZE)
        try:
            fmt = formats.detect(head)
            if fmt == formats.QCOW2:
                qcow2.inspect(path)
        except (formats.UnsupportedFormat, qcow2.UnsafeImage) as exc:
            return None, str(exc)
        return fmt, None

    def _write_record(self, record):
        path = self._record_path(record["id"])
        partial = os.path.join(self.directory,
                               ".%s.json.partial-record" % record["id"])
        with open(partial, "w") as stream:
            json.dump(record, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
