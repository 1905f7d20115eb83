"""The kernel extraction helper of the ramdisk build (no root, no qemu)."""

import gzip
import lzma
import os
import struct
import tempfile
import unittest

from tools.ramdisk import vmlinux

ELF = b"\x7fELF" + bytes(range(256)) * 64


def bzimage(payload, setup_sects=3, payload_offset=0x1234):
    """A minimal x86 bzImage: boot sector and setup sectors with the
    header fields the helper reads, then the protected-mode part holding
    ``payload`` at ``payload_offset`` followed by 4 size bytes, as the
    kernel's build appends them."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1f1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    protected = bytearray(payload_offset) + payload + \
        struct.pack("<I", len(ELF))
    return bytes(setup) + bytes(protected)


class ExtractTest(unittest.TestCase):
    def extract(self, image):
        with tempfile.TemporaryDirectory() as directory:
            source = os.path.join(directory, "vmlinuz")
            target = os.path.join(directory, "vmlinux")
            with open(source, "wb") as stream:
                stream.write(image)
            vmlinux.extract(source, target)
            with open(target, "rb") as stream:
                return stream.read()

    def test_xz_payload(self):
        payload = lzma.compress(ELF, format=lzma.FORMAT_XZ)
        self.assertEqual(ELF, self.extract(bzimage(payload)))

    def test_gzip_payload_with_trailing_bytes(self):
        self.assertEqual(ELF, self.extract(bzimage(gzip.compress(ELF))))

    def test_zero_setup_sects_means_four(self):
        payload = gzip.compress(ELF)
        image = bytearray(bzimage(payload, setup_sects=4))
        image[0x1f1] = 0
        self.assertEqual(ELF, self.extract(bytes(image)))

    def test_not_a_bzimage(self):
        self.assertRaises(vmlinux.NotABzImage, self.extract, ELF)

    def test_payload_that_is_not_an_elf(self):
        self.assertRaises(vmlinux.NotABzImage, self.extract,
                          bzimage(gzip.compress(b"not a kernel" * 10)))

    def test_unknown_compression(self):
        self.assertRaises(vmlinux.NotABzImage, self.extract,
                          bzimage(b"\x00\x01\x02\x03\x04\x05" * 10))
