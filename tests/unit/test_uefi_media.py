"""The UEFI media of build-ramdisk: grub.cfg and its checks (no root).

What boots is proven in tests/vm/test_uefi.py; here: the command line an
operator gives is refused when grub would read part of it as its own
syntax, and the media's grub.cfg names the build it belongs to.
"""

import os
import shutil
import subprocess
import tempfile
import unittest

from tools.ramdisk.base import BuildError
from tools.ramdisk import uefi_media


class GrubConfigTest(unittest.TestCase):
    def test_accepts_a_plain_command_line(self):
        line = ("console=tty0 console=ttyS0,115200n8 ip=dhcp "
                "teeth_agent.endpoints=10.20.0.5:9999 "
                'teeth_agent.hardware.root_device_hints=serial:A-1')
        self.assertEqual(uefi_media.check_cmdline(line), line)

    def test_refuses_grub_syntax(self):
        for bad in ('a "b"', "a 'b'", "a $root", "a; reboot", "a && b",
                    "a | b", "a {b}", "a\\b", "a #b", "a `b`", "a <b",
                    "a\nlinux /x", "a\tb", "", "x" * 2049):
            with self.subTest(bad=bad):
                with self.assertRaises(BuildError) as caught:
                    uefi_media.check_cmdline(bad)
                self.assertNotIn("Traceback", str(caught.exception))

    def test_search_names_the_build(self):
        config = uefi_media.grub_config("0123456789abcdef", "ip=dhcp")
        self.assertIn("search --no-floppy --set=root --file "
                      "/teeth/id-0123456789abcdef\n", config)
        self.assertIn("    linux /teeth/vmlinuz ip=dhcp\n", config)
        self.assertIn("    initrd /teeth/initrd.img\n", config)

    def test_network_config_searches_nothing(self):
        config = uefi_media.grub_config(None, "ip=dhcp")
        self.assertNotIn("search", config)
        self.assertIn("    linux /teeth/vmlinuz ip=dhcp\n", config)

    def test_build_id_is_the_initramfs_hash(self):
        with tempfile.TemporaryDirectory() as directory:
            first = os.path.join(directory, "a")
            second = os.path.join(directory, "b")
            for path, data in ((first, b"one"), (second, b"two")):
                with open(path, "wb") as stream:
                    stream.write(data)
            self.assertEqual(uefi_media.build_id(first),
                             uefi_media.build_id(first))
            self.assertNotEqual(uefi_media.build_id(first),
                                uefi_media.build_id(second))


@unittest.skipUnless(all(shutil.which(tool) for tool in
                         ("mkfs.vfat", "mcopy", "mdir")),
                     "needs dosfstools and mtools")
class FatImageTest(unittest.TestCase):
    def test_files_land_at_their_paths(self):
        with tempfile.TemporaryDirectory() as directory:
            source = os.path.join(directory, "loader")
            with open(source, "wb") as stream:
                stream.write(b"MZ" + bytes(1000))
            image = os.path.join(directory, "out", "esp.img")
            uefi_media.fat_image(image, {
                "EFI/BOOT/BOOTX64.EFI": source,
                "EFI/debian/grub.cfg": source}, "TEST")
            copy = os.path.join(directory, "copy")
            subprocess.run(["mcopy", "-i", image, "::/EFI/BOOT/BOOTX64.EFI",
                            copy], check=True, capture_output=True)
            with open(copy, "rb") as stream:
                self.assertEqual(stream.read(), b"MZ" + bytes(1000))
            listing = subprocess.run(
                ["mdir", "-b", "-i", image, "::/EFI/debian"], check=True,
                capture_output=True, text=True).stdout
            self.assertIn("grub.cfg", listing)
