"""Inspection of qcow2 images before ``qemu-img`` may convert them.

qemu-img follows references inside an image (backing files, external data
files) to any path or URL it names, which turns an untrusted image into a
way to read the agent's own files onto the disk. :func:`inspect` refuses
any image that refers to something outside itself, in two independent
ways: it parses the qcow2 header itself, then asks
``qemu-img info --output=json -f qcow2`` (the format is forced, never
probed). Callers run it only on an image whose checksum was verified, so
qemu-img never sees bytes the server did not vouch for.

Every ``qemu-img`` run goes through ``prlimit`` (util-linux): its address
space is limited to :data:`QEMU_IMG_ADDRESS_SPACE` and its CPU time to
:data:`INFO_CPU_SECONDS` for ``info`` and to the caller's limit for
``convert``, so a crafted image cannot make it eat the ramdisk's memory or
spin forever.
"""

import json
import logging
import struct

from teeth_agent import processes

MAGIC = b"QFI\xfb"

_V2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")
_V3_FIELDS = struct.Struct(">QQQII")

_INCOMPATIBLE_DIRTY = 1 << 0
_INCOMPATIBLE_CORRUPT = 1 << 1
_INCOMPATIBLE_DATA_FILE = 1 << 2
_INCOMPATIBLE_COMPRESSION = 1 << 3
_INCOMPATIBLE_EXTENDED_L2 = 1 << 4
_KNOWN_INCOMPATIBLE = (_INCOMPATIBLE_DIRTY | _INCOMPATIBLE_CORRUPT
                       | _INCOMPATIBLE_DATA_FILE | _INCOMPATIBLE_COMPRESSION
                       | _INCOMPATIBLE_EXTENDED_L2)

_EXT_END = 0
_EXT_BACKING_FORMAT = 0xE2792ACA
_EXT_ENCRYPTION = 0x0537BE77
_EXT_DATA_FILE = 0x44415441

#: Address space (bytes) a qemu-img run may use.
QEMU_IMG_ADDRESS_SPACE = 1024 * 1024 * 1024
#: CPU seconds ``qemu-img info`` may use.
INFO_CPU_SECONDS = 30
#: CPU seconds ``qemu-img convert`` may use unless the caller says.
CONVERT_CPU_SECONDS = 3600

#: The most of the file :func:`check_header` needs (the first cluster
#: holds the header and its extensions; clusters are at most 2 MiB).
MAX_HEADER_READ = 2 * 1024 * 1024


class UnsafeImage(Exception):
    """The qcow2 image refers outside itself or cannot be trusted."""


def check_header(data):
    """Parse a qcow2 header from ``data`` (the file's first bytes).

    Returns ``{"version", "virtual_size", "cluster_size"}``. Raises
    :class:`UnsafeImage` for a backing file, an external data file,
    encryption, a corrupt flag, unknown incompatible features or a header
    that does not parse.
    """
    if len(data) < _V2_HEADER.size or not data.startswith(MAGIC):
        raise UnsafeImage("not a qcow2 image")
    (_, version, backing_offset, backing_size, cluster_bits, virtual_size,
     crypt_method, _, _, _, _, _, _) = _V2_HEADER.unpack_from(data)
    if version not in (2, 3):
        raise UnsafeImage("unsupported qcow2 version %d" % version)
    if not 9 <= cluster_bits <= 21:
        raise UnsafeImage("invalid cluster size 2^%d" % cluster_bits)
    if backing_offset or backing_size:
        raise UnsafeImage("the image names a backing file")
    if crypt_method:
        raise UnsafeImage("the image is encrypted")
    header_length = _V2_HEADER.size
    if version == 3:
        if len(data) < _V2_HEADER.size + _V3_FIELDS.size:
            raise UnsafeImage("truncated qcow2 v3 header")
        incompatible, _, _, _, header_length = _V3_FIELDS.unpack_from(
            data, _V2_HEADER.size)
        if incompatible & _INCOMPATIBLE_DATA_FILE:
            raise UnsafeImage("the image uses an external data file")
        if incompatible & _INCOMPATIBLE_CORRUPT:
            raise UnsafeImage("the image is marked corrupt")
        if incompatible & ~_KNOWN_INCOMPATIBLE:
            raise UnsafeImage("the image uses unknown incompatible features "
                              "%#x" % (incompatible & ~_KNOWN_INCOMPATIBLE))
        if header_length < _V2_HEADER.size + _V3_FIELDS.size:
            raise UnsafeImage("invalid qcow2 header length %d"
                              % header_length)
    _check_extensions(data, header_length, 1 << cluster_bits)
    return {"version": version, "virtual_size": virtual_size,
            "cluster_size": 1 << cluster_bits}


def _check_extensions(data, offset, cluster_size):
    limit = min(len(data), cluster_size)
    while True:
        if offset + 8 > limit:
            raise UnsafeImage("header extensions run past the first cluster")
        kind, length = struct.unpack_from(">II", data, offset)
        if kind == _EXT_END:
            return
        if kind == _EXT_DATA_FILE:
            raise UnsafeImage("the image names an external data file")
        if kind == _EXT_ENCRYPTION:
            raise UnsafeImage("the image is encrypted")
        if kind == _EXT_BACKING_FORMAT:
            raise UnsafeImage("the image names a backing file format")
        offset += 8 + (length + 7) // 8 * 8


def _walk(value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def check_info(info):
    """Check ``qemu-img info --output=json`` output; return virtual size.

    Raises :class:`UnsafeImage` when qemu-img sees another format, a
    backing file, a data file or encryption anywhere in its answer.
    """
    if info.get("format") != "qcow2":
        raise UnsafeImage("qemu-img reads the image as %s, not qcow2"
                          % info.get("format"))
    if info.get("encrypted"):
        raise UnsafeImage("the image is encrypted")
    for key, value in _walk(info):
        if key in ("backing-filename", "full-backing-filename",
                   "backing-filename-format", "backing-image") and value:
            raise UnsafeImage("the image names a backing file: %s" % value)
        if key in ("data-file", "data-file-raw") and value:
            raise UnsafeImage("the image uses an external data file")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise UnsafeImage("qemu-img reports no virtual size")
    return size


def limited(cpu_seconds, *argv):
    """``argv`` (a qemu-img command) run under ``prlimit`` limits: the
    address space :data:`QEMU_IMG_ADDRESS_SPACE` and ``cpu_seconds`` of
    CPU time."""
    return ("prlimit", "--as=%d" % QEMU_IMG_ADDRESS_SPACE,
            "--cpu=%d" % cpu_seconds) + tuple(argv)


def convert(path, device, cpu_seconds=CONVERT_CPU_SECONDS):
    """Write the inspected qcow2 image ``path`` onto ``device`` as raw.

    The format is forced (``-f qcow2``), the device is written with
    ``-t none`` (no page cache) and not created (``-n``); qemu-img runs
    under :func:`limited` with ``cpu_seconds``. Raises
    :class:`teeth_agent.processes.ProcessError` (the limits exceeded
    included: the kernel kills qemu-img).
    """
    processes.execute(*limited(cpu_seconds, "qemu-img", "convert", "-f",
                               "qcow2", "-O", "raw", "-t", "none", "-n",
                               path, device),
                      timeout=6 * 3600, log_level=logging.INFO)


def inspect(path):
    """Check the verified qcow2 image at ``path``; return its virtual size.

    Raises :class:`UnsafeImage` (see :func:`check_header` and
    :func:`check_info`) or :class:`teeth_agent.processes.ProcessError`.
    """
    with open(path, "rb") as stream:
        header = check_header(stream.read(MAX_HEADER_READ))
    out, _ = processes.execute(*limited(INFO_CPU_SECONDS, "qemu-img", "info",
                                        "--output=json", "-f", "qcow2",
                                        path), timeout=120)
    try:
        info = json.loads(out)
    except ValueError:
        raise UnsafeImage("qemu-img info gave no JSON") from None
    size = check_info(info)
    if size != header["virtual_size"]:
        raise UnsafeImage("qemu-img and the header disagree on the size "
                          "(%d, %d)" % (size, header["virtual_size"]))
    return size
