"""A hostile image or server: what the standbye extension's run_image and
prepare_image must not do for them (the image modules' own refusals are
tested in tests/unit/images/).
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
from teeth_agent.hardware import power
from teeth_agent.images import boot
from teeth_agent.images import configdrive
from teeth_agent import protocol
from teeth_agent import tasks
from teeth_agent import units
from tests import base

MIB = units.MIB


IMAGE_ID = "6f1c2a9e-3b7d-4e8f-a0b1-c2d3e4f5a6b7"


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
