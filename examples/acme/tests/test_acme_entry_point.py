"""The installed package is found through its entry point."""

import importlib.metadata

from acme_hardware import manager as acme
from teeth_agent import hardware
from teeth_agent.hardware import testing


class TestEntryPoint(testing.HardwareManagerTestCase):
    def test_entry_point_names_the_manager_class(self):
        points = importlib.metadata.entry_points(
            group=hardware.NAMESPACE, name="acme")
        self.assertEqual(1, len(points), "acme-teeth-hardware is not "
                         "installed (pip install ./examples/acme)")
        [point] = points
        self.assertEqual("acme_hardware.manager:AcmeHardwareManager",
                         point.value)
        self.assertIs(acme.AcmeHardwareManager, point.load())

    def test_the_agent_loads_it_on_a_roadrunner(self):
        self.machine.set_dmi(sys_vendor="ACME",
                             product_name="Roadrunner 9000")
        dispatcher = hardware.load_managers(self.conf, enabled=["acme"])
        self.assertEqual([{"name": "acme", "support": "SERVICE_PROVIDER",
                           "class": "acme_hardware.manager."
                                    "AcmeHardwareManager"}],
                         dispatcher.describe())

    def test_the_agent_refuses_to_start_with_only_acme_elsewhere(self):
        self.machine.set_dmi(sys_vendor="Other", product_name="Box")
        with self.assertRaises(hardware.HardwareLoadError) as caught:
            hardware.load_managers(self.conf, enabled=["acme"])
        self.assertIn("no hardware manager supports", str(caught.exception))
