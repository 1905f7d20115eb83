"""decom.disk_erase: method planning, validation and the task, on a faked
machine whose "devices" are regular files (no root, no real tools)."""

import os

from teeth_agent.extensions import decom
from teeth_agent.hardware import erase
from teeth_agent.hardware import generic
from teeth_agent.hardware import testing
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base
from tests.unit.decom import runner

ALLOWED = ["nvme_sanitize_crypto", "nvme_format_user",
           "ata_security_erase_enhanced", "ata_security_erase", "overwrite"]


class PlanTest(base.TestCase):
    def test_strongest_allowed_supported_method_first(self):
        caps = erase.Capabilities(
            ["ata_security_erase_enhanced", "ata_security_erase",
             "overwrite"],
            {"nvme_sanitize_crypto": "not NVMe",
             "nvme_format_user": "not NVMe"})
        plan = decom.plan_erase(caps, ALLOWED, minimum=erase.CLEAR)
        self.assertEqual(["ata_security_erase_enhanced", "ata_security_erase",
                          "overwrite"], plan.candidates)
        self.assertEqual([{"method": "nvme_sanitize_crypto",
                           "reason": "not NVMe"},
                          {"method": "nvme_format_user",
                           "reason": "not NVMe"}], plan.skipped)
        self.assertIsNone(plan.downgraded_from)

    def test_config_order_wins_over_capability_order(self):
        caps = ["ata_security_erase_enhanced", "overwrite"]
        plan = decom.plan_erase(caps, ["overwrite", "ata_security_erase"])
        self.assertEqual(["overwrite"], plan.candidates)

    def test_requested_method_the_device_cannot_do_fails(self):
        caps = erase.Capabilities(["overwrite"], {
            "ata_security_erase": "the drive has no ATA security feature "
                                  "set"})
        with self.assertRaises(decom.NoEraseMethod) as caught:
            decom.plan_erase(caps, ALLOWED, requested="ata_security_erase")
        self.assertIn("no ATA security feature set", str(caught.exception))
        self.assertEqual("ata_security_erase",
                         caught.exception.skipped[0]["method"])

    def test_fallback_is_explicit_and_recorded(self):
        caps = erase.Capabilities(["overwrite"], {
            "ata_security_erase": "the drive is frozen"})
        plan = decom.plan_erase(
            caps, ALLOWED, requested="ata_security_erase",
            allow_fallback=True)
        self.assertEqual(["overwrite"], plan.candidates)
        self.assertEqual("ata_security_erase", plan.downgraded_from)
        self.assertEqual({"method": "ata_security_erase",
                          "reason": "the drive is frozen"}, plan.skipped[0])

    def test_requested_weaker_method_is_used_as_asked(self):
        caps = ["ata_security_erase_enhanced", "overwrite"]
        plan = decom.plan_erase(caps, ALLOWED, requested="overwrite",
                                minimum=erase.CLEAR)
        self.assertEqual((["overwrite"], [], None),
                         (plan.candidates, plan.skipped,
                          plan.downgraded_from))

    def test_no_allowed_method_names_every_reason(self):
        caps = erase.Capabilities([], {"overwrite": "the device is "
                                                    "read-only"})
        with self.assertRaises(decom.NoEraseMethod) as caught:
            decom.plan_erase(caps, ["overwrite"])
        self.assertIn("overwrite: the device is read-only",
                      str(caught.exception))
        with self.assertRaises(decom.NoEraseMethod) as caught:
            decom.plan_erase(["overwrite"], [])
        self.assertIn("erase_methods allows none", str(caught.exception))


class FakeTask:
    def __init__(self):
        self.reports = []

    def progress(self, done=None, total=None, percent=None):
        self.reports.append((done, total))


class CombinedProgressTest(base.TestCase):
    def test_bytes_over_all_devices_and_never_backwards(self):
        task = FakeTask()
        combined = decom.CombinedProgress(task, {"/dev/a": 1000,
                                                 "/dev/b": 3000})
        a, b = combined.device("/dev/a"), combined.device("/dev/b")
        a(500, 1000)
        b(1, 2)  # a device reporting a fraction of its own units
        a(100, 1000)  # a weaker method starting over
        combined.finish("/dev/a")
        self.assertEqual([(500, 4000), (2000, 4000), (2500, 4000)],
                         task.reports)


class DiskEraseTest(testing.HardwareManagerTestCase, base.TestCase):
    SIZE = 4 * erase.MIB

    def setUp(self):
        super().setUp()
        self.tools.answer(["wipefs"])
        self.tools.answer(["partx"])
        self.dispatcher = self.build_dispatcher(
            [("generic", generic.GenericHardwareManager)])

    def add_device(self, name, content=None):
        path = self.machine.add_disk(name, size_bytes=self.SIZE,
                                     transport="loop")
        with open(path, "wb") as stream:
            stream.write(content if content is not None
                         else os.urandom(self.SIZE))
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            self.skipTest("the temporary directory does not support "
                          "O_DIRECT")
        return path

    def extension(self):
        return runner.make_extension(self.conf, self.dispatcher)

    def test_erases_verifies_and_reports_each_device(self):
        first, second = self.add_device("loop0"), self.add_device("loop1")
        extension, registry, recorder = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0", "/dev/loop1"]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entries = task.result["devices"]
        self.assertEqual([first, second], [e["path"] for e in entries])
        for entry, path in zip(entries, (first, second)):
            self.assertEqual("overwrite", entry["method"])
            self.assertEqual("Clear", entry["nist_category"])
            self.assertEqual(self.SIZE, entry["bytes"])
            self.assertTrue(entry["verified"])
            self.assertNotIn("downgraded_from", entry)
            self.assertIn({"method": "ata_security_erase",
                           "reason": "%s is not an ATA device" % path},
                          entry["skipped_methods"])
            with open(path, "rb") as stream:
                data = stream.read()
            self.assertEqual(self.SIZE, data.count(0))
        percents = recorder.percents("task-1")
        self.assertEqual(sorted(percents), percents)
        self.assertIn(["wipefs", "--all", "--force", first],
                      self.tools.calls)

    def test_default_is_decided_when_the_task_starts(self):
        self.add_device("loop0")
        self.machine.add_disk("loop1", size_bytes=self.SIZE,
                              transport="loop", read_only=True)
        extension, _, _ = self.extension()
        checked = runner.validate(extension, "disk_erase",
                                  {"task_id": "t"})
        self.assertIsNone(checked["devices"])

    def test_mounted_device_is_refused_before_any_work(self):
        free = self.add_device("loop0")
        busy = self.add_device("loop1")
        self.machine.add_mount("loop1", "/mnt/data")
        with open(free, "rb") as stream:
            before = stream.read()
        extension, registry, _ = self.extension()
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase",
                               {"devices": ["/dev/loop0", "/dev/loop1"]})
        self.assertIn("devices[1]: /dev/loop1 is not eligible for erase: "
                      "mounted at /mnt/data", caught.exception.msg)
        self.assertEqual("/dev/loop1", caught.exception.details["device"])
        self.assertTrue(busy)
        self.assertEqual([], registry.statuses())
        with open(free, "rb") as stream:
            self.assertEqual(before, stream.read())
        self.assertEqual([], self.tools.calls)

    def test_excluded_device_is_refused(self):
        path = self.add_device("loop0")
        self.set_config(**{"hardware.device_exclude": [path]})
        extension, registry, _ = self.extension()
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase",
                               {"devices": ["/dev/loop0"]})
        self.assertIn("device_exclude", caught.exception.msg)

    def test_bad_params_are_refused(self):
        path = self.add_device("loop0")
        extension, registry, _ = self.extension()
        for params, name in (({"devices": []}, "devices"),
                             ({"devices": ["sda"]}, "devices[0]"),
                             ({"devices": ["/dev/loop0", "/dev/loop0"]},
                              "devices[1]"),
                             ({"devices": ["/dev/loop7"]}, "devices[0]"),
                             ({"method": "shred"}, "method"),
                             ({"devices": [path], "colour": 1}, "colour")):
            with self.assertRaises(protocol.InvalidParams) as caught:
                runner.run_command(extension, registry, "disk_erase",
                                   params)
            self.assertEqual(name, caught.exception.details["param"])
        self.assertEqual([], registry.statuses())

    def test_method_forbidden_by_config_is_refused(self):
        self.add_device("loop0")
        self.set_config(**{"decom.erase_methods": ["overwrite"]})
        extension, registry, _ = self.extension()
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase",
                               {"devices": ["/dev/loop0"],
                                "method": "nvme_format_user"})
        self.assertIn("not allowed by [decom] erase_methods",
                      caught.exception.msg)

    def test_unsupported_requested_method_fails_that_device_only(self):
        path = self.add_device("loop0")
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"],
                                   "method": "nvme_format_user"})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("%s: the requested method nvme_format_user is not "
                      "possible: %s is not an NVMe namespace" % (path, path),
                      task.msg)
        entry = task.details["devices"][0]
        self.assertFalse(entry["verified"])
        self.assertIsNone(entry["method"])

    def test_fallback_when_allowed_is_recorded(self):
        self.add_device("loop0")
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"],
                                   "method": "nvme_format_user",
                                   "allow_fallback": True})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual("overwrite", entry["method"])
        self.assertEqual("nvme_format_user", entry["downgraded_from"])

    def test_failed_device_does_not_stop_the_others(self):
        good = self.add_device("loop0")
        bad = self.add_device("loop1")
        erase_device = erase.erase_device

        def failing(manager, device, method, progress):
            if device["path"] == bad:
                raise erase.EraseError("simulated I/O error")
            return erase_device(manager, device, method, progress)

        self.patch_erase(failing)
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0", "/dev/loop1"]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("failed on 1 of 2 device(s)", task.msg)
        self.assertIn(good, [e["path"] for e in task.details["devices"]])
        self.assertIn("%s: every possible method failed" % bad, task.msg)
        entries = {e["path"]: e for e in task.details["devices"]}
        self.assertTrue(entries[good]["verified"])
        self.assertFalse(entries[bad]["verified"])
        self.assertEqual("overwrite",
                         entries[bad]["skipped_methods"][-1]["method"])
        self.assertIn("simulated I/O error",
                      entries[bad]["skipped_methods"][-1]["reason"])

    def test_erase_that_leaves_data_fails_verification(self):
        self.add_device("loop0")

        def lazy(manager, device, method, progress):
            return {"method": method, "nist_category": "Clear",
                    "bytes": self.SIZE}

        self.patch_erase(lazy)
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"]})
        self.assertEqual(tasks.ERROR, task.state)
        entry = task.details["devices"][0]
        self.assertFalse(entry["verified"])
        self.assertIn("read-back verification failed", entry["error"])
        self.assertTrue(entry["verify_problems"])

    def patch_erase(self, replacement):
        original = erase.erase_device
        erase.erase_device = replacement
        self.addCleanup(setattr, erase, "erase_device", original)
