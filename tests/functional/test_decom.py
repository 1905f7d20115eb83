"""decom on real loop devices and tools (root only).

Every device touched here is a loop device this module created over a
sparse file (tests/functional/loopdev.py) and ``[hardware] device_include``
lists exactly those paths, so nothing else on the machine is visible to
the agent. Devices are detached in cleanup, also after a failure.
"""

import copy
import mmap
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from teeth_agent import hardware
from teeth_agent.hardware import generic
from teeth_agent.hardware import inventory
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base
from tests.functional import loopdev
from tests.unit.extensions.decom import runner

MIB = 1024 * 1024


def read_direct(device):
    """Every byte of ``device``, read with O_DIRECT (not the page cache)."""
    fd = os.open(device, os.O_RDONLY | os.O_DIRECT)
    buffer = mmap.mmap(-1, 4 * MIB)
    chunks = []
    try:
        while True:
            count = os.readv(fd, [buffer])
            if not count:
                break
            chunks.append(buffer[:count])
    finally:
        buffer.close()
        os.close(fd)
    return b"".join(chunks)


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True)


class DecomOnLoopDevicesTest(unittest.TestCase):
    def setUp(self):
        super().setUp()
        loopdev.require_root()
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)

    def extension(self, devices, **overrides):
        overrides.setdefault("hardware.device_include", list(devices))
        state_dir = tempfile.mkdtemp(prefix="teeth-decom-state-")
        self.addCleanup(shutil.rmtree, state_dir, ignore_errors=True)
        overrides.setdefault("state_dir", state_dir)
        conf = base.make_conf(**overrides)
        dispatcher = hardware.build_dispatcher(
            [("generic", generic.GenericHardwareManager)], conf)
        return runner.make_extension(conf, dispatcher)

    def random_device(self, size=48 * MIB):
        return self.loops.create(size, fill="random")

    def test_erase_leaves_zeroes_and_no_signatures(self):
        device = self.random_device()
        run("sgdisk", "--new=1:2048:+16M", "--typecode=1:8300", device)
        run("partx", "-a", device)
        self.addCleanup(subprocess.run, ["partx", "-d", device],
                        capture_output=True)
        run("mkfs.ext4", "-q", "-F", device + "p1")
        self.assertIn("gpt", run("wipefs", device).stdout)
        self.assertIn("ext4", run("blkid", "-p", device + "p1").stdout)
        extension, registry, _ = self.extension([device])
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": [device]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual("overwrite", entry["method"])
        self.assertEqual("Clear", entry["nist_category"])
        self.assertTrue(entry["verified"])
        self.assertEqual(48 * MIB, entry["bytes"])
        self.assertIn({"method": "ata_security_erase",
                       "reason": "%s is not an ATA device" % device},
                      entry["skipped_methods"])
        data = read_direct(device)
        self.assertEqual(48 * MIB, len(data))
        self.assertEqual(len(data), data.count(0))
        self.assertEqual("", run("wipefs", device).stdout)
        self.assertFalse(os.path.exists(device + "p1"))
        with open(self.loops.backing_file(device), "rb") as stream:
            backing = stream.read()
        self.assertEqual(len(backing), backing.count(0))

    def test_two_devices_in_one_task_with_monotonic_percent(self):
        first = self.random_device(64 * MIB)
        second = self.random_device(32 * MIB)
        extension, registry, recorder = self.extension(
            [first, second], **{"decom.erase_block_size": 1 * MIB})
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": [first, second]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual([first, second],
                         [e["path"] for e in task.result["devices"]])
        self.assertTrue(all(e["verified"] for e in task.result["devices"]))
        percents = recorder.percents("task-1")
        self.assertGreater(len(set(percents)), 2)
        self.assertEqual(sorted(percents), percents)
        self.assertLess(max(percents), 100.0)
        for device in (first, second):
            data = read_direct(device)
            self.assertEqual(len(data), data.count(0))

    def test_default_devices_are_the_included_eligible_ones(self):
        device = self.random_device()
        extension, registry, _ = self.extension([device])
        task = runner.run_command(extension, registry, "disk_erase", {})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        outcomes = {e["path"]: e["outcome"] for e in task.result["devices"]}
        self.assertEqual("erased", outcomes.pop(device))
        # Every other disk of this machine is accounted for, untouched.
        self.assertEqual([], [path for path, outcome in outcomes.items()
                              if outcome != "excluded"])

    def test_default_scope_fails_naming_the_mounted_device(self):
        """Issue 11.2: without devices, a mounted disk in scope is not
        silently left out: the others are erased, the task fails."""
        free = self.random_device()
        mounted = self.random_device()
        run("mkfs.ext4", "-q", "-F", mounted)
        mountpoint = tempfile.mkdtemp(prefix="teeth-decom-mnt-")
        self.addCleanup(os.rmdir, mountpoint)
        run("mount", mounted, mountpoint)
        self.addCleanup(subprocess.run, ["umount", mountpoint],
                        capture_output=True)
        mounted_before = read_direct(mounted)
        extension, registry, _ = self.extension([free, mounted])
        task = runner.run_command(extension, registry, "disk_erase", {})
        self.assertEqual(tasks.ERROR, task.state)
        entries = {e["path"]: e for e in task.details["devices"]}
        self.assertEqual("erased", entries[free]["outcome"])
        self.assertTrue(entries[free]["verified"])
        self.assertEqual("overwrite", entries[free]["method"])
        self.assertEqual("Clear", entries[free]["nist_category"])
        data = read_direct(free)
        self.assertEqual(len(data), data.count(0))
        self.assertEqual({"path": mounted, "outcome": "skipped",
                          "reason": "mounted",
                          "detail": "mounted at %s" % mountpoint},
                         entries[mounted])
        self.assertEqual([mounted], task.details["not_erased"])
        self.assertIn("disk erase failed on 1 of 2 device(s): %s: skipped "
                      "(mounted): mounted at %s" % (mounted, mountpoint),
                      task.msg)
        self.assertEqual(mounted_before, read_direct(mounted))
        self.assertTrue(os.path.ismount(mountpoint))

    def test_mounted_and_excluded_devices_are_refused_before_work(self):
        free = self.random_device()
        mounted = self.random_device()
        excluded = self.random_device()
        run("mkfs.ext4", "-q", "-F", mounted)
        mountpoint = tempfile.mkdtemp(prefix="teeth-decom-mnt-")
        self.addCleanup(os.rmdir, mountpoint)
        run("mount", mounted, mountpoint)
        self.addCleanup(subprocess.run, ["umount", mountpoint],
                        capture_output=True)
        free_before = read_direct(free)
        extension, registry, _ = self.extension(
            [free, mounted, excluded],
            **{"hardware.device_exclude": [excluded]})
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase",
                               {"devices": [free, mounted]})
        self.assertIn("devices[1]: %s is not eligible for erase: mounted at "
                      "%s" % (mounted, mountpoint), caught.exception.msg)
        extension, registry, _ = self.extension(
            [free, excluded], **{"hardware.device_exclude": [excluded]})
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase",
                               {"devices": [free, excluded]})
        self.assertIn("devices[1]: %s is not eligible" % excluded,
                      caught.exception.msg)
        self.assertEqual([], registry.statuses())
        self.assertEqual(free_before, read_direct(free))

    def test_bad_params_are_answered_before_any_work(self):
        device = self.random_device()
        before = read_direct(device)
        extension, registry, _ = self.extension([device])
        for params in ({"devices": "all"}, {"devices": [device],
                                            "method": "dd"},
                       {"devices": [device], "passes": 3},
                       {"devices": ["/dev/../dev/" + device[5:]]}):
            with self.assertRaises(protocol.InvalidParams):
                runner.run_command(extension, registry, "disk_erase",
                                   params)
        self.assertEqual([], registry.statuses())
        self.assertEqual(before, read_direct(device))

    def spec_from(self, found):
        disk = found["disks"][0]
        spec = {"cpu": {"count": found["cpu"]["count"],
                        "model": "^%s$" % re.escape(
                            found["cpu"]["model"])},
                "memory": {"total_bytes": found["memory"]["total_bytes"],
                           "tolerance": 0.01},
                "disks": [{"count": len(found["disks"]),
                           "size_bytes": disk["size_bytes"],
                           "rotational": disk["rotational"]}],
                "nics": {"count": len(found["nics"])}}
        speeds = [nic["speed_mbps"] for nic in found["nics"]]
        if speeds and None not in speeds:
            spec["nics"]["min_speed_mbps"] = min(speeds)
        return spec

    def test_qc_against_this_machine(self):
        device = self.loops.create(40 * MIB)
        extension, registry, _ = self.extension([device])
        found = inventory.collect_inventory(extension.hardware,
                                            extension.conf)
        self.assertEqual([device], [d["path"] for d in found["disks"]])
        spec = self.spec_from(found)
        task = runner.run_command(extension, registry, "qc", {"spec": spec},
                                  task_id="qc-pass")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertTrue(all(c["pass"] for c in task.result["checks"]))
        self.assertEqual(found["cpu"], task.result["inventory"]["cpu"])
        changed = copy.deepcopy(spec)
        changed["cpu"]["count"] = found["cpu"]["count"] + 1
        task = runner.run_command(extension, registry, "qc",
                                  {"spec": changed}, task_id="qc-fail")
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("qc found 1 difference(s): cpu.count: expected %d, "
                      "found %d" % (found["cpu"]["count"] + 1,
                                    found["cpu"]["count"]), task.msg)
        failed = [c for c in task.details["checks"] if not c["pass"]]
        self.assertEqual(["cpu.count"], [c["name"] for c in failed])
