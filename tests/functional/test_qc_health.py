"""decom.qc's health checks with the real tools on this machine (root).

smartctl, memtester, stress-ng and fio run for real, with small sizes, the
generic manager reading their JSON/YAML output; the only disks are loop
devices this module created (``[hardware] device_include`` lists exactly
them), detached in cleanup. A loop device has no SMART: the test proves
the check then fails with smartctl's own reason rather than passing.
SMART on drives that have it (qemu's SATA and NVMe) is covered in the VM
test (tests/vm/test_cycle.py).
"""

import hashlib
import os
import shutil
import tempfile
import unittest

from teeth_agent import hardware
from teeth_agent.hardware import generic
from teeth_agent import processes
from teeth_agent import tasks
from tests import base
from tests.functional import loopdev
from tests.unit.extensions.decom import runner

MIB = 1024 * 1024
TOOLS = ("smartctl", "memtester", "stress-ng", "fio")


class QcHealthOnThisMachineTest(unittest.TestCase):
    def setUp(self):
        super().setUp()
        loopdev.require_root()
        missing = [tool for tool in TOOLS if processes.which(tool) is None]
        if missing:
            self.fail("tools/install-system-packages installs %s"
                      % ", ".join(missing))
        self.loops = loopdev.LoopDevices()
        self.addCleanup(self.loops.cleanup)
        self.device = self.loops.create(32 * MIB, fill="random")
        state_dir = tempfile.mkdtemp(prefix="teeth-qc-state-")
        self.addCleanup(shutil.rmtree, state_dir, ignore_errors=True)
        conf = base.make_conf(**{"hardware.device_include": [self.device],
                                 "state_dir": state_dir})
        dispatcher = hardware.build_dispatcher(
            [("generic", generic.GenericHardwareManager)], conf)
        self.extension, self.registry, self.recorder = \
            runner.make_extension(conf, dispatcher)

    def digest(self):
        with open(self.device, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def qc(self, spec, task_id):
        task = runner.run_command(self.extension, self.registry, "qc",
                                  {"spec": spec}, task_id=task_id)
        found = task.result if task.state == tasks.COMPLETE else task.details
        return task, {c["name"]: c for c in found["checks"]}

    def test_memory_stress_and_disk_read_pass_and_nothing_is_written(self):
        before = self.digest()
        task, checks = self.qc({
            "memory_test": {"size_bytes": 4 * MIB},
            "stress": {"seconds": 2, "memory_bytes": 16 * MIB,
                       "cpu_workers": 1},
            "disk_read": {"min_mbps": 1}}, "qc-health")
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        memory = checks["memory_test"]
        self.assertTrue(memory["pass"])
        self.assertGreaterEqual(memory["actual"]["tests"], 10)
        self.assertEqual(4 * MIB, memory["actual"]["size_bytes"])
        stress = checks["stress"]
        self.assertEqual(0, stress["actual"]["exit_status"])
        self.assertEqual({"cpu", "vm"}, set(stress["actual"]["bogo_ops"]))
        read = checks["disk_read[%s]" % self.device]
        self.assertEqual(32 * MIB, read["actual"]["bytes"])
        self.assertGreater(read["actual"]["mbps"], 1)
        health = task.result["health"]
        self.assertTrue(health["memory_test"]["tool"].startswith(
            "memtester 4."))
        self.assertTrue(health["stress"]["tool"].startswith("stress-ng 0."))
        self.assertTrue(health["disk_read"][self.device]["tool"]
                        .startswith("fio-3"))
        percents = self.recorder.percents("qc-health")
        self.assertEqual(sorted(percents), percents)
        self.assertGreater(len(percents), 2)
        # fio ran --readonly: the disk is as it was.
        self.assertEqual(before, self.digest())

    def test_disk_read_below_the_minimum_fails(self):
        task, checks = self.qc({"disk_read": {"min_mbps": 10 ** 9,
                                              "size_bytes": 8 * MIB}},
                               "qc-slow")
        self.assertEqual(tasks.ERROR, task.state)
        read = checks["disk_read[%s]" % self.device]
        self.assertFalse(read["pass"])
        self.assertEqual(8 * MIB, read["actual"]["bytes"])
        self.assertIn("expected at least 1000000000 MB/s", task.msg)

    def test_smart_on_a_device_without_smart_fails_with_the_reason(self):
        task, checks = self.qc({"smart": {}}, "qc-smart")
        self.assertEqual(tasks.ERROR, task.state)
        check = checks["smart[%s].health" % self.device]
        self.assertFalse(check["pass"])
        self.assertIn("SMART not available", check["actual"])
        self.assertIn(os.path.basename(self.device), check["actual"])
