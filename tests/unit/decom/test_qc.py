"""decom.qc: the spec, the checks and the task."""

import copy

from teeth_agent import hardware
from teeth_agent.hardware import base as hw_base
from teeth_agent import protocol
from teeth_agent import qc
from teeth_agent import tasks
from tests import base
from tests.unit.decom import runner

INVENTORY = {
    "system": {"vendor": "ACME", "product": "Roadrunner 9000",
               "serial": "RR9-001", "uuid": None, "bios_version": "1.0"},
    "cpu": {"count": 64, "model": "ACME Xeon 6430 @ 2.10GHz",
            "arch": "x86_64"},
    "memory": {"total_bytes": 256 * 1024 ** 3 - 3 * 1024 ** 3},
    "disks": [
        {"path": "/dev/nvme0n1", "size_bytes": 1600321314816,
         "model": "ACME NVMe 1.6TB", "rotational": False},
        {"path": "/dev/nvme1n1", "size_bytes": 1600321314816,
         "model": "ACME NVMe 1.6TB", "rotational": False},
        {"path": "/dev/sda", "size_bytes": 4000787030016,
         "model": "ACME HDD 4TB", "rotational": True},
    ],
    "nics": [{"name": "eth0", "mac": "52:54:00:00:00:01",
              "speed_mbps": 25000, "link": True},
             {"name": "eth1", "mac": "52:54:00:00:00:02",
              "speed_mbps": 25000, "link": True}],
}

SPEC = {
    "cpu": {"count": 64, "model": "Xeon 6430"},
    "memory": {"total_bytes": 256 * 1024 ** 3},
    "disks": [{"count": 2, "size_bytes": 1600321314816, "model": "NVMe",
               "rotational": False},
              {"count": 1, "rotational": True}],
    "nics": {"count": 2, "min_speed_mbps": 10000},
}


def checked(spec):
    return qc.SPEC.validate(spec, "spec")


class ChecksTest(base.TestCase):
    def checks(self, spec, inventory=INVENTORY):
        return {c["name"]: c for c in qc.core_checks(checked(spec),
                                                     inventory)}

    def test_matching_chassis_passes_every_check(self):
        checks = self.checks(SPEC)
        self.assertEqual(["cpu.count", "cpu.model", "disks.unmatched",
                          "disks[0].count", "disks[1].count",
                          "memory.total_bytes", "nics.count",
                          "nics.min_speed_mbps"], sorted(checks))
        self.assertEqual([], qc.describe_failures(list(checks.values())))

    def test_memory_tolerance(self):
        spec = {"memory": {"total_bytes": 256 * 1024 ** 3,
                           "tolerance": 0.001}}
        check = self.checks(spec)["memory.total_bytes"]
        self.assertFalse(check["pass"])
        self.assertEqual({"total_bytes": 256 * 1024 ** 3,
                          "tolerance": 0.001}, check["expected"])

    def test_each_difference_is_listed(self):
        inventory = copy.deepcopy(INVENTORY)
        inventory["cpu"]["count"] = 32
        inventory["nics"][1]["speed_mbps"] = 1000
        inventory["disks"].append({"path": "/dev/sdb", "size_bytes": 1,
                                   "model": "USB stick",
                                   "rotational": False})
        failures = qc.describe_failures(
            qc.core_checks(checked(SPEC), inventory))
        self.assertEqual([
            "cpu.count: expected 64, found 32",
            "disks.unmatched: expected [], found ['/dev/sdb']",
            "nics.min_speed_mbps: expected 10000, found "
            "{'eth0': 25000, 'eth1': 1000}"], failures)

    def test_disk_group_count_and_model(self):
        inventory = copy.deepcopy(INVENTORY)
        inventory["disks"][1]["model"] = "OTHER SSD"
        checks = self.checks(SPEC, inventory)
        self.assertFalse(checks["disks[0].count"]["pass"])
        self.assertEqual({"count": 1, "paths": ["/dev/nvme0n1"]},
                         checks["disks[0].count"]["actual"])
        self.assertEqual(["/dev/nvme1n1"],
                         checks["disks.unmatched"]["actual"])

    def test_disk_group_without_count_wants_at_least_one(self):
        spec = {"disks": [{"model": "NVMe"}, {"rotational": True}]}
        checks = self.checks(spec)
        self.assertTrue(checks["disks[0].count"]["pass"])
        self.assertTrue(checks["disks[1].count"]["pass"])
        inventory = copy.deepcopy(INVENTORY)
        inventory["disks"] = [d for d in inventory["disks"]
                              if not d["rotational"]]
        checks = self.checks(spec, inventory)
        self.assertFalse(checks["disks[1].count"]["pass"])
        self.assertEqual({"count": 0, "paths": []},
                         checks["disks[1].count"]["actual"])

    def test_unknown_speed_fails_a_speed_check(self):
        inventory = copy.deepcopy(INVENTORY)
        inventory["nics"][0]["speed_mbps"] = None
        self.assertFalse(self.checks(SPEC, inventory)[
            "nics.min_speed_mbps"]["pass"])

    def test_cpu_model_pattern_is_searched(self):
        self.assertTrue(self.checks({"cpu": {"model": "6430"}})[
            "cpu.model"]["pass"])
        self.assertFalse(self.checks({"cpu": {"model": "^6430"}})[
            "cpu.model"]["pass"])

    def test_unknown_core_keys_are_refused(self):
        for spec, name in (({"cpu": {"cores": 4}}, "spec.cpu.cores"),
                           ({"memory": {"total_bytes": "lots"}},
                            "spec.memory.total_bytes"),
                           ({"disks": [{"size_bytes": 1, "colour": "red"}]},
                            "spec.disks[0].colour"),
                           ({"disks": [{"count": -1}]},
                            "spec.disks[0].count"),
                           ({"cpu": {"model": "("}}, "spec.cpu.model"),
                           ({"nics": {"count": 1, "speed": 10}},
                            "spec.nics.speed")):
            with self.assertRaises(protocol.InvalidParams) as caught:
                checked(spec)
            self.assertEqual(name, caught.exception.details["param"])

    def test_vendor_keys_pass_validation(self):
        self.assertEqual({"raid_level": 10},
                         checked({"acme": {"raid_level": 10}})["acme"])
        self.assertEqual(["acme"], qc.vendor_keys(checked({"acme": 1})))

    def test_vendor_key_nobody_checked_fails(self):
        spec = checked({"acme": {"raid": 10}, "other": 1})
        unchecked = qc.unchecked_vendor_keys(spec, [
            qc.check("acme.raid", 10, 10, True)])
        self.assertEqual([{"name": "other", "expected": 1,
                           "actual": "no hardware manager checks this key",
                           "pass": False}], unchecked)


class InventoryManager(hw_base.HardwareManager):
    """Answers the inventory calls from :data:`INVENTORY` and checks the
    vendor key ``acme``."""

    def evaluate_hardware_support(self):
        return hw_base.HardwareSupport.SERVICE_PROVIDER

    def get_system_info(self):
        return INVENTORY["system"]

    def get_cpus(self):
        return INVENTORY["cpu"]

    def get_memory(self):
        return INVENTORY["memory"]

    def list_block_devices(self):
        return [dict(d, read_only=False, is_agent_root=False, mounted=False)
                for d in INVENTORY["disks"]]

    def list_network_interfaces(self):
        return INVENTORY["nics"]

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
        spec = dict(SPEC, acme={"raid_level": 10})
        task = self.run_qc(spec)
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("ACME", task.result["inventory"]["system"]["vendor"])
        names = [c["name"] for c in task.result["checks"]]
        self.assertIn("acme.raid_level", names)
        self.assertTrue(all(c["pass"] for c in task.result["checks"]))

    def test_difference_fails_the_task_with_the_list(self):
        spec = dict(SPEC, acme={"raid_level": 5})
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
