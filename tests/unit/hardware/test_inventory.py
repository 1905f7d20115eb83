"""Inventory shape, agent identity and install-device choice."""

import json
import tempfile
from unittest import mock

from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent.hardware import generic
from teeth_agent.hardware import inventory
from teeth_agent.hardware import safety
from teeth_agent.hardware import testing
from tests.unit.hardware import fixtures

GENERIC = [("generic", generic.GenericHardwareManager)]


class Sparse(hw_base.HardwareManager):
    """A manager that knows little and leaves keys out."""

    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.SERVICE_PROVIDER

    def get_system_info(self):
        return {"vendor": "Sparse Inc."}

    def get_cpus(self):
        return {"count": 4}

    def get_memory(self):
        return {}

    def list_block_devices(self):
        return [{"path": "/dev/sdq", "read_only": False,
                 "is_agent_root": False, "mounted": False}]

    def list_network_interfaces(self):
        return [{"name": "eth9", "mac": "02:00:00:00:00:09",
                 "firmware": "7.1"}]


class TestCollectInventory(fixtures.FakeMachineTestCase):
    def setUp(self):
        super().setUp()
        self.machine.set_dmi(
            sys_vendor="Supermicro", product_name="X11",
            product_serial="SM123", bios_version="3.4",
            product_uuid="00000000-0000-0000-0000-0cc47a000001")
        self.machine.set_cpus(model="EPYC", sockets=1, cores=8)
        self.machine.set_memory(64 * 2 ** 30, block_bytes=2 ** 30)
        self.machine.add_disk("sda", 480 * 10 ** 9, model="SSD", serial="A")
        self.machine.add_disk("sdb", 4 * 10 ** 12, rotational=True,
                              serial="B", transport="sas")
        self.machine.add_partition("sdb", "sdb1", 10 ** 12)
        self.machine.add_mount("sdb1", "/mnt")
        self.machine.add_disk("sdc", 10 ** 12, serial="C")
        self.machine.add_nic("eno1", "0C:C4:7A:00:00:01", speed_mbps=10000)
        self.tools.missing("dmidecode")

    def test_protocol_shape(self):
        self.set_config(**{"hardware.device_exclude":
                           [self.machine.dev_path("sdc")]})
        found = inventory.collect_inventory(self.build_dispatcher(GENERIC),
                                            self.conf)
        self.assertEqual(["cpu", "disks", "memory", "nics", "system"],
                         sorted(found))
        self.assertEqual(
            {"vendor": "Supermicro", "product": "X11", "serial": "SM123",
             "uuid": "00000000-0000-0000-0000-0cc47a000001",
             "bios_version": "3.4", "bios_date": None,
             "boot_mode": "bios", "secure_boot": False, "setup_mode": None,
             "lockdown": None}, found["system"])
        self.assertEqual(8, found["cpu"]["count"])
        self.assertEqual("EPYC", found["cpu"]["model"])
        self.assertNotIn("flags", found["cpu"])
        self.assertEqual({"total_bytes": 64 * 2 ** 30, "dimms": None},
                         found["memory"])
        # The excluded device is absent, not merely ineligible.
        self.assertEqual([self.machine.dev_path("sda"),
                          self.machine.dev_path("sdb")],
                         [d["path"] for d in found["disks"]])
        sda, sdb = found["disks"]
        self.assertEqual((True, None), (sda["eligible"],
                                        sda["ineligible_reason"]))
        self.assertEqual((False, "mounted at /mnt"),
                         (sdb["eligible"], sdb["ineligible_reason"]))
        for disk in found["disks"]:
            for field in ("path", "size_bytes", "model", "serial", "wwn",
                          "rotational", "logical_sector_size",
                          "physical_sector_size", "read_only", "transport",
                          "eligible", "ineligible_reason"):
                self.assertIn(field, disk)
        self.assertEqual([{"name": "eno1", "mac": "0c:c4:7a:00:00:01",
                           "speed_mbps": 10000, "link": True,
                           "driver": "e1000e",
                           "pci_address": found["nics"][0]["pci_address"]}],
                         found["nics"])
        json.dumps(found)

    def test_unreadable_fields_are_null_never_missing(self):
        dispatcher = self.build_dispatcher([("sparse", Sparse)])
        found = inventory.collect_inventory(dispatcher, self.conf)
        self.assertEqual("Sparse Inc.", found["system"]["vendor"])
        self.assertIsNone(found["system"]["uuid"])
        self.assertEqual({"count": 4, "model": None, "arch": None,
                          "sockets": None, "cores": None, "threads": None},
                         found["cpu"])
        self.assertEqual({"total_bytes": None, "dimms": None},
                         found["memory"])
        disk = found["disks"][0]
        self.assertIsNone(disk["size_bytes"])
        self.assertIsNone(disk["wwn"])
        self.assertTrue(disk["eligible"])
        nic = found["nics"][0]
        self.assertEqual((None, None, "7.1"),
                         (nic["speed_mbps"], nic["link"], nic["firmware"]))

    def test_sections_no_manager_serves_are_null(self):
        class SystemOnly(hw_base.HardwareManager):
            def evaluate_hardware_support(self):
                return hw_base.HardwareSupport.MAINLINE

        found = inventory.collect_inventory(
            self.build_dispatcher([("system-only", SystemOnly)]), self.conf)
        self.assertEqual([], found["disks"])
        self.assertEqual([], found["nics"])
        self.assertIsNone(found["memory"]["total_bytes"])

    def test_a_failing_manager_is_not_hidden(self):
        class Broken(Sparse):
            def get_cpus(self):
                raise OSError("boom")

        with self.assertRaises(hardware.DispatchError):
            inventory.collect_inventory(
                self.build_dispatcher([("broken", Broken)]), self.conf)

    def test_hardware_summary(self):
        self.machine.add_nic("eno2", "0c:c4:7a:00:00:00")
        summary = inventory.hardware_summary(self.build_dispatcher(GENERIC))
        self.assertEqual(["0c:c4:7a:00:00:00", "0c:c4:7a:00:00:01"],
                         summary["macs"])
        self.assertEqual("SM123", summary["serial"])
        self.assertEqual("X11", summary["product"])

    def test_dispatch_table_lists_every_interface_method(self):
        table = inventory.dispatch_table(self.build_dispatcher(
            GENERIC + [("sparse", Sparse)]))
        self.assertEqual(set(hardware.INTERFACE_METHODS), set(table))
        self.assertEqual(["sparse", "generic"], table["get_cpus"])
        self.assertEqual(["generic"], table["get_secure_boot_state"])
        self.assertEqual([], table["update_firmware"])


class TestAgentId(fixtures.FakeMachineTestCase):
    def agent_id(self):
        return inventory.derive_agent_id(self.build_dispatcher(GENERIC))

    def test_real_dmi_uuid(self):
        self.machine.set_dmi(
            product_uuid="4C4C4544-0031-3510-8052-B4C04F333532")
        self.machine.add_nic("eno1", "0c:c4:7a:00:00:01")
        self.assertEqual("4c4c4544-0031-3510-8052-b4c04f333532",
                         self.agent_id())

    def test_placeholder_uuids_fall_back_to_macs(self):
        self.machine.add_nic("eno2", "0c:c4:7a:00:00:02")
        self.machine.add_nic("eno1", "0C:C4:7A:00:00:01")
        ids = set()
        for placeholder in ("00000000-0000-0000-0000-000000000000",
                            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
                            "Not Settable",
                            "03000200-0400-0500-0006-000700080009", None):
            self.machine.set_dmi(product_uuid=placeholder)
            ids.add(self.agent_id())
        self.assertEqual(1, len(ids))
        agent_id = ids.pop()
        self.assertRegex(agent_id, r"^mac-[0-9a-f]{16}$")

    def test_mac_id_ignores_interface_order(self):
        self.machine.add_nic("eno1", "0c:c4:7a:00:00:01")
        self.machine.add_nic("eno2", "0c:c4:7a:00:00:02")
        first = self.agent_id()
        # The same NICs named and discovered in another order.
        other = testing.FakeMachine(tempfile.mkdtemp(dir=self.machine.root))
        other.add_nic("eth7", "0c:c4:7a:00:00:02")
        other.add_nic("eth9", "0c:c4:7a:00:00:01")
        other_conf = testing.make_conf()
        for key, value in other.conf_overrides().items():
            other_conf.set_override(key.split(".")[1], value, "hardware")
        self.assertEqual(first, inventory.derive_agent_id(
            hardware.build_dispatcher(GENERIC, other_conf)))
        self.machine.add_nic("eno3", "0c:c4:7a:00:00:03")
        self.assertNotEqual(first, self.agent_id())

    def test_host_name_as_last_resort(self):
        with mock.patch("socket.gethostname", return_value="rack1-u12"):
            agent_id = self.agent_id()
        self.assertRegex(agent_id, r"^host-[0-9a-f]{16}$")


class TestChooseInstallDevice(fixtures.FakeMachineTestCase):
    def setUp(self):
        super().setUp()
        self.machine.add_disk("sda", 960 * 10 ** 9, serial="A",
                              rotational=True)
        self.machine.add_disk("sdb", 480 * 10 ** 9, serial="B")
        self.machine.add_disk("sdc", 480 * 10 ** 9, serial="C")
        self.dispatcher = self.build_dispatcher(GENERIC)

    def choose(self, hints=None):
        return inventory.choose_install_device(self.dispatcher, self.conf,
                                               hints)

    def test_default_rule(self):
        chosen = self.choose()
        self.assertEqual(("B", True, None),
                         (chosen["serial"], chosen["eligible"],
                          chosen["ineligible_reason"]))

    def test_configured_hints_apply_and_the_command_wins(self):
        self.set_config(**{"hardware.root_device_hints":
                           json.dumps({"rotational": False, "serial": "C"})})
        self.assertEqual("C", self.choose()["serial"])
        self.assertEqual("B", self.choose({"serial": "B"})["serial"])
        with self.assertRaises(hw_base.HardwareManagerError):
            # rotational=False from config still applies.
            self.choose({"serial": "A"})

    def test_bad_configured_hints(self):
        self.set_config(**{"hardware.root_device_hints": "{not json"})
        with self.assertRaises(hw_base.HardwareManagerError) as caught:
            self.choose()
        self.assertIn("root_device_hints", str(caught.exception))
        self.set_config(**{"hardware.root_device_hints": "[1, 2]"})
        with self.assertRaises(hw_base.HardwareManagerError):
            self.choose()

    def test_no_match_is_a_manager_error(self):
        with self.assertRaises(hw_base.HardwareManagerError):
            self.choose({"serial": "Z"})

    def test_a_manager_cannot_choose_an_ineligible_device(self):
        root_path = self.machine.dev_path("sda")

        class Reckless(generic.GenericHardwareManager):
            def evaluate_hardware_support(self):
                return hw_base.HardwareSupport.SERVICE_PROVIDER

            def get_os_install_device(self, hints):
                return dict(self.list_block_devices()[0])

        self.machine.add_mount("sda", "/")
        dispatcher = self.build_dispatcher([("reckless", Reckless)])
        with self.assertRaises(safety.DeviceNotEligible) as caught:
            inventory.choose_install_device(dispatcher, self.conf, {})
        self.assertEqual(root_path, caught.exception.path)
