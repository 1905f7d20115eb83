"""Low-level block device helpers shared by erasing and image writing.

Sizes and sector sizes come from the kernel's ioctls (with fallbacks so
regular files work in tests); :func:`open_direct` opens with ``O_DIRECT``
and ``O_EXCL`` (a mounted or claimed device refuses); and
:func:`wipe_signatures` is the one way a device is made unrecognisable and
unbootable after an erase, a failed image write or a lost task.
"""

import contextlib
import fcntl
import logging
import mmap
import os
import stat
import struct

from teeth_agent import processes
from teeth_agent import units

LOG = logging.getLogger(__name__)

MIB = units.MIB

_BLKSSZGET = 0x1268
_BLKGETSIZE64 = 0x80081272
_BLKZEROOUT = 0x127f


@contextlib.contextmanager
def open_direct(path, write=False):
    """An fd on ``path`` opened with O_DIRECT and O_EXCL, closed on exit.

    A mounted or otherwise claimed device refuses O_EXCL.
    """
    flags = (os.O_WRONLY if write else os.O_RDONLY) | os.O_DIRECT | \
        os.O_EXCL | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        yield fd
    finally:
        os.close(fd)


def fd_size(fd):
    """The size in bytes of the block device (or file) open as ``fd``."""
    try:
        raw = fcntl.ioctl(fd, _BLKGETSIZE64, b"\0" * 8)
        return struct.unpack("Q", raw)[0]
    except OSError:
        return os.fstat(fd).st_size


def device_size(path):
    """The size in bytes of the block device (or file) at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_size(fd)
    finally:
        os.close(fd)


def logical_block_size(fd, default=512):
    """The logical sector size of the block device open as ``fd``
    (O_DIRECT's unit); ``default`` for a regular file."""
    try:
        raw = fcntl.ioctl(fd, _BLKSSZGET, struct.pack("i", 0))
        return struct.unpack("i", raw)[0]
    except OSError:
        return default


def sector_size(path, default=512):
    """The logical sector size of the block device at ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return logical_block_size(fd, default)
    finally:
        os.close(fd)


def devnum(fd):
    """``"major:minor"`` of the block device open as ``fd`` (the form
    sysfs' ``dev`` files use), or None when ``fd`` is not a block
    device."""
    info = os.fstat(fd)
    if not stat.S_ISBLK(info.st_mode):
        return None
    return "%d:%d" % (os.major(info.st_rdev), os.minor(info.st_rdev))


def path_devnum(path):
    """:func:`devnum` of what ``path`` names now (None when it is no
    block device or does not exist)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(info.st_mode):
        return None
    return "%d:%d" % (os.major(info.st_rdev), os.minor(info.st_rdev))


def zero_range(fd, start, end, chunk=4 * MIB, block_size=None):
    """Make bytes ``[start, end)`` of the device open as ``fd`` read back
    as zeros, and sync.

    The range is widened to whole logical blocks (``block_size``, by
    default the device's; capped at the device's size). The kernel's
    ``BLKZEROOUT`` is tried first: it offloads to the device (WRITE
    ZEROES) or to the backing file of a loop device where it can, and
    writes zeros itself where it cannot. When the ioctl is not
    available (a regular file) zeros are written from an aligned buffer,
    which also suits an ``O_DIRECT`` descriptor. Returns the ``(start,
    end)`` actually zeroed.
    """
    sector = block_size or logical_block_size(fd)
    size = fd_size(fd)
    start -= start % sector
    end = min(end + (-end) % sector, size)
    if end <= start:
        return start, start
    try:
        fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("QQ", start, end - start))
    except OSError as exc:
        LOG.debug("BLKZEROOUT is not available (%s); writing zeros", exc)
        if (end - start) % sector:
            # A regular file's unaligned end: O_DIRECT cannot write it.
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
        buffer = aligned_buffer(min(chunk, end - start))
        try:
            with memoryview(buffer) as view:
                offset = start
                while offset < end:
                    length = min(len(view), end - offset)
                    write_all(fd, view[:length], offset)
                    offset += length
        finally:
            try:
                buffer.close()
            except BufferError:
                pass
    os.fsync(fd)
    return start, end


def aligned_buffer(size):
    """Page-aligned, zero-filled memory (what O_DIRECT needs)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def write_all(fd, view, offset):
    """``pwrite`` all of ``view`` at ``offset``."""
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError("short write at offset %d" % offset)
        offset += written
        view = view[written:]


def edges(size, sector, span=MIB):
    """``[(offset, length)]`` of the first and last ``span`` bytes.

    Sector-aligned, merged when they overlap.
    """
    head = min(span, size)
    head -= head % sector
    tail_start = max(0, size - span)
    tail_start += (-tail_start) % sector
    if tail_start <= head:
        return [(0, size - size % sector)]
    return [(0, head), (tail_start, size - tail_start)]


def zero_edges(path):
    """Zero the first and last MiB of ``path`` with O_DIRECT writes: the
    MBR, both GPT headers and most file-system superblocks live there."""
    with open_direct(path, write=True) as fd:
        sector = logical_block_size(fd)
        for offset, length in edges(fd_size(fd), sector):
            buffer = aligned_buffer(max(length, sector))
            try:
                with memoryview(buffer) as view:
                    write_all(fd, view[:length], offset)
            finally:
                try:
                    buffer.close()
                except BufferError:
                    # A failed write's traceback still references a slice;
                    # the mapping is freed with it. Let the write's own
                    # error through rather than this one.
                    pass
        os.fsync(fd)


def wipe_signatures(path, forget_partitions=True, strict=True):
    """Remove partition-table and file-system signatures from ``path``.

    ``wipefs --all --force`` erases what it recognises; the first and last
    MiB are then zeroed directly, which covers both GPT copies and the MBR
    even when wipefs does not know a format. With ``forget_partitions`` the
    kernel's partitions are dropped with ``partx -d`` (never a re-read,
    which on some kernels removes and on others re-adds them).

    Every step is tried. With ``strict`` the first failure is raised at the
    end; without it (cleaning up after another error that is being
    reported) failures are only logged.
    """
    failures = []
    try:
        processes.execute("wipefs", "--all", "--force", path)
    except processes.ProcessError as exc:
        failures.append(exc)
    try:
        zero_edges(path)
    except OSError as exc:
        failures.append(exc)
    if forget_partitions:
        # partx exits 1 when the kernel knows no partition; that is fine.
        try:
            processes.run("partx", "-d", path)
        except processes.ProcessError as exc:
            LOG.warning("partx -d %s failed: %s", path, exc)
    for failure in failures:
        LOG.error("wiping the signatures of %s: %s", path, failure)
    if failures and strict:
        raise failures[0]
    if not failures:
        LOG.warning("wiped the signatures of %s", path)
