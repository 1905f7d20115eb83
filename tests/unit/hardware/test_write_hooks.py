"""The write hooks of the hardware-manager interface: what the generic
manager does with them, and how the dispatcher hands them to a vendor."""

from unittest import mock

from teeth_agent.disk import writer
from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import generic
from teeth_agent import processes
from tests import base


class GenericWriteHooksTest(base.TestCase):
    """The generic manager delegates to the images and blockdev code."""

    def setUp(self):
        super().setUp()
        self.conf = base.make_conf()
        self.manager = generic.GenericHardwareManager(self.conf)

    @mock.patch("teeth_agent.processes.execute", return_value=("", ""))
    def test_convert_uses_the_configured_cpu_limit(self, execute):
        self.conf.set_override("qemu_img_convert_cpu_limit", 77, "standbye")
        self.manager.convert_qcow2_image("/dev/loop9", "/w/i.qcow2")
        argv = execute.call_args[0]
        self.assertEqual(("prlimit", "--as=1073741824", "--cpu=77",
                          "qemu-img", "convert"), argv[:5])
        self.assertEqual(("/w/i.qcow2", "/dev/loop9"), argv[-2:])

    @mock.patch("teeth_agent.disk.writer.write_stream")
    def test_write_image_streams_with_the_pin_and_limits(self, write_stream):
        self.conf.set_override("write_buffer_size", 1 << 20, "standbye")
        self.conf.set_override("write_buffer_count", 3, "standbye")
        self.conf.set_override("pin_checksum_thread", False, "standbye")
        write_stream.return_value = {"format": "raw", "bytes_read": 1,
                                     "bytes_written": 1}
        recheck = mock.Mock()
        answer = self.manager.write_image(
            "/dev/loop9", "SOURCE", "HASHER", "PROGRESS",
            {"devnum": "7:9", "recheck": recheck}, size=5)
        self.assertEqual("raw", answer["format"])
        write_stream.assert_called_once_with(
            "SOURCE", "/dev/loop9", "HASHER", "PROGRESS", 5, 1 << 20, 3,
            memory_limit=self.conf.standbye.decompression_memory_limit,
            qcow2_buffer=self.conf.standbye.qcow2_stream_buffer,
            pin_hash=False, devnum="7:9", recheck=recheck)

    @mock.patch("teeth_agent.disk.writer.write_stream",
                side_effect=writer.NeedsStaging("qcow2"))
    def test_qcow2_is_answered_not_raised(self, write_stream):
        with mock.patch.object(writer, "release",
                               wraps=writer.release) as release:
            self.assertEqual({"format": "qcow2", "needs_staging": True},
                             self.manager.write_image("/dev/loop9", None,
                                                      None, None, None))
        # What the attempt held is let go before the staged copy starts.
        release.assert_called_once_with(write_stream.side_effect)

    @mock.patch("teeth_agent.disk.blockdev.wipe_signatures")
    def test_wipe_forgets_partitions_unless_there_are_none(self, wipe):
        self.manager.wipe_metadata({"path": "/dev/loop9"})
        self.manager.wipe_metadata({"path": "/dev/loop9",
                                    "partitions": ["/dev/loop9p1"]})
        self.manager.wipe_metadata({"path": "/dev/loop9", "partitions": []})
        self.assertEqual([mock.call("/dev/loop9", forget_partitions=True),
                          mock.call("/dev/loop9", forget_partitions=True),
                          mock.call("/dev/loop9", forget_partitions=False)],
                         wipe.call_args_list)

    def test_config_drive_partition_replaces_the_old_ones_first(self):
        calls = mock.Mock()
        calls.add_partition_at_end.return_value = {
            "number": 3, "offset": 1 << 20, "size": 1 << 20}
        with mock.patch.multiple("teeth_agent.disk.partitions",
                                 delete_partition=calls.delete_partition,
                                 add_partition_at_end=calls
                                 .add_partition_at_end):
            added = self.manager.add_config_drive_partition(
                "/dev/loop9", 4096, [5, 4])
        self.assertEqual(3, added["number"])
        self.assertEqual([mock.call.delete_partition("/dev/loop9", 5),
                          mock.call.delete_partition("/dev/loop9", 4),
                          mock.call.add_partition_at_end("/dev/loop9",
                                                         4096)],
                         calls.mock_calls)

    @mock.patch("teeth_agent.images.boot.install_grub")
    def test_boot_loader_is_grub_for_bios(self, install_grub):
        found = {"kernel": "/boot/k", "fs_uuid": "U"}
        self.assertEqual("grub", self.manager.install_boot_loader(
            "/dev/loop9", "/dev/loop9p1", "ext4", found))
        install_grub.assert_called_once_with("/dev/loop9", "/dev/loop9p1",
                                             "ext4", "i386-pc", found)


class Generic(generic.GenericHardwareManager):
    """The generic manager, answering only for the hooks under test."""

    def list_block_devices(self):
        return []


class VendorWriter(hw_base.HardwareManager):
    """A vendor manager writing images its own way (no ``size``: an
    implementation may take a subset of the optional parameters)."""

    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.SERVICE_PROVIDER

    def write_image(self, path, source, hasher, progress, pin):
        if path == "/dev/declined":
            raise hw_base.IncompatibleHardwareMethodError()
        if path == "/dev/broken":
            error = OSError(5, "vendor write failed")
            error.add_note("nothing was written")
            raise error
        return {"format": "raw", "bytes_read": 0, "bytes_written": 0,
                "by": "vendor", "pinned": pin}


class DispatchWriteHooksTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dispatcher = hardware.build_dispatcher(
            [("generic", Generic), ("vendor", VendorWriter)],
            base.make_conf())

    def test_the_vendor_writes_first(self):
        self.assertEqual(["vendor", "generic"],
                         self.dispatcher.implementers("write_image"))
        answer = self.dispatcher.call("write_image", "/dev/loop9", None,
                                      None, None, {"devnum": "7:9"},
                                      size=10)
        self.assertEqual(("vendor", {"devnum": "7:9"}),
                         (answer["by"], answer["pinned"]))

    @mock.patch("teeth_agent.disk.writer.write_stream",
                return_value={"format": "raw"})
    def test_a_declining_vendor_leaves_it_to_generic(self, write_stream):
        self.dispatcher.call("write_image", "/dev/declined", None, None,
                             None, None)
        write_stream.assert_called_once()

    def test_call_raises_what_the_manager_raised(self):
        with self.assertRaises(hardware.DispatchError) as wrapped:
            self.dispatcher.dispatch("write_image", "/dev/broken", None,
                                     None, None, None)
        self.assertEqual("vendor", wrapped.exception.manager)
        with self.assertLogs("teeth_agent.hardware", "ERROR") as logs, \
                self.assertRaises(OSError) as caught:
            self.dispatcher.call("write_image", "/dev/broken", None, None,
                                 None, None)
        self.assertNotIsInstance(caught.exception, hardware.DispatchError)
        self.assertEqual(["nothing was written"], caught.exception.__notes__)
        self.assertIn("vendor failed in write_image", "\n".join(logs.output))

    def test_a_misspelt_hook_is_refused_at_load(self):
        class Typo(VendorWriter):
            def install_boot_loadr(self, path, root, fs_type, boot):
                return "grub"

        with self.assertRaisesRegex(hardware.UnknownManagerMethod,
                                    "did you mean install_boot_loader"):
            hardware.build_dispatcher([("typo", Typo)], base.make_conf())

    def test_a_hook_without_the_pin_is_refused_at_load(self):
        class NoPin(hw_base.HardwareManager):
            def evaluate_hardware_support(self):
                return hw_base.HardwareSupport.SERVICE_PROVIDER

            def write_config_drive(self, path, partition, data):
                pass

        with self.assertRaisesRegex(hardware.ManagerSignatureMismatch,
                                    "does not take pin"):
            hardware.build_dispatcher([("nopin", NoPin)], base.make_conf())

    def test_processes_error_keeps_its_type(self):
        class Failing(VendorWriter):
            def convert_qcow2_image(self, path, image_path):
                raise processes.ProcessError(["qemu-img"], 1, "", "bad")

        dispatcher = hardware.build_dispatcher([("failing", Failing)],
                                               base.make_conf())
        with self.assertLogs("teeth_agent.hardware", "ERROR"), \
                self.assertRaises(processes.ProcessError):
            dispatcher.call("convert_qcow2_image", "/dev/loop9", "/w/i")
