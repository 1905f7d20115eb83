"""The eligibility rules and the live check before a write."""

import os
import shutil
import tempfile
from unittest import mock

from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import generic
from teeth_agent.hardware import safety
from teeth_agent.hardware import testing
from teeth_agent import units
from tests import base
from tests.unit.hardware import fixtures

MIB = units.MIB


def device(path="/dev/sdb", **fields):
    record = {"path": path, "name": path.rsplit("/", 1)[-1],
              "read_only": False, "is_agent_root": False, "mounted": False,
              "mountpoints": []}
    record.update(fields)
    return record


class TestEligibility(fixtures.FakeMachineTestCase):
    def check(self, record):
        return safety.eligibility(record, self.conf)

    def test_a_free_device_is_eligible(self):
        self.assertEqual((True, None), self.check(device()))

    def test_include_patterns(self):
        self.set_config(**{"hardware.device_include":
                           ["/dev/loop*", "/dev/sdb"]})
        self.assertEqual((True, None), self.check(device("/dev/loop3")))
        self.assertEqual((True, None), self.check(device("/dev/sdb")))
        eligible, reason = self.check(device("/dev/sda"))
        self.assertFalse(eligible)
        self.assertIn("device_include", reason)

    def test_exclude_wins_over_include(self):
        self.set_config(**{"hardware.device_include": ["/dev/sd*"],
                           "hardware.device_exclude": ["/dev/sdb"]})
        eligible, reason = self.check(device("/dev/sdb"))
        self.assertFalse(eligible)
        self.assertIn("device_exclude", reason)
        self.assertIn("/dev/sdb", reason)
        self.assertTrue(self.check(device("/dev/sdc"))[0])

    def test_rules_apply_in_order(self):
        worst = device("/dev/sdb", read_only=True, is_agent_root=True,
                       mounted=True, mountpoints=["/"])
        self.set_config(**{"hardware.device_exclude": ["/dev/sdb"]})
        self.assertIn("device_exclude", self.check(worst)[1])
        self.set_config(**{"hardware.device_exclude": []})
        self.assertEqual("read-only", self.check(worst)[1])
        worst["read_only"] = False
        self.assertEqual("holds the agent's root filesystem",
                         self.check(worst)[1])
        worst["is_agent_root"] = False
        self.assertEqual("mounted at /", self.check(worst)[1])

    def test_mounted_and_swap(self):
        self.assertEqual(
            (False, "mounted at /mnt/a, /mnt/b"),
            self.check(device(mounted=True,
                              mountpoints=["/mnt/a", "/mnt/b"])))
        self.assertEqual(
            (False, "in use as swap"),
            self.check(device(mounted=True, mountpoints=["[SWAP]"])))

    def test_unknown_flags_count_against_the_device(self):
        for field in ("read_only", "is_agent_root", "mounted"):
            eligible, reason = self.check(device(**{field: None}))
            self.assertFalse(eligible, field)
            self.assertIn("unknown", reason)


class StaleManager(generic.GenericHardwareManager):
    """Reports every device as free: a careless or cached vendor answer."""

    def list_block_devices(self):
        devices = super().list_block_devices()
        for record in devices:
            record.update(mounted=False, mountpoints=[],
                          is_agent_root=False, read_only=False)
        return devices


class TestEnsureWritable(fixtures.FakeMachineTestCase):
    def setUp(self):
        super().setUp()
        self.machine.add_disk("sdb", 2 ** 34, serial="B")
        self.machine.add_disk("sdc", 2 ** 34, serial="C")
        self.machine.add_partition("sdc", "sdc1", 2 ** 30)
        self.dispatcher = self.build_dispatcher(
            [("generic", generic.GenericHardwareManager)])

    def test_a_free_device_is_returned_as_eligible(self):
        record = safety.ensure_writable(self.machine.dev_path("sdb"),
                                        self.conf, self.dispatcher)
        self.assertEqual(("sdb", "B", True, None),
                         (record["name"], record["serial"],
                          record["eligible"], record["ineligible_reason"]))

    def test_a_device_mounted_since_the_inventory_is_refused(self):
        path = self.machine.dev_path("sdc")
        safety.ensure_writable(path, self.conf, self.dispatcher)
        self.machine.add_mount("sdc1", "/mnt/late")
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(path, self.conf, self.dispatcher)
        self.assertEqual(path, caught.exception.path)
        self.assertEqual("mounted at /mnt/late", caught.exception.reason)

    def test_a_manager_cannot_hide_a_mount_or_the_root(self):
        self.machine.add_mount("sdc1", "/")
        self.machine.add_holder("sdb", "dm-0")
        self.machine.add_mount("dm-0", "/data")
        stale = self.build_dispatcher([("stale", StaleManager)])
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(self.machine.dev_path("sdc"), self.conf,
                                   stale)
        self.assertEqual("holds the agent's root filesystem",
                         caught.exception.reason)
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(self.machine.dev_path("sdb"), self.conf,
                                   stale)
        self.assertEqual("mounted at /data", caught.exception.reason)

    def test_a_manager_cannot_hide_read_only(self):
        with open(self.machine.sys("class", "block", "sdb", "ro"),
                  "w") as stream:
            stream.write("1\n")
        stale = self.build_dispatcher([("stale", StaleManager)])
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(self.machine.dev_path("sdb"), self.conf,
                                   stale)
        self.assertEqual("read-only", caught.exception.reason)

    def test_an_excluded_device_is_refused(self):
        self.set_config(**{"hardware.device_exclude":
                           [self.machine.dev_path("sdb")]})
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(self.machine.dev_path("sdb"), self.conf,
                                   self.dispatcher)
        self.assertIn("device_exclude", caught.exception.reason)

    def test_an_unreadable_mount_table_fails_closed(self):
        os.unlink(os.path.join(self.machine.procfs_root, "self",
                               "mountinfo"))
        (record,) = [d for d in self.dispatcher.dispatch(
            "list_block_devices") if d["name"] == "sdb"]
        self.assertIsNone(record["mounted"])
        self.assertIsNone(record["is_agent_root"])
        self.assertEqual((False, "whether it holds the agent's root is "
                          "unknown"), safety.eligibility(record, self.conf))
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(self.machine.dev_path("sdb"), self.conf,
                                   self.dispatcher)
        self.assertIn("mount table cannot be read", caught.exception.reason)

    def test_an_unknown_device_is_refused(self):
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable("/dev/sdq", self.conf, self.dispatcher)
        self.assertIn("not a block device", caught.exception.reason)

    def test_the_kernel_name_is_accepted(self):
        record = safety.ensure_writable("sdb", self.conf, self.dispatcher)
        self.assertEqual(self.machine.dev_path("sdb"), record["path"])

    def test_the_error_message_names_path_and_reason(self):
        error = safety.DeviceNotEligible("/dev/sda", "read-only")
        self.assertEqual("refusing to write to /dev/sda: read-only",
                         str(error))
        self.assertNotIsInstance(error,
                                 hw_base.IncompatibleHardwareMethodError)


class TestMountinfo(fixtures.FakeMachineTestCase):
    def test_escaped_mount_points_and_optional_fields(self):
        path = self.machine.procfs_root + "/self/mountinfo"
        with open(path, "w") as stream:
            stream.write(
                "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 "
                "shared:2 - ext3 /dev/root rw,errors=continue\n"
                "garbage line\n")
        self.assertEqual(
            [safety.Mount("98:0", "/mnt/with space", "ext3", "/dev/root")],
            safety.read_mounts(self.conf))

    def test_unreadable_mountinfo_is_unknown_not_empty(self):
        self.set_config(**{"hardware.procfs_root":
                           self.machine.root + "/nowhere"})
        self.assertIsNone(safety.read_mounts(self.conf))
        self.assertEqual([], safety.read_swaps(self.conf))


class LoopBackingRuleTest(base.TestCase):
    """Rule 5 on a fake machine (the block-device case needs real device
    nodes: tests/functional/test_standbye.py::LoopBackingTest)."""

    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.root)
        self.machine = testing.FakeMachine(self.root)
        self.conf = base.make_conf(**self.machine.conf_overrides())

    def test_file_backed_loop_is_not_device_backed(self):
        self.machine.add_disk("loop0", 64 * MIB, transport="loop")
        self.assertIsNone(safety.loop_backing("loop0", self.conf))
        self.assertIsNone(safety.loop_backing("sda", self.conf))

    def test_unknown_backing_makes_the_loop_ineligible(self):
        self.machine.add_disk("loop0", 64 * MIB, transport="loop",
                              backing_file="/nonexistent/backing.img")
        with self.assertRaises(safety.BackingUnknown):
            safety.loop_backing("loop0", self.conf)
        kind, reason = safety._backing_refusal("loop0", self.conf, None, 0)
        self.assertEqual(safety.UNKNOWN, kind)
        self.assertIn("backing is unknown", reason)

    def test_block_device_backing_is_named_by_its_kernel_name(self):
        self.machine.add_disk("loop1", 64 * MIB, transport="loop",
                              backing_file="/dev/fake-sdb")
        sys_dir = os.path.join(self.conf.hardware.sysfs_root, "dev", "block")
        os.makedirs(os.path.join(self.conf.hardware.sysfs_root, "class",
                                 "block", "sdb"), exist_ok=True)
        os.makedirs(sys_dir, exist_ok=True)
        os.symlink(os.path.join(self.conf.hardware.sysfs_root, "class",
                                "block", "sdb"),
                   os.path.join(sys_dir, "8:16"))
        block_node = mock.Mock(st_mode=0o60600, st_rdev=os.makedev(8, 16))
        real_stat = os.stat
        with mock.patch("os.stat", side_effect=lambda path, *a, **k: (
                block_node if path == "/dev/fake-sdb"
                else real_stat(path, *a, **k))):
            self.assertEqual("sdb", safety.loop_backing("loop1", self.conf))
            stack = safety.device_stack("sdb", self.conf)
        # The loop device stacked on sdb counts for sdb's usage.
        self.assertIn("loop1", stack)
