"""UEFI boot state from a faked sysfs tree, efibootmgr output parsing, and
which boot entries are stale."""

import os
import subprocess

from teeth_agent import hardware
from teeth_agent.hardware import efi
from teeth_agent.hardware import generic
from teeth_agent.hardware import inventory
from teeth_agent import processes
from tests.unit.hardware import efibootmgr_samples as samples
from tests.unit.hardware import fixtures

GENERIC = [("generic", generic.GenericHardwareManager)]


class BootStateTest(fixtures.FakeMachineTestCase):

    def set_lockdown(self, text):
        path = self.machine.sys("kernel", "security", "lockdown")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as stream:
            stream.write(text)

    def state(self):
        return self.build_dispatcher(GENERIC).dispatch("get_boot_mode")

    def test_bios_without_firmware_efi(self):
        self.assertEqual({"boot_mode": "bios", "secure_boot": False,
                          "setup_mode": None, "lockdown": None},
                         self.state())

    def test_uefi_with_secure_boot_and_lockdown(self):
        self.machine.set_efi(secure_boot=True, setup_mode=False,
                             lockdown="integrity")
        self.assertEqual({"boot_mode": "uefi", "secure_boot": True,
                          "setup_mode": False, "lockdown": "integrity"},
                         self.state())

    def test_uefi_setup_mode_without_secure_boot_variable(self):
        self.machine.set_efi(setup_mode=True)
        self.set_lockdown("[none] integrity confidentiality\n")
        state = self.state()
        self.assertEqual("uefi", state["boot_mode"])
        self.assertIsNone(state["secure_boot"])
        self.assertTrue(state["setup_mode"])
        self.assertEqual("none", state["lockdown"])

    def test_malformed_variable_is_unknown(self):
        self.machine.set_efi()
        path = self.machine.sys("firmware", "efi", "efivars",
                                "SecureBoot-" + efi.EFI_GLOBAL_GUID)
        for data in (b"\x06\x00\x00\x00\x02", b"\x06\x00", b"\x06" * 4096):
            with open(path, "wb") as stream:
                stream.write(data)
            self.assertIsNone(self.state()["secure_boot"], data[:8])

    def test_unknown_lockdown_text(self):
        self.machine.set_efi(secure_boot=False)
        self.set_lockdown("[sideways]\n")
        self.assertIsNone(self.state()["lockdown"])

    def test_in_inventory_and_handshake_summary(self):
        self.machine.set_efi(secure_boot=True, setup_mode=False)
        self.set_lockdown("none [integrity] confidentiality\n")
        dispatcher = self.build_dispatcher(GENERIC)
        summary = inventory.hardware_summary(dispatcher)
        self.assertEqual("uefi", summary["boot_mode"])
        self.assertIs(True, summary["secure_boot"])
        self.assertIs(False, summary["setup_mode"])
        self.assertEqual("integrity", summary["lockdown"])
        found = inventory.collect_inventory(dispatcher, self.conf)
        self.assertEqual("uefi", found["system"]["boot_mode"])

    def test_signed_load_required(self):
        self.assertFalse(efi.signed_load_required(
            {"secure_boot": False, "lockdown": "none"}))
        self.assertFalse(efi.signed_load_required(
            {"secure_boot": None, "lockdown": None}))
        self.assertTrue(efi.signed_load_required(
            {"secure_boot": True, "lockdown": None}))
        self.assertTrue(efi.signed_load_required(
            {"secure_boot": False, "lockdown": "confidentiality"}))


class ParseTest(fixtures.FakeMachineTestCase):

    def entries(self, text):
        return {e["entry"]: e for e in efi.parse_efibootmgr(text)["entries"]}

    def test_version_17(self):
        config = efi.parse_efibootmgr(samples.V17)
        self.assertEqual("0001", config["boot_current"])
        self.assertIsNone(config["boot_next"])
        self.assertEqual(0, config["timeout"])
        self.assertEqual(["0001", "0000", "0002", "0003", "0004", "0005",
                          "0006"], config["boot_order"])
        entries = self.entries(samples.V17)
        self.assertEqual("firmware", entries["0000"]["kind"])
        self.assertEqual("UiApp", entries["0000"]["label"])
        self.assertEqual("other", entries["0001"]["kind"])
        self.assertEqual("UEFI QEMU DVD-ROM QM00003",
                         entries["0001"]["label"])
        self.assertEqual("network", entries["0002"]["kind"])
        self.assertEqual("firmware", entries["0003"]["kind"])
        debian = entries["0004"]
        self.assertEqual("disk", debian["kind"])
        self.assertEqual(1, debian["partition"])
        self.assertEqual(samples.DISK_GUID, debian["partition_uuid"])
        self.assertEqual("\\EFI\\debian\\shimx64.efi", debian["loader"])
        self.assertTrue(debian["active"])
        old = entries["0005"]
        self.assertFalse(old["active"])
        self.assertEqual(samples.OLD_GUID, old["partition_uuid"])
        self.assertEqual("\\EFI\\ubuntu\\shimx64.efi", old["loader"])
        windows = entries["0006"]
        self.assertEqual(2, windows["partition"])
        self.assertEqual("\\EFI\\Microsoft\\Boot\\bootmgfw.efi",
                         windows["loader"])

    def test_version_18(self):
        config = efi.parse_efibootmgr(samples.V18)
        self.assertEqual("0004", config["boot_next"])
        self.assertEqual(3, config["timeout"])
        entries = self.entries(samples.V18)
        self.assertEqual(["0000", "0001", "0004", "0007", "0008"],
                         sorted(entries))
        self.assertEqual("other", entries["0001"]["kind"])
        debian = entries["0004"]
        self.assertEqual("Debian GNU/Linux 13 (trixie)", debian["label"])
        self.assertEqual(samples.DISK_GUID, debian["partition_uuid"])
        self.assertEqual("\\EFI\\debian\\shimx64.efi", debian["loader"])
        usb = entries["0007"]
        self.assertEqual("disk", usb["kind"])
        self.assertIsNone(usb["partition_uuid"])
        self.assertEqual("0x4e1f2a3b", usb["mbr_signature"])
        self.assertEqual("\\EFI\\BOOT\\BOOTX64.EFI", usb["loader"])
        self.assertEqual("network", entries["0008"]["kind"])

    def test_version_0_5(self):
        config = efi.parse_efibootmgr(samples.V05)
        self.assertEqual(["0002", "0000", "0001"], config["boot_order"])
        entries = self.entries(samples.V05)
        self.assertEqual("network", entries["0000"]["kind"])
        self.assertEqual("EFI Network 0 for IPv4 (00-15-5D-01-02-03)",
                         entries["0000"]["label"])
        self.assertEqual("other", entries["0001"]["kind"])
        self.assertEqual("EFI Hard Drive", entries["0001"]["label"])
        centos = entries["0002"]
        self.assertEqual("CentOS", centos["label"])
        self.assertEqual("disk", centos["kind"])
        self.assertEqual(samples.DISK_GUID, centos["partition_uuid"])
        self.assertEqual("\\EFI\\centos\\grubx64.efi", centos["loader"])

    def test_odd_output(self):
        config = efi.parse_efibootmgr(samples.ODD)
        self.assertEqual(["0001", "0002"], config["boot_order"])
        entries = self.entries(samples.ODD)
        self.assertEqual(["0001", "0002"], sorted(entries))
        self.assertNotIn("\x1b", entries["0001"]["label"])
        self.assertIsNone(entries["0001"]["partition_uuid"])
        self.assertEqual(efi.MAX_LABEL, len(entries["0002"]["label"]))
        self.assertEqual(samples.OLD_GUID, entries["0002"]["partition_uuid"])

    def test_empty_and_bounded(self):
        self.assertEqual({"boot_current": None, "boot_next": None,
                          "timeout": None, "boot_order": [], "entries": []},
                         efi.parse_efibootmgr(""))
        many = "".join("Boot%04X* x\tHD(1,GPT,%s,0x800,0x800)/File(\\a)\n"
                       % (n, samples.DISK_GUID) for n in range(2000))
        self.assertEqual(efi.MAX_ENTRIES,
                         len(efi.parse_efibootmgr(many)["entries"]))

    def test_read_entries_runs_efibootmgr_only_in_uefi(self):
        dispatcher = self.build_dispatcher(GENERIC)
        with self.assertRaises(hardware.HardwareManagerError) as caught:
            dispatcher.call("list_boot_entries")
        self.assertIn("not booted in UEFI mode", str(caught.exception))
        self.assertEqual([], self.tools.calls)
        self.machine.set_efi(secure_boot=False)
        self.tools.answer(["efibootmgr", "-v"], stdout=samples.V17)
        config = dispatcher.call("list_boot_entries")
        self.assertEqual(7, len(config["entries"]))

    def test_create_entry_finds_the_new_number(self):
        self.machine.set_efi(secure_boot=False)
        dispatcher = self.build_dispatcher(GENERIC)
        listings = [samples.V17, samples.V17 + (
            "Boot0009* Tenant\tHD(1,GPT,%s,0x800,0x800)/File(\\EFI\\t\\"
            "shimx64.efi)\n" % samples.DISK_GUID)]

        def spawn(argv, *args):
            self.tools.calls.append(list(argv))
            out = listings.pop(0) if argv[1:] == ["-v"] else ""
            return subprocess.CompletedProcess(argv, 0, out, "")
        original = processes._spawn
        processes._spawn = spawn
        self.addCleanup(setattr, processes, "_spawn", original)
        number = dispatcher.call("create_boot_entry", "/dev/sda", 1,
                                 "\\EFI\\t\\shimx64.efi", "Tenant")
        self.assertEqual("0009", number)
        self.assertIn(["efibootmgr", "-q", "-c", "-d", "/dev/sda", "-p", "1",
                       "-L", "Tenant", "-l", "\\EFI\\t\\shimx64.efi"],
                      self.tools.calls)

    def test_failed_efibootmgr_is_a_manager_error(self):
        self.machine.set_efi(secure_boot=False)
        self.tools.answer(["efibootmgr", "-q", "-b"], returncode=5,
                          stderr="Could not delete variable")
        dispatcher = self.build_dispatcher(GENERIC)
        with self.assertRaises(hardware.HardwareManagerError) as caught:
            dispatcher.call("delete_boot_entry", "0004")
        self.assertIn("Could not delete variable", str(caught.exception))


class StaleEntriesTest(fixtures.FakeMachineTestCase):

    def stale(self, text, writable, known, keep=()):
        return [e["entry"] for e in efi.stale_entries(
            efi.parse_efibootmgr(text), writable, known, keep)]

    def test_entries_of_writable_disks_and_dangling_ones(self):
        # 0004 boots the disk being written, 0005 a partition no disk has,
        # 0006 (Windows) a disk the agent must not write: kept.
        self.assertEqual(["0004", "0005"], self.stale(
            samples.V17, {samples.DISK_GUID},
            {samples.DISK_GUID, samples.WINDOWS_GUID}))

    def test_never_network_firmware_or_protected_disks(self):
        self.assertEqual([], self.stale(
            samples.V17, set(),
            {samples.DISK_GUID, samples.OLD_GUID, samples.WINDOWS_GUID}))
        self.assertEqual([], self.stale(samples.V18, set(),
                                        {samples.DISK_GUID}))

    def test_keep(self):
        self.assertEqual(["0005"], self.stale(
            samples.V17, {samples.DISK_GUID},
            {samples.WINDOWS_GUID}, keep={"0004"}))

    def test_entries_for(self):
        config = efi.parse_efibootmgr(samples.V17)
        self.assertEqual(["0005"], [e["entry"] for e in efi.entries_for(
            config, {samples.OLD_GUID.upper()})])

    def test_order_first(self):
        self.assertEqual(["0009", "0001", "0000"],
                         efi.order_first(["0001", "0009", "0000"], "0009"))
        self.assertEqual(["0009"], efi.order_first([], "0009"))

    def test_no_dangling_rule_when_a_disk_could_not_be_read(self):
        self.assertEqual(["0004"], self.stale(
            samples.V17, {samples.DISK_GUID}, None))


class SimulatedNvramTest(fixtures.FakeMachineTestCase):
    """With [power] simulate the generic manager never changes NVRAM: a
    test host booted UEFI keeps its own entries."""

    def test_changes_are_only_logged(self):
        self.machine.set_efi(secure_boot=False)
        self.set_config(**{"power.simulate": True})
        self.tools.answer(["efibootmgr", "-v"], stdout=samples.V17)
        dispatcher = self.build_dispatcher(GENERIC)
        self.assertIsNone(dispatcher.call(
            "create_boot_entry", "/dev/sda", 1, "\\EFI\\x\\shimx64.efi",
            "x"))
        dispatcher.call("delete_boot_entry", "0004")
        dispatcher.call("set_boot_order", ["0004"])
        dispatcher.call("set_boot_next", "0004")
        self.assertEqual(7, len(dispatcher.call("list_boot_entries")[
            "entries"]))
        self.assertEqual([["efibootmgr", "-v"]], self.tools.calls)
