"""Teardown before erase: which stacks are dismantled (and which refused),
in which order, with which commands, on a fake sysfs."""

import os
import shutil
import subprocess
from unittest import mock

from teeth_agent.hardware import generic
from teeth_agent.hardware import teardown
from teeth_agent.hardware import testing
from teeth_agent import processes
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


def volume_group_layers(machine, group):
    """The kernel names of the dm devices of LVM volume group ``group``
    in the fake sysfs (by their dm name, as LVM names them)."""
    block = machine.sys("class", "block")
    found = []
    for name in sorted(os.listdir(block)):
        path = os.path.join(block, name, "dm", "name")
        if os.path.exists(path):
            with open(path) as stream:
                if teardown.lvm_volume_group(stream.read().strip()) == group:
                    found.append(name)
    return found


class StackingTools:
    """Fake mdadm/vgchange/cryptsetup/dmsetup/multipath/wipefs that take
    the layers out of the fake sysfs as the real ones would (unless told
    to leave them), with the arguments the teardown really gives them."""

    def __init__(self, machine, by_dm_name, leave=(), fail=()):
        self.machine = machine
        self.by_dm_name = by_dm_name
        self.leave = set(leave)
        #: Programs that exit 5 having done nothing.
        self.fail = set(fail)
        self.calls = []

    def spawn(self, argv, input_data, timeout, env, binary):
        self.calls.append(list(argv))
        if argv[0] in self.fail:
            return subprocess.CompletedProcess(
                argv, 5, "", "Logical volume vg0/data in use.")
        layers = []
        if argv[:2] == ["mdadm", "--stop"]:
            layers = [os.path.basename(argv[2])]
        elif argv[:2] == ["cryptsetup", "close"] or \
                argv[:2] == ["multipath", "-f"]:
            layers = [self.by_dm_name[argv[2]]]
        elif argv[:3] == ["vgchange", "--activate", "n"] and len(argv) == 4:
            # Every volume of the group and the hidden layers under them.
            layers = volume_group_layers(self.machine, argv[3])
        elif argv[:3] == ["dmsetup", "remove", "--retry"] and \
                len(argv) == 4:
            layers = [self.by_dm_name.get(argv[3], argv[3])]
        elif argv[:2] == ["dmsetup", "remove"] and len(argv) == 3:
            layers = [self.by_dm_name.get(argv[2], argv[2])]
        elif argv[:2] == ["dmsetup", "message"]:
            if argv[3:] != ["0", "fail_if_no_path"] or \
                    argv[2] not in self.by_dm_name:
                raise AssertionError("unexpected message %s" % argv)
        elif argv[0] not in ("wipefs", "mdadm", "partx"):
            raise AssertionError("unexpected tool %s" % argv)
        for layer in layers:
            if layer not in self.leave:
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

    def test_a_volume_group_with_a_volume_elsewhere_is_refused(self):
        # vgchange would take vg0-other (on sdc, not being erased) down too.
        for disk in ("sda", "sdc"):
            self.machine.add_disk(disk, 1 << 30)
        self.machine.add_holder("sda", "dm-0", dm_name="vg0-data")
        set_dm(self.machine, "dm-0", "vg0-data", "LVM-a")
        self.machine.add_holder("sdc", "dm-7", dm_name="vg0-other")
        set_dm(self.machine, "dm-7", "vg0-other", "LVM-b")
        self.machine.add_holder("sdc", "dm-8", dm_name="vg1-other")
        set_dm(self.machine, "dm-8", "vg1-other", "LVM-c")
        found = teardown.plan(["sda"], self.conf)
        self.assertEqual((), found.stacks)
        self.assertEqual({"sda": "dm-0, dm-7, dm-8 is stacked on it and "
                                 "also on sdc, which is not being erased; "
                                 "the agent dismantles only stacks wholly on "
                                 "the disks it erases"}, found.refused)
        both = teardown.plan(["sda", "sdc"], self.conf)
        self.assertEqual({}, both.refused)
        self.assertEqual([("sda", "sdc")],
                         [stack.disks for stack in both.stacks])

    def test_a_volume_group_stacked_on_itself_is_refused(self):
        # vg0-b sits on a mapping of vg0-a: no order deactivates vg0
        # with nothing on it.
        self.machine.add_disk("sda", 1 << 30)
        self.machine.add_holder("sda", "dm-0", dm_name="vg0-a")
        set_dm(self.machine, "dm-0", "vg0-a", "LVM-a")
        self.machine.add_holder("dm-0", "dm-1", dm_name="inner")
        set_dm(self.machine, "dm-1", "inner", "CRYPT-LUKS2-inner")
        self.machine.add_holder("dm-1", "dm-2", dm_name="vg0-b")
        set_dm(self.machine, "dm-2", "vg0-b", "LVM-b")
        found = teardown.plan(["sda"], self.conf)
        self.assertEqual((), found.stacks)
        self.assertEqual("the layers dm-0, dm-1, dm-2 cannot be dismantled "
                         "in any order (volume group vg0 is stacked on "
                         "itself through dm-1)", found.refused["sda"])

    def test_volume_group_of_a_dm_name(self):
        for dm_name, group in (("vg0-root", "vg0"), ("my--vg-lv--1", "my-vg"),
                               ("vg0-pool-tpool", "vg0"),
                               ("vg0-pool_tmeta", "vg0"),
                               ("vg0-origin-real", "vg0"),
                               ("vg0-snap-cow", "vg0"),
                               ("vg0-r_rimage_0", "vg0"),
                               ("a--b---c", "a-b-"),
                               ("novolume", None), ("vg0-", None),
                               ("--x", None), ("", None), (None, None)):
            self.assertEqual(group, teardown.lvm_volume_group(dm_name),
                             dm_name)

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
             ["vgchange", "--activate", "n", "vg0"],
             ["mdadm", "--stop", "/dev/md0"],
             ["mdadm", "--zero-superblock", os.path.join(dev, "sda1")],
             ["mdadm", "--zero-superblock", os.path.join(dev, "sdb1")]],
            tools.calls)
        self.assertEqual(["done"] * 5, [step["result"] for step in steps])
        self.assertEqual(["dm-1", "vg0", "md0", "sda1", "sdb1"],
                         [step["layer"] for step in steps])
        self.assertEqual({}, teardown.remaining(["sda", "sdb"], self.conf))

    def test_a_failed_step_stops_and_keeps_the_steps(self):
        build_raid_lvm_crypt(self.machine)
        self.tools.answer(["cryptsetup", "close"])
        self.tools.answer(["vgchange"], stderr="Logical volume vg0/root in "
                          "use.", returncode=5)
        stack = teardown.plan(["sda", "sdb"], self.conf).stacks[0]
        with self.assertRaises(teardown.TeardownError) as caught:
            teardown.dismantle(self.manager(),
                               stack.as_dict(self.machine.dev_root))
        self.assertIn("tearing down vg0 failed", str(caught.exception))
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

    def dismantle(self, disks, by_dm_name, which=None):
        """Plan the stack on ``disks`` and dismantle it with fake tools;
        ``(tools, steps)``. ``which``: where multipath is (None: not
        installed)."""
        tools = StackingTools(self.machine, by_dm_name)
        self.patch_spawn(tools)
        found = teardown.plan(disks, self.conf)
        self.assertEqual({}, found.refused)
        self.assertEqual(1, len(found.stacks))
        with mock.patch.object(processes, "which",
                               lambda program: which):
            steps = self.manager().dismantle_stack(
                found.stacks[0].as_dict(self.machine.dev_root))
        self.assertEqual({}, teardown.remaining(disks, self.conf))
        self.assertEqual(["done"] * len(steps),
                         [step["result"] for step in steps])
        return tools, steps

    def lvm(self, lower, name, dm_name):
        for device in lower:
            self.machine.add_holder(device, name, dm_name=dm_name)
        set_dm(self.machine, name, dm_name, "LVM-%s" % dm_name)

    def test_a_thin_pool_is_deactivated_with_its_group(self):
        # Its hidden volumes would fail lvchange one by one (and dmsetup
        # would pull them from under the pool).
        self.machine.add_disk("sda", 1 << 30)
        self.lvm(["sda"], "dm-0", "vg0-pool_tmeta")
        self.lvm(["sda"], "dm-1", "vg0-pool_tdata")
        self.lvm(["dm-0", "dm-1"], "dm-2", "vg0-pool-tpool")
        self.lvm(["dm-2"], "dm-3", "vg0-pool")
        self.lvm(["dm-2"], "dm-4", "vg0-thin1")
        self.lvm(["dm-2"], "dm-5", "vg0-thin--2")
        tools, steps = self.dismantle(["sda"], {})
        dev = self.machine.dev_root
        self.assertEqual([["vgchange", "--activate", "n", "vg0"],
                          ["wipefs", "--all", "--force",
                           os.path.join(dev, "sda")]], tools.calls)
        self.assertEqual(("vg0", "lvm"), (steps[0]["layer"],
                                          steps[0]["kind"]))
        self.assertEqual(["dm-%d" % n for n in range(6)], steps[0]["layers"])
        self.assertEqual(("sda", "lvm"), (steps[1]["layer"],
                                          steps[1]["kind"]))

    def test_a_raid_volume_on_two_disks_is_one_vgchange_and_two_labels(self):
        for disk in ("sda", "sdb"):
            self.machine.add_disk(disk, 1 << 30)
        images = []
        for index, disk in enumerate(("sda", "sdb")):
            for part, name in (("rimage", "dm-%d" % (2 * index)),
                               ("rmeta", "dm-%d" % (2 * index + 1))):
                self.lvm([disk], name, "vg-1-r_%s_%d"
                         .replace("vg-1", "vg--1") % (part, index))
                images.append(name)
        self.lvm(images, "dm-4", "vg--1-r")
        tools, steps = self.dismantle(["sda", "sdb"], {})
        dev = self.machine.dev_root
        self.assertEqual([["vgchange", "--activate", "n", "vg-1"]] +
                         [["wipefs", "--all", "--force",
                           os.path.join(dev, disk)]
                          for disk in ("sda", "sdb")], tools.calls)
        self.assertEqual(["dm-0", "dm-1", "dm-2", "dm-3", "dm-4"],
                         steps[0]["layers"])

    def test_snapshots_and_a_mapping_on_a_volume_go_in_order(self):
        # dm-crypt on a plain volume sits lower than the snapshot volumes
        # of the same group, yet must be closed before the group goes.
        self.machine.add_disk("sda", 1 << 30)
        self.lvm(["sda"], "dm-0", "vg2-origin-real")
        self.lvm(["sda"], "dm-1", "vg2-snap-cow")
        self.lvm(["dm-0"], "dm-2", "vg2-origin")
        self.lvm(["dm-0", "dm-1"], "dm-3", "vg2-snap")
        self.lvm(["sda"], "dm-4", "vg2-plain")
        self.machine.add_holder("dm-4", "dm-5", dm_name="secret")
        set_dm(self.machine, "dm-5", "secret", "CRYPT-LUKS2-x-secret")
        tools, steps = self.dismantle(["sda"], {"secret": "dm-5"})
        self.assertEqual([["cryptsetup", "close", "secret"],
                          ["vgchange", "--activate", "n", "vg2"],
                          ["wipefs", "--all", "--force",
                           os.path.join(self.machine.dev_root, "sda")]],
                         tools.calls)

    def test_a_group_on_an_array_and_a_disk_goes_before_the_array(self):
        # Volume a is on md0, volume b on sdc itself: the group is
        # deactivated before md0 is stopped.
        for disk in ("sda", "sdb", "sdc"):
            self.machine.add_disk(disk, 1 << 30)
        for disk in ("sda", "sdb"):
            self.machine.add_holder(disk, "md0")
        self.lvm(["md0"], "dm-0", "vg0-a")
        self.lvm(["sdc"], "dm-1", "vg0-b")
        tools, _ = self.dismantle(["sda", "sdb", "sdc"], {})
        dev = self.machine.dev_root
        # md0's PV label goes with the md data it sits in (erased next).
        self.assertEqual(
            [["vgchange", "--activate", "n", "vg0"],
             ["mdadm", "--stop", "/dev/md0"],
             ["wipefs", "--all", "--force", os.path.join(dev, "sdc")],
             ["mdadm", "--zero-superblock", os.path.join(dev, "sda")],
             ["mdadm", "--zero-superblock", os.path.join(dev, "sdb")]],
            tools.calls)

    def test_a_pv_directly_on_a_disk_has_its_label_wiped(self):
        self.machine.add_disk("sda", 1 << 30)
        self.lvm(["sda"], "dm-0", "vg0-data")
        tools, steps = self.dismantle(["sda"], {})
        self.assertEqual(
            ["vgchange --activate n vg0",
             "wipefs --all --force %s" % self.machine.dev_path("sda")],
            [step["command"] for step in steps])

    def test_luks_directly_on_a_disk_has_its_header_wiped(self):
        self.machine.add_disk("sda", 1 << 30)
        self.machine.add_holder("sda", "dm-0", dm_name="luks-1234")
        set_dm(self.machine, "dm-0", "luks-1234", "CRYPT-LUKS2-1234-x")
        tools, steps = self.dismantle(["sda"], {"luks-1234": "dm-0"})
        self.assertEqual(
            [("dm-0", "crypt", "cryptsetup close luks-1234"),
             ("sda", "crypt",
              "wipefs --all --force %s" % self.machine.dev_path("sda"))],
            [(step["layer"], step["kind"], step["command"])
             for step in steps])

    def test_another_dm_device_is_removed_and_its_disk_not_wiped(self):
        self.machine.add_disk("sda", 1 << 30)
        self.machine.add_holder("sda", "dm-3", dm_name="plain")
        set_dm(self.machine, "dm-3", "plain", "")
        tools, steps = self.dismantle(["sda"], {"plain": "dm-3"})
        self.assertEqual([["dmsetup", "remove", "plain"]], tools.calls)
        self.assertEqual([("dm-3", "dm")], [(step["layer"], step["kind"])
                                            for step in steps])

    def multipath_map(self):
        """mpatha over sda and sdb, a kpartx partition map on it."""
        for disk in ("sda", "sdb"):
            self.machine.add_disk(disk, 1 << 30)
            self.machine.add_holder(disk, "dm-4", dm_name="mpatha")
        set_dm(self.machine, "dm-4", "mpatha", "mpath-3600a0b80")
        self.machine.add_holder("dm-4", "dm-5", dm_name="mpatha1")
        set_dm(self.machine, "dm-5", "mpatha1", "part1-mpath-3600a0b80")
        return {"mpatha": "dm-4", "mpatha1": "dm-5"}

    def test_multipath_without_multipath_tools_is_removed_by_dmsetup(self):
        names = self.multipath_map()
        tools, steps = self.dismantle(["sda", "sdb"], names, which=None)
        self.assertEqual(
            [["dmsetup", "remove", "mpatha1"],
             ["dmsetup", "message", "mpatha", "0", "fail_if_no_path"],
             ["dmsetup", "remove", "--retry", "mpatha"]], tools.calls)
        self.assertEqual(["dm", "multipath", "multipath"],
                         [step["kind"] for step in steps])

    def test_multipath_with_multipath_tools_is_flushed(self):
        names = self.multipath_map()
        tools, _ = self.dismantle(["sda", "sdb"], names,
                                  which="/usr/sbin/multipath")
        self.assertEqual([["dmsetup", "remove", "mpatha1"],
                          ["multipath", "-f", "mpatha"]], tools.calls)

    def patch_spawn(self, tools):
        from teeth_agent import processes
        original = processes._spawn
        processes._spawn = tools.spawn
        self.addCleanup(setattr, processes, "_spawn", original)
