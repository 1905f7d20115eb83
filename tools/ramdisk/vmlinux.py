"""Pull the uncompressed ELF ``vmlinux`` out of an x86 ``bzImage``.

qemu boots an ELF kernel directly (PVH entry), which under TCG emulation is
several seconds faster than letting the bzImage decompress itself. The
bzImage's setup header says where its compressed payload is:
``setup_sects`` (one byte at 0x1f1; 0 means 4), ``payload_offset`` and
``payload_length`` (little-endian 32-bit words at 0x248 and 0x24c), counted
from the start of the protected-mode code at ``(setup_sects + 1) * 512``.
"""

import lzma
import struct
import subprocess
import sys
import zlib

ELF_MAGIC = b"\x7fELF"
HEADER_MAGIC = b"HdrS"


class NotABzImage(ValueError):
    """The file is not an x86 bzImage with a payload we can decompress."""


def payload(image):
    """The compressed payload (bytes) of the bzImage ``image`` (bytes)."""
    if len(image) < 0x250 or image[0x202:0x206] != HEADER_MAGIC:
        raise NotABzImage("no x86 boot-protocol header")
    setup_sects = image[0x1f1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if not length or start + length > len(image):
        raise NotABzImage("payload offset/length out of range")
    return image[start:start + length]


def decompress(data):
    """Decompress a kernel payload by its magic number (xz, lzma, gzip,
    zstd); trailing bytes after the stream (the kernel appends its size)
    are ignored."""
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if data.startswith(b"\x5d\x00\x00"):
        return lzma.LZMADecompressor(
            format=lzma.FORMAT_ALONE).decompress(data)
    if data.startswith(b"\x1f\x8b"):
        # wbits=31: a gzip member; what follows it stays unused.
        return zlib.decompressobj(wbits=31).decompress(data)
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        # The zstd tool stops at the end of the frame; the 4 trailing size
        # bytes would otherwise be read as a broken second frame.
        done = subprocess.run(["zstd", "-d", "-c", "-q"], input=data,
                              capture_output=True, check=False)
        if not done.stdout.startswith(ELF_MAGIC):
            raise NotABzImage("zstd payload: %s" % done.stderr.decode())
        return done.stdout
    raise NotABzImage("unknown payload compression %r" % data[:6])


def extract(bzimage_path, vmlinux_path):
    """Write the ELF kernel inside ``bzimage_path`` to ``vmlinux_path``."""
    with open(bzimage_path, "rb") as stream:
        image = stream.read()
    kernel = decompress(payload(image))
    if not kernel.startswith(ELF_MAGIC):
        raise NotABzImage("the payload is not an ELF image")
    with open(vmlinux_path, "wb") as stream:
        stream.write(kernel)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: vmlinux.py BZIMAGE VMLINUX")
    extract(sys.argv[1], sys.argv[2])
