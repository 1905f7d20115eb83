"""The inventory and safety rules on real loop devices (needs root).

Every device touched here is a loop device this test creates over a sparse
file; ``[hardware] device_include`` names exactly those paths, so other
block devices of the host never appear.
"""

import json
import os
import subprocess
import tempfile
import unittest

from teeth_agent import hardware
from teeth_agent.hardware import generic
from teeth_agent.hardware import inventory
from teeth_agent.hardware import safety
from teeth_agent.hardware import testing
from tests.functional import loopdev

MIB = 1024 * 1024


def make_conf(**hardware_options):
    return testing.make_conf(**{"hardware." + name: value
                                for name, value in hardware_options.items()})


def lsblk(device):
    out = subprocess.run(
        ["lsblk", "--json", "--bytes", "--nodeps", "-o",
         "NAME,SIZE,LOG-SEC,PHY-SEC", device],
        capture_output=True, text=True, check=True).stdout
    return json.loads(out)["blockdevices"][0]


class TestInventoryOnLoopDevices(unittest.TestCase):
    def setUp(self):
        super().setUp()
        loopdev.require_root()
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)
        self.free = self.loops.create(64 * MIB)
        self.busy = self.loops.create(96 * MIB, sector_size=4096)
        self.excluded = self.loops.create(32 * MIB)
        subprocess.run(["mkfs.ext4", "-q", "-F", self.busy],
                       capture_output=True, check=True)
        self.mountpoint = tempfile.mkdtemp(prefix="teeth-inventory-mnt-")
        self.addCleanup(os.rmdir, self.mountpoint)
        mounted = subprocess.run(["mount", self.busy, self.mountpoint],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            raise unittest.SkipTest("cannot mount ext4 here: %s"
                                    % mounted.stderr.strip())
        # Runs before the loop devices are detached (cleanups are LIFO).
        self.addCleanup(subprocess.run, ["umount", self.mountpoint],
                        capture_output=True, check=False)
        self.conf = make_conf(
            device_include=[self.free, self.busy, self.excluded],
            device_exclude=[self.excluded])
        self.dispatcher = hardware.build_dispatcher(
            [("generic", generic.GenericHardwareManager)], self.conf)

    def test_lists_exactly_the_included_devices_with_their_geometry(self):
        found = inventory.collect_inventory(self.dispatcher, self.conf)
        disks = {disk["path"]: disk for disk in found["disks"]}
        self.assertEqual(sorted([self.free, self.busy]), sorted(disks))
        for path in (self.free, self.busy):
            expected = lsblk(path)
            self.assertEqual(
                (int(expected["size"]), int(expected["log-sec"]),
                 int(expected["phy-sec"])),
                (disks[path]["size_bytes"],
                 disks[path]["logical_sector_size"],
                 disks[path]["physical_sector_size"]), path)
            self.assertEqual("loop", disks[path]["transport"])
            self.assertFalse(disks[path]["read_only"])
        self.assertEqual(4096, disks[self.busy]["logical_sector_size"])
        self.assertEqual((True, None),
                         (disks[self.free]["eligible"],
                          disks[self.free]["ineligible_reason"]))
        self.assertFalse(disks[self.busy]["eligible"])
        self.assertIn("mounted", disks[self.busy]["ineligible_reason"])
        self.assertIn(self.mountpoint, disks[self.busy]["mountpoints"])

    def test_ensure_writable_refuses_the_mounted_device(self):
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(self.busy, self.conf, self.dispatcher)
        self.assertIn(self.mountpoint, caught.exception.reason)
        record = safety.ensure_writable(self.free, self.conf,
                                        self.dispatcher)
        self.assertEqual(self.free, record["path"])

    def test_excluded_device_does_not_appear_and_is_refused(self):
        paths = [d["path"] for d in inventory.block_devices(self.dispatcher,
                                                            self.conf)]
        self.assertNotIn(self.excluded, paths)
        # The device is real and attached: only the config hides it.
        self.assertIn(self.excluded, [
            d["path"] for d in self.dispatcher.dispatch(
                "list_block_devices")])
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            safety.ensure_writable(self.excluded, self.conf,
                                   self.dispatcher)
        self.assertIn("device_exclude", caught.exception.reason)

    def test_install_device_is_the_free_one(self):
        chosen = inventory.choose_install_device(
            self.dispatcher, self.conf, {"name": self.free})
        self.assertEqual(self.free, chosen["path"])
        with self.assertRaises(hardware.HardwareManagerError):
            inventory.choose_install_device(self.dispatcher, self.conf,
                                            {"name": self.busy})
