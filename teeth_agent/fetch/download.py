"""HTTP(S) downloads that are verified over every byte.

Plain threads and the standard library (``http.client``); no eventlet and no
third-party HTTP client. What callers may rely on:

``select_hash(hashes, allow_md5=False) -> (algorithm, hexdigest)``
    Picks the checksum to verify from an image's ``hashes`` object: the
    rule of :func:`teeth_agent.fetch.hashes.select`, where every checksum rule
    lives.

``check_url(url)`` and ``redact_url(url) -> str``
    :func:`teeth_agent.fetch.urls.check` (http:// or https:// with a host) and
    :func:`teeth_agent.fetch.urls.redact` (credentials in user information and
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
    rule of :func:`teeth_agent.fetch.hashes.check_all`. ``progress(done,
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
    used to write cached images the same way as downloaded ones. With
    ``pin_hash`` (``[standbye] pin_checksum_thread``), the hashing thread
    runs on a CPU of its own and the reading thread on the others, when
    the process may use at least two (:func:`hash_cpus`).
"""

import errno
import logging
import mmap
import os
import queue
import tempfile
import threading
import time

from teeth_agent.fetch import errors
from teeth_agent.fetch import hashes as hashes_mod
from teeth_agent.fetch import http_source
from teeth_agent import units


LOG = logging.getLogger(__name__)

DEFAULT_BUFFER_SIZE = 4 * units.MIB
DEFAULT_BUFFER_COUNT = 8


#: Where the kernel counts each interrupt line per CPU.
PROC_INTERRUPTS = "/proc/interrupts"


def device_interrupts(path=PROC_INTERRUPTS):
    """How many device interrupts each CPU has served, ``{cpu: count}``,
    from ``path`` (the numbered lines of ``/proc/interrupts``: disks,
    network cards; not the per-CPU timer and IPI lines). ``{}`` when it
    cannot be read or parsed."""
    try:
        with open(path) as stream:
            lines = stream.read().splitlines()
    except OSError:
        return {}
    if not lines:
        return {}
    try:
        cpus = [int(name[3:]) for name in lines[0].split()
                if name.startswith("CPU")]
    except ValueError:
        return {}
    counts = dict.fromkeys(cpus, 0)
    for line in lines[1:]:
        irq, _, rest = line.partition(":")
        if not irq.strip().isdigit():
            continue
        for cpu, field in zip(cpus, rest.split()):
            if not field.isdigit():
                break
            counts[cpu] += int(field)
    return counts


def hash_cpus(allowed, interrupts=None):
    """Split the CPUs in ``allowed`` for a pinned pipeline: returns
    ``(hashing, others)``, two sets, or None when there are fewer than two
    CPUs (nothing to gain from pinning then).

    The hashing thread is the slowest stage of an image stream (one core
    hashes sha256 at about the device's write speed), so every moment
    something else takes its CPU is lost for the whole stream. It gets
    the CPU that has served the fewest device interrupts
    (``interrupts``, :func:`device_interrupts`; ties and unknown counts
    go to the highest-numbered CPU) to itself, the reading thread the
    rest: the disk's completions (interrupt, block softirq, direct-I/O
    work) run on the CPU its interrupt is routed to, and put the hashing
    there and both slow down. Measured on a 2-vCPU VM whose disk
    interrupt goes to CPU 1, 4 GiB raw sha256, three rounds each: hashing
    on CPU 0 0.92 to 0.94 of one core's hashing speed, unpinned 0.78 to
    0.94 (wherever the scheduler put it), on CPU 1 0.74 to 0.93 (the
    hashing thread preempted 7,500 times by ``ksoftirqd`` and the
    ``kblockd`` and ``dio`` workers, against 250 to 1,000 on CPU 0).
    """
    allowed = set(allowed)
    if len(allowed) < 2:
        return None
    interrupts = interrupts or {}
    hashing = min(allowed, key=lambda cpu: (interrupts.get(cpu, 0), -cpu))
    return {hashing}, allowed - {hashing}


def _pin(cpus, role):
    """Run the calling thread on ``cpus`` (a set); a refusal (a cpuset
    that changed, a platform without affinity) only costs speed."""
    if cpus is None:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except (OSError, AttributeError) as exc:
        LOG.debug("the %s thread stays unpinned: %s", role, exc)


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
        # Page-aligned: an O_DIRECT sink can write straight from it.
        self.buffer = mmap.mmap(-1, size)
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

    def read(self, cpus=None):
        _pin(cpus, "reading")
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
                    raise errors.ImageTooLarge(
                        "the image is larger than %d bytes"
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

    def hash(self, cpus=None):
        _pin(cpus, "hashing")
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
           max_size=None, pin_hash=False):
    """Copy ``source`` into ``sink`` while ``hasher`` hashes every byte.

    Three threads: this one calls ``sink``, a reader fills buffers from
    ``source.readinto`` and a hasher feeds ``hasher.update``; at most
    ``buffer_count`` buffers of ``buffer_size`` bytes exist. Returns the
    number of bytes copied. Does not verify: the caller calls
    ``hasher.verify()`` (so it can decide what to undo). Any exception of
    a stage stops the others and is re-raised here. More than ``max_size``
    bytes raise :class:`DownloadError`. With ``pin_hash`` the hasher and
    the reader run on the CPUs :func:`hash_cpus` gives them (this thread,
    which calls ``sink`` and whatever it starts, keeps its own).
    """
    pipeline = _Pipeline(source, hasher, buffer_size, buffer_count, max_size)
    split = None
    if pin_hash and hasattr(os, "sched_getaffinity"):
        split = hash_cpus(os.sched_getaffinity(0), device_interrupts())
    hashing_cpus, reading_cpus = split or (None, None)
    reader = threading.Thread(target=pipeline.read, args=(reading_cpus,),
                              name="image-reader", daemon=True)
    hashing = threading.Thread(target=pipeline.hash, args=(hashing_cpus,),
                               name="image-hasher", daemon=True)
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
          attempt_timeout=None, min_rate=None, verify_every=False,
          pin_hash=False):
    """Download ``urls`` into ``sink`` and verify ``hashes``.

    See the module documentation; ``redirects``, ``attempt_timeout`` and
    ``min_rate`` are those of :class:`HTTPSource`, ``pin_hash`` that of
    :func:`stream`. With ``verify_every``
    (firmware), ``hashes`` follows :func:`teeth_agent.fetch.hashes.check_all`
    and every checksum in it is verified, instead of the one
    :func:`select_hash` picks.
    """
    if verify_every:
        hasher = http_source.Hasher.every(hashes_mod.check_all(hashes))
    else:
        hasher = http_source.Hasher(
            *http_source.select_hash(hashes, allow_md5))
    algorithm, expected = hasher.algorithm, hasher.expected
    source = http_source.HTTPSource(
        urls, expected_size=expected_size, retries=retries,
        backoff=backoff, timeout=timeout,
        ssl_context=ssl_context, sleep=sleep,
        redirects=redirects, attempt_timeout=attempt_timeout,
        min_rate=min_rate)

    def report(done, total):
        if progress is not None:
            progress(done, total if total is not None else source.size)

    try:
        size = stream(source, sink, hasher, report, expected_size,
                      buffer_size, buffer_count, max_size, pin_hash)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise errors.NoSpace("no space left while writing the download") \
                from exc
        raise
    finally:
        source.close()
    if expected_size is not None and size != expected_size:
        raise errors.SizeMismatch("received %d bytes, expected %d"
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
