"""Image formats, detected from the image's first bytes, never its name.

``detect(head)`` returns one of :data:`RAW`, :data:`QCOW2`, :data:`GZIP`,
:data:`XZ` or :data:`ZSTD`, and raises :class:`UnsupportedFormat` for
container formats the agent recognises but does not write (VMDK, VHDX,
VDI, bzip2, ...), so they are refused instead of being copied verbatim.
Anything else is a raw disk image.
"""

RAW = "raw"
QCOW2 = "qcow2"
GZIP = "gzip"
XZ = "xz"
ZSTD = "zstd"

COMPRESSED = (GZIP, XZ, ZSTD)

#: How many leading bytes :func:`detect` needs at most.
HEAD_SIZE = 4096

_SUPPORTED_MAGIC = (
    (b"QFI\xfb", QCOW2),
    (b"\x1f\x8b", GZIP),
    (b"\xfd7zXZ\x00", XZ),
    (b"\x28\xb5\x2f\xfd", ZSTD),
)

_REFUSED_MAGIC = (
    (0, b"KDMV", "VMDK"),
    (0, b"# Disk DescriptorFile", "VMDK descriptor"),
    (0, b"vhdxfile", "VHDX"),
    (0, b"conectix", "VHD (dynamic)"),
    (64, b"\x7f\x10\xda\xbe", "VDI"),
    (0, b"QEVM", "QED"),
    (0, b"BZh", "bzip2"),
    (0, b"\x04\x22\x4d\x18", "lz4"),
    (0, b"PK\x03\x04", "zip"),
)


class UnsupportedFormat(Exception):
    """The image is in a format the agent refuses to write."""


def detect(head):
    """The format of an image whose first bytes are ``head``."""
    head = bytes(head[:HEAD_SIZE])
    for magic, name in _SUPPORTED_MAGIC:
        if head.startswith(magic):
            return name
    for offset, magic, name in _REFUSED_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            raise UnsupportedFormat(
                "the image is %s, which is not supported (use raw, qcow2, "
                "or raw compressed with gzip, xz or zstd)" % name)
    return RAW
