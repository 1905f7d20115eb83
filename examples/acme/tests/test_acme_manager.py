"""The ACME manager on a faked Roadrunner 9000, next to the generic one."""

import json
import os
from unittest import mock

from acme_hardware import manager as acme
from teeth_agent import hardware
from teeth_agent.hardware import base
from teeth_agent.hardware import generic
from teeth_agent.hardware import inventory
from teeth_agent.hardware import testing

PLUGINS = [("generic", generic.GenericHardwareManager),
           ("acme", acme.AcmeHardwareManager)]


class AcmeTestCase(testing.HardwareManagerTestCase):
    def setUp(self):
        super().setUp()
        self.state_file = os.path.join(self.machine.root, "acme", "fw.json")
        self.machine.set_dmi(sys_vendor="ACME", product_name="Roadrunner 9000",
                             bios_version="RR9K.2.1")
        self.machine.add_disk("sda", 480 * 10 ** 9, serial="RR-SSD-1")
        self.machine.add_nic("eno1", "02:ac:3e:00:00:01", speed_mbps=25000)

    def dispatcher(self):
        # Registered before initialize() so the override applies.
        self.conf.register_opts(acme.opts, group="acme")
        self.set_config(**{"acme.firmware_state_file": self.state_file})
        return self.build_dispatcher(PLUGINS)

    def image(self, content):
        path = os.path.join(self.machine.root, "image.bin")
        with open(path, "wb") as stream:
            stream.write(content)
        return path


class TestSelection(AcmeTestCase):
    def test_selected_on_the_roadrunner(self):
        dispatcher = self.dispatcher()
        self.assertEqual([("acme", "SERVICE_PROVIDER"),
                          ("generic", "GENERIC")],
                         [(d["name"], d["support"])
                          for d in dispatcher.describe()])

    def test_not_selected_on_other_models_or_vendors(self):
        for vendor, product in (("ACME", "Roadrunner 8000"),
                                ("Wile E. Inc.", "Roadrunner 9000"),
                                (None, None)):
            self.machine.set_dmi(sys_vendor=vendor, product_name=product)
            dispatcher = self.dispatcher()
            self.assertEqual(["generic"],
                             [d["name"] for d in dispatcher.describe()],
                             (vendor, product))


class TestDispatchWithGeneric(AcmeTestCase):
    def test_acme_wins_for_firmware_generic_code_serves_the_rest(self):
        dispatcher = self.dispatcher()
        table = inventory.dispatch_table(dispatcher)
        self.assertEqual(["acme"], table["update_firmware"])
        self.assertEqual(["acme", "generic"], table["get_firmware_versions"])
        self.assertEqual(["acme"], table["run_qc_checks"])
        # Not implemented by ACME: it declines, the generic manager answers,
        # and the table lists only the manager whose code serves.
        self.assertIs(base.HardwareManager.list_block_devices,
                      acme.AcmeHardwareManager.list_block_devices)
        for method in ("list_block_devices", "get_system_info", "get_cpus",
                       "list_network_interfaces", "erase_block_device",
                       "get_os_install_device"):
            self.assertEqual(["generic"], table[method], method)
        self.assertEqual(["RR-SSD-1"], [
            d["serial"] for d in dispatcher.dispatch("list_block_devices")])
        found = inventory.collect_inventory(dispatcher, self.conf)
        self.assertEqual("Roadrunner 9000", found["system"]["product"])
        self.assertEqual(["eno1"], [n["name"] for n in found["nics"]])

    def test_firmware_versions_merge_vendor_and_generic(self):
        dispatcher = self.dispatcher()
        self.assertEqual({"bios": "RR9K.2.1", "bmc": "1.4.0",
                          "nic0": "20.5.13"},
                         inventory.firmware_versions(dispatcher))


class TestFirmwareUpdate(AcmeTestCase):
    def test_a_good_image_is_recorded_and_persists(self):
        dispatcher = self.dispatcher()
        path = self.image(b"ACMEFW2.1.0\n" + b"\x00" * 1000)
        result = dispatcher.dispatch("update_firmware", "bmc", path, "2.1.0")
        self.assertEqual({"component": "bmc", "previous_version": "1.4.0",
                          "version": "2.1.0", "image_bytes": 1012}, result)
        self.assertEqual("2.1.0", inventory.firmware_versions(
            dispatcher)["bmc"])
        with open(self.state_file) as stream:
            self.assertEqual("2.1.0", json.load(stream)["bmc"])
        # A new agent (after a reboot) reads the same state.
        self.assertEqual("2.1.0", inventory.firmware_versions(
            self.build_dispatcher(PLUGINS))["bmc"])

    def test_bad_magic_fails_and_names_the_manager(self):
        dispatcher = self.dispatcher()
        path = self.image(b"NOTACME2.1.0\npayload")
        with self.assertRaises(hardware.DispatchError) as caught:
            dispatcher.dispatch("update_firmware", "bmc", path, "2.1.0")
        self.assertEqual("acme", caught.exception.manager)
        self.assertIn("bad magic", str(caught.exception))
        self.assertEqual("1.4.0", inventory.firmware_versions(
            dispatcher)["bmc"])
        self.assertFalse(os.path.exists(self.state_file))

    def test_image_of_another_version_fails(self):
        dispatcher = self.dispatcher()
        path = self.image(b"ACMEFW2.0.0\npayload")
        with self.assertRaises(hardware.DispatchError) as caught:
            dispatcher.dispatch("update_firmware", "nic0", path, "21.0.0")
        self.assertIn("2.0.0", str(caught.exception))
        self.assertEqual("20.5.13", inventory.firmware_versions(
            dispatcher)["nic0"])

    def test_unknown_component_is_declined(self):
        dispatcher = self.dispatcher()
        path = self.image(b"ACMEFW1.0\n")
        # acme declines and generic flashes nothing: no manager serves it.
        with self.assertRaises(hardware.NoManagerError):
            dispatcher.dispatch("update_firmware", "raid0", path, "1.0")

    def test_corrupt_state_file_is_an_error(self):
        os.makedirs(os.path.dirname(self.state_file))
        with open(self.state_file, "w") as stream:
            stream.write("{half")
        dispatcher = self.dispatcher()
        with self.assertRaises(hardware.DispatchError) as caught:
            inventory.firmware_versions(dispatcher)
        self.assertIn(self.state_file, str(caught.exception))


class TestStateFileLocation(AcmeTestCase):
    def test_environment_variable_when_the_option_is_unset(self):
        with mock.patch.dict(os.environ, {acme.STATE_FILE_ENV: "/x/fw.json"}):
            dispatcher = self.build_dispatcher(PLUGINS)
        self.assertEqual("/x/fw.json",
                         dispatcher.managers[0][1].firmware.path)

    def test_the_option_wins_over_the_environment(self):
        with mock.patch.dict(os.environ, {acme.STATE_FILE_ENV: "/x/fw.json"}):
            dispatcher = self.dispatcher()
        self.assertEqual(self.state_file,
                         dispatcher.managers[0][1].firmware.path)

    def test_default_location(self):
        with mock.patch.dict(os.environ, clear=False) as environ:
            environ.pop(acme.STATE_FILE_ENV, None)
            dispatcher = self.build_dispatcher(PLUGINS)
        self.assertEqual(acme.DEFAULT_STATE_FILE,
                         dispatcher.managers[0][1].firmware.path)


class TestQualityControl(AcmeTestCase):
    def checks(self, spec):
        return self.dispatcher().dispatch_all("run_qc_checks", spec, {})

    def test_bmc_minimum_version(self):
        self.assertEqual(
            [("acme", [{"name": "acme.bmc_min_version",
                        "expected": ">= 2.0", "actual": "1.4.0",
                        "pass": False}])],
            self.checks({"acme": {"bmc_min_version": "2.0"}}))
        passing = self.checks({"acme": {"bmc_min_version": "1.4"}})
        self.assertTrue(passing[0][1][0]["pass"])

    def test_versions_compare_numerically(self):
        self.assertGreater(acme.version_key("2.10"), acme.version_key("2.9"))

    def test_without_acme_keys_the_manager_declines(self):
        self.assertEqual([], self.checks({"cpu": {"count": 2}}))

    def test_unknown_acme_key_fails(self):
        [(_, checks)] = self.checks({"acme": {"bmc_min_verison": "2.0"}})
        self.assertEqual([{"name": "acme.bmc_min_verison", "expected": "2.0",
                           "actual": "unknown ACME QC key", "pass": False}],
                         checks)


class TestImageHeader(AcmeTestCase):
    def test_header_without_version_is_refused(self):
        with self.assertRaises(base.HardwareManagerError):
            acme.read_image_version(self.image(b"ACMEFW\n"))
        with self.assertRaises(base.HardwareManagerError):
            acme.read_image_version(os.path.join(self.machine.root, "none"))
