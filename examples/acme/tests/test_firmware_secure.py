"""decom.firmware_secure and decom.qc against the ACME simulated firmware.

The ACME manager runs next to the generic one on a faked Roadrunner 9000;
firmware images are served over HTTP from 127.0.0.1 by a thread of this
test, downloaded and verified by the agent, and "flashed" into the ACME
state file.
"""

import hashlib
import json
import os
import time

from acme_hardware import manager as acme
from teeth_agent.extensions import base as ext_base
from teeth_agent.extensions import decom
from teeth_agent.hardware import generic
from teeth_agent.hardware import power
from teeth_agent.hardware import testing
from teeth_agent import protocol
from teeth_agent import tasks

PLUGINS = [("generic", generic.GenericHardwareManager),
           ("acme", acme.AcmeHardwareManager)]
# A guard against a hung test, not a measurement.
TASK_DEADLINE = 120.0


def image(version, payload=b"\x00payload" * 64):
    return acme.IMAGE_MAGIC + version.encode() + b"\n" + payload


class DecomOnAcmeTest(testing.HardwareManagerTestCase):
    def setUp(self):
        super().setUp()
        self.state_file = os.path.join(self.machine.root, "acme", "fw.json")
        self.machine.set_dmi(sys_vendor="ACME", product_name="Roadrunner 9000",
                             bios_version="RR9K.2.1")
        self.machine.add_disk("sda", 480 * 10 ** 9, serial="RR-SSD-1")
        self.machine.add_nic("eno1", "02:ac:3e:00:00:01", speed_mbps=25000)
        self.conf.register_opts(acme.opts, group="acme")
        self.set_config(**{"acme.firmware_state_file": self.state_file})
        self.dispatcher = self.build_dispatcher(PLUGINS)
        self.server = testing.FileServer({
            "/bmc-2.0.0.bin": image("2.0.0"),
            "/nic0-21.0.1.bin": image("21.0.1")}).start()
        self.addCleanup(self.server.stop)
        self.registry = tasks.TaskRegistry()
        context = ext_base.ExtensionContext(
            self.conf, self.dispatcher, self.registry,
            power.PowerController(simulate=True))
        self.extension = decom.DecomExtension(context)
        self.extension.name = "decom"

    def firmware(self, component, version, path, data=None):
        data = self.server.files[path] if data is None else data
        return {"component": component, "version": version,
                "url": self.server.url(path),
                "hashes": {"sha256": hashlib.sha256(data).hexdigest()}}

    def run_command(self, method, params, task_id="task-1"):
        spec, func = self.extension.commands()["decom.%s" % method]
        checked = ext_base.check_params(spec, dict(params, task_id=task_id))
        checked.pop("task_id")
        validator = self.extension.validator(spec)
        if validator is not None:
            checked = validator(**checked) or checked
        task, _ = self.registry.start(task_id, "decom.%s" % method,
                                      lambda task: func(task, **checked),
                                      exclusive=spec.exclusive)
        deadline = time.monotonic() + TASK_DEADLINE
        while not task.terminal:
            self.assertLess(time.monotonic(), deadline, "the task hung")
            time.sleep(0.01)
        return task

    def installed(self):
        with open(self.state_file) as stream:
            return json.load(stream)

    def test_updates_one_component_and_skips_the_current_one(self):
        task = self.run_command("firmware_secure", {"firmware": [
            self.firmware("bmc", "2.0.0", "/bmc-2.0.0.bin"),
            self.firmware("nic0", "20.5.13", "/nic0-21.0.1.bin")]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        bmc, nic0 = task.result["firmware"]
        self.assertEqual(("1.4.0", "2.0.0", "updated"),
                         (bmc["before"], bmc["after"], bmc["action"]))
        self.assertEqual("1.4.0", bmc["details"]["previous_version"])
        self.assertEqual(("20.5.13", "20.5.13", "skipped"),
                         (nic0["before"], nic0["after"], nic0["action"]))
        self.assertEqual({"bmc": "2.0.0", "nic0": "20.5.13"},
                         self.installed())
        self.assertEqual(["/bmc-2.0.0.bin"], self.server.requests)
        self.assertEqual({"supported": False, "enabled": None,
                          "setup_mode": None}, task.result["secure_boot"])

    def test_everything_current_downloads_nothing(self):
        task = self.run_command("firmware_secure", {"firmware": [
            self.firmware("bmc", "1.4.0", "/bmc-2.0.0.bin")]})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertEqual("skipped", task.result["firmware"][0]["action"])
        self.assertEqual([], self.server.requests)
        self.assertFalse(os.path.exists(self.state_file))

    def test_bad_checksum_flashes_nothing(self):
        good = self.firmware("nic0", "21.0.1", "/nic0-21.0.1.bin")
        bad = self.firmware("bmc", "2.0.0", "/bmc-2.0.0.bin",
                            data=image("6.6.6"))
        task = self.run_command("firmware_secure", {"firmware": [good, bad]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("component bmc", task.msg)
        self.assertIn("sha256 checksum mismatch", task.msg)
        actions = {e["component"]: e["action"]
                   for e in task.details["firmware"]}
        self.assertEqual({"nic0": "not_attempted", "bmc": "failed"}, actions)
        self.assertFalse(os.path.exists(self.state_file))

    def test_component_without_a_manager_is_named(self):
        self.server.files["/raid-3.0.bin"] = image("3.0")
        task = self.run_command("firmware_secure", {"firmware": [
            self.firmware("bmc", "2.0.0", "/bmc-2.0.0.bin"),
            self.firmware("raid0", "3.0", "/raid-3.0.bin")]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("no hardware manager can update component raid0",
                      task.msg)
        self.assertEqual([], self.server.requests)
        self.assertFalse(os.path.exists(self.state_file))

    def test_image_of_another_version_is_refused_by_acme(self):
        task = self.run_command("firmware_secure", {"firmware": [
            self.firmware("bmc", "2.1.0", "/bmc-2.0.0.bin")]})
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("carries bmc version 2.0.0, not the requested 2.1.0",
                      task.msg)
        self.assertEqual("1.4.0", task.details["firmware"][0]["after"])

    def test_checksum_is_required(self):
        entry = self.firmware("bmc", "2.0.0", "/bmc-2.0.0.bin")
        entry["hashes"] = {}
        with self.assertRaises(protocol.InvalidParams) as caught:
            self.run_command("firmware_secure", {"firmware": [entry]})
        self.assertEqual("firmware[0].hashes",
                         caught.exception.details["param"])
        self.assertEqual([], self.registry.statuses())

    def test_qc_uses_the_acme_checks(self):
        task = self.run_command("qc", {"spec": {
            "nics": {"count": 1, "min_speed_mbps": 25000},
            "acme": {"bmc_min_version": "1.4"}}})
        self.assertEqual(tasks.COMPLETE, task.state, task.msg)
        self.assertIn("acme.bmc_min_version",
                      [c["name"] for c in task.result["checks"]])
        task = self.run_command("qc", {"spec": {
            "acme": {"bmc_min_version": "2.0"}}}, task_id="task-2")
        self.assertEqual(tasks.ERROR, task.state)
        self.assertIn("acme.bmc_min_version: expected '>= 2.0', found "
                      "'1.4.0'", task.msg)
