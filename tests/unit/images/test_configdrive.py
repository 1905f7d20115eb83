"""teeth_agent.images.configdrive: building config drives and checking
prebuilt ones before anything is extracted.
"""

import base64
import gzip
import json
import os
import tempfile
from unittest import mock

from teeth_agent.images import configdrive
from teeth_agent import units
from tests import base

MIB = units.MIB


class ConfigDriveTest(base.TestCase):

    def test_layout(self):
        with tempfile.TemporaryDirectory() as tree:
            written = configdrive.layout({
                "meta_data": {"uuid": "u", "files": [{"path": "/a",
                                                      "content_path": "x"}]},
                "user_data": "hi", "vendor_data": {"v": 1},
                "files": {"/etc/b": base64.b64encode(b"B").decode()}}, tree)
            self.assertIn("openstack/latest/user_data", written)
            self.assertIn("openstack/latest/vendor_data.json", written)
            with open(os.path.join(tree, "openstack/latest/"
                                   "meta_data.json")) as stream:
                meta = json.load(stream)
            self.assertEqual([{"path": "/a", "content_path": "x"},
                              {"path": "/etc/b",
                               "content_path": "/content/0000"}],
                             meta["files"])
            with open(os.path.join(tree, "openstack/content/0000"),
                      "rb") as stream:
                self.assertEqual(b"B", stream.read())

    def test_bad_files(self):
        for files in ({"relative": ""}, {"/a/../b": ""}, {"/a": "%%"}):
            with self.assertRaises(configdrive.InvalidConfigDrive):
                configdrive.decode_files(files)

    def iso(self, label):
        data = bytearray(64 * 1024)
        data[32768] = 1
        data[32769:32774] = b"CD001"
        data[32808:32840] = label.ljust(32).encode()
        return bytes(data)

    def test_prebuilt(self):
        text = base64.b64encode(gzip.compress(self.iso("config-2"))).decode()
        self.assertEqual(self.iso("config-2"),
                         configdrive.decode_prebuilt(text, MIB))
        for bad, reason in (
                ("not base64!", "base64"),
                (base64.b64encode(b"plain").decode(), "gzip"),
                (base64.b64encode(gzip.compress(self.iso("other"))).decode(),
                 "labelled"),
                (base64.b64encode(gzip.compress(bytes(2 * MIB))).decode(),
                 "larger")):
            with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                        reason):
                configdrive.decode_prebuilt(bad, MIB)

    @mock.patch("teeth_agent.processes.execute")
    @mock.patch("teeth_agent.processes.which", return_value="/x")
    def test_build_uses_xorriso_with_the_label(self, which, execute):
        with tempfile.TemporaryDirectory() as out:
            iso = os.path.join(out, "cd.iso")

            def fake(*argv, **kwargs):
                with open(iso, "wb") as stream:
                    stream.write(bytes(4096))
                return "", ""
            execute.side_effect = fake
            self.assertEqual(4096, configdrive.build({"meta_data": {}}, iso,
                                                     MIB))
            argv = execute.call_args[0]
            self.assertEqual(["xorriso", "-as", "mkisofs"], list(argv[:3]))
            self.assertIn("config-2", argv)
            with self.assertRaises(configdrive.InvalidConfigDrive):
                configdrive.build({"meta_data": {}}, iso, 1024)
            self.assertFalse(os.path.exists(iso))


class VfatConfigDriveTest(base.TestCase):
    """Disks with sectors over 2048 bytes get a VFAT config drive."""

    def fat(self, sector_size, label=b"config-2   "):
        data = bytearray(8192)
        data[11:13] = sector_size.to_bytes(2, "little")
        data[43:54] = label
        data[54:62] = b"FAT12   "
        data[510:512] = b"\x55\xaa"
        return bytes(data)

    def test_file_system_by_sector_size(self):
        self.assertEqual("iso9660", configdrive.file_system_for(512))
        self.assertEqual("iso9660", configdrive.file_system_for(2048))
        self.assertEqual("vfat", configdrive.file_system_for(4096))

    def test_fat_sector_size(self):
        self.assertEqual(4096, configdrive.fat_sector_size(self.fat(4096)))
        self.assertEqual("config-2", configdrive.image_label(self.fat(512)))
        self.assertIsNone(configdrive.fat_sector_size(bytes(8192)))

    @mock.patch("teeth_agent.processes.execute", return_value=("", ""))
    def test_build_vfat_with_the_disk_sector_size(self, execute):
        with tempfile.TemporaryDirectory() as out:
            image = os.path.join(out, "cd.img")
            size = configdrive.build({"meta_data": {"a": 1},
                                      "user_data": "x" * 100000}, image,
                                     64 * MIB, sector_size=4096)
            self.assertEqual(0, size % MIB)
            self.assertGreaterEqual(size, 100000)
            mkfs, mcopy = (c[0] for c in execute.call_args_list)
            self.assertEqual(("mkfs.vfat", "-S", "4096", "-s", "1", "-n",
                              "config-2", image), mkfs)
            self.assertEqual(("mcopy", "-s", "-i", image), mcopy[:4])
            self.assertTrue(mcopy[4].endswith("/openstack"))
            self.assertEqual("::/", mcopy[-1])
            self.assertEqual("1", execute.call_args_list[1][1]["env"][
                "MTOOLS_SKIP_CHECK"])

    def iso(self):
        data = bytearray(64 * 1024)
        data[32768] = 1
        data[32769:32774] = b"CD001"
        data[32808:32840] = b"config-2".ljust(32)
        return bytes(data)

    @mock.patch("teeth_agent.processes.execute")
    def test_prebuilt_kept_when_the_disk_reads_it(self, execute):
        self.assertEqual(self.iso(), configdrive.fit_to_sector_size(
            self.iso(), 512, MIB))
        self.assertEqual(self.fat(4096), configdrive.fit_to_sector_size(
            self.fat(4096), 4096, MIB))
        execute.assert_not_called()

    @staticmethod
    def tools(execute):
        """The tools run, without the prlimit in front of extraction."""
        return [c[0][4] if c[0][0] == "prlimit" else c[0][0]
                for c in execute.call_args_list]

    def fake_tools(self, execute, extracted):
        listings = {"xorriso": "File data lba:  0 ,  20 ,  1 ,  2 , '/x'\n",
                    "env": "Total files listed:\n   1 file   2 bytes\n"}
        patcher = mock.patch.object(
            configdrive, "_listing", side_effect=lambda *argv: listings[
                argv[0]])
        patcher.start()
        self.addCleanup(patcher.stop)

        def run(*argv, **kwargs):
            if argv[0] == "prlimit":
                argv = argv[4:]
            if argv[0] == "xorriso" or argv[:2] == ("mcopy", "-s") and \
                    argv[2] == "-n":
                tree = argv[-1] if argv[0] == "xorriso" else argv[-1][:-1]
                extracted(tree)
            elif argv[0] == "mkfs.vfat":
                with open(argv[-1], "r+b") as stream:
                    stream.write(self.fat(4096))
            return "", ""
        execute.side_effect = run

    @mock.patch("teeth_agent.processes.execute")
    def test_prebuilt_iso_is_rebuilt_as_vfat(self, execute):
        def extracted(tree):
            os.makedirs(os.path.join(tree, "openstack", "latest"))
            with open(os.path.join(tree, "openstack", "latest",
                                   "meta_data.json"), "w") as stream:
                stream.write("{}")
        self.fake_tools(execute, extracted)
        rebuilt = configdrive.fit_to_sector_size(self.iso(), 4096, 64 * MIB)
        self.assertEqual(4096, configdrive.fat_sector_size(rebuilt))
        self.assertEqual(["xorriso", "mkfs.vfat", "mcopy"],
                         self.tools(execute))
        self.assertIn("-extract", execute.call_args_list[0][0])
        # A FAT drive made for 512-byte sectors is rebuilt the same way.
        execute.reset_mock()
        configdrive.fit_to_sector_size(self.fat(512), 4096, 64 * MIB)
        self.assertEqual(["mcopy", "mkfs.vfat", "mcopy"],
                         self.tools(execute))

    @mock.patch("teeth_agent.processes.execute")
    def test_prebuilt_with_a_link_is_refused(self, execute):
        def extracted(tree):
            os.symlink("/etc/shadow", os.path.join(tree, "meta_data.json"))
        self.fake_tools(execute, extracted)
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "meta_data.json"):
            configdrive.fit_to_sector_size(self.iso(), 4096, 64 * MIB)
        self.assertEqual(["xorriso"], self.tools(execute))


class IsoReportTest(base.TestCase):

    line = "File data lba:  0 , %8d , %8d , %8d , '/openstack/%s'"

    def report(self, *extents):
        lines = ["Report layout: xt , Startlba ,   Blocks , Filesize , "
                 "ISO image path"]
        lines += [self.line % (start, blocks, size, "f%d" % index)
                  for index, (start, blocks, size) in enumerate(extents)]
        return "\n".join(lines) + "\n"

    def test_honest_drive(self):
        report = self.report((33, 49, 100000), (82, 1, 4), (83, 1, 13))
        self.assertEqual(100017,
                         configdrive.check_iso_report(report, 236 * 2048,
                                                      MIB))

    def test_shared_extents_are_refused(self):
        report = self.report(*[(33, 512, MIB)] * 3)
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "sharing data"):
            configdrive.check_iso_report(report, 600 * 2048, 64 * MIB)
        report = self.report((33, 10, 20000), (40, 10, 20000))
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "sharing data"):
            configdrive.check_iso_report(report, 600 * 2048, 64 * MIB)

    def test_total_over_the_cap_is_refused(self):
        # zisofs: 4 blocks on the disc, 50 MiB once extracted.
        report = self.report((58, 4, 50 * MIB))
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "total more than"):
            configdrive.check_iso_report(report, 100 * 2048, 16 * MIB)

    def test_extent_past_the_end_is_refused(self):
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "past its end"):
            configdrive.check_iso_report(self.report((90, 20, 100)),
                                         100 * 2048, MIB)

    def test_too_many_files(self):
        report = self.report(*[(33 + i, 0, 0) for i in range(
            configdrive.MAX_EXTRACTED_FILES + 1)])
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "more than"):
            configdrive.check_iso_report(report, 10 ** 9, MIB)

    def test_mdir_total(self):
        listing = ("Directory for ::/\n\nf  4 2026-12-01 21:00\n"
                   "Total files listed:\n       11 files             "
                   "100 025 bytes\n                          8 202 752 "
                   "bytes free\n")
        self.assertEqual(100025,
                         configdrive.check_mdir_listing(listing, MIB))
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "100025 bytes"):
            configdrive.check_mdir_listing(listing, 100000)
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "cannot be listed"):
            configdrive.check_mdir_listing("garbage\n", MIB)
        # One directory: no "Total files listed", its summary is the total.
        flat = ("Directory for ::/\n\ncraft    py       1635 2026-12-01\n"
                "        1 file                1 635 bytes\n"
                "                          2 074 624 bytes free\n")
        self.assertEqual(1635, configdrive.check_mdir_listing(flat, MIB))
