"""decom.disk_erase: the evidence record of each erased device and its
signature with [decom] evidence_key."""

import os
import re

from teeth_agent.extensions import decom
from teeth_agent.hardware import erase
from teeth_agent.hardware import evidence
from teeth_agent.hardware import generic
from teeth_agent.hardware import testing
from teeth_agent import tasks
from tests import base
from tests.unit.extensions.decom import runner
from tests.unit.hardware.erase import samples
from tests.unit.hardware.erase import test_identity
from tests.unit.hardware import test_evidence

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

#: The evidence fields every erased or failed device carries (helper
#: db-store stores them as columns: the names are part of the wire).
EVIDENCE_FIELDS = ("serial", "model", "wwn", "firmware", "size_bytes",
                   "logical_sector_size", "method", "nist_category",
                   "verification", "started_at", "ended_at", "tool",
                   "tool_version", "agent_version")


class DiskEraseEvidenceTest(testing.HardwareManagerTestCase, base.TestCase):
    SIZE = 4 * erase.MIB

    def setUp(self):
        super().setUp()
        self.tools.answer(["wipefs"])
        self.tools.answer(["partx"])
        self.dispatcher = self.build_dispatcher(
            [("generic", generic.GenericHardwareManager)])
        self.path = self.machine.add_disk(
            "vda", size_bytes=self.SIZE, transport="virtio",
            model="QEMU HARDDISK", serial="EVID-0001")
        with open(self.machine.sys("class", "block", "vda", "device", "rev"),
                  "w") as stream:
            stream.write("2.5+\n")
        with open(self.path, "wb") as stream:
            stream.write(os.urandom(self.SIZE))
        try:
            os.close(os.open(self.path, os.O_RDONLY | os.O_DIRECT))
        except OSError:
            self.skipTest("the temporary directory does not support "
                          "O_DIRECT")

    def erase(self):
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        return runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/vda"]})

    def test_a_sata_disk_s_record_has_its_wwn_and_full_firmware(self):
        path = self.machine.add_disk(
            "sda", size_bytes=self.SIZE, transport="sata",
            model="Samsung SSD 860 EVO 500GB", serial="S3Z9NB0K123456",
            wwid="naa.5002538E40A1B2C3")
        with open(self.machine.sys("class", "block", "sda", "device", "rev"),
                  "w") as stream:
            stream.write("4B6Q\n")
        test_identity.add_ata_identify(
            self.machine, "sda",
            test_identity.ata_identify("S3Z9NB0K123456", "RVT04B6Q"))
        with open(path, "wb") as stream:
            stream.write(os.urandom(self.SIZE))
        self.tools.answer(["hdparm", "-I"], stdout=samples.HDPARM_QEMU)
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/sda"]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual(("S3Z9NB0K123456", "0x5002538e40a1b2c3",
                          "RVT04B6Q", "overwrite"),
                         (entry["serial"], entry["wwn"], entry["firmware"],
                          entry["method"]))

    def test_a_wwn_in_the_block_device_s_sysfs_is_carried_through(self):
        # NVMe and virtio keep it beside the block device (wwid), not in
        # the parent device.
        with open(self.machine.sys("class", "block", "vda", "wwid"),
                  "w") as stream:
            stream.write("eui.0025385B71B07E2F\n")
        task = self.erase()
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("0x0025385b71b07e2f",
                         task.result["devices"][0]["wwn"])

    def test_every_erased_device_carries_its_evidence(self):
        task = self.erase()
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        for field in EVIDENCE_FIELDS:
            self.assertIn(field, entry)
        self.assertEqual(
            ("EVID-0001", "QEMU HARDDISK", "2.5+", self.SIZE, 512),
            (entry["serial"], entry["model"], entry["firmware"],
             entry["size_bytes"], entry["logical_sector_size"]))
        self.assertEqual(("overwrite", "Clear", "teeth-agent"),
                         (entry["method"], entry["nist_category"],
                          entry["tool"]))
        self.assertEqual(erase.agent_version(), entry["tool_version"])
        self.assertEqual(entry["agent_version"], entry["tool_version"])
        self.assertEqual("passed", entry["verification"]["result"])
        self.assertEqual(entry["blocks_checked"],
                         entry["verification"]["samples"])
        self.assertIn("64 random 4 KiB blocks",
                      entry["verification"]["read_back"])
        self.assertRegex(entry["started_at"], RFC3339)
        self.assertRegex(entry["ended_at"], RFC3339)
        self.assertLessEqual(entry["started_at"], entry["ended_at"])
        self.assertNotIn("signature", entry)

    def test_a_failed_read_back_is_in_the_evidence(self):
        original = erase.verify_erased

        def failing(path, method, markers, samples=64, rng=None):
            found = original(path, method, markers, samples, rng)
            return dict(found, verified=False, problems=["block at 0 is "
                                                         "not zero"])

        erase_module = decom.erase
        erase_module.verify_erased = failing
        self.addCleanup(setattr, erase_module, "verify_erased", original)
        task = self.erase()
        self.assertEqual(tasks.ERROR, task.state)
        entry = task.details["devices"][0]
        self.assertEqual(("failed", "failed"),
                         (entry["outcome"], entry["verification"]["result"]))

    def test_records_are_signed_with_the_evidence_key(self):
        directory = os.path.join(self.machine.root, "keys")
        os.makedirs(directory)
        path, key = test_evidence.write_private_key(directory)
        self.set_config(**{"decom.evidence_key": path})
        task = self.erase()
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        entry = task.result["devices"][0]
        self.assertEqual(evidence.fingerprint(key.public_key()),
                         entry["signing_key_fingerprint"])
        self.assertTrue(evidence.verify_record(entry,
                                               key.public_key()).valid)
        forged = dict(entry, nist_category="Purge")
        self.assertFalse(evidence.verify_record(forged,
                                                key.public_key()).valid)

    def test_a_bad_key_stops_start_up_and_the_erase_before_any_write(self):
        directory = os.path.join(self.machine.root, "keys")
        os.makedirs(directory)
        path, _ = test_evidence.write_private_key(directory, mode=0o644)
        self.set_config(**{"decom.evidence_key": path})
        extension, registry, _ = runner.make_extension(self.conf,
                                                       self.dispatcher)
        with self.assertRaises(evidence.EvidenceKeyError) as caught:
            extension.start()
        self.assertIn("must be 0600 or 0400", str(caught.exception))
        with open(self.path, "rb") as stream:
            before = stream.read()
        task = runner.run_command(extension, registry, "disk_erase",
                                  {"devices": ["/dev/vda"]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("disk erase not started", task.msg)
        with open(self.path, "rb") as stream:
            self.assertEqual(before, stream.read())
