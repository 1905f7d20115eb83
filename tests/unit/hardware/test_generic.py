"""The generic Linux manager on a faked sysfs/procfs tree."""

import os
import sys
from unittest import mock

from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import generic
from teeth_agent import processes
from tests.unit.hardware import fixtures
from tests.unit.hardware import test_health

DMIDECODE_MEMORY = """\
# dmidecode 3.4
Getting SMBIOS data from sysfs.
SMBIOS 3.3.0 present.

Handle 0x1100, DMI type 17, 84 bytes
Memory Device
\tArray Handle: 0x1000
\tSize: 16 GB
\tLocator: DIMM_A1
\tType: DDR4
\tSpeed: 3200 MT/s

Handle 0x1101, DMI type 17, 84 bytes
Memory Device
\tArray Handle: 0x1000
\tSize: No Module Installed
\tLocator: DIMM_A2
\tType: Unknown
\tSpeed: Unknown

Handle 0x1102, DMI type 17, 84 bytes
Memory Device
\tSize: 8192 MB
\tLocator: DIMM_B1
\tType: DDR4
\tSpeed: 2666 MHz
"""


class GenericTestCase(fixtures.FakeMachineTestCase):
    def setUp(self):
        super().setUp()
        self.manager = generic.GenericHardwareManager(self.conf)

    def devices(self):
        return {d["name"]: d for d in self.manager.list_block_devices()}


class TestSystemAndCpus(GenericTestCase):
    def test_support_level_is_always_generic(self):
        self.assertEqual(hw_base.HardwareSupport.GENERIC,
                         self.manager.evaluate_hardware_support())

    def test_system_info_from_dmi(self):
        self.machine.set_dmi(sys_vendor="Dell Inc.",
                             product_name="PowerEdge R640",
                             product_serial="7XYZ123",
                             product_uuid="4c4c4544-0031-3510-8052-b4c04f33",
                             bios_version="2.12.2", bios_date="07/09/2021")
        self.assertEqual({"vendor": "Dell Inc.", "product": "PowerEdge R640",
                          "serial": "7XYZ123",
                          "uuid": "4c4c4544-0031-3510-8052-b4c04f33",
                          "bios_version": "2.12.2",
                          "bios_date": "07/09/2021"},
                         self.manager.get_system_info())
        self.assertEqual({"bios": "2.12.2"},
                         self.manager.get_firmware_versions())

    def test_missing_dmi_gives_none_not_an_error(self):
        info = self.manager.get_system_info()
        self.assertEqual(set(["vendor", "product", "serial", "uuid",
                              "bios_version", "bios_date"]), set(info))
        self.assertEqual({None}, set(info.values()))
        self.assertEqual({}, self.manager.get_firmware_versions())

    def test_cpu_topology(self):
        self.machine.set_cpus(model="Xeon Gold 6230", sockets=2, cores=4,
                              threads_per_core=2, flags=("fpu", "avx512f"))
        cpus = self.manager.get_cpus()
        self.assertEqual(16, cpus["count"])
        self.assertEqual(16, cpus["threads"])
        self.assertEqual(2, cpus["sockets"])
        self.assertEqual(8, cpus["cores"])
        self.assertEqual("Xeon Gold 6230", cpus["model"])
        self.assertEqual(["fpu", "avx512f"], cpus["flags"])
        self.assertTrue(cpus["arch"])

    def test_cpu_topology_from_cpuinfo_without_sysfs(self):
        self.machine.set_cpus(sockets=2, cores=2)
        cpu_root = self.machine.sys("devices", "system", "cpu")
        for entry in os.listdir(cpu_root):
            for name in ("physical_package_id", "core_id"):
                os.unlink(os.path.join(cpu_root, entry, "topology", name))
        cpus = self.manager.get_cpus()
        self.assertEqual((4, 2, 4), (cpus["count"], cpus["sockets"],
                                     cpus["cores"]))


class TestMemory(GenericTestCase):
    def test_total_from_memory_blocks_and_dimms_from_dmidecode(self):
        self.machine.set_memory(24 * 2 ** 30, block_bytes=2 ** 30)
        self.tools.answer(["dmidecode"], stdout=DMIDECODE_MEMORY)
        memory = self.manager.get_memory()
        self.assertEqual(24 * 2 ** 30, memory["total_bytes"])
        self.assertEqual([
            {"size_bytes": 16 * 2 ** 30, "locator": "DIMM_A1",
             "type": "DDR4", "speed_mts": 3200},
            {"size_bytes": 8 * 2 ** 30, "locator": "DIMM_B1",
             "type": "DDR4", "speed_mts": 2666}], memory["dimms"])
        self.assertEqual([["dmidecode", "--type", "17"]], self.tools.calls)

    def test_meminfo_when_there_are_no_memory_blocks(self):
        self.machine.set_memory(0, memtotal_bytes=3 * 2 ** 30)
        self.tools.missing("dmidecode")
        memory = self.manager.get_memory()
        self.assertEqual(3 * 2 ** 30, memory["total_bytes"])
        self.assertIsNone(memory["dimms"])

    def test_failing_dmidecode_leaves_dimms_unknown(self):
        self.tools.answer(["dmidecode"], stderr="/dev/mem: denied",
                          returncode=1)
        self.assertIsNone(self.manager.get_memory()["dimms"])


class TestBlockDevices(GenericTestCase):
    def test_sata_disk_attributes(self):
        self.machine.add_disk(
            "sda", 480103981056, model="SAMSUNG MZ7LH480", serial="S45N1",
            wwid="naa.5002538E40A1B2C3", vendor="ATA", rotational=False,
            logical_sector_size=512, physical_sector_size=4096,
            by_path="pci-0000:00:17.0-ata-1")
        sda = self.devices()["sda"]
        self.assertEqual({
            "path": self.machine.dev_path("sda"), "name": "sda",
            "size_bytes": 480103981056, "model": "SAMSUNG MZ7LH480",
            "serial": "S45N1", "wwn": "0x5002538e40a1b2c3", "vendor": "ATA",
            "rotational": False, "logical_sector_size": 512,
            "physical_sector_size": 4096, "removable": False,
            "read_only": False, "transport": "sata", "partitions": [],
            "holders": [], "mounted": False, "mountpoints": [],
            "is_agent_root": False,
            "by_path": os.path.join(self.machine.dev_root, "disk", "by-path",
                                    "pci-0000:00:17.0-ata-1")}, sda)

    def test_transports_are_told_apart(self):
        self.machine.add_disk("sda", 2 ** 30, transport="sata")
        self.machine.add_disk("sdb", 2 ** 30, transport="sas")
        self.machine.add_disk("sdc", 2 ** 30, transport="usb")
        self.machine.add_disk("sdd", 2 ** 30, transport="scsi")
        self.machine.add_disk("nvme0n1", 2 ** 30, transport="nvme")
        self.machine.add_disk("vda", 2 ** 30, transport="virtio")
        self.machine.add_disk("loop3", 2 ** 30, transport="loop")
        self.assertEqual({"sda": "sata", "sdb": "sas", "sdc": "usb",
                          "sdd": "scsi", "nvme0n1": "nvme", "vda": "virtio",
                          "loop3": "loop"},
                         {name: d["transport"]
                          for name, d in self.devices().items()})

    def test_serial_and_wwn_locations_per_transport(self):
        self.machine.add_disk("nvme0n1", 2 ** 30, transport="nvme",
                              model="NVMe 1", serial="NV-1",
                              wwid="eui.0025388B71B2D0E4")
        self.machine.add_disk("vda", 2 ** 30, transport="virtio",
                              serial="VDISK0001")
        self.machine.add_disk("sdb", 2 ** 30, transport="sas",
                              serial="SAS-77", vendor="SEAGATE",
                              wwid="t10.SEAGATE ST1000")
        devices = self.devices()
        self.assertEqual(("NVMe 1", "NV-1", "0x0025388b71b2d0e4", None),
                         tuple(devices["nvme0n1"][k] for k in
                               ("model", "serial", "wwn", "vendor")))
        # virtio's "vendor" is a PCI id, which is not a vendor name.
        self.assertEqual(("VDISK0001", None),
                         (devices["vda"]["serial"], devices["vda"]["vendor"]))
        self.assertEqual(("SAS-77", "t10.SEAGATE ST1000", "SEAGATE"),
                         tuple(devices["sdb"][k] for k in
                               ("serial", "wwn", "vendor")))

    def test_not_disks_are_left_out(self):
        self.machine.add_disk("sda", 2 ** 30)
        self.machine.add_partition("sda", "sda1", 2 ** 29)
        self.machine.add_unattached_loop("loop7")
        self.machine.add_disk("ram0", 2 ** 20, transport=None)
        self.machine.add_disk("zram0", 2 ** 20, transport=None)
        self.machine.add_disk("sr0", 2 ** 20, transport="scsi")
        self.machine.add_disk("sdz", 0, transport="usb")
        self.machine.add_holder("sda1", "dm-0")
        self.machine.add_holder("sda1", "md127")
        self.assertEqual(["sda"], sorted(self.devices()))

    def test_virtual_and_remote_block_devices_are_left_out(self):
        # What a ramdisk may see besides disks; each has a size, so only
        # its name (or sysfs "hidden") tells it is not a disk to erase.
        self.machine.add_disk("sdb", 2 ** 30)
        self.machine.add_disk("nvme0n1", 2 ** 30, transport="nvme")
        virtual = ["bcache0", "drbd1", "nbd0", "rbd0", "etherd!e0.0",
                   "nullb0", "ublkb0", "zd0", "zram1", "ram3", "md0p1"]
        for name in virtual:
            self.machine.add_disk(name, 2 ** 20, transport=None)
        self.machine.add_holder("sdb", "bcache0")
        self.machine.add_holder("sdb", "drbd1")
        # Native NVMe multipath: the per-path disk is hidden.
        self.machine.add_disk("nvme0c0n1", 2 ** 30, transport="nvme")
        with open(self.machine.sys("class", "block", "nvme0c0n1", "hidden"),
                  "w") as stream:
            stream.write("1\n")
        with open(self.machine.sys("class", "block", "nvme0n1", "hidden"),
                  "w") as stream:
            stream.write("0\n")
        self.assertEqual(["nvme0n1", "sdb"], sorted(self.devices()))

    def test_missing_attributes_degrade_to_none(self):
        self.machine.add_disk("sda", 2 ** 30, model="M")
        directory = self.machine.sys("class", "block", "sda")
        os.unlink(os.path.join(directory, "queue", "rotational"))
        os.unlink(os.path.join(directory, "removable"))
        os.unlink(os.path.join(self.machine.sys("class", "block", "sda",
                                                "device"), "model"))
        sda = self.devices()["sda"]
        self.assertIsNone(sda["rotational"])
        self.assertIsNone(sda["removable"])
        self.assertIsNone(sda["model"])
        self.assertEqual(2 ** 30, sda["size_bytes"])

    def test_partitions_holders_and_nested_mounts(self):
        self.machine.add_disk("sda", 100 * 2 ** 30)
        self.machine.add_partition("sda", "sda1", 2 ** 30)
        self.machine.add_partition("sda", "sda2", 90 * 2 ** 30)
        self.machine.add_holder("sda2", "md0")
        self.machine.add_holder("md0", "dm-3", dm_name="vg-data")
        self.machine.add_mount("dm-3", "/srv/data files")
        self.machine.add_disk("sdb", 100 * 2 ** 30)
        sda = self.devices()["sda"]
        self.assertEqual([self.machine.dev_path("sda1"),
                          self.machine.dev_path("sda2")], sda["partitions"])
        self.assertTrue(sda["mounted"])
        self.assertEqual(["/srv/data files"], sda["mountpoints"])
        self.assertFalse(sda["is_agent_root"])
        self.assertFalse(self.devices()["sdb"]["mounted"])

    def test_whole_disk_holder_is_listed(self):
        self.machine.add_disk("sdb", 2 ** 30)
        self.machine.add_holder("sdb", "dm-1")
        self.assertEqual(["dm-1"], self.devices()["sdb"]["holders"])

    def test_agent_root_device(self):
        self.machine.add_disk("vda", 2 ** 34, transport="virtio")
        self.machine.add_partition("vda", "vda1", 2 ** 33)
        self.machine.add_mount("vda1", "/")
        self.machine.add_disk("vdb", 2 ** 34, transport="virtio")
        devices = self.devices()
        self.assertTrue(devices["vda"]["is_agent_root"])
        self.assertEqual(["/"], devices["vda"]["mountpoints"])
        self.assertFalse(devices["vdb"]["is_agent_root"])

    def test_mount_matched_by_source_when_the_device_number_is_anonymous(
            self):
        # btrfs reports an anonymous 0:N device number in mountinfo.
        self.machine.add_disk("sdc", 2 ** 30)
        self.machine.add_partition("sdc", "sdc1", 2 ** 29)
        self.machine.add_mount("sdc1", "/btrfs", fstype="btrfs",
                               devnum="0:45")
        self.assertEqual(["/btrfs"], self.devices()["sdc"]["mountpoints"])

    def test_swap_counts_as_mounted(self):
        self.machine.add_disk("sdd", 2 ** 30)
        self.machine.add_partition("sdd", "sdd1", 2 ** 29)
        self.machine.add_swap("sdd1")
        sdd = self.devices()["sdd"]
        self.assertTrue(sdd["mounted"])
        self.assertEqual(["[SWAP]"], sdd["mountpoints"])

    def test_loop_device_with_backing_file(self):
        self.machine.add_disk("loop2", 3 * 2 ** 30, transport="loop",
                              backing_file="/tmp/x.img")
        loop = self.devices()["loop2"]
        self.assertEqual(("loop", 3 * 2 ** 30),
                         (loop["transport"], loop["size_bytes"]))


class TestUdev(GenericTestCase):
    def test_fake_sysfs_never_asks_udev(self):
        fake_pyudev = mock.Mock()
        self.machine.add_disk("sda", 2 ** 30, serial="S")
        with mock.patch.dict(sys.modules, {"pyudev": fake_pyudev}):
            self.assertEqual(["sda"], sorted(self.devices()))
            self.assertIsNone(self.manager._udev_disks())
        fake_pyudev.Context.assert_not_called()

    def test_udev_properties_win_over_sysfs(self):
        self.machine.add_disk("sda", 2 ** 30, serial="SYSFS-SERIAL",
                              wwid="naa.5000000000000001", model="Sysfs M")
        udev = {"sda": {"ID_SERIAL_SHORT": "UDEV-SERIAL",
                        "ID_SERIAL": "Vendor_Model_UDEV-SERIAL",
                        "ID_WWN_WITH_EXTENSION": "0x5000000000000002",
                        "ID_PATH": "pci-0000:00:17.0-ata-1",
                        "ID_VENDOR": "ATA"}}
        with mock.patch.object(self.manager, "_udev_disks",
                               return_value=udev):
            sda = self.devices()["sda"]
        self.assertEqual("UDEV-SERIAL", sda["serial"])
        self.assertEqual("0x5000000000000002", sda["wwn"])
        self.assertEqual("/dev/disk/by-path/pci-0000:00:17.0-ata-1",
                         sda["by_path"])
        self.assertEqual("Sysfs M", sda["model"])

    def test_udev_without_properties_falls_back_to_sysfs(self):
        # Without udevd the database is empty: only kernel fields remain.
        self.machine.add_disk("sda", 2 ** 30, serial="SYSFS-SERIAL",
                              wwid="naa.5000000000000001")
        udev = {"sda": {"DEVNAME": "/dev/sda", "DEVTYPE": "disk",
                        "MAJOR": "8", "MINOR": "0"}}
        with mock.patch.object(self.manager, "_udev_disks",
                               return_value=udev):
            sda = self.devices()["sda"]
        self.assertEqual(("SYSFS-SERIAL", "0x5000000000000001"),
                         (sda["serial"], sda["wwn"]))

    def test_udev_enumeration_on_the_real_sysfs(self):
        device = mock.Mock(sys_name="sda", properties={"ID_WWN": "0x1"})
        fake_pyudev = mock.Mock()
        fake_pyudev.Context.return_value.list_devices.return_value = [device]
        with mock.patch.object(self.manager, "_uses_real_sysfs",
                               return_value=True), \
                mock.patch.dict(sys.modules, {"pyudev": fake_pyudev}):
            found = self.manager._udev_disks()
        self.assertEqual({"sda": {"ID_WWN": "0x1"}}, found)
        fake_pyudev.Context.return_value.list_devices.assert_called_once_with(
            subsystem="block", DEVTYPE="disk")

    def test_one_udev_context_serves_every_enumeration(self):
        # Each new context runs ``ldconfig -p`` (ctypes.util.find_library);
        # the safety check before every write enumerates again.
        device = mock.Mock(sys_name="sda", properties={"ID_WWN": "0x1"})
        fake_pyudev = mock.Mock()
        fake_pyudev.Context.return_value.list_devices.return_value = [device]
        with mock.patch.object(self.manager, "_uses_real_sysfs",
                               return_value=True), \
                mock.patch.dict(sys.modules, {"pyudev": fake_pyudev}):
            for _ in range(3):
                self.assertEqual({"sda": {"ID_WWN": "0x1"}},
                                 self.manager._udev_disks())
        fake_pyudev.Context.assert_called_once_with()
        self.assertEqual(
            3, fake_pyudev.Context.return_value.list_devices.call_count)

    def test_udev_failure_falls_back_to_sysfs(self):
        fake_pyudev = mock.Mock()
        fake_pyudev.Context.side_effect = OSError("no libudev")
        with mock.patch.object(self.manager, "_uses_real_sysfs",
                               return_value=True), \
                mock.patch.dict(sys.modules, {"pyudev": fake_pyudev}):
            self.assertIsNone(self.manager._udev_disks())


class TestNetwork(GenericTestCase):
    def test_physical_interfaces_only(self):
        self.machine.add_nic("lo", "00:00:00:00:00:00", virtual=True)
        self.machine.add_nic("br0", "52:54:00:00:00:01", virtual=True)
        self.machine.add_nic("eno1", "3C:EC:EF:00:11:22", speed_mbps=25000,
                             driver="ice", pci_address="0000:3b:00.0")
        self.machine.add_nic("eno2", "3c:ec:ef:00:11:23", carrier=None,
                             driver="ice", pci_address="0000:3b:00.1")
        nics = self.manager.list_network_interfaces()
        self.assertEqual([
            {"name": "eno1", "mac": "3c:ec:ef:00:11:22", "link": True,
             "speed_mbps": 25000, "driver": "ice",
             "pci_address": "0000:3b:00.0"},
            {"name": "eno2", "mac": "3c:ec:ef:00:11:23", "link": False,
             "speed_mbps": None, "driver": "ice",
             "pci_address": "0000:3b:00.1"}], nics)

    def test_virtual_interfaces_when_asked_for(self):
        self.machine.add_nic("lo", "00:00:00:00:00:00", virtual=True)
        self.machine.add_nic("br0", "52:54:00:00:00:01", virtual=True)
        self.machine.add_nic("eno1", "3c:ec:ef:00:11:22")
        self.set_config(**{"hardware.include_virtual_nics": True})
        names = [nic["name"] for nic in
                 self.manager.list_network_interfaces()]
        self.assertEqual(["br0", "eno1"], names)

    def test_link_from_carrier_when_readable(self):
        self.machine.add_nic("eth0", "02:00:00:00:00:01", carrier=False,
                             operstate="up")
        self.assertFalse(self.manager.list_network_interfaces()[0]["link"])


class TestBiosAndSecureBoot(GenericTestCase):
    def test_without_firmware_attributes_the_manager_declines(self):
        with self.assertRaises(hw_base.IncompatibleHardwareMethodError):
            self.manager.get_bios_settings()
        with self.assertRaises(hw_base.IncompatibleHardwareMethodError):
            self.manager.apply_bios_settings({"SriovGlobalEnable": "Enabled"})

    def test_read_and_apply_settings(self):
        self.machine.add_bios_setting("BootMode", "Bios")
        self.machine.add_bios_setting("SriovGlobalEnable", "Disabled")
        self.assertEqual({"BootMode": "Bios",
                          "SriovGlobalEnable": "Disabled"},
                         self.manager.get_bios_settings())
        applied = self.manager.apply_bios_settings(
            {"BootMode": "Uefi", "SriovGlobalEnable": True})
        self.assertEqual({"BootMode": "Uefi", "SriovGlobalEnable": "Enabled"},
                         applied)
        self.assertEqual("Uefi", self.machine.bios_setting("BootMode"))

    def test_unknown_setting_is_an_error(self):
        self.machine.add_bios_setting("BootMode", "Bios")
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.manager.apply_bios_settings({"NoSuchThing": "1"})
        self.assertIn("NoSuchThing", str(caught.exception))
        self.assertEqual("Bios", self.machine.bios_setting("BootMode"))

    def test_legacy_boot_has_no_secure_boot(self):
        self.assertEqual({"supported": False, "enabled": None,
                          "setup_mode": None},
                         self.manager.get_secure_boot_state())

    def test_secure_boot_from_efivars(self):
        self.machine.set_efi(secure_boot=True, setup_mode=False)
        self.assertEqual({"supported": True, "enabled": True,
                          "setup_mode": False},
                         self.manager.get_secure_boot_state())

    def test_missing_efi_variable_is_unknown(self):
        self.machine.set_efi(secure_boot=False)
        self.assertEqual({"supported": True, "enabled": False,
                          "setup_mode": None},
                         self.manager.get_secure_boot_state())


class TestEraseDelegation(GenericTestCase):
    def test_erase_calls_go_to_the_erase_module(self):
        fake_erase = mock.Mock()
        fake_erase.get_capabilities.return_value = ["overwrite"]
        fake_erase.erase_device.return_value = {"method": "overwrite"}
        device = {"path": "/dev/sdx"}
        progress = mock.Mock()
        with mock.patch.dict(sys.modules,
                             {"teeth_agent.hardware.erase": fake_erase}), \
                mock.patch("teeth_agent.hardware.erase", fake_erase,
                           create=True):
            self.assertEqual(["overwrite"],
                             self.manager.get_erase_capabilities(device))
            self.assertEqual({"method": "overwrite"},
                             self.manager.erase_block_device(
                                 device, "overwrite", progress))
        fake_erase.get_capabilities.assert_called_once_with(self.manager,
                                                            device)
        fake_erase.erase_device.assert_called_once_with(
            self.manager, device, "overwrite", progress)


class TestInstallDevice(GenericTestCase):
    def setUp(self):
        super().setUp()
        self.machine.add_disk("sda", 960 * 10 ** 9, model="Big",
                              serial="BIG-1", wwid="naa.5000000000000aaa",
                              rotational=True)
        self.machine.add_disk("sdb", 240 * 10 ** 9, model="Small",
                              serial="SMALL-1", by_path="pci-0-ata-2")
        self.machine.add_disk("sdc", 240 * 10 ** 9, model="Small",
                              serial="SMALL-2")
        self.machine.add_disk("sdd", 2 * 2 ** 30, model="Tiny")
        self.machine.add_disk("sde", 64 * 2 ** 30, transport="usb",
                              removable=True, model="Stick")

    def choose(self, **hints):
        return self.manager.get_os_install_device(hints)["name"]

    def test_without_hints_the_smallest_fixed_disk_of_4gib_wins(self):
        # sdb and sdc tie on size: the path decides.
        self.assertEqual("sdb", self.choose())

    def test_ineligible_devices_are_never_chosen(self):
        self.machine.add_partition("sdb", "sdb1", 2 ** 30)
        self.machine.add_mount("sdb1", "/var/log")
        self.assertEqual("sdc", self.choose())
        self.set_config(**{"hardware.device_exclude":
                           [self.machine.dev_path("sdc")]})
        self.assertEqual("sda", self.choose())

    def test_hints(self):
        self.assertEqual("sda", self.choose(rotational=True))
        self.assertEqual("sdc", self.choose(serial="SMALL-2"))
        self.assertEqual("sda", self.choose(wwn="0x5000000000000aaa"))
        self.assertEqual("sdc", self.choose(name="sdc"))
        self.assertEqual("sdc", self.choose(name="/dev/sdc"))
        self.assertEqual("sdb", self.choose(by_path="pci-0-ata-2"))
        self.assertEqual("sda", self.choose(size_bytes=960 * 10 ** 9))
        self.assertEqual("sdb", self.choose(size_gb=223, model="Small"))
        # Hints may name a removable device explicitly.
        self.assertEqual("sde", self.choose(model="Stick"))

    def test_no_match_is_a_clear_error(self):
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.choose(serial="NOPE")
        self.assertIn("NOPE", str(caught.exception))

    def test_bad_hints_are_refused(self):
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.choose(colour="blue")
        self.assertIn("colour", str(caught.exception))
        with self.assertRaises(hw_base.HardwareManagerError):
            self.choose(size_bytes="960")
        with self.assertRaises(hw_base.HardwareManagerError):
            self.choose(rotational="yes")

    def test_nothing_eligible(self):
        for name in ("sda", "sdb", "sdc"):
            self.machine.add_mount(name, "/mnt/%s" % name)
        with self.assertRaises(hw_base.HardwareManagerError):
            self.choose()


class TestDmidecodeParser(fixtures.FakeMachineTestCase):
    def test_empty_output(self):
        self.assertEqual([], generic.parse_dmidecode_memory(""))


class TestMemoryTest(GenericTestCase):
    """run_memory_test sizes memtester from a share of MemAvailable when
    no size is given."""

    def setUp(self):
        super().setUp()
        patcher = mock.patch.object(
            processes, "which",
            lambda program: "/usr/bin/%s" % program
            if program == "memtester" else None)
        patcher.start()
        self.addCleanup(patcher.stop)
        self.tools.answer(["memtester"], stdout=test_health.MEMTESTER_OK)

    def meminfo(self, text):
        with open(os.path.join(self.machine.procfs_root, "meminfo"),
                  "w") as stream:
            stream.write(text)

    def memtester_calls(self):
        return [call for call in self.tools.calls if call[0] == "memtester"]

    def test_free_fraction_of_memavailable(self):
        self.meminfo("MemTotal:       16384000 kB\n"
                     "MemFree:         1000000 kB\n"
                     "MemAvailable:    2097152 kB\n"
                     "Buffers:           1024 kB\n")
        readings = self.manager.run_memory_test(None, 0.25, 2, None)
        # 0.25 of 2 GiB available (not of MemFree, not of MemTotal).
        self.assertEqual([["memtester", "512M", "2"]], self.memtester_calls())
        self.assertEqual((512 * 1024 ** 2, 2, "memtester 4.6.0"),
                         (readings["size_bytes"], readings["loops"],
                          readings["tool"]))

    def test_a_given_size_does_not_read_meminfo(self):
        self.meminfo("MemTotal:       16384000 kB\n")
        self.manager.run_memory_test(64 * 1024 ** 2, None, 1, None)
        self.assertEqual([["memtester", "64M", "1"]], self.memtester_calls())

    def test_meminfo_without_a_usable_memavailable_runs_nothing(self):
        for text in ("MemTotal:       16384000 kB\n",
                     "MemAvailable:\n", "MemAvailable:   lots kB\n",
                     "MemAvailable:   -5 kB\n", "XMemAvailable: 5 kB\n",
                     "MemAvailable:   2097152 MB\n", ""):
            with self.subTest(text=text):
                self.meminfo(text)
                with self.assertRaises(hw_base.HardwareManagerError) as caught:
                    self.manager.run_memory_test(None, 0.5, 1, None)
                self.assertIn("/proc/meminfo has no MemAvailable",
                              str(caught.exception))
        os.remove(os.path.join(self.machine.procfs_root, "meminfo"))
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.manager.run_memory_test(None, 0.5, 1, None)
        self.assertIn("cannot read /proc/meminfo", str(caught.exception))
        self.assertEqual([], self.memtester_calls())
