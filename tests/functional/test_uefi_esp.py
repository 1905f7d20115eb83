"""The EFI system partition with real mtools: loader search order, the
agent's signed shim and grub installed, hostile ESP contents.

Every ESP here is a FAT image file made by ``mkfs.vfat`` in a temporary
directory (mtools reads and writes files and partition nodes alike); the
ESP-creation tests, which need partition nodes, are in
``test_uefi_run_image.py`` on loop devices.
"""

import os
import shutil
import subprocess
import tempfile
import unittest
from unittest import mock

from teeth_agent.images import uefi
from teeth_agent import processes

MIB = 1024 * 1024
ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1", MTOOLSRC="/dev/null")


def mtools(*argv):
    subprocess.run(argv, check=True, capture_output=True, env=ENV)


class EspTestBase(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        for tool in ("mkfs.vfat", "mdir", "mcopy", "mmd", "sgdisk"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("%s is not installed" % tool)

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="teeth-esp-")
        self.addCleanup(shutil.rmtree, self.work, True)
        self.blob = os.path.join(self.work, "blob.efi")
        with open(self.blob, "wb") as stream:
            stream.write(b"MZ" + os.urandom(1024))

    def esp(self, size_mib=40, name="esp.img"):
        path = os.path.join(self.work, name)
        with open(path, "wb") as stream:
            stream.truncate(size_mib * MIB)
        subprocess.run(["mkfs.vfat", "-n", "ESP", path], check=True,
                       capture_output=True)
        return path

    def junk(self):
        """A 1 MiB file of random bytes: no FAT file system."""
        junk = os.path.join(self.work, "junk.img")
        with open(junk, "wb") as stream:
            stream.write(os.urandom(MIB))
        return junk

    def mkdirs(self, esp, *paths):
        for path in paths:
            mtools("mmd", "-i", esp, "::" + path)

    def put(self, esp, path, source=None):
        mtools("mcopy", "-o", "-i", esp, source or self.blob, "::" + path)

    def read(self, esp, path):
        out = os.path.join(self.work, "out-%s" % os.urandom(4).hex())
        mtools("mcopy", "-n", "-i", esp, "::" + path, out)
        with open(out, "rb") as stream:
            return stream.read()


class LoaderSearchTest(EspTestBase):

    def test_search_order(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI", "/EFI/BOOT", "/EFI/zeta", "/EFI/alpha",
                    "/EFI/beta")
        self.put(esp, "/EFI/BOOT/BOOTX64.EFI")
        self.assertEqual({"loader": "\\EFI\\BOOT\\BOOTX64.EFI",
                          "vendor": None}, uefi.find_loader(esp))
        self.put(esp, "/EFI/zeta/grubx64.efi")
        self.put(esp, "/EFI/alpha/grubx64.efi")
        self.assertEqual("\\EFI\\alpha\\grubx64.efi",
                         uefi.find_loader(esp)["loader"])
        # shimx64.efi anywhere wins over grubx64.efi, whatever the case.
        self.put(esp, "/EFI/beta/SHIMX64.EFI")
        self.assertEqual({"loader": "\\EFI\\beta\\SHIMX64.EFI",
                          "vendor": "beta"}, uefi.find_loader(esp))

    def test_no_loader(self):
        esp = self.esp()
        self.assertIsNone(uefi.find_loader(esp))
        self.mkdirs(esp, "/EFI", "/EFI/debian", "/EFI/BOOT")
        self.put(esp, "/EFI/debian/grub.cfg")
        self.put(esp, "/EFI/BOOT/other.efi")
        self.put(esp, "/shimx64.efi")
        self.assertIsNone(uefi.find_loader(esp))

    def test_esp_at_an_offset_in_a_disk_image(self):
        esp = self.esp(size_mib=34)
        self.mkdirs(esp, "/EFI", "/EFI/debian")
        self.put(esp, "/EFI/debian/shimx64.efi")
        disk = os.path.join(self.work, "disk.img")
        with open(disk, "wb") as stream:
            stream.truncate(40 * MIB)
        subprocess.run(["sgdisk", "-n", "1:2048:+34M", "-t", "1:EF00",
                        disk], check=True, capture_output=True)
        subprocess.run(["dd", "if=%s" % esp, "of=%s" % disk, "bs=1M",
                        "seek=1", "conv=notrunc"], check=True,
                       capture_output=True)
        self.assertEqual("\\EFI\\debian\\shimx64.efi",
                         uefi.find_loader(disk, offset=MIB)["loader"])

    def test_esps_of_a_table(self):
        table = {"partitions": [
            {"number": 1, "type": "21686148-6449-6e6f-744e-656564454649"},
            {"number": 2, "type": uefi.ESP_GPT_TYPE},
            {"number": 3, "type": "ef"},
            {"number": None, "type": "ef"}]}
        self.assertEqual([2, 3], [p["number"]
                                  for p in uefi.find_esps(table)])


class HostileEspTest(EspTestBase):

    def test_a_directory_named_like_a_loader_is_not_a_loader(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI", "/EFI/evil", "/EFI/evil/shimx64.efi",
                    "/EFI/BOOT", "/EFI/BOOT/BOOTX64.EFI")
        self.assertIsNone(uefi.find_loader(esp))

    def test_odd_names_are_skipped(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI", "/EFI/bad name", "/EFI/d\u00e9bian",
                    "/EFI/" + "x" * 200, "/EFI/-dash")
        for vendor in ("bad name", "d\u00e9bian", "x" * 200, "-dash"):
            self.put(esp, "/EFI/%s/shimx64.efi" % vendor)
        self.assertIsNone(uefi.find_loader(esp))
        self.mkdirs(esp, "/EFI/good")
        self.put(esp, "/EFI/good/grubx64.efi")
        self.assertEqual("\\EFI\\good\\grubx64.efi",
                         uefi.find_loader(esp)["loader"])

    def test_deep_trees_and_many_directories_are_not_walked(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI")
        deep = "/EFI/deep"
        for level in range(60):
            self.mkdirs(esp, deep)
            deep += "/d%d" % level
        self.mkdirs(esp, *["/EFI/v%03d" % n for n in range(80)])
        self.put(esp, "/EFI/v079/shimx64.efi")
        calls = []
        real_open = processes.open_pipe

        def counting(*argv, **kwargs):
            calls.append(argv)
            return real_open(*argv, **kwargs)
        with mock.patch.object(processes, "open_pipe", counting):
            found = uefi.find_loader(esp)
        # v079 is past the first MAX_VENDORS directories: never looked at.
        self.assertIsNone(found)
        self.assertLessEqual(len(calls), uefi.MAX_VENDORS + 4)
        self.assertFalse(any("/d1" in " ".join(call) for call in calls))

    def test_a_huge_file_is_only_pointed_at(self):
        esp = self.esp(size_mib=64)
        self.mkdirs(esp, "/EFI", "/EFI/big")
        huge = os.path.join(self.work, "huge.efi")
        with open(huge, "wb") as stream:
            stream.write(b"MZ")
            stream.truncate(40 * MIB)
        self.put(esp, "/EFI/big/shimx64.efi", huge)
        with mock.patch.object(processes, "open_pipe",
                               wraps=processes.open_pipe) as pipes, \
                mock.patch.object(processes, "run",
                                  wraps=processes.run) as runs:
            self.assertEqual("\\EFI\\big\\shimx64.efi",
                             uefi.find_loader(esp)["loader"])
        # Only listings: nothing copies or reads the file.
        self.assertEqual([], runs.call_args_list)
        self.assertTrue(all("mdir" in call.args
                            for call in pipes.call_args_list))

    def test_an_endless_listing_is_cut(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI")
        with mock.patch.object(uefi, "MAX_LISTING", 64):
            self.mkdirs(esp, *["/EFI/v%03d" % n for n in range(10)])
            with self.assertRaises(uefi.EspError) as caught:
                uefi.find_loader(esp)
        self.assertIn("lists more than 64 bytes", str(caught.exception))

    def test_not_a_fat_file_system(self):
        junk = self.junk()
        with self.assertRaises(uefi.EspError):
            uefi.find_loader(junk)


class HoldsEfiFileTest(EspTestBase):
    """The BIOS path's "the image brought a UEFI loader": one recursive
    listing, under prlimit and cut like the others."""

    def test_anywhere_in_the_tree(self):
        esp = self.esp()
        self.assertFalse(uefi.holds_efi_file(esp))
        self.mkdirs(esp, "/EFI", "/EFI/a", "/EFI/a/b")
        self.put(esp, "/EFI/a/b/readme.txt")
        self.assertFalse(uefi.holds_efi_file(esp))
        self.put(esp, "/EFI/a/b/Loader.EFI")
        with mock.patch.object(processes, "open_pipe",
                               wraps=processes.open_pipe) as pipes:
            self.assertTrue(uefi.holds_efi_file(esp))
        [call] = pipes.call_args_list
        self.assertEqual(("prlimit", "--cpu=%d" % uefi.MDIR_CPU_SECONDS,
                          "--as=%d" % uefi.MDIR_ADDRESS_SPACE),
                         call.args[:3])
        self.assertIn("-/", call.args)
        self.assertIn("MTOOLSRC=/dev/null", call.args)

    def test_a_directory_named_like_a_loader_counts_not(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI", "/EFI/x.efi")
        self.assertFalse(uefi.holds_efi_file(esp))

    def test_an_endless_tree_is_cut(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI", *["/EFI/v%03d" % n for n in range(10)])
        with mock.patch.object(uefi, "MAX_LISTING", 64):
            with self.assertRaises(uefi.EspError) as caught:
                uefi.holds_efi_file(esp)
        self.assertIn("lists more than 64 bytes", str(caught.exception))

    def test_not_a_fat_file_system(self):
        junk = self.junk()
        self.assertFalse(uefi.holds_efi_file(junk))


class InstallSignedLoaderTest(EspTestBase):

    def setUp(self):
        super().setUp()
        for path in (uefi.SHIM_PATH, uefi.GRUB_PATH):
            if not os.path.isfile(path):
                self.skipTest("%s is not installed (shim-signed, "
                              "grub-efi-amd64-signed)" % path)

    def assert_same(self, esp, path, source):
        with open(source, "rb") as stream:
            self.assertEqual(stream.read(), self.read(esp, path), path)

    def test_into_an_empty_esp(self):
        esp = self.esp()
        installed = uefi.install_signed_loader(esp, "menuentry 'x' {}\n")
        self.assertEqual({"loader": "\\EFI\\debian\\shimx64.efi",
                          "removable": True}, installed)
        self.assert_same(esp, "/EFI/debian/shimx64.efi", uefi.SHIM_PATH)
        self.assert_same(esp, "/EFI/debian/grubx64.efi", uefi.GRUB_PATH)
        self.assert_same(esp, "/EFI/BOOT/BOOTX64.EFI", uefi.SHIM_PATH)
        self.assert_same(esp, "/EFI/BOOT/grubx64.efi", uefi.GRUB_PATH)
        self.assertEqual(b"menuentry 'x' {}\n",
                         self.read(esp, "/EFI/debian/grub.cfg"))
        self.assertEqual(b"menuentry 'x' {}\n",
                         self.read(esp, "/EFI/BOOT/grub.cfg"))
        self.assertEqual("\\EFI\\debian\\shimx64.efi",
                         uefi.find_loader(esp)["loader"])

    def test_keeps_the_image_removable_loader_and_existing_case(self):
        esp = self.esp()
        self.mkdirs(esp, "/efi", "/efi/boot")
        self.put(esp, "/efi/boot/bootx64.efi")
        installed = uefi.install_signed_loader(esp, "cfg\n")
        self.assertEqual({"loader": "\\efi\\debian\\shimx64.efi",
                          "removable": False}, installed)
        with open(self.blob, "rb") as stream:
            self.assertEqual(stream.read(),
                             self.read(esp, "/EFI/BOOT/BOOTX64.EFI"))

    def test_names_taken_by_the_wrong_kind_are_refused(self):
        esp = self.esp()
        self.mkdirs(esp, "/EFI", "/EFI/debian", "/EFI/debian/grubx64.efi")
        with self.assertRaises(uefi.EspError) as caught:
            uefi.install_signed_loader(esp, "cfg\n")
        self.assertIn("is a directory", str(caught.exception))
        esp = self.esp(name="esp2.img")
        self.mkdirs(esp, "/EFI")
        self.put(esp, "/EFI/debian")
        with self.assertRaises(uefi.EspError) as caught:
            uefi.install_signed_loader(esp, "cfg\n")
        self.assertIn("is a file", str(caught.exception))

    def test_a_full_esp_is_a_clear_error(self):
        esp = self.esp(size_mib=8)
        filler = os.path.join(self.work, "filler")
        with open(filler, "wb") as stream:
            stream.write(os.urandom(7 * MIB))
        self.put(esp, "/filler", filler)
        with self.assertRaises(uefi.EspError) as caught:
            uefi.install_signed_loader(esp, "cfg\n")
        self.assertIn("EFI system partition", str(caught.exception))

    def test_missing_signed_loader_names_it(self):
        esp = self.esp()
        with self.assertRaises(processes.ToolNotFound) as caught:
            uefi.install_signed_loader(
                esp, "cfg\n", shim=os.path.join(self.work, "no-shim"))
        self.assertIn("no-shim", str(caught.exception))


class OsReleaseLabelTest(unittest.TestCase):

    def label(self, text, link=None):
        root = tempfile.mkdtemp(prefix="teeth-root-")
        self.addCleanup(shutil.rmtree, root, True)
        os.makedirs(os.path.join(root, "etc"))
        if link is not None:
            os.symlink(link, os.path.join(root, "etc", "os-release"))
        else:
            with open(os.path.join(root, "etc", "os-release"), "w") as out:
                out.write(text)
        return uefi.os_release_label(root)

    def test_pretty_name_then_name_and_version(self):
        self.assertEqual("Debian GNU/Linux 12 (bookworm)", self.label(
            'NAME="Debian GNU/Linux"\nVERSION_ID="12"\n'
            'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'))
        self.assertEqual("Fedora Linux 40", self.label(
            "NAME='Fedora Linux'\nVERSION_ID=40\n"))
        self.assertIsNone(self.label("ID=teeth-test\n"))

    def test_hostile_text_is_cleaned_and_bounded(self):
        label = self.label('PRETTY_NAME="\x1b[31mevil\\\\path; rm -rf `x` '
                           + "y" * 500 + '"\n')
        self.assertLessEqual(len(label), 64)
        self.assertNotIn("\x1b", label)
        self.assertNotIn("\\", label)
        self.assertNotIn("`", label)
        self.assertNotIn(";", label)

    def test_an_absolute_link_stays_inside_the_image(self):
        # /etc/os-release -> /usr/lib/os-release of the image, never the
        # agent's own.
        self.assertIsNone(self.label(None, link="/usr/lib/os-release"))
