"""Streaming images onto block devices, and wiping what must not boot.

:func:`write_stream` is what ``prepare_image`` uses (and the benchmark
measures): bytes come from any ``readinto`` source (an HTTP download or a
cached file) through the pipeline of :func:`teeth_agent.fetch.download.stream`,
so reading, hashing and writing run on separate threads. The format is
detected from the first bytes of that same stream. Raw images go to
the device as they are; gzip and xz images are decompressed with the
standard library and zstd images through the ``zstd`` tool, while the
checksum covers the compressed bytes as served; qcow2 images are parsed as
they stream (:mod:`teeth_agent.images.qcow2_stream`), each cluster written
at its guest offset (:meth:`DeviceWriter.write_at`) and the unallocated
ranges zeroed (:meth:`DeviceWriter.zero`). The device is written with
``O_DIRECT`` from a page-aligned ``mmap`` buffer (nothing is staged in the
page cache or on a tmpfs) through one descriptor opened with ``O_EXCL``
and checked to be the device the safety check examined; the last partial
block goes through the page cache on that same descriptor. The xz and
zstd decoders are bounded by a memory limit. Any failure once writing
began, a checksum mismatch included, zeroes every byte written and wipes
the device's signatures (:func:`wipe_signatures`), so neither a partial
image nor unverified bytes stay on the disk.
"""

# Size: about 700 lines, over the ~500 guideline: the write path (decoding
# sinks and DeviceWriter) is one pipeline whose limits are checked together
# (issues 11 and 17); the qcow2 parser itself lives in images/qcow2_stream.

import errno
import fcntl
import logging
import lzma
import mmap
import os
import struct
import threading
import traceback
import zlib

from teeth_agent.disk import blockdev
from teeth_agent.fetch import download
from teeth_agent.hardware import safety
from teeth_agent.images import formats
from teeth_agent.images import qcow2_stream
from teeth_agent import processes
from teeth_agent import units

LOG = logging.getLogger(__name__)

_F_SETPIPE_SZ = 1031
_BLKZEROOUT = 0x127F
#: Writes at least this large go to the device straight from the caller's
#: buffer when it is aligned (the download pipeline's are).
_DIRECT_MIN = 64 * 1024
_MIB = units.MIB

#: Memory an xz or zstd image may need to be decompressed, unless the
#: caller says otherwise (``[standbye] decompression_memory_limit``). The
#: stream's header declares it (the xz dictionary, the zstd window); a
#: larger one is refused before anything is allocated.
DECOMPRESSION_MEMORY_LIMIT = 256 * _MIB


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


class DeviceChanged(safety.DeviceNotEligible):
    """The device at the path is not the one the safety check examined
    (another device node, or a regular file, took its name)."""


class DeviceWriter:
    """Sequential writes to a block device with ``O_DIRECT``.

    ``write(data)`` accepts chunks of any size; full buffers go to the
    device at once and :meth:`close` writes the rest (the aligned part
    directly, the unaligned tail with ``O_DIRECT`` cleared on the same
    descriptor) and syncs.
    Writing past the end of the device (or past ``end``, a byte offset)
    raises :class:`ImageTooLarge`, a write or sync the device refuses
    :class:`DeviceWriteError`; writing starts at byte ``start``, which
    must be a multiple of the logical block size.

    One descriptor, opened with ``O_EXCL``, is used from the first write
    to the last and for :meth:`zero_written`: while it is open the device
    cannot be mounted or claimed by anything else, and a name swapped
    under ``path`` changes nothing. With ``devnum`` (``"major:minor"``, as
    recorded by the safety check) the device opened must be that one, or
    :class:`DeviceChanged` is raised before anything is written;
    ``recheck`` (a callable) is then called with the descriptor held, so
    the check it makes holds for the whole write.
    """

    def __init__(self, path, buffer_size=4 * _MIB, start=0, end=None,
                 devnum=None, recheck=None):
        self.path = path
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_EXCL
        self._fd = os.open(path, flags | os.O_DIRECT)
        try:
            found = blockdev.devnum(self._fd)
            if devnum is not None and found != devnum:
                raise DeviceChanged(path, "it is device %s now, not the %s "
                                    "that was checked" % (found or "(none: "
                                                          "not a block "
                                                          "device)", devnum))
            self.devnum = found
            if recheck is not None:
                recheck()
            self.block_size = blockdev.logical_block_size(self._fd,
                                                          default=4096)
            self.device_size = os.lseek(self._fd, 0, os.SEEK_END)
            if end is not None:
                self.device_size = min(self.device_size, end)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        buffer_size = max(buffer_size // 4096 * 4096, 4096)
        self._buffer = mmap.mmap(-1, buffer_size)
        self._size = buffer_size
        self._fill = 0
        self.offset = start
        self.start = start
        #: One past the highest byte a write was issued for (a failed
        #: write may have reached the device in part).
        self.high = start
        #: Whether anything reached the device (a failure before that
        #: leaves it as it was and needs no wipe).
        self.touched = False

    def write(self, data):
        view = memoryview(data).cast("B")
        if not self._fill and len(view) >= _DIRECT_MIN and \
                not len(view) % self.block_size and \
                not self.offset % self.block_size and \
                self._write_direct(view):
            return
        while len(view):
            count = min(len(view), self._size - self._fill)
            self._buffer[self._fill:self._fill + count] = view[:count]
            self._fill += count
            view = view[count:]
            if self._fill == self._size:
                self._flush(self._size)

    def _write_direct(self, view):
        """Write ``view`` with O_DIRECT straight from the caller's memory
        (no copy, the GIL released for the whole write); False, with
        nothing written, when that memory is not aligned as O_DIRECT
        needs."""
        length = len(view)
        if self.offset + length > self.device_size:
            raise ImageTooLarge("the image is larger than %s (%d bytes)"
                                % (self.path, self.device_size))
        self.touched = True
        self.high = max(self.high, self.offset + length)
        done = 0
        while done < length:
            try:
                done += os.pwrite(self._fd, view[done:], self.offset + done)
            except OSError as exc:
                if exc.errno == errno.EINVAL and not done:
                    return False
                raise DeviceWriteError(self.path, self.offset + done,
                                       exc) from exc
        self.offset += length
        return True

    def write_at(self, offset, data):
        """Write ``data`` at byte ``offset`` (any order, any alignment).

        Writes that continue the previous one are gathered in the buffer;
        a buffer that starts or ends off a block boundary goes through the
        page cache on the same descriptor (O_DIRECT cannot write it).
        """
        if offset != self.offset + self._fill:
            if self._fill:
                self._flush(self._fill)
            self.offset = offset
        self.write(data)

    def zero(self, start, end):
        """Make bytes ``[start, end)`` read back as zeros (synced by
        :meth:`finish`).

        The kernel's ``BLKZEROOUT`` does the block-aligned part: it
        offloads to the device (WRITE ZEROES, or the loop device's backing
        file) where it can and writes zero pages itself where it cannot,
        so no zeros cross from user space; the unaligned edges, and a
        regular file, are written from a zero buffer.
        """
        if end > self.device_size:
            raise ImageTooLarge("the image is larger than %s (%d bytes)"
                                % (self.path, self.device_size))
        if self._fill:
            self._flush(self._fill)
        block = self.block_size
        inner_start = start + (-start) % block
        inner_end = end - end % block
        self.touched = True
        self.high = max(self.high, end)
        if inner_start >= inner_end:
            self._zero_bytes(start, end)
            return
        self._zero_bytes(start, inner_start)
        self._zero_bytes(inner_end, end)
        try:
            fcntl.ioctl(self._fd, _BLKZEROOUT,
                        struct.pack("QQ", inner_start,
                                    inner_end - inner_start))
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EOPNOTSUPP,
                                 errno.EINVAL):
                raise DeviceWriteError(self.path, inner_start, exc) from exc
            self._zero_bytes(inner_start, inner_end)

    def _zero_bytes(self, start, end):
        if start >= end:
            return
        zeros = bytes(min(end - start, 4 * _MIB))
        with memoryview(zeros) as view:
            while start < end:
                length = min(len(view), end - start)
                self._write_buffered(view[:length], start)
                start += length

    def _write_buffered(self, view, offset):
        """``view`` at ``offset`` through the page cache (O_DIRECT cleared
        for the call)."""
        try:
            flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
            fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            try:
                blockdev.write_all(self._fd, view, offset)
            finally:
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags)
        except OSError as exc:
            raise DeviceWriteError(self.path, offset, exc) from exc

    def _flush(self, length):
        if self.offset + length > self.device_size:
            raise ImageTooLarge("the image is larger than %s (%d bytes)"
                                % (self.path, self.device_size))
        self.touched = True
        self.high = max(self.high, self.offset + length)
        if self.offset % self.block_size or length % self.block_size:
            with memoryview(self._buffer) as buffer:
                self._write_buffered(buffer[:length], self.offset)
            self.offset += length
            self._fill = 0
            return
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

    def finish(self):
        """Write what is buffered and sync, keeping the descriptor (so a
        failed verification can still :meth:`zero_written`); return the
        bytes written."""
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
            # through the page cache, on this same descriptor.
            self.touched = True
            self.high = max(self.high, self.offset + len(remainder))
            try:
                flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                blockdev.write_all(self._fd, remainder, self.offset)
            except OSError as exc:
                raise DeviceWriteError(self.path, self.offset, exc) from exc
            self.offset += len(remainder)
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise DeviceWriteError(self.path, self.offset, exc) from exc
        return self.offset - self.start

    def close(self):
        """Write what is buffered, sync, release; return bytes written."""
        try:
            return self.finish()
        finally:
            self.abort()

    def zero_written(self):
        """Zero every byte a write was issued for (``[start, high)``,
        widened to whole blocks) through the descriptor held; return the
        ``(start, end)`` zeroed."""
        if self._fd is None:
            raise ValueError("%s is closed" % self.path)
        return blockdev.zero_range(self._fd, self.start, self.high,
                                   block_size=self.block_size)

    def abort(self):
        """Release the device without writing what is buffered."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._buffer.close()


class _InflateSink:
    """Decompresses a gzip or xz stream into a writer, bounded chunks.

    xz is decoded with ``memory_limit``: a header that declares a bigger
    dictionary raises :class:`DecompressionLimitExceeded` before liblzma
    allocates it. gzip's window is 32 KiB by the format.
    """

    def __init__(self, fmt, target, chunk,
                 memory_limit=DECOMPRESSION_MEMORY_LIMIT):
        self._format = fmt
        self._target = target
        self._chunk = chunk
        self._memory_limit = memory_limit
        self._decompressor = self._new()
        self.finished = False

    def _new(self):
        if self._format == formats.GZIP:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ,
                                     memlimit=self._memory_limit)

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
        except lzma.LZMAError as exc:
            if "memory usage limit" in str(exc).lower():
                raise DecompressionLimitExceeded(
                    "the xz image needs more than %d MiB of memory to be "
                    "decompressed (its dictionary is larger than [standbye] "
                    "decompression_memory_limit allows)"
                    % (self._memory_limit // _MIB)) from None
            raise CorruptImage("cannot decompress the %s image: %s"
                               % (self._format, exc)) from None
        except (zlib.error, EOFError) as exc:
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


class DecompressionLimitExceeded(CorruptImage):
    """The compressed image needs more memory to be decompressed than the
    agent allows (a huge xz dictionary or zstd window)."""


class _ZstdSink:
    """Pipes a zstd stream through ``zstd -dc`` into a writer.

    ``zstd --memory`` refuses a frame whose window needs more than
    ``memory_limit`` bytes (:class:`DecompressionLimitExceeded`).
    """

    def __init__(self, target, chunk, memory_limit=DECOMPRESSION_MEMORY_LIMIT):
        self._target = target
        self._memory_limit = memory_limit
        self._pipe = processes.open_pipe(
            "zstd", "-dc", "-q", "--memory=%d" % memory_limit)
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
                raise self._error(exc) from None
            raise CorruptImage("zstd stopped reading the image") from None

    def _error(self, exc):
        said = (exc.stderr or "").lower()
        if "too much memory" in said or "window size larger" in said:
            return DecompressionLimitExceeded(
                "the zstd image needs more than %d MiB of memory to be "
                "decompressed (its window is larger than [standbye] "
                "decompression_memory_limit allows)"
                % (self._memory_limit // _MIB))
        return CorruptImage("cannot decompress the zstd image: %s" % exc)

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
            raise self._error(exc) from None

    def abort(self):
        self._pipe.kill()
        self._thread.join()


def _decoder(fmt, target, chunk, memory_limit=DECOMPRESSION_MEMORY_LIMIT):
    if fmt == formats.RAW:
        return None
    if fmt in (formats.GZIP, formats.XZ):
        return _InflateSink(fmt, target, chunk, memory_limit)
    if fmt == formats.ZSTD:
        return _ZstdSink(target, chunk, memory_limit)
    raise formats.UnsupportedFormat("cannot stream a %s image to a device"
                                    % fmt)


def wipe_signatures(path):
    """Make ``path`` unbootable and unrecognisable after a failed write.

    :func:`teeth_agent.disk.blockdev.wipe_signatures` in its lenient form:
    failures are logged, not raised, since this runs while another error
    is being reported.
    """
    blockdev.wipe_signatures(path, strict=False)


class NeedsStaging(Exception):
    """The stream holds an image that cannot be written as it arrives.

    ``format`` names it (qcow2: qemu-img needs the whole file). Raised
    before anything was written to the device.
    """

    def __init__(self, fmt, reason=None):
        super().__init__("a %s image must be staged before it is written%s"
                         % (fmt, ": %s" % reason if reason else ""))
        self.format = fmt


#: Bytes a streamed qcow2 image may need kept before the tables that place
#: them arrive, unless the caller says otherwise (``[standbye]
#: qcow2_stream_buffer``). What is kept costs about its size: a 1 GiB
#: image that keeps 31 MiB took the benchmark's process (agent and HTTP
#: server) from 73 to 105 MiB of peak RSS, well under the 150 MiB of issue
#: 17.
QCOW2_STREAM_BUFFER = 32 * _MIB


class _Qcow2Sink:
    """Writes a qcow2 image as it streams
    (:class:`teeth_agent.images.qcow2_stream.Qcow2Stream`): each data
    cluster at its guest offset, the unallocated ranges zeroed at the end.
    A layout that needs more than ``buffer_limit`` kept raises
    :class:`NeedsStaging`; a virtual size beyond the device
    :class:`ImageTooLarge` before the first write."""

    def __init__(self, target, total, buffer_limit):
        self._target = target
        self._parser = qcow2_stream.Qcow2Stream(
            target, buffer_limit, total=total, check=self._check)
        self.virtual_size = None

    def _check(self, header):
        if header.virtual_size > self._target.device_size:
            raise ImageTooLarge(
                "the image's virtual size (%d bytes) is larger than %s (%d "
                "bytes)" % (header.virtual_size, self._target.path,
                            self._target.device_size))

    def write(self, data):
        try:
            self._parser.feed(data)
        except qcow2_stream.NotStreamable as exc:
            raise NeedsStaging(formats.QCOW2, str(exc)) from None

    def close(self):
        try:
            self.virtual_size = self._parser.close()
        except qcow2_stream.NotStreamable as exc:
            raise NeedsStaging(formats.QCOW2, str(exc)) from None

    def abort(self):
        """Drop what the parser kept (up to ``buffer_limit`` bytes)."""
        self._parser.discard()


class _FormatSink:
    """Chooses how to write an image from its own first bytes.

    The first :data:`teeth_agent.images.formats.HEAD_SIZE` bytes that reach
    :meth:`write` (the very bytes that were hashed) decide the format;
    from then on every chunk goes straight to the decoder or the device.
    """

    def __init__(self, writer, total, chunk,
                 memory_limit=DECOMPRESSION_MEMORY_LIMIT,
                 qcow2_buffer=QCOW2_STREAM_BUFFER):
        self.format = None
        self.decoder = None
        self._writer = writer
        self._total = total
        self._chunk = chunk
        self._memory_limit = memory_limit
        self._qcow2_buffer = qcow2_buffer
        #: The qcow2 decoder, once the image is known to be qcow2.
        self.qcow2 = None
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
            if self._qcow2_buffer is None:
                raise NeedsStaging(fmt)
            self.format = fmt
            self.decoder = self.qcow2 = _Qcow2Sink(
                self._writer, self._total, self._qcow2_buffer)
            self._forward = self.decoder.write
            return
        if fmt == formats.RAW and self._total is not None and \
                self._total > self._writer.device_size:
            raise ImageTooLarge("the image (%d bytes) is larger than %s (%d "
                                "bytes)" % (self._total, self._writer.path,
                                            self._writer.device_size))
        self.format = fmt
        self.decoder = _decoder(fmt, self._writer, self._chunk,
                                self._memory_limit)
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
                 buffer_size=4 * _MIB, buffer_count=8, devnum=None,
                 recheck=None, memory_limit=DECOMPRESSION_MEMORY_LIMIT,
                 qcow2_buffer=QCOW2_STREAM_BUFFER, pin_hash=False):
    """Write the image read from ``source`` onto the device ``path``.

    The format (raw, gzip, xz or zstd) is detected from the first bytes of
    this same stream, the bytes ``hasher`` sees, never from a separate
    read. ``hasher`` (a :class:`teeth_agent.fetch.http_source.Hasher`) sees
    every
    byte read and is verified at the end; ``progress(done, total)`` counts
    bytes read; ``total``, when given, is the image's size as served.
    ``devnum`` and ``recheck`` pin the device (see :class:`DeviceWriter`:
    one ``O_EXCL`` descriptor from the first write to the verification);
    ``memory_limit`` bounds what an xz or zstd decoder may allocate;
    ``pin_hash`` is :func:`teeth_agent.fetch.download.stream`'s. Returns
    ``{"format", "bytes_read", "bytes_written"}``.

    A qcow2 image is parsed as it streams (:class:`_Qcow2Sink`, keeping
    at most ``qcow2_buffer`` bytes for clusters that arrive before their
    table; its ``bytes_written`` is its virtual size); one whose layout
    needs more raises :class:`NeedsStaging` once what was written is
    undone, and so does any qcow2 image when ``qcow2_buffer`` is None (before
    anything is written). An unsupported container raises
    :class:`teeth_agent.images.formats.UnsupportedFormat` before anything
    is written. Any failure after writing began (a checksum
    mismatch included) zeroes every byte written, through the same
    descriptor, then wipes the device's signatures, before the exception
    propagates with a note (``exc.__notes__``, see
    :func:`describe_failure`) saying what was undone
    (:class:`teeth_agent.fetch.errors.ChecksumMismatch`,
    :class:`ImageTooLarge`, :class:`CorruptImage`,
    :class:`teeth_agent.fetch.errors.DownloadError`, :class:`DeviceWriteError`
    when the device fails or runs out of space, other ``OSError``).
    """
    writer = DeviceWriter(path, buffer_size, devnum=devnum, recheck=recheck)
    sink = _FormatSink(writer, total, buffer_size, memory_limit,
                       qcow2_buffer)
    try:
        read = download.stream(source, sink, hasher, progress, total,
                               buffer_size, buffer_count,
                               pin_hash=pin_hash)
        sink.close()
        written = writer.finish()
        if sink.format == formats.QCOW2:
            written = sink.qcow2.virtual_size
        hasher.verify()
    except BaseException as exc:
        sink.abort()
        if writer.touched:
            exc.add_note(_undo(writer, path))
        writer.abort()
        raise
    writer.abort()
    return {"format": sink.format, "bytes_read": read,
            "bytes_written": written}


def _undo(writer, path):
    """Zero what ``writer`` wrote, then wipe signatures; return a sentence
    saying what was done (for the task's message)."""
    LOG.error("writing the image to %s failed; zeroing the bytes written "
              "(up to byte %d)", path, writer.high)
    try:
        start, end = writer.zero_written()
    except OSError as exc:
        LOG.error("cannot zero what was written to %s: %s", path, exc)
        zeroed = ("zeroing the bytes written to %s failed (%s); its "
                  "signatures were wiped" % (path, exc))
    else:
        zeroed = ("every byte written to %s (bytes %d-%d) was zeroed"
                  % (path, start, end))
    pinned = writer.devnum
    writer.abort()
    if pinned is None or blockdev.path_devnum(path) == pinned:
        wipe_signatures(path)
    else:
        LOG.error("%s is not device %s any more; not wiping its signatures",
                  path, pinned)
    return zeroed


def release(exc):
    """Let go, now, of what a failed :func:`write_stream` still holds.

    An exception re-raised from an ``except ... as`` block keeps the
    frames it went through alive, their locals with them, in a reference
    cycle that only the garbage collector breaks: after a failed write
    those are the download pipeline's buffers and, for a qcow2 image, up
    to ``qcow2_buffer`` bytes kept for tables that never came. A caller
    that goes on to more work with the same budget of memory (the staged
    fall-back after :class:`NeedsStaging`) calls this first; it clears
    the frames of ``exc`` and of the exceptions it was raised from.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def describe_failure(exc):
    """``str(exc)`` followed by its notes (what a failed write undid)."""
    notes = [str(note) for note in getattr(exc, "__notes__", ())]
    return "; ".join([str(exc)] + notes)
