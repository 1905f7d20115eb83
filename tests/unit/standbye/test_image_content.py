"""A hostile image or server: what run_image must not do for them.

grub installed through a directory the agent made (never into a link of
the image, never reading its device.map), boot files that are sparse or
too large, prebuilt config drives checked before anything is decoded or
extracted, and several initrds on one grub line.
"""

import base64
import gzip
import os
import shutil
import tempfile
import threading
import tracemalloc
from unittest import mock

from teeth_agent.extensions import base as ext_base
from teeth_agent.extensions import standbye
from teeth_agent.images import boot
from teeth_agent.images import configdrive
from teeth_agent import power
from teeth_agent import processes
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base

MIB = 1024 * 1024
IMAGE_ID = "6f1c2a9e-3b7d-4e8f-a0b1-c2d3e4f5a6b7"
BOOT = {"fs_uuid": "U", "kernel": "/boot/vmlinuz", "cmdline": "ro quiet",
        "initrd": ["/boot/a.img", "/boot/b.img"]}


def listing(path):
    """``{relative path: link target or file bytes or None (directory)}``
    of a tree, links never followed."""
    found = {}
    for directory, names, files in os.walk(path):
        for name in names + files:
            full = os.path.join(directory, name)
            key = os.path.relpath(full, path)
            if os.path.islink(full):
                found[key] = "-> " + os.readlink(full)
            elif os.path.isdir(full):
                found[key] = None
            else:
                with open(full, "rb") as stream:
                    found[key] = stream.read()
    return found


class InstallGrubTest(base.TestCase):
    """install_grub on a fake mount: ``mount`` fills the mount point with
    the image's tree, ``umount`` keeps what is there for the test."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.outside = os.path.join(self.dir, "outside")
        os.mkdir(self.outside)
        self.image = os.path.join(self.dir, "image")
        os.makedirs(os.path.join(self.image, "boot"))
        self.after = os.path.join(self.dir, "after")
        self.seen_by_grub = None
        self.grub_fails = False
        self.calls = []
        patcher = mock.patch.object(processes, "which",
                                    return_value="/usr/sbin/grub-install")
        patcher.start()
        self.addCleanup(patcher.stop)
        patcher = mock.patch.object(processes, "execute",
                                    side_effect=self.execute)
        patcher.start()
        self.addCleanup(patcher.stop)

    def execute(self, *argv, **kwargs):
        self.calls.append(argv[0])
        if argv[0] == "mount":
            mount_point = argv[-1]
            os.rmdir(mount_point)
            shutil.copytree(self.image, mount_point, symlinks=True)
        elif argv[0] == "umount":
            os.rename(argv[-1], self.after)
            os.mkdir(argv[-1])
        elif argv[0] == "grub-install":
            boot_dir = [a for a in argv
                        if a.startswith("--boot-directory=")][0]
            boot_dir = boot_dir.split("=", 1)[1]
            grub = os.path.join(boot_dir, "grub")
            self.seen_by_grub = (os.path.islink(grub), listing(grub))
            if self.grub_fails:
                os.makedirs(os.path.join(grub, "i386-pc"))
                raise processes.ProcessError(list(argv), 1, "", "no drive")
            # What grub-install writes, through the path it was given.
            os.makedirs(os.path.join(grub, "i386-pc"), exist_ok=True)
            with open(os.path.join(grub, "i386-pc", "normal.mod"),
                      "wb") as stream:
                stream.write(b"grub module")
            with open(os.path.join(grub, "grubenv"), "w") as stream:
                stream.write("# GRUB Environment Block\n")
        return "", ""

    def install(self):
        boot.install_grub("/dev/loop9", "/dev/loop9p1", "ext4", "i386-pc",
                          BOOT)

    def test_boot_grub_linked_out_of_the_image_is_refused(self):
        os.symlink(self.outside, os.path.join(self.image, "boot", "grub"))
        with self.assertRaisesRegex(boot.UnsafePath, "/boot/grub"):
            self.install()
        self.assertNotIn("grub-install", self.calls)
        self.assertEqual({}, listing(self.outside))
        self.assertEqual("umount", self.calls[-1])
        self.assertTrue(os.path.islink(os.path.join(self.after, "boot",
                                                    "grub")))

    def test_boot_linked_out_of_the_image_is_refused(self):
        shutil.rmtree(os.path.join(self.image, "boot"))
        os.symlink(self.outside, os.path.join(self.image, "boot"))
        with self.assertRaisesRegex(boot.UnsafePath, "/boot"):
            self.install()
        self.assertNotIn("grub-install", self.calls)
        self.assertEqual({}, listing(self.outside))

    def test_grub_writes_into_an_empty_directory_of_its_own(self):
        grub = os.path.join(self.image, "boot", "grub")
        os.makedirs(os.path.join(grub, "themes", "t"))
        with open(os.path.join(grub, "device.map"), "w") as stream:
            stream.write("(hd0) /dev/sda\n")
        with open(os.path.join(grub, "grub.cfg"), "w") as stream:
            stream.write("image's own config\n")
        with open(os.path.join(grub, "grubenv"), "w") as stream:
            stream.write("kernelopts=root=/dev/vda1\n")
        # A planted link where grub writes its modules.
        os.symlink(self.outside, os.path.join(grub, "i386-pc"))
        self.install()
        # grub-install saw a real, empty directory: no device.map of the
        # image, no link to follow.
        self.assertEqual((False, {}), self.seen_by_grub)
        after = listing(os.path.join(self.after, "boot", "grub"))
        self.assertEqual(b"image's own config\n", after["grub.cfg"])
        self.assertEqual(b"kernelopts=root=/dev/vda1\n", after["grubenv"])
        self.assertEqual(b"grub module", after["i386-pc/normal.mod"])
        self.assertIn("themes/t", after)
        self.assertEqual(["grub"], [
            name for name in os.listdir(os.path.join(self.after, "boot"))
            if name.startswith("grub")])
        self.assertEqual({}, listing(self.outside))

    def test_a_failed_install_puts_the_image_directory_back(self):
        self.grub_fails = True
        grub = os.path.join(self.image, "boot", "grub")
        os.makedirs(grub)
        with open(os.path.join(grub, "device.map"), "w") as stream:
            stream.write("(hd0) /dev/sda\n")
        os.symlink("/etc/shadow", os.path.join(grub, "grub.cfg"))
        before = listing(grub)
        with self.assertRaises(processes.ProcessError):
            self.install()
        self.assertEqual(before, listing(os.path.join(self.after, "boot",
                                                      "grub")))
        self.assertEqual(["grub"],
                         os.listdir(os.path.join(self.after, "boot")))

    def test_grub_cfg_written_when_missing_with_every_initrd(self):
        self.install()
        with open(os.path.join(self.after, "boot", "grub",
                               "grub.cfg")) as stream:
            text = stream.read()
        self.assertIn("    initrd /boot/a.img /boot/b.img\n", text)
        self.assertNotIn("[", text)

    def test_a_linked_grub_cfg_is_neither_followed_nor_replaced(self):
        target = os.path.join(self.outside, "file")
        with open(target, "w") as stream:
            stream.write("host file\n")
        grub = os.path.join(self.image, "boot", "grub")
        os.makedirs(grub)
        os.symlink(target, os.path.join(grub, "grub.cfg"))
        self.install()
        self.assertEqual("-> " + target, listing(os.path.join(
            self.after, "boot", "grub"))["grub.cfg"])
        with open(target) as stream:
            self.assertEqual("host file\n", stream.read())

    def test_missing_boot_is_made(self):
        shutil.rmtree(os.path.join(self.image, "boot"))
        self.install()
        self.assertTrue(os.path.isfile(os.path.join(
            self.after, "boot", "grub", "i386-pc", "normal.mod")))


class GrubConfigTest(base.TestCase):

    def test_two_initrds_are_one_line(self):
        text = boot.grub_config(BOOT)
        self.assertIn("    initrd /boot/a.img /boot/b.img\n", text)
        self.assertEqual(1, text.count("initrd"))

    def test_one_initrd_or_none(self):
        self.assertIn("    initrd /boot/i\n",
                      boot.grub_config(dict(BOOT, initrd="/boot/i")))
        self.assertNotIn("initrd", boot.grub_config(dict(BOOT, initrd=None)))


class BootFileTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        os.mkdir(os.path.join(self.root, "boot"))

    def write(self, name, data, size=None):
        path = os.path.join(self.root, "boot", name)
        with open(path, "wb") as stream:
            stream.write(data)
            if size is not None:
                stream.truncate(size)
        return "/boot/" + name

    def test_sparse_file_is_refused(self):
        kernel = self.write("vmlinuz", b"MZ" + bytes(4094), 64 * MIB)
        info = os.stat(os.path.join(self.root, "boot", "vmlinuz"))
        if info.st_blocks * 512 >= info.st_size:
            self.skipTest("this file system stores no holes")
        with self.assertRaisesRegex(boot.UnsafePath, "sparse"):
            boot.copy_out(self.root, kernel, os.path.join(self.root, "k"))
        self.assertFalse(os.path.exists(os.path.join(self.root, "k")))

    def test_a_few_holes_are_fine(self):
        # mke2fs -d turns blocks of zeros into holes; a kernel has some.
        path = os.path.join(self.root, "boot", "vmlinuz")
        with open(path, "wb") as stream:
            stream.write(os.urandom(60 * 4096))
            stream.seek(4 * 4096, os.SEEK_CUR)
            stream.write(os.urandom(60 * 4096))
        copy = boot.copy_out(self.root, "/boot/vmlinuz",
                             os.path.join(self.root, "k"))
        self.assertEqual(124 * 4096, os.path.getsize(copy))

    def test_dense_file_is_copied(self):
        data = os.urandom(3 * 4096 + 17)
        kernel = self.write("vmlinuz", data)
        copy = boot.copy_out(self.root, kernel, os.path.join(self.root, "k"))
        with open(copy, "rb") as stream:
            self.assertEqual(data, stream.read())

    def test_default_caps_fit_a_kernel_and_an_initrd(self):
        conf = base.make_conf()
        self.assertEqual(boot.MAX_KERNEL_SIZE, conf.standbye.max_kernel_size)
        self.assertEqual(boot.MAX_INITRDS_TOTAL,
                         conf.standbye.max_initrd_size)
        self.assertEqual(128 * MIB, boot.MAX_KERNEL_SIZE)
        self.assertEqual(512 * MIB, boot.MAX_INITRDS_TOTAL)


class ExtensionTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.dir)
        self.conf = base.make_conf(**{
            "standbye.image_cache_dir": os.path.join(self.dir, "cache"),
            "standbye.work_dir": os.path.join(self.dir, "work"),
            "power.simulate": True})
        self.registry = tasks.TaskRegistry()
        context = ext_base.ExtensionContext(
            self.conf, mock.Mock(), self.registry,
            power.PowerController(simulate=True))
        self.extension = standbye.StandbyeExtension(context)
        self.extension.name = "standbye"


class KernelCapTest(ExtensionTestCase):

    def test_kernel_over_the_configured_cap_is_refused(self):
        root = os.path.join(self.dir, "root")
        os.makedirs(os.path.join(root, "boot"))
        with open(os.path.join(root, "boot", "k"), "wb") as stream:
            stream.write(os.urandom(MIB + 1))
        self.conf.set_override("max_kernel_size", MIB, "standbye")
        entry = {"kernel": "/boot/k", "initrds": [], "options": "",
                 "source": "vmlinuz"}
        with self.assertRaisesRegex(boot.UnsafePath, "larger than"):
            self.extension._copy_boot_files(root, entry)


def gzip_bomb(size=64 * MIB):
    """A prebuilt-drive-shaped gzip of ``size`` bytes (an ISO 9660 volume
    descriptor labelled config-2, then zeros) as base64 text."""
    data = bytearray(size)
    data[32768] = 1
    data[32769:32774] = b"CD001"
    data[32808:32840] = b"config-2".ljust(32)
    return base64.b64encode(gzip.compress(bytes(data), 9)).decode()


class PrebuiltValidationTest(ExtensionTestCase):
    """run_image's validation of a prebuilt drive: Busy before decoding,
    decoding in chunks never holding the drive."""

    @classmethod
    def setUpClass(cls):
        cls.bomb = gzip_bomb()

    def setUp(self):
        super().setUp()
        self.extension._prepared = {"image_id": IMAGE_ID,
                                    "device": "/dev/loop9"}

    def validate(self, config_drive):
        spec, _ = self.extension.commands()["standbye.run_image"]
        checked = ext_base.check_params(spec, {
            "task_id": "t1", "image_id": IMAGE_ID,
            "config_drive": config_drive})
        return self.extension.validator(spec)(**checked)

    def start_busy_task(self):
        release = threading.Event()
        self.addCleanup(release.set)
        self.registry.start("busy", "standbye.prepare_image",
                            lambda task: release.wait(60), exclusive=True)

    def test_busy_agent_answers_busy_without_decoding(self):
        self.start_busy_task()
        errors = []

        def send():
            try:
                self.validate(self.bomb)
            except protocol.Busy as exc:
                errors.append(exc)

        with mock.patch.object(configdrive.zlib, "decompressobj") as inflate:
            threads = [threading.Thread(target=send) for _ in range(16)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        self.assertEqual(16, len(errors))
        inflate.assert_not_called()
        self.assertEqual("busy", errors[0].details["task_id"])

    def test_a_bomb_is_checked_without_holding_it(self):
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        tracemalloc.reset_peak()
        base_size, _ = tracemalloc.get_traced_memory()
        self.validate(self.bomb)
        _, peak = tracemalloc.get_traced_memory()
        # Chunks of 1 MiB and the 64 KiB head, not the 64 MiB drive.
        self.assertLess(peak - base_size, 8 * MIB)

    def test_a_bomb_over_the_cap_is_refused(self):
        self.conf.set_override("max_config_drive_size", 16 * MIB, "standbye")
        with self.assertRaisesRegex(protocol.InvalidParams, "larger than"):
            self.validate(self.bomb)

    def test_text_too_long_for_the_cap_is_refused_before_decoding(self):
        self.conf.set_override("max_config_drive_size", MIB, "standbye")
        with mock.patch.object(configdrive.base64, "b64decode") as decode:
            with self.assertRaisesRegex(protocol.InvalidParams,
                                        "characters"):
                self.validate("A" * (2 * MIB))
        decode.assert_not_called()

    def test_decode_keeps_the_whole_drive(self):
        data = configdrive.decode_prebuilt(self.bomb, 64 * MIB)
        self.assertEqual(64 * MIB, len(data))
        self.assertEqual(64 * MIB, configdrive.check_prebuilt(self.bomb,
                                                              64 * MIB))
        truncated = base64.b64encode(base64.b64decode(self.bomb)[:-20])
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "truncated"):
            configdrive.check_prebuilt(truncated.decode(), 64 * MIB)


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
