"""standbye against a hostile image or server, with the real tools.

Each image or config drive here is built to attack the agent: a root file
system whose ``/boot/grub`` links to a directory of the host, a sparse
kernel, an ISO 9660 drive whose directory records share one extent, a
zisofs or FAT drive that extracts to more than allowed, and a gzip bomb
sent many times at once. Devices are loop devices created here.
"""

import base64
import gzip
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import unittest
from unittest import mock
import uuid

from teeth_agent.images import configdrive
from teeth_agent import processes
from teeth_agent import protocol
from teeth_agent import tasks
from tests.functional import loopdev
from tests.functional import standbye_http
from tests.functional import standbye_images
from tests.functional import test_standbye

MIB = 1024 * 1024
_REPORT = re.compile(r"File data lba:\s*\d+\s*,\s*(\d+)\s*,\s*\d+\s*,"
                     r"\s*(\d+)\s*,\s*'(.*)'")


def _both_endian(value):
    return struct.pack("<I", value) + struct.pack(">I", value)


def overlapping_iso(work, copies=20, size=MIB):
    """An ISO 9660 config drive whose ``copies`` small files all point at
    the extent of one ``size``-byte file: a few KiB gzip-compressed,
    ``copies`` times ``size`` once extracted."""
    latest = os.path.join(work, "overlap-tree", "openstack", "latest")
    os.makedirs(latest)
    with open(os.path.join(latest, "meta_data.json"), "w") as stream:
        stream.write('{"uuid": "overlap"}')
    with open(os.path.join(latest, "big"), "wb") as stream:
        stream.write(bytes(size))
    for index in range(copies):
        with open(os.path.join(latest, "c%03d" % index), "wb") as stream:
            stream.write(b"%03d" % index)
    iso = os.path.join(work, "overlap.iso")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-V",
                    "config-2", "-R", "-J",
                    os.path.join(work, "overlap-tree")], check=True)
    report = subprocess.run(
        ["xorriso", "-indev", "stdio:" + iso, "-find", "/", "-exec",
         "report_lba"], capture_output=True, text=True, check=True).stdout
    extents = {os.path.basename(m.group(3)): (int(m.group(1)),
                                              int(m.group(2)))
               for m in map(_REPORT.match, report.splitlines()) if m}
    with open(iso, "rb") as stream:
        data = stream.read()
    target = _both_endian(extents["big"][0]) + _both_endian(size)
    for index in range(copies):
        start, length = extents["c%03d" % index]
        # The extent and size fields of the file's records (ISO 9660 and
        # Joliet trees), both-endian as the standard stores them.
        record = _both_endian(start) + _both_endian(length)
        assert record in data
        data = data.replace(record, target)
    return data


def zisofs_iso(work, size):
    """A config drive holding a zisofs-compressed file of ``size`` zeros:
    a few blocks on the disc, ``size`` bytes once extracted."""
    latest = os.path.join(work, "zisofs-tree", "openstack", "latest")
    os.makedirs(latest)
    with open(os.path.join(latest, "meta_data.json"), "w") as stream:
        stream.write("{}")
    with open(os.path.join(latest, "zeros"), "wb") as stream:
        stream.truncate(size)
    iso = os.path.join(work, "zisofs.iso")
    subprocess.run(["xorriso", "-outdev", "stdio:" + iso, "-volid",
                    "config-2", "-rockridge", "on", "-map",
                    os.path.join(work, "zisofs-tree"), "/", "-set_filter_r",
                    "--zisofs", "/", "--", "-commit"], check=True,
                   capture_output=True)
    with open(iso, "rb") as stream:
        return stream.read()


def looping_iso(work):
    """A config drive whose directory ``/a/b`` is the root directory
    again: xorriso reads ``/a/b/a/b/...`` without end."""
    tree = os.path.join(work, "loop-tree")
    os.makedirs(os.path.join(tree, "a", "b"))
    with open(os.path.join(tree, "a", "b", "f"), "wb") as stream:
        stream.write(bytes(64 * 1024))
    iso = os.path.join(work, "loop.iso")
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-V",
                    "config-2", tree], check=True)
    with open(iso, "rb") as stream:
        data = bytearray(stream.read())
    root = data[32768 + 156:32768 + 156 + 34]
    extent = bytes(root[2:18])  # location and length, both-endian
    patched = 0
    offset = data.find(b"\x01B")
    while offset >= 0:
        record = offset - 32
        if data[record + 25] & 2 and data[record + 32] == 1:
            data[record + 2:record + 18] = extent
            patched += 1
        offset = data.find(b"\x01B", offset + 1)
    assert patched == 1
    return bytes(data)


def fat_drive(work, file_size):
    """A FAT config drive with 512-byte sectors holding one file of
    ``file_size`` random bytes."""
    image = os.path.join(work, "fat.img")
    with open(image, "wb") as stream:
        stream.truncate(file_size + 4 * MIB)
    subprocess.run(["mkfs.vfat", "-S", "512", "-n", "config-2", image],
                   check=True, capture_output=True)
    payload = os.path.join(work, "payload")
    with open(payload, "wb") as stream:
        stream.write(os.urandom(file_size))
    subprocess.run(["mcopy", "-i", image, payload, "::/payload"], check=True,
                   env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    with open(image, "rb") as stream:
        return stream.read()


def looping_fat_drive(work):
    """A FAT config drive whose directory ``/a/b`` is ``/a`` again."""
    image = os.path.join(work, "loop.img")
    with open(image, "wb") as stream:
        stream.truncate(4 * MIB)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    subprocess.run(["mkfs.vfat", "-S", "512", "-s", "1", "-n", "config-2",
                    image], check=True, capture_output=True)
    subprocess.run(["mmd", "-i", image, "::/a", "::/a/b"], check=True,
                   env=env)
    with open(image, "rb") as stream:
        data = bytearray(stream.read())

    def entry(name):
        offset = data.find(name)
        while offset % 32 or not data[offset + 11] & 0x10:
            offset = data.find(name, offset + 1)
        return offset
    a, b = entry(b"A          "), entry(b"B          ")
    data[b + 26:b + 28] = data[a + 26:a + 28]  # b's first cluster := a's
    return bytes(data)


class PrebuiltExtractionTest(unittest.TestCase):
    """A prebuilt drive rebuilt for 4096-byte sectors is listed and
    bounded before anything is extracted."""

    def setUp(self):
        for tool in ("xorriso", "mkfs.vfat", "mcopy", "mdir", "mmd",
                     "prlimit"):
            if shutil.which(tool) is None:
                self.skipTest("%s is not installed" % tool)
        self.work = tempfile.mkdtemp(prefix="teeth-hostile-drive-")
        self.addCleanup(shutil.rmtree, self.work, True)
        real = processes.execute
        self.commands = []

        def execute(*argv, **kwargs):
            self.commands.append(argv)
            return real(*argv, **kwargs)
        patcher = mock.patch.object(processes, "execute", execute)
        patcher.start()
        self.addCleanup(patcher.stop)

    def assert_nothing_extracted(self):
        for argv in self.commands:
            self.assertNotIn("-extract", argv)
            self.assertNotIn("mcopy", argv)

    def test_shared_extents_are_refused_before_extraction(self):
        data = overlapping_iso(self.work)
        self.assertLess(len(gzip.compress(data)), 64 * 1024)
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "sharing data"):
            configdrive.fit_to_sector_size(data, 4096, 64 * MIB)
        self.assert_nothing_extracted()

    def test_zisofs_over_the_cap_is_refused_before_extraction(self):
        data = zisofs_iso(self.work, 8 * MIB)
        self.assertLess(len(data), MIB)
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "total more than"):
            configdrive.fit_to_sector_size(data, 4096, 2 * MIB)
        self.assert_nothing_extracted()

    def test_fat_over_the_cap_is_refused_before_extraction(self):
        data = fat_drive(self.work, 3 * MIB)
        with self.assertRaisesRegex(configdrive.InvalidConfigDrive,
                                    "files total"):
            configdrive.fit_to_sector_size(data, 4096, 2 * MIB)
        self.assert_nothing_extracted()

    def test_directory_loop_is_stopped_before_extraction(self):
        data = looping_iso(self.work)
        with mock.patch.object(configdrive, "TOOL_CPU_SECONDS", 3):
            with self.assertRaises(configdrive.InvalidConfigDrive):
                configdrive.fit_to_sector_size(data, 4096, 64 * MIB)
        self.assert_nothing_extracted()

    def test_fat_directory_loop_is_stopped_before_extraction(self):
        data = looping_fat_drive(self.work)
        with mock.patch.object(configdrive, "TOOL_CPU_SECONDS", 3):
            with self.assertRaises(configdrive.InvalidConfigDrive):
                configdrive.fit_to_sector_size(data, 4096, 64 * MIB)
        self.assert_nothing_extracted()

    def test_honest_drives_are_still_rebuilt(self):
        data = zisofs_iso(self.work, MIB)
        rebuilt = configdrive.fit_to_sector_size(data, 4096, 4 * MIB)
        self.assertEqual(4096, configdrive.fat_sector_size(rebuilt))
        rebuilt = configdrive.fit_to_sector_size(
            fat_drive(self.work, MIB), 4096, 4 * MIB)
        self.assertEqual(4096, configdrive.fat_sector_size(rebuilt))


def _peak_rss():
    with open("/proc/self/status") as stream:
        for line in stream:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise unittest.SkipTest("no VmHWM in /proc/self/status")


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as stream:
            stream.write("5")
    except OSError:
        raise unittest.SkipTest("cannot reset the peak RSS") from None


class GzipBombTest(test_standbye.StandbyeTestBase):
    """16 run_image commands with a 64 MiB gzip bomb each, at once."""

    @classmethod
    def setUpClass(cls):
        loopdev.require_root()
        cls.tmp = tempfile.mkdtemp(prefix="teeth-hostile-")
        cls.images = {}
        cls.server = standbye_http.ImageServer().__enter__()
        data = bytearray(64 * MIB)
        data[32768] = 1
        data[32769:32774] = b"CD001"
        data[32808:32840] = b"config-2".ljust(32)
        cls.bomb = base64.b64encode(gzip.compress(bytes(data), 9)).decode()

    def validate_many(self, extension, count=16):
        spec, _ = extension.commands()["standbye.run_image"]
        outcomes = []

        def send():
            raw = {"task_id": uuid.uuid4().hex, "config_drive": self.bomb,
                   "image_id": extension._prepared["image_id"]}
            try:
                extension.validate(spec, raw)
                outcomes.append("valid")
            except protocol.Busy:
                outcomes.append("busy")
        threads = [threading.Thread(target=send) for _ in range(count)]
        _reset_peak_rss()
        before = _peak_rss()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes, _peak_rss() - before

    def test_sixteen_bombs_at_once_cost_little_memory(self):
        extension = self.make_extension([self.device])
        extension._prepared = {"image_id": str(uuid.uuid4()),
                               "device": self.device}
        outcomes, grown = self.validate_many(extension)
        self.assertEqual(["valid"] * 16, outcomes)
        # Loosely: the old code held 16 decompressed drives (1 GiB).
        self.assertLess(grown, 256 * MIB)

    def test_a_busy_agent_answers_busy_at_once(self):
        extension = self.make_extension([self.device])
        extension._prepared = {"image_id": str(uuid.uuid4()),
                               "device": self.device}
        release = threading.Event()
        self.addCleanup(release.set)
        self.registry.start("busy", "standbye.prepare_image",
                            lambda task: release.wait(120), exclusive=True)
        outcomes, grown = self.validate_many(extension)
        self.assertEqual(["busy"] * 16, outcomes)
        self.assertLess(grown, 64 * MIB)


class HostileImageTest(test_standbye.StandbyeTestBase):
    """Images whose root file system attacks run_image."""

    @classmethod
    def setUpClass(cls):
        loopdev.require_root()
        for tool in ("sgdisk", "sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy",
                     "xorriso", "wipefs", "partx"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("%s is not installed" % tool)
        cls.tmp = tempfile.mkdtemp(prefix="teeth-hostile-")
        cls.images = {}
        # A directory of the host that the image's /boot/grub links to.
        cls.outside = os.path.join(cls.tmp, "host-directory")
        os.mkdir(cls.outside)

        def grub_links_out(tree):
            grub = os.path.join(tree, "boot", "grub")
            shutil.rmtree(grub)
            os.symlink(cls.outside, grub)

        def sparse_kernel(tree):
            kernel = tree + "/boot/vmlinuz-%s" % (
                standbye_images.KERNEL_VERSION)
            with open(kernel, "r+b") as stream:
                stream.truncate(100 * MIB)

        linked = standbye_images.build_disk_image(
            cls.tmp, esp=False, bios_boot=True, name="grub-link.img",
            tree_hook=grub_links_out)
        cls._add("grub_link", linked["path"])
        sparse = standbye_images.build_disk_image(
            cls.tmp, name="sparse.img", tree_hook=sparse_kernel)
        cls._add("sparse", sparse["path"])
        cls.server = standbye_http.ImageServer().__enter__()
        for key, image in cls.images.items():
            image["url"] = cls.server.add("/%s" % key, image["path"])

    def prepare_and_run(self, key):
        extension = self.make_extension([self.device])
        task = self.call(extension, "prepare_image",
                         image=self.image_param(key),
                         root_device_hints={"name": self.device})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        return self.call(extension, "run_image",
                         image_id=self.images[key]["id"],
                         config_drive={"meta_data": {"uuid": "hostile"}})

    def test_boot_grub_linked_to_the_host_gets_nothing_written(self):
        if shutil.which("grub-install") is None:
            self.skipTest("grub-install is not installed")
        task = self.prepare_and_run("grub_link")
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("/boot/grub", task.msg)
        self.assertEqual([], os.listdir(self.outside))
        self.assertEqual([], self.power.actions)

    def test_sparse_kernel_is_not_copied(self):
        task = self.prepare_and_run("sparse")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        # The image's own loader boots it; nothing was materialised.
        self.assertEqual("reboot", task.result["boot"]["method"])
        kexec = os.path.join(self.work, "state", "kexec")
        self.assertFalse(os.path.exists(kexec) and os.listdir(kexec))
