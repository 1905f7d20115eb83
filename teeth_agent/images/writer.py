"""Streaming images onto block devices, and wiping what must not boot.

:func:`write_stream` is what ``prepare_image`` uses (and the benchmark
measures): bytes come from any ``readinto`` source (an HTTP download or a
cached file) through the pipeline of :func:`teeth_agent.download.stream`,
so reading, hashing and writing run on separate threads. The format is
detected from the first bytes of that same stream. Raw images go to
the device as they are; gzip and xz images are decompressed with the
standard library and zstd images through the ``zstd`` tool, while the
checksum covers the compressed bytes as served. The device is written with
``O_DIRECT`` from a page-aligned ``mmap`` buffer (nothing is staged in the
page cache or on a tmpfs) and the last partial block is written through a
normal descriptor. Any failure once writing began, a checksum mismatch
included, wipes the device's signatures (:func:`wipe_signatures`) so a
partial image can never boot.
"""

import fcntl
import logging
import lzma
import mmap
import os
import threading
import zlib

from teeth_agent import blockdev
from teeth_agent import download
from teeth_agent.images import formats
from teeth_agent import processes

LOG = logging.getLogger(__name__)

_F_SETPIPE_SZ = 1031
_MIB = 1024 * 1024


class ImageTooLarge(Exception):
    """The image does not fit on the device."""


class DeviceWriteError(OSError):
    """The device refused a write or a sync (failed, gone, out of space).

    Its ``errno`` is the device's; its message names the device and the
    byte offset.
    """

    def __init__(self, path, offset, cause):
        super().__init__(cause.errno, "writing %s failed at byte %d: %s"
                         % (path, offset, cause.strerror or cause))


class DeviceWriter:
    """Sequential writes to a block device with ``O_DIRECT``.

    ``write(data)`` accepts chunks of any size; full buffers go to the
    device at once and :meth:`close` writes the rest (the aligned part
    directly, the unaligned tail through the page cache) and syncs.
    Writing past the end of the device (or past ``end``, a byte offset)
    raises :class:`ImageTooLarge`, a write or sync the device refuses
    :class:`DeviceWriteError`; writing starts at byte ``start``, which
    must be a multiple of the logical block size.
    """

    def __init__(self, path, buffer_size=4 * _MIB, start=0, end=None):
        self.path = path
        flags = os.O_WRONLY | os.O_CLOEXEC
        self._fd = os.open(path, flags | os.O_DIRECT)
        try:
            self.block_size = blockdev.logical_block_size(self._fd,
                                                          default=4096)
            self.device_size = os.lseek(self._fd, 0, os.SEEK_END)
            if end is not None:
                self.device_size = min(self.device_size, end)
        except OSError:
            os.close(self._fd)
            raise
        buffer_size = max(buffer_size // 4096 * 4096, 4096)
        self._buffer = mmap.mmap(-1, buffer_size)
        self._size = buffer_size
        self._fill = 0
        self.offset = start
        self.start = start
        #: Whether anything reached the device (a failure before that
        #: leaves it as it was and needs no wipe).
        self.touched = False

    def write(self, data):
        view = memoryview(data).cast("B")
        while len(view):
            count = min(len(view), self._size - self._fill)
            self._buffer[self._fill:self._fill + count] = view[:count]
            self._fill += count
            view = view[count:]
            if self._fill == self._size:
                self._flush(self._size)

    def _flush(self, length):
        if self.offset + length > self.device_size:
            raise ImageTooLarge("the image is larger than %s (%d bytes)"
                                % (self.path, self.device_size))
        self.touched = True
        with memoryview(self._buffer) as buffer:
            done = 0
            while done < length:
                try:
                    done += os.pwrite(self._fd, buffer[done:length],
                                      self.offset + done)
                except OSError as exc:
                    raise DeviceWriteError(self.path, self.offset + done,
                                           exc) from exc
        self.offset += length
        self._fill = 0

    def close(self):
        """Write what is buffered, sync, release; return bytes written."""
        try:
            tail = self._fill % self.block_size
            aligned = self._fill - tail
            if self.offset + self._fill > self.device_size:
                raise ImageTooLarge("the image is larger than %s (%d bytes)"
                                    % (self.path, self.device_size))
            if aligned:
                with memoryview(self._buffer) as buffer:
                    remainder = bytes(buffer[aligned:self._fill])
                self._fill = aligned
                self._flush(aligned)
            else:
                remainder = bytes(self._buffer[:self._fill])
                self._fill = 0
            if remainder:
                # O_DIRECT cannot write less than a block: the tail goes
                # through a buffered descriptor, synced below.
                self.touched = True
                fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.pwrite(fd, remainder, self.offset)
                    os.fsync(fd)
                except OSError as exc:
                    raise DeviceWriteError(self.path, self.offset,
                                           exc) from exc
                finally:
                    os.close(fd)
                self.offset += len(remainder)
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise DeviceWriteError(self.path, self.offset, exc) from exc
            return self.offset - self.start
        finally:
            self.abort()

    def abort(self):
        """Release the device without writing what is buffered."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._buffer.close()


class _InflateSink:
    """Decompresses a gzip or xz stream into a writer, bounded chunks."""

    def __init__(self, fmt, target, chunk):
        self._format = fmt
        self._target = target
        self._chunk = chunk
        self._decompressor = self._new()
        self.finished = False

    def _new(self):
        if self._format == formats.GZIP:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return lzma.LZMADecompressor()

    def _eof(self):
        return self._decompressor.eof

    def write(self, data):
        data = bytes(data)
        while data:
            if self._eof():
                # Concatenated members/streams are legal in both formats:
                # whatever follows the end of one starts the next.
                self._decompressor = self._new()
            data = self._feed(data)

    def _feed(self, data):
        try:
            if self._format == formats.GZIP:
                out = self._decompressor.decompress(data, self._chunk)
                self._target.write(out)
                while self._decompressor.unconsumed_tail and \
                        not self._decompressor.eof:
                    out = self._decompressor.decompress(
                        self._decompressor.unconsumed_tail, self._chunk)
                    self._target.write(out)
            else:
                out = self._decompressor.decompress(data, self._chunk)
                self._target.write(out)
                while not self._decompressor.eof and \
                        not self._decompressor.needs_input:
                    self._target.write(
                        self._decompressor.decompress(b"", self._chunk))
        except (zlib.error, lzma.LZMAError, EOFError) as exc:
            raise CorruptImage("cannot decompress the %s image: %s"
                               % (self._format, exc)) from None
        if self._eof():
            return self._decompressor.unused_data
        return b""

    def close(self):
        if not self._eof():
            raise CorruptImage("the %s image ends before its compressed "
                               "stream does" % self._format)


class CorruptImage(Exception):
    """The image's bytes are not what its format requires."""


class _ZstdSink:
    """Pipes a zstd stream through ``zstd -dc`` into a writer."""

    def __init__(self, target, chunk):
        self._target = target
        self._pipe = processes.open_pipe("zstd", "-dc", "-q")
        for stream in (self._pipe.stdin, self._pipe.stdout):
            try:
                # Bigger pipes mean fewer switches between the threads and
                # zstd; the default 64 KiB halves the throughput.
                fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, _MIB)
            except OSError:
                pass
        self._failure = []
        self._chunk = chunk
        self._thread = threading.Thread(target=self._drain,
                                        name="zstd-output", daemon=True)
        self._thread.start()

    def _drain(self):
        try:
            while True:
                data = self._pipe.stdout.read1(self._chunk)
                if not data:
                    return
                self._target.write(data)
        except BaseException as exc:
            self._failure.append(exc)
            self._pipe.kill()

    def write(self, data):
        if self._failure:
            raise self._failure[0]
        try:
            self._pipe.stdin.write(data)
        except BrokenPipeError:
            self._thread.join()
            if self._failure:
                raise self._failure[0] from None
            try:
                self._pipe.finish()
            except processes.ProcessError as exc:
                raise CorruptImage("cannot decompress the zstd image: %s"
                                   % exc) from None
            raise CorruptImage("zstd stopped reading the image") from None

    def close(self):
        try:
            self._pipe.stdin.close()
        except BrokenPipeError:
            pass
        self._thread.join()
        if self._failure:
            raise self._failure[0]
        try:
            self._pipe.finish()
        except processes.ProcessError as exc:
            raise CorruptImage("cannot decompress the zstd image: %s"
                               % exc) from None

    def abort(self):
        self._pipe.kill()
        self._thread.join()


def _decoder(fmt, target, chunk):
    if fmt == formats.RAW:
        return None
    if fmt in (formats.GZIP, formats.XZ):
        return _InflateSink(fmt, target, chunk)
    if fmt == formats.ZSTD:
        return _ZstdSink(target, chunk)
    raise formats.UnsupportedFormat("cannot stream a %s image to a device"
                                    % fmt)


def wipe_signatures(path):
    """Make ``path`` unbootable and unrecognisable after a failed write.

    :func:`teeth_agent.blockdev.wipe_signatures` in its lenient form:
    failures are logged, not raised, since this runs while another error
    is being reported.
    """
    blockdev.wipe_signatures(path, strict=False)


class NeedsStaging(Exception):
    """The stream holds an image that cannot be written as it arrives.

    ``format`` names it (qcow2: qemu-img needs the whole file). Raised
    before anything was written to the device.
    """

    def __init__(self, fmt):
        super().__init__("a %s image must be staged before it is written"
                         % fmt)
        self.format = fmt


class _FormatSink:
    """Chooses how to write an image from its own first bytes.

    The first :data:`teeth_agent.images.formats.HEAD_SIZE` bytes that reach
    :meth:`write` (the very bytes that were hashed) decide the format;
    from then on every chunk goes straight to the decoder or the device.
    """

    def __init__(self, writer, total, chunk):
        self.format = None
        self.decoder = None
        self._writer = writer
        self._total = total
        self._chunk = chunk
        self._head = bytearray()
        self._forward = self._detect

    def write(self, data):
        self._forward(data)

    def _detect(self, data):
        if not self._head and len(data) >= formats.HEAD_SIZE:
            # The usual case: the first buffer holds the whole head.
            self._choose(data)
            self._forward(data)
            return
        self._head += data
        if len(self._head) >= formats.HEAD_SIZE:
            self._flush_head()

    def _flush_head(self):
        head, self._head = bytes(self._head), bytearray()
        self._choose(head)
        self._forward(head)

    def _choose(self, head):
        fmt = formats.detect(head)
        if fmt == formats.QCOW2:
            raise NeedsStaging(fmt)
        if fmt == formats.RAW and self._total is not None and \
                self._total > self._writer.device_size:
            raise ImageTooLarge("the image (%d bytes) is larger than %s (%d "
                                "bytes)" % (self._total, self._writer.path,
                                            self._writer.device_size))
        self.format = fmt
        self.decoder = _decoder(fmt, self._writer, self._chunk)
        self._forward = (self.decoder or self._writer).write

    def close(self):
        """End of the stream: decide on a short image, finish decoding."""
        if self.format is None:
            self._flush_head()
        if self.decoder is not None:
            decoder, self.decoder = self.decoder, None
            decoder.close()

    def abort(self):
        if self.decoder is not None and hasattr(self.decoder, "abort"):
            self.decoder.abort()


def write_stream(source, path, hasher, progress=None, total=None,
                 buffer_size=4 * _MIB, buffer_count=8):
    """Write the image read from ``source`` onto the device ``path``.

    The format (raw, gzip, xz or zstd) is detected from the first bytes of
    this same stream, the bytes ``hasher`` sees, never from a separate
    read. ``hasher`` (a :class:`teeth_agent.download.Hasher`) sees every
    byte read and is verified at the end; ``progress(done, total)`` counts
    bytes read; ``total``, when given, is the image's size as served.
    Returns ``{"format", "bytes_read", "bytes_written"}``.

    A qcow2 image raises :class:`NeedsStaging` and an unsupported container
    :class:`teeth_agent.images.formats.UnsupportedFormat`, both before
    anything is written. Any failure after writing began wipes the
    device's signatures before the exception propagates
    (:class:`teeth_agent.download.ChecksumMismatch`,
    :class:`ImageTooLarge`, :class:`CorruptImage`,
    :class:`teeth_agent.download.DownloadError`, :class:`DeviceWriteError`
    when the device fails or runs out of space, other ``OSError``).
    """
    writer = DeviceWriter(path, buffer_size)
    sink = _FormatSink(writer, total, buffer_size)
    try:
        read = download.stream(source, sink, hasher, progress, total,
                               buffer_size, buffer_count)
        sink.close()
        written = writer.close()
        hasher.verify()
    except BaseException:
        sink.abort()
        writer.abort()
        if writer.touched:
            LOG.error("writing the image to %s failed; wiping it", path)
            wipe_signatures(path)
        raise
    return {"format": sink.format, "bytes_read": read,
            "bytes_written": written}
