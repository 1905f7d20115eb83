"""decom.qc: the task (the spec and the checks themselves are tested in
tests/unit/extensions/decom/test_qc.py)."""

from teeth_agent.extensions.decom import qc
from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent import protocol
from teeth_agent import tasks
from tests import base
from tests.unit.extensions.decom import qc_samples
from tests.unit.extensions.decom import runner


class InventoryManager(hw_base.HardwareManager):
    """Answers the inventory calls from :data:`qc_samples.INVENTORY` and
    checks the vendor key ``acme``."""

    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.SERVICE_PROVIDER

    def get_system_info(self):
        return qc_samples.INVENTORY["system"]

    def get_cpus(self):
        return qc_samples.INVENTORY["cpu"]

    def get_memory(self):
        return qc_samples.INVENTORY["memory"]

    def list_block_devices(self):
        return [dict(d, read_only=False, is_agent_root=False, mounted=False)
                for d in qc_samples.INVENTORY["disks"]]

    def list_network_interfaces(self):
        return qc_samples.INVENTORY["nics"]

    def run_qc_checks(self, spec, inventory):
        if "acme" not in spec:
            return []
        expected = spec["acme"].get("raid_level")
        return [qc.check("acme.raid_level", expected, 10, expected == 10)]


class QcTaskTest(base.TestCase):
    def run_qc(self, spec):
        conf = base.make_conf()
        manager = InventoryManager(conf)
        manager.name = "acme"
        dispatcher = hardware.Dispatcher(
            [(hw_base.HardwareSupport.SERVICE_PROVIDER, manager)])
        extension, registry, _ = runner.make_extension(conf, dispatcher)
        return runner.run_command(extension, registry, "qc",
                                  {"spec": spec})

    def test_passes_with_inventory_and_vendor_checks(self):
        spec = dict(qc_samples.SPEC, acme={"raid_level": 10})
        task = self.run_qc(spec)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("ACME", task.result["inventory"]["system"]["vendor"])
        names = [c["name"] for c in task.result["checks"]]
        self.assertIn("acme.raid_level", names)
        self.assertTrue(all(c["pass"] for c in task.result["checks"]))

    def test_difference_fails_the_task_with_the_list(self):
        spec = dict(qc_samples.SPEC, acme={"raid_level": 5})
        spec["nics"] = {"count": 4}
        task = self.run_qc(spec)
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("qc found 2 difference(s)", task.msg)
        self.assertIn("nics.count: expected 4, found 2", task.msg)
        self.assertIn("acme.raid_level: expected 5, found 10", task.msg)
        failed = [c["name"] for c in task.details["checks"]
                  if not c["pass"]]
        self.assertEqual(["nics.count", "acme.raid_level"], failed)
        self.assertIn("inventory", task.details)

    def test_unknown_core_key_answers_invalid_params(self):
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.run_qc({"cpu": {"sockets": 2}})
        self.assertEqual("spec.cpu.sockets",
                         caught.exception.details["param"])
