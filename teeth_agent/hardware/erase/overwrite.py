"""The agent's own erase: overwrite with zeroes, markers, signature
wipe and the read-back verification every method ends with."""

import os
import random

from teeth_agent.disk import blockdev
from teeth_agent.hardware.erase import catalogue


_DEFAULT_BLOCK_SIZE = 8 * catalogue.MIB
_MARKER_SIZE = 4096
_MARKER_COUNT = 8


def _read_direct(fd, offset, length):
    """``length`` bytes at ``offset``, read with O_DIRECT.

    Both must be multiples of the sector size.
    """
    buffer = blockdev.aligned_buffer(length)
    try:
        count = os.preadv(fd, [buffer], offset)
        if count != length:
            raise OSError("short read at offset %d: %d of %d bytes"
                          % (offset, count, length))
        return buffer[:length]
    finally:
        buffer.close()


def overwrite(path, progress, block_size=_DEFAULT_BLOCK_SIZE):
    """Write zeroes over all of ``path``; return the bytes written.

    Large O_DIRECT writes, then fsync.

    ``progress(done, total)`` is called after every write. This is the
    speed-critical path: one aligned buffer, no copies, no page cache.
    """
    with blockdev.open_direct(path, write=True) as fd:
        size = blockdev.fd_size(fd)
        sector = blockdev.logical_block_size(fd)
        block_size = max(sector, block_size - block_size % sector)
        buffer = blockdev.aligned_buffer(block_size)
        try:
            with memoryview(buffer) as view:
                offset = 0
                progress(0, size)
                while offset < size:
                    length = min(block_size, size - offset)
                    # A temporary slice: a named one would outlive the view
                    # and keep the mmap from closing.
                    blockdev.write_all(
                        fd, view[:length] if length < block_size else view,
                        offset)
                    offset += length
                    progress(offset, size)
            os.fsync(fd)
        finally:
            buffer.close()
    return size


def _marker_offsets(size, count=_MARKER_COUNT):
    """Marker offsets spread over a device of ``size`` bytes.

    They avoid the first and last MiB (zeroed after every erase) when the
    device is big enough.
    """
    low, high = catalogue.MIB, size - catalogue.MIB - _MARKER_SIZE
    if high <= low:
        low, high = 0, size - _MARKER_SIZE
    if high < low:
        return []
    offsets = []
    for index in range(count):
        offset = low + (high - low) * (2 * index + 1) // (2 * count)
        offset -= offset % _MARKER_SIZE
        if offset not in offsets:
            offsets.append(offset)
    return offsets


def write_markers(path, count=_MARKER_COUNT):
    """Write random 4 KiB markers at known offsets of ``path``.

    Returns ``[(offset, bytes)]`` for :func:`verify_erased`, which checks
    that a device-level erase really removed them.
    """
    markers = []
    with blockdev.open_direct(path, write=True) as fd:
        size = blockdev.fd_size(fd)
        buffer = blockdev.aligned_buffer(_MARKER_SIZE)
        try:
            for offset in _marker_offsets(size, count):
                data = os.urandom(_MARKER_SIZE)
                buffer.seek(0)
                buffer.write(data)
                with memoryview(buffer) as view:
                    blockdev.write_all(fd, view, offset)
                markers.append((offset, data))
            os.fsync(fd)
        finally:
            buffer.close()
    return markers


def wipe_signatures(device):
    """Remove partition-table and file-system signatures from ``device``
    (a ``BlockDevice``); raises when a step fails. See
    :func:`teeth_agent.disk.blockdev.wipe_signatures`."""
    blockdev.wipe_signatures(device["path"],
                             forget_partitions=bool(device.get("partitions")))


def verify_erased(path, method, markers, samples=64, rng=None):
    """Read ``path`` back with O_DIRECT and check the erase.

    Always: the first and last MiB are zero (they were wiped). For
    ``overwrite``: ``samples`` random 4 KiB-aligned blocks and the marker
    offsets are zero. For device-level methods: no marker survived (their
    data may read back as anything else, e.g. after a crypto erase).
    Returns ``{"verified": bool, "problems": [str], "blocks_checked": n,
    "read_back": what was read and what it had to be, one sentence}``.
    """
    rng = rng or random.SystemRandom()
    problems = []
    checked = 0
    zero_block = bytes(_MARKER_SIZE)
    with blockdev.open_direct(path) as fd:
        size = blockdev.fd_size(fd)
        sector = blockdev.logical_block_size(fd)
        for offset, length in blockdev.edges(size, sector):
            position = offset
            while position < offset + length:
                chunk = min(catalogue.MIB, offset + length - position)
                if _read_direct(fd, position, chunk).count(0) != chunk:
                    problems.append("bytes %d-%d are not zero"
                                    % (position, position + chunk))
                position += chunk
                checked += 1
        for offset, marker in markers:
            data = _read_direct(fd, offset, len(marker))
            checked += 1
            if method == "overwrite":
                if data != bytes(len(marker)):
                    problems.append("block at %d is not zero" % offset)
            elif data == marker:
                problems.append("the marker at offset %d survived the "
                                "erase" % offset)
        if method == "overwrite" and size >= _MARKER_SIZE:
            blocks = size // _MARKER_SIZE
            for _ in range(samples):
                offset = rng.randrange(blocks) * _MARKER_SIZE
                checked += 1
                if _read_direct(fd, offset, _MARKER_SIZE) != zero_block:
                    problems.append("block at %d is not zero" % offset)
    if method == "overwrite":
        read_back = ("the first and last MiB, %d marker blocks and %d random "
                     "4 KiB blocks, read with O_DIRECT, must be zero"
                     % (len(markers), samples if size >= _MARKER_SIZE else 0))
    else:
        read_back = ("the first and last MiB, read with O_DIRECT, must be "
                     "zero and none of the %d random 4 KiB markers written "
                     "before the erase may survive" % len(markers))
    return {"verified": not problems, "problems": problems[:20],
            "blocks_checked": checked, "read_back": read_back}
