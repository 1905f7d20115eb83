"""decom.qc's health checks (smart, memory_test, stress, disk_read): the
spec, the thresholds and the progress, with a manager that returns
readings (the generic manager's tools run in
tests/functional/test_qc_health.py)."""

from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base
from tests.unit.extensions.decom import qc_samples
from tests.unit.extensions.decom import runner
from tests.unit.extensions.decom import test_qc_command


def smart_ok(**changes):
    readings = {"available": True, "reason": None, "protocol": "ATA",
                "model": "ACME", "serial": "S1", "health_passed": True,
                "reallocated_sectors": 0, "pending_sectors": 0,
                "uncorrectable_sectors": 0, "media_errors": None,
                "percentage_used": None, "temperature_c": 30,
                "power_on_hours": 10, "tool": "smartctl 7.3",
                "self_test": {"supported": True, "passed": True,
                              "status": "Completed without error",
                              "seconds": 120.0}}
    readings.update(changes)
    return readings


class HealthManager(test_qc_command.InventoryManager):
    """The inventory of qc_samples plus canned health readings."""

    smart = {}
    memory = None
    stress = None
    read_mbps = {}
    calls = None

    def get_smart_report(self, device, self_test, progress):
        self.calls.append(("smart", device["path"], self_test))
        progress(0.5)
        answer = self.smart.get(device["path"], smart_ok())
        if isinstance(answer, Exception):
            raise answer
        return answer

    def run_memory_test(self, size_bytes, free_fraction, loops, progress):
        self.calls.append(("memory", size_bytes, free_fraction, loops))
        return self.memory or {
            "size_bytes": size_bytes or 1024, "loops": loops,
            "tests": {"Stuck Address": "ok", "Compare XOR": "ok"},
            "failures": [], "locked": True, "exit_status": 0,
            "seconds": 3.0, "tool": "memtester 4.6.0"}

    def run_stress_test(self, seconds, memory_bytes, cpu_workers, progress):
        self.calls.append(("stress", seconds, memory_bytes, cpu_workers))
        for step in range(1, 5):
            progress(step / 4.0)
        return self.stress or {
            "stressors": [{"stressor": "cpu", "bogo_ops": 100,
                           "seconds": seconds},
                          {"stressor": "vm", "bogo_ops": 50,
                           "seconds": seconds}],
            "exit_status": 0, "seconds": float(seconds), "failures": [],
            "max_temperature_c": None, "throttle_events": None,
            "thermal_zones": [], "tool": "stress-ng 0.15.06"}

    def run_disk_read_test(self, device, size_bytes, seconds, progress):
        self.calls.append(("read", device["path"], size_bytes, seconds))
        return {"bytes": size_bytes, "seconds": 1.0,
                "mbps": self.read_mbps.get(device["path"], 500.0),
                "errors": 0, "exit_status": 0, "tool": "fio-3.33"}


class QcHealthTest(base.TestCase):
    def run_qc(self, spec, **attributes):
        conf = base.make_conf()
        manager = HealthManager(conf)
        manager.name = "acme"
        manager.calls = []
        for key, value in attributes.items():
            setattr(manager, key, value)
        dispatcher = hardware.Dispatcher(
            [(hw_base.HardwareSupport.SERVICE_PROVIDER, manager)])
        extension, registry, recorder = runner.make_extension(conf,
                                                              dispatcher)
        task = runner.run_command(extension, registry, "qc",
                                  {"spec": spec}, task_id="qc")
        self.calls = manager.calls
        self.percents = recorder.percents("qc")
        return task

    def checks(self, task):
        found = task.result if task.state == tasks.COMPLETE else task.details
        return {c["name"]: c for c in found["checks"]}

    def test_every_health_key_passes_on_a_healthy_machine(self):
        task = self.run_qc({"smart": {}, "memory_test": {"size_bytes":
                                                         64 << 20},
                            "stress": {"seconds": 60},
                            "disk_read": {"min_mbps": 100}})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        names = sorted(self.checks(task))
        self.assertIn("smart[/dev/sda].health", names)
        self.assertIn("smart[/dev/nvme1n1].self_test", names)
        self.assertIn("disk_read[/dev/nvme0n1]", names)
        self.assertIn("memory_test", names)
        self.assertIn("stress", names)
        for name in names:
            self.assertTrue(name.split("[")[0].split(".")[0] in
                            ("smart", "memory_test", "stress", "disk_read"))
        self.assertEqual({"smart", "memory_test", "stress", "disk_read"},
                         set(task.result["health"]))
        self.assertIn(("memory", 64 << 20, None, 1), self.calls)
        self.assertIn(("stress", 60, 256 << 20, 0), self.calls)
        # Whole disks are read unless a size is given.
        self.assertIn(("read", "/dev/sda", 4000787030016, None), self.calls)

    def test_progress_goes_forward_over_the_phases(self):
        self.run_qc({"smart": {"self_test": "skip"},
                     "stress": {"seconds": 600}})
        self.assertTrue(self.percents, "no progress reported")
        self.assertEqual(sorted(self.percents), self.percents)
        # The stress run weighs 600 s against 3 short SMART reads: its
        # quarters show as steps of about a quarter of the bar.
        self.assertTrue(any(70 < p < 80 for p in self.percents),
                        self.percents)

    def test_smart_thresholds(self):
        worn = smart_ok(protocol="NVMe", reallocated_sectors=None,
                        pending_sectors=None, uncorrectable_sectors=None,
                        media_errors=3, percentage_used=95)
        bad = smart_ok(pending_sectors=8, health_passed=False)
        task = self.run_qc({"smart": {"max_pending_sectors": 5,
                                      "max_media_errors": 2}},
                           smart={"/dev/nvme0n1": worn, "/dev/sda": bad})
        self.assertEqual(tasks.ERROR, task.state)
        checks = self.checks(task)
        failed = sorted(name for name, c in checks.items() if not c["pass"])
        self.assertEqual(["smart[/dev/nvme0n1].media_errors",
                          "smart[/dev/nvme0n1].percentage_used",
                          "smart[/dev/sda].health",
                          "smart[/dev/sda].pending_sectors"], failed)
        self.assertEqual({"max": 90},
                         checks["smart[/dev/nvme0n1].percentage_used"]
                         ["expected"])
        self.assertIn("smart[/dev/sda].health: expected 'PASSED', found "
                      "'FAILED'", task.msg)
        self.assertIn("smart[/dev/sda].pending_sectors: expected at most 5, "
                      "found 8", task.msg)

    def test_self_test_modes(self):
        unsupported = smart_ok(self_test={"supported": False, "passed": None,
                                          "status": "refused",
                                          "seconds": None})
        smart = {"/dev/sda": unsupported}
        task = self.run_qc({"smart": {}}, smart=smart)
        self.assertFalse(self.checks(task)["smart[/dev/sda].self_test"]
                         ["pass"])
        task = self.run_qc({"smart": {"self_test": "if_supported"}},
                           smart=smart)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        task = self.run_qc({"smart": {"self_test": "skip"}}, smart=smart)
        self.assertNotIn("smart[/dev/sda].self_test", self.checks(task))
        self.assertIn(("smart", "/dev/sda", False), self.calls)

    def test_unavailable_smart_and_a_failing_manager_fail_their_drive(self):
        task = self.run_qc({"smart": {"devices": ["/dev/sda",
                                                  "/dev/nvme0n1"]}},
                           smart={"/dev/sda": smart_ok(
                               available=False, reason="no SMART here"),
                               "/dev/nvme0n1": OSError("bus reset")})
        checks = self.checks(task)
        self.assertEqual("SMART not available: no SMART here",
                         checks["smart[/dev/sda].health"]["actual"])
        self.assertIn("bus reset",
                      checks["smart[/dev/nvme0n1].health"]["actual"])
        self.assertNotIn("smart[/dev/nvme1n1].health", checks)

    def test_a_device_not_in_the_inventory_is_not_touched(self):
        task = self.run_qc({"disk_read": {"min_mbps": 1,
                                          "devices": ["/dev/sdz"]},
                            "smart": {"devices": ["/dev/sdz"]}})
        checks = self.checks(task)
        self.assertEqual("not a disk of this machine's inventory",
                         checks["disk_read[/dev/sdz]"]["actual"])
        self.assertFalse(checks["smart[/dev/sdz].health"]["pass"])
        self.assertEqual([], self.calls)

    def test_slow_disk_fails_disk_read(self):
        task = self.run_qc({"disk_read": {"min_mbps": 200,
                                          "size_bytes": 1 << 30,
                                          "seconds": 30}},
                           read_mbps={"/dev/sda": 150.0})
        checks = self.checks(task)
        self.assertFalse(checks["disk_read[/dev/sda]"]["pass"])
        self.assertIn("disk_read[/dev/sda]: expected at least 200 MB/s",
                      task.msg)
        self.assertTrue(checks["disk_read[/dev/nvme0n1]"]["pass"])
        self.assertIn(("read", "/dev/sda", 1 << 30, 30), self.calls)

    def test_memory_failures_fail_the_check(self):
        memory = {"size_bytes": 1 << 20, "loops": 1,
                  "tests": {"Stuck Address": "ok", "Compare XOR": "failed"},
                  "failures": ["FAILURE: 0x1 != 0x0 at offset 0x10."],
                  "locked": True, "exit_status": 2, "seconds": 1.0,
                  "tool": "memtester 4.6.0"}
        task = self.run_qc({"memory_test": {"free_fraction": 0.5,
                                            "loops": 2}}, memory=memory)
        check = self.checks(task)["memory_test"]
        self.assertFalse(check["pass"])
        self.assertEqual(["Compare XOR"], check["actual"]["failed_tests"])
        self.assertEqual({"free_fraction": 0.5, "loops": 2},
                         check["expected"])
        self.assertIn(("memory", None, 0.5, 2), self.calls)

    def test_stress_temperature_and_throttling(self):
        hot = {"stressors": [{"stressor": "cpu", "bogo_ops": 10,
                              "seconds": 5}],
               "exit_status": 0, "seconds": 5.0, "failures": [],
               "max_temperature_c": 96.0, "throttle_events": 4,
               "thermal_zones": [], "tool": "stress-ng"}
        task = self.run_qc({"stress": {"seconds": 5, "max_temperature_c": 90,
                                       "max_throttle_events": 0}},
                           stress=hot)
        checks = self.checks(task)
        self.assertTrue(checks["stress"]["pass"])
        self.assertFalse(checks["stress.max_temperature_c"]["pass"])
        self.assertFalse(checks["stress.throttle_events"]["pass"])

    def test_asked_for_temperature_on_a_platform_without_sensors(self):
        task = self.run_qc({"stress": {"seconds": 5,
                                       "max_temperature_c": 90}})
        check = self.checks(task)["stress.max_temperature_c"]
        self.assertFalse(check["pass"])
        self.assertEqual("no temperature is exposed by this platform",
                         check["actual"])

    def test_a_stressor_that_did_no_work_fails(self):
        idle = {"stressors": [{"stressor": "cpu", "bogo_ops": 0,
                               "seconds": 5}],
                "exit_status": 0, "seconds": 5.0, "failures": [],
                "max_temperature_c": None, "throttle_events": None,
                "thermal_zones": [], "tool": "stress-ng"}
        task = self.run_qc({"stress": {"seconds": 5}}, stress=idle)
        self.assertFalse(self.checks(task)["stress"]["pass"])

    def test_without_a_manager_the_check_fails_and_says_why(self):
        conf = base.make_conf()
        manager = test_qc_command.InventoryManager(conf)
        manager.name = "acme"
        dispatcher = hardware.Dispatcher(
            [(hw_base.HardwareSupport.SERVICE_PROVIDER, manager)])
        extension, registry, _ = runner.make_extension(conf, dispatcher)
        task = runner.run_command(extension, registry, "qc",
                                  {"spec": {"stress": {"seconds": 1}}})
        check = {c["name"]: c for c in task.details["checks"]}["stress"]
        self.assertEqual("no hardware manager runs this check "
                         "(run_stress_test)", check["actual"])

    def test_spec_shapes_are_checked_before_the_task(self):
        bad = [
            ({"memory_test": {}}, "spec.memory_test"),
            ({"memory_test": {"size_bytes": 1 << 30, "free_fraction": 0.1}},
             "spec.memory_test"),
            ({"memory_test": {"free_fraction": 1.5}},
             "spec.memory_test.free_fraction"),
            ({"stress": {}}, "spec.stress.seconds"),
            ({"stress": {"seconds": 0}}, "spec.stress.seconds"),
            ({"disk_read": {"min_mbps": -1}}, "spec.disk_read.min_mbps"),
            ({"disk_read": {"min_mbps": 1, "devices": ["/etc/passwd"]}},
             "spec.disk_read.devices[0]"),
            ({"smart": {"self_test": "sometimes"}}, "spec.smart.self_test"),
            ({"smart": {"max_pending": 1}}, "spec.smart.max_pending"),
        ]
        for spec, param in bad:
            with self.subTest(spec=spec):
                with self.assertRaises(protocol.InvalidParams) as caught:
                    self.run_qc(dict(qc_samples.SPEC, **spec))
                self.assertEqual(param, caught.exception.details["param"])
