"""decom.disk_erase on an NVMe drive with several namespaces: erased
namespace by namespace, or reset to one namespace with [decom]
nvme_reset_namespaces."""

import json
import os
import shutil
import subprocess
from unittest import mock

from teeth_agent.extensions.decom import preparation
from teeth_agent.hardware import erase
from teeth_agent.hardware import generic
from teeth_agent.hardware import testing
from teeth_agent import processes
from teeth_agent import tasks
from tests import base
from tests.unit.extensions.decom import runner
from tests.unit.hardware.erase import samples

MIB = erase.MIB


class FakeNvmeDrive:
    """One controller (nvme0) of 8 MiB carved into namespaces, behind a fake
    nvme-cli; format and sanitize really zero the namespace files."""

    CAPACITY = 8 * MIB

    def __init__(self, machine, namespaces, oacs=0x1f, sanicap=0x2, fna=0x4):
        self.machine = machine
        self.oacs, self.sanicap, self.fna = oacs, sanicap, fna
        self.calls = []
        #: nvme verbs that fail (exit status 1, nothing done).
        self.failing = set()
        #: ``{verb: callable}`` run when the verb is called, before it acts
        #: (what else happens on the machine meanwhile).
        self.before = {}
        self.controller = machine.sys("class", "nvme", "nvme0")
        os.makedirs(self.controller)
        for nsid, size in enumerate(namespaces, 1):
            self.add_namespace(nsid, size)

    def add_namespace(self, nsid, size):
        name = "nvme0n%d" % nsid
        if not os.path.exists(self.machine.sys("class", "block", name)):
            self.machine.add_disk(name, size_bytes=size, transport="nvme",
                                  serial="NVME0001")
        with open(self.machine.sys("class", "block", name, "size"),
                  "w") as stream:
            stream.write("%d\n" % (size // 512))
        with open(self.machine.dev_path(name), "wb") as stream:
            stream.write(os.urandom(size))
        os.makedirs(os.path.join(self.controller, name), exist_ok=True)

    def zero(self, path):
        size = os.path.getsize(path)
        with open(path, "wb") as stream:
            stream.write(bytes(size))

    def spawn(self, argv, input_data, timeout, env, binary):
        self.calls.append(list(argv))
        out = ""
        if argv[0] == "nvme" and argv[1] in self.before:
            self.before.pop(argv[1])()
        if argv[0] == "nvme" and argv[1] in self.failing:
            return subprocess.CompletedProcess(argv, 1, "",
                                               "NVMe status: INVALID_NS")
        if argv[:2] == ["nvme", "version"]:
            out = "nvme version 2.3 (git 2.3)\n"
        elif argv[:2] == ["nvme", "id-ctrl"]:
            data = json.loads(samples.nvme_id_ctrl(self.sanicap, self.fna,
                                                   self.oacs))
            data.update(tnvmcap=self.CAPACITY, cntlid=1)
            out = json.dumps(data)
        elif argv[:2] == ["nvme", "id-ns"]:
            out = json.dumps({"flbas": 0, "lbafs": [{"ms": 0, "ds": 9}]})
        elif argv[:2] == ["nvme", "delete-ns"]:
            # The kernel drops the namespaces' block devices too.
            for entry in os.listdir(self.controller):
                os.rmdir(os.path.join(self.controller, entry))
                shutil.rmtree(self.machine.sys("class", "block", entry))
                os.remove(self.machine.dev_path(entry))
        elif argv[:2] == ["nvme", "create-ns"]:
            out = "create-ns: Success, created nsid:1\n"
        elif argv[:2] == ["nvme", "ns-rescan"]:
            self.add_namespace(1, self.CAPACITY)
        elif argv[:2] == ["nvme", "format"] or \
                argv[:2] == ["nvme", "sanitize"]:
            self.zero(argv[2])
        elif argv[:2] == ["nvme", "sanitize-log"]:
            out = samples.nvme_sanitize_log(1, 65535)
        elif argv[0] not in ("wipefs", "partx") and \
                argv[:2] != ["nvme", "attach-ns"]:
            raise AssertionError("unexpected tool %s" % argv)
        return subprocess.CompletedProcess(argv, 0, out, "")

    def commands(self, verb):
        return [call for call in self.calls if call[:2] == ["nvme", verb]]


class NamespacesCase(testing.HardwareManagerTestCase, base.TestCase):
    """A fake nvme0 of two namespaces behind the generic manager."""

    def setUp(self):
        super().setUp()
        self.dispatcher = self.build_dispatcher(
            [("generic", generic.GenericHardwareManager)])
        self.set_config(**{"decom.erase_poll_interval": 0.01})

    def drive(self, **kwargs):
        drive = FakeNvmeDrive(self.machine, [4 * MIB, 4 * MIB], **kwargs)
        original = processes._spawn
        processes._spawn = drive.spawn
        self.addCleanup(setattr, processes, "_spawn", original)
        try:
            os.close(os.open(self.machine.dev_path("nvme0n1"),
                             os.O_RDONLY | os.O_DIRECT))
        except OSError:
            self.skipTest("the temporary directory does not support "
                          "O_DIRECT")
        return drive

    def erase(self, names):
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        return runner.run_command(extension, registry, "disk_erase", {
            "devices": ["/dev/%s" % name for name in names]})


class NamespacesTest(NamespacesCase):
    def test_without_the_option_each_namespace_is_erased_alone(self):
        drive = self.drive()
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        for entry in task.result["devices"]:
            self.assertEqual(("erased", "nvme_format_crypto", "Purge"),
                             (entry["outcome"], entry["method"],
                              entry["nist_category"]))
            self.assertEqual({"controller": "nvme0", "namespaces": 2,
                              "reset": False,
                              "detail": "erased namespace by namespace "
                                        "([decom] nvme_reset_namespaces is "
                                        "off)",
                              "note": "each namespace is erased on its own: "
                                      "capacity of the drive outside its "
                                      "namespaces (unallocated NVM "
                                      "capacity) is left untouched; a "
                                      "sanitize (the whole drive) or [decom] "
                                      "nvme_reset_namespaces reaches it"},
                             entry["namespaces"])
            self.assertIn("the controller has 2 namespaces", {
                skipped["method"]: skipped["reason"]
                for skipped in entry["skipped_methods"]}[
                    "nvme_sanitize_block"])
        self.assertEqual([], drive.commands("delete-ns"))
        self.assertEqual([], drive.commands("sanitize"))

    def test_with_the_option_one_namespace_covers_the_drive(self):
        self.set_config(**{"decom.nvme_reset_namespaces": True})
        drive = self.drive()
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        first, second = task.result["devices"]
        self.assertEqual(("nvme_sanitize_block", "Purge", "erased"),
                         (first["method"], first["nist_category"],
                          first["outcome"]))
        self.assertEqual(FakeNvmeDrive.CAPACITY, first["bytes"])
        report = first["namespaces"]
        self.assertTrue(report["reset"])
        dev = self.machine.dev_root
        controller = os.path.join(dev, "nvme0")
        self.assertEqual(
            ["nvme delete-ns %s --namespace-id=0xffffffff" % controller,
             "nvme create-ns %s --nsze=16384 --ncap=16384 --flbas=0"
             % controller,
             "nvme attach-ns %s --namespace-id=1 --controllers=1"
             % controller,
             "nvme ns-rescan %s" % controller],
            [step["command"] for step in report["steps"]])
        self.assertEqual(os.path.join(dev, "nvme0n1"), report["namespace"])
        self.assertNotIn("note", report)
        self.assertEqual(os.path.join(dev, "nvme0n2"), second["path"])
        self.assertEqual(first["path"], second["covered_by"])
        self.assertEqual("erased", second["outcome"])
        self.assertEqual(1, len(drive.commands("sanitize")))

    def test_a_namespace_not_being_erased_prevents_the_reset(self):
        self.set_config(**{"decom.nvme_reset_namespaces": True})
        drive = self.drive()
        task = self.erase(["nvme0n1"])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertFalse(entry["namespaces"]["reset"])
        self.assertIn("would delete %s" % self.machine.dev_path("nvme0n2"),
                      entry["namespaces"]["detail"])
        self.assertIn("outside its namespaces (unallocated NVM capacity) is "
                      "left untouched", entry["namespaces"]["note"])
        self.assertEqual([], drive.commands("delete-ns"))

    def test_a_drive_without_namespace_management_is_erased_alone(self):
        self.set_config(**{"decom.nvme_reset_namespaces": True})
        drive = self.drive(oacs=0x17)
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        for entry in task.result["devices"]:
            self.assertIn("does not support namespace management",
                          entry["namespaces"]["detail"])
            self.assertEqual("nvme_format_crypto", entry["method"])
        self.assertEqual([], drive.commands("delete-ns"))


class ResetRecheckTest(NamespacesCase):
    """With [decom] nvme_reset_namespaces the namespaces are checked live
    again right before they are deleted: one that became busy since the
    command was accepted stops the reset and nothing is deleted."""

    def setUp(self):
        super().setUp()
        self.set_config(**{"decom.nvme_reset_namespaces": True})

    def after_teardown(self, action):
        """Run ``action`` once the erase was accepted and the stacks torn
        down, right before the namespaces are handled."""
        original = preparation.prepare_namespaces

        def late(conf, dispatcher, targets, prepared):
            action()
            return original(conf, dispatcher, targets, prepared)

        patcher = mock.patch.object(preparation, "prepare_namespaces", late)
        patcher.start()
        self.addCleanup(patcher.stop)

    def assert_not_reset(self, drive, task, busy_path, kind, why):
        """Nothing deleted; ``busy_path`` skipped (``kind``) or erased,
        the other namespace erased on its own; ``why`` in the detail."""
        self.assertEqual([], drive.commands("delete-ns"))
        self.assertEqual([], drive.commands("create-ns"))
        self.assertEqual([], drive.commands("sanitize"))
        devices = (task.result or task.details)["devices"]
        for entry in devices:
            self.assertNotIn("covered_by", entry)
            report = entry.get("namespaces")
            if report is not None:
                self.assertFalse(report["reset"])
                self.assertIn("left untouched", report["note"])
                self.assertIn("nothing was deleted", report["detail"])
                self.assertIn(why, report["detail"])
        entries = {entry["path"]: entry for entry in devices}
        other = [path for path in entries if path != busy_path][0]
        self.assertEqual(("erased", "nvme_format_crypto"),
                         (entries[other]["outcome"],
                          entries[other]["method"]))
        return entries[busy_path]

    def test_a_namespace_mounted_after_validation_stops_the_reset(self):
        drive = self.drive()
        self.after_teardown(
            lambda: self.machine.add_mount("nvme0n2", "/srv/tenant"))
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        busy = self.machine.dev_path("nvme0n2")
        entry = self.assert_not_reset(
            drive, task, busy, "mounted",
            "%s is in use (mounted): mounted at /srv/tenant" % busy)
        self.assertEqual(("skipped", "mounted"),
                         (entry["outcome"], entry["reason"]))
        self.assertIn("nvme0n2: skipped (mounted)", task.msg)

    def test_a_namespace_made_swap_after_validation_stops_the_reset(self):
        drive = self.drive()
        self.after_teardown(lambda: self.machine.add_swap("nvme0n1"))
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        entry = self.assert_not_reset(
            drive, task, self.machine.dev_path("nvme0n1"), "swap",
            "is in use (swap): in use as swap")
        self.assertEqual(("skipped", "swap"),
                         (entry["outcome"], entry["reason"]))

    def test_a_namespace_gone_read_only_stops_the_reset(self):
        drive = self.drive()

        def read_only():
            with open(self.machine.sys("class", "block", "nvme0n2", "ro"),
                      "w") as stream:
                stream.write("1\n")

        self.after_teardown(read_only)
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        entry = self.assert_not_reset(
            drive, task, self.machine.dev_path("nvme0n2"), "read_only",
            "is in use (read_only): read-only")
        self.assertEqual(("skipped", "read_only"),
                         (entry["outcome"], entry["reason"]))

    def test_a_namespace_held_after_the_teardown_stops_the_reset(self):
        # An array assembled on a namespace after its stacks were torn
        # down: deleting the namespace would pull a disk from under it.
        drive = self.drive()
        self.after_teardown(
            lambda: self.machine.add_holder("nvme0n2", "md7"))
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assert_not_reset(
            drive, task, self.machine.dev_path("nvme0n2"), "holder",
            "%s is in use (holder): md7 is stacked on it"
            % self.machine.dev_path("nvme0n2"))

    def test_a_mount_during_the_reset_itself_stops_it_before_delete_ns(self):
        # The manager checks once more after its id-ctrl/id-ns, right
        # before delete-ns (the window the extension's check cannot see).
        drive = self.drive()
        drive.before["id-ctrl"] = lambda: self.machine.add_mount(
            "nvme0n1", "/mnt/late")
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        self.assertEqual(["id-ctrl", "id-ns"],
                         [call[1] for call in drive.calls[:2]])
        entry = self.assert_not_reset(
            drive, task, self.machine.dev_path("nvme0n1"), "mounted",
            "refused, nothing was deleted: nvme0n1: mounted at /mnt/late")
        self.assertEqual(("skipped", "mounted"),
                         (entry["outcome"], entry["reason"]))

    def test_a_namespace_created_during_the_reset_stops_it(self):
        drive = self.drive()
        drive.before["id-ctrl"] = lambda: drive.add_namespace(3, MIB)
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual([], drive.commands("delete-ns"))
        for entry in task.result["devices"]:
            self.assertIn("the controller shows namespaces nvme0n1, "
                          "nvme0n2, nvme0n3, not the nvme0n1, nvme0n2 it "
                          "was asked to reset",
                          entry["namespaces"]["detail"])
        self.assertTrue(os.path.exists(self.machine.dev_path("nvme0n3")))

    def test_the_extension_check_compares_the_namespaces_with_sysfs(self):
        self.drive()
        first, second = (self.machine.dev_path(name)
                         for name in ("nvme0n1", "nvme0n2"))
        busy, devices = preparation.namespaces_in_use(
            self.conf, self.dispatcher, "nvme0", [first])
        self.assertEqual(("the namespaces of nvme0 changed since the erase "
                          "began (now %s, %s)" % (first, second), {}),
                         (busy, devices))
        busy, devices = preparation.namespaces_in_use(
            self.conf, self.dispatcher, "nvme0", [second, first])
        self.assertIsNone(busy)
        self.assertEqual(["NVME0001", "NVME0001"],
                         [devices[path]["serial"] for path in (first,
                                                               second)])

    def test_without_the_option_a_late_mount_skips_that_namespace(self):
        self.set_config(**{"decom.nvme_reset_namespaces": False})
        drive = self.drive()
        self.after_teardown(
            lambda: self.machine.add_mount("nvme0n2", "/srv/tenant"))
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        first, second = task.details["devices"]
        self.assertEqual(("erased", "nvme_format_crypto"),
                         (first["outcome"], first["method"]))
        self.assertEqual(("skipped", "mounted"),
                         (second["outcome"], second["reason"]))
        self.assertEqual([], drive.commands("delete-ns"))
        self.assertEqual([self.machine.dev_path("nvme0n1")],
                         [call[2] for call in drive.commands("format")])

    def test_a_failed_teardown_of_a_namespace_prevents_the_reset(self):
        drive = self.drive()
        original = preparation.tear_down

        def failed(conf, dispatcher, targets):
            prepared = original(conf, dispatcher, targets)
            prepared[targets[1]]["error"] = "teardown failed: md9 stayed"
            return prepared

        patcher = mock.patch.object(preparation, "tear_down", failed)
        patcher.start()
        self.addCleanup(patcher.stop)
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        first, second = task.details["devices"]
        self.assertEqual("not reset: the teardown of a namespace failed",
                         first["namespaces"]["detail"])
        self.assertEqual(("erased", "failed"),
                         (first["outcome"], second["outcome"]))
        self.assertEqual("teardown failed: md9 stayed", second["error"])
        self.assertEqual([], drive.commands("delete-ns"))

    def test_nothing_busy_still_resets(self):
        # The checks do not refuse a drive nobody uses.
        drive = self.drive()
        self.machine.add_mount("nvme0n1", "/mnt/before")
        self.machine.remove_mount("/mnt/before")
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual(1, len(drive.commands("delete-ns")))
        self.assertTrue(task.result["devices"][0]["namespaces"]["reset"])


class ResetFailureTest(NamespacesCase):
    """A reset that fails partway fails every namespace of the drive, and
    the result says in what state the drive was left."""

    def setUp(self):
        super().setUp()
        self.set_config(**{"decom.nvme_reset_namespaces": True})

    def test_create_ns_failing_after_delete_ns_leaves_no_namespace(self):
        drive = self.drive()
        drive.failing.add("create-ns")
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        dev = self.machine.dev_root
        controller = os.path.join(dev, "nvme0")
        details = task.details
        self.assertEqual([os.path.join(dev, "nvme0n1"),
                          os.path.join(dev, "nvme0n2")],
                         details["not_erased"])
        for entry in details["devices"]:
            # A failed evidence record naming the drive, not "skipped
            # (not_found)": the namespace is gone, nothing was erased.
            self.assertEqual(("failed", "NVME0001", None),
                             (entry["outcome"], entry["serial"],
                              entry["method"]))
            report = entry["namespaces"]
            self.assertFalse(report["reset"])
            self.assertEqual([], report["left_with"])
            self.assertEqual(
                [("nvme delete-ns %s --namespace-id=0xffffffff"
                  % controller, "done"),
                 ("nvme create-ns %s --nsze=16384 --ncap=16384 --flbas=0"
                  % controller, "failed")],
                [(step["command"], step["result"])
                 for step in report["steps"]])
            self.assertIn("steps done: nvme delete-ns; the kernel now "
                          "shows no namespace; nothing was erased; the old "
                          "namespaces are deleted", report["detail"])
            self.assertIn(report["detail"], entry["error"])
        self.assertEqual([], drive.commands("format"))
        self.assertEqual([], drive.commands("sanitize"))
        self.assertEqual([], drive.commands("attach-ns"))

    def test_delete_ns_failing_says_the_namespaces_are_still_there(self):
        drive = self.drive()
        drive.failing.add("delete-ns")
        task = self.erase(["nvme0n1", "nvme0n2"])
        self.assertEqual(tasks.ERROR, task.state)
        dev = self.machine.dev_root
        shown = [os.path.join(dev, "nvme0n1"), os.path.join(dev, "nvme0n2")]
        for entry in task.details["devices"]:
            self.assertEqual("failed", entry["outcome"])
            report = entry["namespaces"]
            self.assertEqual(shown, report["left_with"])
            self.assertNotIn("note", report)
            self.assertIn("steps done: none; the kernel now shows %s; "
                          "nothing was erased" % ", ".join(shown),
                          report["detail"])
            self.assertNotIn("the old namespaces are deleted",
                             report["detail"])
        self.assertEqual([], drive.commands("create-ns"))
        self.assertEqual([], drive.commands("format"))
