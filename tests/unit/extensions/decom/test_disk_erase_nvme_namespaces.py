"""decom.disk_erase on an NVMe drive with several namespaces: erased
namespace by namespace, or reset to one namespace with [decom]
nvme_reset_namespaces."""

import json
import os
import subprocess

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
            for entry in os.listdir(self.controller):
                os.rmdir(os.path.join(self.controller, entry))
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


class NamespacesTest(testing.HardwareManagerTestCase, base.TestCase):
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
                                        "off)"}, entry["namespaces"])
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
