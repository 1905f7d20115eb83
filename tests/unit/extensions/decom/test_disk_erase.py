"""decom.disk_erase: method planning, validation and the task, on a faked
machine whose "devices" are regular files (no root, no real tools)."""

import os

from teeth_agent.extensions import decom
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import erase
from teeth_agent.hardware import generic
from teeth_agent.hardware import testing
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base
from tests.unit.extensions.decom import runner

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


class DefaultOrderTest(base.TestCase):
    """Issue 11.4: the default order is the catalogue's, Purge first."""

    def test_every_purge_method_comes_before_every_clear_one(self):
        order = list(base.make_conf().decom.erase_methods)
        self.assertEqual(sorted(erase.KNOWN_METHODS), sorted(order))
        categories = [erase.METHODS[name].nist_category for name in order]
        self.assertEqual(sorted(categories, key=lambda c: c != erase.PURGE),
                         categories)
        self.assertEqual("overwrite", order[-1])
        self.assertLess(order.index("nvme_sanitize_overwrite"),
                        order.index("nvme_format_user"))
        self.assertLess(order.index("ata_sanitize_overwrite"),
                        order.index("ata_security_erase"))

    def test_a_drive_offering_purge_and_clear_gets_purge_by_default(self):
        allowed = list(base.make_conf().decom.erase_methods)
        nvme = ["nvme_sanitize_overwrite", "nvme_format_user", "overwrite"]
        ata = ["ata_sanitize_overwrite", "ata_security_erase", "overwrite"]
        for caps, best in ((nvme, "nvme_sanitize_overwrite"),
                           (ata, "ata_sanitize_overwrite")):
            plan = decom.plan_erase(caps, allowed, minimum=erase.CLEAR)
            self.assertEqual(best, plan.candidates[0])

    def test_strongest_first_keeps_the_catalogue_within_a_category(self):
        self.assertEqual(["nvme_sanitize_crypto", "ata_sanitize_overwrite",
                          "nvme_format_user", "overwrite", "vendor_magic"],
                         erase.strongest_first(
                             ["overwrite", "vendor_magic",
                              "ata_sanitize_overwrite", "nvme_format_user",
                              "nvme_sanitize_crypto"]))

    def test_the_documented_table_is_in_the_default_order(self):
        path = os.path.join(os.path.dirname(__file__), "..", "..", "..",
                            "..",
                            "docs", "decom.md")
        with open(path) as stream:
            rows = [line.split("`")[1] for line in stream
                    if line.startswith("| `") and line.count("|") == 4
                    and line.split("`")[1] in erase.METHODS]
        self.assertEqual(list(erase.DEFAULT_METHOD_ORDER), rows)

    def test_the_operators_order_is_kept(self):
        allowed = ["nvme_format_user", "nvme_sanitize_overwrite"]
        plan = decom.plan_erase(["nvme_sanitize_overwrite",
                                 "nvme_format_user"], allowed,
                                minimum=erase.CLEAR)
        self.assertEqual(allowed, plan.candidates)


class MinimumCategoryTest(base.TestCase):
    """``[decom] minimum_nist_category = purge``: Purge where offered."""

    CAPS = erase.Capabilities(
        ["nvme_sanitize_block", "nvme_format_user", "overwrite"],
        {"nvme_sanitize_crypto": "sanicap=0x2"})

    def test_clear_methods_are_skipped_on_a_drive_offering_purge(self):
        allowed = ["nvme_format_user", "overwrite", "nvme_sanitize_block"]
        plan = decom.plan_erase(self.CAPS, allowed, minimum=erase.PURGE)
        self.assertEqual(["nvme_sanitize_block"], plan.candidates)
        self.assertEqual(erase.PURGE, plan.required)
        self.assertEqual(["nvme_format_user", "overwrite"],
                         [s["method"] for s in plan.skipped])
        self.assertIn("reaches only Clear, and the device offers Purge "
                      "(nvme_sanitize_block)", plan.skipped[0]["reason"])

    def test_a_requested_clear_method_is_refused(self):
        with self.assertRaises(decom.NoEraseMethod) as caught:
            decom.plan_erase(self.CAPS, list(erase.DEFAULT_METHOD_ORDER),
                             requested="overwrite", minimum=erase.PURGE)
        self.assertIn("the requested method overwrite is not possible: it "
                      "reaches only Clear", str(caught.exception))

    def test_fallback_never_goes_below_purge(self):
        plan = decom.plan_erase(self.CAPS, list(erase.DEFAULT_METHOD_ORDER),
                                requested="nvme_sanitize_block",
                                allow_fallback=True, minimum=erase.PURGE)
        self.assertEqual(["nvme_sanitize_block"], plan.candidates)

    def test_purge_offered_but_forbidden_by_config_fails(self):
        with self.assertRaises(decom.NoEraseMethod) as caught:
            decom.plan_erase(self.CAPS, ["nvme_format_user", "overwrite"],
                             minimum=erase.PURGE)
        self.assertIn("the Purge methods nvme_sanitize_block are not in "
                      "[decom] erase_methods", str(caught.exception))

    def test_a_drive_without_purge_gets_its_best_clear_method(self):
        plan = decom.plan_erase(["nvme_format_user", "overwrite"],
                                list(erase.DEFAULT_METHOD_ORDER),
                                minimum=erase.PURGE)
        self.assertEqual(["nvme_format_user", "overwrite"], plan.candidates)
        self.assertEqual((erase.CLEAR, []),
                         (plan.required, plan.purge_offered))

    def test_clear_accepts_the_operators_clear_first_order(self):
        plan = decom.plan_erase(self.CAPS, ["overwrite",
                                            "nvme_sanitize_block"],
                                minimum=erase.CLEAR)
        self.assertEqual(["overwrite", "nvme_sanitize_block"],
                         plan.candidates)


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

    def wiping_dispatcher(self, wipe):
        class WipingManager(hw_base.HardwareManager):
            """A vendor manager that wipes metadata its own way."""

            def evaluate_hardware_support(self):
                return hw_base.HardwareSupport.SERVICE_PROVIDER

            def wipe_metadata(self, device):
                return wipe(device)

        return self.build_dispatcher(
            [("generic", generic.GenericHardwareManager),
             ("wiping", WipingManager)])

    def test_a_vendor_wipe_is_used_and_still_verified(self):
        # The vendor wipes instead of wipefs, but the read-back stays the
        # agent's: a wipe that leaves (or writes) data fails the erase.
        path = self.add_device("loop0")
        wiped = []

        def careless(device):
            wiped.append(device["path"])
            with open(device["path"], "r+b") as stream:
                stream.write(b"VENDOR-LABEL")

        self.dispatcher = self.wiping_dispatcher(careless)
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"]})
        self.assertEqual([path], wiped)
        self.assertNotIn("wipefs", [call[0] for call in self.tools.calls])
        self.assertEqual(tasks.ERROR, task.state)
        entry = task.details["devices"][0]
        self.assertFalse(entry["verified"])
        self.assertIn("read-back verification failed", entry["error"])

    def test_a_failed_vendor_wipe_fails_the_device(self):
        self.add_device("loop0")

        def failing(device):
            raise hw_base.HardwareManagerError("the controller refused")

        self.dispatcher = self.wiping_dispatcher(failing)
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"]})
        self.assertEqual(tasks.ERROR, task.state)
        entry = task.details["devices"][0]
        self.assertEqual("the controller refused", entry["error"])
        self.assertFalse(entry["verified"])

    def test_default_scope_accounts_for_every_disk(self):
        """Issue 11.2: a mounted disk in scope fails the task, by name."""
        free = self.add_device("loop0")
        mounted = self.add_device("loop1")
        self.machine.add_mount("loop1", "/mnt/data")
        read_only = self.machine.add_disk("loop2", size_bytes=self.SIZE,
                                          transport="loop", read_only=True)
        excluded = self.add_device("loop3")
        stacked = self.add_device("loop4")
        self.machine.add_holder("loop4", "dm-0", dm_name="vg-data")
        self.machine.add_mount("dm-0", "/srv")
        root = self.add_device("loop5")
        self.machine.add_mount("loop5", "/")
        self.set_config(**{"hardware.device_exclude": [excluded]})
        with open(mounted, "rb") as stream:
            mounted_before = stream.read()
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase", {})
        self.assertEqual(tasks.ERROR, task.state)
        entries = {e["path"]: e for e in task.details["devices"]}
        self.assertEqual(sorted(entries),
                         [e["path"] for e in task.details["devices"]])
        self.assertEqual("erased", entries[free]["outcome"])
        self.assertEqual(("overwrite", "Clear", True),
                         (entries[free]["method"],
                          entries[free]["nist_category"],
                          entries[free]["verified"]))
        with open(free, "rb") as stream:
            self.assertEqual(self.SIZE, stream.read().count(0))
        expected = {mounted: ("skipped", "mounted", "mounted at /mnt/data"),
                    read_only: ("skipped", "read_only", "read-only"),
                    stacked: ("skipped", "holder", "mounted at /srv"),
                    root: ("skipped", "agent_root",
                           "holds the agent's root filesystem"),
                    excluded: ("excluded", "excluded",
                               "matched by [hardware] device_exclude "
                               "pattern %s" % excluded)}
        for path, (outcome, reason, detail) in expected.items():
            self.assertEqual({"path": path, "outcome": outcome,
                              "reason": reason, "detail": detail},
                             entries[path])
        self.assertEqual(sorted([mounted, read_only, stacked, root]),
                         sorted(task.details["not_erased"]))
        self.assertIn("disk erase failed on 4 of 5 device(s)", task.msg)
        self.assertIn("%s: skipped (mounted): mounted at /mnt/data"
                      % mounted, task.msg)
        self.assertNotIn(free, task.msg)
        with open(mounted, "rb") as stream:
            self.assertEqual(mounted_before, stream.read())

    def test_default_scope_completes_when_every_disk_in_scope_is_erased(self):
        first, second = self.add_device("loop0"), self.add_device("loop1")
        excluded = self.add_device("loop2")
        self.set_config(**{"hardware.device_exclude": [excluded]})
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase", {})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual([("erased", first), ("erased", second),
                          ("excluded", excluded)],
                         [(e["outcome"], e["path"])
                          for e in task.result["devices"]])
        self.assertNotIn("not_erased", task.result)

    def test_nothing_erasable_is_refused_before_any_work(self):
        busy = self.add_device("loop0")
        self.machine.add_mount("loop0", "/mnt/data")
        extension, registry, _ = self.extension()
        with self.assertRaises(protocol.InvalidParams) as caught:
            runner.run_command(extension, registry, "disk_erase", {})
        self.assertIn("no eligible block device to erase on this machine; "
                      "%s: skipped (mounted): mounted at /mnt/data" % busy,
                      caught.exception.msg)
        self.assertEqual([busy], [d["path"] for d in
                                  caught.exception.details["devices"]])
        self.assertEqual([], registry.statuses())

    def test_loop_device_gets_clear_under_the_default_minimum(self):
        self.add_device("loop0")
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual(("erased", "overwrite", "Clear", "Clear", False),
                         (entry["outcome"], entry["method"],
                          entry["nist_category"],
                          entry["required_nist_category"],
                          entry["purge_offered"]))
        self.assertIn("offers no Purge method", entry["category_note"])
        self.assertGreater(entry["blocks_checked"], 0)

    def purge_dispatcher(self, works):
        class PurgeManager(hw_base.HardwareManager):
            """A vendor manager whose drives offer a crypto format."""

            def evaluate_hardware_support(self):
                return hw_base.HardwareSupport.SERVICE_PROVIDER

            def get_erase_capabilities(self, device):
                return erase.Capabilities(["nvme_format_crypto",
                                           "overwrite"])

            def erase_block_device(self, device, method, progress):
                if method != "nvme_format_crypto":
                    raise hw_base.IncompatibleHardwareMethodError()
                if not works:
                    raise erase.EraseError("the format timed out")
                size = erase.overwrite(device["path"], progress)
                return {"method": method, "nist_category": "Purge",
                        "bytes": size}

        return self.build_dispatcher(
            [("generic", generic.GenericHardwareManager),
             ("purge", PurgeManager)])

    def test_a_drive_offering_purge_is_purged(self):
        self.add_device("loop0")
        self.dispatcher = self.purge_dispatcher(works=True)
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase", {})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual(("nvme_format_crypto", "Purge", "Purge", True),
                         (entry["method"], entry["nist_category"],
                          entry["required_nist_category"],
                          entry["purge_offered"]))
        self.assertNotIn("category_note", entry)

    def test_failed_purge_fails_instead_of_a_silent_clear(self):
        self.add_device("loop0")
        self.dispatcher = self.purge_dispatcher(works=False)
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"]})
        self.assertEqual(tasks.ERROR, task.state)
        entry = task.details["devices"][0]
        self.assertEqual(("failed", None, "Purge"),
                         (entry["outcome"], entry["method"],
                          entry["required_nist_category"]))
        self.assertIn("every possible method failed: nvme_format_crypto: ",
                      entry["error"])
        self.assertIn("the format timed out", entry["error"])
        self.assertEqual(["nvme_format_crypto"],
                         [s["method"] for s in entry["skipped_methods"]
                          if s["reason"].startswith("failed")])

    def test_minimum_clear_lets_a_failed_purge_fall_back(self):
        self.add_device("loop0")
        self.set_config(**{"decom.minimum_nist_category": "clear"})
        self.dispatcher = self.purge_dispatcher(works=False)
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual(("overwrite", "Clear", "nvme_format_crypto"),
                         (entry["method"], entry["nist_category"],
                          entry["downgraded_from"]))

    def test_a_manager_reporting_less_than_required_fails(self):
        self.add_device("loop0")
        self.dispatcher = self.purge_dispatcher(works=True)

        def weak(manager, device, method, progress):
            return {"method": "nvme_format_crypto", "nist_category": "Clear",
                    "bytes": erase.overwrite(device["path"], progress)}

        manager = self.dispatcher.implementers("erase_block_device")[0]
        self.assertEqual("purge", manager)
        original = self.dispatcher.dispatch

        def dispatch(name, *args):
            if name == "erase_block_device":
                return weak(None, *args)
            return original(name, *args)

        self.dispatcher.dispatch = dispatch
        extension, registry, _ = self.extension()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/loop0"]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("nvme_format_crypto reached only Clear, below the "
                      "required Purge", task.msg)

    def patch_erase(self, replacement):
        original = erase.erase_device
        erase.erase_device = replacement
        self.addCleanup(setattr, erase, "erase_device", original)
