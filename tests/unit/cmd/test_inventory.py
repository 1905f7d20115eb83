"""``teeth-agent inventory``."""

import io
import json
import logging
import sys
from unittest import mock

from teeth_agent.cmd import inventory as inventory_cmd
from teeth_agent import hardware
from teeth_agent.hardware import generic
from tests.unit.hardware import fixtures


class TestInventoryCommand(fixtures.FakeMachineTestCase):
    def run_main(self, load):
        stdout, stderr = io.StringIO(), io.StringIO()
        with mock.patch.object(hardware, "load_managers", load), \
                mock.patch("sys.stdout", stdout), \
                mock.patch("sys.stderr", stderr):
            status = inventory_cmd.main(self.conf)
        return status, stdout.getvalue(), stderr.getvalue()

    def test_prints_inventory_managers_and_dispatch_table(self):
        self.machine.set_dmi(sys_vendor="ACME", product_name="Coyote")
        self.machine.add_disk("sda", 2 ** 34, serial="S1")
        self.machine.add_nic("eno1", "02:00:00:00:00:01")
        self.tools.missing("dmidecode")
        dispatcher = self.build_dispatcher(
            [("generic", generic.GenericHardwareManager)])
        load = mock.Mock(return_value=dispatcher)
        status, out, err = self.run_main(load)
        self.assertEqual(0, status, err)
        load.assert_called_once_with(self.conf)
        report = json.loads(out)
        self.assertEqual(["dispatch", "hardware_managers", "inventory"],
                         sorted(report))
        self.assertEqual("ACME", report["inventory"]["system"]["vendor"])
        self.assertEqual(["S1"], [d["serial"] for d in
                                  report["inventory"]["disks"]])
        self.assertEqual([{"name": "generic", "support": "GENERIC",
                           "class": "teeth_agent.hardware.generic."
                                    "GenericHardwareManager"}],
                         report["hardware_managers"])
        self.assertEqual(["generic"], report["dispatch"]["list_block_devices"])
        self.assertEqual([], report["dispatch"]["update_firmware"])

    def test_load_failure_is_reported_with_status_2(self):
        load = mock.Mock(side_effect=hardware.HardwareLoadError(
            "acme: ImportError: no module named acme_hardware"))
        status, out, err = self.run_main(load)
        self.assertEqual(2, status)
        self.assertEqual("", out)
        self.assertIn("acme_hardware", err)

    def test_log_records_do_not_mix_with_the_report(self):
        stdout, stderr = io.StringIO(), io.StringIO()
        with mock.patch("sys.stdout", stdout), \
                mock.patch("sys.stderr", stderr):
            handler = logging.StreamHandler(sys.stdout)
            root = logging.getLogger()
            root.addHandler(handler)
            self.addCleanup(root.removeHandler, handler)
            load = mock.Mock(side_effect=lambda conf: self.build_dispatcher(
                [("generic", generic.GenericHardwareManager)]))
            with mock.patch.object(hardware, "load_managers", load):
                status = inventory_cmd.main(self.conf)
            logging.getLogger("teeth_agent.test").warning("after the report")
        self.assertEqual(0, status)
        json.loads(stdout.getvalue())
        self.assertIn("after the report", stderr.getvalue())
