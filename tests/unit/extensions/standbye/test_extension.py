import base64
import contextlib
import gzip
import json
import os
import tempfile
from unittest import mock
import uuid

from teeth_agent.disk import partitions
from teeth_agent.disk import writer
from teeth_agent.extensions import base as ext_base
from teeth_agent.extensions import standbye
from teeth_agent.fetch import errors
from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import power
from teeth_agent.hardware import safety
from teeth_agent.images import boot
from teeth_agent import processes
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base

IMAGE_ID = "6f1c2a9e-3b7d-4e8f-a0b1-c2d3e4f5a6b7"


class RecordingManager(hw_base.HardwareManager):
    """A vendor manager that records the write hooks it is called with.

    ``answers[name]`` is what a hook returns: a value, an exception to
    raise, or a list of those (one per call).
    """

    def __init__(self, conf):
        super().__init__(conf)
        self.calls = []
        self.answers = {}

    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.SERVICE_PROVIDER

    def _answer(self, name, *args):
        self.calls.append((name,) + args)
        answer = self.answers.get(name)
        if isinstance(answer, list):
            answer = answer.pop(0)
        if callable(answer):
            return answer(*args)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _called(self, name):
        return [call[1:] for call in self.calls if call[0] == name]

    def wipe_metadata(self, device):
        return self._answer("wipe_metadata", device)

    def write_image(self, path, source, hasher, progress, pin, size=None):
        return self._answer("write_image", path, source, hasher, progress,
                            pin, size)

    def convert_qcow2_image(self, path, image_path):
        return self._answer("convert_qcow2_image", path, image_path)

    def add_config_drive_partition(self, path, size, replaced):
        return self._answer("add_config_drive_partition", path, size,
                            replaced)

    def write_config_drive(self, path, partition, data, pin):
        return self._answer("write_config_drive", path, partition, data,
                            pin)


class ExtensionTestCase(base.TestCase):
    """An extension with its cache and state under a temp dir; its
    hardware is a :class:`RecordingManager` behind a real dispatcher."""

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.dir)
        self.conf = base.make_conf(**{
            "standbye.image_cache_dir": os.path.join(self.dir, "cache"),
            "standbye.work_dir": os.path.join(self.dir, "work"),
            "power.simulate": True})
        self.power = power.PowerController(simulate=True)
        dispatcher = hardware.build_dispatcher(
            [("vendor", RecordingManager)], self.conf)
        self.manager = dispatcher.managers[0][1]
        context = ext_base.ExtensionContext(self.conf, dispatcher,
                                            tasks.TaskRegistry(), self.power)
        self.extension = standbye.StandbyeExtension(context)
        self.extension.name = "standbye"

    def validate(self, method, **raw):
        spec, _ = self.extension.commands()["standbye.%s" % method]
        checked = ext_base.check_params(spec, dict(raw, task_id="t1"))
        return self.extension.validator(spec)(**checked)

    def image(self, **changes):
        image = {"id": IMAGE_ID, "urls": ["http://127.0.0.1:1/i"],
                 "hashes": {"sha256": "a" * 64}}
        image.update(changes)
        return image

    def assert_invalid(self, param, method, **raw):
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.validate(method, **raw)
        self.assertIn(param, str(caught.exception))
        return caught.exception


class StandbyeValidationTest(ExtensionTestCase):

    def test_commands_are_exposed(self):
        commands = self.extension.commands()
        self.assertEqual({"standbye.cache_images", "standbye.prepare_image",
                          "standbye.run_image"}, set(commands))
        self.assertTrue(commands["standbye.cache_images"][0].exclusive)
        self.assertTrue(commands["standbye.prepare_image"][0].exclusive)
        self.assertTrue(commands["standbye.run_image"][0].exclusive)

    def test_only_http_urls(self):
        for url in ("file:///etc/shadow", "ftp://h/i", "gopher://h/"):
            with self.subTest(url):
                self.assert_invalid("images[0].urls[0]", "cache_images",
                                    images=[self.image(urls=[url])])
                self.assert_invalid("image.urls[0]", "prepare_image",
                                    image=self.image(urls=[url]))

    def test_checksums(self):
        self.assert_invalid("images[0].hashes", "cache_images",
                            images=[self.image(hashes={"md5": "a" * 32})])
        self.assert_invalid("images[0].hashes", "cache_images",
                            images=[self.image(hashes={})])
        self.assert_invalid("image.hashes", "prepare_image",
                            image=self.image(hashes={"sha256": "xyz"}))
        self.assert_invalid("images[1].id", "cache_images",
                            images=[self.image(), self.image()])
        self.assert_invalid("images[0].id", "cache_images",
                            images=[self.image(id="not-a-uuid")])

    def test_md5_when_allowed(self):
        self.conf.set_override("allow_md5", True, "standbye")
        self.validate("cache_images",
                      images=[self.image(hashes={"md5": "a" * 32})])

    def test_prepare_by_id_needs_a_cached_image(self):
        error = self.assert_invalid("image", "prepare_image", image=IMAGE_ID)
        self.assertIn("not cached", str(error))
        self.assert_invalid("image.hashes", "prepare_image",
                            image={"id": IMAGE_ID, "urls": ["http://h/i"]})
        cache = self.extension.cache
        cache.prepare()
        with open(cache.data_path(IMAGE_ID), "wb") as stream:
            stream.write(b"x")
        cache._write_record({"id": IMAGE_ID, "size": 1, "format": "raw",
                             "algorithm": "sha256", "hexdigest": "a" * 64})
        checked = self.validate("prepare_image", image=IMAGE_ID.upper())
        self.assertEqual({"id": IMAGE_ID, "urls": None, "hashes": None,
                          "size": None}, checked["image"])

    def test_run_image_needs_the_prepared_image(self):
        drive = {"meta_data": {}}
        error = self.assert_invalid("image_id", "run_image",
                                    image_id=IMAGE_ID, config_drive=drive)
        self.assertIn("none is prepared", str(error))
        self.extension._set_prepared({"image_id": str(uuid.uuid4()),
                                      "device": "/dev/loop9"})
        error = self.assert_invalid("image_id", "run_image",
                                    image_id=IMAGE_ID, config_drive=drive)
        self.assertIn("prepared:", str(error))
        self.extension._set_prepared({"image_id": IMAGE_ID,
                                      "device": "/dev/loop9"})
        self.validate("run_image", image_id=IMAGE_ID, config_drive=drive)

    def test_prepared_image_survives_a_restart(self):
        self.extension._set_prepared({"image_id": IMAGE_ID,
                                      "device": "/dev/loop9"})
        context = self.extension.context
        again = standbye.StandbyeExtension(context)
        self.assertEqual(IMAGE_ID, again._prepared["image_id"])

    def test_config_drive_checks(self):
        self.extension._set_prepared({"image_id": IMAGE_ID,
                                      "device": "/dev/loop9"})
        for drive in ({}, {"meta_data": "x"}, {"meta_data": {}, "x": 1},
                      {"meta_data": {}, "files": {"rel": "aGk="}},
                      {"meta_data": {}, "files": {"/a": "!!"}},
                      "not base64!",
                      base64.b64encode(gzip.compress(b"no fs")).decode(), 7):
            with self.subTest(drive):
                self.assert_invalid("config_drive", "run_image",
                                    image_id=IMAGE_ID, config_drive=drive)


class InterruptedWriteTest(ExtensionTestCase):
    """The record of a write in progress, and what start-up does with it."""

    def record_path(self):
        return os.path.join(self.extension.work_dir,
                            "write-in-progress.json")

    def test_record_exists_only_while_writing(self):
        with self.extension._writing("/dev/loop9", "prepare_image",
                                     IMAGE_ID):
            with open(self.record_path()) as stream:
                record = json.load(stream)
            self.assertEqual({"device": "/dev/loop9",
                              "command": "prepare_image",
                              "image_id": IMAGE_ID},
                             {k: record[k] for k in ("device", "command",
                                                     "image_id")})
        self.assertFalse(os.path.exists(self.record_path()))
        with self.assertRaises(RuntimeError):
            with self.extension._writing("/dev/loop9", "run_image",
                                         IMAGE_ID):
                raise RuntimeError("handled by the task")
        self.assertEqual([], os.listdir(self.extension.work_dir))

    def test_prepare_image_records_before_writing(self):
        seen = []

        def write(path, source, hasher, progress, pin, size):
            seen.append(os.path.exists(self.record_path()))
            raise writer.CorruptImage("truncated")
        self.manager.answers["write_image"] = write
        with mock.patch("teeth_agent.hardware.inventory."
                        "choose_install_device",
                        return_value={"path": "/dev/loop9"}), \
                mock.patch("teeth_agent.hardware.safety.ensure_writable"):
            with self.assertRaises(tasks.TaskFailed):
                self.extension.prepare_image(
                    mock.Mock(), {"id": IMAGE_ID, "urls": ["http://h/i"],
                                  "hashes": {"sha256": "a" * 64}}, None)
        self.assertEqual([True], seen)
        self.assertFalse(os.path.exists(self.record_path()))

    def test_a_vendor_write_is_checked_after_it_returns(self):
        # A vendor write_image may ignore the pin; the extension's own
        # re-check after it returns still refuses a device that changed.
        self.manager.answers["write_image"] = {
            "format": "raw", "bytes_read": 1, "bytes_written": 1}
        checked = [{"path": "/dev/loop9", "devnum": "7:9"},
                   {"path": "/dev/loop9", "devnum": "8:16"}]
        with mock.patch("teeth_agent.hardware.inventory."
                        "choose_install_device",
                        return_value={"path": "/dev/loop9"}), \
                mock.patch("teeth_agent.hardware.safety.ensure_writable",
                           side_effect=checked), \
                mock.patch("teeth_agent.disk.partitions.tell_kernel"):
            with self.assertRaisesRegex(tasks.TaskFailed,
                                        "it was device 7:9 when it was "
                                        "checked and is 8:16 now"):
                self.extension.prepare_image(
                    mock.Mock(), {"id": IMAGE_ID, "urls": ["http://h/i"],
                                  "hashes": {"sha256": "a" * 64}}, None)
        [(path, _, _, _, pin, _)] = self.manager._called("write_image")
        self.assertEqual(("/dev/loop9", "7:9"), (path, pin["devnum"]))
        self.assertIsNone(self.extension._prepared)

    def restart_with_record(self, record, eligible=True):
        os.makedirs(self.extension.work_dir, exist_ok=True)
        with open(self.record_path(), "w") as stream:
            stream.write(record if isinstance(record, str)
                         else json.dumps(record))
        error = None if eligible else safety.DeviceNotEligible(
            "/dev/loop9", "mounted")
        with mock.patch("teeth_agent.hardware.safety.ensure_writable",
                        side_effect=error) as ensure:
            with self.assertLogs("teeth_agent.extensions.standbye",
                                 "ERROR") as logs:
                again = standbye.StandbyeExtension(self.extension.context)
                again.start()
        self.assertFalse(os.path.exists(self.record_path()))
        return (again, ensure, self.manager._called("wipe_metadata"),
                "\n".join(logs.output))

    def test_the_constructor_wipes_nothing(self):
        # Building the extension (the plugin loader does) must not touch a
        # disk: the recovery waits for start().
        os.makedirs(self.extension.work_dir, exist_ok=True)
        record = {"device": "/dev/loop9", "command": "run_image",
                  "image_id": IMAGE_ID}
        with open(self.record_path(), "w") as stream:
            json.dump(record, stream)
        partial = os.path.join(self.extension.cache.directory,
                               ".x.partial-1")
        os.makedirs(self.extension.cache.directory, exist_ok=True)
        with open(partial, "w"):
            pass
        with mock.patch("teeth_agent.hardware.safety.ensure_writable") \
                as ensure:
            again = standbye.StandbyeExtension(self.extension.context)
            ensure.assert_not_called()
            self.assertEqual([], self.manager.calls)
            self.assertTrue(os.path.exists(self.record_path()))
            self.assertTrue(os.path.exists(partial))
            with self.assertLogs("teeth_agent.extensions.standbye",
                                 "ERROR"):
                again.start()
        self.assertEqual([({"path": "/dev/loop9"},)],
                         self.manager._called("wipe_metadata"))
        self.assertFalse(os.path.exists(self.record_path()))
        self.assertFalse(os.path.exists(partial))

    def test_start_up_wipes_the_interrupted_device(self):
        self.extension._set_prepared({"image_id": IMAGE_ID,
                                      "device": "/dev/loop9"})
        again, ensure, wipe, logs = self.restart_with_record(
            {"device": "/dev/loop9", "command": "run_image",
             "image_id": IMAGE_ID})
        ensure.assert_called_once_with("/dev/loop9", self.conf,
                                       self.extension.hardware)
        self.assertEqual([({"path": "/dev/loop9"},)], wipe)
        self.assertIn("wiping", logs)
        self.assertIsNone(again._prepared)
        self.assertFalse(os.path.exists(self.extension._prepared_path()))

    def test_start_up_leaves_a_device_no_longer_eligible(self):
        _, _, wipe, logs = self.restart_with_record(
            {"device": "/dev/loop9", "command": "prepare_image",
             "image_id": IMAGE_ID}, eligible=False)
        self.assertEqual([], wipe)
        self.assertIn("NOT wiping /dev/loop9", logs)
        self.assertIn("mounted", logs)

    def test_unreadable_record_is_reported(self):
        _, ensure, wipe, logs = self.restart_with_record("{not json")
        ensure.assert_not_called()
        self.assertEqual([], wipe)
        self.assertIn("half-written", logs)

    def test_no_record_no_action(self):
        standbye.StandbyeExtension(self.extension.context).start()
        self.assertEqual([], self.manager.calls)

    def test_a_failing_wipe_is_logged(self):
        self.manager.answers["wipe_metadata"] = OSError(5, "I/O error")
        _, _, wipe, logs = self.restart_with_record(
            {"device": "/dev/loop9", "command": "run_image",
             "image_id": IMAGE_ID})
        self.assertEqual([({"path": "/dev/loop9"},)], wipe)
        self.assertIn("wiping the signatures of /dev/loop9 failed", logs)


class Qcow2StagingTest(ExtensionTestCase):
    """qcow2 images staged in work_dir, converted under limits."""

    def test_staging_room_is_free_space_minus_the_reserve(self):
        self.conf.set_override("cache_reserve", 1000, "standbye")
        os.makedirs(self.extension.work_dir)
        stats = mock.Mock(f_bavail=10, f_frsize=4096)
        with mock.patch("os.statvfs", return_value=stats) as statvfs:
            self.assertEqual(40960 - 1000, self.extension._staging_room())
        statvfs.assert_called_once_with(self.extension.work_dir)
        self.conf.set_override("cache_reserve", 40960, "standbye")
        with mock.patch("os.statvfs", return_value=stats):
            with self.assertRaisesRegex(errors.NoSpace, "no room"):
                self.extension._staging_room()

    @mock.patch("teeth_agent.disk.blockdev.device_size",
                return_value=1 << 30)
    @mock.patch("teeth_agent.images.qcow2.inspect", return_value=1 << 20)
    def test_convert_goes_through_the_managers(self, *mocks):
        # The qemu-img command line (and its CPU limit) is the generic
        # manager's: tests/unit/hardware/test_write_hooks.py.
        written = self.extension._convert_qcow2(mock.Mock(), "/w/i.qcow2",
                                                "/dev/loop9")
        self.assertEqual({"bytes_written": 1 << 20}, written)
        self.assertEqual([("/dev/loop9", "/w/i.qcow2")],
                         self.manager._called("convert_qcow2_image"))
        self.assertEqual([], self.manager._called("wipe_metadata"))

    @mock.patch("teeth_agent.disk.blockdev.device_size",
                return_value=1 << 30)
    @mock.patch("teeth_agent.images.qcow2.inspect", return_value=1 << 20)
    def test_a_failed_conversion_is_wiped(self, *mocks):
        # Whatever a (vendor) converter raises, what it may have written
        # is wiped, and its own error is what is reported.
        for error in (processes.ProcessError(["qemu-img"], 1, "", "bad"),
                      hardware.HardwareManagerError("vendor tool failed")):
            with self.subTest(type(error).__name__):
                self.manager.calls.clear()
                self.manager.answers["convert_qcow2_image"] = error
                with self.assertRaises(type(error)) as caught:
                    self.extension._convert_qcow2(mock.Mock(), "/w/i.qcow2",
                                                  "/dev/loop9")
                self.assertIs(error, caught.exception)
                self.assertEqual([({"path": "/dev/loop9"},)],
                                 self.manager._called("wipe_metadata"))


class ConfigDriveHooksTest(ExtensionTestCase):
    """run_image's config drive, written through the managers' hooks."""

    def write(self, added):
        self.manager.answers["add_config_drive_partition"] = added
        patches = {
            "teeth_agent.disk.blockdev.sector_size": {"return_value": 512},
            "teeth_agent.images.configdrive.decode_prebuilt": {
                "return_value": b"drive"},
            "teeth_agent.images.configdrive.fit_to_sector_size": {
                "side_effect": lambda data, sector, limit: data * 20},
            "teeth_agent.hardware.safety.ensure_writable": {
                "return_value": {"path": "/dev/loop9", "devnum": None}},
            "teeth_agent.disk.partitions.read_table": {
                "return_value": {"partitions": [
                    {"number": 1, "name": "root"},
                    {"number": 4, "name": "config-2"}]}},
            "teeth_agent.disk.partitions.tell_kernel": {},
            "teeth_agent.disk.partitions.partition_node": {
                "side_effect": lambda path, number, *args:
                    "%sp%d" % (path, number)},
            "teeth_agent.images.boot.probe": {
                "side_effect": lambda node: {
                    "LABEL": "root" if node.endswith("p1") else "config-2",
                    "TYPE": "iso9660"}},
        }
        with contextlib.ExitStack() as stack:
            mocks = {target.rsplit(".", 1)[1]: stack.enter_context(
                mock.patch(target, **kwargs))
                for target, kwargs in patches.items()}
            return (self.extension._write_config_drive("/dev/loop9", "x"),
                    mocks)

    def test_the_old_drive_is_replaced_and_the_new_one_checked(self):
        added = {"number": 4, "offset": 1 << 20, "size": 4096}
        drive, mocks = self.write(added)
        self.assertEqual({"partition": 4, "node": "/dev/loop9p4",
                          "size": 100, "type": "iso9660"}, drive)
        self.assertEqual([("/dev/loop9", 100, [4])],
                         self.manager._called("add_config_drive_partition"))
        [(path, partition, data, pin)] = self.manager._called(
            "write_config_drive")
        self.assertEqual(("/dev/loop9", added, b"drive" * 20),
                         (path, partition, data))
        # Checked when the pin is made, after the partition edit and
        # after the write.
        self.assertEqual(3, mocks["ensure_writable"].call_count)

    def test_a_partition_smaller_than_the_drive_is_refused(self):
        # Whatever a (vendor) partitioner answers, nothing is written
        # past the partition it made.
        with self.assertRaisesRegex(
                partitions.PartitionError, "holds 64 bytes, not the 100"):
            self.write({"number": 4, "offset": 1 << 20, "size": 64})
        self.assertEqual([], self.manager._called("write_config_drive"))


class StreamFormatTest(ExtensionTestCase):
    """prepare_image picks the way to write from the stream itself."""

    def setUp(self):
        super().setUp()
        for target, kwargs in (
                ("teeth_agent.disk.blockdev.device_size",
                 {"return_value": 1 << 30}),
                ("teeth_agent.images.qcow2.inspect",
                 {"return_value": 1 << 20}),
                ("os.statvfs", {"return_value": mock.Mock(
                    f_bavail=1 << 20, f_frsize=4096)})):
            patcher = mock.patch(target, **kwargs)
            patcher.start()
            self.addCleanup(patcher.stop)

    def image(self):
        return {"id": IMAGE_ID, "urls": ["http://127.0.0.1:1/i"],
                "hashes": {"sha256": "a" * 64}, "size": None}

    @mock.patch("teeth_agent.fetch.download.download_to_file")
    def test_qcow2_in_the_stream_is_staged_and_converted(
            self, download_to_file):
        def fetched(urls, hashes, path, **kwargs):
            with open(path, "wb") as stream:
                stream.write(b"QFI\xfb" + bytes(100))
        download_to_file.side_effect = fetched
        self.manager.answers["write_image"] = {"format": "qcow2",
                                               "needs_staging": True}
        written = self.extension._write_downloaded(mock.Mock(), self.image(),
                                                   "/dev/loop9")
        self.assertEqual({"format": "qcow2", "source": "download",
                          "bytes_written": 1 << 20}, written)
        self.assertEqual(1, len(self.manager._called("write_image")))
        kwargs = download_to_file.call_args[1]
        self.assertEqual((1 << 20) * 4096 - self.conf.standbye.cache_reserve,
                         kwargs["max_size"])
        staged = download_to_file.call_args[0][2]
        self.assertEqual([("/dev/loop9", staged)],
                         self.manager._called("convert_qcow2_image"))
        self.assertFalse(os.path.exists(staged))

    def test_a_manager_must_say_what_it_wrote(self):
        for answer in (None, {}, ["raw"]):
            with self.subTest(answer):
                self.manager.answers["write_image"] = answer
                with self.assertRaisesRegex(hardware.HardwareManagerError,
                                            "not what was written"):
                    self.extension._write_image("/dev/loop9", None, None,
                                                None, None, None)

    @mock.patch("teeth_agent.fetch.download.download_to_file")
    def test_staged_file_is_detected_again(self, download_to_file):
        # The server answered qcow2 first, then something else: what was
        # downloaded and verified decides, and it is not given to qemu-img.
        def fetched(urls, hashes, path, **kwargs):
            with open(path, "wb") as stream:
                stream.write(gzip.compress(b"raw"))
        download_to_file.side_effect = fetched
        self.manager.answers["write_image"] = [
            {"format": "qcow2", "needs_staging": True},
            {"format": "gzip", "bytes_read": 23, "bytes_written": 3}]
        written = self.extension._write_downloaded(mock.Mock(), self.image(),
                                                   "/dev/loop9")
        self.assertEqual("gzip", written["format"])
        self.assertEqual([], self.manager._called("convert_qcow2_image"))
        self.assertEqual(2, len(self.manager._called("write_image")))


class FindBootCmdlineTest(ExtensionTestCase):
    """How run_image completes the kernel command line."""

    def run_find(self, options, has_etc=True):
        found_entry = {"kernel": "/boot/k", "initrds": [],
                       "options": options, "source": "vmlinuz"}
        table = {"partitions": [{"number": 1}, {"number": 2}]}
        with mock.patch("teeth_agent.images.boot.probe",
                        return_value={"TYPE": "ext4", "UUID": "U-1"}), \
                mock.patch("teeth_agent.images.boot.mounted_read_only") \
                as mounted, \
                mock.patch("teeth_agent.images.boot.resolve_inside",
                           return_value="/x" if has_etc else None), \
                mock.patch("teeth_agent.images.boot.find_kernel",
                           return_value=found_entry), \
                mock.patch("teeth_agent.images.boot.copy_out",
                           side_effect=lambda root, path, dest, **kw: dest):
            mounted.return_value.__enter__.return_value = "/mnt"
            return self.extension._find_boot("/dev/loop9", table,
                                             lambda n: "/dev/loop9p%d" % n,
                                             exclude=2)

    def test_adds_root_when_missing(self):
        found = self.run_find("quiet")
        self.assertEqual("root=UUID=U-1 ro quiet", found["cmdline"])
        self.assertEqual(1, found["partition"])

    def test_keeps_the_entry_root(self):
        self.assertEqual("root=/dev/sda1 ro",
                         self.run_find("root=/dev/sda1 ro")["cmdline"])

    def test_no_root_file_system_means_no_kexec(self):
        self.assertIsNone(self.run_find("quiet", has_etc=False))

    def test_stage_kexec_and_reboot(self):
        result, action = self.extension._stage_kexec(None)
        self.assertEqual("reboot", result["method"])
        self.assertEqual(self.power.reboot, action)
        found = {"kernel": "/boot/k", "initrd": "/boot/i", "cmdline": "ro",
                 "partition": 1, "source": "bls", "kernel_copy": "/w/k",
                 "initrd_copy": "/w/i"}
        result, action = self.extension._stage_kexec(found)
        self.assertEqual("kexec", result["method"])
        self.assertEqual(self.power.kexec, action)
        self.assertEqual([{"action": "kexec_load", "kernel": "/w/k",
                           "initrd": "/w/i", "cmdline": "ro"}],
                         self.power.actions)
        self.assertEqual(json.loads(json.dumps(result)), result)


class FindBootFailuresTest(ExtensionTestCase):
    """Unreadable or unsafe boot files mean "no kernel", not an error."""

    table = {"partitions": [{"number": 1}]}

    def find(self, mount_error=None, **patches):
        defaults = {
            "probe": mock.Mock(return_value={"TYPE": "ext4", "UUID": "U"}),
            "resolve_inside": mock.Mock(return_value="/x"),
            "find_kernel": mock.Mock(return_value={
                "kernel": "/boot/k", "initrds": [], "options": "ro",
                "source": "vmlinuz"}),
            "copy_out": mock.Mock(
                side_effect=lambda root, path, dest, **kw: dest),
        }
        defaults.update(patches)
        with mock.patch.multiple("teeth_agent.images.boot", **defaults), \
                mock.patch("teeth_agent.images.boot.mounted_read_only") \
                as mounted:
            mounted.return_value.__enter__.return_value = "/mnt"
            mounted.side_effect = mount_error
            return self.extension._find_boot(
                "/dev/loop9", self.table, lambda n: "/dev/loop9p%d" % n,
                exclude=None)

    def test_unsafe_kernel_path_means_no_kernel(self):
        self.assertIsNone(self.find(copy_out=mock.Mock(
            side_effect=boot.UnsafePath("/boot/k is not a regular file"))))
        self.assertFalse(os.path.exists(os.path.join(
            self.extension.work_dir, "kexec")))

    def test_link_loop_while_searching_means_no_kernel(self):
        self.assertIsNone(self.find(find_kernel=mock.Mock(
            side_effect=boot.UnsafePath("too many symbolic links"))))
        self.assertIsNone(self.find(resolve_inside=mock.Mock(
            side_effect=boot.UnsafePath("too many symbolic links"))))

    def test_unreadable_file_means_no_kernel(self):
        self.assertIsNone(self.find(copy_out=mock.Mock(
            side_effect=OSError(40, "Too many levels of symbolic links"))))

    def test_mount_point_failure_means_no_kernel(self):
        self.assertIsNone(self.find(mount_error=OSError(16, "busy")))

    def test_kernel_found_otherwise(self):
        found = self.find()
        self.assertEqual("/boot/k", found["kernel"])
        self.assertEqual("root=UUID=U ro ro", found["cmdline"])


class CopyBootFilesTest(ExtensionTestCase):
    """Kernels and initrds copied out of a (fake) mounted image."""

    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.dir, "root")
        os.makedirs(os.path.join(self.root, "boot"))
        for name, size in (("k", 10), ("i1", 3000), ("i2", 3000)):
            with open(os.path.join(self.root, "boot", name), "wb") as out:
                out.write(os.urandom(size))

    def entry(self, *initrds):
        return {"kernel": "/boot/k", "options": "", "source": "vmlinuz",
                "initrds": ["/boot/%s" % name for name in initrds]}

    def test_initrds_are_concatenated(self):
        found = self.extension._copy_boot_files(self.root,
                                                self.entry("i1", "i2"))
        with open(found["initrd_copy"], "rb") as stream:
            self.assertEqual(6000, len(stream.read()))
        self.assertEqual(["/boot/i1", "/boot/i2"], found["initrd"])

    def test_initrds_total_is_capped(self):
        for name in ("big1", "big2"):
            with open(os.path.join(self.root, "boot", name), "wb") as out:
                out.write(os.urandom(700 * 1024))
        self.conf.set_override("max_initrd_size", 1024 * 1024, "standbye")
        self.extension._copy_boot_files(self.root, self.entry("big1"))
        with self.assertRaisesRegex(boot.UnsafePath, "larger than"):
            self.extension._copy_boot_files(self.root,
                                            self.entry("big1", "big2"))
