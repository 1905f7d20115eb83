"""decom.disk_erase dismantles what a tenant stacked on the disks first,
reports each step, and refuses stacks it may not touch."""

import functools
import os
from unittest import mock

from teeth_agent.hardware import base as hardware_base
from teeth_agent.hardware import erase
from teeth_agent.hardware import generic
from teeth_agent.hardware import teardown
from teeth_agent.hardware import testing
from teeth_agent import processes
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base
from tests.unit.extensions.decom import runner
from tests.unit.hardware import test_teardown


class StackedDisksCase(testing.HardwareManagerTestCase, base.TestCase):
    """Virtio disks of 4 MiB in a fake sysfs, erased by the generic
    manager."""

    SIZE = 4 * erase.MIB

    def setUp(self):
        super().setUp()
        self.dispatcher = self.build_dispatcher(
            [("generic", generic.GenericHardwareManager)])

    def add_device(self, name):
        path = self.machine.add_disk(name, size_bytes=self.SIZE,
                                     transport="virtio", serial=name.upper())
        with open(path, "wb") as stream:
            stream.write(os.urandom(self.SIZE))
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            self.skipTest("the temporary directory does not support "
                          "O_DIRECT")
        return path

    def use_tools(self, leave=(), by_dm_name=None, fail=()):
        tools = test_teardown.StackingTools(
            self.machine, by_dm_name or {"vg0-data": "dm-0"}, leave, fail)
        original = processes._spawn
        processes._spawn = tools.spawn
        self.addCleanup(setattr, processes, "_spawn", original)
        return tools

    def erase(self, devices):
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        return runner.run_command(extension, registry, "disk_erase",
                                  {"devices": devices})

    def erase_all(self):
        """``decom.disk_erase`` without ``devices``: every disk."""
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        return runner.run_command(extension, registry, "disk_erase", {})


class DiskEraseTeardownTest(StackedDisksCase):
    def setUp(self):
        super().setUp()
        self.paths = [self.add_device(name) for name in ("vda", "vdb", "vdc")]
        # md0 = RAID1 of vda and vdb, LVM vg0/data on it.
        for name in ("vda", "vdb"):
            self.machine.add_holder(name, "md0")
        self.machine.add_holder("md0", "dm-0", dm_name="vg0-data")
        test_teardown.set_dm(self.machine, "dm-0", "vg0-data", "LVM-xyz")

    def test_the_array_and_volume_are_dismantled_then_both_disks_erased(self):
        tools = self.use_tools()
        task = self.erase(["/dev/vda", "/dev/vdb"])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        first, second = task.result["devices"]
        self.assertEqual(("erased", "erased"),
                         (first["outcome"], second["outcome"]))
        commands = [step["command"] for step in first["teardown"]]
        self.assertEqual(
            ["vgchange --activate n vg0", "mdadm --stop /dev/md0",
             "mdadm --zero-superblock %s" % self.paths[0],
             "mdadm --zero-superblock %s" % self.paths[1]], commands)
        self.assertEqual(first["teardown"], second["teardown"])
        # Dismantled once for both disks, before either was written.
        self.assertEqual(1, sum(call[:2] == ["mdadm", "--stop"]
                                for call in tools.calls))
        for path in self.paths[:2]:
            with open(path, "rb") as stream:
                self.assertEqual(self.SIZE, stream.read().count(0))

    def test_an_array_reaching_a_disk_not_listed_is_refused_up_front(self):
        tools = self.use_tools()
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase",
                               {"devices": ["/dev/vdc", "/dev/vda"]})
        self.assertEqual(("devices[1]", "holder"),
                         (caught.exception.details["param"],
                          caught.exception.details["kind"]))
        self.assertIn("also on vdb, which is not being erased",
                      caught.exception.msg)
        self.assertEqual([], registry.statuses())
        self.assertEqual([], tools.calls)

    def test_an_array_reaching_a_disk_out_of_scope_is_left_alone(self):
        tools = self.use_tools()
        self.set_config(**{"hardware.device_exclude": [self.paths[1]]})
        with open(self.paths[0], "rb") as stream:
            before = stream.read()
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        task = runner.run_command(extension, registry, "disk_erase", {})
        self.assertEqual(tasks.ERROR, task.state)
        entries = {e["path"]: e for e in task.details["devices"]}
        entry = entries[self.paths[0]]
        self.assertEqual(("skipped", "holder"),
                         (entry["outcome"], entry["reason"]))
        self.assertIn("also on vdb, which is not being erased",
                      entry["detail"])
        self.assertEqual("excluded", entries[self.paths[1]]["outcome"])
        self.assertEqual("erased", entries[self.paths[2]]["outcome"])
        self.assertFalse(any(call[0] in ("mdadm", "vgchange")
                             for call in tools.calls))
        with open(self.paths[0], "rb") as stream:
            self.assertEqual(before, stream.read())

    def test_a_mounted_volume_refuses_the_whole_stack(self):
        self.use_tools()
        self.machine.add_mount("dm-0", "/srv/data")
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase",
                               {"devices": ["/dev/vda", "/dev/vdb"]})
        self.assertEqual("holder", caught.exception.details["kind"])

    def test_a_layer_left_behind_fails_its_disks(self):
        self.use_tools(leave={"md0"})
        task = self.erase(["/dev/vda", "/dev/vdb", "/dev/vdc"])
        self.assertEqual(tasks.ERROR, task.state)
        entries = {e["path"]: e for e in task.details["devices"]}
        for path in self.paths[:2]:
            self.assertEqual("failed", entries[path]["outcome"])
            self.assertIn("teardown failed: md0 is still stacked on",
                          entries[path]["error"])
            self.assertIsNone(entries[path]["method"])
        self.assertEqual("erased", entries[self.paths[2]]["outcome"])
        self.assertEqual([], entries[self.paths[2]]["teardown"])
        self.assertEqual(sorted(self.paths[:2]),
                         sorted(task.details["not_erased"]))

    def test_a_failed_step_fails_the_stack_s_disks_with_the_steps(self):
        tools = self.use_tools(fail={"vgchange"})
        with open(self.paths[0], "rb") as stream:
            before = stream.read()
        task = self.erase(["/dev/vda", "/dev/vdb", "/dev/vdc"])
        self.assertEqual(tasks.ERROR, task.state)
        entries = {e["path"]: e for e in task.details["devices"]}
        for path in self.paths[:2]:
            entry = entries[path]
            self.assertEqual(("failed", None),
                             (entry["outcome"], entry["method"]))
            self.assertEqual(
                "teardown failed: tearing down vg0 failed: vgchange "
                "--activate n vg0 failed (exit status 5): Logical volume "
                "vg0/data in use.", entry["error"])
            self.assertEqual(
                [{"layer": "vg0", "kind": "lvm", "layers": ["dm-0"],
                  "command": "vgchange --activate n vg0",
                  "result": "failed", "error": "vgchange --activate n vg0 "
                  "failed (exit status 5): Logical volume vg0/data in "
                  "use."}], entry["teardown"])
            self.assertEqual(path.rsplit("/", 1)[1].upper(), entry["serial"])
        self.assertEqual("erased", entries[self.paths[2]]["outcome"])
        # Nothing below the failed step ran, nothing of the disks written.
        self.assertFalse(any(call[0] == "mdadm" for call in tools.calls))
        with open(self.paths[0], "rb") as stream:
            self.assertEqual(before, stream.read())

    def test_a_stack_no_manager_can_dismantle_fails_its_disks(self):
        class Declining(generic.GenericHardwareManager):
            def dismantle_stack(self, stack):
                raise hardware_base.IncompatibleHardwareMethodError()

        self.dispatcher = self.build_dispatcher([("declining", Declining)])
        tools = self.use_tools()
        task = self.erase(["/dev/vda", "/dev/vdb"])
        self.assertEqual(tasks.ERROR, task.state)
        for entry in task.details["devices"]:
            self.assertEqual(("failed", [], "teardown failed: no hardware "
                              "manager can dismantle dm-0, md0"),
                             (entry["outcome"], entry["teardown"],
                              entry["error"]))
        self.assertEqual([], tools.calls)


class DefaultScopeStacksTest(StackedDisksCase):
    """Without ``devices`` the disks under a stack are found, the stack
    dismantled and the disks erased; the stacked device itself is no disk
    of the result."""

    def setUp(self):
        super().setUp()
        self.paths = [self.add_device(name) for name in ("vda", "vdb")]

    def test_a_bcache_set_is_torn_down_and_not_listed_as_a_disk(self):
        for name in ("vda", "vdb"):
            self.machine.add_holder(name, "bcache0")
        stop = self.machine.sys("class", "block", "bcache0", "bcache",
                                "stop")
        os.makedirs(os.path.dirname(stop))
        open(stop, "w").close()
        # The kernel gives bcache0 the size of its backing device.
        with open(self.machine.sys("class", "block", "bcache0", "size"),
                  "w") as stream:
            stream.write("%d\n" % (self.SIZE // 512))
        self.tools.answer(["wipefs"])
        self.tools.answer(["partx"])
        stopped = functools.partial(
            teardown.dismantle,
            sleep=lambda _: test_teardown.remove_layer(self.machine,
                                                       "bcache0"))
        with mock.patch.object(teardown, "dismantle", stopped):
            task = self.erase_all()
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entries = task.result["devices"]
        self.assertEqual(self.paths, [entry["path"] for entry in entries])
        self.assertEqual(["erased", "erased"],
                         [entry["outcome"] for entry in entries])
        self.assertEqual(
            ["echo 1 > %s" % stop,
             "wipefs --all --force %s" % self.paths[0],
             "wipefs --all --force %s" % self.paths[1]],
            [step["command"] for step in entries[0]["teardown"]])
        self.assertEqual(entries[0]["teardown"], entries[1]["teardown"])

    def test_a_drbd_device_fails_its_disk_and_is_not_listed(self):
        # DRBD replicates writes to a peer: never erased through, never
        # dismantled by dmsetup; its disk fails, saying why.
        self.machine.add_holder("vda", "drbd1")
        tools = self.use_tools()
        task = self.erase_all()
        self.assertEqual(tasks.ERROR, task.state)
        entries = {entry["path"]: entry for entry in task.details["devices"]}
        self.assertEqual(self.paths, sorted(entries))
        self.assertEqual("failed", entries[self.paths[0]]["outcome"])
        self.assertIn("teardown failed: drbd1 is not an md, device-mapper or "
                      "bcache device; the generic manager cannot dismantle "
                      "it", entries[self.paths[0]]["error"])
        self.assertIsNone(entries[self.paths[0]]["method"])
        self.assertEqual("erased", entries[self.paths[1]]["outcome"])
        self.assertFalse(any(call[0] == "dmsetup" for call in tools.calls))
        self.assertEqual([self.paths[0]], task.details["not_erased"])
