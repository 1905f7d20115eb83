"""Teardown before erase: which stacks are dismantled (and which refused),
in which order, with which commands, on a fake sysfs."""

import os
import shutil
import subprocess

from teeth_agent.hardware import generic
from teeth_agent.hardware import teardown
from teeth_agent.hardware import testing
from tests import base


def set_dm(machine, name, dm_name, uuid):
    directory = machine.sys("class", "block", name, "dm")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "name"), "w") as stream:
        stream.write(dm_name + "\n")
    with open(os.path.join(directory, "uuid"), "w") as stream:
        stream.write(uuid + "\n")


def build_raid_lvm_crypt(machine, disks=("sda", "sdb")):
    """md0 (RAID1 of the first partitions) < LVM vg0/root (dm-0) <
    dm-crypt "secret" (dm-1), as a tenant would leave it."""
    for disk in disks:
        machine.add_disk(disk, 1 << 30)
        machine.add_partition(disk, disk + "1", 1 << 29)
        machine.add_holder(disk + "1", "md0")
    machine.add_holder("md0", "dm-0", dm_name="vg0-root")
    set_dm(machine, "dm-0", "vg0-root", "LVM-abcdefgh")
    machine.add_holder("dm-0", "dm-1", dm_name="secret")
    set_dm(machine, "dm-1", "secret", "CRYPT-LUKS2-1234-secret")


def remove_layer(machine, name):
    """What the kernel does when a layer is stopped: it leaves sysfs."""
    block = machine.sys("class", "block")
    for entry in os.listdir(block):
        for below in [entry] + os.listdir(os.path.join(block, entry)):
            link = os.path.join(block, entry, below, "holders", name) \
                if below != entry else os.path.join(block, entry,
                                                    "holders", name)
            if os.path.islink(link):
                os.unlink(link)
    shutil.rmtree(os.path.join(block, name), ignore_errors=True)


class StackingTools:
    """Fake mdadm/lvchange/cryptsetup/dmsetup/multipath/wipefs that take the
    layer out of the fake sysfs as the real ones would (unless told to
    leave it)."""

    def __init__(self, machine, by_dm_name, leave=()):
        self.machine = machine
        self.by_dm_name = by_dm_name
        self.leave = set(leave)
        self.calls = []

    def spawn(self, argv, input_data, timeout, env, binary):
        self.calls.append(list(argv))
        layer = None
        if argv[:2] == ["mdadm", "--stop"]:
            layer = os.path.basename(argv[2])
        elif argv[:2] == ["cryptsetup", "close"] or \
                argv[:2] == ["multipath", "-f"]:
            layer = self.by_dm_name[argv[2]]
        elif argv[0] == "lvchange":
            layer = self.by_dm_name[argv[-1].replace("/", "-")]
        elif argv[:2] == ["dmsetup", "remove"]:
            layer = self.by_dm_name.get(argv[2], argv[2])
        elif argv[0] not in ("wipefs", "mdadm", "partx"):
            raise AssertionError("unexpected tool %s" % argv)
        if layer and layer not in self.leave:
            remove_layer(self.machine, layer)
        return subprocess.CompletedProcess(argv, 0, "", "")


class PlanTest(testing.HardwareManagerTestCase, base.TestCase):
    def test_a_stack_wholly_on_the_disks_is_ordered_top_first(self):
        build_raid_lvm_crypt(self.machine)
        found = teardown.plan(["sda", "sdb"], self.conf)
        self.assertEqual({}, found.refused)
        self.assertEqual(1, len(found.stacks))
        stack = found.stacks[0]
        self.assertEqual(("sda", "sdb"), stack.disks)
        self.assertEqual([("dm-1", "crypt", "secret"),
                          ("dm-0", "lvm", "vg0-root"), ("md0", "md", None)],
                         [(layer.name, layer.kind, layer.dm_name)
                          for layer in stack.layers])
        self.assertEqual((("sda1", "md"), ("sdb1", "md")), stack.members)
        self.assertEqual(("sda1", "sdb1"), stack.layers[2].lower)

    def test_a_partitioned_array_is_one_stack_ordered_by_its_layers(self):
        for disk in ("sda", "sdb"):
            self.machine.add_disk(disk, 1 << 30)
            self.machine.add_holder(disk, "md0")
        self.machine.add_partition("md0", "md0p1", 1 << 29)
        self.machine.add_holder("md0p1", "dm-0", dm_name="vg-a")
        set_dm(self.machine, "dm-0", "vg-a", "LVM-a")
        found = teardown.plan(["sda", "sdb"], self.conf)
        self.assertEqual({}, found.refused)
        stack = found.stacks[0]
        self.assertEqual(("sda", "sdb"), stack.disks)
        self.assertEqual(["dm-0", "md0"],
                         [layer.name for layer in stack.layers])
        self.assertEqual((("sda", "md"), ("sdb", "md")), stack.members)

    def test_disks_without_holders_need_no_teardown(self):
        self.machine.add_disk("sda", 1 << 30)
        self.machine.add_partition("sda", "sda1", 1 << 29)
        self.assertEqual(teardown.Plan((), {}),
                         teardown.plan(["sda"], self.conf))

    def test_a_stack_reaching_another_disk_is_refused(self):
        build_raid_lvm_crypt(self.machine, ("sda", "sdc"))
        found = teardown.plan(["sda"], self.conf)
        self.assertEqual((), found.stacks)
        self.assertEqual(["sda"], list(found.refused))
        self.assertIn("also on sdc, which is not being erased",
                      found.refused["sda"])

    def test_a_mount_anywhere_in_the_stack_refuses_every_disk_of_it(self):
        build_raid_lvm_crypt(self.machine)
        self.machine.add_mount("dm-1", "/srv/tenant")
        found = teardown.plan(["sda", "sdb"], self.conf)
        self.assertEqual((), found.stacks)
        self.assertEqual(["sda", "sdb"], sorted(found.refused))
        self.assertIn("mounted at /srv/tenant", found.refused["sdb"])

    def test_swap_on_a_layer_refuses_the_stack(self):
        build_raid_lvm_crypt(self.machine)
        self.machine.add_swap("dm-0")
        found = teardown.plan(["sda", "sdb"], self.conf)
        self.assertIn("[SWAP]", found.refused["sda"])

    def test_kinds(self):
        self.machine.add_disk("sda", 1 << 30)
        self.machine.add_holder("sda", "bcache0")
        self.machine.add_holder("sda", "dm-4", dm_name="mpatha")
        set_dm(self.machine, "dm-4", "mpatha", "mpath-3600a0b80")
        self.machine.add_holder("sda", "dm-5", dm_name="plain")
        self.machine.add_holder("sda", "drbd1")
        self.assertEqual(("bcache", "multipath", "dm", "other"), tuple(
            teardown.layer_kind(name, self.conf)
            for name in ("bcache0", "dm-4", "dm-5", "drbd1")))

    def test_lvm_names(self):
        self.assertEqual(("vg0", "root"), teardown.lvm_names("vg0-root"))
        self.assertEqual(("my-vg", "lv-1"),
                         teardown.lvm_names("my--vg-lv--1"))
        self.assertIsNone(teardown.lvm_names("novolume"))


class DismantleTest(testing.HardwareManagerTestCase, base.TestCase):
    def manager(self):
        return generic.GenericHardwareManager(self.conf)

    def test_commands_top_first_then_labels(self):
        build_raid_lvm_crypt(self.machine)
        tools = StackingTools(self.machine, {"vg0-root": "dm-0",
                                             "secret": "dm-1"})
        self.patch_spawn(tools)
        stack = teardown.plan(["sda", "sdb"], self.conf).stacks[0]
        steps = self.manager().dismantle_stack(
            stack.as_dict(self.machine.dev_root))
        dev = self.machine.dev_root
        self.assertEqual(
            [["cryptsetup", "close", "secret"],
             ["lvchange", "--activate", "n", "vg0/root"],
             ["mdadm", "--stop", "/dev/md0"],
             ["mdadm", "--zero-superblock", os.path.join(dev, "sda1")],
             ["mdadm", "--zero-superblock", os.path.join(dev, "sdb1")]],
            tools.calls)
        self.assertEqual(["done"] * 5, [step["result"] for step in steps])
        self.assertEqual(["dm-1", "dm-0", "md0", "sda1", "sdb1"],
                         [step["layer"] for step in steps])
        self.assertEqual({}, teardown.remaining(["sda", "sdb"], self.conf))

    def test_a_failed_step_stops_and_keeps_the_steps(self):
        build_raid_lvm_crypt(self.machine)
        self.tools.answer(["cryptsetup", "close"])
        self.tools.answer(["lvchange"], stderr="Logical volume vg0/root in "
                          "use.", returncode=5)
        stack = teardown.plan(["sda", "sdb"], self.conf).stacks[0]
        with self.assertRaises(teardown.TeardownError) as caught:
            teardown.dismantle(self.manager(),
                               stack.as_dict(self.machine.dev_root))
        self.assertIn("tearing down dm-0 failed", str(caught.exception))
        self.assertEqual(["done", "failed"],
                         [step["result"] for step in caught.exception.steps])
        self.assertFalse(any(call[0] == "mdadm" for call in self.tools.calls))

    def test_bcache_is_stopped_through_sysfs(self):
        self.machine.add_disk("sdb", 1 << 30)
        self.machine.add_disk("sdc", 1 << 30)
        self.machine.add_holder("sdb", "bcache0")
        self.machine.add_holder("sdc", "bcache0")
        stop = self.machine.sys("class", "block", "bcache0", "bcache",
                                "stop")
        os.makedirs(os.path.dirname(stop))
        open(stop, "w").close()
        unregister = self.machine.sys("class", "block", "sdc", "bcache",
                                      "set", "unregister")
        os.makedirs(os.path.dirname(unregister))
        open(unregister, "w").close()
        self.tools.answer(["wipefs"])
        stack = teardown.plan(["sdb", "sdc"], self.conf).stacks[0]

        def sleep(_):
            remove_layer(self.machine, "bcache0")

        steps = teardown.dismantle(self.manager(),
                                   stack.as_dict(self.machine.dev_root),
                                   sleep=sleep)
        with open(unregister) as stream:
            self.assertEqual("1\n", stream.read())
        self.assertEqual(["echo 1 > %s" % unregister, "echo 1 > %s" % stop],
                         [step["command"] for step in steps[:2]])
        self.assertEqual([["wipefs", "--all", "--force",
                           os.path.join(self.machine.dev_root, name)]
                          for name in ("sdb", "sdc")], self.tools.calls)

    def test_a_bcache_that_does_not_stop_fails(self):
        self.machine.add_disk("sdb", 1 << 30)
        self.machine.add_holder("sdb", "bcache0")
        stop = self.machine.sys("class", "block", "bcache0", "bcache",
                                "stop")
        os.makedirs(os.path.dirname(stop))
        open(stop, "w").close()
        stack = teardown.plan(["sdb"], self.conf).stacks[0]
        now = [0.0]

        def sleep(seconds):
            now[0] += seconds

        with self.assertRaises(teardown.TeardownError) as caught:
            teardown.dismantle(self.manager(),
                               stack.as_dict(self.machine.dev_root),
                               sleep=sleep, clock=lambda: now[0])
        self.assertIn("did not stop within 30 s", str(caught.exception))

    def patch_spawn(self, tools):
        from teeth_agent import processes
        original = processes._spawn
        processes._spawn = tools.spawn
        self.addCleanup(setattr, processes, "_spawn", original)
