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
        self.assertEqual([], self.stale(
            samples.V18, set(),
            {samples.DISK_GUID, efi.mbr_key(samples.MBR_SIGNATURE)}))

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


class NetworkEntriesTest(fixtures.FakeMachineTestCase):
    """PXE, HTTP boot and SAN boot entries are the firmware's or the
    operator's: never stale, even when the disk node after iSCSI(),
    Fibre() or an unknown fabric node names a partition no disk of this
    machine has, or one of a disk the agent writes."""

    def entries(self, text):
        return {e["entry"]: e for e in efi.parse_efibootmgr(text)["entries"]}

    def test_kinds_in_version_17(self):
        entries = self.entries(samples.NETWORK_V17)
        self.assertEqual(
            {"0000": "firmware", "0001": "firmware", "0002": "network",
             "0003": "network", "0004": "network", "0005": "network",
             "0006": "network", "0007": "network", "0008": "network"},
            {number: e["kind"] for number, e in entries.items()})
        # The disk node is still read: only the kind keeps it safe.
        self.assertEqual(samples.SAN_GUID, entries["0005"]["partition_uuid"])
        self.assertEqual("\\EFI\\redhat\\shimx64.efi",
                         entries["0005"]["loader"])
        self.assertEqual(samples.FC_GUID, entries["0006"]["partition_uuid"])

    def test_kinds_in_version_18(self):
        entries = self.entries(samples.NETWORK_V18)
        self.assertEqual(
            {"0000": "firmware", "0001": "firmware", "0002": "network",
             "0004": "network", "0005": "network"},
            {number: e["kind"] for number, e in entries.items()})
        self.assertEqual(samples.SAN_GUID, entries["0005"]["partition_uuid"])
        self.assertEqual("\\EFI\\redhat\\shimx64.efi",
                         entries["0005"]["loader"])

    def test_never_stale_nor_removed_with_an_erased_disk(self):
        every = {samples.SAN_GUID, samples.FC_GUID, samples.OLD_GUID,
                 efi.mbr_key(samples.MBR_SIGNATURE)}
        for text in (samples.NETWORK_V17, samples.NETWORK_V18):
            config = efi.parse_efibootmgr(text)
            # Dangling: no disk of this machine has the LUN's partition.
            self.assertEqual([], efi.stale_entries(config, set(), set()))
            # Even a writable disk with the same identifiers (the LUN
            # seen as a local disk) does not make them disk entries.
            self.assertEqual([], efi.stale_entries(config, every, every))
            self.assertEqual([], efi.entries_for(config, every))

    def test_the_iscsi_entry_of_the_audit(self):
        # An iSCSI SAN entry next to a tenant's MBR entry: the tenant's
        # (signature on no disk) is dangling, the SAN one is kept.
        config = efi.parse_efibootmgr(
            "BootOrder: 0001,0002\n"
            "Boot0001* iSCSI SAN boot\tPciRoot(0x0)/Pci(0x2,0x0)/MAC("
            "525400123456,1)/IPv4(192.168.0.2,6,DHCP,192.168.0.10,"
            "192.168.0.1,255.255.255.0)/iSCSI(iqn.2020-01.test:lun,1,0,None,"
            "None,None,TCP)/HD(1,GPT,%s,0x800,0x100000)/File(\\EFI\\"
            "redhat\\shimx64.efi)\n"
            "Boot0002* MBR tenant\tHD(1,MBR,0x4e1f2a3b,0x800,0x100000)/File("
            "\\EFI\\debian\\shimx64.efi)\n" % samples.SAN_GUID)
        self.assertEqual(["0002"], [e["entry"] for e in efi.stale_entries(
            config, set(), {"deadbeef-0000-4000-8000-000000000000"})])

    def test_a_loader_name_does_not_make_a_disk_entry_a_network_one(self):
        # Only the nodes before the disk node count, so a tenant cannot
        # make its entry unremovable by naming its loader "MAC(.efi".
        for text in (
                "Boot0001* t\tHD(1,GPT,%s,0x800,0x800)/File(\\EFI\\MAC("
                "1)\\iSCSI(x).efi)\n",
                "Boot0001* t\tHD(1,GPT,%s,0x800,0x800)/\\EFI\\x/Uri(a)\n"):
            config = efi.parse_efibootmgr(text % samples.DISK_GUID)
            self.assertEqual("disk", config["entries"][0]["kind"], text)
            self.assertEqual(["0001"], [e["entry"] for e in efi.stale_entries(
                config, {samples.DISK_GUID}, None)])

    def test_a_label_naming_a_network_node_changes_nothing(self):
        config = efi.parse_efibootmgr(
            "Boot0001* PXE MAC(x) iSCSI(y)\tHD(1,GPT,%s,0x800,0x800)/File("
            "\\EFI\\x.efi)\n" % samples.DISK_GUID)
        self.assertEqual("disk", config["entries"][0]["kind"])

    def test_version_0_5_network_node_before_the_disk(self):
        config = efi.parse_efibootmgr(
            "Boot0003* SAN ACPI(a0341d0,0)PCI(2,0)MAC(00155d010203,0)"
            "IPv4(0.0.0.0:0<->0.0.0.0:0,0, 0iSCSI(iqn.x,1,0,None,None,None,"
            "TCP)HD(1,800,64000,%s)File(\\EFI\\centos\\grubx64.efi)\n"
            % samples.SAN_GUID)
        self.assertEqual("network", config["entries"][0]["kind"])
        self.assertEqual([], efi.stale_entries(config, set(), set()))


class MbrEntriesTest(fixtures.FakeMachineTestCase):
    """HD(n,MBR,0xSIG,...) entries are matched against the disks' MBR
    identifiers: removed when the disk is written or erased, or when no
    disk has the signature; kept for a disk the agent must not write."""

    def stale(self, text, writable, known):
        return [e["entry"] for e in efi.stale_entries(
            efi.parse_efibootmgr(text), writable, known)]

    def test_mbr_key(self):
        self.assertEqual("mbr:0001abcd", efi.mbr_key("0x1abcd"))
        self.assertEqual("mbr:0001abcd", efi.mbr_key("0x0001ABCD"))
        self.assertEqual("mbr:0001abcd", efi.mbr_key(0x1abcd))
        self.assertEqual("mbr:00000000", efi.mbr_key("0x0"))
        for bad in (None, "", "0x", "0x123456789", "zz", "-1", -1,
                    2 ** 32, True, "0x1 2", 1.5):
            self.assertIsNone(efi.mbr_key(bad), bad)
        self.assertEqual("mbr:0001abcd", efi.disk_id("MBR:0x0001abcd"))
        self.assertIsNone(efi.disk_id("mbr:nope"))
        self.assertIsNone(efi.disk_id("not-a-guid"))
        self.assertEqual(samples.DISK_GUID,
                         efi.disk_id(samples.DISK_GUID.upper()))

    def test_entry_key(self):
        entries = {e["entry"]: e for e in
                   efi.parse_efibootmgr(samples.MBR_V17)["entries"]}
        self.assertEqual("mbr:4e1f2a3b", efi.entry_key(entries["0001"]))
        self.assertEqual("mbr:0001abcd", efi.entry_key(entries["0002"]))
        self.assertEqual(samples.DISK_GUID, efi.entry_key(
            efi.parse_efibootmgr(samples.V17)["entries"][4]))
        self.assertIsNone(efi.entry_key(
            efi.parse_efibootmgr(samples.V17)["entries"][2]))

    def test_written_and_dangling_mbr_disks(self):
        # 0001's disk is written, 0002's is one the agent must not write,
        # 0003's signature is on no disk.
        self.assertEqual(["0001", "0003"], self.stale(
            samples.MBR_V17, {"mbr:4e1f2a3b"},
            {"mbr:4e1f2a3b", "mbr:0001abcd"}))

    def test_signature_without_leading_zeros_matches(self):
        self.assertEqual(["0002"], self.stale(
            samples.MBR_V17, {efi.mbr_key("0x0001abcd")},
            {efi.mbr_key("0x0001abcd"), "mbr:4e1f2a3b", "mbr:deadbeef"}))

    def test_no_dangling_rule_when_a_disk_could_not_be_read(self):
        self.assertEqual([], self.stale(samples.MBR_V17, set(), None))

    def test_a_gpt_guid_never_matches_an_mbr_entry(self):
        self.assertEqual([], self.stale(
            samples.MBR_V17, {samples.DISK_GUID},
            {"mbr:4e1f2a3b", "mbr:0001abcd", "mbr:deadbeef"}))

    def test_entries_for_an_erased_mbr_disk(self):
        config = efi.parse_efibootmgr(samples.MBR_V17 + samples.V17)
        self.assertEqual(["0002", "0004"], [
            e["entry"] for e in efi.entries_for(
                config, {"mbr:0001abcd", samples.DISK_GUID, "garbage"})])
