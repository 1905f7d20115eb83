"""teeth_agent.extensions.decom.qc: the spec and the checks (the decom qc
command is tested in
tests/unit/extensions/decom/test_qc_command.py)."""

import copy

from teeth_agent.extensions.decom import qc
from teeth_agent import protocol
from tests import base
from tests.unit.extensions.decom import qc_samples


def checked(spec):
    return qc.SPEC.validate(spec, "spec")


class ChecksTest(base.TestCase):
    def checks(self, spec, inventory=qc_samples.INVENTORY):
        return {c["name"]: c for c in qc.core_checks(checked(spec),
                                                     inventory)}

    def test_matching_chassis_passes_every_check(self):
        checks = self.checks(qc_samples.SPEC)
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
        inventory = copy.deepcopy(qc_samples.INVENTORY)
        inventory["cpu"]["count"] = 32
        inventory["nics"][1]["speed_mbps"] = 1000
        inventory["disks"].append({"path": "/dev/sdb", "size_bytes": 1,
                                   "model": "USB stick",
                                   "rotational": False})
        failures = qc.describe_failures(
            qc.core_checks(checked(qc_samples.SPEC), inventory))
        self.assertEqual([
            "cpu.count: expected 64, found 32",
            "disks.unmatched: expected [], found ['/dev/sdb']",
            "nics.min_speed_mbps: expected 10000, found "
            "{'eth0': 25000, 'eth1': 1000}"], failures)

    def test_disk_group_count_and_model(self):
        inventory = copy.deepcopy(qc_samples.INVENTORY)
        inventory["disks"][1]["model"] = "OTHER SSD"
        checks = self.checks(qc_samples.SPEC, inventory)
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
        inventory = copy.deepcopy(qc_samples.INVENTORY)
        inventory["disks"] = [d for d in inventory["disks"]
                              if not d["rotational"]]
        checks = self.checks(spec, inventory)
        self.assertFalse(checks["disks[1].count"]["pass"])
        self.assertEqual({"count": 0, "paths": []},
                         checks["disks[1].count"]["actual"])

    def test_unknown_speed_fails_a_speed_check(self):
        inventory = copy.deepcopy(qc_samples.INVENTORY)
        inventory["nics"][0]["speed_mbps"] = None
        self.assertFalse(self.checks(qc_samples.SPEC, inventory)[
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
