"""teeth_agent.hardware.health: reading the health tools' output.

The samples have the shapes smartctl 7.3 (``-j``), memtester 4.6,
stress-ng 0.15 (``--yaml``) and fio 3.33 (``--output-format=json``) print;
the tools themselves run in tests/functional/test_qc_health.py.
"""

import json
import os
import tempfile
from unittest import mock

from teeth_agent.hardware import health
from tests import base

ATA = {
    "json_format_version": [1, 0],
    "smartctl": {"version": [7, 3], "exit_status": 0},
    "device": {"name": "/dev/sda", "type": "sat", "protocol": "ATA"},
    "model_name": "QEMU HARDDISK", "serial_number": "QM00001",
    "smart_support": {"available": True, "enabled": True},
    "smart_status": {"passed": True},
    "ata_smart_data": {"self_test": {
        "status": {"value": 0, "string": "completed without error",
                   "passed": True},
        "polling_minutes": {"short": 2, "extended": 54}}},
    "ata_smart_attributes": {"revision": 1, "table": [
        {"id": 5, "name": "Reallocated_Sector_Ct",
         "raw": {"value": 0, "string": "0"}},
        {"id": 197, "name": "Current_Pending_Sector",
         "raw": {"value": 3, "string": "3"}},
        {"id": 198, "name": "Offline_Uncorrectable",
         "raw": {"value": 1, "string": "1"}}]},
    "power_on_time": {"hours": 1234},
    "temperature": {"current": 34},
}

NVME = {
    "json_format_version": [1, 0],
    "smartctl": {"version": [7, 3], "exit_status": 0},
    "device": {"name": "/dev/nvme0n1", "type": "nvme", "protocol": "NVMe"},
    "model_name": "QEMU NVMe Ctrl", "serial_number": "deadbeef",
    "smart_support": {"available": True, "enabled": True},
    "smart_status": {"passed": False, "nvme": {"value": 4}},
    "nvme_smart_health_information_log": {
        "critical_warning": 4, "temperature": 35, "percentage_used": 97,
        "media_errors": 12, "power_on_hours": 8},
    "temperature": {"current": 35},
    "power_on_time": {"hours": 8},
}

LOOP = {
    "json_format_version": [1, 0],
    "smartctl": {"version": [7, 3], "exit_status": 1, "messages": [
        {"string": "/dev/loop0: Unable to detect device type",
         "severity": "error"}]},
}

MEMTESTER_OK = (
    "memtester version 4.6.0 (64-bit)\n"
    "got  8MB (8388608 bytes), trying mlock ...locked.\n"
    "Loop 1/1:\n"
    "  Stuck Address       :            \b\b\b\b\b\b\b\b\b\b\bsetting   0"
    "\b\b\b\b\b\b\b\b\b\b\b           \b\b\b\b\b\b\b\b\b\b\bok\n"
    "  Random Value        :  \b\\\b|\b/\b-\b ok\n"
    "  Compare XOR         : ok\n"
    "  Solid Bits          : ok\n"
    "\nDone.\n")

MEMTESTER_FAILED = (
    "memtester version 4.6.0 (64-bit)\n"
    "got  8MB (8388608 bytes), trying mlock ...over system/pre-process "
    "limit, reducing...\n"
    "Loop 1/1:\n"
    "  Stuck Address       : ok\n"
    "  Compare XOR         : FAILURE: 0x4000000000000000 != "
    "0x0000000000000000 at offset 0x00012340.\n"
    "  Compare SUB         : ok\n")

STRESS_YAML = """---
system-info:
      stress-ng-version: 0.15.06
      cpus: 2
metrics:
    - stressor: cpu
      bogo-ops: 514
      wall-clock-time: 3.013669
    - stressor: vm
      bogo-ops: 9570
      wall-clock-time: 3.035888
thermal-zones:
    - x86_pkg_temp: 61.0
    - acpitz: 48.5
...
"""

FIO = {
    "fio version": "fio-3.33",
    "jobs": [{"jobname": "teeth-disk-read", "error": 0,
              "read": {"io_bytes": 33554432, "bw_bytes": 114912438,
                       "runtime": 292}}],
}


class SmartParseTest(base.TestCase):
    def test_ata_readings(self):
        readings = health.parse_smart(ATA)
        self.assertTrue(readings["available"])
        self.assertIs(True, readings["health_passed"])
        self.assertEqual((0, 3, 1), (readings["reallocated_sectors"],
                                     readings["pending_sectors"],
                                     readings["uncorrectable_sectors"]))
        self.assertIsNone(readings["media_errors"])
        self.assertEqual(34, readings["temperature_c"])
        self.assertEqual("smartctl 7.3", readings["tool"])

    def test_nvme_readings(self):
        readings = health.parse_smart(NVME)
        self.assertIs(False, readings["health_passed"])
        self.assertEqual(12, readings["media_errors"])
        self.assertEqual(97, readings["percentage_used"])
        self.assertIsNone(readings["reallocated_sectors"])

    def test_device_without_smart_is_not_available_with_the_reason(self):
        readings = health.parse_smart(LOOP, returncode=1)
        self.assertFalse(readings["available"])
        self.assertEqual("/dev/loop0: Unable to detect device type",
                         readings["reason"])
        self.assertIsNone(readings["health_passed"])

    def test_smart_disabled(self):
        doc = dict(ATA, smart_support={"available": True, "enabled": False})
        self.assertFalse(health.parse_smart(doc)["available"])

    def test_hostile_types_do_not_become_readings(self):
        doc = dict(ATA, temperature={"current": "hot"},
                   nvme_smart_health_information_log={"media_errors": True})
        doc["ata_smart_attributes"] = {"table": [
            {"id": 5, "raw": {"value": "many"}}, "junk"]}
        readings = health.parse_smart(doc)
        self.assertIsNone(readings["temperature_c"])
        self.assertIsNone(readings["media_errors"])
        self.assertIsNone(readings["reallocated_sectors"])


class SelfTestTest(base.TestCase):
    def run_sequence(self, documents, start=(0, ATA), timeout=900):
        answers = [start] + [(0, doc) for doc in documents]
        clock = iter(range(0, 100000, 10))
        with mock.patch.object(health, "_smartctl_json",
                               side_effect=answers) as calls, \
                mock.patch.object(health.processes, "run",
                                  return_value=(0, "", "")) as abort:
            result = health.run_self_test(
                "/dev/sda", timeout=timeout, sleep=lambda s: None,
                clock=lambda: next(clock))
        return result, calls, abort

    def test_ata_test_followed_to_its_logged_result(self):
        running = {"ata_smart_data": {"self_test": {"status": {
            "value": 0xf9, "string": "in progress", "remaining_percent": 90}}}}
        done = {"ata_smart_data": {"self_test": {"status": {"value": 0}}},
                "ata_smart_self_test_log": {"standard": {"table": [
                    {"type": {"value": 1, "string": "Short offline"},
                     "status": {"value": 0, "string": "Completed without "
                                "error", "passed": True}}]}}}
        result, calls, _ = self.run_sequence([running, running, done])
        self.assertEqual({"supported": True, "passed": True,
                          "status": "Completed without error",
                          "seconds": 30}, result)
        self.assertEqual(("-t", "short", "/dev/sda"), calls.call_args_list[0]
                         .args)

    def test_nvme_failed_test(self):
        running = {"nvme_self_test_log": {
            "current_self_test_operation": {"value": 1},
            "current_self_test_completion_percent": 40}}
        done = {"nvme_self_test_log": {
            "current_self_test_operation": {"value": 0},
            "table": [{"self_test_result": {
                "value": 7, "string": "Completed: failed segment"}}]}}
        result, _, _ = self.run_sequence([running, done],
                                         start=(0, NVME))
        self.assertIs(False, result["passed"])
        self.assertTrue(result["supported"])
        self.assertEqual("Completed: failed segment", result["status"])

    def test_refused_test_is_unsupported(self):
        refused = dict(LOOP)
        result, calls, _ = self.run_sequence([], start=(4, refused))
        self.assertFalse(result["supported"])
        self.assertEqual(1, calls.call_count)

    def test_a_test_that_never_ends_is_aborted_and_fails(self):
        running = {"ata_smart_data": {"self_test": {"status": {
            "value": 0xf9, "remaining_percent": 90}}}}
        result, _, abort = self.run_sequence([running] * 20, timeout=60)
        self.assertIs(False, result["passed"])
        self.assertIn("did not end within 60s", result["status"])
        abort.assert_called_once_with("smartctl", "-X", "/dev/sda",
                                      timeout=60)

    def test_expected_duration_from_the_drive(self):
        self.assertEqual(120, health.expected_self_test_seconds(ATA))
        self.assertEqual(health.DEFAULT_SELF_TEST_SECONDS,
                         health.expected_self_test_seconds(NVME))


class MemtesterParseTest(base.TestCase):
    def test_every_pattern_ok(self):
        readings = health.parse_memtester(MEMTESTER_OK, 0)
        self.assertEqual({"Stuck Address": "ok", "Random Value": "ok",
                          "Compare XOR": "ok", "Solid Bits": "ok"},
                         readings["tests"])
        self.assertEqual([], readings["failures"])
        self.assertIs(True, readings["locked"])

    def test_a_failed_pattern_and_its_line(self):
        readings = health.parse_memtester(MEMTESTER_FAILED, 2)
        self.assertEqual("failed", readings["tests"]["Compare XOR"])
        self.assertEqual(1, len(readings["failures"]))
        self.assertIn("at offset 0x00012340", readings["failures"][0])
        self.assertIs(False, readings["locked"])
        self.assertEqual(2, readings["exit_status"])


class StressParseTest(base.TestCase):
    def test_metrics_and_thermal_zones(self):
        readings = health.parse_stress_yaml(STRESS_YAML)
        self.assertEqual([{"stressor": "cpu", "bogo_ops": 514,
                           "seconds": 3.013669},
                          {"stressor": "vm", "bogo_ops": 9570,
                           "seconds": 3.035888}], readings["stressors"])
        self.assertEqual([61.0, 48.5], [z["celsius"] for z in
                                        readings["thermal_zones"]])
        self.assertEqual("stress-ng 0.15.06", readings["tool"])

    def test_unreadable_yaml_is_a_health_error(self):
        with self.assertRaises(health.HealthCheckError):
            health.parse_stress_yaml("metrics: [unclosed")
        with self.assertRaises(health.HealthCheckError):
            health.parse_stress_yaml("- a list")

    def test_yaml_tags_are_not_executed(self):
        # safe_load: a tag naming a Python object is an error, not a call.
        with self.assertRaises(health.HealthCheckError):
            health.parse_stress_yaml(
                "metrics: !!python/object/apply:os.system ['true']")


class SysfsReadingsTest(base.TestCase):
    def setUp(self):
        super().setUp()
        self.root = tempfile.mkdtemp()
        self.addCleanup(__import__("shutil").rmtree, self.root)

    def write(self, relative, text):
        path = os.path.join(self.root, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def test_nothing_exposed(self):
        self.assertIsNone(health.read_thermal(self.root))
        self.assertIsNone(health.read_throttle_events(self.root))

    def test_hottest_zone_and_throttle_sum(self):
        self.write("class/thermal/thermal_zone0/temp", "45000\n")
        self.write("class/thermal/thermal_zone1/temp", "71500\n")
        self.write("class/thermal/cooling_device0/temp", "99000\n")
        self.write("devices/system/cpu/cpu0/thermal_throttle/"
                   "core_throttle_count", "3\n")
        self.write("devices/system/cpu/cpu1/thermal_throttle/"
                   "package_throttle_count", "2\n")
        self.write("devices/system/cpu/cpufreq/thermal_throttle/"
                   "core_throttle_count", "100\n")
        self.assertEqual(71.5, health.read_thermal(self.root))
        self.assertEqual(5, health.read_throttle_events(self.root))


class FioParseTest(base.TestCase):
    def test_bandwidth(self):
        readings = health.parse_fio(json.dumps(FIO))
        self.assertEqual({"bytes": 33554432, "seconds": 0.292,
                          "mbps": 114.9, "errors": 0, "tool": "fio-3.33"},
                         readings)

    def test_leading_notes_are_skipped(self):
        text = "note: both iodepth >= 1 and synchronous I/O engine\n" + \
            json.dumps(FIO)
        self.assertEqual(114.9, health.parse_fio(text)["mbps"])

    def test_no_report(self):
        for text in ("", "fio: failed", "{\"jobs\": []}"):
            with self.assertRaises(health.HealthCheckError):
                health.parse_fio(text)


class WatchTest(base.TestCase):
    def test_progress_reaches_one_and_errors_propagate(self):
        seen = []
        self.assertEqual(5, health._watch(lambda: 5, 10, seen.append, 60))
        self.assertEqual(1.0, seen[-1])
        with self.assertRaises(ValueError):
            health._watch(lambda: int("x"), 10, seen.append, 60)

    def test_missing_tool_is_a_clear_error(self):
        with mock.patch.object(health.processes, "which",
                               return_value=None):
            with self.assertRaises(health.HealthCheckError) as caught:
                health.memory_test(8 * 1024 * 1024)
        self.assertEqual("memtester is not installed in this ramdisk",
                         str(caught.exception))
