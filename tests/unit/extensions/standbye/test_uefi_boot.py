"""run_image's boot decisions: the kexec decision table, kexec -s under
Secure Boot or lockdown, the reboot fallback with its reason and
BootNext, and the boot-entry policy through the managers."""

import json
from unittest import mock

from teeth_agent.extensions.standbye import uefi_boot
from teeth_agent import hardware
from teeth_agent.hardware import boot_entries
from teeth_agent.hardware import efi
from teeth_agent.hardware import power
from teeth_agent.images import uefi
from teeth_agent import processes
from tests.unit.extensions.standbye import test_extension
from tests.unit.hardware import efibootmgr_samples as samples

FOUND = {"kernel": "/boot/k", "initrd": "/boot/i", "cmdline": "ro",
         "partition": 1, "source": "bls", "kernel_copy": "/w/k",
         "initrd_copy": "/w/i"}
PLAIN = {"boot_mode": "uefi", "secure_boot": False, "setup_mode": False,
         "lockdown": "none"}
SECURE = {"boot_mode": "uefi", "secure_boot": True, "setup_mode": False,
          "lockdown": "integrity"}
LOCKED_BIOS = {"boot_mode": "bios", "secure_boot": False,
               "setup_mode": None, "lockdown": "integrity"}


class KexecPlanTest(test_extension.ExtensionTestCase):
    """The decision table of docs/standbye.md, row by row."""

    def test_table(self):
        rows = [
            # found, state, signed -> method, file_load, reason
            (None, PLAIN, None, ("reboot", False, "no_kernel")),
            (None, SECURE, True, ("reboot", False, "no_kernel")),
            (FOUND, PLAIN, None, ("kexec", False, None)),
            (FOUND, PLAIN, False, ("kexec", False, None)),
            (FOUND, SECURE, True, ("kexec", True, None)),
            (FOUND, SECURE, None, ("kexec", True, None)),
            (FOUND, SECURE, False, ("reboot", True, "kernel_unsigned")),
            (FOUND, LOCKED_BIOS, False, ("reboot", True, "kernel_unsigned")),
            (FOUND, LOCKED_BIOS, True, ("kexec", True, None)),
        ]
        for found, state, signed, expected in rows:
            self.assertEqual(expected, uefi_boot.kexec_plan(found, state,
                                                            signed),
                             (found is not None, state, signed))

    def test_every_reason_has_a_sentence(self):
        for code, text in uefi_boot.REASONS.items():
            self.assertTrue(text.endswith("."), code)
        self.assertEqual({"reason": None, "reason_text": None},
                         uefi_boot.reason_fields(None))


class StageKexecTest(test_extension.ExtensionTestCase):

    def setUp(self):
        super().setUp()
        self.manager.answers["set_boot_next"] = None
        self.manager.set_boot_next = lambda entry: self.manager._answer(
            "set_boot_next", entry)

    def stage(self, state, signed=None, entry=None, load_error=None):
        with mock.patch.object(uefi, "kernel_signed",
                               return_value=signed) as checked:
            if load_error is not None:
                with mock.patch.object(self.power, "load_kexec",
                                       side_effect=load_error):
                    result = self.extension._stage_kexec(
                        FOUND, state, "uefi", entry)
            else:
                result = self.extension._stage_kexec(FOUND, state, "uefi",
                                                     entry)
        self.checked = checked
        boot_result, action = result
        self.assertEqual(json.loads(json.dumps(boot_result)), boot_result)
        return boot_result, action

    def test_plain_kexec_load_without_secure_boot(self):
        result, action = self.stage(PLAIN)
        self.assertEqual("kexec", result["method"])
        self.assertEqual("kexec_load", result["kexec_syscall"])
        self.assertIsNone(result["reason"])
        self.assertEqual(self.power.kexec, action)
        self.assertNotIn("file_load", self.power.actions[0])
        # No signature question without Secure Boot or lockdown.
        self.checked.assert_not_called()

    def test_signed_kernel_under_secure_boot_uses_kexec_file_load(self):
        result, action = self.stage(SECURE, signed=True, entry={
            "entry": "0009"})
        self.assertEqual("kexec", result["method"])
        self.assertEqual("kexec_file_load", result["kexec_syscall"])
        self.assertTrue(result["kernel_signed"])
        self.assertTrue(result["secure_boot"])
        self.assertEqual("0009", result["entry"])
        self.assertEqual(self.power.kexec, action)
        self.assertTrue(self.power.actions[0]["file_load"])
        self.assertEqual([], self.manager._called("set_boot_next"))

    def test_unsigned_kernel_reboots_into_the_entry(self):
        result, action = self.stage(SECURE, signed=False, entry={
            "entry": "0009"})
        self.assertEqual("reboot", result["method"])
        self.assertEqual("kernel_unsigned", result["reason"])
        self.assertIn("no signature", result["reason_text"])
        self.assertEqual(self.power.reboot, action)
        self.assertEqual([], self.power.actions)
        self.assertEqual([("0009",)], self.manager._called("set_boot_next"))
        self.assertEqual("0009", result["boot_next"])

    def test_rejected_signature_reboots_with_the_reason(self):
        rejected = power.KexecRejected(
            ["kexec", "-s"], 255,
            stderr="kexec_file_load failed: Key was rejected by service")
        result, action = self.stage(SECURE, signed=True,
                                    entry={"entry": "0009"},
                                    load_error=rejected)
        self.assertEqual("reboot", result["method"])
        self.assertEqual("signature_rejected", result["reason"])
        self.assertIn("Key was rejected", result["kexec_error"])
        self.assertEqual(self.power.reboot, action)
        self.assertEqual([("0009",)], self.manager._called("set_boot_next"))

    def test_other_kexec_failure(self):
        failed = processes.ProcessError(["kexec", "-l"], 1,
                                        stderr="Cannot load /w/k")
        result, action = self.stage(PLAIN, load_error=failed)
        self.assertEqual("reboot", result["method"])
        self.assertEqual("kexec_failed", result["reason"])
        self.assertEqual(self.power.reboot, action)

    def test_boot_next_failure_is_noted_not_fatal(self):
        self.manager.answers["set_boot_next"] = \
            hardware.HardwareManagerError("NVRAM is full")
        result, action = self.stage(SECURE, signed=False,
                                    entry={"entry": "0009"})
        self.assertEqual("reboot", result["method"])
        self.assertIn("NVRAM is full", result["boot_next_error"])
        self.assertEqual(self.power.reboot, action)

    def test_no_kernel_in_bios_mode_has_the_old_fields(self):
        result, action = self.extension._stage_kexec(None)
        self.assertEqual("reboot", result["method"])
        self.assertEqual("no_kernel", result["reason"])
        self.assertEqual("bios", result["mode"])
        self.assertIsNone(result["entry"])
        self.assertIsNone(result["kernel"])
        self.assertEqual(self.power.reboot, action)


class NvramManager(test_extension.RecordingManager):
    """Boot entries in memory, as the firmware would keep them."""

    def __init__(self, conf):
        super().__init__(conf)
        self.config = efi.parse_efibootmgr(samples.V17)
        self.next_number = 0x10

    def get_boot_mode(self):
        return dict(SECURE)

    def list_boot_entries(self):
        self.calls.append(("list_boot_entries",))
        return json.loads(json.dumps(self.config))

    def create_boot_entry(self, path, partition, loader, label):
        self.calls.append(("create_boot_entry", path, partition, loader,
                           label))
        number = "%04X" % self.next_number
        self.next_number += 1
        self.config["entries"].append({
            "entry": number, "label": label, "active": True,
            "device_path": "", "kind": "disk", "partition": partition,
            "partition_uuid": samples.DISK_GUID, "mbr_signature": None,
            "loader": loader})
        self.config["boot_order"].insert(0, number)
        return number

    def delete_boot_entry(self, entry):
        self.calls.append(("delete_boot_entry", entry))
        self.config["entries"] = [e for e in self.config["entries"]
                                  if e["entry"] != entry]
        self.config["boot_order"] = [n for n in self.config["boot_order"]
                                     if n != entry]

    def set_boot_order(self, order):
        self.calls.append(("set_boot_order", list(order)))
        self.config["boot_order"] = list(order)

    def list_block_devices(self):
        return [{"path": "/dev/sda"}, {"path": "/dev/sdb"}]


class BootEntryPolicyTest(test_extension.ExtensionTestCase):

    def setUp(self):
        super().setUp()
        self.dispatcher = hardware.build_dispatcher(
            [("vendor", NvramManager)], self.conf)
        self.nvram = self.dispatcher.managers[0][1]

    def uuids(self, by_disk):
        return mock.patch.object(boot_entries, "disk_ids",
                                 side_effect=lambda path: set(by_disk[path]))

    def eligible(self, writable):
        return mock.patch.object(
            boot_entries.safety, "eligibility",
            side_effect=lambda device, conf: (device["path"] in writable,
                                              None))

    def test_set_up_entry_replaces_stale_entries_and_goes_first(self):
        # sda is written (holds DISK_GUID), sdb is the agent's own disk
        # (Windows); OLD_GUID is on no disk any more.
        by_disk = {"/dev/sda": [samples.DISK_GUID],
                   "/dev/sdb": [samples.WINDOWS_GUID]}
        with self.uuids(by_disk), self.eligible({"/dev/sda"}):
            result = boot_entries.set_up_entry(
                self.dispatcher, self.conf, "/dev/sda", 1,
                "\\EFI\\debian\\shimx64.efi", "Debian 12")
        self.assertEqual(["0004", "0005"],
                         [r["entry"] for r in result["removed"]])
        self.assertEqual("0010", result["entry"])
        self.assertEqual(["0010", "0001", "0000", "0002", "0003", "0006"],
                         result["boot_order"])
        self.assertEqual(result["boot_order"],
                         self.nvram.config["boot_order"])
        kept = {e["entry"] for e in self.nvram.config["entries"]}
        # Firmware, network, DVD and the protected disk's entry stay.
        self.assertEqual({"0000", "0001", "0002", "0003", "0006", "0010"},
                         kept)

    def test_remove_entries_for_erased_disks(self):
        removed = boot_entries.remove_entries_for(
            self.dispatcher, {samples.DISK_GUID, samples.OLD_GUID})
        self.assertEqual(["0004", "0005"], [r["entry"] for r in removed])
        self.assertEqual(["0001", "0000", "0002", "0003", "0006"],
                         self.nvram.config["boot_order"])

    def test_mbr_disks_written_protected_and_dangling(self):
        # sda (being written) and sdb (protected) have MBR tables; the
        # 0xdeadbeef disk of 0003 is gone.
        self.nvram.config = efi.parse_efibootmgr(samples.MBR_V17)
        by_disk = {"/dev/sda": ["mbr:4e1f2a3b"],
                   "/dev/sdb": [efi.mbr_key("0x0001abcd")]}
        with self.uuids(by_disk), self.eligible({"/dev/sda"}):
            result = boot_entries.set_up_entry(
                self.dispatcher, self.conf, "/dev/sda", 1,
                "\\EFI\\debian\\shimx64.efi", "Debian 12")
        self.assertEqual(
            [{"entry": "0001", "label": "debian", "partition_uuid": None,
              "mbr_signature": "0x4e1f2a3b"},
             {"entry": "0003", "label": "gone", "partition_uuid": None,
              "mbr_signature": "0xdeadbeef"}], result["removed"])
        self.assertEqual({"0002", "0010"},
                         {e["entry"] for e in self.nvram.config["entries"]})

    def test_an_identifier_a_protected_disk_shares_is_kept(self):
        # The image was cloned onto sdb too (same partition GUIDs), and
        # both disks carry MBR signature 0: entries naming them may boot
        # the protected disk, so neither goes.
        self.nvram.config = efi.parse_efibootmgr(
            samples.V17 + "Boot0007* zero\tHD(1,MBR,0x0,0x800,0x800)/File("
            "\\EFI\\z\\shimx64.efi)\n")
        by_disk = {"/dev/sda": [samples.DISK_GUID, "mbr:00000000"],
                   "/dev/sdb": [samples.DISK_GUID, "mbr:00000000",
                                samples.WINDOWS_GUID]}
        with self.uuids(by_disk), self.eligible({"/dev/sda"}):
            result = boot_entries.set_up_entry(
                self.dispatcher, self.conf, "/dev/sda", 1,
                "\\EFI\\debian\\shimx64.efi", "Debian 12")
        # Only the dangling OLD_GUID entry.
        self.assertEqual(["0005"], [r["entry"] for r in result["removed"]])
        kept = {e["entry"] for e in self.nvram.config["entries"]}
        self.assertTrue({"0004", "0006", "0007"} <= kept, kept)

    def test_an_unreadable_mbr_identifier_stops_the_dangling_rule(self):
        self.nvram.config = efi.parse_efibootmgr(samples.MBR_V17)
        tables = {"/dev/sda": {"type": "dos", "id": "0x4e1f2a3b",
                               "partitions": []},
                  "/dev/sdb": {"type": "dos", "id": None, "partitions": []}}
        with mock.patch.object(boot_entries.partitions, "read_table",
                               side_effect=lambda path: tables[path]), \
                self.eligible({"/dev/sda"}):
            result = boot_entries.set_up_entry(
                self.dispatcher, self.conf, "/dev/sda", 1,
                "\\EFI\\debian\\shimx64.efi", "Debian 12")
        # sdb's identifier is unknown: 0003 may boot it, so only the
        # written disk's entry goes.
        self.assertEqual(["0001"], [r["entry"] for r in result["removed"]])

    def test_disk_ids(self):
        tables = {
            "gpt": {"type": "gpt",
                    "id": "C0FFEE00-0000-4000-8000-000000000000",
                    "partitions": [{"uuid": samples.DISK_GUID.upper()},
                                   {"uuid": None}]},
            "dos": {"type": "dos", "id": "0x0001ABCD",
                    "partitions": [{"uuid": None}]},
            "bad": {"type": "dos", "id": "0xnothex", "partitions": []},
            "none": None}

        def read_table(path):
            if path == "broken":
                raise boot_entries.partitions.PartitionError("unreadable")
            return tables[path]
        with mock.patch.object(boot_entries.partitions, "read_table",
                               side_effect=read_table):
            self.assertEqual({samples.DISK_GUID},
                             boot_entries.disk_ids("gpt"))
            self.assertEqual({"mbr:0001abcd"}, boot_entries.disk_ids("dos"))
            self.assertIsNone(boot_entries.disk_ids("bad"))
            self.assertEqual(set(), boot_entries.disk_ids("none"))
            self.assertIsNone(boot_entries.disk_ids("broken"))

    def test_after_erase_removes_an_erased_mbr_disk_entries(self):
        self.nvram.config = efi.parse_efibootmgr(samples.MBR_V17)
        by_disk = {"/dev/sda": ["mbr:4e1f2a3b"], "/dev/sdb": ["mbr:0001abcd"]}
        with self.uuids(by_disk):
            removed, error = boot_entries.after_erase(
                self.dispatcher, {"/dev/sda": {"mbr:4e1f2a3b"},
                                  "/dev/sdb": {"mbr:0001abcd"}},
                ["/dev/sda"])
        self.assertIsNone(error)
        self.assertEqual(["0001"], [r["entry"] for r in removed])
        self.assertEqual({"0002", "0003"},
                         {e["entry"] for e in self.nvram.config["entries"]})

    def test_after_erase_keeps_what_a_surviving_disk_shares(self):
        # sda was erased; sdb (not erased) holds a clone with the same
        # partition GUID: entry 0004 may boot sdb and stays. 0005 booted
        # only sda's other partition and goes.
        by_disk = {"/dev/sda": [], "/dev/sdb": [samples.DISK_GUID]}
        with self.uuids(by_disk):
            removed, error = boot_entries.after_erase(
                self.dispatcher,
                {"/dev/sda": {samples.DISK_GUID, samples.OLD_GUID}},
                ["/dev/sda"])
        self.assertIsNone(error)
        self.assertEqual(["0005"], [r["entry"] for r in removed])
        self.assertIn("0004", {e["entry"]
                               for e in self.nvram.config["entries"]})

    def test_current_state_without_a_manager(self):
        dispatcher = hardware.build_dispatcher(
            [("vendor", test_extension.RecordingManager)], self.conf)
        self.assertEqual({"boot_mode": "bios", "secure_boot": None,
                          "setup_mode": None, "lockdown": None},
                         boot_entries.current_state(dispatcher))
        self.assertEqual(SECURE, boot_entries.current_state(self.dispatcher))


class KernelSignedTest(test_extension.ExtensionTestCase):

    def answer(self, returncode, out, err=""):
        return mock.patch.object(processes, "run",
                                 return_value=(returncode, out, err))

    def test_sbverify_answers(self):
        with self.answer(0, "signature 1\nimage signature issuers:\n"):
            self.assertTrue(uefi.kernel_signed("/k"))
        with self.answer(0, "", "No signature table present\n"):
            self.assertFalse(uefi.kernel_signed("/k"))
        with self.answer(1, "", "Can't open image /k\n"):
            self.assertIsNone(uefi.kernel_signed("/k"))
        with mock.patch.object(processes, "run", side_effect=(
                processes.ToolNotFound(["sbverify"]))):
            self.assertIsNone(uefi.kernel_signed("/k"))
